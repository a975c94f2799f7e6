/*
 * event_ledger.h: what the expiry and event-order tests share
 * (test_review15exp.c, test_event_order.c): the event ledger, which checks
 * that every session id's events form valid lives (one line per id: each
 * event once, nothing after EXPIRED/DELETED, IDLE reported before it is
 * left), table and slab accounting, and engines on a virtual clock.
 */
#ifndef AFSM_TESTS_EVENT_LEDGER_H
#define AFSM_TESTS_EVENT_LEDGER_H

#include "test_support.h"

#include <pthread.h>
#include <stdlib.h>

#include "engine.h"
#include "mem/mem_store.h"
#include "mem/shard.h"
#include "mem/slab.h"
#include "mem/table.h"
#include "mem_inspect.h"

/* ---- table accounting (only with no other thread in the engine) --------- */

/* Keys left in every shard's session, connection and user tables: a user's
 * entry leaves with its last session, not at close. */
static inline uint64_t table_keys(afsm_engine *engine)
{
    mem_store *ms = (mem_store *)engine->st;
    uint64_t n = 0;
    for (unsigned i = 0; i <= ms->shard_mask; i++) {
        shard *sh = &ms->shards[i];
        n += atomic_load(&sh->sessions.count) + atomic_load(&sh->connections.count) + atomic_load(&sh->users.count);
    }
    return n;
}

/* ---- the event ledger: one line per session id -------------------------- */

#define LEDGER_SLOTS (1u << 17)

typedef struct ledger_line {
    afsm_uuid id;
    int used;
    int created;
    int idle; /* reported IDLE and not woken since */
    int idle_ever;
    int idle_events; /* ACTIVE -> IDLE events */
    int ended_idle;  /* its EXPIRED/DELETED says IDLE */
    int terminal;    /* EXPIRED or DELETED events */
    int late;        /* events after the terminal one, on its thread */
    uint32_t terminal_type;
    pthread_t terminal_thread;
} ledger_line;

typedef struct ledger {
    pthread_mutex_t lock;
    ledger_line *lines;
    long violations;
    char first[200];
    uint64_t by_type[5];  /* events of each afsm_event_type */
    uint64_t idle_events; /* ACTIVE -> IDLE */
} ledger;

static inline void ledger_init(ledger *l)
{
    pthread_mutex_init(&l->lock, NULL);
    l->lines = calloc(LEDGER_SLOTS, sizeof(*l->lines));
    assert_non_null(l->lines);
    l->violations = 0;
    l->first[0] = '\0';
    memset(l->by_type, 0, sizeof(l->by_type));
    l->idle_events = 0;
}

static inline void ledger_free(ledger *l)
{
    free(l->lines);
    pthread_mutex_destroy(&l->lock);
}

/* Lock held. */
static inline ledger_line *ledger_line_of(ledger *l, const afsm_uuid *id)
{
    uint64_t h;
    memcpy(&h, id->bytes + 8, sizeof(h));
    for (uint32_t i = (uint32_t)(h * UINT64_C(0x9e3779b97f4a7c15) >> 40) & (LEDGER_SLOTS - 1);;
         i = (i + 1) & (LEDGER_SLOTS - 1)) {
        ledger_line *line = &l->lines[i];
        if (!line->used) {
            line->used = 1;
            line->id = *id;
            return line;
        }
        if (memcmp(&line->id, id, sizeof(*id)) == 0)
            return line;
    }
}

static inline void ledger_violation(ledger *l, const char *what, const afsm_event *ev)
{
    if (l->violations++ == 0)
        snprintf(l->first, sizeof(l->first), "%s (event type %u, state %u -> %u)", what, ev->type, ev->old_state,
                 ev->new_state);
}

static inline void ledger_record(ledger *l, const afsm_event *ev)
{
    pthread_mutex_lock(&l->lock);
    ledger_line *line = ledger_line_of(l, &ev->session_id);
    if (ev->type < 5)
        l->by_type[ev->type]++;
    if (ev->type == AFSM_EVENT_STATE_CHANGED && ev->new_state == AFSM_STATE_IDLE)
        l->idle_events++;
    /* Only on one thread are events ordered: another thread's CREATED or
     * update may be delivered after the reaper's EXPIRED (afsm.h). */
    if (line->terminal && pthread_equal(line->terminal_thread, pthread_self())) {
        line->late++;
        ledger_violation(l, "an event after the session's EXPIRED/DELETED", ev);
    }
    switch (ev->type) {
    case AFSM_EVENT_CREATED:
        line->created++;
        break;
    case AFSM_EVENT_STATE_CHANGED:
        if (ev->new_state == AFSM_STATE_IDLE)
            line->idle = line->idle_ever = 1, line->idle_events++;
        else if (ev->old_state == AFSM_STATE_IDLE)
            line->idle = 0;
        break;
    case AFSM_EVENT_EXPIRED:
    case AFSM_EVENT_DELETED:
        line->terminal++;
        line->terminal_type = ev->type;
        line->terminal_thread = pthread_self();
        /* Gone while IDLE: its IDLE event must come (before this one when
         * on this thread: the late check above; another thread's may
         * arrive after it). */
        line->ended_idle = ev->new_state == AFSM_STATE_IDLE;
        break;
    default:
        ledger_violation(l, "unknown event type", ev);
    }
    pthread_mutex_unlock(&l->lock);
}

/* Every session created ended exactly once. */
static inline void ledger_check_all_ended(ledger *l)
{
    if (l->violations != 0)
        fail_msg("%ld event violation(s); first: %s", l->violations, l->first);
    size_t created = 0;
    for (uint32_t i = 0; i < LEDGER_SLOTS; i++) {
        ledger_line *line = &l->lines[i];
        if (!line->used)
            continue;
        if (line->created != 1)
            fail_msg("a session with %d CREATED events", line->created);
        if (line->terminal != 1)
            fail_msg("a session with %d EXPIRED/DELETED events (want exactly 1)", line->terminal);
        if (line->ended_idle && !line->idle_ever)
            fail_msg("a session gone while IDLE was never reported IDLE");
        created++;
    }
    assert_true(created > 0);
}

/* An engine on clock (set to 1000 s), advanced by the test
 * (AFSM_REAPER_MANUAL) or by its reaper thread (AFSM_REAPER_THREAD). */
static inline afsm_engine *open_engine_reaped(virtual_clock *clock, afsm_config *cfg, uint32_t reaper)
{
    virtual_clock_set(clock, 1000 * SEC);
    cfg->clock = virtual_clock_read;
    cfg->clock_ctx = clock;
    cfg->reaper = reaper;
    cfg->server_addr = "10.0.0.1:7000";
    cfg->server_addr_len = strlen(cfg->server_addr);
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(cfg, &engine), AFSM_OK);
    return engine;
}

static inline afsm_engine *open_engine(virtual_clock *clock, afsm_config *cfg)
{
    return open_engine_reaped(clock, cfg, AFSM_REAPER_MANUAL);
}

static inline afsm_status create_for(afsm_engine *engine, const char *user, uint64_t timeout_ms, afsm_uuid *id)
{
    afsm_uuid conn;
    afsm_create_options o = make_options(user, "10.1.2.3", &conn);
    o.timeout_ms = timeout_ms;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    afsm_status st = afsm_session_create(engine, &o, &info);
    if (id != NULL) /* the nil id when it failed */
        *id = st == AFSM_OK ? info.session_id : (afsm_uuid){{0}};
    return st;
}

#endif
