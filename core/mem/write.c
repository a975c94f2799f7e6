/*
 * write.c: the in-memory store's writes: create (and restore), update,
 * remove, remove by user, token generations.
 *
 * Each takes the lock set of every shard it touches (home, connection,
 * user; for an eviction also the victim's home and connection shards),
 * changes every index, captures its events after unlocking, and fires them
 * after leaving its epoch section. Allocation happens before anything
 * visible changes, or is undone without allocating, so AFSM_ENOMEM leaves
 * the store as it was; a new record stays hidden (`removed`) until nothing
 * can fail.
 */
#include <assert.h>
#include <string.h>

#include "mem/index.h"
#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/clock.h"
#include "util/epoch.h"
#include "util/errdetail.h"
#include "util/uuid.h"

/* ---- create and restore -------------------------------------------------- */

/* A thread's creates go to one home shard HOME_RUN at a time (issue 15,
 * goal 5). A create writes many lines of its home shard (the lock, the
 * slab's free list, the sessions table's counts, the wheel bucket, the
 * state counters); with homes drawn at random, two creating threads kept
 * taking those lines from each other on every create. A run long enough
 * to keep them in the thread's cache, and short enough that a thread's
 * sessions still spread over every shard; runs are handed out round robin
 * (one atomic add per run), so concurrent threads start on different
 * shards. */
#define HOME_RUN 64

static _Thread_local struct {
    /* The engine the run belongs to, by serial: not its address, which a
     * later engine may get once this one is closed (it would inherit the
     * run, and not fill its shards in turn). 0: none yet. */
    uint64_t serial;
    unsigned shard, left;
} home_run;

/* Rewrites a new id's random tail (rand_b) so that mem_shard_of_id lands
 * on the creating thread's current home shard: a random tail's mix with
 * its low bits replaced by the shard, unmixed (table_mix is a bijection),
 * drawn again while the RFC 9562 variant bits come out wrong (1 in 4
 * keep them). Uniqueness and order come from the stamp in the first eight
 * bytes (util/uuid.c), which this leaves alone; the tail keeps 62 bits
 * less log2(shards) of randomness. */
static void place_in_home_run(mem_store *ms, afsm_uuid *id)
{
    if (home_run.serial != ms->serial || home_run.left == 0) {
        home_run.serial = ms->serial;
        home_run.shard = atomic_fetch_add_explicit(&ms->next_home, 1, memory_order_relaxed);
        home_run.left = HOME_RUN;
    }
    home_run.left--;
    uint64_t mask = ms->shard_mask, want = home_run.shard & mask, tail;
    memcpy(&tail, id->bytes + 8, sizeof(tail));
    const uint64_t drawn = tail;
    /* Four draws on average; the bound only keeps the loop finite (the
     * id as drawn is as valid, merely placed at random). */
    for (int draw = 0; draw < 64; draw++) {
        uint64_t placed = table_unmix((table_mix(tail) & ~mask) | want);
        memcpy(id->bytes + 8, &placed, sizeof(placed));
        if ((id->bytes[8] & 0xc0) == 0x80)
            return;
        tail = table_mix(tail + UINT64_C(0x9e3779b97f4a7c15));
    }
    memcpy(id->bytes + 8, &drawn, sizeof(drawn));
}

