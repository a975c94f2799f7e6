/*
 * etcd_bench.c: the etcd store's numbers against its floors, in one run
 * (bench/etcd/run starts the etcd clusters):
 *
 *   txn_floor        bare put-if-absent txns of a record-sized value through
 *                    the same JSON-gateway client, at the same concurrency
 *   create           afsm_session_create on the etcd store: a lease (granted
 *                    ahead by the store's pool) and the guarded txn, the
 *                    txns of concurrent creates sent together as nested txns
 *                    of one (core/etcd/README.md, "Writes")
 *                    The two alternate, best of two rounds each; each also
 *                    reports its costs per op: raft proposals committed,
 *                    etcd's CPU, this process's CPU (etcd and the client
 *                    share the machine's cores)
 *   get_memory       afsm_session_get on a memory-store engine
 *   get_replica / get_consistent / get_linearizable
 *                    afsm_session_get on the etcd store in each read mode
 *   heartbeat        afsm_session_heartbeat on the etcd store (local, with a
 *                    lease keepalive at most once per timeout / 3), once
 *                    every session has had its first heartbeat (the one
 *                    that activates it, a write) untimed
 *   load             opening a node on the prefix the create phases filled:
 *                    seconds, and how far the process's peak RSS rose
 *                    (VmHWM, reset first) per session loaded: the replica
 *                    it builds plus the load's transient memory
 *   stats flush      one flush pass (etcd_stats_flush, as the store's
 *                    flusher runs it every period) with stats added to
 *                    each session the reads used: sessions written per
 *                    second, and txns (etcd revisions) used
 *   lease traffic    keepalives the engine sent (and etcd's own count,
 *                    etcd_debugging_lease_renewed_total, as a cross-check)
 *                    while every session heartbeats once a second, against
 *                    the bound sessions / (timeout / 3) per second
 *   --create-only 1  only the floor and create phases (quick comparisons)
 *   --lease-only N   only the lease traffic, of N sessions (100K: issue 16's
 *                    figure) created by --threads creators while
 *                    --heartbeaters threads (default 16) heartbeat every
 *                    created session once a second; the window
 *                    (--lease-seconds) starts once all exist
 *
 * Output: one JSON object on stdout. Threads share nothing but the engine;
 * each counts its own operations.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "afsm.h"
#include "engine.h"
#include "etcd/client.h"
#include "etcd/etcd_store.h"

typedef struct options {
    const char *endpoints;
    int threads;
    double seconds;
    int sessions;
    int lease_seconds; /* how long sessions heartbeat once a second */
    int heartbeaters;  /* --lease-only: heartbeating threads */
    uint64_t lease_timeout_ms;
} options;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A field of /proc/self/status in kB (VmRSS, VmHWM); -1 if missing. */
static long status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    size_t len = strlen(field);
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, field, len) == 0 && line[len] == ':')
            kb = atol(line + len + 1);
    if (f != NULL)
        fclose(f);
    return kb;
}

/* etcd's current revision (every txn that writes raises it by one); -1
 * if etcd did not answer. */
static int64_t etcd_revision(const options *o)
{
    etcd_client_config cc = {.endpoints = o->endpoints, .dial_timeout_ms = 2000, .request_timeout_ms = 5000};
    etcd_client *c;
    if (etcd_client_open(&cc, &c) != AFSM_OK)
        return -1;
    json_object *body = json_object_new_object(), *reply = NULL, *header;
    json_object_object_add(body, "key", etcd_json_bytes("/", 1));
    json_object_object_add(body, "count_only", json_object_new_boolean(1));
    int64_t revision = -1;
    if (etcd_call(c, "/v3/kv/range", body, 1, &reply, NULL) == AFSM_OK &&
        json_object_object_get_ex(reply, "header", &header))
        revision = etcd_get_int64(header, "revision");
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
    return revision;
}

/* Makes VmHWM start again from VmRSS; 0 if the kernel refused. */
static int reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f == NULL)
        return 0;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

static void die(const char *what, afsm_status st)
{
    fprintf(stderr, "etcd_bench: %s: %s\n", what, afsm_strerror(st));
    exit(1);
}

