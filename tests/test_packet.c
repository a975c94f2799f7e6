/*
 * test_packet.c: afsm_handle_packet, the one-pass heartbeat + stats of a
 * packet loop (core/mem/dataplane.c): it heartbeats as afsm_handle_heartbeat
 * does (CONNECTING/IDLE -> ACTIVE, deadline moved) at the caller's clock
 * reading, refuses a reading from the future, and its owner's counters,
 * deferred in the handle, reach the session exactly (never lost, never
 * twice) at the next advance or at release, also with other threads on the
 * same handle, by-id additions and advances running at once.
 *
 * Virtual time, manual reaper; the threaded test synchronises through
 * atomics and joins only (no sleeps).
 */
#include "test_support.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "mem/mem_store.h"
#include "util/alloc.h"

static virtual_clock vclock;

static afsm_stats get_stats(afsm_engine *engine, const afsm_uuid *id)
{
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, id, &info), AFSM_OK);
    return info.stats;
}

static uint64_t engine_now(afsm_engine *engine)
{
    uint64_t now = 0;
    assert_int_equal(afsm_engine_now(engine, &now), AFSM_OK);
    return now;
}

/* A packet is a heartbeat: CONNECTING -> ACTIVE, the deadline moves to
 * now + timeout; the owner's counters show after the next advance, exactly,
 * together with what afsm_handle_add_stats added at once. */
static void test_packet_heartbeats_and_counts(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "pkt");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    afsm_stats delta = {
        .packets_sent = 1, .packets_received = 2, .bytes_sent = 100, .bytes_received = 200, .retransmissions = 3};

    virtual_clock_set(&vclock, 1010 * SEC);
    uint64_t now = engine_now(engine);
    uint64_t remaining = 0;
    for (int i = 0; i < 10; i++)
        assert_int_equal(afsm_handle_packet(h, now, &delta, &remaining), AFSM_OK);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_OK);
    assert_int_equal(info.state, AFSM_STATE_ACTIVE);
    assert_int_equal(remaining, info.timeout_ms);
    assert_int_equal(info.expires_at_ns - info.last_active_at_ns, (int64_t)info.timeout_ms * (int64_t)MS);

    /* Added at once beside the deferred ones. */
    afsm_stats direct = {.packets_sent = 1000, .bytes_received = 5000, .current_rtt_ms = 42};
    assert_int_equal(afsm_handle_add_stats(h, &direct), AFSM_OK);
    assert_int_equal(afsm_engine_advance(engine, now, NULL), AFSM_OK);
    afsm_stats got = get_stats(engine, &s.session_id);
    assert_int_equal(got.packets_sent, 1010);
    assert_int_equal(got.packets_received, 20);
    assert_int_equal(got.bytes_sent, 1000);
    assert_int_equal(got.bytes_received, 7000);
    assert_int_equal(got.retransmissions, 30);
    assert_int_equal(got.current_rtt_ms, 42);
    /* A second advance moves nothing twice. */
    assert_int_equal(afsm_engine_advance(engine, now, NULL), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).packets_received, 20);

    /* Release moves the rest. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(afsm_handle_packet(h, now, &delta, NULL), AFSM_OK);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    got = get_stats(engine, &s.session_id);
    assert_int_equal(got.packets_received, 30);
    assert_int_equal(got.bytes_received, 8000);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* An IDLE session wakes on a packet (idle detection on). */
static void idle_event(void *ctx, const afsm_event *ev)
{
    if (ev->type == AFSM_EVENT_STATE_CHANGED && ev->new_state == AFSM_STATE_ACTIVE)
        (*(int *)ctx)++;
}

