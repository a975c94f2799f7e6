/*
 * test_etcd_review.c: a reviewer's tests of the etcd store (issue 16), each
 * pinning down one defect found by reading core/etcd/ and reproducing it
 * against a real etcd (etcd_harness.h: Debian's /usr/bin/etcd on loopback,
 * free ports, data in a temp dir, killed at exit).
 *
 * Every wait is a poll with a deadline. Where a test has to widen a race
 * window, it does so through the public API (an event callback that holds
 * the watch thread, which afsm.h allows: "it may call any afsm_session_*
 * function"), never with a sleep. A test that checks that something does
 * NOT happen (the stats period) bounds its observation window explicitly.
 *
 * Shared state: the recorder and gate below are guarded by their mutexes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>

#include "afsm.h"

#define WAIT_FOR_NAP_MS 10
#include "etcd_test_support.h"

/* ---- events ------------------------------------------------------------------ */

#define EVENTS_MAX 1024

typedef struct recorded {
    uint32_t type;
    afsm_uuid id;
} recorded;

/* Records events; while `gated` is set, an event of the user "gate" (fired
 * on the watch thread: only another engine creates such sessions) holds
 * that thread until the test opens the gate. */
typedef struct recorder {
    hold_gate hold; /* its lock guards the events too */
    recorded events[EVENTS_MAX];
    size_t count;
    int gated;
} recorder;

static void recorder_init(recorder *r)
{
    memset(r, 0, sizeof(*r));
    hold_gate_init(&r->hold);
}

static void record_event(void *ctx, const afsm_event *ev)
{
    recorder *r = ctx;
    pthread_mutex_lock(&r->hold.lock);
    if (r->count < EVENTS_MAX) {
        r->events[r->count].type = ev->type;
        r->events[r->count].id = ev->session_id;
        r->count++;
    }
    if (r->gated && ev->user_id_len == 4 && memcmp(ev->user_id, "gate", 4) == 0)
        hold_gate_wait_locked(&r->hold);
    pthread_mutex_unlock(&r->hold.lock);
}

static size_t events_of(recorder *r, uint32_t type, const afsm_uuid *id)
{
    size_t n = 0;
    pthread_mutex_lock(&r->hold.lock);
    for (size_t i = 0; i < r->count; i++)
        if (r->events[i].type == type && memcmp(&r->events[i].id, id, sizeof(*id)) == 0)
            n++;
    pthread_mutex_unlock(&r->hold.lock);
    return n;
}

/* ---- engines ------------------------------------------------------------------- */

typedef struct engine_options {
    const char *endpoints; /* NULL: the cluster's */
    const char *prefix;
    recorder *events;
    uint64_t request_timeout_ms;
    uint64_t stats_flush_ms;
    uint32_t read_mode;
    afsm_event_fn on_event; /* NULL: record_event when events is set */
    void *event_ctx;
} engine_options;

static afsm_status open_engine(const engine_options *o, afsm_engine **out)
{
    afsm_config cfg;
    etcd_test_config(&cfg, o->prefix);
    if (o->endpoints != NULL)
        cfg.etcd_endpoints = o->endpoints;
    if (o->request_timeout_ms != 0)
        cfg.etcd_request_timeout_ms = o->request_timeout_ms;
    cfg.etcd_stats_flush_ms = o->stats_flush_ms;
    cfg.etcd_read_mode = o->read_mode;
    cfg.default_timeout_ms = 60000;
    if (o->on_event != NULL) {
        cfg.on_event = o->on_event;
        cfg.event_ctx = o->event_ctx;
    } else if (o->events != NULL) {
        cfg.on_event = record_event;
        cfg.event_ctx = o->events;
    }
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    return afsm_engine_open(&cfg, out);
}

/* ---- one member ----------------------------------------------------------------- */

/* The stats flusher must wait its period (etcd_stats_flush_ms) between
 * passes: "never one write per packet". stats.c waits on a condition
 * variable made with PTHREAD_COND_INITIALIZER (CLOCK_REALTIME) for a
 * deadline computed from CLOCK_MONOTONIC, which lies decades in the past on
 * the realtime clock: every wait times out at once and the flusher spins,
 * writing each change as soon as it is made (and burning a core). */
static void test_stats_flush_waits_for_its_period(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/r1/", .stats_flush_ms = 30000};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info s, copy;
    assert_int_equal(create(a, "stats", &s), AFSM_OK);
    WAIT_FOR(get(b, &s.session_id, &copy) == AFSM_OK, 5000);
    afsm_stats ten = {.packets_sent = 10};
    assert_int_equal(afsm_session_add_stats(a, &s.session_id, &ten), AFSM_OK);
    /* 2 s of a 30 s period: no flush may happen in this window. */
    uint64_t until = harness_now_ms() + 2000;
    while (harness_now_ms() < until && metrics_of(a).etcd_stats_writes_total == 0)
        harness_nap_ms(10);
    assert_int_equal(metrics_of(a).etcd_stats_writes_total, 0);
    assert_int_equal(get(b, &s.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.stats.packets_sent, 0); /* B learns them at the flush, not before */
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* A node creates a session and deletes it before its watch has delivered
 * the create's echo. The echo (a put at the create's revision) then finds
 * no track entry (the delete removed it) and is applied as a new session:
 * the deleted session is back in the writer's replica, a second CREATED
 * fires, and the delete's echo fires a second DELETED. Every change must
 * reach the callbacks once. The watch is held back by a callback on
 * another session's event (B's "gate" session), a window that a busy node
 * opens on its own. */
