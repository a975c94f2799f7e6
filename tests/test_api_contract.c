/*
 * test_api_contract.c: include/afsm.h's promises about bad input, checked
 * one by one against the memory store.
 *
 * The header promises (afsm.h, afsm_error_detail): a bad argument gets its
 * own status, leaves the engine unchanged, and sets a per-thread detail
 * that names the argument and its limit, for every AFSM_ENULL,
 * AFSM_EVERSION, AFSM_EINVAL, AFSM_ETOOLONG, AFSM_EUUID, AFSM_EIP and
 * AFSM_EBUFFER of argument checks. Each case here makes one bad call and
 * checks the status, that the detail names the argument (and the limit
 * where there is one), and, where the call reaches an engine, that its
 * counts, metrics and indexes are what they were (mem_inspect.h).
 *
 * The less-travelled calls get their edges walked: metadata buffers of
 * every size around the needed one, merges that overflow the key or byte
 * bound, restore with fields at their limits, tokens of other engines and
 * key rings, truncated and extended, list cursors and offsets at their
 * bounds, batches of zero and NULL, config fields at and past their
 * limits, versions 0, old and future.
 *
 * Single-threaded except test_concurrent_* (key ring writers against
 * lock-free validation; per-thread details under many failing threads),
 * which are meant for the ThreadSanitizer tree as well.
 */
#define _DEFAULT_SOURCE /* mkdtemp */
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mem_inspect.h"
#include "util/alloc.h"
#include "util/uuid.h"

/* The status is want, and the detail contains every given fragment. */
#define expect_detail(got, want, ...)                                                                                  \
    do {                                                                                                               \
        afsm_status got_ = (got);                                                                                      \
        assert_int_equal(got_, (want));                                                                                \
        const char *fragments_[] = {__VA_ARGS__};                                                                      \
        for (size_t i_ = 0; i_ < sizeof(fragments_) / sizeof(fragments_[0]); i_++)                                     \
            if (strstr(afsm_error_detail(), fragments_[i_]) == NULL)                                                   \
                fail_msg("%s: detail \"%s\" lacks \"%s\"", #got, afsm_error_detail(), fragments_[i_]);                 \
    } while (0)

/* What a failed call must leave as it was. */
typedef struct engine_picture {
    afsm_counts counts;
    afsm_metrics metrics;
    size_t slots;
} engine_picture;

static engine_picture picture(afsm_engine *engine)
{
    engine_picture p;
    memset(&p, 0, sizeof(p));
    assert_int_equal(afsm_engine_counts(engine, &p.counts), AFSM_OK);
    p.metrics.version = AFSM_METRICS_VERSION;
    assert_int_equal(afsm_metrics_snapshot(engine, &p.metrics), AFSM_OK);
    p.slots = engine_slots_in_use(engine);
    return p;
}

static void assert_unchanged(afsm_engine *engine, const engine_picture *before)
{
    engine_picture now = picture(engine);
    assert_memory_equal(&now.counts, &before->counts, sizeof(now.counts));
    /* Everything but the lag, which the clock moves on its own. */
    now.metrics.reaper_lag_ns = before->metrics.reaper_lag_ns;
    assert_memory_equal(&now.metrics, &before->metrics, sizeof(now.metrics));
    assert_int_equal(now.slots, before->slots);
    engine_check_indexes(engine, 0);
}

static afsm_session_info create_with_metadata(afsm_engine *engine, const char *user, const afsm_kv *kv, size_t n)
{
    afsm_uuid conn;
    afsm_create_options o = make_options(user, "192.168.1.100", &conn);
    o.metadata = kv;
    o.metadata_count = n;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
    return info;
}

/* ---- every rejection says which argument -------------------------------- */

/* The calls whose AFSM_ENULL / AFSM_EVERSION / AFSM_EINVAL / AFSM_EUUID /
 * AFSM_EIP came back with an empty detail. */
static void test_detail_names_the_argument(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_session_info s = create_session(engine, "alice");
    engine_picture before = picture(engine);

    uint64_t n = 0;
    afsm_counts counts;
    expect_detail(afsm_engine_advance(NULL, 0, NULL), AFSM_ENULL, "engine");
    expect_detail(afsm_engine_now(NULL, &n), AFSM_ENULL, "engine");
    expect_detail(afsm_engine_now(engine, NULL), AFSM_ENULL, "now_ns");
    expect_detail(afsm_engine_counts(NULL, &counts), AFSM_ENULL, "engine");
    expect_detail(afsm_engine_counts(engine, NULL), AFSM_ENULL, "out");
    expect_detail(afsm_engine_set_default_timeout(NULL, 5), AFSM_ENULL, "engine");

    afsm_handle *h = NULL;
    expect_detail(afsm_handle_pin(engine, NULL, &h), AFSM_ENULL, "session_id");
    expect_detail(afsm_handle_pin_by_connection(engine, NULL, &h), AFSM_ENULL, "connection_id");
    expect_detail(afsm_handle_pin(engine, &s.session_id, NULL), AFSM_ENULL, "out");
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    afsm_uuid id;
    expect_detail(afsm_handle_heartbeat(NULL, NULL), AFSM_ENULL, "handle");
    expect_detail(afsm_handle_add_stats(NULL, &(afsm_stats){0}), AFSM_ENULL, "handle");
    expect_detail(afsm_handle_add_stats(h, NULL), AFSM_ENULL, "delta");
    expect_detail(afsm_handle_session_id(NULL, &id), AFSM_ENULL, "handle");
    expect_detail(afsm_handle_session_id(h, NULL), AFSM_ENULL, "out");
    assert_int_equal(afsm_handle_release(h), AFSM_OK);

    afsm_metrics m = AFSM_METRICS_INIT;
    expect_detail(afsm_metrics_snapshot(NULL, &m), AFSM_ENULL, "engine");
    expect_detail(afsm_metrics_snapshot(engine, NULL), AFSM_ENULL, "out");
    m.version = 0;
    expect_detail(afsm_metrics_snapshot(engine, &m), AFSM_EVERSION, "version", "0");
    m.version = AFSM_METRICS_VERSION + 1;
    expect_detail(afsm_metrics_snapshot(engine, &m), AFSM_EVERSION, "version", "3");
    size_t needed = 0;
    expect_detail(afsm_metrics_write_prometheus(NULL, NULL, 0, &needed), AFSM_ENULL, "engine");
    expect_detail(afsm_metrics_write_prometheus(engine, NULL, 16, &needed), AFSM_ENULL, "buf");

    afsm_uuid u;
    char text[AFSM_UUID_STRING_SIZE];
    expect_detail(afsm_uuid_parse(NULL, 36, &u), AFSM_ENULL, "text");
    expect_detail(afsm_uuid_parse("0190", 4, NULL), AFSM_ENULL, "out");
    expect_detail(afsm_uuid_parse("0190", 4, &u), AFSM_EUUID, "text", "36");
    expect_detail(afsm_uuid_parse("0190a5c0-0000-7000-8000-00000000000g", 36, &u), AFSM_EUUID, "text");
    expect_detail(afsm_uuid_format(NULL, text), AFSM_ENULL, "uuid");
    expect_detail(afsm_uuid_v7(NULL), AFSM_ENULL, "out");
    afsm_ip ip;
    char ip_text[AFSM_IP_STRING_SIZE];
    expect_detail(afsm_ip_parse(NULL, 3, &ip), AFSM_ENULL, "text");
    expect_detail(afsm_ip_parse("1.2.3", 5, &ip), AFSM_EIP, "text");
    ip.family = 5;
    expect_detail(afsm_ip_format(&ip, ip_text), AFSM_EINVAL, "family", "5");
    expect_detail(afsm_ip_format(NULL, ip_text), AFSM_ENULL, "ip");

    /* A success after each clears it again. */
    assert_int_equal(afsm_engine_now(engine, &n), AFSM_OK);
    assert_string_equal(afsm_error_detail(), "");
    assert_unchanged(engine, &before);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* get_batch names the element whose version is wrong, as list does. */
static void test_batch_detail_names_the_element(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_uuid ids[4];
    afsm_session_info out[4];
    afsm_status statuses[4];
    for (int i = 0; i < 4; i++) {
        ids[i] = create_session(engine, "bob").session_id;
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    }
    engine_picture before = picture(engine);
    out[2].version = 0;
    expect_detail(afsm_session_get_batch(engine, ids, 4, out, statuses), AFSM_EVERSION, "out[2]");

    /* Zero items need no arrays; NULL arrays with items are named. */
    assert_int_equal(afsm_session_get_batch(engine, NULL, 0, NULL, NULL), AFSM_OK);
    assert_int_equal(afsm_session_heartbeat_batch(engine, NULL, 0, NULL, NULL), AFSM_OK);
    assert_int_equal(afsm_session_add_stats_batch(engine, NULL, NULL, 0, NULL), AFSM_OK);
    out[2].version = AFSM_SESSION_INFO_VERSION;
    expect_detail(afsm_session_get_batch(engine, NULL, 4, out, statuses), AFSM_ENULL, "ids");
    expect_detail(afsm_session_get_batch(engine, ids, 4, NULL, statuses), AFSM_ENULL, "out");
    expect_detail(afsm_session_get_batch(engine, ids, 4, out, NULL), AFSM_ENULL, "statuses");
    expect_detail(afsm_session_add_stats_batch(engine, ids, NULL, 4, statuses), AFSM_ENULL, "deltas");
    expect_detail(afsm_session_heartbeat_batch(engine, ids, AFSM_BATCH_MAX + 1, NULL, statuses), AFSM_EINVAL, "n",
                  "65536");
    assert_unchanged(engine, &before);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Version fields of 0 and of the next version, struct by struct: AFSM_EVERSION
 * naming the struct, nothing done. */
static void test_versions_zero_and_future(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_session_info s = create_session(engine, "nora");
    engine_picture before = picture(engine);
    const uint32_t bad[] = {0, 2, UINT32_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        afsm_session_info out = AFSM_SESSION_INFO_INIT;
        out.version = bad[i];
        expect_detail(afsm_session_get(engine, &s.session_id, &out), AFSM_EVERSION, "version");
        expect_detail(afsm_session_get_by_connection(engine, &s.connection_id, &out), AFSM_EVERSION, "version");
        expect_detail(afsm_token_validate(engine, "v1.x", 4, NULL, 0, &out), AFSM_EVERSION, "version");
        afsm_uuid conn;
        afsm_create_options o = make_options("nora", "10.0.0.1", &conn);
        expect_detail(afsm_session_create(engine, &o, &out), AFSM_EVERSION, "version");
        o.version = bad[i];
        expect_detail(afsm_session_create(engine, &o, NULL), AFSM_EVERSION, "options.version");
        afsm_update up = AFSM_UPDATE_INIT;
        up.version = bad[i];
        expect_detail(afsm_session_update(engine, &s.session_id, &up, NULL), AFSM_EVERSION, "update.version");
        afsm_list_filter f = AFSM_LIST_FILTER_INIT;
        f.limit = 1;
        f.version = bad[i];
        size_t count;
        uint64_t total;
        afsm_session_info page = AFSM_SESSION_INFO_INIT;
        expect_detail(afsm_session_list(engine, &f, &page, 1, &count, &total, NULL), AFSM_EVERSION, "filter.version");
        expect_detail(afsm_session_info_init(&out, bad[i]), AFSM_EVERSION, "version");
        expect_detail(afsm_create_options_init(&o, bad[i]), AFSM_EVERSION, "version");
        expect_detail(afsm_update_init(&up, bad[i]), AFSM_EVERSION, "version");
        expect_detail(afsm_list_filter_init(&f, bad[i]), AFSM_EVERSION, "version");
    }
    /* An old caller's version 1 metrics: filled up to its end, nothing
     * written past it (the allocation is exactly that long, for ASan). */
    size_t v1_size = offsetof(afsm_metrics, etcd_lease_grants_total);
    unsigned char *v1 = malloc(v1_size);
    assert_non_null(v1);
    uint32_t one = 1;
    memcpy(v1, &one, sizeof(one));
    assert_int_equal(afsm_metrics_snapshot(engine, (afsm_metrics *)(void *)v1), AFSM_OK);
    uint64_t created;
    memcpy(&created, v1 + offsetof(afsm_metrics, created_total), sizeof(created));
    assert_int_equal(created, 1);
    free(v1);
    assert_unchanged(engine, &before);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Create's and delete's bounds, at and one past each: the user id, the
 * metadata's keys, key length and bytes, the reason, a batch of
 * AFSM_BATCH_MAX. */
static void test_bounds_at_and_past(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    static char text[AFSM_METADATA_BYTES_MAX + 2];
    memset(text, 'x', sizeof(text));
    afsm_uuid conn;
    afsm_create_options o = make_options("x", "10.0.0.1", &conn);
    o.user_id = text;
    o.user_id_len = AFSM_USER_ID_MAX;
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_create(engine, &o, &s), AFSM_OK);
    engine_picture before = picture(engine);
    afsm_uuid_v7(&o.connection_id);
    o.user_id_len = AFSM_USER_ID_MAX + 1;
    expect_detail(afsm_session_create(engine, &o, NULL), AFSM_ETOOLONG, "user_id", "256");
    assert_unchanged(engine, &before);
    o.user_id_len = 1;

    char keys[AFSM_METADATA_KEYS_MAX + 1][8];
    afsm_kv kv[AFSM_METADATA_KEYS_MAX + 1];
    for (size_t i = 0; i <= AFSM_METADATA_KEYS_MAX; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%02zu", i);
        kv[i] = (afsm_kv){keys[i], 3, "v", 1};
    }
    o.metadata = kv;
    o.metadata_count = AFSM_METADATA_KEYS_MAX + 1;
    expect_detail(afsm_session_create(engine, &o, NULL), AFSM_ETOOLONG, "metadata", "65 keys", "64");
    afsm_kv key = {text, 256, "v", 1};
    o.metadata = &key;
    o.metadata_count = 1;
    expect_detail(afsm_session_create(engine, &o, NULL), AFSM_ETOOLONG, "metadata[0].key", "256 bytes", "255");
    afsm_kv bytes = {"k", 1, text, AFSM_METADATA_BYTES_MAX}; /* 4097 with its key */
    o.metadata = &bytes;
    expect_detail(afsm_session_create(engine, &o, NULL), AFSM_ETOOLONG, "metadata", "4097", "4096");
    assert_unchanged(engine, &before);
    o.metadata = kv;
    o.metadata_count = AFSM_METADATA_KEYS_MAX;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_OK);
    afsm_uuid_v7(&o.connection_id);
    key.key_len = 255;
    o.metadata = &key;
    o.metadata_count = 1;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_OK);
    afsm_uuid_v7(&o.connection_id);
    bytes.value_len = AFSM_METADATA_BYTES_MAX - 1;
    o.metadata = &bytes;
    afsm_session_info full = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_create(engine, &o, &full), AFSM_OK);
    assert_int_equal(full.metadata_bytes, AFSM_METADATA_BYTES_MAX + 2);

    before = picture(engine);
    expect_detail(afsm_session_delete(engine, &s.session_id, text, AFSM_REASON_MAX + 1), AFSM_ETOOLONG, "reason",
                  "256");
    expect_detail(afsm_session_delete(engine, &s.session_id, "a\0b", 3), AFSM_EINVAL, "reason", "offset 1");
    expect_detail(afsm_session_delete(engine, &s.session_id, NULL, 3), AFSM_ENULL, "reason");
    expect_detail(afsm_session_delete_by_user(engine, text, AFSM_USER_ID_MAX + 1, NULL, 0, NULL), AFSM_ETOOLONG,
                  "user_id");
    expect_detail(afsm_session_delete_by_user(engine, NULL, 1, NULL, 0, NULL), AFSM_ENULL, "user_id");
    assert_unchanged(engine, &before);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, text, AFSM_REASON_MAX), AFSM_OK);

    /* A batch of AFSM_BATCH_MAX unknown ids: every item its own status. */
    afsm_uuid *ids = calloc(AFSM_BATCH_MAX, sizeof(*ids));
    afsm_status *statuses = calloc(AFSM_BATCH_MAX, sizeof(*statuses));
    assert_non_null(ids);
    assert_non_null(statuses);
    for (size_t i = 0; i < AFSM_BATCH_MAX; i++)
        afsm_uuid_v7(&ids[i]);
    assert_int_equal(afsm_session_heartbeat_batch(engine, ids, AFSM_BATCH_MAX, NULL, statuses), AFSM_OK);
    for (size_t i = 0; i < AFSM_BATCH_MAX; i++)
        assert_int_equal(statuses[i], AFSM_ENOTFOUND);
    free(ids);
    free(statuses);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- metadata ------------------------------------------------------------ */

