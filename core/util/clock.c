/* clock.c: thin wrappers over clock_gettime; see clock.h for why COARSE. */
#include "util/clock.h"

#include <time.h>

uint64_t clock_monotonic_coarse_ns(void *unused)
{
    (void)unused;
    return clock_coarse_now_ns();
}

int64_t clock_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
