/*
 * client.c: the etcd JSON-gateway client (see client.h for the contract).
 *
 * Shared state: `pool` (idle curl handles, each with its own kept-alive
 * connection) and `token` are under `lock`; `current` (the endpoint that
 * last answered, moved on when one fails to) is a relaxed atomic: a stale read only costs one failed
 * attempt. Everything else is fixed at open.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd/client.h"
#include "etcd/keys.h"

#define POOL_MAX          32
#define TOKEN_MAX         512
#define ENDPOINT_MAX      512
#define AUTHENTICATE_PATH "/v3/auth/authenticate"

struct etcd_client {
    char *endpoints[ETCD_ENDPOINTS_MAX];
    unsigned endpoint_count;
    _Atomic unsigned current;
    uint64_t dial_timeout_ms;
    uint64_t request_timeout_ms;
    char *ca_file, *cert_file, *key_file, *user, *password;

    pthread_mutex_t lock;
    CURL *pool[POOL_MAX];  /* under lock */
    unsigned pool_count;   /* under lock */
    char token[TOKEN_MAX]; /* under lock; "" without auth */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ready;

static void curl_setup(void)
{
    curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* ---- JSON helpers ---------------------------------------------------------- */

json_object *etcd_json_bytes(const void *data, size_t len)
{
    char small[512];
    size_t size = keys_base64_encoded_size(len);
    char *text = size <= sizeof(small) ? small : malloc(size);
    if (text == NULL)
        return NULL;
    size_t n = keys_base64_encode(data, len, text);
    json_object *o = json_object_new_string_len(text, (int)n);
    if (text != small)
        free(text);
    return o;
}

json_object *etcd_json_int64(int64_t n)
{
    char text[24];
    snprintf(text, sizeof(text), "%lld", (long long)n);
    return json_object_new_string(text);
}

json_object *etcd_with(json_object *o, const char *name, json_object *value)
{
    if (o == NULL || value == NULL || json_object_object_add(o, name, value) != 0) {
        json_object_put(o);
        json_object_put(value);
        return NULL;
    }
    return o;
}

int64_t etcd_get_int64(json_object *o, const char *name)
{
    json_object *v;
    if (o == NULL || !json_object_object_get_ex(o, name, &v))
        return 0;
    if (json_object_is_type(v, json_type_string))
        return strtoll(json_object_get_string(v), NULL, 10);
    return json_object_get_int64(v);
}

char *etcd_get_bytes(json_object *o, const char *name, long *len)
{
    json_object *v;
    *len = 0;
    if (o == NULL || !json_object_object_get_ex(o, name, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    size_t text_len = (size_t)json_object_get_string_len(v);
    char *out = malloc(text_len / 4 * 3 + 4);
    if (out == NULL) {
        *len = -1;
        return NULL;
    }
    *len = keys_base64_decode(json_object_get_string(v), text_len, out);
    if (*len < 0) {
        free(out);
        return NULL;
    }
    out[*len] = '\0';
    return out;
}

json_object *etcd_get_array(json_object *o, const char *name)
{
    json_object *v;
    if (o == NULL || !json_object_object_get_ex(o, name, &v) || !json_object_is_type(v, json_type_array))
        return NULL;
    return v;
}

/* ---- handles ---------------------------------------------------------------- */

static CURL *borrow(etcd_client *c)
{
    CURL *h = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->pool_count > 0)
        h = c->pool[--c->pool_count];
    pthread_mutex_unlock(&c->lock);
    return h != NULL ? h : curl_easy_init();
}

static void give_back(etcd_client *c, CURL *h)
{
    pthread_mutex_lock(&c->lock);
    if (c->pool_count < POOL_MAX) {
        c->pool[c->pool_count++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (h != NULL)
        curl_easy_cleanup(h);
}

typedef struct buffer {
    char *data;
    size_t len, cap;
} buffer;

static size_t collect(char *data, size_t size, size_t n, void *ctx)
{
    buffer *b = ctx;
    size_t add = size * n;
    if (b->len + add + 1 > b->cap) {
        size_t cap = b->cap != 0 ? b->cap * 2 : 4096;
        while (cap < b->len + add + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL)
            return 0; /* curl fails the transfer */
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, add);
    b->len += add;
    b->data[b->len] = '\0';
    return add;
}

/* The options every request shares: TLS, keep-alive, no signals (threads). */
static void common_options(etcd_client *c, CURL *h, const char *url, const char *body, struct curl_slist *headers)
{
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (c->ca_file != NULL)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    if (c->cert_file != NULL)
        curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert_file);
    if (c->key_file != NULL)
        curl_easy_setopt(h, CURLOPT_SSLKEY, c->key_file);
}

/* with_token 0: the authentication request itself, which goes without
 * one (the shared token stays for every other request meanwhile). */
static struct curl_slist *make_headers(etcd_client *c, int with_token)
{
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    char auth[TOKEN_MAX + 32];
    auth[0] = '\0';
    pthread_mutex_lock(&c->lock);
    if (with_token && c->token[0] != '\0')
        snprintf(auth, sizeof(auth), "Authorization: %s", c->token);
    pthread_mutex_unlock(&c->lock);
    if (headers != NULL && auth[0] != '\0') {
        struct curl_slist *more = curl_slist_append(headers, auth);
        if (more == NULL) {
            curl_slist_free_all(headers);
            return NULL;
        }
        headers = more;
    }
    return headers;
}

/* ---- requests ------------------------------------------------------------------ */

/* What one attempt came to. */
typedef enum attempt {
    ATTEMPT_ANSWERED, /* a JSON answer (possibly an error answer) */
    ATTEMPT_NOT_SENT, /* no connection was made: safe to send elsewhere */
    ATTEMPT_FAILED,   /* the request may have reached etcd */
    ATTEMPT_OUT_OF_MEMORY
} attempt;

/* Every JSON object of a reply, in order, as one array (a streaming
 * method answering several requests of one body). NULL: none, or no memory. */
static json_object *parse_each(const char *text, size_t len)
{
    json_tokener *tok = json_tokener_new();
    json_object *all = json_object_new_array();
    if (tok == NULL || all == NULL) {
        json_tokener_free(tok);
        json_object_put(all);
        return NULL;
    }
    size_t at = 0;
    while (at < len) {
        while (at < len && (text[at] == '\n' || text[at] == '\r' || text[at] == ' '))
            at++;
        if (at == len)
            break;
        json_object *one = json_tokener_parse_ex(tok, text + at, (int)(len - at));
        if (one == NULL || json_tokener_get_error(tok) != json_tokener_success) {
            json_object_put(one);
            break; /* a truncated tail: what came before stands */
        }
        at += json_tokener_get_parse_end(tok);
        json_tokener_reset(tok);
        if (json_object_array_add(all, one) != 0) {
            json_object_put(one);
            break; /* not kept (no memory): what came before stands */
        }
    }
    json_tokener_free(tok);
    if (json_object_array_length(all) == 0) {
        json_object_put(all);
        return NULL;
    }
    return all;
}

/* multi: the reply is every object the endpoint sent, as an array
 * (parse_each); otherwise the one object it sent. */
static attempt attempt_once(etcd_client *c, unsigned endpoint, const char *path, const char *body, uint64_t timeout_ms,
                            int multi, json_object **reply)
{
    char url[ENDPOINT_MAX + 64];
    snprintf(url, sizeof(url), "%s%s", c->endpoints[endpoint], path);
    CURL *h = borrow(c);
    struct curl_slist *headers = make_headers(c, strcmp(path, AUTHENTICATE_PATH) != 0);
    if (h == NULL || headers == NULL) {
        if (h != NULL)
            give_back(c, h);
        curl_slist_free_all(headers);
        return ATTEMPT_OUT_OF_MEMORY;
    }
    buffer b = {0};
    common_options(c, h, url, body, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    uint64_t dial = c->dial_timeout_ms < timeout_ms ? c->dial_timeout_ms : timeout_ms;
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(dial > 0 ? dial : 1));
    CURLcode rc = curl_easy_perform(h);
    curl_slist_free_all(headers);
    attempt result = ATTEMPT_FAILED;
    if (rc == CURLE_OK && b.data != NULL) {
        *reply = multi ? parse_each(b.data, b.len) : json_tokener_parse(b.data);
        result = *reply != NULL ? ATTEMPT_ANSWERED : ATTEMPT_FAILED;
    } else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST) {
        result = ATTEMPT_NOT_SENT;
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        curl_off_t connected_us = 0; /* 0: timed out while connecting */
        curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connected_us);
        result = connected_us == 0 ? ATTEMPT_NOT_SENT : ATTEMPT_FAILED;
    }
    if (rc == CURLE_OK || rc == CURLE_COULDNT_CONNECT)
        give_back(c, h);
    else
        curl_easy_cleanup(h); /* a broken connection: start the next one fresh */
    free(b.data);
    return result;
}

static afsm_status authenticate(etcd_client *c, uint64_t deadline_ms);

static afsm_status call(etcd_client *c, const char *path, const char *body, int idempotent, int multi,
                        uint64_t attempt_max_ms, json_object **reply, int *code, uint64_t deadline_ms,
                        int may_authenticate)
{
    *reply = NULL;
    if (code != NULL)
        *code = 0;
    unsigned start = atomic_load_explicit(&c->current, memory_order_relaxed);
    /* Round robin over the endpoints until the deadline; after a full round
     * of refusals, a short pause so a restarting etcd is not hammered. */
    for (unsigned tries = 0;; tries++) {
        uint64_t now = now_ms();
        if (now >= deadline_ms)
            return AFSM_EUNAVAILABLE;
        unsigned endpoint = (start + tries) % c->endpoint_count;
        json_object *answer = NULL;
        /* A hung member (accepts, never answers) would take the whole
         * timeout: a request that may be resent gets half of what is left
         * per attempt, so another endpoint still has its turn. */
        uint64_t budget = deadline_ms - now;
        if (idempotent && c->endpoint_count > 1 && budget > 1)
            budget /= 2;
        if (attempt_max_ms != 0 && budget > attempt_max_ms)
            budget = attempt_max_ms;
        attempt a = attempt_once(c, endpoint, path, body, budget, multi, &answer);
        if (a == ATTEMPT_OUT_OF_MEMORY)
            return AFSM_ENOMEM;
        if (a != ATTEMPT_ANSWERED) {
            /* Not only success moves `current`: the next call (a write
             * cannot be resent) starts on another endpoint, not this one. */
            unsigned expected = endpoint;
            atomic_compare_exchange_strong_explicit(&c->current, &expected, (endpoint + 1) % c->endpoint_count,
                                                    memory_order_relaxed, memory_order_relaxed);
        }
        if (a == ATTEMPT_ANSWERED) {
            /* An error answer is one object (of a streaming method too). */
            json_object *err, *first = multi ? json_object_array_get_idx(answer, 0) : answer;
            int grpc = json_object_object_get_ex(first, "error", &err) ? (int)etcd_get_int64(first, "code") : 0;
            if (grpc == 0) {
                atomic_store_explicit(&c->current, endpoint, memory_order_relaxed);
                *reply = answer;
                return AFSM_OK;
            }
            if (code != NULL)
                *code = grpc;
            if (grpc == ETCD_CODE_UNAUTHENTICATED && may_authenticate && c->user != NULL) {
                json_object_put(answer);
                afsm_status st = authenticate(c, deadline_ms);
                if (st != AFSM_OK)
                    return st;
                return call(c, path, body, idempotent, multi, attempt_max_ms, reply, code, deadline_ms, 0);
            }
            if (grpc != ETCD_CODE_UNAVAILABLE) {
                *reply = answer;
                return grpc == ETCD_CODE_NOT_FOUND ? AFSM_ENOTFOUND : AFSM_EINTERNAL;
            }
            json_object_put(answer);
            /* UNAVAILABLE (no leader, stopping): a write may still commit. */
            if (!idempotent)
                return AFSM_EUNAVAILABLE;
        } else if (a == ATTEMPT_FAILED && !idempotent) {
            return AFSM_EUNAVAILABLE;
        }
        if ((tries + 1) % c->endpoint_count == 0) {
            uint64_t left = deadline_ms - (now_ms() < deadline_ms ? now_ms() : deadline_ms);
            uint64_t pause = left < 50 ? left : 50;
            struct timespec ts = {0, (long)pause * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

static afsm_status authenticate(etcd_client *c, uint64_t deadline_ms)
{
    json_object *body = etcd_with(json_object_new_object(), "name", json_object_new_string(c->user));
    body = etcd_with(body, "password", json_object_new_string(c->password != NULL ? c->password : ""));
    if (body == NULL)
        return AFSM_ENOMEM;
    json_object *reply = NULL;
    /* The old token is not cleared first: concurrent requests keep sending
     * it (an expired one earns them their own re-authentication) instead
     * of going out with none. This request goes without (make_headers). */
    afsm_status st = call(c, AUTHENTICATE_PATH, json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN), 1, 0, 0,
                          &reply, NULL, deadline_ms, 0);
    json_object_put(body);
    json_object *token;
    if (st == AFSM_OK && json_object_object_get_ex(reply, "token", &token) &&
        json_object_is_type(token, json_type_string) && (size_t)json_object_get_string_len(token) < TOKEN_MAX) {
        pthread_mutex_lock(&c->lock);
        memcpy(c->token, json_object_get_string(token), (size_t)json_object_get_string_len(token) + 1);
        pthread_mutex_unlock(&c->lock);
    } else if (st == AFSM_OK) {
        st = AFSM_EINTERNAL;
    }
    json_object_put(reply);
    return st;
}

afsm_status etcd_client_reauthenticate(etcd_client *c)
{
    return c->user != NULL ? authenticate(c, now_ms() + c->request_timeout_ms) : AFSM_OK;
}

afsm_status etcd_call(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                      int *code)
{
    const char *text = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN);
    if (text == NULL)
        return AFSM_ENOMEM;
    return call(c, path, text, idempotent, 0, 0, reply, code, now_ms() + c->request_timeout_ms, 1);
}

afsm_status etcd_call_each(etcd_client *c, const char *path, const char *body, uint64_t attempt_max_ms,
                           json_object **replies)
{
    return call(c, path, body, 1, 1, attempt_max_ms, replies, NULL, now_ms() + c->request_timeout_ms, 1);
}

afsm_status etcd_call_until(etcd_client *c, const char *path, json_object *body, int idempotent, json_object **reply,
                            int *code, uint64_t deadline_ms)
{
    const char *text = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN);
    if (text == NULL) {
        *reply = NULL;
        return AFSM_ENOMEM;
    }
    return call(c, path, text, idempotent, 0, 0, reply, code, deadline_ms, 1);
}

/* ---- streams -------------------------------------------------------------------- */

/* A stream's liveness: a hung member (stopped, or stalled) keeps its
 * kernel answering TCP keep-alives and sends nothing, which looks like an
 * idle watch. While the stream has been quiet for STREAM_PROBE_IDLE_MS, a
 * probe thread asks the same member a quorum read (a count of one key)
 * every STREAM_PROBE_IDLE_MS; no answer within the request timeout marks
 * the stream stale, and it ends as failed (the caller moves on). */
#define STREAM_PROBE_IDLE_MS 1000u
#define STREAM_PROBE_BODY    "{\"key\":\"AA==\",\"count_only\":true}"

typedef struct stream {
    json_tokener *tok;
    int (*on_message)(void *ctx, json_object *message);
    int (*should_stop)(void *ctx);
    void *ctx;
    int done;      /* on_message asked to end */
    int got_bytes; /* the endpoint answered */
    /* The probe (stream_probe): its thread reads these; `lock` and `wake`
     * are its pauses, `ended` (under lock) tells it to finish. */
    etcd_client *c;
    unsigned endpoint;
    _Atomic uint64_t last_bytes_ms;
    _Atomic int stale;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int ended;
} stream;

static void *stream_probe(void *arg)
{
    stream *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->ended) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += STREAM_PROBE_IDLE_MS / 1000u;
        pthread_cond_timedwait(&s->wake, &s->lock, &until);
        if (s->ended || now_ms() - atomic_load_explicit(&s->last_bytes_ms, memory_order_relaxed) < STREAM_PROBE_IDLE_MS)
            continue;
        pthread_mutex_unlock(&s->lock);
        json_object *answer = NULL;
        attempt a =
            attempt_once(s->c, s->endpoint, "/v3/kv/range", STREAM_PROBE_BODY, s->c->request_timeout_ms, 0, &answer);
        json_object_put(answer);
        pthread_mutex_lock(&s->lock);
        if (a == ATTEMPT_NOT_SENT || a == ATTEMPT_FAILED) {
            atomic_store_explicit(&s->stale, 1, memory_order_relaxed);
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static size_t stream_data(char *data, size_t size, size_t n, void *ctx)
{
    stream *s = ctx;
    size_t len = size * n, at = 0;
    s->got_bytes = 1;
    atomic_store_explicit(&s->last_bytes_ms, now_ms(), memory_order_relaxed);
    while (at < len && !s->done) {
        json_object *o = json_tokener_parse_ex(s->tok, data + at, (int)(len - at));
        enum json_tokener_error err = json_tokener_get_error(s->tok);
        if (err == json_tokener_continue)
            break; /* the rest of this object comes in the next chunk */
        if (err != json_tokener_success)
            return 0; /* garbage: end the stream, the caller reconnects */
        at += json_tokener_get_parse_end(s->tok);
        json_tokener_reset(s->tok);
        if (o != NULL) {
            s->done = s->on_message(s->ctx, o) != 0;
            json_object_put(o);
        }
    }
    return s->done ? 0 : len;
}

static int stream_progress(void *ctx, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a, (void)b, (void)c, (void)d;
    stream *s = ctx;
    return s->should_stop(s->ctx) != 0 || atomic_load_explicit(&s->stale, memory_order_relaxed);
}

afsm_status etcd_stream(etcd_client *c, const char *path, json_object *body,
                        int (*on_message)(void *ctx, json_object *message), int (*should_stop)(void *ctx), void *ctx)
{
    const char *text = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN);
    unsigned endpoint = atomic_load_explicit(&c->current, memory_order_relaxed);
    char url[ENDPOINT_MAX + 64];
    snprintf(url, sizeof(url), "%s%s", c->endpoints[endpoint], path);
    stream s = {.tok = json_tokener_new(),
                .on_message = on_message,
                .should_stop = should_stop,
                .ctx = ctx,
                .c = c,
                .endpoint = endpoint,
                .last_bytes_ms = now_ms()};
    CURL *h = curl_easy_init();
    struct curl_slist *headers = make_headers(c, 1);
    afsm_status st = AFSM_ENOMEM;
    pthread_t probe;
    int probing = 0;
    if (text == NULL || s.tok == NULL || h == NULL || headers == NULL)
        goto out;
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) == 0) {
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (pthread_cond_init(&s.wake, &attr) == 0) {
            pthread_mutex_init(&s.lock, NULL);
            probing = pthread_create(&probe, NULL, stream_probe, &s) == 0;
            if (!probing) { /* then without a probe, as before */
                pthread_cond_destroy(&s.wake);
                pthread_mutex_destroy(&s.lock);
            }
        }
        pthread_condattr_destroy(&attr);
    }
    common_options(c, h, url, text, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, stream_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, stream_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &s);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->dial_timeout_ms > 0 ? c->dial_timeout_ms : 1));
    /* A dead peer on a live host: TCP keep-alive notices within seconds. */
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 2L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 1L);
    CURLcode rc = curl_easy_perform(h);
    if (probing) {
        pthread_mutex_lock(&s.lock);
        s.ended = 1;
        pthread_cond_signal(&s.wake);
        pthread_mutex_unlock(&s.lock);
        pthread_join(probe, NULL);
        pthread_cond_destroy(&s.wake);
        pthread_mutex_destroy(&s.lock);
    }
    if (s.done || (rc == CURLE_ABORTED_BY_CALLBACK && should_stop(ctx))) {
        st = AFSM_OK;
    } else {
        st = AFSM_EUNAVAILABLE;
        /* Next time, the next endpoint (unless another call moved on). */
        unsigned expected = endpoint;
        atomic_compare_exchange_strong_explicit(&c->current, &expected, (endpoint + 1) % c->endpoint_count,
                                                memory_order_relaxed, memory_order_relaxed);
    }
