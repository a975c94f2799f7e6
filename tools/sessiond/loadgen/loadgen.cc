// loadgen: drives sessiond with a mix of CreateSession, GetSession,
// Heartbeat, HeartbeatBatch and HeartbeatStream over N connections with M
// calls in flight on each, for a fixed time, and reports per RPC the
// throughput, latency percentiles (histogram.h) and errors by status code,
// as a table or JSON.
//
// Shape: grpc++'s async (completion queue) API. Every in-flight slot is one
// object that starts its next call from the completion of the previous one.
// --threads driver threads each poll their own completion queue and run
// their slots' completions inline: no hand-off between threads per call.
// The starts of one turn go out in one TCP send (drive(), "Corking").
// (The callback API, tried first, hands every completion to an executor
// thread and cost 25 us of client CPU per GetSession here; h2load costs 5.)
// A call counts when it started after the warm-up and finished before the
// end (so the window holds only steady-state calls); throughput is that
// count over the window's length.
//
// Threads: main sets up, then joins the drivers; a slot is touched only by
// its driver; the statistics are relaxed atomics.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <absl/synchronization/mutex.h>
#include <dirent.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "histogram.h"
#include "session.grpc.pb.h"

namespace loadgen
{
namespace
{

using Clock = std::chrono::steady_clock;

enum Kind { kCreate, kGet, kHeartbeat, kBatch, kStream, kKinds };
const char *const kKindNames[kKinds] = {"CreateSession", "GetSession", "Heartbeat", "HeartbeatBatch",
                                        "HeartbeatStream"};
const char *const kMixNames[kKinds] = {"create", "get", "heartbeat", "batch", "stream"};

const char *code_name(int code)
{
    static const char *const names[] = {
        "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED"};
    return (code >= 0 && code < 17) ? names[code] : "UNKNOWN";
}

struct Config {
    std::string addr = "127.0.0.1:50051";
    std::string tls_ca, tls_cert, tls_key, tls_server_name;
    int connections = 1;
    int in_flight = 16;
    int threads = 1; // driver threads (completion queues)
    double duration_s = 10;
    double warmup_s = 1;
    double deadline_s = 10;
    unsigned weights[kKinds] = {0, 1, 1, 0, 0};
    int batch_size = 1000;
    bool batch_text = false; // ids as text instead of raw bytes
    int sessions = 10000;
    bool json = false;
    std::string json_out;
    std::string h2load_frames; // directory: write gRPC-framed bodies for h2load, then exit
    int server_pid = 0;        // report this process's CPU time over the window
    bool cork = true;          // coalesce each turn's call starts into one TCP send
    std::vector<std::pair<std::string, std::string>> grpc_args; // --grpc-arg NAME=VALUE, on every channel
};

struct RpcStats {
    Histogram latency_ns;
    std::atomic<uint64_t> codes[17] = {};
    std::atomic<uint64_t> items_ok{0};     // batches: sessions heartbeated
    std::atomic<uint64_t> items_failed{0}; // batches: per-session failures
};

struct Shared {
    Config cfg;
    std::vector<std::string> ids; // canonical text
    std::string raw_ids;          // the same, 16 bytes each
    Clock::time_point measure_from, stop_at;
    RpcStats stats[kKinds];
    std::atomic<uint64_t> create_seq{0};
    // Counts a finished call if it lies wholly inside the measured window.
    bool record(Kind k, Clock::time_point started, int code)
    {
        Clock::time_point now = Clock::now();
        if (started < measure_from || now > stop_at)
            return false;
        int c = (code >= 0 && code < 17) ? code : 2;
        stats[k].codes[c].fetch_add(1, std::memory_order_relaxed);
        stats[k].latency_ns.record(
            static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - started).count()));
        return true;
    }
};

uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Fills a batch request with batch_size consecutive ids from a random start.
void fill_batch(Shared *sh, uint64_t *rng, session::HeartbeatBatchRequest *req)
{
    size_t n = sh->ids.size(), bs = static_cast<size_t>(sh->cfg.batch_size);
    size_t start = n > bs ? splitmix(rng) % (n - bs + 1) : 0;
    size_t count = std::min(bs, n);
    req->Clear();
    if (sh->cfg.batch_text) {
        for (size_t i = 0; i < count; ++i)
            req->add_session_ids(sh->ids[start + i]);
    } else {
        req->set_session_ids_raw(sh->raw_ids.data() + start * 16, count * 16);
    }
}

void count_items(Shared *sh, Kind k, const session::HeartbeatBatchResponse &resp)
{
    uint64_t n = static_cast<uint64_t>(resp.codes_size());
    sh->stats[k].items_ok.fetch_add(n - resp.failed(), std::memory_order_relaxed);
    sh->stats[k].items_failed.fetch_add(resp.failed(), std::memory_order_relaxed);
}

