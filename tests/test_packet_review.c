/*
 * test_packet_review.c: review 17's attacks on afsm_handle_packet
 * (core/mem/dataplane.c), the packet call whose owner thread defers its
 * counters in the handle until the next advance or release.
 *
 * Each test states what a user relies on and why the deferral could break
 * it: a close that reports the final counters, an expiry that readers have
 * already seen, an owner thread that exits while its record is recycled,
 * folds by the reaper thread racing packets and releases, callbacks that
 * release, delete or advance from inside a packet's event.
 *
 * Virtual time and a manual reaper unless a test says otherwise; threads
 * synchronise through atomics and joins only (no sleeps).
 */
#include "test_support.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "mem/mem_store.h"
#include "util/alloc.h"
#include "util/epoch.h"

static virtual_clock vclock;

static uint64_t engine_now(afsm_engine *engine)
{
    uint64_t now = 0;
    assert_int_equal(afsm_engine_now(engine, &now), AFSM_OK);
    return now;
}

static afsm_stats get_stats(afsm_engine *engine, const afsm_uuid *id)
{
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, id, &info), AFSM_OK);
    return info.stats;
}

/* A flow ends: the application closes its session with an update and
 * reads the final counters from the update's copy (the copy a billing or
 * accounting record is made from). With afsm_handle_add_stats they are all
 * there; afsm.h says afsm_handle_packet's deferred counters are "never
 * lost". Closing (linger 0) removes the session, so no later advance can
 * make them visible: the close's copy is the last chance. */
static void test_close_copy_has_deferred_counts(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "close-final");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    afsm_stats delta = {.packets_received = 1, .bytes_received = 100};
    uint64_t now = engine_now(engine);
    for (int i = 0; i < 3; i++)
        assert_int_equal(afsm_handle_packet(h, now, &delta, NULL), AFSM_OK);

    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_CLOSED;
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_update(engine, &s.session_id, &u, &out), AFSM_OK);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    /* Every packet that afsm_handle_packet accepted is in the final copy. */
    assert_int_equal(out.stats.packets_received, 3);
    assert_int_equal(out.stats.bytes_received, 300);
}

/* Expiry is final once readers see it (DESIGN.md: "a read of an expired
 * session reports it as expired even between ticks"); afsm_handle_heartbeat
 * past the deadline is AFSM_EEXPIRED. afsm_handle_packet takes a stale
 * reading (one per receive batch), and judges the deadline only against
 * that reading: a reading taken before the deadline, used after it, brings
 * back a session that afsm_session_get has already reported expired (and
 * that a caller may have acted on: dropped its flow, billed it). */
static void test_stale_reading_does_not_revive_expired(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "stale-revive");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    uint64_t created = engine_now(engine);
    uint64_t deadline = created + (uint64_t)s.timeout_ms * MS;
    uint64_t reading = deadline - 1 * MS; /* the batch's reading, just before the deadline */
    virtual_clock_set(&vclock, deadline + 1 * MS);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_get(engine, &s.session_id, &info), AFSM_EEXPIRED);
    assert_int_equal(afsm_handle_heartbeat(h, NULL), AFSM_EEXPIRED);

    afsm_stats delta = {.packets_received = 1};
    afsm_status st = afsm_handle_packet(h, reading, &delta, NULL);
    afsm_status after = afsm_session_get(engine, &s.session_id, &info);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    /* Seen expired, stays expired: the packet is refused as the heartbeat was. */
    assert_int_equal(after, AFSM_EEXPIRED);
    assert_int_equal(st, AFSM_EEXPIRED);
}

/* ---- guards (pass today) --------------------------------------------------- */

/* The owner is identified by its epoch record, and an exited thread's
 * record is recycled by the next thread that needs one: that thread then
 * owns the handle and continues the exited owner's running totals with
 * plain loads and stores. It must see the exited owner's last stores (the
 * record's hand-over orders them, epoch.c thread_exit), else it would
 * overwrite them (lost counts) or, after a fold, make added < folded (a
 * difference that wraps). Under TSan this is the hand-over's check. */
#define EXIT_ROUNDS 1000

typedef struct exit_ctx {
    afsm_handle *h;
    afsm_engine *engine;
    int owns; /* whether this thread's record is the handle's owner (after its packets) */
    afsm_status status;
} exit_ctx;

