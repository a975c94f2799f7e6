/*
 * test_etcd_store.c: the etcd store against a real etcd (etcd_harness.h):
 * two engines on one etcd share their sessions, events reach both once,
 * leases end what nobody keeps alive, caps hold across racing nodes, and a
 * dead etcd gives AFSM_EUNAVAILABLE within the request timeout while the
 * replica keeps answering, then recovers.
 *
 * Each test uses its own key prefix, so tests share one etcd. Every wait is
 * a poll with a deadline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "afsm.h"
/* A failed wait shows the events recorded so far (dump_events, below). */
#define WAIT_FOR_NAP_MS       10
#define WAIT_FOR_ON_TIMEOUT() dump_events()
#include "etcd_test_support.h"

/* ---- events ------------------------------------------------------------------ */

#define EVENTS_MAX 4096

typedef struct recorded {
    uint32_t type;
    uint32_t new_state;
    afsm_uuid id;
    char reason[64];
} recorded;

typedef struct recorder {
    pthread_mutex_t lock;
    recorded events[EVENTS_MAX];
    size_t count;
} recorder;

static void record_event(void *ctx, const afsm_event *ev)
{
    recorder *r = ctx;
    pthread_mutex_lock(&r->lock);
    if (r->count < EVENTS_MAX) {
        recorded *e = &r->events[r->count++];
        e->type = ev->type;
        e->new_state = ev->new_state;
        e->id = ev->session_id;
        size_t n = ev->reason_len < sizeof(e->reason) - 1 ? ev->reason_len : sizeof(e->reason) - 1;
        memcpy(e->reason, ev->reason != NULL ? ev->reason : "", n);
        e->reason[n] = '\0';
    }
    pthread_mutex_unlock(&r->lock);
}

/* How many events of type for id (reason: NULL for any). */
static size_t events_of(recorder *r, uint32_t type, const afsm_uuid *id, const char *reason)
{
    size_t n = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->count; i++)
        if (r->events[i].type == type && memcmp(&r->events[i].id, id, sizeof(*id)) == 0 &&
            (reason == NULL || strcmp(r->events[i].reason, reason) == 0))
            n++;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* Every recorder's events, printed when a wait fails. */
static recorder *recorders[4];

static void dump_events(void)
{
    for (int k = 0; k < 4; k++) {
        recorder *r = recorders[k];
        if (r == NULL)
            continue;
        pthread_mutex_lock(&r->lock);
        for (size_t i = 0; i < r->count; i++) {
            char id[AFSM_UUID_STRING_SIZE];
            afsm_uuid_format(&r->events[i].id, id);
            fprintf(stderr, "recorder %d: event %u %s state %u reason '%s'\n", k, r->events[i].type, id,
                    r->events[i].new_state, r->events[i].reason);
        }
        pthread_mutex_unlock(&r->lock);
    }
}

static recorder *recorder_new(void)
{
    recorder *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    pthread_mutex_init(&r->lock, NULL);
    for (int k = 0; k < 4; k++) {
        if (recorders[k] == NULL) {
            recorders[k] = r;
            break;
        }
    }
    return r;
}

