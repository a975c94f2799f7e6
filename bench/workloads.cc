/*
 * workloads.cc: the single-session operations and the mixed workload, run
 * identically against the engine and the rwlock baseline (store.h).
 *
 * Every benchmark reports items_per_second over wall time (UseRealTime), so
 * with N threads it is the aggregate rate, the number a server sees. Keys
 * are drawn uniformly at random from the whole population: at 1M sessions
 * most lookups miss the cache, as in a real data plane.
 *
 * Create and Delete keep the population's size: each thread creates (or
 * deletes) a batch of its own sessions and, with the timer paused, undoes
 * (or prepares) the next batch. Batches are large so the pause's own cost
 * (a few hundred ns) is spread thin. All of a benchmark's threads pause
 * together (PauseTogether), so timed work never shares the machine with
 * another thread's untimed work.
 */
#include <benchmark/benchmark.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "world.h"

namespace bench
{
namespace
{

constexpr size_t BATCH = 4096;
constexpr size_t PINNED = 1024;
constexpr size_t LIST_CAP = 64;
/* Items per batch call (issue 15): what a packet loop gathers per poll, as
 * DPDK's bulk lookups take; the floor's batch has the same size. */
constexpr size_t BATCH_ITEMS = 16;

/* Where every thread of a multi-threaded Create or Delete waits, on both
 * sides of its untimed batch work. Without it one thread's untimed deletes
 * ran on the other core while the other's creates were timed, so creates
 * on 2 threads were measured against deletes, creates on 1 thread against
 * nothing (issue 15, goal 5). google-benchmark runs the same number of
 * iterations on every thread and the loops pause every BATCH iterations,
 * so every thread reaches every wait. A blocking wait, not a spin: the
 * 8-thread runs have more threads than cores. One benchmark runs at a
 * time, so one instance serves them all. */
class PauseTogether
{
  public:
    void wait(size_t threads)
    {
        std::unique_lock<std::mutex> lock(mutex_);
        const uint64_t round = round_;
        if (++waiting_ == threads) {
            waiting_ = 0;
            round_++;
            all_here_.notify_all();
            return;
        }
        all_here_.wait(lock, [&] { return round_ != round; });
    }

