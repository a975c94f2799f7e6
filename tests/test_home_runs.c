/*
 * test_home_runs.c: where a create puts its session (core/mem/write.c,
 * place_in_home_run; issue 15, goal 5). A thread's creates go to one home
 * shard 64 at a time, runs are handed out round robin, and the ids stay
 * what afsm.h promises: UUIDv7, strictly increasing across the process.
 *
 * Creates run on threads of their own, so each starts without a run left
 * over from another test (the run is thread-local).
 */
#include "test_support.h"

#include <pthread.h>
#include <stdlib.h>

#include "engine.h"
#include "mem/mem_store.h"
#include "mem/table.h"

#define RUN     64
#define SHARDS  8
#define RUNS    (2 * SHARDS) /* per thread */
#define CREATES (RUN * RUNS)

typedef struct creator {
    afsm_engine *engine;
    const char *name;
    pthread_barrier_t *start;
    afsm_uuid ids[CREATES];
    afsm_status failed;
} creator;

static void *create_all(void *arg)
{
    creator *c = arg;
    if (c->start != NULL)
        pthread_barrier_wait(c->start);
    for (int i = 0; i < CREATES; i++) {
        char user[48];
        snprintf(user, sizeof user, "%s-user-%d", c->name, i % 97);
        afsm_uuid conn;
        afsm_create_options o = make_options(user, "10.9.8.7", &conn);
        afsm_session_info info;
        afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
        afsm_status st = afsm_session_create(c->engine, &o, &info);
        if (st != AFSM_OK) {
            c->failed = st;
            return NULL;
        }
        c->ids[i] = info.session_id;
    }
    return NULL;
}

static unsigned home_of(afsm_engine *engine, const afsm_uuid *id)
{
    return mem_shard_of_id((const mem_store *)engine->st, id);
}

/* Each run of RUN creates in one shard; the ids are v7 (version 7, variant
 * 10) and increase. alone: no other thread took runs meanwhile, so each
 * run is in another shard than the one before. */
static void assert_runs(afsm_engine *engine, const creator *c, bool alone, unsigned per_shard[SHARDS])
{
    assert_int_equal(c->failed, AFSM_OK);
    for (int run = 0; run < RUNS; run++) {
        unsigned home = home_of(engine, &c->ids[run * RUN]);
        for (int i = run * RUN; i < (run + 1) * RUN; i++) {
            const afsm_uuid *id = &c->ids[i];
            assert_int_equal(home_of(engine, id), home);
            assert_int_equal(id->bytes[6] >> 4, 7);
            assert_int_equal(id->bytes[8] >> 6, 2);
            if (i > 0)
                assert_true(memcmp(c->ids[i - 1].bytes, id->bytes, sizeof id->bytes) < 0);
        }
        if (alone && run > 0)
            assert_int_not_equal(home_of(engine, &c->ids[(run - 1) * RUN]), home);
        per_shard[home] += RUN;
    }
}

static afsm_engine *open_engine(virtual_clock *clock)
{
    afsm_config cfg = {.shard_count = SHARDS, .default_timeout_ms = 3600 * 1000};
    return open_virtual_engine(clock, &cfg);
}

/* One thread: its runs visit the shards in turn, so every shard gets the
 * same number of sessions, and every session can be found again. */
static void test_one_thread_fills_each_shard_in_turn(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_engine(&clock);
    creator *c = calloc(1, sizeof *c);
    assert_non_null(c);
    *c = (creator){.engine = engine, .name = "solo"};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, create_all, c), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    unsigned per_shard[SHARDS] = {0};
    assert_runs(engine, c, true, per_shard);
    for (int s = 0; s < SHARDS; s++)
        assert_int_equal(per_shard[s], CREATES / SHARDS);
    for (int i = 0; i < CREATES; i++) {
        afsm_session_info info;
        afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
        assert_int_equal(afsm_session_get(engine, &c->ids[i], &info), AFSM_OK);
    }
    free(c);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Two threads at once: each keeps its own runs, the runs between them are
 * still handed out round robin (each shard gets exactly as many), and no
 * id is repeated. */
static void test_two_threads_keep_their_own_runs(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_engine(&clock);
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, 2), 0);
    creator *c = calloc(2, sizeof *c);
    assert_non_null(c);
    c[0] = (creator){.engine = engine, .name = "left", .start = &start};
    c[1] = (creator){.engine = engine, .name = "right", .start = &start};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, create_all, &c[i]), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    unsigned per_shard[SHARDS] = {0};
    assert_runs(engine, &c[0], false, per_shard);
    assert_runs(engine, &c[1], false, per_shard);
    for (int s = 0; s < SHARDS; s++)
        assert_int_equal(per_shard[s], 2 * CREATES / SHARDS);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.sessions, 2 * CREATES);
    pthread_barrier_destroy(&start);
    free(c);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* The placement solves table_mix backwards: table_unmix must undo it for
 * every input, or ids would land in the wrong shard. */
static void test_unmix_undoes_mix(void **state)
{
    (void)state;
    static const uint64_t edges[] = {0, 1, UINT64_MAX, UINT64_C(1) << 63, UINT64_C(0x8000000080000000)};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        assert_true(table_unmix(table_mix(edges[i])) == edges[i]);
        assert_true(table_mix(table_unmix(edges[i])) == edges[i]);
    }
    uint64_t x = UINT64_C(0x0123456789abcdef);
    for (int i = 0; i < 100000; i++) {
        x = x * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
        assert_true(table_unmix(table_mix(x)) == x);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unmix_undoes_mix),
        cmocka_unit_test(test_one_thread_fills_each_shard_in_turn),
        cmocka_unit_test(test_two_threads_keep_their_own_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
