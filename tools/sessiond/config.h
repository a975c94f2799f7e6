// config.h: sessiond's options, from flags and an optional key=value file.
#pragma once

#include <cstdint>
#include <string>

namespace sessiond
{

struct Options {
    std::string listen = "127.0.0.1:50051";
    std::string metrics_listen = "127.0.0.1:9464"; // empty or "off": no HTTP endpoint
    std::string store = "memory";
    // --store etcd (core/etcd/README.md).
    std::string etcd_endpoints; // comma-separated URLs
    std::string etcd_prefix;    // empty: "/afsm/"
    uint64_t etcd_dial_timeout_ms = 0;
    uint64_t etcd_request_timeout_ms = 0;
    std::string etcd_ca_file, etcd_cert_file, etcd_key_file;
    std::string etcd_user, etcd_password_file;
    std::string etcd_read_mode = "replica";
    uint64_t etcd_stats_flush_ms = 0;
    std::string server_addr; // reported in sessions; empty: the listen address
    uint64_t default_timeout_ms = 30ull * 60 * 1000;
    uint64_t cleanup_interval_ms = 1000;
    uint64_t idle_timeout_ms = 0;
    uint64_t close_linger_ms = 30ull * 1000;
    uint64_t max_lifetime_ms = 0;
    uint32_t max_sessions_per_user = 0;
    std::string limit_policy = "reject";
    std::string key_file;
    uint32_t key_id = 1;
    std::string snapshot;
    uint64_t snapshot_interval_ms = 60ull * 1000;
    bool start_empty_on_corrupt_snapshot = false;
    std::string log_level = "info";
    uint32_t watch_buffer = 1024;
    uint64_t shutdown_grace_ms = 10ull * 1000;
    uint32_t shards = 0;
    // TLS on the gRPC port: both or neither; client_ca makes it mutual.
    std::string tls_cert;
    std::string tls_key;
    std::string client_ca;
    // Limits on what one client may ask for.
    uint32_t max_batch = 10000;             // ids in one batch request
    uint32_t max_message_bytes = 4u << 20;  // one request message
    uint32_t max_concurrent_streams = 1024; // calls in flight on one connection
    uint32_t max_watchers = 1024;           // WatchSessions streams in all
    uint32_t grpc_threads = 0;              // completion-queue threads; 0: one per two CPUs
};

// Parses argv (and the file named by --config, whose keys are the flag
// names without "--"; flags given on the command line win). Returns 0 to
// run, 1 after printing --help or --version (exit 0), -1 after printing an
// error to stderr (exit 2).
int parse_options(int argc, char **argv, Options *out);

// "1500ms", "30s", "5m", "2h", "1d"; a bare number is seconds.
bool parse_duration_ms(const std::string &text, uint64_t *out_ms);

} // namespace sessiond
