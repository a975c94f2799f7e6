/*
 * wheel.c: see wheel.h. Invariants, all under the shard lock:
 * - a linked timer with due_tick d sits at level l = the smallest l with
 *   d - now_tick < 64^(l+1), slot (d >> 6l) & 63, as of when it was linked
 *   or last cascaded; cascading at the 64^l boundaries keeps it there.
 * - occupied[l] bit s is set exactly when slot s of level l is non-empty.
 */
#include "mem/wheel.h"

#include <assert.h>

static void list_init(wheel_link *head)
{
    head->next = head;
    head->prev = head;
}

static int list_empty(const wheel_link *head)
{
    return head->next == head;
}

static void list_push(wheel_link *head, wheel_link *link)
{
    link->prev = head->prev;
    link->next = head;
    head->prev->next = link;
    head->prev = link;
}

static void list_unlink(wheel_link *link)
{
    link->prev->next = link->next;
    link->next->prev = link->prev;
    link->next = link->prev = NULL;
}

/* Moves every link of from onto the detached list to (emptying from). */
static void list_take(wheel_link *from, wheel_link *to)
{
    list_init(to);
    if (list_empty(from))
        return;
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    list_init(from);
}

void wheel_init(wheel *w, uint64_t tick_ns, uint64_t now_ns)
{
    assert(tick_ns > 0);
    w->tick_ns = tick_ns;
    w->now_tick = now_ns / tick_ns;
    w->count = 0;
    for (int l = 0; l < WHEEL_LEVELS; l++) {
        w->occupied[l] = 0;
        for (int s = 0; s < WHEEL_SLOTS; s++)
            list_init(&w->slots[l][s]);
    }
    list_init(&w->overflow);
}

uint64_t wheel_fire_ns(const wheel *w, uint64_t deadline_ns)
{
    uint64_t tick = deadline_ns / w->tick_ns + (deadline_ns % w->tick_ns != 0);
    return tick * w->tick_ns;
}

static uint64_t span(int level)
{
    return UINT64_C(1) << (6 * level);
}

/* Places a timer whose due_tick is set. The next tick to process is
 * now_tick + 1; a timer due before it fires then. */
static void place(wheel *w, wheel_link *timer)
{
    uint64_t base = w->now_tick + 1;
    if (timer->due_tick < base)
        timer->due_tick = base;
    uint64_t delta = timer->due_tick - base;
    for (int l = 0; l < WHEEL_LEVELS; l++) {
        if (delta < span(l + 1)) {
            unsigned slot = (unsigned)(timer->due_tick >> (6 * l)) & (WHEEL_SLOTS - 1);
            list_push(&w->slots[l][slot], timer);
            w->occupied[l] |= UINT64_C(1) << slot;
            return;
        }
    }
    list_push(&w->overflow, timer);
}

void wheel_add(wheel *w, wheel_link *timer, uint64_t deadline_ns)
{
    timer->due_tick = wheel_fire_ns(w, deadline_ns) / w->tick_ns;
    place(w, timer);
    w->count++;
}

void wheel_remove(wheel *w, wheel_link *timer)
{
    /* A slot's list head is the only neighbour that can be both next and
     * prev: then this was the slot's last timer and its bit must clear. */
    wheel_link *neighbour = timer->next;
    int was_last = timer->next == timer->prev;
    list_unlink(timer);
    w->count--;
    if (!was_last)
        return;
    for (int l = 0; l < WHEEL_LEVELS; l++) {
        if (neighbour >= &w->slots[l][0] && neighbour < &w->slots[l][WHEEL_SLOTS]) {
            w->occupied[l] &= ~(UINT64_C(1) << (neighbour - &w->slots[l][0]));
            return;
        }
    }
}

/* Re-places every timer of one slot of level l (l >= 1) into lower levels. */
static void cascade(wheel *w, int level, unsigned slot)
{
    wheel_link pending;
    list_take(&w->slots[level][slot], &pending);
    w->occupied[level] &= ~(UINT64_C(1) << slot);
    while (!list_empty(&pending)) {
        wheel_link *timer = pending.next;
        list_unlink(timer);
        place(w, timer);
    }
}

static void cascade_overflow(wheel *w)
{
    wheel_link pending;
    list_take(&w->overflow, &pending);
    while (!list_empty(&pending)) {
        wheel_link *timer = pending.next;
        list_unlink(timer);
        place(w, timer);
    }
}

/* Fires level-0 slot of tick t; timers relinked from here land after t. */
static void fire(wheel *w, uint64_t tick, wheel_due_fn *due, void *ctx)
{
    unsigned slot = (unsigned)tick & (WHEEL_SLOTS - 1);
    wheel_link pending;
    list_take(&w->slots[0][slot], &pending);
    w->occupied[0] &= ~(UINT64_C(1) << slot);
    w->now_tick = tick;
    uint64_t tick_ns = tick * w->tick_ns;
    while (!list_empty(&pending)) {
        wheel_link *timer = pending.next;
        list_unlink(timer);
        assert(timer->due_tick == tick);
        w->count--;
        uint64_t later = due(ctx, timer, tick_ns);
        if (later != 0)
            wheel_add(w, timer, later);
    }
}

void wheel_advance(wheel *w, uint64_t now_ns, wheel_due_fn *due, void *ctx)
{
    uint64_t target = now_ns / w->tick_ns;
    while (w->now_tick < target) {
        if (w->count == 0) {
            w->now_tick = target;
            return;
        }
        /* Processing tick t; until it fires, place() files timers from t on. */
        uint64_t t = w->now_tick + 1;
        if ((t & (WHEEL_SLOTS - 1)) == 0) {
            /* Highest level first, so a timer can fall through several
             * levels within this one tick. */
            if ((t & (span(WHEEL_LEVELS) - 1)) == 0)
                cascade_overflow(w);
            for (int l = WHEEL_LEVELS - 1; l >= 1; l--) {
                if ((t & (span(l) - 1)) == 0)
                    cascade(w, l, (unsigned)(t >> (6 * l)) & (WHEEL_SLOTS - 1));
            }
        }
        unsigned pos = (unsigned)t & (WHEEL_SLOTS - 1);
        if (w->occupied[0] & (UINT64_C(1) << pos))
            fire(w, t, due, ctx);
        w->now_tick = t;
        if (pos == WHEEL_SLOTS - 1)
            continue;
        /* Nothing can happen before the next occupied level-0 slot or the
         * next 64-tick boundary: jump to just before it. */
        uint64_t ahead = w->occupied[0] & (~UINT64_C(0) << (pos + 1));
        uint64_t next = ahead ? (t - pos) + (uint64_t)__builtin_ctzll(ahead) : (t | (WHEEL_SLOTS - 1)) + 1;
        w->now_tick = next - 1 < target ? next - 1 : target;
    }
}
