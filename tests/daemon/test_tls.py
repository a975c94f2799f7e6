"""TLS and mutual TLS on the gRPC port, and certificate reload on SIGHUP.

Certificates are made by openssl in the test (certs.py). A refused client sees
UNAVAILABLE: the handshake fails, so no call ever reaches the service.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess

import grpc
import pytest

from certs import CertAuthority, read
from conftest import SESSIONCTL
from helpers import create, wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    ca = CertAuthority(str(base / "ca1"), "sessiond test CA")
    other = CertAuthority(str(base / "ca2"), "some other CA")
    return {
        "ca": ca,
        "other": other,
        "server": ca.issue("server", server=True),
        "server2": other.issue("server2", server=True),
        "client": ca.issue("client"),
        "client_other_ca": other.issue("intruder"),
        "client_expired": ca.issue("expired-client", expired=True),
    }


def creds(roots: str, client=None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=read(roots))
    return grpc.ssl_channel_credentials(root_certificates=read(roots), private_key=read(client[1]),
                                        certificate_chain=read(client[0]))


def health_ok(d, channel, timeout=5.0) -> bool:
    stub = d.stubs.health_rpc.HealthStub(channel)
    r = stub.Check(d.stubs.health_pb.HealthCheckRequest(service="session.SessionService"), timeout=timeout)
    return r.status == d.stubs.health_pb.HealthCheckResponse.SERVING


def refused(d, credentials) -> grpc.StatusCode:
    ch = d.open_channel(credentials)
    try:
        with pytest.raises(grpc.RpcError) as info:
            health_ok(d, ch, timeout=5.0)
        return info.value.code()
    finally:
        ch.close()


def test_tls_serves_and_refuses_plaintext(daemons, pki):
    cert, key = pki["server"]
    d = daemons.start("--tls-cert", cert, "--tls-key", key, credentials=creds(pki["ca"].cert))
    r = create(d)
    assert d.stub.GetSession(d.stubs.pb.GetSessionRequest(session_id=r.session.session_id), timeout=5).session
    assert refused(d, None) == grpc.StatusCode.UNAVAILABLE  # plaintext client on a TLS port
    assert any(rec.get("msg") == "sessiond listening" and rec.get("tls") == "on" for rec in d.log_records())


def test_mutual_tls(daemons, pki):
    cert, key = pki["server"]
    d = daemons.start("--tls-cert", cert, "--tls-key", key, "--client-ca", pki["ca"].cert,
                      credentials=creds(pki["ca"].cert, pki["client"]))
    # The right certificate works.
    assert create(d).session.session_id
    # No client certificate, one from another CA, an expired one: refused at the handshake.
    assert refused(d, creds(pki["ca"].cert)) == grpc.StatusCode.UNAVAILABLE
    assert refused(d, creds(pki["ca"].cert, pki["client_other_ca"])) == grpc.StatusCode.UNAVAILABLE
    assert refused(d, creds(pki["ca"].cert, pki["client_expired"])) == grpc.StatusCode.UNAVAILABLE
    # And the right one still works on a fresh connection.
    ch = d.open_channel(creds(pki["ca"].cert, pki["client"]))
    assert health_ok(d, ch)
    ch.close()


def test_sighup_reloads_certificate_and_keeps_connections(daemons, pki, tmp_path):
    live_cert, live_key = str(tmp_path / "server.crt"), str(tmp_path / "server.key")
    shutil.copy(pki["server"][0], live_cert)
    shutil.copy(pki["server"][1], live_key)
    d = daemons.start("--tls-cert", live_cert, "--tls-key", live_key, "--client-ca", pki["ca"].cert,
                      credentials=creds(pki["ca"].cert, pki["client"]))
    established = d.channel
    assert health_ok(d, established)

    # A key that does not match the certificate: refused, the old pair stays.
    shutil.copy(pki["server2"][1], live_key)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(r.get("msg", "").startswith("SIGHUP: TLS reload refused") for r in d.log_records()), 10,
               what="the refused reload in the log")
    ch = d.open_channel(creds(pki["ca"].cert, pki["client"]))
    assert health_ok(d, ch)
    ch.close()

    # The new pair (issued by another CA): new handshakes present it.
    shutil.copy(pki["server2"][0], live_cert)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(r.get("msg") == "SIGHUP: TLS certificate reloaded" for r in d.log_records()), 10,
               what="the reload in the log")

    def new_cert_served() -> bool:
        ch = d.open_channel(creds(pki["other"].cert, pki["client"]))
        try:
            return health_ok(d, ch, timeout=2.0)
        except grpc.RpcError:
            return False
        finally:
            ch.close()

    wait_until(new_cert_served, 15, interval=0.2, what="a handshake with the reloaded certificate")
    # Clients that trust only the old CA are now refused on new connections...
    assert refused(d, creds(pki["ca"].cert, pki["client"])) == grpc.StatusCode.UNAVAILABLE
    # ...while the connection made before the reload still carries calls.
    assert health_ok(d, established)
    assert d.stub.CreateSession(d.stubs.pb.CreateSessionRequest(user_id="after-reload", client_ip="10.0.0.1"),
                                timeout=5).session.session_id
    assert d.stop() == 0


def test_bad_tls_flags(daemons, pki, tmp_path):
    cert, key = pki["server"]
    code, out = daemons.run_to_exit("--tls-cert", cert)
    assert code == 2 and "--tls-cert and --tls-key go together" in out
    code, out = daemons.run_to_exit("--client-ca", pki["ca"].cert)
    assert code == 2 and "--client-ca needs --tls-cert" in out
    code, out = daemons.run_to_exit("--tls-cert", cert, "--tls-key", pki["client"][1])
    assert code == 1 and "does not match the certificate" in out
    missing = str(tmp_path / "nope.pem")
    code, out = daemons.run_to_exit("--tls-cert", missing, "--tls-key", key)
    assert code == 1 and missing in out


def test_sessionctl_over_mutual_tls(daemons, pki, tmp_path):
    cert, key = pki["server"]
    d = daemons.start("--tls-cert", cert, "--tls-key", key, "--client-ca", pki["ca"].cert,
                      credentials=creds(pki["ca"].cert, pki["client"]))
    env = dict(os.environ, SESSIONCTL_CACHE=str(tmp_path / "cache"))
    tls = ["--addr", d.addr, "--tls-ca", pki["ca"].cert, "--tls-server-name", "localhost"]
    ok = subprocess.run([SESSIONCTL] + tls + ["--tls-cert", pki["client"][0], "--tls-key", pki["client"][1],
                                              "--json", "create", "--user", "ctl", "--ip", "10.0.0.9"],
                        capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    assert '"user_id": "ctl"' in ok.stdout
    bad = subprocess.run([SESSIONCTL] + tls + ["stats"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode != 0 and "UNAVAILABLE" in bad.stderr
