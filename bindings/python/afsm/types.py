"""Plain Python value types of the afsm API: no ctypes in here."""

from __future__ import annotations

import datetime
import enum
import ipaddress
import uuid
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

__all__ = [
    "State",
    "EventType",
    "LogLevel",
    "LimitPolicy",
    "DeleteReason",
    "TokenResult",
    "Metrics",
    "Stats",
    "Session",
    "Counts",
    "Event",
    "LogRecord",
    "Page",
    "IPAddress",
    "Metadata",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address



class Metadata(dict):  # type: ignore[type-arg]
    """A session's metadata: a read-only ``dict`` of str to str.

    A dict, so ``json.dumps``, ``dataclasses.asdict`` and ``dict(...)`` take it
    as they are; read-only and hashable, so a frozen :class:`Session` is a
    value (hashable, usable in sets and as a key); picklable and copyable
    (a copy of an immutable value is the value itself).
    """

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError("session metadata is read-only; pass a new map to Engine.update")

    __setitem__ = __delitem__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]
    __ior__ = _read_only  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[type, tuple[dict[str, str]]]:
        return (Metadata, (dict(self),))

    def __copy__(self) -> Metadata:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Metadata:
        return self

    def __repr__(self) -> str:
        return f"Metadata({dict.__repr__(self)})"


_EMPTY: Mapping[str, str] = Metadata()


class State(enum.Enum):
    """A session's state; the numbers match afsm_state and the gRPC enum."""

    CONNECTING = 1
    ACTIVE = 2
    IDLE = 3
    DISCONNECTING = 4
    CLOSED = 5


class EventType(enum.Enum):
    """What happened to a session (afsm_event_type)."""

    CREATED = 1
    STATE_CHANGED = 2
    EXPIRED = 3
    DELETED = 4


class LogLevel(enum.IntEnum):
    """Log levels of the engine's log hook (AFSM_LOG_*)."""

    DEBUG = 10
    INFO = 20
    WARN = 30
    ERROR = 40


class LimitPolicy(enum.Enum):
    """What a create over ``max_sessions_per_user`` does (AFSM_LIMIT_*)."""

    REJECT = 0  #: the create raises LimitExceeded
    EVICT_OLDEST = 1  #: the user's oldest session is deleted (reason "evicted")


class DeleteReason(enum.Enum):
    """Why sessions left, as counted in :attr:`Metrics.deleted_total`
    (afsm_delete_reason; the ``reason`` label of session_deleted_total)."""

    REQUESTED = 0  #: Engine.delete
    USER = 1  #: Engine.delete_user_sessions
    CLOSED = 2  #: state set to CLOSED
    EVICTED = 3  #: over max_sessions_per_user
    EXPIRED = 4  #: also counted in expired_total


class TokenResult(enum.Enum):
    """Token validation outcomes, as counted in :attr:`Metrics.token_validations`
    (afsm_token_result; the ``result`` label of session_token_validations_total)."""

    OK = 0
    MALFORMED = 1
    FORGED = 2
    UNKNOWN_KEY = 3
    REMOVED_KEY = 4
    NOT_FOUND = 5
    EXPIRED = 6
    CLOSED = 7
    REVOKED = 8
    IP_MISMATCH = 9


@dataclass(frozen=True)
class Stats:
    """Traffic counters of one session, or a delta to add to them.

    As a delta, a non-zero ``current_rtt_ms`` replaces the session's RTT and
    the other counters are added.
    """

    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmissions: int = 0
    current_rtt_ms: int = 0


