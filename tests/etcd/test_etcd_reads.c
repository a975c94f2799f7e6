/*
 * test_etcd_reads.c: issue 16's remaining semantic gaps in the etcd store,
 * against a real etcd (etcd_harness.h: Debian's /usr/bin/etcd on loopback,
 * free ports, data in a temp dir, killed at exit):
 *
 * - lists and counts honour the read mode: in consistent and linearizable
 *   mode they wait for the replica to reach etcd's revision, so a node
 *   whose watch lags still lists a session another node created;
 * - a heartbeat never waits on etcd: lease renewals go to the store's
 *   renewer, and a heartbeat while etcd is stalled (SIGSTOP) returns at
 *   once; the lease is renewed once etcd answers again;
 * - a stats flush that loses every guard reports it and keeps the stats;
 *   a pass writes many sessions to a txn;
 * - a linearizable read of a record whose activation a node with a clock
 *   behind the creator's stamped before the creation reads as active at
 *   its creation (created <= last active), and restores elsewhere.
 *
 * Every wait is a poll with a deadline. A replica is held behind with an
 * event callback that blocks its watch thread (a gate, bounded at 20 s);
 * the test opens the gate when the store logs that a read waits for the
 * replica, so the order of events is fixed by the code under test, not by
 * timing.
 *
 * Shared state: each gate is guarded by its mutex.
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

/* ---- a gate: an event callback that holds the watch thread ------------------------- */

/* While armed, the first CREATED of a session of the user "hold" holds the
 * thread that fires it (the watch thread, on an engine that did not create
 * it) until the gate opens (at most 20 s). The log callback opens it when
 * the store says a read waits for the replica. */
typedef struct gate {
    hold_gate hold;   /* its lock guards the counts below too */
    int waits_logged; /* "etcd: ... waits for the replica" messages */
    int expired;      /* EXPIRED events of "hold" sessions */
} gate;

static void gate_init(gate *g)
{
    memset(g, 0, sizeof(*g));
    hold_gate_init(&g->hold);
}

static void gate_event(void *ctx, const afsm_event *ev)
{
    gate *g = ctx;
    if (ev->user_id_len != 4 || memcmp(ev->user_id, "hold", 4) != 0)
        return;
    if (ev->type == AFSM_EVENT_EXPIRED) {
        pthread_mutex_lock(&g->hold.lock);
        g->expired++;
        pthread_mutex_unlock(&g->hold.lock);
        return;
    }
    if (ev->type != AFSM_EVENT_CREATED)
        return;
    pthread_mutex_lock(&g->hold.lock);
    if (!g->hold.held) /* once */
        hold_gate_wait_locked(&g->hold);
    pthread_mutex_unlock(&g->hold.lock);
}

static int gate_waits(gate *g)
{
    pthread_mutex_lock(&g->hold.lock);
    int n = g->waits_logged;
    pthread_mutex_unlock(&g->hold.lock);
    return n;
}

static int gate_expired(gate *g)
{
    pthread_mutex_lock(&g->hold.lock);
    int n = g->expired;
    pthread_mutex_unlock(&g->hold.lock);
    return n;
}

static void gate_log(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t count)
{
    (void)level;
    (void)fields;
    (void)count;
    gate *g = ctx;
    if (strstr(message, "waits for the replica") == NULL)
        return;
    pthread_mutex_lock(&g->hold.lock);
    g->waits_logged++;
    pthread_mutex_unlock(&g->hold.lock);
    hold_gate_open(&g->hold);
}

/* ---- engines ----------------------------------------------------------------------- */

typedef struct engine_options {
    const char *prefix;
    uint32_t read_mode;
    uint64_t default_timeout_ms; /* 0: 60 s */
    uint64_t request_timeout_ms; /* 0: 3 s */
    uint64_t stats_flush_ms;     /* 0: the default */
    gate *gate;                  /* may be NULL */
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
    if (o->gate != NULL) {
        cfg.on_event = gate_event;
        cfg.event_ctx = o->gate;
        cfg.on_log = gate_log;
        cfg.log_ctx = o->gate;
        cfg.log_level = AFSM_LOG_DEBUG;
    }
    cfg.shard_count = 4;
    afsm_engine *e = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    return e;
}

