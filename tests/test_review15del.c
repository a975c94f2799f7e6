/*
 * test_review15del.c: a reviewer's attacks on issue 15's single delete path
 * (8c95c64: shards found once, the connection table's key removed first,
 * no event capture without a callback, references dropped through the home
 * shard found once; edb3f38: a table removal finds the stored key by its
 * address).
 *
 * What a user relies on, checked here: a deleted session, once a read
 * reports it gone by any index (id, connection id, user list), is gone by
 * every other; a create reusing the connection id of a session being
 * deleted succeeds only once that session is gone by its id too; pinned
 * handles released before, during or after a delete (on another thread)
 * and a handle that outlives the engine's close neither crash nor leak;
 * each removal (delete, delete by user, close, expiry by the
 * grouped reaper) delivers exactly one DELETED or EXPIRED event with its
 * reason and user id; counts and metrics stay exact through delete and
 * expiry storms with allocation failures injected.
 *
 * The race tests were checked against mutants of core/mem/write.c (the
 * record marked removed after its indexes lose it; a delete by user not
 * dropping its snapshot's reference; no DELETED capture with a callback):
 * each mutant fails here.
 *
 * Threads wait on conditions with deadlines, never sleep. Internal headers
 * are included to count slab slots in use.
 */
#include "test_support.h"

#include <pthread.h>
#include <stdlib.h>

#include "engine.h"
#include "mem/mem_store.h"
#include "mem/shard.h"
#include "mem/slab.h"
#include "mem_inspect.h"
#include "util/alloc.h"

/* ---- helpers ------------------------------------------------------------ */

/* Slots in use once every deferred free has run (an advance reclaims). */
static size_t slots_in_use(afsm_engine *engine, virtual_clock *clock)
{
    size_t expired;
    assert_int_equal(afsm_engine_advance(engine, virtual_clock_read(clock), &expired), AFSM_OK);
    assert_int_equal(afsm_engine_advance(engine, virtual_clock_read(clock), &expired), AFSM_OK);
    return engine_slots_in_use(engine);
}

static int same_id(const afsm_uuid *a, const afsm_uuid *b)
{
    return memcmp(a->bytes, b->bytes, sizeof(a->bytes)) == 0;
}

/* ---- (1) readers racing deletes ---------------------------------------- */

#define RACE_SESSIONS 400
#define RACE_USERS    4
#define PAGE          500

typedef struct race {
    afsm_engine *engine;
    afsm_session_info s[RACE_SESSIONS];
    _Atomic long deleted; /* deletes done */
    _Atomic long ready;
    _Atomic long failures;
    char failure[256];
} race;

static const char *race_user(int i)
{
    static const char *users[RACE_USERS] = {"u0", "u1", "u2", "u3"};
    return users[i % RACE_USERS];
}

static void race_fail(race *r, const char *what, int i)
{
    if (atomic_fetch_add(&r->failures, 1) == 0)
        snprintf(r->failure, sizeof(r->failure), "session %d: %s", i, what);
}

/* One user's list: fails on a session this reader saw gone before the
 * listing started. */
static void race_check_list(race *r, int u, const unsigned char *gone, afsm_session_info *page)
{
    afsm_list_filter f;
    afsm_list_filter_init(&f, AFSM_LIST_FILTER_VERSION);
    f.user_id = race_user(u);
    f.user_id_len = strlen(f.user_id);
    f.limit = PAGE;
    for (;;) {
        size_t count = 0;
        uint64_t total = 0;
        afsm_uuid next;
        for (size_t k = 0; k < PAGE; k++)
            page[k].version = AFSM_SESSION_INFO_VERSION;
        if (afsm_session_list(r->engine, &f, page, PAGE, &count, &total, &next) != AFSM_OK) {
            race_fail(r, "list failed", -1);
            return;
        }
        for (size_t k = 0; k < count; k++)
            for (int i = u; i < RACE_SESSIONS; i += RACE_USERS)
                if (same_id(&page[k].session_id, &r->s[i].session_id)) {
                    if (gone[i])
                        race_fail(r, "listed for its user after a read saw it gone", i);
                    break;
                }
        static const afsm_uuid nil;
        if (same_id(&next, &nil))
            return;
        f.cursor = next;
    }
}

/* Reads one session by both indexes, alternating which goes first, while
 * the deleter removes it: once either reports it gone, every later read
 * by either must too (the record is marked removed before any index loses
 * it). Then the next session. */
