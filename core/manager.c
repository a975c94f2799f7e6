/*
 * manager.c: the public session and engine functions of afsm.h.
 *
 * Every argument from outside is checked here, once, and turned into the
 * store's internal form (parsed IP, resolved timeout, validated metadata);
 * the store below never sees bad input. Policy that is not about storage
 * also lives here: defaults, the reaper thread, and forwarding events and
 * logs to the caller's hooks.
 *
 * Shared state: default_timeout_ns is a relaxed atomic (any thread may set
 * it); the reaper's stop flag and wakeup are under reaper_mutex. Nothing
 * else in the engine struct changes after open.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "afsm.h"
#include "metadata.h"
#include "store.h"
#include "util/alloc.h"
#include "util/clock.h"
#include "util/uuid.h"

#define NS_PER_MS          UINT64_C(1000000)
#define DEFAULT_TIMEOUT_MS (30u * 60u * 1000u)
#define DEFAULT_CLEANUP_MS 1000u
#define DEFAULT_TICK_MS    100u
#define DEFAULT_CAPACITY   1024u
#define SHARDS_MAX         4096u
/* Timeouts beyond ten years are surely a unit mistake, and keep every
 * deadline far from overflowing 63 bits of nanoseconds. */
#define TIMEOUT_MS_MAX (UINT64_C(10) * 365 * 24 * 3600 * 1000)

struct afsm_engine {
    store *st;
    afsm_config config;
    char server_addr[AFSM_SERVER_ADDR_MAX + 1];
    _Atomic uint64_t default_timeout_ns;

    int reaper_running;
    pthread_t reaper;
    pthread_mutex_t reaper_mutex;
    pthread_cond_t reaper_wakeup;
    int reaper_stop; /* under reaper_mutex */
};

struct afsm_handle {
    afsm_engine *engine;
    store_handle *h;
};

/* ---- small checks ------------------------------------------------------ */

static afsm_status check_user_id(const char *user_id, size_t len)
{
    if (user_id == NULL)
        return AFSM_ENULL;
    if (len == 0 || memchr(user_id, '\0', len) != NULL)
        return AFSM_EINVAL;
    return len > AFSM_USER_ID_MAX ? AFSM_ETOOLONG : AFSM_OK;
}

static afsm_status check_reason(const char *reason, size_t len)
{
    if (reason == NULL && len != 0)
        return AFSM_ENULL;
    return len > AFSM_REASON_MAX ? AFSM_ETOOLONG : AFSM_OK;
}

static afsm_status check_info(const afsm_session_info *info)
{
    return info->version == AFSM_SESSION_INFO_VERSION ? AFSM_OK : AFSM_EVERSION;
}

static uint64_t ns_to_ms_ceil(uint64_t ns)
{
    return ns / NS_PER_MS + (ns % NS_PER_MS != 0);
}

/* ---- init functions ---------------------------------------------------- */

AFSM_API afsm_status afsm_config_init(afsm_config *config, unsigned int version)
{
    if (config == NULL)
        return AFSM_ENULL;
    if (version != AFSM_CONFIG_VERSION)
        return AFSM_EVERSION;
    memset(config, 0, sizeof(*config));
    config->version = version;
    return AFSM_OK;
}

AFSM_API afsm_status afsm_session_info_init(afsm_session_info *info, unsigned int version)
{
    if (info == NULL)
        return AFSM_ENULL;
    if (version != AFSM_SESSION_INFO_VERSION)
        return AFSM_EVERSION;
    memset(info, 0, sizeof(*info));
    info->version = version;
    return AFSM_OK;
}

AFSM_API afsm_status afsm_create_options_init(afsm_create_options *options, unsigned int version)
{
    if (options == NULL)
        return AFSM_ENULL;
    if (version != AFSM_CREATE_OPTIONS_VERSION)
        return AFSM_EVERSION;
    memset(options, 0, sizeof(*options));
    options->version = version;
    return AFSM_OK;
}

AFSM_API afsm_status afsm_update_init(afsm_update *update, unsigned int version)
{
    if (update == NULL)
        return AFSM_ENULL;
    if (version != AFSM_UPDATE_VERSION)
        return AFSM_EVERSION;
    memset(update, 0, sizeof(*update));
    update->version = version;
    return AFSM_OK;
}

