/*
 * engine.c: opening and closing an engine, its configuration, the reaper
 * thread, time and logging. See engine.h for what the files of the
 * engine share.
 */
#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "etcd/etcd_store.h"
#include "util/alloc.h"
#include "util/clock.h"
#include "util/token.h"
#include "util/errdetail.h"

#define DEFAULT_TIMEOUT_MS (30u * 60u * 1000u)
#define DEFAULT_CLEANUP_MS 1000u
#define DEFAULT_TICK_MS    100u
#define DEFAULT_CAPACITY   1024u
#define SHARDS_MAX         4096u
#define CAPACITY_HINT_MAX  (UINT64_C(1) << 30)

/* ---- boundary checks ------------------------------------------------------ */

afsm_status check_user_id(const char *user_id, size_t len)
{
    if (user_id == NULL)
        return errdetail_set(AFSM_ENULL, "user_id: NULL");
    if (len == 0)
        return errdetail_set(AFSM_EINVAL, "user_id: 0 bytes, must be 1..%d", AFSM_USER_ID_MAX);
    const char *nul = memchr(user_id, '\0', len);
    if (nul != NULL)
        return errdetail_set(AFSM_EINVAL, "user_id: NUL byte at offset %zu, must contain none",
                             (size_t)(nul - user_id));
    if (len > AFSM_USER_ID_MAX)
        return errdetail_set(AFSM_ETOOLONG, "user_id: %zu bytes, must be 1..%d", len, AFSM_USER_ID_MAX);
    return AFSM_OK;
}

afsm_status check_info(const afsm_session_info *info)
{
    if (info->version == AFSM_SESSION_INFO_VERSION)
        return AFSM_OK;
    return errdetail_set(AFSM_EVERSION, "afsm_session_info.version: %u, this library knows %d (AFSM_SESSION_INFO_INIT)",
                         info->version, AFSM_SESSION_INFO_VERSION);
}

/* ---- init functions ---------------------------------------------------- */

/* Every option and result struct begins with its uint32_t version: zero
 * the struct (every field's default) and stamp the version the caller was
 * compiled against, which must be the one this library knows. */
static afsm_status versioned_init(void *ptr, size_t size_bytes, unsigned int version, unsigned int known)
{
    if (ptr == NULL)
        return errdetail_set(AFSM_ENULL, "the struct to initialise: NULL");
    if (version != known)
        return errdetail_set(AFSM_EVERSION, "version: %u, this library knows %u", version, known);
    memset(ptr, 0, size_bytes);
    uint32_t stamp = version;
    memcpy(ptr, &stamp, sizeof(stamp));
    return AFSM_OK;
}

/* Where version 2's fields begin: a version 1 config is that long. */
#define CONFIG_V1_SIZE offsetof(afsm_config, store)

AFSM_API afsm_status afsm_config_init(afsm_config *config, unsigned int version)
{
    errdetail_clear();
    if (version == 1)
        return versioned_init(config, CONFIG_V1_SIZE, version, 1);
    return versioned_init(config, sizeof(*config), version, AFSM_CONFIG_VERSION);
}

AFSM_API afsm_status afsm_session_info_init(afsm_session_info *info, unsigned int version)
{
    errdetail_clear();
    return versioned_init(info, sizeof(*info), version, AFSM_SESSION_INFO_VERSION);
}

AFSM_API afsm_status afsm_create_options_init(afsm_create_options *options, unsigned int version)
{
    errdetail_clear();
    return versioned_init(options, sizeof(*options), version, AFSM_CREATE_OPTIONS_VERSION);
}

AFSM_API afsm_status afsm_update_init(afsm_update *update, unsigned int version)
{
    errdetail_clear();
    return versioned_init(update, sizeof(*update), version, AFSM_UPDATE_VERSION);
}

AFSM_API afsm_status afsm_list_filter_init(afsm_list_filter *filter, unsigned int version)
{
    errdetail_clear();
    return versioned_init(filter, sizeof(*filter), version, AFSM_LIST_FILTER_VERSION);
}

