/*
 * table.h: the engine's hash tables: one writer at a time (the owning
 * shard's lock), lock-free readers inside an epoch section.
 *
 * A table stores pointers to keys that live inside engine records: a
 * session's id or connection id (afsm_uuid), a user entry's id
 * (table_string_key). Finding the key finds the record (container_of).
 * Keys are compared in full, so hash collisions are harmless.
 *
 * The map is open addressing with linear probing over one array of
 * pointer slots: NULL is empty, TABLE_TOMBSTONE a removed key (a removed
 * key whose next slot is empty leaves an empty slot instead, as do the
 * tombstones just before it: no probe sequence runs through them). A slot also
 * carries 8 bits of its key's hash (its tag) in pointer bits 48-55, which
 * user-space addresses on 64-bit Linux leave zero (unless a mapping asks
 * for an address above 2^47; table_insert refuses one), so a probe passing
 * another key's slot skips it without reading that key's record: at the
 * load the maps keep (up to 1/2) a hit passes ~0.5 other keys on average,
 * and each read was a cache miss on a random record (issue 15, goal 1).
 * Bits 56-63 are left alone (arm64's top-byte tags). Keys never
 * fill more than half the map (it doubles), and keys and tombstones
 * together (`used`) never more than three quarters (it is rebuilt without
 * its tombstones), so every probe sequence ends at an empty slot. A key never moves within a map; growth
 * and tombstone clean-up build a new map, publish it (release) and free
 * the old one through the epoch, never while a reader may hold it. A
 * reader that loaded the old map sees it as it was when replaced.
 *
 * Why not ck_hs (which this replaced; issue 15): callgrind counted
 * ck_hs_get at 179 of a Get's 446 instructions, through its generation
 * and probe-bound reads, an out-of-line probe loop and a comparison
 * through a function pointer; this probe is inlined at the call site and
 * its slot can be prefetched before the probe (table_prefetch), so a
 * batch's slot misses overlap. Its memory is the same 8-byte slot per
 * entry at a load of 1/16 to 1/2 once grown (clean-up shrinks a map
 * drained to a sixteenth, or to an eighth once removals have left as many
 * tombstones as keys; a presized one may be lighter), without ck_hs's
 * probe-bound array.
 *
 * Ordering: a writer fills the record, then stores its key's pointer with
 * release; a reader loads slots with acquire, so what the writer stored
 * before inserting is visible once the key is found (C11 atomics, which
 * ThreadSanitizer models).
 */
#ifndef AFSM_MEM_TABLE_H
#define AFSM_MEM_TABLE_H

#include <ck_epoch.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum table_key_kind { TABLE_KEY_UUID, TABLE_KEY_STRING } table_key_kind;

/* A string key as records embed it. */
typedef struct table_string_key {
    uint16_t len;
    char bytes[];
} table_string_key;

/* A removed key's slot: probes go on past it; an insert may reuse it.
 * Records are at least 2-byte aligned, so no key has this address. */
#define TABLE_TOMBSTONE ((const void *)1)

_Static_assert(sizeof(void *) == 8, "slots keep a hash tag in pointer bits 48-55");
#define TABLE_TAG_SHIFT 48
#define TABLE_TAG_MASK  ((uintptr_t)0xff << TABLE_TAG_SHIFT)

/* The slot a key stored under this hash occupies: its address and its tag
 * (the hash's top 8 bits; the slot index uses its low bits). */
static inline const void *table_slot_of(const void *key, unsigned long hash)
{
    return (const void *)((uintptr_t)key | (uintptr_t)(hash >> 56) << TABLE_TAG_SHIFT);
}

/* The key a non-empty, non-tombstone slot stores. */
static inline const void *table_slot_key(const void *slot)
{
    return (const void *)((uintptr_t)slot & ~TABLE_TAG_MASK);
}

/* True when the slot may hold a key of this hash: its tag matches. */
static inline bool table_slot_tag_matches(const void *slot, unsigned long hash)
{
    return (((uintptr_t)slot ^ (uintptr_t)(hash >> 56) << TABLE_TAG_SHIFT) & TABLE_TAG_MASK) == 0;
}

typedef struct table_map {
    ck_epoch_entry_t entry; /* its deferred free once replaced */
    uint64_t mask;          /* slots - 1, slots a power of two */
    _Atomic(const void *) slots[];
} table_map;