AFSM_API afsm_status afsm_list_filter_init(afsm_list_filter *filter, unsigned int version)
{
    if (filter == NULL)
        return AFSM_ENULL;
    if (version != AFSM_LIST_FILTER_VERSION)
        return AFSM_EVERSION;
    memset(filter, 0, sizeof(*filter));
    filter->version = version;
    return AFSM_OK;
}

/* ---- engine ------------------------------------------------------------ */

static void forward_event(void *ctx, const afsm_event *event)
{
    afsm_engine *engine = ctx;
    engine->config.on_event(engine->config.event_ctx, event);
}

static void *reaper_main(void *arg)
{
    afsm_engine *engine = arg;
    uint64_t period_ns = engine->config.cleanup_interval_ms * NS_PER_MS;
    pthread_mutex_lock(&engine->reaper_mutex);
    while (!engine->reaper_stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + period_ns;
        until.tv_sec += (time_t)(ns / 1000000000u);
        until.tv_nsec = (long)(ns % 1000000000u);
        pthread_cond_timedwait(&engine->reaper_wakeup, &engine->reaper_mutex, &until);
        if (engine->reaper_stop)
            break;
        pthread_mutex_unlock(&engine->reaper_mutex);
        size_t expired;
        engine->st->ops->advance(engine->st, engine->config.clock(engine->config.clock_ctx), &expired);
        pthread_mutex_lock(&engine->reaper_mutex);
    }
    pthread_mutex_unlock(&engine->reaper_mutex);
    return NULL;
}

static afsm_status start_reaper(afsm_engine *engine)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return AFSM_ENOMEM;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int failed = pthread_cond_init(&engine->reaper_wakeup, &attr);
    pthread_condattr_destroy(&attr);
    if (failed)
        return AFSM_ENOMEM;
    pthread_mutex_init(&engine->reaper_mutex, NULL);
    if (pthread_create(&engine->reaper, NULL, reaper_main, engine) != 0) {
        pthread_cond_destroy(&engine->reaper_wakeup);
        pthread_mutex_destroy(&engine->reaper_mutex);
        return AFSM_ENOMEM;
    }
    engine->reaper_running = 1;
    return AFSM_OK;
}

static unsigned default_shard_count(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned want = cpus > 0 ? (unsigned)cpus * 4u : 4u;
    unsigned n = 1;
    while (n < want && n < SHARDS_MAX)
        n <<= 1;
    return n;
}

static afsm_status resolve_config(const afsm_config *in, afsm_config *cfg)
{
    if (in == NULL)
        afsm_config_init(cfg, AFSM_CONFIG_VERSION);
    else if (in->version != AFSM_CONFIG_VERSION)
        return AFSM_EVERSION;
    else
        *cfg = *in;
    if (cfg->shard_count == 0)
        cfg->shard_count = default_shard_count();
    if (cfg->shard_count > SHARDS_MAX || (cfg->shard_count & (cfg->shard_count - 1)) != 0)
        return AFSM_EINVAL;
    if (cfg->reaper != AFSM_REAPER_THREAD && cfg->reaper != AFSM_REAPER_MANUAL)
        return AFSM_EINVAL;
    if (cfg->server_addr == NULL && cfg->server_addr_len != 0)
        return AFSM_ENULL;
    if (cfg->server_addr_len > AFSM_SERVER_ADDR_MAX)
        return AFSM_ETOOLONG;
    if (cfg->server_addr != NULL && memchr(cfg->server_addr, '\0', cfg->server_addr_len) != NULL)
        return AFSM_EINVAL;
    if (cfg->default_timeout_ms > TIMEOUT_MS_MAX || cfg->max_lifetime_ms > TIMEOUT_MS_MAX ||
        cfg->idle_timeout_ms > TIMEOUT_MS_MAX || cfg->cleanup_interval_ms > TIMEOUT_MS_MAX ||
        cfg->tick_ms > TIMEOUT_MS_MAX || cfg->close_linger_ms > TIMEOUT_MS_MAX)
        return AFSM_EINVAL;
    if (cfg->log_level != 0 && cfg->log_level != AFSM_LOG_DEBUG && cfg->log_level != AFSM_LOG_INFO &&
        cfg->log_level != AFSM_LOG_WARN && cfg->log_level != AFSM_LOG_ERROR)
        return AFSM_EINVAL;
    if (cfg->default_timeout_ms == 0)
        cfg->default_timeout_ms = DEFAULT_TIMEOUT_MS;
    if (cfg->cleanup_interval_ms == 0)
        cfg->cleanup_interval_ms = DEFAULT_CLEANUP_MS;
    if (cfg->tick_ms == 0)
        cfg->tick_ms = DEFAULT_TICK_MS;
    if (cfg->capacity_hint == 0)
        cfg->capacity_hint = DEFAULT_CAPACITY;
    if (cfg->log_level == 0)
        cfg->log_level = AFSM_LOG_INFO;
    if (cfg->clock == NULL)
        cfg->clock = clock_monotonic_coarse_ns;
    return AFSM_OK;
}

