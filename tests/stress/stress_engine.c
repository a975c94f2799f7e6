/*
 * stress_engine.c: many threads doing random creates, gets, heartbeats,
 * updates, stats additions, deletes and listings on one engine, with the
 * reaper thread ticking, then checks that nothing was lost, duplicated or
 * torn. Run in Release, and under ThreadSanitizer and ASan+UBSan in CI.
 *
 * Invariants checked while running:
 * - a get never sees a torn record: every update sets the state and
 *   replaces the metadata with exactly `state` keys in one call, so
 *   metadata_count == state in every copy (creation uses one key for
 *   "connecting" = 1), except that a heartbeat makes a connecting (1 key)
 *   or idle (3 keys) session active without touching its metadata;
 * - a listing by cursor returns strictly increasing ids, none twice.
 * And at the end:
 * - the sessions each thread still owns are exactly the engine's sessions
 *   (list, get, get by connection all agree), and the counts match;
 * - created == alive + deleted, from the event callback's counters.
 *
 * The op count per thread is AFSM_STRESS_OPS (default 100000), the thread
 * count AFSM_STRESS_THREADS (default 4); sanitizer runs set smaller counts.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "afsm.h"

#define MAX_THREADS 8
#define OWNED_MAX   512

static afsm_engine *engine;
static _Atomic uint64_t events_created, events_deleted, events_other;
static _Atomic int stop_listing;

/* The id of user u (0..2): users 0 and 1 are short enough for the record
 * to hold (mem/index.h), user 2's is not, so both ways of finding a user
 * are under the same load. Its fifth byte is u's digit either way. */
static void stress_user_id(int u, char *buf, size_t size)
{
    snprintf(buf, size, u < 2 ? "user%d" : "user%d-whose-id-is-longer-than-sixteen-bytes", u);
}

typedef struct worker {
    int index;
    long ops;
    uint64_t rng;
    afsm_uuid owned[OWNED_MAX];
    afsm_uuid owned_conn[OWNED_MAX];
    size_t owned_count;
    uint64_t created, deleted;
    char user[48];
    int failed;
    char failure[160];
    pthread_mutex_t *shared_ids_lock;
} worker;

/* Ids any thread may read or update (not delete): a small shared pool. */
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static afsm_uuid shared_ids[64];
static _Atomic size_t shared_count;

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void on_event(void *ctx, const afsm_event *ev)
{
    (void)ctx;
    if (ev->type == AFSM_EVENT_CREATED)
        atomic_fetch_add(&events_created, 1);
    else if (ev->type == AFSM_EVENT_DELETED || ev->type == AFSM_EVENT_EXPIRED)
        atomic_fetch_add(&events_deleted, 1);
    else
        atomic_fetch_add(&events_other, 1);
}

#define CHECK(w, cond, ...)                                                                                            \
    do {                                                                                                               \
        if (!(cond) && !(w)->failed) {                                                                                 \
            (w)->failed = 1;                                                                                           \
            snprintf((w)->failure, sizeof((w)->failure), __VA_ARGS__);                                                 \
        }                                                                                                              \
    } while (0)

static void check_consistent(worker *w, const afsm_session_info *info)
{
    int woken_by_heartbeat = info->state == AFSM_STATE_ACTIVE &&
                             (info->metadata_count == AFSM_STATE_CONNECTING || info->metadata_count == AFSM_STATE_IDLE);
    CHECK(w, info->metadata_count == info->state || woken_by_heartbeat, "torn read: state %u with %u metadata keys",
          info->state, info->metadata_count);
}

static const afsm_uuid *pick(worker *w)
{
    size_t shared = atomic_load(&shared_count);
    if (shared > 0 && next_rand(&w->rng) % 2) {
        return &shared_ids[next_rand(&w->rng) % shared];
    }
    if (w->owned_count == 0)
        return NULL;
    return &w->owned[next_rand(&w->rng) % w->owned_count];
}

