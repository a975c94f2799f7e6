/*
 * etcd_store.h: what the files of the etcd store share.
 *
 *   store.c     open, close, the ops table; writes as guarded etcd txns
 *   replica.c   the local replica: the load, the watch thread, applying
 *               records and deletions, the events
 *   client.c    the JSON-gateway client     keys.c  key layout, record JSON
 *   track.c     per-session lease, revision, slot (beside the replica)
 *   leases.c    grants, the pool      renew.c  the lease renewer thread
 *   stats.c     the stats flusher
 *
 * etcd is the truth. Every node keeps a replica: a memory store opened
 * with external_expiry (etcd's leases decide expiry) and no event sink
 * (this store fires the events, once per change, on every node). Reads go
 * to the replica, lock-free. A write is a txn; the writing node applies its
 * result at once under `apply_lock`, and the watch thread applies the same
 * revision only if the record's mod revision in `tracks` is older (the echo
 * is dropped by revision).
 *
 * Locking: `apply_lock` serialises every change to the replica and to
 * `tracks` membership, and `applied_revision`'s writes. Events are fired
 * after it is released. Readers take no lock (the replica) or a stripe
 * lock (tracks, on heartbeats).
 */
#ifndef AFSM_ETCD_STORE_H
#define AFSM_ETCD_STORE_H

#include <pthread.h>
#include <stdatomic.h>

#include "etcd/client.h"
#include "etcd/keys.h"
#include "etcd/track.h"
#include "store.h"
#include "util/clock.h"

typedef struct etcd_lease_pool etcd_lease_pool;
typedef struct etcd_renewer etcd_renewer;

typedef struct etcd_store {
    store base;
    store *replica;
    etcd_client *client;
    store_config config; /* the manager's: clock, cap, event sink, log */
    char prefix[KEYS_PREFIX_MAX + 1];
    size_t prefix_len;
    track tracks;

    pthread_mutex_t apply_lock;
    pthread_cond_t applied; /* broadcast under apply_lock after every change */
    /* Everything under the prefix up to it is applied here; raised only at
     * a revision's end (a txn's keys share one), under apply_lock, by the
     * load, the watch and its progress notifications. */
    _Atomic int64_t applied_revision;
    /* How many keys under "<prefix>s/" etcd held at applied_revision, as the
     * load and the watch counted them (under apply_lock, set together with
     * applied_revision): with it a list proves the replica current without
     * waiting for a watch event that will not come (etcd_replica_sync). */
    int64_t session_keys;
    /* This node's own deletions the watch has not passed yet (under
     * apply_lock): a put of the session at an older revision still in the
     * watch (its create's echo, another node's earlier update) must not
     * bring it back. Dropped once applied_revision reaches them. */
    struct etcd_tombstone *tombstones;
    size_t tombstone_count, tombstone_cap;
    uint32_t read_mode; /* AFSM_READ_* */
    uint64_t request_timeout_ns;
    /* This open's id on the records it writes (keys_record.writer): random,
     * so no other node's, nor this node's before a restart, equals it. */
    int64_t writer_id;
    _Atomic int64_t write_seq; /* the last number given to a write sent (keys_record.seq) */

    /* The watch thread. */
    pthread_t watcher;
    int watcher_running;
    pthread_mutex_t wait_lock; /* with wait_cond: the thread's pauses */
    pthread_cond_t wait_cond;
    _Atomic int stop;
    _Atomic int watch_connected; /* 1 while a watch stream is open */

    /* Group commit of creates (store.c, "create groups"): creates waiting
     * to be sent (oldest first) and the groups in flight, under group_lock. */
    pthread_mutex_t group_lock;
    struct create_op *group_queue, *group_queue_tail;
    unsigned groups_sending;
    /* Held by a create evicting a session (store.c, pick_slot) from its
     * last look at the user's slots until its txn is answered: this node's
     * creates at a full cap then evict one after another, each the oldest
     * left, instead of all racing for the same victim and losing rounds. */
    pthread_mutex_t evict_lock;

    etcd_lease_pool *leases; /* leases.c; NULL until started */
    etcd_renewer *renewer;   /* renew.c; from before the watch starts until after it stops */
    uint64_t stats_flush_ns;
    pthread_t flusher; /* stats.c */
    int flusher_running;
    /* The flusher's pauses: per store (a shared condvar would wake every
     * store's flusher) and on CLOCK_MONOTONIC, the clock of its deadlines. */
    pthread_mutex_t flush_lock;
    pthread_cond_t flush_wake;
    _Atomic size_t pinned;
    /* What the replica cannot count (it only sees restores and removals). */
    _Atomic uint64_t created_total;
    _Atomic uint64_t lease_grants, lease_keepalives, stats_writes;
    _Atomic uint64_t watch_down_since_ns; /* etcd_lease_clock_ns; 0 while connected */
    /* The connected watch's delivery delay, sampled on this node's own
     * writes: the time from a write's answer to the watch applying its
     * revision (its echo), in real time (etcd_lease_clock_ns: a virtual
     * engine clock would not move). One sample at a time: echo_revision and
     * echo_written_ns under apply_lock (set by apply_own while the watch is
     * connected, taken by raise_revision, dropped by a disconnect: the down
     * figure covers an outage); the two atomics mirror them for the metric, which
     * reads without the lock. A node that writes nothing keeps its last
     * figure (docs: README, "Metrics"). */
    int64_t echo_revision; /* 0: no sample in flight */
    uint64_t echo_written_ns;
    _Atomic uint64_t echo_pending_since_ns; /* echo_written_ns while a sample is in flight, else 0 */
    _Atomic uint64_t echo_delay_ns;         /* the last sample's delay */
    _Atomic uint64_t deleted_total[AFSM_DELETE_REASON_COUNT];
} etcd_store;

