"""Batch RPCs (HeartbeatBatch, AddStatsBatch, HeartbeatStream) and the limits that
protect the server: --max-batch, --max-message-bytes, --max-concurrent-streams,
--max-watchers, deadlines, and a watcher that lags (report_lag)."""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from helpers import create, expect_code, metric, unique_user, wait_until
from test_watch import Collector, wait_watchers

OK = grpc.StatusCode.OK.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


@pytest.fixture(scope="module")
def limited(stubs, tmp_path_factory):
    """A daemon with small limits, so each can be hit cheaply."""
    from conftest import DaemonFactory
    f = DaemonFactory(stubs, str(tmp_path_factory.mktemp("limited")))
    d = f.start("--max-batch", "5", "--max-message-bytes", "4096", "--max-watchers", "3", "--close-linger", "5m",
                name="limited")
    yield d
    code = d.stop()
    f.stop_all()
    assert code == 0, d.log_text()


def test_heartbeat_batch_per_session_results(limited):
    d, pb = limited, limited.stubs.pb
    a, b, closed = (create(d, timeout_seconds=100) for _ in range(3))
    d.stub.UpdateSession(pb.UpdateSessionRequest(session_id=closed.session.session_id,
                                                 state=pb.SESSION_STATE_CLOSED), timeout=5)
    missing = str(uuid.uuid4())
    r = d.stub.HeartbeatBatch(pb.HeartbeatBatchRequest(
        session_ids=[a.session.session_id, "not-a-uuid", missing, closed.session.session_id],
        session_ids_raw=uuid.UUID(b.session.session_id).bytes, sequence=7), timeout=5)
    assert list(r.codes) == [OK, INVALID, NOT_FOUND, FAILED_PRECONDITION, OK]
    assert r.failed == 3 and r.sequence == 7
    assert [e.index for e in r.errors] == [1, 2, 3]
    assert "not-a-uuid" in r.errors[0].message and "AFSM_EUUID" in r.errors[0].message
    assert missing in r.errors[1].message and "AFSM_ENOTFOUND" in r.errors[1].message
    assert 99 <= r.remaining_seconds[0] <= 100 and 99 <= r.remaining_seconds[4] <= 100
    assert r.remaining_seconds[1] == r.remaining_seconds[2] == r.remaining_seconds[3] == 0


def test_add_stats_batch(limited):
    d, pb = limited, limited.stubs.pb
    a, b = create(d), create(d)
    deltas = [pb.StatsDelta(session_id=a.session.session_id, packets_sent=3, bytes_sent=300, current_rtt_ms=12),
              pb.StatsDelta(session_id="bad", packets_sent=1),
              pb.StatsDelta(session_id=b.session.session_id, packets_received=5),
              pb.StatsDelta(session_id=a.session.session_id, packets_sent=2, bytes_sent=200)]
    r = d.stub.AddStatsBatch(pb.AddStatsBatchRequest(deltas=deltas), timeout=5)
    assert list(r.codes) == [OK, INVALID, OK, OK] and r.failed == 1 and r.errors[0].index == 1
    st = d.stub.GetSession(pb.GetSessionRequest(session_id=a.session.session_id), timeout=5).session.stats
    assert (st.packets_sent, st.bytes_sent, st.current_rtt_ms) == (5, 500, 12)
    assert d.stub.GetSession(pb.GetSessionRequest(session_id=b.session.session_id),
                             timeout=5).session.stats.packets_received == 5


def test_batch_limits(limited):
    d, pb = limited, limited.stubs.pb
    ids = [str(uuid.uuid4()) for _ in range(6)]
    e = expect_code(grpc.StatusCode.INVALID_ARGUMENT, d.stub.HeartbeatBatch,
                    pb.HeartbeatBatchRequest(session_ids=ids), timeout=5)
    assert "6 items, the limit is 5 (--max-batch)" in e.details()
    # Text and raw ids count together.
    e = expect_code(grpc.StatusCode.INVALID_ARGUMENT, d.stub.HeartbeatBatch,
                    pb.HeartbeatBatchRequest(session_ids=ids[:3], session_ids_raw=b"\0" * 48), timeout=5)
    assert "6 items" in e.details()
    e = expect_code(grpc.StatusCode.INVALID_ARGUMENT, d.stub.HeartbeatBatch,
                    pb.HeartbeatBatchRequest(session_ids_raw=b"\0" * 20), timeout=5)
    assert "20 bytes, not a multiple of 16" in e.details()
    e = expect_code(grpc.StatusCode.INVALID_ARGUMENT, d.stub.AddStatsBatch,
                    pb.AddStatsBatchRequest(deltas=[pb.StatsDelta(session_id=i) for i in ids]), timeout=5)
    assert "the limit is 5" in e.details()
    # A message over --max-message-bytes is refused before any handler runs.
    e = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, d.stub.CreateSession,
                    pb.CreateSessionRequest(user_id="big", client_ip="10.0.0.1", metadata={"k": "v" * 5000}),
                    timeout=5)
    assert "4096" in e.details()
    # The server is fine afterwards.
    assert create(d).session.session_id


