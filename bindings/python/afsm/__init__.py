"""afsm: Python binding (ctypes) of libafsm, the AetherFlow session engine.

>>> import afsm
>>> with afsm.Engine() as engine:
...     session, token = engine.create_session("alice", "192.0.2.1", 443)
...     engine.validate_token(token).state
<State.CONNECTING: 1>

The library is found through ``$AFSM_LIBRARY``, then a ``build/lib``
directory above this package, then the installed SONAME ``libafsm.so.0``.
"""

from __future__ import annotations

from . import _lib
from ._convert import parse_ip, parse_uuid, uuid7
from .engine import Engine, Handle
from .errors import (
    AfsmError,
    AlreadyExists,
    BufferTooSmall,
    Busy,
    Closed,
    EngineClosed,
    HandleReleased,
    Expired,
    ForgedToken,
    InternalError,
    InvalidArgument,
    InvalidIP,
    InvalidToken,
    InvalidTransition,
    InvalidUUID,
    IPMismatch,
    KeyExists,
    KeyFileError,
    KeyInUse,
    KeyNotFound,
    KeyRemoved,
    LimitExceeded,
    MalformedToken,
    NotFound,
    NullArgument,
    OutOfMemory,
    TokenKeyRemoved,
    TokenRevoked,
    TooLong,
    Unavailable,
    UnknownKey,
    UnknownTokenKey,
    VersionMismatch,
)
from .types import (
    Counts,
    DeleteReason,
    Event,
    EventType,
    LimitPolicy,
    LogLevel,
    LogRecord,
    Metadata,
    Metrics,
    Page,
    Session,
    State,
    Stats,
    TokenResult,
)

__version__ = "0.1.0"

#: Bounds of the C API (afsm.h), for callers that want to check early.
USER_ID_MAX = _lib.AFSM_USER_ID_MAX
SERVER_ADDR_MAX = _lib.AFSM_SERVER_ADDR_MAX
REASON_MAX = _lib.AFSM_REASON_MAX
METADATA_KEYS_MAX = _lib.AFSM_METADATA_KEYS_MAX
METADATA_BYTES_MAX = _lib.AFSM_METADATA_BYTES_MAX
LIST_LIMIT_MAX = _lib.AFSM_LIST_LIMIT_MAX
BATCH_MAX = _lib.AFSM_BATCH_MAX
KEY_BYTES = _lib.AFSM_KEY_BYTES
KEY_ID_MAX = _lib.AFSM_KEY_ID_MAX
TOKEN_MAX = _lib.AFSM_TOKEN_SIZE - 1
#: Upper bounds (seconds) of the session_duration_seconds buckets; the last is inf.
DURATION_BUCKET_BOUNDS = _lib.DURATION_BUCKET_BOUNDS


def library_version() -> str:
    """The loaded libafsm's version string (``afsm_version``)."""
    return _lib.lib.afsm_version().decode()


def library_path() -> str:
    """Where the loaded libafsm came from."""
    return _lib.library_path


__all__ = [
    "Engine",
    "Handle",
    "Session",
    "Stats",
    "State",
    "Counts",
    "Event",
    "EventType",
    "LogLevel",
    "LogRecord",
    "Metadata",
    "LimitPolicy",
    "DeleteReason",
    "TokenResult",
    "Metrics",
    "Page",
    "uuid7",
    "parse_uuid",
    "parse_ip",
    "library_version",
    "library_path",
    "AfsmError",
    "AlreadyExists",
    "BufferTooSmall",
    "Busy",
    "Closed",
    "EngineClosed",
    "HandleReleased",
    "Expired",
    "ForgedToken",
    "InternalError",
    "InvalidArgument",
    "InvalidIP",
    "InvalidToken",
    "InvalidTransition",
    "InvalidUUID",
    "IPMismatch",
    "KeyExists",
    "KeyFileError",
    "KeyInUse",
    "KeyNotFound",
    "KeyRemoved",
    "LimitExceeded",
    "MalformedToken",
    "NotFound",
    "NullArgument",
    "OutOfMemory",
    "TokenKeyRemoved",
    "TokenRevoked",
    "TooLong",
    "Unavailable",
    "UnknownKey",
    "UnknownTokenKey",
    "VersionMismatch",
    "USER_ID_MAX",
    "SERVER_ADDR_MAX",
    "REASON_MAX",
    "METADATA_KEYS_MAX",
    "METADATA_BYTES_MAX",
    "LIST_LIMIT_MAX",
    "BATCH_MAX",
    "KEY_BYTES",
    "KEY_ID_MAX",
    "TOKEN_MAX",
    "DURATION_BUCKET_BOUNDS",
]
