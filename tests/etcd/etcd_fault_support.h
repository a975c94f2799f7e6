/*
 * etcd_fault_support.h: what goes wrong between a node and etcd, made to
 * happen on demand for the etcd store's stats tests, by linker wraps of the
 * client (a file that includes it links with -Wl,--wrap=etcd_call and
 * -Wl,--wrap=etcd_stream; include it once, after etcd_test_support.h with
 * engine.h, etcd/etcd_store.h and etcd/keys.h before that).
 *
 * - Txns of the arming thread (its own _Thread_local counters):
 *   lose_txn_answers: the txn reaches etcd and its answer is thrown away
 *   (AFSM_EUNAVAILABLE), as when the connection drops after the request
 *   went out; refuse_txn_sends: the txn never leaves (AFSM_EUNAVAILABLE at
 *   once, as with etcd unreachable); hold_txn_answers: the txn reaches
 *   etcd, then the call waits at answer_gate until the test opens it, and
 *   its answer is thrown away (an answer slow to come back, then lost).
 * - A txn of the arming thread held at a gate of the test's, and then
 *   going on as it would (its _Thread_local gate_before_txn, the next txn
 *   waits before it is sent; gate_after_txn, its answer waits, then is
 *   returned): a thread slow to send, or slow to apply what etcd answered.
 *   Creates send through etcd_call_until: a file that defines
 *   WRAP_ETCD_CALL_UNTIL before including this header (and links with
 *   -Wl,--wrap=etcd_call_until) holds those too.
 * - A node's watch paused (pause_watch / resume_watch): its stream ends at
 *   the next message, before applying it, and the next stream waits until
 *   resumed; it then resumes after its applied revision, as after any
 *   disconnect (or reloads, if etcd was compacted past it meanwhile).
 * - Writes that are not the engine's: a record rewritten by hand
 *   (rewrite_record_raw), an update refused before it leaves.
 *
 * Shared state: the arming counters are per thread; the paused client is an
 * atomic pointer; each hold gate guards its own fields.
 */
#ifndef AFSM_ETCD_FAULT_SUPPORT_H
#define AFSM_ETCD_FAULT_SUPPORT_H

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* ---- txns: lost, refused, held answers ------------------------------------------------ */

static _Thread_local int lose_txn_answers; /* sent, answer thrown away */
static _Thread_local int refuse_txn_sends; /* never sent */
static _Thread_local int hold_txn_answers; /* sent, held at answer_gate, then thrown away */
static hold_gate answer_gate;
static _Thread_local hold_gate *gate_before_txn; /* the next txn waits here before it is sent */
static _Thread_local hold_gate *gate_after_txn;  /* the next txn's answer waits here, then is returned */

static inline void gate_wait(hold_gate *g)
{
    pthread_mutex_lock(&g->lock);
    if (!g->open)
        hold_gate_wait_locked(g);
    pthread_mutex_unlock(&g->lock);
}

/* The gates of a txn about to be sent (before: 1) or answered (before: 0). */
static inline void txn_gate(const char *path, int before)
{
    hold_gate **armed = before ? &gate_before_txn : &gate_after_txn;
    if (*armed != NULL && strcmp(path, "/v3/kv/txn") == 0) {
        hold_gate *g = *armed;
        *armed = NULL;
        gate_wait(g);
    }
}

afsm_status __real_etcd_call(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                             int *code);
afsm_status __wrap_etcd_call(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                             int *code);
afsm_status __wrap_etcd_call(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                             int *code)
{
    int txn = strcmp(path, "/v3/kv/txn") == 0;
    txn_gate(path, 1);
    if (txn && refuse_txn_sends > 0) {
        refuse_txn_sends--;
        *reply = NULL;
        if (code != NULL)
            *code = 0;
        return AFSM_EUNAVAILABLE;
    }
    afsm_status st = __real_etcd_call(c, path, body, idempotent, reply, code);
    txn_gate(path, 0);
    if (txn && st == AFSM_OK && hold_txn_answers > 0) {
        hold_txn_answers--;
        pthread_mutex_lock(&answer_gate.lock);
        if (!answer_gate.open)
            hold_gate_wait_locked(&answer_gate);
        pthread_mutex_unlock(&answer_gate.lock);
        json_object_put(*reply);
        *reply = NULL;
        return AFSM_EUNAVAILABLE;
    }
    if (txn && st == AFSM_OK && lose_txn_answers > 0) {
        lose_txn_answers--;
        json_object_put(*reply);
        *reply = NULL;
        return AFSM_EUNAVAILABLE;
    }
    return st;
}

#ifdef WRAP_ETCD_CALL_UNTIL
afsm_status __real_etcd_call_until(etcd_client *c, const char *path, json_object *body, int idempotent,
                                   json_object **reply, int *code, uint64_t deadline_ms);
afsm_status __wrap_etcd_call_until(etcd_client *c, const char *path, json_object *body, int idempotent,
                                   json_object **reply, int *code, uint64_t deadline_ms);
afsm_status __wrap_etcd_call_until(etcd_client *c, const char *path, json_object *body, int idempotent,
                                   json_object **reply, int *code, uint64_t deadline_ms)
{
    txn_gate(path, 1);
    afsm_status st = __real_etcd_call_until(c, path, body, idempotent, reply, code, deadline_ms);
    txn_gate(path, 0);
    return st;
}
#endif

