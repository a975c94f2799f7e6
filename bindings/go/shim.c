/*
 * shim.c: see shim.h. The hook trampolines forward to the Go functions
 * exported in callbacks.go; the ctx they receive is a runtime/cgo.Handle
 * (an integer), never a Go pointer.
 */
#include <stdatomic.h>
#include <string.h>

#include "shim.h"
#include "_cgo_export.h"

/* How many hook calls are running on this thread. A C-to-Go callback runs
 * on the thread of the C call that fired it, and the goroutine stays locked
 * to that thread until the callback returns, so a Close made from inside a
 * hook sees its own thread's count. */
static _Thread_local int callback_depth;

int afsmgo_in_callback(void)
{
    return callback_depth;
}

static void tramp_event(void *ctx, const afsm_event *event)
{
    callback_depth++;
    afsmgoEvent((uintptr_t)ctx, (afsm_event *)event);
    callback_depth--;
}

static void tramp_log(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t n)
{
    callback_depth++;
    afsmgoLog((uintptr_t)ctx, level, (char *)message, (afsm_log_field *)fields, n);
    callback_depth--;
}

static uint64_t tramp_clock(void *ctx)
{
    callback_depth++;
    uint64_t now = afsmgoClock((uintptr_t)ctx);
    callback_depth--;
    return now;
}

afsm_status afsmgo_open(const afsm_config *cfg, const char *server_addr, size_t server_addr_len, const uint8_t *key,
                        size_t key_len, const char *key_file, size_t key_file_len, uintptr_t cb, int want,
                        afsm_engine **out)
{
    afsm_config c = *cfg;
    c.server_addr = server_addr_len != 0 ? server_addr : NULL;
    c.server_addr_len = server_addr_len;
    c.key = key;
    c.key_len = key_len;
    c.key_file = key_file;
    c.key_file_len = key_file_len;
    if (want & AFSMGO_WANT_EVENT) {
        c.on_event = tramp_event;
        c.event_ctx = (void *)cb;
    }
    if (want & AFSMGO_WANT_LOG) {
        c.on_log = tramp_log;
        c.log_ctx = (void *)cb;
    }
    if (want & AFSMGO_WANT_CLOCK) {
        c.clock = tramp_clock;
        c.clock_ctx = (void *)cb;
    }
    return afsm_engine_open(&c, out);
}

static afsm_uuid make_uuid(uint64_t hi, uint64_t lo)
{
    afsm_uuid u;
    for (int i = 0; i < 8; i++) {
        u.bytes[i] = (uint8_t)(hi >> (56 - 8 * i));
        u.bytes[8 + i] = (uint8_t)(lo >> (56 - 8 * i));
    }
    return u;
}

static void fill_kv(afsm_kv *kv, const char *buf, const size_t *lens, size_t nkv)
{
    for (size_t i = 0; i < nkv; i++) {
        kv[i].key = buf;
        kv[i].key_len = lens[2 * i];
        buf += lens[2 * i];
        kv[i].value = buf;
        kv[i].value_len = lens[2 * i + 1];
        buf += lens[2 * i + 1];
    }
}

afsm_status afsmgo_create(afsm_engine *e, const char *buf, size_t user_len, size_t ip_len, const size_t *lens,
                          size_t nkv, uint32_t port, uint64_t conn_hi, uint64_t conn_lo, uint64_t timeout_ms,
                          uint32_t token_flags, afsm_session_info *out, char *tok, size_t *tok_len)
{
    if (nkv > AFSM_METADATA_KEYS_MAX)
        return AFSM_ETOOLONG;
    afsm_kv kv[AFSM_METADATA_KEYS_MAX];
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = buf;
    o.user_id_len = user_len;
    o.client_ip = buf + user_len;
    o.client_ip_len = ip_len;
    o.client_port = port;
    o.connection_id = make_uuid(conn_hi, conn_lo);
    o.timeout_ms = timeout_ms;
    fill_kv(kv, buf + user_len + ip_len, lens, nkv);
    o.metadata = nkv != 0 ? kv : NULL;
    o.metadata_count = nkv;
    afsm_status s = afsm_session_create(e, &o, out);
    if (s != AFSM_OK)
        return s;
    s = afsm_token_issue(e, &out->session_id, token_flags, tok, AFSM_TOKEN_SIZE, tok_len);
    if (s != AFSM_OK) {
        static const char reason[] = "token issue failed";
        afsm_session_delete(e, &out->session_id, reason, sizeof(reason) - 1);
    }
    return s;
}

