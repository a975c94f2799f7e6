/*
 * test_review15exp.c: a reviewer's attacks on issue 15's grouped expiry
 * (f92aeff: an advance settles its due sessions in groups of up to 32 of
 * one home shard, under the union of their lock sets, events captured in
 * the group's epoch section and fired after it in item order).
 *
 * What a user relies on, checked here: every session ends with exactly one
 * EXPIRED or DELETED event, and nothing after it; a session that went idle
 * is reported IDLE before it is reported gone, also when a callback
 * advances the engine again; a callback may delete, heartbeat, update and
 * create sessions of its own group, and advance again; an advance whose
 * allocations fail settles the rest next time, each event once; close
 * waits for a pass in progress; counts, metrics, slab slots and table keys
 * (a user's entry leaves with its last session; removals find the stored
 * key, edb3f38) match the live sessions after a storm of every write
 * racing two advancing threads, on 1 to 4096 shards.
 *
 * Also the attacks on a34563d (a removal's event finds its session's
 * pending IDLE through an index in the batch; white-box ones in
 * test_idle_set.c): batches of hundreds of IDLEs whose sessions a
 * callback changes, with every hash colliding; every allocation of a pass
 * failing in turn; the reaper thread's IDLE batches against racing writers
 * and close.
 *
 * The event-order attacks (preludes, held groups, the random nested-callback
 * fuzz) are in test_event_order.c; the ledger both use is event_ledger.h.
 *
 * Threads wait on conditions with deadlines, never sleep. Internal headers
 * are included only to count slab slots and table keys, to find a
 * session's home shard, to collide hashes and to see the reaper's progress
 * (wheels_reached_ns).
 */
#include "event_ledger.h"

#include "util/alloc.h"

/* ---- 1. a callback acting on the other members of its group ------------- */

#define GROUP_SESSIONS 100 /* three full groups and a bit, one home shard */

typedef struct group_ctx {
    ledger ledger;
    afsm_engine *engine;
    virtual_clock *clock;
    afsm_uuid ids[GROUP_SESSIONS];
    int acted;
    size_t deletes_ok, deletes_gone, heartbeats_ok, updates_ok, creates_ok;
    int nested_advance; /* the callback advances the engine once, re-entrantly */
    uint64_t nested_to;
} group_ctx;

static void group_event(void *arg, const afsm_event *ev)
{
    group_ctx *c = arg;
    ledger_record(&c->ledger, ev);
    if (ev->type != AFSM_EVENT_EXPIRED || c->acted)
        return;
    c->acted = 1;
    /* The first expiry of the advance: act on every other member of the
     * batch, in this and later groups. */
    for (size_t i = 0; i < GROUP_SESSIONS; i++) {
        if (memcmp(&c->ids[i], &ev->session_id, sizeof(ev->session_id)) == 0)
            continue;
        afsm_status st;
        uint64_t remaining;
        switch (i % 4) {
        case 0:
            st = afsm_session_delete(c->engine, &c->ids[i], NULL, 0);
            THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND);
            if (st == AFSM_OK)
                c->deletes_ok++;
            else
                c->deletes_gone++;
            break;
        case 1:
            st = afsm_session_heartbeat(c->engine, &c->ids[i], &remaining);
            THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED);
            c->heartbeats_ok += st == AFSM_OK;
            break;
        case 2: {
            afsm_update u;
            afsm_update_init(&u, AFSM_UPDATE_VERSION);
            u.fields = AFSM_UPDATE_STATE;
            u.state = AFSM_STATE_CLOSED;
            st = afsm_session_update(c->engine, &c->ids[i], &u, NULL);
            THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED || st == AFSM_ETRANSITION);
            c->updates_ok += st == AFSM_OK;
            break;
        }
        default:
            st = create_for(c->engine, "created-in-callback", 60000, NULL);
            THREAD_CHECK(st == AFSM_OK);
            c->creates_ok++;
        }
    }
    if (c->nested_advance) {
        size_t n;
        THREAD_CHECK(afsm_engine_advance(c->engine, c->nested_to, &n) == AFSM_OK);
    }
}

static void test_callback_acts_on_its_own_group(void **state)
{
    (void)state;
    static group_ctx c;
    memset(&c, 0, sizeof(c));
    ledger_init(&c.ledger);
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 1; /* every session of one home shard: one batch, four groups */
    cfg.on_event = group_event;
    cfg.event_ctx = &c;
    afsm_engine *engine = open_engine(&clock, &cfg);
    c.engine = engine;
    c.clock = &clock;
    char user[32];
    for (size_t i = 0; i < GROUP_SESSIONS; i++) {
        snprintf(user, sizeof(user), "u%zu", i % 7);
        assert_int_equal(create_for(engine, user, 1000, &c.ids[i]), AFSM_OK);
    }
    uint64_t now = virtual_clock_read(&clock) + 1500 * MS;
    virtual_clock_set(&clock, now);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_true(c.acted);
    /* The ones the callback deleted first are not expired too. */
    assert_int_equal(expired + c.deletes_ok, GROUP_SESSIONS);
    assert_int_equal(c.heartbeats_ok, 0);
    assert_int_equal(c.updates_ok, 0);
    /* Both kinds were hit: members settled in the callback's own group
     * (already gone) and members of later groups (deleted first). */
    assert_true(c.deletes_gone > 0);
    assert_true(c.deletes_ok > 0);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, c.creates_ok);
    /* The callback's own sessions end too, one event each. */
    now += 120 * SEC;
    virtual_clock_set(&clock, now);
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, 0);
    assert_int_equal(engine_slots_in_use(engine), 0);
    assert_int_equal(table_keys(engine), 0);
    ledger_check_all_ended(&c.ledger);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    ledger_free(&c.ledger);
}

/* ---- 2. IDLE before EXPIRED when a callback advances again -------------- */

#define IDLE_SESSIONS 80

typedef struct nested_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid trigger;
    uint64_t nested_to;
    int advanced;
} nested_ctx;

static void nested_event(void *arg, const afsm_event *ev)
{
    nested_ctx *c = arg;
    ledger_record(&c->ledger, ev);
    if (ev->type == AFSM_EVENT_EXPIRED && !c->advanced &&
        memcmp(&ev->session_id, &c->trigger, sizeof(c->trigger)) == 0) {
        c->advanced = 1;
        size_t n;
        THREAD_CHECK(afsm_engine_advance(c->engine, c->nested_to, &n) == AFSM_OK);
    }
}

/* The outer advance turns sessions IDLE and expires the trigger; the
 * trigger's callback advances past the idle sessions' expiry. Whichever
 * advance removes them, each must be reported IDLE first: a user counting
 * idle sessions from the events would otherwise count one that is gone. */
static void test_nested_advance_keeps_idle_before_expired(void **state)
{
    (void)state;
    static nested_ctx c;
    memset(&c, 0, sizeof(c));
    ledger_init(&c.ledger);
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 1;
    cfg.idle_timeout_ms = 200;
    cfg.on_event = nested_event;
    cfg.event_ctx = &c;
    afsm_engine *engine = open_engine(&clock, &cfg);
    c.engine = engine;
    afsm_uuid ids[IDLE_SESSIONS];
    uint64_t remaining;
    /* The trigger expires a tick before the others go idle: its event is
     * delivered first, while theirs wait in the same pass. */
    assert_int_equal(create_for(engine, "trigger", 100, &c.trigger), AFSM_OK);
    for (size_t i = 0; i < IDLE_SESSIONS; i++) {
        assert_int_equal(create_for(engine, "idler", 2000, &ids[i]), AFSM_OK);
        assert_int_equal(afsm_session_heartbeat(engine, &ids[i], &remaining), AFSM_OK); /* ACTIVE */
    }
    uint64_t now = virtual_clock_read(&clock) + 500 * MS;
    c.nested_to = now + 5 * SEC;
    virtual_clock_set(&clock, c.nested_to);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_true(c.advanced);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, 0);
    ledger_check_all_ended(&c.ledger);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    ledger_free(&c.ledger);
}

/* ---- 2b. idle and expired in one advance --------------------------------- */

#define JUMP_SESSIONS 70

typedef struct jump_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid ids[JUMP_SESSIONS];
    size_t count;
    int acted;
} jump_ctx;

static void jump_event(void *arg, const afsm_event *ev)
{
    jump_ctx *c = arg;
    ledger_record(&c->ledger, ev);
    /* The first IDLE heartbeats every third session (a wake between its
     * IDLE and its EXPIRED items: the expiry was decided, so it fails). */
    if (ev->type == AFSM_EVENT_STATE_CHANGED && ev->new_state == AFSM_STATE_IDLE && !c->acted) {
        c->acted = 1;
        for (size_t i = 0; i < c->count; i += 3) {
            uint64_t remaining;
            afsm_status st = afsm_session_heartbeat(c->engine, &c->ids[i], &remaining);
            THREAD_CHECK(st == AFSM_EEXPIRED || st == AFSM_ENOTFOUND);
        }
    }
}

/* One advance jumps past both the idle deadline and the expiry of every
 * session: each is reported IDLE, then EXPIRED in state IDLE, once. */
static void run_jump(size_t sessions)
{
    static jump_ctx c;
    memset(&c, 0, sizeof(c));
    ledger_init(&c.ledger);
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 1;
    cfg.idle_timeout_ms = 200;
    cfg.on_event = jump_event;
    cfg.event_ctx = &c;
    afsm_engine *engine = open_engine(&clock, &cfg);
    c.engine = engine;
    uint64_t remaining;
    c.count = sessions;
    for (size_t i = 0; i < sessions; i++) {
        assert_int_equal(create_for(engine, "jumper", 1000, &c.ids[i]), AFSM_OK);
        assert_int_equal(afsm_session_heartbeat(engine, &c.ids[i], &remaining), AFSM_OK);
    }
    uint64_t now = virtual_clock_read(&clock) + 10 * SEC;
    virtual_clock_set(&clock, now);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_int_equal(expired, sessions);
    assert_true(c.acted);
    ledger_check_all_ended(&c.ledger);
    for (size_t i = 0; i < sessions; i++) {
        ledger_line *line = ledger_line_of(&c.ledger, &c.ids[i]);
        assert_int_equal(line->idle_events, 1);
        assert_int_equal(line->terminal_type, AFSM_EVENT_EXPIRED);
        assert_true(line->ended_idle);
    }
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    ledger_free(&c.ledger);
}

/* Ten: each session's IDLE and EXPIRED items in one group. Seventy: in
 * different groups. */
static void test_idle_and_expired_in_one_advance(void **state)
{
    (void)state;
    run_jump(10);
    run_jump(JUMP_SESSIONS);
}

/* ---- 2c. a batch of hundreds of IDLEs, its sessions changed from a callback */

