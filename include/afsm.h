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
 * fork(): a child process must not use an engine its parent opened, nor
 * close it, nor open a new one: the parent's other threads (the reaper, any
 * thread inside a call) do not exist in the child, so a lock or an epoch
 * section they held at the fork is never released there. The child may
 * exec or _exit; the parent is unaffected. Open engines after the fork, in
 * the process that uses them.
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
#define AFSM_ETOKEN       (-16) /* a token fails authentication: forged, altered, or sealed by another key */
#define AFSM_ETOKENKEY    (-17) /* a token's key id was never in the key ring */
#define AFSM_EREVOKED     (-18) /* a token was superseded by afsm_token_rotate */
#define AFSM_EIPMISMATCH  (-19) /* a token bound to one IP was presented from another */
#define AFSM_EKEYFILE     (-20) /* a key file is unreadable, the wrong size, another user's, or open to others */
#define AFSM_EUNAVAILABLE (-21) /* the store cannot be reached */
#define AFSM_EINTERNAL    (-22) /* a bug: please report it */
#define AFSM_ETOKENFORMAT (-23) /* a token is truncated or not a token at all (bad prefix, length, encoding) */
#define AFSM_EKEYREMOVED  (-24) /* a token's key was in the key ring and has been removed */
#define AFSM_EKEYEXISTS   (-25) /* afsm_key_add*: the key id is already in the key ring */
#define AFSM_EKEYNOTFOUND (-26) /* afsm_key_use/remove: the key id is not in the key ring */
#define AFSM_EKEYINUSE    (-27) /* afsm_key_remove: the key is the current (sealing) key */

/* A short English description of the status ("session not found"). Never NULL. */
AFSM_API const char *afsm_strerror(afsm_status status);
/* The status's name ("AFSM_ENOTFOUND"). Never NULL ("AFSM_UNKNOWN" for unknown codes). */
AFSM_API const char *afsm_status_name(afsm_status status);
/* The library's version string, e.g. "0.1.0"; compare with AFSM_VERSION. */
AFSM_API const char *afsm_version(void);

/* The size of the buffer behind afsm_error_detail(), NUL included. */
#define AFSM_ERROR_DETAIL_MAX 256

/* Why the calling thread's last afsm call failed, in a short English text
 * that names the argument, its problem and the limit, e.g.
 * "user_id: 0 bytes, must be 1..256" or
 * "key file /etc/afsm/k: mode 0644, must not be readable or writable by group or others".
 * Set where a call rejects its input (every AFSM_ENULL, AFSM_EVERSION,
 * AFSM_EINVAL, AFSM_ETOOLONG, AFSM_EUUID, AFSM_EIP, AFSM_EKEYFILE,
 * AFSM_EKEY* and AFSM_EBUFFER of argument checks); "" after a success and
 * after failures that need no more than their status (AFSM_ENOTFOUND, ...).
 * Like SQLite's sqlite3_errmsg and libgit2's git_error_last: per thread,
 * never NULL, valid until this thread's next afsm call. Every function of
 * this header clears or replaces it except afsm_error_detail, afsm_strerror,
 * afsm_status_name, afsm_version and afsm_state_name, so a caller may format
 * its message with those after the failing call. Thread-safe. */
AFSM_API const char *afsm_error_detail(void);

/* ------------------------------------------------------------------------
 * Limits (bad input beyond these gets AFSM_ETOOLONG or AFSM_EINVAL)
 * ---------------------------------------------------------------------- */

