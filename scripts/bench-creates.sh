#!/usr/bin/env bash
# Measures issue 19's write figures: creates/s with 256 concurrent writers
# and no watchers, and writes/s (creates and deletes) with 1,000 watchers,
# on raw etcd (puts, and the create transaction a Skiff create asks of
# etcd), Skiff on embedded storage, and Skiff on etcd (one member and three),
# every row in one run. etcd and the API server are pinned to core 0, the
# load generator to core 1. With BASE_SKIFF=/path/to/an/older/skiff the
# Skiff rows run on that binary too ("server": "…/base").
# Prints one JSON line per measurement to stdout; progress goes to stderr.
# Needs `etcd` (Debian: etcd-server), `taskset` (util-linux) and a release build:
#   cargo build --release -p skiff-cli -p skiff-loadtest
# Usage: scripts/bench-creates.sh   (DURATION=8s by default)
set -euo pipefail
cd "$(dirname "$0")/.."
L=target/release/skiff-loadtest
D=${DURATION:-8s}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKENDS=${BACKENDS:-"raw1 embedded on1 raw3 on3"}

# shellcheck source=scripts/bench-etcd.sh
source scripts/bench-etcd.sh

run() { # LABEL ARGS…
  local label=$1; shift
  echo "== [$label] $*" >&2
  taskset -c "$LOAD_CPU" "$L" "$@" --server-cpus "$SERVER_CPU" --json | sed "s|^{|{\"server\":\"$label\",|"
}
servers() {
  run "$backend/new" "$@"
  if [ -n "${BASE_SKIFF:-}" ]; then SKIFF_BIN=$BASE_SKIFF run "$backend/base" "$@"; fi
}

for backend in $BACKENDS; do
  case $backend in
    raw1) hostport="127.0.0.1:$c1" ;;
    raw3) hostport="${endpoints3[0]#http://}" ;;
    on1) b="--storage etcd --etcd-endpoints $E1" ;;
    on3) b="--storage etcd --etcd-endpoints $E3" ;;
    embedded) b="" ;;
  esac
  case $backend in
    raw*)
      run "$backend" write --writers 256 --ops create --duration "$D" --target "etcd://$hostport"
      run "$backend/txn" write --writers 256 --ops create --duration "$D" --target "etcd-txn://$hostport"
      ;;
    *)
      # shellcheck disable=SC2086
      servers write --writers 256 --ops create --duration "$D" $b
      # shellcheck disable=SC2086
      servers watch --watchers 1000 --connections 32 --writers 256 --duration "$D" $b
      ;;
  esac
done
