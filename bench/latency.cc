/*
 * latency.cc: p50 / p99 / p99.9 of Get while another thread creates and
 * deletes without pause. Each Get is timed on its own with clock_gettime
 * (CLOCK_MONOTONIC, vDSO, ~20 ns that both sides pay), so the tail shows
 * what a reader suffers from a writer: nothing for a lock-free reader, the
 * writer's critical section for a reader-writer lock.
 */
#include <benchmark/benchmark.h>

#include <atomic>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "util.h"
#include "world.h"

namespace bench {
namespace {

void latency_bench(benchmark::State &state, const std::string &impl, size_t size)
{
    World *w = world_get(impl, size);
    if (w == nullptr) {
        state.SkipWithError("could not build the population");
        return;
    }
    size_t samples = mode().latency_samples;
    std::vector<uint64_t> ns(samples);
    uint64_t churned = 0;
    double churn_s = 0;
    for (auto _ : state) {
        std::atomic<bool> stop{false};
        std::atomic<bool> started{false};
        std::thread churner([&] {
            Rng rng(12345);
            Spec spec;
            std::deque<afsm_uuid> mine;
            uint64_t t0 = mono_ns();
            started.store(true);
            while (!stop.load(std::memory_order_relaxed)) {
                make_spec(w->next_seq.fetch_add(1, std::memory_order_relaxed), rng, &spec);
                afsm_uuid id;
                if (w->store->create(spec, nullptr, 0, &id))
                    mine.push_back(id);
                if (mine.size() > 256) {
                    w->store->remove(mine.front());
                    mine.pop_front();
                }
                churned++;
            }
            churn_s = (double)(mono_ns() - t0) / 1e9;
            for (const afsm_uuid &id : mine)
                w->store->remove(id);
        });
        while (!started.load())
            std::this_thread::yield();
        Rng rng(777);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        for (size_t i = 0; i < samples; i++) {
            const afsm_uuid &id = w->ids[rng.below(size)];
            uint64_t t0 = mono_ns();
            w->store->get(id, &info);
            uint64_t t1 = mono_ns();
            benchmark::DoNotOptimize(info.state);
            ns[i] = t1 - t0;
        }
        stop.store(true);
        churner.join();
    }
    double mean = 0;
    for (uint64_t v : ns)
        mean += (double)v;
    state.counters["get_mean_ns"] = mean / (double)samples;
    state.counters["get_p50_ns"] = percentile(ns, 0.50);
    state.counters["get_p99_ns"] = percentile(ns, 0.99);
    state.counters["get_p999_ns"] = percentile(ns, 0.999);
    state.counters["get_max_ns"] = (double)ns.back();
    state.counters["churn_create_delete_per_s"] = churn_s > 0 ? (double)churned / churn_s : 0;
}

} // namespace

void register_latency(const std::string &impl, size_t n)
{
    std::string name = "GetLatencyUnderChurn/" + impl + "/n:" + std::to_string(n);
    benchmark::RegisterBenchmark(name.c_str(), [impl, n](benchmark::State &st) { latency_bench(st, impl, n); })
        ->Iterations(1)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

} // namespace bench
