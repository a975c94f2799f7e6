/*
 * test_review15create.c: a reviewer's attempts to break f049dcb (issue 15,
 * goal 5): mem_create starts its table slots, finds the user's entry
 * lock-free and prefetches the entry's newest session before it takes its
 * lock set, and builds that lock set from the shard indices it computed
 * once.
 *
 * What a user relies on, checked on 1, 2 and 4096 shards (a create's
 * session, connection and user shards all equal, colliding in every way,
 * all distinct) and under both limit policies:
 *  - a user never holds more than max_sessions_per_user sessions, not
 *    even for an instant, while threads create, restore, delete, delete by
 *    user, close and expire that user's sessions, and callbacks create
 *    from inside events (the lock-free lookup races the entry's retirement
 *    and re-creation, and `newest` races its unlink and free);
 *  - every session gets exactly one CREATED (restores none) and leaves
 *    with exactly one DELETED or EXPIRED, and the metrics and counts agree
 *    with the events;
 *  - every index agrees afterwards (tables, user lists, counts);
 *  - creates for many users on 2 and 4 shards lose no table insert (the
 *    lock set covers the home, connection and user shards);
 *  - a create or restore whose allocation fails at any step returns
 *    AFSM_ENOMEM and leaves the engine as it was;
 *  - close stops the reaper's callbacks that create from inside events.
 * They pass on f049dcb. Mutations tried on it: a lock set without the
 * user shard fails the cap storm (TSan: index_link against
 * index_unlink; plain: a create's AFSM_ENOMEM, a wrong count, or a hang
 * on a cyclic list, hence the 120 s timeout); without the connection or
 * the home shard, the spread storm (TSan: table_insert against itself;
 * plain: counts, or a crash); the lock-free entry used under the locks
 * instead of looked up again, the cap storm (ASan: SIGSEGV in the
 * deferred frees, the entry retired twice).
 * Internal headers are included to read the user's entry and the tables.
 * No sleeps; waits are joins. Run one at a time with
 * AFSM_TEST_FILTER=<test name>.
 */
#include "test_support.h"
#include "mem_inspect.h"

#include <pthread.h>
#include <stdlib.h>

#include "engine.h"
#include "mem/index.h"
#include "mem/mem_store.h"
#include "mem/shard.h"
#include "mem/table.h"
#include "util/alloc.h"
#include "util/epoch.h"

#if defined(AFSM_TSAN) || defined(__SANITIZE_ADDRESS__)
#define CAP_OPS 4000 /* sanitizers run 5-20x slower: the same mix, fewer rounds */
#else
#define CAP_OPS 20000
#endif
#define CAP_THREADS 4
#define CAP_MAX     3
#define CAP_POOL    256
/* Every create and restore, with room: callbacks create at most once per
 * eviction they see, and restores re-add what a thread deleted. */
#define LEDGER_SLOTS (1u << 19)

static const char *const cap_users[] = {"hot", "hot", "hot", "hot", "hot", "hot", "cold-a", "cold-bb"};
#define CAP_USERS (sizeof(cap_users) / sizeof(cap_users[0]))

/* What the events said about one session. */
typedef struct ledger_slot {
    afsm_uuid id;
    afsm_uuid conn;
    int used;
    int created;  /* CREATED events */
    int restored; /* successful restores */
    int removed;  /* DELETED and EXPIRED events */
} ledger_slot;

typedef struct cap_storm {
    afsm_engine *engine;
    virtual_clock clock;
    uint32_t policy;
    pthread_mutex_t lock; /* the ledger and the pool */
    ledger_slot *ledger;
    afsm_uuid pool_ids[CAP_POOL];
    long pool_n;
    _Atomic long created_ok, restored_ok, limited, deleted_ok, by_user_deleted;
    _Atomic long older_kept_out; /* evict-oldest: restores older than a full user's every session */
    _Atomic long ev_created, ev_removed, ev_evicted;
    _Atomic long over_cap_seen, cap_checks;
    _Atomic long violations;
    _Atomic long started; /* workers ready: they start together, to overlap */
    int expire;           /* advance the clock (not on 4096 shards: each pass visits every one) */
} cap_storm;

static _Thread_local int cap_depth;