#define AFSM_USER_ID_MAX        256   /* bytes */
#define AFSM_SERVER_ADDR_MAX    255   /* bytes */
#define AFSM_REASON_MAX         256   /* bytes of a delete reason */
#define AFSM_METADATA_KEYS_MAX  64    /* keys per session */
#define AFSM_METADATA_BYTES_MAX 4096  /* sum of key and value lengths per session, as stored */
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
 * contain a NUL byte (AFSM_EINVAL). Every call that takes metadata (create,
 * restore, update) stores a key given twice once, with its last value, and
 * applies AFSM_METADATA_BYTES_MAX to what it stores (for a merge, with the
 * session's own keys): AFSM_ETOOLONG, the detail giving the stored total
 * and the limit. A call gives at most AFSM_METADATA_KEYS_MAX entries,
 * duplicates included. */
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

/* Called once per change, outside every engine lock and every epoch section
 * (the event carries copies), on the thread that made the change (the reaper
 * thread or afsm_engine_advance's caller for expiry). So a callback that
 * blocks delays only its own caller: never reads or writes on other threads,
 * never the freeing of removed sessions, never another engine's close.
 * Changes of one session made on different threads (the reaper marking it
 * idle, a heartbeat waking it) may arrive in either order: read the state
 * from afsm_session_get when the order matters.
 * It may call any afsm_session_* function of the same engine, and
 * afsm_engine_advance, but not afsm_engine_close. Changes of one session
 * made on one thread are reported in the order they were made, also when
 * a callback makes them while earlier events of that session still wait
 * to be delivered (a session a nested advance removes that the outer one
 * had just marked idle is still reported IDLE first; a session woken from
 * inside a callback is reported IDLE, then ACTIVE, before a change a later
 * callback makes); each event arrives once, nothing follows a session's
 * EXPIRED or DELETED, and a session restored with the id of one that ended
 * is reported after that end. It should not block for long: expiry on the
 * thread that runs it waits for it. */
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
 * NUL-terminated and valid only during the call. Same threading as events.
 * The lines (those of the service this replaces):
 *   info  "session created"  session_id, user_id, connection_id, client_ip
 *   debug "session heartbeat"  session_id, remaining (Go-style: "1m0s")
 *   info  "expired sessions cleaned up"  count (once per advance, never per session)
 *   warn  "expiry pass incomplete; the next one resumes"  status */
typedef void (*afsm_log_fn)(void *ctx, int level, const char *message, const afsm_log_field *fields,
                            size_t field_count);

/* ------------------------------------------------------------------------
 * Engine
 * ---------------------------------------------------------------------- */

typedef struct afsm_engine afsm_engine;

#define AFSM_LIMIT_REJECT       0 /* a create over the cap fails with AFSM_ELIMIT */
#define AFSM_LIMIT_EVICT_OLDEST 1 /* the user's oldest session is deleted ("evicted"): the newest stay */

#define AFSM_REAPER_THREAD 0 /* an internal thread advances time every cleanup_interval */
#define AFSM_REAPER_MANUAL 1 /* no thread: the caller calls afsm_engine_advance */

#define AFSM_STORE_MEMORY 0 /* this process only */
#define AFSM_STORE_ETCD   1 /* shared through etcd; every node reads from a local replica */

/* How the etcd store answers reads. Gets are afsm_session_get (and
 * _get_batch, _get_by_connection, _get_metadata), afsm_token_issue and
 * afsm_token_validate (which read the session by id); lists and counts are
 * afsm_session_list and afsm_engine_counts.
 * - REPLICA: everything from the local replica, lock-free, no etcd request;
 *   stale by the watch's delay (session_etcd_replica_lag_seconds).
 * - LINEARIZABLE: a get reads the record from etcd (a quorum read; by
 *   connection, two). A list or count waits for the replica to reach etcd's
 *   current revision, as in CONSISTENT mode, then answers from it.
 * - CONSISTENT: a get asks etcd for the record's revision only (no payload)
 *   and answers from the replica once it has applied it (a record etcd no
 *   longer has is AFSM_ENOTFOUND at once). A list or count asks etcd for its
 *   current revision (one range request that returns at most one key) and
 *   answers from the replica once it holds etcd's sessions as of that
 *   revision.
 * In both non-replica modes every write acknowledged (on any engine) before
 * the read began is seen by it; a list is still a scan, not a snapshot:
 * writes made while it runs may or may not appear, as on the memory store.
 * Those reads fail with AFSM_EUNAVAILABLE when etcd does not answer, or the
 * replica does not catch up, within etcd_request_timeout_ms. From an event
 * callback (it runs on the thread that applies etcd's changes, which cannot
 * wait for itself), gets read from etcd, and lists and counts answer from
 * the replica as of the event being delivered. Heartbeats, stats additions
 * and metrics always use the replica. */
#define AFSM_READ_REPLICA      0 /* the local replica, lock-free; stale by the watch's delay */
#define AFSM_READ_LINEARIZABLE 1 /* gets read etcd; lists and counts wait for etcd's revision */
#define AFSM_READ_CONSISTENT                                                                                           \
    2 /* gets wait for the record's revision, lists and counts for etcd's;                                             \
         then the replica answers */

/* Version 2 appended the store fields; a version 1 config (without them)
 * is still accepted and means the memory store. */
#define AFSM_CONFIG_VERSION 2
typedef struct afsm_config {
    uint32_t version;             /* AFSM_CONFIG_VERSION (or 1) */
    uint32_t shard_count;         /* 0: next power of two >= 4 x CPUs; else a power of two <= 4096 */
    uint64_t capacity_hint;       /* sessions expected; presizes the tables (0: 1024; at most 2^30) */
    uint64_t default_timeout_ms;  /* 0: 30 minutes; at most 2^32-1 (~49.7 days) */
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
    uint64_t close_linger_ms;       /* how long a closed session stays readable (0: removed at once),
                                       counted from when it closed, also after a restore */
    uint32_t max_sessions_per_user; /* 0: no cap */
    uint32_t limit_policy;          /* AFSM_LIMIT_REJECT or AFSM_LIMIT_EVICT_OLDEST */
    /* The first token key (afsm_key_add): key_len AFSM_KEY_BYTES bytes, or
     * a key file of exactly that size, private to its owner, who is root or
     * this process's user (afsm_key_add_file). Neither: a
     * random key for this engine's life (tokens die with the process). */
    const uint8_t *key;
    size_t key_len;
    const char *key_file; /* path, need not be NUL-terminated */
    size_t key_file_len;
    uint32_t key_id;          /* 1..AFSM_KEY_ID_MAX for key or key_file */
    uint32_t disable_metrics; /* non-zero: skip counters (measures their cost) */

    /* Version 2: the store. With AFSM_STORE_ETCD, sessions live in etcd
     * (v3 API through its JSON gateway, etcd >= 3.4) under etcd_prefix, each
     * attached to a lease; every engine on the same etcd and prefix sees
     * every session, and reads, heartbeats and stats additions are served
     * from this engine's local replica. Writes (create, update, delete,
     * token rotation) are etcd transactions and fail with AFSM_EUNAVAILABLE
     * when no endpoint answers within etcd_request_timeout_ms. Expiry is
     * etcd's: a session ends between its timeout and 4/3 of it after its
     * last heartbeat (leases are renewed at most once per timeout / 3, by a
     * thread of the engine, never on the heartbeat's thread), and
     * arrives on every engine as an EXPIRED event. AFSM_LIMIT_EVICT_OLDEST
     * holds across engines: a create at the cap removes the user's oldest
     * session in its own transaction (the creating engine fires the CREATED
     * before the DELETED, "evicted"; other engines, which apply etcd's keys
     * in order and never hold the user above the cap, the DELETED first).
     * Not supported with etcd (AFSM_EINVAL): idle_timeout_ms,
     * max_lifetime_ms and close_linger_ms. Strings are NUL-terminated and
     * copied. */
    uint32_t store;                   /* AFSM_STORE_MEMORY or AFSM_STORE_ETCD */
    uint32_t etcd_read_mode;          /* AFSM_READ_* (0: replica) */
    const char *etcd_endpoints;       /* "http://127.0.0.1:2379,http://..."; https:// for TLS */
    const char *etcd_prefix;          /* NULL: "/afsm/" */
    uint64_t etcd_dial_timeout_ms;    /* 0: 2000 */
    uint64_t etcd_request_timeout_ms; /* 0: 5000; the bound of every etcd call */
    const char *etcd_ca_file;         /* PEM; NULL: the system's CAs */
    const char *etcd_cert_file;       /* client certificate (PEM), or NULL */
    const char *etcd_key_file;        /* its key (PEM), or NULL */
    const char *etcd_user;            /* etcd auth, or NULL */
    const char *etcd_password;
    /* Stats additions (afsm_session_add_stats, handles) stay on the engine
     * that made them and are written to etcd every etcd_stats_flush_ms (0:
     * 10 s), every session whose stats changed (up to 64 to a txn), and
     * once more at afsm_engine_close. A crash loses what was added since
     * the last pass: at most a period, plus the pass itself if passes
     * take longer than the period (etcd writes a few thousand records a
     * second; the engine logs a warning then: raise the period). Never a
     * session. Other engines see them after the flush. */
    uint64_t etcd_stats_flush_ms;
} afsm_config;

#define AFSM_CONFIG_INIT                                                                                               \
    {                                                                                                                  \
        .version = AFSM_CONFIG_VERSION                                                                                 \
    }
/* Sets every field to its default for the given version (1 or 2; AFSM_EVERSION otherwise). */
AFSM_API afsm_status afsm_config_init(afsm_config *config, unsigned int version);

/* Creates an engine. config may be NULL for all defaults. The config is
 * copied; the hooks' ctx pointers must stay valid until close.
 * AFSM_ENULL, AFSM_EVERSION, AFSM_EINVAL (shard_count not a power of two,
 * unknown reaper mode or limit policy, key_len, key_id; an etcd store
 * without endpoints, with a malformed endpoint or prefix, or with an option
 * it does not support), AFSM_ETOOLONG (server_addr), AFSM_EKEYFILE,
 * AFSM_ENOMEM, AFSM_EUNAVAILABLE (etcd: no endpoint answered the initial
 * load within the request timeout). */
AFSM_API afsm_status afsm_engine_open(const afsm_config *config, afsm_engine **out);

/* Stops and joins the reaper thread, frees every session and the engine.
 * With the etcd store, the sessions stay in etcd (other engines keep
 * serving them) and end through their leases unless someone heartbeats;
 * unflushed stats are written once more first (an unreachable etcd delays
 * close by at most the request timeout, plus about a second for the watch
 * thread to notice).
 * No callback runs after it returns. Not to be called concurrently with any
 * other call on the same engine, nor from a callback. AFSM_EBUSY (and
 * nothing done) while handles are pinned. NULL is accepted and ignored. */
AFSM_API afsm_status afsm_engine_close(afsm_engine *engine);

/* Advances the engine's timing wheels to now_ns (engine clock; see
 * afsm_engine_now), expiring every session whose deadline has passed and
 * firing their events. Used with AFSM_REAPER_MANUAL; harmless otherwise.
 * now_ns is a reading of afsm_engine_now (a stale one is allowed); one
 * ahead of the engine clock is AFSM_EINVAL, nothing done, as the wheels
 * cannot go back: taken, it would settle sessions before their deadlines
 * and leave later deadlines unreaped until the clock caught up.
 * expired_count (may be NULL) receives how many sessions expired.
 * AFSM_ENOMEM when the pass could not allocate its work list: what it had
 * settled stays settled (and counted), the rest stays due (reads report it
 * expired) for the next call, and the reaper lag metric keeps growing. */
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

/* How many handles are pinned right now (afsm_handle_pin and
 * afsm_handle_pin_by_connection minus afsm_handle_release), so a caller
 * can prove it leaks none before afsm_engine_close (which refuses with
 * AFSM_EBUSY while this is not 0). Lock-free; exact when no other thread
 * pins or releases at the same time. AFSM_ENULL. */
AFSM_API afsm_status afsm_engine_pinned(afsm_engine *engine, uint64_t *count);

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
    uint32_t token_generation; /* starts at 1; tokens of older generations are revoked */
    uint32_t reserved;         /* zero */
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
    uint64_t timeout_ms; /* 0: the engine's default timeout; at most 2^32-1 (~49.7 days) */
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
 * connection id), AFSM_EEXISTS (connection id taken), AFSM_ELIMIT (user at
 * max_sessions_per_user under the reject policy; under evict-oldest the
 * oldest is deleted with reason "evicted" instead), AFSM_ENOMEM. A reader
 * never sees a user above the cap, not even for an instant. Sessions that
 * expired but are not yet reaped (at most a tick) still count. An eviction
 * reports the new session's CREATED before the victim's DELETED, so that
 * each session's own events stay in order even when a callback creates
 * (and evicts) again. */
