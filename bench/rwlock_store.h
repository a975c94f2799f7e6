/*
 * rwlock_store.h: the baseline the engine replaces. The old service kept
 * one hash map per index (by id, by connection, by user) behind a single
 * reader-writer lock: lookups share it, every change (create, delete, and
 * also heartbeat and stats, which rewrite the record) takes it exclusively.
 * The records hold the same fields as the engine's (string user id, binary
 * IP, state, timestamps, a string metadata map, traffic counters), and a get
 * copies one out into the same afsm_session_info, so the work per call
 * matches and only the synchronisation and layout differ.
 *
 * Expiry in that design is a periodic full scan under the write lock
 * (expire_scan), the thing the engine's timing wheel is measured against.
 */
#ifndef AFSM_BENCH_RWLOCK_STORE_H
#define AFSM_BENCH_RWLOCK_STORE_H

#include <pthread.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "store.h"

namespace bench
{

struct UuidHash {
    size_t operator()(const afsm_uuid &u) const
    {
        uint64_t a, b;
        memcpy(&a, u.bytes, 8);
        memcpy(&b, u.bytes + 8, 8);
        uint64_t x = a ^ (b * 0x9e3779b97f4a7c15ull);
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        return (size_t)x;
    }
};
struct UuidEq {
    bool operator()(const afsm_uuid &a, const afsm_uuid &b) const
    {
        return memcmp(a.bytes, b.bytes, 16) == 0;
    }
};

class RwlockStore final : public Store
{
  public:
    typedef uint64_t (*clock_fn)(void *ctx);
    /* clock NULL: CLOCK_MONOTONIC_COARSE, as the engine's default. */
    explicit RwlockStore(size_t capacity, clock_fn clock = nullptr, void *clock_ctx = nullptr);
    ~RwlockStore() override;

    bool create(const Spec &spec, const afsm_kv *meta, size_t meta_count, afsm_uuid *id) override
    {
        return create_with_timeout(spec, meta, meta_count, 30ull * 60 * 1000, id);
    }
    bool create_with_timeout(const Spec &spec, const afsm_kv *meta, size_t meta_count, uint64_t timeout_ms,
                             afsm_uuid *id);
    bool get(const afsm_uuid &id, afsm_session_info *out) override;
    bool get_by_connection(const afsm_uuid &connection_id, afsm_session_info *out) override;
    bool heartbeat(const afsm_uuid &id) override;
    bool add_stats(const afsm_uuid &id, const afsm_stats &delta) override;
    void *pin(const afsm_uuid &id) override;
    bool add_stats_pinned(void *pinned, const afsm_stats &delta) override;
    void unpin(void *pinned) override;
    size_t list_user(const char *user_id, size_t len, afsm_session_info *out, size_t cap) override;
    bool remove(const afsm_uuid &id) override;

    /* The old reaper: scan every record under the write lock, erase the
     * expired from all three maps. Returns how many. */
    size_t expire_scan(uint64_t now_ns);
    size_t size();

  private:
    struct Record {
        afsm_uuid id;
        afsm_uuid connection_id;
        afsm_ip client_ip;
        uint16_t client_port;
        uint32_t state;
        std::string user_id;
        int64_t created_wall_ns;
        uint64_t last_active_ns;
        uint64_t expires_ns;
        uint64_t timeout_ns;
        std::map<std::string, std::string> metadata;
        afsm_stats stats;
    };
    uint64_t now() const
    {
        return clock_(clock_ctx_);
    }
    void fill(const Record &r, afsm_session_info *out) const;
    void erase_locked(std::unordered_map<afsm_uuid, std::unique_ptr<Record>, UuidHash, UuidEq>::iterator it);

    pthread_rwlock_t lock_;
    clock_fn clock_;
    void *clock_ctx_;
    int64_t wall_offset_ns_;
    std::string server_addr_;
    std::unordered_map<afsm_uuid, std::unique_ptr<Record>, UuidHash, UuidEq> by_id_;
    std::unordered_map<afsm_uuid, Record *, UuidHash, UuidEq> by_connection_;
    std::unordered_map<std::string, std::vector<afsm_uuid>> by_user_;
};

} // namespace bench

#endif
