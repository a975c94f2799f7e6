/*
 * test_home_runs_review.c: a reviewer's attacks on the home-shard placement
 * of new sessions (core/mem/write.c, place_in_home_run; issue 15, goal 5).
 *
 * What a user relies on, checked here in the cases the placement's
 * thread-local run makes fragile: ids stay UUIDv7 (version 7, variant 10),
 * unique and strictly increasing across the process; a thread's creates in
 * an engine fill its shards in turn, evenly, also after the thread used
 * another engine, after an engine was closed and another opened (at the
 * same address, with 1, 2 or 4096 shards), and with 8 or 32 threads at
 * once or threads that exit in the middle of a run; expiry and
 * delete_by_user remove exactly the sessions they should when sessions sit
 * in runs; ids keep the random bits the placement leaves them; placed ids
 * restore into engines of any shard count.
 *
 * Creates run on threads of their own where the run matters, so each
 * starts with no run left over from another test (the run is
 * thread-local). Internal headers only to read an id's home shard.
 */
#include "test_support.h"

#include <pthread.h>
#include <stdlib.h>

#include "engine.h"
#include "mem/mem_store.h"
#include "mem/table.h"

#define RUN 64 /* write.c's HOME_RUN */

static unsigned home_of(afsm_engine *engine, const afsm_uuid *id)
{
    return mem_shard_of_id((const mem_store *)engine->st, id);
}

static unsigned shards_of(afsm_engine *engine)
{
    return ((const mem_store *)engine->st)->shard_mask + 1;
}

static afsm_engine *open_sharded(virtual_clock *clock, uint32_t shards)
{
    afsm_config cfg = {.shard_count = shards, .default_timeout_ms = 3600 * 1000};
    return open_virtual_engine(clock, &cfg);
}

/* One create from any thread; the id, or a nil id on failure. */
static afsm_uuid create_one(afsm_engine *engine, const char *user, uint64_t timeout_ms)
{
    afsm_uuid conn;
    afsm_create_options o = make_options(user, "10.9.8.7", &conn);
    o.timeout_ms = timeout_ms;
    afsm_session_info info;
    afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
    if (afsm_session_create(engine, &o, &info) != AFSM_OK)
        return (afsm_uuid){0};
    return info.session_id;
}

static bool is_v7(const afsm_uuid *id)
{
    return id->bytes[6] >> 4 == 7 && id->bytes[8] >> 6 == 2;
}

/* ids[0..n) came from one thread in this order: v7 and increasing. */
static void assert_v7_increasing(const afsm_uuid *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        assert_true(is_v7(&ids[i]));
        if (i > 0)
            assert_true(memcmp(ids[i - 1].bytes, ids[i].bytes, 16) < 0);
    }
}

static void assert_each_shard_has(afsm_engine *engine, const afsm_uuid *ids, size_t n, unsigned want)
{
    unsigned shards = shards_of(engine);
    unsigned *per = calloc(shards, sizeof *per);
    assert_non_null(per);
    for (size_t i = 0; i < n; i++)
        per[home_of(engine, &ids[i])]++;
    for (unsigned s = 0; s < shards; s++) {
        if (per[s] != want)
            fprintf(stderr, "shard %u of %u holds %u sessions, not %u\n", s, shards, per[s], want);
        assert_int_equal(per[s], want);
    }
    free(per);
}

/* ---- one thread, two engines ---------------------------------------------- */

typedef struct two_engines {
    afsm_engine *a, *b;
    afsm_uuid *ids_a, *ids_b, *all;
    size_t n;
} two_engines;

static void *alternate(void *arg)
{
    two_engines *t = arg;
    /* A few creates in a first, leaving its run unfinished there. */
    for (size_t i = 0; i < 10; i++)
        t->all[i] = t->ids_a[i] = create_one(t->a, "alt-a", 0);
    /* Then b alone: its own runs from its first shard on. */
    for (size_t i = 0; i < t->n; i++)
        t->all[10 + i] = t->ids_b[i] = create_one(t->b, "alt-b", 0);
    /* Then both, one create each in turn. */
    for (size_t i = 0; i < t->n; i++) {
        t->all[10 + t->n + 2 * i] = t->ids_a[10 + i] = create_one(t->a, "alt-a", 0);
        t->all[10 + t->n + 2 * i + 1] = t->ids_b[t->n + i] = create_one(t->b, "alt-b", 0);
    }
    return NULL;
}

