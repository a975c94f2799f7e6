"""sessionctl against a real daemon, and the load test's smoke run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from conftest import ROOT, SESSIONCTL

LOADTEST = os.path.join(ROOT, "tools", "sessiond", "loadtest.py")


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
        result["p"] = ctl(shared, cache, "watch", "--user", "cli-user", "--count", "1", "--for", "30")

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


def test_loadtest_smoke(shared):
    p = subprocess.run(["/usr/bin/python3", LOADTEST, "--addr", shared.addr, "--duration", "2", "--concurrency",
                        "16", "--seed-sessions", "50", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    for op in ("Create", "Get", "Heartbeat"):
        assert res["ops"][op]["calls"] > 0 and res["ops"][op]["errors"] == 0
        assert res["ops"][op]["p99_ms"] >= res["ops"][op]["p50_ms"] > 0
