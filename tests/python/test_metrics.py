"""Metrics (snapshot and Prometheus text) after a scripted workload in virtual time, and logs."""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

import afsm
from afsm import DeleteReason, State, TokenResult

from conftest import EventLog, VirtualClock

S = datetime.timedelta(seconds=1)
K1 = bytes(range(32))
K2 = bytes(range(100, 132))


def flip(token: str, index: int) -> str:
    c = token[index]
    return token[:index] + ("A" if c != "A" else "B") + token[index + 1:]


def try_validate(engine: afsm.Engine, token: str, client_ip: str | None = None) -> type | None:
    try:
        engine.validate_token(token, client_ip=client_ip)
    except afsm.AfsmError as exc:
        return type(exc)
    return None


@dataclasses.dataclass
class Workload:
    engine: afsm.Engine
    midway: afsm.Metrics
    final: afsm.Metrics
    text: str


@pytest.fixture
def workload(clock: VirtualClock, events: EventLog) -> Iterator[Workload]:
    """The script (virtual seconds since the start on the left):

    t=0   create a1 a2 a3 (alice, cap 3, evict oldest), b1 b2 (bob), c1 (carol);
          a4 evicts a1 (lived 0 s); a2 a3 b1 -> ACTIVE; 10 token validations
    t=2   delete b2 (requested, lived 2 s)
    t=8   advance: a2 a3 b1 go idle (3); heartbeat a2 wakes it (1);
          c1 -> CLOSED (lived 8 s); delete bob's sessions: b1 (user, lived 8 s)
    t=48  a4's token: expired; advance: a2 a3 a4 expire (an expired session
          lived until its deadline: a3 a4 30 s, a2 38 s);
          key 1 removed: a4's first token -> removed key
    """
    with afsm.Engine(shard_count=4, manual_reaper=True, clock=clock, on_event=events,
                     default_timeout=30 * S, idle_timeout=5 * S, tick=datetime.timedelta(milliseconds=100),
                     max_sessions_per_user=3, limit_policy="evict_oldest", key=K1, key_id=1) as e:
        def create(user: str, bind_ip: bool = False) -> tuple[afsm.Session, str]:
            return e.create_session(user, "192.0.2.7", 5000, bind_ip=bind_ip)

        a1, t_a1 = create("alice")
        a2, t_a2 = create("alice")
        a3, t_a3 = create("alice")
        b1, t_b1 = create("bob", bind_ip=True)
        b2, _ = create("bob")
        c1, _ = create("carol")
        a4, t_a4 = create("alice")  # evicts a1
        for s in (a2, a3, b1):
            e.update(s.id, state=State.ACTIVE)
        results = [
            try_validate(e, t_a2),                       # ok
            try_validate(e, t_a2),                       # ok
            try_validate(e, t_b1, "192.0.2.7"),          # ok
            try_validate(e, t_a2[:-4]),                  # malformed
            try_validate(e, "not a token"),              # malformed
            try_validate(e, flip(t_a2, 30)),             # forged
            try_validate(e, flip(t_a2, 4)),              # unknown key
            try_validate(e, t_a1),                       # not found (evicted)
            try_validate(e, t_b1, "192.0.2.8"),          # ip mismatch
        ]
        e.rotate_token(a3.id)
        results.append(try_validate(e, t_a3))            # revoked
        assert results == [None, None, None, afsm.MalformedToken, afsm.MalformedToken,
                           afsm.ForgedToken, afsm.UnknownTokenKey, afsm.NotFound,
                           afsm.IPMismatch, afsm.TokenRevoked]

        clock.advance(2 * S)
        e.delete(b2.id)
        clock.advance(6 * S)
        e.advance(clock())
        assert e.get(a2.id).state is State.IDLE
        e.heartbeat(a2.id)
        assert e.get(a2.id).state is State.ACTIVE
        e.update(c1.id, state=State.CLOSED)
        assert e.delete_user_sessions("bob") == 1
        midway = e.metrics()

        clock.advance(40 * S)
        with pytest.raises(afsm.Expired):  # past its deadline, not yet reaped
            e.issue_token(a3.id)
        assert try_validate(e, t_a4) is afsm.Expired  # genuine token, expired session
        assert e.advance(clock()) == 3
        e.add_key(2, K2)
        e.use_key(2)
        e.remove_key(1)
        assert try_validate(e, t_a4) is afsm.TokenKeyRemoved
        final = e.metrics()
        text = e.metrics_text()
        yield Workload(e, midway, final, text)


