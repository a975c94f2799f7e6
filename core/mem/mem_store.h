/*
 * mem_store.h: what the files of the in-memory store share.
 *
 *   store.c      open, close, the ops table, placement, copies, lookups, metrics
 *   write.c      create, restore, update, remove, token generations
 *   dataplane.c  heartbeat, stats and pinned handles: atomics only
 *   list.c       filtered, ordered, paginated listing
 *   expiry.c     the wheels' verdicts: expiry, idle, closed linger
 *   batch.c      the batch calls, staged: look up all, prefetch, then act
 *
 * The rules every file keeps (see store.c's head for the why):
 * - reads run inside an epoch section and take no lock;
 * - writes take the lock set of every shard they touch, in ascending order;
 * - events are captured inside the epoch section (copies of what they need)
 *   and delivered after the caller's outermost section has ended, so a
 *   callback that blocks holds no lock and no epoch: it delays only its own
 *   caller, never another thread's reclamation or another engine's close.
 */
#ifndef AFSM_MEM_STORE_H
#define AFSM_MEM_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "afsm.h"
#include "mem/session.h"
#include "mem/shard.h"
#include "store.h"
#include "util/clock.h"

typedef struct mem_store {
    store base;
    store_config config;
    char server_addr[AFSM_SERVER_ADDR_MAX + 1];
    uint32_t server_addr_len;
    unsigned shard_mask;
    uint64_t seed;
    /* This engine among every engine the process opened (from 1, never
     * reused): what a thread's home run is keyed by (write.c), since a
     * new engine may be allocated where a closed one was. */
    uint64_t serial;
    shard *shards;
    _Atomic int64_t wall_offset_ns;     /* wall clock minus engine clock, refreshed per advance */
    _Atomic uint64_t wheels_reached_ns; /* the `now` of the last completed advance */
    _Atomic size_t pinned;
    /* Hands each creating thread its next home shard (write.c). Written
     * once per run of creates, so kept off the lines every call reads. */
    char pad_before_next_home[64];
    _Atomic unsigned next_home;
} mem_store;

/* A handle's deferred counters, in afsm_stats order: packets sent and
 * received, bytes sent and received, retransmissions. */
#define HANDLE_COUNTERS 5

typedef struct mem_handle {
    store_handle base;
    mem_store *ms;
    session *s;
    /* afsm_handle_packet's stats, kept here by one thread (the owner, the
     * first to send a packet through the handle) with plain loads and
     * stores, and moved into the session by mem_fold_handles (every
     * advance) and at release. owner: NULL until the first packet, then
     * set once under the home shard's handles_lock (to a sentinel when the
     * handle could not be listed: nobody defers). added: the owner's
     * running totals, written only by it. folded: how much of added the
     * session already has, written only under handles_lock. Other
     * threads' packets go straight to the session. */
    _Atomic(void *) owner;
    /* With base, ms, s and owner, added[0..3] fill the first cache line:
     * a packet without retransmissions touches no other. */
    _Atomic uint64_t added[HANDLE_COUNTERS];
    _Atomic uint64_t folded[HANDLE_COUNTERS];
    /* 1 + this handle's index in the home shard's deferring array, 0 when
     * not there (handles_lock). */
    size_t slot;
} mem_handle;

/* Handles are allocated cache-line aligned (mem_pin), so "the first line"
 * above is one line whatever malloc the application links. */
#define MEM_HANDLE_ALIGN 64
#define MEM_HANDLE_SIZE  ((sizeof(mem_handle) + MEM_HANDLE_ALIGN - 1) & ~(size_t)(MEM_HANDLE_ALIGN - 1))
_Static_assert(offsetof(mem_handle, added) + 4 * sizeof(uint64_t) <= MEM_HANDLE_ALIGN,
               "a packet's fields of a handle must fit its first cache line");

/* Reasons the store gives in DELETED and EXPIRED events. */
#define MEM_REASON_EXPIRED "expired"
#define MEM_REASON_CLOSED  "closed"
#define MEM_REASON_EVICTED "evicted"
#define MEM_REASON_DELETED "deleted"

