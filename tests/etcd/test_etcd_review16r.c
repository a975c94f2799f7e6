/*
 * test_etcd_review16r.c: an adversarial review of issue 16's reads and
 * renewals (merge 7cbf62d: consistent lists and counts, the lease renewer,
 * guarded_rmw), against a real etcd (etcd_harness.h: Debian's
 * /usr/bin/etcd on loopback, free ports, data in a temp dir, killed at
 * exit). Each test is a reproduction of a defect found, or a bounded
 * attack that found none.
 *
 * Every wait is a poll with a deadline; heartbeat pacing uses naps, never
 * as synchronisation.
 *
 * Shared state: the event counters are atomics; each test owns its engines.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>

#include "afsm.h"
#include "engine.h"
#include "etcd/etcd_store.h"
#include "etcd/keys.h"
#include "etcd_test_support.h"
#include "util/alloc.h"

typedef struct counters {
    _Atomic int expired, deleted, created;
} counters;

static void count_event(void *ctx, const afsm_event *ev)
{
    counters *c = ctx;
    if (ev->type == AFSM_EVENT_EXPIRED)
        atomic_fetch_add(&c->expired, 1);
    else if (ev->type == AFSM_EVENT_DELETED)
        atomic_fetch_add(&c->deleted, 1);
    else if (ev->type == AFSM_EVENT_CREATED)
        atomic_fetch_add(&c->created, 1);
}

typedef struct engine_options {
    const char *prefix;
    uint32_t read_mode;
    uint64_t default_timeout_ms; /* 0: 60 s */
    uint64_t request_timeout_ms; /* 0: 3 s */
    uint64_t stats_flush_ms;     /* 0: the default */
    counters *events;            /* may be NULL */
} engine_options;

static afsm_engine *open_engine(const engine_options *o)
{
    afsm_config cfg;
    etcd_test_config(&cfg, o->prefix);
    if (o->request_timeout_ms != 0)
        cfg.etcd_request_timeout_ms = o->request_timeout_ms;
    cfg.etcd_read_mode = o->read_mode;
    cfg.etcd_stats_flush_ms = o->stats_flush_ms;
    cfg.default_timeout_ms = o->default_timeout_ms != 0 ? o->default_timeout_ms : 60000;
    cfg.log_level = AFSM_LOG_ERROR;
    if (o->events != NULL) {
        cfg.on_event = count_event;
        cfg.event_ctx = o->events;
    }
    cfg.shard_count = 4;
    afsm_engine *e = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    return e;
}

/* ---- 1. heartbeating sessions keep their leases ------------------------------------ */

enum { STRESS_MAX = 4000 };

typedef struct stress {
    afsm_engine *e[2]; /* e[1] NULL: one node */
    afsm_uuid ids[STRESS_MAX];
    _Atomic size_t created;
    _Atomic int stop;
    _Atomic int failures; /* heartbeats of live sessions that did not return AFSM_OK */
    _Atomic afsm_status first_failure;
} stress;

typedef struct heartbeater {
    stress *s;
    int node; /* with two nodes: heartbeats the sessions i with i % 2 == node, on e[node] */
} heartbeater;

static void *heartbeater_main(void *arg)
{
    heartbeater *h = arg;
    stress *s = h->s;
    int two = s->e[1] != NULL;
    afsm_engine *e = s->e[two ? h->node : 0];
    while (!atomic_load(&s->stop)) {
        size_t n = atomic_load(&s->created);
        for (size_t i = two ? (size_t)h->node : 0; i < n && !atomic_load(&s->stop); i += two ? 2 : 1) {
            afsm_status st = afsm_session_heartbeat(e, &s->ids[i], NULL);
            /* The other node hears of a create through its watch: not yet
             * found there is not a failure. */
            if (st != AFSM_OK && !(h->node == 1 && st == AFSM_ENOTFOUND)) {
                if (atomic_fetch_add(&s->failures, 1) == 0)
                    atomic_store(&s->first_failure, st);
            }
        }
        harness_nap_ms(50); /* pacing: every session every ~0.1-0.5 s */
    }
    return NULL;
}

/* n sessions with a 3 s timeout (lease TTL 4 s, renewed every second),
 * created on node 0 while `threads` threads heartbeat them (on two nodes:
 * half of them on each node, each session on one node only, so the
 * other node's leases are renewed by a node that did not grant them).
 * For hold_ms after the last create (two lease TTLs and more) no session
 * may expire and no heartbeat may fail. */
