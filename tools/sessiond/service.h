// service.h: session.SessionService on top of one afsm engine, and the hub
// that fans engine events out to WatchSessions streams.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include <afsm.h>

#include "calls.h"
#include "session.grpc.pb.h"

namespace sessiond
{

// Engine status -> gRPC status; the message is "<what>: <strerror> (<name>)".
grpc::Status status_from_afsm(afsm_status status, const std::string &what);
// As above, for token checks: every failure that means "this token does not
// prove a live session" is UNAUTHENTICATED.
grpc::Status token_status_from_afsm(afsm_status status);

class Watcher;

// Owns the set of open watch streams. The engine's event callback calls
// publish() on whatever thread made the change; it copies the watcher list
// under a short lock and then queues into each watcher without holding it,
// so no engine thread ever waits on a client.
class WatchHub
{
  public:
    explicit WatchHub(uint32_t per_stream_buffer) : buffer_(per_stream_buffer)
    {
    }
    static void on_engine_event(void *ctx, const afsm_event *event);
    void publish(const afsm_event *event);
    enum class Added { Yes, Closed, Full };
    Added add(const std::shared_ptr<Watcher> &w, size_t max_watchers);
    void remove(const Watcher *w);
    // Ends every stream with OK after its queued events, and refuses new ones.
    void close_all();
    size_t count() const
    {
        return count_.load(std::memory_order_relaxed);
    }
    uint32_t buffer() const
    {
        return buffer_;
    }
    uint64_t dropped() const
    {
        return dropped_.load(std::memory_order_relaxed);
    }
    void count_drop()
    {
        dropped_.fetch_add(1, std::memory_order_relaxed);
    }
    // Events not delivered to report_lag watchers (each told in a LAGGED event).
    uint64_t missed() const
    {
        return missed_.load(std::memory_order_relaxed);
    }
    void count_missed()
    {
        missed_.fetch_add(1, std::memory_order_relaxed);
    }
    // Events queued in all watchers: bounded by watchers x (buffer + 1).
    int64_t queued() const
    {
        return queued_.load(std::memory_order_relaxed);
    }
    void add_queued(int64_t delta)
    {
        if (delta != 0)
            queued_.fetch_add(delta, std::memory_order_relaxed);
    }

  private:
    const uint32_t buffer_;
    std::mutex mu_; // guards watchers_ and closed_
    std::vector<std::shared_ptr<Watcher>> watchers_;
    bool closed_ = false;
    std::atomic<size_t> count_{0};
    std::atomic<uint64_t> dropped_{0};
    std::atomic<uint64_t> missed_{0};
    std::atomic<int64_t> queued_{0};
};

// Per-method, per-code call counters for /metrics (sessiond_grpc_requests_total).
class RpcCounters
{
  public:
    static constexpr int kMethods = 15;
    static constexpr int kCodes = 17;
    static const char *method_name(int m);
    void count(int method, grpc::StatusCode code)
    {
        int c = static_cast<int>(code);
        if (c < 0 || c >= kCodes)
            c = static_cast<int>(grpc::StatusCode::UNKNOWN);
        counts_[method][c].fetch_add(1, std::memory_order_relaxed);
    }
    uint64_t get(int method, int code) const
    {
        return counts_[method][code].load(std::memory_order_relaxed);
    }

  private:
    std::atomic<uint64_t> counts_[kMethods][kCodes] = {};
};

// What one client may ask of the service (the --max-* flags).
struct ServiceLimits {
    size_t max_batch = 10000;
    size_t max_watchers = 1024;
};

// The handlers of session.SessionService, served through gRPC's
// completion-queue API: register async() with the server builder, then
// listen() on each of the server's queues once it is started.
class SessionServiceImpl final
{
  public:
    SessionServiceImpl(afsm_engine *engine, WatchHub *hub, RpcCounters *counters, ServiceLimits limits);
    ~SessionServiceImpl();

    RawRequests<session::SessionService::AsyncService> *async()
    {
        return &async_;
    }
    // Posts kRequestsPerMethod requests for every method on cq (each call
    // state posts its successor when its call arrives).
    static constexpr int kRequestsPerMethod = 16;
    void listen(grpc::ServerCompletionQueue *cq);

    // The unary handlers: the status is the call's answer, resp its message
    // when OK. Each runs on the queue thread that took the call.
    grpc::Status CreateSession(grpc::ServerContext *ctx, const session::CreateSessionRequest *req,
                               session::CreateSessionResponse *resp);
    grpc::Status GetSession(grpc::ServerContext *ctx, const session::GetSessionRequest *req,
                            session::GetSessionResponse *resp);
    grpc::Status UpdateSession(grpc::ServerContext *ctx, const session::UpdateSessionRequest *req,
                               session::UpdateSessionResponse *resp);
    grpc::Status DeleteSession(grpc::ServerContext *ctx, const session::DeleteSessionRequest *req,
                               session::DeleteSessionResponse *resp);
    grpc::Status ListSessions(grpc::ServerContext *ctx, const session::ListSessionsRequest *req,
                              session::ListSessionsResponse *resp);
    grpc::Status Heartbeat(grpc::ServerContext *ctx, const session::HeartbeatRequest *req,
                           session::HeartbeatResponse *resp);
    grpc::Status GetSessionByConnection(grpc::ServerContext *ctx, const session::GetSessionByConnectionRequest *req,
                                        session::GetSessionResponse *resp);
    grpc::Status DeleteUserSessions(grpc::ServerContext *ctx, const session::DeleteUserSessionsRequest *req,
                                    session::DeleteUserSessionsResponse *resp);
    grpc::Status ValidateToken(grpc::ServerContext *ctx, const session::ValidateTokenRequest *req,
                               session::ValidateTokenResponse *resp);
    grpc::Status RotateToken(grpc::ServerContext *ctx, const session::RotateTokenRequest *req,
                             session::RotateTokenResponse *resp);
    grpc::Status GetStats(grpc::ServerContext *ctx, const session::GetStatsRequest *req,
                          session::GetStatsResponse *resp);
    grpc::Status HeartbeatBatch(grpc::ServerContext *ctx, const session::HeartbeatBatchRequest *req,
                                session::HeartbeatBatchResponse *resp);
    grpc::Status AddStatsBatch(grpc::ServerContext *ctx, const session::AddStatsBatchRequest *req,
                               session::AddStatsBatchResponse *resp);

    // One batch of heartbeats into resp (shared by the unary and the stream
    // form). Not OK only for a request that is bad as a whole.
    grpc::Status heartbeat_batch(const session::HeartbeatBatchRequest &req, session::HeartbeatBatchResponse *resp);
    void count(int method, grpc::StatusCode code)
    {
        counters_->count(method, code);
    }

    WatchHub *hub()
    {
        return hub_;
    }
    size_t max_watchers() const
    {
        return limits_.max_watchers;
    }

  private:
    struct Methods;
    void make_methods();
    // Counts the call's outcome (and logs a failure at debug level).
    grpc::Status finish(int method, const grpc::Status &status);
    // Copies a session (and its metadata) into the wire message.
    void fill_session(const afsm_session_info &info, session::Session *out);

    afsm_engine *engine_;
    WatchHub *hub_;
    RpcCounters *counters_;
    const ServiceLimits limits_;
    std::chrono::steady_clock::time_point started_;
    RawRequests<session::SessionService::AsyncService> async_;
    std::unique_ptr<Methods> methods_;
};

} // namespace sessiond