/* ---- engine ------------------------------------------------------------ */

static void forward_event(void *ctx, const afsm_event *event)
{
    afsm_engine *engine = ctx;
    engine->config.on_event(engine->config.event_ctx, event);
}

static void forward_log(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t field_count)
{
    engine_log(ctx, level, message, fields, field_count);
}

static afsm_status open_store(afsm_engine *engine, const afsm_config *cfg, const store_config *sc)
{
    if (cfg->store == AFSM_STORE_MEMORY)
        return mem_store_open(sc, &engine->st);
    etcd_store_config ec = {
        .endpoints = cfg->etcd_endpoints,
        .prefix = cfg->etcd_prefix,
        .dial_timeout_ms = cfg->etcd_dial_timeout_ms,
        .request_timeout_ms = cfg->etcd_request_timeout_ms,
        .read_mode = cfg->etcd_read_mode,
        .stats_flush_ms = cfg->etcd_stats_flush_ms,
        .ca_file = cfg->etcd_ca_file,
        .cert_file = cfg->etcd_cert_file,
        .key_file = cfg->etcd_key_file,
        .user = cfg->etcd_user,
        .password = cfg->etcd_password,
    };
    return etcd_store_open(sc, &ec, &engine->st);
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
        engine_advance(engine, engine->config.clock(engine->config.clock_ctx), &expired);
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
    if (in == NULL) {
        afsm_config_init(cfg, AFSM_CONFIG_VERSION);
    } else if (in->version == 1) {
        /* Only the first part exists in the caller's memory. */
        afsm_config_init(cfg, AFSM_CONFIG_VERSION);
        memcpy(cfg, in, CONFIG_V1_SIZE);
        cfg->version = AFSM_CONFIG_VERSION;
    } else if (in->version != AFSM_CONFIG_VERSION) {
        return errdetail_set(AFSM_EVERSION, "config.version: %u, this library knows 1..%d (AFSM_CONFIG_INIT)",
                             in->version, AFSM_CONFIG_VERSION);
    } else {
        *cfg = *in;
    }
    if (cfg->shard_count == 0)
        cfg->shard_count = default_shard_count();
    if (cfg->shard_count > SHARDS_MAX || (cfg->shard_count & (cfg->shard_count - 1)) != 0)
        return errdetail_set(AFSM_EINVAL, "config.shard_count: %u, must be a power of two up to %u (0: the default)",
                             cfg->shard_count, SHARDS_MAX);
    /* Presizing is ~48 bytes of table slots per session hinted: past 2^30 no
     * machine holds the sessions, and the per-shard sizes would overflow. */
    if (cfg->capacity_hint > CAPACITY_HINT_MAX)
        return errdetail_set(AFSM_EINVAL, "config.capacity_hint: %llu, must be at most %llu (0: %u)",
                             (unsigned long long)cfg->capacity_hint, (unsigned long long)CAPACITY_HINT_MAX,
                             DEFAULT_CAPACITY);
    if (cfg->reaper != AFSM_REAPER_THREAD && cfg->reaper != AFSM_REAPER_MANUAL)
        return errdetail_set(AFSM_EINVAL, "config.reaper: %u, must be AFSM_REAPER_THREAD (0) or AFSM_REAPER_MANUAL (1)",
                             cfg->reaper);
    if (cfg->limit_policy != AFSM_LIMIT_REJECT && cfg->limit_policy != AFSM_LIMIT_EVICT_OLDEST)
        return errdetail_set(AFSM_EINVAL,
                             "config.limit_policy: %u, must be AFSM_LIMIT_REJECT (0) or AFSM_LIMIT_EVICT_OLDEST (1)",
                             cfg->limit_policy);
    if (cfg->key == NULL && cfg->key_len != 0)
        return errdetail_set(AFSM_ENULL, "config.key: NULL with key_len %zu", cfg->key_len);
    if (cfg->key_file == NULL && cfg->key_file_len != 0)
        return errdetail_set(AFSM_ENULL, "config.key_file: NULL with key_file_len %zu", cfg->key_file_len);
    if (cfg->key != NULL && cfg->key_file != NULL) /* one first key, not two */
        return errdetail_set(AFSM_EINVAL, "config.key and config.key_file: both set, give one first key");
    if (cfg->key != NULL && cfg->key_len != AFSM_KEY_BYTES)
        return errdetail_set(AFSM_EINVAL, "config.key: %zu bytes, must be %d", cfg->key_len, AFSM_KEY_BYTES);
    if ((cfg->key != NULL || cfg->key_file != NULL) && (cfg->key_id == 0 || cfg->key_id > AFSM_KEY_ID_MAX))
        return errdetail_set(AFSM_EINVAL, "config.key_id: %u, must be 1..%d with a key or key_file", cfg->key_id,
                             AFSM_KEY_ID_MAX);
    if (cfg->server_addr == NULL && cfg->server_addr_len != 0)
        return errdetail_set(AFSM_ENULL, "config.server_addr: NULL with server_addr_len %zu", cfg->server_addr_len);
    if (cfg->server_addr_len > AFSM_SERVER_ADDR_MAX)
        return errdetail_set(AFSM_ETOOLONG, "config.server_addr: %zu bytes, must be at most %d", cfg->server_addr_len,
                             AFSM_SERVER_ADDR_MAX);
    if (cfg->server_addr != NULL && memchr(cfg->server_addr, '\0', cfg->server_addr_len) != NULL)
        return errdetail_set(AFSM_EINVAL, "config.server_addr: contains a NUL byte");
    if (cfg->default_timeout_ms > SESSION_TIMEOUT_MS_MAX)
        return errdetail_set(AFSM_EINVAL, "config.default_timeout_ms: %llu, must be at most %llu (~49.7 days)",
                             (unsigned long long)cfg->default_timeout_ms, (unsigned long long)SESSION_TIMEOUT_MS_MAX);
    const struct {
        const char *name;
        uint64_t value;
    } spans[] = {{"max_lifetime_ms", cfg->max_lifetime_ms},
                 {"idle_timeout_ms", cfg->idle_timeout_ms},
                 {"cleanup_interval_ms", cfg->cleanup_interval_ms},
                 {"tick_ms", cfg->tick_ms},
                 {"close_linger_ms", cfg->close_linger_ms}};
    for (size_t i = 0; i < sizeof(spans) / sizeof(spans[0]); i++)
        if (spans[i].value > TIMEOUT_MS_MAX)
            return errdetail_set(AFSM_EINVAL, "config.%s: %llu, must be at most %llu (10 years)", spans[i].name,
                                 (unsigned long long)spans[i].value, (unsigned long long)TIMEOUT_MS_MAX);
    if (cfg->log_level != 0 && cfg->log_level != AFSM_LOG_DEBUG && cfg->log_level != AFSM_LOG_INFO &&
        cfg->log_level != AFSM_LOG_WARN && cfg->log_level != AFSM_LOG_ERROR)
        return errdetail_set(AFSM_EINVAL, "config.log_level: %u, must be 0, 10, 20, 30 or 40 (AFSM_LOG_*)",
                             cfg->log_level);
    if (cfg->store != AFSM_STORE_MEMORY && cfg->store != AFSM_STORE_ETCD)
        return errdetail_set(AFSM_EINVAL, "config.store: %u, must be AFSM_STORE_MEMORY (0) or AFSM_STORE_ETCD (1)",
                             cfg->store);
    if (cfg->etcd_read_mode > AFSM_READ_CONSISTENT)
        return errdetail_set(AFSM_EINVAL,
                             "config.etcd_read_mode: %u, must be AFSM_READ_REPLICA, _LINEARIZABLE or "
                             "_CONSISTENT (0..2)",
                             cfg->etcd_read_mode);
    if (cfg->store == AFSM_STORE_ETCD) {
        if (cfg->etcd_endpoints == NULL)
            return errdetail_set(AFSM_ENULL, "config.etcd_endpoints: NULL, the etcd store needs at least one");
        /* What the etcd store does not do (yet): see afsm.h. */
        if (cfg->idle_timeout_ms != 0 || cfg->max_lifetime_ms != 0 || cfg->close_linger_ms != 0)
            return errdetail_set(AFSM_EINVAL, "config.idle_timeout_ms, max_lifetime_ms, close_linger_ms: must be 0 "
                                              "with the etcd store (not supported there yet)");
        if ((cfg->etcd_cert_file == NULL) != (cfg->etcd_key_file == NULL))
            return errdetail_set(AFSM_EINVAL, "config.etcd_cert_file and etcd_key_file: give both or neither");
        if (cfg->etcd_user == NULL && cfg->etcd_password != NULL)
            return errdetail_set(AFSM_EINVAL, "config.etcd_password: set without etcd_user");
        const struct {
            const char *name;
            uint64_t value;
        } etcd_spans[] = {{"etcd_request_timeout_ms", cfg->etcd_request_timeout_ms},
                          {"etcd_dial_timeout_ms", cfg->etcd_dial_timeout_ms},
                          {"etcd_stats_flush_ms", cfg->etcd_stats_flush_ms}};
        for (size_t i = 0; i < sizeof(etcd_spans) / sizeof(etcd_spans[0]); i++)
            if (etcd_spans[i].value > TIMEOUT_MS_MAX)
                return errdetail_set(AFSM_EINVAL, "config.%s: %llu, must be at most %llu (10 years)",
                                     etcd_spans[i].name, (unsigned long long)etcd_spans[i].value,
                                     (unsigned long long)TIMEOUT_MS_MAX);
    }
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

/* The first token key: the configured one, or a random one for this
 * engine's life (tokens then die with the process). */
static afsm_status first_key(afsm_engine *engine, const afsm_config *cfg)
{
    uint8_t key[AFSM_KEY_BYTES];
    uint32_t key_id = cfg->key_id;
    afsm_status status = AFSM_OK;
    if (cfg->key != NULL) {
        memcpy(key, cfg->key, AFSM_KEY_BYTES);
    } else if (cfg->key_file != NULL) {
        status = keyring_read_file(cfg->key_file, cfg->key_file_len, key);
    } else {
        randombytes_buf(key, sizeof(key));
        key_id = 0;
    }
    if (status == AFSM_OK)
        status = keyring_add(engine->keys, key_id, key);
    sodium_memzero(key, sizeof(key));
    return status;
}

AFSM_API afsm_status afsm_engine_open(const afsm_config *config, afsm_engine **out)
{
    errdetail_clear();
    if (out == NULL)
        return errdetail_set(AFSM_ENULL, "out: NULL");
    *out = NULL;
    afsm_config cfg;
    afsm_status status = resolve_config(config, &cfg);
    if (status != AFSM_OK)
        return status;
    if (token_init() != AFSM_OK)
        return AFSM_EINTERNAL;

    afsm_engine *engine = mem_aligned_alloc(CK_MD_CACHELINE, sizeof(*engine));
    if (engine == NULL)
        return AFSM_ENOMEM;
    memset(engine, 0, sizeof(*engine));
    engine->config = cfg;
    if (cfg.server_addr != NULL)
        memcpy(engine->server_addr, cfg.server_addr, cfg.server_addr_len);
    engine->config.server_addr = engine->server_addr;
    /* Copied in already; the pointers must not outlive the caller's data. */
    engine->config.key = NULL;
    engine->config.key_file = NULL;
    engine->config.etcd_endpoints = NULL;
    engine->config.etcd_prefix = NULL;
    engine->config.etcd_ca_file = NULL;
    engine->config.etcd_cert_file = NULL;
    engine->config.etcd_key_file = NULL;
    engine->config.etcd_user = NULL;
    engine->config.etcd_password = NULL;
    atomic_init(&engine->default_timeout_ns, cfg.default_timeout_ms * NS_PER_MS);

    status = keyring_open(&engine->keys);
    if (status != AFSM_OK)
        goto fail_engine;
    status = first_key(engine, &cfg);
    if (status != AFSM_OK)
        goto fail_keys;

    store_config sc = {
        .shard_count = cfg.shard_count,
        .capacity_hint = cfg.capacity_hint,
        .tick_ns = cfg.tick_ms * NS_PER_MS,
        .idle_timeout_ns = cfg.idle_timeout_ms * NS_PER_MS,
        .max_lifetime_ns = cfg.max_lifetime_ms * NS_PER_MS,
        .close_linger_ns = cfg.close_linger_ms * NS_PER_MS,
        .max_sessions_per_user = cfg.max_sessions_per_user,
        .limit_policy = cfg.limit_policy,
        .metrics = !cfg.disable_metrics,
        .server_addr = engine->server_addr,
        .clock = cfg.clock,
        .clock_ctx = cfg.clock_ctx,
        .emit = cfg.on_event != NULL ? forward_event : NULL,
        .emit_ctx = engine,
        .log = forward_log,
        .log_ctx = engine,
    };
    status = open_store(engine, &cfg, &sc);
    if (status != AFSM_OK)
        goto fail_keys;
    if (cfg.reaper == AFSM_REAPER_THREAD) {
        status = start_reaper(engine);
        if (status != AFSM_OK)
            goto fail_store;
    }
    *out = engine;
    return AFSM_OK;
fail_store:
    engine->st->ops->close(engine->st);
fail_keys:
    keyring_close(engine->keys);
fail_engine:
    mem_free(engine);
    return status;
}

static void stop_reaper(afsm_engine *engine)
{
    pthread_mutex_lock(&engine->reaper_mutex);
    engine->reaper_stop = 1;
    pthread_cond_signal(&engine->reaper_wakeup);
    pthread_mutex_unlock(&engine->reaper_mutex);
    pthread_join(engine->reaper, NULL);
    pthread_cond_destroy(&engine->reaper_wakeup);
    pthread_mutex_destroy(&engine->reaper_mutex);
    engine->reaper_running = 0;
    engine->reaper_stop = 0;
}

AFSM_API afsm_status afsm_engine_close(afsm_engine *engine)
{
    errdetail_clear();
    if (engine == NULL)
        return AFSM_OK;
    size_t pinned = engine->st->ops->pinned(engine->st);
    if (pinned != 0)
        return errdetail_set(AFSM_EBUSY, "engine: %zu pinned handle(s), release them before closing", pinned);
    /* The reaper's callbacks may still pin a handle until it has stopped:
     * count again once it has, and if one did, keep the engine running. */
    int had_reaper = engine->reaper_running;
    if (had_reaper)
        stop_reaper(engine);
    pinned = engine->st->ops->pinned(engine->st);
    if (pinned != 0) {
        if (had_reaper && start_reaper(engine) != AFSM_OK)
            engine_log(engine, AFSM_LOG_ERROR,
                       "reaper thread could not restart after a refused close; "
                       "call afsm_engine_advance to expire sessions",
                       NULL, 0);
        return errdetail_set(AFSM_EBUSY, "engine: %zu pinned handle(s), one pinned by a callback during close", pinned);
    }
    engine->st->ops->close(engine->st);
    keyring_close(engine->keys);
    mem_free(engine);
    return AFSM_OK;
}

/* Go-style duration text ("1m0s", "250ms") for log fields, as the service
 * this replaces logged them. */
static void format_duration(uint64_t ms, char *out, size_t size)
{
    if (ms < 1000) {
        snprintf(out, size, "%llums", (unsigned long long)ms);
        return;
    }
    unsigned long long s = ms / 1000, h = s / 3600, m = s / 60 % 60, sec = s % 60, frac = ms % 1000;
    char seconds[24];
    if (frac != 0)
        snprintf(seconds, sizeof(seconds), "%llu.%03llus", sec, frac);
    else
        snprintf(seconds, sizeof(seconds), "%llus", sec);
    if (h > 0)
        snprintf(out, size, "%lluh%llum%s", h, m, seconds);
    else if (m > 0)
        snprintf(out, size, "%llum%s", m, seconds);
    else
        snprintf(out, size, "%s", seconds);
}

void engine_log_remaining(const afsm_engine *engine, const afsm_uuid *id, uint64_t remaining_ms)
{
    char id_text[AFSM_UUID_STRING_SIZE], remaining[48];
    afsm_uuid_format(id, id_text);
    format_duration(remaining_ms, remaining, sizeof(remaining));
    afsm_log_field fields[] = {{"session_id", id_text}, {"remaining", remaining}};
    engine_log(engine, AFSM_LOG_DEBUG, "session heartbeat", fields, 2);
}

afsm_status engine_advance(afsm_engine *engine, uint64_t now_ns, size_t *expired)
{
    *expired = 0;
    afsm_status status = engine->st->ops->advance(engine->st, now_ns, expired);
    if (*expired > 0 && engine_logs(engine, AFSM_LOG_INFO)) {
        char count[24];
        snprintf(count, sizeof(count), "%zu", *expired);
        afsm_log_field field = {"count", count};
        engine_log(engine, AFSM_LOG_INFO, "expired sessions cleaned up", &field, 1);
    }
    if (status != AFSM_OK && engine_logs(engine, AFSM_LOG_WARN)) {
        afsm_log_field field = {"status", afsm_status_name(status)};
        engine_log(engine, AFSM_LOG_WARN, "expiry pass incomplete; the next one resumes", &field, 1);
    }
    return status;
}

void engine_log(const afsm_engine *engine, int level, const char *message, const afsm_log_field *fields,
                size_t field_count)
{
    if (engine_logs(engine, level))
        engine->config.on_log(engine->config.log_ctx, level, message, fields, field_count);
}

AFSM_API afsm_status afsm_engine_advance(afsm_engine *engine, uint64_t now_ns, size_t *expired_count)
{
    errdetail_clear();
    if (engine == NULL)
        return errdetail_set(AFSM_ENULL, "engine: NULL");
    /* The wheels never go back: a reading from the future would settle
     * sessions before their deadline, and leave every deadline before it,
     * set afterwards, unexpired until the clock got there. */
    uint64_t clock_ns = engine->config.clock(engine->config.clock_ctx);
    if (now_ns > clock_ns)
        return errdetail_set(AFSM_EINVAL,
                             "now_ns: %llu is ahead of the engine clock (%llu; pass a reading of "
                             "afsm_engine_now)",
                             (unsigned long long)now_ns, (unsigned long long)clock_ns);
    size_t expired = 0;
    afsm_status status = engine_advance(engine, now_ns, &expired);
    if (expired_count != NULL)
        *expired_count = expired;
    return status;
}

AFSM_API afsm_status afsm_engine_now(afsm_engine *engine, uint64_t *now_ns)
{
    errdetail_clear();
    if (engine == NULL || now_ns == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "now_ns");
    *now_ns = engine->config.clock(engine->config.clock_ctx);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_engine_set_default_timeout(afsm_engine *engine, uint64_t timeout_ms)
{
    errdetail_clear();
    if (engine == NULL)
        return errdetail_set(AFSM_ENULL, "engine: NULL");
    if (timeout_ms == 0 || timeout_ms > SESSION_TIMEOUT_MS_MAX)
        return errdetail_set(AFSM_EINVAL, "timeout_ms: %llu, must be 1..%llu (~49.7 days)",
                             (unsigned long long)timeout_ms, (unsigned long long)SESSION_TIMEOUT_MS_MAX);
    atomic_store_explicit(&engine->default_timeout_ns, timeout_ms * NS_PER_MS, memory_order_relaxed);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_engine_counts(afsm_engine *engine, afsm_counts *out)
{
    errdetail_clear();
    if (engine == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "out");
    return engine->st->ops->counts(engine->st, out);
}

AFSM_API afsm_status afsm_engine_pinned(afsm_engine *engine, uint64_t *count)
{
    errdetail_clear();
    if (engine == NULL || count == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "count");
    *count = engine->st->ops->pinned(engine->st);
    return AFSM_OK;
}
