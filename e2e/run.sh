#!/usr/bin/env bash
# The end-to-end suite of live-realtime on a real Kubernetes cluster.
#
#   e2e/run.sh                       create a kind cluster, build and load both images, run, tear down
#   e2e/run.sh --existing-cluster    run against the cluster of E2E_KUBECONFIG (or KUBECONFIG), with
#                                    pre-pushed images; no cluster creation, no image build
#   e2e/run.sh --selftest [OPERATOR_BIN]   the suite's offline self-test (e2e/selftest.sh)
#
# Steps: (1) kind cluster, (2) docker build --target gateway/operator and kind load, (3) Prometheus
# (kube-prometheus-stack) + prometheus-adapter with deploy/autoscaling/*-values.yaml, (4) helm install
# charts/live-realtime-operator, (5) a LiveRealtime and its JWT Secret, wait for Ready, (6) chat
# between real socket.io-clients on two different gateway pods (kubectl port-forward to each pod),
# (7) lower spec.rateLimits.messagesPerMinute and see the new limit enforced with no pod restarted
# and no rollout, (8) the HPA exists, targets ws_active_connections and reads it, (9) delete the
# LiveRealtime and see every child gone, then tear down.
#
# Environment:
#   E2E_GATEWAY_IMAGE / E2E_OPERATOR_IMAGE  image names (kind: the tags built and loaded, default
#                          live-gateway:e2e / live-operator:e2e; --existing-cluster: required,
#                          pullable by the cluster)
#   E2E_IMAGE_PULL_POLICY  pull policy for both (default IfNotPresent)
#   E2E_KUBECONFIG         kubeconfig of the existing cluster (--existing-cluster)
#   E2E_KEEP_CLUSTER=1     keep the kind cluster (or, with --existing-cluster, the namespaces and
#                          releases) for debugging
#   E2E_CLUSTER_NAME       kind cluster name (default live-e2e); reused if it already exists
#   E2E_KIND_IMAGE         kind node image (e.g. kindest/node:v1.33.1; the chart needs Kubernetes >= 1.33)
#   E2E_SKIP_BUILD=1       kind: do not build the images (they must exist in the local Docker)
#   E2E_INSTALL_MONITORING kube-prometheus-stack + prometheus-adapter: 1 (default with kind) or 0
#                          (default with --existing-cluster: the cluster already serves the metric)
#   E2E_KPS_VERSION / E2E_ADAPTER_VERSION  pin the kube-prometheus-stack / prometheus-adapter
#                          chart versions (default: the latest)
#   E2E_INSTALL_OPERATOR   1 (default): helm install the chart (with --existing-cluster it watches
#                          only the test namespace); 0: use the operator already in the cluster
#   E2E_HPA_METRIC=0       only check that the HPA exists and targets ws_active_connections, not
#                          that it reads a value (a cluster without a custom-metrics adapter)
#   E2E_REQUIRE=1          missing tools are a failure (exit 1) instead of a skip (exit 0)
#   E2E_TIMEOUT            seconds for each wait (default 300)
# Needs: docker (kind mode), kind (kind mode), kubectl, helm (v3.8+ or v4), node 20+ and npm,
# python3. Exit 0: passed or skipped ("SKIP: ..."); 1: a check failed; 2: bad usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=e2e/lib.sh
. "$here/lib.sh"

if [ "${1:-}" = --selftest ]; then
  shift
  exec bash "$here/selftest.sh" "$@"
fi
mode=kind
for arg in "$@"; do
  case "$arg" in
    --existing-cluster) mode=existing ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see e2e/run.sh --help)" >&2; exit 2 ;;
  esac
done

skip() {
  if [ "${E2E_REQUIRE:-0}" = 1 ]; then
    echo "FAIL: $* (E2E_REQUIRE=1)" >&2
    exit 1
  fi
  echo "SKIP: $*"
  exit 0
}