static void test_own_create_then_delete_fires_once(void **state)
{
    (void)state;
    recorder ra;
    recorder_init(&ra);
    ra.gated = 1;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/r2/", .events = &ra};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.events = NULL;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);

    afsm_session_info gate, s, marker, copy;
    assert_int_equal(create(b, "gate", &gate), AFSM_OK);
    WAIT_FOR(hold_gate_held(&ra.hold), 5000); /* A's watch thread is in the callback */
    assert_int_equal(create(a, "eve", &s), AFSM_OK);
    assert_int_equal(afsm_session_delete(a, &s.session_id, "bye", 3), AFSM_OK);
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_ENOTFOUND);
    hold_gate_open(&ra.hold);

    /* Once A has seen a later create, it has applied both echoes. */
    assert_int_equal(create(b, "marker", &marker), AFSM_OK);
    WAIT_FOR(events_of(&ra, AFSM_EVENT_CREATED, &marker.session_id) == 1, 5000);
    assert_int_equal(events_of(&ra, AFSM_EVENT_CREATED, &s.session_id), 1);
    assert_int_equal(events_of(&ra, AFSM_EVENT_DELETED, &s.session_id), 1);
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_ENOTFOUND);
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&ra.hold);
}

/* Consistent reads from an event callback on the watch thread (afsm.h: a
 * callback "may call any afsm_session_* function of the same engine"). The
 * get asks etcd for the record's revision and waits for the watch to apply
 * it; when etcd is ahead of the event being delivered, the waiting thread is
 * the watch itself: the get fails with AFSM_EUNAVAILABLE after the request
 * timeout, and the whole replica stalls meanwhile. */
typedef struct consistent_probe {
    afsm_engine *engine;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int updated; /* the test has updated the session in etcd */
    int done;
    afsm_status status;
    uint32_t state;
} consistent_probe;

static void probe_event(void *ctx, const afsm_event *ev)
{
    consistent_probe *p = ctx;
    if (ev->type != AFSM_EVENT_CREATED || ev->user_id_len != 5 || memcmp(ev->user_id, "probe", 5) != 0)
        return;
    pthread_mutex_lock(&p->lock);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    while (!p->updated && pthread_cond_timedwait(&p->changed, &p->lock, &until) == 0)
        ;
    pthread_mutex_unlock(&p->lock);
    afsm_session_info copy;
    afsm_status st = get(p->engine, &ev->session_id, &copy);
    pthread_mutex_lock(&p->lock);
    p->status = st;
    p->state = copy.state;
    p->done = 1;
    pthread_mutex_unlock(&p->lock);
}

static int probe_done(consistent_probe *p)
{
    pthread_mutex_lock(&p->lock);
    int done = p->done;
    pthread_mutex_unlock(&p->lock);
    return done;
}

static void test_consistent_get_from_a_watch_callback(void **state)
{
    (void)state;
    consistent_probe p = {.status = AFSM_EINTERNAL};
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.changed, NULL);
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/r3/", .read_mode = AFSM_READ_CONSISTENT, .on_event = probe_event, .event_ctx = &p};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    p.engine = a;
    engine_options ob = {.prefix = "/r3/"};
    assert_int_equal(open_engine(&ob, &b), AFSM_OK);

    afsm_session_info s;
    assert_int_equal(create(b, "probe", &s), AFSM_OK);
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    assert_int_equal(afsm_session_update(b, &s.session_id, &u, NULL), AFSM_OK);
    pthread_mutex_lock(&p.lock);
    p.updated = 1;
    pthread_cond_broadcast(&p.changed);
    pthread_mutex_unlock(&p.lock);
    WAIT_FOR(probe_done(&p), 10000);
    assert_int_equal(p.status, AFSM_OK);
    assert_int_equal(p.state, AFSM_STATE_ACTIVE);
    afsm_engine_close(a);
    afsm_engine_close(b);
    pthread_cond_destroy(&p.changed);
    pthread_mutex_destroy(&p.lock);
}

/* Bad data under the prefix is "logged and skipped, never a crash", and
 * never a hang either. A record whose token generation jumps (here to
 * UINT32_MAX, which keys_record_decode accepts) makes update_replica call
 * the replica's rotate_generation once per step, ~4 billion times, with
 * apply_lock held: the watch stops applying anything (and every write of
 * the engine, which needs apply_lock, blocks) for many minutes. Last in
 * its group: on the defective code the engine cannot be closed. */
