/*
 * table.c: the open-addressing tables of table.h.
 *
 * Writers (one at a time per table: the owning shard's lock) probe, store
 * a key's pointer with release, write tombstones (or empty slots, where no
 * probe needs a tombstone), and replace the map when it runs out of empty
 * slots. Readers load the map and its slots with
 * acquire and never write. A replaced map goes to the epoch (its header
 * carries the entry, so a deferred free needs no allocation and cannot
 * fail); nothing is freed while a reader may still hold it.
 */
#include "mem/table.h"

#include "util/alloc.h"
#include "util/epoch.h"

#define MIN_SLOTS 16

table_hash_fn *table_hash_override;

_Static_assert(sizeof(table_map) <= 64, "the map header fits the line before its slots");

/* A string key of up to 16 bytes as two zero-padded words, the uuid keys'
 * mixes rather than a byte loop: a write to a session whose record holds
 * its user id (mem/index.h) looks the id up here. Keys hold no NUL, so the
 * padding cannot make two ids equal. */
static unsigned long hash_padded16(const char padded[16], size_t len, unsigned long seed)
{
    if (table_hash_override != NULL)
        return table_hash_override(padded, len, seed);
    uint64_t w[2];
    memcpy(w, padded, 16);
    return table_mix(w[1] ^ table_mix(w[0] ^ seed));
}

static unsigned long hash_string(const table_string_key *k, unsigned long seed)
{
    if (k->len <= 16) {
        char padded[16] = {0};
        memcpy(padded, k->bytes, k->len);
        return hash_padded16(padded, k->len, seed);
    }
    if (table_hash_override != NULL)
        return table_hash_override(k->bytes, k->len, seed);
    uint64_t h = UINT64_C(0xcbf29ce484222325) ^ seed;
    for (uint16_t i = 0; i < k->len; i++)
        h = (h ^ (unsigned char)k->bytes[i]) * UINT64_C(0x100000001b3);
    return table_mix(h);
}

unsigned long table_hash_padded16(const table *t, const char padded[16], size_t len)
{
    return hash_padded16(padded, len, t->seed);
}

unsigned long table_hash(const table *t, const void *key)
{
    return t->kind == TABLE_KEY_UUID ? table_hash_uuid(key, t->seed) : hash_string(key, t->seed);
}

static bool equal(const table *t, const void *stored, const void *key)
{
    if (t->kind == TABLE_KEY_UUID)
        return memcmp(stored, key, 16) == 0;
    const table_string_key *x = stored, *y = key;
    return x->len == y->len && memcmp(x->bytes, y->bytes, x->len) == 0;
}

/* The slots start on the line after the header, so a probe's first slots
 * share a cache line however the map was placed. */
static table_map *map_new(uint64_t slots)
{
    if (slots > (SIZE_MAX - 64) / sizeof(void *))
        return NULL;
    size_t bytes = 64 + (size_t)slots * sizeof(void *);
    char *block = mem_aligned_alloc(64, bytes);
    if (block == NULL)
        return NULL;
    table_map *m = (table_map *)(block + 64 - sizeof(table_map));
    m->mask = slots - 1;
    for (uint64_t i = 0; i < slots; i++)
        atomic_init(&m->slots[i], NULL);
    return m;
}

static void *map_block(table_map *m)
{
    return (char *)m - (64 - sizeof(table_map));
}

static void map_destroy(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    mem_free(map_block((table_map *)((char *)entry - offsetof(table_map, entry))));
}

static table_map *current(const table *t)
{
    /* Only the writer calls this, and the writer published the map. */
    return atomic_load_explicit(&((table *)t)->map, memory_order_relaxed);
}

/* The slot holding key, or (found false) the slot an insert of it should
 * take: the first tombstone on its probe sequence, else the empty slot
 * that ends it. Writer only. */
static uint64_t probe(const table *t, const table_map *m, const void *key, unsigned long hash, bool *found)
{
    uint64_t reuse = UINT64_MAX;
    for (uint64_t i = hash & m->mask;; i = (i + 1) & m->mask) {
        const void *k = atomic_load_explicit((_Atomic(const void *) *)&m->slots[i], memory_order_relaxed);
        if (k == NULL) {
            *found = false;
            return reuse != UINT64_MAX ? reuse : i;
        }
        if (k == TABLE_TOMBSTONE) {
            if (reuse == UINT64_MAX)
                reuse = i;
        } else if (table_slot_tag_matches(k, hash) && equal(t, table_slot_key(k), key)) {
            *found = true;
            return i;
        }
    }
}