// A slot keeps one call in flight: each completion, taken off its thread's
// completion queue, records the call and starts the next. proceed() gets
// the completion's ok flag and returns false once the slot has stopped.
class Slot
{
  public:
    virtual ~Slot() = default;
    virtual void start() = 0;
    virtual bool proceed(bool ok) = 0;
};

std::chrono::system_clock::time_point deadline_after(double seconds)
{
    return std::chrono::system_clock::now() + std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}

class UnarySlot final : public Slot
{
  public:
    UnarySlot(Shared *sh, session::SessionService::Stub *stub, grpc::CompletionQueue *cq, uint64_t seed)
        : sh_(sh), stub_(stub), cq_(cq), rng_(seed)
    {
        for (int k = 0; k < kKinds; ++k)
            if (k != kStream)
                total_weight_ += sh->cfg.weights[k];
    }

    void start() override
    {
        kind_ = pick();
        ctx_ = std::make_unique<grpc::ClientContext>();
        ctx_->set_deadline(deadline_after(sh_->cfg.deadline_s));
        const std::string &id = sh_->ids[splitmix(&rng_) % sh_->ids.size()];
        started_ = Clock::now();
        switch (kind_) {
        case kGet:
            get_req_.set_session_id(id);
            get_ = stub_->AsyncGetSession(ctx_.get(), get_req_, cq_);
            get_->Finish(&get_resp_, &status_, this);
            break;
        case kHeartbeat:
            hb_req_.set_session_id(id);
            hb_ = stub_->AsyncHeartbeat(ctx_.get(), hb_req_, cq_);
            hb_->Finish(&hb_resp_, &status_, this);
            break;
        case kCreate: {
            uint64_t n = sh_->create_seq.fetch_add(1, std::memory_order_relaxed);
            create_req_.set_user_id("loadgen-" + std::to_string(n % 100000));
            create_req_.set_client_ip("10.0." + std::to_string((n >> 8) & 255) + "." + std::to_string(n & 255));
            create_req_.set_client_port(static_cast<uint32_t>(n & 0xffff));
            create_req_.set_timeout_seconds(60);
            create_ = stub_->AsyncCreateSession(ctx_.get(), create_req_, cq_);
            create_->Finish(&create_resp_, &status_, this);
            break;
        }
        default:
            fill_batch(sh_, &rng_, &batch_req_);
            batch_ = stub_->AsyncHeartbeatBatch(ctx_.get(), batch_req_, cq_);
            batch_->Finish(&batch_resp_, &status_, this);
            break;
        }
    }

    bool proceed(bool) override
    {
        // A unary Finish always completes with ok; the outcome is status_.
        if (sh_->record(kind_, started_, status_.error_code()) && kind_ == kBatch && status_.ok())
            count_items(sh_, kBatch, batch_resp_);
        if (Clock::now() >= sh_->stop_at)
            return false;
        start();
        return true;
    }

  private:
    Kind pick()
    {
        uint64_t r = splitmix(&rng_) % total_weight_;
        for (int k = 0; k < kKinds; ++k) {
            if (k == kStream)
                continue;
            if (r < sh_->cfg.weights[k])
                return static_cast<Kind>(k);
            r -= sh_->cfg.weights[k];
        }
        return kGet;
    }

    Shared *sh_;
    session::SessionService::Stub *stub_;
    grpc::CompletionQueue *cq_;
    uint64_t rng_;
    uint64_t total_weight_ = 0;
    Kind kind_ = kGet;
    std::unique_ptr<grpc::ClientContext> ctx_;
    grpc::Status status_;
    Clock::time_point started_;
    session::GetSessionRequest get_req_;
    session::GetSessionResponse get_resp_;
    std::unique_ptr<grpc::ClientAsyncResponseReader<session::GetSessionResponse>> get_;
    session::HeartbeatRequest hb_req_;
    session::HeartbeatResponse hb_resp_;
    std::unique_ptr<grpc::ClientAsyncResponseReader<session::HeartbeatResponse>> hb_;
    session::CreateSessionRequest create_req_;
    session::CreateSessionResponse create_resp_;
    std::unique_ptr<grpc::ClientAsyncResponseReader<session::CreateSessionResponse>> create_;
    session::HeartbeatBatchRequest batch_req_;
    session::HeartbeatBatchResponse batch_resp_;
    std::unique_ptr<grpc::ClientAsyncResponseReader<session::HeartbeatBatchResponse>> batch_;
};

