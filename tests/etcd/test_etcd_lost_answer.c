/*
 * test_etcd_lost_answer.c: writes whose answer is lost after etcd
 * committed them (a connection dropped after the request went out), against
 * a real etcd (etcd_harness.h), on 127.0.0.1.
 *
 * The client's etcd_call is wrapped by the linker: armed, it lets the call
 * reach etcd, then throws the answer away and reports the connection lost
 * (AFSM_EUNAVAILABLE), as libcurl does when the peer goes away before
 * answering. The writer then applies nothing; its watch brings the record,
 * which carries the stats the writer had. Before records said which node
 * wrote them, that echo was taken for another node's additions: this
 * node's unflushed stats were counted twice, here and in etcd after the
 * next flush (core/etcd/README.md, "Stats").
 *
 * Shared state: the arming counter is the test thread's own
 * (_Thread_local); the flusher thread is idle (a 10-minute period) and
 * every pass here runs on the test thread.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <string.h>

#include "afsm.h"
#include "engine.h"
#include "etcd/etcd_store.h"
#include "etcd/keys.h"
#include "etcd_test_support.h"
#include "etcd_fault_support.h"

/* ---- 1. a grouped flush ----------------------------------------------------------- */

#define GROUP_SESSIONS 5

/* Five sessions with 10 packets each; the pass's one txn reaches etcd and
 * its answer is lost. etcd holds 10 each; so must this node, once its
 * watch brings the write (20 before), and the next pass, after 5 more,
 * writes 15 (25 before), which the other node sees. */
static void test_flush_group_answer_lost_counts_once(void **state)
{
    (void)state;
    const char *prefix = "/la1/";
    afsm_engine *a = open_stats_engine(prefix, NULL), *b = open_stats_engine(prefix, NULL);
    afsm_session_info s[GROUP_SESSIONS];
    for (int i = 0; i < GROUP_SESSIONS; i++) {
        assert_int_equal(create(a, "lost", &s[i]), AFSM_OK);
        add_packets(a, &s[i].session_id, 10);
    }
    lose_txn_answers = 1;
    etcd_stats_flush(store_of(a));
    assert_int_equal(lose_txn_answers, 0); /* the pass sent its txn, and heard nothing */
    for (int i = 0; i < GROUP_SESSIONS; i++) {
        assert_int_equal(packets_in_etcd(prefix, &s[i].session_id, NULL), 10);
        wait_applied(a, prefix, &s[i].session_id);
        assert_int_equal(packets_here(a, &s[i].session_id), 10);
        add_packets(a, &s[i].session_id, 5);
    }
    etcd_stats_flush(store_of(a));
    for (int i = 0; i < GROUP_SESSIONS; i++) {
        assert_int_equal(packets_in_etcd(prefix, &s[i].session_id, NULL), 15);
        assert_int_equal(packets_here(a, &s[i].session_id), 15);
        WAIT_FOR(packets_here(b, &s[i].session_id) == 15, 5000);
    }
    afsm_engine_close(b);
    afsm_engine_close(a);
}

/* ---- 2. a flush alone, an update, a stats set ---------------------------------------- */

/* etcd_flush_one (the path of a member that lost its guard in a group, and
 * of close's last pass): the same as a group's. */
static void test_flush_one_answer_lost_counts_once(void **state)
{
    (void)state;
    const char *prefix = "/la2/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "lost", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    lose_txn_answers = 1;
    int raced = 0;
    assert_int_equal(etcd_flush_one(store_of(a), &s.session_id, &raced), AFSM_EUNAVAILABLE);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7);
    wait_applied(a, prefix, &s.session_id);
    assert_int_equal(packets_here(a, &s.session_id), 7);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7);
    afsm_engine_close(a);
}

/* An update (here metadata) rewrites the whole record, stats included: with
 * its answer lost, the 7 unflushed packets it carried are this node's too. */
static void test_update_answer_lost_counts_stats_once(void **state)
{
    (void)state;
    const char *prefix = "/la3/";
    afsm_engine *a = open_stats_engine(prefix, NULL), *b = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "lost", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    afsm_kv kv = {.key = "k", .key_len = 1, .value = "v", .value_len = 1};
    afsm_update u = {
        .version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_METADATA_MERGE, .metadata = &kv, .metadata_count = 1};
    lose_txn_answers = 1;
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_EUNAVAILABLE);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 7);
    wait_applied(a, prefix, &s.session_id);
    assert_int_equal(packets_here(a, &s.session_id), 7);
    add_packets(a, &s.session_id, 1);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 8);
    WAIT_FOR(packets_here(b, &s.session_id) == 8, 5000);
    afsm_engine_close(b);
    afsm_engine_close(a);
}

