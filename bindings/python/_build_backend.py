"""A minimal in-tree PEP 517/660 build backend (standard library only).

``pip install ./bindings/python`` must work offline. With setuptools as the
backend, pip's build isolation would first download setuptools from an index;
this backend needs nothing, so the isolated build environment stays empty.
It packs the ``afsm`` package and the metadata of ``pyproject.toml`` into a
pure-Python wheel (or an sdist, or an editable wheel pointing at this tree).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PACKAGE = "afsm"
TAG = "py3-none-any"


def _project() -> dict[str, Any]:
    with open(HERE / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _dist_name() -> str:
    p = _project()
    return f"{p['name'].replace('-', '_')}-{p['version']}"


def _metadata() -> str:
    p = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p.get('description', '')}",
        f"Requires-Python: {p.get('requires-python', '>=3')}",
    ]
    lines += [f"Classifier: {c}" for c in p.get("classifiers", [])]
    readme = HERE / p.get("readme", "README.md")
    if readme.exists():
        lines.append("Description-Content-Type: text/markdown")
        return "\n".join(lines) + "\n\n" + readme.read_text(encoding="utf-8")
    return "\n".join(lines) + "\n"


def _package_files() -> list[Path]:
    root = HERE / PACKAGE
    return sorted(
        path for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed")
    )


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(directory: str, files: dict[str, bytes]) -> str:
    dist = _dist_name()
    info = f"{dist}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = _metadata().encode()
    files[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: afsm-build-backend\nRoot-Is-Purelib: true\nTag: {TAG}\n"
    ).encode()
    files[f"{info}/top_level.txt"] = f"{PACKAGE}\n".encode()
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel_name = f"{dist}-{TAG}.whl"
    with zipfile.ZipFile(os.path.join(directory, wheel_name), "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return wheel_name


# ---- PEP 517 hooks -------------------------------------------------------------


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings: Any = None) -> list[str]:
    return []


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    return []


def build_wheel(wheel_directory: str, config_settings: Any = None,
                metadata_directory: str | None = None) -> str:
    files = {path.relative_to(HERE).as_posix(): path.read_bytes() for path in _package_files()}
    return _write_wheel(wheel_directory, files)


def build_editable(wheel_directory: str, config_settings: Any = None,
                   metadata_directory: str | None = None) -> str:
    return _write_wheel(wheel_directory, {f"_{PACKAGE}_editable.pth": f"{HERE}\n".encode()})


def build_sdist(sdist_directory: str, config_settings: Any = None) -> str:
    dist = _dist_name()
    name = f"{dist}.tar.gz"
    sources = [HERE / "pyproject.toml", HERE / "README.md", HERE / "_build_backend.py",
               HERE / "bench.py", *_package_files()]
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tar:
        for path in sources:
            if path.exists():
                tar.add(path, arcname=f"{dist}/{path.relative_to(HERE).as_posix()}")
        pkg_info = _metadata().encode()
        ti = tarfile.TarInfo(f"{dist}/PKG-INFO")
        ti.size = len(pkg_info)
        tar.addfile(ti, io.BytesIO(pkg_info))
    return name
