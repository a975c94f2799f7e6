/*
 * main.cc: the harness's entry point. Reads the run's mode from the
 * environment (so google-benchmark keeps its own flags to itself),
 * registers every benchmark in an order that builds each population once,
 * and records the machine and allocator in the JSON context.
 *
 *   AFSM_BENCH_MODE=smoke|full   smoke: 1K sessions, short runs (CI)
 *   AFSM_BENCH_SUITE=main|memory memory: only the RSS benchmarks, which
 *                                need a fresh process each (memory.cc)
 *   AFSM_BENCH_SUITE=hugepages   only the huge-pages comparison, labelled
 *                                with AFSM_BENCH_HUGEPAGES=on|off (the
 *                                allocator's switch is set by bench/run)
 *   AFSM_BENCH_PASS=main|goals   goals: the same benchmarks, but every
 *                                population is kept until exit (bench/run
 *                                runs the goals' benchmarks repeated and
 *                                randomly interleaved; a rebuild per switch
 *                                between stores would cost seconds each);
 *                                recorded as afsm_pass in the JSON context
 *   AFSM_BENCH_10M=1             add 10M sessions (full mode; minutes more)
 *   AFSM_BENCH_REDIS_PORT=N      Redis on 127.0.0.1:N; unset skips Redis
 */
#include <benchmark/benchmark.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "util.h"

// Transparent huge pages for jemalloc's extents and metadata, on by default
// (issue 15, goal 6: at 1M sessions a lookup's page walk is a large share of
// its cost; bench/RESULTS.md, "Huge pages", has the measurement; sessiond does the same). jemalloc
// reads this string at start-up and MALLOC_CONF after it, so
// MALLOC_CONF=thp:default turns the switch off. Ignored where jemalloc is not
// the allocator (sanitizer builds; glibc has GLIBC_TUNABLES=glibc.malloc.hugetlb=1).
extern "C" {
extern const char *malloc_conf;
const char *malloc_conf = "thp:always,metadata_thp:always";
}

namespace bench {

void register_workloads();
void register_redis();
void register_expiry();
void register_memory();
void register_engine_extras();
void register_hugepages(const std::string &label);

static Mode the_mode;
const Mode &mode() { return the_mode; }

static const char *env(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return v != nullptr && *v != '\0' ? v : fallback;
}

void mode_init()
{
    Mode &m = the_mode;
    m.smoke = strcmp(env("AFSM_BENCH_MODE", "full"), "smoke") == 0;
    m.redis_port = atoi(env("AFSM_BENCH_REDIS_PORT", "0"));
    m.keep_worlds = strcmp(env("AFSM_BENCH_PASS", "main"), "goals") == 0;
    if (m.smoke) {
        m.min_time = 0.01;
        m.sizes = {1000};
        m.threads = {1, 2};
        m.expiry_sessions = m.memory_sessions = m.latency_sessions = 1000;
        m.latency_samples = 20000;
    } else {
        m.min_time = atof(env("AFSM_BENCH_MIN_TIME", "0.2"));
        m.sizes = {1000, 100000, 1000000};
        m.threads = {1, 2, 8};
        m.with_10m = strcmp(env("AFSM_BENCH_10M", "0"), "1") == 0;
    }
}

static std::string cpu_model()
{
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("model name", 0) == 0) {
            size_t colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(colon + 2);
        }
    }
    return "unknown";
}

} // namespace bench

int main(int argc, char **argv)
{
    const char *pass = bench::env("AFSM_BENCH_PASS", "main");
    if (strcmp(pass, "main") != 0 && strcmp(pass, "goals") != 0) {
        fprintf(stderr, "AFSM_BENCH_PASS must be main or goals, not \"%s\"\n", pass);
        return 2;
    }
    bench::mode_init();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;

    /* Trust but verify: jemalloc exports mallctl when it is the allocator. */
    bool jemalloc = dlsym(RTLD_DEFAULT, "mallctl") != nullptr;
    if (jemalloc != (strcmp(AFSM_BENCH_ALLOCATOR, "jemalloc") == 0)) {
        fprintf(stderr, "built for %s but running on %s\n", AFSM_BENCH_ALLOCATOR, jemalloc ? "jemalloc" : "glibc");
        return 1;
    }
    benchmark::AddCustomContext("afsm_allocator", AFSM_BENCH_ALLOCATOR);
    benchmark::AddCustomContext("afsm_mode", bench::mode().smoke ? "smoke" : "full");
    benchmark::AddCustomContext("afsm_pass", bench::mode().keep_worlds ? "goals" : "main");
    benchmark::AddCustomContext("afsm_version", afsm_version());
    benchmark::AddCustomContext("cpu_model", bench::cpu_model());

    if (strcmp(bench::env("AFSM_BENCH_SUITE", "main"), "memory") == 0) {
        bench::register_memory();
    } else if (strcmp(bench::env("AFSM_BENCH_SUITE", "main"), "hugepages") == 0) {
        bench::register_hugepages(bench::env("AFSM_BENCH_HUGEPAGES", "off"));
    } else {
        bench::register_workloads();
        bench::register_redis();
        bench::register_expiry();
        bench::register_engine_extras();
    }
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
