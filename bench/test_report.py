#!/usr/bin/python3
"""bench/test_report.py: report.py's goal rows from a synthetic results
file whose numbers are known: each goal's ratio is median(A) / median(B)
over the goals pass's runs (not one run, not the main pass's run), its
verdict follows that ratio, the spread column is each side's min..max
around its median, and report.py fails when the goals pass lacks a run.
Run by tools/scripts/test before the benchmark smoke run; stdlib only."""
import json
import os
import subprocess
import sys
import tempfile
import unittest
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import report  # noqa: E402

N = 1000
REPS = 3


def run(name: str, rep: int, ips: float, pass_: str = "goals", threads: int = 1, cpu_scale: float = 1.0,
        **counters: float) -> Dict[str, Any]:
    """One google-benchmark run record as merge.py leaves it."""
    real = 1e9 / ips if ips else 1.0
    b: Dict[str, Any] = {"name": name, "run_name": name, "run_type": "iteration", "repetitions": REPS,
                         "repetition_index": rep, "threads": threads, "iterations": 1000, "real_time": real,
                         "cpu_time": real * cpu_scale, "time_unit": "ns", "afsm_allocator": "jemalloc",
                         "afsm_pass": pass_}
    if ips:
        b["items_per_second"] = ips
    b.update(counters)
    return b


def name_of(op: str, impl: str, t: Optional[int], pct: Optional[str]) -> str:
    if pct is not None:
        return f"Expire/{impl}/pct:{pct}/n:{N}/iterations:2/manual_time"
    return f"{op}/{impl}/n:{N}/min_time:0.010/real_time/threads:{t}"


