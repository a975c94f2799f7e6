/*
 * table.c: ck_hs behind table.h, with the allocator hooks that route maps
 * readers may still hold through the epoch.
 *
 * ck_malloc's hooks carry no context pointer, so the record to defer on is
 * handed over in a thread-local set by each writer call for its duration.
 * Every map carries a header with its epoch entry, so a deferred free never
 * needs an allocation of its own (and so cannot fail).
 */
#include "mem/table.h"

#include <assert.h>
#include <string.h>

#include "util/alloc.h"
#include "util/epoch.h"
#include "util/sync.h"

typedef struct map_header {
    ck_epoch_entry_t entry;
    size_t size_bytes;
} __attribute__((aligned(16))) map_header;

table_hash_fn *table_hash_override;

/* The deferral record of the table whose writer call is running here. */
static _Thread_local ck_epoch_record_t *writer_defer;

static void *map_malloc(size_t size_bytes)
{
    map_header *h = mem_alloc(sizeof(*h) + size_bytes);
    if (h == NULL)
        return NULL;
    h->size_bytes = size_bytes;
    return h + 1;
}

static void map_destroy(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    mem_free(entry);
}

static void map_free(void *ptr, size_t size_bytes, bool defer)
{
    (void)size_bytes;
    if (ptr == NULL)
        return;
    map_header *h = (map_header *)ptr - 1;
    if (defer) {
        assert(writer_defer != NULL);
        epoch_defer(writer_defer, &h->entry, map_destroy);
    } else {
        mem_free(h);
    }
}

static void *map_realloc(void *ptr, size_t old_size, size_t new_size, bool defer)
{
    void *fresh = map_malloc(new_size);
    if (fresh == NULL)
        return NULL;
    memcpy(fresh, ptr, old_size < new_size ? old_size : new_size);
    map_free(ptr, old_size, defer);
    return fresh;
}

static struct ck_malloc map_allocator = {
    .malloc = map_malloc,
    .realloc = map_realloc,
    .free = map_free,
};

static unsigned long hash_uuid(const void *key, unsigned long seed)
{
    return table_hash_uuid(key, seed);
}

static unsigned long hash_string(const void *key, unsigned long seed)
{
    const table_string_key *k = key;
    if (table_hash_override != NULL)
        return table_hash_override(k->bytes, k->len, seed);
    uint64_t h = UINT64_C(0xcbf29ce484222325) ^ seed;
    for (uint16_t i = 0; i < k->len; i++)
        h = (h ^ (unsigned char)k->bytes[i]) * UINT64_C(0x100000001b3);
    return table_mix(h);
}

/* ck_hs calls these with a stored key first: a reader comparing it sees
 * what the writer published (the observe is for TSan, see sync.h). */
static bool equal_uuid(const void *a, const void *b)
{
    sync_observe(a);
    return memcmp(a, b, 16) == 0;
}

static bool equal_string(const void *a, const void *b)
{
    sync_observe(a);
    const table_string_key *x = a, *y = b;
    return x->len == y->len && memcmp(x->bytes, y->bytes, x->len) == 0;
}

bool table_init(table *t, table_key_kind kind, uint64_t capacity, uint64_t seed, ck_epoch_record_t *defer)
{
    t->defer = defer;
    t->removed = 0;
    if (capacity < 16)
        capacity = 16;
    int uuid = kind == TABLE_KEY_UUID;
    return ck_hs_init(&t->hs, CK_HS_MODE_SPMC | CK_HS_MODE_OBJECT | CK_HS_MODE_DELETE, uuid ? hash_uuid : hash_string,
                      uuid ? equal_uuid : equal_string, &map_allocator, (unsigned long)capacity, (unsigned long)seed);
}

void table_destroy(table *t)
{
    writer_defer = NULL;
    ck_hs_destroy(&t->hs);
}

const void *table_get(table *t, const void *key)
{
    const void *found = ck_hs_get(&t->hs, CK_HS_HASH(&t->hs, t->hs.hf, key), key);
    /* Pairs with the publish in table_insert: what the writer stored in the
     * record before inserting is visible here. */
    if (found != NULL)
        sync_observe(found);
    return found;
}

table_result table_insert(table *t, const void *key)
{
    unsigned long h = CK_HS_HASH(&t->hs, t->hs.hf, key);
    /* The record's fields before the slot's pointer: CK 0.7.1's put has no
     * store fence of its own, and a lock-free reader compares the key (the
     * record's first field) as soon as it loads the pointer. Readers rely on
     * the address dependency from that load, which every CPU but Alpha
     * orders. */
    sync_fence_release();
    sync_publish(key);
    writer_defer = t->defer;
    /* ck_hs_put searches the key's whole probe sequence (its bound), past
     * tombstones, before it takes the first free slot, so it can never add
     * a key twice: the tombstone-reuse duplicate of ck_ht 0.7.1 does not
     * apply (test_table replays it). One probe instead of a get and a put. */
    bool ok = ck_hs_put(&t->hs, h, key);
    writer_defer = NULL;
    if (ok)
        return TABLE_OK;
    /* False is "present" or "could not grow": tell them apart, rarely. */
    return ck_hs_get(&t->hs, h, key) != NULL ? TABLE_EXISTS : TABLE_NOMEM;
}

bool table_remove(table *t, const void *key)
{
    /* No writer_defer: ck_hs_remove only writes a tombstone, it never
     * resizes (so never frees a map), and the thread-local costs a
     * __tls_get_addr call per access in a shared library. */
    void *removed = ck_hs_remove(&t->hs, CK_HS_HASH(&t->hs, t->hs.hf, key), key);
    t->removed += removed != NULL;
    return removed != NULL;
}

bool table_maintain(table *t)
{
    if (t->removed < 64 || t->removed < ck_hs_count(&t->hs))
        return true;
    writer_defer = t->defer;
    bool ok = ck_hs_rebuild(&t->hs);
    writer_defer = NULL;
    if (ok)
        t->removed = 0;
    return ok;
}

size_t table_count(table *t)
{
    return (size_t)ck_hs_count(&t->hs);
}

const void *table_next(table *t, table_iterator *it)
{
    void *key;
    if (!ck_hs_next_spmc(&t->hs, it, &key))
        return NULL;
    sync_observe(key); /* as in table_get */
    return key;
}

void table_each(table *t, void (*fn)(const void *key))
{
    ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
    void *key;
    while (ck_hs_next(&t->hs, &it, &key))
        fn(key);
}
