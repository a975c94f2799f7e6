// service.cc: the RPC handlers and their wiring to the completion-queue
// server (calls.h). Each unary handler runs on the queue thread that took
// the call, calls the engine inline (its calls are lock-free or take one
// shard lock for microseconds) and returns the status to answer with.
// Batches (HeartbeatBatch, AddStatsBatch) go to the engine's batch calls in
// one crossing, with per-thread scratch arrays; HeartbeatStream is the same
// batch, one request at a time per stream (a BidiCall).
// WatchSessions: a Watcher per call, fed by WatchHub.
//
// Watcher memory: at most capacity_ (--watch-buffer) events queued, plus one
// LAGGED marker for a report_lag watcher, plus the one event being written;
// gRPC holds nothing more, since the next write starts only after the last
// completed. A watcher that cannot keep up is ended (default) or skips
// events and is told how many (report_lag); the engine never waits.
//
// Watcher locking: a watcher's mutex guards its queue and its flags; it is
// not held across a call into gRPC (Write, Finish). Writes start on engine
// threads (push) or on the queue thread (the previous write's completion).
// Exactly one write is in flight at a time (writing_); Finish is called once,
// only when no write is in flight, and nothing is written after it.
#include "service.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <map>

#include <google/protobuf/timestamp.pb.h>

#include "calls.h"
#include "jsonlog.h"

namespace sessiond
{

namespace
{

enum Method {
    kCreate,
    kGet,
    kUpdate,
    kDelete,
    kList,
    kHeartbeat,
    kGetByConnection,
    kDeleteUser,
    kValidate,
    kRotate,
    kWatch,
    kStats,
    kHeartbeatBatch,
    kAddStatsBatch,
    kHeartbeatStream
};

// Called right after the failing engine call, on its thread: the engine's
// per-thread detail (which argument, what was wrong, the limit) is still
// that call's.
std::string afsm_message(afsm_status s, const std::string &what)
{
    std::string msg = what.empty() ? std::string() : what + ": ";
    msg += afsm_strerror(s);
    msg += " (";
    msg += afsm_status_name(s);
    msg += ")";
    const char *detail = afsm_error_detail();
    if (detail != nullptr && detail[0] != '\0') {
        msg += ": ";
        msg += detail;
    }
    return msg;
}

void set_timestamp(int64_t ns, google::protobuf::Timestamp *ts)
{
    int64_t sec = ns / 1000000000;
    int64_t nanos = ns % 1000000000;
    if (nanos < 0) {
        nanos += 1000000000;
        sec -= 1;
    }
    ts->set_seconds(sec);
    ts->set_nanos(static_cast<int32_t>(nanos));
}

int64_t timestamp_ns(const google::protobuf::Timestamp &ts)
{
    return ts.seconds() * 1000000000 + ts.nanos();
}

int64_t wall_now_ns()
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

std::string format_uuid(const afsm_uuid &u)
{
    char buf[AFSM_UUID_STRING_SIZE];
    afsm_uuid_format(&u, buf);
    return buf;
}

// The AFSM_*_INIT macros use C designated initialisers, which C++ with
// -Wextra flags; value-initialise and set the version instead.
afsm_session_info new_info()
{
    afsm_session_info i{};
    i.version = AFSM_SESSION_INFO_VERSION;
    return i;
}

bool uuid_is_nil(const afsm_uuid &u)
{
    for (uint8_t b : u.bytes)
        if (b != 0)
            return false;
    return true;
}

// A client's bad input as it goes into an error message: at most 64 bytes of
// it, printable ASCII as is, every other byte (NUL, escapes, UTF-8 cut in the
// middle) as \xNN, so the message is plain text whatever was sent; a longer
// input says how long it was.
std::string quote_input(const std::string &text)
{
    constexpr size_t kShown = 64;
    std::string out = "\"";
    size_t n = std::min(text.size(), kShown);
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = static_cast<unsigned char>(text[i]);
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    out += '"';
    if (text.size() > kShown)
        out += "... (" + std::to_string(text.size()) + " bytes)";
    return out;
}

// Parses a UUID argument; on failure fills *status with INVALID_ARGUMENT.
bool parse_uuid_arg(const std::string &text, const char *field, afsm_uuid *out, grpc::Status *status)
{
    afsm_status s = afsm_uuid_parse(text.data(), text.size(), out);
    if (s != AFSM_OK) {
        *status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               afsm_message(s, std::string(field) + " " + quote_input(text)));
        return false;
    }
    return true;
}

session::SessionState wire_state(uint32_t state)
{
    if (state > AFSM_STATE_CLOSED)
        return session::SESSION_STATE_UNSPECIFIED;
    return static_cast<session::SessionState>(state);
}

// Metadata arrives as a protobuf map; the engine takes (pointer, length)
// pairs that borrow from it.
std::vector<afsm_kv> kv_list(const google::protobuf::Map<std::string, std::string> &map)
{
    std::vector<afsm_kv> kvs;
    kvs.reserve(map.size());
    for (const auto &e : map)
        kvs.push_back(afsm_kv{e.first.data(), e.first.size(), e.second.data(), e.second.size()});
    return kvs;
}

} // namespace

grpc::Status status_from_afsm(afsm_status s, const std::string &what)
{
    using grpc::StatusCode;
    StatusCode code;
    switch (s) {
    case AFSM_OK:
        return grpc::Status::OK;
    case AFSM_ENOTFOUND:
        code = StatusCode::NOT_FOUND;
        break;
    case AFSM_EINVAL:
    case AFSM_ENULL:
    case AFSM_EUUID:
    case AFSM_EIP:
    case AFSM_ETOOLONG:
    case AFSM_EVERSION:
        code = StatusCode::INVALID_ARGUMENT;
        break;
    case AFSM_ELIMIT:
    case AFSM_ENOMEM:
        code = StatusCode::RESOURCE_EXHAUSTED;
        break;
    case AFSM_ETOKEN:
    case AFSM_ETOKENKEY:
    case AFSM_EREVOKED:
    case AFSM_EIPMISMATCH:
    case AFSM_ETOKENFORMAT:
    case AFSM_EKEYREMOVED:
        code = StatusCode::UNAUTHENTICATED;
        break;
    case AFSM_EEXPIRED:
    case AFSM_ECLOSED:
    case AFSM_ETRANSITION:
        code = StatusCode::FAILED_PRECONDITION;
        break;
    case AFSM_EEXISTS:
        code = StatusCode::ALREADY_EXISTS;
        break;
    case AFSM_EUNAVAILABLE:
        code = StatusCode::UNAVAILABLE;
        break;
    default:
        code = StatusCode::INTERNAL;
        break;
    }
    return grpc::Status(code, afsm_message(s, what));
}

