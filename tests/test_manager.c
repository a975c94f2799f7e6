/*
 * test_manager.c: the public session API end to end on the in-memory store,
 * in virtual time (manual reaper, injected clock): what a caller relies on.
 */
#include "test_support.h"

#include "util/alloc.h"

static virtual_clock vclock;

static void assert_counts(afsm_engine *engine, uint64_t total)
{
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, total);
}

static void test_create_and_get(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_uuid conn;
    afsm_create_options o = make_options("user123", "192.168.1.100", &conn);
    afsm_kv md[2] = {{"device", 6, "mobile", 6}, {"version", 7, "1.0.0", 5}};
    o.metadata = md;
    o.metadata_count = 2;
    afsm_session_info created = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_create(engine, &o, &created), AFSM_OK);

    assert_int_equal(created.state, AFSM_STATE_CONNECTING);
    assert_string_equal(created.user_id, "user123");
    assert_int_equal(created.user_id_len, 7);
    assert_string_equal(created.server_addr, "10.0.0.1:7000");
    assert_int_equal(created.client_port, 54321);
    assert_int_equal(created.client_ip.family, 4);
    assert_memory_equal(created.client_ip.bytes, "\xc0\xa8\x01\x64", 4);
    assert_memory_equal(&created.connection_id, &conn, sizeof(conn));
    assert_int_equal(created.session_id.bytes[6] >> 4, 7); /* UUIDv7 */
    assert_int_equal(created.timeout_ms, 30 * 60 * 1000);
    assert_int_equal(created.expires_at_ns - created.last_active_at_ns, 30 * 60 * SEC);
    assert_int_equal(created.metadata_count, 2);
    assert_int_equal(created.stats.packets_sent, 0);

    afsm_session_info got = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &created.session_id, &got), AFSM_OK);
    assert_memory_equal(&got.session_id, &created.session_id, 16);
    assert_string_equal(got.user_id, "user123");

    afsm_session_info by_conn = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get_by_connection(engine, &conn, &by_conn), AFSM_OK);
    assert_memory_equal(&by_conn.session_id, &created.session_id, 16);

    char buf[64];
    size_t needed = 0, count = 0;
    assert_int_equal(afsm_session_get_metadata(engine, &created.session_id, buf, 4, &needed, &count), AFSM_EBUFFER);
    assert_int_equal(needed, sizeof("device\0mobile\0version\0"
                                    "1.0.0"));
    assert_int_equal(afsm_session_get_metadata(engine, &created.session_id, buf, sizeof(buf), &needed, &count),
                     AFSM_OK);
    assert_int_equal(count, 2);
    assert_memory_equal(buf,
                        "device\0mobile\0version\0"
                        "1.0.0\0",
                        needed);

    assert_counts(engine, 1);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

static void test_duplicate_connection_refused(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_uuid conn;
    afsm_create_options o = make_options("u", "10.1.2.3", &conn);
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_OK);
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EEXISTS);
    assert_counts(engine, 1);
    afsm_engine_close(engine);
}

static void test_bad_input_gets_its_own_status(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_uuid conn;
    afsm_create_options good = make_options("user", "::1", &conn);
    afsm_create_options o;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;

    assert_int_equal(afsm_session_create(NULL, &good, NULL), AFSM_ENULL);
    assert_int_equal(afsm_session_create(engine, NULL, NULL), AFSM_ENULL);
    o = good;
    o.version = 99;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EVERSION);
    afsm_session_info bad_info = info;
    bad_info.version = 7;
    assert_int_equal(afsm_session_create(engine, &good, &bad_info), AFSM_EVERSION);

    char long_user[AFSM_USER_ID_MAX + 2];
    memset(long_user, 'x', sizeof(long_user));
    o = good;
    o.user_id = long_user;
    o.user_id_len = AFSM_USER_ID_MAX + 1;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_ETOOLONG);
    o.user_id_len = 0;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EINVAL);
    o.user_id = NULL;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_ENULL);

    o = good;
    o.client_ip = "256.1.1.1";
    o.client_ip_len = strlen(o.client_ip);
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EIP);
    o.client_ip = "1.2.3.4:80";
    o.client_ip_len = strlen(o.client_ip);
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EIP);

    o = good;
    o.client_port = 65536;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EINVAL);

    o = good;
    memset(&o.connection_id, 0, sizeof(o.connection_id));
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EUUID);

    afsm_kv many[AFSM_METADATA_KEYS_MAX + 1];
    char keys[AFSM_METADATA_KEYS_MAX + 1][8];
    for (int i = 0; i <= AFSM_METADATA_KEYS_MAX; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        many[i] = (afsm_kv){keys[i], strlen(keys[i]), "v", 1};
    }
    o = good;
    o.metadata = many;
    o.metadata_count = AFSM_METADATA_KEYS_MAX + 1;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_ETOOLONG);
    static char big[AFSM_METADATA_BYTES_MAX];
    memset(big, 'b', sizeof(big));
    afsm_kv too_big = {"k", 1, big, sizeof(big)};
    o.metadata = &too_big;
    o.metadata_count = 1;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_ETOOLONG);
    afsm_kv nul = {"k", 1, "a\0b", 3};
    o.metadata = &nul;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_EINVAL);

    afsm_uuid parsed;
    assert_int_equal(afsm_uuid_parse("not-a-uuid", 10, &parsed), AFSM_EUUID);

    /* Nothing above changed the engine. */
    assert_counts(engine, 0);
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    afsm_session_info page[4];
    for (int i = 0; i < 4; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    size_t n;
    uint64_t total;
    f.limit = 4;
    assert_int_equal(afsm_session_list(engine, &f, page, 4, &n, &total, NULL), AFSM_OK);
    assert_int_equal(total, 0);
    f.limit = AFSM_LIST_LIMIT_MAX + 1;
    assert_int_equal(afsm_session_list(engine, &f, page, 4, &n, &total, NULL), AFSM_EINVAL);
    f.limit = 4;
    f.state = 9;
    assert_int_equal(afsm_session_list(engine, &f, page, 4, &n, &total, NULL), AFSM_EINVAL);

    afsm_update u = AFSM_UPDATE_INIT;
    afsm_session_info s = create_session(engine, "someone");
    u.fields = AFSM_UPDATE_STATE;
    u.state = 42;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_EINVAL);
    u.fields = 0x80;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_EINVAL);
    u.fields = AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_METADATA_REPLACE;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_EINVAL);
    afsm_session_info after = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &after), AFSM_OK);
    assert_int_equal(after.state, AFSM_STATE_CONNECTING);

    afsm_config cfg = AFSM_CONFIG_INIT;
    afsm_engine *other = NULL;
    cfg.shard_count = 3;
    assert_int_equal(afsm_engine_open(&cfg, &other), AFSM_EINVAL);
    cfg.shard_count = 0;
    cfg.version = AFSM_CONFIG_VERSION + 1;
    assert_int_equal(afsm_engine_open(&cfg, &other), AFSM_EVERSION);
    assert_null(other);
    afsm_engine_close(engine);
}