static void cap_bad(cap_storm *c, const char *what, afsm_status st)
{
    if (atomic_fetch_add(&c->violations, 1) < 5)
        print_message("violation: %s (%s)\n", what, afsm_status_name(st));
}

/* The ledger's slot for id (made if new). Ledger lock held. */
static ledger_slot *ledger_at(cap_storm *c, const afsm_uuid *id)
{
    uint64_t h;
    memcpy(&h, id->bytes + 8, 8); /* v7: the random half */
    for (uint64_t i = h & (LEDGER_SLOTS - 1);; i = (i + 1) & (LEDGER_SLOTS - 1)) {
        ledger_slot *slot = &c->ledger[i];
        if (!slot->used) {
            slot->used = 1;
            slot->id = *id;
            return slot;
        }
        if (memcmp(slot->id.bytes, id->bytes, 16) == 0)
            return slot;
    }
}

static void pool_add(cap_storm *c, const afsm_uuid *id)
{
    pthread_mutex_lock(&c->lock);
    c->pool_ids[c->pool_n++ % CAP_POOL] = *id;
    pthread_mutex_unlock(&c->lock);
}

static int pool_pick(cap_storm *c, afsm_uuid *id)
{
    pthread_mutex_lock(&c->lock);
    long n = c->pool_n < CAP_POOL ? c->pool_n : CAP_POOL;
    if (n != 0)
        *id = c->pool_ids[thread_rand() % (uint64_t)n];
    pthread_mutex_unlock(&c->lock);
    return n != 0;
}

static void cap_create(cap_storm *c, const char *user)
{
    afsm_create_options o;
    afsm_create_options_init(&o, AFSM_CREATE_OPTIONS_VERSION);
    o.user_id = user;
    o.user_id_len = strlen(user);
    o.client_ip = "10.5.6.7";
    o.client_ip_len = strlen(o.client_ip);
    afsm_uuid_v7(&o.connection_id);
    o.timeout_ms = 1000 + thread_rand() % 3000;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    afsm_status st = afsm_session_create(c->engine, &o, &info);
    if (st == AFSM_OK) {
        atomic_fetch_add(&c->created_ok, 1);
        pool_add(c, &info.session_id);
    } else if (st == AFSM_ELIMIT && c->policy == AFSM_LIMIT_REJECT) {
        atomic_fetch_add(&c->limited, 1);
    } else {
        cap_bad(c, "create", st);
    }
}

static void cap_event(void *ctx, const afsm_event *ev)
{
    cap_storm *c = ctx;
    if (ev->type == AFSM_EVENT_CREATED || ev->type == AFSM_EVENT_DELETED || ev->type == AFSM_EVENT_EXPIRED) {
        pthread_mutex_lock(&c->lock);
        ledger_slot *slot = ledger_at(c, &ev->session_id);
        slot->conn = ev->connection_id;
        if (ev->type == AFSM_EVENT_CREATED)
            slot->created++;
        else
            slot->removed++;
        pthread_mutex_unlock(&c->lock);
        atomic_fetch_add(ev->type == AFSM_EVENT_CREATED ? &c->ev_created : &c->ev_removed, 1);
    }
    int evicted = ev->type == AFSM_EVENT_DELETED && ev->reason_len == 7 && memcmp(ev->reason, "evicted", 7) == 0;
    if (evicted)
        atomic_fetch_add(&c->ev_evicted, 1);
    /* An evicted user's client reconnects at once: a create from inside
     * the DELETED, which evicts in turn (one level deep). */
    if (evicted && cap_depth == 0 && thread_rand() % 4 == 0) {
        char user[AFSM_USER_ID_MAX + 1];
        memcpy(user, ev->user_id, ev->user_id_len);
        user[ev->user_id_len] = '\0';
        cap_depth++;
        cap_create(c, user);
        cap_depth--;
    }
}

/* The user's count as a lock-free reader finds it: never above the cap. */
static void cap_observe(cap_storm *c, const char *user)
{
    mem_store *ms = (mem_store *)c->engine->st;
    shard *uh = &ms->shards[mem_shard_of_user(ms, user, strlen(user))];
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return;
    user_entry *entry = index_lookup(uh, user, (uint16_t)strlen(user));
    if (index_count(entry) > CAP_MAX)
        atomic_fetch_add(&c->over_cap_seen, 1);
    epoch_leave(e);
    atomic_fetch_add(&c->cap_checks, 1);
}