/* Buffers of every size around the needed one: short is AFSM_EBUFFER with
 * needed and count reported, the buffer untouched and the detail naming
 * buf_size and the size needed; enough is the pairs in key order. */
static void test_get_metadata_buffer_sizes(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_kv kv[] = {{"bb", 2, "22", 2}, {"a", 1, "1", 1}};
    afsm_session_info s = create_with_metadata(engine, "carol", kv, 2);
    const char expected[] = "a\0001\0bb\00022"; /* and its NUL: 10 bytes */
    assert_int_equal(s.metadata_bytes, 10);

    for (size_t size = 0; size <= 12; size++) {
        char buf[16];
        memset(buf, 0x5a, sizeof(buf));
        size_t needed = 0, count = 0;
        afsm_status status = afsm_session_get_metadata(engine, &s.session_id, size ? buf : NULL, size, &needed, &count);
        assert_int_equal(needed, 10);
        assert_int_equal(count, 2);
        if (size < 10) {
            char want[32];
            snprintf(want, sizeof(want), "buf_size: %zu", size);
            expect_detail(status, AFSM_EBUFFER, want, "10");
            for (size_t i = 0; i < sizeof(buf); i++)
                assert_int_equal((unsigned char)buf[i], 0x5a);
        } else {
            assert_int_equal(status, AFSM_OK);
            assert_string_equal(afsm_error_detail(), "");
            assert_memory_equal(buf, expected, 10);
            assert_int_equal((unsigned char)buf[10], 0x5a);
        }
    }
    expect_detail(afsm_session_get_metadata(engine, &s.session_id, NULL, 4, NULL, NULL), AFSM_ENULL, "buf");
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* The Prometheus text the same way: short is AFSM_EBUFFER with the size
 * needed (NUL included) in needed and the detail; that size is enough. */
static void test_prometheus_buffer_sizes(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    create_session(engine, "olga");
    size_t needed = 0;
    expect_detail(afsm_metrics_write_prometheus(engine, NULL, 0, &needed), AFSM_EBUFFER, "buf_size: 0");
    assert_true(needed > 100);
    char *buf = malloc(needed + 1);
    assert_non_null(buf);
    size_t again = 0;
    char want[48];
    snprintf(want, sizeof(want), "need %zu", needed);
    expect_detail(afsm_metrics_write_prometheus(engine, buf, needed - 1, &again), AFSM_EBUFFER, want);
    assert_int_equal(again, needed);
    assert_int_equal(afsm_metrics_write_prometheus(engine, buf, needed, &again), AFSM_OK);
    assert_int_equal(again, needed);
    assert_int_equal(strlen(buf) + 1, needed);
    assert_non_null(strstr(buf, "session_total 1\n"));
    free(buf);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A merge whose result passes a bound is AFSM_ETOOLONG like a create past
 * it: the detail says which bound, the session keeps its metadata. */
static void test_merge_past_the_bounds(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    char keys[AFSM_METADATA_KEYS_MAX + 10][8];
    afsm_kv kv[AFSM_METADATA_KEYS_MAX + 10];
    for (size_t i = 0; i < AFSM_METADATA_KEYS_MAX + 10; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%03zu", i);
        kv[i] = (afsm_kv){keys[i], strlen(keys[i]), "v", 1};
    }
    afsm_session_info s = create_with_metadata(engine, "dave", kv, 60);
    engine_picture before = picture(engine);

    afsm_update up = AFSM_UPDATE_INIT;
    up.fields = AFSM_UPDATE_METADATA_MERGE;
    up.metadata = kv + 60;
    up.metadata_count = 10; /* 70 keys after the merge */
    expect_detail(afsm_session_update(engine, &s.session_id, &up, NULL), AFSM_ETOOLONG, "metadata", "64");
    afsm_session_info now = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &now), AFSM_OK);
    assert_int_equal(now.metadata_count, 60);
    assert_int_equal(now.metadata_bytes, s.metadata_bytes);
    assert_unchanged(engine, &before);

    /* Bytes: 3000 kept plus 2000 merged is past 4096. */
    static char big[3000];
    memset(big, 'x', sizeof(big));
    afsm_kv one = {"a", 1, big, 3000};
    afsm_session_info t = create_with_metadata(engine, "erin", &one, 1);
    before = picture(engine);
    afsm_kv more = {"b", 1, big, 2000};
    up.metadata = &more;
    up.metadata_count = 1;
    expect_detail(afsm_session_update(engine, &t.session_id, &up, NULL), AFSM_ETOOLONG, "metadata", "4096");
    assert_int_equal(afsm_session_get(engine, &t.session_id, &now), AFSM_OK);
    assert_int_equal(now.metadata_count, 1);
    assert_unchanged(engine, &before);
    /* Replacing the kept key's value within the bound is fine. */
    more.key = "a";
    assert_int_equal(afsm_session_update(engine, &t.session_id, &up, &now), AFSM_OK);
    assert_int_equal(now.metadata_count, 1);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- restore ---------------------------------------------------------------- */

/* A restored client IP obeys afsm_ip's rule (a v4-mapped v6 address is
 * the v4 address), so a token bound to it validates from that address. */
static void test_restore_normalises_a_mapped_ip(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_uuid conn;
    afsm_create_options o = make_options("frank", "1.2.3.4", &conn);
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_create(engine, &o, &s), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);

    afsm_session_info copy = s;
    memset(copy.client_ip.bytes, 0, sizeof(copy.client_ip.bytes));
    copy.client_ip.family = 6;
    copy.client_ip.bytes[10] = copy.client_ip.bytes[11] = 0xff;
    memcpy(copy.client_ip.bytes + 12, s.client_ip.bytes, 4);
    assert_int_equal(afsm_session_restore(engine, &copy, NULL, 0), AFSM_OK);
    afsm_session_info now = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &now), AFSM_OK);
    assert_memory_equal(&now.client_ip, &s.client_ip, sizeof(afsm_ip));

    char token[AFSM_TOKEN_SIZE];
    size_t len = 0;
    assert_int_equal(afsm_token_issue(engine, &s.session_id, AFSM_TOKEN_BIND_IP, token, sizeof(token), &len), AFSM_OK);
    assert_int_equal(afsm_token_validate(engine, token, len, "1.2.3.4", 7, NULL), AFSM_OK);
    assert_int_equal(afsm_token_validate(engine, token, len, "::ffff:1.2.3.4", 14, NULL), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Restore's fields at and past their limits: specific statuses, the
 * argument named, nothing restored. */
static void test_restore_limits(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_session_info s = create_session(engine, "gina");
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    engine_picture before = picture(engine);

    afsm_session_info c = s;
    c.user_id_len = AFSM_USER_ID_MAX + 1; /* as create: too long, not invalid */
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_ETOOLONG, "user_id", "256");
    c = s;
    c.user_id_len = 0;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "user_id", "1..256");
    c = s;
    c.state = AFSM_STATE_ANY;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "state");
    c.state = AFSM_STATE_CLOSED + 1;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "state");
    c = s;
    c.timeout_ms = 0;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "timeout_ms");
    c.timeout_ms = UINT64_C(4294967296);
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "timeout_ms", "4294967295");
    c = s;
    c.created_at_ns = -1;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "created_at_ns");
    c = s;
    c.last_active_at_ns = INT64_MAX / 2 + 1;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "last_active_at_ns");
    /* Created after its last activity: no copy looks like that (the
     * session would be created after its own deadline). */
    c = s;
    c.created_at_ns = c.last_active_at_ns + 600 * (int64_t)SEC;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "created_at_ns", "last_active_at_ns");
    c = s;
    c.token_generation = 0;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "token_generation");
    c = s;
    c.client_ip.family = 0;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EINVAL, "client_ip.family");
    c = s;
    memset(&c.session_id, 0, sizeof(c.session_id));
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EUUID, "session_id");
    c = s;
    memset(&c.connection_id, 0, sizeof(c.connection_id));
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EUUID, "connection_id");
    c = s;
    c.version = 2;
    expect_detail(afsm_session_restore(engine, &c, NULL, 0), AFSM_EVERSION, "version", "2");
    c = s;
    expect_detail(afsm_session_restore(engine, &c, NULL, 3), AFSM_ENULL, "metadata");
    /* Long expired (a 1 ms timeout a day ago): nothing done. */
    c.timeout_ms = 1;
    c.last_active_at_ns -= 86400 * (int64_t)SEC;
    c.created_at_ns = c.last_active_at_ns;
    assert_int_equal(afsm_session_restore(engine, &c, NULL, 0), AFSM_EEXPIRED);
    assert_unchanged(engine, &before);

    /* At the limits it restores: the longest user id, the top port, the
     * longest timeout, generation 2^32-1. */
    c = s;
    memset(c.user_id, 'u', AFSM_USER_ID_MAX);
    c.user_id[AFSM_USER_ID_MAX] = '\0';
    c.user_id_len = AFSM_USER_ID_MAX;
    c.client_port = 65535;
    c.timeout_ms = UINT64_C(4294967295);
    c.token_generation = UINT32_MAX;
    assert_int_equal(afsm_session_restore(engine, &c, NULL, 0), AFSM_OK);
    afsm_session_info now = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &now), AFSM_OK);
    assert_int_equal(now.user_id_len, AFSM_USER_ID_MAX);
    assert_int_equal(now.client_port, 65535);
    assert_int_equal(now.timeout_ms, UINT64_C(4294967295));
    assert_int_equal(now.token_generation, UINT32_MAX);
    engine_check_indexes(engine, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- tokens ------------------------------------------------------------------ */

static afsm_engine *open_with_key(uint32_t key_id, uint8_t fill)
{
    uint8_t key[AFSM_KEY_BYTES];
    memset(key, fill, sizeof(key));
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.key = key;
    cfg.key_len = sizeof(key);
    cfg.key_id = key_id;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static uint64_t validations(afsm_engine *engine, afsm_token_result result)
{
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    return m.token_validations[result];
}

/* Tokens of other engines and key rings, truncated, extended, altered:
 * each its own status and counter, no detail (not an argument check). */
static void test_foreign_and_damaged_tokens(void **state)
{
    (void)state;
    afsm_engine *a = open_with_key(7, 0x11);
    afsm_engine *same_key = open_with_key(7, 0x11);
    afsm_engine *other_key = open_with_key(7, 0x22);
    afsm_engine *other_id = open_with_key(8, 0x11);
    afsm_session_info s = create_session(a, "hana");
    char token[AFSM_TOKEN_SIZE];
    size_t len = 0;
    assert_int_equal(afsm_token_issue(a, &s.session_id, 0, token, sizeof(token), &len), AFSM_OK);
    assert_true(len < AFSM_TOKEN_SIZE);

    assert_int_equal(afsm_token_validate(same_key, token, len, NULL, 0, NULL), AFSM_ENOTFOUND);
    assert_int_equal(afsm_token_validate(other_key, token, len, NULL, 0, NULL), AFSM_ETOKEN);
    assert_int_equal(validations(other_key, AFSM_TOKEN_FORGED), 1);
    assert_int_equal(afsm_token_validate(other_id, token, len, NULL, 0, NULL), AFSM_ETOKENKEY);
    assert_int_equal(validations(other_id, AFSM_TOKEN_UNKNOWN_KEY), 1);
    assert_string_equal(afsm_error_detail(), "");

    /* An unbound token is the shortest form: every cut is malformed. */
    uint64_t malformed = 0, forged = 0;
    for (size_t cut = 0; cut < len; cut++, malformed++)
        assert_int_equal(afsm_token_validate(a, token, cut, NULL, 0, NULL), AFSM_ETOKENFORMAT);
    char longer[AFSM_TOKEN_SIZE + 8];
    memcpy(longer, token, len);
    for (size_t extra = 1; extra <= 6; extra++) {
        memset(longer + len, 'A', extra);
        afsm_status st = afsm_token_validate(a, longer, len + extra, NULL, 0, NULL);
        assert_true(st == AFSM_ETOKENFORMAT || st == AFSM_ETOKEN);
        if (st == AFSM_ETOKENFORMAT)
            malformed++;
        else
            forged++;
    }
    char altered[AFSM_TOKEN_SIZE];
    memcpy(altered, token, len);
    altered[len - 5] = altered[len - 5] == 'A' ? 'B' : 'A';
    assert_int_equal(afsm_token_validate(a, altered, len, NULL, 0, NULL), AFSM_ETOKEN);
    forged++;
    assert_int_equal(validations(a, AFSM_TOKEN_MALFORMED), malformed);
    assert_int_equal(validations(a, AFSM_TOKEN_FORGED), forged);
    assert_string_equal(afsm_error_detail(), "");
    assert_int_equal(afsm_token_validate(a, token, len, NULL, 0, NULL), AFSM_OK);

    /* Rotation: the old token is revoked, the new one good; bad arguments
     * leave the generation alone. */
    char rotated[AFSM_TOKEN_SIZE];
    expect_detail(afsm_token_rotate(a, &s.session_id, 0x2, rotated, sizeof(rotated), NULL), AFSM_EINVAL, "flags");
    expect_detail(afsm_token_rotate(a, &s.session_id, 0, rotated, AFSM_TOKEN_SIZE - 1, NULL), AFSM_EBUFFER,
                  "token_size", "121");
    afsm_session_info now = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(a, &s.session_id, &now), AFSM_OK);
    assert_int_equal(now.token_generation, 1);
    size_t rlen = 0;
    assert_int_equal(afsm_token_rotate(a, &s.session_id, 0, rotated, sizeof(rotated), &rlen), AFSM_OK);
    assert_int_equal(afsm_token_validate(a, token, len, NULL, 0, NULL), AFSM_EREVOKED);
    assert_int_equal(afsm_token_validate(a, rotated, rlen, NULL, 0, &now), AFSM_OK);
    assert_int_equal(now.token_generation, 2);
    expect_detail(afsm_token_validate(a, rotated, rlen, "1.2.3", 5, NULL), AFSM_EIP, "client_ip");

    afsm_engine_close(a);
    afsm_engine_close(same_key);
    afsm_engine_close(other_key);
    afsm_engine_close(other_id);
}

/* ---- listing ------------------------------------------------------------------- */

static void test_list_edges(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_uuid ids[10];
    for (int i = 0; i < 10; i++)
        ids[i] = create_session(engine, i % 2 ? "odd" : "even").session_id;
    engine_picture before = picture(engine);
    afsm_session_info out[10];
    for (int i = 0; i < 10; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    size_t count = 99;
    uint64_t total = 99;
    afsm_uuid next;

    f.limit = 3;
    expect_detail(afsm_session_list(engine, &f, out, 2, &count, &total, &next), AFSM_EINVAL, "out_capacity", "3");
    f.state = AFSM_STATE_CLOSED + 1;
    expect_detail(afsm_session_list(engine, &f, out, 3, &count, &total, &next), AFSM_EINVAL, "filter.state");
    f.state = AFSM_STATE_ANY;
    f.version = 0;
    expect_detail(afsm_session_list(engine, &f, out, 3, &count, &total, &next), AFSM_EVERSION, "filter.version");
    f.version = AFSM_LIST_FILTER_VERSION;
    f.user_id = "";
    expect_detail(afsm_session_list(engine, &f, out, 3, &count, &total, &next), AFSM_EINVAL, "user_id");
    f.user_id = NULL;
    out[1].version = 7;
    expect_detail(afsm_session_list(engine, &f, out, 3, &count, &total, &next), AFSM_EVERSION, "out[1]");
    out[1].version = AFSM_SESSION_INFO_VERSION;
    assert_int_equal(count, 99); /* untouched by a rejected call */
    assert_int_equal(total, 99);

    /* offset + limit past 2^64: nothing, total still counted. */
    f.offset = UINT64_MAX - 1;
    assert_int_equal(afsm_session_list(engine, &f, out, 3, &count, &total, &next), AFSM_OK);
    assert_int_equal(count, 0);
    assert_int_equal(total, 10);
    assert_true(uuid_is_nil(&next));

    /* The cursor of a deleted session still places the page. */
    f.offset = 0;
    f.cursor = ids[4];
    assert_int_equal(afsm_session_delete(engine, &ids[4], NULL, 0), AFSM_OK);
    before = picture(engine);
    assert_int_equal(afsm_session_list(engine, &f, out, 3, &count, &total, &next), AFSM_OK);
    assert_int_equal(count, 3);
    assert_int_equal(total, 9);
    assert_memory_equal(&out[0].session_id, &ids[5], 16);
    assert_memory_equal(&next, &ids[7], 16);
    /* The last page: next is nil. */
    f.cursor = next;
    assert_int_equal(afsm_session_list(engine, &f, out, 3, &count, &total, &next), AFSM_OK);
    assert_int_equal(count, 2);
    assert_true(uuid_is_nil(&next));
    /* Every filter at once: user, state, created bounds, cursor, offset. */
    f.user_id = "odd";
    f.user_id_len = 3;
    f.state = AFSM_STATE_CONNECTING;
    f.created_after_ns = 1;
    f.created_before_ns = INT64_MAX;
    f.cursor = ids[1];
    f.offset = 1;
    f.limit = AFSM_LIST_LIMIT_MAX;
    afsm_session_info *page = calloc(AFSM_LIST_LIMIT_MAX, sizeof(*page));
    assert_non_null(page);
    for (size_t i = 0; i < AFSM_LIST_LIMIT_MAX; i++)
        page[i].version = AFSM_SESSION_INFO_VERSION;
    assert_int_equal(afsm_session_list(engine, &f, page, AFSM_LIST_LIMIT_MAX, &count, &total, &next), AFSM_OK);
    assert_int_equal(total, 5);
    assert_int_equal(count, 3); /* 3, 5, 7, 9 after the cursor, minus the offset */
    assert_memory_equal(&page[0].session_id, &ids[5], 16);
    assert_memory_equal(&page[2].session_id, &ids[9], 16);
    assert_true(uuid_is_nil(&next));
    free(page);
    /* created_before <= created_after: an empty page, no error. */
    f.created_after_ns = INT64_MAX - 1;
    f.created_before_ns = 1;
    f.limit = 10;
    assert_int_equal(afsm_session_list(engine, &f, out, 10, &count, &total, &next), AFSM_OK);
    assert_int_equal(count, 0);
    assert_int_equal(total, 0);
    assert_unchanged(engine, &before);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- config --------------------------------------------------------------------- */

static afsm_status open_with(const afsm_config *cfg)
{
    static char sentinel;
    afsm_engine *engine = (afsm_engine *)&sentinel; /* must become NULL on failure */
    afsm_status status = afsm_engine_open(cfg, &engine);
    if (status != AFSM_OK)
        assert_null(engine);
    else
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    return status;
}

static void test_config_limits(void **state)
{
    (void)state;
    afsm_config cfg;
    expect_detail(afsm_config_init(&cfg, 0), AFSM_EVERSION, "version: 0");
    expect_detail(afsm_config_init(&cfg, AFSM_CONFIG_VERSION + 1), AFSM_EVERSION, "version: 3");
    expect_detail(afsm_config_init(NULL, AFSM_CONFIG_VERSION), AFSM_ENULL, "NULL");
    expect_detail(afsm_engine_open(NULL, NULL), AFSM_ENULL, "out");

    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.version = 0;
    expect_detail(open_with(&cfg), AFSM_EVERSION, "config.version: 0");
    cfg.version = 3;
    expect_detail(open_with(&cfg), AFSM_EVERSION, "config.version: 3");
    cfg.version = AFSM_CONFIG_VERSION;

    /* Each field at its limit opens; one past is EINVAL / ETOOLONG naming it. */
    struct {
        const char *name;
        uint64_t *field;
        uint64_t limit;
    } spans[] = {
        {"default_timeout_ms", &cfg.default_timeout_ms, UINT64_C(4294967295)},
        {"max_lifetime_ms", &cfg.max_lifetime_ms, UINT64_C(10) * 366 * 86400 * 1000},
        {"idle_timeout_ms", &cfg.idle_timeout_ms, UINT64_C(10) * 366 * 86400 * 1000},
        {"close_linger_ms", &cfg.close_linger_ms, UINT64_C(10) * 366 * 86400 * 1000},
        {"cleanup_interval_ms", &cfg.cleanup_interval_ms, UINT64_C(10) * 366 * 86400 * 1000},
        {"tick_ms", &cfg.tick_ms, UINT64_C(10) * 366 * 86400 * 1000},
    };
    for (size_t i = 0; i < sizeof(spans) / sizeof(spans[0]); i++) {
        uint64_t limit = spans[i].limit;
        /* Find the real limit from the detail of a huge value. */
        *spans[i].field = UINT64_MAX;
        expect_detail(open_with(&cfg), AFSM_EINVAL, spans[i].name);
        const char *at = strstr(afsm_error_detail(), "at most ");
        assert_non_null(at);
        limit = strtoull(at + 8, NULL, 10);
        assert_true(limit > 0);
        *spans[i].field = limit;
        assert_int_equal(open_with(&cfg), AFSM_OK);
        *spans[i].field = limit + 1;
        expect_detail(open_with(&cfg), AFSM_EINVAL, spans[i].name);
        *spans[i].field = 0;
    }
    cfg.shard_count = 4096;
    assert_int_equal(open_with(&cfg), AFSM_OK);
    cfg.shard_count = 8192;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "shard_count", "4096");
    cfg.shard_count = 3;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "shard_count");
    cfg.shard_count = 0;
    cfg.capacity_hint = (UINT64_C(1) << 30) + 1;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "capacity_hint");
    cfg.capacity_hint = 0;
    cfg.reaper = 2;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "reaper");
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.limit_policy = 2;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "limit_policy");
    cfg.limit_policy = 0;
    cfg.log_level = 15;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "log_level");
    cfg.log_level = 0;
    cfg.store = 2;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "store");
    cfg.store = 0;
    cfg.etcd_read_mode = 3;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "etcd_read_mode");
    cfg.etcd_read_mode = 0;
    char addr[AFSM_SERVER_ADDR_MAX + 1];
    memset(addr, 'a', sizeof(addr));
    cfg.server_addr = addr;
    cfg.server_addr_len = AFSM_SERVER_ADDR_MAX;
    assert_int_equal(open_with(&cfg), AFSM_OK);
    cfg.server_addr_len = AFSM_SERVER_ADDR_MAX + 1;
    expect_detail(open_with(&cfg), AFSM_ETOOLONG, "server_addr", "255");
    cfg.server_addr = NULL;
    expect_detail(open_with(&cfg), AFSM_ENULL, "server_addr");
    cfg.server_addr_len = 0;
    uint8_t key[AFSM_KEY_BYTES] = {1};
    cfg.key = key;
    cfg.key_len = AFSM_KEY_BYTES;
    cfg.key_id = AFSM_KEY_ID_MAX;
    assert_int_equal(open_with(&cfg), AFSM_OK);
    cfg.key_id = AFSM_KEY_ID_MAX + 1;
    expect_detail(open_with(&cfg), AFSM_EINVAL, "key_id", "65535");

    /* A version 1 config: what lies past its end is never read. */
    void *mem = malloc(offsetof(afsm_config, store));
    assert_non_null(mem);
    assert_int_equal(afsm_config_init(mem, 1), AFSM_OK);
    uint32_t manual = AFSM_REAPER_MANUAL;
    memcpy((char *)mem + offsetof(afsm_config, reaper), &manual, sizeof(manual));
    assert_int_equal(open_with(mem), AFSM_OK);
    free(mem);
}

