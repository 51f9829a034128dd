#!/usr/bin/env bash
# Runs every test of live-realtime, installing what it needs when it is missing.
#
#   ./scripts/test.sh
#
# Steps: formatting and lints, the Rust unit and integration tests (workspace, one build; they
# include the operator's envtest suite against a real kube-apiserver when ../shared/envtest or
# KUBEBUILDER_ASSETS provides one), the gateway end-to-end suite with the official
# socket.io-client (npm ci; with real Redis: standalone, a 3-master Cluster, Sentinel failover,
# TLS), the operator console in headless Chromium and the Grafana dashboard / PrometheusRule
# checks (promtool), the operator's rendered manifests validated against the Kubernetes schemas
# (kubernetes-validate from PyPI), and the Helm chart checks (helm is fetched into .tools/ when
# missing; see scripts/fetch-tools.sh).
# Needs: a Rust toolchain (rust-toolchain.toml pins it), Node >= 20 with npm, Python >= 3.9 with pip.
# Installs with apt when missing and run as root: redis-server, chromium, prometheus (promtool).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
tools="$root/.tools"
mkdir -p "$tools"

step() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "missing required tool: $1 ($2)" >&2; exit 1; }; }

need cargo "install Rust with rustup"
need node "install Node.js 20+"
need npm "install npm"
need python3 "install Python 3"

# Redis for the multi-replica tests: redis-server (standalone, Cluster, TLS), redis-sentinel
# (failover), redis-cli (cluster creation), openssl (test certificates). On Debian/Ubuntu
# redis-sentinel is a package of its own.
redis_packages=()
command -v redis-server >/dev/null 2>&1 || redis_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || redis_packages+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || redis_packages+=(redis-sentinel)
command -v openssl >/dev/null 2>&1 || redis_packages+=(openssl)
if [ ${#redis_packages[@]} -gt 0 ]; then
  step "installing ${redis_packages[*]}"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${redis_packages[@]}" >/dev/null
    # The packages may start system instances; the tests start their own on free ports.
    (service redis-server stop || true) >/dev/null 2>&1
    (service redis-sentinel stop || true) >/dev/null 2>&1
  else
    echo "missing: ${redis_packages[*]}: install Redis >= 7 with redis-sentinel and redis-cli, and openssl (e.g. apt-get install redis-server redis-sentinel redis-tools openssl)" >&2
    exit 1
  fi
fi
redis-server --version
redis-sentinel --version >/dev/null

# openssl makes the CA and server certificate of the JWKS-over-HTTPS end-to-end test.
if ! command -v openssl >/dev/null 2>&1; then
  step "installing openssl"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    echo "openssl is missing: install it (e.g. apt-get install openssl)" >&2
    exit 1
  fi
fi

# Chromium for the console's browser tests and promtool (Debian's `prometheus` package) for the
# dashboard and alert checks. Without apt or root they cannot be installed: the tests that need
# them then skip and say why, and everything else still runs.
missing_pkgs=()
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then missing_pkgs+=(chromium); fi
if ! command -v promtool >/dev/null 2>&1; then missing_pkgs+=(prometheus); fi
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  step "installing ${missing_pkgs[*]} (console browser tests, PromQL checks)"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null; then
      echo "could not install ${missing_pkgs[*]}: the tests that need them will be skipped" >&2
    fi
    # The prometheus package may start a server; the checks only need promtool.
    (service prometheus stop || true) >/dev/null 2>&1
  else
    echo "${missing_pkgs[*]} missing and not installable here (needs apt-get as root): the console browser tests and/or the PromQL checks will be skipped" >&2
  fi
fi

# kubernetes-validate (PyPI) checks the operator's output against the Kubernetes schemas offline.
if ! python3 -c "import kubernetes_validate, jsonschema, yaml" >/dev/null 2>&1; then
  step "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi

# The operator's envtest suite (crates/operator/tests/envtest) starts etcd, kube-apiserver and
# kube-controller-manager from KUBEBUILDER_ASSETS and applies the chart's RBAC from `helm
# template`; without KUBEBUILDER_ASSETS it reports that it skipped.
if [ -z "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$root/../shared/envtest/unpack.sh" ]; then
  KUBEBUILDER_ASSETS=$("$root/../shared/envtest/unpack.sh")
  export KUBEBUILDER_ASSETS
fi
if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  for tool in openssl curl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
      else
        echo "missing $tool (the envtest suite makes its PKI with openssl and polls with curl)" >&2
        exit 1
      fi
    fi
  done
  tools_dir=$(scripts/fetch-tools.sh)
  export LIVE_ENVTEST_HELM="$tools_dir/helm"
  echo "envtest: KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS, helm $("$LIVE_ENVTEST_HELM" version --short)"
else
  echo "envtest: SKIPPED - no KUBEBUILDER_ASSETS and no ../shared/envtest: the operator's suite against a real apiserver does not run"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "the transport fork's unit tests (vendor/engineioxide is a patched dependency, not a member)"
cargo test -p engineioxide --lib

step "cargo build --workspace --bins --tests (debug binaries for the end-to-end suites)"
# `--tests` keeps the dev-dependencies' features (tokio's test-util, pulled in by tower-test's
# tokio-test) that `cargo test` just built with; without it cargo resolves the features again
# and rebuilds tokio and the ~48 crates above it.
cargo build --workspace --bins --tests

step "gateway end-to-end tests (official socket.io-client), the console in headless Chromium, the dashboard and alerts"
npm ci --prefix tests --no-audit --no-fund
# kubectl (for `kubectl kustomize deploy/monitoring`) comes from scripts/fetch-tools.sh when missing.
tools_dir=$(scripts/fetch-tools.sh)
PATH="$tools_dir:$PATH" LIVE_GATEWAY_BIN="$root/target/debug/live-gateway" npm test --prefix tests

step "operator: CRD, examples, rendered children and RBAC against the Kubernetes schemas"
python3 crates/operator/tests/validate_render.py --bin "$root/target/debug/live-operator"

step "chart: helm lint/template, schema validation, RBAC = live-operator rbac, e2e self-test"
scripts/test-chart.sh "$root/target/debug/live-operator"

step "all tests passed"
