/*
 * dataplane.c: what a packet loop calls per packet: heartbeat and stats
 * additions, by id or through a pinned handle. Atomics only, no lock: a
 * heartbeat is one CAS that raises last_active_ns (so a late heartbeat
 * never moves a deadline back), stats are independent atomic adds that
 * saturate at 2^64-1. The only lock taken per packet is the rare change to
 * ACTIVE: a session's first heartbeat (CONNECTING), or the first activity
 * after it went IDLE.
 *
 * afsm_handle_packet (mem_handle_packet) does both in one pass at the
 * caller's clock reading and defers the stats of the handle's owner thread
 * in the handle (plain loads and stores: no read-modify-write per packet);
 * folds move them into the session with the same saturating atomic adds,
 * at every advance and at release, under the home shard's handles_lock (a
 * leaf lock that also guards the shard's array of deferring handles: a
 * handle's first packet (the claim), release and the fold pass take it,
 * nothing else is taken inside it; never taken per packet).
 * Invariant: session counter = what was added directly + the sum over its
 * handles of folded; folded <= added (the owner's running totals), and
 * added - folded is what readers do not see yet.
 */
#include <string.h>

#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/epoch.h"
#include "util/errdetail.h"

/* Whether activity in this state makes the session ACTIVE: a heartbeat
 * moves CONNECTING and IDLE there (the old service's "mark as active");
 * traffic wakes IDLE only under idle detection. */
static bool heartbeat_activates(uint32_t state)
{
    return state == AFSM_STATE_CONNECTING || state == AFSM_STATE_IDLE;
}

/* The two per-packet bodies are forced inline: with two callers each (by
 * id, by handle) gcc stopped inlining them, which cost ~30 instructions a
 * call under callgrind.
 *
 * The heartbeat itself; *activate tells the caller to call mem_activate.
 * The CAS and the state load after it are seq_cst, pairing with the
 * reaper's seq_cst IDLE store and its re-read of last_active_ns
 * (expiry.c): of "the reaper stored IDLE" and "the heartbeat raised
 * last_active", at least one side sees the other, so a session never stays
 * idle after a heartbeat. On x86-64 both cost what relaxed ones do (the CAS
 * is a locked instruction either way; loads are plain moves). */
static inline __attribute__((always_inline)) afsm_status
heartbeat_at(mem_store *ms, session *s, uint64_t now, bool caller_now, uint64_t *remaining_ns, bool *activate)
{
    *activate = false;
    if (session_removed(s))
        return AFSM_ENOTFOUND;
    if (atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_CLOSED)
        return AFSM_ECLOSED;
    uint64_t seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    /* A caller's reading (afsm_handle_packet) is checked against the clock
     * only when it would raise the stamp: once per clock tick per session,
     * and before anything is judged by it, so a reading from the future is
     * refused instead of stretching the deadline. */
    /* The deadline is judged at the clock then, not at the caller's
     * reading: a stale reading must not revive a session that readers
     * have already seen expired (afsm_session_get judges at the clock). */
    uint64_t judge_at = now;
    if (caller_now && (seen & ~SESSION_EXPIRED_BIT) < now) {
        judge_at = mem_now(ms);
        if (now > judge_at)
            return errdetail_set(AFSM_EINVAL,
                                 "now_ns: %llu is ahead of the engine clock (pass a reading of afsm_engine_now)",
                                 (unsigned long long)now);
    }
    for (;;) {
        /* Checked inside the loop: the reaper's CAS and ours exclude each
         * other, so success here means the deadline had not passed. */
        if ((seen & SESSION_EXPIRED_BIT) || (mem_deadline(ms, s, seen) <= judge_at && !ms->config.external_expiry))
            return AFSM_EEXPIRED;
        if (seen >= now)
            break; /* a newer heartbeat already landed (and looked at the state) */
        if (atomic_compare_exchange_weak_explicit(&s->last_active_ns, &seen, now, memory_order_seq_cst,
                                                  memory_order_relaxed)) {
            seen = now;
            break;
        }
    }
    if (remaining_ns != NULL)
        *remaining_ns = mem_deadline(ms, s, seen) - now;
    *activate = heartbeat_activates(atomic_load_explicit(&s->state, memory_order_seq_cst));
    return AFSM_OK;
}

static inline __attribute__((always_inline)) afsm_status heartbeat_session(mem_store *ms, session *s,
                                                                           uint64_t *remaining_ns, bool *activate)
{
    return heartbeat_at(ms, s, mem_now(ms), false, remaining_ns, activate);
}

