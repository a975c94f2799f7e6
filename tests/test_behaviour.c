/*
 * test_behaviour.c: the engine's behavioural suite, one table of cases run
 * twice through the public API (afsm.h): once on the memory store, once on
 * the etcd store against a real etcd (tests/etcd/etcd_harness.h: one member
 * on 127.0.0.1, free ports, data in a temp dir, killed at the group's
 * teardown and at exit, also after a failure).
 *
 * A case asserts one expectation for both stores. Where the stores differ by
 * design, the case says so with an explicit branch that asserts the etcd
 * store's documented answer (a refusal with AFSM_EINVAL and its detail, or
 * expiry that belongs to etcd's leases rather than to the engine's clock),
 * so a change on either side fails the suite. Any other difference is a bug.
 *
 * Both engines run on a virtual clock with the manual reaper, except the
 * real-time expiry case. Each etcd case gets its own key prefix, so the
 * cases share one etcd without seeing each other's sessions. Events may come
 * from another thread (etcd's watch), so the recorder takes a mutex; every
 * wait is a poll with a deadline.
 */
#include "test_support.h"

#include <pthread.h>
#include <stdlib.h>

#include "etcd/etcd_harness.h"

typedef enum backend_kind { BACKEND_MEMORY, BACKEND_ETCD } backend_kind;

static backend_kind backend;
static harness cluster;
static virtual_clock vclock;
static unsigned prefix_seq;

/* ---- events ------------------------------------------------------------------ */

#define EVENTS_MAX 256

typedef struct recorded {
    uint32_t type, old_state, new_state;
    afsm_uuid id;
    int64_t created_at_ns, event_at_ns;
    char reason[AFSM_REASON_MAX + 1];
} recorded;

static struct {
    pthread_mutex_t lock;
    recorded events[EVENTS_MAX];
    size_t count;
} rec = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void record_event(void *ctx, const afsm_event *ev)
{
    (void)ctx;
    pthread_mutex_lock(&rec.lock);
    if (rec.count < EVENTS_MAX) {
        recorded *e = &rec.events[rec.count++];
        e->type = ev->type;
        e->old_state = ev->old_state;
        e->new_state = ev->new_state;
        e->id = ev->session_id;
        e->created_at_ns = ev->created_at_ns;
        e->event_at_ns = ev->event_at_ns;
        memcpy(e->reason, ev->reason != NULL ? ev->reason : "", ev->reason_len);
        e->reason[ev->reason_len] = '\0';
    }
    pthread_mutex_unlock(&rec.lock);
}

static size_t events_total(void)
{
    pthread_mutex_lock(&rec.lock);
    size_t n = rec.count;
    pthread_mutex_unlock(&rec.lock);
    return n;
}

/* How many events of type for id with new_state (0: any) and reason (NULL: any). */
static size_t events_of(uint32_t type, const afsm_uuid *id, uint32_t new_state, const char *reason)
{
    size_t n = 0;
    pthread_mutex_lock(&rec.lock);
    for (size_t i = 0; i < rec.count; i++) {
        const recorded *e = &rec.events[i];
        n += e->type == type && memcmp(&e->id, id, sizeof(*id)) == 0 && (new_state == 0 || e->new_state == new_state) &&
             (reason == NULL || strcmp(e->reason, reason) == 0);
    }
    pthread_mutex_unlock(&rec.lock);
    return n;
}

#define WAIT_FOR(cond, ms)                                                                                             \
    do {                                                                                                               \
        uint64_t until_ = harness_now_ms() + (ms);                                                                     \
        while (!(cond) && harness_now_ms() < until_)                                                                   \
            harness_nap_ms(5);                                                                                         \
        assert_true(cond);                                                                                             \
    } while (0)

/* ---- engines ------------------------------------------------------------------- */

typedef struct suite_options {
    uint64_t timeout_ms; /* 0: 60 s */
    uint32_t cap;
    uint32_t limit_policy;
    uint64_t idle_timeout_ms, max_lifetime_ms, close_linger_ms;
    int real_clock; /* the default clock and the reaper thread */
} suite_options;

/* The engine of the running case; the teardown closes it even after a failure. */
static afsm_engine *engine;
static char prefix[64];