static void test_packet_wakes_idle(void **state)
{
    (void)state;
    afsm_config cfg;
    assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    virtual_clock_set(&vclock, 1000 * SEC);
    int woken = 0;
    cfg.clock = virtual_clock_read;
    cfg.clock_ctx = &vclock;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.idle_timeout_ms = 1000;
    cfg.on_event = idle_event;
    cfg.event_ctx = &woken;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    afsm_session_info s = create_session(engine, "idle");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    afsm_stats delta = {.packets_received = 1};
    assert_int_equal(afsm_handle_packet(h, engine_now(engine), &delta, NULL), AFSM_OK); /* CONNECTING -> ACTIVE */
    assert_int_equal(woken, 1);
    virtual_clock_set(&vclock, 1002 * SEC);
    assert_int_equal(afsm_engine_advance(engine, 1002 * SEC, NULL), AFSM_OK);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_OK);
    assert_int_equal(info.state, AFSM_STATE_IDLE);
    assert_int_equal(afsm_handle_packet(h, engine_now(engine), &delta, NULL), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_OK);
    assert_int_equal(info.state, AFSM_STATE_ACTIVE);
    assert_int_equal(woken, 2);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).packets_received, 2);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Bad arguments: a specific error and nothing done. A stale reading is
 * taken (the deadline moves from it); one ahead of the clock is refused. */
static void test_packet_checks_its_arguments(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "args");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    afsm_stats delta = {.packets_sent = 1};
    uint64_t now = engine_now(engine);
    assert_int_equal(afsm_handle_packet(NULL, now, &delta, NULL), AFSM_ENULL);
    assert_int_equal(afsm_handle_packet(h, now, NULL, NULL), AFSM_ENULL);
    assert_int_equal(afsm_handle_packet(h, UINT64_C(1) << 63, &delta, NULL), AFSM_EINVAL);
    assert_non_null(strstr(afsm_error_detail(), "now_ns"));
    assert_int_equal(afsm_handle_packet(h, now + 1, &delta, NULL), AFSM_EINVAL);
    assert_non_null(strstr(afsm_error_detail(), "ahead of the engine clock"));
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_OK);
    assert_int_equal(info.state, AFSM_STATE_CONNECTING);
    assert_int_equal(info.last_active_at_ns, s.last_active_at_ns);

    /* 10 s later, a reading 4 s old: taken, deadline from that reading. */
    virtual_clock_set(&vclock, 1010 * SEC);
    uint64_t remaining = 0;
    assert_int_equal(afsm_handle_packet(h, 1006 * SEC, &delta, &remaining), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_OK);
    assert_int_equal(info.last_active_at_ns - s.last_active_at_ns, 6 * (int64_t)SEC);
    assert_int_equal(remaining, info.timeout_ms);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).packets_sent, 1);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* After delete and expiry the handle stays safe: ENOTFOUND / EEXPIRED, and
 * release (with its last fold) is fine; counts deferred before expiry were
 * in the session when the advance expired it. */
static void test_packet_after_delete_and_expiry(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info a = create_session(engine, "gone-a");
    afsm_session_info b = create_session(engine, "gone-b");
    afsm_handle *ha = NULL, *hb = NULL;
    assert_int_equal(afsm_handle_pin(engine, &a.session_id, &ha), AFSM_OK);
    assert_int_equal(afsm_handle_pin(engine, &b.session_id, &hb), AFSM_OK);
    afsm_stats delta = {.packets_sent = 1};
    uint64_t now = engine_now(engine);
    assert_int_equal(afsm_handle_packet(ha, now, &delta, NULL), AFSM_OK);
    assert_int_equal(afsm_handle_packet(hb, now, &delta, NULL), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &a.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(afsm_handle_packet(ha, now, &delta, NULL), AFSM_ENOTFOUND);

    uint64_t later = now + (uint64_t)b.timeout_ms * MS + SEC;
    virtual_clock_set(&vclock, later);
    assert_int_equal(afsm_handle_packet(hb, later, &delta, NULL), AFSM_EEXPIRED);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, later, &expired), AFSM_OK);
    assert_int_equal(expired, 1);
    /* Reaped: gone, as afsm_handle_heartbeat reports it. */
    assert_int_equal(afsm_handle_packet(hb, later, &delta, NULL), AFSM_ENOTFOUND);
    assert_int_equal(afsm_handle_heartbeat(hb, NULL), AFSM_ENOTFOUND);
    assert_int_equal(afsm_handle_release(ha), AFSM_OK);
    assert_int_equal(afsm_handle_release(hb), AFSM_OK);
    uint64_t pinned = 1;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Deltas of 2^32 and more are added at once (not deferred) and saturate
 * at 2^64-1 like afsm_session_add_stats; a deferred count after saturation
 * leaves the counter saturated. */
