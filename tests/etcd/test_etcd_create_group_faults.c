/*
 * test_etcd_create_group_faults.c: the etcd store's create groups
 * (core/etcd/store.c, "create groups") when etcd misbehaves or creates
 * collide, against a real etcd (etcd_harness.h):
 * - a hung etcd (SIGSTOP: accepts, never answers) bounds every concurrent
 *   create by the request timeout, queued ones included, as it bounds a
 *   create alone (test_etcd_store.c, test_all_endpoints_down);
 * - many threads racing one connection id, and two engines racing one
 *   user's capped slots, all finish with the status each would get alone.
 *
 * Shared state: the threads of a round write only their own slot of the
 * round's arrays; the test reads them after joining.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>

#include "afsm.h"
#define RAW_TIMEOUT_MS 5000
#include "etcd_test_support.h"

#define REQUEST_TIMEOUT_MS 1000

static afsm_engine *open_engine(const char *prefix, uint32_t cap)
{
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.etcd_request_timeout_ms = REQUEST_TIMEOUT_MS;
    cfg.default_timeout_ms = 120000; /* pooled leases (a minute or more) */
    cfg.max_sessions_per_user = cap;
    cfg.shard_count = 4;
    afsm_engine *e;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    return e;
}

/* How many leases etcd holds. */
static long leases_in_etcd(void)
{
    etcd_client *c = raw_client();
    json_object *body = json_object_new_object(), *reply = NULL, *list;
    assert_int_equal(etcd_call(c, "/v3/lease/leases", body, 1, &reply, NULL), AFSM_OK);
    long n = json_object_object_get_ex(reply, "leases", &list) && json_object_is_type(list, json_type_array)
                 ? (long)json_object_array_length(list)
                 : 0;
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
    return n;
}

/* ---- a hung etcd ------------------------------------------------------------------ */

/* Half create with connection ids of their own, half race one id (their
 * creates write one key, so they go in different groups, one after
 * another). */
#define HUNG_THREADS 16

typedef struct hung_ctx {
    afsm_engine *engine;
    pthread_barrier_t start;
    afsm_uuid shared_connection;
    afsm_status status[HUNG_THREADS];
    uint64_t elapsed_ms[HUNG_THREADS];
} hung_ctx;

typedef struct hung_racer {
    hung_ctx *h;
    int index;
} hung_racer;

static void *create_once_timed(void *arg)
{
    hung_racer *me = arg;
    char user[32];
    snprintf(user, sizeof(user), "hung-%d", me->index);
    afsm_uuid connection = me->h->shared_connection;
    if (me->index < HUNG_THREADS / 2)
        afsm_uuid_v7(&connection);
    afsm_session_info s;
    pthread_barrier_wait(&me->h->start);
    uint64_t t0 = harness_now_ms();
    me->h->status[me->index] = create_on(me->h->engine, user, &connection, &s);
    me->h->elapsed_ms[me->index] = harness_now_ms() - t0;
    return NULL;
}

static void *create_some(void *arg)
{
    afsm_engine *e = arg;
    for (int i = 0; i < 8; i++) {
        afsm_uuid connection;
        afsm_uuid_v7(&connection);
        afsm_session_info s;
        assert_int_equal(create_on(e, "warm", &connection, &s), AFSM_OK);
    }
    return NULL;
}

/* A create alone on a hung etcd is AFSM_EUNAVAILABLE within the request
 * timeout (test_etcd_store.c checks 1000 ms + 300). Concurrent creates must
 * be bounded the same way: a create queued behind a group in flight must
 * not wait for that group's timeout and then for its own (nor, racing one
 * connection id, for one group's timeout after another). */
