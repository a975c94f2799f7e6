/*
 * etcd_test_support.h: what the etcd store's tests (tests/etcd/ only)
 * share beyond the cluster itself: the one cluster a test file runs against
 * and the cmocka setups that start and stop it, WAIT_FOR (a poll with a
 * deadline, never a sleep), the common part of an engine's configuration,
 * create/get wrappers, a metrics snapshot, the test's own raw etcd client
 * (what a test reads or writes behind the engines' backs), the hold gate
 * (an event callback that holds its thread until the test opens it) and
 * stats as a replica and etcd hold them (with etcd/keys.h and
 * etcd/etcd_store.h included first, for the white-box ones).
 *
 * Each test file includes it once; what is specific to one file (its event
 * recorders and gates, its engine options) stays in that file. Everything
 * here is static inline, so a file pays nothing for what it does not use.
 *
 * Knobs a file may define before including this header:
 * - WAIT_FOR_NAP_MS: the pause between two looks of WAIT_FOR (default 5);
 * - WAIT_FOR_ON_TIMEOUT(): run once when a WAIT_FOR is about to fail (a
 *   diagnostic dump), after one more look at the condition;
 * - RAW_TIMEOUT_MS: the request timeout of the test's own etcd calls
 *   (default 3000).
 *
 * Shared state: `cluster`, set by the group setup before any test runs; a
 * hold gate's fields are guarded by its lock.
 */
#ifndef AFSM_ETCD_TEST_SUPPORT_H
#define AFSM_ETCD_TEST_SUPPORT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "afsm.h"
#include "etcd_harness.h"

static harness cluster;

#ifndef RAW_TIMEOUT_MS
#define RAW_TIMEOUT_MS 3000
#endif

/* ---- the cluster's lifetime (cmocka group setups and teardown) ------------------- */

static inline int start_one(void **state)
{
    (void)state;
    return harness_start(&cluster, 1);
}

static inline int start_three(void **state)
{
    (void)state;
    return harness_start(&cluster, 3);
}

static inline int stop_cluster(void **state)
{
    (void)state;
    harness_stop_all();
    return 0;
}

/* ---- waiting for a condition ------------------------------------------------------ */

#ifndef WAIT_FOR_NAP_MS
#define WAIT_FOR_NAP_MS 5
#endif

#ifdef WAIT_FOR_ON_TIMEOUT
#define WAIT_FOR_REPORT_(cond)                                                                                         \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            WAIT_FOR_ON_TIMEOUT();                                                                                     \
    } while (0)
#else
#define WAIT_FOR_REPORT_(cond) ((void)0)
#endif

/* Polls cond until it holds or ms have passed, then asserts it (cond is
 * evaluated again by the assertion: it must be safe to repeat). */
#define WAIT_FOR(cond, ms)                                                                                             \
    do {                                                                                                               \
        uint64_t until_ = harness_now_ms() + (ms);                                                                     \
        while (!(cond) && harness_now_ms() < until_)                                                                   \
            harness_nap_ms(WAIT_FOR_NAP_MS);                                                                           \
        WAIT_FOR_REPORT_(cond);                                                                                        \
        assert_true(cond);                                                                                             \
    } while (0)

/* ---- engines ---------------------------------------------------------------------- */

/* The configuration every etcd test starts from: the etcd store on the
 * cluster under prefix, a 3 s request timeout, a 300 ms dial timeout; the
 * rest is afsm_config_init's. The caller sets what its test needs on top. */
