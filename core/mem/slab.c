/*
 * slab.c: the per-shard record slab (see slab.h for why, and its lock).
 */
#include "mem/slab.h"

#include <string.h>

#include "util/alloc.h"

#if defined(SLAB_ASAN)
#include <sanitizer/asan_interface.h>
#define SLAB_POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define SLAB_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SLAB_POISON(p, n)   ((void)(p), (void)(n))
#define SLAB_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define CHUNK_BYTES (SLAB_SLOT_BYTES * SLAB_CHUNK_SLOTS)
_Static_assert(SLAB_SLOT_BYTES % SLAB_SLOT_ALIGN == 0, "slots must stay aligned one after the other");

void slab_init(slab *sl)
{
    memset(sl, 0, sizeof(*sl));
    sync_lock_init(&sl->lock);
#if defined(SLAB_ASAN)
    sl->hold = SLAB_ASAN_HOLD;
#endif
}

/* Lock held. A new chunk becomes the bump region; false on ENOMEM (the slab
 * unchanged). Unhooked: slab_alloc was the allocation point. */
static int grow(slab *sl)
{
    if (sl->chunk_count == sl->chunk_capacity) {
        size_t capacity = sl->chunk_capacity != 0 ? 2 * sl->chunk_capacity : 16;
        void **bigger = mem_alloc_unhooked(capacity * sizeof(*bigger));
        if (bigger == NULL)
            return 0;
        if (sl->chunk_count != 0)
            memcpy(bigger, sl->chunks, sl->chunk_count * sizeof(*bigger));
        mem_free(sl->chunks);
        sl->chunks = bigger;
        sl->chunk_capacity = capacity;
    }
    char *chunk = mem_aligned_alloc_unhooked(SLAB_SLOT_ALIGN, CHUNK_BYTES);
    if (chunk == NULL)
        return 0;
    SLAB_POISON(chunk, CHUNK_BYTES);
    sl->chunks[sl->chunk_count++] = chunk;
    sl->next = chunk;
    sl->end = chunk + CHUNK_BYTES;
    return 1;
}

void *slab_alloc(slab *sl)
{
    /* One allocation point per record, as a malloc'd record was: the
     * engine's allocation-failure tests count on it (util/alloc.h). */
    if (mem_alloc_point_fails())
        return NULL;
    void *slot = NULL;
    sync_lock_acquire(&sl->lock);
    if (sl->free != NULL) {
        slot = sl->free;
        SLAB_UNPOISON(slot, SLAB_SLOT_BYTES);
        memcpy(&sl->free, slot, sizeof(void *));
    } else if (sl->next != sl->end || grow(sl)) {
        slot = sl->next;
        sl->next += SLAB_SLOT_BYTES;
        SLAB_UNPOISON(slot, SLAB_SLOT_BYTES);
    }
    sync_lock_release(&sl->lock);
    if (slot != NULL)
        memset(slot, 0, SLAB_SLOT_BYTES);
    return slot;
}

/* Lock held. Pushes a slot on the free list. */
static void push_free(slab *sl, void *slot)
{
    memcpy(slot, &sl->free, sizeof(void *));
    sl->free = slot;
}

void slab_free(slab *sl, void *slot)
{
    sync_lock_acquire(&sl->lock);
    SLAB_POISON((char *)slot + sizeof(void *), SLAB_SLOT_BYTES - sizeof(void *));
    if (sl->hold == 0) {
        push_free(sl, slot);
    } else {
        /* Newest at the tail; past `hold`, the oldest becomes reusable. */
        void *none = NULL;
        memcpy(slot, &none, sizeof(void *));
        if (sl->held_newest != NULL)
            memcpy(sl->held_newest, &slot, sizeof(void *));
        else
            sl->held_oldest = slot;
        sl->held_newest = slot;
        if (++sl->held_count > sl->hold) {
            void *oldest = sl->held_oldest;
            memcpy(&sl->held_oldest, oldest, sizeof(void *));
            sl->held_count--;
            push_free(sl, oldest);
        }
    }
    sync_lock_release(&sl->lock);
}

void slab_destroy(slab *sl)
{
    for (size_t i = 0; i < sl->chunk_count; i++) {
        SLAB_UNPOISON(sl->chunks[i], CHUNK_BYTES);
        mem_free(sl->chunks[i]);
    }
    mem_free(sl->chunks);
    memset(sl, 0, sizeof(*sl));
}
