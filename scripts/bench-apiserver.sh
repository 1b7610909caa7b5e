#!/usr/bin/env bash
# API server read paths, with and without the watch cache, on this machine: builds skiff in
# release mode, starts 3 store members on loopback (ports 22379-22384), then runs
# `skiff bench apiserver` twice against 1 API server (port 26443): once with the watch cache
# (the default) and once with --watch-cache=false, as two cases of one report.
#   ./scripts/bench-apiserver.sh --objects 10000 --watchers 1000 --writes 100 \
#     --out docs/benchmarks --name apiserver-$(date +%F)
# See README "Benchmarks". The processes' logs stay in the printed work dir on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p skiff
skiff="$target/release/skiff"
work=$(mktemp -d -t skiff-bench-apiserver.XXXXXX)
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -eq 0 ]]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT
# A thousand watches are a thousand connections on each side.
ulimit -n "$(ulimit -Hn)"

cluster=a=http://127.0.0.1:22380,b=http://127.0.0.1:22382,c=http://127.0.0.1:22384
for member in a:22379:22380 b:22381:22382 c:22383:22384; do
  IFS=: read -r name client peer <<< "$member"
  "$skiff" store --name "$name" --data-dir "$work/$name.skiff" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-token bench-apiserver > "$work/$name.log" 2>&1 &
  pids+=($!)
done
endpoints=http://127.0.0.1:22379,http://127.0.0.1:22381,http://127.0.0.1:22383

run_case() {
  local case="$1" cache="$2"
  shift 2
  rm -f "$work/kubeconfig"
  "$skiff" apiserver --etcd-servers "$endpoints" --bind-address 127.0.0.1 --secure-port 26443 \
    --cert-dir "$work/certs" --write-kubeconfig "$work/kubeconfig" --watch-cache="$cache" \
    > "$work/apiserver-$cache.log" 2>&1 &
  local api=$!
  pids+=($api)
  for _ in $(seq 120); do
    [[ -s "$work/kubeconfig" ]] && curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:26443/readyz | grep -qE '200|401' && break
    sleep 0.5
  done
  "$skiff" bench apiserver --kubeconfig "$work/kubeconfig" \
    --store-endpoints 127.0.0.1:22379,127.0.0.1:22381,127.0.0.1:22383 --case "$case" "$@"
  kill "$api"
  wait "$api" 2>/dev/null || true
}
run_case "watch cache" true "$@"
run_case "no watch cache" false "$@"
