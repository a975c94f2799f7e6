/*
 * afsm.h: the AetherFlow session engine, its whole public interface.
 *
 * This header is the reference manual. Every function returns an
 * afsm_status (0 on success, a negative AFSM_E* code otherwise) and writes
 * its results through pointers the caller owns; no pointer into engine
 * memory ever escapes. No function aborts or prints on bad input: a bad
 * argument gets its own status and leaves the engine unchanged.
 *
 * Threading: every function may be called from any thread, concurrently
 * with any other, unless its comment says otherwise. Lookups, heartbeats
 * and stats additions never take a lock; creates, deletes and updates take
 * the writer lock of the one to three shards they touch.
 *
 * Strings from the caller come as (pointer, length) pairs and need no NUL
 * terminator; strings returned in fixed arrays are NUL-terminated.
 *
 * ABI: option and result structs begin with a version field. Initialise
 * them with their AFSM_*_INIT macro or afsm_*_init() so that fields added
 * in later versions keep their defaults. Until 1.0 the ABI may still change
 * (SONAME libafsm.so.0).
 */
#ifndef AFSM_H
#define AFSM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(AFSM_BUILDING_LIBRARY)
#define AFSM_API __attribute__((visibility("default")))
#else
#define AFSM_API
#endif

#define AFSM_VERSION_MAJOR 0
#define AFSM_VERSION_MINOR 1
#define AFSM_VERSION_PATCH 0
#define AFSM_VERSION       "0.1.0"

/* ------------------------------------------------------------------------
 * Status codes
 * ---------------------------------------------------------------------- */

typedef int afsm_status;

#define AFSM_OK           0
#define AFSM_ENULL        (-1)  /* a required pointer argument was NULL */
#define AFSM_EVERSION     (-2)  /* a struct's version field is unknown */
#define AFSM_EINVAL       (-3)  /* a value is out of range (state, limit, flags, port, ...) */
#define AFSM_ETOOLONG     (-4)  /* a string or the metadata exceeds its bound */
#define AFSM_EUUID        (-5)  /* a UUID string is malformed, or a required UUID is nil */
#define AFSM_EIP          (-6)  /* an IP address string is malformed */
#define AFSM_ENOMEM       (-7)  /* an allocation failed; nothing was changed */
#define AFSM_ENOTFOUND    (-8)  /* no such session */
#define AFSM_EEXPIRED     (-9)  /* the session's deadline has passed */
#define AFSM_EEXISTS      (-10) /* the connection id already has a session */
#define AFSM_ETRANSITION  (-11) /* the state change is not allowed from the current state */
#define AFSM_ECLOSED      (-12) /* the session is closed; it cannot be revived */
#define AFSM_ELIMIT       (-13) /* the user is at max_sessions_per_user (reject policy) */
#define AFSM_EBUFFER      (-14) /* the caller's buffer is too small; the needed size is reported */
#define AFSM_EBUSY        (-15) /* the engine still has pinned handles */
#define AFSM_ETOKEN       (-16) /* a token is garbled, truncated or forged */
#define AFSM_ETOKENKEY    (-17) /* a token's key id is not (or no longer) in the key ring */
#define AFSM_EREVOKED     (-18) /* a token was superseded by afsm_token_rotate */
#define AFSM_EIPMISMATCH  (-19) /* a token bound to one IP was presented from another */
#define AFSM_EKEYFILE     (-20) /* a key file is unreadable, has the wrong size, or is readable by others */
#define AFSM_EUNAVAILABLE (-21) /* the store cannot be reached */
#define AFSM_EINTERNAL    (-22) /* a bug: please report it */

/* A short English description of the status ("session not found"). Never NULL. */
AFSM_API const char *afsm_strerror(afsm_status status);
/* The status's name ("AFSM_ENOTFOUND"). Never NULL ("AFSM_UNKNOWN" for unknown codes). */
AFSM_API const char *afsm_status_name(afsm_status status);
/* The library's version string, e.g. "0.1.0"; compare with AFSM_VERSION. */
AFSM_API const char *afsm_version(void);

/* ------------------------------------------------------------------------
 * Limits (bad input beyond these gets AFSM_ETOOLONG or AFSM_EINVAL)
 * ---------------------------------------------------------------------- */

