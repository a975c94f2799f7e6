/*
 * renew.c: the lease renewer. A heartbeat never waits on etcd: when it
 * finds its session's lease due (track_renew_due: at most once per
 * timeout / 3 per session on this node), it queues the lease here and
 * returns; a thread of the store sends the queued keepalives, up to
 * RENEW_BATCH of them in one request (the gateway's lease/keepalive is a
 * stream: one body of several requests is answered one object each, or
 * only a prefix of them: renew_batch sends the rest again).
 *
 * The promise kept: a heartbeat at t is followed by a lease that lives
 * until t + timeout at least. The period is counted from the heartbeat
 * that queued the renewal (not from the send, which is later), and the
 * TTL is the timeout plus one period; the renewal is queued at most a
 * period plus the client's heartbeat interval after the last one, so it
 * keeps the session if it reaches etcd within the timeout minus that
 * interval of being queued (the previous lease still lives). The queue
 * is drained in milliseconds unless etcd is away, when nothing could
 * renew it anyway, and one attempt on a hung member is bounded
 * (attempt_max_ms).
 *
 * Dedup: a lease is queued at most once (track's renew_queued, set by the
 * heartbeat that queues it and cleared by the renewer once its answer is
 * in), so a stalled etcd cannot fill the queue with one session's
 * renewals.
 *
 * Bound: RENEW_QUEUE_MAX leases. A heartbeat that finds the queue full
 * counts as a failed renewal: the session is due again a quarter period
 * later (its lease has the whole timeout left), and the heartbeat itself
 * is taken.
 *
 * Outcomes (track_renew_done): renewed; failed (etcd unreachable, an error
 * answer): due again a quarter period later; gone (TTL <= 0, etcd no
 * longer has the lease): noted on the session, whose heartbeats then
 * return AFSM_EEXPIRED, as the heartbeat that sent the keepalive did when
 * it was synchronous. etcd deleted the session's keys with the lease, so
 * the watch removes the session here and fires its EXPIRED, as before.
 *
 * Locking: the renewer's mutex guards the ring and `stop`; requests run
 * outside it. Close (etcd_renewer_stop) sets `stop`, wakes the thread and
 * joins it: the request under way finishes (bounded by the request
 * timeout), what is still queued or unanswered is dropped (those sessions
 * are left to their leases, as close leaves every session), and no request
 * is made after the join.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "etcd/etcd_store.h"

#define RENEW_QUEUE_MAX 16384
#define RENEW_BATCH     128

typedef struct renewal {
    afsm_uuid id;
    int64_t lease;
    uint64_t period_ns; /* the session's renew period (timeout / 3) */
} renewal;

/* The longest one attempt of a keepalive request may wait on one endpoint:
 * half the shortest renew period in the batch. A renewal is queued up to
 * a period plus the client's heartbeat interval after the last one, which
 * leaves the lease (TTL: timeout + one period) the timeout minus that
 * interval; a hung member (it accepts, never answers) given half the
 * request timeout (2.5 s by default) took more than that from a 3 s
 * session heartbeated every second, for every lease queued behind the
 * request (test_hung_member_does_not_expire_heartbeated_sessions). A
 * keepalive is no raft write: a healthy member answers in milliseconds.
 * The request as a whole still has the request timeout. */
#define RENEW_ATTEMPT_MIN_MS 200

static uint64_t attempt_max_ms(const renewal *batch, size_t n)
{
    uint64_t shortest = UINT64_MAX;
    for (size_t i = 0; i < n; i++)
        if (batch[i].period_ns < shortest)
            shortest = batch[i].period_ns;
    uint64_t ms = shortest / 2 / 1000000u;
    return ms < RENEW_ATTEMPT_MIN_MS ? RENEW_ATTEMPT_MIN_MS : ms;
}

struct etcd_renewer {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    renewal ring[RENEW_QUEUE_MAX];
    size_t head, count; /* the queued leases: ring[head .. head + count) */
    int stop;
    pthread_t thread;
};

/* Sends one request for batch[0..n) and hands each lease etcd answered its
 * outcome; returns how many it answered (a prefix of the batch), 0 when
 * the request failed. */
