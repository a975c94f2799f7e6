/*
 * test_etcd_review_load.c: a reviewer's reproductions for 5c883c2 ("the
 * replica load applies each range page as it arrives").
 *
 * 1. test_restore_between_pages_keeps_no_stale_reason (new in 5c883c2):
 *    a reload applies a page holding a g/ reason (another node deleted X
 *    while this node's watch was compacted away), then, before the next
 *    page, this node restores X (a copy on a new connection). The vanished
 *    check skips X (written after the load's revision), so the g/ reason
 *    stays on X's track; when X's lease later ends, X is reported DELETED
 *    with the other node's old reason, never EXPIRED. Before 5c883c2 the
 *    restore could only come after the whole load (X's deletion fired,
 *    its track dropped) or before its apply (the g/ reason, older than the
 *    restored record, ignored).
 * 2. test_long_foreign_key_does_not_end_the_load (also before 5c883c2):
 *    a foreign key longer than KEYS_MAX that ends a range page stops the
 *    paging with AFSM_OK: every key after it is never loaded.
 * 3. test_reused_connection_is_loaded (also before 5c883c2): a session on
 *    a connection id the replica's stale copy still holds is not applied
 *    by the load (the memory store refuses the connection), and the
 *    vanished check then removes the stale copy: the replica lacks a live
 *    session.
 *
 * B follows member 2 only; member 2 is down while A writes and etcd is
 * compacted, so B's watch reloads when member 2 returns (as
 * test_compaction_reloads_the_replica in test_etcd_store.c). Every wait is
 * a poll with a deadline; a hold gate holds B's watch thread between two
 * pages of its load.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "afsm.h"
#define WAIT_FOR_NAP_MS 10
#include "etcd_test_support.h"

/* ---- events, with an optional hold on one session's CREATED ------------------- */

#define EVENTS_MAX 8192

typedef struct recorded {
    uint32_t type;
    afsm_uuid id;
    char reason[64];
} recorded;

typedef struct recorder {
    hold_gate gate; /* its lock guards everything below */
    recorded events[EVENTS_MAX];
    size_t count;
    int hold_armed;
    afsm_uuid hold_on; /* the CREATED of this id holds the thread once */
} recorder;

static void record_event(void *ctx, const afsm_event *ev)
{
    recorder *r = ctx;
    pthread_mutex_lock(&r->gate.lock);
    if (r->count < EVENTS_MAX) {
        recorded *e = &r->events[r->count++];
        e->type = ev->type;
        e->id = ev->session_id;
        size_t n = ev->reason_len < sizeof(e->reason) - 1 ? ev->reason_len : sizeof(e->reason) - 1;
        memcpy(e->reason, ev->reason != NULL ? ev->reason : "", n);
        e->reason[n] = '\0';
    }
    if (r->hold_armed && ev->type == AFSM_EVENT_CREATED &&
        memcmp(&ev->session_id, &r->hold_on, sizeof(afsm_uuid)) == 0) {
        r->hold_armed = 0;
        hold_gate_wait_locked(&r->gate);
    }
    pthread_mutex_unlock(&r->gate.lock);
}

static size_t events_of(recorder *r, uint32_t type, const afsm_uuid *id, const char *reason)
{
    size_t n = 0;
    pthread_mutex_lock(&r->gate.lock);
    for (size_t i = 0; i < r->count; i++)
        if (r->events[i].type == type && memcmp(&r->events[i].id, id, sizeof(*id)) == 0 &&
            (reason == NULL || strcmp(r->events[i].reason, reason) == 0))
            n++;
    pthread_mutex_unlock(&r->gate.lock);
    return n;
}

static void dump_events_of(recorder *r, const afsm_uuid *id)
{
    pthread_mutex_lock(&r->gate.lock);
    for (size_t i = 0; i < r->count; i++)
        if (memcmp(&r->events[i].id, id, sizeof(*id)) == 0)
            fprintf(stderr, "  event %u reason '%s'\n", r->events[i].type, r->events[i].reason);
    pthread_mutex_unlock(&r->gate.lock);
}

static recorder *recorder_new(void)
{
    recorder *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    hold_gate_init(&r->gate);
    return r;
}

static void recorder_free(recorder *r)
{
    hold_gate_destroy(&r->gate);
    free(r);
}

