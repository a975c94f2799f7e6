"""Operator mistakes at start and crashes around snapshots: every one is a clear
error and exit code at start (README, "Options": 1 when it cannot start, 2 for bad
flags), never a daemon that starts and misbehaves or loses sessions later.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import time

import pytest

from helpers import create
from test_cli import LOADGEN

# Every case here exits by itself within a second when the daemon is right; a
# daemon that starts instead is the bug, and the timeout turns it into a failure.
EXIT_TIMEOUT_S = 8.0


def exits(daemons, *args):
    try:
        return daemons.run_to_exit(*args, timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail("sessiond %s started and served instead of refusing to start" % " ".join(args))


def test_a_port_held_by_another_sessiond_is_refused(daemons):
    """gRPC sets SO_REUSEPORT by default: a second daemon on the same port would share
    it with the first, the kernel splitting connections (and sessions) between them."""
    first = daemons.start(name="first")
    code, out = exits(daemons, "--listen", first.addr)
    assert code == 1 and "cannot listen" in out and first.addr in out, out
    assert first.stop() == 0


@pytest.mark.parametrize("flag,value", [("--listen", "127.0.0.1:99999"), ("--listen", "127.0.0.1"),
                                        ("--metrics-listen", "127.0.0.1:70000"), ("--metrics-listen", "nonsense")])
def test_an_address_that_is_not_host_port_is_a_bad_flag(daemons, flag, value):
    """Port 99999 used to be taken modulo 65536 by gRPC (the daemon listened on 34463)."""
    code, out = exits(daemons, flag, value)
    assert code == 2 and flag in out and value in out and "65535" in out, out


@pytest.mark.parametrize("args,words", [
    (["--shards", "3"], ["--shards", "power of two", "4096"]),
    (["--default-timeout", "100d"], ["--default-timeout", "49.7 days"]),
    (["--server-addr", "a" * 300], ["--server-addr", "300 bytes", "255"]),
])
def test_values_the_engine_refuses_are_bad_flags(daemons, args, words):
    """Exit 2 (systemd does not restart it) with the flag and its limit named, not
    exit 1 with "cannot open the engine: invalid argument"."""
    code, out = exits(daemons, *args)
    assert code == 2, out
    for w in words:
        assert w in out, (w, out)


@pytest.mark.parametrize("flag", ["--shutdown-grace", "--snapshot-interval", "--default-timeout"])
def test_a_duration_that_overflows_is_refused(daemons, flag):
    """999999999999999d is 8.6e22 ms: it used to wrap around 2^64 silently."""
    code, out = exits(daemons, flag, "999999999999999d")
    assert code == 2 and flag.lstrip("-") in out and "999999999999999d" in out, out
