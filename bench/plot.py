#!/usr/bin/python3
"""bench/plot.py RESULTS.json OUT.png [FLOOR.png]: throughput against
session count, one panel per operation, one line per implementation
(solid: 1 thread, dashed: 2 threads); and, when FLOOR.png is given, the
engine's Get and GetBatch against the get + copy floor (issue 15)."""
import sys
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402

import resultlib  # noqa: E402

OPS = ["Get", "GetByConnection", "Heartbeat", "StatsPinned", "ListByUser", "Create", "Delete", "Mixed", "AddStats",
       "GetBatch", "HeartbeatBatch", "AddStatsBatch"]
COLORS = {"engine": "C0", "rwlock": "C1", "redis_pipelined": "C2", "redis_sync": "C3", "ck_ht": "C4", "ck_hs": "C5",
          "floor": "C7"}


def points(recs: List[Dict[str, Any]], op: str, impl: str, threads: int) -> List[Any]:
    return sorted(
        (r["n"], r["raw"]["items_per_second"])
        for r in recs
        if r["op"] == op and r["impl"] == impl and r["threads"] == threads and not r["error"]
        and "items_per_second" in r["raw"]
    )


def throughput(recs: List[Dict[str, Any]], out: str) -> None:
    fig, axes = plt.subplots(3, 4, figsize=(18, 12))
    for ax, op in zip(axes.flat, OPS):
        for impl, color in COLORS.items():
            for threads, style in ((1, "-"), (2, "--")):
                pts = points(recs, op, impl, threads)
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color=color, marker="o", markersize=3, label=f"{impl} ({threads}t)")
        ax.set_title(op)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sessions")
        ax.set_ylabel("ops/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("afsm: throughput against session count")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def floor(recs: List[Dict[str, Any]], out: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 6))
    lines = [("Get", "engine", "C0", "-", "engine Get"), ("GetBatch", "engine", "C0", ":", "engine GetBatch (16)"),
             ("Get", "floor", "k", "-", "get + copy floor"), ("GetBatch", "floor", "k", ":", "batched floor (16)"),
             ("Get", "floor_user", "k", "--", "floor + the user hop (the engine's layout)"),
             ("Get", "rwlock", "C1", "-", "rwlock Get"), ("Get", "ck_hs", "C5", "--", "bare ck_hs probe")]
    for op, impl, color, style, label in lines:
        pts = points(recs, op, impl, 1)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, color=color, marker="o", markersize=4, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sessions")
    ax.set_ylabel("ops/s (1 thread; batches: ids/s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Get against the get + copy floor")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv: List[str]) -> int:
    recs = resultlib.records(resultlib.load(argv[1]))
    throughput(recs, argv[2])
    if len(argv) > 3:
        floor(recs, argv[3])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
