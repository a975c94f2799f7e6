/*
 * test_etcd_evict.c: AFSM_LIMIT_EVICT_OLDEST on the etcd store, against a
 * real etcd (etcd_harness.h). A create at a user's full cap removes the
 * user's oldest session in its own txn (core/etcd/README.md, "create under
 * AFSM_LIMIT_EVICT_OLDEST"), so:
 * - the oldest goes, on every node, as DELETED "evicted"; the creating node
 *   fires the new session's CREATED first, on the calling thread, before
 *   create returns, as the memory store does;
 * - a create that fails (a taken connection id) evicts nothing;
 * - creates racing on two nodes for one user never hold it above the cap
 *   in etcd, and every node ends with the same sessions as etcd;
 * - a restore older than every session at the cap is AFSM_ELIMIT with
 *   nothing changed; a newer one evicts the oldest.
 * And a node removing a session its replica has not applied yet (made on
 * another node, its watch behind: delete by user and an eviction read
 * etcd, not the replica) still tells of it as of every other one, once
 * each: its CREATED, then its DELETED with the reason, on the calling
 * thread before the call returns; the watch, when it catches up, adds
 * nothing (core/etcd/store.c, apply_own_delete and hold_events). Those
 * tests failed before apply_own_delete applied an unseen session first:
 * the node fired the DELETED alone, never the CREATED.
 *
 * Linker wraps (etcd_fault_support.h): etcd_call (unused here) and
 * etcd_stream, to pause one engine's watch.
 *
 * Shared state: each engine's event log is guarded by its own lock; racer
 * threads write only their own slots of the status arrays; the paused
 * client is an atomic pointer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "afsm.h"
#include "engine.h"
#include "etcd/etcd_store.h"
#include "etcd/keys.h"
#include "etcd_test_support.h"
#include "etcd_fault_support.h"

#define LOG_MAX 512

typedef struct logged {
    uint32_t type;
    afsm_uuid id;
    char reason[16];
    pthread_t thread;
} logged;

/* One engine's events, in the order its callbacks saw them. With
 * delete_in_callback set, a CREATED of delete_user's session is deleted
 * from inside its callback (after it is logged). */
typedef struct event_log {
    pthread_mutex_t lock;
    logged entries[LOG_MAX];
    size_t count;
    afsm_engine *delete_in_callback;
    const char *delete_user;
    afsm_status callback_delete;
} event_log;

static void log_event(event_log *log, const afsm_event *ev);

static void on_event(void *ctx, const afsm_event *ev)
{
    event_log *log = ctx;
    log_event(log, ev);
    if (ev->type == AFSM_EVENT_CREATED && log->delete_in_callback != NULL && log->delete_user != NULL &&
        ev->user_id_len == strlen(log->delete_user) && memcmp(ev->user_id, log->delete_user, ev->user_id_len) == 0)
        log->callback_delete = afsm_session_delete(log->delete_in_callback, &ev->session_id, "from-callback", 13);
}

static void log_event(event_log *log, const afsm_event *ev)
{
    pthread_mutex_lock(&log->lock);
    if (log->count < LOG_MAX) {
        logged *l = &log->entries[log->count++];
        l->type = ev->type;
        l->id = ev->session_id;
        snprintf(l->reason, sizeof(l->reason), "%s", ev->reason != NULL ? ev->reason : "");
        l->thread = pthread_self();
    }
    pthread_mutex_unlock(&log->lock);
}

/* The position of the first event of type for id with reason (NULL: any),
 * -1 if none; *count: how many there are. */
static long find_event(event_log *log, uint32_t type, const afsm_uuid *id, const char *reason, size_t *count)
{
    long first = -1;
    size_t n = 0;
    pthread_mutex_lock(&log->lock);
    for (size_t i = 0; i < log->count; i++) {
        logged *l = &log->entries[i];
        if (l->type == type && memcmp(&l->id, id, sizeof(*id)) == 0 &&
            (reason == NULL || strcmp(l->reason, reason) == 0)) {
            if (first < 0)
                first = (long)i;
            n++;
        }
    }
    pthread_mutex_unlock(&log->lock);
    if (count != NULL)
        *count = n;
    return first;
}

