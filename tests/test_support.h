/*
 * test_support.h: what the cmocka tests share: a virtual clock, an engine
 * opened on it with no reaper thread, create and list-by-user helpers, and
 * the real clock that bounds the threaded tests' waits (deadlines, never
 * sleeps).
 */
#ifndef AFSM_TEST_SUPPORT_H
#define AFSM_TEST_SUPPORT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "afsm.h"

/* The monotonic clock, for deadlines on waits between threads. */
static inline uint64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sessions the engine holds now. */
static inline uint64_t live_sessions(afsm_engine *engine)
{
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    return counts.total;
}

/* For threads other than cmocka's: a failed check there cannot longjmp. */
#define THREAD_CHECK(cond)                                                                                             \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                                                 \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* A storm thread's own xorshift stream, seeded from the clock on first
 * use: each thread draws its own interleavings. */
static inline uint64_t thread_rand(void)
{
    static _Thread_local uint64_t state;
    if (state == 0)
        state = real_ns() | 1;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

/* Spins until *flag >= want or the deadline (seconds) passes; true if reached. */
static inline int spin_until(_Atomic long *flag, long want, unsigned seconds)
{
    uint64_t deadline = real_ns() + (uint64_t)seconds * 1000000000u;
    while (atomic_load_explicit(flag, memory_order_acquire) < want) {
        if (real_ns() > deadline)
            return 0;
    }
    return 1;
}

#define MS  UINT64_C(1000000)
#define SEC (1000 * MS)

typedef struct virtual_clock {
    _Atomic uint64_t now_ns;
} virtual_clock;

static inline uint64_t virtual_clock_read(void *ctx)
{
    return atomic_load_explicit(&((virtual_clock *)ctx)->now_ns, memory_order_relaxed);
}

static inline void virtual_clock_set(virtual_clock *clock, uint64_t now_ns)
{
    atomic_store_explicit(&clock->now_ns, now_ns, memory_order_relaxed);
}

/* The config every virtual-time test engine starts from: defaults, the
 * virtual clock set to 1000 s, a manual reaper. Tests set their own fields
 * on it before opening. */
static inline void virtual_config(virtual_clock *clock, afsm_config *cfg)
{
    assert_int_equal(afsm_config_init(cfg, AFSM_CONFIG_VERSION), AFSM_OK);
    virtual_clock_set(clock, 1000 * SEC);
    cfg->clock = virtual_clock_read;
    cfg->clock_ctx = clock;
    cfg->reaper = AFSM_REAPER_MANUAL;
}

/* An engine in virtual time starting at 1000 s, manual reaper, 100 ms tick. */
static inline afsm_engine *open_virtual_engine(virtual_clock *clock, afsm_config *cfg_out)
{
    afsm_config cfg;
    virtual_config(clock, &cfg);
    cfg.server_addr = "10.0.0.1:7000";
    cfg.server_addr_len = strlen(cfg.server_addr);
    cfg.shard_count = 8;
    if (cfg_out != NULL) {
        cfg.on_event = cfg_out->on_event;
        cfg.event_ctx = cfg_out->event_ctx;
        if (cfg_out->default_timeout_ms)
            cfg.default_timeout_ms = cfg_out->default_timeout_ms;
        if (cfg_out->max_lifetime_ms)
            cfg.max_lifetime_ms = cfg_out->max_lifetime_ms;
        if (cfg_out->shard_count)
            cfg.shard_count = cfg_out->shard_count;
        if (cfg_out->capacity_hint)
            cfg.capacity_hint = cfg_out->capacity_hint;
    }
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    return engine;
}

static inline afsm_create_options make_options(const char *user, const char *ip, afsm_uuid *conn)
{
    afsm_create_options o;
    afsm_create_options_init(&o, AFSM_CREATE_OPTIONS_VERSION);
    o.user_id = user;
    o.user_id_len = strlen(user);
    o.client_ip = ip;
    o.client_ip_len = strlen(ip);
    o.client_port = 54321;
    afsm_uuid_v7(conn);
    o.connection_id = *conn;
    return o;
}

static inline afsm_session_info create_session(afsm_engine *engine, const char *user)
{
    afsm_uuid conn;
    afsm_create_options o = make_options(user, "192.168.1.100", &conn);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
    return info;
}

/* The first page (up to cap, every state) of user's sessions, as
 * afsm_session_list gives it: its status, *count and *total. page[0..cap)
 * must be initialised (afsm_session_info_init). */
static inline afsm_status list_user_page(afsm_engine *engine, const char *user, afsm_session_info *page, size_t cap,
                                         size_t *count, uint64_t *total)
{
    afsm_list_filter f;
    afsm_list_filter_init(&f, AFSM_LIST_FILTER_VERSION);
    f.user_id = user;
    f.user_id_len = strlen(user);
    f.state = AFSM_STATE_ANY;
    f.limit = (uint32_t)cap;
    *count = 0;
    *total = 0;
    return afsm_session_list(engine, &f, page, cap, count, total, NULL);
}

#endif
