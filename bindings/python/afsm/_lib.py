"""Finding and loading libafsm, and the ctypes mirror of ``include/afsm.h``.

Everything that knows the C ABI lives here: the constants, one
``ctypes.Structure`` per C struct (field by field in header order), the hook
function types, and one table of prototypes that declares ``argtypes`` and
``restype`` for every exported function. New C functions are added to
``_PROTOTYPES`` and their structs next to the others; the tests compare both
with the header.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, Sequence

__all__ = ["lib", "library_path", "LibraryNotFound", "find_library_candidates"]

SONAME = "libafsm.so.0"
ENV_VAR = "AFSM_LIBRARY"

# ---- constants (afsm.h) -----------------------------------------------------

AFSM_OK = 0
AFSM_ENULL = -1
AFSM_EVERSION = -2
AFSM_EINVAL = -3
AFSM_ETOOLONG = -4
AFSM_EUUID = -5
AFSM_EIP = -6
AFSM_ENOMEM = -7
AFSM_ENOTFOUND = -8
AFSM_EEXPIRED = -9
AFSM_EEXISTS = -10
AFSM_ETRANSITION = -11
AFSM_ECLOSED = -12
AFSM_ELIMIT = -13
AFSM_EBUFFER = -14
AFSM_EBUSY = -15
AFSM_ETOKEN = -16
AFSM_ETOKENKEY = -17
AFSM_EREVOKED = -18
AFSM_EIPMISMATCH = -19
AFSM_EKEYFILE = -20
AFSM_EUNAVAILABLE = -21
AFSM_EINTERNAL = -22
AFSM_ETOKENFORMAT = -23
AFSM_EKEYREMOVED = -24
AFSM_EKEYEXISTS = -25
AFSM_EKEYNOTFOUND = -26
AFSM_EKEYINUSE = -27

AFSM_USER_ID_MAX = 256
AFSM_SERVER_ADDR_MAX = 255
AFSM_REASON_MAX = 256
AFSM_METADATA_KEYS_MAX = 64
AFSM_METADATA_BYTES_MAX = 4096
AFSM_LIST_LIMIT_MAX = 10000
AFSM_BATCH_MAX = 65536
AFSM_UUID_STRING_SIZE = 37
AFSM_IP_STRING_SIZE = 46
AFSM_ERROR_DETAIL_MAX = 256

AFSM_STATE_COUNT = 6

AFSM_LOG_DEBUG = 10
AFSM_LOG_INFO = 20
AFSM_LOG_WARN = 30
AFSM_LOG_ERROR = 40

AFSM_LIMIT_REJECT = 0
AFSM_LIMIT_EVICT_OLDEST = 1

AFSM_REAPER_THREAD = 0
AFSM_REAPER_MANUAL = 1

AFSM_CONFIG_VERSION = 2
AFSM_STORE_MEMORY = 0
AFSM_STORE_ETCD = 1
AFSM_READ_REPLICA = 0
AFSM_READ_LINEARIZABLE = 1
AFSM_READ_CONSISTENT = 2
AFSM_SESSION_INFO_VERSION = 1
AFSM_CREATE_OPTIONS_VERSION = 1
AFSM_UPDATE_VERSION = 1
AFSM_LIST_FILTER_VERSION = 1

AFSM_METRICS_VERSION = 2

AFSM_TOKEN_SIZE = 121
AFSM_KEY_BYTES = 32
AFSM_KEY_ID_MAX = 65535
AFSM_TOKEN_BIND_IP = 0x1

AFSM_DELETE_REASON_COUNT = 5
AFSM_TOKEN_RESULT_COUNT = 10
AFSM_DURATION_BUCKETS = 14
# session_duration_seconds upper bounds (afsm.h comment above AFSM_DURATION_BUCKETS).
DURATION_BUCKET_BOUNDS: tuple[float, ...] = (
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
    float("inf"),
)

AFSM_UPDATE_STATE = 0x1
AFSM_UPDATE_METADATA_MERGE = 0x2
AFSM_UPDATE_METADATA_REPLACE = 0x4
AFSM_UPDATE_STATS = 0x8

AFSM_EVENT_CREATED = 1
AFSM_EVENT_STATE_CHANGED = 2
AFSM_EVENT_EXPIRED = 3
AFSM_EVENT_DELETED = 4

# ---- structs (same order and types as afsm.h) --------------------------------


class afsm_uuid(Structure):
    _fields_ = [("bytes", c_uint8 * 16)]


class afsm_ip(Structure):
    _fields_ = [("family", c_uint8), ("bytes", c_uint8 * 16)]


class afsm_stats(Structure):
    _fields_ = [
        ("packets_sent", c_uint64),
        ("packets_received", c_uint64),
        ("bytes_sent", c_uint64),
        ("bytes_received", c_uint64),
        ("retransmissions", c_uint64),
        ("current_rtt_ms", c_uint32),
        ("reserved", c_uint32),
    ]


class afsm_kv(Structure):
    _fields_ = [
        ("key", c_char_p),
        ("key_len", c_size_t),
        ("value", c_char_p),
        ("value_len", c_size_t),
    ]


class afsm_event(Structure):
    _fields_ = [
        ("type", c_uint32),
        ("old_state", c_uint32),
        ("new_state", c_uint32),
        ("session_id", afsm_uuid),
        ("connection_id", afsm_uuid),
        # Not NUL-terminated: c_void_p so ctypes does not stop at a NUL.
        ("user_id", c_void_p),
        ("user_id_len", c_size_t),
        ("reason", c_void_p),
        ("reason_len", c_size_t),
        ("created_at_ns", c_int64),
        ("event_at_ns", c_int64),
    ]


class afsm_log_field(Structure):
    _fields_ = [("key", c_char_p), ("value", c_char_p)]


afsm_clock_fn = CFUNCTYPE(c_uint64, c_void_p)
afsm_event_fn = CFUNCTYPE(None, c_void_p, POINTER(afsm_event))
afsm_log_fn = CFUNCTYPE(None, c_void_p, c_int, c_char_p, POINTER(afsm_log_field), c_size_t)


class afsm_config(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("shard_count", c_uint32),
        ("capacity_hint", c_uint64),
        ("default_timeout_ms", c_uint64),
        ("cleanup_interval_ms", c_uint64),
        ("tick_ms", c_uint64),
        ("idle_timeout_ms", c_uint64),
        ("max_lifetime_ms", c_uint64),
        ("reaper", c_uint32),
        ("log_level", c_uint32),
        ("server_addr", c_char_p),
        ("server_addr_len", c_size_t),
        ("clock", afsm_clock_fn),
        ("clock_ctx", c_void_p),
        ("on_event", afsm_event_fn),
        ("event_ctx", c_void_p),
        ("on_log", afsm_log_fn),
        ("log_ctx", c_void_p),
        ("close_linger_ms", c_uint64),
        ("max_sessions_per_user", c_uint32),
        ("limit_policy", c_uint32),
        ("key", POINTER(c_uint8)),
        ("key_len", c_size_t),
        ("key_file", c_char_p),
        ("key_file_len", c_size_t),
        ("key_id", c_uint32),
        ("disable_metrics", c_uint32),
        # Version 2: the store.
        ("store", c_uint32),
        ("etcd_read_mode", c_uint32),
        ("etcd_endpoints", c_char_p),
        ("etcd_prefix", c_char_p),
        ("etcd_dial_timeout_ms", c_uint64),
        ("etcd_request_timeout_ms", c_uint64),
        ("etcd_ca_file", c_char_p),
        ("etcd_cert_file", c_char_p),
        ("etcd_key_file", c_char_p),
        ("etcd_user", c_char_p),
        ("etcd_password", c_char_p),
        ("etcd_stats_flush_ms", c_uint64),
    ]


class afsm_counts(Structure):
    _fields_ = [("total", c_uint64), ("by_state", c_uint64 * AFSM_STATE_COUNT)]


class afsm_session_info(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("state", c_uint32),
        ("session_id", afsm_uuid),
        ("connection_id", afsm_uuid),
        ("client_ip", afsm_ip),
        ("client_port", c_uint16),
        ("user_id_len", c_uint32),
        ("user_id", c_char * (AFSM_USER_ID_MAX + 1)),
        ("server_addr_len", c_uint32),
        ("server_addr", c_char * (AFSM_SERVER_ADDR_MAX + 1)),
        ("created_at_ns", c_int64),
        ("last_active_at_ns", c_int64),
        ("expires_at_ns", c_int64),
        ("timeout_ms", c_uint64),
        ("metadata_count", c_uint32),
        ("metadata_bytes", c_uint32),
        ("stats", afsm_stats),
        ("token_generation", c_uint32),
        ("reserved", c_uint32),
    ]


class afsm_create_options(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("client_port", c_uint32),
        ("user_id", c_char_p),
        ("user_id_len", c_size_t),
        ("client_ip", c_char_p),
        ("client_ip_len", c_size_t),
        ("connection_id", afsm_uuid),
        ("metadata", POINTER(afsm_kv)),
        ("metadata_count", c_size_t),
        ("timeout_ms", c_uint64),
    ]


class afsm_update(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("fields", c_uint32),
        ("state", c_uint32),
        ("metadata", POINTER(afsm_kv)),
        ("metadata_count", c_size_t),
        ("stats", afsm_stats),
    ]


class afsm_list_filter(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("state", c_uint32),
        ("user_id", c_char_p),
        ("user_id_len", c_size_t),
        ("created_after_ns", c_int64),
        ("created_before_ns", c_int64),
        ("cursor", afsm_uuid),
        ("offset", c_uint64),
        ("limit", c_uint32),
    ]


class afsm_metrics(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("shard_count", c_uint32),
        ("sessions", c_uint64),
        ("sessions_by_state", c_uint64 * AFSM_STATE_COUNT),
        ("created_total", c_uint64),
        ("deleted_total", c_uint64 * AFSM_DELETE_REASON_COUNT),
        ("expired_total", c_uint64),
        ("idle_transitions_total", c_uint64),
        ("wake_transitions_total", c_uint64),
        ("duration_buckets", c_uint64 * AFSM_DURATION_BUCKETS),
        ("duration_count", c_uint64),
        ("duration_sum_seconds", ctypes.c_double),
        ("token_validations", c_uint64 * AFSM_TOKEN_RESULT_COUNT),
        ("reaper_lag_ns", c_uint64),
        ("deferred_frees", c_uint64),
        # Version 2: the etcd store's.
        ("etcd_lease_grants_total", c_uint64),
        ("etcd_lease_keepalives_total", c_uint64),
        ("etcd_stats_writes_total", c_uint64),
        ("etcd_replica_lag_seconds", ctypes.c_double),
    ]


class afsm_engine(Structure):
    """Opaque."""


class afsm_handle(Structure):
    """Opaque."""


STRUCTS: dict[str, type[Structure]] = {
    cls.__name__: cls
    for cls in (
        afsm_uuid,
        afsm_ip,
        afsm_stats,
        afsm_kv,
        afsm_event,
        afsm_log_field,
        afsm_config,
        afsm_counts,
        afsm_session_info,
        afsm_create_options,
        afsm_update,
        afsm_list_filter,
        afsm_metrics,
    )
}

# ---- prototypes ---------------------------------------------------------------

_status = c_int
_engine_p = POINTER(afsm_engine)
_handle_p = POINTER(afsm_handle)
_uuid_p = POINTER(afsm_uuid)
_info_p = POINTER(afsm_session_info)
_stats_p = POINTER(afsm_stats)

# name -> (restype, argtypes). Every function of afsm.h, in header order.
_PROTOTYPES: dict[str, tuple[Any, Sequence[Any]]] = {
    "afsm_strerror": (c_char_p, [_status]),
    "afsm_status_name": (c_char_p, [_status]),
    "afsm_version": (c_char_p, []),
    "afsm_error_detail": (c_char_p, []),
    "afsm_uuid_parse": (_status, [c_char_p, c_size_t, _uuid_p]),
    "afsm_uuid_format": (_status, [_uuid_p, POINTER(c_char)]),
    "afsm_uuid_v7": (_status, [_uuid_p]),
    "afsm_ip_parse": (_status, [c_char_p, c_size_t, POINTER(afsm_ip)]),
    "afsm_ip_format": (_status, [POINTER(afsm_ip), POINTER(c_char)]),
    "afsm_state_name": (c_char_p, [c_int]),
    "afsm_config_init": (_status, [POINTER(afsm_config), ctypes.c_uint]),
    "afsm_engine_open": (_status, [POINTER(afsm_config), POINTER(_engine_p)]),
    "afsm_engine_close": (_status, [_engine_p]),
    "afsm_engine_advance": (_status, [_engine_p, c_uint64, POINTER(c_size_t)]),
    "afsm_engine_now": (_status, [_engine_p, POINTER(c_uint64)]),
    "afsm_engine_set_default_timeout": (_status, [_engine_p, c_uint64]),
    "afsm_engine_counts": (_status, [_engine_p, POINTER(afsm_counts)]),
    "afsm_engine_pinned": (_status, [_engine_p, POINTER(c_uint64)]),
    "afsm_session_info_init": (_status, [_info_p, ctypes.c_uint]),
    "afsm_create_options_init": (_status, [POINTER(afsm_create_options), ctypes.c_uint]),
    "afsm_session_create": (_status, [_engine_p, POINTER(afsm_create_options), _info_p]),
    "afsm_session_restore": (_status, [_engine_p, _info_p, POINTER(afsm_kv), c_size_t]),
    "afsm_session_get": (_status, [_engine_p, _uuid_p, _info_p]),
    "afsm_session_get_by_connection": (_status, [_engine_p, _uuid_p, _info_p]),
    "afsm_session_get_metadata": (
        _status,
        [_engine_p, _uuid_p, POINTER(c_char), c_size_t, POINTER(c_size_t), POINTER(c_size_t)],
    ),
    "afsm_update_init": (_status, [POINTER(afsm_update), ctypes.c_uint]),
    "afsm_session_update": (_status, [_engine_p, _uuid_p, POINTER(afsm_update), _info_p]),
    "afsm_session_add_stats": (_status, [_engine_p, _uuid_p, _stats_p]),
    "afsm_session_heartbeat": (_status, [_engine_p, _uuid_p, POINTER(c_uint64)]),
    "afsm_session_delete": (_status, [_engine_p, _uuid_p, c_char_p, c_size_t]),
    "afsm_session_delete_by_user": (
        _status,
        [_engine_p, c_char_p, c_size_t, c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "afsm_list_filter_init": (_status, [POINTER(afsm_list_filter), ctypes.c_uint]),
    "afsm_session_list": (
        _status,
        [
            _engine_p,
            POINTER(afsm_list_filter),
            _info_p,
            c_size_t,
            POINTER(c_size_t),
            POINTER(c_uint64),
            _uuid_p,
        ],
    ),
    "afsm_session_get_batch": (_status, [_engine_p, _uuid_p, c_size_t, _info_p, POINTER(_status)]),
    "afsm_session_heartbeat_batch": (
        _status,
        [_engine_p, _uuid_p, c_size_t, POINTER(c_uint64), POINTER(_status)],
    ),
    "afsm_session_add_stats_batch": (
        _status,
        [_engine_p, _uuid_p, _stats_p, c_size_t, POINTER(_status)],
    ),
    "afsm_handle_pin": (_status, [_engine_p, _uuid_p, POINTER(_handle_p)]),
    "afsm_handle_pin_by_connection": (_status, [_engine_p, _uuid_p, POINTER(_handle_p)]),
    "afsm_handle_heartbeat": (_status, [_handle_p, POINTER(c_uint64)]),
    "afsm_handle_add_stats": (_status, [_handle_p, _stats_p]),
    "afsm_handle_packet": (_status, [_handle_p, c_uint64, _stats_p, POINTER(c_uint64)]),
    "afsm_handle_session_id": (_status, [_handle_p, _uuid_p]),
    "afsm_handle_release": (_status, [_handle_p]),
    "afsm_token_issue": (
        _status,
        [_engine_p, _uuid_p, c_uint32, POINTER(c_char), c_size_t, POINTER(c_size_t)],
    ),
    "afsm_token_rotate": (
        _status,
        [_engine_p, _uuid_p, c_uint32, POINTER(c_char), c_size_t, POINTER(c_size_t)],
    ),
    # token: c_char_p (bytes may hold NULs: the length is passed).
    "afsm_token_validate": (_status, [_engine_p, c_char_p, c_size_t, c_char_p, c_size_t, _info_p]),
    "afsm_key_add": (_status, [_engine_p, c_uint32, POINTER(c_uint8), c_size_t]),
    "afsm_key_add_file": (_status, [_engine_p, c_uint32, c_char_p, c_size_t]),
    "afsm_key_use": (_status, [_engine_p, c_uint32]),
    "afsm_key_remove": (_status, [_engine_p, c_uint32]),
    "afsm_metrics_snapshot": (_status, [_engine_p, POINTER(afsm_metrics)]),
    "afsm_metrics_write_prometheus": (
        _status,
        [_engine_p, POINTER(c_char), c_size_t, POINTER(c_size_t)],
    ),
}

PROTOTYPE_NAMES: tuple[str, ...] = tuple(_PROTOTYPES)


class LibraryNotFound(OSError):
    """libafsm could not be loaded from any of the places searched."""

    def __init__(self, tried: Sequence[tuple[str, str]]) -> None:
        self.tried = list(tried)
        lines = "\n".join(f"  {where}: {why}" for where, why in self.tried)
        super().__init__(
            "libafsm not found; set AFSM_LIBRARY to the path of libafsm.so.0. Tried:\n" + lines
        )


def find_library_candidates(start: Path | None = None) -> list[tuple[str, str]]:
    """The places searched, in order, as (label, path-or-name) pairs.

    1. the ``AFSM_LIBRARY`` environment variable;
    2. the library installed with this package: ``cmake --install`` writes
       ``_install.py`` recording its path relative to the package;
    3. ``build/lib/libafsm.so.0`` in this package's directory and each parent
       (a source checkout built with CMake);
    4. the installed SONAME ``libafsm.so.0`` through the dynamic linker
       (``ldconfig`` paths, ``LD_LIBRARY_PATH``), then what
       ``ctypes.util.find_library("afsm")`` finds.
    """
    candidates: list[tuple[str, str]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        candidates.append((f"${ENV_VAR}", env))
    package = Path(__file__).parent
    if start is None:
        try:
            from ._install import LIBRARY as installed  # written by cmake --install
        except ImportError:
            installed = None
        if installed:
            candidates.append(("installed with the package", os.path.normpath(package / installed)))
    here = (start or package).resolve()
    for parent in [here, *here.parents]:
        candidates.append(("build tree", str(parent / "build" / "lib" / SONAME)))
    candidates.append(("installed SONAME", SONAME))
    found = ctypes.util.find_library("afsm")
    if found and found != SONAME:
        candidates.append(("ctypes.util.find_library", found))
    return candidates


def _load(start: Path | None = None) -> tuple[ctypes.CDLL, str]:
    tried: list[tuple[str, str]] = []
    env_set = bool(os.environ.get(ENV_VAR))
    for label, where in find_library_candidates(start):
        if label in ("build tree", "installed with the package") and not os.path.exists(where):
            tried.append((where, "no such file"))
            continue
        try:
            return ctypes.CDLL(where), (os.path.abspath(where) if os.sep in where else where)
        except OSError as exc:
            tried.append((f"{where} ({label})", str(exc)))
            if label == f"${ENV_VAR}" and env_set:
                # An explicit choice that fails is an error, not a hint to look elsewhere.
                raise LibraryNotFound(tried) from exc
    raise LibraryNotFound(tried)


def declare(cdll: ctypes.CDLL) -> None:
    """Sets argtypes and restype of every function in ``_PROTOTYPES``."""
    missing = []
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(cdll, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = list(argtypes)
    if missing:
        raise OSError(f"{cdll._name} lacks symbols: {', '.join(missing)}")


lib, library_path = _load()
declare(lib)