/* A stats set (AFSM_UPDATE_STATS) with its answer lost: etcd holds the set
 * value, and so must this node once the watch brings it; neither this
 * node's 7 packets from before the set (107 as another node's growth) nor
 * its old total (7: the set dropped here, then undone in etcd by the next
 * flush) may stay. */
static void test_stats_set_answer_lost_sets_here(void **state)
{
    (void)state;
    const char *prefix = "/la4/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "lost", &s), AFSM_OK);
    add_packets(a, &s.session_id, 7);
    afsm_update u = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS, .stats = {.packets_sent = 100}};
    lose_txn_answers = 1;
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_EUNAVAILABLE);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 100);
    wait_applied(a, prefix, &s.session_id);
    assert_int_equal(packets_here(a, &s.session_id), 100);
    add_packets(a, &s.session_id, 5);
    etcd_stats_flush(store_of(a));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 105);
    afsm_engine_close(a);
}

/* ---- 3. another node's records stay another node's -------------------------------- */

/* b's flush of its own additions, its answer heard: a applies it as b's
 * (5 from a, flushed, and 3 from b: 8 on both), and a record written by a
 * node before a restart is not the restarted node's own. */
static void test_other_writers_and_restarts_are_not_own(void **state)
{
    (void)state;
    const char *prefix = "/la5/";
    afsm_engine *a = open_stats_engine(prefix, NULL), *b = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "other", &s), AFSM_OK);
    add_packets(a, &s.session_id, 5);
    etcd_stats_flush(store_of(a));
    WAIT_FOR(packets_here(b, &s.session_id) == 5, 5000);
    add_packets(b, &s.session_id, 3);
    etcd_stats_flush(store_of(b));
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 8);
    WAIT_FOR(packets_here(a, &s.session_id) == 8, 5000);
    assert_int_not_equal(store_of(a)->writer_id, store_of(b)->writer_id);
    /* a again, as a new open on the same prefix: it loads 8 (the record
     * a's old open wrote holds b's 3 and a's 5), then b adds 2. */
    afsm_engine_close(a);
    a = open_stats_engine(prefix, NULL);
    assert_int_equal(packets_here(a, &s.session_id), 8);
    add_packets(b, &s.session_id, 2);
    etcd_stats_flush(store_of(b));
    WAIT_FOR(packets_here(a, &s.session_id) == 10, 5000);
    afsm_engine_close(b);
    afsm_engine_close(a);
}

/* ---- 4. the record's fields ---------------------------------------------------------- */

/* Decodes text into *rec; returns its status. */
static afsm_status decode(const char *text, keys_record *rec)
{
    json_object *holder = NULL;
    afsm_status st = keys_record_decode(text, strlen(text), rec, &holder);
    json_object_put(holder);
    return st;
}

#define RECORD_HEAD                                                                                                    \
    "{\"v\":1,\"id\":\"0190a0b0-0000-7000-8000-000000000001\",\"conn\":\"0190a0b0-0000-7000-8000-000000000002\","      \
    "\"user\":\"u\",\"ip\":\"10.0.0.1\",\"port\":1,\"state\":1,\"timeout_ms\":1000,\"created_ns\":1,\"active_ns\":1,"  \
    "\"gen\":1,\"lease\":1,\"slot\":-1,\"stats\":{\"packets_sent\":0,\"packets_received\":0,\"bytes_sent\":0,"         \
    "\"bytes_received\":0,\"retransmissions\":0,\"rtt_ms\":0},\"meta\":{}"

/* writer, seq and stats_set are optional (records of older writers have
 * none) but of their type when present: anything else is bad data,
 * skipped. Written back, they read the same. */
