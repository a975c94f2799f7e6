/*
 * test_etcd_review_flush.c: a reviewer's attacks on 45d3c7e (a stats flush
 * writes its sessions ETCD_FLUSH_GROUP to a txn, each a guarded put nested
 * in it). Against a real etcd (etcd_harness.h), on 127.0.0.1.
 *
 * - every allocation of a grouped flush failing in turn (json-c's
 *   constructors and adders and the engine's big mallocs wrapped by the
 *   linker, this thread only, one failure each time): the stats reach
 *   etcd exactly once, no record stays marked in flight;
 * - 64 sessions each with the largest metadata json escapes most: the
 *   group's request is over etcd's limit; every session's stats still
 *   reach etcd, in bounded time;
 * - two nodes adding to and flushing the same sessions at once: etcd and
 *   both replicas end with the sum, each addition once;
 * - a member whose record etcd no longer has (expired, this node's watch
 *   held back): the other members are written, the pass goes on, the
 *   record is not brought back.
 * A group txn whose answer is lost after etcd committed it:
 * test_etcd_lost_answer.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>

#include "afsm.h"
#include "engine.h"
#include "etcd/etcd_store.h"
#include "etcd/keys.h"
#define RAW_TIMEOUT_MS 5000
#include "etcd_test_support.h"

/* ---- allocation failures (linker wraps, this thread only) ------------------------ */

/* Calls left before this thread's next wrapped allocation fails (that one
 * only); negative: none. hits: how many were made to fail. */
static _Thread_local long fail_left = -1;
static _Thread_local long fail_hits;
static _Thread_local const char *fail_what; /* the call made to fail */
/* Only txn_init's add of "success" to a member txn's body may fail (it
 * adds "compare", then "success", then "failure"). */
static _Thread_local int fail_txn_init_success_only;

static int fail_now(void)
{
    if (fail_left < 0)
        return 0;
    if (fail_left == 0) {
        fail_left = -1;
        fail_hits++;
        return 1;
    }
    fail_left--;
    return 0;
}

void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);
void *__wrap_malloc(size_t size)
{
    if (size >= 512 && !fail_txn_init_success_only && fail_now()) {
        fail_what = "malloc";
        return NULL;
    }
    return __real_malloc(size);
}

json_object *__real_json_object_new_array(void);
json_object *__wrap_json_object_new_array(void);
json_object *__wrap_json_object_new_array(void)
{
    if (!fail_txn_init_success_only && fail_now()) {
        fail_what = "json_object_new_array";
        return NULL;
    }
    return __real_json_object_new_array();
}

json_object *__real_json_object_new_object(void);
json_object *__wrap_json_object_new_object(void);
json_object *__wrap_json_object_new_object(void)
{
    if (!fail_txn_init_success_only && fail_now()) {
        fail_what = "json_object_new_object";
        return NULL;
    }
    return __real_json_object_new_object();
}

int __real_json_object_array_add(json_object *a, json_object *v);
int __wrap_json_object_array_add(json_object *a, json_object *v);
int __wrap_json_object_array_add(json_object *a, json_object *v)
{
    if (!fail_txn_init_success_only && fail_now()) {
        fail_what = "json_object_array_add";
        return -1;
    }
    return __real_json_object_array_add(a, v);
}

int __real_json_object_object_add(json_object *o, const char *k, json_object *v);
int __wrap_json_object_object_add(json_object *o, const char *k, json_object *v);
/* Which object adds may fail: every one (NULL), or only those of keys
 * in this list (NULL-terminated). */
static _Thread_local const char *const *fail_keys;

static int key_may_fail(json_object *o, const char *k)
{
    json_object *c;
    int in_txn_init = json_object_object_get_ex(o, "compare", &c);
    if (fail_txn_init_success_only)
        return in_txn_init && strcmp(k, "success") == 0;
    if (in_txn_init)
        return 0; /* txn_init's own (the test after) */
    if (fail_keys == NULL)
        return 1;
    for (const char *const *p = fail_keys; *p != NULL; p++)
        if (strcmp(*p, k) == 0)
            return 1;
    return 0;
}