static void heartbeats_keep_leases(const char *prefix, size_t n, int threads, int nodes, uint64_t hold_ms)
{
    static stress s;
    memset(&s, 0, sizeof(s));
    counters ev[2];
    memset(ev, 0, sizeof(ev));
    for (int k = 0; k < nodes; k++)
        s.e[k] = open_engine(&(engine_options){.prefix = prefix, .default_timeout_ms = 3000, .events = &ev[k]});
    pthread_t t[4];
    heartbeater h[4];
    for (int i = 0; i < threads; i++) {
        h[i] = (heartbeater){&s, i % nodes};
        assert_int_equal(pthread_create(&t[i], NULL, heartbeater_main, &h[i]), 0);
    }
    uint64_t t0 = harness_now_ms();
    for (size_t i = 0; i < n; i++) {
        afsm_session_info info;
        assert_int_equal(create(s.e[0], "beat", &info), AFSM_OK);
        s.ids[i] = info.session_id;
        atomic_store(&s.created, i + 1);
    }
    uint64_t t1 = harness_now_ms();
    uint64_t before = 0;
    for (int k = 0; k < nodes; k++)
        before += metrics_of(s.e[k]).etcd_lease_keepalives_total;
    while (harness_now_ms() < t1 + hold_ms && atomic_load(&ev[0].expired) == 0 && atomic_load(&ev[1].expired) == 0)
        harness_nap_ms(50);
    atomic_store(&s.stop, 1);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    uint64_t keepalives = 0;
    for (int k = 0; k < nodes; k++)
        keepalives += metrics_of(s.e[k]).etcd_lease_keepalives_total;
    keepalives -= before;
    print_message("%zu sessions (created in %llu ms), %d node(s), %d heartbeat threads, %llu ms: %d+%d expired, %d "
                  "failed heartbeats (first %s), %llu keepalives\n",
                  n, (unsigned long long)(t1 - t0), nodes, threads, (unsigned long long)(harness_now_ms() - t1),
                  atomic_load(&ev[0].expired), atomic_load(&ev[1].expired), atomic_load(&s.failures),
                  afsm_status_name(atomic_load(&s.first_failure)), (unsigned long long)keepalives);
    assert_int_equal(atomic_load(&ev[0].expired), 0);
    assert_int_equal(atomic_load(&ev[1].expired), 0);
    assert_int_equal(atomic_load(&s.failures), 0);
    for (int k = nodes - 1; k >= 0; k--)
        afsm_engine_close(s.e[k]);
}

static size_t stress_sessions(void)
{
    const char *n = getenv("R16_N");
    size_t v = n != NULL ? (size_t)atoi(n) : 600;
    return v > STRESS_MAX ? STRESS_MAX : v;
}

static void test_heartbeating_sessions_keep_their_leases(void **state)
{
    (void)state;
    heartbeats_keep_leases("/hb1/", stress_sessions(), 2, 1, 9000);
}

/* Four threads, two nodes: each session heartbeated on one node only. */
static void test_heartbeating_sessions_keep_their_leases_on_two_nodes(void **state)
{
    (void)state;
    heartbeats_keep_leases("/hb2/", stress_sessions(), 4, 2, 9000);
}

/* ---- 2. consistent reads answer within the request timeout --------------------------- */

static _Atomic int etcd_stopped; /* the member is SIGSTOPped: the teardown resumes it */
static _Atomic int hung_member;  /* 1 + the member SIGSTOPped in a three-member test; 0: none */

static int resume_etcd(void **state)
{
    (void)state;
    if (atomic_exchange(&etcd_stopped, 0))
        harness_kill_member(&cluster, 0, SIGCONT);
    int hung = atomic_exchange(&hung_member, 0);
    if (hung > 0)
        harness_kill_member(&cluster, hung - 1, SIGCONT);
    return 0;
}

typedef struct reader {
    afsm_engine *e;
    int what; /* 0: list, 1: count, 2: get of id */
    afsm_uuid id;
    afsm_status status;
} reader;

static void *reader_main(void *arg)
{
    reader *r = arg;
    if (r->what == 1) {
        afsm_counts c;
        r->status = afsm_engine_counts(r->e, &c);
    } else if (r->what == 2) {
        afsm_session_info info;
        afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
        r->status = afsm_session_get(r->e, &r->id, &info);
    } else {
        afsm_list_filter f = AFSM_LIST_FILTER_INIT;
        f.state = AFSM_STATE_ANY;
        f.limit = 4;
        afsm_session_info out[4];
        for (int i = 0; i < 4; i++)
            afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
        size_t listed;
        uint64_t total;
        r->status = afsm_session_list(r->e, &f, out, 4, &listed, &total, NULL);
    }
    return NULL;
}

/* One consistent read on b while etcd stalls for `stall_ms` of it (SIGSTOP,
 * then SIGCONT: the fault, not a synchronisation) and b's watch is held
 * behind the newest write: how long the call took. */
static uint64_t stalled_read(afsm_engine *b, int what, const afsm_uuid *id, uint64_t stall_ms, afsm_status *status)
{
    atomic_store(&etcd_stopped, 1);
    harness_kill_member(&cluster, 0, SIGSTOP);
    reader r = {.e = b, .what = what};
    if (id != NULL)
        r.id = *id;
    uint64_t t0 = harness_now_ms();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader_main, &r), 0);
    harness_nap_ms((long)stall_ms);
    harness_kill_member(&cluster, 0, SIGCONT);
    atomic_store(&etcd_stopped, 0);
    pthread_join(t, NULL);
    *status = r.status;
    return harness_now_ms() - t0;
}

/* The request timeout bounds a consistent list, count or get as a whole:
 * etcd answers the revision probe late (stalled for 70% of the timeout),
 * and the replica's watch is held behind the newest write, so it can never
 * catch up. The call must be AFSM_EUNAVAILABLE within the timeout (plus
 * scheduling slack). On 7cbf62d the probe and the wait each had the whole
 * timeout: ~1.7x (3.4 s of 2 s). */