#define AFSM_USER_ID_MAX        256   /* bytes */
#define AFSM_SERVER_ADDR_MAX    255   /* bytes */
#define AFSM_REASON_MAX         256   /* bytes of a delete reason */
#define AFSM_METADATA_KEYS_MAX  64    /* keys per session */
#define AFSM_METADATA_BYTES_MAX 4096  /* sum of key and value lengths per session */
#define AFSM_LIST_LIMIT_MAX     10000 /* sessions per list page */
#define AFSM_BATCH_MAX          65536 /* items per batch call */
#define AFSM_UUID_STRING_SIZE   37    /* 36 characters and a NUL */
#define AFSM_IP_STRING_SIZE     46    /* INET6_ADDRSTRLEN */

/* ------------------------------------------------------------------------
 * Plain value types
 * ---------------------------------------------------------------------- */

/* A UUID in its 16 bytes, network (RFC 9562) order. All zero is the nil UUID. */
typedef struct afsm_uuid {
    uint8_t bytes[16];
} afsm_uuid;

/* Parses the canonical 36-character form (hex digits in either case).
 * AFSM_ENULL, AFSM_EUUID for any other length or character. Thread-safe. */
AFSM_API afsm_status afsm_uuid_parse(const char *text, size_t text_len, afsm_uuid *out);
/* Writes the lowercase canonical form and a NUL into out[AFSM_UUID_STRING_SIZE]. */
AFSM_API afsm_status afsm_uuid_format(const afsm_uuid *uuid, char out[AFSM_UUID_STRING_SIZE]);
/* A new UUIDv7 (RFC 9562): millisecond wall time in the top 48 bits, and
 * strictly increasing across the process, even when many ids fall in one
 * millisecond or the wall clock steps back. Thread-safe, lock-free. */
AFSM_API afsm_status afsm_uuid_v7(afsm_uuid *out);

/* An IP address in binary form. family is 4 or 6; a v4 address uses
 * bytes[0..3]. A v4-mapped v6 address (::ffff:a.b.c.d) is normalised to v4. */
typedef struct afsm_ip {
    uint8_t family;
    uint8_t bytes[16];
} afsm_ip;

/* Parses dotted-quad v4 or RFC 4291 v6 text (no zone, no port, no spaces).
 * AFSM_ENULL, AFSM_EIP for anything else. */
AFSM_API afsm_status afsm_ip_parse(const char *text, size_t text_len, afsm_ip *out);
/* Writes the canonical text (RFC 5952 for v6) and a NUL. AFSM_EINVAL for a bad family. */
AFSM_API afsm_status afsm_ip_format(const afsm_ip *ip, char out[AFSM_IP_STRING_SIZE]);

/* Session states; the numbers match the gRPC SessionState enum. */
typedef enum afsm_state {
    AFSM_STATE_ANY = 0, /* in filters: no filter; never a session's state */
    AFSM_STATE_CONNECTING = 1,
    AFSM_STATE_ACTIVE = 2,
    AFSM_STATE_IDLE = 3,
    AFSM_STATE_DISCONNECTING = 4,
    AFSM_STATE_CLOSED = 5
} afsm_state;
#define AFSM_STATE_COUNT 6

/* "connecting", "active", ...; "any" for 0; "unknown" for anything else. */
AFSM_API const char *afsm_state_name(int state);

/* Traffic counters of one session. This struct is frozen: it mirrors the
 * wire format and is used in arrays by the batch calls. */
typedef struct afsm_stats {
    uint64_t packets_sent;
    uint64_t packets_received;
    uint64_t bytes_sent;
    uint64_t bytes_received;
    uint64_t retransmissions;
    uint32_t current_rtt_ms;
    uint32_t reserved; /* zero */
} afsm_stats;

/* One metadata entry. Keys are 1..255 bytes, values 0..4095; neither may
 * contain a NUL byte (AFSM_EINVAL). */
typedef struct afsm_kv {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
} afsm_kv;

/* ------------------------------------------------------------------------
 * Hooks
 * ---------------------------------------------------------------------- */

/* The engine's clock: monotonic nanoseconds. Called often, from any thread. */
typedef uint64_t (*afsm_clock_fn)(void *ctx);

typedef enum afsm_event_type {
    AFSM_EVENT_CREATED = 1,
    AFSM_EVENT_STATE_CHANGED = 2,
    AFSM_EVENT_EXPIRED = 3,
    AFSM_EVENT_DELETED = 4
} afsm_event_type;

