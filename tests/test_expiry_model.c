/*
 * test_expiry_model.c: expiry against a model of every session's deadline.
 * The wheel keeps no deadline of its own (a cascade asks the session, so
 * heartbeats move timers lazily: mem/wheel.h), and this checks the outcome
 * a user relies on. Many sessions in one shard (so one slot holds more
 * than ADVANCE_BUDGET timers and advances stop mid-cascade), timeouts from
 * 1 s to 3 h (every wheel level; the long run also 20 to 49.7 days and
 * jumps of days: the overflow list), heartbeats, traffic (idle detection),
 * closes (linger), state changes by update, max_lifetime, short and long
 * user ids, advances of random sizes. After each advance: a session whose
 * deadline's fire tick has passed is gone; one whose deadline has not
 * passed is present; no session gets two removal events. (Written by the
 * review of the lazy wheel; it held.)
 */
#include "test_support.h"

#include <stdlib.h>

static virtual_clock vclock;

#define N         60000 /* created over the run */
#define FIRST     20000
#define TICK_MS   100
#define TICK      (TICK_MS * MS)
#define IDLE_MS   (30 * 1000)
#define LINGER_MS (90 * 1000)

/* The run's shape: timeouts to draw from, max_lifetime, and whether some
 * advances jump days. */
typedef struct shape {
    uint64_t timeouts_s[9];
    uint64_t life_ms;
    int long_jumps;
} shape;

static const shape hours = {{1, 2, 7, 30, 65, 400, 3000, 7000, 11000}, 2 * 3600 * 1000, 0};
/* Up to 2^32-1 ms (afsm.h's limit): past the wheel's top level. */
static const shape weeks = {{1, 2, 7, 30, 65, 400, 20 * 86400, 40 * 86400 + 17, 4294967}, 45ull * 86400 * 1000, 1};
static const shape *run_shape;

typedef struct model {
    afsm_uuid id;
    uint64_t created, last_active, timeout_ns, closed_at;
    int closed, gone, removals;
} model;

static model *sessions;

static uint64_t fire_of(uint64_t d)
{
    return (d + TICK - 1) / TICK * TICK;
}

static uint64_t deadline_of(const model *m)
{
    if (m->closed)
        return m->closed_at + LINGER_MS * MS;
    uint64_t d = m->last_active + m->timeout_ns;
    uint64_t life = m->created + run_shape->life_ms * MS;
    return life < d ? life : d;
}

static size_t created_count;
#define HASH_SLOTS (1u << 17)
static int32_t *hash_slots;

static uint64_t id_hash(const afsm_uuid *id)
{
    uint64_t h;
    memcpy(&h, id->bytes + 8, 8);
    return (h * 0x9e3779b97f4a7c15ull) >> 40;
}

static void hash_add(size_t i)
{
    for (uint64_t h = id_hash(&sessions[i].id);; h++)
        if (hash_slots[h & (HASH_SLOTS - 1)] < 0) {
            hash_slots[h & (HASH_SLOTS - 1)] = (int32_t)i;
            return;
        }
}

static model *hash_find(const afsm_uuid *id)
{
    for (uint64_t h = id_hash(id);; h++) {
        int32_t i = hash_slots[h & (HASH_SLOTS - 1)];
        if (i < 0)
            return NULL;
        if (memcmp(&sessions[i].id, id, sizeof(*id)) == 0)
            return &sessions[i];
    }
}

static void on_event(void *ctx, const afsm_event *ev)
{
    (void)ctx;
    if (ev->type != AFSM_EVENT_EXPIRED && ev->type != AFSM_EVENT_DELETED)
        return;
    model *m = hash_find(&ev->session_id);
    assert_non_null(m);
    m->removals++;
}

static uint64_t rnd_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static void create_some(afsm_engine *engine, size_t n, uint64_t now)
{
    for (size_t k = 0; k < n && created_count < N; k++) {
        size_t i = created_count++;
        afsm_uuid conn;
        afsm_create_options o = make_options((i & 1) ? "u" : "a-user-id-longer-than-16", "10.0.0.1", &conn);
        /* Clustered timeouts: many timers in the same slots. */
        o.timeout_ms = (uint32_t)((rnd() % 2 ? 400 : run_shape->timeouts_s[rnd() % 9]) * 1000 + (rnd() % 3) * 100);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
        sessions[i].id = info.session_id;
        sessions[i].created = now;
        sessions[i].last_active = now;
        sessions[i].timeout_ns = o.timeout_ms * MS;
        hash_add(i);
    }
}

