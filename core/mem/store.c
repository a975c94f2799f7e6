/*
 * store.c: the in-memory store, the operations behind store.h.
 *
 * Reads (get, heartbeat, stats, list) run inside an epoch section and take
 * no lock. Writes take the lock set of the shards they touch (shard.h),
 * change every index together, then fire their events after releasing the
 * locks but before leaving their epoch section, so the records an event
 * describes cannot be freed under it.
 *
 * Expiry: each shard's wheel holds its sessions' deadlines. Heartbeats only
 * raise last_active_ns; when a timer fires the reaper recomputes the
 * deadline and relinks the timer if it moved. Deciding expiry is a CAS that
 * sets SESSION_EXPIRED_BIT, so a heartbeat that succeeded always happened
 * before the deadline and the session survives it. Removal then takes the
 * full lock set; `removed` (under the locks) makes delete-vs-expiry fire
 * exactly one event.
 */
#include <stdlib.h>
#include <string.h>

#include "mem/index.h"
#include "mem/session.h"
#include "mem/shard.h"
#include "store.h"
#include "util/alloc.h"
#include "util/clock.h"
#include "util/epoch.h"
#include "util/uuid.h"

typedef struct mem_store {
    store base;
    store_config config;
    char server_addr[AFSM_SERVER_ADDR_MAX + 1];
    uint32_t server_addr_len;
    unsigned shard_mask;
    uint64_t seed;
    shard *shards;
    _Atomic int64_t wall_offset_ns; /* wall clock minus engine clock, refreshed per advance */
    _Atomic size_t pinned;
} mem_store;

struct store_handle {
    mem_store *ms;
    session *s;
};

static const char REASON_EXPIRED[] = "expired";
static const char REASON_CLOSED[] = "closed";
static const char REASON_DELETED[] = "deleted";

static void reactivate(mem_store *ms, session *s);

/* ---- hashing and placement ------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

static uint64_t hash_bytes(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = UINT64_C(0xcbf29ce484222325) ^ seed;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * UINT64_C(0x100000001b3);
    return mix64(h);
}

static unsigned shard_of_id(const mem_store *ms, const afsm_uuid *id)
{
    /* A v7 id's last eight bytes are random: no need to hash them twice. */
    uint64_t tail;
    memcpy(&tail, id->bytes + 8, sizeof(tail));
    return (unsigned)mix64(tail) & ms->shard_mask;
}

static unsigned shard_of_connection(const mem_store *ms, const afsm_uuid *id)
{
    return (unsigned)hash_bytes(id->bytes, sizeof(id->bytes), ms->seed) & ms->shard_mask;
}

static unsigned shard_of_user(const mem_store *ms, const char *user_id, size_t len)
{
    return (unsigned)hash_bytes(user_id, len, ms->seed ^ UINT64_C(0x9e3779b97f4a7c15)) & ms->shard_mask;
}

static void lockset_for_session(const mem_store *ms, const session *s, lockset *set)
{
    lockset_init(set);
    lockset_add(set, shard_of_id(ms, &s->id));
    lockset_add(set, shard_of_connection(ms, &s->connection_id));
    lockset_add(set, shard_of_user(ms, s->user_id, s->user_id_len));
}

static uint64_t now_ns(const mem_store *ms)
{
    return ms->config.clock(ms->config.clock_ctx);
}

/* ---- records ---------------------------------------------------------- */

static void session_destroy(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    session *s = (session *)((char *)entry - offsetof(session, epoch_entry));
    metadata_free(atomic_load_explicit(&s->meta, memory_order_relaxed));
    mem_free(s);
}

static void metadata_destroy(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    metadata_free((metadata *)entry);
}

/* Drops one reference; the last frees the record once readers are gone.
 * The caller holds the lock of the session's shard. */
static void session_unref_locked(mem_store *ms, session *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        epoch_defer(ms->shards[shard_of_id(ms, &s->id)].defer, &s->epoch_entry, session_destroy);
}

static void read_state(const session *s, uint32_t *state, metadata **meta)
{
    uint32_t begin;
    do {
        begin = sync_seq_read_begin(&s->seq);
        *state = atomic_load_explicit((_Atomic uint32_t *)&s->state, memory_order_relaxed);
        *meta = atomic_load_explicit((_Atomic(metadata *) *)&s->meta, memory_order_relaxed);
    } while (sync_seq_read_retry(&s->seq, begin));
}

