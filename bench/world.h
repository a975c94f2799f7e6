/*
 * world.h: the population a group of benchmarks runs against. Building 1M
 * sessions costs seconds, so one world (implementation, size) is built
 * once and reused by every benchmark registered after it with the same
 * key; benchmarks are registered grouped by key so each is built once.
 * With mode().keep_worlds (the goals pass, whose benchmarks run in random
 * order) every world built is kept, so each is still built once.
 * Benchmarks put back what they change (creates are deleted, deletes work
 * on sessions they created), so the population stays the same size.
 */
#ifndef AFSM_BENCH_WORLD_H
#define AFSM_BENCH_WORLD_H

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "store.h"

namespace bench
{

struct World {
    std::string impl;
    size_t size = 0;
    std::unique_ptr<Store> store;
    std::vector<afsm_uuid> ids;
    std::vector<afsm_uuid> connections;
    std::atomic<uint64_t> next_seq{0}; /* sequence numbers for sessions made during benchmarks */
};

/* Called by every thread of a benchmark before its loop; the first builds
 * (or reuses) the world, the others wait for it. NULL if building failed. */
World *world_get(const std::string &impl, size_t size);
/* Frees the current world (before a benchmark that needs the memory);
 * nothing when mode().keep_worlds (every world then lives until exit). */
void world_drop();

/* Writes "user-%08llu" without snprintf (it would dominate a cheap op). */
size_t user_name_fast(uint64_t user_index, char *buf);

} // namespace bench

#endif
