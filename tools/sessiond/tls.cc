// tls.cc: see tls.h for why certificates pass through a private directory.
//
// Layout of the private directory (dir_):
//   gen-<N>/cert.pem, gen-<N>/key.pem, gen-<N>/ca.pem   one published set
//   current -> gen-<N>                                   swapped by rename(2)
// gRPC's watcher opens current/key.pem and current/cert.pem one after the
// other; a swap between the two opens can hand it a mixed pair for one
// refresh period, after which it reads the new pair (its contents differ
// from the mixed one, so it updates again). The previous generation is kept
// until the next publish so that such a reader never finds a file missing.
#include "tls.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

namespace sessiond
{
namespace
{

bool read_file(const std::string &path, std::string *out, std::string *error)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        *error = path + ": " + std::strerror(errno);
        return false;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    *out = ss.str();
    if (out->empty()) {
        *error = path + ": empty file";
        return false;
    }
    return true;
}

std::string openssl_error()
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0)
        return "no PEM data";
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

// Writes data to path (mode 0600), fsync'ed; false and *error on failure.
bool write_private(const std::string &path, const std::string &data, std::string *error)
{
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        *error = path + ": " + std::strerror(errno);
        return false;
    }
    size_t off = 0;
    while (off < data.size()) {
        ssize_t n = ::write(fd, data.data() + off, data.size() - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *error = path + ": " + std::strerror(errno);
            ::close(fd);
            return false;
        }
        off += static_cast<size_t>(n);
    }
    ::close(fd);
    return true;
}

void remove_generation(const std::string &dir)
{
    for (const char *f : {"cert.pem", "key.pem", "ca.pem"})
        ::unlink((dir + "/" + f).c_str());
    ::rmdir(dir.c_str());
}

struct X509Deleter {
    void operator()(X509 *x) const
    {
        X509_free(x);
    }
};
struct KeyDeleter {
    void operator()(EVP_PKEY *k) const
    {
        EVP_PKEY_free(k);
    }
};
struct BioDeleter {
    void operator()(BIO *b) const
    {
        BIO_free(b);
    }
};

std::unique_ptr<X509, X509Deleter> first_cert(const std::string &pem)
{
    std::unique_ptr<BIO, BioDeleter> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    return std::unique_ptr<X509, X509Deleter>(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

std::string asn1_time_text(const ASN1_TIME *t)
{
    std::unique_ptr<BIO, BioDeleter> bio(BIO_new(BIO_s_mem()));
    ASN1_TIME_print(bio.get(), t);
    char *data = nullptr;
    long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, n > 0 ? static_cast<size_t>(n) : 0);
}

} // namespace

TlsFiles::TlsFiles(std::string cert_path, std::string key_path, std::string client_ca_path)
    : cert_path_(std::move(cert_path)), key_path_(std::move(key_path)), ca_path_(std::move(client_ca_path))
{
}

TlsFiles::~TlsFiles()
{
    if (dir_.empty())
        return;
    ::unlink((dir_ + "/current").c_str());
    ::unlink((dir_ + "/current.tmp").c_str());
    for (unsigned g = generation_ >= 2 ? generation_ - 1 : 1; g <= generation_; ++g)
        remove_generation(dir_ + "/gen-" + std::to_string(g));
    ::rmdir(dir_.c_str());
}