static void recorder_free(recorder *r)
{
    for (int k = 0; k < 4; k++)
        if (recorders[k] == r)
            recorders[k] = NULL;
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* ---- engines ------------------------------------------------------------------- */

typedef struct log_lines {
    pthread_mutex_t lock;
    int warnings;
    int reloads;
} log_lines;

static log_lines logs = {PTHREAD_MUTEX_INITIALIZER, 0, 0};

static void count_log(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t n)
{
    (void)ctx, (void)fields, (void)n;
    if (level >= AFSM_LOG_WARN && strncmp(message, "etcd:", 5) == 0) {
        pthread_mutex_lock(&logs.lock);
        logs.warnings++;
        logs.reloads += strstr(message, "replica reloaded") != NULL;
        pthread_mutex_unlock(&logs.lock);
    }
}

static int reloads(void)
{
    pthread_mutex_lock(&logs.lock);
    int n = logs.reloads;
    pthread_mutex_unlock(&logs.lock);
    return n;
}

static int warnings(void)
{
    pthread_mutex_lock(&logs.lock);
    int n = logs.warnings;
    pthread_mutex_unlock(&logs.lock);
    return n;
}

typedef struct engine_options {
    const char *endpoints; /* NULL: the cluster's */
    const char *prefix;
    recorder *events;
    uint64_t timeout_ms;
    uint64_t request_timeout_ms;
    uint32_t cap;
} engine_options;

static afsm_status open_engine(const engine_options *o, afsm_engine **out)
{
    afsm_config cfg;
    etcd_test_config(&cfg, o->prefix);
    if (o->endpoints != NULL)
        cfg.etcd_endpoints = o->endpoints;
    if (o->request_timeout_ms != 0)
        cfg.etcd_request_timeout_ms = o->request_timeout_ms;
    cfg.default_timeout_ms = o->timeout_ms != 0 ? o->timeout_ms : 60000;
    cfg.max_sessions_per_user = o->cap;
    cfg.on_event = o->events != NULL ? record_event : NULL;
    cfg.event_ctx = o->events;
    cfg.on_log = count_log;
    cfg.log_level = AFSM_LOG_WARN;
    cfg.shard_count = 4;
    return afsm_engine_open(&cfg, out);
}

/* A session of user with the metadata device=phone (the tests check it
 * travels through etcd), on connection (NULL: a fresh one). */
static afsm_status create_phone(afsm_engine *e, const char *user, afsm_uuid *connection, afsm_session_info *out)
{
    afsm_create_options o = client_options(user);
    afsm_uuid fresh;
    if (connection == NULL) {
        afsm_uuid_v7(&fresh);
        connection = &fresh;
    }
    o.connection_id = *connection;
    afsm_kv meta[] = {{"device", 6, "phone", 5}};
    o.metadata = meta;
    o.metadata_count = 1;
    afsm_session_info_init(out, AFSM_SESSION_INFO_VERSION);
    return afsm_session_create(e, &o, out);
}

/* The engine's Prometheus text passes promtool and has the etcd series. */
static void check_prometheus(afsm_engine *e)
{
    static char text[1 << 16];
    size_t needed = 0;
    assert_int_equal(afsm_metrics_write_prometheus(e, text, sizeof(text), &needed), AFSM_OK);
    assert_non_null(strstr(text, "session_etcd_lease_keepalives_total "));
    assert_non_null(strstr(text, "session_etcd_replica_lag_seconds "));
    char path[] = "/tmp/afsm-etcd-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, needed - 1), (ssize_t)(needed - 1));
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s >/dev/null 2>&1", path);
    int rc = system(cmd);
    unlink(path);
    assert_int_equal(rc, 0);
}

/* ---- tests ---------------------------------------------------------------------- */

/* Created on A; read, heartbeated, updated, rotated and deleted on B; every
 * change reaches both engines' callbacks exactly once. */
static void test_two_engines_share_sessions(void **state)
{
    (void)state;
    recorder *ra = recorder_new(), *rb = recorder_new();
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/t1/", .events = ra};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.events = rb;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);

    afsm_session_info s, copy;
    assert_int_equal(create_phone(a, "alice", NULL, &s), AFSM_OK);
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_OK); /* A reads its own write at once */
    WAIT_FOR(get(b, &s.session_id, &copy) == AFSM_OK, 5000);
    assert_string_equal(copy.user_id, "alice");
    assert_int_equal(copy.state, AFSM_STATE_CONNECTING);
    assert_int_equal(copy.client_port, 4433);
    assert_memory_equal(&copy.connection_id, &s.connection_id, sizeof(afsm_uuid));
    assert_int_equal(copy.created_at_ns, s.created_at_ns);
    afsm_session_info_init(&copy, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get_by_connection(b, &s.connection_id, &copy), AFSM_OK);
    char meta[64];
    size_t needed, count;
    assert_int_equal(afsm_session_get_metadata(b, &s.session_id, meta, sizeof(meta), &needed, &count), AFSM_OK);
    assert_int_equal(count, 1);
    assert_string_equal(meta, "device");

    uint64_t remaining_ms = 0;
    assert_int_equal(afsm_session_heartbeat(b, &s.session_id, &remaining_ms), AFSM_OK);
    assert_true(remaining_ms > 59000);

    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE | AFSM_UPDATE_METADATA_MERGE;
    u.state = AFSM_STATE_ACTIVE;
    afsm_kv more[] = {{"region", 6, "eu", 2}};
    u.metadata = more;
    u.metadata_count = 1;
    assert_int_equal(afsm_session_update(b, &s.session_id, &u, &copy), AFSM_OK);
    assert_int_equal(copy.state, AFSM_STATE_ACTIVE);
    assert_int_equal(copy.metadata_count, 2);
    WAIT_FOR(get(a, &s.session_id, &copy) == AFSM_OK && copy.state == AFSM_STATE_ACTIVE && copy.metadata_count == 2,
             5000);
    /* A transition the state machine refuses is refused on every node. */
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_CONNECTING;
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_ETRANSITION);

    char token[AFSM_TOKEN_SIZE];
    assert_int_equal(afsm_token_rotate(b, &s.session_id, 0, token, sizeof(token), NULL), AFSM_OK);
    WAIT_FOR(get(a, &s.session_id, &copy) == AFSM_OK && copy.token_generation == 2, 5000);

    assert_int_equal(afsm_session_delete(b, &s.session_id, "logout", 6), AFSM_OK);
    assert_int_equal(get(b, &s.session_id, &copy), AFSM_ENOTFOUND);
    WAIT_FOR(get(a, &s.session_id, &copy) == AFSM_ENOTFOUND, 5000);
    assert_int_equal(afsm_session_delete(a, &s.session_id, NULL, 0), AFSM_ENOTFOUND);

    WAIT_FOR(events_of(ra, AFSM_EVENT_DELETED, &s.session_id, "logout") == 1, 5000);
    WAIT_FOR(events_of(rb, AFSM_EVENT_DELETED, &s.session_id, "logout") == 1, 5000);
    for (int i = 0; i < 2; i++) {
        recorder *r = i == 0 ? ra : rb;
        assert_int_equal(events_of(r, AFSM_EVENT_CREATED, &s.session_id, NULL), 1);
        assert_int_equal(events_of(r, AFSM_EVENT_STATE_CHANGED, &s.session_id, NULL), 1);
        assert_int_equal(events_of(r, AFSM_EVENT_EXPIRED, &s.session_id, NULL), 0);
    }
    assert_int_equal(afsm_engine_close(a), AFSM_OK);
    assert_int_equal(afsm_engine_close(b), AFSM_OK);
    recorder_free(ra);
    recorder_free(rb);
}

/* A taken connection id fails on the other node too, even before that
 * node's replica has heard of it (the txn's guard, not the replica). */