/* Adds delta to a counter, stopping at 2^64-1 instead of wrapping. */
static void add_saturating(_Atomic uint64_t *counter, uint64_t delta)
{
    uint64_t seen = atomic_load_explicit(counter, memory_order_relaxed);
    uint64_t next;
    do {
        next = seen > UINT64_MAX - delta ? UINT64_MAX : seen + delta;
    } while (next != seen &&
             !atomic_compare_exchange_weak_explicit(counter, &seen, next, memory_order_relaxed, memory_order_relaxed));
}

static inline __attribute__((always_inline)) afsm_status add_stats_session(mem_store *ms, session *s,
                                                                           const afsm_stats *d, bool *activate)
{
    *activate = false;
    if (session_removed(s))
        return AFSM_ENOTFOUND;
    uint64_t now = mem_now(ms);
    if (mem_expired(ms, s, now))
        return AFSM_EEXPIRED;
    if (d->packets_sent)
        add_saturating(&s->packets_sent, d->packets_sent);
    if (d->packets_received)
        add_saturating(&s->packets_received, d->packets_received);
    if (d->bytes_sent)
        add_saturating(&s->bytes_sent, d->bytes_sent);
    if (d->bytes_received)
        add_saturating(&s->bytes_received, d->bytes_received);
    if (d->retransmissions)
        add_saturating(&s->retransmissions, d->retransmissions);
    if (d->current_rtt_ms)
        atomic_store_explicit(&s->rtt_ms, d->current_rtt_ms, memory_order_relaxed);
    if (ms->config.idle_timeout_ns == 0)
        return AFSM_OK;
    uint32_t state = atomic_load_explicit(&s->state, memory_order_relaxed);
    if (state == AFSM_STATE_CLOSED)
        return AFSM_OK;
    /* Traffic is activity: it keeps an active session from going idle and
     * wakes an idle one, but (unlike a heartbeat) does not move the expiry
     * deadline. Not for a closed session: there last_traffic_ns holds when
     * it closed, and traffic must not prolong its linger. The stamp is
     * stored only when the clock has moved (a coarse clock moves every few
     * ms), and seq_cst like the heartbeat's CAS, for the same pairing with
     * the reaper. */
    if (atomic_load_explicit(&s->last_traffic_ns, memory_order_relaxed) < now) {
        atomic_store_explicit(&s->last_traffic_ns, now, memory_order_seq_cst);
        *activate = atomic_load_explicit(&s->state, memory_order_seq_cst) == AFSM_STATE_IDLE;
    } else {
        *activate = state == AFSM_STATE_IDLE;
    }
    return AFSM_OK;
}

/* By id: the lookup's section ends before the activation's event fires. */
afsm_status mem_heartbeat(store *st, const afsm_uuid *id, uint64_t *remaining_ns)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    mem_event ev;
    ev.pending = false; /* not the whole struct: its user id buffer is 257 bytes */
    bool activate = false;
    session *s = mem_lookup(ms, id);
    afsm_status status = s != NULL ? heartbeat_session(ms, s, remaining_ns, &activate) : AFSM_ENOTFOUND;
    if (activate)
        (void)mem_activate(ms, s, &ev); /* inside our section: cannot fail */
    epoch_leave(e);
    mem_event_fire(ms, &ev);
    return status;
}

afsm_status mem_add_stats(store *st, const afsm_uuid *id, const afsm_stats *delta)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    mem_event ev;
    ev.pending = false; /* not the whole struct: its user id buffer is 257 bytes */
    bool activate = false;
    session *s = mem_lookup(ms, id);
    afsm_status status = s != NULL ? add_stats_session(ms, s, delta, &activate) : AFSM_ENOTFOUND;
    if (activate)
        (void)mem_activate(ms, s, &ev); /* inside our section: cannot fail */
    epoch_leave(e);
    mem_event_fire(ms, &ev);
    return status;
}

/* ---- pinned handles ------------------------------------------------------ */

static void fold_handle(mem_handle *h);

