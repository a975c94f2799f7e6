/*
 * test_expiry.c: expiry on the timing wheels, idle detection, closed
 * linger and events, in virtual time; and the races that matter
 * (heartbeat vs expiry, delete vs expiry), which CI also runs under TSan.
 * mem_inspect.h is included only to check the indexes after a pass.
 */
#include "test_support.h"

#include "mem_inspect.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

static virtual_clock vclock;

/* ---- exactly the due sessions expire, at every level ------------------ */

#define MANY 100000

typedef struct expiry_record {
    afsm_uuid *ids; /* creation order = sorted */
    size_t n;
    int *expired;
    size_t events;
} expiry_record;

static int compare_uuid(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(afsm_uuid));
}

static void record_expiry(void *ctx, const afsm_event *ev)
{
    expiry_record *rec = ctx;
    if (ev->type != AFSM_EVENT_EXPIRED)
        return;
    afsm_uuid *hit = bsearch(&ev->session_id, rec->ids, rec->n, sizeof(afsm_uuid), compare_uuid);
    assert_non_null(hit);
    rec->expired[hit - rec->ids]++;
    rec->events++;
}

static uint64_t fire_time(uint64_t deadline_ns)
{
    const uint64_t tick = 100 * MS;
    return (deadline_ns + tick - 1) / tick * tick;
}

/* An engine in virtual time (open_virtual_engine) whose sessions live 1 s
 * unless told otherwise, with on_event(ctx) (may be NULL) and `shards`
 * shards (0: open_virtual_engine's). */
static afsm_engine *open_one_second_engine(afsm_event_fn on_event, void *ctx, uint32_t shards)
{
    afsm_config cfg = {0};
    cfg.on_event = on_event;
    cfg.event_ctx = ctx;
    cfg.shard_count = shards;
    cfg.default_timeout_ms = 1000;
    return open_virtual_engine(&vclock, &cfg);
}

static void test_exactly_the_due_sessions_expire(void **state)
{
    (void)state;
    static expiry_record rec;
    rec.ids = calloc(MANY, sizeof(afsm_uuid));
    rec.expired = calloc(MANY, sizeof(int));
    uint64_t *deadline = calloc(MANY, sizeof(uint64_t));
    assert_non_null(rec.ids);
    assert_non_null(rec.expired);
    assert_non_null(deadline);
    afsm_config cfg = {0};
    cfg.on_event = record_expiry;
    cfg.event_ctx = &rec;
    cfg.shard_count = 4;
    afsm_engine *engine = open_virtual_engine(&vclock, &cfg);
    uint64_t start = virtual_clock_read(&vclock);

    /* Timeouts from a second to forty days: every level of the 100 ms
     * wheel (6.4 s, 6.8 min, 7.3 h, 19.4 days) and the overflow list. */
    static const uint64_t spans_ms[] = {1000, 6000, 400000, 26000000, 1600000000, 3456000000};
    uint64_t seed = 12345;
    for (size_t i = 0; i < MANY; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t span = spans_ms[i % 6];
        uint64_t timeout_ms = 1000 + (seed >> 11) % span;
        afsm_uuid conn;
        afsm_create_options o = make_options("u", "10.0.0.1", &conn);
        o.timeout_ms = timeout_ms;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
        rec.ids[i] = info.session_id;
        deadline[i] = start + timeout_ms * MS;
    }
    rec.n = MANY;

    /* Step through time: small steps, medium jumps and huge ones. */
    uint64_t now = start;
    size_t expired_total = 0;
    int step = 0;
    while (expired_total < MANY) {
        uint64_t jump = step % 5 == 0 ? 3 * 3600 * SEC : step % 3 == 0 ? 97 * SEC : 700 * MS + (uint64_t)step * MS;
        now += jump;
        step++;
        virtual_clock_set(&vclock, now);
        size_t expired = 0;
        assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
        expired_total += expired;
        /* Exactly the sessions whose fire time has come, each once. */
        size_t due = 0;
        for (size_t i = 0; i < MANY; i++) {
            int should = fire_time(deadline[i]) <= now;
            due += should;
            assert_int_equal(rec.expired[i], should);
        }
        assert_int_equal(expired_total, due);
        assert_int_equal(rec.events, due);
    }
    afsm_counts counts;
    afsm_engine_counts(engine, &counts);
    assert_int_equal(counts.total, 0);
    afsm_engine_close(engine);
    free(rec.ids);
    free(rec.expired);
    free(deadline);
}

/* ---- idle detection ---------------------------------------------------- */

typedef struct state_log {
    int to_idle;
    int to_active;
    int deleted_closed;
} state_log;

static void record_states(void *ctx, const afsm_event *ev)
{
    state_log *log = ctx;
    if (ev->type == AFSM_EVENT_STATE_CHANGED && ev->new_state == AFSM_STATE_IDLE)
        log->to_idle++;
    if (ev->type == AFSM_EVENT_STATE_CHANGED && ev->new_state == AFSM_STATE_ACTIVE)
        log->to_active++;
    if (ev->type == AFSM_EVENT_DELETED && ev->reason_len == 6 && memcmp(ev->reason, "closed", 6) == 0)
        log->deleted_closed++;
}

