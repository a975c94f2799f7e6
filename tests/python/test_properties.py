"""Property tests (Debian's python3-hypothesis)."""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import afsm
from afsm import Stats

from conftest import make

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that libafsm accepts in metadata: no NUL, encodable (no lone surrogates).
safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))
key_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                   min_size=1, max_size=40)


def size(md: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in md.items())


def within_bounds(md: dict[str, str]) -> bool:
    return (len(md) <= 64 and size(md) <= 4096
            and all(len(k.encode()) <= 255 for k in md))


metadata_maps = st.dictionaries(key_text, st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=80),
    max_size=64).filter(within_bounds)


@pytest.fixture(scope="module")
def shared() -> Iterator[afsm.Engine]:
    with afsm.Engine(manual_reaper=True, shard_count=4) as e:
        yield e


@SETTINGS
@given(md=metadata_maps)
def test_metadata_round_trip(shared: afsm.Engine, md: dict[str, str]) -> None:
    s = make(shared, metadata=md)
    assert dict(s.metadata) == md
    assert dict(shared.get(s.id).metadata) == md
    assert list(shared.get(s.id).metadata) == sorted(md, key=lambda k: k.encode())
    replaced = shared.update(s.id, metadata=md, replace_metadata=True)
    assert dict(replaced.metadata) == md
    shared.delete(s.id)


@SETTINGS
@given(base=metadata_maps, extra=metadata_maps)
def test_merge_is_dict_update_or_too_long(shared: afsm.Engine, base: dict[str, str],
                                          extra: dict[str, str]) -> None:
    s = make(shared, metadata=base)
    expected = {**base, **extra}
    if within_bounds(expected):
        assert dict(shared.update(s.id, metadata=extra).metadata) == expected
    else:
        with pytest.raises(afsm.TooLong):
            shared.update(s.id, metadata=extra)
        assert dict(shared.get(s.id).metadata) == base
    shared.delete(s.id)


def _padded(md: dict[str, str], extra: int) -> dict[str, str]:
    md = {k: v for k, v in md.items() if k != "\x01pad"}
    return {**md, "\x01pad": "p" * (max(0, 4097 - size(md)) + extra)}


over_bounds = st.one_of(
    st.dictionaries(key_text, safe_text, min_size=65, max_size=90),  # too many keys
    st.builds(_padded, metadata_maps, st.integers(0, 300)),  # too many bytes
    st.builds(lambda md, n: {**md, "k" * n: ""}, metadata_maps, st.integers(256, 400)),  # long key
)


@SETTINGS
@given(md=over_bounds)
def test_metadata_over_bounds_is_too_long(shared: afsm.Engine, md: dict[str, str]) -> None:
    assert not within_bounds(md)
    with pytest.raises(afsm.TooLong):
        make(shared, metadata=md)


CANONICAL = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@SETTINGS
@given(text=st.one_of(st.text(), st.text("0123456789abcdefABCDEF-", min_size=30, max_size=40),
                      st.uuids().map(str), st.uuids().map(lambda u: str(u).upper())))
def test_any_string_as_id_is_not_found_or_invalid(shared: afsm.Engine, text: str) -> None:
    try:
        parsed: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        parsed = None
    if parsed is not None:  # every form uuid.UUID() takes is an id
        with pytest.raises(afsm.NotFound):
            shared.get(text)
        if CANONICAL.fullmatch(text):
            assert afsm.parse_uuid(text) == parsed
    else:
        with pytest.raises(afsm.InvalidArgument):
            shared.get(text)
        with pytest.raises(afsm.InvalidArgument):
            shared.heartbeat(text)