static void test_generation_jump_does_not_stall_the_replica(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/r4/"};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info s, marker, copy;
    assert_int_equal(create(b, "gen", &s), AFSM_OK);
    WAIT_FOR(get(a, &s.session_id, &copy) == AFSM_OK, 5000);

    /* The record, rewritten with a far generation (same id, lease, keys). */
    char key[64], id[AFSM_UUID_STRING_SIZE];
    afsm_uuid_format(&s.session_id, id);
    snprintf(key, sizeof(key), "/r4/s/%s", id);
    json_object *body = json_object_new_object(), *kvs;
    json_object_object_add(body, "key", etcd_json_bytes(key, strlen(key)));
    json_object *reply = raw_call("/v3/kv/range", body, 1);
    assert_true(json_object_object_get_ex(reply, "kvs", &kvs) && json_object_array_length(kvs) == 1);
    long len;
    char *value = etcd_get_bytes(json_object_array_get_idx(kvs, 0), "value", &len);
    assert_non_null(value);
    json_object *record = json_tokener_parse(value);
    assert_non_null(record);
    json_object_object_add(record, "gen", json_object_new_int64(UINT32_MAX));
    const char *text = json_object_to_json_string_ext(record, JSON_C_TO_STRING_PLAIN);
    body = json_object_new_object();
    json_object_object_add(body, "key", etcd_json_bytes(key, strlen(key)));
    json_object_object_add(body, "value", etcd_json_bytes(text, strlen(text)));
    json_object_put(raw_call("/v3/kv/put", body, 0));
    json_object_put(record);
    free(value);
    json_object_put(reply);

    /* A keeps following etcd: a later session reaches its replica. The
     * marker comes from a third engine (B's watch is affected as A's is; C
     * loads the record instead of updating a copy, which does not loop). */
    afsm_engine *c;
    assert_int_equal(open_engine(&o, &c), AFSM_OK);
    assert_int_equal(create(c, "gen", &marker), AFSM_OK);
    WAIT_FOR(get(a, &marker.session_id, &copy) == AFSM_OK, 5000);
    WAIT_FOR(get(b, &marker.session_id, &copy) == AFSM_OK, 5000);
    assert_int_equal(get(a, &s.session_id, &copy), AFSM_OK);
    afsm_engine_close(a);
    afsm_engine_close(b);
    afsm_engine_close(c);
}

/* Stats additions are lock-free on the replica (afsm_session_add_stats),
 * while applying another node's record (replica.c, update_replica) reads
 * the copy's stats, merges, and then SETS them (AFSM_UPDATE_STATS): an
 * addition landing between that read and that set is lost for good. B
 * counts packets on one thread while A updates the session's metadata (each
 * update reaches B's watch as a record to apply); every packet B counted
 * must end up in the session, on both nodes. */
typedef struct adder {
    afsm_engine *engine;
    afsm_uuid id;
    _Atomic int stop;
    uint64_t added;
} adder;

static void *add_packets_main(void *arg)
{
    adder *d = arg;
    afsm_stats one = {.packets_sent = 1};
    while (!atomic_load(&d->stop))
        if (afsm_session_add_stats(d->engine, &d->id, &one) == AFSM_OK)
            d->added++;
    return NULL;
}

static uint64_t packets(afsm_engine *e, const afsm_uuid *id)
{
    afsm_session_info info;
    return get(e, id, &info) == AFSM_OK ? info.stats.packets_sent : UINT64_MAX;
}

static void test_stats_additions_survive_concurrent_applies(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/r5/", .stats_flush_ms = 200};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info s, copy;
    assert_int_equal(create(a, "stats", &s), AFSM_OK);
    WAIT_FOR(get(b, &s.session_id, &copy) == AFSM_OK, 5000);
    adder d[2] = {{.engine = b, .id = s.session_id}, {.engine = b, .id = s.session_id}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, add_packets_main, &d[i]), 0);
    for (int i = 0; i < 150; i++) {
        char value[16];
        int n = snprintf(value, sizeof(value), "v%d", i);
        afsm_kv kv = {"round", 5, value, (size_t)n};
        afsm_update u = AFSM_UPDATE_INIT;
        u.fields = AFSM_UPDATE_METADATA_MERGE;
        u.metadata = &kv;
        u.metadata_count = 1;
        assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_OK);
    }
    uint64_t added = 0;
    for (int i = 0; i < 2; i++) {
        atomic_store(&d[i].stop, 1);
        pthread_join(t[i], NULL);
        added += d[i].added;
    }
    print_message("B added %llu packets; B has %llu\n", (unsigned long long)added,
                  (unsigned long long)packets(b, &s.session_id));
    WAIT_FOR(packets(b, &s.session_id) == added && packets(a, &s.session_id) == added, 10000);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* A write that loses its guard WRITE_ATTEMPTS (8) times in a row leaves
 * etcd_update's and etcd_rotate_generation's loops with status AFSM_OK and
 * nothing written: the update reports success without having happened, and
 * afsm_token_rotate seals a token for an all-zero session info (the
 * rotation never filled `out`). Contention: B counts packets and flushes
 * its stats every millisecond, each flush a guarded write of the record. */
