/*
 * replica.c: this node's replica of the sessions in etcd: the load (one
 * range read of the prefix), the watch thread that follows it from the
 * loaded revision, and the two ways a change reaches the replica (a
 * record put, a session's deletion), shared with the writers of store.c.
 *
 * Invariants:
 * - applied_revision only grows; the watch resumes at applied_revision + 1,
 *   so after a disconnect no event is lost and none applied twice;
 * - a record is applied only when its mod revision is newer than the one
 *   tracks holds for it, which drops the watch's echo of this node's own
 *   writes and makes applying idempotent; a session this node deleted is
 *   not brought back by an older put still in the watch (tombstones, kept
 *   until the watch passes the deletion's revision);
 * - a deletion fires DELETED with the reason written beside it (the g/ key
 *   of the same txn), or EXPIRED when etcd removed it with its lease;
 * - a compacted watch reloads the prefix and fires the differences.
 * Locking: etcd_store.h (apply_lock around every change; events after).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "etcd/etcd_store.h"
#include "util/clock.h"
#include "util/errdetail.h"

/* ---- events and logs ---------------------------------------------------------- */

void etcd_log(etcd_store *es, int level, const char *message, const char *key, const char *value)
{
    if (es->config.log == NULL)
        return;
    afsm_log_field field = {key, value};
    es->config.log(es->config.log_ctx, level, message, key != NULL ? &field : NULL, key != NULL ? 1 : 0);
}

static void event_from(etcd_store *es, etcd_event *ev, uint32_t type, const afsm_session_info *s, uint32_t old_state,
                       uint32_t new_state, const char *reason, size_t reason_len)
{
    memset(&ev->ev, 0, sizeof(ev->ev));
    ev->pending = 1;
    memcpy(ev->user, s->user_id, s->user_id_len + 1u);
    if (reason_len > AFSM_REASON_MAX)
        reason_len = AFSM_REASON_MAX;
    if (reason != NULL)
        memcpy(ev->reason, reason, reason_len);
    ev->reason[reason_len] = '\0';
    ev->ev.type = type;
    ev->ev.old_state = old_state;
    ev->ev.new_state = new_state;
    ev->ev.session_id = s->session_id;
    ev->ev.connection_id = s->connection_id;
    ev->ev.user_id = ev->user;
    ev->ev.user_id_len = s->user_id_len;
    ev->ev.reason = reason != NULL ? ev->reason : NULL;
    ev->ev.reason_len = reason != NULL ? reason_len : 0;
    ev->ev.created_at_ns = s->created_at_ns;
    /* The engine's clock, as the memory store reports it (and as this
     * node's records are stamped). */
    ev->ev.event_at_ns = mem_store_wall_now(es->replica);
}

/* The sessions whose counted events this thread is delivering, innermost
 * last (a callback may write and fire again): a delete from inside such a
 * callback must not wait for the event it is called from (store.c,
 * apply_own_delete). Deeper nesting is not recorded: such a delete waits
 * its request timeout, then goes on. */
#define FIRING_DEPTH 8
static _Thread_local const afsm_uuid *firing[FIRING_DEPTH];
static _Thread_local unsigned firing_depth;

int etcd_firing_here(const afsm_uuid *id)
{
    for (unsigned i = 0; i < firing_depth && i < FIRING_DEPTH; i++)
        if (memcmp(firing[i], id, sizeof(*id)) == 0)
            return 1;
    return 0;
}

void etcd_fire(etcd_store *es, etcd_event *ev)
{
    if (ev->counted && firing_depth < FIRING_DEPTH)
        firing[firing_depth] = &ev->ev.session_id;
    firing_depth += ev->counted;
    if (ev->pending && es->config.emit != NULL)
        es->config.emit(es->config.emit_ctx, &ev->ev);
    ev->pending = 0;
    firing_depth -= ev->counted;
    if (ev->counted) {
        ev->counted = 0;
        pthread_mutex_lock(&es->apply_lock);
        track_unfired(&es->tracks, &ev->ev.session_id, -1);
        pthread_cond_broadcast(&es->applied);
        pthread_mutex_unlock(&es->apply_lock);
    }
}

/* ---- applying changes ------------------------------------------------------------ */

static afsm_status restore_into_replica(etcd_store *es, const keys_record *rec)
{
    session_spec spec = {
        .user_id = rec->info.user_id,
        .user_id_len = (uint16_t)rec->info.user_id_len,
        .client_port = rec->info.client_port,
        .client_ip = rec->info.client_ip,
        .connection_id = rec->info.connection_id,
        .metadata = rec->meta,
        .metadata_count = rec->meta_count,
        .timeout_ns = rec->info.timeout_ms * NS_PER_MS,
        .restore = &rec->info,
    };
    return es->replica->ops->create(es->replica, &spec, NULL);
}

/* Brings an existing replica copy to the record's state, metadata, stats
 * and token generation. */