/* What the event callback receives. Pointers are valid only during the call. */
typedef struct afsm_event {
    uint32_t type;      /* afsm_event_type */
    uint32_t old_state; /* before the change (CREATED: 0) */
    uint32_t new_state; /* after the change (EXPIRED, DELETED: the last state) */
    afsm_uuid session_id;
    afsm_uuid connection_id;
    const char *user_id;
    size_t user_id_len;
    const char *reason; /* DELETED: "expired", "evicted", "closed" or the caller's reason */
    size_t reason_len;
    int64_t created_at_ns; /* wall clock, Unix epoch */
    int64_t event_at_ns;   /* wall clock, Unix epoch */
} afsm_event;

/* Called once per change, outside every engine lock, on the thread that made
 * the change (the reaper thread or afsm_engine_advance's caller for expiry).
 * It may call any afsm_session_* function of the same engine, but not
 * afsm_engine_close. It must not block for long: writers on other threads
 * do not wait for it, but the reaper does. */
typedef void (*afsm_event_fn)(void *ctx, const afsm_event *event);

#define AFSM_LOG_DEBUG 10
#define AFSM_LOG_INFO  20
#define AFSM_LOG_WARN  30
#define AFSM_LOG_ERROR 40

typedef struct afsm_log_field {
    const char *key;
    const char *value;
} afsm_log_field;

/* Receives every log line at or above the configured level. Strings are
 * NUL-terminated and valid only during the call. Same threading as events. */
typedef void (*afsm_log_fn)(void *ctx, int level, const char *message, const afsm_log_field *fields,
                            size_t field_count);

/* ------------------------------------------------------------------------
 * Engine
 * ---------------------------------------------------------------------- */

typedef struct afsm_engine afsm_engine;

#define AFSM_REAPER_THREAD 0 /* an internal thread advances time every cleanup_interval */
#define AFSM_REAPER_MANUAL 1 /* no thread: the caller calls afsm_engine_advance */

#define AFSM_CONFIG_VERSION 1
typedef struct afsm_config {
    uint32_t version;             /* AFSM_CONFIG_VERSION */
    uint32_t shard_count;         /* 0: next power of two >= 4 x CPUs; else a power of two <= 4096 */
    uint64_t capacity_hint;       /* sessions expected; presizes the tables (0: 1024) */
    uint64_t default_timeout_ms;  /* 0: 30 minutes */
    uint64_t cleanup_interval_ms; /* reaper period (0: 1000) */
    uint64_t tick_ms;             /* timing wheel resolution (0: 100) */
    uint64_t idle_timeout_ms;     /* 0: no idle detection */
    uint64_t max_lifetime_ms;     /* 0: none; else a session expires this long after creation */
    uint32_t reaper;              /* AFSM_REAPER_THREAD or AFSM_REAPER_MANUAL */
    uint32_t log_level;           /* AFSM_LOG_* (0: AFSM_LOG_INFO) */
    const char *server_addr;      /* reported in every session; may be NULL */
    size_t server_addr_len;
    afsm_clock_fn clock; /* NULL: CLOCK_MONOTONIC_COARSE */
    void *clock_ctx;
    afsm_event_fn on_event; /* may be NULL */
    void *event_ctx;
    afsm_log_fn on_log; /* may be NULL */
    void *log_ctx;
    uint64_t close_linger_ms; /* how long a closed session stays readable (0: removed at once) */
} afsm_config;

#define AFSM_CONFIG_INIT                                                                                               \
    {                                                                                                                  \
        .version = AFSM_CONFIG_VERSION                                                                                 \
    }
/* Sets every field to its default for the given version (AFSM_EVERSION if unknown). */
AFSM_API afsm_status afsm_config_init(afsm_config *config, unsigned int version);

/* Creates an engine. config may be NULL for all defaults. The config is
 * copied; the hooks' ctx pointers must stay valid until close.
 * AFSM_ENULL, AFSM_EVERSION, AFSM_EINVAL (shard_count not a power of two,
 * unknown reaper mode), AFSM_ETOOLONG (server_addr), AFSM_ENOMEM. */
AFSM_API afsm_status afsm_engine_open(const afsm_config *config, afsm_engine **out);

/* Stops and joins the reaper thread, frees every session and the engine.
 * No callback runs after it returns. Not to be called concurrently with any
 * other call on the same engine, nor from a callback. AFSM_EBUSY (and
 * nothing done) while handles are pinned. NULL is accepted and ignored. */
AFSM_API afsm_status afsm_engine_close(afsm_engine *engine);

/* Advances the engine's timing wheels to now_ns (engine clock; see
 * afsm_engine_now), expiring every session whose deadline has passed and
 * firing their events. Used with AFSM_REAPER_MANUAL; harmless otherwise.
 * expired_count (may be NULL) receives how many sessions expired. */