/* How far ahead (in slots) a rebuild fetches the record of a key it will
 * hash. The slot keeps only 8 bits of the hash, so every key costs a miss
 * on its record, scattered over the heap; fetched ahead, the misses
 * overlap. A rebuild holds the shard's lock throughout, and a thread
 * creating on an overlapping shard set soon waits on it (issue 15, goal
 * 5). Doubling a 256K-slot map (a 1M-session engine's shard) with its
 * records out of cache, bench/table_grow_bench: 8.0-14.1 ms -> 3.0-3.2 ms;
 * a 1M-slot map 45.8-51.1 -> 20.6-21.4 ms (3 runs of each, alternating).
 * Fewer slots ahead overlapped fewer misses; 64 did no better than 32. */
#define REBUILD_AHEAD 32

/* Replaces the map with one of `slots` slots holding the same keys and no
 * tombstones. False (nothing changed) when it cannot allocate. */
static bool rebuild(table *t, uint64_t slots)
{
    table_map *old = current(t), *fresh = map_new(slots);
    if (fresh == NULL)
        return false;
    uint64_t keys = 0;
    for (uint64_t i = 0; i <= old->mask; i++) {
        if (i + REBUILD_AHEAD <= old->mask) {
            const void *ahead = atomic_load_explicit(&old->slots[i + REBUILD_AHEAD], memory_order_relaxed);
            if (ahead != NULL && ahead != TABLE_TOMBSTONE)
                __builtin_prefetch(table_slot_key(ahead));
        }
        const void *k = atomic_load_explicit(&old->slots[i], memory_order_relaxed);
        if (k == NULL || k == TABLE_TOMBSTONE)
            continue;
        /* Placed and tagged by one hash (the tag is not copied): they agree
         * even if the hash changed since the insert (tests switch it). */
        const void *key = table_slot_key(k);
        unsigned long hash = table_hash(t, key);
        uint64_t j = hash & fresh->mask;
        while (atomic_load_explicit(&fresh->slots[j], memory_order_relaxed) != NULL)
            j = (j + 1) & fresh->mask;
        atomic_store_explicit(&fresh->slots[j], table_slot_of(key, hash), memory_order_relaxed);
        keys++;
    }
    t->used = keys;
    /* The release orders the filled slots before the pointer to them. */
    atomic_store_explicit(&t->map, fresh, memory_order_release);
    epoch_defer(t->defer, &old->entry, map_destroy);
    return true;
}

bool table_init(table *t, table_key_kind kind, uint64_t capacity, uint64_t seed, ck_epoch_record_t *defer)
{
    uint64_t slots = MIN_SLOTS;
    while (slots < capacity && slots < (UINT64_C(1) << 62))
        slots <<= 1;
    table_map *m = map_new(slots);
    if (m == NULL)
        return false;
    t->defer = defer;
    t->seed = seed;
    t->min_slots = slots;
    t->kind = kind;
    atomic_init(&t->count, 0);
    t->used = 0;
    atomic_init(&t->map, m);
    return true;
}

void table_destroy(table *t)
{
    mem_free(map_block(current(t)));
    atomic_store_explicit(&t->map, NULL, memory_order_relaxed);
}

const void *table_get(table *t, const void *key)
{
    if (t->kind == TABLE_KEY_UUID)
        return table_get_uuid(t, key);
    return table_get_hashed(t, key, hash_string(key, t->seed));
}

const void *table_get_hashed(table *t, const void *key, unsigned long hash)
{
    const table_map *m = atomic_load_explicit(&t->map, memory_order_acquire);
    for (uint64_t i = hash & m->mask;; i = (i + 1) & m->mask) {
        const void *k = atomic_load_explicit((_Atomic(const void *) *)&m->slots[i], memory_order_acquire);
        if (k == NULL)
            return NULL;
        if (table_slot_tag_matches(k, hash) && k != TABLE_TOMBSTONE && equal(t, table_slot_key(k), key))
            return table_slot_key(k);
    }
}

table_result table_insert(table *t, const void *key)
{
    if (((uintptr_t)key & TABLE_TAG_MASK) != 0)
        return TABLE_NOMEM;
    unsigned long hash = table_hash(t, key);
    table_map *m = current(t);
    bool found;
    uint64_t at = probe(t, m, key, hash, &found);
    if (found)
        return TABLE_EXISTS;
    bool fills_empty = atomic_load_explicit(&m->slots[at], memory_order_relaxed) == NULL;
    uint64_t keys = atomic_load_explicit(&t->count, memory_order_relaxed);
    uint64_t slots = m->mask + 1;
    /* Keys past half the map: double it. Keys and tombstones past three
     * quarters: clean up at the same size. The first keeps probes short;
     * the second keeps a quarter of the slots empty, so every probe ends,
     * and lets a table under churn (as many removals as inserts) clean up
     * every quarter map of inserts instead of doubling once its tombstones
     * reach half: its memory stays what its keys need. */
    if ((keys + 1) * 2 > slots || (fills_empty && (t->used + 1) * 4 > slots * 3)) {
        if (!rebuild(t, (keys + 1) * 2 > slots ? slots << 1 : slots))
            return TABLE_NOMEM;
        m = current(t);
        at = probe(t, m, key, hash, &found);
        fills_empty = true;
    }
    t->used += fills_empty;
    atomic_store_explicit(&t->count, atomic_load_explicit(&t->count, memory_order_relaxed) + 1, memory_order_relaxed);
    atomic_store_explicit(&m->slots[at], table_slot_of(key, hash), memory_order_release);
    return TABLE_OK;
}