static afsm_engine *open_with(state_log *log, uint64_t idle_ms, uint64_t linger_ms)
{
    afsm_config cfg;
    virtual_config(&vclock, &cfg);
    cfg.idle_timeout_ms = idle_ms;
    cfg.close_linger_ms = linger_ms;
    cfg.on_event = record_states;
    cfg.event_ctx = log;
    afsm_engine *engine;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static void set_time(afsm_engine *engine, uint64_t now)
{
    virtual_clock_set(&vclock, now);
    assert_int_equal(afsm_engine_advance(engine, now, NULL), AFSM_OK);
}

static uint32_t state_of(afsm_engine *engine, const afsm_uuid *id)
{
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, id, &info), AFSM_OK);
    return info.state;
}

static void test_idle_detection(void **state)
{
    (void)state;
    state_log log = {0};
    afsm_engine *engine = open_with(&log, 5000, 0);
    afsm_session_info s = create_session(engine, "u");
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);

    set_time(engine, 1004 * SEC);
    assert_int_equal(state_of(engine, &s.session_id), AFSM_STATE_ACTIVE);
    set_time(engine, 1005 * SEC + 100 * MS);
    assert_int_equal(state_of(engine, &s.session_id), AFSM_STATE_IDLE);
    assert_int_equal(log.to_idle, 1);

    /* A heartbeat wakes it; then traffic alone keeps it active. */
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_OK);
    assert_int_equal(state_of(engine, &s.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(log.to_active, 2); /* the update, then the wake-up */
    afsm_stats delta = {1, 0, 0, 0, 0, 0, 0};
    for (uint64_t t = 1008; t <= 1020; t += 3) {
        virtual_clock_set(&vclock, t * SEC);
        assert_int_equal(afsm_session_add_stats(engine, &s.session_id, &delta), AFSM_OK);
        set_time(engine, t * SEC);
        assert_int_equal(state_of(engine, &s.session_id), AFSM_STATE_ACTIVE);
    }
    set_time(engine, 1026 * SEC);
    assert_int_equal(state_of(engine, &s.session_id), AFSM_STATE_IDLE);
    assert_int_equal(afsm_session_add_stats(engine, &s.session_id, &delta), AFSM_OK);
    assert_int_equal(state_of(engine, &s.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(log.to_idle, 2);
    assert_int_equal(log.to_active, 3);
    afsm_counts counts;
    afsm_engine_counts(engine, &counts);
    assert_int_equal(counts.by_state[AFSM_STATE_ACTIVE], 1);
    assert_int_equal(counts.by_state[AFSM_STATE_IDLE], 0);
    afsm_engine_close(engine);
}

static void test_closed_lingers_then_goes(void **state)
{
    (void)state;
    state_log log = {0};
    afsm_engine *engine = open_with(&log, 0, 3000);
    afsm_session_info s = create_session(engine, "u");
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_CLOSED;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    assert_int_equal(state_of(engine, &s.session_id), AFSM_STATE_CLOSED);
    /* Closed cannot be revived: the old service's heartbeat did. */
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_ECLOSED);
    u.state = AFSM_STATE_ACTIVE;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_ETRANSITION);
    set_time(engine, 1002 * SEC);
    assert_int_equal(state_of(engine, &s.session_id), AFSM_STATE_CLOSED);
    assert_int_equal(log.deleted_closed, 0);
    set_time(engine, 1003 * SEC);
    afsm_session_info gone = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &gone), AFSM_ENOTFOUND);
    assert_int_equal(log.deleted_closed, 1);
    afsm_engine_close(engine);
}

/* ---- events may call back into the engine ------------------------------ */

typedef struct reentry {
    afsm_engine *engine;
    afsm_uuid victim;
    int got_ok;
    int deleted;
} reentry;

static void reenter(void *ctx, const afsm_event *ev)
{
    reentry *r = ctx;
    if (ev->type != AFSM_EVENT_CREATED || r->engine == NULL)
        return;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    r->got_ok += afsm_session_get(r->engine, &ev->session_id, &info) == AFSM_OK;
    r->deleted += afsm_session_delete(r->engine, &r->victim, "from callback", 13) == AFSM_OK;
}

static void test_event_callback_may_call_engine(void **state)
{
    (void)state;
    reentry r = {0};
    afsm_config cfg = {0};
    cfg.on_event = reenter;
    cfg.event_ctx = &r;
    afsm_engine *engine = open_virtual_engine(&vclock, &cfg);
    r.victim = create_session(engine, "victim").session_id; /* engine not yet set: no reentry */
    r.engine = engine;
    create_session(engine, "trigger");
    assert_int_equal(r.got_ok, 1);
    assert_int_equal(r.deleted, 1);
    afsm_counts counts;
    afsm_engine_counts(engine, &counts);
    assert_int_equal(counts.total, 1);
    afsm_engine_close(engine);
}

/* ---- races --------------------------------------------------------------- */

typedef struct race {
    afsm_engine *engine;
    afsm_uuid kept;      /* heartbeated at every step: must never expire */
    afsm_uuid abandoned; /* never heartbeated: must expire within one tick */
    _Atomic uint64_t step;
    _Atomic uint64_t acked;
    _Atomic int stop;
    _Atomic int kept_failed;
    _Atomic uint64_t abandoned_expired_at;
} race;

static void race_events(void *ctx, const afsm_event *ev)
{
    race *r = ctx;
    if (ev->type != AFSM_EVENT_EXPIRED)
        return;
    if (memcmp(&ev->session_id, &r->kept, 16) == 0)
        atomic_store(&r->kept_failed, 1);
    if (memcmp(&ev->session_id, &r->abandoned, 16) == 0)
        atomic_store(&r->abandoned_expired_at, virtual_clock_read(&vclock));
}