static void test_state_transitions(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "u");
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    struct {
        uint32_t to;
        afsm_status want;
    } steps[] = {
        {AFSM_STATE_IDLE, AFSM_ETRANSITION},
        {AFSM_STATE_DISCONNECTING, AFSM_ETRANSITION},
        {AFSM_STATE_ACTIVE, AFSM_OK},
        {AFSM_STATE_CONNECTING, AFSM_ETRANSITION},
        {AFSM_STATE_IDLE, AFSM_OK},
        {AFSM_STATE_ACTIVE, AFSM_OK},
        {AFSM_STATE_ACTIVE, AFSM_OK},
        /* no-op */ {AFSM_STATE_DISCONNECTING, AFSM_OK},
        {AFSM_STATE_ACTIVE, AFSM_ETRANSITION},
        {AFSM_STATE_CLOSED, AFSM_OK},
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        u.state = steps[i].to;
        afsm_session_info out = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_update(engine, &s.session_id, &u, &out), steps[i].want);
        if (steps[i].want == AFSM_OK)
            assert_int_equal(out.state, steps[i].to);
    }
    /* Closing removed it from every index. */
    afsm_session_info gone = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &gone), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_get_by_connection(engine, &s.connection_id, &gone), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_ENOTFOUND);
    assert_counts(engine, 0);
    afsm_engine_close(engine);
}

static void test_metadata_merge_and_replace(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "u");
    afsm_update u = AFSM_UPDATE_INIT;
    afsm_kv first[2] = {{"b", 1, "2", 1}, {"a", 1, "1", 1}};
    u.fields = AFSM_UPDATE_METADATA_MERGE;
    u.metadata = first;
    u.metadata_count = 2;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    afsm_kv second[2] = {{"c", 1, "3", 1}, {"a", 1, "one", 3}};
    u.metadata = second;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    char buf[64];
    size_t needed, count;
    assert_int_equal(afsm_session_get_metadata(engine, &s.session_id, buf, sizeof(buf), &needed, &count), AFSM_OK);
    assert_int_equal(count, 3);
    assert_memory_equal(buf,
                        "a\0one\0b\0"
                        "2\0c\0"
                        "3\0",
                        needed);

    u.fields = AFSM_UPDATE_METADATA_REPLACE;
    u.metadata = second;
    u.metadata_count = 1;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    assert_int_equal(afsm_session_get_metadata(engine, &s.session_id, buf, sizeof(buf), &needed, &count), AFSM_OK);
    assert_int_equal(count, 1);
    assert_memory_equal(buf,
                        "c\0"
                        "3\0",
                        needed);

    /* A merge that would exceed the bound is refused whole. */
    static char half[AFSM_METADATA_BYTES_MAX / 2 + 1];
    memset(half, 'h', sizeof(half));
    afsm_kv big1 = {"x", 1, half, sizeof(half) - 2};
    afsm_kv big2 = {"y", 1, half, sizeof(half) - 2};
    u.fields = AFSM_UPDATE_METADATA_MERGE;
    u.metadata = &big1;
    u.metadata_count = 1;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    u.metadata = &big2;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_ETOOLONG);
    assert_int_equal(afsm_session_get_metadata(engine, &s.session_id, NULL, 0, &needed, &count), AFSM_EBUFFER);
    assert_int_equal(count, 2);
    afsm_engine_close(engine);
}

