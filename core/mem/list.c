/*
 * list.c: listing sessions by filter, in session-id order (= creation
 * order, ids being v7), with offset/limit pages and cursors.
 *
 * Lock-free: a scan of the user's list (user_id set) or of every shard's
 * sessions table, inside one epoch section. A bounded max-heap keeps the
 * offset + limit smallest ids after the cursor, so a page costs
 * O(n log(page)) and no copy of the whole set. The total counts every
 * match, ignoring cursor, offset and limit.
 */
#include <stdlib.h>
#include <string.h>

#include "mem/index.h"
#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/epoch.h"
#include "util/uuid.h"

typedef struct heap {
    session **items;
    size_t count;
    size_t capacity; /* grows up to limit */
    size_t limit;    /* offset + page size: how many smallest ids to keep */
} heap;

static int heap_less(session *a, session *b)
{
    return uuid_compare(&a->id, &b->id) < 0;
}

static void heap_sift_down(heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, top = i;
        if (l < h->count && heap_less(h->items[top], h->items[l]))
            top = l;
        if (r < h->count && heap_less(h->items[top], h->items[r]))
            top = r;
        if (top == i)
            return;
        session *t = h->items[i];
        h->items[i] = h->items[top];
        h->items[top] = t;
        i = top;
    }
}

/* Keeps the `limit` smallest ids seen (a max-heap on id). */
static afsm_status heap_offer(heap *h, session *s)
{
    if (h->count < h->limit) {
        if (h->count == h->capacity) {
            size_t grown = h->capacity ? h->capacity * 2 : 64;
            if (grown > h->limit)
                grown = h->limit;
            session **items = mem_alloc(grown * sizeof(session *));
            if (items == NULL)
                return AFSM_ENOMEM;
            if (h->count)
                memcpy(items, h->items, h->count * sizeof(session *));
            mem_free(h->items);
            h->items = items;
            h->capacity = grown;
        }
        size_t i = h->count++;
        h->items[i] = s;
        while (i > 0 && heap_less(h->items[(i - 1) / 2], h->items[i])) {
            session *t = h->items[i];
            h->items[i] = h->items[(i - 1) / 2];
            h->items[(i - 1) / 2] = t;
            i = (i - 1) / 2;
        }
        return AFSM_OK;
    }
    if (h->count > 0 && heap_less(s, h->items[0])) {
        h->items[0] = s;
        heap_sift_down(h, 0);
    }
    return AFSM_OK;
}

static int compare_sessions(const void *a, const void *b)
{
    return uuid_compare(&(*(session *const *)a)->id, &(*(session *const *)b)->id);
}

typedef struct list_scan {
    const afsm_list_filter *filter;
    const mem_store *ms;
    int has_cursor;
    uint64_t now;
    int64_t wall_offset; /* creation times are compared as copies report them */
    uint64_t total;
    uint64_t after_cursor;
    heap page;
} list_scan;

static afsm_status scan_one(list_scan *scan, session *s)
{
    const afsm_list_filter *f = scan->filter;
    if (session_removed(s) || mem_expired(scan->ms, s, scan->now))
        return AFSM_OK;
    if (f->state != AFSM_STATE_ANY && atomic_load_explicit(&s->state, memory_order_relaxed) != f->state)
        return AFSM_OK;
    if (f->created_after_ns != 0 && (int64_t)s->created_ns + scan->wall_offset <= f->created_after_ns)
        return AFSM_OK;
    if (f->created_before_ns != 0 && (int64_t)s->created_ns + scan->wall_offset >= f->created_before_ns)
        return AFSM_OK;
    scan->total++;
    if (scan->has_cursor && uuid_compare(&s->id, &f->cursor) <= 0)
        return AFSM_OK;
    scan->after_cursor++;
    return heap_offer(&scan->page, s);
}

afsm_status mem_list(store *st, const afsm_list_filter *f, afsm_session_info *out, size_t *count, uint64_t *total,
                     afsm_uuid *next_cursor)
{
    mem_store *ms = (mem_store *)st;
    list_scan scan = {.filter = f, .ms = ms, .has_cursor = !uuid_is_nil(&f->cursor), .now = mem_now(ms)};
    scan.wall_offset = atomic_load_explicit(&ms->wall_offset_ns, memory_order_relaxed);
    uint64_t keep = f->offset + f->limit;
    scan.page.limit = keep < f->offset ? SIZE_MAX : (size_t)keep; /* saturate on overflow */
    *count = 0;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    afsm_status status = AFSM_OK;
    if (f->user_id != NULL) {
        user_entry *entry = index_lookup(&ms->shards[mem_shard_of_user(ms, f->user_id, f->user_id_len)], f->user_id,
                                         (uint16_t)f->user_id_len);
        for (session *s = entry != NULL ? index_first(entry) : NULL; s != NULL && status == AFSM_OK; s = index_next(s))
            status = scan_one(&scan, s);
    } else {
        /* table_next: sessions present for the whole walk are each seen
         * exactly once, which is what makes cursors stable. */
        for (unsigned i = 0; i <= ms->shard_mask && status == AFSM_OK; i++) {
            table_iterator it = TABLE_ITERATOR_INIT;
            const void *key;
            while (status == AFSM_OK && (key = table_next(&ms->shards[i].sessions, &it)) != NULL)
                status = scan_one(&scan, (session *)key);
        }
    }
    if (status == AFSM_OK) {
        if (scan.page.count > 1)
            qsort(scan.page.items, scan.page.count, sizeof(session *), compare_sessions);
        size_t n = 0;
        for (size_t i = (size_t)f->offset; i < scan.page.count; i++)
            mem_fill_info(ms, scan.page.items[i], &out[n++]);
        *count = n;
        *total = scan.total;
        if (next_cursor != NULL) {
            memset(next_cursor, 0, sizeof(*next_cursor));
            if (n > 0 && scan.after_cursor > f->offset + n)
                *next_cursor = out[n - 1].session_id;
        }
    }
    epoch_leave(e);
    mem_free(scan.page.items);
    return status;
}