/* ---- engines ------------------------------------------------------------------- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int reload_count;

static void count_log(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t n)
{
    (void)ctx, (void)level, (void)fields, (void)n;
    pthread_mutex_lock(&log_lock);
    reload_count += strstr(message, "replica reloaded") != NULL;
    pthread_mutex_unlock(&log_lock);
}

static int reloads(void)
{
    pthread_mutex_lock(&log_lock);
    int n = reload_count;
    pthread_mutex_unlock(&log_lock);
    return n;
}

static afsm_status open_engine(const char *prefix, const char *endpoints, recorder *events, afsm_engine **out)
{
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    if (endpoints != NULL)
        cfg.etcd_endpoints = endpoints;
    cfg.default_timeout_ms = 60000;
    cfg.on_event = events != NULL ? record_event : NULL;
    cfg.event_ctx = events;
    cfg.on_log = count_log;
    cfg.log_level = AFSM_LOG_WARN;
    cfg.shard_count = 4;
    return afsm_engine_open(&cfg, out);
}

static char member_endpoint[3][64];

static const char *endpoint_of(int i)
{
    snprintf(member_endpoint[i], sizeof(member_endpoint[i]), "http://127.0.0.1:%d", cluster.members[i].client_port);
    return member_endpoint[i];
}

static uint64_t total_of(afsm_engine *e)
{
    afsm_counts counts;
    if (afsm_engine_counts(e, &counts) != AFSM_OK)
        return UINT64_MAX;
    return counts.total;
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Member 2 up again (a failed test may leave it down). */
static void member_2_up(void)
{
    if (!harness_answers(&cluster, 2, 500))
        assert_int_equal(harness_start_member(&cluster, 2, "existing"), 0);
    assert_true(harness_wait_ready(&cluster, 2, harness_now_ms() + 10000));
}

/* A's delete of id while the cluster settles after losing member 2: an
 * AFSM_EUNAVAILABLE may have been written, so a retry may find it gone. */
static void delete_settling(afsm_engine *a, const afsm_uuid *id, const char *reason)
{
    afsm_status st;
    uint64_t until = harness_now_ms() + 10000;
    while ((st = afsm_session_delete(a, id, reason, strlen(reason))) == AFSM_EUNAVAILABLE && harness_now_ms() < until)
        harness_nap_ms(50);
    assert_true(st == AFSM_OK || st == AFSM_ENOTFOUND);
}

static void create_settling(afsm_engine *a, const char *user, afsm_session_info *out)
{
    afsm_status st;
    uint64_t until = harness_now_ms() + 10000;
    while ((st = create(a, user, out)) == AFSM_EUNAVAILABLE && harness_now_ms() < until)
        harness_nap_ms(50);
    assert_int_equal(st, AFSM_OK);
}

/* ---- 1. an own restore between two pages of a reload --------------------------- */

#define FILLERS 360 /* 3 keys each: the reload reads two pages */

static void test_restore_between_pages_keeps_no_stale_reason(void **state)
{
    (void)state;
    member_2_up();
    recorder *rb = recorder_new();
    afsm_engine *a, *b;
    char a_endpoints[160];
    snprintf(a_endpoints, sizeof(a_endpoints), "%s,%s", endpoint_of(0), endpoint_of(1));
    assert_int_equal(open_engine("/rl1/", a_endpoints, NULL, &a), AFSM_OK);
    assert_int_equal(open_engine("/rl1/", endpoint_of(2), rb, &b), AFSM_OK);
    afsm_session_info x, t, copy;
    assert_int_equal(create(a, "xavier", &x), AFSM_OK);
    for (int i = 0; i < FILLERS; i++)
        assert_int_equal(create(a, "filler", &copy), AFSM_OK);
    WAIT_FOR(total_of(b) == FILLERS + 1, 20000);
    assert_int_equal(get(b, &x.session_id, &copy), AFSM_OK);
    int before = reloads();

    /* While B's only member is down: A deletes X ("bye", its g/ key sorts
     * into the reload's first page) and creates T (whose CREATED fires on
     * B after the first page), then etcd is compacted. */
    harness_kill_member(&cluster, 2, SIGKILL);
    assert_true(harness_wait_ready(&cluster, -1, harness_now_ms() + 10000));
    delete_settling(a, &x.session_id, "bye");
    create_settling(a, "tom", &t);
    compact_now(a_endpoints);
    pthread_mutex_lock(&rb->gate.lock);
    rb->hold_on = t.session_id;
    rb->hold_armed = 1;
    pthread_mutex_unlock(&rb->gate.lock);

    assert_int_equal(harness_start_member(&cluster, 2, "existing"), 0);
    WAIT_FOR(hold_gate_held(&rb->gate), 30000); /* B's load, between its pages */
    /* B restores X from a copy, on a new connection, lasting 1 s. */
    afsm_session_info again = x;
    afsm_uuid_v7(&again.connection_id);
    again.timeout_ms = 1000;
    again.last_active_at_ns = wall_ns();
    again.expires_at_ns = again.last_active_at_ns + 1000000000;
    afsm_status restored = afsm_session_restore(b, &again, NULL, 0);
    hold_gate_open(&rb->gate);
    assert_int_equal(restored, AFSM_OK);
    WAIT_FOR(reloads() == before + 1, 20000);
    assert_int_equal(get(b, &x.session_id, &copy), AFSM_OK);

    /* Nobody heartbeats the restored X: etcd ends its lease, and B must
     * call that an expiry, not the first incarnation's "bye". */
    WAIT_FOR(get(b, &x.session_id, &copy) == AFSM_ENOTFOUND, 20000);
    fprintf(stderr, "B's events of X:\n");
    dump_events_of(rb, &x.session_id);
    assert_int_equal(events_of(rb, AFSM_EVENT_EXPIRED, &x.session_id, NULL), 1);
    afsm_engine_close(a);
    afsm_engine_close(b);
    recorder_free(rb);
}

