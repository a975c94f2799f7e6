"""Two sessiond on one etcd (--store etcd): what one creates, the other reads,
watches, heartbeats and deletes.

The etcd fixture runs Debian's /usr/bin/etcd on 127.0.0.1 (free ports, data in
a temp dir) for this module and kills it at the end, also on failure.
"""
from __future__ import annotations

import socket
import subprocess
import tempfile
import urllib.request

import grpc
import pytest

from helpers import create, expect_code, unique_user, wait_until
from test_watch import Collector, wait_watchers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def etcd():
    client, peer = _free_port(), _free_port()
    url, peer_url = "http://127.0.0.1:%d" % client, "http://127.0.0.1:%d" % peer
    with tempfile.TemporaryDirectory(prefix="afsm-etcd-daemon-") as data:
        proc = subprocess.Popen(["/usr/bin/etcd", "--data-dir", data, "--listen-client-urls", url,
                                 "--advertise-client-urls", url, "--listen-peer-urls", peer_url,
                                 "--initial-advertise-peer-urls", peer_url, "--initial-cluster",
                                 "default=" + peer_url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def healthy() -> bool:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=0.5) as r:
                        return b'"true"' in r.read()
                except OSError:
                    return False

            wait_until(healthy, 20, what="etcd healthy")
            yield url
        finally:
            proc.kill()
            proc.wait(timeout=10)


def test_two_daemons_share_sessions(daemons, etcd):
    flags = ["--store", "etcd", "--etcd-endpoints", etcd, "--etcd-prefix", "/daemon1/"]
    one = daemons.start(*flags, name="one")
    two = daemons.start(*flags, name="two")
    pb = one.stubs.pb
    user = unique_user("e")
    watch = Collector(two.stub.WatchSessions(pb.WatchSessionsRequest(user_id=user), timeout=60))
    wait_watchers(two, 1)

    s = create(one, user=user, timeout_seconds=60).session
    ev = watch.next(timeout=10)
    assert ev.type == pb.SESSION_EVENT_TYPE_CREATED and ev.session_id == s.session_id

    def read_on_two():
        try:
            return two.stub.GetSession(pb.GetSessionRequest(session_id=s.session_id), timeout=5).session
        except grpc.RpcError:
            return None

    got = wait_until(read_on_two, 10, what="the session on the second daemon")
    assert got.user_id == user and got.connection_id == s.connection_id
    two.stub.Heartbeat(pb.HeartbeatRequest(session_id=s.session_id), timeout=5)
    one.stub.DeleteSession(pb.DeleteSessionRequest(session_id=s.session_id, reason="bye"), timeout=5)
    ev = watch.wait_for(lambda e: e.type == pb.SESSION_EVENT_TYPE_DELETED, timeout=10)
    assert ev.session_id == s.session_id and ev.reason == "bye"
    wait_until(lambda: read_on_two() is None, 10, what="the delete on the second daemon")
    expect_code(grpc.StatusCode.NOT_FOUND, two.stub.GetSession, pb.GetSessionRequest(session_id=s.session_id),
                timeout=5)
    watch.stream.cancel()
    assert watch.ended.wait(10)
    assert one.stop() == 0 and two.stop() == 0


def test_evict_oldest_across_daemons(daemons, etcd):
    """--limit-policy evict-oldest holds across two daemons on one etcd: a
    create on the second evicts the oldest session, made on the first, and
    the first's watchers see it go as evicted."""
    flags = ["--store", "etcd", "--etcd-endpoints", etcd, "--etcd-prefix", "/daemon2/",
             "--max-sessions-per-user", "2", "--limit-policy", "evict-oldest"]
    one = daemons.start(*flags, name="evict-one")
    two = daemons.start(*flags, name="evict-two")
    pb = one.stubs.pb
    user = unique_user("v")
    watch = Collector(one.stub.WatchSessions(pb.WatchSessionsRequest(user_id=user), timeout=60))
    wait_watchers(one, 1)
    first = create(one, user=user, timeout_seconds=60).session.session_id
    create(one, user=user, timeout_seconds=60)
    third = create(two, user=user, timeout_seconds=60).session.session_id

    ev = watch.wait_for(lambda e: e.type == pb.SESSION_EVENT_TYPE_DELETED, timeout=10)
    assert ev.session_id == first and ev.reason == "evicted"
    for d in (one, two):
        expect_code(grpc.StatusCode.NOT_FOUND, d.stub.GetSession, pb.GetSessionRequest(session_id=first), timeout=5)
    wait_until(lambda: one.stub.ListSessions(pb.ListSessionsRequest(user_id=user), timeout=5).total == 2, 10,
               what="the first daemon to hold the user's two newest")
    assert third in {s.session_id for s in one.stub.ListSessions(pb.ListSessionsRequest(user_id=user),
                                                                   timeout=5).sessions}
    watch.stream.cancel()
    assert watch.ended.wait(10)
    assert one.stop() == 0 and two.stop() == 0


def test_etcd_down_at_start_is_refused(daemons):
    dead = "http://127.0.0.1:%d" % _free_port()
    code, out = daemons.run_to_exit("--store", "etcd", "--etcd-endpoints", dead, "--etcd-request-timeout", "300ms")
    assert code == 1 and "EUNAVAILABLE" in out
