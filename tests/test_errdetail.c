/*
 * test_errdetail.c: afsm_error_detail(), the per-thread text that says which
 * argument a call rejected, what was wrong with it and the limit.
 *
 * Each case makes one bad call and compares the whole text, so a detail
 * that loses its argument name or its limit fails here. Also: a success
 * clears it, and another thread's failure does not show through.
 */
#define _DEFAULT_SOURCE /* mkdtemp */
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <fcntl.h>

#include "test_support.h"

static afsm_engine *open_plain(void)
{
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static afsm_status create(afsm_engine *engine, const char *user, size_t user_len, uint32_t port, uint64_t timeout_ms,
                          const afsm_kv *kv, size_t kv_count)
{
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = user;
    o.user_id_len = user_len;
    o.client_ip = "10.0.0.1";
    o.client_ip_len = 8;
    o.client_port = port;
    o.timeout_ms = timeout_ms;
    o.metadata = kv;
    o.metadata_count = kv_count;
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    return afsm_session_create(engine, &o, &out);
}

static void test_create_details(void **state)
{
    (void)state;
    afsm_engine *engine = open_plain();
    assert_int_equal(create(engine, "", 0, 1, 0, NULL, 0), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "user_id: 0 bytes, must be 1..256");
    assert_int_equal(create(engine, "a\0b", 3, 1, 0, NULL, 0), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "user_id: NUL byte at offset 1, must contain none");
    char long_user[300];
    memset(long_user, 'u', sizeof(long_user));
    assert_int_equal(create(engine, long_user, sizeof(long_user), 1, 0, NULL, 0), AFSM_ETOOLONG);
    assert_string_equal(afsm_error_detail(), "user_id: 300 bytes, must be 1..256");
    assert_int_equal(create(engine, "u", 1, 65536, 0, NULL, 0), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "client_port: 65536, must be 0..65535");
    assert_int_equal(create(engine, "u", 1, 1, UINT64_C(4294967296), NULL, 0), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(),
                        "timeout_ms: 4294967296, must be at most 4294967295 (~49.7 days; 0: the default)");
    afsm_kv empty_key = {"", 0, "v", 1};
    assert_int_equal(create(engine, "u", 1, 1, 0, &empty_key, 1), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "metadata[0].key: empty, must be 1..255 bytes");
    afsm_kv nul_value = {"device", 6, "a\0b", 3};
    assert_int_equal(create(engine, "u", 1, 1, 0, &nul_value, 1), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "metadata \"device\": value contains a NUL byte, must contain none");

    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = "u";
    o.user_id_len = 1;
    o.client_ip = "10.0.0.300";
    o.client_ip_len = 10;
    afsm_uuid_v7(&o.connection_id);
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EIP);
    assert_string_equal(afsm_error_detail(), "client_ip: \"10.0.0.300\", must be an IPv4 or IPv6 address");

    /* A success clears the detail; so does a failure that needs none. */
    assert_int_equal(create(engine, "u", 1, 1, 0, NULL, 0), AFSM_OK);
    assert_string_equal(afsm_error_detail(), "");
    assert_int_equal(create(engine, "", 0, 1, 0, NULL, 0), AFSM_EINVAL);
    afsm_uuid nobody;
    afsm_uuid_v7(&nobody);
    uint64_t remaining;
    assert_int_equal(afsm_session_heartbeat(engine, &nobody, &remaining), AFSM_ENOTFOUND);
    assert_string_equal(afsm_error_detail(), "");
    /* The pure helpers leave it alone, so a caller can format its message. */
    assert_int_equal(create(engine, "", 0, 1, 0, NULL, 0), AFSM_EINVAL);
    (void)afsm_strerror(AFSM_EINVAL);
    (void)afsm_status_name(AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "user_id: 0 bytes, must be 1..256");
    afsm_engine_close(engine);
}

static void test_list_update_and_timeout_details(void **state)
{
    (void)state;
    afsm_engine *engine = open_plain();
    afsm_session_info out[2] = {AFSM_SESSION_INFO_INIT, AFSM_SESSION_INFO_INIT};
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    size_t count;
    uint64_t total;
    f.limit = 0;
    assert_int_equal(afsm_session_list(engine, &f, out, 2, &count, &total, NULL), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "filter.limit: 0, must be 1..10000");
    f.limit = 10001;
    assert_int_equal(afsm_session_list(engine, &f, out, 2, &count, &total, NULL), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "filter.limit: 10001, must be 1..10000");

    assert_int_equal(create(engine, "u", 1, 1, 0, NULL, 0), AFSM_OK);
    f.limit = 1;
    assert_int_equal(afsm_session_list(engine, &f, out, 2, &count, &total, NULL), AFSM_OK);
    afsm_update up = AFSM_UPDATE_INIT;
    up.fields = AFSM_UPDATE_STATE;
    up.state = 99;
    assert_int_equal(afsm_session_update(engine, &out[0].session_id, &up, NULL), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "update.state: 99, must be 1..5 (connecting..closed)");

    assert_int_equal(afsm_engine_set_default_timeout(engine, 0), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "timeout_ms: 0, must be 1..4294967295 (~49.7 days)");
    afsm_engine_close(engine);
}

