/*
 * manager.c: the public session functions of afsm.h.
 *
 * Every argument from outside is checked here, once, and turned into the
 * store's internal form (parsed IP, resolved timeout, validated metadata);
 * the store below never sees bad input.
 */
#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "metadata.h"
#include "util/alloc.h"
#include "util/clock.h"
#include "util/uuid.h"
#include "util/errdetail.h"

/* A reason reaches events and logs as text: bounded, and no NUL inside,
 * as for user ids and metadata. */
static afsm_status check_reason(const char *reason, size_t len)
{
    if (reason == NULL && len != 0)
        return errdetail_set(AFSM_ENULL, "reason: NULL with reason_len %zu", len);
    if (len > AFSM_REASON_MAX)
        return errdetail_set(AFSM_ETOOLONG, "reason: %zu bytes, must be at most %d", len, AFSM_REASON_MAX);
    const char *nul = len != 0 ? memchr(reason, '\0', len) : NULL;
    if (nul != NULL)
        return errdetail_set(AFSM_EINVAL, "reason: NUL byte at offset %zu, must be text without NUL",
                             (size_t)(nul - reason));
    return AFSM_OK;
}

/* ---- sessions ---------------------------------------------------------- */

/* What create and restore both check and resolve. */
static afsm_status make_spec(afsm_engine *engine, const char *user_id, size_t user_id_len, uint32_t port,
                             const afsm_uuid *connection_id, const afsm_kv *metadata, size_t metadata_count,
                             uint64_t timeout_ms, session_spec *spec)
{
    afsm_status status = check_user_id(user_id, user_id_len);
    if (status != AFSM_OK)
        return status;
    if (port > 65535)
        return errdetail_set(AFSM_EINVAL, "client_port: %u, must be 0..65535", port);
    if (timeout_ms > SESSION_TIMEOUT_MS_MAX)
        return errdetail_set(AFSM_EINVAL, "timeout_ms: %llu, must be at most %llu (~49.7 days; 0: the default)",
                             (unsigned long long)timeout_ms, (unsigned long long)SESSION_TIMEOUT_MS_MAX);
    if (uuid_is_nil(connection_id))
        return errdetail_set(AFSM_EUUID, "connection_id: the nil UUID, must be non-nil");
    status = metadata_validate(metadata, metadata_count);
    if (status != AFSM_OK)
        return status;
    memset(spec, 0, sizeof(*spec));
    spec->user_id = user_id;
    spec->user_id_len = (uint16_t)user_id_len;
    spec->client_port = (uint16_t)port;
    spec->connection_id = *connection_id;
    spec->metadata = metadata;
    spec->metadata_count = metadata_count;
    spec->timeout_ns = timeout_ms != 0 ? timeout_ms * NS_PER_MS
                                       : atomic_load_explicit(&engine->default_timeout_ns, memory_order_relaxed);
    return AFSM_OK;
}

static void log_created(const afsm_engine *engine, const afsm_session_info *s)
{
    if (!engine_logs(engine, AFSM_LOG_INFO))
        return;
    char id[AFSM_UUID_STRING_SIZE], conn[AFSM_UUID_STRING_SIZE], ip[AFSM_IP_STRING_SIZE];
    afsm_uuid_format(&s->session_id, id);
    afsm_uuid_format(&s->connection_id, conn);
    afsm_ip_format(&s->client_ip, ip);
    afsm_log_field fields[] = {{"session_id", id}, {"user_id", s->user_id}, {"connection_id", conn}, {"client_ip", ip}};
    engine_log(engine, AFSM_LOG_INFO, "session created", fields, 4);
}

