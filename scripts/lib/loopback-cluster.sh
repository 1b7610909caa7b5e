# Sourced by the benchmark scripts: builds skiff in release mode, makes a work dir, starts 3
# store members on loopback (client ports 22379/22381/22383, peer ports 22380/22382/22384) and
# offers start_apiserver (port 26443). Everything started is stopped by PID on exit; the work
# dir (logs) is kept on failure. Sets: skiff, work, pids, endpoints, store_endpoints.
set -euo pipefail
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p skiff
skiff="$target/release/skiff"
work=$(mktemp -d -t "skiff-${BENCH_NAME:-bench}.XXXXXX")
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
    --initial-cluster "$cluster" --initial-cluster-token "${BENCH_NAME:-bench}" > "$work/$name.log" 2>&1 &
  pids+=($!)
done
endpoints=http://127.0.0.1:22379,http://127.0.0.1:22381,http://127.0.0.1:22383
store_endpoints=127.0.0.1:22379,127.0.0.1:22381,127.0.0.1:22383

# start_apiserver LOG [FLAG...]: an API server on 26443 writing $work/kubeconfig; waits until it
# answers and sets $api to its PID.
start_apiserver() {
  local log="$1"
  shift
  rm -f "$work/kubeconfig"
  "$skiff" apiserver --etcd-servers "$endpoints" --bind-address 127.0.0.1 --secure-port 26443 \
    --cert-dir "$work/certs" --write-kubeconfig "$work/kubeconfig" "$@" > "$work/$log" 2>&1 &
  api=$!
  pids+=($api)
  for _ in $(seq 120); do
    [[ -s "$work/kubeconfig" ]] && curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:26443/readyz | grep -qE '200|401' && return 0
    sleep 0.5
  done
  echo "the API server did not start: $work/$log" >&2
  return 1
}