static void test_connection_ids_unique_across_nodes(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/t2/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_uuid connection;
    afsm_uuid_v7(&connection);
    afsm_session_info s;
    assert_int_equal(create_phone(a, "bob", &connection, &s), AFSM_OK);
    assert_int_equal(create_phone(b, "bob", &connection, &s), AFSM_EEXISTS);
    assert_int_equal(create_phone(a, "bob", &connection, &s), AFSM_EEXISTS);
    /* The refused create left nothing behind: s/, c/ and u/ of one session. */
    assert_int_equal(keys_in_etcd("/t2/"), 3);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* Leases: a session nobody heartbeats expires on etcd and arrives at both
 * engines as EXPIRED; one heartbeated on B only stays alive past its lease
 * TTL (B renews A's lease); closing an engine leaves its sessions to their
 * leases, and nothing is left under the prefix. */
static void test_leases_expire_everywhere(void **state)
{
    (void)state;
    recorder *ra = recorder_new(), *rb = recorder_new();
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/t3/", .events = ra, .timeout_ms = 1500};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.events = rb;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);

    afsm_session_info idle, kept, copy;
    assert_int_equal(create_phone(a, "carol", NULL, &idle), AFSM_OK);
    assert_int_equal(create_phone(a, "carol", NULL, &kept), AFSM_OK);
    WAIT_FOR(get(b, &kept.session_id, &copy) == AFSM_OK, 5000);
    /* Heartbeat `kept` on B for longer than its lease's TTL (2 s): 35
     * heartbeats, but at most one renewal per timeout / 3 (0.5 s). */
    uint64_t until = harness_now_ms() + 3500;
    int heartbeats = 0;
    while (harness_now_ms() < until) {
        assert_int_equal(afsm_session_heartbeat(b, &kept.session_id, NULL), AFSM_OK);
        heartbeats++;
        harness_nap_ms(100);
    }
    afsm_metrics mb = metrics_of(b);
    assert_true(mb.etcd_lease_keepalives_total >= 3 && mb.etcd_lease_keepalives_total <= 8);
    assert_true(heartbeats > 2 * (int)mb.etcd_lease_keepalives_total);
    assert_int_equal(metrics_of(a).etcd_lease_grants_total, 2);
    assert_int_equal(mb.etcd_lease_grants_total, 0);
    check_prometheus(b);
    WAIT_FOR(events_of(ra, AFSM_EVENT_EXPIRED, &idle.session_id, "expired") == 1, 10000);
    WAIT_FOR(events_of(rb, AFSM_EVENT_EXPIRED, &idle.session_id, "expired") == 1, 10000);
    assert_int_equal(get(a, &idle.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(get(b, &idle.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(get(a, &kept.session_id, &copy), AFSM_OK);
    assert_int_equal(events_of(ra, AFSM_EVENT_EXPIRED, &kept.session_id, NULL), 0);

    /* Close A without deleting: B still serves the session until its lease
     * ends, then sees it expire; no key is left behind. */
    assert_int_equal(afsm_engine_close(a), AFSM_OK);
    assert_int_equal(get(b, &kept.session_id, &copy), AFSM_OK);
    WAIT_FOR(events_of(rb, AFSM_EVENT_EXPIRED, &kept.session_id, "expired") == 1, 10000);
    WAIT_FOR(keys_in_etcd("/t3/") == 0, 5000);
    for (int i = 0; i < 2; i++) {
        recorder *r = i == 0 ? ra : rb;
        assert_int_equal(events_of(r, AFSM_EVENT_CREATED, &idle.session_id, NULL), 1);
        assert_int_equal(events_of(r, AFSM_EVENT_DELETED, &idle.session_id, NULL), 0);
    }
    afsm_engine_close(b);
    recorder_free(ra);
    recorder_free(rb);
}

/* ---- caps across nodes ---- */

typedef struct racer {
    afsm_engine *engine;
    pthread_barrier_t *start;
    int ok, limited, other;
} racer;

static void *race_creates(void *arg)
{
    racer *r = arg;
    pthread_barrier_wait(r->start);
    for (int i = 0; i < 6; i++) {
        afsm_session_info s;
        afsm_status st = create_phone(r->engine, "dave", NULL, &s);
        r->ok += st == AFSM_OK;
        r->limited += st == AFSM_ELIMIT;
        r->other += st != AFSM_OK && st != AFSM_ELIMIT;
    }
    return NULL;
}

static void test_cap_holds_across_racing_nodes(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/t4/", .cap = 3};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 4);
    racer racers[4] = {{a, &start, 0, 0, 0}, {b, &start, 0, 0, 0}, {a, &start, 0, 0, 0}, {b, &start, 0, 0, 0}};
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&threads[i], NULL, race_creates, &racers[i]);
    int ok = 0, limited = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        ok += racers[i].ok;
        limited += racers[i].limited;
        assert_int_equal(racers[i].other, 0);
    }
    pthread_barrier_destroy(&start);
    assert_int_equal(ok, 3);
    assert_int_equal(limited, 21);
    /* Three sessions, each with s/, c/, u/ and its slot. */
    assert_int_equal(keys_in_etcd("/t4/"), 12);
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.user_id = "dave";
    f.user_id_len = 4;
    f.limit = 10;
    afsm_session_info page[10];
    for (int i = 0; i < 10; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    size_t count;
    uint64_t total;
    WAIT_FOR(afsm_session_list(b, &f, page, 10, &count, &total, NULL) == AFSM_OK && total == 3, 5000);
    /* Log out everywhere frees the slots for new sessions. */
    size_t deleted = 0;
    assert_int_equal(afsm_session_delete_by_user(a, "dave", 4, "logout", 6, &deleted), AFSM_OK);
    assert_int_equal(deleted, 3);
    WAIT_FOR(afsm_session_list(b, &f, page, 10, &count, &total, NULL) == AFSM_OK && total == 0, 5000);
    afsm_session_info s;
    assert_int_equal(create_phone(b, "dave", NULL, &s), AFSM_OK);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* Bad data under the prefix is logged and skipped; the engines go on. */
static void test_bad_data_is_skipped(void **state)
{
    (void)state;
    afsm_engine *a;
    engine_options o = {.prefix = "/t5/"};
    int before = warnings();
    put_raw("/t5/s/0190a8b0-0000-7000-8000-000000000001", "{\"v\":1,\"id\":"); /* truncated */
    put_raw("/t5/zzz", "foreign");
    assert_int_equal(open_engine(&o, &a), AFSM_OK); /* the load skips both */
    assert_true(warnings() >= before + 2);
    put_raw("/t5/s/0190a8b0-0000-7000-8000-000000000002", "not json"); /* the watch skips it */
    WAIT_FOR(warnings() >= before + 3, 5000);
    afsm_session_info s, copy;
    assert_int_equal(create_phone(a, "erin", NULL, &s), AFSM_OK);
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_OK);
    afsm_engine_close(a);
}

/* Every endpoint down: writes fail with AFSM_EUNAVAILABLE within the
 * request timeout and replica reads still answer; when etcd is back, writes
 * work again and the watch resumes (B sees what A writes afterwards). */
static void test_unavailable_then_recovery(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/t6/", .request_timeout_ms = 1000};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info s, copy;
    assert_int_equal(create_phone(a, "frank", NULL, &s), AFSM_OK);
    WAIT_FOR(get(b, &s.session_id, &copy) == AFSM_OK, 5000);

    assert_true(metrics_of(b).etcd_replica_lag_seconds == 0.0);
    harness_kill_member(&cluster, 0, SIGKILL);
    uint64_t t0 = harness_now_ms();
    assert_int_equal(create_phone(a, "frank", NULL, &copy), AFSM_EUNAVAILABLE);
    uint64_t elapsed = harness_now_ms() - t0;
    assert_true(elapsed <= 1000 + 300);
    assert_int_equal(afsm_session_delete(b, &s.session_id, NULL, 0), AFSM_EUNAVAILABLE);
    assert_int_equal(get(b, &s.session_id, &copy), AFSM_OK); /* the replica answers */
    /* The heartbeat is taken although its activation (an etcd write)
     * cannot be made; the next ones within a quarter period do not try
     * again, so they do not block for the request timeout each. */
    assert_int_equal(afsm_session_heartbeat(a, &s.session_id, NULL), AFSM_OK);
    t0 = harness_now_ms();
    for (int i = 0; i < 3; i++)
        assert_int_equal(afsm_session_heartbeat(a, &s.session_id, NULL), AFSM_OK);
    assert_true(harness_now_ms() - t0 < 500);
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.state, AFSM_STATE_CONNECTING);          /* not activated here alone */
    WAIT_FOR(metrics_of(b).etcd_replica_lag_seconds > 0.2, 5000); /* the replica says how stale it may be */

    /* A hung etcd (accepts, never answers) is bounded the same way. */
    assert_int_equal(harness_start_member(&cluster, 0, "existing"), 0);
    assert_true(harness_wait_ready(&cluster, 0, harness_now_ms() + 20000));
    harness_kill_member(&cluster, 0, SIGSTOP);
    t0 = harness_now_ms();
    assert_int_equal(create_phone(a, "frank", NULL, &copy), AFSM_EUNAVAILABLE);
    elapsed = harness_now_ms() - t0;
    assert_true(elapsed >= 900 && elapsed <= 1000 + 300);
    harness_kill_member(&cluster, 0, SIGCONT);

    afsm_session_info later;
    WAIT_FOR(create_phone(a, "frank", NULL, &later) == AFSM_OK, 10000);
    WAIT_FOR(get(b, &later.session_id, &copy) == AFSM_OK, 10000);
    assert_int_equal(afsm_session_delete(b, &s.session_id, NULL, 0), AFSM_OK);
    WAIT_FOR(get(a, &s.session_id, &copy) == AFSM_ENOTFOUND, 10000);
    WAIT_FOR(metrics_of(b).etcd_replica_lag_seconds == 0.0, 10000);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

static afsm_status open_mode(const char *prefix, uint32_t mode, afsm_engine **out)
{
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.store = AFSM_STORE_ETCD;
    cfg.etcd_endpoints = cluster.endpoints;
    cfg.etcd_prefix = prefix;
    cfg.etcd_request_timeout_ms = 1000;
    cfg.etcd_dial_timeout_ms = 300;
    cfg.etcd_read_mode = mode;
    return afsm_engine_open(&cfg, out);
}

/* Consistent and linearizable gets see another node's write as soon as it
 * is acknowledged (no waiting for the watch on the caller's side); the
 * replica mode keeps answering while etcd is down, the others say
 * AFSM_EUNAVAILABLE. */
static void test_read_modes(void **state)
{
    (void)state;
    afsm_engine *writer, *consistent, *linear, *replica;
    assert_int_equal(open_mode("/t7/", AFSM_READ_REPLICA, &writer), AFSM_OK);
    assert_int_equal(open_mode("/t7/", AFSM_READ_CONSISTENT, &consistent), AFSM_OK);
    assert_int_equal(open_mode("/t7/", AFSM_READ_LINEARIZABLE, &linear), AFSM_OK);
    assert_int_equal(open_mode("/t7/", AFSM_READ_REPLICA, &replica), AFSM_OK);
    for (int round = 0; round < 20; round++) {
        afsm_session_info s, copy;
        assert_int_equal(create_phone(writer, "kim", NULL, &s), AFSM_OK);
        assert_int_equal(get(consistent, &s.session_id, &copy), AFSM_OK);
        assert_int_equal(copy.state, AFSM_STATE_CONNECTING);
        assert_int_equal(get(linear, &s.session_id, &copy), AFSM_OK);
        assert_string_equal(copy.user_id, "kim");
        assert_int_equal(copy.created_at_ns, s.created_at_ns);
        afsm_session_info_init(&copy, AFSM_SESSION_INFO_VERSION);
        assert_int_equal(afsm_session_get_by_connection(consistent, &s.connection_id, &copy), AFSM_OK);
        assert_memory_equal(&copy.session_id, &s.session_id, sizeof(afsm_uuid));
        char meta[64];
        size_t needed, count;
        assert_int_equal(afsm_session_get_metadata(linear, &s.session_id, meta, sizeof(meta), &needed, &count),
                         AFSM_OK);
        assert_int_equal(count, 1);
        assert_memory_equal(meta, "device\0phone\0", 13);
        afsm_update u = AFSM_UPDATE_INIT;
        u.fields = AFSM_UPDATE_STATE;
        u.state = AFSM_STATE_ACTIVE;
        assert_int_equal(afsm_session_update(writer, &s.session_id, &u, NULL), AFSM_OK);
        assert_int_equal(get(consistent, &s.session_id, &copy), AFSM_OK);
        assert_int_equal(copy.state, AFSM_STATE_ACTIVE);
        assert_int_equal(get(linear, &s.session_id, &copy), AFSM_OK);
        assert_int_equal(copy.state, AFSM_STATE_ACTIVE);
        assert_int_equal(afsm_session_delete(writer, &s.session_id, NULL, 0), AFSM_OK);
        assert_int_equal(get(consistent, &s.session_id, &copy), AFSM_ENOTFOUND);
        assert_int_equal(get(linear, &s.session_id, &copy), AFSM_ENOTFOUND);
    }
    afsm_session_info kept, copy;
    assert_int_equal(create_phone(writer, "kim", NULL, &kept), AFSM_OK);
    WAIT_FOR(get(replica, &kept.session_id, &copy) == AFSM_OK, 5000);
    harness_kill_member(&cluster, 0, SIGSTOP);
    assert_int_equal(get(consistent, &kept.session_id, &copy), AFSM_EUNAVAILABLE);
    assert_int_equal(get(linear, &kept.session_id, &copy), AFSM_EUNAVAILABLE);
    assert_int_equal(get(replica, &kept.session_id, &copy), AFSM_OK);
    harness_kill_member(&cluster, 0, SIGCONT);
    afsm_engine *refused = NULL;
    assert_int_equal(open_mode("/t7/", 3, &refused), AFSM_EINVAL);
    afsm_engine_close(writer);
    afsm_engine_close(consistent);
    afsm_engine_close(linear);
    afsm_engine_close(replica);
}

static uint64_t packets(afsm_engine *e, const afsm_uuid *id)
{
    afsm_session_info info;
    return get(e, id, &info) == AFSM_OK ? info.stats.packets_sent : UINT64_MAX;
}

/* Stats additions stay local and are flushed on a period: each node's
 * additions reach the other, and neither overwrites the other's, even
 * across another node's update of the same session. */
static void test_stats_flushed_and_merged(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.store = AFSM_STORE_ETCD;
    cfg.etcd_endpoints = cluster.endpoints;
    cfg.etcd_prefix = "/t8/";
    cfg.etcd_stats_flush_ms = 200;
    assert_int_equal(afsm_engine_open(&cfg, &a), AFSM_OK);
    assert_int_equal(afsm_engine_open(&cfg, &b), AFSM_OK);
    afsm_session_info s;
    assert_int_equal(create_phone(a, "leo", NULL, &s), AFSM_OK);
    WAIT_FOR(packets(b, &s.session_id) == 0, 5000);
    afsm_stats ten = {.packets_sent = 10, .bytes_sent = 1000}, five = {.packets_sent = 5, .bytes_sent = 500};
    assert_int_equal(afsm_session_add_stats(a, &s.session_id, &ten), AFSM_OK);
    assert_int_equal(afsm_session_add_stats(b, &s.session_id, &five), AFSM_OK);
    assert_int_equal(packets(a, &s.session_id), 10); /* local at once */
    WAIT_FOR(packets(a, &s.session_id) == 15 && packets(b, &s.session_id) == 15, 5000);
    /* B adds again, A changes the state before B's next flush: both land. */
    assert_int_equal(afsm_session_add_stats(b, &s.session_id, &five), AFSM_OK);
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_OK);
    WAIT_FOR(packets(a, &s.session_id) == 20 && packets(b, &s.session_id) == 20, 5000);
    /* Close flushes what is left. */
    assert_int_equal(afsm_session_add_stats(b, &s.session_id, &five), AFSM_OK);
    afsm_engine_close(b);
    WAIT_FOR(packets(a, &s.session_id) == 25, 5000);
    afsm_engine_close(a);
}

typedef struct filler {
    afsm_engine *engine;
    int count, ok;
} filler;

static void *fill(void *arg)
{
    filler *f = arg;
    for (int i = 0; i < f->count; i++) {
        afsm_session_info s;
        f->ok += create_phone(f->engine, "mia", NULL, &s) == AFSM_OK;
    }
    return NULL;
}

/* More keys than one range page (1000), and records past the first page
 * (keys sort c/ < s/ < u/: 600 sessions put 200 s/ keys on the second
 * page): an engine opened afterwards loads every session at open, before
 * its watch could deliver any. */
static void test_load_reads_every_page(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/t9/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    filler fillers[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        fillers[i] = (filler){a, 150, 0};
        pthread_create(&threads[i], NULL, fill, &fillers[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(fillers[i].ok, 150);
    }
    assert_int_equal(keys_in_etcd("/t9/"), 1800);
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(b, &counts), AFSM_OK);
    assert_int_equal(counts.total, 600);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* A field of /proc/self/status in kB (VmRSS, VmHWM); -1 if missing. */
static long status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    size_t len = strlen(field);
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, field, len) == 0 && line[len] == ':')
            kb = atol(line + len + 1);
    if (f != NULL)
        fclose(f);
    return kb;
}

#define BIG_LOAD_SESSIONS 3000 /* 9,000 keys: nine range pages */

/* The load applies each range page as it arrives: opening a node on a
 * prefix of many sessions needs the replica it builds and about one page's
 * memory more, not the whole prefix's answers at once. Measured with 3,000
 * sessions (nine pages): the process's peak RSS rose 3.7 MB during the
 * open (the replica, ~1.2 KB a session); holding every page first, 19.3 MB
 * (~6.4 KB a session: gigabytes at a million sessions). The peak is
 * VmHWM, reset just before. Sanitizers keep freed memory in quarantine, so
 * there only the load's result is checked. */
static void test_load_memory_is_one_page_not_the_prefix(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/bigload/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    filler fillers[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        fillers[i] = (filler){a, BIG_LOAD_SESSIONS / 4, 0};
        pthread_create(&threads[i], NULL, fill, &fillers[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(fillers[i].ok, BIG_LOAD_SESSIONS / 4);
    }
    malloc_trim(0);
    FILE *reset = fopen("/proc/self/clear_refs", "w"); /* "5": VmHWM := VmRSS */
    assert_non_null(reset);
    assert_true(fputs("5", reset) >= 0);
    assert_int_equal(fclose(reset), 0);
    long before_kb = status_kb("VmRSS");
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    long peak_kb = status_kb("VmHWM");
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(b, &counts), AFSM_OK);
    assert_int_equal(counts.total, BIG_LOAD_SESSIONS);
    print_message("open of %d sessions: RSS %ld kB before, peak %ld kB\n", BIG_LOAD_SESSIONS, before_kb, peak_kb);
#if !defined(AFSM_TSAN) && !defined(__SANITIZE_ADDRESS__)
    assert_true(before_kb > 0 && peak_kb > 0);
    assert_true(peak_kb - before_kb < 10 * 1024);
#endif
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* Configuration the etcd store refuses, each with its own status. */
/* The ids of every lease etcd holds (malloc'd; *n gets the count). */
static int64_t *leases_in_etcd(size_t *n)
{
    etcd_client *c = raw_client();
    json_object *body = json_object_new_object(), *reply = NULL, *list;
    assert_int_equal(etcd_call(c, "/v3/lease/leases", body, 1, &reply, NULL), AFSM_OK);
    *n = 0;
    int64_t *ids = NULL;
    if (json_object_object_get_ex(reply, "leases", &list) && json_object_is_type(list, json_type_array)) {
        ids = calloc(json_object_array_length(list) + 1, sizeof(*ids));
        assert_non_null(ids);
        for (size_t i = 0; i < json_object_array_length(list); i++)
            ids[(*n)++] = etcd_get_int64(json_object_array_get_idx(list, i), "ID");
    }
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
    return ids;
}

/* Leases in etcd now that were not in before[0..n_before). */
static size_t new_leases(const int64_t *before, size_t n_before)
{
    size_t n, fresh = 0;
    int64_t *now = leases_in_etcd(&n);
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < n_before && !seen; j++)
            seen = now[i] == before[j];
        fresh += !seen;
    }
    free(now);
    return fresh;
}

/* An engine whose creates have stopped keeps no spare leases and grants
 * none: its lease pool (leases.c) costs etcd writes only while sessions are
 * being created. Before, it kept 32 leases, revoking and regranting them
 * every timeout / 6 for ever (~6.4 raft writes/s per idle node at a 60 s
 * timeout). The pool's period at a 60 s timeout is 10 s. */
static void test_idle_engine_makes_no_lease_writes(void **state)
{
    (void)state;
    size_t n_before;
    int64_t *before = leases_in_etcd(&n_before);
    afsm_engine *e;
    engine_options o = {.prefix = "/idle/", .timeout_ms = 60000};
    assert_int_equal(open_engine(&o, &e), AFSM_OK);
    afsm_session_info s;
    assert_int_equal(create_phone(e, "ivan", NULL, &s), AFSM_OK);
    uint64_t created_ms = harness_now_ms();
    /* The pool still grants spares on demand (a create took one)... */
    WAIT_FOR(new_leases(before, n_before) > 1, 5000);
    /* ...and within its period and a bit (its granter looks once a
     * second) only the session's own lease is left. */
    WAIT_FOR(new_leases(before, n_before) == 1, 15000);
    uint64_t idle_after_ms = harness_now_ms() - created_ms;
    uint64_t grants = metrics_of(e).etcd_lease_grants_total;
    /* And it stays so for two more looks of the granter. */
    uint64_t until = harness_now_ms() + 2500;
    while (harness_now_ms() < until) {
        size_t fresh = new_leases(before, n_before);
        if (fresh != 1)
            fail_msg("%zu leases in etcd besides those from before the test, want the session's 1 (grants %llu)", fresh,
                     (unsigned long long)metrics_of(e).etcd_lease_grants_total);
        harness_nap_ms(100);
    }
    assert_int_equal(metrics_of(e).etcd_lease_grants_total, grants);
    afsm_session_info copy;
    assert_int_equal(get(e, &s.session_id, &copy), AFSM_OK);
    fprintf(stderr, "idle lease pool: spare leases gone %llu ms after the last create, %llu grants in all\n",
            (unsigned long long)idle_after_ms, (unsigned long long)grants);
    afsm_engine_close(e);
    free(before);
}

static void test_config_checks(void **state)
{
    (void)state;
    afsm_config cfg;
    afsm_engine *e = NULL;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.store = AFSM_STORE_ETCD;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_ENULL); /* no endpoints */
    cfg.etcd_endpoints = "127.0.0.1:2379";                    /* no scheme */
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_EINVAL);
    cfg.etcd_endpoints = cluster.endpoints;
    cfg.idle_timeout_ms = 1000;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_EINVAL);
    cfg.idle_timeout_ms = 0;
    cfg.store = 7;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_EINVAL);
    /* Nothing listening: the initial load fails within the timeout. */
    char dead[64];
    snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", harness_free_port());
    cfg.store = AFSM_STORE_ETCD;
    cfg.etcd_endpoints = dead;
    cfg.etcd_request_timeout_ms = 500;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_EUNAVAILABLE);
    assert_null(e);
    /* A version 1 config (the fields before the store) still opens: memory. */
    afsm_config v1;
    memset(&v1, 0xab, sizeof(v1)); /* what lies past a v1 struct is not read */
    assert_int_equal(afsm_config_init(&v1, 1), AFSM_OK);
    assert_int_equal(afsm_engine_open(&v1, &e), AFSM_OK);
    afsm_engine_close(e);
}