/* A put outside every engine's prefix: etcd's revision moves on, no
 * replica's watch sees it. */
static void put_elsewhere(int n)
{
    etcd_client *c = raw_client();
    for (int i = 0; i < n; i++) {
        json_object *body = json_object_new_object(), *reply = NULL;
        json_object_object_add(body, "key", etcd_json_bytes("/elsewhere/k", 12));
        json_object_object_add(body, "value", etcd_json_bytes("v", 1));
        assert_int_equal(etcd_call(c, "/v3/kv/put", body, 0, &reply, NULL), AFSM_OK);
        json_object_put(body);
        json_object_put(reply);
    }
    etcd_client_close(c);
}

/* ---- 1. lists and counts honour the read mode ----------------------------------------- */

typedef struct lister {
    afsm_engine *e;
    int count_only;
    afsm_status status;
    size_t listed;
    uint64_t total;
} lister;

static void *lister_main(void *arg)
{
    lister *l = arg;
    if (l->count_only) {
        afsm_counts c;
        l->status = afsm_engine_counts(l->e, &c);
        l->total = c.total;
        return NULL;
    }
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.state = AFSM_STATE_ANY;
    f.limit = 16;
    afsm_session_info out[16];
    for (int i = 0; i < 16; i++)
        afsm_session_info_init(&out[i], AFSM_SESSION_INFO_VERSION);
    l->status = afsm_session_list(l->e, &f, out, 16, &l->listed, &l->total, NULL);
    return NULL;
}

/* B's watch is held inside the CREATED of A's first session (the gate);
 * A then creates a second one, acknowledged by etcd. A list (and a count)
 * on B in consistent or linearizable mode must include it: the call waits
 * for B's replica to reach etcd's revision. Before the fix both came from
 * B's replica as it was: one session. Then etcd's revision moves on with
 * writes outside the prefix (nothing for B's watch to deliver): a
 * consistent list must still answer at once, without waiting. */
static void lists_and_counts_wait(uint32_t read_mode, const char *prefix, int count_only)
{
    gate g;
    gate_init(&g);
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix});
    afsm_engine *b = open_engine(&(engine_options){.prefix = prefix, .read_mode = read_mode, .gate = &g});
    afsm_session_info s1, s2;
    assert_int_equal(create(a, "hold", &s1), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g.hold), 10000); /* B's watch thread sits in s1's CREATED */
    assert_int_equal(create(a, "other", &s2), AFSM_OK);
    /* From another thread: the call blocks until the gate opens (the log
     * callback opens it when the store starts waiting). */
    lister l = {.e = b, .count_only = count_only};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, lister_main, &l), 0);
    pthread_join(t, NULL);
    hold_gate_open(&g.hold); /* on the old code nothing waited: let the watch go for close */
    print_message("mode %u %s: status %s, %zu listed, total %llu, %d waits\n", read_mode, count_only ? "count" : "list",
                  afsm_status_name(l.status), l.listed, (unsigned long long)l.total, gate_waits(&g));
    assert_int_equal(l.status, AFSM_OK);
    assert_int_equal(l.total, 2);
    if (!count_only)
        assert_int_equal(l.listed, 2);
    assert_int_equal(gate_waits(&g), 1);

    /* etcd's revision moves on outside the prefix: nothing to wait for. */
    put_elsewhere(3);
    uint64_t t0 = harness_now_ms();
    lister again = {.e = b, .count_only = count_only};
    lister_main(&again);
    uint64_t took = harness_now_ms() - t0;
    assert_int_equal(again.status, AFSM_OK);
    assert_int_equal(again.total, 2);
    assert_int_equal(gate_waits(&g), 1);
    assert_true(took < 1500); /* well under the 3 s request timeout */

    /* A deletion on A is gone from B's consistent list at once, whether or
     * not B's watch delivered it yet. */
    assert_int_equal(afsm_session_delete(a, &s1.session_id, NULL, 0), AFSM_OK);
    lister after = {.e = b, .count_only = count_only};
    lister_main(&after);
    assert_int_equal(after.status, AFSM_OK);
    assert_int_equal(after.total, 1);

    /* Replica mode keeps answering locally (no etcd request). */
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&g.hold);
}