grpc::Status token_status_from_afsm(afsm_status s)
{
    switch (s) {
    case AFSM_ENOTFOUND:
    case AFSM_EEXPIRED:
    case AFSM_ECLOSED:
        // The token may be genuine, but it no longer proves a live session.
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, afsm_message(s, "token"));
    default:
        return status_from_afsm(s, "token");
    }
}

// ---------------------------------------------------------------------------
// Watch streams

class Watcher final
{
  public:
    // Asks for one WatchSessions call on cq. The watcher owns itself (self_)
    // from here until the call is over: its finish came back and gRPC said
    // the call is done (done_tag_), or no call came (shutdown). The hub, and
    // a publish() in progress, hold further references, so a watcher being
    // retired stays valid for them; once closing_ it ignores their events.
    static void listen(SessionServiceImpl *service, grpc::ServerCompletionQueue *cq)
    {
        std::shared_ptr<Watcher> w(new Watcher(service, cq));
        w->self_ = w;
        w->ctx_.AsyncNotifyWhenDone(&w->done_tag_);
        service->async()->RequestWatchSessions(&w->ctx_, &w->req_, &w->writer_, cq, cq, &w->request_tag_);
    }

    // Set before the watcher is added to the hub, constant after.
    const std::string &user_filter() const
    {
        return req_.user_id();
    }

