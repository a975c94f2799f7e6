/*
 * tokens.c: afsm_token_* and afsm_key_*: what a client presents to prove
 * it owns a session, and the keys that seal it (util/token.h has the
 * format, keyring.h the ring).
 *
 * Validation order: format, key, authenticity, then the session (exists,
 * not expired, not closed), the generation (rotation revokes), the bound
 * IP. Every failure has its own status and its own counter. The key ring
 * is read inside an epoch section, lock-free.
 */
#include <sodium.h>
#include <string.h>

#include "engine.h"
#include "util/clock.h"
#include "util/epoch.h"
#include "util/ip.h"
#include "util/token.h"
#include "util/errdetail.h"

/* ---- counting ------------------------------------------------------------ */

/* Not an outcome: the token was never judged (AFSM_ENOMEM, AFSM_EUNAVAILABLE, ...). */
#define NOT_JUDGED AFSM_TOKEN_RESULT_COUNT

static unsigned result_of(afsm_status status)
{
    switch (status) {
    case AFSM_OK:
        return AFSM_TOKEN_OK;
    case AFSM_ETOKEN:
        return AFSM_TOKEN_FORGED;
    case AFSM_ETOKENKEY:
        return AFSM_TOKEN_UNKNOWN_KEY;
    case AFSM_EKEYREMOVED:
        return AFSM_TOKEN_REMOVED_KEY;
    case AFSM_ENOTFOUND:
        return AFSM_TOKEN_NOT_FOUND;
    case AFSM_EEXPIRED:
        return AFSM_TOKEN_EXPIRED;
    case AFSM_ECLOSED:
        return AFSM_TOKEN_CLOSED;
    case AFSM_EREVOKED:
        return AFSM_TOKEN_REVOKED;
    case AFSM_EIPMISMATCH:
        return AFSM_TOKEN_IP_MISMATCH;
    case AFSM_ETOKENFORMAT:
        return AFSM_TOKEN_MALFORMED;
    default:
        return NOT_JUDGED;
    }
}

static unsigned thread_stripe(void)
{
    /* Assigned once per thread, round robin: threads spread over stripes. */
    static _Atomic unsigned next_stripe;
    static _Thread_local unsigned stripe_plus_one;
    if (stripe_plus_one == 0)
        stripe_plus_one = atomic_fetch_add_explicit(&next_stripe, 1, memory_order_relaxed) % TOKEN_STRIPES + 1;
    return stripe_plus_one - 1;
}

/* A failure of the engine (out of memory, etcd unreachable) says nothing
 * of the token: counted as an outcome it would raise an alarm on forged or
 * malformed tokens that no client sent. */
static afsm_status counted(afsm_engine *engine, afsm_status status)
{
    unsigned result = result_of(status);
    if (!engine->config.disable_metrics && result != NOT_JUDGED)
        atomic_fetch_add_explicit(&engine->token_counts[thread_stripe()].results[result], 1, memory_order_relaxed);
    return status;
}

/* ---- issue, rotate, validate ---------------------------------------------- */

static afsm_status check_token_args(afsm_engine *engine, const afsm_uuid *id, uint32_t flags, const char *token,
                                    size_t token_size)
{
    if (engine == NULL || id == NULL || token == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : id == NULL ? "session_id" : "token");
    if ((flags & ~AFSM_TOKEN_BIND_IP) != 0)
        return errdetail_set(AFSM_EINVAL, "flags: 0x%x, only AFSM_TOKEN_BIND_IP (0x%x) is defined", flags,
                             AFSM_TOKEN_BIND_IP);
    if (token_size < AFSM_TOKEN_SIZE)
        return errdetail_set(AFSM_EBUFFER, "token_size: %zu, must be at least %d (AFSM_TOKEN_SIZE)", token_size,
                             AFSM_TOKEN_SIZE);
    return AFSM_OK;
}

/* Seals a token for the session copy under the current key. */
static afsm_status seal(afsm_engine *engine, const afsm_session_info *s, uint32_t flags, char *token, size_t *token_len)
{
    token_claims claims = {
        .session_id = s->session_id,
        .generation = s->token_generation,
        .issued_at_s = (uint32_t)(clock_wall_ns() / 1000000000),
    };
    if (flags & AFSM_TOKEN_BIND_IP)
        claims.bound_ip = s->client_ip;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    uint16_t key_id;
    const uint8_t *key;
    afsm_status status = keyring_current(engine->keys, &key_id, &key);
    size_t len = 0;
    if (status == AFSM_OK)
        status = token_seal(key, key_id, &claims, token, &len);
    epoch_leave(e);
    if (status == AFSM_ENOTFOUND)
        return AFSM_ETOKENKEY; /* impossible: the current key cannot be removed */
    if (token_len != NULL)
        *token_len = len;
    return status;
}

AFSM_API afsm_status afsm_token_issue(afsm_engine *engine, const afsm_uuid *session_id, uint32_t flags, char *token,
                                      size_t token_size, size_t *token_len)
{
    errdetail_clear();
    afsm_status status = check_token_args(engine, session_id, flags, token, token_size);
    if (status != AFSM_OK)
        return status;
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    status = engine->st->ops->get(engine->st, session_id, &s);
    if (status == AFSM_OK && s.state == AFSM_STATE_CLOSED)
        status = AFSM_ECLOSED;
    if (status != AFSM_OK)
        return status;
    return seal(engine, &s, flags, token, token_len);
}

