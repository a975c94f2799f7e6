/*
 * keys.c: building and parsing the etcd store's keys (layout in keys.h),
 * the record's JSON, and base64. Pure functions; nothing shared.
 */
#include <string.h>

#include "etcd/keys.h"
#include "util/ip.h"
#include "util/uuid.h"

/* ---- keys ---------------------------------------------------------------- */

static size_t put(char *out, size_t at, const char *text, size_t len)
{
    memcpy(out + at, text, len);
    return at + len;
}

static size_t id_key(const char *prefix, size_t prefix_len, const char *kind, const afsm_uuid *id, char *out)
{
    char text[AFSM_UUID_STRING_SIZE];
    afsm_uuid_format(id, text);
    size_t n = put(out, 0, prefix, prefix_len);
    n = put(out, n, kind, 2);
    n = put(out, n, text, AFSM_UUID_STRING_SIZE - 1);
    out[n] = '\0';
    return n;
}

size_t keys_session(const char *prefix, size_t prefix_len, const afsm_uuid *id, char *out)
{
    return id_key(prefix, prefix_len, "s/", id, out);
}

size_t keys_connection(const char *prefix, size_t prefix_len, const afsm_uuid *id, char *out)
{
    return id_key(prefix, prefix_len, "c/", id, out);
}

size_t keys_gone(const char *prefix, size_t prefix_len, const afsm_uuid *id, char *out)
{
    return id_key(prefix, prefix_len, "g/", id, out);
}

size_t keys_user_prefix(const char *prefix, size_t prefix_len, const char *user, size_t user_len, char *out)
{
    size_t n = put(out, 0, prefix, prefix_len);
    n = put(out, n, "u/", 2);
    n = put(out, n, user, user_len);
    out[n++] = '/';
    out[n] = '\0';
    return n;
}

size_t keys_user(const char *prefix, size_t prefix_len, const char *user, size_t user_len, const afsm_uuid *id,
                 char *out)
{
    char text[AFSM_UUID_STRING_SIZE];
    afsm_uuid_format(id, text);
    size_t n = keys_user_prefix(prefix, prefix_len, user, user_len, out);
    n = put(out, n, text, AFSM_UUID_STRING_SIZE - 1);
    out[n] = '\0';
    return n;
}

size_t keys_slot(const char *prefix, size_t prefix_len, const char *user, size_t user_len, uint32_t slot, char *out)
{
    size_t n = put(out, 0, prefix, prefix_len);
    n = put(out, n, "n/", 2);
    n = put(out, n, user, user_len);
    out[n++] = '/';
    char digits[12];
    size_t d = 0;
    do {
        digits[d++] = (char)('0' + slot % 10);
        slot /= 10;
    } while (slot != 0);
    while (d > 0)
        out[n++] = digits[--d];
    out[n] = '\0';
    return n;
}

keys_kind keys_parse(const char *prefix, size_t prefix_len, const char *key, size_t key_len, afsm_uuid *id)
{
    const size_t id_len = AFSM_UUID_STRING_SIZE - 1;
    if (key_len < prefix_len + 2 || memcmp(key, prefix, prefix_len) != 0 || key[prefix_len + 1] != '/')
        return KEYS_FOREIGN;
    const char *rest = key + prefix_len + 2;
    size_t rest_len = key_len - prefix_len - 2;
    switch (key[prefix_len]) {
    case 's':
        return rest_len == id_len && uuid_parse_text(rest, rest_len, id) == AFSM_OK ? KEYS_SESSION : KEYS_FOREIGN;
    case 'g':
        return rest_len == id_len && uuid_parse_text(rest, rest_len, id) == AFSM_OK ? KEYS_GONE : KEYS_FOREIGN;
    case 'c':
        return rest_len == id_len && uuid_parse_text(rest, rest_len, id) == AFSM_OK ? KEYS_CONNECTION : KEYS_FOREIGN;
    case 'u':
        /* "<user>/<id>": the id is the fixed-length tail. */
        if (rest_len < id_len + 2 || rest[rest_len - id_len - 1] != '/')
            return KEYS_FOREIGN;
        return uuid_parse_text(rest + rest_len - id_len, id_len, id) == AFSM_OK ? KEYS_USER : KEYS_FOREIGN;
    case 'n':
        return rest_len >= 3 ? KEYS_SLOT : KEYS_FOREIGN;
    default:
        return KEYS_FOREIGN;
    }
}

