/*
 * redis_baseline.cc: sessions in Redis on loopback, through hiredis, the
 * store most teams would reach for. A session is one string key
 * ("s:<id>") holding the serialised record (~170 bytes) with a TTL:
 * Create = SET key value EX ttl, Get = GET, Heartbeat = EXPIRE, Delete = DEL.
 * Each op runs one round trip at a time ("sync") and pipelined (64 commands
 * per round trip), the fairest case for Redis.
 *
 * The server is started by bench/run on a free 127.0.0.1 port and named in
 * AFSM_BENCH_REDIS_PORT; without it these benchmarks are not registered.
 * Every benchmark thread opens its own connection. Redis serves them from
 * one thread, so on 2 cores thread counts beyond 2 only add queueing: 1 and
 * 2 threads are measured.
 */
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "util.h"
#include "world.h"

namespace bench {
namespace {

constexpr int TTL_S = 1800;
constexpr size_t PIPELINE = 64;
constexpr size_t BATCH = 4096;

redisContext *connect_redis()
{
    redisContext *c = redisConnect("127.0.0.1", mode().redis_port);
    if (c == nullptr || c->err) {
        if (c != nullptr)
            redisFree(c);
        return nullptr;
    }
    return c;
}

std::string key_of(const afsm_uuid &id)
{
    char text[AFSM_UUID_STRING_SIZE];
    afsm_uuid_format(&id, text);
    return std::string("s:") + text;
}

std::string value_of(const Spec &s)
{
    char conn[AFSM_UUID_STRING_SIZE];
    afsm_uuid_format(&s.connection_id, conn);
    char buf[320];
    int n = snprintf(buf, sizeof(buf),
                     "{\"conn\":\"%s\",\"user\":\"%s\",\"ip\":\"%s\",\"port\":%u,\"state\":1,"
                     "\"created\":1732579200000000000,\"last\":1732579200000000000,\"stats\":[0,0,0,0,0,0]}",
                     conn, s.user_id, s.ip, (unsigned)s.port);
    return std::string(buf, (size_t)n);
}

/* A new session's key and value, as a create would send them. */
void make_pair(World *w, Rng &rng, std::string *key, std::string *value)
{
    Spec s;
    make_spec(w->next_seq.fetch_add(1, std::memory_order_relaxed), rng, &s);
    afsm_uuid id;
    afsm_uuid_v7(&id);
    *key = key_of(id);
    *value = value_of(s);
}

struct RedisWorld {
    size_t size = 0;
    std::vector<std::string> keys;
    World seq; /* only its next_seq is used */
};
std::mutex redis_mutex;
std::unique_ptr<RedisWorld> redis_world;

/* Runs cmds pipelined on c; false on any error reply. */
bool pipeline(redisContext *c, const std::vector<std::vector<std::string>> &cmds, size_t *nil_replies = nullptr)
{
    for (const auto &cmd : cmds) {
        std::vector<const char *> argv;
        std::vector<size_t> lens;
        for (const auto &a : cmd) {
            argv.push_back(a.data());
            lens.push_back(a.size());
        }
        redisAppendCommandArgv(c, (int)argv.size(), argv.data(), lens.data());
    }
    bool ok = true;
    for (size_t i = 0; i < cmds.size(); i++) {
        void *r = nullptr;
        if (redisGetReply(c, &r) != REDIS_OK || r == nullptr)
            return false;
        redisReply *reply = static_cast<redisReply *>(r);
        if (reply->type == REDIS_REPLY_ERROR)
            ok = false;
        if (nil_replies != nullptr && reply->type == REDIS_REPLY_NIL)
            (*nil_replies)++;
        freeReplyObject(reply);
    }
    return ok;
}

RedisWorld *redis_world_for(size_t size)
{
    std::lock_guard<std::mutex> guard(redis_mutex);
    if (redis_world && redis_world->size == size)
        return redis_world.get();
    world_drop();
    redis_world.reset();
    redisContext *c = connect_redis();
    if (c == nullptr)
        return nullptr;
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    auto w = std::make_unique<RedisWorld>();
    w->size = size;
    Rng rng(size + 99);
    std::vector<std::vector<std::string>> cmds;
    bool ok = true;
    for (size_t i = 0; i < size && ok; i++) {
        Spec s;
        make_spec(i, rng, &s);
        afsm_uuid id;
        afsm_uuid_v7(&id);
        w->keys.push_back(key_of(id));
        cmds.push_back({"SET", w->keys.back(), value_of(s), "EX", std::to_string(TTL_S)});
        if (cmds.size() == 1000 || i + 1 == size) {
            ok = pipeline(c, cmds);
            cmds.clear();
        }
    }
    redisFree(c);
    if (!ok)
        return nullptr;
    w->seq.next_seq = size;
    redis_world = std::move(w);
    return redis_world.get();
}

enum class Op { Create, Get, Heartbeat, Delete };

void redis_bench(benchmark::State &state, Op op, bool pipelined, size_t size)
{
    RedisWorld *w = redis_world_for(size);
    redisContext *c = w != nullptr ? connect_redis() : nullptr;
    if (c == nullptr) {
        state.SkipWithError("redis unreachable");
        return;
    }
    Rng rng((uint64_t)state.thread_index() * 7919 + size);
    const std::string ttl = std::to_string(TTL_S);
    size_t per_iter = pipelined ? PIPELINE : 1;
    std::vector<std::vector<std::string>> cmds;
    std::vector<std::string> made; /* Create: keys to drop; Delete: keys to delete */
    std::vector<std::string> values;
    size_t errors = 0, nils = 0;

    /* Creates and deletes are prepared (and undone) with the timer paused,
     * in batches, as for the engine. */
    auto prepare = [&] {
        made.clear();
        values.clear();
        std::vector<std::vector<std::string>> setup;
        for (size_t i = 0; i < BATCH; i++) {
            std::string k, v;
            make_pair(&w->seq, rng, &k, &v);
            if (op == Op::Delete)
                setup.push_back({"SET", k, v, "EX", ttl});
            made.push_back(k);
            values.push_back(v);
        }
        if (!setup.empty() && !pipeline(c, setup))
            errors++;
    };
    auto undo_creates = [&](size_t n) {
        std::vector<std::vector<std::string>> del;
        for (size_t i = 0; i < n; i++)
            del.push_back({"DEL", made[i]});
        if (!del.empty())
            pipeline(c, del);
    };
    size_t cursor = 0;
    if (op == Op::Create || op == Op::Delete)
        prepare();

    for (auto _ : state) {
        if ((op == Op::Create || op == Op::Delete) && cursor + per_iter > BATCH) {
            state.PauseTiming();
            if (op == Op::Create)
                undo_creates(cursor);
            prepare();
            cursor = 0;
            state.ResumeTiming();
        }
        cmds.clear();
        for (size_t i = 0; i < per_iter; i++) {
            switch (op) {
            case Op::Create:
                cmds.push_back({"SET", made[cursor], values[cursor], "EX", ttl});
                cursor++;
                break;
            case Op::Get:
                cmds.push_back({"GET", w->keys[rng.below(size)]});
                break;
            case Op::Heartbeat:
                cmds.push_back({"EXPIRE", w->keys[rng.below(size)], ttl});
                break;
            case Op::Delete:
                cmds.push_back({"DEL", made[cursor++]});
                break;
            }
        }
        if (!pipeline(c, cmds, &nils))
            errors++;
    }
    if (op == Op::Create)
        undo_creates(cursor);
    if (op == Op::Delete) {
        std::vector<std::vector<std::string>> rest;
        for (size_t i = cursor; i < made.size(); i++)
            rest.push_back({"DEL", made[i]});
        if (!rest.empty())
            pipeline(c, rest);
    }
    redisFree(c);
    if (errors)
        state.SkipWithError("redis returned errors");
    else if (op == Op::Get && nils)
        state.SkipWithError("redis GET missed");
    state.SetItemsProcessed(state.iterations() * (int64_t)per_iter);
}

} // namespace

void register_redis()
{
    if (mode().redis_port == 0) {
        fprintf(stderr, "[redis] AFSM_BENCH_REDIS_PORT is not set: Redis benchmarks skipped "
                        "(bench/run starts a server and sets it)\n");
        return;
    }
    struct Named {
        const char *name;
        Op op;
    };
    static const Named ops[] = {
        {"Create", Op::Create}, {"Get", Op::Get}, {"Heartbeat", Op::Heartbeat}, {"Delete", Op::Delete}};
    for (size_t size : mode().sizes) {
        for (bool pipelined : {false, true}) {
            for (const Named &op : ops) {
                for (int t : mode().threads) {
                    if (t > 2)
                        continue;
                    std::string name = std::string(op.name) + (pipelined ? "/redis_pipelined" : "/redis_sync") +
                                       "/n:" + std::to_string(size);
                    Op o = op.op;
                    benchmark::RegisterBenchmark(name.c_str(), [o, pipelined, size](benchmark::State &st) {
                        redis_bench(st, o, pipelined, size);
                    })
                        ->Threads(t)
                        ->UseRealTime()
                        ->MinTime(mode().min_time);
                }
            }
        }
    }
}

} // namespace bench
