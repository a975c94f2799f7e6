/*
 * client.h: an etcd v3 client over the JSON gateway (etcd 3.4: POST
 * /v3/<service>/<method>, JSON bodies, base64 keys and values, int64 as
 * strings, defaults omitted), on libcurl and json-c.
 *
 * Connections are kept alive: each request borrows a curl handle (and its
 * connection cache) from a pool and returns it, so several requests run in
 * flight from several threads and each reuses a warm connection.
 *
 * Failover: the client remembers the endpoint that last answered and starts
 * there; a failed attempt moves on to the next endpoint until the request
 * timeout runs out (AFSM_EUNAVAILABLE). Only idempotent requests are sent
 * again after a failure that may have reached etcd; a write is retried only
 * when its connection was never made (nothing was sent).
 *
 * Thread safety: every function may be called from any thread; the pool
 * and the auth token are under the client's mutex, the current endpoint is
 * an atomic.
 */
#ifndef AFSM_ETCD_CLIENT_H
#define AFSM_ETCD_CLIENT_H

#include <json-c/json.h>
#include <stdint.h>

#include "afsm.h"

typedef struct etcd_client etcd_client;

typedef struct etcd_client_config {
    const char *endpoints; /* "http://127.0.0.1:2379,https://..." (comma-separated) */
    uint64_t dial_timeout_ms;
    uint64_t request_timeout_ms;
    const char *ca_file; /* NULL: none (for https: the system's CAs) */
    const char *cert_file;
    const char *key_file;
    const char *user; /* NULL: no etcd auth */
    const char *password;
} etcd_client_config;

#define ETCD_ENDPOINTS_MAX 16

/* AFSM_EINVAL (no endpoint, more than ETCD_ENDPOINTS_MAX, one not http(s)://),
 * AFSM_ENOMEM, AFSM_EUNAVAILABLE (auth configured and no endpoint answered). */
afsm_status etcd_client_open(const etcd_client_config *config, etcd_client **out);
void etcd_client_close(etcd_client *c);

/* gRPC status codes the gateway reports in {"error", "code"}. */
#define ETCD_CODE_NOT_FOUND       5
#define ETCD_CODE_OUT_OF_RANGE    11 /* e.g. a compacted revision */
#define ETCD_CODE_UNAVAILABLE     14
#define ETCD_CODE_UNAUTHENTICATED 16

/* POSTs body (not consumed) to path ("/v3/kv/range"); *reply receives the
 * parsed answer (json_object_put it). AFSM_EUNAVAILABLE when no endpoint
 * answered within the request timeout; AFSM_ENOTFOUND for gRPC NOT_FOUND;
 * AFSM_EINTERNAL for any other error answer (logged through *code, which
 * may be NULL: the gRPC code, or 0). */
afsm_status etcd_call(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                      int *code);
/* The same with its own deadline (CLOCK_MONOTONIC, in ms) instead of now +
 * the request timeout: AFSM_EUNAVAILABLE, nothing sent, once it passed. */
afsm_status etcd_call_until(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                            int *code, uint64_t deadline_ms);

/* An idempotent request to a streaming method (lease/keepalive) whose body
 * (text) holds several requests, one JSON object each: the method answers
 * each in turn, and *replies receives every answer, in order, as a JSON
 * array (json_object_put it). Statuses as etcd_call. attempt_max_ms (0:
 * none) bounds each attempt on one endpoint, so that a hung member costs
 * at most that before the next endpoint is tried (still within the
 * request timeout overall). */
afsm_status etcd_call_each(etcd_client *c, const char *path, const char *body, uint64_t attempt_max_ms,
                           json_object **replies);

/* Fetches a fresh auth token (no-op without a user): for a stream that
 * was refused, since a token expires (etcd's --auth-token-ttl). */
afsm_status etcd_client_reauthenticate(etcd_client *c);

/* A streaming request (the watch): calls on_message for every JSON object
 * the endpoint sends, until the stream ends or fails (AFSM_EUNAVAILABLE),
 * on_message returns non-zero (AFSM_OK), or should_stop returns non-zero
 * (checked at least every 100 ms; AFSM_OK). One endpoint per call, the
 * current one; a failure moves the current endpoint on. A stream quiet
 * for a second has its endpoint probed (a quorum read, once a second while
 * quiet): no answer within the request timeout ends it as failed, since a
 * hung member sends nothing, like an idle watch. */
afsm_status etcd_stream(etcd_client *c, const char *path, json_object *body,
                        int (*on_message)(void *ctx, json_object *message), int (*should_stop)(void *ctx), void *ctx);

/* JSON helpers for the gateway's conventions. */
/* o with name = value added, for building request bodies by chaining
 * (etcd_with(etcd_with(json_object_new_object(), ...), ...)): NULL if o or
 * value is NULL or the add fails, both put then. A body missing a field
 * asks etcd something else (a range without range_end reads one key), so
 * a NULL body is AFSM_ENOMEM, never sent. */
json_object *etcd_with(json_object *o, const char *name, json_object *value);
json_object *etcd_json_bytes(const void *data, size_t len); /* base64 string */
json_object *etcd_json_int64(int64_t n);                    /* decimal string */
/* An int64 field (a string, or a number); 0 when omitted (the default). */
int64_t etcd_get_int64(json_object *o, const char *name);
/* A bytes field decoded into a new NUL-terminated buffer (free it); len
 * receives its length. NULL with *len 0 when omitted; NULL and -1 for bad
 * base64 or no memory. */
char *etcd_get_bytes(json_object *o, const char *name, long *len);
/* An array field ("kvs", "events", "responses"): NULL when omitted or of
 * another type. Replies are checked through it because json-c's array
 * functions assert their type: a malformed reply must be refused, not
 * abort the process. */
json_object *etcd_get_array(json_object *o, const char *name);

#endif