static void fill_info(const mem_store *ms, const session *s, afsm_session_info *out)
{
    uint32_t state;
    metadata *meta;
    read_state(s, &state, &meta);
    out->state = state;
    out->session_id = s->id;
    out->connection_id = s->connection_id;
    out->client_ip = s->client_ip;
    out->client_port = s->client_port;
    out->user_id_len = s->user_id_len;
    memcpy(out->user_id, s->user_id, s->user_id_len + 1u);
    out->server_addr_len = ms->server_addr_len;
    memcpy(out->server_addr, ms->server_addr, ms->server_addr_len + 1u);
    int64_t offset = atomic_load_explicit((_Atomic int64_t *)&ms->wall_offset_ns, memory_order_relaxed);
    uint64_t last =
        atomic_load_explicit((_Atomic uint64_t *)&s->last_active_ns, memory_order_relaxed) & ~SESSION_EXPIRED_BIT;
    out->created_at_ns = s->created_wall_ns;
    out->last_active_at_ns = (int64_t)last + offset;
    out->expires_at_ns = (int64_t)session_deadline(s, last) + offset;
    out->timeout_ms = s->timeout_ns / 1000000u;
    out->metadata_count = meta != NULL ? meta->count : 0;
    out->metadata_bytes = meta != NULL ? meta->data_bytes : 0;
    out->stats.packets_sent = atomic_load_explicit((_Atomic uint64_t *)&s->packets_sent, memory_order_relaxed);
    out->stats.packets_received = atomic_load_explicit((_Atomic uint64_t *)&s->packets_received, memory_order_relaxed);
    out->stats.bytes_sent = atomic_load_explicit((_Atomic uint64_t *)&s->bytes_sent, memory_order_relaxed);
    out->stats.bytes_received = atomic_load_explicit((_Atomic uint64_t *)&s->bytes_received, memory_order_relaxed);
    out->stats.retransmissions = atomic_load_explicit((_Atomic uint64_t *)&s->retransmissions, memory_order_relaxed);
    out->stats.current_rtt_ms = atomic_load_explicit((_Atomic uint32_t *)&s->rtt_ms, memory_order_relaxed);
    out->stats.reserved = 0;
}

static void emit(const mem_store *ms, uint32_t type, const session *s, uint32_t old_state, uint32_t new_state,
                 const char *reason, size_t reason_len)
{
    if (ms->config.emit == NULL)
        return;
    afsm_event ev = {
        .type = type,
        .old_state = old_state,
        .new_state = new_state,
        .session_id = s->id,
        .connection_id = s->connection_id,
        .user_id = s->user_id,
        .user_id_len = s->user_id_len,
        .reason = reason,
        .reason_len = reason_len,
        .created_at_ns = s->created_wall_ns,
        .event_at_ns = clock_wall_ns(),
    };
    ms->config.emit(ms->config.emit_ctx, &ev);
}

/* ---- lookups ---------------------------------------------------------- */

/* Inside an epoch section. NULL when absent or already unlinked. */
static session *lookup(mem_store *ms, const afsm_uuid *id)
{
    session *s = table_get(&ms->shards[shard_of_id(ms, id)].sessions, id->bytes, sizeof(id->bytes));
    if (s == NULL || atomic_load_explicit(&s->removed, memory_order_acquire))
        return NULL;
    return s;
}

static session *lookup_connection(mem_store *ms, const afsm_uuid *connection_id)
{
    session *s = table_get(&ms->shards[shard_of_connection(ms, connection_id)].connections, connection_id->bytes,
                           sizeof(connection_id->bytes));
    if (s == NULL || atomic_load_explicit(&s->removed, memory_order_acquire))
        return NULL;
    return s;
}

static afsm_status copy_out(mem_store *ms, session *s, afsm_session_info *out)
{
    if (s == NULL)
        return AFSM_ENOTFOUND;
    if (out != NULL)
        fill_info(ms, s, out);
    return session_expired(s, now_ns(ms)) ? AFSM_EEXPIRED : AFSM_OK;
}

static afsm_status mem_get(store *st, const afsm_uuid *id, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    afsm_status status = copy_out(ms, lookup(ms, id), out);
    epoch_leave(e);
    return status;
}

static afsm_status mem_get_by_connection(store *st, const afsm_uuid *connection_id, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    afsm_status status = copy_out(ms, lookup_connection(ms, connection_id), out);
    epoch_leave(e);
    return status;
}

static afsm_status mem_get_metadata(store *st, const afsm_uuid *id, char *buf, size_t buf_size, size_t *needed,
                                    size_t *count)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    afsm_status status = AFSM_ENOTFOUND;
    session *s = lookup(ms, id);
    if (s != NULL) {
        uint32_t state;
        metadata *meta;
        read_state(s, &state, &meta);
        size_t size = meta != NULL ? meta->data_bytes : 0;
        if (needed != NULL)
            *needed = size;
        if (count != NULL)
            *count = meta != NULL ? meta->count : 0;
        if (size > buf_size) {
            status = AFSM_EBUFFER;
        } else {
            if (size > 0)
                memcpy(buf, meta->data, size);
            status = session_expired(s, now_ns(ms)) ? AFSM_EEXPIRED : AFSM_OK;
        }
    }
    epoch_leave(e);
    return status;
}

/* ---- heartbeat and stats (lock-free) ----------------------------------- */

static afsm_status heartbeat_session(mem_store *ms, session *s, uint64_t *remaining_ns)
{
    if (atomic_load_explicit(&s->removed, memory_order_acquire))
        return AFSM_ENOTFOUND;
    if (atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_CLOSED)
        return AFSM_ECLOSED;
    uint64_t now = now_ns(ms);
    uint64_t seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    for (;;) {
        /* Checked inside the loop: the reaper's CAS and ours exclude each
         * other, so success here means the deadline had not passed. */
        if ((seen & SESSION_EXPIRED_BIT) || session_deadline(s, seen) <= now)
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
        *remaining_ns = session_deadline(s, seen) - now;
    if (ms->config.idle_timeout_ns != 0 && atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_IDLE)
        reactivate(ms, s);
    return AFSM_OK;
}

static afsm_status add_stats_session(mem_store *ms, session *s, const afsm_stats *d)
{
    if (atomic_load_explicit(&s->removed, memory_order_acquire))
        return AFSM_ENOTFOUND;
    if (session_expired(s, now_ns(ms)))
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
    if (ms->config.idle_timeout_ns != 0) {
        /* Traffic is activity: it keeps an active session from going idle
         * and wakes an idle one, but (unlike a heartbeat) does not move the
         * expiry deadline. */
        atomic_store_explicit(&s->last_traffic_ns, now_ns(ms), memory_order_relaxed);
        if (atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_IDLE)
            reactivate(ms, s);
    }
    return AFSM_OK;
}

static afsm_status mem_heartbeat(store *st, const afsm_uuid *id, uint64_t *remaining_ns)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    session *s = lookup(ms, id);
    afsm_status status = s != NULL ? heartbeat_session(ms, s, remaining_ns) : AFSM_ENOTFOUND;
    epoch_leave(e);
    return status;
}

