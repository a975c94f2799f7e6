/*
 * wire.h: the gateway's datagram framing, shared by udp-gateway and
 * udp-load. Header only, no state.
 *
 * Every datagram starts with a 16-byte connection id (a UUID the client
 * picks, like a QUIC connection id) and one operation byte:
 *
 *   'D' data     tracked (heartbeat + packets/bytes) and echoed unchanged
 *   'B' bye      the gateway closes the connection's session and answers
 *                'b' with the session's final counters
 *   'Q' query    answered 'q' with the session's counters; changes nothing
 *   'S' summary  answered 's' with the gateway's own counters; the
 *                connection id is ignored
 *
 * Only data datagrams count in a session's stats: packets_received and
 * bytes_received for the datagram, packets_sent and bytes_sent for its
 * echo (counted when the echo is handed to the kernel; a failed send is
 * counted in the gateway's send_errors). Control datagrams are not traffic.
 *
 * Answers are the request's 16-byte id, the answer byte, then one line of
 * text, "status=ok packets_received=... bytes_received=... packets_sent=...
 * bytes_sent=...", or for 's' "key=value" pairs: text, because an operator
 * reads them with nc too, and they are rare (never per packet).
 */
#ifndef UDP_GATEWAY_WIRE_H
#define UDP_GATEWAY_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "afsm.h"

#define WIRE_ID_BYTES     16
#define WIRE_HEADER_BYTES 17   /* id + operation */
#define WIRE_MAX_BYTES    2048 /* longer datagrams are dropped and counted */
#define WIRE_ANSWER_MAX   1024 /* the longest answer ('s' included) */

#define WIRE_OP_DATA    'D'
#define WIRE_OP_BYE     'B'
#define WIRE_OP_QUERY   'Q'
#define WIRE_OP_SUMMARY 'S'
/* Answers are the request's operation in lower case. */
#define WIRE_ANSWER(op) ((op) + ('a' - 'A'))

/* A datagram's connection id and operation; 0 when it is too short. */
static inline int wire_parse(const uint8_t *buf, size_t len, afsm_uuid *id, uint8_t *op)
{
    if (len < WIRE_HEADER_BYTES)
        return 0;
    memcpy(id->bytes, buf, WIRE_ID_BYTES);
    *op = buf[WIRE_ID_BYTES];
    return 1;
}

static inline void wire_header(uint8_t *buf, const afsm_uuid *id, uint8_t op)
{
    memcpy(buf, id->bytes, WIRE_ID_BYTES);
    buf[WIRE_ID_BYTES] = op;
}

#endif