typedef struct cap_worker {
    cap_storm *c;
    int index;
} cap_worker;

static void *cap_worker_run(void *arg)
{
    cap_worker *w = arg;
    cap_storm *c = w->c;
    atomic_fetch_add(&c->started, 1);
    if (!spin_until(&c->started, CAP_THREADS, 20))
        cap_bad(c, "workers not started within 20 s", AFSM_OK);
    for (long i = 0; i < CAP_OPS; i++) {
        uint64_t r = thread_rand() % 100;
        afsm_uuid id;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st;
        if (r < 45) {
            cap_create(c, cap_users[thread_rand() % CAP_USERS]);
        } else if (r < 55 && pool_pick(c, &id)) {
            st = afsm_session_delete(c->engine, &id, NULL, 0);
            if (st == AFSM_OK)
                atomic_fetch_add(&c->deleted_ok, 1);
            else if (st != AFSM_ENOTFOUND)
                cap_bad(c, "delete", st);
        } else if (r < 58) {
            const char *user = cap_users[thread_rand() % CAP_USERS];
            size_t n = 0;
            st = afsm_session_delete_by_user(c->engine, user, strlen(user), NULL, 0, &n);
            if (st != AFSM_OK)
                cap_bad(c, "delete_by_user", st);
            atomic_fetch_add(&c->by_user_deleted, (long)n);
        } else if (r < 65 && pool_pick(c, &id)) {
            afsm_update u = AFSM_UPDATE_INIT;
            u.fields = AFSM_UPDATE_STATE;
            u.state = AFSM_STATE_CLOSED;
            st = afsm_session_update(c->engine, &id, &u, NULL);
            if (st != AFSM_OK && st != AFSM_ENOTFOUND && st != AFSM_EEXPIRED)
                cap_bad(c, "close", st);
        } else if (r < 75 && pool_pick(c, &id)) {
            /* taken out and put back, as a daemon's snapshot reload does:
             * an older id linked behind the user's newest */
            if (afsm_session_get(c->engine, &id, &info) == AFSM_OK &&
                afsm_session_delete(c->engine, &id, "reload", 6) == AFSM_OK) {
                atomic_fetch_add(&c->deleted_ok, 1);
                st = afsm_session_restore(c->engine, &info, NULL, 0);
                if (st == AFSM_OK) {
                    pthread_mutex_lock(&c->lock);
                    ledger_at(c, &id)->restored++;
                    pthread_mutex_unlock(&c->lock);
                    atomic_fetch_add(&c->restored_ok, 1);
                } else if (st == AFSM_ELIMIT && c->policy == AFSM_LIMIT_REJECT) {
                    atomic_fetch_add(&c->limited, 1);
                } else if (st == AFSM_ELIMIT) {
                    /* The user filled up with newer sessions meanwhile:
                     * evict-oldest keeps those (afsm_session_restore). */
                    atomic_fetch_add(&c->older_kept_out, 1);
                } else if (st != AFSM_EEXPIRED) {
                    cap_bad(c, "restore", st);
                }
            }
        } else if (r < 76 && w->index == 0 && c->expire && thread_rand() % 4 == 0) {
            /* rarely: an advance polls every shard's deferred frees */
            uint64_t now = atomic_fetch_add(&c->clock.now_ns, 150 * MS) + 150 * MS;
            size_t expired;
            st = afsm_engine_advance(c->engine, now, &expired);
            if (st != AFSM_OK)
                cap_bad(c, "advance", st);
        } else {
            cap_observe(c, "hot");
        }
    }
    return NULL;
}

/* The events against the engine: one CREATED per create, none per restore,
 * one removal per session gone, the live ones found by id and by
 * connection, the metrics equal to the events. */
