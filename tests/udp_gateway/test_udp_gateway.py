#!/usr/bin/python3
"""The UDP gateway end to end (issue 17): a real udp-gateway on 127.0.0.1,
driven by a real udp-load, in every mode.

handles mode, 1,000 connections: every session's counters equal what the
load generator sent (checked by udp-load over the gateway's control
datagrams, bye answers and queries alike); the 100 silent connections
expire with one EXPIRED event and one dropped handle each; the 100 "bye"
ones are gone; after every active connection says bye the engine has no
session and no pinned handle; SIGUSR1 writes Prometheus text that promtool
accepts and that counts the 100 expiries; SIGTERM stops the gateway with
exit status 0 (it refuses to close an engine with pinned handles).
A mailbox too small for the expiries falls back to sweeping, leaking
nothing. lookup mode: the same counters, without handles. off mode: echoes.
Bad flags: a specific message naming the flag and its limits.

Usage: test_udp_gateway.py UDP_GATEWAY UDP_LOAD. Every wait has a deadline;
each gateway is bounded by --run-seconds and killed on any failure.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

DEADLINE_S = 20.0
# Sanitizer builds run several times slower: rate-limited load keeps the
# scenario the same there, only slower machines need the generous deadlines.
RATE = "20000"


def wait_for(what: str, condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("timed out after %.0fs waiting for %s" % (deadline_s, what))


def fields(line: str) -> Dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


class Gateway:
    """A udp-gateway process whose stdout and stderr go to files."""

    def __init__(self, binary: str, workdir: str, *flags: str) -> None:
        self.out_path = os.path.join(workdir, "gateway.out")
        self.err_path = os.path.join(workdir, "gateway.err")
        self.out = open(self.out_path, "w")
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen([binary, "--run-seconds", "120", *flags], stdout=self.out, stderr=self.err)
        try:
            wait_for("the gateway's listening line",
                     lambda: "listening on" in self.stdout() or self.proc.poll() is not None)
            match = re.search(r"127\.0\.0\.1:(\d+)", self.stdout())
            assert match, "gateway did not start: %s %s" % (self.stdout(), self.stderr())
        except BaseException:
            self.kill()
            raise
        self.port = match.group(1)

    def stdout(self) -> str:
        with open(self.out_path) as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.err_path) as f:
            return f.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=DEADLINE_S)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        self.err.close()


def run_load(load: str, port: str, *flags: str) -> str:
    done = subprocess.run([load, "--port", port, *flags], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError("udp-load failed (%d):\n%s%s" % (done.returncode, done.stdout, done.stderr))
    return done.stdout


def test_handles(gateway_bin: str, load: str, workdir: str) -> None:
    gw = Gateway(gateway_bin, workdir, "--threads", "2", "--timeout-ms", "1500", "--tick-ms", "20")
    try:
        out = run_load(load, gw.port, "--connections", "1000", "--threads", "2", "--rate", RATE, "--duration-ms",
                       "2500", "--silent", "100", "--silent-after-ms", "500", "--bye", "100", "--check",
                       "--close-all", "--wait-ms", "15000")
        assert "udp-load: check passed" in out, out
        for step in ("bye: 100", "gone after bye: 100", "active: 800", "silent ones expired: 100",
                     "bye from every active connection: 800"):
            assert "check %s connections ok" % step in out, (step, out)
        summary = fields([line for line in out.splitlines() if line.startswith("udp-load: gateway ")][-1])
        sent = int(fields([line for line in out.splitlines() if "sent=" in line][0])["sent"])
        expect = {"mode": "handles", "sessions": "0", "pinned": "0", "created": "1000", "expired_events": "100",
                  "expiry_drops": "100", "bye_closes": "900", "datagrams": str(sent), "reopened": "0"}
        for key, value in expect.items():
            assert summary[key] == value, (key, value, summary)

        # The operator's view while it runs: Prometheus text on SIGUSR1.
        gw.proc.send_signal(signal.SIGUSR1)
        wait_for("metrics on stderr", lambda: "# udp-gateway metrics end" in gw.stderr())
        text = gw.stderr().split("# udp-gateway metrics end")[0]
        assert re.search(r"^session_expired_total 100$", text, re.M), text
        assert re.search(r"^session_created_total 1000$", text, re.M), text
        promtool = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                                  timeout=60)
        assert promtool.returncode == 0, promtool.stdout + promtool.stderr

        assert gw.stop() == 0, gw.stderr()
        exit_line = [line for line in gw.stdout().splitlines() if "udp-gateway: exit" in line]
        assert exit_line and fields(exit_line[0])["pinned"] == "0", gw.stdout()
    finally:
        gw.kill()


def test_mailbox_overflow(gateway_bin: str, load: str, workdir: str) -> None:
    """A mailbox of 8 cannot hold 100 expiries at once: the owner sweeps its
    flows instead, and still leaks no handle."""
    gw = Gateway(gateway_bin, workdir, "--threads", "2", "--timeout-ms", "1500", "--tick-ms", "20",
                 "--mailbox-capacity", "8")
    try:
        out = run_load(load, gw.port, "--connections", "300", "--threads", "2", "--rate", RATE, "--duration-ms",
                       "2500", "--silent", "100", "--silent-after-ms", "500", "--bye", "50", "--check",
                       "--close-all", "--wait-ms", "15000")
        assert "udp-load: check passed" in out, out
        assert gw.stop() == 0, gw.stderr()
        summary = fields([line for line in gw.stdout().splitlines() if "udp-gateway: exit" in line][0])
        assert int(summary["sweeps"]) > 0 and int(summary["sweep_drops"]) > 0, summary
        assert summary["pinned"] == "0" and summary["sessions"] == "0" and summary["expired_events"] == "100", summary
    finally:
        gw.kill()


def test_lookup(gateway_bin: str, load: str, workdir: str) -> None:
    gw = Gateway(gateway_bin, workdir, "--mode", "lookup", "--threads", "2", "--timeout-ms", "1500", "--tick-ms",
                 "20")
    try:
        out = run_load(load, gw.port, "--connections", "300", "--threads", "2", "--rate", RATE, "--duration-ms",
                       "1000", "--bye", "50", "--check", "--close-all")
        assert "udp-load: check passed" in out, out
        assert gw.stop() == 0, gw.stderr()
    finally:
        gw.kill()


def test_off(gateway_bin: str, load: str, workdir: str) -> None:
    gw = Gateway(gateway_bin, workdir, "--mode", "off", "--threads", "1")
    try:
        out = run_load(load, gw.port, "--connections", "100", "--rate", RATE, "--duration-ms", "300")
        line = fields([line for line in out.splitlines() if "sent=" in line][0])
        assert int(line["sent"]) > 0 and line["lost"] == "0", out
        assert gw.stop() == 0, gw.stderr()
        assert "sessions=0 pinned=0" in gw.stdout(), gw.stdout()
    finally:
        gw.kill()


def test_bad_flags(gateway_bin: str, load: str) -> None:
    cases: List[List[str]] = [
        [gateway_bin, "--threads", "0"],
        [gateway_bin, "--mode", "fast"],
        [gateway_bin, "--batch", "5000"],
        [load, "--connections", "10"],
        [load, "--port", "9", "--silent", "8", "--bye", "8", "--connections", "10"],
    ]
    wants = ["--threads wants a number from 1 to 256", "--mode wants off, handles or lookup",
             "--batch wants a number from 1 to 1024", "--port is required", "exceeds --connections (10)"]
    for argv, want in zip(cases, wants):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE_S)
        assert done.returncode == 2 and want in done.stderr, (argv, done.returncode, done.stderr)


def main() -> int:
    gateway_bin, load = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="udp-gateway-test-") as workdir:
        test_bad_flags(gateway_bin, load)
        for test in (test_handles, test_mailbox_overflow, test_lookup, test_off):
            start = time.monotonic()
            test(gateway_bin, load, workdir)
            print("ok: %s (%.1fs)" % (test.__name__, time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