/* A run left unfinished in one engine never spills into another: the
 * second engine's shards fill evenly from the thread's first create there;
 * creates alternating between two engines still spread evenly over each;
 * every id is v7, increasing across both engines, found in its own engine
 * only. */
static void test_one_thread_two_engines(void **state)
{
    (void)state;
    virtual_clock ca, cb;
    two_engines t = {.a = open_sharded(&ca, 8), .b = open_sharded(&cb, 2), .n = 8 * RUN * 2};
    t.ids_a = calloc(10 + t.n, sizeof(afsm_uuid));
    t.ids_b = calloc(2 * t.n, sizeof(afsm_uuid));
    t.all = calloc(10 + 3 * t.n, sizeof(afsm_uuid));
    assert_true(t.ids_a != NULL && t.ids_b != NULL && t.all != NULL);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, alternate, &t), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_v7_increasing(t.all, 10 + 3 * t.n);
    /* b alone: 2 shards, 16 full runs. */
    assert_each_shard_has(t.b, t.ids_b, t.n, (unsigned)t.n / 2);
    /* Alternating: every shard of each engine gets its share within a run. */
    for (int e = 0; e < 2; e++) {
        afsm_engine *engine = e == 0 ? t.a : t.b;
        const afsm_uuid *ids = e == 0 ? t.ids_a + 10 : t.ids_b + t.n;
        unsigned shards = shards_of(engine), per[8] = {0};
        for (size_t i = 0; i < t.n; i++)
            per[home_of(engine, &ids[i])]++;
        for (unsigned s = 0; s < shards; s++) {
            assert_true(per[s] + RUN >= t.n / shards);
            assert_true(per[s] <= t.n / shards + RUN);
        }
    }
    for (int e = 0; e < 2; e++) {
        afsm_engine *own = e == 0 ? t.a : t.b, *other = e == 0 ? t.b : t.a;
        const afsm_uuid *ids = e == 0 ? t.ids_a : t.ids_b;
        size_t n = e == 0 ? 10 + t.n : 2 * t.n;
        for (size_t i = 0; i < n; i++) {
            afsm_session_info info;
            afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
            assert_int_equal(afsm_session_get(own, &ids[i], &info), AFSM_OK);
            assert_int_equal(afsm_session_get(other, &ids[i], &info), AFSM_ENOTFOUND);
        }
    }
    free(t.ids_a);
    free(t.ids_b);
    free(t.all);
    assert_int_equal(afsm_engine_close(t.a), AFSM_OK);
    assert_int_equal(afsm_engine_close(t.b), AFSM_OK);
}

/* ---- an engine closed, another opened ------------------------------------ */

#define REOPENS 6

typedef struct reopen {
    uint32_t shards[REOPENS];
    bool same_address[REOPENS];
    int uneven; /* rounds whose engine's shards did not fill evenly */
    afsm_uuid *ids;
    size_t ids_n;
} reopen;

/* On one thread: an engine takes a few creates (its run left unfinished),
 * is closed, and the next is opened, often at the same address (the
 * allocator hands the freed blocks back). Each new engine must fill its
 * shards in turn from its own first shard: 2 runs per shard, exactly. */
static void *reopen_main(void *arg)
{
    reopen *r = arg;
    virtual_clock clock;
    const void *last = NULL;
    size_t k = 0;
    for (int round = 0; round < REOPENS; round++) {
        afsm_config c;
        THREAD_CHECK(afsm_config_init(&c, AFSM_CONFIG_VERSION) == AFSM_OK);
        virtual_clock_set(&clock, 1000 * SEC);
        c.clock = virtual_clock_read;
        c.clock_ctx = &clock;
        c.reaper = AFSM_REAPER_MANUAL;
        c.shard_count = r->shards[round];
        c.default_timeout_ms = 3600 * 1000;
        afsm_engine *engine = NULL;
        THREAD_CHECK(afsm_engine_open(&c, &engine) == AFSM_OK);
        r->same_address[round] = engine->st == last;
        /* 16 runs: round robin from the engine's first shard on. */
        unsigned shards = shards_of(engine);
        size_t n = 16 * RUN;
        afsm_uuid *ids = calloc(n, sizeof *ids);
        unsigned *per = calloc(shards, sizeof *per);
        THREAD_CHECK(ids != NULL && per != NULL);
        for (size_t i = 0; i < n; i++) {
            ids[i] = create_one(engine, "reopen", 0);
            THREAD_CHECK(is_v7(&ids[i]));
            per[home_of(engine, &ids[i])]++;
            r->ids[k++] = ids[i];
        }
        for (unsigned s = 0; s < shards; s++) {
            unsigned want = 0;
            for (unsigned run = 0; run < 16; run++)
                want += run % shards == s ? RUN : 0;
            if (per[s] != want) {
                fprintf(stderr, "round %d (%u shards, %s address): shard %u holds %u, not %u\n", round, shards,
                        r->same_address[round] ? "same" : "new", s, per[s], want);
                r->uneven++;
                break;
            }
        }
        /* Leave a run unfinished for the next engine to not inherit. */
        for (int i = 0; i < 10; i++)
            r->ids[k++] = create_one(engine, "reopen", 0);
        last = engine->st;
        free(ids);
        free(per);
        THREAD_CHECK(afsm_engine_close(engine) == AFSM_OK);
    }
    r->ids_n = k;
    return NULL;
}

