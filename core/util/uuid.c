/*
 * uuid.c: UUID text parsing and formatting, and the process-wide UUIDv7
 * generator (RFC 9562 §5.7).
 *
 * Layout of a v7 id, most significant byte first:
 *   48 bits unix_ms | 4 bits version (7) | 12 bits rand_a | 2 bits variant (10) | 62 bits rand_b
 *
 * Invariant: every id this process generates is strictly greater (memcmp
 * order) than every id it generated before, on any thread. The first eight
 * bytes hold the 60-bit "stamp" (unix_ms << 12 | counter) with the constant
 * version nibble in between, so ids order exactly as their stamps do,
 * whatever rand_b holds. The stamp comes from one CAS on a process-wide
 * atomic: max(now_ms << 12, last + 1). When many ids share a millisecond, or
 * the wall clock steps back, the 12-bit counter (rand_a) counts up and
 * carries into the timestamp, which may then run slightly ahead of the wall
 * clock (RFC 9562 §6.2, methods 1 and 3). rand_a thus holds a counter, not
 * random bits; rand_b's 62 random bits keep ids of different processes apart.
 *
 * Shared state: last_stamp, written by every generating thread through CAS.
 * Relaxed ordering is enough: the CAS alone makes the stamps a total order,
 * and no other memory is published with them. The random bytes come from
 * util/random.h (buffered getrandom, fork-safe).
 *
 * unix_ms is clamped to 48 bits (the year 10889). Only a clock pinned at
 * that clamp could carry the timestamp past it, and the field would wrap:
 * not a concern for a real clock.
 */
#include "util/uuid.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "util/random.h"
#include "util/errdetail.h"

#define UUID_TEXT_LEN 36
#define UNIX_MS_MAX   ((UINT64_C(1) << 48) - 1)
#define COUNTER_BITS  12

/* (unix_ms << 12 | counter) of the last id handed out; 0 before the first.
 * Alone on its cache line: every create CASes it, and the linker would
 * otherwise pack read-hot neighbours beside it (issue 15, goal 5: it
 * shared a line with table_hash_override, which every table probe reads,
 * and with the global epoch, which every epoch_enter reads, so each
 * create made the other threads miss on both). */
static struct {
    _Atomic uint64_t value;
    char pad[64 - sizeof(uint64_t)];
} __attribute__((aligned(64))) last_stamp_line;
#define last_stamp (last_stamp_line.value)