static void test_consistent_list_waits_for_the_replica(void **state)
{
    (void)state;
    lists_and_counts_wait(AFSM_READ_CONSISTENT, "/rd1/", 0);
}

static void test_consistent_count_waits_for_the_replica(void **state)
{
    (void)state;
    lists_and_counts_wait(AFSM_READ_CONSISTENT, "/rd2/", 1);
}

static void test_linearizable_list_waits_for_the_replica(void **state)
{
    (void)state;
    lists_and_counts_wait(AFSM_READ_LINEARIZABLE, "/rd3/", 0);
}

static void test_linearizable_count_waits_for_the_replica(void **state)
{
    (void)state;
    lists_and_counts_wait(AFSM_READ_LINEARIZABLE, "/rd4/", 1);
}

/* The lag metric while the watch is connected: A's watch is held in the
 * CREATED of B's session (the gate); A's own write then waits for its echo,
 * and A's session_etcd_replica_lag_seconds must grow with the hold, not
 * read 0 because the stream is up (what it did before). Once the watch
 * goes on, the next write's echo brings the figure back down. */
static void test_lag_metric_counts_a_held_watch(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    afsm_engine *a = open_engine(&(engine_options){.prefix = "/rd5/", .gate = &g});
    afsm_engine *b = open_engine(&(engine_options){.prefix = "/rd5/"});
    afsm_session_info held, mine;
    assert_int_equal(create(b, "hold", &held), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g.hold), 10000); /* A's watch thread sits in held's CREATED */
    assert_int_equal(create(a, "mine", &mine), AFSM_OK);
    WAIT_FOR(metrics_of(a).etcd_replica_lag_seconds > 0.5, 5000);
    hold_gate_open(&g.hold);
    /* The held write's echo measured the hold; a write made with the watch
     * running measures its own short delay. */
    WAIT_FOR(create(a, "mine", &mine) == AFSM_OK && metrics_of(a).etcd_replica_lag_seconds < 0.5, 10000);
    afsm_engine_close(a);
    afsm_engine_close(b);
    hold_gate_destroy(&g.hold);
}

/* ---- 2. a heartbeat never waits on etcd ---------------------------------------------- */

/* The session's record in etcd: whether it exists, and its lease. */
static int record_in_etcd(const char *prefix, const afsm_uuid *id, int64_t *lease)
{
    char key[KEYS_MAX];
    size_t len = keys_session(prefix, strlen(prefix), id, key);
    etcd_client *c = raw_client();
    json_object *body = json_object_new_object(), *reply = NULL, *kvs;
    json_object_object_add(body, "key", etcd_json_bytes(key, len));
    assert_int_equal(etcd_call(c, "/v3/kv/range", body, 1, &reply, NULL), AFSM_OK);
    json_object_put(body);
    int found = (kvs = etcd_get_array(reply, "kvs")) != NULL && json_object_array_length(kvs) > 0;
    if (found && lease != NULL)
        *lease = etcd_get_int64(json_object_array_get_idx(kvs, 0), "lease");
    json_object_put(reply);
    etcd_client_close(c);
    return found;
}

static _Atomic int etcd_stopped; /* the member is SIGSTOPped: the teardown resumes it */

static int resume_etcd(void **state)
{
    (void)state;
    if (atomic_exchange(&etcd_stopped, 0))
        harness_kill_member(&cluster, 0, SIGCONT);
    return 0;
}

/* Timeout 3 s: the lease (TTL 4 s) is due for renewal 1 s after the
 * create. etcd is stopped (SIGSTOP: it accepts connections and answers
 * nothing) before that; heartbeats go on every few milliseconds until the
 * renewal has been sent and well after. Before the fix the heartbeat that
 * found the lease due sent the keepalive itself and waited the whole
 * request timeout (2 s). Then etcd resumes; without further heartbeats the
 * session must outlive its first lease (4 s from the create): the renewal
 * queued while etcd was stalled reached it. */
