/*
 * test_slab.c: the per-shard record slab (core/mem/slab.h). What the engine
 * relies on: every slot is 64-byte aligned and zeroed, slots never overlap,
 * a freed slot is reused before the slab grows, a slot is exactly one
 * allocation point for the failure hook (also when a new chunk is due),
 * and the slab's slots are spread over whole chunks only.
 */
#include "test_support.h"

#include <stdint.h>
#include <stdlib.h>

#include "mem/session.h"
#include "mem/slab.h"
#include "util/alloc.h"

#define SLOTS (3 * SLAB_CHUNK_SLOTS + 5)

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return x < y ? -1 : x > y;
}

static void test_slots_aligned_zeroed_disjoint(void **state)
{
    (void)state;
    assert_int_equal(sizeof(session), SLAB_SLOT_BYTES);
    slab sl;
    slab_init(&sl);
    sl.hold = 0; /* reuse at once, as outside AddressSanitizer */
    void *slots[SLOTS];
    for (size_t i = 0; i < SLOTS; i++) {
        slots[i] = slab_alloc(&sl);
        assert_non_null(slots[i]);
        assert_int_equal((uintptr_t)slots[i] % SLAB_SLOT_ALIGN, 0);
        const unsigned char *bytes = slots[i];
        for (size_t b = 0; b < SLAB_SLOT_BYTES; b++)
            assert_int_equal(bytes[b], 0);
        memset(slots[i], 0xee, SLAB_SLOT_BYTES); /* dirty, for the reuse check */
    }
    void *sorted[SLOTS];
    memcpy(sorted, slots, sizeof(slots));
    qsort(sorted, SLOTS, sizeof(void *), by_address);
    for (size_t i = 1; i < SLOTS; i++)
        assert_true((uintptr_t)sorted[i] - (uintptr_t)sorted[i - 1] >= SLAB_SLOT_BYTES);
    assert_int_equal(sl.chunk_count, 4);

    /* Freed slots come back (zeroed) before the slab grows again. */
    for (size_t i = 0; i < SLOTS; i += 2)
        slab_free(&sl, slots[i]);
    for (size_t i = 0; i < SLOTS; i += 2) {
        void *again = slab_alloc(&sl);
        int known = 0;
        for (size_t k = 0; k < SLOTS; k += 2)
            known |= again == slots[k];
        assert_true(known);
        const unsigned char *bytes = again;
        for (size_t b = 0; b < SLAB_SLOT_BYTES; b++)
            assert_int_equal(bytes[b], 0);
    }
    assert_int_equal(sl.chunk_count, 4);
    slab_destroy(&sl);
}

static void test_one_allocation_point_per_slot(void **state)
{
    (void)state;
    slab sl;
    slab_init(&sl);
    /* A fresh slab must grow for its first slot: still one point. */
    alloc_fail_after(0);
    assert_null(slab_alloc(&sl));
    alloc_fail_after(1);
    void *first = slab_alloc(&sl);
    assert_non_null(first);
    assert_null(slab_alloc(&sl));
    alloc_fail_reset();
    /* Fill the chunk; the next slot needs a new chunk, and fails whole. */
    for (size_t i = 1; i < SLAB_CHUNK_SLOTS; i++)
        assert_non_null(slab_alloc(&sl));
    assert_int_equal(sl.chunk_count, 1);
    alloc_fail_after(0);
    assert_null(slab_alloc(&sl));
    alloc_fail_reset();
    assert_int_equal(sl.chunk_count, 1);
    alloc_fail_after(1);
    assert_non_null(slab_alloc(&sl));
    alloc_fail_reset();
    assert_int_equal(sl.chunk_count, 2);
    slab_destroy(&sl);
}

/* Freed slots held back (as under AddressSanitizer, SLAB_ASAN_HOLD): the
 * last `hold` freed wait, oldest first out, and a held slot is never handed
 * out; the slab grows rather than reuse one. */
static void test_freed_slots_held_back(void **state)
{
    (void)state;
    slab sl;
    slab_init(&sl);
#if defined(SLAB_ASAN)
    assert_int_equal(sl.hold, SLAB_ASAN_HOLD);
#else
    assert_int_equal(sl.hold, 0);
#endif
    sl.hold = 3;
    void *slots[8];
    for (int i = 0; i < 8; i++)
        slots[i] = slab_alloc(&sl);
    for (int i = 0; i < 5; i++)
        slab_free(&sl, slots[i]); /* 2, 3, 4 held; 1 then 0 reusable */
    assert_int_equal(sl.held_count, 3);
    assert_ptr_equal(slab_alloc(&sl), slots[1]);
    assert_ptr_equal(slab_alloc(&sl), slots[0]);
    void *fresh = slab_alloc(&sl);
    for (int i = 0; i < 8; i++)
        assert_ptr_not_equal(fresh, slots[i]);
    /* The next free lets slot 2 out, oldest first. */
    slab_free(&sl, fresh);
    assert_int_equal(sl.held_count, 3);
    assert_ptr_equal(slab_alloc(&sl), slots[2]);
    /* A whole chunk's worth held: the slab grows instead of reusing. */
    sl.hold = 2 * SLAB_CHUNK_SLOTS;
    void *many[SLAB_CHUNK_SLOTS];
    for (int i = 0; i < SLAB_CHUNK_SLOTS; i++)
        many[i] = slab_alloc(&sl);
    for (int i = 0; i < SLAB_CHUNK_SLOTS; i++)
        slab_free(&sl, many[i]);
    size_t chunks = sl.chunk_count;
    for (int i = 0; i < SLAB_CHUNK_SLOTS; i++) {
        void *p = slab_alloc(&sl);
        for (int k = 0; k < SLAB_CHUNK_SLOTS; k++)
            assert_ptr_not_equal(p, many[k]);
    }
    assert_true(sl.chunk_count > chunks);
    slab_destroy(&sl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_aligned_zeroed_disjoint),
        cmocka_unit_test(test_one_allocation_point_per_slot),
        cmocka_unit_test(test_freed_slots_held_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
