/*
 * test_regressions.c: one test per bug found by reviewing core/, each of
 * which failed (or was reported by ASan) before its fix: a closed session's
 * linger prolonged by traffic; a use-after-free of the user entry in a
 * handle's wake-up event; a rolled-back create visible to a delete; an
 * eviction visible as cap + 1.
 *
 * Run one at a time with AFSM_TEST_FILTER=<test name>. No sleeps: virtual
 * time, or atomics as the only synchronisation.
 */
#include "test_support.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "store.h"
#include "util/alloc.h"
#include "util/epoch.h"

/* ---- helpers ------------------------------------------------------------- */

typedef struct review_opts {
    uint64_t idle_timeout_ms;
    uint64_t close_linger_ms;
    uint32_t shard_count;
    uint64_t capacity_hint;
    uint32_t max_sessions_per_user;
    uint32_t limit_policy;
    afsm_event_fn on_event;
    void *event_ctx;
} review_opts;

static afsm_engine *open_review_engine(virtual_clock *clock, const review_opts *o)
{
    afsm_config cfg;
    virtual_config(clock, &cfg);
    cfg.shard_count = o->shard_count ? o->shard_count : 8;
    cfg.capacity_hint = o->capacity_hint;
    cfg.default_timeout_ms = 60000;
    cfg.idle_timeout_ms = o->idle_timeout_ms;
    cfg.close_linger_ms = o->close_linger_ms;
    cfg.max_sessions_per_user = o->max_sessions_per_user;
    cfg.limit_policy = o->limit_policy;
    cfg.on_event = o->on_event;
    cfg.event_ctx = o->event_ctx;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static void set_state(afsm_engine *engine, const afsm_uuid *id, uint32_t state)
{
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = state;
    assert_int_equal(afsm_session_update(engine, id, &u, NULL), AFSM_OK);
}

static void advance_to(afsm_engine *engine, virtual_clock *clock, uint64_t now)
{
    virtual_clock_set(clock, now);
    assert_int_equal(afsm_engine_advance(engine, now, NULL), AFSM_OK);
}

/* Fills the single shard of a one-shard engine so that its connections
 * table is full and cannot grow while its sessions table has room: a
 * restore of the returned copy (same user, fixed new ids) then publishes
 * its record and rolls back when the connection insert fails (ENOMEM).
 * Both tables reach their growth point at the 9th session; there two
 * allocations succeed (the record, the sessions table's growth) and the
 * connections table's growth fails; after it only the record succeeds.
 * The tables hash with a random seed, so a create may find no slot sooner,
 * or the copy a free one later: fill until the copy's restore fails. */
static afsm_session_info fill_for_rollback(afsm_engine *engine, const char *user)
{
    afsm_session_info template = AFSM_SESSION_INFO_INIT;
    for (int i = 0; i < 256; i++) {
        afsm_uuid conn;
        afsm_create_options opt = make_options(user, "10.1.2.3", &conn);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        if (i >= 8)
            alloc_fail_after(i == 8 ? 2 : 1);
        afsm_status st = afsm_session_create(engine, &opt, &info);
        alloc_fail_reset();
        if (st == AFSM_OK && i < 16)
            template = info;
        if (i < 15)
            continue;
        afsm_session_info restore = template;
        afsm_uuid_v7(&restore.session_id);
        afsm_uuid_v7(&restore.connection_id);
        alloc_fail_after(1);
        st = afsm_session_restore(engine, &restore, NULL, 0);
        alloc_fail_reset();
        if (st == AFSM_ENOMEM)
            return restore;
        assert_int_equal(st, AFSM_OK); /* it fitted: take it out and fill on */
        assert_int_equal(afsm_session_delete(engine, &restore.session_id, NULL, 0), AFSM_OK);
    }
    fail_msg("the tables never filled");
    return template;
}

/* ---- 1: stats on a closed session extend its linger forever ---------------- */

/* close_linger_ms: "how long a closed session stays readable". Under idle
 * detection, add_stats stores last_traffic_ns, which for a closed session
 * is the start of its linger (session.h), so traffic keeps a closed session
 * alive indefinitely. */
static void test_closed_linger_not_extended_by_stats(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {.idle_timeout_ms = 10000, .close_linger_ms = 1000};
    afsm_engine *engine = open_review_engine(&clock, &o);
    afsm_session_info s = create_session(engine, "linger-user");
    set_state(engine, &s.session_id, AFSM_STATE_ACTIVE);
    set_state(engine, &s.session_id, AFSM_STATE_CLOSED);

    uint64_t now = 1000 * SEC;
    afsm_stats delta = {.packets_sent = 1};
    /* 10 s of traffic, every 500 ms, on a session closed with a 1 s linger. */
    for (int i = 0; i < 20; i++) {
        now += 500 * MS;
        virtual_clock_set(&clock, now);
        (void)afsm_session_add_stats(engine, &s.session_id, &delta);
        advance_to(engine, &clock, now);
    }
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &out), AFSM_ENOTFOUND);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 2: a handle's wake-up event reads a freed user entry ------------------ */