static void check_ledger(cap_storm *c, long sessions)
{
    long live = 0, created = 0, removed = 0, restored = 0;
    for (uint32_t i = 0; i < LEDGER_SLOTS; i++) {
        ledger_slot *slot = &c->ledger[i];
        if (!slot->used)
            continue;
        if (slot->created > 1)
            fail_msg("a session had %d CREATED events", slot->created);
        int alive = slot->created + slot->restored - slot->removed;
        if (alive != 0 && alive != 1)
            fail_msg("a session: %d CREATED, %d restores, %d DELETED/EXPIRED", slot->created, slot->restored,
                     slot->removed);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_session_get(c->engine, &slot->id, &info);
        if (alive)
            assert_true(st == AFSM_OK || st == AFSM_EEXPIRED);
        else
            assert_int_equal(st, AFSM_ENOTFOUND);
        if (alive) {
            st = afsm_session_get_by_connection(c->engine, &slot->conn, &info);
            assert_true(st == AFSM_OK || st == AFSM_EEXPIRED);
            assert_memory_equal(info.session_id.bytes, slot->id.bytes, 16);
        }
        live += alive;
        created += slot->created;
        removed += slot->removed;
        restored += slot->restored;
    }
    assert_int_equal(live, sessions);
    assert_int_equal(created, atomic_load(&c->created_ok));
    assert_int_equal(restored, atomic_load(&c->restored_ok));
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(c->engine, &m), AFSM_OK);
    assert_int_equal(m.created_total, (uint64_t)created);
    uint64_t gone = 0;
    for (int r = 0; r < AFSM_DELETE_REASON_COUNT; r++)
        gone += m.deleted_total[r];
    assert_int_equal(gone, (uint64_t)removed);
    assert_int_equal(m.deleted_total[AFSM_DELETE_EVICTED], (uint64_t)atomic_load(&c->ev_evicted));
    assert_int_equal(m.deleted_total[AFSM_DELETE_REQUESTED], (uint64_t)atomic_load(&c->deleted_ok));
    assert_int_equal(m.deleted_total[AFSM_DELETE_USER], (uint64_t)atomic_load(&c->by_user_deleted));
    print_message("    %ld created, %ld restored, %ld evicted, %ld refused at the cap, %ld left, %ld cap checks\n",
                  created, restored, atomic_load(&c->ev_evicted), atomic_load(&c->limited), live,
                  atomic_load(&c->cap_checks));
}

