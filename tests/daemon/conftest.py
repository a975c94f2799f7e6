"""Fixtures for the sessiond suite: a real daemon (subprocess) and a real client.

Every daemon binds 127.0.0.1 on port 0 (the kernel picks a free port; the
daemon logs the address it got), is waited for by polling the gRPC health
service with a deadline, and is always stopped by a finalizer.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import grpc
import pytest

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
SESSIOND = os.environ.get("SESSIOND_BIN", os.path.join(ROOT, "build", "tools", "sessiond", "sessiond"))
SESSIONCTL = os.path.join(ROOT, "tools", "sessionctl", "sessionctl")
PROTO_DIR = os.path.join(ROOT, "tools", "proto")
TEST_PROTO_DIR = os.path.join(os.path.dirname(__file__), "protos")
START_DEADLINE_S = 20.0


def _generate_stubs() -> str:
    out = tempfile.mkdtemp(prefix="sessiond-stubs-")
    for include, name in [(PROTO_DIR, "session.proto"), (TEST_PROTO_DIR, "health.proto"),
                          (TEST_PROTO_DIR, "reflection.proto")]:
        subprocess.run(["protoc", "-I" + include, "--python_out=" + out, "--grpc_out=" + out,
                        "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", os.path.join(include, name)],
                       check=True)
    return out


class Stubs:
    """The generated modules: pb (session_pb2), rpc (session_pb2_grpc), health, reflection."""

    def __init__(self, path: str) -> None:
        sys.path.insert(0, path)
        self.path = path
        self.pb = importlib.import_module("session_pb2")
        self.rpc = importlib.import_module("session_pb2_grpc")
        self.health_pb = importlib.import_module("health_pb2")
        self.health_rpc = importlib.import_module("health_pb2_grpc")
        self.refl_pb = importlib.import_module("reflection_pb2")
        self.refl_rpc = importlib.import_module("reflection_pb2_grpc")


@pytest.fixture(scope="session")
def stubs() -> Stubs:
    if not os.access(SESSIOND, os.X_OK):
        pytest.fail("sessiond not built: %s (cmake -S . -B build && make -C build sessiond)" % SESSIOND)
    path = _generate_stubs()
    return Stubs(path)


class Daemon:
    """One sessiond process and a channel to it."""

    def __init__(self, stubs: Stubs, workdir: str, args: List[str], name: str,
                 credentials: Optional[grpc.ChannelCredentials] = None) -> None:
        self.stubs = stubs
        self.args = args
        self.credentials = credentials
        self.workdir = workdir
        self.log_path = os.path.join(workdir, "sessiond-%s.log" % name)
        self.proc: Optional[subprocess.Popen] = None
        self.channel: Optional[grpc.Channel] = None
        self.addr = ""
        self.metrics_addr = ""

    # -- life ---------------------------------------------------------------
    def spawn(self) -> None:
        self.log_file = open(self.log_path, "ab")
        # TMPDIR: sessiond's TLS copies (mkdtemp under TMPDIR) of a daemon the
        # teardown kills stay in the test's own directory, not in /tmp.
        self.proc = subprocess.Popen([SESSIOND] + self.args, stdout=subprocess.DEVNULL, stderr=self.log_file,
                                     env=dict(os.environ, TMPDIR=self.workdir))

    def wait_ready(self) -> None:
        """Waits for the 'listening' line, then for health SERVING; raises if the process exits."""
        deadline = time.monotonic() + START_DEADLINE_S
        while not self.addr:
            if self.proc.poll() is not None:
                raise RuntimeError("sessiond exited with %d before listening:\n%s" % (self.proc.returncode,
                                                                                   self.log_text()))
            for line in self.log_records():
                if line.get("msg") == "sessiond listening":
                    self.addr = line["grpc"]
                    self.metrics_addr = line.get("metrics", "")
            if time.monotonic() > deadline:
                raise RuntimeError("sessiond did not listen within %ss:\n%s" % (START_DEADLINE_S, self.log_text()))
            time.sleep(0.02)
        self.channel = self.open_channel(self.credentials)
        health = self.stubs.health_rpc.HealthStub(self.channel)
        while True:
            try:
                r = health.Check(self.stubs.health_pb.HealthCheckRequest(service="session.SessionService"),
                                 timeout=1.0)
                if r.status == self.stubs.health_pb.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sessiond not healthy within %ss:\n%s" % (START_DEADLINE_S, self.log_text()))
            time.sleep(0.02)
        self.stub = self.stubs.rpc.SessionServiceStub(self.channel)

    def open_channel(self, credentials: Optional[grpc.ChannelCredentials] = None) -> grpc.Channel:
        """A channel of its own (its own connection); TLS when credentials are given.

        TLS channels expect the test certificates' name, "localhost".
        """
        options = [("grpc.use_local_subchannel_pool", 1)]
        if credentials is None:
            return grpc.insecure_channel(self.addr, options=options)
        return grpc.secure_channel(self.addr, credentials,
                                   options=options + [("grpc.ssl_target_name_override", "localhost")])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signals the daemon and returns its exit code (killing it after timeout)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("sessiond did not stop within %ss after signal %d" % (timeout, sig))
        self.log_file.close()
        return self.proc.returncode

    # -- logs ---------------------------------------------------------------
    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_records(self) -> List[Dict]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


class DaemonFactory:
    def __init__(self, stubs: Stubs, workdir: str) -> None:
        self.stubs = stubs
        self.workdir = workdir
        self.daemons: List[Daemon] = []

    def start(self, *extra: str, name: str = "d", ready: bool = True, metrics: bool = True,
              credentials: Optional[grpc.ChannelCredentials] = None) -> Daemon:
        args = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0" if metrics else "off"]
        args += list(extra)
        d = Daemon(self.stubs, self.workdir, args, "%s-%d" % (name, len(self.daemons)), credentials)
        self.daemons.append(d)
        d.spawn()
        if ready:
            d.wait_ready()
        return d

    def run_to_exit(self, *extra: str, timeout: float = 20.0):
        """Runs sessiond expecting it to exit by itself; returns (code, log text)."""
        args = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"] + list(extra)
        p = subprocess.run([SESSIOND] + args, capture_output=True, timeout=timeout)
        return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")

    def stop_all(self) -> None:
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()


@pytest.fixture
def daemons(stubs, tmp_path):
    f = DaemonFactory(stubs, str(tmp_path))
    yield f
    f.stop_all()


@pytest.fixture(scope="module")
def shared(stubs, tmp_path_factory):
    """One daemon for the tests that need no special flags."""
    f = DaemonFactory(stubs, str(tmp_path_factory.mktemp("shared")))
    d = f.start("--default-timeout", "5m", "--cleanup-interval", "100ms", name="shared")
    yield d
    code = d.stop()
    f.stop_all()
    assert code == 0, d.log_text()


@pytest.fixture
def key_file(tmp_path) -> str:
    path = str(tmp_path / "token.key")
    with open(path, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(path, 0o600)
    return path