/* a34563d finds a session's pending IDLE through an index by session id,
 * grown (and re-filled) past 256 IDLEs and reused from shard to shard.
 * Here each shard's batch holds ~300 IDLEs; the first IDLE delivered of a
 * shard deletes, closes or wakes most of the other sessions of its shard,
 * whose IDLEs wait later in the same batch; the last shard's then advances
 * again (nested) past everyone's expiry. Each of those changes must be reported after the
 * session's IDLE, on this thread: an IDLE the index lost (not re-inserted
 * on growth, a probe that stops at the end of the index) comes after the
 * DELETED, or a wake's IDLE -> ACTIVE comes before any IDLE. Also with
 * every hash colliding at the index's last slot: one probe sequence for
 * all, wrapping at once. */

#define WIDE_SESSIONS 600 /* two shards of ~300: the index grows 512 -> 1024 */

typedef struct wide_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid ids[WIDE_SESSIONS];
    int acted[2];
    uint64_t nested_to;
    virtual_clock *clock;
    size_t deletes, closes, wakes;
    long before_idle; /* a change reported in IDLE before the session's IDLE */
} wide_ctx;

static _Thread_local int wide_depth; /* advances nested in wide_event */

static void wide_event(void *arg, const afsm_event *ev)
{
    wide_ctx *c = arg;
    pthread_mutex_lock(&c->ledger.lock);
    ledger_line *line = ledger_line_of(&c->ledger, &ev->session_id);
    bool from_idle = ev->type == AFSM_EVENT_STATE_CHANGED
                         ? ev->old_state == AFSM_STATE_IDLE
                         : ev->type != AFSM_EVENT_CREATED && ev->new_state == AFSM_STATE_IDLE;
    if (from_idle && line->idle_events == 0)
        c->before_idle++;
    pthread_mutex_unlock(&c->ledger.lock);
    ledger_record(&c->ledger, ev);
    if (ev->type != AFSM_EVENT_STATE_CHANGED || ev->new_state != AFSM_STATE_IDLE)
        return;
    mem_store *ms = (mem_store *)c->engine->st;
    unsigned home = mem_shard_of_id(ms, &ev->session_id);
    if (wide_depth > 0 || c->acted[home])
        return;
    c->acted[home] = 1;
    for (size_t i = 0; i < WIDE_SESSIONS; i++) {
        if (mem_shard_of_id(ms, &c->ids[i]) != home || memcmp(&c->ids[i], &ev->session_id, 16) == 0)
            continue;
        uint64_t remaining;
        afsm_status st;
        switch (i % 4) {
        case 0:
            st = afsm_session_delete(c->engine, &c->ids[i], NULL, 0);
            THREAD_CHECK(st == AFSM_OK);
            c->deletes++;
            break;
        case 1: {
            afsm_update u;
            afsm_update_init(&u, AFSM_UPDATE_VERSION);
            u.fields = AFSM_UPDATE_STATE;
            u.state = AFSM_STATE_CLOSED;
            st = afsm_session_update(c->engine, &c->ids[i], &u, NULL);
            THREAD_CHECK(st == AFSM_OK);
            c->closes++;
            break;
        }
        case 2:
            st = afsm_session_heartbeat(c->engine, &c->ids[i], &remaining);
            THREAD_CHECK(st == AFSM_OK);
            c->wakes++;
            break;
        default:
            break; /* left to the nested advance */
        }
    }
    /* From the pass's last shard: the first shard's woken sessions go
     * IDLE again in the nested batch, the last shard's untouched ones
     * expire there with their IDLE still pending in the outer one. */
    if (home == ms->shard_mask) {
        size_t n;
        wide_depth++;
        /* An advance takes a reading of the engine clock, never a later
         * time: the clock moves there now, after every earlier wake. */
        virtual_clock_set(c->clock, c->nested_to);
        THREAD_CHECK(afsm_engine_advance(c->engine, c->nested_to, &n) == AFSM_OK);
        wide_depth--;
    }
}

static void run_wide(table_hash_fn *hash)
{
    static wide_ctx c;
    memset(&c, 0, sizeof(c));
    ledger_init(&c.ledger);
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 2;
    cfg.idle_timeout_ms = 200;
    cfg.on_event = wide_event;
    cfg.event_ctx = &c;
    afsm_engine *engine = open_engine(&clock, &cfg);
    c.engine = engine;
    c.clock = &clock;
    table_hash_override = hash;
    uint64_t remaining;
    for (size_t i = 0; i < WIDE_SESSIONS; i++) {
        assert_int_equal(create_for(engine, i % 2 ? "wide-a" : "wide-b", 60000, &c.ids[i]), AFSM_OK);
        assert_int_equal(afsm_session_heartbeat(engine, &c.ids[i], &remaining), AFSM_OK); /* ACTIVE */
    }
    /* The clock stays at the outer advance's time until the nested advance
     * moves it: a wake's new idle deadline is before the nested advance's,
     * which turns it IDLE again and then expires it. */
    uint64_t now = virtual_clock_read(&clock) + 1 * SEC;
    virtual_clock_set(&clock, now);
    c.nested_to = now + 120 * SEC;
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_true(c.acted[0] && c.acted[1]);
    assert_true(c.deletes > 100 && c.closes > 100 && c.wakes > 100);
    /* Whatever is left (closed ones lingering) ends too. */
    virtual_clock_set(&clock, now + 3600 * SEC);
    assert_int_equal(afsm_engine_advance(engine, now + 3600 * SEC, &expired), AFSM_OK);
    table_hash_override = NULL;
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, 0);
    if (c.before_idle != 0)
        fail_msg("%ld change(s) of an IDLE session reported before its IDLE event", c.before_idle);
    for (size_t i = 0; i < WIDE_SESSIONS; i++) {
        ledger_line *line = ledger_line_of(&c.ledger, &c.ids[i]);
        if (line->idle_events < 1 || line->idle_events > 2)
            fail_msg("session %zu: %d IDLE events", i, line->idle_events);
    }
    ledger_check_all_ended(&c.ledger);
    assert_int_equal(engine_slots_in_use(engine), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    ledger_free(&c.ledger);
}

static unsigned long last_slot_hash(const void *key, size_t len, unsigned long seed)
{
    (void)key, (void)len, (void)seed;
    return ~0UL;
}

static void test_wide_batch_changed_from_callback(void **state)
{
    (void)state;
    run_wide(NULL);
    run_wide(last_slot_hash);
}

/* ---- 3. allocation failures in the pass ---------------------------------- */

/* afsm_engine_advance to now with every allocation from the n-th on
 * failing, observer(ctx) (may be NULL) told of each failure: AFSM_OK or
 * AFSM_ENOMEM, any other status fails the test. The sweeps below call it
 * for n = 0, 1, ... until an advance succeeds. */
static afsm_status advance_failing_from(afsm_engine *engine, uint64_t now, long n, void (*observer)(void *ctx),
                                        void *ctx, size_t *expired)
{
    alloc_fail_observe(observer, ctx);
    alloc_fail_after(n);
    afsm_status st = afsm_engine_advance(engine, now, expired);
    alloc_fail_reset();
    alloc_fail_observe(NULL, NULL);
    if (st != AFSM_OK && st != AFSM_ENOMEM)
        fail_msg("allocation %ld failing: %s", n, afsm_status_name(st));
    return st;
}

#define NOMEM_SESSIONS 600 /* past the work list's first 256 items */

typedef struct nomem_ctx {
    ledger ledger;
} nomem_ctx;

static void nomem_event(void *arg, const afsm_event *ev)
{
    ledger_record(&((nomem_ctx *)arg)->ledger, ev);
}

/* Whichever allocation of an advance fails, it reports AFSM_ENOMEM, what
 * it settled stays settled and reported once, and the next advance does
 * the rest: each session expires once, each idle one is reported IDLE
 * once, the counts match. On two shards (~150 IDLEs each: the IDLE index's
 * first allocation failing) and on one (300 IDLEs: the index failing
 * after the IDLE events grew past 256, and its growth re-inserting). */
static void run_advance_allocation_failures(unsigned shards)
{
    int failed_some = 0, succeeded = 0;
    for (long n = 0; !succeeded; n++) {
        /* Up to the first n at which nothing fails: every allocation of
         * the pass (the IDLE index's among them) has failed once. */
        if (n > 64)
            fail_msg("an advance still fails with %ld allocations allowed", n);
        static nomem_ctx c;
        memset(&c, 0, sizeof(c));
        ledger_init(&c.ledger);
        virtual_clock clock;
        afsm_config cfg;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.shard_count = shards;
        cfg.idle_timeout_ms = 200;
        cfg.on_event = nomem_event;
        cfg.event_ctx = &c;
        afsm_engine *engine = open_engine(&clock, &cfg);
        afsm_uuid ids[NOMEM_SESSIONS];
        uint64_t remaining;
        for (size_t i = 0; i < NOMEM_SESSIONS; i++) {
            /* Odd ones live long and go idle; even ones expire. */
            assert_int_equal(create_for(engine, i % 3 ? "a" : "b", i % 2 ? 60000 : 300, &ids[i]), AFSM_OK);
            if (i % 2)
                assert_int_equal(afsm_session_heartbeat(engine, &ids[i], &remaining), AFSM_OK);
        }
        uint64_t now = virtual_clock_read(&clock) + 1 * SEC;
        virtual_clock_set(&clock, now);
        size_t expired = 0, more = 0;
        afsm_status st = advance_failing_from(engine, now, n, NULL, NULL, &expired);
        failed_some |= st == AFSM_ENOMEM;
        succeeded = st == AFSM_OK;
        assert_int_equal(afsm_engine_advance(engine, now, &more), AFSM_OK);
        assert_int_equal(expired + more, NOMEM_SESSIONS / 2);
        afsm_counts counts;
        assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
        assert_int_equal(counts.total, NOMEM_SESSIONS / 2);
        assert_int_equal(counts.by_state[AFSM_STATE_IDLE], NOMEM_SESSIONS / 2);
        pthread_mutex_lock(&c.ledger.lock);
        for (size_t i = 0; i < NOMEM_SESSIONS; i++) {
            ledger_line *line = ledger_line_of(&c.ledger, &ids[i]);
            if (line->terminal != (i % 2 ? 0 : 1) || line->idle_events != (i % 2 ? 1 : 0))
                fail_msg("allocation %ld failing: session %zu has %d EXPIRED and %d IDLE events", n, i, line->terminal,
                         line->idle_events);
        }
        pthread_mutex_unlock(&c.ledger.lock);
        if (c.ledger.violations != 0)
            fail_msg("allocation %ld failing: %s", n, c.ledger.first);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
        ledger_free(&c.ledger);
    }
    assert_true(failed_some);
}