static void test_packet_large_deltas_saturate(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "big");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    uint64_t now = engine_now(engine);
    afsm_stats big = {.bytes_sent = UINT64_C(1) << 63};
    assert_int_equal(afsm_handle_packet(h, now, &big, NULL), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_sent, UINT64_C(1) << 63);
    assert_int_equal(afsm_handle_packet(h, now, &big, NULL), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_sent, UINT64_MAX);
    afsm_stats small = {.bytes_sent = 7};
    assert_int_equal(afsm_handle_packet(h, now, &small, NULL), AFSM_OK);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_sent, UINT64_MAX);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* White box: a running total about to reach 2^61 (the bound that keeps a
 * fold's difference exact) sends the add straight to the session, and the
 * fold at release moves nothing twice. Setting the totals as a fold would
 * have left them stands in for 2 EiB of packets. */
static void test_packet_total_bound(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "bound");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    uint64_t now = engine_now(engine);
    afsm_stats one = {.packets_received = 1};
    assert_int_equal(afsm_handle_packet(h, now, &one, NULL), AFSM_OK); /* claims the handle */
    mem_handle *mh = (mem_handle *)h;
    const uint64_t near = (UINT64_C(1) << 61) - 10;
    atomic_store(&mh->added[1], near);
    atomic_store(&mh->folded[1], near);
    afsm_stats twenty = {.packets_received = 20};
    assert_int_equal(afsm_handle_packet(h, now, &twenty, NULL), AFSM_OK);
    /* At once, without an advance: 20, plus nothing of the 1 (it is in the
     * handle, and its fold was overwritten above). */
    assert_int_equal(get_stats(engine, &s.session_id).packets_received, 20);
    assert_int_equal(atomic_load(&mh->added[1]), near);
    afsm_stats five = {.packets_received = 5};
    assert_int_equal(afsm_handle_packet(h, now, &five, NULL), AFSM_OK); /* still below: deferred */
    assert_int_equal(get_stats(engine, &s.session_id).packets_received, 20);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).packets_received, 25);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A handle that cannot be listed for the folds (no memory at its first
 * packet) still works: nobody defers through it, its packets add at once,
 * and release has nothing to move. */
static void test_packet_unlisted_handle_adds_at_once(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "nomem");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    uint64_t now = engine_now(engine);
    afsm_stats one = {.packets_sent = 1, .bytes_sent = 10};
    alloc_fail_after(0); /* the deferring array's first allocation fails */
    afsm_status st = afsm_handle_packet(h, now, &one, NULL);
    alloc_fail_reset();
    assert_int_equal(st, AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_sent, 10);
    assert_int_equal(afsm_handle_packet(h, now, &one, NULL), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_sent, 20);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_sent, 20);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Only the owner defers: another thread's packet through the same handle
 * is in the session at once (so two threads never share the owner's plain
 * stores). */
typedef struct other_ctx {
    afsm_handle *h;
    afsm_engine *engine;
    afsm_status status;
} other_ctx;

static void *other_thread_packet(void *p)
{
    other_ctx *o = p;
    afsm_stats d = {.bytes_received = 7};
    o->status = afsm_handle_packet(o->h, engine_now(o->engine), &d, NULL);
    return NULL;
}

static void test_packet_only_owner_defers(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "owner");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    afsm_stats mine = {.bytes_received = 100};
    assert_int_equal(afsm_handle_packet(h, engine_now(engine), &mine, NULL), AFSM_OK); /* this thread owns h */
    other_ctx o = {.h = h, .engine = engine, .status = AFSM_ENOMEM};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread_packet, &o), 0);
    pthread_join(t, NULL);
    assert_int_equal(o.status, AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_received, 7); /* the owner's 100 still deferred */
    assert_int_equal(afsm_engine_advance(engine, engine_now(engine), NULL), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_received, 107);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_received, 107);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Threads at once: two share one handle (one owns it, the other adds
 * directly), one has its own handle on the same session, one adds by id,
 * and one advances (folding) all the while. Every count lands exactly. */
#define PACKET_THREADS 4
#define PACKET_ROUNDS  50000

