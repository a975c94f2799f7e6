"""The Engine: one libafsm engine, and pinned Handles to its sessions.

Every method may be called from many threads at once (ctypes releases the
GIL during each C call), :meth:`Engine.close` included: a gate counts the
calls in flight, and close shuts it, waits for them to finish and only then
frees the engine, so a call racing a close either completes or raises
:class:`~afsm.errors.EngineClosed`; it never touches freed memory. Hooks run
on the thread that caused the event (for expiry: the reaper thread, or the
caller of :meth:`advance`).
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import datetime
import logging
import functools
import os
import threading
import uuid
import weakref
from ctypes import byref, c_size_t, c_uint64
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from . import _lib
from ._convert import (
    KVArray,
    UUIDLike,
    F_METADATA_BYTES,
    F_METADATA_COUNT,
    F_SESSION_ID,
    datetime_to_ns,
    encode,
    ip_text,
    metadata_from_buffer,
    metrics_from_c,
    ms_text,
    ms_to_timedelta,
    new_info,
    new_info_array,
    info_array_fields,
    info_fields,
    session_from_c,
    session_from_fields,
    session_to_info,
    state_to_c,
    stats_to_bytes,
    stats_to_c,
    timedelta_to_ms,
    token_bytes,
    uint,
    uuid7,
    uuid_from_c,
    uuid_to_c,
    uuids_to_array,
)
from ._hooks import inside_callback, make_clock, make_event_hook, make_log_hook
from .errors import AfsmError, EngineClosed, HandleReleased, InvalidArgument, check, error_for
from .types import Counts, Event, LimitPolicy, LogRecord, Metadata, Metrics, Page, Session, State, Stats

__all__ = ["Engine", "Handle"]

log = logging.getLogger("afsm")

_EMPTY: Mapping[str, str] = Metadata()
# Holds any metadata the engine accepts (key NUL value NUL per pair), as Go's mdBufSize.
_METADATA_BUF = _lib.AFSM_METADATA_BYTES_MAX + 2 * _lib.AFSM_METADATA_KEYS_MAX
# The reason of the delete that undoes a create whose token step failed (Go: shim.c).
_TOKEN_FAILED = b"token issue failed"
_OK = _lib.AFSM_OK
_EXPIRED = _lib.AFSM_EEXPIRED
_BUFFER = _lib.AFSM_EBUFFER
_NOTFOUND = _lib.AFSM_ENOTFOUND

# Callbacks of engines that could not be closed in __del__: C may still call
# them, so they must outlive the Python object.
_leaked_hooks: list[Any] = []

# Engines still open at interpreter exit are closed first, so that no reaper
# thread calls into a finalising interpreter.
_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_open_engines):
        try:
            engine.close()
        except Exception:  # noqa: BLE001 - the C close refused: keep its hooks alive
            _leaked_hooks.extend(engine._hooks)


def _disown_engines_in_child() -> None:
    """After fork(), in the child: every engine opened before is the parent's.

    afsm.h forbids a child to use or close such an engine (its reaper thread,
    and any thread inside a call holding a lock, do not exist there), so
    closing it would wait forever for a thread to stop. Each one becomes
    closed without a C call: calls raise EngineClosed saying why, and
    close(), __del__ and the atexit hook leave the C engine alone. Fresh
    locks: a parent thread may have held the old ones at the fork.
    """
    parent = os.getppid()
    for engine in list(_open_engines):
        gate = _Gate()
        gate.closed = True
        gate.why = (
            f"the Engine was opened by process {parent}; "
            "open engines after fork(), in the process that uses them"
        )
        engine._gate = gate
        engine._close_lock = threading.Lock()
        engine._handles_lock = threading.RLock()
        engine._ptr = None
        engine._forked = True
        # The parent threads inside a handle call do not exist here: their
        # count would keep release() waiting forever for them to leave.
        for pin in list(engine._handles):
            pin.forget_parent_calls()
    _open_engines.clear()


os.register_at_fork(after_in_child=_disown_engines_in_child)


class _Gate:
    """Counts the calls in flight on one engine, so close can wait for them.

    A plain count under a lock, uncontended in the common case. Invariant:
    once ``closed`` is set no new call enters, and ``shut`` returns only
    when ``inflight`` is 0, so the C engine is freed with no call inside it.
    It does not lean on the GIL, so it stays right on a free-threaded build.
    ``_gated`` inlines enter and leave (it wraps every call).
    """

    __slots__ = ("lock", "inflight", "closed", "drained", "why")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inflight = 0
        self.closed = False
        self.drained = threading.Event()
        # Completes EngineClosed's detail: "<method>: <why>".
        self.why = "the Engine is closed"

    def enter(self, what: str) -> None:
        with self.lock:
            if self.closed:
                raise EngineClosed(detail=f"{what}: {self.why}")
            self.inflight += 1

    def leave(self) -> None:
        with self.lock:
            self.inflight -= 1
            if self.inflight == 0 and self.closed:
                self.drained.set()

    def shut(self) -> None:
        """Keeps new calls out and waits until the running ones have left."""
        with self.lock:
            self.closed = True
            if self.inflight == 0:
                return
            self.drained.clear()
        self.drained.wait()

    def reopen(self) -> None:
        """Undoes :meth:`shut` (the close failed: the engine stays usable)."""
        with self.lock:
            self.closed = False


_F = TypeVar("_F", bound=Callable[..., Any])


def _gated(fn: _F) -> _F:
    """Runs an Engine method inside the engine's gate (enter and leave
    inlined: this wraps every call)."""
    what = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Engine, *args: Any, **kwargs: Any) -> Any:
        gate = self._gate
        with gate.lock:
            if gate.closed:
                raise EngineClosed(detail=f"{what}: {gate.why}")
            gate.inflight += 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            with gate.lock:
                gate.inflight -= 1
                if gate.closed and gate.inflight == 0:
                    gate.drained.set()

    return wrapper  # type: ignore[return-value]


def _optional_ms(value: datetime.timedelta | None, what: str, c_name: str | None = None) -> int:
    """Milliseconds for C, where 0 means the default: None and a zero
    timedelta both give it (as a zero time.Duration does in Go). A negative
    value is named ``c_name`` (the C field) in the detail, as in Go."""
    if value is None or (isinstance(value, datetime.timedelta) and not value):
        return 0
    if c_name is not None and isinstance(value, datetime.timedelta) and value < datetime.timedelta(0):
        raise InvalidArgument(
            _lib.AFSM_EINVAL, f"{c_name}: {ms_text(value)}, must not be negative (0: the default)"
        )
    return timedelta_to_ms(value, what)


def _limit_policy(value: LimitPolicy | str | int) -> int:
    if isinstance(value, LimitPolicy):
        return value.value
    if isinstance(value, str):
        try:
            return LimitPolicy[value.upper()].value
        except KeyError:
            raise ValueError(
                f"limit_policy must be 'reject' or 'evict_oldest', not {value!r}"
            ) from None
    return uint(value, 32, "limit_policy")  # the library rejects unknown numbers


def _key_array(key: bytes | bytearray | memoryview, what: str) -> Any:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(key).__name__}")
    raw = bytes(key)
    return (ctypes.c_uint8 * max(len(raw), 1)).from_buffer_copy(raw or b"\0"), len(raw)


def _key_id(value: int, low: int = 0) -> int:
    """A key id for C; what does not fit its uint32 gets the library's
    words for an id out of range (``low``: 1 for a new key, 0 to name the
    random first key)."""
    if isinstance(value, int) and not isinstance(value, bool) and (value < 0 or value >> 32):
        raise InvalidArgument(_lib.AFSM_EINVAL, f"key_id: {value}, must be {low}..65535")
    return uint(value, 32, "key_id")


def _id_batch(values: Iterable[UUIDLike]) -> list[UUIDLike]:
    """The ids of a batch call as a list; a str is one id, not a batch."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"session_ids must be an iterable of ids, not {type(values).__name__}")
    return list(values)


