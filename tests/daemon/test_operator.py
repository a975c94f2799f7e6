"""Operator mistakes at start and crashes around snapshots: every one is a clear
error and exit code at start (README, "Options": 1 when it cannot start, 2 for bad
flags), never a daemon that starts and misbehaves or loses sessions later.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import time

import pytest

from helpers import create, exits, metric
from test_cli import LOADGEN



def test_a_port_held_by_another_sessiond_is_refused(daemons):
    """gRPC sets SO_REUSEPORT by default: a second daemon on the same port would share
    it with the first, the kernel splitting connections (and sessions) between them."""
    first = daemons.start(name="first")
    code, out = exits(daemons, "--listen", first.addr)
    assert code == 1 and "cannot listen" in out and first.addr in out, out
    assert first.stop() == 0


@pytest.mark.parametrize("flag,value", [("--listen", "127.0.0.1:99999"), ("--listen", "127.0.0.1"),
                                        ("--metrics-listen", "127.0.0.1:70000"), ("--metrics-listen", "nonsense")])
def test_an_address_that_is_not_host_port_is_a_bad_flag(daemons, flag, value):
    """Port 99999 used to be taken modulo 65536 by gRPC (the daemon listened on 34463)."""
    code, out = exits(daemons, flag, value)
    assert code == 2 and flag in out and value in out and "65535" in out, out


@pytest.mark.parametrize("args,words", [
    (["--shards", "3"], ["--shards", "power of two", "4096"]),
    (["--default-timeout", "100d"], ["--default-timeout", "49.7 days"]),
    (["--server-addr", "a" * 300], ["--server-addr", "300 bytes", "255"]),
])
def test_values_the_engine_refuses_are_bad_flags(daemons, args, words):
    """Exit 2 (systemd does not restart it) with the flag and its limit named, not
    exit 1 with "cannot open the engine: invalid argument"."""
    code, out = exits(daemons, *args)
    assert code == 2, out
    for w in words:
        assert w in out, (w, out)


@pytest.mark.parametrize("flag", ["--shutdown-grace", "--snapshot-interval", "--default-timeout"])
def test_a_duration_that_overflows_is_refused(daemons, flag):
    """999999999999999d is 8.6e22 ms: it used to wrap around 2^64 silently."""
    code, out = exits(daemons, flag, "999999999999999d")
    assert code == 2 and flag.lstrip("-") in out and "999999999999999d" in out, out


def test_a_snapshot_path_that_cannot_be_written_is_refused_at_start(daemons, tmp_path):
    """The daemon used to start, serve for hours and fail only at the shutdown snapshot,
    losing every session (the test runs as root too: a missing directory and a file
    in place of the directory are refused whoever runs it)."""
    missing = str(tmp_path / "no-such-dir" / "sessions.snap")
    code, out = exits(daemons, "--snapshot", missing)
    assert code == 1 and missing in out and "No such file or directory" in out, out
    not_dir = tmp_path / "a-file"
    not_dir.write_text("x")
    path = str(not_dir / "sessions.snap")
    code, out = exits(daemons, "--snapshot", path)
    assert code == 1 and path in out and "Not a directory" in out, out
    assert os.listdir(str(tmp_path)) == ["a-file"]  # the probe leaves nothing behind


def snapshot_count(path: str) -> int:
    with open(path, "rb") as f:
        header = f.read(48)
    assert header[:8] == b"AFSMSNAP"
    return struct.unpack_from("<Q", header, 24)[0]


def test_sigkill_during_a_snapshot_write_loses_nothing_snapshotted_and_leaves_no_torn_file(daemons, tmp_path):
    """Kill -9 while a periodic snapshot is being written: the restart loads the last
    complete snapshot whole (no session of it lost, no crash on the torn file), and
    removes the torn PATH.tmp.<pid> (every crash mid-write used to leave one, as large
    as a snapshot, in the state directory for ever)."""
    snap = str(tmp_path / "sessions.snap")
    torn = []
    for attempt in range(5):
        d = daemons.start("--snapshot", snap, "--snapshot-interval", "20ms", name="kill%d" % attempt)
        if attempt == 0:
            p = subprocess.run([LOADGEN, "--addr", d.addr, "--sessions", "40000", "--mix", "get=1", "--duration", "0.1",
                                "--warmup", "0"], capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stdout + p.stderr
            # A complete snapshot with every session, before the kills start.
            deadline = time.monotonic() + 20
            while not (os.path.exists(snap) and snapshot_count(snap) == 40000) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert snapshot_count(snap) == 40000
        tmp = "%s.tmp.%d" % (snap, d.proc.pid)
        deadline = time.monotonic() + 10
        while not os.path.exists(tmp) and time.monotonic() < deadline:
            time.sleep(0.0005)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        if os.path.exists(tmp):
            torn.append(tmp)
            break
    assert torn, "no kill landed during a snapshot write in 5 tries"
    complete = snapshot_count(snap)
    assert complete == 40000
    d = daemons.start("--snapshot", snap, name="after")
    listed = d.stub.ListSessions(d.stubs.pb.ListSessionsRequest(page_size=1), timeout=10).total
    assert listed == complete
    assert not os.path.exists(torn[0]), os.listdir(str(tmp_path))
    assert d.stop() == 0


def test_a_live_daemons_snapshot_tmp_file_is_left_alone(daemons, tmp_path):
    """Only leftovers of dead processes are removed: a file named after a running
    process (another daemon's write in progress) stays."""
    snap = str(tmp_path / "s.snap")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        live = "%s.tmp.%d" % (snap, sleeper.pid)
        with open(live, "wb") as f:
            f.write(b"in progress")
        other = str(tmp_path / "other.snap.tmp.1")  # another snapshot's name
        with open(other, "wb") as f:
            f.write(b"x")
        d = daemons.start("--snapshot", snap, name="live")
        create(d)
        assert os.path.exists(live) and os.path.exists(other)
        assert d.stop() == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_future_snapshot_version_is_refused_with_both_versions(daemons, tmp_path):
    """A snapshot from a newer sessiond (format 2) is refused, naming both versions."""
    import zlib
    snap = str(tmp_path / "future.snap")
    header = b"AFSMSNAP" + struct.pack("<IIqQQI", 2, 0, 0, 0, 0, zlib.crc32(b""))
    header += struct.pack("<I", zlib.crc32(header))
    with open(snap, "wb") as f:
        f.write(header)
    code, out = exits(daemons, "--snapshot", snap)
    assert code == 1 and "format version 2 is not supported (this is 1)" in out, out


def test_idle_connections_do_not_hold_up_a_stop(daemons):
    """README, "Stopping": in-flight calls get up to --shutdown-grace. With none in
    flight, an idle client channel (a gateway between calls) or a bare TCP
    connection (a load balancer's check) used to hold the stop for the whole grace:
    gRPC waits for every connection to close after its GOAWAY."""
    import socket
    d = daemons.start("--shutdown-grace", "15s", name="idle")
    create(d)  # the daemon's channel is now connected and idle
    host, port = d.addr.rsplit(":", 1)
    bare = socket.create_connection((host, int(port)), timeout=5)
    try:
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        code = d.proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        bare.close()
    assert code == 0
    assert took < 5, "stop took %.1fs with no call in flight (grace 15s)" % took


def test_an_in_flight_stream_still_gets_the_grace(daemons):
    """The other side of the above: a call in flight keeps the stop waiting (up to the
    grace) and completes normally if it ends within it."""
    import threading
    d = daemons.start("--shutdown-grace", "15s", name="busy")
    pb = d.stubs.pb
    sid = create(d).session.session_id
    release = threading.Event()
    answers = []

    def requests():
        yield pb.HeartbeatBatchRequest(session_ids=[sid], sequence=1)
        release.wait(20)
        yield pb.HeartbeatBatchRequest(session_ids=[sid], sequence=2)

    call = d.stub.HeartbeatStream(requests(), timeout=30)
    reader = threading.Thread(target=lambda: answers.extend(r.sequence for r in call), daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert answers == [1]
    d.proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        d.proc.wait(timeout=1.5)  # the open stream holds the stop
    release.set()
    reader.join(10)
    assert answers == [1, 2]  # answered after SIGTERM, within the grace
    assert d.proc.wait(timeout=10) == 0


def test_snapshot_metrics_move_and_a_lost_directory_counts_failures(daemons, tmp_path):
    """README, "Metrics": sessiond_snapshot_* tell an operator the last snapshot's
    time, size and duration, and count failures. A state directory removed under a
    running daemon: failures count up, the last success stays, the stop exits 1."""
    import shutil
    state = tmp_path / "state"
    state.mkdir()
    snap = str(state / "s.snap")
    d = daemons.start("--snapshot", snap, "--snapshot-interval", "50ms", name="snapm")
    for _ in range(3):
        create(d)
    deadline = time.monotonic() + 10
    while metric(d, "sessiond_snapshot_sessions") != 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metric(d, "sessiond_snapshot_sessions") == 3
    assert metric(d, "sessiond_snapshot_failures_total") == 0
    assert abs(metric(d, "sessiond_snapshot_last_success_timestamp_seconds") - time.time()) < 10
    assert metric(d, "sessiond_snapshot_duration_seconds") > 0
    assert metric(d, "process_start_time_seconds") <= time.time()
    shutil.rmtree(str(state))
    deadline = time.monotonic() + 10
    while metric(d, "sessiond_snapshot_failures_total") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    last = metric(d, "sessiond_snapshot_last_success_timestamp_seconds")
    assert metric(d, "sessiond_snapshot_failures_total") >= 2
    # Two more failed periods later, the last success has not moved.
    failed = metric(d, "sessiond_snapshot_failures_total")
    deadline = time.monotonic() + 10
    while metric(d, "sessiond_snapshot_failures_total") < failed + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metric(d, "sessiond_snapshot_failures_total") >= failed + 2
    assert metric(d, "sessiond_snapshot_last_success_timestamp_seconds") == last
    assert d.stop() == 1
    assert any(r.get("msg") == "snapshot failed" and r.get("why") == "shutdown" for r in d.log_records())


def test_a_config_path_that_is_a_directory_is_refused(daemons, tmp_path):
    """--config /etc/sessiond (the directory, not the file) used to read as an empty
    file: the daemon started on defaults, ignoring every option the operator set."""
    conf_dir = tmp_path / "sessiond"
    conf_dir.mkdir()
    (conf_dir / "sessiond.conf").write_text("default-timeout = 42s\n")
    code, out = exits(daemons, "--config", str(conf_dir))
    assert code == 2 and str(conf_dir) in out and "directory" in out, out


def test_two_daemons_on_one_snapshot_file_are_refused(daemons, tmp_path):
    """Two daemons (different ports) given the same --snapshot used to both start and
    overwrite each other's snapshots: a restart then brought back one daemon's sessions
    and silently lost the other's. The second is refused; once the first stops, the
    file is free again."""
    snap = str(tmp_path / "shared.snap")
    first = daemons.start("--snapshot", snap, name="owner")
    code, out = exits(daemons, "--snapshot", snap)
    assert code == 1 and snap in out and "another sessiond" in out, out
    assert first.stop() == 0
    again = daemons.start("--snapshot", snap, name="next")
    assert again.stop() == 0


def requests_total(d, method: str, code: str) -> float:
    import re
    import urllib.request
    with urllib.request.urlopen("http://%s/metrics" % d.metrics_addr, timeout=5) as resp:
        body = resp.read().decode()
    m = re.search(r'^sessiond_grpc_requests_total\{method="%s",code="%s"\} (\S+)$' % (method, code), body, re.M)
    return float(m.group(1)) if m else 0.0


def test_watch_streams_are_counted_by_the_status_they_end_with(daemons):
    """README, "Metrics": sessiond_grpc_requests_total{method,code}. A WatchSessions
    refused by --max-watchers (RESOURCE_EXHAUSTED) used to be counted as OK, since the
    count was taken when the call arrived."""
    import grpc
    d = daemons.start("--max-watchers", "1", name="watchcount")
    pb = d.stubs.pb
    first = d.stub.WatchSessions(pb.WatchSessionsRequest(), timeout=30)
    deadline = time.monotonic() + 10
    while d.stub.GetStats(pb.GetStatsRequest(), timeout=5).watchers != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    second = d.stub.WatchSessions(pb.WatchSessionsRequest(), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        next(second)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert requests_total(d, "WatchSessions", "RESOURCE_EXHAUSTED") == 1
    assert requests_total(d, "WatchSessions", "OK") == 0  # the open stream has not ended
    first.cancel()
    deadline = time.monotonic() + 10
    while requests_total(d, "WatchSessions", "CANCELLED") != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert requests_total(d, "WatchSessions", "CANCELLED") == 1
    assert requests_total(d, "WatchSessions", "OK") == 0
    assert d.stop() == 0


def test_every_metric_the_readme_names_is_served(daemons, tmp_path):
    """README, "Running it", **Metrics.**: each series named there (a trailing * is a
    prefix) is in /metrics, so the docs and the exporter cannot drift apart."""
    import re
    import shutil
    import urllib.request
    from conftest import ROOT
    with open(os.path.join(ROOT, "tools", "sessiond", "README.md")) as f:
        readme = f.read()
    para = readme[readme.index("- **Metrics.**"):]
    para = para[:para.index("\n- **", 1)]
    names = re.findall(r"`([a-z_]+\*?)(?:\{[^`]*\})?`", para)
    assert len(names) >= 14, names  # the list itself, not a lucky match
    d = daemons.start("--snapshot", str(tmp_path / "m.snap"), name="names")
    create(d)
    with urllib.request.urlopen("http://%s/metrics" % d.metrics_addr, timeout=5) as resp:
        body = resp.read().decode()
    served = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
    for name in names:
        if name.endswith("*"):
            assert any(s.startswith(name[:-1]) for s in served), name
        else:
            assert name in served, name
    p = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=body.encode(),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()
    assert d.stop() == 0
