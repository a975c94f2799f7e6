/*
 * alloc.h: the engine's only allocator entry points.
 *
 * Plain malloc/free underneath (libafsm.so must not depend on jemalloc; see
 * DESIGN.md). Every allocation goes through here so that a test can make the
 * Nth one fail (alloc_fail_after) and check that the engine is unchanged.
 */
#ifndef AFSM_UTIL_ALLOC_H
#define AFSM_UTIL_ALLOC_H

#include <stddef.h>

void *mem_alloc(size_t size_bytes);
void *mem_calloc(size_t count, size_t size_bytes);
/* alignment a power of two; size_bytes a multiple of it. Freed by mem_free. */
void *mem_aligned_alloc(size_t alignment, size_t size_bytes);
void mem_free(void *ptr);

/* An allocation point that may not call malloc (a slab's slot, mem/slab.h):
 * true when the test hook says this one fails. It counts as one
 * allocation, so a record is one allocation point whether or not its slab
 * had to grow; the growth itself then uses the unhooked calls below. */
int mem_alloc_point_fails(void);
void *mem_alloc_unhooked(size_t size_bytes);
void *mem_aligned_alloc_unhooked(size_t alignment, size_t size_bytes);

/* Test hook: the next n allocations succeed, then every one fails until
 * alloc_fail_reset(). n < 0 (the default) never fails. Process-wide. */
void alloc_fail_after(long n);
void alloc_fail_reset(void);
/* The same for the calling thread's allocations only (n < 0: off), so
 * that a test can fail one thread's allocation while others run. */
void alloc_fail_after_on_this_thread(long n);
/* Test hook: observer(ctx) runs on the failing thread each time an
 * allocation is made to fail, so a test can look at the engine from
 * inside the operation that allocates. Allocations the observer makes
 * fail as the countdown says, without running it again. NULL: none. */
void alloc_fail_observe(void (*observer)(void *ctx), void *ctx);

#endif
