/*
 * index.h: the by-user index of the in-memory store.
 *
 * Each user with sessions has a user_entry in the users table of the shard
 * chosen by the user id. Its sessions are an immutable array sorted by
 * session id (creation order), replaced whole on every change and freed
 * through the epoch: a lock-free reader sees the list before or after a
 * change, never half of one, so a per-user count is never observed above
 * the cap. Users typically have a handful of sessions, so copying the array
 * costs less than any linked structure would on reads.
 *
 * index_add and index_remove run under the user shard's lock; both allocate
 * before they change anything, so AFSM_ENOMEM leaves the index unchanged.
 */
#ifndef AFSM_MEM_INDEX_H
#define AFSM_MEM_INDEX_H

#include <ck_epoch.h>
#include <stdatomic.h>
#include <stdint.h>

#include "afsm.h"
#include "mem/session.h"
#include "mem/shard.h"

typedef struct user_list {
    ck_epoch_entry_t epoch_entry;
    uint32_t count;
    session *items[];
} user_list;

typedef struct user_entry {
    ck_epoch_entry_t epoch_entry;
    _Atomic(user_list *) list; /* never NULL while the entry is in the table */
    uint16_t id_len;
    char id[];
} user_entry;

afsm_status index_add(shard *user_shard, session *s);
afsm_status index_remove(shard *user_shard, session *s);

/* The user's sessions, or NULL. Lock-free; the caller is inside an epoch
 * section and must not keep the pointer past it. */
const user_list *index_lookup(shard *user_shard, const char *user_id, uint16_t user_id_len);

/* Frees an entry and its list at once (store close: no readers remain). */
void index_destroy_entry(user_entry *entry);

#endif
