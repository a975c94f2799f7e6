/*
 * mem_inspect.h: what tests read of the memory store's insides to check
 * that nothing leaked (slab slots handed out and not given back). Only with
 * no other thread in the engine: it walks free lists without their locks.
 */
#ifndef AFSM_TESTS_MEM_INSPECT_H
#define AFSM_TESTS_MEM_INSPECT_H

#include <stddef.h>
#include <string.h>

#include "engine.h"
#include "mem/mem_store.h"
#include "mem/slab.h"

/* Slots of one slab handed out and not given back: every chunk's slots,
 * minus the free list, minus those held, minus the untouched rest of the
 * newest chunk. */
static inline size_t slab_in_use(slab *sl)
{
    size_t free_count = 0;
    for (void *p = sl->free; p != NULL; memcpy(&p, p, sizeof(p)))
        free_count++;
    size_t untouched = (size_t)(sl->end - sl->next) / SLAB_SLOT_BYTES;
    return sl->chunk_count * SLAB_CHUNK_SLOTS - free_count - sl->held_count - untouched;
}

/* The same over every shard's record slab. */
static inline size_t engine_slots_in_use(afsm_engine *engine)
{
    mem_store *ms = (mem_store *)engine->st;
    size_t n = 0;
    for (unsigned i = 0; i <= ms->shard_mask; i++)
        n += slab_in_use(&ms->shards[i].records);
    return n;
}

#endif
