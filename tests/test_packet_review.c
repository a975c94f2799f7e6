/*
 * test_packet_review.c: review 17's attacks on afsm_handle_packet
 * (core/mem/dataplane.c), the packet call whose owner thread defers its
 * counters in the handle until the next advance or release.
 *
 * Each test states what a user relies on and why the deferral could break
 * it: a close that reports the final counters, an expiry that readers have
 * already seen, an owner thread that exits while its record is recycled,
 * folds by the reaper thread racing packets and releases, callbacks that
 * release, delete or advance from inside a packet's event.
 *
 * Virtual time and a manual reaper unless a test says otherwise; threads
 * synchronise through atomics and joins only (no sleeps).
 */
#include "test_support.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/epoch.h"

static virtual_clock vclock;

static uint64_t engine_now(afsm_engine *engine)
{
    uint64_t now = 0;
    assert_int_equal(afsm_engine_now(engine, &now), AFSM_OK);
    return now;
}

/* A flow ends: the application closes its session with an update and
 * reads the final counters from the update's copy (the copy a billing or
 * accounting record is made from). With afsm_handle_add_stats they are all
 * there; afsm.h says afsm_handle_packet's deferred counters are "never
 * lost". Closing (linger 0) removes the session, so no later advance can
 * make them visible: the close's copy is the last chance. */
static void test_close_copy_has_deferred_counts(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "close-final");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    afsm_stats delta = {.packets_received = 1, .bytes_received = 100};
    uint64_t now = engine_now(engine);
    for (int i = 0; i < 3; i++)
        assert_int_equal(afsm_handle_packet(h, now, &delta, NULL), AFSM_OK);

    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_CLOSED;
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, &out), AFSM_OK);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    /* Every packet that afsm_handle_packet accepted is in the final copy. */
    assert_int_equal(out.stats.packets_received, 3);
    assert_int_equal(out.stats.bytes_received, 300);
}

/* Expiry is final once readers see it (DESIGN.md: "a read of an expired
 * session reports it as expired even between ticks"); afsm_handle_heartbeat
 * past the deadline is AFSM_EEXPIRED. afsm_handle_packet takes a stale
 * reading (one per receive batch), and judges the deadline only against
 * that reading: a reading taken before the deadline, used after it, brings
 * back a session that afsm_session_get has already reported expired (and
 * that a caller may have acted on: dropped its flow, billed it). */
static void test_stale_reading_does_not_revive_expired(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "stale-revive");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    uint64_t created = engine_now(engine);
    uint64_t deadline = created + (uint64_t)s.timeout_ms * MS;
    uint64_t reading = deadline - 1 * MS; /* the batch's reading, just before the deadline */
    virtual_clock_set(&vclock, deadline + 1 * MS);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_EEXPIRED);
    assert_int_equal(afsm_handle_heartbeat(h, NULL), AFSM_EEXPIRED);

    afsm_stats delta = {.packets_received = 1};
    afsm_status st = afsm_handle_packet(h, reading, &delta, NULL);
    afsm_status after = afsm_session_get(engine, &s.session_id, &info);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    /* Seen expired, stays expired: the packet is refused as the heartbeat was. */
    assert_int_equal(after, AFSM_EEXPIRED);
    assert_int_equal(st, AFSM_EEXPIRED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_copy_has_deferred_counts),
        cmocka_unit_test(test_stale_reading_does_not_revive_expired),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
