/*
 * session.h: one session record of the in-memory store.
 *
 * Who writes what:
 * - immutable fields are written once, before the record is published into
 *   the tables (table_insert publishes, table_get observes);
 * - last_active_ns, last_traffic_ns, token_generation and the stats are C11
 *   atomics written lock-free from any thread;
 * - state and meta change together, only under the lock of the session's
 *   home shard, inside the seqlock `seq`, so a reader copies them
 *   consistently;
 * - timer and removed belong to the home shard's lock; user_next is written
 *   under the user shard's lock and read lock-free (mem/index.h).
 * The record is freed through the epoch once it has left the tables and the
 * last pinned handle is released (refs reaches 0).
 *
 * Field order packs the record into jemalloc's 224-byte class for user ids
 * up to 15 bytes (bench/: bytes per session).
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
    /* Immutable after publication. id and connection_id are table keys. */
    afsm_uuid id;
    afsm_uuid connection_id;
    afsm_ip client_ip;
    uint16_t client_port;
    uint16_t user_id_len;
    _Atomic uint8_t removed;  /* set under the lock set when unlinked */
    uint64_t created_ns;      /* engine clock; reported as wall time through the offset */
    uint64_t timeout_ns;      /* rolling timeout */
    uint64_t lifetime_end_ns; /* engine clock; UINT64_MAX without max_lifetime */

    /* Lock-free. */
    _Atomic uint64_t last_active_ns; /* engine clock; SESSION_EXPIRED_BIT once expired */
    /* Stats additions under idle detection; once closed, when it closed. */
    _Atomic uint64_t last_traffic_ns;
    _Atomic uint64_t packets_sent;
    _Atomic uint64_t packets_received;
    _Atomic uint64_t bytes_sent;
    _Atomic uint64_t bytes_received;
    _Atomic uint64_t retransmissions;
    _Atomic uint32_t rtt_ms;
    _Atomic uint32_t refs; /* 1 while in the tables, plus one per pinned handle */
    _Atomic uint32_t token_generation;

    /* Seqlock-protected; written under the home shard lock. */
    sync_seq seq;
    _Atomic uint32_t state;
    _Atomic(metadata *) meta;

    /* A linked timer (home shard lock) until removal; after it, the entry
     * that frees the record through the epoch. */
    union {
        wheel_link timer;
        ck_epoch_entry_t epoch_entry;
    };
    _Atomic(struct session *) user_next; /* the user's list, see mem/index.h */
    struct session *user_prev;

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

static inline bool session_removed(const session *s)
{
    return atomic_load_explicit((_Atomic uint8_t *)&s->removed, memory_order_acquire) != 0;
}

#endif
