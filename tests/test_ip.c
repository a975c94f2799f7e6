/*
 * test_ip.c: IP address parsing and formatting.
 *
 * Every parse goes through a heap copy of exactly text_len bytes with no NUL,
 * so an ASan build catches any read past the caller's length.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/ip.h"

static afsm_status parse_exact(const char *text, size_t len, afsm_ip *out)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, text, len);
    afsm_status status = afsm_ip_parse(copy, len, out);
    free(copy);
    return status;
}

static afsm_status parse(const char *text, afsm_ip *out)
{
    return parse_exact(text, strlen(text), out);
}

/* Parses text, checks the family and the canonical text, and that the
 * canonical text parses back to the same struct. */
static void check_round_trip(const char *text, int family, const char *canonical)
{
    afsm_ip ip, again;
    char out[AFSM_IP_STRING_SIZE];
    memset(&ip, 0xee, sizeof ip);
    if (parse(text, &ip) != AFSM_OK)
        fail_msg("parse failed: \"%s\"", text);
    assert_int_equal(ip.family, family);
    if (family == 4) {
        for (size_t i = 4; i < sizeof ip.bytes; i++)
            assert_int_equal(ip.bytes[i], 0);
    }
    assert_int_equal(afsm_ip_format(&ip, out), AFSM_OK);
    if (strcmp(out, canonical) != 0)
        fail_msg("\"%s\" formatted as \"%s\", want \"%s\"", text, out, canonical);
    assert_int_equal(parse(out, &again), AFSM_OK);
    assert_memory_equal(&ip, &again, sizeof ip);
}

static void test_v4_valid(void **state)
{
    (void)state;
    check_round_trip("0.0.0.0", 4, "0.0.0.0");
    check_round_trip("255.255.255.255", 4, "255.255.255.255");
    check_round_trip("1.2.3.4", 4, "1.2.3.4");
    check_round_trip("10.0.0.1", 4, "10.0.0.1");
    check_round_trip("192.168.100.200", 4, "192.168.100.200");

    afsm_ip ip;
    assert_int_equal(parse("192.0.2.33", &ip), AFSM_OK);
    const uint8_t want[17] = {4, 192, 0, 2, 33};
    assert_memory_equal(&ip, want, sizeof ip);

    /* Every octet value round-trips in every position. */
    for (unsigned v = 0; v < 256; v++) {
        char text[AFSM_IP_STRING_SIZE], out[AFSM_IP_STRING_SIZE];
        snprintf(text, sizeof text, "%u.%u.%u.%u", v, 255 - v, v, v / 2);
        assert_int_equal(parse(text, &ip), AFSM_OK);
        assert_int_equal(ip.bytes[0], v);
        assert_int_equal(ip.bytes[1], 255 - v);
        assert_int_equal(ip.bytes[3], v / 2);
        assert_int_equal(afsm_ip_format(&ip, out), AFSM_OK);
        assert_string_equal(out, text);
    }
}