static afsm_engine *open_engine(const options *o, uint32_t store, uint32_t read_mode, const char *prefix,
                                uint64_t timeout_ms)
{
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.store = store;
    cfg.etcd_endpoints = o->endpoints;
    cfg.etcd_prefix = prefix;
    cfg.etcd_read_mode = read_mode;
    cfg.default_timeout_ms = timeout_ms;
    cfg.capacity_hint = (uint64_t)o->sessions * 2;
    afsm_engine *e;
    afsm_status st = afsm_engine_open(&cfg, &e);
    if (st != AFSM_OK)
        die("afsm_engine_open", st);
    return e;
}

/* ---- a timed loop over threads ---------------------------------------------------- */

typedef struct worker {
    const options *o;
    int index;
    afsm_engine *engine;
    etcd_client *client;
    afsm_uuid *ids;
    int id_count;
    double until;
    uint64_t ops, failures;
    int kind;
} worker;

enum { W_FLOOR, W_CREATE, W_GET, W_HEARTBEAT, W_ACTIVATE };

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *work(void *arg)
{
    worker *w = arg;
    if (w->kind == W_ACTIVATE) {
        /* Each session's first heartbeat, once: it moves CONNECTING to
         * ACTIVE, a guarded etcd write (README, "Reads, heartbeats,
         * leases"); this thread's share of the sessions. */
        for (int i = w->index; i < w->id_count; i += w->o->threads)
            w->failures += afsm_session_heartbeat(w->engine, &w->ids[i], NULL) != AFSM_OK;
        w->ops = (uint64_t)((w->id_count - w->index + w->o->threads - 1) / w->o->threads);
        return NULL;
    }
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(w->index + 1);
    char value[320];
    memset(value, 'x', sizeof(value));
    uint64_t n = 0;
    for (;;) {
        afsm_status st = AFSM_OK;
        if (w->kind == W_FLOOR) {
            char key[64];
            int len = snprintf(key, sizeof(key), "/bench-floor/%d/%llu", w->index, (unsigned long long)n);
            json_object *body = json_object_new_object(), *cmp = json_object_new_array(), *ok = json_object_new_array(),
                        *c = json_object_new_object(), *put = json_object_new_object(), *req = json_object_new_object(),
                        *reply = NULL;
            json_object_object_add(c, "key", etcd_json_bytes(key, (size_t)len));
            json_object_object_add(c, "target", json_object_new_string("CREATE"));
            json_object_object_add(c, "result", json_object_new_string("EQUAL"));
            json_object_object_add(c, "create_revision", etcd_json_int64(0));
            json_object_array_add(cmp, c);
            json_object_object_add(req, "key", etcd_json_bytes(key, (size_t)len));
            json_object_object_add(req, "value", etcd_json_bytes(value, sizeof(value)));
            json_object_object_add(put, "request_put", req);
            json_object_array_add(ok, put);
            json_object_object_add(body, "compare", cmp);
            json_object_object_add(body, "success", ok);
            st = etcd_call(w->client, "/v3/kv/txn", body, 0, &reply, NULL);
            json_object_put(body);
            json_object_put(reply);
        } else if (w->kind == W_CREATE) {
            afsm_create_options co = AFSM_CREATE_OPTIONS_INIT;
            char user[32];
            co.user_id = user;
            co.user_id_len = (size_t)snprintf(user, sizeof(user), "user-%d-%llu", w->index, (unsigned long long)n);
            co.client_ip = "10.0.0.1";
            co.client_ip_len = 8;
            co.client_port = 443;
            afsm_uuid_v7(&co.connection_id);
            afsm_kv meta[] = {{"device", 6, "phone", 5}, {"region", 6, "eu-west", 7}};
            co.metadata = meta;
            co.metadata_count = 2;
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            st = afsm_session_create(w->engine, &co, &info);
            if (st == AFSM_OK && w->id_count < w->o->sessions)
                w->ids[w->id_count++] = info.session_id;
        } else if (w->kind == W_GET) {
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            st = afsm_session_get(w->engine, &w->ids[rng_next(&rng) % (uint64_t)w->id_count], &info);
        } else {
            st = afsm_session_heartbeat(w->engine, &w->ids[rng_next(&rng) % (uint64_t)w->id_count], NULL);
        }
        n++;
        w->failures += st != AFSM_OK;
        /* The clock every op for network calls, every 64 for local ones. */
        int local = w->kind == W_GET || w->kind == W_HEARTBEAT;
        if ((!local || (n & 63) == 0) && now_s() >= w->until)
            break;
    }
    w->ops = n;
    return NULL;
}