def _path(value: str | os.PathLike[str] | bytes) -> bytes:
    return os.fsencode(value)


def _etcd_config(
    cfg: Any,
    store: str,
    endpoints: str | Sequence[str] | None,
    prefix: str | None,
    dial_timeout: datetime.timedelta | None,
    request_timeout: datetime.timedelta | None,
    files: Mapping[str, str | os.PathLike[str] | None],
    user: str | None,
    password: str | None,
    read_mode: str,
) -> list[bytes]:
    """Fills the store fields of cfg; returns the buffers it points to."""
    kinds = {"memory": _lib.AFSM_STORE_MEMORY, "etcd": _lib.AFSM_STORE_ETCD}
    if store not in kinds:
        raise ValueError(f"store must be 'memory' or 'etcd', not {store!r}")
    cfg.store = kinds[store]
    modes = {
        "replica": _lib.AFSM_READ_REPLICA,
        "linearizable": _lib.AFSM_READ_LINEARIZABLE,
        "consistent": _lib.AFSM_READ_CONSISTENT,
    }
    if read_mode not in modes:
        raise ValueError(f"etcd_read_mode must be 'replica', 'linearizable' or 'consistent', not {read_mode!r}")
    cfg.etcd_read_mode = modes[read_mode]
    keep: list[bytes] = []

    def text(value: str, what: str) -> bytes:
        raw = encode(value, what)
        if b"\0" in raw:
            raise ValueError(f"{what} must not contain NUL")
        keep.append(raw)
        return raw

    if endpoints is not None:
        listed = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        cfg.etcd_endpoints = text(",".join(listed), "etcd_endpoints")
    if prefix is not None:
        cfg.etcd_prefix = text(prefix, "etcd_prefix")
    cfg.etcd_dial_timeout_ms = _optional_ms(dial_timeout, "etcd_dial_timeout")
    cfg.etcd_request_timeout_ms = _optional_ms(request_timeout, "etcd_request_timeout")
    for name, value in files.items():
        if value is not None:
            raw = _path(value)
            keep.append(raw)
            setattr(cfg, f"etcd_{name}_file", raw)
    if user is not None:
        cfg.etcd_user = text(user, "etcd_user")
    if password is not None:
        cfg.etcd_password = text(password, "etcd_password")
    return keep


def _reason(reason: str) -> tuple[bytes | None, int]:
    raw = encode(reason, "reason")
    return (raw or None), len(raw)