/* ---- a 3-member cluster ---------------------------------------------------------- */

static char member_endpoint[HARNESS_MEMBERS_MAX][48];

static const char *endpoint_of(int i)
{
    snprintf(member_endpoint[i], sizeof(member_endpoint[i]), "http://127.0.0.1:%d", cluster.members[i].client_port);
    return member_endpoint[i];
}

/* Whether etcd (through member i only) has the session's record. */
static int member_has_key(int i, const char *key)
{
    etcd_client_config cc = {.endpoints = endpoint_of(i), .dial_timeout_ms = 300, .request_timeout_ms = 3000};
    etcd_client *c;
    if (etcd_client_open(&cc, &c) != AFSM_OK)
        return 0;
    json_object *body = json_object_new_object(), *reply = NULL;
    json_object_object_add(body, "key", etcd_json_bytes(key, strlen(key)));
    json_object_object_add(body, "count_only", json_object_new_boolean(1));
    int found = etcd_call(c, "/v3/kv/range", body, 1, &reply, NULL) == AFSM_OK && etcd_get_int64(reply, "count") == 1;
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
    return found;
}

#define LOAD_MAX 4000

typedef struct load {
    afsm_engine *engine;
    _Atomic int stop;
    _Atomic int acked;
    afsm_uuid ids[LOAD_MAX];
    int unavailable, other;
} load;