afsm_status mem_pin(store *st, const afsm_uuid *id, int by_connection, store_handle **out)
{
    mem_store *ms = (mem_store *)st;
    mem_handle *h = mem_aligned_alloc(MEM_HANDLE_ALIGN, MEM_HANDLE_SIZE);
    if (h == NULL)
        return AFSM_ENOMEM;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL) {
        mem_free(h);
        return AFSM_ENOMEM;
    }
    session *s = by_connection ? mem_lookup_connection(ms, id) : mem_lookup(ms, id);
    afsm_status status = AFSM_ENOTFOUND;
    if (s != NULL && mem_expired(ms, s, mem_now(ms))) {
        status = AFSM_EEXPIRED;
    } else if (s != NULL) {
        /* Take a reference only while one still exists: a record whose
         * count reached zero is already on its way to being freed. */
        uint32_t refs = atomic_load_explicit(&s->refs, memory_order_relaxed);
        while (refs != 0 && !atomic_compare_exchange_weak_explicit(&s->refs, &refs, refs + 1, memory_order_acq_rel,
                                                                   memory_order_relaxed)) {
        }
        if (refs != 0)
            status = AFSM_OK;
    }
    epoch_leave(e);
    if (status != AFSM_OK) {
        mem_free(h);
        return status;
    }
    h->base.ops = ms->base.ops;
    h->ms = ms;
    h->s = s;
    atomic_init(&h->owner, NULL);
    for (int i = 0; i < HANDLE_COUNTERS; i++) {
        atomic_init(&h->added[i], 0);
        atomic_init(&h->folded[i], 0);
    }
    h->slot = 0; /* listed by its first packet (claim) */
    atomic_fetch_add_explicit(&ms->pinned, 1, memory_order_relaxed);
    *out = &h->base;
    return AFSM_OK;
}

/* Through a handle no section is held (the pin's reference keeps the
 * record); mem_activate takes its own for the rare state change. */
afsm_status mem_handle_heartbeat(store_handle *base, uint64_t *remaining_ns)
{
    mem_handle *h = (mem_handle *)base;
    /* A state change may need a section: make sure this thread has its
     * record before anything lands, so ENOMEM means nothing was done. */
    if (!epoch_thread_ready())
        return AFSM_ENOMEM;
    bool activate;
    afsm_status status = heartbeat_session(h->ms, h->s, remaining_ns, &activate);
    if (activate) {
        mem_event ev;
        (void)mem_activate(h->ms, h->s, &ev); /* cannot fail: the record exists */
        mem_event_fire(h->ms, &ev);
    }
    return status;
}

afsm_status mem_handle_add_stats(store_handle *base, const afsm_stats *delta)
{
    mem_handle *h = (mem_handle *)base;
    /* A state change may need a section: make sure this thread has its
     * record before anything lands, so ENOMEM means nothing was done. */
    if (!epoch_thread_ready())
        return AFSM_ENOMEM;
    bool activate;
    afsm_status status = add_stats_session(h->ms, h->s, delta, &activate);
    if (activate) {
        mem_event ev;
        (void)mem_activate(h->ms, h->s, &ev); /* cannot fail: the record exists */
        mem_event_fire(h->ms, &ev);
    }
    return status;
}

/* ---- packets: deferred counters ------------------------------------------ */

/* The session counter that handle counter i folds into (afsm_stats order). */
static _Atomic uint64_t *session_counter(session *s, int i)
{
    switch (i) {
    case 0:
        return &s->packets_sent;
    case 1:
        return &s->packets_received;
    case 2:
        return &s->bytes_sent;
    case 3:
        return &s->bytes_received;
    default:
        return &s->retransmissions;
    }
}

static uint64_t delta_counter(const afsm_stats *d, int i)
{
    switch (i) {
    case 0:
        return d->packets_sent;
    case 1:
        return d->packets_received;
    case 2:
        return d->bytes_sent;
    case 3:
        return d->bytes_received;
    default:
        return d->retransmissions;
    }
}

/* Moves what the handle's owner added since the last fold into the
 * session. Home shard's handles_lock held (the only writer of folded). The
 * owner's stores are read as they are: one it makes meanwhile stays in
 * added and is moved by the next fold. Each difference is below 2^61
 * (the owner's bounds, defer_stats). */
static void fold_handle(mem_handle *h)
{
    for (int i = 0; i < HANDLE_COUNTERS; i++) {
        uint64_t added = atomic_load_explicit(&h->added[i], memory_order_relaxed);
        uint64_t folded = atomic_load_explicit(&h->folded[i], memory_order_relaxed);
        if (added != folded) {
            add_saturating(session_counter(h->s, i), added - folded);
            atomic_store_explicit(&h->folded[i], added, memory_order_relaxed);
        }
    }
}

/* Prefetch distances of the pass: the handle's two lines, then (once its
 * first line is in) the session line with the counters. */
#define FOLD_AHEAD_HANDLE  16
#define FOLD_AHEAD_SESSION 8

