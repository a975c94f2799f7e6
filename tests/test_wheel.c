/*
 * test_wheel.c: the timing wheel fires every timer exactly once, at the
 * first tick boundary at or after its deadline, never early and never more
 * than one tick late, across every level, the overflow list, cascades,
 * relinks and removals; and a cascade places a timer by its owner's
 * deadline as it is then (the wheel keeps none), so one whose deadline
 * moved on without a relink (a heartbeat) is not fired early.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "mem/wheel.h"

#define TICK_NS UINT64_C(1000000) /* 1 ms: the levels span 64^4 ms ~ 4.7 h */

typedef struct timer {
    wheel_link link;
    uint64_t deadline_ns;
    uint64_t relink_to_ns; /* non-zero: when it fires the first time, move it here (a heartbeat) */
    int lazy;              /* its deadline moves later without a relink; it relinks itself when fired early */
    uint64_t fired_at_ns;
    int fired;
    int removed;
} timer;

typedef struct fire_log {
    uint64_t step_now_ns;
    size_t fired;
    size_t deadline_asks;
} fire_log;

/* The owner's deadline as of now: what a cascade places the timer by. */
static uint64_t deadline_of(void *ctx, const wheel_link *link)
{
    fire_log *log = ctx;
    log->deadline_asks++;
    return ((const timer *)link)->deadline_ns;
}

static uint64_t on_fire(void *ctx, wheel_link *link, uint64_t fire_ns)
{
    fire_log *log = ctx;
    timer *t = (timer *)link;
    assert_false(t->removed);
    assert_true(fire_ns <= log->step_now_ns);
    if (t->lazy && fire_ns < t->deadline_ns)
        return t->deadline_ns;              /* moved since its last placing: relink, as the engine's expiry does */
    assert_true(fire_ns >= t->deadline_ns); /* never early */
    assert_true(fire_ns - t->deadline_ns < TICK_NS); /* within one tick */
    if (t->relink_to_ns != 0) {
        t->deadline_ns = t->relink_to_ns;
        t->relink_to_ns = 0;
        return t->deadline_ns;
    }
    assert_false(t->fired);
    t->fired = 1;
    t->fired_at_ns = fire_ns;
    log->fired++;
    return 0;
}

/* Advances to now in calls of at most budget_per_call timers each. */
static void advance(wheel *w, uint64_t now, fire_log *log, size_t budget_per_call)
{
    for (;;) {
        size_t budget = budget_per_call;
        const wheel_owner owner = {.due = on_fire, .deadline = deadline_of, .ctx = log};
        int done = wheel_advance(w, now, &owner, &budget);
        if (done)
            return;
        assert_int_equal(budget, 0); /* stopped only for want of budget */
    }
}