// One HeartbeatStream with one batch in flight: write a request, read its
// response, record, repeat; at the end, half-close and take the status.
// One operation is outstanding at a time, so the state says which.
class StreamSlot final : public Slot
{
  public:
    StreamSlot(Shared *sh, session::SessionService::Stub *stub, grpc::CompletionQueue *cq, uint64_t seed)
        : sh_(sh), stub_(stub), cq_(cq), rng_(seed)
    {
    }

    void start() override
    {
        ctx_.set_deadline(deadline_after(sh_->cfg.warmup_s + sh_->cfg.duration_s + sh_->cfg.deadline_s));
        state_ = State::Starting;
        stream_ = stub_->AsyncHeartbeatStream(&ctx_, cq_, this);
    }

    bool proceed(bool ok) override
    {
        switch (state_) {
        case State::Starting:
        case State::Reading:
            if (!ok)
                return finish();
            if (state_ == State::Reading && sh_->record(kStream, started_, 0))
                count_items(sh_, kStream, resp_);
            if (Clock::now() >= sh_->stop_at) {
                state_ = State::Closing;
                stream_->WritesDone(this);
                return true;
            }
            fill_batch(sh_, &rng_, &req_);
            started_ = Clock::now();
            state_ = State::Writing;
            stream_->Write(req_, this);
            return true;
        case State::Writing:
            if (!ok)
                return finish();
            state_ = State::Reading;
            stream_->Read(&resp_, this);
            return true;
        case State::Closing:
            return finish();
        case State::Finished:
            if (!status_.ok())
                sh_->record(kStream, started_, status_.error_code());
            return false;
        }
        return false;
    }

  private:
    enum class State { Starting, Writing, Reading, Closing, Finished };
    bool finish()
    {
        state_ = State::Finished;
        stream_->Finish(&status_, this);
        return true;
    }

    Shared *sh_;
    session::SessionService::Stub *stub_;
    grpc::CompletionQueue *cq_;
    uint64_t rng_;
    State state_ = State::Starting;
    grpc::ClientContext ctx_;
    std::unique_ptr<grpc::ClientAsyncReaderWriter<session::HeartbeatBatchRequest, session::HeartbeatBatchResponse>>
        stream_;
    session::HeartbeatBatchRequest req_;
    session::HeartbeatBatchResponse resp_;
    grpc::Status status_;
    Clock::time_point started_;
};

// One driver thread: its completion queue, its slots, and the sockets of
// the connections they use. The thread polls the queue itself, so a
// completion and the next call's start run on it without a hand-off to
// another thread.
//
// Corking: gRPC writes each call's start to the socket in its own sendmsg
// (each call starts in its own ExecCtx), so at 16 in flight every call cost
// one TCP segment each way, and on loopback the sender pays the receiver's
// TCP input too. A turn of the loop takes every completion already there
// (the responses of one read), starts their successors with the sockets
// corked, then uncorks: one segment carries the turn's requests, as h2load
// sends one write per event-loop turn. The turn is bounded by the slots'
// count, so no request waits behind more than one turn's starts.
void set_cork(const std::vector<int> &fds, int on)
{
    for (int fd : fds)
        setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
}

void drive(std::vector<std::unique_ptr<Slot>> *slots, grpc::CompletionQueue *cq, const std::vector<int> *fds)
{
    size_t active = slots->size();
    set_cork(*fds, 1);
    for (auto &s : *slots)
        s->start();
    set_cork(*fds, 0);
    void *tag;
    bool ok;
    while (active > 0 && cq->Next(&tag, &ok)) {
        if (fds->empty()) {
            if (!static_cast<Slot *>(tag)->proceed(ok))
                --active;
            continue;
        }
        set_cork(*fds, 1);
        size_t turn = 0;
        for (;;) {
            if (!static_cast<Slot *>(tag)->proceed(ok))
                --active;
            if (active == 0 || ++turn >= slots->size() ||
                cq->AsyncNext(&tag, &ok, gpr_time_0(GPR_CLOCK_MONOTONIC)) != grpc::CompletionQueue::GOT_EVENT)
                break;
        }
        set_cork(*fds, 0);
    }
    cq->Shutdown();
    while (cq->Next(&tag, &ok))
        ;
}

