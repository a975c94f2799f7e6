/*
 * mem_inspect.h: what tests read of the memory store's insides to check
 * that nothing leaked (slab slots handed out and not given back) and that
 * its indexes agree. Only with no other thread in the engine: it walks
 * free lists and lists without their locks.
 */
#ifndef AFSM_TESTS_MEM_INSPECT_H
#define AFSM_TESTS_MEM_INSPECT_H

#include "test_support.h"

#include <stddef.h>
#include <string.h>

#include "engine.h"
#include "mem/index.h"
#include "mem/mem_store.h"
#include "mem/shard.h"
#include "mem/slab.h"
#include "mem/table.h"
#include "util/epoch.h"

/* Slots of one slab handed out and not given back: every chunk's slots,
 * minus the free list, minus those held, minus the untouched rest of the
 * newest chunk. */
static inline size_t slab_in_use(slab *sl)
{
    size_t free_count = 0;
    for (void *p = sl->free; p != NULL; memcpy(&p, p, sizeof(p)))
        free_count++;
    size_t untouched = (size_t)(sl->end - sl->next) / SLAB_SLOT_BYTES;
    return sl->chunk_count * SLAB_CHUNK_SLOTS - free_count - sl->held_count - untouched;
}

/* The same over every shard's record slab. */
static inline size_t engine_slots_in_use(afsm_engine *engine)
{
    mem_store *ms = (mem_store *)engine->st;
    size_t n = 0;
    for (unsigned i = 0; i <= ms->shard_mask; i++)
        n += slab_in_use(&ms->shards[i].records);
    return n;
}

/* Every session in every index where its placement says, each user's list
 * as long as its count, newest first and within the cap (0: none), no
 * empty entry, the engine's count equal to the sessions found. The
 * number of sessions. */
static inline long engine_check_indexes(afsm_engine *engine, uint32_t cap)
{
    mem_store *ms = (mem_store *)engine->st;
    long sessions = 0, conns = 0, listed = 0;
    ck_epoch_record_t *e = epoch_enter();
    assert_non_null(e);
    for (unsigned i = 0; i <= ms->shard_mask; i++) {
        shard *sh = &ms->shards[i];
        conns += (long)table_count(&sh->connections);
        table_iterator it = TABLE_ITERATOR_INIT;
        const void *key;
        while ((key = table_next(&sh->sessions, &it)) != NULL) {
            session *x = (session *)((char *)key - offsetof(session, id));
            sessions++;
            assert_false(session_removed(x));
            assert_int_equal(mem_shard_of_id(ms, &x->id), i);
            unsigned cs = mem_shard_of_connection(ms, &x->connection_id);
            assert_ptr_equal(table_get(&ms->shards[cs].connections, &x->connection_id), &x->connection_id);
            unsigned us = mem_shard_of_user(ms, index_user_id(x), index_user_id_len(x));
            assert_int_equal(mem_user_shard_index(ms, x), us);
            user_entry *entry = index_lookup(&ms->shards[us], index_user_id(x), index_user_id_len(x));
            assert_non_null(entry);
            assert_ptr_equal(index_entry_of(&ms->shards[us], x), entry);
            /* Inline exactly when short enough; a long id points to its entry. */
            assert_int_equal(index_user_inline(x), entry->key.len <= SESSION_USER_ID_INLINE);
            if (!index_user_inline(x))
                assert_ptr_equal(x->user_long, entry);
        }
        it = (table_iterator)TABLE_ITERATOR_INIT;
        while ((key = table_next(&sh->users, &it)) != NULL) {
            user_entry *ue = (user_entry *)((char *)key - offsetof(user_entry, key));
            uint32_t walked = 0;
            session *prev = NULL;
            for (session *y = index_first(ue); y != NULL; prev = y, y = index_next(y)) {
                if (++walked > index_count(ue))
                    fail_msg("user \"%s\": its list is longer than its count %u", ue->key.bytes, index_count(ue));
                assert_ptr_equal(index_entry_of(&ms->shards[i], y), ue);
                assert_ptr_equal(y->user_prev, prev);
                if (prev != NULL) /* newest id first */
                    assert_true(memcmp(prev->id.bytes, y->id.bytes, 16) > 0);
            }
            assert_ptr_equal(atomic_load(&ue->oldest), prev);
            assert_int_equal(ue->shard_index, i);
            assert_true(index_count(ue) > 0);
            if (cap != 0)
                assert_true(index_count(ue) <= cap);
            assert_int_equal(walked, index_count(ue));
            listed += walked;
        }
    }
    epoch_leave(e);
    assert_int_equal(conns, sessions);
    assert_int_equal(listed, sessions);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, (uint64_t)sessions);
    return sessions;
}

#endif
