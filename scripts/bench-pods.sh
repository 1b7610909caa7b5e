#!/usr/bin/env bash
# Node-agent benchmark end to end on this machine (as root: runc, CNI, overlay mounts): builds
# skiff in release mode, starts 3 store members and 1 API server on loopback (the ports of
# scripts/lib/loopback-cluster.sh), imports a busybox image built from the host's static
# busybox into a fresh agent root dir (`skiff images import`), starts one real
# `skiff node-agent` (bridge skb0, pods in 10.123.0.0/24), runs `skiff bench pods` with the
# given flags, then stops what it started and removes the bridge.
#   sudo ./scripts/bench-pods.sh --pods 100 --out docs/benchmarks --name pods-$(date +%F)
# Needs runc, containernetworking-plugins, busybox-static, umoci, skopeo (scripts/test.sh
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-pods
# shellcheck source=lib/loopback-cluster.sh
source scripts/lib/loopback-cluster.sh
cargo build --release -p skiff-node-agent --bin skiff-shim
shim="$target/release/skiff-shim"
start_apiserver apiserver.log
# The image: an OCI layout from the host's busybox, as a docker-archive, imported offline.
scripts/busybox-image.sh "$work/layout" 1.36 > /dev/null
skopeo copy --quiet "oci:$work/layout:1.36" "docker-archive:$work/busybox.tar:busybox:1.36"
"$skiff" images import "$work/busybox.tar" --root-dir "$work/agent"
agent_cleanup() {
  [[ -n "${agent:-}" ]] && { kill "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; }
  local runc_root="$work/agent/run/runtime/runc"
  for id in $(runc --root "$runc_root" list -q 2>/dev/null); do runc --root "$runc_root" delete --force "$id" || true; done
  grep " $work/agent" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
  for f in "$work"/agent/run/cni/sandboxes/*.json; do
    [[ -e "$f" ]] && ip netns del "skiff-$(basename "$f" .json)" 2>/dev/null || true
  done
  ip link del skb0 2>/dev/null || true
  # The agent removes each pod's cgroups; the --cgroup-root skeleton stays: remove it.
  for h in /sys/fs/cgroup/*/skiff-bench; do
    [[ -d "$h" ]] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}
trap 'agent_cleanup; cleanup' EXIT
"$skiff" node-agent --kubeconfig "$work/kubeconfig" --hostname-override bench-node \
  --node-ip 10.123.0.1 --pod-cidr 10.123.0.0/24 --cni-bridge skb0 --root-dir "$work/agent" \
  --pod-logs-dir "$work/pod-logs" --cgroup-root /skiff-bench --shim "$shim" \
  > "$work/agent.log" 2>&1 &
agent=$!
pids+=($agent)
for _ in $(seq 60); do
  "$skiff" --version > /dev/null
  KUBECONFIG="$work/kubeconfig" kubectl get node bench-node > /dev/null 2>&1 && break
  sleep 0.5
done
sleep 2
"$skiff" bench pods --kubeconfig "$work/kubeconfig" --node bench-node \
  --agent-pid "$agent" --agent-root-dir "$work/agent" "$@"
