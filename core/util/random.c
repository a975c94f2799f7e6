/*
 * random.c: see random.h. Thread-local buffers, so no lock and no shared
 * cache line; rand_left counts the unused bytes at the buffer's end.
 */
#include "util/random.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#define BUFFER_BYTES 256

static _Thread_local uint8_t buffer[BUFFER_BYTES];
static _Thread_local size_t left;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* In the child only the forking thread survives: dropping its buffer is
 * enough to keep the child from repeating the parent's bytes. */
static void after_fork_child(void)
{
    left = 0;
}

static void register_atfork(void)
{
    /* Failure (ENOMEM) only loses the fork protection; never worth aborting. */
    (void)pthread_atfork(NULL, NULL, after_fork_child);
}

static bool refill(void)
{
    size_t filled = 0;
    while (filled < sizeof(buffer)) {
        ssize_t got = getrandom(buffer + filled, sizeof(buffer) - filled, 0);
        if (got > 0)
            filled += (size_t)got;
        else if (!(got < 0 && errno == EINTR))
            return false;
    }
    left = sizeof(buffer);
    return true;
}

bool random_fill(void *out, size_t n)
{
    pthread_once(&atfork_once, register_atfork);
    if (n > sizeof(buffer))
        return false;
    if (left < n && !refill())
        return false;
    memcpy(out, buffer + (sizeof(buffer) - left), n);
    /* Never hand the same bytes out twice. */
    memset(buffer + (sizeof(buffer) - left), 0, n);
    left -= n;
    return true;
}