static void test_engine_reopened(void **state)
{
    (void)state;
    reopen r = {.shards = {8, 8, 4096, 2, 1, 8}};
    r.ids = calloc(REOPENS * (16 * RUN + 10), sizeof(afsm_uuid));
    assert_non_null(r.ids);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reopen_main, &r), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_v7_increasing(r.ids, r.ids_n);
    int reused = 0;
    for (int i = 0; i < REOPENS; i++)
        reused += r.same_address[i];
    /* Under AddressSanitizer freed memory is quarantined: no reuse. */
    fprintf(stderr, "home_runs_review: %d of %d engines opened at the closed one's address\n", reused, REOPENS - 1);
    free(r.ids);
    assert_int_equal(r.uneven, 0);
}

/* ---- many threads ---------------------------------------------------------- */

#define RUNS_PER_THREAD 5

typedef struct creator {
    afsm_engine *engine;
    pthread_barrier_t *start;
    int index;
    size_t n;
    afsm_uuid *ids;
} creator;

static void *create_runs(void *arg)
{
    creator *c = arg;
    char user[32];
    snprintf(user, sizeof user, "t%d", c->index);
    if (c->start != NULL)
        pthread_barrier_wait(c->start);
    for (size_t i = 0; i < c->n; i++) {
        c->ids[i] = create_one(c->engine, user, 0);
        THREAD_CHECK(is_v7(&c->ids[i]));
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* threads create RUNS_PER_THREAD full runs each, all at once: each keeps
 * its runs, every shard gets exactly its share of runs (round robin), and
 * no id repeats. */
static void many_threads(int threads)
{
    virtual_clock clock;
    afsm_engine *engine = open_sharded(&clock, 8);
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, (unsigned)threads), 0);
    size_t per_thread = RUNS_PER_THREAD * RUN, total = (size_t)threads * per_thread;
    afsm_uuid *ids = calloc(total, sizeof *ids);
    creator *c = calloc((size_t)threads, sizeof *c);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    assert_true(ids != NULL && c != NULL && th != NULL);
    for (int i = 0; i < threads; i++) {
        c[i] = (creator){.engine = engine, .start = &start, .index = i, .n = per_thread, .ids = ids + i * per_thread};
        assert_int_equal(pthread_create(&th[i], NULL, create_runs, &c[i]), 0);
    }
    for (int i = 0; i < threads; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < threads; i++) {
        assert_v7_increasing(c[i].ids, per_thread);
        for (size_t r = 0; r < RUNS_PER_THREAD; r++)
            for (size_t j = 1; j < RUN; j++)
                assert_int_equal(home_of(engine, &c[i].ids[r * RUN + j]), home_of(engine, &c[i].ids[r * RUN]));
    }
    assert_each_shard_has(engine, ids, total, (unsigned)(total / 8));
    qsort(ids, total, sizeof *ids, cmp_id);
    for (size_t i = 1; i < total; i++)
        assert_true(memcmp(&ids[i - 1], &ids[i], 16) < 0);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.sessions, total);
    pthread_barrier_destroy(&start);
    free(ids);
    free(c);
    free(th);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

static void test_8_threads(void **state)
{
    (void)state;
    many_threads(8);
}

static void test_32_threads(void **state)
{
    (void)state;
    many_threads(32);
}