/* Heartbeats at each new clock step (acknowledging it), and keeps
 * heartbeating while the driver advances the wheel: the race. */
static void *heartbeater(void *arg)
{
    race *r = arg;
    uint64_t seen = 0;
    while (!atomic_load(&r->stop)) {
        uint64_t step = atomic_load(&r->step);
        afsm_status st = afsm_session_heartbeat(r->engine, &r->kept, NULL);
        if (st != AFSM_OK)
            atomic_store(&r->kept_failed, 2);
        if (step != seen) {
            seen = step;
            atomic_store(&r->acked, step);
        }
    }
    return NULL;
}

static void test_heartbeat_racing_expiry(void **state)
{
    (void)state;
    static race r;
    memset(&r, 0, sizeof(r));
    r.engine = open_one_second_engine(race_events, &r, 0);
    r.kept = create_session(r.engine, "kept").session_id;
    r.abandoned = create_session(r.engine, "gone").session_id;
    uint64_t start = virtual_clock_read(&vclock);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, heartbeater, &r), 0);
    /* 30 virtual seconds in 50 ms steps; each step waits for a heartbeat at
     * the new time (so the kept session is never really overdue), then
     * advances the wheel while heartbeats continue. */
    for (uint64_t step = 1; step <= 600; step++) {
        virtual_clock_set(&vclock, start + step * 50 * MS);
        atomic_store(&r.step, step);
        while (atomic_load(&r.acked) != step && !atomic_load(&r.kept_failed))
            sched_yield();
        assert_int_equal(afsm_engine_advance(r.engine, start + step * 50 * MS, NULL), AFSM_OK);
    }
    atomic_store(&r.stop, 1);
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&r.kept_failed), 0);
    uint64_t expired_at = atomic_load(&r.abandoned_expired_at);
    assert_true(expired_at >= start + 1000 * MS);
    assert_true(expired_at <= start + 1100 * MS); /* within one 100 ms tick */
    afsm_engine_close(r.engine);
}

#define RACED 2000

typedef struct delete_race {
    afsm_engine *engine;
    afsm_uuid ids[RACED];
    _Atomic int events[RACED];
    uint64_t now;
} delete_race;

static void count_removals(void *ctx, const afsm_event *ev)
{
    delete_race *d = ctx;
    if (ev->type != AFSM_EVENT_EXPIRED && ev->type != AFSM_EVENT_DELETED)
        return;
    afsm_uuid *hit = bsearch(&ev->session_id, d->ids, RACED, sizeof(afsm_uuid), compare_uuid);
    assert_non_null(hit);
    atomic_fetch_add(&d->events[hit - d->ids], 1);
}

static void *deleter(void *arg)
{
    delete_race *d = arg;
    for (int i = RACED - 1; i >= 0; i--) {
        afsm_status st = afsm_session_delete(d->engine, &d->ids[i], "racing", 6);
        assert_true(st == AFSM_OK || st == AFSM_ENOTFOUND);
    }
    return NULL;
}

static void test_delete_racing_expiry_one_event_each(void **state)
{
    (void)state;
    static delete_race d;
    memset(&d, 0, sizeof(d));
    d.engine = open_one_second_engine(count_removals, &d, 0);
    for (int i = 0; i < RACED; i++)
        d.ids[i] = create_session(d.engine, i % 2 ? "a" : "b").session_id;
    virtual_clock_set(&vclock, virtual_clock_read(&vclock) + 2 * SEC);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, deleter, &d), 0);
    assert_int_equal(afsm_engine_advance(d.engine, virtual_clock_read(&vclock), NULL), AFSM_OK);
    pthread_join(t, NULL);
    for (int i = 0; i < RACED; i++)
        assert_int_equal(atomic_load(&d.events[i]), 1);
    afsm_counts counts;
    afsm_engine_counts(d.engine, &counts);
    assert_int_equal(counts.total, 0);
    afsm_engine_close(d.engine);
}

/* ---- batched settling ---------------------------------------------------- */

/* One advance settles its victims in groups that lock the union of their
 * lock sets once (mem/expiry.c): the edges of that. */

#define GROUPED 20000 /* > the wheel's per-hold budget (4096) on each of 4 shards */

typedef struct grouped {
    afsm_engine *engine;
    afsm_uuid ids[GROUPED]; /* creation order = sorted */
    int expired[GROUPED];
    int deleted[GROUPED];
    int events_after_end[GROUPED];
    size_t first_victim; /* deleted and heartbeated from the first EXPIRED event */
    int acted;
    afsm_status delete_status;
    afsm_status heartbeat_status;
} grouped;