/* Placement (store.c). */
static inline unsigned mem_shard_of_id(const mem_store *ms, const afsm_uuid *id)
{
    /* A v7 id's last eight bytes are random (a new session's placed so
     * that this lands on its creator's home shard, write.c): no need to
     * hash them twice. */
    uint64_t tail;
    memcpy(&tail, id->bytes + 8, sizeof(tail));
    return (unsigned)table_mix(tail) & ms->shard_mask;
}
unsigned mem_shard_of_connection(const mem_store *ms, const afsm_uuid *id);
unsigned mem_shard_of_user(const mem_store *ms, const char *user_id, size_t len);
/* The shard of s's user: its entry's, or for an inline id (mem/index.h)
 * the id's hash. Lock-free. */
unsigned mem_user_shard_index(const mem_store *ms, const session *s);
void mem_lockset_for_session(const mem_store *ms, const session *s, lockset *set);

static inline uint64_t mem_now(const mem_store *ms)
{
    /* The default clock read in place: every Get's expiry check pays it. */
    if (ms->config.clock == clock_monotonic_coarse_ns)
        return clock_coarse_now_ns();
    return ms->config.clock(ms->config.clock_ctx);
}

/* "Now" as reported to callers: the engine clock plus the wall offset, the
 * same basis as every timestamp in a copy (so durations and event times
 * follow an injected clock too). */
static inline int64_t mem_wall_now(const mem_store *ms)
{
    return (int64_t)mem_now(ms) + atomic_load_explicit((_Atomic int64_t *)&ms->wall_offset_ns, memory_order_relaxed);
}

static inline uint64_t mem_deadline(const mem_store *ms, const session *s, uint64_t last_active_ns)
{
    return session_deadline(s, last_active_ns, ms->config.max_lifetime_ns);
}

static inline bool mem_expired(const mem_store *ms, const session *s, uint64_t now_ns)
{
    if (ms->config.external_expiry)
        return false;
    return session_expired(s, now_ns, ms->config.max_lifetime_ns);
}

static inline shard *mem_home(const mem_store *ms, const session *s)
{
    return &ms->shards[mem_shard_of_id(ms, &s->id)];
}

/* Records and copies (store.c). */
void mem_session_destroy(ck_epoch_entry_t *entry);
void mem_metadata_destroy(ck_epoch_entry_t *entry);
void mem_unref_locked(mem_store *ms, session *s);
/* The same with s's home shard (mem_home) already found. */
void mem_unref_home_locked(shard *home, session *s);
/* The same, taking the home shard's lock (for a reference held outside any
 * lock: an expiry batch's, a delete_by_user snapshot's). */
void mem_unref(mem_store *ms, session *s);
void mem_read_state(const session *s, uint32_t *state, metadata **meta);
void mem_fill_info(const mem_store *ms, const session *s, afsm_session_info *out);
/* An event copied out inside an epoch section (with the user id, which
 * lives in the user's entry), delivered by mem_event_fire once the caller
 * holds no section. reason must outlive the delivery (the caller's argument
 * or a static string). */
typedef struct mem_event {
    afsm_event ev;
    bool pending; /* false: nothing to deliver (no callback, or no event) */
    /* The latest earlier change of the same session (by id) whose event
     * this thread has not delivered yet (an expiry pass's IDLE, an event
     * waiting for its own prelude, or one of a held group waiting for the
     * group's earlier events: store.c's in_flight_top): delivered first. */
    struct mem_event *prelude;
    uint64_t seq; /* this thread's capture order: the prelude is the latest earlier */
    char user_id[AFSM_USER_ID_MAX + 1];
} mem_event;
void mem_event_capture(const mem_store *ms, mem_event *out, uint32_t type, const session *s, uint32_t old_state,
                       uint32_t new_state, const char *reason, size_t reason_len);
/* Delivers a captured event (if any). Outside every epoch section. */
void mem_event_fire(const mem_store *ms, mem_event *event);
/* Delivers events[0..n) in order, captured together (one section) and
 * still waiting while the earlier ones' callbacks run: a change one of
 * those makes to a later one's session goes out after that one. */