static void test_stats_set_and_add(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "u");
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATS;
    u.stats = (afsm_stats){10, 20, 1000, 2000, 1, 35, 0};
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    afsm_stats delta = {1, 2, 100, 200, 3, 0, 0};
    assert_int_equal(afsm_session_add_stats(engine, &s.session_id, &delta), AFSM_OK);
    afsm_session_info got = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &got), AFSM_OK);
    assert_int_equal(got.stats.packets_sent, 11);
    assert_int_equal(got.stats.packets_received, 22);
    assert_int_equal(got.stats.bytes_sent, 1100);
    assert_int_equal(got.stats.bytes_received, 2200);
    assert_int_equal(got.stats.retransmissions, 4);
    assert_int_equal(got.stats.current_rtt_ms, 35); /* zero in a delta keeps the RTT */
    delta = (afsm_stats){0, 0, 0, 0, 0, 12, 0};
    assert_int_equal(afsm_session_add_stats(engine, &s.session_id, &delta), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &s.session_id, &got), AFSM_OK);
    assert_int_equal(got.stats.current_rtt_ms, 12);
    afsm_engine_close(engine);
}

static void test_heartbeat_extends_and_expiry(void **state)
{
    (void)state;
    afsm_config cfg = {0};
    cfg.default_timeout_ms = 10000;
    afsm_engine *engine = open_virtual_engine(&vclock, &cfg);
    afsm_session_info s = create_session(engine, "u");
    uint64_t remaining = 0;

    virtual_clock_set(&vclock, 1006 * SEC);
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, &remaining), AFSM_OK);
    assert_int_equal(remaining, 10000);
    /* Advancing past the original deadline does not expire it. */
    virtual_clock_set(&vclock, 1012 * SEC);
    size_t expired = 99;
    assert_int_equal(afsm_engine_advance(engine, 1012 * SEC, &expired), AFSM_OK);
    assert_int_equal(expired, 0);
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, &remaining), AFSM_OK);
    assert_int_equal(remaining, 10000);

    /* Past the deadline a read says expired even before the reaper runs. */
    virtual_clock_set(&vclock, 1022 * SEC);
    afsm_session_info got = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &got), AFSM_EEXPIRED);
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, &remaining), AFSM_EEXPIRED);
    assert_int_equal(afsm_engine_advance(engine, 1022 * SEC, &expired), AFSM_OK);
    assert_int_equal(expired, 1);
    assert_int_equal(afsm_session_get(engine, &s.session_id, &got), AFSM_ENOTFOUND);
    assert_counts(engine, 0);
    afsm_engine_close(engine);
}

static void test_per_session_timeout_and_max_lifetime(void **state)
{
    (void)state;
    afsm_config cfg = {0};
    cfg.max_lifetime_ms = 60000;
    afsm_engine *engine = open_virtual_engine(&vclock, &cfg);
    afsm_uuid conn;
    afsm_create_options o = make_options("u", "1.1.1.1", &conn);
    o.timeout_ms = 20000;
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_create(engine, &o, &s), AFSM_OK);
    assert_int_equal(s.timeout_ms, 20000);
    uint64_t remaining;
    for (uint64_t t = 1010; t <= 1050; t += 10) {
        virtual_clock_set(&vclock, t * SEC);
        assert_int_equal(afsm_engine_advance(engine, t * SEC, NULL), AFSM_OK);
        assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, &remaining), AFSM_OK);
    }
    /* At 1050 s the cap (created + 60 s) leaves 10 s, not 20. */
    assert_int_equal(remaining, 10000);
    virtual_clock_set(&vclock, 1060 * SEC);
    size_t expired;
    assert_int_equal(afsm_engine_advance(engine, 1060 * SEC, &expired), AFSM_OK);
    assert_int_equal(expired, 1);
    assert_int_equal(afsm_engine_set_default_timeout(engine, 0), AFSM_EINVAL);
    assert_int_equal(afsm_engine_set_default_timeout(engine, 5000), AFSM_OK);
    afsm_session_info t = create_session(engine, "v");
    assert_int_equal(t.timeout_ms, 5000);
    afsm_engine_close(engine);
}

static void test_delete_and_delete_by_user(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info a = create_session(engine, "alice");
    afsm_session_info b = create_session(engine, "alice");
    afsm_session_info c = create_session(engine, "bob");
    assert_int_equal(afsm_session_delete(engine, &a.session_id, "user logout", 11), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &a.session_id, NULL, 0), AFSM_ENOTFOUND);
    afsm_session_info got = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get_by_connection(engine, &a.connection_id, &got), AFSM_ENOTFOUND);
    create_session(engine, "alice");
    size_t deleted = 0;
    assert_int_equal(afsm_session_delete_by_user(engine, "alice", 5, "logout everywhere", 17, &deleted), AFSM_OK);
    assert_int_equal(deleted, 2);
    assert_int_equal(afsm_session_get(engine, &b.session_id, &got), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_get(engine, &c.session_id, &got), AFSM_OK);
    assert_int_equal(afsm_session_delete_by_user(engine, "nobody", 6, NULL, 0, &deleted), AFSM_OK);
    assert_int_equal(deleted, 0);
    assert_counts(engine, 1);
    /* A connection id is free again once its session is gone. */
    afsm_create_options o = make_options("alice", "1.2.3.4", &a.connection_id);
    o.connection_id = a.connection_id;
    assert_int_equal(afsm_session_create(engine, &o, NULL), AFSM_OK);
    afsm_engine_close(engine);
}

