/*
 * alloc.c: malloc/free with a process-wide failure-injection countdown for
 * tests. The countdown is one relaxed atomic (and one thread-local for a
 * single thread's failures): a production build pays two loads per
 * allocation, which is noise next to malloc itself.
 */
#include "util/alloc.h"

#include <stdatomic.h>
#include <stdlib.h>

/* Allocations left before failures start; negative means never fail. */
static _Atomic long allocations_left = -1;
/* The same, for this thread only (alloc_fail_after_on_this_thread). */
static _Thread_local long thread_allocations_left = -1;

static int countdown_says_fail(void)
{
    if (thread_allocations_left == 0)
        return 1;
    if (thread_allocations_left > 0)
        thread_allocations_left--;
    long left = atomic_load_explicit(&allocations_left, memory_order_relaxed);
    if (left < 0)
        return 0;
    while (left > 0) {
        if (atomic_compare_exchange_weak_explicit(&allocations_left, &left, left - 1, memory_order_relaxed,
                                                  memory_order_relaxed))
            return 0;
        if (left < 0)
            return 0;
    }
    return 1;
}

/* alloc_fail_observe's observer, and its argument. */
static void (*_Atomic fail_observer)(void *ctx);
static void *_Atomic fail_observer_ctx;
/* Set while this thread runs the observer: the observer's own allocations
 * fail too (the countdown is at 0), and would otherwise run it again from
 * inside itself, without bound. */
static _Thread_local int observing;

static int should_fail(void)
{
    if (!countdown_says_fail())
        return 0;
    void (*observer)(void *) = atomic_load_explicit(&fail_observer, memory_order_acquire);
    if (observer != NULL && !observing) {
        observing = 1;
        observer(atomic_load_explicit(&fail_observer_ctx, memory_order_relaxed));
        observing = 0;
    }
    return 1;
}

void *mem_alloc(size_t size_bytes)
{
    if (should_fail())
        return NULL;
    return malloc(size_bytes);
}

void *mem_calloc(size_t count, size_t size_bytes)
{
    if (should_fail())
        return NULL;
    return calloc(count, size_bytes);
}

void *mem_aligned_alloc(size_t alignment, size_t size_bytes)
{
    if (should_fail())
        return NULL;
    return aligned_alloc(alignment, size_bytes);
}

void mem_free(void *ptr)
{
    free(ptr);
}

int mem_alloc_point_fails(void)
{
    return should_fail();
}

void *mem_alloc_unhooked(size_t size_bytes)
{
    return malloc(size_bytes);
}

void *mem_aligned_alloc_unhooked(size_t alignment, size_t size_bytes)
{
    return aligned_alloc(alignment, size_bytes);
}

void alloc_fail_after(long n)
{
    atomic_store_explicit(&allocations_left, n, memory_order_relaxed);
}

void alloc_fail_reset(void)
{
    atomic_store_explicit(&allocations_left, -1, memory_order_relaxed);
}

void alloc_fail_after_on_this_thread(long n)
{
    thread_allocations_left = n;
}

void alloc_fail_observe(void (*observer)(void *ctx), void *ctx)
{
    atomic_store_explicit(&fail_observer_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&fail_observer, observer, memory_order_release);
}
