/*
 * memory.cc: bytes per session at 1M (RSS growth / sessions), without
 * metadata and with 4 keys, plus the create and delete rates that go with
 * them. Which allocator is measured depends on the executable: afsm_bench
 * runs on jemalloc, afsm_bench_glibc on glibc malloc.
 *
 * RSS only says something in a fresh process (a previous benchmark's freed
 * pages may be reused), so bench/run runs each of these in its own process
 * (AFSM_BENCH_SUITE=memory and a filter). RSS is read before the store is
 * opened, so its presized tables count against the sessions.
 */
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "store.h"
#include "util.h"
#include "world.h"

namespace bench {
namespace {

void memory_bench(benchmark::State &state, const std::string &impl, size_t meta_keys, size_t n)
{
    world_drop();
    Rng rng(n + meta_keys);
    std::vector<Spec> specs(n);
    for (size_t i = 0; i < n; i++)
        make_spec(i, rng, &specs[i]);
    std::vector<afsm_uuid> ids(n);
    double bytes = 0, create_s = 0, delete_s = 0;
    bool failed = false;
    for (auto _ : state) {
        size_t before = rss_bytes();
        std::unique_ptr<Store> store = impl == "engine" ? make_engine_store(n) : make_rwlock_store(n);
        uint64_t t0 = mono_ns();
        for (size_t i = 0; i < n; i++)
            failed |= !store->create(specs[i], METADATA4, meta_keys, &ids[i]);
        uint64_t t1 = mono_ns();
        size_t after = rss_bytes();
        for (size_t i = 0; i < n; i++)
            failed |= !store->remove(ids[i]);
        uint64_t t2 = mono_ns();
        store.reset();
        bytes = ((double)after - (double)before) / (double)n;
        create_s = (double)(t1 - t0) / 1e9;
        delete_s = (double)(t2 - t1) / 1e9;
        state.SetIterationTime(create_s + delete_s);
    }
    if (failed)
        state.SkipWithError("a create or delete failed");
    state.counters["bytes_per_session"] = bytes;
    state.counters["create_per_s"] = (double)n / create_s;
    state.counters["delete_per_s"] = (double)n / delete_s;
    state.counters["sessions"] = (double)n;
}

} // namespace

void register_memory()
{
    size_t n = mode().memory_sessions;
    for (const char *impl : {"engine", "rwlock"}) {
        for (size_t meta : {0, 4}) {
            std::string name = std::string("Memory/") + impl + "/meta:" + std::to_string(meta) +
                               "/alloc:" + AFSM_BENCH_ALLOCATOR + "/n:" + std::to_string(n);
            std::string k = impl;
            benchmark::RegisterBenchmark(name.c_str(),
                                         [k, meta, n](benchmark::State &st) { memory_bench(st, k, meta, n); })
                ->UseManualTime()
                ->Iterations(1)
                ->Unit(benchmark::kMillisecond);
        }
    }
}

} // namespace bench
