/*
 * expiry.c: what the timing wheels decide when a timer fires, and time
 * moving on (afsm_engine_advance, the reaper thread).
 *
 * Lazy rescheduling: heartbeats and traffic only move numbers forward
 * without a lock; when a session's timer fires, the reaper recomputes what
 * is due (expiry, the idle deadline of an active session, the end of a
 * closed session's linger) and either acts or relinks the timer there.
 * Expiry is decided by a CAS on last_active_ns (SESSION_EXPIRED_BIT), which
 * excludes a racing heartbeat; going idle by a seq_cst store and re-check
 * that pairs with the heartbeat's (go_idle). Removals need each session's
 * whole lock set, so the wheel's verdicts are collected under the shard
 * lock, each with a reference to its record, and carried out after it, in
 * bounded batches, one session per epoch section, events after each.
 */
#include <assert.h>
#include <string.h>

#include "mem/idle_set.h"
#include "mem/index.h"
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

#define NO_EVENT UINT32_MAX

typedef struct timer_result {
    session *s;
    timer_outcome outcome;
    uint32_t idle_event; /* OUTCOME_IDLE: its event's number in idles, or NO_EVENT */
    /* Set while settling: the state it was removed in, or NO_EVENT when
     * this pass did not remove it (IDLE, or removed by someone else). */
    uint32_t removed_state;
} timer_result;

typedef struct timer_batch {
    shard *sh;
    timer_result *items;
    size_t count;
    size_t capacity;
    /* The IDLE events, captured under the shard lock where the session (and
     * so its user's entry) is still present: the change has happened, and
     * its event goes out even if the session is deleted before settling.
     * By session id too, for mem_event_prelude (mem/idle_set.h). */
    idle_set idles;
    /* One settling group's removal events (SETTLE_GROUP of them; only with
     * a callback), captured in the group's section, delivered after it. */
    mem_event *events;
    const mem_store *ms;
    size_t *budget; /* wheel_advance's: zeroed to stop the pass */
    bool failed;    /* the batch could not grow: report AFSM_ENOMEM */
    /* The batch this thread was delivering when a callback advanced the
     * engine again (this batch's), or NULL. */
    struct timer_batch *outer;
} timer_batch;

/* The batch whose events this thread is delivering, so that an event a
 * callback causes for a session still waiting in it goes out after that
 * session's IDLE event (mem_event_prelude). Initial-exec, as epoch.c's. */
static _Thread_local timer_batch *delivering __attribute__((tls_model("initial-exec")));

static bool grow(void **array, size_t *capacity, size_t count, size_t item_size)
{
    if (count < *capacity)
        return true;
    size_t grown = *capacity ? *capacity * 2 : 256;
    void *bigger = mem_alloc(grown * item_size);
    if (bigger == NULL)
        return false;
    if (count)
        memcpy(bigger, *array, count * item_size);
    mem_free(*array);
    *array = bigger;
    *capacity = grown;
    return true;
}

/* Empties the batch for the next turn of the pass. */
static void batch_reset(timer_batch *batch)
{
    batch->count = 0;
    idle_set_clear(&batch->idles);
}

/* Makes room in the batch for one session of this outcome (and its IDLE
 * event, with a callback). On failure the pass stops (the session's
 * decision waits for the next tick) and nothing has changed. */
static bool batch_reserve(timer_batch *batch, timer_outcome outcome)
{
    bool wants_event = outcome == OUTCOME_IDLE && batch->ms->config.emit != NULL;
    if (!grow((void **)&batch->items, &batch->capacity, batch->count, sizeof(*batch->items)) ||
        (wants_event && !idle_set_reserve(&batch->idles))) {
        batch->failed = true;
        *batch->budget = 0;
        return false;
    }
    return true;
}

/* Adds s to the reserved room with a reference of its own (home shard
 * lock held, s still linked, so refs >= 1): the batch is settled outside
 * every lock and epoch section, one session at a time, and the reference
 * keeps the record until then. */
