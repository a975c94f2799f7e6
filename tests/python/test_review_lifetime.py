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


# A Handle may be released from anywhere (release() takes no gate), and a
# heartbeat through a handle fires on_event on the calling thread (CONNECTING
# -> ACTIVE). On the etcd store the heartbeat then reads the handle again
# (etcd_handle_heartbeat: after_heartbeat(h->es, &h->id)), so releasing the
# handle from that event reads freed memory. glibc rarely crashes on it, so
# the child runs under valgrind, which reports the invalid read.
RELEASE_IN_EVENT_ETCD = r"""
import socket, subprocess, tempfile, time, urllib.request
import afsm

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

client, peer = free_port(), free_port()
data = tempfile.TemporaryDirectory(prefix="afsm-review14-")
etcd = subprocess.Popen(
    ["/usr/bin/etcd", "--data-dir", data.name,
     "--listen-client-urls", f"http://127.0.0.1:{client}",
     "--advertise-client-urls", f"http://127.0.0.1:{client}",
     "--listen-peer-urls", f"http://127.0.0.1:{peer}",
     "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
     "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
endpoint = f"http://127.0.0.1:{client}"
try:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(endpoint + "/health", timeout=0.5) as r:
                if b'"true"' in r.read():
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "etcd not healthy within 60s"
        time.sleep(0.05)  # polling etcd's health, not synchronising threads
    box = {}

    def on_event(ev):
        h = box.get("h")
        if h is not None and ev.new_state == afsm.State.ACTIVE and ev.session_id == h.session_id:
            h.release()
            box["released"] = True

    engine = afsm.Engine(store="etcd", etcd_endpoints=endpoint, etcd_prefix="/review14/", on_event=on_event)
    s, _ = engine.create_session("u", "10.0.0.1", 1)
    box["h"] = engine.pin(s.id)
    box["h"].heartbeat()
    assert box.get("released"), "the heartbeat fired no CONNECTING -> ACTIVE event"
    engine.close()
    print("DONE", flush=True)
finally:
    etcd.kill()
    etcd.wait(timeout=10)
"""


def test_release_handle_from_event_fired_by_its_heartbeat_etcd() -> None:
    if not (Path("/usr/bin/valgrind").exists() and Path("/usr/bin/etcd").exists()):
        raise AssertionError("needs valgrind and etcd-server (tools/scripts/lib.sh TEST_PACKAGES)")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(BINDING) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONMALLOC"] = "malloc"  # pymalloc confuses valgrind
    try:
        done = subprocess.run(
            ["/usr/bin/valgrind", "-q", "--error-exitcode=97", sys.executable, "-c", RELEASE_IN_EVENT_ETCD],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"child hung; output so far: {exc.stdout!r}") from None
    first = done.stderr.find("Invalid read")
    assert first < 0, done.stderr[first : first + 2500]
    assert done.returncode == 0 and "DONE" in done.stdout, (done.returncode, done.stdout, done.stderr[-4000:])


# Handle.release() racing a call on the same handle from another thread:
# the C handle is freed by afsm_handle_release, so a heartbeat that has read
# the pointer must finish before the release frees it. release() therefore
# waits for the handle's calls in progress. Thread A's heartbeat fires
# on_event (CONNECTING -> ACTIVE) and, from inside it, lets thread B call
# release(): B must still be waiting when A's callback ends (the wait below
# only gives a release that does not wait the time to show it).
RELEASE_WAITS_FOR_A_CALL_IN_PROGRESS = """
import threading
import afsm

box = {"order": []}
b_returned = threading.Event()

def release_on_b():
    box["h"].release()
    box["order"].append("release returned")
    b_returned.set()

def on_event(ev):
    h = box.get("h")
    if h is not None and ev.new_state == afsm.State.ACTIVE and "b" not in box:
        box["b"] = threading.Thread(target=release_on_b)
        box["b"].start()
        b_returned.wait(0.5)
        box["order"].append("callback ended")

engine = afsm.Engine(manual_reaper=True, on_event=on_event)
s, _ = engine.create_session("u", "10.0.0.1", 1)
box["h"] = engine.pin(s.id)
box["h"].heartbeat()
box["order"].append("heartbeat returned")
box["b"].join(20)
print("ORDER", box["order"], flush=True)
print("PINNED", engine.pinned(), box["h"].released, flush=True)
engine.close()
"""


def test_release_waits_for_a_heartbeat_in_progress_on_another_thread() -> None:
    done = run_child(RELEASE_WAITS_FOR_A_CALL_IN_PROGRESS)
    assert done.returncode == 0, done.stderr
    assert "ORDER ['callback ended', 'heartbeat returned', 'release returned']" in done.stdout or (
        "ORDER ['callback ended', 'release returned', 'heartbeat returned']" in done.stdout
    ), done.stdout
    assert "PINNED 0 True" in done.stdout, done.stdout


# Releasing a handle from the event its own heartbeat fired cannot wait for
# that heartbeat (it is the caller): the release is recorded and done as the
# heartbeat returns, so pinned() is 0 right after it.
RELEASE_OWN_HANDLE_FROM_ITS_EVENT = """
import afsm

box = {}

def on_event(ev):
    h = box.get("h")
    if h is not None and ev.new_state == afsm.State.ACTIVE:
        h.release()
        box["released in callback"] = h.released

engine = afsm.Engine(manual_reaper=True, on_event=on_event)
s, _ = engine.create_session("u", "10.0.0.1", 1)
box["h"] = engine.pin(s.id)
box["h"].heartbeat()
print("STATE", box.get("released in callback"), engine.pinned(), flush=True)
try:
    box["h"].heartbeat()
except ValueError as exc:
    print("AFTER", type(exc).__name__, flush=True)
engine.close()
print("CLOSED", engine.closed, flush=True)
"""


def test_release_own_handle_from_the_event_its_heartbeat_fired() -> None:
    done = run_child(RELEASE_OWN_HANDLE_FROM_ITS_EVENT)
    assert done.returncode == 0, done.stderr
    assert "STATE True 0" in done.stdout, done.stdout
    assert "AFTER HandleReleased" in done.stdout, done.stdout  # a ValueError (caught as one)
    assert "CLOSED True" in done.stdout, done.stdout
