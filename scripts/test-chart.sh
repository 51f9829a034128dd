#!/usr/bin/env bash
# Every offline check of the shipping layer: the Helm chart, its RBAC, the CRD copy, the
# container build file and the e2e suite's self-test.
#
#   scripts/test-chart.sh BIN_OPERATOR        e.g. scripts/test-chart.sh target/debug/live-operator
#
# Steps (each prints a header; all run, then a summary; exit 1 if any failed):
#   1. tools: helm (fetched into .tools/bin by scripts/fetch-tools.sh when missing), kubernetes-validate
#   2. CRD: charts/live-realtime-operator/crds/liverealtime.yaml == crds/liverealtime.yaml == `BIN crd`
#   3. helm lint --strict with the default values and with every ci/*.yaml
#   4. helm template (CRDs included) of the same, every object validated against the Kubernetes
#      1.33 schemas, strict (ServiceMonitor: structure only, no offline schema); restricted Pod
#      Security, probes and requests on the operator Deployment
#   5. values.schema.json refuses bad values: helm lint and helm template both fail
#   6. RBAC: the chart's roles grant exactly what `BIN rbac` prints (least privilege), for every
#      values file; a tampered render must fail the check
#   7. Dockerfile: targets gateway and operator, distroless nonroot final stages, numeric USER,
#      no `# syntax=` frontend to pull
#   8. e2e self-test (e2e/selftest.sh BIN): skip path, generated manifests, socket.io checks
# Needs: python3 with pip (kubernetes-validate is installed when missing), node + npm for step 8.
# The check functions run through run_step, which shellcheck cannot follow:
# shellcheck disable=SC2329
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
operator=${1:-}
if [ -z "$operator" ] || [ ! -x "$operator" ]; then
  echo "usage: scripts/test-chart.sh BIN_OPERATOR (an executable live-operator; got '${operator}')" >&2
  exit 2
fi
operator=$(cd "$(dirname "$operator")" && pwd)/$(basename "$operator")
chart=charts/live-realtime-operator
kube_version=1.33.0
release_ns=live-system
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

results=()
failed=0
step() { printf '\n==> %s\n' "$*"; }
record() { # record NAME STATUS
  results+=("$(printf '%-4s  %s' "$2" "$1")")
  [ "$2" = ok ] || failed=1
}
# run_step NAME CMD...: runs CMD, records ok/FAIL.
run_step() {
  local name=$1
  shift
  step "$name"
  if "$@"; then record "$name" ok; else echo "FAIL: $name"; record "$name" FAIL; fi
}

