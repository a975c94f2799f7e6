/*
 * test_etcd_review16b.c: a reviewer's tests of issue 16's changes to the
 * etcd store (placeholders and in-flight writes that hold the watch, the
 * demand-following lease pool, the replica that is never advanced), each
 * reproducing one defect against a real etcd (etcd_harness.h: Debian's
 * /usr/bin/etcd on loopback, free ports, data in a temp dir, killed at
 * exit).
 *
 * Every wait is a poll with a deadline; a test that checks that something
 * does NOT happen bounds its observation window explicitly. Callbacks that
 * hold a thread wait on a gate with a bound of their own, so a broken test
 * cannot hang an engine for ever.
 *
 * Shared state: each gate is guarded by its mutex.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>

#include "afsm.h"
#include "etcd/keys.h"
#define WAIT_FOR_NAP_MS 10
#include "etcd_test_support.h"
#include "util/alloc.h"

/* ---- a gate: an event callback that holds its thread ----------------------------- */

/* While armed, the CREATED or STATE_CHANGED event of a session of the user
 * "hold" holds the thread that fires it until the test opens the gate (at
 * most 20 s). */
typedef struct gate {
    hold_gate hold; /* its lock guards the log too */
    uint32_t type;  /* the event type that holds */
    struct {
        uint32_t type;
        afsm_uuid id;
    } log[64]; /* every event, in order (the first 64) */
    size_t logged;
} gate;

static void gate_init(gate *g, uint32_t type)
{
    memset(g, 0, sizeof(*g));
    hold_gate_init(&g->hold);
    g->type = type;
}

static void gate_event(void *ctx, const afsm_event *ev)
{
    gate *g = ctx;
    pthread_mutex_lock(&g->hold.lock);
    if (g->logged < sizeof(g->log) / sizeof(g->log[0])) {
        g->log[g->logged].type = ev->type;
        g->log[g->logged].id = ev->session_id;
        g->logged++;
    }
    if (ev->type == g->type && ev->user_id_len == 4 && memcmp(ev->user_id, "hold", 4) == 0)
        hold_gate_wait_locked(&g->hold);
    pthread_mutex_unlock(&g->hold.lock);
}

static size_t gate_events(gate *g, uint32_t type, const afsm_uuid *id)
{
    size_t n = 0;
    pthread_mutex_lock(&g->hold.lock);
    for (size_t i = 0; i < g->logged; i++)
        if (g->log[i].type == type && memcmp(&g->log[i].id, id, sizeof(*id)) == 0)
            n++;
    pthread_mutex_unlock(&g->hold.lock);
    return n;
}

/* ---- engines --------------------------------------------------------------------- */

typedef struct engine_options {
    const char *prefix;
    uint32_t read_mode;
    uint64_t default_timeout_ms; /* 0: 60 s */
    afsm_event_fn on_event;
    void *event_ctx;
} engine_options;

static afsm_status open_engine(const engine_options *o, afsm_engine **out)
{
    afsm_config cfg;
    etcd_test_config(&cfg, o->prefix);
    cfg.etcd_read_mode = o->read_mode;
    cfg.default_timeout_ms = o->default_timeout_ms != 0 ? o->default_timeout_ms : 60000;
    cfg.on_event = o->on_event;
    cfg.event_ctx = o->event_ctx;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    return afsm_engine_open(&cfg, out);
}

/* ---- a callback on a writing thread must not stall the watch --------------------- */

typedef struct writer {
    afsm_engine *e;
    afsm_uuid id; /* update: the session to activate */
    int update;
    afsm_status status;
    afsm_session_info made;
    _Atomic int done;
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    if (w->update) {
        afsm_update u = AFSM_UPDATE_INIT;
        u.fields = AFSM_UPDATE_STATE;
        u.state = AFSM_STATE_ACTIVE;
        afsm_session_info_init(&w->made, AFSM_SESSION_INFO_VERSION);
        w->status = afsm_session_update(w->e, &w->id, &u, &w->made);
    } else {
        w->status = create(w->e, "hold", &w->made);
    }
    atomic_store(&w->done, 1);
    return NULL;
}

