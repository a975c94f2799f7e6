#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then, from directories
# outside the checkout, uses it as people do:
#   C: a consumer built with pkg-config and with CMake's find_package(afsm);
#   Python: `import afsm` with only PYTHONPATH set (no AFSM_LIBRARY, no
#     LD_LIBRARY_PATH): the package finds the library it was installed with;
#   Go: a program whose go.mod replaces afsm.dev/afsm by the installed
#     sources, built plainly (rpath to the installed library) and with
#     -tags afsm_pkgconfig; both must load the installed libafsm.
# Usage: check.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(mktemp -d)
trap 'chmod -R u+w "$prefix" 2>/dev/null; rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(find "$prefix" -name 'libafsm.so.0' -printf '%h\n' | head -n 1)

# C: pkg-config, then find_package
(
  export LD_LIBRARY_PATH="$libdir" PKG_CONFIG_PATH="$libdir/pkgconfig"
  cc -o "$prefix/consumer-pc" "$here/consumer.c" $(pkg-config --cflags --libs afsm)
  "$prefix/consumer-pc"
  cmake -S "$here" -B "$prefix/consumer-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build "$prefix/consumer-build" >/dev/null
  "$prefix/consumer-build/consumer"
)
echo "C: installed package works with pkg-config and find_package"

# Python
pydir=$(dirname "$(find "$prefix" -path '*-packages/afsm/__init__.py' | head -n 1)")
pydir=$(dirname "$pydir")
mkdir "$prefix/py" && cd "$prefix/py"
env -u AFSM_LIBRARY -u LD_LIBRARY_PATH PYTHONPATH="$pydir" PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 - "$prefix" <<'PY'
import os, sys
import afsm
prefix = os.path.realpath(sys.argv[1])
loaded = os.path.realpath(afsm._lib.library_path)
assert afsm.__file__.startswith(prefix), afsm.__file__
assert loaded.startswith(prefix), f"loaded {loaded}, not the installed library"
with afsm.Engine() as engine:
    session, token = engine.create_session("user123", "192.168.1.100", 54321)
    assert engine.validate_token(token).id == session.id
    try:
        engine.create_session("", "192.168.1.100", 1)
    except afsm.InvalidArgument as exc:
        assert exc.detail == "user_id: 0 bytes, must be 1..256", exc.detail
print(f"Python: import afsm from {os.getcwd()} loaded {loaded}")
PY

# Go
if ! command -v go >/dev/null; then
  echo "Go: no go toolchain, skipped"
  exit 0
fi
export GOCACHE="${GOCACHE:-$build/go-cache}" GOPATH="${GOPATH:-$build/go-path}" GOPROXY=off GOFLAGS=-mod=mod
gomod="$prefix/share/afsm/go"
mkdir "$prefix/goapp" && cd "$prefix/goapp"
cp "$here/go/main.go" .
cat >go.mod <<MOD
module example.com/consumer

go 1.19

require afsm.dev/afsm v0.0.0

replace afsm.dev/afsm => $gomod
MOD
# The libafsm a binary loads, resolved (ldd shows the rpath unnormalised).
loads() { realpath "$(ldd "$1" | awk '$1 == "libafsm.so.0" {print $3}')"; }
want=$(realpath "$libdir/libafsm.so.0")
go build -o consumer-rpath .
env -u LD_LIBRARY_PATH ./consumer-rpath
[ "$(env -u LD_LIBRARY_PATH bash -c "$(declare -f loads); loads ./consumer-rpath")" = "$want" ] ||
  { echo "Go: consumer-rpath does not load $want"; exit 1; }
PKG_CONFIG_PATH="$libdir/pkgconfig" go build -tags afsm_pkgconfig -o consumer-pc .
LD_LIBRARY_PATH="$libdir" ./consumer-pc
[ "$(LD_LIBRARY_PATH="$libdir" bash -c "$(declare -f loads); loads ./consumer-pc")" = "$want" ] ||
  { echo "Go: consumer-pc does not load $want"; exit 1; }
echo "Go: a program outside the repository links the installed libafsm (rpath and pkg-config)"
