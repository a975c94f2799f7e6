/*
 * expiry.cc: CPU to expire 1% and 10% of 1M sessions, the engine's timing
 * wheel (manual reaper, injected clock, afsm_engine_advance) against the
 * old design's periodic full scan under the write lock.
 *
 * Each iteration adds the doomed sessions (1 s timeout) to a population of
 * long-lived ones (30 min) with the clock stopped, moves the virtual clock
 * 1.5 s on, and times only the expiry call: thread CPU time
 * (CLOCK_THREAD_CPUTIME_ID) is the cost, reported per call and per expired
 * session. Both sides remove the sessions from every index. The goals
 * pass (mode().keep_worlds) keeps each population across repetitions.
 * ExpireOnePerUser: the same at 1% with every session its user's only one
 * (8 per user above), so each expiry also drops its user's entry.
 * ExpireEvents: the engine's expiry with an event callback (below).
 */
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

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

/* The long-lived sessions of one expiry benchmark, on its own virtual
 * clock. Heap-allocated: the engine keeps a pointer to clock. */
struct Population {
    bool wheel = false;
    bool one_per_user = false;
    size_t total = 0;
    double fraction = 0;
    VirtualClock clock;
    afsm_engine *engine = nullptr;
    std::unique_ptr<RwlockStore> old;
    Rng rng{0};
    uint64_t seq = 0;

    ~Population()
    {
        afsm_engine_close(engine);
    }
    bool add(size_t n, uint64_t timeout_ms)
    {
        Spec spec;
        for (size_t i = 0; i < n; i++) {
            make_spec(seq, rng, &spec);
            if (one_per_user)
                spec.user_id_len = user_name(seq, spec.user_id, sizeof(spec.user_id));
            seq++;
            afsm_uuid id;
            bool ok = wheel ? engine_create_with_timeout(engine, spec, timeout_ms)
                            : old->create_with_timeout(spec, nullptr, 0, timeout_ms, &id);
            if (!ok)
                return false;
        }
        return true;
    }
};

/* With mode().keep_worlds (the goals pass) each population is built once
 * and kept: every iteration expires exactly the sessions it added, so the
 * population is the same at the start of each repetition; the lasting
 * sessions' 30 min outlive any number of repetitions bench/run allows
 * (1.5 s of virtual time per iteration). */
std::vector<std::unique_ptr<Population>> kept;

std::unique_ptr<Population> populate(bool wheel, bool one_per_user, size_t total, double fraction,
                                     const char **error)
{
    auto p = std::make_unique<Population>();
    p->wheel = wheel;
    p->one_per_user = one_per_user;
    p->total = total;
    p->fraction = fraction;
    p->rng = Rng(total + (size_t)(fraction * 1000));
    if (wheel) {
        afsm_config cfg = AFSM_CONFIG_INIT;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.capacity_hint = total;
        cfg.reaper = AFSM_REAPER_MANUAL;
        cfg.clock = VirtualClock::read;
        cfg.clock_ctx = &p->clock;
        if (afsm_engine_open(&cfg, &p->engine) != AFSM_OK) {
            *error = "engine open failed";
            return nullptr;
        }
    } else {
        p->old = std::make_unique<RwlockStore>(total, VirtualClock::read, &p->clock);
    }
    size_t doomed = (size_t)((double)total * fraction);
    if (!p->add(total - doomed, 30 * 60 * 1000)) {
        *error = "populating failed";
        return nullptr;
    }
    return p;
}

void expire_bench(benchmark::State &state, bool wheel, bool one_per_user, size_t total, double fraction)
{
    world_drop();
    Population *p = nullptr;
    for (const auto &k : kept)
        if (k->wheel == wheel && k->one_per_user == one_per_user && k->total == total && k->fraction == fraction)
            p = k.get();
    std::unique_ptr<Population> built;
    if (p == nullptr) {
        const char *error = nullptr;
        built = populate(wheel, one_per_user, total, fraction, &error);
        if (built == nullptr) {
            state.SkipWithError(error);
            return;
        }
        p = built.get();
    }
    size_t doomed = (size_t)((double)total * fraction);
    uint64_t cpu_total = 0, expired_total = 0;
    bool wrong = false, add_failed = false;
    for (auto _ : state) {
        add_failed |= !p->add(doomed, SHORT_TIMEOUT_MS);
        uint64_t now = p->clock.now_ns.fetch_add(STEP_NS) + STEP_NS;
        uint64_t w0 = mono_ns(), c0 = thread_cpu_ns();
        size_t expired = 0;
        if (wheel)
            afsm_engine_advance(p->engine, now, &expired);
        else
            expired = p->old->expire_scan(now);
        uint64_t c1 = thread_cpu_ns(), w1 = mono_ns();
        state.SetIterationTime((double)(w1 - w0) / 1e9);
        cpu_total += c1 - c0;
        expired_total += expired;
        wrong |= expired != doomed;
    }
    if (mode().keep_worlds && built != nullptr)
        kept.push_back(std::move(built));
    if (add_failed)
        state.SkipWithError("adding the sessions due to expire failed");
    else if (wrong)
        state.SkipWithError("expired a different number of sessions than were due");
    double iters = (double)state.iterations();
    state.counters["cpu_ms_per_expiry"] = (double)cpu_total / 1e6 / iters;
    state.counters["cpu_ns_per_expired"] = expired_total ? (double)cpu_total / (double)expired_total : 0;
    state.counters["expired_per_call"] = (double)expired_total / iters;
    state.counters["sessions"] = (double)total;
}