@dataclass(frozen=True)
class Session:
    """A copy of one session, taken when the call returned.

    Timestamps are timezone-aware UTC datetimes (microsecond precision);
    ``metadata`` is a read-only :class:`Metadata` dict. ``token_generation``
    counts token rotations (tokens of older generations are revoked).

    A value: frozen, hashable, equal by fields, picklable, copyable and
    ``dataclasses.asdict``-able, so snapshots can be stored and restored
    (:meth:`Engine.restore`).
    """

    id: uuid.UUID
    user_id: str
    connection_id: uuid.UUID
    client_ip: IPAddress
    client_port: int
    server_addr: str
    state: State
    created_at: datetime.datetime
    last_active_at: datetime.datetime
    expires_at: datetime.datetime
    timeout: datetime.timedelta
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    stats: Stats = field(default_factory=Stats)
    token_generation: int = 0

    def __post_init__(self) -> None:
        # A Session built by hand (or by dataclasses.replace) gets the same
        # read-only, hashable map as one from the engine.
        if not isinstance(self.metadata, Metadata):
            object.__setattr__(self, "metadata", Metadata(self.metadata))


def _fast(cls: type, values: dict) -> object:
    """An instance of a frozen dataclass without its __init__.

    Used by the binding for objects it builds from C results (the values are
    already checked); about three times faster than the generated __init__,
    which pays an object.__setattr__ per field to honour ``frozen``.
    """
    obj = object.__new__(cls)
    obj.__dict__.update(values)
    return obj


@dataclass(frozen=True)
class Counts:
    """Number of sessions, in total and per state."""

    total: int
    by_state: Mapping[State, int]


@dataclass(frozen=True)
class Event:
    """A change to a session, as delivered to ``Engine(on_event=...)``.

    ``old_state`` is ``None`` for CREATED; for EXPIRED and DELETED,
    ``new_state`` is the session's last state. ``reason`` is set for DELETED
    (``"expired"``, ``"evicted"``, ``"closed"`` or the caller's reason) and
    for EXPIRED when the engine gives one.
    """

    type: EventType
    old_state: State | None
    new_state: State | None
    session_id: uuid.UUID
    connection_id: uuid.UUID
    user_id: str
    reason: str | None
    created_at: datetime.datetime
    event_at: datetime.datetime


@dataclass(frozen=True)
class Metrics:
    """The engine's counters (``afsm_metrics``), from :meth:`Engine.metrics`.

    Each counter is exact; the set is not one atomic snapshot while other
    threads write. ``duration_buckets`` maps each upper bound in seconds (the
    last is ``math.inf``) to the sessions that ended with a lifetime in that
    bucket, per bucket and not cumulative (Prometheus' ``le`` buckets are the
    running sums: :attr:`duration_buckets_cumulative`).
    """

    shard_count: int
    sessions: int
    sessions_by_state: Mapping[State, int]
    created_total: int
    deleted_total: Mapping[DeleteReason, int]
    expired_total: int
    idle_transitions_total: int
    wake_transitions_total: int
    duration_buckets: Mapping[float, int]
    duration_count: int
    duration_sum_seconds: float
    token_validations: Mapping[TokenResult, int]
    reaper_lag_ns: int
    deferred_frees: int

    @property
    def duration_buckets_cumulative(self) -> Mapping[float, int]:
        """The ``le`` buckets of session_duration_seconds (running sums)."""
        out: dict[float, int] = {}
        total = 0
        for bound, n in self.duration_buckets.items():
            total += n
            out[bound] = total
        return MappingProxyType(out)

    @property
    def reaper_lag(self) -> datetime.timedelta:
        """:attr:`reaper_lag_ns` as a timedelta (microsecond precision)."""
        return datetime.timedelta(microseconds=self.reaper_lag_ns // 1000)


@dataclass(frozen=True)
class LogRecord:
    """A log line from the engine, as delivered to ``Engine(on_log=...)``.

    ``level`` is a :class:`LogLevel` (a plain int for a level it does not
    know); ``fields`` holds the line's key/value pairs in their order, e.g.
    ``session_id``, ``user_id``, ``connection_id``, ``client_ip`` for
    "session created".
    """

    level: int
    message: str
    fields: Mapping[str, str]


@dataclass(frozen=True)
class Page:
    """One page of :meth:`Engine.list_sessions`.

    ``total`` counts every match ignoring cursor, offset and limit;
    ``next_cursor`` is ``None`` on the last page.
    """

    sessions: tuple[Session, ...]
    total: int
    next_cursor: uuid.UUID | None
