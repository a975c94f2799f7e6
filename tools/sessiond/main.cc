// main.cc: sessiond's life: options, engine, snapshot load, gRPC server,
// metrics endpoint, periodic snapshots, and an orderly stop on SIGTERM or
// SIGINT (stop accepting, finish in-flight calls, end watch streams, write
// the snapshot, exit 0).
//
// SIGHUP re-reads the TLS certificate, key and client CA (tls.h).
//
// Threads: main waits for a signal (a handler writes it to a pipe);
// --grpc-threads threads serve gRPC's completion queues (calls.h), and gRPC
// keeps a few of its own (timers, its executor); the engine runs its reaper;
// libmicrohttpd its poller; one snapshot thread.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include <absl/synchronization/mutex.h>
#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>
#include <fcntl.h>
#include <unistd.h>

#include <afsm.h>

#include "calls.h"
#include "config.h"
#include "health.h"
#include "jsonlog.h"
#include "metrics_http.h"
#include "reflection.h"
#include "service.h"
#include "snapshot.h"
#include "tls.h"

// Transparent huge pages for jemalloc's extents and metadata, on by default
// (issue 15, goal 6: at 1M sessions a lookup's page walk is a large share of
// its cost; bench/RESULTS.md, "Huge pages", has the measurement). jemalloc
// reads this string at start-up and MALLOC_CONF after it, so
// MALLOC_CONF=thp:default turns the switch off. Ignored where jemalloc is not
// the allocator (sanitizer builds; glibc has GLIBC_TUNABLES=glibc.malloc.hugetlb=1).
extern "C" {
extern const char *malloc_conf;
const char *malloc_conf = "thp:always,metadata_thp:always";
}

