/*
 * table_grow_bench.cc: how long the insert that doubles an engine table
 * holds its shard's lock (core/mem/table.c's rebuild), with the keys'
 * records out of cache, as in a shard of a 1M+ session engine. Each run
 * fills a fresh table to half its slots (not timed) and times the next
 * insert, which moves every key to a map twice the size.
 *
 *   build-bench/bench/table_grow_bench
 */
#include <benchmark/benchmark.h>

#include "table_grow.h"

namespace {

void grow(benchmark::State &state)
{
    /* A power of two, 16 or more: the table's slots when the insert at
     * keys / 2 doubles it (smaller or other sizes would time no growth). */
    size_t keys = (size_t)state.range(0);
    /* Four times the records the table holds: the ones filled last are
     * what the cache keeps, as in an engine whose other shards churn. */
    table_grow *g = table_grow_new(4 * keys);
    if (g == nullptr) {
        state.SkipWithError("out of memory");
        return;
    }
    for (auto _ : state) {
        state.PauseTiming();
        bool filled = table_grow_fill(g, keys / 2);
        state.ResumeTiming();
        if (!filled || !table_grow_insert(g, keys / 2)) {
            state.SkipWithError("insert failed");
            break;
        }
    }
    state.SetItemsProcessed(state.iterations() * (int64_t)(keys / 2)); /* keys moved */
    table_grow_free(g);
}

} // namespace

BENCHMARK(grow)->Arg(1 << 18)->Arg(1 << 20)->Unit(benchmark::kMillisecond)->Iterations(10);

BENCHMARK_MAIN();