static void test_advance_allocation_failures(void **state)
{
    (void)state;
    run_advance_allocation_failures(2);
    run_advance_allocation_failures(1);
}

/* ---- 3b. allocation failures in an advance nested in a callback ---------- */

/* The outer advance turns ~300 sessions IDLE (one shard: past the IDLE
 * set's first 256) and expires a trigger first; the trigger's callback
 * advances again past their expiry with the nested advance's n-th
 * allocation failing. The nested batch's EXPIREDs take the outer batch's
 * pending IDLEs as preludes; whatever it could not settle, a later advance
 * does. Each session: one IDLE, then one EXPIRED in IDLE, nothing after. */
#define NESTED_NOMEM_SESSIONS 300

typedef struct nested_nomem_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid trigger;
    uint64_t nested_to;
    long fail_at;
    afsm_status nested;
    int advanced;
} nested_nomem_ctx;

static void nested_nomem_event(void *arg, const afsm_event *ev)
{
    nested_nomem_ctx *c = arg;
    ledger_record(&c->ledger, ev);
    if (ev->type == AFSM_EVENT_EXPIRED && !c->advanced && memcmp(&ev->session_id, &c->trigger, 16) == 0) {
        c->advanced = 1;
        size_t n;
        alloc_fail_after(c->fail_at);
        c->nested = afsm_engine_advance(c->engine, c->nested_to, &n);
        alloc_fail_reset();
    }
}

static void run_nested_allocation_failures(unsigned shards)
{
    int failed_some = 0, succeeded = 0;
    for (long n = 0; !succeeded; n++) {
        if (n > 64)
            fail_msg("a nested advance still fails with %ld allocations allowed", n);
        static nested_nomem_ctx c;
        memset(&c, 0, sizeof(c));
        ledger_init(&c.ledger);
        c.fail_at = n;
        virtual_clock clock;
        afsm_config cfg;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.shard_count = shards;
        cfg.idle_timeout_ms = 200;
        cfg.on_event = nested_nomem_event;
        cfg.event_ctx = &c;
        afsm_engine *engine = open_engine(&clock, &cfg);
        c.engine = engine;
        afsm_uuid ids[NESTED_NOMEM_SESSIONS];
        uint64_t remaining;
        assert_int_equal(create_for(engine, "trigger", 100, &c.trigger), AFSM_OK);
        for (size_t i = 0; i < NESTED_NOMEM_SESSIONS; i++) {
            assert_int_equal(create_for(engine, i % 2 ? "a" : "b", 2000, &ids[i]), AFSM_OK);
            assert_int_equal(afsm_session_heartbeat(engine, &ids[i], &remaining), AFSM_OK); /* ACTIVE */
        }
        uint64_t now = virtual_clock_read(&clock) + 500 * MS;
        c.nested_to = now + 5 * SEC;
        virtual_clock_set(&clock, c.nested_to);
        size_t expired = 0, more = 0;
        assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
        assert_true(c.advanced);
        if (c.nested != AFSM_OK && c.nested != AFSM_ENOMEM)
            fail_msg("nested allocation %ld failing: %s", n, afsm_status_name(c.nested));
        failed_some |= c.nested == AFSM_ENOMEM;
        succeeded = c.nested == AFSM_OK;
        assert_int_equal(afsm_engine_advance(engine, c.nested_to, &more), AFSM_OK);
        afsm_counts counts;
        assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
        assert_int_equal(counts.total, 0);
        if (c.ledger.violations != 0)
            fail_msg("nested allocation %ld failing: %s", n, c.ledger.first);
        for (size_t i = 0; i < NESTED_NOMEM_SESSIONS; i++) {
            ledger_line *line = ledger_line_of(&c.ledger, &ids[i]);
            if (line->idle_events != 1 || line->terminal != 1 || line->terminal_type != AFSM_EVENT_EXPIRED ||
                !line->ended_idle)
                fail_msg("nested allocation %ld failing: session %zu: %d IDLE, %d EXPIRED/DELETED (type %u)", n, i,
                         line->idle_events, line->terminal, line->terminal_type);
        }
        ledger_check_all_ended(&c.ledger);
        assert_int_equal(engine_slots_in_use(engine), 0);
        assert_int_equal(table_keys(engine), 0);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
        ledger_free(&c.ledger);
    }
    assert_true(failed_some);
}

static void test_nested_advance_allocation_failures(void **state)
{
    (void)state;
    run_nested_allocation_failures(1);
    run_nested_allocation_failures(4);
}

/* ---- 3c. no IDLE shown while the batch that would report it cannot grow -- */

/* on_timer stored IDLE (go_idle, under the shard lock) before the batch
 * took the session; when the batch could not grow, it took the transition
 * back. In between, a lock-free Get could copy an IDLE that no event,
 * counter or later state reports. Every allocation of the advance fails in
 * turn, and at each failure a Get of the session, made from inside the
 * failing allocation, must read ACTIVE. */
typedef struct idle_peek {
    afsm_engine *engine;
    afsm_uuid id;
    int failures, saw_idle;
} idle_peek;

static void peek_at_failure(void *arg)
{
    idle_peek *p = arg;
    p->failures++;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    if (afsm_session_get(p->engine, &p->id, &info) == AFSM_OK && info.state == AFSM_STATE_IDLE)
        p->saw_idle++;
}

static void count_event(void *arg, const afsm_event *ev)
{
    (void)ev;
    (*(int *)arg)++;
}

static void test_no_idle_shown_when_the_batch_cannot_grow(void **state)
{
    (void)state;
    int failed_some = 0;
    for (long n = 0; n < 6; n++) {
        static idle_peek p;
        memset(&p, 0, sizeof(p));
        int events = 0;
        virtual_clock clock;
        afsm_config cfg;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.shard_count = 1;
        cfg.idle_timeout_ms = 200;
        cfg.on_event = count_event; /* IDLE events need room in the batch too */
        cfg.event_ctx = &events;
        afsm_engine *engine = open_engine(&clock, &cfg);
        p.engine = engine;
        assert_int_equal(create_for(engine, "sleeper", 60000, &p.id), AFSM_OK);
        uint64_t remaining;
        assert_int_equal(afsm_session_heartbeat(engine, &p.id, &remaining), AFSM_OK); /* ACTIVE */
        uint64_t now = virtual_clock_read(&clock) + 500 * MS;
        virtual_clock_set(&clock, now);
        size_t expired = 0;
        afsm_status st = advance_failing_from(engine, now, n, peek_at_failure, &p, &expired);
        failed_some |= st == AFSM_ENOMEM;
        if (p.saw_idle != 0)
            fail_msg("allocation %ld failing: a Get read IDLE while the advance was failing", n);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_get(engine, &p.id, &info), AFSM_OK);
        assert_int_equal(info.state, st == AFSM_OK ? AFSM_STATE_IDLE : AFSM_STATE_ACTIVE);
        assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
        assert_int_equal(afsm_session_get(engine, &p.id, &info), AFSM_OK);
        assert_int_equal(info.state, AFSM_STATE_IDLE);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    }
    assert_true(failed_some);
}

/* ---- 3d. every allocation of a mixed pass failing: counts match states --- */

/* One pass with every outcome of on_timer: sessions that expire
 * (CONNECTING, short timeout), go idle (ACTIVE, idle deadline passed), end
 * their close linger (CLOSED), and stay (CONNECTING, long timeout). The
 * n-th allocation of the pass fails. After it, and after the advances that
 * finish the work, afsm_engine_counts must equal the states a Get reads,
 * idle_transitions_total the sessions that read IDLE, and (with a
 * callback) the IDLE events; and every session must live one valid life.
 * At each failure, from inside the failing allocation, the sessions a Get
 * reads IDLE must each be counted (by_state) and, with a callback, be
 * in the batch already (on_timer reserves before go_idle). */
#define MIXED_SESSIONS 400

typedef struct mixed_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid ids[MIXED_SESSIONS];
    int failures;
    int bad_observations;
    char first[160];
} mixed_ctx;

static void mixed_event(void *arg, const afsm_event *ev)
{
    ledger_record(&((mixed_ctx *)arg)->ledger, ev);
}

/* Reads every session: by_state[] of what Get returns; the total found,
 * with the expired ones not yet reaped (AFSM_EEXPIRED; only the CONNECTING
 * kind expires here, and it is counted CONNECTING until reaped) in
 * by_state[CONNECTING]. */
static uint64_t mixed_walk(mixed_ctx *c, uint64_t by_state[AFSM_STATE_COUNT])
{
    uint64_t total = 0;
    memset(by_state, 0, AFSM_STATE_COUNT * sizeof(by_state[0]));
    for (size_t i = 0; i < MIXED_SESSIONS; i++) {
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_session_get(c->engine, &c->ids[i], &info);
        if (st == AFSM_OK)
            by_state[info.state]++;
        else if (st == AFSM_EEXPIRED && i % 4 == 0)
            by_state[AFSM_STATE_CONNECTING]++;
        else if (st == AFSM_ENOTFOUND)
            continue;
        else
            fail_msg("session %zu (kind %zu): %s", i, i % 4, afsm_status_name(st));
        total++;
    }
    return total;
}

static void mixed_at_failure(void *arg)
{
    mixed_ctx *c = arg;
    c->failures++;
    uint64_t by_state[AFSM_STATE_COUNT];
    mixed_walk(c, by_state);
    afsm_metrics m;
    memset(&m, 0, sizeof(m));
    m.version = AFSM_METRICS_VERSION;
    afsm_counts counts;
    if (afsm_engine_counts(c->engine, &counts) != AFSM_OK || afsm_metrics_snapshot(c->engine, &m) != AFSM_OK)
        return; /* a failing allocation of their own: nothing to compare */
    /* Under the shard lock of the pass (or between its steps): no other
     * thread, so the counts are exact. */
    if ((by_state[AFSM_STATE_IDLE] != counts.by_state[AFSM_STATE_IDLE] ||
         by_state[AFSM_STATE_IDLE] != m.idle_transitions_total) &&
        c->bad_observations++ == 0)
        snprintf(c->first, sizeof(c->first), "at failure %d: %llu read IDLE, %llu counted, %llu transitions",
                 c->failures, (unsigned long long)by_state[AFSM_STATE_IDLE],
                 (unsigned long long)counts.by_state[AFSM_STATE_IDLE], (unsigned long long)m.idle_transitions_total);
}

