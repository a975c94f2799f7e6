/*
 * epoch.h: safe memory reclamation for everything readers reach without a
 * lock (session records, metadata blobs, user lists, ck_ht maps).
 *
 * One process-wide ck_epoch. Readers: every OS thread gets its own record
 * on first use (thread-local; cgo and ctypes calls arrive on arbitrary
 * threads), released for reuse when the thread exits. Writers defer frees
 * on a record owned by a shard, used only under that shard's lock (so
 * ck_epoch_call's single-producer rule holds), and polled as work piles up.
 * A deferred free runs only after every reader section that began before
 * the deferral has ended.
 */
#ifndef AFSM_UTIL_EPOCH_H
#define AFSM_UTIL_EPOCH_H

#include <ck_epoch.h>
#include <stdbool.h>

#include "util/sync.h"

/* The calling thread's reader record (NULL until its first section). */
extern _Thread_local ck_epoch_record_t *epoch_thread_record __attribute__((tls_model("initial-exec")));

/* Stands for "some reader section ended" in TSan's eyes (epoch.c). */
extern char epoch_quiescence_token;

/* The thread's first section: allocates and registers its record. */
ck_epoch_record_t *epoch_enter_first(void);

/* Enters / leaves a read section on the calling thread's record. Sections
 * nest. epoch_enter returns NULL only when no record could be allocated
 * (the caller then reports AFSM_ENOMEM). Inline: every Get pays them, and
 * as calls they cost it ~30 instructions (issue 15, goal 1). The record is
 * read once per section; a thread-exit destructor that clears it runs only
 * after the thread's last section of its own has ended. */
static inline ck_epoch_record_t *epoch_enter(void)
{
    ck_epoch_record_t *record = epoch_thread_record;
    if (__builtin_expect(record == NULL, 0))
        return epoch_enter_first();
    ck_epoch_begin(record, NULL);
    return record;
}

static inline void epoch_leave(ck_epoch_record_t *record)
{
    sync_publish(&epoch_quiescence_token);
    ck_epoch_end(record, NULL);
}

/* Allocates the calling thread's record; false only on ENOMEM. */
bool epoch_thread_prepare(void);

/* True once the calling thread has its reader record (allocating it on the
 * thread's first use; false only on ENOMEM). Lets a lock-free path that
 * may need a section later fail before it has changed anything. Inline:
 * the data plane's handle calls check it per packet. */
static inline bool epoch_thread_ready(void)
{
    return epoch_thread_record != NULL || epoch_thread_prepare();
}

/* A record for deferring frees; owned by one shard. NULL on ENOMEM. */
ck_epoch_record_t *epoch_writer_record(void);
/* Runs every pending deferral (waits for readers), then returns the record
 * to the pool. Only with the owner's lock held or the owner quiescent. */
void epoch_writer_retire(ck_epoch_record_t *record);

/* Frees ptr (allocated by mem_alloc, with entry inside it) once no reader
 * can hold it. record is the caller's shard record, its lock held. */
void epoch_defer(ck_epoch_record_t *record, ck_epoch_entry_t *entry, ck_epoch_cb_t *destroy);
/* Dispatches what is safe to free now without waiting. */
void epoch_poll(ck_epoch_record_t *record);
/* Waits for every reader section that is open now, then frees everything
 * deferred on record. */
void epoch_drain(ck_epoch_record_t *record);

/* Called by every deferred destroy callback before it frees: tells TSan
 * that the free happens after the readers' sections, and counts it done. */
void epoch_observe_quiescence(void);

/* Deferred frees not yet run, process-wide (a health metric): the sum of
 * every record's count, each exact when read. The counts are read one
 * after another, not at one instant: while frees run, a record whose free
 * has run may be counted beside a deferral made after it on another
 * record, so the sum can exceed what was pending at any one instant by
 * what changed during the read, at most each record's own count. Exact
 * when no thread is deferring or freeing. */
uint64_t epoch_pending(void);

#endif
