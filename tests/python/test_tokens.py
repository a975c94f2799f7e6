"""Tokens and the key ring: issue, validate, rotate, every failure's own exception."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Iterator

import pytest

import afsm
from afsm import State

from conftest import EventLog, VirtualClock, make

S = datetime.timedelta(seconds=1)
K1 = bytes(range(32))
K2 = bytes(range(100, 132))
K3 = bytes(range(200, 232))


@pytest.fixture
def keyed(clock: VirtualClock, events: EventLog) -> Iterator[afsm.Engine]:
    """A manual-reaper engine in virtual time whose first key is K1 (id 1)."""
    with afsm.Engine(manual_reaper=True, clock=clock, on_event=events, key=K1, key_id=1,
                     default_timeout=30 * S, close_linger=10 * S) as e:
        yield e
        assert not e.callback_errors, list(e.callback_errors)


def new(engine: afsm.Engine, user: str = "alice", ip: str = "192.0.2.10",
        bind_ip: bool = False) -> tuple[afsm.Session, str]:
    return engine.create_session(user, ip, 40000, bind_ip=bind_ip)


# afsm_session_restore turns the snapshot's wall-clock times into engine time
# with a fresh offset (wall clock minus engine clock, now), while copies are
# made with the store's offset of the last expiry pass: a round trip moves the
# timestamps by the wall time elapsed since then (see
# test_restore_keeps_timestamps_exactly). Everything else must match exactly.
SLACK = datetime.timedelta(seconds=1)


def assert_same(got: afsm.Session, want: afsm.Session) -> None:
    times = ("created_at", "last_active_at", "expires_at")
    for name in times:
        assert abs(getattr(got, name) - getattr(want, name)) < SLACK, name
    assert got.expires_at - got.last_active_at == want.expires_at - want.last_active_at
    strip = {n: None for n in times}
    import dataclasses

    assert dataclasses.replace(got, **strip) == dataclasses.replace(want, **strip)


def flip(token: str, index: int) -> str:
    """The token with the base64 character at ``index`` replaced by another one."""
    c = token[index]
    return token[:index] + ("A" if c != "A" else "B") + token[index + 1:]


# ---- the happy path ----------------------------------------------------------------


def test_create_issues_a_token_that_validates(keyed: afsm.Engine) -> None:
    session, token = new(keyed)
    assert token.startswith("v1.") and token.isascii() and len(token) <= afsm.TOKEN_MAX
    assert set(token[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    got = keyed.validate_token(token)
    assert got == session and got.token_generation == session.token_generation >= 1
    assert keyed.validate_token(token.encode()) == session  # bytes too
    assert keyed.validate_token(token, client_ip="203.0.113.9") == session  # unbound: any IP


def test_validate_returns_the_current_copy_with_metadata(keyed: afsm.Engine) -> None:
    session, token = keyed.create_session("alice", "192.0.2.1", 1, metadata={"plan": "pro"})
    keyed.update(session.id, state=State.ACTIVE, metadata={"region": "eu"})
    got = keyed.validate_token(token)
    assert got.state is State.ACTIVE
    assert dict(got.metadata) == {"plan": "pro", "region": "eu"}


def test_issue_token_keeps_earlier_tokens_valid(keyed: afsm.Engine) -> None:
    session, first = new(keyed)
    second = keyed.issue_token(session.id)
    third = keyed.issue_token(str(session.id))
    assert len({first, second, third}) == 3  # a fresh nonce every time
    for token in (first, second, third):
        assert keyed.validate_token(token).id == session.id


def test_rotate_revokes_every_earlier_token(keyed: afsm.Engine) -> None:
    session, first = new(keyed)
    second = keyed.issue_token(session.id)
    rotated = keyed.rotate_token(session.id)
    for old in (first, second):
        with pytest.raises(afsm.TokenRevoked) as info:
            keyed.validate_token(old)
        assert info.value.name == "AFSM_EREVOKED"
    got = keyed.validate_token(rotated)
    assert got.token_generation == session.token_generation + 1
    again = keyed.rotate_token(session.id)
    with pytest.raises(afsm.TokenRevoked):
        keyed.validate_token(rotated)
    assert keyed.validate_token(again).token_generation == session.token_generation + 2


# ---- every failure has its own exception ---------------------------------------------


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda t: t[:-1], id="last-char-cut"),
    pytest.param(lambda t: t[: len(t) // 2], id="half"),
    pytest.param(lambda t: t[:3], id="prefix-only"),
    pytest.param(lambda t: "", id="empty"),
    pytest.param(lambda t: "v2." + t[3:], id="other-version"),
    pytest.param(lambda t: t.upper(), id="upper-cased"),
    pytest.param(lambda t: t[:10] + "!" + t[11:], id="not-base64"),
    pytest.param(lambda t: t[:10] + "+" + t[11:], id="standard-not-url-base64"),
    pytest.param(lambda t: t + "A", id="one-char-more"),
    pytest.param(lambda t: t + "==", id="padded"),
    pytest.param(lambda t: " " + t, id="leading-space"),
    pytest.param(lambda t: t + "\n", id="trailing-newline"),
    pytest.param(lambda t: t[:20] + "\0" + t[21:], id="nul-inside"),
    pytest.param(lambda t: t[:20] + "é" + t[21:], id="non-ascii"),
])
def test_truncated_or_garbled_is_malformed(keyed: afsm.Engine, mangle: object) -> None:
    _, token = new(keyed)
    with pytest.raises(afsm.MalformedToken) as info:
        keyed.validate_token(mangle(token))  # type: ignore[operator]
    assert info.value.name == "AFSM_ETOKENFORMAT"
    assert isinstance(info.value, afsm.InvalidToken)


def test_altered_payload_is_forged(keyed: afsm.Engine) -> None:
    _, token = new(keyed)
    # Past "v1." and the key id (3 characters hold its 2 bytes and 2 bits of the nonce).
    for index in (8, 20, 40, len(token) - 2):
        with pytest.raises(afsm.ForgedToken) as info:
            keyed.validate_token(flip(token, index))
        assert info.value.name == "AFSM_ETOKEN"


def test_altered_key_id_is_unknown_key(keyed: afsm.Engine) -> None:
    _, token = new(keyed)
    with pytest.raises(afsm.UnknownTokenKey) as info:
        keyed.validate_token(flip(token, 4))
    assert info.value.name == "AFSM_ETOKENKEY"
    assert afsm.UnknownKey is afsm.UnknownTokenKey


def test_foreign_key_with_the_same_id_is_forged(keyed: afsm.Engine) -> None:
    with afsm.Engine(manual_reaper=True, key=K2, key_id=1) as other:
        _, foreign = new(other)
        with pytest.raises(afsm.ForgedToken):
            keyed.validate_token(foreign)


def test_key_id_never_in_the_ring_is_unknown(keyed: afsm.Engine) -> None:
    with afsm.Engine(manual_reaper=True, key=K1, key_id=2) as other:  # same bytes, other id
        _, foreign = new(other)
        with pytest.raises(afsm.UnknownTokenKey):
            keyed.validate_token(foreign)
    with afsm.Engine(manual_reaper=True) as random_key:  # id 0, never in a configured ring
        _, foreign = new(random_key)
        with pytest.raises(afsm.UnknownTokenKey):
            keyed.validate_token(foreign)


def test_removed_key(keyed: afsm.Engine) -> None:
    _, old = new(keyed)
    keyed.add_key(2, K2)
    keyed.use_key(2)
    keyed.remove_key(1)
    with pytest.raises(afsm.TokenKeyRemoved) as info:
        keyed.validate_token(old)
    assert info.value.name == "AFSM_EKEYREMOVED"
    assert afsm.KeyRemoved is afsm.TokenKeyRemoved


def test_expired_then_not_found(keyed: afsm.Engine, clock: VirtualClock) -> None:
    _, token = new(keyed)
    clock.advance(31 * S)
    with pytest.raises(afsm.Expired) as info:  # deadline passed, not yet reaped
        keyed.validate_token(token)
    assert info.value.name == "AFSM_EEXPIRED"
    assert not isinstance(info.value, afsm.InvalidToken)
    keyed.advance(clock())
    with pytest.raises(afsm.NotFound):
        keyed.validate_token(token)


def test_deleted_session_is_not_found(keyed: afsm.Engine) -> None:
    session, token = new(keyed)
    keyed.delete(session.id)
    with pytest.raises(afsm.NotFound) as info:
        keyed.validate_token(token)
    assert info.value.name == "AFSM_ENOTFOUND"
    with pytest.raises(afsm.NotFound):
        keyed.issue_token(session.id)
    with pytest.raises(afsm.NotFound):
        keyed.rotate_token(session.id)


def test_closed_session_lingering_is_closed(keyed: afsm.Engine, clock: VirtualClock) -> None:
    session, token = new(keyed)
    keyed.update(session.id, state=State.CLOSED)
    assert keyed.get(session.id).state is State.CLOSED  # readable for close_linger
    with pytest.raises(afsm.Closed) as info:
        keyed.validate_token(token)
    assert info.value.name == "AFSM_ECLOSED"
    with pytest.raises(afsm.Closed):
        keyed.issue_token(session.id)
    clock.advance(11 * S)
    keyed.advance(clock())
    with pytest.raises(afsm.NotFound):
        keyed.validate_token(token)


def test_ip_bound_token(keyed: afsm.Engine) -> None:
    session, token = new(keyed, ip="192.0.2.44", bind_ip=True)
    assert keyed.validate_token(token, client_ip="192.0.2.44") == session
    assert keyed.validate_token(token, client_ip=ipaddress.ip_address("192.0.2.44")) == session
    assert keyed.validate_token(token, client_ip="::ffff:192.0.2.44") == session  # v4-mapped is v4
    for other in ("192.0.2.45", "2001:db8::1"):
        with pytest.raises(afsm.IPMismatch) as info:
            keyed.validate_token(token, client_ip=other)
        assert info.value.name == "AFSM_EIPMISMATCH"
    with pytest.raises(afsm.IPMismatch):
        keyed.validate_token(token)  # a bound token needs the presenting address
    with pytest.raises(afsm.InvalidIP):
        keyed.validate_token(token, client_ip="192.0.2.300")
    unbound = keyed.issue_token(session.id)
    assert keyed.validate_token(unbound, client_ip="198.51.100.1") == session
    rebound = keyed.rotate_token(session.id, bind_ip=True)
    with pytest.raises(afsm.IPMismatch):
        keyed.validate_token(rebound, client_ip="198.51.100.1")


def test_ip_bound_v6(keyed: afsm.Engine) -> None:
    session, token = new(keyed, ip="2001:db8::7", bind_ip=True)
    assert keyed.validate_token(token, client_ip="2001:DB8:0::7") == session
    with pytest.raises(afsm.IPMismatch):
        keyed.validate_token(token, client_ip="2001:db8::8")


def test_token_argument_types(keyed: afsm.Engine) -> None:
    with pytest.raises(TypeError):
        keyed.validate_token(12345)  # type: ignore[arg-type]
    with pytest.raises(afsm.InvalidUUID):
        keyed.issue_token("not-a-uuid")
    with pytest.raises(afsm.MalformedToken):
        keyed.validate_token("\udcff")  # a lone surrogate reaches the library, which refuses it


def test_every_failure_class_is_distinct() -> None:
    classes = [afsm.MalformedToken, afsm.ForgedToken, afsm.UnknownTokenKey, afsm.TokenKeyRemoved,
               afsm.TokenRevoked, afsm.IPMismatch, afsm.NotFound, afsm.Expired, afsm.Closed]
    assert len(set(classes)) == len(classes)
    for cls in classes[:6]:
        assert issubclass(cls, afsm.InvalidToken)
    for cls in classes[6:]:
        assert not issubclass(cls, afsm.InvalidToken)


# ---- the key ring ------------------------------------------------------------------------


def test_key_rotation_end_to_end(keyed: afsm.Engine) -> None:
    a, token_a = new(keyed, "alice")
    # 1. A new key opens tokens as soon as it is added, but does not seal yet.
    keyed.add_key(2, K2)
    assert keyed.validate_token(token_a) == a
    b, token_b1 = new(keyed, "bob")
    # 2. Make it current: new tokens are sealed with it, old ones still open.
    keyed.use_key(2)
    c, token_c = new(keyed, "carol")
    token_b2 = keyed.issue_token(b.id)
    for token, s in ((token_a, a), (token_b1, b), (token_b2, b), (token_c, c)):
        assert keyed.validate_token(token).id == s.id
    # 3. The old key cannot be removed while it is current ...
    keyed.use_key(1)
    with pytest.raises(afsm.Busy):
        keyed.remove_key(1)
    keyed.use_key(2)
    # 4. ... and once removed, its tokens fail with their own error.
    keyed.remove_key(1)
    for token in (token_a, token_b1):
        with pytest.raises(afsm.TokenKeyRemoved):
            keyed.validate_token(token)
    assert keyed.validate_token(token_b2).id == b.id
    assert keyed.validate_token(token_c).id == c.id
    # 5. A client with a dead token gets a new one (a new generation, new key).
    fresh = keyed.rotate_token(a.id)
    assert keyed.validate_token(fresh).id == a.id
    with pytest.raises(afsm.TokenKeyRemoved):
        keyed.validate_token(token_a)
    # 6. A removed id is gone from the ring.
    with pytest.raises(afsm.NotFound):
        keyed.use_key(1)
    with pytest.raises(afsm.NotFound):
        keyed.remove_key(1)


def test_key_ring_argument_errors(keyed: afsm.Engine) -> None:
    with pytest.raises(afsm.AlreadyExists):
        keyed.add_key(1, K2)
    for bad_id in (0, afsm.KEY_ID_MAX + 1):
        with pytest.raises(afsm.InvalidArgument):
            keyed.add_key(bad_id, K2)
    for bad_key in (b"", K2[:31], K2 + b"x"):
        with pytest.raises(afsm.InvalidArgument):
            keyed.add_key(3, bad_key)
    with pytest.raises(TypeError):
        keyed.add_key(3, "a" * 32)  # type: ignore[arg-type]
    with pytest.raises(afsm.InvalidArgument):
        keyed.add_key(-1, K2)
    with pytest.raises(afsm.NotFound):
        keyed.use_key(9)
    with pytest.raises(afsm.NotFound):
        keyed.remove_key(9)
    keyed.add_key(afsm.KEY_ID_MAX, K3)
    keyed.use_key(afsm.KEY_ID_MAX)
    _, token = new(keyed)
    assert keyed.validate_token(token)


def key_file(tmp_path: Path, mode: int, data: bytes = K3, name: str = "token.key") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_key_file_permissions(keyed: afsm.Engine, tmp_path: Path) -> None:
    for mode in (0o644, 0o640, 0o604, 0o660, 0o666):
        with pytest.raises(afsm.KeyFileError) as info:
            keyed.add_key_file(3, key_file(tmp_path, mode))
        assert info.value.name == "AFSM_EKEYFILE"
    keyed.add_key_file(3, key_file(tmp_path, 0o600))
    keyed.add_key_file(4, str(key_file(tmp_path, 0o400, K2, "ro.key")))
    keyed.use_key(3)
    _, token = new(keyed)
    # The file's key is K3: an engine given K3 directly under id 3 opens the token.
    with afsm.Engine(manual_reaper=True, key=K3, key_id=3) as other:
        with pytest.raises(afsm.NotFound):  # genuine, but that engine has no such session
            other.validate_token(token)


def test_key_file_content_and_path_errors(keyed: afsm.Engine, tmp_path: Path) -> None:
    bad = [
        key_file(tmp_path, 0o600, K3[:31], "short.key"),
        key_file(tmp_path, 0o600, K3 + b"\n", "newline.key"),
        tmp_path / "missing.key",
        tmp_path,  # a directory
    ]
    for path in bad:
        with pytest.raises(afsm.KeyFileError):
            keyed.add_key_file(5, path)
    with pytest.raises(afsm.KeyFileError):
        keyed.add_key_file(5, str(key_file(tmp_path, 0o600)) + "\0x")


def test_engine_key_file(tmp_path: Path, clock: VirtualClock) -> None:
    with pytest.raises(afsm.KeyFileError):
        afsm.Engine(key_file=key_file(tmp_path, 0o644))
    path = key_file(tmp_path, 0o600)
    with afsm.Engine(manual_reaper=True, clock=clock, key_file=path, key_id=9) as a:
        session, token = new(a)
        snapshot = a.get(session.id)
    with afsm.Engine(manual_reaper=True, clock=clock, key=K3, key_id=9) as b:
        b.restore(snapshot)
        assert_same(b.validate_token(token), snapshot)


def test_engine_key_arguments() -> None:
    with pytest.raises(afsm.InvalidArgument):
        afsm.Engine(key=K1[:16])
    with pytest.raises(afsm.InvalidArgument):
        afsm.Engine(key=K1, key_id=0)
    with pytest.raises(afsm.InvalidArgument):
        afsm.Engine(key=K1, key_file="/nonexistent")  # one first key, not two
    with afsm.Engine(key=K1) as e:  # key_id defaults to 1
        e.add_key(2, K2)
        with pytest.raises(afsm.AlreadyExists):
            e.add_key(1, K2)
        e.use_key(1)


# ---- restore: snapshot-style reloads --------------------------------------------------------


def test_restore_round_trip(clock: VirtualClock, events: EventLog) -> None:
    with afsm.Engine(manual_reaper=True, clock=clock, key=K1, key_id=1, server_addr="a") as old:
        session, _ = old.create_session("alice", "2001:db8::7", 51820,
                                        metadata={"plan": "pro", "region": "eu-west"},
                                        timeout=datetime.timedelta(minutes=5))
        old.update(session.id, state=State.ACTIVE, stats=afsm.Stats(packets_sent=3, bytes_sent=900,
                                                                      current_rtt_ms=12))
        token = old.rotate_token(session.id)
        bound = old.issue_token(session.id, bind_ip=True)
        stale = old.issue_token(session.id)
        old.rotate_token(session.id)  # revokes token, bound and stale ...
        token = old.issue_token(session.id)  # ... so take the current ones
        bound = old.issue_token(session.id, bind_ip=True)
        snapshot = old.get(session.id)
        other = make(old, "bob")
        snapshot_other = old.get(other.id)
    clock.advance(2 * S)
    with afsm.Engine(manual_reaper=True, clock=clock, on_event=events, key=K1, key_id=1,
                     server_addr="a") as new_engine:
        new_engine.restore(snapshot)
        new_engine.restore(snapshot_other)
        got = new_engine.validate_token(token)
        assert got.id == snapshot.id
        assert got.token_generation == snapshot.token_generation
        assert dict(got.metadata) == {"plan": "pro", "region": "eu-west"}
        assert_same(got, snapshot)
        assert new_engine.validate_token(bound, client_ip="2001:db8::7").id == snapshot.id
        with pytest.raises(afsm.TokenRevoked):
            new_engine.validate_token(stale)
        assert_same(new_engine.get_by_connection(snapshot.connection_id), snapshot)
        with pytest.raises(afsm.AlreadyExists):
            new_engine.restore(snapshot)
        # The deadline is last_active_at + timeout (wall clock: the 2 s of
        # virtual time between the engines do not count).
        clock.advance(datetime.timedelta(minutes=4, seconds=58))
        assert new_engine.validate_token(token).id == snapshot.id
        clock.advance(datetime.timedelta(seconds=3))
        with pytest.raises(afsm.Expired):
            new_engine.validate_token(token)
        # A snapshot restored after its deadline passed (wall clock) is refused.
        # (The engine clock must be older than the timeout: see
        # test_restore_refuses_expired_snapshot_on_a_young_clock.)
        clock.advance(datetime.timedelta(minutes=30))
        import dataclasses

        wall = datetime.datetime.now(datetime.timezone.utc)
        stale_snapshot = dataclasses.replace(
            snapshot_other, id=afsm.uuid7(), connection_id=afsm.uuid7(),
            created_at=wall - snapshot_other.timeout - S,
            last_active_at=wall - snapshot_other.timeout - S)
        with pytest.raises(afsm.Expired):  # expired meanwhile: nothing done
            new_engine.restore(stale_snapshot)
        with pytest.raises(afsm.NotFound):
            new_engine.get(stale_snapshot.id)


def test_restore_with_another_key_proves_nothing(clock: VirtualClock) -> None:
    with afsm.Engine(manual_reaper=True, clock=clock, key=K1, key_id=1) as old:
        session, token = new(old)
        snapshot = old.get(session.id)
    with afsm.Engine(manual_reaper=True, clock=clock, key=K2, key_id=1) as other:
        other.restore(snapshot)
        with pytest.raises(afsm.ForgedToken):
            other.validate_token(token)


def test_restore_checks(keyed: afsm.Engine) -> None:
    import dataclasses

    session, _ = new(keyed)
    snapshot = keyed.get(session.id)
    keyed.delete(session.id)
    with pytest.raises(afsm.InvalidArgument):
        keyed.restore(dataclasses.replace(snapshot, token_generation=0))
    with pytest.raises(afsm.InvalidArgument):
        keyed.restore(dataclasses.replace(snapshot, timeout=datetime.timedelta(0)))
    with pytest.raises(afsm.TooLong):
        keyed.restore(dataclasses.replace(snapshot, user_id="u" * 257))
    with pytest.raises(TypeError):
        keyed.restore({"id": session.id})  # type: ignore[arg-type]
    keyed.restore(snapshot)
    assert_same(keyed.get(session.id), snapshot)


def test_restore_keeps_timestamps_exactly(keyed: afsm.Engine) -> None:
    session, _ = new(keyed)
    snapshot = keyed.get(session.id)
    keyed.delete(session.id)
    keyed.restore(snapshot)
    assert keyed.get(session.id) == snapshot


def test_restore_refuses_expired_snapshot_on_a_young_clock() -> None:
    import dataclasses

    young = VirtualClock(start_ns=60 * 1_000_000_000)  # the engine clock reads 60 s
    with afsm.Engine(manual_reaper=True, clock=young) as e:
        session, _ = new(e)
        snapshot = e.get(session.id)
        e.delete(session.id)
        wall = datetime.datetime.now(datetime.timezone.utc)
        expired = dataclasses.replace(snapshot, created_at=wall - snapshot.timeout - S,
                                      last_active_at=wall - snapshot.timeout - S)
        with pytest.raises(afsm.Expired):
            e.restore(expired)


@pytest.mark.parametrize("bind_ip", [False, True])
def test_every_single_character_replacement_fails(keyed: afsm.Engine, bind_ip: bool) -> None:
    """Exhaustive: no one-character change of a genuine token validates (trailing
    base64 bits included)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="
    session, token = new(keyed, bind_ip=bind_ip)
    for i, original in enumerate(token):
        for c in alphabet:
            if c == original:
                continue
            with pytest.raises(afsm.InvalidToken):
                keyed.validate_token(token[:i] + c + token[i + 1:], client_ip="192.0.2.10")
    assert keyed.validate_token(token, client_ip="192.0.2.10") == session
