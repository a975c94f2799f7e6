/*
 * store.h: the seam between the manager (core/manager.c: input checks,
 * defaults, the public ABI) and a store (core/mem/: the in-memory engine;
 * later an etcd-backed one). Every call reaching a store has passed the
 * manager's checks: pointers are valid, strings within bounds, UUIDs and
 * IPs parsed, metadata validated, struct versions known.
 *
 * A store fires events itself, through the sink it was opened with, outside
 * its locks, because only it knows when a session expires.
 */
#ifndef AFSM_STORE_H
#define AFSM_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "afsm.h"

typedef struct store store;
typedef struct store_handle store_handle;

/* What the manager resolved from afsm_config. Times in nanoseconds. */
typedef struct store_config {
    uint32_t shard_count; /* a power of two */
    uint64_t capacity_hint;
    uint64_t tick_ns;
    uint64_t idle_timeout_ns;       /* 0: off */
    uint64_t max_lifetime_ns;       /* 0: none */
    uint64_t close_linger_ns;       /* 0: a closed session is removed at once */
    uint32_t max_sessions_per_user; /* 0: no cap */
    uint32_t limit_policy;          /* AFSM_LIMIT_* */
    int metrics;                    /* keep the metrics counters */
    /* Non-zero: the store never judges a session expired by its own clock
     * (no EEXPIRED, no expiry on advance); only a removal ends a session.
     * The etcd store's replica: there the lease in etcd is the truth, and a
     * heartbeat on another node never reaches this node's copy. */
    int external_expiry;
    /* Non-zero: activity never moves a session to ACTIVE here (mem_activate
     * does nothing); the owner writes that change itself. The etcd store's
     * replica: an activation only this node's copy saw would never reach
     * the other nodes, so the store makes it an etcd write. */
    int external_activation;
    const char *server_addr; /* NUL-terminated, <= AFSM_SERVER_ADDR_MAX */
    afsm_clock_fn clock;
    void *clock_ctx;
    void (*emit)(void *ctx, const afsm_event *event); /* may be NULL */
    void *emit_ctx;
    /* The engine's log (afsm_log_fn's shape); may be NULL. */
    void (*log)(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t field_count);
    void *log_ctx;
} store_config;

typedef struct session_spec {
    const char *user_id;
    uint16_t user_id_len;
    uint16_t client_port;
    afsm_ip client_ip;
    afsm_uuid connection_id;
    const afsm_kv *metadata; /* validated */
    size_t metadata_count;
    uint64_t timeout_ns;
    /* Restoring (afsm_session_restore), else NULL: the copy to re-create.
     * The store turns its wall-clock times back into engine-clock ones
     * through the same offset its copies are made with. */
    const afsm_session_info *restore;
} session_spec;