static void make_config(const suite_options *o, afsm_config *cfg)
{
    assert_int_equal(afsm_config_init(cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    virtual_clock_set(&vclock, 1000 * SEC);
    if (o->real_clock) {
        cfg->reaper = AFSM_REAPER_THREAD;
        cfg->cleanup_interval_ms = 20;
        cfg->tick_ms = 10;
    } else {
        cfg->clock = virtual_clock_read;
        cfg->clock_ctx = &vclock;
        cfg->reaper = AFSM_REAPER_MANUAL;
    }
    cfg->server_addr = "10.0.0.1:7000";
    cfg->server_addr_len = strlen(cfg->server_addr);
    cfg->shard_count = 4;
    cfg->default_timeout_ms = o->timeout_ms != 0 ? o->timeout_ms : 60000;
    cfg->max_sessions_per_user = o->cap;
    cfg->limit_policy = o->limit_policy;
    cfg->idle_timeout_ms = o->idle_timeout_ms;
    cfg->max_lifetime_ms = o->max_lifetime_ms;
    cfg->close_linger_ms = o->close_linger_ms;
    cfg->on_event = record_event;
    if (backend == BACKEND_ETCD) {
        snprintf(prefix, sizeof(prefix), "/behaviour/%u/", ++prefix_seq);
        cfg->store = AFSM_STORE_ETCD;
        cfg->etcd_endpoints = cluster.endpoints;
        cfg->etcd_prefix = prefix;
        cfg->etcd_dial_timeout_ms = 300;
        cfg->etcd_request_timeout_ms = 3000;
    }
}

static void open_engine(const suite_options *o)
{
    static const suite_options defaults;
    afsm_config cfg;
    make_config(o != NULL ? o : &defaults, &cfg);
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
}

static int reset_case(void **state)
{
    (void)state;
    pthread_mutex_lock(&rec.lock);
    rec.count = 0;
    pthread_mutex_unlock(&rec.lock);
    engine = NULL;
    return 0;
}

static int close_case(void **state)
{
    (void)state;
    if (engine != NULL)
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    engine = NULL;
    return 0;
}

/* ---- helpers ------------------------------------------------------------------- */

static afsm_kv device_meta[] = {{"device", 6, "phone", 5}};

static afsm_create_options options_for(const char *user, afsm_uuid *conn)
{
    afsm_create_options o;
    afsm_create_options_init(&o, AFSM_CREATE_OPTIONS_VERSION);
    o.user_id = user;
    o.user_id_len = strlen(user);
    o.client_ip = "10.1.2.3";
    o.client_ip_len = strlen(o.client_ip);
    o.client_port = 4433;
    if (conn != NULL)
        o.connection_id = *conn;
    else
        afsm_uuid_v7(&o.connection_id);
    o.metadata = device_meta;
    o.metadata_count = 1;
    return o;
}

static afsm_status create(const char *user, afsm_uuid *conn, afsm_session_info *out)
{
    afsm_create_options o = options_for(user, conn);
    afsm_session_info_init(out, AFSM_SESSION_INFO_VERSION);
    return afsm_session_create(engine, &o, out);
}

static afsm_session_info created(const char *user)
{
    afsm_session_info info;
    assert_int_equal(create(user, NULL, &info), AFSM_OK);
    return info;
}

static afsm_status get(const afsm_uuid *id, afsm_session_info *out)
{
    afsm_session_info_init(out, AFSM_SESSION_INFO_VERSION);
    return afsm_session_get(engine, id, out);
}

static uint32_t state_of(const afsm_uuid *id)
{
    afsm_session_info info;
    assert_int_equal(get(id, &info), AFSM_OK);
    return info.state;
}

static afsm_counts counts(void)
{
    afsm_counts c;
    assert_int_equal(afsm_engine_counts(engine, &c), AFSM_OK);
    return c;
}

static void assert_same_id(const afsm_uuid *a, const afsm_uuid *b)
{
    assert_memory_equal(a, b, sizeof(*a));
}

/* Lists with a filter on user (NULL: all) and state; returns the total. */
static uint64_t list(const char *user, uint32_t state, afsm_session_info *out, size_t capacity, size_t *count)
{
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.user_id = user;
    f.user_id_len = user != NULL ? strlen(user) : 0;
    f.state = state;
    f.limit = (uint32_t)capacity;
    for (size_t i = 0; i < capacity; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    uint64_t total = 0;
    assert_int_equal(afsm_session_list(engine, &f, out, capacity, count, &total, NULL), AFSM_OK);
    return total;
}

static afsm_status update_state(const afsm_uuid *id, uint32_t state, afsm_session_info *out)
{
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = state;
    afsm_session_info_init(out, AFSM_SESSION_INFO_VERSION);
    return afsm_session_update(engine, id, &u, out);
}

/* Moves the virtual clock (both stores' replicas read it). */
static uint64_t clock_forward(uint64_t ns)
{
    uint64_t now = virtual_clock_read(&vclock) + ns;
    virtual_clock_set(&vclock, now);
    return now;
}

/* The recorded event at index i. */
static recorded event_at(size_t i)
{
    pthread_mutex_lock(&rec.lock);
    assert_true(i < rec.count);
    recorded e = rec.events[i];
    pthread_mutex_unlock(&rec.lock);
    return e;
}

/* ---- create, get, list, count -------------------------------------------------- */

static void test_create_get_list_count(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_uuid conn;
    afsm_uuid_v7(&conn);
    afsm_session_info a1, a2, b1, copy;
    assert_int_equal(create("alice", &conn, &a1), AFSM_OK);
    a2 = created("alice");
    b1 = created("bob");

    assert_int_equal(a1.state, AFSM_STATE_CONNECTING);
    assert_string_equal(a1.user_id, "alice");
    assert_int_equal(a1.user_id_len, 5);
    assert_string_equal(a1.server_addr, "10.0.0.1:7000");
    assert_int_equal(a1.client_port, 4433);
    char ip[AFSM_IP_STRING_SIZE];
    assert_int_equal(afsm_ip_format(&a1.client_ip, ip), AFSM_OK);
    assert_string_equal(ip, "10.1.2.3");
    assert_same_id(&a1.connection_id, &conn);
    assert_int_equal(a1.timeout_ms, 60000);
    assert_int_equal(a1.token_generation, 1);
    assert_int_equal(a1.metadata_count, 1);
    assert_int_equal(a1.expires_at_ns - a1.last_active_at_ns, 60000 * MS);
    assert_int_equal(a1.stats.packets_sent, 0);

    assert_int_equal(get(&a1.session_id, &copy), AFSM_OK);
    assert_memory_equal(&copy, &a1, sizeof(copy));
    afsm_session_info_init(&copy, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get_by_connection(engine, &conn, &copy), AFSM_OK);
    assert_same_id(&copy.session_id, &a1.session_id);
    char meta[64];
    size_t needed = 0, pairs = 0;
    assert_int_equal(afsm_session_get_metadata(engine, &a1.session_id, meta, sizeof(meta), &needed, &pairs), AFSM_OK);
    assert_int_equal(pairs, 1);
    assert_int_equal(needed, 13);
    assert_memory_equal(meta, "device\0phone\0", 13);

    afsm_session_info page[4];
    size_t n = 0;
    assert_int_equal(list(NULL, AFSM_STATE_ANY, page, 4, &n), 3);
    assert_int_equal(n, 3);
    assert_same_id(&page[0].session_id, &a1.session_id);
    assert_same_id(&page[1].session_id, &a2.session_id);
    assert_same_id(&page[2].session_id, &b1.session_id);
    assert_int_equal(list("alice", AFSM_STATE_ANY, page, 4, &n), 2);
    assert_int_equal(list("bob", AFSM_STATE_CONNECTING, page, 4, &n), 1);
    assert_same_id(&page[0].session_id, &b1.session_id);
    assert_int_equal(list(NULL, AFSM_STATE_ACTIVE, page, 4, &n), 0);
    assert_int_equal(n, 0);

    /* Paging by cursor visits each session once. */
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.limit = 2;
    afsm_uuid next;
    uint64_t total;
    assert_int_equal(afsm_session_list(engine, &f, page, 2, &n, &total, &next), AFSM_OK);
    assert_int_equal(n, 2);
    assert_same_id(&next, &a2.session_id);
    f.cursor = next;
    assert_int_equal(afsm_session_list(engine, &f, page, 2, &n, &total, &next), AFSM_OK);
    assert_int_equal(n, 1);
    assert_int_equal(total, 3);
    assert_same_id(&page[0].session_id, &b1.session_id);

    afsm_counts c = counts();
    assert_int_equal(c.total, 3);
    assert_int_equal(c.by_state[AFSM_STATE_CONNECTING], 3);

    /* One CREATED each, delivered by the time create returned. */
    assert_int_equal(events_total(), 3);
    assert_int_equal(events_of(AFSM_EVENT_CREATED, &a1.session_id, AFSM_STATE_CONNECTING, NULL), 1);
    assert_int_equal(events_of(AFSM_EVENT_CREATED, &b1.session_id, AFSM_STATE_CONNECTING, NULL), 1);
    /* An event's times are on the engine's clock too (it has not moved). */
    assert_int_equal(event_at(0).created_at_ns, a1.created_at_ns);
    assert_int_equal(event_at(0).event_at_ns, a1.created_at_ns);

    afsm_uuid unknown;
    afsm_uuid_v7(&unknown);
    assert_int_equal(get(&unknown, &copy), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_get_by_connection(engine, &unknown, &copy), AFSM_ENOTFOUND);
}

/* ---- heartbeat ------------------------------------------------------------------ */

static void test_heartbeat(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info s = created("alice"), copy;
    uint64_t remaining = 0;
    clock_forward(10 * SEC);
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, &remaining), AFSM_OK);
    assert_int_equal(remaining, 60000);
    /* The first heartbeat makes it ACTIVE, once. */
    assert_int_equal(state_of(&s.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(events_of(AFSM_EVENT_STATE_CHANGED, &s.session_id, AFSM_STATE_ACTIVE, NULL), 1);
    /* Times are on the engine's clock: 10 s of it passed since the create,
     * however little real time did. */
    assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.created_at_ns, s.created_at_ns);
    assert_int_equal(copy.last_active_at_ns - s.created_at_ns, 10 * SEC);
    assert_int_equal(copy.expires_at_ns - copy.last_active_at_ns, 60000 * MS);

    clock_forward(5 * SEC);
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_OK);
    assert_int_equal(events_total(), 2);

    afsm_uuid unknown;
    afsm_uuid_v7(&unknown);
    afsm_uuid ids[2] = {s.session_id, unknown};
    uint64_t left[2] = {0, 0};
    afsm_status statuses[2];
    assert_int_equal(afsm_session_heartbeat_batch(engine, ids, 2, left, statuses), AFSM_OK);
    assert_int_equal(statuses[0], AFSM_OK);
    assert_int_equal(left[0], 60000);
    assert_int_equal(statuses[1], AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_heartbeat(engine, &unknown, NULL), AFSM_ENOTFOUND);

    /* A pinned handle heartbeats and adds stats without a lookup. */
    afsm_handle *h;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    uint64_t pinned = 0;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 1);
    assert_int_equal(afsm_handle_heartbeat(h, &remaining), AFSM_OK);
    assert_int_equal(remaining, 60000);
    afsm_stats delta = {.packets_sent = 3, .bytes_sent = 300, .current_rtt_ms = 12};
    assert_int_equal(afsm_handle_add_stats(h, &delta), AFSM_OK);
    assert_int_equal(afsm_session_add_stats(engine, &s.session_id, &delta), AFSM_OK);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.stats.packets_sent, 6);
    assert_int_equal(copy.stats.bytes_sent, 600);
    assert_int_equal(copy.stats.current_rtt_ms, 12);
    assert_int_equal(afsm_handle_pin(engine, &unknown, &h), AFSM_ENOTFOUND);
}

