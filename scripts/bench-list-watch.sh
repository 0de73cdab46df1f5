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

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One etcd member, and a cluster of three, every member on the server's core.
start_etcd() { # name data client peer initial-cluster token
  taskset -c "$SERVER_CPU" etcd --name "$1" --data-dir "$2" \
    --listen-client-urls "http://127.0.0.1:$3" --advertise-client-urls "http://127.0.0.1:$3" \
    --listen-peer-urls "http://127.0.0.1:$4" --initial-advertise-peer-urls "http://127.0.0.1:$4" \
    --initial-cluster "$5" --initial-cluster-state new --initial-cluster-token "$6" \
    --quota-backend-bytes 8589934592 --log-level error --logger zap >"$tmp/$1.log" 2>&1 &
  pids+=($!)
}
c1=$(free_port); p1=$(free_port)
start_etcd single "$tmp/single" "$c1" "$p1" "single=http://127.0.0.1:$p1" "single-$$"
cluster=(); initial=()
for i in 0 1 2; do
  c=$(free_port); p=$(free_port)
  cluster+=("$c:$p"); initial+=("m$i=http://127.0.0.1:$p")
done
init=$(IFS=,; echo "${initial[*]}")
endpoints3=()
for i in 0 1 2; do
  c=${cluster[$i]%%:*}; p=${cluster[$i]##*:}
  start_etcd "m$i" "$tmp/m$i" "$c" "$p" "$init" "three-$$"
  endpoints3+=("http://127.0.0.1:$c")
done
E1="http://127.0.0.1:$c1"
E3=$(IFS=,; echo "${endpoints3[*]}")
healthy() {
  python3 -c 'import sys,urllib.request; sys.exit(0 if b"true" in urllib.request.urlopen(sys.argv[1]+"/health",timeout=1).read() else 1)' "$1" 2>/dev/null
}
for e in "$E1" "${endpoints3[@]}"; do
  for _ in $(seq 1 100); do healthy "$e" && break; sleep 0.1; done
  healthy "$e" || { echo "etcd at $e is not healthy; see $tmp" >&2; exit 1; }
done

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