static afsm_status mem_add_stats(store *st, const afsm_uuid *id, const afsm_stats *delta)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    session *s = lookup(ms, id);
    afsm_status status = s != NULL ? add_stats_session(ms, s, delta) : AFSM_ENOTFOUND;
    epoch_leave(e);
    return status;
}

/* ---- create ----------------------------------------------------------- */

static void all_list_link(shard *sh, session *s)
{
    session *head = atomic_load_explicit(&sh->all_head, memory_order_relaxed);
    atomic_store_explicit(&s->all_next, head, memory_order_relaxed);
    s->all_prev = NULL;
    if (head != NULL)
        head->all_prev = s;
    atomic_store_explicit(&sh->all_head, s, memory_order_release);
}

/* Unlinks s but leaves s->all_next intact, so a scan standing on s goes on. */
static void all_list_unlink(shard *sh, session *s)
{
    session *next = atomic_load_explicit(&s->all_next, memory_order_relaxed);
    if (s->all_prev != NULL)
        atomic_store_explicit(&s->all_prev->all_next, next, memory_order_release);
    else
        atomic_store_explicit(&sh->all_head, next, memory_order_release);
    if (next != NULL)
        next->all_prev = s->all_prev;
}

static void count_state(shard *sh, uint32_t state, int delta)
{
    uint64_t v = atomic_load_explicit(&sh->by_state[state], memory_order_relaxed);
    atomic_store_explicit(&sh->by_state[state], v + (uint64_t)(int64_t)delta, memory_order_relaxed);
}

static afsm_status mem_create(store *st, const session_spec *spec, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    afsm_status status = AFSM_ENOMEM;
    int published = 0;
    metadata *meta = NULL;
    session *s = mem_calloc(1, sizeof(*s) + spec->user_id_len + 1u);
    if (s == NULL)
        return AFSM_ENOMEM;
    status = metadata_merge(NULL, spec->metadata, spec->metadata_count, &meta);
    if (status != AFSM_OK)
        goto fail;

    uint64_t now = now_ns(ms);
    s->created_wall_ns = clock_wall_ns();
    uuid_v7_at(&s->id, (uint64_t)s->created_wall_ns / 1000000u);
    s->connection_id = spec->connection_id;
    s->client_ip = spec->client_ip;
    s->client_port = spec->client_port;
    s->user_id_len = spec->user_id_len;
    memcpy(s->user_id, spec->user_id, spec->user_id_len);
    s->user_id[spec->user_id_len] = '\0';
    s->created_ns = now;
    s->timeout_ns = spec->timeout_ns;
    s->lifetime_end_ns = ms->config.max_lifetime_ns ? now + ms->config.max_lifetime_ns : UINT64_MAX;
    atomic_init(&s->last_active_ns, now);
    atomic_init(&s->refs, 1);
    atomic_init(&s->state, AFSM_STATE_CONNECTING);
    atomic_init(&s->meta, meta);

    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        goto fail;
    unsigned home = shard_of_id(ms, &s->id);
    shard *sh = &ms->shards[home];
    shard *ch = &ms->shards[shard_of_connection(ms, &s->connection_id)];
    shard *uh = &ms->shards[shard_of_user(ms, s->user_id, s->user_id_len)];
    lockset set;
    lockset_for_session(ms, s, &set);
    lockset_acquire(ms->shards, &set);

    if (table_get(&ch->connections, s->connection_id.bytes, 16) != NULL) {
        status = AFSM_EEXISTS;
        goto unlock;
    }
    /* Table inserts first: undoing one never allocates. The index comes
     * last and changes nothing when it fails. */
    table_result r = table_insert(&sh->sessions, s->id.bytes, 16, s);
    if (r != TABLE_OK) {
        status = r == TABLE_NOMEM ? AFSM_ENOMEM : AFSM_EINTERNAL;
        goto unlock;
    }
    published = 1;
    if (table_insert(&ch->connections, s->connection_id.bytes, 16, s) != TABLE_OK) {
        table_remove(&sh->sessions, s->id.bytes, 16);
        status = AFSM_ENOMEM;
        goto unlock;
    }
    status = index_add(uh, s);
    if (status != AFSM_OK) {
        table_remove(&ch->connections, s->connection_id.bytes, 16);
        table_remove(&sh->sessions, s->id.bytes, 16);
        goto unlock;
    }
    all_list_link(sh, s);
    wheel_add(&sh->timers, &s->timer, session_deadline(s, now));
    count_state(sh, AFSM_STATE_CONNECTING, +1);
unlock:
    /* A reader may have found a record that was rolled back: only the
     * epoch may free it then. */
    if (status != AFSM_OK && published)
        epoch_defer(sh->defer, &s->epoch_entry, session_destroy);
    lockset_release(ms->shards, &set);
    if (status == AFSM_OK) {
        if (out != NULL)
            fill_info(ms, s, out);
        emit(ms, AFSM_EVENT_CREATED, s, 0, AFSM_STATE_CONNECTING, NULL, 0);
    }
    epoch_leave(e);
    if (status == AFSM_OK || published)
        return status;
fail:
    metadata_free(meta);
    mem_free(s);
    return status;
}

