/*
 * metadata.h: a session's metadata as one immutable blob.
 *
 * Entries are sorted by key, unique, and stored as "key\0value\0" pairs, the
 * exact bytes afsm_session_get_metadata hands out. A change builds a new
 * blob and swaps the session's pointer under the shard lock; the old blob
 * is freed through the epoch, so a lock-free reader always copies a whole,
 * consistent map.
 */
#ifndef AFSM_METADATA_H
#define AFSM_METADATA_H

#include <ck_epoch.h>
#include <stddef.h>
#include <stdint.h>

#include "afsm.h"

typedef struct metadata {
    ck_epoch_entry_t epoch_entry;
    uint32_t count;
    uint32_t payload_bytes; /* sum of key and value lengths: the 4 KiB bound */
    uint32_t data_bytes;    /* size of data[] */
    char data[];
} metadata;

/* Checks caller input against the bounds: AFSM_ENULL (kvs NULL with a
 * count, or a NULL key / non-empty NULL value), AFSM_EINVAL (empty key, NUL
 * inside), AFSM_ETOOLONG (over 64 keys, a key over 255 bytes, or over 4 KiB
 * in all as stored). Duplicate keys are allowed: the last one wins, and
 * only it counts toward the 4 KiB. */
afsm_status metadata_validate(const afsm_kv *kvs, size_t count);

/* A blob of base's entries overlaid with kvs (base may be NULL: kvs alone).
 * *out is NULL when the result is empty. AFSM_ETOOLONG when the result
 * breaks the bounds, AFSM_ENOMEM. kvs must have passed metadata_validate. */
afsm_status metadata_merge(const metadata *base, const afsm_kv *kvs, size_t count, metadata **out);

void metadata_free(metadata *m);

#endif
