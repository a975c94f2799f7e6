/*
 * test_etcd_create_group.c: concurrent creates on one engine go to etcd in
 * groups (core/etcd/store.c, "create groups": one txn whose nested txns are
 * the creates' own), and each create still gets the status it would get
 * alone: AFSM_EEXISTS for a taken connection id, exactly one winner for two
 * creates racing one new connection id, AFSM_ELIMIT past a user's cap,
 * AFSM_OK with its CREATED fired on the calling thread before it returns,
 * and AFSM_ENOMEM with nothing left in etcd when the creating thread's own
 * allocation fails after the group committed. Against a real etcd
 * (etcd_harness.h).
 *
 * That groups formed is checked, not assumed: sessions created by one txn
 * share its revision in etcd (mod_revision of their s/ keys). Each test
 * repeats its round of concurrent creates until such a shared revision is
 * seen, within a deadline.
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
#include "util/alloc.h"

/* The last CREATED this thread saw fired (the calling thread's own). */
static _Thread_local afsm_uuid created_here;
static _Thread_local int created_count_here;

static void on_event(void *ctx, const afsm_event *ev)
{
    (void)ctx;
    if (ev->type == AFSM_EVENT_CREATED) {
        created_here = ev->session_id;
        created_count_here++;
    }
}

static afsm_engine *open_engine(const char *prefix, uint32_t cap)
{
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.etcd_request_timeout_ms = 5000;
    cfg.default_timeout_ms = 120000; /* pooled leases (a minute or more) */
    cfg.max_sessions_per_user = cap;
    cfg.on_event = on_event;
    cfg.shard_count = 4;
    afsm_engine *e;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    return e;
}

/* The s/ keys under prefix: how many, and whether two share a mod
 * revision (one txn wrote both: a group). */
static void sessions_and_groups_in_etcd(const char *prefix, long *count, int *shared_revision)
{
    etcd_client *c = raw_client();
    char key[64], end[64];
    size_t n = (size_t)snprintf(key, sizeof(key), "%ss/", prefix);
    memcpy(end, key, n + 1);
    end[n - 1]++;
    json_object *body = json_object_new_object(), *reply = NULL;
    json_object_object_add(body, "key", etcd_json_bytes(key, n));
    json_object_object_add(body, "range_end", etcd_json_bytes(end, n));
    json_object_object_add(body, "keys_only", json_object_new_boolean(1));
    assert_int_equal(etcd_call(c, "/v3/kv/range", body, 1, &reply, NULL), AFSM_OK);
    json_object *kvs = etcd_get_array(reply, "kvs");
    size_t len = kvs != NULL ? json_object_array_length(kvs) : 0;
    *count = (long)len;
    *shared_revision = 0;
    for (size_t i = 0; i < len && !*shared_revision; i++)
        for (size_t j = i + 1; j < len && !*shared_revision; j++)
            *shared_revision = etcd_get_int64(json_object_array_get_idx(kvs, i), "mod_revision") ==
                               etcd_get_int64(json_object_array_get_idx(kvs, j), "mod_revision");
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
}

/* ---- statuses in groups --------------------------------------------------------- */

#define THREADS 16
#define ROUNDS  6
#define CAP     2

typedef enum kind { TAKEN, CAPPED, DISTINCT, PAIRED } kind;

typedef struct round_ctx {
    afsm_engine *engine;
    pthread_barrier_t start;
    int repetition;
    afsm_uuid taken[THREADS / 4];
    afsm_uuid paired[2][ROUNDS]; /* two pairs of threads race these ids */
    /* Per thread, per create: the status (written by that thread only). */
    afsm_status status[THREADS][ROUNDS];
    int created_elsewhere[THREADS]; /* an OK whose CREATED was not seen on its thread first */
} round_ctx;

typedef struct racer {
    round_ctx *r;
    int index;
} racer;

static kind kind_of(int index)
{
    return (kind)(index % 4);
}

static void *race(void *arg)
{
    racer *me = arg;
    round_ctx *r = me->r;
    pthread_barrier_wait(&r->start);
    for (int i = 0; i < ROUNDS; i++) {
        char user[64];
        afsm_uuid connection;
        afsm_uuid_v7(&connection);
        switch (kind_of(me->index)) {
        case TAKEN:
            snprintf(user, sizeof(user), "taken-%d-%d-%d", r->repetition, me->index, i);
            connection = r->taken[me->index / 4];
            break;
        case CAPPED:
            snprintf(user, sizeof(user), "capped-%d", r->repetition);
            break;
        case DISTINCT:
            snprintf(user, sizeof(user), "distinct-%d-%d-%d", r->repetition, me->index, i);
            break;
        case PAIRED: /* threads 3 and 7 race one id each round, 11 and 15 another */
            snprintf(user, sizeof(user), "paired-%d-%d-%d", r->repetition, me->index, i);
            connection = r->paired[me->index / 8][i];
            break;
        }
        int before = created_count_here;
        afsm_session_info s;
        afsm_status st = create_on(r->engine, user, &connection, &s);
        r->status[me->index][i] = st;
        if (st == AFSM_OK &&
            (created_count_here != before + 1 || memcmp(&created_here, &s.session_id, sizeof(s.session_id)) != 0))
            r->created_elsewhere[me->index]++;
    }
    return NULL;
}

/* One repetition: 16 threads create at once; returns whether etcd shows a
 * shared revision (a group) among this prefix's sessions. */