static void do_create(worker *w)
{
    if (w->owned_count == OWNED_MAX)
        return;
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    afsm_uuid conn;
    afsm_uuid_v7(&conn);
    o.user_id = w->user;
    o.user_id_len = strlen(w->user);
    o.client_ip = "2001:db8::1";
    o.client_ip_len = strlen(o.client_ip);
    o.client_port = 443;
    o.connection_id = conn;
    afsm_kv md = {"k1", 2, "v", 1};
    o.metadata = &md;
    o.metadata_count = 1;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    afsm_status st = afsm_session_create(engine, &o, &info);
    CHECK(w, st == AFSM_OK, "create: %s", afsm_status_name(st));
    if (st != AFSM_OK)
        return;
    w->owned[w->owned_count] = info.session_id;
    w->owned_conn[w->owned_count] = conn;
    w->owned_count++;
    w->created++;
    if (atomic_load(&shared_count) < 64 && next_rand(&w->rng) % 8 == 0) {
        pthread_mutex_lock(&shared_lock);
        size_t n = atomic_load(&shared_count);
        if (n < 64) {
            shared_ids[n] = info.session_id;
            atomic_store(&shared_count, n + 1);
        }
        pthread_mutex_unlock(&shared_lock);
    }
}

static int is_shared(const afsm_uuid *id)
{
    size_t n = atomic_load(&shared_count);
    for (size_t i = 0; i < n; i++)
        if (memcmp(&shared_ids[i], id, sizeof(*id)) == 0)
            return 1;
    return 0;
}

static void do_delete(worker *w)
{
    if (w->owned_count == 0)
        return;
    size_t i = next_rand(&w->rng) % w->owned_count;
    if (is_shared(&w->owned[i]))
        return; /* others may be updating it: keep the shared pool alive */
    afsm_status st = afsm_session_delete(engine, &w->owned[i], "stress", 6);
    CHECK(w, st == AFSM_OK, "delete own session: %s", afsm_status_name(st));
    w->owned[i] = w->owned[w->owned_count - 1];
    w->owned_conn[i] = w->owned_conn[w->owned_count - 1];
    w->owned_count--;
    w->deleted++;
}

static void do_update(worker *w, const afsm_uuid *id)
{
    static const char *keys[] = {"k1", "k2", "k3", "k4"};
    /* Only states reachable in a cycle that never closes. */
    static const uint32_t next_state[] = {0, AFSM_STATE_ACTIVE, AFSM_STATE_IDLE, AFSM_STATE_ACTIVE, 0, 0};
    afsm_session_info now = AFSM_SESSION_INFO_INIT;
    if (afsm_session_get(engine, id, &now) != AFSM_OK)
        return;
    uint32_t to = next_state[now.state];
    afsm_kv md[4];
    for (uint32_t k = 0; k < to; k++)
        md[k] = (afsm_kv){keys[k], 2, "v", 1};
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE | AFSM_UPDATE_METADATA_REPLACE;
    u.state = to;
    u.metadata = md;
    u.metadata_count = to;
    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    afsm_status st = afsm_session_update(engine, id, &u, &out);
    /* Another thread may have moved it first: then the transition can be
     * refused, which must leave it consistent. */
    CHECK(w, st == AFSM_OK || st == AFSM_ETRANSITION, "update: %s", afsm_status_name(st));
    if (st == AFSM_OK)
        check_consistent(w, &out);
}

/* The staged batch calls (core/mem/batch.c) racing the same creates,
 * deletes and updates: each item's status and copy must be what a single
 * call could have returned. */
#define STRESS_BATCH 24