static inline void etcd_test_config(afsm_config *cfg, const char *prefix)
{
    assert_int_equal(afsm_config_init(cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    cfg->store = AFSM_STORE_ETCD;
    cfg->etcd_endpoints = cluster.endpoints;
    cfg->etcd_prefix = prefix;
    cfg->etcd_request_timeout_ms = 3000;
    cfg->etcd_dial_timeout_ms = 300;
}

/* Create options for a session of user from 10.1.2.3:4433; the caller
 * sets the rest (the connection id at least). */
static inline afsm_create_options client_options(const char *user)
{
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = user;
    o.user_id_len = strlen(user);
    o.client_ip = "10.1.2.3";
    o.client_ip_len = strlen(o.client_ip);
    o.client_port = 4433;
    return o;
}

/* A session of user from 10.1.2.3:4433 on a fresh connection id, lasting
 * timeout_ms (0: the engine's default). */
static inline afsm_status create_timeout(afsm_engine *e, const char *user, uint64_t timeout_ms, afsm_session_info *out)
{
    afsm_create_options o = client_options(user);
    o.timeout_ms = timeout_ms;
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info_init(out, AFSM_SESSION_INFO_VERSION);
    return afsm_session_create(e, &o, out);
}

static inline afsm_status create(afsm_engine *e, const char *user, afsm_session_info *out)
{
    return create_timeout(e, user, 0, out);
}

/* A session of user from 10.9.8.7 (no port) on the given connection id:
 * the create groups' tests, where racing creates share connection ids. */
static inline afsm_status create_on(afsm_engine *e, const char *user, const afsm_uuid *connection,
                                    afsm_session_info *out)
{
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = user;
    o.user_id_len = strlen(user);
    o.client_ip = "10.9.8.7";
    o.client_ip_len = strlen(o.client_ip);
    o.connection_id = *connection;
    afsm_session_info_init(out, AFSM_SESSION_INFO_VERSION);
    return afsm_session_create(e, &o, out);
}

static inline afsm_status get(afsm_engine *e, const afsm_uuid *id, afsm_session_info *out)
{
    afsm_session_info_init(out, AFSM_SESSION_INFO_VERSION);
    return afsm_session_get(e, id, out);
}

static inline afsm_metrics metrics_of(afsm_engine *e)
{
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(e, &m), AFSM_OK);
    return m;
}

/* ---- the test's own etcd client --------------------------------------------------- */

/* A client on the cluster, not an engine's: what a test reads or changes
 * behind the engines' backs. request_timeout_ms bounds each of its calls. */
static inline etcd_client *raw_client_timeout(uint64_t request_timeout_ms)
{
    etcd_client_config cc = {
        .endpoints = cluster.endpoints, .dial_timeout_ms = 300, .request_timeout_ms = request_timeout_ms};
    etcd_client *c;
    assert_int_equal(etcd_client_open(&cc, &c), AFSM_OK);
    return c;
}

static inline etcd_client *raw_client(void)
{
    return raw_client_timeout(RAW_TIMEOUT_MS);
}

/* One call on a raw client of its own; takes body, returns the reply (the
 * caller puts it). The call must succeed. */
static inline json_object *raw_call(const char *path, json_object *body, int idempotent)
{
    etcd_client *c = raw_client();
    json_object *reply = NULL;
    assert_int_equal(etcd_call(c, path, body, idempotent, &reply, NULL), AFSM_OK);
    json_object_put(body);
    etcd_client_close(c);
    return reply;
}

/* Puts key = value in etcd, around every engine. */
static inline void put_raw(const char *key, const char *value)
{
    json_object *body = json_object_new_object();
    json_object_object_add(body, "key", etcd_json_bytes(key, strlen(key)));
    json_object_object_add(body, "value", etcd_json_bytes(value, strlen(value)));
    json_object_put(raw_call("/v3/kv/put", body, 0));
}

/* How many keys etcd holds under prefix (a count_only range). */
static inline long keys_in_etcd(const char *prefix)
{
    size_t n = strlen(prefix);
    char end[128];
    assert_true(n > 0 && n < sizeof(end));
    memcpy(end, prefix, n + 1);
    end[n - 1]++;
    json_object *body = json_object_new_object();
    json_object_object_add(body, "key", etcd_json_bytes(prefix, n));
    json_object_object_add(body, "range_end", etcd_json_bytes(end, n));
    json_object_object_add(body, "count_only", json_object_new_boolean(1));
    json_object *reply = raw_call("/v3/kv/range", body, 1);
    long count = (long)etcd_get_int64(reply, "count");
    json_object_put(reply);
    return count;
}

/* How many sessions (s/ keys) etcd holds under an engine's prefix. */
static inline long sessions_in_etcd(const char *prefix)
{
    char key[64];
    snprintf(key, sizeof(key), "%ss/", prefix);
    return keys_in_etcd(key);
}

/* ---- a hold gate: an event callback that holds its thread ------------------------ */

/* The thread that fires an event (the watch thread, for another engine's
 * changes) waits in the callback until the test opens the gate: the test
 * widens a window through the public API (afsm.h lets a callback block),
 * never with a sleep. A file's own gate or recorder embeds one and guards
 * its own fields with the same lock. */
typedef struct hold_gate {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int held, open;
} hold_gate;

static inline void hold_gate_init(hold_gate *g)
{
    memset(g, 0, sizeof(*g));
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->changed, NULL);
}

