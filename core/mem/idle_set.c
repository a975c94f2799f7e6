/*
 * idle_set.c: the IDLE events of an expiry batch, indexed by session id
 * (see idle_set.h).
 */
#include "mem/idle_set.h"

#include <string.h>

#include "mem/table.h"
#include "util/alloc.h"

/* The first capacity: a batch that has IDLEs at all usually has many. */
#define FIRST_CAPACITY 256

void idle_set_init(idle_set *set, uint64_t seed)
{
    memset(set, 0, sizeof(*set));
    set->seed = seed;
}

void idle_set_free(idle_set *set)
{
    mem_free(set->events);
    mem_free(set->slots);
    set->events = NULL;
    set->slots = NULL;
    set->count = set->capacity = set->slot_count = 0;
}

static size_t home_slot(const idle_set *set, const afsm_uuid *id)
{
    return table_hash_uuid(id, set->seed) & (set->slot_count - 1);
}

static void index_event(idle_set *set, uint32_t event)
{
    size_t mask = set->slot_count - 1;
    size_t at = home_slot(set, &set->events[event].ev.session_id);
    while (set->slots[at] != 0)
        at = (at + 1) & mask;
    set->slots[at] = event + 1;
}

bool idle_set_reserve(idle_set *set)
{
    if (set->count < set->capacity)
        return true;
    size_t capacity = set->capacity != 0 ? 2 * set->capacity : FIRST_CAPACITY;
    mem_event *events = mem_alloc(capacity * sizeof(*events));
    if (events == NULL)
        return false;
    uint32_t *slots = mem_calloc(2 * capacity, sizeof(*slots));
    if (slots == NULL) {
        mem_free(events);
        return false;
    }
    if (set->count != 0)
        memcpy(events, set->events, set->count * sizeof(*events));
    mem_free(set->events);
    mem_free(set->slots);
    set->events = events;
    set->capacity = capacity;
    set->slots = slots;
    set->slot_count = 2 * capacity;
    /* In capture order, so each session's events keep theirs along its
     * probe sequence. */
    for (uint32_t i = 0; i < set->count; i++)
        index_event(set, i);
    return true;
}

uint32_t idle_set_add(idle_set *set)
{
    uint32_t event = (uint32_t)set->count++;
    index_event(set, event);
    return event;
}

mem_event *idle_set_first_pending(const idle_set *set, const afsm_uuid *id)
{
    if (set->count == 0)
        return NULL;
    size_t mask = set->slot_count - 1;
    uint32_t slot;
    for (size_t at = home_slot(set, id); (slot = set->slots[at]) != 0; at = (at + 1) & mask) {
        mem_event *ev = &set->events[slot - 1];
        if (ev->pending && memcmp(&ev->ev.session_id, id, sizeof(*id)) == 0)
            return ev;
    }
    return NULL;
}

void idle_set_clear(idle_set *set)
{
    if (set->count != 0)
        memset(set->slots, 0, set->slot_count * sizeof(*set->slots));
    set->count = 0;
}
