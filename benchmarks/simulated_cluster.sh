#!/usr/bin/env bash
# benchmarks.aggregation across nodes, on one Linux machine: a Ray head (the driver's node, no CPUs for
# workers) and NODES one-CPU Ray nodes, each in its own network namespace on a bridge, each behind a link
# shaped to RATE in each direction (tc tbf). On one machine without this every transfer is a memory copy,
# and the driver's link, which all-reduce is there to relieve, does not exist. Removes everything on exit.
# Needs root, iproute2 (ip, tc) and the project's virtual environment.
#
#   bash benchmarks/simulated_cluster.sh [NODES=8] [RATE=1gbit] [benchmarks.aggregation options]
#   bash benchmarks/simulated_cluster.sh 8 1gbit --workers 2 4 8 --steps 5
set -euo pipefail
NODES=${1:-8}
RATE=${2:-1gbit}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
RAY="$(dirname "$PYTHON")/ray"
NET=10.77.0  # head .1, nodes .2 onwards
[ "$(id -u)" = 0 ] || { echo "simulated_cluster.sh: needs root (network namespaces and tc)" >&2; exit 1; }
! ip link show msim0 >/dev/null 2>&1 || { echo "simulated_cluster.sh: bridge msim0 exists: another run is active, or remove it" >&2; exit 1; }

# every Ray process here, in whichever namespace, authenticates with this run's token
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')"
export RAY_USAGE_STATS_ENABLED=0 GLOO_SOCKET_IFNAME=eth1  # gloo's ring runs over the shaped link
NAMESPACES=(msim-head $(for i in $(seq 1 "$NODES"); do echo "msim-$i"; done))
SESSION=$(mktemp -d /tmp/msim.XXXXXX)  # Ray's logs and address file, so a later ray.init() here finds no stale cluster

cleanup() {
    for ns in "${NAMESPACES[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    sleep 2
    for ns in "${NAMESPACES[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
        ip link del "$ns" 2>/dev/null || true
    done
    ip link del msim0 2>/dev/null || true
    rm -rf "$SESSION"
}
trap cleanup EXIT

ip link add msim0 type bridge
ip link set msim0 up
for i in "${!NAMESPACES[@]}"; do
    ns=${NAMESPACES[$i]}
    ip netns add "$ns"
    ip link add "$ns" type veth peer name eth1 netns "$ns"  # the bridge's end is named after the namespace
    ip link set "$ns" master msim0 up
    ip -n "$ns" addr add "$NET.$((i + 1))/24" dev eth1
    ip -n "$ns" link set eth1 up
    ip -n "$ns" link set lo up
    tc qdisc add dev "$ns" root tbf rate "$RATE" burst 1mb latency 100ms  # into the node
    ip netns exec "$ns" tc qdisc add dev eth1 root tbf rate "$RATE" burst 1mb latency 100ms  # out of it
done

common=(--object-store-memory=500000000 --disable-usage-stats)
ip netns exec msim-head "$RAY" start --head --node-ip-address="$NET.1" --num-cpus=0 --include-dashboard=false --temp-dir="$SESSION" "${common[@]}" >/dev/null
for i in $(seq 1 "$NODES"); do
    ip netns exec "msim-$i" "$RAY" start --address="$NET.1:6379" --node-ip-address="$NET.$((i + 1))" --num-cpus=1 "${common[@]}" >/dev/null
done

echo "$NODES Ray nodes of 1 CPU and a head node (the driver), each behind its own $RATE link (each direction)"
ip netns exec msim-head env RAY_ADDRESS="$NET.1:6379" "$PYTHON" -m benchmarks.aggregation "$@"