static size_t events_of_type(event_log *log, uint32_t type, const char *reason)
{
    size_t n = 0;
    pthread_mutex_lock(&log->lock);
    for (size_t i = 0; i < log->count; i++)
        n += log->entries[i].type == type && (reason == NULL || strcmp(log->entries[i].reason, reason) == 0);
    pthread_mutex_unlock(&log->lock);
    return n;
}

/* The events of id, as "C" (CREATED) and "D:<reason>" (DELETED) joined by
 * spaces, in order: what the unseen tests compare. */
static void events_text(event_log *log, const afsm_uuid *id, char *out, size_t size)
{
    out[0] = '\0';
    pthread_mutex_lock(&log->lock);
    for (size_t i = 0; i < log->count; i++) {
        const logged *l = &log->entries[i];
        if (memcmp(&l->id, id, sizeof(*id)) != 0)
            continue;
        size_t n = strlen(out);
        const char *sep = n > 0 ? " " : "";
        if (l->type == AFSM_EVENT_CREATED)
            snprintf(out + n, size - n, "%sC", sep);
        else if (l->type == AFSM_EVENT_DELETED)
            snprintf(out + n, size - n, "%sD:%s", sep, l->reason);
        else
            snprintf(out + n, size - n, "%s?%u", sep, l->type);
    }
    pthread_mutex_unlock(&log->lock);
}

static void log_init(event_log *log)
{
    pthread_mutex_init(&log->lock, NULL);
    log->count = 0;
    log->delete_in_callback = NULL;
    log->delete_user = NULL;
}

