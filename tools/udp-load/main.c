/*
 * udp-load: a bounded load generator for udp-gateway, loopback only. It
 * drives N connections for a fixed time (at a rate, or flat out), reports
 * the echo rate, and with --check then verifies the gateway's per-session
 * counters against what it sent (check.c). Exit status: 0 when every check
 * passed, 1 when one failed, 2 on bad flags.
 *
 * main.c: flags, the connection ids, the report.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load.h"
#include "wire.h"

static void usage(FILE *to)
{
    fprintf(to,
            "usage: udp-load --port N [--connections N] [--duration-ms N] [--rate N] [--threads N]\n"
            "                [--sockets N] [--batch N] [--min-size N] [--max-size N] [--silent N]\n"
            "                [--silent-after-ms N] [--bye N] [--check] [--close-all] [--wait-ms N]\n"
            "                [--warmup]\n"
            "Sends data datagrams to udp-gateway on 127.0.0.1 and reports echoes per second.\n"
            "  --port N            the gateway's UDP port (1..65535; required)\n"
            "  --connections N     connection ids (1..10000000; default 1000)\n"
            "  --duration-ms N     traffic time (1..3600000; default 2000)\n"
            "  --rate N            datagrams per second over all threads (default 0: flat out)\n"
            "  --threads N         sending threads (1..64; default 1)\n"
            "  --sockets N         sockets (source ports) per thread (1..256; default 8)\n"
            "  --batch N           datagrams per sendmmsg (1..1024; default 32)\n"
            "  --min-size N        smallest datagram (%d..%d; default 32)\n"
            "  --max-size N        largest datagram (min-size..%d; default 200)\n"
            "  --silent N          the first N connections stop after --silent-after-ms and must expire\n"
            "  --silent-after-ms N when the silent ones stop (default 200)\n"
            "  --bye N             the next N connections say bye at the end (checked)\n"
            "  --check             verify the gateway's per-session counters (see check.c)\n"
            "  --close-all         then say bye from every active connection and require\n"
            "                      sessions=0 pinned=0 at the gateway\n"
            "  --wait-ms N         how long the check waits for expiries and releases (default 5000)\n"
            "  --warmup            one datagram per connection before the timed phase (sessions\n"
            "                      created first: the rate is then steady state)\n",
            WIRE_HEADER_BYTES + 4, WIRE_MAX_BYTES, WIRE_MAX_BYTES);
}

static int parse_number(const char *flag, const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = text != NULL ? strtoull(text, &end, 10) : 0;
    if (text == NULL || *text == '\0' || *text == '-' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr, "udp-load: %s wants a number from %" PRIu64 " to %" PRIu64 ", got '%s'\n", flag, min, max,
                text != NULL ? text : "");
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_flags(int argc, char **argv, load_options *opt)
{
    *opt = (load_options){.connections = 1000,
                          .duration_ms = 2000,
                          .threads = 1,
                          .sockets = 8,
                          .batch = 32,
                          .min_size = 32,
                          .max_size = 200,
                          .silent_after_ms = 200,
                          .wait_ms = 5000};
    uint64_t port = 0;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t v = 0;
        int bad = 0;
        if (strcmp(flag, "--check") == 0) {
            opt->check = 1;
            continue;
        } else if (strcmp(flag, "--warmup") == 0) {
            opt->warmup = 1;
            continue;
        } else if (strcmp(flag, "--close-all") == 0) {
            opt->close_all = 1;
            continue;
        } else if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(flag, "--port") == 0) {
            bad = parse_number(flag, value, 1, 65535, &port);
        } else if (strcmp(flag, "--connections") == 0) {
            bad = parse_number(flag, value, 1, 10000000, &opt->connections);
        } else if (strcmp(flag, "--duration-ms") == 0) {
            bad = parse_number(flag, value, 1, 3600000, &opt->duration_ms);
        } else if (strcmp(flag, "--rate") == 0) {
            bad = parse_number(flag, value, 0, UINT32_MAX, &opt->rate);
        } else if (strcmp(flag, "--threads") == 0) {
            bad = parse_number(flag, value, 1, 64, &v);
            opt->threads = (unsigned)v;
        } else if (strcmp(flag, "--sockets") == 0) {
            bad = parse_number(flag, value, 1, 256, &v);
            opt->sockets = (unsigned)v;
        } else if (strcmp(flag, "--batch") == 0) {
            bad = parse_number(flag, value, 1, 1024, &v);
            opt->batch = (unsigned)v;
        } else if (strcmp(flag, "--min-size") == 0) {
            bad = parse_number(flag, value, WIRE_HEADER_BYTES + 4, WIRE_MAX_BYTES, &opt->min_size);
        } else if (strcmp(flag, "--max-size") == 0) {
            bad = parse_number(flag, value, WIRE_HEADER_BYTES + 4, WIRE_MAX_BYTES, &opt->max_size);
        } else if (strcmp(flag, "--silent") == 0) {
            bad = parse_number(flag, value, 0, 10000000, &opt->silent);
        } else if (strcmp(flag, "--silent-after-ms") == 0) {
            bad = parse_number(flag, value, 0, 3600000, &opt->silent_after_ms);
        } else if (strcmp(flag, "--bye") == 0) {
            bad = parse_number(flag, value, 0, 10000000, &opt->bye);
        } else if (strcmp(flag, "--wait-ms") == 0) {
            bad = parse_number(flag, value, 1, 3600000, &opt->wait_ms);
        } else {
            fprintf(stderr, "udp-load: unknown flag '%s'\n", flag);
            usage(stderr);
            return -1;
        }
        if (bad)
            return -1;
        i++;
    }
    opt->port = (uint16_t)port;
    if (port == 0) {
        fprintf(stderr, "udp-load: --port is required (the gateway prints it at start)\n");
        return -1;
    }
    if (opt->max_size < opt->min_size) {
        fprintf(stderr, "udp-load: --max-size (%" PRIu64 ") is below --min-size (%" PRIu64 ")\n", opt->max_size,
                opt->min_size);
        return -1;
    }
    if (opt->silent + opt->bye > opt->connections) {
        fprintf(stderr, "udp-load: --silent + --bye (%" PRIu64 ") exceeds --connections (%" PRIu64 ")\n",
                opt->silent + opt->bye, opt->connections);
        return -1;
    }
    return 0;
}

/* The gateway's CPU time per datagram over the timed phase: the figure
 * that shows what tracking adds when the kernel's share dominates the rate
 * (both summaries come from the gateway's getrusage; see wire.h). */
