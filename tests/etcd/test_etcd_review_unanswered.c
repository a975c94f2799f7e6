/*
 * test_etcd_review_unanswered.c: a reviewer's attacks on d58db81 (a
 * guarded write sent and never answered is noted on the session's track,
 * track_info.unanswered: the stats it carried, stats_set and the replica's
 * stats it was edited from; a record with this node's writer id that
 * matches the note is this node's own write: its stats become flushed, or
 * for a set the base is the stats the set was edited from). Against a real
 * etcd (etcd_harness.h), on 127.0.0.1.
 *
 * Linker wraps:
 * - etcd_call, for txns of the test's own thread (_Thread_local counters):
 *   lose: the txn reaches etcd and its answer is thrown away
 *   (AFSM_EUNAVAILABLE), as in test_etcd_lost_answer.c; refuse: the txn
 *   never leaves (AFSM_EUNAVAILABLE at once, as with etcd unreachable);
 *   hold: the txn reaches etcd, then the call waits at a hold gate until
 *   the test opens it, and its answer is thrown away (an answer that is
 *   slow to come back and then lost: a request timeout);
 * - etcd_stream: the watch of one engine (by its client) can be paused, as
 *   in test_etcd_review_writer.c.
 *
 * Each test fails on d58db81:
 * 1. a stats set whose txn never left (etcd unreachable), then the same
 *    set retried and answered: the stale note matches the answered set,
 *    whose base becomes the first attempt's "edited from": the additions
 *    made between the two calls survive the set (105 for a set to 100);
 * 2. two unanswered writes of one record in a row (a flush whose answer
 *    was lost after etcd committed it, then the next pass's, while the
 *    watch is down): the second note replaces the first, so the first's
 *    echo is taken for another writer's growth: counted twice (25 for 15).
 *    No other node is involved;
 * 3. a flush whose answer is slow and then lost, and meanwhile an update of
 *    the same session on another thread of the same node: the update's
 *    guard loses to the flush's commit and applies that record before the
 *    flush thread has noted it: taken for another writer's growth (20 for
 *    10; af83f23, matching on the writer id alone, counted 10);
 * 4. a stats set whose answer was lost that sets current_rtt_ms to 0: its
 *    echo on the writer keeps the old rtt (stats_growth cannot carry a
 *    gauge of 0), and the writer's next pass writes it back over the set
 *    (af83f23 set the stats as an answered set does).
 *
 * Shared state: the arming counters are the arming thread's own
 * (_Thread_local); the paused client is an atomic pointer; each hold gate
 * guards its own fields. Flusher threads are idle (a 10-minute period).
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

/* ---- 1. a set that never left, retried: the stale note ---------------------------- */

/* A has 7 packets (flushed). A stats set to 100 is refused before it is
 * sent (etcd unreachable: AFSM_EUNAVAILABLE, nothing written). 5 packets
 * are added. The caller retries the same set, which is answered: the set
 * came after the 5, so A and etcd must hold 100, and A's next pass must
 * leave etcd at 100. d58db81: the first attempt's note (set, 100, edited
 * from 7) is still on the track and matches the answered set's record,
 * so its base is 7, not "none": the 5 stay on top, 105 here, and the pass
 * writes 105. */
static void test_set_retried_after_a_refused_send_sets(void **state)
{
    (void)state;
    const char *prefix = "/ru1/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "retry", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7);
    afsm_update u = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 100}};
    refuse_txn_sends = 1;
    afsm_status first = afsm_session_update(a, &s.session_id, &u, NULL);
    assert_int_equal(refuse_txn_sends, 0);
    assert_int_equal(first, AFSM_EUNAVAILABLE);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7); /* never left */
    add_packets(a, &s.session_id, 5);
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_OK);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    if (here != 100 || there != 100)
        fail_msg("7, a set to 100 refused before sending, 5 added, the set retried and answered: %lld here, %lld in "
                 "etcd after a pass; want 100",
                 (long long)here, (long long)there);
}

/* ---- 2. two unanswered writes in a row -------------------------------------------- */

/* A has 10 unflushed packets; its watch is down (an etcd outage beginning).
 * A pass's flush commits (etcd: 10) but its answer is lost. 5 more are
 * added; the next pass's flush is sent and its answer lost too (its guard,
 * A's old revision, lost in etcd: nothing written). The watch comes back
 * and brings the first flush's record. A must hold 15 and a pass must
 * leave etcd at 15. d58db81: the second note (15) replaced the first (10),
 * so the first's echo is taken for another writer's 10: 25. */
static void test_second_unanswered_write_keeps_the_first_ones_note(void **state)
{
    (void)state;
    const char *prefix = "/ru2/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "twice", &s), AFSM_OK);
    add_packets(a, &s.session_id, 10);
    pause_watch(a, prefix);
    lose_txn_answers = 1;
    etcd_stats_flush(store_of(a));
    assert_int_equal(lose_txn_answers, 0);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 10);
    add_packets(a, &s.session_id, 5);
    lose_txn_answers = 1;
    etcd_stats_flush(store_of(a));
    assert_int_equal(lose_txn_answers, 0);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 10); /* its guard lost in etcd */
    resume_watch();
    wait_applied(a, prefix, &s.session_id);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    hold_gate_destroy(&watch_gate);
    if (here != 15 || there != 15)
        fail_msg("10 flushed (answer lost), 5 added, next flush unanswered too, then the first's echo: %lld here, "
                 "%lld in etcd after a pass; want 15",
                 (long long)here, (long long)there);
}

