/*
 * traffic.c: the traffic phase. Each thread owns a few sockets, each
 * connected to the gateway from its own port (so SO_REUSEPORT spreads them
 * over the gateway's workers), and each socket carries its share of the
 * connections. A round sends one sendmmsg batch on every socket, then
 * collects the echoes: closed loop, so at most sockets x batch datagrams
 * per thread are in flight and the gateway's receive buffers never
 * overflow (on loopback, that is the only way a datagram is lost). With
 * --rate, rounds are paced to the thread's share of the rate.
 *
 * A datagram carries, after the 17-byte header, its connection's index, so
 * that an echo is credited to its connection without a lookup. Counters of
 * a connection are written by its thread only.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "load.h"
#include "wire.h"

#define BATCH_MAX        1024
#define ECHO_WAIT_NS     (1000u * 1000u * 1000u) /* then the round's missing echoes count as lost */
#define RECEIVE_WAIT_US  50000
#define SOCKET_BUF_BYTES (4 << 20)

typedef struct sender_socket {
    int fd;
    uint64_t *conns; /* indices of this socket's connections */
    size_t count;
    size_t next;
} sender_socket;

/* The start gate: every sender finishes its warm-up, the main thread
 * reads the gateway's summary, then the timed phase starts everywhere. */
typedef struct gate {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    unsigned warmed;
    int open;
} gate;

typedef struct sender {
    load_run *run;
    gate *start_gate;
    unsigned index;
    pthread_t thread;
    sender_socket *sockets;
    int failed;
    uint64_t traffic_ns; /* the phase's length as this thread saw it */
    struct mmsghdr msgs[BATCH_MAX];
    struct iovec iov[BATCH_MAX];
    uint8_t (*buf)[WIRE_MAX_BYTES + 1];
} sender;

uint64_t load_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int open_socket(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int bytes = SOCKET_BUF_BYTES;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
    struct timeval wait = {.tv_sec = 0, .tv_usec = RECEIVE_WAIT_US};
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait)) != 0 ||
        connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Fills up to batch datagrams for the socket's next connections; silent
 * ones are skipped once their time is up. Returns how many. */
static unsigned fill_batch(sender *s, sender_socket *sock, int silence, uint64_t round)
{
    const load_options *opt = &s->run->opt;
    unsigned n = 0;
    for (size_t tries = 0; n < opt->batch && tries < sock->count; tries++) {
        uint64_t i = sock->conns[sock->next];
        sock->next = (sock->next + 1) % sock->count;
        if (silence && i < opt->silent)
            continue;
        conn_state *c = &s->run->conns[i];
        uint64_t span = opt->max_size - opt->min_size + 1;
        uint32_t len = (uint32_t)(opt->min_size + (c->sent * 7 + i + round) % span);
        uint8_t *b = s->buf[n];
        wire_header(b, &c->id, WIRE_OP_DATA);
        uint32_t index = (uint32_t)i;
        memcpy(b + WIRE_HEADER_BYTES, &index, sizeof(index));
        s->iov[n] = (struct iovec){b, len};
        c->sent++;
        c->sent_bytes += len;
        n++;
    }
    return n;
}

