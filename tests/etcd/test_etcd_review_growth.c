/*
 * test_etcd_review_growth.c: a reviewer's attacks on 49a2183 (a record of
 * this node's writer id applied while the own-write note stands is taken
 * for one of its unanswered writes only if this node could have built it:
 * stats between `flushed` and the replica's copy, or for a set the last set
 * noted; growth past base is added atomically, the merged stats are set
 * only when the record went below base or brought the rtt gauge to 0,
 * gauge_zeroed). Against a real etcd (etcd_harness.h), on 127.0.0.1.
 *
 * Linker wraps (etcd_fault_support.h): etcd_call, for txns of the arming
 * thread (refused before they leave, or answers thrown away after etcd
 * committed), and etcd_stream (one engine's watch paused).
 *
 * Each test fails on 49a2183:
 * 1. two stats sets in a row whose answers are lost, the first committed,
 *    with additions here unflushed when the first was edited: the first's
 *    echo, no longer matching the note (the second replaced it), is taken
 *    for another writer's set, which keeps every unflushed addition on
 *    top, those the set discarded included (107 for a set to 100 and 5
 *    added after it: the 2 from before the set counted);
 * 2. the range check ignores the rtt gauge: under a stale note (an update
 *    refused before it left), a raw edit of the rtt alone, writer kept, is
 *    a record this node "could have built" (its counters are flushed's):
 *    its rtt becomes `flushed` while the copy keeps the old one, and the
 *    writer's next pass writes the old rtt back over the edit;
 * 3. gauge_zeroed sends another node's set of the rtt to 0 that raised the
 *    counters to the set path: merged_stats adds this node's unflushed
 *    additions to the record's counters without saturating, so a counter
 *    set near 2^64-1 wraps to a small number (3 for 2^64-1), here and,
 *    after the next pass, in etcd. The add path it replaced saturated;
 * 4. the same wrap, older than 49a2183: another node's set that lowered
 *    one counter (stats_grew false: the set path) and raised another near
 *    2^64-1.
 *
 * Shared state: the arming counters are the arming thread's own
 * (_Thread_local); the paused client is an atomic pointer. Flusher threads
 * are idle (a 10-minute period).
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

/* ---- helpers ---------------------------------------------------------------------------- */

/* id's stats on e (the session must be there). */
static afsm_stats stats_here(afsm_engine *e, const afsm_uuid *id)
{
    afsm_session_info s;
    assert_int_equal(get(e, id, &s), AFSM_OK);
    return s.stats;
}

/* wait_applied for records whose packets_sent is past INT64_MAX (which
 * packets_in_etcd cannot report). */
static void wait_applied_any(afsm_engine *e, const char *prefix, const afsm_uuid *id)
{
    afsm_stats stats;
    int64_t revision = 0;
    assert_true(stats_in_etcd(prefix, id, &stats, &revision));
    WAIT_FOR(applied_at_least(store_of(e), id, revision), 10000);
}

/* ---- 1. the first of two lost sets, additions unflushed before it --------------------- */

/* A has 7 packets flushed and 2 more unflushed (9 here); its watch is
 * down. A stats set to 100 commits and its answer is lost (the 2 are
 * discarded by it). 5 are added. A set to 200 is sent and its answer lost
 * too (its guard, A's old revision, lost in etcd: nothing written). The
 * watch comes back with the first set's echo: etcd holds 100, A added 5
 * after that set was edited: A must hold 105 (as with the answer: the set
 * applied exactly, then 5), and its next pass must leave etcd at 105.
 * 49a2183: the echo, matching no set note, is another writer's set
 * (base: flushed 7), so all 7 unflushed (the 2 the set discarded
 * included) stay on top: 107. test_etcd_review_note.c's 4 has nothing
 * unflushed at the first set's edit, where both rules agree. */
