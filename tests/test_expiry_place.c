/*
 * test_expiry_place.c: an expiry group's removal places (home and
 * connection shards, both keys' hashes; mem_place_locate) are found once,
 * before the group's lock set is taken, and used under it for the items
 * still not removed (mem/expiry.c settle_group). Written by a reviewer
 * trying to break that change; it passed before and after it, and stays
 * to hold the window shut.
 *
 * The window attacked: between settle_group's first loop (mem_place_locate,
 * no lock held) and the removals under the lock set. A table hash hook
 * (table_hash_override, which mem_place_locate reaches through
 * table_hash_uuid) stops the advancing thread right after it has found
 * the place of the K-th item of its first group, and a helper thread then
 * changes the store while the advance waits:
 *
 *   - deletes the placed item and every other session (items placed
 *     before, and items the first loop then skips: their places are never
 *     written, so a removal that used one would read garbage);
 *   - deletes the placed item and every other one (by index parity);
 *   - creates thousands of sessions, so every shard's tables are rebuilt
 *     (new maps) between the hashes and the removals that use them;
 *   - deletes the placed item and restores a new record with the same
 *     session id and connection id (same slots' keys, another address);
 *   - deletes the placed item's user's sessions (delete_by_user).
 *
 * Then it checks what a user relies on: each session ended once with the
 * right event, counts and metrics agree, every index holds exactly the
 * live sessions (mem_inspect.h), no slab slot leaked, and the removed
 * sessions' connection ids can be taken again.
 *
 * Also: the session_duration histogram for expired sessions (deadline,
 * not reaper time) and for other removals (clock at removal).
 *
 * Threads wait on conditions with deadlines (spin_until), never sleep.
 */
#include "advance_window.h"
#include "event_ledger.h"

#include <pthread.h>

#define N_SESSIONS  40 /* one home run (64): one home shard, a group of 32 and one of 8 */
#define MAX_TRACKED (N_SESSIONS + 8)

enum action { ACT_DELETE_ALL, ACT_DELETE_HALF, ACT_REBUILD, ACT_RESTORE_SAME_KEYS, ACT_DELETE_USER };

typedef struct place_ctx {
    ledger ledger;
    afsm_engine *engine;
    virtual_clock *clock;
    afsm_uuid ids[N_SESSIONS];
    afsm_uuid conns[N_SESSIONS];
    afsm_session_info infos[N_SESSIONS];
    char users[N_SESSIONS][16];
    enum action action;
    advance_window window; /* over conns; triggered: the session whose place was just found */
    long deleted_ok, restored_ok, created_ok;
    size_t by_user_deleted;
} place_ctx;

static place_ctx *current;
static _Thread_local int on_advancer;

/* A good hash for any key (the engine's own uuid formula for 16 bytes),
 * set before the engine opens and kept until it closes, so every table
 * agrees with itself. On the advancing thread, while armed, the K-th hash
 * of a tracked connection id (mem_place_locate's last step for that item,
 * in settle_group's first loop; hashes 33..40 are the first group's
 * look-ahead at the second's slots) hands over to the helper and waits
 * for it (advance_window.h). */
static unsigned long hook_hash(const void *key, size_t len, unsigned long seed)
{
    unsigned long h;
    if (len == 16) {
        uint64_t lo, hi;
        memcpy(&hi, key, 8);
        memcpy(&lo, (const char *)key + 8, 8);
        h = table_mix(lo ^ table_mix(hi ^ seed));
    } else {
        uint64_t x = UINT64_C(0xcbf29ce484222325) ^ seed;
        for (size_t i = 0; i < len; i++)
            x = (x ^ ((const unsigned char *)key)[i]) * UINT64_C(0x100000001b3);
        h = table_mix(x);
    }
    if (current != NULL && on_advancer && len == 16)
        advance_window_observe(&current->window, key);
    return h;
}

static void record_event(void *arg, const afsm_event *ev)
{
    place_ctx *c = arg;
    ledger_record(&c->ledger, ev);
}