static void grouped_events(void *ctx, const afsm_event *ev)
{
    grouped *g = ctx;
    if (ev->type != AFSM_EVENT_EXPIRED && ev->type != AFSM_EVENT_DELETED)
        return;
    afsm_uuid *hit = bsearch(&ev->session_id, g->ids, GROUPED, sizeof(afsm_uuid), compare_uuid);
    assert_non_null(hit);
    size_t i = (size_t)(hit - g->ids);
    if (g->expired[i] + g->deleted[i] != 0)
        g->events_after_end[i]++;
    if (ev->type == AFSM_EVENT_EXPIRED) {
        g->expired[i]++;
        /* The user id comes from the entry the removal may have retired. */
        char want[16];
        snprintf(want, sizeof(want), "u%zu", i % 997);
        assert_int_equal(ev->user_id_len, strlen(want));
        assert_memory_equal(ev->user_id, want, ev->user_id_len);
    } else {
        g->deleted[i]++;
    }
    if (ev->type == AFSM_EVENT_EXPIRED && !g->acted) {
        /* While the rest of the advance is still settling: a delete of a
         * session decided (or about to be) expired gets one event, never
         * two, and a heartbeat past the deadline revives nothing. */
        g->acted = 1;
        g->delete_status = afsm_session_delete(g->engine, &g->ids[g->first_victim], "cb", 2);
        g->heartbeat_status = afsm_session_heartbeat(g->engine, &g->ids[g->first_victim - 1], NULL);
    }
}

static void test_grouped_settling_edges(void **state)
{
    (void)state;
    static grouped g;
    memset(&g, 0, sizeof(g));
    g.engine = open_one_second_engine(grouped_events, &g, 4);
    uint64_t t0 = virtual_clock_read(&vclock);
    /* ~20 sessions per user, users on every shard: each group of victims
     * spans several lock sets, and a user's last session goes in the same
     * group as others of that user. */
    for (size_t i = 0; i < GROUPED; i++) {
        char user[16];
        snprintf(user, sizeof(user), "u%zu", i % 997);
        g.ids[i] = create_session(g.engine, user).session_id;
    }
    g.first_victim = GROUPED - 1;
    /* Every 200th session heartbeated just before its deadline: its timer
     * fires with the others' but it must not be expired. */
    virtual_clock_set(&vclock, t0 + 999 * MS);
    for (size_t i = 0; i < GROUPED; i += 200)
        assert_int_equal(afsm_session_heartbeat(g.engine, &g.ids[i], NULL), AFSM_OK);
    virtual_clock_set(&vclock, t0 + 1500 * MS);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(g.engine, t0 + 1500 * MS, &expired), AFSM_OK);
    assert_true(g.acted);
    assert_int_not_equal(g.heartbeat_status, AFSM_OK);
    size_t kept = 0, expired_events = 0;
    for (size_t i = 0; i < GROUPED; i++) {
        assert_int_equal(g.events_after_end[i], 0);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_session_get(g.engine, &g.ids[i], &info);
        if (i % 200 == 0) {
            assert_int_equal(st, AFSM_OK); /* heartbeated: alive */
            assert_int_equal(g.expired[i] + g.deleted[i], 0);
            kept++;
            continue;
        }
        assert_int_equal(st, AFSM_ENOTFOUND);
        if (i == g.first_victim) {
            /* Removed by whichever got there first, with that one's event. */
            assert_int_equal(g.deleted[i], g.delete_status == AFSM_OK);
            assert_int_equal(g.expired[i], g.delete_status != AFSM_OK);
        } else {
            assert_int_equal(g.expired[i], 1);
            assert_int_equal(g.deleted[i], 0);
        }
        expired_events += (size_t)g.expired[i];
    }
    assert_int_equal(expired, expired_events);
    afsm_counts counts;
    afsm_engine_counts(g.engine, &counts);
    assert_int_equal(counts.total, kept);
    /* The heartbeated ones expire a second later, and their users go with
     * them: nothing of any user is left. */
    virtual_clock_set(&vclock, t0 + 2500 * MS);
    assert_int_equal(afsm_engine_advance(g.engine, t0 + 2500 * MS, &expired), AFSM_OK);
    assert_int_equal(expired, kept);
    afsm_engine_counts(g.engine, &counts);
    assert_int_equal(counts.total, 0);
    for (size_t u = 0; u < 997; u++) {
        char user[16];
        snprintf(user, sizeof(user), "u%zu", u);
        size_t removed = 1;
        assert_int_equal(afsm_session_delete_by_user(g.engine, user, strlen(user), NULL, 0, &removed), AFSM_OK);
        assert_int_equal(removed, 0);
    }
    for (size_t i = 0; i < GROUPED; i++)
        assert_int_equal(g.expired[i] + g.deleted[i], 1);
    afsm_engine_close(g.engine);
}

/* Writers on every shard while groups hold several shard locks at once:
 * the union is taken in ascending order like every lock set, so this ends
 * (a deadlock would hang it), and every session ends exactly once. */

#define CHURNED 4000

typedef struct churn {
    afsm_engine *engine;
    _Atomic int stop;
    _Atomic long created;
    _Atomic long deleted;
} churn;

static void *churner(void *arg)
{
    churn *c = arg;
    afsm_uuid mine[64];
    size_t n = 0;
    for (unsigned round = 0; !atomic_load(&c->stop); round++) {
        char user[16];
        snprintf(user, sizeof(user), "u%u", round % 61);
        afsm_uuid conn;
        afsm_create_options o = make_options(user, "10.1.2.3", &conn);
        o.timeout_ms = 3600 * 1000;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        if (afsm_session_create(c->engine, &o, &info) == AFSM_OK) {
            atomic_fetch_add(&c->created, 1);
            mine[n++] = info.session_id;
        }
        if (n == 64 || (round & 7) == 0) {
            while (n > 0)
                atomic_fetch_add(&c->deleted, afsm_session_delete(c->engine, &mine[--n], NULL, 0) == AFSM_OK);
        }
    }
    while (n > 0)
        atomic_fetch_add(&c->deleted, afsm_session_delete(c->engine, &mine[--n], NULL, 0) == AFSM_OK);
    return NULL;
}