static void test_write_reported_ok_was_written(void **state)
{
    (void)state;
    afsm_engine *a, *b;
    engine_options o = {.prefix = "/r6/", .stats_flush_ms = 1};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info s, copy;
    assert_int_equal(create(a, "busy", &s), AFSM_OK);
    WAIT_FOR(get(b, &s.session_id, &copy) == AFSM_OK, 5000);
    adder d = {.engine = b, .id = s.session_id};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, add_packets_main, &d), 0);
    int updates_lost = 0, rotations_lost = 0, rounds = 0;
    uint64_t until = harness_now_ms() + 20000;
    for (; rounds < 300 && harness_now_ms() < until; rounds++) {
        char value[16];
        int n = snprintf(value, sizeof(value), "v%d", rounds);
        afsm_kv kv = {"round", 5, value, (size_t)n};
        afsm_update u = AFSM_UPDATE_INIT;
        u.fields = AFSM_UPDATE_METADATA_MERGE;
        u.metadata = &kv;
        u.metadata_count = 1;
        if (afsm_session_update(a, &s.session_id, &u, NULL) == AFSM_OK) {
            /* The writer reads its own writes. */
            char meta[256];
            size_t needed = 0, count = 0;
            assert_int_equal(afsm_session_get_metadata(a, &s.session_id, meta, sizeof(meta), &needed, &count), AFSM_OK);
            char expected[32];
            int len = snprintf(expected, sizeof(expected), "round%c%s", '\0', value);
            int found = 0;
            for (size_t at = 0; at + (size_t)len < needed + 1 && !found; at++)
                found = memcmp(meta + at, expected, (size_t)len + 1) == 0;
            updates_lost += !found;
        }
        assert_int_equal(get(a, &s.session_id, &copy), AFSM_OK);
        uint32_t generation = copy.token_generation;
        char token[AFSM_TOKEN_SIZE];
        if (afsm_token_rotate(a, &s.session_id, 0, token, sizeof(token), NULL) == AFSM_OK) {
            assert_int_equal(get(a, &s.session_id, &copy), AFSM_OK);
            rotations_lost += copy.token_generation <= generation;
        }
    }
    atomic_store(&d.stop, 1);
    pthread_join(t, NULL);
    print_message("%d rounds: %d updates and %d rotations reported AFSM_OK but not written\n", rounds, updates_lost,
                  rotations_lost);
    assert_int_equal(updates_lost, 0);
    assert_int_equal(rotations_lost, 0);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* Under a per-user cap, every create reads the user's taken slots and
 * guards the LOWEST free one, so concurrent creators for one user all race
 * for the same slot; a creator that loses WRITE_ATTEMPTS (8) rounds gets
 * AFSM_ELIMIT although most of the cap is free. 12 creators on two engines,
 * 36 sessions for a cap of 50: every create must succeed. */
typedef struct capped {
    afsm_engine *engine;
    pthread_barrier_t *start;
    int ok, limited, other;
} capped;

static void *capped_creates(void *arg)
{
    capped *c = arg;
    pthread_barrier_wait(c->start);
    for (int i = 0; i < 3; i++) {
        afsm_session_info s;
        afsm_status st = create(c->engine, "crowd", &s);
        c->ok += st == AFSM_OK;
        c->limited += st == AFSM_ELIMIT;
        c->other += st != AFSM_OK && st != AFSM_ELIMIT;
    }
    return NULL;
}

static void test_cap_not_reached_is_not_a_limit(void **state)
{
    (void)state;
    afsm_config cfg;
    afsm_engine *e[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
        cfg.store = AFSM_STORE_ETCD;
        cfg.etcd_endpoints = cluster.endpoints;
        cfg.etcd_prefix = "/r7/";
        cfg.etcd_request_timeout_ms = 3000;
        cfg.max_sessions_per_user = 50;
        cfg.log_level = AFSM_LOG_ERROR;
        cfg.shard_count = 4;
        assert_int_equal(afsm_engine_open(&cfg, &e[i]), AFSM_OK);
    }
    enum { CREATORS = 12 };
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, CREATORS);
    capped c[CREATORS];
    pthread_t t[CREATORS];
    for (int i = 0; i < CREATORS; i++) {
        c[i] = (capped){e[i % 2], &start, 0, 0, 0};
        assert_int_equal(pthread_create(&t[i], NULL, capped_creates, &c[i]), 0);
    }
    int ok = 0, limited = 0, other = 0;
    for (int i = 0; i < CREATORS; i++) {
        pthread_join(t[i], NULL);
        ok += c[i].ok;
        limited += c[i].limited;
        other += c[i].other;
    }
    pthread_barrier_destroy(&start);
    print_message("36 creates under a cap of 50: %d ok, %d AFSM_ELIMIT, %d other\n", ok, limited, other);
    assert_int_equal(other, 0);
    assert_int_equal(limited, 0);
    assert_int_equal(ok, 36);
    afsm_engine_close(e[0]);
    afsm_engine_close(e[1]);
}