static uint64_t minus(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

/* a + b, held at UINT64_MAX as every counter addition is (mem/dataplane.c). */
static uint64_t plus(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* The record's stats plus what this node added and has not flushed. */
static afsm_stats merged_stats(const afsm_stats *record, const afsm_stats *local, const afsm_stats *flushed)
{
    afsm_stats s = *record;
    s.packets_sent = plus(s.packets_sent, minus(local->packets_sent, flushed->packets_sent));
    s.packets_received = plus(s.packets_received, minus(local->packets_received, flushed->packets_received));
    s.bytes_sent = plus(s.bytes_sent, minus(local->bytes_sent, flushed->bytes_sent));
    s.bytes_received = plus(s.bytes_received, minus(local->bytes_received, flushed->bytes_received));
    s.retransmissions = plus(s.retransmissions, minus(local->retransmissions, flushed->retransmissions));
    if (local->current_rtt_ms != flushed->current_rtt_ms)
        s.current_rtt_ms = local->current_rtt_ms; /* a gauge: the newest here wins */
    return s;
}

/* Whether the record brought the rtt gauge to 0 from base's, and this node
 * has no newer one of its own: a set did (an addition of 0 is no sample),
 * and only a set of the stats can carry it here. */
static int gauge_zeroed(const afsm_stats *record, const afsm_stats *base, const afsm_stats *local)
{
    return record->current_rtt_ms == 0 && base->current_rtt_ms != 0 && local->current_rtt_ms == base->current_rtt_ms;
}

/* Whether every counter of `to` is at least `from`'s. */
static int stats_grew(const afsm_stats *to, const afsm_stats *from)
{
    return to->packets_sent >= from->packets_sent && to->packets_received >= from->packets_received &&
           to->bytes_sent >= from->bytes_sent && to->bytes_received >= from->bytes_received &&
           to->retransmissions >= from->retransmissions;
}

/* What the record added past base (stats_grew holds), as an addition: the
 * counters' growth, and the record's rtt gauge if it changed and this node
 * has no newer one of its own. */
static afsm_stats stats_growth(const afsm_stats *record, const afsm_stats *base, const afsm_stats *local)
{
    afsm_stats d = {
        .packets_sent = record->packets_sent - base->packets_sent,
        .packets_received = record->packets_received - base->packets_received,
        .bytes_sent = record->bytes_sent - base->bytes_sent,
        .bytes_received = record->bytes_received - base->bytes_received,
        .retransmissions = record->retransmissions - base->retransmissions,
    };
    if (record->current_rtt_ms != base->current_rtt_ms && local->current_rtt_ms == base->current_rtt_ms)
        d.current_rtt_ms = record->current_rtt_ms;
    return d;
}

/* Whether two copies of a session are of the same incarnation: what only a
 * create or a restore sets is equal. Not the creation time: the replica
 * reports it through its engine clock's wall offset (clamped at that
 * clock's zero, moved by wall-clock steps), not bit for bit as recorded,
 * and taking every update for a new incarnation would drop this node's
 * unflushed stats. */
static int same_incarnation(const afsm_session_info *a, const afsm_session_info *b)
{
    size_t ip_len = a->client_ip.family == 4 ? 4 : sizeof(a->client_ip.bytes);
    return memcmp(&a->connection_id, &b->connection_id, sizeof(a->connection_id)) == 0 &&
           a->client_ip.family == b->client_ip.family && memcmp(a->client_ip.bytes, b->client_ip.bytes, ip_len) == 0 &&
           a->client_port == b->client_port && a->user_id_len == b->user_id_len &&
           memcmp(a->user_id, b->user_id, a->user_id_len) == 0 && a->timeout_ms == b->timeout_ms;
}

/* base: what of the replica's stats the record already holds (the stats
 * etcd had when this node last applied it; for this node's own write, the
 * stats it wrote); the rest was added here since and is kept on top. NULL:
 * the record's stats replace the replica's (a set). */
static afsm_status update_replica(etcd_store *es, const keys_record *rec, const afsm_session_info *old,
                                  const afsm_stats *base)
{
    store *r = es->replica;
    /* Generations grow one step per rotation, and the replica follows one
     * rotate_generation per step: a jump (missed rotations, or a record
     * written by hand up to UINT32_MAX) would loop billions of times under
     * apply_lock. Like a state step never seen, it starts the copy afresh,
     * keeping this node's unflushed stats. */
    /* A record of another incarnation (a restore with a new connection or
     * client address, applied here before the old one's deletion) replaces
     * the copy whole: an update carries none of those fields, and the
     * deletion, older than the record, is then ignored. This node's
     * unflushed stats were the old incarnation's. */
    int other = !same_incarnation(old, &rec->info);
    if (other || !store_transition_allowed(old->state, rec->info.state) ||
        rec->info.token_generation > old->token_generation + 1u) {
        keys_record fresh = *rec;
        if (base != NULL && !other)
            fresh.info.stats = merged_stats(&rec->info.stats, &old->stats, base);
        r->ops->remove(r, &rec->info.session_id, NULL, 0);
        return restore_into_replica(es, &fresh);
    }
    /* Stats additions land on the copy lock-free at any time: setting the
     * merged stats would drop one made after `old` was read. Other nodes'
     * additions (the record's growth past base) are added instead; a set
     * only when there is no base, or the record went below it (a reset). */
    int add = base != NULL && stats_grew(&rec->info.stats, base) && !gauge_zeroed(&rec->info.stats, base, &old->stats);
    afsm_update u = {.version = AFSM_UPDATE_VERSION,
                     .fields = AFSM_UPDATE_STATE | AFSM_UPDATE_METADATA_REPLACE | (add ? 0 : AFSM_UPDATE_STATS),
                     .state = rec->info.state,
                     .metadata = rec->meta,
                     .metadata_count = rec->meta_count,
                     .stats = base != NULL ? merged_stats(&rec->info.stats, &old->stats, base) : rec->info.stats};
    afsm_status st = r->ops->update(r, &rec->info.session_id, &u, NULL);
    if (st != AFSM_OK)
        return st;
    if (add) {
        afsm_stats d = stats_growth(&rec->info.stats, base, &old->stats);
        if (memcmp(&d, &(afsm_stats){0}, sizeof(d)) != 0)
            r->ops->add_stats(r, &rec->info.session_id, &d);
    }
    /* At most one step here (a jump was restored above). */
    if (rec->info.token_generation == old->token_generation + 1u) {
        afsm_session_info copy = {.version = AFSM_SESSION_INFO_VERSION};
        r->ops->rotate_generation(r, &rec->info.session_id, &copy);
    }
    /* A write elsewhere is activity there. */
    if (rec->info.last_active_at_ns > old->last_active_at_ns)
        r->ops->heartbeat(r, &rec->info.session_id, NULL);
    return AFSM_OK;
}

/* When the lease was last renewed, on the lease clock (etcd_lease_clock_ns:
 * real time, not the engine clock): counted from the grant (the record's
 * leased_ns), so a pooled lease's age is not forgotten; the apply time
 * when the record does not say. */
static uint64_t renewed_at(const keys_record *rec)
{
    uint64_t now = etcd_lease_clock_ns();
    int64_t age = rec->leased_ns != 0 ? clock_wall_ns() - rec->leased_ns : 0;
    return age > 0 && (uint64_t)age < now ? now - (uint64_t)age : now;
}

/* ---- tombstones ------------------------------------------------------------------ */

struct etcd_tombstone {
    afsm_uuid id;
    int64_t revision;
};

void etcd_tombstone_add(etcd_store *es, const afsm_uuid *id, int64_t revision)
{
    if (revision <= atomic_load_explicit(&es->applied_revision, memory_order_relaxed))
        return; /* the watch is already past it */
    if (es->tombstone_count == es->tombstone_cap) {
        size_t cap = es->tombstone_cap != 0 ? es->tombstone_cap * 2 : 16;
        struct etcd_tombstone *grown = realloc(es->tombstones, cap * sizeof(*grown));
        if (grown == NULL)
            return;
        es->tombstones = grown;
        es->tombstone_cap = cap;
    }
    es->tombstones[es->tombstone_count++] = (struct etcd_tombstone){*id, revision};
}

/* Whether this node deleted id at a revision after mod_revision. Only the
 * watch's lag keeps entries here, so the scan is short. */
static int tombstoned(etcd_store *es, const afsm_uuid *id, int64_t mod_revision)
{
    for (size_t i = 0; i < es->tombstone_count; i++)
        if (es->tombstones[i].revision > mod_revision && memcmp(&es->tombstones[i].id, id, sizeof(*id)) == 0)
            return 1;
    return 0;
}

/* The watch (or a reload) has applied everything up to revision: older
 * deletions have had their echoes. */
static void tombstones_prune(etcd_store *es, int64_t revision)
{
    size_t kept = 0;
    for (size_t i = 0; i < es->tombstone_count; i++)
        if (es->tombstones[i].revision > revision)
            es->tombstones[kept++] = es->tombstones[i];
    es->tombstone_count = kept;
}

void etcd_tombstones_free(etcd_store *es)
{
    free(es->tombstones);
    es->tombstones = NULL;
    es->tombstone_count = es->tombstone_cap = 0;
}

afsm_status etcd_apply_put(etcd_store *es, const keys_record *rec, int64_t mod_revision, int flags, etcd_event *ev)
{
    ev->pending = ev->counted = 0;
    track_info known;
    int tracked = track_get(&es->tracks, &rec->info.session_id, &known);
    if (tracked && known.mod_revision == 0)
        tracked = 0; /* a create's placeholder (store.c, create_begin): nothing applied yet */
    if (tracked && known.mod_revision >= mod_revision)
        return AFSM_OK; /* the echo of a write already applied */
    if (!tracked && es->tombstone_count > 0 && tombstoned(es, &rec->info.session_id, mod_revision))
        return AFSM_OK; /* deleted here since: an echo must not resurrect it */
    afsm_session_info old = {.version = AFSM_SESSION_INFO_VERSION};
    afsm_status st;
    int present = es->replica->ops->get(es->replica, &rec->info.session_id, &old) == AFSM_OK;
    /* A write of this node whose answer never came, committed by etcd after
     * all (track.h, track_own_write; a write whose answer came is applied
     * with ETCD_APPLY_OWN): the stats in it are this node's, which taken for
     * another writer's growth would be counted twice. What it carried is
     * this node's flushed, what was added here since stays on top; a set's
     * additions from before its edit are gone. Only a record with the
     * number of a write noted since the last record applied, so that a hand
     * edit that keeps the id, or a rewrite, is another writer's. */
    afsm_stats set_from;
    const afsm_stats *own_base = NULL;
    if (tracked && present && !(flags & ETCD_APPLY_OWN) && rec->writer != 0 && rec->writer == es->writer_id &&
        rec->seq != 0 && track_own_write(&es->tracks, &rec->info.session_id, rec->seq, rec->stats_set, &set_from))
        own_base = rec->stats_set ? &set_from : &rec->info.stats;
    const afsm_stats *base = !tracked                     ? NULL
                             : own_base != NULL           ? own_base
                             : (flags & ETCD_APPLY_RESET) ? NULL
                             : (flags & ETCD_APPLY_OWN)   ? &rec->info.stats
                                                          : &known.flushed;
    if (present)
        st = update_replica(es, rec, &old, base);
    else
        st = restore_into_replica(es, rec);
    if (st != AFSM_OK)
        return st;
    track_info info = {
        .lease = rec->lease,
        .mod_revision = mod_revision,
        .slot = rec->slot,
        .renewed_ns = renewed_at(rec),
        .renew_period_ns = etcd_renew_period_ns(rec->info.timeout_ms),
        .flushed = rec->info.stats,
        .leased_ns = rec->leased_ns,
    };
    if (tracked)
        info.renewed_ns = known.renewed_ns;
    st = track_put(&es->tracks, &rec->info.session_id, &info);
    if (st != AFSM_OK) {
        es->replica->ops->remove(es->replica, &rec->info.session_id, NULL, 0);
        return st;
    }
    pthread_cond_broadcast(&es->applied);
    if (!present) {
        if (!(flags & ETCD_APPLY_QUIET)) {
            event_from(es, ev, AFSM_EVENT_CREATED, &rec->info, 0, rec->info.state, NULL, 0);
            atomic_fetch_add_explicit(&es->created_total, 1, memory_order_relaxed);
        }
    } else if (old.state != rec->info.state) {
        event_from(es, ev, AFSM_EVENT_STATE_CHANGED, &rec->info, old.state, rec->info.state, NULL, 0);
    }
    return AFSM_OK;
}

void etcd_apply_delete(etcd_store *es, const afsm_uuid *id, etcd_event *ev)
{
    ev->pending = ev->counted = 0;
    track_info info;
    if (!track_remove(&es->tracks, id, &info))
        return; /* unknown here, or this node's own delete already applied */
    afsm_session_info old = {.version = AFSM_SESSION_INFO_VERSION};
    if (es->replica->ops->get(es->replica, id, &old) != AFSM_OK)
        return;
    es->replica->ops->remove(es->replica, id, NULL, 0);
    pthread_cond_broadcast(&es->applied);
    if (info.has_reason) {
        event_from(es, ev, AFSM_EVENT_DELETED, &old, old.state, old.state, info.reason, info.reason_len);
        atomic_fetch_add_explicit(&es->deleted_total[info.why], 1, memory_order_relaxed);
    } else {
        event_from(es, ev, AFSM_EVENT_EXPIRED, &old, old.state, old.state, "expired", 7);
        atomic_fetch_add_explicit(&es->deleted_total[AFSM_DELETE_EXPIRED], 1, memory_order_relaxed);
    }
}

void etcd_deleted_unseen(etcd_store *es, const afsm_session_info *s, afsm_delete_reason why, const char *reason,
                         size_t reason_len, etcd_event *ev)
{
    event_from(es, ev, AFSM_EVENT_DELETED, s, s->state, s->state, reason, reason_len);
    atomic_fetch_add_explicit(&es->deleted_total[why], 1, memory_order_relaxed);
}

/* Everything under the prefix up to revision is applied (apply_lock held).
 * Called only at a revision's end: the keys one txn wrote share its
 * revision, and a reader that sees applied_revision (with session_keys)
 * must see all of them. Wakes the readers waiting in etcd_replica_sync. */
static void raise_revision(etcd_store *es, int64_t revision)
{
    if (revision > atomic_load_explicit(&es->applied_revision, memory_order_relaxed)) {
        atomic_store_explicit(&es->applied_revision, revision, memory_order_release);
        if (es->echo_revision != 0 && revision >= es->echo_revision) { /* the sampled write's echo */
            uint64_t now = etcd_lease_clock_ns();
            uint64_t delay = now > es->echo_written_ns ? now - es->echo_written_ns : 0;
            atomic_store_explicit(&es->echo_delay_ns, delay, memory_order_relaxed);
            atomic_store_explicit(&es->echo_pending_since_ns, 0, memory_order_relaxed);
            es->echo_revision = 0;
        }
        if (es->tombstone_count > 0)
            tombstones_prune(es, revision);
        pthread_cond_broadcast(&es->applied);
    }
}

/* Whether key is under "<prefix>s/" (what etcd counts in the range
 * etcd_replica_sync asks about, malformed records included). */
static int session_key(const etcd_store *es, const char *key, size_t len)
{
    return key != NULL && len >= es->prefix_len + 2 && memcmp(key, es->prefix, es->prefix_len) == 0 &&
           key[es->prefix_len] == 's' && key[es->prefix_len + 1] == '/';
}

/* How a watch event changes the number of session keys: +1 for a key's
 * first version, -1 for a deletion. */
static int session_keys_delta(const etcd_store *es, json_object *kv, int deleted)
{
    long len;
    char *key = etcd_get_bytes(kv, "key", &len);
    int delta = 0;
    if (session_key(es, key, key != NULL ? (size_t)len : 0))
        delta = deleted ? -1 : etcd_get_int64(kv, "version") == 1 ? 1 : 0;
    free(key);
    return delta;
}

/* While this node's own guarded write of id is under way, its echo (or a
 * newer record) waits: the writer applies its result first, so the stats
 * it wrote are never counted twice. Bounded by the writer's request
 * timeout. apply_lock held. Always 1 (for use in a condition). */
static int wait_own_writes(etcd_store *es, const afsm_uuid *id)
{
    track_info ti;
    while (track_get(&es->tracks, id, &ti) && ti.inflight > 0)
        pthread_cond_wait(&es->applied, &es->apply_lock);
    return 1;
}

/* A g/ key's value, {"reason": text, "why": n}: 1 with *why, *text and
 * *len set (the text lives in *holder, which the caller puts, malformed or
 * not), 0 if malformed. */
static int decode_reason(const char *value, afsm_delete_reason *why, const char **text, size_t *len,
                         json_object **holder)
{
    json_object *gone = value != NULL ? json_tokener_parse(value) : NULL, *reason;
    *holder = gone;
    int64_t n = etcd_get_int64(gone, "why");
    if (gone == NULL || !json_object_object_get_ex(gone, "reason", &reason) ||
        !json_object_is_type(reason, json_type_string) || n < 0 || n >= AFSM_DELETE_REASON_COUNT)
        return 0;
    *why = (afsm_delete_reason)n;
    *text = json_object_get_string(reason);
    *len = (size_t)json_object_get_string_len(reason);
    return 1;
}

/* One key-value from etcd (a range or a watch event). apply_lock held.
 * AFSM_ENOMEM when a session record could not be applied for memory: the
 * caller must not count its revision as applied (the replica reloads);
 * anything else (bad data included, logged and skipped) is AFSM_OK.
 * put_status (may be NULL): a session record's etcd_apply_put status, so
 * that the load can apply again what a stale copy blocked (AFSM_EEXISTS:
 * its connection id still held here), which is then not logged; AFSM_OK
 * for anything else. */
static afsm_status apply_kv(etcd_store *es, json_object *kv, int deleted, int emit, etcd_event *ev,
                            afsm_status *put_status)
{
    afsm_status status = AFSM_OK;
    ev->pending = ev->counted = 0;
    if (put_status != NULL)
        *put_status = AFSM_OK;
    long key_len, value_len = 0;
    char *key = etcd_get_bytes(kv, "key", &key_len);
    int64_t mod_revision = etcd_get_int64(kv, "mod_revision");
    afsm_uuid id;
    keys_kind kind = key != NULL ? keys_parse(es->prefix, es->prefix_len, key, (size_t)key_len, &id) : KEYS_FOREIGN;
    track_info known;
    /* Most puts a writer sees are its own writes' echoes: drop them before
     * decoding anything (the revision check of etcd_apply_put, early). */
    if (kind == KEYS_SESSION && !deleted && wait_own_writes(es, &id) && track_get(&es->tracks, &id, &known) &&
        known.mod_revision >= mod_revision) {
        free(key);
        return AFSM_OK;
    }
    /* The connection, user and slot keys mirror the record: nothing to decode. */
    char *value = deleted || kind == KEYS_CONNECTION || kind == KEYS_USER || kind == KEYS_SLOT
                      ? NULL
                      : etcd_get_bytes(kv, "value", &value_len);
    if (kind == KEYS_FOREIGN) {
        etcd_log(es, AFSM_LOG_WARN, "etcd: foreign key under the prefix skipped", "key", key != NULL ? key : "?");
    } else if (kind == KEYS_SESSION && wait_own_writes(es, &id) && deleted) {
        /* A deletion older than the record this node holds (or than the
         * restore of its id under way here: a placeholder) is the echo of
         * this node's own delete of an id written again since: the session
         * it removed is already gone here. */
        if (!track_get(&es->tracks, &id, &known) || (known.mod_revision != 0 && known.mod_revision < mod_revision))
            etcd_apply_delete(es, &id, ev);
    } else if (kind == KEYS_SESSION) {
        keys_record rec;
        json_object *holder = NULL;
        if (value == NULL || keys_record_decode(value, (size_t)value_len, &rec, &holder) != AFSM_OK ||
            memcmp(&rec.info.session_id, &id, sizeof(id)) != 0) {
            etcd_log(es, AFSM_LOG_WARN, "etcd: bad session record skipped", "key", key);
        } else if ((status = etcd_apply_put(es, &rec, mod_revision, emit ? 0 : ETCD_APPLY_QUIET, ev)) != AFSM_OK) {
            if (put_status != NULL)
                *put_status = status;
            if (put_status == NULL || status != AFSM_EEXISTS)
                etcd_log(es, AFSM_LOG_WARN, "etcd: session record not applied", "key", key);
            if (status != AFSM_ENOMEM)
                status = AFSM_OK;
        }
        json_object_put(holder);
    } else if (kind == KEYS_GONE && !deleted && value != NULL &&
               !(track_get(&es->tracks, &id, &known) &&
                 (known.mod_revision == 0 || known.mod_revision > mod_revision))) {
        /* (A reason older than the record held, or seen while the id is
         * being restored here, belongs to a deletion already applied, not
         * to this incarnation of the id.) */
        json_object *holder;
        afsm_delete_reason why;
        const char *text;
        size_t text_len;
        if (decode_reason(value, &why, &text, &text_len, &holder))
            track_set_reason(&es->tracks, &id, why, text, text_len);
        else
            etcd_log(es, AFSM_LOG_WARN, "etcd: bad delete reason skipped", "key", key);
        json_object_put(holder);
    }
    if (!emit)
        ev->pending = 0;
    free(key);
    free(value);
    return status;
}

/* ---- the load ------------------------------------------------------------------- */

static int uuid_order(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(afsm_uuid));
}

typedef struct id_list {
    afsm_uuid *ids;
    size_t count, cap;
    int failed; /* an id was not kept for want of memory */
} id_list;

static int id_list_add(id_list *l, const afsm_uuid *id)
{
    if (l->count == l->cap) {
        size_t cap = l->cap != 0 ? l->cap * 2 : 64;
        afsm_uuid *grown = realloc(l->ids, cap * sizeof(*grown));
        if (grown == NULL) {
            l->failed = 1;
            return 0;
        }
        l->ids = grown;
        l->cap = cap;
    }
    l->ids[l->count++] = *id;
    return 1;
}

static void collect_known(void *ctx, const afsm_uuid *id, const track_info *info)
{
    (void)info;
    id_list_add(ctx, id);
}

/* Keys per range page: bounded answers however many sessions there are. */
#define LOAD_PAGE 1000

/* A deletion's reason the load read (a g/ key): used only if the load
 * finds that session gone. */
typedef struct load_reason {
    afsm_uuid id;
    int64_t mod_revision;
    afsm_delete_reason why;
    char *text;
    size_t len;
} load_reason;

/* What the load carries from one page to the next. Only ids and reasons
 * are kept: each page is applied and let go before the next is read, so
 * the load's transient memory is one page's, not the prefix's (holding
 * every page first cost ~7 KB a session at its peak). */
typedef struct load_state {
    etcd_store *es;
    int emit;
    id_list present;      /* session ids etcd holds at the load's revision */
    id_list blocked;      /* their records a stale copy's connection id kept out */
    load_reason *reasons; /* the g/ keys read, by id once sorted */
    size_t reason_count, reason_cap;
    int64_t sessions;   /* session keys seen (etcd_replica_sync compares counts) */
    etcd_event *events; /* one page's, LOAD_PAGE of them */
    afsm_status status; /* AFSM_ENOMEM: a record, an id or a reason not kept */
} load_state;

static void load_state_free(load_state *ls)
{
    for (size_t i = 0; i < ls->reason_count; i++)
        free(ls->reasons[i].text);
    free(ls->reasons);
    free(ls->present.ids);
    free(ls->blocked.ids);
    free(ls->events);
}

/* Keeps a g/ key's reason for the end of the load. The reason is not set
 * on the session's track now: a write of this node between two pages (a
 * restore of the id) would keep it there for a later, unrelated end. */
static void load_reason_add(load_state *ls, json_object *kv, const afsm_uuid *id)
{
    long len;
    char *value = etcd_get_bytes(kv, "value", &len);
    json_object *holder;
    afsm_delete_reason why;
    const char *text;
    size_t text_len;
    if (!decode_reason(value, &why, &text, &text_len, &holder)) {
        char *key = etcd_get_bytes(kv, "key", &len);
        etcd_log(ls->es, AFSM_LOG_WARN, "etcd: bad delete reason skipped", "key", key != NULL ? key : "?");
        free(key);
    } else {
        if (ls->reason_count == ls->reason_cap) {
            size_t cap = ls->reason_cap != 0 ? 2 * ls->reason_cap : 64;
            load_reason *grown = realloc(ls->reasons, cap * sizeof(*grown));
            if (grown == NULL) {
                ls->status = AFSM_ENOMEM;
                goto out;
            }
            ls->reasons = grown;
            ls->reason_cap = cap;
        }
        char *copy = malloc(text_len + 1);
        if (copy == NULL) {
            ls->status = AFSM_ENOMEM;
            goto out;
        }
        memcpy(copy, text, text_len + 1);
        ls->reasons[ls->reason_count++] = (load_reason){*id, etcd_get_int64(kv, "mod_revision"), why, copy, text_len};
    }
out:
    json_object_put(holder);
    free(value);
}

static int reason_order(const void *a, const void *b)
{
    return memcmp(&((const load_reason *)a)->id, &((const load_reason *)b)->id, sizeof(afsm_uuid));
}

/* One page, applied under apply_lock; its events fire after. */
static void load_page(load_state *ls, json_object *page, size_t n)
{
    etcd_store *es = ls->es;
    pthread_mutex_lock(&es->apply_lock);
    for (size_t i = 0; i < n; i++) {
        json_object *kv = json_object_array_get_idx(page, i);
        long key_len;
        char *key = etcd_get_bytes(kv, "key", &key_len);
        afsm_uuid id;
        keys_kind kind = key != NULL ? keys_parse(es->prefix, es->prefix_len, key, (size_t)key_len, &id) : KEYS_FOREIGN;
        ls->sessions += session_key(es, key, key != NULL ? (size_t)key_len : 0);
        free(key);
        ls->events[i].pending = ls->events[i].counted = 0;
        if (kind == KEYS_CONNECTION || kind == KEYS_USER || kind == KEYS_SLOT)
            continue;
        if (kind == KEYS_GONE) {
            load_reason_add(ls, kv, &id);
            continue;
        }
        if (kind == KEYS_SESSION && !id_list_add(&ls->present, &id))
            ls->status = AFSM_ENOMEM; /* the vanished check below cannot run */
        afsm_status put;
        if (apply_kv(es, kv, 0, ls->emit, &ls->events[i], &put) != AFSM_OK)
            ls->status = AFSM_ENOMEM; /* the caller loads again */
        else if (put == AFSM_EEXISTS && !id_list_add(&ls->blocked, &id))
            ls->status = AFSM_ENOMEM;
    }
    pthread_mutex_unlock(&es->apply_lock);
    for (size_t i = 0; i < n; i++)
        etcd_fire(es, &ls->events[i]);
}

/* The whole prefix at one revision, page by page into load_page; *revision
 * gets the revision it was read at. */
static afsm_status range_prefix(load_state *ls, int64_t *revision)
{
    etcd_store *es = ls->es;
    char end[KEYS_PREFIX_MAX + 1];
    keys_range_end(es->prefix, es->prefix_len, end);
    /* The next page starts just after the last key read: that key and a
     * NUL, whatever its length (a foreign key may be longer than ours). */
    char *after = NULL;
    const char *cursor = es->prefix;
    size_t cursor_len = es->prefix_len;
    afsm_status st = AFSM_OK;
    *revision = 0;
    for (;;) {
        json_object *body = etcd_with(json_object_new_object(), "key", etcd_json_bytes(cursor, cursor_len)),
                    *reply = NULL, *page, *more;
        body = etcd_with(body, "range_end", etcd_json_bytes(end, es->prefix_len));
        body = etcd_with(body, "limit", etcd_json_int64(LOAD_PAGE));
        if (*revision != 0) /* every page from the first page's revision */
            body = etcd_with(body, "revision", etcd_json_int64(*revision));
        if (body == NULL) {
            st = AFSM_ENOMEM;
            break;
        }
        st = etcd_call(es->client, "/v3/kv/range", body, 1, &reply, NULL);
        json_object_put(body);
        if (st != AFSM_OK) {
            json_object_put(reply);
            if (st == AFSM_ENOTFOUND)
                st = AFSM_EINTERNAL; /* compacted meanwhile: the caller retries */
            break;
        }
        json_object *header;
        if (*revision == 0 && json_object_object_get_ex(reply, "header", &header))
            *revision = etcd_get_int64(header, "revision");
        size_t n = 0;
        if ((page = etcd_get_array(reply, "kvs")) != NULL) {
            n = json_object_array_length(page);
            if (n > LOAD_PAGE) { /* more than asked for: not an answer to this request */
                json_object_put(reply);
                st = AFSM_EINTERNAL;
                break;
            }
            load_page(ls, page, n);
        }
        int has_more = json_object_object_get_ex(reply, "more", &more) && json_object_get_boolean(more);
        long last_len = 0;
        char *last = n > 0 ? etcd_get_bytes(json_object_array_get_idx(page, n - 1), "key", &last_len) : NULL;
        json_object_put(reply);
        if (!has_more) {
            free(last);
            break;
        }
        char *next = last != NULL ? realloc(last, (size_t)last_len + 1) : NULL;
        if (next == NULL) { /* more to read, and no place to go on from: not loaded */
            free(last);
            st = last != NULL ? AFSM_ENOMEM : AFSM_EINTERNAL;
            break;
        }
        next[last_len] = '\0';
        free(after);
        after = next;
        cursor = after;
        cursor_len = (size_t)last_len + 1;
    }
    free(after);
    return st;
}

/* Applies again, at the load's revision, the records a stale copy kept
 * out: a session on a connection id that a copy of a session since
 * deleted still held here (etcd freed it while nobody watched). Called
 * once the vanished check removed those copies; apply_lock not held (a
 * range per record). */
static afsm_status load_blocked(load_state *ls, int64_t revision)
{
    etcd_store *es = ls->es;
    for (size_t i = 0; i < ls->blocked.count; i++) {
        char key[KEYS_MAX];
        size_t len = keys_session(es->prefix, es->prefix_len, &ls->blocked.ids[i], key);
        json_object *body = etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, len)), *reply = NULL, *kvs;
        body = etcd_with(body, "revision", etcd_json_int64(revision));
        if (body == NULL)
            return AFSM_ENOMEM;
        afsm_status st = etcd_call(es->client, "/v3/kv/range", body, 1, &reply, NULL);
        json_object_put(body);
        if (st != AFSM_OK) {
            json_object_put(reply);
            return st == AFSM_ENOTFOUND ? AFSM_EINTERNAL : st; /* (compacted too): the caller loads again */
        }
        etcd_event ev = {.pending = 0};
        afsm_status put = AFSM_OK;
        if ((kvs = etcd_get_array(reply, "kvs")) != NULL && json_object_array_length(kvs) > 0) {
            pthread_mutex_lock(&es->apply_lock);
            st = apply_kv(es, json_object_array_get_idx(kvs, 0), 0, ls->emit, &ev, &put);
            pthread_mutex_unlock(&es->apply_lock);
        }
        /* Still refused: a live session here holds that connection. (apply_kv
         * logs every other failure itself.) */
        if (put == AFSM_EEXISTS)
            etcd_log(es, AFSM_LOG_WARN, "etcd: session record not applied", "key", key);
        json_object_put(reply);
        etcd_fire(es, &ev);
        if (st != AFSM_OK)
            return st;
    }
    return AFSM_OK;
}

