// jsonlog.h: one JSON object per line on stderr, for the daemon's own lines
// and the engine's (through its log callback).
#pragma once

#include <initializer_list>
#include <string>
#include <utility>

#include <afsm.h>

namespace sessiond
{

// Levels are afsm's: AFSM_LOG_DEBUG .. AFSM_LOG_ERROR.
void log_set_level(int level);
int log_level_from_name(const std::string &name);
bool log_enabled(int level);

using LogFields = std::initializer_list<std::pair<const char *, std::string>>;
// {"time":"2025-01-02T03:04:05.678Z","level":"info","msg":"...","key":"value",...}
void log_line(int level, const std::string &msg, LogFields fields = {});

// The engine's afsm_log_fn: same format, "source":"engine".
void log_engine(void *ctx, int level, const char *message, const afsm_log_field *fields, size_t field_count);

// Routes gRPC's own log lines (gpr_log: its errors, and more with
// GRPC_VERBOSITY / GRPC_TRACE) and protobuf's (a request with a string that
// is not UTF-8, say) through the JSON logger, "source":"grpc" or
// "protobuf" with file and line; both libraries otherwise print plain text
// on stderr. Call before anything of gRPC runs.
void log_route_libraries();

std::string json_escape(const std::string &s);

} // namespace sessiond
