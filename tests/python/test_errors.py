"""Every error path reaches the right exception, and leaves the engine unchanged."""

from __future__ import annotations

import datetime
import uuid

import pytest

import afsm
from afsm import State

from conftest import make

S = datetime.timedelta(seconds=1)


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"user_id": ""}, afsm.InvalidArgument, "AFSM_EINVAL"),
        ({"user_id": "u" * 257}, afsm.TooLong, "AFSM_ETOOLONG"),
        ({"user_id": "é" * 129}, afsm.TooLong, "AFSM_ETOOLONG"),  # 258 bytes, 129 characters
        ({"user_id": "a\0b"}, afsm.InvalidArgument, "AFSM_EINVAL"),
        ({"user_id": "\ud800"}, afsm.InvalidArgument, "AFSM_EINVAL"),  # not encodable
        ({"client_ip": "999.1.1.1"}, afsm.InvalidIP, "AFSM_EIP"),
        ({"client_ip": ""}, afsm.InvalidIP, "AFSM_EIP"),
        ({"client_ip": "fe80::1%eth0"}, afsm.InvalidIP, "AFSM_EIP"),
        ({"client_ip": "10.0.0.1:80"}, afsm.InvalidIP, "AFSM_EIP"),
        ({"client_ip": " 10.0.0.1"}, afsm.InvalidIP, "AFSM_EIP"),
        ({"client_port": 65536}, afsm.InvalidArgument, "AFSM_EINVAL"),
        ({"client_port": -1}, afsm.InvalidArgument, "AFSM_EINVAL"),
        ({"client_port": 2**32 + 80}, afsm.InvalidArgument, "AFSM_EINVAL"),  # would wrap to 80
        ({"connection_id": uuid.UUID(int=0)}, afsm.InvalidUUID, "AFSM_EUUID"),
        ({"connection_id": "not-a-uuid"}, afsm.InvalidUUID, "AFSM_EUUID"),
        ({"connection_id": "0" * 32}, afsm.InvalidUUID, "AFSM_EUUID"),  # no dashes
        ({"metadata": {f"k{i}": "" for i in range(65)}}, afsm.TooLong, "AFSM_ETOOLONG"),
        ({"metadata": {"k": "v" * 4096}}, afsm.TooLong, "AFSM_ETOOLONG"),  # 4097 bytes
        ({"metadata": {f"k{i:02d}": "v" * 62 for i in range(64)}}, afsm.TooLong, "AFSM_ETOOLONG"),
        ({"metadata": {"k" * 256: ""}}, afsm.TooLong, "AFSM_ETOOLONG"),
        ({"metadata": {"": "v"}}, afsm.InvalidArgument, "AFSM_EINVAL"),
        ({"metadata": {"k\0": "v"}}, afsm.InvalidArgument, "AFSM_EINVAL"),
        ({"metadata": {"k": "v\0"}}, afsm.InvalidArgument, "AFSM_EINVAL"),
        ({"timeout": -S}, afsm.InvalidArgument, "AFSM_EINVAL"),
        ({"timeout": datetime.timedelta(days=3651 * 2)}, afsm.InvalidArgument, "AFSM_EINVAL"),
    ],
)
def test_create_errors(engine: afsm.Engine, kwargs: dict, exc: type, name: str) -> None:
    args = {"user_id": "alice", "client_ip": "192.0.2.1", "client_port": 443, **kwargs}
    with pytest.raises(exc) as info:
        engine.create_session(**args)
    assert info.value.name == name
    assert info.value.status == getattr(afsm._lib, name)
    assert engine.counts().total == 0


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"user_id": 42}, TypeError),
        ({"client_port": "443"}, TypeError),
        ({"client_port": True}, TypeError),
        ({"connection_id": 5}, TypeError),
        ({"metadata": [("a", "b")]}, TypeError),
        ({"metadata": {"a": 1}}, TypeError),
        ({"timeout": 30}, TypeError),
    ],
)
def test_create_type_errors(engine: afsm.Engine, kwargs: dict, exc: type) -> None:
    args = {"user_id": "alice", "client_ip": "192.0.2.1", "client_port": 443, **kwargs}
    with pytest.raises(exc):
        engine.create_session(**args)


def test_duplicate_connection_id(engine: afsm.Engine) -> None:
    s = make(engine)
    with pytest.raises(afsm.AlreadyExists) as info:
        make(engine, connection_id=s.connection_id)
    assert info.value.name == "AFSM_EEXISTS"
    assert engine.counts().total == 1
    engine.delete(s.id)
    assert make(engine, connection_id=s.connection_id).connection_id == s.connection_id


@pytest.mark.parametrize("text", ["", "x", "01234567-89ab-cdef-0123-456789abcdeg",
                                  "01234567-89ab-cdef-0123-456789abcdef0", "{01234567-89ab-cdef-0123-456789abcdef}x",
                                  "01234567_89ab_cdef_0123_456789abcdef", "\0" * 36, "é" * 36])
def test_bad_uuid_text_everywhere(engine: afsm.Engine, text: str) -> None:
    for call in (engine.get, engine.get_by_connection, engine.heartbeat, engine.delete, engine.pin,
                 engine.pin_by_connection, lambda t: engine.update(t, state=State.ACTIVE),
                 lambda t: engine.add_stats(t, afsm.Stats()),
                 lambda t: engine.list_sessions(cursor=t)):
        with pytest.raises(afsm.InvalidUUID):
            call(text)