static void test_grouped_settling_with_writers(void **state)
{
    (void)state;
    static churn c;
    memset(&c, 0, sizeof(c));
    c.engine = open_one_second_engine(NULL, NULL, 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, churner, &c), 0);
    uint64_t now = virtual_clock_read(&vclock);
    size_t total = 0;
    for (int round = 0; round < 5; round++) {
        for (size_t i = 0; i < CHURNED; i++) {
            char user[16];
            snprintf(user, sizeof(user), "u%zu", i % 61); /* the churner's users too */
            create_session(c.engine, user);
        }
        now += 1500 * MS;
        virtual_clock_set(&vclock, now);
        size_t expired = 0;
        assert_int_equal(afsm_engine_advance(c.engine, now, &expired), AFSM_OK);
        assert_int_equal(expired, CHURNED);
        total += expired;
    }
    atomic_store(&c.stop, 1);
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&c.created), atomic_load(&c.deleted));
    afsm_counts counts;
    afsm_engine_counts(c.engine, &counts);
    assert_int_equal(counts.total, 0);
    assert_int_equal(total, 5 * CHURNED);
    afsm_engine_close(c.engine);
}

/* ---- the reaper thread -------------------------------------------------- */

typedef struct reaper_watch {
    pthread_mutex_t lock;
    pthread_cond_t expired;
    int count;
    _Atomic int closed;
    _Atomic int after_close;
} reaper_watch;

static void watch_events(void *ctx, const afsm_event *ev)
{
    reaper_watch *w = ctx;
    if (atomic_load(&w->closed))
        atomic_store(&w->after_close, 1);
    if (ev->type != AFSM_EVENT_EXPIRED)
        return;
    pthread_mutex_lock(&w->lock);
    w->count++;
    pthread_cond_signal(&w->expired);
    pthread_mutex_unlock(&w->lock);
}

static void test_reaper_thread_expires_and_stops(void **state)
{
    (void)state;
    static reaper_watch w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.cleanup_interval_ms = 10;
    cfg.tick_ms = 10;
    cfg.default_timeout_ms = 30;
    cfg.on_event = watch_events;
    cfg.event_ctx = &w;
    afsm_engine *engine;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK); /* real clock, reaper thread */
    for (int i = 0; i < 10; i++)
        create_session(engine, "u");
    /* Wait for the reaper's events (bounded: 10 s would mean it is stuck). */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&w.lock);
    while (w.count < 10) {
        if (pthread_cond_timedwait(&w.expired, &w.lock, &until) != 0)
            break;
    }
    int count = w.count;
    pthread_mutex_unlock(&w.lock);
    assert_int_equal(count, 10);
    for (int i = 0; i < 5; i++)
        create_session(engine, "u");
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    atomic_store(&w.closed, 1);
    assert_int_equal(atomic_load(&w.after_close), 0);
}

/* A user's entry leaves with its last session. The settle groups drop the
 * entries they empty together, after their removals (mem/expiry.c): users
 * with one session, users keeping a session, and users whose sessions
 * span groups, on two shards so each group spans lock sets. */

#define SOLO_USERS 300
#define PAIR_USERS 50

typedef struct emptied_users {
    size_t expired;
    size_t wrong_user; /* an EXPIRED whose user id is not its session's */
    afsm_uuid solo[SOLO_USERS];
} emptied_users;

static void check_expired_user(void *ctx, const afsm_event *ev)
{
    emptied_users *u = ctx;
    if (ev->type != AFSM_EVENT_EXPIRED)
        return;
    u->expired++;
    /* Read from the entry its removal emptied: still there at capture. */
    char want[32];
    for (size_t i = 0; i < SOLO_USERS; i++) {
        if (memcmp(&u->solo[i], &ev->session_id, sizeof(afsm_uuid)) == 0) {
            snprintf(want, sizeof(want), "solo%zu", i);
            u->wrong_user += ev->user_id_len != strlen(want) || memcmp(ev->user_id, want, ev->user_id_len) != 0;
            return;
        }
    }
    u->wrong_user += ev->user_id_len < 4 || memcmp(ev->user_id, "pair", 4) != 0;
}

