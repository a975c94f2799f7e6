"""The exception hierarchy, and the one place that maps a status to it.

Every exception raised for a status from libafsm is an :class:`AfsmError`
carrying ``.status`` (the negative ``AFSM_E*`` code) and ``.name`` (its name,
from ``afsm_status_name``). Argument errors also derive from ``ValueError``,
lookups that miss from ``LookupError`` and allocation failure from
``MemoryError`` so that generic handlers keep working.
"""

from __future__ import annotations

from typing import Any

from . import _lib

__all__ = [
    "AfsmError",
    "EngineClosed",
    "InvalidArgument",
    "NullArgument",
    "VersionMismatch",
    "TooLong",
    "InvalidUUID",
    "InvalidIP",
    "OutOfMemory",
    "NotFound",
    "Expired",
    "AlreadyExists",
    "InvalidTransition",
    "Closed",
    "LimitExceeded",
    "BufferTooSmall",
    "Busy",
    "InvalidToken",
    "MalformedToken",
    "ForgedToken",
    "UnknownTokenKey",
    "UnknownKey",
    "TokenKeyRemoved",
    "KeyRemoved",
    "TokenRevoked",
    "IPMismatch",
    "KeyFileError",
    "KeyExists",
    "KeyNotFound",
    "KeyInUse",
    "Unavailable",
    "InternalError",
    "error_for",
    "check",
    "status_name",
    "strerror",
]


def status_name(status: int) -> str:
    """The status's C name, e.g. ``"AFSM_ENOTFOUND"``."""
    return _lib.lib.afsm_status_name(status).decode()


def strerror(status: int) -> str:
    """The status's English description, e.g. ``"session not found"``."""
    return _lib.lib.afsm_strerror(status).decode()


class AfsmError(Exception):
    """Base of every error reported by libafsm.

    Attributes:
        status: the negative ``AFSM_E*`` status code.
        name: the status's C name (``afsm_status_name``).
        detail: what exactly was wrong (``afsm_error_detail``, e.g.
            ``"user_id: 0 bytes, must be 1..256"``), or ``None``.

    ``str(exc)`` is ``"NAME: description (detail)"``.
    """

    status: int
    name: str
    detail: str | None

    def __init__(self, status: int, detail: str | None = None) -> None:
        self.status = status
        self.name = status_name(status)
        self.detail = detail
        message = f"{self.name}: {strerror(status)}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.detail))


class EngineClosed(AfsmError):
    """The :class:`~afsm.Engine` is closed (or closing): raised by every call
    made after :meth:`~afsm.Engine.close`, and by calls that race it.

    Not :class:`Closed`, which is about a session. ``status`` is
    ``AFSM_ECLOSED`` for want of a C code: the library never sees the call.
    """

    def __init__(self, status: int = _lib.AFSM_ECLOSED, detail: str | None = None) -> None:
        self.status = status
        self.name = "EngineClosed"
        self.detail = detail
        Exception.__init__(self, f"EngineClosed: {detail or 'the Engine is closed'}")


class HandleReleased(EngineClosed, ValueError):
    """A call on a :class:`~afsm.Handle` after its ``release()`` (Go:
    ``ErrClosed``, as for a closed engine). Also a ValueError, which it was
    before it was an EngineClosed."""


class InvalidArgument(AfsmError, ValueError):
    """A value is out of range or malformed (``AFSM_EINVAL`` and the subclasses)."""


class NullArgument(InvalidArgument):
    """A required argument was missing (``AFSM_ENULL``)."""


class VersionMismatch(InvalidArgument):
    """A struct version is unknown to the library (``AFSM_EVERSION``)."""


class TooLong(InvalidArgument):
    """A string or the metadata exceeds its bound (``AFSM_ETOOLONG``)."""


class InvalidUUID(InvalidArgument):
    """A UUID string is malformed, or a required UUID is nil (``AFSM_EUUID``)."""


class InvalidIP(InvalidArgument):
    """An IP address string is malformed (``AFSM_EIP``)."""


class OutOfMemory(AfsmError, MemoryError):
    """An allocation failed; nothing was changed (``AFSM_ENOMEM``)."""


class NotFound(AfsmError, LookupError):
    """No such session, or no such key in the key ring (``AFSM_ENOTFOUND``)."""


class Expired(AfsmError):
    """The session's deadline has passed (``AFSM_EEXPIRED``).

    ``session`` holds the session's last copy when the library returned one
    (``get`` does), else ``None`` (also when the session was removed before
    ``get`` could read its metadata).
    """

    session: Any = None


class AlreadyExists(AfsmError):
    """The connection id (or session id) already has a session, or the key
    id is in the key ring (``AFSM_EEXISTS``)."""


class InvalidTransition(AfsmError):
    """The state change is not allowed from the current state (``AFSM_ETRANSITION``)."""


class Closed(AfsmError):
    """The session is closed and cannot be revived (``AFSM_ECLOSED``)."""


class LimitExceeded(AfsmError):
    """The user is at its session limit (``AFSM_ELIMIT``)."""


class BufferTooSmall(AfsmError):
    """A buffer was too small (``AFSM_EBUFFER``); the binding normally retries."""