static void test_consistent_reads_answer_within_the_request_timeout(void **state)
{
    (void)state;
    const char *prefix = "/ct1/";
    const uint64_t timeout_ms = 2000;
    hold_gate g;
    hold_gate_init(&g);
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix});
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.etcd_request_timeout_ms = timeout_ms;
    cfg.etcd_read_mode = AFSM_READ_CONSISTENT;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.on_event = hold_on_user_hold;
    cfg.event_ctx = &g;
    cfg.shard_count = 4;
    afsm_engine *b = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &b), AFSM_OK);

    afsm_session_info s1, s2;
    assert_int_equal(create(a, "hold", &s1), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g), 10000); /* b's watch sits in s1's CREATED */
    assert_int_equal(create(a, "other", &s2), AFSM_OK);

    const char *names[] = {"list", "count", "get"};
    uint64_t took[3];
    afsm_status st[3];
    for (int what = 0; what < 3; what++)
        took[what] = stalled_read(b, what, &s2.session_id, timeout_ms * 7 / 10, &st[what]);
    hold_gate_open(&g);
    for (int what = 0; what < 3; what++)
        print_message("consistent %s with etcd stalled 1.4 s of a 2 s timeout: %s after %llu ms\n", names[what],
                      afsm_status_name(st[what]), (unsigned long long)took[what]);
    for (int what = 0; what < 3; what++) {
        assert_int_equal(st[what], AFSM_EUNAVAILABLE);
        assert_true(took[what] < timeout_ms + 700);
    }
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&g);
}

/* A consistent list and count called from an event callback on the watch
 * thread (which cannot wait for itself) must answer at once, from the
 * replica as of the event, and include the session the event is about. */
typedef struct in_callback {
    afsm_engine *_Atomic e;
    _Atomic int calls;
    _Atomic afsm_status list_status, count_status;
    _Atomic uint64_t total, slowest_ms;
} in_callback;

static void list_in_callback(void *ctx, const afsm_event *ev)
{
    in_callback *c = ctx;
    afsm_engine *e = atomic_load(&c->e);
    if (e == NULL || ev->type != AFSM_EVENT_CREATED)
        return;
    uint64_t t0 = harness_now_ms();
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.state = AFSM_STATE_ANY;
    f.limit = 4;
    afsm_session_info out[4];
    for (int i = 0; i < 4; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    size_t listed = 0;
    uint64_t total = 0;
    atomic_store(&c->list_status, afsm_session_list(e, &f, out, 4, &listed, &total, NULL));
    afsm_counts counts;
    atomic_store(&c->count_status, afsm_engine_counts(e, &counts));
    atomic_store(&c->total, total);
    uint64_t took = harness_now_ms() - t0;
    if (took > atomic_load(&c->slowest_ms))
        atomic_store(&c->slowest_ms, took);
    atomic_fetch_add(&c->calls, 1);
}

static void test_consistent_list_in_a_watch_callback_answers_at_once(void **state)
{
    (void)state;
    const char *prefix = "/lc1/";
    static in_callback c;
    memset(&c, 0, sizeof(c));
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix});
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.etcd_read_mode = AFSM_READ_CONSISTENT;
    cfg.on_event = list_in_callback;
    cfg.event_ctx = &c;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    afsm_engine *b = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &b), AFSM_OK);
    atomic_store(&c.e, b);
    afsm_session_info s;
    for (int i = 0; i < 3; i++)
        assert_int_equal(create(a, "cb", &s), AFSM_OK);
    WAIT_FOR(atomic_load(&c.calls) == 3, 10000);
    atomic_store(&c.e, NULL);
    print_message("consistent list in b's watch callback: %s / %s, total %llu, slowest %llu ms\n",
                  afsm_status_name(atomic_load(&c.list_status)), afsm_status_name(atomic_load(&c.count_status)),
                  (unsigned long long)atomic_load(&c.total), (unsigned long long)atomic_load(&c.slowest_ms));
    assert_int_equal(atomic_load(&c.list_status), AFSM_OK);
    assert_int_equal(atomic_load(&c.count_status), AFSM_OK);
    assert_int_equal(atomic_load(&c.total), 3);
    assert_true(atomic_load(&c.slowest_ms) < 1000);
    afsm_engine_close(b);
    afsm_engine_close(a);
}

/* A put outside every engine's prefix: etcd's revision moves on, no
 * replica's watch sees it. */
static void put_elsewhere(etcd_client *c)
{
    json_object *body = json_object_new_object(), *reply = NULL;
    json_object_object_add(body, "key", etcd_json_bytes("/elsewhere/k", 12));
    json_object_object_add(body, "value", etcd_json_bytes("v", 1));
    assert_int_equal(etcd_call(c, "/v3/kv/put", body, 0, &reply, NULL), AFSM_OK);
    json_object_put(body);
    json_object_put(reply);
}

/* b's event callback is slow (20 ms an event: a user's callback under
 * load), so b's watch lags behind a. */
static void slow_event(void *ctx, const afsm_event *ev)
{
    (void)ctx;
    (void)ev;
    harness_nap_ms(20); /* the slowness under test, not a synchronisation */
}

/* Node a deletes one session and creates another (the number of session
 * keys stays what b's lagging replica counts, with the deleted session
 * and without the new one), or makes one change, at random, with writes
 * outside the prefix between them. After each step, a consistent count
 * and list on b must show exactly a's sessions: the "same number of
 * session keys" form must never pass a replica that misses one session
 * and still has another. (Checked: without its `at >= newest` condition
 * this test fails.) */
