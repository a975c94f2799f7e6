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
#include "wire.h"

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
    int warmup;       /* one datagram per connection before the timed phase */
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
    uint64_t elapsed_ns; /* of the timed traffic phase */
    /* The gateway's summary when the timed phase starts and ends ("" if it
     * did not answer): its CPU time and datagrams between them. */
    char summary_before[WIRE_ANSWER_MAX + 1];
    char summary_after[WIRE_ANSWER_MAX + 1];
} load_run;

/* traffic.c: runs the traffic phase (threads started and joined). 0 or -1. */
int traffic_run(load_run *run);

/* check.c: checks the gateway against what was sent; the number of failed
 * checks (0: all passed), each printed on stderr. */
int check_run(const load_run *run);

/* check.c: the gateway's summary line (wire.h), asked from a new socket;
 * 0, or -1 without an answer. summary_value reads one key of it
 * (UINT64_MAX when absent). */
int load_summary(uint16_t port, char *text, size_t size);
uint64_t summary_value(const char *text, const char *key);

uint64_t load_now_ns(void);

#endif