static void *race_reader(void *arg)
{
    race *r = arg;
    unsigned char *gone = calloc(RACE_SESSIONS, 1);
    afsm_session_info *page = calloc(PAGE, sizeof(*page));
    uint64_t deadline = real_ns() + 30 * SEC;
    for (int i = 0; i < RACE_SESSIONS && atomic_load(&r->failures) == 0; i++) {
        atomic_fetch_add(&r->ready, 1);
        int after = 0; /* reads since it was first seen gone */
        for (unsigned n = 0; after < 64; n++) {
            if (real_ns() > deadline) {
                race_fail(r, "the delete never showed", i);
                break;
            }
            afsm_session_info got = AFSM_SESSION_INFO_INIT;
            for (int half = 0; half < 2; half++) {
                afsm_status st;
                if ((n + (unsigned)half) % 2 == 0) {
                    st = afsm_session_get_by_connection(r->engine, &r->s[i].connection_id, &got);
                    if (st == AFSM_OK && !same_id(&got.session_id, &r->s[i].session_id))
                        race_fail(r, "get_by_connection returned another session", i);
                    if (st == AFSM_OK && gone[i])
                        race_fail(r, "present by connection after a read saw it gone", i);
                } else {
                    st = afsm_session_get(r->engine, &r->s[i].session_id, &got);
                    if (st == AFSM_OK && !same_id(&got.connection_id, &r->s[i].connection_id))
                        race_fail(r, "get by id returned another connection id", i);
                    if (st == AFSM_OK && gone[i])
                        race_fail(r, "present by id after a read saw it gone", i);
                }
                if (st == AFSM_ENOTFOUND)
                    gone[i] = 1;
                else if (st != AFSM_OK)
                    race_fail(r, "get: unexpected status", i);
            }
            /* A pin (by either index) takes a reference only from a
             * session still present: never from one seen gone. */
            if (n % 4 == 3) {
                afsm_handle *h = NULL;
                afsm_status st = n % 8 == 3 ? afsm_handle_pin_by_connection(r->engine, &r->s[i].connection_id, &h)
                                            : afsm_handle_pin(r->engine, &r->s[i].session_id, &h);
                if (st == AFSM_OK) {
                    if (gone[i])
                        race_fail(r, "pinned after a read saw it gone", i);
                    afsm_handle_release(h);
                } else if (st == AFSM_ENOTFOUND) {
                    gone[i] = 1;
                } else {
                    race_fail(r, "pin: unexpected status", i);
                }
            }
            after += gone[i];
        }
        if (i % 50 == 49)
            race_check_list(r, i % RACE_USERS, gone, page);
    }
    free(page);
    free(gone);
    return NULL;
}

static void *race_deleter(void *arg)
{
    race *r = arg;
    for (int i = 0; i < RACE_SESSIONS; i++) {
        /* Both readers on session i before it goes. */
        if (!spin_until(&r->ready, 2L * (i + 1), 10)) {
            race_fail(r, "readers stopped", i);
            break;
        }
        if (afsm_session_delete(r->engine, &r->s[i].session_id, "gone", 4) != AFSM_OK)
            race_fail(r, "delete did not return AFSM_OK", i);
        atomic_fetch_add(&r->deleted, 1);
    }
    return NULL;
}