static void do_batches(worker *w, uint64_t which)
{
    afsm_uuid ids[STRESS_BATCH];
    afsm_status st[STRESS_BATCH];
    size_t n = 0;
    for (; n < STRESS_BATCH; n++) {
        const afsm_uuid *id = pick(w);
        if (id == NULL)
            break;
        ids[n] = *id;
    }
    if (which == 0) {
        afsm_session_info out[STRESS_BATCH];
        for (size_t i = 0; i < n; i++)
            afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
        CHECK(w, afsm_session_get_batch(engine, ids, n, out, st) == AFSM_OK, "get_batch refused");
        for (size_t i = 0; i < n; i++) {
            CHECK(w, st[i] == AFSM_OK || st[i] == AFSM_ENOTFOUND, "get_batch: %s", afsm_status_name(st[i]));
            if (st[i] == AFSM_OK) {
                check_consistent(w, &out[i]);
                CHECK(w, memcmp(&out[i].session_id, &ids[i], 16) == 0, "get_batch returned another session");
            }
        }
    } else if (which == 1) {
        uint64_t remaining[STRESS_BATCH];
        CHECK(w, afsm_session_heartbeat_batch(engine, ids, n, remaining, st) == AFSM_OK, "heartbeat_batch refused");
        for (size_t i = 0; i < n; i++)
            CHECK(w, st[i] == AFSM_OK || st[i] == AFSM_ENOTFOUND, "heartbeat_batch: %s", afsm_status_name(st[i]));
    } else {
        afsm_stats d[STRESS_BATCH];
        for (size_t i = 0; i < n; i++)
            d[i] = (afsm_stats){1, 1, 100, 100, 0, 5, 0};
        CHECK(w, afsm_session_add_stats_batch(engine, ids, d, n, st) == AFSM_OK, "add_stats_batch refused");
        for (size_t i = 0; i < n; i++)
            CHECK(w, st[i] == AFSM_OK || st[i] == AFSM_ENOTFOUND, "add_stats_batch: %s", afsm_status_name(st[i]));
    }
}

static void *work(void *arg)
{
    worker *w = arg;
    for (long op = 0; op < w->ops && !w->failed; op++) {
        uint64_t r = next_rand(&w->rng) % 100;
        const afsm_uuid *id = pick(w);
        if (r < 15 || id == NULL) {
            do_create(w);
        } else if (r < 25) {
            do_delete(w);
        } else if (r < 29) {
            do_batches(w, r % 3);
        } else if (r < 55) {
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            afsm_status st = afsm_session_get(engine, id, &info);
            CHECK(w, st == AFSM_OK || st == AFSM_ENOTFOUND, "get: %s", afsm_status_name(st));
            if (st == AFSM_OK) {
                check_consistent(w, &info);
                CHECK(w, memcmp(&info.session_id, id, 16) == 0, "get returned another session");
            }
        } else if (r < 70) {
            uint64_t remaining;
            afsm_status st = afsm_session_heartbeat(engine, id, &remaining);
            CHECK(w, st == AFSM_OK || st == AFSM_ENOTFOUND, "heartbeat: %s", afsm_status_name(st));
        } else if (r < 80) {
            afsm_stats d = {1, 1, 100, 100, 0, 5, 0};
            afsm_status st = afsm_session_add_stats(engine, id, &d);
            CHECK(w, st == AFSM_OK || st == AFSM_ENOTFOUND, "add_stats: %s", afsm_status_name(st));
        } else if (r < 95) {
            do_update(w, id);
        } else {
            afsm_handle *h;
            if (afsm_handle_pin(engine, id, &h) == AFSM_OK) {
                afsm_stats d = {1, 0, 0, 0, 0, 0, 0};
                afsm_status st = afsm_handle_add_stats(h, &d);
                CHECK(w, st == AFSM_OK || st == AFSM_ENOTFOUND, "handle add: %s", afsm_status_name(st));
                afsm_handle_release(h);
            }
        }
    }
    return NULL;
}

