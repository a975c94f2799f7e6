/*
 * ck_floor_bench.cc: Get at the floor (ck_floor.h), same sizes, threads and
 * key distribution as the engine's Get:
 *
 *   Get/ck_ht, Get/ck_hs      the bare probe, plus each table's bytes per
 *                             entry (the numbers that chose ck_hs)
 *   Get/floor                 probe + copy of a scattered 192-byte record
 *                             (issue 15's get + copy floor)
 *   GetBatch/floor            16 keys a call: probe all, prefetch, copy
 *                             (the batched floor); items are keys
 *   Get/floor_user            Get/floor, plus the hop from the record to
 *                             its user's entry and the copy of the user id:
 *                             the floor of the engine's layout, which keeps
 *                             the id in the user's entry (not a goal's
 *                             denominator: it says what bounds goal 1)
 *   LineTransfer/floor        2 threads handing one cache line back and
 *                             forth; items are one-way transfers (what
 *                             bounds goal 5: each line two creating
 *                             threads both write costs one whenever it
 *                             last moved to the other core)
 */
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "ck_floor.h"
#include "util.h"
#include "world.h"

namespace bench
{
namespace
{

struct Floor {
    std::string kind;
    size_t size = 0;
    std::vector<uint8_t> keys; /* size x 16 bytes */
    floor_table *table = nullptr;
    floor_records *records = nullptr; /* kinds "floor" and "floor_user" */
    ~Floor()
    {
        floor_destroy(table);
        floor_records_destroy(records);
    }
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
    auto *keys = reinterpret_cast<const uint8_t(*)[16]>(f->keys.data());
    if (kind == "floor" || kind == "floor_user")
        f->records = floor_records_build(keys, size, kind == "floor_user" ? SESSIONS_PER_USER : 0);
    else
        f->table = floor_build(kind.c_str(), keys, size);
    if (f->table == nullptr && f->records == nullptr)
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
    state.counters["table_bytes_per_entry"] =
        benchmark::Counter((double)floor_table_bytes(f->table) / (double)size, benchmark::Counter::kAvgThreads);
}

void floor_copy_bench(benchmark::State &state, const std::string &kind, size_t size, bool batched)
{
    Floor *f = floor_for(kind, size);
    if (f == nullptr) {
        state.SkipWithError("floor records build failed");
        return;
    }
    Rng rng((uint64_t)state.thread_index() * 7919 + size);
    /* Outputs of the engine's afsm_session_info size, as its Get fills. */
    static_assert(sizeof(afsm_session_info) >= FLOOR_RECORD_BYTES + FLOOR_USER_ID_COPY,
                  "floor_get_copy's output must fit an afsm_session_info");
    std::vector<afsm_session_info> out(FLOOR_BATCH);
    void *outs[FLOOR_BATCH];
    for (size_t i = 0; i < FLOOR_BATCH; i++)
        outs[i] = &out[i];
    const uint8_t *keys[FLOOR_BATCH];
    size_t misses = 0;
    for (auto _ : state) {
        if (batched) {
            for (size_t i = 0; i < FLOOR_BATCH; i++)
                keys[i] = &f->keys[rng.below(size) * 16];
            misses += FLOOR_BATCH - floor_get_copy_batch(f->records, keys, FLOOR_BATCH, outs);
        } else {
            misses += !floor_get_copy(f->records, &f->keys[rng.below(size) * 16], outs[0]);
        }
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    if (misses)
        state.SkipWithError("a floor lookup missed");
    /* The user hop copied a user's id (floor_user), not the record's filler. */
    if (kind == "floor_user" && state.iterations() > 0 &&
        memcmp(reinterpret_cast<const char *>(&out[0]) + FLOOR_RECORD_BYTES, "user-", 5) != 0)
        state.SkipWithError("the floor's user hop copied no user id");
    state.SetItemsProcessed(state.iterations() * (batched ? FLOOR_BATCH : 1));
}

/* Each thread waits for the line to hold its turn, then writes the other's:
 * every iteration of each thread is one transfer of the line between the
 * cores (thread 0 takes even turns, thread 1 odd ones, the same number of
 * iterations each, so the last turn is always taken). Thread 0 resets the
 * turn before google-benchmark's start barrier, which both threads cross
 * before their loops. */
void line_transfer_bench(benchmark::State &state)
{
    static struct alignas(64) {
        std::atomic<uint64_t> turn;
    } line;
    uint64_t mine = (uint64_t)state.thread_index();
    if (mine == 0)
        line.turn.store(0, std::memory_order_relaxed);
    for (auto _ : state) {
        while (line.turn.load(std::memory_order_acquire) != mine)
            ;
        line.turn.store(mine + 1, std::memory_order_release);
        mine += 2;
    }
    state.SetItemsProcessed(state.iterations());
}

} // namespace

/* The floors of one size, registered by register_workloads right after
 * the engine's benchmarks of that size: both run back to back on the same
 * machine state (not after larger populations came and went). */
void register_ck_floor(size_t size)
{
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
    struct Copy {
        const char *kind;
        bool batched;
    };
    for (Copy c : {Copy{"floor", false}, Copy{"floor", true}, Copy{"floor_user", false}}) {
        for (int t : mode().threads) {
            std::string k = c.kind;
            std::string name = std::string(c.batched ? "GetBatch/" : "Get/") + k + "/n:" + std::to_string(size);
            benchmark::RegisterBenchmark(
                name.c_str(), [k, size, c](benchmark::State &st) { floor_copy_bench(st, k, size, c.batched); })
                ->Threads(t)
                ->UseRealTime()
                ->MinTime(mode().min_time);
        }
    }
    /* Not a function of the size; named with it so the goals pass's filter
     * (report.py, GOAL_BENCHES) picks it at the goals' size. */
    benchmark::RegisterBenchmark((std::string("LineTransfer/floor/n:") + std::to_string(size)).c_str(),
                                 line_transfer_bench)
        ->Threads(2)
        ->UseRealTime()
        ->MinTime(mode().min_time);
}

} // namespace bench