/* ---- failed writes ------------------------------------------------------------- */

/* Every write refused after the arguments passed (the id or connection
 * taken, the user at the cap, the session gone or expired) leaves counts,
 * metrics, slab slots and indexes as they were. */
static void test_refused_writes_leave_the_engine_unchanged(void **state)
{
    (void)state;
    virtual_clock clock;
    virtual_clock_set(&clock, 1000 * SEC);
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.clock = virtual_clock_read;
    cfg.clock_ctx = &clock;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.shard_count = 4;
    cfg.max_sessions_per_user = 2;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    afsm_kv kv[] = {{"device", 6, "phone", 5}, {"region", 6, "eu", 2}};
    afsm_session_info a = create_with_metadata(engine, "kim", kv, 2);
    afsm_session_info b = create_with_metadata(engine, "kim", kv, 2);
    afsm_session_info other = create_with_metadata(engine, "lee", kv, 2);
    afsm_uuid conn;
    afsm_create_options o = make_options("kim", "10.1.1.1", &conn);
    o.metadata = kv;
    o.metadata_count = 2;
    engine_picture before = picture(engine);

    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_ELIMIT);
    assert_unchanged(engine, &before);
    o = make_options("mia", "10.1.1.1", &conn);
    o.connection_id = a.connection_id;
    o.metadata = kv;
    o.metadata_count = 2;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EEXISTS);
    assert_unchanged(engine, &before);
    /* Restore: the id taken; the connection taken; the user at the cap. */
    afsm_session_info copy = other;
    assert_int_equal(afsm_session_restore(engine, &copy, kv, 2), AFSM_EEXISTS);
    assert_unchanged(engine, &before);
    afsm_uuid_v7(&copy.session_id);
    assert_int_equal(afsm_session_restore(engine, &copy, kv, 2), AFSM_EEXISTS);
    assert_unchanged(engine, &before);
    copy = a;
    afsm_uuid_v7(&copy.session_id);
    afsm_uuid_v7(&copy.connection_id);
    assert_int_equal(afsm_session_restore(engine, &copy, kv, 2), AFSM_ELIMIT);
    assert_unchanged(engine, &before);
    /* Update: a transition not allowed, with metadata that would fit. */
    afsm_update up = AFSM_UPDATE_INIT;
    up.fields = AFSM_UPDATE_STATE | AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_STATS;
    up.state = AFSM_STATE_IDLE; /* from CONNECTING */
    up.metadata = kv;
    up.metadata_count = 1;
    up.stats.packets_sent = 9;
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_update(engine, &b.session_id, &up, &out), AFSM_ETRANSITION);
    assert_unchanged(engine, &before);
    afsm_session_info now = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &b.session_id, &now), AFSM_OK);
    assert_int_equal(now.state, AFSM_STATE_CONNECTING);
    assert_int_equal(now.stats.packets_sent, 0);
    /* Gone: delete, update, rotate, heartbeat of an unknown id. */
    afsm_uuid nobody;
    afsm_uuid_v7(&nobody);
    uint64_t remaining = 77;
    char token[AFSM_TOKEN_SIZE];
    assert_int_equal(afsm_session_delete(engine, &nobody, "x", 1), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_update(engine, &nobody, &up, NULL), AFSM_ENOTFOUND);
    assert_int_equal(afsm_token_rotate(engine, &nobody, 0, token, sizeof(token), NULL), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_heartbeat(engine, &nobody, &remaining), AFSM_ENOTFOUND);
    assert_int_equal(remaining, 77);
    size_t deleted = 5;
    assert_int_equal(afsm_session_delete_by_user(engine, "nobody", 6, NULL, 0, &deleted), AFSM_OK);
    assert_int_equal(deleted, 0);
    assert_unchanged(engine, &before);
    /* Expired, not yet reaped: rotate and update refuse, the generation stays. */
    virtual_clock_set(&clock, 1000 * SEC + 31 * 60 * SEC);
    before = picture(engine);
    assert_int_equal(afsm_token_rotate(engine, &b.session_id, 0, token, sizeof(token), NULL), AFSM_EEXPIRED);
    up.fields = AFSM_UPDATE_STATS;
    assert_int_equal(afsm_session_update(engine, &b.session_id, &up, NULL), AFSM_EEXPIRED);
    assert_int_equal(afsm_session_heartbeat(engine, &b.session_id, &remaining), AFSM_EEXPIRED);
    assert_int_equal(afsm_session_get(engine, &b.session_id, &now), AFSM_EEXPIRED);
    assert_int_equal(now.token_generation, 1);
    assert_int_equal(now.stats.packets_sent, 0);
    assert_unchanged(engine, &before);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- time ---------------------------------------------------------------------- */