/* Pages are applied as they arrive, apply_lock taken for each: a write of
 * this node between two pages is newer than the load's revision, so the
 * page's older copy is dropped (tracks' mod revision; a deletion's
 * tombstone), as the watch's would be. */
afsm_status etcd_replica_load(etcd_store *es, int emit_differences)
{
    load_state ls = {.es = es, .emit = emit_differences, .status = AFSM_OK};
    ls.events = calloc(LOAD_PAGE, sizeof(*ls.events));
    if (ls.events == NULL)
        return AFSM_ENOMEM;
    int64_t revision;
    afsm_status st = range_prefix(&ls, &revision);
    if (st == AFSM_OK)
        st = ls.status;
    id_list known = {0};
    if (st != AFSM_OK) /* nothing counts as loaded: the caller loads again */
        goto out;
    pthread_mutex_lock(&es->apply_lock);
    /* What the replica has and etcd no longer does went while nobody
     * watched: deleted (with its g/ key's reason) or expired. */
    track_each(&es->tracks, collect_known, &known);
    if (known.failed) {
        pthread_mutex_unlock(&es->apply_lock);
        st = AFSM_ENOMEM;
        goto out;
    }
    if (ls.present.count > 0)
        qsort(ls.present.ids, ls.present.count, sizeof(afsm_uuid), uuid_order);
    if (ls.reason_count > 0)
        qsort(ls.reasons, ls.reason_count, sizeof(load_reason), reason_order);
    etcd_event gone = {0};
    for (size_t i = 0; i < known.count; i++) {
        if (ls.present.count > 0 &&
            bsearch(&known.ids[i], ls.present.ids, ls.present.count, sizeof(afsm_uuid), uuid_order))
            continue;
        /* The range was read before apply_lock was taken: a session this
         * node wrote after the range's revision is new, not vanished. */
        track_info ti = {0};
        if (track_get(&es->tracks, &known.ids[i], &ti) && (ti.mod_revision > revision || ti.mod_revision == 0))
            continue; /* (0: a create under way here, not applied yet) */
        /* A reason newer than the record held is this session's deletion;
         * an older one, an earlier life's of the same id. */
        load_reason probe = {.id = known.ids[i]};
        const load_reason *r = ls.reason_count > 0
                                   ? bsearch(&probe, ls.reasons, ls.reason_count, sizeof(load_reason), reason_order)
                                   : NULL;
        if (r != NULL && r->mod_revision > ti.mod_revision)
            track_set_reason(&es->tracks, &known.ids[i], r->why, r->text, r->len);
        etcd_apply_delete(es, &known.ids[i], &gone);
        if (emit_differences) {
            pthread_mutex_unlock(&es->apply_lock);
            etcd_fire(es, &gone);
            pthread_mutex_lock(&es->apply_lock);
        }
    }
    pthread_mutex_unlock(&es->apply_lock);
    st = load_blocked(&ls, revision);
    if (st != AFSM_OK)
        goto out;
    pthread_mutex_lock(&es->apply_lock);
    if (revision >= atomic_load_explicit(&es->applied_revision, memory_order_relaxed)) {
        es->session_keys = ls.sessions; /* etcd's count at `revision`, set with it */
        raise_revision(es, revision);   /* only ever raised (etcd_store.h) */
    }
    pthread_mutex_unlock(&es->apply_lock);
out:
    free(known.ids);
    load_state_free(&ls);
    return st;
}

