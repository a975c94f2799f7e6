"""Reading bench/out/results.json: one record per benchmark, with the
name's parts split out (google-benchmark names look like
"Get/engine/n:1000000/min_time:0.200/real_time/threads:2")."""
import json
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
    return rec


def records(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [parse(b) for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"]


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
