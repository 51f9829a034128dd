#!/usr/bin/env bash
# Multi-replica benchmark (issue 14): one redis-server and REPLICAS gateway processes on core 0,
# live-bench on core 1 placing connections on the replicas, then everything stopped. Reports, per
# round, deliveries, latency, CPU summed over every gateway and Redis, and Redis network bytes
# per delivery (INFO stats). Prints the JSON report on stdout.
#
#   bench/scale-out.sh                         # 4 replicas, 200 channels x 10, by channel
#   PLACEMENT=spread REPLICAS=2 CHANNELS=1 CONNECTIONS=1000 SENDERS=20 RATES=100000 bench/scale-out.sh
#
# PEER selects what runs the replicas: `gateway` (default, live-gateway), or the benchmark-only Node
# peer in bench/node-peer (the seed's layer on socket.io 4; `npm ci --prefix bench/node-peer` once)
# with the socket.io Redis adapter: `node-classic` (@socket.io/redis-adapter createAdapter) or
# `node-sharded` (createShardedAdapter, subscriptionMode "dynamic").
#
# Settings (environment): GATEWAY, BENCH (release binaries), REPLICAS (4), PLACEMENT (by-channel |
# spread), CONNECTIONS (2000), CHANNELS (200), SENDERS (200), RATES ("20000", space-separated
# deliveries/s, one round each), DURATION (10 s per round), REDIS_SERVER (redis-server),
# JSON_OUT (also write the report there), GATEWAY_CPUS (0), BENCH_CPUS (1), BASE_PORT (random; replicas
# use BASE_PORT+i, their admin ports BASE_PORT+50+i, Redis BASE_PORT+99),
# EXTRA_GATEWAY_ENV (e.g. "LIVE_WS_WRITE_COALESCE_MS=0").
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GATEWAY=${GATEWAY:-$root/target/release/live-gateway}
BENCH=${BENCH:-$root/target/release/live-bench}
REPLICAS=${REPLICAS:-4}
PLACEMENT=${PLACEMENT:-by-channel}
CONNECTIONS=${CONNECTIONS:-2000}
CHANNELS=${CHANNELS:-200}
SENDERS=${SENDERS:-200}
RATES=${RATES:-20000}
DURATION=${DURATION:-10}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
GATEWAY_CPUS=${GATEWAY_CPUS:-0}
BENCH_CPUS=${BENCH_CPUS:-1}
BASE_PORT=${BASE_PORT:-$((20000 + RANDOM % 20000))}
EXTRA_GATEWAY_ENV=${EXTRA_GATEWAY_ENV:-}
PEER=${PEER:-gateway}
export JWT_SECRET=${JWT_SECRET:-scale-out-bench-secret-0123456789abcdef}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # url, what
  for _ in $(seq 1 200); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$2 did not come up; logs in $work" >&2
  cat "$work"/*.log >&2
  exit 1
}

redis_port=$((BASE_PORT + 99))
taskset -c "$GATEWAY_CPUS" "$REDIS_SERVER" --port "$redis_port" --bind 127.0.0.1 --save '' \
  --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
redis_pid=$!
for _ in $(seq 1 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.05
done

printf 'rateLimits: {messagesPerMinute: 100000, giftsPerMinute: 100000}\n' >"$work/gateway.yaml"
# The bench opens hundreds of connections per replica from a few loopback addresses: lift the
# per-address caps of builds that have them (issue 11), as the other load scenarios do.
lift=()
if [ "$PEER" = gateway ] && "$GATEWAY" --help 2>/dev/null | grep -q -- --max-connections-per-ip; then
  lift=(--max-connections-per-ip 0 --max-packets-per-second 0)
fi
servers=()
server_pids=()
for i in $(seq 0 $((REPLICAS - 1))); do
  port=$((BASE_PORT + i))
  admin=$((BASE_PORT + 50 + i))
  case "$PEER" in
    gateway)
      # shellcheck disable=SC2086
      env REDIS_URL="redis://127.0.0.1:$redis_port" LIVE_REDIS_PREFIX=bench POD_NAME="gw-$i" $EXTRA_GATEWAY_ENV \
        taskset -c "$GATEWAY_CPUS" "$GATEWAY" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --config "$work/gateway.yaml" "${lift[@]}" >"$work/gw-$i.log" 2>&1 &
      ;;
    node-classic | node-sharded)
      env REDIS_URL="redis://127.0.0.1:$redis_port" PORT="$port" ADMIN_PORT="$admin" ADAPTER="${PEER#node-}" \
        taskset -c "$GATEWAY_CPUS" node "$root/bench/node-peer/server.mjs" >"$work/gw-$i.log" 2>&1 &
      ;;
    *) echo "PEER must be gateway, node-classic or node-sharded" >&2; exit 2 ;;
  esac
  pids+=($!)
  server_pids+=(--server-pid "$!")
  servers+=(--server "127.0.0.1:$port")
  wait_for "http://127.0.0.1:$admin/readyz" "gateway $i"
done
server_pids+=(--server-pid "$redis_pid")

rates=()
for r in $RATES; do rates+=(--rate "$r"); done
json=${JSON_OUT:-$work/report.json}
taskset -c "$BENCH_CPUS" "$BENCH" fanout "${servers[@]}" "${server_pids[@]}" \
  --redis "127.0.0.1:$redis_port" --placement "$PLACEMENT" \
  --connections "$CONNECTIONS" --channels "$CHANNELS" --senders "$SENDERS" "${rates[@]}" \
  --duration-secs "$DURATION" --json-out "$json" >/dev/null
cat "$json"
