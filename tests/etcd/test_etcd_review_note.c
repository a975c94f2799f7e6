/*
 * test_etcd_review_note.c: a reviewer's attacks on e6f71aa (before each
 * guarded write of a session's record is sent, the session's track notes
 * that a write of this node may be in etcd unapplied,
 * track_info.own_write_unknown, and for a stats set what it set and the
 * replica's stats it was edited from; any record applied clears the note;
 * a record of this node's writer id applied while it stands, other than as
 * a write's answer, is one of those writes). Against a real etcd
 * (etcd_harness.h), on 127.0.0.1.
 *
 * Linker wraps (etcd_fault_support.h): etcd_call, for txns of the arming
 * thread (refused before they leave, or answers thrown away after etcd
 * committed), and etcd_stream (one engine's watch paused).
 *
 * Each test fails on e6f71aa (the fixes: the commit after it):
 * 1. a write refused before it left (etcd unreachable for a moment) leaves
 *    the note standing, with nothing of this node's in etcd, until the
 *    next record is applied, however late that is (a session with nothing
 *    unflushed is not written by the passes). A raw put that keeps the
 *    writer field then is taken for this node's own write: its stats are
 *    ignored there and the writer's next pass undoes the edit. d58db81
 *    matched the stats the unanswered write carried and applied it
 *    (test_etcd_review_writer.c's 4, back under a stale note);
 * 2. the same stale note, then the record of an answered stats set
 *    rewritten unchanged (stats_set stays): taken for an own set whose
 *    note was replaced, ETCD_APPLY_RESET: the writer's unflushed additions
 *    are dropped (test_etcd_review_writer.c's 5, back);
 * 3. a lost stats set's echo forces the set path (update_replica's `set`):
 *    the merged stats are computed from the replica's copy read before the
 *    update and then set, so traffic that lands in between (the copy's
 *    stats are added lock-free, at any time) is overwritten. Made
 *    deterministic here: the replica's update adds 3 packets just before
 *    it sets, as a packet arriving at that moment would;
 * 4. two stats sets in a row whose answers are lost, the first committed
 *    (the second's guard lost in etcd): the first's echo no longer matches
 *    the note (the second replaced it) and sets the stats exactly, dropping
 *    what was added after the first set (100 for 105; d58db81 gave 105);
 * 5. (older than e6f71aa, found by reading) another node's set of the rtt
 *    gauge to 0, applied here as growth, which cannot carry a gauge to 0:
 *    this node's next pass wrote its old rtt back.
 *
 * Shared state: the arming counters are the arming thread's own
 * (_Thread_local); the paused client is an atomic pointer; the replica
 * update hook's fields are atomics. Flusher threads are idle (a 10-minute
 * period).
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

/* ---- 1. a stale note from a refused write, then a raw edit ------------------------- */

/* A has 10 packets, all flushed. An update of A's metadata is refused
 * before it leaves (nothing of A's in etcd that A has not applied). Later
 * an operator zeroes the record with a raw put that keeps the other fields
 * (writer A). A has nothing unflushed: it must show 0, and its next pass
 * must leave etcd at 0 (as test_etcd_review_writer.c's raw edit without
 * the refused update). e6f71aa: the refused update's note still stands, so
 * the edit is taken for one of A's unanswered writes: its stats become
 * "flushed" (0) while A keeps 10, and A's pass writes 10 back. */
static void test_raw_edit_after_a_refused_write_reaches_the_writer(void **state)
{
    (void)state;
    const char *prefix = "/rn1/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "edited", &s), AFSM_OK);
    add_packets(a, &s.session_id, 10);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 10);
    refused_update(a, &s.session_id);
    etcd_stats_flush(store_of(a)); /* nothing unflushed: no write, the note stays */
    rewrite_record_raw(prefix, &s.session_id, 0, -1);
    wait_applied(a, prefix, &s.session_id);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    if (here != 0 || there != 0)
        fail_msg("10 flushed, an update refused before sending, then the record zeroed in etcd (writer kept): %lld "
                 "on the writer, %lld in etcd after its pass; want 0",
                 (long long)here, (long long)there);
}

