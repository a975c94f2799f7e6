/*
 * check.c: after the traffic, asks the gateway over its control datagrams
 * (wire.h) whether its sessions counted exactly what was sent:
 *
 *   1. no datagram was lost in the kernel (else no count can match)
 *   2. bye connections: 'B' answers ok with counters equal to what was
 *      sent (packets and bytes, both directions); a later 'Q' finds nothing
 *   3. active connections: 'Q' answers ok with equal counters
 *   4. silent connections: gone within --wait-ms ('Q' finds nothing), and
 *      the gateway saw one EXPIRED event for each (and, holding handles,
 *      dropped one handle for each): 'S' polled with a deadline
 *   5. --close-all: every active connection says bye (counters checked
 *      again), then 'S' must reach sessions=0 and pinned=0: no handle
 *      leaked, whichever worker held it
 *
 * Requests go out in windows of WINDOW from one socket and are matched to
 * answers by connection id. Every wait has a deadline; nothing sleeps.
 */
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "load.h"
#include "wire.h"

#define WINDOW          64
#define ANSWER_WAIT_NS  (2000u * 1000u * 1000u)
#define REPORT_EXAMPLES 5

/* One connection's answer; a check keeps one per connection, so its text
 * is sized for a session's line, not for the summary's. */
typedef struct answer {
    int got;
    char status[32];
    uint64_t packets_received, bytes_received, packets_sent, bytes_sent;
    char text[256];
} answer;

typedef struct summary_answer {
    int got;
    char text[WIRE_ANSWER_MAX + 1];
} summary_answer;

typedef struct checker {
    const load_run *run;
    int fd;
    int failures;
} checker;

/* The number after "key=" at the start of text or after a space;
 * UINT64_MAX when absent (never a real count). */
uint64_t summary_value(const char *text, const char *key)
{
    size_t key_len = strlen(key);
    for (const char *at = text; (at = strstr(at, key)) != NULL; at += key_len)
        if ((at == text || at[-1] == ' ') && at[key_len] == '=')
            return strtoull(at + key_len + 1, NULL, 10);
    return UINT64_MAX;
}

static void parse_answer(answer *a, const uint8_t *buf, size_t len)
{
    size_t n = len - WIRE_HEADER_BYTES < sizeof(a->text) - 1 ? len - WIRE_HEADER_BYTES : sizeof(a->text) - 1;
    memcpy(a->text, buf + WIRE_HEADER_BYTES, n);
    a->text[n] = '\0';
    if (sscanf(a->text, "status=%31s", a->status) != 1)
        a->status[0] = '\0';
    a->packets_received = summary_value(a->text, "packets_received");
    a->bytes_received = summary_value(a->text, "bytes_received");
    a->packets_sent = summary_value(a->text, "packets_sent");
    a->bytes_sent = summary_value(a->text, "bytes_sent");
    a->got = 1;
}

/* Sends op for connections idx[0..n) and fills out[0..n); how many got no
 * answer within the deadline. */
static size_t exchange(checker *c, uint8_t op, const uint64_t *idx, size_t n, answer *out)
{
    size_t unanswered = 0;
    uint8_t buf[WIRE_MAX_BYTES + 1];
    for (size_t base = 0; base < n; base += WINDOW) {
        size_t m = n - base < WINDOW ? n - base : WINDOW;
        for (size_t k = 0; k < m; k++) {
            out[base + k].got = 0;
            wire_header(buf, &c->run->conns[idx[base + k]].id, op);
            if (send(c->fd, buf, WIRE_HEADER_BYTES, 0) != WIRE_HEADER_BYTES)
                perror("udp-load: send");
        }
        size_t got = 0;
        uint64_t deadline = load_now_ns() + ANSWER_WAIT_NS;
        while (got < m && load_now_ns() < deadline) {
            ssize_t len = recv(c->fd, buf, sizeof(buf), 0);
            if (len < WIRE_HEADER_BYTES || buf[WIRE_ID_BYTES] != WIRE_ANSWER(op))
                continue;
            for (size_t k = 0; k < m; k++) {
                answer *a = &out[base + k];
                if (!a->got && memcmp(buf, c->run->conns[idx[base + k]].id.bytes, WIRE_ID_BYTES) == 0) {
                    parse_answer(a, buf, (size_t)len);
                    got++;
                    break;
                }
            }
        }
        unanswered += m - got;
    }
    return unanswered;
}

static void fail(checker *c, const char *what)
{
    fprintf(stderr, "udp-load: check failed: %s\n", what);
    c->failures++;
}

/* Checks that every connection of idx answered `status` and, for "ok",
 * that its counters equal what was sent. */
