/*
 * test_etcd_review_list.c: a reviewer's attacks on bcb9797 (the notes of
 * this node's unanswered guarded writes kept in a list of up to
 * TRACK_NOTES_MAX beside the track entry, matched exactly, oldest first;
 * past the cap the oldest goes). Against a real etcd (etcd_harness.h), on
 * 127.0.0.1.
 *
 * Linker wraps (etcd_fault_support.h): etcd_call, for txns of the arming
 * thread (refused before they leave, or answers thrown away after etcd
 * committed), and etcd_stream (one engine's watch paused).
 *
 * Each test fails on bcb9797:
 * 1. nine stats passes of one session with their answers lost while the
 *    watch is away, the first committed (the others lose its guard in
 *    etcd): the ninth note pushes out the first, the one write that can be
 *    in etcd (the others share its guard revision), and the first's echo
 *    is taken for another writer's growth: counted twice (10 for 9);
 * 2. a stats set refused before it left, retried after more traffic (the
 *    same stats, edited from a later copy), the retry committed and its
 *    answer lost: the echo matches the refused set's note first (oldest
 *    first), whose `from` is older, so the traffic between the two edits,
 *    which the committed set discarded, stays on top (108 for 105).
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
#include "etcd/track.h"
#include "etcd_test_support.h"
#include "etcd_fault_support.h"

/* ---- 1. more unanswered writes than notes, the first committed ------------------------- */

/* A creates a session (0 packets in etcd); its watch is down. Nine times:
 * 1 packet added, a stats pass whose answer is lost. The first pass
 * commits 1 (guard: the create's revision); the eight after it lose that
 * guard in etcd (nothing written). The watch comes back with the first
 * pass's echo: it is A's own write (1 flushed), A holds 9 packets, and its
 * next pass must leave 9 in etcd. bcb9797: the ninth note drops the first
 * (TRACK_NOTES_MAX 8, oldest dropped), the echo matches none of the eight
 * left (2..9, none of which can be in etcd) and is applied as another
 * writer's record on top of flushed 0: 1 + 9 = 10 here, and 10 in etcd. */
static void test_ninth_unanswered_pass_drops_the_committed_note(void **state)
{
    (void)state;
    const char *prefix = "/rl1/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "ninepasses", &s), AFSM_OK);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 0);
    pause_watch(a, prefix);
    for (int i = 0; i < 9; i++) { /* one past bcb9797's 8 notes */
        add_packets(a, &s.session_id, 1);
        lose_txn_answers = 1;
        (void)etcd_stats_flush(store_of(a));
        assert_int_equal(lose_txn_answers, 0);
        assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 1); /* the first only */
    }
    resume_watch();
    wait_applied(a, prefix, &s.session_id);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    hold_gate_destroy(&watch_gate);
    if (here != 9 || there != 9)
        fail_msg("9 packets added, one per stats pass, every answer lost, the first pass committed (1 in etcd), "
                 "the rest lost its guard: %lld here, %lld in etcd after a pass once the watch applied the first's "
                 "echo; want 9",
                 (long long)here, (long long)there);
}

/* ---- 2. a refused set retried after traffic, the retry committed unanswered ------------- */

/* A has 7 packets, flushed; its watch is down. A stats set to 100 is
 * refused before it leaves (edited from 7). 3 packets arrive (10). The
 * caller retries the same set (edited from 10): etcd commits 100, the
 * answer is lost. 5 more arrive (15). The watch comes back with the set's
 * echo: the committed set discarded all 10 it was edited from, so A must
 * hold 105, and its next pass leave 105 in etcd (as with the answer: 100,
 * then 5). bcb9797: both notes carry 100 (set); the oldest, the refused
 * one, matches first, base 7: 100 + (15 - 7) = 108. */
static void test_retried_set_matches_the_refused_sets_note(void **state)
{
    (void)state;
    const char *prefix = "/rl2/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "retriedset", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7);
    pause_watch(a, prefix);
    afsm_update set = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 100}};
    refuse_txn_sends = 1;
    assert_int_equal(afsm_session_update(a, &s.session_id, &set, NULL), AFSM_EUNAVAILABLE);
    assert_int_equal(refuse_txn_sends, 0);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7); /* never left */
    add_packets(a, &s.session_id, 3);
    lose_txn_answers = 1;
    assert_int_equal(afsm_session_update(a, &s.session_id, &set, NULL), AFSM_EUNAVAILABLE);
    assert_int_equal(lose_txn_answers, 0);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 100); /* committed */
    add_packets(a, &s.session_id, 5);
    resume_watch();
    wait_applied(a, prefix, &s.session_id);
    int64_t here = packets_here(a, &s.session_id);
    etcd_stats_flush(store_of(a));
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    hold_gate_destroy(&watch_gate);
    if (here != 105 || there != 105)
        fail_msg("7 flushed, a set to 100 refused before sending, 3 added, the same set retried (committed, answer "
                 "lost), 5 added, then its echo: %lld here, %lld in etcd after a pass; want 105",
                 (long long)here, (long long)there);
}

/* ---- setup ------------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ninth_unanswered_pass_drops_the_committed_note),
        cmocka_unit_test(test_retried_set_matches_the_refused_sets_note),
    };
    return cmocka_run_group_tests_name("etcd store: review of the own-write notes list (bcb9797)", tests, start_one,
                                       stop_cluster);
}
