#!/usr/bin/python3
"""bench/plot.py RESULTS.json OUT.png: throughput against session count,
one panel per operation, one line per implementation (solid: 1 thread,
dashed: 2 threads)."""
import sys
from typing import List

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402

import resultlib  # noqa: E402

OPS = ["Get", "GetByConnection", "Heartbeat", "StatsPinned", "ListByUser", "Create", "Delete", "Mixed"]
COLORS = {"engine": "C0", "rwlock": "C1", "redis_pipelined": "C2", "redis_sync": "C3", "ck_ht": "C4", "ck_hs": "C5"}


def main(argv: List[str]) -> int:
    recs = resultlib.records(resultlib.load(argv[1]))
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, op in zip(axes.flat, OPS):
        for impl, color in COLORS.items():
            for threads, style in ((1, "-"), (2, "--")):
                pts = sorted(
                    (r["n"], r["raw"]["items_per_second"])
                    for r in recs
                    if r["op"] == op and r["impl"] == impl and r["threads"] == threads and not r["error"]
                    and "items_per_second" in r["raw"]
                )
                if not pts:
                    continue
                xs, ys = zip(*pts)
                label = f"{impl} ({threads}t)"
                ax.plot(xs, ys, style, color=color, marker="o", markersize=3, label=label)
        ax.set_title(op)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sessions")
        ax.set_ylabel("ops/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("afsm: throughput against session count")
    fig.tight_layout()
    fig.savefig(argv[2], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
