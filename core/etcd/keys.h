/*
 * keys.h: the etcd store's key layout and the session record's JSON form.
 *
 * Under the prefix P (default "/afsm/"), readable with
 * `etcdctl get --prefix /afsm/`:
 *
 *   P s/<session id>          the record: JSON, {"v":1, ...} (keys_record_*),
 *                             with the id of the engine open that wrote it
 *   P c/<connection id>       the session id: makes connection ids unique
 *   P u/<user id>/<session id>  "" : the user's sessions (log out everywhere)
 *   P n/<user id>/<slot>      the session id: one of the user's
 *                             max_sessions_per_user slots (only with a cap)
 *   P g/<session id>          {"reason":..,"why":n}: written in the txn that
 *                             deletes a session, so every node tells a
 *                             delete (DELETED, with its reason) from a lease
 *                             expiry (EXPIRED)
 *
 * Every key of a session is attached to the session's own lease, so etcd
 * removes all of them when the lease expires (a node died, or nobody
 * heartbeated), the g/ key included once the deleted session's lease runs
 * out. Ids are the canonical lowercase 36-character UUID form; a user id is
 * stored raw (it may contain '/': a u/ key is parsed from its end, where the
 * session id has a fixed length).
 *
 * Nothing here is shared or locked: pure functions over caller buffers.
 */
#ifndef AFSM_ETCD_KEYS_H
#define AFSM_ETCD_KEYS_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

#include "afsm.h"

#define KEYS_PREFIX_DEFAULT "/afsm/"
#define KEYS_PREFIX_MAX     256
/* The longest key: prefix, "u/", a user id, "/", a session id. */
#define KEYS_MAX            (KEYS_PREFIX_MAX + 3 + AFSM_USER_ID_MAX + 1 + AFSM_UUID_STRING_SIZE)
#define KEYS_RECORD_VERSION 1

typedef enum keys_kind {
    KEYS_FOREIGN = 0, /* not ours: logged and skipped */
    KEYS_SESSION,     /* s/ */
    KEYS_CONNECTION,  /* c/ */
    KEYS_USER,        /* u/ */
    KEYS_SLOT,        /* n/ */
    KEYS_GONE         /* g/ */
} keys_kind;

/* Key builders: write the key into out (KEYS_MAX bytes), return its length. */
size_t keys_session(const char *prefix, size_t prefix_len, const afsm_uuid *id, char *out);
size_t keys_connection(const char *prefix, size_t prefix_len, const afsm_uuid *id, char *out);
size_t keys_user(const char *prefix, size_t prefix_len, const char *user, size_t user_len, const afsm_uuid *id,
                 char *out);
/* The prefix of one user's u/ keys (a range read; other users whose id
 * starts with this one's and a '/' also match: check keys_parse's user). */
size_t keys_user_prefix(const char *prefix, size_t prefix_len, const char *user, size_t user_len, char *out);
size_t keys_slot(const char *prefix, size_t prefix_len, const char *user, size_t user_len, uint32_t slot, char *out);
size_t keys_gone(const char *prefix, size_t prefix_len, const afsm_uuid *id, char *out);

/* What a key under the prefix is, and the session id in it (s/, u/, g/).
 * A malformed key of ours is KEYS_FOREIGN. */
keys_kind keys_parse(const char *prefix, size_t prefix_len, const char *key, size_t key_len, afsm_uuid *id);

/* The end of a prefix range: the prefix with its last byte incremented
 * (etcd's range_end). Returns the length written to out. */
size_t keys_range_end(const char *key, size_t key_len, char *out);

/* A session record as stored: the copy, its metadata entries (pointing
 * into the JSON object the record was read from), its lease and slot. */
typedef struct keys_record {
    afsm_session_info info;
    afsm_kv meta[AFSM_METADATA_KEYS_MAX];
    size_t meta_count;
    int64_t lease;
    int64_t leased_ns; /* wall clock: when the lease's TTL started (0: unknown) */
    int32_t slot;      /* -1: none */
    /* The node that wrote it (etcd_store's writer id, random per open); 0:
     * not said (an older writer). A node that finds its own id on a record
     * it never heard back about knows the stats in it are its own, not
     * another node's additions (core/etcd/README.md, "Stats"). */
    int64_t writer;
    int64_t seq;   /* the writer's number for this write (0: not said): one per write sent */
    int stats_set; /* the write set the stats (AFSM_UPDATE_STATS) rather than carry additions */
} keys_record;

/* The record's JSON text (caller frees with json_object_put on the object
 * returned; the text lives in it). NULL when out of memory. */
json_object *keys_record_encode(const keys_record *rec);
/* Parses a record's bytes. *holder keeps the strings rec->meta points to
 * alive (json_object_put it after use). AFSM_EINVAL for anything that is
 * not a whole record of a known version. */
afsm_status keys_record_decode(const char *text, size_t len, keys_record *rec, json_object **holder);

/* base64 (RFC 4648, padded), as the JSON gateway carries keys and values. */
size_t keys_base64_encoded_size(size_t len);
/* Writes the NUL-terminated encoding; returns its length. */
size_t keys_base64_encode(const void *data, size_t len, char *out);
/* Decodes into out (at least len * 3 / 4 + 3 bytes); -1 for bad input. */
long keys_base64_decode(const char *text, size_t len, char *out);

#endif