/* rand_b: from the process's buffered OS randomness (util/random.h). If
 * the OS has none to give (old kernel, seccomp), a splitmix64 stream keeps
 * rand_b from being constant; uniqueness within the process never depends
 * on it (the stamp guarantees that). */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void rand_bytes(uint8_t *out, size_t n)
{
    if (random_fill(out, n))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t state = (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
    state ^= (uint64_t)(uintptr_t)out;
    state ^= atomic_load_explicit(&last_stamp, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        out[i] = (uint8_t)splitmix64(&state);
}

/* The next stamp: strictly greater than every one handed out before. */
static uint64_t next_stamp(uint64_t unix_ms)
{
    uint64_t floor_stamp = unix_ms << COUNTER_BITS;
    uint64_t last = atomic_load_explicit(&last_stamp, memory_order_relaxed);
    for (;;) {
        uint64_t next = floor_stamp > last ? floor_stamp : last + 1;
        /* On failure the CAS reloads last; the loop retries with it. */
        if (atomic_compare_exchange_weak_explicit(&last_stamp, &last, next, memory_order_relaxed, memory_order_relaxed))
            return next;
    }
}

void uuid_v7_at(afsm_uuid *out, uint64_t unix_ms)
{
    if (unix_ms > UNIX_MS_MAX)
        unix_ms = UNIX_MS_MAX;
    uint64_t stamp = next_stamp(unix_ms);
    uint64_t ms = stamp >> COUNTER_BITS;
    unsigned counter = (unsigned)(stamp & ((1u << COUNTER_BITS) - 1));

    for (int i = 0; i < 6; i++)
        out->bytes[i] = (uint8_t)(ms >> (40 - 8 * i));
    out->bytes[6] = (uint8_t)(0x70 | (counter >> 8));
    out->bytes[7] = (uint8_t)(counter & 0xff);
    rand_bytes(out->bytes + 8, 8);
    out->bytes[8] = (uint8_t)(0x80 | (out->bytes[8] & 0x3f));
}

bool uuid_is_nil(const afsm_uuid *uuid)
{
    static const afsm_uuid nil;
    return memcmp(uuid->bytes, nil.bytes, sizeof nil.bytes) == 0;
}

int uuid_compare(const afsm_uuid *a, const afsm_uuid *b)
{
    return memcmp(a->bytes, b->bytes, sizeof a->bytes);
}

uint64_t uuid_v7_unix_ms(const afsm_uuid *uuid)
{
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | uuid->bytes[i];
    return ms;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool is_dash_position(size_t i)
{
    return i == 8 || i == 13 || i == 18 || i == 23;
}

afsm_status uuid_parse_text(const char *text, size_t text_len, afsm_uuid *out)
{
    /* Only the canonical form: accepting braces, urn: or 32 digits would give
     * one id several spellings, and ids are compared as text by callers. */
    if (text_len != UUID_TEXT_LEN)
        return AFSM_EUUID;

    afsm_uuid parsed;
    size_t byte = 0;
    for (size_t i = 0; i < UUID_TEXT_LEN;) {
        if (is_dash_position(i)) {
            if (text[i] != '-')
                return AFSM_EUUID;
            i++;
            continue;
        }
        int hi = hex_value(text[i]);
        int lo = hex_value(text[i + 1]); /* groups have even lengths: a pair never straddles a dash */
        if (hi < 0 || lo < 0)
            return AFSM_EUUID;
        parsed.bytes[byte++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    *out = parsed; /* untouched on failure */
    return AFSM_OK;
}

AFSM_API afsm_status afsm_uuid_parse(const char *text, size_t text_len, afsm_uuid *out)
{
    errdetail_clear();
    if (text == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", text == NULL ? "text" : "out");
    afsm_status status = uuid_parse_text(text, text_len, out);
    if (status != AFSM_OK) {
        char quoted[ERRDETAIL_QUOTE_SIZE];
        return errdetail_set(status, "text: \"%s\" (%zu bytes), must be the 36-character form (8-4-4-4-12 hex digits)",
                             errdetail_quote(text, text_len, quoted), text_len);
    }
    return AFSM_OK;
}

AFSM_API afsm_status afsm_uuid_format(const afsm_uuid *uuid, char out[AFSM_UUID_STRING_SIZE])
{
    errdetail_clear();
    static const char digits[] = "0123456789abcdef";
    if (uuid == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", uuid == NULL ? "uuid" : "out");
    size_t pos = 0;
    for (size_t byte = 0; byte < sizeof uuid->bytes; byte++) {
        if (byte == 4 || byte == 6 || byte == 8 || byte == 10)
            out[pos++] = '-';
        out[pos++] = digits[uuid->bytes[byte] >> 4];
        out[pos++] = digits[uuid->bytes[byte] & 0x0f];
    }
    out[pos] = '\0';
    return AFSM_OK;
}

AFSM_API afsm_status afsm_uuid_v7(afsm_uuid *out)
{
    errdetail_clear();
    if (out == NULL)
        return errdetail_set(AFSM_ENULL, "out: NULL");
    struct timespec now;
    uint64_t unix_ms = 0;
    /* A clock before 1970 (or a failing clock) reads as 0: the stamp's
     * max() keeps the ids increasing anyway. */
    if (clock_gettime(CLOCK_REALTIME, &now) == 0 && now.tv_sec >= 0)
        unix_ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    uuid_v7_at(out, unix_ms);
    return AFSM_OK;
}
