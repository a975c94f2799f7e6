"""Test certificates made with the openssl command line (EC P-256: quick to make).

A CertAuthority signs server certificates (SAN localhost and 127.0.0.1) and client
certificates; `openssl ca` gives the expired one its dates in the past, which
`openssl x509 -req` cannot do.
"""
from __future__ import annotations

import os
import subprocess
from typing import Tuple

CA_CONFIG = """[ ca ]
default_ca = d
[ d ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/issued
serial = {dir}/serial
default_md = sha256
policy = p
unique_subject = no
copy_extensions = copy
[ p ]
commonName = supplied
"""


def _run(*args: str) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class CertAuthority:
    """A self-signed CA in directory `dir`; issue() writes NAME.crt and NAME.key there."""

    def __init__(self, dir: str, name: str) -> None:
        self.dir = dir
        self.name = name
        os.makedirs(os.path.join(dir, "issued"), exist_ok=True)
        self.cert = os.path.join(dir, "ca.crt")
        self.key = os.path.join(dir, "ca.key")
        _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", self.key, "-out", self.cert, "-subj", "/CN=" + name, "-days", "2")
        open(os.path.join(dir, "index.txt"), "w").close()
        with open(os.path.join(dir, "serial"), "w") as f:
            f.write("1000\n")
        self.config = os.path.join(dir, "ca.cnf")
        with open(self.config, "w") as f:
            f.write(CA_CONFIG.format(dir=dir))

    def issue(self, name: str, server: bool = False, expired: bool = False) -> Tuple[str, str]:
        """Returns (cert path, key path) of a new certificate with CN=name."""
        crt = os.path.join(self.dir, name + ".crt")
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        req = ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-keyout", key, "-out", csr, "-subj", "/CN=" + name]
        if server:
            req += ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        _run(*req)
        if expired:
            dates = ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]
        else:
            dates = ["-days", "2"]
        _run("openssl", "ca", "-config", self.config, "-batch", "-notext", "-cert", self.cert, "-keyfile", self.key,
             "-in", csr, "-out", crt, *dates)
        return crt, key
