"""The systemd unit: `systemd-analyze verify` finds nothing to say about it, its
hardening is in place, and `systemd-analyze security` rates it well.

verify exits 0 even for unknown keys and bad values (it only prints them), so any
output is a failure; a broken copy of the unit proves the check can fail. verify
also needs ExecStart's binary to exist: the copy under test runs the built one.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, SESSIOND

UNIT = os.path.join(ROOT, "tools", "sessiond", "systemd", "sessiond.service")


def analyze(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze not installed (Debian package systemd; tools/scripts/lib.sh lists it)")
    return subprocess.run(["systemd-analyze"] + list(args), capture_output=True, text=True, timeout=60)


def unit_copy(tmp_path, extra: str = "") -> str:
    with open(UNIT) as f:
        text = f.read().replace("/usr/local/bin/sessiond", SESSIOND)
    path = str(tmp_path / "sessiond.service")
    with open(path, "w") as f:
        f.write(text.replace("[Install]", extra + "\n[Install]"))
    return path


def test_unit_verifies_clean(tmp_path):
    p = analyze("verify", unit_copy(tmp_path))
    assert p.returncode == 0 and p.stdout.strip() == "" and p.stderr.strip() == "", p.stdout + p.stderr


def test_verify_catches_a_broken_unit(tmp_path):
    p = analyze("verify", unit_copy(tmp_path, "ProtectSystem=sometimes\nNoNewPrivilege=yes"))
    out = p.stdout + p.stderr
    assert "protect system value" in out and "Unknown key 'NoNewPrivilege'" in out, out


def test_unit_is_hardened(tmp_path):
    with open(UNIT) as f:
        lines = {ln.strip() for ln in f if "=" in ln and not ln.lstrip().startswith("#")}
    for want in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=sessiond",
                 "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert want in lines, want
    assert any("--snapshot ${STATE_DIRECTORY}/" in ln for ln in lines)
    p = analyze("security", "--offline=yes", unit_copy(tmp_path))
    m = re.search(r"Overall exposure level for sessiond\.service: ([0-9.]+)", p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0, p.stdout
