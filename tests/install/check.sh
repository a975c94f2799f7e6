#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds and runs a
# consumer twice: with pkg-config and with CMake's find_package(afsm).
# Usage: check.sh BUILD_DIR
set -euo pipefail
build=$1
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(find "$prefix" -name 'libafsm.so.0' -printf '%h\n' | head -n 1)
export LD_LIBRARY_PATH="$libdir"

# pkg-config
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -o "$prefix/consumer-pc" "$here/consumer.c" $(pkg-config --cflags --libs afsm)
"$prefix/consumer-pc"

# find_package
cmake -S "$here" -B "$prefix/consumer-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$prefix/consumer-build" >/dev/null
"$prefix/consumer-build/consumer"
echo "installed package works with pkg-config and find_package"
