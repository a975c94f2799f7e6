// metrics_http.h: /metrics (Prometheus text) and /healthz over libmicrohttpd.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

struct MHD_Daemon;

namespace sessiond
{

class MetricsServer
{
  public:
    // render: the whole /metrics body. healthy: /healthz answers 200 or 503.
    MetricsServer(std::function<std::string()> render, std::function<bool()> healthy)
        : render_(std::move(render)), healthy_(std::move(healthy))
    {
    }
    ~MetricsServer()
    {
        stop();
    }
    // listen is HOST:PORT with a numeric IPv4 or [IPv6] host; port 0 picks one.
    bool start(const std::string &listen, std::string *error);
    void stop();
    uint16_t port() const
    {
        return port_;
    }

    // Internal: libmicrohttpd's request handler.
    std::string render() const
    {
        return render_();
    }
    bool healthy() const
    {
        return healthy_();
    }

  private:
    std::function<std::string()> render_;
    std::function<bool()> healthy_;
    MHD_Daemon *daemon_ = nullptr;
    uint16_t port_ = 0;
};

// Splits "host:port" / "[v6]:port". False if malformed.
bool split_host_port(const std::string &addr, std::string *host, uint16_t *port);

} // namespace sessiond
