// tls.h: the gRPC port's TLS credentials and their reload on SIGHUP.
//
// grpc++ 1.51 (Debian bookworm) has no provider whose contents the program
// can replace: StaticDataCertificateProvider is fixed at build time and
// FileWatcherCertificateProvider re-reads files on a timer. So sessiond
// hands gRPC a FileWatcherCertificateProvider over a private directory that
// only sessiond writes (mode 0700, under $RUNTIME_DIRECTORY or $TMPDIR):
// at start and on every SIGHUP it reads the operator's --tls-cert,
// --tls-key and --client-ca, checks them with OpenSSL (PEM parses, the key
// matches the certificate), and only then publishes them as a new
// generation directory behind a symlink swapped with one rename(2). The
// watcher picks the new generation up within kRefreshSeconds; established
// connections keep their session, new handshakes get the new certificate.
// A bad set of files is refused with a log line and the old one stays.
//
// Threads: setup() and reload() run on main only; gRPC's watcher thread
// only reads the published files.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

namespace sessiond
{

class TlsFiles
{
  public:
    // How often gRPC's watcher re-reads the published directory.
    static constexpr unsigned kRefreshSeconds = 1;

    TlsFiles(std::string cert_path, std::string key_path, std::string client_ca_path);
    ~TlsFiles(); // removes the private directory
    TlsFiles(const TlsFiles &) = delete;
    TlsFiles &operator=(const TlsFiles &) = delete;

    // Publishes the first generation and builds the server credentials
    // (mutual TLS when a client CA was given). nullptr and *error on failure.
    std::shared_ptr<grpc::ServerCredentials> setup(std::string *error);
    // Re-reads and checks the operator's files; publishes them if they are
    // good. False and *error otherwise (the previous ones stay in use).
    bool reload(std::string *error);
    // "subject, expires ..." of the certificate published last.
    const std::string &describe() const
    {
        return description_;
    }

  private:
    bool publish(std::string *error);

    const std::string cert_path_, key_path_, ca_path_;
    std::string dir_;         // the private directory
    std::string description_; // of the published certificate
    unsigned generation_ = 0;
};

} // namespace sessiond