AFSM_API afsm_status afsm_session_create(afsm_engine *engine, const afsm_create_options *options,
                                         afsm_session_info *out)
{
    errdetail_clear();
    if (engine == NULL || options == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "options");
    if (options->version != AFSM_CREATE_OPTIONS_VERSION)
        return errdetail_set(AFSM_EVERSION, "options.version: %u, this library knows %d (AFSM_CREATE_OPTIONS_INIT)",
                             options->version, AFSM_CREATE_OPTIONS_VERSION);
    if (out != NULL && check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    session_spec spec;
    afsm_status status =
        make_spec(engine, options->user_id, options->user_id_len, options->client_port, &options->connection_id,
                  options->metadata, options->metadata_count, options->timeout_ms, &spec);
    if (status != AFSM_OK)
        return status;
    if (options->client_ip == NULL)
        return errdetail_set(AFSM_ENULL, "client_ip: NULL");
    status = afsm_ip_parse(options->client_ip, options->client_ip_len, &spec.client_ip);
    if (status != AFSM_OK) {
        char quoted[ERRDETAIL_QUOTE_SIZE];
        return errdetail_set(status, "client_ip: \"%s\", must be an IPv4 or IPv6 address",
                             errdetail_quote(options->client_ip, options->client_ip_len, quoted));
    }
    /* The log line wants the copy even when the caller does not. */
    afsm_session_info local;
    afsm_session_info *copy = out;
    if (copy == NULL && engine_logs(engine, AFSM_LOG_INFO)) {
        afsm_session_info_init(&local, AFSM_SESSION_INFO_VERSION);
        copy = &local;
    }
    status = engine->st->ops->create(engine->st, &spec, copy);
    if (status == AFSM_OK && copy != NULL)
        log_created(engine, copy);
    return status;
}

AFSM_API afsm_status afsm_session_restore(afsm_engine *engine, const afsm_session_info *info, const afsm_kv *metadata,
                                          size_t metadata_count)
{
    errdetail_clear();
    if (engine == NULL || info == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "info");
    if (check_info(info) != AFSM_OK)
        return AFSM_EVERSION;
    /* Times far outside any real clock (negative, or near INT64_MAX where
     * adding a timeout would overflow) are not a copy of a session. */
    const int64_t time_max = INT64_MAX / 2;
    if (info->created_at_ns < 0 || info->created_at_ns > time_max || info->last_active_at_ns < 0 ||
        info->last_active_at_ns > time_max)
        return errdetail_set(AFSM_EINVAL, "info.created_at_ns / last_active_at_ns: must be 0..%lld",
                             (long long)time_max);
    /* The store keeps created <= last active <= expires; a copy always has it. */
    if (info->created_at_ns > info->last_active_at_ns)
        return errdetail_set(AFSM_EINVAL, "info.created_at_ns: %lld, after info.last_active_at_ns %lld, must not be",
                             (long long)info->created_at_ns, (long long)info->last_active_at_ns);
    if (info->state < AFSM_STATE_CONNECTING || info->state > AFSM_STATE_CLOSED)
        return errdetail_set(AFSM_EINVAL, "info.state: %u, must be %d..%d (connecting..closed)", info->state,
                             AFSM_STATE_CONNECTING, AFSM_STATE_CLOSED);
    if (info->timeout_ms == 0)
        return errdetail_set(AFSM_EINVAL, "info.timeout_ms: 0, must be 1..%llu",
                             (unsigned long long)SESSION_TIMEOUT_MS_MAX);
    /* Checked before make_spec, which would read past info->user_id; too
     * long, as create says of a user id past its bound. */
    if (info->user_id_len > AFSM_USER_ID_MAX)
        return errdetail_set(AFSM_ETOOLONG, "info.user_id_len: %u, must be 1..%d", info->user_id_len, AFSM_USER_ID_MAX);
    if (info->client_ip.family != 4 && info->client_ip.family != 6)
        return errdetail_set(AFSM_EINVAL, "info.client_ip.family: %u, must be 4 or 6", info->client_ip.family);
    if (info->token_generation == 0)
        return errdetail_set(AFSM_EINVAL, "info.token_generation: 0, must be at least 1");
    if (uuid_is_nil(&info->session_id))
        return errdetail_set(AFSM_EUUID, "info.session_id: the nil UUID, must be non-nil");
    session_spec spec;
    afsm_status status = make_spec(engine, info->user_id, info->user_id_len, info->client_port, &info->connection_id,
                                   metadata, metadata_count, info->timeout_ms, &spec);
    if (status != AFSM_OK)
        return status;
    spec.client_ip = info->client_ip;
    spec.restore = info;
    return engine->st->ops->create(engine->st, &spec, NULL);
}

/* The rejections of afsm_session_get, out of its straight path. */
static __attribute__((noinline, cold)) afsm_status get_rejected(const afsm_engine *engine, const afsm_uuid *session_id,
                                                                const afsm_session_info *out)
{
    if (engine == NULL || session_id == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL",
                             engine == NULL       ? "engine"
                             : session_id == NULL ? "session_id"
                                                  : "out");
    return check_info(out);
}

AFSM_API afsm_status afsm_session_get(afsm_engine *engine, const afsm_uuid *session_id, afsm_session_info *out)
{
    errdetail_clear();
    /* The same checks as everywhere, with the failures out of line: a Get
     * is bounded by its instruction count (issue 15, goal 1). */
    if (__builtin_expect(
            engine == NULL || session_id == NULL || out == NULL || out->version != AFSM_SESSION_INFO_VERSION, 0))
        return get_rejected(engine, session_id, out);
    return engine->st->ops->get(engine->st, session_id, out);
}

AFSM_API afsm_status afsm_session_get_by_connection(afsm_engine *engine, const afsm_uuid *connection_id,
                                                    afsm_session_info *out)
{
    errdetail_clear();
    if (engine == NULL || connection_id == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL",
                             engine == NULL          ? "engine"
                             : connection_id == NULL ? "connection_id"
                                                     : "out");
    if (check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    return engine->st->ops->get_by_connection(engine->st, connection_id, out);
}

AFSM_API afsm_status afsm_session_get_metadata(afsm_engine *engine, const afsm_uuid *session_id, char *buf,
                                               size_t buf_size, size_t *needed, size_t *count)
{
    errdetail_clear();
    if (engine == NULL || session_id == NULL || (buf == NULL && buf_size != 0))
        return errdetail_set(AFSM_ENULL, "%s: NULL",
                             engine == NULL       ? "engine"
                             : session_id == NULL ? "session_id"
                                                  : "buf (buf_size > 0)");
    /* The detail of a short buffer says the size, wanted or not. */
    size_t size = 0;
    size_t *size_out = needed != NULL ? needed : &size;
    afsm_status status = engine->st->ops->get_metadata(engine->st, session_id, buf, buf_size, size_out, count);
    if (status == AFSM_EBUFFER)
        return errdetail_set(status, "buf_size: %zu, the metadata needs %zu (needed)", buf_size, *size_out);
    return status;
}

AFSM_API afsm_status afsm_session_update(afsm_engine *engine, const afsm_uuid *session_id, const afsm_update *update,
                                         afsm_session_info *out)
{
    errdetail_clear();
    if (engine == NULL || session_id == NULL || update == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL",
                             engine == NULL       ? "engine"
                             : session_id == NULL ? "session_id"
                                                  : "update");
    if (update->version != AFSM_UPDATE_VERSION)
        return errdetail_set(AFSM_EVERSION, "update.version: %u, this library knows %d (AFSM_UPDATE_INIT)",
                             update->version, AFSM_UPDATE_VERSION);
    if (out != NULL && check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    const uint32_t known =
        AFSM_UPDATE_STATE | AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_METADATA_REPLACE | AFSM_UPDATE_STATS;
    if ((update->fields & ~known) != 0)
        return errdetail_set(AFSM_EINVAL, "update.fields: 0x%x, only the bits 0x%x (AFSM_UPDATE_*) are defined",
                             update->fields, known);
    if ((update->fields & AFSM_UPDATE_METADATA_MERGE) && (update->fields & AFSM_UPDATE_METADATA_REPLACE))
        return errdetail_set(AFSM_EINVAL, "update.fields: METADATA_MERGE and METADATA_REPLACE together, give one");
    if ((update->fields & AFSM_UPDATE_STATE) &&
        (update->state < AFSM_STATE_CONNECTING || update->state > AFSM_STATE_CLOSED))
        return errdetail_set(AFSM_EINVAL, "update.state: %u, must be %d..%d (connecting..closed)", update->state,
                             AFSM_STATE_CONNECTING, AFSM_STATE_CLOSED);
    if (update->fields & (AFSM_UPDATE_METADATA_MERGE | AFSM_UPDATE_METADATA_REPLACE)) {
        afsm_status status = metadata_validate(update->metadata, update->metadata_count);
        if (status != AFSM_OK)
            return status;
    }
    return engine->st->ops->update(engine->st, session_id, update, out);
}

AFSM_API afsm_status afsm_session_add_stats(afsm_engine *engine, const afsm_uuid *session_id, const afsm_stats *delta)
{
    errdetail_clear();
    if (engine == NULL || session_id == NULL || delta == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL",
                             engine == NULL       ? "engine"
                             : session_id == NULL ? "session_id"
                                                  : "delta");
    return engine->st->ops->add_stats(engine->st, session_id, delta);
}

AFSM_API afsm_status afsm_session_heartbeat(afsm_engine *engine, const afsm_uuid *session_id, uint64_t *remaining_ms)
{
    errdetail_clear();
    if (engine == NULL || session_id == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "session_id");
    uint64_t remaining_ns = 0;
    afsm_status status = engine->st->ops->heartbeat(engine->st, session_id, &remaining_ns);
    if (status != AFSM_OK)
        return status;
    if (remaining_ms != NULL)
        *remaining_ms = ns_to_ms_ceil(remaining_ns);
    if (engine_logs(engine, AFSM_LOG_DEBUG))
        engine_log_remaining(engine, session_id, ns_to_ms_ceil(remaining_ns));
    return AFSM_OK;
}

AFSM_API afsm_status afsm_session_delete(afsm_engine *engine, const afsm_uuid *session_id, const char *reason,
                                         size_t reason_len)
{
    errdetail_clear();
    if (engine == NULL || session_id == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "session_id");
    afsm_status status = check_reason(reason, reason_len);
    if (status != AFSM_OK)
        return status;
    return engine->st->ops->remove(engine->st, session_id, reason, reason_len);
}

AFSM_API afsm_status afsm_session_delete_by_user(afsm_engine *engine, const char *user_id, size_t user_id_len,
                                                 const char *reason, size_t reason_len, size_t *deleted)
{
    errdetail_clear();
    if (engine == NULL)
        return errdetail_set(AFSM_ENULL, "engine: NULL");
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
    errdetail_clear();
    if (engine == NULL || filter == NULL || out == NULL || count == NULL || total == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL",
                             engine == NULL   ? "engine"
                             : filter == NULL ? "filter"
                             : out == NULL    ? "out"
                             : count == NULL  ? "count"
                                              : "total");
    if (filter->version != AFSM_LIST_FILTER_VERSION)
        return errdetail_set(AFSM_EVERSION, "filter.version: %u, this library knows %d (AFSM_LIST_FILTER_INIT)",
                             filter->version, AFSM_LIST_FILTER_VERSION);
    if (check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    for (size_t i = 1; i < out_capacity && i < filter->limit; i++)
        if (out[i].version != out[0].version)
            return errdetail_set(AFSM_EVERSION, "out[%zu].version: %u, out[0].version is %u", i, out[i].version,
                                 out[0].version);
    if (filter->limit == 0 || filter->limit > AFSM_LIST_LIMIT_MAX)
        return errdetail_set(AFSM_EINVAL, "filter.limit: %u, must be 1..%d", filter->limit, AFSM_LIST_LIMIT_MAX);
    if (out_capacity < filter->limit)
        return errdetail_set(AFSM_EINVAL, "out_capacity: %zu, must be at least filter.limit (%u)", out_capacity,
                             filter->limit);
    if (filter->state > AFSM_STATE_CLOSED)
        return errdetail_set(AFSM_EINVAL, "filter.state: %u, must be 0..%d (0: any)", filter->state, AFSM_STATE_CLOSED);
    /* NULL means every user only with length 0: a length says the caller
     * meant a user, and lost the pointer. */
    if (filter->user_id == NULL && filter->user_id_len != 0)
        return errdetail_set(AFSM_ENULL, "filter.user_id: NULL with filter.user_id_len %zu (NULL and 0: every user)",
                             filter->user_id_len);
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
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : ids == NULL ? "ids" : "statuses");
    if (n > AFSM_BATCH_MAX)
        return errdetail_set(AFSM_EINVAL, "n: %zu, must be at most %d", n, AFSM_BATCH_MAX);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_session_get_batch(afsm_engine *engine, const afsm_uuid *ids, size_t n, afsm_session_info *out,
                                            afsm_status *statuses)
{
    errdetail_clear();
    afsm_status status = check_batch(engine, ids, n, statuses);
    if (status != AFSM_OK)
        return status;
    if (n != 0 && out == NULL)
        return errdetail_set(AFSM_ENULL, "out: NULL");
    for (size_t i = 0; i < n; i++)
        if (out[i].version != AFSM_SESSION_INFO_VERSION)
            return errdetail_set(AFSM_EVERSION, "out[%zu].version: %u, this library knows %d (AFSM_SESSION_INFO_INIT)",
                                 i, out[i].version, AFSM_SESSION_INFO_VERSION);
    const store_ops *ops = engine->st->ops;
    if (ops->get_batch != NULL) {
        ops->get_batch(engine->st, ids, n, out, statuses);
        return AFSM_OK;
    }
    for (size_t i = 0; i < n; i++)
        statuses[i] = ops->get(engine->st, &ids[i], &out[i]);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_session_heartbeat_batch(afsm_engine *engine, const afsm_uuid *ids, size_t n,
                                                  uint64_t *remaining_ms, afsm_status *statuses)
{
    errdetail_clear();
    afsm_status status = check_batch(engine, ids, n, statuses);
    if (status != AFSM_OK)
        return status;
    const store_ops *ops = engine->st->ops;
    if (ops->heartbeat_batch != NULL) {
        /* The store writes nanoseconds into the caller's array; converted
         * in place, so no second array of n. */
        ops->heartbeat_batch(engine->st, ids, n, remaining_ms, statuses);
        if (remaining_ms != NULL)
            for (size_t i = 0; i < n; i++)
                remaining_ms[i] = statuses[i] == AFSM_OK ? ns_to_ms_ceil(remaining_ms[i]) : 0;
        return AFSM_OK;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t remaining_ns = 0;
        statuses[i] = ops->heartbeat(engine->st, &ids[i], &remaining_ns);
        if (remaining_ms != NULL)
            remaining_ms[i] = statuses[i] == AFSM_OK ? ns_to_ms_ceil(remaining_ns) : 0;
    }
    return AFSM_OK;
}

AFSM_API afsm_status afsm_session_add_stats_batch(afsm_engine *engine, const afsm_uuid *ids, const afsm_stats *deltas,
                                                  size_t n, afsm_status *statuses)
{
    errdetail_clear();
    afsm_status status = check_batch(engine, ids, n, statuses);
    if (status != AFSM_OK)
        return status;
    if (n != 0 && deltas == NULL)
        return errdetail_set(AFSM_ENULL, "deltas: NULL");
    const store_ops *ops = engine->st->ops;
    if (ops->add_stats_batch != NULL) {
        ops->add_stats_batch(engine->st, ids, deltas, n, statuses);
        return AFSM_OK;
    }
    for (size_t i = 0; i < n; i++)
        statuses[i] = ops->add_stats(engine->st, &ids[i], &deltas[i]);
    return AFSM_OK;
}

/* ---- handles ----------------------------------------------------------- */

/* An afsm_handle is the store's handle (store.h): no wrapper to allocate
 * or chase on the data plane. */
static store_handle *handle_of(afsm_handle *handle)
{
    return (store_handle *)handle;
}

static afsm_status pin(afsm_engine *engine, const afsm_uuid *id, int by_connection, afsm_handle **out)
{
    if (engine == NULL || id == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL",
                             engine == NULL ? "engine"
                             : id == NULL   ? (by_connection ? "connection_id" : "session_id")
                                            : "out");
    *out = NULL;
    store_handle *h = NULL;
    afsm_status status = engine->st->ops->pin(engine->st, id, by_connection, &h);
    if (status == AFSM_OK)
        *out = (afsm_handle *)h;
    return status;
}

AFSM_API afsm_status afsm_handle_pin(afsm_engine *engine, const afsm_uuid *session_id, afsm_handle **out)
{
    errdetail_clear();
    return pin(engine, session_id, 0, out);
}

AFSM_API afsm_status afsm_handle_pin_by_connection(afsm_engine *engine, const afsm_uuid *connection_id,
                                                   afsm_handle **out)
{
    errdetail_clear();
    return pin(engine, connection_id, 1, out);
}

AFSM_API afsm_status afsm_handle_heartbeat(afsm_handle *handle, uint64_t *remaining_ms)
{
    errdetail_clear();
    if (handle == NULL)
        return errdetail_set(AFSM_ENULL, "handle: NULL");
    store_handle *h = handle_of(handle);
    uint64_t remaining_ns = 0;
    afsm_status status = h->ops->handle_heartbeat(h, &remaining_ns);
    if (status == AFSM_OK && remaining_ms != NULL)
        *remaining_ms = ns_to_ms_ceil(remaining_ns);
    return status;
}

AFSM_API afsm_status afsm_handle_add_stats(afsm_handle *handle, const afsm_stats *delta)
{
    errdetail_clear();
    if (handle == NULL || delta == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", handle == NULL ? "handle" : "delta");
    store_handle *h = handle_of(handle);
    return h->ops->handle_add_stats(h, delta);
}

AFSM_API afsm_status afsm_handle_packet(afsm_handle *handle, uint64_t now_ns, const afsm_stats *delta,
                                        uint64_t *remaining_ms)
{
    errdetail_clear();
    if (handle == NULL || delta == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", handle == NULL ? "handle" : "delta");
    if (now_ns > INT64_MAX)
        return errdetail_set(AFSM_EINVAL, "now_ns: %llu, an engine clock reading is at most 2^63-1",
                             (unsigned long long)now_ns);
    store_handle *h = handle_of(handle);
    uint64_t remaining_ns = 0;
    /* NULL when not wanted: the store then skips computing it. */
    afsm_status status = h->ops->handle_packet(h, now_ns, delta, remaining_ms != NULL ? &remaining_ns : NULL);
    if (status == AFSM_OK && remaining_ms != NULL)
        *remaining_ms = ns_to_ms_ceil(remaining_ns);
    return status;
}

AFSM_API afsm_status afsm_handle_session_id(const afsm_handle *handle, afsm_uuid *out)
{
    errdetail_clear();
    if (handle == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", handle == NULL ? "handle" : "out");
    const store_handle *h = (const store_handle *)handle;
    h->ops->handle_session_id(h, out);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_handle_release(afsm_handle *handle)
{
    errdetail_clear();
    if (handle == NULL)
        return AFSM_OK;
    store_handle *h = handle_of(handle);
    h->ops->handle_release(h);
    return AFSM_OK;
}