/* afsm_engine_advance takes a reading of the engine clock. A later one
 * (a wall clock, UINT64_MAX) is refused like afsm_handle_packet's: taken,
 * it moved the wheels past every deadline set afterwards, and those
 * sessions were never reaped until the clock got there. */
static void test_advance_refuses_a_future_reading(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    create_session(engine, "ivan");
    engine_picture before = picture(engine);
    size_t n = 99;
    uint64_t now = 0;
    assert_int_equal(afsm_engine_now(engine, &now), AFSM_OK);
    expect_detail(afsm_engine_advance(engine, UINT64_MAX, &n), AFSM_EINVAL, "now_ns", "ahead of the engine clock");
    expect_detail(afsm_engine_advance(engine, now + 1, &n), AFSM_EINVAL, "now_ns");
    assert_int_equal(n, 99);
    assert_unchanged(engine, &before);
    assert_int_equal(afsm_engine_advance(engine, now, &n), AFSM_OK);
    assert_int_equal(n, 0);

    /* A session created now still expires on time. */
    afsm_uuid conn;
    afsm_create_options o = make_options("ivan", "10.0.0.7", &conn);
    o.timeout_ms = 1000;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_OK);
    virtual_clock_set(&clock, now + 2 * SEC);
    assert_int_equal(afsm_engine_advance(engine, now + 2 * SEC, &n), AFSM_OK);
    assert_int_equal(n, 1);
    assert_int_equal(live_sessions(engine), 1);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- key files ------------------------------------------------------------------ */