// The TCP sockets of this process connected to a peer on `port`.
std::vector<int> sockets_to_port(uint16_t port)
{
    std::vector<int> fds;
    DIR *d = opendir("/proc/self/fd");
    if (d == nullptr)
        return fds;
    while (struct dirent *e = readdir(d)) {
        int fd = std::atoi(e->d_name);
        struct stat st;
        if (e->d_name[0] == '.' || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
            continue;
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        if (getpeername(fd, reinterpret_cast<struct sockaddr *>(&peer), &len) != 0)
            continue;
        uint16_t p = 0;
        if (peer.ss_family == AF_INET)
            p = ntohs(reinterpret_cast<struct sockaddr_in *>(&peer)->sin_port);
        else if (peer.ss_family == AF_INET6)
            p = ntohs(reinterpret_cast<struct sockaddr_in6 *>(&peer)->sin6_port);
        if (p == port && p != 0)
            fds.push_back(fd);
    }
    closedir(d);
    return fds;
}

std::shared_ptr<grpc::ChannelCredentials> credentials(const Config &c)
{
    if (c.tls_ca.empty())
        return grpc::InsecureChannelCredentials();
    auto read = [](const std::string &path) {
        std::ifstream in(path, std::ios::binary);
        if (!in) {
            std::fprintf(stderr, "loadgen: cannot read %s: %s\n", path.c_str(), std::strerror(errno));
            std::exit(2);
        }
        std::ostringstream ss;
        ss << in.rdbuf();
        return ss.str();
    };
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read(c.tls_ca);
    if (!c.tls_cert.empty()) {
        o.pem_cert_chain = read(c.tls_cert);
        o.pem_private_key = read(c.tls_key);
    }
    return grpc::SslCredentials(o);
}

std::shared_ptr<grpc::Channel> connect(const Config &c, int index)
{
    grpc::ChannelArguments args;
    // A distinct argument per channel, and no shared subchannel pool: each
    // channel gets a TCP connection of its own.
    args.SetInt("loadgen.connection", index);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetMaxReceiveMessageSize(-1);
    // No retries: loadgen reports each call's outcome as it was, and the
    // retry filter's per-call state cost ~1-2 us of client CPU per call
    // (GetSession at 16 in flight: 14.6 -> 13.6 us with corking).
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    if (!c.tls_server_name.empty())
        args.SetSslTargetNameOverride(c.tls_server_name);
    // gRPC reads integer arguments as integers: a value of digits is one.
    for (const auto &kv : c.grpc_args) {
        const std::string &v = kv.second;
        bool digits = !v.empty() && v.find_first_not_of("-0123456789") == std::string::npos;
        if (digits)
            args.SetInt(kv.first, std::atoi(v.c_str()));
        else
            args.SetString(kv.first, v);
    }
    return grpc::CreateCustomChannel(c.addr, credentials(c), args);
}

// Creates the sessions the other calls use, with blocking calls on a few
// threads (setup is not measured).
bool setup_sessions(Shared *sh, const std::vector<std::shared_ptr<grpc::Channel>> &channels)
{
    const int n = sh->cfg.sessions;
    sh->ids.assign(static_cast<size_t>(n), std::string());
    sh->raw_ids.assign(static_cast<size_t>(n) * 16, '\0');
    std::atomic<int> next{0};
    std::atomic<bool> failed{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            auto stub = session::SessionService::NewStub(channels[static_cast<size_t>(t) % channels.size()]);
            for (int i; (i = next.fetch_add(1)) < n && !failed.load();) {
                grpc::ClientContext ctx;
                ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
                session::CreateSessionRequest req;
                req.set_user_id("loadgen-setup-" + std::to_string(i % 1000));
                req.set_client_ip("10.1." + std::to_string((i >> 8) & 255) + "." + std::to_string(i & 255));
                req.set_timeout_seconds(3600);
                session::CreateSessionResponse resp;
                grpc::Status s = stub->CreateSession(&ctx, req, &resp);
                if (!s.ok()) {
                    std::fprintf(stderr, "loadgen: setup CreateSession failed: %s: %s\n", code_name(s.error_code()),
                                 s.error_message().c_str());
                    failed.store(true);
                    return;
                }
                const std::string &id = resp.session().session_id();
                sh->ids[static_cast<size_t>(i)] = id;
                // Canonical text -> 16 bytes.
                std::string hex;
                for (char ch : id)
                    if (ch != '-')
                        hex += ch;
                for (size_t b = 0; b < 16 && 2 * b + 1 < hex.size(); ++b)
                    sh->raw_ids[static_cast<size_t>(i) * 16 + b] =
                        static_cast<char>(std::stoi(hex.substr(2 * b, 2), nullptr, 16));
            }
        });
    }
    for (auto &t : threads)
        t.join();
    return !failed.load();
}

// gRPC framing (1 byte flags, 4 bytes length, the message) for h2load -d.
bool write_frame(const std::string &path, const google::protobuf::Message &m)
{
    std::string body = m.SerializeAsString();
    std::string frame(5, '\0');
    uint32_t len = static_cast<uint32_t>(body.size());
    frame[1] = static_cast<char>(len >> 24);
    frame[2] = static_cast<char>(len >> 16);
    frame[3] = static_cast<char>(len >> 8);
    frame[4] = static_cast<char>(len);
    std::ofstream out(path, std::ios::binary);
    out << frame << body;
    return static_cast<bool>(out);
}

