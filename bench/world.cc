/*
 * world.cc: building and caching the benchmark population (world.h).
 */
#include "world.h"

#include <cstdio>
#include <cstring>
#include <mutex>

namespace bench {

static std::mutex world_mutex;
/* One world at a time, unless mode().keep_worlds: then every world built
 * stays (the goals pass interleaves benchmarks of several stores at one
 * size; a few of them fit in memory, a rebuild costs seconds). */
static std::vector<std::unique_ptr<World>> worlds;

void world_drop()
{
    std::lock_guard<std::mutex> guard(world_mutex);
    if (!mode().keep_worlds)
        worlds.clear();
}

World *world_get(const std::string &impl, size_t size)
{
    std::lock_guard<std::mutex> guard(world_mutex);
    for (const auto &w : worlds)
        if (w->impl == impl && w->size == size)
            return w.get();
    if (!mode().keep_worlds)
        worlds.clear(); /* free the old population before building the next */
    auto w = std::make_unique<World>();
    w->impl = impl;
    w->size = size;
    /* "engine_thp_on" and the like (the huge-pages suite) are the engine too. */
    w->store = impl.rfind("engine", 0) == 0 ? make_engine_store(size) : make_rwlock_store(size);
    w->ids.resize(size);
    w->connections.resize(size);
    Rng rng(size * 31 + impl.size());
    Spec spec;
    uint64_t t0 = mono_ns();
    for (size_t i = 0; i < size; i++) {
        make_spec(i, rng, &spec);
        if (!w->store->create(spec, nullptr, 0, &w->ids[i])) {
            fprintf(stderr, "world %s/%zu: create %zu failed\n", impl.c_str(), size, i);
            return nullptr;
        }
        w->connections[i] = spec.connection_id;
    }
    /* Every session heartbeated once, as a connected client's first
     * heartbeat does: that one makes it ACTIVE (and takes the engine's shard
     * lock once); the benchmarks then measure the steady state a session
     * spends its life in, on both stores alike. */
    for (size_t i = 0; i < size; i++)
        w->store->heartbeat(w->ids[i]);
    w->next_seq = size;
    fprintf(stderr, "[world] %s with %zu sessions built in %.2f s\n", impl.c_str(), size,
            (double)(mono_ns() - t0) / 1e9);
    worlds.push_back(std::move(w));
    return worlds.back().get();
}

size_t user_name_fast(uint64_t user_index, char *buf)
{
    memcpy(buf, "user-", 5);
    for (int i = 12; i >= 5; i--) {
        buf[i] = (char)('0' + user_index % 10);
        user_index /= 10;
    }
    buf[13] = '\0';
    return 13;
}

} // namespace bench