static void batch_add(timer_batch *batch, session *s, timer_outcome outcome)
{
    uint32_t event = NO_EVENT;
    if (outcome == OUTCOME_IDLE && batch->ms->config.emit != NULL) {
        mem_event_capture(batch->ms, &batch->idles.events[batch->idles.count], AFSM_EVENT_STATE_CHANGED, s,
                          AFSM_STATE_ACTIVE, AFSM_STATE_IDLE, NULL, 0);
        event = idle_set_add(&batch->idles);
    }
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    batch->items[batch->count++] = (timer_result){s, outcome, event, NO_EVENT};
}

static bool batch_push(timer_batch *batch, session *s, timer_outcome outcome)
{
    if (!batch_reserve(batch, outcome))
        return false;
    batch_add(batch, s, outcome);
    return true;
}

mem_event *mem_event_prelude(const mem_store *ms, const session *s)
{
    /* Also the batches of the advances this one is nested in (a callback
     * advanced again): an outer batch's IDLE still pending goes out before
     * the inner advance's EXPIRED of the same session. Their arrays do not
     * move while they deliver. */
    for (timer_batch *batch = delivering; batch != NULL; batch = batch->outer) {
        if (batch->ms != ms)
            continue;
        mem_event *idle = idle_set_first_pending(&batch->idles, &s->id);
        if (idle != NULL)
            return idle;
    }
    return NULL;
}

/* ACTIVE -> IDLE, then the other half of the heartbeat's pairing
 * (dataplane.c): the IDLE store and the re-read of the activity stamps are
 * seq_cst, so either the heartbeat saw IDLE (and wakes the session) or this
 * sees the heartbeat, and takes the transition back before anyone was told.
 * True when the session stays idle. Shard lock held. */
static bool go_idle(timer_batch *batch, session *s, uint64_t fire_ns)
{
    shard *sh = batch->sh;
    /* One write section for the store and a possible take-back, so a copy
     * never shows an IDLE that no event or counter reports. */
    sync_seq_write_begin(&s->seq);
    atomic_store_explicit(&s->state, AFSM_STATE_IDLE, memory_order_seq_cst);
    uint64_t last = atomic_load_explicit(&s->last_active_ns, memory_order_seq_cst);
    uint64_t traffic = atomic_load_explicit(&s->last_traffic_ns, memory_order_seq_cst);
    uint64_t latest = traffic > last ? traffic : last;
    bool woke = (last & SESSION_EXPIRED_BIT) == 0 && latest + batch->ms->config.idle_timeout_ns > fire_ns;
    if (woke)
        atomic_store_explicit(&s->state, AFSM_STATE_ACTIVE, memory_order_release);
    sync_seq_write_end(&s->seq);
    if (woke)
        return false;
    mem_count_state(sh, AFSM_STATE_ACTIVE, -1);
    mem_count_state(sh, AFSM_STATE_IDLE, +1);
    return true;
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
                mem_timer_deadline(ms, s, state, seen) <= fire_ns) {
                /* Room first: once IDLE is stored, a Get may copy it, so
                 * the batch must take the session (and report it). */
                if (!batch_reserve(batch, OUTCOME_IDLE))
                    return fire_ns + 1; /* decide again next time */
                if (go_idle(batch, s, fire_ns)) {
                    batch_add(batch, s, OUTCOME_IDLE);
                    mem_count(ms, &batch->sh->idle_transitions);
                    state = AFSM_STATE_IDLE;
                }
            }
            seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed) & ~SESSION_EXPIRED_BIT;
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

/* The wheel's question when a cascade moves a timer (shard lock held):
 * when is s due now. A heartbeat since the timer was linked moves it on
 * (lazy rescheduling); a decided expiry waiting for room in a batch is
 * due at once. */
