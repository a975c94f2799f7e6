// health.h: grpc.health.v1.Health on the completion-queue server (Check and
// Watch). sessiond's own, because grpc++'s default health service is a
// callback service (calls.h says why the server has none).
//
// Statuses: "" (the server) and each service named at construction are
// SERVING until set_serving(false); any other name is unknown (Check:
// NOT_FOUND; Watch: SERVICE_UNKNOWN, and the stream stays open, as the
// protocol says).
//
// Locking: mu_ guards the status and the set of Watch streams; a status
// change is handed to every stream under it (each stream takes its own lock
// after it, never the other way round, and only queues a write).
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "calls.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace sessiond
{

class HealthService
{
  public:
    explicit HealthService(std::vector<std::string> services);
    ~HealthService();

    RawRequests<grpc::health::v1::Health::AsyncService> *async()
    {
        return &async_;
    }
    // Posts one request for Check and one for Watch on cq.
    void listen(grpc::ServerCompletionQueue *cq);

    // Every known service SERVING or NOT_SERVING; Watch streams see the change.
    void set_serving(bool serving);
    // For shutdown: NOT_SERVING, then every Watch stream ends with OK after
    // that status, and new ones end at once (they would hold up the server's
    // shutdown for the whole grace period).
    void close();

  private:
    class WatchCall;
    struct Methods;
    grpc::health::v1::HealthCheckResponse::ServingStatus status_locked(const std::string &service, bool *known) const;
    grpc::Status check(const grpc::health::v1::HealthCheckRequest &req, grpc::health::v1::HealthCheckResponse *resp);
    bool add(const std::shared_ptr<WatchCall> &w);
    void remove(const WatchCall *w);

    const std::vector<std::string> services_;
    RawRequests<grpc::health::v1::Health::AsyncService> async_;
    std::unique_ptr<Methods> methods_;
    mutable std::mutex mu_;
    bool serving_ = true;
    bool closed_ = false;
    std::set<std::shared_ptr<WatchCall>> watchers_;
};

} // namespace sessiond