int __wrap_json_object_object_add(json_object *o, const char *k, json_object *v)
{
    if (key_may_fail(o, k) && fail_now()) {
        fail_what = k;
        return -1;
    }
    return __real_json_object_object_add(o, k, v);
}

/* ---- etcd's side -------------------------------------------------------------------- */

static void delete_raw(const char *prefix, const afsm_uuid *id)
{
    char key[KEYS_MAX];
    size_t len = keys_session(prefix, strlen(prefix), id, key);
    json_object *body = json_object_new_object();
    json_object_object_add(body, "key", etcd_json_bytes(key, len));
    json_object_put(raw_call("/v3/kv/deleterange", body, 0));
}

static int inflight_of(etcd_store *es, const afsm_uuid *id)
{
    track_info ti;
    return track_get(&es->tracks, id, &ti) ? ti.inflight : 0;
}

/* ---- engines ------------------------------------------------------------------------- */

static void create_with(afsm_engine *e, const char *user, const afsm_kv *meta, size_t meta_count, afsm_session_info *s)
{
    afsm_create_options o = client_options(user);
    o.metadata = meta;
    o.metadata_count = meta_count;
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info_init(s, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_create(e, &o, s), AFSM_OK);
}

/* ---- 1. every allocation of a grouped flush failing in turn ------------------------ */

#define NOMEM_SESSIONS 3

static void test_flush_group_every_allocation_failure(void **state)
{
    (void)state;
    const char *prefix = "/rf1/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    etcd_store *es = (etcd_store *)a->st;
    afsm_kv kv = {.key = "k", .key_len = 1, .value = "v", .value_len = 1};
    afsm_session_info s[NOMEM_SESSIONS];
    for (int i = 0; i < NOMEM_SESSIONS; i++)
        create_with(a, "nomem", &kv, 1, &s[i]);
    /* A record's own fields are left out (see the test after): the group's
     * body and nesting only. */
    static const char *const group_keys[] = {"success", "request_txn", NULL};
    fail_keys = group_keys;
    int64_t expect = 0;
    long n = 0;
    for (;; n++) {
        expect++;
        for (int i = 0; i < NOMEM_SESSIONS; i++)
            add_packets(a, &s[i].session_id, 1);
        /* One member holds a stale record (another writer's, white box):
         * its guard loses in the group, it goes alone after. */
        if (n % 2 == 1)
            set_mod_revision(es, &s[1].session_id, -1);
        fail_hits = 0;
        fail_left = n;
        etcd_stats_flush(es);
        fail_left = -1;
        long hits = fail_hits;
        for (int i = 0; i < NOMEM_SESSIONS; i++)
            assert_int_equal(inflight_of(es, &s[i].session_id), 0);
        /* Whatever the failure left, a clean pass writes the rest: etcd
         * holds each addition once. */
        etcd_stats_flush(es);
        for (int i = 0; i < NOMEM_SESSIONS; i++) {
            int64_t got = packets_in_etcd(prefix, &s[i].session_id, NULL);
            if (got != expect)
                fail_msg("failure at %ld (%s): session %d has %lld packets in etcd, %lld added", n, fail_what, i,
                         (long long)got, (long long)expect);
            WAIT_FOR(packets_here(a, &s[i].session_id) == expect, 5000);
        }
        if (hits == 0)
            break; /* the pass made fewer allocations than n: every one was failed once */
    }
    fail_keys = NULL;
    print_message("%ld allocation points of a grouped flush failed in turn\n", n);
    assert_true(n > 20);
    afsm_engine_close(a);
}

/* A member txn whose "success" array could not be added to its body
 * (txn_init, store.c, ignored json_object_object_add's result) was sent
 * as a guard with nothing on success: etcd wrote nothing, answered
 * succeeded, and the flush recorded the stats as flushed at the group's
 * revision, for good. The next passes must bring etcd to what was added. */
