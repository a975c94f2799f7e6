/*
 * track.h: what one node knows of each session's keys in etcd, beside the
 * replica (which holds the session itself): its lease, the mod revision of
 * its record as last applied here, its cap slot, when this node last
 * renewed its lease, and the reason of a pending delete (a g/ key seen in
 * the watch before the deletion it explains).
 *
 * Locking: the table is striped; each stripe's mutex guards its chains and
 * entries. A heartbeat touches one stripe for a few instructions; writers
 * and the watch additionally hold the store's apply lock (etcd_store.h), so
 * put/remove never race one another on the same id.
 */
#ifndef AFSM_ETCD_TRACK_H
#define AFSM_ETCD_TRACK_H

#include <pthread.h>
#include <stdint.h>

#include "afsm.h"

#define TRACK_STRIPES 256

typedef struct track_info {
    int64_t lease;
    int64_t mod_revision;
    int32_t slot;               /* -1: none */
    uint64_t renewed_ns;        /* lease clock (real time): this node's last renewal (or the write it applied) */
    uint64_t renew_period_ns;   /* the session's timeout / 3 */
    int64_t leased_ns;          /* the record's: when its lease's TTL started */
    uint64_t activate_after_ns; /* lease clock: a failed activation by heartbeat is not retried before */
    afsm_stats flushed;
    int inflight;           /* this node's guarded writes of the record under way */
    int unfired;            /* events a writer of this node applied and has not fired yet (store.c, apply_own) */
    int renew_queued;       /* its lease waits in (or is being sent by) the renewer (renew.c) */
    int lease_gone;         /* a keepalive found its lease gone from etcd (TTL <= 0) */
    afsm_delete_reason why; /* of a pending delete */
    int has_reason;
    char reason[AFSM_REASON_MAX + 1];
    size_t reason_len;
} track_info;

typedef struct track_entry track_entry;

typedef struct track_stripe {
    pthread_mutex_t lock;
    track_entry **buckets;
    size_t bucket_count; /* a power of two */
    size_t count;
} track_stripe;

typedef struct track {
    track_stripe stripes[TRACK_STRIPES];
} track;

afsm_status track_init(track *t);
void track_destroy(track *t);

/* Inserts or replaces the entry for id (keeping a pending reason).
 * AFSM_ENOMEM only for a new entry: a replacement allocates nothing. */
afsm_status track_put(track *t, const afsm_uuid *id, const track_info *info);
/* Copies id's entry out: 1 if present. */
int track_get(track *t, const afsm_uuid *id, track_info *out);
/* Removes id's entry, copying it out first: 1 if it was present. */
int track_remove(track *t, const afsm_uuid *id, track_info *out);
/* Remembers why id is about to be deleted (a no-op if id is unknown). */
void track_set_reason(track *t, const afsm_uuid *id, afsm_delete_reason why, const char *reason, size_t reason_len);
/* A heartbeat's question about id's lease at now_ns. TRACK_RENEW_DUE: its
 * last renewal was at least its renew period ago and none is queued; it is
 * marked renewed now and queued (renew_queued), and *lease (and its
 * renew period, *period_ns) given: the caller hands it to the renewer
 * (one caller per period wins).
 * TRACK_RENEW_GONE: a keepalive found the lease gone from etcd. */
#define TRACK_RENEW_NOT_DUE 0
#define TRACK_RENEW_DUE     1
#define TRACK_RENEW_GONE    2
int track_renew_due(track *t, const afsm_uuid *id, uint64_t now_ns, int64_t *lease, uint64_t *period_ns);
/* The renewer is done with id's lease: ok (renewed), failed (due again a
 * quarter period later), or gone (TTL <= 0: noted,
 * if id still has that lease). Clears renew_queued. */
#define TRACK_RENEWED      0
#define TRACK_RENEW_FAILED 1
#define TRACK_LEASE_GONE   2
void track_renew_done(track *t, const afsm_uuid *id, int64_t lease, int outcome);
/* Whether a heartbeat may try to activate id at now_ns (no failed try
 * within the last quarter of its renew period). */
int track_activation_due(track *t, const afsm_uuid *id, uint64_t now_ns);
/* After a failed activation: not tried again for a quarter period. */
void track_activation_failed(track *t, const afsm_uuid *id, uint64_t now_ns);
/* This node's write of id's record, with these stats, is in etcd but not
 * applied here (no memory): the watch applies it later, and must not take
 * the stats it carries for another node's additions. Sets `flushed`;
 * allocates nothing. */
void track_set_flushed(track *t, const afsm_uuid *id, const afsm_stats *stats);
/* Notes of this node's guarded writes of a record that may be in etcd
 * without having been applied here: the numbers (keys_record.seq) of the
 * writes sent since the last record applied, and for each set among them
 * the replica's stats it was edited from. One is added before each write
 * is sent (track_note_own_write); the next record applied drops them all
 * (track_put replaces the entry), so they outlive only writes whose answer
 * never came (the connection dropped, the request timed out) or that never
 * left. A record of this node's writer id with one of those numbers is
 * that write (replica.c, etcd_apply_put). Numbers grow per store, so the
 * noted ones are a range; sets are rare and kept up to TRACK_SET_NOTES_MAX.
 * Kept beside the entry, not in track_info: only while writes are under
 * way. */
#define TRACK_SET_NOTES_MAX 8
/* A guarded write of id numbered seq (a set: set, edited from the
 * replica's stats from) is about to be sent. AFSM_ENOMEM, or
 * AFSM_EUNAVAILABLE for a set past TRACK_SET_NOTES_MAX unanswered ones:
 * not noted, and the write must not be sent (its answer lost, its record
 * could not be told from another node's). A no-op for an unknown id. */
afsm_status track_note_own_write(track *t, const afsm_uuid *id, int64_t seq, int set, const afsm_stats *from);
/* Whether id's write numbered seq was noted: 1, with *from (for a set)
 * the stats it was edited from. */
int track_own_write(track *t, const afsm_uuid *id, int64_t seq, int set, afsm_stats *from);
/* Counts a guarded write of id starting (+1) or done (-1). */
void track_inflight(track *t, const afsm_uuid *id, int delta);
/* Counts an event of id a writer captured (+1) or fired (-1). */
void track_unfired(track *t, const afsm_uuid *id, int delta);
/* Every id known (for a reload's differences): calls fn for each. */
void track_each(track *t, void (*fn)(void *ctx, const afsm_uuid *id, const track_info *info), void *ctx);

#endif
