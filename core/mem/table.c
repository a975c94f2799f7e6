/*
 * table.c: ck_ht behind table.h, with the allocator hooks that route maps
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

static void hash_override_adapter(ck_ht_hash_t *out, const void *key, size_t key_len, uint64_t seed)
{
    table_hash_override(out, key, key_len, seed);
}

bool table_init(table *t, uint64_t capacity, uint64_t seed, ck_epoch_record_t *defer)
{
    t->defer = defer;
    t->gc_cursor = 0;
    t->removed_since_gc = 0;
    if (capacity < 16)
        capacity = 16;
    ck_ht_hash_cb_t *hash = table_hash_override != NULL ? hash_override_adapter : NULL;
    return ck_ht_init(&t->ht, CK_HT_MODE_BYTESTRING | CK_HT_WORKLOAD_DELETE, hash, &map_allocator, capacity, seed);
}

void table_destroy(table *t)
{
    writer_defer = NULL;
    ck_ht_destroy(&t->ht);
}

void *table_get(table *t, const void *key, uint16_t key_len)
{
    ck_ht_hash_t h;
    ck_ht_entry_t entry;
    ck_ht_hash(&h, &t->ht, key, key_len);
    ck_ht_entry_key_set(&entry, key, key_len);
    if (!ck_ht_get_spmc(&t->ht, h, &entry))
        return NULL;
    void *value = ck_ht_entry_value(&entry);
    /* Pairs with the publish in table_insert: the record's fields written
     * before the insert are visible to this reader. */
    sync_observe(value);
    return value;
}

table_result table_insert(table *t, const void *key, uint16_t key_len, void *value)
{
    ck_ht_hash_t h;
    ck_ht_entry_t entry;
    ck_ht_hash(&h, &t->ht, key, key_len);
    /* The fence: ck_ht 0.7.1's put can duplicate a key when it reuses a
     * tombstone, so never let put decide whether the key exists. */
    ck_ht_entry_key_set(&entry, key, key_len);
    if (ck_ht_get_spmc(&t->ht, h, &entry))
        return TABLE_EXISTS;
    ck_ht_entry_set(&entry, h, key, key_len, value);
    sync_publish(value);
    writer_defer = t->defer;
    bool ok = ck_ht_put_spmc(&t->ht, h, &entry);
    writer_defer = NULL;
    /* The key is absent (checked above), so a failed put is a failed grow. */
    return ok ? TABLE_OK : TABLE_NOMEM;
}

bool table_remove(table *t, const void *key, uint16_t key_len)
{
    ck_ht_hash_t h;
    ck_ht_entry_t entry;
    ck_ht_hash(&h, &t->ht, key, key_len);
    ck_ht_entry_key_set(&entry, key, key_len);
    writer_defer = t->defer;
    bool removed = ck_ht_remove_spmc(&t->ht, h, &entry);
    writer_defer = NULL;
    t->removed_since_gc += removed;
    return removed;
}

void table_gc(table *t, unsigned long budget)
{
    if (t->removed_since_gc == 0)
        return;
    /* A few entries per tombstone left is enough to keep pace with churn. */
    if (budget > 4 * t->removed_since_gc)
        budget = (unsigned long)(4 * t->removed_since_gc);
    t->removed_since_gc = 0;
    writer_defer = t->defer;
    /* ck_ht_gc visits slots from the seed on and stops after `budget`
     * entries; at the table's load factor (<= 1/2) that is about twice as
     * many slots. (A budget of 0 would mean a full pass with an allocation.) */
    (void)ck_ht_gc(&t->ht, budget, (unsigned long)t->gc_cursor);
    t->gc_cursor += 2 * (uint64_t)budget;
    writer_defer = NULL;
}

size_t table_count(table *t)
{
    return (size_t)ck_ht_count(&t->ht);
}