@SETTINGS
@given(ip=st.ip_addresses())
def test_ip_round_trip(shared: afsm.Engine, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    expected = ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        expected = ip.ipv4_mapped
    assert afsm.parse_ip(str(ip)) == expected
    assert afsm.parse_ip(ip.exploded) == expected
    s = make(shared, client_ip=str(ip))
    assert s.client_ip == expected
    assert shared.get(s.id).client_ip == expected
    shared.delete(s.id)


@SETTINGS
@given(text=st.text(max_size=60))
def test_any_string_as_ip_parses_like_python_or_is_invalid(shared: afsm.Engine, text: str) -> None:
    try:
        ours = afsm.parse_ip(text)
    except afsm.InvalidArgument:
        ours = None
    try:
        theirs = ipaddress.ip_address(text)
    except ValueError:
        theirs = None
    if ours is not None:
        assert theirs is not None and (ours == theirs or ours == getattr(theirs, "ipv4_mapped", None))
    elif theirs is not None:
        # Python accepts zone ids (fe80::1%eth0) and leading zeros in some versions; libafsm does not.
        assert "%" in text or re.search(r"(^|[.:])0\d", text)


u64 = st.integers(0, 2**40)


@SETTINGS
@given(deltas=st.lists(st.builds(Stats, u64, u64, u64, u64, u64, st.integers(0, 2**32 - 1)),
                       max_size=20))
def test_stats_deltas_add_up(shared: afsm.Engine, deltas: list[Stats]) -> None:
    s = make(shared)
    half = len(deltas) // 2
    for d in deltas[:half]:
        shared.add_stats(s.id, d)
    assert shared.add_stats_many([s.id] * (len(deltas) - half), deltas[half:]) == [None] * (len(deltas) - half)
    got = shared.get(s.id).stats
    rtts = [d.current_rtt_ms for d in deltas if d.current_rtt_ms]
    assert got == Stats(
        sum(d.packets_sent for d in deltas), sum(d.packets_received for d in deltas),
        sum(d.bytes_sent for d in deltas), sum(d.bytes_received for d in deltas),
        sum(d.retransmissions for d in deltas), rtts[-1] if rtts else 0,
    )
    shared.delete(s.id)


@SETTINGS
@given(user=st.text(min_size=1, max_size=300))
def test_user_id_round_trip_or_error(shared: afsm.Engine, user: str) -> None:
    try:
        raw = user.encode()
    except UnicodeEncodeError:
        with pytest.raises(afsm.InvalidArgument):
            make(shared, user)
        return
    if b"\0" in raw:
        with pytest.raises(afsm.InvalidArgument):
            make(shared, user)
    elif len(raw) > 256:
        with pytest.raises(afsm.TooLong):
            make(shared, user)
    else:
        s = make(shared, user)
        assert s.user_id == user
        assert [x.id for x in shared.list_sessions(user_id=user).sessions] == [s.id]
        assert shared.delete_user_sessions(user) == 1


# ---- tokens ---------------------------------------------------------------------

TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

token_like = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.text(TOKEN_ALPHABET, max_size=130).map(lambda s: "v1." + s),
    st.binary(max_size=120).map(lambda b: b"v1." + b),
)


@SETTINGS
@given(token=token_like)
def test_any_bytes_or_text_as_token_is_a_token_error(shared: afsm.Engine, token: str | bytes) -> None:
    """Random input never crashes the library and never passes: always an InvalidToken."""
    with pytest.raises(afsm.InvalidToken) as info:
        shared.validate_token(token)
    assert type(info.value) in (afsm.MalformedToken, afsm.ForgedToken, afsm.UnknownTokenKey)


@SETTINGS
@given(data=st.data())
def test_any_single_change_to_a_real_token_fails(shared: afsm.Engine, data: st.DataObject) -> None:
    """Replacing, dropping or inserting one character of a genuine token never validates."""
    session = make(shared, "token-props")
    token = shared.issue_token(session.id)
    i = data.draw(st.integers(0, len(token) - 1))
    op = data.draw(st.sampled_from(["replace", "drop", "insert"]))
    c = data.draw(st.sampled_from(TOKEN_ALPHABET + ".=+/ \0"))
    if op == "replace":
        if token[i] == c:
            return
        bad = token[:i] + c + token[i + 1:]
    elif op == "drop":
        bad = token[:i] + token[i + 1:]
    else:
        bad = token[:i] + c + token[i:]
    try:
        with pytest.raises(afsm.InvalidToken):
            shared.validate_token(bad)
    finally:
        shared.delete(session.id)
