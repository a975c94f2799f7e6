#!/usr/bin/python3
"""tools/sessiond/loadgen/plot.py OUT.png RUN.json [RUN.json...]: latency
percentile curves from loadgen's --json output, one line per RPC of each run
(the label is the file name), on a log scale from p50 to p99.99."""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402


def percentile_curve(hist: List[Tuple[float, int]]) -> Tuple[List[float], List[float]]:
    """(1 / (1 - q), latency_us) points from histogram buckets (upper edge, count)."""
    total = sum(c for _, c in hist)
    xs, ys, seen = [], [], 0
    for upper, count in hist:
        seen += count
        q = seen / total
        if q >= 0.5:
            xs.append(1.0 / max(1.0 - q, 1.0 / (10 * total)))
            ys.append(upper)
    return xs, ys


def main(argv: List[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    fig, ax = plt.subplots(figsize=(9, 5))
    for path in argv[2:]:
        with open(path) as f:
            run: Dict = json.load(f)
        name = os.path.splitext(os.path.basename(path))[0]
        for rpc, r in run["rpcs"].items():
            if not r["histogram_us"]:
                continue
            xs, ys = percentile_curve(r["histogram_us"])
            ax.plot(xs, ys, label="%s %s (%.0f/s)" % (name, rpc, r["calls_per_s"]))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [2, 10, 100, 1000, 10000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["p50", "p90", "p99", "p99.9", "p99.99"])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (us)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(argv[1], dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
