#!/usr/bin/env bash
# Controller-manager benchmark end to end on this machine: builds skiff in release mode, starts
# 3 store members, 1 API server, 100 simulated nodes (skiff node-sim), 1 scheduler and 1
# controller manager on loopback (ports 22379-22384, 26443, 20259, 20257), runs
# `skiff bench controllers` with the given flags, then stops what it started.
#   ./scripts/bench-controllers.sh --replicas 1000 --out docs/benchmarks --name controllers-$(date +%F)
# NODES=N changes the number of simulated nodes (110 pods each). See README "Benchmarks". The
# processes' logs stay in the printed work dir on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-controllers
# shellcheck source=lib/loopback-cluster.sh
source scripts/lib/loopback-cluster.sh
start_apiserver apiserver.log
"$skiff" node-sim --kubeconfig "$work/kubeconfig" --nodes "${NODES:-100}" --pod-cidr 10.32.0.0/14 \
  > "$work/node-sim.log" 2>&1 &
node_sim=$!
pids+=($node_sim)
"$skiff" scheduler --kubeconfig "$work/kubeconfig" --bind-address 127.0.0.1 --secure-port 20259 \
  > "$work/scheduler.log" 2>&1 &
pids+=($!)
"$skiff" controller-manager --kubeconfig "$work/kubeconfig" --bind-address 127.0.0.1 --secure-port 20257 \
  > "$work/controller-manager.log" 2>&1 &
pids+=($!)
# The benchmark waits for every simulated node to be Ready (and refuses if they cannot hold the
# Deployment at the rolling update's peak).
"$skiff" bench controllers --kubeconfig "$work/kubeconfig" --store-endpoints "$store_endpoints" \
  --min-nodes "${NODES:-100}" \
  --scheduler-endpoints 127.0.0.1:20259 --controller-manager-endpoints 127.0.0.1:20257 \
  --node-sim-pid "$node_sim" "$@"