/* ---- update ---------------------------------------------------------------------- */

static void test_update(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info s = created("alice"), out;
    clock_forward(3 * SEC);
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_ACTIVE, &out), AFSM_OK);
    assert_int_equal(out.state, AFSM_STATE_ACTIVE);
    /* Becoming active is activity, stamped on the engine's clock. */
    assert_int_equal(out.last_active_at_ns - s.created_at_ns, 3 * SEC);
    assert_int_equal(out.expires_at_ns - out.last_active_at_ns, 60000 * MS);
    assert_int_equal(events_of(AFSM_EVENT_STATE_CHANGED, &s.session_id, AFSM_STATE_ACTIVE, NULL), 1);
    /* Not allowed: nothing changes, no event. */
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_CONNECTING, &out), AFSM_ETRANSITION);
    assert_int_equal(state_of(&s.session_id), AFSM_STATE_ACTIVE);
    assert_int_equal(events_total(), 2);
    /* To the current state: a no-op, no event. */
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_ACTIVE, &out), AFSM_OK);
    assert_int_equal(events_total(), 2);
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_IDLE, &out), AFSM_OK);
    assert_int_equal(events_of(AFSM_EVENT_STATE_CHANGED, &s.session_id, AFSM_STATE_IDLE, NULL), 1);

    afsm_kv room[] = {{"room", 4, "7", 1}};
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_STATS;
    u.metadata = room;
    u.metadata_count = 1;
    u.stats.packets_received = 42;
    u.stats.retransmissions = 2;
    afsm_session_info_init(&out, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, &out), AFSM_OK);
    assert_int_equal(out.metadata_count, 2);
    assert_int_equal(out.stats.packets_received, 42);
    afsm_session_info copy;
    assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.metadata_count, 2);
    assert_int_equal(copy.stats.packets_received, 42);
    assert_int_equal(copy.stats.retransmissions, 2);

    afsm_kv only[] = {{"x", 1, "1", 1}};
    u = (afsm_update)AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_METADATA_REPLACE;
    u.metadata = only;
    u.metadata_count = 1;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    char meta[64];
    size_t needed = 0, pairs = 0;
    assert_int_equal(afsm_session_get_metadata(engine, &s.session_id, meta, sizeof(meta), &needed, &pairs), AFSM_OK);
    assert_int_equal(pairs, 1);
    assert_memory_equal(meta, "x\0001\0", 4);
    assert_int_equal(afsm_session_get_metadata(engine, &s.session_id, meta, 2, &needed, &pairs), AFSM_EBUFFER);
    assert_int_equal(needed, 4);

    /* Closing removes the session and says so with reason "closed". */
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_CLOSED, &out), AFSM_OK);
    assert_int_equal(events_of(AFSM_EVENT_DELETED, &s.session_id, 0, "closed"), 1);
    assert_int_equal(get(&s.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(counts().total, 0);
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_ACTIVE, &out), AFSM_ENOTFOUND);
}

/* The metadata bound is on what is stored (afsm_kv): a key given twice
 * counts once, with its last value, on either store; past the bound as
 * stored, AFSM_ETOOLONG and nothing changes. */
static void test_metadata_bound_as_stored(void **state)
{
    (void)state;
    open_engine(NULL);
    static char x[3000], y[3096];
    memset(x, 'x', sizeof(x));
    memset(y, 'y', sizeof(y));
    afsm_kv fits[] = {{"k", 1, x, 3000}, {"k", 1, y, 2000}}; /* 5002 given, 2001 stored */
    afsm_create_options o = options_for("alice", NULL);
    o.metadata = fits;
    o.metadata_count = 2;
    afsm_session_info s, copy;
    afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_create(engine, &o, &s), AFSM_OK);
    assert_int_equal(s.metadata_count, 1);
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_METADATA_MERGE;
    u.metadata = fits;
    u.metadata_count = 2;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_OK);
    afsm_kv over[] = {{"a", 1, x, 3000}, {"b", 1, x, 1000}, {"a", 1, y, 3096}}; /* 4098 stored */
    u.fields = AFSM_UPDATE_METADATA_REPLACE;
    u.metadata = over;
    u.metadata_count = 3;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, NULL), AFSM_ETOOLONG);
    assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.metadata_count, 1);
    assert_int_equal(copy.metadata_bytes, 2001 + 2);
}