AFSM_API afsm_status afsm_session_create(afsm_engine *engine, const afsm_create_options *options,
                                         afsm_session_info *out);

/* Re-creates a session exactly as a copy describes it (id, connection,
 * user, client, state, timestamps, timeout, stats, token generation) with
 * the given metadata: how a daemon reloads a snapshot so that sessions and
 * their tokens survive a restart. The deadline is taken from
 * info->last_active_at_ns (wall clock) and the timeout; times before the
 * engine clock's zero (a clock younger than the session) are clamped to
 * it. No CREATED event fires: the session is not new. A CLOSED copy's
 * last_active_at_ns is when it closed (closing stamps it); it lingers what
 * is left of close_linger_ms from then, not a whole linger from the
 * restore (a close ahead of the engine's clock counts from now: never more
 * than a whole linger). The etcd store, which has no linger, refuses every
 * CLOSED copy with AFSM_EEXPIRED. AFSM_EEXPIRED (it expired meanwhile, or a CLOSED copy's linger
 * is over: nothing done), AFSM_EINVAL also for times before the
 * Unix epoch or past the year 2116 and for a creation after the last
 * activity, AFSM_EEXISTS (its id or connection id
 * is taken), AFSM_EVERSION, AFSM_EINVAL (state, port, zero timeout),
 * AFSM_EUUID, AFSM_ETOOLONG, AFSM_ELIMIT, AFSM_ENOMEM; checks as create.
 * The per-user cap as for create (sessions are ordered by id, which is
 * creation order), with one more rule under evict-oldest, which keeps a
 * user's newest sessions: a copy older than every session of a user at
 * the cap is refused with AFSM_ELIMIT (the detail says so) and nothing
 * changes, rather than evicting a newer session for an older one. A copy
 * newer than the user's oldest session evicts that one, as a create does. */