static void test_heartbeat_does_not_wait_for_a_stalled_etcd(void **state)
{
    (void)state;
    const char *prefix = "/rn1/";
    afsm_engine *e =
        open_engine(&(engine_options){.prefix = prefix, .default_timeout_ms = 3000, .request_timeout_ms = 2000});
    afsm_session_info s;
    uint64_t t0 = harness_now_ms();
    assert_int_equal(create(e, "beat", &s), AFSM_OK);
    /* The activation (a write, once per session) while etcd answers. */
    assert_int_equal(afsm_session_heartbeat(e, &s.session_id, NULL), AFSM_OK);
    assert_int_equal(metrics_of(e).etcd_lease_keepalives_total, 0);

    atomic_store(&etcd_stopped, 1);
    harness_kill_member(&cluster, 0, SIGSTOP);
    uint64_t longest_us = 0, until = harness_now_ms() + 4000;
    int heartbeats = 0, after_renewal = 0;
    while (after_renewal < 20 && harness_now_ms() < until) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        assert_int_equal(afsm_session_heartbeat(e, &s.session_id, NULL), AFSM_OK);
        clock_gettime(CLOCK_MONOTONIC, &b);
        uint64_t us = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000u + (uint64_t)(b.tv_nsec - a.tv_nsec) / 1000u;
        if (us > longest_us)
            longest_us = us;
        heartbeats++;
        if (metrics_of(e).etcd_lease_keepalives_total >= 1)
            after_renewal++;
        harness_nap_ms(5); /* pacing, not synchronisation */
    }
    uint64_t keepalives = metrics_of(e).etcd_lease_keepalives_total;
    harness_kill_member(&cluster, 0, SIGCONT);
    atomic_store(&etcd_stopped, 0);
    print_message("etcd stalled: %d heartbeats, longest %llu us, %llu keepalives sent\n", heartbeats,
                  (unsigned long long)longest_us, (unsigned long long)keepalives);
    assert_int_equal(after_renewal, 20);
    assert_int_equal(keepalives, 1); /* queued once, however many heartbeats */
    assert_true(longest_us < 100000);

    /* The first lease ends 4 s after the create unless the renewal reached
     * etcd once it answered again. */
    while (harness_now_ms() < t0 + 4600)
        harness_nap_ms(20);
    assert_true(record_in_etcd(prefix, &s.session_id, NULL));
    afsm_engine_close(e);
}

/* The remaining TTL etcd gives the lease (seconds, truncated). */
static int64_t lease_ttl(etcd_client *c, int64_t lease)
{
    json_object *body = json_object_new_object(), *reply = NULL;
    json_object_object_add(body, "ID", etcd_json_int64(lease));
    assert_int_equal(etcd_call(c, "/v3/kv/lease/timetolive", body, 1, &reply, NULL), AFSM_OK);
    json_object_put(body);
    int64_t ttl = etcd_get_int64(reply, "TTL");
    json_object_put(reply);
    return ttl;
}

/* Every lease's TTL is at least min_s. */
static int all_ttls_at_least(etcd_client *c, const int64_t *leases, int n, int64_t min_s)
{
    for (int i = 0; i < n; i++)
        if (lease_ttl(c, leases[i]) < min_s)
            return 0;
    return 1;
}

/* 150 sessions come due together (timeout 6 s: TTL 8 s, renewed every
 * 2 s) and one heartbeat round queues them all: the renewer sends them in
 * batches, and the gateway answers only a prefix of a batch's requests
 * (it cannot read the rest of an HTTP/1.1 body once it has answered):
 * the rest must be sent again, not left to fail. Every lease must be
 * renewed (TTL back above 6 s while an unrenewed one, granted at least
 * 2 s ago, shows at most 5), each counted once. */