/* Closing is the session's last activity (afsm.h, afsm_session_update):
 * the copy it returns says when it closed, on either store, whether the
 * session lingers (memory store) or goes at once. */
static void test_close_stamps_last_active(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info s = created("alice"), out;
    clock_forward(3 * SEC);
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_ACTIVE, &out), AFSM_OK);
    clock_forward(2 * SEC);
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_CLOSED, &out), AFSM_OK);
    assert_int_equal(out.state, AFSM_STATE_CLOSED);
    assert_int_equal(out.last_active_at_ns - s.created_at_ns, 5 * SEC);
    assert_int_equal(out.expires_at_ns - out.last_active_at_ns, 60000 * MS);
    assert_int_equal(events_of(AFSM_EVENT_DELETED, &s.session_id, 0, "closed"), 1);
}

/* ---- delete ---------------------------------------------------------------------- */

static void test_delete_with_reason(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_uuid conn;
    afsm_uuid_v7(&conn);
    afsm_session_info s1, s2 = created("alice"), copy;
    assert_int_equal(create("alice", &conn, &s1), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &s1.session_id, "kicked", 6), AFSM_OK);
    assert_int_equal(events_of(AFSM_EVENT_DELETED, &s1.session_id, AFSM_STATE_CONNECTING, "kicked"), 1);
    assert_int_equal(get(&s1.session_id, &copy), AFSM_ENOTFOUND);
    afsm_session_info_init(&copy, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get_by_connection(engine, &conn, &copy), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_delete(engine, &s1.session_id, "again", 5), AFSM_ENOTFOUND);
    assert_int_equal(counts().total, 1);

    assert_int_equal(afsm_session_delete(engine, &s2.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(events_of(AFSM_EVENT_DELETED, &s2.session_id, 0, "deleted"), 1);
    assert_int_equal(events_total(), 4);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.created_total, 2);
    assert_int_equal(m.deleted_total[AFSM_DELETE_REQUESTED], 2);
    assert_int_equal(m.sessions, 0);

    /* A deleted session's connection id is free again. */
    afsm_session_info again;
    assert_int_equal(create("alice", &conn, &again), AFSM_OK);
    assert_int_equal(counts().total, 1);
}

static void test_delete_by_user(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info a[3], b = created("bob");
    for (int i = 0; i < 3; i++)
        a[i] = created("alice");
    size_t deleted = 99;
    assert_int_equal(afsm_session_delete_by_user(engine, "alice", 5, "logout", 6, &deleted), AFSM_OK);
    assert_int_equal(deleted, 3);
    afsm_session_info page[4], copy;
    size_t n;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(events_of(AFSM_EVENT_DELETED, &a[i].session_id, 0, "logout"), 1);
        assert_int_equal(get(&a[i].session_id, &copy), AFSM_ENOTFOUND);
    }
    assert_int_equal(list("alice", AFSM_STATE_ANY, page, 4, &n), 0);
    assert_int_equal(list(NULL, AFSM_STATE_ANY, page, 4, &n), 1);
    assert_same_id(&page[0].session_id, &b.session_id);
    assert_int_equal(counts().total, 1);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.deleted_total[AFSM_DELETE_USER], 3);

    assert_int_equal(afsm_session_delete_by_user(engine, "nobody", 6, NULL, 0, &deleted), AFSM_OK);
    assert_int_equal(deleted, 0);
    assert_int_equal(events_total(), 7);
}

/* ---- tokens ---------------------------------------------------------------------- */

static afsm_status validate(const char *token, const char *ip, afsm_session_info *out)
{
    afsm_session_info_init(out, AFSM_SESSION_INFO_VERSION);
    return afsm_token_validate(engine, token, strlen(token), ip, ip != NULL ? strlen(ip) : 0, out);
}

static void test_tokens(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info s = created("alice"), out;
    char token[AFSM_TOKEN_SIZE], bound[AFSM_TOKEN_SIZE], rotated[AFSM_TOKEN_SIZE];
    size_t len = 0;
    assert_int_equal(afsm_token_issue(engine, &s.session_id, 0, token, sizeof(token), &len), AFSM_OK);
    assert_int_equal(len, strlen(token));
    assert_int_equal(validate(token, NULL, &out), AFSM_OK);
    assert_same_id(&out.session_id, &s.session_id);
    assert_string_equal(out.user_id, "alice");

    /* Forged: one character of the sealed part changed, still base64url. */
    char forged[AFSM_TOKEN_SIZE];
    strcpy(forged, token);
    forged[len - 6] = forged[len - 6] == 'A' ? 'B' : 'A';
    assert_int_equal(validate(forged, NULL, &out), AFSM_ETOKEN);
    assert_int_equal(validate("v1.AAAA", NULL, &out), AFSM_ETOKENFORMAT);
    assert_int_equal(validate("not a token", NULL, &out), AFSM_ETOKENFORMAT);

    /* Bound to the client's IP. */
    assert_int_equal(afsm_token_issue(engine, &s.session_id, AFSM_TOKEN_BIND_IP, bound, sizeof(bound), NULL), AFSM_OK);
    assert_int_equal(validate(bound, "10.1.2.3", &out), AFSM_OK);
    assert_int_equal(validate(bound, "10.9.9.9", &out), AFSM_EIPMISMATCH);

    /* Rotation revokes every earlier token. */
    assert_int_equal(afsm_token_rotate(engine, &s.session_id, 0, rotated, sizeof(rotated), NULL), AFSM_OK);
    assert_int_equal(validate(token, NULL, &out), AFSM_EREVOKED);
    assert_int_equal(validate(bound, "10.1.2.3", &out), AFSM_EREVOKED);
    assert_int_equal(validate(rotated, NULL, &out), AFSM_OK);
    assert_int_equal(out.token_generation, 2);
    afsm_session_info copy;
    assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.token_generation, 2);

    afsm_uuid unknown;
    afsm_uuid_v7(&unknown);
    assert_int_equal(afsm_token_issue(engine, &unknown, 0, token, sizeof(token), NULL), AFSM_ENOTFOUND);
    assert_int_equal(afsm_token_rotate(engine, &unknown, 0, token, sizeof(token), NULL), AFSM_ENOTFOUND);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(validate(rotated, NULL, &out), AFSM_ENOTFOUND);

    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.token_validations[AFSM_TOKEN_OK], 3);
    assert_int_equal(m.token_validations[AFSM_TOKEN_FORGED], 1);
    assert_int_equal(m.token_validations[AFSM_TOKEN_REVOKED], 2);
    assert_int_equal(m.token_validations[AFSM_TOKEN_NOT_FOUND], 1);
}

