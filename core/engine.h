/*
 * engine.h: the engine handle behind the public functions, shared by
 *
 *   engine.c    open, close, the reaper thread, time, logging
 *   manager.c   sessions: checks at the boundary, then the store
 *   tokens.c    tokens and the key ring
 *   metrics.c   metrics snapshot and Prometheus text
 *
 * Shared state: default_timeout_ns is a relaxed atomic (any thread may set
 * it); the reaper's stop flag is under reaper_mutex; the token counters are
 * striped atomics. Nothing else changes after open.
 */
#ifndef AFSM_ENGINE_H
#define AFSM_ENGINE_H

#include <ck_md.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "afsm.h"
#include "keyring.h"
#include "store.h"

#define NS_PER_MS UINT64_C(1000000)
/* Timeouts beyond ten years are surely a unit mistake, and keep every
 * deadline far from overflowing 63 bits of nanoseconds. */
#define TIMEOUT_MS_MAX (UINT64_C(10) * 365 * 24 * 3600 * 1000)
/* A session's rolling timeout is kept in 32 bits of milliseconds (the
 * record's size class): at most ~49.7 days. */
#define SESSION_TIMEOUT_MS_MAX UINT64_C(0xffffffff)

/* Token validations are counted from any thread without a lock: one
 * counter per stripe, each stripe on its own cache line, a thread always
 * on the same stripe. */
#define TOKEN_STRIPES 16
typedef struct token_stripe {
    _Atomic uint64_t results[AFSM_TOKEN_RESULT_COUNT];
} __attribute__((aligned(CK_MD_CACHELINE))) token_stripe;

struct afsm_engine {
    store *st;
    keyring *keys;
    afsm_config config;
    char server_addr[AFSM_SERVER_ADDR_MAX + 1];
    _Atomic uint64_t default_timeout_ns;
    token_stripe token_counts[TOKEN_STRIPES];

    int reaper_running;
    pthread_t reaper;
    pthread_mutex_t reaper_mutex;
    pthread_cond_t reaper_wakeup;
    int reaper_stop; /* under reaper_mutex */
};

/* Sends one line to the log callback if its level is enabled. */
void engine_log(const afsm_engine *engine, int level, const char *message, const afsm_log_field *fields,
                size_t field_count);
static inline int engine_logs(const afsm_engine *engine, int level)
{
    return engine->config.on_log != NULL && level >= (int)engine->config.log_level;
}

/* Logs a heartbeat's remaining time (debug), as the old service did. */
void engine_log_remaining(const afsm_engine *engine, const afsm_uuid *id, uint64_t remaining_ms);

/* Advances the store and logs what expired (the reaper and afsm_engine_advance). */
afsm_status engine_advance(afsm_engine *engine, uint64_t now_ns, size_t *expired);

/* Boundary checks shared by the public functions. */
afsm_status check_user_id(const char *user_id, size_t len);
afsm_status check_info(const afsm_session_info *info);

static inline uint64_t ns_to_ms_ceil(uint64_t ns)
{
    return ns / NS_PER_MS + (ns % NS_PER_MS != 0);
}

#endif