static void test_renewals_due_together_all_reach_etcd(void **state)
{
    (void)state;
    enum { N = 150 };
    const char *prefix = "/rn3/";
    afsm_engine *e = open_engine(&(engine_options){.prefix = prefix, .default_timeout_ms = 6000});
    static afsm_session_info s[N];
    int64_t leases[N];
    for (int i = 0; i < N; i++) {
        assert_int_equal(create(e, "many", &s[i]), AFSM_OK);
        assert_true(record_in_etcd(prefix, &s[i].session_id, &leases[i]));
    }
    /* Activated now (a write each), not in the round below. */
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    for (int i = 0; i < N; i++)
        assert_int_equal(afsm_session_update(e, &s[i].session_id, &u, NULL), AFSM_OK);
    uint64_t due_at = harness_now_ms() + 2100; /* the youngest lease's period is over */
    while (harness_now_ms() < due_at)
        harness_nap_ms(20);
    uint64_t before = metrics_of(e).etcd_lease_keepalives_total;
    for (int i = 0; i < N; i++)
        assert_int_equal(afsm_session_heartbeat(e, &s[i].session_id, NULL), AFSM_OK);
    etcd_client *c = raw_client();
    WAIT_FOR(all_ttls_at_least(c, leases, N, 6), 1500);
    etcd_client_close(c);
    uint64_t sent = metrics_of(e).etcd_lease_keepalives_total - before;
    print_message("%d sessions due together: %llu keepalives\n", N, (unsigned long long)sent);
    assert_int_equal(sent, N);
    afsm_engine_close(e);
}

/* A keepalive that finds the lease gone (TTL <= 0) ends the session as the
 * synchronous renewal did: the heartbeats return AFSM_EEXPIRED, and the
 * watch removes the session with an EXPIRED event. B's watch is held (the
 * gate) so that its replica still has the session when its lease is
 * revoked behind its back. */
static void test_lease_gone_makes_heartbeats_expired(void **state)
{
    (void)state;
    const char *prefix = "/rn2/";
    gate g;
    gate_init(&g);
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix, .default_timeout_ms = 3000});
    afsm_engine *b = open_engine(&(engine_options){.prefix = prefix, .default_timeout_ms = 3000, .gate = &g});
    afsm_session_info s;
    assert_int_equal(create(a, "hold", &s), AFSM_OK);
    WAIT_FOR(hold_gate_held(&g.hold), 10000);
    int64_t lease = 0;
    assert_true(record_in_etcd(prefix, &s.session_id, &lease));
    etcd_client *c = raw_client();
    json_object *body = json_object_new_object(), *reply = NULL;
    json_object_object_add(body, "ID", etcd_json_int64(lease));
    assert_int_equal(etcd_call(c, "/v3/lease/revoke", body, 1, &reply, NULL), AFSM_OK);
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
    /* B still has it; once its renewal is due and answered: EEXPIRED. */
    WAIT_FOR(afsm_session_heartbeat(b, &s.session_id, NULL) == AFSM_EEXPIRED, 6000);
    assert_int_equal(afsm_session_heartbeat(b, &s.session_id, NULL), AFSM_EEXPIRED);
    assert_int_equal(gate_expired(&g), 0);
    hold_gate_open(&g.hold);
    WAIT_FOR(gate_expired(&g) == 1, 5000);
    assert_int_equal(afsm_session_heartbeat(b, &s.session_id, NULL), AFSM_ENOTFOUND);
    afsm_engine_close(a);
    afsm_engine_close(b);
    assert_int_equal(gate_expired(&g), 1);
    hold_gate_destroy(&g.hold);
}

/* ---- 3. a flush that loses every guard says so and keeps the stats ------------------ */

/* This engine's view of the record's revision is made newer than etcd's
 * (white box: set_mod_revision), so every guarded write of the flush
 * fails and applying etcd's record (older than the one held) changes
 * nothing: the flush loses all its attempts. Before the fix
 * etcd_flush_one returned AFSM_OK with nothing written. The stats must
 * stay buffered: once the revision is right again, the next flush pass
 * writes them. */