AFSM_API afsm_status afsm_engine_advance(afsm_engine *engine, uint64_t now_ns, size_t *expired_count);

/* The engine clock's current reading, in nanoseconds. */
AFSM_API afsm_status afsm_engine_now(afsm_engine *engine, uint64_t *now_ns);

/* Changes the timeout of sessions created afterwards without their own
 * (AFSM_EINVAL for 0). Existing sessions keep theirs. */
AFSM_API afsm_status afsm_engine_set_default_timeout(afsm_engine *engine, uint64_t timeout_ms);

/* Number of sessions, total and per state (by_state[state]), summed over
 * the shards. Each shard's numbers are exact; the sum is not one atomic
 * snapshot while other threads write. */
typedef struct afsm_counts {
    uint64_t total;
    uint64_t by_state[AFSM_STATE_COUNT];
} afsm_counts;
AFSM_API afsm_status afsm_engine_counts(afsm_engine *engine, afsm_counts *out);

/* ------------------------------------------------------------------------
 * Sessions
 * ---------------------------------------------------------------------- */

#define AFSM_SESSION_INFO_VERSION 1
/* A copy of one session. Timestamps are wall-clock nanoseconds since the
 * Unix epoch. */
typedef struct afsm_session_info {
    uint32_t version; /* AFSM_SESSION_INFO_VERSION, set by the caller */
    uint32_t state;   /* afsm_state */
    afsm_uuid session_id;
    afsm_uuid connection_id;
    afsm_ip client_ip;
    uint16_t client_port;
    uint32_t user_id_len;
    char user_id[AFSM_USER_ID_MAX + 1];
    uint32_t server_addr_len;
    char server_addr[AFSM_SERVER_ADDR_MAX + 1];
    int64_t created_at_ns;
    int64_t last_active_at_ns;
    int64_t expires_at_ns;
    uint64_t timeout_ms;     /* this session's rolling timeout */
    uint32_t metadata_count; /* fetch the entries with afsm_session_get_metadata */
    uint32_t metadata_bytes; /* the buffer size afsm_session_get_metadata needs */
    afsm_stats stats;
} afsm_session_info;

#define AFSM_SESSION_INFO_INIT                                                                                         \
    {                                                                                                                  \
        .version = AFSM_SESSION_INFO_VERSION                                                                           \
    }
AFSM_API afsm_status afsm_session_info_init(afsm_session_info *info, unsigned int version);

#define AFSM_CREATE_OPTIONS_VERSION 1
typedef struct afsm_create_options {
    uint32_t version;     /* AFSM_CREATE_OPTIONS_VERSION */
    uint32_t client_port; /* 0..65535 */
    const char *user_id;  /* 1..AFSM_USER_ID_MAX bytes */
    size_t user_id_len;
    const char *client_ip; /* v4 or v6 text */
    size_t client_ip_len;
    afsm_uuid connection_id; /* from the transport; not nil */
    const afsm_kv *metadata; /* may be NULL when metadata_count is 0 */
    size_t metadata_count;
    uint64_t timeout_ms; /* 0: the engine's default timeout */
} afsm_create_options;

#define AFSM_CREATE_OPTIONS_INIT                                                                                       \
    {                                                                                                                  \
        .version = AFSM_CREATE_OPTIONS_VERSION                                                                         \
    }
AFSM_API afsm_status afsm_create_options_init(afsm_create_options *options, unsigned int version);

/* Creates a session in state CONNECTING with a new UUIDv7 id, zero stats and
 * expires = now + timeout. out (may be NULL) receives a copy.
 * AFSM_ENULL, AFSM_EVERSION, AFSM_ETOOLONG (user id, metadata), AFSM_EINVAL
 * (empty user id, port, NUL in metadata), AFSM_EIP, AFSM_EUUID (nil
 * connection id), AFSM_EEXISTS (connection id taken), AFSM_ENOMEM. */
AFSM_API afsm_status afsm_session_create(afsm_engine *engine, const afsm_create_options *options,
                                         afsm_session_info *out);

/* Copies one session. Lock-free. AFSM_ENULL, AFSM_EVERSION, AFSM_ENOTFOUND,
 * AFSM_EEXPIRED (deadline passed, even before the reaper removes it; out is
 * still filled). */
AFSM_API afsm_status afsm_session_get(afsm_engine *engine, const afsm_uuid *session_id, afsm_session_info *out);
/* Same, looked up by the transport's connection id. */
AFSM_API afsm_status afsm_session_get_by_connection(afsm_engine *engine, const afsm_uuid *connection_id,
                                                    afsm_session_info *out);