    void push(const session::SessionEvent &ev)
    {
        if (!user_filter().empty() && ev.user_id() != user_filter())
            return;
        bool write = false, fin = false;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (closing_)
                return;
            if (queue_.size() >= capacity_ && req_.report_lag()) {
                // Keep the watcher; count what it misses in a LAGGED marker at
                // the back of the queue. A new marker needs a real event in
                // front of it, so the queue never exceeds capacity_ + 1.
                if (queue_.empty() || queue_.back().type() != session::SESSION_EVENT_TYPE_LAGGED) {
                    session::SessionEvent marker;
                    marker.set_type(session::SESSION_EVENT_TYPE_LAGGED);
                    queue_.push_back(std::move(marker));
                }
                queue_.back().set_missed(queue_.back().missed() + 1);
                hub_->count_missed();
            } else if (queue_.size() >= capacity_) {
                // A slow reader must not hold up the engine (or grow without
                // bound): drop it and tell it why.
                size_t queued = queue_.size();
                queue_.clear();
                closing_ = true;
                final_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                      "watcher fell behind: " + std::to_string(queued) +
                                          " events queued, the limit is " + std::to_string(capacity_) +
                                          " (--watch-buffer); ask with report_lag to stay and be told what was missed");
                hub_->count_drop();
                fin = take_finish_locked();
            } else {
                queue_.push_back(ev);
                write = take_write_locked();
            }
            sync_queued_locked();
        }
        act(write, fin);
    }

    // Ends the stream with status; flush: after the events already queued.
    void end(const grpc::Status &status, bool flush)
    {
        bool fin;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (closing_)
                return;
            closing_ = true;
            final_ = status;
            if (!flush)
                queue_.clear();
            sync_queued_locked();
            fin = take_finish_locked();
        }
        act(false, fin);
    }

  private:
    Watcher(SessionServiceImpl *service, grpc::ServerCompletionQueue *cq)
        : service_(service), hub_(service->hub()), cq_(cq), capacity_(hub_->buffer()), writer_(&ctx_)
    {
    }

    // A WatchSessions call arrived: register with the hub; a hub already
    // closed ends the stream at once (OK: the server is stopping), a full one
    // with RESOURCE_EXHAUSTED.
    void on_request(bool ok)
    {
        if (!ok) {
            self_.reset(); // no call came (shutdown); deletes this
            return;
        }
        listen(service_, cq_);
        log_line(AFSM_LOG_DEBUG, "watch stream started", {{"user_filter", user_filter()}});
        const size_t max_watchers = service_->max_watchers();
        switch (hub_->add(self_, max_watchers)) {
        case WatchHub::Added::Yes:
            break;
        case WatchHub::Added::Closed:
            end(grpc::Status::OK, false);
            break;
        case WatchHub::Added::Full:
            end(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many watch streams: the limit is " +
                                                                       std::to_string(max_watchers) +
                                                                       " (--max-watchers)"),
                false);
            break;
        }
    }

    void on_write(bool ok)
    {
        bool write = false, fin = false;
        {
            std::lock_guard<std::mutex> lock(mu_);
            writing_ = false;
            if (!ok) { // the client went away
                queue_.clear();
                if (!closing_) {
                    closing_ = true;
                    final_ = grpc::Status(grpc::StatusCode::CANCELLED, "write failed");
                }
            }
            write = take_write_locked();
            if (!write)
                fin = take_finish_locked();
            sync_queued_locked();
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

    // gRPC's word that the call is over: after the finish, or earlier when
    // the client cancelled (or the deadline passed); then a write in flight
    // fails, and the finish follows it.
    void on_done(bool)
    {
        if (ctx_.IsCancelled())
            end(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"), false);
        bool over;
        {
            std::lock_guard<std::mutex> lock(mu_);
            done_ = true;
            over = finish_back_;
        }
        if (over)
            retire();
    }

    // Both the finish and the done notification are back: nothing of gRPC's
    // refers to this any more.
    void retire()
    {
        {
            std::lock_guard<std::mutex> lock(mu_);
            queue_.clear();
            sync_queued_locked();
        }
        hub_->remove(this);
        log_line(AFSM_LOG_DEBUG, "watch stream ended", {{"user_filter", user_filter()}});
        std::shared_ptr<Watcher> last = std::move(self_); // may delete this on return
    }

    // Both return true when the caller (after unlocking) must act.
    bool take_write_locked()
    {
        if (writing_ || finished_ || queue_.empty())
            return false;
        current_ = std::move(queue_.front());
        queue_.pop_front();
        writing_ = true;
        return true;
    }
    // Keeps the hub's total of queued events (a gauge in /metrics) in step.
    void sync_queued_locked()
    {
        hub_->add_queued(static_cast<int64_t>(queue_.size()) - static_cast<int64_t>(reported_));
        reported_ = queue_.size();
    }
    bool take_finish_locked()
    {
        if (!closing_ || writing_ || finished_ || !queue_.empty())
            return false;
        finished_ = true;
        return true;
    }
    void act(bool write, bool fin)
    {
        if (write)
            writer_.Write(current_, &write_tag_);
        if (fin) {
            // Counted by how it ends (RESOURCE_EXHAUSTED when refused or
            // dropped, CANCELLED by the client, OK at shutdown), once.
            service_->count(kWatch, final_.error_code());
            writer_.Finish(final_, &finish_tag_); // final_ no longer changes once finished_
        }
    }

    LiveCalls live_; // first: uncounted only once every other member (the context) is gone
    SessionServiceImpl *const service_;
    WatchHub *const hub_;
    grpc::ServerCompletionQueue *const cq_;
    const size_t capacity_;
    grpc::ServerContext ctx_;
    session::WatchSessionsRequest req_;
    grpc::ServerAsyncWriter<session::SessionEvent> writer_;
    OpTag<Watcher> request_tag_{this, &Watcher::on_request};
    OpTag<Watcher> write_tag_{this, &Watcher::on_write};
    OpTag<Watcher> finish_tag_{this, &Watcher::on_finish};
    OpTag<Watcher> done_tag_{this, &Watcher::on_done};
    std::mutex mu_;
    size_t reported_ = 0; // queue_.size() as last added to the hub's gauge
    std::deque<session::SessionEvent> queue_;
    session::SessionEvent current_; // the event being written; owned by the write in flight
    bool writing_ = false;
    bool closing_ = false;     // no more events accepted
    bool finished_ = false;    // Finish called
    bool finish_back_ = false; // the finish came back from the queue
    bool done_ = false;        // the done notification came back
    grpc::Status final_;
    std::shared_ptr<Watcher> self_; // keeps this alive until retire()
};

void WatchHub::on_engine_event(void *ctx, const afsm_event *event)
{
    static_cast<WatchHub *>(ctx)->publish(event);
}

void WatchHub::publish(const afsm_event *e)
{
    if (count_.load(std::memory_order_acquire) == 0)
        return; // the common case: nobody watches
    std::vector<std::shared_ptr<Watcher>> targets;
    {
        std::lock_guard<std::mutex> lock(mu_);
        targets = watchers_;
    }
    if (targets.empty())
        return;
    session::SessionEvent ev;
    switch (e->type) {
    case AFSM_EVENT_CREATED:
        ev.set_type(session::SESSION_EVENT_TYPE_CREATED);
        break;
    case AFSM_EVENT_STATE_CHANGED:
        ev.set_type(session::SESSION_EVENT_TYPE_UPDATED);
        break;
    case AFSM_EVENT_EXPIRED:
        ev.set_type(session::SESSION_EVENT_TYPE_EXPIRED);
        break;
    case AFSM_EVENT_DELETED:
        ev.set_type(session::SESSION_EVENT_TYPE_DELETED);
        break;
    default:
        ev.set_type(session::SESSION_EVENT_TYPE_UNSPECIFIED);
        break;
    }
    ev.set_session_id(format_uuid(e->session_id));
    if (e->user_id != nullptr)
        ev.set_user_id(std::string(e->user_id, e->user_id_len));
    ev.set_connection_id(format_uuid(e->connection_id));
    ev.set_old_state(wire_state(e->old_state));
    ev.set_new_state(wire_state(e->new_state));
    if (e->reason != nullptr)
        ev.set_reason(std::string(e->reason, e->reason_len));
    set_timestamp(e->created_at_ns, ev.mutable_created_at());
    set_timestamp(e->event_at_ns, ev.mutable_event_at());
    for (const auto &w : targets)
        w->push(ev);
}

WatchHub::Added WatchHub::add(const std::shared_ptr<Watcher> &w, size_t max_watchers)
{
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_)
        return Added::Closed;
    if (watchers_.size() >= max_watchers)
        return Added::Full;
    watchers_.push_back(w);
    count_.store(watchers_.size(), std::memory_order_release);
    return Added::Yes;
}

void WatchHub::remove(const Watcher *w)
{
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = watchers_.begin(); it != watchers_.end(); ++it) {
        if (it->get() == w) {
            watchers_.erase(it);
            break;
        }
    }
    count_.store(watchers_.size(), std::memory_order_release);
}

void WatchHub::close_all()
{
    std::vector<std::shared_ptr<Watcher>> all;
    {
        std::lock_guard<std::mutex> lock(mu_);
        closed_ = true;
        all = watchers_;
    }
    for (const auto &w : all)
        w->end(grpc::Status::OK, true);
}

// ---------------------------------------------------------------------------
// RPC counters

const char *RpcCounters::method_name(int m)
{
    static const char *const names[kMethods] = {
        "CreateSession",          "GetSession",         "UpdateSession",  "DeleteSession", "ListSessions",  "Heartbeat",
        "GetSessionByConnection", "DeleteUserSessions", "ValidateToken",  "RotateToken",   "WatchSessions", "GetStats",
        "HeartbeatBatch",         "AddStatsBatch",      "HeartbeatStream"};
    return (m >= 0 && m < kMethods) ? names[m] : "unknown";
}

// ---------------------------------------------------------------------------
// The service

SessionServiceImpl::SessionServiceImpl(afsm_engine *engine, WatchHub *hub, RpcCounters *counters, ServiceLimits limits)
    : engine_(engine), hub_(hub), counters_(counters), limits_(limits), started_(std::chrono::steady_clock::now())
{
    make_methods();
}

