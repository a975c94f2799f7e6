/*
 * expiry.cc: CPU to expire 1% and 10% of 1M sessions, the engine's timing
 * wheel (manual reaper, injected clock, afsm_engine_advance) against the
 * old design's periodic full scan under the write lock.
 *
 * Each iteration adds the doomed sessions (1 s timeout) to a population of
 * long-lived ones (30 min) with the clock stopped, moves the virtual clock
 * 1.5 s on, and times only the expiry call: thread CPU time
 * (CLOCK_THREAD_CPUTIME_ID) is the cost, reported per call and per expired
 * session. Both sides remove the sessions from every index.
 */
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdio>
#include <string>

#include "rwlock_store.h"
#include "util.h"
#include "world.h"

namespace bench {
namespace {

constexpr uint64_t SHORT_TIMEOUT_MS = 1000;
constexpr uint64_t STEP_NS = 1500000000ull;

struct VirtualClock {
    std::atomic<uint64_t> now_ns{1000000000ull};
    static uint64_t read(void *ctx)
    {
        return static_cast<VirtualClock *>(ctx)->now_ns.load(std::memory_order_relaxed);
    }
};

void expire_bench(benchmark::State &state, bool wheel, size_t total, double fraction)
{
    world_drop();
    VirtualClock clock;
    size_t doomed = (size_t)((double)total * fraction);
    size_t lasting = total - doomed;
    Rng rng(total + (size_t)(fraction * 1000));
    Spec spec;
    uint64_t seq = 0;
    afsm_engine *engine = nullptr;
    std::unique_ptr<RwlockStore> old;
    if (wheel) {
        afsm_config cfg = AFSM_CONFIG_INIT;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.capacity_hint = total;
        cfg.reaper = AFSM_REAPER_MANUAL;
        cfg.clock = VirtualClock::read;
        cfg.clock_ctx = &clock;
        if (afsm_engine_open(&cfg, &engine) != AFSM_OK) {
            state.SkipWithError("engine open failed");
            return;
        }
    } else {
        old = std::make_unique<RwlockStore>(total, VirtualClock::read, &clock);
    }
    auto add = [&](size_t n, uint64_t timeout_ms) {
        for (size_t i = 0; i < n; i++) {
            make_spec(seq++, rng, &spec);
            afsm_uuid id;
            bool ok = wheel ? engine_create_with_timeout(engine, spec, timeout_ms)
                            : old->create_with_timeout(spec, nullptr, 0, timeout_ms, &id);
            if (!ok)
                return false;
        }
        return true;
    };
    if (!add(lasting, 30 * 60 * 1000)) {
        state.SkipWithError("populating failed");
        afsm_engine_close(engine);
        return;
    }
    uint64_t cpu_total = 0, expired_total = 0;
    bool wrong = false;
    for (auto _ : state) {
        add(doomed, SHORT_TIMEOUT_MS);
        uint64_t now = clock.now_ns.fetch_add(STEP_NS) + STEP_NS;
        uint64_t w0 = mono_ns(), c0 = thread_cpu_ns();
        size_t expired = 0;
        if (wheel)
            afsm_engine_advance(engine, now, &expired);
        else
            expired = old->expire_scan(now);
        uint64_t c1 = thread_cpu_ns(), w1 = mono_ns();
        state.SetIterationTime((double)(w1 - w0) / 1e9);
        cpu_total += c1 - c0;
        expired_total += expired;
        wrong |= expired != doomed;
    }
    afsm_engine_close(engine);
    if (wrong)
        state.SkipWithError("expired a different number of sessions than were due");
    double iters = (double)state.iterations();
    state.counters["cpu_ms_per_expiry"] = (double)cpu_total / 1e6 / iters;
    state.counters["cpu_ns_per_expired"] = expired_total ? (double)cpu_total / (double)expired_total : 0;
    state.counters["expired_per_call"] = (double)expired_total / iters;
    state.counters["sessions"] = (double)total;
}

} // namespace

void register_expiry()
{
    size_t n = mode().expiry_sessions;
    for (double fraction : {0.01, 0.10}) {
        for (bool wheel : {true, false}) {
            std::string name = std::string("Expire/") + (wheel ? "engine" : "rwlock_scan") +
                               "/pct:" + std::to_string((int)(fraction * 100)) + "/n:" + std::to_string(n);
            benchmark::RegisterBenchmark(name.c_str(), [wheel, n, fraction](benchmark::State &st) {
                expire_bench(st, wheel, n, fraction);
            })
                ->UseManualTime()
                ->Iterations(mode().smoke ? 2 : 4)
                ->Unit(benchmark::kMillisecond);
        }
    }
}

} // namespace bench