/* An event to fire once apply_lock is released: afsm_event points into it. */
typedef struct etcd_event {
    int pending;
    int counted; /* a writer's: its session's unfired count was raised (store.c, apply_own) */
    afsm_event ev;
    char user[AFSM_USER_ID_MAX + 1];
    char reason[AFSM_REASON_MAX + 1];
} etcd_event;

/* ---- replica.c ---- */

/* Whether this thread is delivering a counted event of id (etcd_fire). */
int etcd_firing_here(const afsm_uuid *id);

/* Loads the whole prefix into the replica (open: no events; a reload after
 * compaction: the differences as events) and sets applied_revision. */
afsm_status etcd_replica_load(etcd_store *es, int emit_differences);
afsm_status etcd_replica_start(etcd_store *es);
void etcd_replica_stop(etcd_store *es);
/* Consistent and linearizable lists and counts: asks etcd for its
 * revision (one range, at most one key back) and waits, within the request
 * timeout, until the replica holds etcd's sessions as of it. AFSM_OK: the
 * replica answers now; AFSM_EUNAVAILABLE: etcd unreachable, or the watch
 * did not get there in time. On the watch thread (an event callback):
 * AFSM_OK at once. */
afsm_status etcd_replica_sync(etcd_store *es);
/* Whether the caller is es's watch thread (an event callback): it cannot
 * wait for the watch to apply anything. */
int etcd_on_watch_thread(const etcd_store *es);

/* Applies a record at mod_revision (a no-op when tracks already has it at
 * that revision or later). apply_lock held. ev gets the event to fire. */
#define ETCD_APPLY_QUIET 1 /* no CREATED event (the load, a restore) */
#define ETCD_APPLY_OWN   2 /* this node's write: its stats already hold this node's additions until then */
#define ETCD_APPLY_RESET 4 /* with OWN: the stats were set (AFSM_UPDATE_STATS), not added to */
afsm_status etcd_apply_put(etcd_store *es, const keys_record *rec, int64_t mod_revision, int flags, etcd_event *ev);
/* Applies a session's deletion (a no-op when unknown). apply_lock held. */
void etcd_apply_delete(etcd_store *es, const afsm_uuid *id, etcd_event *ev);
/* The DELETED of a session this node deleted before its replica held it
 * (s: the record the delete read from etcd). apply_lock held. */
void etcd_deleted_unseen(etcd_store *es, const afsm_session_info *s, afsm_delete_reason why, const char *reason,
                         size_t reason_len, etcd_event *ev);
/* This node deleted id at revision: older puts of it are stale (0: no
 * memory left; the echo may then bring it back until the watch's delete).
 * apply_lock held. */
void etcd_tombstone_add(etcd_store *es, const afsm_uuid *id, int64_t revision);
void etcd_tombstones_free(etcd_store *es);
void etcd_fire(etcd_store *es, etcd_event *ev);
void etcd_log(etcd_store *es, int level, const char *message, const char *key, const char *value);