static void test_writer_seq_and_stats_set_fields(void **state)
{
    (void)state;
    keys_record rec;
    assert_int_equal(decode(RECORD_HEAD "}", &rec), AFSM_OK);
    assert_true(rec.writer == 0 && rec.seq == 0 && rec.stats_set == 0);
    assert_int_equal(
        decode(RECORD_HEAD ",\"writer\":9223372036854775807,\"seq\":9223372036854775807,\"stats_set\":true}", &rec),
        AFSM_OK);
    assert_true(rec.writer == INT64_MAX && rec.seq == INT64_MAX && rec.stats_set == 1);
    static const char *const bad[] = {
        RECORD_HEAD ",\"writer\":0}",       RECORD_HEAD ",\"writer\":-5}",
        RECORD_HEAD ",\"writer\":\"7\"}",   RECORD_HEAD ",\"writer\":1.5}",
        RECORD_HEAD ",\"seq\":0}",          RECORD_HEAD ",\"seq\":-1}",
        RECORD_HEAD ",\"seq\":\"3\"}",      RECORD_HEAD ",\"seq\":9223372036854775808}",
        RECORD_HEAD ",\"stats_set\":1}",    RECORD_HEAD ",\"stats_set\":\"true\"}",
        RECORD_HEAD ",\"stats_set\":null}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (decode(bad[i], &rec) != AFSM_EINVAL)
            fail_msg("decoded: %s", bad[i]);
    json_object *holder = NULL;
    const char *good = RECORD_HEAD ",\"writer\":42,\"seq\":7,\"stats_set\":true}";
    assert_int_equal(keys_record_decode(good, strlen(good), &rec, &holder), AFSM_OK);
    json_object *again = keys_record_encode(&rec);
    assert_non_null(again);
    keys_record back;
    assert_int_equal(decode(json_object_to_json_string_ext(again, JSON_C_TO_STRING_PLAIN), &back), AFSM_OK);
    assert_true(back.writer == 42 && back.seq == 7 && back.stats_set == 1);
    json_object_put(again);
    json_object_put(holder);
}

/* ---- 5. unanswered sets are bounded --------------------------------------------------- */

/* A stats set's note keeps what it was edited from; TRACK_SET_NOTES_MAX of
 * them may wait for an answer. One more set is not sent (its answer lost
 * too, its record could not be told from another writer's): it fails with
 * AFSM_EUNAVAILABLE and a detail saying why, and etcd keeps what it had.
 * Once a record is applied (the watch is back with the first set's echo),
 * sets are sent again. */
static void test_sets_past_the_noted_are_not_sent(void **state)
{
    (void)state;
    const char *prefix = "/la6/";
    afsm_engine *a = open_stats_engine(prefix, NULL);
    afsm_session_info s;
    assert_int_equal(create(a, "sets", &s), AFSM_OK);
    pause_watch(a, prefix);
    afsm_update u = {.version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_STATS};
    for (int i = 0; i < TRACK_SET_NOTES_MAX; i++) {
        u.stats.packets_sent = 100 + (uint64_t)i;
        lose_txn_answers = 1;
        assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_EUNAVAILABLE);
        assert_int_equal(lose_txn_answers, 0); /* sent */
    }
    int64_t revision = etcd_revision();
    u.stats.packets_sent = 500;
    lose_txn_answers = 1;
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_EUNAVAILABLE);
    assert_int_equal(lose_txn_answers, 1); /* never sent */
    lose_txn_answers = 0;
    assert_non_null(strstr(afsm_error_detail(), "unanswered"));
    assert_true(etcd_revision() == revision);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 100); /* the first set; the rest lost its guard */
    resume_watch();
    wait_applied(a, prefix, &s.session_id);
    assert_int_equal(packets_here(a, &s.session_id), 100);
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_OK);
    assert_int_equal(packets_in_etcd(prefix, &s.session_id, NULL), 500);
    afsm_engine_close(a);
    hold_gate_destroy(&watch_gate);
}

/* ---- setup ------------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_flush_group_answer_lost_counts_once),
        cmocka_unit_test(test_flush_one_answer_lost_counts_once),
        cmocka_unit_test(test_update_answer_lost_counts_stats_once),
        cmocka_unit_test(test_stats_set_answer_lost_sets_here),
        cmocka_unit_test(test_other_writers_and_restarts_are_not_own),
        cmocka_unit_test(test_writer_seq_and_stats_set_fields),
        cmocka_unit_test(test_sets_past_the_noted_are_not_sent),
    };
    return cmocka_run_group_tests_name("etcd store: answers lost after a commit", one, start_one, stop_cluster);
}