SessionServiceImpl::~SessionServiceImpl() = default;

grpc::Status SessionServiceImpl::finish(int method, const grpc::Status &status)
{
    counters_->count(method, status.error_code());
    if (!status.ok() && log_enabled(AFSM_LOG_DEBUG))
        log_line(AFSM_LOG_DEBUG, "rpc failed",
                 {{"method", RpcCounters::method_name(method)},
                  {"code", std::to_string(static_cast<int>(status.error_code()))},
                  {"error", status.error_message()}});
    return status;
}

void SessionServiceImpl::fill_session(const afsm_session_info &info, session::Session *out)
{
    out->set_session_id(format_uuid(info.session_id));
    out->set_user_id(std::string(info.user_id, info.user_id_len));
    out->set_connection_id(format_uuid(info.connection_id));
    char ip[AFSM_IP_STRING_SIZE];
    if (afsm_ip_format(&info.client_ip, ip) == AFSM_OK)
        out->set_client_ip(ip);
    out->set_client_port(info.client_port);
    out->set_server_addr(std::string(info.server_addr, info.server_addr_len));
    out->set_state(wire_state(info.state));
    set_timestamp(info.created_at_ns, out->mutable_created_at());
    set_timestamp(info.last_active_at_ns, out->mutable_last_active_at());
    set_timestamp(info.expires_at_ns, out->mutable_expires_at());
    session::SessionStats *st = out->mutable_stats();
    st->set_packets_sent(info.stats.packets_sent);
    st->set_packets_received(info.stats.packets_received);
    st->set_bytes_sent(info.stats.bytes_sent);
    st->set_bytes_received(info.stats.bytes_received);
    st->set_retransmissions(info.stats.retransmissions);
    st->set_current_rtt_ms(info.stats.current_rtt_ms);
    out->set_token_generation(info.token_generation);
    uint64_t timeout_s = info.timeout_ms / 1000;
    out->set_timeout_seconds(timeout_s > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(timeout_s));

    if (info.metadata_count == 0)
        return;
    // A second lookup: the session may have changed or gone in between.
    // Gone: report it without metadata. Grown: retry with the size needed.
    std::vector<char> buf(info.metadata_bytes + 64);
    size_t needed = 0, count = 0;
    afsm_status s;
    for (int attempt = 0; attempt < 4; ++attempt) {
        s = afsm_session_get_metadata(engine_, &info.session_id, buf.data(), buf.size(), &needed, &count);
        if (s != AFSM_EBUFFER)
            break;
        buf.resize(needed);
    }
    if (s != AFSM_OK)
        return;
    auto *md = out->mutable_metadata();
    const char *p = buf.data();
    const char *end = buf.data() + needed;
    for (size_t i = 0; i < count && p < end; ++i) {
        size_t klen = strnlen(p, static_cast<size_t>(end - p));
        const char *v = p + klen + 1;
        if (v > end)
            break;
        size_t vlen = strnlen(v, static_cast<size_t>(end - v));
        (*md)[std::string(p, klen)] = std::string(v, vlen);
        p = v + vlen + 1;
    }
}

