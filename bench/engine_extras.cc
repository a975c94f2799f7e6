/*
 * engine_extras.cc: costs that only the engine has, measured side by side
 * in one run:
 *
 *   MetricsCost/<op>                   create and heartbeat on two engines,
 *                                      metrics counters kept and disabled,
 *                                      interleaved (issue 6: the cost must
 *                                      stay under 5%)
 *   TokenValidate/engine               afsm_token_validate on issued tokens,
 *                                      1 and 2 threads (issue 5)
 *   PacketPinned/flows:<n>             what a packet loop pays per packet
 *                                      through a pinned handle: one
 *                                      afsm_handle_heartbeat and one
 *                                      afsm_handle_add_stats, over n pinned
 *                                      flows in a random order (issue 17's
 *                                      goal: <= 10 ns; tools/udp-gateway),
 *                                      and each half alone at 1,000 flows;
 *   PacketPinned/flows:<n>/packet      the same work as one afsm_handle_packet
 *                                      (one afsm_engine_now per 32 packets,
 *                                      counters deferred in the handle)
 *
 * Each benchmark owns its engine (100K sessions; 1K in smoke mode), built
 * on its first thread and closed by the last.
 */
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <ctime>
#include <string>
#include <vector>

#include "util.h"

extern "C" {
#include "afsm.h"
}