missing_tools=$(e2e_missing_tools "$mode")
[ -z "$missing_tools" ] || skip "the e2e suite ($mode mode) needs $(e2e_required_tools "$mode" | tr '\n' ' ')- missing: $missing_tools"
if [ "$mode" = kind ] && ! docker info >/dev/null 2>&1; then
  skip "the e2e suite (kind mode) needs a running Docker engine (docker info failed)"
fi

# ---------------------------------------------------------------------------------------------
# Settings

timeout=${E2E_TIMEOUT:-300}
pull=${E2E_IMAGE_PULL_POLICY:-IfNotPresent}
cluster=${E2E_CLUSTER_NAME:-live-e2e}
suffix=$(e2e_random_hex 3)
ns="live-e2e-$suffix"                 # the LiveRealtime's namespace
name=chat                             # the LiveRealtime
if [ "$mode" = kind ]; then
  gateway_image=${E2E_GATEWAY_IMAGE:-live-gateway:e2e}
  operator_image=${E2E_OPERATOR_IMAGE:-live-operator:e2e}
  install_monitoring=${E2E_INSTALL_MONITORING:-1}
  operator_ns=live-system
  release=live-operator
  watch_ns=""
else
  for var in E2E_GATEWAY_IMAGE E2E_OPERATOR_IMAGE; do
    if [ -z "${!var:-}" ]; then
      echo "--existing-cluster needs $var: an image the cluster can pull (nothing is built or loaded)" >&2
      exit 2
    fi
  done
  gateway_image=$E2E_GATEWAY_IMAGE
  operator_image=$E2E_OPERATOR_IMAGE
  install_monitoring=${E2E_INSTALL_MONITORING:-0}
  # A private operator watching only the test namespace, so it cannot touch anything else.
  operator_ns="$ns-operator"
  release="live-operator-e2e-$suffix"
  watch_ns=$ns
  if [ -n "${E2E_KUBECONFIG:-}" ]; then
    export KUBECONFIG=$E2E_KUBECONFIG
  fi