/* Copies a session's metadata into buf as key NUL value NUL pairs, in key
 * order. needed (may be NULL) receives the size required; count (may be
 * NULL) the number of pairs. AFSM_EBUFFER when buf_size is short (buf may be
 * NULL then). Lock-free. Also AFSM_ENULL, AFSM_ENOTFOUND, AFSM_EEXPIRED. */
AFSM_API afsm_status afsm_session_get_metadata(afsm_engine *engine, const afsm_uuid *session_id, char *buf,
                                               size_t buf_size, size_t *needed, size_t *count);

/* Which parts of afsm_update to apply. */
#define AFSM_UPDATE_STATE            0x1u
#define AFSM_UPDATE_METADATA_MERGE   0x2u /* set the given keys, keep the others */
#define AFSM_UPDATE_METADATA_REPLACE 0x4u /* the given keys become the whole map */
#define AFSM_UPDATE_STATS            0x8u /* set absolute values */

#define AFSM_UPDATE_VERSION 1
typedef struct afsm_update {
    uint32_t version; /* AFSM_UPDATE_VERSION */
    uint32_t fields;  /* AFSM_UPDATE_* bits; MERGE and REPLACE exclude each other */
    uint32_t state;   /* with AFSM_UPDATE_STATE */
    const afsm_kv *metadata;
    size_t metadata_count;
    afsm_stats stats; /* with AFSM_UPDATE_STATS */
} afsm_update;

#define AFSM_UPDATE_INIT                                                                                               \
    {                                                                                                                  \
        .version = AFSM_UPDATE_VERSION                                                                                 \
    }
AFSM_API afsm_status afsm_update_init(afsm_update *update, unsigned int version);

/* Applies every requested part or none. Allowed state changes:
 * connecting->active, active<->idle, active/idle->disconnecting, any->closed
 * (a change to the current state is a no-op). Setting closed fires the
 * event and removes the session. Two threads merging different keys at
 * once both land. out (may be NULL) receives the result.
 * AFSM_ENULL, AFSM_EVERSION, AFSM_EINVAL (fields, state), AFSM_ETOOLONG,
 * AFSM_ENOTFOUND, AFSM_EEXPIRED, AFSM_ETRANSITION, AFSM_ENOMEM. */
AFSM_API afsm_status afsm_session_update(afsm_engine *engine, const afsm_uuid *session_id, const afsm_update *update,
                                         afsm_session_info *out);

/* Adds delta's counters atomically; a non-zero delta->current_rtt_ms
 * replaces the RTT. Lock-free. AFSM_ENULL, AFSM_ENOTFOUND, AFSM_EEXPIRED. */
AFSM_API afsm_status afsm_session_add_stats(afsm_engine *engine, const afsm_uuid *session_id, const afsm_stats *delta);

/* Moves the deadline to now + the session's timeout (capped by
 * max_lifetime) and last-active to now. remaining_ms (may be NULL) receives
 * the time left. Lock-free; a late heartbeat never moves the deadline
 * back. AFSM_ENULL, AFSM_ENOTFOUND, AFSM_EEXPIRED, AFSM_ECLOSED. */
AFSM_API afsm_status afsm_session_heartbeat(afsm_engine *engine, const afsm_uuid *session_id, uint64_t *remaining_ms);

/* Removes the session from every index at once and fires DELETED with the
 * reason (NULL or empty: "deleted"). AFSM_ENULL, AFSM_ETOOLONG (reason),
 * AFSM_ENOTFOUND. An expired session not yet reaped is deleted too. */
AFSM_API afsm_status afsm_session_delete(afsm_engine *engine, const afsm_uuid *session_id, const char *reason,
                                         size_t reason_len);

/* Deletes every session of a user ("log out everywhere"). deleted (may be
 * NULL) receives how many. AFSM_ENULL, AFSM_EINVAL, AFSM_ETOOLONG. No
 * session of the user is an AFSM_OK with deleted = 0. */
AFSM_API afsm_status afsm_session_delete_by_user(afsm_engine *engine, const char *user_id, size_t user_id_len,
                                                 const char *reason, size_t reason_len, size_t *deleted);

/* ------------------------------------------------------------------------
 * Listing
 * ---------------------------------------------------------------------- */