class Engine:
    """An in-process session engine (``afsm_engine``).

    Use it as a context manager, or call :meth:`close`. Keyword arguments set
    the fields of ``afsm_config``; ``None`` or 0 keeps the library default.

    Args:
        shard_count: a power of two up to 4096 (default: from the CPU count).
        capacity_hint: sessions expected, to presize the tables (0: 1024; at most 2**30).
        default_timeout: rolling timeout of sessions created without one
            (default 30 minutes).
        cleanup_interval: period of the internal reaper thread (default 1 s).
        tick: timing-wheel resolution (default 100 ms).
        idle_timeout: idle detection (default: none).
        max_lifetime: sessions expire this long after creation (default: none).
        close_linger: how long a closed session stays readable (default:
            removed at once); its tokens then raise Closed.
        max_sessions_per_user: cap per user id (default 0: none).
        limit_policy: what a create over the cap does: ``"reject"`` (the
            default: LimitExceeded) or ``"evict_oldest"`` (the user's oldest
            session is deleted with reason "evicted"), or a
            :class:`LimitPolicy`.
        key: the first token key, 32 bytes (``key_id`` names it).
        key_file: or a file holding exactly those 32 bytes, owned by root
            or this process's effective user, readable by its owner only
            (else KeyFileError).
        key_id: the first key's id, 1..65535 (default 1 when ``key`` or
            ``key_file`` is given). With neither, the engine seals tokens
            with a random key (id 0) that dies with it.
        metrics: False skips the engine's counters (to measure their cost);
            :meth:`metrics` then reports zeros.
        manual_reaper: no reaper thread; time advances only through
            :meth:`advance`.
        log_level: minimum level passed to ``on_log`` (:class:`LogLevel`).
        server_addr: reported in every session.
        clock: ``() -> int`` monotonic nanoseconds, replacing the engine's
            clock (tests use it to run in virtual time). Called often, from
            any thread.
        on_event: called with an :class:`Event` for every change.
        on_log: called with a :class:`LogRecord` for every log line.
        store: ``"memory"`` (the default: this process only) or ``"etcd"``:
            sessions shared by every engine on the same etcd and prefix,
            reads served from a local replica (see core/etcd/README.md).
        etcd_endpoints: ``"http://127.0.0.1:2379"`` or a sequence of such
            URLs (``https://`` for TLS); required with ``store="etcd"``.
        etcd_prefix: key prefix (default ``"/afsm/"``).
        etcd_dial_timeout: connection timeout (default 2 s).
        etcd_request_timeout: bound of every etcd call (default 5 s);
            past it a write raises Unavailable.
        etcd_ca_file, etcd_cert_file, etcd_key_file: TLS files (PEM).
        etcd_user, etcd_password: etcd authentication.
        etcd_stats_flush: how often stats additions are written to etcd
            (default 10 s; a crash loses the stats added since the last pass).
        etcd_read_mode: how gets are answered: ``"replica"`` (the default:
            the local replica), ``"linearizable"`` (the record is read from
            etcd) or ``"consistent"`` (etcd gives the record's revision, the
            replica answers once it has applied it). In both of the latter
            modes lists and counts wait until the replica has reached etcd's
            current revision, then answer from it.

    Exceptions raised by ``clock``, ``on_event`` or ``on_log`` never reach
    the library: they are logged on the ``afsm`` logger and kept in
    :attr:`callback_errors` (the last 100).
    """

    def __init__(
        self,
        *,
        shard_count: int = 0,
        capacity_hint: int = 0,
        default_timeout: datetime.timedelta | None = None,
        cleanup_interval: datetime.timedelta | None = None,
        tick: datetime.timedelta | None = None,
        idle_timeout: datetime.timedelta | None = None,
        max_lifetime: datetime.timedelta | None = None,
        close_linger: datetime.timedelta | None = None,
        max_sessions_per_user: int = 0,
        limit_policy: LimitPolicy | str = LimitPolicy.REJECT,
        key: bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        key_id: int | None = None,
        metrics: bool = True,
        manual_reaper: bool = False,
        log_level: int = 0,
        server_addr: str | None = None,
        clock: Callable[[], int] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_log: Callable[[LogRecord], None] | None = None,
        store: str = "memory",
        etcd_endpoints: str | Sequence[str] | None = None,
        etcd_prefix: str | None = None,
        etcd_dial_timeout: datetime.timedelta | None = None,
        etcd_request_timeout: datetime.timedelta | None = None,
        etcd_ca_file: str | os.PathLike[str] | None = None,
        etcd_cert_file: str | os.PathLike[str] | None = None,
        etcd_key_file: str | os.PathLike[str] | None = None,
        etcd_user: str | None = None,
        etcd_password: str | None = None,
        etcd_read_mode: str = "replica",
        etcd_stats_flush: datetime.timedelta | None = None,
    ) -> None:
        self._ptr: Any = None
        self._forked = False  # set in a fork()ed child (_disown_engines_in_child)
        self._gate = _Gate()
        self._close_lock = threading.Lock()
        # The pins of handles not yet released: close() releases them.
        self._handles: set[_Pin] = set()
        # Reentrant: a Handle's finalizer unpins (and takes it) whenever the
        # collector runs, also on a thread holding it for close() or pin().
        self._handles_lock = threading.RLock()
        self._hooks: list[Any] = []
        self.callback_errors: collections.deque[BaseException] = collections.deque(maxlen=100)

        cfg = _lib.afsm_config()
        check(_lib.lib.afsm_config_init(byref(cfg), _lib.AFSM_CONFIG_VERSION))
        cfg.shard_count = uint(shard_count, 32, "shard_count")
        cfg.capacity_hint = uint(capacity_hint, 64, "capacity_hint")
        cfg.default_timeout_ms = _optional_ms(default_timeout, "default_timeout", "config.default_timeout_ms")
        cfg.cleanup_interval_ms = _optional_ms(cleanup_interval, "cleanup_interval", "config.cleanup_interval_ms")
        cfg.tick_ms = _optional_ms(tick, "tick", "config.tick_ms")
        cfg.idle_timeout_ms = _optional_ms(idle_timeout, "idle_timeout", "config.idle_timeout_ms")
        cfg.max_lifetime_ms = _optional_ms(max_lifetime, "max_lifetime", "config.max_lifetime_ms")
        cfg.close_linger_ms = _optional_ms(close_linger, "close_linger", "config.close_linger_ms")
        cfg.max_sessions_per_user = uint(max_sessions_per_user, 32, "max_sessions_per_user")
        cfg.limit_policy = _limit_policy(limit_policy)
        # The config is copied by afsm_engine_open: these need only outlive it.
        key_buf: Any = None
        path: bytes | None = None
        if key is not None:
            key_buf, cfg.key_len = _key_array(key, "key")
            cfg.key = ctypes.cast(key_buf, ctypes.POINTER(ctypes.c_uint8))
        if key_file is not None:
            path = _path(key_file)
            cfg.key_file = path
            cfg.key_file_len = len(path)
        if key_id is None:
            key_id = 1 if key is not None or key_file is not None else 0
        cfg.key_id = _key_id(key_id)
        cfg.disable_metrics = 0 if metrics else 1
        cfg.reaper = _lib.AFSM_REAPER_MANUAL if manual_reaper else _lib.AFSM_REAPER_THREAD
        cfg.log_level = uint(int(log_level), 32, "log_level")
        server = encode(server_addr, "server_addr") if server_addr is not None else None
        if server is not None:
            cfg.server_addr = server
            cfg.server_addr_len = len(server)
        for name, hook in (("clock", clock), ("on_event", on_event), ("on_log", on_log)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
        if clock is not None:
            cfg.clock = make_clock(clock, self._callback_failed)
            self._hooks.append(cfg.clock)
        if on_event is not None:
            cfg.on_event = make_event_hook(on_event, self._callback_failed)
            self._hooks.append(cfg.on_event)
        if on_log is not None:
            cfg.on_log = make_log_hook(on_log, self._callback_failed)
            self._hooks.append(cfg.on_log)

        # The strings only need to outlive afsm_engine_open (it copies them).
        etcd_strings = _etcd_config(
            cfg,
            store,
            etcd_endpoints,
            etcd_prefix,
            etcd_dial_timeout,
            etcd_request_timeout,
            {"ca": etcd_ca_file, "cert": etcd_cert_file, "key": etcd_key_file},
            etcd_user,
            etcd_password,
            etcd_read_mode,
        )

        cfg.etcd_stats_flush_ms = _optional_ms(etcd_stats_flush, "etcd_stats_flush")

        ptr = ctypes.POINTER(_lib.afsm_engine)()
        check(_lib.lib.afsm_engine_open(byref(cfg), byref(ptr)))
        del etcd_strings
        self._ptr = ptr
        _open_engines.add(self)

    # ---- lifetime -------------------------------------------------------------

    def _callback_failed(self, exc: BaseException) -> None:
        self.callback_errors.append(exc)
        log.error("exception in an afsm callback", exc_info=exc)

    @property
    def _engine(self) -> Any:
        # Only read inside the gate (see _gated), where close cannot free it.
        ptr = self._ptr
        if ptr is None:
            raise EngineClosed(detail="the Engine is closed")
        return ptr

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has succeeded."""
        return self._ptr is None

    def close(self) -> None:
        """Stops the reaper and frees every session. Idempotent.

        Safe to call while other threads use the engine: it keeps new calls
        out (they raise :class:`~afsm.errors.EngineClosed`), waits for the
        calls in progress to return, then frees the engine. Every call made
        afterwards raises EngineClosed.

        Handles still pinned are released first (as Go's Close does): their
        calls then raise EngineClosed, their ``release()`` does nothing.
        Raises RuntimeError when called from a hook (on_event, on_log,
        clock): the call that fired the hook is still in flight, so waiting
        for it would never end.
        """
        if inside_callback():
            raise RuntimeError("Engine.close() cannot be called from an engine callback")
        with self._close_lock:
            if self._ptr is None:
                return
            self._gate.shut()
            # Every handle call runs inside the gate, so none is in flight.
            with self._handles_lock:
                pinned = list(self._handles)
            for pin in pinned:
                pin.release_for_close()
            status = _lib.lib.afsm_engine_close(self._ptr)
            if status != _OK:
                self._gate.reopen()
                check(status)
            self._ptr = None
            self._hooks = []

    def __enter__(self) -> Engine:
        return self

    # A copy would share the C engine and free it a second time on close.
    def __copy__(self) -> Engine:
        raise TypeError("cannot copy an afsm Engine: it owns the C engine; share the object")

    def __deepcopy__(self, memo: dict[int, Any]) -> Engine:
        return self.__copy__()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("cannot pickle an afsm Engine: it owns the C engine of this process")

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ptr", None) is None:
            return
        try:
            # Collected with its handles (a cycle): no call can be in flight.
            for pin in list(self._handles):
                pin.release_for_close()
            if _lib.lib.afsm_engine_close(self._ptr) == _OK:
                self._ptr = None
                return
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
        _leaked_hooks.extend(self._hooks)

    # ---- engine-wide ------------------------------------------------------------

    @_gated
    def now(self) -> int:
        """The engine clock's reading in nanoseconds (``afsm_engine_now``)."""
        out = c_uint64()
        check(_lib.lib.afsm_engine_now(self._engine, byref(out)))
        return out.value

    @_gated
    def advance(self, now_ns: int) -> int:
        """Advances time to ``now_ns`` (engine clock), expiring due sessions.

        For ``manual_reaper=True`` engines. Returns how many expired; their
        EXPIRED events run on this thread before it returns. A ``now_ns``
        negative or ahead of the engine clock raises InvalidArgument,
        nothing done (the same words as Go's ``Advance``).
        """
        if isinstance(now_ns, int) and not isinstance(now_ns, bool) and not 0 <= now_ns < 1 << 64:
            # Past the C argument's width: worded as the library's limit is.
            raise InvalidArgument(_lib.AFSM_EINVAL, f"now_ns: {now_ns}, must be 0..the engine clock's current reading")
        expired = c_size_t()
        check(_lib.lib.afsm_engine_advance(self._engine, uint(now_ns, 64, "now_ns"), byref(expired)))
        return expired.value

    @_gated
    def set_default_timeout(self, timeout: datetime.timedelta) -> None:
        """Timeout of sessions created from now on without their own."""
        if isinstance(timeout, datetime.timedelta) and timeout <= datetime.timedelta(0):
            if timeout:  # 0 reaches the library, which words the limit alike
                raise InvalidArgument(
                    _lib.AFSM_EINVAL, f"timeout_ms: {ms_text(timeout)}, must be 1..4294967295 (~49.7 days)"
                )
            ms = 0
        else:
            ms = timedelta_to_ms(timeout, "timeout")
        check(_lib.lib.afsm_engine_set_default_timeout(self._engine, ms))

    @_gated
    def counts(self) -> Counts:
        """Number of sessions, in total and per state."""
        out = _lib.afsm_counts()
        check(_lib.lib.afsm_engine_counts(self._engine, byref(out)))
        return Counts(
            total=out.total,
            by_state=MappingProxyType({s: out.by_state[s.value] for s in State}),
        )

    @_gated
    def pinned(self) -> int:
        """Number of pinned handles not yet released (0 before a clean close)."""
        out = c_uint64()
        check(_lib.lib.afsm_engine_pinned(self._engine, byref(out)))
        return out.value

    # ---- single sessions ---------------------------------------------------------

    def _metadata(self, sid: Any, count: int, size: int) -> Mapping[str, str] | None:
        """The session's metadata, fetched after its info was taken.

        ``sid`` is an afsm_uuid or its 16 bytes; ``count`` and ``size`` come
        from the info. Empty when the session has no metadata; None when it
        has some but is gone by now (the ABI has no call returning both at
        once).
        """
        if count == 0:
            return _EMPTY
        if isinstance(sid, bytes):
            sid = _lib.afsm_uuid.from_buffer_copy(sid)
        size = max(size, 1)
        needed = c_size_t()
        while True:
            buf = ctypes.create_string_buffer(size)
            status = _lib.lib.afsm_session_get_metadata(
                self._engine, byref(sid), buf, size, byref(needed), None
            )
            if status == _BUFFER:
                size = max(needed.value, 1)
                continue
            if status in (_OK, _EXPIRED):
                return metadata_from_buffer(buf.raw[: needed.value])
            if status == _NOTFOUND:
                return None
            check(status)

    def _session(self, fields: tuple[Any, ...]) -> Session:
        """The Session for a filled info, with its metadata read after it.

        Raises NotFound (as for an id that never existed) when the session
        was deleted between the two reads: it no longer exists when the
        call returns, and its metadata is unknown (as in Go).
        """
        meta = self._metadata(
            fields[F_SESSION_ID], fields[F_METADATA_COUNT], fields[F_METADATA_BYTES]
        )
        if meta is None:
            raise error_for(_NOTFOUND)
        return session_from_fields(fields, meta)

    def _listed(self, fields: Iterable[tuple[Any, ...]]) -> Iterator[Session]:
        """The listed sessions, skipping those deleted between the listing
        and their metadata read: a listing lists sessions that exist (as in
        Go)."""
        for f in fields:
            meta = self._metadata(f[F_SESSION_ID], f[F_METADATA_COUNT], f[F_METADATA_BYTES])
            if meta is not None:
                yield session_from_fields(f, meta)

    def _result(self, status: int, fields: tuple[Any, ...]) -> Session:
        """The Session for a filled info, or raises for status."""
        if status != _OK and status != _EXPIRED:
            check(status)
        if status == _OK:
            return self._session(fields)
        exc = error_for(status)
        # Expired, as in Go, even when removed (the reaper's business) before
        # its metadata could be read; then with no copy, its metadata unknown.
        meta = self._metadata(
            fields[F_SESSION_ID], fields[F_METADATA_COUNT], fields[F_METADATA_BYTES]
        )
        if meta is not None:
            exc.session = session_from_fields(fields, meta)  # type: ignore[attr-defined]
        raise exc

    @_gated
    def create_session(
        self,
        user_id: str,
        client_ip: str | Any,
        client_port: int,
        connection_id: UUIDLike | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: datetime.timedelta | None = None,
        bind_ip: bool = False,
    ) -> tuple[Session, str]:
        """Creates a session in state CONNECTING.

        Args:
            user_id: 1..256 bytes of UTF-8.
            client_ip: v4 or v6 text, or an ``ipaddress`` address.
            client_port: 0..65535.
            connection_id: the transport's id; a new UUIDv7 when None.
            metadata: up to 64 keys, 4 KiB of keys and values in total.
            timeout: rolling timeout; the engine default when None.
            bind_ip: the token is valid only when presented from
                ``client_ip``.

        Returns:
            The new session and its token (:meth:`issue_token` right after
            the create: two C calls).

        Raises:
            TooLong, InvalidArgument, InvalidIP, InvalidUUID, AlreadyExists,
            LimitExceeded, OutOfMemory. The token is sealed by a second C
            call: should that fail (the session expired, was deleted or
            closed in between), the session is deleted again (DELETED,
            reason "token issue failed"), as in Go, so that a create that
            raises leaves nothing behind, and Expired / NotFound / Closed
            is raised with a copy of the session as created in
            ``.session``.
        """
        opts = _lib.afsm_create_options()
        opts.version = _lib.AFSM_CREATE_OPTIONS_VERSION
        user = encode(user_id, "user_id")
        ip = ip_text(client_ip)
        opts.user_id = user
        opts.user_id_len = len(user)
        opts.client_ip = ip
        opts.client_ip_len = len(ip)
        if isinstance(client_port, int) and not isinstance(client_port, bool) and not 0 <= client_port < 1 << 32:
            # Past the C field's width: the library's words for its limit.
            raise InvalidArgument(_lib.AFSM_EINVAL, f"client_port: {client_port}, must be 0..65535")
        opts.client_port = uint(client_port, 32, "client_port")
        opts.connection_id = uuid_to_c(
            uuid7() if connection_id is None else connection_id, "connection_id"
        )
        kvs = KVArray(metadata)
        opts.metadata = kvs.array
        opts.metadata_count = kvs.count
        opts.timeout_ms = _optional_ms(timeout, "timeout", "timeout_ms")
        info = new_info()
        check(_lib.lib.afsm_session_create(self._engine, byref(opts), byref(info)))
        # The stored map is exactly the (duplicate-free) input, in key order.
        meta: Mapping[str, str] = _EMPTY
        if kvs.count:
            meta = Metadata(sorted(metadata.items(), key=lambda kv: kv[0].encode()))  # type: ignore[union-attr]
        session = session_from_c(info, meta)
        try:
            token = self._seal(_lib.lib.afsm_token_issue, info.session_id, bind_ip)
        except AfsmError as exc:
            # Created, then expired, closed or deleted before the second
            # call (a tiny timeout, another thread): the caller gets no
            # token, so nothing must remain. NotFound from this delete only
            # means someone else removed it first.
            _lib.lib.afsm_session_delete(
                self._engine, byref(info.session_id), _TOKEN_FAILED, len(_TOKEN_FAILED)
            )
            exc.session = session  # type: ignore[attr-defined]
            raise
        return session, token

    @_gated
    def restore(self, session: Session) -> None:
        """Re-creates a session exactly as ``session`` describes it.

        Id, connection, user, client, state, timestamps, timeout, stats,
        token generation and metadata are kept, so tokens issued before
        (by an engine with the same key) stay valid: how a snapshot is
        reloaded after a restart. The deadline is ``last_active_at`` plus
        the timeout; ``expires_at`` and ``server_addr`` are not used.

        Raises Expired (it expired meanwhile: nothing done), AlreadyExists
        (its id or connection id is taken), InvalidArgument (e.g. a
        token_generation of 0), LimitExceeded and the checks of
        :meth:`create_session`.
        """
        info = session_to_info(session)
        kvs = KVArray(session.metadata)
        check(_lib.lib.afsm_session_restore(self._engine, byref(info), kvs.array, kvs.count))

    # ---- tokens -------------------------------------------------------------------

    def _seal(self, fn: Any, sid: Any, bind_ip: bool) -> str:
        buf = ctypes.create_string_buffer(_lib.AFSM_TOKEN_SIZE)
        n = c_size_t()
        flags = _lib.AFSM_TOKEN_BIND_IP if bind_ip else 0
        check(fn(self._engine, byref(sid), flags, buf, _lib.AFSM_TOKEN_SIZE, byref(n)))
        return buf.raw[: n.value].decode("ascii")

    @_gated
    def issue_token(self, session_id: UUIDLike, bind_ip: bool = False) -> str:
        """Another token for the session's current generation.

        Earlier tokens of the same generation stay valid. ``bind_ip``: the
        token is valid only from the session's client IP. Raises NotFound,
        Expired, Closed.
        """
        return self._seal(_lib.lib.afsm_token_issue, uuid_to_c(session_id, "session_id"), bind_ip)

    @_gated
    def rotate_token(self, session_id: UUIDLike, bind_ip: bool = False) -> str:
        """Moves the session to a new token generation and returns its token.

        Every token issued before is revoked (TokenRevoked). Raises NotFound,
        Expired, Closed.
        """
        return self._seal(_lib.lib.afsm_token_rotate, uuid_to_c(session_id, "session_id"), bind_ip)

    @_gated
    def validate_token(
        self, token: str | bytes, client_ip: str | Any | None = None
    ) -> Session:
        """The session a token proves, or the reason it proves nothing.

        ``client_ip`` is the address the token was presented from (text or
        an ``ipaddress`` address); a token bound to an IP needs it.

        Raises (each failure its own class): MalformedToken (truncated,
        garbled), ForgedToken (forged, altered, or another key with the
        same id), UnknownTokenKey, TokenKeyRemoved, TokenRevoked (rotated),
        IPMismatch (all InvalidToken); NotFound, Expired, Closed for a
        genuine token whose session is gone, past its deadline or closed
        (NotFound also when it is deleted between the token check and the
        read of its metadata, a second C call, as in Go); InvalidIP for a
        malformed ``client_ip``.
        """
        raw = token_bytes(token)
        # "" is no address, as None (and as in Go): a bound token then fails
        # with IPMismatch, an unbound one passes.
        ip = None if client_ip is None or client_ip == "" else ip_text(client_ip)
        info = new_info()
        check(
            _lib.lib.afsm_token_validate(
                self._engine, raw, len(raw), ip, 0 if ip is None else len(ip), byref(info)
            )
        )
        return self._session(info_fields(info))

    # ---- key ring -------------------------------------------------------------------

    @_gated
    def add_key(self, key_id: int, key: bytes) -> None:
        """Adds a 32-byte token key to the key ring (it opens tokens at once;
        :meth:`use_key` makes it seal). Raises InvalidArgument (id 0 or over
        65535, length), KeyExists (an AlreadyExists)."""
        arr, n = _key_array(key, "key")
        check(_lib.lib.afsm_key_add(self._engine, _key_id(key_id, 1), arr, n))

    @_gated
    def add_key_file(self, key_id: int, path: str | os.PathLike[str] | bytes) -> None:
        """As :meth:`add_key`, reading the key from a file of exactly 32
        bytes, owned by root or this process's effective user, that only
        its owner may read or write (else KeyFileError)."""
        raw = _path(path)
        check(_lib.lib.afsm_key_add_file(self._engine, _key_id(key_id, 1), raw, len(raw)))

    @_gated
    def use_key(self, key_id: int) -> None:
        """Makes a key of the ring the one that seals new tokens (KeyNotFound)."""
        check(_lib.lib.afsm_key_use(self._engine, _key_id(key_id)))

    @_gated
    def remove_key(self, key_id: int) -> None:
        """Removes a key: its tokens then raise TokenKeyRemoved. Raises
        KeyNotFound, KeyInUse (it is the current key: :meth:`use_key` another
        first). KeyNotFound is a NotFound, KeyInUse a Busy."""
        check(_lib.lib.afsm_key_remove(self._engine, _key_id(key_id)))

    # ---- metrics ----------------------------------------------------------------------

    @_gated
    def metrics(self) -> Metrics:
        """The engine's counters (``afsm_metrics_snapshot``)."""
        out = _lib.afsm_metrics()
        out.version = _lib.AFSM_METRICS_VERSION
        check(_lib.lib.afsm_metrics_snapshot(self._engine, byref(out)))
        return metrics_from_c(out)

    @_gated
    def metrics_text(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        needed = c_size_t()
        buf: Any = None
        size = 0
        while True:
            status = _lib.lib.afsm_metrics_write_prometheus(self._engine, buf, size, byref(needed))
            if status != _BUFFER:
                break
            # The first call only asks for the size. Counters may grow by a
            # digit or two before the next one: some slack, and a retry.
            size = needed.value + 256
            buf = ctypes.create_string_buffer(size)
        check(status)
        return buf.value.decode("utf-8") if buf is not None else ""

    @_gated
    def get(self, session_id: UUIDLike) -> Session:
        """The session with this id.

        Raises NotFound; Expired (with ``.session`` set) when its deadline has
        passed; InvalidUUID for malformed id text. Its metadata is read by a
        second C call: a session deleted in between raises NotFound (it no
        longer exists when the call returns), as in Go; an expired one
        still raises Expired, then with ``.session`` None (its metadata is
        unknown).
        """
        sid = uuid_to_c(session_id, "session_id")
        info = new_info()
        status = _lib.lib.afsm_session_get(self._engine, byref(sid), byref(info))
        if status != _OK and status != _EXPIRED:
            check(status)
        return self._result(status, info_fields(info))

    @_gated
    def get_by_connection(self, connection_id: UUIDLike) -> Session:
        """The session of this transport connection id (as :meth:`get`)."""
        cid = uuid_to_c(connection_id, "connection_id")
        info = new_info()
        status = _lib.lib.afsm_session_get_by_connection(self._engine, byref(cid), byref(info))
        if status != _OK and status != _EXPIRED:
            check(status)
        return self._result(status, info_fields(info))

    @_gated
    def heartbeat(self, session_id: UUIDLike) -> datetime.timedelta:
        """Extends the session's deadline; returns the time left.

        Raises NotFound, Expired, Closed.
        """
        sid = uuid_to_c(session_id, "session_id")
        remaining = c_uint64()
        check(_lib.lib.afsm_session_heartbeat(self._engine, byref(sid), byref(remaining)))
        return ms_to_timedelta(remaining.value)

    @_gated
    def update(
        self,
        session_id: UUIDLike,
        state: State | int | None = None,
        metadata: Mapping[str, str] | None = None,
        replace_metadata: bool = False,
        stats: Stats | None = None,
    ) -> Session:
        """Applies every given part, or none, and returns the result.

        ``metadata`` is merged into the session's map, or becomes the whole
        map with ``replace_metadata=True`` (then ``None`` clears it).
        ``stats`` sets absolute values. Setting ``State.CLOSED`` removes the
        session; the returned copy is its last, metadata included (read
        just before the close, since a removed session's metadata cannot be
        read after it), as in Go.

        Raises InvalidTransition, InvalidArgument (unknown state), TooLong,
        NotFound (also when the session is deleted between the update and
        the read of the result's metadata, a second C call: it no longer
        exists when the call returns, as in Go), Expired.
        """
        upd = _lib.afsm_update()
        upd.version = _lib.AFSM_UPDATE_VERSION
        fields = 0
        if state is not None:
            fields |= _lib.AFSM_UPDATE_STATE
            upd.state = state_to_c(state)
        kvs = KVArray(metadata)
        if replace_metadata:
            fields |= _lib.AFSM_UPDATE_METADATA_REPLACE
        elif metadata is not None:
            fields |= _lib.AFSM_UPDATE_METADATA_MERGE
        upd.metadata = kvs.array
        upd.metadata_count = kvs.count
        if stats is not None:
            fields |= _lib.AFSM_UPDATE_STATS
            upd.stats = stats_to_c(stats)
        upd.fields = fields
        sid = uuid_to_c(session_id, "session_id")
        closing = state is not None and upd.state == State.CLOSED.value
        # Gone before the close: the close itself then raises NotFound.
        last = self._metadata(sid, 1, _METADATA_BUF) if closing else None
        info = new_info()
        check(_lib.lib.afsm_session_update(self._engine, byref(sid), byref(upd), byref(info)))
        out = info_fields(info)
        if closing:
            return session_from_fields(out, _EMPTY if last is None else last)
        return self._session(out)

    @_gated
    def add_stats(self, session_id: UUIDLike, delta: Stats) -> None:
        """Adds ``delta``'s counters (a non-zero RTT replaces the RTT)."""
        sid = uuid_to_c(session_id, "session_id")
        d = stats_to_c(delta)
        check(_lib.lib.afsm_session_add_stats(self._engine, byref(sid), byref(d)))

    @_gated
    def delete(self, session_id: UUIDLike, reason: str = "") -> None:
        """Removes the session (DELETED event with ``reason``, default "deleted").

        Raises NotFound, TooLong (reason over 256 bytes).
        """
        sid = uuid_to_c(session_id, "session_id")
        raw, n = _reason(reason)
        check(_lib.lib.afsm_session_delete(self._engine, byref(sid), raw, n))

    @_gated
    def delete_user_sessions(self, user_id: str, reason: str = "") -> int:
        """Deletes every session of a user; returns how many."""
        user = encode(user_id, "user_id")
        raw, n = _reason(reason)
        deleted = c_size_t()
        check(
            _lib.lib.afsm_session_delete_by_user(
                self._engine, user, len(user), raw, n, byref(deleted)
            )
        )
        return deleted.value

    # ---- listing ------------------------------------------------------------------

    @_gated
    def list_sessions(
        self,
        user_id: str | None = None,
        state: State | int | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        cursor: UUIDLike | None = None,
    ) -> Page:
        """One page of matching sessions, in creation order, with the total.

        Expired sessions are skipped, and so are sessions deleted between
        the listing and the read of their metadata (``total`` still counts
        them; the page is filled up from the sessions after them, as in
        Go). Pass
        ``page.next_cursor`` as ``cursor``
        to get the next page: following cursors visits every session that
        exists for the whole listing exactly once, even while other threads
        create and delete. ``offset`` skips matches after the cursor.
        ``created_after`` / ``created_before`` are exclusive bounds.
        ``user_id`` None or ``""``: every user. ``limit``: at most this many
        (default 100); 0 returns every match, and a limit over the engine's
        page maximum (10000) is walked page by page, as in Go.

        Raises InvalidArgument (negative limit or offset, unknown state).
        """
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, not {type(limit).__name__}")
        if limit < 0:
            raise InvalidArgument(_lib.AFSM_EINVAL, f"limit: {limit}, must not be negative (0: every match)")
        if isinstance(offset, int) and not isinstance(offset, bool) and offset < 0:
            raise InvalidArgument(_lib.AFSM_EINVAL, f"offset: {offset}, must not be negative")
        flt = _lib.afsm_list_filter()
        flt.version = _lib.AFSM_LIST_FILTER_VERSION
        flt.state = 0 if state is None else state_to_c(state)
        user = None
        if user_id is not None and user_id != "":
            user = encode(user_id, "user_id")
            flt.user_id = user
            flt.user_id_len = len(user)
        if created_after is not None:
            flt.created_after_ns = datetime_to_ns(created_after, "created_after")
        if created_before is not None:
            flt.created_before_ns = datetime_to_ns(created_before, "created_before")
        if cursor is not None:
            flt.cursor = uuid_to_c(cursor, "cursor")
        flt.offset = uint(offset, 64, "offset")
        sessions: list[Session] = []
        total: int | None = None
        count = c_size_t()
        total_c = c_uint64()
        next_cursor = _lib.afsm_uuid()
        while True:
            chunk = _lib.AFSM_LIST_LIMIT_MAX
            if limit:
                chunk = min(limit - len(sessions), chunk)
            flt.limit = chunk
            out = new_info_array(chunk)
            check(
                _lib.lib.afsm_session_list(
                    self._engine, byref(flt), out, chunk, byref(count), byref(total_c), byref(next_cursor)
                )
            )
            if total is None:
                total = total_c.value
            sessions.extend(self._listed(info_array_fields(out, count.value)))
            nxt = uuid_from_c(next_cursor)
            if nxt.int == 0 or (limit and len(sessions) >= limit):
                break
            # The next page starts after the last one; the offset is spent.
            flt.cursor = next_cursor
            flt.offset = 0
        return Page(sessions=tuple(sessions), total=total, next_cursor=None if nxt.int == 0 else nxt)

    def iter_sessions(
        self,
        user_id: str | None = None,
        state: State | int | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
        page_size: int = _lib.AFSM_LIST_LIMIT_MAX,
    ) -> Iterator[Session]:
        """Every matching session, following cursors page after page.

        Each page costs the library a scan of the engine (or of the user's
        sessions), so the default page is the largest allowed.
        """
        cursor: uuid.UUID | None = None
        while True:
            page = self.list_sessions(
                user_id=user_id,
                state=state,
                created_after=created_after,
                created_before=created_before,
                limit=page_size,
                cursor=cursor,
            )
            yield from page.sessions
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # ---- batches ----------------------------------------------------------------------

    @staticmethod
    def _chunks(items: Sequence[Any]) -> Iterator[tuple[int, Sequence[Any]]]:
        step = _lib.AFSM_BATCH_MAX
        for start in range(0, len(items), step):
            yield start, items[start : start + step]

    @classmethod
    def _id_chunks(cls, ids: Sequence[UUIDLike]) -> list[tuple[int, int, Any]]:
        """(start, count, afsm_uuid array) per C call, all converted before
        the first call: a malformed id raises with the engine unchanged."""
        return [(start, len(chunk), uuids_to_array(chunk, "session_id")) for start, chunk in cls._chunks(ids)]

    @_gated
    def get_many(self, session_ids: Iterable[UUIDLike]) -> list[Session | AfsmError]:
        """Gets many sessions with one C call per 65536.

        Returns, per id in order, the Session or the exception that
        :meth:`get` would have raised (not raised): NotFound also for a
        session deleted between the batch read and its metadata read, the
        same result as an id that never existed (as in Go).
        """
        ids = _id_batch(session_ids)
        results: list[Session | AfsmError] = []
        for _, n, arr in self._id_chunks(ids):
            out = new_info_array(n)
            statuses = (ctypes.c_int * n)()
            check(_lib.lib.afsm_session_get_batch(self._engine, arr, n, out, statuses))
            for status, fields in zip(statuses, info_array_fields(out, n)):
                if status != _OK and status != _EXPIRED:
                    results.append(error_for(status))
                    continue
                try:
                    results.append(self._result(status, fields))
                except AfsmError as exc:
                    results.append(exc)
        return results

    @_gated
    def heartbeat_many(self, session_ids: Iterable[UUIDLike]) -> list[datetime.timedelta | AfsmError]:
        """Heartbeats many sessions; per id, the time left or the exception."""
        ids = _id_batch(session_ids)
        results: list[datetime.timedelta | AfsmError] = []
        for _, n, arr in self._id_chunks(ids):
            remaining = (c_uint64 * n)()
            statuses = (ctypes.c_int * n)()
            check(_lib.lib.afsm_session_heartbeat_batch(self._engine, arr, n, remaining, statuses))
            results.extend(
                ms_to_timedelta(remaining[i]) if statuses[i] == _OK else error_for(statuses[i])
                for i in range(n)
            )
        return results

    @_gated
    def add_stats_many(
        self, session_ids: Iterable[UUIDLike], deltas: Stats | Iterable[Stats]
    ) -> list[AfsmError | None]:
        """Adds a delta per session (or one delta to all).

        Returns, per id, ``None`` or the exception.
        """
        ids = _id_batch(session_ids)
        if isinstance(deltas, Stats):
            packed = [stats_to_bytes(deltas)] * len(ids)
        else:
            packed = [stats_to_bytes(d) for d in deltas]
            if len(packed) != len(ids):
                raise InvalidArgument(  # a ValueError too
                    _lib.AFSM_EINVAL, f"deltas: {len(packed)} items, must be as many as ids ({len(ids)})"
                )
        results: list[AfsmError | None] = []
        for start, n, arr in self._id_chunks(ids):
            d = (_lib.afsm_stats * n).from_buffer_copy(b"".join(packed[start : start + n]))
            statuses = (ctypes.c_int * n)()
            check(_lib.lib.afsm_session_add_stats_batch(self._engine, arr, d, n, statuses))
            results.extend(None if s == _OK else error_for(s) for s in statuses)
        return results

    # ---- handles -----------------------------------------------------------------------

    @_gated
    def pin(self, session_id: UUIDLike) -> Handle:
        """A pinned :class:`Handle` to the session (NotFound, Expired)."""
        sid = uuid_to_c(session_id, "session_id")
        ptr = ctypes.POINTER(_lib.afsm_handle)()
        check(_lib.lib.afsm_handle_pin(self._engine, byref(sid), byref(ptr)))
        return Handle(self, ptr)

    @_gated
    def pin_by_connection(self, connection_id: UUIDLike) -> Handle:
        """A pinned :class:`Handle`, looked up by connection id."""
        cid = uuid_to_c(connection_id, "connection_id")
        ptr = ctypes.POINTER(_lib.afsm_handle)()
        check(_lib.lib.afsm_handle_pin_by_connection(self._engine, byref(cid), byref(ptr)))
        return Handle(self, ptr)


class _Pin:
    """The C pin behind one :class:`Handle`, held strongly by its engine.

    Kept apart from the Handle so that Engine.close always finds it: the
    garbage collector clears a Handle's weak references before it runs the
    Handle's finalizer, so a WeakSet of Handles would miss one that is
    being collected while it is still pinned in C. Removed from the
    engine's set once unpinned, so a dropped Handle is not kept.

    release frees the C handle, so it must not run while a call on the
    handle is inside C: calls count themselves under ``lock``, and the last
    one out does a release that was asked for meanwhile.
    """

    __slots__ = ("engine", "ptr", "lock", "inflight", "releasing", "unpinned")

    def __init__(self, engine: Engine, ptr: Any) -> None:
        self.engine = engine
        self.ptr = ptr
        self.lock = threading.Lock()
        self.inflight = 0
        self.releasing = False
        self.unpinned = threading.Event()

    def enter(self) -> Any:
        with self.lock:
            if self.releasing:
                raise HandleReleased(detail="the afsm Handle is released")
            self.inflight += 1
            return self.ptr

    def leave(self) -> None:
        with self.lock:
            self.inflight -= 1
            last = self.inflight == 0 and self.releasing
        if last:
            self.unpin()

    def unpin(self) -> None:
        ptr, self.ptr = self.ptr, None
        engine = self.engine
        try:
            # ptr is None when a finalizer already unpinned it in between.
            if ptr is not None and not engine._forked:  # never the parent's
                check(_lib.lib.afsm_handle_release(ptr))
        finally:
            with engine._handles_lock:
                engine._handles.discard(self)
            self.unpinned.set()

    def forget_parent_calls(self) -> None:
        """In a fork()ed child: drops the calls in progress in the parent's
        other threads (and any lock they held), so release() returns."""
        self.lock = threading.Lock()
        self.inflight = 0
        self.unpinned = threading.Event()
        if self.releasing:  # its unpin was left to a call that is not here
            self.ptr = None
            self.unpinned.set()

    def release_for_close(self) -> None:
        """Engine.close's release: the engine's gate is drained, so no call
        on this handle is in progress; a release() racing on another thread
        is waited for."""
        with self.lock:
            first = not self.releasing
            self.releasing = True
        if first:
            self.unpin()
        else:
            self.unpinned.wait()

    def release(self) -> None:
        # Engine.close waits for a release in progress (release_for_close)
        # before it frees the engine, so the engine outlives this call
        # without the engine's gate.
        with self.lock:
            if self.releasing:
                first = False
            else:
                first = self.releasing = True
            now = first and self.inflight == 0
        if now:
            self.unpin()
        elif not inside_callback():
            self.unpinned.wait()


class Handle:
    """A pinned session: heartbeats and stats without a lookup.

    Stays safe after the session is deleted or expires (its calls then raise
    NotFound or Expired). Release it (or use ``with``) when done;
    :meth:`Engine.close` releases the handles still pinned.
    """

    def __init__(self, engine: Engine, ptr: Any) -> None:
        self._engine = engine  # keeps the engine (and its hooks) alive
        self._pin = pin = _Pin(engine, ptr)
        with engine._handles_lock:
            engine._handles.add(pin)
        out = _lib.afsm_uuid()
        check(_lib.lib.afsm_handle_session_id(ptr, byref(out)))
        self.session_id: uuid.UUID = uuid_from_c(out)

    @property
    def released(self) -> bool:
        """True once :meth:`release` was called."""
        return self._pin.releasing

    def heartbeat(self) -> datetime.timedelta:
        """As :meth:`Engine.heartbeat`, returning the time left."""
        remaining = c_uint64()
        gate = self._engine._gate
        gate.enter("Handle.heartbeat")
        try:
            pin = self._pin
            ptr = pin.enter()
            try:
                check(_lib.lib.afsm_handle_heartbeat(ptr, byref(remaining)))
            finally:
                pin.leave()
        finally:
            gate.leave()
        return ms_to_timedelta(remaining.value)

    def add_stats(self, delta: Stats) -> None:
        """As :meth:`Engine.add_stats`."""
        d = stats_to_c(delta)
        gate = self._engine._gate
        gate.enter("Handle.add_stats")
        try:
            pin = self._pin
            ptr = pin.enter()
            try:
                check(_lib.lib.afsm_handle_add_stats(ptr, byref(d)))
            finally:
                pin.leave()
        finally:
            gate.leave()

    def release(self) -> None:
        """Unpins. Idempotent. Calls on the handle afterwards raise
        HandleReleased (an EngineClosed and a ValueError).

        Waits for the handle's calls in progress on other threads, so that
        none runs on the freed handle. From an engine hook (``on_event``
        fired by this handle's own heartbeat, say) it does not wait: the
        session is unpinned as the last call in progress returns.
        """
        self._pin.release()

    def __enter__(self) -> Handle:
        return self

    # A copy would share the C handle and unpin the session a second time.
    def __copy__(self) -> Handle:
        raise TypeError("cannot copy an afsm Handle: it owns its pin; share the object")

    def __deepcopy__(self, memo: dict[int, Any]) -> Handle:
        return self.__copy__()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("cannot pickle an afsm Handle: it owns a pin in this process")

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        pin = getattr(self, "_pin", None)
        if pin is not None and pin.ptr is not None:
            try:
                self.release()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    def __repr__(self) -> str:
        return f"<afsm.Handle {self.session_id}{' released' if self._pin.releasing else ''}>"