fi
install_operator=${E2E_INSTALL_OPERATOR:-1}
jwt_secret=$(e2e_random_hex 32)
work="$here/.work/$suffix"
mkdir -p "$work"

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
ok() { printf 'ok    %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# Polls `cmd` every 3 s until it succeeds or `timeout` seconds pass: wait_until DESCRIPTION CMD...
wait_until() {
  local what=$1
  shift
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${timeout}s waiting for: $what"
    sleep 3
  done
  ok "$what"
}

# ---------------------------------------------------------------------------------------------
# Cleanup: port-forwards (by pid), diagnostics on failure, then the cluster or our namespaces.

created_cluster=0
port_forward_pids=()
cleanup() {
  local rc=$?
  set +e
  for pid in "${port_forward_pids[@]}"; do kill "$pid" 2>/dev/null; done
  if [ $rc -ne 0 ] && command -v kubectl >/dev/null && kubectl version >/dev/null 2>&1; then
    step "diagnostics (the suite failed)"
    kubectl -n "$ns" get liverealtime,all,configmap,hpa,pdb,networkpolicy -o wide 2>&1
    kubectl -n "$ns" get liverealtime "$name" -o yaml 2>&1 | sed -n '/^status:/,$p'
    kubectl -n "$ns" get events --sort-by=.lastTimestamp 2>&1 | tail -30
    kubectl -n "$operator_ns" logs -l app.kubernetes.io/name=live-realtime-operator --tail=80 --prefix 2>&1
    kubectl -n "$ns" logs -l app.kubernetes.io/component=gateway --tail=40 --prefix 2>&1
  fi
  if [ "${E2E_KEEP_CLUSTER:-0}" = 1 ]; then
    echo "E2E_KEEP_CLUSTER=1: keeping the cluster (namespace $ns, operator namespace $operator_ns); logs in $work"
  elif [ "$mode" = kind ]; then
    if [ $created_cluster = 1 ]; then
      step "deleting kind cluster $cluster"
      kind delete cluster --name "$cluster"
    fi
  else
    step "removing the test namespace and release"
    kubectl delete namespace "$ns" --ignore-not-found --wait=false
    if [ "$install_operator" = 1 ]; then
      helm uninstall "$release" -n "$operator_ns" --wait 2>/dev/null
      kubectl delete namespace "$operator_ns" --ignore-not-found --wait=false
    fi
  fi
  if [ $rc -eq 0 ]; then echo "e2e: PASSED"; else echo "e2e: FAILED (exit $rc)"; fi
  exit $rc
}
trap cleanup EXIT

# Starts `kubectl port-forward` to pod $1's port 3000 on a free local port and sets pf_url to
# its URL (a global, not printed: a $(...) subshell would lose the pid needed for cleanup).
pf_url=""
port_forward() {
  local pod=$1 log="$work/port-forward-$1.log" port=""
  kubectl -n "$ns" port-forward "pod/$pod" ":3000" >"$log" 2>&1 &
  port_forward_pids+=($!)
  for _ in $(seq 1 50); do
    port=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$log" | head -1)
    [ -n "$port" ] && break
    sleep 0.2
  done
  [ -n "$port" ] || die "kubectl port-forward to $pod did not start: $(cat "$log")"
  pf_url="http://127.0.0.1:$port"
}

# Gateway pods that are Ready, one name per line.
ready_gateway_pods() {
  kubectl -n "$ns" get pods -l "app.kubernetes.io/instance=$name,app.kubernetes.io/component=gateway" \
    -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' \
    | awk '$2 == "True" {print $1}'
}

# uid:restartCount of every gateway pod, sorted (to prove nothing restarted).
gateway_pod_fingerprint() {
  kubectl -n "$ns" get pods -l "app.kubernetes.io/instance=$name,app.kubernetes.io/component=gateway" \
    -o jsonpath='{range .items[*]}{.metadata.uid}:{.status.containerStatuses[0].restartCount}{"\n"}{end}' | sort
}

lrt_field() { kubectl -n "$ns" get liverealtime "$name" -o jsonpath="$1"; }
lrt_condition() { lrt_field "{.status.conditions[?(@.type==\"$1\")].status}"; }

# Predicates polled by wait_until.
two_gateway_pods_ready() { [ "$(ready_gateway_pods | wc -l)" -ge 2 ]; }
config_hash_changed_from() { local h; h=$(lrt_field '{.status.configHash}'); [ -n "$h" ] && [ "$h" != "$1" ]; }
lease_has_holder() { [ -n "$(kubectl -n "$operator_ns" get lease "$release" -o jsonpath='{.spec.holderIdentity}')" ]; }
custom_metric_served() {
  kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta1/namespaces/$ns/pods/*/ws_active_connections" \
    | grep -q '"metricName":"ws_active_connections"'
}
hpa_reads_metric() {
  [ -n "$(kubectl -n "$ns" get hpa "$name" \
    -o jsonpath='{.status.currentMetrics[?(@.pods.metric.name=="ws_active_connections")].pods.current.averageValue}')" ]
}
autoscaling_ready() { [ "$(lrt_condition AutoscalingReady)" = True ]; }
is_gone() { ! kubectl -n "$ns" get "$1" >/dev/null 2>&1; }
no_tier_pods_left() { [ -z "$(kubectl -n "$ns" get pods -l "app.kubernetes.io/instance=$name" -o name)" ]; }
gateway_template() { kubectl -n "$ns" get deployment "$name" -o jsonpath='{.spec.template}'; }

# ---------------------------------------------------------------------------------------------

step "e2e ($mode mode): gateway $gateway_image, operator $operator_image, namespace $ns"
if [ ! -d "$root/tests/node_modules/socket.io-client" ]; then
  npm ci --prefix "$root/tests" --no-audit --no-fund
fi

if [ "$mode" = kind ]; then
  step "1. kind cluster $cluster"
  if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    ok "reusing the existing kind cluster $cluster"
  else
    kind create cluster --name "$cluster" --config "$here/kind-config.yaml" --wait 180s \
      ${E2E_KIND_IMAGE:+--image "$E2E_KIND_IMAGE"}
    created_cluster=1
  fi
  kubectl config use-context "kind-$cluster" >/dev/null

  step "2. images: build (Dockerfile targets gateway, operator) and load into kind"
  if [ "${E2E_SKIP_BUILD:-0}" != 1 ]; then
    DOCKER_BUILDKIT=1 docker build --target gateway -t "$gateway_image" "$root"
    DOCKER_BUILDKIT=1 docker build --target operator -t "$operator_image" "$root"
  fi
  kind load docker-image --name "$cluster" "$gateway_image" "$operator_image"
else
  step "1-2. existing cluster $(kubectl config current-context 2>/dev/null || echo '(in-cluster)'): no cluster creation, no image build"
  kubectl version >/dev/null || die "cannot reach the cluster (E2E_KUBECONFIG=${E2E_KUBECONFIG:-unset})"
fi

if [ "$install_monitoring" = 1 ]; then
  step "3. Prometheus (kube-prometheus-stack) and prometheus-adapter (deploy/autoscaling/)"
  helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
  helm repo update prometheus-community >/dev/null
  helm upgrade --install kps prometheus-community/kube-prometheus-stack -n monitoring --create-namespace \
    ${E2E_KPS_VERSION:+--version "$E2E_KPS_VERSION"} \
    -f "$root/deploy/autoscaling/kube-prometheus-stack-values.yaml" --wait --timeout "${timeout}s"
  helm upgrade --install prometheus-adapter prometheus-community/prometheus-adapter -n monitoring \
    ${E2E_ADAPTER_VERSION:+--version "$E2E_ADAPTER_VERSION"} \
    -f "$root/deploy/autoscaling/prometheus-adapter-values.yaml" --wait --timeout "${timeout}s"
  wait_until "the custom metrics API is available" \
    kubectl wait --for=condition=Available apiservice/v1beta1.custom.metrics.k8s.io --timeout=5s
else
  step "3. monitoring: not installed (E2E_INSTALL_MONITORING=0)"
fi

# Before the operator: with --existing-cluster the chart's Role goes into this namespace.
kubectl create namespace "$ns"

if [ "$install_operator" = 1 ]; then
  step "4. helm install charts/live-realtime-operator (release $release in $operator_ns)"
  # Helm installs the chart's crds/ only when absent; apply the CRD server-side as an upgrade would.
  kubectl apply --server-side --force-conflicts -f "$root/crds/liverealtime.yaml"
  mapfile -t image_args < <(e2e_operator_image_args "$operator_image" "$pull")
  helm upgrade --install "$release" "$root/charts/live-realtime-operator" -n "$operator_ns" --create-namespace \
    "${image_args[@]}" --set-string "operator.watchNamespace=$watch_ns" \
    --set-string "operator.leaderElection.leaseName=$release" \
    --wait --timeout "${timeout}s"
  kubectl -n "$operator_ns" wait --for=condition=Available deployment \
    -l "app.kubernetes.io/instance=$release" --timeout="${timeout}s"
  wait_until "the leader Lease $release has a holder" lease_has_holder
else
  step "4. operator: using the one already in the cluster (E2E_INSTALL_OPERATOR=0)"
fi

step "5. a LiveRealtime: $ns/$name"
e2e_jwt_secret "$name" "$ns" "$jwt_secret" >"$work/secret.yaml"
e2e_liverealtime "$name" "$ns" "$gateway_image" "$pull" 30 >"$work/liverealtime.yaml"
kubectl apply -f "$work/secret.yaml" -f "$work/liverealtime.yaml"
kubectl -n "$ns" wait --for=condition=Ready "liverealtime/$name" --timeout="${timeout}s"
ok "LiveRealtime $name is Ready"
# The Deployment runs the LiveRealtime's replicas (default 2); the HPA scales the LiveRealtime.
wait_until "two gateway pods are Ready" two_gateway_pods_ready

step "6. chat across two gateway pods (socket.io-client through kubectl port-forward)"
mapfile -t pods < <(ready_gateway_pods)
[ "${#pods[@]}" -ge 2 ] || die "expected 2 Ready gateway pods, got: ${pods[*]:-none}"
port_forward "${pods[0]}"
url_a=$pf_url
port_forward "${pods[1]}"
url_b=$pf_url
echo "pod ${pods[0]} -> $url_a, pod ${pods[1]} -> $url_b"
export E2E_JWT_SECRET=$jwt_secret
node "$here/chat-across-pods.mjs" chat "$url_a" "$url_b"

step "7. rateLimits changed in the LiveRealtime: enforced without a pod restart"
node "$here/chat-across-pods.mjs" accepts "$url_a" 4
before_pods=$(gateway_pod_fingerprint)
before_hash=$(lrt_field '{.status.configHash}')
before_template=$(gateway_template)
kubectl -n "$ns" patch liverealtime "$name" --type merge -p '{"spec":{"rateLimits":{"messagesPerMinute":3}}}'
wait_until "the operator applied the new config (status.configHash changed)" \
  config_hash_changed_from "$before_hash"
kubectl -n "$ns" get configmap "$name-config" -o jsonpath='{.data.gateway\.yaml}' | grep -q 'messagesPerMinute: 3' \
  || die "ConfigMap $name-config does not carry messagesPerMinute: 3"
ok "ConfigMap $name-config carries messagesPerMinute: 3"
# The kubelet refreshes the mounted ConfigMap within about a minute; the gateway reloads it.
node "$here/chat-across-pods.mjs" rate-limit "$url_a" 3 "$timeout"
node "$here/chat-across-pods.mjs" rate-limit "$url_b" 3 "$timeout"
after_pods=$(gateway_pod_fingerprint)
[ "$before_pods" = "$after_pods" ] || die "gateway pods changed or restarted: before [$before_pods] after [$after_pods]"
ok "the same gateway pods, no container restart"
[ "$before_template" = "$(gateway_template)" ] || die "the gateway pod template changed: a rollout"
ok "no rollout (the gateway Deployment's pod template is unchanged)"

step "8. the HPA exists and reads ws_active_connections"
kubectl -n "$ns" get hpa "$name" >/dev/null || die "no HorizontalPodAutoscaler $name"
metric=$(kubectl -n "$ns" get hpa "$name" -o jsonpath='{.spec.metrics[0].type}/{.spec.metrics[0].pods.metric.name}')
[ "$metric" = "Pods/ws_active_connections" ] || die "HPA $name targets $metric, expected Pods/ws_active_connections"
ok "HPA $name targets Pods metric ws_active_connections"
if [ "${E2E_HPA_METRIC:-1}" = 1 ]; then
  wait_until "the custom metrics API serves ws_active_connections for the gateway pods" custom_metric_served
  wait_until "HPA $name reads ws_active_connections (status.currentMetrics)" hpa_reads_metric
  echo "HPA $name: $(kubectl -n "$ns" get hpa "$name" --no-headers)"
  wait_until "LiveRealtime condition AutoscalingReady=True" autoscaling_ready
else
  echo "note  E2E_HPA_METRIC=0: not checking that the HPA reads a value"
fi

step "9. delete the LiveRealtime: every child is garbage-collected"
for pid in "${port_forward_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
port_forward_pids=()
mapfile -t children < <(e2e_children "$name")
if ! kubectl get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1; then
  # Without prometheus-operator the operator creates no ServiceMonitor (CRDNotInstalled).
  mapfile -t children < <(printf '%s\n' "${children[@]}" | grep -v '^servicemonitor')
fi
for child in "${children[@]}"; do
  kubectl -n "$ns" get "$child" >/dev/null || die "$child did not exist before deletion"
done
ok "all ${#children[@]} children exist: ${children[*]}"
kubectl -n "$ns" delete liverealtime "$name" --wait=true --timeout="${timeout}s"
for child in "${children[@]}"; do
  wait_until "$child is gone" is_gone "$child"
done
wait_until "no gateway or Redis pod is left" no_tier_pods_left

step "10. tear down"