class Busy(AfsmError):
    """The engine still has pinned handles, or the key to remove is the
    current one (``AFSM_EBUSY``)."""


class InvalidToken(AfsmError):
    """Base of the errors of a token that proves nothing by itself.

    Raised only as one of its subclasses. ``validate_token`` also raises
    :class:`NotFound`, :class:`Expired` and :class:`Closed` for a genuine
    token whose session is gone, past its deadline or closed.
    """


class MalformedToken(InvalidToken):
    """A token is truncated or not a token at all (``AFSM_ETOKENFORMAT``)."""


class ForgedToken(InvalidToken):
    """A token fails authentication: forged, altered, or sealed by another key
    with the same id (``AFSM_ETOKEN``)."""


class UnknownTokenKey(InvalidToken):
    """A token's key id was never in the key ring (``AFSM_ETOKENKEY``)."""


class TokenKeyRemoved(InvalidToken):
    """A token's key has been removed from the key ring (``AFSM_EKEYREMOVED``)."""


#: Shorter names of the key errors.
UnknownKey = UnknownTokenKey
KeyRemoved = TokenKeyRemoved


class TokenRevoked(InvalidToken):
    """A token was superseded by a rotation (``AFSM_EREVOKED``)."""


class IPMismatch(InvalidToken):
    """A token bound to one IP was presented from another (``AFSM_EIPMISMATCH``)."""


class KeyFileError(AfsmError):
    """A key file is unreadable, the wrong size, another user's (not root's
    or this process's) or too open (``AFSM_EKEYFILE``)."""


class KeyExists(AlreadyExists):
    """:meth:`~afsm.Engine.add_key`: the key id is already in the key ring
    (``AFSM_EKEYEXISTS``)."""


class KeyNotFound(NotFound):
    """:meth:`~afsm.Engine.use_key` / :meth:`~afsm.Engine.remove_key`: no
    such key id in the key ring (``AFSM_EKEYNOTFOUND``)."""


class KeyInUse(Busy):
    """:meth:`~afsm.Engine.remove_key`: the key is the current one;
    :meth:`~afsm.Engine.use_key` another first (``AFSM_EKEYINUSE``)."""


class Unavailable(AfsmError):
    """The store cannot be reached (``AFSM_EUNAVAILABLE``)."""


class InternalError(AfsmError):
    """A bug in libafsm (``AFSM_EINTERNAL``)."""


_BY_STATUS: dict[int, type[AfsmError]] = {
    _lib.AFSM_ENULL: NullArgument,
    _lib.AFSM_EVERSION: VersionMismatch,
    _lib.AFSM_EINVAL: InvalidArgument,
    _lib.AFSM_ETOOLONG: TooLong,
    _lib.AFSM_EUUID: InvalidUUID,
    _lib.AFSM_EIP: InvalidIP,
    _lib.AFSM_ENOMEM: OutOfMemory,
    _lib.AFSM_ENOTFOUND: NotFound,
    _lib.AFSM_EEXPIRED: Expired,
    _lib.AFSM_EEXISTS: AlreadyExists,
    _lib.AFSM_ETRANSITION: InvalidTransition,
    _lib.AFSM_ECLOSED: Closed,
    _lib.AFSM_ELIMIT: LimitExceeded,
    _lib.AFSM_EBUFFER: BufferTooSmall,
    _lib.AFSM_EBUSY: Busy,
    _lib.AFSM_ETOKEN: ForgedToken,
    _lib.AFSM_ETOKENKEY: UnknownTokenKey,
    _lib.AFSM_EREVOKED: TokenRevoked,
    _lib.AFSM_EIPMISMATCH: IPMismatch,
    _lib.AFSM_EKEYFILE: KeyFileError,
    _lib.AFSM_EUNAVAILABLE: Unavailable,
    _lib.AFSM_EINTERNAL: InternalError,
    _lib.AFSM_ETOKENFORMAT: MalformedToken,
    _lib.AFSM_EKEYREMOVED: TokenKeyRemoved,
    _lib.AFSM_EKEYEXISTS: KeyExists,
    _lib.AFSM_EKEYNOTFOUND: KeyNotFound,
    _lib.AFSM_EKEYINUSE: KeyInUse,
}


def error_for(status: int, detail: str | None = None) -> AfsmError:
    """The exception for a non-zero status (an unknown code gives a plain AfsmError)."""
    return _BY_STATUS.get(status, AfsmError)(status, detail)


def last_detail() -> str | None:
    """The calling thread's ``afsm_error_detail()``, or None when empty.

    Valid right after the failing call and before the thread's next one.
    """
    raw = _lib.lib.afsm_error_detail()
    return raw.decode("utf-8", "backslashreplace") if raw else None


def check(status: int, detail: str | None = None) -> None:
    """Raises the exception for ``status`` unless it is ``AFSM_OK``.

    Call it right after the C call whose status it is, on the same thread:
    without ``detail`` it takes the library's own (``afsm_error_detail``),
    which names the argument, its problem and the limit.
    """
    if status != _lib.AFSM_OK:
        raise error_for(status, detail if detail is not None else last_detail())
