/*
 * metrics.c: afsm_metrics_snapshot and its Prometheus text exposition.
 *
 * Names follow the service this replaces (session_total, session_active,
 * session_idle, session_created_total, session_deleted_total,
 * session_expired_total, session_duration_seconds), with every state as a
 * session_<state> gauge and the engine's own health under session_engine_*.
 * Counters are kept per shard (per stripe for token validations) and summed
 * here, on read.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "util/errdetail.h"

AFSM_API afsm_status afsm_metrics_snapshot(afsm_engine *engine, afsm_metrics *out)
{
    errdetail_clear();
    if (engine == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "out");
    if (out->version != AFSM_METRICS_VERSION && out->version != 1)
        return errdetail_set(AFSM_EVERSION, "out.version: %u, this library knows 1..%d (AFSM_METRICS_INIT)",
                             out->version, AFSM_METRICS_VERSION);
    /* A version 1 struct ends where version 2's fields begin. */
    size_t size = out->version == 1 ? offsetof(afsm_metrics, etcd_lease_grants_total) : sizeof(*out);
    afsm_metrics all;
    memset(&all, 0, sizeof(all));
    all.version = out->version;
    afsm_status status = engine->st->ops->metrics(engine->st, &all);
    if (status != AFSM_OK)
        return status;
    for (unsigned s = 0; s < TOKEN_STRIPES; s++)
        for (unsigned r = 0; r < AFSM_TOKEN_RESULT_COUNT; r++)
            all.token_validations[r] += atomic_load_explicit(&engine->token_counts[s].results[r], memory_order_relaxed);
    memcpy(out, &all, size);
    return AFSM_OK;
}

/* Appends to a caller buffer, or only counts once it is full. */
typedef struct text {
    char *buf;
    size_t size;
    size_t used;
} text;

__attribute__((format(printf, 2, 3))) static void put(text *t, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    size_t room = t->used < t->size ? t->size - t->used : 0;
    int n = vsnprintf(room > 0 ? t->buf + t->used : NULL, room, fmt, args);
    va_end(args);
    if (n > 0)
        t->used += (size_t)n;
}

static void header(text *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void single(text *t, const char *name, const char *type, const char *help, unsigned long long value)
{
    header(t, name, type, help);
    put(t, "%s %llu\n", name, value);
}

static const char *const state_names[AFSM_STATE_COUNT] = {NULL,   "connecting",    "active",
                                                          "idle", "disconnecting", "closed"};
static const char *const delete_reasons[AFSM_DELETE_REASON_COUNT] = {"requested", "user", "closed", "evicted",
                                                                     "expired"};
static const char *const token_results[AFSM_TOKEN_RESULT_COUNT] = {
    "ok",        "malformed", "forged", "unknown_key", "removed_key",
    "not_found", "expired",   "closed", "revoked",     "ip_mismatch"};
static const char *const duration_bounds[AFSM_DURATION_BUCKETS] = {
    "1", "5", "15", "30", "60", "300", "900", "1800", "3600", "7200", "14400", "43200", "86400", "+Inf"};

static void render(text *t, const afsm_metrics *m)
{
    /* The replaced service's name for a gauge; promtool's lint reserves
     * _total for counters, so it goes out untyped under that name. */
    single(t, "session_total", "untyped", "Sessions held by the engine (a gauge; name kept from the old service).",
           m->sessions);
    for (unsigned s = AFSM_STATE_CONNECTING; s < AFSM_STATE_COUNT; s++) {
        char name[40], help[64];
        snprintf(name, sizeof(name), "session_%s", state_names[s]);
        snprintf(help, sizeof(help), "Sessions in state %s.", state_names[s]);
        single(t, name, "gauge", help, m->sessions_by_state[s]);
    }
    single(t, "session_created_total", "counter", "Sessions created.", m->created_total);
    header(t, "session_deleted_total", "counter", "Sessions removed, by reason (expired ones included).");
    for (unsigned r = 0; r < AFSM_DELETE_REASON_COUNT; r++)
        put(t, "session_deleted_total{reason=\"%s\"} %llu\n", delete_reasons[r],
            (unsigned long long)m->deleted_total[r]);
    single(t, "session_expired_total", "counter", "Sessions that expired.", m->expired_total);
    header(t, "session_duration_seconds", "histogram", "How long sessions lived, observed when they ended.");
    unsigned long long cumulative = 0;
    for (unsigned b = 0; b < AFSM_DURATION_BUCKETS; b++) {
        cumulative += m->duration_buckets[b];
        put(t, "session_duration_seconds_bucket{le=\"%s\"} %llu\n", duration_bounds[b], cumulative);
    }
    put(t, "session_duration_seconds_sum %.3f\n", m->duration_sum_seconds);
    put(t, "session_duration_seconds_count %llu\n", (unsigned long long)m->duration_count);
    single(t, "session_idle_transitions_total", "counter", "Active sessions that went idle for lack of activity.",
           m->idle_transitions_total);
    single(t, "session_wake_transitions_total", "counter", "Idle sessions woken by activity.",
           m->wake_transitions_total);
    header(t, "session_token_validations_total", "counter", "Token validations, by result.");
    for (unsigned r = 0; r < AFSM_TOKEN_RESULT_COUNT; r++)
        put(t, "session_token_validations_total{result=\"%s\"} %llu\n", token_results[r],
            (unsigned long long)m->token_validations[r]);
    single(t, "session_engine_shards", "gauge", "Shards of the in-memory engine.", m->shard_count);
    header(t, "session_engine_reaper_lag_seconds", "gauge", "How far expiry lags behind the engine clock.");
    put(t, "session_engine_reaper_lag_seconds %.3f\n", (double)m->reaper_lag_ns / 1e9);
    single(t, "session_engine_deferred_frees", "gauge", "Frees waiting for readers to leave (process-wide).",
           m->deferred_frees);
}

/* The etcd store's series, only for an engine on it. */
static void render_etcd(text *t, const afsm_metrics *m)
{
    single(t, "session_etcd_lease_grants_total", "counter", "Session leases granted in etcd.",
           m->etcd_lease_grants_total);
    single(t, "session_etcd_lease_keepalives_total", "counter",
           "Lease renewals sent to etcd (at most one per session per timeout/3).", m->etcd_lease_keepalives_total);
    single(t, "session_etcd_stats_writes_total", "counter", "Sessions' stats written to etcd by the periodic flush.",
           m->etcd_stats_writes_total);
    header(
        t, "session_etcd_replica_lag_seconds", "gauge",
        "How stale replica reads may be: the watch's delay on this node's last write, or how long it has been down.");
    put(t, "session_etcd_replica_lag_seconds %.3f\n", m->etcd_replica_lag_seconds);
}

AFSM_API afsm_status afsm_metrics_write_prometheus(afsm_engine *engine, char *buf, size_t buf_size, size_t *needed)
{
    errdetail_clear();
    if (engine == NULL || (buf == NULL && buf_size != 0))
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "buf (buf_size > 0)");
    afsm_metrics m = AFSM_METRICS_INIT;
    afsm_status status = afsm_metrics_snapshot(engine, &m);
    if (status != AFSM_OK)
        return status;
    text t = {buf, buf_size, 0};
    render(&t, &m);
    if (engine->config.store == AFSM_STORE_ETCD)
        render_etcd(&t, &m);
    if (needed != NULL)
        *needed = t.used + 1;
    if (t.used + 1 > buf_size)
        return errdetail_set(AFSM_EBUFFER, "buf_size: %zu, the metrics need %zu", buf_size, t.used + 1);
    buf[t.used] = '\0';
    return AFSM_OK;
}