static afsm_engine *open_evicting(const char *prefix, uint32_t cap, event_log *log)
{
    log_init(log);
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

/* The user's sessions as etcd holds them: its u/ keys. */
static long user_sessions_in_etcd(const char *prefix, const char *user)
{
    char key[96];
    snprintf(key, sizeof(key), "%su/%s/", prefix, user);
    return keys_in_etcd(key);
}

static size_t listed(afsm_engine *e, const char *user)
{
    afsm_list_filter f;
    assert_int_equal(afsm_list_filter_init(&f, AFSM_LIST_FILTER_VERSION), AFSM_OK);
    f.user_id = user;
    f.user_id_len = strlen(user);
    f.limit = 16;
    afsm_session_info out[16];
    for (size_t i = 0; i < 16; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    size_t count = 0;
    uint64_t total;
    assert_int_equal(afsm_session_list(e, &f, out, 16, &count, &total, NULL), AFSM_OK);
    return count;
}

/* ---- one eviction, seen by both nodes ---------------------------------------------- */

static void test_a_create_at_the_cap_evicts_the_oldest_on_every_node(void **state)
{
    (void)state;
    event_log log_a, log_b;
    afsm_engine *a = open_evicting("/ev1/", 2, &log_a), *b = open_evicting("/ev1/", 2, &log_b);
    afsm_session_info s1, s2, s3, copy;
    assert_int_equal(create(a, "alice", &s1), AFSM_OK);
    assert_int_equal(create(a, "alice", &s2), AFSM_OK);
    WAIT_FOR(get(b, &s2.session_id, &copy) == AFSM_OK, 5000);

    /* On the other node: the oldest (s1, made on a) goes. */
    assert_int_equal(create(b, "alice", &s3), AFSM_OK);
    size_t n;
    long created = find_event(&log_b, AFSM_EVENT_CREATED, &s3.session_id, NULL, &n);
    long deleted = find_event(&log_b, AFSM_EVENT_DELETED, &s1.session_id, "evicted", NULL);
    assert_true(created >= 0 && deleted > created); /* both before create returned, CREATED first */
    assert_true(pthread_equal(log_b.entries[deleted].thread, pthread_self()));
    assert_int_equal(get(b, &s1.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(get(b, &s2.session_id, &copy), AFSM_OK);

    /* etcd: the user at the cap, s1's keys gone. */
    assert_int_equal(user_sessions_in_etcd("/ev1/", "alice"), 2);
    assert_int_equal(sessions_in_etcd("/ev1/"), 2);
    assert_int_equal(keys_in_etcd("/ev1/c/"), 2);
    assert_int_equal(keys_in_etcd("/ev1/n/alice/"), 2);

    /* The creating node of s1 hears of it once, as an eviction. */
    WAIT_FOR(find_event(&log_a, AFSM_EVENT_DELETED, &s1.session_id, "evicted", NULL) >= 0, 5000);
    WAIT_FOR(get(a, &s3.session_id, &copy) == AFSM_OK, 5000);
    assert_int_equal(get(a, &s1.session_id, &copy), AFSM_ENOTFOUND);
    find_event(&log_a, AFSM_EVENT_DELETED, &s1.session_id, NULL, &n);
    assert_int_equal(n, 1);
    assert_int_equal(metrics_of(b).deleted_total[AFSM_DELETE_EVICTED], 1);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* A create that fails evicts nothing: the memory store's create is all or
 * nothing, and so is the txn that would evict. */
static void test_a_taken_connection_id_evicts_nothing(void **state)
{
    (void)state;
    event_log log;
    afsm_engine *e = open_evicting("/ev2/", 1, &log);
    afsm_session_info s1, other, copy;
    assert_int_equal(create(e, "alice", &s1), AFSM_OK);
    assert_int_equal(create_on(e, "alice", &s1.connection_id, &other), AFSM_EEXISTS);
    assert_int_equal(get(e, &s1.session_id, &copy), AFSM_OK);
    assert_int_equal(user_sessions_in_etcd("/ev2/", "alice"), 1);
    assert_int_equal(events_of_type(&log, AFSM_EVENT_DELETED, NULL), 0);
    afsm_engine_close(e);
}

/* ---- racing evictions on two nodes ---------------------------------------------- */

#define RACERS       4 /* two per engine */
#define RACE_CREATES 12
#define RACE_CAP     3

typedef struct race_ctx {
    afsm_engine *engines[2];
    pthread_barrier_t start;
    afsm_status status[RACERS][RACE_CREATES];
    atomic_int racing;
    long most_seen; /* the sampler's highest u/ count in etcd */
} race_ctx;

typedef struct racer {
    race_ctx *r;
    int index;
} racer;

static void *race(void *arg)
{
    racer *me = arg;
    afsm_engine *e = me->r->engines[me->index % 2];
    pthread_barrier_wait(&me->r->start);
    for (int i = 0; i < RACE_CREATES; i++) {
        afsm_session_info s;
        me->r->status[me->index][i] = create(e, "carol", &s);
    }
    atomic_fetch_sub(&me->r->racing, 1);
    return NULL;
}

/* Reads the user's count in etcd while the racers run: each count is one
 * consistent read, so one above the cap would be caught. */
static void *sample(void *arg)
{
    race_ctx *r = arg;
    pthread_barrier_wait(&r->start);
    while (atomic_load(&r->racing) > 0) {
        long n = user_sessions_in_etcd("/ev3/", "carol");
        if (n > r->most_seen)
            r->most_seen = n;
    }
    return NULL;
}

static void test_racing_evictions_on_two_nodes_keep_the_cap(void **state)
{
    (void)state;
    static race_ctx r;
    memset(&r, 0, sizeof(r));
    event_log log_a, log_b;
    r.engines[0] = open_evicting("/ev3/", RACE_CAP, &log_a);
    r.engines[1] = open_evicting("/ev3/", RACE_CAP, &log_b);
    atomic_store(&r.racing, RACERS);
    pthread_barrier_init(&r.start, NULL, RACERS + 1);
    pthread_t threads[RACERS], sampler;
    racer racers[RACERS];
    for (int i = 0; i < RACERS; i++) {
        racers[i] = (racer){&r, i};
        assert_int_equal(pthread_create(&threads[i], NULL, race, &racers[i]), 0);
    }
    assert_int_equal(pthread_create(&sampler, NULL, sample, &r), 0);
    for (int i = 0; i < RACERS; i++)
        pthread_join(threads[i], NULL);
    pthread_join(sampler, NULL);

    /* Every create made its session, but for at most two: a create that
     * loses every round of its slot (cap + 8) is AFSM_EUNAVAILABLE by
     * contract, with nothing written. One node's creates take turns
     * (evict_lock), so only the other node's win a round from it: 11 lost
     * in a row is about 1 in 2,000. */
    size_t ok = 0;
    for (int i = 0; i < RACERS; i++)
        for (int j = 0; j < RACE_CREATES; j++) {
            afsm_status st = r.status[i][j];
            if (st != AFSM_OK)
                print_message("racer %d create %d: %s\n", i, j, afsm_status_name(st));
            assert_true(st == AFSM_OK || st == AFSM_EUNAVAILABLE);
            ok += st == AFSM_OK;
        }
    assert_true(ok >= RACERS * RACE_CREATES - 2);
    assert_true(r.most_seen <= RACE_CAP);
    assert_int_equal(user_sessions_in_etcd("/ev3/", "carol"), RACE_CAP);
    assert_int_equal(keys_in_etcd("/ev3/n/carol/"), RACE_CAP);
    /* Every create and every eviction reached both nodes once. */
    for (int k = 0; k < 2; k++) {
        event_log *log = k == 0 ? &log_a : &log_b;
        WAIT_FOR(events_of_type(log, AFSM_EVENT_CREATED, NULL) == ok, 10000);
        uint64_t until = harness_now_ms() + 10000;
        while (events_of_type(log, AFSM_EVENT_DELETED, "evicted") != ok - RACE_CAP && harness_now_ms() < until)
            harness_nap_ms(5);
        if (events_of_type(log, AFSM_EVENT_DELETED, "evicted") != ok - RACE_CAP) {
            print_message("engine %d: ok %zu created %zu evicted %zu deleted %zu expired %zu\n", k, ok,
                          events_of_type(log, AFSM_EVENT_CREATED, NULL),
                          events_of_type(log, AFSM_EVENT_DELETED, "evicted"),
                          events_of_type(log, AFSM_EVENT_DELETED, NULL), events_of_type(log, AFSM_EVENT_EXPIRED, NULL));
            pthread_mutex_lock(&log->lock);
            for (size_t i = 0; i < log->count; i++) {
                char id[AFSM_UUID_STRING_SIZE];
                afsm_uuid_format(&log->entries[i].id, id);
                print_message("  %zu type %u %s %s\n", i, log->entries[i].type, id, log->entries[i].reason);
            }
            pthread_mutex_unlock(&log->lock);
        }
        assert_int_equal(events_of_type(log, AFSM_EVENT_DELETED, "evicted"), ok - RACE_CAP);
        assert_int_equal(events_of_type(log, AFSM_EVENT_DELETED, NULL), ok - RACE_CAP);
        WAIT_FOR(listed(r.engines[k], "carol") == RACE_CAP, 5000);
    }
    pthread_barrier_destroy(&r.start);
    afsm_engine_close(r.engines[0]);
    afsm_engine_close(r.engines[1]);
}

/* ---- restore ------------------------------------------------------------------- */

static void test_restore_keeps_the_newest(void **state)
{
    (void)state;
    event_log log;
    afsm_engine *e = open_evicting("/ev4/", 1, &log);
    afsm_session_info old, young, copy;
    assert_int_equal(create(e, "dave", &old), AFSM_OK);
    assert_int_equal(afsm_session_delete(e, &old.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(create(e, "dave", &young), AFSM_OK);

    /* Older than every session of dave, who is at the cap: refused. */
    assert_int_equal(afsm_session_restore(e, &old, NULL, 0), AFSM_ELIMIT);
    assert_non_null(strstr(afsm_error_detail(), "evict-oldest"));
    assert_int_equal(get(e, &young.session_id, &copy), AFSM_OK);
    assert_int_equal(user_sessions_in_etcd("/ev4/", "dave"), 1);

    /* Newer than the oldest: evicts it. */
    assert_int_equal(afsm_session_delete(e, &young.session_id, NULL, 0), AFSM_OK);
    assert_int_equal(afsm_session_restore(e, &old, NULL, 0), AFSM_OK);
    assert_int_equal(afsm_session_restore(e, &young, NULL, 0), AFSM_OK);
    assert_int_equal(get(e, &old.session_id, &copy), AFSM_ENOTFOUND);
    assert_true(find_event(&log, AFSM_EVENT_DELETED, &old.session_id, "evicted", NULL) >= 0);
    assert_int_equal(user_sessions_in_etcd("/ev4/", "dave"), 1);
    afsm_engine_close(e);
}

/* ---- removing a session this node has not seen yet ------------------------------ */

/* a's watch comes back and applies everything etcd has: the events of
 * the test's sessions must not change. */
static void catch_up_and_check(afsm_engine *a, event_log *log, const afsm_uuid *id, const char *expected)
{
    resume_watch();
    int64_t now = etcd_revision();
    WAIT_FOR(atomic_load(&store_of(a)->applied_revision) >= now, 5000);
    char seen[128];
    events_text(log, id, seen, sizeof(seen));
    assert_string_equal(seen, expected);
}

static void test_delete_by_user_of_a_session_not_seen_yet(void **state)
{
    (void)state;
    const char *prefix = "/un1/";
    event_log log_a, log_b;
    afsm_engine *a = open_evicting(prefix, 0, &log_a), *b = open_evicting(prefix, 0, &log_b);
    pause_watch(a, prefix);
    afsm_session_info s, copy;
    assert_int_equal(create(b, "erin", &s), AFSM_OK);
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_ENOTFOUND); /* a has not seen it */

    size_t removed = 0;
    assert_int_equal(afsm_session_delete_by_user(a, "erin", 4, "logout", 6, &removed), AFSM_OK);
    assert_int_equal(removed, 1);
    char seen[128];
    events_text(&log_a, &s.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C D:logout");
    catch_up_and_check(a, &log_a, &s.session_id, "C D:logout");
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_ENOTFOUND);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

static void test_eviction_of_a_session_not_seen_yet(void **state)
{
    (void)state;
    const char *prefix = "/un2/";
    event_log log_a, log_b;
    afsm_engine *a = open_evicting(prefix, 1, &log_a), *b = open_evicting(prefix, 1, &log_b);
    pause_watch(a, prefix);
    afsm_session_info old, young, copy;
    assert_int_equal(create(b, "frank", &old), AFSM_OK);
    assert_int_equal(get(a, &old.session_id, &copy), AFSM_ENOTFOUND);

    assert_int_equal(create(a, "frank", &young), AFSM_OK);
    char seen[128];
    events_text(&log_a, &old.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C D:evicted");
    events_text(&log_a, &young.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C");
    catch_up_and_check(a, &log_a, &old.session_id, "C D:evicted");
    assert_int_equal(get(a, &old.session_id, &copy), AFSM_ENOTFOUND);
    assert_int_equal(get(a, &young.session_id, &copy), AFSM_OK);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* ---- a delete from inside the session's own CREATED callback ------------------- */

typedef struct create_call {
    afsm_engine *e;
    afsm_session_info out;
    afsm_status status;
    atomic_int done;
} create_call;

static void *create_in_thread(void *arg)
{
    create_call *c = arg;
    c->status = create(c->e, "selfdel", &c->out);
    atomic_store(&c->done, 1);
    return NULL;
}

/* afsm.h: a callback may call any afsm_session_* function. A delete of a
 * session from its own CREATED callback is that session's next change on
 * the same thread: it must not wait for the CREATED it is called from to
 * be delivered (a delete waits for another thread's undelivered events of
 * the session, so that nothing follows its DELETED), which would hold the
 * create for the whole request timeout (here 20 s). */
static void test_delete_from_its_created_callback_does_not_wait_for_itself(void **state)
{
    (void)state;
    static event_log log;
    log_init(&log);
    afsm_engine *e;
    afsm_config cfg;
    etcd_test_config(&cfg, "/ev5/");
    cfg.etcd_request_timeout_ms = 20000;
    cfg.on_event = on_event;
    cfg.event_ctx = &log;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    log.delete_user = "selfdel";
    log.delete_in_callback = e;
    static create_call c;
    c.e = e;
    atomic_store(&c.done, 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, create_in_thread, &c), 0);
    WAIT_FOR(atomic_load(&c.done), 5000);
    pthread_join(t, NULL);
    assert_int_equal(c.status, AFSM_OK);
    assert_int_equal(log.callback_delete, AFSM_OK);
    char seen[128];
    events_text(&log, &c.out.session_id, seen, sizeof(seen));
    assert_string_equal(seen, "C D:from-callback");
    afsm_engine_close(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_create_at_the_cap_evicts_the_oldest_on_every_node),
        cmocka_unit_test(test_a_taken_connection_id_evicts_nothing),
        cmocka_unit_test(test_racing_evictions_on_two_nodes_keep_the_cap),
        cmocka_unit_test(test_restore_keeps_the_newest),
        cmocka_unit_test(test_delete_by_user_of_a_session_not_seen_yet),
        cmocka_unit_test(test_eviction_of_a_session_not_seen_yet),
        cmocka_unit_test(test_delete_from_its_created_callback_does_not_wait_for_itself),
    };
    return cmocka_run_group_tests(tests, start_one, stop_cluster);
}
