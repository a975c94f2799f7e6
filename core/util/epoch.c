/*
 * epoch.c: the process-wide ck_epoch, per-thread reader records and
 * per-shard writer records.
 *
 * Reader records live until the process ends (ck_epoch cannot destroy a
 * record); a thread's record is unregistered when the thread exits and
 * recycled by the next thread that needs one, so their number tracks the
 * peak count of concurrent threads, not the total ever seen.
 */
#include "util/epoch.h"

#include <pthread.h>
#include <stdatomic.h>

#include "util/alloc.h"
#include "util/sync.h"

/* Read by every epoch_enter (ck_epoch_begin loads its epoch), written only
 * when the epoch advances or a record registers: on a line of its own, so
 * the counters other code writes per operation cannot share it (issue 15,
 * goal 5). */
static ck_epoch_t global_epoch __attribute__((aligned(CK_MD_CACHELINE)));
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static pthread_key_t thread_key;

/* The calling thread's reader record (NULL until its first read). Every
 * lookup reads it, so it uses the initial-exec TLS model: a plain
 * %fs-relative load instead of a __tls_get_addr call. Its 8 bytes fit the
 * static TLS surplus glibc keeps for libraries loaded late (ctypes). */
_Thread_local ck_epoch_record_t *epoch_thread_record __attribute__((tls_model("initial-exec")));

/* One object stands for "some reader section ended" in TSan's eyes. */
char epoch_quiescence_token;

/* Deferred frees waiting, counted in stripes, each on a line of its own
 * (none beside global_epoch, which every reader loads): a thread counts
 * its deferrals (+1) and the frees it runs (-1) on its own stripe, and the
 * metric sums them. One process-wide counter was a line every removal
 * wrote twice, which two threads deleting passed between their cores on
 * nearly every removal (~220 ns a pass here; issue 15: 2-thread deletes
 * ran 15-20% faster without it). A free often runs on another thread than
 * its deferral, so a stripe alone means nothing; the sum, kept in wrapping
 * arithmetic, is the count. */
#define PENDING_STRIPES 16
static struct {
    _Atomic uint64_t value;
    char pad[CK_MD_CACHELINE - sizeof(uint64_t)];
} __attribute__((aligned(CK_MD_CACHELINE))) pending_frees[PENDING_STRIPES];
static _Atomic unsigned next_stripe;
/* The calling thread's stripe + 1; 0 until its first count. Stripes are
 * handed out round robin, so up to PENDING_STRIPES threads share none. */
static _Thread_local unsigned thread_stripe;

static _Atomic uint64_t *pending_stripe(void)
{
    if (thread_stripe == 0)
        thread_stripe = atomic_fetch_add_explicit(&next_stripe, 1, memory_order_relaxed) % PENDING_STRIPES + 1;
    return &pending_frees[thread_stripe - 1].value;
}

/* The thread's TSD destructor. Other destructors may run after it on the
 * same thread and call the engine: forgetting the record here makes such a
 * call take a fresh one (re-registering the key, which glibc then destroys
 * in a later round), instead of reading under a record that ck_epoch no
 * longer scans and another thread may already have recycled. */
static void thread_exit(void *record)
{
    epoch_thread_record = NULL;
    sync_publish(record); /* the record's hand-over to the thread that recycles it */
    ck_epoch_unregister(record);
}

static void global_init(void)
{
    ck_epoch_init(&global_epoch);
    (void)pthread_key_create(&thread_key, thread_exit);
}

static ck_epoch_record_t *record_acquire(void)
{
    pthread_once(&global_once, global_init);
    ck_epoch_record_t *record = ck_epoch_recycle(&global_epoch, NULL);
    if (record != NULL) {
        sync_observe(record); /* pairs with thread_exit's publish (CK's CAS is invisible to TSan) */
        return record;
    }
    record = mem_alloc(sizeof(*record));
    if (record == NULL)
        return NULL;
    ck_epoch_register(&global_epoch, record, NULL);
    return record;
}

ck_epoch_record_t *epoch_enter_first(void)
{
    ck_epoch_record_t *record = record_acquire();
    if (record == NULL)
        return NULL;
    if (pthread_setspecific(thread_key, record) != 0) {
        ck_epoch_unregister(record);
        return NULL;
    }
    epoch_thread_record = record;
    ck_epoch_begin(record, NULL);
    return record;
}

bool epoch_thread_prepare(void)
{
    ck_epoch_record_t *record = epoch_enter();
    if (record == NULL)
        return false;
    epoch_leave(record);
    return true;
}

ck_epoch_record_t *epoch_writer_record(void)
{
    return record_acquire();
}

void epoch_writer_retire(ck_epoch_record_t *record)
{
    epoch_drain(record);
    sync_publish(record);
    ck_epoch_unregister(record);
}

void epoch_defer(ck_epoch_record_t *record, ck_epoch_entry_t *entry, ck_epoch_cb_t *destroy)
{
    atomic_fetch_add_explicit(pending_stripe(), 1, memory_order_relaxed);
    /* ck_epoch_call tags the entry with the global epoch it loads. The
     * unlink that made the object unreachable is a store; without a full
     * fence that load may be satisfied before the store is visible (x86's
     * store buffer allows it too), tagging the entry with an epoch a reader
     * who still sees the object has already announced: it would be freed
     * under that reader. Pairs with the fence in ck_epoch_begin. */
    sync_fence_seq_cst();
    ck_epoch_call(record, entry, destroy);
    /* Bound the backlog: poll never blocks, it only frees what is safe. */
    if (record->n_pending >= 1024 && record->n_pending % 256 == 0)
        ck_epoch_poll(record);
}

void epoch_poll(ck_epoch_record_t *record)
{
    ck_epoch_poll(record);
}

void epoch_drain(ck_epoch_record_t *record)
{
    ck_epoch_barrier(record);
}

void epoch_observe_quiescence(void)
{
    sync_observe(&epoch_quiescence_token);
    atomic_fetch_sub_explicit(pending_stripe(), 1, memory_order_relaxed);
}

uint64_t epoch_pending(void)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < PENDING_STRIPES; i++)
        sum += atomic_load_explicit(&pending_frees[i].value, memory_order_relaxed);
    /* Stripes are read one after another: a free counted on a stripe read
     * after its deferral's was can make the sum dip below zero (wrapped). */
    return (int64_t)sum < 0 ? 0 : sum;
}
