/*
 * udp-gateway: a UDP echo gateway on 127.0.0.1 that tracks every
 * connection's session in afsm, per packet, through pinned handles: the
 * worked example of embedding the engine in a data plane (README.md beside
 * this file), and the measurement of what tracking costs a packet loop.
 *
 * main.c: flags, start, the signal loop, stop. Signals are blocked in every
 * thread and taken by the main thread with sigtimedwait, so no handler runs
 * inside a worker: SIGUSR1 writes the engine's Prometheus text to stderr,
 * SIGTERM and SIGINT stop, --run-seconds bounds the run. At stop the
 * workers release their handles; the gateway then checks that the engine
 * has none pinned, closes it, prints the summary line and exits 0 (1 if a
 * handle leaked or a worker failed).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

static void usage(FILE *to)
{
    fprintf(to,
            "usage: udp-gateway [--port N] [--threads N] [--mode off|handles|lookup] [--batch N]\n"
            "                   [--timeout-ms N] [--tick-ms N] [--capacity N] [--run-seconds N]\n"
            "                   [--metrics-on-exit] [--mailbox-capacity N]\n"
            "Echoes UDP datagrams on 127.0.0.1 and tracks each connection's session in afsm.\n"
            "  --port N          UDP port (0..65535; default 0: a free one, printed at start)\n"
            "  --threads N       worker threads sharing the port with SO_REUSEPORT (1..256;\n"
            "                    default: one per online CPU)\n"
            "  --mode M          off (no tracking), handles (default), lookup (per packet)\n"
            "  --batch N         datagrams per recvmmsg/sendmmsg (1..%d; default 64)\n"
            "  --timeout-ms N    a session's rolling timeout (1..4294967295; default 30000)\n"
            "  --tick-ms N       expiry resolution and longest receive wait (1..10000; default 100)\n"
            "  --capacity N      sessions expected, to presize (default 1024)\n"
            "  --run-seconds N   stop after N seconds (default 0: on SIGTERM/SIGINT only)\n"
            "  --metrics-on-exit write the engine's Prometheus text to stderr at exit\n"
            "  --mailbox-capacity N  ended sessions a worker's mailbox holds before it falls\n"
            "                    back to sweeping its flows (1..16777216; default 65536)\n"
            "SIGUSR1 writes the Prometheus text to stderr while it runs.\n",
            GW_BATCH_MAX);
}

/* A decimal in [min, max], or a message naming the flag and the limits. */
static int parse_number(const char *flag, const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = text != NULL ? strtoull(text, &end, 10) : 0;
    if (text == NULL || *text == '\0' || *text == '-' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr, "udp-gateway: %s wants a number from %" PRIu64 " to %" PRIu64 ", got '%s'\n", flag, min, max,
                text != NULL ? text : "");
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_flags(int argc, char **argv, gw_options *opt)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    *opt = (gw_options){.threads = cpus > 0 ? (unsigned)cpus : 1,
                        .mode = GW_MODE_HANDLES,
                        .batch = 64,
                        .timeout_ms = 30000,
                        .tick_ms = 100,
                        .capacity = 1024,
                        .mailbox_capacity = 65536};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t v = 0;
        int takes_value = 1, bad = 0;
        if (strcmp(flag, "--port") == 0) {
            bad = parse_number(flag, value, 0, 65535, &v);
            opt->port = (uint16_t)v;
        } else if (strcmp(flag, "--threads") == 0) {
            bad = parse_number(flag, value, 1, 256, &v);
            opt->threads = (unsigned)v;
        } else if (strcmp(flag, "--batch") == 0) {
            bad = parse_number(flag, value, 1, GW_BATCH_MAX, &v);
            opt->batch = (unsigned)v;
        } else if (strcmp(flag, "--timeout-ms") == 0) {
            bad = parse_number(flag, value, 1, UINT32_MAX, &opt->timeout_ms);
        } else if (strcmp(flag, "--tick-ms") == 0) {
            bad = parse_number(flag, value, 1, 10000, &opt->tick_ms);
        } else if (strcmp(flag, "--capacity") == 0) {
            bad = parse_number(flag, value, 1, UINT64_C(1) << 32, &opt->capacity);
        } else if (strcmp(flag, "--mailbox-capacity") == 0) {
            bad = parse_number(flag, value, 1, 1u << 24, &v);
            opt->mailbox_capacity = (size_t)v;
        } else if (strcmp(flag, "--run-seconds") == 0) {
            bad = parse_number(flag, value, 0, 86400 * 365, &v);
            opt->run_ms = v * 1000;
        } else if (strcmp(flag, "--mode") == 0) {
            if (value != NULL && strcmp(value, "off") == 0) {
                opt->mode = GW_MODE_OFF;
            } else if (value != NULL && strcmp(value, "handles") == 0) {
                opt->mode = GW_MODE_HANDLES;
            } else if (value != NULL && strcmp(value, "lookup") == 0) {
                opt->mode = GW_MODE_LOOKUP;
            } else {
                fprintf(stderr, "udp-gateway: --mode wants off, handles or lookup, got '%s'\n", value ? value : "");
                bad = 1;
            }
        } else if (strcmp(flag, "--metrics-on-exit") == 0) {
            opt->metrics_on_exit = 1;
            takes_value = 0;
        } else if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else {
            fprintf(stderr, "udp-gateway: unknown flag '%s'\n", flag);
            usage(stderr);
            return -1;
        }
        if (bad)
            return -1;
        i += takes_value;
    }
    return 0;
}