size_t keys_range_end(const char *key, size_t key_len, char *out)
{
    memcpy(out, key, key_len);
    /* Keys here are text, so the last byte is below 0xff. */
    out[key_len - 1] = (char)(key[key_len - 1] + 1);
    out[key_len] = '\0';
    return key_len;
}

/* ---- the record ------------------------------------------------------------ */

/* Adds name = value to o; on failure (value NULL: not built; or not added)
 * puts value and clears *ok, so a record missing a field is never sent
 * (it would be one no node can decode). */
static void add(json_object *o, const char *name, json_object *value, int *ok)
{
    if (value == NULL || json_object_object_add(o, name, value) != 0) {
        json_object_put(value);
        *ok = 0;
    }
}

static void add_string(json_object *o, const char *name, const char *text, size_t len, int *ok)
{
    add(o, name, json_object_new_string_len(text, (int)len), ok);
}

static void add_uuid(json_object *o, const char *name, const afsm_uuid *id, int *ok)
{
    char text[AFSM_UUID_STRING_SIZE];
    afsm_uuid_format(id, text);
    add_string(o, name, text, AFSM_UUID_STRING_SIZE - 1, ok);
}

json_object *keys_record_encode(const keys_record *rec)
{
    const afsm_session_info *s = &rec->info;
    json_object *o = json_object_new_object();
    json_object *stats = json_object_new_object();
    json_object *meta = json_object_new_object();
    if (o == NULL || stats == NULL || meta == NULL) {
        json_object_put(o);
        json_object_put(stats);
        json_object_put(meta);
        return NULL;
    }
    int ok = 1;
    char ip[AFSM_IP_STRING_SIZE];
    afsm_ip_format(&s->client_ip, ip);
    add(o, "v", json_object_new_int(KEYS_RECORD_VERSION), &ok);
    add_uuid(o, "id", &s->session_id, &ok);
    add_uuid(o, "conn", &s->connection_id, &ok);
    add_string(o, "user", s->user_id, s->user_id_len, &ok);
    add_string(o, "ip", ip, strlen(ip), &ok);
    add(o, "port", json_object_new_int(s->client_port), &ok);
    add(o, "state", json_object_new_int((int)s->state), &ok);
    add(o, "timeout_ms", json_object_new_int64((int64_t)s->timeout_ms), &ok);
    add(o, "created_ns", json_object_new_int64(s->created_at_ns), &ok);
    add(o, "active_ns", json_object_new_int64(s->last_active_at_ns), &ok);
    add(o, "gen", json_object_new_int64(s->token_generation), &ok);
    add(o, "lease", json_object_new_int64(rec->lease), &ok);
    if (rec->leased_ns != 0)
        add(o, "leased_ns", json_object_new_int64(rec->leased_ns), &ok);
    add(o, "slot", json_object_new_int(rec->slot), &ok);
    if (rec->writer != 0)
        add(o, "writer", json_object_new_int64(rec->writer), &ok);
    if (rec->seq != 0)
        add(o, "seq", json_object_new_int64(rec->seq), &ok);
    if (rec->stats_set)
        add(o, "stats_set", json_object_new_boolean(1), &ok);
    add(stats, "packets_sent", json_object_new_uint64(s->stats.packets_sent), &ok);
    add(stats, "packets_received", json_object_new_uint64(s->stats.packets_received), &ok);
    add(stats, "bytes_sent", json_object_new_uint64(s->stats.bytes_sent), &ok);
    add(stats, "bytes_received", json_object_new_uint64(s->stats.bytes_received), &ok);
    add(stats, "retransmissions", json_object_new_uint64(s->stats.retransmissions), &ok);
    add(stats, "rtt_ms", json_object_new_int64(s->stats.current_rtt_ms), &ok);
    add(o, "stats", stats, &ok);
    for (size_t i = 0; i < rec->meta_count; i++) {
        /* Object keys are NUL-terminated in json-c; metadata keys have no NUL. */
        char key[256];
        memcpy(key, rec->meta[i].key, rec->meta[i].key_len);
        key[rec->meta[i].key_len] = '\0';
        add(meta, key, json_object_new_string_len(rec->meta[i].value, (int)rec->meta[i].value_len), &ok);
    }
    add(o, "meta", meta, &ok);
    if (!ok) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

static int get_int64(json_object *o, const char *name, int64_t min, int64_t max, int64_t *out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, name, &v) || !json_object_is_type(v, json_type_int))
        return 0;
    int64_t n = json_object_get_int64(v);
    if (n == INT64_MAX && json_object_get_uint64(v) != (uint64_t)INT64_MAX)
        return 0; /* past INT64_MAX: json-c clamps it there */
    if (n < min || n > max)
        return 0;
    *out = n;
    return 1;
}