/* Builds the record (not yet visible to anyone). */
static afsm_status build(mem_store *ms, const session_spec *spec, session **out)
{
    /* The id first: it chooses the home shard, whose slab holds the record. */
    afsm_uuid id;
    if (spec->restore != NULL) {
        id = spec->restore->session_id;
    } else {
        uuid_v7_at(&id, (uint64_t)clock_wall_ns() / 1000000u);
        place_in_home_run(ms, &id);
    }
    session *s = slab_alloc(&ms->shards[mem_shard_of_id(ms, &id)].records);
    if (s == NULL)
        return AFSM_ENOMEM;
    s->id = id;
    metadata *meta = NULL;
    afsm_status status = metadata_merge(NULL, spec->metadata, spec->metadata_count, &meta);
    if (status != AFSM_OK) {
        slab_free(&mem_home(ms, s)->records, s);
        return status;
    }
    const afsm_session_info *old = spec->restore;
    uint64_t now = mem_now(ms);
    uint64_t created = now, last_active = now;
    if (old != NULL) {
        /* Back from wall time through the offset copies are made with, so a
         * copy restored reads back as it was. A time before the engine
         * clock's zero (a clock younger than the session) is clamped to it:
         * the caller has already refused what expired. */
        int64_t offset = atomic_load_explicit(&ms->wall_offset_ns, memory_order_relaxed);
        int64_t c = old->created_at_ns - offset, l = old->last_active_at_ns - offset;
        created = c > 0 ? (uint64_t)c : 0;
        last_active = l > 0 ? (uint64_t)l : 0;
        /* The etcd replica's records are stamped by several nodes: an
         * activation by a node whose wall clock runs behind the creator's
         * reads as earlier than the creation. Read it as active at its
         * creation: created <= last active holds for every copy (and
         * afsm_session_restore refuses a copy without it). */
        if (last_active < created)
            last_active = created;
    }
    /* Every time in the record is on the engine clock; copies report them
     * through one wall offset, so created <= last active <= expires always
     * hold and durations ignore wall-clock steps. */
    s->created_ns = created;
    s->connection_id = spec->connection_id;
    session_set_ip(s, &spec->client_ip);
    s->client_port = spec->client_port;
    s->timeout_ms = (uint32_t)(spec->timeout_ns / 1000000u);
    atomic_init(&s->last_active_ns, last_active);
    atomic_init(&s->refs, 1);
    /* Hidden until mem_create has done everything that can fail: a reader
     * (or a pin) may find it in a table before then, and must skip it. */
    atomic_init(&s->removed, 1);
    atomic_init(&s->state, old != NULL ? old->state : AFSM_STATE_CONNECTING);
    atomic_init(&s->meta, meta);
    atomic_init(&s->token_generation, old != NULL ? old->token_generation : 1);
    if (old != NULL) {
        atomic_init(&s->packets_sent, old->stats.packets_sent);
        atomic_init(&s->packets_received, old->stats.packets_received);
        atomic_init(&s->bytes_sent, old->stats.bytes_sent);
        atomic_init(&s->bytes_received, old->stats.bytes_received);
        atomic_init(&s->retransmissions, old->stats.retransmissions);
        atomic_init(&s->rtt_ms, old->stats.current_rtt_ms);
        /* A closed copy's last activity is when it closed (mem_update
         * stamps it): what is left of its linger runs from there, not from
         * the restore; never from later than now, so no copy lingers past
         * a whole linger from the restore. */
        if (old->state == AFSM_STATE_CLOSED)
            atomic_init(&s->last_traffic_ns, last_active < now ? last_active : now);
    }
    *out = s;
    return AFSM_OK;
}

/* Whether a copy being restored was past its deadline, judged in wall
 * time as the copy states it (exact even when its times predate the
 * engine clock). */
static int restored_expired(mem_store *ms, const session_spec *spec)
{
    const afsm_session_info *old = spec->restore;
    int64_t now_wall = mem_wall_now(ms);
    int64_t deadline = old->last_active_at_ns + (int64_t)(old->timeout_ms * 1000000u);
    if (ms->config.max_lifetime_ns != 0 && old->created_at_ns + (int64_t)ms->config.max_lifetime_ns < deadline)
        deadline = old->created_at_ns + (int64_t)ms->config.max_lifetime_ns;
    /* A closed copy whose linger is over is gone too (a close ahead of
     * now counts from now, as build has it). */
    int64_t closed_at = old->last_active_at_ns < now_wall ? old->last_active_at_ns : now_wall;
    if (old->state == AFSM_STATE_CLOSED && closed_at + (int64_t)ms->config.close_linger_ns <= now_wall)
        return 1;
    return deadline <= now_wall;
}

/* A record no reader ever saw (never in a table) goes straight back. */
static void free_unpublished(mem_store *ms, session *s)
{
    metadata_free(atomic_load_explicit(&s->meta, memory_order_relaxed));
    slab_free(&mem_home(ms, s)->records, s);
}

