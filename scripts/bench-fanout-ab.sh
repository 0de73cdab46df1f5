#!/usr/bin/env bash
# Fan-out to WATCHERS (default 1,000) watchers with 32 writers, on raw etcd
# and on each API server binary named in BINS (on STORAGE: embedded, on1
# or on3 etcd members; raw etcd with as many members), alternating,
# ROUNDS times (default 3): an A/B of server builds in one run on a noisy
# machine. etcd and the API server are pinned to core 0, the load generator
# to core 1. Prints one JSON line per measurement ("row": raw or the
# binary's file name, with ":multiplexed" for those watches); progress goes
# to stderr. MODES="plain multiplexed" measures each binary both ways
# (default plain: a stream per watch).
# Needs `etcd`, `taskset` and release builds:
#   BINS="/path/to/skiff-before /path/to/skiff-after" scripts/bench-fanout-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
L=${L:-target/release/skiff-loadtest}
D=${DURATION:-8s}
W=${WATCHERS:-1000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
: "${BINS:?name the skiff binaries to compare in BINS}"
# shellcheck source=scripts/bench-etcd.sh
source scripts/bench-etcd.sh
row() { # LABEL ARGS…
  local label=$1; shift
  echo "== [$label] $*" >&2
  taskset -c "$LOAD_CPU" "$L" watch --watchers "$W" --connections 32 --writers 32 \
    --duration "$D" --server-cpus "$SERVER_CPU" --json "$@" | sed "s|^{|{\"row\":\"$label\",|"
}
# STORAGE: embedded (default), on1 or on3 (the servers on one or three etcd
# members; raw etcd then has as many members).
case ${STORAGE:-embedded} in
  embedded) raw=(--target "etcd://127.0.0.1:$c1" --target-pid "$single_pid"); storage=() ;;
  on1) raw=(--target "etcd://127.0.0.1:$c1" --target-pid "$single_pid"); storage=(--storage etcd --etcd-endpoints "$E1") ;;
  on3) raw=(--target "etcd://${endpoints3[0]#http://}" --target-pid "$m0_pid"); storage=(--storage etcd --etcd-endpoints "$E3") ;;
  *) echo "STORAGE is embedded, on1 or on3" >&2; exit 2 ;;
esac
for _ in $(seq "${ROUNDS:-3}"); do
  row raw "${raw[@]}"
  for b in $BINS; do
    for mode in ${MODES:-plain}; do
      case $mode in
        plain) SKIFF_BIN=$b row "$(basename "$b")" "${storage[@]}" ;;
        multiplexed) SKIFF_BIN=$b row "$(basename "$b"):multiplexed" "${storage[@]}" --multiplexed ;;
        *) echo "MODES are plain and multiplexed" >&2; exit 2 ;;
      esac
    done
  done
done
