/*
 * test_etcd_review3.c: a reviewer's attacks on d0769c4, 4395ad3, 2bfc25d.
 * Against a real etcd (etcd_harness.h), on 127.0.0.1. json_object_object_add
 * is wrapped by the linker (this thread only, adds of one named key only).
 *
 * Each failed before the fix (request bodies are now built with etcd_with,
 * which yields no body when an add fails: AFSM_ENOMEM, nothing sent).
 *
 * 1. test_delete_reason_add_failure_writes_nothing: delete_txn (store.c)
 *    ignored json_object_object_add's result for the g/ key's "reason":
 *    the txn was sent with a g/ value of {"why":0}, the delete answered
 *    AFSM_OK, and every other node reported the session EXPIRED
 *    (decode_reason refuses the value), not DELETED with its reason.
 * 2. test_load_range_end_add_failure_loads_nothing: range_prefix
 *    (replica.c) ignored the adds of its range request: without
 *    "range_end" the first page asked for the single key "<prefix>", got
 *    nothing and no "more", and the load answered AFSM_OK: a node opening
 *    then held none of etcd's sessions (for good: the watch starts after
 *    the load's revision).
 * 3. test_reload_range_end_add_failure_expires_everything: the same fault
 *    in a reload (the function the watch thread runs after a compaction,
 *    called here on the test thread): every session of the replica was
 *    taken as vanished, removed and reported EXPIRED while etcd still
 *    held it.
 * 4. test_close_during_a_pass_flushes_what_was_added: a close landing
 *    during a periodic pass made that pass the last one, losing what was
 *    added to sessions it had already written.
 * 5. test_every_record_add_failure_writes_nothing: every field of a record
 *    and of a txn failing in turn, for create, update, flush and delete.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "afsm.h"
#include "engine.h"
#include "etcd/etcd_store.h"
#include "etcd/keys.h"
#include "etcd_test_support.h"

/* ---- the fault: one add of one named key fails, on this thread ------------------ */

static _Thread_local const char *fail_key;
static _Thread_local int fail_hits;

int __real_json_object_object_add(json_object *o, const char *k, json_object *v);
int __wrap_json_object_object_add(json_object *o, const char *k, json_object *v);
int __wrap_json_object_object_add(json_object *o, const char *k, json_object *v)
{
    if (fail_key != NULL && strcmp(k, fail_key) == 0) {
        fail_key = NULL;
        fail_hits++;
        return -1; /* the caller keeps v (json-c does not take it on failure) */
    }
    return __real_json_object_object_add(o, k, v);
}

/* ---- events ---------------------------------------------------------------------- */

typedef struct recorder {
    pthread_mutex_t lock;
    size_t deleted, expired;
    char reason[64];
} recorder;

static void record_event(void *ctx, const afsm_event *ev)
{
    recorder *r = ctx;
    pthread_mutex_lock(&r->lock);
    if (ev->type == AFSM_EVENT_DELETED) {
        r->deleted++;
        size_t n = ev->reason_len < sizeof(r->reason) - 1 ? ev->reason_len : sizeof(r->reason) - 1;
        memcpy(r->reason, ev->reason != NULL ? ev->reason : "", n);
        r->reason[n] = '\0';
    } else if (ev->type == AFSM_EVENT_EXPIRED) {
        r->expired++;
    }
    pthread_mutex_unlock(&r->lock);
}

static size_t ended(recorder *r)
{
    pthread_mutex_lock(&r->lock);
    size_t n = r->deleted + r->expired;
    pthread_mutex_unlock(&r->lock);
    return n;
}

static afsm_engine *open_engine(const char *prefix, recorder *r)
{
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.default_timeout_ms = 60000;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    if (r != NULL) {
        cfg.on_event = record_event;
        cfg.event_ctx = r;
    }
    afsm_engine *e = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    return e;
}

static uint64_t total_of(afsm_engine *e)
{
    afsm_counts counts;
    return afsm_engine_counts(e, &counts) == AFSM_OK ? counts.total : UINT64_MAX;
}