static void test_config_details(void **state)
{
    (void)state;
    afsm_engine *engine = NULL;
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.shard_count = 3;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(),
                        "config.shard_count: 3, must be a power of two up to 4096 (0: the default)");
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.capacity_hint = UINT64_MAX; /* once wrapped the per-shard table sizes */
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(),
                        "config.capacity_hint: 18446744073709551615, must be at most 1073741824 (0: 1024)");
    assert_null(engine);
    static const uint8_t key[AFSM_KEY_BYTES];
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.key = key;
    cfg.key_len = 31;
    cfg.key_id = 1;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "config.key: 31 bytes, must be 32");
    cfg.key_len = AFSM_KEY_BYTES;
    cfg.key_file = "/nonexistent";
    cfg.key_file_len = strlen(cfg.key_file);
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "config.key and config.key_file: both set, give one first key");
    cfg.key_file = NULL;
    cfg.key_file_len = 0;
    cfg.key_id = 0;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "config.key_id: 0, must be 1..65535 with a key or key_file");
}

static void write_key_file(const char *path, mode_t mode, size_t size)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    uint8_t byte = 7;
    for (size_t i = 0; i < size; i++)
        assert_int_equal(write(fd, &byte, 1), 1);
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_key_file_details(void **state)
{
    (void)state;
    char dir[] = "/tmp/afsm-detail-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64], expected[160];
    snprintf(path, sizeof(path), "%s/k", dir);
    afsm_engine *engine = open_plain();

    assert_int_equal(afsm_key_add_file(engine, 2, path, strlen(path)), AFSM_EKEYFILE);
    snprintf(expected, sizeof(expected), "key file %s: does not exist", path);
    assert_string_equal(afsm_error_detail(), expected);

    write_key_file(path, 0644, AFSM_KEY_BYTES);
    assert_int_equal(afsm_key_add_file(engine, 2, path, strlen(path)), AFSM_EKEYFILE);
    snprintf(expected, sizeof(expected),
             "key file %s: mode 0644, must not be readable or writable by group or others (chmod 600)", path);
    assert_string_equal(afsm_error_detail(), expected);

    write_key_file(path, 0600, 31);
    assert_int_equal(afsm_key_add_file(engine, 2, path, strlen(path)), AFSM_EKEYFILE);
    snprintf(expected, sizeof(expected), "key file %s: 31 bytes, must be exactly 32", path);
    assert_string_equal(afsm_error_detail(), expected);

    write_key_file(path, 0600, AFSM_KEY_BYTES);
    assert_int_equal(afsm_key_add_file(engine, 2, path, strlen(path)), AFSM_OK);
    assert_string_equal(afsm_error_detail(), "");

    /* The key ring's own statuses, each with its text. */
    static const uint8_t key[AFSM_KEY_BYTES];
    assert_int_equal(afsm_key_add(engine, 2, key, sizeof(key)), AFSM_EKEYEXISTS);
    assert_string_equal(afsm_error_detail(), "key_id: 2 is already in the key ring");
    assert_string_equal(afsm_strerror(AFSM_EKEYEXISTS), "key id already in the key ring");
    assert_int_equal(afsm_key_add(engine, 3, key, 16), AFSM_EINVAL);
    assert_string_equal(afsm_error_detail(), "key: 16 bytes, must be 32");
    assert_int_equal(afsm_key_use(engine, 9), AFSM_EKEYNOTFOUND);
    assert_string_equal(afsm_error_detail(), "key_id: 9 is not in the key ring");
    assert_int_equal(afsm_key_remove(engine, 0), AFSM_EKEYINUSE); /* the random first key seals */
    assert_string_equal(afsm_error_detail(), "key_id: 0 is the current key; make another current first (afsm_key_use)");
    afsm_engine_close(engine);
    unlink(path);
    rmdir(dir);
}

static void *fail_on_other_thread(void *engine)
{
    assert_int_equal(create(engine, "", 0, 1, 0, NULL, 0), AFSM_EINVAL);
    return NULL;
}

static void test_detail_is_per_thread(void **state)
{
    (void)state;
    afsm_engine *engine = open_plain();
    assert_int_equal(create(engine, "u", 1, 65536, 0, NULL, 0), AFSM_EINVAL);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fail_on_other_thread, engine), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_string_equal(afsm_error_detail(), "client_port: 65536, must be 0..65535");
    afsm_engine_close(engine);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_details),       cmocka_unit_test(test_list_update_and_timeout_details),
        cmocka_unit_test(test_config_details),       cmocka_unit_test(test_key_file_details),
        cmocka_unit_test(test_detail_is_per_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
