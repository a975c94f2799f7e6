// health.cc: grpc.health.v1.Health (health.h). Check is a UnaryCall; Watch
// is a WatchCall: a server stream that writes the latest status whenever it
// changes (older statuses not yet written are superseded, so a stream holds
// at most one pending status).
#include "health.h"

#include <algorithm>

#include "calls.h"

namespace sessiond
{

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// Lifetime as the WatchSessions Watcher (service.cc): the call owns itself
// (self_) from its request until both its finish and gRPC's done
// notification are back, or until a request that came back empty
// (shutdown). The service's set holds another reference while it is open.
class HealthService::WatchCall final
{
  public:
    static void listen(HealthService *health, grpc::ServerCompletionQueue *cq)
    {
        std::shared_ptr<WatchCall> w(new WatchCall(health, cq));
        w->self_ = w;
        w->ctx_.AsyncNotifyWhenDone(&w->done_tag_);
        health->async_.RequestWatch(&w->ctx_, &w->req_, &w->writer_, cq, cq, &w->request_tag_);
    }

    const std::string &service() const
    {
        return req_.service();
    }

    // Called with the service's mu_ held: queues status for writing. A
    // message only when the status changes: a status the client already has
    // (or is being sent) is not sent again, and drops one pending.
    void update(HealthCheckResponse::ServingStatus status)
    {
        bool write;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (closing_)
                return;
            if (sent_any_ && status == last_sent_) {
                has_pending_ = false;
                return;
            }
            pending_ = status;
            has_pending_ = true;
            write = take_write_locked();
        }
        act(write, false);
    }

    // Ends the stream with OK after the status pending, if any.
    void end()
    {
        bool fin;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (closing_)
                return;
            closing_ = true;
            fin = take_finish_locked();
        }
        act(false, fin);
    }

  private:
    WatchCall(HealthService *health, grpc::ServerCompletionQueue *cq) : health_(health), cq_(cq), writer_(&ctx_)
    {
    }

    void on_request(bool ok)
    {
        if (!ok) {
            self_.reset(); // no call came (shutdown); deletes this
            return;
        }
        listen(health_, cq_);
        if (!health_->add(self_)) // closed: the server is stopping
            end();
    }

    void on_write(bool ok)
    {
        bool write = false, fin = false;
        {
            std::lock_guard<std::mutex> lock(mu_);
            writing_ = false;
            if (!ok) { // the client went away
                has_pending_ = false;
                closing_ = true;
            }
            write = take_write_locked();
            if (!write)
                fin = take_finish_locked();
        }
        act(write, fin);
    }

    void on_finish(bool)
    {
        bool over;
        {
            std::lock_guard<std::mutex> lock(mu_);
            finish_back_ = true;
            over = done_;
        }
        if (over)
            retire();
    }

    void on_done(bool)
    {
        if (ctx_.IsCancelled()) {
            {
                std::lock_guard<std::mutex> lock(mu_);
                has_pending_ = false;
            }
            end();
        }
        bool over;
        {
            std::lock_guard<std::mutex> lock(mu_);
            done_ = true;
            over = finish_back_;
        }
        if (over)
            retire();
    }

    void retire()
    {
        health_->remove(this);
        std::shared_ptr<WatchCall> last = std::move(self_); // may delete this on return
    }

    bool take_write_locked()
    {
        if (writing_ || finished_ || !has_pending_)
            return false;
        current_.set_status(pending_);
        last_sent_ = pending_;
        sent_any_ = true;
        has_pending_ = false;
        writing_ = true;
        return true;
    }
    bool take_finish_locked()
    {
        if (!closing_ || writing_ || finished_ || has_pending_)
            return false;
        finished_ = true;
        return true;
    }
    void act(bool write, bool fin)
    {
        if (write)
            writer_.Write(current_, &write_tag_);
        if (fin)
            writer_.Finish(grpc::Status::OK, &finish_tag_);
    }

    LiveCalls live_; // first: uncounted only once every other member (the context) is gone
    HealthService *const health_;
    grpc::ServerCompletionQueue *const cq_;
    grpc::ServerContext ctx_;
    HealthCheckRequest req_;
    grpc::ServerAsyncWriter<HealthCheckResponse> writer_;
    OpTag<WatchCall> request_tag_{this, &WatchCall::on_request};
    OpTag<WatchCall> write_tag_{this, &WatchCall::on_write};
    OpTag<WatchCall> finish_tag_{this, &WatchCall::on_finish};
    OpTag<WatchCall> done_tag_{this, &WatchCall::on_done};
    std::mutex mu_;
    HealthCheckResponse current_; // the status being written
    HealthCheckResponse::ServingStatus pending_ = HealthCheckResponse::UNKNOWN;
    HealthCheckResponse::ServingStatus last_sent_ = HealthCheckResponse::UNKNOWN; // written or being written
    bool sent_any_ = false;
    bool has_pending_ = false;
    bool writing_ = false;
    bool closing_ = false;
    bool finished_ = false;
    bool finish_back_ = false;
    bool done_ = false;
    std::shared_ptr<WatchCall> self_;
};

struct HealthService::Methods {
    UnaryMethod<RawRequests<grpc::health::v1::Health::AsyncService>, HealthCheckRequest, HealthCheckResponse> check;
};

HealthService::HealthService(std::vector<std::string> services) : services_(std::move(services))
{
    methods_.reset(new Methods{{&async_, async_.raw_method("grpc.health.v1.Health.Check"),
                                [this](grpc::ServerContext &, const HealthCheckRequest &req,
                                       HealthCheckResponse *resp) { return check(req, resp); }}});
}

HealthService::~HealthService() = default;

void HealthService::listen(grpc::ServerCompletionQueue *cq)
{
    UnaryCall<RawRequests<grpc::health::v1::Health::AsyncService>, HealthCheckRequest, HealthCheckResponse>::listen(
        &methods_->check, cq);
    WatchCall::listen(this, cq);
}

HealthCheckResponse::ServingStatus HealthService::status_locked(const std::string &service, bool *known) const
{
    *known = service.empty() || std::find(services_.begin(), services_.end(), service) != services_.end();
    if (!*known)
        return HealthCheckResponse::SERVICE_UNKNOWN;
    return serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

grpc::Status HealthService::check(const HealthCheckRequest &req, HealthCheckResponse *resp)
{
    bool known;
    std::lock_guard<std::mutex> lock(mu_);
    HealthCheckResponse::ServingStatus st = status_locked(req.service(), &known);
    if (!known)
        return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service \"" + req.service().substr(0, 128) + "\"");
    resp->set_status(st);
    return grpc::Status::OK;
}

bool HealthService::add(const std::shared_ptr<WatchCall> &w)
{
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_)
        return false;
    watchers_.insert(w);
    bool known;
    w->update(status_locked(w->service(), &known));
    return true;
}

void HealthService::remove(const WatchCall *w)
{
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = watchers_.begin(); it != watchers_.end(); ++it) {
        if (it->get() == w) {
            watchers_.erase(it);
            return;
        }
    }
}

void HealthService::set_serving(bool serving)
{
    std::lock_guard<std::mutex> lock(mu_);
    serving_ = serving;
    bool known;
    for (const auto &w : watchers_)
        w->update(status_locked(w->service(), &known));
}

void HealthService::close()
{
    set_serving(false);
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    for (const auto &w : watchers_)
        w->end();
}

} // namespace sessiond