/* Runs kind on o->threads threads for seconds; returns ops/s. */
static double run(const options *o, int kind, afsm_engine *engine, afsm_uuid *ids, int id_count, double seconds,
                  afsm_uuid **collected, int *collected_count, uint64_t *failures)
{
    worker *ws = calloc((size_t)o->threads, sizeof(*ws));
    pthread_t *ts = calloc((size_t)o->threads, sizeof(*ts));
    etcd_client *client = NULL;
    if (kind == W_FLOOR) {
        etcd_client_config cc = {.endpoints = o->endpoints, .dial_timeout_ms = 2000, .request_timeout_ms = 5000};
        afsm_status st = etcd_client_open(&cc, &client);
        if (st != AFSM_OK)
            die("etcd_client_open", st);
    }
    double start = now_s();
    for (int i = 0; i < o->threads; i++) {
        ws[i] = (worker){.o = o,
                         .index = i,
                         .engine = engine,
                         .client = client,
                         .ids = ids,
                         .id_count = id_count,
                         .until = start + seconds,
                         .kind = kind};
        if (kind == W_CREATE) {
            ws[i].ids = calloc((size_t)o->sessions, sizeof(afsm_uuid));
            ws[i].id_count = 0;
        }
        pthread_create(&ts[i], NULL, work, &ws[i]);
    }
    uint64_t ops = 0, failed = 0;
    for (int i = 0; i < o->threads; i++) {
        pthread_join(ts[i], NULL);
        ops += ws[i].ops;
        failed += ws[i].failures;
    }
    double elapsed = now_s() - start;
    if (kind == W_CREATE) {
        int total = 0;
        afsm_uuid *all = calloc((size_t)o->sessions * (size_t)o->threads, sizeof(afsm_uuid));
        for (int i = 0; i < o->threads; i++) {
            memcpy(all + total, ws[i].ids, (size_t)ws[i].id_count * sizeof(afsm_uuid));
            total += ws[i].id_count;
            free(ws[i].ids);
        }
        *collected = all;
        *collected_count = total;
    }
    if (failures != NULL)
        *failures = failed;
    etcd_client_close(client);
    free(ws);
    free(ts);
    return (double)ops / elapsed;
}

/* ---- lease traffic ------------------------------------------------------------------ */

static uint64_t keepalives_sent(afsm_engine *e)
{
    afsm_metrics m = AFSM_METRICS_INIT;
    afsm_metrics_snapshot(e, &m);
    return m.etcd_lease_keepalives_total;
}

/* A metric of etcd's /metrics, summed over members (max: the largest
 * member's value instead). -1 if unknown. */
static double etcd_metric(const options *o, const char *name, int max)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "for u in $(echo '%s' | tr ',' ' '); do curl -s $u/metrics; done | "
             "awk '$1 == \"%s\" {s += $2; if ($2 > m) m = $2; n++} END {if (n) print %s; else print -1}'",
             o->endpoints, name, max ? "m" : "s");
    FILE *p = popen(cmd, "r");
    double v = -1;
    if (p != NULL) {
        if (fscanf(p, "%lf", &v) != 1)
            v = -1;
        pclose(p);
    }
    return v;
}

/* etcd's own count, summed over members (a follower forwards renewals to
 * the leader, which counts them): a cross-check of ours. -1 if unknown. */
static double renewed_total(const options *o)
{
    return etcd_metric(o, "etcd_debugging_lease_renewed_total", 0);
}

/* Every session heartbeats once a second for lease_seconds; returns the
 * keepalives per second the engine sent (*etcd_counted: etcd's count). */