/* ---- 2. a stale note, then an own set's record rewritten unchanged ---------------- */

/* A sets the stats to 100 (answered: etcd's record says writer A,
 * stats_set), then 5 are added, unflushed. An update of A's metadata is
 * refused before it leaves. The record is rewritten unchanged (a new mod
 * revision, nothing else). Nothing was set: A must keep 105 and its next
 * pass must write 105. e6f71aa: under the refused update's note, the
 * rewrite is an own set that matches no set note: ETCD_APPLY_RESET, A goes
 * back to 100 and the 5 are lost. */
static void test_unchanged_rewrite_after_a_refused_write_keeps_additions(void **state)
{
    (void)state;
    const char *prefix = "/rn2/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "rewritten", &s), AFSM_OK);
    afsm_update u = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 100}};
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_OK);
    add_packets(a, &s.session_id, 5);
    refused_update(a, &s.session_id);
    rewrite_record_raw(prefix, &s.session_id, -1, -1);
    wait_applied(a, prefix, &s.session_id);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    if (here != 105 || there != 105)
        fail_msg("set to 100, 5 added, an update refused before sending, the record rewritten unchanged: %lld "
                 "here, %lld in etcd after a pass; want 105",
                 (long long)here, (long long)there);
}

/* ---- 3. traffic during a lost set's echo ------------------------------------------- */

/* The replica's ops, with an update that, armed for one session, first
 * adds hook_packets to it: a packet arriving between the apply's read of
 * the copy and its update (the data plane adds lock-free, at any time).
 * Any update of the session: the apply's add path calls it too, before
 * adding the record's growth. */
static const store_ops *hook_real;
static store_ops hook_ops;
static afsm_uuid hook_id;
static atomic_int hook_armed;
static atomic_int hook_fired;
static const uint64_t hook_packets = 3;

static afsm_status hooked_update(store *s, const afsm_uuid *id, const afsm_update *u, afsm_session_info *out)
{
    if (memcmp(id, &hook_id, sizeof(*id)) == 0 && atomic_exchange(&hook_armed, 0)) {
        afsm_stats d = {.packets_sent = hook_packets};
        assert_int_equal(hook_real->add_stats(s, id, &d), AFSM_OK);
        atomic_store(&hook_fired, 1);
    }
    return hook_real->update(s, id, u, out);
}

/* A has 7 packets, flushed. A stats set to 100 commits and its answer is
 * lost; 5 are added after the call returned. A's watch then brings the
 * set's echo, and 3 packets arrive while it is applied (between the
 * apply's read of A's copy and its update). Every packet after the set
 * counts: A must hold 108, and its next pass must write 108. e6f71aa: the
 * echo sets the stats to the set plus the additions it read (105),
 * overwriting the 3 (an add path, as for another node's growth, would
 * keep them, but cannot carry a gauge to 0). */
static void test_lost_set_echo_keeps_traffic_arriving_during_its_apply(void **state)
{
    (void)state;
    const char *prefix = "/rn3/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "traffic", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7);
    pause_watch(a, prefix);
    afsm_update u = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 100}};
    lose_txn_answers = 1;
    afsm_status st = afsm_session_update(a, &s.session_id, &u, NULL);
    assert_int_equal(lose_txn_answers, 0);
    assert_int_equal(st, AFSM_EUNAVAILABLE);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 100);
    add_packets(a, &s.session_id, 5);
    store *replica = store_of(a)->replica;
    hook_real = replica->ops;
    hook_ops = *hook_real;
    hook_ops.update = hooked_update;
    hook_id = s.session_id;
    atomic_store(&hook_fired, 0);
    atomic_store(&hook_armed, 1);
    replica->ops = &hook_ops;
    resume_watch();
    wait_applied(a, prefix, &s.session_id);
    atomic_store(&hook_armed, 0);
    replica->ops = hook_real;
    int fired = atomic_load(&hook_fired);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    hold_gate_destroy(&watch_gate);
    assert_true(fired);
    if (here != 108 || there != 108)
        fail_msg("7, a set to 100 (answer lost), 5 added, 3 arriving while its echo is applied: %lld here, %lld in "
                 "etcd after a pass; want 108",
                 (long long)here, (long long)there);
}

