/*
 * test_metrics.c: a scripted workload in virtual time whose every counter
 * and histogram count is asserted exactly; the Prometheus text checked by
 * promtool; the log lines the old service wrote.
 */
#include "test_support.h"

#include <stdlib.h>
#include <unistd.h>

static virtual_clock vclock;

typedef struct log_capture {
    int created;
    int heartbeat;
    int cleaned;
    char last_count[16];
    char last_remaining[32];
    char created_user[32];
} log_capture;

static const char *field(const afsm_log_field *fields, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(fields[i].key, key) == 0)
            return fields[i].value;
    return NULL;
}

static void capture_log(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t n)
{
    log_capture *log = ctx;
    if (strcmp(message, "session created") == 0) {
        assert_int_equal(level, AFSM_LOG_INFO);
        assert_non_null(field(fields, n, "session_id"));
        assert_non_null(field(fields, n, "connection_id"));
        assert_string_equal(field(fields, n, "client_ip"), "192.168.1.100");
        snprintf(log->created_user, sizeof(log->created_user), "%s", field(fields, n, "user_id"));
        log->created++;
    } else if (strcmp(message, "session heartbeat") == 0) {
        assert_int_equal(level, AFSM_LOG_DEBUG);
        snprintf(log->last_remaining, sizeof(log->last_remaining), "%s", field(fields, n, "remaining"));
        log->heartbeat++;
    } else if (strcmp(message, "expired sessions cleaned up") == 0) {
        assert_int_equal(level, AFSM_LOG_INFO);
        snprintf(log->last_count, sizeof(log->last_count), "%s", field(fields, n, "count"));
        log->cleaned++;
    }
}

static afsm_engine *open_engine(log_capture *log, int log_level, int metrics_off)
{
    afsm_config cfg;
    virtual_config(&vclock, &cfg);
    cfg.default_timeout_ms = 60000;
    cfg.idle_timeout_ms = 20000;
    cfg.on_log = capture_log;
    cfg.log_ctx = log;
    cfg.log_level = (uint32_t)log_level;
    cfg.disable_metrics = (uint32_t)metrics_off;
    cfg.shard_count = 4;
    afsm_engine *engine;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static void step(afsm_engine *engine, uint64_t seconds)
{
    virtual_clock_set(&vclock, virtual_clock_read(&vclock) + seconds * SEC);
    assert_int_equal(afsm_engine_advance(engine, virtual_clock_read(&vclock), NULL), AFSM_OK);
}

static void set_state(afsm_engine *engine, const afsm_uuid *id, uint32_t state)
{
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = state;
    assert_int_equal(afsm_session_update(engine, id, &u, NULL), AFSM_OK);
}

static void test_scripted_workload_counts_exactly(void **state)
{
    (void)state;
    log_capture log = {0};
    afsm_engine *engine = open_engine(&log, AFSM_LOG_DEBUG, 0);
    afsm_session_info s[8];
    for (int i = 0; i < 8; i++)
        s[i] = create_session(engine, i < 6 ? "alice" : "bob");
    /* t=1000: 8 created. s0..s3 active. */
    for (int i = 0; i < 4; i++)
        set_state(engine, &s[i].session_id, AFSM_STATE_ACTIVE);
    /* t=1010: s0 deleted after 10 s (bucket le=15). */
    step(engine, 10);
    assert_int_equal(afsm_session_delete(engine, &s[0].session_id, "bye", 3), AFSM_OK);
    /* s1 heartbeats, s2 gets traffic: both stay active; s3 goes idle at 1020. */
    step(engine, 9); /* t=1019 */
    assert_int_equal(afsm_session_heartbeat(engine, &s[1].session_id, NULL), AFSM_OK);
    afsm_stats delta = {1, 0, 0, 0, 0, 0, 0};
    assert_int_equal(afsm_session_add_stats(engine, &s[2].session_id, &delta), AFSM_OK);
    step(engine, 2); /* t=1021 */
    afsm_counts counts;
    afsm_engine_counts(engine, &counts);
    assert_int_equal(counts.by_state[AFSM_STATE_IDLE], 1);
    /* s3 wakes with a heartbeat. */
    assert_int_equal(afsm_session_heartbeat(engine, &s[3].session_id, NULL), AFSM_OK);
    /* s4 closed at 1021 (21 s: bucket le=30). */
    set_state(engine, &s[4].session_id, AFSM_STATE_CLOSED);
    /* bob logs out everywhere: s6, s7 (21 s). */
    size_t deleted;
    assert_int_equal(afsm_session_delete_by_user(engine, "bob", 3, NULL, 0, &deleted), AFSM_OK);
    assert_int_equal(deleted, 2);
    /* Tokens: one good, one malformed, one forged. */
    char token[AFSM_TOKEN_SIZE];
    assert_int_equal(afsm_token_issue(engine, &s[5].session_id, 0, token, sizeof(token), NULL), AFSM_OK);
    assert_int_equal(afsm_token_validate(engine, token, strlen(token), NULL, 0, NULL), AFSM_OK);
    assert_int_equal(afsm_token_validate(engine, "v1.x", 4, NULL, 0, NULL), AFSM_ETOKENFORMAT);
    token[40] = token[40] == 'A' ? 'B' : 'A';
    assert_int_equal(afsm_token_validate(engine, token, strlen(token), NULL, 0, NULL), AFSM_ETOKEN);
    /* t=1061: s5 (last active 1000) expires at 1060 after 60 s (le=60).
     * s1 (heartbeat 1019), s2 (active since 1000, traffic only), s3
     * (heartbeat 1021) expire later. */
    step(engine, 40);
    /* s2: traffic does not extend expiry, so it expired at 1060 too. */
    step(engine, 30); /* t=1091: s1 (1079) expires; s3 (1081) expires */

    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.created_total, 8);
    assert_int_equal(m.sessions, 0);
    assert_int_equal(m.deleted_total[AFSM_DELETE_REQUESTED], 1);
    assert_int_equal(m.deleted_total[AFSM_DELETE_CLOSED], 1);
    assert_int_equal(m.deleted_total[AFSM_DELETE_USER], 2);
    assert_int_equal(m.deleted_total[AFSM_DELETE_EVICTED], 0);
    assert_int_equal(m.deleted_total[AFSM_DELETE_EXPIRED], 4);
    assert_int_equal(m.expired_total, 4);
    /* Idle: s3 at 1020; s1 and s2 at 1039, s3 again at 1041 (20 s without
     * a heartbeat or traffic). Woken: s3 by its heartbeat at 1021. */
    assert_int_equal(m.idle_transitions_total, 4);
    assert_int_equal(m.wake_transitions_total, 1);
    assert_int_equal(m.token_validations[AFSM_TOKEN_OK], 1);
    assert_int_equal(m.token_validations[AFSM_TOKEN_MALFORMED], 1);
    assert_int_equal(m.token_validations[AFSM_TOKEN_FORGED], 1);
    assert_int_equal(m.duration_count, 8);
    /* Lifetimes: 10 (le 15); 21, 21, 21 (le 30); 60, 60 (le 60); 79, 81 (le 300). */
    assert_int_equal(m.duration_buckets[2], 1);
    assert_int_equal(m.duration_buckets[3], 3);
    assert_int_equal(m.duration_buckets[4], 2);
    assert_int_equal(m.duration_buckets[5], 2);
    assert_true(m.duration_sum_seconds > 352.9 && m.duration_sum_seconds < 353.1);
    assert_int_equal(m.shard_count, 4);
    assert_int_equal(m.reaper_lag_ns, 0);

    /* The log lines, as the old service wrote them. */
    assert_int_equal(log.created, 8);
    assert_string_equal(log.created_user, "bob");
    assert_int_equal(log.heartbeat, 2);
    assert_string_equal(log.last_remaining, "1m0s");
    assert_int_equal(log.cleaned, 2); /* once per batch, not per session */
    assert_string_equal(log.last_count, "2");
    afsm_engine_close(engine);
}