namespace sessiond
{
namespace
{

const char *const kServiceName = "session.SessionService";

const char *grpc_code_name(int code)
{
    static const char *const names[] = {
        "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED"};
    return (code >= 0 && code < 17) ? names[code] : "UNKNOWN";
}

int g_signal_pipe[2] = {-1, -1};

void on_stop_signal(int sig)
{
    unsigned char b = static_cast<unsigned char>(sig);
    ssize_t n = ::write(g_signal_pipe[1], &b, 1); // async-signal-safe; a full pipe means a stop is already pending
    (void)n;
}

double wall_seconds()
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

// What /metrics shows about the daemon itself, next to the engine's series.
struct DaemonStats {
    std::atomic<double> snapshot_last_success{0};
    std::atomic<double> snapshot_duration{0};
    std::atomic<uint64_t> snapshot_sessions{0};
    std::atomic<uint64_t> snapshot_failures{0};
    double start_time = wall_seconds();
};

std::string fmt(const char *format, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char *format, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, format);
    int n = std::vsnprintf(buf, sizeof buf, format, ap);
    va_end(ap);
    return std::string(buf,
                       n < 0 ? 0 : (static_cast<size_t>(n) < sizeof buf ? static_cast<size_t>(n) : sizeof buf - 1));
}

std::string render_metrics(afsm_engine *engine, const RpcCounters &rpc, const WatchHub &hub, const DaemonStats &ds)
{
    std::string out;
    size_t needed = 0;
    afsm_status s = afsm_metrics_write_prometheus(engine, nullptr, 0, &needed);
    if (s == AFSM_EBUFFER || s == AFSM_OK) {
        std::string buf(needed + 4096, '\0'); // room for series that appear meanwhile
        for (int attempt = 0; attempt < 4; ++attempt) {
            s = afsm_metrics_write_prometheus(engine, &buf[0], buf.size(), &needed);
            if (s != AFSM_EBUFFER)
                break;
            buf.resize(needed + 4096);
        }
        if (s == AFSM_OK)
            out.assign(buf.c_str());
    }
    if (s != AFSM_OK) {
        // The engine's exporter failed: keep at least the session gauges.
        afsm_counts c;
        if (afsm_engine_counts(engine, &c) == AFSM_OK) {
            out += "# HELP session_total Sessions in the engine.\n# TYPE session_total gauge\n";
            out += fmt("session_total %llu\n", static_cast<unsigned long long>(c.total));
        }
    }
    out += "# HELP sessiond_grpc_requests_total gRPC calls handled by sessiond, by method and status code.\n"
           "# TYPE sessiond_grpc_requests_total counter\n";
    for (int m = 0; m < RpcCounters::kMethods; ++m) {
        for (int c = 0; c < RpcCounters::kCodes; ++c) {
            uint64_t v = rpc.get(m, c);
            if (v == 0 && c != 0)
                continue;
            out += fmt("sessiond_grpc_requests_total{method=\"%s\",code=\"%s\"} %llu\n", RpcCounters::method_name(m),
                       grpc_code_name(c), static_cast<unsigned long long>(v));
        }
    }
    out += "# HELP sessiond_watch_streams Open WatchSessions streams.\n# TYPE sessiond_watch_streams gauge\n";
    out += fmt("sessiond_watch_streams %zu\n", hub.count());
    out += "# HELP sessiond_watch_dropped_total WatchSessions streams ended because the client fell behind.\n"
           "# TYPE sessiond_watch_dropped_total counter\n";
    out += fmt("sessiond_watch_dropped_total %llu\n", static_cast<unsigned long long>(hub.dropped()));
    out += "# HELP sessiond_watch_missed_events_total Events not delivered to report_lag watchers that fell "
           "behind (each stream is told how many).\n"
           "# TYPE sessiond_watch_missed_events_total counter\n";
    out += fmt("sessiond_watch_missed_events_total %llu\n", static_cast<unsigned long long>(hub.missed()));
    out += "# HELP sessiond_watch_queued_events Events queued for watch streams, in all.\n"
           "# TYPE sessiond_watch_queued_events gauge\n";
    out += fmt("sessiond_watch_queued_events %lld\n", static_cast<long long>(hub.queued()));
    out += "# HELP sessiond_snapshot_last_success_timestamp_seconds When the last snapshot was written (0: never).\n"
           "# TYPE sessiond_snapshot_last_success_timestamp_seconds gauge\n";
    out += fmt("sessiond_snapshot_last_success_timestamp_seconds %.3f\n", ds.snapshot_last_success.load());
    out += "# HELP sessiond_snapshot_duration_seconds How long the last snapshot took to write.\n"
           "# TYPE sessiond_snapshot_duration_seconds gauge\n";
    out += fmt("sessiond_snapshot_duration_seconds %.6f\n", ds.snapshot_duration.load());
    out += "# HELP sessiond_snapshot_sessions Sessions in the last snapshot written.\n"
           "# TYPE sessiond_snapshot_sessions gauge\n";
    out += fmt("sessiond_snapshot_sessions %llu\n", static_cast<unsigned long long>(ds.snapshot_sessions.load()));
    out += "# HELP sessiond_snapshot_failures_total Snapshot writes that failed.\n"
           "# TYPE sessiond_snapshot_failures_total counter\n";
    out += fmt("sessiond_snapshot_failures_total %llu\n", static_cast<unsigned long long>(ds.snapshot_failures.load()));
    out += "# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.\n"
           "# TYPE process_start_time_seconds gauge\n";
    out += fmt("process_start_time_seconds %.3f\n", ds.start_time);
    return out;
}

bool write_snapshot(afsm_engine *engine, const std::string &path, DaemonStats *ds, const char *why)
{
    SnapshotStats st;
    std::string error;
    if (!snapshot_write(engine, path, &st, &error)) {
        ds->snapshot_failures.fetch_add(1);
        log_line(AFSM_LOG_ERROR, "snapshot failed", {{"path", path}, {"why", why}, {"error", error}});
        return false;
    }
    ds->snapshot_last_success.store(wall_seconds());
    ds->snapshot_duration.store(st.seconds);
    ds->snapshot_sessions.store(st.sessions);
    log_line(why[0] == 'p' ? AFSM_LOG_DEBUG : AFSM_LOG_INFO, "snapshot written",
             {{"path", path},
              {"why", why},
              {"sessions", std::to_string(st.sessions)},
              {"bytes", std::to_string(st.bytes)},
              {"seconds", fmt("%.3f", st.seconds)}});
    return true;
}

// The engine's error detail ("config.shard_count: 3, must be ...") with the
// config field replaced by the flag that set it.
std::string engine_detail_as_flags(std::string detail)
{
    static const std::pair<const char *, const char *> fields[] = {
        {"config.shard_count", "--shards"},
        {"config.default_timeout_ms", "--default-timeout (ms)"},
        {"config.max_lifetime_ms", "--max-lifetime (ms)"},
        {"config.idle_timeout_ms", "--idle-timeout (ms)"},
        {"config.cleanup_interval_ms", "--cleanup-interval (ms)"},
        {"config.tick_ms", "--cleanup-interval (ms)"},
        {"config.close_linger_ms", "--close-linger (ms)"},
        {"config.server_addr", "--server-addr"},
        {"config.etcd_request_timeout_ms", "--etcd-request-timeout (ms)"},
        {"config.etcd_dial_timeout_ms", "--etcd-dial-timeout (ms)"},
        {"config.etcd_stats_flush_ms", "--etcd-stats-flush (ms)"},
    };
    for (const auto &f : fields) {
        size_t at = detail.find(f.first);
        if (at != std::string::npos &&
            (at + std::strlen(f.first) == detail.size() || detail[at + std::strlen(f.first)] == ':'))
            return detail.replace(at, std::strlen(f.first), f.second);
    }
    return detail;
}

// Loads the snapshot at start. False: refuse to start (the error is logged).
bool load_snapshot(afsm_engine *engine, const Options &o)
{
    SnapshotStats st;
    std::string error;
    switch (snapshot_load(engine, o.snapshot, &st, &error)) {
    case LoadResult::Missing:
        log_line(AFSM_LOG_INFO, "no snapshot yet; starting empty", {{"path", o.snapshot}});
        return true;
    case LoadResult::Loaded:
        log_line(AFSM_LOG_INFO, "snapshot loaded",
                 {{"path", o.snapshot},
                  {"sessions", std::to_string(st.sessions)},
                  {"restored", std::to_string(st.restored)},
                  {"expired", std::to_string(st.expired)},
                  {"skipped", std::to_string(st.skipped)},
                  {"seconds", fmt("%.3f", st.seconds)}});
        return true;
    case LoadResult::Corrupt:
        if (o.start_empty_on_corrupt_snapshot) {
            // Keep the bad file for a post-mortem instead of overwriting it.
            std::string aside = o.snapshot + ".corrupt." + std::to_string(static_cast<long long>(wall_seconds()));
            bool moved = ::rename(o.snapshot.c_str(), aside.c_str()) == 0;
            log_line(
                AFSM_LOG_WARN, "snapshot is corrupt; starting empty (--start-empty-on-corrupt-snapshot)",
                {{"path", o.snapshot}, {"error", error}, {"moved_to", moved ? aside : std::string("(not moved)")}});
            return true;
        }
        log_line(AFSM_LOG_ERROR,
                 "snapshot is corrupt; refusing to start (fix or remove it, or pass "
                 "--start-empty-on-corrupt-snapshot to start with no sessions)",
                 {{"path", o.snapshot}, {"error", error}});
        return false;
    case LoadResult::Failed:
        log_line(AFSM_LOG_ERROR, "cannot load the snapshot; refusing to start",
                 {{"path", o.snapshot}, {"error", error}});
        return false;
    }
    return false;
}

// The etcd password: the file's first line.
bool read_password(const std::string &path, std::string *out)
{
    FILE *f = std::fopen(path.c_str(), "r");
    if (f == nullptr) {
        log_line(AFSM_LOG_ERROR, "cannot read --etcd-password-file", {{"path", path}, {"error", std::strerror(errno)}});
        return false;
    }
    char buf[1024];
    if (std::fgets(buf, sizeof buf, f) == nullptr)
        buf[0] = '\0';
    std::fclose(f);
    out->assign(buf, std::strcspn(buf, "\r\n"));
    return true;
}

int run(const Options &o)
{
    log_set_level(log_level_from_name(o.log_level));
    if (o.store != "memory" && o.store != "etcd") {
        log_line(AFSM_LOG_ERROR, "unknown --store (expected memory or etcd)", {{"store", o.store}});
        return 2;
    }
    std::string etcd_password;
    if (o.store == "etcd") {
        const char *refused =
            o.etcd_endpoints.empty() ? "--store etcd needs --etcd-endpoints"
            : !o.snapshot.empty()    ? "--snapshot is for the memory store (etcd keeps the sessions)"
            : o.idle_timeout_ms != 0 ? "--idle-timeout is not supported with --store etcd"
            : o.max_lifetime_ms != 0 ? "--max-lifetime is not supported with --store etcd"
            : o.etcd_read_mode != "replica" && o.etcd_read_mode != "linearizable" && o.etcd_read_mode != "consistent"
                ? "--etcd-read-mode must be replica, linearizable or consistent"
                : nullptr;
        if (refused != nullptr) {
            log_line(AFSM_LOG_ERROR, refused);
            return 2;
        }
        if (!o.etcd_password_file.empty() && !read_password(o.etcd_password_file, &etcd_password))
            return 2;
    }

    // Libraries start threads before main (gRPC's static initialisers), so
    // a blocked mask plus sigwait() would not see every delivery: a handler
    // on whichever thread gets the signal writes its number to a pipe that
    // main reads.
    if (::pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
        log_line(AFSM_LOG_ERROR, "pipe2 failed", {{"error", std::strerror(errno)}});
        return 1;
    }
    struct sigaction sa {
    };
    sa.sa_handler = &on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGHUP, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    WatchHub hub(o.watch_buffer);
    RpcCounters rpc;
    DaemonStats ds;

    std::string server_addr = o.server_addr.empty() ? o.listen : o.server_addr;
    afsm_config cfg{};
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = o.shards;
    cfg.default_timeout_ms = o.default_timeout_ms;
    cfg.cleanup_interval_ms = o.cleanup_interval_ms;
    cfg.tick_ms = o.cleanup_interval_ms < 100 ? o.cleanup_interval_ms : 0; // finer wheels for fast reaping
    cfg.idle_timeout_ms = o.idle_timeout_ms;
    cfg.max_lifetime_ms = o.max_lifetime_ms;
    // With etcd a closed session is removed at once (close_linger is a
    // memory-store feature; see core/etcd/README.md).
    cfg.close_linger_ms = o.store == "etcd" ? 0 : o.close_linger_ms;
    cfg.reaper = AFSM_REAPER_THREAD;
    cfg.log_level = static_cast<uint32_t>(log_level_from_name(o.log_level));
    cfg.server_addr = server_addr.data();
    cfg.server_addr_len = server_addr.size();
    cfg.on_event = &WatchHub::on_engine_event;
    cfg.event_ctx = &hub;
    cfg.on_log = &log_engine;
    cfg.max_sessions_per_user = o.max_sessions_per_user;
    cfg.limit_policy = o.limit_policy == "evict-oldest" ? AFSM_LIMIT_EVICT_OLDEST : AFSM_LIMIT_REJECT;
    if (!o.key_file.empty()) {
        cfg.key_file = o.key_file.data();
        cfg.key_file_len = o.key_file.size();
        cfg.key_id = o.key_id;
    }
    if (o.store == "etcd") {
        auto text = [](const std::string &v) { return v.empty() ? nullptr : v.c_str(); };
        cfg.store = AFSM_STORE_ETCD;
        cfg.etcd_endpoints = o.etcd_endpoints.c_str();
        cfg.etcd_prefix = text(o.etcd_prefix);
        cfg.etcd_dial_timeout_ms = o.etcd_dial_timeout_ms;
        cfg.etcd_request_timeout_ms = o.etcd_request_timeout_ms;
        cfg.etcd_ca_file = text(o.etcd_ca_file);
        cfg.etcd_cert_file = text(o.etcd_cert_file);
        cfg.etcd_key_file = text(o.etcd_key_file);
        cfg.etcd_user = text(o.etcd_user);
        cfg.etcd_password = o.etcd_user.empty() ? nullptr : etcd_password.c_str();
        cfg.etcd_stats_flush_ms = o.etcd_stats_flush_ms;
        cfg.etcd_read_mode = o.etcd_read_mode == "linearizable" ? AFSM_READ_LINEARIZABLE
                             : o.etcd_read_mode == "consistent" ? AFSM_READ_CONSISTENT
                                                                : AFSM_READ_REPLICA;
    }
    afsm_engine *engine = nullptr;
    afsm_status s = afsm_engine_open(&cfg, &engine);
    if (s == AFSM_EINVAL || s == AFSM_ETOOLONG) {
        // A value the engine refuses is a bad flag (exit 2: restarting will
        // not fix it); its detail names the config field and the limit.
        log_line(AFSM_LOG_ERROR, "invalid option", {{"error", engine_detail_as_flags(afsm_error_detail())}});
        return 2;
    }
    if (s != AFSM_OK) {
        std::string hint = s == AFSM_EKEYFILE ? " (the key file must hold exactly 32 bytes, be mode 0600 and be owned "
                                                "by root or this user, e.g. head -c 32 /dev/urandom > key && "
                                                "chmod 600 key)"
                                              : "";
        log_line(AFSM_LOG_ERROR, "cannot open the engine" + hint,
                 {{"error", afsm_strerror(s)}, {"status", afsm_status_name(s)}});
        return 1;
    }
    if (o.key_file.empty())
        log_line(AFSM_LOG_WARN, "no --key-file: tokens use a random key and will not survive a restart");

    std::string snapshot_error;
    if (!o.snapshot.empty() && !snapshot_prepare(o.snapshot, &snapshot_error)) {
        log_line(AFSM_LOG_ERROR, "cannot write the snapshot; refusing to start",
                 {{"path", o.snapshot}, {"error", snapshot_error}});
        afsm_engine_close(engine);
        return 1;
    }
    if (!o.snapshot.empty() && !load_snapshot(engine, o)) {
        afsm_engine_close(engine);
        return 1;
    }

    std::unique_ptr<TlsFiles> tls;
    std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
    if (!o.tls_cert.empty()) {
        tls = std::make_unique<TlsFiles>(o.tls_cert, o.tls_key, o.client_ca);
        std::string error;
        creds = tls->setup(&error);
        if (creds == nullptr) {
            log_line(AFSM_LOG_ERROR, "cannot set up TLS", {{"error", error}});
            afsm_engine_close(engine);
            return 1;
        }
        log_line(AFSM_LOG_INFO, "TLS certificate loaded",
                 {{"certificate", tls->describe()},
                  {"client_auth", o.client_ca.empty() ? "none" : "required (--client-ca " + o.client_ca + ")"}});
    }

    ServiceLimits limits;
    limits.max_batch = o.max_batch;
    limits.max_watchers = o.max_watchers;
    SessionServiceImpl service(engine, &hub, &rpc, limits);
    // Every service on the completion-queue API: no callback or sync method
    // anywhere (calls.h says why), so health and reflection are ours too.
    HealthService health({kServiceName});
    ReflectionService reflection({kServiceName, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"});
    // Default: one queue thread per two CPUs. Every queue thread also polls
    // the sockets, and epoll has no affinity: a second thread takes reads of
    // a connection whose calls the first serves, and the hand-off costs
    // ~2 us a call (README, "Threads"); one thread serves ~60K calls/s.
    size_t threads = o.grpc_threads;
    if (threads == 0)
        threads = std::max(1u, std::thread::hardware_concurrency() / 2);
    QueueThreads queues;
    grpc::ServerBuilder builder;
    int grpc_port = 0;
    builder.AddListeningPort(o.listen, creds, &grpc_port);
    // gRPC sets SO_REUSEPORT on its listeners by default: a second sessiond
    // on the same port would then bind too, and the kernel would split new
    // connections (and so the memory store's sessions) between the two.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, static_cast<int>(o.max_concurrent_streams));
    builder.RegisterService(service.async());
    builder.RegisterService(health.async());
    builder.RegisterService(reflection.async());
    queues.add_queues(&builder, threads);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (server == nullptr || grpc_port == 0) {
        log_line(AFSM_LOG_ERROR, "cannot listen for gRPC (address in use, or not HOST:PORT?)", {{"listen", o.listen}});
        if (server != nullptr) {
            server->Shutdown();
            queues.stop();
            server->Wait();
        } else {
            queues.stop();
        }
        afsm_engine_close(engine);
        return 1;
    }
    queues.start([&](grpc::ServerCompletionQueue *cq) {
        service.listen(cq);
        health.listen(cq);
        reflection.listen(cq);
    });

    std::atomic<bool> serving{true};
    std::unique_ptr<MetricsServer> metrics;
    std::string metrics_addr = "off";
    if (!o.metrics_listen.empty() && o.metrics_listen != "off") {
        metrics = std::make_unique<MetricsServer>([&] { return render_metrics(engine, rpc, hub, ds); },
                                                  [&] { return serving.load(); });
        std::string error;
        if (!metrics->start(o.metrics_listen, &error)) {
            log_line(AFSM_LOG_ERROR, "cannot start the metrics endpoint", {{"error", error}});
            server->Shutdown();
            queues.stop();
            server->Wait();
            afsm_engine_close(engine);
            return 1;
        }
        std::string host;
        uint16_t unused;
        split_host_port(o.metrics_listen, &host, &unused);
        metrics_addr =
            (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(metrics->port());
    }
    std::string grpc_host;
    uint16_t unused_port;
    if (!split_host_port(o.listen, &grpc_host, &unused_port))
        grpc_host = o.listen.substr(0, o.listen.rfind(':'));
    std::string grpc_addr = (grpc_host.find(':') != std::string::npos ? "[" + grpc_host + "]" : grpc_host) + ":" +
                            std::to_string(grpc_port);
    log_line(AFSM_LOG_INFO, "sessiond listening",
             {{"grpc", grpc_addr},
              {"metrics", metrics_addr},
              {"store", o.store},
              {"tls", o.tls_cert.empty() ? "off" : (o.client_ca.empty() ? "on" : "mutual")},
              {"snapshot", o.snapshot.empty() ? "off" : o.snapshot},
              {"grpc_threads", std::to_string(threads)},
              {"version", afsm_version()}});

    // Periodic snapshots.
    std::mutex stop_mu;
    std::condition_variable stop_cv;
    bool stopping = false;
    std::thread snapshotter;
    if (!o.snapshot.empty() && o.snapshot_interval_ms > 0) {
        snapshotter = std::thread([&] {
            std::unique_lock<std::mutex> lock(stop_mu);
            while (
                !stop_cv.wait_for(lock, std::chrono::milliseconds(o.snapshot_interval_ms), [&] { return stopping; })) {
                lock.unlock();
                write_snapshot(engine, o.snapshot, &ds, "periodic");
                lock.lock();
            }
        });
    }

    unsigned char sig = 0;
    for (;;) {
        if (::read(g_signal_pipe[0], &sig, 1) != 1) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (sig != SIGHUP)
            break;
        if (!tls) {
            log_line(AFSM_LOG_INFO, "SIGHUP: nothing to reload (no TLS)");
            continue;
        }
        std::string error;
        if (tls->reload(&error))
            log_line(AFSM_LOG_INFO, "SIGHUP: TLS certificate reloaded",
                     {{"certificate", tls->describe()},
                      {"takes_effect_within_seconds", std::to_string(TlsFiles::kRefreshSeconds)}});
        else
            log_line(AFSM_LOG_ERROR, "SIGHUP: TLS reload refused; the previous certificate stays", {{"error", error}});
    }
    log_line(AFSM_LOG_INFO, "shutting down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});

    // 1. Report not serving (and end health Watch streams); 2. end watch
    // streams (after what they have queued); 3. stop accepting and let
    // in-flight calls finish, up to the grace period (then they are
    // cancelled), the queue threads serving them meanwhile; 4. stop the
    // queue threads once every call state is gone (Shutdown can return
    // while cancelled calls' last tags are still to come: calls.h).
    serving.store(false);
    health.close();
    hub.close_all();
    //
    // gRPC's shutdown also waits, up to the deadline, for every connection
    // to close after its GOAWAY, and an idle client or a bare TCP connection
    // (a load balancer's check) may never close: the stop took the whole
    // grace with no call in flight. Once no call state is left (the
    // shutdown has failed the posted requests, the calls in flight are
    // done; before the shutdown the posted requests keep the count above 0)
    // there is nothing to cancel, so the connections are dropped at once.
    std::atomic<bool> shutdown_returned{false};
    std::thread idle_closer([&] {
        while (!shutdown_returned.load()) {
            if (LiveCalls::count().load(std::memory_order_acquire) == 0) {
                grpc_server_cancel_all_calls(server->c_server());
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    });
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(o.shutdown_grace_ms));
    shutdown_returned.store(true);
    idle_closer.join();
    queues.stop();
    server->Wait();
    if (snapshotter.joinable()) {
        {
            std::lock_guard<std::mutex> lock(stop_mu);
            stopping = true;
        }
        stop_cv.notify_all();
        snapshotter.join();
    }
    // Nothing changes sessions any more but the reaper: this snapshot is exact.
    int rc = 0;
    if (!o.snapshot.empty() && !write_snapshot(engine, o.snapshot, &ds, "shutdown"))
        rc = 1;
    if (metrics)
        metrics->stop();
    server.reset();
    s = afsm_engine_close(engine);
    if (s != AFSM_OK)
        log_line(AFSM_LOG_WARN, "engine close", {{"error", afsm_strerror(s)}});
    log_line(AFSM_LOG_INFO, "sessiond stopped", {{"exit_code", std::to_string(rc)}});
    return rc;
}

} // namespace
} // namespace sessiond

int main(int argc, char **argv)
{
    // Debian's abseil is built without NDEBUG, so every absl::Mutex (all of
    // gRPC's locks) records lock-order graphs for deadlock detection: 6 % of
    // sessiond's CPU under load (perf, GetSession at 16 in flight). That is a
    // debugging aid for gRPC's own locking, tested upstream; not ours to pay.
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
    sessiond::log_route_libraries();
    sessiond::Options options;
    int r = sessiond::parse_options(argc, argv, &options);
    if (r > 0)
        return 0;
    if (r < 0)
        return 2;
    return sessiond::run(options);
}
