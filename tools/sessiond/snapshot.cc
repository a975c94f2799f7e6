// snapshot.cc: writing and loading snapshots.
//
// A record (little-endian):
//   session_id[16] connection_id[16] state u32 ip_family u8 ip[16] port u16
//   user_id: len u32 + bytes | server_addr: len u32 + bytes
//   created_at_ns i64 | last_active_at_ns i64 | expires_at_ns i64 | timeout_ms u64
//   stats: 5 x u64 + rtt u32 | token_generation u32
//   metadata count u32, then per entry: key len u32 + bytes, value len u32 + bytes
//
// Consistency: the engine is listed page by page with its cursor while it
// keeps serving, so a snapshot is per-session consistent, not one instant of
// the whole engine. On shutdown the gRPC server has stopped first, so that
// final snapshot is exact.
#include "snapshot.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "jsonlog.h"

namespace sessiond
{
namespace
{

constexpr char kMagic[8] = {'A', 'F', 'S', 'M', 'S', 'N', 'A', 'P'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kHeaderBytes = 48;
// A sanity bound on one string or map in a record, far above the engine's.
constexpr uint32_t kFieldMax = 1u << 16;
// The smallest record (empty strings, no metadata): a header's session count
// above payload bytes / this cannot be true, whatever its checksums say.
constexpr uint64_t kMinRecordBytes = 16 + 16 + 4 + 1 + 16 + 2 + 4 + 4 + 4 * 8 + 5 * 8 + 4 + 4 + 4;

class Writer
{
  public:
    void u8(uint8_t v)
    {
        buf.push_back(v);
    }
    void u16(uint16_t v)
    {
        le(v, 2);
    }
    void u32(uint32_t v)
    {
        le(v, 4);
    }
    void u64(uint64_t v)
    {
        le(v, 8);
    }
    void i64(int64_t v)
    {
        le(static_cast<uint64_t>(v), 8);
    }
    void bytes(const void *p, size_t n)
    {
        const uint8_t *b = static_cast<const uint8_t *>(p);
        buf.insert(buf.end(), b, b + n);
    }
    void str(const char *p, size_t n)
    {
        u32(static_cast<uint32_t>(n));
        bytes(p, n);
    }
    std::vector<uint8_t> buf;

  private:
    void le(uint64_t v, int n)
    {
        for (int i = 0; i < n; ++i)
            buf.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
};

class Reader
{
  public:
    Reader(const uint8_t *p, size_t n) : p_(p), end_(p + n)
    {
    }
    bool ok() const
    {
        return ok_;
    }
    bool done() const
    {
        return p_ == end_;
    }
    size_t left() const
    {
        return static_cast<size_t>(end_ - p_);
    }
    uint8_t u8()
    {
        return static_cast<uint8_t>(le(1));
    }
    uint16_t u16()
    {
        return static_cast<uint16_t>(le(2));
    }
    uint32_t u32()
    {
        return static_cast<uint32_t>(le(4));
    }
    uint64_t u64()
    {
        return le(8);
    }
    int64_t i64()
    {
        return static_cast<int64_t>(le(8));
    }
    void bytes(void *out, size_t n)
    {
        if (!need(n)) {
            std::memset(out, 0, n);
            return;
        }
        std::memcpy(out, p_, n);
        p_ += n;
    }
    std::string str()
    {
        uint32_t n = u32();
        if (n > kFieldMax || !need(n)) {
            ok_ = false;
            return std::string();
        }
        std::string s(reinterpret_cast<const char *>(p_), n);
        p_ += n;
        return s;
    }

  private:
    bool need(size_t n)
    {
        if (!ok_ || static_cast<size_t>(end_ - p_) < n) {
            ok_ = false;
            return false;
        }
        return true;
    }
    uint64_t le(int n)
    {
        if (!need(static_cast<size_t>(n)))
            return 0;
        uint64_t v = 0;
        for (int i = 0; i < n; ++i)
            v |= static_cast<uint64_t>(p_[i]) << (8 * i);
        p_ += n;
        return v;
    }
    const uint8_t *p_;
    const uint8_t *end_;
    bool ok_ = true;
};

uint32_t crc32_of(const uint8_t *p, size_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    while (n > 0) { // zlib takes uInt lengths
        uInt chunk = n > (1u << 30) ? (1u << 30) : static_cast<uInt>(n);
        crc = crc32(crc, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return static_cast<uint32_t>(crc);
}

int64_t wall_now_ns()
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

std::string errno_text(const std::string &what)
{
    return what + ": " + std::strerror(errno);
}

bool write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
    return true;
}

std::string dir_of(const std::string &path)
{
    size_t slash = path.rfind('/');
    if (slash == std::string::npos)
        return ".";
    if (slash == 0)
        return "/";
    return path.substr(0, slash);
}

// Appends one session's record; false if it vanished meanwhile.
bool append_record(afsm_engine *engine, const afsm_session_info &s, Writer &w, std::vector<char> &md)
{
    size_t needed = 0, count = 0;
    if (s.metadata_count > 0) {
        afsm_status st = AFSM_EBUFFER;
        for (int attempt = 0; attempt < 4 && st == AFSM_EBUFFER; ++attempt) {
            if (md.size() < s.metadata_bytes + 64u)
                md.resize(s.metadata_bytes + 64u);
            st = afsm_session_get_metadata(engine, &s.session_id, md.data(), md.size(), &needed, &count);
            if (st == AFSM_EBUFFER)
                md.resize(needed);
        }
        if (st != AFSM_OK)
            return false;
    }
    w.bytes(s.session_id.bytes, 16);
    w.bytes(s.connection_id.bytes, 16);
    w.u32(s.state);
    w.u8(s.client_ip.family);
    w.bytes(s.client_ip.bytes, 16);
    w.u16(s.client_port);
    w.str(s.user_id, s.user_id_len);
    w.str(s.server_addr, s.server_addr_len);
    w.i64(s.created_at_ns);
    w.i64(s.last_active_at_ns);
    w.i64(s.expires_at_ns);
    w.u64(s.timeout_ms);
    w.u64(s.stats.packets_sent);
    w.u64(s.stats.packets_received);
    w.u64(s.stats.bytes_sent);
    w.u64(s.stats.bytes_received);
    w.u64(s.stats.retransmissions);
    w.u32(s.stats.current_rtt_ms);
    w.u32(s.token_generation);
    w.u32(static_cast<uint32_t>(count));
    const char *p = md.data();
    for (size_t i = 0; i < count; ++i) {
        size_t klen = std::strlen(p);
        const char *v = p + klen + 1;
        size_t vlen = std::strlen(v);
        w.str(p, klen);
        w.str(v, vlen);
        p = v + vlen + 1;
    }
    return true;
}

} // namespace

bool snapshot_write(afsm_engine *engine, const std::string &path, SnapshotStats *stats, std::string *error)
{
    auto t0 = std::chrono::steady_clock::now();
    std::string tmp = path + ".tmp." + std::to_string(getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        *error = errno_text("creating " + tmp);
        return false;
    }
    auto fail = [&](const std::string &why) {
        *error = why;
        ::close(fd);
        ::unlink(tmp.c_str());
        return false;
    };

    // Records go to the file as they are produced, in chunks of about
    // kChunkBytes, behind room left for the header; the header (count,
    // length, CRC of what was written) goes in last. Memory stays one chunk
    // plus one list page, whatever the session count. Until the rename the
    // file is PATH.tmp.<pid>: a crash leaves PATH as it was.
    constexpr size_t kChunkBytes = 1 << 16;
    const uint8_t zero_header[kHeaderBytes] = {};
    if (!write_all(fd, zero_header, sizeof zero_header))
        return fail(errno_text("writing " + tmp));
    Writer w;
    w.buf.reserve(kChunkBytes + 8192);
    uint64_t payload_bytes = 0;
    uLong payload_crc = crc32(0L, Z_NULL, 0);
    auto flush = [&]() {
        payload_crc =
            crc32_combine(payload_crc, crc32_of(w.buf.data(), w.buf.size()), static_cast<z_off_t>(w.buf.size()));
        if (!write_all(fd, w.buf.data(), w.buf.size()))
            return false;
        payload_bytes += w.buf.size();
        w.buf.clear();
        return true;
    };

    uint64_t sessions = 0;
    std::vector<afsm_session_info> page(AFSM_LIST_LIMIT_MAX);
    std::vector<char> md;
    afsm_list_filter f{};
    afsm_list_filter_init(&f, AFSM_LIST_FILTER_VERSION);
    f.limit = AFSM_LIST_LIMIT_MAX;
    for (;;) {
        for (auto &p : page)
            p.version = AFSM_SESSION_INFO_VERSION;
        size_t count = 0;
        uint64_t total = 0;
        afsm_uuid next;
        afsm_status s = afsm_session_list(engine, &f, page.data(), page.size(), &count, &total, &next);
        if (s != AFSM_OK)
            return fail(std::string("listing sessions: ") + afsm_strerror(s));
        for (size_t i = 0; i < count; ++i) {
            if (page[i].state == AFSM_STATE_CLOSED)
                continue; // closed sessions are on their way out
            if (append_record(engine, page[i], w, md))
                ++sessions;
            if (w.buf.size() >= kChunkBytes && !flush())
                return fail(errno_text("writing " + tmp));
        }
        bool more = false;
        for (uint8_t b : next.bytes)
            more |= b != 0;
        if (!more || count == 0)
            break;
        f.cursor = next;
    }
    if (!flush())
        return fail(errno_text("writing " + tmp));

    Writer h;
    h.bytes(kMagic, sizeof kMagic);
    h.u32(kFormatVersion);
    h.u32(0);
    h.i64(wall_now_ns());
    h.u64(sessions);
    h.u64(payload_bytes);
    h.u32(static_cast<uint32_t>(payload_crc));
    h.u32(crc32_of(h.buf.data(), h.buf.size()));
    if (::pwrite(fd, h.buf.data(), h.buf.size(), 0) != static_cast<ssize_t>(h.buf.size()))
        return fail(errno_text("writing the header of " + tmp));
    if (::fsync(fd) != 0)
        return fail(errno_text("fsync " + tmp));
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        *error = errno_text("renaming " + tmp + " to " + path);
        ::unlink(tmp.c_str());
        return false;
    }
    // The rename is durable only once the directory is.
    int dfd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (::fsync(dfd) != 0)
            log_line(AFSM_LOG_WARN, "fsync of the snapshot directory failed", {{"path", path}});
        ::close(dfd);
    }
    stats->sessions = sessions;
    stats->bytes = kHeaderBytes + payload_bytes;
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return true;
}

bool snapshot_prepare(const std::string &path, std::string *error)
{
    // One daemon per snapshot file, held by a lock on PATH.lock for the life
    // of the process (the descriptor is never closed; the kernel releases the
    // lock when the process ends, however it ends).
    std::string lock = path + ".lock";
    int lfd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0) {
        *error = errno_text("cannot create " + lock + " next to the snapshot " + path);
        return false;
    }
    if (::flock(lfd, LOCK_EX | LOCK_NB) != 0) {
        *error = errno == EWOULDBLOCK ? "another sessiond is using the snapshot " + path + " (" + lock + " is locked)"
                                      : errno_text("locking " + lock);
        ::close(lfd);
        return false;
    }