static void test_list_filters_order_and_pages(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    enum { N = 50 };
    afsm_session_info made[N];
    for (int i = 0; i < N; i++)
        made[i] = create_session(engine, i % 2 ? "odd" : "even");
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    for (int i = 0; i < N; i += 5)
        assert_int_equal(afsm_session_update(engine, &made[i].session_id, &u, NULL), AFSM_OK);

    afsm_session_info page[N];
    for (int i = 0; i < N; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    size_t n;
    uint64_t total;
    afsm_uuid next;

    /* All, in creation order. */
    f.limit = N;
    assert_int_equal(afsm_session_list(engine, &f, page, N, &n, &total, &next), AFSM_OK);
    assert_int_equal(n, N);
    assert_int_equal(total, N);
    for (int i = 0; i < N; i++)
        assert_memory_equal(&page[i].session_id, &made[i].session_id, 16);

    /* By user, offset/limit. */
    f.user_id = "odd";
    f.user_id_len = 3;
    f.limit = 10;
    f.offset = 20;
    assert_int_equal(afsm_session_list(engine, &f, page, N, &n, &total, &next), AFSM_OK);
    assert_int_equal(total, 25);
    assert_int_equal(n, 5);
    assert_memory_equal(&page[0].session_id, &made[41].session_id, 16);

    /* By state. */
    f.user_id = NULL; /* and its length 0: every user */
    f.user_id_len = 0;
    f.offset = 0;
    f.limit = N;
    f.state = AFSM_STATE_ACTIVE;
    assert_int_equal(afsm_session_list(engine, &f, page, N, &n, &total, &next), AFSM_OK);
    assert_int_equal(total, 10);

    /* Cursor pages: 7 at a time until the cursor comes back nil. */
    f.state = AFSM_STATE_ANY;
    f.limit = 7;
    int seen = 0;
    memset(&f.cursor, 0, sizeof(f.cursor));
    for (;;) {
        assert_int_equal(afsm_session_list(engine, &f, page, N, &n, &total, &next), AFSM_OK);
        assert_int_equal(total, N);
        for (size_t i = 0; i < n; i++)
            assert_memory_equal(&page[i].session_id, &made[seen + (int)i].session_id, 16);
        seen += (int)n;
        afsm_uuid nil = {{0}};
        if (memcmp(&next, &nil, sizeof(nil)) == 0)
            break;
        f.cursor = next;
    }
    assert_int_equal(seen, N);

    /* Creation window. */
    memset(&f.cursor, 0, sizeof(f.cursor));
    f.limit = N;
    f.created_after_ns = made[9].created_at_ns;
    f.created_before_ns = 0;
    assert_int_equal(afsm_session_list(engine, &f, page, N, &n, &total, &next), AFSM_OK);
    for (size_t i = 0; i < n; i++)
        assert_true(page[i].created_at_ns > made[9].created_at_ns);
    afsm_engine_close(engine);
}

static void test_handles_outlive_sessions(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "u");
    afsm_handle *h = NULL, *h2 = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    assert_int_equal(afsm_handle_pin_by_connection(engine, &s.connection_id, &h2), AFSM_OK);
    uint64_t pinned = 0;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 2);
    assert_int_equal(afsm_engine_pinned(engine, NULL), AFSM_ENULL);
    assert_int_equal(afsm_engine_pinned(NULL, &pinned), AFSM_ENULL);
    afsm_uuid id;
    assert_int_equal(afsm_handle_session_id(h2, &id), AFSM_OK);
    assert_memory_equal(&id, &s.session_id, 16);
    afsm_stats delta = {1, 1, 100, 100, 0, 9, 0};
    for (int i = 0; i < 10; i++)
        assert_int_equal(afsm_handle_add_stats(h, &delta), AFSM_OK);
    uint64_t remaining;
    assert_int_equal(afsm_handle_heartbeat(h2, &remaining), AFSM_OK);
    afsm_session_info got = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &got), AFSM_OK);
    assert_int_equal(got.stats.bytes_sent, 1000);

    assert_int_equal(afsm_engine_close(engine), AFSM_EBUSY);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(afsm_handle_add_stats(h, &delta), AFSM_ENOTFOUND);
    assert_int_equal(afsm_handle_heartbeat(h2, &remaining), AFSM_ENOTFOUND);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(afsm_handle_release(h2), AFSM_OK);
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_ENOTFOUND);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