/* afsm.h: an event fires "on the thread that made the change. So a callback
 * that blocks delays only its own caller: never reads or writes on other
 * threads". On the etcd store, the writing thread fires its event while its
 * write still counts as in flight (track's inflight: create_end, or
 * guarded_put's decrement, runs after apply_own fired the event), and the
 * watch waits for every in-flight write of a session it meets
 * (wait_own_writes, no bound). So while a CREATED callback runs on the
 * creating thread, A's watch stops at the create's echo: no change made
 * anywhere else reaches A's replica, whatever session it concerns. */
static void stalls_watch(int update)
{
    /* Static: should an assertion leave the engines open, their threads
     * still find it. */
    static gate gates[2];
    gate *g = &gates[update];
    gate_init(g, update ? AFSM_EVENT_STATE_CHANGED : AFSM_EVENT_CREATED);
    afsm_engine *a, *b;
    engine_options o = {.prefix = update ? "/q2/" : "/q1/", .on_event = gate_event, .event_ctx = g};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.on_event = NULL;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);

    writer w = {.e = a, .update = update};
    if (update) {
        afsm_session_info s;
        assert_int_equal(create(a, "hold", &s), AFSM_OK);
        w.id = s.session_id;
    }
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer_main, &w), 0);
    WAIT_FOR(hold_gate_held(&g->hold), 5000); /* the writer's callback is running */

    /* Another node's session, created after the callback began. */
    afsm_session_info other, copy;
    assert_int_equal(create(b, "other", &other), AFSM_OK);
    uint64_t until = harness_now_ms() + 5000;
    afsm_status seen;
    while ((seen = get(a, &other.session_id, &copy)) != AFSM_OK && harness_now_ms() < until)
        harness_nap_ms(10);
    hold_gate_open(&g->hold);
    pthread_join(t, NULL);
    assert_int_equal(w.status, AFSM_OK);
    /* Once the callback returned, A catches up at once (shown for contrast). */
    WAIT_FOR(get(a, &other.session_id, &copy) == AFSM_OK, 5000);
    if (seen != AFSM_OK)
        print_message("A's replica did not see B's session within 5 s while a %s "
                      "callback ran on A's writer\n",
                      update ? "STATE_CHANGED" : "CREATED");
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&g->hold);
    assert_int_equal(seen, AFSM_OK);
}

static void test_created_callback_does_not_stall_the_watch(void **state)
{
    (void)state;
    stalls_watch(0);
}

static void test_state_changed_callback_does_not_stall_the_watch(void **state)
{
    (void)state;
    stalls_watch(1);
}

/* ---- the replica frees what it removed ------------------------------------------- */

/* The replica is a memory store whose advance never runs (etcd_advance
 * only re-anchors the wall offset). The memory store frees removed
 * sessions (their records, user entries, table growth) through epoch
 * deferrals that advance's reclaim() dispatches at every reaper tick;
 * without it, only epoch_defer's own poll frees them, once a shard's
 * record holds 1024 pending. So a deleted session stays allocated on every
 * node until ~1024 more have gone through its shard: per shard up to
 * ~1280 dead sessions with their metadata, for as long as the engine
 * lives. On the memory store the same churn is freed at the next tick.
 * (Process-wide metric: this test runs the only engine.) */