/* ---- consistent lists and counts ------------------------------------------------- */

/* What a list or count must wait for: etcd's revision now, how many session
 * keys it holds at that revision, and the newest mod revision among them
 * after `after` (0: none changed since). One range request returning at
 * most one key (keys only); etcd reads the session keys to sort them. */
static afsm_status probe_sessions(etcd_store *es, int64_t after, int64_t *revision, int64_t *count, int64_t *newest)
{
    char key[KEYS_PREFIX_MAX + 3], end[KEYS_PREFIX_MAX + 3];
    memcpy(key, es->prefix, es->prefix_len);
    memcpy(key + es->prefix_len, "s/", 2);
    size_t n = es->prefix_len + 2;
    keys_range_end(key, n, end);
    json_object *body = etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, n)), *reply = NULL, *header,
                *kvs;
    body = etcd_with(body, "range_end", etcd_json_bytes(end, n));
    body = etcd_with(body, "keys_only", json_object_new_boolean(1));
    body = etcd_with(body, "limit", etcd_json_int64(1));
    body = etcd_with(body, "min_mod_revision", etcd_json_int64(after + 1));
    body = etcd_with(body, "sort_order", json_object_new_string("DESCEND"));
    body = etcd_with(body, "sort_target", json_object_new_string("MOD"));
    if (body == NULL)
        return AFSM_ENOMEM;
    afsm_status st = etcd_call(es->client, "/v3/kv/range", body, 1, &reply, NULL);
    json_object_put(body);
    if (st == AFSM_OK) {
        /* "count" is the range's, not the filtered answer's (etcd 3.4). */
        *revision = json_object_object_get_ex(reply, "header", &header) ? etcd_get_int64(header, "revision") : 0;
        *count = etcd_get_int64(reply, "count");
        kvs = etcd_get_array(reply, "kvs");
        *newest = kvs != NULL && json_object_array_length(kvs) > 0
                      ? etcd_get_int64(json_object_array_get_idx(kvs, 0), "mod_revision")
                      : 0;
        if (*revision <= 0)
            st = AFSM_EINTERNAL;
    }
    json_object_put(reply);
    return st == AFSM_ENOTFOUND ? AFSM_EINTERNAL : st;
}

