/*
 * stats.c: data-plane stats, buffered on the node that counted them and
 * written to etcd on a period, never once per packet.
 *
 * A stats addition only touches the replica (atomics). tracks keeps, per
 * session, the stats etcd's record holds (`flushed`); the difference is
 * this node's own unflushed additions. Every stats_flush_ns the flusher
 * thread writes each session whose stats differ: the record rebuilt from
 * the replica, guarded by its mod revision, many sessions to a txn
 * (etcd_flush_group). When another node's record arrives first, applying
 * it keeps this node's difference on top (replica.c, merged_stats), so no
 * node's additions overwrite another's. A crash loses what the crashed
 * node added since its last pass (a period, plus the pass itself when
 * passes outlast the period, which is logged), never a session; close
 * flushes once more, in a pass that begins after close did.
 *
 * Locking: the thread's pauses use the store's flush_lock / flush_wake;
 * the writes take the store's apply_lock through apply_own.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "etcd/etcd_store.h"

typedef struct ids {
    afsm_uuid *items;
    size_t count, cap;
} ids;

static void collect(void *ctx, const afsm_uuid *id, const track_info *info)
{
    (void)info;
    ids *l = ctx;
    if (l->count == l->cap) {
        size_t cap = l->cap != 0 ? l->cap * 2 : 256;
        afsm_uuid *grown = realloc(l->items, cap * sizeof(*grown));
        if (grown == NULL)
            return; /* the rest waits for the next pass */
        l->items = grown;
        l->cap = cap;
    }
    l->items[l->count++] = *id;
}

/* Whether this node has stats additions for id that etcd's record lacks. */
static int unflushed(etcd_store *es, const afsm_uuid *id)
{
    afsm_session_info now = {.version = AFSM_SESSION_INFO_VERSION};
    track_info ti;
    return es->replica->ops->get(es->replica, id, &now) == AFSM_OK && track_get(&es->tracks, id, &ti) &&
           memcmp(&now.stats, &ti.flushed, sizeof(afsm_stats)) != 0;
}

/* The sessions with stats to write go to etcd ETCD_FLUSH_GROUP to a txn
 * (one raft write each group: a pass of one txn per session flushed ~1K
 * sessions a second on this machine's etcd, so a node with more sessions
 * than that in traffic could not finish a pass within its period). A
 * session whose record another writer changed is flushed again alone
 * (etcd_flush_one, which retries its guard). */
void etcd_stats_flush(etcd_store *es)
{
    ids all = {0};
    track_each(&es->tracks, collect, &all);
    size_t raced_total = 0;
    afsm_uuid batch[ETCD_FLUSH_GROUP];
    int alone[ETCD_FLUSH_GROUP];
    size_t i = 0;
    while (i < all.count) {
        size_t n = 0;
        for (; i < all.count && n < ETCD_FLUSH_GROUP; i++)
            if (unflushed(es, &all.items[i]))
                batch[n++] = all.items[i];
        if (n == 0)
            break;
        afsm_status st = etcd_flush_group(es, batch, n, alone);
        if (st == AFSM_EUNAVAILABLE)
            break; /* etcd is away: the whole pass waits for the next period */
        int away = 0;
        for (size_t k = 0; k < n && !away; k++) {
            if (st == AFSM_OK && !alone[k])
                continue;
            /* Lost its guard, or the group could not be built: alone. */
            int raced = 0;
            afsm_status one = etcd_flush_one(es, &batch[k], &raced);
            raced_total += (size_t)raced;
            away = one == AFSM_EUNAVAILABLE && !raced;
            /* A session other writers kept changing: its stats wait for
             * the next pass; the others are still written now. */
        }
        if (away)
            break;
    }
    if (raced_total > 0) {
        char text[24];
        snprintf(text, sizeof(text), "%zu", raced_total);
        etcd_log(es, AFSM_LOG_WARN,
                 "etcd: stats not flushed (the record changed under each attempt); kept for the next flush", "sessions",
                 text);
    }
    free(all.items);
}

static int stopping(etcd_store *es)
{
    return atomic_load_explicit(&es->stop, memory_order_acquire);
}

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* At most one warning a minute that passes outlast the period. */
#define SLOW_PASS_WARN_NS (60ull * 1000000000u)

/* A pass longer than the period: the next starts late, and a crash loses
 * up to a period plus a pass of this node's stats. etcd sets the pace (it
 * writes a few thousand records a second: core/etcd/README.md, "Stats");
 * the operator's remedy is a longer period, so the log says both. */
static void warn_slow_pass(etcd_store *es, uint64_t took_ns, uint64_t *warned_ns)
{
    uint64_t now = monotonic_ns();
    if (took_ns <= es->stats_flush_ns || (*warned_ns != 0 && now - *warned_ns < SLOW_PASS_WARN_NS))
        return;
    *warned_ns = now;
    char text[64];
    snprintf(text, sizeof(text), "%llu ms (period %llu ms)", (unsigned long long)(took_ns / 1000000u),
             (unsigned long long)(es->stats_flush_ns / 1000000u));
    etcd_log(es, AFSM_LOG_WARN,
             "etcd: a stats flush pass took longer than etcd_stats_flush_ms; a crash may lose more than a period "
             "of stats: raise the period",
             "took", text);
}

static void *flusher_main(void *arg)
{
    etcd_store *es = arg;
    uint64_t warned_ns = 0;
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + es->stats_flush_ns;
        until.tv_sec += (time_t)(ns / 1000000000u);
        until.tv_nsec = (long)(ns % 1000000000u);
        pthread_mutex_lock(&es->flush_lock);
        while (!stopping(es) && pthread_cond_timedwait(&es->flush_wake, &es->flush_lock, &until) == 0)
            ; /* woken spuriously: wait out the period */
        pthread_mutex_unlock(&es->flush_lock);
        int last = stopping(es);
        uint64_t start = monotonic_ns();
        etcd_stats_flush(es);
        /* Close flushes once more: a pass that began before close did may
         * have written a session before the caller's last additions to it,
         * so the last pass is one that began after (test_etcd_review3). */
        if (last)
            return NULL;
        if (stopping(es))
            continue;
        warn_slow_pass(es, monotonic_ns() - start, &warned_ns);
    }
}

afsm_status etcd_stats_start(etcd_store *es)
{
    /* The deadlines are CLOCK_MONOTONIC: a condvar on the default
     * (realtime) clock would see them decades past and never wait. */
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return AFSM_ENOMEM;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int failed = pthread_cond_init(&es->flush_wake, &attr);
    pthread_condattr_destroy(&attr);
    if (failed)
        return AFSM_ENOMEM;
    pthread_mutex_init(&es->flush_lock, NULL);
    if (pthread_create(&es->flusher, NULL, flusher_main, es) != 0) {
        pthread_cond_destroy(&es->flush_wake);
        pthread_mutex_destroy(&es->flush_lock);
        return AFSM_ENOMEM;
    }
    es->flusher_running = 1;
    return AFSM_OK;
}

void etcd_stats_stop(etcd_store *es)
{
    if (!es->flusher_running)
        return;
    pthread_mutex_lock(&es->flush_lock);
    atomic_store_explicit(&es->stop, 1, memory_order_release);
    pthread_cond_broadcast(&es->flush_wake);
    pthread_mutex_unlock(&es->flush_lock);
    pthread_join(es->flusher, NULL);
    pthread_cond_destroy(&es->flush_wake);
    pthread_mutex_destroy(&es->flush_lock);
    es->flusher_running = 0;
}