static void run_cap_storm(uint32_t shards, uint32_t policy)
{
    uint64_t started = real_ns();
    cap_storm *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->ledger = calloc(LEDGER_SLOTS, sizeof(ledger_slot));
    assert_non_null(c->ledger);
    c->policy = policy;
    c->expire = shards <= 64;
    pthread_mutex_init(&c->lock, NULL);
    afsm_config cfg;
    assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    virtual_clock_set(&c->clock, 1000 * SEC);
    cfg.clock = virtual_clock_read;
    cfg.clock_ctx = &c->clock;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.shard_count = shards;
    cfg.capacity_hint = 1; /* every table grows and is rebuilt while creates run */
    cfg.on_event = cap_event;
    cfg.event_ctx = c;
    cfg.max_sessions_per_user = CAP_MAX;
    cfg.limit_policy = policy;
    assert_int_equal(afsm_engine_open(&cfg, &c->engine), AFSM_OK);
    pthread_t threads[CAP_THREADS];
    cap_worker workers[CAP_THREADS];
    for (int i = 0; i < CAP_THREADS; i++) {
        workers[i] = (cap_worker){.c = c, .index = i};
        assert_int_equal(pthread_create(&threads[i], NULL, cap_worker_run, &workers[i]), 0);
    }
    for (int i = 0; i < CAP_THREADS; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(atomic_load(&c->violations), 0);
    assert_int_equal(atomic_load(&c->over_cap_seen), 0);
    long sessions = engine_check_indexes(c->engine, CAP_MAX);
    check_ledger(c, sessions);
    /* The storm reached what it attacks: the cap, both ways. */
    if (policy == AFSM_LIMIT_REJECT) {
        assert_int_equal(atomic_load(&c->ev_evicted), 0);
        assert_true(atomic_load(&c->limited) > 0);
    } else {
        assert_int_equal(atomic_load(&c->limited), 0);
        assert_true(atomic_load(&c->ev_evicted) > 0);
    }
    assert_int_equal(afsm_engine_close(c->engine), AFSM_OK);
    print_message("  %u shards, %s: %.1f s\n", shards, policy == AFSM_LIMIT_REJECT ? "reject" : "evict oldest",
                  (double)(real_ns() - started) / 1e9);
    pthread_mutex_destroy(&c->lock);
    free(c->ledger);
    free(c);
}

/* Threads create for one user at its cap (most of them on "hot"), while
 * others delete, delete by user, close, reload (delete then restore) and
 * expire that user's sessions, and callbacks create from inside evictions:
 * the user's entry is retired and re-made under the lock-free lookup, and
 * its newest session unlinked and freed under the prefetch. The cap holds
 * at every lock-free look, events are exact, indexes agree. */
static void test_cap_holds_for_one_user_under_racing_creates(void **state)
{
    (void)state;
    static const uint32_t shard_counts[] = {1, 2, 4096};
    for (size_t i = 0; i < sizeof(shard_counts) / sizeof(shard_counts[0]); i++) {
        run_cap_storm(shard_counts[i], AFSM_LIMIT_EVICT_OLDEST);
        run_cap_storm(shard_counts[i], AFSM_LIMIT_REJECT);
    }
}

/* ---- allocation failure at every step of a create and a restore ---------- */

typedef struct sweep_ctx {
    long events;
} sweep_ctx;

static void sweep_event(void *ctx, const afsm_event *ev)
{
    (void)ev;
    ((sweep_ctx *)ctx)->events++;
}

#define SWEEP_SESSIONS 40
#define SWEEP_LIST     SWEEP_SESSIONS

/* What a failed create must leave as it was. */
typedef struct engine_view {
    uint64_t total, created, evicted;
    long events;
    size_t listed;
    afsm_uuid ids[SWEEP_LIST];
    int has_entry;
} engine_view;

static void view_of(afsm_engine *engine, const sweep_ctx *ctx, const char *user, engine_view *v)
{
    memset(v, 0, sizeof(*v));
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    v->total = counts.total;
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    v->created = m.created_total;
    v->evicted = m.deleted_total[AFSM_DELETE_EVICTED];
    v->events = ctx->events;
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.user_id = user;
    f.user_id_len = strlen(user);
    f.limit = SWEEP_LIST;
    afsm_session_info out[SWEEP_LIST];
    for (int i = 0; i < SWEEP_LIST; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    uint64_t matches;
    assert_int_equal(afsm_session_list(engine, &f, out, SWEEP_LIST, &v->listed, &matches, NULL), AFSM_OK);
    assert_int_equal(matches, v->listed);
    for (size_t i = 0; i < v->listed; i++)
        v->ids[i] = out[i].session_id;
    mem_store *ms = (mem_store *)engine->st;
    ck_epoch_record_t *e = epoch_enter();
    assert_non_null(e);
    v->has_entry =
        index_lookup(&ms->shards[mem_shard_of_user(ms, user, strlen(user))], user, (uint16_t)strlen(user)) != NULL;
    epoch_leave(e);
}

static void assert_view_equal(const engine_view *a, const engine_view *b, const char *what, int n)
{
    if (a->total != b->total || a->created != b->created || a->evicted != b->evicted || a->events != b->events ||
        a->listed != b->listed || a->has_entry != b->has_entry ||
        memcmp(a->ids, b->ids, a->listed * sizeof(afsm_uuid)) != 0)
        fail_msg("%s failing at allocation %d changed the engine: total %llu -> %llu, created %llu -> %llu, evicted "
                 "%llu -> %llu, events %ld -> %ld, user's sessions %zu -> %zu, entry %d -> %d",
                 what, n, (unsigned long long)a->total, (unsigned long long)b->total, (unsigned long long)a->created,
                 (unsigned long long)b->created, (unsigned long long)a->evicted, (unsigned long long)b->evicted,
                 a->events, b->events, a->listed, b->listed, a->has_entry, b->has_entry);
}

/* One engine: SWEEP_SESSIONS creates (or, with restore, creates taken out
 * and restored) over three users, each first failed at its first
 * allocation, then its second, and so on until it succeeds: through the
 * slab's growth, the user's entry, the three tables' growth and rebuilds,
 * at and below the cap. */
static void sweep_one(uint32_t shards, uint32_t cap, uint32_t policy, int restore)
{
    virtual_clock clock;
    sweep_ctx ctx = {0};
    afsm_config cfg;
    virtual_config(&clock, &cfg);
    cfg.shard_count = shards;
    cfg.capacity_hint = 1;
    cfg.on_event = sweep_event;
    cfg.event_ctx = &ctx;
    cfg.max_sessions_per_user = cap;
    cfg.limit_policy = policy;
    afsm_engine *engine;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    static const char *const users[] = {"sweep-a", "sweep-bb", "sweep-ccc"};
    long failures = 0;
    for (int k = 0; k < SWEEP_SESSIONS; k++) {
        /* A fresh user now and then: its entry is made by the create. */
        char user[32];
        if (k % 5 == 4)
            snprintf(user, sizeof(user), "sweep-new-%d", k);
        else
            snprintf(user, sizeof(user), "%s", users[k % 3]);
        afsm_uuid conn;
        afsm_create_options o = make_options(user, "10.7.7.7", &conn);
        afsm_kv kv = {.key = "k", .key_len = 1, .value = "v", .value_len = 1};
        o.metadata = &kv;
        o.metadata_count = 1;
        afsm_session_info copy = AFSM_SESSION_INFO_INIT;
        if (restore) {
            /* The copy of a session that is then deleted (and, at the cap,
             * the session whose room the restore takes back). */
            afsm_status st = afsm_session_create(engine, &o, &copy);
            if (st == AFSM_ELIMIT)
                continue;
            assert_int_equal(st, AFSM_OK);
            assert_int_equal(afsm_session_delete(engine, &copy.session_id, "copy", 4), AFSM_OK);
            if (k % 2 == 1) { /* another session takes the room meanwhile */
                afsm_uuid other;
                afsm_create_options oo = make_options(user, "10.7.7.8", &other);
                st = afsm_session_create(engine, &oo, NULL);
                assert_true(st == AFSM_OK || st == AFSM_ELIMIT);
            }
        }
        engine_view before, after;
        view_of(engine, &ctx, user, &before);
        afsm_status st = AFSM_ENOMEM;
        int n = 0;
        for (; n < 64; n++) {
            alloc_fail_after(n);
            afsm_session_info made = AFSM_SESSION_INFO_INIT;
            st = restore ? afsm_session_restore(engine, &copy, &kv, 1) : afsm_session_create(engine, &o, &made);
            alloc_fail_reset();
            if (st != AFSM_ENOMEM)
                break;
            failures++;
            view_of(engine, &ctx, user, &after);
            assert_view_equal(&before, &after, restore ? "a restore" : "a create", n);
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            assert_int_equal(afsm_session_get_by_connection(engine, &conn, &info), AFSM_ENOTFOUND);
        }
        assert_true(n < 64);
        view_of(engine, &ctx, user, &after);
        int at_cap = cap != 0 && before.listed >= cap;
        if (at_cap && policy == AFSM_LIMIT_REJECT) {
            assert_int_equal(st, AFSM_ELIMIT);
            assert_view_equal(&before, &after, "a refused create", n);
            continue;
        }
        assert_int_equal(st, AFSM_OK);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_get_by_connection(engine, &conn, &info), AFSM_OK);
        assert_int_equal(after.created, before.created + (restore ? 0 : 1));
        assert_int_equal(after.evicted, before.evicted + (at_cap ? 1 : 0));
        assert_int_equal(after.events, before.events + (restore ? 0 : 1) + (at_cap ? 1 : 0));
        assert_int_equal(after.listed, at_cap ? before.listed : before.listed + 1);
        assert_int_equal(after.total, at_cap ? before.total : before.total + 1);
    }
    assert_true(failures > 0);
    engine_check_indexes(engine, cap);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A create or restore failing at any allocation returns AFSM_ENOMEM and
 * leaves every count, metric, event, the user's sessions and entry as they
 * were (a victim at the cap stays); the retry that can allocate does what
 * it should. On 1, 2 and 4096 shards, with no cap, at an evicting cap and
 * at a refusing one. */
static void test_create_and_restore_fail_cleanly_at_every_allocation(void **state)
{
    (void)state;
    static const uint32_t shard_counts[] = {1, 2, 4096};
    for (size_t i = 0; i < sizeof(shard_counts) / sizeof(shard_counts[0]); i++)
        for (int restore = 0; restore <= 1; restore++) {
            sweep_one(shard_counts[i], 0, AFSM_LIMIT_REJECT, restore);
            sweep_one(shard_counts[i], 2, AFSM_LIMIT_EVICT_OLDEST, restore);
            sweep_one(shard_counts[i], 2, AFSM_LIMIT_REJECT, restore);
        }
}

/* ---- every table a create writes is under its lock set ------------------- */

#define SPREAD_THREADS 4
#define SPREAD_RING    64

typedef struct spread_storm {
    afsm_engine *engine;
    _Atomic long started, violations;
    _Atomic long created, deleted;
} spread_storm;

static void spread_bad(spread_storm *c, const char *what, afsm_status st)
{
    if (atomic_fetch_add(&c->violations, 1) < 5)
        print_message("violation: %s (%s)\n", what, afsm_status_name(st));
}

typedef struct spread_worker {
    spread_storm *c;
    int index;
} spread_worker;

/* Each thread creates for users of its own and deletes only its own
 * sessions, so creates for different users meet only in the shards: a
 * session's home and connection shards and its user's are locked by the
 * create, and nothing else orders two threads' inserts into one table. */
static void *spread_run(void *arg)
{
    spread_worker *w = arg;
    spread_storm *c = w->c;
    afsm_uuid ids[SPREAD_RING], conns[SPREAD_RING];
    long n = 0, live = 0;
    atomic_fetch_add(&c->started, 1);
    if (!spin_until(&c->started, SPREAD_THREADS, 20))
        spread_bad(c, "workers not started within 20 s", AFSM_OK);
    for (long i = 0; i < CAP_OPS; i++) {
        if (live == SPREAD_RING || (live > 0 && thread_rand() % 10 < 3)) {
            long k = (n - live) % SPREAD_RING; /* the oldest of this thread's */
            afsm_status st = afsm_session_delete(c->engine, &ids[k], NULL, 0);
            if (st != AFSM_OK)
                spread_bad(c, "delete of a session only this thread deletes", st);
            live--;
            atomic_fetch_add(&c->deleted, 1);
            continue;
        }
        char user[32];
        snprintf(user, sizeof(user), "spread-%d-%u", w->index, (unsigned)(thread_rand() % 8));
        afsm_uuid conn;
        afsm_create_options o = make_options(user, "10.3.3.3", &conn);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_session_create(c->engine, &o, &info);
        if (st != AFSM_OK) {
            spread_bad(c, "create", st);
            continue;
        }
        atomic_fetch_add(&c->created, 1);
        long k = n++ % SPREAD_RING;
        ids[k] = info.session_id;
        conns[k] = conn;
        live++;
        /* Found at once, by id and by connection: no insert was lost. */
        afsm_session_info got = AFSM_SESSION_INFO_INIT;
        if (afsm_session_get(c->engine, &ids[k], &got) != AFSM_OK)
            spread_bad(c, "a session just created not found by id", AFSM_ENOTFOUND);
        if (afsm_session_get_by_connection(c->engine, &conns[k], &got) != AFSM_OK)
            spread_bad(c, "a session just created not found by connection", AFSM_ENOTFOUND);
    }
    return NULL;
}

/* Creates and deletes for many users on 2 and 4 shards, where two threads'
 * creates share a home, connection or user shard while their other shards
 * differ: every table stays whole (each create found at once by id and by
 * connection, every index agrees, counts exact). Fails when the lock set
 * misses any of the three shards. */
static void test_lock_set_covers_every_table_a_create_writes(void **state)
{
    (void)state;
    for (uint32_t shards = 2; shards <= 4; shards *= 2) {
        spread_storm c = {0};
        virtual_clock clock;
        afsm_config cfg = {.shard_count = shards, .capacity_hint = 1};
        c.engine = open_virtual_engine(&clock, &cfg);
        pthread_t threads[SPREAD_THREADS];
        spread_worker workers[SPREAD_THREADS];
        for (int i = 0; i < SPREAD_THREADS; i++) {
            workers[i] = (spread_worker){.c = &c, .index = i};
            assert_int_equal(pthread_create(&threads[i], NULL, spread_run, &workers[i]), 0);
        }
        for (int i = 0; i < SPREAD_THREADS; i++)
            pthread_join(threads[i], NULL);
        assert_int_equal(atomic_load(&c.violations), 0);
        long sessions = engine_check_indexes(c.engine, 0);
        assert_int_equal(sessions, atomic_load(&c.created) - atomic_load(&c.deleted));
        assert_int_equal(afsm_engine_close(c.engine), AFSM_OK);
    }
}

/* ---- close while the reaper's callbacks create -------------------------- */

typedef struct close_race {
    afsm_engine *engine;
    _Atomic long expired, created, refused, after_close;
    _Atomic int closed;
} close_race;

/* Each expiry and eviction reconnects its user: a create from inside the
 * reaper's callback, at the user's cap, which evicts in turn. */
static void close_race_event(void *ctx, const afsm_event *ev)
{
    close_race *c = ctx;
    if (atomic_load(&c->closed)) {
        atomic_fetch_add(&c->after_close, 1);
        return;
    }
    if (ev->type == AFSM_EVENT_EXPIRED)
        atomic_fetch_add(&c->expired, 1);
    else if (ev->type != AFSM_EVENT_DELETED)
        return;
    afsm_create_options o;
    afsm_create_options_init(&o, AFSM_CREATE_OPTIONS_VERSION);
    o.user_id = ev->user_id;
    o.user_id_len = ev->user_id_len;
    o.client_ip = "10.8.8.8";
    o.client_ip_len = strlen(o.client_ip);
    afsm_uuid_v7(&o.connection_id);
    o.timeout_ms = 1;
    afsm_status st = afsm_session_create(c->engine, &o, NULL);
    atomic_fetch_add(st == AFSM_OK ? &c->created : &c->refused, 1);
}

/* afsm.h, afsm_engine_close: "No callback runs after it returns", while
 * the reaper thread's callbacks create (and evict) from inside expiries:
 * close stops them, frees every session (the sanitizer trees check leaks
 * and uses after free), and no create fails meanwhile. */
static void test_close_while_reaper_callbacks_create(void **state)
{
    (void)state;
    static const uint32_t shard_counts[] = {1, 2, 64};
    for (size_t i = 0; i < sizeof(shard_counts) / sizeof(shard_counts[0]); i++) {
        close_race c = {0};
        afsm_config cfg;
        assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
        cfg.reaper = AFSM_REAPER_THREAD;
        cfg.cleanup_interval_ms = 1;
        cfg.tick_ms = 1;
        cfg.shard_count = shard_counts[i];
        cfg.capacity_hint = 1;
        cfg.max_sessions_per_user = 2;
        cfg.limit_policy = AFSM_LIMIT_EVICT_OLDEST;
        cfg.on_event = close_race_event;
        cfg.event_ctx = &c;
        assert_int_equal(afsm_engine_open(&cfg, &c.engine), AFSM_OK);
        for (int u = 0; u < 4; u++) {
            char user[16];
            snprintf(user, sizeof(user), "reconnect-%d", u);
            for (int k = 0; k < 2; k++) {
                afsm_uuid conn;
                afsm_create_options o = make_options(user, "10.8.8.9", &conn);
                o.timeout_ms = 1;
                assert_int_equal(afsm_session_create(c.engine, &o, NULL), AFSM_OK);
            }
        }
        /* Until the chain has run a while: expiries, creates, evictions. */
        assert_true(spin_until(&c.created, 200, 20));
        assert_int_equal(afsm_engine_close(c.engine), AFSM_OK);
        atomic_store(&c.closed, 1);
        assert_int_equal(atomic_load(&c.refused), 0);
        assert_int_equal(atomic_load(&c.after_close), 0);
        assert_true(atomic_load(&c.expired) > 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_holds_for_one_user_under_racing_creates),
        cmocka_unit_test(test_create_and_restore_fail_cleanly_at_every_allocation),
        cmocka_unit_test(test_close_while_reaper_callbacks_create),
        cmocka_unit_test(test_lock_set_covers_every_table_a_create_writes),
    };
    if (getenv("AFSM_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