static void test_emptied_users_leave_in_groups(void **state)
{
    (void)state;
    static emptied_users u;
    memset(&u, 0, sizeof(u));
    afsm_engine *engine = open_one_second_engine(check_expired_user, &u, 2);
    uint64_t t0 = virtual_clock_read(&vclock);
    afsm_uuid kept[PAIR_USERS];
    char user[32];
    for (size_t i = 0; i < SOLO_USERS; i++) {
        snprintf(user, sizeof(user), "solo%zu", i);
        u.solo[i] = create_session(engine, user).session_id;
        if (i % 6 == 0 && i / 6 < PAIR_USERS) {
            snprintf(user, sizeof(user), "pair%zu", i / 6);
            create_session(engine, user);
            kept[i / 6] = create_session(engine, user).session_id;
        }
    }
    /* One session of each pair user lives on. */
    virtual_clock_set(&vclock, t0 + 999 * MS);
    for (size_t i = 0; i < PAIR_USERS; i++)
        assert_int_equal(afsm_session_heartbeat(engine, &kept[i], NULL), AFSM_OK);
    virtual_clock_set(&vclock, t0 + 1500 * MS);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, t0 + 1500 * MS, &expired), AFSM_OK);
    assert_int_equal(expired, SOLO_USERS + PAIR_USERS);
    assert_int_equal(u.expired, expired);
    assert_int_equal(u.wrong_user, 0);
    /* No entry without sessions is left, and the pair users' stay. */
    assert_int_equal(engine_check_indexes(engine, 0), PAIR_USERS);
    afsm_session_info page[4];
    for (size_t i = 0; i < 4; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    for (size_t i = 0; i < PAIR_USERS; i++) {
        snprintf(user, sizeof(user), "pair%zu", i);
        size_t count;
        uint64_t total;
        assert_int_equal(list_user_page(engine, user, page, 4, &count, &total), AFSM_OK);
        assert_int_equal(count, 1);
        assert_memory_equal(&page[0].session_id, &kept[i], sizeof(afsm_uuid));
    }
    /* A user whose entry went starts again with a fresh one. */
    afsm_session_info again = create_session(engine, "solo7");
    size_t removed = 0;
    assert_int_equal(afsm_session_delete_by_user(engine, "solo7", 5, NULL, 0, &removed), AFSM_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(afsm_session_get(engine, &again.session_id, &page[0]), AFSM_ENOTFOUND);
    assert_int_equal(engine_check_indexes(engine, 0), PAIR_USERS);
    afsm_engine_close(engine);
}

/* Users emptied by CLOSED outcomes (a linger ending) as well as EXPIRED
 * ones, in the same group: "closed" users' only session lingers out,
 * "mixed" users lose one session to its linger and the other to expiry
 * in the same wheel slot, "twin" users lose two sessions to expiry in the
 * same slot, and "idle" users lose one to expiry while the other turns
 * IDLE in the same pass (IDLE outcomes remove nothing: the entry stays).
 * One shard, so each group holds several of a user's sessions at once;
 * four, so groups span lock sets. */

#define OUTCOME_USERS    48 /* of each kind */
#define OUTCOME_SESSIONS (OUTCOME_USERS * 7)

typedef struct outcome_log {
    afsm_uuid ids[OUTCOME_SESSIONS];
    char users[OUTCOME_SESSIONS][16];
    size_t count;
    size_t closed, expired, idle;
    size_t wrong_user; /* a removal whose user id is not its session's */
} outcome_log;

static void log_outcome(void *ctx, const afsm_event *ev)
{
    outcome_log *log = ctx;
    if (ev->type == AFSM_EVENT_STATE_CHANGED && ev->new_state == AFSM_STATE_IDLE)
        log->idle++;
    if (ev->type != AFSM_EVENT_EXPIRED && ev->type != AFSM_EVENT_DELETED)
        return;
    if (ev->type == AFSM_EVENT_EXPIRED)
        log->expired++;
    else if (ev->reason_len == 6 && memcmp(ev->reason, "closed", 6) == 0)
        log->closed++;
    for (size_t i = 0; i < log->count; i++) {
        if (memcmp(&log->ids[i], &ev->session_id, sizeof(afsm_uuid)) == 0) {
            const char *want = log->users[i];
            log->wrong_user += ev->user_id_len != strlen(want) || memcmp(ev->user_id, want, ev->user_id_len) != 0;
            return;
        }
    }
    log->wrong_user++;
}

static afsm_uuid outcome_session(afsm_engine *engine, outcome_log *log, const char *kind, size_t i)
{
    char *user = log->users[log->count];
    snprintf(user, sizeof(log->users[0]), "%s%zu", kind, i);
    afsm_uuid id = create_session(engine, user).session_id;
    log->ids[log->count++] = id;
    return id;
}

static void set_state(afsm_engine *engine, const afsm_uuid *id, uint32_t to)
{
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = to;
    assert_int_equal(afsm_session_update(engine, id, &u, NULL), AFSM_OK);
}

static void outcomes_empty_users(uint32_t shards)
{
    static outcome_log log;
    memset(&log, 0, sizeof(log));
    afsm_config cfg;
    virtual_config(&vclock, &cfg);
    cfg.shard_count = shards;
    cfg.default_timeout_ms = 1000;
    cfg.idle_timeout_ms = 500;
    cfg.close_linger_ms = 200;
    cfg.on_event = log_outcome;
    cfg.event_ctx = &log;
    afsm_engine *engine;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    uint64_t t0 = virtual_clock_read(&vclock);
    afsm_uuid closed[OUTCOME_USERS], lingering[OUTCOME_USERS], waking[OUTCOME_USERS];
    /* Interleaved, so the sessions of one slot come in mixed kinds. */
    for (size_t i = 0; i < OUTCOME_USERS; i++) {
        closed[i] = outcome_session(engine, &log, "closed", i);
        lingering[i] = outcome_session(engine, &log, "mixed", i);
        outcome_session(engine, &log, "mixed", i);
        outcome_session(engine, &log, "twin", i);
        outcome_session(engine, &log, "twin", i);
        waking[i] = outcome_session(engine, &log, "idle", i);
        outcome_session(engine, &log, "idle", i);
    }
    virtual_clock_set(&vclock, t0 + 100 * MS);
    for (size_t i = 0; i < OUTCOME_USERS; i++)
        set_state(engine, &closed[i], AFSM_STATE_CLOSED);
    /* Their linger ends in the slot their siblings expire in. */
    virtual_clock_set(&vclock, t0 + 800 * MS);
    for (size_t i = 0; i < OUTCOME_USERS; i++)
        set_state(engine, &lingering[i], AFSM_STATE_CLOSED);
    /* Idle at t0 + 1400 ms, expiring at t0 + 1900 ms. */
    virtual_clock_set(&vclock, t0 + 900 * MS);
    for (size_t i = 0; i < OUTCOME_USERS; i++)
        set_state(engine, &waking[i], AFSM_STATE_ACTIVE);
    virtual_clock_set(&vclock, t0 + 1500 * MS);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, t0 + 1500 * MS, &expired), AFSM_OK);
    assert_int_equal(expired, 4 * OUTCOME_USERS); /* mixed's second, both twins, idle's second */
    assert_int_equal(log.expired, expired);
    assert_int_equal(log.closed, 2 * OUTCOME_USERS);
    assert_int_equal(log.idle, OUTCOME_USERS);
    assert_int_equal(log.wrong_user, 0);
    /* Only the idle users' entries stay, one session each. */
    assert_int_equal(engine_check_indexes(engine, 0), OUTCOME_USERS);
    for (size_t i = 0; i < OUTCOME_USERS; i++)
        assert_int_equal(state_of(engine, &waking[i]), AFSM_STATE_IDLE);
    virtual_clock_set(&vclock, t0 + 2500 * MS);
    assert_int_equal(afsm_engine_advance(engine, t0 + 2500 * MS, &expired), AFSM_OK);
    assert_int_equal(expired, OUTCOME_USERS);
    assert_int_equal(log.wrong_user, 0);
    assert_int_equal(engine_check_indexes(engine, 0), 0);
    /* Every user may start again. */
    for (size_t i = 0; i < log.count; i += 7)
        create_session(engine, log.users[i]);
    assert_int_equal(engine_check_indexes(engine, 0), OUTCOME_USERS);
    afsm_engine_close(engine);
}

