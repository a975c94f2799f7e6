"""The engine's hooks (clock, events, logs) as ctypes callbacks.

C may call these from any thread, the reaper thread included. An exception
raised by the user's function must never unwind into C: each wrapper catches
it and hands it to ``on_error`` (the Engine records and logs it).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable

from . import _lib
from ._convert import decode, ns_to_datetime, state_from_c, uuid_from_c
from .types import Event, EventType, LogLevel, LogRecord

ErrorSink = Callable[[BaseException], None]

# Threads currently inside one of our callbacks (close() is refused there).
_in_callback = threading.local()


def inside_callback() -> bool:
    """True on a thread that is running an engine hook right now."""
    return getattr(_in_callback, "depth", 0) > 0


def _enter() -> None:
    _in_callback.depth = getattr(_in_callback, "depth", 0) + 1


def _leave() -> None:
    _in_callback.depth -= 1


def _string_at(address: int | None, length: int) -> bytes | None:
    if not address:
        return None
    return ctypes.string_at(address, length) if length else b""


def event_from_c(ev: _lib.afsm_event) -> Event:
    """Copies an afsm_event (its pointers die when the callback returns)."""
    reason = _string_at(ev.reason, ev.reason_len)
    return Event(
        type=EventType(ev.type),
        old_state=state_from_c(ev.old_state),
        new_state=state_from_c(ev.new_state),
        session_id=uuid_from_c(ev.session_id),
        connection_id=uuid_from_c(ev.connection_id),
        user_id=decode(_string_at(ev.user_id, ev.user_id_len) or b""),
        reason=decode(reason) if reason is not None else None,
        created_at=ns_to_datetime(ev.created_at_ns),
        event_at=ns_to_datetime(ev.event_at_ns),
    )


def make_clock(fn: Callable[[], int], on_error: ErrorSink) -> Any:
    """A C clock calling ``fn() -> int`` nanoseconds.

    On an exception or a bad value the previous reading is returned again, so
    time never jumps backwards because of a broken clock.
    """
    last = [0]

    def c_clock(_ctx: int | None) -> int:
        # A callback like the others: close() from inside it must raise, not
        # wait for the engine call that is reading the clock.
        _enter()
        try:
            value = fn()
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
                raise ValueError(f"clock returned {value!r}, not an int in [0, 2**64)")
            last[0] = value
            return value
        except BaseException as exc:  # noqa: BLE001 - must not reach C
            on_error(exc)
            return last[0]
        finally:
            _leave()

    return _lib.afsm_clock_fn(c_clock)


def make_event_hook(fn: Callable[[Event], None], on_error: ErrorSink) -> Any:
    def c_event(_ctx: int | None, event: Any) -> None:
        _enter()
        try:
            fn(event_from_c(event.contents))
        except BaseException as exc:  # noqa: BLE001 - must not reach C
            on_error(exc)
        finally:
            _leave()

    return _lib.afsm_event_fn(c_event)


_LEVELS = {level.value: level for level in LogLevel}


def make_log_hook(fn: Callable[[LogRecord], None], on_error: ErrorSink) -> Any:
    def c_log(_ctx: int | None, level: int, message: bytes | None, fields: Any, count: int) -> None:
        _enter()
        try:
            pairs = {}
            for i in range(count):
                f = fields[i]
                pairs[decode(f.key or b"")] = decode(f.value or b"")
            fn(LogRecord(level=_LEVELS.get(level, level), message=decode(message or b""), fields=pairs))
        except BaseException as exc:  # noqa: BLE001 - must not reach C
            on_error(exc)
        finally:
            _leave()

    return _lib.afsm_log_fn(c_log)
