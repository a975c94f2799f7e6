#!/usr/bin/env bash
# tools/udp-gateway/bench.sh [--quick | --micro]: builds Release into build-bench (the
# tree bench/run uses) and runs udp-gateway's three modes side by side at
# 1,000 and 100,000 connections, plus the PacketPinned micro-benchmark;
# writes tools/udp-gateway/RESULTS.md (bench.py says how). About 4 minutes
# on 2 cores; --quick: one short run per cell, for trying it out; --micro:
# only the micro-benchmark, rewriting RESULTS.md's micro section.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$root/build-bench"
case "${1:-}" in
--quick | --micro | "") ;;
*) echo "usage: tools/udp-gateway/bench.sh [--quick | --micro]" >&2; exit 2 ;;
esac
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DAFSM_BUILD_BENCH=ON -DAFSM_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target udp-gateway udp-load afsm_bench >/dev/null
exec /usr/bin/python3 "$here/bench.py" "$build" "$@"