static inline void hold_gate_destroy(hold_gate *g)
{
    pthread_cond_destroy(&g->changed);
    pthread_mutex_destroy(&g->lock);
}

/* With g->lock held, on the thread to hold: marks it held and waits until
 * the gate opens, at most 20 s (a bound, so a broken test cannot hang a
 * watch thread forever). */
static inline void hold_gate_wait_locked(hold_gate *g)
{
    g->held = 1;
    pthread_cond_broadcast(&g->changed);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    while (!g->open && pthread_cond_timedwait(&g->changed, &g->lock, &until) == 0)
        ;
}

static inline void hold_gate_open(hold_gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = 1;
    pthread_cond_broadcast(&g->changed);
    pthread_mutex_unlock(&g->lock);
}

static inline int hold_gate_held(hold_gate *g)
{
    pthread_mutex_lock(&g->lock);
    int held = g->held;
    pthread_mutex_unlock(&g->lock);
    return held;
}

/* The callback of a hold gate (ctx): the first CREATED of a session of the
 * user "hold" holds the thread that fires it (the watch thread of an
 * engine that did not create it) until opened, at most 20 s. */
static inline void hold_on_user_hold(void *ctx, const afsm_event *ev)
{
    hold_gate *g = ctx;
    if (ev->type != AFSM_EVENT_CREATED || ev->user_id_len != 4 || memcmp(ev->user_id, "hold", 4) != 0)
        return;
    pthread_mutex_lock(&g->lock);
    if (!g->held)
        hold_gate_wait_locked(g);
    pthread_mutex_unlock(&g->lock);
}

/* ---- etcd's own state ----------------------------------------------------------- */

/* etcd's current revision: every txn that writes raises it by one. */
static inline int64_t etcd_revision(void)
{
    json_object *body = json_object_new_object();
    json_object_object_add(body, "key", etcd_json_bytes("/", 1));
    json_object_object_add(body, "count_only", json_object_new_boolean(1));
    json_object *reply = raw_call("/v3/kv/range", body, 1), *header;
    assert_true(json_object_object_get_ex(reply, "header", &header));
    int64_t revision = etcd_get_int64(header, "revision");
    json_object_put(reply);
    return revision;
}

/* Compacts etcd at its current revision, through endpoints (a watch that
 * has not passed it must reload). */
static inline void compact_now(const char *endpoints)
{
    etcd_client_config cc = {.endpoints = endpoints, .dial_timeout_ms = 300, .request_timeout_ms = 3000};
    etcd_client *c;
    assert_int_equal(etcd_client_open(&cc, &c), AFSM_OK);
    json_object *body = json_tokener_parse("{\"key\":\"AA==\"}"), *reply = NULL, *header;
    assert_int_equal(etcd_call(c, "/v3/kv/range", body, 1, &reply, NULL), AFSM_OK);
    assert_true(json_object_object_get_ex(reply, "header", &header));
    int64_t revision = etcd_get_int64(header, "revision");
    json_object_put(body);
    json_object_put(reply);
    body = json_object_new_object();
    json_object_object_add(body, "revision", etcd_json_int64(revision));
    json_object_object_add(body, "physical", json_object_new_boolean(1));
    assert_int_equal(etcd_call(c, "/v3/kv/compaction", body, 0, &reply, NULL), AFSM_OK);
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
}

/* id's packets_sent on e's replica, or -1 without the session there. */
static inline int64_t packets_here(afsm_engine *e, const afsm_uuid *id)
{
    afsm_session_info s;
    afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
    return afsm_session_get(e, id, &s) == AFSM_OK ? (int64_t)s.stats.packets_sent : -1;
}

#ifdef AFSM_ETCD_KEYS_H
/* etcd's record of id under prefix: 1 with its stats in *stats (and its mod
 * revision in *mod_revision, may be NULL), 0 without a record (*stats
 * zeroed, *mod_revision 0). A record that does not decode fails the test. */