/* The next time the wheel must look at s: its expiry, or for an active
 * session under idle detection its idle deadline if sooner, or for a closed
 * one the end of its linger. Shard lock held. */
static uint64_t timer_deadline(const mem_store *ms, const session *s, uint32_t state, uint64_t last_active)
{
    if (state == AFSM_STATE_CLOSED)
        return s->closed_at_ns + ms->config.close_linger_ns;
    uint64_t deadline = session_deadline(s, last_active);
    if (ms->config.idle_timeout_ns != 0 && state == AFSM_STATE_ACTIVE) {
        uint64_t traffic = atomic_load_explicit((_Atomic uint64_t *)&s->last_traffic_ns, memory_order_relaxed);
        uint64_t idle_at = (traffic > last_active ? traffic : last_active) + ms->config.idle_timeout_ns;
        if (idle_at < deadline)
            deadline = idle_at;
    }
    return deadline;
}

/* ---- removal ---------------------------------------------------------- */

/* Removes s from every index. The caller holds s's full lock set and has
 * checked that s is not yet removed. Never allocates, so never fails. */
static void remove_locked(mem_store *ms, session *s)
{
    shard *sh = &ms->shards[shard_of_id(ms, &s->id)];
    index_remove(&ms->shards[shard_of_user(ms, s->user_id, s->user_id_len)], s);
    table_remove(&sh->sessions, s->id.bytes, 16);
    table_remove(&ms->shards[shard_of_connection(ms, &s->connection_id)].connections, s->connection_id.bytes, 16);
    if (s->timer.next != NULL)
        wheel_remove(&sh->timers, &s->timer);
    all_list_unlink(sh, s);
    count_state(sh, atomic_load_explicit(&s->state, memory_order_relaxed), -1);
    atomic_store_explicit(&s->removed, 1, memory_order_release);
    session_unref_locked(ms, s);
}

static afsm_status remove_session(mem_store *ms, session *s, uint32_t event, const char *reason, size_t reason_len)
{
    lockset set;
    lockset_for_session(ms, s, &set);
    lockset_acquire(ms->shards, &set);
    afsm_status status = AFSM_ENOTFOUND;
    uint32_t state = atomic_load_explicit(&s->state, memory_order_relaxed);
    if (!atomic_load_explicit(&s->removed, memory_order_relaxed)) {
        remove_locked(ms, s);
        status = AFSM_OK;
    }
    lockset_release(ms->shards, &set);
    if (status == AFSM_OK)
        emit(ms, event, s, state, state, reason, reason_len);
    return status;
}

static afsm_status mem_remove(store *st, const afsm_uuid *id, const char *reason, size_t reason_len)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    session *s = lookup(ms, id);
    if (reason == NULL || reason_len == 0) {
        reason = REASON_DELETED;
        reason_len = sizeof(REASON_DELETED) - 1;
    }
    afsm_status status = s != NULL ? remove_session(ms, s, AFSM_EVENT_DELETED, reason, reason_len) : AFSM_ENOTFOUND;
    epoch_leave(e);
    return status;
}

/* Sessions removed per epoch section by remove_by_user. */
#define REMOVE_CHUNK 64

static afsm_status mem_remove_by_user(store *st, const char *user_id, size_t user_id_len, const char *reason,
                                      size_t reason_len, size_t *removed)
{
    mem_store *ms = (mem_store *)st;
    *removed = 0;
    if (reason == NULL || reason_len == 0) {
        reason = REASON_DELETED;
        reason_len = sizeof(REASON_DELETED) - 1;
    }
    shard *us = &ms->shards[shard_of_user(ms, user_id, user_id_len)];
    /* Every id drawn after this one is larger (the generator is monotonic),
     * so "id <= bound" is "existed when the call began": the loop ends even
     * while the user keeps creating sessions. */
    afsm_uuid bound;
    uuid_v7_at(&bound, (uint64_t)clock_wall_ns() / 1000000u);
    for (;;) {
        ck_epoch_record_t *e = epoch_enter();
        if (e == NULL)
            return AFSM_ENOMEM;
        session *chunk[REMOVE_CHUNK];
        size_t n = 0;
        user_entry *entry = index_lookup(us, user_id, (uint16_t)user_id_len);
        for (session *s = entry != NULL ? index_first(entry) : NULL; s != NULL && n < REMOVE_CHUNK; s = index_next(s)) {
            if (uuid_compare(&s->id, &bound) < 0 && !atomic_load_explicit(&s->removed, memory_order_acquire))
                chunk[n++] = s;
        }
        for (size_t i = 0; i < n; i++)
            *removed += remove_session(ms, chunk[i], AFSM_EVENT_DELETED, reason, reason_len) == AFSM_OK;
        epoch_leave(e);
        if (n == 0)
            return AFSM_OK;
    }
}

/* ---- update ----------------------------------------------------------- */