static int get_uint64(json_object *o, const char *name, uint64_t *out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, name, &v) || !json_object_is_type(v, json_type_int))
        return 0;
    *out = json_object_get_uint64(v);
    return 1;
}

static int get_uuid(json_object *o, const char *name, afsm_uuid *out)
{
    json_object *v;
    return json_object_object_get_ex(o, name, &v) && json_object_is_type(v, json_type_string) &&
           uuid_parse_text(json_object_get_string(v), (size_t)json_object_get_string_len(v), out) == AFSM_OK &&
           !uuid_is_nil(out);
}

afsm_status keys_record_decode(const char *text, size_t len, keys_record *rec, json_object **holder)
{
    *holder = NULL;
    json_tokener *tok = json_tokener_new();
    if (tok == NULL)
        return AFSM_ENOMEM;
    json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    int complete = json_tokener_get_error(tok) == json_tokener_success && json_tokener_get_parse_end(tok) == len;
    json_tokener_free(tok);
    if (o == NULL || !complete || !json_object_is_type(o, json_type_object))
        goto bad;
    afsm_session_info *s = &rec->info;
    memset(rec, 0, sizeof(*rec));
    s->version = AFSM_SESSION_INFO_VERSION;
    int64_t v, n;
    json_object *user, *ip, *stats, *meta;
    if (!get_int64(o, "v", KEYS_RECORD_VERSION, KEYS_RECORD_VERSION, &v) || !get_uuid(o, "id", &s->session_id) ||
        !get_uuid(o, "conn", &s->connection_id))
        goto bad;
    if (!json_object_object_get_ex(o, "user", &user) || !json_object_is_type(user, json_type_string))
        goto bad;
    size_t user_len = (size_t)json_object_get_string_len(user);
    if (user_len == 0 || user_len > AFSM_USER_ID_MAX || memchr(json_object_get_string(user), '\0', user_len) != NULL)
        goto bad;
    memcpy(s->user_id, json_object_get_string(user), user_len);
    s->user_id[user_len] = '\0';
    s->user_id_len = (uint32_t)user_len;
    if (!json_object_object_get_ex(o, "ip", &ip) || !json_object_is_type(ip, json_type_string) ||
        ip_parse_text(json_object_get_string(ip), (size_t)json_object_get_string_len(ip), &s->client_ip) != AFSM_OK)
        goto bad;
    if (!get_int64(o, "port", 0, 65535, &n))
        goto bad;
    s->client_port = (uint16_t)n;
    if (!get_int64(o, "state", AFSM_STATE_CONNECTING, AFSM_STATE_CLOSED, &n))
        goto bad;
    s->state = (uint32_t)n;
    if (!get_int64(o, "timeout_ms", 1, UINT32_MAX, &n))
        goto bad;
    s->timeout_ms = (uint64_t)n;
    if (!get_int64(o, "created_ns", 0, INT64_MAX / 2, &s->created_at_ns) ||
        !get_int64(o, "active_ns", 0, INT64_MAX / 2, &s->last_active_at_ns))
        goto bad;
    /* Records are stamped by several nodes: an activation by a node whose
     * wall clock runs behind the creator's reads as earlier than the
     * creation. Read as active at its creation, so that every copy made
     * from a record (the replica's, a linearizable read's) keeps created <=
     * last active, and restores elsewhere. */
    if (s->last_active_at_ns < s->created_at_ns)
        s->last_active_at_ns = s->created_at_ns;
    if (!get_int64(o, "gen", 1, UINT32_MAX, &n))
        goto bad;
    s->token_generation = (uint32_t)n;
    if (!get_int64(o, "lease", 0, INT64_MAX, &rec->lease) || !get_int64(o, "slot", -1, INT32_MAX, &n))
        goto bad;
    rec->slot = (int32_t)n;
    json_object *leased;
    if (json_object_object_get_ex(o, "leased_ns", &leased) &&
        !get_int64(o, "leased_ns", 0, INT64_MAX / 2, &rec->leased_ns))
        goto bad; /* optional (older writers), but a number when present */
    json_object *writer;
    if (json_object_object_get_ex(o, "writer", &writer) && !get_int64(o, "writer", 1, INT64_MAX, &rec->writer))
        goto bad; /* optional, as leased_ns */
    json_object *seq;
    if (json_object_object_get_ex(o, "seq", &seq) && !get_int64(o, "seq", 1, INT64_MAX, &rec->seq))
        goto bad;
    json_object *set;
    if (json_object_object_get_ex(o, "stats_set", &set)) {
        if (!json_object_is_type(set, json_type_boolean))
            goto bad;
        rec->stats_set = json_object_get_boolean(set);
    }
    if (!json_object_object_get_ex(o, "stats", &stats) || !json_object_is_type(stats, json_type_object))
        goto bad;
    afsm_stats *st = &s->stats;
    if (!get_uint64(stats, "packets_sent", &st->packets_sent) ||
        !get_uint64(stats, "packets_received", &st->packets_received) ||
        !get_uint64(stats, "bytes_sent", &st->bytes_sent) ||
        !get_uint64(stats, "bytes_received", &st->bytes_received) ||
        !get_uint64(stats, "retransmissions", &st->retransmissions) || !get_int64(stats, "rtt_ms", 0, UINT32_MAX, &n))
        goto bad;
    st->current_rtt_ms = (uint32_t)n;
    if (!json_object_object_get_ex(o, "meta", &meta) || !json_object_is_type(meta, json_type_object))
        goto bad;
    json_object_object_foreach(meta, key, value)
    {
        if (rec->meta_count == AFSM_METADATA_KEYS_MAX || !json_object_is_type(value, json_type_string))
            goto bad;
        afsm_kv *kv = &rec->meta[rec->meta_count++];
        kv->key = key;
        kv->key_len = strlen(key);
        kv->value = json_object_get_string(value);
        kv->value_len = (size_t)json_object_get_string_len(value);
    }
    *holder = o;
    return AFSM_OK;
bad:
    json_object_put(o);
    return AFSM_EINVAL;
}

