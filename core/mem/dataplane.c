/*
 * dataplane.c: what a packet loop calls per packet: heartbeat and stats
 * additions, by id or through a pinned handle. Atomics only, no lock: a
 * heartbeat is one CAS that raises last_active_ns (so a late heartbeat
 * never moves a deadline back), stats are independent atomic adds that
 * saturate at 2^64-1. The only lock taken here is the rare change to
 * ACTIVE: a session's first heartbeat (CONNECTING), or the first activity
 * after it went IDLE.
 */
#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/epoch.h"

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
static inline __attribute__((always_inline)) afsm_status heartbeat_session(mem_store *ms, session *s,
                                                                           uint64_t *remaining_ns, bool *activate)
{
    *activate = false;
    if (session_removed(s))
        return AFSM_ENOTFOUND;
    if (atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_CLOSED)
        return AFSM_ECLOSED;
    uint64_t now = mem_now(ms);
    uint64_t seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    for (;;) {
        /* Checked inside the loop: the reaper's CAS and ours exclude each
         * other, so success here means the deadline had not passed. */
        if ((seen & SESSION_EXPIRED_BIT) || (mem_deadline(ms, s, seen) <= now && !ms->config.external_expiry))
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

afsm_status mem_pin(store *st, const afsm_uuid *id, int by_connection, store_handle **out)
{
    mem_store *ms = (mem_store *)st;
    mem_handle *h = mem_alloc(sizeof(*h));
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