typedef struct wake_ctx {
    _Atomic long in_callback;
    _Atomic long go;
    _Atomic long done;
    char seen_user[AFSM_USER_ID_MAX + 1];
    size_t seen_len;
    afsm_handle *handle;
    afsm_status heartbeat_status;
} wake_ctx;

static void wake_event(void *ctx, const afsm_event *ev)
{
    wake_ctx *w = ctx;
    if (ev->type != AFSM_EVENT_STATE_CHANGED || ev->old_state != AFSM_STATE_IDLE || ev->new_state != AFSM_STATE_ACTIVE)
        return;
    atomic_store_explicit(&w->in_callback, 1, memory_order_release);
    spin_until(&w->go, 1, 20);
    /* "Pointers are valid only during the call": this is during the call. */
    w->seen_len = ev->user_id_len <= AFSM_USER_ID_MAX ? ev->user_id_len : AFSM_USER_ID_MAX;
    memcpy(w->seen_user, ev->user_id, w->seen_len);
    w->seen_user[w->seen_len] = '\0';
}

static void *wake_thread(void *arg)
{
    wake_ctx *w = arg;
    w->heartbeat_status = afsm_handle_heartbeat(w->handle, NULL);
    atomic_store_explicit(&w->done, 1, memory_order_release);
    return NULL;
}

/* The handle data plane runs outside any epoch section; when a heartbeat
 * through a handle wakes an idle session, mem_activate (then mem_reactivate) fired the event
 * after dropping the lock, reading s->user (the user's index entry). A
 * delete of the user's last session retires that entry through the epoch,
 * which nothing on the handle's thread holds back: the event's user_id
 * then points into freed memory. */
static void test_handle_wake_event_user_id_valid(void **state)
{
    (void)state;
    virtual_clock clock;
    wake_ctx w;
    memset(&w, 0, sizeof(w));
    /* One shard: each advance then moves the epoch by one, so the deferred
     * free of the user entry runs within a few advances. */
    review_opts o = {.idle_timeout_ms = 1000, .shard_count = 1, .on_event = wake_event, .event_ctx = &w};
    afsm_engine *engine = open_review_engine(&clock, &o);
    /* Longer than a record holds (mem/index.h): the id is in the entry. */
    afsm_session_info s = create_session(engine, "wake-user-A-whose-id-the-record-cannot-hold");
    set_state(engine, &s.session_id, AFSM_STATE_ACTIVE);
    advance_to(engine, &clock, 1002 * SEC); /* idle detection: ACTIVE -> IDLE */
    afsm_session_info got = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &got), AFSM_OK);
    assert_int_equal(got.state, AFSM_STATE_IDLE);

    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &w.handle), AFSM_OK);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wake_thread, &w), 0);
    assert_true(spin_until(&w.in_callback, 1, 20));

    /* While the wake-up event is being delivered: delete the user's only
     * session and let the epoch reclaim what it retired. */
    assert_int_equal(afsm_session_delete(engine, &s.session_id, NULL, 0), AFSM_OK);
    afsm_metrics m = AFSM_METRICS_INIT;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(afsm_engine_advance(engine, 1002 * SEC, NULL), AFSM_OK);
        assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
        if (m.deferred_frees == 0)
            break;
    }
    /* Reuse the freed block, as any later allocation may. */
    (void)create_session(engine, "wake-user-B-whose-id-the-record-cannot-hold");

    atomic_store_explicit(&w.go, 1, memory_order_release);
    pthread_join(t, NULL);
    assert_int_equal(w.heartbeat_status, AFSM_OK);
    assert_string_equal(w.seen_user, "wake-user-A-whose-id-the-record-cannot-hold");
    afsm_handle_release(w.handle);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 3: a create rolled back after publication is not marked removed ------- */

typedef struct rollback_ctx {
    afsm_engine *engine;
    afsm_uuid id;
    _Atomic long ready;
    _Atomic long stop;
    _Atomic long phantom_deletes;
} rollback_ctx;

static void *rollback_deleter(void *arg)
{
    rollback_ctx *c = arg;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    (void)afsm_session_get(c->engine, &c->id, &info); /* allocates this thread's epoch record */
    atomic_store_explicit(&c->ready, 1, memory_order_release);
    while (!atomic_load_explicit(&c->stop, memory_order_acquire)) {
        if (afsm_session_delete(c->engine, &c->id, NULL, 0) == AFSM_OK)
            atomic_fetch_add_explicit(&c->phantom_deletes, 1, memory_order_relaxed);
    }
    return NULL;
}

/* mem_create inserts the record into the sessions table, then the
 * connection insert fails (ENOMEM) and the record is taken out again and
 * handed to the epoch, without setting `removed`. A delete that looked the
 * id up in between then "removes" a session that never existed: it unlinks
 * it from a user list it was never on, calls wheel_remove on a timer whose
 * bytes are now the epoch entry, and defers the record a second time. */
