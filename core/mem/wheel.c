/*
 * wheel.c: see wheel.h. Invariants, all under the shard lock:
 * - a linked timer placed for due tick d sits at level l = the smallest l
 *   with d - now_tick < 64^(l+1), slot (d >> 6l) & 63, as of when it was
 *   linked or last cascaded; cascading at the 64^l boundaries keeps it
 *   there. d is not kept: a cascade asks the owner again.
 * - occupied[l] bit s is set exactly when slot s of level l is non-empty.
 */
#include "mem/wheel.h"

#include <assert.h>

#define STAGE_IDLE (-1) /* no tick in progress */
#define STAGE_FIRE 0    /* cascades done: fire level 0 */

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
    list_init(&w->pending);
    w->working_stage = STAGE_IDLE;
    w->pending_fire = 0;
}

/* The tick a deadline fires at: the first boundary at or after it. */
static uint64_t due_tick_of(const wheel *w, uint64_t deadline_ns)
{
    return deadline_ns / w->tick_ns + (deadline_ns % w->tick_ns != 0);
}

uint64_t wheel_fire_ns(const wheel *w, uint64_t deadline_ns)
{
    return due_tick_of(w, deadline_ns) * w->tick_ns;
}

static uint64_t span(int level)
{
    return UINT64_C(1) << (6 * level);
}

/* Places a timer to fire at the tick boundary at or after deadline_ns.
 * The next tick to process is now_tick + 1; a timer due before it fires
 * then. */
static void place(wheel *w, wheel_link *timer, uint64_t deadline_ns)
{
    uint64_t base = w->now_tick + 1;
    uint64_t due_tick = due_tick_of(w, deadline_ns);
    if (due_tick < base)
        due_tick = base;
    uint64_t delta = due_tick - base;
    for (int l = 0; l < WHEEL_LEVELS; l++) {
        if (delta < span(l + 1)) {
            unsigned slot = (unsigned)(due_tick >> (6 * l)) & (WHEEL_SLOTS - 1);
            list_push(&w->slots[l][slot], timer);
            w->occupied[l] |= UINT64_C(1) << slot;
            return;
        }
    }
    list_push(&w->overflow, timer);
}

void wheel_add(wheel *w, wheel_link *timer, uint64_t deadline_ns)
{
    place(w, timer, deadline_ns);
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

/* Moves a slot's timers to pending (which must be empty). */
static void take(wheel *w, wheel_link *slot_head, int fire)
{
    list_take(slot_head, &w->pending);
    w->pending_fire = fire;
}

static void take_slot(wheel *w, int level, unsigned slot, int fire)
{
    take(w, &w->slots[level][slot], fire);
    w->occupied[level] &= ~(UINT64_C(1) << slot);
}

/* Starts tick t = now_tick + 1: which levels cascade at it. */
static void begin_tick(wheel *w)
{
    uint64_t t = w->now_tick + 1;
    w->working_tick = t;
    w->working_stage = STAGE_FIRE;
    if ((t & (WHEEL_SLOTS - 1)) == 0) {
        w->working_stage = WHEEL_LEVELS - 1;
        if ((t & (span(WHEEL_LEVELS) - 1)) == 0)
            take(w, &w->overflow, 0);
    }
}

/* Moves the tick in progress one stage on. Cascades go highest level first
 * so a timer can fall through several levels within one tick. */
static void next_stage(wheel *w)
{
    uint64_t t = w->working_tick;
    if (w->working_stage >= 1) {
        int l = w->working_stage--;
        if ((t & (span(l) - 1)) == 0)
            take_slot(w, l, (unsigned)(t >> (6 * l)) & (WHEEL_SLOTS - 1), 0);
        return;
    }
    if (w->working_stage == STAGE_FIRE) {
        unsigned slot = (unsigned)t & (WHEEL_SLOTS - 1);
        /* From here on the tick counts as reached: a timer relinked while
         * firing lands after it. */
        w->now_tick = t;
        if (w->occupied[0] & (UINT64_C(1) << slot))
            take_slot(w, 0, slot, 1);
        w->working_stage = STAGE_IDLE;
        return;
    }
}

/* The timer WHEEL_AHEAD places after the head of pending (NULL when the
 * list is shorter), its link line fetched for the next call's walk. The
 * walk restarts at the head each time, so it follows the list as it is:
 * the links it reads were fetched one timer earlier. */
static const wheel_link *pending_ahead(const wheel *w)
{
    const wheel_link *a = w->pending.next;
    for (int k = 0; k < WHEEL_AHEAD; k++) {
        if (a == &w->pending)
            return NULL;
        a = a->next;
    }
    if (a == &w->pending)
        return NULL;
    __builtin_prefetch(a->next);
    return a;
}

int wheel_advance(wheel *w, uint64_t now_ns, const wheel_owner *owner, size_t *budget)
{
    uint64_t target = now_ns / w->tick_ns;
    for (;;) {
        while (!list_empty(&w->pending)) {
            if (*budget == 0)
                return 0;
            (*budget)--;
            wheel_link *timer = w->pending.next;
            list_unlink(timer);
            if (owner->ahead != NULL) {
                const wheel_link *a = pending_ahead(w);
                if (a != NULL)
                    owner->ahead(a);
            }
            if (!w->pending_fire) {
                place(w, timer, owner->deadline(owner->ctx, timer));
                continue;
            }
            w->count--;
            uint64_t later = owner->due(owner->ctx, timer, w->now_tick * w->tick_ns);
            if (later != 0)
                wheel_add(w, timer, later);
        }
        if (w->working_stage != STAGE_IDLE) {
            next_stage(w);
            continue;
        }
        if (w->now_tick >= target)
            return 1;
        if (w->count == 0) {
            w->now_tick = target;
            return 1;
        }
        /* Nothing happens before the next occupied level-0 slot or the next
         * 64-tick boundary: skip to just before it. */
        unsigned pos = (unsigned)w->now_tick & (WHEEL_SLOTS - 1);
        if (pos != WHEEL_SLOTS - 1) {
            uint64_t ahead = w->occupied[0] & (~UINT64_C(0) << (pos + 1));
            uint64_t next =
                ahead ? (w->now_tick - pos) + (uint64_t)__builtin_ctzll(ahead) : (w->now_tick | (WHEEL_SLOTS - 1)) + 1;
            if (next - 1 > w->now_tick) {
                w->now_tick = next - 1 < target ? next - 1 : target;
                continue;
            }
        }
        begin_tick(w);
    }
}