static void run(uint64_t seed, const shape *sh)
{
    run_shape = sh;
    rnd_state = seed;
    afsm_config cfg;
    virtual_config(&vclock, &cfg);
    cfg.shard_count = 1;
    cfg.idle_timeout_ms = IDLE_MS;
    cfg.close_linger_ms = LINGER_MS;
    cfg.max_lifetime_ms = sh->life_ms;
    cfg.tick_ms = TICK_MS;
    cfg.on_event = on_event;
    cfg.capacity_hint = N;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    sessions = calloc(N, sizeof(model));
    assert_non_null(sessions);
    hash_slots = malloc(HASH_SLOTS * sizeof(int32_t));
    memset(hash_slots, 0xff, HASH_SLOTS * sizeof(int32_t));
    created_count = 0;
    uint64_t now = virtual_clock_read(&vclock);
    create_some(engine, FIRST, now);
    for (int step = 0; step < 600; step++) {
        /* Activity at this instant. */
        create_some(engine, rnd() % 400, now);
        size_t ops = rnd() % 3000;
        for (size_t k = 0; k < ops; k++) {
            model *m = &sessions[rnd() % created_count];
            if (m->gone)
                continue;
            unsigned what = rnd() % 100;
            if (what < 60) {
                uint64_t remaining;
                afsm_status st = afsm_session_heartbeat(engine, &m->id, &remaining);
                if (st == AFSM_OK && !m->closed) {
                    assert_true(deadline_of(m) > now);
                    m->last_active = now;
                } else if (!m->closed) {
                    assert_true(deadline_of(m) <= now);
                }
            } else if (what < 90) {
                afsm_stats d = {0};
                d.packets_received = 1;
                (void)afsm_session_add_stats(engine, &m->id, &d);
            } else if (what < 93 && !m->closed) {
                afsm_update u = AFSM_UPDATE_INIT;
                u.fields = AFSM_UPDATE_STATE;
                u.state = AFSM_STATE_CLOSED;
                afsm_status st = afsm_session_update(engine, &m->id, &u, NULL);
                if (st == AFSM_OK) {
                    m->closed = 1;
                    m->closed_at = now;
                } else {
                    assert_int_equal(st, AFSM_EEXPIRED);
                }
            } else if (what < 97 && !m->closed) {
                /* ACTIVE <-> IDLE by update; becoming ACTIVE is activity. */
                afsm_session_info before = AFSM_SESSION_INFO_INIT;
                if (afsm_session_get(engine, &m->id, &before) != AFSM_OK)
                    continue;
                afsm_update u = AFSM_UPDATE_INIT;
                u.fields = AFSM_UPDATE_STATE;
                u.state = before.state == AFSM_STATE_ACTIVE ? AFSM_STATE_IDLE : AFSM_STATE_ACTIVE;
                afsm_status st = afsm_session_update(engine, &m->id, &u, NULL);
                if (st == AFSM_OK && u.state == AFSM_STATE_ACTIVE)
                    m->last_active = now > m->last_active ? now : m->last_active;
            }
        }
        uint64_t r = rnd() % 100;
        uint64_t step_ns = r < 50 ? (rnd() % 300) * MS : r < 95 ? (rnd() % 120) * SEC : (rnd() % 3600) * SEC;
        if (sh->long_jumps && r >= 97)
            step_ns = (rnd() % (6 * 86400)) * SEC + (rnd() % 1000) * MS;
        now += step_ns;
        virtual_clock_set(&vclock, now);
        size_t expired;
        assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
        for (size_t i = 0; i < created_count; i++) {
            model *m = &sessions[i];
            if (m->gone)
                continue;
            uint64_t d = deadline_of(m);
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            afsm_status st = afsm_session_get(engine, &m->id, &info);
            if (fire_of(d) <= now) {
                if (st != AFSM_ENOTFOUND)
                    fail_msg("seed %llu step %d: session %zu due at %llu (fire %llu, closed %d) still there at %llu "
                             "(status %d, state %u)",
                             (unsigned long long)seed, step, i, (unsigned long long)d, (unsigned long long)fire_of(d),
                             m->closed, (unsigned long long)now, st, info.state);
                m->gone = 1;
            } else if (d > now) {
                if (st == AFSM_ENOTFOUND)
                    fail_msg("seed %llu step %d: session %zu due at %llu gone early at %llu (closed %d)",
                             (unsigned long long)seed, step, i, (unsigned long long)d, (unsigned long long)now,
                             m->closed);
            }
        }
    }
    size_t removed = 0;
    for (size_t i = 0; i < created_count; i++) {
        assert_true(sessions[i].removals <= 1);
        removed += sessions[i].removals;
    }
    assert_true(removed > created_count / 2); /* the run did expire, delete and close */
    free(hash_slots);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    free(sessions);
}

static void test_hours(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 3; seed++)
        run(0x9e3779b97f4a7c15ull * seed + 1, &hours);
}

static void test_weeks(void **state)
{
    (void)state;
    run(0x9e3779b97f4a7c15ull * 7 + 1, &weeks);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hours),
        cmocka_unit_test(test_weeks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
