/*
 * store.c: the in-memory store: opening and closing it, where things live,
 * copies of records, lookups, and the counters behind counts and metrics.
 *
 * Placement: a session lives in the shard chosen by its id, its connection
 * id's entry in the shard chosen by that id, its user's index entry in the
 * shard chosen by the user id. Writes lock all three (ascending order, so
 * no deadlock) and so change every index at once; reads take no lock.
 *
 * Expiry: each shard's wheel holds its sessions' deadlines. Heartbeats only
 * raise last_active_ns; when a timer fires, the reaper recomputes the
 * deadline and relinks the timer if it moved (expiry.c). Deciding expiry is
 * a CAS that sets SESSION_EXPIRED_BIT, so a heartbeat that succeeded always
 * happened before the deadline. `removed`, set under the locks, makes
 * delete-vs-expiry fire exactly one event.
 *
 * Memory: nothing a reader can reach is freed except through the epoch.
 */
#include <stdlib.h>
#include <string.h>

#include "mem/index.h"
#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/clock.h"
#include "util/epoch.h"
#include "util/uuid.h"

/* ---- placement ---------------------------------------------------------- */

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

unsigned mem_shard_of_connection(const mem_store *ms, const afsm_uuid *id)
{
    /* Caller-chosen, so seeded and over both halves; two word mixes, not a
     * byte loop: every write computes it (issue 15, goal 3). The tables
     * hash uuids with the same mixes, seeded seed + i (^ 1 for
     * connections): a constant with the top bit set keeps this seed off
     * every one of theirs, else a table would reuse the placement's hash
     * and all its keys would start in 1/shards of its slots. */
    uint64_t hi, lo;
    memcpy(&hi, id->bytes, sizeof(hi));
    memcpy(&lo, id->bytes + 8, sizeof(lo));
    return (unsigned)mix64(lo ^ mix64(hi ^ ms->seed ^ UINT64_C(0xc2b2ae3d27d4eb4f))) & ms->shard_mask;
}

/* A user id of up to 16 bytes, as the record holds it (two zero-padded
 * words: mem/index.h), goes through two word mixes rather than a byte
 * loop: every write to such a session finds its user shard from it. */
static unsigned shard_of_short_user(const mem_store *ms, const uint64_t words[2])
{
    return (unsigned)mix64(words[1] ^ mix64(words[0] ^ ms->seed ^ UINT64_C(0x9e3779b97f4a7c15))) & ms->shard_mask;
}

unsigned mem_shard_of_user(const mem_store *ms, const char *user_id, size_t len)
{
    if (len <= SESSION_USER_ID_INLINE) {
        uint64_t words[2] = {0, 0};
        memcpy(words, user_id, len);
        return shard_of_short_user(ms, words);
    }
    return (unsigned)hash_bytes(user_id, len, ms->seed ^ UINT64_C(0x9e3779b97f4a7c15)) & ms->shard_mask;
}

unsigned mem_user_shard_index(const mem_store *ms, const session *s)
{
    if (!index_user_inline(s))
        return s->user_long->shard_index;
    uint64_t words[2];
    memcpy(words, s->user_id_inline, sizeof(words));
    return shard_of_short_user(ms, words);
}

void mem_lockset_for_session(const mem_store *ms, const session *s, lockset *set)
{
    lockset_init3(set, mem_shard_of_id(ms, &s->id), mem_shard_of_connection(ms, &s->connection_id),
                  mem_user_shard_index(ms, s));
}

/* ---- records and copies ------------------------------------------------- */

void mem_session_destroy(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    session *s = (session *)((char *)entry - offsetof(session, epoch_entry));
    metadata_free(atomic_load_explicit(&s->meta, memory_order_relaxed));
    slab_free(s->free_to, s);
}

void mem_metadata_destroy(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    metadata_free((metadata *)entry);
}

void mem_unref_home_locked(shard *home, session *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        /* The timer is unlinked (removal did it, or it was never linked):
         * its words are free for the deferral and the slot's way home. */
        s->free_to = &home->records;
        epoch_defer(home->defer, &s->epoch_entry, mem_session_destroy);
    }
}

void mem_unref_locked(mem_store *ms, session *s)
{
    mem_unref_home_locked(mem_home(ms, s), s);
}

void mem_unref(mem_store *ms, session *s)
{
    shard *sh = mem_home(ms, s);
    sync_lock_acquire(&sh->lock);
    mem_unref_locked(ms, s);
    sync_lock_release(&sh->lock);
}

