/*
 * test_etcd_review_evict.c: review of 95b3e3b (AFSM_LIMIT_EVICT_OLDEST on
 * the etcd store, hold_events placeholders for unseen sessions).
 *
 * Linker wraps (etcd_fault_support.h): etcd_call and etcd_call_until (a
 * txn of an armed thread waits at a gate before it is sent, or after its
 * answer came, then goes on as it would) and etcd_stream (a paused watch).
 *
 * Shared state: each engine's event log is guarded by its own lock; gates
 * by theirs; the paused client is an atomic pointer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "afsm.h"
#include "engine.h"
#include "etcd/etcd_store.h"
#include "etcd/keys.h"
#include "etcd_test_support.h"
#define WRAP_ETCD_CALL_UNTIL
#include "etcd_fault_support.h"

/* ---- events -------------------------------------------------------------------- */

#define LOG_MAX 128

typedef struct event_log {
    pthread_mutex_t lock;
    uint32_t types[LOG_MAX];
    afsm_uuid ids[LOG_MAX];
    char reasons[LOG_MAX][16];
    size_t count;
} event_log;

/* Armed: the first DELETED of hold_deleted_id (on whichever thread fires
 * it) waits at deleted_gate until the test opens it. */
static hold_gate deleted_gate;
static afsm_uuid hold_deleted_id;
static atomic_int hold_deleted_armed;

static void on_event(void *ctx, const afsm_event *ev)
{
    event_log *log = ctx;
    if (ev->type == AFSM_EVENT_DELETED && memcmp(&ev->session_id, &hold_deleted_id, sizeof(hold_deleted_id)) == 0 &&
        atomic_exchange(&hold_deleted_armed, 0)) {
        on_event(ctx, &(afsm_event){.type = ev->type, .session_id = ev->session_id, .reason = ev->reason});
        gate_wait(&deleted_gate);
        return;
    }
    pthread_mutex_lock(&log->lock);
    if (log->count < LOG_MAX) {
        log->types[log->count] = ev->type;
        log->ids[log->count] = ev->session_id;
        snprintf(log->reasons[log->count], sizeof(log->reasons[0]), "%s", ev->reason != NULL ? ev->reason : "");
        log->count++;
    }
    pthread_mutex_unlock(&log->lock);
}

static void events_of(event_log *log, const afsm_uuid *id, char *out, size_t size)
{
    out[0] = '\0';
    pthread_mutex_lock(&log->lock);
    for (size_t i = 0; i < log->count; i++) {
        if (memcmp(&log->ids[i], id, sizeof(*id)) != 0)
            continue;
        size_t n = strlen(out);
        if (log->types[i] == AFSM_EVENT_CREATED)
            snprintf(out + n, size - n, "%sC", n > 0 ? " " : "");
        else if (log->types[i] == AFSM_EVENT_DELETED)
            snprintf(out + n, size - n, "%sD:%s", n > 0 ? " " : "", log->reasons[i]);
        else
            snprintf(out + n, size - n, "%s?%u", n > 0 ? " " : "", log->types[i]);
    }
    pthread_mutex_unlock(&log->lock);
}

static afsm_engine *open_logged(const char *prefix, uint32_t cap, event_log *log)
{
    pthread_mutex_init(&log->lock, NULL);
    log->count = 0;
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.default_timeout_ms = 120000;
    cfg.max_sessions_per_user = cap;
    cfg.limit_policy = AFSM_LIMIT_EVICT_OLDEST;
    cfg.on_event = on_event;
    cfg.event_ctx = log;
    afsm_engine *e;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    return e;
}

/* id's track entry on e: 1 with *inflight and *mod_revision. */
static int tracked(afsm_engine *e, const afsm_uuid *id, int *inflight, int64_t *mod_revision)
{
    etcd_store *es = store_of(e);
    track_info ti;
    pthread_mutex_lock(&es->apply_lock);
    int found = track_get(&es->tracks, id, &ti);
    pthread_mutex_unlock(&es->apply_lock);
    if (found) {
        *inflight = ti.inflight;
        *mod_revision = ti.mod_revision;
    }
    return found;
}

/* ---- threads --------------------------------------------------------------------- */

typedef struct call {
    afsm_engine *e;
    const char *user;
    hold_gate *before, *after; /* this thread's first txn */
    afsm_session_info out;
    afsm_status status;
    size_t removed;
} call;

static void *do_create(void *arg)
{
    call *c = arg;
    gate_before_txn = c->before;
    gate_after_txn = c->after;
    c->status = create(c->e, c->user, &c->out);
    return NULL;
}

static void *do_delete_by_user(void *arg)
{
    call *c = arg;
    gate_before_txn = c->before;
    gate_after_txn = c->after;
    c->status = afsm_session_delete_by_user(c->e, c->user, strlen(c->user), "logout", 6, &c->removed);
    return NULL;
}

/* ---- 1. a placeholder shared by two holders, removed by the first release ---------------- */