void mem_fold_handles(shard *sh)
{
    sync_lock_acquire(&sh->handles_lock);
    mem_handle **v = sh->deferring;
    size_t n = sh->deferring_count;
    for (size_t i = 0; i < n; i++) {
        if (i + FOLD_AHEAD_HANDLE < n) {
            __builtin_prefetch(v[i + FOLD_AHEAD_HANDLE]);
            __builtin_prefetch(&v[i + FOLD_AHEAD_HANDLE]->folded[0]);
        }
        if (i + FOLD_AHEAD_SESSION < n)
            __builtin_prefetch(&v[i + FOLD_AHEAD_SESSION]->s->packets_sent, 1);
        fold_handle(v[i]);
    }
    sync_lock_release(&sh->handles_lock);
}

/* Home shard lock held (handles_lock nests inside it: nothing takes a
 * shard lock while holding handles_lock). Folds the handles of s that
 * defer, found by a scan of the home shard's array: only a close of a
 * session that still has a pinned handle pays it, and the recipe
 * (release, then close) does not. */
void mem_fold_session(mem_store *ms, session *s)
{
    shard *home = mem_home(ms, s);
    sync_lock_acquire(&home->handles_lock);
    for (size_t i = 0; i < home->deferring_count; i++) {
        if (home->deferring[i]->s == s)
            fold_handle(home->deferring[i]);
    }
    sync_lock_release(&home->handles_lock);
}

/* Lists h in its home shard's deferring array. handles_lock held. */
static bool list_deferring(shard *home, mem_handle *h)
{
    if (home->deferring_count == home->deferring_capacity) {
        size_t capacity = home->deferring_capacity ? 2 * home->deferring_capacity : 16;
        mem_handle **grown = mem_alloc(capacity * sizeof(*grown));
        if (grown == NULL)
            return false;
        if (home->deferring_count)
            memcpy(grown, home->deferring, home->deferring_count * sizeof(*grown));
        mem_free(home->deferring);
        home->deferring = grown;
        home->deferring_capacity = capacity;
    }
    home->deferring[home->deferring_count++] = h;
    h->slot = home->deferring_count;
    return true;
}

/* The owner of a handle that could not be listed (no memory): nobody
 * defers through it, every packet adds straight to the session. */
static char no_owner;

/* Bounds that keep a fold's difference exact without reading folded per
 * packet: a deferred delta is below 2^32, and an owner's running total
 * never reaches 2^61 (an add that would take it there goes straight to the
 * session instead: after 2 EiB through one handle, that handle's counters
 * cost what afsm_handle_add_stats does). So 0 <= added - folded < 2^61. */
#define DEFER_DELTA_SHIFT 32
#define DEFER_TOTAL_SHIFT 61

/* The owner's half: plain loads and stores of its own running totals, no
 * read-modify-write, and only the handle's first cache line unless
 * retransmissions are counted. False (nothing added) when a bound says add
 * directly. Straight-line on purpose: one branch for all the bounds. */
static inline __attribute__((always_inline)) bool defer_stats(mem_handle *h, const afsm_stats *d)
{
    uint64_t r = d->retransmissions;
    uint64_t n0 = atomic_load_explicit(&h->added[0], memory_order_relaxed) + d->packets_sent;
    uint64_t n1 = atomic_load_explicit(&h->added[1], memory_order_relaxed) + d->packets_received;
    uint64_t n2 = atomic_load_explicit(&h->added[2], memory_order_relaxed) + d->bytes_sent;
    uint64_t n3 = atomic_load_explicit(&h->added[3], memory_order_relaxed) + d->bytes_received;
    uint64_t n4 = r != 0 ? atomic_load_explicit(&h->added[4], memory_order_relaxed) + r : 0;
    uint64_t deltas = d->packets_sent | d->packets_received | d->bytes_sent | d->bytes_received | r;
    if ((deltas >> DEFER_DELTA_SHIFT) | ((n0 | n1 | n2 | n3 | n4) >> DEFER_TOTAL_SHIFT))
        return false;
    atomic_store_explicit(&h->added[0], n0, memory_order_relaxed);
    atomic_store_explicit(&h->added[1], n1, memory_order_relaxed);
    atomic_store_explicit(&h->added[2], n2, memory_order_relaxed);
    atomic_store_explicit(&h->added[3], n3, memory_order_relaxed);
    if (r != 0)
        atomic_store_explicit(&h->added[4], n4, memory_order_relaxed);
    return true;
}