static void write_metrics(gateway *gw)
{
    size_t needed = 0;
    afsm_metrics_write_prometheus(gw->engine, NULL, 0, &needed);
    char *text = malloc(needed + 4096); /* room for counters that grow meanwhile */
    if (text == NULL)
        return;
    if (afsm_metrics_write_prometheus(gw->engine, text, needed + 4096, NULL) == AFSM_OK) {
        /* One write, so the block is not interleaved with other output;
         * the trailing comment line tells a reader the block is whole. */
        fprintf(stderr, "%s# udp-gateway metrics end\n", text);
        fflush(stderr);
    }
    free(text);
}

/* Sockets first, then threads: *started counts the threads to join. */
static int start_workers(gateway *gw, unsigned *started)
{
    for (unsigned i = 0; i < gw->worker_count; i++) {
        worker *w = &gw->workers[i];
        w->gw = gw;
        w->index = i;
        w->fd = -1;
        w->buf = calloc(gw->opt.batch, sizeof(*w->buf));
        w->answer = calloc(gw->opt.batch, sizeof(*w->answer));
        w->taken = calloc(gw->opt.mailbox_capacity, sizeof(*w->taken));
        if (w->buf == NULL || w->answer == NULL || w->taken == NULL ||
            flowmap_init(&w->flows, gw->opt.capacity / gw->worker_count + 1) != 0 ||
            mailbox_init(&w->box, gw->opt.mailbox_capacity) != 0) {
            fprintf(stderr, "udp-gateway: out of memory for worker %u\n", i);
            return -1;
        }
        if (worker_open_socket(gw, w) != 0) {
            fprintf(stderr, "udp-gateway: cannot bind 127.0.0.1:%u: %s\n", gw->port, strerror(errno));
            return -1;
        }
    }
    for (unsigned i = 0; i < gw->worker_count; i++) {
        if (pthread_create(&gw->workers[i].thread, NULL, worker_main, &gw->workers[i]) != 0) {
            fprintf(stderr, "udp-gateway: cannot start worker %u\n", i);
            return -1;
        }
        *started = i + 1;
    }
    return 0;
}

static void free_workers(gateway *gw, unsigned count)
{
    for (unsigned i = 0; i < count; i++) {
        worker *w = &gw->workers[i];
        if (w->fd >= 0)
            close(w->fd);
        if (w->box.items != NULL)
            mailbox_destroy(&w->box);
        flowmap_free(&w->flows); /* empty unless the worker never ran */
        free(w->buf);
        free(w->answer);
        free(w->taken);
    }
    free(gw->workers);
}

/* Waits for signals until stopped or out of time. */
static void signal_loop(gateway *gw, const sigset_t *signals)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!atomic_load(&gw->stop)) {
        struct timespec wait = {.tv_sec = 0, .tv_nsec = 200 * 1000 * 1000}, now;
        int sig = sigtimedwait(signals, NULL, &wait);
        if (sig == SIGUSR1)
            write_metrics(gw);
        else if (sig == SIGTERM || sig == SIGINT)
            atomic_store(&gw->stop, 1);
        clock_gettime(CLOCK_MONOTONIC, &now);
        uint64_t ran_ms = (uint64_t)(now.tv_sec - start.tv_sec) * 1000 + (uint64_t)(now.tv_nsec / 1000000) -
                          (uint64_t)(start.tv_nsec / 1000000);
        if (gw->opt.run_ms != 0 && ran_ms >= gw->opt.run_ms)
            atomic_store(&gw->stop, 1);
    }
}

int main(int argc, char **argv)
{
    static gateway gw;
    if (parse_flags(argc, argv, &gw.opt) != 0)
        return 2;
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGUSR1);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, NULL); /* inherited by the workers */

    gw.port = gw.opt.port;
    gw.worker_count = gw.opt.threads;
    afsm_status status = gateway_open_engine(&gw);
    if (status != AFSM_OK) {
        fprintf(stderr, "udp-gateway: afsm_engine_open: %s\n", afsm_strerror(status));
        return 1;
    }
    unsigned started = 0;
    gw.workers = calloc(gw.worker_count, sizeof(worker));
    if (gw.workers == NULL) {
        fprintf(stderr, "udp-gateway: out of memory for %u workers\n", gw.worker_count);
        afsm_engine_close(gw.engine);
        return 1;
    }
    int failed = start_workers(&gw, &started) != 0;
    if (!failed) {
        static const char *mode_names[] = {"off", "handles", "lookup"};
        printf("udp-gateway: listening on 127.0.0.1:%u threads=%u mode=%s\n", gw.port, gw.worker_count,
               mode_names[gw.opt.mode]);
        fflush(stdout);
        signal_loop(&gw, &signals);
    }
    atomic_store(&gw.stop, 1);
    for (unsigned i = 0; i < started; i++)
        pthread_join(gw.workers[i].thread, NULL);
    failed |= atomic_load(&gw.failed);

    if (gw.opt.metrics_on_exit)
        write_metrics(&gw);
    char summary[WIRE_ANSWER_MAX];
    control_summary(&gw, summary, sizeof(summary));
    uint64_t pinned = 0;
    afsm_engine_pinned(gw.engine, &pinned);
    free_workers(&gw, gw.worker_count);
    status = afsm_engine_close(gw.engine);
    if (status != AFSM_OK) {
        fprintf(stderr, "udp-gateway: afsm_engine_close: %s (%" PRIu64 " handles still pinned)\n",
                afsm_strerror(status), pinned);
        return 1;
    }
    printf("udp-gateway: exit %s\n", summary);
    return failed ? 1 : 0;
}