static uint64_t rand64(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static void every_timer_fires_once_on_time(size_t budget_per_call)
{
    enum { N = 100000 };
    static wheel w;
    timer *timers = calloc(N, sizeof(timer));
    assert_non_null(timers);
    uint64_t start = 5 * TICK_NS + 123; /* not on a boundary */
    wheel_init(&w, TICK_NS, start);
    uint64_t seed = 88172645463325252ull;
    const uint64_t horizon = UINT64_C(64) * 64 * 64 * 64 * TICK_NS;
    for (int i = 0; i < N; i++) {
        uint64_t r = rand64(&seed);
        uint64_t delay;
        switch (i % 6) { /* spread over every level and the overflow list */
        case 0:
            delay = r % (64 * TICK_NS);
            break;
        case 1:
            delay = r % (4096 * TICK_NS);
            break;
        case 2:
            delay = r % (262144 * TICK_NS);
            break;
        case 3:
            delay = r % horizon;
            break;
        case 4:
            delay = horizon + r % (2 * horizon);
            break;
        default:
            delay = r % 100;
            break; /* sub-tick */
        }
        timers[i].deadline_ns = start + delay;
        if (i % 7 == 0)
            timers[i].relink_to_ns = timers[i].deadline_ns + r % (8192 * TICK_NS);
        else if (i % 5 == 0)
            timers[i].lazy = 1;
        wheel_add(&w, &timers[i].link, timers[i].deadline_ns);
    }
    /* Remove some before they fire. */
    for (int i = 3; i < N; i += 11) {
        wheel_remove(&w, &timers[i].link);
        timers[i].removed = 1;
    }

    fire_log log = {0};
    uint64_t now = start;
    uint64_t end = start + 3 * horizon + 10 * TICK_NS;
    while (now < end) {
        uint64_t r = rand64(&seed);
        /* Mostly small steps, sometimes huge jumps. */
        uint64_t step = (r % 10 == 0) ? r % (horizon / 8) : (r % 10 == 1) ? r % (5000 * TICK_NS) : r % (70 * TICK_NS);
        now += step + 1;
        /* Heartbeats: a few lazy timers' deadlines move later, unseen by
         * the wheel until it cascades or fires them. */
        for (int k = 0; k < 16; k++) {
            timer *t = &timers[rand64(&seed) % N];
            uint64_t later = now + rand64(&seed) % (300000 * TICK_NS);
            if (t->lazy && !t->fired && !t->removed && later > t->deadline_ns)
                t->deadline_ns = later;
        }
        log.step_now_ns = now;
        advance(&w, now, &log, budget_per_call);
        /* Exactly the due ones have fired: a sample check each step, a full
         * one every so often (a full check per step would be O(N^2)). */
        for (int k = 0; k < 64; k++) {
            timer *t = &timers[rand64(&seed) % N];
            if (t->removed)
                continue;
            uint64_t fire_tick_ns = (t->deadline_ns + TICK_NS - 1) / TICK_NS * TICK_NS;
            assert_int_equal(t->fired, t->relink_to_ns == 0 && fire_tick_ns <= now);
        }
    }
    size_t expected = 0;
    for (int i = 0; i < N; i++) {
        if (timers[i].removed)
            continue;
        expected++;
        assert_true(timers[i].fired);
    }
    assert_int_equal(log.fired, expected);
    assert_int_equal(w.count, 0);
    assert_true(log.deadline_asks > 0); /* cascades happened */
    free(timers);
}

static void test_every_timer_fires_once_on_time(void **state)
{
    (void)state;
    every_timer_fires_once_on_time(SIZE_MAX);
}

/* The same with the work cut into calls of 7 timers: the wheel must resume
 * mid-cascade and mid-fire without losing or misplacing anything. */
static void test_budgeted_advance_resumes(void **state)
{
    (void)state;
    every_timer_fires_once_on_time(7);
}

static void test_late_add_fires_next_tick(void **state)
{
    (void)state;
    static wheel w;
    wheel_init(&w, TICK_NS, 100 * TICK_NS);
    timer t = {.deadline_ns = 50 * TICK_NS};
    wheel_add(&w, &t.link, t.deadline_ns);
    fire_log log = {.step_now_ns = 101 * TICK_NS};
    t.deadline_ns = 101 * TICK_NS; /* it cannot fire before the next tick */
    advance(&w, 101 * TICK_NS, &log, SIZE_MAX);
    assert_true(t.fired);
    assert_int_equal(t.fired_at_ns, 101 * TICK_NS);
}

/* A deadline that moved later before the timer's cascade places it there:
 * the owner is not asked to decide at the old deadline. */
static void test_cascade_places_by_the_owners_deadline_now(void **state)
{
    (void)state;
    static wheel w;
    wheel_init(&w, TICK_NS, 0);
    timer t = {.deadline_ns = 1000 * TICK_NS}; /* level 1: cascaded at tick 960 */
    wheel_add(&w, &t.link, t.deadline_ns);
    t.deadline_ns = 3000 * TICK_NS; /* a heartbeat, no relink */
    fire_log log = {.step_now_ns = 2999 * TICK_NS};
    advance(&w, log.step_now_ns, &log, SIZE_MAX);
    assert_false(t.fired); /* on_fire would have failed "never early" */
    assert_true(log.deadline_asks >= 1);
    log.step_now_ns = 3000 * TICK_NS;
    advance(&w, log.step_now_ns, &log, SIZE_MAX);
    assert_true(t.fired);
    assert_int_equal(t.fired_at_ns, 3000 * TICK_NS);
}

/* A due callback that only notes when it was called. */
static uint64_t record_fire(void *ctx, wheel_link *link, uint64_t fire_ns)
{
    (void)ctx;
    timer *t = (timer *)link;
    assert_false(t->fired);
    t->fired = 1;
    t->fired_at_ns = fire_ns;
    return 0;
}

/* An owner whose deadline moved earlier without a relink gets its due
 * callback at the timer's cascade, not later than its old deadline. */
static void test_cascade_fires_an_earlier_deadline_at_once(void **state)
{
    (void)state;
    static wheel w;
    wheel_init(&w, TICK_NS, 0);
    timer t = {.deadline_ns = 1000 * TICK_NS};
    wheel_add(&w, &t.link, t.deadline_ns);
    t.deadline_ns = 10 * TICK_NS; /* no relink */
    fire_log log = {0};
    const wheel_owner owner = {.due = record_fire, .deadline = deadline_of, .ctx = &log};
    size_t budget = SIZE_MAX;
    assert_true(wheel_advance(&w, 1000 * TICK_NS, &owner, &budget));
    assert_true(t.fired);
    /* Cascaded at tick 960 (the level-1 slot's boundary) and fired in
     * that same tick, not at 1000. */
    assert_int_equal(t.fired_at_ns, 960 * TICK_NS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_timer_fires_once_on_time),
        cmocka_unit_test(test_budgeted_advance_resumes),
        cmocka_unit_test(test_late_add_fires_next_tick),
        cmocka_unit_test(test_cascade_places_by_the_owners_deadline_now),
        cmocka_unit_test(test_cascade_fires_an_earlier_deadline_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
