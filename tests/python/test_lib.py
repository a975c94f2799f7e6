"""The ctypes layer against include/afsm.h: symbols, constants, struct layouts, loading."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from ctypes import Structure
from pathlib import Path

import pytest

import afsm
from afsm import _lib, errors

from conftest import BINDING, ROOT

HEADER = (ROOT / "include" / "afsm.h").read_text()
PYTHON = "/usr/bin/python3"


def header_functions() -> set[str]:
    return set(re.findall(r"AFSM_API\s+[^;(]*?\b(afsm_\w+)\s*\(", HEADER))


def test_every_header_function_is_declared() -> None:
    """Every function of afsm.h is in the prototypes table, and nothing else is."""
    declared = set(_lib.PROTOTYPE_NAMES)
    assert len(header_functions()) >= 49
    assert header_functions() - declared == set(), "add these to _lib._PROTOTYPES"
    assert declared - header_functions() == set(), "declared but not in afsm.h"
    for name in declared:
        fn = getattr(_lib.lib, name)
        assert fn.argtypes is not None and fn.restype is not None or name == "afsm_version", name


@pytest.mark.skipif(shutil.which("nm") is None, reason="no nm (binutils)")
def test_library_exports_exactly_the_header_functions() -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", os.path.realpath(_lib.library_path)],
                         check=True, capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if " T afsm_" in line}
    assert exported == set(_lib.PROTOTYPE_NAMES)


def test_prototypes_follow_header_order() -> None:
    order = re.findall(r"AFSM_API\s+[^;(]*?\b(afsm_\w+)\s*\(", HEADER)
    assert list(_lib.PROTOTYPE_NAMES) == order


def test_every_header_struct_is_mirrored() -> None:
    structs = set(re.findall(r"typedef struct (afsm_\w+) \{", HEADER))
    assert structs == set(_lib.STRUCTS), "mirror these in _lib.STRUCTS"


def test_duration_bucket_bounds_match_header_comment() -> None:
    comment = re.search(r"session_duration_seconds upper bounds: ([^*]*?)\s*\*\s*([^*]*?)seconds, then \+Inf",
                        HEADER)
    assert comment
    numbers = re.findall(r"\d+", comment.group(1) + comment.group(2))
    assert tuple(float(n) for n in numbers) + (float("inf"),) == afsm.DURATION_BUCKET_BOUNDS
    assert len(afsm.DURATION_BUCKET_BOUNDS) == _lib.AFSM_DURATION_BUCKETS


def test_integer_constants_match_header() -> None:
    defines = dict(re.findall(r"#define\s+(AFSM_\w+)\s+\(?(0x[0-9a-fA-F]+|-?\d+)u?\)?\b", HEADER))
    enums = dict(re.findall(r"\b(AFSM_(?:STATE|EVENT)_\w+)\s*=\s*(\d+)", HEADER))
    checked = 0
    for name, text in {**defines, **enums}.items():
        if name.startswith("AFSM_VERSION") or not hasattr(_lib, name):
            continue
        assert getattr(_lib, name) == int(text, 0), name
        checked += 1
    assert checked >= 50
    assert {s.name: s.value for s in afsm.State} == {
        k[len("AFSM_STATE_"):]: int(v) for k, v in enums.items()
        if k.startswith("AFSM_STATE_") and k != "AFSM_STATE_ANY"
    }


def test_every_status_maps_to_its_exception() -> None:
    names = re.findall(r"#define\s+(AFSM_E\w+)\s+\((-\d+)\)", HEADER)
    assert len(names) >= 24
    for name, code in names:
        exc = errors.error_for(int(code))
        assert exc.status == int(code)
        assert exc.name == name
        assert type(exc) is not errors.AfsmError, f"{name} has no specific class"
        assert isinstance(exc, errors.AfsmError)
    unknown = errors.error_for(-999)
    assert type(unknown) is errors.AfsmError and unknown.name == "AFSM_UNKNOWN"
    assert errors.check(0) is None
    assert isinstance(errors.error_for(_lib.AFSM_EUUID), errors.InvalidArgument)
    assert isinstance(errors.error_for(_lib.AFSM_EUUID), ValueError)
    assert isinstance(errors.error_for(_lib.AFSM_ENOTFOUND), LookupError)
    assert isinstance(errors.error_for(_lib.AFSM_EREVOKED), errors.InvalidToken)


def test_python_enums_match_header() -> None:
    def c_enum(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: int(v) for k, v in re.findall(r"\b(" + prefix + r"\w+)\s*=\s*(\d+)", HEADER)}

    def c_defines(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: int(v) for k, v in re.findall(r"#define\s+(" + prefix + r"\w+)\s+(\d+)", HEADER)}

    assert {r.name: r.value for r in afsm.DeleteReason} == c_enum("AFSM_DELETE_")
    assert {r.name: r.value for r in afsm.TokenResult} == c_enum("AFSM_TOKEN_")
    assert {p.name: p.value for p in afsm.LimitPolicy} == c_defines("AFSM_LIMIT_")
    assert {lv.name: lv.value for lv in afsm.LogLevel} == c_defines("AFSM_LOG_")
    assert {t.name: t.value for t in afsm.EventType} == c_enum("AFSM_EVENT_")
    assert len(afsm.TokenResult) == _lib.AFSM_TOKEN_RESULT_COUNT
    assert len(afsm.DeleteReason) == _lib.AFSM_DELETE_REASON_COUNT


def test_library_version_matches_header() -> None:
    version = re.search(r'#define\s+AFSM_VERSION\s+"([^"]+)"', HEADER).group(1)  # type: ignore[union-attr]
    assert afsm.library_version() == version


def c_type_name(struct: type[Structure]) -> str:
    return struct.__name__


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_struct_layouts_match_c(tmp_path: Path) -> None:
    """sizeof, alignment and every field's offset and size, compared with the C compiler."""
    lines = []
    for name, struct in _lib.STRUCTS.items():
        lines.append(f'printf("{name} sizeof %zu\\n", sizeof({name}));')
        lines.append(f'printf("{name} alignof %zu\\n", _Alignof({name}));')
        for field, *_ in struct._fields_:
            lines.append(f'printf("{name}.{field} offset %zu\\n", offsetof({name}, {field}));')
            lines.append(
                f'printf("{name}.{field} size %zu\\n", sizeof((({name} *)0)->{field}));'
            )
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"afsm.h\"\nint main(void) {\n"
        + "\n".join(lines)
        + "\nreturn 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run(
        ["cc", "-std=c11", "-I", str(ROOT / "include"), str(source), "-o", str(exe)], check=True
    )
    expected = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    import ctypes

    actual = []
    for name, struct in _lib.STRUCTS.items():
        actual.append(f"{name} sizeof {ctypes.sizeof(struct)}")
        actual.append(f"{name} alignof {ctypes.alignment(struct)}")
        for field, *_ in struct._fields_:
            desc = getattr(struct, field)
            actual.append(f"{name}.{field} offset {desc.offset}")
            actual.append(f"{name}.{field} size {desc.size}")
    assert "\n".join(actual) == expected.strip()