typedef struct key_file_call {
    afsm_engine *engine;
    const char *path;
    afsm_status status;
    char detail[AFSM_ERROR_DETAIL_MAX];
    _Atomic long done;
} key_file_call;

static void *add_key_file(void *arg)
{
    key_file_call *c = arg;
    c->status = afsm_key_add_file(c->engine, 3, c->path, strlen(c->path));
    snprintf(c->detail, sizeof(c->detail), "%s", afsm_error_detail());
    atomic_store_explicit(&c->done, 1, memory_order_release);
    return NULL;
}

/* A key file that is a FIFO is AFSM_EKEYFILE "not a regular file" at once;
 * the open used to wait for a writer, for ever. */
static void test_key_file_fifo_does_not_block(void **state)
{
    (void)state;
    char dir[] = "/tmp/afsm-contract-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof(path), "%s/key", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    key_file_call c = {.engine = engine, .path = path};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, add_key_file, &c), 0);
    int finished = spin_until(&c.done, 1, 2);
    if (!finished) { /* unblock it with a writer, then fail */
        int fd = open(path, O_WRONLY | O_NONBLOCK);
        if (fd >= 0)
            close(fd);
    }
    pthread_join(t, NULL);
    unlink(path);
    rmdir(dir);
    assert_true(finished);
    assert_int_equal(c.status, AFSM_EKEYFILE);
    assert_non_null(strstr(c.detail, "not a regular file"));
    assert_int_equal(afsm_key_use(engine, 3), AFSM_EKEYNOTFOUND);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- thread-safety promises ------------------------------------------------------ */

#define RING_ROUNDS 300

typedef struct ring_race {
    afsm_engine *engine;
    afsm_uuid session;
    _Atomic long users_started, writer_done;
    _Atomic long ok, removed;
} ring_race;

/* "Writers serialise on a mutex; validation reads the ring lock-free":
 * one thread rotates keys the documented way (add, make current, remove
 * the old one) while others issue and validate. */
static void *ring_writer(void *arg)
{
    ring_race *r = arg;
    uint32_t current = 0;                /* the engine's random first key */
    spin_until(&r->users_started, 2, 5); /* rotate while they work */
    for (uint32_t id = 1; id <= RING_ROUNDS; id++) {
        uint8_t key[AFSM_KEY_BYTES];
        memset(key, (int)id, sizeof(key));
        THREAD_CHECK(afsm_key_add(r->engine, id, key, sizeof(key)) == AFSM_OK);
        THREAD_CHECK(afsm_key_remove(r->engine, current) == AFSM_EKEYINUSE);
        THREAD_CHECK(afsm_key_use(r->engine, id) == AFSM_OK);
        THREAD_CHECK(afsm_key_remove(r->engine, current) == AFSM_OK);
        current = id;
    }
    atomic_store_explicit(&r->writer_done, 1, memory_order_release);
    return NULL;
}

static void *ring_user(void *arg)
{
    ring_race *r = arg;
    uint64_t deadline = real_ns() + 5 * SEC;
    atomic_fetch_add(&r->users_started, 1);
    do {
        char token[AFSM_TOKEN_SIZE];
        size_t len = 0;
        THREAD_CHECK(afsm_token_issue(r->engine, &r->session, 0, token, sizeof(token), &len) == AFSM_OK);
        afsm_status st = afsm_token_validate(r->engine, token, len, NULL, 0, NULL);
        /* Its key may have been removed in between; nothing else. */
        THREAD_CHECK(st == AFSM_OK || st == AFSM_EKEYREMOVED);
        atomic_fetch_add_explicit(st == AFSM_OK ? &r->ok : &r->removed, 1, memory_order_relaxed);
    } while (!atomic_load_explicit(&r->writer_done, memory_order_acquire) && real_ns() < deadline);
    return NULL;
}

static void test_concurrent_key_rotation_and_validation(void **state)
{
    (void)state;
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    static ring_race r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(afsm_engine_open(&cfg, &r.engine), AFSM_OK);
    r.session = create_session(r.engine, "ring").session_id;
    pthread_t writer, users[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&users[i], NULL, ring_user, &r), 0);
    assert_int_equal(pthread_create(&writer, NULL, ring_writer, &r), 0);
    pthread_join(writer, NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(users[i], NULL);
    assert_true(atomic_load(&r.ok) > 0);
    print_message("key ring race: %ld validated, %ld with a key removed meanwhile\n", (long)atomic_load(&r.ok),
                  (long)atomic_load(&r.removed));
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(r.engine, &m), AFSM_OK);
    assert_int_equal(m.token_validations[AFSM_TOKEN_OK], (uint64_t)atomic_load(&r.ok));
    assert_int_equal(m.token_validations[AFSM_TOKEN_REMOVED_KEY], (uint64_t)atomic_load(&r.removed));
    /* Only the last key is left, and it seals. */
    assert_int_equal(afsm_key_remove(r.engine, RING_ROUNDS), AFSM_EKEYINUSE);
    assert_int_equal(afsm_key_use(r.engine, RING_ROUNDS - 1), AFSM_EKEYNOTFOUND);
    assert_int_equal(afsm_engine_close(r.engine), AFSM_OK);
}