/* ---- 5. another node's set of the rtt gauge to 0 --------------------------------------- */

/* Found by reading (the review of e6f71aa), older than these changes: B sets
 * A's session's stats with rtt 0 (answered). A applied B's record by adding
 * its growth, which cannot carry a gauge to 0: A kept rtt 30 and its next
 * pass, seeing 30 against the 0 flushed, wrote 30 back over B's set. */
static void test_another_nodes_set_of_rtt_to_zero_holds(void **state)
{
    (void)state;
    const char *prefix = "/rn5/";
    afsm_engine *a = open_stats_engine(prefix, NULL), *b = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "gauge", &s), AFSM_OK);
    add_stats(a, &s.session_id, 7, 30);
    etcd_stats_flush(store_of(a));
    WAIT_FOR(packets_here(b, &s.session_id) == 7 && rtt_here(b, &s.session_id) == 30, 5000);
    afsm_update u = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 9}};
    assert_int_equal(afsm_session_update(b, &s.session_id, &u, NULL), AFSM_OK);
    wait_applied(a, prefix, &s.session_id);
    uint32_t here = rtt_here(a, &s.session_id);
    int64_t packets = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    uint32_t there = rtt_in_etcd(prefix, &s.session_id);
    afsm_engine_close(b);
    afsm_engine_close(a);
    if (here != 0 || there != 0 || packets != 9)
        fail_msg("rtt 30, another node's set to 9 packets and rtt 0: rtt %u here (%lld packets), %u in etcd after a "
                 "pass; want 0 (9 packets)",
                 here, (long long)packets, there);
}

/* ---- 4. two lost sets in a row, the first committed -------------------------------- */

/* A has 7 packets, flushed; its watch is down. A stats set to 100 commits
 * and its answer is lost. 5 are added. A set to 200 is sent and its answer
 * lost too (its guard, A's old revision, lost in etcd: nothing written).
 * The watch comes back with the first set's echo: etcd holds 100, and A
 * added 5 after that set was edited: A must hold 105, and its next pass
 * must leave etcd at 105. e6f71aa: the second set's note replaced the
 * first's, so the echo matches no set note and sets the stats exactly:
 * 100, the 5 lost (d58db81 took it for another writer's set and kept
 * them: 105). */
static void test_first_of_two_lost_sets_keeps_later_additions(void **state)
{
    (void)state;
    const char *prefix = "/rn4/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "twosets", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7);
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
        fail_msg("7, a set to 100 (committed, answer lost), 5 added, a set to 200 (guard lost, answer lost), then "
                 "the first's echo: %lld here, %lld in etcd after a pass; want 105",
                 (long long)here, (long long)there);
}

/* ---- setup ------------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_edit_after_a_refused_write_reaches_the_writer),
        cmocka_unit_test(test_unchanged_rewrite_after_a_refused_write_keeps_additions),
        cmocka_unit_test(test_lost_set_echo_keeps_traffic_arriving_during_its_apply),
        cmocka_unit_test(test_first_of_two_lost_sets_keeps_later_additions),
        cmocka_unit_test(test_another_nodes_set_of_rtt_to_zero_holds),
    };
    return cmocka_run_group_tests_name("etcd store: review of the own-write note (e6f71aa)", tests, start_one,
                                       stop_cluster);
}