def test_field_names_and_order_match_header() -> None:
    """Each Structure lists the same fields, in the same order, as its C typedef."""
    for name, struct in _lib.STRUCTS.items():
        body = re.search(r"typedef struct " + name + r" \{(.*?)\} " + name + ";", HEADER, re.S)
        assert body, name
        text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
        c_fields = re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*;", text)
        c_fields += []  # function pointers: (*name)
        fn_ptrs = re.findall(r"\(\*(\w+)\)", text)
        assert fn_ptrs == []
        assert [f for f, *_ in struct._fields_] == c_fields, name


def test_plain_python_loads_library_with_ctypes() -> None:
    path = os.path.abspath(_lib.library_path)
    code = textwrap.dedent(
        f"""
        import ctypes
        lib = ctypes.CDLL({path!r})
        lib.afsm_version.restype = ctypes.c_char_p
        lib.afsm_status_name.restype = ctypes.c_char_p
        print(lib.afsm_version().decode(), lib.afsm_status_name(-8).decode())
        """
    )
    out = subprocess.run([PYTHON, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == [afsm.library_version(), "AFSM_ENOTFOUND"]


def _run_import(env_extra: dict[str, str], pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AFSM_LIBRARY", "LD_LIBRARY_PATH")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(pythonpath)
    code = "import afsm; print(afsm.library_path())"
    return subprocess.run([PYTHON, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)


def test_env_var_wins(tmp_path: Path) -> None:
    path = os.path.abspath(_lib.library_path)
    out = _run_import({"AFSM_LIBRARY": path}, BINDING, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == path


def test_bad_env_var_is_an_error_naming_it(tmp_path: Path) -> None:
    out = _run_import({"AFSM_LIBRARY": str(tmp_path / "nope.so")}, BINDING, tmp_path)
    assert out.returncode != 0
    assert "LibraryNotFound" in out.stderr and "nope.so" in out.stderr


def test_build_tree_is_found(tmp_path: Path) -> None:
    """A package inside a tree with build/lib/libafsm.so.0 finds it without help."""
    pkg = tmp_path / "src" / "bindings" / "python"
    shutil.copytree(BINDING / "afsm", pkg / "afsm")
    (tmp_path / "src" / "build" / "lib").mkdir(parents=True)
    lib_copy = tmp_path / "src" / "build" / "lib" / "libafsm.so.0"
    shutil.copy(os.path.realpath(_lib.library_path), lib_copy)
    out = _run_import({}, pkg, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(lib_copy)


def test_not_found_names_every_place(tmp_path: Path) -> None:
    import ctypes.util

    if ctypes.util.find_library("afsm"):
        pytest.skip("libafsm is installed system-wide")
    pkg = tmp_path / "pkg"
    shutil.copytree(BINDING / "afsm", pkg / "afsm")
    out = _run_import({}, pkg, tmp_path)
    assert out.returncode != 0
    err = out.stderr
    assert "LibraryNotFound" in err and "AFSM_LIBRARY" in err
    assert str(pkg / "afsm" / "build" / "lib" / "libafsm.so.0") in err
    assert str(tmp_path / "build" / "lib" / "libafsm.so.0") in err
    assert "/build/lib/libafsm.so.0" in err
    assert "libafsm.so.0 (installed SONAME)" in err


def test_uuid7_is_increasing_and_version_7() -> None:
    ids = [afsm.uuid7() for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert all(u.version == 7 for u in ids)


def test_parse_helpers() -> None:
    u = afsm.uuid7()
    assert afsm.parse_uuid(str(u).upper()) == u
    with pytest.raises(afsm.InvalidUUID):
        afsm.parse_uuid("{" + str(u) + "}")
    assert str(afsm.parse_ip("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(afsm.parse_ip("2001:DB8::1")) == "2001:db8::1"
    with pytest.raises(afsm.InvalidIP):
        afsm.parse_ip("fe80::1%eth0")
    with pytest.raises(TypeError):
        afsm.parse_uuid(123)  # type: ignore[arg-type]
    assert sys.version_info >= (3, 10)


def test_pip_install_offline(tmp_path: Path) -> None:
    """`pip install ./bindings/python` needs no network (pip --no-index proves it)."""
    venv = tmp_path / "venv"
    made = subprocess.run([PYTHON, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0 or not (venv / "bin" / "pip").exists():
        pytest.skip("python3-venv with pip is not available: " + made.stderr[-200:])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_NO_INDEX"] = "1"
    # Build from a copy, so no build artefacts land in the source tree.
    src = tmp_path / "src"
    shutil.copytree(BINDING, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    out = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", str(src)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    env["AFSM_LIBRARY"] = os.path.abspath(_lib.library_path)
    code = ("import afsm, pathlib; print(afsm.library_version()); "
            "print(pathlib.Path(afsm.__file__).with_name('py.typed').exists())")
    run = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [afsm.library_version(), "True"]