/* Counts, metrics and (with a callback) IDLE events against a walk. */
static void mixed_check(mixed_ctx *c, bool emit, long n, const char *when)
{
    uint64_t by_state[AFSM_STATE_COUNT];
    uint64_t total = mixed_walk(c, by_state);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(c->engine, &counts), AFSM_OK);
    afsm_metrics m;
    memset(&m, 0, sizeof(m));
    m.version = AFSM_METRICS_VERSION;
    assert_int_equal(afsm_metrics_snapshot(c->engine, &m), AFSM_OK);
    if (counts.total != total)
        fail_msg("allocation %ld failing, %s: %llu counted, %llu found", n, when, (unsigned long long)counts.total,
                 (unsigned long long)total);
    for (int s = 1; s < AFSM_STATE_COUNT; s++)
        if (counts.by_state[s] != by_state[s])
            fail_msg("allocation %ld failing, %s: %llu counted %s, %llu read", n, when,
                     (unsigned long long)counts.by_state[s], afsm_state_name(s), (unsigned long long)by_state[s]);
    /* Nothing wakes here: every transition left a session IDLE. */
    if (m.idle_transitions_total != by_state[AFSM_STATE_IDLE])
        fail_msg("allocation %ld failing, %s: %llu idle transitions, %llu read IDLE", n, when,
                 (unsigned long long)m.idle_transitions_total, (unsigned long long)by_state[AFSM_STATE_IDLE]);
    if (emit && c->ledger.idle_events != m.idle_transitions_total)
        fail_msg("allocation %ld failing, %s: %llu IDLE events, %llu idle transitions", n, when,
                 (unsigned long long)c->ledger.idle_events, (unsigned long long)m.idle_transitions_total);
}

static void run_mixed_allocation_failures(unsigned shards, bool emit)
{
    int failed_some = 0, succeeded = 0;
    for (long n = 0; !succeeded; n++) {
        if (n > 64)
            fail_msg("an advance still fails with %ld allocations allowed", n);
        static mixed_ctx c;
        memset(&c, 0, sizeof(c));
        ledger_init(&c.ledger);
        virtual_clock clock;
        afsm_config cfg;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.shard_count = shards;
        cfg.idle_timeout_ms = 200;
        cfg.close_linger_ms = 100;
        if (emit) {
            cfg.on_event = mixed_event;
            cfg.event_ctx = &c;
        }
        afsm_engine *engine = open_engine(&clock, &cfg);
        c.engine = engine;
        uint64_t remaining;
        for (size_t i = 0; i < MIXED_SESSIONS; i++) {
            const char *users[] = {"a", "b", "c"};
            /* 0: expires; 1: goes idle; 2: closed, lingers out; 3: stays. */
            assert_int_equal(create_for(engine, users[i % 3], i % 4 == 0 ? 300 : 60000, &c.ids[i]), AFSM_OK);
            if (i % 4 == 1 || i % 4 == 2)
                assert_int_equal(afsm_session_heartbeat(engine, &c.ids[i], &remaining), AFSM_OK);
            if (i % 4 == 2) {
                afsm_update u;
                afsm_update_init(&u, AFSM_UPDATE_VERSION);
                u.fields = AFSM_UPDATE_STATE;
                u.state = AFSM_STATE_CLOSED;
                assert_int_equal(afsm_session_update(engine, &c.ids[i], &u, NULL), AFSM_OK);
            }
        }
        uint64_t now = virtual_clock_read(&clock) + 1 * SEC;
        virtual_clock_set(&clock, now);
        size_t expired = 0, more = 0;
        afsm_status st = advance_failing_from(engine, now, n, mixed_at_failure, &c, &expired);
        if (c.bad_observations != 0)
            fail_msg("allocation %ld failing: %s", n, c.first);
        failed_some |= st == AFSM_ENOMEM;
        succeeded = st == AFSM_OK;
        mixed_check(&c, emit, n, "after the failing advance");
        assert_int_equal(afsm_engine_advance(engine, now, &more), AFSM_OK);
        mixed_check(&c, emit, n, "after the next advance");
        assert_int_equal(expired + more, MIXED_SESSIONS / 4);
        afsm_counts counts;
        assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
        assert_int_equal(counts.total, MIXED_SESSIONS / 2);
        assert_int_equal(counts.by_state[AFSM_STATE_IDLE], MIXED_SESSIONS / 4);
        assert_int_equal(counts.by_state[AFSM_STATE_CONNECTING], MIXED_SESSIONS / 4);
        /* Past every expiry: each session ends once, the idle ones IDLE. */
        now += 120 * SEC;
        virtual_clock_set(&clock, now);
        assert_int_equal(afsm_engine_advance(engine, now, &more), AFSM_OK);
        assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
        assert_int_equal(counts.total, 0);
        if (emit) {
            ledger_check_all_ended(&c.ledger);
            for (size_t i = 0; i < MIXED_SESSIONS; i++) {
                ledger_line *line = ledger_line_of(&c.ledger, &c.ids[i]);
                uint32_t want = i % 4 == 2 ? AFSM_EVENT_DELETED : AFSM_EVENT_EXPIRED;
                if (line->idle_events != (i % 4 == 1) || line->terminal_type != want)
                    fail_msg("allocation %ld failing: session %zu (kind %zu): %d IDLE events, ended by type %u", n, i,
                             i % 4, line->idle_events, line->terminal_type);
            }
        }
        assert_int_equal(engine_slots_in_use(engine), 0);
        assert_int_equal(table_keys(engine), 0);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
        ledger_free(&c.ledger);
    }
    assert_true(failed_some);
}

static void test_mixed_pass_allocation_failures(void **state)
{
    (void)state;
    run_mixed_allocation_failures(1, true);
    run_mixed_allocation_failures(4, true);
    run_mixed_allocation_failures(1, false);
    run_mixed_allocation_failures(4, false);
}

/* ---- 3e. the failure hook's observer may allocate ----------------------- */

/* An observer that looks at the engine may allocate (a list, a metrics
 * text, a create on another engine): that allocation fails too, the
 * countdown being at 0, and must not run the observer again from inside
 * itself, or an observer that allocates on every call recurses until the
 * stack runs out. */
typedef struct observer_depth {
    int depth, max_depth, calls;
    int inner_failed;
} observer_depth;

static void allocating_observer(void *arg)
{
    observer_depth *d = arg;
    d->calls++;
    if (++d->depth > d->max_depth)
        d->max_depth = d->depth;
    if (d->depth < 4) { /* bounded here, so that the test fails, not crashes */
        void *p = mem_alloc(64);
        d->inner_failed += p == NULL;
        mem_free(p);
    }
    d->depth--;
}

static void test_failure_observer_may_allocate(void **state)
{
    (void)state;
    static observer_depth d;
    memset(&d, 0, sizeof(d));
    alloc_fail_observe(allocating_observer, &d);
    alloc_fail_after(0);
    void *p = mem_alloc(32);
    alloc_fail_reset();
    alloc_fail_observe(NULL, NULL);
    assert_null(p);
    if (d.max_depth != 1)
        fail_msg("the observer ran %d deep (%d calls) for one failing allocation", d.max_depth, d.calls);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.inner_failed, 1); /* the observer's own allocation fails as well */
    /* The guard is per call: the next failure is observed again. */
    alloc_fail_observe(allocating_observer, &d);
    alloc_fail_after_on_this_thread(0);
    p = mem_alloc(32);
    alloc_fail_after_on_this_thread(-1);
    alloc_fail_observe(NULL, NULL);
    assert_null(p);
    assert_int_equal(d.calls, 2);
}

/* ---- 3f. sessions turned IDLE by an advance nested in a callback, failing */

/* The outer advance expires only a trigger; the trigger's callback
 * advances past the others' idle deadline with the n-th allocation of
 * that nested pass failing (its IDLE room among them, while the outer
 * batch delivers). From inside each failure, and after, the sessions read
 * IDLE are the ones counted and reported; the advances after it turn the
 * rest IDLE once; each session then expires once, in IDLE. */
#define NESTED_IDLE_SESSIONS 300

typedef struct nested_idle_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid trigger;
    afsm_uuid ids[NESTED_IDLE_SESSIONS];
    uint64_t nested_to;
    long fail_at;
    afsm_status nested;
    int advanced, failures, bad_observations;
    char first[160];
} nested_idle_ctx;

/* Sessions Get reads IDLE; -1 if one could not be read. */
static long nested_idle_read(nested_idle_ctx *c)
{
    long idle = 0;
    for (size_t i = 0; i < NESTED_IDLE_SESSIONS; i++) {
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        if (afsm_session_get(c->engine, &c->ids[i], &info) != AFSM_OK)
            return -1;
        idle += info.state == AFSM_STATE_IDLE;
    }
    return idle;
}

static void nested_idle_compare(nested_idle_ctx *c, const char *where)
{
    long idle = nested_idle_read(c);
    afsm_counts counts;
    afsm_metrics m;
    memset(&m, 0, sizeof(m));
    m.version = AFSM_METRICS_VERSION;
    if (afsm_engine_counts(c->engine, &counts) != AFSM_OK || afsm_metrics_snapshot(c->engine, &m) != AFSM_OK)
        return;
    if ((idle < 0 || (uint64_t)idle != counts.by_state[AFSM_STATE_IDLE] ||
         (uint64_t)idle != m.idle_transitions_total) &&
        c->bad_observations++ == 0)
        snprintf(c->first, sizeof(c->first), "%s: %ld read IDLE, %llu counted, %llu transitions", where, idle,
                 (unsigned long long)counts.by_state[AFSM_STATE_IDLE], (unsigned long long)m.idle_transitions_total);
}

static void nested_idle_at_failure(void *arg)
{
    nested_idle_ctx *c = arg;
    c->failures++;
    nested_idle_compare(c, "inside a failing allocation");
}

static void nested_idle_event(void *arg, const afsm_event *ev)
{
    nested_idle_ctx *c = arg;
    ledger_record(&c->ledger, ev);
    if (ev->type == AFSM_EVENT_EXPIRED && !c->advanced && memcmp(&ev->session_id, &c->trigger, 16) == 0) {
        c->advanced = 1;
        size_t n;
        alloc_fail_observe(nested_idle_at_failure, c);
        alloc_fail_after(c->fail_at);
        c->nested = afsm_engine_advance(c->engine, c->nested_to, &n);
        alloc_fail_reset();
        alloc_fail_observe(NULL, NULL);
        nested_idle_compare(c, "after the nested advance");
    }
}

