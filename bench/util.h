/*
 * util.h: what every benchmark file shares: the run's mode and sizes, a
 * cheap per-thread RNG, the synthetic session generator (so the engine and
 * every baseline hold exactly the same records), and small measurement
 * helpers (RSS, CPU clocks, percentiles).
 */
#ifndef AFSM_BENCH_UTIL_H
#define AFSM_BENCH_UTIL_H

#include <afsm.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bench
{

/* smoke: CI, tiny sizes, seconds. full: issue 9's sizes, ~10 minutes. */
struct Mode {
    bool smoke = false;
    bool with_10m = false; /* AFSM_BENCH_10M=1: 10M sessions too (slow; off by default) */
    double min_time = 0.2; /* seconds per benchmark */
    std::vector<size_t> sizes;
    std::vector<int> threads;
    size_t expiry_sessions = 1000000;
    size_t memory_sessions = 1000000;
    size_t latency_sessions = 1000000;
    size_t latency_samples = 500000;
    int redis_port = 0; /* 0: Redis benchmarks skipped */
    /* AFSM_BENCH_PASS=goals (bench/run's repeated, interleaved pass for
     * issue 15's goals): every population built stays until exit, so
     * interleaved repetitions reuse them instead of rebuilding one per
     * switch between stores (world.cc, expiry.cc). */
    bool keep_worlds = false;
};
const Mode &mode();
void mode_init(); /* from the environment; see main.cc */

/* xorshift64*: a few cycles per draw, no shared state between threads. */
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull)
    {
    }
    uint64_t next()
    {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 0x2545f4914f6cdd1dull;
    }
    size_t below(size_t n)
    {
        return (size_t)(((unsigned __int128)next() * n) >> 64);
    }
};

/* One synthetic session. The user owns 8 sessions (seq / 8), like a user on
 * a few devices; ips and ports vary so the records are not identical. */
struct Spec {
    afsm_uuid connection_id;
    char user_id[32];
    size_t user_id_len;
    char ip[24];
    size_t ip_len;
    uint16_t port;
};
constexpr size_t SESSIONS_PER_USER = 8;
void make_spec(uint64_t seq, Rng &rng, Spec *out);
/* The create options for spec (no metadata, the engine's timeout). */
afsm_create_options create_options_of(const Spec &spec);
/* Creates spec's session in e with its own timeout (the expiry bench and
 * missprobe's expire mode). */
bool engine_create_with_timeout(afsm_engine *e, const Spec &spec, uint64_t timeout_ms);
size_t user_name(uint64_t user_index, char *buf, size_t size);

/* The 4-key metadata of the "with metadata" memory measurement. */
extern const afsm_kv METADATA4[4];

/* Resident set size of the process, from /proc/self/statm. */
size_t rss_bytes();
/* Anonymous memory backed by transparent huge pages (AnonHugePages of
 * /proc/self/smaps_rollup): whether a huge-pages switch took effect. */
size_t anon_huge_bytes();
uint64_t thread_cpu_ns();
uint64_t mono_ns();
/* p in [0,1]; sorts v. */
double percentile(std::vector<uint64_t> &v, double p);

} // namespace bench

#endif
