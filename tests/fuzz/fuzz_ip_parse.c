/*
 * fuzz_ip_parse.c: libFuzzer target for afsm_ip_parse / afsm_ip_format.
 *
 * Properties checked on every input (a failure traps, so libFuzzer keeps it):
 * - the parser reads only text[0..size): it gets a heap copy of exactly size
 *   bytes with no NUL after it, so ASan flags any read beyond;
 * - it agrees with glibc's inet_pton (which also rejects leading zeros in v4
 *   octets) on what is an address and on its bytes, after v4-mapped
 *   normalisation; a failure leaves the output untouched;
 * - a parsed struct is normalised: family 4 has bytes[4..15] zero, family 6
 *   is never v4-mapped;
 * - format output is canonical: lowercase, at most 45 bytes, inet_pton reads
 *   it back to the same bytes, it equals glibc's RFC 5952 inet_ntop text
 *   (where glibc does not choose a dotted tail), and parse -> format ->
 *   parse -> format is a fixed point;
 * - any 16 bytes of family 4 or 6 format to text that parses back to the
 *   normalised struct.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "afsm.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            __builtin_trap();                                                                                          \
    } while (0)

static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* What the parser should produce, by glibc's inet_pton. */
static int oracle_parse(const uint8_t *data, size_t size, afsm_ip *out)
{
    char text[64];
    if (size == 0 || size > 45 || memchr(data, '\0', size) != NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, text, out->bytes) == 1) {
        out->family = 4;
        return 1;
    }
    if (inet_pton(AF_INET6, text, out->bytes) == 1) {
        out->family = 6;
        if (memcmp(out->bytes, mapped_prefix, sizeof mapped_prefix) == 0) {
            memmove(out->bytes, out->bytes + 12, 4);
            memset(out->bytes + 4, 0, 12);
            out->family = 4;
        }
        return 1;
    }
    return 0;
}

static void check_normalised(const afsm_ip *ip)
{
    CHECK(ip->family == 4 || ip->family == 6);
    if (ip->family == 4) {
        for (size_t i = 4; i < sizeof ip->bytes; i++)
            CHECK(ip->bytes[i] == 0);
    } else {
        CHECK(memcmp(ip->bytes, mapped_prefix, sizeof mapped_prefix) != 0);
    }
}

/* Formats ip, checks the text is canonical, and that it parses back to ip. */
static void check_format(const afsm_ip *ip)
{
    char text[AFSM_IP_STRING_SIZE];
    memset(text, 'X', sizeof text);
    CHECK(afsm_ip_format(ip, text) == AFSM_OK);
    size_t len = strnlen(text, sizeof text);
    CHECK(len > 0 && len <= 45);
    for (size_t i = 0; i < len; i++)
        CHECK(strchr("0123456789abcdef:.", text[i]) != NULL);

    uint8_t bytes[16] = {0};
    if (ip->family == 4) {
        CHECK(inet_pton(AF_INET, text, bytes) == 1);
        CHECK(memcmp(bytes, ip->bytes, 4) == 0);
    } else {
        CHECK(inet_pton(AF_INET6, text, bytes) == 1);
        CHECK(memcmp(bytes, ip->bytes, 16) == 0);
        char libc[INET6_ADDRSTRLEN];
        CHECK(inet_ntop(AF_INET6, ip->bytes, libc, sizeof libc) != NULL);
        if (strchr(libc, '.') == NULL)
            CHECK(strcmp(text, libc) == 0);
    }

    afsm_ip again;
    CHECK(afsm_ip_parse(text, len, &again) == AFSM_OK);
    CHECK(memcmp(&again, ip, sizeof again) == 0);
    char text2[AFSM_IP_STRING_SIZE];
    CHECK(afsm_ip_format(&again, text2) == AFSM_OK);
    CHECK(strcmp(text, text2) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);

    afsm_ip ip;
    memset(&ip, 0xa5, sizeof ip);
    afsm_status status = afsm_ip_parse(copy, size, &ip);
    free(copy);
    CHECK(status == AFSM_OK || status == AFSM_EIP);

    afsm_ip expected;
    int oracle_ok = oracle_parse(data, size, &expected);
    CHECK((status == AFSM_OK) == oracle_ok);
    if (status == AFSM_OK) {
        CHECK(memcmp(&ip, &expected, sizeof ip) == 0);
        check_normalised(&ip);
        check_format(&ip);
    } else {
        const uint8_t *raw = (const uint8_t *)&ip;
        for (size_t i = 0; i < sizeof ip; i++)
            CHECK(raw[i] == 0xa5);
    }

    /* Binary -> text -> binary for the input's first 17 bytes. */
    if (size >= 17) {
        afsm_ip in = {.family = (data[0] & 1) ? 4 : 6};
        memcpy(in.bytes, data + 1, 16);
        if (in.family == 4) {
            memset(in.bytes + 4, 0, 12);
        } else if (memcmp(in.bytes, mapped_prefix, sizeof mapped_prefix) == 0) {
            memmove(in.bytes, in.bytes + 12, 4);
            memset(in.bytes + 4, 0, 12);
            in.family = 4;
        }
        check_format(&in);
    }
    return 0;
}