/*
 * Node a's watch is behind: it has not applied v (made on b). On a, a
 * delete by user of v's user reads v and holds its events (a placeholder),
 * then is slow to send its txn. Meanwhile a create at the cap on a evicts v
 * (holding v too: the placeholder's count is 2) and is slow to apply its
 * answer. The delete by user then sends, finds v gone (AFSM_OK, 0 removed)
 * and releases v: release_events removes the placeholder whole (mod
 * revision 0), though the evicting create still counts on it. The watch,
 * no longer held, applies v's put (CREATED) and its eviction (DELETED), and
 * stops at the new session's put (held by the create), in the middle of the
 * eviction's revision. The create then applies its result: the watch is not
 * past the revision and the replica lacks v, so v is "unseen" and applied
 * and deleted again: a second CREATED and a second DELETED of v on a.
 */
static void test_shared_placeholder_released_early_doubles_events(void **state)
{
    (void)state;
    const char *prefix = "/rev1/";
    event_log log_a, log_b;
    afsm_engine *a = open_logged(prefix, 1, &log_a), *b = open_logged(prefix, 1, &log_b);
    pause_watch(a, prefix);
    afsm_session_info v, copy;
    assert_int_equal(create(b, "vic", &v), AFSM_OK);
    assert_int_equal(get(a, &v.session_id, &copy), AFSM_ENOTFOUND);

    hold_gate del_before, create_after;
    hold_gate_init(&del_before);
    hold_gate_init(&create_after);
    call del = {.e = a, .user = "vic", .before = &del_before};
    call cr = {.e = a, .user = "vic", .after = &create_after};
    pthread_t td, tc;
    assert_int_equal(pthread_create(&td, NULL, do_delete_by_user, &del), 0);
    WAIT_FOR(hold_gate_held(&del_before), 10000); /* v read and held; its txn not sent */
    int inflight = 0;
    int64_t mod = -1;
    assert_true(tracked(a, &v.session_id, &inflight, &mod));
    assert_int_equal(inflight, 1);
    assert_int_equal(mod, 0);

    assert_int_equal(pthread_create(&tc, NULL, do_create, &cr), 0);
    WAIT_FOR(hold_gate_held(&create_after), 10000); /* the eviction committed, not applied */
    assert_true(tracked(a, &v.session_id, &inflight, &mod));
    assert_int_equal(inflight, 2);

    hold_gate_open(&del_before);
    pthread_join(td, NULL);
    assert_int_equal(del.status, AFSM_OK);
    assert_int_equal(del.removed, 0);
    /* The evicting create still holds v: its placeholder must still be there. */
    int still_held = tracked(a, &v.session_id, &inflight, &mod);
    print_message("after the delete by user's release: v tracked=%d inflight=%d\n", still_held,
                  still_held ? inflight : -1);

    /* The watch catches up as far as it may: with v's placeholder gone, it
     * applies v's put and its eviction, then waits at the new session's put
     * (held by the create, in the eviction's revision). With v still held
     * (the fix), it waits at v's put: nothing to see yet. */
    resume_watch();
    int64_t now = etcd_revision();
    char seen[128];
    if (!still_held) {
        WAIT_FOR((events_of(&log_a, &v.session_id, seen, sizeof(seen)), strcmp(seen, "C D:evicted") == 0), 5000);
        assert_true(atomic_load(&store_of(a)->applied_revision) < now); /* in the middle of the eviction's revision */
    }
    events_of(&log_a, &v.session_id, seen, sizeof(seen));
    print_message("v on a before the create applies: \"%s\"\n", seen);

    hold_gate_open(&create_after);
    pthread_join(tc, NULL);
    assert_int_equal(cr.status, AFSM_OK);
    WAIT_FOR(atomic_load(&store_of(a)->applied_revision) >= now, 5000);
    events_of(&log_a, &v.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C D:evicted");
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* ---- 2. the same with two deletes by user, no eviction ----------------------------- */

/*
 * Two deletes by user of one user on node a, whose watch has not applied
 * the user's session x: both hold x (one placeholder, count 2). The first
 * is slow to send; the second deletes x and is slow to apply its answer.
 * The first then finds x gone (0 removed) and its release removes the
 * placeholder. The watch applies x's put (CREATED) and its deletion
 * (DELETED); its DELETED callback is slow (afsm.h allows a callback to
 * block), so the watch is between the keys of the delete's revision. The
 * second delete then applies its answer: the watch is not past the
 * revision, the replica lacks x: x applied and deleted again, a second
 * CREATED and DELETED.
 */
static void test_two_deletes_by_user_double_the_events(void **state)
{
    (void)state;
    const char *prefix = "/rev2/";
    event_log log_a, log_b;
    afsm_engine *a = open_logged(prefix, 0, &log_a), *b = open_logged(prefix, 0, &log_b);
    pause_watch(a, prefix);
    afsm_session_info x, copy;
    assert_int_equal(create(b, "dd", &x), AFSM_OK);
    assert_int_equal(get(a, &x.session_id, &copy), AFSM_ENOTFOUND);

    hold_gate first_before, second_after;
    hold_gate_init(&first_before);
    hold_gate_init(&second_after);
    hold_gate_init(&deleted_gate);
    call first = {.e = a, .user = "dd", .before = &first_before};
    call second = {.e = a, .user = "dd", .after = &second_after};
    pthread_t t1, t2;
    assert_int_equal(pthread_create(&t1, NULL, do_delete_by_user, &first), 0);
    WAIT_FOR(hold_gate_held(&first_before), 10000);
    assert_int_equal(pthread_create(&t2, NULL, do_delete_by_user, &second), 0);
    WAIT_FOR(hold_gate_held(&second_after), 10000); /* x deleted in etcd, not applied on a */
    int64_t now = etcd_revision();
    hold_gate_open(&first_before);
    pthread_join(t1, NULL);
    assert_int_equal(first.status, AFSM_OK);
    assert_int_equal(first.removed, 0);

    /* With x still held (the fix), the watch waits at x's put and no
     * DELETED comes before the second delete applies. */
    int inflight;
    int64_t mod;
    int still_held = tracked(a, &x.session_id, &inflight, &mod);
    print_message("after the first delete's release: x tracked=%d\n", still_held);
    /* Only a watch let go early fires x's DELETED before the second delete
     * applies: hold that one mid-revision (armed, the gate would hold the
     * second delete's own DELETED, on its thread, for the gate's 20 s). */
    hold_deleted_id = x.session_id;
    atomic_store(&hold_deleted_armed, !still_held);
    resume_watch();
    char seen[128];
    if (!still_held) {
        WAIT_FOR(hold_gate_held(&deleted_gate), 5000); /* the watch's DELETED, mid-revision */
        assert_true(atomic_load(&store_of(a)->applied_revision) < now);
    }
    hold_gate_open(&second_after);
    pthread_join(t2, NULL);
    assert_int_equal(second.status, AFSM_OK);
    assert_int_equal(second.removed, 1);
    hold_gate_open(&deleted_gate);
    WAIT_FOR(atomic_load(&store_of(a)->applied_revision) >= now, 5000);
    atomic_store(&hold_deleted_armed, 0);
    events_of(&log_a, &x.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C D:logout");
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* ---- 3. a create evicted before it applied its own answer -------------------------- */

/*
 * Cap 1, user "pair" has no session. On one node, create A takes the free
 * slot (no eviction, no evict_lock); its txn commits, and its thread is slow
 * to apply the answer (a gate after the answer). Create B on the same node
 * then finds the cap full and evicts A's session (the oldest, the only
 * one); its answer is held too. Both go on together, in either order.
 * 95b3e3b: B applied A's session as "unseen", with its CREATED and DELETED
 * on B's thread and a tombstone; A then applied its answer, the tombstone
 * dropped its put, and A returned AFSM_ENOTFOUND, with `out` unfilled, for
 * a create that etcd committed. On the memory store, A returns AFSM_OK and
 * its session is then evicted by B: so here, CREATED (on A's thread) and
 * DELETED "evicted" once each.
 */
static void test_a_create_evicted_before_it_applied_fails(void **state)
{
    (void)state;
    const char *prefix = "/rev3/";
    event_log log_a, log_b;
    afsm_engine *a = open_logged(prefix, 1, &log_a), *b = open_logged(prefix, 1, &log_b);
    hold_gate first_after, second_after;
    hold_gate_init(&first_after);
    hold_gate_init(&second_after);
    call first = {.e = a, .user = "pair", .after = &first_after};
    call second = {.e = a, .user = "pair", .after = &second_after};
    pthread_t t1, t2;
    assert_int_equal(pthread_create(&t1, NULL, do_create, &first), 0);
    WAIT_FOR(hold_gate_held(&first_after), 10000); /* committed in etcd, not applied on a */
    assert_int_equal(pthread_create(&t2, NULL, do_create, &second), 0);
    WAIT_FOR(hold_gate_held(&second_after), 10000); /* the eviction committed too */
    hold_gate_open(&second_after);
    hold_gate_open(&first_after);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    print_message("first create: status %d\n", first.status);
    assert_int_equal(first.status, AFSM_OK);
    assert_int_equal(second.status, AFSM_OK);
    char seen[128];
    events_of(&log_a, &first.out.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C D:evicted");
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&first_after);
    hold_gate_destroy(&second_after);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_placeholder_released_early_doubles_events),
        cmocka_unit_test(test_two_deletes_by_user_double_the_events),
        cmocka_unit_test(test_a_create_evicted_before_it_applied_fails),
    };
    return cmocka_run_group_tests_name("etcd store: review of 95b3e3b (evict-oldest)", tests, start_one, stop_cluster);
}