static void *helper_main(void *arg)
{
    place_ctx *c = arg;
    if (!advance_window_wait(&c->window))
        return NULL;
    int x = c->window.triggered;
    afsm_status st;
    switch (c->action) {
    case ACT_DELETE_ALL:
    case ACT_DELETE_HALF:
        for (int i = 0; i < N_SESSIONS; i++) {
            if (c->action == ACT_DELETE_HALF && i != x && i % 2 == 0)
                continue;
            st = afsm_session_delete(c->engine, &c->ids[i], NULL, 0);
            THREAD_CHECK(st == AFSM_OK);
            c->deleted_ok++;
        }
        break;
    case ACT_REBUILD:
        for (int i = 0; i < 5000; i++) {
            st = create_for(c->engine, "rebuild-user", 3600 * 1000, NULL);
            THREAD_CHECK(st == AFSM_OK);
            c->created_ok++;
        }
        break;
    case ACT_RESTORE_SAME_KEYS: {
        st = afsm_session_delete(c->engine, &c->ids[x], NULL, 0);
        THREAD_CHECK(st == AFSM_OK);
        c->deleted_ok++;
        afsm_session_info info = c->infos[x];
        /* A new life, not expired: active at the advance's time, with an
         * hour to go. */
        info.timeout_ms = 3600 * 1000;
        info.last_active_at_ns = info.created_at_ns + 5 * (int64_t)SEC;
        st = afsm_session_restore(c->engine, &info, NULL, 0);
        if (st != AFSM_OK)
            fprintf(stderr, "restore: %s (%s)\n", afsm_status_name(st), afsm_error_detail());
        THREAD_CHECK(st == AFSM_OK);
        c->restored_ok++;
        break;
    }
    case ACT_DELETE_USER:
        st = afsm_session_delete_by_user(c->engine, c->users[x], strlen(c->users[x]), NULL, 0, &c->by_user_deleted);
        THREAD_CHECK(st == AFSM_OK);
        break;
    }
    advance_window_release(&c->window);
    return NULL;
}

typedef struct outcome {
    size_t expired_first; /* the armed advance's count */
    afsm_metrics metrics;
} outcome;

/* Sessions created from this thread (one home run: one home shard, two
 * groups), all due at the advance; users u0..u9 with four sessions each. */
static void run(place_ctx *c, enum action action, long trigger_at, uint32_t shard_count, outcome *out)
{
    memset(c, 0, sizeof(*c));
    ledger_init(&c->ledger);
    c->action = action;
    c->window.conns = c->conns;
    c->window.conn_count = N_SESSIONS;
    c->window.trigger_at = trigger_at;
    static virtual_clock clock;
    c->clock = &clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = shard_count;
    cfg.on_event = record_event;
    cfg.event_ctx = c;
    table_hash_override = hook_hash;
    afsm_engine *engine = open_engine(&clock, &cfg);
    c->engine = engine;
    for (int i = 0; i < N_SESSIONS; i++) {
        snprintf(c->users[i], sizeof(c->users[i]), "u%d", i % 10);
        afsm_create_options o = make_options(c->users[i], "10.1.2.3", &c->conns[i]);
        o.timeout_ms = 1000;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
        c->ids[i] = info.session_id;
        c->infos[i] = info;
    }
    mem_store *ms = (mem_store *)engine->st;
    unsigned home = mem_shard_of_id(ms, &c->ids[0]);
    int same_home = 0, other_conn = 0;
    for (int i = 0; i < N_SESSIONS; i++) {
        same_home += mem_shard_of_id(ms, &c->ids[i]) == home;
        other_conn += mem_shard_of_connection(ms, &c->conns[i]) != home;
    }
    /* The attack needs a group of several items, with connection shards
     * other than the home one in its lock set. */
    assert_int_equal(same_home, N_SESSIONS);
    if (shard_count > 1)
        assert_true(other_conn > 0);
    if (shard_count >= 16)
        assert_true(other_conn > N_SESSIONS / 2);

    current = c;
    pthread_t helper;
    assert_int_equal(pthread_create(&helper, NULL, helper_main, c), 0);
    uint64_t now = virtual_clock_read(&clock) + 5 * SEC;
    virtual_clock_set(&clock, now);
    atomic_store(&c->window.armed, 1);
    on_advancer = 1;
    assert_int_equal(afsm_engine_advance(engine, now, &out->expired_first), AFSM_OK);
    on_advancer = 0;
    bool reached = advance_window_close(&c->window);
    pthread_join(helper, NULL);
    if (!reached)
        fail_msg("the hook never fired (conn hashes seen: %ld)", atomic_load(&c->window.conn_hashes));
    assert_int_equal(engine_check_indexes(engine, 0), (long)live_sessions(engine));
    out->metrics = (afsm_metrics)AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &out->metrics), AFSM_OK);
}

