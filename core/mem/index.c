/*
 * index.c: the by-user index (see index.h for the list's rules).
 */
#include "mem/index.h"

#include <stddef.h>
#include <string.h>

#include "util/alloc.h"
#include "util/epoch.h"
#include "util/uuid.h"

static void entry_destroy(ck_epoch_entry_t *e)
{
    epoch_observe_quiescence();
    mem_free(e); /* epoch_entry is the first member */
}

static void retire_entry_hashed(shard *us, user_entry *entry, unsigned long hash)
{
    table_remove_hashed(&us->users, &entry->key, hash);
    epoch_defer(us->defer, &entry->epoch_entry, entry_destroy);
    /* Users come and go like sessions: clear their tombstones the same way. */
    table_maintain(&us->users);
}

static void retire_entry(shard *us, user_entry *entry)
{
    retire_entry_hashed(us, entry, table_hash(&us->users, &entry->key));
}

/* LeakSanitizer's, present only in a process that runs it (weak: NULL
 * otherwise). */
extern void __lsan_ignore_object(const void *p) __attribute__((weak));

user_entry *index_entry(shard *us, unsigned us_index, const char *user_id, uint16_t user_id_len)
{
    user_entry *entry = index_lookup(us, user_id, user_id_len);
    if (entry != NULL)
        return entry;
    entry = mem_calloc(1, index_entry_bytes(user_id_len));
    if (entry == NULL)
        return NULL;
    entry->shard_index = us_index;
    entry->key.len = user_id_len;
    memcpy(entry->key.bytes, user_id, user_id_len);
    entry->key.bytes[user_id_len] = '\0';
    if (table_insert(&us->users, &entry->key) != TABLE_OK) {
        mem_free(entry);
        return NULL;
    }
    /* Only the users table points to an entry whose sessions hold their id
     * themselves (index.h), and a table slot carries a tag in its high
     * bits (table.h), which LeakSanitizer does not read as a pointer: it
     * would report a live entry as leaked (libFuzzer does, after each
     * create). The entry is freed by its retirement or the store's close. */
    if (__lsan_ignore_object != NULL)
        __lsan_ignore_object(entry);
    return entry;
}

void index_set_user(session *s, user_entry *entry)
{
    memset(s->user_id_inline, 0, sizeof(s->user_id_inline));
    if (entry->key.len <= SESSION_USER_ID_INLINE)
        memcpy(s->user_id_inline, entry->key.bytes, entry->key.len);
    else
        s->user_long = entry;
}

unsigned long index_entry_hash(shard *us, const session *s)
{
    if (!index_user_inline(s))
        return 0;
    return table_hash_padded16(&us->users, s->user_id_inline, index_user_id_len(s));
}

user_entry *index_entry_of_hashed(shard *us, const session *s, unsigned long hash)
{
    if (!index_user_inline(s))
        return s->user_long;
    /* A probe key, as index_lookup builds one. */
    _Alignas(table_string_key) char probe_bytes[sizeof(table_string_key) + SESSION_USER_ID_INLINE];
    table_string_key *probe = (table_string_key *)probe_bytes;
    probe->len = index_user_id_len(s);
    memcpy(probe->bytes, s->user_id_inline, SESSION_USER_ID_INLINE);
    const void *found = table_get_hashed(&us->users, probe, hash);
    return found != NULL ? (user_entry *)((const char *)found - offsetof(user_entry, key)) : NULL;
}

user_entry *index_entry_of(shard *us, const session *s)
{
    return index_entry_of_hashed(us, s, index_entry_hash(us, s));
}

void index_prefetch_entry(shard *us, const session *s, unsigned long hash)
{
    if (!index_user_inline(s)) {
        __builtin_prefetch(s->user_long, 1);
        return;
    }
    table_prefetch(&us->users, hash);
}

void index_prefetch_found_entry(shard *us, const session *s, unsigned long hash)
{
    if (index_user_inline(s))
        table_prefetch_candidate(&us->users, hash);
}

void index_link(user_entry *entry, session *s)
{
    /* Find the first older session: new ids are nearly always the newest,
     * so this stops at once. */
    session *prev = NULL;
    session *next = atomic_load_explicit(&entry->newest, memory_order_relaxed);
    while (next != NULL && uuid_compare(&next->id, &s->id) > 0) {
        prev = next;
        next = atomic_load_explicit(&next->user_next, memory_order_relaxed);
    }
    atomic_store_explicit(&s->user_next, next, memory_order_relaxed);
    s->user_prev = prev;
    if (next != NULL)
        next->user_prev = s;
    else
        atomic_store_explicit(&entry->oldest, s, memory_order_release);
    /* Publish last: a reader that reaches s sees it whole. */
    if (prev != NULL)
        atomic_store_explicit(&prev->user_next, s, memory_order_release);
    else
        atomic_store_explicit(&entry->newest, s, memory_order_release);
    atomic_store_explicit(&entry->count, atomic_load_explicit(&entry->count, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

void index_unlink(shard *us, user_entry *entry, session *s, bool keep_entry)
{
    session *next = atomic_load_explicit(&s->user_next, memory_order_relaxed);
    if (s->user_prev != NULL)
        atomic_store_explicit(&s->user_prev->user_next, next, memory_order_release);
    else
        atomic_store_explicit(&entry->newest, next, memory_order_release);
    if (next != NULL)
        next->user_prev = s->user_prev;
    else
        atomic_store_explicit(&entry->oldest, s->user_prev, memory_order_release);
    uint32_t count = atomic_load_explicit(&entry->count, memory_order_relaxed) - 1;
    atomic_store_explicit(&entry->count, count, memory_order_relaxed);
    if (count == 0 && !keep_entry)
        retire_entry(us, entry);
}

void index_drop_if_empty(shard *us, user_entry *entry)
{
    if (atomic_load_explicit(&entry->count, memory_order_relaxed) == 0)
        retire_entry(us, entry);
}

unsigned long index_prepare_drop(shard *us, const user_entry *entry)
{
    unsigned long hash = table_hash(&us->users, &entry->key);
    table_prefetch_removal(&us->users, hash);
    return hash;
}

void index_drop_prepared(shard *us, user_entry *entry, unsigned long hash)
{
    if (atomic_load_explicit(&entry->count, memory_order_relaxed) == 0)
        retire_entry_hashed(us, entry, hash);
}

user_entry *index_lookup(shard *us, const char *user_id, uint16_t user_id_len)
{
    _Alignas(table_string_key) char probe_bytes[sizeof(table_string_key) + AFSM_USER_ID_MAX];
    table_string_key *probe = (table_string_key *)probe_bytes;
    probe->len = user_id_len;
    memcpy(probe->bytes, user_id, user_id_len);
    const void *found = table_get(&us->users, probe);
    return found != NULL ? (user_entry *)((const char *)found - offsetof(user_entry, key)) : NULL;
}

void index_destroy_entry(const void *key)
{
    mem_free((char *)key - offsetof(user_entry, key));
}