static void test_create_rollback_invisible_to_delete(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {.shard_count = 1, .capacity_hint = 1};
    afsm_engine *engine = open_review_engine(&clock, &o);

    afsm_session_info restore = fill_for_rollback(engine, "rollback-user");
    rollback_ctx c = {.engine = engine, .id = restore.session_id};
    afsm_counts before;
    assert_int_equal(afsm_engine_counts(engine, &before), AFSM_OK);

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, rollback_deleter, &c), 0);
    assert_true(spin_until(&c.ready, 1, 20));
    uint64_t deadline = real_ns() + 3 * 1000000000ull;
    for (int i = 0;
         i < 300000 && atomic_load_explicit(&c.phantom_deletes, memory_order_relaxed) == 0 && real_ns() < deadline;
         i++) {
        alloc_fail_after(1);
        afsm_status st = afsm_session_restore(engine, &restore, NULL, 0);
        alloc_fail_reset();
        assert_int_equal(st, AFSM_ENOMEM);
    }
    atomic_store_explicit(&c.stop, 1, memory_order_release);
    pthread_join(t, NULL);
    /* X never existed: no delete of it may succeed. */
    assert_int_equal(atomic_load(&c.phantom_deletes), 0);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, before.total);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 4: evict-oldest shows the user above the cap ---------------------------- */

#define EVICT_ROUNDS 20000

typedef struct evict_ctx {
    afsm_engine *engine;
    afsm_uuid conns[EVICT_ROUNDS + 1];
    _Atomic long round;
    _Atomic long ready;
    _Atomic long done;
    _Atomic long both_seen;
    _Atomic long failed;
} evict_ctx;

static void *evict_reader(void *arg)
{
    evict_ctx *c = arg;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    (void)afsm_session_get_by_connection(c->engine, &c->conns[0], &info);
    for (long k = 1; k <= EVICT_ROUNDS; k++) {
        if (!spin_until(&c->round, k, 20)) {
            atomic_store(&c->failed, 1);
            return NULL;
        }
        if (atomic_load(&c->round) > EVICT_ROUNDS)
            return NULL; /* stopped */
        atomic_store_explicit(&c->ready, k, memory_order_release);
        uint64_t deadline = real_ns() + 20 * 1000000000ull;
        /* The new session first, then its victim: if the victim is still
         * there after the new one was seen, both existed at once. */
        while (afsm_session_get_by_connection(c->engine, &c->conns[k], &info) != AFSM_OK) {
            if (real_ns() > deadline) {
                atomic_store(&c->failed, 1);
                return NULL;
            }
        }
        if (afsm_session_get_by_connection(c->engine, &c->conns[k - 1], &info) == AFSM_OK)
            atomic_fetch_add_explicit(&c->both_seen, 1, memory_order_relaxed);
        atomic_store_explicit(&c->done, k, memory_order_release);
    }
    return NULL;
}

/* afsm.h, afsm_session_create: "A reader never sees a user above the cap,
 * not even for an instant." Under AFSM_LIMIT_EVICT_OLDEST, mem_create
 * publishes the new record in the sessions and connections tables before
 * it removes the victim, so for a moment both are found. */