static void *list_loop(void *arg)
{
    worker *w = arg;
    afsm_session_info page[64];
    for (int i = 0; i < 64; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    while (!atomic_load(&stop_listing) && !w->failed) {
        afsm_list_filter f = AFSM_LIST_FILTER_INIT;
        f.limit = 64;
        afsm_uuid last = {{0}};
        for (;;) {
            size_t n;
            uint64_t total;
            afsm_uuid next;
            afsm_status st = afsm_session_list(engine, &f, page, 64, &n, &total, &next);
            CHECK(w, st == AFSM_OK, "list: %s", afsm_status_name(st));
            for (size_t i = 0; i < n; i++) {
                CHECK(w, memcmp(&page[i].session_id, &last, 16) > 0, "listing not strictly increasing");
                last = page[i].session_id;
                check_consistent(w, &page[i]);
            }
            afsm_uuid nil = {{0}};
            if (st != AFSM_OK || memcmp(&next, &nil, 16) == 0)
                break;
            f.cursor = next;
        }
    }
    return NULL;
}

static long env_long(const char *name, long fallback)
{
    const char *v = getenv(name);
    return v != NULL && *v ? strtol(v, NULL, 10) : fallback;
}

static void test_stress(void **state)
{
    (void)state;
    long ops = env_long("AFSM_STRESS_OPS", 100000);
    int threads = (int)env_long("AFSM_STRESS_THREADS", 4);
    assert_true(threads >= 1 && threads <= MAX_THREADS);

    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.shard_count = 4; /* few shards: more lock sharing, more contention */
    cfg.cleanup_interval_ms = 5;
    cfg.on_event = on_event;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);

    static worker workers[MAX_THREADS + 1];
    pthread_t tids[MAX_THREADS + 1];
    for (int i = 0; i <= threads; i++) {
        memset(&workers[i], 0, sizeof(workers[i]));
        workers[i].index = i;
        workers[i].ops = ops;
        workers[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        stress_user_id(i % 3, workers[i].user, sizeof(workers[i].user));
    }
    for (int i = 0; i < threads; i++)
        assert_int_equal(pthread_create(&tids[i], NULL, work, &workers[i]), 0);
    assert_int_equal(pthread_create(&tids[threads], NULL, list_loop, &workers[threads]), 0);
    for (int i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    atomic_store(&stop_listing, 1);
    pthread_join(tids[threads], NULL);
    for (int i = 0; i <= threads; i++)
        if (workers[i].failed)
            fail_msg("thread %d: %s", i, workers[i].failure);

    /* Every owned session is there, by id and by connection. */
    uint64_t alive = 0, created = 0, deleted = 0;
    for (int i = 0; i < threads; i++) {
        created += workers[i].created;
        deleted += workers[i].deleted;
        for (size_t k = 0; k < workers[i].owned_count; k++) {
            afsm_session_info a = AFSM_SESSION_INFO_INIT, b = AFSM_SESSION_INFO_INIT;
            assert_int_equal(afsm_session_get(engine, &workers[i].owned[k], &a), AFSM_OK);
            assert_int_equal(afsm_session_get_by_connection(engine, &workers[i].owned_conn[k], &b), AFSM_OK);
            assert_memory_equal(&a.session_id, &b.session_id, 16);
            alive++;
        }
    }
    assert_int_equal(alive, created - deleted);
    assert_int_equal(atomic_load(&events_created), created);
    assert_int_equal(atomic_load(&events_deleted), deleted);

    /* A full listing holds exactly the owned sessions, each once. */
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, alive);
    afsm_session_info *all = calloc(alive + 1, sizeof(*all));
    assert_non_null(all);
    for (uint64_t i = 0; i <= alive; i++)
        afsm_session_info_init(&all[i], AFSM_SESSION_INFO_VERSION);
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.limit = (uint32_t)(alive + 1 < AFSM_LIST_LIMIT_MAX ? alive + 1 : AFSM_LIST_LIMIT_MAX);
    size_t n;
    uint64_t total;
    assert_int_equal(afsm_session_list(engine, &f, all, alive + 1, &n, &total, NULL), AFSM_OK);
    assert_int_equal(total, alive);
    uint64_t per_user[3] = {0};
    for (size_t i = 0; i < n; i++)
        per_user[all[i].user_id[4] - '0']++;
    for (int u = 0; u < 3; u++) {
        char user[48];
        stress_user_id(u, user, sizeof(user));
        f.user_id = user;
        f.user_id_len = strlen(user);
        assert_int_equal(afsm_session_list(engine, &f, all, alive + 1, &n, &total, NULL), AFSM_OK);
        assert_int_equal(total, per_user[u]);
    }
    free(all);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    printf("stress: %d threads x %ld ops, %llu created, %llu deleted, %llu alive\n", threads, ops,
           (unsigned long long)created, (unsigned long long)deleted, (unsigned long long)alive);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_stress)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