static void test_first_of_two_lost_sets_drops_what_it_discarded(void **state)
{
    (void)state;
    const char *prefix = "/rg1/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "twosets", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7);
    add_packets(a, &s.session_id, 2); /* unflushed: the set discards them */
    pause_watch(a, prefix);
    afsm_update first = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 100}};
    lose_txn_answers = 1;
    assert_int_equal(afsm_session_update(a, &s.session_id, &first, NULL), AFSM_EUNAVAILABLE);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 100);
    add_packets(a, &s.session_id, 5);
    afsm_update second = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 200}};
    lose_txn_answers = 1;
    assert_int_equal(afsm_session_update(a, &s.session_id, &second, NULL), AFSM_EUNAVAILABLE);
    assert_int_equal(lose_txn_answers, 0);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 100); /* its guard lost in etcd */
    resume_watch();
    wait_applied(a, prefix, &s.session_id);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    hold_gate_destroy(&watch_gate);
    if (here != 105 || there != 105)
        fail_msg("7 flushed, 2 unflushed, a set to 100 (committed, answer lost), 5 added, a set to 200 (guard lost, "
                 "answer lost), then the first's echo: %lld here, %lld in etcd after a pass; want 105",
                 (long long)here, (long long)there);
}

/* ---- 2. a stale note, then a raw edit of the rtt alone ----------------------------------- */

/* A has 10 packets and rtt 30, all flushed. An update of A's metadata is
 * refused before it leaves (the note stands, nothing of A's in etcd that A
 * has not applied). An operator puts the record back with rtt 50, the
 * other fields kept (writer A). A could never have built rtt 50: the edit
 * is another writer's, and A (nothing unflushed, no sample of its own)
 * must show 50 and its next pass leave 50 in etcd, as it does for an edit
 * of the counters outside [flushed, copy]. 49a2183: the range check looks
 * at the counters only, so the edit is taken for A's unanswered write:
 * flushed says 50, the copy keeps 30, and A's pass writes 30 back. */
static void test_raw_rtt_edit_after_a_refused_write_reaches_the_writer(void **state)
{
    (void)state;
    const char *prefix = "/rg2/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "rttedit", &s), AFSM_OK);
    add_stats(a, &s.session_id, 10, 30);
    etcd_stats_flush(store_of(a));
    assert_int_equal(rtt_in_etcd(prefix, &s.session_id), 30);
    refused_update(a, &s.session_id);
    rewrite_record_raw(prefix, &s.session_id, -1, 50);
    wait_applied(a, prefix, &s.session_id);
    uint32_t here = rtt_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    uint32_t there = rtt_in_etcd(prefix, &s.session_id);
    int64_t packets = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    if (here != 50 || there != 50 || packets != 10)
        fail_msg("rtt 30 flushed, an update refused before sending, then the record's rtt edited to 50 in etcd "
                 "(writer kept): rtt %u on the writer, %u in etcd after its pass (%lld packets); want 50 (10)",
                 here, there, (long long)packets);
}

/* ---- 3. another node's set of rtt 0 raising a counter near the top ---------------------- */

/* A has 7 packets and rtt 30, flushed, and 5 more unflushed (12 here). B
 * (which has applied A's record) sets the stats to 2^64-2 packets, rtt 0
 * (answered). A applies B's set: etcd's 2^64-2 plus A's 5 saturate at
 * 2^64-1 (as the counters do everywhere, and as the add path of an
 * addition does), rtt 0. A must hold 2^64-1 and rtt 0, and its next pass
 * must write that. 49a2183: gauge_zeroed takes the set path, whose
 * merged_stats adds the 5 without saturating: 3 packets here, and A's
 * pass writes 3 over B's set (before 49a2183 the add path saturated,
 * though it kept rtt 30). */
