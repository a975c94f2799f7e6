/*
 * slab.h: session records in cache-line-aligned slots, one slab per shard.
 *
 * Why: a 192-byte record malloc'd by glibc takes a 208-byte chunk at a
 * 16-byte alignment, so it spans 4 cache lines half the time and costs
 * 256.5 B per session (issue 15, goals 1 and 8). Here a chunk of 64 slots
 * of exactly 192 bytes is one 12 KiB allocation aligned to 64 bytes: every
 * record is 3 whole lines, ~193 B under glibc and 192 B under jemalloc
 * (12 KiB is one of its size classes).
 *
 * A slot is taken by a create and given back only once no reader can hold
 * the record: by the epoch callback that frees the record (store.c), or
 * directly for a record never published. Freed slots are kept for the
 * shard's next creates, not returned to the allocator, until the store
 * closes: the slab's footprint is its shard's peak session count.
 *
 * Locking: `lock` is a leaf lock. It is taken alone around a pop, a push or
 * a chunk allocation, never while taking another lock, and nothing under it
 * calls into the epoch or the tables; so it may be taken with or without
 * shard locks held (a create takes it before its lock set, an epoch
 * callback under its shard's lock).
 *
 * Under AddressSanitizer a free slot is poisoned (but its link word), so a
 * use after free is reported as it would be with malloc. As with malloc's
 * quarantine, a freed slot is then also held back from reuse: the last
 * `hold` freed slots wait in a FIFO before they join the free list
 * (SLAB_ASAN_HOLD under ASan, none otherwise). Without it the next create
 * of the shard would take the slot at once and unpoison it, and a reader
 * that kept a record past its epoch section would read a live stranger's
 * record unreported.
 */
#ifndef AFSM_MEM_SLAB_H
#define AFSM_MEM_SLAB_H

#include <stddef.h>

#include "util/sync.h"

/* Whether AddressSanitizer instruments this build: gcc says so with
 * __SANITIZE_ADDRESS__, clang-14 (the fuzz build's compiler) only through
 * __has_feature. */
#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ASAN 1
#endif
#endif

#define SLAB_SLOT_BYTES  192
#define SLAB_SLOT_ALIGN  64
#define SLAB_CHUNK_SLOTS 64
/* Slots held back from reuse under AddressSanitizer (192 KiB per shard). */
#define SLAB_ASAN_HOLD 1024

typedef struct slab {
    sync_lock lock;
    void *free; /* free slots, linked through their first word */
    char *next; /* never-used slots of the newest chunk: [next, end) */
    char *end;
    void **chunks; /* every chunk, freed at close */
    size_t chunk_count;
    size_t chunk_capacity;
    /* Freed slots not yet reusable, oldest first, linked as the free list
     * is; at most `hold` of them (0: every freed slot is reusable at once). */
    void *held_oldest;
    void *held_newest;
    size_t held_count;
    size_t hold;
} slab;

void slab_init(slab *sl);
/* A zeroed slot, or NULL when a new chunk could not be allocated. */
void *slab_alloc(slab *sl);
/* Gives back a slot of this slab that no reader can reach any more. */
void slab_free(slab *sl, void *slot);
/* Frees every chunk: no slot may be in use any more (store close). */
void slab_destroy(slab *sl);

#endif
