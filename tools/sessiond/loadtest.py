#!/usr/bin/python3
"""A bounded load test for sessiond: Create, Get and Heartbeat, mixed in
equal parts, with a fixed number of calls in flight, for a fixed time.

    tools/sessiond/loadtest.py                       # starts build/tools/sessiond/sessiond on loopback
    tools/sessiond/loadtest.py --addr 127.0.0.1:50051 --duration 20 --concurrency 64

Prints QPS and p50 / p99 latency per RPC (and --json for a machine-readable
line). The client runs on the same machine as the server, so on a small
box the Python client (grpcio futures, one GIL) is usually what saturates
first: read the numbers as a floor for the server.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.realpath(__file__))
ROOT = os.path.realpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "sessionctl"))


def load_stubs():
    import importlib.machinery
    import importlib.util
    path = os.path.join(ROOT, "tools", "sessionctl", "sessionctl")
    loader = importlib.machinery.SourceFileLoader("sessionctl_mod", path)
    spec = importlib.util.spec_from_loader("sessionctl_mod", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod.load_stubs(os.path.join(ROOT, "tools", "proto", "session.proto"))


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


class Load:
    OPS = ("Create", "Get", "Heartbeat")

    def __init__(self, stub, pb, concurrency: int, duration: float, seed_sessions: int) -> None:
        self.stub, self.pb = stub, pb
        self.concurrency, self.duration = concurrency, duration
        self.lat: Dict[str, List[float]] = {op: [] for op in self.OPS}
        self.errors: Dict[str, int] = {op: 0 for op in self.OPS}
        self.first_error = ""
        self.ids: List[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.inflight = 0
        self.seq = 0
        for f in [stub.CreateSession.future(self._create_req(), timeout=30) for _ in range(seed_sessions)]:
            self.ids.append(f.result().session.session_id)

    def _create_req(self):
        return self.pb.CreateSessionRequest(user_id="load-%d" % random.randrange(100000), client_ip="10.0.0.1",
                                            client_port=random.randrange(65536), metadata={"app": "loadtest"})

    def _issue(self) -> None:
        if time.perf_counter() >= self.end:
            with self.lock:
                self.inflight -= 1
                if self.inflight == 0:
                    self.done.set()
            return
        with self.lock:
            self.seq += 1
            op = self.OPS[self.seq % 3]
        if op == "Create":
            fut = self.stub.CreateSession.future(self._create_req(), timeout=10)
        elif op == "Get":
            fut = self.stub.GetSession.future(self.pb.GetSessionRequest(session_id=random.choice(self.ids)),
                                              timeout=10)
        else:
            fut = self.stub.Heartbeat.future(self.pb.HeartbeatRequest(session_id=random.choice(self.ids)),
                                             timeout=10)
        t0 = time.perf_counter()
        fut.add_done_callback(lambda f, op=op, t0=t0: self._done(op, t0, f))

    def _done(self, op: str, t0: float, fut) -> None:
        dt = time.perf_counter() - t0
        exc = fut.exception()
        if exc is None:
            self.lat[op].append(dt)
            if op == "Create":
                self.ids.append(fut.result().session.session_id)
        else:
            self.errors[op] += 1
            if not self.first_error:
                self.first_error = "%s: %s" % (op, exc)
        self._issue()

    def run(self) -> float:
        self.start = time.perf_counter()
        self.end = self.start + self.duration
        self.inflight = self.concurrency
        for _ in range(self.concurrency):
            self._issue()
        self.done.wait(self.duration + 60)
        return time.perf_counter() - self.start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="", help="a running sessiond; default: start one on loopback")
    ap.add_argument("--sessiond", default=os.path.join(ROOT, "build", "tools", "sessiond", "sessiond"))
    ap.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    ap.add_argument("--seed-sessions", type=int, default=1000, help="sessions created before the clock starts")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the results")
    a = ap.parse_args()

    pb2, pb2_grpc = load_stubs()
    import grpc

    proc = None
    addr = a.addr
    if not addr:
        log = tempfile.NamedTemporaryFile(prefix="sessiond-load-", suffix=".log", delete=False)
        proc = subprocess.Popen([a.sessiond, "--listen", "127.0.0.1:0", "--metrics-listen", "off",
                                 "--log-level", "info"], stderr=log)
        deadline = time.monotonic() + 20
        while not addr:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("loadtest: sessiond did not start; see %s" % log.name)
            with open(log.name) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if rec.get("msg") == "sessiond listening":
                        addr = rec["grpc"]
            time.sleep(0.05)
    try:
        channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb2_grpc.SessionServiceStub(channel)
        load = Load(stub, pb2, a.concurrency, a.duration, a.seed_sessions)
        elapsed = load.run()
        results = {"duration_s": round(elapsed, 3), "concurrency": a.concurrency, "ops": {}}
        total = 0
        print("sessiond load test: %.1f s, %d calls in flight, server %s" % (elapsed, a.concurrency, addr))
        print("%-10s %10s %10s %10s %10s %8s" % ("rpc", "calls", "qps", "p50_ms", "p99_ms", "errors"))
        for op in Load.OPS:
            lat = sorted(load.lat[op])
            qps = len(lat) / elapsed
            total += len(lat)
            p50, p99 = percentile(lat, 0.50) * 1e3, percentile(lat, 0.99) * 1e3
            results["ops"][op] = {"calls": len(lat), "qps": round(qps, 1), "p50_ms": round(p50, 3),
                                  "p99_ms": round(p99, 3), "errors": load.errors[op]}
            print("%-10s %10d %10.0f %10.3f %10.3f %8d" % (op, len(lat), qps, p50, p99, load.errors[op]))
        results["total_qps"] = round(total / elapsed, 1)
        print("%-10s %10d %10.0f" % ("total", total, total / elapsed))
        if load.first_error:
            print("first error: %s" % load.first_error)
        if a.json:
            print(json.dumps(results, sort_keys=True))
        channel.close()
        return 1 if any(load.errors.values()) else 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