def test_heartbeat_stream_in_order(limited):
    d, pb = limited, limited.stubs.pb
    a = create(d)
    reqs = [pb.HeartbeatBatchRequest(session_ids=[a.session.session_id], sequence=i) for i in range(1, 4)]
    reqs.append(pb.HeartbeatBatchRequest(session_ids=[a.session.session_id, str(uuid.uuid4())], sequence=4))
    resps = list(d.stub.HeartbeatStream(iter(reqs), timeout=10))
    assert [r.sequence for r in resps] == [1, 2, 3, 4]
    assert [list(r.codes) for r in resps] == [[OK], [OK], [OK], [OK, NOT_FOUND]]
    # A bad request ends the stream with its status, after the good ones' answers.
    bad = [reqs[0], pb.HeartbeatBatchRequest(session_ids=[str(uuid.uuid4())] * 6, sequence=9), reqs[1]]
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for r in d.stub.HeartbeatStream(iter(bad), timeout=10):
            got.append(r.sequence)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and got == [1]


def test_deadlines_end_streams(limited):
    d, pb = limited, limited.stubs.pb
    ch = d.open_channel()
    stub = d.stubs.rpc.SessionServiceStub(ch)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        for _ in stub.WatchSessions(pb.WatchSessionsRequest(user_id=unique_user()), timeout=0.5):
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 5
    # The server let go of the stream too.
    wait_watchers(d, 0)

    def forever():
        a = create(d)
        while True:
            yield pb.HeartbeatBatchRequest(session_ids=[a.session.session_id])
            time.sleep(0.05)  # a gateway's pace, not synchronisation

    with pytest.raises(grpc.RpcError) as info:
        for _ in stub.HeartbeatStream(forever(), timeout=0.5):
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ch.close()


def test_max_watchers(limited):
    d, pb = limited, limited.stubs.pb
    chans = [d.open_channel() for _ in range(4)]
    streams = [d.stubs.rpc.SessionServiceStub(c).WatchSessions(pb.WatchSessionsRequest(), timeout=30)
               for c in chans[:3]]
    collectors = [Collector(s) for s in streams]
    wait_watchers(d, 3)
    e = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: list(
        d.stubs.rpc.SessionServiceStub(chans[3]).WatchSessions(pb.WatchSessionsRequest(), timeout=10)))
    assert "the limit is 3 (--max-watchers)" in e.details()
    for s in streams:
        s.cancel()
    for c in collectors:
        assert c.ended.wait(10)
    wait_watchers(d, 0)
    for c in chans:
        c.close()


def test_max_concurrent_streams(daemons):
    d = daemons.start("--max-concurrent-streams", "2")
    pb = d.stubs.pb
    ch = d.open_channel()
    stub = d.stubs.rpc.SessionServiceStub(ch)
    streams = [stub.WatchSessions(pb.WatchSessionsRequest(), timeout=30) for _ in range(2)]
    collectors = [Collector(s) for s in streams]
    wait_watchers(d, 2)
    # A third call on the same connection waits for a free stream (and runs out of time)...
    expect_code(grpc.StatusCode.DEADLINE_EXCEEDED, stub.GetStats, pb.GetStatsRequest(), timeout=1.0)
    # ...while another connection is served...
    assert d.stub.GetStats(pb.GetStatsRequest(), timeout=5).watchers == 2
    # ...and it runs once a stream ends.
    streams[0].cancel()
    assert collectors[0].ended.wait(10)
    assert stub.GetStats(pb.GetStatsRequest(), timeout=5).sessions >= 0  # answered, not DEADLINE_EXCEEDED
    streams[1].cancel()
    ch.close()


def test_lagging_watcher_is_told_what_it_missed(daemons):
    buffer = 16
    d = daemons.start("--watch-buffer", str(buffer))
    pb = d.stubs.pb
    user = unique_user("lag")
    # No BDP probing: the client's HTTP/2 window stays small, so the events
    # pile up in the server's queue rather than in the client's buffers.
    ch = grpc.insecure_channel(d.addr, options=[("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)])
    stream = d.stubs.rpc.SessionServiceStub(ch).WatchSessions(pb.WatchSessionsRequest(user_id=user, report_lag=True),
                                                              timeout=60)
    wait_watchers(d, 1)
    n = 3000
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: create(d, user=user), range(n)))
    # The watcher read nothing: its queue stops at the buffer (+ one LAGGED marker).
    assert metric(d, "sessiond_watch_missed_events_total") > 0
    assert metric(d, "sessiond_watch_queued_events") <= buffer + 1
    delivered, missed, lagged = 0, 0, 0
    deadline = time.monotonic() + 30
    for ev in stream:
        if ev.type == pb.SESSION_EVENT_TYPE_LAGGED:
            assert ev.missed > 0 and not ev.session_id
            missed += ev.missed
            lagged += 1
        else:
            assert ev.type == pb.SESSION_EVENT_TYPE_CREATED and ev.user_id == user
            delivered += 1
        if delivered + missed >= n or time.monotonic() > deadline:
            break
    stream.cancel()
    ch.close()
    # Every event is accounted for: delivered, or counted as missed.
    assert delivered + missed == n and lagged >= 1 and missed > 0
    assert metric(d, "sessiond_watch_missed_events_total") == missed
    wait_until(lambda: metric(d, "sessiond_watch_queued_events") == 0, 10, what="the queue to be freed")
