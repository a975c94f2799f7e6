/*
 * store.h: the one interface the operation benchmarks drive, so the engine
 * and the old service's design run the very same loops (workloads.cc).
 * A virtual call costs both sides the same couple of nanoseconds.
 *
 * Every call may run from any thread at once, as the engine's calls may.
 */
#ifndef AFSM_BENCH_STORE_H
#define AFSM_BENCH_STORE_H

#include <afsm.h>

#include <memory>

#include "util.h"

namespace bench
{

class Store
{
  public:
    virtual ~Store() = default;
    virtual bool create(const Spec &spec, const afsm_kv *meta, size_t meta_count, afsm_uuid *id) = 0;
    virtual bool get(const afsm_uuid &id, afsm_session_info *out) = 0;
    virtual bool get_by_connection(const afsm_uuid &connection_id, afsm_session_info *out) = 0;
    virtual bool heartbeat(const afsm_uuid &id) = 0;
    virtual bool add_stats(const afsm_uuid &id, const afsm_stats &delta) = 0;
    /* A pinned handle where the store has one; else whatever makes
     * add_stats_pinned cheapest (the baseline keeps the id). */
    virtual void *pin(const afsm_uuid &id) = 0;
    virtual bool add_stats_pinned(void *pinned, const afsm_stats &delta) = 0;
    virtual void unpin(void *pinned) = 0;
    /* Copies up to cap of the user's sessions in id order; returns how many. */
    virtual size_t list_user(const char *user_id, size_t len, afsm_session_info *out, size_t cap) = 0;
    virtual bool remove(const afsm_uuid &id) = 0;
    /* Batches of n ids; each returns how many items succeeded. The engine
     * has batch calls (afsm_session_*_batch); the baseline has none, so
     * its batch is the loop a caller would write. */
    virtual size_t get_batch(const afsm_uuid *ids, size_t n, afsm_session_info *out)
    {
        size_t ok = 0;
        for (size_t i = 0; i < n; i++)
            ok += get(ids[i], &out[i]);
        return ok;
    }
    virtual size_t heartbeat_batch(const afsm_uuid *ids, size_t n)
    {
        size_t ok = 0;
        for (size_t i = 0; i < n; i++)
            ok += heartbeat(ids[i]);
        return ok;
    }
    virtual size_t add_stats_batch(const afsm_uuid *ids, const afsm_stats *deltas, size_t n)
    {
        size_t ok = 0;
        for (size_t i = 0; i < n; i++)
            ok += add_stats(ids[i], deltas[i]);
        return ok;
    }
};

/* The engine as shipped: default shards, reaper thread, capacity hint. */
std::unique_ptr<Store> make_engine_store(size_t capacity);
/* The old service: one hash map per index behind one pthread_rwlock. */
std::unique_ptr<Store> make_rwlock_store(size_t capacity);

} // namespace bench

#endif
