/*
 * uuid.h: UUID parsing, formatting and the process-wide UUIDv7 generator.
 *
 * The public afsm_uuid_parse / afsm_uuid_format / afsm_uuid_v7 live in
 * uuid.c; these are the internal helpers the engine uses.
 */
#ifndef AFSM_UTIL_UUID_H
#define AFSM_UTIL_UUID_H

#include <stdbool.h>
#include <stdint.h>

#include "afsm.h"

/* A new UUIDv7 for the given wall time (Unix milliseconds). Ids are
 * strictly increasing (memcmp order) across every thread of the process,
 * whatever unix_ms does: when it steps back or many ids share one
 * millisecond, the 12-bit rand_a field counts up and carries into the
 * timestamp. The 62 bits of rand_b are random. Lock-free (one CAS loop). */
void uuid_v7_at(afsm_uuid *out, uint64_t unix_ms);

/* True for the all-zero UUID. */
bool uuid_is_nil(const afsm_uuid *uuid);

/* afsm_uuid_parse without touching the caller's error detail: for the
 * engine's own parsing (etcd keys), where a failure is not the caller's. */
afsm_status uuid_parse_text(const char *text, size_t text_len, afsm_uuid *out);

/* memcmp order: negative, zero or positive. For v7 ids, creation order. */
int uuid_compare(const afsm_uuid *a, const afsm_uuid *b);

/* The Unix millisecond timestamp in a v7 id's top 48 bits. */
uint64_t uuid_v7_unix_ms(const afsm_uuid *uuid);

#endif