void mem_read_state(const session *s, uint32_t *state, metadata **meta)
{
    uint32_t begin;
    do {
        begin = sync_seq_read_begin(&s->seq);
        *state = atomic_load_explicit((_Atomic uint8_t *)&s->state, memory_order_acquire);
        *meta = atomic_load_explicit((_Atomic(metadata *) *)&s->meta, memory_order_acquire);
    } while (sync_seq_read_retry(&s->seq, begin));
}

static uint64_t load(const _Atomic uint64_t *counter)
{
    return atomic_load_explicit((_Atomic uint64_t *)counter, memory_order_relaxed);
}

static uint64_t load_acquire(const _Atomic uint64_t *counter)
{
    return atomic_load_explicit((_Atomic uint64_t *)counter, memory_order_acquire);
}

/* The fields read_consistent protects, read once (acquire loads keep the
 * re-check after them, sync.h). */
static inline __attribute__((always_inline)) void read_fields(const session *s, uint32_t *state, metadata **meta,
                                                              afsm_stats *stats)
{
    *state = atomic_load_explicit((_Atomic uint8_t *)&s->state, memory_order_acquire);
    *meta = atomic_load_explicit((_Atomic(metadata *) *)&s->meta, memory_order_acquire);
    stats->packets_sent = load_acquire(&s->packets_sent);
    stats->packets_received = load_acquire(&s->packets_received);
    stats->bytes_sent = load_acquire(&s->bytes_sent);
    stats->bytes_received = load_acquire(&s->bytes_received);
    stats->retransmissions = load_acquire(&s->retransmissions);
    stats->current_rtt_ms = atomic_load_explicit((_Atomic uint32_t *)&s->rtt_ms, memory_order_acquire);
    stats->reserved = 0;
}

static __attribute__((noinline, cold)) void read_consistent_retry(const session *s, uint32_t *state, metadata **meta,
                                                                  afsm_stats *stats)
{
    uint32_t begin;
    do {
        begin = sync_seq_read_begin(&s->seq);
        read_fields(s, state, meta, stats);
    } while (sync_seq_read_retry(&s->seq, begin));
}

/* State, metadata and stats in one seqlock read: an update that sets all
 * the stats (and a state) is seen whole or not at all. Additions from the
 * data plane do not take the seqlock; each counter is then simply as
 * fresh as its load. The first try is straight-line, the retries out of
 * line: as a loop, the compiler kept every field's address in a register
 * across it, ~10 instructions and spills on every Get (issue 15, goal 1). */
static inline __attribute__((always_inline)) void read_consistent(const session *s, uint32_t *state, metadata **meta,
                                                                  afsm_stats *stats)
{
    uint32_t begin = atomic_load_explicit((_Atomic uint32_t *)&s->seq.value, memory_order_acquire);
    if (__builtin_expect((begin & 1) == 0, 1)) {
        read_fields(s, state, meta, stats);
        if (__builtin_expect(!sync_seq_read_retry(&s->seq, begin), 1))
            return;
    }
    read_consistent_retry(s, state, meta, stats);
}

/* Copies text of len bytes, then its NUL, in fixed 8-byte moves the
 * compiler inlines (no libc call, no per-byte work: issue 15, goal 1). Both
 * buffers must hold len rounded up to 8 bytes: a user entry's id is
 * allocated so (index.c), the store's server address is a zeroed array. The bytes
 * past the NUL are zero in both, so the copy leaks nothing. */
static inline void copy_text8(char *dst, const char *src, size_t len)
{
    for (size_t i = 0; i < len; i += 8)
        memcpy(dst + i, src + i, 8);
    dst[len] = '\0';
}

_Static_assert(offsetof(user_entry, key.bytes) % 8 == 0 && sizeof(user_entry) % 8 == 0 && AFSM_USER_ID_MAX % 8 == 0 &&
                   AFSM_USER_ID_MAX + 1 <= sizeof(((afsm_session_info *)0)->user_id),
               "copy_text8 of a user id must stay inside its entry and afsm_session_info.user_id");
_Static_assert((AFSM_SERVER_ADDR_MAX + 7) / 8 * 8 <= sizeof(((afsm_session_info *)0)->server_addr) &&
                   (AFSM_SERVER_ADDR_MAX + 7) / 8 * 8 <= sizeof(((mem_store *)0)->server_addr),
               "copy_text8 of the server address must stay inside both buffers");