static size_t renew_request(etcd_store *es, const renewal *batch, size_t n, int *reauthenticate)
{
    /* {"ID":"<int64>"} per lease, one per line. */
    char body[RENEW_BATCH * 40];
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(body + len, sizeof(body) - len, "{\"ID\":\"%lld\"}\n", (long long)batch[i].lease);
    json_object *replies = NULL;
    afsm_status st = etcd_call_each(es->client, "/v3/lease/keepalive", body, attempt_max_ms(batch, n), &replies);
    size_t answered =
        st == AFSM_OK && json_object_is_type(replies, json_type_array) ? json_object_array_length(replies) : 0;
    if (answered > n)
        answered = n;
    /* Answers come in the order of the requests; each names its lease. */
    size_t done = 0;
    for (; done < answered; done++) {
        json_object *one = json_object_array_get_idx(replies, done), *result, *error;
        if (!json_object_object_get_ex(one, "result", &result) || etcd_get_int64(result, "ID") != batch[done].lease) {
            if (json_object_object_get_ex(one, "error", &error) &&
                etcd_get_int64(error, "grpc_code") == ETCD_CODE_UNAUTHENTICATED)
                *reauthenticate = 1; /* an expired token ends the stream */
            break;
        }
        track_renew_done(&es->tracks, &batch[done].id, batch[done].lease,
                         etcd_get_int64(result, "TTL") > 0 ? TRACK_RENEWED : TRACK_LEASE_GONE);
    }
    json_object_put(replies);
    return done;
}

/* Sends a batch and hands every lease its outcome. The gateway may answer
 * only a prefix of a body's requests: it relays the stream over HTTP/1.1,
 * and once it has flushed a first answer it can no longer read the rest
 * of the body (Go's HTTP/1 server; measured: 17 or 69 answers of 32..130
 * sent, at random). The rest never reached etcd: sent again at once, as
 * long as each request gets an answer; a request with none (etcd away, an
 * error answer) fails what is left, due again a quarter period later. */
static int renewer_stopping(etcd_renewer *r)
{
    pthread_mutex_lock(&r->lock);
    int stop = r->stop;
    pthread_mutex_unlock(&r->lock);
    return stop;
}

static void renew_batch(etcd_store *es, const renewal *batch, size_t n)
{
    /* Counted once per lease and attempt, not per request. */
    atomic_fetch_add_explicit(&es->lease_keepalives, n, memory_order_relaxed);
    int reauthenticate = 0;
    size_t done = 0;
    /* Close waits for one request at most, not for the batch's resends. */
    while (done < n && (done == 0 || !renewer_stopping(es->renewer))) {
        size_t answered = renew_request(es, batch + done, n - done, &reauthenticate);
        if (answered == 0)
            break;
        done += answered;
    }
    for (size_t i = done; i < n; i++)
        track_renew_done(&es->tracks, &batch[i].id, batch[i].lease, TRACK_RENEW_FAILED);
    if (reauthenticate)
        etcd_client_reauthenticate(es->client);
    if (done < n)
        etcd_log(es, AFSM_LOG_WARN, "etcd: lease keepalives not answered; retried a quarter period later", NULL, NULL);
}

static void *renewer_main(void *arg)
{
    etcd_store *es = arg;
    etcd_renewer *r = es->renewer;
    renewal batch[RENEW_BATCH];
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->stop && r->count == 0)
            pthread_cond_wait(&r->wake, &r->lock);
        if (r->stop)
            break;
        size_t n = r->count < RENEW_BATCH ? r->count : RENEW_BATCH;
        for (size_t i = 0; i < n; i++)
            batch[i] = r->ring[(r->head + i) % RENEW_QUEUE_MAX];
        r->head = (r->head + n) % RENEW_QUEUE_MAX;
        r->count -= n;
        pthread_mutex_unlock(&r->lock);
        renew_batch(es, batch, n);
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

afsm_status etcd_renew_if_due(etcd_store *es, const afsm_uuid *id)
{
    int64_t lease;
    uint64_t period_ns = 0;
    int due = track_renew_due(&es->tracks, id, etcd_lease_clock_ns(), &lease, &period_ns);
    if (due == TRACK_RENEW_GONE)
        return AFSM_EEXPIRED;
    if (due != TRACK_RENEW_DUE)
        return AFSM_OK;
    etcd_renewer *r = es->renewer;
    int queued = 0;
    pthread_mutex_lock(&r->lock);
    if (r->count < RENEW_QUEUE_MAX && !r->stop) {
        r->ring[(r->head + r->count) % RENEW_QUEUE_MAX] = (renewal){*id, lease, period_ns};
        r->count++;
        queued = 1;
        pthread_cond_signal(&r->wake);
    }
    pthread_mutex_unlock(&r->lock);
    if (!queued)
        track_renew_done(&es->tracks, id, lease, TRACK_RENEW_FAILED); /* full: see the top */
    return AFSM_OK;
}

afsm_status etcd_renewer_start(etcd_store *es)
{
    etcd_renewer *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return AFSM_ENOMEM;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->wake, NULL);
    es->renewer = r;
    if (pthread_create(&r->thread, NULL, renewer_main, es) != 0) {
        pthread_cond_destroy(&r->wake);
        pthread_mutex_destroy(&r->lock);
        free(r);
        es->renewer = NULL;
        return AFSM_ENOMEM;
    }
    return AFSM_OK;
}

void etcd_renewer_stop(etcd_store *es)
{
    etcd_renewer *r = es->renewer;
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->wake);
    pthread_mutex_destroy(&r->lock);
    free(r);
    es->renewer = NULL;
}