/* ---- batches and restore ---------------------------------------------------------- */

static void test_batches(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info a = created("alice"), b = created("bob");
    afsm_uuid unknown;
    afsm_uuid_v7(&unknown);
    afsm_uuid ids[3] = {a.session_id, unknown, b.session_id};
    afsm_session_info out[3];
    afsm_status statuses[3];
    for (int i = 0; i < 3; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get_batch(engine, ids, 3, out, statuses), AFSM_OK);
    assert_int_equal(statuses[0], AFSM_OK);
    assert_int_equal(statuses[1], AFSM_ENOTFOUND);
    assert_int_equal(statuses[2], AFSM_OK);
    assert_same_id(&out[2].session_id, &b.session_id);
    afsm_stats deltas[3] = {{.packets_received = 1}, {.packets_received = 2}, {.packets_received = 3}};
    assert_int_equal(afsm_session_add_stats_batch(engine, ids, deltas, 3, statuses), AFSM_OK);
    assert_int_equal(statuses[0], AFSM_OK);
    assert_int_equal(statuses[1], AFSM_ENOTFOUND);
    assert_int_equal(statuses[2], AFSM_OK);
    afsm_session_info copy;
    assert_int_equal(get(&b.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.stats.packets_received, 3);
    /* A bad item leaves the others done and changes nothing else. */
    assert_int_equal(counts().total, 2);
    assert_int_equal(events_total(), 2);
}

/* For a while (etcd's watch delivers a write's echo within it on loopback),
 * the session stays readable and no event arrives beyond the first
 * `events`: a late echo of earlier writes undoes nothing. */
static void assert_settled(const afsm_uuid *id, size_t events)
{
    uint64_t until = harness_now_ms() + 300;
    afsm_session_info copy;
    do {
        assert_int_equal(get(id, &copy), AFSM_OK);
        assert_int_equal(events_total(), events);
        harness_nap_ms(5);
    } while (harness_now_ms() < until);
}

/* A copy (a daemon's snapshot) comes back as it was, tokens included,
 * without a CREATED event; a taken id or connection is AFSM_EEXISTS. */
static void test_restore(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info s = created("alice"), copy, back;
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_OK);
    char token[AFSM_TOKEN_SIZE];
    assert_int_equal(afsm_token_rotate(engine, &s.session_id, 0, token, sizeof(token), NULL), AFSM_OK);
    assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
    assert_int_equal(afsm_session_restore(engine, &copy, device_meta, 1), AFSM_EEXISTS);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    size_t events = events_total();

    assert_int_equal(afsm_session_restore(engine, &copy, device_meta, 1), AFSM_OK);
    assert_settled(&s.session_id, events);
    assert_int_equal(get(&s.session_id, &back), AFSM_OK);
    assert_int_equal(back.state, AFSM_STATE_ACTIVE);
    assert_int_equal(back.token_generation, 2);
    assert_int_equal(back.created_at_ns, copy.created_at_ns);
    assert_int_equal(back.last_active_at_ns, copy.last_active_at_ns);
    assert_int_equal(back.expires_at_ns, copy.expires_at_ns);
    assert_int_equal(back.metadata_count, 1);
    assert_same_id(&back.connection_id, &copy.connection_id);
    assert_int_equal(validate(token, NULL, &back), AFSM_OK);
    assert_int_equal(counts().total, 1);

    /* Its connection id is taken now: a restore under another id fails. */
    afsm_session_info twin = copy;
    afsm_uuid_v7(&twin.session_id);
    assert_int_equal(afsm_session_restore(engine, &twin, NULL, 0), AFSM_EEXISTS);
    /* A copy whose deadline has passed is not brought back. */
    afsm_session_info stale = copy;
    afsm_uuid_v7(&stale.session_id);
    afsm_uuid_v7(&stale.connection_id);
    stale.last_active_at_ns -= 120 * (int64_t)SEC;
    stale.created_at_ns -= 120 * (int64_t)SEC;
    assert_int_equal(afsm_session_restore(engine, &stale, NULL, 0), AFSM_EEXPIRED);
    assert_int_equal(get(&stale.session_id, &back), AFSM_ENOTFOUND);
    assert_int_equal(counts().total, 1);
    assert_int_equal(events_total(), events);
}

/* The copy a close returns is of a session whose linger (none: 0 by
 * default, and the only value the etcd store takes) is over: a restore of
 * it brings nothing back (AFSM_EEXPIRED, afsm_session_restore), on either
 * store. */
static void test_restore_of_a_closed_copy_without_linger(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info s = created("alice"), closed, back;
    clock_forward(2 * SEC);
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_CLOSED, &closed), AFSM_OK);
    assert_int_equal(closed.state, AFSM_STATE_CLOSED);
    assert_int_equal(get(&s.session_id, &back), AFSM_ENOTFOUND);
    size_t events = events_total();
    assert_int_equal(afsm_session_restore(engine, &closed, device_meta, 1), AFSM_EEXPIRED);
    assert_int_equal(get(&s.session_id, &back), AFSM_ENOTFOUND);
    assert_int_equal(counts().total, 0);
    assert_int_equal(events_total(), events);
}

/* A session deleted and restored under its id, then left alone, ends as an
 * expiry (not with the old delete's reason), once. */
static void test_restored_session_expires(void **state)
{
    (void)state;
    suite_options o = {.timeout_ms = 1000, .real_clock = 1};
    open_engine(&o);
    afsm_session_info s = created("alice"), copy;
    assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &s.session_id, "moved", 5), AFSM_OK);
    size_t events = events_total();
    assert_int_equal(afsm_session_restore(engine, &copy, NULL, 0), AFSM_OK);
    WAIT_FOR(events_total() > events, 10000);
    harness_nap_ms(300); /* room for a wrong second event to show */
    assert_int_equal(events_total(), events + 1);
    assert_int_equal(events_of(AFSM_EVENT_EXPIRED, &s.session_id, 0, "expired"), 1);
    assert_int_equal(events_of(AFSM_EVENT_DELETED, &s.session_id, 0, "moved"), 1);
    assert_int_equal(get(&s.session_id, &copy), AFSM_ENOTFOUND);
}