static void *exiting_sender(void *p)
{
    exit_ctx *c = p;
    afsm_stats d = {.packets_sent = 1, .bytes_sent = 10};
    c->status = AFSM_OK;
    for (int i = 0; i < EXIT_ROUNDS && c->status == AFSM_OK; i++)
        c->status = afsm_handle_packet(c->h, engine_now(c->engine), &d, NULL);
    c->owns = atomic_load(&((mem_handle *)c->h)->owner) == (void *)epoch_thread_record;
    return NULL;
}

static void test_guard_owner_exits_record_recycled(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "exit-owner");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    int inherited = 0;
    for (int t = 0; t < 8; t++) {
        exit_ctx c = {.h = h, .engine = engine};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, exiting_sender, &c), 0);
        pthread_join(th, NULL);
        assert_int_equal(c.status, AFSM_OK);
        inherited += t > 0 && c.owns;
        if (t == 3) /* a fold between owners: folded catches up with added */
            assert_int_equal(afsm_engine_advance(engine, engine_now(engine), NULL), AFSM_OK);
    }
    print_message("threads that inherited the owner's record: %d of 7\n", inherited);
    assert_int_equal(afsm_engine_advance(engine, engine_now(engine), NULL), AFSM_OK);
    afsm_stats got = get_stats(engine, &s.session_id);
    assert_int_equal(got.packets_sent, 8 * EXIT_ROUNDS);
    assert_int_equal(got.bytes_sent, 80 * EXIT_ROUNDS);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).packets_sent, 8 * EXIT_ROUNDS);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* The automatic reaper folds every millisecond while two threads send
 * packets through their own handles and a third pins, sends through and
 * releases handles of other sessions (claims growing the deferring
 * arrays, releases swap-removing from them, both racing the fold pass).
 * Real clock. Every count lands exactly; ASan/TSan watch the array. */
#define CHURN_SESSIONS 64
#define REAPER_ROUNDS  2048 /* a multiple of CHURN_SESSIONS */

typedef struct reaper_ctx {
    afsm_engine *engine;
    afsm_uuid ids[3][CHURN_SESSIONS];
    afsm_handle *handles[2][CHURN_SESSIONS];
    _Atomic long started;
    _Atomic int failed;
} reaper_ctx;

typedef struct reaper_arg {
    reaper_ctx *c;
    int kind; /* 0, 1: own handles; 2: pin / packet / release churn */
} reaper_arg;

static void *reaper_sender(void *p)
{
    reaper_arg *a = p;
    reaper_ctx *c = a->c;
    afsm_stats d = {.packets_received = 1, .bytes_received = 7, .retransmissions = 1};
    atomic_fetch_add(&c->started, 1);
    if (!spin_until(&c->started, 3, 20))
        atomic_store(&c->failed, 1);
    for (int r = 0; r < REAPER_ROUNDS; r++) {
        int i = r % CHURN_SESSIONS;
        uint64_t now = engine_now(c->engine);
        if (a->kind < 2) {
            if (afsm_handle_packet(c->handles[a->kind][i], now, &d, NULL) != AFSM_OK)
                atomic_store(&c->failed, 1);
            continue;
        }
        afsm_handle *h = NULL;
        if (afsm_handle_pin(c->engine, &c->ids[2][i], &h) != AFSM_OK || afsm_handle_packet(h, now, &d, NULL) != AFSM_OK)
            atomic_store(&c->failed, 1);
        afsm_handle_release(h);
    }
    return NULL;
}