#define MERGERS    2
#define MERGE_KEYS 24
#define ROTATIONS  200

typedef struct merge_race {
    afsm_engine *engine;
    afsm_uuid session;
    _Atomic long started, done;
    uint32_t best_generation;
    char best_token[AFSM_TOKEN_SIZE];
    size_t best_len;
    pthread_mutex_t best_lock;
} merge_race;

typedef struct merger {
    merge_race *r;
    int index;
} merger;

/* "Two threads merging different keys at once both land", while a third
 * rotates the token generation and a fourth reads lock-free. */
static void *merge_thread(void *arg)
{
    merger *m = arg;
    atomic_fetch_add(&m->r->started, 1);
    spin_until(&m->r->started, MERGERS + 2, 5);
    for (int k = 0; k < MERGE_KEYS; k++) {
        char key[16], value[16];
        snprintf(key, sizeof(key), "t%d-k%02d", m->index, k);
        snprintf(value, sizeof(value), "v%d", k);
        afsm_kv kv = {key, strlen(key), value, strlen(value)};
        afsm_update up = AFSM_UPDATE_INIT;
        up.fields = AFSM_UPDATE_METADATA_MERGE;
        up.metadata = &kv;
        up.metadata_count = 1;
        THREAD_CHECK(afsm_session_update(m->r->engine, &m->r->session, &up, NULL) == AFSM_OK);
    }
    atomic_fetch_add(&m->r->done, 1);
    return NULL;
}

static void *rotate_thread(void *arg)
{
    merge_race *r = arg;
    atomic_fetch_add(&r->started, 1);
    spin_until(&r->started, MERGERS + 2, 5);
    for (int i = 0; i < ROTATIONS; i++) {
        char token[AFSM_TOKEN_SIZE];
        size_t len = 0;
        THREAD_CHECK(afsm_token_rotate(r->engine, &r->session, 0, token, sizeof(token), &len) == AFSM_OK);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_token_validate(r->engine, token, len, NULL, 0, &info);
        /* Revoked only by a later rotation, which another thread made. */
        THREAD_CHECK(st == AFSM_OK || st == AFSM_EREVOKED);
        pthread_mutex_lock(&r->best_lock);
        if (st == AFSM_OK && info.token_generation > r->best_generation) {
            r->best_generation = info.token_generation;
            memcpy(r->best_token, token, len);
            r->best_len = len;
        }
        pthread_mutex_unlock(&r->best_lock);
    }
    atomic_fetch_add(&r->done, 1);
    return NULL;
}

static void *read_thread(void *arg)
{
    merge_race *r = arg;
    atomic_fetch_add(&r->started, 1);
    spin_until(&r->started, MERGERS + 2, 5);
    uint64_t deadline = real_ns() + 5 * SEC;
    size_t last_count = 0;
    while (atomic_load(&r->done) < MERGERS + 1 && real_ns() < deadline) {
        char buf[AFSM_METADATA_BYTES_MAX + 2 * AFSM_METADATA_KEYS_MAX];
        size_t needed = 0, count = 0;
        THREAD_CHECK(afsm_session_get_metadata(r->engine, &r->session, buf, sizeof(buf), &needed, &count) == AFSM_OK);
        THREAD_CHECK(count >= last_count); /* keys are only added */
        /* Pairs in key order, each NUL-terminated, filling needed exactly. */
        size_t at = 0, pairs = 0;
        const char *previous = NULL;
        while (at < needed) {
            const char *key = buf + at;
            at += strlen(key) + 1;
            at += strlen(buf + at) + 1;
            THREAD_CHECK(previous == NULL || strcmp(previous, key) < 0);
            previous = key;
            pairs++;
        }
        THREAD_CHECK(at == needed && pairs == count);
        last_count = count;
    }
    return NULL;
}

static void test_concurrent_merges_rotations_and_reads(void **state)
{
    (void)state;
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    static merge_race r;
    memset(&r, 0, sizeof(r));
    pthread_mutex_init(&r.best_lock, NULL);
    assert_int_equal(afsm_engine_open(&cfg, &r.engine), AFSM_OK);
    r.session = create_session(r.engine, "merge").session_id;
    pthread_t threads[MERGERS + 2];
    merger m[MERGERS];
    for (int i = 0; i < MERGERS; i++) {
        m[i] = (merger){&r, i};
        assert_int_equal(pthread_create(&threads[i], NULL, merge_thread, &m[i]), 0);
    }
    assert_int_equal(pthread_create(&threads[MERGERS], NULL, rotate_thread, &r), 0);
    assert_int_equal(pthread_create(&threads[MERGERS + 1], NULL, read_thread, &r), 0);
    for (int i = 0; i < MERGERS + 2; i++)
        pthread_join(threads[i], NULL);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(r.engine, &r.session, &info), AFSM_OK);
    assert_int_equal(info.metadata_count, MERGERS * MERGE_KEYS);
    assert_int_equal(info.token_generation, 1 + ROTATIONS);
    /* The last rotation's token is the one that validates. */
    assert_int_equal(r.best_generation, 1 + ROTATIONS);
    assert_int_equal(afsm_token_validate(r.engine, r.best_token, r.best_len, NULL, 0, NULL), AFSM_OK);
    engine_check_indexes(r.engine, 0);
    assert_int_equal(afsm_engine_close(r.engine), AFSM_OK);
    pthread_mutex_destroy(&r.best_lock);
}

typedef struct timeout_race {
    afsm_engine *engine;
    _Atomic long creators_done;
} timeout_race;

static void *flip_default_timeout(void *arg)
{
    timeout_race *r = arg;
    uint64_t deadline = real_ns() + 5 * SEC;
    for (unsigned i = 0; atomic_load(&r->creators_done) < 2 && real_ns() < deadline; i++)
        THREAD_CHECK(afsm_engine_set_default_timeout(r->engine, i % 2 ? 10000 : 20000) == AFSM_OK);
    return NULL;
}

static void *create_with_default(void *arg)
{
    timeout_race *r = arg;
    for (int i = 0; i < 2000; i++) {
        afsm_uuid conn;
        afsm_create_options o = make_options(i % 2 ? "t1" : "t2", "10.0.0.9", &conn);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        THREAD_CHECK(afsm_session_create(r->engine, &o, &info) == AFSM_OK);
        /* One of the two defaults, whole: never a torn or stale-beyond-both value. */
        THREAD_CHECK(info.timeout_ms == 10000 || info.timeout_ms == 20000);
        THREAD_CHECK(info.expires_at_ns - info.last_active_at_ns == (int64_t)info.timeout_ms * 1000000);
    }
    atomic_fetch_add(&r->creators_done, 1);
    return NULL;
}

/* afsm_engine_set_default_timeout while other threads create with the
 * default: each session gets one of the values set. */