static void test_evict_oldest_never_above_cap(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {.max_sessions_per_user = 1, .limit_policy = AFSM_LIMIT_EVICT_OLDEST};
    afsm_engine *engine = open_review_engine(&clock, &o);
    evict_ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->engine = engine;
    afsm_create_options opts[1];
    for (long k = 0; k <= EVICT_ROUNDS; k++)
        afsm_uuid_v7(&c->conns[k]);
    opts[0] = make_options("evict-user", "10.9.8.7", &c->conns[0]);
    opts[0].connection_id = c->conns[0];
    assert_int_equal(afsm_session_create(engine, &opts[0], NULL), AFSM_OK);

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, evict_reader, c), 0);
    for (long k = 1; k <= EVICT_ROUNDS && !atomic_load(&c->failed); k++) {
        atomic_store_explicit(&c->round, k, memory_order_release);
        if (!spin_until(&c->ready, k, 20))
            break;
        opts[0].connection_id = c->conns[k];
        assert_int_equal(afsm_session_create(engine, &opts[0], NULL), AFSM_OK);
        if (!spin_until(&c->done, k, 20))
            break;
        /* Sanity: once the create returned, the victim is gone. */
        afsm_session_info gone = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_get_by_connection(engine, &c->conns[k - 1], &gone), AFSM_ENOTFOUND);
        if (atomic_load(&c->both_seen) >= 3)
            break;
    }
    atomic_store(&c->round, EVICT_ROUNDS + 2);
    pthread_join(t, NULL);
    long both = atomic_load(&c->both_seen);
    long failed = atomic_load(&c->failed);
    print_message("rounds done %ld, both seen %ld\n", atomic_load(&c->done), both);
    free(c);
    assert_int_equal(failed, 0);
    assert_int_equal(both, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 5: a rolled-back create can be pinned, and its handle outlives it ----- */

typedef struct pin_ctx {
    afsm_engine *engine;
    afsm_uuid id;
    _Atomic long ready;
    _Atomic long stop;
    _Atomic long pinned;
    _Atomic long heartbeats_ok;
} pin_ctx;

static void *rollback_pinner(void *arg)
{
    pin_ctx *c = arg;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    (void)afsm_session_get(c->engine, &c->id, &info); /* allocates this thread's epoch record */
    atomic_store_explicit(&c->ready, 1, memory_order_release);
    while (!atomic_load_explicit(&c->stop, memory_order_acquire)) {
        afsm_handle *h = NULL;
        if (afsm_handle_pin(c->engine, &c->id, &h) != AFSM_OK)
            continue;
        atomic_fetch_add_explicit(&c->pinned, 1, memory_order_relaxed);
        /* Let the creator's rollback and its epoch run; then use the handle
         * as a data plane would, long after. */
        for (int i = 0; i < 2000; i++) {
            if (afsm_handle_heartbeat(h, NULL) == AFSM_OK)
                atomic_fetch_add_explicit(&c->heartbeats_ok, 1, memory_order_relaxed);
        }
        afsm_handle_release(h);
    }
    return NULL;
}

/* The rollback of a create whose connection insert failed deferred the
 * record's free without looking at its reference count: a handle pinned in
 * the window between the two inserts kept pointing at it after the epoch
 * freed it (ASan: heap-use-after-free in afsm_handle_heartbeat). A session
 * that was never created must not be pinnable at all. */
static void test_rolled_back_create_never_pinned(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {.shard_count = 1, .capacity_hint = 1};
    afsm_engine *engine = open_review_engine(&clock, &o);
    afsm_session_info restore = fill_for_rollback(engine, "pin-rollback-user");
    pin_ctx c = {.engine = engine, .id = restore.session_id};

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, rollback_pinner, &c), 0);
    assert_true(spin_until(&c.ready, 1, 20));
    uint64_t deadline = real_ns() + 3 * 1000000000ull;
    for (int i = 0; i < 300000 && real_ns() < deadline; i++) {
        alloc_fail_after(1);
        afsm_status st = afsm_session_restore(engine, &restore, NULL, 0);
        alloc_fail_reset();
        assert_int_equal(st, AFSM_ENOMEM);
        /* Run the deferred frees now, while a stale handle may be in use. */
        if (atomic_load_explicit(&c.pinned, memory_order_relaxed) != 0 && i % 64 == 0)
            assert_int_equal(afsm_engine_advance(engine, 1000 * SEC, NULL), AFSM_OK);
    }
    atomic_store_explicit(&c.stop, 1, memory_order_release);
    pthread_join(t, NULL);
    print_message("pinned %ld, heartbeats through them %ld\n", atomic_load(&c.pinned), atomic_load(&c.heartbeats_ok));
    assert_int_equal(atomic_load(&c.pinned), 0);
    assert_int_equal(atomic_load(&c.heartbeats_ok), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK); /* AFSM_EBUSY while a handle is pinned */
}

/* ---- 6: a failed evict-oldest create hides the live victim ----------------- */

#define HIDDEN_VICTIMS 64

typedef struct hidden_ctx {
    afsm_engine *engine;
    afsm_uuid victims[HIDDEN_VICTIMS]; /* [current] is the user's one session */
    _Atomic long current;
    _Atomic long ready;
    _Atomic long stop;
    _Atomic long reads;
    _Atomic long reappeared;
} hidden_ctx;

/* Reads the current victim in a loop. A victim that is evicted is gone
 * for good; one that goes missing and then is found again was hidden while
 * alive. */
static void *victim_reader(void *arg)
{
    hidden_ctx *c = arg;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    (void)afsm_session_get(c->engine, &c->victims[0], &info);
    atomic_store_explicit(&c->ready, 1, memory_order_release);
    int missing = 0;
    long watched = 0;
    while (!atomic_load_explicit(&c->stop, memory_order_acquire)) {
        long now = atomic_load_explicit(&c->current, memory_order_acquire);
        if (now != watched) {
            watched = now;
            missing = 0;
        }
        afsm_status st = afsm_session_get(c->engine, &c->victims[watched], &info);
        if (st == AFSM_ENOTFOUND)
            missing = 1;
        else if (st == AFSM_OK && missing)
            atomic_fetch_add_explicit(&c->reappeared, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->reads, 1, memory_order_relaxed);
    }
    return NULL;
}

/* Under evict-oldest at the cap, mem_create marked the victim removed
 * before the new record's table inserts, and un-marked it when an insert
 * failed: meanwhile every lock-free read (and a delete, or "log out
 * everywhere") found the live victim missing. A create that fails must
 * leave every other session visible throughout. */