static void test_batches(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_uuid ids[3];
    ids[0] = create_session(engine, "a").session_id;
    afsm_uuid_v7(&ids[1]); /* unknown */
    ids[2] = create_session(engine, "b").session_id;
    afsm_session_info out[3];
    for (int i = 0; i < 3; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    afsm_status st[3];
    assert_int_equal(afsm_session_get_batch(engine, ids, 3, out, st), AFSM_OK);
    assert_int_equal(st[0], AFSM_OK);
    assert_int_equal(st[1], AFSM_ENOTFOUND);
    assert_int_equal(st[2], AFSM_OK);
    assert_string_equal(out[2].user_id, "b");
    uint64_t remaining[3];
    assert_int_equal(afsm_session_heartbeat_batch(engine, ids, 3, remaining, st), AFSM_OK);
    assert_int_equal(st[1], AFSM_ENOTFOUND);
    assert_int_equal(remaining[0], 30 * 60 * 1000);
    afsm_stats deltas[3] = {{1, 0, 0, 0, 0, 0, 0}, {1, 0, 0, 0, 0, 0, 0}, {5, 0, 0, 0, 0, 0, 0}};
    assert_int_equal(afsm_session_add_stats_batch(engine, ids, deltas, 3, st), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &ids[2], &out[2]), AFSM_OK);
    assert_int_equal(out[2].stats.packets_sent, 5);
    assert_int_equal(afsm_session_get_batch(engine, ids, AFSM_BATCH_MAX + 1, out, st), AFSM_EINVAL);
    assert_int_equal(afsm_session_get_batch(engine, NULL, 3, out, st), AFSM_ENULL);
    afsm_engine_close(engine);
}

typedef struct event_log {
    int count[5];
    char last_reason[32];
} event_log;

static void record_event(void *ctx, const afsm_event *ev)
{
    event_log *log = ctx;
    log->count[ev->type]++;
    size_t n = ev->reason_len < sizeof(log->last_reason) - 1 ? ev->reason_len : sizeof(log->last_reason) - 1;
    memcpy(log->last_reason, ev->reason != NULL ? ev->reason : "", n);
    log->last_reason[n] = '\0';
}

static void test_events(void **state)
{
    (void)state;
    event_log log = {0};
    afsm_config cfg = {0};
    cfg.on_event = record_event;
    cfg.event_ctx = &log;
    cfg.default_timeout_ms = 1000;
    afsm_engine *engine = open_virtual_engine(&vclock, &cfg);
    afsm_session_info a = create_session(engine, "u");
    create_session(engine, "u");
    assert_int_equal(log.count[AFSM_EVENT_CREATED], 2);
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    assert_int_equal(afsm_session_update(engine, &a.session_id, &u, NULL), AFSM_OK);
    assert_int_equal(log.count[AFSM_EVENT_STATE_CHANGED], 1);
    assert_int_equal(afsm_session_delete(engine, &a.session_id, "bye", 3), AFSM_OK);
    assert_int_equal(log.count[AFSM_EVENT_DELETED], 1);
    assert_string_equal(log.last_reason, "bye");
    virtual_clock_set(&vclock, 1002 * SEC);
    assert_int_equal(afsm_engine_advance(engine, 1002 * SEC, NULL), AFSM_OK);
    assert_int_equal(log.count[AFSM_EVENT_EXPIRED], 1);
    assert_string_equal(log.last_reason, "expired");
    afsm_engine_close(engine);
}

/* SQLite's habit: fail each allocation in turn; every failure must be a
 * clean AFSM_ENOMEM that leaves the engine as it was. */
static void test_allocation_failures_leave_engine_unchanged(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info keep = create_session(engine, "keeper");
    int failures = 0;
    for (long n = 0;; n++) {
        afsm_uuid conn;
        afsm_create_options o = make_options("keeper", "1.2.3.4", &conn);
        afsm_kv md = {"k", 1, "v", 1};
        o.metadata = &md;
        o.metadata_count = 1;
        alloc_fail_after(n);
        afsm_status st = afsm_session_create(engine, &o, NULL);
        alloc_fail_reset();
        if (st == AFSM_OK)
            break;
        assert_int_equal(st, AFSM_ENOMEM);
        failures++;
        assert_counts(engine, 1);
        afsm_session_info got = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_get_by_connection(engine, &conn, &got), AFSM_ENOTFOUND);
    }
    assert_true(failures > 0);
    for (long n = 0;; n++) {
        afsm_update u = AFSM_UPDATE_INIT;
        afsm_kv md = {"color", 5, "blue", 4};
        u.fields = AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_STATE;
        u.state = AFSM_STATE_ACTIVE;
        u.metadata = &md;
        u.metadata_count = 1;
        alloc_fail_after(n);
        afsm_status st = afsm_session_update(engine, &keep.session_id, &u, NULL);
        alloc_fail_reset();
        if (st == AFSM_OK)
            break;
        assert_int_equal(st, AFSM_ENOMEM);
        afsm_session_info got = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_get(engine, &keep.session_id, &got), AFSM_OK);
        assert_int_equal(got.state, AFSM_STATE_CONNECTING);
        assert_int_equal(got.metadata_count, 0);
    }
    afsm_engine_close(engine);
}