/* Whether the replica holds etcd's sessions as of `revision` (apply_lock
 * held). Either the watch has applied that far, or nothing under s/
 * changed between what it applied and `revision`: every session key etcd
 * holds then was last written at or before applied_revision (newest <=
 * applied) and there are as many as the watch counted (session_keys at
 * applied_revision), so no key was deleted either. The second form is what
 * a quiet prefix needs: etcd's revision moves with every write anywhere
 * (other prefixes, other applications), and the watch sees none of those;
 * the gateway's watch cannot be asked for a progress notification. */
static int replica_reached(etcd_store *es, int64_t revision, int64_t count, int64_t newest)
{
    int64_t at = atomic_load_explicit(&es->applied_revision, memory_order_relaxed);
    return at >= revision || (at >= newest && es->session_keys == count);
}

afsm_status etcd_replica_sync(etcd_store *es)
{
    /* An event callback runs on the watch thread, which cannot wait for
     * itself: it sees the replica as of its event (afsm.h says so). */
    if (etcd_on_watch_thread(es))
        return AFSM_OK;
    /* One request timeout for the whole call, probe included: a probe
     * etcd answers late leaves the wait only what is left of it. */
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + es->request_timeout_ns;
    until.tv_sec += (time_t)(ns / 1000000000u);
    until.tv_nsec = (long)(ns % 1000000000u);
    int64_t from = atomic_load_explicit(&es->applied_revision, memory_order_acquire);
    int64_t revision = 0, count = 0, newest = 0;
    afsm_status st = probe_sessions(es, from, &revision, &count, &newest);
    if (st != AFSM_OK)
        return st;
    pthread_mutex_lock(&es->apply_lock);
    int reached = replica_reached(es, revision, count, newest);
    pthread_mutex_unlock(&es->apply_lock);
    if (reached)
        return AFSM_OK;
    if (es->config.log != NULL) {
        char text[24];
        snprintf(text, sizeof(text), "%lld", (long long)revision);
        etcd_log(es, AFSM_LOG_DEBUG, "etcd: consistent read waits for the replica", "revision", text);
    }
    pthread_mutex_lock(&es->apply_lock);
    /* The appliers broadcast `applied` on every change and revision raise. */
    while (!replica_reached(es, revision, count, newest)) {
        if (pthread_cond_timedwait(&es->applied, &es->apply_lock, &until) != 0) {
            st = replica_reached(es, revision, count, newest)
                     ? AFSM_OK
                     : errdetail_set(AFSM_EUNAVAILABLE,
                                     "etcd: the replica did not reach revision %lld within the request timeout",
                                     (long long)revision);
            break;
        }
    }
    pthread_mutex_unlock(&es->apply_lock);
    return st;
}