bool TlsFiles::publish(std::string *error)
{
    std::string cert, key, ca;
    if (!read_file(cert_path_, &cert, error) || !read_file(key_path_, &key, error))
        return false;
    if (!ca_path_.empty() && !read_file(ca_path_, &ca, error))
        return false;

    // Check before publishing: gRPC would only log a bad file on its own
    // thread and keep failing handshakes.
    std::unique_ptr<X509, X509Deleter> x = first_cert(cert);
    if (!x) {
        *error = "--tls-cert " + cert_path_ + ": not a PEM certificate (" + openssl_error() + ")";
        return false;
    }
    std::unique_ptr<BIO, BioDeleter> kbio(BIO_new_mem_buf(key.data(), static_cast<int>(key.size())));
    std::unique_ptr<EVP_PKEY, KeyDeleter> k(PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr));
    if (!k) {
        *error = "--tls-key " + key_path_ + ": not a PEM private key (" + openssl_error() + ")";
        return false;
    }
    if (X509_check_private_key(x.get(), k.get()) != 1) {
        ERR_clear_error();
        *error = "--tls-key " + key_path_ + " does not match the certificate in --tls-cert " + cert_path_;
        return false;
    }
    // Published, an expired (or not yet valid) certificate would fail every
    // new handshake until the next good reload: keep the one in use.
    if (X509_cmp_current_time(X509_get0_notAfter(x.get())) <= 0) {
        *error = "--tls-cert " + cert_path_ + ": expired " + asn1_time_text(X509_get0_notAfter(x.get()));
        return false;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x.get())) > 0) {
        *error = "--tls-cert " + cert_path_ + ": not valid before " + asn1_time_text(X509_get0_notBefore(x.get()));
        return false;
    }
    if (!ca_path_.empty() && !first_cert(ca)) {
        *error = "--client-ca " + ca_path_ + ": no PEM certificate in it (" + openssl_error() + ")";
        return false;
    }

    unsigned next = generation_ + 1;
    std::string gen = dir_ + "/gen-" + std::to_string(next);
    if (::mkdir(gen.c_str(), 0700) != 0 && errno != EEXIST) {
        *error = gen + ": " + std::strerror(errno);
        return false;
    }
    if (!write_private(gen + "/cert.pem", cert, error) || !write_private(gen + "/key.pem", key, error) ||
        (!ca_path_.empty() && !write_private(gen + "/ca.pem", ca, error))) {
        remove_generation(gen);
        return false;
    }
    std::string tmp = dir_ + "/current.tmp";
    ::unlink(tmp.c_str());
    if (::symlink(("gen-" + std::to_string(next)).c_str(), tmp.c_str()) != 0 ||
        ::rename(tmp.c_str(), (dir_ + "/current").c_str()) != 0) {
        *error = dir_ + "/current: " + std::strerror(errno);
        remove_generation(gen);
        return false;
    }
    if (next >= 3)
        remove_generation(dir_ + "/gen-" + std::to_string(next - 2));
    generation_ = next;

    char subject[256];
    X509_NAME_oneline(X509_get_subject_name(x.get()), subject, sizeof subject);
    description_ = std::string(subject) + ", expires " + asn1_time_text(X509_get0_notAfter(x.get()));
    return true;
}

std::shared_ptr<grpc::ServerCredentials> TlsFiles::setup(std::string *error)
{
    const char *base = std::getenv("RUNTIME_DIRECTORY"); // systemd's RuntimeDirectory=
    if (base == nullptr || base[0] == '\0' || std::strchr(base, ':') != nullptr)
        base = std::getenv("TMPDIR");
    std::string templ = std::string(base != nullptr && base[0] != '\0' ? base : "/tmp") + "/sessiond-tls-XXXXXX";
    if (::mkdtemp(&templ[0]) == nullptr) { // mode 0700
        *error = templ + ": " + std::strerror(errno);
        return nullptr;
    }
    dir_ = templ;
    if (!publish(error))
        return nullptr;

    std::string cur = dir_ + "/current/";
    std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
    if (ca_path_.empty())
        provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            cur + "key.pem", cur + "cert.pem", kRefreshSeconds);
    else
        provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            cur + "key.pem", cur + "cert.pem", cur + "ca.pem", kRefreshSeconds);
    grpc::experimental::TlsServerCredentialsOptions options(provider);
    options.watch_identity_key_cert_pairs();
    if (ca_path_.empty()) {
        options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    } else {
        options.watch_root_certs();
        options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    }
    return grpc::experimental::TlsServerCredentials(options);
}

bool TlsFiles::reload(std::string *error)
{
    return publish(error);
}

} // namespace sessiond
