/*
 * test_etcd_packet.c: review 17's checks of afsm_handle_packet on the etcd
 * store, against a real etcd (etcd_harness.h: Debian's /usr/bin/etcd on
 * loopback, free ports, data in a temp dir, killed at exit). The etcd store
 * does a heartbeat, then a stats add by id (core/etcd/store.c,
 * etcd_handle_packet). Bad input must be refused there as the memory store
 * refuses it, and the handle must not be touched after the heartbeat, whose
 * event may release it.
 *
 * Every wait is a poll with a deadline; no sleeps.
 */
#include "test_support.h"

#include "etcd_test_support.h"

static afsm_engine *open_etcd_events(const char *prefix, afsm_event_fn on_event, void *ctx)
{
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.default_timeout_ms = 60000;
    cfg.on_event = on_event;
    cfg.event_ctx = ctx;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static afsm_engine *open_etcd(const char *prefix)
{
    return open_etcd_events(prefix, NULL, NULL);
}

/* The working path: one call heartbeats (CONNECTING -> ACTIVE, remaining
 * from the store's clock) and adds the counters, visible locally at once. */
static void test_etcd_packet_heartbeats_and_counts(void **state)
{
    (void)state;
    afsm_engine *engine = open_etcd("/r17a/");
    afsm_session_info s = create_session(engine, "etcd-packet");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    uint64_t now = 0, remaining = 0;
    assert_int_equal(afsm_engine_now(engine, &now), AFSM_OK);
    afsm_stats d = {.packets_received = 2, .bytes_received = 300};
    assert_int_equal(afsm_handle_packet(h, now, &d, &remaining), AFSM_OK);
    assert_true(remaining > 59000 && remaining <= 60000);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_OK);
    assert_int_equal(info.state, AFSM_STATE_ACTIVE);
    assert_int_equal(info.stats.packets_received, 2);
    assert_int_equal(info.stats.bytes_received, 300);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* afsm.h: "one [reading] ahead of the engine clock is AFSM_EINVAL (nothing
 * done)". The memory store refuses it (tests/test_packet.c); the etcd
 * fallback never looks at now_ns below 2^63, so a bad reading heartbeats
 * and counts: the same call on the same engine API gives a different
 * answer by store. */
static void test_etcd_packet_refuses_future_reading(void **state)
{
    (void)state;
    afsm_engine *engine = open_etcd("/r17b/");
    afsm_session_info s = create_session(engine, "etcd-future");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    uint64_t now = 0;
    assert_int_equal(afsm_engine_now(engine, &now), AFSM_OK);
    afsm_stats d = {.packets_received = 1};
    afsm_status st = afsm_handle_packet(h, now + 3600 * SEC, &d, NULL);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_OK);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    assert_int_equal(st, AFSM_EINVAL);
    assert_int_equal(info.state, AFSM_STATE_CONNECTING);
    assert_int_equal(info.stats.packets_received, 0);
}

/* A packet's heartbeat fires CONNECTING -> ACTIVE on the calling thread;
 * a callback that releases the handle then is a plain user action (the
 * memory store allows it: tests/test_packet_review.c). The stats add that
 * follows must not go through the freed handle (ASan: heap-use-after-free
 * when it did, in the manager's old heartbeat-then-add fallback). */
typedef struct release_ctx {
    afsm_handle *h;
    int released;
} release_ctx;

static void release_on_active(void *p, const afsm_event *ev)
{
    release_ctx *c = p;
    if (c->h != NULL && ev->new_state == AFSM_STATE_ACTIVE) {
        assert_int_equal(afsm_handle_release(c->h), AFSM_OK);
        c->h = NULL;
        c->released = 1;
    }
}

static void test_etcd_packet_event_releases_the_handle(void **state)
{
    (void)state;
    release_ctx c = {0};
    afsm_engine *engine = open_etcd_events("/r17c/", release_on_active, &c);
    afsm_session_info s = create_session(engine, "etcd-release");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    c.h = h;
    uint64_t now = 0;
    assert_int_equal(afsm_engine_now(engine, &now), AFSM_OK);
    afsm_stats d = {.packets_received = 1, .bytes_received = 40};
    assert_int_equal(afsm_handle_packet(h, now, &d, NULL), AFSM_OK);
    assert_int_equal(c.released, 1);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_OK);
    assert_int_equal(info.stats.packets_received, 1);
    assert_int_equal(info.stats.bytes_received, 40);
    uint64_t pinned = 1;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_etcd_packet_heartbeats_and_counts),
        cmocka_unit_test(test_etcd_packet_refuses_future_reading),
        cmocka_unit_test(test_etcd_packet_event_releases_the_handle),
    };
    return cmocka_run_group_tests_name("review 17: packets on etcd", tests, start_one, stop_cluster);
}
