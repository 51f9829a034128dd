# shellcheck shell=bash
# Pure helpers of the e2e suite: tool checks, image-name parsing and the manifests it applies.
# Sourced by e2e/run.sh and e2e/selftest.sh; nothing here talks to a cluster, so the self-test
# can exercise every function offline.

# The tools a mode needs, one name per line: `kind` mode builds images and creates a cluster,
# `existing` mode only talks to a cluster.
e2e_required_tools() {
  case "$1" in
    kind) printf '%s\n' docker kind kubectl helm node npm python3 ;;
    existing) printf '%s\n' kubectl helm node npm python3 ;;
    *) echo "e2e_required_tools: unknown mode $1" >&2; return 2 ;;
  esac
}

# Prints the tools of mode $1 that are not on PATH (space-separated; empty when none is missing).
e2e_missing_tools() {
  local tool missing=()
  while read -r tool; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done < <(e2e_required_tools "$1")
  echo "${missing[*]:-}"
}

# Splits an image reference into "REPOSITORY TAG DIGEST" (tab-separated; TAG or DIGEST may be
# empty). A registry port (localhost:5000/x) is not a tag: only a colon after the last slash is.
#   e2e_split_image ghcr.io/o/live-operator:1.2   -> ghcr.io/o/live-operator  1.2
#   e2e_split_image localhost:5000/op@sha256:ab   -> localhost:5000/op  (no tag)  sha256:ab
e2e_split_image() {
  local ref=$1 repo tag="" digest=""
  if [[ $ref == *@* ]]; then
    digest=${ref#*@}
    ref=${ref%%@*}
  fi
  local last=${ref##*/}
  if [[ $last == *:* ]]; then
    tag=${last##*:}
    repo=${ref%:*}
  else
    repo=$ref
  fi
  printf '%s\t%s\t%s\n' "$repo" "$tag" "$digest"
}

# The helm arguments that point the chart at operator image $1 (pull policy $2).
e2e_operator_image_args() {
  local repo tag digest
  IFS=$'\t' read -r repo tag digest < <(e2e_split_image "$1")
  printf '%s\n' --set-string "image.repository=$repo"
  [ -n "$tag" ] && printf '%s\n' --set-string "image.tag=$tag"
  [ -n "$digest" ] && printf '%s\n' --set-string "image.digest=$digest"
  printf '%s\n' --set-string "image.pullPolicy=$2"
}

# The JWT Secret of tier $1 in namespace $2 holding HS256 secret $3 (the suite mints its tokens
# with the same secret).
e2e_jwt_secret() {
  local name=$1 namespace=$2 secret=$3
  cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: ${name}-jwt
  namespace: ${namespace}
type: Opaque
stringData:
  secret: "${secret}"
YAML
}

# The LiveRealtime the suite applies: tier $1 in namespace $2 running gateway image $3 with pull
# policy $4 and a chat limit of $5 messages per user per minute (default 30). Autoscaled on
# ws_active_connections between 2 and 4 pods (2 pods is what the cross-pod chat check needs; the
# target is high so the suite's few connections never scale it), managed Redis, a ServiceMonitor,
# a short drain so deletion is quick, and small requests to fit a kind node.
e2e_liverealtime() {
  local name=$1 namespace=$2 image=$3 pull=$4 messages=${5:-30}
  cat <<YAML
apiVersion: realtime.halobuzz.com/v1alpha1
kind: LiveRealtime
metadata:
  name: ${name}
  namespace: ${namespace}
  labels:
    app.kubernetes.io/part-of: live-realtime-e2e
spec:
  image: ${image}
  imagePullPolicy: ${pull}
  jwtSecretRef:
    name: ${name}-jwt
    key: secret
  rateLimits:
    messagesPerMinute: ${messages}
    giftsPerMinute: 30
  autoscaling:
    enabled: true
    minReplicas: 2
    maxReplicas: 4
    targetConnectionsPerPod: 1000
  redis:
    mode: Managed
  monitoring:
    serviceMonitor:
      enabled: true
      interval: 15s
  podDisruptionBudget:
    enabled: true
    maxUnavailable: 1
  resources:
    requests:
      cpu: 50m
      memory: 64Mi
    limits:
      memory: 256Mi
  drainSeconds: 3
  preStopSleepSeconds: 1
YAML
}

# "KIND/NAME" of every child the operator creates for tier $1 with e2e_liverealtime (autoscaling,
# managed Redis, PDB and ServiceMonitor on): what must be gone after the LiveRealtime is deleted.
# The managed Redis password Secret is created at run time (a random password), so `render`
# does not print it.
e2e_children() {
  local name=$1
  printf '%s\n' \
    "configmap/${name}-config" \
    "deployment.apps/${name}" \
    "service/${name}" \
    "service/${name}-admin" \
    "deployment.apps/${name}-redis" \
    "service/${name}-redis" \
    "networkpolicy.networking.k8s.io/${name}-redis" \
    "poddisruptionbudget.policy/${name}-redis" \
    "secret/${name}-redis" \
    "horizontalpodautoscaler.autoscaling/${name}" \
    "poddisruptionbudget.policy/${name}" \
    "servicemonitor.monitoring.coreos.com/${name}"
}

# A random hex string of $1 bytes (for the JWT secret and namespace suffixes).
e2e_random_hex() {
  od -An -N"${1:-16}" -tx1 /dev/urandom | tr -d ' \n'
}
