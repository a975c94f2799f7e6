/*
 * errdetail.h: the per-thread text behind afsm_error_detail().
 *
 * Every public function clears it on entry (errdetail_clear, one store to a
 * thread-local pointer) and sets it where it rejects input (errdetail_set),
 * so after a call the text belongs to that call: empty after a success or a
 * failure without detail. Nothing is shared between threads, so nothing is
 * locked.
 */
#ifndef AFSM_UTIL_ERRDETAIL_H
#define AFSM_UTIL_ERRDETAIL_H

#include "afsm.h"

/* The current text, or NULL for none. Initial-exec: the clear runs on every
 * hot-path call, and 8 bytes fit the static TLS glibc keeps for libraries
 * dlopen'ed late (ctypes); the text itself lives on the heap. */
extern _Thread_local const char *errdetail_current __attribute__((tls_model("initial-exec")));

static inline void errdetail_clear(void)
{
    errdetail_current = NULL;
}

/* Formats the detail for this thread (truncated to AFSM_ERROR_DETAIL_MAX - 1
 * bytes) and returns status, so a check reads
 * `return errdetail_set(AFSM_EINVAL, "port: %u, must be 0..65535", port);`. */
afsm_status errdetail_set(afsm_status status, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Quotes at most 32 bytes of untrusted text for a detail: printable ASCII
 * as is, anything else as \xHH, "..." when cut. out holds 32 * 4 + 4 bytes. */
#define ERRDETAIL_QUOTE_SIZE (32 * 4 + 4)
const char *errdetail_quote(const char *text, size_t len, char out[ERRDETAIL_QUOTE_SIZE]);

#endif