static void test_readers_racing_deletes_see_one_removal(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg = {0};
    cfg.shard_count = 4;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    race *r = calloc(1, sizeof(*r));
    r->engine = engine;
    for (int i = 0; i < RACE_SESSIONS; i++)
        r->s[i] = create_session(engine, race_user(i));
    pthread_t readers[2], deleter;
    for (int t = 0; t < 2; t++)
        assert_int_equal(pthread_create(&readers[t], NULL, race_reader, r), 0);
    assert_int_equal(pthread_create(&deleter, NULL, race_deleter, r), 0);
    pthread_join(deleter, NULL);
    for (int t = 0; t < 2; t++)
        pthread_join(readers[t], NULL);
    if (atomic_load(&r->failures) != 0)
        fail_msg("%ld failures, first: %s", (long)atomic_load(&r->failures), r->failure);
    uint64_t pinned;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    assert_int_equal(live_sessions(engine), 0);
    assert_int_equal(slots_in_use(engine, &clock), 0);
    free(r);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- (1b) a create reusing the connection id of a session being deleted - */

#define REUSE_ROUNDS 300

typedef struct reuse {
    afsm_engine *engine;
    afsm_session_info old;
    _Atomic long round;   /* the round the creator may start */
    _Atomic long created; /* rounds whose create succeeded */
    _Atomic long failures;
    char failure[256];
} reuse;

static void *reuse_creator(void *arg)
{
    reuse *r = arg;
    for (long round = 1; round <= REUSE_ROUNDS; round++) {
        if (!spin_until(&r->round, round, 10))
            break;
        afsm_uuid conn;
        afsm_create_options o = make_options("reuser", "10.1.2.3", &conn);
        o.connection_id = r->old.connection_id;
        uint64_t deadline = real_ns() + 10 * SEC;
        for (;;) {
            afsm_session_info fresh = AFSM_SESSION_INFO_INIT;
            afsm_status st = afsm_session_create(r->engine, &o, &fresh);
            if (st == AFSM_OK) {
                /* The connection id is free: the old session must be gone
                 * by its id as well, never both present. */
                afsm_session_info got = AFSM_SESSION_INFO_INIT;
                if (afsm_session_get(r->engine, &r->old.session_id, &got) != AFSM_ENOTFOUND &&
                    atomic_fetch_add(&r->failures, 1) == 0)
                    snprintf(r->failure, sizeof(r->failure),
                             "round %ld: create took the connection id while the "
                             "old session was still found by id",
                             round);
                afsm_session_info by_conn = AFSM_SESSION_INFO_INIT;
                if ((afsm_session_get_by_connection(r->engine, &o.connection_id, &by_conn) != AFSM_OK ||
                     !same_id(&by_conn.session_id, &fresh.session_id)) &&
                    atomic_fetch_add(&r->failures, 1) == 0)
                    snprintf(r->failure, sizeof(r->failure),
                             "round %ld: the connection id does not lead to the new "
                             "session",
                             round);
                afsm_session_delete(r->engine, &fresh.session_id, NULL, 0);
                break;
            }
            if (st != AFSM_EEXISTS || real_ns() > deadline) {
                if (atomic_fetch_add(&r->failures, 1) == 0)
                    snprintf(r->failure, sizeof(r->failure), "round %ld: create returned %d", round, (int)st);
                break;
            }
        }
        atomic_store(&r->created, round);
    }
    return NULL;
}

static void test_create_reusing_connection_races_delete(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg = {0};
    cfg.shard_count = 4;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    reuse *r = calloc(1, sizeof(*r));
    r->engine = engine;
    pthread_t creator;
    assert_int_equal(pthread_create(&creator, NULL, reuse_creator, r), 0);
    for (long round = 1; round <= REUSE_ROUNDS && atomic_load(&r->failures) == 0; round++) {
        r->old = create_session(engine, "owner");
        atomic_store(&r->round, round);
        assert_int_equal(afsm_session_delete(engine, &r->old.session_id, NULL, 0), AFSM_OK);
        assert_true(spin_until(&r->created, round, 10));
    }
    atomic_store(&r->round, REUSE_ROUNDS + 1);
    pthread_join(creator, NULL);
    if (atomic_load(&r->failures) != 0)
        fail_msg("%s", r->failure);
    assert_int_equal(live_sessions(engine), 0);
    assert_int_equal(slots_in_use(engine, &clock), 0);
    free(r);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- (2) pinned handles around a delete --------------------------------- */

#define PIN_SESSIONS 400

typedef struct pins {
    afsm_engine *engine;
    afsm_session_info s[PIN_SESSIONS];
    afsm_handle *h[PIN_SESSIONS];
    _Atomic long pinned; /* handles pinned by the pinning thread */
    _Atomic long deleted;
    _Atomic long failures;
} pins;

/* Pins each session, uses the handle while the main thread deletes, and
 * releases it: some before their session's delete, some during, some
 * after. */
static void *pin_worker(void *arg)
{
    pins *p = arg;
    for (int i = 0; i < PIN_SESSIONS; i++) {
        if (afsm_handle_pin(p->engine, &p->s[i].session_id, &p->h[i]) != AFSM_OK)
            atomic_fetch_add(&p->failures, 1);
        atomic_store(&p->pinned, i + 1);
    }
    for (int i = 0; i < PIN_SESSIONS; i++) {
        if (i % 3 == 2)
            spin_until(&p->deleted, i + 1, 10); /* after its delete */
        afsm_stats delta = {.packets_sent = 1, .bytes_sent = 100};
        for (int k = 0; k < 4; k++) {
            uint64_t remaining;
            afsm_status st = afsm_handle_heartbeat(p->h[i], &remaining);
            if (st != AFSM_OK && st != AFSM_ENOTFOUND)
                atomic_fetch_add(&p->failures, 1);
            st = afsm_handle_add_stats(p->h[i], &delta);
            if (st != AFSM_OK && st != AFSM_ENOTFOUND)
                atomic_fetch_add(&p->failures, 1);
        }
        if (afsm_handle_release(p->h[i]) != AFSM_OK)
            atomic_fetch_add(&p->failures, 1);
    }
    return NULL;
}

static void test_handles_released_around_deletes(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg = {0};
    cfg.shard_count = 4;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    pins *p = calloc(1, sizeof(*p));
    p->engine = engine;
    for (int i = 0; i < PIN_SESSIONS; i++)
        p->s[i] = create_session(engine, i % 2 ? "even" : "odd");
    pthread_t worker;
    assert_int_equal(pthread_create(&worker, NULL, pin_worker, p), 0);
    assert_true(spin_until(&p->pinned, PIN_SESSIONS, 10));
    for (int i = 0; i < PIN_SESSIONS; i++) {
        assert_int_equal(afsm_session_delete(engine, &p->s[i].session_id, NULL, 0), AFSM_OK);
        atomic_store(&p->deleted, i + 1);
    }
    pthread_join(worker, NULL);
    assert_int_equal(atomic_load(&p->failures), 0);
    uint64_t pinned;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    assert_int_equal(live_sessions(engine), 0);
    assert_int_equal(slots_in_use(engine, &clock), 0);
    free(p);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

static void test_handle_outliving_its_delete_and_a_refused_close(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg = {0};
    cfg.shard_count = 2;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    afsm_session_info a = create_session(engine, "keeper");
    afsm_handle *h;
    assert_int_equal(afsm_handle_pin(engine, &a.session_id, &h), AFSM_OK);
    assert_int_equal(afsm_session_delete(engine, &a.session_id, NULL, 0), AFSM_OK);
    /* The record stays under the handle, removed. */
    assert_int_equal(slots_in_use(engine, &clock), 1);
    uint64_t remaining;
    assert_int_equal(afsm_handle_heartbeat(h, &remaining), AFSM_ENOTFOUND);
    assert_int_equal(afsm_engine_close(engine), AFSM_EBUSY);
    /* The refused close changed nothing: the engine still works. */
    afsm_session_info b = create_session(engine, "keeper");
    assert_int_equal(afsm_session_delete(engine, &b.session_id, NULL, 0), AFSM_OK);
    afsm_uuid id;
    assert_int_equal(afsm_handle_session_id(h, &id), AFSM_OK);
    assert_true(same_id(&id, &a.session_id));
    assert_int_equal(afsm_handle_release(h), AFSM_OK);
    assert_int_equal(slots_in_use(engine, &clock), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- (3) events ----------------------------------------------------------- */

#define EV_SESSIONS 600

typedef struct ev_log {
    afsm_session_info *s;
    _Atomic long deleted[EV_SESSIONS]; /* DELETED events per session */
    _Atomic long by_reason[3];         /* "a", "b", "user" */
    _Atomic long bad;
    _Atomic long other;
} ev_log;

static ev_log *log_now;

static int ev_index(const afsm_uuid *id)
{
    for (int i = 0; i < EV_SESSIONS; i++)
        if (same_id(&log_now->s[i].session_id, id))
            return i;
    return -1;
}

static void on_event(void *ctx, const afsm_event *e)
{
    ev_log *l = ctx;
    if (e->type != AFSM_EVENT_DELETED) {
        atomic_fetch_add(&l->other, 1);
        return;
    }
    int i = ev_index(&e->session_id);
    if (i < 0 || e->user_id_len != 4 || memcmp(e->user_id, "evus", 4) != 0 ||
        !same_id(&e->connection_id, &l->s[i].connection_id)) {
        atomic_fetch_add(&l->bad, 1);
        return;
    }
    atomic_fetch_add(&l->deleted[i], 1);
    if (e->reason_len == 1 && e->reason[0] == 'a')
        atomic_fetch_add(&l->by_reason[0], 1);
    else if (e->reason_len == 1 && e->reason[0] == 'b')
        atomic_fetch_add(&l->by_reason[1], 1);
    else if (e->reason_len == 4 && memcmp(e->reason, "user", 4) == 0)
        atomic_fetch_add(&l->by_reason[2], 1);
    else
        atomic_fetch_add(&l->bad, 1);
}

typedef struct ev_deleter {
    afsm_engine *engine;
    ev_log *log;
    const char *reason;
    int from, step;
    _Atomic long *start;
    long ok;
} ev_deleter;

static void *ev_delete_all(void *arg)
{
    ev_deleter *d = arg;
    spin_until(d->start, 1, 10);
    for (int n = 0; n < EV_SESSIONS; n++) {
        int i = (d->from + n * d->step + EV_SESSIONS) % EV_SESSIONS;
        afsm_status st = afsm_session_delete(d->engine, &d->log->s[i].session_id, d->reason, 1);
        if (st == AFSM_OK)
            d->ok++;
        else if (st != AFSM_ENOTFOUND)
            atomic_fetch_add(&d->log->bad, 1);
    }
    return NULL;
}

typedef struct ev_user_deleter {
    afsm_engine *engine;
    _Atomic long *start;
    size_t removed;
    afsm_status status;
} ev_user_deleter;

static void *ev_delete_user(void *arg)
{
    ev_user_deleter *d = arg;
    spin_until(d->start, 1, 10);
    d->status = afsm_session_delete_by_user(d->engine, "evus", 4, "user", 4, &d->removed);
    return NULL;
}

static void test_one_deleted_event_per_removal(void **state)
{
    (void)state;
    virtual_clock clock;
    ev_log *l = calloc(1, sizeof(*l));
    l->s = calloc(EV_SESSIONS, sizeof(*l->s));
    log_now = l;
    afsm_config cfg = {0};
    cfg.shard_count = 4;
    cfg.on_event = on_event;
    cfg.event_ctx = l;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    for (int i = 0; i < EV_SESSIONS; i++)
        l->s[i] = create_session(engine, "evus");
    _Atomic long start = 0;
    ev_deleter a = {engine, l, "a", 0, 1, &start, 0};
    ev_deleter b = {engine, l, "b", EV_SESSIONS - 1, -1, &start, 0};
    ev_user_deleter u = {engine, &start, 0, AFSM_OK};
    pthread_t ta, tb, tu;
    assert_int_equal(pthread_create(&ta, NULL, ev_delete_all, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, ev_delete_all, &b), 0);
    assert_int_equal(pthread_create(&tu, NULL, ev_delete_user, &u), 0);
    atomic_store(&start, 1);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_join(tu, NULL);
    assert_int_equal(u.status, AFSM_OK);
    assert_int_equal(atomic_load(&l->bad), 0);
    assert_int_equal(a.ok + b.ok + (long)u.removed, EV_SESSIONS);
    for (int i = 0; i < EV_SESSIONS; i++)
        if (atomic_load(&l->deleted[i]) != 1)
            fail_msg("session %d: %ld DELETED events", i, (long)atomic_load(&l->deleted[i]));
    assert_int_equal(atomic_load(&l->by_reason[0]), a.ok);
    assert_int_equal(atomic_load(&l->by_reason[1]), b.ok);
    assert_int_equal(atomic_load(&l->by_reason[2]), (long)u.removed);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.deleted_total[AFSM_DELETE_REQUESTED], (uint64_t)(a.ok + b.ok));
    assert_int_equal(m.deleted_total[AFSM_DELETE_USER], (uint64_t)u.removed);
    assert_int_equal(m.sessions, 0);
    assert_int_equal(live_sessions(engine), 0);
    assert_int_equal(slots_in_use(engine, &clock), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    free(l->s);
    free(l);
}

/* ---- (4) counts and metrics after delete storms with failures ----------- */

static void test_counts_exact_after_delete_storm_with_alloc_failures(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg = {0};
    cfg.shard_count = 4;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    enum { LIVE_MAX = 256 };
    afsm_session_info live[LIVE_MAX];
    size_t n = 0;
    uint64_t created = 0, deleted = 0, by_user = 0;
    srand(15);
    for (int round = 0; round < 3000; round++) {
        alloc_fail_after(rand() % 4);
        int op = rand() % 3;
        if (op < 2 || n == 0) {
            if (n == LIVE_MAX)
                continue;
            afsm_uuid conn;
            afsm_create_options o = make_options(rand() % 2 ? "sa" : "sb", "10.0.0.9", &conn);
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            afsm_status st = afsm_session_create(engine, &o, &info);
            alloc_fail_reset();
            if (st == AFSM_OK) {
                live[n++] = info;
                created++;
            } else {
                assert_int_equal(st, AFSM_ENOMEM);
            }
        } else if (op == 2 && rand() % 8 == 0) {
            const char *user = rand() % 2 ? "sa" : "sb";
            size_t removed = 0;
            afsm_status st = afsm_session_delete_by_user(engine, user, 2, NULL, 0, &removed);
            alloc_fail_reset();
            if (st != AFSM_OK)
                assert_int_equal(st, AFSM_ENOMEM);
            /* Which went: ask by id (a failed call may have removed none). */
            size_t kept = 0;
            for (size_t i = 0; i < n; i++) {
                afsm_session_info got = AFSM_SESSION_INFO_INIT;
                if (afsm_session_get(engine, &live[i].session_id, &got) == AFSM_OK)
                    live[kept++] = live[i];
            }
            assert_int_equal(n - kept, removed);
            by_user += removed;
            n = kept;
        } else {
            size_t i = (size_t)rand() % n;
            afsm_status st = afsm_session_delete(engine, &live[i].session_id, NULL, 0);
            alloc_fail_reset();
            if (st == AFSM_OK) {
                live[i] = live[--n];
                deleted++;
            } else {
                assert_int_equal(st, AFSM_ENOMEM);
            }
        }
        if (round % 500 == 0) {
            assert_int_equal(live_sessions(engine), n);
            assert_int_equal(slots_in_use(engine, &clock), n);
        }
    }
    alloc_fail_reset();
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.sessions, n);
    assert_int_equal(m.created_total, created);
    assert_int_equal(m.deleted_total[AFSM_DELETE_REQUESTED], deleted);
    assert_int_equal(m.deleted_total[AFSM_DELETE_USER], by_user);
    assert_int_equal(m.duration_count, deleted + by_user);
    assert_int_equal(m.sessions_by_state[AFSM_STATE_CONNECTING], n);
    assert_int_equal(live_sessions(engine), n);
    assert_int_equal(slots_in_use(engine, &clock), n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(afsm_session_delete(engine, &live[i].session_id, NULL, 0), AFSM_OK);
    assert_int_equal(live_sessions(engine), 0);
    assert_int_equal(slots_in_use(engine, &clock), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* Expiry, deletes, deletes by user and creates interleaved, allocation
 * failures injected into each (the reaper's batch included): whatever
 * failed, every session that left is counted once, by one reason, and the
 * gauges, the counts and the slabs agree. */
static void test_counts_exact_after_expiry_and_delete_storm_with_alloc_failures(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg = {0};
    cfg.shard_count = 4;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    enum { IDS_MAX = 4096 };
    afsm_uuid *ids = calloc(IDS_MAX, sizeof(*ids));
    size_t n = 0;
    uint64_t created = 0, deleted = 0, advance_failures = 0;
    srand(151);
    for (int round = 0; round < 4000 && n < IDS_MAX; round++) {
        int op = rand() % 10;
        alloc_fail_after(rand() % 6);
        if (op < 5) {
            afsm_uuid conn;
            afsm_create_options o = make_options(rand() % 3 ? "ea" : "eb", "10.0.0.7", &conn);
            o.timeout_ms = 100 + (uint64_t)(rand() % 2000);
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            afsm_status st = afsm_session_create(engine, &o, &info);
            alloc_fail_reset();
            if (st == AFSM_OK) {
                ids[n++] = info.session_id;
                created++;
            } else {
                assert_int_equal(st, AFSM_ENOMEM);
            }
        } else if (op < 8 && n != 0) {
            afsm_status st = afsm_session_delete(engine, &ids[(size_t)rand() % n], NULL, 0);
            alloc_fail_reset();
            if (st == AFSM_OK)
                deleted++;
            else if (st != AFSM_ENOTFOUND)
                assert_int_equal(st, AFSM_ENOMEM);
        } else if (op == 8) {
            size_t removed = 0;
            afsm_status st = afsm_session_delete_by_user(engine, "eb", 2, NULL, 0, &removed);
            alloc_fail_reset();
            if (st != AFSM_OK)
                assert_int_equal(st, AFSM_ENOMEM);
        } else {
            virtual_clock_set(&clock, virtual_clock_read(&clock) + (uint64_t)(rand() % 400) * MS);
            size_t expired;
            afsm_status st = afsm_engine_advance(engine, virtual_clock_read(&clock), &expired);
            alloc_fail_reset();
            if (st != AFSM_OK) {
                assert_int_equal(st, AFSM_ENOMEM);
                advance_failures++;
            }
        }
        if (round % 400 == 0 || round == 3999) {
            afsm_metrics m = AFSM_METRICS_INIT;
            assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
            uint64_t gone = 0;
            for (int r = 0; r < AFSM_DELETE_REASON_COUNT; r++)
                gone += m.deleted_total[r];
            assert_int_equal(m.created_total, created);
            assert_int_equal(m.deleted_total[AFSM_DELETE_REQUESTED], deleted);
            assert_int_equal(m.expired_total, m.deleted_total[AFSM_DELETE_EXPIRED]);
            assert_int_equal(m.duration_count, gone);
            assert_int_equal(m.sessions, created - gone);
            uint64_t by_state = 0;
            for (int s = 0; s < AFSM_STATE_COUNT; s++)
                by_state += m.sessions_by_state[s];
            assert_int_equal(by_state, m.sessions);
            assert_int_equal(live_sessions(engine), m.sessions);
            /* Present: found by id, or found expired and not yet reaped. */
            uint64_t present = 0;
            for (size_t i = 0; i < n; i++) {
                afsm_session_info got = AFSM_SESSION_INFO_INIT;
                afsm_status st = afsm_session_get(engine, &ids[i], &got);
                present += st == AFSM_OK || st == AFSM_EEXPIRED;
            }
            assert_int_equal(present, m.sessions);
            assert_int_equal(slots_in_use(engine, &clock), m.sessions);
        }
    }
    alloc_fail_reset();
    /* The storm did reach the reaper's failures and its removals. */
    assert_true(advance_failures > 0);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_true(m.expired_total > 0);
    assert_true(m.deleted_total[AFSM_DELETE_USER] > 0);
    free(ids);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- (2b, 3b) closes, deletes, deferring handles and advances at once ----- */

#define CLOSE_SESSIONS 500

typedef struct close_race {
    afsm_engine *engine;
    virtual_clock *clock;
    afsm_session_info s[CLOSE_SESSIONS];
    _Atomic long deleted_events[CLOSE_SESSIONS];
    _Atomic long closed_reason, deleted_reason, bad;
    _Atomic long start, stop, pinned;
    long closes_ok, deletes_ok;
} close_race;

static void close_race_event(void *ctx, const afsm_event *e)
{
    close_race *c = ctx;
    if (e->type != AFSM_EVENT_DELETED)
        return;
    for (int i = 0; i < CLOSE_SESSIONS; i++) {
        if (!same_id(&c->s[i].session_id, &e->session_id))
            continue;
        atomic_fetch_add(&c->deleted_events[i], 1);
        if (e->user_id_len != 2 || memcmp(e->user_id, "cu", 2) != 0)
            atomic_fetch_add(&c->bad, 1);
        else if (e->reason_len == 6 && memcmp(e->reason, "closed", 6) == 0)
            atomic_fetch_add(&c->closed_reason, 1);
        else if (e->reason_len == 3 && memcmp(e->reason, "del", 3) == 0)
            atomic_fetch_add(&c->deleted_reason, 1);
        else
            atomic_fetch_add(&c->bad, 1);
        return;
    }
    atomic_fetch_add(&c->bad, 1);
}

static void *close_race_closer(void *arg)
{
    close_race *c = arg;
    spin_until(&c->start, 1, 10);
    afsm_update u;
    afsm_update_init(&u, AFSM_UPDATE_VERSION);
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_CLOSED;
    /* The even sessions first (only this thread takes them), then all of
     * them, racing the deleter. */
    for (int k = 0; k < CLOSE_SESSIONS + CLOSE_SESSIONS / 2; k++) {
        int i = k < CLOSE_SESSIONS / 2 ? 2 * k : k - CLOSE_SESSIONS / 2;
        afsm_status st = afsm_session_update(c->engine, &c->s[i].session_id, &u, NULL);
        if (st == AFSM_OK)
            c->closes_ok++;
        else if (st != AFSM_ENOTFOUND)
            atomic_fetch_add(&c->bad, 1);
    }
    return NULL;
}

static void *close_race_deleter(void *arg)
{
    close_race *c = arg;
    spin_until(&c->start, 1, 10);
    /* The odd sessions first (only this thread takes them), then all of
     * them from the other end, racing the closer. */
    for (int k = 0; k < CLOSE_SESSIONS + CLOSE_SESSIONS / 2; k++) {
        int i = k < CLOSE_SESSIONS / 2 ? 2 * k + 1 : CLOSE_SESSIONS - 1 - (k - CLOSE_SESSIONS / 2);
        afsm_status st = afsm_session_delete(c->engine, &c->s[i].session_id, "del", 3);
        if (st == AFSM_OK)
            c->deletes_ok++;
        else if (st != AFSM_ENOTFOUND)
            atomic_fetch_add(&c->bad, 1);
    }
    return NULL;
}

/* Owns a handle per session (its packets deferred in the handle), sends
 * through them while the sessions are closed and deleted, then releases. */
static void *close_race_packets(void *arg)
{
    close_race *c = arg;
    afsm_handle **h = calloc(CLOSE_SESSIONS, sizeof(*h));
    for (int i = 0; i < CLOSE_SESSIONS; i++)
        if (afsm_handle_pin(c->engine, &c->s[i].session_id, &h[i]) != AFSM_OK)
            atomic_fetch_add(&c->bad, 1);
    atomic_store(&c->pinned, 1);
    afsm_stats delta = {.packets_received = 1, .bytes_received = 60};
    for (int round = 0; round < 6; round++) {
        for (int i = 0; i < CLOSE_SESSIONS; i++) {
            if (h[i] == NULL)
                continue;
            afsm_status st = afsm_handle_packet(h[i], virtual_clock_read(c->clock), &delta, NULL);
            if (st != AFSM_OK && st != AFSM_ENOTFOUND && st != AFSM_ECLOSED)
                atomic_fetch_add(&c->bad, 1);
            if (round == 3 + i % 3) {
                afsm_handle_release(h[i]);
                h[i] = NULL;
            }
        }
    }
    for (int i = 0; i < CLOSE_SESSIONS; i++)
        if (h[i] != NULL)
            afsm_handle_release(h[i]);
    free(h);
    return NULL;
}

static void *close_race_advancer(void *arg)
{
    close_race *c = arg;
    while (!atomic_load(&c->stop)) {
        size_t expired;
        if (afsm_engine_advance(c->engine, virtual_clock_read(c->clock), &expired) != AFSM_OK)
            atomic_fetch_add(&c->bad, 1);
    }
    return NULL;
}

static void test_close_delete_handles_and_advance_race(void **state)
{
    (void)state;
    virtual_clock clock;
    close_race *c = calloc(1, sizeof(*c));
    afsm_config cfg;
    virtual_config(&clock, &cfg);
    cfg.shard_count = 4;
    cfg.close_linger_ms = 0;
    cfg.on_event = close_race_event;
    cfg.event_ctx = c;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    c->engine = engine;
    c->clock = &clock;
    for (int i = 0; i < CLOSE_SESSIONS; i++)
        c->s[i] = create_session(engine, "cu");
    pthread_t closer, deleter, packets, advancer;
    assert_int_equal(pthread_create(&packets, NULL, close_race_packets, c), 0);
    assert_true(spin_until(&c->pinned, 1, 10));
    assert_int_equal(pthread_create(&advancer, NULL, close_race_advancer, c), 0);
    assert_int_equal(pthread_create(&closer, NULL, close_race_closer, c), 0);
    assert_int_equal(pthread_create(&deleter, NULL, close_race_deleter, c), 0);
    atomic_store(&c->start, 1);
    pthread_join(closer, NULL);
    pthread_join(deleter, NULL);
    pthread_join(packets, NULL);
    atomic_store(&c->stop, 1);
    pthread_join(advancer, NULL);
    assert_int_equal(atomic_load(&c->bad), 0);
    for (int i = 0; i < CLOSE_SESSIONS; i++)
        if (atomic_load(&c->deleted_events[i]) != 1)
            fail_msg("session %d: %ld DELETED events", i, (long)atomic_load(&c->deleted_events[i]));
    /* A close that removes is a DELETED "closed"; the close itself may
     * also have found the session gone. */
    assert_true(atomic_load(&c->closed_reason) <= c->closes_ok);
    assert_int_equal(atomic_load(&c->deleted_reason), c->deletes_ok);
    assert_int_equal(atomic_load(&c->closed_reason) + c->deletes_ok, CLOSE_SESSIONS);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.deleted_total[AFSM_DELETE_CLOSED], (uint64_t)atomic_load(&c->closed_reason));
    assert_int_equal(m.deleted_total[AFSM_DELETE_REQUESTED], (uint64_t)c->deletes_ok);
    assert_int_equal(m.sessions, 0);
    for (int s = 0; s < AFSM_STATE_COUNT; s++)
        assert_int_equal(m.sessions_by_state[s], 0);
    uint64_t pinned;
    assert_int_equal(afsm_engine_pinned(engine, &pinned), AFSM_OK);
    assert_int_equal(pinned, 0);
    assert_int_equal(slots_in_use(engine, &clock), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    free(c);
}

/* ---- (3c) the grouped reaper racing deletes ------------------------------ */

#define REAP_SESSIONS 1000

typedef struct reap_race {
    afsm_engine *engine;
    virtual_clock *clock;
    afsm_session_info s[REAP_SESSIONS];
    _Atomic long ends[REAP_SESSIONS]; /* EXPIRED or DELETED events per session */
    _Atomic long expired_events, deleted_events, bad, start, stop, tried;
    long deletes_ok;
} reap_race;

static void reap_race_event(void *ctx, const afsm_event *e)
{
    reap_race *c = ctx;
    if (e->type != AFSM_EVENT_DELETED && e->type != AFSM_EVENT_EXPIRED)
        return;
    for (int i = 0; i < REAP_SESSIONS; i++) {
        if (!same_id(&c->s[i].session_id, &e->session_id))
            continue;
        atomic_fetch_add(&c->ends[i], 1);
        if (e->user_id_len != 2 || memcmp(e->user_id, "ru", 2) != 0 ||
            !same_id(&e->connection_id, &c->s[i].connection_id))
            atomic_fetch_add(&c->bad, 1);
        else if (e->type == AFSM_EVENT_EXPIRED)
            atomic_fetch_add(&c->expired_events, 1);
        else if (e->reason_len == 3 && memcmp(e->reason, "del", 3) == 0)
            atomic_fetch_add(&c->deleted_events, 1);
        else
            atomic_fetch_add(&c->bad, 1);
        return;
    }
    atomic_fetch_add(&c->bad, 1);
}

static void *reap_race_deleter(void *arg)
{
    reap_race *c = arg;
    spin_until(&c->start, 1, 10);
    for (int i = 0; i < REAP_SESSIONS; i++) {
        afsm_status st = afsm_session_delete(c->engine, &c->s[i].session_id, "del", 3);
        if (st == AFSM_OK)
            c->deletes_ok++;
        else if (st != AFSM_ENOTFOUND)
            atomic_fetch_add(&c->bad, 1);
        atomic_fetch_add(&c->tried, 1);
    }
    return NULL;
}

/* Moves time on in steps, so the wheels hand the reaper groups of due
 * sessions while the deleter removes the same ones. */
static void *reap_race_advancer(void *arg)
{
    reap_race *c = arg;
    /* From the deleter's first delete on, so both have sessions to take. */
    spin_until(&c->tried, 1, 10);
    while (!atomic_load(&c->stop)) {
        virtual_clock_set(c->clock, virtual_clock_read(c->clock) + 20 * MS);
        size_t expired;
        if (afsm_engine_advance(c->engine, virtual_clock_read(c->clock), &expired) != AFSM_OK)
            atomic_fetch_add(&c->bad, 1);
    }
    return NULL;
}

static void test_reaper_racing_deletes_one_end_each(void **state)
{
    (void)state;
    virtual_clock clock;
    reap_race *c = calloc(1, sizeof(*c));
    afsm_config cfg = {0};
    cfg.shard_count = 4;
    cfg.on_event = reap_race_event;
    cfg.event_ctx = c;
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    c->engine = engine;
    c->clock = &clock;
    for (int i = 0; i < REAP_SESSIONS; i++) {
        afsm_uuid conn;
        afsm_create_options o = make_options("ru", "10.0.0.5", &conn);
        o.timeout_ms = 100 + (uint64_t)(i % 50) * 20;
        c->s[i] = (afsm_session_info)AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &c->s[i]), AFSM_OK);
    }
    pthread_t deleter, advancer;
    assert_int_equal(pthread_create(&deleter, NULL, reap_race_deleter, c), 0);
    assert_int_equal(pthread_create(&advancer, NULL, reap_race_advancer, c), 0);
    atomic_store(&c->start, 1);
    pthread_join(deleter, NULL);
    /* The rest expire. */
    uint64_t deadline = real_ns() + 20 * SEC;
    while (live_sessions(engine) != 0 && real_ns() < deadline) {
    }
    atomic_store(&c->stop, 1);
    pthread_join(advancer, NULL);
    assert_int_equal(live_sessions(engine), 0);
    assert_int_equal(atomic_load(&c->bad), 0);
    for (int i = 0; i < REAP_SESSIONS; i++)
        if (atomic_load(&c->ends[i]) != 1)
            fail_msg("session %d: %ld EXPIRED/DELETED events", i, (long)atomic_load(&c->ends[i]));
    assert_int_equal(atomic_load(&c->deleted_events), c->deletes_ok);
    assert_int_equal(atomic_load(&c->expired_events) + c->deletes_ok, REAP_SESSIONS);
    afsm_metrics m = AFSM_METRICS_INIT;
    assert_int_equal(afsm_metrics_snapshot(engine, &m), AFSM_OK);
    assert_int_equal(m.deleted_total[AFSM_DELETE_REQUESTED], (uint64_t)c->deletes_ok);
    assert_int_equal(m.deleted_total[AFSM_DELETE_EXPIRED], (uint64_t)atomic_load(&c->expired_events));
    assert_int_equal(m.expired_total, (uint64_t)atomic_load(&c->expired_events));
    assert_int_equal(m.sessions, 0);
    assert_int_equal(slots_in_use(engine, &clock), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_readers_racing_deletes_see_one_removal),
        cmocka_unit_test(test_create_reusing_connection_races_delete),
        cmocka_unit_test(test_handles_released_around_deletes),
        cmocka_unit_test(test_handle_outliving_its_delete_and_a_refused_close),
        cmocka_unit_test(test_one_deleted_event_per_removal),
        cmocka_unit_test(test_counts_exact_after_delete_storm_with_alloc_failures),
        cmocka_unit_test(test_counts_exact_after_expiry_and_delete_storm_with_alloc_failures),
        cmocka_unit_test(test_close_delete_handles_and_advance_race),
        cmocka_unit_test(test_reaper_racing_deletes_one_end_each),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