static void test_closed_and_idle_outcomes_empty_users(void **state)
{
    (void)state;
    outcomes_empty_users(1);
    outcomes_empty_users(4);
}

/* Callbacks of a group's events run after its drops, between groups: one
 * gives a user whose entry its group dropped a session again, and another
 * user one before or after that user's own session goes (its group then
 * empties nothing, or drops an entry a callback made); some advance again
 * from inside. Each user ends with exactly the session its callback made. */

#define REFILLED 256

typedef struct refill {
    afsm_engine *engine;
    uint64_t now;
    afsm_uuid made[REFILLED];
    size_t made_count;
    int failures;
} refill;

static void refill_user(void *ctx, const afsm_event *ev)
{
    refill *r = ctx;
    if (ev->type != AFSM_EVENT_EXPIRED)
        return;
    unsigned i;
    char user[16];
    memcpy(user, ev->user_id, ev->user_id_len < 15 ? ev->user_id_len : 15);
    user[ev->user_id_len < 15 ? ev->user_id_len : 15] = '\0';
    if (sscanf(user, "refill%u", &i) != 1 || i % 2 != 0 || i + 1 >= REFILLED) {
        return;
    }
    for (unsigned k = i; k <= i + 1; k++) {
        snprintf(user, sizeof(user), "refill%u", k);
        afsm_uuid conn;
        afsm_create_options o = make_options(user, "192.168.1.100", &conn);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        r->failures += afsm_session_create(r->engine, &o, &info) != AFSM_OK;
        r->made[k] = info.session_id;
        r->made_count++;
    }
    if (i % 16 == 0) {
        size_t nested = 0;
        r->failures += afsm_engine_advance(r->engine, r->now, &nested) != AFSM_OK;
    }
}