static void run_nested_idle_failures(unsigned shards)
{
    int failed_some = 0, succeeded = 0;
    for (long n = 0; !succeeded; n++) {
        if (n > 64)
            fail_msg("a nested advance still fails with %ld allocations allowed", n);
        static nested_idle_ctx c;
        memset(&c, 0, sizeof(c));
        ledger_init(&c.ledger);
        c.fail_at = n;
        virtual_clock clock;
        afsm_config cfg;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.shard_count = shards;
        cfg.idle_timeout_ms = 200;
        cfg.on_event = nested_idle_event;
        cfg.event_ctx = &c;
        afsm_engine *engine = open_engine(&clock, &cfg);
        c.engine = engine;
        uint64_t remaining;
        assert_int_equal(create_for(engine, "trigger", 100, &c.trigger), AFSM_OK);
        for (size_t i = 0; i < NESTED_IDLE_SESSIONS; i++) {
            assert_int_equal(create_for(engine, i % 2 ? "a" : "b", 60000, &c.ids[i]), AFSM_OK);
            assert_int_equal(afsm_session_heartbeat(engine, &c.ids[i], &remaining), AFSM_OK); /* ACTIVE */
        }
        uint64_t now = virtual_clock_read(&clock) + 150 * MS; /* the trigger only */
        c.nested_to = now + 350 * MS;                         /* past every idle deadline */
        virtual_clock_set(&clock, c.nested_to);
        size_t expired = 0, more = 0;
        assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
        assert_true(c.advanced);
        if (c.nested != AFSM_OK && c.nested != AFSM_ENOMEM)
            fail_msg("nested allocation %ld failing: %s", n, afsm_status_name(c.nested));
        if (c.bad_observations != 0)
            fail_msg("nested allocation %ld failing: %s", n, c.first);
        failed_some |= c.nested == AFSM_ENOMEM;
        succeeded = c.nested == AFSM_OK;
        pthread_mutex_lock(&c.ledger.lock);
        uint64_t idle_events = c.ledger.idle_events;
        pthread_mutex_unlock(&c.ledger.lock);
        long idle = nested_idle_read(&c);
        if (idle < 0 || (uint64_t)idle != idle_events)
            fail_msg("nested allocation %ld failing: %ld read IDLE, %llu IDLE events", n, idle,
                     (unsigned long long)idle_events);
        assert_int_equal(afsm_engine_advance(engine, c.nested_to, &more), AFSM_OK);
        assert_int_equal(nested_idle_read(&c), NESTED_IDLE_SESSIONS);
        c.nested_to += 120 * SEC;
        virtual_clock_set(&clock, c.nested_to);
        assert_int_equal(afsm_engine_advance(engine, c.nested_to, &more), AFSM_OK);
        afsm_counts counts;
        assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
        assert_int_equal(counts.total, 0);
        ledger_check_all_ended(&c.ledger);
        for (size_t i = 0; i < NESTED_IDLE_SESSIONS; i++) {
            ledger_line *line = ledger_line_of(&c.ledger, &c.ids[i]);
            if (line->idle_events != 1 || line->terminal_type != AFSM_EVENT_EXPIRED || !line->ended_idle)
                fail_msg("nested allocation %ld failing: session %zu: %d IDLE events, ended by type %u in IDLE %d", n,
                         i, line->idle_events, line->terminal_type, line->ended_idle);
        }
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
        ledger_free(&c.ledger);
    }
    assert_true(failed_some);
}

static void test_nested_idle_allocation_failures(void **state)
{
    (void)state;
    run_nested_idle_failures(1);
    run_nested_idle_failures(4);
}

/* ---- 3g. allocation failures while a group's emptied users wait for their drop */

/* A pass that empties users: 400 single-session users expire on one shard
 * while 20 others keep a session, so the users table shrinks (a rebuild,
 * an allocation) in the middle of the pass, once its keys fill a
 * sixteenth of it. The n-th
 * allocation fails from there on, for every n up to the pass's last:
 * emptied entries wait for the group's drop (3c32d34) while the tables'
 * rebuilds fail. From inside each failing allocation a user's list reads
 * no session that is gone and never errs; after the pass (and the one
 * finishing it) each session expired once, no entry without sessions is
 * left, and every emptied user can start again. */
#define DROP_GONE 400
#define DROP_KEPT 20

typedef struct drop_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid gone[DROP_GONE];
    long failures;   /* in this pass */
    long mid_settle; /* failures with some gone sessions removed and some not */
    long bad_lists;  /* a list read that erred or showed more than one session */
} drop_ctx;

static void drop_event(void *arg, const afsm_event *ev)
{
    ledger_record(&((drop_ctx *)arg)->ledger, ev);
}

static void drop_at_failure(void *arg)
{
    drop_ctx *c = arg;
    c->failures++;
    size_t found = 0;
    afsm_session_info page[2];
    for (size_t i = 0; i < 2; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    for (size_t i = 0; i < DROP_GONE; i++) {
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_session_get(c->engine, &c->gone[i], &info);
        found += st != AFSM_ENOTFOUND;
        char user[16];
        snprintf(user, sizeof(user), "gone%zu", i);
        size_t count;
        uint64_t total;
        st = list_user_page(c->engine, user, page, 2, &count, &total);
        /* The list's own allocations (if any) fail too: ENOMEM is fair. */
        if (st == AFSM_ENOMEM)
            continue;
        c->bad_lists += st != AFSM_OK || count > 1 || total > 1;
    }
    c->mid_settle += found > 0 && found < DROP_GONE;
}

static void test_emptied_users_allocation_failures(void **state)
{
    (void)state;
    long mid_settle = 0;
    long n = 0;
    for (;; n++) {
        if (n > 256)
            fail_msg("a pass still fails with %ld allocations allowed", n);
        static drop_ctx c;
        memset(&c, 0, sizeof(c));
        ledger_init(&c.ledger);
        virtual_clock clock;
        afsm_config cfg;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.shard_count = 1;
        cfg.on_event = drop_event;
        cfg.event_ctx = &c;
        afsm_engine *engine = open_engine(&clock, &cfg);
        c.engine = engine;
        char user[16];
        for (size_t i = 0; i < DROP_GONE + DROP_KEPT; i++) {
            snprintf(user, sizeof(user), i < DROP_GONE ? "gone%zu" : "kept%zu", i);
            assert_int_equal(create_for(engine, user, i < DROP_GONE ? 300 : 60000, i < DROP_GONE ? &c.gone[i] : NULL),
                             AFSM_OK);
        }
        uint64_t now = virtual_clock_read(&clock) + 1 * SEC;
        virtual_clock_set(&clock, now);
        size_t expired = 0, more = 0;
        advance_failing_from(engine, now, n, drop_at_failure, &c, &expired);
        if (c.bad_lists != 0)
            fail_msg("allocation %ld failing: %ld list reads erred or showed a gone session", n, c.bad_lists);
        mid_settle += c.mid_settle;
        assert_int_equal(afsm_engine_advance(engine, now, &more), AFSM_OK);
        if (expired + more != DROP_GONE)
            fail_msg("allocation %ld failing: %zu + %zu expired", n, expired, more);
        pthread_mutex_lock(&c.ledger.lock);
        for (size_t i = 0; i < DROP_GONE; i++)
            if (ledger_line_of(&c.ledger, &c.gone[i])->terminal != 1)
                fail_msg("allocation %ld failing: session %zu ended %d times", n, i,
                         ledger_line_of(&c.ledger, &c.gone[i])->terminal);
        pthread_mutex_unlock(&c.ledger.lock);
        if (c.ledger.violations != 0)
            fail_msg("allocation %ld failing: %s", n, c.ledger.first);
        /* No entry without sessions left, none missing. */
        assert_int_equal(engine_check_indexes(engine, 0), DROP_KEPT);
        for (size_t i = 0; i < DROP_GONE; i++) {
            snprintf(user, sizeof(user), "gone%zu", i);
            assert_int_equal(create_for(engine, user, 60000, NULL), AFSM_OK);
        }
        assert_int_equal(engine_check_indexes(engine, 0), DROP_GONE + DROP_KEPT);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
        ledger_free(&c.ledger);
        if (c.failures == 0)
            break; /* every allocation of the pass has failed once */
    }
    /* The sweep reached the settling itself, not only the batch's growth. */
    assert_true(mid_settle > 0);
}

/* ---- 4. close while the reaper thread settles groups -------------------- */

#define CLOSE_SESSIONS 3000

typedef struct close_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid ids[CLOSE_SESSIONS];
    _Atomic long events;
    _Atomic int closed;
    _Atomic long after_close;
} close_ctx;

static void close_event(void *arg, const afsm_event *ev)
{
    close_ctx *c = arg;
    if (atomic_load_explicit(&c->closed, memory_order_acquire))
        atomic_fetch_add_explicit(&c->after_close, 1, memory_order_relaxed);
    ledger_record(&c->ledger, ev);
    long k = atomic_fetch_add_explicit(&c->events, 1, memory_order_release);
    /* Expiries delete sessions of later groups while close waits. */
    if (ev->type == AFSM_EVENT_EXPIRED && k % 3 == 0) {
        afsm_status st = afsm_session_delete(c->engine, &c->ids[(size_t)k * 7 % CLOSE_SESSIONS], NULL, 0);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND);
    }
}

/* The reaper thread is in the middle of a pass of many groups, its
 * callbacks deleting sessions, when the engine closes: close waits for it,
 * no event comes after close returns, and every record is freed once
 * (AddressSanitizer's tree). */
static void test_close_during_grouped_pass(void **state)
{
    (void)state;
    static close_ctx c;
    memset(&c, 0, sizeof(c));
    ledger_init(&c.ledger);
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 4;
    cfg.on_event = close_event;
    cfg.event_ctx = &c;
    cfg.cleanup_interval_ms = 1;
    afsm_engine *engine = open_engine_reaped(&clock, &cfg, AFSM_REAPER_THREAD);
    c.engine = engine;
    char user[16];
    for (size_t i = 0; i < CLOSE_SESSIONS; i++) {
        snprintf(user, sizeof(user), "u%zu", i % 50);
        assert_int_equal(create_for(engine, user, 500, &c.ids[i]), AFSM_OK);
    }
    long created = atomic_load(&c.events);
    virtual_clock_set(&clock, 1000 * SEC + 2 * SEC);
    assert_true(spin_until(&c.events, created + 10, 30));
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    atomic_store_explicit(&c.closed, 1, memory_order_release);
    assert_int_equal(atomic_load(&c.after_close), 0);
    if (c.ledger.violations != 0)
        fail_msg("%s", c.ledger.first);
    /* Nothing ended twice. */
    for (uint32_t i = 0; i < LEDGER_SLOTS; i++)
        if (c.ledger.lines[i].used && c.ledger.lines[i].terminal > 1)
            fail_msg("a session with %d EXPIRED/DELETED events", c.ledger.lines[i].terminal);
    ledger_free(&c.ledger);
}

/* ---- 4b. the reaper thread's IDLE batches, callbacks and racing writers -- */

