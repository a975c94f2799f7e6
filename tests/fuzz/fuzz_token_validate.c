/*
 * fuzz_token_validate.c: libFuzzer target for token parsing and checking.
 *
 * One engine with a fixed key and one session; the fuzzer's bytes are
 * presented as a token (and, from a split point, as the client IP).
 * Properties checked on every input (a failure traps):
 * - validation reads only token[0..size) (heap copy of exactly that size);
 * - the result is one of the documented statuses;
 * - only a token the engine issued can succeed, and then it names the
 *   engine's session;
 * - the engine is unchanged: the session and its count are still there.
 * The seed corpus holds real tokens, so mutations reach the crypto path.
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

static afsm_engine *engine;
static afsm_uuid session_id;

static void setup(void)
{
    static const uint8_t key[AFSM_KEY_BYTES] = "fuzzing-key-fuzzing-key-fuzzing";
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.key = key;
    cfg.key_len = sizeof(key);
    cfg.key_id = 1;
    CHECK(afsm_engine_open(&cfg, &engine) == AFSM_OK);
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = "fuzz";
    o.user_id_len = 4;
    o.client_ip = "10.1.2.3";
    o.client_ip_len = 8;
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    CHECK(afsm_session_create(engine, &o, &s) == AFSM_OK);
    session_id = s.session_id;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (engine == NULL)
        setup();
    /* Split: the first byte says where the IP starts, if anywhere. */
    size_t split = size > 0 ? data[0] : 0;
    const uint8_t *body = size > 0 ? data + 1 : data;
    size_t body_size = size > 0 ? size - 1 : 0;
    size_t token_size = split < body_size ? split : body_size;
    char *token = malloc(token_size ? token_size : 1);
    char *ip = malloc(body_size - token_size ? body_size - token_size : 1);
    CHECK(token != NULL && ip != NULL);
    memcpy(token, body, token_size);
    memcpy(ip, body + token_size, body_size - token_size);
    int with_ip = split < body_size;

    afsm_session_info out = AFSM_SESSION_INFO_INIT;
    afsm_status st =
        afsm_token_validate(engine, token, token_size, with_ip ? ip : NULL, with_ip ? body_size - token_size : 0, &out);
    CHECK(st == AFSM_OK || st == AFSM_ETOKENFORMAT || st == AFSM_ETOKEN || st == AFSM_ETOKENKEY ||
          st == AFSM_EKEYREMOVED || st == AFSM_ENOTFOUND || st == AFSM_EEXPIRED || st == AFSM_ECLOSED ||
          st == AFSM_EREVOKED || st == AFSM_EIPMISMATCH || st == AFSM_EIP);
    if (st == AFSM_OK)
        CHECK(memcmp(&out.session_id, &session_id, sizeof(session_id)) == 0);

    afsm_counts counts;
    CHECK(afsm_engine_counts(engine, &counts) == AFSM_OK && counts.total == 1);
    free(token);
    free(ip);
    return 0;
}