/* The cap's victim as seen before locking, so its shards can join the lock
 * set; NULL when no eviction looks needed. Inside an epoch section. */
static session *peek_victim(mem_store *ms, const session_spec *spec)
{
    if (ms->config.max_sessions_per_user == 0 || ms->config.limit_policy != AFSM_LIMIT_EVICT_OLDEST)
        return NULL;
    shard *uh = &ms->shards[mem_shard_of_user(ms, spec->user_id, spec->user_id_len)];
    user_entry *entry = index_lookup(uh, spec->user_id, spec->user_id_len);
    if (index_count(entry) < ms->config.max_sessions_per_user)
        return NULL;
    return atomic_load_explicit(&entry->oldest, memory_order_acquire);
}

/* Starts, before the lock set is taken, the misses its section would
 * otherwise take one after another (issue 15, goal 5: the shorter the
 * hold, the less two creating threads collide on a shard lock; and the
 * misses overlap): the id's and the connection's table slots together,
 * then the user's entry (found lock-free, as a reader would), then the
 * line of the user's newest session that index_link compares the new id
 * with and the one it links through. Only hints: the section looks
 * everything up again under the locks. Inside an epoch section. */
static void prefetch_for_create(const session *s, shard *sh, shard *ch, shard *uh, const session_spec *spec)
{
    table_prefetch(&sh->sessions, table_hash_uuid(&s->id, sh->sessions.seed));
    table_prefetch(&ch->connections, table_hash_uuid(&s->connection_id, ch->connections.seed));
    user_entry *entry = index_lookup(uh, spec->user_id, spec->user_id_len);
    if (entry == NULL)
        return;
    session *newest = atomic_load_explicit(&entry->newest, memory_order_acquire);
    if (newest != NULL) {
        __builtin_prefetch(&newest->id, 0, 3);
        __builtin_prefetch(&newest->user_prev, 1, 3);
    }
}