static double lease_traffic(const options *o, int sessions, uint64_t timeout_ms, double *etcd_counted)
{
    afsm_engine *e = open_engine(o, AFSM_STORE_ETCD, AFSM_READ_REPLICA, "/bench-lease/", timeout_ms);
    afsm_uuid *ids = calloc((size_t)sessions, sizeof(afsm_uuid));
    for (int i = 0; i < sessions; i++) {
        afsm_create_options co = AFSM_CREATE_OPTIONS_INIT;
        char user[32];
        co.user_id = user;
        co.user_id_len = (size_t)snprintf(user, sizeof(user), "lease-%d", i);
        co.client_ip = "10.0.0.2";
        co.client_ip_len = 8;
        afsm_uuid_v7(&co.connection_id);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_session_create(e, &co, &info);
        if (st != AFSM_OK)
            die("create (lease traffic)", st);
        ids[i] = info.session_id;
    }
    uint64_t sent_before = keepalives_sent(e);
    double before = renewed_total(o), start = now_s();
    uint64_t failed = 0;
    for (int second = 0; second < o->lease_seconds; second++) {
        for (int i = 0; i < sessions; i++)
            failed += afsm_session_heartbeat(e, &ids[i], NULL) != AFSM_OK;
        double next = start + second + 1;
        while (now_s() < next) {
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL); /* pacing: once a second per session */
        }
    }
    double elapsed = now_s() - start, after = renewed_total(o);
    double sent = (double)(keepalives_sent(e) - sent_before) / elapsed;
    if (failed != 0) /* a session lost: the measurement would flatter */
        die("heartbeat during the lease-traffic run", AFSM_EEXPIRED);
    *etcd_counted = before < 0 || after < 0 ? -1 : (after - before) / elapsed;
    for (int i = 0; i < sessions; i++)
        afsm_session_delete(e, &ids[i], NULL, 0);
    afsm_engine_close(e);
    free(ids);
    return sent;
}

/* ---- what a phase costs ---------------------------------------------------------------- */

/* Per operation of a timed phase: raft proposals etcd committed (the
 * largest member's count: every member commits the same entries), etcd's
 * CPU (summed over members) and this process's CPU. The client and etcd
 * share the machine's cores, so the two CPU figures say who is the bound. */
typedef struct phase_cost {
    double proposals, etcd_cpu_s, bench_cpu_s, wall_s;
} phase_cost;

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static void phase_mark(const options *o, phase_cost *c)
{
    c->proposals = etcd_metric(o, "etcd_server_proposals_committed_total", 1);
    c->etcd_cpu_s = etcd_metric(o, "process_cpu_seconds_total", 0);
    c->bench_cpu_s = self_cpu_s();
    c->wall_s = now_s();
}

/* Prints the phase's costs per op as JSON members (name_...). */
static void phase_print(const char *name, const phase_cost *before, const phase_cost *after, double per_s)
{
    double ops = per_s * (after->wall_s - before->wall_s);
    if (ops <= 0)
        ops = 1;
    printf("  \"%s_proposals_per_op\": %.2f,\n  \"%s_etcd_cpu_us_per_op\": %.0f,\n"
           "  \"%s_bench_cpu_us_per_op\": %.0f,\n  \"%s_etcd_cpu_share\": %.2f,\n",
           name, (after->proposals - before->proposals) / ops, name,
           (after->etcd_cpu_s - before->etcd_cpu_s) * 1e6 / ops, name,
           (after->bench_cpu_s - before->bench_cpu_s) * 1e6 / ops, name,
           (after->etcd_cpu_s - before->etcd_cpu_s) / (after->wall_s - before->wall_s));
}

/* ---- lease traffic at scale (--lease-only) ---------------------------------------------- */

/* Sessions are created by o->threads creators, each into its own region of
 * ids; heartbeaters go over the regions' created sessions once a second
 * from the start, so every session heartbeats every second from its
 * creation on (as a client does) and none expires while the rest are
 * created. The window is measured once every session exists. */
typedef struct scale {
    const options *o;
    afsm_engine *engine;
    afsm_uuid *ids;
    int per_region;
    _Atomic int *created; /* per region */
    _Atomic int stop;
    int heartbeaters;
} scale;

typedef struct scale_worker {
    scale *sc;
    int index;
    uint64_t failures, heartbeats;
    double longest_round_s; /* after every session exists */
    double longest_call_s;  /* the slowest single heartbeat call, after every session exists */
    _Atomic int all_created;
} scale_worker;

