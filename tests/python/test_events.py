"""Events and hooks, in virtual time (manual reaper, injected clock; no sleeping)."""

from __future__ import annotations

import datetime
import logging

import pytest

import afsm
from afsm import EventType, State

from conftest import EventLog, VirtualClock, make

S = datetime.timedelta(seconds=1)


def test_lifecycle_events(engine: afsm.Engine, events: EventLog) -> None:
    s = make(engine, "dora")
    engine.update(s.id, state=State.ACTIVE)
    engine.update(s.id, state=State.ACTIVE)  # same state: no event
    engine.update(s.id, metadata={"k": "v"})  # no state change: no event
    engine.update(s.id, state=State.IDLE)
    engine.delete(s.id, reason="admin")
    evs = events.of(s.id)
    assert [(e.type, e.old_state, e.new_state) for e in evs] == [
        (EventType.CREATED, None, State.CONNECTING),
        (EventType.STATE_CHANGED, State.CONNECTING, State.ACTIVE),
        (EventType.STATE_CHANGED, State.ACTIVE, State.IDLE),
        (EventType.DELETED, State.IDLE, State.IDLE),
    ]
    assert evs[-1].reason == "admin"
    for e in evs:
        assert e.user_id == "dora"
        assert e.connection_id == s.connection_id
        assert e.created_at == s.created_at
        assert e.event_at.tzinfo is not None
        assert e.event_at >= e.created_at - datetime.timedelta(seconds=1)
    assert evs[0].reason is None or evs[0].reason == ""


def test_close_fires_state_change_then_deleted(engine: afsm.Engine, events: EventLog) -> None:
    s = make(engine)
    engine.update(s.id, state=State.ACTIVE)
    engine.update(s.id, state=State.CLOSED)
    evs = events.of(s.id)
    assert [e.type for e in evs] == [
        EventType.CREATED, EventType.STATE_CHANGED, EventType.STATE_CHANGED, EventType.DELETED
    ]
    assert (evs[2].old_state, evs[2].new_state) == (State.ACTIVE, State.CLOSED)
    assert evs[3].reason == "closed"


def test_expired_events_in_virtual_time(engine: afsm.Engine, clock: VirtualClock, events: EventLog) -> None:
    short = [make(engine, timeout=5 * S) for _ in range(3)]
    long = make(engine, timeout=60 * S)
    beat = make(engine, timeout=5 * S)
    clock.advance(4 * S)
    engine.heartbeat(beat.id)
    assert engine.advance(clock()) == 0
    clock.advance(2 * S)  # short ones are 6 s old; beat was refreshed 2 s ago
    assert engine.advance(clock()) == 3
    for s in short:
        assert events.types(s.id) == [EventType.CREATED, EventType.EXPIRED]
        ev = events.of(s.id)[-1]
        assert ev.new_state is State.CONNECTING
        assert ev.reason in (None, "expired")
    assert events.types(long.id) == [EventType.CREATED]
    # a heartbeat makes a connecting session active (one event)
    assert events.types(beat.id) == [EventType.CREATED, EventType.STATE_CHANGED]
    clock.advance(4 * S)
    assert engine.advance(clock()) == 1
    assert events.types(beat.id) == [EventType.CREATED, EventType.STATE_CHANGED, EventType.EXPIRED]
    assert engine.counts().total == 1
    clock.advance(60 * S)
    assert engine.advance(clock()) == 1
    assert engine.counts().total == 0
    assert engine.advance(clock()) == 0


def test_expiry_many_ticks_apart(engine: afsm.Engine, clock: VirtualClock, events: EventLog) -> None:
    """Sessions with timeouts spread over hours expire at the right tick (wheel cascade)."""
    ids = {}
    for minutes in (1, 7, 59, 61, 180, 60 * 25):
        ids[minutes] = make(engine, timeout=datetime.timedelta(minutes=minutes)).id
    elapsed = 0
    for minutes in sorted(ids):
        clock.advance(datetime.timedelta(minutes=minutes - elapsed) - S)
        assert engine.advance(clock()) == 0, minutes
        clock.advance(2 * S)
        assert engine.advance(clock()) == 1, minutes
        assert events.types(ids[minutes])[-1] is EventType.EXPIRED
        clock.advance(-S)
        elapsed = minutes