/* ---- stats.c ---- */

/* Writes this node's unflushed stats additions to etcd every
 * stats_flush_ns, and once more at stop. */
afsm_status etcd_stats_start(etcd_store *es);
void etcd_stats_stop(etcd_store *es);
/* One pass: every session whose stats changed here. */
void etcd_stats_flush(etcd_store *es);
/* One session's flush (store.c): the record rebuilt from this node's
 * replica, guarded by the revision this node has. AFSM_OK: written, or
 * nothing to write. AFSM_EUNAVAILABLE with *raced (may be NULL) set: the
 * record changed under every attempt (other writers), nothing written,
 * the stats kept for the next flush; without *raced: etcd unreachable. */
afsm_status etcd_flush_one(etcd_store *es, const afsm_uuid *id, int *raced);
/* Sessions a grouped flush writes in one txn, each its own guarded put
 * nested in it (3 ops each: etcd's --max-txn-ops is 128 by default, and a
 * nested txn's ops count against what the outer leaves). */
#define ETCD_FLUSH_GROUP 64
/* The flush of up to ETCD_FLUSH_GROUP sessions in one txn: one raft write
 * for all, where etcd_flush_one makes one each. A session whose record
 * changed in etcd since this node applied it gets alone[i] = 1 (etcd's
 * record applied here; flush it again, alone), as does one that would
 * have made the request too large. AFSM_EUNAVAILABLE: etcd unreachable,
 * nothing known written; AFSM_ENOMEM: nothing sent. */
afsm_status etcd_flush_group(etcd_store *es, const afsm_uuid *ids, size_t n, int *alone);

/* ---- leases.c ---- */

/* Grants a lease for a session of timeout_ms; granted_wall_ns: when its
 * clock started (no later than etcd's). */
afsm_status etcd_lease_grant(etcd_store *es, uint64_t timeout_ms, int64_t *lease, int64_t *granted_wall_ns);
/* A lease for a new session: a pooled one when the pool has a fresh one
 * for this timeout, else a grant. */
afsm_status etcd_lease_take(etcd_store *es, uint64_t timeout_ms, int64_t *lease, int64_t *granted_wall_ns);
void etcd_lease_revoke(etcd_store *es, int64_t lease);
afsm_status etcd_leases_start(etcd_store *es);
void etcd_leases_stop(etcd_store *es);

/* ---- renew.c ---- */

/* After a heartbeat taken by the replica: queues the session's lease for
 * the renewer if its period is over (never waits on etcd). AFSM_EEXPIRED:
 * a keepalive already found the lease gone from etcd; else AFSM_OK. */
afsm_status etcd_renew_if_due(etcd_store *es, const afsm_uuid *id);
afsm_status etcd_renewer_start(etcd_store *es);
/* Joins the renewer: no keepalive is sent after it returns. */
void etcd_renewer_stop(etcd_store *es);

/* The lease TTL in seconds for a session's timeout: the timeout plus the
 * renewal period (timeout / 3), rounded up, so that a lease renewed at most
 * once per period never expires before the session's own deadline. */
int64_t etcd_lease_ttl_s(uint64_t timeout_ms);
static inline uint64_t etcd_renew_period_ns(uint64_t timeout_ms)
{
    return timeout_ms * 1000000u / 3u;
}

/* The clock renewals are counted on (track's renewed_ns and
 * activate_after_ns): etcd ends a lease on real time, whatever the engine
 * clock (afsm_config.clock may be a virtual one, or run slow), so a
 * period of it must be a real period. */
static inline uint64_t etcd_lease_clock_ns(void)
{
    return clock_monotonic_coarse_ns(NULL);
}

/* The store (store.c). */
typedef struct etcd_store_config {
    const char *endpoints;
    const char *prefix; /* NULL: KEYS_PREFIX_DEFAULT */
    uint64_t dial_timeout_ms;
    uint64_t request_timeout_ms;
    uint64_t stats_flush_ms; /* 0: default */
    uint32_t read_mode;      /* AFSM_READ_* */
    const char *ca_file, *cert_file, *key_file, *user, *password;
} etcd_store_config;

afsm_status etcd_store_open(const store_config *config, const etcd_store_config *etcd, store **out);

#endif
