"""Conversions between the Python value types and the ctypes structs.

Range checks here cover only what ctypes would silently wrap (negative
numbers and values wider than the C field); everything else is left to the
library so that its statuses stay the single source of truth.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import decimal
import functools
import ipaddress
import struct
import uuid
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

from . import _lib
from .errors import InvalidArgument, InvalidUUID, check, error_for
from .types import (
    DeleteReason,
    IPAddress,
    Metadata,
    Metrics,
    Session,
    State,
    Stats,
    TokenResult,
    _fast,
)

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
_US = datetime.timedelta(microseconds=1)
_EMPTY: Mapping[str, str] = Metadata()

UUIDLike = uuid.UUID | str


def uint(value: Any, bits: int, what: str) -> int:
    """``value`` as an int that fits an unsigned C field of ``bits`` bits."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0 or value >> bits:
        raise InvalidArgument(_lib.AFSM_EINVAL, f"{what}: {value}, must be 0..{(1 << bits) - 1}")
    return value


def _not_utf8(text: str, prefix: str) -> str:
    """The detail for text holding lone surrogates, worded as the Go binding
    words it for bytes that are not UTF-8: surrogate-escaped bytes (as
    os.fsdecode makes them) are named by value and byte offset."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        return f"{prefix} not valid UTF-8 (lone surrogate U+{ord(text[exc.start]):04X} at index {exc.start})"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{prefix} not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    return f"{prefix} not valid UTF-8"  # pragma: no cover - encode failed, so decode must


def encode(text: Any, what: str, prefix: str | None = None) -> bytes:
    """UTF-8 bytes of a str (lone surrogates are an InvalidArgument).

    Text must be UTF-8 in both bindings (the Go one rejects other bytes the
    same way): ``prefix`` starts the detail, ``"{what}:"`` by default.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        detail = _not_utf8(text, prefix if prefix is not None else f"{what}:")
        raise InvalidArgument(_lib.AFSM_EINVAL, detail) from exc


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


# ---- UUIDs ------------------------------------------------------------------


_UUID_FORMS = "a uuid.UUID, or text uuid.UUID() accepts (canonical, {braced}, urn:uuid:..., 32 hex digits)"


def uuid_to_c(value: UUIDLike, what: str = "id") -> _lib.afsm_uuid:
    """A uuid.UUID, or any text ``uuid.UUID()`` accepts, as an afsm_uuid."""
    if isinstance(value, uuid.UUID):
        return _lib.afsm_uuid.from_buffer_copy(value.bytes)
    if not isinstance(value, str):
        raise TypeError(f"{what} must be {_UUID_FORMS}, not {type(value).__name__}")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        shown = value if len(value) <= 48 else value[:45] + "..."
        raise InvalidUUID(_lib.AFSM_EUUID, f"{what}: {shown!r}, must be {_UUID_FORMS}") from None
    return _lib.afsm_uuid.from_buffer_copy(parsed.bytes)


def uuid_from_c(value: _lib.afsm_uuid) -> uuid.UUID:
    return uuid.UUID(bytes=bytes(value))


def uuids_to_array(values: Iterable[UUIDLike], what: str = "id") -> Any:
    """A ctypes array of afsm_uuid (one copy for plain UUIDs)."""
    values = list(values)
    try:
        raw = b"".join([v.bytes for v in values])  # type: ignore[union-attr]
    except AttributeError:
        raw = b"".join([bytes(uuid_to_c(v, what)) for v in values])
    return (_lib.afsm_uuid * len(values)).from_buffer_copy(raw) if values else None


def parse_uuid(text: str) -> uuid.UUID:
    """Parses a UUID with the library's parser (the engine's own rules: the
    canonical 36-character form only; Engine methods take more forms)."""
    raw = encode(text, "text")
    out = _lib.afsm_uuid()
    check(_lib.lib.afsm_uuid_parse(raw, len(raw), ctypes.byref(out)), f"text: {text!r}, must be a canonical UUID")
    return uuid_from_c(out)


def uuid7() -> uuid.UUID:
    """A new UUIDv7 from the library: time-ordered, strictly increasing."""
    out = _lib.afsm_uuid()
    check(_lib.lib.afsm_uuid_v7(ctypes.byref(out)))
    return uuid_from_c(out)