AFSM_API afsm_status afsm_token_rotate(afsm_engine *engine, const afsm_uuid *session_id, uint32_t flags, char *token,
                                       size_t token_size, size_t *token_len)
{
    errdetail_clear();
    afsm_status status = check_token_args(engine, session_id, flags, token, token_size);
    if (status != AFSM_OK)
        return status;
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    status = engine->st->ops->rotate_generation(engine->st, session_id, &s);
    if (status != AFSM_OK)
        return status;
    return seal(engine, &s, flags, token, token_len);
}

/* Opens the token: format, key, authenticity. */
static afsm_status open_token(afsm_engine *engine, const char *text, size_t len, token_claims *claims)
{
    token_sealed sealed;
    afsm_status status = token_parse(text, len, &sealed);
    if (status != AFSM_OK)
        return status;
    ck_epoch_record_t *e = epoch_enter();
    if (e == NULL)
        return AFSM_ENOMEM;
    const uint8_t *key;
    status = keyring_find(engine->keys, sealed.key_id, &key);
    if (status == AFSM_OK)
        status = token_open(key, &sealed, claims);
    epoch_leave(e);
    return status;
}

AFSM_API afsm_status afsm_token_validate(afsm_engine *engine, const char *token, size_t token_len,
                                         const char *client_ip, size_t client_ip_len, afsm_session_info *out)
{
    errdetail_clear();
    if (engine == NULL || token == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", engine == NULL ? "engine" : "token");
    if (out != NULL && check_info(out) != AFSM_OK)
        return AFSM_EVERSION;
    afsm_ip presented = {0};
    if (client_ip != NULL) {
        afsm_status parsed = afsm_ip_parse(client_ip, client_ip_len, &presented);
        if (parsed != AFSM_OK) {
            char quoted[ERRDETAIL_QUOTE_SIZE];
            return errdetail_set(parsed, "client_ip: \"%s\", must be an IPv4 or IPv6 address (or NULL: none)",
                                 errdetail_quote(client_ip, client_ip_len, quoted));
        }
    }
    token_claims claims;
    afsm_status status = open_token(engine, token, token_len, &claims);
    if (status != AFSM_OK)
        return counted(engine, status);
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    status = engine->st->ops->get(engine->st, &claims.session_id, &s);
    if (status == AFSM_OK && s.state == AFSM_STATE_CLOSED)
        status = AFSM_ECLOSED;
    if (status == AFSM_OK && s.token_generation != claims.generation)
        status = AFSM_EREVOKED;
    if (status == AFSM_OK && claims.bound_ip.family != 0 &&
        (client_ip == NULL || !ip_equal(&claims.bound_ip, &presented)))
        status = AFSM_EIPMISMATCH;
    if (status == AFSM_OK && out != NULL)
        *out = s;
    return counted(engine, status);
}

/* ---- the key ring ---------------------------------------------------------- */

static afsm_status check_key_id(afsm_engine *engine, uint32_t key_id)
{
    if (engine == NULL)
        return errdetail_set(AFSM_ENULL, "engine: NULL");
    if (key_id == 0 || key_id > AFSM_KEY_ID_MAX)
        return errdetail_set(AFSM_EINVAL, "key_id: %u, must be 1..%d", key_id, AFSM_KEY_ID_MAX);
    return AFSM_OK;
}

AFSM_API afsm_status afsm_key_add(afsm_engine *engine, uint32_t key_id, const uint8_t *key, size_t key_len)
{
    errdetail_clear();
    afsm_status status = check_key_id(engine, key_id);
    if (status != AFSM_OK)
        return status;
    if (key == NULL)
        return errdetail_set(AFSM_ENULL, "key: NULL");
    if (key_len != AFSM_KEY_BYTES)
        return errdetail_set(AFSM_EINVAL, "key: %zu bytes, must be %d", key_len, AFSM_KEY_BYTES);
    return keyring_add(engine->keys, key_id, key);
}

AFSM_API afsm_status afsm_key_add_file(afsm_engine *engine, uint32_t key_id, const char *path, size_t path_len)
{
    errdetail_clear();
    afsm_status status = check_key_id(engine, key_id);
    if (status != AFSM_OK)
        return status;
    if (path == NULL)
        return errdetail_set(AFSM_ENULL, "path: NULL");
    uint8_t key[AFSM_KEY_BYTES];
    status = keyring_read_file(path, path_len, key);
    if (status == AFSM_OK)
        status = keyring_add(engine->keys, key_id, key);
    sodium_memzero(key, sizeof(key));
    return status;
}

AFSM_API afsm_status afsm_key_use(afsm_engine *engine, uint32_t key_id)
{
    errdetail_clear();
    if (engine == NULL)
        return errdetail_set(AFSM_ENULL, "engine: NULL");
    if (key_id > AFSM_KEY_ID_MAX)
        return errdetail_set(AFSM_EINVAL, "key_id: %u, must be 0..%d", key_id, AFSM_KEY_ID_MAX);
    return keyring_use(engine->keys, key_id);
}

AFSM_API afsm_status afsm_key_remove(afsm_engine *engine, uint32_t key_id)
{
    errdetail_clear();
    if (engine == NULL)
        return errdetail_set(AFSM_ENULL, "engine: NULL");
    if (key_id > AFSM_KEY_ID_MAX)
        return errdetail_set(AFSM_EINVAL, "key_id: %u, must be 0..%d", key_id, AFSM_KEY_ID_MAX);
    return keyring_remove(engine->keys, key_id);
}
