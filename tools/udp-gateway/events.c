/*
 * events.c: the engine as a data plane configures it, and what the gateway
 * does with its events.
 *
 * No reaper thread (AFSM_REAPER_MANUAL): worker 0 calls
 * afsm_engine_advance from its own loop, so the engine runs no thread of
 * its own and expiry happens where the gateway decides.
 *
 * The event callback runs on the thread that made the change: worker 0 for
 * every expiry (it advances the wheels), the deleting worker for a bye. It
 * must not touch another worker's flows, so it posts the ended session to
 * every worker's mailbox (mailbox.h explains why every worker, and why the
 * owner releases). It runs outside the engine's locks and may take the
 * mailbox mutexes; it never blocks on anything a worker holds while calling
 * the engine.
 */
#include "gateway.h"

#include <string.h>

static void on_event(void *ctx, const afsm_event *event)
{
    gateway *gw = ctx;
    if (event->type != AFSM_EVENT_EXPIRED && event->type != AFSM_EVENT_DELETED)
        return;
    ended_session item = {
        .session_id = event->session_id,
        .connection_id = event->connection_id,
        .expired = event->type == AFSM_EVENT_EXPIRED,
    };
    atomic_fetch_add_explicit(item.expired ? &gw->expired_events : &gw->deleted_events, 1, memory_order_relaxed);
    /* The handles mode is the only one holding handles; the others only count. */
    if (gw->opt.mode != GW_MODE_HANDLES)
        return;
    for (unsigned i = 0; i < gw->worker_count; i++)
        mailbox_post(&gw->workers[i].box, &item);
}

afsm_status gateway_open_engine(gateway *gw)
{
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.default_timeout_ms = gw->opt.timeout_ms;
    cfg.tick_ms = gw->opt.tick_ms;
    cfg.capacity_hint = gw->opt.capacity;
    cfg.on_event = on_event;
    cfg.event_ctx = gw;
    cfg.log_level = AFSM_LOG_WARN;
    static const char server[] = "udp-gateway";
    cfg.server_addr = server;
    cfg.server_addr_len = sizeof(server) - 1;
    return afsm_engine_open(&cfg, &gw->engine);
}