/* ---- 3. a concurrent guarded write applies the lost write before its note ---------- */

typedef struct flusher_arg {
    etcd_store *es;
    afsm_uuid id;
    afsm_status status;
} flusher_arg;

static void *flush_held(void *p)
{
    flusher_arg *f = p;
    hold_txn_answers = 1;
    int raced = 0;
    f->status = etcd_flush_one(f->es, &f->id, &raced);
    hold_txn_answers = 0;
    return NULL;
}

/* A has 10 unflushed packets. A flush (another thread) commits them, and
 * its answer is slow (held here), then lost. Meanwhile the application
 * activates the session on A: the update's guard, A's old revision, loses
 * to the flush; the update applies etcd's record (the flush's) and writes
 * again. Every packet was counted once: A and etcd must say 10. d58db81:
 * the flush's note comes only when its call returns, after the update
 * applied its record as another writer's 10 on top of A's own: 20 (and the
 * update wrote 20). af83f23 (the writer id alone) counted 10. */
static void test_concurrent_write_applies_a_lost_write_before_its_note(void **state)
{
    (void)state;
    const char *prefix = "/ru3/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "racing", &s), AFSM_OK);
    add_packets(a, &s.session_id, 10);
    hold_gate_init(&answer_gate);
    flusher_arg f = {.es = store_of(a), .id = s.session_id, .status = AFSM_OK};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, flush_held, &f), 0);
    WAIT_FOR(hold_gate_held(&answer_gate), 10000);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 10); /* committed, answer held */
    afsm_update u = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATE, .state = AFSM_STATE_ACTIVE};
    afsm_status updated = afsm_session_update(a, &s.session_id, &u, NULL);
    int64_t after_update = packets_in_etcd(prefix, &s.session_id, NULL);
    hold_gate_open(&answer_gate);
    pthread_join(t, NULL);
    assert_int_equal(f.status, AFSM_EUNAVAILABLE);
    assert_int_equal(updated, AFSM_OK);
    wait_applied(a, prefix, &s.session_id);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    hold_gate_destroy(&answer_gate);
    if (here != 10 || after_update != 10 || there != 10)
        fail_msg("10 flushed (answer held, then lost), an update on another thread meanwhile: %lld in etcd after the "
                 "update, %lld here, %lld in etcd after a pass; want 10",
                 (long long)after_update, (long long)here, (long long)there);
}

/* ---- 4. a lost set of the rtt gauge to 0 ------------------------------------------- */

/* A has 7 packets at an rtt of 30 ms (flushed). A stats set to {100
 * packets, rtt 0} commits and its answer is lost; the watch then brings it.
 * Nothing was measured since: A must read what was set (rtt 0), as after
 * an answered set, and its next pass must leave etcd at rtt 0. d58db81:
 * the echo's base is the set's "edited from" (rtt 30), the growth it adds
 * cannot say "rtt 0" (add_stats takes 0 as no sample), so A keeps 30 and
 * its pass writes 30 over the set. */
static void test_lost_set_of_rtt_to_zero_reaches_the_writer(void **state)
{
    (void)state;
    const char *prefix = "/ru4/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "gauge", &s), AFSM_OK);
    add_stats(a, &s.session_id, 7, 30);
    etcd_stats_flush(store_of(a));
    assert_int_equal(rtt_in_etcd(prefix, &s.session_id), 30);
    pause_watch(a, prefix);
    afsm_update u = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 100}};
    lose_txn_answers = 1;
    afsm_status st = afsm_session_update(a, &s.session_id, &u, NULL);
    assert_int_equal(lose_txn_answers, 0);
    resume_watch();
    assert_int_equal(st, AFSM_EUNAVAILABLE);
    assert_int_equal(rtt_in_etcd(prefix, &s.session_id), 0);
    wait_applied(a, prefix, &s.session_id);
    int64_t packets = packets_here(a, &s.session_id);
    uint32_t here = rtt_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    uint32_t there = rtt_in_etcd(prefix, &s.session_id);
    afsm_engine_close(a);
    hold_gate_destroy(&watch_gate);
    assert_int_equal(packets, 100);
    if (here != 0 || there != 0)
        fail_msg("rtt 30, a set to rtt 0 (answer lost) applied from its echo: rtt %u here, %u in etcd after a pass; "
                 "want 0",
                 here, there);
}

/* ---- setup ------------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_retried_after_a_refused_send_sets),
        cmocka_unit_test(test_second_unanswered_write_keeps_the_first_ones_note),
        cmocka_unit_test(test_concurrent_write_applies_a_lost_write_before_its_note),
        cmocka_unit_test(test_lost_set_of_rtt_to_zero_reaches_the_writer),
    };
    return cmocka_run_group_tests_name("etcd store: review of the unanswered note (d58db81)", tests, start_one,
                                       stop_cluster);
}