/* ---- 1. delete: the g/ key's reason not added ------------------------------------- */

static void test_delete_reason_add_failure_writes_nothing(void **state)
{
    (void)state;
    recorder rb = {.lock = PTHREAD_MUTEX_INITIALIZER};
    afsm_engine *a = open_engine("/r3d/", NULL), *b = open_engine("/r3d/", &rb);
    afsm_session_info s, copy;
    assert_int_equal(create(a, "dora", &s), AFSM_OK);
    WAIT_FOR(get(b, &s.session_id, &copy) == AFSM_OK, 5000);

    fail_hits = 0;
    fail_key = "reason"; /* delete_txn's add to the g/ value */
    afsm_status st = afsm_session_delete(a, &s.session_id, "bye", 3);
    fail_key = NULL;
    assert_int_equal(fail_hits, 1);
    if (st == AFSM_OK) {
        /* Sent anyway: B learns of the deletion; it must say why. */
        WAIT_FOR(ended(&rb) == 1, 5000);
        print_message("delete answered AFSM_OK; B: %zu DELETED ('%s'), %zu EXPIRED\n", rb.deleted, rb.reason,
                      rb.expired);
        assert_int_equal(rb.expired, 0);
        assert_int_equal(rb.deleted, 1);
        assert_string_equal(rb.reason, "bye");
    } else {
        /* Refused: nothing written, the session still in etcd. */
        assert_int_equal(st, AFSM_ENOMEM);
        assert_int_equal(sessions_in_etcd("/r3d/"), 1);
    }
    afsm_engine_close(b);
    afsm_engine_close(a);
}

/* ---- 2. the load: its range request without "range_end" --------------------------- */

#define LOADED 5

static void test_load_range_end_add_failure_loads_nothing(void **state)
{
    (void)state;
    afsm_engine *a = open_engine("/r3l/", NULL);
    afsm_session_info s[LOADED], copy;
    for (int i = 0; i < LOADED; i++)
        assert_int_equal(create(a, "lou", &s[i]), AFSM_OK);
    fail_hits = 0;
    fail_key = "range_end"; /* the first one of B's open: its load's first page */
    afsm_config cfg;
    etcd_test_config(&cfg, "/r3l/");
    cfg.log_level = AFSM_LOG_ERROR;
    afsm_engine *b = NULL;
    afsm_status st = afsm_engine_open(&cfg, &b);
    fail_key = NULL;
    assert_int_equal(fail_hits, 1);
    if (st == AFSM_OK) {
        print_message("open answered AFSM_OK holding %llu of %d sessions\n", (unsigned long long)total_of(b), LOADED);
        assert_int_equal(total_of(b), LOADED);
        for (int i = 0; i < LOADED; i++)
            assert_int_equal(get(b, &s[i].session_id, &copy), AFSM_OK);
        afsm_engine_close(b);
    } else {
        assert_int_equal(st, AFSM_ENOMEM); /* a load that could not be asked for is no load */
    }
    afsm_engine_close(a);
}

/* ---- 3. a reload: the same fault ---------------------------------------------------- */

static void test_reload_range_end_add_failure_expires_everything(void **state)
{
    (void)state;
    recorder ra = {.lock = PTHREAD_MUTEX_INITIALIZER};
    afsm_engine *a = open_engine("/r3r/", &ra);
    afsm_session_info s[LOADED], copy;
    for (int i = 0; i < LOADED; i++)
        assert_int_equal(create(a, "rita", &s[i]), AFSM_OK);
    fail_hits = 0;
    fail_key = "range_end";
    afsm_status st = etcd_replica_load((etcd_store *)a->st, 1);
    fail_key = NULL;
    assert_int_equal(fail_hits, 1);
    print_message("reload answered %d; A now holds %llu of %d sessions (etcd: %ld); %zu EXPIRED fired\n", (int)st,
                  (unsigned long long)total_of(a), LOADED, sessions_in_etcd("/r3r/"), ra.expired);
    assert_int_equal(sessions_in_etcd("/r3r/"), LOADED);
    assert_int_equal(ended(&ra), 0);
    for (int i = 0; i < LOADED; i++)
        assert_int_equal(get(a, &s[i].session_id, &copy), AFSM_OK);
    afsm_engine_close(a);
}

