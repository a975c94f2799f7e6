// snapshot.h: the memory store on disk, so that restarts keep sessions.
//
// File layout (all integers little-endian):
//   header, 48 bytes:
//     magic "AFSMSNAP" | format version u32 (1) | reserved u32 (0)
//     written_at_ns i64 (wall clock) | session count u64 | payload bytes u64
//     payload CRC-32 u32 | header CRC-32 u32 (over the 44 bytes before it)
//   payload: one record per session (see snapshot.cc), exactly payload bytes.
// A file whose header or payload does not check out is corrupt; there is no
// partial load.
#pragma once

#include <cstdint>
#include <string>

#include <afsm.h>

namespace sessiond
{

struct SnapshotStats {
    uint64_t sessions = 0; // written, or read from the file
    uint64_t restored = 0; // loaded into the engine
    uint64_t expired = 0;  // skipped on load: expired meanwhile
    uint64_t skipped = 0;  // skipped on load for another reason (logged)
    uint64_t bytes = 0;
    double seconds = 0;
};

// Writes every session (closed ones excepted) to path: a temporary file in
// the same directory, fsync, rename over path, fsync of the directory. The
// records are streamed to the file in chunks as the engine is listed and the
// header is written last, so memory does not grow with the session count.
// Returns false with *error set; the old snapshot then stays in place.
bool snapshot_write(afsm_engine *engine, const std::string &path, SnapshotStats *stats, std::string *error);

// At start, before anything is served: false with *error when another
// process holds PATH.lock (two daemons would overwrite each other's
// snapshots; the lock is held until this process ends), or when a file cannot
// be created next to path (a missing or read-only directory), which would
// otherwise surface only at the first snapshot, possibly the shutdown one,
// losing every session. Also removes path's temporary files left by a
// process that died writing one (PATH.tmp.<pid> of a pid no longer running);
// each is as large as a snapshot, and a crash loop would pile them up.
bool snapshot_prepare(const std::string &path, std::string *error);

enum class LoadResult { Loaded, Missing, Corrupt, Failed };

// Reads path and restores each session with afsm_session_restore. Missing:
// no file (a first start). Corrupt: bad magic, version, checksum, length or
// record; nothing was restored. Failed: unreadable, or the engine refused a
// session for a reason other than expiry or a duplicate.
LoadResult snapshot_load(afsm_engine *engine, const std::string &path, SnapshotStats *stats, std::string *error);

} // namespace sessiond
