"""Health, reflection, /metrics, signals, snapshots and restarts, configuration."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import pytest

from conftest import SESSIOND
from helpers import create, expect_code, unique_user, wait_until

C = grpc.StatusCode


def test_health_service(shared):
    h = shared.stubs.health_pb
    stub = shared.stubs.health_rpc.HealthStub(shared.channel)
    assert stub.Check(h.HealthCheckRequest(service=""), timeout=5).status == h.HealthCheckResponse.SERVING
    assert stub.Check(h.HealthCheckRequest(service="session.SessionService"),
                      timeout=5).status == h.HealthCheckResponse.SERVING
    expect_code(C.NOT_FOUND, stub.Check, h.HealthCheckRequest(service="no.such.Service"), timeout=5)


def test_reflection_lists_the_service(shared):
    r = shared.stubs.refl_pb
    stub = shared.stubs.refl_rpc.ServerReflectionStub(shared.channel)
    responses = list(stub.ServerReflectionInfo(iter([r.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in responses[0].list_services_response.service}
    assert "session.SessionService" in names
    assert "grpc.health.v1.Health" in names
    # And it serves the proto itself.
    responses = list(stub.ServerReflectionInfo(
        iter([r.ServerReflectionRequest(file_containing_symbol="session.SessionService")]), timeout=5))
    assert responses[0].file_descriptor_response.file_descriptor_proto


def test_health_watch_streams_changes_and_ends_on_shutdown(daemons):
    # sessiond serves grpc.health.v1 itself (health.cc): Watch sends the
    # status now, then each change; shutdown turns it NOT_SERVING and ends
    # the stream with OK instead of holding up the stop for the grace period.
    d = daemons.start(name="hwatch")
    h = d.stubs.health_pb
    stub = d.stubs.health_rpc.HealthStub(d.channel)
    unknown = stub.Watch(h.HealthCheckRequest(service="no.such.Service"), timeout=30)
    assert next(unknown).status == h.HealthCheckResponse.SERVICE_UNKNOWN
    unknown.cancel()
    stream = stub.Watch(h.HealthCheckRequest(service="session.SessionService"), timeout=30)
    assert next(stream).status == h.HealthCheckResponse.SERVING
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    rest = [r.status for r in stream]  # ends with OK, or this raises
    assert rest == [h.HealthCheckResponse.NOT_SERVING]
    assert time.monotonic() - started < 8, "the stream held up the shutdown"
    assert d.proc.wait(timeout=20) == 0


def fetch(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_pass_promtool(shared, tmp_path):
    # Some traffic first, so counters and the histogram have samples.
    pb = shared.stubs.pb
    s = create(shared)
    shared.stub.ValidateToken(pb.ValidateTokenRequest(token=s.token), timeout=5)
    shared.stub.DeleteSession(pb.DeleteSessionRequest(session_id=s.session.session_id), timeout=5)
    expect_code(C.NOT_FOUND, shared.stub.GetSession, pb.GetSessionRequest(session_id=s.session.session_id))
    code, body = fetch("http://%s/metrics" % shared.metrics_addr)
    assert code == 200
    for name in ["session_total", "session_active", "session_idle", "session_created_total",
                 "session_deleted_total", "session_expired_total", "session_duration_seconds",
                 "sessiond_grpc_requests_total"]:
        assert re.search(r"^%s[ {_]" % name, body, re.M), name
    assert 'sessiond_grpc_requests_total{method="GetSession",code="NOT_FOUND"}' in body
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed (Debian package prometheus)")
    p = subprocess.run([promtool, "check", "metrics"], input=body.encode(), capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode() + "\n" + body


def test_healthz_and_404(shared):
    assert fetch("http://%s/healthz" % shared.metrics_addr) == (200, "ok\n")
    assert fetch("http://%s/nope" % shared.metrics_addr)[0] == 404


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero_after_in_flight_calls(daemons, sig):
    d = daemons.start(name="sig")
    pb = d.stubs.pb
    futures = [d.stub.CreateSession.future(pb.CreateSessionRequest(user_id="u", client_ip="10.0.0.1"), timeout=10)
               for _ in range(200)]
    d.proc.send_signal(sig)
    # Every call either completed or was refused because the server had
    # stopped accepting; none is left hanging.
    for f in futures:
        try:
            f.result()
        except grpc.RpcError as e:
            assert e.code() in (C.UNAVAILABLE, C.CANCELLED), e
    assert d.proc.wait(timeout=20) == 0
    msgs = [r.get("msg") for r in d.log_records()]
    assert "shutting down" in msgs and "sessiond stopped" in msgs


def test_logs_are_json_lines(shared):
    recs = shared.log_records()
    lines = [l for l in shared.log_text().splitlines() if l.strip()]
    assert len(recs) == len(lines) > 0
    for r in recs:
        assert {"time", "level", "msg"} <= set(r)
        assert r["level"] in ("debug", "info", "warn", "error")


def snapshot_args(path, key_file, *extra):
    return ("--snapshot", path, "--key-file", key_file, "--snapshot-interval", "0") + extra


def test_restart_with_snapshot_keeps_sessions_and_tokens(daemons, tmp_path, key_file):
    snap = str(tmp_path / "sessions.snap")
    d = daemons.start(*snapshot_args(snap, key_file), name="snap1")
    pb = d.stubs.pb
    user = unique_user("snap")
    a = create(d, user=user, metadata={"device": "phone"}, timeout_seconds=600)
    b = create(d, user=user, ip="2001:db8::7", port=443, bind_token_to_ip=True)
    d.stub.UpdateSession(pb.UpdateSessionRequest(session_id=a.session.session_id, state=pb.SESSION_STATE_ACTIVE,
                                                 stats=pb.SessionStats(packets_sent=7, bytes_sent=700,
                                                                       current_rtt_ms=12)), timeout=5)
    rot = d.stub.RotateToken(pb.RotateTokenRequest(session_id=b.session.session_id, bind_token_to_ip=True),
                             timeout=5)
    short = create(d, user=user, timeout_seconds=1)
    before = {s.session_id: s for s in d.stub.ListSessions(pb.ListSessionsRequest(user_id=user),
                                                           timeout=5).sessions}
    assert d.stop() == 0
    assert os.path.exists(snap)
    # `short` expires while the daemon is down.
    wait_until(lambda: time.time_ns() > short.session.expires_at.ToNanoseconds(), timeout=10, interval=0.05,
               what="the short session's deadline to pass")

    d2 = daemons.start(*snapshot_args(snap, key_file), name="snap2")
    loaded = [r for r in d2.log_records() if r.get("msg") == "snapshot loaded"]
    assert loaded and loaded[0]["restored"] == "2" and loaded[0]["expired"] == "1", loaded
    after = {s.session_id: s for s in d2.stub.ListSessions(pb.ListSessionsRequest(user_id=user),
                                                           timeout=5).sessions}
    assert set(after) == {a.session.session_id, b.session.session_id}
    for sid, s in after.items():
        old = before[sid]
        for field in ["user_id", "connection_id", "client_ip", "client_port", "state", "metadata", "stats",
                      "token_generation", "timeout_seconds"]:
            assert getattr(s, field) == getattr(old, field), field
        # The engine reports wall time as its monotonic clock plus an offset
        # sampled per process, so a restart may move timestamps by microseconds.
        for field in ["created_at", "last_active_at", "expires_at"]:
            a_ns = getattr(s, field).ToNanoseconds()
            b_ns = getattr(old, field).ToNanoseconds()
            assert abs(a_ns - b_ns) < 10_000_000, (field, a_ns - b_ns)
    expect_code(C.NOT_FOUND, d2.stub.GetSession, pb.GetSessionRequest(session_id=short.session.session_id))
    # Tokens: same key, generations restored.
    v = d2.stub.ValidateToken(pb.ValidateTokenRequest(token=a.token), timeout=5)
    assert v.session.session_id == a.session.session_id
    d2.stub.ValidateToken(pb.ValidateTokenRequest(token=rot.token, client_ip="2001:db8::7"), timeout=5)
    err = expect_code(C.UNAUTHENTICATED, d2.stub.ValidateToken,
                      pb.ValidateTokenRequest(token=b.token, client_ip="2001:db8::7"))
    assert "AFSM_EREVOKED" in err.details()
    d2.stub.Heartbeat(pb.HeartbeatRequest(session_id=a.session.session_id), timeout=5)
    assert d2.stop() == 0


def test_tokens_die_without_key_file(daemons, tmp_path):
    snap = str(tmp_path / "nokey.snap")
    d = daemons.start("--snapshot", snap, name="nokey1")
    pb = d.stubs.pb
    r = create(d)
    assert d.stop() == 0
    d2 = daemons.start("--snapshot", snap, name="nokey2")
    d2.stub.GetSession(pb.GetSessionRequest(session_id=r.session.session_id), timeout=5)  # the session is back
    expect_code(C.UNAUTHENTICATED, d2.stub.ValidateToken, pb.ValidateTokenRequest(token=r.token))  # its token not
    assert d2.stop() == 0


def test_periodic_snapshot_survives_a_crash(daemons, tmp_path, key_file):
    snap = str(tmp_path / "periodic.snap")
    d = daemons.start("--snapshot", snap, "--key-file", key_file, "--snapshot-interval", "200ms", name="crash1")
    pb = d.stubs.pb
    r = create(d)
    # Wait for a periodic snapshot that has the session, then crash.
    # Snapshots are renamed into place whole: once one holds the session
    # (more than the empty header), a crash cannot take it back.
    wait_until(lambda: os.path.exists(snap) and os.path.getsize(snap) > 48, timeout=10,
               what="a periodic snapshot with the session")
    d.proc.kill()
    d.proc.wait()
    d2 = daemons.start("--snapshot", snap, "--key-file", key_file, name="crash2")
    d2.stub.GetSession(pb.GetSessionRequest(session_id=r.session.session_id), timeout=5)
    d2.stub.ValidateToken(pb.ValidateTokenRequest(token=r.token), timeout=5)
    assert d2.stop() == 0


def make_snapshot(daemons, path, key_file, n=3):
    d = daemons.start(*snapshot_args(path, key_file), name="mk")
    for _ in range(n):
        create(d)
    assert d.stop() == 0
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("damage", ["flip", "truncate", "header", "empty", "magic"])
def test_corrupt_snapshot_is_refused(daemons, tmp_path, key_file, damage):
    snap = str(tmp_path / "bad.snap")
    data = bytearray(make_snapshot(daemons, snap, key_file))
    if damage == "flip":
        data[len(data) - 10] ^= 0x40
    elif damage == "truncate":
        data = data[:len(data) - 7]
    elif damage == "header":
        data[20] ^= 0x01
    elif damage == "empty":
        data = bytearray()
    elif damage == "magic":
        data[0:8] = b"NOTASNAP"
    with open(snap, "wb") as f:
        f.write(bytes(data))
    code, out = daemons.run_to_exit(*snapshot_args(snap, key_file))
    assert code != 0
    assert "corrupt" in out and snap in out, out
    assert "--start-empty-on-corrupt-snapshot" in out
    # Told to, it starts empty and keeps the bad file aside.
    d = daemons.start(*snapshot_args(snap, key_file, "--start-empty-on-corrupt-snapshot"), name="empty")
    assert d.stub.ListSessions(d.stubs.pb.ListSessionsRequest(), timeout=5).total == 0
    assert any(n.startswith("bad.snap.corrupt.") for n in os.listdir(str(tmp_path)))
    assert d.stop() == 0


def test_help_lists_every_flag():
    out = subprocess.run([SESSIOND, "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    for flag in ["--listen", "--metrics-listen", "--store", "--default-timeout", "--cleanup-interval",
                 "--idle-timeout", "--max-sessions-per-user", "--limit-policy", "--key-file", "--snapshot",
                 "--snapshot-interval", "--start-empty-on-corrupt-snapshot", "--log-level", "--config",
                 "--tls-cert", "--tls-key", "--client-ca", "--max-batch", "--max-message-bytes",
                 "--max-concurrent-streams", "--max-watchers"]:
        assert flag in out.stdout, flag
    # The metrics endpoint has no authentication: --help says it stays on loopback by default.
    metrics_line = next(ln for ln in out.stdout.splitlines() if "--metrics-listen" in ln)
    assert "default 127.0.0.1:9464" in metrics_line and "loopback" in metrics_line
    assert "SIGHUP" in out.stdout


def test_bad_flags_and_stores(daemons, tmp_path):
    code, out = daemons.run_to_exit("--no-such-flag")
    assert code == 2 and "unknown option" in out
    code, out = daemons.run_to_exit("--limit-policy", "maybe")
    assert code == 2
    code, out = daemons.run_to_exit("--store", "etcd")
    assert code == 2 and "--etcd-endpoints" in out
    code, out = daemons.run_to_exit("--store", "redis")
    assert code == 2 and "unknown --store" in out
    bad_key = str(tmp_path / "open.key")
    with open(bad_key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(bad_key, 0o644)
    code, out = daemons.run_to_exit("--key-file", bad_key)
    assert code == 1 and "key" in out


def test_config_file(daemons, tmp_path):
    cfg = tmp_path / "sessiond.conf"
    cfg.write_text("# sessiond test config\n"
                   "default-timeout = 42s\n"
                   "max-sessions-per-user = 1\n"
                   "log-level = debug\n")
    d = daemons.start("--config", str(cfg), name="cfg")
    user = unique_user()
    assert create(d, user=user).session.timeout_seconds == 42
    expect_code(C.RESOURCE_EXHAUSTED, create, d, user=user)
    assert any(r.get("level") == "debug" for r in d.log_records())
    assert d.stop() == 0
    # Flags win over the file.
    d = daemons.start("--config", str(cfg), "--default-timeout", "7s", name="cfg2")
    assert create(d).session.timeout_seconds == 7
    assert d.stop() == 0
    bad = tmp_path / "bad.conf"
    bad.write_text("no-such-key = 1\n")
    code, out = daemons.run_to_exit("--config", str(bad))
    assert code == 2 and "unknown option" in out
