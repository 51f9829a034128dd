#!/usr/bin/env bash
# Offline self-test of the e2e suite: everything about it that can be checked without a cluster.
#
#   e2e/selftest.sh [OPERATOR_BIN]      (also: e2e/run.sh --selftest)
#
# 1. syntax: bash -n of every e2e and chart script, shellcheck when installed, node --check.
# 2. the skip path: with docker/kind (or kubectl) missing, or a Docker client without an engine,
#    run.sh prints "SKIP: ..." and exits 0; with E2E_REQUIRE=1 it exits 1. --existing-cluster
#    without image names is a usage error (exit 2).
# 3. lib.sh: image-name parsing and the helm image arguments.
# 4. the manifests the suite applies (LiveRealtime, JWT Secret): the LiveRealtime passes the CRD
#    schema and `live-operator render -f -` (CEL rules and the gateway's config validation), and
#    the Secret and every rendered child pass kubernetes-validate; the children are exactly the
#    ones the suite expects to be garbage-collected; the rate-limit patch reaches the ConfigMap.
# 5. chat-across-pods.mjs against real local gateways (target/debug/live-gateway or
#    LIVE_GATEWAY_BIN): chat between two gateways sharing a redis-server (skipped with a note when
#    redis-server is missing), and the accepts / rate-limit checks against a gateway whose config
#    file sets the limit. Skipped with a note when the gateway binary is missing.
# Exit 0 when every check passes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=e2e/lib.sh
. "$here/lib.sh"
operator_bin=${1:-${LIVE_OPERATOR_BIN:-$root/target/debug/live-operator}}
gateway_bin=${LIVE_GATEWAY_BIN:-$root/target/debug/live-gateway}

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
step() { printf '\n--- e2e self-test: %s\n' "$*"; }
pass() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
check() { # check DESCRIPTION CMD...: passes when CMD succeeds
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
equal() { # equal DESCRIPTION GOT WANT
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: got [$2], want [$3]"; fi
}

# ---------------------------------------------------------------------------------------------
step "1. script syntax"
for f in "$here"/*.sh "$root"/scripts/fetch-tools.sh "$root"/scripts/test-chart.sh; do
  [ -f "$f" ] || continue
  check "bash -n ${f#"$root"/}" bash -n "$f"
done
if command -v shellcheck >/dev/null 2>&1; then
  # From the repository root: the `source=` directives are relative to it.
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  check "shellcheck e2e/*.sh scripts/fetch-tools.sh scripts/test-chart.sh" \
    bash -c 'cd "$1" && shellcheck -x e2e/*.sh scripts/fetch-tools.sh scripts/test-chart.sh' _ "$root"
else
  echo "note  shellcheck is not installed: lint skipped (bash -n only)"
fi
for f in "$here"/*.mjs; do
  check "node --check ${f#"$root"/}" node --check "$f"
done

# ---------------------------------------------------------------------------------------------
step "2. the skip path"
# A PATH holding only what run.sh needs before its tool check, so docker/kind/kubectl are absent.
bare="$tmp/bare-bin"
mkdir -p "$bare"
for tool in bash dirname env cat tr sed od head; do
  ln -s "$(command -v "$tool")" "$bare/$tool"
done
run_bare() { # run_bare PATH [VAR=VALUE...] -- ARGS...: prints "exit=N" then the output
  local path=$1
  shift
  local vars=()
  while [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  local out rc=0
  out=$(env -i HOME="$HOME" PATH="$path" "${vars[@]}" bash "$here/run.sh" "$@" 2>&1) || rc=$?
  printf 'exit=%s\n%s\n' "$rc" "$out"
}
out=$(run_bare "$bare" --)
equal "no docker/kind: exit 0" "$(head -1 <<<"$out")" "exit=0"
check "no docker/kind: prints SKIP naming the missing tools" grep -q '^SKIP: .*missing: docker kind kubectl helm' <<<"$out"
out=$(run_bare "$bare" E2E_REQUIRE=1 --)
equal "no docker/kind with E2E_REQUIRE=1: exit 1" "$(head -1 <<<"$out")" "exit=1"
check "E2E_REQUIRE=1: says why" grep -q 'FAIL: .*missing: docker' <<<"$out"
out=$(run_bare "$bare" -- --existing-cluster)
equal "--existing-cluster without kubectl: exit 0" "$(head -1 <<<"$out")" "exit=0"
# shellcheck disable=SC2016 # $1 is expanded by the inner bash
check "--existing-cluster without kubectl: SKIP needs no docker/kind" \
  bash -c 'grep -q "^SKIP: .*existing mode.*missing: kubectl helm" <<<"$1" && ! grep -q "missing:.*docker" <<<"$1"' _ "$out"
# Every tool present, but `docker info` fails (a client without an engine, like this machine).
fake="$tmp/fake-bin"
mkdir -p "$fake"
for tool in docker kind kubectl helm node npm python3; do
  printf '#!/bin/sh\nexit 1\n' >"$fake/$tool"
  chmod +x "$fake/$tool"
done
out=$(run_bare "$fake:$bare" --)
equal "docker without an engine: exit 0" "$(head -1 <<<"$out")" "exit=0"
check "docker without an engine: SKIP names the engine" grep -q '^SKIP: .*running Docker engine' <<<"$out"
out=$(run_bare "$fake:$bare" -- --existing-cluster)
equal "--existing-cluster without E2E_*_IMAGE: usage error" "$(head -1 <<<"$out")" "exit=2"
check "--existing-cluster without images: names E2E_GATEWAY_IMAGE" grep -q 'E2E_GATEWAY_IMAGE' <<<"$out"
out=$(run_bare "$bare" -- --bogus)
equal "unknown argument: exit 2" "$(head -1 <<<"$out")" "exit=2"

# ---------------------------------------------------------------------------------------------
step "3. lib.sh helpers"
tab=$'\t'
equal "split ghcr.io/o/op:1.2" "$(e2e_split_image ghcr.io/o/op:1.2)" "ghcr.io/o/op${tab}1.2${tab}"
equal "split op:e2e" "$(e2e_split_image live-operator:e2e)" "live-operator${tab}e2e${tab}"
equal "split a registry port is not a tag" "$(e2e_split_image localhost:5000/op)" "localhost:5000/op${tab}${tab}"
equal "split registry port + tag" "$(e2e_split_image localhost:5000/team/op:v1)" "localhost:5000/team/op${tab}v1${tab}"
equal "split digest" "$(e2e_split_image r.io/op@sha256:abc)" "r.io/op${tab}${tab}sha256:abc"
equal "split tag + digest" "$(e2e_split_image r.io/op:1@sha256:abc)" "r.io/op${tab}1${tab}sha256:abc"
equal "helm image args" "$(e2e_operator_image_args localhost:5000/op:v1 Always | tr '\n' ' ')" \
  "--set-string image.repository=localhost:5000/op --set-string image.tag=v1 --set-string image.pullPolicy=Always "
equal "required tools (kind)" "$(e2e_required_tools kind | tr '\n' ' ')" "docker kind kubectl helm node npm python3 "
equal "random hex: 3 bytes are 6 hex digits" "$(e2e_random_hex 3 | tr -d '0-9a-f\n' | wc -c | tr -d ' ')/$(e2e_random_hex 3 | wc -c | tr -d ' ')" "0/6"

# ---------------------------------------------------------------------------------------------
step "4. the manifests the suite applies"
if [ ! -x "$operator_bin" ]; then
  fail "no operator binary at $operator_bin (pass it as the first argument)"
else
  gw_image=registry.example.com/live-gateway:e2e-test
  e2e_liverealtime chat live-e2e-abc "$gw_image" IfNotPresent 30 >"$tmp/lrt.yaml"
  e2e_jwt_secret chat live-e2e-abc "$(e2e_random_hex 32)" >"$tmp/secret.yaml"
  for f in lrt secret; do
    if python3 "$root/scripts/check-chart.py" validate "$tmp/$f.yaml" >"$tmp/$f.out"; then
      pass "generated $(sed 's/^ok *//' "$tmp/$f.out")"
    else
      fail "generated $f: $(cat "$tmp/$f.out")"
    fi
  done
  if "$operator_bin" render -f - <"$tmp/lrt.yaml" >"$tmp/children.yaml" 2>"$tmp/render.err"; then
    pass "live-operator render -f - accepts the generated LiveRealtime"
    if python3 "$root/scripts/check-chart.py" validate "$tmp/children.yaml" >"$tmp/validate.out"; then
      pass "every rendered child passes kubernetes-validate ($(grep -c '^ok ' "$tmp/validate.out") checks)"
    else
      fail "rendered children: $(grep FAIL "$tmp/validate.out")"
    fi
    got=$(python3 - "$tmp/children.yaml" <<'PY'
import sys, yaml
plural = {"ConfigMap": "configmap", "Deployment": "deployment.apps", "Service": "service",
          "NetworkPolicy": "networkpolicy.networking.k8s.io",
          "HorizontalPodAutoscaler": "horizontalpodautoscaler.autoscaling",
          "PodDisruptionBudget": "poddisruptionbudget.policy",
          "ServiceMonitor": "servicemonitor.monitoring.coreos.com"}
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
print("\n".join(sorted(f"{plural.get(d['kind'], d['kind'])}/{d['metadata']['name']}" for d in docs)))
PY
)
    equal "the rendered children are exactly e2e_children (what deletion must remove) but the generated password Secret" \
      "$got" "$(e2e_children chat | grep -v '^secret/' | sort)"
    image=$(python3 -c 'import sys,yaml; d=[x for x in yaml.safe_load_all(open(sys.argv[1])) if x and x["kind"]=="Deployment" and x["metadata"]["name"]=="chat"][0]; print(d["spec"]["template"]["spec"]["containers"][0]["image"], "replicas" in d["spec"])' "$tmp/children.yaml")
    equal "the gateway Deployment runs the given image and the LiveRealtime's replica count (the HPA scales the LiveRealtime)" "$image" "$gw_image True"
    hpa=$(python3 -c 'import sys,yaml; d=[x for x in yaml.safe_load_all(open(sys.argv[1])) if x and x["kind"]=="HorizontalPodAutoscaler"][0]["spec"]; m=d["metrics"][0]; print(d["minReplicas"], m["type"], m["pods"]["metric"]["name"])' "$tmp/children.yaml")
    equal "the HPA: min 2 pods, Pods metric ws_active_connections" "$hpa" "2 Pods ws_active_connections"
    e2e_liverealtime chat live-e2e-abc "$gw_image" IfNotPresent 3 | "$operator_bin" render -f - >"$tmp/children3.yaml"
    check "messagesPerMinute 3 reaches the gateway ConfigMap" grep -q 'messagesPerMinute: 3' "$tmp/children3.yaml"
    equal "a rate-limit change leaves the gateway pod template alone (no restart)" \
      "$(grep 'restart-hash' "$tmp/children3.yaml")" "$(grep 'restart-hash' "$tmp/children.yaml")"
  else
    fail "live-operator render -f - refused the generated LiveRealtime: $(cat "$tmp/render.err")"
  fi
  # The autoscaling files users apply.
  check "prometheus-adapter rule: seriesQuery" grep -qF "seriesQuery: 'ws_active_connections{namespace!=\"\",pod!=\"\"}'" \
    "$root/deploy/autoscaling/prometheus-adapter-values.yaml"
  check "prometheus-adapter rule: metricsQuery" grep -qF "metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'" \
    "$root/deploy/autoscaling/prometheus-adapter-values.yaml"
  check "KEDA ScaledObject scales the LiveRealtime (its scale subresource), not the Deployment" python3 - "$root/deploy/autoscaling/keda-scaledobject.yaml" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
t = d["spec"]["scaleTargetRef"]
assert d["apiVersion"] == "keda.sh/v1alpha1" and d["kind"] == "ScaledObject", d["kind"]
assert t == {"apiVersion": "realtime.halobuzz.com/v1alpha1", "kind": "LiveRealtime", "name": "live"}, t
trig = d["spec"]["triggers"][0]
assert trig["type"] == "prometheus" and "ws_active_connections" in trig["metadata"]["query"], trig
PY
fi

# ---------------------------------------------------------------------------------------------
step "5. chat-across-pods.mjs against local gateways"
if [ ! -d "$root/tests/node_modules/socket.io-client" ]; then
  npm ci --prefix "$root/tests" --no-audit --no-fund >/dev/null
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # wait_http URL: up to 10 s for 200
  python3 - "$1" <<'PY'
import sys, time, urllib.request
deadline = time.time() + 10
while time.time() < deadline:
    try:
        if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
PY
}
# start_gateway VAR CONFIG [REDIS_URL]: starts a gateway, sets VAR to its public URL.
start_gateway() {
  local var=$1 config=$2 redis=${3:-} port admin
  port=$(free_port)
  admin=$(free_port)
  env -i PATH="$PATH" HOME="$HOME" JWT_SECRET="$E2E_JWT_SECRET" LIVE_LISTEN="127.0.0.1:$port" \
    LIVE_ADMIN_LISTEN="127.0.0.1:$admin" LIVE_CONFIG="$config" LIVE_DRAIN_SECONDS=1 \
    LIVE_SHUTDOWN_TIMEOUT_SECONDS=3 ${redis:+REDIS_URL="$redis"} \
    "$gateway_bin" >"$tmp/gateway-$port.log" 2>&1 &
  pids+=($!)
  if wait_http "http://127.0.0.1:$admin/readyz"; then
    printf -v "$var" 'http://127.0.0.1:%s' "$port"
  else
    fail "gateway on :$port not ready: $(tail -5 "$tmp/gateway-$port.log")"
    printf -v "$var" '%s' ""
  fi
}
if [ ! -x "$gateway_bin" ]; then
  echo "note  no gateway binary at $gateway_bin: the socket.io checks are skipped (build it, or set LIVE_GATEWAY_BIN)"