static void test_hung_etcd_bounds_every_concurrent_create(void **state)
{
    (void)state;
    afsm_engine *e = open_engine("/cgf1/", 0);
    /* Warm the lease pool, so that the creates below reach their txn (a
     * create granting its own lease would fail at its grant instead). */
    pthread_t warmers[HUNG_THREADS];
    for (int i = 0; i < HUNG_THREADS; i++)
        assert_int_equal(pthread_create(&warmers[i], NULL, create_some, e), 0);
    for (int i = 0; i < HUNG_THREADS; i++)
        pthread_join(warmers[i], NULL);
    long sessions = keys_in_etcd("/cgf1/s/");
    assert_int_equal(sessions, HUNG_THREADS * 8);
    /* Spares in the pool: leases besides the sessions' own. */
    uint64_t until = harness_now_ms() + 10000;
    while (leases_in_etcd() - sessions < HUNG_THREADS && harness_now_ms() < until)
        harness_nap_ms(20);
    assert_true(leases_in_etcd() - sessions >= HUNG_THREADS);

    hung_ctx *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    h->engine = e;
    afsm_uuid_v7(&h->shared_connection);
    pthread_barrier_init(&h->start, NULL, HUNG_THREADS);
    harness_kill_member(&cluster, 0, SIGSTOP);
    hung_racer racers[HUNG_THREADS];
    pthread_t threads[HUNG_THREADS];
    for (int i = 0; i < HUNG_THREADS; i++) {
        racers[i] = (hung_racer){h, i};
        assert_int_equal(pthread_create(&threads[i], NULL, create_once_timed, &racers[i]), 0);
    }
    for (int i = 0; i < HUNG_THREADS; i++)
        pthread_join(threads[i], NULL);
    harness_kill_member(&cluster, 0, SIGCONT);
    pthread_barrier_destroy(&h->start);

    uint64_t slowest = 0;
    for (int i = 0; i < HUNG_THREADS; i++) {
        print_message("create %d on a hung etcd: %s after %llu ms\n", i, afsm_status_name(h->status[i]),
                      (unsigned long long)h->elapsed_ms[i]);
        assert_int_equal(h->status[i], AFSM_EUNAVAILABLE);
        if (h->elapsed_ms[i] > slowest)
            slowest = h->elapsed_ms[i];
    }
    free(h);
    afsm_engine_close(e);
    assert_true(slowest <= REQUEST_TIMEOUT_MS + 300);
}

/* ---- closing on a hung etcd ------------------------------------------------------- */

/* Closing an engine whose etcd hangs takes about one request timeout per
 * thread that talks to etcd (the last stats flush, a grant in flight), not
 * one per lease its pool holds: the pool's spares, gone stale while etcd
 * hung (older than timeout / 6: 10 s at a 60 s timeout), are left to
 * expire, as closing leaves the fresh ones (leases.c). */
static void test_close_on_a_hung_etcd_with_stale_spares(void **state)
{
    (void)state;
    afsm_config cfg;
    etcd_test_config(&cfg, "/cgf3/");
    cfg.etcd_request_timeout_ms = REQUEST_TIMEOUT_MS;
    cfg.default_timeout_ms = 60000; /* pooled; spares stale after 10 s */
    afsm_engine *e;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    long leases_before = leases_in_etcd();
    pthread_t warmers[HUNG_THREADS];
    for (int i = 0; i < HUNG_THREADS; i++)
        assert_int_equal(pthread_create(&warmers[i], NULL, create_some, e), 0);
    for (int i = 0; i < HUNG_THREADS; i++)
        pthread_join(warmers[i], NULL);
    uint64_t last_create_ms = harness_now_ms();
    long sessions = keys_in_etcd("/cgf3/s/");
    uint64_t until = harness_now_ms() + 10000;
    while (leases_in_etcd() - leases_before - sessions < 8 && harness_now_ms() < until)
        harness_nap_ms(20);
    long spares = leases_in_etcd() - leases_before - sessions;
    assert_true(spares >= 8);
    harness_kill_member(&cluster, 0, SIGSTOP);
    /* The spares go stale 10 s after their grant; the granters look once
     * a second. */
    while (harness_now_ms() < last_create_ms + 12000)
        harness_nap_ms(100);
    uint64_t t0 = harness_now_ms();
    afsm_engine_close(e);
    uint64_t elapsed = harness_now_ms() - t0;
    harness_kill_member(&cluster, 0, SIGCONT);
    print_message("close on a hung etcd with %ld stale spares: %llu ms\n", spares, (unsigned long long)elapsed);
    assert_true(elapsed <= 3 * REQUEST_TIMEOUT_MS);
}

