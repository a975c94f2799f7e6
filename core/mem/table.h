/*
 * table.h: the one interface the engine uses for hash tables, in front of
 * Concurrency Kit's ck_hs (SPMC: one writer at a time, lock-free readers).
 *
 * A table stores pointers to keys that live inside engine records: a
 * session's id or connection id (afsm_uuid), a user entry's id
 * (table_string_key). Finding the key finds the record (container_of).
 * Keys are compared in full, so hash collisions are harmless.
 *
 * Why ck_hs: the benchmark (bench/, issue 9) measured ck_hs at ~2.3x the
 * lookup rate of ck_ht at 1M entries and a quarter of its memory (8-byte
 * slots against ck_ht's 32 when, as in Debian's build, pointer packing is
 * off). ck_ht 0.7.1 also has a duplicate-key bug on tombstone reuse.
 *
 * Readers (table_get) must be inside an epoch section; writers hold the
 * owning shard's lock. Insertion is ck_hs_put, which searches the key's
 * whole probe sequence before reusing a tombstone, so a duplicate cannot
 * enter (test_table replays the sequence that duplicates keys in ck_ht).
 * Maps replaced by growth or rebuild are freed through the epoch, never
 * while a reader may hold them.
 */
#ifndef AFSM_MEM_TABLE_H
#define AFSM_MEM_TABLE_H

#include <ck_epoch.h>
#include <ck_hs.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "util/sync.h"

typedef enum table_key_kind { TABLE_KEY_UUID, TABLE_KEY_STRING } table_key_kind;

/* A string key as records embed it. */
typedef struct table_string_key {
    uint16_t len;
    char bytes[];
} table_string_key;

typedef struct table {
    ck_hs_t hs;
    ck_epoch_record_t *defer; /* the owning shard's deferral record */
    unsigned long removed;    /* removals since the last rebuild */
} table;

typedef enum table_result { TABLE_OK = 0, TABLE_EXISTS = 1, TABLE_NOMEM = 2 } table_result;

/* Tests force every key onto one hash to exercise collisions. */
typedef unsigned long table_hash_fn(const void *bytes, size_t len, unsigned long seed);
extern table_hash_fn *table_hash_override;

bool table_init(table *t, table_key_kind kind, uint64_t capacity, uint64_t seed, ck_epoch_record_t *defer);
/* Frees the map at once: no reader may remain. */
void table_destroy(table *t);

/* The stored key equal to key, or NULL. Lock-free; epoch section required. */
const void *table_get(table *t, const void *key);

/* The uuid tables' hash (their ck_hs hash callback calls it too): two
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

static inline unsigned long table_hash_uuid(const void *key, unsigned long seed)
{
    if (__builtin_expect(table_hash_override != NULL, 0))
        return table_hash_override(key, 16, seed);
    uint64_t lo, hi;
    memcpy(&hi, key, 8);
    memcpy(&lo, (const char *)key + 8, 8);
    return table_mix(lo ^ table_mix(hi ^ seed));
}

/* table_get for a uuid table, with the hash inlined instead of called
 * through ck_hs's callback pointer: the Get path's (issue 15, goal 1). */
static inline const void *table_get_uuid(table *t, const void *key)
{
    const void *found = ck_hs_get(&t->hs, table_hash_uuid(key, t->hs.seed), key);
    if (found != NULL)
        sync_observe(found); /* as in table_get */
    return found;
}

/* Writer lock held. key points into the record it stands for. */
table_result table_insert(table *t, const void *key);
/* Writer lock held. True if the key was present. */
bool table_remove(table *t, const void *key);

/* Writer lock held: when removals have left as many tombstones as live
 * entries, rebuilds the map without them (amortised O(1) per removal), so
 * probes stay short under churn. False only when the rebuild could not
 * allocate (the table stays as it was, still correct). */
bool table_maintain(table *t);

size_t table_count(table *t);

/* Lock-free walk (epoch section required) over one version of the map:
 * the keys present for the whole walk are each returned once; others may
 * or may not be. The store never moves a key within a map (no ck_hs_set,
 * ck_hs_gc or ck_hs_apply), which is what makes that hold. */
typedef ck_hs_iterator_t table_iterator;
#define TABLE_ITERATOR_INIT CK_HS_ITERATOR_INITIALIZER
const void *table_next(table *t, table_iterator *it);

/* Calls fn on every stored key. No concurrent writer allowed (close). */
void table_each(table *t, void (*fn)(const void *key));

#endif
