"""Five faults an operator review found in sessiond, each pinned by a test:
a snapshot header's session count trusted for memory, the whole snapshot built
in memory before it is written, a malformed request answered by gRPC's own
status, control bytes of a bad id echoed into the error message, and gRPC's own
log lines breaking the one-JSON-object-per-line log (tools/sessiond/README.md).
"""
from __future__ import annotations

import json
import os
import signal
import struct
import time
import zlib

import grpc
import pytest

from helpers import create, exits, expect_code, unique_user

C = grpc.StatusCode
HEADER = 48
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "snapshot-v1.snap")


def proc_status(pid: int, field: str) -> int:
    """A /proc/PID/status field in kB (VmPeak, VmHWM, ...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def parse_snapshot(data: bytes):
    """The documented header (README, "Restarts keep sessions"), checked; returns (count, payload)."""
    assert data[:8] == b"AFSMSNAP"
    version, _, _, count, plen, pcrc, hcrc = struct.unpack_from("<IIqQQII", data, 8)
    assert version == 1
    assert hcrc == zlib.crc32(data[:HEADER - 4])
    payload = data[HEADER:]
    assert plen == len(payload) and pcrc == zlib.crc32(payload)
    return count, payload


def with_count(data: bytes, count: int) -> bytes:
    """The same snapshot with its header's session count replaced and the header CRC redone:
    what a crafted (or buggy) writer could produce; the payload CRC still checks out."""
    h = bytearray(data[:HEADER])
    struct.pack_into("<Q", h, 24, count)
    struct.pack_into("<I", h, HEADER - 4, zlib.crc32(bytes(h[:HEADER - 4])))
    return bytes(h) + data[HEADER:]


def one_session_snapshot(daemons, path: str) -> bytes:
    d = daemons.start("--snapshot", path, "--snapshot-interval", "0", name="one")
    create(d, metadata={"k": "v"})
    assert d.stop() == 0
    with open(path, "rb") as f:
        return f.read()


# -- 1. the header's count ----------------------------------------------------

def test_a_header_count_the_payload_cannot_hold_is_refused_before_any_memory_is_taken(daemons, tmp_path):
    """A header claiming 2^40 sessions over a one-record payload used to make the loader
    reserve room for a million records (~0.7 GB of address space) before finding the
    payload short. Now it is refused at once, naming both counts, with exit 1 like any
    corrupt snapshot; with --start-empty-on-corrupt-snapshot the daemon's peak address
    space is that of a daemon that loaded the good one-record file."""
    good = str(tmp_path / "good.snap")
    data = one_session_snapshot(daemons, good)
    assert parse_snapshot(data)[0] == 1

    bad = str(tmp_path / "bad.snap")
    with open(bad, "wb") as f:
        f.write(with_count(data, 1 << 40))

    base = daemons.start("--snapshot", good, "--snapshot-interval", "0", name="base")
    base_peak = proc_status(base.proc.pid, "VmPeak")
    crafted = daemons.start("--snapshot", bad, "--snapshot-interval", "0", "--start-empty-on-corrupt-snapshot",
                            name="crafted")
    crafted_peak = proc_status(crafted.proc.pid, "VmPeak")
    assert crafted.stop() == 0 and base.stop() == 0
    assert crafted_peak - base_peak < 64 * 1024, "VmPeak %d kB against %d kB" % (crafted_peak, base_peak)

    with open(bad, "wb") as f:  # the crafted daemon moved it aside
        f.write(with_count(data, 1 << 40))
    code, out = exits(daemons, "--snapshot", bad)
    assert code == 1, out
    assert "header says 1099511627776 sessions" in out and "refusing to start" in out, out


@pytest.mark.parametrize("count,words", [(2, ["header says 2 sessions", "hold at most 1"]),
                                         (0, ["header says 0 sessions", "bytes remain"])])
def test_a_header_count_that_disagrees_with_the_records_is_refused(daemons, tmp_path, count, words):
    """Fewer or more records than the header says: exit 1, the path, both counts."""
    good = str(tmp_path / "good.snap")
    data = one_session_snapshot(daemons, good)
    bad = str(tmp_path / "bad.snap")
    with open(bad, "wb") as f:
        f.write(with_count(data, count))
    code, out = exits(daemons, "--snapshot", bad)
    assert code == 1 and bad in out, out
    for w in words:
        assert w in out, (w, out)


# -- 2. the snapshot is streamed ------------------------------------------------

SESSIONS = 6000
VALUE = "v" * 4000  # near AFSM_METADATA_BYTES_MAX: ~4.2 KB a record, ~25 MB a snapshot


def test_a_snapshot_is_written_without_holding_it_in_memory(daemons, tmp_path):
    """The shutdown snapshot of ~25 MB used to be built whole in a vector (peak RSS up by
    the snapshot's size, more while the vector grew) before one write. Streamed, the
    daemon's peak RSS across the stop grows by about the fixed list page (5-8 MB), not by the
    file; the file is the documented format with every session."""
    snap = str(tmp_path / "big.snap")
    d = daemons.start("--snapshot", snap, "--snapshot-interval", "0", "--default-timeout", "1h", name="big")
    pb = d.stubs.pb
    user = unique_user()
    calls = []
    for i in range(SESSIONS):
        calls.append(d.stub.CreateSession.future(
            pb.CreateSessionRequest(user_id=user, client_ip="10.0.0.1", client_port=1 + i, metadata={"k": VALUE}),
            timeout=30))
        if len(calls) >= 256:
            for c in calls:
                c.result()
            calls = []
    for c in calls:
        c.result()
    d.channel.close()
    d.channel = None
    before = proc_status(d.proc.pid, "VmHWM")
    d.proc.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(d.proc.pid, 0)
    d.proc.returncode = os.waitstatus_to_exitcode(status)
    d.log_file.close()
    assert d.proc.returncode == 0, d.log_text()
    size = os.path.getsize(snap)
    assert size > SESSIONS * 4000
    with open(snap, "rb") as f:
        count, _ = parse_snapshot(f.read())
    assert count == SESSIONS
    grew_kb = usage.ru_maxrss - before
    assert grew_kb < 16 * 1024, "peak RSS grew %d kB over a %d kB snapshot" % (grew_kb, size // 1024)


def shifted_in_time(data: bytes, by_ns: int) -> bytes:
    """The snapshot with every record's three timestamps moved by by_ns and both CRCs
    redone (the record layout is the one at the top of tools/sessiond/snapshot.cc), so a
    fixture's sessions are as fresh as when it was written, whatever today's date."""
    count, payload = parse_snapshot(data)
    out = bytearray(payload)
    at = 0
    for _ in range(count):
        at += 16 + 16 + 4 + 1 + 16 + 2
        for _string in range(2):  # user_id, server_addr
            (n,) = struct.unpack_from("<I", out, at)
            at += 4 + n
        created, active, expires = struct.unpack_from("<qqq", out, at)
        struct.pack_into("<qqq", out, at, created + by_ns, active + by_ns, expires + by_ns)
        at += 3 * 8 + 8 + 5 * 8 + 4 + 4
        (entries,) = struct.unpack_from("<I", out, at)
        at += 4
        for _entry in range(2 * entries):  # key, value
            (n,) = struct.unpack_from("<I", out, at)
            at += 4 + n
    assert at == len(out)
    h = bytearray(data[:HEADER])
    struct.pack_into("<I", h, 40, zlib.crc32(bytes(out)))
    struct.pack_into("<I", h, HEADER - 4, zlib.crc32(bytes(h[:HEADER - 4])))
    return bytes(h) + bytes(out)


def test_a_snapshot_written_by_the_previous_code_still_loads(daemons, tmp_path):
    """fixtures/snapshot-v1.snap was written by sessiond before the writer streamed (3
    sessions, 49.7-day timeouts, metadata). Moved in time to today (its bytes otherwise as
    written), it loads whole, its sessions come back with their fields, and the streaming
    writer writes their records byte for byte as the old one did."""
    with open(FIXTURE, "rb") as f:
        fixture = f.read()
    (written_at,) = struct.unpack_from("<q", fixture, 16)
    old = shifted_in_time(fixture, time.time_ns() - written_at)
    count, old_payload = parse_snapshot(old)
    assert count == 3
    snap = str(tmp_path / "old.snap")
    with open(snap, "wb") as f:
        f.write(old)
    d = daemons.start("--snapshot", snap, "--snapshot-interval", "0", name="old")
    loaded = [r for r in d.log_records() if r.get("msg") == "snapshot loaded"]
    assert len(loaded) == 1, d.log_text()
    rec = loaded[0]
    assert rec["sessions"] == "3" and rec["skipped"] == "0", rec
    assert rec["restored"] == "3", rec
    listed = d.stub.ListSessions(d.stubs.pb.ListSessionsRequest(page_size=10), timeout=5).sessions
    assert sorted(s.user_id for s in listed) == ["fixture-a", "fixture-b", "fixture-c"]
    assert all(dict(s.metadata) == {"device": "phone", "n": s.user_id[-1]} for s in listed), listed
    assert d.stop() == 0
    with open(snap, "rb") as f:
        count, payload = parse_snapshot(f.read())
    assert count == 3
    assert payload == old_payload


# -- 3. a malformed request -------------------------------------------------------

def test_a_malformed_request_is_invalid_argument_and_the_daemon_keeps_serving(shared):
    """Bytes that are not a GetSessionRequest (a field with wire type 7, which does not
    exist) used to get gRPC's own INTERNAL "Unable to parse request"."""
    raw = shared.channel.unary_unary("/session.SessionService/GetSession",
                                     request_serializer=lambda b: b, response_deserializer=lambda b: b)
    err = expect_code(C.INVALID_ARGUMENT, raw, b"\x0f\xff\xff", timeout=5)
    assert "GetSessionRequest" in err.details() and "parse" in err.details(), err.details()
    # Not covered (README, "Errors"): a server-streaming method's request is still parsed
    # by gRPC, which answers INTERNAL itself.
    watch = shared.channel.unary_stream("/session.SessionService/WatchSessions",
                                        request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        list(watch(b"\x0f\xff\xff", timeout=5))
    assert info.value.code() == C.INTERNAL and "Unable to parse request" in info.value.details()
    # The same method still serves a well-formed request on the same connection.
    sid = create(shared).session.session_id
    got = shared.stub.GetSession(shared.stubs.pb.GetSessionRequest(session_id=sid), timeout=5)
    assert got.session.session_id == sid


def test_a_malformed_stream_message_ends_the_stream_with_invalid_argument(shared):
    """A HeartbeatStream message that does not parse used to fail the server's read as a
    half-close does: the stream ended OK, as if the client had finished."""
    pb = shared.stubs.pb
    raw = shared.channel.stream_stream("/session.SessionService/HeartbeatStream",
                                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
    good = pb.HeartbeatBatchRequest(sequence=7).SerializeToString()
    call = raw(iter([good, b"\x0f\xff\xff", good]), timeout=5)
    answers = []
    with pytest.raises(grpc.RpcError) as info:
        for a in call:
            answers.append(pb.HeartbeatBatchResponse.FromString(a))
    assert [a.sequence for a in answers] == [7]
    assert info.value.code() == C.INVALID_ARGUMENT, (info.value.code(), info.value.details())
    assert "HeartbeatBatchRequest" in info.value.details(), info.value.details()


# -- 4. a bad id in a message -----------------------------------------------------------

def test_a_bad_id_is_echoed_escaped_and_bounded(shared):
    """NUL and other control bytes of a bad id used to reach the message raw."""
    pb = shared.stubs.pb
    bad = "ab\x00cd\x01\x1b[31m\x7f" + "x" * 5000
    err = expect_code(C.INVALID_ARGUMENT, shared.stub.GetSession, pb.GetSessionRequest(session_id=bad), timeout=5)
    msg = err.details()
    assert "session_id" in msg, msg
    assert "ab\\x00cd\\x01\\x1b[31m\\x7f" in msg, msg
    assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in msg), repr(msg)
    assert len(msg) < 400 and "%d bytes" % len(bad.encode()) in msg, (len(msg), msg)


# -- 5. gRPC's own log lines ---------------------------------------------------------------

def test_every_line_of_a_refused_port_is_json(daemons):
    """A port another sessiond holds: gRPC used to print its own plain-text error line
    before sessiond's JSON one."""
    first = daemons.start(name="first")
    code, out = exits(daemons, "--listen", first.addr)
    assert code == 1, out
    records = []
    for line in out.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail("a log line is not JSON: %r\n%s" % (line, out))
    grpc_lines = [r for r in records if r.get("source") == "grpc"]
    assert grpc_lines and all(r["level"] == "error" and r.get("file") for r in grpc_lines), out
    assert any("cannot listen" in r["msg"] for r in records), out
    assert first.stop() == 0


def test_a_string_field_that_is_not_utf8_logs_json(daemons):
    """A request whose string field is not UTF-8 is refused, and protobuf logs why on
    the server ("String field ... contains invalid UTF-8 data"): that line used to be
    libprotobuf's own plain text, and any client could put it in the log."""
    d = daemons.start(name="utf8")
    raw = d.channel.unary_unary("/session.SessionService/GetSession",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    expect_code(C.INVALID_ARGUMENT, raw, b"\x0a\x02\xff\xfe", timeout=5)
    assert d.stop() == 0
    for line in d.log_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            pytest.fail("a log line is not JSON: %r" % line)
    assert any(r.get("source") == "protobuf" and "UTF-8" in r["msg"] for r in d.log_records()), d.log_text()