static void test_consistent_counts_follow_creates_and_deletes(void **state)
{
    (void)state;
    enum { OPS = 100, LIVE_MAX = 8 };
    const char *prefix = "/cc1/";
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix});
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.etcd_read_mode = AFSM_READ_CONSISTENT;
    cfg.on_event = slow_event;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    afsm_engine *b = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &b), AFSM_OK);
    etcd_client *raw = raw_client();
    afsm_uuid live[LIVE_MAX];
    int n = 0, wrong = 0;
    unsigned seed = 16;
    for (int op = 0; op < OPS; op++) {
        int r = rand_r(&seed);
        int swap = n > 0 && r % 3 != 0; /* delete one, create another */
        if (n > 0 && (swap || n == LIVE_MAX || r % 2 == 0)) {
            int k = (r / 2) % n;
            assert_int_equal(afsm_session_delete(a, &live[k], NULL, 0), AFSM_OK);
            live[k] = live[--n];
        }
        if (swap || n == 0 || (n < LIVE_MAX && r % 2 != 0)) {
            afsm_session_info s;
            assert_int_equal(create(a, "cc", &s), AFSM_OK);
            live[n++] = s.session_id;
        }
        if (r % 3 == 0)
            put_elsewhere(raw);
        afsm_counts counts;
        assert_int_equal(afsm_engine_counts(b, &counts), AFSM_OK);
        afsm_list_filter f = AFSM_LIST_FILTER_INIT;
        f.state = AFSM_STATE_ANY;
        f.limit = LIVE_MAX + 4;
        afsm_session_info out[LIVE_MAX + 4];
        for (int i = 0; i < LIVE_MAX + 4; i++)
            afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
        size_t listed = 0;
        uint64_t total = 0;
        assert_int_equal(afsm_session_list(b, &f, out, LIVE_MAX + 4, &listed, &total, NULL), AFSM_OK);
        int same = counts.total == (uint64_t)n && listed == (size_t)n;
        for (size_t i = 0; same && i < listed; i++) {
            int found = 0;
            for (int k = 0; k < n; k++)
                found |= memcmp(&out[i].session_id, &live[k], sizeof(afsm_uuid)) == 0;
            same = found;
        }
        if (!same && wrong++ == 0)
            print_message("op %d: a has %d sessions; b counts %llu, lists %zu\n", op, n,
                          (unsigned long long)counts.total, listed);
    }
    print_message("%d steps on a, each followed by a consistent count and list on b: %d wrong\n", OPS, wrong);
    assert_int_equal(wrong, 0);
    etcd_client_close(raw);
    afsm_engine_close(b);
    afsm_engine_close(a);
}

/* ---- 3. a flush whose local apply fails counts nothing twice ------------------------ */

/* A stats flush is written to etcd, then this node cannot apply its own
 * write to the replica (no memory on the flushing thread: the replica's
 * metadata copy). Whatever the flush reports, the 5 packets this node
 * added must be counted once: in etcd, and on this node once its watch
 * delivers the write. On 7cbf62d the flush reports AFSM_ENOMEM with the
 * write made; the watch's echo is then merged as another node's write
 * (base: the stats flushed before), adding the 5 packets again: 10 here,
 * and 10 in etcd after the next flush. */
static void test_flush_applied_late_counts_stats_once(void **state)
{
    (void)state;
    const char *prefix = "/fm1/";
    /* No periodic flush during the test: only the calls below. */
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix, .stats_flush_ms = 600000});
    etcd_store *es = (etcd_store *)a->st;
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    afsm_kv kv = {.key = "k", .key_len = 1, .value = "v", .value_len = 1};
    o.user_id = "fm";
    o.user_id_len = 2;
    o.client_ip = "10.1.2.3";
    o.client_ip_len = strlen(o.client_ip);
    o.client_port = 4433;
    o.metadata = &kv;
    o.metadata_count = 1;
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info s;
    afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_create(a, &o, &s), AFSM_OK);
    afsm_stats delta = {.packets_sent = 5};
    assert_int_equal(afsm_session_add_stats(a, &s.session_id, &delta), AFSM_OK);

    alloc_fail_after_on_this_thread(0);
    int raced = 0;
    afsm_status st = etcd_flush_one(es, &s.session_id, &raced);
    alloc_fail_after_on_this_thread(-1);

    int64_t rev;
    int64_t in_etcd = packets_in_etcd(prefix, &s.session_id, &rev);
    WAIT_FOR(applied_at_least(es, &s.session_id, rev), 5000); /* the watch has the write too */
    afsm_session_info here;
    afsm_session_info_init(&here, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get(a, &s.session_id, &here), AFSM_OK);
    assert_int_equal(etcd_flush_one(es, &s.session_id, NULL), AFSM_OK);
    int64_t after = packets_in_etcd(prefix, &s.session_id, &rev);
    print_message("flush with the local apply failing: %s; etcd %lld packets, this node %llu, etcd after the next "
                  "flush %lld\n",
                  afsm_status_name(st), (long long)in_etcd, (unsigned long long)here.stats.packets_sent,
                  (long long)after);
    assert_true(in_etcd == 0 || in_etcd == 5);
    assert_int_equal(here.stats.packets_sent, 5);
    assert_int_equal(after, 5);
    afsm_engine_close(a);
}