static int transition_allowed(uint32_t from, uint32_t to)
{
    if (from == to || to == AFSM_STATE_CLOSED)
        return 1;
    switch (from) {
    case AFSM_STATE_CONNECTING:
        return to == AFSM_STATE_ACTIVE;
    case AFSM_STATE_ACTIVE:
        return to == AFSM_STATE_IDLE || to == AFSM_STATE_DISCONNECTING;
    case AFSM_STATE_IDLE:
        return to == AFSM_STATE_ACTIVE || to == AFSM_STATE_DISCONNECTING;
    default:
        return 0;
    }
}

static afsm_status mem_update(store *st, const afsm_uuid *id, const afsm_update *u, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    session *s = lookup(ms, id);
    if (s == NULL) {
        epoch_leave(e);
        return AFSM_ENOTFOUND;
    }
    int closing = (u->fields & AFSM_UPDATE_STATE) && u->state == AFSM_STATE_CLOSED;
    unsigned home = shard_of_id(ms, &s->id);
    shard *sh = &ms->shards[home];
    lockset set;
    if (closing) {
        lockset_for_session(ms, s, &set);
    } else {
        lockset_init(&set);
        lockset_add(&set, home);
    }
    lockset_acquire(ms->shards, &set);

    afsm_status status = AFSM_OK;
    metadata *old_meta = atomic_load_explicit(&s->meta, memory_order_relaxed);
    metadata *new_meta = old_meta;
    uint32_t old_state = atomic_load_explicit(&s->state, memory_order_relaxed);
    uint32_t new_state = (u->fields & AFSM_UPDATE_STATE) ? u->state : old_state;
    if (atomic_load_explicit(&s->removed, memory_order_relaxed)) {
        status = AFSM_ENOTFOUND;
        goto unlock;
    }
    if (session_expired(s, now_ns(ms))) {
        status = AFSM_EEXPIRED;
        goto unlock;
    }
    if (!transition_allowed(old_state, new_state)) {
        status = AFSM_ETRANSITION;
        goto unlock;
    }
    /* Merging under the lock is what makes concurrent merges of different
     * keys both land. */
    if (u->fields & AFSM_UPDATE_METADATA_MERGE)
        status = metadata_merge(old_meta, u->metadata, u->metadata_count, &new_meta);
    else if (u->fields & AFSM_UPDATE_METADATA_REPLACE)
        status = metadata_merge(NULL, u->metadata, u->metadata_count, &new_meta);
    if (status != AFSM_OK)
        goto unlock;
    int remove_now = closing && old_state != AFSM_STATE_CLOSED && ms->config.close_linger_ns == 0;
    if (remove_now)
        remove_locked(ms, s);
    if (new_meta != old_meta || new_state != old_state) {
        sync_seq_write_begin(&s->seq);
        atomic_store_explicit(&s->state, new_state, memory_order_relaxed);
        atomic_store_explicit(&s->meta, new_meta, memory_order_relaxed);
        sync_seq_write_end(&s->seq);
        if (new_meta != old_meta && old_meta != NULL)
            epoch_defer(sh->defer, &old_meta->epoch_entry, metadata_destroy);
    }
    if (new_state != old_state && !remove_now) {
        count_state(sh, old_state, -1);
        count_state(sh, new_state, +1);
        /* Becoming active is activity; closing starts the linger. Either can
         * bring the timer's next look forward, so relink it. */
        uint64_t now = now_ns(ms);
        if (new_state == AFSM_STATE_ACTIVE)
            sync_store_max_u64(&s->last_active_ns, now);
        if (new_state == AFSM_STATE_CLOSED)
            s->closed_at_ns = now;
        if (s->timer.next != NULL) {
            uint64_t last = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed) & ~SESSION_EXPIRED_BIT;
            wheel_remove(&sh->timers, &s->timer);
            wheel_add(&sh->timers, &s->timer, timer_deadline(ms, s, new_state, last));
        }
    }
    if (u->fields & AFSM_UPDATE_STATS) {
        atomic_store_explicit(&s->packets_sent, u->stats.packets_sent, memory_order_relaxed);
        atomic_store_explicit(&s->packets_received, u->stats.packets_received, memory_order_relaxed);
        atomic_store_explicit(&s->bytes_sent, u->stats.bytes_sent, memory_order_relaxed);
        atomic_store_explicit(&s->bytes_received, u->stats.bytes_received, memory_order_relaxed);
        atomic_store_explicit(&s->retransmissions, u->stats.retransmissions, memory_order_relaxed);
        atomic_store_explicit(&s->rtt_ms, u->stats.current_rtt_ms, memory_order_relaxed);
    }
unlock:
    lockset_release(ms->shards, &set);
    if (status == AFSM_OK) {
        if (out != NULL)
            fill_info(ms, s, out);
        if (new_state != old_state)
            emit(ms, AFSM_EVENT_STATE_CHANGED, s, old_state, new_state, NULL, 0);
        if (closing && old_state != AFSM_STATE_CLOSED && ms->config.close_linger_ns == 0)
            emit(ms, AFSM_EVENT_DELETED, s, new_state, new_state, REASON_CLOSED, sizeof(REASON_CLOSED) - 1);
    }
    epoch_leave(e);
    return status;
}

/* ---- listing ---------------------------------------------------------- */

typedef struct heap {
    session **items;
    size_t count;
    size_t capacity; /* grows up to limit */
    size_t limit;    /* offset + page size: how many smallest ids to keep */
} heap;

static int heap_less(session *a, session *b)
{
    return uuid_compare(&a->id, &b->id) < 0;
}