/* Expiry with an event callback, where each advance turns half of the
 * sessions it handles IDLE and expires the other half at the same tick, so
 * every batch of the pass holds both: each removal's event first looks up
 * its session's pending IDLE event (mem_event_prelude). One shard, so the
 * batches are full (4,096 timers). Each iteration adds the sessions with the
 * clock stopped, times the advance, then deletes the idle ones untimed; the
 * cost is the advance's thread CPU per session it changed. */
void expire_events_bench(benchmark::State &state, size_t per_call)
{
    world_drop();
    VirtualClock clock;
    std::atomic<uint64_t> events{0};
    afsm_config cfg = AFSM_CONFIG_INIT;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 1;
    cfg.capacity_hint = per_call;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.idle_timeout_ms = SHORT_TIMEOUT_MS;
    cfg.clock = VirtualClock::read;
    cfg.clock_ctx = &clock;
    cfg.on_event = [](void *ctx, const afsm_event *) {
        static_cast<std::atomic<uint64_t> *>(ctx)->fetch_add(1, std::memory_order_relaxed);
    };
    cfg.event_ctx = &events;
    afsm_engine *engine = nullptr;
    if (afsm_engine_open(&cfg, &engine) != AFSM_OK) {
        state.SkipWithError("engine open failed");
        return;
    }
    Rng rng(per_call);
    Spec spec;
    uint64_t seq = 0, cpu_total = 0;
    std::vector<afsm_uuid> idle;
    bool wrong = false;
    for (auto _ : state) {
        idle.clear();
        for (size_t i = 0; i < per_call; i++) {
            /* Even: CONNECTING, expires in 1 s. Odd: lives 30 min, made
             * ACTIVE by a heartbeat, IDLE after 1 s without one. */
            make_spec(seq++, rng, &spec);
            afsm_create_options o = create_options_of(spec);
            o.timeout_ms = i % 2 ? 30 * 60 * 1000 : SHORT_TIMEOUT_MS;
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            wrong |= afsm_session_create(engine, &o, &info) != AFSM_OK;
            if (i % 2) {
                wrong |= afsm_session_heartbeat(engine, &info.session_id, nullptr) != AFSM_OK;
                idle.push_back(info.session_id);
            }
        }
        uint64_t events_before = events.load(std::memory_order_relaxed);
        uint64_t now = clock.now_ns.fetch_add(STEP_NS) + STEP_NS;
        uint64_t w0 = mono_ns(), c0 = thread_cpu_ns();
        size_t expired = 0;
        afsm_engine_advance(engine, now, &expired);
        uint64_t c1 = thread_cpu_ns(), w1 = mono_ns();
        state.SetIterationTime((double)(w1 - w0) / 1e9);
        cpu_total += c1 - c0;
        /* One EXPIRED or one IDLE event per session. */
        wrong |= expired != per_call / 2 || events.load(std::memory_order_relaxed) - events_before != per_call;
        for (const afsm_uuid &id : idle)
            wrong |= afsm_session_delete(engine, &id, nullptr, 0) != AFSM_OK;
    }
    afsm_engine_close(engine);
    if (wrong)
        state.SkipWithError("a session was not created, expired or reported as expected");
    double sessions = (double)state.iterations() * (double)per_call;
    state.counters["cpu_ns_per_session"] = sessions ? (double)cpu_total / sessions : 0;
    state.counters["sessions_per_call"] = (double)per_call;
}

} // namespace

void register_expiry()
{
    size_t n = mode().expiry_sessions;
    struct Variant {
        const char *op;
        bool one_per_user;
        double fraction;
    };
    for (Variant v : {Variant{"Expire", false, 0.01}, Variant{"Expire", false, 0.10},
                      Variant{"ExpireOnePerUser", true, 0.01}}) {
        for (bool wheel : {true, false}) {
            std::string name = std::string(v.op) + "/" + (wheel ? "engine" : "rwlock_scan") +
                               "/pct:" + std::to_string((int)(v.fraction * 100)) + "/n:" + std::to_string(n);
            benchmark::RegisterBenchmark(name.c_str(), [wheel, v, n](benchmark::State &st) {
                expire_bench(st, wheel, v.one_per_user, n, v.fraction);
            })
                ->UseManualTime()
                ->Iterations(mode().smoke ? 2 : 4)
                ->Unit(benchmark::kMillisecond);
        }
    }
    size_t per_call = mode().smoke ? 1024 : 8192;
    std::string name = "ExpireEvents/idle_and_expired/n:" + std::to_string(per_call);
    benchmark::RegisterBenchmark(name.c_str(), [per_call](benchmark::State &st) { expire_events_bench(st, per_call); })
        ->UseManualTime()
        ->Iterations(mode().smoke ? 2 : 20)
        ->Unit(benchmark::kMillisecond);
}

} // namespace bench
