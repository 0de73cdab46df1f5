#!/usr/bin/env bash
# Measures issue 10's target table on this machine: each Skiff figure and,
# where etcd can run the same load shape, etcd's in the same run. Prints one
# JSON line per measurement (`skiff-loadtest --json`) to stdout; progress
# goes to stderr. Needs `etcd` (Debian: etcd-server) and a release build:
#   cargo build --release -p skiff-cli -p skiff-loadtest
# Usage: scripts/bench-targets.sh [quick]   (quick: smaller sizes, shorter runs)
set -euo pipefail
cd "$(dirname "$0")/.."
L=target/release/skiff-loadtest
D=${DURATION:-10s}
NODES=5000; PODS=50000; DNODES=5000; DPODS=150000; LIST=150000
if [ "${1:-}" = quick ]; then D=3s; NODES=500; PODS=5000; DNODES=100; DPODS=3000; LIST=20000; fi

tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
peer=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
etcd --data-dir "$tmp/etcd" --listen-client-urls "http://127.0.0.1:$port" \
  --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer" \
  --quota-backend-bytes 8589934592 >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill $etcd_pid 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 2
E="etcd://127.0.0.1:$port"
run() { echo "== $*" >&2; "$L" "$@" --json; }

run watch --watchers 1000 --connections 32 --writers 32 --duration "$D"
run watch --watchers 1000 --connections 32 --writers 32 --duration "$D" --target "$E"
run watch --watchers 10000 --connections 32 --writers 32 --duration "$D"
run watch --watchers 10000 --connections 32 --writers 32 --duration "$D" --target "$E"
run watch --watchers 1000 --connections 32 --writers 32 --rate 100 --duration "$D"
run watch --watchers 1000 --connections 32 --writers 32 --rate 100 --duration "$D" --target "$E"
run watch --watchers 0 --writers 32 --duration "$D"
run watch --watchers 0 --writers 32 --duration "$D" --target "$E"
run watch --watchers 0 --writers 0 --duration 3s
run watch --watchers 10000 --connections 32 --writers 0 --duration 3s
run write --writers 256 --ops create --duration "$D"
run write --writers 256 --ops create --duration "$D" --target "$E"
run write --writers 256 --ops create --duration "$D" --storage etcd --etcd-endpoints "http://127.0.0.1:$port"
run list --objects "$LIST" --lists 10
run scheduler --nodes "$NODES" --pods "$PODS"
run density --nodes "$DNODES" --pods "$DPODS"