/* ---- 4. renewals follow etcd's time, not the engine clock --------------------------- */

static uint64_t frozen_clock(void *ctx)
{
    return *(const uint64_t *)ctx;
}

/* etcd ends a lease on its own (real) time; the engine clock may be a
 * virtual one (the behavioural suite runs the etcd store on one), here
 * frozen. A session heartbeated every 100 ms, timeout 3 s (lease TTL 4 s),
 * must stay: its renewals must be due by real time. On 7cbf62d the
 * renewal period was counted on the engine clock: never due, and etcd
 * expired the heartbeated session after 4 s. */
static void test_renewals_follow_real_time_under_a_virtual_clock(void **state)
{
    (void)state;
    const char *prefix = "/vc1/";
    static uint64_t now = 1000ull * 1000000000ull;
    counters ev;
    memset(&ev, 0, sizeof(ev));
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.default_timeout_ms = 3000;
    cfg.clock = frozen_clock;
    cfg.clock_ctx = &now;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.on_event = count_event;
    cfg.event_ctx = &ev;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    afsm_engine *e = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    afsm_session_info s;
    assert_int_equal(create(e, "virtual", &s), AFSM_OK);
    uint64_t until = harness_now_ms() + 6000; /* 1.5 lease TTLs */
    afsm_status st = AFSM_OK;
    while (harness_now_ms() < until && st == AFSM_OK && atomic_load(&ev.expired) == 0) {
        st = afsm_session_heartbeat(e, &s.session_id, NULL);
        harness_nap_ms(100); /* pacing, not synchronisation */
    }
    print_message("frozen engine clock, heartbeats every 100 ms for 6 s: last heartbeat %s, %d expired\n",
                  afsm_status_name(st), atomic_load(&ev.expired));
    assert_int_equal(st, AFSM_OK);
    assert_int_equal(atomic_load(&ev.expired), 0);
    afsm_engine_close(e);
}

/* ---- 5. the renewer's queue: its bound, and how fast it drains ---------------------- */

enum { QUEUE_PROBE = 17000 }; /* more than the renewer's queue (16,384) and one batch (128) */

typedef struct queue_tally {
    size_t queued, gone;
} queue_tally;

static void tally_entry(void *ctx, const afsm_uuid *id, const track_info *info)
{
    (void)id;
    queue_tally *t = ctx;
    t->queued += info->renew_queued != 0;
    t->gone += info->lease_gone != 0;
}

static queue_tally tally(etcd_store *es)
{
    queue_tally t = {0, 0};
    track_each(&es->tracks, tally_entry, &t);
    return t;
}

static int none_queued(etcd_store *es)
{
    return tally(es).queued == 0;
}

/* White box: 17,000 tracked leases (ids etcd never granted: each keepalive
 * is answered TTL 0) all come due while etcd is stalled. The queue takes
 * at most its bound plus the batch being sent; the rest count as failed
 * renewals (not queued, not marked). Once etcd answers, every queued lease
 * gets its answer (marked gone), and the drain rate is the renewer's
 * capacity: the number of sessions it can keep at a given timeout is
 * rate x timeout / 3. */
static void test_renewer_queue_is_bounded_and_drains(void **state)
{
    (void)state;
    afsm_engine *e = open_engine(&(engine_options){.prefix = "/qf1/", .request_timeout_ms = 2000});
    etcd_store *es = (etcd_store *)e->st;
    static afsm_uuid ids[QUEUE_PROBE];
    for (int i = 0; i < QUEUE_PROBE; i++) {
        afsm_uuid_v7(&ids[i]);
        track_info info = {.lease = 0x7000000000000000ll + i,
                           .mod_revision = 1,
                           .slot = -1,
                           .renewed_ns = 0,
                           .renew_period_ns = 1000000000ull};
        assert_int_equal(track_put(&es->tracks, &ids[i], &info), AFSM_OK);
    }
    atomic_store(&etcd_stopped, 1);
    harness_kill_member(&cluster, 0, SIGSTOP);
    for (int i = 0; i < QUEUE_PROBE; i++)
        assert_int_equal(etcd_renew_if_due(es, &ids[i]), AFSM_OK);
    queue_tally stalled = tally(es);
    harness_kill_member(&cluster, 0, SIGCONT);
    atomic_store(&etcd_stopped, 0);
    uint64_t t0 = harness_now_ms();
    WAIT_FOR(none_queued(es), 60000);
    uint64_t took = harness_now_ms() - t0;
    queue_tally after = tally(es);
    print_message("%d leases due with etcd stalled: %zu queued; drained in %llu ms after etcd resumed, %zu answered "
                  "gone (%.0f keepalives/s)\n",
                  QUEUE_PROBE, stalled.queued, (unsigned long long)took, after.gone,
                  took > 0 ? (double)after.gone * 1000.0 / (double)took : 0.0);
    assert_true(stalled.queued >= 16384 && stalled.queued <= 16384 + 128);
    /* The first batch may have been sent into the stall and failed whole. */
    assert_true(after.gone + 128 >= stalled.queued && after.gone <= stalled.queued);
    afsm_engine_close(e);
}

/* ---- 6. close while the watch's callbacks queue renewals ---------------------------- */