std::string us(uint64_t ns)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(ns) / 1e3);
    return buf;
}

// CPU seconds (user + system) of a process so far; -1 if unreadable.
double cpu_seconds(int pid)
{
    std::ifstream in(pid == 0 ? std::string("/proc/self/stat") : "/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t p = text.rfind(')'); // the command name may hold spaces
    if (p == std::string::npos)
        return -1;
    std::istringstream rest(text.substr(p + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14)
            utime = std::stoull(field);
        if (i == 15)
            stime = std::stoull(field);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU used by loadgen and (with --server-pid) the server inside the window.
struct CpuUse {
    double client_s = -1, server_s = -1;
};

void report(const Shared &sh, double window_s, const CpuUse &cpu, FILE *text, std::string *json)
{
    const Config &c = sh.cfg;
    std::ostringstream j;
    j << "{\n  \"config\": {\"addr\": \"" << c.addr << "\", \"tls\": " << (c.tls_ca.empty() ? "false" : "true")
      << ", \"connections\": " << c.connections << ", \"in_flight_per_connection\": " << c.in_flight
      << ", \"threads\": " << c.threads << ", \"duration_s\": " << c.duration_s << ", \"warmup_s\": " << c.warmup_s
      << ", \"batch_size\": " << c.batch_size << ", \"batch_ids\": \"" << (c.batch_text ? "text" : "raw")
      << "\", \"sessions\": " << c.sessions << ", \"mix\": {";
    for (int k = 0; k < kKinds; ++k)
        j << (k ? ", " : "") << "\"" << kMixNames[k] << "\": " << c.weights[k];
    uint64_t calls = 0;
    for (int k = 0; k < kKinds; ++k)
        calls += sh.stats[k].latency_ns.count();
    auto per_call_us = [&](double s) { return calls == 0 || s < 0 ? -1.0 : s * 1e6 / static_cast<double>(calls); };
    j << "}},\n  \"window_s\": " << window_s << ",\n  \"cpu\": {\"client_s\": " << cpu.client_s
      << ", \"client_us_per_call\": " << per_call_us(cpu.client_s) << ", \"server_s\": " << cpu.server_s
      << ", \"server_us_per_call\": " << per_call_us(cpu.server_s) << "},\n  \"rpcs\": {";
    if (text) {
        std::fprintf(text, "cpu in the window: loadgen %.2f s (%.1f us/call)", cpu.client_s, per_call_us(cpu.client_s));
        if (cpu.server_s >= 0)
            std::fprintf(text, ", server %.2f s (%.1f us/call, %.2f cores)", cpu.server_s, per_call_us(cpu.server_s),
                         cpu.server_s / window_s);
        std::fprintf(text, "\n");
    }
    if (text)
        std::fprintf(text, "%-16s %10s %10s %9s %9s %9s %9s %9s  %s\n", "rpc", "calls", "calls/s", "p50 us", "p99 us",
                     "p99.9 us", "max us", "mean us", "errors");
    bool first = true;
    for (int k = 0; k < kKinds; ++k) {
        const RpcStats &st = sh.stats[k];
        uint64_t n = st.latency_ns.count();
        if (n == 0 && c.weights[k] == 0)
            continue;
        double qps = static_cast<double>(n) / window_s;
        std::string errs;
        std::ostringstream je;
        bool ef = true;
        for (int code = 1; code < 17; ++code) {
            uint64_t v = st.codes[code].load();
            if (v == 0)
                continue;
            errs += std::string(errs.empty() ? "" : ", ") + code_name(code) + "=" + std::to_string(v);
            je << (ef ? "" : ", ") << "\"" << code_name(code) << "\": " << v;
            ef = false;
        }
        if (text) {
            std::fprintf(text, "%-16s %10llu %10.0f %9s %9s %9s %9s %9.1f  %s\n", kKindNames[k],
                         static_cast<unsigned long long>(n), qps, us(st.latency_ns.quantile(0.5)).c_str(),
                         us(st.latency_ns.quantile(0.99)).c_str(), us(st.latency_ns.quantile(0.999)).c_str(),
                         us(st.latency_ns.max()).c_str(), st.latency_ns.mean() / 1e3,
                         errs.empty() ? "-" : errs.c_str());
            if (k == kBatch || k == kStream)
                std::fprintf(text, "%-16s %10s %10.0f session heartbeats/s (%llu failed)\n", "", "",
                             static_cast<double>(st.items_ok.load()) / window_s,
                             static_cast<unsigned long long>(st.items_failed.load()));
        }
        j << (first ? "" : ",") << "\n    \"" << kKindNames[k] << "\": {\"calls\": " << n
          << ", \"ok\": " << st.codes[0].load() << ", \"calls_per_s\": " << qps << ", \"errors\": {" << je.str() << "}"
          << ", \"latency_us\": {\"p50\": " << us(st.latency_ns.quantile(0.5))
          << ", \"p90\": " << us(st.latency_ns.quantile(0.9)) << ", \"p99\": " << us(st.latency_ns.quantile(0.99))
          << ", \"p999\": " << us(st.latency_ns.quantile(0.999)) << ", \"max\": " << us(st.latency_ns.max())
          << ", \"mean\": " << st.latency_ns.mean() / 1e3 << "}";
        if (k == kBatch || k == kStream)
            j << ", \"session_heartbeats_per_s\": " << static_cast<double>(st.items_ok.load()) / window_s
              << ", \"session_heartbeats_failed\": " << st.items_failed.load();
        j << ", \"histogram_us\": [";
        bool bf = true;
        for (const auto &b : st.latency_ns.buckets()) {
            j << (bf ? "" : ", ") << "[" << us(b.first) << ", " << b.second << "]";
            bf = false;
        }
        j << "]}";
        first = false;
    }
    j << "\n  }\n}\n";
    *json = j.str();
}

void usage()
{
    std::printf("usage: loadgen [--option value]...\n\n"
                "Load for sessiond: N connections x M calls in flight, for a fixed time; QPS, latency\n"
                "percentiles (log-linear histogram, 0.8%% resolution) and errors by code per RPC.\n\n"
                "  --addr HOST:PORT          sessiond (default 127.0.0.1:50051)\n"
                "  --connections N           TCP connections (default 1)\n"
                "  --in-flight M             calls in flight per connection (default 16)\n"
                "  --threads T               client threads driving the calls (default 1)\n"
                "  --duration SECONDS        measured time (default 10)\n"
                "  --warmup SECONDS          unmeasured time before it (default 1)\n"
                "  --mix create=W,get=W,heartbeat=W,batch=W,stream=W\n"
                "                            weights of each call (default get=1,heartbeat=1); stream\n"
                "                            turns that share of the slots into HeartbeatStream streams\n"
                "  --batch-size N            ids per HeartbeatBatch / stream message (default 1000)\n"
                "  --batch-text              send batch ids as text (default: 16 raw bytes each)\n"
                "  --sessions N              sessions created before the run (default 10000)\n"
                "  --deadline SECONDS        per call (default 10)\n"
                "  --tls-ca PATH             TLS, trusting this CA; --tls-cert/--tls-key for mutual TLS\n"
                "  --tls-server-name NAME    name expected in the server's certificate\n"
                "  --no-cork                 one TCP send per call start (default: a turn's starts are\n"
                "                            corked into one send, as h2load writes once per turn)\n"
                "  --grpc-arg NAME=VALUE     a gRPC channel argument on every connection (repeatable;\n"
                "                            digits are an integer), e.g. grpc.minimal_stack=1\n"
                "  --server-pid PID          also report that process's CPU use in the window (sessiond's)\n"
                "  --json                    print JSON (with histograms) instead of the table\n"
                "  --json-out PATH           also write the JSON there\n"
                "  --h2load-frames DIR       create the sessions, write gRPC-framed GetSession and Heartbeat\n"
                "                            bodies to DIR/get.bin and DIR/heartbeat.bin for h2load -d, exit\n");
}

bool parse_mix(const std::string &text, unsigned *weights)
{
    for (int k = 0; k < kKinds; ++k)
        weights[k] = 0;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t eq = item.find('=');
        std::string name = item.substr(0, eq);
        unsigned w =
            eq == std::string::npos ? 1 : static_cast<unsigned>(std::strtoul(item.c_str() + eq + 1, nullptr, 10));
        int k = 0;
        while (k < kKinds && name != kMixNames[k])
            ++k;
        if (k == kKinds)
            return false;
        weights[k] = w;
    }
    unsigned total = 0;
    for (int k = 0; k < kKinds; ++k)
        total += weights[k];
    return total > 0;
}

int parse_args(int argc, char **argv, Config *c)
{
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "loadgen: %s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--help" || a == "-h") {
            usage();
            return 1;
        } else if (a == "--addr") {
            c->addr = value();
        } else if (a == "--connections") {
            c->connections = std::atoi(value().c_str());
        } else if (a == "--threads") {
            c->threads = std::atoi(value().c_str());
        } else if (a == "--in-flight") {
            c->in_flight = std::atoi(value().c_str());
        } else if (a == "--duration") {
            c->duration_s = std::atof(value().c_str());
        } else if (a == "--warmup") {
            c->warmup_s = std::atof(value().c_str());
        } else if (a == "--deadline") {
            c->deadline_s = std::atof(value().c_str());
        } else if (a == "--mix") {
            std::string m = value();
            if (!parse_mix(m, c->weights)) {
                std::fprintf(stderr,
                             "loadgen: --mix \"%s\": expected create=W,get=W,heartbeat=W,batch=W,stream=W "
                             "with a positive total\n",
                             m.c_str());
                return -1;
            }
        } else if (a == "--batch-size") {
            c->batch_size = std::atoi(value().c_str());
        } else if (a == "--batch-text") {
            c->batch_text = true;
        } else if (a == "--sessions") {
            c->sessions = std::atoi(value().c_str());
        } else if (a == "--tls-ca") {
            c->tls_ca = value();
        } else if (a == "--tls-cert") {
            c->tls_cert = value();
        } else if (a == "--tls-key") {
            c->tls_key = value();
        } else if (a == "--tls-server-name") {
            c->tls_server_name = value();
        } else if (a == "--json") {
            c->json = true;
        } else if (a == "--json-out") {
            c->json_out = value();
        } else if (a == "--server-pid") {
            c->server_pid = std::atoi(value().c_str());
        } else if (a == "--no-cork") {
            c->cork = false;
        } else if (a == "--grpc-arg") {
            std::string kv = value();
            size_t eq = kv.find('=');
            if (eq == std::string::npos || eq == 0) {
                std::fprintf(stderr, "loadgen: --grpc-arg \"%s\": expected NAME=VALUE\n", kv.c_str());
                return -1;
            }
            c->grpc_args.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
        } else if (a == "--h2load-frames") {
            c->h2load_frames = value();
        } else {
            std::fprintf(stderr, "loadgen: unknown argument %s (see --help)\n", a.c_str());
            return -1;
        }
    }
    if (c->connections < 1 || c->connections > 1024 || c->in_flight < 1 || c->in_flight > 100000 || c->threads < 1 ||
        c->threads > 256) {
        std::fprintf(stderr, "loadgen: --connections must be 1..1024, --in-flight 1..100000, --threads 1..256\n");
        return -1;
    }
    if (c->duration_s <= 0 || c->warmup_s < 0 || c->deadline_s <= 0) {
        std::fprintf(stderr, "loadgen: --duration and --deadline must be positive, --warmup not negative\n");
        return -1;
    }
    bool batches = c->weights[kBatch] + c->weights[kStream] > 0;
    if (c->sessions < 1 || c->batch_size < 1 || (batches && c->batch_size > c->sessions)) {
        std::fprintf(stderr, "loadgen: --sessions must be positive and --batch-size 1..--sessions (%d)\n", c->sessions);
        return -1;
    }
    if (c->tls_cert.empty() != c->tls_key.empty() || (!c->tls_cert.empty() && c->tls_ca.empty())) {
        std::fprintf(stderr, "loadgen: --tls-cert and --tls-key go together, and need --tls-ca\n");
        return -1;
    }
    return 0;
}

