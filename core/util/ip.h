/*
 * ip.h: IP address parsing and formatting (afsm_ip_parse / afsm_ip_format
 * are public, in ip.c); these are the internal helpers.
 */
#ifndef AFSM_UTIL_IP_H
#define AFSM_UTIL_IP_H

#include <stdbool.h>

#include "afsm.h"

/* True when both addresses are the same family and bytes. */
bool ip_equal(const afsm_ip *a, const afsm_ip *b);

/* afsm_ip_parse without touching the caller's error detail: for the
 * engine's own parsing (etcd records), where a failure is not the caller's. */
afsm_status ip_parse_text(const char *text, size_t text_len, afsm_ip *out);

#endif