out:
    curl_slist_free_all(headers);
    if (h != NULL)
        curl_easy_cleanup(h);
    if (s.tok != NULL)
        json_tokener_free(s.tok);
    return st;
}

/* ---- open and close -------------------------------------------------------------- */

void etcd_client_close(etcd_client *c)
{
    if (c == NULL)
        return;
    for (unsigned i = 0; i < c->pool_count; i++)
        curl_easy_cleanup(c->pool[i]);
    for (unsigned i = 0; i < c->endpoint_count; i++)
        free(c->endpoints[i]);
    free(c->ca_file);
    free(c->cert_file);
    free(c->key_file);
    free(c->user);
    free(c->password);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static afsm_status parse_endpoints(etcd_client *c, const char *list)
{
    const char *p = list;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        /* A trailing slash would double the one every path starts with. */
        while (len > 0 && p[len - 1] == '/')
            len--;
        int scheme = (len > 7 && strncmp(p, "http://", 7) == 0) || (len > 8 && strncmp(p, "https://", 8) == 0);
        if (!scheme || len >= ENDPOINT_MAX || c->endpoint_count == ETCD_ENDPOINTS_MAX)
            return AFSM_EINVAL;
        c->endpoints[c->endpoint_count] = strndup(p, len);
        if (c->endpoints[c->endpoint_count] == NULL)
            return AFSM_ENOMEM;
        c->endpoint_count++;
        if (end == NULL)
            break;
        p = end + 1;
    }
    return c->endpoint_count > 0 ? AFSM_OK : AFSM_EINVAL;
}