def test_max_lifetime_caps_heartbeats(clock: VirtualClock, events: EventLog) -> None:
    with afsm.Engine(manual_reaper=True, clock=clock, on_event=events,
                     max_lifetime=10 * S, default_timeout=6 * S) as e:
        s = make(e)
        clock.advance(5 * S)
        e.heartbeat(s.id)
        clock.advance(4 * S)  # 9 s: heartbeat capped at the 10 s lifetime
        assert e.heartbeat(s.id) <= S
        clock.advance(2 * S)
        assert e.advance(clock()) == 1
        assert events.types(s.id)[-1] is EventType.EXPIRED


def test_delete_by_user_events(engine: afsm.Engine, events: EventLog) -> None:
    ss = [make(engine, "erin") for _ in range(3)]
    assert engine.delete_user_sessions("erin", reason="logout everywhere") == 3
    for s in ss:
        ev = events.of(s.id)[-1]
        assert ev.type is EventType.DELETED and ev.reason == "logout everywhere"


def test_callback_exception_does_not_reach_c(clock: VirtualClock, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[afsm.Event] = []

    def bad(event: afsm.Event) -> None:
        calls.append(event)
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="afsm"):
        with afsm.Engine(manual_reaper=True, clock=clock, on_event=bad) as e:
            s = make(e, timeout=S)
            engine_ok = e.get(s.id)
            clock.advance(2 * S)
            assert e.advance(clock()) == 1
            assert len(calls) == 2
            errors = list(e.callback_errors)
    assert engine_ok.id == s.id
    assert len(errors) == 2 and all(isinstance(x, RuntimeError) for x in errors)
    assert "exception in an afsm callback" in caplog.text


def test_callback_may_use_engine_but_not_close(clock: VirtualClock) -> None:
    seen: list[object] = []
    holder: dict[str, afsm.Engine] = {}

    def hook(event: afsm.Event) -> None:
        e = holder["e"]
        if event.type is EventType.CREATED:
            seen.append(e.get(event.session_id).user_id)
            e.update(event.session_id, metadata={"seen": "yes"})
        elif event.type is EventType.DELETED:
            e.close()

    with afsm.Engine(manual_reaper=True, clock=clock, on_event=hook) as e:
        holder["e"] = e
        s = make(e, "frank")
        assert seen == ["frank"]
        assert dict(e.get(s.id).metadata) == {"seen": "yes"}
        e.delete(s.id)
        assert not e.closed
        assert isinstance(e.callback_errors[-1], RuntimeError)
    assert e.closed


def test_broken_clock_keeps_last_time(caplog: pytest.LogCaptureFixture) -> None:
    state = {"now": 5_000_000_000, "fail": False}

    def clock() -> int:
        if state["fail"]:
            raise OSError("clock gone")
        return state["now"]

    with caplog.at_level(logging.ERROR, logger="afsm"):
        with afsm.Engine(manual_reaper=True, clock=clock) as e:
            assert e.now() == 5_000_000_000
            state["fail"] = True
            assert e.now() == 5_000_000_000
            s = make(e)
            assert e.get(s.id).id == s.id
            assert any(isinstance(x, OSError) for x in e.callback_errors)
            state["fail"] = False
            state["now"] = -1  # a bad value counts as an error too
            assert e.now() == 5_000_000_000
            assert isinstance(e.callback_errors[-1], ValueError)


def test_log_hook_is_accepted() -> None:
    records: list[afsm.LogRecord] = []
    with afsm.Engine(manual_reaper=True, on_log=records.append, log_level=afsm.LogLevel.DEBUG) as e:
        make(e)
    assert all(isinstance(r.message, str) for r in records)


def test_close_linger_keeps_closed_session_readable(clock: VirtualClock, events: EventLog) -> None:
    with afsm.Engine(manual_reaper=True, clock=clock, on_event=events, close_linger=10 * S) as e:
        s = make(e)
        assert e.update(s.id, state=State.CLOSED).state is State.CLOSED
        assert e.get(s.id).state is State.CLOSED
        assert e.counts().by_state[State.CLOSED] == 1
        with pytest.raises(afsm.Closed) as info:
            e.heartbeat(s.id)
        assert info.value.name == "AFSM_ECLOSED"
        with pytest.raises(afsm.InvalidTransition):
            e.update(s.id, state=State.ACTIVE)
        assert events.types(s.id) == [EventType.CREATED, EventType.STATE_CHANGED]
        clock.advance(11 * S)
        e.advance(clock())
        with pytest.raises(afsm.NotFound):
            e.get(s.id)
        assert events.types(s.id)[-1] is EventType.DELETED
        assert events.of(s.id)[-1].reason == "closed"