static void *create_load(void *arg)
{
    load *l = arg;
    while (!atomic_load(&l->stop) && atomic_load(&l->acked) < LOAD_MAX) {
        afsm_session_info s;
        afsm_status st = create_phone(l->engine, "gina", NULL, &s);
        if (st == AFSM_OK) {
            l->ids[atomic_load(&l->acked)] = s.session_id;
            atomic_fetch_add(&l->acked, 1);
        } else if (st == AFSM_EUNAVAILABLE) {
            l->unavailable++; /* in flight when the member died: outcome unknown, not acknowledged */
        } else {
            l->other++;
            fprintf(stderr, "create under load: %s\n", afsm_status_name(st));
        }
    }
    return NULL;
}

/* One member SIGKILLed mid-load: the load goes on through the others, every
 * acknowledged create is in etcd, and the member catches up on restart. */
static void test_member_killed_mid_load(void **state)
{
    (void)state;
    afsm_engine *a;
    engine_options o = {.prefix = "/c1/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK); /* all three endpoints, member 0 first */
    load *l = calloc(1, sizeof(*l));
    assert_non_null(l);
    l->engine = a;
    pthread_t t;
    pthread_create(&t, NULL, create_load, l);
    WAIT_FOR(atomic_load(&l->acked) >= 30, 10000);
    harness_kill_member(&cluster, 0, SIGKILL);
    int at_kill = atomic_load(&l->acked);
    WAIT_FOR(atomic_load(&l->acked) >= at_kill + 100, 20000); /* the load goes on */
    atomic_store(&l->stop, 1);
    pthread_join(t, NULL);
    assert_int_equal(l->other, 0);
    int acked = atomic_load(&l->acked);
    char key[96], id[AFSM_UUID_STRING_SIZE];
    for (int i = 0; i < acked; i++) {
        afsm_uuid_format(&l->ids[i], id);
        snprintf(key, sizeof(key), "/c1/s/%s", id);
        assert_true(member_has_key(1, key));
    }
    /* Restarted, member 0 catches up: it serves the last acknowledged create. */
    assert_int_equal(harness_start_member(&cluster, 0, "existing"), 0);
    assert_true(harness_wait_ready(&cluster, 0, harness_now_ms() + 20000));
    afsm_uuid_format(&l->ids[acked - 1], id);
    snprintf(key, sizeof(key), "/c1/s/%s", id);
    WAIT_FOR(member_has_key(0, key), 10000);
    /* Nothing else: at most the creates whose outcome was unknown. */
    long keys = keys_in_etcd("/c1/");
    assert_true(keys >= 3L * acked && keys <= 3L * (acked + l->unavailable));
    free(l);
    afsm_engine_close(a);
}

/* A watcher that missed a compacted range reloads and fires the
 * differences: B follows member 2 only, which is down while A creates,
 * deletes and compacts. */
static void test_compaction_reloads_the_replica(void **state)
{
    (void)state;
    recorder *rb = recorder_new();
    afsm_engine *a, *b;
    char a_endpoints[100];
    snprintf(a_endpoints, sizeof(a_endpoints), "%s,%s", endpoint_of(0), endpoint_of(1));
    engine_options o = {.prefix = "/c2/", .endpoints = a_endpoints};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.endpoints = endpoint_of(2);
    o.events = rb;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info old, fresh, copy;
    assert_int_equal(create_phone(a, "hank", NULL, &old), AFSM_OK);
    WAIT_FOR(get(b, &old.session_id, &copy) == AFSM_OK, 5000);
    int before = reloads();

    harness_kill_member(&cluster, 2, SIGKILL);
    /* If member 2 led, writes fail (AFSM_EUNAVAILABLE) until a new leader. */
    assert_true(harness_wait_ready(&cluster, -1, harness_now_ms() + 10000));
    assert_int_equal(create_phone(a, "hank", NULL, &fresh), AFSM_OK);
    assert_int_equal(afsm_session_delete(a, &old.session_id, "bye", 3), AFSM_OK);
    compact_now(a_endpoints); /* everything so far, through A's members */
    /* B still answers from its replica while its only member is down. */
    assert_int_equal(get(b, &old.session_id, &copy), AFSM_OK);

    assert_int_equal(harness_start_member(&cluster, 2, "existing"), 0);
    WAIT_FOR(get(b, &fresh.session_id, &copy) == AFSM_OK, 20000);
    WAIT_FOR(get(b, &old.session_id, &copy) == AFSM_ENOTFOUND, 5000);
    WAIT_FOR(events_of(rb, AFSM_EVENT_CREATED, &fresh.session_id, NULL) == 1, 5000);
    WAIT_FOR(events_of(rb, AFSM_EVENT_DELETED, &old.session_id, "bye") == 1, 5000);
    /* Logged once the load has returned, after the events it fires. */
    WAIT_FOR(reloads() == before + 1, 5000);
    afsm_engine_close(a);
    afsm_engine_close(b);
    recorder_free(rb);
}

/* ---- TLS and auth ------------------------------------------------------------------ */

/* An etcd that wants client certificates (made by the test with openssl):
 * engines with the CA, certificate and key share sessions; one without a
 * client certificate cannot even load. */
static void test_tls_with_client_certificates(void **state)
{
    (void)state;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.store = AFSM_STORE_ETCD;
    cfg.etcd_endpoints = cluster.endpoints;
    cfg.etcd_prefix = "/tls/";
    cfg.etcd_request_timeout_ms = 3000;
    cfg.etcd_ca_file = cluster.ca;
    cfg.etcd_cert_file = cluster.client_cert;
    cfg.etcd_key_file = cluster.client_key;
    afsm_engine *a, *b, *none = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &a), AFSM_OK);
    assert_int_equal(afsm_engine_open(&cfg, &b), AFSM_OK);
    afsm_session_info s, copy;
    assert_int_equal(create_phone(a, "ivan", NULL, &s), AFSM_OK);
    WAIT_FOR(get(b, &s.session_id, &copy) == AFSM_OK, 5000);
    afsm_engine_close(a);
    afsm_engine_close(b);
    cfg.etcd_cert_file = NULL;
    cfg.etcd_key_file = NULL;
    cfg.etcd_request_timeout_ms = 500;
    assert_int_equal(afsm_engine_open(&cfg, &none), AFSM_EUNAVAILABLE);
    assert_null(none);
}

