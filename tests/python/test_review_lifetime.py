"""Review 14: the Python binding's close gate against its own hooks.

Each scenario runs in a child interpreter with a timeout: the failure mode
being guarded against is a hang (close waiting for the very call that is
running it), and a hung thread inside the test process could not be undone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import afsm

BINDING = Path(afsm.__file__).resolve().parents[1]
DEADLINE_S = 30

# Engine.close() is documented to raise RuntimeError from any hook (on_event,
# on_log, clock). The clock hook is fired by a gated call (now()), so a close
# that instead waits for in-flight calls waits for itself, forever.
CLOSE_FROM_CLOCK = """
import afsm
box = {}

def clock():
    if box.get("armed"):
        box["armed"] = False
        try:
            box["engine"].close()
            box["result"] = "close returned"
        except BaseException as exc:
            box["result"] = type(exc).__name__
    return 1_000_000_000

engine = afsm.Engine(clock=clock, manual_reaper=True)
box["engine"] = engine
box["armed"] = True
engine.now()
print("RESULT", box.get("result"), engine.closed, flush=True)
engine.close()
print("CLOSED", engine.closed, flush=True)
"""


def run_child(source: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(BINDING) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(source)],
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"child hung for {DEADLINE_S}s; output so far: {exc.stdout!r}") from None


def test_close_from_the_clock_hook_raises_runtime_error() -> None:
    done = run_child(CLOSE_FROM_CLOCK)
    assert done.returncode == 0, done.stderr
    assert "RESULT RuntimeError False" in done.stdout, done.stdout
    assert "CLOSED True" in done.stdout, done.stdout