static int one_repetition(afsm_engine *e, const char *prefix, int repetition, long *sessions_before)
{
    round_ctx *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    r->engine = e;
    r->repetition = repetition;
    /* The taken connection ids: their c/ keys written straight into etcd,
     * which this engine's replica does not read (it answers a taken id it
     * knows without asking etcd), so these creates reach the txn and its
     * guard refuses them. */
    for (int i = 0; i < THREADS / 4; i++) {
        char key[64], owner[AFSM_UUID_STRING_SIZE];
        afsm_uuid other;
        afsm_uuid_v7(&r->taken[i]);
        afsm_uuid_v7(&other);
        afsm_uuid_format(&other, owner);
        int n = snprintf(key, sizeof(key), "%sc/", prefix);
        afsm_uuid_format(&r->taken[i], key + n);
        put_raw(key, owner);
    }
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < ROUNDS; i++)
            afsm_uuid_v7(&r->paired[p][i]);
    pthread_barrier_init(&r->start, NULL, THREADS);
    racer racers[THREADS];
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        racers[i] = (racer){r, i};
        assert_int_equal(pthread_create(&threads[i], NULL, race, &racers[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&r->start);

    long made = 0, capped_ok = 0;
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(r->created_elsewhere[t], 0);
        for (int i = 0; i < ROUNDS; i++) {
            afsm_status st = r->status[t][i];
            switch (kind_of(t)) {
            case TAKEN:
                assert_int_equal(st, AFSM_EEXISTS);
                break;
            case CAPPED:
                assert_true(st == AFSM_OK || st == AFSM_ELIMIT);
                capped_ok += st == AFSM_OK;
                break;
            case DISTINCT:
                assert_int_equal(st, AFSM_OK);
                break;
            case PAIRED:
                if (t == 3 || t == 11) { /* the pair's verdict, once */
                    afsm_status other = r->status[t + 4][i];
                    if (!((st == AFSM_OK && other == AFSM_EEXISTS) || (st == AFSM_EEXISTS && other == AFSM_OK)))
                        print_message("round %d, threads %d and %d: %s and %s\n", i, t, t + 4, afsm_status_name(st),
                                      afsm_status_name(other));
                    assert_true((st == AFSM_OK && other == AFSM_EEXISTS) || (st == AFSM_EEXISTS && other == AFSM_OK));
                }
                break;
            }
            made += st == AFSM_OK;
        }
    }
    assert_int_equal(capped_ok, CAP); /* the cap held, and was reached */
    long count;
    int shared;
    sessions_and_groups_in_etcd(prefix, &count, &shared);
    assert_int_equal(count - *sessions_before, made); /* no failed create left anything */
    *sessions_before = count;
    free(r);
    return shared;
}

static void test_grouped_creates_keep_their_statuses(void **state)
{
    (void)state;
    afsm_engine *e = open_engine("/cg1/", CAP);
    long sessions = 0;
    int grouped = 0, repetitions = 0;
    uint64_t until = harness_now_ms() + 60000;
    while (!grouped && harness_now_ms() < until)
        grouped = one_repetition(e, "/cg1/", repetitions++, &sessions);
    print_message("%d repetition(s) of %d concurrent creates until two shared a txn\n", repetitions, THREADS * ROUNDS);
    afsm_engine_close(e);
    assert_true(grouped);
}

/* ---- an allocation failure inside a group --------------------------------------- */

typedef struct failing_ctx {
    afsm_engine *engine;
    _Atomic int stop;
    _Atomic long ok, other;
} failing_ctx;

/* Creates until told to stop: the traffic that forms groups. */
static void *steady(void *arg)
{
    failing_ctx *f = arg;
    while (!atomic_load(&f->stop)) {
        afsm_uuid connection;
        afsm_uuid_v7(&connection);
        afsm_session_info s;
        afsm_status st = create_on(f->engine, "steady", &connection, &s);
        atomic_fetch_add(st == AFSM_OK ? &f->ok : &f->other, 1);
    }
    return NULL;
}

/* While 8 threads create, this thread's Nth allocation fails in one create
 * after another (N = 0, 1, ...): a failure after its group committed must
 * revoke its own lease (its session gone from etcd), report AFSM_ENOMEM and
 * leave the rest of its group created. */
static void test_allocation_failure_inside_a_group(void **state)
{
    (void)state;
    afsm_engine *e = open_engine("/cg2/", 0);
    failing_ctx f = {.engine = e};
    pthread_t threads[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, steady, &f), 0);
    long made = 0, failed = 0;
    for (long n = 0; n < 40; n++) {
        afsm_uuid connection;
        afsm_uuid_v7(&connection);
        afsm_session_info s;
        alloc_fail_after_on_this_thread(n);
        afsm_status st = create_on(e, "scarce", &connection, &s);
        alloc_fail_after_on_this_thread(-1);
        if (st == AFSM_OK)
            made++;
        else if (st == AFSM_ENOMEM)
            failed++;
        else
            fail_msg("create with this thread's allocation %ld failing: %s", n, afsm_status_name(st));
    }
    atomic_store(&f.stop, 1);
    for (int i = 0; i < 8; i++)
        pthread_join(threads[i], NULL);
    long count;
    int shared;
    sessions_and_groups_in_etcd("/cg2/", &count, &shared);
    print_message("this thread: %ld AFSM_OK, %ld AFSM_ENOMEM; others: %ld OK, %ld failed; in etcd: %ld\n", made, failed,
                  (long)atomic_load(&f.ok), (long)atomic_load(&f.other), count);
    afsm_engine_close(e);
    assert_true(failed > 0); /* the sweep reached the create's allocations */
    assert_int_equal(atomic_load(&f.other), 0);
    assert_int_equal(count, made + atomic_load(&f.ok));
    assert_true(shared); /* the creates did go in groups */
}

/* ---- the cluster ----------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_grouped_creates_keep_their_statuses),
        cmocka_unit_test(test_allocation_failure_inside_a_group),
    };
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    return cmocka_run_group_tests_name("create groups: one member", one, start_one, stop_cluster);
}