/* "The node renews the session's lease at most once per TTL/3": with etcd
 * down, a failed renewal (track_renew_failed) makes the lease due again at
 * the very next heartbeat, so EVERY heartbeat sends a keepalive and blocks
 * for the whole request timeout before failing with AFSM_EUNAVAILABLE: the
 * data plane stalls on a control-plane outage. Timeout 6 s (renewal period
 * 2 s), request timeout 500 ms: after the first failed renewal, three more
 * heartbeats within the same period may not go to etcd again. */
static void test_heartbeats_with_etcd_down_renew_once_per_period(void **state)
{
    (void)state;
    afsm_config cfg;
    etcd_test_config(&cfg, "/r9/");
    cfg.etcd_request_timeout_ms = 500;
    cfg.default_timeout_ms = 6000;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    afsm_engine *a;
    assert_int_equal(afsm_engine_open(&cfg, &a), AFSM_OK);
    afsm_session_info s;
    assert_int_equal(create(a, "hb", &s), AFSM_OK);
    /* The first renewal, etcd up: the period starts again from here. */
    WAIT_FOR(afsm_session_heartbeat(a, &s.session_id, NULL) == AFSM_OK &&
                 metrics_of(a).etcd_lease_keepalives_total == 1,
             5000);
    harness_kill_member(&cluster, 0, SIGKILL);
    /* Heartbeats until the next renewal is due and fails. */
    WAIT_FOR(afsm_session_heartbeat(a, &s.session_id, NULL) != AFSM_OK || metrics_of(a).etcd_lease_keepalives_total > 1,
             5000);
    uint64_t attempts = metrics_of(a).etcd_lease_keepalives_total;
    uint64_t t0 = harness_now_ms();
    int failed = 0;
    for (int i = 0; i < 3; i++)
        failed += afsm_session_heartbeat(a, &s.session_id, NULL) != AFSM_OK;
    uint64_t elapsed = harness_now_ms() - t0;
    uint64_t more = metrics_of(a).etcd_lease_keepalives_total - attempts;
    print_message("3 heartbeats with etcd down: %llu more keepalives, %d failed, %llu ms\n", (unsigned long long)more,
                  failed, (unsigned long long)elapsed);
    assert_int_equal(harness_start_member(&cluster, 0, "existing"), 0);
    assert_true(harness_wait_ready(&cluster, 0, harness_now_ms() + 20000));
    assert_true(elapsed < 2000); /* still inside the period: nothing is due */
    assert_int_equal(more, 0);
    afsm_engine_close(a);
}

/* ---- crafted replies -------------------------------------------------------------- */

/* A loopback HTTP/1.1 server standing in for etcd's gateway, answering
 * each request with a canned body (Connection: close), to feed the client
 * replies a real etcd would not send: what a truncated, corrupted or
 * hostile answer does to the parsers. One connection at a time. */
typedef struct fake_gateway {
    int listener, port;
    int variant;
    _Atomic int watches, txns, stop;
    pthread_t thread;
} fake_gateway;

#define VARIANT_WATCH_EVENTS_NOT_ARRAY  1
#define VARIANT_TXN_RESPONSES_NOT_ARRAY 2
#define VARIANT_WATCH_EVENT_TYPE_NULL   3

static const char *fake_answer(fake_gateway *g, const char *path)
{
    if (strcmp(path, "/v3/kv/range") == 0)
        return "{\"header\":{\"revision\":\"5\"},\"kvs\":[]}";
    if (strcmp(path, "/v3/watch") == 0) {
        atomic_fetch_add(&g->watches, 1);
        if (g->variant == VARIANT_WATCH_EVENTS_NOT_ARRAY)
            return "{\"result\":{\"header\":{\"revision\":\"5\"},\"created\":true}}\n"
                   "{\"result\":{\"header\":{\"revision\":\"6\"},\"events\":5}}\n";
        if (g->variant == VARIANT_WATCH_EVENT_TYPE_NULL)
            return "{\"result\":{\"header\":{\"revision\":\"5\"},\"created\":true}}\n"
                   "{\"result\":{\"header\":{\"revision\":\"6\"},\"events\":[{\"type\":null,\"kv\":{}}]}}\n";
        return "{\"result\":{\"header\":{\"revision\":\"5\"},\"created\":true}}\n";
    }
    if (strcmp(path, "/v3/lease/grant") == 0)
        return "{\"header\":{\"revision\":\"5\"},\"ID\":\"7\",\"TTL\":\"80\"}";
    if (strcmp(path, "/v3/kv/txn") == 0) {
        atomic_fetch_add(&g->txns, 1);
        return "{\"header\":{\"revision\":\"6\"},\"responses\":5}";
    }
    return "{}";
}

