#!/usr/bin/python3
"""A small benchmark of the afsm Python binding: ops/s per call kind.

Run from the source tree (``/usr/bin/python3 bindings/python/bench.py``);
``-n`` sets the number of sessions (default 100000). Single calls cross the
ctypes boundary once per operation; batches once per 65536 ids.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import afsm  # noqa: E402
from afsm import Stats  # noqa: E402


def timed(label: str, n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    rate = n / elapsed
    print(f"{label:<34} {n:>8} ops {elapsed:8.3f} s {rate:>12,.0f} ops/s {1e9 / rate:>8.0f} ns/op")
    return rate


def threaded(label: str, threads: int, work: list[list[object]], fn: Callable[[object], object]) -> float:
    """Runs fn over each list of ``work`` on its own thread; ops/s of them all together.

    ctypes releases the GIL during each C call, so the threads overlap only
    inside the library: the Python side of every call still runs one at a time.
    """
    barrier = threading.Barrier(threads + 1)

    def run(items: list[object]) -> None:
        barrier.wait()
        for item in items:
            fn(item)

    pool = [threading.Thread(target=run, args=(work[i],)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    n = sum(len(w) for w in work)
    rate = n / elapsed
    print(f"{label:<34} {n:>8} ops {elapsed:8.3f} s {rate:>12,.0f} ops/s {1e9 / rate:>8.0f} ns/op")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100_000, help="sessions (default 100000)")
    args = parser.parse_args()
    n = args.n
    print(f"afsm {afsm.library_version()} from {afsm.library_path()}, python {sys.version.split()[0]}")
    delta = Stats(packets_sent=1, bytes_sent=1200)
    with afsm.Engine(capacity_hint=n) as engine:
        ids = []

        def create() -> None:
            for i in range(n):
                s, _ = engine.create_session("bench-user-%d" % (i % 1000), "10.0.0.1", 40000)
                ids.append(s.id)

        def get() -> None:
            for sid in ids:
                engine.get(sid)

        def heartbeat() -> None:
            for sid in ids:
                engine.heartbeat(sid)

        def add_stats() -> None:
            for sid in ids:
                engine.add_stats(sid, delta)

        print("-- single calls")
        timed("create_session", n, create)
        timed("get", n, get)
        timed("heartbeat", n, heartbeat)
        timed("add_stats", n, add_stats)

        handles = [engine.pin(sid) for sid in ids[: min(n, 10_000)]]
        m = len(handles) * 10

        def handle_heartbeat() -> None:
            for _ in range(10):
                for h in handles:
                    h.heartbeat()

        def handle_add_stats() -> None:
            for _ in range(10):
                for h in handles:
                    h.add_stats(delta)

        print("-- tokens")
        tokens: list[str] = []

        def issue() -> None:
            for sid in ids:
                tokens.append(engine.issue_token(sid))

        def validate() -> None:
            for token in tokens:
                engine.validate_token(token)

        timed("issue_token", n, issue)
        timed("validate_token", n, validate)
        half = [tokens[: n // 2], tokens[n // 2:]]
        threaded("validate_token, 2 threads", 2, half, engine.validate_token)  # type: ignore[arg-type]
        ids_half = [ids[: n // 2], ids[n // 2:]]
        threaded("issue_token, 2 threads", 2, ids_half, engine.issue_token)  # type: ignore[arg-type]

        def validate_bad() -> None:
            for _ in range(n):
                try:
                    engine.validate_token("v1.AAAA")
                except afsm.MalformedToken:
                    pass

        timed("validate_token (malformed)", n, validate_bad)
        timed("metrics()", 10_000, lambda: [engine.metrics() for _ in range(10_000)])
        timed("metrics_text()", 10_000, lambda: [engine.metrics_text() for _ in range(10_000)])

        print("-- handles")
        timed("Handle.heartbeat", m, handle_heartbeat)
        timed("Handle.add_stats", m, handle_add_stats)
        for h in handles:
            h.release()

        print("-- batches (one C call per 65536 ids)")
        timed("get_many", n, lambda: engine.get_many(ids))
        timed("heartbeat_many", n, lambda: engine.heartbeat_many(ids))
        timed("add_stats_many", n, lambda: engine.add_stats_many(ids, delta))

        print("-- listing")
        timed("iter_sessions (pages of 10000)", n, lambda: sum(1 for _ in engine.iter_sessions()))

        def delete() -> None:
            for sid in ids:
                engine.delete(sid)

        timed("delete", n, delete)
        assert engine.counts().total == 0


if __name__ == "__main__":
    main()