/* Whether the calling thread owns h's deferred counters: the first thread
 * to send a packet through h claims it (once, under handles_lock, which
 * also lists h for the folds). Identified by its epoch record, unique
 * among live threads; a record is reused only after its thread has
 * exited, when no other writer of the counters exists. A reader of a
 * stale NULL takes the lock and sees the owner set. */
static __attribute__((noinline)) bool claim(mem_handle *h, void *me)
{
    shard *home = mem_home(h->ms, h->s);
    sync_lock_acquire(&home->handles_lock);
    void *owner = atomic_load_explicit(&h->owner, memory_order_relaxed);
    if (owner == NULL) {
        owner = list_deferring(home, h) ? me : (void *)&no_owner;
        atomic_store_explicit(&h->owner, owner, memory_order_relaxed);
    }
    sync_lock_release(&home->handles_lock);
    return owner == me;
}

static inline __attribute__((always_inline)) bool owns(mem_handle *h)
{
    void *me = epoch_thread_record;
    void *owner = atomic_load_explicit(&h->owner, memory_order_relaxed);
    if (owner == NULL)
        return claim(h, me);
    return owner == me;
}

/* The rare change to ACTIVE, out of line: its event's 400-byte frame and
 * the registers it needs stay off the per-packet path. */
static __attribute__((noinline)) void activate_and_fire(mem_store *ms, session *s)
{
    mem_event ev;
    (void)mem_activate(ms, s, &ev); /* cannot fail: the record exists */
    mem_event_fire(ms, &ev);
}

/* Heartbeat at the caller's now, then (when it was taken) the stats: by
 * the owner into the handle, by any other thread straight into the
 * session as afsm_handle_add_stats does. No traffic stamp: the heartbeat
 * just raised last_active_ns to now, and the idle deadline is the later of
 * the two stamps, so a traffic stamp would change nothing. */
afsm_status mem_handle_packet(store_handle *base, uint64_t now, const afsm_stats *d, uint64_t *remaining_ns)
{
    mem_handle *h = (mem_handle *)base;
    /* A state change may need a section, and the record identifies the
     * owner: make sure this thread has it before anything lands. */
    if (!epoch_thread_ready())
        return AFSM_ENOMEM;
    mem_store *ms = h->ms;
    session *s = h->s;
    bool activate;
    afsm_status status = heartbeat_at(ms, s, now, true, remaining_ns, &activate);
    if (status == AFSM_OK) {
        if (!owns(h) || !defer_stats(h, d)) {
            for (int i = 0; i < HANDLE_COUNTERS; i++) {
                uint64_t delta = delta_counter(d, i);
                if (delta != 0)
                    add_saturating(session_counter(s, i), delta);
            }
        }
        if (d->current_rtt_ms)
            atomic_store_explicit(&s->rtt_ms, d->current_rtt_ms, memory_order_relaxed);
    }
    if (activate)
        activate_and_fire(ms, s);
    return status;
}

void mem_handle_session_id(const store_handle *base, afsm_uuid *out)
{
    const mem_handle *h = (const mem_handle *)base;
    *out = h->s->id;
}

void mem_handle_release(store_handle *base)
{
    mem_handle *h = (mem_handle *)base;
    mem_store *ms = h->ms;
    shard *sh = mem_home(ms, h->s);
    /* The last fold: release comes after the handle's last use (afsm.h),
     * so it sees every packet's counters; the reference we still hold keeps
     * the record for it. */
    sync_lock_acquire(&sh->handles_lock);
    if (h->slot != 0) {
        fold_handle(h);
        mem_handle *last = sh->deferring[--sh->deferring_count];
        sh->deferring[h->slot - 1] = last;
        last->slot = h->slot;
        h->slot = 0;
    }
    sync_lock_release(&sh->handles_lock);
    sync_lock_acquire(&sh->lock);
    mem_unref_locked(ms, h->s);
    sync_lock_release(&sh->lock);
    atomic_fetch_sub_explicit(&ms->pinned, 1, memory_order_relaxed);
    mem_free(h);
}

/* The per-item work, for the staged batches (batch.c). */
afsm_status mem_heartbeat_session(mem_store *ms, session *s, uint64_t *remaining_ns, bool *activate)
{
    return heartbeat_session(ms, s, remaining_ns, activate);
}

afsm_status mem_add_stats_session(mem_store *ms, session *s, const afsm_stats *delta, bool *activate)
{
    return add_stats_session(ms, s, delta, activate);
}