afsm_status mem_create(store *st, const session_spec *spec, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    session *s;
    afsm_status status = build(ms, spec, &s);
    if (status != AFSM_OK)
        return status;
    if (spec->restore != NULL && !ms->config.external_expiry &&
        (restored_expired(ms, spec) || mem_expired(ms, s, mem_now(ms)))) {
        free_unpublished(ms, s);
        return AFSM_EEXPIRED;
    }
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL) {
        free_unpublished(ms, s);
        return AFSM_ENOMEM;
    }
    /* Each shard found once: the lock set is built from the same indices. */
    unsigned sh_index = mem_shard_of_id(ms, &s->id);
    unsigned ch_index = mem_shard_of_connection(ms, &s->connection_id);
    unsigned uh_index = mem_shard_of_user(ms, spec->user_id, spec->user_id_len);
    shard *sh = &ms->shards[sh_index], *ch = &ms->shards[ch_index], *uh = &ms->shards[uh_index];
    lockset set;
    session *victim;
    user_entry *entry;
    uint32_t victim_state = 0;
    int published = 0, older_than_kept = 0;
    prefetch_for_create(s, sh, ch, uh, spec);
    for (;;) {
        victim = peek_victim(ms, spec);
        lockset_init3(&set, sh_index, ch_index, uh_index);
        if (victim != NULL) {
            lockset_add(&set, mem_shard_of_id(ms, &victim->id));
            lockset_add(&set, mem_shard_of_connection(ms, &victim->connection_id));
        }
        lockset_acquire(ms->shards, &set);
        entry = index_lookup(uh, spec->user_id, spec->user_id_len);
        if (index_count(entry) < ms->config.max_sessions_per_user || ms->config.max_sessions_per_user == 0 ||
            ms->config.limit_policy == AFSM_LIMIT_REJECT)
            break;
        /* The oldest we locked for must still be the oldest. */
        session *oldest = atomic_load_explicit(&entry->oldest, memory_order_relaxed);
        if (oldest == victim && oldest != NULL)
            break;
        lockset_release(ms->shards, &set);
    }

    int over_cap = ms->config.max_sessions_per_user != 0 && index_count(entry) >= ms->config.max_sessions_per_user;
    if (table_get(&ch->connections, &s->connection_id) != NULL) {
        status = AFSM_EEXISTS;
        goto unlock;
    }
    if (spec->restore != NULL && table_get(&sh->sessions, &s->id) != NULL) {
        status = AFSM_EEXISTS;
        goto unlock;
    }
    if (over_cap && ms->config.limit_policy == AFSM_LIMIT_REJECT) {
        status = AFSM_ELIMIT;
        goto unlock;
    }
    /* Evict-oldest keeps a user's newest sessions: a restored copy older
     * than all of them would be the one to go, so it does not come in at
     * the cost of a newer, live one. */
    if (over_cap && spec->restore != NULL && uuid_compare(&s->id, &victim->id) < 0) {
        status = AFSM_ELIMIT;
        older_than_kept = 1;
        goto unlock;
    }
    /* The user's entry before anything is visible: a reader that finds
     * the record finds its user too (in it, or through it). */
    if (entry == NULL)
        entry = index_entry(uh, uh_index, spec->user_id, spec->user_id_len);
    if (entry == NULL) {
        status = AFSM_ENOMEM;
        goto unlock;
    }
    index_set_user(s, entry);
    /* Table inserts, the only steps that can fail, while the record is
     * still hidden (`removed`): a reader that finds it skips it, a pin
     * cannot take it, and the victim of an eviction stays visible. */
    table_result r = table_insert(&sh->sessions, &s->id);
    if (r != TABLE_OK) {
        status = r == TABLE_NOMEM ? AFSM_ENOMEM : AFSM_EEXISTS;
        index_drop_if_empty(uh, entry);
        goto unlock;
    }
    published = 1;
    if (table_insert(&ch->connections, &s->connection_id) != TABLE_OK) {
        table_remove(&sh->sessions, &s->id);
        index_drop_if_empty(uh, entry);
        status = AFSM_ENOMEM;
        goto unlock;
    }
    /* Nothing can fail from here on. Evict before adding, so the user's
     * count never exceeds the cap (the entry stays for the add); the victim
     * disappears for readers before the new session appears, so no reader
     * sees both (the cap, "not even for an instant"). */
    if (over_cap) {
        victim_state = atomic_load_explicit(&victim->state, memory_order_relaxed);
        mem_remove_locked(ms, victim, AFSM_DELETE_EVICTED, 1);
    }
    index_link(entry, s);
    uint32_t state = atomic_load_explicit(&s->state, memory_order_relaxed);
    uint64_t last = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed);
    wheel_add(&sh->timers, &s->timer, mem_timer_deadline(ms, s, state, last));
    mem_count_state(sh, state, +1);
    if (spec->restore == NULL)
        mem_count(ms, &sh->created);
    /* Revealed last: the release pairs with session_removed's acquire, so
     * whoever sees it present sees everything above. */
    atomic_store_explicit(&s->removed, 0, memory_order_release);
unlock:
    /* A rolled-back record may have been found (hidden) in a table: it goes
     * the way of every removed record, through its last reference and the
     * epoch, never freed at once. */
    if (status != AFSM_OK && published)
        mem_unref_locked(ms, s);
    lockset_release(ms->shards, &set);
    /* After the locks: a thread's first detail allocates its buffer. */
    if (older_than_kept)
        errdetail_set(status,
                      "info.session_id: older than every session of its user, who is at max_sessions_per_user (%u) "
                      "under evict-oldest, which keeps the newest",
                      ms->config.max_sessions_per_user);
    /* The new session's CREATED first: a callback on the victim's DELETED
     * may create again for this user and evict the new session, whose own
     * DELETED must then follow its CREATED. Delivered as a group: the
     * CREATED's callback may restore the victim's id, and that new life's
     * events must follow the old one's DELETED. */
    mem_event events[2];
    events[0].pending = events[1].pending = false;
    if (status == AFSM_OK) {
        if (out != NULL)
            mem_fill_info(ms, s, out);
        if (over_cap)
            mem_event_capture(ms, &events[1], AFSM_EVENT_DELETED, victim, victim_state, victim_state,
                              MEM_REASON_EVICTED, sizeof(MEM_REASON_EVICTED) - 1);
        if (spec->restore == NULL)
            mem_event_capture(ms, &events[0], AFSM_EVENT_CREATED, s, 0, AFSM_STATE_CONNECTING, NULL, 0);
    }
    epoch_leave(e);
    if (status != AFSM_OK && !published)
        free_unpublished(ms, s);
    mem_event_fire_group(ms, events, 2);
    return status;
}

