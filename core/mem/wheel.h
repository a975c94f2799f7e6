/*
 * wheel.h: a hierarchical timing wheel (Varghese & Lauck), one per shard.
 *
 * WHEEL_LEVELS levels of 64 slots over a tick of tick_ns. Level l holds
 * timers due within 64^(l+1) ticks; when the current tick crosses a
 * multiple of 64^l, the matching level-l slot is cascaded into the levels
 * below, so each timer moves at most once per level. Timers beyond the top
 * level wait in an overflow list that is re-examined once per top-level
 * turn. Expiring costs O(timers due + slots crossed), never a scan.
 *
 * A timer is due at the first tick boundary at or after its deadline, so it
 * fires within one tick of the deadline and never early.
 *
 * Work is budgeted: wheel_advance moves or fires at most `budget` timers
 * per call and says whether it finished. A slot being cascaded or fired
 * waits in `pending`, and the tick in progress is remembered, so the caller
 * can drop its lock between calls (a slot holding a million 30-minute
 * sessions never holds the lock for long) and the next call carries on
 * where this one stopped. Timers added or removed in between are fine: a
 * tick fires only once every cascade before it has completed.
 *
 * A link holds no deadline, only its place in a list: the owner already
 * keeps what a timer's deadline derives from (a session's last activity
 * and timeout), and the eight bytes a stored due tick took are what let
 * a session record keep a short user id in its 192 bytes (mem/session.h).
 * So the wheel asks the owner for a timer's deadline when a cascade moves
 * it (wheel_owner.deadline). A deadline that has moved later since the
 * timer was added (a heartbeat) places it later; one that has moved
 * earlier without a relink is seen at the timer's next cascade (or its old
 * tick), which places it for the next tick, where the owner's due
 * callback decides. An owner that moves a deadline earlier relinks.
 *
 * Not thread-safe: the owning shard's lock protects the wheel and every
 * link in it.
 */
#ifndef AFSM_MEM_WHEEL_H
#define AFSM_MEM_WHEEL_H

#include <stddef.h>
#include <stdint.h>

#define WHEEL_LEVELS 4
#define WHEEL_SLOTS  64

typedef struct wheel_link {
    struct wheel_link *next;
    struct wheel_link *prev;
} wheel_link;

typedef struct wheel {
    uint64_t tick_ns;
    uint64_t now_tick;               /* every tick <= now_tick has been processed */
    size_t count;                    /* linked timers, including pending ones */
    uint64_t occupied[WHEEL_LEVELS]; /* bit s: slot s of that level is non-empty */
    wheel_link slots[WHEEL_LEVELS][WHEEL_SLOTS];
    wheel_link overflow;
    /* The tick in progress: its stage (the level to cascade next, down to
     * 1, then 0 = fire, -1 = none) and the timers taken from a slot but not
     * yet re-placed or fired. */
    uint64_t working_tick;
    int working_stage;
    int pending_fire; /* pending holds a level-0 slot to fire, not a cascade */
    wheel_link pending;
} wheel;

void wheel_init(wheel *w, uint64_t tick_ns, uint64_t now_ns);

/* Links timer to fire at deadline_ns (a deadline already past fires at the
 * next tick). */
void wheel_add(wheel *w, wheel_link *timer, uint64_t deadline_ns);

/* Unlinks a linked timer. */
void wheel_remove(wheel *w, wheel_link *timer);

/* Called for each timer whose tick has come, already unlinked. It returns
 * 0 to let the timer go, or a later deadline to relink it there (lazy
 * rescheduling: heartbeats only move a number forward; the wheel catches
 * up here). */
typedef uint64_t wheel_due_fn(void *ctx, wheel_link *timer, uint64_t now_tick_ns);

/* A linked timer's deadline as of now, asked when a cascade moves it to a
 * lower level. */
typedef uint64_t wheel_deadline_fn(void *ctx, const wheel_link *timer);

/* Called while cascading or firing, for the timer a few places ahead of
 * the one being handled: the owner prefetches what its deadline or due
 * callback will read there, so a slot of many timers costs overlapping
 * misses instead of one after the other. A hint only: it must not change
 * the wheel. */
typedef void wheel_ahead_fn(const wheel_link *timer);

typedef struct wheel_owner {
    wheel_due_fn *due;
    wheel_deadline_fn *deadline;
    wheel_ahead_fn *ahead; /* NULL: no prefetching */
    void *ctx;             /* passed to due and deadline */
} wheel_owner;

/* Processes ticks up to now_ns, spending at most *budget timer moves and
 * fires (decremented as spent). True when it reached now_ns; false when
 * the budget ran out first: call again (the lock may be dropped between).
 * The ahead hook sees a timer of the pending list WHEEL_AHEAD places ahead
 * (the list as it is at that moment, so a due callback may still unlink
 * or relink anything). */
#define WHEEL_AHEAD 4
int wheel_advance(wheel *w, uint64_t now_ns, const wheel_owner *owner, size_t *budget);

/* The tick boundary (ns) a deadline fires at. */
uint64_t wheel_fire_ns(const wheel *w, uint64_t deadline_ns);

#endif