static void test_failed_eviction_never_hides_victim(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {
        .shard_count = 1, .capacity_hint = 1, .max_sessions_per_user = 1, .limit_policy = AFSM_LIMIT_EVICT_OLDEST};
    afsm_engine *engine = open_review_engine(&clock, &o);
    afsm_session_info victim = create_session(engine, "evict-fail-user");

    /* Add other users' sessions while the tables cannot grow (a table
     * refuses an insert that needs a growth it cannot allocate), until the
     * user's next create fails for want of a slot. Two allocations succeed
     * for a filler: its record and its user's entry. Then find a connection
     * id whose own insert is refused: one that fails 20 creates in a row,
     * each with a fresh (random) session id, is refused by the connections
     * table, and every create with it fails the same way, since failures
     * change no table. (A create that succeeds evicts for real: its session
     * is the victim then.) */
    afsm_create_options opt;
    afsm_uuid conn;
    char user[32];
    int qualified = 0;
    for (int i = 0; i < 256 && !qualified; i++) {
        snprintf(user, sizeof(user), "filler-%d", i);
        opt = make_options(user, "10.4.4.5", &conn);
        alloc_fail_after(2);
        (void)afsm_session_create(engine, &opt, NULL);
        alloc_fail_reset();
        opt = make_options("evict-fail-user", "10.4.4.4", &conn);
        int refused = 0;
        for (; refused < 20; refused++) {
            afsm_session_info made = AFSM_SESSION_INFO_INIT;
            alloc_fail_after(1);
            afsm_status st = afsm_session_create(engine, &opt, &made);
            alloc_fail_reset();
            if (st == AFSM_ENOMEM)
                continue;
            assert_int_equal(st, AFSM_OK);
            victim = made;
            break;
        }
        qualified = refused == 20;
    }
    assert_true(qualified);

    hidden_ctx c = {.engine = engine};
    c.victims[0] = victim.session_id;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, victim_reader, &c), 0);
    assert_true(spin_until(&c.ready, 1, 20));
    uint64_t deadline = real_ns() + 2 * 1000000000ull;
    long failed_creates = 0;
    /* The qualified connection id each time. Should a create still find
     * room, it evicts for real: the reader then watches the new victim. */
    afsm_status st;
    for (int i = 0; i < 200000 && real_ns() < deadline && atomic_load(&c.reappeared) == 0; i++) {
        afsm_session_info made = AFSM_SESSION_INFO_INIT;
        alloc_fail_after(1);
        st = afsm_session_create(engine, &opt, &made);
        alloc_fail_reset();
        if (st == AFSM_ENOMEM) {
            failed_creates++;
            continue;
        }
        /* It found a slot and evicted for real: watch the new victim. */
        assert_int_equal(st, AFSM_OK);
        long next = atomic_load(&c.current) + 1;
        if (next == HIDDEN_VICTIMS)
            break;
        c.victims[next] = made.session_id;
        atomic_store_explicit(&c.current, next, memory_order_release);
        opt = make_options("evict-fail-user", "10.4.4.4", &conn);
    }
    atomic_store_explicit(&c.stop, 1, memory_order_release);
    pthread_join(t, NULL);
    print_message("failed creates %ld, reads %ld, victim hidden and back %ld\n", failed_creates, atomic_load(&c.reads),
                  atomic_load(&c.reappeared));
    assert_true(failed_creates > 0);
    assert_int_equal(atomic_load(&c.reappeared), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 7: an epoch record used after its thread's TSD destructor freed it ---- */

/* ck_epoch.c's EPOCH_RECORD_IN_USE, private to libck. */
#define EPOCH_RECORD_IN_USE 0u

static pthread_key_t late_key;

typedef struct late_ctx {
    afsm_engine *engine;
    afsm_uuid id;
    afsm_status status;
    unsigned record_state;
} late_ctx;

static late_ctx late;

/* Runs after the engine's own TSD destructor (its key is older, and glibc
 * runs destructors in key order), as a thread-exit hook of some library
 * that calls the engine would. */
static void late_destructor(void *value)
{
    (void)value;
    ck_epoch_record_t *record = epoch_enter();
    assert_non_null(record);
    late.record_state = record->state;
    epoch_leave(record);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    late.status = afsm_session_get(late.engine, &late.id, &info);
}

static void *late_thread(void *arg)
{
    (void)arg;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    (void)afsm_session_get(late.engine, &late.id, &info); /* the engine's record and key */
    pthread_setspecific(late_key, &late);
    return NULL;
}

/* thread_exit unregistered the thread's epoch record but left the thread's
 * pointer to it, so a later destructor on that thread ran its read section
 * on a record ck_epoch no longer scans (and another thread may recycle):
 * nothing kept a deferred free from running under it. */
static void test_epoch_record_valid_in_later_destructor(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {0};
    late.engine = open_review_engine(&clock, &o);
    late.id = create_session(late.engine, "late-user").session_id;
    assert_int_equal(pthread_key_create(&late_key, late_destructor), 0);
    late.record_state = 99;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, late_thread, NULL), 0);
    pthread_join(t, NULL);
    assert_int_equal(late.record_state, EPOCH_RECORD_IN_USE);
    assert_int_equal(late.status, AFSM_OK);
    pthread_key_delete(late_key);
    assert_int_equal(afsm_engine_close(late.engine), AFSM_OK);
}

