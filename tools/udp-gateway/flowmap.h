/*
 * flowmap.h: one worker thread's map from connection id to its flow: the
 * session it belongs to and the pinned handle that updates it.
 *
 * This is the gateway's own forwarding state, not the engine's: every
 * gateway already finds a packet's connection somewhere (a QUIC
 * connection-id table, a 5-tuple flow table) to forward it, and a data
 * plane keeps the afsm handle in that entry. Its cost per packet is one
 * multiply to hash the id and a linear probe over 40-byte entries: about
 * one cache miss once the table outgrows the caches (100K flows in one
 * worker: 262,144 slots, 10 MB), paid by the bare loop too (the gateway's "off" mode keeps
 * the map), so the side-by-side figure isolates what afsm adds.
 *
 * Owned by one thread: no locks, no atomics. Open addressing, linear
 * probing, load kept at or below one half, deletion by backward shift (no
 * tombstones, so probes stay short under churn).
 */
#ifndef UDP_GATEWAY_FLOWMAP_H
#define UDP_GATEWAY_FLOWMAP_H

#include <stddef.h>
#include <stdint.h>

#include "afsm.h"

typedef struct flow {
    afsm_uuid connection_id; /* all zero: an empty slot */
    afsm_uuid session_id;
    afsm_handle *handle; /* NULL in the "off" mode */
} flow;

typedef struct flowmap {
    flow *slots;
    size_t mask; /* capacity - 1; capacity is a power of two */
    size_t count;
} flowmap;

/* At least capacity_hint flows before the first growth. 0 or -1 (ENOMEM). */
int flowmap_init(flowmap *m, size_t capacity_hint);
void flowmap_free(flowmap *m);

/* The flow of id, or NULL. */
flow *flowmap_find(flowmap *m, const afsm_uuid *id);

/* A new flow for id (not present; not the nil id), zeroed apart from its
 * id: valid until the next insert or remove. NULL when growing fails. */
flow *flowmap_insert(flowmap *m, const afsm_uuid *id);

/* Removes f (a pointer flowmap_find or flowmap_insert returned). */
void flowmap_remove(flowmap *m, flow *f);

#endif
