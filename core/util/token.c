/*
 * token.c: the token format of token.h on libsodium's XChaCha20-Poly1305
 * (a random 192-bit nonce per token, so nonces never need coordinating).
 */
#include "util/token.h"

#include <sodium.h>
#include <string.h>

#include "util/random.h"

#define PREFIX     "v1."
#define PREFIX_LEN 3
#define PLAIN_BASE (16 + 4 + 4 + 1)

afsm_status token_init(void)
{
    return sodium_init() >= 0 ? AFSM_OK : AFSM_EINTERNAL;
}

static size_t ip_bytes(uint8_t family)
{
    return family == 4 ? 4 : family == 6 ? 16 : 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void make_ad(unsigned char ad[4], uint16_t key_id)
{
    ad[0] = 'v';
    ad[1] = '1';
    ad[2] = (unsigned char)(key_id >> 8);
    ad[3] = (unsigned char)key_id;
}

afsm_status token_seal(const uint8_t key[AFSM_KEY_BYTES], uint16_t key_id, const token_claims *claims,
                       char out[AFSM_TOKEN_SIZE], size_t *len)
{
    unsigned char plain[PLAIN_BASE + 16];
    memcpy(plain, claims->session_id.bytes, 16);
    put32(plain + 16, claims->generation);
    put32(plain + 20, claims->issued_at_s);
    plain[24] = claims->bound_ip.family;
    size_t plain_len = PLAIN_BASE + ip_bytes(claims->bound_ip.family);
    memcpy(plain + PLAIN_BASE, claims->bound_ip.bytes, ip_bytes(claims->bound_ip.family));

    unsigned char bin[TOKEN_BIN_MAX];
    bin[0] = (unsigned char)(key_id >> 8);
    bin[1] = (unsigned char)key_id;
    if (!random_fill(bin + 2, TOKEN_NONCE_BYTES)) {
        sodium_memzero(plain, sizeof(plain));
        return AFSM_EINTERNAL; /* a nonce must never be guessable or repeated */
    }
    unsigned char ad[4];
    make_ad(ad, key_id);
    unsigned long long sealed_len = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(bin + 2 + TOKEN_NONCE_BYTES, &sealed_len, plain, plain_len, ad,
                                               sizeof(ad), NULL, bin + 2, key);
    size_t bin_len = 2 + TOKEN_NONCE_BYTES + (size_t)sealed_len;
    memcpy(out, PREFIX, PREFIX_LEN);
    sodium_bin2base64(out + PREFIX_LEN, AFSM_TOKEN_SIZE - PREFIX_LEN, bin, bin_len,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    *len = strlen(out);
    sodium_memzero(plain, sizeof(plain));
    return AFSM_OK;
}

afsm_status token_parse(const char *text, size_t len, token_sealed *out)
{
    if (len < PREFIX_LEN || len >= AFSM_TOKEN_SIZE || memcmp(text, PREFIX, PREFIX_LEN) != 0)
        return AFSM_ETOKENFORMAT;
    size_t bin_len = 0;
    const char *end = NULL;
    if (sodium_base642bin(out->bin, sizeof(out->bin), text + PREFIX_LEN, len - PREFIX_LEN, NULL, &bin_len, &end,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        end != text + len)
        return AFSM_ETOKENFORMAT;
    size_t overhead = 2 + TOKEN_NONCE_BYTES + TOKEN_TAG_BYTES;
    size_t plain = bin_len - overhead;
    if (bin_len < overhead || (plain != PLAIN_BASE && plain != PLAIN_BASE + 4 && plain != PLAIN_BASE + 16))
        return AFSM_ETOKENFORMAT;
    out->bin_len = bin_len;
    out->key_id = (uint16_t)(out->bin[0] << 8 | out->bin[1]);
    return AFSM_OK;
}

afsm_status token_open(const uint8_t key[AFSM_KEY_BYTES], const token_sealed *sealed, token_claims *out)
{
    unsigned char plain[PLAIN_BASE + 16];
    unsigned long long plain_len = 0;
    unsigned char ad[4];
    make_ad(ad, sealed->key_id);
    const unsigned char *nonce = sealed->bin + 2;
    const unsigned char *cipher = nonce + TOKEN_NONCE_BYTES;
    size_t cipher_len = sealed->bin_len - 2 - TOKEN_NONCE_BYTES;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(plain, &plain_len, NULL, cipher, cipher_len, ad, sizeof(ad), nonce,
                                                   key) != 0)
        return AFSM_ETOKEN;
    memset(out, 0, sizeof(*out));
    memcpy(out->session_id.bytes, plain, 16);
    out->generation = get32(plain + 16);
    out->issued_at_s = get32(plain + 20);
    uint8_t family = plain[24];
    /* Authentic, so we wrote it: but a family that disagrees with the
     * length would be a bug, not a reason to read past the plaintext. */
    if (PLAIN_BASE + ip_bytes(family) != plain_len || (family != 0 && family != 4 && family != 6))
        return AFSM_ETOKEN;
    out->bound_ip.family = family;
    memcpy(out->bound_ip.bytes, plain + PLAIN_BASE, ip_bytes(family));
    sodium_memzero(plain, sizeof(plain));
    return AFSM_OK;
}
