// config.cc: flag and config-file parsing. One table names every option,
// its help text and how to set it, so --help, the config file and the
// command line can never disagree.
#include "config.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <vector>

#include <sys/stat.h>

#include <afsm.h>

#include "metrics_http.h"

namespace sessiond
{
namespace
{

enum class Kind { String, Duration, Uint, Flag };

struct OptionSpec {
    const char *name;
    Kind kind;
    const char *value_name;
    const char *help;
    std::function<bool(Options &, const std::string &)> set;
};

bool parse_uint(const std::string &text, uint64_t max, uint64_t *out)
{
    if (text.empty() || text.size() > 20)
        return false;
    for (char c : text)
        if (c < '0' || c > '9')
            return false;
    errno = 0;
    unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
    if (errno != 0 || v > max)
        return false;
    *out = v;
    return true;
}

bool parse_bool(const std::string &text, bool *out)
{
    if (text == "" || text == "true" || text == "1" || text == "yes" || text == "on") {
        *out = true;
        return true;
    }
    if (text == "false" || text == "0" || text == "no" || text == "off") {
        *out = false;
        return true;
    }
    return false;
}

template <typename T> std::function<bool(Options &, const std::string &)> str(T Options::*field)
{
    return [field](Options &o, const std::string &v) {
        o.*field = v;
        return true;
    };
}

// What the value of the option being applied should have been, for its
// error; set by a setter that fails, read and cleared by apply().
std::string &expected()
{
    static std::string text;
    return text;
}

// The engine's bound on its spans; also keeps deadlines computed from a
// duration (now + --shutdown-grace) far from overflowing.
constexpr uint64_t kDurationMaxMs = 3650ull * 86400 * 1000;

std::function<bool(Options &, const std::string &)> dur(uint64_t Options::*field)
{
    return [field](Options &o, const std::string &v) {
        uint64_t ms;
        if (!parse_duration_ms(v, &ms) || ms > kDurationMaxMs) {
            expected() = "a number with ms, s, m, h or d (bare: seconds), at most 3650d";
            return false;
        }
        o.*field = ms;
        return true;
    };
}

std::function<bool(Options &, const std::string &)> u32(uint32_t Options::*field, uint64_t max)
{
    return [field, max](Options &o, const std::string &v) {
        uint64_t n;
        if (!parse_uint(v, max, &n)) {
            expected() = "an integer from 0 to " + std::to_string(max);
            return false;
        }
        o.*field = static_cast<uint32_t>(n);
        return true;
    };
}

const std::vector<OptionSpec> &specs()
{
    static const std::vector<OptionSpec> table = {
        {"config", Kind::String, "PATH", "read options from a file of key=value lines (keys as the flags, without --)",
         nullptr},
        {"listen", Kind::String, "HOST:PORT", "gRPC address (default 127.0.0.1:50051; port 0 picks a free port)",
         str(&Options::listen)},
        {"metrics-listen", Kind::String, "HOST:PORT",
         "HTTP address of /metrics and /healthz (default 127.0.0.1:9464: loopback only, plaintext, no "
         "authentication; bind another address only on a trusted network; \"off\" disables)",
         str(&Options::metrics_listen)},
        {"store", Kind::String, "NAME", "session store: memory (default) or etcd (shared by every sessiond on it)",
         str(&Options::store)},
        {"etcd-endpoints", Kind::String, "URLS", "etcd client URLs, comma-separated (http://127.0.0.1:2379)",
         str(&Options::etcd_endpoints)},
        {"etcd-prefix", Kind::String, "PREFIX", "etcd key prefix (default /afsm/)", str(&Options::etcd_prefix)},
        {"etcd-dial-timeout", Kind::Duration, "DURATION", "etcd connection timeout (default 2s)",
         dur(&Options::etcd_dial_timeout_ms)},
        {"etcd-request-timeout", Kind::Duration, "DURATION",
         "bound of every etcd call; past it writes answer UNAVAILABLE (default 5s)",
         dur(&Options::etcd_request_timeout_ms)},
        {"etcd-ca-file", Kind::String, "PATH", "CA certificate (PEM) for https endpoints", str(&Options::etcd_ca_file)},
        {"etcd-cert-file", Kind::String, "PATH", "client certificate (PEM)", str(&Options::etcd_cert_file)},
        {"etcd-key-file", Kind::String, "PATH", "client certificate's key (PEM)", str(&Options::etcd_key_file)},
        {"etcd-user", Kind::String, "NAME", "etcd user (auth)", str(&Options::etcd_user)},
        {"etcd-read-mode", Kind::String, "MODE",
         "gets: replica (default, local), linearizable (from etcd) or consistent (etcd's revision, local answer)",
         str(&Options::etcd_read_mode)},
        {"etcd-stats-flush", Kind::Duration, "DURATION",
         "how often stats additions are written to etcd (default 10s; a crash loses at most one period)",
         dur(&Options::etcd_stats_flush_ms)},
        {"etcd-password-file", Kind::String, "PATH", "file holding the etcd user's password",
         str(&Options::etcd_password_file)},
        {"server-addr", Kind::String, "TEXT", "server address reported in every session (default: --listen)",
         str(&Options::server_addr)},
        {"default-timeout", Kind::Duration, "DURATION", "session timeout when a create gives none (default 30m)",
         dur(&Options::default_timeout_ms)},
        {"cleanup-interval", Kind::Duration, "DURATION", "how often expired sessions are reaped (default 1s)",
         dur(&Options::cleanup_interval_ms)},
        {"idle-timeout", Kind::Duration, "DURATION", "active -> idle after this long without activity (default 0: off)",
         dur(&Options::idle_timeout_ms)},
        {"close-linger", Kind::Duration, "DURATION",
         "how long a closed session stays readable before removal (default 30s)", dur(&Options::close_linger_ms)},
        {"max-lifetime", Kind::Duration, "DURATION",
         "hard cap on a session's life, heartbeats or not (default 0: none)", dur(&Options::max_lifetime_ms)},
        {"max-sessions-per-user", Kind::Uint, "N", "cap on one user's sessions (default 0: no cap)",
         u32(&Options::max_sessions_per_user, UINT32_MAX)},
        {"limit-policy", Kind::String, "POLICY", "over the cap: reject (RESOURCE_EXHAUSTED, default) or evict-oldest",
         str(&Options::limit_policy)},
        {"key-file", Kind::String, "PATH",
         "32-byte token key, mode 0600, owned by root or us; without it tokens die with the process",
         str(&Options::key_file)},
        {"key-id", Kind::Uint, "N", "key id of --key-file (1..65535, default 1)",
         u32(&Options::key_id, AFSM_KEY_ID_MAX)},
        {"snapshot", Kind::String, "PATH", "snapshot file: loaded on start, written periodically and on shutdown",
         str(&Options::snapshot)},
        {"snapshot-interval", Kind::Duration, "DURATION",
         "period of snapshots while running (default 60s; 0: only on shutdown)", dur(&Options::snapshot_interval_ms)},
        {"start-empty-on-corrupt-snapshot", Kind::Flag, "",
         "start with no sessions instead of refusing a corrupt or truncated snapshot",
         [](Options &o, const std::string &v) { return parse_bool(v, &o.start_empty_on_corrupt_snapshot); }},
        {"log-level", Kind::String, "LEVEL", "debug, info (default), warn or error", str(&Options::log_level)},
        {"watch-buffer", Kind::Uint, "N", "events queued per WatchSessions stream before it is dropped (default 1024)",
         u32(&Options::watch_buffer, 1u << 20)},
        {"shutdown-grace", Kind::Duration, "DURATION", "how long in-flight calls may finish on shutdown (default 10s)",
         dur(&Options::shutdown_grace_ms)},
        {"shards", Kind::Uint, "N", "engine shards, a power of two (default 0: 4 x CPUs)", u32(&Options::shards, 4096)},
        {"tls-cert", Kind::String, "PATH",
         "PEM certificate (chain) of the gRPC port; with --tls-key, the port speaks TLS only. Re-read on SIGHUP",
         str(&Options::tls_cert)},
        {"tls-key", Kind::String, "PATH", "PEM private key of --tls-cert. Re-read on SIGHUP", str(&Options::tls_key)},
        {"client-ca", Kind::String, "PATH",
         "PEM CA bundle: mutual TLS, only clients with a certificate from it get in. Re-read on SIGHUP",
         str(&Options::client_ca)},
        {"max-batch", Kind::Uint, "N", "ids in one batch heartbeat / add-stats request (default 10000, at most 65536)",
         u32(&Options::max_batch, AFSM_BATCH_MAX)},
        {"max-message-bytes", Kind::Uint, "N",
         "largest request message accepted; larger is RESOURCE_EXHAUSTED (default 4194304)",
         u32(&Options::max_message_bytes, 1u << 30)},
        {"max-concurrent-streams", Kind::Uint, "N",
         "calls in flight on one client connection; more wait in the client (default 1024)",
         u32(&Options::max_concurrent_streams, UINT32_MAX >> 1)},
        {"max-watchers", Kind::Uint, "N",
         "WatchSessions streams open at once; more are RESOURCE_EXHAUSTED (default 1024)",
         u32(&Options::max_watchers, 1u << 20)},
        {"grpc-threads", Kind::Uint, "N",
         "threads serving gRPC calls, one completion queue each (default 0: one per two CPUs, at least one)",
         u32(&Options::grpc_threads, 256)},
        {"help", Kind::Flag, "", "print this help and exit", nullptr},
        {"version", Kind::Flag, "", "print the version and exit", nullptr},
    };
    return table;
}

const OptionSpec *find_spec(const std::string &name)
{
    for (const auto &s : specs())
        if (name == s.name)
            return &s;
    return nullptr;
}

void print_help()
{
    std::printf("usage: sessiond [--option value | --option=value]...\n\n"
                "The AetherFlow session daemon: session.SessionService over gRPC, one afsm engine inside.\n\n");
    for (const auto &s : specs()) {
        std::string left = std::string("--") + s.name;
        if (s.value_name[0] != '\0')
            left += std::string(" ") + s.value_name;
        std::printf("  %-40s %s\n", left.c_str(), s.help);
    }
    std::printf("\nDurations: 500ms, 30s, 5m, 2h, 1d (at most 3650d); a bare number is seconds.\n"
                "Signals: SIGTERM or SIGINT stop accepting, finish in-flight calls, end watch streams,\n"
                "write the snapshot and exit 0. SIGHUP re-reads --tls-cert, --tls-key and --client-ca\n"
                "(new handshakes use them within a second; established connections stay).\n");
}

bool apply(Options &o, const OptionSpec &s, const std::string &value, const std::string &origin)
{
    if (!s.set(o, value)) {
        std::string want = expected().empty() ? std::string() : " (expected " + expected() + ")";
        expected().clear();
        std::fprintf(stderr, "sessiond: %s: invalid value \"%s\" for %s%s\n", origin.c_str(), value.c_str(), s.name,
                     want.c_str());
        return false;
    }
    return true;
}

std::string trim(const std::string &s)
{
    size_t b = s.find_first_not_of(" \t\r");
    if (b == std::string::npos)
        return "";
    size_t e = s.find_last_not_of(" \t\r");
    return s.substr(b, e - b + 1);
}

bool load_config_file(const std::string &path, Options &o, const std::set<std::string> &from_flags)
{
    // A directory opens and reads as an empty file: the daemon would start
    // on defaults, every option of the real file ignored.
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        std::fprintf(stderr, "sessiond: config file %s is a directory (give the file in it)\n", path.c_str());
        return false;
    }
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "sessiond: cannot read config file %s\n", path.c_str());
        return false;
    }
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        std::string t = trim(line);
        if (t.empty() || t[0] == '#')
            continue;
        size_t eq = t.find('=');
        std::string key = trim(eq == std::string::npos ? t : t.substr(0, eq));
        std::string value = eq == std::string::npos ? "" : trim(t.substr(eq + 1));
        if (key.size() > 2 && key.compare(0, 2, "--") == 0)
            key = key.substr(2);
        std::string origin = path + ":" + std::to_string(lineno);
        const OptionSpec *s = find_spec(key);
        if (s == nullptr || s->set == nullptr) {
            std::fprintf(stderr, "sessiond: %s: unknown option \"%s\"\n", origin.c_str(), key.c_str());
            return false;
        }
        if (s->kind != Kind::Flag && eq == std::string::npos) {
            std::fprintf(stderr, "sessiond: %s: %s needs a value (key = value)\n", origin.c_str(), key.c_str());
            return false;
        }
        if (from_flags.count(key) != 0)
            continue; // the command line wins
        if (!apply(o, *s, value, origin))
            return false;
    }
    return true;
}

} // namespace