static void *fake_main(void *arg)
{
    fake_gateway *g = arg;
    while (!atomic_load(&g->stop)) {
        int fd = accept(g->listener, NULL, NULL);
        if (fd < 0)
            continue;
        char request[8192];
        size_t got = 0;
        char *end = NULL;
        while (got < sizeof(request) - 1 && end == NULL) {
            ssize_t n = read(fd, request + got, sizeof(request) - 1 - got);
            if (n <= 0)
                break;
            got += (size_t)n;
            request[got] = '\0';
            end = strstr(request, "\r\n\r\n");
        }
        char path[128] = "";
        if (end != NULL && sscanf(request, "POST %127s", path) == 1) {
            /* The body (Content-Length) is read and ignored. */
            const char *cl = strstr(request, "Content-Length:");
            size_t body_len = cl != NULL ? (size_t)strtoul(cl + 15, NULL, 10) : 0;
            size_t have = got - (size_t)(end + 4 - request);
            while (have < body_len) {
                ssize_t n = read(fd, request, sizeof(request));
                if (n <= 0)
                    break;
                have += (size_t)n;
            }
            const char *answer = fake_answer(g, path);
            char head[256];
            int head_len = snprintf(head, sizeof(head),
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                                    "Connection: close\r\n\r\n",
                                    strlen(answer));
            /* MSG_NOSIGNAL: a client that already hung up (the engine
             * closing, a request timed out) must not kill this process
             * with SIGPIPE, which the test would read as the engine's
             * crash (it did once, in CI: "died of signal 13"). */
            if (send(fd, head, (size_t)head_len, MSG_NOSIGNAL) < 0 ||
                send(fd, answer, strlen(answer), MSG_NOSIGNAL) < 0)
                fprintf(stderr, "fake gateway: write failed\n");
        }
        close(fd);
    }
    return NULL;
}