/* ---- 4. close while a regular stats pass is under way --------------------------- */

/* Holds the thread that fires it: A's watch on B's CREATED of "hold" (A
 * then applies nothing of B's), A's flusher on h's STATE_CHANGED (fired by
 * the flush that lost h's guard to B's update: mid-pass). */
typedef struct pass_gates {
    hold_gate watch, pass;
    afsm_uuid h;
} pass_gates;

static void gate_events(void *ctx, const afsm_event *ev)
{
    pass_gates *g = ctx;
    if (ev->type == AFSM_EVENT_CREATED && ev->user_id_len == 4 && memcmp(ev->user_id, "hold", 4) == 0) {
        pthread_mutex_lock(&g->watch.lock);
        if (!g->watch.held)
            hold_gate_wait_locked(&g->watch);
        pthread_mutex_unlock(&g->watch.lock);
    } else if (ev->type == AFSM_EVENT_STATE_CHANGED && memcmp(&ev->session_id, &g->h, sizeof(g->h)) == 0) {
        pthread_mutex_lock(&g->pass.lock);
        if (!g->pass.held)
            hold_gate_wait_locked(&g->pass);
        pthread_mutex_unlock(&g->pass.lock);
    }
}

static void *close_engine(void *arg)
{
    afsm_engine_close(arg);
    return NULL;
}

static void test_close_during_a_pass_flushes_what_was_added(void **state)
{
    (void)state;
    const char *prefix = "/r3c/";
    pass_gates g;
    hold_gate_init(&g.watch);
    hold_gate_init(&g.pass);
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.default_timeout_ms = 60000;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.etcd_stats_flush_ms = 1;
    cfg.on_event = gate_events;
    cfg.event_ctx = &g;
    afsm_engine *a = NULL, *b = open_engine(prefix, NULL);
    assert_int_equal(afsm_engine_open(&cfg, &a), AFSM_OK);
    etcd_store *es = (etcd_store *)a->st;
    afsm_session_info s0, h, held, copy;
    assert_int_equal(create(a, "sam", &s0), AFSM_OK);
    assert_int_equal(create(a, "hank", &h), AFSM_OK);
    g.h = h.session_id;
    WAIT_FOR(get(b, &h.session_id, &copy) == AFSM_OK, 5000);
    afsm_stats one = {.packets_sent = 1}, more = {.packets_sent = 1000};
    assert_int_equal(afsm_session_add_stats(a, &s0.session_id, &one), AFSM_OK);
    WAIT_FOR(packets_in_etcd(prefix, &s0.session_id, NULL) == 1, 5000); /* a regular pass wrote it */

    /* A's watch held: B's update of h stays unseen on A. */
    assert_int_equal(create(b, "hold", &held), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g.watch), 5000);
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    assert_int_equal(afsm_session_update(b, &h.session_id, &u, NULL), AFSM_OK);
    /* A's next pass flushes h only, loses its guard, applies B's record:
     * h's STATE_CHANGED holds A's flusher in that pass. */
    assert_int_equal(afsm_session_add_stats(a, &h.session_id, &one), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g.pass), 5000);

    /* Added, then the engine closed: close "flushes once more". */
    assert_int_equal(afsm_session_add_stats(a, &s0.session_id, &more), AFSM_OK);
    pthread_t closer;
    pthread_create(&closer, NULL, close_engine, a);
    WAIT_FOR(atomic_load(&es->stop), 5000);
    hold_gate_open(&g.pass);
    hold_gate_open(&g.watch);
    pthread_join(closer, NULL);
    int64_t got = packets_in_etcd(prefix, &s0.session_id, NULL);
    print_message("after close: s0 has %lld packets in etcd, 1001 added before close\n", (long long)got);
    assert_int_equal(got, 1001);
    afsm_engine_close(b);
    hold_gate_destroy(&g.pass);
    hold_gate_destroy(&g.watch);
}