static void finish(place_ctx *c)
{
    afsm_engine *engine = c->engine;
    /* Every connection id of the original sessions not restored is free. */
    for (int i = 0; i < N_SESSIONS; i++) {
        if (c->action == ACT_RESTORE_SAME_KEYS && i == c->window.triggered)
            continue;
        afsm_create_options o = make_options("reuse", "10.1.2.3", &(afsm_uuid){{0}});
        o.connection_id = c->conns[i];
        o.timeout_ms = 1000;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
        assert_int_equal(afsm_session_get(engine, &c->ids[i], &info), AFSM_ENOTFOUND);
    }
    /* Everything ends. */
    uint64_t later = virtual_clock_read(c->clock) + 2 * 3600 * SEC;
    virtual_clock_set(c->clock, later);
    size_t n;
    assert_int_equal(afsm_engine_advance(engine, later, &n), AFSM_OK);
    assert_int_equal(live_sessions(engine), 0);
    assert_int_equal(engine_check_indexes(engine, 0), 0);
    assert_int_equal(table_keys(engine), 0);
    assert_int_equal(engine_slots_in_use(engine), 0);
    current = NULL;
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    table_hash_override = NULL;
}

static int event_of(place_ctx *c, int i, uint32_t *type)
{
    pthread_mutex_lock(&c->ledger.lock);
    ledger_line *line = ledger_line_of(&c->ledger, &c->ids[i]);
    int terminal = line->terminal;
    *type = line->terminal_type;
    pthread_mutex_unlock(&c->ledger.lock);
    return terminal;
}

static const uint32_t shard_counts[] = {1, 2, 16, 256};
static const long triggers[] = {1, 7, 32}; /* first, middle, last item of the first group */

static void test_delete_all_in_window(void **state)
{
    (void)state;
    static place_ctx c;
    for (size_t s = 0; s < sizeof(shard_counts) / sizeof(*shard_counts); s++)
        for (size_t t = 0; t < sizeof(triggers) / sizeof(*triggers); t++) {
            outcome o;
            run(&c, ACT_DELETE_ALL, triggers[t], shard_counts[s], &o);
            assert_int_equal(o.expired_first, 0);
            assert_int_equal(live_sessions(c.engine), 0);
            assert_int_equal(o.metrics.expired_total, 0);
            assert_int_equal(o.metrics.deleted_total[AFSM_DELETE_REQUESTED], N_SESSIONS);
            assert_int_equal(o.metrics.duration_count, N_SESSIONS);
            for (int i = 0; i < N_SESSIONS; i++) {
                uint32_t type;
                assert_int_equal(event_of(&c, i, &type), 1);
                assert_int_equal(type, AFSM_EVENT_DELETED);
            }
            ledger_check_all_ended(&c.ledger);
            finish(&c);
            ledger_free(&c.ledger);
        }
}

