/*
 * index.c: the by-user index (see index.h).
 */
#include "mem/index.h"

#include <string.h>

#include "util/alloc.h"
#include "util/epoch.h"
#include "util/uuid.h"

static void list_destroy(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    mem_free(entry);
}

static void entry_destroy(ck_epoch_entry_t *e)
{
    epoch_observe_quiescence();
    user_entry *entry = (user_entry *)e;
    mem_free(atomic_load_explicit(&entry->list, memory_order_relaxed));
    mem_free(entry);
}

static user_list *list_alloc(uint32_t count)
{
    user_list *list = mem_alloc(sizeof(*list) + (size_t)count * sizeof(session *));
    if (list != NULL)
        list->count = count;
    return list;
}

afsm_status index_add(shard *us, session *s)
{
    user_entry *entry = table_get(&us->users, s->user_id, s->user_id_len);
    if (entry == NULL) {
        entry = mem_alloc(sizeof(*entry) + s->user_id_len + 1);
        user_list *list = list_alloc(1);
        if (entry == NULL || list == NULL)
            goto fail_new;
        list->items[0] = s;
        entry->id_len = s->user_id_len;
        memcpy(entry->id, s->user_id, s->user_id_len + 1u);
        atomic_store_explicit(&entry->list, list, memory_order_relaxed);
        if (table_insert(&us->users, entry->id, entry->id_len, entry) != TABLE_OK)
            goto fail_new;
        return AFSM_OK;
    fail_new:
        mem_free(list);
        mem_free(entry);
        return AFSM_ENOMEM;
    }

    user_list *old = atomic_load_explicit(&entry->list, memory_order_relaxed);
    user_list *fresh = list_alloc(old->count + 1);
    if (fresh == NULL)
        return AFSM_ENOMEM;
    /* Sorted insert; new ids are usually the largest, so scan from the end. */
    uint32_t at = old->count;
    while (at > 0 && uuid_compare(&old->items[at - 1]->id, &s->id) > 0)
        at--;
    memcpy(fresh->items, old->items, at * sizeof(session *));
    fresh->items[at] = s;
    memcpy(fresh->items + at + 1, old->items + at, (old->count - at) * sizeof(session *));
    atomic_store_explicit(&entry->list, fresh, memory_order_release);
    epoch_defer(us->defer, &old->epoch_entry, list_destroy);
    return AFSM_OK;
}

afsm_status index_remove(shard *us, session *s)
{
    user_entry *entry = table_get(&us->users, s->user_id, s->user_id_len);
    if (entry == NULL)
        return AFSM_OK;
    user_list *old = atomic_load_explicit(&entry->list, memory_order_relaxed);
    uint32_t at = 0;
    while (at < old->count && old->items[at] != s)
        at++;
    if (at == old->count)
        return AFSM_OK;
    if (old->count == 1) {
        table_remove(&us->users, entry->id, entry->id_len);
        epoch_defer(us->defer, &entry->epoch_entry, entry_destroy);
        return AFSM_OK;
    }
    user_list *fresh = list_alloc(old->count - 1);
    if (fresh == NULL)
        return AFSM_ENOMEM;
    memcpy(fresh->items, old->items, at * sizeof(session *));
    memcpy(fresh->items + at, old->items + at + 1, (old->count - at - 1) * sizeof(session *));
    atomic_store_explicit(&entry->list, fresh, memory_order_release);
    epoch_defer(us->defer, &old->epoch_entry, list_destroy);
    return AFSM_OK;
}

const user_list *index_lookup(shard *us, const char *user_id, uint16_t user_id_len)
{
    user_entry *entry = table_get(&us->users, user_id, user_id_len);
    if (entry == NULL)
        return NULL;
    return atomic_load_explicit(&entry->list, memory_order_acquire);
}

void index_destroy_entry(user_entry *entry)
{
    mem_free(atomic_load_explicit(&entry->list, memory_order_relaxed));
    mem_free(entry);
}