enum { CLOSE_SESSIONS = 200 };

typedef struct pinger {
    afsm_engine *_Atomic e; /* the engine whose callbacks heartbeat */
    afsm_uuid ids[CLOSE_SESSIONS];
    _Atomic int count;
    _Atomic int beats;
} pinger;

/* On every event of b (its watch thread): heartbeat every session, which
 * queues their renewals once due. */
static void pinger_event(void *ctx, const afsm_event *ev)
{
    (void)ev;
    pinger *p = ctx;
    afsm_engine *e = atomic_load(&p->e);
    if (e == NULL)
        return;
    int n = atomic_load(&p->count);
    for (int i = 0; i < n; i++)
        if (afsm_session_heartbeat(e, &p->ids[i], NULL) == AFSM_OK)
            atomic_fetch_add(&p->beats, 1);
}

/* b's watch callbacks heartbeat 200 sessions (timeout 3 s: due every
 * second) on each of a stream of updates made on a; b is closed while
 * they run. Close must return within the request timeout or so (the
 * renewer's request under way), with nothing used after it is freed (the
 * sanitizer trees run this). */
static void test_close_while_callbacks_queue_renewals(void **state)
{
    (void)state;
    const char *prefix = "/cl1/";
    static pinger p;
    memset(&p, 0, sizeof(p));
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix, .default_timeout_ms = 3000});
    afsm_config cfg;
    etcd_test_config(&cfg, prefix);
    cfg.etcd_request_timeout_ms = 2000;
    cfg.default_timeout_ms = 3000;
    cfg.on_event = pinger_event;
    cfg.event_ctx = &p;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    afsm_engine *b = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &b), AFSM_OK);
    atomic_store(&p.e, b);
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    for (int i = 0; i < CLOSE_SESSIONS; i++) {
        afsm_session_info s;
        assert_int_equal(create(a, "ping", &s), AFSM_OK);
        assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_OK);
        p.ids[i] = s.session_id;
        atomic_store(&p.count, i + 1);
    }
    /* Renewals come due on b (a second after each create): keep the
     * callbacks busy until b has sent some. */
    uint64_t until = harness_now_ms() + 8000;
    afsm_update idle = AFSM_UPDATE_INIT;
    idle.fields = AFSM_UPDATE_STATE;
    int k = 0;
    while (metrics_of(b).etcd_lease_keepalives_total == 0 && harness_now_ms() < until) {
        idle.state = (k++ % 2 == 0) ? AFSM_STATE_IDLE : AFSM_STATE_ACTIVE;
        assert_int_equal(afsm_session_update(a, &p.ids[0], &idle, NULL), AFSM_OK);
    }
    assert_true(metrics_of(b).etcd_lease_keepalives_total > 0);
    /* More events in b's watch, then close b while it fires them. */
    for (int i = 0; i < 20; i++) {
        idle.state = (k++ % 2 == 0) ? AFSM_STATE_IDLE : AFSM_STATE_ACTIVE;
        assert_int_equal(afsm_session_update(a, &p.ids[0], &idle, NULL), AFSM_OK);
    }
    uint64_t t0 = harness_now_ms();
    afsm_engine_close(b);
    uint64_t took = harness_now_ms() - t0;
    atomic_store(&p.e, NULL);
    print_message("close with callbacks heartbeating: %llu ms, %d heartbeats taken\n", (unsigned long long)took,
                  atomic_load(&p.beats));
    assert_true(took < 2000 + 1500);
    afsm_engine_close(a);
}

/* ---- 7. an edit that fails midway writes nothing ---------------------------------- */

/* An update merging metadata runs out of memory in its edit (the merged
 * copy, first allocation on the calling thread): AFSM_ENOMEM, and neither
 * etcd's record (same mod revision) nor the replica (same metadata) moved. */
static void test_update_edit_out_of_memory_writes_nothing(void **state)
{
    (void)state;
    const char *prefix = "/um1/";
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix, .stats_flush_ms = 600000});
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    afsm_kv kv = {.key = "k", .key_len = 1, .value = "v", .value_len = 1};
    o.user_id = "um";
    o.user_id_len = 2;
    o.client_ip = "10.1.2.3";
    o.client_ip_len = strlen(o.client_ip);
    o.client_port = 4433;
    o.metadata = &kv;
    o.metadata_count = 1;
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info s;
    afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_create(a, &o, &s), AFSM_OK);
    int64_t before, after;
    packets_in_etcd(prefix, &s.session_id, &before);

    afsm_kv more = {.key = "k2", .key_len = 2, .value = "v2", .value_len = 2};
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    u.metadata = &more;
    u.metadata_count = 1;
    alloc_fail_after_on_this_thread(0);
    afsm_status st = afsm_session_update(a, &s.session_id, &u, NULL);
    alloc_fail_after_on_this_thread(-1);
    packets_in_etcd(prefix, &s.session_id, &after);
    afsm_session_info here;
    afsm_session_info_init(&here, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get(a, &s.session_id, &here), AFSM_OK);
    print_message("update whose edit runs out of memory: %s; etcd revision %lld -> %lld; here %u entries, state %u\n",
                  afsm_status_name(st), (long long)before, (long long)after, here.metadata_count, here.state);
    assert_int_equal(st, AFSM_ENOMEM);
    assert_int_equal(after, before);
    assert_int_equal(here.metadata_count, 1);
    assert_int_equal(here.state, s.state);
    /* And it goes through once memory is back. */
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_OK);
    assert_int_equal(afsm_session_get(a, &s.session_id, &here), AFSM_OK);
    assert_int_equal(here.metadata_count, 2);
    afsm_engine_close(a);
}