/* ---- colliding creates on two engines -------------------------------------------- */

#define COLLIDERS        16 /* half on each engine */
#define COLLISION_ROUNDS 12
#define CAP              3

typedef struct collide_ctx {
    afsm_engine *engines[2];
    pthread_barrier_t round;
    afsm_uuid shared[COLLISION_ROUNDS];
    afsm_status racing[COLLIDERS][COLLISION_ROUNDS], capped[COLLIDERS][COLLISION_ROUNDS];
} collide_ctx;

typedef struct collider {
    collide_ctx *c;
    int index;
} collider;

static void *collide(void *arg)
{
    collider *me = arg;
    collide_ctx *c = me->c;
    afsm_engine *e = c->engines[me->index % 2];
    for (int r = 0; r < COLLISION_ROUNDS; r++) {
        char user[32];
        afsm_session_info s;
        pthread_barrier_wait(&c->round);
        snprintf(user, sizeof(user), "racer-%d-%d", r, me->index);
        c->racing[me->index][r] = create_on(e, user, &c->shared[r], &s);
        afsm_uuid own;
        afsm_uuid_v7(&own);
        snprintf(user, sizeof(user), "capped-%d", r);
        c->capped[me->index][r] = create_on(e, user, &own, &s);
    }
    return NULL;
}

/* 16 threads on two engines race, each round, one connection id (their
 * creates go in groups one after another: each must be led, none left
 * queued) and one user's 3 slots: exactly one create wins the id, exactly
 * 3 the slots (never more), every other gets its own refusal, and etcd
 * holds nothing from a refused create. */
static void test_colliding_creates_on_two_engines(void **state)
{
    (void)state;
    collide_ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->engines[0] = open_engine("/cgf2/", CAP);
    c->engines[1] = open_engine("/cgf2/", CAP);
    for (int r = 0; r < COLLISION_ROUNDS; r++)
        afsm_uuid_v7(&c->shared[r]);
    pthread_barrier_init(&c->round, NULL, COLLIDERS);
    collider colliders[COLLIDERS];
    pthread_t threads[COLLIDERS];
    for (int i = 0; i < COLLIDERS; i++) {
        colliders[i] = (collider){c, i};
        assert_int_equal(pthread_create(&threads[i], NULL, collide, &colliders[i]), 0);
    }
    for (int i = 0; i < COLLIDERS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&c->round);
    long made = 0;
    for (int r = 0; r < COLLISION_ROUNDS; r++) {
        int winners = 0, slots = 0;
        for (int i = 0; i < COLLIDERS; i++) {
            afsm_status racing = c->racing[i][r], capped = c->capped[i][r];
            if (racing != AFSM_OK && racing != AFSM_EEXISTS)
                fail_msg("round %d, thread %d racing one connection id: %s", r, i, afsm_status_name(racing));
            if (capped != AFSM_OK && capped != AFSM_ELIMIT)
                fail_msg("round %d, thread %d racing a capped user: %s", r, i, afsm_status_name(capped));
            winners += racing == AFSM_OK;
            slots += capped == AFSM_OK;
        }
        assert_int_equal(winners, 1);
        assert_int_equal(slots, CAP);
        char prefix[48];
        snprintf(prefix, sizeof(prefix), "/cgf2/n/capped-%d/", r);
        assert_int_equal(keys_in_etcd(prefix), CAP);
        made += winners + slots;
    }
    assert_int_equal(keys_in_etcd("/cgf2/s/"), made);
    afsm_engine_close(c->engines[0]);
    afsm_engine_close(c->engines[1]);
    free(c);
}

/* ---- the cluster ----------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_hung_etcd_bounds_every_concurrent_create),
        cmocka_unit_test(test_colliding_creates_on_two_engines),
        cmocka_unit_test(test_close_on_a_hung_etcd_with_stale_spares),
    };
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    return cmocka_run_group_tests_name("create groups: faults", one, start_one, stop_cluster);
}
