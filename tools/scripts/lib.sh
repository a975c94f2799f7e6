# Sourced by the scripts beside it: package installation and the build.
# Debian bookworm, run as root (or with sudo available).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
JOBS=$(nproc)

# Packages the build and the main job need (the etcd store: libcurl, json-c;
# the daemon: grpc++, protoc and its plugins, libmicrohttpd, zlib, OpenSSL to
# check TLS files; sessionctl: python3-grpcio, python3-protobuf).
BUILD_PACKAGES=(build-essential cmake pkg-config libck-dev libjemalloc-dev libsodium-dev
  libcurl4-openssl-dev libjson-c-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libmicrohttpd-dev zlib1g-dev libssl-dev python3 python3-grpcio python3-protobuf)
# What the measurements need (bench/run, bench/etcd/run,
# tools/sessiond/loadgen/goals): google-benchmark, Redis and hiredis for the
# Redis baseline, matplotlib for the plots, etcd, h2load (nghttp2-client) for
# the load generator's cross-check, openssl for its TLS certificates.
BENCH_PACKAGES=(libbenchmark-dev libhiredis-dev redis-server python3-matplotlib etcd-server etcd-client
  nghttp2-client openssl)
# And what every test needs on top (sanitizer runtimes come with gcc;
# clang-14 and its runtime are for the libFuzzer targets; systemd brings
# systemd-analyze for the unit, ssl-cert the group the unit reads TLS keys
# through), with the measurements' packages: the tests run the benchmark's
# smoke mode, the etcd store's tests need etcd, openssl makes the test
# certificates.
TEST_PACKAGES=(git binutils abigail-tools libcmocka-dev clang-14 libclang-rt-14-dev clang-format-14 golang-go python3 python3-pytest
  python3-hypothesis prometheus systemd ssl-cert valgrind "${BENCH_PACKAGES[@]}")

# Installs whichever of the given Debian packages are missing.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# build_tree DIR [cmake args...]: configures and builds one tree.
build_tree() {
  local dir=$1
  shift
  cmake -S "$ROOT" -B "$ROOT/$dir" "$@" >/dev/null
  cmake --build "$ROOT/$dir" -j "$JOBS"
}
