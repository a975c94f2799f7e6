/*
 * world.cc: building and caching the benchmark population (world.h).
 */
#include "world.h"

#include <cstdio>
#include <cstring>
#include <mutex>

namespace bench {

static std::mutex world_mutex;
static std::unique_ptr<World> current;

void world_drop()
{
    std::lock_guard<std::mutex> guard(world_mutex);
    current.reset();
}

World *world_get(const std::string &impl, size_t size)
{
    std::lock_guard<std::mutex> guard(world_mutex);
    if (current && current->impl == impl && current->size == size)
        return current.get();
    current.reset(); /* free the old population before building the next */
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
    current = std::move(w);
    return current.get();
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
