"""Listing: filters, offset pagination, cursors, and cursors under concurrent churn."""

from __future__ import annotations

import datetime
import threading
from collections import Counter

import pytest

import afsm
from afsm import State

from conftest import make


@pytest.fixture
def populated(engine: afsm.Engine) -> list[afsm.Session]:
    sessions = []
    for i in range(25):
        s = make(engine, "alice" if i % 2 == 0 else "bob", metadata={"i": str(i)})
        if i % 5 == 0:
            s = engine.update(s.id, state=State.ACTIVE)
        sessions.append(s)
    return sessions


def test_list_all_in_creation_order(engine: afsm.Engine, populated: list[afsm.Session]) -> None:
    page = engine.list_sessions(limit=100)
    assert page.total == 25
    assert page.next_cursor is None
    assert [s.id for s in page.sessions] == [s.id for s in populated]
    assert [dict(s.metadata) for s in page.sessions] == [{"i": str(i)} for i in range(25)]
    assert page.sessions[0] == engine.get(populated[0].id)


def test_list_filters(engine: afsm.Engine, populated: list[afsm.Session]) -> None:
    alice = engine.list_sessions(user_id="alice")
    assert alice.total == 13 and all(s.user_id == "alice" for s in alice.sessions)
    active = engine.list_sessions(state=State.ACTIVE)
    assert active.total == 5 and all(s.state is State.ACTIVE for s in active.sessions)
    assert engine.list_sessions(state=2).total == 5
    both = engine.list_sessions(user_id="alice", state=State.ACTIVE)
    assert [s.id for s in both.sessions] == [populated[i].id for i in (0, 10, 20)]
    assert engine.list_sessions(user_id="nobody").total == 0
    assert engine.list_sessions(state=State.DISCONNECTING).sessions == ()


def test_list_creation_window(engine: afsm.Engine, populated: list[afsm.Session]) -> None:
    first, last = populated[0].created_at, populated[-1].created_at
    one_us = datetime.timedelta(microseconds=1)
    assert engine.list_sessions(created_after=first - one_us).total == 25
    assert engine.list_sessions(created_before=last + one_us).total == 25
    later = engine.list_sessions(created_after=last + one_us)
    assert later.total == 0
    earlier = engine.list_sessions(created_before=first - one_us)
    assert earlier.total == 0
    # timezone-aware in another zone means the same instant
    tz = datetime.timezone(datetime.timedelta(hours=5))
    assert engine.list_sessions(created_after=(first - one_us).astimezone(tz)).total == 25


def test_offset_pagination(engine: afsm.Engine, populated: list[afsm.Session]) -> None:
    seen = []
    for offset in range(0, 30, 7):
        page = engine.list_sessions(limit=7, offset=offset)
        assert page.total == 25
        seen += [s.id for s in page.sessions]
    assert seen == [s.id for s in populated]
    assert engine.list_sessions(limit=7, offset=25).sessions == ()
    assert engine.list_sessions(limit=7, offset=2**63).sessions == ()


def test_cursor_pagination(engine: afsm.Engine, populated: list[afsm.Session]) -> None:
    seen = []
    cursor = None
    pages = 0
    while True:
        page = engine.list_sessions(limit=4, cursor=cursor)
        assert page.total == 25
        seen += [s.id for s in page.sessions]
        pages += 1
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.sessions[-1].id
        cursor = page.next_cursor
    assert seen == [s.id for s in populated]
    assert pages in (7, 8)  # the last full page may or may not know it is the last
    # offset applies after the cursor
    page = engine.list_sessions(limit=3, cursor=populated[9].id, offset=2)
    assert [s.id for s in page.sessions] == [s.id for s in populated[12:15]]


def test_iter_sessions(engine: afsm.Engine, populated: list[afsm.Session]) -> None:
    assert [s.id for s in engine.iter_sessions(page_size=3)] == [s.id for s in populated]
    assert [s.id for s in engine.iter_sessions(user_id="bob", page_size=1)] == [
        s.id for s in populated if s.user_id == "bob"
    ]
    assert list(engine.iter_sessions(state=State.CLOSED)) == []


def test_cursor_visits_each_session_once_under_churn(real_engine: afsm.Engine) -> None:
    """Stable sessions are each listed exactly once while another thread churns.

    The lister waits for the churner to make progress between pages (a
    condition variable, no sleeping), so every page boundary sees creates and
    deletes of other sessions.
    """
    engine = real_engine
    stable = {make(engine, "stable").id for _ in range(1500)}
    progress = 0
    cond = threading.Condition()
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        nonlocal progress
        try:
            live: list = []
            while not stop.is_set():
                for _ in range(10):
                    live.append(make(engine, "churn").id)
                while len(live) > 50:
                    engine.delete(live.pop(0))
                with cond:
                    progress += 1
                    cond.notify_all()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            with cond:
                progress = -(10**9)
                cond.notify_all()

    thread = threading.Thread(target=churn)
    thread.start()
    seen: Counter = Counter()
    pages = 0
    try:
        cursor = None
        while True:
            with cond:
                target = progress + 2
                assert cond.wait_for(lambda: progress >= target or progress < 0, timeout=30)
            assert not errors
            page = engine.list_sessions(limit=37, cursor=cursor)
            seen.update(s.id for s in page.sessions)
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert pages >= 1500 // 37
    assert progress >= 2 * pages
    dupes = [k for k, n in seen.items() if n > 1]
    assert dupes == []
    assert stable <= set(seen), f"{len(stable - set(seen))} stable sessions missed"