static void test_guard_reaper_thread_folds_during_churn(void **state)
{
    (void)state;
    afsm_config cfg;
    assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    cfg.reaper = AFSM_REAPER_THREAD;
    cfg.cleanup_interval_ms = 1;
    cfg.shard_count = 2;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    reaper_ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->engine = engine;
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < CHURN_SESSIONS; i++) {
            c->ids[k][i] = create_session(engine, "reaper").session_id;
            if (k < 2)
                assert_int_equal(afsm_handle_pin(engine, &c->ids[k][i], &c->handles[k][i]), AFSM_OK);
        }
    }
    pthread_t t[3];
    reaper_arg args[3];
    for (int k = 0; k < 3; k++) {
        args[k] = (reaper_arg){c, k};
        assert_int_equal(pthread_create(&t[k], NULL, reaper_sender, &args[k]), 0);
    }
    for (int k = 0; k < 3; k++)
        pthread_join(t[k], NULL);
    assert_int_equal(atomic_load(&c->failed), 0);
    const uint64_t per = REAPER_ROUNDS / CHURN_SESSIONS;
    for (int i = 0; i < CHURN_SESSIONS; i++) /* the churn released: all in */
        assert_int_equal(get_stats(engine, &c->ids[2][i]).bytes_received, 7 * per);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < CHURN_SESSIONS; i++) {
            assert_int_equal(afsm_handle_release(c->handles[k][i]), AFSM_OK);
            afsm_stats got = get_stats(engine, &c->ids[k][i]);
            assert_int_equal(got.packets_received, per);
            assert_int_equal(got.retransmissions, per);
        }
    }
    free(c);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A packet's CONNECTING -> ACTIVE event, delivered on the packet's
 * thread before afsm_handle_packet returns; the callback releases the
 * handle, or deletes the session, or advances (a fold) and then releases.
 * The packet's counts were deferred before the event: release and the
 * advance move them; nothing reads the handle after the callback (ASan). */
typedef struct cb_ctx {
    afsm_engine *engine;
    afsm_handle *h;
    afsm_uuid id;
    int action; /* 0: release; 1: delete then release; 2: advance, check, release */
    uint64_t seen_in_callback;
    int fired;
} cb_ctx;

static void cb_on_event(void *ctx, const afsm_event *ev)
{
    cb_ctx *c = ctx;
    if (ev->type != AFSM_EVENT_STATE_CHANGED || ev->new_state != AFSM_STATE_ACTIVE || c->h == NULL)
        return;
    c->fired++;
    if (c->action == 1)
        (void)afsm_session_delete(c->engine, &c->id, NULL, 0);
    if (c->action == 2) {
        (void)afsm_engine_advance(c->engine, engine_now(c->engine), NULL);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        if (afsm_session_get(c->engine, &c->id, &info) == AFSM_OK)
            c->seen_in_callback = info.stats.bytes_sent;
    }
    afsm_handle *h = c->h;
    c->h = NULL;
    (void)afsm_handle_release(h);
}

static void test_guard_callback_releases_during_packet(void **state)
{
    (void)state;
    for (int action = 0; action < 3; action++) {
        cb_ctx c = {.action = action};
        afsm_config cfg = {.on_event = cb_on_event, .event_ctx = &c};
        afsm_engine *engine = open_virtual_engine(&vclock, &cfg);
        c.engine = engine;
        c.id = create_session(engine, "callback").session_id;
        assert_int_equal(afsm_handle_pin(engine, &c.id, &c.h), AFSM_OK);
        afsm_stats d = {.packets_sent = 1, .bytes_sent = 5};
        assert_int_equal(afsm_handle_packet(c.h, engine_now(engine), &d, NULL), AFSM_OK);
        assert_int_equal(c.fired, 1);
        assert_null(c.h);
        uint64_t pinned = 1;
        assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
        assert_int_equal(pinned, 0);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_session_get(engine, &c.id, &info);
        if (action == 1) {
            assert_int_equal(st, AFSM_ENOTFOUND);
        } else {
            assert_int_equal(st, AFSM_OK);
            assert_int_equal(info.stats.bytes_sent, 5);
            assert_int_equal(info.state, AFSM_STATE_ACTIVE);
        }
        if (action == 2)
            assert_int_equal(c.seen_in_callback, 5);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    }
}

/* Close with a handle whose counts are deferred: refused (EBUSY), nothing
 * lost; after release the counts are in and close succeeds. */
static void test_guard_close_with_deferred_handle(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "close-busy");
    afsm_handle *h = NULL;
    assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h), AFSM_OK);
    afsm_stats d = {.bytes_received = 9};
    assert_int_equal(afsm_handle_packet(h, engine_now(engine), &d, NULL), AFSM_OK);
    assert_int_equal(afsm_engine_close(engine), AFSM_EBUSY);
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(get_stats(engine, &s.session_id).bytes_received, 9);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Chaos under the sanitizers: two threads pin, send packets through and
 * release handles of sessions that a third thread keeps deleting and
 * re-creating, while they also send through long-lived handles of stable
 * sessions, and a fourth advances (folds) and reads the stable sessions'
 * counters, which must never go backwards. Folds into deleted records,
 * releases after delete, claims racing folds: ASan/TSan watch; the stable
 * sessions' counts must be exact at the end. */
