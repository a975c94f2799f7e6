/*
 * metadata.c: building metadata blobs (see metadata.h). Inputs are small
 * (<= 64 keys), so a sort of pointers and a linear merge are all it needs.
 */
#include "metadata.h"

#include <stdlib.h>
#include <string.h>

#include "util/alloc.h"
#include "util/errdetail.h"

#define KEY_MAX 255

typedef struct entry {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
    size_t order; /* input position, so the last duplicate wins */
} entry;

/* The bytes of keys and values kvs leaves stored: the bound is on what the
 * session holds, so a key given twice counts once, with its last value.
 * Quadratic in count (at most 64), and only reached past the bound. */
static size_t stored_bytes(const afsm_kv *kvs, size_t count)
{
    size_t bytes = 0;
    for (size_t i = 0; i < count; i++) {
        size_t j = i + 1;
        while (j < count && (kvs[j].key_len != kvs[i].key_len || memcmp(kvs[j].key, kvs[i].key, kvs[i].key_len) != 0))
            j++;
        if (j == count) /* no later duplicate: this one is kept */
            bytes += kvs[i].key_len + kvs[i].value_len;
    }
    return bytes;
}

afsm_status metadata_validate(const afsm_kv *kvs, size_t count)
{
    if (count == 0)
        return AFSM_OK;
    if (kvs == NULL)
        return errdetail_set(AFSM_ENULL, "metadata: NULL with metadata_count %zu", count);
    if (count > AFSM_METADATA_KEYS_MAX)
        return errdetail_set(AFSM_ETOOLONG, "metadata: %zu keys, must be at most %d", count, AFSM_METADATA_KEYS_MAX);
    size_t payload = 0;
    char quoted[ERRDETAIL_QUOTE_SIZE];
    for (size_t i = 0; i < count; i++) {
        const afsm_kv *kv = &kvs[i];
        if (kv->key == NULL)
            return errdetail_set(AFSM_ENULL, "metadata[%zu].key: NULL", i);
        if (kv->value == NULL && kv->value_len != 0)
            return errdetail_set(AFSM_ENULL, "metadata[%zu].value: NULL with value_len %zu", i, kv->value_len);
        if (kv->key_len == 0)
            return errdetail_set(AFSM_EINVAL, "metadata[%zu].key: empty, must be 1..%d bytes", i, KEY_MAX);
        if (kv->key_len > KEY_MAX)
            return errdetail_set(AFSM_ETOOLONG, "metadata[%zu].key: %zu bytes, must be 1..%d", i, kv->key_len, KEY_MAX);
        if (kv->value_len > AFSM_METADATA_BYTES_MAX)
            return errdetail_set(AFSM_ETOOLONG, "metadata \"%s\": value of %zu bytes, must be at most %d",
                                 errdetail_quote(kv->key, kv->key_len, quoted), kv->value_len, AFSM_METADATA_BYTES_MAX);
        if (memchr(kv->key, '\0', kv->key_len) != NULL)
            return errdetail_set(AFSM_EINVAL, "metadata key \"%s\": contains a NUL byte, must contain none",
                                 errdetail_quote(kv->key, kv->key_len, quoted));
        if (kv->value_len != 0 && memchr(kv->value, '\0', kv->value_len) != NULL)
            return errdetail_set(AFSM_EINVAL, "metadata \"%s\": value contains a NUL byte, must contain none",
                                 errdetail_quote(kv->key, kv->key_len, quoted));
        payload += kv->key_len + kv->value_len;
    }
    if (payload > AFSM_METADATA_BYTES_MAX)
        payload = stored_bytes(kvs, count);
    if (payload > AFSM_METADATA_BYTES_MAX)
        return errdetail_set(AFSM_ETOOLONG, "metadata: %zu bytes of keys and values, must be at most %d", payload,
                             AFSM_METADATA_BYTES_MAX);
    return AFSM_OK;
}