# ---- IPs ----------------------------------------------------------------------


def ip_text(value: str | IPAddress) -> bytes:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value).encode()
    if isinstance(value, str):
        try:
            # Bytes that are not UTF-8 (surrogate-escaped) make no address:
            # the library says so (InvalidIP, its detail), as for Go's bytes.
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            pass  # a lone surrogate that escapes no byte: encode() says so
    return encode(value, "client_ip")


def ip_from_c(value: _lib.afsm_ip) -> IPAddress:
    raw = bytes(value.bytes)
    if value.family == 4:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw)


def parse_ip(text: str | IPAddress) -> IPAddress:
    """Parses an address with the library's parser (v4-mapped v6 becomes v4)."""
    raw = ip_text(text)
    out = _lib.afsm_ip()
    check(_lib.lib.afsm_ip_parse(raw, len(raw), ctypes.byref(out)), "client_ip")
    return ip_from_c(out)


# ---- time -----------------------------------------------------------------------


def ns_to_datetime(ns: int) -> datetime.datetime:
    return EPOCH + datetime.timedelta(microseconds=ns // 1000)


def datetime_to_ns(value: datetime.datetime, what: str) -> int:
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(_lib.AFSM_EINVAL, f"{what} must be timezone-aware")
    return ((value - EPOCH) // _US) * 1000


def timedelta_to_ms(value: datetime.timedelta, what: str) -> int:
    """Milliseconds, rounded up; must be positive (0 means "default" in C)."""
    if not isinstance(value, datetime.timedelta):
        raise TypeError(f"{what} must be a timedelta, not {type(value).__name__}")
    us = value // _US
    if us <= 0:
        raise InvalidArgument(_lib.AFSM_EINVAL, f"{what}: {value}, must be positive")
    return uint(-(-us // 1000), 64, what)


def _quoted(text: str) -> str:
    """Text in double quotes, escaped about as the library and Go's %q do
    (\\xNN for control characters)."""
    body = "".join(
        "\\" + c if c in '"\\' else c if c.isprintable() else f"\\x{ord(c):02x}" for c in text
    )
    return f'"{body}"'


def ms_text(value: datetime.timedelta) -> str:
    """``value`` in milliseconds, exactly and without an exponent ("-1.5"),
    for details in the engine's unit, worded as the Go binding words them."""
    return str(decimal.Decimal(value // _US) / 1000)


def ms_to_timedelta(ms: int) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=ms)


# ---- states, stats, metadata --------------------------------------------------------


def state_to_c(value: State | int, what: str = "state") -> int:
    """State (or its number; the library rejects unknown numbers)."""
    if isinstance(value, State):
        return value.value
    return uint(value, 32, what)


def state_from_c(value: int) -> State | None:
    try:
        return State(value)
    except ValueError:
        return None


_STATS = struct.Struct("=5QII")


def stats_to_bytes(value: Stats) -> bytes:
    if not isinstance(value, Stats):
        raise TypeError(f"stats must be a Stats, not {type(value).__name__}")
    try:
        return _STATS.pack(
            value.packets_sent,
            value.packets_received,
            value.bytes_sent,
            value.bytes_received,
            value.retransmissions,
            value.current_rtt_ms,
            0,
        )
    except struct.error:
        for name in ("packets_sent", "packets_received", "bytes_sent", "bytes_received",
                     "retransmissions"):
            uint(getattr(value, name), 64, f"stats.{name}")
        uint(value.current_rtt_ms, 32, "stats.current_rtt_ms")
        raise


def stats_to_c(value: Stats) -> _lib.afsm_stats:
    return _lib.afsm_stats.from_buffer_copy(stats_to_bytes(value))


def stats_from_c(value: _lib.afsm_stats) -> Stats:
    return Stats(*_STATS.unpack(bytes(value))[:6])


class KVArray:
    """An afsm_kv array and the bytes it points into (kept alive together)."""

    __slots__ = ("array", "count", "_keep")

    def __init__(self, metadata: Mapping[str, str] | None) -> None:
        self._keep: list[bytes] = []
        self.count = 0
        self.array: Any = None
        if not metadata:
            return
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, not {type(metadata).__name__}")
        items = list(metadata.items())
        self.array = (_lib.afsm_kv * len(items))()
        for i, (key, value) in enumerate(items):
            k = encode(key, "metadata key")
            v = encode(value, "metadata value", f'metadata "{key}": value')
            self._keep += (k, v)
            entry = self.array[i]
            entry.key = k
            entry.key_len = len(k)
            entry.value = v
            entry.value_len = len(v)
        self.count = len(items)


def metadata_from_buffer(raw: bytes) -> Mapping[str, str]:
    """Parses ``key NUL value NUL`` pairs."""
    if not raw:
        return _EMPTY
    parts = raw.split(b"\0")
    it = iter(parts[:-1])
    return Metadata({decode(k): decode(v) for k, v in zip(it, it)})


# ---- sessions -------------------------------------------------------------------------


def new_info() -> _lib.afsm_session_info:
    info = _lib.afsm_session_info()
    info.version = _lib.AFSM_SESSION_INFO_VERSION
    return info


_INFO_TEMPLATE = bytes(new_info())


def new_info_array(n: int) -> Any:
    """n afsm_session_info, each with its version set (one copy, no loop)."""
    return (_lib.afsm_session_info * n).from_buffer_copy(_INFO_TEMPLATE * n)


# afsm_session_info as one struct.unpack (much faster than ctypes field access);
# checked against the ctypes layout at import time.
_INFO = struct.Struct(
    "@II16s16sB16sHI%dsI%dsqqqQII5QIIII" % (_lib.AFSM_USER_ID_MAX + 1, _lib.AFSM_SERVER_ADDR_MAX + 1)
)
if (_INFO.size != ctypes.sizeof(_lib.afsm_session_info)
        or _INFO.size - _lib.afsm_session_info.stats.offset != 56):
    raise ImportError("afsm_session_info layout does not match the struct format")

_STATES = {s.value: s for s in State}
_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(Stats))


@functools.lru_cache(maxsize=4096)
def _ip(family: int, raw: bytes) -> IPAddress:
    return ipaddress.IPv4Address(raw[:4]) if family == 4 else ipaddress.IPv6Address(raw)


@functools.lru_cache(maxsize=256)
def _text(raw: bytes) -> str:
    return decode(raw)


@functools.lru_cache(maxsize=256)
def _timeout(ms: int) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=ms)


# Positions in an unpacked afsm_session_info tuple that the engine needs.
F_SESSION_ID = 2
F_METADATA_COUNT = 15
F_METADATA_BYTES = 16


def info_fields(buf: Any, offset: int = 0) -> tuple[Any, ...]:
    """The fields of the afsm_session_info at ``offset`` of a buffer, as a tuple."""
    return _INFO.unpack_from(buf, offset)


def info_array_fields(array: Any, count: int) -> Iterator[tuple[Any, ...]]:
    """The first ``count`` elements of an afsm_session_info array, unpacked one by one."""
    view = memoryview(array).cast("B")
    return _INFO.iter_unpack(view[: count * _INFO.size])


def session_from_c(info: Any, metadata: Mapping[str, str]) -> Session:
    """A Session from an afsm_session_info."""
    return session_from_fields(_INFO.unpack(bytes(info)), metadata)


def session_from_fields(fields: tuple[Any, ...], metadata: Mapping[str, str]) -> Session:
    """A Session from :func:`info_fields` output."""
    (_v, state_no, sid, cid, family, ip, port, user_len, user, server_len, server,
     created, last, expires, timeout_ms, _mc, _mb, *stats, token_generation, _r) = fields
    state = _STATES.get(state_no)
    if state is None:  # never a session's state: a library bug
        raise error_for(_lib.AFSM_EINTERNAL, f"library returned state {state_no}")
    return _fast(Session, {  # type: ignore[return-value]
        "id": uuid.UUID(bytes=sid),
        "user_id": decode(user[:user_len]),
        "connection_id": uuid.UUID(bytes=cid),
        "client_ip": _ip(family, ip),
        "client_port": port,
        "server_addr": _text(server[:server_len]),
        "state": state,
        "created_at": EPOCH + datetime.timedelta(microseconds=created // 1000),
        "last_active_at": EPOCH + datetime.timedelta(microseconds=last // 1000),
        "expires_at": EPOCH + datetime.timedelta(microseconds=expires // 1000),
        "timeout": _timeout(timeout_ms),
        "metadata": metadata,
        "stats": _fast(Stats, dict(zip(_STATS_FIELDS, stats))),
        "token_generation": token_generation,
    })


def session_to_info(session: Session) -> _lib.afsm_session_info:
    """An afsm_session_info describing ``session`` (for afsm_session_restore).

    Timestamps keep the Session's microsecond precision; metadata goes
    separately (a :class:`KVArray`).
    """
    if not isinstance(session, Session):
        raise TypeError(f"session must be a Session, not {type(session).__name__}")
    info = new_info()
    info.state = state_to_c(session.state)
    info.session_id = uuid_to_c(session.id, "session.id")
    info.connection_id = uuid_to_c(session.connection_id, "session.connection_id")
    ip = session.client_ip
    if isinstance(ip, str):
        try:
            ip = parse_ip(ip)
        except InvalidArgument as exc:
            raise type(exc)(
                exc.status, f"session.client_ip: {_quoted(ip)}, must be an IPv4 or IPv6 address"
            ) from None
    if isinstance(ip, ipaddress.IPv4Address):
        info.client_ip.family = 4
        info.client_ip.bytes[:4] = list(ip.packed)
    elif isinstance(ip, ipaddress.IPv6Address):
        info.client_ip.family = 6
        info.client_ip.bytes[:] = list(ip.packed)
    else:
        raise TypeError(f"session.client_ip must be an IP address, not {type(ip).__name__}")
    info.client_port = uint(session.client_port, 16, "session.client_port")
    user = encode(session.user_id, "session.user_id")
    if len(user) > _lib.AFSM_USER_ID_MAX:
        detail = f"session.user_id: {len(user)} bytes, must be 1..{_lib.AFSM_USER_ID_MAX}"
        raise error_for(_lib.AFSM_ETOOLONG, detail)
    info.user_id_len = len(user)
    info.user_id = user
    server = encode(session.server_addr, "session.server_addr")[: _lib.AFSM_SERVER_ADDR_MAX]
    info.server_addr_len = len(server)
    info.server_addr = server
    info.created_at_ns = datetime_to_ns(session.created_at, "session.created_at")
    info.last_active_at_ns = datetime_to_ns(session.last_active_at, "session.last_active_at")
    info.expires_at_ns = datetime_to_ns(session.expires_at, "session.expires_at")
    if isinstance(session.timeout, datetime.timedelta) and session.timeout <= datetime.timedelta(0):
        raise InvalidArgument(_lib.AFSM_EINVAL, f"session.timeout_ms: {ms_text(session.timeout)}, must be positive")
    info.timeout_ms = timedelta_to_ms(session.timeout, "session.timeout")
    info.stats = stats_to_c(session.stats)
    info.token_generation = uint(session.token_generation, 32, "session.token_generation")
    return info


def metrics_from_c(m: _lib.afsm_metrics) -> Metrics:
    """A Metrics from an afsm_metrics."""
    return Metrics(
        shard_count=m.shard_count,
        sessions=m.sessions,
        sessions_by_state=MappingProxyType({s: m.sessions_by_state[s.value] for s in State}),
        created_total=m.created_total,
        deleted_total=MappingProxyType({r: m.deleted_total[r.value] for r in DeleteReason}),
        expired_total=m.expired_total,
        idle_transitions_total=m.idle_transitions_total,
        wake_transitions_total=m.wake_transitions_total,
        duration_buckets=MappingProxyType(dict(zip(_lib.DURATION_BUCKET_BOUNDS, m.duration_buckets))),
        duration_count=m.duration_count,
        duration_sum_seconds=m.duration_sum_seconds,
        token_validations=MappingProxyType({r: m.token_validations[r.value] for r in TokenResult}),
        reaper_lag_ns=m.reaper_lag_ns,
        deferred_frees=m.deferred_frees,
    )


def token_bytes(token: Any) -> bytes:
    """A token as bytes: a str (any text; the library judges it) or bytes.

    Text is encoded as UTF-8 with lone surrogates passed through, so any str
    reaches the library, which rejects what is not a token (MalformedToken).
    """
    if isinstance(token, str):
        return token.encode("utf-8", "surrogatepass")
    if isinstance(token, (bytes, bytearray, memoryview)):
        return bytes(token)
    raise TypeError(f"token must be a str or bytes, not {type(token).__name__}")