static int auth_call(const char *path, const char *json, const char *user, const char *password)
{
    etcd_client_config cc = {.endpoints = cluster.endpoints,
                             .dial_timeout_ms = 300,
                             .request_timeout_ms = 3000,
                             .user = user,
                             .password = password};
    etcd_client *c;
    if (etcd_client_open(&cc, &c) != AFSM_OK)
        return -1;
    json_object *body = json_tokener_parse(json), *reply = NULL;
    afsm_status st = etcd_call(c, path, body, 0, &reply, NULL);
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
    return st;
}

/* etcd auth: with the user and password the engine works (its token is
 * fetched by the client and sent on every call); without, it cannot. */
static void test_etcd_auth(void **state)
{
    (void)state;
    assert_int_equal(auth_call("/v3/auth/role/add", "{\"name\":\"root\"}", NULL, NULL), AFSM_OK);
    assert_int_equal(auth_call("/v3/auth/user/add", "{\"name\":\"root\",\"password\":\"s3cret\"}", NULL, NULL),
                     AFSM_OK);
    assert_int_equal(auth_call("/v3/auth/user/grant", "{\"user\":\"root\",\"role\":\"root\"}", NULL, NULL), AFSM_OK);
    assert_int_equal(auth_call("/v3/auth/enable", "{}", NULL, NULL), AFSM_OK);

    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.store = AFSM_STORE_ETCD;
    cfg.etcd_endpoints = cluster.endpoints;
    cfg.etcd_prefix = "/auth/";
    cfg.etcd_request_timeout_ms = 3000;
    afsm_engine *anonymous = NULL, *a, *b;
    assert_int_not_equal(afsm_engine_open(&cfg, &anonymous), AFSM_OK);
    assert_null(anonymous);
    cfg.etcd_user = "root";
    cfg.etcd_password = "wrong";
    assert_int_not_equal(afsm_engine_open(&cfg, &anonymous), AFSM_OK);
    cfg.etcd_password = "s3cret";
    assert_int_equal(afsm_engine_open(&cfg, &a), AFSM_OK);
    assert_int_equal(afsm_engine_open(&cfg, &b), AFSM_OK);
    afsm_session_info s, copy;
    assert_int_equal(create_phone(a, "judy", NULL, &s), AFSM_OK);
    WAIT_FOR(get(b, &s.session_id, &copy) == AFSM_OK, 5000); /* the watch is authenticated too */
    assert_int_equal(afsm_session_delete(b, &s.session_id, NULL, 0), AFSM_OK);
    afsm_engine_close(a);
    afsm_engine_close(b);
    assert_int_equal(auth_call("/v3/auth/disable", "{}", "root", "s3cret"), AFSM_OK);
}