typedef struct table {
    _Atomic(table_map *) map;
    ck_epoch_record_t *defer; /* the owning shard's deferral record */
    uint64_t seed;
    uint64_t min_slots; /* the presized map's: clean-up never shrinks below it */
    table_key_kind kind;
    /* Written by every insert and removal: on a line of their own, apart
     * from the fields every lookup reads (as the map's header is, where
     * `used` once sat beside `mask`), so a writer on one core does not
     * take that line from readers on the others. */
    _Atomic uint64_t count __attribute__((aligned(64))); /* keys; read by anyone */
    uint64_t used;                                       /* keys + tombstones in the current map; writer only */
} table;

typedef enum table_result { TABLE_OK = 0, TABLE_EXISTS = 1, TABLE_NOMEM = 2 } table_result;

/* Tests force every key onto one hash to exercise collisions. */
typedef unsigned long table_hash_fn(const void *bytes, size_t len, unsigned long seed);
extern table_hash_fn *table_hash_override;

/* capacity: the map starts with at least this many slots (a power of two,
 * 16 or more), so it holds capacity / 2 keys before it grows. False when
 * it cannot allocate. */
bool table_init(table *t, table_key_kind kind, uint64_t capacity, uint64_t seed, ck_epoch_record_t *defer);
/* Frees the map at once: no reader may remain. */
void table_destroy(table *t);

/* The stored key equal to key, or NULL. Lock-free; epoch section required. */
const void *table_get(table *t, const void *key);
/* The same with key's table_hash given (a caller that hashed it already,
 * to prefetch: mem/expiry.c). */
const void *table_get_hashed(table *t, const void *key, unsigned long hash);

/* The uuid tables' hash (table_hash and the inlined lookups use it): two
 * seeded 64-bit mixes over the key's halves. */
static inline unsigned long table_mix(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return (unsigned long)x;
}

/* table_mix undone (a create picks an id by the mix it wants, mem/write.c):
 * x ^= x >> 33 is its own inverse, and each odd multiplier has an inverse
 * mod 2^64. */
static inline uint64_t table_unmix(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0x9cb4b2f8129337db); /* 0xc4ceb9fe1a85ec53^-1 */
    x ^= x >> 33;
    x *= UINT64_C(0x4f74430c22a54005); /* 0xff51afd7ed558ccd^-1 */
    x ^= x >> 33;
    return x;
}

static inline unsigned long table_hash_uuid(const void *key, unsigned long seed)
{
    if (__builtin_expect(table_hash_override != NULL, 0))
        return table_hash_override(key, 16, seed);
    uint64_t lo, hi;
    memcpy(&hi, key, 8);
    memcpy(&lo, (const char *)key + 8, 8);
    return table_mix(lo ^ table_mix(hi ^ seed));
}

/* table_get for a uuid table, inlined into the Get path with its hash
 * (issue 15, goal 1). */
static inline const void *table_get_uuid_hashed(const table *t, const void *key, unsigned long hash)
{
    const table_map *m = atomic_load_explicit(&((table *)t)->map, memory_order_acquire);
    for (uint64_t i = hash & m->mask;; i = (i + 1) & m->mask) {
        const void *k = atomic_load_explicit((_Atomic(const void *) *)&m->slots[i], memory_order_acquire);
        if (k == NULL)
            return NULL;
        /* A tombstone's tag bits are 0: the tag rarely lets it through,
         * the memcmp never would (record addresses are never 1). */
        if (table_slot_tag_matches(k, hash) && k != TABLE_TOMBSTONE && memcmp(table_slot_key(k), key, 16) == 0)
            return table_slot_key(k);
    }
}

static inline const void *table_get_uuid(const table *t, const void *key)
{
    return table_get_uuid_hashed(t, key, table_hash_uuid(key, t->seed));
}

/* Fetches the cache lines holding slots [first, last] of a probe that
 * starts at hash's slot (offsets from it, wrapping at the map's end).
 * Epoch section or writer lock required (the map it touches). */
static inline void table_prefetch_span(const table *t, unsigned long hash, int first, int last)
{
    const table_map *m = atomic_load_explicit(&((table *)t)->map, memory_order_acquire);
    uint64_t i = hash & m->mask;
    uintptr_t from = (uintptr_t)&m->slots[(i + (uint64_t)(int64_t)first) & m->mask];
    uintptr_t to = (uintptr_t)&m->slots[(i + (uint64_t)(int64_t)last) & m->mask];
    __builtin_prefetch((const void *)from, 0, 3);
    if (from >> 6 != to >> 6)
        __builtin_prefetch((const void *)to, 0, 3);
}

