/*
 * shard.h: one shard of the in-memory store, and lock sets.
 *
 * A session lives in the shard chosen by its id; its connection-id entry in
 * the shard chosen by the connection id; its user's index entry in the
 * shard chosen by the user id. A change that touches several takes their
 * locks together, always in ascending shard order, so it cannot deadlock
 * and every index changes at once as seen by writers. Readers take no lock.
 *
 * Everything a shard writes often sits on its own cache lines, apart from
 * the table headers every lookup reads.
 */
#ifndef AFSM_MEM_SHARD_H
#define AFSM_MEM_SHARD_H

#include <ck_epoch.h>
#include <ck_md.h>
#include <stdatomic.h>
#include <stdint.h>

#include "afsm.h"
#include "mem/session.h"
#include "mem/slab.h"
#include "mem/table.h"
#include "mem/wheel.h"
#include "util/sync.h"

typedef struct shard {
    /* Alone on its line: every write takes and drops it. */
    sync_lock lock;
    /* From here to the wheel: read by every lookup, written only when a
     * table's map is replaced. A line shared with the lock (or with a
     * counter every removal bumps) would be taken from every core looking
     * a key up here each time a writer locks the shard (issue 15, goal 3:
     * two threads deleting). */
    ck_epoch_record_t *defer __attribute__((aligned(CK_MD_CACHELINE))); /* frees deferred by this shard's writers */
    table sessions;                                                     /* &session->id */
    table connections;                                                  /* &session->connection_id */
    table users;                                                        /* &user_entry->key (mem/index.h) */
    /* Written by every add and removal of a timer. */
    wheel timers __attribute__((aligned(CK_MD_CACHELINE))); /* deadlines of the sessions in `sessions` */
    slab records; /* the records of the sessions whose home this is; own leaf lock */
    /* The pinned handles of this shard's sessions whose counters are
     * deferred (claimed by afsm_handle_packet's owner), for the fold pass
     * of each advance (mem/dataplane.c): an array, so the pass prefetches
     * instead of chasing pointers. Own lock, taken alone: the claim,
     * release and the fold pass; never per packet. */
    sync_lock handles_lock;
    struct mem_handle **deferring;
    size_t deferring_count;
    size_t deferring_capacity;
    /* Counters of this shard's sessions: written under the lock, read
     * lock-free and summed over the shards. */
    _Atomic uint64_t by_state[AFSM_STATE_COUNT];
    _Atomic uint64_t created;
    _Atomic uint64_t deleted[AFSM_DELETE_REASON_COUNT];
    _Atomic uint64_t idle_transitions;
    _Atomic uint64_t wake_transitions;
    _Atomic uint64_t duration_buckets[AFSM_DURATION_BUCKETS];
    _Atomic uint64_t duration_sum_ms;
} __attribute__((aligned(CK_MD_CACHELINE))) shard;

/* Up to five shards locked together (session, connection, user, and an
 * evicted session's two). */
#define LOCKSET_MAX 5
typedef struct lockset {
    unsigned count;
    unsigned index[LOCKSET_MAX];
} lockset;

void lockset_init(lockset *set);
/* A set of the three shards every write touches (session, connection,
 * user), sorted and deduplicated with three compares: a delete builds one
 * per call (issue 15, goal 3). */
static inline void lockset_init3(lockset *set, unsigned a, unsigned b, unsigned c)
{
    unsigned t;
    if (a > b)
        t = a, a = b, b = t;
    if (b > c)
        t = b, b = c, c = t;
    if (a > b)
        t = a, a = b, b = t;
    set->index[0] = a;
    set->count = 1;
    if (b != a)
        set->index[set->count++] = b;
    if (c != b)
        set->index[set->count++] = c;
}
void lockset_add(lockset *set, unsigned shard_index);
void lockset_acquire(shard *shards, lockset *set);
void lockset_release(shard *shards, const lockset *set);

#endif
