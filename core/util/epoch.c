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

/* A record and its deferred frees not yet run. A deferral adds 1 to the
 * count of the record it is deferred on and its free, which runs in a
 * dispatch of that same record (ck_epoch_poll, ck_epoch_barrier), takes
 * 1 off it: each count is exact at every instant, and only the record's
 * owner (who holds its shard's lock) writes it, on a line no other
 * record's owner writes. The metric sums the counts. One process-wide
 * counter was a line every removal and every free wrote, which two
 * threads deleting passed between their cores on nearly every removal
 * (~220 ns a pass here; issue 15). Every record, reader or writer, is one
 * of these, allocated once and never freed (ck_epoch recycles them). */
typedef struct counted_record {
    ck_epoch_record_t record; /* first: a ck_epoch_record_t * is one of these */
    _Atomic uint64_t pending;
    struct counted_record *_Atomic next_counted; /* every record, newest first */
} counted_record;

static counted_record *_Atomic all_counted;

/* The record whose dispatch runs on this thread (NULL outside one): whose
 * count a free takes 1 off. Initial-exec for the same reason as
 * epoch_thread_record. */
static _Thread_local counted_record *dispatching __attribute__((tls_model("initial-exec")));

static counted_record *counted(ck_epoch_record_t *record)
{
    return (counted_record *)record;
}

/* ck_epoch_poll or ck_epoch_barrier of record, with `dispatching` set to it
 * (and restored after: a destroy callback may defer, and poll, another). */
static void dispatch(ck_epoch_record_t *record, bool wait)
{
    counted_record *outer = dispatching;
    dispatching = counted(record);
    if (wait)
        ck_epoch_barrier(record);
    else
        ck_epoch_poll(record);
    dispatching = outer;
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
    counted_record *c = mem_alloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    atomic_store_explicit(&c->pending, 0, memory_order_relaxed);
    counted_record *head = atomic_load_explicit(&all_counted, memory_order_relaxed);
    do
        atomic_store_explicit(&c->next_counted, head, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&all_counted, &head, c, memory_order_release, memory_order_relaxed));
    ck_epoch_register(&global_epoch, &c->record, NULL);
    return &c->record;
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
    atomic_fetch_add_explicit(&counted(record)->pending, 1, memory_order_relaxed);
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
        dispatch(record, false);
}

void epoch_poll(ck_epoch_record_t *record)
{
    dispatch(record, false);
}

void epoch_drain(ck_epoch_record_t *record)
{
    dispatch(record, true);
}

void epoch_observe_quiescence(void)
{
    sync_observe(&epoch_quiescence_token);
    /* Every deferred free runs inside a dispatch of its record (above). */
    atomic_fetch_sub_explicit(&dispatching->pending, 1, memory_order_relaxed);
}

uint64_t epoch_pending(void)
{
    uint64_t sum = 0;
    for (counted_record *c = atomic_load_explicit(&all_counted, memory_order_acquire); c != NULL;
         c = atomic_load_explicit(&c->next_counted, memory_order_relaxed))
        sum += atomic_load_explicit(&c->pending, memory_order_relaxed);
    return sum;
}
