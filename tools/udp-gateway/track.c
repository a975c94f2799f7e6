/*
 * track.c: what the gateway does for one data datagram in each mode, and
 * how it lets go of flows whose session ended.
 *
 *   off      the flow map only (every gateway finds its connection somehow)
 *   handles  the first datagram of a connection creates its session and
 *            pins a handle, kept in the flow; every datagram then costs a
 *            heartbeat and a stats add through it: atomics, no lookup
 *   lookup   no flow map: per datagram, find the session by connection id
 *            (a copy), then heartbeat and add stats by session id (two
 *            more hash probes): what an integration without handles does
 *
 * Only the owning worker calls these (flow maps and handles are its own).
 * A session can end while its flow holds a handle (expiry on worker 0, a
 * bye on another worker): the handle then answers AFSM_EEXPIRED or
 * AFSM_ENOTFOUND, never touches freed memory, and the flow is dropped
 * either when the mailbox says so or when the next datagram notices.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "gateway.h"

static const char stale_reason[] = "expired";

static afsm_stats traffic(uint32_t len)
{
    /* One datagram in, its echo out (wire.h: counted when handed over). */
    afsm_stats d = {0};
    d.packets_received = 1;
    d.bytes_received = len;
    d.packets_sent = 1;
    d.bytes_sent = len;
    return d;
}

/* Creates the connection's session in state active. The peer's address is
 * its client address and, for want of a login on plain UDP, its user. */
static afsm_status create_session(worker *w, const afsm_uuid *connection_id, const struct sockaddr_storage *peer,
                                  afsm_session_info *info)
{
    char ip[INET6_ADDRSTRLEN] = "0.0.0.0", user[INET6_ADDRSTRLEN + 8];
    unsigned port = 0;
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)peer;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        port = ntohs(in->sin_port);
    }
    int user_len = snprintf(user, sizeof(user), "%s:%u", ip, port);
    afsm_create_options o;
    afsm_create_options_init(&o, AFSM_CREATE_OPTIONS_VERSION);
    o.user_id = user;
    o.user_id_len = (size_t)user_len;
    o.client_ip = ip;
    o.client_ip_len = strlen(ip);
    o.client_port = port;
    o.connection_id = *connection_id;
    afsm_status status = afsm_session_create(w->gw->engine, &o, info);
    if (status != AFSM_OK)
        return status;
    gw_count(&w->counters.created, 1);
    afsm_update u;
    afsm_update_init(&u, AFSM_UPDATE_VERSION);
    u.fields = AFSM_UPDATE_STATE;
    u.state = AFSM_STATE_ACTIVE;
    /* A failure here leaves it "connecting": tracked all the same. */
    afsm_session_update(w->gw->engine, &info->session_id, &u, NULL);
    return AFSM_OK;
}

/* A connection that comes back after its deadline, before the wheel has
 * reaped its session (at most a tick): end the old session now so that
 * the new traffic gets a new one. */
static void end_stale(worker *w, const afsm_uuid *connection_id)
{
    afsm_session_info info;
    afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
    if (afsm_session_get_by_connection(w->gw->engine, connection_id, &info) == AFSM_EEXPIRED)
        afsm_session_delete(w->gw->engine, &info.session_id, stale_reason, sizeof(stale_reason) - 1);
}

/* The connection's session, created if need be, pinned. */
static afsm_status pin_session(worker *w, const afsm_uuid *connection_id, const struct sockaddr_storage *peer,
                               afsm_handle **out)
{
    afsm_status status = AFSM_ENOTFOUND;
    for (int attempt = 0; attempt < 3 && status != AFSM_OK; attempt++) {
        afsm_session_info info;
        afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
        status = create_session(w, connection_id, peer, &info);
        /* EEXISTS: another worker (or an earlier flow of ours) created it. */
        if (status != AFSM_OK && status != AFSM_EEXISTS)
            return status;
        status = afsm_handle_pin_by_connection(w->gw->engine, connection_id, out);
        if (status == AFSM_EEXPIRED)
            end_stale(w, connection_id);
    }
    return status;
}

static void drop_flow(worker *w, flow *f)
{
    afsm_handle_release(f->handle);
    flowmap_remove(&w->flows, f);
}

static flow *open_flow(worker *w, const afsm_uuid *connection_id, const struct sockaddr_storage *peer)
{
    afsm_handle *h = NULL;
    if (w->gw->opt.mode == GW_MODE_HANDLES && pin_session(w, connection_id, peer, &h) != AFSM_OK)
        return NULL;
    flow *f = flowmap_insert(&w->flows, connection_id);
    if (f == NULL) {
        afsm_handle_release(h);
        return NULL;
    }
    f->handle = h;
    if (h != NULL)
        afsm_handle_session_id(h, &f->session_id);
    return f;
}

