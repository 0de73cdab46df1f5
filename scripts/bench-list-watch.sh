#!/usr/bin/env bash
# Measures issue 14's list-watch table: the same load on raw etcd, on Skiff
# over etcd (one member and three) and on Skiff's embedded storage, all in
# one run. etcd and the API server are pinned to core 0, the load generator
# to core 1, so server is compared with server. Prints one JSON line per
# measurement (`skiff-loadtest --json`) to stdout; progress goes to stderr.
# Needs `etcd` (Debian: etcd-server), `taskset` (util-linux) and a release build:
#   cargo build --release -p skiff-cli -p skiff-loadtest
# Usage: scripts/bench-list-watch.sh [quick]   (DURATION=8s by default; quick: 2s)
set -euo pipefail
cd "$(dirname "$0")/.."
L=target/release/skiff-loadtest
D=${DURATION:-8s}
if [ "${1:-}" = quick ]; then D=2s; fi
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

# One etcd member and a cluster of three, on the server's core.
# shellcheck source=scripts/bench-etcd.sh
source scripts/bench-etcd.sh

run() { echo "== $*" >&2; taskset -c "$LOAD_CPU" "$L" "$@" --server-cpus "$SERVER_CPU" --json; }
raw1="--target etcd://127.0.0.1:$c1"
raw3="--target etcd://${endpoints3[0]#http://}"
on1="--storage etcd --etcd-endpoints $E1"
on3="--storage etcd --etcd-endpoints $E3"

for backend in raw1 on1 embedded raw3 on3; do
  case $backend in
    raw1) b=$raw1 ;; on1) b=$on1 ;; raw3) b=$raw3 ;; on3) b=$on3 ;; embedded) b="" ;;
  esac
  # shellcheck disable=SC2086
  {
    run watch --watchers 1000 --connections 32 --writers 32 --duration "$D" $b
    run watch --watchers 1000 --connections 32 --writers 32 --rate 100 --duration "$D" $b
    run watch --watchers 0 --writers 32 --rate 100 --duration "$D" $b
    run write --writers 64 --ops create --duration "$D" $b
    # A consistent read on an idle server: the quorum read plus the wait for
    # the cache to reach that revision, next to an "any state" read.
    case $backend in raw*) ;; *) run list --objects 10 --lists 2000 $b ;; esac
  }
done
# What a Skiff create asks of etcd (a put-if-absent transaction), straight on etcd.
run write --writers 64 --ops create --duration "$D" --target "etcd-txn://127.0.0.1:$c1"
run write --writers 64 --ops create --duration "$D" --target "etcd-txn://${endpoints3[0]#http://}"