afsm_status afsmgo_token(uintptr_t ep, uint64_t id_hi, uint64_t id_lo, uint32_t flags, int rotate, char *tok,
                         size_t *tok_len)
{
    afsm_engine *e = (afsm_engine *)ep;
    afsm_uuid id = make_uuid(id_hi, id_lo);
    return rotate ? afsm_token_rotate(e, &id, flags, tok, AFSM_TOKEN_SIZE, tok_len)
                  : afsm_token_issue(e, &id, flags, tok, AFSM_TOKEN_SIZE, tok_len);
}

afsm_status afsmgo_restore(afsm_engine *e, const afsm_session_info *info, const char *buf, const size_t *lens,
                           size_t nkv)
{
    if (nkv > AFSM_METADATA_KEYS_MAX)
        return AFSM_ETOOLONG;
    afsm_kv kv[AFSM_METADATA_KEYS_MAX];
    fill_kv(kv, buf, lens, nkv);
    return afsm_session_restore(e, info, nkv != 0 ? kv : NULL, nkv);
}

/* Test-only (Manager.deleteBeforeMetadata, for the shared case table): the
 * next test_delete_left metadata reads on test_delete_engine delete their
 * session first, which puts a delete deterministically between a call's
 * info read and its metadata read (two C calls in one crossing, which no Go
 * code can reach in between). NULL outside that test: one relaxed load per
 * metadata read. */
static _Atomic(afsm_engine *) test_delete_engine;
static _Atomic int test_delete_left;

int afsmgo_test_delete_before_metadata(afsm_engine *e, int n)
{
    int left = atomic_exchange(&test_delete_left, n);
    atomic_store(&test_delete_engine, n > 0 ? e : NULL);
    return left;
}

static afsm_status read_metadata(afsm_engine *e, const afsm_uuid *id, char *md, size_t md_cap, size_t *needed)
{
    if (atomic_load_explicit(&test_delete_engine, memory_order_relaxed) == e) {
        if (atomic_fetch_sub(&test_delete_left, 1) == 1)
            atomic_store(&test_delete_engine, NULL);
        afsm_session_delete(e, id, NULL, 0);
    }
    return afsm_session_get_metadata(e, id, md, md_cap, needed, NULL);
}

static afsm_status fetch_metadata(afsm_engine *e, const afsm_uuid *id, char *md, size_t md_cap, size_t *md_len)
{
    size_t needed = 0;
    afsm_status s = read_metadata(e, id, md_cap != 0 ? md : NULL, md_cap, &needed);
    *md_len = needed;
    return s;
}

afsm_status afsmgo_get(uintptr_t ep, uint64_t id_hi, uint64_t id_lo, int by_connection, afsm_session_info *out,
                       char *md, size_t md_cap, size_t *md_len, afsm_status *md_status)
{
    afsm_engine *e = (afsm_engine *)ep;
    afsm_uuid id = make_uuid(id_hi, id_lo);
    afsm_status s = by_connection ? afsm_session_get_by_connection(e, &id, out) : afsm_session_get(e, &id, out);
    *md_len = 0;
    *md_status = AFSM_OK;
    if (s != AFSM_OK || out->metadata_count == 0)
        return s;
    *md_status = fetch_metadata(e, &out->session_id, md, md_cap, md_len);
    return s;
}

afsm_status afsmgo_validate(uintptr_t ep, const char *buf, size_t tok_len, size_t ip_len, int has_ip,
                            afsm_session_info *out, char *md, size_t md_cap, size_t *md_len, afsm_status *md_status)
{
    afsm_engine *e = (afsm_engine *)ep;
    afsm_status s = afsm_token_validate(e, buf, tok_len, has_ip ? buf + tok_len : NULL, ip_len, out);
    *md_len = 0;
    *md_status = AFSM_OK;
    if (s != AFSM_OK || out->metadata_count == 0)
        return s;
    *md_status = fetch_metadata(e, &out->session_id, md, md_cap, md_len);
    return s;
}

void afsmgo_metadata_many(afsm_engine *e, const afsm_session_info *infos, size_t n, char *md, size_t md_cap,
                          size_t *offs, size_t *lens, afsm_status *statuses)
{
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        offs[i] = used;
        lens[i] = 0;
        statuses[i] = AFSM_OK;
        if (infos[i].metadata_count == 0)
            continue;
        size_t needed = 0;
        size_t room = md_cap - used;
        afsm_status s = read_metadata(e, &infos[i].session_id, room != 0 ? md + used : NULL, room, &needed);
        statuses[i] = s;
        lens[i] = needed;
        if (s == AFSM_OK || s == AFSM_EEXPIRED)
            used += needed;
    }
}

