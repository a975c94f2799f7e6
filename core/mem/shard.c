/*
 * shard.c: lock sets over the shards (see shard.h). Ascending order is the
 * whole deadlock-avoidance rule, so acquire sorts and deduplicates.
 */
#include "mem/shard.h"

#include <assert.h>

void lockset_init(lockset *set)
{
    set->count = 0;
}

void lockset_add(lockset *set, unsigned shard_index)
{
    unsigned i = 0;
    while (i < set->count && set->index[i] < shard_index)
        i++;
    if (i < set->count && set->index[i] == shard_index)
        return;
    assert(set->count < LOCKSET_MAX);
    for (unsigned j = set->count; j > i; j--)
        set->index[j] = set->index[j - 1];
    set->index[i] = shard_index;
    set->count++;
}

void lockset_acquire(shard *shards, lockset *set)
{
    for (unsigned i = 0; i < set->count; i++)
        sync_lock_acquire(&shards[set->index[i]].lock);
}

void lockset_release(shard *shards, const lockset *set)
{
    for (unsigned i = set->count; i > 0; i--)
        sync_lock_release(&shards[set->index[i - 1]].lock);
}
