/*
 * session.h: one session record of the in-memory store.
 *
 * Who writes what:
 * - immutable fields are written once, before the record is published into
 *   the tables (table_insert publishes, table_get observes);
 * - last_active_ns and the stats are C11 atomics, written lock-free by
 *   heartbeats and stats additions from any thread;
 * - state and meta change together, only under the lock of the session's
 *   shard, inside the seqlock `seq`, so a reader copies them consistently;
 * - timer, all_prev and removed belong to the shard lock; all_next is
 *   written under it and read lock-free (the shard's RCU list for scans);
 *   user_next / user_prev likewise under the user's shard lock.
 * The record is freed through the epoch when it has left the tables and
 * the last pinned handle is released (refs reaches 0).
 */
#ifndef AFSM_MEM_SESSION_H
#define AFSM_MEM_SESSION_H

#include <ck_epoch.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "afsm.h"
#include "mem/wheel.h"
#include "metadata.h"
#include "util/sync.h"

/* Set in last_active_ns once the reaper has decided the session expired:
 * it is above every real time, so a heartbeat's store-max can never
 * overwrite it, which makes "expire" and "heartbeat" mutually exclusive. */
#define SESSION_EXPIRED_BIT (UINT64_C(1) << 63)

typedef struct session {
    /* Immutable after publication. */
    afsm_uuid id;
    afsm_uuid connection_id;
    afsm_ip client_ip;
    uint16_t client_port;
    uint16_t user_id_len;
    int64_t created_wall_ns;
    uint64_t created_ns;      /* engine clock */
    uint64_t timeout_ns;      /* rolling timeout */
    uint64_t lifetime_end_ns; /* UINT64_MAX without max_lifetime */

    /* Lock-free. */
    _Atomic uint64_t last_active_ns;  /* engine clock; SESSION_EXPIRED_BIT once expired */
    _Atomic uint64_t last_traffic_ns; /* stats additions; only kept under idle detection */
    _Atomic uint64_t packets_sent;
    _Atomic uint64_t packets_received;
    _Atomic uint64_t bytes_sent;
    _Atomic uint64_t bytes_received;
    _Atomic uint64_t retransmissions;
    _Atomic uint32_t rtt_ms;
    _Atomic uint32_t refs; /* 1 while in the tables, plus one per pinned handle */
    _Atomic uint32_t removed;

    /* Seqlock-protected; written under the shard lock. */
    sync_seq seq;
    _Atomic uint32_t state;
    _Atomic(metadata *) meta;

    /* Shard lock. */
    wheel_link timer;
    uint64_t closed_at_ns; /* engine clock; set when the state becomes closed */
    _Atomic(struct session *) all_next;
    struct session *all_prev;
    _Atomic(struct session *) user_next; /* the user's list, see mem/index.h */
    struct session *user_prev;

    ck_epoch_entry_t epoch_entry;
    char user_id[]; /* user_id_len bytes and a NUL */
} session;

/* The deadline implied by a last-active time. */
static inline uint64_t session_deadline(const session *s, uint64_t last_active_ns)
{
    uint64_t rolling = last_active_ns + s->timeout_ns;
    return rolling < s->lifetime_end_ns ? rolling : s->lifetime_end_ns;
}

/* True when the session is expired at now_ns (decided or merely due). */
static inline bool session_expired(const session *s, uint64_t now_ns)
{
    uint64_t seen = atomic_load_explicit((_Atomic uint64_t *)&s->last_active_ns, memory_order_relaxed);
    return (seen & SESSION_EXPIRED_BIT) != 0 || session_deadline(s, seen) <= now_ns;
}

#endif
