/*
 * random.h: the OS's randomness (getrandom), buffered per thread.
 *
 * One getrandom() call per 256 bytes instead of one per request: a token's
 * 24-byte nonce and a UUID's 8 random bytes would otherwise each cost a
 * syscall (about 1 us on the machines measured). A fork handler empties
 * the forking thread's buffer in the child, so parent and child never hand
 * out the same bytes.
 */
#ifndef AFSM_UTIL_RANDOM_H
#define AFSM_UTIL_RANDOM_H

#include <stdbool.h>
#include <stddef.h>

/* Fills out[0..n) (n <= 256) with OS randomness. False only when the OS
 * gave none (old kernel, seccomp); out is then unspecified. */
bool random_fill(void *out, size_t n);

#endif
