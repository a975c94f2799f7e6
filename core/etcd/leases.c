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
 * The pool keeps leases per timeout (up to POOL_CLASSES timeouts; a take
 * with another one grants its own lease), so that creates alternating two
 * timeouts take pooled leases instead of each dropping the other's (which
 * cost three grants per create, the dropped leases left in etcd).
 *
 * Each timeout's pool follows demand, so that an engine that creates
 * nothing writes nothing: while a period of timeout / 6 has takes it holds
 * `level` spares, none once a period passes without a take. The level
 * starts at 1 and doubles (to at most 32) when a take finds the pool empty
 * in a period that already had one (the creates outran the spares); at a
 * period's end it falls to that period's takes. So creates that come one
 * at a time leave one spare behind, not a multiple of their number, and
 * bursts still find leases waiting. An idle node's spares go (revoked)
 * within one period of its last create and are not replaced. The first
 * create of a period after a quiet one grants its own lease (two round
 * trips) while the pool refills.
 *
 * Granting runs on GRANTERS threads, each with one grant in flight: one
 * thread granting one lease per round trip served about a fifth of the
 * bench's creates at 8 creating threads (bench/etcd, 1-member etcd: 22%
 * pool hits, the other creates granting on their own path); the creates'
 * grants then sat on their path and their txns could not meet in a group
 * (store.c, "create groups"). A class's `granting` counts the grants in
 * flight for it, so the threads together never grant past its target.
 *
 * Closing never waits for more than one request per granter: a granter
 * revoking stale spares (one request timeout each on a hung etcd) stops
 * at close and leaves the rest to expire (they hold no key; before, close
 * waited for every one: 17 s for 19 spares at a 1 s timeout,
 * tests/etcd/test_etcd_create_group_faults.c).
 *
 * Locking: the pool's mutex guards its fields; the granting itself runs
 * outside it. The threads sleep on the pool's condition variable until a
 * create takes a lease or close stops them (and look once a second to drop
 * stale leases).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "etcd/etcd_store.h"
#include "util/clock.h"

#define POOL_TARGET         32
#define POOL_CLASSES        4
#define POOL_MIN_TIMEOUT_MS (60u * 1000u)
#define GRANTERS            4

typedef struct pooled {
    int64_t id;
    int64_t granted_wall_ns;
} pooled;

/* The leases of one timeout (one TTL). */
typedef struct lease_class {
    pooled items[POOL_TARGET]; /* oldest first */
    int count;
    uint64_t timeout_ms;          /* 0: unused */
    int64_t period_start_wall_ns; /* the current period of demand (timeout / 6 long) */
    int64_t last_take_wall_ns;
    unsigned takes;    /* leases asked for in the current period */
    unsigned level;    /* spares to hold while in demand: 1..POOL_TARGET */
    unsigned granting; /* grants in flight for this class (granter threads) */
} lease_class;

struct etcd_lease_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    lease_class classes[POOL_CLASSES];
    int stop;
    pthread_t threads[GRANTERS];
    int thread_count;
};

afsm_status etcd_lease_grant(etcd_store *es, uint64_t timeout_ms, int64_t *lease, int64_t *granted_wall_ns)
{
    json_object *body = etcd_with(json_object_new_object(), "TTL", etcd_json_int64(etcd_lease_ttl_s(timeout_ms))),
                *reply = NULL;
    if (body == NULL)
        return AFSM_ENOMEM;
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
    json_object *body = etcd_with(json_object_new_object(), "ID", etcd_json_int64(lease)), *reply = NULL;
    if (body == NULL)
        return;
    etcd_call(es->client, "/v3/lease/revoke", body, 1, &reply, NULL);
    json_object_put(body);
    json_object_put(reply);
}

static int64_t max_age_ns(uint64_t timeout_ms)
{
    return (int64_t)(timeout_ms * NS_PER_MS / 6u);
}

/* The class pooling timeout_ms, or NULL. Pool lock held. */
static lease_class *find_class(etcd_lease_pool *p, uint64_t timeout_ms)
{
    for (int i = 0; i < POOL_CLASSES; i++)
        if (p->classes[i].timeout_ms == timeout_ms)
            return &p->classes[i];
    return NULL;
}

/* Removes the class's leases too old to hand out into stale[]; pool lock
 * held. */
static int drop_stale(lease_class *c, int64_t now_wall, pooled *stale)
{
    int n = 0;
    while (c->count > 0 && now_wall - c->items[0].granted_wall_ns > max_age_ns(c->timeout_ms)) {
        stale[n++] = c->items[0];
        memmove(&c->items[0], &c->items[1], (size_t)(--c->count) * sizeof(pooled));
    }
    return n;
}

/* Starts a new period once the current one is over. The level a period
 * ends with is at most its takes (and at least 1): demand that fell lets
 * the spares fall with it. Pool lock held. */
static void roll_period(lease_class *c, int64_t now_wall)
{
    if (now_wall - c->period_start_wall_ns < max_age_ns(c->timeout_ms))
        return;
    if (c->level > c->takes)
        c->level = c->takes;
    if (c->level == 0)
        c->level = 1;
    c->period_start_wall_ns = now_wall;
    c->takes = 0;
}