static void test_replica_frees_removed_sessions(void **state)
{
    (void)state;
    afsm_engine *a;
    engine_options o = {.prefix = "/q3/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    uint64_t before = metrics_of(a).deferred_frees;
    afsm_create_options c = AFSM_CREATE_OPTIONS_INIT;
    afsm_kv meta = {.key = "k", .key_len = 1, .value = "a value that takes room", .value_len = 23};
    c.user_id = "churn";
    c.user_id_len = 5;
    c.client_ip = "10.1.2.3";
    c.client_ip_len = 8;
    c.client_port = 4433;
    c.metadata = &meta;
    c.metadata_count = 1;
    for (int i = 0; i < 300; i++) {
        afsm_session_info s;
        afsm_uuid_v7(&c.connection_id);
        afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
        assert_int_equal(afsm_session_create(a, &c, &s), AFSM_OK);
        assert_int_equal(afsm_session_delete(a, &s.session_id, "churn", 5), AFSM_OK);
    }
    uint64_t after = metrics_of(a).deferred_frees;
    print_message("deferred frees: %llu before, %llu after 300 creates and deletes\n", (unsigned long long)before,
                  (unsigned long long)after);
    /* The reaper thread ticks all along (etcd_advance); the memory store
     * frees at its first tick. 3 s is many ticks. */
    uint64_t until = harness_now_ms() + 3000;
    while (metrics_of(a).deferred_frees > before + 16 && harness_now_ms() < until)
        harness_nap_ms(20);
    uint64_t later = metrics_of(a).deferred_frees;
    print_message("deferred frees 3 s later: %llu\n", (unsigned long long)later);
    afsm_engine_close(a);
    assert_true(later <= before + 16);
}

/* ---- the lease pool -------------------------------------------------------------- */

static uint64_t grants(afsm_engine *e)
{
    return metrics_of(e).etcd_lease_grants_total;
}

/* The pool holds leases for one timeout; a create with another timeout
 * empties it (the leases are not revoked: etcd keeps them until their TTL)
 * and restarts the demand count. With two session timeouts in use (say
 * two client kinds), each create takes none of the pool's leases, grants
 * its own, and makes the granter grant spares for its timeout that the
 * next create throws away: three lease grants (raft writes) per create
 * instead of the one a pool-less create costs, and the thrown-away leases
 * stay in etcd. The pool must never cost more lease grants than it saves. */
static void test_two_timeouts_do_not_multiply_lease_grants(void **state)
{
    (void)state;
    afsm_engine *a;
    engine_options o = {.prefix = "/q4/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    uint64_t start = grants(a);
    const int creates = 20;
    for (int i = 0; i < creates; i++) {
        afsm_session_info s;
        assert_int_equal(create_timeout(a, "two", i % 2 ? 120000 : 60000, &s), AFSM_OK);
        /* Let the granter answer this create's demand (it grants at once). */
        uint64_t seen = grants(a), until = harness_now_ms() + 300;
        while (harness_now_ms() < until) {
            harness_nap_ms(20);
            uint64_t now = grants(a);
            if (now != seen) {
                seen = now;
                until = harness_now_ms() + 300;
            }
        }
    }
    uint64_t used = grants(a) - start;
    print_message("%d creates alternating two timeouts: %llu lease grants\n", creates, (unsigned long long)used);
    /* One lease per session, plus a pool's worth of spares at most. */
    afsm_engine_close(a);
    assert_true(used <= (uint64_t)creates + 4);
}

/* ---- two nodes: a restore, a delete by user on a node whose watch lags ---- */

/* A deletes session X; B, whose watch has not delivered that yet, restores
 * X from a copy with a new connection id (a daemon moving the session to
 * another transport). etcd takes it (s/X and c/new are free). B applies
 * the restore's result with etcd_apply_put, which finds X still in the
 * replica (the old incarnation, tracked) and updates it in place:
 * update_replica carries state, metadata, stats and generation only, so
 * the replica keeps X's old connection id (and client address). The
 * watch's copy of A's delete is then older than the record held (D):
 * ignored, and the echo is not newer: nothing ever repairs it. B answers
 * the old connection id, which etcd no longer has, and not the new one. */
static void test_restore_on_a_lagging_node_takes_the_copys_connection(void **state)
{
    (void)state;
    static gate g; /* static: see stalls_watch */
    gate_init(&g, AFSM_EVENT_CREATED);
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/q5/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.on_event = gate_event;
    o.event_ctx = &g;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);

    afsm_session_info x, copy, hold;
    assert_int_equal(create(a, "mover", &x), AFSM_OK);
    WAIT_FOR(get(b, &x.session_id, &copy) == AFSM_OK, 5000);
    assert_int_equal(create(a, "hold", &hold), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g.hold), 5000); /* B's watch thread is in the callback */

    assert_int_equal(afsm_session_delete(a, &x.session_id, "moved", 5), AFSM_OK);
    afsm_session_info moved = copy;
    afsm_uuid_v7(&moved.connection_id);
    moved.client_port = 5544;
    afsm_status restored = afsm_session_restore(b, &moved, NULL, 0);
    hold_gate_open(&g.hold);
    assert_int_equal(restored, AFSM_OK);

    /* Once B has seen a later create, its watch has passed both writes. */
    afsm_session_info marker, by_new, by_old;
    assert_int_equal(create(a, "marker", &marker), AFSM_OK);
    WAIT_FOR(get(b, &marker.session_id, &copy) == AFSM_OK, 5000);
    afsm_session_info_init(&by_new, AFSM_SESSION_INFO_VERSION);
    afsm_session_info_init(&by_old, AFSM_SESSION_INFO_VERSION);
    afsm_status new_status = afsm_session_get_by_connection(b, &moved.connection_id, &by_new);
    afsm_status old_status = afsm_session_get_by_connection(b, &x.connection_id, &by_old);
    assert_int_equal(get(b, &x.session_id, &copy), AFSM_OK);
    print_message("B: by new connection %s, by old connection %s, port %u\n", afsm_status_name(new_status),
                  afsm_status_name(old_status), copy.client_port);
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&g.hold);
    assert_int_equal(new_status, AFSM_OK);
    assert_int_equal(old_status, AFSM_ENOTFOUND);
    assert_int_equal(copy.client_port, 5544);
}

