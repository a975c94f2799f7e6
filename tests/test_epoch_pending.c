/*
 * test_epoch_pending.c: the count of deferred frees (util/epoch.h,
 * epoch_pending; the metric session_engine_deferred_frees). Threads count
 * their deferrals and the frees they run on stripes of their own, and a
 * free often runs on another thread than its deferral (a drain at close, a
 * poll by the next writer), so what the count must keep is the sum: exact
 * whenever no thread is deferring or freeing, with more threads than
 * stripes, and back where it started once everything deferred has run.
 */
#include "test_support.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "util/alloc.h"
#include "util/epoch.h"

#define THREADS    40 /* more than the stripes, so some share one */
#define PER_THREAD 300

static _Atomic long freed;

static void count_free(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    atomic_fetch_add(&freed, 1);
    mem_free(entry);
}

typedef struct deferrer {
    ck_epoch_record_t *record; /* its own writer record, left to main to drain */
} deferrer;

static void *defer_some(void *arg)
{
    deferrer *d = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        ck_epoch_entry_t *entry = mem_alloc(sizeof(*entry));
        assert_non_null(entry);
        epoch_defer(d->record, entry, count_free);
    }
    return NULL;
}

static void test_count_is_exact_across_threads_and_stripes(void **state)
{
    (void)state;
    uint64_t before = epoch_pending();
    deferrer d[THREADS];
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) {
        d[t].record = epoch_writer_record();
        assert_non_null(d[t].record);
    }
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&threads[t], NULL, defer_some, &d[t]), 0);
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(threads[t], NULL), 0);
    /* A deferrer's own poll may already have run some of its frees. */
    long run = atomic_load(&freed);
    assert_int_equal(epoch_pending(), before + (uint64_t)(THREADS * PER_THREAD) - (uint64_t)run);
    /* Every remaining free runs here, on this thread's stripe. */
    for (int t = 0; t < THREADS; t++)
        epoch_writer_retire(d[t].record);
    assert_int_equal(atomic_load(&freed), THREADS * PER_THREAD);
    assert_int_equal(epoch_pending(), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_count_is_exact_across_threads_and_stripes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
