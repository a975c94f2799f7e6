"""Shutdown of the completion-queue server while streams outlive the grace period.

HeartbeatStream, reflection and health Watch streams stay open across SIGTERM
(the clients neither half-close nor cancel), so --shutdown-grace runs out and
gRPC cancels the calls: the daemon must still exit 0 after writing its
snapshot, within a bound, and never abort (a call state that starts an
operation, such as its Finish, on a queue already shut down aborts the
process in grpc_cq_begin_op).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading

import grpc

from helpers import create

GRACE = "300ms"
STOP_BOUND_S = 15.0


class Reader:
    """Reads a response stream on a thread; first is set once one message came."""

    def __init__(self, call) -> None:
        self.call = call
        self.first = threading.Event()
        self.ended = threading.Event()
        self.error = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for _ in self.call:
                self.first.set()
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()


def held_requests(first, release: threading.Event):
    """A request iterator that sends first, then waits (the stream stays open)."""
    yield first
    release.wait(60)


def open_heartbeat_stream(d, release):
    pb = d.stubs.pb
    sid = create(d).session.session_id
    call = d.stub.HeartbeatStream(held_requests(pb.HeartbeatBatchRequest(session_ids=[sid], sequence=1), release),
                                  timeout=60)
    r = Reader(call)
    assert r.first.wait(10), "no answer on the heartbeat stream"
    return r


def open_reflection_stream(d, release):
    refl_pb = d.stubs.refl_pb
    stub = d.stubs.refl_rpc.ServerReflectionStub(d.channel)
    call = stub.ServerReflectionInfo(held_requests(refl_pb.ServerReflectionRequest(list_services=""), release),
                                     timeout=60)
    r = Reader(call)
    assert r.first.wait(10), "no answer on the reflection stream"
    return r


def open_health_watch(d, release):
    stub = d.stubs.health_rpc.HealthStub(d.channel)
    r = Reader(stub.Watch(d.stubs.health_pb.HealthCheckRequest(service=""), timeout=60))
    assert r.first.wait(10), "no status on the health watch"
    return r


STREAMS = 64  # of each kind: enough that cancelling them keeps the queue threads busy
ROUNDS = 6  # the abort is a race (cancellations against the queues' shutdown): each round is a new try


def stop_with_open_streams(daemons, snap: str, threads: str) -> None:
    d = daemons.start("--snapshot", snap, "--shutdown-grace", GRACE, "--grpc-threads", threads, name="grace")
    release = threading.Event()
    channels = [d.open_channel() for _ in range(4)]
    try:
        readers = []
        for i in range(STREAMS):
            ch = channels[i % len(channels)]
            d.channel = ch  # the openers use d.channel and d.stub
            d.stub = d.stubs.rpc.SessionServiceStub(ch)
            for opener in (open_heartbeat_stream, open_reflection_stream, open_health_watch):
                readers.append(opener(d, release))
        d.proc.send_signal(signal.SIGTERM)
        try:
            code = d.proc.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError("sessiond did not stop within %ss:\n%s" % (STOP_BOUND_S, d.log_text()))
        assert code == 0, "exit %d (--grpc-threads %s):\n%s" % (code, threads, d.log_text()[-3000:])
        msgs = [r.get("msg") for r in d.log_records()]
        assert "sessiond stopped" in msgs
        assert os.path.exists(snap)
        for r in readers:
            assert r.ended.wait(10), "a client's stream did not end"
    finally:
        release.set()
        d.channel = None
        for ch in channels:
            ch.close()


def test_stop_exits_zero_when_streams_outlive_the_grace(daemons, tmp_path):
    for n in range(ROUNDS):
        stop_with_open_streams(daemons, str(tmp_path / ("sessions-%d.snap" % n)), "1" if n % 2 == 0 else "2")


def test_stop_exits_zero_with_watchers_that_read_nothing(daemons, tmp_path):
    # A report_lag watcher stays however far behind it is; these read
    # nothing, so each one's write in flight waits on HTTP/2 flow control,
    # the flush at shutdown cannot finish, and the grace period ends them (a
    # failed write, then the watcher's Finish).
    from test_watch import wait_watchers
    snap = str(tmp_path / "sessions.snap")
    d = daemons.start("--snapshot", snap, "--shutdown-grace", GRACE, "--watch-buffer", "64", "--grpc-threads", "2",
                      name="unread")
    pb = d.stubs.pb
    channels = [grpc.insecure_channel(d.addr, options=[("grpc.http2.bdp_probe", 0),
                                                       ("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)]
    try:
        streams = [d.stubs.rpc.SessionServiceStub(ch).WatchSessions(pb.WatchSessionsRequest(report_lag=True),
                                                                     timeout=60) for ch in channels]
        wait_watchers(d, len(streams))
        for _ in range(1500):  # ~200 bytes an event: far more than the 64 KiB window
            create(d)
        d.proc.send_signal(signal.SIGTERM)
        try:
            code = d.proc.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError("sessiond did not stop within %ss:\n%s" % (STOP_BOUND_S, d.log_text()))
        assert code == 0, "exit %d:\n%s" % (code, d.log_text()[-3000:])
        assert os.path.exists(snap)
        for s in streams:
            s.cancel()
    finally:
        for ch in channels:
            ch.close()


def test_health_watch_of_an_unknown_service_sees_no_repeat_at_shutdown(daemons):
    # Watch sends the status now, then a message only when it changes: an
    # unknown service stays SERVICE_UNKNOWN when the server stops serving.
    d = daemons.start(name="hunknown")
    h = d.stubs.health_pb
    stream = d.stubs.health_rpc.HealthStub(d.channel).Watch(h.HealthCheckRequest(service="no.such.Service"),
                                                            timeout=30)
    assert next(stream).status == h.HealthCheckResponse.SERVICE_UNKNOWN
    d.proc.send_signal(signal.SIGTERM)
    rest = [r.status for r in stream]  # ends with OK, or this raises
    assert rest == [], rest
    assert d.proc.wait(timeout=STOP_BOUND_S) == 0
