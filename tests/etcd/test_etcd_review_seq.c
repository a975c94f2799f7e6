/*
 * test_etcd_review_seq.c: a reviewer's attacks on 9c37008 (every guarded
 * write numbered, seq; a record of this node's writer id is its own only
 * with a number noted since the last record applied; stats sets noted up to
 * TRACK_SET_NOTES_MAX, a ninth not sent until a record of the session is
 * applied). Against a real etcd (etcd_harness.h), on 127.0.0.1.
 *
 * Linker wraps (etcd_fault_support.h): etcd_call, for txns of the arming
 * thread (refused before they leave), and etcd_stream (unused here but
 * wrapped by the shared support file).
 *
 * Each test fails on 9c37008:
 * 1. eight stats sets refused before they left (etcd unreachable for a
 *    moment: a caller retrying), then etcd reachable again, its record
 *    still at the revision this node applied, the watch live, a stats pass
 *    run: the next set is refused (AFSM_EUNAVAILABLE, "unanswered") and
 *    stays refused for as long as nothing else writes the session. None
 *    of the eight can be in etcd (they never left, and etcd's record is
 *    still the one they were guarded on), yet nothing ever drops their
 *    notes: no record of the session comes, and a pass has nothing to
 *    write.
 *
 * Shared state: the arming counters are the arming thread's own
 * (_Thread_local). Flusher threads are idle (a 10-minute period).
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

/* ---- 1. sets refused before they left block every later set ----------------------------- */

/* A has a session with 7 packets, flushed. Its caller sets the stats to
 * 100 eight times while etcd is unreachable: each refused before it leaves
 * (AFSM_EUNAVAILABLE, nothing written). etcd is back: its record is still
 * at the revision A applied, A's watch is up, a stats pass finds nothing to
 * write. The caller's next set must be sent (etcd answers, nothing is
 * unanswered). 9c37008: the eight refused sets' notes fill
 * TRACK_SET_NOTES_MAX, and only a record of the session applied drops
 * them; none comes, so every set is refused, "unanswered", indefinitely. */
static void test_refused_sets_block_later_sets_with_etcd_back(void **state)
{
    (void)state;
    const char *prefix = "/rs1/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "refusedsets", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    etcd_stats_flush(store_of(a));
    int64_t mod_revision = 0;
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, &mod_revision), 7);
    afsm_update set = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 100}};
    for (int i = 0; i < TRACK_SET_NOTES_MAX; i++) {
        refuse_txn_sends = 1;
        assert_int_equal(afsm_session_update(a, &s.session_id, &set, NULL), AFSM_EUNAVAILABLE);
        assert_int_equal(refuse_txn_sends, 0); /* refused, never left */
    }
    /* etcd reachable again; nothing of the eight is in etcd. */
    int64_t now_revision = 0;
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, &now_revision), 7);
    assert_true(now_revision == mod_revision);
    assert_true(applied_at_least(store_of(a), &s.session_id, mod_revision));
    etcd_stats_flush(store_of(a)); /* nothing to write */
    afsm_status st = afsm_session_update(a, &s.session_id, &set, NULL);
    char detail[256] = "";
    if (st != AFSM_OK && afsm_error_detail() != NULL)
        snprintf(detail, sizeof(detail), "%s", afsm_error_detail());
    afsm_status again = afsm_session_update(a, &s.session_id, &set, NULL);
    int64_t there = packets_in_etcd(prefix, &s.session_id, NULL);
    afsm_engine_close(a);
    if (st != AFSM_OK || there != 100)
        fail_msg("7 flushed, %d stats sets to 100 refused before they left (etcd unreachable), etcd back with the "
                 "record still at the revision applied here, the watch live, a pass run: the next set gave %s "
                 "(\"%s\"), a second try %s, %lld in etcd; want AFSM_OK and 100",
                 TRACK_SET_NOTES_MAX, afsm_status_name(st), detail, afsm_status_name(again), (long long)there);
}

/* ---- setup ------------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_sets_block_later_sets_with_etcd_back),
    };
    return cmocka_run_group_tests_name("etcd store: review of numbered writes (9c37008)", tests, start_one,
                                       stop_cluster);
}
