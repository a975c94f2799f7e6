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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_aligned_zeroed_disjoint),
        cmocka_unit_test(test_one_allocation_point_per_slot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