static void test_delete_half_in_window(void **state)
{
    (void)state;
    static place_ctx c;
    for (size_t s = 0; s < sizeof(shard_counts) / sizeof(*shard_counts); s++)
        for (size_t t = 0; t < sizeof(triggers) / sizeof(*triggers); t++) {
            outcome o;
            run(&c, ACT_DELETE_HALF, triggers[t], shard_counts[s], &o);
            size_t want_expired = 0;
            for (int i = 0; i < N_SESSIONS; i++) {
                uint32_t type;
                assert_int_equal(event_of(&c, i, &type), 1);
                int deleted = i == c.window.triggered || i % 2 == 1;
                assert_int_equal(type, deleted ? AFSM_EVENT_DELETED : AFSM_EVENT_EXPIRED);
                want_expired += !deleted;
            }
            assert_int_equal(o.expired_first, want_expired);
            assert_int_equal(o.metrics.expired_total, want_expired);
            assert_int_equal(o.metrics.deleted_total[AFSM_DELETE_REQUESTED], N_SESSIONS - want_expired);
            assert_int_equal(live_sessions(c.engine), 0);
            ledger_check_all_ended(&c.ledger);
            finish(&c);
            ledger_free(&c.ledger);
        }
}

static void test_rebuild_in_window(void **state)
{
    (void)state;
    static place_ctx c;
    for (size_t s = 0; s < sizeof(shard_counts) / sizeof(*shard_counts); s++)
        for (size_t t = 0; t < sizeof(triggers) / sizeof(*triggers); t++) {
            outcome o;
            run(&c, ACT_REBUILD, triggers[t], shard_counts[s], &o);
            assert_int_equal(o.expired_first, N_SESSIONS);
            assert_int_equal(live_sessions(c.engine), 5000);
            assert_int_equal(o.metrics.expired_total, N_SESSIONS);
            for (int i = 0; i < N_SESSIONS; i++) {
                uint32_t type;
                assert_int_equal(event_of(&c, i, &type), 1);
                assert_int_equal(type, AFSM_EVENT_EXPIRED);
                afsm_session_info info = AFSM_SESSION_INFO_INIT;
                assert_int_equal(afsm_session_get_by_connection(c.engine, &c.conns[i], &info), AFSM_ENOTFOUND);
            }
            finish(&c);
            ledger_check_all_ended(&c.ledger);
            ledger_free(&c.ledger);
        }
}

static void test_restore_same_keys_in_window(void **state)
{
    (void)state;
    static place_ctx c;
    for (size_t s = 0; s < sizeof(shard_counts) / sizeof(*shard_counts); s++)
        for (size_t t = 0; t < sizeof(triggers) / sizeof(*triggers); t++) {
            outcome o;
            run(&c, ACT_RESTORE_SAME_KEYS, triggers[t], shard_counts[s], &o);
            int x = c.window.triggered;
            assert_int_equal(o.expired_first, N_SESSIONS - 1);
            assert_int_equal(live_sessions(c.engine), 1);
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            assert_int_equal(afsm_session_get(c.engine, &c.ids[x], &info), AFSM_OK);
            assert_memory_equal(&info.connection_id, &c.conns[x], 16);
            assert_int_equal(afsm_session_get_by_connection(c.engine, &c.conns[x], &info), AFSM_OK);
            assert_memory_equal(&info.session_id, &c.ids[x], 16);
            for (int i = 0; i < N_SESSIONS; i++) {
                uint32_t type;
                int terminal = event_of(&c, i, &type);
                assert_int_equal(terminal, 1);
                assert_int_equal(type, i == x ? AFSM_EVENT_DELETED : AFSM_EVENT_EXPIRED);
            }
            finish(&c);
            ledger_free(&c.ledger);
        }
}

