"""afsm.uuid7's ordering promise against the generator's per-thread stamp blocks (issue 15)."""

from __future__ import annotations

import queue
import threading
import uuid

import afsm


def test_uuid7_increases_across_threads() -> None:
    """uuid7() says "time-ordered, strictly increasing": each id drawn after another is larger.

    Since issue 15 the C generator gives each OS thread its own block of 64
    stamps, so two threads' ids within one millisecond interleave. Two worker
    threads draw in turns (each draw waits for the one before), x on A, y on B,
    z on A: z comes after y but from A's older block.
    """
    requests: list[queue.Queue[bool]] = [queue.Queue(), queue.Queue()]
    replies: list[queue.Queue[uuid.UUID]] = [queue.Queue(), queue.Queue()]

    def worker(k: int) -> None:
        while requests[k].get():
            replies[k].put(afsm.uuid7())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()

    def draw(k: int) -> uuid.UUID:
        requests[k].put(True)
        return replies[k].get(timeout=10)

    try:
        for attempt in range(300):
            x, y, z = draw(0), draw(1), draw(0)
            assert x < y < z, f"attempt {attempt}: {x}, then {y}, then {z}"
    finally:
        for k in range(2):
            requests[k].put(False)
        for t in threads:
            t.join(timeout=10)
