/*
 * worker.c: one worker thread: its socket (127.0.0.1 only, SO_REUSEPORT,
 * so the kernel spreads peers over the workers by their address hash) and
 * its loop:
 *
 *   recvmmsg a batch (waits at most a tick) -> track each data datagram,
 *   answer each control one -> sendmmsg the echoes and answers -> drop the
 *   flows whose sessions ended -> worker 0: advance the engine's time.
 *
 * Everything in a worker is its own; see gateway.h for what is shared.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

/* Socket buffers large enough for a few batches of every peer: loopback
 * drops only when a receive buffer overflows. Capped by net.core.rmem_max. */
#define SOCKET_BUFFER_BYTES (4 << 20)

int worker_open_socket(gateway *gw, worker *w)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1, bytes = SOCKET_BUFFER_BYTES;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
    /* The receive wait is bounded by a tick so that the loop still drops
     * ended flows, advances time and sees a stop when no datagram comes. */
    struct timeval wait = {.tv_sec = (time_t)(gw->opt.tick_ms / 1000),
                           .tv_usec = (suseconds_t)(gw->opt.tick_ms % 1000 * 1000)};
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(gw->port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait)) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        close(fd);
        return -1;
    }
    if (gw->port == 0) {
        socklen_t len = sizeof(addr);
        if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
            close(fd);
            return -1;
        }
        gw->port = ntohs(addr.sin_port);
    }
    w->fd = fd;
    return 0;
}

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The worker's own CPU time: unlike a wall clock it does not count the
 * time another process ran while this one was preempted, which on a shared
 * machine would swamp the tens of nanoseconds being measured. A system
 * call (no vDSO for thread clocks), twice per batch: the same cost in every
 * mode, so it cancels out of the side-by-side figure. */
static uint64_t precise_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Handles in[0..n) and fills out[]; the number of datagrams to send. */
static unsigned handle_batch(worker *w, unsigned n)
{
    unsigned m = 0;
    uint64_t data = 0;
    for (unsigned i = 0; i < n; i++) {
        uint32_t len = w->in[i].msg_len;
        afsm_uuid id;
        uint8_t op;
        int ok = (w->in[i].msg_hdr.msg_flags & MSG_TRUNC) == 0 && len <= WIRE_MAX_BYTES &&
                 wire_parse(w->buf[i], len, &id, &op);
        static const afsm_uuid nil;
        if (!ok || memcmp(&id, &nil, sizeof(nil)) == 0 ||
            (op != WIRE_OP_DATA && op != WIRE_OP_BYE && op != WIRE_OP_QUERY && op != WIRE_OP_SUMMARY)) {
            gw_count(&w->counters.bad_datagrams, 1);
            continue;
        }
        struct mmsghdr *o = &w->out[m];
        o->msg_hdr.msg_name = &w->peer[i];
        o->msg_hdr.msg_namelen = w->in[i].msg_hdr.msg_namelen;
        if (op == WIRE_OP_DATA) {
            if (track_datagram(w, &id, len, &w->peer[i]) != 0)
                gw_count(&w->counters.track_errors, 1);
            w->out_iov[m] = (struct iovec){w->buf[i], len};
            data++;
        } else {
            w->out_iov[m] = (struct iovec){w->answer[i], control_answer(w, &id, op, w->answer[i])};
        }
        m++;
    }
    gw_count(&w->counters.datagrams, data);
    return m;
}

/* Sends out[0..m): a blocking socket takes them all unless one is refused,
 * which is counted and skipped. */
static void send_batch(worker *w, unsigned m)
{
    unsigned sent = 0;
    while (sent < m) {
        int r = sendmmsg(w->fd, &w->out[sent], m - sent, 0);
        if (r > 0) {
            sent += (unsigned)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            gw_count(&w->counters.send_errors, 1);
            sent++;
        }
    }
}

static void advance_time(worker *w)
{
    gateway *gw = w->gw;
    if (gw->opt.mode == GW_MODE_OFF)
        return;
    uint64_t now = monotonic_ns();
    if (now < w->next_advance_ns)
        return;
    w->next_advance_ns = now + gw->opt.tick_ms * 1000000u;
    uint64_t engine_now = 0;
    if (afsm_engine_now(gw->engine, &engine_now) == AFSM_OK)
        afsm_engine_advance(gw->engine, engine_now, NULL);
}

void *worker_main(void *arg)
{
    worker *w = arg;
    gateway *gw = w->gw;
    unsigned batch = gw->opt.batch;
    for (unsigned i = 0; i < batch; i++) {
        w->in_iov[i] = (struct iovec){w->buf[i], WIRE_MAX_BYTES + 1};
        w->in[i].msg_hdr = (struct msghdr){.msg_iov = &w->in_iov[i], .msg_iovlen = 1};
        w->out[i].msg_hdr = (struct msghdr){.msg_iov = &w->out_iov[i], .msg_iovlen = 1};
    }
    while (!atomic_load_explicit(&gw->stop, memory_order_relaxed)) {
        for (unsigned i = 0; i < batch; i++) {
            w->in[i].msg_hdr.msg_name = &w->peer[i];
            w->in[i].msg_hdr.msg_namelen = sizeof(w->peer[i]);
            w->in[i].msg_hdr.msg_flags = 0;
        }
        /* MSG_WAITFORONE: block for the first datagram only (up to a
         * tick), then take whatever else is queued. */
        int n = recvmmsg(w->fd, w->in, batch, MSG_WAITFORONE, NULL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            perror("udp-gateway: recvmmsg");
            atomic_store_explicit(&gw->failed, 1, memory_order_relaxed);
            atomic_store_explicit(&gw->stop, 1, memory_order_relaxed);
            break;
        }
        if (n > 0) {
            /* CPU time spent between the system calls: parsing, the flow
             * map and the tracking of the mode; what afsm adds shows here,
             * where the kernel's UDP path does not drown it. */
            uint64_t t0 = precise_ns();
            unsigned m = handle_batch(w, (unsigned)n);
            gw_count(&w->counters.process_ns, precise_ns() - t0);
            send_batch(w, m);
        }
        if (gw->opt.mode == GW_MODE_HANDLES)
            track_drop_ended(w);
        if (w->index == 0)
            advance_time(w);
    }
    /* Handles are released by their owner, on its own thread. */
    track_release_all(w);
    return NULL;
}
