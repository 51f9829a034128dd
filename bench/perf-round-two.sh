#!/usr/bin/env bash
# Issue 16's figures for one gateway build, each scenario against a fresh gateway process:
#   idle         15,000 connections in 100 channels (RSS per idle joined connection)
#   fanout       2,000 connections, 10 channels, 100 senders, 40k deliveries/s (CPU per delivery)
#   hot          1,000 members of one channel, 200 msgs/s (CPU per delivery, p99, losses)
#   storm-abort  15,000 viewers of 100 channels drop their TCP connections and come back
#   storm-drain  the same viewers' gateway is drained (SIGTERM); they come back on a second one
#
# Usage (release builds; run it for the previous build too, back to back, same machine state):
#   GATEWAY=target/release/live-gateway BENCH=target/release/live-bench OUT=/tmp/after \
#     bench/perf-round-two.sh [scenario...]
# The gateway runs on core 0 (GATEWAY_CPUS), the bench on core 1 (BENCH_CPUS). Auth, validation,
# sanitizing, rate limits and metrics stay on; the per-client abuse bounds are lifted where the
# build has them (the bench opens thousands of connections from a few loopback addresses).
set -euo pipefail

GATEWAY=${GATEWAY:-target/release/live-gateway}
BENCH=${BENCH:-target/release/live-bench}
OUT=${OUT:-bench-out}
GATEWAY_CPUS=${GATEWAY_CPUS:-0}
BENCH_CPUS=${BENCH_CPUS:-1}
PORT=${PORT:-11000}
export JWT_SECRET=${JWT_SECRET:-bench-secret-0123456789abcdef012345}
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(idle fanout hot storm-abort storm-drain)

mkdir -p "$OUT"
cfg="$OUT/gateway.yaml"
lift=()
if "$GATEWAY" --help 2>/dev/null | grep -q -- --max-connections-per-ip; then
  lift=(--max-connections-per-ip 0 --max-packets-per-second 0)
  printf 'rateLimits: {messagesPerMinute: 100000, giftsPerMinute: 100000, eventsPerSecond: 10000, eventBurst: 10000}\n' >"$cfg"
else
  # A build before issue 11 has no per-connection bounds to lift (and refuses their keys).
  printf 'rateLimits: {messagesPerMinute: 100000, giftsPerMinute: 100000}\n' >"$cfg"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start_gateway PORT ADMIN_PORT [extra flags]: prints the pid once /readyz answers.
start_gateway() {
  local port=$1 admin=$2
  shift 2
  taskset -c "$GATEWAY_CPUS" "$GATEWAY" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --config "$cfg" "${lift[@]}" "$@" >"$OUT/gateway-$port.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do
    if curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null; then
      echo "$pid"
      return
    fi
    sleep 0.05
  done
  echo "gateway on $port did not become ready (see $OUT/gateway-$port.log)" >&2
  return 1
}

bench() { taskset -c "$BENCH_CPUS" "$BENCH" "$@"; }

# stop PID: SIGTERM, then wait for the process to be gone (it is not this shell's child).
stop() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$1" 2>/dev/null || true
}

for s in "${scenarios[@]}"; do
  echo "== $s ($GATEWAY)" >&2
  # Stopped quickly after each scenario; the drained gateway of storm-drain closes every
  # connection at once, the worst case of a pod drain (the default spreads closes over a window).
  extra=(--drain-seconds 1)
  [ "$s" = storm-drain ] && extra=(--drain-seconds 0)
  gw=$(start_gateway "$PORT" $((PORT + 1)) "${extra[@]}")
  pids+=("$gw")
  server=(--server "127.0.0.1:$PORT" --server-pid "$gw")
  case "$s" in
    idle) bench idle "${server[@]}" --json-out "$OUT/idle.json" ;;
    fanout) bench fanout "${server[@]}" --rate 40000 --json-out "$OUT/fanout.json" ;;
    hot) bench fanout "${server[@]}" --connections 1000 --channels 1 --senders 20 --rate 200000 \
      --json-out "$OUT/hot.json" ;;
    storm-abort) bench reconnect-storm "${server[@]}" --cut abort --json-out "$OUT/storm-abort.json" ;;
    storm-drain)
      gw2=$(start_gateway $((PORT + 2)) $((PORT + 3)))
      pids+=("$gw2")
      bench reconnect-storm --server "127.0.0.1:$PORT" --server-pid "$gw2" --cut drain \
        --drain-pid "$gw" --reconnect-server "127.0.0.1:$((PORT + 2))" --json-out "$OUT/storm-drain.json"
      stop "$gw2"
      ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
  stop "$gw"
  sleep 1
done
