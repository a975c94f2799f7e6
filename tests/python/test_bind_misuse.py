"""A hostile user of the Python binding: fork, misuse of lifetimes, argument
errors whose detail must name the argument and its real limit.

Each test here failed before its fix (see the commit that added it)."""

from __future__ import annotations

import datetime
import gc
import os
import subprocess
import sys
import textwrap

import pytest

import afsm
from conftest import BINDING

# A child left over by a broken binding must not outlive its test.
CHILD_DEADLINE_S = 5.0


def _run_script(script: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(BINDING), PYTHONFAULTHANDLER="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3 * CHILD_DEADLINE_S,
    )


def test_forked_child_neither_uses_nor_closes_the_parents_engine() -> None:
    # afsm.h: a child must not use, close or open over an engine its parent
    # opened (the reaper thread and any lock it held do not exist there).
    # Before the fix, the child used the engine as if nothing happened and
    # then hung at exit: the atexit hook closed the engine, joining a reaper
    # thread that does not exist in the child.
    proc = _run_script(
        f"""
        import datetime, os, sys, time
        import afsm
        engine = afsm.Engine(default_timeout=datetime.timedelta(minutes=1))
        session, _ = engine.create_session("u", "10.0.0.1", 1)
        handle = engine.pin(session.id)
        pid = os.fork()
        if pid == 0:
            try:
                engine.get(session.id)
                print("child: get worked", flush=True)
                os._exit(3)
            except afsm.EngineClosed as exc:
                print("child:", exc.detail, flush=True)
            assert engine.closed
            try:
                handle.heartbeat()
                os._exit(4)
            except afsm.EngineClosed:
                pass
            handle.release()        # drops the parent's pin without touching it
            engine.close()          # a no-op, not a join of a missing thread
            sys.exit(0)             # atexit runs: it must not touch the engine
        deadline = time.monotonic() + {CHILD_DEADLINE_S}
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                print("parent: child hung at exit", flush=True)
                sys.exit(2)
            time.sleep(0.01)
        assert os.WIFEXITED(status), status
        print("parent: child exit", os.WEXITSTATUS(status), flush=True)
        assert engine.get(session.id).id == session.id  # the parent is unaffected
        assert engine.pinned() == 1
        handle.release()
        engine.close()
        """
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "parent: child exit 0" in out, out
    assert "child: get: the Engine was opened by process" in out, out
    assert "open engines after fork()" in out, out


@pytest.mark.parametrize("port", [-1, 65536, 1 << 32])
def test_client_port_detail_names_the_real_limit(engine: afsm.Engine, port: int) -> None:
    # Before: -1 and 2**32 said "must be 0..4294967295" (the C field's
    # width), 65536 "must be 0..65535" (the library's limit).
    with pytest.raises(afsm.InvalidArgument) as info:
        engine.create_session("u", "10.0.0.1", port)
    assert info.value.detail == f"client_port: {port}, must be 0..65535"
    assert engine.counts().total == 0


@pytest.mark.parametrize("key_id", [-1, 65536, 1 << 32])
def test_key_id_detail_names_the_real_limit(engine: afsm.Engine, key_id: int) -> None:
    # Before: -1 and 2**32 said "must be 0..4294967295". The library's words:
    # a new key needs an id of 1..65535; 0 names the random first key.
    for call, low in (
        (lambda: engine.add_key(key_id, bytes(32)), 1),
        (lambda: engine.use_key(key_id), 0),
        (lambda: engine.remove_key(key_id), 0),
    ):
        with pytest.raises(afsm.InvalidArgument) as info:
            call()
        assert info.value.detail == f"key_id: {key_id}, must be {low}..65535"


@pytest.mark.parametrize("method", ["get_many", "heartbeat_many"])
def test_a_str_is_not_a_batch_of_ids(engine: afsm.Engine, method: str) -> None:
    # A str is iterable: get_many(str(id)) used to look up each character
    # and fail with "session_id: '0', must be a uuid.UUID...".
    s, _ = engine.create_session("u", "10.0.0.1", 1)
    with pytest.raises(TypeError, match=r"session_ids must be an iterable of ids, not str"):
        getattr(engine, method)(str(s.id))
    with pytest.raises(TypeError, match=r"session_ids must be an iterable of ids, not str"):
        engine.add_stats_many(str(s.id), afsm.Stats(packets_sent=1))


def test_a_bad_id_past_the_first_chunk_leaves_the_engine_unchanged(engine: afsm.Engine, clock: object) -> None:
    # Batches cross into C once per BATCH_MAX ids. The ids were converted
    # chunk by chunk, so a malformed id in the second chunk raised only after
    # the first chunk's heartbeats and stats had been applied.
    s, _ = engine.create_session("u", "10.0.0.1", 1)
    ids: list[object] = [s.id] * afsm.BATCH_MAX + ["not-a-uuid"]
    clock.advance(datetime.timedelta(seconds=10))  # type: ignore[attr-defined]
    with pytest.raises(afsm.InvalidUUID, match="not-a-uuid"):
        engine.heartbeat_many(ids)  # type: ignore[arg-type]
    with pytest.raises(afsm.InvalidUUID, match="not-a-uuid"):
        engine.add_stats_many(ids, afsm.Stats(packets_sent=1))  # type: ignore[arg-type]
    after = engine.get(s.id)
    assert after.stats.packets_sent == 0
    assert after.last_active_at == s.last_active_at


def test_close_racing_handle_calls_and_releases() -> None:
    # close() releases the handles still pinned while other threads pin,
    # heartbeat and release: every call finishes or raises EngineClosed
    # (HandleReleased is one), nothing else, and nothing stays pinned.
    import threading
    import time

    engine = afsm.Engine()
    ids = [engine.create_session("u", "10.0.0.1", 1)[0].id for _ in range(64)]
    kept = [engine.pin(i) for i in ids[:8]]  # never released by their owner
    unexpected: list[BaseException] = []
    rounds = [0] * 4

    def worker(k: int) -> None:
        n = 0
        while True:
            rounds[k] = n
            try:
                with engine.pin(ids[(k * 7 + n) % len(ids)]) as h:
                    h.heartbeat()
                    kept[n % len(kept)].heartbeat()
            except afsm.EngineClosed:
                return
            except BaseException as exc:  # noqa: BLE001 - reported below
                unexpected.append(exc)
                return
            n += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while min(rounds) < 50 and time.monotonic() < deadline:  # all of them busy
        time.sleep(0.001)
    engine.close()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    assert not unexpected, unexpected
    assert engine.closed and all(h.released for h in kept)


@pytest.mark.parametrize("hook", ["on_event", "on_log", "clock"])
def test_a_hook_that_is_not_callable_is_refused_at_open(hook: str) -> None:
    # Engine(on_event=5) opened, then every event failed inside the hook
    # ("'int' object is not callable", logged and kept in callback_errors).
    with pytest.raises(TypeError, match=f"{hook} must be callable, not int"):
        afsm.Engine(manual_reaper=True, **{hook: 5})


def test_engines_and_handles_cannot_be_copied() -> None:
    # copy.copy(engine) shared the C pointer: closing the copy and then the
    # original freed the engine twice (Fatal Python error: Segmentation
    # fault); a copied Handle would unpin twice. Run in a child: the old
    # behaviour crashes the interpreter.
    proc = _run_script(
        """
        import copy, pickle
        import afsm
        engine = afsm.Engine(manual_reaper=True)
        session, _ = engine.create_session("u", "10.0.0.1", 1)
        handle = engine.pin(session.id)
        for obj in (engine, handle):
            for how in (copy.copy, copy.deepcopy, pickle.dumps):
                try:
                    clone = how(obj)
                except TypeError as exc:
                    print("refused:", type(obj).__name__, how.__name__, exc, flush=True)
                    continue
                if how is pickle.dumps:
                    continue
                clone.close() if obj is engine else clone.release()
        handle.release()
        engine.close()
        print("closed", engine.closed, flush=True)
        """
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("refused:") == 6, out
    assert "refused: Engine copy cannot copy an afsm Engine" in out, out
    assert "closed True" in out, out


def test_forked_child_releases_a_handle_whose_call_was_in_flight_at_the_fork() -> None:
    # A thread of the parent is inside handle.heartbeat() (held in the clock
    # hook) when another thread forks. That thread does not exist in the
    # child, so the handle's count of calls in progress never drops there.
    # Before the fix, the child's release() waited for that call forever
    # (and so did its __del__ at exit).
    proc = _run_script(
        f"""
        import datetime, os, sys, threading, time
        import afsm
        hold = threading.Event()
        inside = threading.Event()
        go = threading.Event()
        def clock():
            if hold.is_set() and threading.current_thread() is not threading.main_thread():
                inside.set()
                go.wait({CHILD_DEADLINE_S})
            return time.monotonic_ns()
        engine = afsm.Engine(default_timeout=datetime.timedelta(minutes=1), clock=clock)
        session, _ = engine.create_session("u", "10.0.0.1", 1)
        handle = engine.pin(session.id)
        hold.set()
        worker = threading.Thread(target=handle.heartbeat)
        worker.start()
        assert inside.wait({CHILD_DEADLINE_S}), "heartbeat never reached the clock"
        pid = os.fork()
        if pid == 0:
            handle.release()
            assert handle.released
            print("child: released", flush=True)
            os._exit(0)
        deadline = time.monotonic() + {CHILD_DEADLINE_S}
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                print("parent: child hung in release", flush=True)
                status = None
                break
            time.sleep(0.01)
        hold.clear()
        go.set()
        worker.join({CHILD_DEADLINE_S})
        assert not worker.is_alive()
        assert engine.pinned() == 1  # the child left the parent's pin alone
        handle.release()
        engine.close()
        assert status is not None and os.WIFEXITED(status), status
        print("parent: child exit", os.WEXITSTATUS(status), flush=True)
        """
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "child: released" in out, out
    assert "parent: child exit 0" in out, out


@pytest.mark.parametrize("closer_first", [True, False])
def test_close_from_a_finalizer_releases_a_handle_being_collected(closer_first: bool) -> None:
    # The garbage collector clears a cycle's weak references before it runs
    # the finalizers, so a handle about to be collected has left the
    # engine's WeakSet while it is still pinned in C. Before the fix, a
    # close() in that window (a finalizer in the same cycle here; another
    # thread in general) missed it and raised Busy.
    engine = afsm.Engine(default_timeout=datetime.timedelta(minutes=1))
    session, _ = engine.create_session("u", "10.0.0.1", 1)
    errors: list[BaseException] = []

    class Closer:
        handle: afsm.Handle

        def __del__(self) -> None:
            try:
                engine.close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    if closer_first:
        closer = Closer()
        handle = engine.pin(session.id)
    else:
        handle = engine.pin(session.id)
        closer = Closer()
    closer.handle = handle
    handle.cycle = closer  # type: ignore[attr-defined]
    del closer, handle
    gc.collect()
    assert errors == []
    assert engine.closed


def test_engine_collected_with_its_pinned_handle_is_closed() -> None:
    # An engine and a handle in one garbage cycle: the collector may run
    # the engine's finalizer first. Before the fix it called the C close
    # with the handle still pinned, got Busy and leaked the engine, its
    # reaper thread still running.
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    gc.collect()
    before = threads()
    engine = afsm.Engine(default_timeout=datetime.timedelta(minutes=1))
    assert threads() == before + 1  # the reaper
    session, _ = engine.create_session("u", "10.0.0.1", 1)
    engine.handle = engine.pin(session.id)  # type: ignore[attr-defined]
    del engine
    gc.collect()
    assert threads() == before