static void report_gateway_cost(const load_run *run)
{
    const char *before = run->summary_before, *after = run->summary_after;
    uint64_t d0 = summary_value(before, "datagrams"), d1 = summary_value(after, "datagrams");
    uint64_t u0 = summary_value(before, "cpu_user_us"), u1 = summary_value(after, "cpu_user_us");
    uint64_t s0 = summary_value(before, "cpu_sys_us"), s1 = summary_value(after, "cpu_sys_us");
    if (d0 == UINT64_MAX || d1 == UINT64_MAX || u0 == UINT64_MAX || u1 == UINT64_MAX || s0 == UINT64_MAX ||
        s1 == UINT64_MAX || summary_value(after, "process_ns") == UINT64_MAX || d1 <= d0) {
        printf("udp-load: gateway cost: no summary from the gateway\n");
        return;
    }
    uint64_t p0 = summary_value(before, "process_ns"), p1 = summary_value(after, "process_ns");
    double datagrams = (double)(d1 - d0);
    printf("udp-load: gateway datagrams=%" PRIu64 " cpu_ns_per_datagram=%.0f user_ns_per_datagram=%.0f"
           " sys_ns_per_datagram=%.0f process_ns_per_datagram=%.1f\n",
           d1 - d0, (double)(u1 - u0 + s1 - s0) * 1000 / datagrams, (double)(u1 - u0) * 1000 / datagrams,
           (double)(s1 - s0) * 1000 / datagrams, (double)(p1 - p0) / datagrams);
}

int main(int argc, char **argv)
{
    load_run run = {0};
    if (parse_flags(argc, argv, &run.opt) != 0)
        return 2;
    run.conns = calloc(run.opt.connections, sizeof(conn_state));
    if (run.conns == NULL) {
        fprintf(stderr, "udp-load: out of memory for %" PRIu64 " connections\n", run.opt.connections);
        return 1;
    }
    /* UUIDv7 ids, as a transport would mint them: time-ordered, unique. */
    for (uint64_t i = 0; i < run.opt.connections; i++)
        afsm_uuid_v7(&run.conns[i].id);
    int failed = traffic_run(&run) != 0;
    uint64_t sent = 0, echoed = 0, bytes = 0;
    for (uint64_t i = 0; i < run.opt.connections; i++) {
        sent += run.conns[i].sent;
        echoed += run.conns[i].echoed;
        bytes += run.conns[i].echoed_bytes;
    }
    double seconds = (double)run.elapsed_ns / 1e9;
    printf("udp-load: connections=%" PRIu64 " threads=%u seconds=%.3f sent=%" PRIu64 " echoed=%" PRIu64 " lost=%" PRIu64
           " echoes_per_second=%.0f megabits_per_second=%.1f\n",
           run.opt.connections, run.opt.threads, seconds, sent, echoed, sent - echoed,
           seconds > 0 ? (double)echoed / seconds : 0.0, seconds > 0 ? (double)bytes * 8 / seconds / 1e6 : 0.0);
    report_gateway_cost(&run);
    fflush(stdout);
    if (failed) {
        fprintf(stderr, "udp-load: the traffic phase failed\n");
        free(run.conns);
        return 1;
    }
    int failures = run.opt.check ? check_run(&run) : 0;
    if (run.opt.check)
        printf("udp-load: check %s\n", failures == 0 ? "passed" : "FAILED");
    free(run.conns);
    return failures == 0 ? 0 : 1;
}
