/*
 * control.c: answers to the control datagrams (wire.h): bye closes a
 * session and reports its final counters, query reports them, summary
 * reports the gateway's. Rare next to data: a lookup here costs nothing
 * that matters. Called by the worker that received the datagram.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "gateway.h"

static const char bye_reason[] = "bye";

static const char *status_word(afsm_status status)
{
    switch (status) {
    case AFSM_OK:
        return "ok";
    case AFSM_ENOTFOUND:
        return "notfound";
    case AFSM_EEXPIRED:
        return "expired";
    default:
        return afsm_status_name(status);
    }
}

static size_t session_answer(afsm_status status, const afsm_stats *s, char *out, size_t size)
{
    int n;
    if (status == AFSM_OK)
        n = snprintf(out, size,
                     "status=ok packets_received=%" PRIu64 " bytes_received=%" PRIu64 " packets_sent=%" PRIu64
                     " bytes_sent=%" PRIu64,
                     s->packets_received, s->bytes_received, s->packets_sent, s->bytes_sent);
    else
        n = snprintf(out, size, "status=%s", status_word(status));
    return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}

/* Reads the final counters, then deletes: the worker that owns the flow
 * (this one, or another reached through the DELETED event) drops it. */
static afsm_status bye(worker *w, const afsm_uuid *connection_id, afsm_stats *final)
{
    afsm_session_info info;
    afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
    afsm_status status = AFSM_OK;
    if (w->gw->opt.mode == GW_MODE_OFF) {
        status = AFSM_ENOTFOUND;
    } else {
        status = afsm_session_get_by_connection(w->gw->engine, connection_id, &info);
        if (status == AFSM_OK)
            status = afsm_session_delete(w->gw->engine, &info.session_id, bye_reason, sizeof(bye_reason) - 1);
    }
    track_forget(w, connection_id);
    if (status == AFSM_OK) {
        *final = info.stats;
        gw_count(&w->counters.bye_closes, 1);
    }
    return status;
}

void control_summary(gateway *gw, char *out, size_t size)
{
    static const char *mode_names[] = {"off", "handles", "lookup"};
    afsm_counts counts = {0};
    uint64_t pinned = 0;
    afsm_engine_counts(gw->engine, &counts);
    afsm_engine_pinned(gw->engine, &pinned);
    /* The process's CPU time, so that a load generator can divide a run's
     * share by its datagrams: the cost per datagram, which the rate alone
     * hides when the kernel's UDP path dominates. */
    struct rusage usage = {0};
    getrusage(RUSAGE_SELF, &usage);
    uint64_t user_us = (uint64_t)usage.ru_utime.tv_sec * 1000000u + (uint64_t)usage.ru_utime.tv_usec;
    uint64_t sys_us = (uint64_t)usage.ru_stime.tv_sec * 1000000u + (uint64_t)usage.ru_stime.tv_usec;
    snprintf(out, size,
             "mode=%s sessions=%" PRIu64 " pinned=%" PRIu64 " datagrams=%" PRIu64 " created=%" PRIu64
             " reopened=%" PRIu64 " bye_closes=%" PRIu64 " expired_events=%" PRIu64 " deleted_events=%" PRIu64
             " expiry_drops=%" PRIu64 " deleted_drops=%" PRIu64 " sweeps=%" PRIu64 " sweep_drops=%" PRIu64
             " send_errors=%" PRIu64 " bad_datagrams=%" PRIu64 " track_errors=%" PRIu64 " cpu_user_us=%" PRIu64
             " cpu_sys_us=%" PRIu64 " process_ns=%" PRIu64,
             mode_names[gw->opt.mode], counts.total, pinned, GW_SUM(gw, datagrams), GW_SUM(gw, created),
             GW_SUM(gw, reopened), GW_SUM(gw, bye_closes),
             atomic_load_explicit(&gw->expired_events, memory_order_relaxed),
             atomic_load_explicit(&gw->deleted_events, memory_order_relaxed), GW_SUM(gw, expiry_drops),
             GW_SUM(gw, deleted_drops), GW_SUM(gw, sweeps), GW_SUM(gw, sweep_drops), GW_SUM(gw, send_errors),
             GW_SUM(gw, bad_datagrams), GW_SUM(gw, track_errors), user_us, sys_us, GW_SUM(gw, process_ns));
}

size_t control_answer(worker *w, const afsm_uuid *connection_id, uint8_t op, uint8_t *out)
{
    wire_header(out, connection_id, (uint8_t)WIRE_ANSWER(op));
    char *text = (char *)out + WIRE_HEADER_BYTES;
    size_t size = WIRE_ANSWER_MAX - WIRE_HEADER_BYTES;
    afsm_stats stats = {0};
    size_t n = 0;
    if (op == WIRE_OP_SUMMARY) {
        control_summary(w->gw, text, size);
        n = strlen(text);
    } else if (op == WIRE_OP_BYE) {
        n = session_answer(bye(w, connection_id, &stats), &stats, text, size);
    } else {
        afsm_session_info info;
        afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
        afsm_status status = w->gw->opt.mode == GW_MODE_OFF
                                 ? AFSM_ENOTFOUND
                                 : afsm_session_get_by_connection(w->gw->engine, connection_id, &info);
        n = session_answer(status, &info.stats, text, size);
    }
    return WIRE_HEADER_BYTES + n;
}