/* Fills out, and tells whether the session is expired at now_ns (decided,
 * or due by its deadline; session_expired's test on the same load of
 * last_active_ns the copy reports). Inlined into the single Get, which
 * thus computes the deadline once and makes no calls for its copy (issue
 * 15, goal 1); mem_fill_info is the same for the other copies. */
static inline __attribute__((always_inline)) bool fill_info(const mem_store *ms, const session *s,
                                                            afsm_session_info *out, uint64_t now_ns)
{
    uint32_t state;
    metadata *meta;
    read_consistent(s, &state, &meta, &out->stats);
    out->state = state;
    out->session_id = s->id;
    out->connection_id = s->connection_id;
    session_ip(s, &out->client_ip);
    out->client_port = s->client_port;
    if (index_user_inline(s)) {
        uint16_t len = index_user_id_len(s);
        out->user_id_len = len;
        memcpy(out->user_id, s->user_id_inline, SESSION_USER_ID_INLINE); /* zeros after the id */
        out->user_id[len] = '\0';
    } else {
        const user_entry *user = s->user_long;
        out->user_id_len = user->key.len;
        copy_text8(out->user_id, user->key.bytes, user->key.len);
    }
    out->server_addr_len = ms->server_addr_len;
    copy_text8(out->server_addr, ms->server_addr, ms->server_addr_len);
    int64_t offset = atomic_load_explicit((_Atomic int64_t *)&ms->wall_offset_ns, memory_order_relaxed);
    uint64_t seen = load(&s->last_active_ns);
    uint64_t last = seen & ~SESSION_EXPIRED_BIT;
    uint64_t deadline = mem_deadline(ms, s, last);
    out->created_at_ns = (int64_t)s->created_ns + offset;
    out->last_active_at_ns = (int64_t)last + offset;
    out->expires_at_ns = (int64_t)deadline + offset;
    out->timeout_ms = s->timeout_ms;
    out->metadata_count = meta != NULL ? meta->count : 0;
    out->metadata_bytes = meta != NULL ? meta->data_bytes : 0;
    out->token_generation = atomic_load_explicit((_Atomic uint32_t *)&s->token_generation, memory_order_relaxed);
    out->reserved = 0;
    return (seen & SESSION_EXPIRED_BIT) != 0 || deadline <= now_ns;
}

void mem_fill_info(const mem_store *ms, const session *s, afsm_session_info *out)
{
    (void)fill_info(ms, s, out, 0);
}

/* The events this thread is delivering whose preludes are going out first
 * (mem_event_fire), and the groups held while their earlier events go
 * out first (mem_events_hold), innermost first. Each lives in its firer's frame
 * (or an expiry batch, which does not grow while it delivers) until that
 * call returns, and an event captured meanwhile is fired before that: the
 * callback that causes it returns first. */
static _Thread_local mem_event_hold *in_flight_top __attribute__((tls_model("initial-exec")));

/* Numbers this thread's captures in order: every event a capture may
 * take as its prelude (in flight here, or an IDLE of a batch this thread
 * delivers) was captured on this thread. */
static _Thread_local uint64_t capture_seq __attribute__((tls_model("initial-exec")));

/* The latest event of this session being delivered on this thread behind
 * its prelude, if any: a later change of the session goes out after it.
 * Not the innermost: an event's prelude, fired inside its delivery, is
 * earlier than the event, and may be in flight itself (an IDLE waiting on
 * an earlier event). */
static mem_event *in_flight_of(const mem_store *ms, const afsm_uuid *id)
{
    mem_event *latest = NULL;
    for (mem_event_hold *f = in_flight_top; f != NULL; f = f->next) {
        if (f->ms != ms)
            continue;
        for (size_t i = 0; i < f->count; i++) {
            mem_event *ev = &f->events[i];
            if (ev->pending && memcmp(&ev->ev.session_id, id, sizeof(*id)) == 0 &&
                (latest == NULL || ev->seq > latest->seq))
                latest = ev;
        }
    }
    return latest;
}