def test_metrics_midway(workload: Workload) -> None:
    m = workload.midway
    assert m.sessions == 3
    assert dict(m.sessions_by_state) == {State.CONNECTING: 1, State.ACTIVE: 1, State.IDLE: 1,
                                         State.DISCONNECTING: 0, State.CLOSED: 0}
    assert m.created_total == 7
    assert dict(m.deleted_total) == {DeleteReason.REQUESTED: 1, DeleteReason.USER: 1,
                                     DeleteReason.CLOSED: 1, DeleteReason.EVICTED: 1,
                                     DeleteReason.EXPIRED: 0}
    assert m.expired_total == 0
    assert m.idle_transitions_total == 3
    assert m.wake_transitions_total == 1
    assert m.duration_count == 4
    assert m.duration_sum_seconds == pytest.approx(0 + 2 + 8 + 8)


def test_metrics_final_exact(workload: Workload) -> None:
    m = workload.final
    assert m.shard_count == 4
    assert m.sessions == 0
    assert set(m.sessions_by_state.values()) == {0}
    assert m.created_total == 7
    assert dict(m.deleted_total) == {DeleteReason.REQUESTED: 1, DeleteReason.USER: 1,
                                     DeleteReason.CLOSED: 1, DeleteReason.EVICTED: 1,
                                     DeleteReason.EXPIRED: 3}
    assert m.expired_total == 3
    # a2, woken at t=8, went idle again at t=13, before its deadline (t=38).
    assert m.idle_transitions_total == 4
    assert m.wake_transitions_total == 1
    # Per bucket: a1 (0 s) in le=1, b2 (2 s) in le=5, c1 and b1 (8 s) in le=15,
    # a3 a4 (30 s: bounds are inclusive) in le=30, a2 (38 s) in le=60.
    expected = dict.fromkeys(afsm.DURATION_BUCKET_BOUNDS, 0)
    expected.update({1.0: 1, 5.0: 1, 15.0: 2, 30.0: 2, 60.0: 1})
    assert dict(m.duration_buckets) == expected
    assert list(m.duration_buckets) == list(afsm.DURATION_BUCKET_BOUNDS)
    assert math.isinf(list(m.duration_buckets)[-1])
    assert list(m.duration_buckets_cumulative.values()) == [1, 2, 4, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]
    assert m.duration_count == 7
    assert m.duration_sum_seconds == pytest.approx(0 + 2 + 8 + 8 + 30 + 30 + 38)
    assert dict(m.token_validations) == {
        TokenResult.OK: 3, TokenResult.MALFORMED: 2, TokenResult.FORGED: 1,
        TokenResult.UNKNOWN_KEY: 1, TokenResult.REMOVED_KEY: 1, TokenResult.NOT_FOUND: 1,
        TokenResult.EXPIRED: 1, TokenResult.CLOSED: 0, TokenResult.REVOKED: 1,
        TokenResult.IP_MISMATCH: 1,
    }
    assert m.reaper_lag_ns == 0 and m.reaper_lag == datetime.timedelta(0)
    assert m.deferred_frees >= 0


def test_metrics_is_frozen(workload: Workload) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        workload.final.sessions = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        workload.final.deleted_total[DeleteReason.USER] = 0  # type: ignore[index]


def test_prometheus_text(workload: Workload) -> None:
    text = workload.text
    assert text.endswith("\n") and "\0" not in text
    # session_total is a gauge, but a gauge may not end in _total: it goes out untyped.
    for name, kind in [("session_total", "untyped"), ("session_active", "gauge"), ("session_idle", "gauge"),
                       ("session_connecting", "gauge"), ("session_created_total", "counter"),
                       ("session_deleted_total", "counter"), ("session_expired_total", "counter"),
                       ("session_duration_seconds", "histogram"),
                       ("session_token_validations_total", "counter"),
                       ("session_idle_transitions_total", "counter"),
                       ("session_wake_transitions_total", "counter")]:
        assert f"# TYPE {name} {kind}\n" in text, name
        assert re.search(rf"^# HELP {name} \S.*$", text, re.M), name
    lines = set(text.splitlines())
    for line in ['session_total 0', 'session_created_total 7', 'session_expired_total 3',
                 'session_deleted_total{reason="requested"} 1', 'session_deleted_total{reason="user"} 1',
                 'session_deleted_total{reason="closed"} 1', 'session_deleted_total{reason="evicted"} 1',
                 'session_deleted_total{reason="expired"} 3',
                 'session_duration_seconds_bucket{le="1"} 1', 'session_duration_seconds_bucket{le="5"} 2',
                 'session_duration_seconds_bucket{le="15"} 4', 'session_duration_seconds_bucket{le="30"} 6',
                 'session_duration_seconds_bucket{le="60"} 7',
                 'session_duration_seconds_bucket{le="+Inf"} 7', 'session_duration_seconds_count 7',
                 'session_idle_transitions_total 4', 'session_wake_transitions_total 1',
                 'session_token_validations_total{result="ok"} 3',
                 'session_token_validations_total{result="malformed"} 2',
                 'session_token_validations_total{result="removed_key"} 1',
                 'session_token_validations_total{result="ip_mismatch"} 1',
                 'session_engine_shards 4']:
        assert line in lines, line
    total = re.search(r"^session_duration_seconds_sum (\S+)$", text, re.M)
    assert total and float(total.group(1)) == pytest.approx(116.0)