/* ---- base64 ---------------------------------------------------------------- */

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t keys_base64_encoded_size(size_t len)
{
    return (len + 2) / 3 * 4 + 1;
}

size_t keys_base64_encode(const void *data, size_t len, char *out)
{
    const unsigned char *p = data;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t chunk = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            chunk |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            chunk |= p[i + 2];
        out[n++] = b64_alphabet[chunk >> 18 & 63];
        out[n++] = b64_alphabet[chunk >> 12 & 63];
        out[n++] = i + 1 < len ? b64_alphabet[chunk >> 6 & 63] : '=';
        out[n++] = i + 2 < len ? b64_alphabet[chunk & 63] : '=';
    }
    out[n] = '\0';
    return n;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long keys_base64_decode(const char *text, size_t len, char *out)
{
    if (len % 4 != 0)
        return -1;
    long n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int pad = (text[i + 3] == '=') + (text[i + 2] == '=');
        if (pad > 0 && i + 4 != len)
            return -1;
        uint32_t chunk = 0;
        for (int k = 0; k < 4; k++) {
            int v = k >= 4 - pad ? 0 : b64_value(text[i + k]);
            if (v < 0)
                return -1;
            chunk = chunk << 6 | (uint32_t)v;
        }
        out[n++] = (char)(chunk >> 16);
        if (pad < 2)
            out[n++] = (char)(chunk >> 8 & 0xff);
        if (pad < 1)
            out[n++] = (char)(chunk & 0xff);
    }
    return n;
}
