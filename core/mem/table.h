/*
 * table.h: the one interface the engine uses for hash tables, in front of
 * Concurrency Kit's ck_ht (bytestring mode: keys are compared in full, so a
 * 64-bit hash collision is harmless).
 *
 * Readers (table_get) are lock-free and must be inside an epoch section;
 * writers (insert, remove, gc) must hold the owning shard's lock.
 *
 * Fences around Debian's ck_ht 0.7.1 (DESIGN.md): its put can insert a
 * duplicate key when it reuses a tombstone, so table_insert always looks the
 * key up first, and ck_ht_set_spmc is never used. Maps that readers may
 * still hold (after growth or gc) are freed through the epoch.
 *
 * Keys and values are pointers into engine records that outlive their
 * table entries; the table never copies them.
 */
#ifndef AFSM_MEM_TABLE_H
#define AFSM_MEM_TABLE_H

#include <ck_epoch.h>
#include <ck_ht.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct table {
    ck_ht_t ht;
    /* The owning shard's deferral record: freed maps go there. */
    ck_epoch_record_t *defer;
    uint64_t gc_cursor;        /* where the next incremental table_gc starts */
    uint64_t removed_since_gc; /* tombstones left since then: the GC's work */
} table;

typedef enum table_result { TABLE_OK = 0, TABLE_EXISTS = 1, TABLE_NOMEM = 2 } table_result;

/* Tests may force every key onto one hash to exercise collisions. */
typedef void table_hash_fn(ck_ht_hash_t *out, const void *key, size_t key_len, uint64_t seed);
extern table_hash_fn *table_hash_override;

bool table_init(table *t, uint64_t capacity, uint64_t seed, ck_epoch_record_t *defer);
/* Frees the map at once: no reader may remain. */
void table_destroy(table *t);

/* The value stored under key, or NULL. Lock-free; epoch section required. */
void *table_get(table *t, const void *key, uint16_t key_len);

/* Writer lock held. TABLE_EXISTS leaves the table unchanged. */
table_result table_insert(table *t, const void *key, uint16_t key_len, void *value);
/* Writer lock held. True if the key was present. */
bool table_remove(table *t, const void *key, uint16_t key_len);

/* Writer lock held: moves up to `budget` entries into earlier tombstones
 * of their probe sequences, continuing where the last call stopped, so
 * probes stay short under churn without a stop-the-world pass. Work scales
 * with the removals since the last call: none, no work. */
void table_gc(table *t, unsigned long budget);

size_t table_count(table *t);

#endif