/* ---- 8: idle detection loses a wake-up ---------------------------------------- */

#define IDLE_SESSIONS 4000
#define IDLE_STOP     (1L << 40) /* a round past every real one: the thread's signal to end */

typedef struct idle_race_ctx {
    afsm_engine *engine;
    afsm_uuid ids[IDLE_SESSIONS];
    _Atomic long round;
    _Atomic long done;
    _Atomic long failed;
} idle_race_ctx;

static void *idle_heartbeater(void *arg)
{
    idle_race_ctx *c = arg;
    for (long k = 1;; k++) {
        if (!spin_until(&c->round, k, 20)) {
            atomic_store(&c->failed, 1);
            return NULL;
        }
        if (atomic_load(&c->round) == IDLE_STOP)
            return NULL;
        /* From the end: the reaper walks shards from the start. */
        for (int i = IDLE_SESSIONS - 1; i >= 0; i--) {
            if (afsm_session_heartbeat(c->engine, &c->ids[i], NULL) != AFSM_OK)
                atomic_store(&c->failed, 1);
        }
        atomic_store_explicit(&c->done, k, memory_order_release);
    }
}

/* The reaper decided "idle" from last_active and stored IDLE; a heartbeat
 * landing in between raised last_active, still read ACTIVE and did not wake
 * it: the session stayed IDLE although its last activity was a successful
 * heartbeat after the idle deadline. Each round here: every session went
 * quiet past its idle deadline; one thread heartbeats all of them at that
 * same moment while the reaper runs. Every session must end ACTIVE. */
static void test_idle_never_loses_wakeup(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {.idle_timeout_ms = 1000, .shard_count = 4};
    afsm_engine *engine = open_review_engine(&clock, &o);
    idle_race_ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->engine = engine;
    char user[32];
    for (int i = 0; i < IDLE_SESSIONS; i++) {
        snprintf(user, sizeof(user), "idle-race-%d", i % 97);
        c->ids[i] = create_session(engine, user).session_id;
        set_state(engine, &c->ids[i], AFSM_STATE_ACTIVE);
    }
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, idle_heartbeater, c), 0);
    uint64_t now = 1000 * SEC;
    long lost = 0, rounds = 0;
    uint64_t deadline = real_ns() + 4 * 1000000000ull;
    for (long k = 1; k <= 400 && real_ns() < deadline && lost == 0 && !atomic_load(&c->failed); k++) {
        now += 1500 * MS; /* past the idle deadline, well before expiry */
        virtual_clock_set(&clock, now);
        atomic_store_explicit(&c->round, k, memory_order_release);
        assert_int_equal(afsm_engine_advance(engine, now, NULL), AFSM_OK);
        assert_true(spin_until(&c->done, k, 20));
        for (int i = 0; i < IDLE_SESSIONS; i++) {
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            assert_int_equal(afsm_session_get(engine, &c->ids[i], &info), AFSM_OK);
            lost += info.state != AFSM_STATE_ACTIVE;
        }
        rounds = k;
    }
    atomic_store(&c->round, IDLE_STOP);
    pthread_join(t, NULL);
    print_message("rounds %ld, sessions left idle after a heartbeat %ld\n", rounds, lost);
    assert_int_equal(atomic_load(&c->failed), 0);
    assert_int_equal(lost, 0);
    free(c);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 9: a blocked callback in one engine stalls another's close ------------ */

typedef struct blocker_ctx {
    _Atomic long blocked;
    _Atomic long release;
} blocker_ctx;

static void blocking_event(void *ctx, const afsm_event *ev)
{
    blocker_ctx *b = ctx;
    if (ev->type != AFSM_EVENT_CREATED)
        return;
    atomic_store_explicit(&b->blocked, 1, memory_order_release);
    spin_until(&b->release, 1, 60);
}

static void *blocked_creator(void *arg)
{
    afsm_engine *engine = arg;
    (void)create_session(engine, "blocked-user");
    return NULL;
}

typedef struct churn_ctx {
    _Atomic long finished;
    uint64_t max_pending;
    afsm_status close_status;
} churn_ctx;

static void *churn_and_close(void *arg)
{
    churn_ctx *c = arg;
    virtual_clock clock;
    review_opts o = {0};
    afsm_engine *b = open_review_engine(&clock, &o);
    afsm_metrics m = AFSM_METRICS_INIT;
    for (int i = 0; i < 50000; i++) {
        afsm_session_info s = create_session(b, "churn-user");
        assert_int_equal(afsm_session_delete(b, &s.session_id, NULL, 0), AFSM_OK);
        if (i % 1000 == 999) {
            assert_int_equal(afsm_engine_advance(b, 1000 * SEC, NULL), AFSM_OK);
            assert_int_equal(afsm_metrics_snapshot(b, &m), AFSM_OK);
            if (m.deferred_frees > c->max_pending)
                c->max_pending = m.deferred_frees;
        }
    }
    c->close_status = afsm_engine_close(b);
    atomic_store_explicit(&c->finished, 1, memory_order_release);
    return NULL;
}