static void test_member_txn_without_success_keeps_the_stats(void **state)
{
    (void)state;
    const char *prefix = "/rf5/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    etcd_store *es = (etcd_store *)a->st;
    afsm_session_info s[NOMEM_SESSIONS];
    for (int i = 0; i < NOMEM_SESSIONS; i++) {
        create_with(a, "nosuccess", NULL, 0, &s[i]);
        add_packets(a, &s[i].session_id, 5);
    }
    fail_txn_init_success_only = 1;
    fail_hits = 0;
    fail_left = 0; /* the first member's */
    etcd_stats_flush(es);
    fail_left = -1;
    fail_txn_init_success_only = 0;
    assert_int_equal(fail_hits, 1);
    for (int i = 0; i < NOMEM_SESSIONS; i++) {
        track_info ti;
        track_get(&es->tracks, &s[i].session_id, &ti);
        print_message("after the pass, s%d: etcd %lld here %lld flushed %llu mod %lld\n", i,
                      (long long)packets_in_etcd(prefix, &s[i].session_id, NULL),
                      (long long)packets_here(a, &s[i].session_id), (unsigned long long)ti.flushed.packets_sent,
                      (long long)ti.mod_revision);
    }
    for (int k = 0; k < 3; k++)
        etcd_stats_flush(es);
    int wrong = 0;
    for (int i = 0; i < NOMEM_SESSIONS; i++) {
        int64_t got = packets_in_etcd(prefix, &s[i].session_id, NULL);
        print_message("session %d: %lld packets in etcd, 5 added\n", i, (long long)got);
        wrong += got != 5;
    }
    assert_int_equal(wrong, 0);
    afsm_engine_close(a);
}

/* ---- 2. the largest records, 64 to a txn --------------------------------------------- */

#define BIG_SESSIONS 64

static void test_flush_group_of_the_largest_records(void **state)
{
    (void)state;
    const char *prefix = "/rf2/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    etcd_store *es = (etcd_store *)a->st;
    /* 4096 bytes of metadata, each byte one json writes as \u00XX. */
    static char value[AFSM_METADATA_BYTES_MAX - 1];
    memset(value, 0x01, sizeof(value));
    afsm_kv kv = {.key = "k", .key_len = 1, .value = value, .value_len = sizeof(value)};
    static afsm_session_info s[BIG_SESSIONS];
    for (int i = 0; i < BIG_SESSIONS; i++) {
        create_with(a, "big", &kv, 1, &s[i]);
        add_packets(a, &s[i].session_id, (uint64_t)i + 1);
    }
    int64_t before = etcd_revision();
    uint64_t t0 = harness_now_ms();
    etcd_stats_flush(es);
    uint64_t took = harness_now_ms() - t0;
    int64_t txns = etcd_revision() - before;
    print_message("%d sessions of %zu metadata bytes flushed in %lld txns, %llu ms\n", BIG_SESSIONS, sizeof(value),
                  (long long)txns, (unsigned long long)took);
    /* A group of all 64 is over etcd's request limit: refused, each session
     * went alone (64 txns). Capped by bytes, the group takes what fits. */
    assert_true(txns <= BIG_SESSIONS / 2);
    for (int i = 0; i < BIG_SESSIONS; i++)
        assert_int_equal(packets_in_etcd(prefix, &s[i].session_id, NULL), i + 1);
    assert_true(took < 3000);
    afsm_engine_close(a);
}

/* ---- 3. two nodes flushing the same sessions ------------------------------------------- */

#define SHARED_SESSIONS 80
#define SHARED_ROUNDS   25

typedef struct flusher {
    afsm_engine *e;
    const afsm_session_info *s;
    uint64_t step;
    pthread_t thread;
} flusher;

static void *flusher_main(void *arg)
{
    flusher *f = arg;
    for (int r = 0; r < SHARED_ROUNDS; r++) {
        for (int i = 0; i < SHARED_SESSIONS; i++) {
            afsm_stats d = {.packets_sent = f->step};
            afsm_session_add_stats(f->e, &f->s[i].session_id, &d);
        }
        etcd_stats_flush((etcd_store *)f->e->st);
    }
    return NULL;
}

static int all_equal(afsm_engine *e, const afsm_session_info *s, int64_t want)
{
    for (int i = 0; i < SHARED_SESSIONS; i++)
        if (packets_here(e, &s[i].session_id) != want)
            return 0;
    return 1;
}