    std::string probe = path + ".tmp." + std::to_string(getpid());
    int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        *error = errno_text("cannot create a file next to the snapshot " + path + " (" + probe + ")");
        return false;
    }
    ::close(fd);
    ::unlink(probe.c_str());

    std::string dir = dir_of(path);
    size_t slash = path.rfind('/');
    std::string prefix = (slash == std::string::npos ? path : path.substr(slash + 1)) + ".tmp.";
    DIR *d = ::opendir(dir.c_str());
    if (d == nullptr)
        return true; // created a file there but cannot list it: nothing to clean up
    while (struct dirent *e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0)
            continue;
        std::string digits = name.substr(prefix.size());
        if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos)
            continue;
        pid_t pid = static_cast<pid_t>(std::stol(digits));
        if (pid <= 0 || pid == getpid() || ::kill(pid, 0) == 0 || errno != ESRCH)
            continue; // a live process's write in progress (EPERM: alive, another user)
        std::string stale = dir + "/" + name;
        if (::unlink(stale.c_str()) == 0)
            log_line(AFSM_LOG_WARN, "removed a snapshot file left by a crash mid-write", {{"path", stale}});
    }
    ::closedir(d);
    return true;
}

LoadResult snapshot_load(afsm_engine *engine, const std::string &path, SnapshotStats *stats, std::string *error)
{
    auto t0 = std::chrono::steady_clock::now();
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return LoadResult::Missing;
        *error = errno_text("opening " + path);
        return LoadResult::Failed;
    }
    std::vector<uint8_t> data;
    uint8_t chunk[65536];
    for (;;) {
        ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *error = errno_text("reading " + path);
            ::close(fd);
            return LoadResult::Failed;
        }
        if (n == 0)
            break;
        data.insert(data.end(), chunk, chunk + n);
    }
    ::close(fd);
    stats->bytes = data.size();

    if (data.size() < kHeaderBytes) {
        *error = path + ": truncated (" + std::to_string(data.size()) + " bytes, shorter than the header)";
        return LoadResult::Corrupt;
    }
    if (std::memcmp(data.data(), kMagic, sizeof kMagic) != 0) {
        *error = path + ": not a sessiond snapshot (bad magic)";
        return LoadResult::Corrupt;
    }
    Reader h(data.data() + sizeof kMagic, kHeaderBytes - sizeof kMagic);
    uint32_t version = h.u32();
    h.u32(); // reserved
    h.i64(); // written_at_ns
    uint64_t count = h.u64();
    uint64_t payload_len = h.u64();
    uint32_t payload_crc = h.u32();
    uint32_t header_crc = h.u32();
    if (header_crc != crc32_of(data.data(), kHeaderBytes - 4)) {
        *error = path + ": header checksum mismatch";
        return LoadResult::Corrupt;
    }
    if (version != kFormatVersion) {
        *error = path + ": snapshot format version " + std::to_string(version) + " is not supported (this is " +
                 std::to_string(kFormatVersion) + ")";
        return LoadResult::Corrupt;
    }
    if (payload_len != data.size() - kHeaderBytes) {
        *error = path + ": " + (payload_len > data.size() - kHeaderBytes ? "truncated" : "trailing bytes") +
                 ": header says " + std::to_string(payload_len) + " payload bytes, file has " +
                 std::to_string(data.size() - kHeaderBytes);
        return LoadResult::Corrupt;
    }
    const uint8_t *payload = data.data() + kHeaderBytes;
    if (payload_crc != crc32_of(payload, payload_len)) {
        *error = path + ": payload checksum mismatch";
        return LoadResult::Corrupt;
    }

    // Parse everything before restoring anything, so a bad record cannot
    // leave half a snapshot in the engine.
    struct Record {
        afsm_session_info info;
        std::vector<std::pair<std::string, std::string>> md;
    };
    // The count is the file's claim, not a size to allocate: records are
    // kept as they are read, and a count the payload cannot hold is refused
    // before anything is.
    const std::string says = path + ": header says " + std::to_string(count) + " sessions, but ";
    if (count > payload_len / kMinRecordBytes) {
        *error = says + "its " + std::to_string(payload_len) + " payload bytes hold at most " +
                 std::to_string(payload_len / kMinRecordBytes);
        return LoadResult::Corrupt;
    }
    std::vector<Record> records;
    Reader r(payload, payload_len);
    for (uint64_t i = 0; i < count && r.ok(); ++i) {
        Record rec;
        rec.info = afsm_session_info{};
        afsm_session_info &s = rec.info;
        s.version = AFSM_SESSION_INFO_VERSION;
        r.bytes(s.session_id.bytes, 16);
        r.bytes(s.connection_id.bytes, 16);
        s.state = r.u32();
        s.client_ip.family = r.u8();
        r.bytes(s.client_ip.bytes, 16);
        s.client_port = r.u16();
        std::string user = r.str();
        std::string addr = r.str();
        if (user.size() > AFSM_USER_ID_MAX || addr.size() > AFSM_SERVER_ADDR_MAX) {
            *error = path + ": record " + std::to_string(i) + " has an over-long string";
            return LoadResult::Corrupt;
        }
        std::memcpy(s.user_id, user.data(), user.size());
        s.user_id_len = static_cast<uint32_t>(user.size());
        std::memcpy(s.server_addr, addr.data(), addr.size());
        s.server_addr_len = static_cast<uint32_t>(addr.size());
        s.created_at_ns = r.i64();
        s.last_active_at_ns = r.i64();
        s.expires_at_ns = r.i64();
        s.timeout_ms = r.u64();
        s.stats.packets_sent = r.u64();
        s.stats.packets_received = r.u64();
        s.stats.bytes_sent = r.u64();
        s.stats.bytes_received = r.u64();
        s.stats.retransmissions = r.u64();
        s.stats.current_rtt_ms = r.u32();
        s.token_generation = r.u32();
        uint32_t n = r.u32();
        if (n > AFSM_METADATA_KEYS_MAX) {
            *error = path + ": record " + std::to_string(i) + " has " + std::to_string(n) + " metadata keys";
            return LoadResult::Corrupt;
        }
        for (uint32_t k = 0; k < n && r.ok(); ++k) {
            std::string key = r.str();
            std::string value = r.str();
            rec.md.emplace_back(std::move(key), std::move(value));
        }
        s.metadata_count = n;
        records.push_back(std::move(rec));
    }
    if (!r.ok()) {
        *error = says + "the payload ends in record " + std::to_string(records.size()) + " of them";
        return LoadResult::Corrupt;
    }
    if (!r.done()) {
        *error = says + std::to_string(r.left()) + " payload bytes remain after them";
        return LoadResult::Corrupt;
    }
    stats->sessions = count;

    for (const Record &rec : records) {
        std::vector<afsm_kv> kvs;
        for (const auto &e : rec.md)
            kvs.push_back(afsm_kv{e.first.data(), e.first.size(), e.second.data(), e.second.size()});
        afsm_status s = afsm_session_restore(engine, &rec.info, kvs.data(), kvs.size());
        char id[AFSM_UUID_STRING_SIZE];
        afsm_uuid_format(&rec.info.session_id, id);
        if (s == AFSM_OK) {
            ++stats->restored;
        } else if (s == AFSM_EEXPIRED) {
            ++stats->expired;
        } else if (s == AFSM_EEXISTS || s == AFSM_ELIMIT || s == AFSM_EINVAL || s == AFSM_ETOOLONG || s == AFSM_EUUID) {
            // One bad session (the limits may have been lowered since) must
            // not keep every other session from coming back.
            ++stats->skipped;
            log_line(AFSM_LOG_WARN, "snapshot session skipped", {{"session_id", id}, {"error", afsm_strerror(s)}});
        } else {
            *error =
                std::string("restoring session ") + id + ": " + afsm_strerror(s) + " (" + afsm_status_name(s) + ")";
            return LoadResult::Failed;
        }
    }
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return LoadResult::Loaded;
}

} // namespace sessiond