AFSM_API afsm_status afsm_session_restore(afsm_engine *engine, const afsm_session_info *info, const afsm_kv *metadata,
                                          size_t metadata_count);

/* Copies one session. Lock-free. AFSM_ENULL, AFSM_EVERSION, AFSM_ENOTFOUND,
 * AFSM_EEXPIRED (deadline passed, even before the reaper removes it; out is
 * still filled). With the etcd store in the linearizable or consistent
 * read mode it asks etcd first: AFSM_EUNAVAILABLE when etcd does not answer
 * (or the replica does not catch up) within the request timeout. */
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

/* Applies every requested part or none, and a concurrent copy (get, list,
 * events) sees all of them or none: state, metadata and the six stats change
 * together. Additions by afsm_session_add_stats are not part of that: one
 * racing an update lands before or after it, counter by counter.
 * Allowed state changes:
 * connecting->active, active<->idle, active/idle->disconnecting, any->closed
 * (a change to the current state is a no-op). Setting closed fires the
 * event, sets last-active to the time it closed, and removes the session
 * (at once, or after close_linger_ms). Two threads merging different keys at
 * once both land. out (may be NULL) receives the result.
 * AFSM_ENULL, AFSM_EVERSION, AFSM_EINVAL (fields, state), AFSM_ETOOLONG,
 * AFSM_ENOTFOUND, AFSM_EEXPIRED, AFSM_ETRANSITION, AFSM_ENOMEM. */