grpc::Status SessionServiceImpl::CreateSession(grpc::ServerContext *, const session::CreateSessionRequest *req,
                                               session::CreateSessionResponse *resp)
{
    grpc::Status status;
    afsm_create_options opt{};
    afsm_create_options_init(&opt, AFSM_CREATE_OPTIONS_VERSION);
    if (req->connection_id().empty()) {
        afsm_uuid_v7(&opt.connection_id); // what the old service always did
    } else if (!parse_uuid_arg(req->connection_id(), "connection_id", &opt.connection_id, &status)) {
        return finish(kCreate, status);
    }
    opt.user_id = req->user_id().data();
    opt.user_id_len = req->user_id().size();
    opt.client_ip = req->client_ip().data();
    opt.client_ip_len = req->client_ip().size();
    opt.client_port = req->client_port();
    std::vector<afsm_kv> kvs = kv_list(req->metadata());
    opt.metadata = kvs.data();
    opt.metadata_count = kvs.size();
    opt.timeout_ms = static_cast<uint64_t>(req->timeout_seconds()) * 1000;

    afsm_session_info info = new_info();
    afsm_status s = afsm_session_create(engine_, &opt, &info);
    if (s != AFSM_OK)
        return finish(kCreate, status_from_afsm(s, "create"));

    char token[AFSM_TOKEN_SIZE];
    size_t token_len = 0;
    uint32_t flags = req->bind_token_to_ip() ? AFSM_TOKEN_BIND_IP : 0;
    s = afsm_token_issue(engine_, &info.session_id, flags, token, sizeof token, &token_len);
    if (s != AFSM_OK) {
        // A session nobody can prove they own is of no use: undo the create.
        afsm_session_delete(engine_, &info.session_id, "token issue failed", 18);
        return finish(kCreate, status_from_afsm(s, "token issue"));
    }
    fill_session(info, resp->mutable_session());
    resp->set_token(std::string(token, token_len));
    if (log_enabled(AFSM_LOG_DEBUG))
        log_line(AFSM_LOG_DEBUG, "session created",
                 {{"session_id", resp->session().session_id()},
                  {"user_id", req->user_id()},
                  {"connection_id", resp->session().connection_id()},
                  {"client_ip", req->client_ip()}});
    return finish(kCreate, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::GetSession(grpc::ServerContext *, const session::GetSessionRequest *req,
                                            session::GetSessionResponse *resp)
{
    grpc::Status status;
    afsm_uuid id;
    if (!parse_uuid_arg(req->session_id(), "session_id", &id, &status))
        return finish(kGet, status);
    afsm_session_info info = new_info();
    afsm_status s = afsm_session_get(engine_, &id, &info);
    if (s != AFSM_OK)
        return finish(kGet, status_from_afsm(s, "session " + req->session_id()));
    fill_session(info, resp->mutable_session());
    return finish(kGet, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::GetSessionByConnection(grpc::ServerContext *,
                                                        const session::GetSessionByConnectionRequest *req,
                                                        session::GetSessionResponse *resp)
{
    grpc::Status status;
    afsm_uuid id;
    if (!parse_uuid_arg(req->connection_id(), "connection_id", &id, &status))
        return finish(kGetByConnection, status);
    afsm_session_info info = new_info();
    afsm_status s = afsm_session_get_by_connection(engine_, &id, &info);
    if (s != AFSM_OK)
        return finish(kGetByConnection, status_from_afsm(s, "connection " + req->connection_id()));
    fill_session(info, resp->mutable_session());
    return finish(kGetByConnection, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::UpdateSession(grpc::ServerContext *, const session::UpdateSessionRequest *req,
                                               session::UpdateSessionResponse *resp)
{
    grpc::Status status;
    afsm_uuid id;
    if (!parse_uuid_arg(req->session_id(), "session_id", &id, &status))
        return finish(kUpdate, status);
    afsm_update up{};
    afsm_update_init(&up, AFSM_UPDATE_VERSION);
    if (req->state() != session::SESSION_STATE_UNSPECIFIED) {
        up.fields |= AFSM_UPDATE_STATE;
        up.state = static_cast<uint32_t>(req->state());
    }
    std::vector<afsm_kv> kvs = kv_list(req->metadata());
    if (req->replace_metadata()) {
        up.fields |= AFSM_UPDATE_METADATA_REPLACE;
    } else if (!kvs.empty()) {
        up.fields |= AFSM_UPDATE_METADATA_MERGE;
    }
    up.metadata = kvs.data();
    up.metadata_count = kvs.size();
    if (req->has_stats()) {
        up.fields |= AFSM_UPDATE_STATS;
        const session::SessionStats &st = req->stats();
        up.stats.packets_sent = st.packets_sent();
        up.stats.packets_received = st.packets_received();
        up.stats.bytes_sent = st.bytes_sent();
        up.stats.bytes_received = st.bytes_received();
        up.stats.retransmissions = st.retransmissions();
        up.stats.current_rtt_ms = st.current_rtt_ms();
    }
    afsm_session_info info = new_info();
    afsm_status s =
        up.fields != 0 ? afsm_session_update(engine_, &id, &up, &info) : afsm_session_get(engine_, &id, &info);
    if (s != AFSM_OK)
        return finish(kUpdate, status_from_afsm(s, "update " + req->session_id()));
    fill_session(info, resp->mutable_session());
    return finish(kUpdate, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::DeleteSession(grpc::ServerContext *, const session::DeleteSessionRequest *req,
                                               session::DeleteSessionResponse *resp)
{
    grpc::Status status;
    afsm_uuid id;
    if (!parse_uuid_arg(req->session_id(), "session_id", &id, &status))
        return finish(kDelete, status);
    afsm_status s = afsm_session_delete(engine_, &id, req->reason().data(), req->reason().size());
    if (s != AFSM_OK)
        return finish(kDelete, status_from_afsm(s, "delete " + req->session_id()));
    resp->set_success(true);
    return finish(kDelete, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::DeleteUserSessions(grpc::ServerContext *,
                                                    const session::DeleteUserSessionsRequest *req,
                                                    session::DeleteUserSessionsResponse *resp)
{
    size_t deleted = 0;
    afsm_status s = afsm_session_delete_by_user(engine_, req->user_id().data(), req->user_id().size(),
                                                req->reason().data(), req->reason().size(), &deleted);
    if (s != AFSM_OK)
        return finish(kDeleteUser, status_from_afsm(s, "delete user sessions"));
    resp->set_deleted(deleted > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(deleted));
    log_line(AFSM_LOG_INFO, "user sessions deleted", {{"user_id", req->user_id()}, {"count", std::to_string(deleted)}});
    return finish(kDeleteUser, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::ListSessions(grpc::ServerContext *, const session::ListSessionsRequest *req,
                                              session::ListSessionsResponse *resp)
{
    grpc::Status status;
    afsm_list_filter f{};
    afsm_list_filter_init(&f, AFSM_LIST_FILTER_VERSION);
    f.state = static_cast<uint32_t>(req->state());
    if (!req->user_id().empty()) {
        f.user_id = req->user_id().data();
        f.user_id_len = req->user_id().size();
    }
    if (req->has_created_after())
        f.created_after_ns = timestamp_ns(req->created_after());
    if (req->has_created_before())
        f.created_before_ns = timestamp_ns(req->created_before());
    if (!req->cursor().empty() && !parse_uuid_arg(req->cursor(), "cursor", &f.cursor, &status))
        return finish(kList, status);

    // page_size 0 means every match. The engine caps one call at
    // AFSM_LIST_LIMIT_MAX, so larger pages are walked with its cursor.
    const uint64_t want = req->page_size() == 0 ? std::numeric_limits<uint64_t>::max() : req->page_size();
    f.offset = req->page_size() == 0 ? 0 : static_cast<uint64_t>(req->page()) * req->page_size();
    std::vector<afsm_session_info> chunk;
    uint64_t total = 0, got = 0;
    bool first = true, more = false;
    afsm_uuid next = {};
    // Chunks start small (most lists are one user's few sessions) and grow
    // to the engine's cap, so a short list does not allocate 10,000 copies.
    uint64_t chunk_size = 256;
    for (;;) {
        uint64_t limit = std::min<uint64_t>(want - got, chunk_size);
        chunk_size = std::min<uint64_t>(chunk_size * 4, AFSM_LIST_LIMIT_MAX);
        f.limit = static_cast<uint32_t>(limit);
        chunk.assign(limit, afsm_session_info{});
        for (auto &c : chunk)
            c.version = AFSM_SESSION_INFO_VERSION;
        size_t count = 0;
        uint64_t t = 0;
        afsm_status s = afsm_session_list(engine_, &f, chunk.data(), chunk.size(), &count, &t, &next);
        if (s != AFSM_OK)
            return finish(kList, status_from_afsm(s, "list"));
        if (first)
            total = t;
        first = false;
        for (size_t i = 0; i < count; ++i)
            fill_session(chunk[i], resp->add_sessions());
        got += count;
        more = !uuid_is_nil(next);
        if (!more || got >= want || count == 0)
            break;
        f.cursor = next;
        f.offset = 0;
    }
    resp->set_total(total > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(total));
    resp->set_page(req->page());
    resp->set_page_size(req->page_size());
    if (more)
        resp->set_next_cursor(format_uuid(next));
    return finish(kList, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::Heartbeat(grpc::ServerContext *, const session::HeartbeatRequest *req,
                                           session::HeartbeatResponse *resp)
{
    grpc::Status status;
    afsm_uuid id;
    if (!parse_uuid_arg(req->session_id(), "session_id", &id, &status))
        return finish(kHeartbeat, status);
    uint64_t remaining_ms = 0;
    afsm_status s = afsm_session_heartbeat(engine_, &id, &remaining_ms);
    if (s != AFSM_OK)
        return finish(kHeartbeat, status_from_afsm(s, "heartbeat " + req->session_id()));
    resp->set_success(true);
    set_timestamp(wall_now_ns(), resp->mutable_server_timestamp());
    uint64_t secs = (remaining_ms + 500) / 1000;
    resp->set_remaining_seconds(secs > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(secs));
    return finish(kHeartbeat, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::ValidateToken(grpc::ServerContext *, const session::ValidateTokenRequest *req,
                                               session::ValidateTokenResponse *resp)
{
    afsm_session_info info = new_info();
    const char *ip = req->client_ip().empty() ? nullptr : req->client_ip().data();
    afsm_status s =
        afsm_token_validate(engine_, req->token().data(), req->token().size(), ip, req->client_ip().size(), &info);
    if (s != AFSM_OK)
        return finish(kValidate, token_status_from_afsm(s));
    fill_session(info, resp->mutable_session());
    return finish(kValidate, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::RotateToken(grpc::ServerContext *, const session::RotateTokenRequest *req,
                                             session::RotateTokenResponse *resp)
{
    grpc::Status status;
    afsm_uuid id;
    if (!parse_uuid_arg(req->session_id(), "session_id", &id, &status))
        return finish(kRotate, status);
    char token[AFSM_TOKEN_SIZE];
    size_t token_len = 0;
    afsm_status s = afsm_token_rotate(engine_, &id, req->bind_token_to_ip() ? AFSM_TOKEN_BIND_IP : 0, token,
                                      sizeof token, &token_len);
    if (s != AFSM_OK)
        return finish(kRotate, status_from_afsm(s, "rotate " + req->session_id()));
    resp->set_token(std::string(token, token_len));
    afsm_session_info info = new_info();
    if (afsm_session_get(engine_, &id, &info) == AFSM_OK)
        fill_session(info, resp->mutable_session());
    log_line(AFSM_LOG_INFO, "token rotated",
             {{"session_id", req->session_id()}, {"generation", std::to_string(info.token_generation)}});
    return finish(kRotate, grpc::Status::OK);
}

grpc::Status SessionServiceImpl::GetStats(grpc::ServerContext *, const session::GetStatsRequest *,
                                          session::GetStatsResponse *resp)
{
    static const char *const delete_reasons[AFSM_DELETE_REASON_COUNT] = {"requested", "user", "closed", "evicted",
                                                                         "expired"};
    static const char *const token_results[AFSM_TOKEN_RESULT_COUNT] = {
        "ok",        "malformed", "forged", "unknown_key", "removed_key",
        "not_found", "expired",   "closed", "revoked",     "ip_mismatch"};
    afsm_metrics m{};
    m.version = AFSM_METRICS_VERSION;
    afsm_status s = afsm_metrics_snapshot(engine_, &m);
    if (s == AFSM_OK) {
        resp->set_sessions(m.sessions);
        for (int st = 1; st < AFSM_STATE_COUNT; ++st)
            (*resp->mutable_sessions_by_state())[afsm_state_name(st)] = m.sessions_by_state[st];
        resp->set_created_total(m.created_total);
        for (int r = 0; r < AFSM_DELETE_REASON_COUNT; ++r)
            (*resp->mutable_deleted_total())[delete_reasons[r]] = m.deleted_total[r];
        resp->set_expired_total(m.expired_total);
        for (int r = 0; r < AFSM_TOKEN_RESULT_COUNT; ++r)
            (*resp->mutable_token_validations())[token_results[r]] = m.token_validations[r];
    } else {
        // Counts alone, when the metrics are unavailable.
        afsm_counts c;
        s = afsm_engine_counts(engine_, &c);
        if (s != AFSM_OK)
            return finish(kStats, status_from_afsm(s, "stats"));
        resp->set_sessions(c.total);
        for (int st = 1; st < AFSM_STATE_COUNT; ++st)
            (*resp->mutable_sessions_by_state())[afsm_state_name(st)] = c.by_state[st];
    }
    resp->set_watchers(static_cast<uint32_t>(hub_->count()));
    resp->set_uptime_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count());
    resp->set_version(afsm_version());
    return finish(kStats, grpc::Status::OK);
}

// ---------------------------------------------------------------------------
// Batches

namespace
{

// A call whose deadline has passed before it starts is not worth the work:
// its client has already given up.
bool deadline_passed(grpc::ServerContext *ctx)
{
    return ctx->deadline() < std::chrono::system_clock::now();
}

grpc::Status too_many(const char *what, size_t n, size_t limit)
{
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(what) + ": " + std::to_string(n) +
                                                                " items, the limit is " + std::to_string(limit) +
                                                                " (--max-batch)");
}

// Scratch arrays reused by every batch on a thread: a batch allocates
// nothing but its response.
struct BatchScratch {
    std::vector<afsm_uuid> ids;
    std::vector<afsm_status> statuses;
    std::vector<uint64_t> remaining_ms;
    std::vector<afsm_stats> deltas;
    std::vector<uint32_t> bad; // indexes of malformed ids
};

BatchScratch &scratch()
{
    static thread_local BatchScratch s;
    return s;
}

void add_item_error(google::protobuf::RepeatedPtrField<session::BatchItemError> *errors, size_t index,
                    const grpc::Status &st)
{
    session::BatchItemError *e = errors->Add();
    e->set_index(static_cast<uint32_t>(index));
    e->set_code(static_cast<int32_t>(st.error_code()));
    e->set_message(st.error_message());
}

} // namespace

grpc::Status SessionServiceImpl::heartbeat_batch(const session::HeartbeatBatchRequest &req,
                                                 session::HeartbeatBatchResponse *resp)
{
    const std::string &raw = req.session_ids_raw();
    if (raw.size() % sizeof(afsm_uuid) != 0)
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "session_ids_raw: " + std::to_string(raw.size()) + " bytes, not a multiple of 16");
    const size_t text_n = static_cast<size_t>(req.session_ids_size());
    const size_t n = text_n + raw.size() / sizeof(afsm_uuid);
    if (n > limits_.max_batch)
        return too_many("HeartbeatBatch session_ids", n, limits_.max_batch);
    resp->set_sequence(req.sequence());
    if (n == 0)
        return grpc::Status::OK;

    BatchScratch &b = scratch();
    b.ids.resize(n);
    b.statuses.resize(n);
    b.remaining_ms.resize(n);
    b.bad.clear();
    for (size_t i = 0; i < text_n; ++i) {
        const std::string &t = req.session_ids(static_cast<int>(i));
        if (afsm_uuid_parse(t.data(), t.size(), &b.ids[i]) != AFSM_OK) {
            b.ids[i] = afsm_uuid{}; // looked up as nil (never a session); its result is replaced below
            b.bad.push_back(static_cast<uint32_t>(i));
        }
    }
    if (!raw.empty())
        std::memcpy(&b.ids[text_n], raw.data(), raw.size());

    afsm_status s = afsm_session_heartbeat_batch(engine_, b.ids.data(), n, b.remaining_ms.data(), b.statuses.data());
    if (s != AFSM_OK)
        return status_from_afsm(s, "heartbeat batch");
    for (uint32_t i : b.bad)
        b.statuses[i] = AFSM_EUUID;

    auto *codes = resp->mutable_codes();
    auto *remaining = resp->mutable_remaining_seconds();
    codes->Resize(static_cast<int>(n), 0);
    remaining->Resize(static_cast<int>(n), 0);
    uint32_t failed = 0;
    for (size_t i = 0; i < n; ++i) {
        if (b.statuses[i] == AFSM_OK) {
            uint64_t secs = (b.remaining_ms[i] + 500) / 1000;
            remaining->Set(static_cast<int>(i), secs > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(secs));
            continue;
        }
        ++failed;
        std::string what = i < text_n ? "session " + req.session_ids(static_cast<int>(i)).substr(0, 64)
                                      : "session " + format_uuid(b.ids[i]);
        grpc::Status st = status_from_afsm(b.statuses[i], what);
        codes->Set(static_cast<int>(i), static_cast<int32_t>(st.error_code()));
        add_item_error(resp->mutable_errors(), i, st);
    }
    resp->set_failed(failed);
    return grpc::Status::OK;
}

grpc::Status SessionServiceImpl::HeartbeatBatch(grpc::ServerContext *ctx, const session::HeartbeatBatchRequest *req,
                                                session::HeartbeatBatchResponse *resp)
{
    if (deadline_passed(ctx))
        return finish(kHeartbeatBatch,
                      grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the deadline passed before the batch ran"));
    return finish(kHeartbeatBatch, heartbeat_batch(*req, resp));
}

grpc::Status SessionServiceImpl::AddStatsBatch(grpc::ServerContext *ctx, const session::AddStatsBatchRequest *req,
                                               session::AddStatsBatchResponse *resp)
{
    if (deadline_passed(ctx))
        return finish(kAddStatsBatch,
                      grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the deadline passed before the batch ran"));
    const size_t n = static_cast<size_t>(req->deltas_size());
    if (n > limits_.max_batch)
        return finish(kAddStatsBatch, too_many("AddStatsBatch deltas", n, limits_.max_batch));
    if (n == 0)
        return finish(kAddStatsBatch, grpc::Status::OK);
    BatchScratch &b = scratch();
    b.ids.resize(n);
    b.statuses.resize(n);
    b.deltas.resize(n);
    b.bad.clear();
    for (size_t i = 0; i < n; ++i) {
        const session::StatsDelta &d = req->deltas(static_cast<int>(i));
        if (afsm_uuid_parse(d.session_id().data(), d.session_id().size(), &b.ids[i]) != AFSM_OK) {
            b.ids[i] = afsm_uuid{};
            b.bad.push_back(static_cast<uint32_t>(i));
        }
        afsm_stats &st = b.deltas[i];
        st = afsm_stats{};
        st.packets_sent = d.packets_sent();
        st.packets_received = d.packets_received();
        st.bytes_sent = d.bytes_sent();
        st.bytes_received = d.bytes_received();
        st.retransmissions = d.retransmissions();
        st.current_rtt_ms = d.current_rtt_ms();
    }
    afsm_status s = afsm_session_add_stats_batch(engine_, b.ids.data(), b.deltas.data(), n, b.statuses.data());
    if (s != AFSM_OK)
        return finish(kAddStatsBatch, status_from_afsm(s, "add-stats batch"));
    for (uint32_t i : b.bad)
        b.statuses[i] = AFSM_EUUID;
    auto *codes = resp->mutable_codes();
    codes->Resize(static_cast<int>(n), 0);
    uint32_t failed = 0;
    for (size_t i = 0; i < n; ++i) {
        if (b.statuses[i] == AFSM_OK)
            continue;
        ++failed;
        grpc::Status st =
            status_from_afsm(b.statuses[i], "session " + req->deltas(static_cast<int>(i)).session_id().substr(0, 64));
        codes->Set(static_cast<int>(i), static_cast<int32_t>(st.error_code()));
        add_item_error(resp->mutable_errors(), i, st);
    }
    resp->set_failed(failed);
    return finish(kAddStatsBatch, grpc::Status::OK);
}

// ---------------------------------------------------------------------------
// Wiring: one method descriptor per RPC, and the requests posted on a queue

struct SessionServiceImpl::Methods {
    using Svc = RawRequests<session::SessionService::AsyncService>;
    template <class Req, class Resp> using Unary = UnaryMethod<Svc, Req, Resp>;
    Unary<session::CreateSessionRequest, session::CreateSessionResponse> create;
    Unary<session::GetSessionRequest, session::GetSessionResponse> get;
    Unary<session::UpdateSessionRequest, session::UpdateSessionResponse> update;
    Unary<session::DeleteSessionRequest, session::DeleteSessionResponse> del;
    Unary<session::ListSessionsRequest, session::ListSessionsResponse> list;
    Unary<session::HeartbeatRequest, session::HeartbeatResponse> heartbeat;
    Unary<session::GetSessionByConnectionRequest, session::GetSessionResponse> get_by_connection;
    Unary<session::DeleteUserSessionsRequest, session::DeleteUserSessionsResponse> delete_user;
    Unary<session::ValidateTokenRequest, session::ValidateTokenResponse> validate;
    Unary<session::RotateTokenRequest, session::RotateTokenResponse> rotate;
    Unary<session::GetStatsRequest, session::GetStatsResponse> stats;
    Unary<session::HeartbeatBatchRequest, session::HeartbeatBatchResponse> heartbeat_batch;
    Unary<session::AddStatsBatchRequest, session::AddStatsBatchResponse> add_stats_batch;
    BidiMethod<Svc, session::HeartbeatBatchRequest, session::HeartbeatBatchResponse> heartbeat_stream;
};

namespace
{
// The descriptor of a unary method whose handler is SessionServiceImpl::*fn.
template <class Req, class Resp>
UnaryMethod<RawRequests<session::SessionService::AsyncService>, Req, Resp>
unary(SessionServiceImpl *impl, const char *name,
      grpc::Status (SessionServiceImpl::*fn)(grpc::ServerContext *, const Req *, Resp *))
{
    return {impl->async(), impl->async()->raw_method((std::string("session.SessionService.") + name).c_str()),
            [impl, fn](grpc::ServerContext &ctx, const Req &req, Resp *resp) { return (impl->*fn)(&ctx, &req, resp); }};
}
} // namespace

void SessionServiceImpl::make_methods()
{
    SessionServiceImpl *const s = this;
    methods_.reset(new Methods{
        unary(s, "CreateSession", &SessionServiceImpl::CreateSession),
        unary(s, "GetSession", &SessionServiceImpl::GetSession),
        unary(s, "UpdateSession", &SessionServiceImpl::UpdateSession),
        unary(s, "DeleteSession", &SessionServiceImpl::DeleteSession),
        unary(s, "ListSessions", &SessionServiceImpl::ListSessions),
        unary(s, "Heartbeat", &SessionServiceImpl::Heartbeat),
        unary(s, "GetSessionByConnection", &SessionServiceImpl::GetSessionByConnection),
        unary(s, "DeleteUserSessions", &SessionServiceImpl::DeleteUserSessions),
        unary(s, "ValidateToken", &SessionServiceImpl::ValidateToken),
        unary(s, "RotateToken", &SessionServiceImpl::RotateToken),
        unary(s, "GetStats", &SessionServiceImpl::GetStats),
        unary(s, "HeartbeatBatch", &SessionServiceImpl::HeartbeatBatch),
        unary(s, "AddStatsBatch", &SessionServiceImpl::AddStatsBatch),
        {&async_, async_.raw_method("session.SessionService.HeartbeatStream"),
         [s](const session::HeartbeatBatchRequest &req, session::HeartbeatBatchResponse *resp) {
             return s->heartbeat_batch(req, resp);
         },
         [s](const grpc::Status &st) { s->count(kHeartbeatStream, st.error_code()); }},
    });
}

// gRPC hands an arriving call to the first queue, starting at the one its
// connection was given, that has a request of its method posted; with one
// request per method a burst of calls on one connection spills over to the
// other queues, whose threads then take turns on the same connection. So
// every method has kRequestsPerMethod requests posted on each queue (as
// many as a client usually keeps in flight): a connection's calls stay on
// one thread, and connections spread over the threads.
void SessionServiceImpl::listen(grpc::ServerCompletionQueue *cq)
{
    const Methods &m = *methods_;
    for (int i = 0; i < kRequestsPerMethod; ++i) {
        UnaryCall<Methods::Svc, session::CreateSessionRequest, session::CreateSessionResponse>::listen(&m.create, cq);
        UnaryCall<Methods::Svc, session::GetSessionRequest, session::GetSessionResponse>::listen(&m.get, cq);
        UnaryCall<Methods::Svc, session::UpdateSessionRequest, session::UpdateSessionResponse>::listen(&m.update, cq);
        UnaryCall<Methods::Svc, session::DeleteSessionRequest, session::DeleteSessionResponse>::listen(&m.del, cq);
        UnaryCall<Methods::Svc, session::ListSessionsRequest, session::ListSessionsResponse>::listen(&m.list, cq);
        UnaryCall<Methods::Svc, session::HeartbeatRequest, session::HeartbeatResponse>::listen(&m.heartbeat, cq);
        UnaryCall<Methods::Svc, session::GetSessionByConnectionRequest, session::GetSessionResponse>::listen(
            &m.get_by_connection, cq);
        UnaryCall<Methods::Svc, session::DeleteUserSessionsRequest, session::DeleteUserSessionsResponse>::listen(
            &m.delete_user, cq);
        UnaryCall<Methods::Svc, session::ValidateTokenRequest, session::ValidateTokenResponse>::listen(&m.validate, cq);
        UnaryCall<Methods::Svc, session::RotateTokenRequest, session::RotateTokenResponse>::listen(&m.rotate, cq);
        UnaryCall<Methods::Svc, session::GetStatsRequest, session::GetStatsResponse>::listen(&m.stats, cq);
        UnaryCall<Methods::Svc, session::HeartbeatBatchRequest, session::HeartbeatBatchResponse>::listen(
            &m.heartbeat_batch, cq);
        UnaryCall<Methods::Svc, session::AddStatsBatchRequest, session::AddStatsBatchResponse>::listen(
            &m.add_stats_batch, cq);
        BidiCall<Methods::Svc, session::HeartbeatBatchRequest, session::HeartbeatBatchResponse>::listen(
            &m.heartbeat_stream, cq);
        Watcher::listen(this, cq);
    }
}

} // namespace sessiond