/* ---- 5. every add of a record and of txn_init failing, for each write ------------- */

static const char *const record_keys[] = {"v",     "id",           "conn",       "user",      "ip",    "port",
                                          "state", "timeout_ms",   "created_ns", "active_ns", "gen",   "lease",
                                          "slot",  "packets_sent", "bytes_sent", "rtt_ms",    "stats", "mk",
                                          "meta",  "compare",      "success",    "failure",   NULL};

static void test_every_record_add_failure_writes_nothing(void **state)
{
    (void)state;
    const char *prefix = "/r3e/";
    afsm_engine *a = open_engine(prefix, NULL);
    afsm_kv kv = {.key = "mk", .key_len = 2, .value = "v", .value_len = 1};
    int64_t packets = 0;
    for (const char *const *k = record_keys; *k != NULL; k++) {
        /* create */
        afsm_create_options o = client_options("eve");
        o.metadata = &kv;
        o.metadata_count = 1;
        afsm_uuid_v7(&o.connection_id);
        afsm_session_info s, copy;
        afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
        long before = sessions_in_etcd(prefix);
        fail_hits = 0;
        fail_key = *k;
        afsm_status st = afsm_session_create(a, &o, &s);
        fail_key = NULL;
        if (fail_hits == 1 && st != AFSM_ENOMEM)
            fail_msg("create with '%s' not added: %d", *k, (int)st);
        if (fail_hits == 1)
            assert_int_equal(sessions_in_etcd(prefix), before);
        if (st != AFSM_OK)
            assert_int_equal(afsm_session_create(a, &o, &s), AFSM_OK);
        /* update */
        afsm_update u = AFSM_UPDATE_INIT;
        u.fields = AFSM_UPDATE_STATE;
        u.state = AFSM_STATE_ACTIVE;
        fail_hits = 0;
        fail_key = *k;
        st = afsm_session_update(a, &s.session_id, &u, NULL);
        fail_key = NULL;
        if (fail_hits == 1 && st != AFSM_ENOMEM)
            fail_msg("update with '%s' not added: %d", *k, (int)st);
        /* flush */
        afsm_stats d = {.packets_sent = 3};
        assert_int_equal(afsm_session_add_stats(a, &s.session_id, &d), AFSM_OK);
        fail_hits = 0;
        fail_key = *k;
        etcd_stats_flush((etcd_store *)a->st);
        fail_key = NULL;
        etcd_stats_flush((etcd_store *)a->st);
        assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 3);
        /* delete */
        fail_hits = 0;
        fail_key = *k;
        st = afsm_session_delete(a, &s.session_id, "bye", 3);
        fail_key = NULL;
        if (fail_hits == 1) {
            if (st != AFSM_ENOMEM)
                fail_msg("delete with '%s' not added: %d", *k, (int)st);
            assert_int_equal(get(a, &s.session_id, &copy), AFSM_OK);
            assert_int_equal(afsm_session_delete(a, &s.session_id, "bye", 3), AFSM_OK);
        }
        (void)packets;
    }
    afsm_engine_close(a);
}

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_delete_reason_add_failure_writes_nothing),
        cmocka_unit_test(test_load_range_end_add_failure_loads_nothing),
        cmocka_unit_test(test_reload_range_end_add_failure_expires_everything),
        cmocka_unit_test(test_close_during_a_pass_flushes_what_was_added),
        cmocka_unit_test(test_every_record_add_failure_writes_nothing),
    };
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    return cmocka_run_group_tests_name("etcd review of d0769c4, 4395ad3, 2bfc25d", one, start_one, stop_cluster);
}
