#!/usr/bin/env bash
# Scheduler benchmark end to end on this machine: builds skiff in release mode, starts 3 store
# members, 1 API server and 1 scheduler on loopback (ports 22379-22384, 26443, 20259), runs
# `skiff bench scheduler` with the given flags, then stops what it started.
#   ./scripts/bench-scheduler.sh --nodes 1000 --pods 10000 --profile basic,affinity,spread \
#     --out docs/benchmarks --name scheduler-$(date +%F)
# See README "Benchmarks". The processes' logs stay in the printed work dir on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p skiff
skiff="$target/release/skiff"
work=$(mktemp -d -t skiff-bench-scheduler.XXXXXX)
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -eq 0 ]]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT

cluster=a=http://127.0.0.1:22380,b=http://127.0.0.1:22382,c=http://127.0.0.1:22384
for member in a:22379:22380 b:22381:22382 c:22383:22384; do
  IFS=: read -r name client peer <<< "$member"
  "$skiff" store --name "$name" --data-dir "$work/$name.skiff" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-token bench-scheduler > "$work/$name.log" 2>&1 &
  pids+=($!)
done
endpoints=http://127.0.0.1:22379,http://127.0.0.1:22381,http://127.0.0.1:22383
"$skiff" apiserver --etcd-servers "$endpoints" --bind-address 127.0.0.1 --secure-port 26443 \
  --cert-dir "$work/certs" --write-kubeconfig "$work/kubeconfig" > "$work/apiserver.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
  [[ -s "$work/kubeconfig" ]] && curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:26443/readyz | grep -qE '200|401' && break
  sleep 0.5
done
"$skiff" scheduler --kubeconfig "$work/kubeconfig" --bind-address 127.0.0.1 --secure-port 20259 \
  > "$work/scheduler.log" 2>&1 &
pids+=($!)
"$skiff" bench scheduler --kubeconfig "$work/kubeconfig" \
  --store-endpoints 127.0.0.1:22379,127.0.0.1:22381,127.0.0.1:22383 \
  --scheduler-endpoints 127.0.0.1:20259 "$@"