static void test_v6_valid(void **state)
{
    (void)state;
    check_round_trip("::", 6, "::");
    check_round_trip("::1", 6, "::1");
    check_round_trip("1::", 6, "1::");
    check_round_trip("2001:DB8::1", 6, "2001:db8::1");
    check_round_trip("2001:0db8:0000:0000:0000:0000:0000:0001", 6, "2001:db8::1");
    check_round_trip("0:0:0:0:0:0:0:0", 6, "::");
    /* RFC 5952 4.2.3: on a tie the first run is compressed. */
    check_round_trip("2001:db8:0:0:1:0:0:1", 6, "2001:db8::1:0:0:1");
    /* 4.2.3: the longest run wins. */
    check_round_trip("2001:0:0:1:0:0:0:1", 6, "2001:0:0:1::1");
    /* 4.2.2: a single zero group is not compressed. */
    check_round_trip("2001:db8:0:1:1:1:1:1", 6, "2001:db8:0:1:1:1:1:1");
    check_round_trip("1:2:3:4:5:6:7::", 6, "1:2:3:4:5:6:7:0");
    check_round_trip("::2:3:4:5:6:7:8", 6, "0:2:3:4:5:6:7:8");
    check_round_trip("fe80::1:2", 6, "fe80::1:2");
    check_round_trip("FE80:0:0:0:0:0:0:ABCD", 6, "fe80::abcd");
    check_round_trip("1:0:0:2::3", 6, "1:0:0:2::3");
    /* Embedded dotted-quad tails. */
    check_round_trip("::1.2.3.4", 6, "::102:304");
    check_round_trip("64:ff9b::192.0.2.33", 6, "64:ff9b::c000:221");
    check_round_trip("1:2:3:4:5:6:1.2.3.4", 6, "1:2:3:4:5:6:102:304");
    check_round_trip("1::5:6:1.2.3.4", 6, "1::5:6:102:304");
    /* The longest valid text: exactly 45 bytes. */
    const char longest[] = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    assert_int_equal(strlen(longest), 45);
    check_round_trip(longest, 6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");

    afsm_ip ip;
    assert_int_equal(parse("2001:db8::ff00:42:8329", &ip), AFSM_OK);
    const uint8_t want[17] = {6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0xff, 0x00, 0x00, 0x42, 0x83, 0x29};
    assert_memory_equal(&ip, want, sizeof ip);
}

static void test_v4_mapped_normalised(void **state)
{
    (void)state;
    check_round_trip("::ffff:1.2.3.4", 4, "1.2.3.4");
    check_round_trip("::FFFF:0102:0304", 4, "1.2.3.4");
    check_round_trip("0:0:0:0:0:ffff:10.0.0.1", 4, "10.0.0.1");
    /* Equal addresses are equal structs. */
    afsm_ip a, b;
    assert_int_equal(parse("::ffff:10.0.0.1", &a), AFSM_OK);
    assert_int_equal(parse("10.0.0.1", &b), AFSM_OK);
    assert_memory_equal(&a, &b, sizeof a);
    assert_true(ip_equal(&a, &b));
    /* Not mapped: v4-translated and other prefixes stay v6. */
    check_round_trip("::ffff:0:1.2.3.4", 6, "::ffff:0:102:304");
    check_round_trip("ffff::1.2.3.4", 6, "ffff::102:304");
    check_round_trip("::fffe:1.2.3.4", 6, "::fffe:102:304");
}

static void test_equal_structs(void **state)
{
    (void)state;
    afsm_ip a, b, c;
    assert_int_equal(parse("2001:db8::1", &a), AFSM_OK);
    assert_int_equal(parse("2001:0DB8:0:0::0:1", &b), AFSM_OK);
    assert_int_equal(parse("2001:db8::2", &c), AFSM_OK);
    assert_memory_equal(&a, &b, sizeof a);
    assert_true(ip_equal(&a, &b));
    assert_false(ip_equal(&a, &c));
    /* Same bytes, different family: not equal. */
    afsm_ip v4 = {.family = 4}, v6 = {.family = 6};
    assert_false(ip_equal(&v4, &v6));
}

static void check_rejected(const char *text, size_t len)
{
    afsm_ip ip;
    memset(&ip, 0x5a, sizeof ip);
    afsm_status status = parse_exact(text, len, &ip);
    if (status != AFSM_EIP)
        fail_msg("\"%.*s\" (%zu bytes): status %d, want AFSM_EIP", (int)len, text, len, status);
    /* A failed parse leaves the output alone. */
    const uint8_t *raw = (const uint8_t *)&ip;
    for (size_t i = 0; i < sizeof ip; i++)
        assert_int_equal(raw[i], 0x5a);
}

static void test_v4_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "01.2.3.4",   "1.2.3.04",   "00.0.0.0",   "1.02.3.4",  "256.1.1.1",  "1.2.3.256",  "1.2.3",
        "1.2.3.4.5",  "1..2.3",     ".1.2.3",     "1.2.3.",    "1.2.3.4 ",   " 1.2.3.4",   "1.2.3.-4",
        "0x1.2.3.4",  "1.2.3.1000", "1234.1.1.1", "a.b.c.d",   "1.2.3.4:80", "1.2.3.4/24", "1",
        "4294967295", "1.2.3.4.",   "...",        "1.2.3.4\n", "+1.2.3.4",   "1.2.3.4%0",  "1,2,3,4",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        check_rejected(bad[i], strlen(bad[i]));
}

static void test_v6_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        ":",
        ":::",
        "1:::2",
        "1::2::3",
        "::1::",
        ":1::",
        ":1:2:3:4:5:6:7:8",
        "1::2:",
        "1:2:3:4:5:6:7:8:",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7",
        "1:2:3:4:5:6:7:8::",
        "::1:2:3:4:5:6:7:8",
        "1:2:3:4::5:6:7:8",
        "12345::1",
        "02001:db8::1",
        "g::1",
        "fe80::1%eth0",
        "fe80::1%1",
        "[::1]",
        "[::1]:80",
        "::1 ",
        " ::1",
        ":: 1",
        "1:2:3:4:5:6:7:1.2.3.4",
        "1:2:3:4:5:6:1.2.3.4:1",
        "::1.2.3",
        "::01.2.3.4",
        "::1.2.3.4:5",
        "::1.2.3.4::",
        "1.2.3.4::",
        "1.2.3.4::1",
        "::1.2.3.4.5",
        "::256.1.1.1",
        "::ffff:1.2.3.04",
        "::ffff:1.2.3.4.",
        "::a.b.c.d",
        "::1.2.3.4.",
        "::.1.2.3",
        "::ffff:1234.2.3.4",
        "1:2:3:4:5:6:7:8/64",
        "2001:db8::1\t",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        check_rejected(bad[i], strlen(bad[i]));
}