/* How many leases the class should hold now: its level while the current
 * period has takes, none otherwise. Pool lock held. */
static int class_target(lease_class *c, int64_t now_wall)
{
    if (c->timeout_ms == 0)
        return 0;
    roll_period(c, now_wall);
    return c->takes == 0 ? 0 : (int)c->level;
}

static void *granter_main(void *arg)
{
    etcd_store *es = arg;
    etcd_lease_pool *p = es->leases;
    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        pooled stale[POOL_CLASSES * POOL_TARGET];
        int64_t now_wall = clock_wall_ns();
        int n = 0;
        uint64_t timeout_ms = 0; /* the class to grant one lease for */
        for (int i = 0; i < POOL_CLASSES; i++) {
            lease_class *c = &p->classes[i];
            if (c->timeout_ms == 0)
                continue;
            n += drop_stale(c, now_wall, stale + n);
            if (timeout_ms == 0 && c->count + (int)c->granting < class_target(c, now_wall)) {
                timeout_ms = c->timeout_ms;
                c->granting++;
                /* More missing: another granter can take the next one. */
                if (c->count + (int)c->granting < class_target(c, now_wall))
                    pthread_cond_signal(&p->wake);
            }
        }
        if (n > 0 || timeout_ms != 0) {
            /* Closing stops the revokes: on a hung etcd each takes the
             * request timeout, and close joins this thread. The rest hold
             * no key: etcd expires them. */
            int stopping = 0;
            for (int i = 0; i < n && !stopping; i++) {
                pthread_mutex_unlock(&p->lock);
                etcd_lease_revoke(es, stale[i].id);
                pthread_mutex_lock(&p->lock);
                stopping = p->stop;
            }
            pthread_mutex_unlock(&p->lock);
            pooled fresh = {0, 0};
            afsm_status st = AFSM_OK;
            if (timeout_ms != 0 && !stopping)
                st = etcd_lease_grant(es, timeout_ms, &fresh.id, &fresh.granted_wall_ns);
            pthread_mutex_lock(&p->lock);
            /* The class may have gone to another timeout meanwhile (it is
             * reused only once it holds nothing and grants nothing). */
            lease_class *c = timeout_ms != 0 ? find_class(p, timeout_ms) : NULL;
            if (c != NULL && c->granting > 0)
                c->granting--;
            if (fresh.id == 0)
                c = NULL;
            if (c != NULL && c->count < POOL_TARGET) {
                c->items[c->count++] = fresh;
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
    for (int i = 0; i < POOL_CLASSES; i++)
        p->classes[i].count = 0;
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* The class for timeout_ms: its own, else one that holds nothing and has
 * had no take for a period (its leases, if any, went stale and were
 * revoked), else NULL: that timeout goes unpooled. Pool lock held. */
static lease_class *class_for(etcd_lease_pool *p, uint64_t timeout_ms, int64_t now_wall)
{
    lease_class *c = find_class(p, timeout_ms);
    for (int i = 0; i < POOL_CLASSES && c == NULL; i++) {
        lease_class *free_one = &p->classes[i];
        if (free_one->timeout_ms == 0 || (free_one->count == 0 && free_one->granting == 0 &&
                                          now_wall - free_one->last_take_wall_ns >= max_age_ns(free_one->timeout_ms))) {
            memset(free_one, 0, sizeof(*free_one));
            free_one->timeout_ms = timeout_ms;
            free_one->period_start_wall_ns = now_wall;
            free_one->level = 1;
            c = free_one;
        }
    }
    return c;
}

afsm_status etcd_lease_take(etcd_store *es, uint64_t timeout_ms, int64_t *lease, int64_t *granted_wall_ns)
{
    etcd_lease_pool *p = es->leases;
    if (p != NULL && timeout_ms >= POOL_MIN_TIMEOUT_MS) {
        pthread_mutex_lock(&p->lock);
        int64_t now_wall = clock_wall_ns();
        int found = 0;
        lease_class *c = class_for(p, timeout_ms, now_wall);
        if (c != NULL) {
            roll_period(c, now_wall);
            /* The newest: the most of its first period left. If even it is
             * too old, they all are: the granter revokes them. */
            if (c->count > 0 && now_wall - c->items[c->count - 1].granted_wall_ns <= max_age_ns(timeout_ms)) {
                pooled last = c->items[--c->count];
                *lease = last.id;
                *granted_wall_ns = last.granted_wall_ns;
                found = 1;
            } else if (c->takes > 0 && c->level < POOL_TARGET) {
                /* Emptied within a period: more creates than spares. */
                c->level *= 2;
            }
            c->takes++;
            c->last_take_wall_ns = now_wall;
            pthread_cond_signal(&p->wake);
        }
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
    for (; p->thread_count < GRANTERS; p->thread_count++)
        if (pthread_create(&p->threads[p->thread_count], NULL, granter_main, es) != 0)
            break;
    if (p->thread_count == 0) {
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        free(p);
        es->leases = NULL;
        return AFSM_ENOMEM;
    }
    return AFSM_OK; /* with fewer threads if some could not start: slower refills, same pool */
}

void etcd_leases_stop(etcd_store *es)
{
    etcd_lease_pool *p = es->leases;
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->thread_count; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p);
    es->leases = NULL;
}