static void heap_sift_down(heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, top = i;
        if (l < h->count && heap_less(h->items[top], h->items[l]))
            top = l;
        if (r < h->count && heap_less(h->items[top], h->items[r]))
            top = r;
        if (top == i)
            return;
        session *t = h->items[i];
        h->items[i] = h->items[top];
        h->items[top] = t;
        i = top;
    }
}

/* Keeps the `limit` smallest ids seen (a max-heap on id). */
static afsm_status heap_offer(heap *h, session *s)
{
    if (h->count < h->limit) {
        if (h->count == h->capacity) {
            size_t grown = h->capacity ? h->capacity * 2 : 64;
            if (grown > h->limit)
                grown = h->limit;
            session **items = mem_alloc(grown * sizeof(session *));
            if (items == NULL)
                return AFSM_ENOMEM;
            if (h->count)
                memcpy(items, h->items, h->count * sizeof(session *));
            mem_free(h->items);
            h->items = items;
            h->capacity = grown;
        }
        size_t i = h->count++;
        h->items[i] = s;
        while (i > 0 && heap_less(h->items[(i - 1) / 2], h->items[i])) {
            session *t = h->items[i];
            h->items[i] = h->items[(i - 1) / 2];
            h->items[(i - 1) / 2] = t;
            i = (i - 1) / 2;
        }
        return AFSM_OK;
    }
    if (h->count > 0 && heap_less(s, h->items[0])) {
        h->items[0] = s;
        heap_sift_down(h, 0);
    }
    return AFSM_OK;
}

static int compare_sessions(const void *a, const void *b)
{
    return uuid_compare(&(*(session *const *)a)->id, &(*(session *const *)b)->id);
}

typedef struct list_scan {
    const afsm_list_filter *filter;
    int has_cursor;
    uint64_t now;
    uint64_t total;
    uint64_t after_cursor;
    heap page;
} list_scan;

static afsm_status scan_one(list_scan *scan, session *s)
{
    const afsm_list_filter *f = scan->filter;
    if (atomic_load_explicit(&s->removed, memory_order_acquire) || session_expired(s, scan->now))
        return AFSM_OK;
    if (f->state != AFSM_STATE_ANY && atomic_load_explicit(&s->state, memory_order_relaxed) != f->state)
        return AFSM_OK;
    if (f->created_after_ns != 0 && s->created_wall_ns <= f->created_after_ns)
        return AFSM_OK;
    if (f->created_before_ns != 0 && s->created_wall_ns >= f->created_before_ns)
        return AFSM_OK;
    if (f->user_id != NULL && (s->user_id_len != f->user_id_len || memcmp(s->user_id, f->user_id, f->user_id_len) != 0))
        return AFSM_OK;
    scan->total++;
    if (scan->has_cursor && uuid_compare(&s->id, &f->cursor) <= 0)
        return AFSM_OK;
    scan->after_cursor++;
    return heap_offer(&scan->page, s);
}

static afsm_status mem_list(store *st, const afsm_list_filter *f, afsm_session_info *out, size_t *count,
                            uint64_t *total, afsm_uuid *next_cursor)
{
    mem_store *ms = (mem_store *)st;
    list_scan scan = {.filter = f, .has_cursor = !uuid_is_nil(&f->cursor), .now = now_ns(ms)};
    uint64_t keep = f->offset + f->limit;
    scan.page.limit = keep < f->offset ? SIZE_MAX : (size_t)keep; /* saturate on overflow */
    *count = 0;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    afsm_status status = AFSM_OK;
    if (f->user_id != NULL) {
        user_entry *entry = index_lookup(&ms->shards[shard_of_user(ms, f->user_id, f->user_id_len)], f->user_id,
                                         (uint16_t)f->user_id_len);
        for (session *s = entry != NULL ? index_first(entry) : NULL; s != NULL && status == AFSM_OK; s = index_next(s))
            status = scan_one(&scan, s);
    } else {
        for (unsigned i = 0; i <= ms->shard_mask && status == AFSM_OK; i++) {
            session *s = atomic_load_explicit(&ms->shards[i].all_head, memory_order_acquire);
            for (; s != NULL && status == AFSM_OK; s = atomic_load_explicit(&s->all_next, memory_order_acquire))
                status = scan_one(&scan, s);
        }
    }
    if (status == AFSM_OK) {
        if (scan.page.count > 1)
            qsort(scan.page.items, scan.page.count, sizeof(session *), compare_sessions);
        size_t n = 0;
        for (size_t i = (size_t)f->offset; i < scan.page.count; i++)
            fill_info(ms, scan.page.items[i], &out[n++]);
        *count = n;
        *total = scan.total;
        if (next_cursor != NULL) {
            memset(next_cursor, 0, sizeof(*next_cursor));
            if (n > 0 && scan.after_cursor > f->offset + n)
                *next_cursor = out[n - 1].session_id;
        }
    }
    epoch_leave(e);
    mem_free(scan.page.items);
    return status;
}

/* ---- expiry, idle detection, closed linger ---------------------------- */

