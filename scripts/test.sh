#!/usr/bin/env bash
# Runs every test of live-realtime, installing what it needs when it is missing.
#
#   ./scripts/test.sh
#
# Steps: formatting and lints, the Rust unit and integration tests (workspace, one build), the
# gateway end-to-end suite with the official socket.io-client (npm ci), and the operator's rendered
# manifests validated against the Kubernetes schemas (kubernetes-validate from PyPI).
# Needs: a Rust toolchain (rust-toolchain.toml pins it), Node >= 20 with npm, Python >= 3.9 with pip.
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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "cargo build --workspace --bins (debug binaries for the end-to-end suites)"
cargo build --workspace --bins

step "gateway end-to-end tests (official socket.io-client)"
npm ci --prefix tests --no-audit --no-fund
LIVE_GATEWAY_BIN="$root/target/debug/live-gateway" npm test --prefix tests

if [ -x scripts/validate-manifests.sh ]; then
  step "operator: rendered manifests against the Kubernetes schemas"
  scripts/validate-manifests.sh "$root/target/debug/live-operator"
fi

step "all tests passed"