#define CHAOS_STABLE   8
#define CHAOS_VOLATILE 8
#define CHAOS_ROUNDS   3000

typedef struct chaos_ctx {
    afsm_engine *engine;
    afsm_uuid stable[CHAOS_STABLE];
    afsm_handle *stable_handles[2][CHAOS_STABLE];
    pthread_mutex_t lock; /* guards volatile_ids */
    afsm_uuid volatile_ids[CHAOS_VOLATILE];
    _Atomic long started;
    _Atomic int senders_left;
    _Atomic int failed;
    _Atomic long sent[CHAOS_STABLE];
} chaos_ctx;

typedef struct chaos_arg {
    chaos_ctx *c;
    int kind; /* 0, 1: senders; 2: deleter; 3: advancer and reader */
} chaos_arg;

static void *chaos_thread(void *p)
{
    chaos_arg *a = p;
    chaos_ctx *c = a->c;
    afsm_stats d = {.packets_sent = 1, .bytes_sent = 3};
    atomic_fetch_add(&c->started, 1);
    if (!spin_until(&c->started, 4, 20))
        atomic_store(&c->failed, 1);
    if (a->kind == 3) {
        uint64_t last[CHAOS_STABLE] = {0};
        while (atomic_load(&c->senders_left) > 0) {
            if (afsm_engine_advance(c->engine, engine_now(c->engine), NULL) != AFSM_OK)
                atomic_store(&c->failed, 1);
            for (int i = 0; i < CHAOS_STABLE; i++) {
                afsm_session_info info = AFSM_SESSION_INFO_INIT;
                if (afsm_session_get(c->engine, &c->stable[i], &info) != AFSM_OK || info.stats.packets_sent < last[i])
                    atomic_store(&c->failed, 2);
                last[i] = info.stats.packets_sent;
            }
        }
        return NULL;
    }
    for (int r = 0; r < CHAOS_ROUNDS; r++) {
        int i = (r * 7 + a->kind) % CHAOS_VOLATILE;
        if (a->kind == 2) {
            pthread_mutex_lock(&c->lock);
            afsm_uuid id = c->volatile_ids[i];
            pthread_mutex_unlock(&c->lock);
            (void)afsm_session_delete(c->engine, &id, NULL, 0);
            afsm_uuid conn;
            afsm_create_options o = make_options("chaos", "10.1.1.1", &conn);
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            if (afsm_session_create(c->engine, &o, &info) != AFSM_OK)
                atomic_store(&c->failed, 3);
            pthread_mutex_lock(&c->lock);
            c->volatile_ids[i] = info.session_id;
            pthread_mutex_unlock(&c->lock);
            continue;
        }
        int k = r % CHAOS_STABLE;
        if (afsm_handle_packet(c->stable_handles[a->kind][k], engine_now(c->engine), &d, NULL) != AFSM_OK)
            atomic_store(&c->failed, 4);
        atomic_fetch_add(&c->sent[k], 1);
        pthread_mutex_lock(&c->lock);
        afsm_uuid id = c->volatile_ids[i];
        pthread_mutex_unlock(&c->lock);
        afsm_handle *h = NULL;
        if (afsm_handle_pin(c->engine, &id, &h) != AFSM_OK)
            continue; /* deleted meanwhile */
        for (int n = 0; n < 4; n++) {
            afsm_status st = afsm_handle_packet(h, engine_now(c->engine), &d, NULL);
            if (st != AFSM_OK && st != AFSM_ENOTFOUND)
                atomic_store(&c->failed, 5);
        }
        afsm_handle_release(h);
    }
    if (a->kind < 2)
        atomic_fetch_sub(&c->senders_left, 1);
    return NULL;
}