/* Empties slot i, whose next slot is empty, and the tombstones just
 * before it. Every present key's probe sequence runs from its home slot to
 * its own without an empty slot, so none runs through i (it would go on to
 * the empty slot after it), nor through a tombstone right before i; each
 * store keeps that so, whatever order a reader sees them in. This keeps a
 * tombstone from ever directly preceding an empty slot: a table emptied of
 * its keys holds no tombstones, and one churning at a constant size fills
 * with them about three times slower. Each fill to three quarters costs a
 * same-size rebuild, which reads every key's record under the shard's lock
 * (~5 ms for a shard of the bench's 1M sessions, while the other creating
 * thread waits on that lock: issue 15, goal 5). */
static void empty_from(table *t, table_map *m, uint64_t i)
{
    do {
        atomic_store_explicit(&m->slots[i], NULL, memory_order_relaxed);
        t->used--;
        i = (i - 1) & m->mask;
    } while (atomic_load_explicit(&m->slots[i], memory_order_relaxed) == TABLE_TOMBSTONE);
}

bool table_remove(table *t, const void *key)
{
    return table_remove_hashed(t, key, table_hash(t, key));
}

bool table_remove_hashed(table *t, const void *key, unsigned long hash)
{
    table_map *m = current(t);
    key = table_slot_of(key, hash);
    for (uint64_t i = hash & m->mask;; i = (i + 1) & m->mask) {
        const void *k = atomic_load_explicit(&m->slots[i], memory_order_relaxed);
        if (k == NULL)
            return false;
        if (k != key)
            continue;
        /* A reader that loads the tombstone (or the empty slot below)
         * goes on probing (or stops: the key is gone); one that loaded the
         * key just before finds a record its owner marks removed. */
        if (atomic_load_explicit(&m->slots[(i + 1) & m->mask], memory_order_relaxed) == NULL)
            empty_from(t, m, i);
        else
            atomic_store_explicit(&m->slots[i], TABLE_TOMBSTONE, memory_order_relaxed);
        atomic_store_explicit(&t->count, atomic_load_explicit(&t->count, memory_order_relaxed) - 1,
                              memory_order_relaxed);
        return true;
    }
}

bool table_maintain(table *t)
{
    table_map *m = current(t);
    uint64_t keys = atomic_load_explicit(&t->count, memory_order_relaxed);
    uint64_t tombstones = t->used - keys, slots = m->mask + 1;
    bool few_tombstones = tombstones < 64 || tombstones < keys;
    /* Drained to a sixteenth: removals often leave empty slots rather
     * than tombstones (table_remove), so tombstones alone no longer tell a
     * drained map. Neither, the case of nearly every removal: nothing to
     * do, decided before the size loop below. */
    if (few_tombstones && keys * 16 > slots)
        return true;
    /* Room for the keys at a load of 1/4 or less, as growth leaves them. */
    uint64_t fit = t->min_slots;
    while (fit < 4 * keys)
        fit <<= 1;
    if (fit < slots)
        return rebuild(t, fit);
    /* Tombstones and keys fill more than 1/4: cleaning is worth it now. */
    if (few_tombstones || t->used * 4 <= slots)
        return true;
    return rebuild(t, slots);
}

size_t table_count(table *t)
{
    return (size_t)atomic_load_explicit(&t->count, memory_order_relaxed);
}

const void *table_next(table *t, table_iterator *it)
{
    if (it->map == NULL)
        it->map = atomic_load_explicit(&t->map, memory_order_acquire);
    const table_map *m = it->map;
    while (it->next <= m->mask) {
        const void *k = atomic_load_explicit((_Atomic(const void *) *)&m->slots[it->next++], memory_order_acquire);
        if (k != NULL && k != TABLE_TOMBSTONE)
            return table_slot_key(k);
    }
    return NULL;
}

void table_each(table *t, void (*fn)(const void *key))
{
    table_iterator it = TABLE_ITERATOR_INIT;
    const void *key;
    while ((key = table_next(t, &it)) != NULL)
        fn(key);
}