static void test_flush_losing_every_guard_reports_it_and_keeps_the_stats(void **state)
{
    (void)state;
    const char *prefix = "/fl1/";
    /* No periodic flush during the test: only the calls below. */
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix, .stats_flush_ms = 600000});
    afsm_engine *b = open_engine(&(engine_options){.prefix = prefix, .read_mode = AFSM_READ_LINEARIZABLE});
    etcd_store *es = (etcd_store *)a->st;
    afsm_session_info s, in_etcd;
    assert_int_equal(create(a, "flush", &s), AFSM_OK);
    afsm_stats delta = {.packets_sent = 5, .bytes_sent = 500};
    assert_int_equal(afsm_session_add_stats(a, &s.session_id, &delta), AFSM_OK);

    set_mod_revision(es, &s.session_id, 1000000);
    uint64_t writes = metrics_of(a).etcd_stats_writes_total;
    int raced = 0;
    afsm_status st = etcd_flush_one(es, &s.session_id, &raced);
    print_message("flush with every guard lost: %s (%s)\n", afsm_status_name(st), afsm_error_detail());
    assert_int_equal(st, AFSM_EUNAVAILABLE);
    assert_int_equal(raced, 1);
    assert_non_null(strstr(afsm_error_detail(), "not written"));
    assert_int_equal(metrics_of(a).etcd_stats_writes_total, writes);
    afsm_session_info_init(&in_etcd, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get(b, &s.session_id, &in_etcd), AFSM_OK);
    assert_int_equal(in_etcd.stats.packets_sent, 0); /* nothing was written */

    /* Still buffered: the next pass writes them. */
    set_mod_revision(es, &s.session_id, -1000000);
    etcd_stats_flush(es);
    assert_int_equal(metrics_of(a).etcd_stats_writes_total, writes + 1);
    afsm_session_info_init(&in_etcd, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get(b, &s.session_id, &in_etcd), AFSM_OK);
    assert_int_equal(in_etcd.stats.packets_sent, 5);
    assert_int_equal(in_etcd.stats.bytes_sent, 500);
    afsm_engine_close(b);
    afsm_engine_close(a);
}

#define FLUSHED_SESSIONS 100 /* two groups: ETCD_FLUSH_GROUP, then the rest */
#define STALE_SESSION    7   /* its guard lost in the group: flushed alone after */

/* A pass writes its sessions ETCD_FLUSH_GROUP to a txn (one raft write
 * each group, where it made one per session), every session's stats
 * arrive, and a session whose record this node holds stale (another
 * writer's, white box: tracks) loses its guard in the group, takes etcd's
 * record, and is flushed alone with its stats kept. */
static void test_flush_writes_sessions_in_groups(void **state)
{
    (void)state;
    const char *prefix = "/fl2/";
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix, .stats_flush_ms = 600000});
    afsm_engine *b = open_engine(&(engine_options){.prefix = prefix, .read_mode = AFSM_READ_LINEARIZABLE});
    etcd_store *es = (etcd_store *)a->st;
    static afsm_session_info s[FLUSHED_SESSIONS];
    for (int i = 0; i < FLUSHED_SESSIONS; i++) {
        char user[16];
        snprintf(user, sizeof(user), "fl-%d", i);
        assert_int_equal(create(a, user, &s[i]), AFSM_OK);
        afsm_stats delta = {.packets_sent = (uint64_t)i + 1, .bytes_sent = 100 * ((uint64_t)i + 1)};
        assert_int_equal(afsm_session_add_stats(a, &s[i].session_id, &delta), AFSM_OK);
    }
    set_mod_revision(es, &s[STALE_SESSION].session_id, -1); /* etcd's record is newer than this node's */
    uint64_t writes = metrics_of(a).etcd_stats_writes_total;
    int64_t before = etcd_revision();
    etcd_stats_flush(es);
    int64_t txns = etcd_revision() - before;
    print_message("%d sessions flushed in %lld txns\n", FLUSHED_SESSIONS, (long long)txns);
    int groups = (FLUSHED_SESSIONS + ETCD_FLUSH_GROUP - 1) / ETCD_FLUSH_GROUP;
    assert_int_equal(txns, groups + 1); /* + the stale session's own */
    assert_int_equal(metrics_of(a).etcd_stats_writes_total, writes + FLUSHED_SESSIONS);
    for (int i = 0; i < FLUSHED_SESSIONS; i++) {
        afsm_session_info in_etcd;
        afsm_session_info_init(&in_etcd, AFSM_SESSION_INFO_VERSION);
        assert_int_equal(afsm_session_get(b, &s[i].session_id, &in_etcd), AFSM_OK);
        assert_int_equal(in_etcd.stats.packets_sent, i + 1);
        assert_int_equal(in_etcd.stats.bytes_sent, 100 * (i + 1));
    }
    /* Nothing left to write: a second pass writes nothing. */
    before = etcd_revision();
    etcd_stats_flush(es);
    assert_int_equal(etcd_revision(), before);
    afsm_engine_close(b);
    afsm_engine_close(a);
}