/* The reaper thread turns sessions IDLE in batches while two writers
 * heartbeat (wake) and delete them, and its own callback, on each IDLE,
 * deletes, closes or wakes another session (whose IDLE may wait in the
 * same batch: the index's lookups under contention); then the engine
 * closes with a pass under way. On the reaper's thread a session never
 * leaves IDLE (woken, closed, deleted, expired) in more events than it was
 * reported entering it (every IDLE event is the reaper's); nothing ends
 * twice or is reported after close; ThreadSanitizer's tree watches the
 * rest. */

#define RACE_SESSIONS 2000
#define RACE_WRITERS  2

typedef struct race_ctx {
    ledger ledger;
    afsm_engine *engine;
    afsm_uuid ids[RACE_SESSIONS];
    int idle_in[RACE_SESSIONS];    /* IDLE events (all on the reaper's thread) */
    int reaper_out[RACE_SESSIONS]; /* leaving IDLE, reported on the reaper's thread */
    long order_violations;
    _Atomic int stop;
    _Atomic long step; /* the clock steps done: writers pace themselves by it */
    _Atomic int closed;
    _Atomic long after_close;
    _Atomic long idle_events;
    _Atomic long reaper_acts;
} race_ctx;

static _Thread_local int race_not_reaper; /* set by the test's own threads */

/* ids are created in order and v7 ids sort by time: a binary search. */
static long race_index(race_ctx *c, const afsm_uuid *id)
{
    long lo = 0, hi = RACE_SESSIONS - 1;
    while (lo <= hi) {
        long mid = (lo + hi) / 2;
        int cmp = memcmp(&c->ids[mid], id, sizeof(*id));
        if (cmp == 0)
            return mid;
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

static void race_event(void *arg, const afsm_event *ev)
{
    race_ctx *c = arg;
    if (atomic_load_explicit(&c->closed, memory_order_acquire))
        atomic_fetch_add_explicit(&c->after_close, 1, memory_order_relaxed);
    ledger_record(&c->ledger, ev);
    long i = race_index(c, &ev->session_id);
    if (i < 0)
        return;
    bool into_idle = ev->type == AFSM_EVENT_STATE_CHANGED && ev->new_state == AFSM_STATE_IDLE;
    bool out_of_idle = ev->type == AFSM_EVENT_STATE_CHANGED
                           ? ev->old_state == AFSM_STATE_IDLE
                           : ev->type != AFSM_EVENT_CREATED && ev->new_state == AFSM_STATE_IDLE;
    if (race_not_reaper)
        return;
    pthread_mutex_lock(&c->ledger.lock);
    c->idle_in[i] += into_idle;
    c->reaper_out[i] += out_of_idle;
    if (c->reaper_out[i] > c->idle_in[i])
        c->order_violations++;
    pthread_mutex_unlock(&c->ledger.lock);
    if (!into_idle || atomic_load_explicit(&c->stop, memory_order_relaxed))
        return;
    atomic_fetch_add_explicit(&c->idle_events, 1, memory_order_relaxed);
    /* Another session, likely in this batch: a neighbour in creation
     * order shares the home run, so the home shard. */
    long k = atomic_fetch_add_explicit(&c->reaper_acts, 1, memory_order_relaxed);
    const afsm_uuid *other = &c->ids[(i + 1 + k % 7) % RACE_SESSIONS];
    uint64_t remaining;
    afsm_status st;
    switch (k % 3) {
    case 0:
        st = afsm_session_delete(c->engine, other, NULL, 0);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND);
        break;
    case 1: {
        afsm_update u;
        afsm_update_init(&u, AFSM_UPDATE_VERSION);
        u.fields = AFSM_UPDATE_STATE;
        u.state = AFSM_STATE_CLOSED;
        st = afsm_session_update(c->engine, other, &u, NULL);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED || st == AFSM_ETRANSITION);
        break;
    }
    default:
        st = afsm_session_heartbeat(c->engine, other, &remaining);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED);
    }
}

/* One writer's op: mostly a heartbeat (a wake when the session is IDLE),
 * sometimes a delete. */
static void race_write(race_ctx *c)
{
    uint64_t seed = thread_rand();
    const afsm_uuid *id = &c->ids[seed % RACE_SESSIONS];
    uint64_t remaining;
    afsm_status st;
    if (seed % 97 == 0) {
        st = afsm_session_delete(c->engine, id, NULL, 0);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND);
    } else {
        st = afsm_session_heartbeat(c->engine, id, &remaining);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED);
    }
}

static void *race_writer(void *arg)
{
    race_ctx *c = arg;
    race_not_reaper = 1;
    /* 50 writes per step of the clock, racing the reaper's pass of it:
     * at full speed every session would be heartbeaten every step, and
     * none would ever go idle. */
    for (long step = 0; !atomic_load_explicit(&c->stop, memory_order_acquire); step++) {
        while (atomic_load_explicit(&c->step, memory_order_acquire) < step)
            if (atomic_load_explicit(&c->stop, memory_order_acquire))
                return NULL;
        for (int op = 0; op < 50; op++)
            race_write(c);
    }
    return NULL;
}

/* Waits (with a deadline) for the reaper to finish a pass at `now` or later. */
static bool reaper_reached(afsm_engine *engine, uint64_t now)
{
    mem_store *ms = (mem_store *)engine->st;
    uint64_t deadline = real_ns() + 20 * SEC;
    while (atomic_load_explicit(&ms->wheels_reached_ns, memory_order_acquire) < now)
        if (real_ns() > deadline)
            return false;
    return true;
}

static void test_reaper_idle_batches_race_writers(void **state)
{
    (void)state;
    static race_ctx c;
    memset(&c, 0, sizeof(c));
    ledger_init(&c.ledger);
    race_not_reaper = 1;
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 4;
    cfg.idle_timeout_ms = 200;
    cfg.on_event = race_event;
    cfg.event_ctx = &c;
    cfg.cleanup_interval_ms = 1;
    afsm_engine *engine = open_engine_reaped(&clock, &cfg, AFSM_REAPER_THREAD);
    c.engine = engine;
    uint64_t remaining;
    char user[16];
    for (size_t i = 0; i < RACE_SESSIONS; i++) {
        snprintf(user, sizeof(user), "r%zu", i % 40);
        assert_int_equal(create_for(engine, user, 3000, &c.ids[i]), AFSM_OK);
        assert_int_equal(afsm_session_heartbeat(engine, &c.ids[i], &remaining), AFSM_OK);
    }
    for (size_t i = 1; i < RACE_SESSIONS; i++)
        assert_true(memcmp(&c.ids[i - 1], &c.ids[i], sizeof(c.ids[i])) < 0);
    pthread_t writers[RACE_WRITERS];
    for (int w = 0; w < RACE_WRITERS; w++)
        assert_int_equal(pthread_create(&writers[w], NULL, race_writer, &c), 0);
    /* Steps of half an idle timeout: sessions go idle, are woken, go idle
     * again, and (3 s without a heartbeat) expire. */
    uint64_t now = 1000 * SEC;
    for (int step = 0; step < 40; step++) {
        now += 100 * MS;
        virtual_clock_set(&clock, now);
        atomic_fetch_add_explicit(&c.step, 1, memory_order_release);
        if (!reaper_reached(engine, now))
            fail_msg("the reaper did not reach step %d within 20 s", step);
    }
    atomic_store(&c.stop, 1);
    for (int w = 0; w < RACE_WRITERS; w++)
        assert_int_equal(pthread_join(writers[w], NULL), 0);
    assert_true(atomic_load(&c.idle_events) > 100);
    /* Everything due at once, and close while that pass runs. */
    virtual_clock_set(&clock, now + 3600 * SEC);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    atomic_store_explicit(&c.closed, 1, memory_order_release);
    assert_int_equal(atomic_load(&c.after_close), 0);
    if (c.ledger.violations != 0)
        fail_msg("%s", c.ledger.first);
    if (c.order_violations != 0)
        fail_msg("%ld time(s) the reaper's thread reported a session leaving IDLE before entering it",
                 c.order_violations);
    for (uint32_t i = 0; i < LEDGER_SLOTS; i++)
        if (c.ledger.lines[i].used && c.ledger.lines[i].terminal > 1)
            fail_msg("a session with %d EXPIRED/DELETED events", c.ledger.lines[i].terminal);
    ledger_free(&c.ledger);
}

/* ---- 4c. the reaper's allocations failing while writers wake sessions --- */

/* The reaper thread turns sessions IDLE while writers heartbeat (wake) and
 * add stats, and the reaper's own allocations fail, on its thread only
 * (the countdown re-armed from the failure hook, so that passes fail at
 * every point and some get through). Each clock step makes every session
 * due; the reaper's first event of the step starts a sweeper heartbeating
 * every session while the reaper's pass goes on, so heartbeats land
 * before and after each session's turn to IDLE and wake sessions while
 * the reaper holds their shard's lock. (Inside it, between the room
 * reserved and go_idle's re-read, no run of this test was seen to land:
 * that window is a few instructions.) Afterwards, quiet: the counts
 * equal the states Get reads, and every transition is reported once:
 * IDLE events = idle_transitions_total, wake events =
 * wake_transitions_total, sessions IDLE = their difference.
 * ThreadSanitizer's tree watches the races. */
#define NOMEM_RACE_SESSIONS 1000

typedef struct nomem_race_ctx {
    afsm_engine *engine;
    afsm_uuid ids[NOMEM_RACE_SESSIONS];
    _Atomic long step;
    _Atomic long sweep; /* the step whose sweep may start */
    _Atomic int stop;
    _Atomic int disarm;    /* the reaper's next failure or event turns the countdown off */
    _Atomic int disarmed;  /* and it has */
    _Atomic long failures; /* injected on the reaper's thread */
    _Atomic long idle_events, wake_events, bad_events;
} nomem_race_ctx;

static _Thread_local int nomem_race_writer; /* the test's own threads */

/* On the reaper's thread: the next failure after a few allocations (0 to
 * 7, in turn), or none once the test disarms. */
static void nomem_race_arm(nomem_race_ctx *c)
{
    if (atomic_load_explicit(&c->disarm, memory_order_acquire)) {
        alloc_fail_after_on_this_thread(-1);
        atomic_store_explicit(&c->disarmed, 1, memory_order_release);
        return;
    }
    alloc_fail_after_on_this_thread(atomic_load_explicit(&c->failures, memory_order_relaxed) % 8);
}

static void nomem_race_at_failure(void *arg)
{
    nomem_race_ctx *c = arg;
    if (nomem_race_writer)
        return; /* not armed there: the process-wide countdown is off */
    atomic_fetch_add_explicit(&c->failures, 1, memory_order_relaxed);
    nomem_race_arm(c);
}