static void *scale_create(void *arg)
{
    scale_worker *w = arg;
    scale *sc = w->sc;
    for (int i = 0; i < sc->per_region; i++) {
        afsm_create_options co = AFSM_CREATE_OPTIONS_INIT;
        char user[32];
        co.user_id = user;
        co.user_id_len = (size_t)snprintf(user, sizeof(user), "scale-%d-%d", w->index, i);
        co.client_ip = "10.0.0.3";
        co.client_ip_len = 8;
        afsm_uuid_v7(&co.connection_id);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        afsm_status st = afsm_session_create(sc->engine, &co, &info);
        if (st != AFSM_OK) {
            w->failures++;
            continue;
        }
        int at = atomic_load_explicit(&sc->created[w->index], memory_order_relaxed);
        sc->ids[(size_t)w->index * (size_t)sc->per_region + (size_t)at] = info.session_id;
        atomic_store_explicit(&sc->created[w->index], at + 1, memory_order_release);
    }
    return NULL;
}

static void *scale_heartbeat(void *arg)
{
    scale_worker *w = arg;
    scale *sc = w->sc;
    double next = now_s();
    while (!atomic_load_explicit(&sc->stop, memory_order_relaxed)) {
        int counted = atomic_load_explicit(&w->all_created, memory_order_acquire);
        double round_start = now_s();
        /* Every region's sessions, dealt out among the heartbeaters. */
        for (int r = 0; r < sc->o->threads; r++) {
            int n = atomic_load_explicit(&sc->created[r], memory_order_acquire);
            for (int i = w->index; i < n; i += sc->heartbeaters) {
                double call_start = counted ? now_s() : 0;
                afsm_status st =
                    afsm_session_heartbeat(sc->engine, &sc->ids[(size_t)r * (size_t)sc->per_region + i], NULL);
                /* A call that waits (on etcd, a lock) shows here; a round
                 * stretched by CPU contention does not. */
                double call = counted ? now_s() - call_start : 0;
                if (call > w->longest_call_s)
                    w->longest_call_s = call;
                w->failures += st != AFSM_OK;
                w->heartbeats++;
            }
        }
        double took = now_s() - round_start;
        if (counted && took > w->longest_round_s)
            w->longest_round_s = took;
        next += 1.0;
        while (now_s() < next && !atomic_load_explicit(&sc->stop, memory_order_relaxed)) {
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL); /* pacing: once a second per session */
        }
        if (now_s() > next + 1.0)
            next = now_s(); /* a round overran by a second: do not try to catch up */
    }
    return NULL;
}

