"""Shared fixtures of the afsm Python binding's tests.

The package is imported from bindings/python (unless an installed one is
preferred with AFSM_TEST_INSTALLED=1); the library is found by the package's
own rules, so run with AFSM_LIBRARY=build/lib/libafsm.so.0 or from a tree
with build/lib.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# No example database: the suite must not write outside tests/python, and a
# failing example is printed with its seed anyway.
settings.register_profile("afsm", database=None)
settings.load_profile("afsm")
set_hypothesis_home_dir(str(Path(__file__).resolve().parent / ".hypothesis"))

ROOT = Path(__file__).resolve().parents[2]
BINDING = ROOT / "bindings" / "python"
if not os.environ.get("AFSM_TEST_INSTALLED"):
    sys.path.insert(0, str(BINDING))

import afsm  # noqa: E402


class VirtualClock:
    """A thread-safe manual clock in nanoseconds, for ``Engine(clock=...)``."""

    def __init__(self, start_ns: int = 1_000_000_000_000) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self._now

    def advance(self, delta: datetime.timedelta) -> int:
        with self._lock:
            self._now += int(delta / datetime.timedelta(microseconds=1)) * 1000
            return self._now


class EventLog:
    """Collects events delivered by the engine (from any thread)."""

    def __init__(self) -> None:
        self.events: list[afsm.Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: afsm.Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, session_id: object) -> list[afsm.Event]:
        with self._lock:
            return [e for e in self.events if e.session_id == session_id]

    def types(self, session_id: object) -> list[afsm.EventType]:
        return [e.type for e in self.of(session_id)]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def engine(clock: VirtualClock, events: EventLog) -> Iterator[afsm.Engine]:
    """A manual-reaper engine in virtual time, recording events."""
    with afsm.Engine(
        shard_count=8,
        manual_reaper=True,
        clock=clock,
        on_event=events,
        default_timeout=datetime.timedelta(seconds=30),
        tick=datetime.timedelta(milliseconds=100),
        server_addr="edge-1:8443",
    ) as e:
        yield e
        assert not e.callback_errors, list(e.callback_errors)


@pytest.fixture
def real_engine() -> Iterator[afsm.Engine]:
    """An engine with the real clock and reaper thread (long timeouts)."""
    with afsm.Engine(shard_count=16) as e:
        yield e


def make(engine: afsm.Engine, user: str = "alice", **kw: object) -> afsm.Session:
    """Creates a session with defaults; returns only the session."""
    kw.setdefault("client_ip", "192.0.2.10")
    kw.setdefault("client_port", 40000)
    session, _token = engine.create_session(user, **kw)  # type: ignore[arg-type]
    return session
