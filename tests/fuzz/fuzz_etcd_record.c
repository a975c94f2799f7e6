/*
 * fuzz_etcd_record.c: libFuzzer target for what the etcd store parses of
 * etcd's data: a session record (keys_record_decode), a key under the
 * prefix (keys_parse) and the gateway's base64 (keys_base64_decode).
 * Anything under the prefix may be there (another program, a hand edit, a
 * truncated write): it must be refused or read whole, never a crash.
 *
 * Properties checked on every input (a failure traps, so libFuzzer keeps it):
 * - each parser reads only data[0..size): it gets a heap copy of exactly
 *   size bytes with no NUL after it, so ASan flags any read beyond;
 * - a record is AFSM_OK or AFSM_EINVAL; an accepted one has its fields in
 *   the engine's bounds (user id 1..AFSM_USER_ID_MAX bytes without NUL and
 *   NUL-terminated, a known state, a timeout, at most
 *   AFSM_METADATA_KEYS_MAX metadata entries, writer and seq >= 0, slot >= -1);
 * - an accepted record whose metadata the engine would take
 *   (metadata_validate) encodes (keys_record_encode) to a record that
 *   decodes to the same fields;
 * - a key of ours names the id it was parsed from: the key built from that
 *   id parses to the same kind and id;
 * - base64: a decoded text is at most 3/4 of its length, and any bytes
 *   encode to a text that decodes back to them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "afsm.h"
#include "etcd/keys.h"
#include "metadata.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            __builtin_trap();                                                                                          \
    } while (0)

#define PREFIX     "/afsm/"
#define PREFIX_LEN (sizeof(PREFIX) - 1)

static void check_bounds(const keys_record *rec)
{
    const afsm_session_info *s = &rec->info;
    CHECK(s->user_id_len >= 1 && s->user_id_len <= AFSM_USER_ID_MAX);
    CHECK(s->user_id[s->user_id_len] == '\0' && memchr(s->user_id, '\0', s->user_id_len) == NULL);
    CHECK(s->state >= AFSM_STATE_CONNECTING && s->state <= AFSM_STATE_CLOSED);
    CHECK(s->timeout_ms >= 1 && s->token_generation >= 1);
    CHECK(s->client_ip.family == 4 || s->client_ip.family == 6);
    CHECK(rec->meta_count <= AFSM_METADATA_KEYS_MAX);
    CHECK(rec->writer >= 0 && rec->seq >= 0 && rec->slot >= -1 && rec->lease >= 0);
}

static int same_record(const keys_record *a, const keys_record *b)
{
    const afsm_session_info *x = &a->info, *y = &b->info;
    if (memcmp(&x->session_id, &y->session_id, sizeof(x->session_id)) != 0 ||
        memcmp(&x->connection_id, &y->connection_id, sizeof(x->connection_id)) != 0 ||
        x->user_id_len != y->user_id_len || memcmp(x->user_id, y->user_id, x->user_id_len) != 0 ||
        x->client_ip.family != y->client_ip.family ||
        memcmp(x->client_ip.bytes, y->client_ip.bytes, sizeof(x->client_ip.bytes)) != 0 ||
        x->client_port != y->client_port || x->state != y->state || x->timeout_ms != y->timeout_ms ||
        x->created_at_ns != y->created_at_ns || x->last_active_at_ns != y->last_active_at_ns ||
        x->token_generation != y->token_generation || memcmp(&x->stats, &y->stats, sizeof(x->stats)) != 0 ||
        a->lease != b->lease || a->leased_ns != b->leased_ns || a->slot != b->slot || a->writer != b->writer ||
        a->seq != b->seq || a->stats_set != b->stats_set || a->meta_count != b->meta_count)
        return 0;
    for (size_t i = 0; i < a->meta_count; i++)
        if (a->meta[i].key_len != b->meta[i].key_len || a->meta[i].value_len != b->meta[i].value_len ||
            memcmp(a->meta[i].key, b->meta[i].key, a->meta[i].key_len) != 0 ||
            memcmp(a->meta[i].value, b->meta[i].value, a->meta[i].value_len) != 0)
            return 0;
    return 1;
}

static void fuzz_record(const char *text, size_t size)
{
    keys_record rec;
    json_object *holder = NULL;
    afsm_status st = keys_record_decode(text, size, &rec, &holder);
    CHECK(st == AFSM_OK || st == AFSM_EINVAL);
    if (st != AFSM_OK) {
        CHECK(holder == NULL);
        return;
    }
    check_bounds(&rec);
    if (metadata_validate(rec.meta, rec.meta_count) == AFSM_OK) {
        json_object *again = keys_record_encode(&rec);
        CHECK(again != NULL);
        const char *out = json_object_to_json_string_ext(again, JSON_C_TO_STRING_PLAIN);
        keys_record back;
        json_object *back_holder = NULL;
        CHECK(keys_record_decode(out, strlen(out), &back, &back_holder) == AFSM_OK);
        CHECK(same_record(&rec, &back));
        json_object_put(back_holder);
        json_object_put(again);
    }
    json_object_put(holder);
}

static void fuzz_key(const char *key, size_t size)
{
    afsm_uuid id;
    keys_kind kind = keys_parse(PREFIX, PREFIX_LEN, key, size, &id);
    char built[KEYS_MAX];
    afsm_uuid again;
    if (kind == KEYS_SESSION) {
        size_t n = keys_session(PREFIX, PREFIX_LEN, &id, built);
        CHECK(keys_parse(PREFIX, PREFIX_LEN, built, n, &again) == KEYS_SESSION);
        CHECK(memcmp(&id, &again, sizeof(id)) == 0);
    } else if (kind == KEYS_GONE) {
        size_t n = keys_gone(PREFIX, PREFIX_LEN, &id, built);
        CHECK(keys_parse(PREFIX, PREFIX_LEN, built, n, &again) == KEYS_GONE);
        CHECK(memcmp(&id, &again, sizeof(id)) == 0);
    }
}

static void fuzz_base64(const char *text, size_t size, const uint8_t *data)
{
    char *out = malloc(size * 3 / 4 + 3);
    if (out == NULL)
        return;
    long n = keys_base64_decode(text, size, out);
    CHECK(n >= -1 && (n < 0 || (size_t)n <= size * 3 / 4));
    free(out);
    /* Any bytes (at most 192 of the input's) there and back. */
    size_t len = size < 192 ? size : 192;
    char encoded[257], decoded[192 + 3];
    size_t elen = keys_base64_encode(data, len, encoded);
    CHECK(elen + 1 == keys_base64_encoded_size(len) && encoded[elen] == '\0');
    CHECK(keys_base64_decode(encoded, elen, decoded) == (long)len);
    CHECK(memcmp(decoded, data, len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    fuzz_record(copy, size);
    fuzz_key(copy, size);
    fuzz_base64(copy, size, data);
    free(copy);
    return 0;
}