/* ---- a paused watch ------------------------------------------------------------------ */

static _Atomic(etcd_client *) paused_client;
static hold_gate watch_gate;

typedef struct stream_shim {
    int (*on_message)(void *ctx, json_object *message);
    int (*should_stop)(void *ctx);
    void *ctx;
    etcd_client *client;
} stream_shim;

static inline int shim_should_stop(void *ctx)
{
    stream_shim *s = ctx;
    return s->should_stop(s->ctx);
}

static inline int shim_message(void *ctx, json_object *message)
{
    stream_shim *s = ctx;
    if (atomic_load(&paused_client) == s->client)
        return 1; /* end the stream, this message not applied */
    return s->on_message(s->ctx, message);
}

afsm_status __real_etcd_stream(etcd_client *c, const char *path, json_object *body,
                               int (*on_message)(void *ctx, json_object *message), int (*should_stop)(void *ctx),
                               void *ctx);
afsm_status __wrap_etcd_stream(etcd_client *c, const char *path, json_object *body,
                               int (*on_message)(void *ctx, json_object *message), int (*should_stop)(void *ctx),
                               void *ctx);
afsm_status __wrap_etcd_stream(etcd_client *c, const char *path, json_object *body,
                               int (*on_message)(void *ctx, json_object *message), int (*should_stop)(void *ctx),
                               void *ctx)
{
    if (atomic_load(&paused_client) == c) {
        pthread_mutex_lock(&watch_gate.lock);
        if (!watch_gate.open)
            hold_gate_wait_locked(&watch_gate);
        pthread_mutex_unlock(&watch_gate.lock);
    }
    stream_shim s = {on_message, should_stop, ctx, c};
    return __real_etcd_stream(c, path, body, shim_message, shim_should_stop, &s);
}

/* Pauses e's watch (on prefix): a key the test writes under the prefix is
 * the next message, which ends the stream; returns once the next stream
 * waits. */
static inline void pause_watch(afsm_engine *e, const char *prefix)
{
    hold_gate_init(&watch_gate);
    atomic_store(&paused_client, store_of(e)->client);
    char key[64];
    snprintf(key, sizeof(key), "%spoke", prefix);
    put_raw(key, "x");
    WAIT_FOR(hold_gate_held(&watch_gate), 10000);
}

static inline void resume_watch(void)
{
    atomic_store(&paused_client, NULL);
    hold_gate_open(&watch_gate);
}

/* ---- writes that are not the engine's ----------------------------------------------- */

/* Puts id's record back as etcd holds it (writer and stats_set included),
 * on its lease, with packets_sent and the rtt gauge replaced where given
 * (negative: kept): an operator's etcdctl put of an edited copy, or a tool
 * rewriting the key unchanged. */
static inline void rewrite_record_raw(const char *prefix, const afsm_uuid *id, int64_t packets, int64_t rtt_ms)
{
    char key[KEYS_MAX];
    size_t len = keys_session(prefix, strlen(prefix), id, key);
    json_object *body = json_object_new_object(), *kvs;
    json_object_object_add(body, "key", etcd_json_bytes(key, len));
    json_object *reply = raw_call("/v3/kv/range", body, 1);
    assert_non_null(kvs = etcd_get_array(reply, "kvs"));
    assert_int_equal(json_object_array_length(kvs), 1);
    json_object *kv = json_object_array_get_idx(kvs, 0);
    long vlen;
    char *value = etcd_get_bytes(kv, "value", &vlen);
    keys_record rec;
    json_object *holder = NULL;
    assert_int_equal(keys_record_decode(value, (size_t)vlen, &rec, &holder), AFSM_OK);
    assert_true(rec.writer != 0);
    if (packets >= 0)
        rec.info.stats.packets_sent = (uint64_t)packets;
    if (rtt_ms >= 0)
        rec.info.stats.current_rtt_ms = (uint32_t)rtt_ms;
    json_object *edited = keys_record_encode(&rec);
    assert_non_null(edited);
    const char *text = json_object_to_json_string_ext(edited, JSON_C_TO_STRING_PLAIN);
    json_object *put = json_object_new_object();
    json_object_object_add(put, "key", etcd_json_bytes(key, len));
    json_object_object_add(put, "value", etcd_json_bytes(text, strlen(text)));
    json_object_object_add(put, "lease", etcd_json_int64(rec.lease));
    json_object_put(raw_call("/v3/kv/put", put, 0));
    json_object_put(edited);
    json_object_put(holder);
    free(value);
    json_object_put(reply);
}

/* An update of id's metadata alone, refused before it leaves (etcd
 * unreachable: AFSM_EUNAVAILABLE at once, nothing written). */
static inline void refused_update(afsm_engine *e, const afsm_uuid *id)
{
    afsm_kv kv = {.key = "k", .key_len = 1, .value = "v", .value_len = 1};
    afsm_update u = {
        .version = AFSM_UPDATE_VERSION, .fields = AFSM_UPDATE_METADATA_MERGE, .metadata = &kv, .metadata_count = 1};
    refuse_txn_sends = 1;
    afsm_status st = afsm_session_update(e, id, &u, NULL);
    assert_int_equal(refuse_txn_sends, 0);
    assert_int_equal(st, AFSM_EUNAVAILABLE);
}

#endif
