/*
 * rwlock_store.cc: the old service's design (see rwlock_store.h).
 */
#include "rwlock_store.h"

#include <algorithm>
#include <ctime>

namespace bench {

static uint64_t coarse_clock(void *)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int64_t wall_ns()
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

RwlockStore::RwlockStore(size_t capacity, clock_fn clock, void *clock_ctx)
    : clock_(clock != nullptr ? clock : coarse_clock), clock_ctx_(clock_ctx), server_addr_("")
{
    /* Writer preference, as Go's RWMutex: a waiting writer stops new
     * readers, so writes are not starved (and readers pay for it). */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&lock_, &attr);
    pthread_rwlockattr_destroy(&attr);
    wall_offset_ns_ = wall_ns() - (int64_t)now();
    by_id_.reserve(capacity);
    by_connection_.reserve(capacity);
    by_user_.reserve(capacity / SESSIONS_PER_USER + 1);
}

RwlockStore::~RwlockStore() { pthread_rwlock_destroy(&lock_); }

void RwlockStore::fill(const Record &r, afsm_session_info *out) const
{
    out->state = r.state;
    out->session_id = r.id;
    out->connection_id = r.connection_id;
    out->client_ip = r.client_ip;
    out->client_port = r.client_port;
    out->user_id_len = (uint32_t)r.user_id.size();
    memcpy(out->user_id, r.user_id.c_str(), r.user_id.size() + 1);
    out->server_addr_len = (uint32_t)server_addr_.size();
    memcpy(out->server_addr, server_addr_.c_str(), server_addr_.size() + 1);
    out->created_at_ns = r.created_wall_ns;
    out->last_active_at_ns = (int64_t)r.last_active_ns + wall_offset_ns_;
    out->expires_at_ns = (int64_t)r.expires_ns + wall_offset_ns_;
    out->timeout_ms = r.timeout_ns / 1000000;
    out->metadata_count = (uint32_t)r.metadata.size();
    uint32_t bytes = 0;
    for (const auto &kv : r.metadata)
        bytes += (uint32_t)(kv.first.size() + kv.second.size() + 2);
    out->metadata_bytes = bytes;
    out->stats = r.stats;
}

bool RwlockStore::create_with_timeout(const Spec &spec, const afsm_kv *meta, size_t meta_count, uint64_t timeout_ms,
                                      afsm_uuid *id)
{
    /* Validation and record building outside the lock, as a careful
     * service would; only the index updates are serialised. */
    auto r = std::make_unique<Record>();
    if (afsm_ip_parse(spec.ip, spec.ip_len, &r->client_ip) != AFSM_OK)
        return false;
    afsm_uuid_v7(&r->id);
    r->connection_id = spec.connection_id;
    r->client_port = spec.port;
    r->state = AFSM_STATE_CONNECTING;
    r->user_id.assign(spec.user_id, spec.user_id_len);
    r->created_wall_ns = wall_ns();
    r->last_active_ns = now();
    r->timeout_ns = timeout_ms * 1000000ull;
    r->expires_ns = r->last_active_ns + r->timeout_ns;
    for (size_t i = 0; i < meta_count; i++)
        r->metadata.emplace(std::string(meta[i].key, meta[i].key_len), std::string(meta[i].value, meta[i].value_len));
    r->stats = afsm_stats{};
    *id = r->id;

    pthread_rwlock_wrlock(&lock_);
    bool ok = by_connection_.find(r->connection_id) == by_connection_.end();
    if (ok) {
        Record *raw = r.get();
        by_connection_.emplace(raw->connection_id, raw);
        by_user_[raw->user_id].push_back(raw->id); /* v7 ids grow: the vector stays sorted */
        by_id_.emplace(raw->id, std::move(r));
    }
    pthread_rwlock_unlock(&lock_);
    return ok;
}

bool RwlockStore::get(const afsm_uuid &id, afsm_session_info *out)
{
    pthread_rwlock_rdlock(&lock_);
    auto it = by_id_.find(id);
    bool ok = it != by_id_.end() && it->second->expires_ns > now();
    if (it != by_id_.end())
        fill(*it->second, out);
    pthread_rwlock_unlock(&lock_);
    return ok;
}

bool RwlockStore::get_by_connection(const afsm_uuid &connection_id, afsm_session_info *out)
{
    pthread_rwlock_rdlock(&lock_);
    auto it = by_connection_.find(connection_id);
    bool ok = it != by_connection_.end() && it->second->expires_ns > now();
    if (it != by_connection_.end())
        fill(*it->second, out);
    pthread_rwlock_unlock(&lock_);
    return ok;
}