afsm_status afsmgo_update(afsm_engine *e, uint64_t id_hi, uint64_t id_lo, uint32_t fields, uint32_t state,
                          const char *buf, const size_t *lens, size_t nkv, const afsm_stats *stats,
                          afsm_session_info *out, char *md, size_t md_cap, size_t *md_len, afsm_status *md_status)
{
    *md_len = 0;
    *md_status = AFSM_OK;
    if (nkv > AFSM_METADATA_KEYS_MAX)
        return AFSM_ETOOLONG;
    afsm_uuid id = make_uuid(id_hi, id_lo);
    afsm_kv kv[AFSM_METADATA_KEYS_MAX];
    afsm_update u = AFSM_UPDATE_INIT;
    u.fields = fields;
    u.state = state;
    fill_kv(kv, buf, lens, nkv);
    u.metadata = nkv != 0 ? kv : NULL;
    u.metadata_count = nkv;
    if (stats != NULL)
        u.stats = *stats;
    int closing = (fields & AFSM_UPDATE_STATE) && state == AFSM_STATE_CLOSED;
    if (closing)
        *md_status = fetch_metadata(e, &id, md, md_cap, md_len);
    afsm_status s = afsm_session_update(e, &id, &u, out);
    if (s == AFSM_OK && !closing && out->metadata_count != 0)
        *md_status = fetch_metadata(e, &id, md, md_cap, md_len);
    return s;
}

int64_t afsmgo_heartbeat(uintptr_t e, uint64_t id_hi, uint64_t id_lo)
{
    afsm_uuid id = make_uuid(id_hi, id_lo);
    uint64_t remaining_ms = 0;
    afsm_status s = afsm_session_heartbeat((afsm_engine *)e, &id, &remaining_ms);
    return s != AFSM_OK ? (int64_t)s : (int64_t)(remaining_ms & INT64_MAX);
}

afsm_status afsmgo_add_stats(uintptr_t e, uint64_t id_hi, uint64_t id_lo, uint64_t packets_sent,
                             uint64_t packets_received, uint64_t bytes_sent, uint64_t bytes_received,
                             uint64_t retransmissions, uint32_t rtt_ms)
{
    afsm_uuid id = make_uuid(id_hi, id_lo);
    afsm_stats d = {packets_sent, packets_received, bytes_sent, bytes_received, retransmissions, rtt_ms, 0};
    return afsm_session_add_stats((afsm_engine *)e, &id, &d);
}

int64_t afsmgo_handle_heartbeat(uintptr_t h)
{
    uint64_t remaining_ms = 0;
    afsm_status s = afsm_handle_heartbeat((afsm_handle *)h, &remaining_ms);
    return s != AFSM_OK ? (int64_t)s : (int64_t)(remaining_ms & INT64_MAX);
}

afsm_status afsmgo_handle_add_stats(uintptr_t h, uint64_t packets_sent, uint64_t packets_received, uint64_t bytes_sent,
                                    uint64_t bytes_received, uint64_t retransmissions, uint32_t rtt_ms)
{
    afsm_stats d = {packets_sent, packets_received, bytes_sent, bytes_received, retransmissions, rtt_ms, 0};
    return afsm_handle_add_stats((afsm_handle *)h, &d);
}

afsm_status afsmgo_delete(afsm_engine *e, uint64_t id_hi, uint64_t id_lo, const char *reason, size_t reason_len)
{
    afsm_uuid id = make_uuid(id_hi, id_lo);
    return afsm_session_delete(e, &id, reason_len != 0 ? reason : NULL, reason_len);
}

afsm_status afsmgo_pin(afsm_engine *e, uint64_t id_hi, uint64_t id_lo, int by_connection, afsm_handle **out)
{
    afsm_uuid id = make_uuid(id_hi, id_lo);
    return by_connection ? afsm_handle_pin_by_connection(e, &id, out) : afsm_handle_pin(e, &id, out);
}

afsm_status afsmgo_list(afsm_engine *e, uint32_t state, const char *user_id, size_t user_id_len, int has_user,
                        int64_t created_after_ns, int64_t created_before_ns, const afsm_uuid *cursor, uint64_t offset,
                        uint32_t limit, afsm_session_info *out, size_t *count, uint64_t *total, afsm_uuid *next_cursor)
{
    afsm_list_filter f = AFSM_LIST_FILTER_INIT;
    f.state = state;
    if (has_user) {
        /* An empty user id still filters (and gets the engine's verdict). */
        f.user_id = user_id != NULL ? user_id : "";
        f.user_id_len = user_id_len;
    }
    f.created_after_ns = created_after_ns;
    f.created_before_ns = created_before_ns;
    f.cursor = *cursor;
    f.offset = offset;
    f.limit = limit;
    return afsm_session_list(e, &f, out, limit, count, total, next_cursor);
}

void afsmgo_info_init_many(afsm_session_info *infos, size_t n)
{
    for (size_t i = 0; i < n; i++)
        infos[i].version = AFSM_SESSION_INFO_VERSION;
}