static void test_metrics_off_and_log_level(void **state)
{
    (void)state;
    log_capture log = {0};
    afsm_engine *engine = open_engine(&log, AFSM_LOG_INFO, 1);
    afsm_session_info s = create_session(engine, "u");
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_OK);
    assert_int_equal(log.created, 1);
    assert_int_equal(log.heartbeat, 0); /* debug is below the level */
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.created_total, 0);
    assert_int_equal(m.sessions, 1); /* the gauges are kept regardless */
    m.version = 99;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_EVERSION);
    afsm_engine_close(engine);
}

static void test_prometheus_text_passes_promtool(void **state)
{
    (void)state;
    log_capture log = {0};
    afsm_engine *engine = open_engine(&log, AFSM_LOG_ERROR, 0);
    afsm_session_info s = create_session(engine, "u");
    afsm_session_delete(engine, &s.session_id, NULL, 0);
    create_session(engine, "v");

    size_t needed = 0;
    assert_int_equal(afsm_metrics_write_prometheus(engine, NULL, 0, &needed), AFSM_EBUFFER);
    assert_true(needed > 100);
    char *text = malloc(needed);
    assert_non_null(text);
    char small[64];
    assert_int_equal(afsm_metrics_write_prometheus(engine, small, sizeof(small), NULL), AFSM_EBUFFER);
    assert_int_equal(afsm_metrics_write_prometheus(engine, text, needed, NULL), AFSM_OK);
    assert_int_equal(strlen(text) + 1, needed);
    assert_non_null(strstr(text, "# TYPE session_total untyped\nsession_total 1\n"));
    assert_non_null(strstr(text, "session_created_total 2\n"));
    assert_non_null(strstr(text, "session_deleted_total{reason=\"requested\"} 1\n"));
    assert_non_null(strstr(text, "session_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
    assert_non_null(strstr(text, "# TYPE session_duration_seconds histogram\n"));

    char path[] = "/tmp/afsm-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, needed - 1), (ssize_t)(needed - 1));
    close(fd);
    char command[128];
    snprintf(command, sizeof(command), "promtool check metrics < %s", path);
    int rc = system(command);
    unlink(path);
    assert_int_equal(rc, 0); /* promtool is installed by the test command */
    free(text);
    afsm_engine_close(engine);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scripted_workload_counts_exactly),
        cmocka_unit_test(test_metrics_off_and_log_level),
        cmocka_unit_test(test_prometheus_text_passes_promtool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