afsm_status etcd_client_open(const etcd_client_config *config, etcd_client **out)
{
    *out = NULL;
    pthread_once(&curl_once, curl_setup);
    if (!curl_ready)
        return AFSM_ENOMEM;
    if (config->endpoints == NULL)
        return AFSM_EINVAL;
    etcd_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return AFSM_ENOMEM;
    pthread_mutex_init(&c->lock, NULL);
    c->dial_timeout_ms = config->dial_timeout_ms;
    c->request_timeout_ms = config->request_timeout_ms;
    afsm_status st = parse_endpoints(c, config->endpoints);
    if (st != AFSM_OK)
        goto fail;
    c->ca_file = dup_or_null(config->ca_file);
    c->cert_file = dup_or_null(config->cert_file);
    c->key_file = dup_or_null(config->key_file);
    c->user = dup_or_null(config->user);
    c->password = dup_or_null(config->password);
    if ((config->ca_file != NULL && c->ca_file == NULL) || (config->cert_file != NULL && c->cert_file == NULL) ||
        (config->key_file != NULL && c->key_file == NULL) || (config->user != NULL && c->user == NULL) ||
        (config->password != NULL && c->password == NULL)) {
        st = AFSM_ENOMEM;
        goto fail;
    }
    if (c->user != NULL) {
        st = authenticate(c, now_ms() + c->request_timeout_ms);
        if (st != AFSM_OK)
            goto fail;
    }
    *out = c;
    return AFSM_OK;
fail:
    etcd_client_close(c);
    return st;
}