/* ---- 3. a reused connection id ------------------------------------------------- */

static void test_reused_connection_is_loaded(void **state)
{
    (void)state;
    member_2_up();
    afsm_engine *a, *b;
    char a_endpoints[160];
    snprintf(a_endpoints, sizeof(a_endpoints), "%s,%s", endpoint_of(0), endpoint_of(1));
    assert_int_equal(open_engine("/rl3/", a_endpoints, NULL, &a), AFSM_OK);
    assert_int_equal(open_engine("/rl3/", endpoint_of(2), NULL, &b), AFSM_OK);
    afsm_session_info x, y, copy;
    assert_int_equal(create(a, "yolanda", &x), AFSM_OK);
    WAIT_FOR(get(b, &x.session_id, &copy) == AFSM_OK, 5000);
    int before = reloads();

    harness_kill_member(&cluster, 2, SIGKILL);
    assert_true(harness_wait_ready(&cluster, -1, harness_now_ms() + 10000));
    delete_settling(a, &x.session_id, "bye");
    /* The same connection, a new session (the connection is free in etcd). */
    afsm_status st;
    uint64_t until = harness_now_ms() + 10000;
    while ((st = create_on(a, "yolanda", &x.connection_id, &y)) == AFSM_EUNAVAILABLE && harness_now_ms() < until)
        harness_nap_ms(50);
    assert_int_equal(st, AFSM_OK);
    compact_now(a_endpoints);

    assert_int_equal(harness_start_member(&cluster, 2, "existing"), 0);
    WAIT_FOR(reloads() == before + 1, 30000);
    WAIT_FOR(get(b, &x.session_id, &copy) == AFSM_ENOTFOUND, 5000);
    /* etcd has Y; so must B's replica. */
    WAIT_FOR(get(b, &y.session_id, &copy) == AFSM_OK, 5000);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* ---- 2. a long foreign key at a page's end ------------------------------------- */

static void test_long_foreign_key_does_not_end_the_load(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    assert_int_equal(open_engine("/rl2/", NULL, NULL, &a), AFSM_OK);
    afsm_session_info s, copy;
    assert_int_equal(create(a, "zoe", &s), AFSM_OK);
    /* 999 short foreign keys, then a long one: the 1000th key, the first
     * page's last (all sort before c/, s/ and u/). */
    etcd_client *c = raw_client();
    for (int i = 0; i < 999; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/rl2/a/%04d", i);
        json_object *body = json_object_new_object(), *reply = NULL;
        json_object_object_add(body, "key", etcd_json_bytes(key, strlen(key)));
        json_object_object_add(body, "value", etcd_json_bytes("x", 1));
        assert_int_equal(etcd_call(c, "/v3/kv/put", body, 0, &reply, NULL), AFSM_OK);
        json_object_put(body);
        json_object_put(reply);
    }
    etcd_client_close(c);
    char long_key[1024];
    memset(long_key, 'k', sizeof(long_key) - 1);
    long_key[sizeof(long_key) - 1] = '\0';
    memcpy(long_key, "/rl2/b/", 7);
    put_raw(long_key, "x");
    assert_int_equal(open_engine("/rl2/", NULL, NULL, &b), AFSM_OK);
    assert_int_equal(get(b, &s.session_id, &copy), AFSM_OK); /* loaded at open */
    assert_int_equal(total_of(b), 1);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_long_foreign_key_does_not_end_the_load),
    };
    const struct CMUnitTest three[] = {
        cmocka_unit_test(test_restore_between_pages_keeps_no_stale_reason),
        cmocka_unit_test(test_reused_connection_is_loaded),
    };
    int failed = cmocka_run_group_tests_name("one member", one, start_one, stop_cluster);
    return failed + cmocka_run_group_tests_name("three members", three, start_three, stop_cluster);
}
