"""SIGHUP with certificate files an operator got wrong: the previous certificate keeps
serving new handshakes, and the log says why the reload was refused.
"""
from __future__ import annotations

import os
import shutil
import signal
import time

from helpers import wait_until
from test_tls import creds, health_ok, pki  # noqa: F401 (pki is a fixture)


def refused_reloads(d) -> list:
    return [r for r in d.log_records() if r.get("msg", "").startswith("SIGHUP: TLS reload refused")]


def reload_refused(d, n: int) -> str:
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(refused_reloads(d)) >= n, 10, what="reload %d refused in the log" % n)
    return refused_reloads(d)[n - 1].get("error", "")


def new_handshake_ok(d, pki) -> bool:  # noqa: F811
    ch = d.open_channel(creds(pki["ca"].cert, pki["client"]))
    try:
        return health_ok(d, ch)
    finally:
        ch.close()


def handshakes_keep_working(d, pki) -> None:  # noqa: F811
    """New handshakes succeed for 2.5 s: more than two refresh periods (1 s) of gRPC's
    certificate watcher, which would pick up a bad set had it been published."""
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        assert new_handshake_ok(d, pki)


def test_sighup_with_missing_files_keeps_the_old_certificate(daemons, pki, tmp_path):  # noqa: F811
    live_cert, live_key = str(tmp_path / "server.crt"), str(tmp_path / "server.key")
    shutil.copy(pki["server"][0], live_cert)
    shutil.copy(pki["server"][1], live_key)
    d = daemons.start("--tls-cert", live_cert, "--tls-key", live_key, "--client-ca", pki["ca"].cert,
                      credentials=creds(pki["ca"].cert, pki["client"]))
    os.unlink(live_key)
    assert live_key in reload_refused(d, 1)
    shutil.copy(pki["server"][1], live_key)
    os.unlink(live_cert)
    assert live_cert in reload_refused(d, 2)
    handshakes_keep_working(d, pki)
    assert d.stop() == 0


def test_an_expired_certificate_is_refused_on_sighup_and_at_start(daemons, pki, tmp_path):  # noqa: F811
    """An expired server certificate (with its own, matching key) used to be published:
    every new handshake then failed until the next good reload."""
    expired_cert, expired_key = pki["ca"].issue("expired-server", server=True, expired=True)
    live_cert, live_key = str(tmp_path / "server.crt"), str(tmp_path / "server.key")
    shutil.copy(pki["server"][0], live_cert)
    shutil.copy(pki["server"][1], live_key)
    d = daemons.start("--tls-cert", live_cert, "--tls-key", live_key, "--client-ca", pki["ca"].cert,
                      credentials=creds(pki["ca"].cert, pki["client"]))
    shutil.copy(expired_cert, live_cert)
    shutil.copy(expired_key, live_key)
    error = reload_refused(d, 1)
    assert "expired" in error and live_cert in error, error
    handshakes_keep_working(d, pki)
    assert d.stop() == 0
    code, out = daemons.run_to_exit("--tls-cert", expired_cert, "--tls-key", expired_key, timeout=8)
    assert code == 1 and "expired" in out and expired_cert in out, out