/* ---- removal -------------------------------------------------------------- */

void mem_place_locate(const mem_store *ms, const session *s, mem_place *place)
{
    place->home = mem_home(ms, s);
    place->conn = &ms->shards[mem_shard_of_connection(ms, &s->connection_id)];
    place->user = &ms->shards[mem_user_shard_index(ms, s)];
    place->user_hash = index_entry_hash(place->user, s);
    place->entry = NULL;
    place->id_hash = table_hash_uuid(&s->id, place->home->sessions.seed);
    place->connection_hash = table_hash_uuid(&s->connection_id, place->conn->connections.seed);
}

void mem_place_find_entry(const session *s, mem_place *place)
{
    place->entry = index_entry_of_hashed(place->user, s, place->user_hash);
}

void mem_place_of(const mem_store *ms, const session *s, mem_place *place)
{
    mem_place_locate(ms, s, place);
    mem_place_find_entry(s, place);
}

user_entry *mem_remove_placed_locked(mem_store *ms, session *s, const mem_place *place, afsm_delete_reason why,
                                     int keep_user_entry)
{
    shard *sh = place->home, *ch = place->conn;
    /* The up to four neighbours the unlinks below write (user list, timer
     * list) are random records: start their lines together, so the misses
     * overlap with each other and with the connection table's probe instead
     * of following one another (issue 15, goal 3). The links are read under
     * the lock set, which is what guards them. */
    session *user_next = atomic_load_explicit(&s->user_next, memory_order_relaxed);
    if (user_next != NULL)
        __builtin_prefetch(&user_next->user_prev, 1);
    if (s->user_prev != NULL)
        __builtin_prefetch(&s->user_prev->user_next, 1);
    if (s->timer.next != NULL) {
        __builtin_prefetch(s->timer.next, 1);
        __builtin_prefetch(s->timer.prev, 1);
    }
    /* Marked removed before anything it reaches is retired: a reader that
     * finds the record and sees it present may follow it to the user's
     * entry, which index_unlink may hand to the epoch. The seq_cst fence in
     * epoch_defer orders this store before the deferral's epoch read. */
    atomic_store_explicit(&s->removed, 1, memory_order_release);
    /* By address: the probes compare no other record's key (table.h). The
     * connection table's first: its slot is the one line here no lookup
     * has brought in yet, and the independent work below (the sessions
     * table's slot came with the lookup, the neighbours are prefetched)
     * proceeds while it arrives, rather than waiting behind it at the
     * reference drop's locked instruction. */
    table_remove_hashed(&ch->connections, &s->connection_id, place->connection_hash);
    user_entry *entry = place->entry;
    assert(entry == index_entry_of(place->user, s));
    index_unlink(place->user, entry, s, keep_user_entry);
    table_remove_hashed(&sh->sessions, &s->id, place->id_hash);
    if (s->timer.next != NULL)
        wheel_remove(&sh->timers, &s->timer);
    mem_count_state(sh, atomic_load_explicit(&s->state, memory_order_relaxed), -1);
    mem_count_removal(ms, sh, s, why);
    mem_unref_home_locked(sh, s);
    /* Churn leaves tombstones; rebuilding when they match the live entries
     * costs O(1) per removal, amortised. */
    table_maintain(&sh->sessions);
    table_maintain(&ch->connections);
    return entry;
}

void mem_remove_locked(mem_store *ms, session *s, afsm_delete_reason why, int keep_user_entry)
{
    mem_place place;
    mem_place_of(ms, s, &place);
    mem_remove_placed_locked(ms, s, &place, why, keep_user_entry);
}