static void test_callbacks_refill_emptied_users(void **state)
{
    (void)state;
    static refill r;
    memset(&r, 0, sizeof(r));
    r.engine = open_one_second_engine(refill_user, &r, 2);
    uint64_t t0 = virtual_clock_read(&vclock);
    char user[16];
    for (unsigned i = 0; i < REFILLED; i++) {
        snprintf(user, sizeof(user), "refill%u", i);
        create_session(r.engine, user);
    }
    r.now = t0 + 1500 * MS;
    virtual_clock_set(&vclock, r.now);
    assert_int_equal(afsm_engine_advance(r.engine, r.now, NULL), AFSM_OK);
    assert_int_equal(r.failures, 0);
    assert_int_equal(r.made_count, REFILLED);
    assert_int_equal(engine_check_indexes(r.engine, 0), REFILLED);
    afsm_session_info page[2];
    for (size_t i = 0; i < 2; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    for (unsigned i = 0; i < REFILLED; i++) {
        snprintf(user, sizeof(user), "refill%u", i);
        size_t count;
        uint64_t total;
        assert_int_equal(list_user_page(r.engine, user, page, 2, &count, &total), AFSM_OK);
        assert_int_equal(count, 1);
        assert_memory_equal(&page[0].session_id, &r.made[i], sizeof(afsm_uuid));
    }
    afsm_engine_close(r.engine);
}

/* Lock-free readers and evicting creates racing the settle groups that
 * empty users: a reader lists users whose entries groups are emptying and
 * dropping (never an error, never above the cap of 2, never another user's
 * session), a writer creates for them under evict-oldest (its lock-free
 * peek of the oldest may meet an entry its group has emptied and not yet
 * dropped), and the main thread advances in steps that end a third of the
 * users each time. CI also runs it under TSan. */

#define RACE_USERS  192
#define RACE_ROUNDS 120

typedef struct emptying_race {
    afsm_engine *engine;
    _Atomic int stop;
    _Atomic long creates;
    _Atomic long allowed; /* creates the main thread lets happen so far */
    _Atomic long lists;
    _Atomic long bad;
} emptying_race;

static void race_user(char *user, size_t size, unsigned k)
{
    snprintf(user, size, "race%u", k % RACE_USERS);
}

static void *emptying_reader(void *arg)
{
    emptying_race *r = arg;
    afsm_session_info page[4];
    for (size_t i = 0; i < 4; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    for (unsigned k = 0; !atomic_load(&r->stop); k += 7) {
        char user[16];
        race_user(user, sizeof(user), k);
        size_t count;
        uint64_t total;
        afsm_status st = list_user_page(r->engine, user, page, 4, &count, &total);
        long bad = st != AFSM_OK || count > 2 || total > 2;
        size_t len = strlen(user);
        for (size_t i = 0; i < count && i < 4; i++)
            bad += page[i].user_id_len != len || memcmp(page[i].user_id, user, len) != 0;
        atomic_fetch_add(&r->bad, bad);
        atomic_fetch_add(&r->lists, 1);
    }
    return NULL;
}

static void *emptying_creator(void *arg)
{
    emptying_race *r = arg;
    unsigned seed = 12345;
    while (!atomic_load(&r->stop)) {
        if (atomic_load(&r->creates) >= atomic_load(&r->allowed)) {
            sched_yield();
            continue;
        }
        seed = seed * 1103515245u + 12345u;
        char user[16];
        race_user(user, sizeof(user), seed >> 8);
        afsm_uuid conn;
        afsm_create_options o = make_options(user, "10.1.2.3", &conn);
        atomic_fetch_add(&r->bad, afsm_session_create(r->engine, &o, NULL) != AFSM_OK);
        atomic_fetch_add(&r->creates, 1);
    }
    return NULL;
}

static void test_readers_and_evictions_racing_emptied_users(void **state)
{
    (void)state;
    static emptying_race r;
    memset(&r, 0, sizeof(r));
    afsm_config cfg;
    virtual_config(&vclock, &cfg);
    cfg.shard_count = 4;
    cfg.default_timeout_ms = 1000;
    cfg.max_sessions_per_user = 2;
    cfg.limit_policy = AFSM_LIMIT_EVICT_OLDEST;
    assert_int_equal(afsm_engine_open(&cfg, &r.engine), AFSM_OK);
    pthread_t reader, creator;
    assert_int_equal(pthread_create(&reader, NULL, emptying_reader, &r), 0);
    assert_int_equal(pthread_create(&creator, NULL, emptying_creator, &r), 0);
    uint64_t now = virtual_clock_read(&vclock);
    uint64_t deadline = real_ns() + 20 * SEC;
    size_t expired = 0;
    for (int round = 0; round < RACE_ROUNDS; round++) {
        now += 400 * MS;
        virtual_clock_set(&vclock, now);
        /* A third of the users get a session per step, created while the
         * step's advance runs: most sessions end by expiry, some by
         * eviction. */
        long want = atomic_fetch_add(&r.allowed, RACE_USERS / 3) + RACE_USERS / 3;
        size_t n = 0;
        assert_int_equal(afsm_engine_advance(r.engine, now, &n), AFSM_OK);
        expired += n;
        while (atomic_load(&r.creates) < want && real_ns() < deadline)
            sched_yield();
        if (real_ns() >= deadline)
            break; /* a slow (sanitized) build: fewer rounds, same checks */
    }
    atomic_store(&r.stop, 1);
    pthread_join(reader, NULL);
    pthread_join(creator, NULL);
    assert_true(atomic_load(&r.lists) > 0);
    /* Most sessions ended by expiry, their users emptied. */
    assert_true(expired > (size_t)atomic_load(&r.creates) / 2);
    assert_int_equal(atomic_load(&r.bad), 0);
    assert_true(engine_check_indexes(r.engine, 2) <= 2 * RACE_USERS);
    now += 3600 * SEC;
    virtual_clock_set(&vclock, now);
    assert_int_equal(afsm_engine_advance(r.engine, now, NULL), AFSM_OK);
    assert_int_equal(engine_check_indexes(r.engine, 2), 0);
    afsm_engine_close(r.engine);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exactly_the_due_sessions_expire),
        cmocka_unit_test(test_idle_detection),
        cmocka_unit_test(test_closed_lingers_then_goes),
        cmocka_unit_test(test_event_callback_may_call_engine),
        cmocka_unit_test(test_heartbeat_racing_expiry),
        cmocka_unit_test(test_delete_racing_expiry_one_event_each),
        cmocka_unit_test(test_grouped_settling_edges),
        cmocka_unit_test(test_grouped_settling_with_writers),
        cmocka_unit_test(test_emptied_users_leave_in_groups),
        cmocka_unit_test(test_closed_and_idle_outcomes_empty_users),
        cmocka_unit_test(test_callbacks_refill_emptied_users),
        cmocka_unit_test(test_readers_and_evictions_racing_emptied_users),
        cmocka_unit_test(test_reaper_thread_expires_and_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