static void expect(checker *c, const char *step, const uint64_t *idx, size_t n, const answer *answers,
                   const char *status)
{
    size_t bad = 0;
    for (size_t k = 0; k < n; k++) {
        const answer *a = &answers[k];
        const conn_state *s = &c->run->conns[idx[k]];
        int ok = a->got && strcmp(a->status, status) == 0;
        if (ok && strcmp(status, "ok") == 0)
            ok = a->packets_received == s->sent && a->bytes_received == s->sent_bytes && a->packets_sent == s->sent &&
                 a->bytes_sent == s->sent_bytes;
        if (ok)
            continue;
        if (bad++ < REPORT_EXAMPLES)
            fprintf(
                stderr,
                "udp-load: %s: connection %" PRIu64 " sent %" PRIu64 " datagrams, %" PRIu64 " bytes; gateway %s: %s\n",
                step, idx[k], s->sent, s->sent_bytes, a->got ? "answered" : "did not answer", a->got ? a->text : "-");
    }
    if (bad > 0) {
        char what[WIRE_ANSWER_MAX + 128];
        snprintf(what, sizeof(what), "%s: %zu of %zu connections wrong (want status=%s%s)", step, bad, n, status,
                 strcmp(status, "ok") == 0 ? " and counters equal to what was sent" : "");
        fail(c, what);
    } else {
        printf("udp-load: check %s: %zu connections ok\n", step, n);
    }
}

/* Asks for the gateway's summary; 0, or -1 without an answer in time. The
 * id is ignored, but a nil one would be a bad datagram: all ones. */
static int summary(checker *c, summary_answer *a)
{
    uint8_t buf[WIRE_MAX_BYTES + 1], id[WIRE_ID_BYTES];
    memset(id, 0xff, sizeof(id));
    memcpy(buf, id, sizeof(id));
    buf[WIRE_ID_BYTES] = WIRE_OP_SUMMARY;
    a->got = 0;
    if (send(c->fd, buf, WIRE_HEADER_BYTES, 0) != WIRE_HEADER_BYTES)
        return -1;
    uint64_t deadline = load_now_ns() + ANSWER_WAIT_NS;
    while (!a->got && load_now_ns() < deadline) {
        ssize_t len = recv(c->fd, buf, sizeof(buf), 0);
        if (len < WIRE_HEADER_BYTES || buf[WIRE_ID_BYTES] != WIRE_ANSWER(WIRE_OP_SUMMARY) ||
            memcmp(buf, id, sizeof(id)) != 0)
            continue;
        size_t n = (size_t)len - WIRE_HEADER_BYTES;
        memcpy(a->text, buf + WIRE_HEADER_BYTES, n < WIRE_ANSWER_MAX ? n : WIRE_ANSWER_MAX);
        a->text[n < WIRE_ANSWER_MAX ? n : WIRE_ANSWER_MAX] = '\0';
        a->got = 1;
    }
    return a->got ? 0 : -1;
}

/* Polls the summary until done(a) or the deadline; 0 when done. */
static int wait_summary(checker *c, summary_answer *a, int (*done)(const summary_answer *, uint64_t), uint64_t arg)
{
    uint64_t deadline = load_now_ns() + c->run->opt.wait_ms * 1000000u;
    do {
        if (summary(c, a) == 0 && done(a, arg))
            return 0;
    } while (load_now_ns() < deadline);
    return -1;
}

/* Handles dropped for expired sessions: one per EXPIRED event, unless a
 * mailbox overflowed and a sweep dropped some instead (a sweep cannot tell
 * an expiry from a delete: then at most that many). */
static int expiry_drops_match(const summary_answer *a, uint64_t expected)
{
    uint64_t drops = summary_value(a->text, "expiry_drops");
    if (strstr(a->text, "mode=handles") == NULL)
        return 1;
    return summary_value(a->text, "sweeps") == 0 ? drops == expected : drops <= expected;
}

static int expiries_seen(const summary_answer *a, uint64_t expected)
{
    return summary_value(a->text, "expired_events") >= expected && expiry_drops_match(a, expected);
}

static int all_released(const summary_answer *a, uint64_t unused)
{
    (void)unused;
    return summary_value(a->text, "sessions") == 0 && summary_value(a->text, "pinned") == 0;
}

