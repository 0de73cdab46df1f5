#!/usr/bin/env bash
# A highly available cluster in one command, on loopback: 3 etcd members,
# 3 API servers, 2 schedulers and 2 controller managers (leader election),
# N nodes (kubelets, process runtime) and a service proxy. Runs in the foreground; Ctrl-C
# stops every process it started (by PID), and its state stays in --dir.
#
# Usage: scripts/ha-up.sh [--nodes N] [--dir DIR] [--port P]
#   --nodes N  kubelets to start (default 3)
#   --dir DIR  data, logs and the client config (default ~/.skiff/ha)
#   --port P   first API server port; the others are P+1, P+2 (default 6443);
#              etcd members listen on 2379, 2479, 2579 (peers +1)
# Then, in another terminal:
#   export SKIFF_CONFIG=~/.skiff/ha/config   # lists all three servers
#   skiff get nodes
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=3
dir="$HOME/.skiff/ha"
port=6443
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "ha-up: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done
scripts/install-deps.sh ha
cargo build --release -p skiff-cli
skiff="$PWD/target/release/skiff"
mkdir -p "$dir/logs"

pids=()
stop() {
  trap - EXIT INT TERM
  echo "ha-up: stopping ${#pids[@]} processes" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 2
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap stop EXIT INT TERM
start() { # name, command...
  local name=$1; shift
  "$@" >>"$dir/logs/$name.log" 2>&1 &
  pids+=($!)
  echo "ha-up: $name (pid $!, log $dir/logs/$name.log)" >&2
}
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "ha-up: $what did not come up; see $dir/logs" >&2
  exit 1
}

initial=""
endpoints=""
for i in 0 1 2; do
  client=$((2379 + 100 * i)); peer=$((client + 1))
  initial+="${initial:+,}m$i=http://127.0.0.1:$peer"
  endpoints+="${endpoints:+,}http://127.0.0.1:$client"
done
for i in 0 1 2; do
  client=$((2379 + 100 * i)); peer=$((client + 1))
  start "etcd-$i" etcd --name "m$i" --data-dir "$dir/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$initial" --initial-cluster-token skiff-ha --initial-cluster-state new \
    --pre-vote  # etcd 3.5's default: a member that was cut off does not force an election
done

servers=""
for i in 0 1 2; do
  addr="127.0.0.1:$((port + i))"
  servers+="${servers:+,}$addr"
  start "apiserver-$i" "$skiff" apiserver --insecure --listen "$addr" \
    --storage etcd --etcd-endpoints "$endpoints"
done
for i in 0 1 2; do
  wait_for "API server $i" "$skiff" --server "127.0.0.1:$((port + i))" get namespaces
done
printf 'servers:\n  - 127.0.0.1:%s\n  - 127.0.0.1:%s\n  - 127.0.0.1:%s\n' \
  "$port" "$((port + 1))" "$((port + 2))" >"$dir/config"

for i in 0 1; do
  start "scheduler-$i" "$skiff" --server "$servers" scheduler --identity "scheduler-$i"
  start "controller-manager-$i" "$skiff" --server "$servers" controller-manager \
    --identity "controller-manager-$i"
done
for i in $(seq 0 $((nodes - 1))); do
  start "node-$i" "$skiff" --server "$servers" kubelet --node-name "node-$i" \
    --runtime process --data-dir "$dir/node-$i" --node-ip 127.0.0.1 --listen 127.0.0.1:0
done
start proxy "$skiff" --server "$servers" proxy
wait_for "$nodes Ready nodes" bash -c \
  "[ \"\$('$skiff' --server '$servers' get nodes | grep -c ' Ready')\" -ge $nodes ]"

cat >&2 <<MSG
ha-up: the cluster is up: API servers $servers
  export SKIFF_CONFIG=$dir/config     # every command then uses all three
  skiff get nodes
  skiff apply -f examples/web.yaml
Kill any process above (kill -9 PID) to watch the others carry on. Ctrl-C stops them all.
MSG
wait