# Values files: the defaults plus every ci/*.yaml.
values_files=("")
for f in "$chart"/ci/*.yaml; do values_files+=("$f"); done
label() { if [ -z "$1" ]; then echo "default values"; else echo "${1#"$chart"/}"; fi; }
values_args() { if [ -n "$1" ]; then printf '%s\n' -f "$1"; fi; }

# ---------------------------------------------------------------------------------------------
step "1. tools"
tools_dir=$(scripts/fetch-tools.sh) || { echo "FAIL: could not get helm (scripts/fetch-tools.sh)"; exit 1; }
export PATH="$tools_dir:$PATH"
helm version --short
if ! python3 -c "import kubernetes_validate, jsonschema, yaml" >/dev/null 2>&1; then
  echo "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate || exit 1
fi
python3 -c "import kubernetes_validate; print('kubernetes-validate', getattr(kubernetes_validate, '__version__', ''))"

# ---------------------------------------------------------------------------------------------
crd_copy() {
  local ok=0
  if cmp -s crds/liverealtime.yaml "$chart/crds/liverealtime.yaml"; then
    echo "ok    $chart/crds/liverealtime.yaml equals crds/liverealtime.yaml"
  else
    echo "FAIL  $chart/crds/liverealtime.yaml differs from crds/liverealtime.yaml; regenerate both with"
    echo "        UPDATE_CRDS=1 cargo test -p live-operator the_committed_crd_is_fresh"
    diff -u crds/liverealtime.yaml "$chart/crds/liverealtime.yaml" | head -20
    ok=1
  fi
  if "$operator" crd | cmp -s - "$chart/crds/liverealtime.yaml"; then
    echo "ok    $chart/crds/liverealtime.yaml equals \`live-operator crd\`"
  else
    echo "FAIL  $chart/crds/liverealtime.yaml differs from \`$operator crd\` (stale CRD or stale binary)"
    ok=1
  fi
  return "$ok"
}
run_step "2. CRD copy in the chart" crd_copy

# ---------------------------------------------------------------------------------------------
lint_all() {
  local ok=0 f
  for f in "${values_files[@]}"; do
    echo "--- helm lint --strict ($(label "$f"))"
    # shellcheck disable=SC2046 # values_args prints nothing or "-f FILE"
    helm lint --strict "$chart" --namespace "$release_ns" --kube-version "$kube_version" $(values_args "$f") || ok=1
  done
  return "$ok"
}
run_step "3. helm lint (default and ci/ values)" lint_all

template_all() {
  local ok=0 f out
  for f in "${values_files[@]}"; do
    out="$tmp/rendered-$(basename "${f:-default}")"
    echo "--- helm template ($(label "$f")) -> validate"
    # shellcheck disable=SC2046
    if ! helm template live-operator "$chart" --namespace "$release_ns" --kube-version "$kube_version" \
      --include-crds $(values_args "$f") >"$out"; then
      ok=1
      continue
    fi
    python3 scripts/check-chart.py validate "$out" --kubernetes-version "$kube_version" || ok=1
  done
  return "$ok"
}
run_step "4. helm template + Kubernetes $kube_version schema validation" template_all

# ---------------------------------------------------------------------------------------------
bad_values() {
  local ok=0 name
  mkdir -p "$tmp/bad"
  printf 'replicaCount: 2\noperator:\n  leaderElection:\n    enabled: false\n' >"$tmp/bad/two-replicas-without-leader-election.yaml"
  printf 'replicas: 2\n' >"$tmp/bad/unknown-key.yaml"
  printf 'image:\n  pullPolicy: Sometimes\n' >"$tmp/bad/bad-pull-policy.yaml"
  printf 'podSecurityContext:\n  runAsNonRoot: false\n' >"$tmp/bad/root-pod.yaml"
  printf 'securityContext:\n  allowPrivilegeEscalation: true\n' >"$tmp/bad/privilege-escalation.yaml"
  printf 'operator:\n  logFormat: xml\n' >"$tmp/bad/bad-log-format.yaml"
  printf 'operator:\n  concurrency: "4"\n' >"$tmp/bad/string-concurrency.yaml"
  printf 'resources:\n  requests:\n    memory: lots\n' >"$tmp/bad/bad-quantity.yaml"
  printf 'metrics:\n  serviceMonitor:\n    interval: 30\n' >"$tmp/bad/bad-interval.yaml"
  printf 'image:\n  digest: latest\n' >"$tmp/bad/bad-digest.yaml"
  for f in "$tmp"/bad/*.yaml; do
    name=$(basename "$f" .yaml)
    local lint_rc=0 template_rc=0
    helm lint "$chart" -f "$f" >"$tmp/lint.out" 2>&1 || lint_rc=$?
    helm template x "$chart" -f "$f" >/dev/null 2>"$tmp/template.err" || template_rc=$?
    if [ "$lint_rc" -ne 0 ] && [ "$template_rc" -ne 0 ]; then
      echo "ok    refused: $name ($(grep -m1 -o "at '[^']*'.*" "$tmp/template.err" || head -c 120 "$tmp/template.err"))"
    else
      echo "FAIL  accepted bad values $name (lint exit $lint_rc, template exit $template_rc)"
      ok=1
    fi
  done
  return "$ok"
}
run_step "5. values.schema.json refuses bad values" bad_values

# ---------------------------------------------------------------------------------------------
rbac_all() {
  local ok=0 f out
  for f in "${values_files[@]}"; do
    out="$tmp/rbac-$(basename "${f:-default}")"
    echo "--- RBAC ($(label "$f"))"
    # shellcheck disable=SC2046
    helm template live-operator "$chart" --namespace "$release_ns" --kube-version "$kube_version" \
      $(values_args "$f") >"$out" || { ok=1; continue; }
    python3 scripts/check-chart.py rbac "$out" --operator "$operator" --release-namespace "$release_ns" || ok=1
  done
  # The check itself: one extra verb and one missing verb must each fail it.
  out="$tmp/rbac-default"
  sed 's/verbs: \["get", "create", "patch"\]/verbs: ["get", "create", "patch", "delete"]/' "$out" >"$tmp/rbac-extra.yaml"
  sed 's/verbs: \["create", "patch"\]/verbs: ["create"]/' "$out" >"$tmp/rbac-missing.yaml"
  for tampered in extra missing; do
    if cmp -s "$out" "$tmp/rbac-$tampered.yaml"; then
      echo "FAIL  could not tamper with the render for the negative test ($tampered)"
      ok=1
    elif python3 scripts/check-chart.py rbac "$tmp/rbac-$tampered.yaml" --operator "$operator" \
      --release-namespace "$release_ns" >"$tmp/tampered.out"; then
      echo "FAIL  the RBAC check accepted a render with a $tampered grant"
      ok=1
    else
      echo "ok    the RBAC check refuses a render with a $tampered grant: $(grep -m1 '^  [-+]' "$tmp/tampered.out")"
    fi
  done
  return "$ok"
}
run_step "6. RBAC equals \`live-operator rbac\` (least privilege)" rbac_all

# ---------------------------------------------------------------------------------------------
dockerfile() {
  python3 - <<'PY'
import re, sys
text = open("Dockerfile").read()
stages = {m.group(2): m.group(1) for m in re.finditer(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)}
problems = []
for target, binary in (("gateway", "live-gateway"), ("operator", "live-operator")):
    base = stages.get(target)
    if base is None:
        problems.append(f"no `--target {target}` stage")
        continue
    if not base.startswith("gcr.io/distroless/") or not base.endswith(":nonroot"):
        problems.append(f"{target}: final image {base} is not a distroless :nonroot image")
    body = text.split(f"AS {target}", 1)[1].split("\nFROM ", 1)[0]
    if not re.search(r"^USER\s+65532:65532\s*$", body, re.M):
        problems.append(f"{target}: USER is not the numeric 65532:65532 (runAsNonRoot without runAsUser needs a number)")
    if f'ENTRYPOINT ["/usr/local/bin/{binary}"]' not in body:
        problems.append(f"{target}: ENTRYPOINT is not the {binary} binary (exec form)")
    if not re.search(r"^EXPOSE\s+\d", body, re.M):
        problems.append(f"{target}: no EXPOSE")
if "--locked" not in text:
    problems.append("cargo build without --locked")
if re.search(r"^#\s*syntax\s*=", text, re.M | re.I):
    problems.append("a `# syntax=` directive pulls a frontend image: an air-gapped build fails at line 1")
for p in problems:
    print("FAIL  Dockerfile:", p)
if not problems:
    print("ok    Dockerfile: targets gateway and operator, distroless nonroot, USER 65532:65532, no syntax directive, exec-form entrypoints")
ignore = open(".dockerignore").read().split()
for want in ("target", "target-*", ".tools"):
    if want not in ignore:
        print(f"FAIL  .dockerignore lacks {want}")
        problems.append(want)
sys.exit(1 if problems else 0)
PY
}
run_step "7. Dockerfile" dockerfile

# ---------------------------------------------------------------------------------------------
run_step "8. e2e self-test" bash e2e/selftest.sh "$operator"

# ---------------------------------------------------------------------------------------------
printf '\n==> summary\n'
printf '%s\n' "${results[@]}"
if [ $failed -eq 0 ]; then
  echo "chart checks: all passed"
else
  echo "chart checks: FAILED"
fi
exit $failed
