/*
 * expiry.c: what the timing wheels decide when a timer fires, and time
 * moving on (afsm_engine_advance, the reaper thread).
 *
 * Lazy rescheduling: heartbeats and traffic only move numbers forward
 * without a lock; when a session's timer fires, the reaper recomputes what
 * is due (expiry, the idle deadline of an active session, the end of a
 * closed session's linger) and either acts or relinks the timer there.
 * Expiry is decided by a CAS on last_active_ns (SESSION_EXPIRED_BIT), which
 * excludes a racing heartbeat. Removals need each session's whole lock set,
 * so the wheel's verdicts are collected under the shard lock and carried
 * out after it, in bounded batches.
 */
#include <string.h>

#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/clock.h"
#include "util/epoch.h"

/* The next time the wheel must look at s: its expiry, or for an active
 * session under idle detection its idle deadline if sooner, or for a closed
 * one the end of its linger. Shard lock held. */
uint64_t mem_timer_deadline(const mem_store *ms, const session *s, uint32_t state, uint64_t last_active)
{
    if (state == AFSM_STATE_CLOSED)
        return atomic_load_explicit((_Atomic uint64_t *)&s->last_traffic_ns, memory_order_relaxed) +
               ms->config.close_linger_ns;
    uint64_t deadline = mem_deadline(ms, s, last_active);
    if (ms->config.idle_timeout_ns != 0 && state == AFSM_STATE_ACTIVE) {
        uint64_t traffic = atomic_load_explicit((_Atomic uint64_t *)&s->last_traffic_ns, memory_order_relaxed);
        uint64_t idle_at = (traffic > last_active ? traffic : last_active) + ms->config.idle_timeout_ns;
        if (idle_at < deadline)
            deadline = idle_at;
    }
    return deadline;
}

/* Changes state under the shard lock (the seqlock writer side). */
void mem_set_state_locked(shard *sh, session *s, uint32_t from, uint32_t to)
{
    sync_seq_write_begin(&s->seq);
    atomic_store_explicit(&s->state, to, memory_order_release);
    sync_seq_write_end(&s->seq);
    mem_count_state(sh, from, -1);
    mem_count_state(sh, to, +1);
}

typedef enum timer_outcome { OUTCOME_EXPIRED, OUTCOME_CLOSED, OUTCOME_IDLE } timer_outcome;

typedef struct timer_result {
    session *s;
    timer_outcome outcome;
} timer_result;

typedef struct timer_batch {
    shard *sh;
    timer_result *items;
    size_t count;
    size_t capacity;
    const mem_store *ms;
} timer_batch;

static int batch_push(timer_batch *batch, session *s, timer_outcome outcome)
{
    if (batch->count == batch->capacity) {
        size_t grown = batch->capacity ? batch->capacity * 2 : 256;
        timer_result *items = mem_alloc(grown * sizeof(*items));
        if (items == NULL)
            return 0;
        if (batch->count)
            memcpy(items, batch->items, batch->count * sizeof(*items));
        mem_free(batch->items);
        batch->items = items;
        batch->capacity = grown;
    }
    batch->items[batch->count++] = (timer_result){s, outcome};
    return 1;
}

/* The wheel's verdict on one fired timer (shard lock held): 0 to let it
 * go (the session is in the batch for removal), or when to look again. */
static uint64_t on_timer(void *ctx, wheel_link *timer, uint64_t fire_ns)
{
    timer_batch *batch = ctx;
    const mem_store *ms = batch->ms;
    session *s = (session *)((char *)timer - offsetof(session, timer));
    uint32_t state = atomic_load_explicit(&s->state, memory_order_relaxed);
    if (state == AFSM_STATE_CLOSED) {
        uint64_t end = mem_timer_deadline(ms, s, state, 0);
        if (end > fire_ns)
            return end;
        return batch_push(batch, s, OUTCOME_CLOSED) ? 0 : fire_ns + 1;
    }
    uint64_t seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    while (!(seen & SESSION_EXPIRED_BIT)) {
        uint64_t deadline = mem_deadline(ms, s, seen);
        if (deadline > fire_ns) {
            /* Alive: maybe idle, then look again at the next deadline. */
            if (state == AFSM_STATE_ACTIVE && ms->config.idle_timeout_ns != 0 &&
                mem_timer_deadline(ms, s, state, seen) <= fire_ns && batch_push(batch, s, OUTCOME_IDLE)) {
                mem_set_state_locked(batch->sh, s, AFSM_STATE_ACTIVE, AFSM_STATE_IDLE);
                mem_count(ms, &batch->sh->idle_transitions);
                state = AFSM_STATE_IDLE;
            }
            return mem_timer_deadline(ms, s, state, seen);
        }
        /* The CAS decides expiry against any racing heartbeat. */
        if (atomic_compare_exchange_weak_explicit(&s->last_active_ns, &seen, seen | SESSION_EXPIRED_BIT,
                                                  memory_order_relaxed, memory_order_relaxed))
            break;
    }
    /* Decided; if the batch cannot grow, removal waits for the next tick. */
    return batch_push(batch, s, OUTCOME_EXPIRED) ? 0 : fire_ns + 1;
}

/* Timer work per lock hold: bounds how long one advance blocks the shard's
 * writers, however many sessions share a slot. */
#define ADVANCE_BUDGET 4096