/* A session created on A, removed by afsm_session_delete_by_user on B
 * before B's watch delivered its create: B counts it removed, but its
 * replica never had it, so apply_own_delete fires nothing, and the
 * tombstone then hides the create's echo: B never fires a CREATED nor a
 * DELETED for it. The memory store fires DELETED for every session a
 * delete by user removes, on the calling thread, before it returns. */
static void test_delete_by_user_fires_deleted_for_each_removed(void **state)
{
    (void)state;
    static gate g; /* static: see stalls_watch */
    gate_init(&g, AFSM_EVENT_CREATED);
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/q6/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.on_event = gate_event;
    o.event_ctx = &g;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);

    afsm_session_info x, hold, copy, marker;
    assert_int_equal(create(a, "hold", &hold), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g.hold), 5000); /* B's watch thread is in the callback */
    assert_int_equal(create(a, "leaver", &x), AFSM_OK);
    size_t removed = 0;
    afsm_status st = afsm_session_delete_by_user(b, "leaver", 6, "bye", 3, &removed);
    size_t deleted_on_return = gate_events(&g, AFSM_EVENT_DELETED, &x.session_id);
    hold_gate_open(&g.hold);
    assert_int_equal(st, AFSM_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(create(a, "marker", &marker), AFSM_OK);
    WAIT_FOR(get(b, &marker.session_id, &copy) == AFSM_OK, 5000);
    size_t deleted = gate_events(&g, AFSM_EVENT_DELETED, &x.session_id);
    print_message("B: %zu removed; DELETED events for it: %zu on return, %zu once caught up; CREATED: %zu\n", removed,
                  deleted_on_return, deleted, gate_events(&g, AFSM_EVENT_CREATED, &x.session_id));
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&g.hold);
    assert_int_equal(deleted_on_return, 1);
    assert_int_equal(deleted, 1);
}

/* ---- a callback that deletes the session it is told of ----------------------------- */

typedef struct deleter {
    afsm_engine *e;
    uint32_t type; /* the event whose callback deletes */
    _Atomic int deleted;
} deleter;