#define AFSM_LIST_FILTER_VERSION 1
typedef struct afsm_list_filter {
    uint32_t version;    /* AFSM_LIST_FILTER_VERSION */
    uint32_t state;      /* AFSM_STATE_ANY or one state */
    const char *user_id; /* NULL: every user */
    size_t user_id_len;
    int64_t created_after_ns;  /* wall clock, exclusive; 0: no bound */
    int64_t created_before_ns; /* wall clock, exclusive; 0: no bound */
    afsm_uuid cursor;          /* nil: from the start; else only sessions after this id */
    uint64_t offset;           /* skip this many matches (after the cursor) */
    uint32_t limit;            /* 1..AFSM_LIST_LIMIT_MAX */
} afsm_list_filter;

#define AFSM_LIST_FILTER_INIT                                                                                          \
    {                                                                                                                  \
        .version = AFSM_LIST_FILTER_VERSION                                                                            \
    }
AFSM_API afsm_status afsm_list_filter_init(afsm_list_filter *filter, unsigned int version);

/* Lists matching sessions in session-id order (= creation order), skipping
 * expired ones. Fills out[0..*count) (each element's version set by the
 * caller, all the same), *total with the number of matches ignoring cursor,
 * offset and limit, and next_cursor (may be NULL) with the last returned id
 * (nil when no more pages). Passing next_cursor as the next call's cursor
 * visits every session that exists for the whole listing exactly once,
 * while other threads create and delete. Lock-free; costs a scan of the
 * engine (or of the user's sessions when user_id is set).
 * AFSM_ENULL, AFSM_EVERSION, AFSM_EINVAL (limit 0 or over the max, state,
 * out_capacity < limit), AFSM_ETOOLONG, AFSM_ENOMEM. */
AFSM_API afsm_status afsm_session_list(afsm_engine *engine, const afsm_list_filter *filter, afsm_session_info *out,
                                       size_t out_capacity, size_t *count, uint64_t *total, afsm_uuid *next_cursor);

/* ------------------------------------------------------------------------
 * Batches: one boundary crossing for many sessions
 * ---------------------------------------------------------------------- */

/* Each call handles ids[0..n) (n <= AFSM_BATCH_MAX) and writes each item's
 * own status into statuses[i]; the call itself returns AFSM_OK unless its
 * arguments are bad (AFSM_ENULL, AFSM_EINVAL for n, AFSM_EVERSION). */
AFSM_API afsm_status afsm_session_get_batch(afsm_engine *engine, const afsm_uuid *ids, size_t n, afsm_session_info *out,
                                            afsm_status *statuses);
/* remaining_ms may be NULL. */
AFSM_API afsm_status afsm_session_heartbeat_batch(afsm_engine *engine, const afsm_uuid *ids, size_t n,
                                                  uint64_t *remaining_ms, afsm_status *statuses);
AFSM_API afsm_status afsm_session_add_stats_batch(afsm_engine *engine, const afsm_uuid *ids, const afsm_stats *deltas,
                                                  size_t n, afsm_status *statuses);

/* ------------------------------------------------------------------------
 * Pinned handles: per-packet work without a lookup
 * ---------------------------------------------------------------------- */

typedef struct afsm_handle afsm_handle;

/* Pins a session. The handle stays safe to use after the session is
 * deleted or expires: its calls then return AFSM_ENOTFOUND or
 * AFSM_EEXPIRED. Release every handle before closing the engine.
 * AFSM_ENULL, AFSM_ENOTFOUND, AFSM_EEXPIRED, AFSM_ENOMEM. */
AFSM_API afsm_status afsm_handle_pin(afsm_engine *engine, const afsm_uuid *session_id, afsm_handle **out);
AFSM_API afsm_status afsm_handle_pin_by_connection(afsm_engine *engine, const afsm_uuid *connection_id,
                                                   afsm_handle **out);
/* As afsm_session_heartbeat / afsm_session_add_stats, with atomics only.
 * A handle may be used from several threads at once, but not after release. */
AFSM_API afsm_status afsm_handle_heartbeat(afsm_handle *handle, uint64_t *remaining_ms);
AFSM_API afsm_status afsm_handle_add_stats(afsm_handle *handle, const afsm_stats *delta);
/* The pinned session's id. */
AFSM_API afsm_status afsm_handle_session_id(const afsm_handle *handle, afsm_uuid *out);
/* Releases the handle. NULL is accepted and ignored. */
AFSM_API afsm_status afsm_handle_release(afsm_handle *handle);

#ifdef __cplusplus
}
#endif

#endif /* AFSM_H */
