#!/usr/bin/env bash
# The whole test suite: what `make test` and CI (.ci/run) run.
#   formatting and lints, unit and property tests, the CRD drift check, and the
#   integration tests against the local factory (a real control plane).
# Builds what is missing (cached), starts the local factory if it is not running,
# and stops it again at the end if this script started it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n== %s [%s]\n' "$*" "$(date +%H:%M:%S)"; }

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
command -v go >/dev/null || { echo "go not found: Go >= 1.26 builds the local factory's binaries" >&2; exit 1; }
# lua5.1 runs the Argo CD health checks (Argo CD's gopher-lua speaks Lua 5.1).
for tool in openssl curl lua5.1; do
  command -v "$tool" >/dev/null || { step "installing $tool"; apt-get update -qq && apt-get install -y -qq "$tool"; }
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "local factory binaries (cached after the first build)"
hack/build-tools.sh >/dev/null

started=0
if bash -c 'source hack/factory-lib.sh && alive kube-apiserver && healthy kube-apiserver' 2>/dev/null; then
  step "local factory already running: using it, leaving it running"
else
  step "starting the local factory"
  hack/factory-up.sh >/dev/null
  started=1
fi
export KUBECONFIG=${AIFACTORY_STATE:-$HOME/.cache/aifactory/factory}/admin.kubeconfig
source hack/versions.sh
operator_started=0
stop() {
  if [ "$operator_started" = 1 ]; then step "stopping the operator"; hack/operator.sh stop || true; fi
  if [ "$started" = 1 ]; then step "stopping the local factory"; hack/factory-down.sh >/dev/null 2>&1 || true; fi
}
trap stop EXIT

step "installing the CRDs and starting the operator"
"$BIN_DIR/kubectl" apply --server-side -f crds/ >/dev/null
"$BIN_DIR/kubectl" wait --for condition=Established -f crds/ --timeout=60s >/dev/null
if [ -f "${AIFACTORY_STATE:-$HOME/.cache/aifactory/factory}/operator.pid" ] && kill -0 "$(cat "${AIFACTORY_STATE:-$HOME/.cache/aifactory/factory}/operator.pid")" 2>/dev/null; then
  echo "operator already running: using it"
else
  hack/operator.sh start
  operator_started=1
fi
step "cargo test --workspace (unit, property, drift and integration tests)"
cargo test --workspace --no-fail-fast "$@"

# The README's first command, on a factory of its own (the one this script
# started): it exits non-zero when its story (a preemption and the requeued job
# running again) does not happen.
if [ "$started" = 1 ] && [ "${AIFACTORY_SKIP_DEMO:-0}" != 1 ]; then
  step "the demo (make demo) on this factory"
  hack/demo.sh
fi