typedef struct packet_ctx {
    afsm_engine *engine;
    afsm_uuid id;
    afsm_handle *shared;
    afsm_handle *own;
    _Atomic int workers_left;
    _Atomic long started;
    _Atomic int failed;
} packet_ctx;

typedef struct packet_arg {
    packet_ctx *c;
    int kind; /* 0, 1: the shared handle; 2: its own handle; 3: by id */
} packet_arg;

static void *packet_worker(void *p)
{
    packet_arg *a = p;
    packet_ctx *c = a->c;
    afsm_stats delta = {
        .packets_sent = 1, .packets_received = 1, .bytes_sent = 3, .bytes_received = 5, .retransmissions = 1};
    /* All at once, so that the two on the shared handle overlap. */
    atomic_fetch_add(&c->started, 1);
    if (!spin_until(&c->started, PACKET_THREADS, 20))
        atomic_store(&c->failed, 1);
    for (int i = 0; i < PACKET_ROUNDS; i++) {
        afsm_status st;
        if (a->kind == 3)
            st = afsm_session_add_stats(c->engine, &c->id, &delta);
        else
            st = afsm_handle_packet(a->kind == 2 ? c->own : c->shared, engine_now(c->engine), &delta, NULL);
        if (st != AFSM_OK)
            atomic_store(&c->failed, 1);
    }
    atomic_fetch_sub(&c->workers_left, 1);
    return NULL;
}

static void *packet_advancer(void *p)
{
    packet_ctx *c = p;
    while (atomic_load(&c->workers_left) > 0) {
        if (afsm_engine_advance(c->engine, engine_now(c->engine), NULL) != AFSM_OK)
            atomic_store(&c->failed, 1);
    }
    return NULL;
}

static void test_packet_threads_exact(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    packet_ctx c = {.engine = engine};
    c.id = create_session(engine, "threads").session_id;
    assert_int_equal(afsm_handle_pin(engine, &c.id, &c.shared), AFSM_OK);
    assert_int_equal(afsm_handle_pin(engine, &c.id, &c.own), AFSM_OK);
    atomic_store(&c.workers_left, PACKET_THREADS);
    pthread_t t[PACKET_THREADS + 1];
    packet_arg args[PACKET_THREADS];
    for (int i = 0; i < PACKET_THREADS; i++) {
        args[i] = (packet_arg){&c, i};
        assert_int_equal(pthread_create(&t[i], NULL, packet_worker, &args[i]), 0);
    }
    assert_int_equal(pthread_create(&t[PACKET_THREADS], NULL, packet_advancer, &c), 0);
    for (int i = 0; i <= PACKET_THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&c.failed), 0);
    /* The advancer may have stopped before the last packets: they are in
     * the session after one more advance, or at release. */
    assert_int_equal(afsm_engine_advance(engine, engine_now(engine), NULL), AFSM_OK);
    const uint64_t n = (uint64_t)PACKET_THREADS * PACKET_ROUNDS;
    afsm_stats got = get_stats(engine, &c.id);
    assert_int_equal(got.packets_sent, n);
    assert_int_equal(got.packets_received, n);
    assert_int_equal(got.bytes_sent, 3 * n);
    assert_int_equal(got.bytes_received, 5 * n);
    assert_int_equal(got.retransmissions, n);
    assert_int_equal(afsm_handle_release(c.shared), AFSM_OK);
    assert_int_equal(afsm_handle_release(c.own), AFSM_OK);
    got = get_stats(engine, &c.id);
    assert_int_equal(got.packets_sent, n);
    assert_int_equal(got.bytes_received, 5 * n);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* The lost wake-up (test_regressions.c, test_idle_never_loses_wakeup)
 * through afsm_handle_packet: every session went quiet past its idle
 * deadline; one thread sends a packet through each handle, at a reading
 * taken after the clock moved, while the reaper decides "idle". The
 * packet's heartbeat and the reaper's go-idle pair (seq_cst), so every
 * session must end ACTIVE. */
#define WAKE_SESSIONS 2000
#define WAKE_STOP     (1L << 40)