void mem_event_capture(const mem_store *ms, mem_event *out, uint32_t type, const session *s, uint32_t old_state,
                       uint32_t new_state, const char *reason, size_t reason_len)
{
    out->pending = false;
    if (ms->config.emit == NULL)
        return;
    /* The user's entry may be freed once the caller's section ends: copy. */
    uint16_t user_len = index_user_id_len(s);
    memcpy(out->user_id, index_user_id(s), user_len);
    out->user_id[user_len] = '\0';
    out->ev = (afsm_event){
        .type = type,
        .old_state = old_state,
        .new_state = new_state,
        .session_id = s->id,
        .connection_id = s->connection_id,
        .user_id_len = user_len,
        .reason = reason,
        .reason_len = reason_len,
        .created_at_ns = (int64_t)s->created_ns + mem_wall_now(ms) - (int64_t)mem_now(ms),
        .event_at_ns = mem_wall_now(ms),
    };
    /* The later of the two: a nested batch's IDLE captured while an event
     * was in flight (its prelude that event) is later than it, and an event
     * in flight may be later than a batch's IDLE it waits on. Each event
     * waits on the latest earlier one, so its chain holds every earlier
     * undelivered event of the session, in capture order. */
    mem_event *waiting = in_flight_of(ms, &s->id);
    mem_event *idle = mem_event_prelude(ms, s);
    out->prelude = waiting == NULL || (idle != NULL && idle->seq > waiting->seq) ? idle : waiting;
    out->seq = ++capture_seq;
    out->pending = true;
}

void mem_event_fire(const mem_store *ms, mem_event *event)
{
    if (!event->pending)
        return;
    if (event->prelude != NULL) {
        /* Still pending while its prelude goes out: an event of the same
         * session that the prelude's callback causes (a delete) takes it
         * as its own prelude and so comes after it. The prelude stays set:
         * such an event fires this one from inside that callback, and an
         * earlier event of its chain may still be waiting (in flight). The
         * walk ends at an event already sent (the one whose callback runs),
         * and each prelude is an earlier capture, so there is no cycle. */
        mem_event_hold me;
        mem_events_hold(ms, event, 1, &me);
        mem_event_fire(ms, event->prelude);
        mem_events_release(&me);
        if (!event->pending)
            return; /* that event sent it first */
    }
    event->pending = false;
    /* Set here, not at capture: a captured event may have moved since (an
     * expiry batch's array grows by copying). */
    event->ev.user_id = event->user_id;
    ms->config.emit(ms->config.emit_ctx, &event->ev);
}

void mem_events_hold(const mem_store *ms, mem_event *events, size_t n, mem_event_hold *hold)
{
    *hold = (mem_event_hold){ms, events, n, in_flight_top};
    in_flight_top = hold;
}

void mem_events_release(mem_event_hold *hold)
{
    in_flight_top = hold->next;
}

void mem_event_fire_group(const mem_store *ms, mem_event *events, size_t n)
{
    /* Listed while they go out, as an event behind its prelude is: a
     * change that an earlier one's callback makes to a later one's session
     * takes that later event as its prelude. */
    if (ms->config.emit == NULL)
        return; /* nothing was captured: the creates and batches of an engine without a callback pay nothing */
    mem_event_hold group;
    mem_events_hold(ms, events, n, &group);
    for (size_t i = 0; i < n; i++)
        mem_event_fire(ms, &events[i]);
    mem_events_release(&group);
}

/* ---- lookups ------------------------------------------------------------ */

session *mem_lookup_connection(mem_store *ms, const afsm_uuid *connection_id)
{
    const void *key =
        table_get_uuid(&ms->shards[mem_shard_of_connection(ms, connection_id)].connections, connection_id);
    if (key == NULL)
        return NULL;
    session *s = (session *)((const char *)key - offsetof(session, connection_id));
    return !session_removed(s) ? s : NULL;
}

/* out is never NULL (the manager checks it). */
static inline __attribute__((always_inline)) afsm_status copy_out(mem_store *ms, session *s, afsm_session_info *out)
{
    if (s == NULL)
        return AFSM_ENOTFOUND;
    /* The record's other two lines (a slab slot is 3 whole lines), and a
     * long user id's entry (a miss of its own, behind the record's last
     * line), before the clock read and the copy's ~100 instructions
     * (issue 15, goal 1). */
    __builtin_prefetch((const char *)s + 64);
    __builtin_prefetch((const char *)s + 128);
    if (!index_user_inline(s))
        __builtin_prefetch(s->user_long);
    /* As mem_expired, with the deadline the copy computed anyway. */
    bool expired = fill_info(ms, s, out, mem_now(ms));
    return expired && !ms->config.external_expiry ? AFSM_EEXPIRED : AFSM_OK;
}