/* Changes state under the shard lock (the seqlock writer side). */
static void set_state_locked(shard *sh, session *s, uint32_t from, uint32_t to)
{
    sync_seq_write_begin(&s->seq);
    atomic_store_explicit(&s->state, to, memory_order_relaxed);
    sync_seq_write_end(&s->seq);
    count_state(sh, from, -1);
    count_state(sh, to, +1);
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
        uint64_t end = timer_deadline(ms, s, state, 0);
        if (end > fire_ns)
            return end;
        return batch_push(batch, s, OUTCOME_CLOSED) ? 0 : fire_ns + 1;
    }
    uint64_t seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    while (!(seen & SESSION_EXPIRED_BIT)) {
        uint64_t deadline = session_deadline(s, seen);
        if (deadline > fire_ns) {
            /* Alive: maybe idle, then look again at the next deadline. */
            if (state == AFSM_STATE_ACTIVE && ms->config.idle_timeout_ns != 0 &&
                timer_deadline(ms, s, state, seen) <= fire_ns && batch_push(batch, s, OUTCOME_IDLE)) {
                set_state_locked(batch->sh, s, AFSM_STATE_ACTIVE, AFSM_STATE_IDLE);
                state = AFSM_STATE_IDLE;
            }
            return timer_deadline(ms, s, state, seen);
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
/* Hash-table entries compacted per table per advance (ck_ht_gc). */
#define GC_BUDGET 4096

/* Runs one batch of fired timers' outcomes, outside the shard lock. */
static size_t settle_batch(mem_store *ms, const timer_batch *batch)
{
    size_t expired = 0;
    for (size_t j = 0; j < batch->count; j++) {
        session *s = batch->items[j].s;
        switch (batch->items[j].outcome) {
        case OUTCOME_IDLE:
            emit(ms, AFSM_EVENT_STATE_CHANGED, s, AFSM_STATE_ACTIVE, AFSM_STATE_IDLE, NULL, 0);
            break;
        case OUTCOME_CLOSED:
            remove_session(ms, s, AFSM_EVENT_DELETED, REASON_CLOSED, sizeof(REASON_CLOSED) - 1);
            break;
        case OUTCOME_EXPIRED:
            /* ENOTFOUND: a delete got there first and fired its own event. */
            expired += remove_session(ms, s, AFSM_EVENT_EXPIRED, REASON_EXPIRED, sizeof(REASON_EXPIRED) - 1) == AFSM_OK;
            break;
        }
    }
    return expired;
}

static afsm_status mem_advance(store *st, uint64_t now, size_t *expired)
{
    mem_store *ms = (mem_store *)st;
    atomic_store_explicit(&ms->wall_offset_ns, clock_wall_ns() - (int64_t)now_ns(ms), memory_order_relaxed);
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
            if (done) {
                table_gc(&sh->sessions, GC_BUDGET);
                table_gc(&sh->connections, GC_BUDGET);
                table_gc(&sh->users, GC_BUDGET);
            }
            epoch_poll(sh->defer);
            sync_lock_release(&sh->lock);
            /* Removal takes each session's whole lock set, so it waits
             * until the shard lock is dropped. */
            *expired += settle_batch(ms, &batch);
            epoch_leave(e);
        }
    }
    mem_free(batch.items);
    return status;
}

/* Activity on an idle session makes it active again (idle detection on).
 * Rare: only the first activity after the idle transition takes the lock. */
static void reactivate(mem_store *ms, session *s)
{
    shard *sh = &ms->shards[shard_of_id(ms, &s->id)];
    int changed = 0;
    sync_lock_acquire(&sh->lock);
    uint64_t seen = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    if (!atomic_load_explicit(&s->removed, memory_order_relaxed) && !(seen & SESSION_EXPIRED_BIT) &&
        atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_IDLE) {
        set_state_locked(sh, s, AFSM_STATE_IDLE, AFSM_STATE_ACTIVE);
        /* The idle deadline is sooner than the expiry it was linked at. */
        if (s->timer.next != NULL) {
            wheel_remove(&sh->timers, &s->timer);
            wheel_add(&sh->timers, &s->timer, timer_deadline(ms, s, AFSM_STATE_ACTIVE, seen));
        }
        changed = 1;
    }
    sync_lock_release(&sh->lock);
    if (changed)
        emit(ms, AFSM_EVENT_STATE_CHANGED, s, AFSM_STATE_IDLE, AFSM_STATE_ACTIVE, NULL, 0);
}

static afsm_status mem_counts(store *st, afsm_counts *out)
{
    mem_store *ms = (mem_store *)st;
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i <= ms->shard_mask; i++) {
        for (unsigned k = 1; k < AFSM_STATE_COUNT; k++) {
            uint64_t n = atomic_load_explicit(&ms->shards[i].by_state[k], memory_order_relaxed);
            out->by_state[k] += n;
            out->total += n;
        }
    }
    return AFSM_OK;
}

/* ---- pinned handles --------------------------------------------------- */

static afsm_status mem_pin(store *st, const afsm_uuid *id, int by_connection, store_handle **out)
{
    mem_store *ms = (mem_store *)st;
    store_handle *h = mem_alloc(sizeof(*h));
    if (h == NULL)
        return AFSM_ENOMEM;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL) {
        mem_free(h);
        return AFSM_ENOMEM;
    }
    session *s = by_connection ? lookup_connection(ms, id) : lookup(ms, id);
    afsm_status status = AFSM_ENOTFOUND;
    if (s != NULL && session_expired(s, now_ns(ms))) {
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
    h->ms = ms;
    h->s = s;
    atomic_fetch_add_explicit(&ms->pinned, 1, memory_order_relaxed);
    *out = h;
    return AFSM_OK;
}

