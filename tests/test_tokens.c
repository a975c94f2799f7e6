/*
 * test_tokens.c: tokens, rotation, the key ring, key files, IP binding and
 * the per-user cap. Each token failure mode has its own status.
 */
#include "test_support.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static virtual_clock vclock;

static const uint8_t key_one[AFSM_KEY_BYTES] = "0123456789abcdef0123456789abcde";
static const uint8_t key_two[AFSM_KEY_BYTES] = "fedcba9876543210fedcba987654321";

static afsm_engine *open_with_key(const uint8_t *key, uint32_t key_id)
{
    afsm_config cfg;
    virtual_config(&vclock, &cfg);
    cfg.default_timeout_ms = 60000;
    cfg.key = key;
    cfg.key_len = key != NULL ? AFSM_KEY_BYTES : 0;
    cfg.key_id = key_id;
    afsm_engine *engine;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static void issue(afsm_engine *engine, const afsm_uuid *id, uint32_t flags, char token[AFSM_TOKEN_SIZE])
{
    size_t len = 0;
    assert_int_equal(afsm_token_issue(engine, id, flags, token, AFSM_TOKEN_SIZE, &len), AFSM_OK);
    assert_int_equal(len, strlen(token));
    assert_true(len <= 120);
}

static afsm_status validate(afsm_engine *engine, const char *token, const char *ip)
{
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    return afsm_token_validate(engine, token, strlen(token), ip, ip != NULL ? strlen(ip) : 0, &out);
}

static void test_token_round_trip_and_format(void **state)
{
    (void)state;
    afsm_engine *engine = open_with_key(key_one, 7);
    afsm_session_info s = create_session(engine, "u");
    char token[AFSM_TOKEN_SIZE];
    issue(engine, &s.session_id, 0, token);
    assert_memory_equal(token, "v1.", 3);
    for (const char *p = token + 3; *p; p++)
        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *p));
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_token_validate(engine, token, strlen(token), NULL, 0, &out), AFSM_OK);
    assert_memory_equal(&out.session_id, &s.session_id, 16);
    char bound[AFSM_TOKEN_SIZE];
    issue(engine, &s.session_id, AFSM_TOKEN_BIND_IP, bound);
    assert_true(strlen(bound) > strlen(token)); /* carries the address */
    char small[10];
    assert_int_equal(afsm_token_issue(engine, &s.session_id, 0, small, sizeof(small), NULL), AFSM_EBUFFER);
    assert_int_equal(afsm_token_issue(engine, &s.session_id, 0x80, token, sizeof(token), NULL), AFSM_EINVAL);
    afsm_engine_close(engine);
}