static atomic_int slow_pass_warnings;

static void count_slow_passes(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t count)
{
    (void)ctx;
    (void)fields;
    (void)count;
    if (level == AFSM_LOG_WARN && strstr(message, "stats flush pass took longer") != NULL)
        atomic_fetch_add(&slow_pass_warnings, 1);
}

#define SLOW_PASS_SESSIONS 200 /* a pass writing them all takes well over 1 ms */

/* Adds a packet to every session and waits until a pass wrote them all. */
static void add_and_flush(afsm_engine *a, const afsm_session_info *s)
{
    uint64_t writes = metrics_of(a).etcd_stats_writes_total;
    afsm_stats delta = {.packets_sent = 1};
    for (int i = 0; i < SLOW_PASS_SESSIONS; i++)
        assert_int_equal(afsm_session_add_stats(a, &s[i].session_id, &delta), AFSM_OK);
    WAIT_FOR(metrics_of(a).etcd_stats_writes_total >= writes + SLOW_PASS_SESSIONS, 10000);
}

/* Passes that take longer than the period (here 1 ms; a pass writing 200
 * sessions, four txns and 200 records to encode, takes longer) are
 * logged, so the operator can raise it: a crash would lose more than a
 * period of stats. Once a minute at most: with passes back to back, one
 * warning stands for them. */
static void test_flush_passes_longer_than_the_period_are_logged(void **state)
{
    (void)state;
    afsm_config cfg;
    etcd_test_config(&cfg, "/fl3/");
    cfg.etcd_stats_flush_ms = 1;
    cfg.default_timeout_ms = 60000;
    cfg.on_log = count_slow_passes;
    cfg.log_level = AFSM_LOG_WARN;
    cfg.shard_count = 4;
    afsm_engine *a = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &a), AFSM_OK);
    static afsm_session_info s[SLOW_PASS_SESSIONS];
    for (int i = 0; i < SLOW_PASS_SESSIONS; i++)
        assert_int_equal(create(a, "slow", &s[i]), AFSM_OK);
    add_and_flush(a, s);
    WAIT_FOR(atomic_load(&slow_pass_warnings) >= 1, 5000);
    for (int round = 0; round < 3; round++)
        add_and_flush(a, s);
    assert_int_equal(atomic_load(&slow_pass_warnings), 1);
    afsm_engine_close(a);
}

/* ---- 4. a record stamped by nodes whose clocks disagree ------------------------------ */

/* Re-stamps the session's record in etcd, as a node whose wall clock runs
 * `behind_ns` behind the creator's would have stamped an activation: last
 * active that long before the creation. The record keeps its lease. */