bool RwlockStore::heartbeat(const afsm_uuid &id)
{
    uint64_t t = now();
    pthread_rwlock_wrlock(&lock_);
    auto it = by_id_.find(id);
    bool ok = it != by_id_.end() && it->second->expires_ns > t;
    if (ok) {
        Record &r = *it->second;
        if (t > r.last_active_ns) {
            r.last_active_ns = t;
            r.expires_ns = t + r.timeout_ns;
        }
        /* The old service's heartbeat marks the session active. */
        if (r.state == AFSM_STATE_CONNECTING || r.state == AFSM_STATE_IDLE)
            r.state = AFSM_STATE_ACTIVE;
    }
    pthread_rwlock_unlock(&lock_);
    return ok;
}

bool RwlockStore::add_stats(const afsm_uuid &id, const afsm_stats &d)
{
    pthread_rwlock_wrlock(&lock_);
    auto it = by_id_.find(id);
    bool ok = it != by_id_.end();
    if (ok) {
        afsm_stats &s = it->second->stats;
        s.packets_sent += d.packets_sent;
        s.packets_received += d.packets_received;
        s.bytes_sent += d.bytes_sent;
        s.bytes_received += d.bytes_received;
        s.retransmissions += d.retransmissions;
        if (d.current_rtt_ms)
            s.current_rtt_ms = d.current_rtt_ms;
    }
    pthread_rwlock_unlock(&lock_);
    return ok;
}

/* The old design has no handles: a "pinned" update is an update by id. */
void *RwlockStore::pin(const afsm_uuid &id) { return new afsm_uuid(id); }
bool RwlockStore::add_stats_pinned(void *pinned, const afsm_stats &d)
{
    return add_stats(*static_cast<afsm_uuid *>(pinned), d);
}
void RwlockStore::unpin(void *pinned) { delete static_cast<afsm_uuid *>(pinned); }

size_t RwlockStore::list_user(const char *user_id, size_t len, afsm_session_info *out, size_t cap)
{
    std::string key(user_id, len);
    uint64_t t = now();
    size_t n = 0;
    pthread_rwlock_rdlock(&lock_);
    auto it = by_user_.find(key);
    if (it != by_user_.end()) {
        for (const afsm_uuid &id : it->second) {
            if (n == cap)
                break;
            auto r = by_id_.find(id);
            if (r != by_id_.end() && r->second->expires_ns > t)
                fill(*r->second, &out[n++]);
        }
    }
    pthread_rwlock_unlock(&lock_);
    return n;
}

void RwlockStore::erase_locked(std::unordered_map<afsm_uuid, std::unique_ptr<Record>, UuidHash, UuidEq>::iterator it)
{
    Record &r = *it->second;
    by_connection_.erase(r.connection_id);
    auto u = by_user_.find(r.user_id);
    if (u != by_user_.end()) {
        auto &v = u->second;
        v.erase(std::remove_if(v.begin(), v.end(), [&](const afsm_uuid &x) { return UuidEq()(x, r.id); }), v.end());
        if (v.empty())
            by_user_.erase(u);
    }
    by_id_.erase(it);
}

bool RwlockStore::remove(const afsm_uuid &id)
{
    /* The record is freed after the unlock: a careful service keeps the
     * allocator out of its critical section, and so does the engine. */
    std::unique_ptr<Record> doomed;
    pthread_rwlock_wrlock(&lock_);
    auto it = by_id_.find(id);
    bool ok = it != by_id_.end();
    if (ok) {
        doomed = std::move(it->second);
        it->second = nullptr;
        Record *r = doomed.get();
        by_connection_.erase(r->connection_id);
        auto u = by_user_.find(r->user_id);
        if (u != by_user_.end()) {
            auto &v = u->second;
            v.erase(std::remove_if(v.begin(), v.end(), [&](const afsm_uuid &x) { return UuidEq()(x, r->id); }),
                    v.end());
            if (v.empty())
                by_user_.erase(u);
        }
        by_id_.erase(it);
    }
    pthread_rwlock_unlock(&lock_);
    return ok;
}

size_t RwlockStore::expire_scan(uint64_t now_ns)
{
    size_t n = 0;
    pthread_rwlock_wrlock(&lock_);
    for (auto it = by_id_.begin(); it != by_id_.end();) {
        if (it->second->expires_ns <= now_ns) {
            auto next = std::next(it);
            erase_locked(it);
            it = next;
            n++;
        } else {
            ++it;
        }
    }
    pthread_rwlock_unlock(&lock_);
    return n;
}

size_t RwlockStore::size()
{
    pthread_rwlock_rdlock(&lock_);
    size_t n = by_id_.size();
    pthread_rwlock_unlock(&lock_);
    return n;
}

std::unique_ptr<Store> make_rwlock_store(size_t capacity) { return std::make_unique<RwlockStore>(capacity); }

} // namespace bench
