/*
 * afsm_demo: drives the engine the way the old service's README example
 * did (create, get, update, heartbeat, list, delete) plus what it could not
 * do (lookup by connection, pinned handles, log out everywhere, expiry in
 * virtual time), and prints what happened. The README's first command runs
 * it until the daemon exists.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "afsm.h"

static _Atomic uint64_t virtual_now_ns = UINT64_C(1000000000000);

static uint64_t virtual_clock(void *ctx)
{
    (void)ctx;
    return atomic_load(&virtual_now_ns);
}

static void on_event(void *ctx, const afsm_event *ev)
{
    (void)ctx;
    static const char *names[] = {"?", "created", "state changed", "expired", "deleted"};
    char id[AFSM_UUID_STRING_SIZE];
    afsm_uuid_format(&ev->session_id, id);
    printf("  event: %-13s %s user=%.*s state=%s%s%.*s\n", names[ev->type], id, (int)ev->user_id_len, ev->user_id,
           afsm_state_name((int)ev->new_state), ev->reason ? " reason=" : "", (int)ev->reason_len,
           ev->reason ? ev->reason : "");
}

static int check(afsm_status status, const char *what)
{
    if (status != AFSM_OK) {
        fprintf(stderr, "%s failed: %s (%s)\n", what, afsm_strerror(status), afsm_status_name(status));
        return 1;
    }
    return 0;
}

static void print_session(const char *label, const afsm_session_info *s)
{
    char id[AFSM_UUID_STRING_SIZE], conn[AFSM_UUID_STRING_SIZE], ip[AFSM_IP_STRING_SIZE];
    afsm_uuid_format(&s->session_id, id);
    afsm_uuid_format(&s->connection_id, conn);
    afsm_ip_format(&s->client_ip, ip);
    printf("%s: id=%s user=%s conn=%s client=%s:%u server=%s state=%s metadata=%u keys "
           "ttl=%" PRId64 "s packets=%" PRIu64 "/%" PRIu64 " rtt=%ums\n",
           label, id, s->user_id, conn, ip, s->client_port, s->server_addr, afsm_state_name((int)s->state),
           s->metadata_count, (s->expires_at_ns - s->last_active_at_ns) / 1000000000, s->stats.packets_sent,
           s->stats.packets_received, s->stats.current_rtt_ms);
}

int main(void)
{
    printf("afsm %s demo (virtual clock, manual reaper)\n", afsm_version());
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.clock = virtual_clock;
    cfg.on_event = on_event;
    cfg.default_timeout_ms = 60 * 1000;
    cfg.server_addr = "127.0.0.1:50051";
    cfg.server_addr_len = strlen(cfg.server_addr);
    afsm_engine *engine;
    if (check(afsm_engine_open(&cfg, &engine), "open"))
        return 1;

    afsm_uuid conn;
    afsm_uuid_v7(&conn);
    afsm_kv metadata[] = {{"device", 6, "mobile", 6}, {"version", 7, "1.0.0", 5}};
    afsm_create_options create = AFSM_CREATE_OPTIONS_INIT;
    create.user_id = "user123";
    create.user_id_len = 7;
    create.client_ip = "192.168.1.100";
    create.client_ip_len = strlen(create.client_ip);
    create.client_port = 54321;
    create.connection_id = conn;
    create.metadata = metadata;
    create.metadata_count = 2;
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    if (check(afsm_session_create(engine, &create, &s), "create"))
        return 1;
    print_session("created", &s);

    afsm_session_info got = AFSM_SESSION_INFO_INIT;
    if (check(afsm_session_get_by_connection(engine, &conn, &got), "get by connection"))
        return 1;
    print_session("by connection", &got);

    afsm_update update = AFSM_UPDATE_INIT;
    update.fields = AFSM_UPDATE_STATE;
    update.state = AFSM_STATE_ACTIVE;
    if (check(afsm_session_update(engine, &s.session_id, &update, &got), "update"))
        return 1;
    update.state = AFSM_STATE_CONNECTING;
    printf("active -> connecting refused: %s\n",
           afsm_status_name(afsm_session_update(engine, &s.session_id, &update, NULL)));

    afsm_handle *handle;
    if (check(afsm_handle_pin(engine, &s.session_id, &handle), "pin"))
        return 1;
    for (int packet = 0; packet < 1000; packet++) {
        afsm_stats delta = {1, 1, 1200, 64, 0, 0, 0};
        afsm_handle_add_stats(handle, &delta);
    }
    afsm_stats rtt = {0, 0, 0, 0, 0, 23, 0};
    afsm_handle_add_stats(handle, &rtt);
    afsm_handle_release(handle);

    /* Three more sessions of the same user, never heartbeated. */
    for (int i = 0; i < 3; i++) {
        afsm_uuid_v7(&create.connection_id);
        create.metadata_count = 0;
        check(afsm_session_create(engine, &create, NULL), "create");
    }

    atomic_fetch_add(&virtual_now_ns, UINT64_C(45) * 1000000000);
    uint64_t remaining_ms;
    if (check(afsm_session_heartbeat(engine, &s.session_id, &remaining_ms), "heartbeat"))
        return 1;
    printf("heartbeat after 45 s: %" PRIu64 " ms remaining\n", remaining_ms);
    afsm_session_get(engine, &s.session_id, &got);
    print_session("after traffic", &got);

    afsm_list_filter filter = AFSM_LIST_FILTER_INIT;
    filter.user_id = "user123";
    filter.user_id_len = 7;
    filter.limit = 2;
    afsm_session_info page[2] = {AFSM_SESSION_INFO_INIT, AFSM_SESSION_INFO_INIT};
    size_t count;
    uint64_t total;
    afsm_uuid next;
    check(afsm_session_list(engine, &filter, page, 2, &count, &total, &next), "list");
    printf("list user123: %zu of %" PRIu64 " on the first page (creation order)\n", count, total);

    /* 30 s later (75 s in) the three silent sessions are past their 60 s
     * timeout; the one heartbeated at 45 s lives until 105 s. */
    atomic_fetch_add(&virtual_now_ns, UINT64_C(30) * 1000000000);
    size_t expired;
    afsm_engine_advance(engine, atomic_load(&virtual_now_ns), &expired);
    printf("advance 30 s: %zu expired\n", expired);

    size_t deleted;
    check(afsm_session_delete_by_user(engine, "user123", 7, "logout everywhere", 17, &deleted), "delete user");
    printf("log out everywhere: %zu deleted\n", deleted);
    afsm_counts counts;
    afsm_engine_counts(engine, &counts);
    printf("sessions left: %" PRIu64 "\n", counts.total);
    return check(afsm_engine_close(engine), "close");
}