class GoalRows(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        # Every goal benchmark at 1M ops/s in every run, unless a test says otherwise.
        self.values: Dict[Any, List[float]] = {k: [1e6] * REPS for k in report.GOAL_BENCHES}
        self.main: List[Dict[str, Any]] = []
        self.drop: List[Any] = []
        self.cpu_scale: Dict[Any, float] = {}  # cpu_time / real_time of a benchmark's runs

    def tearDown(self) -> None:
        self.dir.cleanup()

    def report(self, reps_arg: Optional[int] = REPS) -> Tuple[int, str, str]:
        benches = list(self.main)
        for key, vals in self.values.items():
            if key in self.drop:
                continue
            op, impl, t, pct = key
            for i, v in enumerate(vals):
                if pct is not None:
                    benches.append(run(name_of(op, impl, t, pct), i, 0, cpu_ms_per_expiry=v))
                else:
                    benches.append(run(name_of(op, impl, t, pct), i, v, threads=t or 1,
                                       cpu_scale=self.cpu_scale.get(key, 1.0)))
        data = {"context": {"date": "test", "afsm_mode": "smoke", "afsm_pass": "main"}, "benchmarks": benches}
        src, out = os.path.join(self.dir.name, "results.json"), os.path.join(self.dir.name, "RESULTS.md")
        with open(src, "w") as f:
            json.dump(data, f)
        args = [sys.executable, os.path.join(HERE, "report.py"), src, out]
        if reps_arg is not None:
            args += ["--goal-reps", str(reps_arg)]
        p = subprocess.run(args, capture_output=True, text=True, check=False)
        text = ""
        if os.path.exists(out):
            with open(out) as f:
                text = f.read()
        return p.returncode, text, p.stderr

    def row(self, text: str, start: str) -> str:
        rows = [line for line in text.splitlines() if line.startswith("| " + start)]
        self.assertEqual(len(rows), 1, f"one row starting {start!r} in:\n{text}")
        return rows[0]

    def test_ratio_is_of_medians_and_decides_the_verdict(self) -> None:
        # Run 0 alone would read 0.50x (not met); the medians read 1.70x (met).
        self.values[("Create", "engine", 2, None)] = [0.5e6, 1.7e6, 9e6]
        self.values[("Create", "engine", 1, None)] = [1.0e6, 0.1e6, 1.0e6]
        # The main pass's single run of the same benchmark must not enter the goal row.
        self.main.append(run(name_of("Create", "engine", 2, None), 0, 0.1e6, pass_="main", threads=2))
        rc, text, err = self.report()
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.row(text, "5. Create"),
                         "| 5. Create, engine: 2 threads / 1 thread | 1.70x | >= 1.60x | met | "
                         "A -71..+429%, B -90..+0% (3, 3 runs) |")
        self.assertIn("medians of 3 interleaved runs", text)

    def test_goal_5_is_set_against_the_line_transfer_floor(self) -> None:
        # 200 ns a transfer; a create 500 ns on 1 thread, 800 ns of each
        # thread's time on 2 (2.5M/s together): 300 ns more, 1.5 transfers;
        # 1.6x would allow 2 * 500 / 1.6 - 500 = 125 ns (0.6 transfers).
        self.values[("LineTransfer", "floor", 2, None)] = [5e6] * REPS
        self.values[("Create", "engine", 1, None)] = [2e6] * REPS
        self.values[("Create", "engine", 2, None)] = [2.5e6] * REPS
        rc, text, err = self.report()
        self.assertEqual(rc, 0, err)
        self.assertIn("takes 200 ns one way (`LineTransfer/floor`). A create takes 500 ns on 1 thread and 800 ns "
                      "of each thread's time on 2 threads, 300 ns more: 1.5 line transfers' worth. 1.6x allows "
                      "125 ns more (0.6 transfers).", text)

    def test_not_met_on_the_median_even_if_one_run_meets_it(self) -> None:
        self.values[("Delete", "engine", 2, None)] = [3e6, 1e6, 1e6]
        rc, text, err = self.report()
        self.assertEqual(rc, 0, err)
        self.assertIn("| 1.00x | >= 1.50x | **not met** |", self.row(text, "3. Delete, 2 threads"))

    def test_cpu_ratio_uses_each_runs_cpu_time(self) -> None:
        # Get engine runs at 0.7M ops/s wall; its CPU time is half its wall
        # time in every run (descheduled half the time), so 1.4M ops/s of CPU
        # time: wall 0.70x, CPU 1.40x of the floor.
        self.values[("Get", "engine", 1, None)] = [0.7e6] * REPS
        self.cpu_scale[("Get", "engine", 1, None)] = 0.5
        rc, text, err = self.report()
        self.assertEqual(rc, 0, err)
        self.assertIn("| 0.70x | 1.40x | >= 0.80x | met on CPU time only |", self.row(text, "1. Get"))

    def test_expiry_ratio_is_scan_over_wheel_cpu(self) -> None:
        self.values[("Expire", "rwlock_scan", None, "1")] = [80.0, 90.0, 70.0]
        self.values[("Expire", "engine", None, "1")] = [2.0, 1.0, 1.6]
        rc, text, err = self.report()
        self.assertEqual(rc, 0, err)
        self.assertIn("| 50.00x | >= 50.00x | met |", self.row(text, "4. Expire 1%"))

    def test_one_session_per_user_expiry_is_its_own_line_not_goal_4(self) -> None:
        for impl, ms in (("engine", 4.0), ("rwlock_scan", 120.0)):
            self.main.append(run(f"ExpireOnePerUser/{impl}/pct:1/n:{N}/iterations:2/manual_time", 0, 0,
                                 pass_="main", cpu_ms_per_expiry=ms))
        self.values[("Expire", "rwlock_scan", None, "1")] = [100.0] * REPS
        self.values[("Expire", "engine", None, "1")] = [2.0] * REPS
        rc, text, err = self.report()
        self.assertEqual(rc, 0, err)
        self.assertIn("1%: wheel 4.000 ms, scan 120.000 ms, scan / wheel 30.00x.", text)
        self.assertIn("| 50.00x | >= 50.00x | met |", self.row(text, "4. Expire 1%"))

    def test_huge_pages_rows_take_every_run_of_every_round(self) -> None:
        # Two rounds of one off and one on process, 2 runs each: the on side
        # reads 3M in round 1 and 0.5M in round 2 (a burst of other load),
        # so its median is over all four runs (1.75M), not one process's.
        for rnd, on in ((0, 3e6), (1, 0.5e6)):
            for rep in range(2):
                for op in ("Get", "Heartbeat"):
                    for side, ips in (("off", 1e6), ("on", on)):
                        r = run(f"{op}/engine_thp_{side}/alloc:jemalloc/n:{N}/min_time:0.010/real_time/threads:1",
                                rnd * 2 + rep, ips, pass_="main", anon_huge_mb=0 if side == "off" else 10)
                        r["repetitions"] = 2
                        self.main.append(r)
        rc, text, err = self.report()
        self.assertEqual(rc, 0, err)
        self.assertIn("| 1.75x | 1.75x | >= 1.00x | met |", self.row(text, "6. Huge pages (jemalloc, MALLOC_CONF=thp:always): Get"))
        self.assertIn("(4, 4 runs)", self.row(text, "6. Huge pages (jemalloc, MALLOC_CONF=thp:always): Get"))
        self.assertIn("in 2 rounds of 2 interleaved runs a process", text)
        self.assertIn("| jemalloc | Get | 1.00M | 1.75M | 1.75 | 0 | 10 |", text)

    def test_a_ratio_just_below_its_need_is_not_shown_as_the_need(self) -> None:
        # 0.996x of the rwlock design: two digits would print "1.00x" beside
        # "not met"; the row shows enough digits to say why.
        self.values[("Delete", "engine", 1, None)] = [0.996e6] * REPS
        rc, text, err = self.report()
        self.assertEqual(rc, 0, err)
        self.assertIn("| 0.9960x | 0.9960x | >= 1.00x | **not met** |", self.row(text, "3. Delete, 1 thread"))

    def test_missing_benchmark_fails(self) -> None:
        self.drop.append(("Delete", "rwlock", 2, None))
        rc, text, err = self.report()
        self.assertEqual(rc, 1)
        self.assertIn(f"Delete/rwlock/n:{N}/threads:2: 0 runs in the goals pass, expected {REPS}", err)
        self.assertIn("| n/a | >= 1.50x | not measured |", self.row(text, "3. Delete, 2 threads"))

    def test_missing_run_fails(self) -> None:
        self.values[("Get", "floor", 1, None)] = [1e6] * (REPS - 1)
        rc, _, err = self.report()
        self.assertEqual(rc, 1)
        self.assertIn(f"Get/floor/n:{N}/threads:1: {REPS - 1} runs in the goals pass, expected {REPS}", err)

    def test_no_goals_pass_fails(self) -> None:
        self.values = {}
        self.main.append(run(name_of("Get", "engine", 1, None), 0, 1e6, pass_="main"))
        rc, _, err = self.report(reps_arg=None)
        self.assertEqual(rc, 1)
        self.assertIn("no goals pass", err)

    def test_filter_selects_exactly_the_goal_benchmarks(self) -> None:
        import re
        pattern = re.compile(report.goal_filter(N))
        for key in report.GOAL_BENCHES:
            self.assertTrue(pattern.search(name_of(*key)), key)
        for other in ("Get/engine/n:1000/min_time:0.010/real_time/threads:2",
                      f"Get/engine/n:{N}0/min_time:0.010/real_time/threads:1", "Get/rwlock/n:1000/min_time:0.010/"
                      "real_time/threads:1", "Create/rwlock/n:1000/min_time:0.010/real_time/threads:1",
                      "Get/redis_sync/n:1000/min_time:0.010/real_time/threads:1",
                      f"ExpireOnePerUser/engine/pct:1/n:{N}/iterations:2/manual_time"):
            self.assertIsNone(pattern.search(other), other)


if __name__ == "__main__":
    unittest.main()