afsm_status mem_remove_session(mem_store *ms, session *s, uint32_t event, afsm_delete_reason why, const char *reason,
                               size_t reason_len, int drop_ref, mem_event *ev)
{
    /* The lock set's shards, found once (mem_lockset_for_session's). */
    mem_place place;
    mem_place_of(ms, s, &place);
    lockset set;
    lockset_init3(&set, (unsigned)(place.home - ms->shards), (unsigned)(place.conn - ms->shards),
                  (unsigned)(place.user - ms->shards));
    lockset_acquire(ms->shards, &set);
    afsm_status status = AFSM_ENOTFOUND;
    uint32_t state = atomic_load_explicit(&s->state, memory_order_relaxed);
    if (!atomic_load_explicit(&s->removed, memory_order_relaxed)) {
        mem_remove_placed_locked(ms, s, &place, why, 0);
        status = AFSM_OK;
    }
    if (drop_ref)
        mem_unref_home_locked(place.home, s);
    lockset_release(ms->shards, &set);
    ev->pending = false;
    /* Without a callback there is nothing to copy (mem_event_capture's own
     * first test, without the call). */
    if (status == AFSM_OK && ms->config.emit != NULL)
        mem_event_capture(ms, ev, event, s, state, state, reason, reason_len);
    return status;
}

afsm_status mem_remove(store *st, const afsm_uuid *id, const char *reason, size_t reason_len)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    session *s = mem_lookup(ms, id);
    if (s != NULL) {
        /* The unlinks need the user's entry (or, for an inline id, the
         * users-table slot that finds it) and the record's last line
         * (timer and user-list links): two more misses, fetched together
         * rather than one after the other. */
        shard *us = &ms->shards[mem_user_shard_index(ms, s)];
        index_prefetch_entry(us, s, index_entry_hash(us, s));
        __builtin_prefetch((const char *)s + 128, 1);
    }
    if (reason == NULL || reason_len == 0) {
        reason = MEM_REASON_DELETED;
        reason_len = sizeof(MEM_REASON_DELETED) - 1;
    }
    mem_event ev;
    ev.pending = false; /* not the whole struct: its user id buffer is 257 bytes */
    afsm_status status =
        s != NULL ? mem_remove_session(ms, s, AFSM_EVENT_DELETED, AFSM_DELETE_REQUESTED, reason, reason_len, 0, &ev)
                  : AFSM_ENOTFOUND;
    epoch_leave(e);
    mem_event_fire(ms, &ev);
    return status;
}

/* The user's sessions present now, each with a reference of its own so
 * that it stays valid once the section ends: a snapshot, not a bound on
 * ids, so a restored session whose id is above every id drawn here is
 * included, and sessions the user creates meanwhile are not (the call
 * ends). NULL (and *n = 0) for a user without sessions; *failed on ENOMEM,
 * with no reference left taken. */
static session **snapshot_user(mem_store *ms, shard *us, const char *user_id, size_t user_id_len, size_t *n,
                               bool *failed)
{
    *n = 0;
    *failed = false;
    session **taken = NULL;
    size_t capacity = 0;
    user_entry *entry = index_lookup(us, user_id, (uint16_t)user_id_len);
    for (session *s = entry != NULL ? index_first(entry) : NULL; s != NULL; s = index_next(s)) {
        if (session_removed(s))
            continue;
        if (*n == capacity) {
            size_t grown = capacity != 0 ? 2 * capacity : index_count(entry) + 16;
            session **bigger = mem_alloc(grown * sizeof(*bigger));
            if (bigger == NULL) {
                for (size_t i = 0; i < *n; i++)
                    mem_unref(ms, taken[i]);
                mem_free(taken);
                *n = 0;
                *failed = true;
                return NULL;
            }
            if (*n != 0)
                memcpy(bigger, taken, *n * sizeof(*bigger));
            mem_free(taken);
            taken = bigger;
            capacity = grown;
        }
        /* Only while a reference exists: zero means it is being freed. */
        uint32_t refs = atomic_load_explicit(&s->refs, memory_order_relaxed);
        while (refs != 0 && !atomic_compare_exchange_weak_explicit(&s->refs, &refs, refs + 1, memory_order_acq_rel,
                                                                   memory_order_relaxed)) {
        }
        if (refs != 0)
            taken[(*n)++] = s;
    }
    return taken;
}

