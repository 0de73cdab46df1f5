# Sourced by the bench scripts: starts one etcd member and a cluster of
# three, every member pinned to $SERVER_CPU, in a temporary directory that
# goes (with the members) when the script exits. Sets E1 (the member's
# endpoint), c1 (its client port), single_pid, endpoints3 (the cluster's
# endpoints), E3 (them comma-separated) and m0_pid (the first member's pid).
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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
single_pid=${pids[-1]}
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
  if [ "$i" = 0 ]; then m0_pid=${pids[-1]}; fi
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
