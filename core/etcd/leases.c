/*
 * leases.c: the etcd store's leases: grant, and a small pool of leases
 * granted ahead by a thread of their own, so that a create costs one round
 * trip (its txn) instead of two (a grant, then the txn).
 *
 * A pooled lease ages while it waits: its TTL (etcd_lease_ttl_s: the
 * timeout plus timeout / 3) started at its grant. The session's promise is
 * that its lease outlives every heartbeat by the timeout; renewals happen at
 * most once per timeout / 3 counted from the grant (the record carries the
 * grant's wall time, leased_ns, so every node counts from it), which keeps
 * the promise whatever the lease's age. A lease older than timeout / 6 is
 * still dropped from the pool (and revoked), so a new session's lease has
 * most of its first period left. Only timeouts of a minute or more are
 * pooled: shorter ones would churn the pool faster than it saves.
 *
 * The pool follows demand, so that an engine that creates nothing writes
 * nothing: it holds up to twice the leases taken in the current period of
 * timeout / 6 (at most 32), and none once a period passes without a take.
 * A kept target of 32 cost 32 grants and 32 revokes per period for ever
 * (~6.4 raft writes/s per idle node at a 60 s timeout); now an idle node's
 * spare leases go within one period of its last create and are not
 * replaced, and creates at one per period cost at most two spare leases
 * each. The first create of a period after a quiet one grants its own
 * lease (two round trips) while the pool refills.
 *
 * Locking: the pool's mutex guards its fields; the granting itself runs
 * outside it. The thread sleeps on the pool's condition variable until a
 * create takes a lease (or asks for another TTL) or close stops it.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "etcd/etcd_store.h"
#include "util/clock.h"

#define POOL_TARGET         32
#define POOL_MIN_TIMEOUT_MS (60u * 1000u)

typedef struct pooled {
    int64_t id;
    int64_t granted_wall_ns;
} pooled;

struct etcd_lease_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pooled items[POOL_TARGET]; /* oldest first */
    int count;
    uint64_t timeout_ms;          /* what the pool grants for; 0: nothing asked yet */
    int64_t period_start_wall_ns; /* the current period of demand (timeout / 6 long) */
    unsigned takes;               /* leases asked for in it */
    int stop;
    pthread_t thread;
};

afsm_status etcd_lease_grant(etcd_store *es, uint64_t timeout_ms, int64_t *lease, int64_t *granted_wall_ns)
{
    json_object *body = json_object_new_object(), *reply = NULL;
    if (body == NULL)
        return AFSM_ENOMEM;
    json_object_object_add(body, "TTL", etcd_json_int64(etcd_lease_ttl_s(timeout_ms)));
    /* Taken before the request: the lease's clock starts no earlier. */
    *granted_wall_ns = clock_wall_ns();
    /* A grant sent twice leaves an unused lease, which etcd expires. */
    afsm_status st = etcd_call(es->client, "/v3/lease/grant", body, 1, &reply, NULL);
    json_object_put(body);
    *lease = st == AFSM_OK ? etcd_get_int64(reply, "ID") : 0;
    json_object_put(reply);
    if (*lease != 0)
        atomic_fetch_add_explicit(&es->lease_grants, 1, memory_order_relaxed);
    if (st == AFSM_OK && *lease == 0)
        st = AFSM_EINTERNAL;
    return st == AFSM_ENOTFOUND ? AFSM_EINTERNAL : st;
}

void etcd_lease_revoke(etcd_store *es, int64_t lease)
{
    json_object *body = json_object_new_object(), *reply = NULL;
    if (body == NULL)
        return;
    json_object_object_add(body, "ID", etcd_json_int64(lease));
    etcd_call(es->client, "/v3/lease/revoke", body, 1, &reply, NULL);
    json_object_put(body);
    json_object_put(reply);
}

static int64_t max_age_ns(uint64_t timeout_ms)
{
    return (int64_t)(timeout_ms * NS_PER_MS / 6u);
}