void mem_event_fire_group(const mem_store *ms, mem_event *events, size_t n);
/* The same listing around a caller's own delivery loop (an expiry group's
 * removals, delivered between its IDLEs): events[0..n) stay findable as
 * preludes until the release. Each has pending set (false: nothing). The
 * hold lives in the caller's frame; holds nest and are released in
 * reverse, on the thread that took them. */
typedef struct mem_event_hold {
    const mem_store *ms;
    mem_event *events; /* count of them: one (mem_event_fire), or a group */
    size_t count;
    struct mem_event_hold *next;
} mem_event_hold;
void mem_events_hold(const mem_store *ms, mem_event *events, size_t n, mem_event_hold *hold);
void mem_events_release(mem_event_hold *hold);
/* The undelivered IDLE event of s in the expiry batch this thread is
 * delivering, if any (expiry.c): a callback's change to s must not be
 * reported before it. mem_event_capture asks this after the events of s
 * in flight on this thread (store.c). */
mem_event *mem_event_prelude(const mem_store *ms, const session *s);
/* Inside an epoch section; NULL when absent or already removed. Inline:
 * every Get, heartbeat and stats addition starts here. */
static inline session *mem_lookup(mem_store *ms, const afsm_uuid *id)
{
    const void *key = table_get_uuid(&ms->shards[mem_shard_of_id(ms, id)].sessions, id);
    session *s = (session *)key; /* the id is the record's first field */
    return s != NULL && !session_removed(s) ? s : NULL;
}
session *mem_lookup_connection(mem_store *ms, const afsm_uuid *connection_id);

/* Counters, all written under the home shard's lock (store.c). */
void mem_count_state(shard *sh, uint32_t state, int delta);
void mem_count_removal(const mem_store *ms, shard *sh, const session *s, afsm_delete_reason why);
void mem_count(const mem_store *ms, _Atomic uint64_t *counter);

/* Writes (write.c). */
afsm_status mem_create(store *st, const session_spec *spec, afsm_session_info *out);
afsm_status mem_update(store *st, const afsm_uuid *id, const afsm_update *update, afsm_session_info *out);
afsm_status mem_remove(store *st, const afsm_uuid *id, const char *reason, size_t reason_len);
afsm_status mem_remove_by_user(store *st, const char *user_id, size_t user_id_len, const char *reason,
                               size_t reason_len, size_t *removed);
afsm_status mem_rotate_generation(store *st, const afsm_uuid *id, afsm_session_info *out);
/* Where a removal of s writes: its home, connection and user shards, its
 * keys' hashes in their tables and its user's entry, found once
 * (mem_place_of) by a caller that also needs them before removing: for
 * its lock set, or to prefetch (an expiry group, mem/expiry.c). Found
 * before the lock set is taken, so that an inline user id's lookup
 * (mem/index.h) is not made while holding it. */
typedef struct mem_place {
    shard *home;
    shard *conn;
    shard *user;                   /* mem_user_shard_index's */
    unsigned long user_hash;       /* index_entry_hash's, in user->users */
    unsigned long id_hash;         /* of s->id in home->sessions */
    unsigned long connection_hash; /* of s->connection_id in conn->connections */
    /* index_entry_of's answer: s's entry whenever s is found not removed
     * under its lock set (index_entry_of says why). */
    struct user_entry *entry;
} mem_place;
/* Inside an epoch section with s seen not removed in it (a long id's
 * entry, which it reads, may be freed otherwise), or with s's lock set
 * held. */
void mem_place_of(const mem_store *ms, const session *s, mem_place *place);
/* mem_place_of in two steps, for a caller that prefetches the user's
 * entry between them (an expiry group, mem/expiry.c): all but the entry,
 * then the entry. */
void mem_place_locate(const mem_store *ms, const session *s, mem_place *place);
void mem_place_find_entry(const session *s, mem_place *place);
/* Removes s whole; caller holds its lock set and checked it is not removed.
 * keep_user_entry: see index_unlink (an eviction adds right after; an
 * expiry group drops the entries it empties together, mem/expiry.c). */
void mem_remove_locked(mem_store *ms, session *s, afsm_delete_reason why, int keep_user_entry);
/* The same at a place mem_place_of found for s. Returns the user's entry
 * it took s off (retired unless keep_user_entry, when its count may be 0). */
