// metrics_http.cc: the HTTP side door. libmicrohttpd runs its own polling
// thread; each request renders the engine's counters afresh (the engine sums
// its per-shard counters on read, so a scrape costs one pass over the shards).
#include "metrics_http.h"

#include <cstdlib>
#include <cstring>

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

namespace sessiond
{
namespace
{

MHD_Result respond(MHD_Connection *conn, unsigned int code, const std::string &body, const char *type)
{
    MHD_Response *r =
        MHD_create_response_from_buffer(body.size(), const_cast<char *>(body.data()), MHD_RESPMEM_MUST_COPY);
    if (r == nullptr)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

MHD_Result handle(void *cls, MHD_Connection *conn, const char *url, const char *method, const char *, const char *,
                  size_t *, void **)
{
    auto *self = static_cast<MetricsServer *>(cls);
    if (std::strcmp(method, "GET") != 0 && std::strcmp(method, "HEAD") != 0)
        return respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n", "text/plain");
    if (std::strcmp(url, "/metrics") == 0)
        return respond(conn, MHD_HTTP_OK, self->render(), "text/plain; version=0.0.4; charset=utf-8");
    if (std::strcmp(url, "/healthz") == 0) {
        bool ok = self->healthy();
        return respond(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, ok ? "ok\n" : "shutting down\n",
                       "text/plain");
    }
    return respond(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics or /healthz\n", "text/plain");
}

} // namespace

bool split_host_port(const std::string &addr, std::string *host, uint16_t *port)
{
    size_t colon = addr.rfind(':');
    if (colon == std::string::npos || colon + 1 >= addr.size())
        return false;
    std::string h = addr.substr(0, colon);
    if (h.size() >= 2 && h.front() == '[' && h.back() == ']')
        h = h.substr(1, h.size() - 2);
    std::string p = addr.substr(colon + 1);
    if (p.size() > 5)
        return false;
    for (char c : p)
        if (c < '0' || c > '9')
            return false;
    long v = std::strtol(p.c_str(), nullptr, 10);
    if (v > 65535)
        return false;
    *host = h;
    *port = static_cast<uint16_t>(v);
    return true;
}

bool MetricsServer::start(const std::string &listen, std::string *error)
{
    std::string host;
    uint16_t port;
    if (!split_host_port(listen, &host, &port)) {
        *error = "--metrics-listen \"" + listen + "\" is not HOST:PORT";
        return false;
    }
    sockaddr_storage ss{};
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (inet_pton(AF_INET, host.c_str(), &reinterpret_cast<sockaddr_in *>(&ss)->sin_addr) == 1) {
        auto *sin = reinterpret_cast<sockaddr_in *>(&ss);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
    } else if (inet_pton(AF_INET6, host.c_str(), &reinterpret_cast<sockaddr_in6 *>(&ss)->sin6_addr) == 1) {
        auto *sin6 = reinterpret_cast<sockaddr_in6 *>(&ss);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        flags |= MHD_USE_IPv6;
    } else {
        *error = "--metrics-listen host \"" + host + "\" must be a numeric IPv4 or IPv6 address";
        return false;
    }
    daemon_ = MHD_start_daemon(flags, port, nullptr, nullptr, &handle, this, MHD_OPTION_SOCK_ADDR,
                               reinterpret_cast<sockaddr *>(&ss), MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (daemon_ == nullptr) {
        *error = "cannot listen on " + listen + " for /metrics (address in use?)";
        return false;
    }
    const MHD_DaemonInfo *info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    port_ = info != nullptr ? info->port : port;
    return true;
}

void MetricsServer::stop()
{
    if (daemon_ != nullptr) {
        MHD_stop_daemon(daemon_);
        daemon_ = nullptr;
    }
}

} // namespace sessiond