static afsm_status mem_get(store *st, const afsm_uuid *id, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (__builtin_expect(e == NULL, 0))
        return AFSM_ENOMEM;
    afsm_status status = copy_out(ms, mem_lookup(ms, id), out);
    epoch_leave(e);
    return status;
}

static afsm_status mem_get_by_connection(store *st, const afsm_uuid *connection_id, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    afsm_status status = copy_out(ms, mem_lookup_connection(ms, connection_id), out);
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
    session *s = mem_lookup(ms, id);
    if (s != NULL) {
        uint32_t state;
        metadata *meta;
        mem_read_state(s, &state, &meta);
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
            status = mem_expired(ms, s, mem_now(ms)) ? AFSM_EEXPIRED : AFSM_OK;
        }
    }
    epoch_leave(e);
    return status;
}

/* ---- counters ------------------------------------------------------------ */

/* Writers hold the shard lock, so a load and a store make an exact count;
 * the atomics only let readers sum without the lock. */
static void bump(_Atomic uint64_t *counter, uint64_t delta)
{
    atomic_store_explicit(counter, load(counter) + delta, memory_order_relaxed);
}

void mem_count_state(shard *sh, uint32_t state, int delta)
{
    bump(&sh->by_state[state], (uint64_t)(int64_t)delta);
}

void mem_count(const mem_store *ms, _Atomic uint64_t *counter)
{
    if (ms->config.metrics)
        bump(counter, 1);
}

/* Upper bounds of session_duration_seconds, in seconds (afsm.h). */
static const uint32_t duration_bounds_s[AFSM_DURATION_BUCKETS - 1] = {1,    5,    15,   30,    60,    300,  900,
                                                                      1800, 3600, 7200, 14400, 43200, 86400};

void mem_count_removal(const mem_store *ms, shard *sh, const session *s, afsm_delete_reason why)
{
    if (!ms->config.metrics)
        return;
    bump(&sh->deleted[why], 1);
    /* An expired session ended at its deadline, not when the reaper saw it. */
    uint64_t end =
        why == AFSM_DELETE_EXPIRED ? mem_deadline(ms, s, load(&s->last_active_ns) & ~SESSION_EXPIRED_BIT) : mem_now(ms);
    uint64_t lived_ms = end > s->created_ns ? (end - s->created_ns) / 1000000u : 0;
    unsigned bucket = 0;
    while (bucket < AFSM_DURATION_BUCKETS - 1 && lived_ms > (uint64_t)duration_bounds_s[bucket] * 1000u)
        bucket++;
    bump(&sh->duration_buckets[bucket], 1);
    bump(&sh->duration_sum_ms, lived_ms);
}

static afsm_status mem_counts(store *st, afsm_counts *out)
{
    mem_store *ms = (mem_store *)st;
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i <= ms->shard_mask; i++) {
        for (unsigned k = 1; k < AFSM_STATE_COUNT; k++) {
            uint64_t n = load(&ms->shards[i].by_state[k]);
            out->by_state[k] += n;
            out->total += n;
        }
    }
    return AFSM_OK;
}

static afsm_status mem_metrics(store *st, afsm_metrics *out)
{
    mem_store *ms = (mem_store *)st;
    afsm_counts counts;
    mem_counts(st, &counts);
    out->shard_count = ms->shard_mask + 1;
    out->sessions = counts.total;
    memcpy(out->sessions_by_state, counts.by_state, sizeof(counts.by_state));
    uint64_t duration_sum_ms = 0;
    for (unsigned i = 0; i <= ms->shard_mask; i++) {
        shard *sh = &ms->shards[i];
        out->created_total += load(&sh->created);
        for (unsigned r = 0; r < AFSM_DELETE_REASON_COUNT; r++)
            out->deleted_total[r] += load(&sh->deleted[r]);
        out->idle_transitions_total += load(&sh->idle_transitions);
        out->wake_transitions_total += load(&sh->wake_transitions);
        for (unsigned b = 0; b < AFSM_DURATION_BUCKETS; b++) {
            uint64_t n = load(&sh->duration_buckets[b]);
            out->duration_buckets[b] += n;
            out->duration_count += n;
        }
        duration_sum_ms += load(&sh->duration_sum_ms);
    }
    out->expired_total = out->deleted_total[AFSM_DELETE_EXPIRED];
    out->duration_sum_seconds = (double)duration_sum_ms / 1000.0;
    uint64_t now = mem_now(ms);
    uint64_t reached = atomic_load_explicit(&ms->wheels_reached_ns, memory_order_relaxed);
    out->reaper_lag_ns = now > reached ? now - reached : 0;
    out->deferred_frees = epoch_pending();
    return AFSM_OK;
}