static int fake_start(fake_gateway *g, int variant)
{
    memset(g, 0, sizeof(*g));
    g->variant = variant;
    g->listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
    socklen_t len = sizeof(a);
    struct timeval tv = {0, 100000}; /* accept wakes up to see stop */
    if (g->listener < 0 || bind(g->listener, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(g->listener, 16) != 0 ||
        getsockname(g->listener, (struct sockaddr *)&a, &len) != 0 ||
        setsockopt(g->listener, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0)
        return -1;
    g->port = ntohs(a.sin_port);
    return pthread_create(&g->thread, NULL, fake_main, g) == 0 ? 0 : -1;
}

static void fake_stop(fake_gateway *g)
{
    atomic_store(&g->stop, 1);
    pthread_join(g->thread, NULL);
    close(g->listener);
}

/* In a child process (a crash must not take the test binary with it): an
 * engine on the fake gateway, until the crafted reply has been consumed.
 * Exit 0: the engine survived it; 2: the reply was never consumed. */
static int crafted_child(int variant)
{
    fake_gateway g;
    if (fake_start(&g, variant) != 0)
        return 3;
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", g.port);
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.store = AFSM_STORE_ETCD;
    cfg.etcd_endpoints = endpoint;
    cfg.etcd_prefix = "/fake/";
    cfg.etcd_request_timeout_ms = 1000;
    cfg.etcd_dial_timeout_ms = 300;
    cfg.default_timeout_ms = 60000;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    afsm_engine *e;
    if (afsm_engine_open(&cfg, &e) != AFSM_OK)
        return 4;
    int consumed = 0;
    uint64_t until = harness_now_ms() + 10000;
    if (variant != VARIANT_TXN_RESPONSES_NOT_ARRAY) {
        /* A second watch request: the first stream, crafted message and
         * all, has been handled. */
        while (atomic_load(&g.watches) < 2 && harness_now_ms() < until)
            harness_nap_ms(10);
        consumed = atomic_load(&g.watches) >= 2;
    } else {
        afsm_session_info s;
        create(e, "crafted", &s); /* any status but a crash */
        consumed = atomic_load(&g.txns) >= 1;
    }
    afsm_engine_close(e);
    fake_stop(&g);
    return consumed ? 0 : 2;
}

static void expect_child_survives(int variant)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(crafted_child(variant));
    int status = 0;
    uint64_t until = harness_now_ms() + 30000;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (harness_now_ms() > until) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        harness_nap_ms(20);
    }
    if (WIFSIGNALED(status))
        print_message("variant %d: the engine died of signal %d\n", variant, WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* The watch parser trusts "events" to be an array: json-c's
 * json_object_array_length asserts (abort) on anything else. */
static void test_crafted_watch_reply_is_not_a_crash(void **state)
{
    (void)state;
    expect_child_survives(VARIANT_WATCH_EVENTS_NOT_ARRAY);
}

/* An event whose "type" is JSON null: json_object_get_string(NULL) is
 * NULL, and watch_message hands it to strcmp. */
static void test_crafted_event_type_is_not_a_crash(void **state)
{
    (void)state;
    expect_child_survives(VARIANT_WATCH_EVENT_TYPE_NULL);
}

/* Likewise a txn answer's "responses" (txn_range_kvs; and "kvs" in
 * read_key, read_record, taken_slots, remove_by_user). */
static void test_crafted_txn_reply_is_not_a_crash(void **state)
{
    (void)state;
    expect_child_survives(VARIANT_TXN_RESPONSES_NOT_ARRAY);
}

/* ---- three members ----------------------------------------------------------- */

/* Member 0 hung (SIGSTOP: the kernel still accepts connections, nothing
 * answers), as in a long GC or disk stall; members 1 and 2 keep a quorum. */
static void hang_member_0(void)
{
    harness_kill_member(&cluster, 0, SIGSTOP);
    assert_true(harness_wait_ready(&cluster, 1, harness_now_ms() + 15000));
}

static void resume_member_0(void)
{
    harness_kill_member(&cluster, 0, SIGCONT);
    assert_true(harness_wait_ready(&cluster, 0, harness_now_ms() + 15000));
}

/* "An endpoint down: the next one." Each attempt in client.c's call() may
 * use the whole remaining request timeout, and `current` moves only on a
 * success: with the first endpoint hung, every request spends its entire
 * timeout there and fails with AFSM_EUNAVAILABLE, forever, although two
 * healthy members serve. */
static void test_hung_member_requests_fail_over(void **state)
{
    (void)state;
    resume_member_0();
    afsm_engine *a;
    engine_options o = {.prefix = "/h1/", .request_timeout_ms = 1000};
    assert_int_equal(open_engine(&o, &a), AFSM_OK); /* member 0 first */
    afsm_session_info s;
    assert_int_equal(create(a, "hung", &s), AFSM_OK);
    hang_member_0();
    int attempts = 0;
    afsm_status st = AFSM_EUNAVAILABLE;
    uint64_t until = harness_now_ms() + 15000;
    while (st != AFSM_OK && harness_now_ms() < until) {
        st = create(a, "hung", &s);
        attempts++;
    }
    print_message("creates with member 0 hung: %d attempts, last %s\n", attempts, afsm_status_name(st));
    harness_kill_member(&cluster, 0, SIGCONT);
    assert_int_equal(st, AFSM_OK);
    afsm_engine_close(a);
}

/* The replica's watch on a hung member: no error, no bytes, TCP keep-alive
 * answered by the member's kernel. The watch never moves to another
 * endpoint, the replica silently stops following etcd, and the lag metric
 * stays 0 ("connected"). B follows all three members (member 0 first); A
 * writes through members 1 and 2. */
static void test_hung_member_watch_moves_on(void **state)
{
    (void)state;
    resume_member_0();
    afsm_engine *a, *b;
    char a_endpoints[100];
    snprintf(a_endpoints, sizeof(a_endpoints), "http://127.0.0.1:%d,http://127.0.0.1:%d",
             cluster.members[1].client_port, cluster.members[2].client_port);
    engine_options o = {.prefix = "/h2/", .endpoints = a_endpoints, .request_timeout_ms = 1000};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.endpoints = NULL;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info before, after, copy;
    assert_int_equal(create(a, "watch", &before), AFSM_OK);
    WAIT_FOR(get(b, &before.session_id, &copy) == AFSM_OK, 5000);
    hang_member_0();
    WAIT_FOR(create(a, "watch", &after) == AFSM_OK, 10000);
    uint64_t until = harness_now_ms() + 15000;
    while (get(b, &after.session_id, &copy) != AFSM_OK && harness_now_ms() < until)
        harness_nap_ms(10);
    afsm_status seen = get(b, &after.session_id, &copy);
    print_message("B's replica after 15 s: %s, lag metric %.3f s\n", afsm_status_name(seen),
                  metrics_of(b).etcd_replica_lag_seconds);
    harness_kill_member(&cluster, 0, SIGCONT);
    assert_int_equal(seen, AFSM_OK);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* The lag metric after a reconnect. B's watch is on member 0, which hangs;
 * B's own write (failed over to member 1) waits for its echo, the watch is
 * found hung and moves on: the outage is what the metric reports while it
 * lasts. Once B's watch runs on member 1 and B's replica has caught up (it
 * holds A's session written after), B is current: its figure must describe
 * the connected watch, not keep the outage for as long as B writes nothing
 * (before the fix the sample that spanned the disconnect ended on the
 * catch-up with the outage as its "echo delay"). */
static void test_lag_metric_after_a_reconnect_is_not_the_outage(void **state)
{
    (void)state;
    resume_member_0();
    afsm_engine *a, *b;
    char a_endpoints[100];
    snprintf(a_endpoints, sizeof(a_endpoints), "http://127.0.0.1:%d,http://127.0.0.1:%d",
             cluster.members[1].client_port, cluster.members[2].client_port);
    engine_options o = {.prefix = "/h3/", .endpoints = a_endpoints, .request_timeout_ms = 1000};
    assert_int_equal(open_engine(&o, &a), AFSM_OK);
    o.endpoints = NULL;
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info before, mine, later, copy;
    assert_int_equal(create(a, "lag", &before), AFSM_OK);
    WAIT_FOR(get(b, &before.session_id, &copy) == AFSM_OK, 5000);
    hang_member_0();
    WAIT_FOR(create(b, "lag", &mine) == AFSM_OK, 10000); /* through member 1; its echo waits */
    WAIT_FOR(metrics_of(b).etcd_replica_lag_seconds > 1.0, 10000);
    assert_true(metrics_of(b).etcd_replica_lag_seconds > 1.0); /* stale, and said so */
    assert_int_equal(create(a, "lag", &later), AFSM_OK);
    WAIT_FOR(get(b, &later.session_id, &copy) == AFSM_OK, 15000);
    assert_int_equal(get(b, &later.session_id, &copy), AFSM_OK); /* B's watch moved on and caught up */
    double lag = metrics_of(b).etcd_replica_lag_seconds;
    print_message("B's lag once caught up: %.3f s\n", lag);
    harness_kill_member(&cluster, 0, SIGCONT);
    assert_true(lag < 0.5);
    afsm_engine_close(a);
    afsm_engine_close(b);
}

/* The lag metric when a stalled watch is declared down. B's watch is on
 * member 0, which hangs; B's own write (through member 1) waits for its
 * echo, so B's figure grows with the write's age. Then every member stops:
 * B's watch is found hung, and cannot come back. B's replica only grows
 * staler, so the figure must not fall (before the fix the down figure
 * started from the disconnect, dropping the time the write had already
 * waited: the gauge fell to 0 just as the node gave up on its watch). */
static void test_lag_metric_does_not_fall_when_the_watch_goes_down(void **state)
{
    (void)state;
    resume_member_0();
    afsm_engine *b;
    engine_options o = {.prefix = "/h4/", .request_timeout_ms = 1000};
    assert_int_equal(open_engine(&o, &b), AFSM_OK);
    afsm_session_info first, mine;
    assert_int_equal(create(b, "fall", &first), AFSM_OK); /* the watch is connected (on member 0) */
    /* A connected watch's small figure: that create's echo delay (or the
     * age of the echo still awaited). It was waited for to be 0, which it
     * is only when the echo lands within one tick of the lease clock: not
     * under a loaded sanitizer run, where the wait failed. */
    WAIT_FOR(metrics_of(b).etcd_replica_lag_seconds < 0.5, 5000);
    hang_member_0();
    WAIT_FOR(create(b, "fall", &mine) == AFSM_OK, 10000); /* through member 1; its echo waits */
    harness_kill_member(&cluster, 1, SIGSTOP);
    harness_kill_member(&cluster, 2, SIGSTOP);
    double last = metrics_of(b).etcd_replica_lag_seconds, worst_fall = 0.0;
    uint64_t until = harness_now_ms() + 5000; /* the hung watch is given up within ~2 s */
    while (harness_now_ms() < until) {
        double now = metrics_of(b).etcd_replica_lag_seconds;
        if (last - now > worst_fall)
            worst_fall = last - now;
        last = now;
        harness_nap_ms(5);
    }
    print_message("B's figure after 5 s: %.3f s; its worst fall: %.3f s\n", last, worst_fall);
    for (int i = 0; i < 3; i++)
        harness_kill_member(&cluster, i, SIGCONT);
    assert_true(worst_fall < 0.05);
    assert_true(last > 4.5); /* watched for 5 s since the write (coarse clock) */
    afsm_engine_close(b);
}

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_stats_flush_waits_for_its_period),
        cmocka_unit_test(test_own_create_then_delete_fires_once),
        cmocka_unit_test(test_consistent_get_from_a_watch_callback),
        cmocka_unit_test(test_stats_additions_survive_concurrent_applies),
        cmocka_unit_test(test_write_reported_ok_was_written),
        cmocka_unit_test(test_cap_not_reached_is_not_a_limit),
        cmocka_unit_test(test_heartbeats_with_etcd_down_renew_once_per_period),
        cmocka_unit_test(test_crafted_watch_reply_is_not_a_crash),
        cmocka_unit_test(test_crafted_event_type_is_not_a_crash),
        cmocka_unit_test(test_crafted_txn_reply_is_not_a_crash),
        cmocka_unit_test(test_generation_jump_does_not_stall_the_replica), /* last: see above */
    };
    const struct CMUnitTest three[] = {
        cmocka_unit_test(test_hung_member_requests_fail_over),
        cmocka_unit_test(test_hung_member_watch_moves_on),
        cmocka_unit_test(test_lag_metric_after_a_reconnect_is_not_the_outage),
        cmocka_unit_test(test_lag_metric_does_not_fall_when_the_watch_goes_down),
    };
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    int failed = cmocka_run_group_tests_name("review: one member", one, start_one, stop_cluster);
    return failed + cmocka_run_group_tests_name("review: three members", three, start_three, stop_cluster);
}
