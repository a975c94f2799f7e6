"""Many threads on one engine (ctypes releases the GIL during each C call)."""

from __future__ import annotations

import threading
import uuid

import pytest

import afsm
from afsm import State, Stats

from conftest import make

THREADS = 8
ROUNDS = 400


def test_threads_hammer_one_engine(real_engine: afsm.Engine) -> None:
    engine = real_engine
    barrier = threading.Barrier(THREADS)
    kept: dict[int, list[uuid.UUID]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            mine = []
            for i in range(ROUNDS):
                s = make(engine, f"user{n}", metadata={"t": str(n), "i": str(i)})
                got = engine.get(s.id)
                assert got.user_id == f"user{n}" and got.metadata["i"] == str(i)
                engine.heartbeat(s.id)
                engine.add_stats(s.id, Stats(packets_sent=1, bytes_sent=i))
                if i % 3 == 0:
                    engine.update(s.id, state=State.ACTIVE)
                if i % 2 == 0:
                    engine.delete(s.id)
                else:
                    mine.append(s.id)
            with engine.pin(mine[0]) as h:
                for _ in range(100):
                    h.heartbeat()
                    h.add_stats(Stats(packets_received=1))
            results = engine.get_many(mine)
            assert all(isinstance(r, afsm.Session) for r in results)
            kept[n] = mine
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    expected = THREADS * (ROUNDS // 2)
    counts = engine.counts()
    assert counts.total == expected == sum(len(v) for v in kept.values())
    assert sum(counts.by_state.values()) == expected
    # i odd and i % 3 == 0 → ACTIVE
    active_per_thread = len([i for i in range(ROUNDS) if i % 2 and i % 3 == 0])
    # every kept session was heartbeated: a heartbeat makes it active
    assert counts.by_state[State.ACTIVE] == expected
    listed = list(engine.iter_sessions(page_size=500))
    assert len(listed) == expected
    assert {s.id for s in listed} == {i for ids in kept.values() for i in ids}
    for n, ids in kept.items():
        assert engine.list_sessions(user_id=f"user{n}").total == len(ids)
        first = engine.get(ids[0])
        assert first.stats.packets_received == 100 and first.stats.packets_sent == 1
    for n in range(THREADS):
        assert engine.delete_user_sessions(f"user{n}") == ROUNDS // 2
    assert engine.counts().total == 0


def test_concurrent_metadata_merges_all_land(real_engine: afsm.Engine) -> None:
    """Threads merging different keys into one session: every key lands."""
    s = make(real_engine)
    barrier = threading.Barrier(THREADS)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(6):
            real_engine.update(s.id, metadata={f"t{n}k{i}": "x"})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(real_engine.get(s.id).metadata) == THREADS * 6


def test_events_from_many_threads(clock: object) -> None:
    seen: list[afsm.Event] = []
    lock = threading.Lock()

    def hook(event: afsm.Event) -> None:
        with lock:
            seen.append(event)

    with afsm.Engine(manual_reaper=True, on_event=hook) as engine:
        barrier = threading.Barrier(THREADS)

        def work(n: int) -> None:
            barrier.wait()
            for _ in range(50):
                s = make(engine, f"u{n}")
                engine.delete(s.id)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not engine.callback_errors
    kinds = [e.type for e in seen]
    assert kinds.count(afsm.EventType.CREATED) == THREADS * 50
    assert kinds.count(afsm.EventType.DELETED) == THREADS * 50


def test_validate_while_keys_and_generations_rotate(real_engine: afsm.Engine) -> None:
    """Validators on several threads see only OK, TokenRevoked or TokenKeyRemoved
    while another thread rotates tokens and keys."""
    import threading

    sessions = [real_engine.create_session("rot-%d" % i, "192.0.2.1", 1) for i in range(50)]
    tokens = [t for _, t in sessions]
    stop = threading.Event()
    seen: dict[str, int] = {}
    bad: list[BaseException] = []
    lock = threading.Lock()

    def validate() -> None:
        local: dict[str, int] = {}
        while not stop.is_set():
            for token in list(tokens):
                try:
                    real_engine.validate_token(token)
                    name = "ok"
                except (afsm.TokenRevoked, afsm.TokenKeyRemoved) as exc:
                    name = type(exc).__name__
                except BaseException as exc:  # noqa: BLE001
                    bad.append(exc)
                    return
                local[name] = local.get(name, 0) + 1
        with lock:
            for k, v in local.items():
                seen[k] = seen.get(k, 0) + v

    threads = [threading.Thread(target=validate) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for key_id in range(1, 21):
            real_engine.add_key(key_id, bytes([key_id]) * 32)
            real_engine.use_key(key_id)
            if key_id > 1:
                real_engine.remove_key(key_id - 1)
            for s, _ in sessions[key_id % 5::5]:
                real_engine.rotate_token(s.id)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad, bad[:3]
    assert seen.get("ok", 0) > 0


CLOSE_ROUNDS = 150
CLOSE_THREADS = 4


def test_close_racing_calls_never_touches_freed_memory() -> None:
    """Calls racing Engine.close either finish or raise EngineClosed.

    Before the gate this crashed the interpreter (rc 139) in most runs: the
    engine was freed under a thread still inside afsm_session_heartbeat.
    """
    for _ in range(CLOSE_ROUNDS):
        engine = afsm.Engine(shard_count=4)
        s, _ = engine.create_session("u", "10.0.0.1", 1)
        started = threading.Barrier(CLOSE_THREADS + 1, timeout=60)
        outcomes: list[BaseException | None] = [None] * CLOSE_THREADS

        def work(n: int) -> None:
            calls = 0
            try:
                while True:
                    engine.heartbeat(s.id)
                    engine.get(s.id)
                    if n % 2:
                        engine.list_sessions(limit=10)
                    else:
                        t = make(engine, f"w{n}")
                        engine.delete(t.id)
                    calls += 1
                    if calls == 1:
                        started.wait()
            except BaseException as exc:  # noqa: BLE001 - inspected below
                outcomes[n] = exc

        threads = [threading.Thread(target=work, args=(n,)) for n in range(CLOSE_THREADS)]
        for t in threads:
            t.start()
        started.wait()  # every thread is in its loop, calling
        engine.close()
        for t in threads:
            t.join()
        assert engine.closed
        for exc in outcomes:
            assert isinstance(exc, afsm.EngineClosed), repr(exc)
            assert isinstance(exc, afsm.AfsmError)


def test_use_after_close_raises_engine_closed() -> None:
    engine = afsm.Engine()
    s, token = engine.create_session("u", "10.0.0.1", 1)
    engine.close()
    engine.close()  # idempotent
    for call in (
        lambda: engine.get(s.id),
        lambda: engine.heartbeat(s.id),
        lambda: engine.validate_token(token),
        lambda: engine.create_session("u", "10.0.0.1", 1),
        lambda: engine.list_sessions(),
        lambda: list(engine.iter_sessions()),
        lambda: engine.counts(),
        lambda: engine.add_key(2, b"k" * 32),
    ):
        try:
            call()
        except afsm.EngineClosed as exc:
            assert "closed" in str(exc)
        else:
            raise AssertionError("no EngineClosed")


def test_close_from_a_callback_raises_and_close_from_outside_still_works() -> None:
    seen: list[BaseException] = []
    holder: list[afsm.Engine] = []

    def on_event(ev: afsm.Event) -> None:
        try:
            holder[0].close()
        except RuntimeError as exc:
            seen.append(exc)

    engine = afsm.Engine(on_event=on_event)
    holder.append(engine)
    make(engine, "u")
    assert len(seen) == 1 and "callback" in str(seen[0])
    assert not engine.closed
    engine.close()
    assert engine.closed


def test_close_releases_a_pinned_handle() -> None:
    # As Go's Close: the handle is released, then the engine closed (it
    # used to raise Busy and stay open).
    engine = afsm.Engine()
    s = make(engine, "u")
    h = engine.pin(s.id)
    engine.close()
    assert engine.closed and h.released
    with pytest.raises(afsm.EngineClosed):
        h.heartbeat()
    h.release()  # a no-op
    engine.close()