/* A stale replica (white box: this node's view of the record's revision
 * one behind etcd's) loses the guard and must apply etcd's record before
 * editing again; that apply runs out of memory (the replica's metadata
 * copy, first allocation on this thread). The update must say so
 * (AFSM_ENOMEM), write nothing, and go through once memory is back. On
 * 7cbf62d the failed apply was ignored: the loop re-read the same stale
 * record, lost the guard 8 times (8 round trips) and reported
 * AFSM_EUNAVAILABLE ("lost every guard"), a race that never was. */
static void test_stale_apply_out_of_memory_is_reported(void **state)
{
    (void)state;
    const char *prefix = "/um2/";
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix, .stats_flush_ms = 600000});
    etcd_store *es = (etcd_store *)a->st;
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    afsm_kv kv = {.key = "k", .key_len = 1, .value = "v", .value_len = 1};
    o.user_id = "um";
    o.user_id_len = 2;
    o.client_ip = "10.1.2.3";
    o.client_ip_len = strlen(o.client_ip);
    o.client_port = 4433;
    o.metadata = &kv;
    o.metadata_count = 1;
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info s;
    afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_create(a, &o, &s), AFSM_OK);
    int64_t before, after;
    packets_in_etcd(prefix, &s.session_id, &before);
    pthread_mutex_lock(&es->apply_lock);
    track_info ti;
    assert_true(track_get(&es->tracks, &s.session_id, &ti));
    ti.mod_revision -= 1;
    assert_int_equal(track_put(&es->tracks, &s.session_id, &ti), AFSM_OK);
    pthread_mutex_unlock(&es->apply_lock);

    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    alloc_fail_after_on_this_thread(0);
    afsm_status st = afsm_session_update(a, &s.session_id, &u, NULL);
    alloc_fail_after_on_this_thread(-1);
    packets_in_etcd(prefix, &s.session_id, &after);
    print_message("update on a stale replica whose catch-up runs out of memory: %s (%s); etcd revision %lld -> %lld\n",
                  afsm_status_name(st), afsm_error_detail(), (long long)before, (long long)after);
    assert_int_equal(st, AFSM_ENOMEM);
    assert_int_equal(after, before);
    assert_int_equal(afsm_session_update(a, &s.session_id, &u, NULL), AFSM_OK);
    afsm_session_info here;
    afsm_session_info_init(&here, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get(a, &s.session_id, &here), AFSM_OK);
    assert_int_equal(here.state, AFSM_STATE_ACTIVE);
    afsm_engine_close(a);
}

/* ---- 8. a hung member does not cost heartbeated sessions their leases (3 members) ---- */

/* The index of the member that leads the cluster (-1: none answered). */
static int leader_index(void)
{
    for (int i = 0; i < cluster.count; i++) {
        char endpoint[64];
        snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", cluster.members[i].client_port);
        etcd_client_config cc = {.endpoints = endpoint, .dial_timeout_ms = 300, .request_timeout_ms = 2000};
        etcd_client *c;
        if (etcd_client_open(&cc, &c) != AFSM_OK)
            continue;
        json_object *body = json_object_new_object(), *reply = NULL, *header, *lead, *self;
        /* Member ids are uint64, compared as the gateway's decimal strings:
         * etcd_get_int64 (strtoll) saturates above INT64_MAX, where half the
         * ids are, and took member 0 for the leader whenever its id and the
         * leader's both were; the test then stopped the real leader. */
        int leads = etcd_call(c, "/v3/maintenance/status", body, 1, &reply, NULL) == AFSM_OK &&
                    json_object_object_get_ex(reply, "header", &header) &&
                    json_object_object_get_ex(reply, "leader", &lead) &&
                    json_object_object_get_ex(header, "member_id", &self) &&
                    strcmp(json_object_get_string(lead), json_object_get_string(self)) == 0;
        json_object_put(body);
        json_object_put(reply);
        etcd_client_close(c);
        if (leads)
            return i;
    }
    return -1;
}

typedef struct pacer {
    afsm_engine *e;
    afsm_uuid *ids;
    _Atomic int n; /* ids[0..n) are heartbeated: it grows while they are created */
    uint64_t every_ms;
    _Atomic int stop, failures;
    _Atomic afsm_status first_failure;
} pacer;

static void *pacer_main(void *arg)
{
    pacer *p = arg;
    while (!atomic_load(&p->stop)) {
        for (int i = 0; i < atomic_load(&p->n); i++) {
            afsm_status st = afsm_session_heartbeat(p->e, &p->ids[i], NULL);
            if (st != AFSM_OK && atomic_fetch_add(&p->failures, 1) == 0)
                atomic_store(&p->first_failure, st);
        }
        harness_nap_ms((long)p->every_ms); /* pacing: the client's heartbeat interval */
    }
    return NULL;
}