  private:
    std::mutex mutex_;
    std::condition_variable all_here_;
    size_t waiting_ = 0;
    uint64_t round_ = 0;
};
PauseTogether pause_together;

/* Runs untimed with the timer paused, between two waits for every thread. */
template <typename Fn> void untimed_together(benchmark::State &state, Fn fn)
{
    state.PauseTiming();
    pause_together.wait((size_t)state.threads());
    fn();
    pause_together.wait((size_t)state.threads());
    state.ResumeTiming();
}

uint64_t thread_seed(const benchmark::State &state, size_t size)
{
    return (uint64_t)state.thread_index() * 7919 + size + (uint64_t)state.threads() * 104729;
}

World *setup(benchmark::State &state, const std::string &impl, size_t size)
{
    World *w = world_get(impl, size);
    if (w == nullptr)
        state.SkipWithError("could not build the population");
    return w;
}

void fill_specs(World *w, Rng &rng, std::vector<Spec> &specs)
{
    for (Spec &s : specs)
        make_spec(w->next_seq.fetch_add(1, std::memory_order_relaxed), rng, &s);
}

void op_create(benchmark::State &state, const std::string &impl, size_t size)
{
    World *w = setup(state, impl, size);
    if (w == nullptr)
        return;
    Rng rng(thread_seed(state, size));
    std::vector<Spec> specs(BATCH);
    std::vector<afsm_uuid> made;
    made.reserve(BATCH);
    fill_specs(w, rng, specs);
    size_t failed = 0;
    for (auto _ : state) {
        if (made.size() == BATCH) {
            untimed_together(state, [&] {
                for (const afsm_uuid &id : made)
                    w->store->remove(id);
                made.clear();
                fill_specs(w, rng, specs);
            });
        }
        afsm_uuid id;
        if (w->store->create(specs[made.size()], nullptr, 0, &id))
            made.push_back(id);
        else
            failed++, made.push_back(afsm_uuid{});
    }
    for (const afsm_uuid &id : made)
        w->store->remove(id);
    if (failed)
        state.SkipWithError("create failed");
    state.SetItemsProcessed(state.iterations());
}

void op_delete(benchmark::State &state, const std::string &impl, size_t size)
{
    World *w = setup(state, impl, size);
    if (w == nullptr)
        return;
    Rng rng(thread_seed(state, size));
    std::vector<Spec> specs(BATCH);
    std::vector<afsm_uuid> pool;
    auto refill = [&] {
        fill_specs(w, rng, specs);
        pool.clear();
        for (const Spec &s : specs) {
            afsm_uuid id;
            if (w->store->create(s, nullptr, 0, &id))
                pool.push_back(id);
        }
        /* Delete in random order, not creation order, so the records are
         * not walked in allocation order. */
        for (size_t i = pool.size(); i > 1; i--)
            std::swap(pool[i - 1], pool[rng.below(i)]);
    };
    refill();
    size_t missing = 0, since_refill = 0;
    for (auto _ : state) {
        /* Every BATCH iterations, not when the pool runs dry: a failed
         * create leaves it short, and the threads must pause together. */
        if (since_refill == BATCH) {
            untimed_together(state, refill);
            since_refill = 0;
        }
        since_refill++;
        if (pool.empty()) {
            missing++; /* its create failed */
            continue;
        }
        if (!w->store->remove(pool.back()))
            missing++;
        pool.pop_back();
    }
    for (const afsm_uuid &id : pool)
        w->store->remove(id);
    if (missing)
        state.SkipWithError("delete did not find a session (or its untimed create failed)");
    state.SetItemsProcessed(state.iterations());
}

template <typename Fn> void lookup_loop(benchmark::State &state, const std::string &impl, size_t size, Fn fn)
{
    World *w = setup(state, impl, size);
    if (w == nullptr)
        return;
    Rng rng(thread_seed(state, size));
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    size_t misses = 0;
    for (auto _ : state) {
        if (!fn(w, rng.below(size), &info))
            misses++;
        benchmark::DoNotOptimize(info.state);
    }
    if (misses)
        state.SkipWithError("a lookup missed");
    state.SetItemsProcessed(state.iterations());
}

void op_get(benchmark::State &state, const std::string &impl, size_t size)
{
    lookup_loop(state, impl, size,
                [](World *w, size_t i, afsm_session_info *info) { return w->store->get(w->ids[i], info); });
}

void op_get_connection(benchmark::State &state, const std::string &impl, size_t size)
{
    lookup_loop(state, impl, size, [](World *w, size_t i, afsm_session_info *info) {
        return w->store->get_by_connection(w->connections[i], info);
    });
}

void op_heartbeat(benchmark::State &state, const std::string &impl, size_t size)
{
    lookup_loop(state, impl, size,
                [](World *w, size_t i, afsm_session_info *) { return w->store->heartbeat(w->ids[i]); });
}

/* One call per BATCH_ITEMS random ids; items_per_second counts ids. */
template <typename Fn> void batch_loop(benchmark::State &state, const std::string &impl, size_t size, Fn fn)
{
    World *w = setup(state, impl, size);
    if (w == nullptr)
        return;
    Rng rng(thread_seed(state, size));
    std::vector<afsm_session_info> info(BATCH_ITEMS);
    for (auto &o : info)
        afsm_session_info_init(&o, AFSM_SESSION_INFO_VERSION);
    afsm_uuid ids[BATCH_ITEMS];
    size_t misses = 0;
    for (auto _ : state) {
        for (size_t i = 0; i < BATCH_ITEMS; i++)
            ids[i] = w->ids[rng.below(size)];
        misses += BATCH_ITEMS - fn(w, ids, info.data());
        benchmark::DoNotOptimize(info.data());
    }
    if (misses)
        state.SkipWithError("a batch item missed");
    state.SetItemsProcessed(state.iterations() * BATCH_ITEMS);
}

void op_get_batch(benchmark::State &state, const std::string &impl, size_t size)
{
    batch_loop(state, impl, size, [](World *w, const afsm_uuid *ids, afsm_session_info *out) {
        return w->store->get_batch(ids, BATCH_ITEMS, out);
    });
}

void op_heartbeat_batch(benchmark::State &state, const std::string &impl, size_t size)
{
    batch_loop(state, impl, size, [](World *w, const afsm_uuid *ids, afsm_session_info *) {
        return w->store->heartbeat_batch(ids, BATCH_ITEMS);
    });
}

void op_stats_batch(benchmark::State &state, const std::string &impl, size_t size)
{
    batch_loop(state, impl, size, [](World *w, const afsm_uuid *ids, afsm_session_info *) {
        afsm_stats deltas[BATCH_ITEMS] = {};
        for (afsm_stats &d : deltas)
            d.packets_received = 1, d.bytes_received = 1200;
        return w->store->add_stats_batch(ids, deltas, BATCH_ITEMS);
    });
}

void op_add_stats(benchmark::State &state, const std::string &impl, size_t size)
{
    afsm_stats delta{};
    delta.packets_received = 1;
    delta.bytes_received = 1200;
    lookup_loop(state, impl, size,
                [&delta](World *w, size_t i, afsm_session_info *) { return w->store->add_stats(w->ids[i], delta); });
}

void op_stats_pinned(benchmark::State &state, const std::string &impl, size_t size)
{
    World *w = setup(state, impl, size);
    if (w == nullptr)
        return;
    Rng rng(thread_seed(state, size));
    /* A packet loop pins the sessions it serves once, then updates them
     * per packet: spread over many sessions, as many flows would be. */
    std::vector<void *> pinned;
    for (size_t i = 0; i < std::min(PINNED, size); i++) {
        void *p = w->store->pin(w->ids[rng.below(size)]);
        if (p != nullptr)
            pinned.push_back(p);
    }
    if (pinned.empty()) {
        state.SkipWithError("pin failed");
        return;
    }
    afsm_stats delta{};
    delta.packets_sent = 1;
    delta.bytes_sent = 1400;
    size_t i = 0, failed = 0;
    for (auto _ : state) {
        if (!w->store->add_stats_pinned(pinned[i], delta))
            failed++;
        if (++i == pinned.size())
            i = 0;
    }
    for (void *p : pinned)
        w->store->unpin(p);
    if (failed)
        state.SkipWithError("stats add failed");
    state.SetItemsProcessed(state.iterations());
}

void op_list_user(benchmark::State &state, const std::string &impl, size_t size)
{
    World *w = setup(state, impl, size);
    if (w == nullptr)
        return;
    Rng rng(thread_seed(state, size));
    std::vector<afsm_session_info> out(LIST_CAP);
    for (auto &o : out)
        afsm_session_info_init(&o, AFSM_SESSION_INFO_VERSION);
    size_t users = (size + SESSIONS_PER_USER - 1) / SESSIONS_PER_USER;
    char name[16];
    uint64_t listed = 0;
    for (auto _ : state) {
        size_t len = user_name_fast(rng.below(users), name);
        listed += w->store->list_user(name, len, out.data(), LIST_CAP);
    }
    if (state.iterations() > 0 && listed == 0)
        state.SkipWithError("lists came back empty");
    state.SetItemsProcessed(state.iterations());
    state.counters["sessions_per_list"] = benchmark::Counter((double)listed, benchmark::Counter::kAvgIterations);
}

/* 90% get / heartbeat (half each), 8% stats add by id, 2% create + delete
 * (each thread deletes the oldest of its own recent creations). */
void op_mixed(benchmark::State &state, const std::string &impl, size_t size)
{
    World *w = setup(state, impl, size);
    if (w == nullptr)
        return;
    Rng rng(thread_seed(state, size));
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    afsm_stats delta{};
    delta.packets_received = 1;
    delta.bytes_received = 1200;
    std::deque<afsm_uuid> mine;
    Spec spec;
    for (auto _ : state) {
        size_t r = rng.below(100);
        const afsm_uuid &id = w->ids[rng.below(size)];
        if (r < 45) {
            w->store->get(id, &info);
        } else if (r < 90) {
            w->store->heartbeat(id);
        } else if (r < 98) {
            w->store->add_stats(id, delta);
        } else {
            make_spec(w->next_seq.fetch_add(1, std::memory_order_relaxed), rng, &spec);
            afsm_uuid made;
            if (w->store->create(spec, nullptr, 0, &made))
                mine.push_back(made);
            if (mine.size() > 64) {
                w->store->remove(mine.front());
                mine.pop_front();
            }
        }
    }
    for (const afsm_uuid &id : mine)
        w->store->remove(id);
    state.SetItemsProcessed(state.iterations());
}

} // namespace

void register_latency(const std::string &impl, size_t n);
void register_ck_floor(size_t size);

/* Issue 15, goal 6: the engine's Get, Heartbeat and GetBatch at the
 * largest size, in a process whose allocator was told to use transparent
 * huge pages (label "on") or not ("off"); bench/run sets the allocator's
 * switch (MALLOC_CONF for jemalloc, GLIBC_TUNABLES for glibc) and runs both
 * back to back. anon_huge_mb says whether the switch took effect. */
void register_hugepages(const std::string &label)
{
    struct Op {
        const char *name;
        void (*fn)(benchmark::State &, const std::string &, size_t);
    };
    static const Op ops[] = {{"Get", op_get}, {"Heartbeat", op_heartbeat}, {"GetBatch", op_get_batch}};
    size_t size = mode().sizes.back();
    std::string impl = "engine_thp_" + label;
    for (const Op &op : ops) {
        std::string name =
            std::string(op.name) + "/" + impl + "/alloc:" + AFSM_BENCH_ALLOCATOR + "/n:" + std::to_string(size);
        auto fn = op.fn;
        benchmark::RegisterBenchmark(name.c_str(),
                                     [fn, impl, size](benchmark::State &st) {
                                         fn(st, impl, size);
                                         st.counters["anon_huge_mb"] = (double)anon_huge_bytes() / 1e6;
                                     })
            ->Threads(1)
            ->UseRealTime()
            ->MinTime(mode().min_time);
    }
}

void register_workloads()
{
    struct Op {
        const char *name;
        void (*fn)(benchmark::State &, const std::string &, size_t);
    };
    static const Op ops[] = {
        {"Get", op_get},
        {"GetByConnection", op_get_connection},
        {"Heartbeat", op_heartbeat},
        {"StatsPinned", op_stats_pinned},
        {"ListByUser", op_list_user},
        {"Create", op_create},
        {"Delete", op_delete},
        {"Mixed", op_mixed},
        {"AddStats", op_add_stats},
        {"GetBatch", op_get_batch},
        {"HeartbeatBatch", op_heartbeat_batch},
        {"AddStatsBatch", op_stats_batch},
    };
    std::vector<size_t> sizes = mode().sizes;
    if (mode().with_10m)
        sizes.push_back(10000000);
    for (size_t size : sizes) {
        for (const char *impl : {"engine", "rwlock"}) {
            for (const Op &op : ops) {
                for (int t : mode().threads) {
                    std::string name = std::string(op.name) + "/" + impl + "/n:" + std::to_string(size);
                    std::string impl_s = impl;
                    auto fn = op.fn;
                    benchmark::RegisterBenchmark(name.c_str(),
                                                 [fn, impl_s, size](benchmark::State &st) { fn(st, impl_s, size); })
                        ->Threads(t)
                        ->UseRealTime()
                        ->MinTime(mode().min_time);
                }
            }
            /* Right after the group, while this population is built. */
            if (size == mode().latency_sessions)
                register_latency(impl, size);
            /* The floors right after the engine of the same size. */
            if (strcmp(impl, "engine") == 0)
                register_ck_floor(size);
        }
    }
}

} // namespace bench
