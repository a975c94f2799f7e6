/*
 * ck_floor_bench.cc: Get at the floor (ck_floor.h), same sizes, threads and
 * key distribution as the engine's Get, plus each table's bytes per entry:
 * the two numbers that decide between ck_ht and ck_hs.
 */
#include <benchmark/benchmark.h>

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "ck_floor.h"
#include "util.h"
#include "world.h"

namespace bench {
namespace {

struct Floor {
    std::string kind;
    size_t size = 0;
    std::vector<uint8_t> keys; /* size x 16 bytes */
    floor_table *table = nullptr;
    ~Floor() { floor_destroy(table); }
};

std::mutex floor_mutex;
std::unique_ptr<Floor> current_floor;

Floor *floor_for(const std::string &kind, size_t size)
{
    std::lock_guard<std::mutex> guard(floor_mutex);
    if (current_floor && current_floor->kind == kind && current_floor->size == size)
        return current_floor.get();
    current_floor.reset();
    world_drop(); /* the floor runs after the stores: give their memory back */
    auto f = std::make_unique<Floor>();
    f->kind = kind;
    f->size = size;
    f->keys.resize(size * 16);
    Rng rng(size);
    for (size_t i = 0; i < size * 2; i++) {
        uint64_t v = rng.next();
        memcpy(&f->keys[i * 8], &v, 8);
    }
    f->table = floor_build(kind.c_str(), reinterpret_cast<const uint8_t(*)[16]>(f->keys.data()), size);
    if (f->table == nullptr)
        return nullptr;
    current_floor = std::move(f);
    return current_floor.get();
}

void floor_get_bench(benchmark::State &state, const std::string &kind, size_t size)
{
    Floor *f = floor_for(kind, size);
    if (f == nullptr) {
        state.SkipWithError("floor table build failed");
        return;
    }
    Rng rng((uint64_t)state.thread_index() * 7919 + size);
    size_t misses = 0;
    for (auto _ : state) {
        const void *v = floor_get(f->table, &f->keys[rng.below(size) * 16]);
        misses += v == nullptr;
        benchmark::DoNotOptimize(v);
    }
    if (misses)
        state.SkipWithError("a floor lookup missed");
    state.SetItemsProcessed(state.iterations());
    /* kAvgThreads: every thread reports the same table; do not sum them. */
    state.counters["table_bytes_per_entry"] = benchmark::Counter(
        (double)floor_table_bytes(f->table) / (double)size, benchmark::Counter::kAvgThreads);
}

} // namespace

void register_ck_floor()
{
    std::vector<size_t> sizes = mode().sizes;
    if (mode().with_10m)
        sizes.push_back(10000000);
    for (size_t size : sizes) {
        for (const char *kind : {"ck_ht", "ck_hs"}) {
            for (int t : mode().threads) {
                std::string k = kind;
                std::string name = std::string("Get/") + kind + "/n:" + std::to_string(size);
                benchmark::RegisterBenchmark(name.c_str(),
                                             [k, size](benchmark::State &st) { floor_get_bench(st, k, size); })
                    ->Threads(t)
                    ->UseRealTime()
                    ->MinTime(mode().min_time);
            }
        }
    }
}

} // namespace bench