def test_max_sessions_per_user_reject(events: EventLog) -> None:
    with afsm.Engine(manual_reaper=True, max_sessions_per_user=2, on_event=events) as e:
        a, b = make(e, "gina"), make(e, "gina")
        with pytest.raises(afsm.LimitExceeded) as info:
            make(e, "gina")
        assert info.value.name == "AFSM_ELIMIT"
        make(e, "hank")
        assert [x.id for x in e.list_sessions(user_id="gina").sessions] == [a.id, b.id]
        assert [ev.type for ev in events.events] == [EventType.CREATED] * 3  # none for the refused one
        e.delete(a.id)
        make(e, "gina")  # room again
        assert e.list_sessions(user_id="gina").total == 2
        assert e.metrics().deleted_total[afsm.DeleteReason.EVICTED] == 0


@pytest.mark.parametrize("policy", ["evict_oldest", afsm.LimitPolicy.EVICT_OLDEST])
def test_max_sessions_per_user_evict_oldest(events: EventLog, policy: object) -> None:
    with afsm.Engine(manual_reaper=True, max_sessions_per_user=2, limit_policy=policy,  # type: ignore[arg-type]
                     on_event=events) as e:
        first, token = e.create_session("gina", "192.0.2.1", 1)
        second = make(e, "gina")
        third = make(e, "gina")
        assert [x.id for x in e.list_sessions(user_id="gina").sessions] == [second.id, third.id]
        assert events.types(first.id) == [EventType.CREATED, EventType.DELETED]
        assert events.of(first.id)[-1].reason == "evicted"
        # The replacement's CREATED comes before the DELETED of the one it evicted
        # (afsm.h: a callback's nested eviction of the replacement then cannot
        # report its DELETED before its CREATED).
        order = [(ev.type, ev.session_id) for ev in events.events]
        assert order.index((EventType.CREATED, third.id)) < order.index((EventType.DELETED, first.id))
        with pytest.raises(afsm.NotFound):
            e.validate_token(token)
        assert e.metrics().deleted_total[afsm.DeleteReason.EVICTED] == 1


def test_limit_policy_argument_checks() -> None:
    with pytest.raises(ValueError):
        afsm.Engine(limit_policy="drop_newest")  # type: ignore[arg-type]
    with pytest.raises(afsm.InvalidArgument):
        afsm.Engine(limit_policy=7)  # type: ignore[arg-type]


def test_idle_detection_and_wake(clock: VirtualClock, events: EventLog) -> None:
    with afsm.Engine(manual_reaper=True, clock=clock, on_event=events, idle_timeout=5 * S) as e:
        s = make(e)
        waiting = make(e)  # CONNECTING sessions do not go idle
        e.update(s.id, state=State.ACTIVE)
        clock.advance(4 * S)
        e.advance(clock())
        assert e.get(s.id).state is State.ACTIVE
        clock.advance(2 * S)
        e.advance(clock())
        assert e.get(s.id).state is State.IDLE
        assert e.get(waiting.id).state is State.CONNECTING
        e.heartbeat(s.id)
        assert e.get(s.id).state is State.ACTIVE
        clock.advance(6 * S)
        e.advance(clock())
        assert e.get(s.id).state is State.IDLE
        e.add_stats(s.id, afsm.Stats(packets_received=1))
        assert e.get(s.id).state is State.ACTIVE
        changes = [(x.old_state, x.new_state) for x in events.of(s.id) if x.type is EventType.STATE_CHANGED]
        assert changes == [(State.CONNECTING, State.ACTIVE), (State.ACTIVE, State.IDLE),
                           (State.IDLE, State.ACTIVE), (State.ACTIVE, State.IDLE),
                           (State.IDLE, State.ACTIVE)]


def test_exit_with_open_engine_and_busy_reaper(tmp_path: object) -> None:
    """An engine left open at exit, its reaper calling a Python hook, exits cleanly."""
    import os
    import subprocess

    from conftest import BINDING

    code = (
        "import datetime, afsm\n"
        "ms = datetime.timedelta(milliseconds=1)\n"
        "seen = []\n"
        "e = afsm.Engine(cleanup_interval=ms, tick=ms, default_timeout=ms, on_event=seen.append)\n"
        "for i in range(2000):\n"
        "    try:\n"
        "        e.create_session('u', '192.0.2.1', 1)\n"
        "    except (afsm.Expired, afsm.NotFound):\n"
        "        pass  # 1 ms: gone before its token was sealed\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(BINDING),
               AFSM_LIBRARY=os.path.abspath(afsm.library_path()))
    for _ in range(3):
        out = subprocess.run(["/usr/bin/python3", "-c", code], env=env, capture_output=True,
                             text=True, timeout=60)
        assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr
