/*
 * engine_store.cc: the engine behind the benchmark's Store interface,
 * through the public ABI only (include/afsm.h), exactly as a C caller
 * would use it.
 */
#include <cstdio>
#include <cstdlib>

#include "store.h"

namespace bench {
namespace {

class EngineStore final : public Store {
public:
    explicit EngineStore(size_t capacity)
    {
        afsm_config cfg = AFSM_CONFIG_INIT;
        afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
        cfg.capacity_hint = capacity;
        /* The shipped default: a reaper thread ticking once a second. With
         * 30-minute timeouts it expires nothing here, but it is part of the
         * cost a user pays (and the engine's housekeeping runs in it). */
        cfg.reaper = AFSM_REAPER_THREAD;
        /* For experiments with the shard count (goal 5: two creates collide
         * on a shard lock); unset, the engine's default. */
        if (const char *shards = getenv("AFSM_BENCH_SHARDS"))
            cfg.shard_count = (uint32_t)strtoul(shards, nullptr, 10);
        afsm_status st = afsm_engine_open(&cfg, &engine_);
        if (st != AFSM_OK) {
            fprintf(stderr, "afsm_engine_open: %s\n", afsm_strerror(st));
            abort();
        }
    }
    ~EngineStore() override { afsm_engine_close(engine_); }

    bool create(const Spec &spec, const afsm_kv *meta, size_t meta_count, afsm_uuid *id) override
    {
        afsm_create_options o = create_options_of(spec);
        o.metadata = meta;
        o.metadata_count = meta_count;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        if (afsm_session_create(engine_, &o, &info) != AFSM_OK)
            return false;
        *id = info.session_id;
        return true;
    }
    bool get(const afsm_uuid &id, afsm_session_info *out) override
    {
        return afsm_session_get(engine_, &id, out) == AFSM_OK;
    }
    bool get_by_connection(const afsm_uuid &connection_id, afsm_session_info *out) override
    {
        return afsm_session_get_by_connection(engine_, &connection_id, out) == AFSM_OK;
    }
    bool heartbeat(const afsm_uuid &id) override { return afsm_session_heartbeat(engine_, &id, nullptr) == AFSM_OK; }
    bool add_stats(const afsm_uuid &id, const afsm_stats &delta) override
    {
        return afsm_session_add_stats(engine_, &id, &delta) == AFSM_OK;
    }
    void *pin(const afsm_uuid &id) override
    {
        afsm_handle *h = nullptr;
        return afsm_handle_pin(engine_, &id, &h) == AFSM_OK ? h : nullptr;
    }
    bool add_stats_pinned(void *pinned, const afsm_stats &delta) override
    {
        return afsm_handle_add_stats(static_cast<afsm_handle *>(pinned), &delta) == AFSM_OK;
    }
    void unpin(void *pinned) override { afsm_handle_release(static_cast<afsm_handle *>(pinned)); }
    size_t list_user(const char *user_id, size_t len, afsm_session_info *out, size_t cap) override
    {
        afsm_list_filter f = AFSM_LIST_FILTER_INIT;
        f.user_id = user_id;
        f.user_id_len = len;
        f.limit = (uint32_t)cap;
        size_t count = 0;
        uint64_t total = 0;
        if (afsm_session_list(engine_, &f, out, cap, &count, &total, nullptr) != AFSM_OK)
            return 0;
        return count;
    }
    bool remove(const afsm_uuid &id) override { return afsm_session_delete(engine_, &id, nullptr, 0) == AFSM_OK; }
    size_t get_batch(const afsm_uuid *ids, size_t n, afsm_session_info *out) override
    {
        afsm_status st[MAX_BATCH];
        if (n > MAX_BATCH || afsm_session_get_batch(engine_, ids, n, out, st) != AFSM_OK)
            return 0;
        return ok_count(st, n);
    }
    size_t heartbeat_batch(const afsm_uuid *ids, size_t n) override
    {
        afsm_status st[MAX_BATCH];
        if (n > MAX_BATCH || afsm_session_heartbeat_batch(engine_, ids, n, nullptr, st) != AFSM_OK)
            return 0;
        return ok_count(st, n);
    }
    size_t add_stats_batch(const afsm_uuid *ids, const afsm_stats *deltas, size_t n) override
    {
        afsm_status st[MAX_BATCH];
        if (n > MAX_BATCH || afsm_session_add_stats_batch(engine_, ids, deltas, n, st) != AFSM_OK)
            return 0;
        return ok_count(st, n);
    }

private:
    static constexpr size_t MAX_BATCH = 256;
    static size_t ok_count(const afsm_status *st, size_t n)
    {
        size_t ok = 0;
        for (size_t i = 0; i < n; i++)
            ok += st[i] == AFSM_OK;
        return ok;
    }
    afsm_engine *engine_ = nullptr;
};

} // namespace

std::unique_ptr<Store> make_engine_store(size_t capacity) { return std::make_unique<EngineStore>(capacity); }

} // namespace bench