static void nomem_race_event(void *arg, const afsm_event *ev)
{
    nomem_race_ctx *c = arg;
    if (ev->type == AFSM_EVENT_STATE_CHANGED && ev->new_state == AFSM_STATE_IDLE) {
        atomic_fetch_add_explicit(&c->idle_events, 1, memory_order_relaxed);
        if (nomem_race_writer || ev->old_state != AFSM_STATE_ACTIVE)
            atomic_fetch_add_explicit(&c->bad_events, 1, memory_order_relaxed);
    } else if (ev->type == AFSM_EVENT_STATE_CHANGED && ev->old_state == AFSM_STATE_IDLE) {
        atomic_fetch_add_explicit(&c->wake_events, 1, memory_order_relaxed);
    } else if (ev->type != AFSM_EVENT_CREATED && ev->type != AFSM_EVENT_STATE_CHANGED) {
        atomic_fetch_add_explicit(&c->bad_events, 1, memory_order_relaxed); /* nothing ends here */
    }
    if (nomem_race_writer)
        return;
    /* The pass of this step is under way: let the sweeper race it. */
    atomic_store_explicit(&c->sweep, atomic_load_explicit(&c->step, memory_order_acquire), memory_order_release);
    if (atomic_load_explicit(&c->failures, memory_order_relaxed) == 0 ||
        atomic_load_explicit(&c->disarm, memory_order_acquire))
        nomem_race_arm(c); /* the first arming, and the last */
}

/* Heartbeats (and stats) for every session, once per step, from the
 * moment the reaper's pass of the step has delivered its first event. */
static void *nomem_race_sweeper(void *arg)
{
    nomem_race_ctx *c = arg;
    nomem_race_writer = 1;
    afsm_stats delta;
    memset(&delta, 0, sizeof(delta));
    delta.bytes_sent = 10;
    for (long step = 1; !atomic_load_explicit(&c->stop, memory_order_acquire); step++) {
        while (atomic_load_explicit(&c->sweep, memory_order_acquire) < step)
            if (atomic_load_explicit(&c->stop, memory_order_acquire))
                return NULL;
        for (size_t i = 0; i < NOMEM_RACE_SESSIONS; i++) {
            uint64_t remaining;
            afsm_status st = i % 4 == 0 ? afsm_session_add_stats(c->engine, &c->ids[i], &delta)
                                        : afsm_session_heartbeat(c->engine, &c->ids[i], &remaining);
            THREAD_CHECK(st == AFSM_OK);
        }
    }
    return NULL;
}

/* A few random heartbeats and stats per step, at any time. */
static void *nomem_race_writer_main(void *arg)
{
    nomem_race_ctx *c = arg;
    nomem_race_writer = 1;
    afsm_stats delta;
    memset(&delta, 0, sizeof(delta));
    delta.bytes_sent = 10;
    for (long step = 0; !atomic_load_explicit(&c->stop, memory_order_acquire); step++) {
        while (atomic_load_explicit(&c->step, memory_order_acquire) < step)
            if (atomic_load_explicit(&c->stop, memory_order_acquire))
                return NULL;
        for (int op = 0; op < 40; op++) {
            uint64_t r = thread_rand();
            const afsm_uuid *id = &c->ids[r % NOMEM_RACE_SESSIONS];
            uint64_t remaining;
            afsm_status st = r % 4 == 0 ? afsm_session_add_stats(c->engine, id, &delta)
                                        : afsm_session_heartbeat(c->engine, id, &remaining);
            THREAD_CHECK(st == AFSM_OK);
        }
    }
    return NULL;
}

static void test_reaper_allocation_failures_race_writers(void **state)
{
    (void)state;
    static nomem_race_ctx c;
    memset(&c, 0, sizeof(c));
    nomem_race_writer = 1;
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 4;
    cfg.idle_timeout_ms = 200;
    cfg.on_event = nomem_race_event;
    cfg.event_ctx = &c;
    cfg.cleanup_interval_ms = 1;
    afsm_engine *engine = open_engine_reaped(&clock, &cfg, AFSM_REAPER_THREAD);
    c.engine = engine;
    uint64_t remaining;
    for (size_t i = 0; i < NOMEM_RACE_SESSIONS; i++) {
        assert_int_equal(create_for(engine, i % 2 ? "x" : "y", 600000, &c.ids[i]), AFSM_OK);
        assert_int_equal(afsm_session_heartbeat(engine, &c.ids[i], &remaining), AFSM_OK);
    }
    alloc_fail_observe(nomem_race_at_failure, &c);
    pthread_t writers[2];
    assert_int_equal(pthread_create(&writers[0], NULL, nomem_race_writer_main, &c), 0);
    assert_int_equal(pthread_create(&writers[1], NULL, nomem_race_sweeper, &c), 0);
    /* Steps past the idle timeout: every session is due at each. */
    uint64_t now = 1000 * SEC;
    for (int step = 0; step < 40; step++) {
        now += 300 * MS;
        virtual_clock_set(&clock, now);
        atomic_fetch_add_explicit(&c.step, 1, memory_order_release);
        if (!reaper_reached(engine, now))
            fail_msg("the reaper did not reach step %d within 20 s", step);
    }
    atomic_store(&c.stop, 1);
    for (int w = 0; w < 2; w++)
        assert_int_equal(pthread_join(writers[w], NULL), 0);
    /* Turn the reaper's failures off (from its own thread), then one
     * quiet pass past every idle deadline. */
    atomic_store_explicit(&c.disarm, 1, memory_order_release);
    uint64_t deadline = real_ns() + 20 * SEC;
    while (!atomic_load_explicit(&c.disarmed, memory_order_acquire)) {
        if (real_ns() > deadline)
            fail_msg("the reaper did not disarm within 20 s");
        now += 100 * MS;
        virtual_clock_set(&clock, now);
        if (!reaper_reached(engine, now))
            fail_msg("the reaper did not reach %llu within 20 s", (unsigned long long)now);
    }
    now += 1 * SEC;
    virtual_clock_set(&clock, now);
    assert_true(reaper_reached(engine, now));
    alloc_fail_observe(NULL, NULL);
    assert_true(atomic_load(&c.failures) > 20);
    assert_true(atomic_load(&c.idle_events) > 100);
    assert_int_equal(atomic_load(&c.bad_events), 0);
    uint64_t by_state[AFSM_STATE_COUNT] = {0};
    for (size_t i = 0; i < NOMEM_RACE_SESSIONS; i++) {
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_get(engine, &c.ids[i], &info), AFSM_OK);
        by_state[info.state]++;
    }
    /* Nothing was heartbeaten for a second: every session is IDLE. */
    assert_int_equal(by_state[AFSM_STATE_IDLE], NOMEM_RACE_SESSIONS);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, NOMEM_RACE_SESSIONS);
    for (int s = 1; s < AFSM_STATE_COUNT; s++)
        if (counts.by_state[s] != by_state[s])
            fail_msg("%llu counted %s, %llu read", (unsigned long long)counts.by_state[s], afsm_state_name(s),
                     (unsigned long long)by_state[s]);
    afsm_metrics m;
    memset(&m, 0, sizeof(m));
    m.version = AFSM_METRICS_VERSION;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.idle_transitions_total, atomic_load(&c.idle_events));
    assert_int_equal(m.wake_transitions_total, atomic_load(&c.wake_events));
    assert_int_equal(m.idle_transitions_total - m.wake_transitions_total, NOMEM_RACE_SESSIONS);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 5. removals find the stored key: failed creates and restores ------- */

/* table_remove compares addresses (edb3f38): every rollback must pass the
 * key it inserted. A create or restore failing at each allocation in turn
 * (the connection table's growth among them, after the session table's
 * insert) leaves every table with exactly the keys it had, and the user's
 * entry gone when it was new. */