static int lease_scale(const options *o, int sessions, uint64_t timeout_ms)
{
    afsm_engine *e = open_engine(o, AFSM_STORE_ETCD, AFSM_READ_REPLICA, "/bench-scale/", timeout_ms);
    /* Before the store's renewer, a heartbeat that found its lease due
     * waited for the keepalive's round trip, and 4 threads' rounds
     * stretched to 25 s: --heartbeaters 4 measures that case. */
    enum { HEARTBEATERS_MAX = 64 };
    int heartbeaters = o->heartbeaters;
    scale sc = {
        .o = o, .engine = e, .per_region = (sessions + o->threads - 1) / o->threads, .heartbeaters = heartbeaters};
    sc.ids = calloc((size_t)sc.per_region * (size_t)o->threads, sizeof(afsm_uuid));
    sc.created = calloc((size_t)o->threads, sizeof(*sc.created));
    scale_worker *creators = calloc((size_t)o->threads, sizeof(*creators));
    scale_worker beaters[HEARTBEATERS_MAX] = {0};
    pthread_t *ct = calloc((size_t)o->threads, sizeof(*ct)), bt[HEARTBEATERS_MAX];
    double start = now_s();
    for (int i = 0; i < heartbeaters; i++) {
        beaters[i].sc = &sc;
        beaters[i].index = i;
        pthread_create(&bt[i], NULL, scale_heartbeat, &beaters[i]);
    }
    for (int i = 0; i < o->threads; i++) {
        creators[i].sc = &sc;
        creators[i].index = i;
        pthread_create(&ct[i], NULL, scale_create, &creators[i]);
    }
    uint64_t create_failures = 0;
    int total = 0;
    for (int i = 0; i < o->threads; i++) {
        pthread_join(ct[i], NULL);
        create_failures += creators[i].failures;
        total += atomic_load(&sc.created[i]);
    }
    double created_s = now_s() - start;
    for (int i = 0; i < heartbeaters; i++)
        atomic_store_explicit(&beaters[i].all_created, 1, memory_order_release);
    uint64_t hb_before = 0;
    for (int i = 0; i < heartbeaters; i++)
        hb_before += beaters[i].heartbeats; /* racy read: only a rough rate */
    uint64_t sent_before = keepalives_sent(e);
    double etcd_before = renewed_total(o), window_start = now_s();
    while (now_s() < window_start + o->lease_seconds) {
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
    double window = now_s() - window_start;
    uint64_t sent = keepalives_sent(e) - sent_before;
    double etcd_after = renewed_total(o);
    atomic_store(&sc.stop, 1);
    uint64_t hb_failures = 0, heartbeats = 0;
    double longest = 0, longest_call = 0;
    for (int i = 0; i < heartbeaters; i++) {
        pthread_join(bt[i], NULL);
        hb_failures += beaters[i].failures;
        heartbeats += beaters[i].heartbeats;
        longest = beaters[i].longest_round_s > longest ? beaters[i].longest_round_s : longest;
        longest_call = beaters[i].longest_call_s > longest_call ? beaters[i].longest_call_s : longest_call;
    }
    afsm_metrics m = AFSM_METRICS_INIT;
    afsm_metrics_snapshot(e, &m);
    printf(
        "{\n  \"lease_sessions\": %d,\n  \"create_failures\": %llu,\n  \"create_seconds\": %.1f,\n"
        "  \"heartbeaters\": %d,\n  \"lease_timeout_s\": %.1f,\n  \"window_s\": %.1f,\n  \"keepalives_per_s\": %.1f,\n"
        "  \"keepalives_etcd_counted_per_s\": %.1f,\n  \"keepalive_bound_per_s\": %.1f,\n"
        "  \"heartbeats_per_s_in_window\": %.0f,\n  \"heartbeat_failures\": %llu,\n"
        "  \"longest_heartbeat_round_s\": %.2f,\n  \"longest_heartbeat_call_ms\": %.3f,\n  \"sessions_at_end\": "
        "%llu\n}\n",
        total, (unsigned long long)create_failures, created_s, heartbeaters, timeout_ms / 1000.0, window,
        (double)sent / window, etcd_before < 0 || etcd_after < 0 ? -1.0 : (etcd_after - etcd_before) / window,
        total / (timeout_ms / 1000.0 / 3.0), (double)(heartbeats - hb_before) / (now_s() - window_start),
        (unsigned long long)hb_failures, longest, longest_call * 1000.0, (unsigned long long)m.sessions);
    /* Sessions are left to their leases: deleting 100K would take minutes. */
    afsm_engine_close(e);
    free(sc.ids);
    free((void *)sc.created);
    free(creators);
    free(ct);
    return hb_failures == 0 && create_failures == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    /* Lease traffic: 500 sessions with a 6 s timeout (a lease TTL of 8 s),
     * so that creating them all (a few per millisecond) takes well under a
     * TTL, and a heartbeat round with its renewals well under a second. */
    options o = {
        .threads = 4, .seconds = 3, .sessions = 2000, .lease_seconds = 9, .lease_timeout_ms = 6000, .heartbeaters = 16};
    int lease_only = 0;  /* --lease-only N: only the lease traffic of N sessions */
    int create_only = 0; /* --create-only 1: only the floor and create phases */
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--endpoints"))
            o.endpoints = argv[i + 1];
        else if (!strcmp(argv[i], "--threads"))
            o.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            o.seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--sessions"))
            o.sessions = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lease-seconds"))
            o.lease_seconds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lease-only"))
            lease_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--create-only"))
            create_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--heartbeaters"))
            o.heartbeaters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lease-timeout-ms"))
            o.lease_timeout_ms = (uint64_t)atoll(argv[i + 1]);
    }
    if (o.endpoints == NULL || o.threads < 1 || o.sessions < 1 || o.heartbeaters < 1 || o.heartbeaters > 64) {
        fprintf(stderr, "usage: etcd_bench --endpoints URLS [--threads N] [--seconds S] "
                        "[--sessions M] [--lease-seconds S] [--lease-only N [--lease-timeout-ms T] [--heartbeaters H]] "
                        "[--create-only 1]\n");
        return 2;
    }
    if (lease_only > 0)
        return lease_scale(&o, lease_only, o.lease_timeout_ms);
    /* The floor and create alternated, best of two each (the get
     * comparison below does the same): the machine is shared, and a burst
     * of someone else's work in one phase should not decide the ratio.
     * Each phase's costs are those of its best round. */
    afsm_engine *etcd = open_engine(&o, AFSM_STORE_ETCD, AFSM_READ_REPLICA, "/bench/", 30 * 60 * 1000);
    afsm_uuid *ids = NULL;
    int id_count = 0;
    uint64_t create_failures = 0;
    double floor = 0, create = 0;
    phase_cost floor_cost[2], create_cost[2];
    for (int round = 0; round < 2; round++) {
        phase_cost f[2], c[2];
        uint64_t failures;
        phase_mark(&o, &f[0]);
        double fl = run(&o, W_FLOOR, NULL, NULL, 0, o.seconds, NULL, NULL, &failures);
        phase_mark(&o, &f[1]);
        afsm_uuid *made = NULL;
        int made_count = 0;
        phase_mark(&o, &c[0]);
        double cr = run(&o, W_CREATE, etcd, NULL, 0, o.seconds, &made, &made_count, &failures);
        phase_mark(&o, &c[1]);
        create_failures += failures;
        if (ids == NULL) { /* the first round's sessions serve the reads below */
            ids = made;
            id_count = made_count;
        } else {
            free(made);
        }
        if (fl > floor) {
            floor = fl;
            memcpy(floor_cost, f, sizeof(f));
        }
        if (cr > create) {
            create = cr;
            memcpy(create_cost, c, sizeof(c));
        }
    }
    if (id_count == 0)
        die("create", AFSM_EUNAVAILABLE);
    if (create_only) {
        printf("{\n");
        phase_print("txn_floor", &floor_cost[0], &floor_cost[1], floor);
        phase_print("create", &create_cost[0], &create_cost[1], create);
        printf("  \"txn_floor_per_s\": %.0f,\n  \"create_per_s\": %.0f,\n  \"create_failures\": %llu,\n"
               "  \"create_vs_floor\": %.3f\n}\n",
               floor, create, (unsigned long long)create_failures, create / floor);
        afsm_engine_close(etcd);
        free(ids);
        return 0;
    }

    afsm_engine *memory = open_engine(&o, AFSM_STORE_MEMORY, 0, NULL, 30 * 60 * 1000);
    afsm_uuid *mem_ids = NULL;
    int mem_count = 0;
    run(&o, W_CREATE, memory, NULL, 0, 0.5, &mem_ids, &mem_count, NULL);
    /* Same number of sessions in both engines for the get comparison. */
    int n = id_count < mem_count ? id_count : mem_count;
    /* Alternated, best of two each: the machine is shared, and a burst of
     * someone else's work should not decide the ratio. */
    double get_memory = 0, get_replica = 0;
    for (int round = 0; round < 2; round++) {
        double m = run(&o, W_GET, memory, mem_ids, n, o.seconds / 2, NULL, NULL, NULL);
        double r = run(&o, W_GET, etcd, ids, n, o.seconds / 2, NULL, NULL, NULL);
        get_memory = m > get_memory ? m : get_memory;
        get_replica = r > get_replica ? r : get_replica;
    }
    /* The load: this engine's open reads every session both create
     * phases wrote under the prefix. */
    int peak_known = reset_peak_rss();
    long rss_before_kb = status_kb("VmRSS");
    double load_start = now_s();
    afsm_engine *consistent = open_engine(&o, AFSM_STORE_ETCD, AFSM_READ_CONSISTENT, "/bench/", 30 * 60 * 1000);
    double load_s = now_s() - load_start;
    long peak_rise_kb = peak_known ? status_kb("VmHWM") - rss_before_kb : -1;
    afsm_counts loaded = {0};
    afsm_engine_counts(consistent, &loaded);
    afsm_engine *linear = open_engine(&o, AFSM_STORE_ETCD, AFSM_READ_LINEARIZABLE, "/bench/", 30 * 60 * 1000);
    double get_consistent = run(&o, W_GET, consistent, ids, n, o.seconds, NULL, NULL, NULL);
    double get_linear = run(&o, W_GET, linear, ids, n, o.seconds, NULL, NULL, NULL);
    /* Activated first, untimed: the timed heartbeats then measure what a
     * heartbeat costs from the second on (local, a keepalive at most once
     * per timeout / 3), not n activation writes (which, with thousands of
     * sessions, filled the whole timed window). */
    run(&o, W_ACTIVATE, etcd, ids, n, 0, NULL, NULL, NULL);
    double heartbeat = run(&o, W_HEARTBEAT, etcd, ids, n, o.seconds, NULL, NULL, NULL);
    afsm_engine_close(consistent);
    afsm_engine_close(linear);
    afsm_engine_close(memory);
    /* A flush pass, with the other engines closed: the n sessions the reads
     * used have stats. */
    for (int i = 0; i < n; i++) {
        afsm_stats d = {.packets_sent = 1, .bytes_sent = 100};
        afsm_session_add_stats(etcd, &ids[i], &d);
    }
    afsm_metrics before_flush = AFSM_METRICS_INIT, after_flush = AFSM_METRICS_INIT;
    afsm_metrics_snapshot(etcd, &before_flush);
    int64_t revision_before = etcd_revision(&o);
    double flush_start = now_s();
    etcd_stats_flush((etcd_store *)etcd->st);
    double flush_s = now_s() - flush_start;
    int64_t flush_txns = etcd_revision(&o) - revision_before;
    afsm_metrics_snapshot(etcd, &after_flush);
    uint64_t flushed = after_flush.etcd_stats_writes_total - before_flush.etcd_stats_writes_total;
    afsm_engine_close(etcd);

    int lease_sessions = o.sessions < 500 ? o.sessions : 500;
    double etcd_counted;
    double keepalives = lease_traffic(&o, lease_sessions, o.lease_timeout_ms, &etcd_counted);
    double bound = lease_sessions / (o.lease_timeout_ms / 1000.0 / 3.0);

    printf("{\n");
    phase_print("txn_floor", &floor_cost[0], &floor_cost[1], floor);
    phase_print("create", &create_cost[0], &create_cost[1], create);
    printf("  \"threads\": %d,\n  \"sessions\": %d,\n  \"txn_floor_per_s\": %.0f,\n  \"create_per_s\": %.0f,\n"
           "  \"create_failures\": %llu,\n  \"create_vs_floor\": %.3f,\n  \"get_memory_per_s\": %.0f,\n"
           "  \"get_replica_per_s\": %.0f,\n  \"get_replica_vs_memory\": %.3f,\n  \"get_consistent_per_s\": %.0f,\n"
           "  \"get_linearizable_per_s\": %.0f,\n  \"heartbeat_per_s\": %.0f,\n  \"lease_sessions\": %d,\n"
           "  \"lease_timeout_s\": %.1f,\n  \"keepalives_per_s\": %.1f,\n  \"keepalives_etcd_counted_per_s\": %.1f,\n"
           "  \"keepalive_bound_per_s\": %.1f,\n  \"load_sessions\": %llu,\n  \"load_seconds\": %.3f,\n"
           "  \"load_peak_rss_bytes_per_session\": %.0f,\n  \"flush_sessions\": %llu,\n"
           "  \"flush_txns\": %lld,\n  \"flush_sessions_per_s\": %.0f\n}\n",
           o.threads, n, floor, create, (unsigned long long)create_failures, create / floor, get_memory, get_replica,
           get_replica / get_memory, get_consistent, get_linear, heartbeat, lease_sessions, o.lease_timeout_ms / 1000.0,
           keepalives, etcd_counted, bound, (unsigned long long)loaded.total, load_s,
           peak_rise_kb < 0 || loaded.total == 0 ? -1.0 : peak_rise_kb * 1024.0 / (double)loaded.total,
           (unsigned long long)flushed, (long long)flush_txns, flush_s > 0 ? (double)flushed / flush_s : 0.0);
    free(ids);
    free(mem_ids);
    return 0;
}