typedef struct store_ops {
    void (*close)(store *s);
    afsm_status (*create)(store *s, const session_spec *spec, afsm_session_info *out);
    afsm_status (*get)(store *s, const afsm_uuid *id, afsm_session_info *out);
    afsm_status (*get_by_connection)(store *s, const afsm_uuid *connection_id, afsm_session_info *out);
    afsm_status (*get_metadata)(store *s, const afsm_uuid *id, char *buf, size_t buf_size, size_t *needed,
                                size_t *count);
    afsm_status (*update)(store *s, const afsm_uuid *id, const afsm_update *update, afsm_session_info *out);
    afsm_status (*add_stats)(store *s, const afsm_uuid *id, const afsm_stats *delta);
    afsm_status (*heartbeat)(store *s, const afsm_uuid *id, uint64_t *remaining_ns);
    afsm_status (*remove)(store *s, const afsm_uuid *id, const char *reason, size_t reason_len);
    afsm_status (*remove_by_user)(store *s, const char *user_id, size_t user_id_len, const char *reason,
                                  size_t reason_len, size_t *removed);
    /* Moves the session to a new token generation; out gets the result. */
    afsm_status (*rotate_generation)(store *s, const afsm_uuid *id, afsm_session_info *out);
    afsm_status (*list)(store *s, const afsm_list_filter *filter, afsm_session_info *out, size_t *count,
                        uint64_t *total, afsm_uuid *next_cursor);
    afsm_status (*advance)(store *s, uint64_t now_ns, size_t *expired);
    afsm_status (*counts)(store *s, afsm_counts *out);
    /* Fills every field but version and token_validations. */
    afsm_status (*metrics)(store *s, afsm_metrics *out);
    afsm_status (*pin)(store *s, const afsm_uuid *id, int by_connection, store_handle **out);
    afsm_status (*handle_heartbeat)(store_handle *h, uint64_t *remaining_ns);
    afsm_status (*handle_add_stats)(store_handle *h, const afsm_stats *delta);
    /* afsm_handle_packet at the caller's engine-clock reading (every store
     * refuses one ahead of its clock: AFSM_EINVAL, nothing done). */
    afsm_status (*handle_packet)(store_handle *h, uint64_t now_ns, const afsm_stats *delta, uint64_t *remaining_ns);
    void (*handle_session_id)(const store_handle *h, afsm_uuid *out);
    void (*handle_release)(store_handle *h);
    size_t (*pinned)(store *s);
    /* Batches: statuses[i] is what the single call would return for ids[i]
     * (AFSM_ENOMEM for every item when no epoch section could be had).
     * May be NULL: the manager then loops over the single calls. A store
     * that has them stages the work (core/mem/batch.c). remaining_ns may be
     * NULL; written for the items that succeed. */
    void (*get_batch)(store *s, const afsm_uuid *ids, size_t n, afsm_session_info *out, afsm_status *statuses);
    void (*heartbeat_batch)(store *s, const afsm_uuid *ids, size_t n, uint64_t *remaining_ns, afsm_status *statuses);
    void (*add_stats_batch)(store *s, const afsm_uuid *ids, const afsm_stats *deltas, size_t n, afsm_status *statuses);
} store_ops;

struct store {
    const store_ops *ops;
};

/* Every store's pinned handle begins with this, so the public afsm_handle
 * is the store's handle itself: one allocation, one indirection on the
 * data plane's hottest calls. */
struct store_handle {
    const store_ops *ops;
};

/* The state changes every store allows (afsm.h, afsm_session_update):
 * connecting->active, active<->idle, active/idle->disconnecting,
 * any->closed; a change to the current state is a no-op. */
static inline int store_transition_allowed(uint32_t from, uint32_t to)
{
    if (from == to || to == AFSM_STATE_CLOSED)
        return 1;
    switch (from) {
    case AFSM_STATE_CONNECTING:
        return to == AFSM_STATE_ACTIVE;
    case AFSM_STATE_ACTIVE:
        return to == AFSM_STATE_IDLE || to == AFSM_STATE_DISCONNECTING;
    case AFSM_STATE_IDLE:
        return to == AFSM_STATE_ACTIVE || to == AFSM_STATE_DISCONNECTING;
    default:
        return 0;
    }
}

/* The in-memory store (core/mem/). */
afsm_status mem_store_open(const store_config *config, store **out);
/* "Now" as that store's copies report it: its engine clock plus its wall
 * offset. The etcd store stamps the records it writes with it, so that a
 * replica reads them back on the engine's clock, as its own stamps are. */
int64_t mem_store_wall_now(const store *s);
/* What every advance of the memory store does besides expiring: re-anchors
 * that offset after a step of the wall clock against the engine clock of
 * more than a second, and runs the deferred frees (removed records, user
 * entries, metadata) that no reader can reach any more. For the etcd
 * store's replica, whose own advance (expiry) never runs: without it the
 * replica freed nothing until 1,024 frees piled up on a shard. */
void mem_store_tend(store *s);

#endif