static int compare_keys(const char *a, size_t a_len, const char *b, size_t b_len)
{
    int c = memcmp(a, b, a_len < b_len ? a_len : b_len);
    if (c != 0)
        return c;
    return (a_len > b_len) - (a_len < b_len);
}

static int compare_entries(const void *pa, const void *pb)
{
    const entry *a = pa, *b = pb;
    int c = compare_keys(a->key, a->key_len, b->key, b->key_len);
    if (c != 0)
        return c;
    return (a->order > b->order) - (a->order < b->order);
}

afsm_status metadata_merge(const metadata *base, const afsm_kv *kvs, size_t count, metadata **out)
{
    *out = NULL;
    entry incoming[AFSM_METADATA_KEYS_MAX];
    entry merged[2 * AFSM_METADATA_KEYS_MAX];
    for (size_t i = 0; i < count; i++)
        incoming[i] = (entry){kvs[i].key, kvs[i].key_len, kvs[i].value, kvs[i].value_len, i};
    qsort(incoming, count, sizeof(entry), compare_entries);
    /* Keep the last of each run of equal keys. */
    size_t unique = 0;
    for (size_t i = 0; i < count; i++) {
        if (unique > 0 && compare_keys(incoming[unique - 1].key, incoming[unique - 1].key_len, incoming[i].key,
                                       incoming[i].key_len) == 0)
            unique--;
        incoming[unique++] = incoming[i];
    }

    /* Merge the sorted base with the sorted input; input wins on a tie. */
    size_t n = 0, payload = 0, data_bytes = 0;
    const char *cursor = base != NULL ? base->data : NULL;
    size_t base_left = base != NULL ? base->count : 0;
    size_t j = 0;
    while (base_left > 0 || j < unique) {
        entry from_base = {0};
        if (base_left > 0) {
            from_base.key = cursor;
            from_base.key_len = strlen(cursor);
            from_base.value = cursor + from_base.key_len + 1;
            from_base.value_len = strlen(from_base.value);
        }
        int c = base_left == 0 ? 1
                : j == unique  ? -1
                               : compare_keys(from_base.key, from_base.key_len, incoming[j].key, incoming[j].key_len);
        if (c <= 0) {
            cursor = from_base.value + from_base.value_len + 1;
            base_left--;
        }
        entry chosen = c < 0 ? from_base : incoming[j];
        if (c >= 0)
            j++;
        if (n == AFSM_METADATA_KEYS_MAX)
            return errdetail_set(AFSM_ETOOLONG,
                                 "metadata: more than %d keys with the session's own, must be at most %d",
                                 AFSM_METADATA_KEYS_MAX, AFSM_METADATA_KEYS_MAX);
        merged[n++] = chosen;
        payload += chosen.key_len + chosen.value_len;
        data_bytes += chosen.key_len + chosen.value_len + 2;
    }
    if (payload > AFSM_METADATA_BYTES_MAX)
        return errdetail_set(AFSM_ETOOLONG,
                             "metadata: %zu bytes of keys and values with the session's own, must be at most %d",
                             payload, AFSM_METADATA_BYTES_MAX);
    if (n == 0)
        return AFSM_OK;

    metadata *m = mem_alloc(sizeof(*m) + data_bytes);
    if (m == NULL)
        return AFSM_ENOMEM;
    m->count = (uint32_t)n;
    m->payload_bytes = (uint32_t)payload;
    m->data_bytes = (uint32_t)data_bytes;
    char *p = m->data;
    for (size_t i = 0; i < n; i++) {
        memcpy(p, merged[i].key, merged[i].key_len);
        p += merged[i].key_len;
        *p++ = '\0';
        if (merged[i].value_len != 0)
            memcpy(p, merged[i].value, merged[i].value_len);
        p += merged[i].value_len;
        *p++ = '\0';
    }
    *out = m;
    return AFSM_OK;
}

void metadata_free(metadata *m)
{
    mem_free(m);
}