typedef struct wake_ctx {
    afsm_engine *engine;
    afsm_handle *handles[WAKE_SESSIONS];
    _Atomic long round;
    _Atomic long done;
    _Atomic int failed;
} wake_ctx;

static void *wake_sender(void *p)
{
    wake_ctx *c = p;
    afsm_stats delta = {.packets_received = 1, .bytes_received = 64};
    for (long k = 1;; k++) {
        if (!spin_until(&c->round, k, 20)) {
            atomic_store(&c->failed, 1);
            return NULL;
        }
        if (atomic_load(&c->round) == WAKE_STOP)
            return NULL;
        uint64_t now = engine_now(c->engine);
        for (int i = WAKE_SESSIONS - 1; i >= 0; i--) {
            if (afsm_handle_packet(c->handles[i], now, &delta, NULL) != AFSM_OK)
                atomic_store(&c->failed, 1);
        }
        atomic_store_explicit(&c->done, k, memory_order_release);
    }
}

static void test_packet_never_loses_wakeup(void **state)
{
    (void)state;
    afsm_config cfg;
    virtual_config(&vclock, &cfg);
    cfg.default_timeout_ms = 3600 * 1000;
    cfg.idle_timeout_ms = 1000;
    cfg.shard_count = 4;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    wake_ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->engine = engine;
    uint64_t now = 1000 * SEC;
    afsm_stats none = {0};
    char user[32];
    for (int i = 0; i < WAKE_SESSIONS; i++) {
        snprintf(user, sizeof(user), "wake-%d", i % 97);
        afsm_session_info s = create_session(engine, user);
        assert_int_equal(afsm_handle_pin(engine, &s.session_id, &c->handles[i]), AFSM_OK);
        assert_int_equal(afsm_handle_packet(c->handles[i], now, &none, NULL), AFSM_OK); /* -> ACTIVE */
    }
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wake_sender, c), 0);
    long lost = 0, rounds = 0;
    uint64_t deadline = real_ns() + 4 * 1000000000ull;
    for (long k = 1; k <= 200 && real_ns() < deadline && lost == 0 && !atomic_load(&c->failed); k++) {
        now += 1500 * MS; /* past the idle deadline, well before expiry */
        virtual_clock_set(&vclock, now);
        atomic_store_explicit(&c->round, k, memory_order_release);
        assert_int_equal(afsm_engine_advance(engine, now, NULL), AFSM_OK);
        assert_true(spin_until(&c->done, k, 20));
        afsm_uuid id;
        for (int i = 0; i < WAKE_SESSIONS; i++) {
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            assert_int_equal(afsm_handle_session_id(c->handles[i], &id), AFSM_OK);
            assert_int_equal(afsm_session_get(engine, &id, &info), AFSM_OK);
            lost += info.state != AFSM_STATE_ACTIVE;
        }
        rounds = k;
    }
    atomic_store(&c->round, WAKE_STOP);
    pthread_join(t, NULL);
    print_message("rounds %ld, sessions left idle after a packet %ld\n", rounds, lost);
    assert_int_equal(atomic_load(&c->failed), 0);
    assert_int_equal(lost, 0);
    /* Every packet counted once: rounds x 64 bytes each, after release. */
    afsm_uuid id;
    assert_int_equal(afsm_handle_session_id(c->handles[0], &id), AFSM_OK);
    for (int i = 0; i < WAKE_SESSIONS; i++)
        assert_int_equal(afsm_handle_release(c->handles[i]), AFSM_OK);
    assert_int_equal(get_stats(engine, &id).bytes_received, 64 * (uint64_t)rounds);
    free(c);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packet_heartbeats_and_counts),
        cmocka_unit_test(test_packet_wakes_idle),
        cmocka_unit_test(test_packet_checks_its_arguments),
        cmocka_unit_test(test_packet_after_delete_and_expiry),
        cmocka_unit_test(test_packet_large_deltas_saturate),
        cmocka_unit_test(test_packet_total_bound),
        cmocka_unit_test(test_packet_unlisted_handle_adds_at_once),
        cmocka_unit_test(test_packet_only_owner_defers),
        cmocka_unit_test(test_packet_threads_exact),
        cmocka_unit_test(test_packet_never_loses_wakeup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