static void test_two_nodes_flush_the_same_sessions(void **state)
{
    (void)state;
    const char *prefix = "/rf3/";
    afsm_engine *a = open_stats_engine(prefix, NULL), *b = open_stats_engine(prefix, NULL);
    static afsm_session_info s[SHARED_SESSIONS];
    for (int i = 0; i < SHARED_SESSIONS; i++)
        create_with(a, "shared", NULL, 0, &s[i]);
    for (int i = 0; i < SHARED_SESSIONS; i++)
        WAIT_FOR(packets_here(b, &s[i].session_id) == 0, 5000);
    flusher fa = {.e = a, .s = s, .step = 1}, fb = {.e = b, .s = s, .step = 1000};
    pthread_create(&fa.thread, NULL, flusher_main, &fa);
    pthread_create(&fb.thread, NULL, flusher_main, &fb);
    pthread_join(fa.thread, NULL);
    pthread_join(fb.thread, NULL);
    /* What raced is written by the next passes. */
    for (int k = 0; k < 5; k++) {
        etcd_stats_flush((etcd_store *)a->st);
        etcd_stats_flush((etcd_store *)b->st);
    }
    const int64_t want = SHARED_ROUNDS * 1001;
    int wrong = 0;
    for (int i = 0; i < SHARED_SESSIONS; i++) {
        int64_t got = packets_in_etcd(prefix, &s[i].session_id, NULL);
        if (got != want) {
            print_message("session %d: %lld packets in etcd, %lld added\n", i, (long long)got, (long long)want);
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
    WAIT_FOR(all_equal(a, s, want), 5000);
    WAIT_FOR(all_equal(b, s, want), 5000);
    afsm_engine_close(b);
    afsm_engine_close(a);
}

/* ---- 4. a member whose record is gone from etcd --------------------------------------- */

#define GONE_SESSIONS 10
#define GONE_ONE      4

static void test_group_member_gone_in_etcd(void **state)
{
    (void)state;
    const char *prefix = "/rf4/";
    hold_gate g;
    hold_gate_init(&g);
    afsm_engine *a = open_stats_engine(prefix, &g), *b = open_stats_engine(prefix, NULL);
    afsm_session_info s[GONE_SESSIONS], held;
    for (int i = 0; i < GONE_SESSIONS; i++) {
        create_with(a, "gone", NULL, 0, &s[i]);
        add_packets(a, &s[i].session_id, (uint64_t)i + 1);
    }
    /* a's watch holds on b's create: a applies nothing from now on. */
    create_with(b, "hold", NULL, 0, &held);
    WAIT_FOR(hold_gate_held(&g), 5000);
    delete_raw(prefix, &s[GONE_ONE].session_id); /* as its lease's expiry would */
    int64_t before = etcd_revision();
    uint64_t t0 = harness_now_ms();
    etcd_stats_flush((etcd_store *)a->st);
    uint64_t took = harness_now_ms() - t0;
    print_message("pass with a member gone: %lld txns, %llu ms\n", (long long)(etcd_revision() - before),
                  (unsigned long long)took);
    for (int i = 0; i < GONE_SESSIONS; i++)
        assert_int_equal(packets_in_etcd(prefix, &s[i].session_id, NULL), i == GONE_ONE ? -1 : i + 1);
    assert_int_equal(inflight_of((etcd_store *)a->st, &s[GONE_ONE].session_id), 0);
    hold_gate_open(&g);
    WAIT_FOR(packets_here(a, &s[GONE_ONE].session_id) == -1, 5000);
    assert_int_equal(packets_in_etcd(prefix, &s[GONE_ONE].session_id, NULL), -1);
    afsm_engine_close(b);
    afsm_engine_close(a);
    hold_gate_destroy(&g);
}

/* ---- setup ------------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_flush_group_every_allocation_failure),
        cmocka_unit_test(test_member_txn_without_success_keeps_the_stats),
        cmocka_unit_test(test_flush_group_of_the_largest_records),
        cmocka_unit_test(test_two_nodes_flush_the_same_sessions),
        cmocka_unit_test(test_group_member_gone_in_etcd),
    };
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    return cmocka_run_group_tests_name("etcd flush groups (review of 45d3c7e)", one, start_one, stop_cluster);
}