namespace bench {
namespace {

struct Population {
    afsm_engine *engine = nullptr;
    std::vector<afsm_uuid> ids;
    std::vector<std::string> tokens;
};

afsm_engine *open_engine(bool metrics, size_t capacity)
{
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.capacity_hint = capacity;
    cfg.disable_metrics = metrics ? 0 : 1;
    afsm_engine *engine = nullptr;
    if (afsm_engine_open(&cfg, &engine) != AFSM_OK)
        abort();
    return engine;
}

bool create_one(afsm_engine *engine, size_t i, afsm_uuid *id)
{
    char user[32];
    int user_len = snprintf(user, sizeof(user), "user%zu", i % 10000);
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    afsm_create_options_init(&o, AFSM_CREATE_OPTIONS_VERSION);
    o.user_id = user;
    o.user_id_len = (size_t)user_len;
    o.client_ip = "10.1.2.3";
    o.client_ip_len = 8;
    o.client_port = 443;
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info info;
    afsm_session_info_init(&info, AFSM_SESSION_INFO_VERSION);
    if (afsm_session_create(engine, &o, &info) != AFSM_OK)
        return false;
    *id = info.session_id;
    return true;
}

size_t population_size() { return mode().smoke ? 1000 : 100000; }

Population *populate(bool metrics, bool with_tokens)
{
    auto *p = new Population;
    size_t n = population_size();
    p->engine = open_engine(metrics, n);
    p->ids.resize(n);
    for (size_t i = 0; i < n; i++)
        if (!create_one(p->engine, i, &p->ids[i]))
            abort();
    if (with_tokens) {
        p->tokens.resize(n);
        char token[AFSM_TOKEN_SIZE];
        for (size_t i = 0; i < n; i++) {
            if (afsm_token_issue(p->engine, &p->ids[i], 0, token, sizeof(token), nullptr) != AFSM_OK)
                abort();
            p->tokens[i] = token;
        }
    }
    return p;
}

/* One population per benchmark instance, shared by its threads. */
struct Shared {
    std::mutex lock;
    Population *population = nullptr;
    int users = 0;
};

Population *acquire(Shared &shared, bool metrics, bool tokens)
{
    std::lock_guard<std::mutex> guard(shared.lock);
    if (shared.users++ == 0)
        shared.population = populate(metrics, tokens);
    return shared.population;
}

void release(Shared &shared)
{
    std::lock_guard<std::mutex> guard(shared.lock);
    if (--shared.users == 0) {
        afsm_engine_close(shared.population->engine);
        delete shared.population;
        shared.population = nullptr;
    }
}

/* Nanoseconds since an arbitrary start, for timing batches. */
uint64_t now_ns()
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Two engines, counters on and off, driven in alternating batches within
 * one benchmark: both see the same machine at the same moments, which a
 * pair of separate benchmarks on a noisy 2-core box does not. */
void metrics_cost(benchmark::State &state, bool create)
{
    Population *on = populate(true, false), *off = populate(false, false);
    Rng rng(0x5eed);
    const size_t batch = 256;
    uint64_t ns[2] = {0, 0}, ops[2] = {0, 0};
    size_t made = population_size();
    for (auto _ : state) {
        for (int which = 0; which < 2; which++) {
            Population *p = which == 0 ? on : off;
            uint64_t start = now_ns();
            for (size_t k = 0; k < batch; k++) {
                if (create) {
                    afsm_uuid id;
                    benchmark::DoNotOptimize(create_one(p->engine, made + k, &id));
                } else {
                    uint64_t remaining;
                    benchmark::DoNotOptimize(
                        afsm_session_heartbeat(p->engine, &p->ids[rng.below(p->ids.size())], &remaining));
                }
            }
            ns[which] += now_ns() - start;
            ops[which] += batch;
        }
        made += batch;
    }
    state.counters["ns_per_op_metrics_on"] = (double)ns[0] / (double)ops[0];
    state.counters["ns_per_op_metrics_off"] = (double)ns[1] / (double)ops[1];
    state.counters["cost_pct"] = 100.0 * ((double)ns[0] - (double)ns[1]) / (double)ns[1];
    state.SetItemsProcessed(state.iterations() * 2 * batch);
    afsm_engine_close(on->engine);
    afsm_engine_close(off->engine);
    delete on;
    delete off;
}

void token_validate(benchmark::State &state)
{
    static Shared shared;
    Population *p = acquire(shared, true, true);
    Rng rng(0x70c + (uint64_t)state.thread_index());
    afsm_session_info out;
    afsm_session_info_init(&out, AFSM_SESSION_INFO_VERSION);
    for (auto _ : state) {
        const std::string &t = p->tokens[rng.below(p->tokens.size())];
        if (afsm_token_validate(p->engine, t.data(), t.size(), nullptr, 0, &out) != AFSM_OK)
            state.SkipWithError("a valid token was refused");
    }
    state.SetItemsProcessed(state.iterations());
    release(shared);
}

/* The per-packet work of tools/udp-gateway's handles mode, without the
 * sockets and the flow map. Flows are visited in a shuffled order fixed
 * up front (no RNG in the loop), so a large n pays the cache misses a
 * gateway with that many active flows would. */
enum class PacketWork { both, heartbeat, stats, packet };

/* How many packets share one afsm_engine_now reading in the packet form
 * (a receive batch: the gateway's recvmmsg takes up to 32). */
constexpr size_t kPacketBatch = 32;

void packet_pinned(benchmark::State &state, size_t flows, PacketWork work)
{
    static Shared shared;
    Population *p = acquire(shared, true, false);
    flows = std::min(flows, p->ids.size());
    std::vector<afsm_handle *> handles(flows, nullptr);
    for (size_t i = 0; i < flows; i++)
        if (afsm_handle_pin(p->engine, &p->ids[i], &handles[i]) != AFSM_OK)
            abort();
    Rng rng(0xf10 + (uint64_t)state.thread_index());
    std::vector<uint32_t> order(1u << 20);
    for (auto &o : order)
        o = (uint32_t)rng.below(flows);
    afsm_stats delta{};
    delta.packets_received = 1;
    delta.bytes_received = 1200;
    delta.packets_sent = 1;
    delta.bytes_sent = 1200;
    size_t i = 0, failed = 0;
    uint64_t now = 0;
    for (auto _ : state) {
        afsm_handle *h = handles[order[i++ & (order.size() - 1)]];
        if (work == PacketWork::packet) {
            if (i % kPacketBatch == 1)
                afsm_engine_now(p->engine, &now);
            failed += afsm_handle_packet(h, now, &delta, nullptr) != AFSM_OK;
            continue;
        }
        if (work != PacketWork::stats)
            failed += afsm_handle_heartbeat(h, nullptr) != AFSM_OK;
        if (work != PacketWork::heartbeat)
            failed += afsm_handle_add_stats(h, &delta) != AFSM_OK;
    }
    for (afsm_handle *h : handles)
        afsm_handle_release(h);
    if (failed)
        state.SkipWithError("a pinned heartbeat or stats add failed");
    state.SetItemsProcessed(state.iterations());
    release(shared);
}

} // namespace

void register_engine_extras()
{
    /* The pair, and at 1,000 flows each half alone: where the time goes. */
    struct PacketCase {
        size_t flows;
        PacketWork work;
        const char *suffix;
    };
    for (PacketCase c : {PacketCase{1000, PacketWork::both, ""}, PacketCase{100000, PacketWork::both, ""},
                         PacketCase{1000, PacketWork::packet, "/packet"},
                         PacketCase{100000, PacketWork::packet, "/packet"},
                         PacketCase{1000, PacketWork::heartbeat, "/heartbeat_only"},
                         PacketCase{1000, PacketWork::stats, "/stats_only"}}) {
        if (mode().smoke && c.flows > population_size())
            continue;
        std::string name = "PacketPinned/flows:" + std::to_string(c.flows) + c.suffix;
        benchmark::RegisterBenchmark(name.c_str(), [c](benchmark::State &s) { packet_pinned(s, c.flows, c.work); })
            ->MinTime(mode().min_time)
            ->UseRealTime();
    }
    for (bool create : {true, false}) {
        std::string name = std::string("MetricsCost/") + (create ? "create" : "heartbeat");
        benchmark::RegisterBenchmark(name.c_str(), [create](benchmark::State &s) { metrics_cost(s, create); })
            ->MinTime(4 * mode().min_time)
            ->UseRealTime();
    }
    benchmark::RegisterBenchmark("TokenValidate/engine", token_validate)
        ->MinTime(mode().min_time)
        ->UseRealTime()
        ->Threads(1)
        ->Threads(2);
}

} // namespace bench
