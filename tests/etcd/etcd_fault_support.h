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
 * - A node's watch paused (pause_watch / resume_watch): its stream ends at
 *   the next message, before applying it, and the next stream waits until
 *   resumed; it then resumes after its applied revision, as after any
 *   disconnect (or reloads, if etcd was compacted past it meanwhile).
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

afsm_status __real_etcd_call(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                             int *code);
afsm_status __wrap_etcd_call(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                             int *code);
afsm_status __wrap_etcd_call(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                             int *code)
{
    int txn = strcmp(path, "/v3/kv/txn") == 0;
    if (txn && refuse_txn_sends > 0) {
        refuse_txn_sends--;
        *reply = NULL;
        if (code != NULL)
            *code = 0;
        return AFSM_EUNAVAILABLE;
    }
    afsm_status st = __real_etcd_call(c, path, body, idempotent, reply, code);
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

#endif