/* Runs one batch of fired timers' outcomes, outside the shard lock. */
static size_t settle_batch(mem_store *ms, const timer_batch *batch)
{
    size_t expired = 0;
    for (size_t j = 0; j < batch->count; j++) {
        session *s = batch->items[j].s;
        switch (batch->items[j].outcome) {
        case OUTCOME_IDLE:
            mem_emit(ms, AFSM_EVENT_STATE_CHANGED, s, AFSM_STATE_ACTIVE, AFSM_STATE_IDLE, NULL, 0);
            break;
        case OUTCOME_CLOSED:
            mem_remove_session(ms, s, AFSM_EVENT_DELETED, AFSM_DELETE_CLOSED, MEM_REASON_CLOSED,
                               sizeof(MEM_REASON_CLOSED) - 1);
            break;
        case OUTCOME_EXPIRED:
            /* ENOTFOUND: a delete got there first and fired its own event. */
            expired += mem_remove_session(ms, s, AFSM_EVENT_EXPIRED, AFSM_DELETE_EXPIRED, MEM_REASON_EXPIRED,
                                          sizeof(MEM_REASON_EXPIRED) - 1) == AFSM_OK;
            break;
        }
    }
    return expired;
}

/* Follows wall-clock steps (NTP, a resumed VM) but not the jitter between
 * a coarse monotonic clock and a fine wall clock: re-sampled on every
 * advance, the offset would move each session's reported times by a few
 * milliseconds from one copy to the next. */
static void refresh_wall_offset(mem_store *ms)
{
    const int64_t step_ns = 1000000000;
    int64_t fresh = clock_wall_ns() - (int64_t)mem_now(ms);
    int64_t old = atomic_load_explicit(&ms->wall_offset_ns, memory_order_relaxed);
    if (fresh - old > step_ns || old - fresh > step_ns)
        atomic_store_explicit(&ms->wall_offset_ns, fresh, memory_order_relaxed);
}

/* Runs the shard's deferred frees that are safe now. Outside every epoch
 * section of this thread, so that with no reader anywhere ck_epoch_poll
 * frees everything at once. With readers about, one poll frees only the
 * epoch bucket it advances to, and the shards poll in turn, so one poll
 * each per advance would keep landing on the same bucket of a shard's
 * record and strand the rest: poll once per bucket. */
static void reclaim(shard *sh)
{
    sync_lock_acquire(&sh->lock);
    for (int bucket = 0; bucket < CK_EPOCH_LENGTH; bucket++)
        epoch_poll(sh->defer);
    sync_lock_release(&sh->lock);
}

afsm_status mem_advance(store *st, uint64_t now, size_t *expired)
{
    mem_store *ms = (mem_store *)st;
    refresh_wall_offset(ms);
    *expired = 0;
    timer_batch batch = {.ms = ms};
    afsm_status status = AFSM_OK;
    for (unsigned i = 0; i <= ms->shard_mask && status == AFSM_OK; i++) {
        shard *sh = &ms->shards[i];
        batch.sh = sh;
        int done = 0;
        while (!done) {
            /* One epoch section per batch: it keeps the batch's sessions
             * alive until they are settled, and ending it lets the frees
             * of the previous batches go ahead. */
            ck_epoch_record_t *e = epoch_enter();
            if (e == NULL) {
                status = AFSM_ENOMEM;
                break;
            }
            batch.count = 0;
            size_t budget = ADVANCE_BUDGET;
            sync_lock_acquire(&sh->lock);
            done = wheel_advance(&sh->timers, now, on_timer, &batch, &budget);
            sync_lock_release(&sh->lock);
            /* Removal takes each session's whole lock set, so it waits
             * until the shard lock is dropped. */
            *expired += settle_batch(ms, &batch);
            epoch_leave(e);
        }
        reclaim(sh);
    }
    mem_free(batch.items);
    if (status == AFSM_OK)
        atomic_store_explicit(&ms->wheels_reached_ns, now, memory_order_relaxed);
    return status;
}

/* Activity on an idle session makes it active again (idle detection on).
 * Rare: only the first activity after the idle transition takes the lock. */
void mem_reactivate(mem_store *ms, session *s)
{
    /* Handle calls run without an epoch section (the data plane's fast
     * path); the event below reads the user's entry, which a concurrent
     * delete may free: hold the epoch for the lock and the event. */
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return;
    shard *sh = &ms->shards[mem_shard_of_id(ms, &s->id)];
    int changed = 0;
    sync_lock_acquire(&sh->lock);
    uint64_t seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    if (!atomic_load_explicit(&s->removed, memory_order_relaxed) && !(seen & SESSION_EXPIRED_BIT) &&
        atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_IDLE) {
        mem_set_state_locked(sh, s, AFSM_STATE_IDLE, AFSM_STATE_ACTIVE);
        mem_count(ms, &sh->wake_transitions);
        /* The idle deadline is sooner than the expiry it was linked at. */
        if (s->timer.next != NULL) {
            wheel_remove(&sh->timers, &s->timer);
            wheel_add(&sh->timers, &s->timer, mem_timer_deadline(ms, s, AFSM_STATE_ACTIVE, seen));
        }
        changed = 1;
    }
    sync_lock_release(&sh->lock);
    if (changed)
        mem_emit(ms, AFSM_EVENT_STATE_CHANGED, s, AFSM_STATE_IDLE, AFSM_STATE_ACTIVE, NULL, 0);
    epoch_leave(e);
}
