"""The table both bindings are held to: tests/bindings_cases.json (read by
bindings/go/cases_test.go too). See its "about"."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

import afsm
import afsm._lib as afsm_lib
from conftest import make

CASES = json.loads((Path(__file__).resolve().parents[1] / "bindings_cases.json").read_text())["cases"]

ERRORS: dict[str, type[afsm.AfsmError]] = {
    "invalid_argument": afsm.InvalidArgument,
    "too_long": afsm.TooLong,
    "invalid_ip": afsm.InvalidIP,
    "ip_mismatch": afsm.IPMismatch,
    "key_exists": afsm.KeyExists,
    "key_in_use": afsm.KeyInUse,
    "key_file": afsm.KeyFileError,
    "closed": afsm.EngineClosed,
    "expired": afsm.Expired,
    "not_found": afsm.NotFound,
}


def _text(raw_hex: str) -> str:
    """Bytes that may not be UTF-8, as Python carries them in a str."""
    return bytes.fromhex(raw_hex).decode("utf-8", "surrogateescape")


def _key_file(directory: Path, spec: dict[str, Any]) -> str:
    path = directory / "k"
    if not spec.get("missing"):
        path.write_bytes(bytes(spec["size"]))
        os.chmod(path, int(spec["mode"], 8))
    return str(path)


def _user_id(args: dict[str, Any]) -> str:
    if "user_id" in args:
        return args["user_id"]
    if "user_id_hex" in args:
        return _text(args["user_id_hex"])
    if "user_id_repeat" in args:
        text, n = args["user_id_repeat"]
        return text * n
    return ""


class _VirtualClock:
    """A virtual clock that jumps an hour ahead at each CREATED event (fired
    on the creating thread before the create returns) when on_created, or
    when told (jump); and every event."""

    def __init__(self, on_created: bool) -> None:
        self.now = 1_000_000_000_000
        self.on_created = on_created
        self.events: list[afsm.Event] = []

    def jump(self) -> None:
        self.now += 3600 * 10**9

    def clock(self) -> int:
        return self.now

    def on_event(self, event: afsm.Event) -> None:
        self.events.append(event)
        if self.on_created and event.type is afsm.EventType.CREATED:
            self.jump()


def _check_events(case: dict[str, Any], engine: afsm.Engine, hooks: _VirtualClock) -> None:
    expect = case["expect"]
    created = [e.session_id for e in hooks.events if e.type is afsm.EventType.CREATED]
    if "created_left" in expect:
        left = 0
        for sid in created:
            try:
                engine.get(sid)
                left += 1
            except afsm.Expired:
                left += 1
            except afsm.NotFound:
                pass
        assert left == expect["created_left"], hooks.events
    if "deleted_reason" in expect:
        deleted = {e.session_id: e.reason for e in hooks.events if e.type is afsm.EventType.DELETED}
        for sid in created:
            assert deleted.get(sid) == expect["deleted_reason"], hooks.events


@contextlib.contextmanager
def _deleted_before_metadata(n: int) -> Iterator[None]:
    """Deletes each of the first n sessions whose metadata the binding reads
    just before the read: for a listing, the first n it listed, deleted
    after the listing (as Go's hook does), since the binding reads them in
    order."""
    real = afsm_lib.lib.afsm_session_get_metadata

    def get_metadata(engine: Any, sid: Any, *rest: Any) -> int:
        nonlocal n
        if n > 0:
            n -= 1
            assert afsm_lib.lib.afsm_session_delete(engine, sid, None, 0) == afsm_lib.AFSM_OK
        return int(real(engine, sid, *rest))

    if n:
        afsm_lib.lib.afsm_session_get_metadata = get_metadata
    try:
        yield
    finally:
        afsm_lib.lib.afsm_session_get_metadata = real
    assert n == 0, "fewer metadata reads than sessions to delete"


def _run(case: dict[str, Any], tmp: Path) -> tuple[Any, str]:
    """Runs the case's op; returns (result, key file path or "")."""
    config = case.get("config", {})
    kw: dict[str, Any] = {"manual_reaper": True, "shard_count": config.get("shard_count", 0)}
    if "capacity_hint" in config:
        kw["capacity_hint"] = config["capacity_hint"]
    if "default_timeout_ms" in config:
        kw["default_timeout"] = datetime.timedelta(milliseconds=config["default_timeout_ms"])
    if "key_hex" in config:
        kw["key"] = bytes.fromhex(config["key_hex"])
    if "server_addr_hex" in config:
        kw["server_addr"] = _text(config["server_addr_hex"])
    path = ""
    if "key_file" in config:
        path = kw["key_file"] = _key_file(tmp, config["key_file"])
    hooks = None
    if any(config.get(k) for k in ("expire_on_created", "expire_after_setup", "stopped_clock")):
        hooks = _VirtualClock(bool(config.get("expire_on_created")))
        kw["clock"], kw["on_event"] = hooks.clock, hooks.on_event
    if case["op"] == "open":
        afsm.Engine(**kw).close()
        return None, path
    with afsm.Engine(**kw) as engine:
        try:
            return _run_op(case, tmp, engine, path, hooks)
        finally:
            if hooks is not None:
                _check_events(case, engine, hooks)
                assert not engine.callback_errors, list(engine.callback_errors)


def _run_op(
    case: dict[str, Any], tmp: Path, engine: afsm.Engine, path: str, clock: _VirtualClock | None
) -> tuple[Any, str]:
    op, args = case["op"], case.get("args", {})
    setup = [
        make(engine, group["user_id"], metadata=group.get("metadata"))
        for group in case.get("setup", [])
        for _ in range(group["count"])
    ]
    if clock is not None and case.get("config", {}).get("expire_after_setup"):
        clock.jump()
    if op == "create":
        metadata = dict(args.get("metadata", {}))
        for k, v in args.get("metadata_hex", []):
            metadata[_text(k)] = _text(v)
        for i in range(args.get("metadata_keys", 0)):
            metadata[f"k{i}"] = "v"
        if "metadata_repeat" in args:
            (k, kn), (v, vn) = args["metadata_repeat"]
            metadata[k * kn] = v * vn
        ip = args.get("ip", "10.0.0.1")
        if "ip_hex" in args:
            ip = _text(args["ip_hex"])
        timeout = datetime.timedelta(
            milliseconds=args.get("timeout_ms", 0), microseconds=args.get("timeout_us", 0)
        )
        session, _ = engine.create_session(
            _user_id(args), ip, args.get("port", 0), metadata=metadata or None, timeout=timeout
        )
        return session, path
    if op == "validate_token":
        _, token = engine.create_session(
            "u", "10.0.0.1", 1, bind_ip=args["bind_ip"], metadata=args.get("metadata")
        )
        with _deleted_before_metadata(args.get("delete_before_metadata", 0)):
            return engine.validate_token(token, args["client_ip"]), path
    if op == "list":
        with _deleted_before_metadata(args.get("delete_before_metadata", 0)):
            return engine.list_sessions(user_id=_user_id(args), limit=args.get("limit", 0)), path
    if op == "update_state":
        s = make(engine, "u", metadata=args.get("metadata"))
        with _deleted_before_metadata(args.get("delete_before_metadata", 0)):
            return engine.update(s.id, state=args["state"]), path
    if op == "get":
        with _deleted_before_metadata(args.get("delete_before_metadata", 0)):
            if args.get("by_connection"):
                return engine.get_by_connection(setup[0].connection_id), path
            return engine.get(setup[0].id), path
    if op == "add_key":
        key = bytes.fromhex(args["key_hex"])
        engine.add_key(args["key_id"], key)
        if args.get("twice"):
            engine.add_key(args["key_id"], key)
        return None, path
    if op == "add_key_file":
        path = _key_file(tmp, args["file"])
        engine.add_key_file(args["key_id"], path)
        return None, path
    if args.get("close_first"):
        engine.close()
    if op in ("get_many", "heartbeat_many"):
        ids = [s.id for s in engine.iter_sessions()] if not engine.closed else []
        ids = ids[: args["ids"]] + [afsm.uuid7() for _ in range(args.get("missing", 0))]
        with _deleted_before_metadata(args.get("delete_before_metadata", 0)):
            return getattr(engine, op)(ids), path
    if op == "delete":
        reason = _text(args["reason_hex"]) if "reason_hex" in args else ""
        if "reason_repeat" in args:
            text, n = args["reason_repeat"]
            reason = text * n
        engine.delete(make(engine, "u").id, reason)
        return None, path
    if op == "restore":
        # A copy of a live session, changed as args say, restored in its place.
        s = make(engine, "u")
        engine.delete(s.id)
        changes: dict[str, Any] = {}
        if "user_id_repeat" in args:
            changes["user_id"] = _user_id(args)
        if "session_timeout_ms" in args:
            changes["timeout"] = datetime.timedelta(milliseconds=args["session_timeout_ms"])
        if "port" in args:
            changes["client_port"] = args["port"]
        if "ip" in args:
            changes["client_ip"] = args["ip"]
        engine.restore(dataclasses.replace(s, **changes))
        return None, path
    if op == "close_pinned":
        handle = engine.pin(make(engine, "u").id)
        engine.close()
        assert engine.closed
        with pytest.raises(afsm.EngineClosed):
            handle.heartbeat()
        handle.release()  # a no-op now
        return None, path
    if op == "handle_after_release":
        handle = engine.pin(make(engine, "u").id)
        handle.release()
        handle.heartbeat()
        return None, path
    if op == "advance":
        engine.advance(args["now_ns"])
        return None, path
    if op == "set_default_timeout":
        engine.set_default_timeout(datetime.timedelta(milliseconds=args["timeout_ms"]))
        return None, path
    if op == "add_stats_many":
        # Every session of the setup, and fewer (or more) deltas.
        ids = [s.id for s in engine.iter_sessions()] if not engine.closed else []
        engine.add_stats_many(ids, [afsm.Stats(packets_sent=1)] * args["deltas"])
        return None, path
    if op == "remove_key":
        engine.remove_key(args["key_id"])
        return None, path
    raise AssertionError(f"unknown op {op!r}")


def _check_items(want: list[str], got: list[Any]) -> None:
    """A batch's per-id outcomes against want ("ok" or an error name); the
    items failing with the same name must carry the same message, whatever
    made them fail."""
    assert len(got) == len(want)
    messages: dict[str, str] = {}
    for i, (w, item) in enumerate(zip(want, got)):
        if w == "ok":
            assert isinstance(item, afsm.Session), (i, item)
            continue
        assert isinstance(item, ERRORS[w]), (i, item)
        assert messages.setdefault(w, str(item)) == str(item), (i, item, messages)


def _key_file_path(case: dict[str, Any], tmp: Path) -> str:
    spec = case.get("config", {}).get("key_file") or case.get("args", {}).get("file")
    return str(tmp / "k") if spec else ""


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_shared_binding_case(case: dict[str, Any], tmp_path: Path) -> None:
    expect = case["expect"]
    if expect.get("ok"):
        result, _ = _run(case, tmp_path)
        if "timeout_ms" in expect:
            assert result.timeout == datetime.timedelta(milliseconds=expect["timeout_ms"])
        if "count" in expect:
            assert len(result.sessions) == expect["count"]
        if "total" in expect:
            assert result.total == expect["total"]
        if "metadata" in expect:
            assert dict(result.metadata) == expect["metadata"]
        if "items" in expect:
            _check_items(expect["items"], result)
        return
    with pytest.raises(ERRORS[expect["error"]]) as info:
        _run(case, tmp_path)
    copy = getattr(info.value, "session", None)
    if copy is not None and case.get("setup"):
        # A copy carried by an error is the session's, metadata included.
        assert dict(copy.metadata) == case["setup"][0].get("metadata", {})
    if "detail" in expect:
        detail = expect["detail"].replace("{path}", _key_file_path(case, tmp_path))
        assert (info.value.detail or "") == detail
        assert detail in str(info.value)


def test_the_table_is_read() -> None:
    assert len(CASES) >= 20