static void delete_on_event(void *ctx, const afsm_event *ev)
{
    deleter *d = ctx;
    if (ev->type == d->type && ev->user_id_len == 7 && memcmp(ev->user_id, "selfdel", 7) == 0 &&
        afsm_session_delete(d->e, &ev->session_id, "from a callback", 15) == AFSM_OK)
        atomic_fetch_add(&d->deleted, 1);
}

/* afsm.h lets a callback call any afsm_session_* function. The memory
 * store fills the caller's copy before it fires the event, so a create
 * (or an update) whose callback deletes the session still returns
 * AFSM_OK with the session as made. The etcd store fires from apply_own,
 * then reads the copy back from the replica (etcd_create's and
 * etcd_update's last get): the session is gone, and the call reports
 * AFSM_ENOTFOUND for a write that was made, whose CREATED (or
 * STATE_CHANGED) and DELETED both fired. */
static void test_create_whose_callback_deletes_reports_ok(void **state)
{
    (void)state;
    static deleter d; /* static: see stalls_watch */
    d = (deleter){.type = AFSM_EVENT_CREATED};
    afsm_engine *a;
    engine_options o = {.prefix = "/q7/", .on_event = delete_on_event, .event_ctx = &d};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    d.e = a;
    afsm_session_info s;
    afsm_status st = create(a, "selfdel", &s);
    print_message("create: %s, deleted by its callback: %d\n", afsm_status_name(st), atomic_load(&d.deleted));
    afsm_engine_close(a);
    assert_int_equal(atomic_load(&d.deleted), 1);
    assert_int_equal(st, AFSM_OK);
}

static void test_update_whose_callback_deletes_reports_ok(void **state)
{
    (void)state;
    static deleter d;
    d = (deleter){.type = AFSM_EVENT_STATE_CHANGED};
    afsm_engine *a;
    engine_options o = {.prefix = "/q8/", .on_event = delete_on_event, .event_ctx = &d};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    d.e = a;
    afsm_session_info s, after;
    assert_int_equal(create(a, "selfdel", &s), AFSM_OK);
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    afsm_session_info_init(&after, AFSM_SESSION_INFO_VERSION);
    afsm_status st = afsm_session_update(a, &s.session_id, &u, &after);
    print_message("update: %s, deleted by its callback: %d\n", afsm_status_name(st), atomic_load(&d.deleted));
    afsm_engine_close(a);
    assert_int_equal(atomic_load(&d.deleted), 1);
    assert_int_equal(st, AFSM_OK);
    assert_int_equal(after.state, AFSM_STATE_ACTIVE);
}

/* ---- allocation failure after the txn -------------------------------------------- */

/* alloc.h: a test makes the Nth allocation fail "and check[s] that the
 * engine is unchanged". etcd_create allocates from the engine's allocator
 * after its txn has committed (the replica's copy, in apply_own): that
 * failure returns AFSM_ENOMEM, but nothing undoes the txn (the lease is
 * revoked only on failures before it), so the session exists in etcd, on
 * every other node, and (once the watch applies the echo) here too, after
 * the caller was told it was not created. Each step here fails the Nth
 * allocation of one create; every create reported failed must have left
 * etcd without its session. */
