/*
 * errdetail.c: see errdetail.h.
 *
 * Thread-locals cost static TLS: libafsm has initial-exec variables (this
 * file's, util/epoch.c's), so the loader must place its whole TLS block in
 * the small static surplus glibc keeps for libraries dlopen'ed late
 * (ctypes). The text therefore lives on the heap, one buffer per thread
 * made on its first failure and freed at thread exit (a pthread key); the
 * thread-locals are two pointers. Only error paths touch the buffer. The
 * text stays valid until the thread's next afsm call, which clears or
 * rewrites it. Plain malloc, not mem_alloc: the allocation-failure tests
 * count the engine's allocations, and a detail is not one of them.
 */
#include "util/errdetail.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

_Thread_local const char *errdetail_current __attribute__((tls_model("initial-exec")));
static _Thread_local char *errdetail_buffer __attribute__((tls_model("initial-exec")));
static pthread_once_t buffer_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t buffer_key;
static int buffer_key_ok;

static void buffer_key_init(void)
{
    buffer_key_ok = pthread_key_create(&buffer_key, free) == 0;
}

static char *thread_buffer(void)
{
    if (errdetail_buffer != NULL)
        return errdetail_buffer;
    pthread_once(&buffer_key_once, buffer_key_init);
    if (!buffer_key_ok)
        return NULL;
    char *buffer = malloc(AFSM_ERROR_DETAIL_MAX);
    if (buffer == NULL)
        return NULL;
    if (pthread_setspecific(buffer_key, buffer) != 0) {
        free(buffer);
        return NULL;
    }
    errdetail_buffer = buffer;
    return buffer;
}

afsm_status errdetail_set(afsm_status status, const char *format, ...)
{
    char *buffer = thread_buffer();
    if (buffer == NULL) {
        errdetail_current = "(no memory for the error detail)";
        return status;
    }
    va_list args;
    va_start(args, format);
    vsnprintf(buffer, AFSM_ERROR_DETAIL_MAX, format, args);
    va_end(args);
    errdetail_current = buffer;
    return status;
}

const char *errdetail_quote(const char *text, size_t len, char out[ERRDETAIL_QUOTE_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0, shown = len < 32 ? len : 32;
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
            out[n++] = (char)c;
        } else {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    if (shown < len) {
        out[n++] = '.';
        out[n++] = '.';
        out[n++] = '.';
    }
    out[n] = '\0';
    return out;
}

AFSM_API const char *afsm_error_detail(void)
{
    const char *text = errdetail_current;
    return text != NULL ? text : "";
}