static void test_delete_user_in_window(void **state)
{
    (void)state;
    static place_ctx c;
    for (size_t s = 0; s < sizeof(shard_counts) / sizeof(*shard_counts); s++)
        for (size_t t = 0; t < sizeof(triggers) / sizeof(*triggers); t++) {
            outcome o;
            run(&c, ACT_DELETE_USER, triggers[t], shard_counts[s], &o);
            int x = c.window.triggered;
            assert_int_equal(c.by_user_deleted, N_SESSIONS / 10);
            assert_int_equal(o.expired_first, N_SESSIONS - N_SESSIONS / 10);
            assert_int_equal(o.metrics.deleted_total[AFSM_DELETE_USER], N_SESSIONS / 10);
            for (int i = 0; i < N_SESSIONS; i++) {
                uint32_t type;
                assert_int_equal(event_of(&c, i, &type), 1);
                assert_int_equal(type, i % 10 == x % 10 ? AFSM_EVENT_DELETED : AFSM_EVENT_EXPIRED);
            }
            assert_int_equal(live_sessions(c.engine), 0);
            ledger_check_all_ended(&c.ledger);
            finish(&c);
            ledger_free(&c.ledger);
        }
}

/* ---- the lifetime histogram ---------------------------------------------- */

typedef struct counting_clock {
    _Atomic uint64_t now_ns;
    _Atomic long reads;
} counting_clock;

static uint64_t counting_read(void *ctx)
{
    counting_clock *cc = ctx;
    atomic_fetch_add(&cc->reads, 1);
    return atomic_load(&cc->now_ns);
}

static int bucket_of(uint64_t lived_ms)
{
    static const uint32_t bounds_s[] = {1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400};
    int b = 0;
    while (b < AFSM_DURATION_BUCKETS - 1 && lived_ms > (uint64_t)bounds_s[b] * 1000u)
        b++;
    return b;
}

/* An expired session lived to its deadline (rolling timeout or
 * max_lifetime cap), however late the reaper comes; a deleted or closed
 * one to the clock at its removal. */
static void test_duration_histogram(void **state)
{
    (void)state;
    for (int capped = 0; capped < 2; capped++) {
        counting_clock cc;
        atomic_store(&cc.now_ns, 1000 * SEC);
        atomic_store(&cc.reads, 0);
        afsm_config cfg;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.clock = counting_read;
        cfg.clock_ctx = &cc;
        cfg.reaper = AFSM_REAPER_MANUAL;
        cfg.shard_count = 4;
        cfg.max_lifetime_ms = capped ? 20 * 1000 : 0;
        afsm_engine *engine = NULL;
        assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
        afsm_uuid a, b, d;
        assert_int_equal(create_for(engine, "h", 3 * 1000, &a), AFSM_OK);    /* lives 3 s */
        assert_int_equal(create_for(engine, "h", 100 * 1000, &b), AFSM_OK);  /* 100 s, or 20 s capped */
        assert_int_equal(create_for(engine, "h", 1000 * 1000, &d), AFSM_OK); /* deleted at 10 s */
        atomic_store(&cc.now_ns, 1010 * SEC);
        assert_int_equal(afsm_session_delete(engine, &d, NULL, 0), AFSM_OK);
        /* The reaper comes very late: 10 hours on. */
        uint64_t late = 1000 * SEC + 36000 * SEC;
        atomic_store(&cc.now_ns, late);
        size_t n;
        assert_int_equal(afsm_engine_advance(engine, late, &n), AFSM_OK);
        assert_int_equal(n, 2);
        afsm_metrics m = AFSM_METRICS_INIT;
        assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
        uint64_t want[AFSM_DURATION_BUCKETS] = {0};
        want[bucket_of(3000)]++;
        want[bucket_of(capped ? 20000 : 100000)]++;
        want[bucket_of(10000)]++;
        for (int i = 0; i < AFSM_DURATION_BUCKETS; i++)
            assert_int_equal(m.duration_buckets[i], want[i]);
        assert_int_equal(m.duration_count, 3);
        double want_sum = 3.0 + (capped ? 20.0 : 100.0) + 10.0;
        assert_true(m.duration_sum_seconds > want_sum - 0.01 && m.duration_sum_seconds < want_sum + 0.01);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delete_all_in_window),  cmocka_unit_test(test_delete_half_in_window),
        cmocka_unit_test(test_rebuild_in_window),     cmocka_unit_test(test_restore_same_keys_in_window),
        cmocka_unit_test(test_delete_user_in_window), cmocka_unit_test(test_duration_histogram),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