static void test_each_failure_has_its_own_status(void **state)
{
    (void)state;
    afsm_engine *engine = open_with_key(key_one, 1);
    afsm_session_info s = create_session(engine, "u");
    char token[AFSM_TOKEN_SIZE];
    issue(engine, &s.session_id, 0, token);
    size_t len = strlen(token);

    /* Truncated, garbled, not a token. */
    char cut[AFSM_TOKEN_SIZE];
    memcpy(cut, token, len - 5);
    cut[len - 5] = '\0';
    assert_int_equal(validate(engine, cut, NULL), AFSM_ETOKENFORMAT);
    assert_int_equal(validate(engine, "v1.!!!!", NULL), AFSM_ETOKENFORMAT);
    assert_int_equal(validate(engine, "", NULL), AFSM_ETOKENFORMAT);
    assert_int_equal(validate(engine, "v2.AAAA", NULL), AFSM_ETOKENFORMAT);

    /* Forged: one character of the ciphertext changed, anywhere. */
    for (size_t at = 3 + 4; at < len; at += 7) {
        char forged[AFSM_TOKEN_SIZE];
        memcpy(forged, token, len + 1);
        forged[at] = forged[at] == 'A' ? 'B' : 'A';
        afsm_status st = validate(engine, forged, NULL);
        /* The first characters carry the key id: changing them names
         * another key; past them, authentication fails. */
        assert_true(st == AFSM_ETOKEN || st == AFSM_ETOKENKEY || st == AFSM_ETOKENFORMAT);
        if (at > 8)
            assert_int_equal(st, AFSM_ETOKEN);
    }

    /* Sealed by a key this engine never had (same id, other bytes). */
    afsm_engine *other = open_with_key(key_two, 1);
    afsm_session_info o = create_session(other, "u");
    char foreign[AFSM_TOKEN_SIZE];
    issue(other, &o.session_id, 0, foreign);
    assert_int_equal(validate(engine, foreign, NULL), AFSM_ETOKEN);
    /* Sealed under a key id this engine never had. */
    afsm_engine *other_id = open_with_key(key_two, 9);
    afsm_session_info o2 = create_session(other_id, "u");
    issue(other_id, &o2.session_id, 0, foreign);
    assert_int_equal(validate(engine, foreign, NULL), AFSM_ETOKENKEY);
    afsm_engine_close(other);
    afsm_engine_close(other_id);

    /* Rotated: the old token is revoked, the new one works. */
    char fresh[AFSM_TOKEN_SIZE];
    size_t fresh_len;
    assert_int_equal(afsm_token_rotate(engine, &s.session_id, 0, fresh, sizeof(fresh), &fresh_len), AFSM_OK);
    assert_int_equal(validate(engine, token, NULL), AFSM_EREVOKED);
    assert_int_equal(validate(engine, fresh, NULL), AFSM_OK);

    /* IP binding. */
    char bound[AFSM_TOKEN_SIZE];
    issue(engine, &s.session_id, AFSM_TOKEN_BIND_IP, bound);
    assert_int_equal(validate(engine, bound, "192.168.1.100"), AFSM_OK);
    assert_int_equal(validate(engine, bound, "::ffff:192.168.1.100"), AFSM_OK); /* the same address */
    assert_int_equal(validate(engine, bound, "192.168.1.101"), AFSM_EIPMISMATCH);
    assert_int_equal(validate(engine, bound, NULL), AFSM_EIPMISMATCH);
    assert_int_equal(validate(engine, bound, "not-an-ip"), AFSM_EIP);

    /* Expired, then gone. */
    virtual_clock_set(&vclock, 1061 * SEC);
    assert_int_equal(validate(engine, fresh, NULL), AFSM_EEXPIRED);
    afsm_engine_advance(engine, 1061 * SEC, NULL);
    assert_int_equal(validate(engine, fresh, NULL), AFSM_ENOTFOUND);

    /* Closed (with a linger, so it is still there). */
    afsm_engine_close(engine);
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.close_linger_ms = 10000;
    cfg.reaper = AFSM_REAPER_MANUAL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    s = create_session(engine, "u");
    issue(engine, &s.session_id, 0, token);
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_CLOSED;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    assert_int_equal(validate(engine, token, NULL), AFSM_ECLOSED);
    assert_int_equal(afsm_token_rotate(engine, &s.session_id, 0, fresh, sizeof(fresh), NULL), AFSM_ECLOSED);

    /* Every outcome was counted under its own result. */
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.token_validations[AFSM_TOKEN_CLOSED], 1);
    afsm_engine_close(engine);
}

static void test_key_rotation(void **state)
{
    (void)state;
    afsm_engine *engine = open_with_key(key_one, 1);
    afsm_session_info s = create_session(engine, "u");
    char old_token[AFSM_TOKEN_SIZE], new_token[AFSM_TOKEN_SIZE];
    issue(engine, &s.session_id, 0, old_token);
    assert_int_equal(afsm_key_add(engine, 2, key_two, AFSM_KEY_BYTES), AFSM_OK);
    assert_int_equal(afsm_key_add(engine, 2, key_two, AFSM_KEY_BYTES), AFSM_EKEYEXISTS);
    assert_int_equal(afsm_key_add(engine, 0, key_two, AFSM_KEY_BYTES), AFSM_EINVAL);
    assert_int_equal(afsm_key_add(engine, 3, key_two, 16), AFSM_EINVAL);
    assert_int_equal(afsm_key_use(engine, 2), AFSM_OK);
    assert_int_equal(afsm_key_use(engine, 5), AFSM_EKEYNOTFOUND);
    issue(engine, &s.session_id, 0, new_token);
    /* Both keys open while both are in the ring. */
    assert_int_equal(validate(engine, old_token, NULL), AFSM_OK);
    assert_int_equal(validate(engine, new_token, NULL), AFSM_OK);
    assert_int_equal(afsm_key_remove(engine, 2), AFSM_EKEYINUSE); /* the current key */
    assert_int_equal(afsm_key_remove(engine, 1), AFSM_OK);
    assert_int_equal(validate(engine, old_token, NULL), AFSM_EKEYREMOVED);
    assert_int_equal(validate(engine, new_token, NULL), AFSM_OK);
    assert_int_equal(afsm_key_remove(engine, 1), AFSM_EKEYNOTFOUND);
    afsm_engine_close(engine);
}

