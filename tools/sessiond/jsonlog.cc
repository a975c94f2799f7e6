// jsonlog.cc: JSON-line logging. A line is built in full, then written with
// one write(2) under a mutex, so lines from gRPC threads, the reaper and the
// snapshot thread never interleave.
#include "jsonlog.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>

#include <google/protobuf/stubs/logging.h>
#include <grpc/support/log.h>
#include <unistd.h>

namespace sessiond
{
namespace
{

std::atomic<int> g_level{AFSM_LOG_INFO};
std::mutex g_write_mutex;

const char *level_name(int level)
{
    if (level >= AFSM_LOG_ERROR)
        return "error";
    if (level >= AFSM_LOG_WARN)
        return "warn";
    if (level >= AFSM_LOG_INFO)
        return "info";
    return "debug";
}

std::string now_rfc3339()
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char buf[40];
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1000000);
    return buf;
}

void emit(std::string &line)
{
    line += "}\n";
    std::lock_guard<std::mutex> lock(g_write_mutex);
    const char *p = line.data();
    size_t left = line.size();
    while (left > 0) {
        ssize_t n = ::write(STDERR_FILENO, p, left);
        if (n <= 0)
            break; // nowhere to report a failing stderr
        p += n;
        left -= static_cast<size_t>(n);
    }
}

std::string head(int level, const std::string &msg)
{
    std::string line;
    line.reserve(256);
    line += "{\"time\":\"";
    line += now_rfc3339();
    line += "\",\"level\":\"";
    line += level_name(level);
    line += "\",\"msg\":\"";
    line += json_escape(msg);
    line += '"';
    return line;
}

void add_field(std::string &line, const std::string &key, const std::string &value)
{
    line += ",\"";
    line += json_escape(key);
    line += "\":\"";
    line += json_escape(value);
    line += '"';
}

void log_library(int level, const char *source, const char *file, int line_no, const std::string &msg)
{
    if (!log_enabled(level))
        return;
    std::string line = head(level, msg);
    add_field(line, "source", source);
    add_field(line, "file", file != nullptr ? file : "");
    add_field(line, "line", std::to_string(line_no));
    emit(line);
}

// gpr_log has already applied GRPC_VERBOSITY (default: errors only) when it
// calls this; --log-level filters on top, as for every other line.
void log_grpc(gpr_log_func_args *args)
{
    int level = args->severity == GPR_LOG_SEVERITY_ERROR  ? AFSM_LOG_ERROR
                : args->severity == GPR_LOG_SEVERITY_INFO ? AFSM_LOG_INFO
                                                          : AFSM_LOG_DEBUG;
    log_library(level, "grpc", args->file, args->line, args->message != nullptr ? args->message : "");
}

void log_protobuf(google::protobuf::LogLevel level, const char *file, int line, const std::string &msg)
{
    log_library(level >= google::protobuf::LOGLEVEL_ERROR     ? AFSM_LOG_ERROR
                : level == google::protobuf::LOGLEVEL_WARNING ? AFSM_LOG_WARN
                                                              : AFSM_LOG_INFO,
                "protobuf", file, line, msg);
}

} // namespace

void log_route_libraries()
{
    gpr_set_log_function(&log_grpc);
    google::protobuf::SetLogHandler(&log_protobuf);
}

std::string json_escape(const std::string &s)
{
    std::string out;
    out.reserve(s.size() + 8);
    for (unsigned char c : s) {
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        default:
            if (c < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else {
                out += static_cast<char>(c);
            }
        }
    }
    return out;
}

void log_set_level(int level)
{
    g_level.store(level, std::memory_order_relaxed);
}

bool log_enabled(int level)
{
    return level >= g_level.load(std::memory_order_relaxed);
}

int log_level_from_name(const std::string &name)
{
    if (name == "debug")
        return AFSM_LOG_DEBUG;
    if (name == "warn")
        return AFSM_LOG_WARN;
    if (name == "error")
        return AFSM_LOG_ERROR;
    return AFSM_LOG_INFO;
}

void log_line(int level, const std::string &msg, LogFields fields)
{
    if (!log_enabled(level))
        return;
    std::string line = head(level, msg);
    for (const auto &f : fields)
        add_field(line, f.first, f.second);
    emit(line);
}

void log_engine(void *, int level, const char *message, const afsm_log_field *fields, size_t field_count)
{
    if (!log_enabled(level))
        return;
    std::string line = head(level, message != nullptr ? message : "");
    add_field(line, "source", "engine");
    for (size_t i = 0; i < field_count; ++i)
        add_field(line, fields[i].key != nullptr ? fields[i].key : "",
                  fields[i].value != nullptr ? fields[i].value : "");
    emit(line);
}

} // namespace sessiond