static void test_concurrent_default_timeout_changes(void **state)
{
    (void)state;
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.default_timeout_ms = 20000;
    static timeout_race r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(afsm_engine_open(&cfg, &r.engine), AFSM_OK);
    pthread_t t[3];
    assert_int_equal(pthread_create(&t[0], NULL, flip_default_timeout, &r), 0);
    assert_int_equal(pthread_create(&t[1], NULL, create_with_default, &r), 0);
    assert_int_equal(pthread_create(&t[2], NULL, create_with_default, &r), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(live_sessions(r.engine), 4000);
    engine_check_indexes(r.engine, 0);
    assert_int_equal(afsm_engine_close(r.engine), AFSM_OK);
}

/* ---- event callbacks ------------------------------------------------------------- */

typedef struct callback_ctx {
    afsm_engine *engine;
    int depth;
    size_t events, calls;
    afsm_status worst;
} callback_ctx;

static void note(callback_ctx *c, afsm_status st)
{
    c->calls++;
    if (st != AFSM_OK && st != AFSM_ENOTFOUND && st != AFSM_EEXPIRED && st != AFSM_EEXISTS && st != AFSM_ECLOSED)
        c->worst = st;
}

/* "It may call any afsm_session_* function of the same engine, and
 * afsm_engine_advance": the less common ones, from every kind of event. */
static void every_call_event(void *arg, const afsm_event *ev)
{
    callback_ctx *c = arg;
    c->events++;
    if (c->depth > 0)
        return;
    c->depth++;
    afsm_engine *e = c->engine;
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.limit = 4;
    afsm_session_info out[4];
    for (int i = 0; i < 4; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    size_t count = 0;
    uint64_t total = 0, now = 0, remaining[1];
    note(c, afsm_session_list(e, &f, out, 4, &count, &total, NULL));
    afsm_status statuses[1];
    note(c, afsm_session_get_batch(e, &ev->session_id, 1, out, statuses));
    note(c, afsm_session_heartbeat_batch(e, &ev->session_id, 1, remaining, statuses));
    afsm_stats d = {.packets_received = 1};
    note(c, afsm_session_add_stats_batch(e, &ev->session_id, &d, 1, statuses));
    char buf[64];
    size_t needed;
    note(c, afsm_session_get_metadata(e, &ev->session_id, buf, sizeof(buf), &needed, NULL));
    char token[AFSM_TOKEN_SIZE];
    note(c, afsm_token_issue(e, &ev->session_id, 0, token, sizeof(token), NULL));
    if (ev->type == AFSM_EVENT_DELETED || ev->type == AFSM_EVENT_EXPIRED) {
        char user[AFSM_USER_ID_MAX + 1];
        memcpy(user, ev->user_id, ev->user_id_len);
        size_t deleted = 0;
        note(c, afsm_session_delete_by_user(e, user, ev->user_id_len, "from a callback", 15, &deleted));
    }
    afsm_engine_now(e, &now);
    size_t n;
    note(c, afsm_engine_advance(e, now, &n));
    c->depth--;
}

static void test_callbacks_may_call_session_functions(void **state)
{
    (void)state;
    static callback_ctx c;
    memset(&c, 0, sizeof(c));
    virtual_clock clock;
    afsm_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.on_event = every_call_event;
    cfg.event_ctx = &c;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    c.engine = engine;
    afsm_session_info a = create_session(engine, "cb");
    create_session(engine, "cb");
    afsm_session_info b = create_session(engine, "cb2");
    uint64_t remaining;
    assert_int_equal(afsm_session_heartbeat(engine, &b.session_id, &remaining), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &a.session_id, NULL, 0), AFSM_OK);
    virtual_clock_set(&clock, virtual_clock_read(&clock) + 3600 * SEC);
    size_t n;
    assert_int_equal(afsm_engine_advance(engine, virtual_clock_read(&clock), &n), AFSM_OK);
    assert_int_equal(c.worst, AFSM_OK);
    assert_true(c.events >= 5 && c.calls > 0);
    assert_int_equal(live_sessions(engine), 0);
    engine_check_indexes(engine, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- the audit's leftovers (session 10) ------------------------------------------ */

static afsm_engine *open_capped(virtual_clock *clock, uint32_t cap, uint32_t policy, uint64_t linger_ms)
{
    afsm_config cfg;
    virtual_config(clock, &cfg);
    cfg.shard_count = 8;
    cfg.max_sessions_per_user = cap;
    cfg.limit_policy = policy;
    cfg.close_linger_ms = linger_ms;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

/* Evict-oldest keeps a user's newest sessions: restoring a copy older than
 * every session of a full user would evict a newer, live one for an older
 * one, so it is refused (AFSM_ELIMIT, a detail, nothing changed). A copy
 * newer than the oldest still evicts the oldest, as a create does. */
static void test_restore_older_than_a_full_user_is_refused(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_capped(&clock, 2, AFSM_LIMIT_EVICT_OLDEST, 0);
    afsm_session_info a = create_session(engine, "cap");
    afsm_session_info b = create_session(engine, "cap");
    afsm_session_info c = create_session(engine, "cap"); /* evicts a */
    afsm_session_info now = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &a.session_id, &now), AFSM_ENOTFOUND);
    engine_picture before = picture(engine);
    expect_detail(afsm_session_restore(engine, &a, NULL, 0), AFSM_ELIMIT, "older than", "2");
    assert_int_equal(afsm_session_get(engine, &b.session_id, &now), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &c.session_id, &now), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &a.session_id, &now), AFSM_ENOTFOUND);
    assert_unchanged(engine, &before);

    /* A copy newer than the oldest (b) evicts b. */
    assert_int_equal(afsm_session_delete(engine, &c.session_id, NULL, 0), AFSM_OK);
    afsm_session_info d = create_session(engine, "cap");
    assert_int_equal(afsm_session_restore(engine, &c, NULL, 0), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &b.session_id, &now), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_get(engine, &c.session_id, &now), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &d.session_id, &now), AFSM_OK);
    engine_check_indexes(engine, 2);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* What a get of id answers once the engine has advanced to at_ns. */
static afsm_status get_after_advance(afsm_engine *engine, virtual_clock *clock, const afsm_uuid *id, uint64_t at_ns)
{
    virtual_clock_set(clock, at_ns);
    assert_int_equal(afsm_engine_advance(engine, at_ns, NULL), AFSM_OK);
    afsm_session_info now = AFSM_SESSION_INFO_INIT;
    return afsm_session_get(engine, id, &now);
}

/* A restored CLOSED copy lingers what was left of its linger, counted from
 * when it closed (its last_active_at_ns), not from the restore. */
static void test_restored_closed_copy_lingers_only_what_was_left(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_capped(&clock, 0, AFSM_LIMIT_REJECT, 5000);
    afsm_session_info s = create_session(engine, "linger"); /* at 1000 s */
    virtual_clock_set(&clock, 1001 * SEC);
    afsm_update up = AFSM_UPDATE_INIT;
    up.fields = AFSM_UPDATE_STATE;
    up.state = AFSM_STATE_CLOSED;
    afsm_session_info closed = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &up, &closed), AFSM_OK); /* lingers to 1006 s */
    assert_int_equal(closed.state, AFSM_STATE_CLOSED);
    assert_int_equal(closed.last_active_at_ns - s.created_at_ns, 1 * (int64_t)SEC); /* when it closed */

    virtual_clock_set(&clock, 1003 * SEC);
    afsm_session_info copy = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &copy), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(afsm_session_restore(engine, &copy, NULL, 0), AFSM_OK);
    assert_int_equal(get_after_advance(engine, &clock, &s.session_id, 1005 * SEC + 500 * MS), AFSM_OK);
    /* 5 s after it closed (and a tick): gone, not 5 s after the restore. */
    assert_int_equal(get_after_advance(engine, &clock, &s.session_id, 1006 * SEC + 300 * MS), AFSM_ENOTFOUND);
    /* A copy that closed longer ago than the linger (in wall time, as
     * copies state it: 6 s before this one) is of a session already gone. */
    afsm_session_info gone = copy;
    gone.created_at_ns -= 6 * (int64_t)SEC;
    gone.last_active_at_ns -= 6 * (int64_t)SEC;
    engine_picture before = picture(engine);
    assert_int_equal(afsm_session_restore(engine, &gone, NULL, 0), AFSM_EEXPIRED);
    assert_unchanged(engine, &before);
    engine_check_indexes(engine, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A closed copy whose close lies ahead of this engine's clock (a node
 * whose clock runs ahead, a copy edited by hand) lingers at most a whole
 * close_linger_ms from the restore, as before c829502: a closed session
 * stays readable close_linger_ms (afsm.h), never longer. With no linger,
 * it is gone already (AFSM_EEXPIRED, nothing done). */
static void test_restored_closed_copy_from_the_future_lingers_no_longer(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_capped(&clock, 0, AFSM_LIMIT_REJECT, 5000);
    afsm_session_info s = create_session(engine, "ahead");
    afsm_update up = AFSM_UPDATE_INIT;
    up.fields = AFSM_UPDATE_STATE;
    up.state = AFSM_STATE_CLOSED;
    afsm_session_info closed = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &up, &closed), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    afsm_session_info ahead = closed;
    ahead.last_active_at_ns += 3600 * (int64_t)SEC; /* closes an hour from now */
    assert_int_equal(afsm_session_restore(engine, &ahead, NULL, 0), AFSM_OK);
    assert_int_equal(get_after_advance(engine, &clock, &s.session_id, 1004 * SEC), AFSM_OK);
    assert_int_equal(get_after_advance(engine, &clock, &s.session_id, 1005 * SEC + 300 * MS), AFSM_ENOTFOUND);
    engine_check_indexes(engine, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);

    engine = open_capped(&clock, 0, AFSM_LIMIT_REJECT, 0);
    engine_picture before = picture(engine);
    assert_int_equal(afsm_session_restore(engine, &ahead, NULL, 0), AFSM_EEXPIRED);
    assert_unchanged(engine, &before);
    engine_check_indexes(engine, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Closing stamps last-active only forward (as activation does): a
 * session whose last activity is ahead of the clock (a copy from a node
 * whose clock runs ahead) keeps it, so created <= last active still holds
 * in the copy the close returns. */
static void test_close_never_moves_last_active_back(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_capped(&clock, 0, AFSM_LIMIT_REJECT, 5000);
    afsm_session_info s = create_session(engine, "ahead");
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    afsm_session_info ahead = s;
    ahead.state = AFSM_STATE_ACTIVE;
    ahead.created_at_ns += 5 * (int64_t)SEC;
    ahead.last_active_at_ns += 10 * (int64_t)SEC;
    assert_int_equal(afsm_session_restore(engine, &ahead, NULL, 0), AFSM_OK);
    afsm_update up = AFSM_UPDATE_INIT;
    up.fields = AFSM_UPDATE_STATE;
    up.state = AFSM_STATE_CLOSED;
    afsm_session_info closed = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &up, &closed), AFSM_OK);
    assert_int_equal(closed.state, AFSM_STATE_CLOSED);
    assert_int_equal(closed.last_active_at_ns, ahead.last_active_at_ns);
    assert_true(closed.created_at_ns <= closed.last_active_at_ns);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A NULL user_id with a length is a NULL pointer, not "every user". */