/* ---- the watch ------------------------------------------------------------------ */

typedef struct watch_state {
    etcd_store *es;
    int compacted;
    int refused;      /* an error answer (e.g. an expired auth token) */
    int apply_failed; /* a record not applied for memory: reload */
} watch_state;

static int watch_should_stop(void *ctx)
{
    return atomic_load_explicit(&((watch_state *)ctx)->es->stop, memory_order_acquire);
}

static int watch_message(void *ctx, json_object *message)
{
    watch_state *w = ctx;
    etcd_store *es = w->es;
    json_object *result, *events, *canceled;
    if (!json_object_object_get_ex(message, "result", &result)) {
        w->refused = 1; /* an error answer ends this stream */
        return 1;
    }
    if (json_object_object_get_ex(result, "canceled", &canceled) && json_object_get_boolean(canceled)) {
        w->compacted = etcd_get_int64(result, "compact_revision") > 0;
        return 1;
    }
    atomic_store_explicit(&es->watch_connected, 1, memory_order_relaxed);
    atomic_store_explicit(&es->watch_down_since_ns, 0, memory_order_relaxed);
    if (!json_object_object_get_ex(result, "events", &events)) {
        json_object *header, *created;
        /* A progress notification: everything up to its revision was sent. */
        if (!json_object_object_get_ex(result, "created", &created) &&
            json_object_object_get_ex(result, "header", &header)) {
            pthread_mutex_lock(&es->apply_lock);
            raise_revision(es, etcd_get_int64(header, "revision"));
            pthread_mutex_unlock(&es->apply_lock);
        }
        return 0;
    }
    if (!json_object_is_type(events, json_type_array)) {
        /* json-c asserts an array's type: a crafted reply must not abort
         * the process. Following on would skip its revisions: end this
         * stream; the next one resumes after applied_revision. */
        etcd_log(es, AFSM_LOG_WARN, "etcd: watch reply with bad events; watching again", NULL, NULL);
        return 1;
    }
    size_t n = json_object_array_length(events);
    /* A message holds whole revisions (etcd batches a watcher's events by
     * revision); the revision and the session key count are raised at each
     * revision's last event, never between the keys of one txn. */
    int64_t sessions_delta = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *event = json_object_array_get_idx(events, i);
        json_object *type, *kv, *next_kv;
        if (!json_object_object_get_ex(event, "kv", &kv))
            continue;
        int64_t revision = etcd_get_int64(kv, "mod_revision");
        int last_of_revision = i + 1 == n ||
                               !json_object_object_get_ex(json_object_array_get_idx(events, i + 1), "kv", &next_kv) ||
                               etcd_get_int64(next_kv, "mod_revision") != revision;
        /* "type" may be absent (PUT, the default) or anything in a crafted
         * reply: only the string "DELETE" is a deletion. */
        int deleted = json_object_object_get_ex(event, "type", &type) && json_object_is_type(type, json_type_string) &&
                      strcmp(json_object_get_string(type), "DELETE") == 0;
        etcd_event ev;
        pthread_mutex_lock(&es->apply_lock);
        afsm_status applied = apply_kv(es, kv, deleted, 1, &ev, NULL);
        if (applied == AFSM_OK) {
            sessions_delta += session_keys_delta(es, kv, deleted);
            if (last_of_revision) {
                es->session_keys += sessions_delta;
                sessions_delta = 0;
                raise_revision(es, revision);
            }
        }
        pthread_mutex_unlock(&es->apply_lock);
        etcd_fire(es, &ev);
        if (applied != AFSM_OK) {
            /* Not skipped for good: the keys of one txn share its revision,
             * so resuming after it could pass the record by; a reload reads
             * every record again and emits what changed. */
            w->apply_failed = 1;
            return 1;
        }
    }
    return 0;
}