AFSM_API afsm_status afsm_engine_open(const afsm_config *config, afsm_engine **out)
{
    if (out == NULL)
        return AFSM_ENULL;
    *out = NULL;
    afsm_config cfg;
    afsm_status status = resolve_config(config, &cfg);
    if (status != AFSM_OK)
        return status;

    afsm_engine *engine = mem_calloc(1, sizeof(*engine));
    if (engine == NULL)
        return AFSM_ENOMEM;
    engine->config = cfg;
    if (cfg.server_addr != NULL)
        memcpy(engine->server_addr, cfg.server_addr, cfg.server_addr_len);
    engine->config.server_addr = engine->server_addr;
    atomic_init(&engine->default_timeout_ns, cfg.default_timeout_ms * NS_PER_MS);

    store_config sc = {
        .shard_count = cfg.shard_count,
        .capacity_hint = cfg.capacity_hint,
        .tick_ns = cfg.tick_ms * NS_PER_MS,
        .idle_timeout_ns = cfg.idle_timeout_ms * NS_PER_MS,
        .max_lifetime_ns = cfg.max_lifetime_ms * NS_PER_MS,
        .close_linger_ns = cfg.close_linger_ms * NS_PER_MS,
        .server_addr = engine->server_addr,
        .clock = cfg.clock,
        .clock_ctx = cfg.clock_ctx,
        .emit = cfg.on_event != NULL ? forward_event : NULL,
        .emit_ctx = engine,
    };
    status = mem_store_open(&sc, &engine->st);
    if (status != AFSM_OK) {
        mem_free(engine);
        return status;
    }
    if (cfg.reaper == AFSM_REAPER_THREAD) {
        status = start_reaper(engine);
        if (status != AFSM_OK) {
            engine->st->ops->close(engine->st);
            mem_free(engine);
            return status;
        }
    }
    *out = engine;
    return AFSM_OK;
}

