#!/usr/bin/python3
"""Merges google-benchmark JSON files into one: the main part's context
(plus each part's allocator and pass, copied into its benchmarks), every
part's benchmarks in order."""
import json
import sys
from typing import Any, Dict, List


def main(argv: List[str]) -> int:
    out_path, parts = argv[1], argv[2:]
    merged: Dict[str, Any] = {"context": {}, "benchmarks": []}
    for i, path in enumerate(parts):
        with open(path) as f:
            data = json.load(f)
        if i == 0 or "part-main" in path:
            merged["context"] = data["context"]
        for b in data["benchmarks"]:
            b["afsm_allocator"] = data["context"].get("afsm_allocator", "")
            b["afsm_pass"] = data["context"].get("afsm_pass", "main")
            merged["benchmarks"].append(b)
    with open(out_path, "w") as f:
        json.dump(merged, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
