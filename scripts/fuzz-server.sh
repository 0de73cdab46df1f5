#!/usr/bin/env bash
# Runs the server-level fuzzer (`skiff-loadtest fuzz`) against an API server
# with RBAC on each storage backend in turn: embedded, one etcd member, and a
# three-member etcd cluster. The server (and etcd) run pinned to core 0, the
# fuzzer to core 1. Each run prints its table of codes per method; the
# script fails if any run found a violation.
# Needs `etcd` (Debian: etcd-server), `taskset` and a release build:
#   cargo build --release -p skiff-cli -p skiff-loadtest
# Usage: scripts/fuzz-server.sh [DURATION per backend, default 10m] [SEED]
#        BACKENDS="etcd1 etcd3" scripts/fuzz-server.sh 5m   # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
L=target/release/skiff-loadtest
D=${1:-10m}
SEED=${2:-$(date +%s)}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
export SKIFF_BIN=${SKIFF_BIN:-target/release/skiff}

# shellcheck source=scripts/bench-etcd.sh
source scripts/bench-etcd.sh

status=0
for backend in ${BACKENDS:-embedded etcd1 etcd3}; do
  case $backend in
    embedded) storage=(--storage embedded) ;;
    etcd1) storage=(--storage etcd --etcd-endpoints "$E1") ;;
    etcd3) storage=(--storage etcd --etcd-endpoints "$E3") ;;
  esac
  echo "== $backend: fuzz --duration $D --seed $SEED" >&2
  taskset -c "$LOAD_CPU" "$L" fuzz --duration "$D" --seed "$SEED" \
    --server-cpus "$SERVER_CPU" "${storage[@]}" || status=1
done
exit $status
