/*
 * ck_floor.h: the floor under the engine's lookups: bare Concurrency Kit
 * tables holding N 16-byte keys, nothing around them (no epoch section, no
 * record copy, no expiry check). C, because CK's inline headers are not
 * valid C++.
 *
 * ck_ht runs in the engine's exact mode (bytestring, delete workload, the
 * key stored by pointer). ck_hs stores one pointer per slot to an object
 * whose first 16 bytes are the key, which is how the engine could hold its
 * session records (the id is the record's first field): the candidate
 * replacement DESIGN.md mentions.
 */
#ifndef AFSM_BENCH_CK_FLOOR_H
#define AFSM_BENCH_CK_FLOOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct floor_table floor_table;

/* keys: n records of 16 bytes that outlive the table. kind: "ck_ht" or
 * "ck_hs". NULL on failure. */
floor_table *floor_build(const char *kind, const uint8_t (*keys)[16], size_t n);
/* The stored record for key, or NULL. Safe from many threads at once
 * (SPMC reads; nobody writes while the benchmark runs). */
const void *floor_get(floor_table *t, const uint8_t *key);
/* Bytes the table itself allocated (maps and slots, not the keys). */
size_t floor_table_bytes(const floor_table *t);
void floor_destroy(floor_table *t);

/* The get + copy floor (issue 15): the least an engine Get must do. A
 * ck_hs (object mode, the engine's table) of pointers to n records of
 * FLOOR_RECORD_BYTES (the engine's session record size), each its own
 * malloc in creation order, the 16-byte key as the record's first field.
 * A get hashes the key, probes, and copies the record into an output of
 * the caller's (afsm_session_info-sized) buffer: no epoch, no clock, no
 * user entry, no field-by-field conversion. */
#define FLOOR_RECORD_BYTES 192
#define FLOOR_BATCH        16
typedef struct floor_records floor_records;
/* records_per_user 0: records alone (the get + copy floor). Otherwise the
 * floor with the user hop (bench: Get/floor_user), what a Get costs once
 * the user id lives outside the record, as the engine keeps it: one user
 * entry per records_per_user records (record i belongs to user
 * i / records_per_user, as the bench's sessions do), FLOOR_USER_BYTES
 * each, packed in one cache-line-aligned array (denser than the engine's
 * allocator-placed entries: a floor takes the best layout), and each
 * record holds its entry's pointer in its first line, where the engine's
 * record holds its. */
#define FLOOR_USER_BYTES   64
#define FLOOR_USER_ID_AT   40 /* the id's offset in the entry, as in the engine's user entry */
#define FLOOR_USER_ID_COPY 16 /* the bench's 13-byte ids and their NUL, in 8-byte moves */
floor_records *floor_records_build(const uint8_t (*keys)[16], size_t n, size_t records_per_user);
/* 1 when found, 0 when not. out holds the record's bytes and, with users,
 * the user id's FLOOR_USER_ID_COPY bytes after them: out must hold
 * FLOOR_RECORD_BYTES + FLOOR_USER_ID_COPY (an afsm_session_info does). */
int floor_get_copy(floor_records *f, const uint8_t *key, void *out);
/* The batched floor: up to FLOOR_BATCH keys; hashes all, probes all,
 * prefetches every found record's lines, then copies each into outs[i]
 * (the records alone, without their users).
 * Returns how many were found. */
size_t floor_get_copy_batch(floor_records *f, const uint8_t *const *keys, size_t n, void *const *outs);
void floor_records_destroy(floor_records *f);

#ifdef __cplusplus
}
#endif

#endif