static void test_failed_creates_leave_no_key(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 2;
    cfg.capacity_hint = 16; /* small maps: inserts grow them often */
    cfg.max_sessions_per_user = 3;
    cfg.limit_policy = AFSM_LIMIT_EVICT_OLDEST;
    afsm_engine *engine = open_engine(&clock, &cfg);
    afsm_session_info template = AFSM_SESSION_INFO_INIT;
    afsm_uuid first;
    assert_int_equal(create_for(engine, "owner", 60000, &first), AFSM_OK);
    assert_int_equal(afsm_session_get(engine, &first, &template), AFSM_OK);
    int failures = 0;
    for (int round = 0; round < 40; round++) {
        int kind = round % 3; /* new user, evicting user, restore */
        for (long n = 0; n < 64; n++) {
            uint64_t keys = table_keys(engine);
            afsm_counts before;
            assert_int_equal(afsm_engine_counts(engine, &before), AFSM_OK);
            char user[24];
            snprintf(user, sizeof(user), kind == 0 ? "fresh%d" : "owner", round);
            afsm_uuid conn;
            afsm_create_options o = make_options(user, "192.0.2.9", &conn);
            afsm_session_info copy = template;
            afsm_uuid_v7(&copy.session_id);
            afsm_uuid_v7(&copy.connection_id);
            snprintf(copy.user_id, sizeof(copy.user_id), "restored%d", round);
            copy.user_id_len = strlen(copy.user_id);
            alloc_fail_after(n);
            afsm_status st =
                kind == 2 ? afsm_session_restore(engine, &copy, NULL, 0) : afsm_session_create(engine, &o, NULL);
            alloc_fail_reset();
            if (st == AFSM_OK)
                break;
            if (st != AFSM_ENOMEM)
                fail_msg("round %d, allocation %ld failing: %s", round, n, afsm_status_name(st));
            failures++;
            afsm_counts after;
            assert_int_equal(afsm_engine_counts(engine, &after), AFSM_OK);
            assert_int_equal(after.total, before.total);
            if (table_keys(engine) != keys)
                fail_msg("round %d, allocation %ld failing: %llu table keys, were %llu", round, n,
                         (unsigned long long)table_keys(engine), (unsigned long long)keys);
        }
    }
    assert_true(failures > 0);
    /* Every session ends; every key with it. */
    uint64_t now = virtual_clock_read(&clock) + 3600 * SEC;
    virtual_clock_set(&clock, now);
    size_t n;
    for (int round = 0; round < 2; round++)
        assert_int_equal(afsm_engine_advance(engine, now, &n), AFSM_OK);
    assert_int_equal(table_keys(engine), 0);
    assert_int_equal(engine_slots_in_use(engine), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- 6. a storm of every write racing the grouped reaper ---------------- */

#define STORM_USERS   24
#define STORM_RING    4096
#define STORM_WORKERS 3

typedef struct storm_ctx {
    ledger ledger;
    afsm_engine *engine;
    virtual_clock *clock;
    _Atomic uint64_t ring[STORM_RING][2]; /* recent session ids, racy on purpose */
    _Atomic unsigned ring_next;
    _Atomic int stop;
    _Atomic long workers_done;
    long ops;
    _Atomic uint64_t expired; /* what the advances reported */
} storm_ctx;

static _Thread_local unsigned callback_depth;

static void ring_put(storm_ctx *c, const afsm_uuid *id)
{
    uint64_t w[2];
    memcpy(w, id->bytes, 16);
    unsigned at = atomic_fetch_add_explicit(&c->ring_next, 1, memory_order_relaxed) % STORM_RING;
    atomic_store_explicit(&c->ring[at][0], w[0], memory_order_relaxed);
    atomic_store_explicit(&c->ring[at][1], w[1], memory_order_relaxed);
}

static afsm_uuid ring_get(storm_ctx *c, unsigned i)
{
    uint64_t w[2];
    w[0] = atomic_load_explicit(&c->ring[i % STORM_RING][0], memory_order_relaxed);
    w[1] = atomic_load_explicit(&c->ring[i % STORM_RING][1], memory_order_relaxed);
    afsm_uuid id;
    memcpy(id.bytes, w, 16);
    return id;
}

static unsigned next_rand(unsigned *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return *seed >> 8;
}

/* One random operation; statuses other than these are failures. */
static void storm_op(storm_ctx *c, unsigned *seed)
{
    afsm_engine *engine = c->engine;
    unsigned r = next_rand(seed);
    unsigned filled = atomic_load_explicit(&c->ring_next, memory_order_relaxed);
    afsm_uuid id = ring_get(c, next_rand(seed) % (filled < STORM_RING ? filled : STORM_RING));
    char user[16];
    snprintf(user, sizeof(user), "user%u", next_rand(seed) % STORM_USERS);
    afsm_status st;
    uint64_t remaining;
    switch (r % 11) {
    case 0:
    case 1:
    case 2: {
        afsm_uuid fresh;
        st = create_for(engine, user, 200 + next_rand(seed) % 1500, &fresh);
        THREAD_CHECK(st == AFSM_OK);
        ring_put(c, &fresh);
        break;
    }
    case 3:
        st = afsm_session_delete(engine, &id, "storm", 5);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND);
        break;
    case 4:
        if (next_rand(seed) % 8 == 0) {
            size_t n;
            st = afsm_session_delete_by_user(engine, user, strlen(user), NULL, 0, &n);
            THREAD_CHECK(st == AFSM_OK);
        }
        break;
    case 5:
    case 6:
        st = afsm_session_heartbeat(engine, &id, &remaining);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED || st == AFSM_ECLOSED);
        break;
    case 7: {
        afsm_update u;
        afsm_update_init(&u, AFSM_UPDATE_VERSION);
        u.fields = AFSM_UPDATE_STATE;
        u.state = next_rand(seed) % 2 ? AFSM_STATE_CLOSED : AFSM_STATE_ACTIVE;
        st = afsm_session_update(engine, &id, &u, NULL);
        if (!(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED || st == AFSM_ETRANSITION))
            fprintf(stderr, "update: %s\n", afsm_status_name(st));
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED || st == AFSM_ETRANSITION);
        break;
    }
    case 8: {
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        st = afsm_session_get(engine, &id, &info);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED);
        break;
    }
    case 10: {
        /* A pinned session, its counts deferred in the handle, expiring
         * in a group with the handle still held. */
        afsm_handle *h = NULL;
        st = afsm_handle_pin(engine, &id, &h);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED);
        if (st != AFSM_OK)
            break;
        afsm_stats delta = {.packets_received = 1, .bytes_received = 64};
        for (int k = 0; k < 4; k++) {
            uint64_t now;
            THREAD_CHECK(afsm_engine_now(engine, &now) == AFSM_OK);
            st = afsm_handle_packet(h, now, &delta, &remaining);
            THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED || st == AFSM_ECLOSED);
        }
        THREAD_CHECK(afsm_handle_release(h) == AFSM_OK);
        break;
    }
    default: {
        afsm_stats delta = {.packets_sent = 1, .bytes_sent = 100};
        st = afsm_session_add_stats(engine, &id, &delta);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED || st == AFSM_ECLOSED);
    }
    }
}

static void storm_event(void *arg, const afsm_event *ev)
{
    storm_ctx *c = arg;
    ledger_record(&c->ledger, ev);
    /* Expiries and closes (the reaper's groups) act on other sessions
     * while the group's other events wait: one level deep. */
    if ((ev->type == AFSM_EVENT_EXPIRED || ev->type == AFSM_EVENT_DELETED) && callback_depth == 0 &&
        !atomic_load_explicit(&c->stop, memory_order_relaxed)) {
        callback_depth++;
        unsigned seed;
        memcpy(&seed, ev->session_id.bytes + 12, sizeof(seed));
        storm_op(c, &seed);
        callback_depth--;
    }
}

static void *storm_worker(void *arg)
{
    storm_ctx *c = arg;
    unsigned seed = (unsigned)(uintptr_t)pthread_self();
    for (long i = 0; i < c->ops; i++)
        storm_op(c, &seed);
    atomic_fetch_add_explicit(&c->workers_done, 1, memory_order_release);
    return NULL;
}

static void *storm_reaper(void *arg)
{
    storm_ctx *c = arg;
    while (!atomic_load_explicit(&c->stop, memory_order_acquire)) {
        uint64_t now = atomic_fetch_add_explicit(&c->clock->now_ns, 20 * MS, memory_order_relaxed) + 20 * MS;
        size_t n;
        THREAD_CHECK(afsm_engine_advance(c->engine, now, &n) == AFSM_OK);
        atomic_fetch_add_explicit(&c->expired, n, memory_order_relaxed);
    }
    return NULL;
}

static void run_storm(unsigned shards, int evict)
{
    static storm_ctx c;
    memset(&c, 0, sizeof(c));
    ledger_init(&c.ledger);
    c.ops = 20000;
    virtual_clock clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = shards;
    cfg.idle_timeout_ms = 150;
    cfg.close_linger_ms = evict ? 0 : 100;
    cfg.max_lifetime_ms = 900;
    cfg.max_sessions_per_user = evict ? 6 : 0;
    cfg.limit_policy = AFSM_LIMIT_EVICT_OLDEST;
    cfg.on_event = storm_event;
    cfg.event_ctx = &c;
    afsm_engine *engine = open_engine(&clock, &cfg);
    c.engine = engine;
    c.clock = &clock;
    for (unsigned i = 0; i < 256; i++) {
        afsm_uuid id;
        assert_int_equal(create_for(engine, "seed", 300, &id), AFSM_OK);
        ring_put(&c, &id);
    }
    /* Two advancing threads: their passes and groups contend too. */
    pthread_t workers[STORM_WORKERS], reapers[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&reapers[i], NULL, storm_reaper, &c), 0);
    for (int i = 0; i < STORM_WORKERS; i++)
        assert_int_equal(pthread_create(&workers[i], NULL, storm_worker, &c), 0);
    int finished = spin_until(&c.workers_done, STORM_WORKERS, 120);
    atomic_store_explicit(&c.stop, 1, memory_order_release);
    for (int i = 0; i < STORM_WORKERS; i++)
        pthread_join(workers[i], NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(reapers[i], NULL);
    assert_true(finished);
    /* Past every lifetime: everything left ends now, each exactly once. */
    uint64_t now = virtual_clock_read(&clock) + 60 * SEC;
    virtual_clock_set(&clock, now);
    size_t n;
    for (int round = 0; round < 2; round++) {
        assert_int_equal(afsm_engine_advance(engine, now, &n), AFSM_OK);
        c.expired += n;
    }
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, 0);
    uint64_t pinned = 1;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    for (int s = 0; s < AFSM_STATE_COUNT; s++)
        assert_int_equal(counts.by_state[s], 0);
    afsm_metrics m;
    memset(&m, 0, sizeof(m));
    m.version = AFSM_METRICS_VERSION;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    uint64_t deleted = 0;
    for (int r = 0; r < AFSM_DELETE_REASON_COUNT; r++)
        deleted += m.deleted_total[r];
    assert_int_equal(m.created_total, deleted);
    /* Every counter agrees with the events, and with what advances said. */
    assert_int_equal(m.created_total, c.ledger.by_type[AFSM_EVENT_CREATED]);
    assert_int_equal(m.deleted_total[AFSM_DELETE_EXPIRED], c.ledger.by_type[AFSM_EVENT_EXPIRED]);
    assert_int_equal(m.expired_total, c.ledger.by_type[AFSM_EVENT_EXPIRED]);
    assert_int_equal(m.expired_total, atomic_load(&c.expired));
    assert_int_equal(deleted - m.deleted_total[AFSM_DELETE_EXPIRED], c.ledger.by_type[AFSM_EVENT_DELETED]);
    assert_int_equal(m.idle_transitions_total, c.ledger.idle_events);
    assert_int_equal(engine_slots_in_use(engine), 0);
    assert_int_equal(table_keys(engine), 0);
    ledger_check_all_ended(&c.ledger);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    ledger_free(&c.ledger);
}

static void test_storm_one_shard(void **state)
{
    (void)state;
    run_storm(1, 1);
}

static void test_storm_many_shards_evicting(void **state)
{
    (void)state;
    run_storm(128, 1);
}

/* The most shards an engine has: a group's lock set spans the whole bitmap. */
static void test_storm_most_shards(void **state)
{
    (void)state;
    run_storm(4096, 1);
}

static void test_storm_many_shards_lingering(void **state)
{
    (void)state;
    run_storm(16, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_callback_acts_on_its_own_group),
        cmocka_unit_test(test_nested_advance_keeps_idle_before_expired),
        cmocka_unit_test(test_idle_and_expired_in_one_advance),
        cmocka_unit_test(test_wide_batch_changed_from_callback),
        cmocka_unit_test(test_advance_allocation_failures),
        cmocka_unit_test(test_nested_advance_allocation_failures),
        cmocka_unit_test(test_no_idle_shown_when_the_batch_cannot_grow),
        cmocka_unit_test(test_mixed_pass_allocation_failures),
        cmocka_unit_test(test_failure_observer_may_allocate),
        cmocka_unit_test(test_nested_idle_allocation_failures),
        cmocka_unit_test(test_emptied_users_allocation_failures),
        cmocka_unit_test(test_close_during_grouped_pass),
        cmocka_unit_test(test_reaper_idle_batches_race_writers),
        cmocka_unit_test(test_reaper_allocation_failures_race_writers),
        cmocka_unit_test(test_failed_creates_leave_no_key),
        cmocka_unit_test(test_storm_one_shard),
        cmocka_unit_test(test_storm_many_shards_evicting),
        cmocka_unit_test(test_storm_many_shards_lingering),
        cmocka_unit_test(test_storm_most_shards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
