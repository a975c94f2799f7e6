/*
 * test_etcd_unseen.c: a node removes a session its replica has not applied
 * yet (made on another node, its watch behind): delete by user and an
 * eviction read etcd, not the replica. The node must still tell of the
 * session as of every other one, once each: its CREATED, then its DELETED
 * with the reason, on the calling thread before the call returns; and the
 * watch, when it catches up, must add nothing (core/etcd/store.c,
 * apply_own_delete and hold_events). Against a real etcd (etcd_harness.h),
 * on 127.0.0.1.
 *
 * Linker wraps (etcd_fault_support.h): etcd_call (unused here) and
 * etcd_stream, to pause one engine's watch.
 *
 * Each test failed before apply_own_delete applied an unseen session
 * first: the node fired the DELETED alone, and the session's CREATED never
 * (the tombstone drops its put when the watch comes back).
 *
 * Shared state: each engine's event log is guarded by its own lock; the
 * paused client is an atomic pointer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "afsm.h"
#include "engine.h"
#include "etcd/etcd_store.h"
#include "etcd/keys.h"
#include "etcd_test_support.h"
#include "etcd_fault_support.h"

#define LOG_MAX 64

typedef struct event_log {
    pthread_mutex_t lock;
    uint32_t types[LOG_MAX];
    afsm_uuid ids[LOG_MAX];
    char reasons[LOG_MAX][16];
    size_t count;
} event_log;

static void on_event(void *ctx, const afsm_event *ev)
{
    event_log *log = ctx;
    pthread_mutex_lock(&log->lock);
    if (log->count < LOG_MAX) {
        log->types[log->count] = ev->type;
        log->ids[log->count] = ev->session_id;
        snprintf(log->reasons[log->count], sizeof(log->reasons[0]), "%s", ev->reason != NULL ? ev->reason : "");
        log->count++;
    }
    pthread_mutex_unlock(&log->lock);
}

/* The events of id, as "C" (CREATED) and "D:<reason>" (DELETED) joined by
 * spaces, in order: what the test compares. */
static void events_of(event_log *log, const afsm_uuid *id, char *out, size_t size)
{
    out[0] = '\0';
    pthread_mutex_lock(&log->lock);
    for (size_t i = 0; i < log->count; i++) {
        if (memcmp(&log->ids[i], id, sizeof(*id)) != 0)
            continue;
        size_t n = strlen(out);
        if (log->types[i] == AFSM_EVENT_CREATED)
            snprintf(out + n, size - n, "%sC", n > 0 ? " " : "");
        else if (log->types[i] == AFSM_EVENT_DELETED)
            snprintf(out + n, size - n, "%sD:%s", n > 0 ? " " : "", log->reasons[i]);
        else
            snprintf(out + n, size - n, "%s?%u", n > 0 ? " " : "", log->types[i]);
    }
    pthread_mutex_unlock(&log->lock);
}

static afsm_engine *open_logged(const char *prefix, uint32_t cap, event_log *log)
{
    pthread_mutex_init(&log->lock, NULL);
    log->count = 0;
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.default_timeout_ms = 120000;
    cfg.max_sessions_per_user = cap;
    cfg.limit_policy = AFSM_LIMIT_EVICT_OLDEST;
    cfg.on_event = on_event;
    cfg.event_ctx = log;
    afsm_engine *e;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    return e;
}

/* a's watch comes back and applies everything etcd has: the events of
 * the test's sessions must not change. */
static void catch_up_and_check(afsm_engine *a, event_log *log, const afsm_uuid *id, const char *expected)
{
    resume_watch();
    int64_t now = etcd_revision();
    WAIT_FOR(atomic_load(&store_of(a)->applied_revision) >= now, 5000);
    char seen[128];
    events_of(log, id, seen, sizeof(seen));
    assert_string_equal(seen, expected);
}

static void test_delete_by_user_of_a_session_not_seen_yet(void **state)
{
    (void)state;
    const char *prefix = "/un1/";
    event_log log_a, log_b;
    afsm_engine *a = open_logged(prefix, 0, &log_a), *b = open_logged(prefix, 0, &log_b);
    pause_watch(a, prefix);
    afsm_session_info s, copy;
    assert_int_equal(create(b, "erin", &s), AFSM_OK);
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_ENOTFOUND); /* a has not seen it */

    size_t removed = 0;
    assert_int_equal(afsm_session_delete_by_user(a, "erin", 4, "logout", 6, &removed), AFSM_OK);
    assert_int_equal(removed, 1);
    char seen[128];
    events_of(&log_a, &s.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C D:logout");
    catch_up_and_check(a, &log_a, &s.session_id, "C D:logout");
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_ENOTFOUND);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

static void test_eviction_of_a_session_not_seen_yet(void **state)
{
    (void)state;
    const char *prefix = "/un2/";
    event_log log_a, log_b;
    afsm_engine *a = open_logged(prefix, 1, &log_a), *b = open_logged(prefix, 1, &log_b);
    pause_watch(a, prefix);
    afsm_session_info old, young, copy;
    assert_int_equal(create(b, "frank", &old), AFSM_OK);
    assert_int_equal(get(a, &old.session_id, &copy), AFSM_ENOTFOUND);

    assert_int_equal(create(a, "frank", &young), AFSM_OK);
    char seen[128];
    events_of(&log_a, &old.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C D:evicted");
    events_of(&log_a, &young.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C");
    catch_up_and_check(a, &log_a, &old.session_id, "C D:evicted");
    assert_int_equal(get(a, &old.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(get(a, &young.session_id, &copy), AFSM_OK);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delete_by_user_of_a_session_not_seen_yet),
        cmocka_unit_test(test_eviction_of_a_session_not_seen_yet),
    };
    return cmocka_run_group_tests_name("etcd store: removing a session this node has not seen", tests, start_one,
                                       stop_cluster);
}