static void check_gateway_counters(checker *c, const summary_answer *a, uint64_t expired)
{
    int handles = strstr(a->text, "mode=handles") != NULL;
    char what[WIRE_ANSWER_MAX + 128];
    if (summary_value(a->text, "expired_events") != expired || !expiry_drops_match(a, expired)) {
        snprintf(what, sizeof(what), "want expired_events=%" PRIu64 "%s, gateway says: %s", expired,
                 handles ? " and as many expiry_drops" : "", a->text);
        fail(c, what);
    }
    static const char *must_be_zero[] = {"send_errors", "track_errors", "bad_datagrams"};
    for (size_t k = 0; k < sizeof(must_be_zero) / sizeof(must_be_zero[0]); k++)
        if (summary_value(a->text, must_be_zero[k]) != 0) {
            snprintf(what, sizeof(what), "want %s=0, gateway says: %s", must_be_zero[k], a->text);
            fail(c, what);
        }
}

static int open_control_socket(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct timeval wait = {.tv_sec = 0, .tv_usec = 50000};
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait)) != 0 ||
        connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int check_run(const load_run *run)
{
    const load_options *opt = &run->opt;
    checker c = {.run = run, .fd = open_control_socket(opt->port)};
    uint64_t *idx = calloc(opt->connections + 1, sizeof(uint64_t));
    answer *answers = calloc(opt->connections + 1, sizeof(answer));
    if (c.fd < 0 || idx == NULL || answers == NULL) {
        fprintf(stderr, "udp-load: check: cannot open a socket or allocate\n");
        free(idx);
        free(answers);
        return 1;
    }
    uint64_t sent = 0, echoed = 0, expired = 0;
    for (uint64_t i = 0; i < opt->connections; i++) {
        sent += run->conns[i].sent;
        echoed += run->conns[i].echoed;
        expired += i < opt->silent && run->conns[i].sent > 0; /* only a session that was created can expire */
    }
    if (sent != echoed) {
        char what[WIRE_ANSWER_MAX + 128];
        snprintf(what, sizeof(what),
                 "%" PRIu64 " of %" PRIu64 " datagrams got no echo (lost in the kernel): counts cannot match",
                 sent - echoed, sent);
        fail(&c, what);
    }
    uint64_t bye_end = opt->silent + opt->bye;
    size_t n = 0;
    for (uint64_t i = opt->silent; i < bye_end; i++)
        idx[n++] = i;
    if (n > 0) {
        exchange(&c, WIRE_OP_BYE, idx, n, answers);
        expect(&c, "bye", idx, n, answers, "ok");
        exchange(&c, WIRE_OP_QUERY, idx, n, answers);
        expect(&c, "gone after bye", idx, n, answers, "notfound");
    }
    n = 0;
    for (uint64_t i = bye_end; i < opt->connections; i++)
        idx[n++] = i;
    exchange(&c, WIRE_OP_QUERY, idx, n, answers);
    expect(&c, "active", idx, n, answers, "ok");
    size_t active = n;

    if (opt->silent > 0) {
        n = 0;
        for (uint64_t i = 0; i < opt->silent; i++)
            idx[n++] = i;
        uint64_t deadline = load_now_ns() + opt->wait_ms * 1000000u;
        size_t still = 0;
        do {
            exchange(&c, WIRE_OP_QUERY, idx, n, answers);
            still = 0;
            for (size_t k = 0; k < n; k++)
                still += !answers[k].got || strcmp(answers[k].status, "notfound") != 0;
        } while (still > 0 && load_now_ns() < deadline);
        expect(&c, "silent ones expired", idx, n, answers, "notfound");
    }
    summary_answer s = {0};
    if (wait_summary(&c, &s, expiries_seen, expired) != 0 && !s.got)
        fail(&c, "no answer to the summary request");
    check_gateway_counters(&c, &s, expired);

    if (opt->close_all && active > 0) {
        for (size_t k = 0; k < active; k++)
            idx[k] = bye_end + k;
        exchange(&c, WIRE_OP_BYE, idx, active, answers);
        expect(&c, "bye from every active connection", idx, active, answers, "ok");
        if (wait_summary(&c, &s, all_released, 0) != 0) {
            char what[WIRE_ANSWER_MAX + 80];
            snprintf(what, sizeof(what), "want sessions=0 pinned=0 after every bye; gateway says: %s",
                     s.got ? s.text : "(no answer)");
            fail(&c, what);
        }
        check_gateway_counters(&c, &s, expired);
    }
    if (s.got)
        printf("udp-load: gateway %s\n", s.text);
    close(c.fd);
    free(idx);
    free(answers);
    return c.failures;
}

int load_summary(uint16_t port, char *text, size_t size)
{
    checker c = {.fd = open_control_socket(port)};
    summary_answer a;
    int status = c.fd >= 0 ? summary(&c, &a) : -1;
    if (c.fd >= 0)
        close(c.fd);
    if (status == 0)
        snprintf(text, size, "%s", a.text);
    return status;
}