AFSM_API afsm_status afsm_engine_close(afsm_engine *engine)
{
    if (engine == NULL)
        return AFSM_OK;
    if (engine->st->ops->pinned(engine->st) != 0)
        return AFSM_EBUSY;
    if (engine->reaper_running) {
        pthread_mutex_lock(&engine->reaper_mutex);
        engine->reaper_stop = 1;
        pthread_cond_signal(&engine->reaper_wakeup);
        pthread_mutex_unlock(&engine->reaper_mutex);
        pthread_join(engine->reaper, NULL);
        pthread_cond_destroy(&engine->reaper_wakeup);
        pthread_mutex_destroy(&engine->reaper_mutex);
    }
    engine->st->ops->close(engine->st);
    mem_free(engine);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_engine_advance(afsm_engine *engine, uint64_t now_ns, size_t *expired_count)
{
    if (engine == NULL)
        return AFSM_ENULL;
    size_t expired = 0;
    afsm_status status = engine->st->ops->advance(engine->st, now_ns, &expired);
    if (expired_count != NULL)
        *expired_count = expired;
    return status;
}

AFSM_API afsm_status afsm_engine_now(afsm_engine *engine, uint64_t *now_ns)
{
    if (engine == NULL || now_ns == NULL)
        return AFSM_ENULL;
    *now_ns = engine->config.clock(engine->config.clock_ctx);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_engine_set_default_timeout(afsm_engine *engine, uint64_t timeout_ms)
{
    if (engine == NULL)
        return AFSM_ENULL;
    if (timeout_ms == 0 || timeout_ms > TIMEOUT_MS_MAX)
        return AFSM_EINVAL;
    atomic_store_explicit(&engine->default_timeout_ns, timeout_ms * NS_PER_MS, memory_order_relaxed);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_engine_counts(afsm_engine *engine, afsm_counts *out)
{
    if (engine == NULL || out == NULL)
        return AFSM_ENULL;
    return engine->st->ops->counts(engine->st, out);
}

/* ---- sessions ---------------------------------------------------------- */

AFSM_API afsm_status afsm_session_create(afsm_engine *engine, const afsm_create_options *options,
                                         afsm_session_info *out)
{
    if (engine == NULL || options == NULL)
        return AFSM_ENULL;
    if (options->version != AFSM_CREATE_OPTIONS_VERSION)
        return AFSM_EVERSION;
    if (out != NULL && check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    afsm_status status = check_user_id(options->user_id, options->user_id_len);
    if (status != AFSM_OK)
        return status;
    if (options->client_port > 65535 || options->timeout_ms > TIMEOUT_MS_MAX)
        return AFSM_EINVAL;
    session_spec spec = {
        .user_id = options->user_id,
        .user_id_len = (uint16_t)options->user_id_len,
        .client_port = (uint16_t)options->client_port,
        .connection_id = options->connection_id,
        .metadata = options->metadata,
        .metadata_count = options->metadata_count,
    };
    if (options->client_ip == NULL)
        return AFSM_ENULL;
    status = afsm_ip_parse(options->client_ip, options->client_ip_len, &spec.client_ip);
    if (status != AFSM_OK)
        return status;
    if (uuid_is_nil(&options->connection_id))
        return AFSM_EUUID;
    status = metadata_validate(options->metadata, options->metadata_count);
    if (status != AFSM_OK)
        return status;
    spec.timeout_ns = options->timeout_ms != 0
                          ? options->timeout_ms * NS_PER_MS
                          : atomic_load_explicit(&engine->default_timeout_ns, memory_order_relaxed);
    return engine->st->ops->create(engine->st, &spec, out);
}

AFSM_API afsm_status afsm_session_get(afsm_engine *engine, const afsm_uuid *session_id, afsm_session_info *out)
{
    if (engine == NULL || session_id == NULL || out == NULL)
        return AFSM_ENULL;
    if (check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    return engine->st->ops->get(engine->st, session_id, out);
}

AFSM_API afsm_status afsm_session_get_by_connection(afsm_engine *engine, const afsm_uuid *connection_id,
                                                    afsm_session_info *out)
{
    if (engine == NULL || connection_id == NULL || out == NULL)
        return AFSM_ENULL;
    if (check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    return engine->st->ops->get_by_connection(engine->st, connection_id, out);
}

AFSM_API afsm_status afsm_session_get_metadata(afsm_engine *engine, const afsm_uuid *session_id, char *buf,
                                               size_t buf_size, size_t *needed, size_t *count)
{
    if (engine == NULL || session_id == NULL || (buf == NULL && buf_size != 0))
        return AFSM_ENULL;
    return engine->st->ops->get_metadata(engine->st, session_id, buf, buf_size, needed, count);
}

AFSM_API afsm_status afsm_session_update(afsm_engine *engine, const afsm_uuid *session_id, const afsm_update *update,
                                         afsm_session_info *out)
{
    if (engine == NULL || session_id == NULL || update == NULL)
        return AFSM_ENULL;
    if (update->version != AFSM_UPDATE_VERSION || (out != NULL && check_info(out) != AFSM_OK))
        return AFSM_EVERSION;
    const uint32_t known =
        AFSM_UPDATE_STATE | AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_METADATA_REPLACE | AFSM_UPDATE_STATS;
    if ((update->fields & ~known) != 0)
        return AFSM_EINVAL;
    if ((update->fields & AFSM_UPDATE_METADATA_MERGE) && (update->fields & AFSM_UPDATE_METADATA_REPLACE))
        return AFSM_EINVAL;
    if ((update->fields & AFSM_UPDATE_STATE) &&
        (update->state < AFSM_STATE_CONNECTING || update->state > AFSM_STATE_CLOSED))
        return AFSM_EINVAL;
    if (update->fields & (AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_METADATA_REPLACE)) {
        afsm_status status = metadata_validate(update->metadata, update->metadata_count);
        if (status != AFSM_OK)
            return status;
    }
    return engine->st->ops->update(engine->st, session_id, update, out);
}

AFSM_API afsm_status afsm_session_add_stats(afsm_engine *engine, const afsm_uuid *session_id, const afsm_stats *delta)
{
    if (engine == NULL || session_id == NULL || delta == NULL)
        return AFSM_ENULL;
    return engine->st->ops->add_stats(engine->st, session_id, delta);
}

AFSM_API afsm_status afsm_session_heartbeat(afsm_engine *engine, const afsm_uuid *session_id, uint64_t *remaining_ms)
{
    if (engine == NULL || session_id == NULL)
        return AFSM_ENULL;
    uint64_t remaining_ns = 0;
    afsm_status status = engine->st->ops->heartbeat(engine->st, session_id, &remaining_ns);
    if (status == AFSM_OK && remaining_ms != NULL)
        *remaining_ms = ns_to_ms_ceil(remaining_ns);
    return status;
}

AFSM_API afsm_status afsm_session_delete(afsm_engine *engine, const afsm_uuid *session_id, const char *reason,
                                         size_t reason_len)
{
    if (engine == NULL || session_id == NULL)
        return AFSM_ENULL;
    afsm_status status = check_reason(reason, reason_len);
    if (status != AFSM_OK)
        return status;
    return engine->st->ops->remove(engine->st, session_id, reason, reason_len);
}

AFSM_API afsm_status afsm_session_delete_by_user(afsm_engine *engine, const char *user_id, size_t user_id_len,
                                                 const char *reason, size_t reason_len, size_t *deleted)
{
    if (engine == NULL)
        return AFSM_ENULL;
    afsm_status status = check_user_id(user_id, user_id_len);
    if (status == AFSM_OK)
        status = check_reason(reason, reason_len);
    if (status != AFSM_OK)
        return status;
    size_t removed = 0;
    status = engine->st->ops->remove_by_user(engine->st, user_id, user_id_len, reason, reason_len, &removed);
    if (deleted != NULL)
        *deleted = removed;
    return status;
}

AFSM_API afsm_status afsm_session_list(afsm_engine *engine, const afsm_list_filter *filter, afsm_session_info *out,
                                       size_t out_capacity, size_t *count, uint64_t *total, afsm_uuid *next_cursor)
{
    if (engine == NULL || filter == NULL || out == NULL || count == NULL || total == NULL)
        return AFSM_ENULL;
    if (filter->version != AFSM_LIST_FILTER_VERSION || check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    for (size_t i = 1; i < out_capacity && i < filter->limit; i++)
        if (out[i].version != out[0].version)
            return AFSM_EVERSION;
    if (filter->limit == 0 || filter->limit > AFSM_LIST_LIMIT_MAX || out_capacity < filter->limit)
        return AFSM_EINVAL;
    if (filter->state > AFSM_STATE_CLOSED)
        return AFSM_EINVAL;
    if (filter->user_id != NULL) {
        afsm_status status = check_user_id(filter->user_id, filter->user_id_len);
        if (status != AFSM_OK)
            return status;
    }
    return engine->st->ops->list(engine->st, filter, out, count, total, next_cursor);
}

/* ---- batches ----------------------------------------------------------- */

static afsm_status check_batch(afsm_engine *engine, const void *ids, size_t n, const void *statuses)
{
    if (engine == NULL || (n != 0 && (ids == NULL || statuses == NULL)))
        return AFSM_ENULL;
    return n > AFSM_BATCH_MAX ? AFSM_EINVAL : AFSM_OK;
}

AFSM_API afsm_status afsm_session_get_batch(afsm_engine *engine, const afsm_uuid *ids, size_t n, afsm_session_info *out,
                                            afsm_status *statuses)
{
    afsm_status status = check_batch(engine, ids, n, statuses);
    if (status != AFSM_OK)
        return status;
    if (n != 0 && out == NULL)
        return AFSM_ENULL;
    for (size_t i = 0; i < n; i++)
        if (check_info(&out[i]) != AFSM_OK)
            return AFSM_EVERSION;
    for (size_t i = 0; i < n; i++)
        statuses[i] = engine->st->ops->get(engine->st, &ids[i], &out[i]);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_session_heartbeat_batch(afsm_engine *engine, const afsm_uuid *ids, size_t n,
                                                  uint64_t *remaining_ms, afsm_status *statuses)
{
    afsm_status status = check_batch(engine, ids, n, statuses);
    if (status != AFSM_OK)
        return status;
    for (size_t i = 0; i < n; i++) {
        uint64_t remaining_ns = 0;
        statuses[i] = engine->st->ops->heartbeat(engine->st, &ids[i], &remaining_ns);
        if (remaining_ms != NULL)
            remaining_ms[i] = statuses[i] == AFSM_OK ? ns_to_ms_ceil(remaining_ns) : 0;
    }
    return AFSM_OK;
}

AFSM_API afsm_status afsm_session_add_stats_batch(afsm_engine *engine, const afsm_uuid *ids, const afsm_stats *deltas,
                                                  size_t n, afsm_status *statuses)
{
    afsm_status status = check_batch(engine, ids, n, statuses);
    if (status != AFSM_OK)
        return status;
    if (n != 0 && deltas == NULL)
        return AFSM_ENULL;
    for (size_t i = 0; i < n; i++)
        statuses[i] = engine->st->ops->add_stats(engine->st, &ids[i], &deltas[i]);
    return AFSM_OK;
}

/* ---- handles ----------------------------------------------------------- */

static afsm_status pin(afsm_engine *engine, const afsm_uuid *id, int by_connection, afsm_handle **out)
{
    if (engine == NULL || id == NULL || out == NULL)
        return AFSM_ENULL;
    *out = NULL;
    afsm_handle *handle = mem_alloc(sizeof(*handle));
    if (handle == NULL)
        return AFSM_ENOMEM;
    afsm_status status = engine->st->ops->pin(engine->st, id, by_connection, &handle->h);
    if (status != AFSM_OK) {
        mem_free(handle);
        return status;
    }
    handle->engine = engine;
    *out = handle;
    return AFSM_OK;
}

AFSM_API afsm_status afsm_handle_pin(afsm_engine *engine, const afsm_uuid *session_id, afsm_handle **out)
{
    return pin(engine, session_id, 0, out);
}

AFSM_API afsm_status afsm_handle_pin_by_connection(afsm_engine *engine, const afsm_uuid *connection_id,
                                                   afsm_handle **out)
{
    return pin(engine, connection_id, 1, out);
}

AFSM_API afsm_status afsm_handle_heartbeat(afsm_handle *handle, uint64_t *remaining_ms)
{
    if (handle == NULL)
        return AFSM_ENULL;
    uint64_t remaining_ns = 0;
    afsm_status status = handle->engine->st->ops->handle_heartbeat(handle->h, &remaining_ns);
    if (status == AFSM_OK && remaining_ms != NULL)
        *remaining_ms = ns_to_ms_ceil(remaining_ns);
    return status;
}

AFSM_API afsm_status afsm_handle_add_stats(afsm_handle *handle, const afsm_stats *delta)
{
    if (handle == NULL || delta == NULL)
        return AFSM_ENULL;
    return handle->engine->st->ops->handle_add_stats(handle->h, delta);
}

AFSM_API afsm_status afsm_handle_session_id(const afsm_handle *handle, afsm_uuid *out)
{
    if (handle == NULL || out == NULL)
        return AFSM_ENULL;
    handle->engine->st->ops->handle_session_id(handle->h, out);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_handle_release(afsm_handle *handle)
{
    if (handle == NULL)
        return AFSM_OK;
    handle->engine->st->ops->handle_release(handle->h);
    mem_free(handle);
    return AFSM_OK;
}