static size_t mem_pinned(store *st)
{
    return atomic_load_explicit(&((mem_store *)st)->pinned, memory_order_relaxed);
}

/* ---- open and close ------------------------------------------------------ */

/* The record's slot goes with its slab's chunks (shard_teardown). */
static void free_session_at_close(const void *key)
{
    session *s = (session *)key;
    metadata_free(atomic_load_explicit(&s->meta, memory_order_relaxed));
}

static void shard_teardown(shard *sh, int tables_ready)
{
    /* Deferred frees first: they hold records and maps no longer in any
     * table. Then what is still live, with no reader left. */
    if (sh->defer != NULL)
        epoch_writer_retire(sh->defer);
    mem_free(sh->deferring); /* empty: close needs every handle released */
    if (tables_ready < 3)
        goto partial;
    table_each(&sh->sessions, free_session_at_close);
    table_each(&sh->users, index_destroy_entry);
partial:
    if (tables_ready >= 1)
        table_destroy(&sh->sessions);
    if (tables_ready >= 2)
        table_destroy(&sh->connections);
    if (tables_ready >= 3)
        table_destroy(&sh->users);
    /* Last: the deferred frees above gave their slots back to it. A
     * record's deferral and its slab are both its home shard's, so no
     * other shard's teardown touches this slab. */
    slab_destroy(&sh->records);
}

static void close_shards(mem_store *ms, unsigned ready_shards, int tables_in_last)
{
    for (unsigned i = 0; i < ready_shards; i++)
        shard_teardown(&ms->shards[i], 3);
    if (tables_in_last >= 0)
        shard_teardown(&ms->shards[ready_shards], tables_in_last);
    mem_free(ms->shards);
    mem_free(ms);
}

static void mem_close(store *st)
{
    mem_store *ms = (mem_store *)st;
    close_shards(ms, ms->shard_mask + 1, -1);
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
    .rotate_generation = mem_rotate_generation,
    .list = mem_list,
    .advance = mem_advance,
    .counts = mem_counts,
    .metrics = mem_metrics,
    .pin = mem_pin,
    .handle_heartbeat = mem_handle_heartbeat,
    .handle_add_stats = mem_handle_add_stats,
    .handle_packet = mem_handle_packet,
    .handle_session_id = mem_handle_session_id,
    .handle_release = mem_handle_release,
    .pinned = mem_pinned,
    .get_batch = mem_get_batch,
    .heartbeat_batch = mem_heartbeat_batch,
    .add_stats_batch = mem_add_stats_batch,
};

int64_t mem_store_wall_now(const store *s)
{
    return mem_wall_now((const mem_store *)s);
}

/* How many memory stores the process has opened: each gets the next as
 * its serial (mem_store.h). */
static _Atomic uint64_t opened;

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
    ms->serial = atomic_fetch_add_explicit(&opened, 1, memory_order_relaxed) + 1;
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
    atomic_init(&ms->wheels_reached_ns, now);
    /* A map grows once keys and tombstones pass half its slots: twice the
     * expected sessions. Users are fewer than sessions; their table grows
     * when it must. */
    uint64_t per_shard = 2 * (config->capacity_hint / config->shard_count + 1);
    for (unsigned i = 0; i < config->shard_count; i++) {
        shard *sh = &ms->shards[i];
        sync_lock_init(&sh->lock);
        slab_init(&sh->records);
        sync_lock_init(&sh->handles_lock);
        wheel_init(&sh->timers, config->tick_ns, now);
        sh->defer = epoch_writer_record();
        uint64_t seed = ms->seed + i;
        int ready = -1;
        if (sh->defer != NULL) {
            ready = 0;
            ready += table_init(&sh->sessions, TABLE_KEY_UUID, per_shard, seed, sh->defer);
            ready += ready == 1 && table_init(&sh->connections, TABLE_KEY_UUID, per_shard, seed ^ 1, sh->defer);
            ready += ready == 2 && table_init(&sh->users, TABLE_KEY_STRING, per_shard / 8, seed ^ 2, sh->defer);
        }
        if (ready != 3) {
            close_shards(ms, i, ready);
            return AFSM_ENOMEM;
        }
    }
    *out = &ms->base;
    return AFSM_OK;
}
