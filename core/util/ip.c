/*
 * ip.c: IP address text <-> binary (afsm_ip).
 *
 * Invariants of a parsed afsm_ip, so that equal addresses are equal structs
 * under memcmp (the indexes and token IP binding compare them that way):
 * - family is 4 or 6;
 * - a v4 address sits in bytes[0..3] and bytes[4..15] are zero;
 * - a v4-mapped v6 address (::ffff:a.b.c.d) is stored as the v4 address, so
 *   a dual-stack socket and a v4 socket report the same client.
 *
 * The parsers are our own rather than inet_pton so the accepted language is
 * the same on every libc: v4 is exactly four decimal octets without leading
 * zeros (some parsers read "010" as octal, so two readers could disagree on
 * one string), v6 is RFC 4291 text with at most one "::" and an optional
 * dotted-quad tail. Zones, brackets, ports, whitespace and anything longer
 * than the longest valid form (45 bytes) are rejected before parsing.
 * The formatter writes RFC 5952 text, again independent of the libc.
 * No shared state; every function is thread-safe.
 */
#include "util/ip.h"
#include "util/errdetail.h"

#include <stdio.h>
#include <string.h>

/* "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" */
#define IP_TEXT_MAX 45

bool ip_equal(const afsm_ip *a, const afsm_ip *b)
{
    return a->family == b->family && memcmp(a->bytes, b->bytes, sizeof a->bytes) == 0;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hex_value(char c)
{
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses text[0..len) as exactly a dotted quad into out[0..4). */
static bool parse_v4(const char *text, size_t len, uint8_t out[4])
{
    size_t pos = 0;
    for (int octet = 0; octet < 4; octet++) {
        if (octet > 0) {
            if (pos >= len || text[pos] != '.')
                return false;
            pos++;
        }
        size_t start = pos;
        unsigned value = 0;
        while (pos < len && is_digit(text[pos]) && pos - start < 3) {
            value = value * 10 + (unsigned)(text[pos] - '0');
            pos++;
        }
        size_t digits = pos - start;
        if (digits == 0 || value > 255 || (digits > 1 && text[start] == '0'))
            return false;
        out[octet] = (uint8_t)value;
    }
    return pos == len;
}

/* Parses text[0..len) as RFC 4291 text into out[0..16). */
static bool parse_v6(const char *text, size_t len, uint8_t out[16])
{
    uint16_t groups[8];
    int count = 0;
    int gap = -1; /* index in groups where "::" stands, if any */
    size_t pos = 0;

    if (len >= 2 && text[0] == ':' && text[1] == ':') {
        gap = 0;
        pos = 2;
        if (pos == len)
            goto done;
    } else if (len >= 1 && text[0] == ':') {
        return false;
    }

    for (;;) {
        size_t start = pos;
        unsigned value = 0;
        while (pos < len && hex_value(text[pos]) >= 0 && pos - start < 5) {
            value = value << 4 | (unsigned)hex_value(text[pos]);
            pos++;
        }
        if (pos < len && text[pos] == '.') {
            /* A dotted-quad tail: it fills the last two groups and must end
             * the text. The digits read as hex so far are re-read as decimal. */
            uint8_t v4[4];
            if (count > 6 || !parse_v4(text + start, len - start, v4))
                return false;
            groups[count++] = (uint16_t)(v4[0] << 8 | v4[1]);
            groups[count++] = (uint16_t)(v4[2] << 8 | v4[3]);
            break;
        }
        size_t digits = pos - start;
        if (digits == 0 || digits > 4 || count == 8)
            return false;
        groups[count++] = (uint16_t)value;
        if (pos == len)
            break;
        if (text[pos] != ':')
            return false;
        pos++;
        if (pos < len && text[pos] == ':') {
            if (gap >= 0)
                return false;
            gap = count;
            pos++;
            if (pos == len)
                break;
        } else if (pos == len) {
            return false; /* a single trailing colon */
        }
    }

done:
    /* Without "::" all eight groups are spelt out; with it, it stands for at
     * least one zero group. */
    if (gap < 0 ? count != 8 : count > 7)
        return false;
    memset(out, 0, 16);
    int tail = gap < 0 ? 0 : count - gap;
    int head = count - tail;
    for (int i = 0; i < head; i++) {
        out[2 * i] = (uint8_t)(groups[i] >> 8);
        out[2 * i + 1] = (uint8_t)groups[i];
    }
    for (int i = 0; i < tail; i++) {
        int slot = 8 - tail + i;
        out[2 * slot] = (uint8_t)(groups[head + i] >> 8);
        out[2 * slot + 1] = (uint8_t)groups[head + i];
    }
    return true;
}

static bool is_v4_mapped(const uint8_t bytes[16])
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(bytes, prefix, sizeof prefix) == 0;
}

afsm_status ip_parse_text(const char *text, size_t text_len, afsm_ip *out)
{
    if (text_len == 0 || text_len > IP_TEXT_MAX)
        return AFSM_EIP;

    bool has_colon = false;
    for (size_t i = 0; i < text_len; i++) {
        char c = text[i];
        /* Everything else ('%' zones, '[' ']' brackets, spaces, NUL) is refused
         * here, so the parsers only ever see hex digits, dots and colons. */
        if (c == ':')
            has_colon = true;
        else if (c != '.' && hex_value(c) < 0)
            return AFSM_EIP;
    }

    afsm_ip parsed;
    memset(&parsed, 0, sizeof parsed);
    if (!has_colon) {
        if (!parse_v4(text, text_len, parsed.bytes))
            return AFSM_EIP;
        parsed.family = 4;
    } else {
        if (!parse_v6(text, text_len, parsed.bytes))
            return AFSM_EIP;
        parsed.family = 6;
        if (is_v4_mapped(parsed.bytes)) {
            memmove(parsed.bytes, parsed.bytes + 12, 4);
            memset(parsed.bytes + 4, 0, 12);
            parsed.family = 4;
        }
    }
    *out = parsed; /* untouched on failure */
    return AFSM_OK;
}

AFSM_API afsm_status afsm_ip_parse(const char *text, size_t text_len, afsm_ip *out)
{
    errdetail_clear();
    if (text == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", text == NULL ? "text" : "out");
    afsm_status status = ip_parse_text(text, text_len, out);
    if (status != AFSM_OK) {
        char quoted[ERRDETAIL_QUOTE_SIZE];
        return errdetail_set(status, "text: \"%s\" (%zu bytes), must be a dotted-quad IPv4 or RFC 4291 IPv6 address",
                             errdetail_quote(text, text_len, quoted), text_len);
    }
    return AFSM_OK;
}

static size_t format_v4(const uint8_t bytes[4], char *out)
{
    int n = snprintf(out, 16, "%u.%u.%u.%u", bytes[0], bytes[1], bytes[2], bytes[3]);
    return (size_t)n;
}

/* RFC 5952: lowercase, no leading zeros, "::" for the longest run of two or
 * more zero groups (the first such run on a tie), dotted tail for v4-mapped. */
static void format_v6(const uint8_t bytes[16], char *out)
{
    if (is_v4_mapped(bytes)) {
        memcpy(out, "::ffff:", 7);
        format_v4(bytes + 12, out + 7);
        return;
    }
    unsigned groups[8];
    for (int i = 0; i < 8; i++)
        groups[i] = (unsigned)bytes[2 * i] << 8 | bytes[2 * i + 1];

    int best_start = -1, best_len = 0;
    for (int i = 0; i < 8;) {
        if (groups[i] != 0) {
            i++;
            continue;
        }
        int start = i;
        while (i < 8 && groups[i] == 0)
            i++;
        if (i - start > best_len) {
            best_start = start;
            best_len = i - start;
        }
    }
    if (best_len < 2) {
        best_start = -1;
        best_len = 0;
    }

    size_t pos = 0;
    for (int i = 0; i < 8; i++) {
        if (i == best_start) {
            out[pos++] = ':';
            out[pos++] = ':';
            i += best_len - 1;
            continue;
        }
        if (i > 0 && i != best_start + best_len)
            out[pos++] = ':';
        pos += (size_t)snprintf(out + pos, 5, "%x", groups[i]);
    }
    out[pos] = '\0';
}

AFSM_API afsm_status afsm_ip_format(const afsm_ip *ip, char out[AFSM_IP_STRING_SIZE])
{
    errdetail_clear();
    if (ip == NULL || out == NULL)
        return errdetail_set(AFSM_ENULL, "%s: NULL", ip == NULL ? "ip" : "out");
    if (ip->family == 4) {
        format_v4(ip->bytes, out);
        return AFSM_OK;
    }
    if (ip->family == 6) {
        format_v6(ip->bytes, out);
        return AFSM_OK;
    }
    return errdetail_set(AFSM_EINVAL, "ip.family: %u, must be 4 or 6", ip->family);
}
