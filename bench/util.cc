/*
 * util.cc: the shared helpers of util.h.
 */
#include "util.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <unistd.h>

namespace bench {

const afsm_kv METADATA4[4] = {
    {"region", 6, "eu-west-1", 9},
    {"client", 6, "ios-17.2.1", 10},
    {"plan", 4, "pro", 3},
    {"tenant", 6, "t-000123", 8},
};

size_t user_name(uint64_t user_index, char *buf, size_t size)
{
    int n = snprintf(buf, size, "user-%08llu", (unsigned long long)user_index);
    return (size_t)n;
}

void make_spec(uint64_t seq, Rng &rng, Spec *out)
{
    uint64_t a = rng.next(), b = rng.next();
    memcpy(out->connection_id.bytes, &a, 8);
    memcpy(out->connection_id.bytes + 8, &b, 8);
    out->connection_id.bytes[6] = (uint8_t)((out->connection_id.bytes[6] & 0x0f) | 0x40); /* v4 */
    out->connection_id.bytes[8] = (uint8_t)((out->connection_id.bytes[8] & 0x3f) | 0x80);
    out->user_id_len = user_name(seq / SESSIONS_PER_USER, out->user_id, sizeof(out->user_id));
    int n = snprintf(out->ip, sizeof(out->ip), "10.%u.%u.%u", (unsigned)((seq >> 16) & 255),
                     (unsigned)((seq >> 8) & 255), (unsigned)(seq & 255));
    out->ip_len = (size_t)n;
    out->port = (uint16_t)(1024 + seq % 60000);
}

afsm_create_options create_options_of(const Spec &spec)
{
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.client_port = spec.port;
    o.user_id = spec.user_id;
    o.user_id_len = spec.user_id_len;
    o.client_ip = spec.ip;
    o.client_ip_len = spec.ip_len;
    o.connection_id = spec.connection_id;
    return o;
}

bool engine_create_with_timeout(afsm_engine *e, const Spec &spec, uint64_t timeout_ms)
{
    afsm_create_options o = create_options_of(spec);
    o.timeout_ms = timeout_ms;
    return afsm_session_create(e, &o, nullptr) == AFSM_OK;
}

size_t rss_bytes()
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == nullptr)
        return 0;
    unsigned long size = 0, resident = 0;
    int got = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return got == 2 ? (size_t)resident * (size_t)sysconf(_SC_PAGESIZE) : 0;
}

size_t anon_huge_bytes()
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (f == nullptr)
        return 0;
    char line[256];
    unsigned long kb = 0;
    while (fgets(line, sizeof(line), f) != nullptr)
        if (sscanf(line, "AnonHugePages: %lu kB", &kb) == 1)
            break;
    fclose(f);
    return (size_t)kb * 1024;
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t thread_cpu_ns() { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }
uint64_t mono_ns() { return clock_ns(CLOCK_MONOTONIC); }

double percentile(std::vector<uint64_t> &v, double p)
{
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    size_t i = (size_t)(p * (double)(v.size() - 1) + 0.5);
    return (double)v[std::min(i, v.size() - 1)];
}

} // namespace bench