int run(const Config &cfg)
{
    auto sh = std::make_unique<Shared>();
    sh->cfg = cfg;
    std::vector<std::shared_ptr<grpc::Channel>> channels;
    std::vector<std::unique_ptr<session::SessionService::Stub>> stubs;
    for (int i = 0; i < cfg.connections; ++i) {
        channels.push_back(connect(cfg, i));
        stubs.push_back(session::SessionService::NewStub(channels.back()));
    }
    // Channels connect one at a time, so the socket that appears is that
    // channel's (for corking; none found, e.g. a unix socket: no corking).
    uint16_t port = static_cast<uint16_t>(std::atoi(cfg.addr.substr(cfg.addr.rfind(':') + 1).c_str()));
    std::vector<int> channel_fd(channels.size(), -1);
    for (size_t i = 0; i < channels.size(); ++i) {
        std::vector<int> before = sockets_to_port(port);
        if (!channels[i]->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
            std::fprintf(stderr, "loadgen: cannot connect to %s within 10 s\n", cfg.addr.c_str());
            return 1;
        }
        for (int fd : sockets_to_port(port))
            if (std::find(before.begin(), before.end(), fd) == before.end())
                channel_fd[i] = fd;
    }
    if (!setup_sessions(sh.get(), channels))
        return 1;

    if (!cfg.h2load_frames.empty()) {
        session::GetSessionRequest g;
        g.set_session_id(sh->ids[0]);
        session::HeartbeatRequest h;
        h.set_session_id(sh->ids[0]);
        if (!write_frame(cfg.h2load_frames + "/get.bin", g) || !write_frame(cfg.h2load_frames + "/heartbeat.bin", h)) {
            std::fprintf(stderr, "loadgen: cannot write to %s\n", cfg.h2load_frames.c_str());
            return 1;
        }
        std::printf("wrote %s/get.bin and %s/heartbeat.bin (session %s); for example:\n"
                    "  h2load -c 1 -m 16 -D 10 -d %s/get.bin -H 'content-type: application/grpc' -H 'te: trailers' "
                    "http://%s/session.SessionService/GetSession\n",
                    cfg.h2load_frames.c_str(), cfg.h2load_frames.c_str(), sh->ids[0].c_str(), cfg.h2load_frames.c_str(),
                    cfg.addr.c_str());
        return 0;
    }

    // Slots: the stream share of each connection's slots runs streams.
    unsigned total = 0;
    for (int k = 0; k < kKinds; ++k)
        total += cfg.weights[k];
    int stream_slots =
        static_cast<int>((static_cast<uint64_t>(cfg.in_flight) * cfg.weights[kStream] + total / 2) / total);
    if (cfg.weights[kStream] > 0 && stream_slots == 0)
        stream_slots = 1;
    if (stream_slots == cfg.in_flight && cfg.weights[kStream] != total)
        stream_slots = cfg.in_flight - 1;

    Clock::time_point t0 = Clock::now();
    sh->measure_from = t0 + std::chrono::microseconds(static_cast<int64_t>(cfg.warmup_s * 1e6));
    sh->stop_at = sh->measure_from + std::chrono::microseconds(static_cast<int64_t>(cfg.duration_s * 1e6));
    const int threads = std::min(cfg.threads, cfg.connections * cfg.in_flight);
    std::vector<std::unique_ptr<grpc::CompletionQueue>> cqs;
    std::vector<std::vector<std::unique_ptr<Slot>>> slots(static_cast<size_t>(threads));
    std::vector<std::vector<int>> fds(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t)
        cqs.push_back(std::make_unique<grpc::CompletionQueue>());
    uint64_t seed = static_cast<uint64_t>(t0.time_since_epoch().count());
    size_t next_thread = 0;
    for (int c = 0; c < cfg.connections; ++c) {
        for (int s = 0; s < cfg.in_flight; ++s) {
            size_t t = next_thread++ % static_cast<size_t>(threads);
            auto *stub = stubs[static_cast<size_t>(c)].get();
            int fd = channel_fd[static_cast<size_t>(c)];
            if (cfg.cork && fd >= 0 && std::find(fds[t].begin(), fds[t].end(), fd) == fds[t].end())
                fds[t].push_back(fd);
            if (s < stream_slots)
                slots[t].push_back(std::make_unique<StreamSlot>(sh.get(), stub, cqs[t].get(), splitmix(&seed)));
            else
                slots[t].push_back(std::make_unique<UnarySlot>(sh.get(), stub, cqs[t].get(), splitmix(&seed)));
        }
    }
    std::vector<std::thread> drivers;
    for (int t = 0; t < threads; ++t)
        drivers.emplace_back(drive, &slots[static_cast<size_t>(t)], cqs[static_cast<size_t>(t)].get(),
                             &fds[static_cast<size_t>(t)]);
    // CPU use over the measured window, sampled at its edges.
    CpuUse cpu;
    std::thread sampler([&] {
        std::this_thread::sleep_until(sh->measure_from);
        double c0 = cpu_seconds(0), s0 = cfg.server_pid ? cpu_seconds(cfg.server_pid) : -1;
        std::this_thread::sleep_until(sh->stop_at);
        cpu.client_s = cpu_seconds(0) - c0;
        if (cfg.server_pid && s0 >= 0)
            cpu.server_s = cpu_seconds(cfg.server_pid) - s0;
    });
    for (auto &d : drivers)
        d.join();
    sampler.join();
    double window_s = cfg.duration_s;
    std::string json;
    report(*sh, window_s, cpu, cfg.json ? nullptr : stdout, &json);
    if (cfg.json)
        std::fputs(json.c_str(), stdout);
    if (!cfg.json_out.empty()) {
        std::ofstream out(cfg.json_out);
        out << json;
        if (!out) {
            std::fprintf(stderr, "loadgen: cannot write %s\n", cfg.json_out.c_str());
            return 1;
        }
    }
    return 0;
}

} // namespace
} // namespace loadgen

int main(int argc, char **argv)
{
    // As in sessiond: no lock-order graphs for gRPC's mutexes (Debian's
    // abseil keeps its debug deadlock detection on).
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
    loadgen::Config cfg;
    int r = loadgen::parse_args(argc, argv, &cfg);
    if (r != 0)
        return r > 0 ? 0 : 2;
    return loadgen::run(cfg);
}