static afsm_status touch(afsm_handle *h, const afsm_stats *delta)
{
    afsm_status status = afsm_handle_heartbeat(h, NULL);
    return status == AFSM_OK ? afsm_handle_add_stats(h, delta) : status;
}

static int track_handles(worker *w, const afsm_uuid *connection_id, uint32_t len, const struct sockaddr_storage *peer)
{
    afsm_stats delta = traffic(len);
    flow *f = flowmap_find(&w->flows, connection_id);
    if (f == NULL && (f = open_flow(w, connection_id, peer)) == NULL)
        return -1;
    if (touch(f->handle, &delta) == AFSM_OK)
        return 0;
    /* Its session ended under us (expired, or closed by another worker)
     * and the mailbox has not told us yet: start over once. */
    drop_flow(w, f);
    gw_count(&w->counters.reopened, 1);
    f = open_flow(w, connection_id, peer);
    return f != NULL && touch(f->handle, &delta) == AFSM_OK ? 0 : -1;
}

static int track_lookup(worker *w, const afsm_uuid *connection_id, uint32_t len, const struct sockaddr_storage *peer)
{
    afsm_engine *engine = w->gw->engine;
    afsm_stats delta = traffic(len);
    afsm_session_info info;
    afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
    afsm_status status = afsm_session_get_by_connection(engine, connection_id, &info);
    for (int attempt = 0; attempt < 3 && status != AFSM_OK; attempt++) {
        if (status == AFSM_EEXPIRED)
            end_stale(w, connection_id);
        else if (status != AFSM_ENOTFOUND)
            return -1;
        status = create_session(w, connection_id, peer, &info);
        if (status == AFSM_EEXISTS)
            status = afsm_session_get_by_connection(engine, connection_id, &info);
    }
    if (status != AFSM_OK)
        return -1;
    status = afsm_session_heartbeat(engine, &info.session_id, NULL);
    if (status == AFSM_OK)
        status = afsm_session_add_stats(engine, &info.session_id, &delta);
    return status == AFSM_OK ? 0 : -1;
}

int track_datagram(worker *w, const afsm_uuid *connection_id, uint32_t len, const struct sockaddr_storage *peer)
{
    switch (w->gw->opt.mode) {
    case GW_MODE_HANDLES:
        return track_handles(w, connection_id, len, peer);
    case GW_MODE_LOOKUP:
        return track_lookup(w, connection_id, len, peer);
    case GW_MODE_OFF:
        break;
    }
    if (flowmap_find(&w->flows, connection_id) == NULL && open_flow(w, connection_id, peer) == NULL)
        return -1;
    return 0;
}

void track_forget(worker *w, const afsm_uuid *connection_id)
{
    flow *f = flowmap_find(&w->flows, connection_id);
    if (f != NULL)
        drop_flow(w, f);
}

/* After a mailbox overflow: ask the engine about every flow. Removal
 * shifts later entries back into the hole, so a dropped slot is looked at
 * again before moving on. */
static void sweep(worker *w)
{
    afsm_session_info info;
    afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
    gw_count(&w->counters.sweeps, 1);
    for (size_t i = 0; i <= w->flows.mask;) {
        flow *f = &w->flows.slots[i];
        afsm_status status = AFSM_OK;
        if (f->handle != NULL)
            status = afsm_session_get(w->gw->engine, &f->session_id, &info);
        if (status == AFSM_ENOTFOUND || status == AFSM_EEXPIRED) {
            drop_flow(w, f);
            gw_count(&w->counters.sweep_drops, 1);
        } else {
            i++;
        }
    }
}

void track_drop_ended(worker *w)
{
    int overflowed = 0;
    size_t n = mailbox_take(&w->box, w->taken, &overflowed);
    for (size_t i = 0; i < n; i++) {
        const ended_session *e = &w->taken[i];
        flow *f = flowmap_find(&w->flows, &e->connection_id);
        /* The flow may already hold a newer session of the same
         * connection (reopened above): only the ended one goes. */
        if (f == NULL || memcmp(&f->session_id, &e->session_id, sizeof(afsm_uuid)) != 0)
            continue;
        drop_flow(w, f);
        gw_count(e->expired ? &w->counters.expiry_drops : &w->counters.deleted_drops, 1);
    }
    if (overflowed)
        sweep(w);
}

void track_release_all(worker *w)
{
    for (size_t i = 0; i <= w->flows.mask; i++)
        afsm_handle_release(w->flows.slots[i].handle);
    flowmap_free(&w->flows);
}