/* Starts fetching what a probe for this hash (table_hash, any key kind)
 * reads, so that several slot misses overlap before their probes
 * (mem/batch.c, mem/write.c): its first slot and the next two, since at a
 * load of 1/2 or less a probe seldom goes further; the one line, or the
 * two when the three slots straddle a line boundary (one probe in four:
 * slots are 8 bytes and a map's slots start on a line). Same
 * requirement as table_prefetch_span. */
static inline void table_prefetch(const table *t, unsigned long hash)
{
    table_prefetch_span(t, hash, 0, 2);
}

/* Once table_prefetch's lines are in: starts fetching the key a probe for
 * this hash compares first (the first slot whose tag matches), so a
 * group of lookups takes their key misses together too (mem/expiry.c).
 * Same requirement as table_prefetch_span. */
static inline void table_prefetch_candidate(const table *t, unsigned long hash)
{
    const table_map *m = atomic_load_explicit(&((table *)t)->map, memory_order_acquire);
    for (uint64_t i = hash & m->mask;; i = (i + 1) & m->mask) {
        const void *k = atomic_load_explicit((_Atomic(const void *) *)&m->slots[i], memory_order_acquire);
        if (k == NULL)
            return;
        if (table_slot_tag_matches(k, hash) && k != TABLE_TOMBSTONE) {
            __builtin_prefetch(table_slot_key(k));
            return;
        }
    }
}

/* table_prefetch for a coming table_remove_hashed, which also reads the
 * slot before its key's when it leaves an empty slot (the tombstones just
 * before it go too): measured at 1M sessions, fetching only the first
 * slot's line left 41% of an expiry pass in these removals' probes
 * (mem/expiry.c, mem/index.c). */
static inline void table_prefetch_removal(const table *t, unsigned long hash)
{
    table_prefetch_span(t, hash, -1, 2);
}

/* Writer lock held. key points into the record it stands for, which is
 * complete: inserting publishes it. TABLE_NOMEM also when key's address
 * has bits 48-55 set (room for the tag): 64-bit Linux gives no user-space
 * address there unless a mapping asked for one. */
table_result table_insert(table *t, const void *key);
/* Writer lock held. key is the stored key itself (the address inserted),
 * not an equal copy: the probe compares addresses, so a removal reads no
 * other record on its way (issue 15, goals 3 and 4). True if it was
 * present. */
bool table_remove(table *t, const void *key);
/* table_remove with the key's hash (table_hash) already computed: a caller
 * that prefetched the slot (table_prefetch) does not hash twice. */
bool table_remove_hashed(table *t, const void *key, unsigned long hash);

/* Writer lock held: shrinks a map its keys fill 1/16 of or less to the
 * size they need (never below the presized one), so a drained spike gives
 * its memory back; and when removals have left at least as many
 * tombstones as keys (and 64 or more), rebuilds the map without them, so
 * probes stay short under churn: at the size its keys need when they hold
 * 1/8 of its slots or fewer, else at the same size, only once keys and
 * tombstones fill more than 1/4 of it (a lighter map's probes are short
 * anyway). Each rebuild of an S-slot map thus follows S/16 removals or
 * more, or follows the inserts that grew it: amortised O(1) per removal.
 * False only when the rebuild could not allocate (the table stays as it
 * was, still correct). */
bool table_maintain(table *t);

size_t table_count(table *t);

/* The hash a key of this table is placed by (tests check its spread). */
unsigned long table_hash(const table *t, const void *key);
/* table_hash of a string key of len <= 16 bytes held zero padded to 16
 * (as a session record holds a short user id, mem/index.h), without
 * building the key. */
unsigned long table_hash_padded16(const table *t, const char padded[16], size_t len);

/* Lock-free walk (epoch section required) over one version of the map:
 * the keys present for the whole walk are each returned once; others may
 * or may not be. Keys never move within a map, which is what makes that
 * hold. */
typedef struct table_iterator {
    const table_map *map;
    uint64_t next;
} table_iterator;
#define TABLE_ITERATOR_INIT                                                                                            \
    {                                                                                                                  \
        NULL, 0                                                                                                        \
    }
const void *table_next(table *t, table_iterator *it);

/* Calls fn on every stored key. No concurrent writer allowed (close). */
void table_each(table *t, void (*fn)(const void *key));

#endif
