/*
 * dataplane.c: what a packet loop calls per packet: heartbeat and stats
 * additions, by id or through a pinned handle. Atomics only, no lock: a
 * heartbeat is one CAS that raises last_active_ns (so a late heartbeat
 * never moves a deadline back), stats are independent atomic adds. The
 * only lock taken here is the rare wake-up of an idle session.
 */
#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/epoch.h"

static afsm_status heartbeat_session(mem_store *ms, session *s, uint64_t *remaining_ns)
{
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
            break; /* a newer heartbeat already landed: never move back */
        if (atomic_compare_exchange_weak_explicit(&s->last_active_ns, &seen, now, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            seen = now;
            break;
        }
    }
    if (remaining_ns != NULL)
        *remaining_ns = mem_deadline(ms, s, seen) - now;
    if (ms->config.idle_timeout_ns != 0 && atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_IDLE)
        mem_reactivate(ms, s);
    return AFSM_OK;
}

static afsm_status add_stats_session(mem_store *ms, session *s, const afsm_stats *d)
{
    if (session_removed(s))
        return AFSM_ENOTFOUND;
    if (mem_expired(ms, s, mem_now(ms)))
        return AFSM_EEXPIRED;
    if (d->packets_sent)
        atomic_fetch_add_explicit(&s->packets_sent, d->packets_sent, memory_order_relaxed);
    if (d->packets_received)
        atomic_fetch_add_explicit(&s->packets_received, d->packets_received, memory_order_relaxed);
    if (d->bytes_sent)
        atomic_fetch_add_explicit(&s->bytes_sent, d->bytes_sent, memory_order_relaxed);
    if (d->bytes_received)
        atomic_fetch_add_explicit(&s->bytes_received, d->bytes_received, memory_order_relaxed);
    if (d->retransmissions)
        atomic_fetch_add_explicit(&s->retransmissions, d->retransmissions, memory_order_relaxed);
    if (d->current_rtt_ms)
        atomic_store_explicit(&s->rtt_ms, d->current_rtt_ms, memory_order_relaxed);
    uint32_t state = atomic_load_explicit(&s->state, memory_order_relaxed);
    if (ms->config.idle_timeout_ns != 0 && state != AFSM_STATE_CLOSED) {
        /* Traffic is activity: it keeps an active session from going idle
         * and wakes an idle one, but (unlike a heartbeat) does not move the
         * expiry deadline. Not for a closed session: there last_traffic_ns
         * holds when it closed, and traffic must not prolong its linger. */
        atomic_store_explicit(&s->last_traffic_ns, mem_now(ms), memory_order_relaxed);
        if (state == AFSM_STATE_IDLE)
            mem_reactivate(ms, s);
    }
    return AFSM_OK;
}

afsm_status mem_heartbeat(store *st, const afsm_uuid *id, uint64_t *remaining_ns)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    session *s = mem_lookup(ms, id);
    afsm_status status = s != NULL ? heartbeat_session(ms, s, remaining_ns) : AFSM_ENOTFOUND;
    epoch_leave(e);
    return status;
}

afsm_status mem_add_stats(store *st, const afsm_uuid *id, const afsm_stats *delta)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    session *s = mem_lookup(ms, id);
    afsm_status status = s != NULL ? add_stats_session(ms, s, delta) : AFSM_ENOTFOUND;
    epoch_leave(e);
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

afsm_status mem_handle_heartbeat(store_handle *base, uint64_t *remaining_ns)
{
    mem_handle *h = (mem_handle *)base;
    return heartbeat_session(h->ms, h->s, remaining_ns);
}

afsm_status mem_handle_add_stats(store_handle *base, const afsm_stats *delta)
{
    mem_handle *h = (mem_handle *)base;
    return add_stats_session(h->ms, h->s, delta);
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