static void test_list_null_user_id_with_a_length(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    create_session(engine, "one");
    afsm_session_info out[4];
    for (int i = 0; i < 4; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.limit = 4;
    f.user_id = NULL;
    f.user_id_len = 5;
    size_t count = 99;
    uint64_t total = 99;
    expect_detail(afsm_session_list(engine, &f, out, 4, &count, &total, NULL), AFSM_ENULL, "filter.user_id", "5");
    f.user_id_len = 0; /* NULL and 0: every user */
    assert_int_equal(afsm_session_list(engine, &f, out, 4, &count, &total, NULL), AFSM_OK);
    assert_int_equal(count, 1);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

#define OOM_THREADS_MAX 4096

typedef struct validate_call {
    afsm_engine *engine;
    const char *token;
    size_t len;
    _Atomic afsm_status status; /* 1 until the call returned: the main thread waits on it */
    pthread_mutex_t *lock;
    pthread_cond_t *release;
    int *released;
} validate_call;

/* A thread's first call into the engine takes an epoch record: one a
 * finished thread left behind, or a new allocation, which this makes fail.
 * A thread that got a left-over record keeps it until it is released, so
 * the next thread's call finds one fewer. */
static void *validate_out_of_memory(void *arg)
{
    validate_call *c = arg;
    alloc_fail_after_on_this_thread(0);
    atomic_store_explicit(&c->status, afsm_token_validate(c->engine, c->token, c->len, NULL, 0, NULL),
                          memory_order_release);
    alloc_fail_after_on_this_thread(-1);
    pthread_mutex_lock(c->lock);
    while (!*c->released)
        pthread_cond_wait(c->release, c->lock);
    pthread_mutex_unlock(c->lock);
    return NULL;
}

static uint64_t validations_total(const afsm_metrics *m)
{
    uint64_t sum = 0;
    for (int i = 0; i < AFSM_TOKEN_RESULT_COUNT; i++)
        sum += m->token_validations[i];
    return sum;
}

/* Out of memory is not a malformed token: AFSM_ENOMEM, and no outcome
 * counted (the token was never judged). */
static void test_token_validation_out_of_memory(void **state)
{
    (void)state;
    afsm_engine *engine = open_with_key(1, 0x42);
    afsm_session_info s = create_session(engine, "oom");
    char token[AFSM_TOKEN_SIZE];
    size_t len = 0;
    assert_int_equal(afsm_token_issue(engine, &s.session_id, 0, token, sizeof(token), &len), AFSM_OK);
    afsm_metrics before = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &before), AFSM_OK);

    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t release = PTHREAD_COND_INITIALIZER;
    int released = 0;
    static validate_call calls[OOM_THREADS_MAX];
    static pthread_t threads[OOM_THREADS_MAX];
    size_t started = 0, ok = 0;
    afsm_status last = AFSM_OK;
    pthread_attr_t small; /* many threads may wait at once */
    assert_int_equal(pthread_attr_init(&small), 0);
    assert_int_equal(pthread_attr_setstacksize(&small, 256 * 1024), 0);
    /* Until a thread finds no left-over record (each validates once). */
    while (started < OOM_THREADS_MAX && last == AFSM_OK) {
        validate_call *c = &calls[started];
        *c = (validate_call){.engine = engine,
                             .token = token,
                             .len = len,
                             .status = 1,
                             .lock = &lock,
                             .release = &release,
                             .released = &released};
        assert_int_equal(pthread_create(&threads[started], &small, validate_out_of_memory, c), 0);
        started++;
        while ((last = atomic_load_explicit(&c->status, memory_order_acquire)) == 1) {
        }
        ok += last == AFSM_OK;
    }
    pthread_mutex_lock(&lock);
    released = 1;
    pthread_cond_broadcast(&release);
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    pthread_attr_destroy(&small);
    assert_int_equal(last, AFSM_ENOMEM);
    afsm_metrics after = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &after), AFSM_OK);
    assert_int_equal(after.token_validations[AFSM_TOKEN_MALFORMED], before.token_validations[AFSM_TOKEN_MALFORMED]);
    assert_int_equal(after.token_validations[AFSM_TOKEN_OK], before.token_validations[AFSM_TOKEN_OK] + ok);
    assert_int_equal(validations_total(&after), validations_total(&before) + ok);
    assert_int_equal(afsm_token_validate(engine, token, len, NULL, 0, NULL), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* The 4096-byte bound is on what is stored: duplicate keys merged (the
 * last wins) before it is counted, for every call that takes metadata. */
static void test_metadata_bound_after_duplicates_merge(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    static char x[3000], y[3096];
    memset(x, 'x', sizeof(x));
    memset(y, 'y', sizeof(y));
    /* 5002 bytes given, 2001 stored. */
    afsm_kv fits[] = {{"k", 1, x, 3000}, {"k", 1, y, 2000}};
    afsm_session_info s = create_with_metadata(engine, "dup", fits, 2);
    assert_int_equal(s.metadata_count, 1);
    afsm_session_info r = AFSM_SESSION_INFO_INIT;
    afsm_update up = AFSM_UPDATE_INIT;
    up.fields = AFSM_UPDATE_METADATA_REPLACE;
    up.metadata = fits;
    up.metadata_count = 2;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &up, &r), AFSM_OK);
    up.fields = AFSM_UPDATE_METADATA_MERGE;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &up, &r), AFSM_OK);
    assert_int_equal(r.metadata_count, 1);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(afsm_session_restore(engine, &s, fits, 2), AFSM_OK);

    /* Stored 3097 + 1001 = 4098: refused, the detail says both numbers. */
    afsm_kv over[] = {{"a", 1, x, 3000}, {"b", 1, x, 1000}, {"a", 1, y, 3096}};
    engine_picture before = picture(engine);
    afsm_uuid conn;
    afsm_create_options o = make_options("dup", "192.168.1.100", &conn);
    o.metadata = over;
    o.metadata_count = 3;
    expect_detail(afsm_session_create(engine, &o, NULL), AFSM_ETOOLONG, "metadata", "4098", "4096");
    up.fields = AFSM_UPDATE_METADATA_REPLACE;
    up.metadata = over;
    up.metadata_count = 3;
    expect_detail(afsm_session_update(engine, &s.session_id, &up, NULL), AFSM_ETOOLONG, "4098", "4096");
    assert_unchanged(engine, &before);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A key file must be its owner's: ssh's rule for private keys. Owned by
 * root or by this process's effective user, no group or other bits. */
static void test_key_file_owner(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip(); /* chown to another uid needs root (CI runs as root) */
    char dir[] = "/tmp/afsm-contract-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof(path), "%s/key", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    uint8_t key[AFSM_KEY_BYTES];
    memset(key, 7, sizeof(key));
    assert_int_equal(write(fd, key, sizeof(key)), (ssize_t)sizeof(key));
    close(fd);
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);

    int chowned = chown(path, 4242, 4242);
    afsm_status other = afsm_key_add_file(engine, 3, path, strlen(path));
    char detail[AFSM_ERROR_DETAIL_MAX];
    snprintf(detail, sizeof(detail), "%s", afsm_error_detail());
    afsm_status opened = AFSM_OK;
    afsm_engine *refused = NULL;
    if (chowned == 0) {
        afsm_config kc = cfg;
        kc.key_file = path;
        kc.key_file_len = strlen(path);
        kc.key_id = 4;
        opened = afsm_engine_open(&kc, &refused);
    }
    int back = chown(path, 0, 0);
    afsm_status group_writable = AFSM_OK, own = AFSM_OK;
    if (back == 0 && chmod(path, 0620) == 0) {
        group_writable = afsm_key_add_file(engine, 5, path, strlen(path));
        assert_int_equal(chmod(path, 0600), 0);
        own = afsm_key_add_file(engine, 6, path, strlen(path));
    }
    unlink(path);
    rmdir(dir);
    assert_int_equal(chowned, 0);
    assert_int_equal(back, 0);
    assert_int_equal(other, AFSM_EKEYFILE);
    if (strstr(detail, path) == NULL || strstr(detail, "owned by uid 4242") == NULL)
        fail_msg("detail \"%s\" lacks the path or the owner", detail);
    assert_int_equal(opened, AFSM_EKEYFILE);
    assert_null(refused);
    assert_int_equal(afsm_key_use(engine, 3), AFSM_EKEYNOTFOUND);
    assert_int_equal(group_writable, AFSM_EKEYFILE);
    assert_int_equal(own, AFSM_OK);
    assert_int_equal(afsm_key_use(engine, 6), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: it needs as many threads as earlier tests' threads left
         * epoch records behind (thousands by the end of this program). */
        cmocka_unit_test(test_token_validation_out_of_memory),
        cmocka_unit_test(test_detail_names_the_argument),
        cmocka_unit_test(test_batch_detail_names_the_element),
        cmocka_unit_test(test_versions_zero_and_future),
        cmocka_unit_test(test_bounds_at_and_past),
        cmocka_unit_test(test_get_metadata_buffer_sizes),
        cmocka_unit_test(test_prometheus_buffer_sizes),
        cmocka_unit_test(test_merge_past_the_bounds),
        cmocka_unit_test(test_restore_normalises_a_mapped_ip),
        cmocka_unit_test(test_restore_limits),
        cmocka_unit_test(test_foreign_and_damaged_tokens),
        cmocka_unit_test(test_list_edges),
        cmocka_unit_test(test_config_limits),
        cmocka_unit_test(test_refused_writes_leave_the_engine_unchanged),
        cmocka_unit_test(test_advance_refuses_a_future_reading),
        cmocka_unit_test(test_key_file_fifo_does_not_block),
        cmocka_unit_test(test_concurrent_key_rotation_and_validation),
        cmocka_unit_test(test_concurrent_merges_rotations_and_reads),
        cmocka_unit_test(test_concurrent_default_timeout_changes),
        cmocka_unit_test(test_callbacks_may_call_session_functions),
        cmocka_unit_test(test_restore_older_than_a_full_user_is_refused),
        cmocka_unit_test(test_restored_closed_copy_lingers_only_what_was_left),
        cmocka_unit_test(test_restored_closed_copy_from_the_future_lingers_no_longer),
        cmocka_unit_test(test_close_never_moves_last_active_back),
        cmocka_unit_test(test_list_null_user_id_with_a_length),
        cmocka_unit_test(test_metadata_bound_after_duplicates_merge),
        cmocka_unit_test(test_key_file_owner),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
