/*
 * mailbox.h: how a worker learns that a session it holds a handle for has
 * ended (expired, or deleted by another thread).
 *
 * The engine fires its events on whichever thread made the change: the
 * expiry of every session on the worker that calls afsm_engine_advance, a
 * delete on the thread that deleted. A handle belongs to the worker whose
 * flow map holds it, and only that worker may release it (a release while
 * the owner is between its lookup and its heartbeat would be a use after
 * free). So the event callback posts (session id, connection id) to every
 * worker's mailbox and the owner drops its own flow on its next turn of the
 * loop; workers without that flow find nothing and move on. Events are rare
 * next to packets, so a mutex per mailbox is cheap; the owner checks a flag
 * per loop turn (one acquire load, a plain load on x86), not per packet.
 *
 * The mailbox has a fixed capacity so that posting never allocates inside
 * the callback. When it is full the post sets `overflowed` instead, and the
 * owner then sweeps its whole flow map, asking the engine about each flow:
 * slower, never wrong, never a leaked handle.
 *
 * Locking: `lock` guards items and count. `pending` is set (release) after
 * an item or an overflow lands and cleared by the owner under the lock.
 */
#ifndef UDP_GATEWAY_MAILBOX_H
#define UDP_GATEWAY_MAILBOX_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "afsm.h"

typedef struct ended_session {
    afsm_uuid session_id;
    afsm_uuid connection_id;
    uint32_t expired; /* 1: expired through the wheel; 0: deleted */
} ended_session;

typedef struct mailbox {
    pthread_mutex_t lock;
    ended_session *items;
    size_t count;
    size_t capacity;
    int overflowed;
    _Atomic int pending;
} mailbox;

int mailbox_init(mailbox *box, size_t capacity);
void mailbox_destroy(mailbox *box);

/* Any thread (the event callback). Never blocks for long, never allocates. */
void mailbox_post(mailbox *box, const ended_session *item);

/* The owner: moves the posted items into out[0..capacity) and returns how
 * many; *overflowed tells whether some were lost (sweep). Cheap when empty. */
size_t mailbox_take(mailbox *box, ended_session *out, int *overflowed);

#endif
