"""sessionctl against a real daemon, and the load generator's smoke run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from conftest import ROOT, SESSIONCTL

LOADGEN = os.environ.get("LOADGEN_BIN", os.path.join(ROOT, "build", "tools", "sessiond", "loadgen", "loadgen"))


def ctl(d, tmp_cache, *args, ok=True):
    env = dict(os.environ, SESSIONCTL_CACHE=tmp_cache)
    p = subprocess.run(["/usr/bin/python3", SESSIONCTL, "--addr", d.addr] + list(args), capture_output=True,
                       text=True, timeout=60, env=env)
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_sessionctl_every_subcommand(shared, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("ctlcache"))
    created = json.loads(ctl(shared, cache, "--json", "create", "--user", "cli-user", "--ip", "10.0.0.5",
                             "--port", "999", "--meta", "device=laptop", "--timeout", "90").stdout)
    sid, token = created["session"]["session_id"], created["token"]
    assert created["session"]["metadata"] == {"device": "laptop"}

    out = ctl(shared, cache, "get", sid).stdout
    assert sid in out and "cli-user" in out and "10.0.0.5:999" in out and "metadata.device" in out
    conn = created["session"]["connection_id"]
    assert sid in ctl(shared, cache, "get", "--connection", conn).stdout

    out = ctl(shared, cache, "list", "--user", "cli-user").stdout
    assert out.splitlines()[0].split() == ["SESSION_ID", "USER", "STATE", "CLIENT", "EXPIRES_IN", "META"]
    assert sid in out and "1 total" in out
    listed = json.loads(ctl(shared, cache, "list", "--user", "cli-user", "--json").stdout)
    assert listed["sessions"][0]["session_id"] == sid

    assert "seconds left" in ctl(shared, cache, "heartbeat", sid).stdout
    out = ctl(shared, cache, "update", sid, "--state", "active", "--meta", "k=v", "--stats", "packets_sent=3").stdout
    assert "active" in out and "metadata.k" in out and "sent 3 pkts" in out

    assert "valid" in ctl(shared, cache, "validate", token).stdout
    rotated = json.loads(ctl(shared, cache, "--json", "rotate", sid).stdout)
    bad = ctl(shared, cache, "validate", token, ok=False)
    assert bad.returncode == 1 and "UNAUTHENTICATED" in bad.stderr
    ctl(shared, cache, "validate", rotated["token"])

    stats = ctl(shared, cache, "stats").stdout
    assert "sessions" in stats and "version" in stats

    # watch: one event, then exit.
    result = {}

    def watch():
        result["p"] = ctl(shared, cache, "watch", "--user", "cli-user", "--count", "1", "--for", "30",
                          "--report-lag")

    t = threading.Thread(target=watch)
    t.start()
    # Keep creating until the watcher (a separate process) has seen one.
    import time
    deadline = time.monotonic() + 30
    while t.is_alive() and time.monotonic() < deadline:
        ctl(shared, cache, "create", "--user", "cli-user", "--ip", "10.0.0.6")
        t.join(timeout=0.3)
    t.join()
    assert "created" in result["p"].stdout

    assert "deleted " + sid in ctl(shared, cache, "delete", sid, "--reason", "cli").stdout
    missing = ctl(shared, cache, "get", sid, ok=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    out = ctl(shared, cache, "delete", "--user", "cli-user").stdout
    assert "session(s) of cli-user" in out


def test_loadgen_smoke(shared, tmp_path):
    """Every call kind of the mix runs without errors and is reported with sane numbers."""
    out = str(tmp_path / "loadgen.json")
    p = subprocess.run([LOADGEN, "--addr", shared.addr, "--duration", "1", "--warmup", "0.2", "--connections", "2",
                        "--in-flight", "5", "--threads", "2", "--sessions", "200", "--batch-size", "100",
                        "--server-pid", str(shared.proc.pid),
                        "--mix", "create=1,get=1,heartbeat=1,batch=1,stream=1", "--json", "--json-out", out],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    with open(out) as f:
        assert json.load(f) == res
    assert res["config"]["connections"] == 2 and res["config"]["in_flight_per_connection"] == 5
    assert res["cpu"]["client_s"] > 0 and res["cpu"]["server_s"] > 0  # --server-pid
    for rpc in ("CreateSession", "GetSession", "Heartbeat", "HeartbeatBatch", "HeartbeatStream"):
        r = res["rpcs"][rpc]
        assert r["calls"] > 0 and r["ok"] == r["calls"] and r["errors"] == {}, (rpc, r)
        lat = r["latency_us"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"], (rpc, lat)
        assert sum(c for _, c in r["histogram_us"]) == r["calls"]
    png = str(tmp_path / "latency.png")
    plot = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tools", "sessiond", "loadgen", "plot.py"), png, out],
                          capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for rpc in ("HeartbeatBatch", "HeartbeatStream"):
        r = res["rpcs"][rpc]
        assert r["session_heartbeats_failed"] == 0
        # 100 sessions per call, all of them heartbeated.
        assert abs(r["session_heartbeats_per_s"] - 100 * r["calls_per_s"]) < 1e-6 * r["session_heartbeats_per_s"] + 1


def test_loadgen_counts_errors_by_code(daemons):
    """A server that refuses the calls shows up as errors by code, not as throughput."""
    d = daemons.start("--max-batch", "10")
    p = subprocess.run([LOADGEN, "--addr", d.addr, "--duration", "0.5", "--warmup", "0", "--in-flight", "2",
                        "--sessions", "50", "--batch-size", "20", "--mix", "batch=1", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)["rpcs"]["HeartbeatBatch"]
    assert r["calls"] > 0 and r["ok"] == 0 and r["errors"] == {"INVALID_ARGUMENT": r["calls"]}
    assert r["session_heartbeats_per_s"] == 0