static void test_close_null_and_open_defaults(void **state)
{
    (void)state;
    assert_int_equal(afsm_engine_close(NULL), AFSM_OK);
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(NULL, &engine), AFSM_OK); /* real clock, reaper thread */
    afsm_session_info s = create_session(engine, "u");
    uint64_t remaining = 0;
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, &remaining), AFSM_OK);
    assert_true(remaining > 29 * 60 * 1000);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    assert_int_equal(afsm_engine_open(NULL, NULL), AFSM_ENULL);
}

/* ---- heartbeat means active (the old service's Heartbeat) -------------------- */

typedef struct activation_log {
    int state_changes;
    uint32_t last_old, last_new;
} activation_log;

static void count_state_changes(void *ctx, const afsm_event *ev)
{
    activation_log *log = ctx;
    if (ev->type != AFSM_EVENT_STATE_CHANGED)
        return;
    log->state_changes++;
    log->last_old = ev->old_state;
    log->last_new = ev->new_state;
}

static uint32_t state_of(afsm_engine *engine, const afsm_uuid *id)
{
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, id, &info), AFSM_OK);
    return info.state;
}

static void to_state(afsm_engine *engine, const afsm_uuid *id, uint32_t state)
{
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = state;
    assert_int_equal(afsm_session_update(engine, id, &u, NULL), AFSM_OK);
}

/* The old service marks a CONNECTING or IDLE session ACTIVE on a heartbeat
 * ("Mark as active if not already") and its test asserts it. Every kind of
 * heartbeat does the same here, with one event per transition; DISCONNECTING
 * and CLOSED are never revived. */
