#!/usr/bin/env bash
# Measures issue 19's table: watch delivery (memory per idle watch, fan-out,
# write→event latency) and creates/s, on raw etcd, Skiff on embedded
# storage and Skiff on etcd (one member and three), every row in one run.
# etcd and the API server are pinned to core 0, the load generator to core 1.
# With BASE_SKIFF=/path/to/an/older/skiff the Skiff rows run on that binary
# too (rows then carry "server": "base"), for a before/after in the same run;
# with MULTIPLEXED=1 each Skiff watch row is measured again with the
# watches on multiplexed streams, one per connection ("server": "…/mux").
# Prints one JSON line per measurement to stdout; progress goes to stderr.
# Needs `etcd` (Debian: etcd-server), `taskset` (util-linux) and a release build:
#   cargo build --release -p skiff-cli -p skiff-loadtest
# Usage: scripts/bench-delivery.sh [quick]   (DURATION=8s by default; quick: 2s)
set -euo pipefail
cd "$(dirname "$0")/.."
L=target/release/skiff-loadtest
D=${DURATION:-8s}
if [ "${1:-}" = quick ]; then D=2s; fi
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKENDS=${BACKENDS:-"raw1 embedded on1 raw3 on3"}

# One etcd member and a cluster of three, on the server's core.
# shellcheck source=scripts/bench-etcd.sh
source scripts/bench-etcd.sh

# run LABEL ARGS…: one measurement, tagged with the server binary it used.
run() {
  local label=$1; shift
  echo "== [$label] $*" >&2
  taskset -c "$LOAD_CPU" "$L" "$@" --server-cpus "$SERVER_CPU" --json | sed "s|^{|{\"server\":\"$label\",|"
}
servers() { # ARGS…: the measurement on this build, on BASE_SKIFF if set, and
  # with MULTIPLEXED=1 a watch again with its watches on multiplexed streams
  run "$backend/new" "$@"
  if [ -n "${BASE_SKIFF:-}" ]; then SKIFF_BIN=$BASE_SKIFF run "$backend/base" "$@"; fi
  if [ -n "${MULTIPLEXED:-}" ] && [ "$1" = watch ]; then run "$backend/mux" "$@" --multiplexed; fi
}

for backend in $BACKENDS; do
  case $backend in
    raw1) b="--target etcd://127.0.0.1:$c1 --target-pid $single_pid"; each=run ;;
    raw3) b="--target etcd://${endpoints3[0]#http://} --target-pid $m0_pid"; each=run ;;
    on1) b="--storage etcd --etcd-endpoints $E1"; each=servers ;;
    on3) b="--storage etcd --etcd-endpoints $E3"; each=servers ;;
    embedded) b=""; each=servers ;;
  esac
  # shellcheck disable=SC2086
  {
    if [ "$each" = run ]; then each="run $backend"; fi
    $each watch --idle --watchers 10000 --connections 32 $b
    $each watch --watchers 1000 --connections 32 --writers 32 --duration "$D" $b
    $each watch --watchers 10000 --connections 32 --writers 32 --duration "$D" $b
    $each watch --watchers 1000 --connections 32 --writers 32 --rate 100 --duration "$D" $b
    $each watch --watchers 100 --connections 32 --writers 32 --rate 100 --duration "$D" $b
    case $backend in raw*) ;; *)
      $each write --writers 256 --ops create --duration "$D" $b ;;
    esac
  }
done