static int start_tls(void **state)
{
    (void)state;
    return harness_start_tls(&cluster, 1, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_checks),
        cmocka_unit_test(test_two_engines_share_sessions),
        cmocka_unit_test(test_connection_ids_unique_across_nodes),
        cmocka_unit_test(test_leases_expire_everywhere),
        cmocka_unit_test(test_cap_holds_across_racing_nodes),
        cmocka_unit_test(test_bad_data_is_skipped),
        cmocka_unit_test(test_unavailable_then_recovery),
        cmocka_unit_test(test_read_modes),
        cmocka_unit_test(test_stats_flushed_and_merged),
        cmocka_unit_test(test_load_reads_every_page),
        cmocka_unit_test(test_load_memory_is_one_page_not_the_prefix),
        cmocka_unit_test(test_idle_engine_makes_no_lease_writes),
        cmocka_unit_test(test_etcd_auth), /* last: it turns auth on and off */
    };
    /* AFSM_ETCD_TEST_FILTER="test_leases*" runs a subset (cmocka's glob). */
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    const struct CMUnitTest three[] = {
        cmocka_unit_test(test_member_killed_mid_load),
        cmocka_unit_test(test_compaction_reloads_the_replica),
    };
    const struct CMUnitTest tls[] = {
        cmocka_unit_test(test_tls_with_client_certificates),
    };
    int failed = cmocka_run_group_tests_name("one member", tests, start_one, stop_cluster);
    failed += cmocka_run_group_tests_name("TLS", tls, start_tls, stop_cluster);
    return failed + cmocka_run_group_tests_name("three members", three, start_three, stop_cluster);
}