static void test_heartbeat_marks_active(void **state)
{
    (void)state;
    virtual_clock clock;
    activation_log log = {0};
    afsm_config cfg = {.on_event = count_state_changes, .event_ctx = &log};
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);

    /* By id: CONNECTING -> ACTIVE once. */
    afsm_session_info a = create_session(engine, "hb-active");
    assert_int_equal(state_of(engine, &a.session_id), AFSM_STATE_CONNECTING);
    assert_int_equal(afsm_session_heartbeat(engine, &a.session_id, NULL), AFSM_OK);
    assert_int_equal(state_of(engine, &a.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(log.state_changes, 1);
    assert_int_equal(log.last_old, AFSM_STATE_CONNECTING);
    assert_int_equal(log.last_new, AFSM_STATE_ACTIVE);
    assert_int_equal(afsm_session_heartbeat(engine, &a.session_id, NULL), AFSM_OK);
    assert_int_equal(log.state_changes, 1);

    /* IDLE set by hand (idle detection off) -> ACTIVE. */
    to_state(engine, &a.session_id, AFSM_STATE_IDLE);
    log.state_changes = 0;
    assert_int_equal(afsm_session_heartbeat(engine, &a.session_id, NULL), AFSM_OK);
    assert_int_equal(state_of(engine, &a.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(log.state_changes, 1);
    assert_int_equal(log.last_old, AFSM_STATE_IDLE);

    /* Through a pinned handle. */
    afsm_session_info b = create_session(engine, "hb-handle");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &b.session_id, &h), AFSM_OK);
    log.state_changes = 0;
    assert_int_equal(afsm_handle_heartbeat(h, NULL), AFSM_OK);
    assert_int_equal(state_of(engine, &b.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(log.state_changes, 1);
    afsm_handle_release(h);

    /* In a batch. */
    afsm_session_info c = create_session(engine, "hb-batch");
    afsm_session_info d = create_session(engine, "hb-batch");
    afsm_uuid ids[2] = {c.session_id, d.session_id};
    uint64_t remaining[2];
    afsm_status statuses[2];
    log.state_changes = 0;
    assert_int_equal(afsm_session_heartbeat_batch(engine, ids, 2, remaining, statuses), AFSM_OK);
    assert_int_equal(statuses[0], AFSM_OK);
    assert_int_equal(statuses[1], AFSM_OK);
    assert_int_equal(state_of(engine, &c.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(state_of(engine, &d.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(log.state_changes, 2);

    /* DISCONNECTING stays DISCONNECTING; the heartbeat still counts. */
    to_state(engine, &c.session_id, AFSM_STATE_DISCONNECTING);
    log.state_changes = 0;
    assert_int_equal(afsm_session_heartbeat(engine, &c.session_id, NULL), AFSM_OK);
    assert_int_equal(state_of(engine, &c.session_id), AFSM_STATE_DISCONNECTING);
    assert_int_equal(log.state_changes, 0);

    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.by_state[AFSM_STATE_ACTIVE], 3);
    assert_int_equal(counts.by_state[AFSM_STATE_DISCONNECTING], 1);
    assert_int_equal(counts.by_state[AFSM_STATE_CONNECTING], 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A reason is text that reaches events and logs: a NUL inside it is refused
 * like one in a user id, and nothing is deleted. */
static void test_delete_reason_with_nul_refused(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_session_info s = create_session(engine, "nul-reason");
    static const char reason[] = "bye\0hidden";
    assert_int_equal(afsm_session_delete(engine, &s.session_id, reason, sizeof(reason) - 1), AFSM_EINVAL);
    size_t deleted = 99;
    assert_int_equal(afsm_session_delete_by_user(engine, "nul-reason", 10, reason, sizeof(reason) - 1, &deleted),
                     AFSM_EINVAL);
    assert_int_equal(deleted, 99);
    afsm_session_info still = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &still), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, "bye", 3), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Counters saturate at 2^64-1 instead of wrapping to small numbers. */
static void test_add_stats_saturates(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    afsm_session_info s = create_session(engine, "saturate");
    afsm_stats big = {.packets_sent = UINT64_MAX - 1,
                      .packets_received = UINT64_MAX,
                      .bytes_sent = UINT64_MAX - 10,
                      .bytes_received = 1,
                      .retransmissions = UINT64_MAX};
    assert_int_equal(afsm_session_add_stats(engine, &s.session_id, &big), AFSM_OK);
    afsm_stats more = {
        .packets_sent = 5, .packets_received = 1, .bytes_sent = 10, .bytes_received = 2, .retransmissions = UINT64_MAX};
    assert_int_equal(afsm_session_add_stats(engine, &s.session_id, &more), AFSM_OK);
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &out), AFSM_OK);
    assert_true(out.stats.packets_sent == UINT64_MAX);
    assert_true(out.stats.packets_received == UINT64_MAX);
    assert_true(out.stats.bytes_sent == UINT64_MAX);
    assert_int_equal(out.stats.bytes_received, 3);
    assert_true(out.stats.retransmissions == UINT64_MAX);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* The staged batches (core/mem/batch.c) give every item what the single
 * call gives it: 40 ids (three groups of the store's staging, the last
 * partial) mixing live, unknown, deleted, expired-but-not-reaped and IDLE
 * sessions; a batch heartbeat activates the idle ones with one event each,
 * fired once the batch's epoch section has ended. */
enum { MIXED_N = 40 };
enum { KIND_LIVE, KIND_UNKNOWN, KIND_DELETED, KIND_EXPIRED, KIND_IDLE, KIND_COUNT };

static void test_batches_mixed_items(void **state)
{
    (void)state;
    virtual_clock clock;
    activation_log log = {0};
    afsm_config cfg = {.on_event = count_state_changes, .event_ctx = &log};
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    afsm_uuid ids[MIXED_N];
    for (int i = 0; i < MIXED_N; i++) {
        int kind = i % KIND_COUNT;
        if (kind == KIND_UNKNOWN) {
            afsm_uuid_v7(&ids[i]);
            continue;
        }
        afsm_uuid conn;
        afsm_create_options o = make_options(i % 2 ? "mixed-odd" : "mixed-even", "10.9.8.7", &conn);
        o.timeout_ms = kind == KIND_EXPIRED ? 1000 : 0;
        afsm_session_info made = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &made), AFSM_OK);
        ids[i] = made.session_id;
        if (kind == KIND_DELETED)
            assert_int_equal(afsm_session_delete(engine, &ids[i], NULL, 0), AFSM_OK);
        if (kind == KIND_IDLE) {
            to_state(engine, &ids[i], AFSM_STATE_ACTIVE);
            to_state(engine, &ids[i], AFSM_STATE_IDLE);
        }
    }
    virtual_clock_set(&clock, 1002 * SEC); /* the 1 s sessions are due; no advance ran */

    /* Get: status and copy equal to the single call's, item by item. */
    afsm_session_info batch[MIXED_N], single;
    afsm_status st[MIXED_N];
    for (int i = 0; i < MIXED_N; i++) {
        memset(&batch[i], 0, sizeof(batch[i]));
        afsm_session_info_init(&batch[i], AFSM_SESSION_INFO_VERSION);
    }
    assert_int_equal(afsm_session_get_batch(engine, ids, MIXED_N, batch, st), AFSM_OK);
    for (int i = 0; i < MIXED_N; i++) {
        int kind = i % KIND_COUNT;
        memset(&single, 0, sizeof(single));
        afsm_session_info_init(&single, AFSM_SESSION_INFO_VERSION);
        afsm_status want = afsm_session_get(engine, &ids[i], &single);
        assert_int_equal(st[i], want);
        assert_int_equal(want, kind == KIND_UNKNOWN || kind == KIND_DELETED ? AFSM_ENOTFOUND
                               : kind == KIND_EXPIRED                       ? AFSM_EEXPIRED
                                                                            : AFSM_OK);
        if (want != AFSM_ENOTFOUND)
            assert_memory_equal(&batch[i], &single, sizeof(single));
    }

    /* Heartbeat: the idle ones and the (CONNECTING) live ones become
     * ACTIVE, with one event each. */
    uint64_t remaining[MIXED_N];
    log.state_changes = 0;
    assert_int_equal(afsm_session_heartbeat_batch(engine, ids, MIXED_N, remaining, st), AFSM_OK);
    assert_int_equal(log.state_changes, 2 * MIXED_N / KIND_COUNT);
    for (int i = 0; i < MIXED_N; i++) {
        int kind = i % KIND_COUNT;
        afsm_status want = kind == KIND_UNKNOWN || kind == KIND_DELETED ? AFSM_ENOTFOUND
                           : kind == KIND_EXPIRED                       ? AFSM_EEXPIRED
                                                                        : AFSM_OK;
        assert_int_equal(st[i], want);
        assert_int_equal(remaining[i], want == AFSM_OK ? 30 * 60 * 1000 : 0);
        if (kind == KIND_IDLE || kind == KIND_LIVE)
            assert_int_equal(state_of(engine, &ids[i]), AFSM_STATE_ACTIVE);
    }

    /* Stats: added to exactly the items that say AFSM_OK. */
    afsm_stats deltas[MIXED_N];
    memset(deltas, 0, sizeof(deltas));
    for (int i = 0; i < MIXED_N; i++)
        deltas[i].packets_sent = (uint64_t)i + 1;
    assert_int_equal(afsm_session_add_stats_batch(engine, ids, deltas, MIXED_N, st), AFSM_OK);
    for (int i = 0; i < MIXED_N; i++) {
        int kind = i % KIND_COUNT;
        afsm_status want = kind == KIND_UNKNOWN || kind == KIND_DELETED ? AFSM_ENOTFOUND
                           : kind == KIND_EXPIRED                       ? AFSM_EEXPIRED
                                                                        : AFSM_OK;
        assert_int_equal(st[i], want);
        memset(&single, 0, sizeof(single));
        afsm_session_info_init(&single, AFSM_SESSION_INFO_VERSION);
        if (want != AFSM_ENOTFOUND) {
            afsm_session_get(engine, &ids[i], &single);
            assert_int_equal(single.stats.packets_sent, want == AFSM_OK ? (uint64_t)i + 1 : 0);
        }
    }

    /* An empty batch touches nothing. */
    assert_int_equal(afsm_session_get_batch(engine, ids, 0, batch, st), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A Get copies the user id and the server address in 8-byte moves that
 * read past their text (issue 15, goal 1): every length must come out
 * exact, with its NUL, and (under ASan) no move may leave its buffer. */
static void test_get_copies_every_text_length(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    char user[AFSM_USER_ID_MAX];
    for (size_t i = 0; i < sizeof(user); i++)
        user[i] = (char)('a' + i % 26);
    for (size_t len = 1; len <= AFSM_USER_ID_MAX; len++) {
        afsm_uuid conn;
        afsm_create_options o = make_options("x", "2001:db8::1", &conn);
        o.user_id = user;
        o.user_id_len = len;
        afsm_session_info created = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &created), AFSM_OK);
        afsm_session_info got;
        memset(&got, 0xa5, sizeof(got));
        got.version = AFSM_SESSION_INFO_VERSION;
        assert_int_equal(afsm_session_get(engine, &created.session_id, &got), AFSM_OK);
        assert_int_equal(got.user_id_len, len);
        assert_memory_equal(got.user_id, user, len);
        assert_int_equal(got.user_id[len], '\0');
        assert_string_equal(got.server_addr, "10.0.0.1:7000");
        assert_int_equal(got.client_ip.family, 6);
        assert_int_equal(got.client_port, 54321);
    }
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);

    char addr[AFSM_SERVER_ADDR_MAX];
    for (size_t i = 0; i < sizeof(addr); i++)
        addr[i] = (char)('0' + i % 10);
    const size_t lengths[] = {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 247, 248, 249, 254, AFSM_SERVER_ADDR_MAX};
    for (size_t k = 0; k < sizeof(lengths) / sizeof(lengths[0]); k++) {
        afsm_config cfg;
        assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
        cfg.reaper = AFSM_REAPER_MANUAL;
        cfg.server_addr = addr;
        cfg.server_addr_len = lengths[k];
        afsm_engine *e = NULL;
        assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
        afsm_session_info created = create_session(e, "u");
        afsm_session_info got;
        memset(&got, 0xa5, sizeof(got));
        got.version = AFSM_SESSION_INFO_VERSION;
        assert_int_equal(afsm_session_get(e, &created.session_id, &got), AFSM_OK);
        assert_int_equal(got.server_addr_len, lengths[k]);
        assert_memory_equal(got.server_addr, addr, lengths[k]);
        assert_int_equal(got.server_addr[lengths[k]], '\0');
        assert_string_equal(got.user_id, "u");
        assert_int_equal(afsm_engine_close(e), AFSM_OK);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_get),
        cmocka_unit_test(test_duplicate_connection_refused),
        cmocka_unit_test(test_bad_input_gets_its_own_status),
        cmocka_unit_test(test_state_transitions),
        cmocka_unit_test(test_metadata_merge_and_replace),
        cmocka_unit_test(test_stats_set_and_add),
        cmocka_unit_test(test_heartbeat_extends_and_expiry),
        cmocka_unit_test(test_per_session_timeout_and_max_lifetime),
        cmocka_unit_test(test_delete_and_delete_by_user),
        cmocka_unit_test(test_list_filters_order_and_pages),
        cmocka_unit_test(test_handles_outlive_sessions),
        cmocka_unit_test(test_batches),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_allocation_failures_leave_engine_unchanged),
        cmocka_unit_test(test_close_null_and_open_defaults),
        cmocka_unit_test(test_heartbeat_marks_active),
        cmocka_unit_test(test_delete_reason_with_nul_refused),
        cmocka_unit_test(test_add_stats_saturates),
        cmocka_unit_test(test_batches_mixed_items),
        cmocka_unit_test(test_get_copies_every_text_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