/* Event callbacks ran inside the process-wide epoch section: a callback
 * blocked in engine A held back every engine's deferred frees (B's backlog
 * grew without bound) and B's close, which waits for the epoch, never
 * returned while A's callback blocked. */
static void test_blocked_callback_does_not_stall_other_engine(void **state)
{
    (void)state;
    virtual_clock clock;
    blocker_ctx blocker = {0};
    review_opts o = {.on_event = blocking_event, .event_ctx = &blocker};
    afsm_engine *a = open_review_engine(&clock, &o);
    pthread_t creator, churner;
    assert_int_equal(pthread_create(&creator, NULL, blocked_creator, a), 0);
    assert_true(spin_until(&blocker.blocked, 1, 20));

    churn_ctx churn = {0};
    assert_int_equal(pthread_create(&churner, NULL, churn_and_close, &churn), 0);
    int finished = spin_until(&churn.finished, 1, 60);
    print_message("engine B finished while A's callback blocked: %d, max deferred frees %llu\n", finished,
                  (unsigned long long)churn.max_pending);
    atomic_store_explicit(&blocker.release, 1, memory_order_release);
    pthread_join(creator, NULL);
    pthread_join(churner, NULL);
    assert_true(finished);
    assert_int_equal(churn.close_status, AFSM_OK);
    assert_true(churn.max_pending < 20000);
    assert_int_equal(afsm_engine_close(a), AFSM_OK);
}

/* ---- 10: advance reports an allocation failure --------------------------------- */

/* When the expiry batch could not be allocated, advance returned OK and
 * counted the wheels as caught up. It must say ENOMEM, remove nothing it
 * could not settle, and the next call must expire what was due. */
static void test_advance_enomem_reported_and_resumed(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {0};
    afsm_engine *engine = open_review_engine(&clock, &o);
    char user[32];
    for (int i = 0; i < 100; i++) {
        snprintf(user, sizeof(user), "enomem-%d", i);
        (void)create_session(engine, user);
    }
    uint64_t later = 1000 * SEC + 61 * SEC;
    virtual_clock_set(&clock, later);
    size_t expired = 12345;
    alloc_fail_after(0);
    afsm_status st = afsm_engine_advance(engine, later, &expired);
    alloc_fail_reset();
    assert_int_equal(st, AFSM_ENOMEM);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.sessions + expired, 100);
    assert_true(m.reaper_lag_ns > 0); /* not caught up */
    size_t rest = 0;
    assert_int_equal(afsm_engine_advance(engine, later, &rest), AFSM_OK);
    assert_int_equal(expired + rest, 100);
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.sessions, 0);
    assert_int_equal(m.expired_total, 100);
    assert_int_equal(m.reaper_lag_ns, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 11: the stats an update sets are read torn --------------------------------- */

typedef struct torn_ctx {
    afsm_engine *engine;
    afsm_uuid id;
    _Atomic long stop;
    _Atomic long torn;
    _Atomic long reads;
} torn_ctx;

static void *stats_reader(void *arg)
{
    torn_ctx *c = arg;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    while (!atomic_load_explicit(&c->stop, memory_order_acquire)) {
        assert_int_equal(afsm_session_get(c->engine, &c->id, &info), AFSM_OK);
        const afsm_stats *s = &info.stats;
        if (s->packets_received != s->packets_sent || s->bytes_sent != s->packets_sent ||
            s->bytes_received != s->packets_sent || s->retransmissions != s->packets_sent ||
            s->current_rtt_ms != (uint32_t)s->packets_sent)
            atomic_fetch_add_explicit(&c->torn, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->reads, 1, memory_order_relaxed);
    }
    return NULL;
}

/* afsm_session_update "applies every requested part or none": a copy made
 * during an update that sets all six stats must see all of them or none. */
static void test_update_stats_never_torn(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {0};
    afsm_engine *engine = open_review_engine(&clock, &o);
    torn_ctx c = {.engine = engine, .id = create_session(engine, "torn-user").session_id};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, stats_reader, &c), 0);
    uint64_t deadline = real_ns() + 2 * 1000000000ull;
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATS;
    for (uint64_t k = 1; k < 2000000 && real_ns() < deadline && atomic_load(&c.torn) == 0; k++) {
        u.stats = (afsm_stats){.packets_sent = k,
                               .packets_received = k,
                               .bytes_sent = k,
                               .bytes_received = k,
                               .retransmissions = k,
                               .current_rtt_ms = (uint32_t)k};
        assert_int_equal(afsm_session_update(engine, &c.id, &u, NULL), AFSM_OK);
    }
    atomic_store_explicit(&c.stop, 1, memory_order_release);
    pthread_join(t, NULL);
    print_message("reads %ld, torn %ld\n", atomic_load(&c.reads), atomic_load(&c.torn));
    assert_int_equal(atomic_load(&c.torn), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 12: delete_by_user under allocation failure ---------------------------- */

/* delete_by_user snapshots the user's sessions into an array first: when
 * that cannot be allocated it must say so and delete nothing (the caller
 * may retry), not delete part of them. */
static void test_delete_by_user_enomem_deletes_nothing(void **state)
{
    (void)state;
    virtual_clock clock;
    review_opts o = {0};
    afsm_engine *engine = open_review_engine(&clock, &o);
    for (int i = 0; i < 40; i++)
        (void)create_session(engine, "enomem-user");
    size_t deleted = 99;
    alloc_fail_after(0);
    afsm_status st = afsm_session_delete_by_user(engine, "enomem-user", 11, NULL, 0, &deleted);
    alloc_fail_reset();
    assert_int_equal(st, AFSM_ENOMEM);
    assert_int_equal(deleted, 0);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, 40);
    assert_int_equal(afsm_session_delete_by_user(engine, "enomem-user", 11, NULL, 0, &deleted), AFSM_OK);
    assert_int_equal(deleted, 40);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK); /* no reference left behind */
}

