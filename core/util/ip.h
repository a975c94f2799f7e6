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

#endif