static inline int stats_in_etcd(const char *prefix, const afsm_uuid *id, afsm_stats *stats, int64_t *mod_revision)
{
    char key[KEYS_MAX];
    size_t len = keys_session(prefix, strlen(prefix), id, key);
    json_object *body = json_object_new_object(), *kvs;
    json_object_object_add(body, "key", etcd_json_bytes(key, len));
    json_object *reply = raw_call("/v3/kv/range", body, 1);
    int found = 0;
    memset(stats, 0, sizeof(*stats));
    if (mod_revision != NULL)
        *mod_revision = 0;
    if ((kvs = etcd_get_array(reply, "kvs")) != NULL && json_object_array_length(kvs) == 1) {
        json_object *kv = json_object_array_get_idx(kvs, 0);
        if (mod_revision != NULL)
            *mod_revision = etcd_get_int64(kv, "mod_revision");
        long vlen;
        char *value = etcd_get_bytes(kv, "value", &vlen);
        keys_record rec;
        json_object *holder = NULL;
        if (keys_record_decode(value, (size_t)vlen, &rec, &holder) != AFSM_OK)
            fail_msg("etcd holds a record that does not decode: %.*s", (int)vlen, value);
        *stats = rec.info.stats;
        found = 1;
        json_object_put(holder);
        free(value);
    }
    json_object_put(reply);
    return found;
}

/* etcd's record of id: its rtt gauge (the record must exist). */
static inline uint32_t rtt_in_etcd(const char *prefix, const afsm_uuid *id)
{
    afsm_stats stats;
    assert_true(stats_in_etcd(prefix, id, &stats, NULL));
    return stats.current_rtt_ms;
}

/* The same, its packets_sent: -1 without a record. */
static inline int64_t packets_in_etcd(const char *prefix, const afsm_uuid *id, int64_t *mod_revision)
{
    afsm_stats stats;
    return stats_in_etcd(prefix, id, &stats, mod_revision) ? (int64_t)stats.packets_sent : -1;
}
#endif

/* An engine for the stats tests: its flusher idle (a 10-minute period: the
 * test runs every pass), 60 s sessions, errors only in the log, 4 shards,
 * events to g's hold (g may be NULL: none). */
static inline afsm_engine *open_stats_engine(const char *prefix, hold_gate *g)
{
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.etcd_stats_flush_ms = 600000;
    cfg.default_timeout_ms = 60000;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    if (g != NULL) {
        cfg.on_event = hold_on_user_hold;
        cfg.event_ctx = g;
    }
    afsm_engine *e = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    return e;
}

/* Adds packets (and an rtt sample, 0: none) to id on e. */
static inline void add_stats(afsm_engine *e, const afsm_uuid *id, uint64_t packets, uint32_t rtt_ms)
{
    afsm_stats d = {.packets_sent = packets, .current_rtt_ms = rtt_ms};
    assert_int_equal(afsm_session_add_stats(e, id, &d), AFSM_OK);
}

static inline void add_packets(afsm_engine *e, const afsm_uuid *id, uint64_t n)
{
    add_stats(e, id, n, 0);
}

/* id's rtt gauge on e (the session must be there). */
static inline uint32_t rtt_here(afsm_engine *e, const afsm_uuid *id)
{
    afsm_session_info s;
    assert_int_equal(get(e, id, &s), AFSM_OK);
    return s.stats.current_rtt_ms;
}

#ifdef AFSM_ETCD_STORE_H
#ifdef AFSM_ENGINE_H
static inline etcd_store *store_of(afsm_engine *e)
{
    return (etcd_store *)e->st;
}
#endif

/* Whether es has applied id's record at mod_revision or a later one. */
static inline int applied_at_least(etcd_store *es, const afsm_uuid *id, int64_t mod_revision)
{
    track_info ti;
    return track_get(&es->tracks, id, &ti) && ti.mod_revision >= mod_revision;
}

/* White box: moves the mod revision this engine holds for id by delta, as
 * if another writer's record (or none) were newer or older than etcd's. */
static inline void set_mod_revision(etcd_store *es, const afsm_uuid *id, int64_t delta)
{
    pthread_mutex_lock(&es->apply_lock);
    track_info ti;
    assert_true(track_get(&es->tracks, id, &ti));
    ti.mod_revision += delta;
    assert_int_equal(track_put(&es->tracks, id, &ti), AFSM_OK);
    pthread_mutex_unlock(&es->apply_lock);
}

#if defined(AFSM_ETCD_KEYS_H) && defined(AFSM_ENGINE_H)
/* Waits until e has applied etcd's record of id, whatever wrote it. */
static inline void wait_applied(afsm_engine *e, const char *prefix, const afsm_uuid *id)
{
    int64_t revision = 0;
    assert_true(packets_in_etcd(prefix, id, &revision) >= 0);
    WAIT_FOR(applied_at_least(store_of(e), id, revision), 10000);
}
#endif
#endif

#endif
