"""Sessions: create, get, heartbeat, update, stats, delete, counts, batches, handles."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import uuid

import pytest

import afsm
from afsm import State, Stats

from conftest import VirtualClock, make

S = datetime.timedelta(seconds=1)


def test_create_returns_full_session(engine: afsm.Engine) -> None:
    cid = uuid.uuid4()
    session, token = engine.create_session(
        "alice", "2001:db8::7", 51820, connection_id=cid, metadata={"b": "2", "a": "1"},
        timeout=datetime.timedelta(minutes=5),
    )
    assert isinstance(token, str) and token.startswith("v1.") and len(token) <= afsm.TOKEN_MAX
    assert engine.validate_token(token) == session
    assert session.id.version == 7
    assert session.user_id == "alice"
    assert session.connection_id == cid
    assert session.client_ip == ipaddress.ip_address("2001:db8::7")
    assert session.client_port == 51820
    assert session.server_addr == "edge-1:8443"
    assert session.state is State.CONNECTING
    assert session.timeout == datetime.timedelta(minutes=5)
    assert dict(session.metadata) == {"a": "1", "b": "2"}
    assert list(session.metadata) == ["a", "b"]
    assert session.stats == Stats()
    for ts in (session.created_at, session.last_active_at, session.expires_at):
        assert ts.tzinfo is not None and ts.utcoffset() == datetime.timedelta(0)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs(session.created_at - now) < datetime.timedelta(minutes=1)
    assert session.expires_at - session.last_active_at == datetime.timedelta(minutes=5)
    assert engine.get(session.id) == session
    assert engine.get(str(session.id)) == session
    assert engine.get(str(session.id).upper()) == session
    assert engine.get_by_connection(cid) == session
    assert engine.get_by_connection(str(cid)) == session


def test_session_is_frozen_and_metadata_read_only(engine: afsm.Engine) -> None:
    session = make(engine, metadata={"k": "v"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.state = State.ACTIVE  # type: ignore[misc]
    with pytest.raises(TypeError):
        session.metadata["k"] = "w"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.stats.bytes_sent = 1  # type: ignore[misc]


def test_connection_id_generated_when_missing(engine: afsm.Engine) -> None:
    a, b = make(engine), make(engine)
    assert a.connection_id != b.connection_id
    assert a.connection_id.version == 7
    assert a.id < b.id  # time-ordered ids


def test_ip_forms(engine: afsm.Engine) -> None:
    assert make(engine, client_ip="::ffff:10.1.2.3").client_ip == ipaddress.IPv4Address("10.1.2.3")
    assert make(engine, client_ip=ipaddress.IPv6Address("::1")).client_ip == ipaddress.IPv6Address("::1")
    assert make(engine, client_ip="0.0.0.0").client_ip == ipaddress.IPv4Address("0.0.0.0")


def test_user_id_bounds_and_unicode(engine: afsm.Engine) -> None:
    assert make(engine, "u" * 256).user_id == "u" * 256
    assert make(engine, "日本" * 42).user_id == "日本" * 42  # 252 bytes
    assert make(engine, "é", client_port=0).client_port == 0
    assert make(engine, client_port=65535).client_port == 65535


def test_get_missing(engine: afsm.Engine) -> None:
    with pytest.raises(afsm.NotFound) as info:
        engine.get(uuid.uuid4())
    assert info.value.status == -8 and info.value.name == "AFSM_ENOTFOUND"
    with pytest.raises(afsm.NotFound):
        engine.get_by_connection(uuid.uuid4())
    with pytest.raises(afsm.NotFound):
        engine.get(uuid.UUID(int=0))


def test_heartbeat_extends_deadline(engine: afsm.Engine, clock: VirtualClock) -> None:
    s = make(engine)
    assert engine.heartbeat(s.id) == 30 * S
    clock.advance(10 * S)
    assert engine.heartbeat(s.id) == 30 * S
    after = engine.get(s.id)
    assert after.last_active_at - s.last_active_at == 10 * S
    assert after.expires_at - s.expires_at == 10 * S
    clock.advance(25 * S)  # 35 s after creation, 25 s after the heartbeat
    assert engine.advance(clock()) == 0
    assert engine.get(s.id).state is State.ACTIVE  # a heartbeat marks it active
    with pytest.raises(afsm.NotFound):
        engine.heartbeat(uuid.uuid4())


def test_expired_between_ticks_and_reaped(engine: afsm.Engine, clock: VirtualClock) -> None:
    s = make(engine, timeout=5 * S)
    keep = make(engine, timeout=60 * S)
    clock.advance(6 * S)
    with pytest.raises(afsm.Expired) as info:
        engine.get(s.id)
    assert info.value.session is not None and info.value.session.id == s.id
    with pytest.raises(afsm.Expired):
        engine.heartbeat(s.id)
    with pytest.raises(afsm.Expired):
        engine.get_by_connection(s.connection_id)
    assert [x.id for x in engine.list_sessions().sessions] == [keep.id]
    assert engine.advance(clock()) == 1
    with pytest.raises(afsm.NotFound):
        engine.get(s.id)
    assert engine.get(keep.id).id == keep.id
    assert engine.now() == clock()


def test_set_default_timeout(engine: afsm.Engine) -> None:
    engine.set_default_timeout(datetime.timedelta(seconds=7))
    assert make(engine).timeout == 7 * S
    assert make(engine, timeout=datetime.timedelta(milliseconds=1500)).timeout == 1500 * S / 1000
    # sub-millisecond timeouts round up to 1 ms
    assert make(engine, timeout=datetime.timedelta(microseconds=10)).timeout == S / 1000


def test_stats_add_and_set(engine: afsm.Engine) -> None:
    s = make(engine)
    engine.add_stats(s.id, Stats(packets_sent=1, bytes_sent=100, current_rtt_ms=20))
    engine.add_stats(s.id, Stats(packets_received=2, bytes_received=300, retransmissions=1))
    assert engine.get(s.id).stats == Stats(1, 2, 100, 300, 1, 20)
    engine.add_stats(s.id, Stats(current_rtt_ms=7))
    assert engine.get(s.id).stats.current_rtt_ms == 7
    big = Stats(2**64 - 1, 0, 0, 0, 0, 2**32 - 1)
    assert engine.update(s.id, stats=big).stats == big
    with pytest.raises(afsm.NotFound):
        engine.add_stats(uuid.uuid4(), Stats(packets_sent=1))
    with pytest.raises(afsm.InvalidArgument):
        engine.add_stats(s.id, Stats(packets_sent=-1))
    with pytest.raises(afsm.InvalidArgument):
        engine.add_stats(s.id, Stats(current_rtt_ms=2**32))
    with pytest.raises(TypeError):
        engine.add_stats(s.id, {"packets_sent": 1})  # type: ignore[arg-type]


LEGAL = {
    (State.CONNECTING, State.ACTIVE),
    (State.ACTIVE, State.IDLE),
    (State.IDLE, State.ACTIVE),
    (State.ACTIVE, State.DISCONNECTING),
    (State.IDLE, State.DISCONNECTING),
}
PATH = {
    State.CONNECTING: [],
    State.ACTIVE: [State.ACTIVE],
    State.IDLE: [State.ACTIVE, State.IDLE],
    State.DISCONNECTING: [State.ACTIVE, State.DISCONNECTING],
}


@pytest.mark.parametrize("start", list(PATH))
@pytest.mark.parametrize("target", list(State))
def test_state_transitions(engine: afsm.Engine, events: object, start: State, target: State) -> None:
    s = make(engine)
    for step in PATH[start]:
        assert engine.update(s.id, state=step).state is step
    legal = (start, target) in LEGAL or target in (start, State.CLOSED)
    if not legal:
        with pytest.raises(afsm.InvalidTransition) as info:
            engine.update(s.id, state=target)
        assert info.value.name == "AFSM_ETRANSITION"
        assert engine.get(s.id).state is start  # unchanged
        return
    result = engine.update(s.id, state=target)
    assert result.state is target
    if target is State.CLOSED:
        with pytest.raises(afsm.NotFound):
            engine.get(s.id)
        with pytest.raises(afsm.NotFound):
            engine.update(s.id, state=State.ACTIVE)
    else:
        assert engine.get(s.id).state is target


def test_update_all_or_nothing(engine: afsm.Engine) -> None:
    s = make(engine, metadata={"a": "1"})
    with pytest.raises(afsm.InvalidTransition):
        engine.update(s.id, state=State.IDLE, metadata={"b": "2"}, stats=Stats(packets_sent=9))
    after = engine.get(s.id)
    assert dict(after.metadata) == {"a": "1"} and after.stats == Stats()
    assert after.state is State.CONNECTING
    both = engine.update(s.id, state=State.ACTIVE, metadata={"b": "2"}, stats=Stats(packets_sent=9))
    assert both.state is State.ACTIVE
    assert dict(both.metadata) == {"a": "1", "b": "2"}
    assert both.stats.packets_sent == 9
    assert engine.update(s.id) == engine.get(s.id)  # nothing requested: a no-op copy


def test_metadata_merge_vs_replace(engine: afsm.Engine) -> None:
    s = make(engine, metadata={"a": "1", "b": "2"})
    merged = engine.update(s.id, metadata={"b": "20", "c": "3"})
    assert dict(merged.metadata) == {"a": "1", "b": "20", "c": "3"}
    assert dict(engine.update(s.id, metadata={}).metadata) == {"a": "1", "b": "20", "c": "3"}
    replaced = engine.update(s.id, metadata={"z": ""}, replace_metadata=True)
    assert dict(replaced.metadata) == {"z": ""}
    assert dict(engine.get(s.id).metadata) == {"z": ""}
    cleared = engine.update(s.id, replace_metadata=True)
    assert dict(cleared.metadata) == {}
    assert dict(engine.get(s.id).metadata) == {}


def test_metadata_limits_exact(engine: afsm.Engine) -> None:
    sixty_four = {f"k{i:02d}": "v" for i in range(64)}
    assert dict(make(engine, metadata=sixty_four).metadata) == sixty_four
    full = {"k": "v" * 4095}
    s = make(engine, metadata=full)
    assert dict(engine.get(s.id).metadata) == full
    with pytest.raises(afsm.TooLong):
        engine.update(s.id, metadata={"x": ""})  # merged map would be 4097 bytes
    assert dict(engine.get(s.id).metadata) == full
    s2 = make(engine, metadata={f"k{i:02d}": "" for i in range(60)})
    with pytest.raises(afsm.TooLong):
        engine.update(s2.id, metadata={f"n{i}": "" for i in range(5)})  # 65 keys after merge
    long_key = {"k" * 255: "v"}
    assert dict(make(engine, metadata=long_key).metadata) == long_key


def test_metadata_growing_between_get_and_fetch_is_handled(engine: afsm.Engine) -> None:
    """The binding retries when the metadata outgrows the size in the info."""
    s = make(engine, metadata={"a": "1"})
    for i in range(20):
        engine.update(s.id, metadata={f"k{i}": "x" * 100})
        assert len(engine.get(s.id).metadata) == i + 2


def test_delete_and_reason(engine: afsm.Engine, events: object) -> None:
    s = make(engine)
    engine.delete(s.id, reason="kicked")
    with pytest.raises(afsm.NotFound):
        engine.get(s.id)
    with pytest.raises(afsm.NotFound):
        engine.delete(s.id)
    t = make(engine)
    engine.delete(str(t.id))
    assert [e.reason for e in events.of(s.id) if e.type is afsm.EventType.DELETED] == ["kicked"]  # type: ignore[attr-defined]
    assert [e.reason for e in events.of(t.id) if e.type is afsm.EventType.DELETED] == ["deleted"]  # type: ignore[attr-defined]


def test_delete_expired_not_yet_reaped(engine: afsm.Engine, clock: VirtualClock) -> None:
    s = make(engine, timeout=S)
    clock.advance(2 * S)
    engine.delete(s.id)
    assert engine.advance(clock()) == 0


def test_delete_user_sessions(engine: afsm.Engine) -> None:
    mine = [make(engine, "bob") for _ in range(5)]
    other = make(engine, "carol")
    assert engine.delete_user_sessions("bob", reason="logout") == 5
    assert engine.delete_user_sessions("bob") == 0
    assert engine.delete_user_sessions("nobody") == 0
    for s in mine:
        with pytest.raises(afsm.NotFound):
            engine.get(s.id)
    assert engine.get(other.id).user_id == "carol"


def test_counts(engine: afsm.Engine) -> None:
    assert engine.counts().total == 0
    a, b, c = make(engine), make(engine), make(engine)
    engine.update(a.id, state=State.ACTIVE)
    engine.update(b.id, state=State.ACTIVE)
    engine.update(b.id, state=State.IDLE)
    counts = engine.counts()
    assert counts.total == 3
    assert dict(counts.by_state) == {
        State.CONNECTING: 1, State.ACTIVE: 1, State.IDLE: 1, State.DISCONNECTING: 0, State.CLOSED: 0,
    }
    engine.delete(c.id)
    assert engine.counts().total == 2


def test_get_many(engine: afsm.Engine, clock: VirtualClock) -> None:
    live = [make(engine, metadata={"i": str(i)}) for i in range(10)]
    short = make(engine, timeout=S)
    clock.advance(2 * S)
    missing = uuid.uuid4()
    results = engine.get_many([*(s.id for s in live), missing, short.id, str(live[0].id)])
    assert [r.id for r in results[:10]] == [s.id for s in live]  # type: ignore[union-attr]
    assert [dict(r.metadata) for r in results[:10]] == [{"i": str(i)} for i in range(10)]  # type: ignore[union-attr]
    assert isinstance(results[10], afsm.NotFound)
    assert isinstance(results[11], afsm.Expired) and results[11].session.id == short.id  # type: ignore[union-attr]
    assert results[12] == results[0]
    assert engine.get_many([]) == []
    with pytest.raises(afsm.InvalidUUID):
        engine.get_many([live[0].id, "garbage"])


def test_heartbeat_many(engine: afsm.Engine, clock: VirtualClock) -> None:
    ss = [make(engine) for _ in range(5)]
    clock.advance(10 * S)
    missing = uuid.uuid4()
    results = engine.heartbeat_many([*(s.id for s in ss), missing])
    assert results[:5] == [30 * S] * 5
    assert isinstance(results[5], afsm.NotFound)
    assert all(engine.get(s.id).last_active_at - s.last_active_at == 10 * S for s in ss)


def test_add_stats_many(engine: afsm.Engine) -> None:
    ss = [make(engine) for _ in range(4)]
    missing = uuid.uuid4()
    results = engine.add_stats_many([s.id for s in ss] + [missing], Stats(packets_sent=1))
    assert results[:4] == [None] * 4 and isinstance(results[4], afsm.NotFound)
    deltas = [Stats(bytes_sent=i) for i in range(4)]
    assert engine.add_stats_many([s.id for s in ss], deltas) == [None] * 4
    assert [engine.get(s.id).stats for s in ss] == [Stats(packets_sent=1, bytes_sent=i) for i in range(4)]
    with pytest.raises(ValueError):
        engine.add_stats_many([ss[0].id], deltas)


def test_batches_over_batch_max(engine: afsm.Engine) -> None:
    """More ids than one C call takes are split; order is kept."""
    s = make(engine)
    ids = [s.id] * (afsm.BATCH_MAX + 3)
    assert engine.add_stats_many(ids, Stats(packets_sent=1)) == [None] * len(ids)
    assert engine.get(s.id).stats.packets_sent == len(ids)
    hb = engine.heartbeat_many(ids)
    assert len(hb) == len(ids) and hb[-1] == 30 * S


def test_handles(engine: afsm.Engine, clock: VirtualClock) -> None:
    s = make(engine)
    assert engine.pinned() == 0
    with engine.pin(s.id) as h:
        assert h.session_id == s.id
        assert engine.pinned() == 1
        clock.advance(5 * S)
        assert h.heartbeat() == 30 * S
        h.add_stats(Stats(packets_sent=3, current_rtt_ms=9))
        assert engine.get(s.id).stats == Stats(packets_sent=3, current_rtt_ms=9)
        assert engine.get(s.id).last_active_at - s.last_active_at == 5 * S
        engine.delete(s.id)
        with pytest.raises(afsm.NotFound):
            h.heartbeat()
        with pytest.raises(afsm.NotFound):
            h.add_stats(Stats(packets_sent=1))
    assert h.released
    assert engine.pinned() == 0
    h.release()  # idempotent
    with pytest.raises(ValueError):
        h.heartbeat()
    t = make(engine)
    with engine.pin_by_connection(t.connection_id) as h2:
        assert h2.session_id == t.id
        assert repr(h2).startswith("<afsm.Handle")
    with pytest.raises(afsm.NotFound):
        engine.pin(uuid.uuid4())
    with pytest.raises(afsm.NotFound):
        engine.pin_by_connection(uuid.uuid4())


def test_handle_sees_expiry(engine: afsm.Engine, clock: VirtualClock) -> None:
    s = make(engine, timeout=S)
    h = engine.pin(s.id)
    clock.advance(2 * S)
    with pytest.raises(afsm.Expired):
        h.heartbeat()
    assert engine.advance(clock()) == 1
    with pytest.raises((afsm.NotFound, afsm.Expired)):
        h.heartbeat()
    h.release()


def test_unreleased_handle_is_released_by_gc(engine: afsm.Engine) -> None:
    s = make(engine)
    engine.pin(s.id)  # dropped at once; __del__ releases it
    import gc

    gc.collect()
    assert engine.pinned() == 0  # (close() would release it too now)


def test_engine_lifecycle() -> None:
    e = afsm.Engine(manual_reaper=True)
    assert not e.closed
    e.close()
    assert e.closed
    e.close()  # idempotent
    with pytest.raises(afsm.EngineClosed):
        e.get(uuid.uuid4())
    with afsm.Engine() as e2:
        make(e2)
    assert e2.closed


def test_real_reaper_thread_engine(real_engine: afsm.Engine) -> None:
    s = make(real_engine, timeout=datetime.timedelta(hours=1))
    assert real_engine.get(s.id).timeout == datetime.timedelta(hours=1)
    assert real_engine.now() > 0


def test_new_session_is_not_active_before_it_was_created(real_engine: afsm.Engine) -> None:
    for _ in range(200):
        s = make(real_engine)
        assert s.last_active_at >= s.created_at


# ---- Session values (issue 14): pickle, copy, asdict, hash, id forms -------------


def test_session_pickles_and_copies(engine: afsm.Engine) -> None:
    import copy
    import pickle

    s = make(engine, metadata={"device": "mobile", "v": "1"})
    for clone in (pickle.loads(pickle.dumps(s)), copy.copy(s), copy.deepcopy(s)):
        assert clone == s
        assert hash(clone) == hash(s)
        assert clone.metadata == {"device": "mobile", "v": "1"}
    # The README's snapshot/restore recipe, through pickle.
    snapshot = pickle.dumps([*engine.iter_sessions()])
    with afsm.Engine(manual_reaper=True) as other:
        for copy_of in pickle.loads(snapshot):
            other.restore(copy_of)
        assert other.get(s.id).metadata == s.metadata


def test_session_asdict_and_json(engine: afsm.Engine) -> None:
    import dataclasses
    import json

    s = make(engine, metadata={"device": "mobile"})
    d = dataclasses.asdict(s)
    assert d["id"] == s.id and d["metadata"] == {"device": "mobile"}
    assert d["stats"] == dataclasses.asdict(s.stats)
    assert json.loads(json.dumps(d["metadata"])) == {"device": "mobile"}


def test_session_is_hashable_and_its_metadata_read_only(engine: afsm.Engine) -> None:
    s = make(engine, metadata={"device": "mobile"})
    t = engine.get(s.id)
    assert {s, t} == {s} and {s: 1}[t] == 1  # equal values, one set entry
    with pytest.raises(TypeError):
        s.metadata["device"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        s.metadata.update(device="x")  # type: ignore[attr-defined]
    # Built by hand or by dataclasses.replace: the same hashable map.
    import dataclasses

    r = dataclasses.replace(s, metadata={"a": "b"})
    assert isinstance(r.metadata, afsm.Metadata) and hash(r) != hash(s)


def test_session_ids_in_every_uuid_form(engine: afsm.Engine) -> None:
    s = make(engine)
    for form in (s.id, str(s.id), str(s.id).upper(), "{" + str(s.id) + "}", s.id.urn, s.id.hex):
        assert engine.get(form).id == s.id
        engine.heartbeat(form)
    assert [r.id for r in engine.get_many([s.id.hex, s.id.urn])] == [s.id, s.id]  # type: ignore[union-attr]
    with pytest.raises(TypeError) as info:
        engine.get(s.id.bytes)  # type: ignore[arg-type]
    assert "uuid.UUID" in str(info.value) and "bytes" in str(info.value)
    with pytest.raises(afsm.InvalidUUID) as bad:
        engine.get("not-a-uuid")
    assert bad.value.detail is not None and "session_id: 'not-a-uuid'" in bad.value.detail
