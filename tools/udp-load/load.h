/*
 * load.h: what the files of udp-load share.
 *
 *   main.c     flags, the run, the report
 *   traffic.c  the sending threads: closed-loop batches over their sockets
 *   check.c    the end-of-run check of the gateway's per-session counters
 *
 * Connections are split over threads (i % threads) and, within a thread,
 * over its sockets; each connection is only ever sent on by one socket
 * (connected to the gateway), so its counters have one writer, its thread,
 * and are read by the main thread after the join.
 *
 * Roles, by index: [0, silent) stop sending after --silent-after-ms and
 * must expire; [silent, silent + bye) say bye at the end; the rest stay
 * active to the end.
 */
#ifndef UDP_LOAD_H
#define UDP_LOAD_H

#include <stddef.h>
#include <stdint.h>

#include "afsm.h"

typedef struct load_options {
    uint16_t port;
    uint64_t connections;
    uint64_t duration_ms;
    uint64_t rate; /* datagrams per second over all threads; 0: flat out */
    unsigned threads;
    unsigned sockets;  /* per thread */
    unsigned batch;    /* datagrams per sendmmsg */
    uint64_t min_size; /* datagram sizes cycle through [min_size, max_size] */
    uint64_t max_size;
    uint64_t silent;
    uint64_t silent_after_ms;
    uint64_t bye;
    int check;
    int close_all;
    uint64_t wait_ms; /* how long the check waits for expiries and handle drops */
} load_options;

typedef struct conn_state {
    afsm_uuid id;
    uint64_t sent;
    uint64_t sent_bytes;
    uint64_t echoed;
    uint64_t echoed_bytes;
} conn_state;

typedef struct load_run {
    load_options opt;
    conn_state *conns;
    uint64_t elapsed_ns; /* of the traffic phase */
} load_run;

/* traffic.c: runs the traffic phase (threads started and joined). 0 or -1. */
int traffic_run(load_run *run);

/* check.c: checks the gateway against what was sent; the number of failed
 * checks (0: all passed), each printed on stderr. */
int check_run(const load_run *run);

uint64_t load_now_ns(void);

#endif