static void write_key_file(const char *path, mode_t mode, size_t size)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, key_one, size), (ssize_t)size);
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_key_files(void **state)
{
    (void)state;
    char path[] = "/tmp/afsm-key-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.key_file = path;
    cfg.key_file_len = strlen(path);
    cfg.key_id = 4;
    afsm_engine *engine = NULL;

    write_key_file(path, 0644, AFSM_KEY_BYTES); /* readable by others */
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_EKEYFILE);
    write_key_file(path, 0600, 31); /* wrong size */
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_EKEYFILE);
    write_key_file(path, 0640, AFSM_KEY_BYTES); /* readable by the group */
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_EKEYFILE);
    write_key_file(path, 0400, AFSM_KEY_BYTES);
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);

    /* A token survives a restart with the same key file and a restored
     * session (what the daemon's snapshots do). */
    afsm_session_info s = create_session(engine, "u");
    char token[AFSM_TOKEN_SIZE];
    issue(engine, &s.session_id, 0, token);
    afsm_session_info copy = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &copy), AFSM_OK);
    afsm_engine_close(engine);
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    assert_int_equal(validate(engine, token, NULL), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_restore(engine, &copy, NULL, 0), AFSM_OK);
    assert_int_equal(afsm_session_restore(engine, &copy, NULL, 0), AFSM_EEXISTS);
    assert_int_equal(validate(engine, token, NULL), AFSM_OK);
    assert_int_equal(afsm_key_add_file(engine, 5, "/nonexistent/key", 16), AFSM_EKEYFILE);
    afsm_engine_close(engine);
    unlink(path);
}

/* ---- per-user cap ------------------------------------------------------- */

static afsm_engine *open_capped(uint32_t cap, uint32_t policy, void (*on_event)(void *, const afsm_event *), void *ctx)
{
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.max_sessions_per_user = cap;
    cfg.limit_policy = policy;
    cfg.on_event = on_event;
    cfg.event_ctx = ctx;
    cfg.shard_count = 16;
    afsm_engine *engine;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static uint64_t user_total(afsm_engine *engine, const char *user)
{
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.user_id = user;
    f.user_id_len = strlen(user);
    f.limit = 1;
    afsm_session_info one = AFSM_SESSION_INFO_INIT;
    size_t n;
    uint64_t total;
    assert_int_equal(afsm_session_list(engine, &f, &one, 1, &n, &total, NULL), AFSM_OK);
    return total;
}

static void test_cap_rejects(void **state)
{
    (void)state;
    afsm_engine *engine = open_capped(3, AFSM_LIMIT_REJECT, NULL, NULL);
    for (int i = 0; i < 3; i++)
        create_session(engine, "capped");
    afsm_uuid conn;
    afsm_create_options o = make_options("capped", "1.1.1.1", &conn);
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_ELIMIT);
    create_session(engine, "other");
    assert_int_equal(user_total(engine, "capped"), 3);
    afsm_engine_close(engine);
}

typedef struct eviction_log {
    _Atomic int evicted;
    _Atomic int created;
} eviction_log;

static void count_evictions(void *ctx, const afsm_event *ev)
{
    eviction_log *log = ctx;
    if (ev->type == AFSM_EVENT_DELETED && ev->reason_len == 7 && memcmp(ev->reason, "evicted", 7) == 0)
        atomic_fetch_add(&log->evicted, 1);
    if (ev->type == AFSM_EVENT_CREATED)
        atomic_fetch_add(&log->created, 1);
}

