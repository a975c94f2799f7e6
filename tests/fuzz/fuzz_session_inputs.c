/*
 * fuzz_session_inputs.c: libFuzzer target for the public create and update
 * inputs: user id, client IP text, port, metadata keys and values, update
 * fields, state and metadata mode, all taken from the fuzzer's bytes.
 *
 * Properties checked on every input (a failure traps):
 * - no call reads past the buffers it is given (exact-size heap copies);
 * - every status is a documented one for that call;
 * - a refused create changes nothing (the count stays), an accepted one
 *   adds exactly one session whose user id, port and metadata count read
 *   back as given;
 * - a refused update leaves the session's state and metadata as they were.
 * The engine is emptied every few thousand runs so it cannot fill memory.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "afsm.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            __builtin_trap();                                                                                          \
    } while (0)

typedef struct reader {
    const uint8_t *data;
    size_t size;
} reader;

static uint8_t take_byte(reader *r)
{
    if (r->size == 0)
        return 0;
    r->size--;
    return *r->data++;
}

/* A heap copy of the next n bytes (n from one length byte, scaled). */
static char *take_string(reader *r, size_t *len, size_t scale)
{
    size_t want = (size_t)take_byte(r) * scale;
    if (want > r->size)
        want = r->size;
    char *s = malloc(want ? want : 1);
    CHECK(s != NULL);
    memcpy(s, r->data, want);
    r->data += want;
    r->size -= want;
    *len = want;
    return s;
}

static afsm_engine *engine;
static unsigned runs;

static uint64_t session_count(void)
{
    afsm_counts counts;
    CHECK(afsm_engine_counts(engine, &counts) == AFSM_OK);
    return counts.total;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (engine == NULL || ++runs % 4096 == 0) {
        afsm_engine_close(engine);
        afsm_config cfg = AFSM_CONFIG_INIT;
        cfg.reaper = AFSM_REAPER_MANUAL;
        CHECK(afsm_engine_open(&cfg, &engine) == AFSM_OK);
    }
    reader r = {data, size};
    size_t user_len, ip_len;
    char *user = take_string(&r, &user_len, 2);
    char *ip = take_string(&r, &ip_len, 1);
    uint32_t port = (uint32_t)take_byte(&r) << 10 | take_byte(&r);
    size_t kv_count = take_byte(&r) % 80;
    afsm_kv *kvs = calloc(kv_count ? kv_count : 1, sizeof(afsm_kv));
    char **owned = calloc(2 * kv_count + 1, sizeof(char *));
    CHECK(kvs != NULL && owned != NULL);
    for (size_t i = 0; i < kv_count; i++) {
        owned[2 * i] = take_string(&r, &kvs[i].key_len, 1);
        owned[2 * i + 1] = take_string(&r, &kvs[i].value_len, 4);
        kvs[i].key = owned[2 * i];
        kvs[i].value = owned[2 * i + 1];
    }

    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = user;
    o.user_id_len = user_len;
    o.client_ip = ip;
    o.client_ip_len = ip_len;
    o.client_port = port;
    afsm_uuid_v7(&o.connection_id);
    o.metadata = kvs;
    o.metadata_count = kv_count;
    uint64_t before = session_count();
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    afsm_status st = afsm_session_create(engine, &o, &s);
    CHECK(st == AFSM_OK || st == AFSM_EINVAL || st == AFSM_ETOOLONG || st == AFSM_EIP || st == AFSM_ENULL);
    if (st != AFSM_OK) {
        CHECK(session_count() == before);
    } else {
        CHECK(session_count() == before + 1);
        CHECK(s.user_id_len == user_len && memcmp(s.user_id, user, user_len) == 0);
        CHECK(s.client_port == port);
        CHECK(s.metadata_count <= kv_count);

        afsm_update u = AFSM_UPDATE_INIT;
        u.fields = take_byte(&r) & 0x1f; /* includes one unknown bit */
        u.state = take_byte(&r) % 8;
        u.metadata = kvs;
        u.metadata_count = kv_count;
        afsm_session_info after = AFSM_SESSION_INFO_INIT;
        afsm_status ust = afsm_session_update(engine, &s.session_id, &u, &after);
        CHECK(ust == AFSM_OK || ust == AFSM_EINVAL || ust == AFSM_ETOOLONG || ust == AFSM_ETRANSITION ||
              ust == AFSM_ENULL);
        afsm_session_info now = AFSM_SESSION_INFO_INIT;
        afsm_status gst = afsm_session_get(engine, &s.session_id, &now);
        if (ust != AFSM_OK) {
            CHECK(gst == AFSM_OK && now.state == s.state && now.metadata_bytes == s.metadata_bytes);
        } else if (after.state == AFSM_STATE_CLOSED) {
            CHECK(gst == AFSM_ENOTFOUND);
        }
    }
    for (size_t i = 0; i < 2 * kv_count; i++)
        free(owned[i]);
    free(owned);
    free(kvs);
    free(user);
    free(ip);
    return 0;
}
