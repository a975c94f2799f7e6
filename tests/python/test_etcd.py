"""The etcd store through the Python binding, against a real etcd.

The fixture starts Debian's /usr/bin/etcd on 127.0.0.1 with free ports and a
temporary data directory, and kills it at the end of the module (also when a
test fails). Waits poll with deadlines.
"""

from __future__ import annotations

import datetime
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Callable, Iterator

import pytest

import afsm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %.1f s" % seconds)
        time.sleep(0.02)


@pytest.fixture(scope="module")
def etcd() -> Iterator[str]:
    client, peer = _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="afsm-etcd-py-") as data:
        proc = subprocess.Popen(
            [
                "/usr/bin/etcd",
                "--data-dir", data,
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{client}"
        try:

            def healthy() -> bool:
                try:
                    with urllib.request.urlopen(endpoint + "/health", timeout=0.5) as r:
                        return b'"true"' in r.read()
                except OSError:
                    return False

            _wait_for(healthy, 20)
            yield endpoint
        finally:
            proc.kill()
            proc.wait(timeout=10)


def test_two_engines_share_sessions_and_events(etcd: str) -> None:
    seen: list[afsm.Event] = []
    lock = threading.Lock()

    def on_event(ev: afsm.Event) -> None:
        with lock:
            seen.append(ev)

    with afsm.Engine(store="etcd", etcd_endpoints=[etcd], etcd_prefix="/py1/") as a, afsm.Engine(
        store="etcd", etcd_endpoints=etcd, etcd_prefix="/py1/", on_event=on_event
    ) as b:
        s, _ = a.create_session("alice", "10.0.0.1", 443, metadata={"device": "phone"})

        def present(engine: afsm.Engine) -> bool:
            try:
                engine.get(s.id)
                return True
            except afsm.NotFound:
                return False

        _wait_for(lambda: present(b))
        copy = b.get(s.id)
        assert (copy.user_id, copy.client_port, dict(copy.metadata)) == ("alice", 443, {"device": "phone"})
        b.delete(s.id, reason="logout")
        _wait_for(lambda: not present(a))
        with lock:
            kinds = [(e.type, e.reason) for e in seen if e.session_id == s.id]
        assert [k for k, _ in kinds] == [afsm.EventType.CREATED, afsm.EventType.DELETED]
        assert kinds[1][1] == "logout"


def test_unreachable_etcd_is_unavailable_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(afsm.Unavailable):
        afsm.Engine(
            store="etcd",
            etcd_endpoints=f"http://127.0.0.1:{_free_port()}",
            etcd_request_timeout=datetime.timedelta(milliseconds=300),
        )
    assert time.monotonic() - started < 2


def test_store_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="store must be"):
        afsm.Engine(store="redis")
    with pytest.raises(afsm.AfsmError):
        afsm.Engine(store="etcd")  # no endpoints