static uint64_t timer_deadline(void *ctx, const wheel_link *timer)
{
    const timer_batch *batch = ctx;
    const session *s = (const session *)((const char *)timer - offsetof(session, timer));
    uint64_t seen = atomic_load_explicit((_Atomic uint64_t *)&s->last_active_ns, memory_order_relaxed);
    if (seen & SESSION_EXPIRED_BIT)
        return 0;
    uint32_t state = atomic_load_explicit((_Atomic uint8_t *)&s->state, memory_order_relaxed);
    return mem_timer_deadline(batch->ms, s, state, seen);
}

/* on_timer's and timer_deadline's reads of a timer's record (state,
 * timeout and creation time in the first line, last_active_ns,
 * last_traffic_ns and refs in the second), fetched a few timers ahead: a
 * slot's timers are records scattered over the slab. */
static void timer_ahead(const wheel_link *timer)
{
    const char *s = (const char *)timer - offsetof(session, timer);
    __builtin_prefetch(s);
    __builtin_prefetch(s + 64, 1);
}

/* Timer work per lock hold: bounds how long one advance blocks the shard's
 * writers, however many sessions share a slot. */
#define ADVANCE_BUDGET 4096

/* Victims settled per lock hold and epoch section: each group takes the
 * union of its sessions' lock sets once, in ascending shard order (the
 * lockset rule, mem/shard.h), instead of three locks per session. Bounds
 * how long the group blocks writers on the shards it locks (a few
 * microseconds), and the events one group captures before delivering. */
#define SETTLE_GROUP 32

/* The shards a group locks, as a bitmap over shard indices. */
#define SHARD_WORDS ((4096 + 63) / 64) /* engine.c's SHARDS_MAX */

typedef struct shard_set {
    uint64_t bits[SHARD_WORDS];
    unsigned words; /* words in use: shard count / 64, rounded up */
} shard_set;

static void shard_set_add(shard_set *set, unsigned index)
{
    set->bits[index / 64] |= UINT64_C(1) << (index % 64);
}

static void shard_set_acquire(shard *shards, const shard_set *set)
{
    for (unsigned w = 0; w < set->words; w++)
        for (uint64_t b = set->bits[w]; b != 0; b &= b - 1)
            sync_lock_acquire(&shards[w * 64 + (unsigned)__builtin_ctzll(b)].lock);
}

static void shard_set_release(shard *shards, const shard_set *set)
{
    for (unsigned w = set->words; w-- > 0;) {
        for (uint64_t b = set->bits[w]; b != 0;) {
            unsigned top = 63u - (unsigned)__builtin_clzll(b);
            sync_lock_release(&shards[w * 64 + top].lock);
            b &= ~(UINT64_C(1) << top);
        }
    }
}

/* The lines mem_remove_locked writes besides the record: the user-list
 * neighbours and the user's entry.
 * Under the lock set (which guards the links), for a session not removed. */
static void prefetch_unlink(const session *s, const mem_place *place)
{
    session *next = atomic_load_explicit((_Atomic(session *) *)&s->user_next, memory_order_relaxed);
    if (next != NULL)
        __builtin_prefetch(&next->user_prev, 1);
    if (s->user_prev != NULL)
        __builtin_prefetch(&s->user_prev->user_next, 1);
    if (place->entry != NULL)
        __builtin_prefetch(place->entry, 1);
}

/* Starts fetching the table slots the removals of items[from, to) will
 * rewrite: the next group's, issued before this group takes its locks, so
 * that they arrive while its removals run instead of in a burst of their
 * own at the next group's start (a software pipeline). Hints only: the
 * ids are immutable and the batch's references keep the records; the
 * maps need the caller's epoch section. */
static void prefetch_removal_slots(const mem_store *ms, const timer_batch *batch, size_t from, size_t to)
{
    const shard *home = batch->sh; /* every item's */
    for (size_t j = from; j < to; j++) {
        const session *s = batch->items[j].s;
        if (batch->items[j].outcome == OUTCOME_IDLE)
            continue;
        const shard *conn = &ms->shards[mem_shard_of_connection(ms, &s->connection_id)];
        table_prefetch_removal(&home->sessions, table_hash_uuid(&s->id, home->sessions.seed));
        table_prefetch_removal(&conn->connections, table_hash_uuid(&s->connection_id, conn->connections.seed));
    }
}

