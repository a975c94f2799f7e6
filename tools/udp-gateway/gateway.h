/*
 * gateway.h: what the files of udp-gateway share.
 *
 *   main.c     flags, start and stop, signals (SIGUSR1: metrics to stderr)
 *   events.c   the engine's configuration and its event callback
 *   worker.c   one thread per core: its socket and its recvmmsg/sendmmsg loop
 *   track.c    per-datagram tracking in the three modes, dropping ended flows
 *   control.c  answers to bye, query and summary datagrams
 *   flowmap.c  a worker's connection-id map     mailbox.c  ended sessions
 *
 * Threads: N workers and the main thread. A worker owns its socket, flow
 * map and handles; nobody else touches them. Worker 0 also drives the
 * engine's time (afsm_engine_advance every tick), so expiry events fire on
 * it. The main thread only waits for signals, reads counters and writes
 * metrics. Counters are per worker, written by their worker only (relaxed
 * atomics so that others may read them), on their own cache lines.
 */
#ifndef UDP_GATEWAY_H
#define UDP_GATEWAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "afsm.h"
#include "flowmap.h"
#include "mailbox.h"
#include "wire.h"

typedef enum gw_mode {
    GW_MODE_OFF = 0,     /* no tracking: the bare loop (flow map and echo) */
    GW_MODE_HANDLES = 1, /* a pinned handle per flow: atomics per packet */
    GW_MODE_LOOKUP = 2,  /* the naive way: look the session up per packet */
} gw_mode;

#define GW_BATCH_MAX 1024

typedef struct gw_options {
    uint16_t port; /* 0: any free port (printed at start) */
    unsigned threads;
    gw_mode mode;
    unsigned batch;      /* datagrams per recvmmsg/sendmmsg */
    uint64_t timeout_ms; /* a session's rolling timeout */
    uint64_t tick_ms;    /* the wheel's tick and the loop's longest sleep */
    uint64_t run_ms;     /* 0: until SIGTERM/SIGINT */
    uint64_t capacity;   /* sessions expected (presizes tables and maps) */
    int metrics_on_exit; /* Prometheus text to stderr at exit */
    size_t mailbox_capacity;
} gw_options;

/* One worker's counters, read by any thread. */
typedef struct gw_counters {
    _Atomic uint64_t datagrams;     /* data datagrams tracked and echoed */
    _Atomic uint64_t created;       /* sessions this worker created */
    _Atomic uint64_t reopened;      /* flows whose session had ended, opened again */
    _Atomic uint64_t bye_closes;    /* sessions closed by a bye */
    _Atomic uint64_t expiry_drops;  /* handles dropped on an EXPIRED event */
    _Atomic uint64_t deleted_drops; /* handles dropped on a DELETED event */
    _Atomic uint64_t sweeps;        /* full flow-map sweeps after a mailbox overflow */
    _Atomic uint64_t sweep_drops;   /* handles those sweeps dropped */
    _Atomic uint64_t send_errors;   /* answers the kernel refused */
    _Atomic uint64_t bad_datagrams; /* too short, too long, nil id, unknown op */
    _Atomic uint64_t track_errors;  /* datagrams echoed but not tracked (engine said no) */
    _Atomic uint64_t process_ns;    /* CPU time between recvmmsg and sendmmsg, all batches */
} gw_counters;

typedef struct gateway gateway;

typedef struct worker {
    gateway *gw;
    unsigned index;
    int fd;
    pthread_t thread;
    flowmap flows;
    mailbox box;
    ended_session *taken; /* mailbox_take's buffer, box.capacity items */
    uint64_t next_advance_ns;
    /* The batch: receive buffers double as echo buffers; answers to
     * control datagrams are written into answer[i]. */
    struct mmsghdr in[GW_BATCH_MAX];
    struct mmsghdr out[GW_BATCH_MAX];
    struct iovec in_iov[GW_BATCH_MAX];
    struct iovec out_iov[GW_BATCH_MAX];
    struct sockaddr_storage peer[GW_BATCH_MAX];
    uint8_t (*buf)[WIRE_MAX_BYTES + 1];
    uint8_t (*answer)[WIRE_ANSWER_MAX];
    _Alignas(64) gw_counters counters;
} worker;

struct gateway {
    gw_options opt;
    afsm_engine *engine;
    worker *workers;
    unsigned worker_count;
    uint16_t port;
    _Atomic int stop;
    _Atomic int failed; /* a worker stopped on an error */
    _Atomic uint64_t expired_events;
    _Atomic uint64_t deleted_events;
};

/* events.c */
afsm_status gateway_open_engine(gateway *gw);

/* worker.c */
int worker_open_socket(gateway *gw, worker *w);
void *worker_main(void *arg);

/* track.c */
/* Tracks one data datagram of len bytes from peer; 0, or -1 when the
 * engine refused (counted; the datagram is still echoed). */
int track_datagram(worker *w, const afsm_uuid *connection_id, uint32_t len, const struct sockaddr_storage *peer);
/* Drops the flows of sessions that ended (the mailbox), or sweeps. */
void track_drop_ended(worker *w);
/* Forgets connection_id's flow and releases its handle, if this worker has one. */
void track_forget(worker *w, const afsm_uuid *connection_id);
/* Releases every handle this worker holds (at exit). */
void track_release_all(worker *w);

/* control.c */
/* Writes the answer to a control datagram into out; its length. */
size_t control_answer(worker *w, const afsm_uuid *connection_id, uint8_t op, uint8_t *out);
/* The summary line ("sessions=... pinned=..."), also printed at exit. */
void control_summary(gateway *gw, char *out, size_t size);

/* A counter bump by its owner: a plain load and store, no lock prefix. */
static inline void gw_count(_Atomic uint64_t *counter, uint64_t n)
{
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + n, memory_order_relaxed);
}

static inline uint64_t gw_sum(const gateway *gw, size_t offset)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < gw->worker_count; i++)
        sum +=
            atomic_load_explicit((_Atomic uint64_t *)((char *)&gw->workers[i].counters + offset), memory_order_relaxed);
    return sum;
}
#define GW_SUM(gw, field) gw_sum((gw), offsetof(gw_counters, field))

#endif
