/*
 * index.h: the by-user index of the in-memory store.
 *
 * Each user with sessions has a user_entry in the users table of the shard
 * chosen by the user id. Its sessions form a list threaded through the
 * session records (user_next / user_prev), newest id first, so the oldest
 * is the last. Writers change it under the user shard's lock; readers walk
 * it lock-free inside an epoch section. A removed session keeps its
 * user_next, so a reader standing on it walks on (the usual RCU list
 * argument: every session present for the whole walk is visited once).
 * Adding and removing cost O(1) whatever the user's session count, and
 * removing never allocates.
 *
 * A session names its user by the id itself when it is at most
 * SESSION_USER_ID_INLINE bytes (a Get then copies it from the record, with
 * no miss to the entry: issue 15, goal 1), else by a pointer to the entry.
 * A write finds an inline-id session's entry by a lookup in the user
 * shard's table (index_entry_of), made before it takes its locks and
 * right once the session is found still listed under them.
 */
#ifndef AFSM_MEM_INDEX_H
#define AFSM_MEM_INDEX_H

#include <ck_epoch.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "afsm.h"
#include "mem/session.h"
#include "mem/shard.h"

typedef struct user_entry {
    ck_epoch_entry_t epoch_entry;
    _Atomic(session *) newest;
    _Atomic(session *) oldest; /* written under the lock (release); peeked lock-free by eviction */
    _Atomic uint32_t count;    /* written under the lock, read lock-free */
    /* The shard whose users table holds the entry, i.e. mem_shard_of_user
     * of its id: a write's lock set and unlink take it from here instead
     * of hashing the id again (immutable). 16 bits (shards are at most
     * 4096) fit the padding before the key: the entry stays 40 bytes plus
     * the id, so its allocator size class does not change. */
    uint16_t shard_index;
    table_string_key key; /* the user id; last: its bytes follow */
} user_entry;

/* The bytes a user entry for an id of user_id_len bytes is allocated with:
 * the id, its NUL and zeros up to a multiple of 8, so copies may read the
 * id in 8-byte moves (store.c, copy_text8). Rounding to 8 (the key starts
 * 8-aligned) keeps the chunk an unrounded request gets from either
 * allocator; to 16 it made glibc's 64-byte chunk an 80-byte one (bench/:
 * bytes per session, 256.5 -> 258.5 B). */
static inline size_t index_entry_bytes(size_t user_id_len)
{
    return (sizeof(user_entry) + user_id_len + 1u + 7u) & ~(size_t)7;
}

/* User shard lock held. The user's entry, made if it has none (count 0
 * then); NULL only when it could not be allocated. user_shard_index:
 * user_shard's index, kept in the entry. */
user_entry *index_entry(shard *user_shard, unsigned user_shard_index, const char *user_id, uint16_t user_id_len);
/* Before s is published: records entry's user id in s (index.h's head). */
void index_set_user(session *s, user_entry *entry);
/* User shard lock held: adds s (index_set_user done) to entry's list.
 * Never fails. */
void index_link(user_entry *entry, session *s);
/* User shard lock held: takes s off its user's list (entry:
 * index_entry_of). The entry goes when its last session does, unless
 * keep_entry: an eviction adds right after, and must not find the entry
 * gone; an expiry group drops the entries it emptied itself, together
 * (index_prepare_drop). */
void index_unlink(shard *user_shard, user_entry *entry, session *s, bool keep_entry);
/* s's entry. User shard lock held and s on its user's list; or
 * lock-free inside an epoch section, when the answer is s's entry if s is
 * afterwards found on its list under that lock (else it may be NULL or
 * another entry). Why: an entry stays in its users table while any of its
 * sessions is listed, and s is listed from before it can be found (create
 * links it before publishing it) until its removal; so s still listed
 * under the lock was listed at the lookup, and its one entry was the
 * table's throughout. For a long id, only once s is seen not removed
 * inside the section (the entry may be freed otherwise). */
user_entry *index_entry_of(shard *user_shard, const session *s);
/* The users-table hash index_entry_of looks an inline id up by (0 for a
 * long id, whose record points to its entry), so a caller that prefetches
 * first (an expiry group, mem/expiry.c) hashes each id once. */
unsigned long index_entry_hash(shard *user_shard, const session *s);
/* index_entry_of with index_entry_hash's answer. */
user_entry *index_entry_of_hashed(shard *user_shard, const session *s, unsigned long hash);
/* Starts fetching the lines index_entry_of reads (the entry, or for an
 * inline id the users-table slot): a hint, any time. */
void index_prefetch_entry(shard *user_shard, const session *s, unsigned long hash);
/* For an inline id, once index_prefetch_entry's slot is in: starts
 * fetching the entry it leads to (a lookup's second miss). A hint. */
void index_prefetch_found_entry(shard *user_shard, const session *s, unsigned long hash);
/* User shard lock held: drops an entry index_entry made for a create that
 * then failed. */
void index_drop_if_empty(shard *user_shard, user_entry *entry);
/* index_drop_if_empty in two steps, for a caller that empties several
 * entries (the expiry's settle groups, mem/expiry.c): first start
 * fetching the users-table slot its removal rewrites, for each entry, so
 * those misses overlap; then drop each with the hash the first returned.
 * User shard lock held across both. */
unsigned long index_prepare_drop(shard *user_shard, const user_entry *entry);
void index_drop_prepared(shard *user_shard, user_entry *entry, unsigned long hash);

/* The user's entry, or NULL. Lock-free; inside an epoch section. */
user_entry *index_lookup(shard *user_shard, const char *user_id, uint16_t user_id_len);

static inline bool index_user_inline(const session *s)
{
    return s->user_id_inline[0] != '\0';
}

_Static_assert(SESSION_USER_ID_INLINE == 16 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "index_user_id_len counts an inline id's bytes as two little-endian words");

/* The user id's length. An inline id's bytes are non-zero and its padding
 * zero, so the highest non-zero byte of the two words ends it: no loop. */
static inline uint16_t index_user_id_len(const session *s)
{
    if (!index_user_inline(s))
        return s->user_long->key.len;
    uint64_t lo, hi;
    memcpy(&lo, s->user_id_inline, 8);
    memcpy(&hi, s->user_id_inline + 8, 8);
    if (hi != 0)
        return (uint16_t)(8 + (63 - __builtin_clzll(hi)) / 8 + 1);
    return (uint16_t)((63 - __builtin_clzll(lo)) / 8 + 1);
}

/* The user id's bytes: the record's (zero padded to 16), or the entry's
 * (NUL-terminated, zero padded to a multiple of 8: index_entry_bytes). */
static inline const char *index_user_id(const session *s)
{
    return index_user_inline(s) ? s->user_id_inline : s->user_long->key.bytes;
}

static inline uint32_t index_count(const user_entry *entry)
{
    return entry != NULL ? atomic_load_explicit((_Atomic uint32_t *)&entry->count, memory_order_relaxed) : 0;
}

static inline session *index_first(const user_entry *entry)
{
    return atomic_load_explicit((_Atomic(session *) *)&entry->newest, memory_order_acquire);
}

static inline session *index_next(const session *s)
{
    return atomic_load_explicit((_Atomic(session *) *)&s->user_next, memory_order_acquire);
}

/* Frees an entry at once, given its table key (store close: no readers). */
void index_destroy_entry(const void *key);

#endif
