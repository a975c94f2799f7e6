/*
 * missprobe.cc: the benchmark's Get and Delete loops, run once each, for
 * valgrind's cache simulator (issue 15): instructions and simulated
 * last-level misses per operation, engine against floor or baseline,
 * where wall time on a shared machine is too noisy to tell.
 *
 *   valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no \
 *       --collect-atstart=no build-bench/bench/missprobe MODE N OPS
 *
 * MODE: get-engine, get-floor, get-rwlock, delete-engine, delete-rwlock,
 * create-engine, create-rwlock, heartbeat-engine, heartbeat-rwlock,
 * expire-engine (N long-lived sessions, then twice OPS doomed ones added
 * and expired by one afsm_engine_advance on a virtual clock, as
 * bench/expiry.cc; the second advance is collected).
 * The population is built uninstrumented, OPS operations warm the
 * simulated caches, then OPS more are collected (the callgrind totals, over
 * OPS, are the per-operation figures). Without valgrind it just runs.
 */
#include <valgrind/callgrind.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ck_floor.h"
#include "store.h"
#include "util.h"

using namespace bench;

namespace
{

struct VirtualClock {
    uint64_t now_ns = 1000000000ull;
    static uint64_t read(void *ctx)
    {
        return static_cast<VirtualClock *>(ctx)->now_ns;
    }
};

/* The expiry benchmark's engine side under the probe: OPS doomed sessions
 * (1 s) among N lasting ones (30 min), expired by one advance 1.5 s on. */
int expire_probe(size_t n, size_t ops)
{
    VirtualClock clock;
    afsm_config cfg = AFSM_CONFIG_INIT;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.capacity_hint = n + ops;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.clock = VirtualClock::read;
    cfg.clock_ctx = &clock;
    afsm_engine *engine = nullptr;
    if (afsm_engine_open(&cfg, &engine) != AFSM_OK)
        return 1;
    Rng rng(n + ops);
    Spec spec;
    uint64_t seq = 0;
    size_t failed = 0;
    uint64_t cpu_ns = 0;
    for (size_t i = 0; i < n; i++) {
        make_spec(seq++, rng, &spec);
        failed += !engine_create_with_timeout(engine, spec, 30 * 60 * 1000);
    }
    CALLGRIND_START_INSTRUMENTATION;
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < ops; i++) {
            make_spec(seq++, rng, &spec);
            failed += !engine_create_with_timeout(engine, spec, 1000);
        }
        clock.now_ns += 1500000000ull;
        size_t expired = 0;
        if (round == 1)
            CALLGRIND_TOGGLE_COLLECT;
        uint64_t c0 = thread_cpu_ns();
        afsm_engine_advance(engine, clock.now_ns, &expired);
        cpu_ns = thread_cpu_ns() - c0;
        if (round == 1)
            CALLGRIND_TOGGLE_COLLECT;
        failed += expired != ops;
    }
    afsm_engine_close(engine);
    /* Thread CPU of the collected advance: meaningful without valgrind. */
    printf("expire-engine n=%zu ops=%zu failed=%zu cpu_ns_per_expired=%.1f\n", n, ops, failed,
           (double)cpu_ns / (double)(ops ? ops : 1));
    return failed != 0;
}

} // namespace

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: missprobe MODE N OPS\n");
        return 2;
    }
    std::string mode_name = argv[1];
    size_t n = strtoull(argv[2], nullptr, 10), ops = strtoull(argv[3], nullptr, 10);
    if (mode_name == "expire-engine")
        return expire_probe(n, ops);
    bool floor = mode_name == "get-floor";
    bool del = mode_name.rfind("delete-", 0) == 0;
    bool create = mode_name.rfind("create-", 0) == 0;
    bool heartbeat = mode_name.rfind("heartbeat-", 0) == 0;
    bool rw = mode_name.find("rwlock") != std::string::npos;
    Rng rng(12345);
    std::vector<afsm_uuid> ids(n);
    std::unique_ptr<Store> store;
    floor_records *fr = nullptr;
    std::vector<uint8_t> keys;
    if (floor) {
        keys.resize(n * 16);
        for (size_t i = 0; i < n * 16; i += 8) {
            uint64_t v = rng.next();
            memcpy(&keys[i], &v, 8);
        }
        fr = floor_records_build((const uint8_t(*)[16])keys.data(), n, 0);
    } else {
        store = rw ? make_rwlock_store(n) : make_engine_store(n);
        Spec spec;
        for (size_t i = 0; i < n; i++) {
            make_spec(i, rng, &spec);
            if (!store->create(spec, nullptr, 0, &ids[i]))
                abort();
        }
        for (size_t i = 0; i < n; i++)
            store->heartbeat(ids[i]);
    }
    uint64_t seq = n;
    std::vector<afsm_uuid> pool;
    auto refill = [&] {
        pool.clear();
        Spec spec;
        for (size_t i = 0; i < 4096; i++) {
            afsm_uuid id;
            make_spec(seq++, rng, &spec);
            if (store->create(spec, nullptr, 0, &id))
                pool.push_back(id);
        }
        for (size_t i = pool.size(); i > 1; i--)
            std::swap(pool[i - 1], pool[rng.below(i)]);
    };
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    size_t failed = 0;
    CALLGRIND_START_INSTRUMENTATION;
    for (int round = 0; round < 2; round++) {
        if (create) {
            /* OPS creates on top of the population, ids as make_spec gives. */
            Spec spec;
            afsm_uuid id;
            if (round == 1)
                CALLGRIND_TOGGLE_COLLECT;
            for (size_t i = 0; i < ops; i++) {
                make_spec(seq++, rng, &spec);
                failed += !store->create(spec, nullptr, 0, &id);
            }
            if (round == 1)
                CALLGRIND_TOGGLE_COLLECT;
        } else if (heartbeat) {
            if (round == 1)
                CALLGRIND_TOGGLE_COLLECT;
            for (size_t i = 0; i < ops; i++)
                failed += !store->heartbeat(ids[rng.below(n)]);
            if (round == 1)
                CALLGRIND_TOGGLE_COLLECT;
        } else if (del) {
            /* As the benchmark: deletes timed, refills not. */
            for (size_t done = 0; done < ops;) {
                refill();
                if (round == 1)
                    CALLGRIND_TOGGLE_COLLECT;
                for (size_t i = 0; i < pool.size() && done < ops; i++, done++)
                    failed += !store->remove(pool[i]);
                if (round == 1)
                    CALLGRIND_TOGGLE_COLLECT;
            }
        } else {
            if (round == 1)
                CALLGRIND_TOGGLE_COLLECT;
            for (size_t i = 0; i < ops; i++) {
                size_t k = rng.below(n);
                if (floor)
                    failed += !floor_get_copy(fr, &keys[k * 16], &info);
                else
                    failed += !store->get(ids[k], &info);
                __asm__ volatile("" : : "r"(&info) : "memory");
            }
            if (round == 1)
                CALLGRIND_TOGGLE_COLLECT;
        }
    }
    printf("%s n=%zu ops=%zu failed=%zu\n", mode_name.c_str(), n, ops, failed);
    return failed != 0;
}