static void test_cap_evicts_oldest(void **state)
{
    (void)state;
    eviction_log log = {0};
    afsm_engine *engine = open_capped(2, AFSM_LIMIT_EVICT_OLDEST, count_evictions, &log);
    afsm_session_info a = create_session(engine, "u");
    afsm_session_info b = create_session(engine, "u");
    afsm_session_info c = create_session(engine, "u");
    afsm_session_info got = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &a.session_id, &got), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_get(engine, &b.session_id, &got), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &c.session_id, &got), AFSM_OK);
    assert_int_equal(atomic_load(&log.evicted), 1);
    afsm_metrics m = AFSM_METRICS_INIT;
    afsm_metrics_snapshot(engine, &m);
    assert_int_equal(m.deleted_total[AFSM_DELETE_EVICTED], 1);
    /* A cap of one: the user's entry is replaced, never emptied to zero. */
    afsm_engine_close(engine);
    engine = open_capped(1, AFSM_LIMIT_EVICT_OLDEST, count_evictions, &log);
    for (int i = 0; i < 5; i++)
        create_session(engine, "solo");
    assert_int_equal(user_total(engine, "solo"), 1);
    afsm_engine_close(engine);
}

#define CAP      4
#define CREATORS 8

typedef struct cap_race {
    afsm_engine *engine;
    _Atomic int stop;
    _Atomic int over_cap_seen;
    uint32_t policy;
} cap_race;

static void *creator(void *arg)
{
    cap_race *r = arg;
    for (int i = 0; i < 300; i++) {
        afsm_uuid conn;
        afsm_create_options o = make_options("contended", "10.0.0.1", &conn);
        afsm_status st = afsm_session_create(r->engine, &o, NULL);
        assert_true(st == AFSM_OK || (r->policy == AFSM_LIMIT_REJECT && st == AFSM_ELIMIT));
        if (r->policy == AFSM_LIMIT_REJECT && st == AFSM_OK && i % 3 == 0) {
            /* Make room now and then so creates keep racing for slots. */
            afsm_list_filter f = AFSM_LIST_FILTER_INIT;
            f.user_id = "contended";
            f.user_id_len = 9;
            f.limit = 1;
            afsm_session_info one = AFSM_SESSION_INFO_INIT;
            size_t n;
            uint64_t total;
            if (afsm_session_list(r->engine, &f, &one, 1, &n, &total, NULL) == AFSM_OK && n == 1)
                afsm_session_delete(r->engine, &one.session_id, NULL, 0);
        }
    }
    return NULL;
}

static void *cap_reader(void *arg)
{
    cap_race *r = arg;
    while (!atomic_load(&r->stop))
        if (user_total(r->engine, "contended") > CAP)
            atomic_store(&r->over_cap_seen, 1);
    return NULL;
}

static void cap_holds_under_concurrency(uint32_t policy)
{
    static cap_race r;
    memset(&r, 0, sizeof(r));
    r.policy = policy;
    r.engine = open_capped(CAP, policy, NULL, NULL);
    pthread_t creators[CREATORS], reader;
    assert_int_equal(pthread_create(&reader, NULL, cap_reader, &r), 0);
    for (int i = 0; i < CREATORS; i++)
        assert_int_equal(pthread_create(&creators[i], NULL, creator, &r), 0);
    for (int i = 0; i < CREATORS; i++)
        pthread_join(creators[i], NULL);
    atomic_store(&r.stop, 1);
    pthread_join(reader, NULL);
    assert_int_equal(atomic_load(&r.over_cap_seen), 0);
    assert_true(user_total(r.engine, "contended") <= CAP);
    afsm_counts counts;
    afsm_engine_counts(r.engine, &counts);
    assert_true(counts.total <= CAP);
    afsm_engine_close(r.engine);
}

static void test_cap_holds_under_concurrency_evict(void **state)
{
    (void)state;
    cap_holds_under_concurrency(AFSM_LIMIT_EVICT_OLDEST);
}

static void test_cap_holds_under_concurrency_reject(void **state)
{
    (void)state;
    cap_holds_under_concurrency(AFSM_LIMIT_REJECT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_round_trip_and_format),
        cmocka_unit_test(test_each_failure_has_its_own_status),
        cmocka_unit_test(test_key_rotation),
        cmocka_unit_test(test_key_files),
        cmocka_unit_test(test_cap_rejects),
        cmocka_unit_test(test_cap_evicts_oldest),
        cmocka_unit_test(test_cap_holds_under_concurrency_evict),
        cmocka_unit_test(test_cap_holds_under_concurrency_reject),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
