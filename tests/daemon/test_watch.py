"""WatchSessions: the event stream, expiry, filters, slow watchers, shutdown."""
from __future__ import annotations

import queue
import threading
import time

import grpc

from helpers import create, unique_user


class Collector:
    """Reads a stream on a thread into a queue, so the test can wait with a deadline."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.events: "queue.Queue" = queue.Queue()
        self.error = None
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.stream:
                self.events.put(ev)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def next(self, timeout: float):
        return self.events.get(timeout=timeout)

    def wait_for(self, pred, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching event within %ss" % timeout)
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                raise AssertionError("no matching event within %ss" % timeout)
            if pred(ev):
                return ev


def wait_watchers(d, n: int, timeout: float = 10.0, at_least: bool = False) -> None:
    pb = d.stubs.pb
    deadline = time.monotonic() + timeout
    while True:
        w = d.stub.GetStats(pb.GetStatsRequest(), timeout=5).watchers
        if w == n or (at_least and w >= n):
            return
        assert time.monotonic() < deadline, "watch stream not registered"
        time.sleep(0.02)


def test_watch_sees_create_update_delete_and_expiry(daemons):
    d = daemons.start("--default-timeout", "1s", "--cleanup-interval", "50ms", name="watch")
    pb = d.stubs.pb
    user = unique_user("w")
    col = Collector(d.stub.WatchSessions(pb.WatchSessionsRequest(user_id=user), timeout=60))
    wait_watchers(d, 1)

    a = create(d, user=user, timeout_seconds=60).session
    ev = col.next(timeout=10)
    assert ev.type == pb.SESSION_EVENT_TYPE_CREATED and ev.session_id == a.session_id
    assert ev.user_id == user and ev.connection_id == a.connection_id
    assert ev.new_state == pb.SESSION_STATE_CONNECTING and ev.event_at.seconds > 0

    d.stub.UpdateSession(pb.UpdateSessionRequest(session_id=a.session_id, state=pb.SESSION_STATE_ACTIVE), timeout=5)
    ev = col.next(timeout=10)
    assert ev.type == pb.SESSION_EVENT_TYPE_UPDATED
    assert (ev.old_state, ev.new_state) == (pb.SESSION_STATE_CONNECTING, pb.SESSION_STATE_ACTIVE)

    d.stub.DeleteSession(pb.DeleteSessionRequest(session_id=a.session_id, reason="bye"), timeout=5)
    ev = col.next(timeout=10)
    assert ev.type == pb.SESSION_EVENT_TYPE_DELETED and ev.reason == "bye"

    # Another user's events are filtered out; ours expires on its own (1 s default timeout).
    create(d)
    b = create(d, user=user).session
    ev = col.wait_for(lambda e: e.session_id == b.session_id and e.type == pb.SESSION_EVENT_TYPE_EXPIRED,
                      timeout=15)
    assert ev.user_id == user
    expired_gone = d.stub.ListSessions(pb.ListSessionsRequest(user_id=user), timeout=5)
    assert expired_gone.total == 0
    col.stream.cancel()
    assert col.ended.wait(10)
    assert d.stop() == 0


def test_watch_all_users(shared):
    pb = shared.stubs.pb
    col = Collector(shared.stub.WatchSessions(pb.WatchSessionsRequest(), timeout=60))
    wait_watchers(shared, 1, at_least=True)
    a = create(shared).session
    b = create(shared).session
    seen = {col.next(timeout=10).session_id, col.next(timeout=10).session_id}
    assert seen == {a.session_id, b.session_id}
    col.stream.cancel()
    assert col.ended.wait(10)


def test_slow_watcher_is_dropped_not_waited_for(daemons):
    d = daemons.start("--watch-buffer", "8", name="slow")
    pb = d.stubs.pb
    # A raw stream that is never read: the HTTP/2 window fills, then the
    # daemon's queue (8 events), then the daemon drops the stream.
    stream = d.stub.WatchSessions(pb.WatchSessionsRequest(), timeout=120)
    wait_watchers(d, 1)
    t0 = time.monotonic()
    user = unique_user("flood")
    dropped = False
    created = 0
    while time.monotonic() - t0 < 60:
        fs = [d.stub.CreateSession.future(pb.CreateSessionRequest(user_id=user, client_ip="10.0.0.1"), timeout=30)
              for _ in range(200)]
        for f in fs:
            f.result()  # creates never block on the stuck watcher
        created += len(fs)
        if d.stub.GetStats(pb.GetStatsRequest(), timeout=5).watchers == 0:
            dropped = True
            break
    assert dropped, "watcher not dropped after %d events" % created
    code = None
    try:
        for _ in stream:
            pass
    except grpc.RpcError as e:
        code = e.code()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert d.stop() == 0


def test_watch_streams_end_cleanly_on_shutdown(daemons):
    d = daemons.start(name="watchstop")
    pb = d.stubs.pb
    col = Collector(d.stub.WatchSessions(pb.WatchSessionsRequest(), timeout=60))
    wait_watchers(d, 1)
    create(d)
    col.next(timeout=10)
    d.proc.send_signal(15)
    assert col.ended.wait(15), "stream did not end on shutdown"
    assert col.error is None, col.error  # ended with OK
    assert d.stop() == 0