static void test_guard_chaos_deletes_pins_folds(void **state)
{
    (void)state;
    afsm_config cfg = {.shard_count = 2};
    afsm_engine *engine = open_virtual_engine(&vclock, &cfg);
    chaos_ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->engine = engine;
    pthread_mutex_init(&c->lock, NULL);
    for (int i = 0; i < CHAOS_STABLE; i++) {
        c->stable[i] = create_session(engine, "stable").session_id;
        for (int k = 0; k < 2; k++)
            assert_int_equal(afsm_handle_pin(engine, &c->stable[i], &c->stable_handles[k][i]), AFSM_OK);
    }
    for (int i = 0; i < CHAOS_VOLATILE; i++)
        c->volatile_ids[i] = create_session(engine, "chaos").session_id;
    atomic_store(&c->senders_left, 2);
    pthread_t t[4];
    chaos_arg args[4];
    for (int k = 0; k < 4; k++) {
        args[k] = (chaos_arg){c, k};
        assert_int_equal(pthread_create(&t[k], NULL, chaos_thread, &args[k]), 0);
    }
    for (int k = 0; k < 4; k++)
        pthread_join(t[k], NULL);
    assert_int_equal(atomic_load(&c->failed), 0);
    assert_int_equal(afsm_engine_advance(engine, engine_now(engine), NULL), AFSM_OK);
    for (int i = 0; i < CHAOS_STABLE; i++) {
        afsm_stats got = get_stats(engine, &c->stable[i]);
        assert_int_equal(got.packets_sent, (uint64_t)atomic_load(&c->sent[i]));
        assert_int_equal(got.bytes_sent, 3 * (uint64_t)atomic_load(&c->sent[i]));
        for (int k = 0; k < 2; k++)
            assert_int_equal(afsm_handle_release(c->stable_handles[k][i]), AFSM_OK);
    }
    uint64_t pinned = 1;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    pthread_mutex_destroy(&c->lock);
    free(c);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ENOMEM when a claim must grow a full deferring array (the 17th handle of
 * a shard): that handle adds at once, the 16 listed ones keep deferring and
 * folding, and the releases' swap-removals leave every count exact. */
static void test_guard_claim_grow_fails(void **state)
{
    (void)state;
    afsm_config cfg = {.shard_count = 1};
    afsm_engine *engine = open_virtual_engine(&vclock, &cfg);
    enum { N = 17 };
    afsm_uuid ids[N];
    afsm_handle *h[N];
    afsm_stats d = {.packets_received = 1, .bytes_received = 11};
    uint64_t now = engine_now(engine);
    for (int i = 0; i < N; i++) {
        ids[i] = create_session(engine, "grow").session_id;
        assert_int_equal(afsm_handle_pin(engine, &ids[i], &h[i]), AFSM_OK);
        if (i == N - 1)
            alloc_fail_after(0); /* the array (capacity 16) cannot grow */
        afsm_status st = afsm_handle_packet(h[i], now, &d, NULL);
        alloc_fail_reset();
        assert_int_equal(st, AFSM_OK);
    }
    assert_int_equal(get_stats(engine, &ids[N - 1]).bytes_received, 11); /* at once */
    assert_int_equal(get_stats(engine, &ids[0]).bytes_received, 0);      /* deferred */
    for (int i = 0; i < N; i++)
        assert_int_equal(afsm_handle_packet(h[i], now, &d, NULL), AFSM_OK);
    assert_int_equal(afsm_engine_advance(engine, now, NULL), AFSM_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(get_stats(engine, &ids[i]).bytes_received, 22);
    /* Release in an order that moves the array's last entry around. */
    for (int i = 0; i < N; i += 2)
        assert_int_equal(afsm_handle_packet(h[i], now, &d, NULL), AFSM_OK);
    for (int i = 0; i < N; i += 2)
        assert_int_equal(afsm_handle_release(h[i]), AFSM_OK);
    for (int i = 1; i < N; i += 2)
        assert_int_equal(afsm_handle_packet(h[i], now, &d, NULL), AFSM_OK);
    assert_int_equal(afsm_engine_advance(engine, now, NULL), AFSM_OK);
    for (int i = 1; i < N; i += 2)
        assert_int_equal(afsm_handle_release(h[i]), AFSM_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(get_stats(engine, &ids[i]).bytes_received, 33);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_copy_has_deferred_counts),
        cmocka_unit_test(test_stale_reading_does_not_revive_expired),
        cmocka_unit_test(test_guard_owner_exits_record_recycled),
        cmocka_unit_test(test_guard_reaper_thread_folds_during_churn),
        cmocka_unit_test(test_guard_callback_releases_during_packet),
        cmocka_unit_test(test_guard_close_with_deferred_handle),
        cmocka_unit_test(test_guard_chaos_deletes_pins_folds),
        cmocka_unit_test(test_guard_claim_grow_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