static void test_length_and_bytes_rejects(void **state)
{
    (void)state;
    check_rejected("", 0);
    check_rejected("1.2.3.4", 0);
    /* A NUL inside the given length is a bad character, not an end. */
    check_rejected("1.2.3.4\0", 8);
    check_rejected("::1\0", 4);
    check_rejected("\0", 1);
    /* Longer than 45 bytes, even when made of allowed characters. */
    char big[1000];
    memset(big, '1', sizeof big);
    check_rejected(big, 46);
    check_rejected(big, sizeof big);
    const char padded[] = "0:0:0:0:0:ffff:255.255.255.255.................";
    check_rejected(padded, 46);

    /* The length bounds the parse: a valid prefix parses alone. */
    const char longer[] = "10.0.0.12345";
    afsm_ip ip;
    assert_int_equal(afsm_ip_parse(longer, 8, &ip), AFSM_OK);
    assert_int_equal(ip.family, 4);
    assert_int_equal(ip.bytes[3], 1);
}

static void test_null_arguments(void **state)
{
    (void)state;
    afsm_ip ip = {.family = 4};
    char out[AFSM_IP_STRING_SIZE];
    assert_int_equal(afsm_ip_parse(NULL, 7, &ip), AFSM_ENULL);
    assert_int_equal(afsm_ip_parse("1.2.3.4", 7, NULL), AFSM_ENULL);
    assert_int_equal(afsm_ip_parse(NULL, 0, NULL), AFSM_ENULL);
    assert_int_equal(afsm_ip_format(NULL, out), AFSM_ENULL);
    assert_int_equal(afsm_ip_format(&ip, NULL), AFSM_ENULL);
}

static void test_format_bad_family(void **state)
{
    (void)state;
    char out[AFSM_IP_STRING_SIZE];
    const uint8_t families[] = {0, 1, 5, 7, 46, 255};
    for (size_t i = 0; i < sizeof families; i++) {
        afsm_ip ip = {.family = families[i]};
        assert_int_equal(afsm_ip_format(&ip, out), AFSM_EINVAL);
    }
}

static void test_format_v6_mapped_struct(void **state)
{
    (void)state;
    /* A hand-built family-6 struct holding a mapped address prints with the
     * dotted tail (RFC 5952 section 5). */
    afsm_ip ip = {.family = 6, .bytes = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1}};
    char out[AFSM_IP_STRING_SIZE];
    assert_int_equal(afsm_ip_format(&ip, out), AFSM_OK);
    assert_string_equal(out, "::ffff:192.0.2.1");
}

static void test_format_matches_libc(void **state)
{
    (void)state;
    /* Every pattern of zero and non-zero groups: the compression choice must
     * match glibc's inet_ntop, which follows RFC 5952. glibc prints some
     * v4-compatible forms with a dotted tail; those patterns are skipped. */
    for (unsigned mask = 0; mask < 256; mask++) {
        afsm_ip ip = {.family = 6};
        for (int g = 0; g < 8; g++) {
            unsigned value = (mask >> g & 1) ? (g % 2 ? 0xabcdu : (unsigned)g + 1) : 0;
            ip.bytes[2 * g] = (uint8_t)(value >> 8);
            ip.bytes[2 * g + 1] = (uint8_t)value;
        }
        char ours[AFSM_IP_STRING_SIZE], theirs[INET6_ADDRSTRLEN];
        assert_int_equal(afsm_ip_format(&ip, ours), AFSM_OK);
        assert_non_null(inet_ntop(AF_INET6, ip.bytes, theirs, sizeof theirs));
        if (strchr(theirs, '.') == NULL && strcmp(ours, theirs) != 0)
            fail_msg("mask %02x: ours \"%s\", inet_ntop \"%s\"", mask, ours, theirs);
        afsm_ip back;
        assert_int_equal(parse(ours, &back), AFSM_OK);
        assert_memory_equal(&ip, &back, sizeof ip);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v4_valid),
        cmocka_unit_test(test_v6_valid),
        cmocka_unit_test(test_v4_mapped_normalised),
        cmocka_unit_test(test_equal_structs),
        cmocka_unit_test(test_v4_rejects),
        cmocka_unit_test(test_v6_rejects),
        cmocka_unit_test(test_length_and_bytes_rejects),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_format_bad_family),
        cmocka_unit_test(test_format_v6_mapped_struct),
        cmocka_unit_test(test_format_matches_libc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