/* ---- per-user caps and connection ids ------------------------------------------- */

static void test_per_user_cap(void **state)
{
    (void)state;
    suite_options o = {.cap = 2, .limit_policy = AFSM_LIMIT_REJECT};
    open_engine(&o);
    afsm_session_info a1 = created("alice"), a2 = created("alice"), over;
    (void)a2;
    assert_int_equal(create("alice", NULL, &over), AFSM_ELIMIT);
    assert_int_equal(counts().total, 2);
    assert_int_equal(events_total(), 2);
    afsm_session_info page[4];
    size_t n;
    assert_int_equal(list("alice", AFSM_STATE_ANY, page, 4, &n), 2);
    /* Another user has a cap of their own. */
    afsm_session_info b = created("bob");
    (void)b;
    /* A freed place can be taken again. */
    assert_int_equal(afsm_session_delete(engine, &a1.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(create("alice", NULL, &over), AFSM_OK);
    assert_int_equal(create("alice", NULL, &over), AFSM_ELIMIT);
    assert_int_equal(counts().total, 3);
}

static void test_connection_id_unique(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_uuid conn;
    afsm_uuid_v7(&conn);
    afsm_session_info first, second, copy;
    assert_int_equal(create("alice", &conn, &first), AFSM_OK);
    assert_int_equal(create("bob", &conn, &second), AFSM_EEXISTS);
    assert_int_equal(counts().total, 1);
    assert_int_equal(events_total(), 1);
    afsm_session_info_init(&copy, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get_by_connection(engine, &conn, &copy), AFSM_OK);
    assert_same_id(&copy.session_id, &first.session_id);
    assert_string_equal(copy.user_id, "alice");
    afsm_session_info page[2];
    size_t n;
    assert_int_equal(list("bob", AFSM_STATE_ANY, page, 2, &n), 0);
}

/* ---- expiry ---------------------------------------------------------------------- */

/* The engine's clock and afsm_engine_advance expire sessions on the memory
 * store. On the etcd store expiry is etcd's (afsm.h: a session ends when its
 * lease runs out, as seen on every node), so moving the engine's clock ends
 * nothing: asserted here, so that a change either way is noticed. */
static void test_expiry_by_engine_clock(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_create_options o = options_for("alice", NULL);
    o.timeout_ms = 5000;
    afsm_session_info s = AFSM_SESSION_INFO_INIT, kept = created("alice"), copy;
    assert_int_equal(afsm_session_create(engine, &o, &s), AFSM_OK);
    assert_int_equal(s.timeout_ms, 5000);
    char token[AFSM_TOKEN_SIZE];
    assert_int_equal(afsm_token_issue(engine, &s.session_id, 0, token, sizeof(token), NULL), AFSM_OK);

    uint64_t now = clock_forward(6 * SEC);
    size_t expired = 99;
    if (backend == BACKEND_ETCD) {
        assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
        assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
        assert_int_equal(expired, 0);
        assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
        assert_int_equal(validate(token, NULL, &copy), AFSM_OK);
        assert_int_equal(events_of(AFSM_EVENT_EXPIRED, &s.session_id, 0, NULL), 0);
        assert_int_equal(counts().total, 2);
        return;
    }
    /* Past its deadline, before the reaper: EEXPIRED, still filled in. */
    assert_int_equal(get(&s.session_id, &copy), AFSM_EEXPIRED);
    assert_same_id(&copy.session_id, &s.session_id);
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_EEXPIRED);
    assert_int_equal(validate(token, NULL, &copy), AFSM_EEXPIRED);
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_int_equal(expired, 1);
    assert_int_equal(events_of(AFSM_EVENT_EXPIRED, &s.session_id, AFSM_STATE_CONNECTING, "expired"), 1);
    assert_int_equal(get(&s.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(validate(token, NULL, &copy), AFSM_ENOTFOUND);
    assert_int_equal(get(&kept.session_id, &copy), AFSM_OK);
    assert_int_equal(counts().total, 1);
}

/* Reported times are the engine clock plus a wall offset that follows a
 * step of more than a second between the two at the next advance (NTP, a
 * resumed VM): here the engine clock jumps 10 s ahead of the wall clock. */
static void test_wall_clock_followed_on_advance(void **state)
{
    (void)state;
    open_engine(NULL);
    afsm_session_info s = created("alice"), copy;
    assert_int_equal(afsm_engine_advance(engine, clock_forward(10 * SEC), NULL), AFSM_OK);
    assert_int_equal(get(&s.session_id, &copy), AFSM_OK);
    int64_t shift = copy.created_at_ns - s.created_at_ns;
    if (shift > -9 * (int64_t)SEC || shift < -11 * (int64_t)SEC)
        fail_msg("created_at moved by %lld ns, want about -10 s", (long long)shift);
    /* Now, as reported, is the wall clock again: a session created now. */
    afsm_session_info later = created("alice");
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t off = later.created_at_ns - ((int64_t)wall.tv_sec * (int64_t)SEC + wall.tv_nsec);
    if (off > (int64_t)SEC || off < -(int64_t)SEC)
        fail_msg("a new session's created_at is %lld ns off the wall clock", (long long)off);
}

/* Real time on both stores: a session nobody heartbeats expires (EXPIRED,
 * reason "expired", never DELETED); one heartbeated meanwhile stays. */
static void test_expiry_in_real_time(void **state)
{
    (void)state;
    suite_options o = {.timeout_ms = 1000, .real_clock = 1};
    open_engine(&o);
    afsm_session_info gone = created("alice"), kept = created("alice"), copy;
    char token[AFSM_TOKEN_SIZE];
    assert_int_equal(afsm_token_issue(engine, &gone.session_id, 0, token, sizeof(token), NULL), AFSM_OK);
    uint64_t start = harness_now_ms();
    /* etcd's lease: TTL ceil(4/3 x 1 s) = 2 s, checked by etcd every 500 ms. */
    uint64_t until = start + 10000;
    while (events_of(AFSM_EVENT_EXPIRED, &gone.session_id, 0, NULL) == 0 && harness_now_ms() < until) {
        assert_int_equal(afsm_session_heartbeat(engine, &kept.session_id, NULL), AFSM_OK);
        harness_nap_ms(50);
    }
    uint64_t took = harness_now_ms() - start;
    assert_int_equal(events_of(AFSM_EVENT_EXPIRED, &gone.session_id, 0, "expired"), 1);
    assert_true(took >= 900);
    assert_int_equal(events_of(AFSM_EVENT_DELETED, &gone.session_id, 0, NULL), 0);
    assert_int_equal(get(&gone.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(validate(token, NULL, &copy), AFSM_ENOTFOUND);
    assert_int_equal(get(&kept.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.state, AFSM_STATE_ACTIVE);
    assert_int_equal(counts().total, 1);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.expired_total, 1);
}

/* ---- bad input ------------------------------------------------------------------- */

enum { BAD_CASES = 30 };

static const struct bad_case {
    const char *name;
    afsm_status want;
} bad_cases[BAD_CASES] = {
    {"create: engine NULL", AFSM_ENULL},
    {"create: options NULL", AFSM_ENULL},
    {"create: options version 99", AFSM_EVERSION},
    {"create: out version 99", AFSM_EVERSION},
    {"create: user id 257 bytes", AFSM_ETOOLONG},
    {"create: user id empty", AFSM_EINVAL},
    {"create: client ip malformed", AFSM_EIP},
    {"create: connection id nil", AFSM_EUUID},
    {"create: port 65536", AFSM_EINVAL},
    {"create: 65 metadata keys", AFSM_ETOOLONG},
    {"create: NUL in a metadata value", AFSM_EINVAL},
    {"create: timeout 2^32 ms", AFSM_EINVAL},
    {"get: session id NULL", AFSM_ENULL},
    {"get: out version 99", AFSM_EVERSION},
    {"heartbeat: session id NULL", AFSM_ENULL},
    {"update: version 99", AFSM_EVERSION},
    {"update: unknown field bit", AFSM_EINVAL},
    {"update: merge and replace", AFSM_EINVAL},
    {"update: state 9", AFSM_EINVAL},
    {"update: 65 metadata keys", AFSM_ETOOLONG},
    {"delete: reason 257 bytes", AFSM_ETOOLONG},
    {"delete: NUL in the reason", AFSM_EINVAL},
    {"delete by user: user id 257 bytes", AFSM_ETOOLONG},
    {"delete by user: user id empty", AFSM_EINVAL},
    {"list: filter version 99", AFSM_EVERSION},
    {"list: limit 0", AFSM_EINVAL},
    {"list: out_capacity below limit", AFSM_EINVAL},
    {"token issue: buffer too small", AFSM_EBUFFER},
    {"token issue: unknown flag", AFSM_EINVAL},
    {"token validate: client ip malformed", AFSM_EIP},
};

static char long_text[AFSM_USER_ID_MAX + 2];
static afsm_kv many_keys[AFSM_METADATA_KEYS_MAX + 1];
static char key_names[AFSM_METADATA_KEYS_MAX + 1][4];

static afsm_status bad_call(int i, const afsm_uuid *id, const char *token)
{
    afsm_create_options o = options_for("carol", NULL);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    afsm_update u = AFSM_UPDATE_INIT;
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    afsm_session_info page[2] = {AFSM_SESSION_INFO_INIT, AFSM_SESSION_INFO_INIT};
    afsm_kv nul_value[] = {{"k", 1, "a\0b", 3}};
    char small[8], big[AFSM_TOKEN_SIZE];
    size_t n;
    uint64_t total;
    f.limit = 2;
    switch (i) {
    case 0:
        return afsm_session_create(NULL, &o, &info);
    case 1:
        return afsm_session_create(engine, NULL, &info);
    case 2:
        o.version = 99;
        return afsm_session_create(engine, &o, &info);
    case 3:
        info.version = 99;
        return afsm_session_create(engine, &o, &info);
    case 4:
        o.user_id = long_text;
        o.user_id_len = AFSM_USER_ID_MAX + 1;
        return afsm_session_create(engine, &o, &info);
    case 5:
        o.user_id_len = 0;
        return afsm_session_create(engine, &o, &info);
    case 6:
        o.client_ip = "10.1.2.300";
        o.client_ip_len = strlen(o.client_ip);
        return afsm_session_create(engine, &o, &info);
    case 7:
        memset(&o.connection_id, 0, sizeof(o.connection_id));
        return afsm_session_create(engine, &o, &info);
    case 8:
        o.client_port = 65536;
        return afsm_session_create(engine, &o, &info);
    case 9:
        o.metadata = many_keys;
        o.metadata_count = AFSM_METADATA_KEYS_MAX + 1;
        return afsm_session_create(engine, &o, &info);
    case 10:
        o.metadata = nul_value;
        return afsm_session_create(engine, &o, &info);
    case 11:
        o.timeout_ms = UINT64_C(1) << 32;
        return afsm_session_create(engine, &o, &info);
    case 12:
        return afsm_session_get(engine, NULL, &info);
    case 13:
        info.version = 99;
        return afsm_session_get(engine, id, &info);
    case 14:
        return afsm_session_heartbeat(engine, NULL, NULL);
    case 15:
        u.version = 99;
        u.fields = AFSM_UPDATE_STATE;
        u.state = AFSM_STATE_ACTIVE;
        return afsm_session_update(engine, id, &u, NULL);
    case 16:
        u.fields = 0x100;
        return afsm_session_update(engine, id, &u, NULL);
    case 17:
        u.fields = AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_METADATA_REPLACE;
        return afsm_session_update(engine, id, &u, NULL);
    case 18:
        u.fields = AFSM_UPDATE_STATE;
        u.state = 9;
        return afsm_session_update(engine, id, &u, NULL);
    case 19:
        u.fields = AFSM_UPDATE_METADATA_MERGE;
        u.metadata = many_keys;
        u.metadata_count = AFSM_METADATA_KEYS_MAX + 1;
        return afsm_session_update(engine, id, &u, NULL);
    case 20:
        return afsm_session_delete(engine, id, long_text, AFSM_REASON_MAX + 1);
    case 21:
        return afsm_session_delete(engine, id, "a\0b", 3);
    case 22:
        return afsm_session_delete_by_user(engine, long_text, AFSM_USER_ID_MAX + 1, NULL, 0, &n);
    case 23:
        return afsm_session_delete_by_user(engine, "alice", 0, NULL, 0, &n);
    case 24:
        f.version = 99;
        return afsm_session_list(engine, &f, page, 2, &n, &total, NULL);
    case 25:
        f.limit = 0;
        return afsm_session_list(engine, &f, page, 2, &n, &total, NULL);
    case 26:
        return afsm_session_list(engine, &f, page, 1, &n, &total, NULL);
    case 27:
        return afsm_token_issue(engine, id, 0, small, sizeof(small), NULL);
    case 28:
        return afsm_token_issue(engine, id, 0x8, big, sizeof(big), NULL);
    default:
        return afsm_token_validate(engine, token, strlen(token), "10.1.2", 6, &info);
    }
}

static void test_bad_input(void **state)
{
    (void)state;
    open_engine(NULL);
    memset(long_text, 'x', sizeof(long_text) - 1);
    for (int k = 0; k <= AFSM_METADATA_KEYS_MAX; k++) {
        snprintf(key_names[k], sizeof(key_names[k]), "k%d", k);
        many_keys[k] = (afsm_kv){key_names[k], strlen(key_names[k]), "v", 1};
    }
    afsm_session_info s = created("alice"), before, after;
    char token[AFSM_TOKEN_SIZE];
    assert_int_equal(afsm_token_issue(engine, &s.session_id, 0, token, sizeof(token), NULL), AFSM_OK);
    assert_int_equal(get(&s.session_id, &before), AFSM_OK);
    size_t events = events_total();

    for (int i = 0; i < BAD_CASES; i++) {
        afsm_status got = bad_call(i, &s.session_id, token);
        if (got != bad_cases[i].want)
            fail_msg("%s: %s, want %s", bad_cases[i].name, afsm_status_name(got), afsm_status_name(bad_cases[i].want));
        /* Every argument check says what was wrong. */
        if (afsm_error_detail()[0] == '\0')
            fail_msg("%s: no error detail", bad_cases[i].name);
    }
    /* Nothing changed: the session, the count, the events. */
    assert_int_equal(get(&s.session_id, &after), AFSM_OK);
    assert_memory_equal(&after, &before, sizeof(after));
    assert_int_equal(counts().total, 1);
    assert_int_equal(events_total(), events);
    afsm_session_info page[2];
    size_t n;
    assert_int_equal(list("carol", AFSM_STATE_ANY, page, 2, &n), 0);
}

/* ---- what the etcd store refuses by design -------------------------------------- */

/* On etcd: AFSM_EINVAL and a detail naming the option; nothing is opened. */
static void assert_refused_on_etcd(const suite_options *o, const char *named)
{
    afsm_config cfg;
    make_config(o, &cfg);
    afsm_engine *e = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_EINVAL);
    assert_null(e);
    if (strstr(afsm_error_detail(), named) == NULL)
        fail_msg("detail '%s' does not name %s", afsm_error_detail(), named);
}

static void test_idle_detection(void **state)
{
    (void)state;
    suite_options o = {.idle_timeout_ms = 5000};
    if (backend == BACKEND_ETCD) {
        assert_refused_on_etcd(&o, "idle_timeout_ms");
        return;
    }
    open_engine(&o);
    afsm_session_info s = created("alice");
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_OK);
    assert_int_equal(afsm_engine_advance(engine, clock_forward(6 * SEC), NULL), AFSM_OK);
    assert_int_equal(state_of(&s.session_id), AFSM_STATE_IDLE);
    assert_int_equal(events_of(AFSM_EVENT_STATE_CHANGED, &s.session_id, AFSM_STATE_IDLE, NULL), 1);
}

static void test_max_lifetime(void **state)
{
    (void)state;
    suite_options o = {.max_lifetime_ms = 10000};
    if (backend == BACKEND_ETCD) {
        assert_refused_on_etcd(&o, "max_lifetime_ms");
        return;
    }
    open_engine(&o);
    afsm_session_info s = created("alice"), copy;
    clock_forward(6 * SEC);
    assert_int_equal(afsm_session_heartbeat(engine, &s.session_id, NULL), AFSM_OK);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, clock_forward(5 * SEC), &expired), AFSM_OK);
    assert_int_equal(expired, 1);
    assert_int_equal(get(&s.session_id, &copy), AFSM_ENOTFOUND);
}

static void test_close_linger(void **state)
{
    (void)state;
    suite_options o = {.close_linger_ms = 5000};
    if (backend == BACKEND_ETCD) {
        assert_refused_on_etcd(&o, "close_linger_ms");
        return;
    }
    open_engine(&o);
    afsm_session_info s = created("alice"), out;
    assert_int_equal(update_state(&s.session_id, AFSM_STATE_CLOSED, &out), AFSM_OK);
    assert_int_equal(state_of(&s.session_id), AFSM_STATE_CLOSED);
    assert_int_equal(afsm_engine_advance(engine, clock_forward(6 * SEC), NULL), AFSM_OK);
    assert_int_equal(get(&s.session_id, &out), AFSM_ENOTFOUND);
}

static void test_evict_oldest(void **state)
{
    (void)state;
    suite_options o = {.cap = 1, .limit_policy = AFSM_LIMIT_EVICT_OLDEST};
    open_engine(&o);
    afsm_session_info old = created("alice"), young = created("alice"), copy;
    assert_int_equal(events_of(AFSM_EVENT_DELETED, &old.session_id, 0, "evicted"), 1);
    assert_int_equal(get(&old.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(get(&young.session_id, &copy), AFSM_OK);
}

/* ---- the two backends --------------------------------------------------------- */

static int use_memory(void **state)
{
    (void)state;
    backend = BACKEND_MEMORY;
    return 0;
}

static int use_etcd(void **state)
{
    (void)state;
    backend = BACKEND_ETCD;
    return harness_start(&cluster, 1);
}

static int stop_etcd(void **state)
{
    (void)state;
    harness_stop_all();
    return 0;
}

#define CASE(f) cmocka_unit_test_setup_teardown(f, reset_case, close_case)

int main(void)
{
    const struct CMUnitTest cases[] = {
        CASE(test_create_get_list_count),
        CASE(test_heartbeat),
        CASE(test_update),
        CASE(test_close_stamps_last_active),
        CASE(test_metadata_bound_as_stored),
        CASE(test_delete_with_reason),
        CASE(test_delete_by_user),
        CASE(test_tokens),
        CASE(test_batches),
        CASE(test_restore),
        CASE(test_restore_of_a_closed_copy_without_linger),
        CASE(test_restored_session_expires),
        CASE(test_per_user_cap),
        CASE(test_connection_id_unique),
        CASE(test_expiry_by_engine_clock),
        CASE(test_wall_clock_followed_on_advance),
        CASE(test_expiry_in_real_time),
        CASE(test_bad_input),
        CASE(test_idle_detection),
        CASE(test_max_lifetime),
        CASE(test_close_linger),
        CASE(test_evict_oldest),
    };
    /* AFSM_BEHAVIOUR_FILTER="test_tokens" runs a subset (cmocka's glob). */
    if (getenv("AFSM_BEHAVIOUR_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_BEHAVIOUR_FILTER"));
    int failed = cmocka_run_group_tests_name("memory store", cases, use_memory, NULL);
    return failed + cmocka_run_group_tests_name("etcd store", cases, use_etcd, stop_etcd);
}