struct user_entry *mem_remove_placed_locked(mem_store *ms, session *s, const mem_place *place, afsm_delete_reason why,
                                            int keep_user_entry);
/* Takes s's lock set, removes it unless already removed (AFSM_ENOTFOUND),
 * captures its event into *ev for the caller to fire after its section.
 * drop_ref: also release one reference the caller holds (in the same lock
 * hold). Inside an epoch section, with s seen not removed in it. */
afsm_status mem_remove_session(mem_store *ms, session *s, uint32_t event, afsm_delete_reason why, const char *reason,
                               size_t reason_len, int drop_ref, mem_event *ev);

/* Lock-free data plane (dataplane.c). */
afsm_status mem_heartbeat(store *st, const afsm_uuid *id, uint64_t *remaining_ns);
afsm_status mem_add_stats(store *st, const afsm_uuid *id, const afsm_stats *delta);
afsm_status mem_pin(store *st, const afsm_uuid *id, int by_connection, store_handle **out);
afsm_status mem_handle_heartbeat(store_handle *h, uint64_t *remaining_ns);
afsm_status mem_handle_add_stats(store_handle *h, const afsm_stats *delta);
/* Heartbeat and stats in one pass at the caller's engine-clock reading;
 * the owner's stats are deferred (mem_handle above). */
afsm_status mem_handle_packet(store_handle *h, uint64_t now_ns, const afsm_stats *delta, uint64_t *remaining_ns);
/* Moves every deferred count of the shard's handles into their sessions:
 * O(handles used with afsm_handle_packet). Takes the shard's
 * handles_lock (a leaf lock). */
void mem_fold_handles(shard *sh);
/* The same for the handles of one session, under its home shard's lock (a
 * close's final copy): O(handles used with afsm_handle_packet in that
 * shard). */
void mem_fold_session(mem_store *ms, session *s);
void mem_handle_session_id(const store_handle *h, afsm_uuid *out);
void mem_handle_release(store_handle *h);
/* One item of a heartbeat or stats addition, for the staged batches: s
 * found inside the caller's epoch section; *activate tells the caller to
 * call mem_activate (inside the section) and fire its event after it. */
afsm_status mem_heartbeat_session(mem_store *ms, session *s, uint64_t *remaining_ns, bool *activate);
afsm_status mem_add_stats_session(mem_store *ms, session *s, const afsm_stats *delta, bool *activate);

/* Staged batches (batch.c): store.h's get_batch, heartbeat_batch and
 * add_stats_batch. */
void mem_get_batch(store *st, const afsm_uuid *ids, size_t n, afsm_session_info *out, afsm_status *statuses);
void mem_heartbeat_batch(store *st, const afsm_uuid *ids, size_t n, uint64_t *remaining_ns, afsm_status *statuses);
void mem_add_stats_batch(store *st, const afsm_uuid *ids, const afsm_stats *deltas, size_t n, afsm_status *statuses);

/* Listing (list.c). */
afsm_status mem_list(store *st, const afsm_list_filter *filter, afsm_session_info *out, size_t *count, uint64_t *total,
                     afsm_uuid *next_cursor);

/* Time (expiry.c). */
afsm_status mem_advance(store *st, uint64_t now, size_t *expired);
/* When the wheel must next look at s. Home shard lock held. */
uint64_t mem_timer_deadline(const mem_store *ms, const session *s, uint32_t state, uint64_t last_active);
/* State change under the home shard lock (the seqlock's writer side). */
void mem_set_state_locked(shard *sh, session *s, uint32_t from, uint32_t to);
/* A heartbeat on a CONNECTING or IDLE session (or traffic on an IDLE one
 * under idle detection) makes it ACTIVE: takes the home shard lock, re-checks,
 * changes the state and relinks the timer, and captures the event into *ev
 * for the caller to fire after its own epoch section. Enters a section of
 * its own, so it may be called with or without one: AFSM_ENOMEM when that
 * is the thread's first and its record cannot be allocated. */
afsm_status mem_activate(mem_store *ms, session *s, mem_event *ev);

#endif