bool parse_duration_ms(const std::string &text, uint64_t *out_ms)
{
    size_t i = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9')
        ++i;
    if (i == 0 || i > 15)
        return false;
    uint64_t n = std::strtoull(text.substr(0, i).c_str(), nullptr, 10);
    std::string unit = text.substr(i);
    uint64_t mult;
    if (unit == "ms")
        mult = 1;
    else if (unit == "" || unit == "s")
        mult = 1000;
    else if (unit == "m")
        mult = 60ull * 1000;
    else if (unit == "h")
        mult = 3600ull * 1000;
    else if (unit == "d")
        mult = 86400ull * 1000;
    else
        return false;
    if (n > UINT64_MAX / mult)
        return false; // 15 digits of days would wrap around 2^64 ms
    *out_ms = n * mult;
    return true;
}

int parse_options(int argc, char **argv, Options *out)
{
    Options o;
    std::string config_path;
    std::vector<std::pair<const OptionSpec *, std::string>> given;
    std::set<std::string> from_flags;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "-h")
            arg = "--help";
        if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
            std::fprintf(stderr, "sessiond: unexpected argument \"%s\" (see --help)\n", arg.c_str());
            return -1;
        }
        std::string name = arg.substr(2), value;
        bool has_value = false;
        size_t eq = name.find('=');
        if (eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
            has_value = true;
        }
        const OptionSpec *s = find_spec(name);
        if (s == nullptr) {
            std::fprintf(stderr, "sessiond: unknown option --%s (see --help)\n", name.c_str());
            return -1;
        }
        if (name == "help") {
            print_help();
            return 1;
        }
        if (name == "version") {
            std::printf("sessiond %s (afsm %s)\n", AFSM_VERSION, afsm_version());
            return 1;
        }
        if (s->kind != Kind::Flag && !has_value) {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "sessiond: --%s needs a value\n", name.c_str());
                return -1;
            }
            value = argv[++i];
        }
        if (name == "config") {
            config_path = value;
            continue;
        }
        given.emplace_back(s, value);
        from_flags.insert(name);
    }
    if (!config_path.empty() && !load_config_file(config_path, o, from_flags))
        return -1;
    for (const auto &g : given)
        if (!apply(o, *g.first, g.second, std::string("--") + g.first->name))
            return -1;

    // gRPC takes a port past 65535 modulo 65536 and listens there; refuse it
    // here, with the flag named (unix: sockets are gRPC's to check).
    for (const auto &addr :
         {std::make_pair("listen", &o.listen), std::make_pair("metrics-listen", &o.metrics_listen)}) {
        std::string host;
        uint16_t port;
        const std::string &v = *addr.second;
        if (v.compare(0, 5, "unix:") == 0 || v.compare(0, 14, "unix-abstract:") == 0 ||
            (std::string(addr.first) == "metrics-listen" && (v == "off" || v.empty())))
            continue;
        if (!split_host_port(v, &host, &port)) {
            std::fprintf(stderr, "sessiond: --%s \"%s\" is not HOST:PORT (port 0..65535)\n", addr.first, v.c_str());
            return -1;
        }
    }
    if (o.limit_policy != "reject" && o.limit_policy != "evict-oldest") {
        std::fprintf(stderr, "sessiond: --limit-policy must be reject or evict-oldest, not \"%s\"\n",
                     o.limit_policy.c_str());
        return -1;
    }
    if (o.log_level != "debug" && o.log_level != "info" && o.log_level != "warn" && o.log_level != "error") {
        std::fprintf(stderr, "sessiond: --log-level must be debug, info, warn or error\n");
        return -1;
    }
    if (o.default_timeout_ms == 0 || o.cleanup_interval_ms == 0) {
        std::fprintf(stderr, "sessiond: --default-timeout and --cleanup-interval must be positive\n");
        return -1;
    }
    if (o.key_id == 0) {
        std::fprintf(stderr, "sessiond: --key-id must be 1..%d\n", AFSM_KEY_ID_MAX);
        return -1;
    }
    if (o.tls_cert.empty() != o.tls_key.empty()) {
        std::fprintf(stderr, "sessiond: --tls-cert and --tls-key go together (one is missing)\n");
        return -1;
    }
    if (!o.client_ca.empty() && o.tls_cert.empty()) {
        std::fprintf(stderr, "sessiond: --client-ca needs --tls-cert and --tls-key\n");
        return -1;
    }
    if (o.max_batch == 0 || o.max_message_bytes < 1024 || o.max_concurrent_streams == 0 || o.max_watchers == 0) {
        std::fprintf(stderr, "sessiond: --max-batch, --max-concurrent-streams and --max-watchers must be positive, "
                             "--max-message-bytes at least 1024\n");
        return -1;
    }
    if (o.watch_buffer == 0) {
        std::fprintf(stderr, "sessiond: --watch-buffer must be positive\n");
        return -1;
    }
    *out = o;
    return 0;
}

} // namespace sessiond
