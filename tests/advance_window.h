/*
 * advance_window.h: stops an expiry pass in the middle, so that a test can
 * change the engine from another thread meanwhile (test_expiry_place.c,
 * test_settle_mixed.c).
 *
 * The test installs a table hash hook (table_hash_override) that passes
 * every 16-byte key hashed on the advancing thread to
 * advance_window_observe. Once armed, the trigger_at-th hash of one of the
 * tracked connection ids (settle_group hashes each item's connection id
 * when it finds its place, and the next group's in its look-ahead, in
 * item order) hands over to the helper thread, which waits for it in
 * advance_window_wait, changes the engine, and hands back with
 * advance_window_release. Every wait has a deadline; nothing sleeps.
 */
#ifndef AFSM_TESTS_ADVANCE_WINDOW_H
#define AFSM_TESTS_ADVANCE_WINDOW_H

#include <stdbool.h>

#include "test_support.h"

typedef struct advance_window {
    const afsm_uuid *conns; /* the tracked connection ids */
    int conn_count;
    long trigger_at; /* stop at this hash of a tracked id (from 1) */
    _Atomic long conn_hashes;
    _Atomic int armed;
    _Atomic long request; /* advancer -> helper */
    _Atomic long done;    /* helper -> advancer */
    _Atomic int stop;     /* the test -> a helper the advance never woke */
    int triggered;        /* the index of the id whose hash stopped it */
} advance_window;

/* On the advancing thread, from the hash hook, with each 16-byte key. */
static inline void advance_window_observe(advance_window *w, const void *key)
{
    if (w == NULL || !atomic_load(&w->armed))
        return;
    for (int i = 0; i < w->conn_count; i++) {
        if (memcmp(key, &w->conns[i], 16) != 0)
            continue;
        if (atomic_fetch_add(&w->conn_hashes, 1) + 1 != w->trigger_at)
            return;
        atomic_store(&w->armed, 0);
        w->triggered = i;
        atomic_store_explicit(&w->request, 1, memory_order_release);
        THREAD_CHECK(spin_until(&w->done, 1, 60));
        return;
    }
}

/* On the helper thread: true once the advance has stopped in the window;
 * false when the test set stop first (the advance never got there). */
static inline bool advance_window_wait(advance_window *w)
{
    uint64_t deadline = real_ns() + 60 * SEC;
    while (atomic_load_explicit(&w->request, memory_order_acquire) == 0) {
        if (atomic_load(&w->stop))
            return false;
        THREAD_CHECK(real_ns() < deadline);
    }
    return true;
}

/* On the helper thread, when its changes are made: the advance goes on. */
static inline void advance_window_release(advance_window *w)
{
    atomic_store_explicit(&w->done, 1, memory_order_release);
}

/* On the test's thread after the advance: the helper, if still waiting,
 * gives up; then whether the window was reached. */
static inline bool advance_window_close(advance_window *w)
{
    atomic_store(&w->stop, 1);
    return atomic_load(&w->done) == 1;
}

#endif