AFSM_API afsm_status afsm_session_update(afsm_engine *engine, const afsm_uuid *session_id, const afsm_update *update,
                                         afsm_session_info *out);

/* Adds delta's counters atomically, each saturating at 2^64-1 (a counter
 * never wraps to a small number); a non-zero delta->current_rtt_ms replaces
 * the RTT. Lock-free. Under idle detection it is activity: it wakes an IDLE
 * session (as a heartbeat does) without moving the deadline.
 * AFSM_ENULL, AFSM_ENOTFOUND, AFSM_EEXPIRED. */
AFSM_API afsm_status afsm_session_add_stats(afsm_engine *engine, const afsm_uuid *session_id, const afsm_stats *delta);

/* Moves the deadline to now + the session's timeout (capped by
 * max_lifetime) and last-active to now. remaining_ms (may be NULL) receives
 * the time left. Lock-free; a late heartbeat never moves the deadline
 * back. A heartbeat means the client is there, as in the service this
 * replaces: a CONNECTING or IDLE session becomes ACTIVE (one STATE_CHANGED
 * event; only that first transition takes the shard's lock), a
 * DISCONNECTING one stays as it is. The same holds for the batch and
 * handle forms. With the etcd store a heartbeat never waits for the
 * session's lease renewal: it queues it (at most once per timeout / 3) for
 * a thread of the engine; AFSM_EEXPIRED once a renewal found the lease gone
 * from etcd (the EXPIRED event follows through the watch). Only the
 * activation above is an etcd write, once per session, on the caller's
 * thread. AFSM_ENULL, AFSM_ENOTFOUND, AFSM_EEXPIRED, AFSM_ECLOSED. */
AFSM_API afsm_status afsm_session_heartbeat(afsm_engine *engine, const afsm_uuid *session_id, uint64_t *remaining_ms);

/* Removes the session from every index at once and fires DELETED with the
 * reason (NULL or empty: "deleted"). AFSM_ENULL, AFSM_ETOOLONG (reason),
 * AFSM_EINVAL (a NUL byte in reason), AFSM_ENOTFOUND. An expired session
 * not yet reaped is deleted too. */
AFSM_API afsm_status afsm_session_delete(afsm_engine *engine, const afsm_uuid *session_id, const char *reason,
                                         size_t reason_len);