/* Three members; the engine's first endpoint is a follower, which hangs
 * (SIGSTOP: it accepts connections and answers nothing) while 200
 * sessions with a 3 s timeout (lease TTL 4 s) are heartbeated every
 * second, with the request timeout at its default (5 s). The renewer's
 * request to the hung member waits half its budget before the next
 * endpoint, and every lease queued meanwhile waits behind it. No session
 * may expire. */
static void test_hung_member_does_not_expire_heartbeated_sessions(void **state)
{
    (void)state;
    enum { N = 200 };
    int leader = leader_index();
    assert_true(leader >= 0);
    int hung = leader == 0 ? 1 : 0;
    char endpoints[HARNESS_MEMBERS_MAX * 40];
    int len = snprintf(endpoints, sizeof(endpoints), "http://127.0.0.1:%d", cluster.members[hung].client_port);
    for (int i = 0; i < cluster.count; i++)
        if (i != hung)
            len += snprintf(endpoints + len, sizeof(endpoints) - (size_t)len, ",http://127.0.0.1:%d",
                            cluster.members[i].client_port);
    counters ev;
    memset(&ev, 0, sizeof(ev));
    afsm_config cfg;
    assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    cfg.store = AFSM_STORE_ETCD;
    cfg.etcd_endpoints = endpoints;
    cfg.etcd_prefix = "/hm1/";
    cfg.etcd_dial_timeout_ms = 300;
    cfg.default_timeout_ms = 3000;
    cfg.on_event = count_event;
    cfg.event_ctx = &ev;
    cfg.log_level = AFSM_LOG_ERROR;
    cfg.shard_count = 4;
    afsm_engine *e = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    static afsm_uuid ids[N];
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    /* Each session is heartbeated from its creation on: creating the 200
     * (400 raft writes) took 6.8 s on the loaded machine, longer than the
     * first sessions' leases (4 s) live without a heartbeat, and they
     * expired before the member hung. */
    pacer p = {.e = e, .ids = ids, .every_ms = 1000};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pacer_main, &p), 0);
    uint64_t creating = harness_now_ms();
    for (int i = 0; i < N; i++) {
        afsm_session_info s;
        assert_int_equal(create(e, "hung", &s), AFSM_OK);
        assert_int_equal(afsm_session_update(e, &s.session_id, &u, NULL), AFSM_OK);
        ids[i] = s.session_id;
        atomic_store(&p.n, i + 1);
    }
    creating = harness_now_ms() - creating;
    /* Renewals in their steady rhythm first. */
    WAIT_FOR(metrics_of(e).etcd_lease_keepalives_total >= N, 10000);
    int expired_before = atomic_load(&ev.expired), failed_before = atomic_load(&p.failures);
    int leader_at_hang = leader_index(); /* elections under load may have moved it */
    atomic_store(&hung_member, hung + 1);
    harness_kill_member(&cluster, hung, SIGSTOP);
    uint64_t hung_at = harness_now_ms(), until = hung_at + 8000; /* two lease TTLs */
    while (harness_now_ms() < until && atomic_load(&ev.expired) == 0)
        harness_nap_ms(50);
    uint64_t hung_for = harness_now_ms() - hung_at;
    harness_kill_member(&cluster, hung, SIGCONT);
    atomic_store(&hung_member, 0);
    atomic_store(&p.stop, 1);
    pthread_join(t, NULL);
    print_message("%d sessions created in %llu ms; before the hang: %d expired, %d failed heartbeats\n", N,
                  (unsigned long long)creating, expired_before, failed_before);
    print_message("member %d hung for %llu ms (leader %d, %d at the hang), %d sessions heartbeated every second: %d "
                  "expired, %d failed heartbeats (first %s)\n",
                  hung, (unsigned long long)hung_for, leader, leader_at_hang, N, atomic_load(&ev.expired),
                  atomic_load(&p.failures), afsm_status_name(atomic_load(&p.first_failure)));
    assert_int_equal(atomic_load(&ev.expired), 0);
    assert_int_equal(atomic_load(&p.failures), 0);
    afsm_engine_close(e);
}

/* ---- setup ----------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_heartbeating_sessions_keep_their_leases),
        cmocka_unit_test(test_heartbeating_sessions_keep_their_leases_on_two_nodes),
        cmocka_unit_test_teardown(test_consistent_reads_answer_within_the_request_timeout, resume_etcd),
        cmocka_unit_test(test_consistent_list_in_a_watch_callback_answers_at_once),
        cmocka_unit_test(test_consistent_counts_follow_creates_and_deletes),
        cmocka_unit_test(test_flush_applied_late_counts_stats_once),
        cmocka_unit_test(test_renewals_follow_real_time_under_a_virtual_clock),
        cmocka_unit_test_teardown(test_renewer_queue_is_bounded_and_drains, resume_etcd),
        cmocka_unit_test(test_close_while_callbacks_queue_renewals),
        cmocka_unit_test(test_update_edit_out_of_memory_writes_nothing),
        cmocka_unit_test(test_stale_apply_out_of_memory_is_reported),
    };
    const struct CMUnitTest three[] = {
        cmocka_unit_test_teardown(test_hung_member_does_not_expire_heartbeated_sessions, resume_etcd),
    };
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    int failed = cmocka_run_group_tests_name("etcd review 16r", one, start_one, stop_cluster);
    return failed + cmocka_run_group_tests_name("etcd review 16r, three members", three, start_three, stop_cluster);
}
