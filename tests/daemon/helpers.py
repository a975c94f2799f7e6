"""Small helpers shared by the daemon tests."""
from __future__ import annotations

import re
import subprocess
import time
import urllib.request
import uuid

import grpc
import pytest


def expect_code(code: grpc.StatusCode, fn, *args, **kwargs) -> grpc.RpcError:
    """Calls fn and asserts it fails with the given gRPC status code."""
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    assert info.value.code() == code, "%s: %s" % (info.value.code(), info.value.details())
    return info.value


def unique_user(prefix: str = "u") -> str:
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def create(d, user=None, ip="10.1.2.3", port=4000, **kw):
    """Creates a session on daemon d; returns the CreateSessionResponse."""
    pb = d.stubs.pb
    return d.stub.CreateSession(pb.CreateSessionRequest(user_id=unique_user() if user is None else user, client_ip=ip,
                                                        client_port=port, **kw), timeout=10)


def wait_until(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


# A daemon that must refuse to start exits by itself within a second; one that starts and
# serves instead is the bug, and this timeout turns it into a failure.
EXIT_TIMEOUT_S = 8.0


def exits(daemons, *args):
    """Runs sessiond with args to its exit (the daemons fixture's run_to_exit)."""
    try:
        return daemons.run_to_exit(*args, timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail("sessiond %s started and served instead of refusing to start" % " ".join(args))


def metric(d, name: str) -> float:
    """The value of one unlabelled sample on d's /metrics."""
    with urllib.request.urlopen("http://%s/metrics" % d.metrics_addr, timeout=5) as resp:
        body = resp.read().decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), body, re.M)
    assert m, "%s not in /metrics" % name
    return float(m.group(1))
