/*
 * clock.h: the default engine clock and wall-clock conversion.
 *
 * Deadlines run on the monotonic clock; wall time is only for timestamps
 * reported to callers. CLOCK_MONOTONIC_COARSE costs ~3 ns against ~26 ns
 * for CLOCK_MONOTONIC, at a resolution of one kernel tick (1-4 ms), which
 * is far below any session timeout.
 */
#ifndef AFSM_UTIL_CLOCK_H
#define AFSM_UTIL_CLOCK_H

#include <stdint.h>
#include <time.h>

/* afsm_clock_fn-compatible: CLOCK_MONOTONIC_COARSE in nanoseconds. */
uint64_t clock_monotonic_coarse_ns(void *unused);

/* The same, inline: for callers that know the engine runs on the default
 * clock, without the indirect call and the wrapper's frame. */
static inline uint64_t clock_coarse_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
/* CLOCK_REALTIME in nanoseconds since the Unix epoch. */
int64_t clock_wall_ns(void);

#endif