/* Carries out the outcomes of items[from, to) of the batch (all of one
 * home shard), then delivers their events in item order with no epoch
 * section held. Returns how many sessions it expired. The batch's
 * references keep the records; the section keeps each user's entry, read
 * only once its record is seen not removed inside it (a delete retires the
 * entry through the epoch after marking the record). A session removed
 * since the wheel's verdict (a delete, or a callback of an earlier event)
 * is only let go: its remover fired its event. */
static size_t settle_group(mem_store *ms, timer_batch *batch, size_t from, size_t to)
{
    timer_result *items = batch->items;
    bool emit = ms->config.emit != NULL;
    unsigned home = (unsigned)(batch->sh - ms->shards);
    ck_epoch_record_t *e = epoch_enter(); /* cannot fail: mem_advance entered once */
    assert(e != NULL);
    shard_set set;
    set.words = (ms->shard_mask + 64) / 64;
    assert(set.words <= SHARD_WORDS); /* engine.c refuses more shards */
    memset(set.bits, 0, set.words * sizeof(set.bits[0]));
    shard_set_add(&set, home);
    /* Each removal's place, found once (for the set, the prefetches and
     * the removal) and in stages, so that a group's misses overlap where
     * the removals would take them one after another. Only for the items
     * seen not removed inside this section: a removed session's long-id
     * entry may be freed already (a callback of an earlier group may have
     * deleted it and advanced), and its place is never used. */
    mem_place places[SETTLE_GROUP];
    bool placed[SETTLE_GROUP];
    for (size_t j = from; j < to; j++) {
        session *s = items[j].s;
        mem_place *place = &places[j - from];
        placed[j - from] = items[j].outcome != OUTCOME_IDLE && !session_removed(s);
        if (!placed[j - from])
            continue;
        mem_place_locate(ms, s, place);
        shard_set_add(&set, (unsigned)(place->conn - ms->shards));
        shard_set_add(&set, (unsigned)(place->user - ms->shards));
        /* The two table slots each removal rewrites: at 1M sessions the
         * misses that dominate. (A removal compares addresses only, so its
         * probe reads no other record on its way: mem/table.h.) And the
         * user's entry, or for an inline id the users-table slot that
         * leads to it. */
        table_prefetch_removal(&place->home->sessions, place->id_hash);
        table_prefetch_removal(&place->conn->connections, place->connection_hash);
        index_prefetch_entry(place->user, s, place->user_hash);
    }
    /* The slots are in by now: the entries they lead to, then the
     * lookups, which find them arriving. */
    for (size_t j = from; j < to; j++)
        if (placed[j - from])
            index_prefetch_found_entry(places[j - from].user, items[j].s, places[j - from].user_hash);
    for (size_t j = from; j < to; j++)
        if (placed[j - from])
            mem_place_find_entry(items[j].s, &places[j - from]);
    prefetch_removal_slots(ms, batch, to, to + SETTLE_GROUP < batch->count ? to + SETTLE_GROUP : batch->count);
    shard_set_acquire(ms->shards, &set);
    size_t expired = 0;
    for (size_t j = from; j < to; j++)
        if (placed[j - from] && !atomic_load_explicit(&items[j].s->removed, memory_order_relaxed))
            prefetch_unlink(items[j].s, &places[j - from]);
    /* The user entries this group empties: each one's removal from its
     * users table is a miss no probe has brought in (a user's last session
     * going, every expiry for users with one session), so they are dropped
     * together after the removals, their slots fetched first. */
    user_entry *emptied[SETTLE_GROUP];
    unsigned long emptied_hash[SETTLE_GROUP];
    size_t emptied_count = 0;
    for (size_t j = from; j < to; j++) {
        timer_result *item = &items[j];
        session *s = item->s;
        /* The lock set is held, so `removed` cannot change under us; it
         * may have since the places were found, which only drops a shard. */
        item->removed_state = NO_EVENT;
        if (placed[j - from] && !atomic_load_explicit(&s->removed, memory_order_relaxed)) {
            item->removed_state = atomic_load_explicit(&s->state, memory_order_relaxed);
            bool closed = item->outcome == OUTCOME_CLOSED;
            user_entry *entry = mem_remove_placed_locked(ms, s, &places[j - from],
                                                         closed ? AFSM_DELETE_CLOSED : AFSM_DELETE_EXPIRED, 1);
            expired += !closed;
            /* Once per entry: a count of 0 leaves no session of its user
             * for a later item of the group. */
            if (atomic_load_explicit(&entry->count, memory_order_relaxed) == 0)
                emptied[emptied_count++] = entry;
        }
        /* The batch's reference; the home shard's lock is in the set. While
         * the section lasts, the record (freed through the epoch) stays. */
        mem_unref_home_locked(batch->sh, s);
    }
    for (size_t k = 0; k < emptied_count; k++)
        emptied_hash[k] = index_prepare_drop(&ms->shards[emptied[k]->shard_index], emptied[k]);
    for (size_t k = 0; k < emptied_count; k++)
        index_drop_prepared(&ms->shards[emptied[k]->shard_index], emptied[k], emptied_hash[k]);
    shard_set_release(ms->shards, &set);
    /* Events read the user's entry, which the drops above may have retired:
     * captured inside the section, delivered after it. */
    if (emit) {
        for (size_t j = from; j < to; j++) {
            timer_result *item = &items[j];
            if (item->removed_state == NO_EVENT) {
                batch->events[j - from].pending = false; /* for the hold below */
                continue;
            }
            bool closed = item->outcome == OUTCOME_CLOSED;
            mem_event_capture(ms, &batch->events[j - from], closed ? AFSM_EVENT_DELETED : AFSM_EVENT_EXPIRED, item->s,
                              item->removed_state, item->removed_state, closed ? MEM_REASON_CLOSED : MEM_REASON_EXPIRED,
                              closed ? sizeof(MEM_REASON_CLOSED) - 1 : sizeof(MEM_REASON_EXPIRED) - 1);
        }
    }
    epoch_leave(e);
    if (emit) {
        /* In item order: an IDLE before a later removal of the same
         * session (its prelude fires it first anyway). The removals are
         * held meanwhile: a callback that restores a later one's id has
         * that new life's events go out after its end. */
        mem_event_hold hold;
        mem_events_hold(ms, batch->events, to - from, &hold);
        for (size_t j = from; j < to; j++) {
            timer_result *item = &items[j];
            if (item->outcome == OUTCOME_IDLE) {
                /* Unless a callback's event for this session already sent it. */
                if (item->idle_event != NO_EVENT)
                    mem_event_fire(ms, &batch->idles.events[item->idle_event]);
            } else if (item->removed_state != NO_EVENT) {
                mem_event_fire(ms, &batch->events[j - from]);
            }
        }
        mem_events_release(&hold);
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

void mem_store_tend(store *st)
{
    mem_store *ms = (mem_store *)st;
    refresh_wall_offset(ms);
    for (unsigned i = 0; i <= ms->shard_mask; i++)
        reclaim(&ms->shards[i]);
}

afsm_status mem_advance(store *st, uint64_t now, size_t *expired)
{
    mem_store *ms = (mem_store *)st;
    refresh_wall_offset(ms);
    *expired = 0;
    /* The thread's epoch record, allocated now if this is its first call:
     * every section below then enters without failing. */
    ck_epoch_record_t *first = epoch_enter();
    if (first == NULL)
        return AFSM_ENOMEM;
    epoch_leave(first);
    timer_batch batch = {.ms = ms};
    /* Seeded as the tables are, off their seeds (mem/idle_set.h). */
    idle_set_init(&batch.idles, ms->seed ^ UINT64_C(0xa0761d6478bd642f));
    if (ms->config.emit != NULL) {
        batch.events = mem_alloc(SETTLE_GROUP * sizeof(*batch.events));
        if (batch.events == NULL)
            return AFSM_ENOMEM; /* nothing has changed yet */
    }
    const wheel_owner owner = {.due = on_timer, .deadline = timer_deadline, .ahead = timer_ahead, .ctx = &batch};
    for (unsigned i = 0; i <= ms->shard_mask && !batch.failed; i++) {
        shard *sh = &ms->shards[i];
        batch.sh = sh;
        /* Before the wheel, so that no deferred count waits past this
         * tick: a session the wheel removes below has had them moved in
         * while it could still be read (events carry no stats). */
        mem_fold_handles(sh);
        int done = 0;
        while (!done && !batch.failed) {
            batch_reset(&batch);
            size_t budget = ADVANCE_BUDGET;
            batch.budget = &budget;
            sync_lock_acquire(&sh->lock);
            done = wheel_advance(&sh->timers, now, &owner, &budget);
            sync_lock_release(&sh->lock);
            /* Removal takes each session's whole lock set, so it waits
             * until the shard lock is dropped. */
            timer_batch *outer = delivering; /* a callback may advance too */
            batch.outer = outer;
            delivering = &batch;
            for (size_t j = 0; j < batch.count; j += SETTLE_GROUP)
                *expired +=
                    settle_group(ms, &batch, j, j + SETTLE_GROUP < batch.count ? j + SETTLE_GROUP : batch.count);
            delivering = outer;
        }
        reclaim(sh);
    }
    mem_free(batch.items);
    idle_set_free(&batch.idles);
    mem_free(batch.events);
    /* A pass cut short by ENOMEM left the rest due: the wheels are not
     * caught up (reaper lag keeps growing) and the next call resumes. */
    if (batch.failed)
        return AFSM_ENOMEM;
    atomic_store_explicit(&ms->wheels_reached_ns, now, memory_order_relaxed);
    return AFSM_OK;
}

/* CONNECTING or IDLE -> ACTIVE on activity (mem_store.h). Rare: only the
 * first heartbeat of a session, or the first activity after it went idle,
 * gets here; every later one sees ACTIVE and stays lock-free. */
afsm_status mem_activate(mem_store *ms, session *s, mem_event *ev)
{
    ev->pending = false;
    /* Checked here, on the rare path, so the heartbeat's stays as it is. */
    if (ms->config.external_activation)
        return AFSM_OK;
    /* Handle calls run without an epoch section; the event reads the
     * user's entry, which a concurrent delete may retire: hold a section
     * for the lock and the capture, and check `removed` inside it. */
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM; /* this thread's first record: nothing changed */
    shard *sh = mem_home(ms, s);
    uint32_t from = 0;
    sync_lock_acquire(&sh->lock);
    uint64_t seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    uint32_t state = atomic_load_explicit(&s->state, memory_order_relaxed);
    if (!atomic_load_explicit(&s->removed, memory_order_relaxed) && !(seen & SESSION_EXPIRED_BIT) &&
        (state == AFSM_STATE_CONNECTING || state == AFSM_STATE_IDLE)) {
        from = state;
        mem_set_state_locked(sh, s, from, AFSM_STATE_ACTIVE);
        if (from == AFSM_STATE_IDLE)
            mem_count(ms, &sh->wake_transitions);
        /* Under idle detection an active session's next look (its idle
         * deadline) is sooner than the expiry it was linked at. */
        if (s->timer.next != NULL && ms->config.idle_timeout_ns != 0) {
            wheel_remove(&sh->timers, &s->timer);
            wheel_add(&sh->timers, &s->timer, mem_timer_deadline(ms, s, AFSM_STATE_ACTIVE, seen));
        }
    }
    sync_lock_release(&sh->lock);
    if (from != 0)
        mem_event_capture(ms, ev, AFSM_EVENT_STATE_CHANGED, s, from, AFSM_STATE_ACTIVE, NULL, 0);
    epoch_leave(e);
    return AFSM_OK;
}