afsm_status mem_remove_by_user(store *st, const char *user_id, size_t user_id_len, const char *reason,
                               size_t reason_len, size_t *removed)
{
    mem_store *ms = (mem_store *)st;
    *removed = 0;
    if (reason == NULL || reason_len == 0) {
        reason = MEM_REASON_DELETED;
        reason_len = sizeof(MEM_REASON_DELETED) - 1;
    }
    shard *us = &ms->shards[mem_shard_of_user(ms, user_id, user_id_len)];
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    size_t n;
    bool failed;
    session **taken = snapshot_user(ms, us, user_id, user_id_len, &n, &failed);
    epoch_leave(e);
    if (failed)
        return AFSM_ENOMEM;
    /* One section per session, its event delivered after it: a callback
     * that blocks or calls back in holds up nothing else. Each walk of the
     * user's list happened once, above: linear however many sessions the
     * user creates meanwhile. */
    for (size_t i = 0; i < n; i++) {
        session *s = taken[i];
        mem_event ev;
        ev.pending = false;
        e = epoch_enter(); /* cannot fail: this thread has its record */
        if (session_removed(s))
            mem_unref(ms, s); /* gone meanwhile; its remover fired the event */
        else
            *removed +=
                mem_remove_session(ms, s, AFSM_EVENT_DELETED, AFSM_DELETE_USER, reason, reason_len, 1, &ev) == AFSM_OK;
        epoch_leave(e);
        mem_event_fire(ms, &ev);
    }
    mem_free(taken);
    return AFSM_OK;
}

/* ---- update --------------------------------------------------------------- */

/* Inside the seqlock's write side: release stores, so a copy sees all six
 * or none (store.c, read_consistent). */
static void set_stats(session *s, const afsm_stats *v)
{
    atomic_store_explicit(&s->packets_sent, v->packets_sent, memory_order_release);
    atomic_store_explicit(&s->packets_received, v->packets_received, memory_order_release);
    atomic_store_explicit(&s->bytes_sent, v->bytes_sent, memory_order_release);
    atomic_store_explicit(&s->bytes_received, v->bytes_received, memory_order_release);
    atomic_store_explicit(&s->retransmissions, v->retransmissions, memory_order_release);
    atomic_store_explicit(&s->rtt_ms, v->current_rtt_ms, memory_order_release);
}