static void test_set_of_rtt_zero_near_the_top_saturates(void **state)
{
    (void)state;
    const char *prefix = "/rg3/";
    afsm_engine *a = open_stats_engine(prefix, NULL), *b = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "top", &s), AFSM_OK);
    add_stats(a, &s.session_id, 7, 30);
    etcd_stats_flush(store_of(a));
    WAIT_FOR(packets_here(b, &s.session_id) == 7 && rtt_here(b, &s.session_id) == 30, 5000);
    add_packets(a, &s.session_id, 5);
    afsm_update u = {
        .version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = UINT64_MAX - 1}};
    assert_int_equal(afsm_session_update(b, &s.session_id, &u, NULL), AFSM_OK);
    wait_applied_any(a, prefix, &s.session_id);
    afsm_stats here = stats_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    afsm_stats there;
    assert_true(stats_in_etcd(prefix, &s.session_id, &there, NULL));
    afsm_engine_close(b);
    afsm_engine_close(a);
    if (here.packets_sent != UINT64_MAX || here.current_rtt_ms != 0 || there.packets_sent != UINT64_MAX)
        fail_msg("7 flushed and 5 unflushed, rtt 30, another node's set to 2^64-2 packets and rtt 0: %llu packets "
                 "(rtt %u) here, %llu in etcd after a pass; want 2^64-1 = %llu (rtt 0)",
                 (unsigned long long)here.packets_sent, here.current_rtt_ms, (unsigned long long)there.packets_sent,
                 (unsigned long long)UINT64_MAX);
}

/* ---- 4. another node's lowering set raising another counter near the top ----------------- */

/* The same through stats_grew: A has 7 packets sent and 4 received,
 * flushed, and 5 more sent unflushed. B sets 2^64-2 sent, 0 received
 * (received went below: the set path). A must hold 2^64-1 sent (saturated)
 * and 0 received. merged_stats wraps: 3 sent, and A's pass writes 3. Older
 * than 49a2183 (the set path of a lowering set), the same arithmetic. */
static void test_lowering_set_near_the_top_saturates(void **state)
{
    (void)state;
    const char *prefix = "/rg4/";
    afsm_engine *a = open_stats_engine(prefix, NULL), *b = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "lower", &s), AFSM_OK);
    afsm_stats d = {.packets_sent = 7, .packets_received = 4};
    assert_int_equal(afsm_session_add_stats(a, &s.session_id, &d), AFSM_OK);
    etcd_stats_flush(store_of(a));
    WAIT_FOR(packets_here(b, &s.session_id) == 7, 5000);
    add_packets(a, &s.session_id, 5);
    afsm_update u = {
        .version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = UINT64_MAX - 1}};
    assert_int_equal(afsm_session_update(b, &s.session_id, &u, NULL), AFSM_OK);
    wait_applied_any(a, prefix, &s.session_id);
    afsm_stats here = stats_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    afsm_stats there;
    assert_true(stats_in_etcd(prefix, &s.session_id, &there, NULL));
    afsm_engine_close(b);
    afsm_engine_close(a);
    if (here.packets_sent != UINT64_MAX || here.packets_received != 0 || there.packets_sent != UINT64_MAX)
        fail_msg("7 sent and 4 received flushed, 5 sent unflushed, another node's set to 2^64-2 sent and 0 "
                 "received: %llu sent (%llu received) here, %llu in etcd after a pass; want 2^64-1 = %llu (0)",
                 (unsigned long long)here.packets_sent, (unsigned long long)here.packets_received,
                 (unsigned long long)there.packets_sent, (unsigned long long)UINT64_MAX);
}

/* ---- setup ------------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_of_two_lost_sets_drops_what_it_discarded),
        cmocka_unit_test(test_raw_rtt_edit_after_a_refused_write_reaches_the_writer),
        cmocka_unit_test(test_set_of_rtt_zero_near_the_top_saturates),
        cmocka_unit_test(test_lowering_set_near_the_top_saturates),
    };
    return cmocka_run_group_tests_name("etcd store: review of own records and added growth (49a2183)", tests, start_one,
                                       stop_cluster);
}
