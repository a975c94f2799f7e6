/*
 * sync.h: the engine's synchronisation primitives, and the one place where
 * ThreadSanitizer is told about Concurrency Kit's.
 *
 * TSan cannot see CK's inline-assembly atomics nor anything inside libck.so
 * (see DESIGN.md, "ThreadSanitizer and Concurrency Kit"). Every CK
 * synchronisation point the engine relies on therefore goes through this
 * header, which in the TSan build adds __tsan_release before a publish and
 * __tsan_acquire after the matching observe. Outside TSan builds the
 * annotations compile to nothing.
 *
 * - shard_lock: CK's fetch-and-store spinlock, with bounded spinning then
 *   sched_yield, so that more threads than cores do not collapse when a
 *   lock holder is descheduled.
 * - seqlock: written only under a shard lock, read lock-free. Built on C11
 *   atomics rather than ck_sequence so that TSan understands the protected
 *   fields (release stores and acquire loads order them; no fences).
 */
#ifndef AFSM_UTIL_SYNC_H
#define AFSM_UTIL_SYNC_H

#include <ck_pr.h>
#include <ck_spinlock.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#if defined(AFSM_TSAN)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define sync_publish(obj) __tsan_release((void *)(obj))
#define sync_observe(obj) __tsan_acquire((void *)(obj))
#else
#define sync_publish(obj) ((void)(obj))
#define sync_observe(obj) ((void)(obj))
#endif

/* Fences. gcc's ThreadSanitizer rejects atomic_thread_fence (-Wtsan: it
 * does not model fences, and no pragma reaches a fence inlined later). In
 * the TSan build a fence becomes a read-modify-write of a private word,
 * which is a full barrier on the CPUs TSan runs on and which TSan models;
 * TSan learns the orderings themselves from the sync_publish / sync_observe
 * annotations at each site. */
#if defined(AFSM_TSAN)
static inline void sync_fence_word(memory_order order)
{
    static _Atomic unsigned word;
    (void)atomic_fetch_add_explicit(&word, 0, order);
}
#define SYNC_FENCE(order) sync_fence_word(order)
#else
#define SYNC_FENCE(order) atomic_thread_fence(order)
#endif

/* Orders every earlier store before every later store: what a writer filled
 * in is visible to whoever sees the pointer it publishes next. */
static inline void sync_fence_release(void)
{
    SYNC_FENCE(memory_order_release);
}

/* Orders every earlier store before every later load (the only reordering
 * x86 does; aarch64 does them all). */
static inline void sync_fence_seq_cst(void)
{
    SYNC_FENCE(memory_order_seq_cst);
}

typedef struct sync_lock {
    ck_spinlock_fas_t fas;
} sync_lock;

static inline void sync_lock_init(sync_lock *lock)
{
    ck_spinlock_fas_init(&lock->fas);
}

static inline void sync_lock_acquire(sync_lock *lock)
{
    unsigned spins = 0;
    while (!ck_spinlock_fas_trylock(&lock->fas)) {
        if (++spins < 64)
            ck_pr_stall();
        else
            sched_yield();
    }
    sync_observe(lock);
}

static inline void sync_lock_release(sync_lock *lock)
{
    sync_publish(lock);
    ck_spinlock_fas_unlock(&lock->fas);
}

/* Sequence counter: odd while a writer is inside.
 *
 * The protocol needs no fence (which gcc's ThreadSanitizer cannot model,
 * and rejects at -O2): writers store every protected field with release,
 * so the odd count stored before them is visible to whoever sees a new
 * field; readers load every protected field with acquire, so the count's
 * second load cannot move before them. On x86-64 all of these are plain
 * moves. */
typedef struct sync_seq {
    _Atomic uint32_t value;
} sync_seq;

static inline void sync_seq_write_begin(sync_seq *seq)
{
    uint32_t v = atomic_load_explicit(&seq->value, memory_order_relaxed);
    atomic_store_explicit(&seq->value, v + 1, memory_order_relaxed);
}

static inline void sync_seq_write_end(sync_seq *seq)
{
    uint32_t v = atomic_load_explicit(&seq->value, memory_order_relaxed);
    atomic_store_explicit(&seq->value, v + 1, memory_order_release);
}

static inline uint32_t sync_seq_read_begin(const sync_seq *seq)
{
    for (;;) {
        uint32_t v = atomic_load_explicit((_Atomic uint32_t *)&seq->value, memory_order_acquire);
        if ((v & 1) == 0)
            return v;
        ck_pr_stall();
    }
}

/* True when the fields read (with acquire) since read_begin may be torn. */
static inline int sync_seq_read_retry(const sync_seq *seq, uint32_t begin)
{
    return atomic_load_explicit((_Atomic uint32_t *)&seq->value, memory_order_relaxed) != begin;
}

/* Raises *word to value unless it already holds more; returns the result.
 * Heartbeats use it so that a late one never moves a deadline back. */
static inline uint64_t sync_store_max_u64(_Atomic uint64_t *word, uint64_t value)
{
    uint64_t seen = atomic_load_explicit(word, memory_order_relaxed);
    while (seen < value) {
        if (atomic_compare_exchange_weak_explicit(word, &seen, value, memory_order_relaxed, memory_order_relaxed))
            return value;
    }
    return seen;
}

#endif
