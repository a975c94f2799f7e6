/*
 * batch.c: the batch calls (afsm_session_get_batch, _heartbeat_batch,
 * _add_stats_batch) staged for the memory system, as DPDK's bulk lookups
 * are: per group of BATCH_GROUP ids, look every id up, prefetch every
 * found record's lines (and, for a get, its user's entry), and only then
 * copy or act. A single call waits for each miss in turn (table slot,
 * record, user entry); a group's misses overlap, so a batch item costs a
 * fraction of a single call at 1M sessions (bench/: GetBatch).
 *
 * Semantics are the single calls' (store.c's get, dataplane.c's heartbeat
 * and stats), item by item: the same statuses, a heartbeat still makes a
 * CONNECTING or IDLE session ACTIVE (mem_activate), traffic still wakes an
 * IDLE one. What differs is only when things happen:
 * - a group's items share one epoch section, and a get's expiry check one
 *   clock read, taken after the group's copies (a single get reads it after
 *   its copy too);
 * - the events of a group's activations are captured inside its section
 *   and fired, in item order, once that section has ended (the rule of
 *   mem_store.h), so a callback sees the whole group already applied.
 *
 * Locking: none here; activations take the home shard lock in
 * mem_activate, as the single calls do.
 */
#include "mem/index.h"
#include "mem/mem_store.h"
#include "util/epoch.h"

/* Ids per epoch section: enough misses in flight to cover a memory
 * latency (the line fill buffers hold 10-12 per core), few enough that the
 * prefetched lines are still in L1 when the copy reaches them, and the
 * event buffers of heartbeat groups stay a few KB of stack. */
#define BATCH_GROUP 16

static inline void prefetch_read(const void *p)
{
    __builtin_prefetch(p, 0, 3);
}

static inline void prefetch_write(const void *p)
{
    __builtin_prefetch(p, 1, 3);
}

/* Stage 1: hash every id of the group and start fetching the table slot
 * its probe begins at; stage 2: probe (the slots are arriving together,
 * and each probe's record line, for the key compare, overlaps the next
 * probes'); the callers' stage 3 prefetches what they will touch. */
static void lookup_group(mem_store *ms, const afsm_uuid *ids, size_t n, session **found)
{
    const table *tables[BATCH_GROUP];
    unsigned long hashes[BATCH_GROUP];
    for (size_t i = 0; i < n; i++) {
        tables[i] = &ms->shards[mem_shard_of_id(ms, &ids[i])].sessions;
        hashes[i] = table_hash_uuid(&ids[i], tables[i]->seed);
        table_prefetch(tables[i], hashes[i]);
    }
    for (size_t i = 0; i < n; i++) {
        session *s = (session *)table_get_uuid_hashed(tables[i], &ids[i], hashes[i]);
        found[i] = s != NULL && !session_removed(s) ? s : NULL;
    }
}

static void fail_rest(afsm_status *statuses, size_t from, size_t n, afsm_status status)
{
    for (size_t i = from; i < n; i++)
        statuses[i] = status;
}

void mem_get_batch(store *st, const afsm_uuid *ids, size_t n, afsm_session_info *out, afsm_status *statuses)
{
    mem_store *ms = (mem_store *)st;
    for (size_t base = 0; base < n; base += BATCH_GROUP) {
        size_t k = n - base < BATCH_GROUP ? n - base : BATCH_GROUP;
        ck_epoch_record_t *e = epoch_enter();
        if (e == NULL) {
            fail_rest(statuses, base, n, AFSM_ENOMEM); /* what each single call would say */
            return;
        }
        session *s[BATCH_GROUP];
        lookup_group(ms, ids + base, k, s);
        for (size_t i = 0; i < k; i++) {
            if (s[i] == NULL)
                continue;
            /* A long user id's entry pointer sits in the line the probe
             * just compared, so the entry's fetch starts now, beside the
             * record's other two lines, instead of after the copy reaches
             * it (an inline id needs no other line). */
            prefetch_read((const char *)s[i] + 64);
            prefetch_read((const char *)s[i] + 128);
            if (!index_user_inline(s[i]))
                prefetch_read(&s[i]->user_long->key);
        }
        for (size_t i = 0; i < k; i++) {
            if (s[i] != NULL)
                mem_fill_info(ms, s[i], &out[base + i]);
        }
        uint64_t now = mem_now(ms);
        for (size_t i = 0; i < k; i++)
            statuses[base + i] = s[i] == NULL ? AFSM_ENOTFOUND : mem_expired(ms, s[i], now) ? AFSM_EEXPIRED : AFSM_OK;
        epoch_leave(e);
    }
}

/* Heartbeats and stats additions share the staging; only the per-item act
 * differs. */
typedef afsm_status act_fn(mem_store *ms, session *s, size_t item, const void *arg, bool *activate);

static void act_batch(mem_store *ms, const afsm_uuid *ids, size_t n, afsm_status *statuses, act_fn *act,
                      const void *arg)
{
    for (size_t base = 0; base < n; base += BATCH_GROUP) {
        size_t k = n - base < BATCH_GROUP ? n - base : BATCH_GROUP;
        ck_epoch_record_t *e = epoch_enter();
        if (e == NULL) {
            fail_rest(statuses, base, n, AFSM_ENOMEM); /* what each single call would say */
            return;
        }
        session *s[BATCH_GROUP];
        lookup_group(ms, ids + base, k, s);
        /* The second line holds last_active_ns, last_traffic_ns, the stats
         * and rtt: everything these calls write. */
        for (size_t i = 0; i < k; i++)
            if (s[i] != NULL)
                prefetch_write((const char *)s[i] + 64);
        mem_event events[BATCH_GROUP];
        size_t fired = 0;
        for (size_t i = 0; i < k; i++) {
            bool activate = false;
            statuses[base + i] = s[i] != NULL ? act(ms, s[i], base + i, arg, &activate) : AFSM_ENOTFOUND;
            if (activate) {
                events[fired].pending = false;
                (void)mem_activate(ms, s[i], &events[fired]); /* inside our section: cannot fail */
                fired++;
            }
        }
        epoch_leave(e);
        mem_event_fire_group(ms, events, fired);
    }
}

static afsm_status heartbeat_item(mem_store *ms, session *s, size_t item, const void *arg, bool *activate)
{
    uint64_t *remaining_ns = (uint64_t *)arg;
    return mem_heartbeat_session(ms, s, remaining_ns != NULL ? &remaining_ns[item] : NULL, activate);
}

void mem_heartbeat_batch(store *st, const afsm_uuid *ids, size_t n, uint64_t *remaining_ns, afsm_status *statuses)
{
    act_batch((mem_store *)st, ids, n, statuses, heartbeat_item, remaining_ns);
}

static afsm_status add_stats_item(mem_store *ms, session *s, size_t item, const void *arg, bool *activate)
{
    const afsm_stats *deltas = arg;
    return mem_add_stats_session(ms, s, &deltas[item], activate);
}

void mem_add_stats_batch(store *st, const afsm_uuid *ids, const afsm_stats *deltas, size_t n, afsm_status *statuses)
{
    act_batch((mem_store *)st, ids, n, statuses, add_stats_item, deltas);
}