static void test_create_failing_for_memory_leaves_no_session(void **state)
{
    (void)state;
    afsm_engine *a;
    engine_options o = {.prefix = "/q9/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    int64_t made = 0, failed = 0, before = sessions_in_etcd("/q9/");
    for (long n = 0; n < 40; n++) {
        afsm_session_info s;
        alloc_fail_after(n);
        afsm_status st = create(a, "scarce", &s);
        alloc_fail_reset();
        if (st == AFSM_OK)
            made++;
        else if (st == AFSM_ENOMEM)
            failed++;
        else
            fail_msg("create with allocation %ld failing: %s", n, afsm_status_name(st));
    }
    int64_t in_etcd = sessions_in_etcd("/q9/") - before;
    print_message("40 creates: %lld AFSM_OK, %lld AFSM_ENOMEM; sessions in etcd: %lld\n", (long long)made,
                  (long long)failed, (long long)in_etcd);
    afsm_engine_close(a);
    assert_true(failed > 0); /* the sweep reached the create's allocations */
    assert_int_equal(in_etcd, made);
}

/* ---- allocation failure in the watch ---------------------------------------------- */

static _Atomic int not_applied; /* "session record not applied" logged */

static void count_not_applied(void *ctx, int level, const char *message, const afsm_log_field *fields,
                              size_t field_count)
{
    (void)ctx;
    (void)level;
    (void)fields;
    (void)field_count;
    if (strstr(message, "not applied") != NULL)
        atomic_fetch_add(&not_applied, 1);
}

/* A record the watch fails to apply (the replica's copy needs memory) is
 * logged and skipped, and applied_revision is raised past it all the
 * same: the watch never delivers it again, so one transient allocation
 * failure leaves the session missing from this node's replica for as long
 * as the engine lives (until a compaction reload), though it exists in
 * etcd and on every other node. B's watch is held in a callback while A
 * creates X; the allocator fails while B's watch applies it, and works
 * again once the failure is logged. */
static void test_watch_apply_failing_for_memory_is_not_lost(void **state)
{
    (void)state;
    static gate g; /* static: see stalls_watch */
    gate_init(&g, AFSM_EVENT_CREATED);
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/q10/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    afsm_config cfg;
    assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    cfg.store = AFSM_STORE_ETCD;
    cfg.etcd_endpoints = cluster.endpoints;
    cfg.etcd_prefix = "/q10/";
    cfg.etcd_request_timeout_ms = 3000;
    cfg.default_timeout_ms = 60000;
    cfg.on_event = gate_event;
    cfg.event_ctx = &g;
    cfg.on_log = count_not_applied;
    cfg.log_level = AFSM_LOG_WARN;
    cfg.shard_count = 4;
    assert_int_equal(afsm_engine_open(&cfg, &b), AFSM_OK);

    afsm_session_info hold, x, marker, copy;
    assert_int_equal(create(a, "hold", &hold), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g.hold), 5000); /* B's watch thread is in the callback */
    assert_int_equal(create(a, "scarce", &x), AFSM_OK);
    alloc_fail_after(0);
    hold_gate_open(&g.hold);
    uint64_t until = harness_now_ms() + 5000;
    while (atomic_load(&not_applied) == 0 && harness_now_ms() < until)
        harness_nap_ms(5);
    alloc_fail_reset();
    int failed = atomic_load(&not_applied);

    /* Once B has seen a later create, its watch has passed X's. */
    assert_int_equal(create(a, "marker", &marker), AFSM_OK);
    WAIT_FOR(get(b, &marker.session_id, &copy) == AFSM_OK, 5000);
    afsm_status seen = get(b, &x.session_id, &copy);
    print_message("B's watch: %d record(s) not applied; X on B afterwards: %s (on A: %s)\n", failed,
                  afsm_status_name(seen), afsm_status_name(get(a, &x.session_id, &copy)));
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&g.hold);
    assert_true(failed > 0); /* the failure did hit B's apply */
    assert_int_equal(seen, AFSM_OK);
}

/* ---- the cluster ----------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_created_callback_does_not_stall_the_watch),
        cmocka_unit_test(test_state_changed_callback_does_not_stall_the_watch),
        cmocka_unit_test(test_replica_frees_removed_sessions),
        cmocka_unit_test(test_two_timeouts_do_not_multiply_lease_grants),
        cmocka_unit_test(test_restore_on_a_lagging_node_takes_the_copys_connection),
        cmocka_unit_test(test_delete_by_user_fires_deleted_for_each_removed),
        cmocka_unit_test(test_create_whose_callback_deletes_reports_ok),
        cmocka_unit_test(test_update_whose_callback_deletes_reports_ok),
        cmocka_unit_test(test_create_failing_for_memory_leaves_no_session),
        cmocka_unit_test(test_watch_apply_failing_for_memory_is_not_lost),
    };
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    return cmocka_run_group_tests_name("review 16b: one member", one, start_one, stop_cluster);
}
