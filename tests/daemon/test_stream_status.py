"""HeartbeatStream's outcome in sessiond_grpc_requests_total: a stream the client
saw fail (its deadline passed, it cancelled, a message was too large) is not
counted as OK."""
from __future__ import annotations

import re
import threading
import urllib.request

import grpc
import pytest

from helpers import create, wait_until


def stream_counts(d) -> dict:
    with urllib.request.urlopen("http://%s/metrics" % d.metrics_addr, timeout=5) as resp:
        body = resp.read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^sessiond_grpc_requests_total\{method="HeartbeatStream",code="(\w+)"\} (\S+)$', body, re.M)}


def test_failed_heartbeat_streams_are_not_counted_ok(daemons):
    d = daemons.start("--max-message-bytes", "4096", name="streamstatus")
    pb = d.stubs.pb
    sid = create(d).session.session_id
    one = pb.HeartbeatBatchRequest(session_ids=[sid], sequence=1)

    # A good stream, half-closed by the client: OK.
    assert [r.sequence for r in d.stub.HeartbeatStream(iter([one]), timeout=10)] == [1]
    wait_until(lambda: stream_counts(d).get("OK") == 1, 10, what="the good stream counted OK")

    # A message larger than --max-message-bytes: the client sees RESOURCE_EXHAUSTED.
    big = pb.HeartbeatBatchRequest(session_ids=[sid] * 200, sequence=2)
    with pytest.raises(grpc.RpcError) as info:
        list(d.stub.HeartbeatStream(iter([one, big]), timeout=10))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # A stream the client cancels after its first answer.
    release = threading.Event()

    def held():
        yield one
        release.wait(30)

    call = d.stub.HeartbeatStream(held(), timeout=30)
    assert next(call).sequence == 1
    call.cancel()
    release.set()

    # Both ended without OK reaching the client: neither is counted OK.
    wait_until(lambda: sum(stream_counts(d).values()) >= 3, 10, what="three streams counted")
    counts = stream_counts(d)
    assert counts.get("OK") == 1, counts
    assert sum(counts.values()) == 3, counts
    assert d.stop() == 0