/* Waits up to ms unless the store is stopping; 1 when it is. */
static int pause_ms(etcd_store *es, uint64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + ms * NS_PER_MS;
    until.tv_sec += (time_t)(ns / 1000000000u);
    until.tv_nsec = (long)(ns % 1000000000u);
    pthread_mutex_lock(&es->wait_lock);
    if (!atomic_load_explicit(&es->stop, memory_order_acquire))
        pthread_cond_timedwait(&es->wait_cond, &es->wait_lock, &until);
    pthread_mutex_unlock(&es->wait_lock);
    return atomic_load_explicit(&es->stop, memory_order_acquire);
}

/* The store whose watch runs on this thread (event callbacks run there). */
static _Thread_local const etcd_store *watching;

int etcd_on_watch_thread(const etcd_store *es)
{
    return watching == es;
}

static void *watch_main(void *arg)
{
    etcd_store *es = arg;
    watching = es;
    uint64_t backoff_ms = 50;
    int reload = 0;
    while (!atomic_load_explicit(&es->stop, memory_order_acquire)) {
        if (reload) {
            if (etcd_replica_load(es, 1) != AFSM_OK) {
                if (pause_ms(es, backoff_ms))
                    break;
                backoff_ms = backoff_ms < 1000 ? backoff_ms * 2 : 1000;
                continue;
            }
            etcd_log(es, AFSM_LOG_WARN, "etcd: replica reloaded (watch compacted, or a record not applied for memory)",
                     NULL, NULL);
            reload = 0;
        }
        char end[KEYS_PREFIX_MAX + 1];
        keys_range_end(es->prefix, es->prefix_len, end);
        int64_t from = atomic_load_explicit(&es->applied_revision, memory_order_acquire) + 1;
        json_object *create = etcd_with(json_object_new_object(), "key", etcd_json_bytes(es->prefix, es->prefix_len));
        create = etcd_with(create, "range_end", etcd_json_bytes(end, es->prefix_len));
        create = etcd_with(create, "start_revision", etcd_json_int64(from));
        create = etcd_with(create, "progress_notify", json_object_new_boolean(1));
        json_object *body = etcd_with(json_object_new_object(), "create_request", create);
        if (body == NULL) {
            pause_ms(es, backoff_ms);
            continue;
        }
        watch_state w = {.es = es};
        afsm_status st = etcd_stream(es->client, "/v3/watch", body, watch_message, watch_should_stop, &w);
        json_object_put(body);
        int was_connected = atomic_exchange_explicit(&es->watch_connected, 0, memory_order_relaxed);
        /* From now the replica may fall behind: the lag metric counts, from
         * the own write still awaiting its echo if older (the replica has
         * lacked it since: the figure must not fall as the watch is given up). */
        uint64_t down = etcd_lease_clock_ns();
        uint64_t awaited = atomic_load_explicit(&es->echo_pending_since_ns, memory_order_relaxed);
        if (awaited != 0 && awaited < down)
            down = awaited;
        uint64_t unset = 0;
        atomic_compare_exchange_strong_explicit(&es->watch_down_since_ns, &unset, down != 0 ? down : 1,
                                                memory_order_relaxed, memory_order_relaxed);
        /* A sample in flight would end on the catch-up with the outage as
         * its delay, and a node that writes nothing would keep that figure
         * once current again: the down figure covers the outage, and
         * samples measure a connected watch only (sample_echo). */
        pthread_mutex_lock(&es->apply_lock);
        es->echo_revision = 0;
        atomic_store_explicit(&es->echo_pending_since_ns, 0, memory_order_relaxed);
        pthread_mutex_unlock(&es->apply_lock);
        if (atomic_load_explicit(&es->stop, memory_order_acquire))
            break;
        if (w.compacted || w.apply_failed) {
            reload = 1;
            if (w.apply_failed && pause_ms(es, backoff_ms))
                break;
            continue;
        }
        if (w.refused) {
            etcd_log(es, AFSM_LOG_WARN, "etcd: watch refused; authenticating again", NULL, NULL);
            etcd_client_reauthenticate(es->client);
        }
        if (was_connected)
            backoff_ms = 50;
        if (st != AFSM_OK || !was_connected) {
            if (pause_ms(es, backoff_ms))
                break;
            backoff_ms = backoff_ms < 1000 ? backoff_ms * 2 : 1000;
        }
    }
    return NULL;
}

afsm_status etcd_replica_start(etcd_store *es)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return AFSM_ENOMEM;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int failed = pthread_cond_init(&es->wait_cond, &attr);
    pthread_condattr_destroy(&attr);
    if (failed)
        return AFSM_ENOMEM;
    pthread_mutex_init(&es->wait_lock, NULL);
    if (pthread_create(&es->watcher, NULL, watch_main, es) != 0) {
        pthread_cond_destroy(&es->wait_cond);
        pthread_mutex_destroy(&es->wait_lock);
        return AFSM_ENOMEM;
    }
    es->watcher_running = 1;
    return AFSM_OK;
}

void etcd_replica_stop(etcd_store *es)
{
    if (!es->watcher_running)
        return;
    pthread_mutex_lock(&es->wait_lock);
    atomic_store_explicit(&es->stop, 1, memory_order_release);
    pthread_cond_signal(&es->wait_cond);
    pthread_mutex_unlock(&es->wait_lock);
    pthread_join(es->watcher, NULL);
    pthread_cond_destroy(&es->wait_cond);
    pthread_mutex_destroy(&es->wait_lock);
    es->watcher_running = 0;
}