static int send_all(int fd, struct mmsghdr *msgs, unsigned n)
{
    unsigned sent = 0;
    while (sent < n) {
        int r = sendmmsg(fd, msgs + sent, n - sent, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        sent += (unsigned)r;
    }
    return 0;
}

/* Collects echoes until `want` arrived or the wait is over; how many came. */
static unsigned collect(sender *s, int fd, unsigned want, uint64_t wait_ns)
{
    unsigned got = 0;
    uint64_t deadline = load_now_ns() + wait_ns;
    while (got < want && load_now_ns() < deadline) {
        unsigned n = want - got < BATCH_MAX ? want - got : BATCH_MAX;
        for (unsigned k = 0; k < n; k++) {
            s->iov[k] = (struct iovec){s->buf[k], WIRE_MAX_BYTES + 1};
            s->msgs[k].msg_hdr = (struct msghdr){.msg_iov = &s->iov[k], .msg_iovlen = 1};
        }
        int r = recvmmsg(fd, s->msgs, n, MSG_WAITFORONE, NULL);
        if (r <= 0)
            continue; /* the receive wait ran out or a signal: look at the deadline */
        for (int k = 0; k < r; k++) {
            uint32_t len = s->msgs[k].msg_len, index;
            if (len < WIRE_HEADER_BYTES + sizeof(index) || s->buf[k][WIRE_ID_BYTES] != WIRE_OP_DATA)
                continue;
            memcpy(&index, s->buf[k] + WIRE_HEADER_BYTES, sizeof(index));
            if (index >= s->run->opt.connections)
                continue;
            conn_state *c = &s->run->conns[index];
            c->echoed++;
            c->echoed_bytes += len;
        }
        got += (unsigned)r;
    }
    return got;
}

/* One datagram for every connection, so that the timed phase measures
 * steady state, not session creation. */
static int warm_up(sender *s)
{
    const load_options *opt = &s->run->opt;
    for (unsigned k = 0; k < opt->sockets; k++) {
        sender_socket *sock = &s->sockets[k];
        for (size_t done = 0; done < sock->count;) {
            unsigned n = fill_batch(s, sock, 0, 0);
            for (unsigned m = 0; m < n; m++)
                s->msgs[m].msg_hdr = (struct msghdr){.msg_iov = &s->iov[m], .msg_iovlen = 1};
            if (send_all(sock->fd, s->msgs, n) != 0)
                return -1;
            collect(s, sock->fd, n, ECHO_WAIT_NS);
            done += n;
        }
    }
    return 0;
}

static void pass_gate(sender *s)
{
    gate *g = s->start_gate;
    pthread_mutex_lock(&g->lock);
    g->warmed++;
    pthread_cond_broadcast(&g->changed);
    while (!g->open)
        pthread_cond_wait(&g->changed, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

static void *sender_main(void *arg)
{
    sender *s = arg;
    const load_options *opt = &s->run->opt;
    if (opt->warmup && warm_up(s) != 0) {
        perror("udp-load: warm-up");
        s->failed = 1;
    }
    pass_gate(s);
    if (s->failed)
        return NULL;
    for (unsigned k = 0; k < opt->batch; k++)
        s->msgs[k].msg_hdr = (struct msghdr){.msg_iov = &s->iov[k], .msg_iovlen = 1};
    uint64_t start = load_now_ns(), end = start + opt->duration_ms * 1000000u;
    uint64_t silent_at = start + opt->silent_after_ms * 1000000u, sent_total = 0, missing = 0;
    double thread_rate = opt->rate ? (double)opt->rate / opt->threads : 0;
    unsigned *outstanding = calloc(opt->sockets, sizeof(unsigned));
    if (outstanding == NULL) {
        s->failed = 1;
        return NULL;
    }
    for (uint64_t round = 0; load_now_ns() < end; round++) {
        int silence = load_now_ns() >= silent_at;
        for (unsigned k = 0; k < opt->sockets; k++) {
            sender_socket *sock = &s->sockets[k];
            if (sock->count == 0)
                continue;
            unsigned n = fill_batch(s, sock, silence, round);
            for (unsigned m = 0; m < n; m++)
                s->msgs[m].msg_hdr = (struct msghdr){.msg_iov = &s->iov[m], .msg_iovlen = 1};
            if (n > 0 && send_all(sock->fd, s->msgs, n) != 0) {
                perror("udp-load: sendmmsg");
                s->failed = 1;
                goto out;
            }
            outstanding[k] = n;
            sent_total += n;
        }
        for (unsigned k = 0; k < opt->sockets; k++)
            if (outstanding[k] > 0)
                missing += outstanding[k] - collect(s, s->sockets[k].fd, outstanding[k], ECHO_WAIT_NS);
        if (thread_rate > 0) {
            uint64_t due = start + (uint64_t)((double)sent_total * 1e9 / thread_rate);
            struct timespec at = {.tv_sec = (time_t)(due / 1000000000u), .tv_nsec = (long)(due % 1000000000u)};
            if (due > load_now_ns())
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
        }
    }
    s->traffic_ns = load_now_ns() - start;
    /* Echoes that missed their round may still come: credit them, briefly. */
    for (int pass = 0; pass < 10 && missing > 0; pass++)
        for (unsigned k = 0; k < opt->sockets && missing > 0; k++) {
            uint64_t late = collect(s, s->sockets[k].fd, (unsigned)missing, 20u * 1000u * 1000u);
            missing -= late < missing ? late : missing;
        }
out:
    free(outstanding);
    return NULL;
}

static int setup_sender(load_run *run, sender *s, unsigned index)
{
    const load_options *opt = &run->opt;
    s->run = run;
    s->index = index;
    s->sockets = calloc(opt->sockets, sizeof(sender_socket));
    s->buf = calloc(BATCH_MAX, sizeof(*s->buf));
    if (s->sockets == NULL || s->buf == NULL)
        return -1;
    uint64_t per_socket = opt->connections / ((uint64_t)opt->threads * opt->sockets) + 1;
    for (unsigned k = 0; k < opt->sockets; k++) {
        s->sockets[k].fd = open_socket(opt->port);
        s->sockets[k].conns = calloc(per_socket, sizeof(uint64_t));
        if (s->sockets[k].fd < 0 || s->sockets[k].conns == NULL)
            return -1;
    }
    for (uint64_t i = index; i < opt->connections; i += opt->threads) {
        sender_socket *sock = &s->sockets[(i / opt->threads) % opt->sockets];
        sock->conns[sock->count++] = i;
    }
    return 0;
}

static void free_sender(const load_options *opt, sender *s)
{
    for (unsigned k = 0; s->sockets != NULL && k < opt->sockets; k++) {
        if (s->sockets[k].fd > 0)
            close(s->sockets[k].fd);
        free(s->sockets[k].conns);
    }
    free(s->sockets);
    free(s->buf);
}

int traffic_run(load_run *run)
{
    const load_options *opt = &run->opt;
    sender *senders = calloc(opt->threads, sizeof(sender));
    if (senders == NULL)
        return -1;
    int failed = 0;
    unsigned started = 0;
    gate start_gate = {.lock = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER};
    for (unsigned t = 0; t < opt->threads && !failed; t++)
        if (setup_sender(run, &senders[t], t) != 0) {
            fprintf(stderr, "udp-load: cannot open the sockets of thread %u: %s\n", t, strerror(errno));
            failed = 1;
        }
    for (unsigned t = 0; t < opt->threads && !failed; t++) {
        senders[t].start_gate = &start_gate;
        if (pthread_create(&senders[t].thread, NULL, sender_main, &senders[t]) != 0)
            failed = 1;
        else
            started++;
    }
    pthread_mutex_lock(&start_gate.lock);
    while (start_gate.warmed < started)
        pthread_cond_wait(&start_gate.changed, &start_gate.lock);
    pthread_mutex_unlock(&start_gate.lock);
    if (load_summary(opt->port, run->summary_before, sizeof(run->summary_before)) != 0)
        run->summary_before[0] = '\0';
    pthread_mutex_lock(&start_gate.lock);
    start_gate.open = 1;
    pthread_cond_broadcast(&start_gate.changed);
    pthread_mutex_unlock(&start_gate.lock);
    for (unsigned t = 0; t < started; t++) {
        pthread_join(senders[t].thread, NULL);
        failed |= senders[t].failed;
    }
    if (load_summary(opt->port, run->summary_after, sizeof(run->summary_after)) != 0)
        run->summary_after[0] = '\0';
    run->elapsed_ns = 0;
    for (unsigned t = 0; t < started; t++)
        if (senders[t].traffic_ns > run->elapsed_ns)
            run->elapsed_ns = senders[t].traffic_ns;
    for (unsigned t = 0; t < opt->threads; t++)
        free_sender(opt, &senders[t]);
    free(senders);
    return failed ? -1 : 0;
}