/* Removes the leases too old to hand out into stale[]; pool lock held. */
static int drop_stale(etcd_lease_pool *p, int64_t now_wall, pooled *stale)
{
    int n = 0;
    while (p->count > 0 && now_wall - p->items[0].granted_wall_ns > max_age_ns(p->timeout_ms)) {
        stale[n++] = p->items[0];
        memmove(&p->items[0], &p->items[1], (size_t)(--p->count) * sizeof(pooled));
    }
    return n;
}

/* How many leases the pool should hold now: twice the current period's
 * takes, at most POOL_TARGET; a new period starts with none. Pool lock held. */
static int pool_target(etcd_lease_pool *p, int64_t now_wall)
{
    if (p->timeout_ms == 0)
        return 0;
    if (now_wall - p->period_start_wall_ns >= max_age_ns(p->timeout_ms)) {
        p->period_start_wall_ns = now_wall;
        p->takes = 0;
    }
    return p->takes >= POOL_TARGET / 2 ? POOL_TARGET : (int)(2 * p->takes);
}

static void *granter_main(void *arg)
{
    etcd_store *es = arg;
    etcd_lease_pool *p = es->leases;
    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        pooled stale[POOL_TARGET];
        int64_t now_wall = clock_wall_ns();
        int n = drop_stale(p, now_wall, stale);
        uint64_t timeout_ms = p->timeout_ms;
        int grant = p->count < pool_target(p, now_wall);
        if (n > 0 || grant) {
            pthread_mutex_unlock(&p->lock);
            for (int i = 0; i < n; i++)
                etcd_lease_revoke(es, stale[i].id);
            pooled fresh = {0, 0};
            afsm_status st = AFSM_OK;
            if (grant)
                st = etcd_lease_grant(es, timeout_ms, &fresh.id, &fresh.granted_wall_ns);
            pthread_mutex_lock(&p->lock);
            if (fresh.id != 0 && p->timeout_ms == timeout_ms && p->count < POOL_TARGET) {
                p->items[p->count++] = fresh;
                fresh.id = 0;
            }
            if (fresh.id != 0) {
                pthread_mutex_unlock(&p->lock);
                etcd_lease_revoke(es, fresh.id);
                pthread_mutex_lock(&p->lock);
            }
            if (st == AFSM_OK)
                continue;
            /* etcd unreachable: try again in a while, not in a loop. */
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&p->wake, &p->lock, &until);
    }
    /* What is left was never used and holds no key: etcd expires it. Not
     * revoked here, so that closing never waits on an unreachable etcd. */
    p->count = 0;
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

afsm_status etcd_lease_take(etcd_store *es, uint64_t timeout_ms, int64_t *lease, int64_t *granted_wall_ns)
{
    etcd_lease_pool *p = es->leases;
    if (p != NULL && timeout_ms >= POOL_MIN_TIMEOUT_MS) {
        pthread_mutex_lock(&p->lock);
        int64_t now_wall = clock_wall_ns();
        int found = 0;
        if (p->timeout_ms != timeout_ms) {
            /* Another timeout now: the old leases expire on their own. */
            p->timeout_ms = timeout_ms;
            p->count = 0;
            p->period_start_wall_ns = now_wall;
            p->takes = 0;
        } else {
            /* The newest: the most of its first period left. */
            while (p->count > 0 && !found) {
                pooled last = p->items[--p->count];
                if (now_wall - last.granted_wall_ns <= max_age_ns(timeout_ms)) {
                    *lease = last.id;
                    *granted_wall_ns = last.granted_wall_ns;
                    found = 1;
                }
            }
        }
        pool_target(p, now_wall); /* rolls the period */
        p->takes++;
        pthread_cond_signal(&p->wake);
        pthread_mutex_unlock(&p->lock);
        if (found)
            return AFSM_OK;
    }
    return etcd_lease_grant(es, timeout_ms, lease, granted_wall_ns);
}

afsm_status etcd_leases_start(etcd_store *es)
{
    etcd_lease_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return AFSM_ENOMEM;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&p->lock, NULL);
    es->leases = p;
    if (pthread_create(&p->thread, NULL, granter_main, es) != 0) {
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        free(p);
        es->leases = NULL;
        return AFSM_ENOMEM;
    }
    return AFSM_OK;
}

void etcd_leases_stop(etcd_store *es)
{
    etcd_lease_pool *p = es->leases;
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p);
    es->leases = NULL;
}
