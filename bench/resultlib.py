"""Reading bench/out/results.json: one record per benchmark run, with the
name's parts split out (google-benchmark names look like
"Get/engine/n:1000000/min_time:0.200/real_time/threads:2").

A record's "pass" says which bench/run pass made it (merge.py copies it
from each part's context): "main" runs every benchmark once; "goals" runs
issue 15's goal benchmarks several times, randomly interleaved, one record
per repetition ("rep")."""
import json
import statistics
from typing import Any, Dict, List, Optional


def load(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def parse(bench: Dict[str, Any]) -> Dict[str, Any]:
    """Splits a benchmark's name into op, impl and its key:value fields."""
    parts = bench["name"].split("/")
    rec: Dict[str, Any] = {"op": parts[0], "impl": parts[1] if len(parts) > 1 else "", "raw": bench}
    for p in parts[2:]:
        if ":" in p:
            k, v = p.split(":", 1)
            rec[k] = v
    rec["n"] = int(rec.get("n", 0))
    rec["threads"] = int(bench.get("threads", rec.get("threads", 1)))
    rec["error"] = bench.get("error_occurred", False)
    rec["pass"] = bench.get("afsm_pass", "main")
    rec["rep"] = int(bench.get("repetition_index", 0))
    return rec


def records(data: Dict[str, Any], which: str = "main") -> List[Dict[str, Any]]:
    """The runs of one pass ("main" or "goals"); google-benchmark's own
    aggregates (mean, median, ...) are left out: the report computes its
    own from the runs."""
    return [p for p in (parse(b) for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration")
            if p["pass"] == which]


def find(recs: List[Dict[str, Any]], **want: Any) -> Optional[Dict[str, Any]]:
    """The first record whose fields equal every given value, or None."""
    for r in recs:
        if r["error"]:
            continue
        if all(str(r.get(k)) == str(v) for k, v in want.items()):
            return r
    return None


def value(rec: Optional[Dict[str, Any]], counter: str = "items_per_second") -> Optional[float]:
    if rec is None:
        return None
    v = rec["raw"].get(counter)
    return float(v) if v is not None else None


def samples(recs: List[Dict[str, Any]], counter: str = "items_per_second", per_cpu: bool = False,
            **want: Any) -> List[float]:
    """The counter of every run (every repetition) whose fields equal the
    given values, errors left out. per_cpu: scaled from wall time to the
    benchmark thread's CPU time (items_per_second * real_time / cpu_time).
    On a shared machine a descheduled thread inflates wall time but not CPU
    time (a stall on memory still counts as CPU time), so for one thread
    that is the steadier number; not for several threads (google-benchmark
    reports one thread's CPU time there)."""
    out: List[float] = []
    for r in recs:
        if r["error"] or not all(str(r.get(k)) == str(v) for k, v in want.items()):
            continue
        v = value(r, counter)
        if v is None:
            continue
        if per_cpu:
            real, cpu = value(r, "real_time"), value(r, "cpu_time")
            if not real or not cpu:
                continue
            v = v * real / cpu
        out.append(v)
    return out


def median(xs: List[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None
