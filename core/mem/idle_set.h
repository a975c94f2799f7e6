/*
 * idle_set.h: the IDLE events one expiry batch captured (mem/expiry.c), in
 * capture order, found by session id.
 *
 * mem_event_prelude asks, for every event captured while a batch delivers
 * (each removal's among them), whether the batch still holds a pending IDLE
 * of the same session. A scan of every IDLE made a batch of n IDLEs and n
 * removals cost n^2 id comparisons (4M for a full batch of 4,096, with an
 * event callback). So the events have an index beside them: open
 * addressing with linear probing, at most half full, each slot an event's
 * number plus one (0: empty). Nothing is taken out until the set is
 * cleared, so one session's events lie along its probe sequence in capture
 * order, and a lookup returns the earliest one still pending, as the scan
 * did.
 *
 * The hash is seeded (the store's seed, as every table is): session ids
 * can be chosen by callers (afsm_session_restore), and ids crafted to one
 * unseeded hash would all share one probe sequence.
 *
 * Not thread-safe: a set belongs to one batch, on one thread.
 */
#ifndef AFSM_MEM_IDLE_SET_H
#define AFSM_MEM_IDLE_SET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mem/mem_store.h"

typedef struct idle_set {
    mem_event *events; /* count of them, in capture order; room for capacity */
    size_t count;
    size_t capacity;
    uint32_t *slots;   /* the index */
    size_t slot_count; /* a power of two, 2 x capacity; 0 before the first reserve */
    uint64_t seed;
} idle_set;

void idle_set_init(idle_set *set, uint64_t seed);
void idle_set_free(idle_set *set);

/* Makes room for one more event (growing the events and, with them, the
 * index): the caller then captures it into set->events[set->count] and
 * calls idle_set_add. False when it cannot allocate; the set is unchanged
 * and still answers for every event it holds. */
bool idle_set_reserve(idle_set *set);

/* Adds the event captured at set->events[set->count] (reserved, its
 * ev.session_id set) and returns its number. */
uint32_t idle_set_add(idle_set *set);

/* The earliest event of the session with this id that is still pending,
 * or NULL. */
mem_event *idle_set_first_pending(const idle_set *set, const afsm_uuid *id);

/* Forgets every event, keeping the memory for the next batch. */
void idle_set_clear(idle_set *set);

#endif