/* ---- 13: a replica record active before its creation ------------------------ */

/* The etcd store's replica applies records written by nodes whose wall
 * clocks disagree: an activation stamped by a node running behind the
 * creator's reads as earlier than the creation. The store keeps created <=
 * last active (README, "Timestamps"), so such a record reads as active at
 * its creation, and a copy of it can be restored into another engine, which
 * refuses a copy active before it was created. */
static void test_replica_record_active_before_creation_reads_active_at_creation(void **state)
{
    (void)state;
    virtual_clock clock;
    virtual_clock_set(&clock, 1000 * SEC);
    store_config cfg = {.shard_count = 1,
                        .capacity_hint = 16,
                        .tick_ns = SEC,
                        .external_expiry = 1,
                        .external_activation = 1,
                        .server_addr = "",
                        .clock = virtual_clock_read,
                        .clock_ctx = &clock};
    store *replica;
    assert_int_equal(mem_store_open(&cfg, &replica), AFSM_OK);
    afsm_session_info record = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_uuid_v7(&record.session_id), AFSM_OK);
    assert_int_equal(afsm_uuid_v7(&record.connection_id), AFSM_OK);
    memcpy(record.user_id, "skewed", 7);
    record.user_id_len = 6;
    record.client_ip.family = 4;
    record.client_port = 4000;
    record.state = AFSM_STATE_ACTIVE;
    record.timeout_ms = 60000;
    record.token_generation = 1;
    int64_t now = mem_store_wall_now(replica);
    record.created_at_ns = now - 1 * (int64_t)SEC;
    record.last_active_at_ns = now - 2 * (int64_t)SEC; /* stamped by a node 1 s behind */
    session_spec spec = {.user_id = record.user_id,
                         .user_id_len = (uint16_t)record.user_id_len,
                         .client_port = record.client_port,
                         .client_ip = record.client_ip,
                         .connection_id = record.connection_id,
                         .timeout_ns = record.timeout_ms * 1000000u,
                         .restore = &record};
    afsm_session_info copy = AFSM_SESSION_INFO_INIT;
    assert_int_equal(replica->ops->create(replica, &spec, &copy), AFSM_OK);
    assert_int_equal(copy.created_at_ns, record.created_at_ns);
    assert_int_equal(copy.last_active_at_ns, record.created_at_ns);
    assert_true(copy.expires_at_ns == copy.last_active_at_ns + 60 * (int64_t)SEC);

    afsm_engine *other = open_review_engine(&clock, &(review_opts){0});
    afsm_status restored = afsm_session_restore(other, &copy, NULL, 0);
    if (restored != AFSM_OK)
        fail_msg("restore of the replica's copy: %s (%s)", afsm_status_name(restored), afsm_error_detail());
    afsm_engine_close(other);
    replica->ops->close(replica);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_closed_linger_not_extended_by_stats),
        cmocka_unit_test(test_handle_wake_event_user_id_valid),
        cmocka_unit_test(test_evict_oldest_never_above_cap),
        cmocka_unit_test(test_failed_eviction_never_hides_victim),
        cmocka_unit_test(test_epoch_record_valid_in_later_destructor),
        cmocka_unit_test(test_idle_never_loses_wakeup),
        cmocka_unit_test(test_blocked_callback_does_not_stall_other_engine),
        cmocka_unit_test(test_advance_enomem_reported_and_resumed),
        cmocka_unit_test(test_update_stats_never_torn),
        cmocka_unit_test(test_rolled_back_create_never_pinned),
        cmocka_unit_test(test_delete_by_user_enomem_deletes_nothing),
        cmocka_unit_test(test_replica_record_active_before_creation_reads_active_at_creation),
        /* Last: on the reviewed code it crashes the process (SIGSEGV). */
        cmocka_unit_test(test_create_rollback_invisible_to_delete),
    };
    if (getenv("AFSM_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