afsm_status mem_update(store *st, const afsm_uuid *id, const afsm_update *u, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    session *s = mem_lookup(ms, id);
    if (s == NULL) {
        epoch_leave(e);
        return AFSM_ENOTFOUND;
    }
    int closing = (u->fields & AFSM_UPDATE_STATE) && u->state == AFSM_STATE_CLOSED;
    shard *sh = mem_home(ms, s);
    lockset set;
    if (closing) {
        mem_lockset_for_session(ms, s, &set);
    } else {
        lockset_init(&set);
        lockset_add(&set, mem_shard_of_id(ms, &s->id));
    }
    lockset_acquire(ms->shards, &set);

    afsm_status status = AFSM_OK;
    metadata *old_meta = atomic_load_explicit(&s->meta, memory_order_relaxed);
    metadata *new_meta = old_meta;
    uint32_t old_state = atomic_load_explicit(&s->state, memory_order_relaxed);
    uint32_t new_state = (u->fields & AFSM_UPDATE_STATE) ? u->state : old_state;
    int remove_now = closing && old_state != AFSM_STATE_CLOSED && ms->config.close_linger_ns == 0;
    uint64_t now = mem_now(ms);
    if (atomic_load_explicit(&s->removed, memory_order_relaxed)) {
        status = AFSM_ENOTFOUND;
        goto unlock;
    }
    if (mem_expired(ms, s, now)) {
        status = AFSM_EEXPIRED;
        goto unlock;
    }
    if (!store_transition_allowed(old_state, new_state)) {
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
    /* Closing is the session's last activity: a copy then says when it
     * closed, and a restore of it lingers only what was left (build). */
    if (closing && old_state != AFSM_STATE_CLOSED)
        sync_store_max_u64(&s->last_active_ns, now);
    /* The copy a close returns is the session's last word: counts still
     * deferred in a pinned handle (afsm_handle_packet) go in first. */
    if (closing && atomic_load_explicit(&s->refs, memory_order_relaxed) > 1)
        mem_fold_session(ms, s);
    if (remove_now)
        mem_remove_locked(ms, s, AFSM_DELETE_CLOSED, 0);
    int set_stats_now = (u->fields & AFSM_UPDATE_STATS) != 0;
    if (new_meta != old_meta || new_state != old_state || set_stats_now) {
        sync_seq_write_begin(&s->seq);
        atomic_store_explicit(&s->state, new_state, memory_order_release);
        atomic_store_explicit(&s->meta, new_meta, memory_order_release); /* publishes the blob too */
        if (set_stats_now)
            set_stats(s, &u->stats);
        sync_seq_write_end(&s->seq);
        if (new_meta != old_meta && old_meta != NULL)
            epoch_defer(sh->defer, &old_meta->epoch_entry, mem_metadata_destroy);
    }
    if (new_state != old_state && !remove_now) {
        mem_count_state(sh, old_state, -1);
        mem_count_state(sh, new_state, +1);
        /* Becoming active is activity; closing starts the linger. Either can
         * bring the timer's next look forward, so relink it. */
        if (new_state == AFSM_STATE_ACTIVE)
            sync_store_max_u64(&s->last_active_ns, now);
        if (new_state == AFSM_STATE_CLOSED)
            atomic_store_explicit(&s->last_traffic_ns, now, memory_order_relaxed);
        uint64_t last = atomic_load_explicit(&s->last_active_ns, memory_order_relaxed) & ~SESSION_EXPIRED_BIT;
        if (s->timer.next != NULL) {
            wheel_remove(&sh->timers, &s->timer);
            wheel_add(&sh->timers, &s->timer, mem_timer_deadline(ms, s, new_state, last));
        }
    }
unlock:
    lockset_release(ms->shards, &set);
    mem_event events[2];
    events[0].pending = events[1].pending = false;
    if (status == AFSM_OK) {
        if (out != NULL)
            mem_fill_info(ms, s, out);
        if (new_state != old_state)
            mem_event_capture(ms, &events[0], AFSM_EVENT_STATE_CHANGED, s, old_state, new_state, NULL, 0);
        if (remove_now) {
            mem_event_capture(ms, &events[1], AFSM_EVENT_DELETED, s, new_state, new_state, MEM_REASON_CLOSED,
                              sizeof(MEM_REASON_CLOSED) - 1);
            /* Its latest earlier undelivered event is the state change,
             * which capture cannot see (not held yet). Both may wait on an
             * IDLE of a batch this thread delivers; that IDLE's callback
             * may restore the id, whose new life's event then waits on
             * this DELETED, which must wait on the state change. */
            if (events[0].pending && events[1].pending)
                events[1].prelude = &events[0];
        }
    }
    epoch_leave(e);
    /* As a group: the state change's callback may restore the id, whose
     * new life's events must follow this DELETED. */
    mem_event_fire_group(ms, events, 2);
    return status;
}

/* ---- token generations ---------------------------------------------------- */

afsm_status mem_rotate_generation(store *st, const afsm_uuid *id, afsm_session_info *out)
{
    mem_store *ms = (mem_store *)st;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    afsm_status status = AFSM_ENOTFOUND;
    session *s = mem_lookup(ms, id);
    if (s != NULL && mem_expired(ms, s, mem_now(ms))) {
        status = AFSM_EEXPIRED;
    } else if (s != NULL && atomic_load_explicit(&s->state, memory_order_relaxed) == AFSM_STATE_CLOSED) {
        status = AFSM_ECLOSED;
    } else if (s != NULL) {
        /* One atomic step: two rotations racing get two generations, and
         * each reports its own, so only the later one's token survives. */
        uint32_t generation = atomic_fetch_add_explicit(&s->token_generation, 1, memory_order_relaxed) + 1;
        mem_fill_info(ms, s, out);
        out->token_generation = generation;
        status = AFSM_OK;
    }
    epoch_leave(e);
    return status;
}