/* Threads that each create a few sessions and exit (a thread per request):
 * each takes a run and leaves it unfinished; the runs still go round
 * robin, so the shards fill evenly, and nothing of the dead threads' runs
 * is touched again. */
static void test_threads_exit_mid_run(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_sharded(&clock, 8);
    enum { THREADS = 24, EACH = 10 };
    afsm_uuid ids[THREADS * EACH];
    for (int i = 0; i < THREADS; i++) {
        creator c = {.engine = engine, .index = i, .n = EACH, .ids = ids + i * EACH};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, create_runs, &c), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        for (int j = 1; j < EACH; j++)
            assert_int_equal(home_of(engine, &ids[i * EACH + j]), home_of(engine, &ids[i * EACH]));
    }
    assert_v7_increasing(ids, THREADS * EACH);
    assert_each_shard_has(engine, ids, THREADS * EACH, THREADS * EACH / 8);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- expiry and delete_by_user with sessions in runs ---------------------- */

/* Sessions in runs, with timeouts that cut across the runs (and, at the
 * first step, over 4096 due in one shard: more than one wheel pass's
 * budget): each advance expires exactly the sessions past their deadline. */
static void test_expiry_of_runs(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_sharded(&clock, 2);
    enum { N = 2 * RUN * 80, FIRST = 9000 };
    afsm_uuid *ids = calloc(N, sizeof *ids);
    uint64_t *timeout_s = calloc(N, sizeof *timeout_s);
    assert_true(ids != NULL && timeout_s != NULL);
    for (size_t i = 0; i < N; i++) {
        timeout_s[i] = i < FIRST ? 1 : 2 + (i / 50) % 3;
        ids[i] = create_one(engine, i % 2 ? "odd" : "even", timeout_s[i] * 1000);
        assert_true(is_v7(&ids[i]));
    }
    size_t alive = N;
    for (uint64_t step = 1; step <= 5; step++) {
        uint64_t now = 1000 * SEC + step * SEC + SEC / 2;
        virtual_clock_set(&clock, now);
        size_t expired = 0, due = 0;
        assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
        for (size_t i = 0; i < N; i++) {
            afsm_session_info info;
            afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
            afsm_status st = afsm_session_get(engine, &ids[i], &info);
            if (timeout_s[i] <= step) {
                assert_int_equal(st, AFSM_ENOTFOUND);
                due += timeout_s[i] == step;
            } else {
                assert_int_equal(st, AFSM_OK);
            }
        }
        assert_int_equal(expired, due);
        alive -= due;
        afsm_metrics m = AFSM_METRICS_INIT;
        assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
        assert_int_equal(m.sessions, alive);
        assert_int_equal(m.expired_total, N - alive);
    }
    assert_int_equal(alive, 0);
    free(ids);
    free(timeout_s);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Creators on four threads (each in runs of its own) while a fifth moves
 * the engine's clock and advances it: every session expires exactly once
 * (one EXPIRED event each, none lost, none twice), and the counts agree. */
enum { RACE_THREADS = 4, RACE_EACH = 4 * RUN, RACE_N = RACE_THREADS * RACE_EACH };

typedef struct expiry_race {
    afsm_engine *engine;
    virtual_clock clock;
    _Atomic long creators_done;
    _Atomic size_t events;
    afsm_uuid expired[RACE_N + 16]; /* room to see a few too many */
    afsm_uuid created[RACE_N];
} expiry_race;

static void count_expired(void *ctx, const afsm_event *ev)
{
    expiry_race *r = ctx;
    if (ev->type != AFSM_EVENT_EXPIRED)
        return;
    size_t i = atomic_fetch_add_explicit(&r->events, 1, memory_order_relaxed);
    if (i < sizeof r->expired / sizeof r->expired[0])
        r->expired[i] = ev->session_id;
}

typedef struct race_creator {
    expiry_race *race;
    int index;
} race_creator;

static void *race_create(void *arg)
{
    race_creator *c = arg;
    char user[16];
    snprintf(user, sizeof user, "race%d", c->index);
    for (int i = 0; i < RACE_EACH; i++) {
        afsm_uuid id = create_one(c->race->engine, user, 1000 + (uint64_t)(i % 3) * 700);
        THREAD_CHECK(is_v7(&id));
        c->race->created[c->index * RACE_EACH + i] = id;
    }
    atomic_fetch_add_explicit(&c->race->creators_done, 1, memory_order_release);
    return NULL;
}

static void *race_advance(void *arg)
{
    expiry_race *r = arg;
    uint64_t deadline = real_ns() + 20 * SEC;
    while (atomic_load_explicit(&r->creators_done, memory_order_acquire) < RACE_THREADS && real_ns() < deadline) {
        uint64_t now = virtual_clock_read(&r->clock) + 100 * MS;
        virtual_clock_set(&r->clock, now);
        THREAD_CHECK(afsm_engine_advance(r->engine, now, NULL) == AFSM_OK);
    }
    return NULL;
}

static void test_expiry_races_creators(void **state)
{
    (void)state;
    expiry_race *r = calloc(1, sizeof *r);
    assert_non_null(r);
    afsm_config cfg = {.shard_count = 4, .on_event = count_expired, .event_ctx = r};
    r->engine = open_virtual_engine(&r->clock, &cfg);
    race_creator c[RACE_THREADS];
    pthread_t th[RACE_THREADS + 1];
    assert_int_equal(pthread_create(&th[RACE_THREADS], NULL, race_advance, r), 0);
    for (int i = 0; i < RACE_THREADS; i++) {
        c[i] = (race_creator){.race = r, .index = i};
        assert_int_equal(pthread_create(&th[i], NULL, race_create, &c[i]), 0);
    }
    for (int i = 0; i <= RACE_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    fprintf(stderr, "home_runs_review: %zu of %d sessions expired while created\n", atomic_load(&r->events), RACE_N);
    uint64_t now = virtual_clock_read(&r->clock) + 10 * SEC;
    virtual_clock_set(&r->clock, now);
    assert_int_equal(afsm_engine_advance(r->engine, now, NULL), AFSM_OK);
    assert_int_equal(atomic_load(&r->events), RACE_N);
    qsort(r->expired, RACE_N, sizeof r->expired[0], cmp_id);
    qsort(r->created, RACE_N, sizeof r->created[0], cmp_id);
    assert_memory_equal(r->expired, r->created, sizeof r->created);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(r->engine, &m), AFSM_OK);
    assert_int_equal(m.sessions, 0);
    assert_int_equal(m.expired_total, RACE_N);
    assert_int_equal(m.created_total, RACE_N);
    assert_int_equal(afsm_engine_close(r->engine), AFSM_OK);
    free(r);
}

/* Users whose sessions sit in a few runs (one thread) or are spread over
 * every shard (runs of several threads): delete_by_user removes exactly
 * the user's sessions. */
static void test_delete_by_user_of_runs(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_sharded(&clock, 4);
    enum { N = 4 * RUN * 4, USERS = 10 };
    afsm_uuid ids[N];
    int user_of[N];
    char user[16];
    for (int i = 0; i < N; i++) {
        user_of[i] = (i / 37) % USERS;
        snprintf(user, sizeof user, "u%d", user_of[i]);
        ids[i] = create_one(engine, user, 0);
        assert_true(is_v7(&ids[i]));
    }
    size_t alive = N;
    for (int u = 0; u < USERS; u += 3) {
        size_t want = 0;
        for (int i = 0; i < N; i++)
            want += user_of[i] == u;
        snprintf(user, sizeof user, "u%d", u);
        size_t deleted = 0;
        assert_int_equal(afsm_session_delete_by_user(engine, user, strlen(user), "bye", 3, &deleted), AFSM_OK);
        assert_int_equal(deleted, want);
        alive -= want;
        for (int i = 0; i < N; i++) {
            afsm_session_info info;
            afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
            assert_int_equal(afsm_session_get(engine, &ids[i], &info),
                             user_of[i] % 3 == 0 && user_of[i] <= u ? AFSM_ENOTFOUND : AFSM_OK);
        }
        afsm_metrics m = AFSM_METRICS_INIT;
        assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
        assert_int_equal(m.sessions, alive);
    }
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- what the ids keep ------------------------------------------------------- */

/* The placement fixes the low log2(shards) bits of the tail's mix and the
 * variant: every other bit of the mix, and every non-variant bit of the
 * tail itself, must still be random (ids of different processes, etcd
 * nodes among them, are kept apart by nothing else). 4096 shards, the
 * most the placement fixes: 4096 ids, each free bit set in about half. */
static void test_tails_keep_their_randomness(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_sharded(&clock, 4096);
    enum { N = 4096 };
    afsm_uuid *ids = calloc(N, sizeof *ids);
    assert_non_null(ids);
    unsigned mix_ones[64] = {0}, tail_ones[64] = {0};
    for (size_t i = 0; i < N; i++) {
        ids[i] = create_one(engine, "entropy", 0);
        assert_true(is_v7(&ids[i]));
        uint64_t tail;
        memcpy(&tail, ids[i].bytes + 8, 8);
        uint64_t mixed = table_mix(tail);
        for (int b = 0; b < 64; b++) {
            mix_ones[b] += (mixed >> b) & 1;
            tail_ones[b] += (tail >> b) & 1;
        }
    }
    /* Binomial(4096, 1/2): sd 32; 40%..60% is 12 sd either side. */
    for (int b = 12; b < 64; b++) {
        if (mix_ones[b] < N * 4 / 10 || mix_ones[b] > N * 6 / 10)
            fprintf(stderr, "mix bit %d set in %u of %d ids\n", b, mix_ones[b], N);
        assert_true(mix_ones[b] >= N * 4 / 10 && mix_ones[b] <= N * 6 / 10);
    }
    for (int b = 0; b < 64; b++) {
        if (b == 6 || b == 7) /* the variant: byte 8's top bits */
            continue;
        if (tail_ones[b] < N * 4 / 10 || tail_ones[b] > N * 6 / 10)
            fprintf(stderr, "tail bit %d set in %u of %d ids\n", b, tail_ones[b], N);
        assert_true(tail_ones[b] >= N * 4 / 10 && tail_ones[b] <= N * 6 / 10);
    }
    /* No two tails alike, whatever the stamps. */
    uint64_t *tails = calloc(N, sizeof *tails);
    assert_non_null(tails);
    for (size_t i = 0; i < N; i++)
        memcpy(&tails[i], ids[i].bytes + 8, 8);
    qsort(tails, N, sizeof *tails, cmp_u64);
    for (size_t i = 1; i < N; i++)
        assert_true(tails[i - 1] != tails[i]);
    free(tails);
    free(ids);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Placed ids are ids like any other to afsm_session_restore: copies of
 * an 8-shard engine's sessions restore into engines of 1, 2, 8 and 4096
 * shards with their ids, and in another 8-shard engine each lands in the
 * shard it had (the placement is a function of the id alone). */
static void test_placed_ids_restore_anywhere(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *from = open_sharded(&clock, 8);
    enum { N = 8 * RUN + 10 };
    afsm_session_info *copies = calloc(N, sizeof *copies);
    assert_non_null(copies);
    for (size_t i = 0; i < N; i++) {
        afsm_uuid id = create_one(from, "restore", 0);
        afsm_session_info_init(&copies[i], AFSM_SESSION_INFO_VERSION);
        assert_int_equal(afsm_session_get(from, &id, &copies[i]), AFSM_OK);
    }
    static const uint32_t counts[] = {1, 2, 8, 4096};
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        virtual_clock c2;
        afsm_engine *to = open_sharded(&c2, counts[k]);
        for (size_t i = 0; i < N; i++) {
            assert_int_equal(afsm_session_restore(to, &copies[i], NULL, 0), AFSM_OK);
            afsm_session_info info;
            afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
            assert_int_equal(afsm_session_get(to, &copies[i].session_id, &info), AFSM_OK);
            assert_memory_equal(info.session_id.bytes, copies[i].session_id.bytes, 16);
            if (counts[k] == 8)
                assert_int_equal(home_of(to, &copies[i].session_id), home_of(from, &copies[i].session_id));
        }
        /* A second restore of the same id is refused, placed or not. */
        assert_int_equal(afsm_session_restore(to, &copies[0], NULL, 0), AFSM_EEXISTS);
        assert_int_equal(afsm_engine_close(to), AFSM_OK);
    }
    free(copies);
    assert_int_equal(afsm_engine_close(from), AFSM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_thread_two_engines),
        cmocka_unit_test(test_engine_reopened),
        cmocka_unit_test(test_8_threads),
        cmocka_unit_test(test_32_threads),
        cmocka_unit_test(test_threads_exit_mid_run),
        cmocka_unit_test(test_expiry_of_runs),
        cmocka_unit_test(test_expiry_races_creators),
        cmocka_unit_test(test_delete_by_user_of_runs),
        cmocka_unit_test(test_tails_keep_their_randomness),
        cmocka_unit_test(test_placed_ids_restore_anywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