static void stamp_active_before_creation(const char *prefix, const afsm_uuid *id, int64_t behind_ns)
{
    char key[KEYS_MAX];
    size_t klen = keys_session(prefix, strlen(prefix), id, key);
    json_object *body = json_object_new_object();
    json_object_object_add(body, "key", etcd_json_bytes(key, klen));
    json_object *reply = raw_call("/v3/kv/range", body, 1), *kvs = etcd_get_array(reply, "kvs");
    assert_true(kvs != NULL && json_object_array_length(kvs) == 1);
    json_object *kv = json_object_array_get_idx(kvs, 0);
    long len = 0;
    char *value = etcd_get_bytes(kv, "value", &len);
    assert_non_null(value);
    keys_record rec;
    json_object *holder = NULL;
    assert_int_equal(keys_record_decode(value, (size_t)len, &rec, &holder), AFSM_OK);
    free(value);
    rec.info.last_active_at_ns = rec.info.created_at_ns - behind_ns;
    json_object *encoded = keys_record_encode(&rec);
    assert_non_null(encoded);
    const char *text = json_object_to_json_string_ext(encoded, JSON_C_TO_STRING_PLAIN);
    body = json_object_new_object();
    json_object_object_add(body, "key", etcd_json_bytes(key, klen));
    json_object_object_add(body, "value", etcd_json_bytes(text, strlen(text)));
    json_object_object_add(body, "lease", json_object_new_int64(etcd_get_int64(kv, "lease")));
    json_object_put(raw_call("/v3/kv/put", body, 0));
    json_object_put(encoded);
    json_object_put(holder);
    json_object_put(reply);
}

/* The README's created <= last active <= expires holds for every copy, a
 * linearizable read's (the record as etcd holds it) too: a record whose
 * activation was stamped by a node 1 s behind the creator reads as active
 * at its creation, as the replica's copy does, and the copy can be
 * restored into another engine (afsm_session_restore refuses a copy active
 * before it was created). */
static void test_linearizable_copy_of_a_skewed_record_keeps_created_before_last_active(void **state)
{
    (void)state;
    const char *prefix = "/sk1/";
    afsm_engine *a = open_engine(&(engine_options){.prefix = prefix, .read_mode = AFSM_READ_LINEARIZABLE});
    afsm_session_info s, copy;
    assert_int_equal(create(a, "skewed", &s), AFSM_OK);
    stamp_active_before_creation(prefix, &s.session_id, 1000000000);

    afsm_session_info_init(&copy, AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get(a, &s.session_id, &copy), AFSM_OK);
    assert_int_equal(copy.created_at_ns, s.created_at_ns);
    if (copy.last_active_at_ns < copy.created_at_ns)
        fail_msg("linearizable copy: last active %lld ns before created",
                 (long long)(copy.created_at_ns - copy.last_active_at_ns));
    assert_int_equal(copy.last_active_at_ns, copy.created_at_ns);
    assert_true(copy.expires_at_ns == copy.last_active_at_ns + (int64_t)copy.timeout_ms * 1000000);

    afsm_config cfg;
    assert_int_equal(afsm_config_init(&cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    afsm_engine *other = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &other), AFSM_OK);
    afsm_status restored = afsm_session_restore(other, &copy, NULL, 0);
    if (restored != AFSM_OK)
        fail_msg("restore of the linearizable copy: %s (%s)", afsm_status_name(restored), afsm_error_detail());
    afsm_engine_close(other);
    afsm_engine_close(a);
}

/* ---- setup ----------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_consistent_list_waits_for_the_replica),
        cmocka_unit_test(test_consistent_count_waits_for_the_replica),
        cmocka_unit_test(test_linearizable_list_waits_for_the_replica),
        cmocka_unit_test(test_linearizable_count_waits_for_the_replica),
        cmocka_unit_test(test_lag_metric_counts_a_held_watch),
        cmocka_unit_test(test_lease_gone_makes_heartbeats_expired),
        cmocka_unit_test(test_renewals_due_together_all_reach_etcd),
        cmocka_unit_test(test_flush_losing_every_guard_reports_it_and_keeps_the_stats),
        cmocka_unit_test(test_flush_writes_sessions_in_groups),
        cmocka_unit_test(test_flush_passes_longer_than_the_period_are_logged),
        cmocka_unit_test(test_linearizable_copy_of_a_skewed_record_keeps_created_before_last_active),
        cmocka_unit_test_teardown(test_heartbeat_does_not_wait_for_a_stalled_etcd, resume_etcd),
    };
    if (getenv("AFSM_ETCD_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("AFSM_ETCD_TEST_FILTER"));
    return cmocka_run_group_tests_name("etcd reads, renewals, flushes", one, start_one, stop_cluster);
}
