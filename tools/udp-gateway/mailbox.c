/*
 * mailbox.c: the ended-session mailbox of one worker (see mailbox.h for who
 * posts, who takes, and the overflow rule).
 */
#include "mailbox.h"

#include <stdlib.h>
#include <string.h>

int mailbox_init(mailbox *box, size_t capacity)
{
    memset(box, 0, sizeof(*box));
    box->items = calloc(capacity, sizeof(ended_session));
    if (box->items == NULL)
        return -1;
    box->capacity = capacity;
    pthread_mutex_init(&box->lock, NULL);
    atomic_init(&box->pending, 0);
    return 0;
}

void mailbox_destroy(mailbox *box)
{
    pthread_mutex_destroy(&box->lock);
    free(box->items);
    box->items = NULL;
}

void mailbox_post(mailbox *box, const ended_session *item)
{
    pthread_mutex_lock(&box->lock);
    if (box->count < box->capacity)
        box->items[box->count++] = *item;
    else
        box->overflowed = 1;
    /* Release: pairs with the owner's acquire load, though the mutex
     * already orders the items; the flag only spares the owner the lock. */
    atomic_store_explicit(&box->pending, 1, memory_order_release);
    pthread_mutex_unlock(&box->lock);
}

size_t mailbox_take(mailbox *box, ended_session *out, int *overflowed)
{
    *overflowed = 0;
    if (!atomic_load_explicit(&box->pending, memory_order_acquire))
        return 0;
    pthread_mutex_lock(&box->lock);
    size_t n = box->count;
    memcpy(out, box->items, n * sizeof(*out));
    box->count = 0;
    *overflowed = box->overflowed;
    box->overflowed = 0;
    atomic_store_explicit(&box->pending, 0, memory_order_relaxed);
    pthread_mutex_unlock(&box->lock);
    return n;
}