static afsm_status mem_handle_heartbeat(store_handle *h, uint64_t *remaining_ns)
{
    return heartbeat_session(h->ms, h->s, remaining_ns);
}

static afsm_status mem_handle_add_stats(store_handle *h, const afsm_stats *delta)
{
    return add_stats_session(h->ms, h->s, delta);
}

static void mem_handle_session_id(const store_handle *h, afsm_uuid *out)
{
    *out = h->s->id;
}

static void mem_handle_release(store_handle *h)
{
    mem_store *ms = h->ms;
    shard *sh = &ms->shards[shard_of_id(ms, &h->s->id)];
    sync_lock_acquire(&sh->lock);
    session_unref_locked(ms, h->s);
    sync_lock_release(&sh->lock);
    atomic_fetch_sub_explicit(&ms->pinned, 1, memory_order_relaxed);
    mem_free(h);
}

static size_t mem_pinned(store *st)
{
    return atomic_load_explicit(&((mem_store *)st)->pinned, memory_order_relaxed);
}

/* ---- open / close ----------------------------------------------------- */

static void shard_teardown(shard *sh)
{
    /* Deferred frees first: they may hold maps and records no longer in
     * any table. Then what is still live, with no reader left. */
    if (sh->defer != NULL)
        epoch_writer_retire(sh->defer);
    session *s = atomic_load_explicit(&sh->all_head, memory_order_relaxed);
    while (s != NULL) {
        session *next = atomic_load_explicit(&s->all_next, memory_order_relaxed);
        metadata_free(atomic_load_explicit(&s->meta, memory_order_relaxed));
        mem_free(s);
        s = next;
    }
    ck_ht_iterator_t it = CK_HT_ITERATOR_INITIALIZER;
    ck_ht_entry_t *entry;
    while (sh->users.ht.map != NULL && ck_ht_next(&sh->users.ht, &it, &entry))
        index_destroy_entry(ck_ht_entry_value(entry));
    if (sh->sessions.ht.map != NULL)
        table_destroy(&sh->sessions);
    if (sh->connections.ht.map != NULL)
        table_destroy(&sh->connections);
    if (sh->users.ht.map != NULL)
        table_destroy(&sh->users);
}

static void mem_close(store *st)
{
    mem_store *ms = (mem_store *)st;
    for (unsigned i = 0; i <= ms->shard_mask; i++)
        shard_teardown(&ms->shards[i]);
    mem_free(ms->shards);
    mem_free(ms);
}

static const store_ops mem_ops = {
    .close = mem_close,
    .create = mem_create,
    .get = mem_get,
    .get_by_connection = mem_get_by_connection,
    .get_metadata = mem_get_metadata,
    .update = mem_update,
    .add_stats = mem_add_stats,
    .heartbeat = mem_heartbeat,
    .remove = mem_remove,
    .remove_by_user = mem_remove_by_user,
    .list = mem_list,
    .advance = mem_advance,
    .counts = mem_counts,
    .pin = mem_pin,
    .handle_heartbeat = mem_handle_heartbeat,
    .handle_add_stats = mem_handle_add_stats,
    .handle_session_id = mem_handle_session_id,
    .handle_release = mem_handle_release,
    .pinned = mem_pinned,
};

afsm_status mem_store_open(const store_config *config, store **out)
{
    mem_store *ms = mem_calloc(1, sizeof(*ms));
    if (ms == NULL)
        return AFSM_ENOMEM;
    ms->base.ops = &mem_ops;
    ms->config = *config;
    size_t addr_len = config->server_addr != NULL ? strlen(config->server_addr) : 0;
    memcpy(ms->server_addr, config->server_addr != NULL ? config->server_addr : "", addr_len + 1);
    ms->server_addr_len = (uint32_t)addr_len;
    ms->config.server_addr = ms->server_addr;
    ms->shard_mask = config->shard_count - 1;
    afsm_uuid seed_source;
    afsm_uuid_v7(&seed_source);
    memcpy(&ms->seed, seed_source.bytes + 8, sizeof(ms->seed));

    /* Each shard starts on its own cache line. */
    size_t bytes = sizeof(shard) * config->shard_count;
    ms->shards = mem_aligned_alloc(CK_MD_CACHELINE, bytes);
    if (ms->shards == NULL) {
        mem_free(ms);
        return AFSM_ENOMEM;
    }
    memset(ms->shards, 0, bytes);
    uint64_t now = config->clock(config->clock_ctx);
    atomic_init(&ms->wall_offset_ns, clock_wall_ns() - (int64_t)now);
    /* ck_ht keeps its load factor at or below 1/2. */
    uint64_t per_shard = 2 * (config->capacity_hint / config->shard_count + 1);
    for (unsigned i = 0; i < config->shard_count; i++) {
        shard *sh = &ms->shards[i];
        sync_lock_init(&sh->lock);
        wheel_init(&sh->timers, config->tick_ns, now);
        sh->defer = epoch_writer_record();
        uint64_t seed = ms->seed + i;
        if (sh->defer == NULL || !table_init(&sh->sessions, per_shard, seed, sh->defer) ||
            !table_init(&sh->connections, per_shard, seed ^ 1, sh->defer) ||
            !table_init(&sh->users, per_shard, seed ^ 2, sh->defer)) {
            ms->shard_mask = i;
            mem_close(&ms->base);
            return AFSM_ENOMEM;
        }
    }
    *out = &ms->base;
    return AFSM_OK;
}
