/*
 * token.h: sealing and opening session tokens (libsodium).
 *
 * Text: "v1." + URL-safe base64 (no padding) of
 *   key id (2 bytes, big-endian) | nonce (24) | XChaCha20-Poly1305 ciphertext
 * whose plaintext is
 *   session id (16) | generation (4) | issued at, Unix s (4) | IP family (1) | IP (0, 4 or 16)
 * and whose associated data is "v1" and the key id, so a token cannot be
 * moved to another key id. 93, 98 or 114 characters: under the 120 allowed.
 *
 * Pure functions: no engine state. Opening is constant-time in the
 * ciphertext (libsodium's verification); parsing only looks at lengths and
 * the alphabet, which say nothing about the secret.
 */
#ifndef AFSM_UTIL_TOKEN_H
#define AFSM_UTIL_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "afsm.h"

#define TOKEN_NONCE_BYTES 24
#define TOKEN_TAG_BYTES   16
#define TOKEN_BIN_MAX     (2 + TOKEN_NONCE_BYTES + 41 + TOKEN_TAG_BYTES)

typedef struct token_claims {
    afsm_uuid session_id;
    uint32_t generation;
    uint32_t issued_at_s;
    afsm_ip bound_ip; /* family 0: not bound */
} token_claims;

/* A token whose format checked out, not yet authenticated. */
typedef struct token_sealed {
    uint16_t key_id;
    size_t bin_len;
    unsigned char bin[TOKEN_BIN_MAX];
} token_sealed;

/* Makes libsodium ready (idempotent, thread-safe). AFSM_EINTERNAL if not. */
afsm_status token_init(void);

/* Writes the token and a NUL into out[AFSM_TOKEN_SIZE]; *len its length.
 * AFSM_EINTERNAL only if the OS gives no randomness for the nonce. */
afsm_status token_seal(const uint8_t key[AFSM_KEY_BYTES], uint16_t key_id, const token_claims *claims,
                       char out[AFSM_TOKEN_SIZE], size_t *len);

/* Checks prefix, length and alphabet. AFSM_ETOKENFORMAT otherwise. */
afsm_status token_parse(const char *text, size_t len, token_sealed *out);

/* Authenticates and decrypts. AFSM_ETOKEN when the key did not seal it or
 * any byte was changed. */
afsm_status token_open(const uint8_t key[AFSM_KEY_BYTES], const token_sealed *sealed, token_claims *out);

#endif
