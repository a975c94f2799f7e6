/*
 * session.h: one session record of the in-memory store.
 *
 * Who writes what:
 * - immutable fields are written once, before the record is published into
 *   the tables (table_insert publishes, table_get observes);
 * - last_active_ns, last_traffic_ns, token_generation and the stats are C11
 *   atomics written lock-free from any thread (the stats also by the folds
 *   of handles' deferred counters, mem/dataplane.c);
 * - state and meta change together, only under the lock of the session's
 *   home shard, inside the seqlock `seq`, so a reader copies them
 *   consistently;
 * - timer and removed belong to the home shard's lock; user_next is written
 *   under the user shard's lock and read lock-free (mem/index.h).
 * The record is freed through the epoch once it has left the tables and the
 * last pinned handle is released (refs reaches 0).
 *
 * Field order packs the record into 192 bytes: three cache lines of a
 * 64-byte-aligned slab slot (mem/slab.h; bench/: bytes per session). A
 * user id of up to 16 bytes lives in the record, so a copy reads no other
 * line (issue 15, goal 1); a longer one lives in the user's entry. The
 * sixteen bytes come from the timer, which keeps no deadline (mem/wheel.h),
 * and from the slab pointer of the epoch deferral, which takes user_prev's
 * place once the record has left the user's list.
 */
#ifndef AFSM_MEM_SESSION_H
#define AFSM_MEM_SESSION_H

#include <ck_epoch.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "afsm.h"
#include "mem/wheel.h"
#include "metadata.h"
#include "util/sync.h"

/* Set in last_active_ns once the reaper has decided the session expired:
 * it is above every real time, so a heartbeat's store-max can never
 * overwrite it, which makes "expire" and "heartbeat" mutually exclusive. */
#define SESSION_EXPIRED_BIT (UINT64_C(1) << 63)

struct user_entry;

/* The longest user id a record holds itself (mem/index.h). */
#define SESSION_USER_ID_INLINE 16

typedef struct session {
    /* Immutable after publication. id and connection_id are table keys. */
    afsm_uuid id;
    afsm_uuid connection_id;
    /* Who the session belongs to (mem/index.h reads it): an id of
     * 1..SESSION_USER_ID_INLINE bytes itself, zero padded (ids hold no
     * NUL, so its first byte is not 0); a longer one as eight zero bytes,
     * then the user's index entry, which holds it and outlives every
     * session that points to it (freed through the epoch after the last). In the first line, with the key a lookup
     * compares, so a copy of a long id starts fetching the entry at once. */
    union {
        char user_id_inline[SESSION_USER_ID_INLINE];
        struct {
            uint64_t user_id_not_inline; /* 0 */
            struct user_entry *user_long;
        };
    };
    _Atomic uint8_t removed; /* set under the lock set when unlinked */
    _Atomic uint8_t state;   /* seqlock-protected, with meta */
    uint16_t client_port;
    uint32_t timeout_ms; /* rolling timeout */
    uint64_t created_ns; /* engine clock; reported through the wall offset */

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

    /* Seqlock for state and meta; written under the home shard lock. */
    sync_seq seq;
    _Atomic(metadata *) meta;

    /* A linked timer (home shard lock) until removal; after it, the entry
     * that frees the record through the epoch. */
    union {
        wheel_link timer;
        ck_epoch_entry_t epoch_entry;
    };
    _Atomic(struct session *) user_next; /* the user's list, see mem/index.h */
    /* user_prev while on the user's list (user shard lock); once off it and
     * handed to the epoch, the slab (its home shard's, mem/slab.h) the
     * callback gives the slot back to. Nothing reads user_prev lock-free. */
    union {
        struct session *user_prev;
        struct slab *free_to;
    };
    uint8_t client_ip[16]; /* immutable; v6, or v4 as ::ffff:a.b.c.d (session_ip) */
} session;

/* One slab slot per session (mem/slab.h; bench/: bytes per session). */
_Static_assert(sizeof(session) == 192, "session record outgrew its 192-byte slot");
_Static_assert(offsetof(session, user_long) + sizeof(void *) <= 64 && offsetof(session, created_ns) + 8 <= 64,
               "a long user id's entry pointer and the creation time belong in the first line");

/* The deadline implied by a last-active time: the rolling timeout, capped
 * by the engine's max_lifetime (0: none). */
static inline uint64_t session_deadline(const session *s, uint64_t last_active_ns, uint64_t max_lifetime_ns)
{
    uint64_t rolling = last_active_ns + (uint64_t)s->timeout_ms * 1000000u;
    if (max_lifetime_ns == 0)
        return rolling;
    uint64_t end = s->created_ns + max_lifetime_ns;
    return rolling < end ? rolling : end;
}

/* True when the session is expired at now_ns (decided or merely due). */
static inline bool session_expired(const session *s, uint64_t now_ns, uint64_t max_lifetime_ns)
{
    uint64_t seen = atomic_load_explicit((_Atomic uint64_t *)&s->last_active_ns, memory_order_relaxed);
    return (seen & SESSION_EXPIRED_BIT) != 0 || session_deadline(s, seen, max_lifetime_ns) <= now_ns;
}

static inline bool session_removed(const session *s)
{
    return atomic_load_explicit((_Atomic uint8_t *)&s->removed, memory_order_acquire) != 0;
}

/* The client address in the record's 16-byte form and back. */
static inline void session_set_ip(session *s, const afsm_ip *ip)
{
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (ip->family == 4) {
        memcpy(s->client_ip, v4_mapped, 12);
        memcpy(s->client_ip + 12, ip->bytes, 4);
    } else {
        memcpy(s->client_ip, ip->bytes, 16);
    }
}

static inline void session_ip(const session *s, afsm_ip *out)
{
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memset(out, 0, sizeof(*out));
    if (memcmp(s->client_ip, v4_mapped, 12) == 0) {
        /* afsm_ip_parse normalises v4-mapped v6 to v4, so this is lossless. */
        out->family = 4;
        memcpy(out->bytes, s->client_ip + 12, 4);
    } else {
        out->family = 6;
        memcpy(out->bytes, s->client_ip, 16);
    }
}

#endif