def test_prometheus_text_passes_promtool(workload: Workload, tmp_path: Path) -> None:
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    out = subprocess.run([promtool, "check", "metrics"], input=workload.text, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_metrics_text_grows_its_buffer(engine: afsm.Engine) -> None:
    """The text's size is asked for first; bigger numbers make it longer."""
    first = engine.metrics_text()
    for _ in range(1234):
        with pytest.raises(afsm.MalformedToken):
            engine.validate_token("x")
    second = engine.metrics_text()
    assert len(second) == len(first) + 3
    assert 'session_token_validations_total{result="malformed"} 1234' in second


def test_metrics_text_while_threads_write(real_engine: afsm.Engine) -> None:
    """Counters growing between the size query and the write are retried, never truncated."""
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            try:
                real_engine.validate_token("garbage")
            except afsm.MalformedToken:
                pass

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            text = real_engine.metrics_text()
            assert text.endswith("session_engine_deferred_frees " + text.rsplit(" ", 1)[1])
            assert text.count("# TYPE ") == 16
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_disabled_metrics_stay_zero(clock: VirtualClock) -> None:
    with afsm.Engine(manual_reaper=True, clock=clock, metrics=False) as e:
        s, token = e.create_session("u", "192.0.2.1", 1)
        e.validate_token(token)
        e.delete(s.id)
        m = e.metrics()
        assert m.created_total == 0 and sum(m.deleted_total.values()) == 0 and m.duration_count == 0
        assert "session_created_total 0" in e.metrics_text()
    with afsm.Engine(manual_reaper=True, clock=clock) as e:
        s, token = e.create_session("u", "192.0.2.1", 1)
        e.delete(s.id)
        assert e.metrics().created_total == 1


# ---- logs ----------------------------------------------------------------------------------


class LogSink:
    def __init__(self) -> None:
        self.records: list[afsm.LogRecord] = []
        self._lock = threading.Lock()

    def __call__(self, record: afsm.LogRecord) -> None:
        with self._lock:
            self.records.append(record)

    def messages(self) -> list[str]:
        return [r.message for r in self.records]


def test_log_lines_with_fields(clock: VirtualClock) -> None:
    sink = LogSink()
    with afsm.Engine(manual_reaper=True, clock=clock, on_log=sink, log_level=afsm.LogLevel.DEBUG,
                     default_timeout=30 * S) as e:
        cid = afsm.uuid7()
        s, _ = e.create_session("alice", "2001:db8::7", 1, connection_id=cid)
        created = sink.records[-1]
        assert created.message == "session created"
        assert created.level is afsm.LogLevel.INFO
        assert dict(created.fields) == {"session_id": str(s.id), "user_id": "alice",
                                        "connection_id": str(cid), "client_ip": "2001:db8::7"}
        assert list(created.fields) == ["session_id", "user_id", "connection_id", "client_ip"]

        clock.advance(10 * S)
        e.heartbeat(s.id)
        beat = sink.records[-1]
        assert beat.message == "session heartbeat" and beat.level is afsm.LogLevel.DEBUG
        assert dict(beat.fields) == {"session_id": str(s.id), "remaining": "30s"}

        make_more = [e.create_session("bob", "192.0.2.1", 2)[0] for _ in range(2)]
        assert len(make_more) == 2
        clock.advance(41 * S)
        assert e.advance(clock()) == 3
        cleaned = sink.records[-1]
        assert cleaned.message == "expired sessions cleaned up"
        assert cleaned.level is afsm.LogLevel.INFO
        assert dict(cleaned.fields) == {"count": "3"}
        assert e.advance(clock()) == 0
        assert sink.records[-1] is cleaned  # nothing logged for an empty pass
    assert not e.callback_errors


def test_log_level_filters(clock: VirtualClock) -> None:
    sink = LogSink()
    with afsm.Engine(manual_reaper=True, clock=clock, on_log=sink) as e:  # default: INFO
        s, _ = e.create_session("alice", "192.0.2.1", 1)
        e.heartbeat(s.id)
        assert sink.messages() == ["session created"]
    sink = LogSink()
    with afsm.Engine(manual_reaper=True, clock=clock, on_log=sink, log_level=afsm.LogLevel.WARN) as e:
        s, _ = e.create_session("alice", "192.0.2.1", 1)
        e.heartbeat(s.id)
        assert sink.messages() == []


def test_log_hook_exception_is_contained(clock: VirtualClock) -> None:
    def broken(record: afsm.LogRecord) -> None:
        raise RuntimeError("log sink down")

    with afsm.Engine(manual_reaper=True, clock=clock, on_log=broken) as e:
        s, token = e.create_session("alice", "192.0.2.1", 1)
        assert e.validate_token(token) == s
        assert [str(x) for x in e.callback_errors] == ["log sink down"]