else
  export E2E_JWT_SECRET
  E2E_JWT_SECRET=$(e2e_random_hex 16)
  printf 'rateLimits:\n  messagesPerMinute: 30\n' >"$tmp/limit30.yaml"
  printf 'rateLimits:\n  messagesPerMinute: 3\n' >"$tmp/limit3.yaml"
  start_gateway gw30 "$tmp/limit30.yaml"
  start_gateway gw3 "$tmp/limit3.yaml"
  if [ -n "$gw30" ] && [ -n "$gw3" ]; then
    check "chat (one gateway, two clients)" node "$here/chat-across-pods.mjs" chat "$gw30" "$gw30"
    check "accepts: 4 messages under the default limit" node "$here/chat-across-pods.mjs" accepts "$gw30" 4
    check "rate-limit: limit 3 detected" node "$here/chat-across-pods.mjs" rate-limit "$gw3" 3 10
    if node "$here/chat-across-pods.mjs" rate-limit "$gw30" 3 1 >/dev/null 2>&1; then
      fail "rate-limit must fail where the limit is 30, not 3"
    else
      pass "rate-limit fails (after its timeout) where the limit is still 30"
    fi
    if node "$here/chat-across-pods.mjs" accepts "$gw3" 4 >/dev/null 2>&1; then
      fail "accepts 4 must fail where the limit is 3"
    else
      pass "accepts fails where the limit is lower"
    fi
    if node "$here/chat-across-pods.mjs" bogus >/dev/null 2>&1; then fail "bad usage must fail"; else pass "bad usage fails"; fi
  fi
  if command -v redis-server >/dev/null 2>&1; then
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
    pids+=($!)
    sleep 0.5
    start_gateway gw_a "$tmp/limit30.yaml" "redis://127.0.0.1:$redis_port"
    start_gateway gw_b "$tmp/limit30.yaml" "redis://127.0.0.1:$redis_port"
    if [ -n "$gw_a" ] && [ -n "$gw_b" ]; then
      check "chat across two gateway processes sharing Redis" \
        node "$here/chat-across-pods.mjs" chat "$gw_a" "$gw_b"
    fi
  else
    echo "note  redis-server is not installed: the two-gateway chat check is skipped"
  fi
fi

echo
if [ "$failures" -eq 0 ]; then
  echo "e2e self-test: all checks passed"
else
  echo "e2e self-test: $failures check(s) FAILED"
  exit 1
fi