@pytest.mark.parametrize("state", [0, 6, 99, 2**32 - 1])
def test_update_unknown_state(engine: afsm.Engine, state: int) -> None:
    s = make(engine)
    with pytest.raises(afsm.InvalidArgument) as info:
        engine.update(s.id, state=state)
    assert info.value.name == "AFSM_EINVAL"
    assert engine.get(s.id).state is State.CONNECTING


def test_update_state_as_int(engine: afsm.Engine) -> None:
    s = make(engine)
    assert engine.update(s.id, state=2).state is State.ACTIVE
    with pytest.raises(afsm.InvalidArgument):
        engine.update(s.id, state=-1)


def test_update_errors(engine: afsm.Engine) -> None:
    s = make(engine, metadata={"a": "1"})
    with pytest.raises(afsm.NotFound):
        engine.update(uuid.uuid4(), state=State.ACTIVE)
    with pytest.raises(afsm.TooLong):
        engine.update(s.id, metadata={f"k{i}": "" for i in range(65)})
    with pytest.raises(afsm.TooLong):
        engine.update(s.id, metadata={"x": "y" * 5000}, replace_metadata=True)
    with pytest.raises(afsm.InvalidArgument):
        engine.update(s.id, metadata={"x\0": "y"})
    assert dict(engine.get(s.id).metadata) == {"a": "1"}


def test_update_expired(engine: afsm.Engine, clock: object) -> None:
    s = make(engine, timeout=S)
    clock.advance(2 * S)  # type: ignore[attr-defined]
    with pytest.raises(afsm.Expired):
        engine.update(s.id, state=State.ACTIVE)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"limit": -1}, afsm.InvalidArgument),
        ({"offset": -1}, afsm.InvalidArgument),
        ({"state": 6}, afsm.InvalidArgument),
        ({"user_id": "u" * 257}, afsm.TooLong),
        ({"created_after": datetime.datetime(2020, 1, 1)}, afsm.InvalidArgument),  # naive
        ({"created_before": "2020-01-01"}, TypeError),
    ],
)
# Timeout 0, limit 0 or over 10000, "" user filter: not errors; their
# meaning is in tests/bindings_cases.json, shared with the Go suite.
def test_list_errors(engine: afsm.Engine, kwargs: dict, exc: type) -> None:
    make(engine)
    with pytest.raises(exc):
        engine.list_sessions(**kwargs)


def test_list_limit_bounds_ok(engine: afsm.Engine) -> None:
    make(engine)
    assert len(engine.list_sessions(limit=1).sessions) == 1
    assert len(engine.list_sessions(limit=10000).sessions) == 1


def test_delete_errors(engine: afsm.Engine) -> None:
    s = make(engine)
    with pytest.raises(afsm.TooLong):
        engine.delete(s.id, reason="r" * 257)
    engine.get(s.id)
    engine.delete(s.id, reason="r" * 256)
    with pytest.raises(afsm.InvalidArgument):
        engine.delete_user_sessions("")
    with pytest.raises(afsm.TooLong):
        engine.delete_user_sessions("u" * 257)
    with pytest.raises(afsm.TooLong):
        engine.delete_user_sessions("alice", reason="r" * 257)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"shard_count": 3}, afsm.InvalidArgument),
        ({"shard_count": 8192}, afsm.InvalidArgument),
        ({"shard_count": -1}, afsm.InvalidArgument),
        ({"server_addr": "s" * 256}, afsm.TooLong),
        ({"server_addr": "a\0b"}, afsm.InvalidArgument),
        ({"log_level": 5}, afsm.InvalidArgument),
        ({"default_timeout": -S}, afsm.InvalidArgument),
        ({"max_lifetime": datetime.timedelta(days=3651 * 2)}, afsm.InvalidArgument),
    ],
)
def test_engine_config_errors(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        afsm.Engine(manual_reaper=True, **kwargs)


def test_engine_config_bounds_ok() -> None:
    with afsm.Engine(manual_reaper=True, shard_count=4096, server_addr="s" * 255,
                     log_level=afsm.LogLevel.DEBUG) as e:
        assert make(e).server_addr == "s" * 255


def test_set_default_timeout_errors(engine: afsm.Engine) -> None:
    with pytest.raises(afsm.InvalidArgument):
        engine.set_default_timeout(datetime.timedelta(0))
    with pytest.raises(afsm.InvalidArgument):
        engine.set_default_timeout(datetime.timedelta(days=3651 * 2))


def test_advance_errors(engine: afsm.Engine) -> None:
    with pytest.raises(afsm.InvalidArgument):
        engine.advance(-1)
    with pytest.raises(afsm.InvalidArgument):
        engine.advance(2**64)


def test_exceptions_pickle_and_str() -> None:
    import pickle

    exc = afsm.errors.error_for(-8, "detail here")
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is afsm.NotFound and again.status == -8 and again.detail == "detail here"
    assert str(exc) == "AFSM_ENOTFOUND: session not found (detail here)"