/* Deletes every session of a user ("log out everywhere"). deleted (may be
 * NULL) receives how many. AFSM_ENULL, AFSM_EINVAL (user id, or a NUL byte
 * in reason), AFSM_ETOOLONG. No
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
    const char *user_id; /* NULL (with user_id_len 0): every user */
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
 * AFSM_ENULL (also filter.user_id NULL with a non-zero user_id_len),
 * AFSM_EVERSION, AFSM_EINVAL (limit 0 or over the max, state,
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
/* As afsm_session_heartbeat / afsm_session_add_stats, with atomics only
 * (a session's first heartbeat, or the first activity after it went idle,
 * takes its shard's lock once to make it ACTIVE). A handle may be used from
 * several threads at once, but not after release. AFSM_ENOMEM (and nothing
 * done) only on a thread's first call into the engine, when its per-thread
 * record cannot be allocated. */
AFSM_API afsm_status afsm_handle_heartbeat(afsm_handle *handle, uint64_t *remaining_ms);
AFSM_API afsm_status afsm_handle_add_stats(afsm_handle *handle, const afsm_stats *delta);
/* One packet through a handle: afsm_handle_heartbeat at now_ns, then, when
 * that succeeded, afsm_handle_add_stats (the same statuses; on an error
 * nothing is added). remaining_ms (may be NULL) is counted from now_ns.
 * For a packet loop: no clock read and, for the handle's owner, no locked
 * instruction per packet (the heartbeat's CAS runs only when now_ns has
 * moved past the session's last-active time, once per clock tick).
 *
 * now_ns is a reading of afsm_engine_now, taken by the caller (once per
 * receive batch, say); a stale one is allowed and only moves the deadline
 * less, one ahead of the engine clock is AFSM_EINVAL (nothing done).
 *
 * Counters are deferred: the first thread to call afsm_handle_packet on a
 * handle owns it, and its counts (packets, bytes, retransmissions; not the
 * RTT, which is set at once) stay in the handle until the next
 * afsm_engine_advance (every reaper tick) or afsm_handle_release moves
 * them into the session. Readers (afsm_session_get, lists) see them up to
 * one tick late, never lost and never twice (each advance moves them
 * before it expires anything). Other threads' calls on the same handle,
 * and afsm_handle_add_stats, add at once. An afsm_session_update that
 * closes the session moves them first, so the copy it returns has every
 * count (release the handle first and it has nothing to move; closing a
 * session that a handle still defers for scans its shard's deferring
 * handles). An afsm_session_update that sets the stats replaces what has
 * been moved so far; counts still deferred are added after it. Expiry is
 * judged at the engine clock whenever a reading would extend the session,
 * so a stale reading never revives a session readers saw expired. With the etcd store this is a heartbeat and an add
 * that read the store's own clock. AFSM_ENULL, AFSM_EINVAL (now_ns), AFSM_ENOTFOUND, AFSM_EEXPIRED, AFSM_ECLOSED,
 * AFSM_ENOMEM as afsm_handle_heartbeat. */
AFSM_API afsm_status afsm_handle_packet(afsm_handle *handle, uint64_t now_ns, const afsm_stats *delta,
                                        uint64_t *remaining_ms);
/* The pinned session's id. */
AFSM_API afsm_status afsm_handle_session_id(const afsm_handle *handle, afsm_uuid *out);
/* Releases the handle. NULL is accepted and ignored. */
AFSM_API afsm_status afsm_handle_release(afsm_handle *handle);

/* ------------------------------------------------------------------------
 * Tokens: what a client presents to prove it owns a session
 * ---------------------------------------------------------------------- */

/* Token text is "v1." and URL-safe base64 of the key id, a random nonce and
 * the sealed (XChaCha20-Poly1305) session id, generation, issue time and
 * optional client IP: at most 120 characters. */
#define AFSM_TOKEN_SIZE    121 /* the longest token and its NUL */
#define AFSM_KEY_BYTES     32
#define AFSM_KEY_ID_MAX    65535
#define AFSM_TOKEN_BIND_IP 0x1u /* the token is valid only from the session's client IP */

/* Seals a token for the session's current generation into token (NUL-
 * terminated; token_len, may be NULL, gets its length). Earlier tokens of
 * the same generation stay valid. AFSM_ENULL, AFSM_EINVAL (flags),
 * AFSM_EBUFFER (token_size < AFSM_TOKEN_SIZE), AFSM_ENOTFOUND, AFSM_EEXPIRED,
 * AFSM_ECLOSED. Lock-free. */
AFSM_API afsm_status afsm_token_issue(afsm_engine *engine, const afsm_uuid *session_id, uint32_t flags, char *token,
                                      size_t token_size, size_t *token_len);

/* Moves the session to a new generation, which revokes every token issued
 * before (they now validate as AFSM_EREVOKED), and issues one for it.
 * Statuses as afsm_token_issue. */
AFSM_API afsm_status afsm_token_rotate(afsm_engine *engine, const afsm_uuid *session_id, uint32_t flags, char *token,
                                       size_t token_size, size_t *token_len);

/* Checks a token and copies its session into out (may be NULL). client_ip
 * (may be NULL) is the address the token was presented from; a token bound
 * to an IP needs it. Each failure has its own status: AFSM_ETOKENFORMAT
 * (truncated, garbled), AFSM_ETOKEN (forged or altered), AFSM_ETOKENKEY
 * (unknown key), AFSM_EKEYREMOVED, AFSM_ENOTFOUND, AFSM_EEXPIRED,
 * AFSM_ECLOSED, AFSM_EREVOKED (rotated), AFSM_EIPMISMATCH; and AFSM_ENULL,
 * AFSM_EIP (client_ip malformed), AFSM_EVERSION. Each of those outcomes
 * from AFSM_ETOKENFORMAT on is counted in session_token_validations_total;
 * AFSM_ENOMEM (a thread's first call, when its per-thread record cannot be
 * allocated) and AFSM_EUNAVAILABLE (etcd) are not: the token was never
 * judged. The cryptographic check is constant-time: timing does not reveal
 * which byte was wrong. Lock-free. */
AFSM_API afsm_status afsm_token_validate(afsm_engine *engine, const char *token, size_t token_len,
                                         const char *client_ip, size_t client_ip_len, afsm_session_info *out);

/* The key ring: every key has an id; the current key seals, every key in
 * the ring opens. Rotation: add a key, make it current, remove the old one
 * once its tokens may go. Writers serialise on a mutex; validation reads
 * the ring lock-free. Key id 0 belongs to the random key an engine makes
 * when it is given none: afsm_key_use and afsm_key_remove accept it,
 * afsm_key_add does not. The key calls have their own statuses:
 * AFSM_EKEYNOTFOUND "no such key", AFSM_EKEYEXISTS "id taken",
 * AFSM_EKEYINUSE "that is the current key" (earlier builds reused
 * AFSM_ENOTFOUND, AFSM_EEXISTS and AFSM_EBUSY). */
/* AFSM_ENULL, AFSM_EINVAL (key_id 0 or over AFSM_KEY_ID_MAX, key_len not
 * AFSM_KEY_BYTES), AFSM_EKEYEXISTS (id in the ring), AFSM_ENOMEM. */
AFSM_API afsm_status afsm_key_add(afsm_engine *engine, uint32_t key_id, const uint8_t *key, size_t key_len);
/* As afsm_key_add, reading the key from a file of exactly AFSM_KEY_BYTES
 * bytes, owned by root or by the process's effective user, that no one but
 * its owner may read or write (ssh's rule for private keys). AFSM_EKEYFILE
 * otherwise; the detail names the file and says which: missing,
 * unreadable, not a regular file, owner, mode, size. */
AFSM_API afsm_status afsm_key_add_file(afsm_engine *engine, uint32_t key_id, const char *path, size_t path_len);
/* Makes a key in the ring the one that seals. AFSM_EKEYNOTFOUND. */
AFSM_API afsm_status afsm_key_use(afsm_engine *engine, uint32_t key_id);
/* Removes a key: its tokens then fail with AFSM_EKEYREMOVED. AFSM_EKEYNOTFOUND,
 * AFSM_EKEYINUSE (it is the current key: make another current first). */
AFSM_API afsm_status afsm_key_remove(afsm_engine *engine, uint32_t key_id);

/* ------------------------------------------------------------------------
 * Metrics
 * ---------------------------------------------------------------------- */

/* Why sessions left, for session_deleted_total{reason}. Caller-supplied
 * reason texts go to events and logs; metrics keep a fixed set of labels. */
typedef enum afsm_delete_reason {
    AFSM_DELETE_REQUESTED = 0, /* afsm_session_delete */
    AFSM_DELETE_USER = 1,      /* afsm_session_delete_by_user */
    AFSM_DELETE_CLOSED = 2,    /* state set to closed */
    AFSM_DELETE_EVICTED = 3,   /* over max_sessions_per_user */
    AFSM_DELETE_EXPIRED = 4    /* also counted in expired_total */
} afsm_delete_reason;
#define AFSM_DELETE_REASON_COUNT 5

/* Token validation outcomes, for session_token_validations_total{result}. */
typedef enum afsm_token_result {
    AFSM_TOKEN_OK = 0,
    AFSM_TOKEN_MALFORMED = 1,
    AFSM_TOKEN_FORGED = 2,
    AFSM_TOKEN_UNKNOWN_KEY = 3,
    AFSM_TOKEN_REMOVED_KEY = 4,
    AFSM_TOKEN_NOT_FOUND = 5,
    AFSM_TOKEN_EXPIRED = 6,
    AFSM_TOKEN_CLOSED = 7,
    AFSM_TOKEN_REVOKED = 8,
    AFSM_TOKEN_IP_MISMATCH = 9
} afsm_token_result;
#define AFSM_TOKEN_RESULT_COUNT 10

/* session_duration_seconds upper bounds: 1, 5, 15, 30, 60, 300, 900, 1800,
 * 3600, 7200, 14400, 43200, 86400 seconds, then +Inf. A session's duration
 * runs from its creation to its removal, or to its deadline if it expired
 * (not to when the reaper noticed). */
#define AFSM_DURATION_BUCKETS 14

/* Version 2 appended the etcd store's fields; version 1 is still filled. */
#define AFSM_METRICS_VERSION 2
typedef struct afsm_metrics {
    uint32_t version; /* AFSM_METRICS_VERSION (or 1), set by the caller */
    uint32_t shard_count;
    uint64_t sessions;                            /* session_total (gauge) */
    uint64_t sessions_by_state[AFSM_STATE_COUNT]; /* session_active, session_idle, ... */
    uint64_t created_total;
    uint64_t deleted_total[AFSM_DELETE_REASON_COUNT];
    uint64_t expired_total;
    uint64_t idle_transitions_total;                  /* active -> idle by idle detection */
    uint64_t wake_transitions_total;                  /* idle -> active by activity */
    uint64_t duration_buckets[AFSM_DURATION_BUCKETS]; /* per bucket, not cumulative */
    uint64_t duration_count;
    double duration_sum_seconds;
    uint64_t token_validations[AFSM_TOKEN_RESULT_COUNT];
    uint64_t reaper_lag_ns;  /* engine clock minus the time the wheels last reached */
    uint64_t deferred_frees; /* memory waiting for readers to leave their epoch sections */
    /* Version 2: the etcd store's (zero with the memory store). */
    uint64_t etcd_lease_grants_total;     /* session leases granted (one per create) */
    uint64_t etcd_lease_keepalives_total; /* lease renewals sent (at most one per session per timeout / 3) */
    uint64_t etcd_stats_writes_total;     /* sessions' stats written by the periodic flush */
    /* Watch down: how long. Connected: the delay of this node's last write's
     * echo (answer to applied by the watch), or the age of the one still
     * awaited if longer; a node that writes nothing keeps its last figure. */
    double etcd_replica_lag_seconds;
} afsm_metrics;

#define AFSM_METRICS_INIT                                                                                              \
    {                                                                                                                  \
        .version = AFSM_METRICS_VERSION                                                                                \
    }

/* Sums the per-shard counters. Each counter is exact; the set is not one
 * atomic snapshot while other threads write. AFSM_ENULL, AFSM_EVERSION. */
AFSM_API afsm_status afsm_metrics_snapshot(afsm_engine *engine, afsm_metrics *out);

/* Writes the metrics in the Prometheus text exposition format (HELP and
 * TYPE lines, names from the service it replaces) into buf, NUL-terminated.
 * session_total is typed untyped: it is a gauge, but promtool's lint
 * reserves the _total suffix for counters and the name is the old one.
 * needed (may be NULL) gets the size required including the NUL;
 * AFSM_EBUFFER when buf_size is smaller (buf may be NULL then). */
AFSM_API afsm_status afsm_metrics_write_prometheus(afsm_engine *engine, char *buf, size_t buf_size, size_t *needed);

#ifdef __cplusplus
}
#endif

#endif /* AFSM_H */
