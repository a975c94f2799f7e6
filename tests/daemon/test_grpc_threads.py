"""--grpc-threads: every accepted value serves, bad values are refused with the flag and its range."""
from __future__ import annotations

import os

import pytest

from helpers import create


@pytest.mark.parametrize("threads", ["0", "1", "2", "256"])
def test_every_accepted_thread_count_serves(daemons, threads):
    d = daemons.start("--grpc-threads", threads, name="threads-" + threads)
    listening = next(r for r in d.log_records() if r.get("msg") == "sessiond listening")
    want = str(max(1, os.cpu_count() // 2)) if threads == "0" else threads
    assert listening["grpc_threads"] == want
    sid = create(d).session.session_id
    assert d.stub.GetSession(d.stubs.pb.GetSessionRequest(session_id=sid), timeout=10).session.session_id == sid
    assert d.stop() == 0


@pytest.mark.parametrize("value", ["257", "-1", "two", "1x", "", "99999999999999999999"])
def test_bad_thread_counts_are_refused_with_the_range(daemons, value):
    code, out = daemons.run_to_exit("--grpc-threads", value)
    assert code == 2, out
    assert "--grpc-threads" in out and '"%s"' % value in out
    assert "0 to 256" in out, out  # says what would have been accepted
