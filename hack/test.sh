#!/usr/bin/env bash
# The whole test suite: what `make test` and CI (.ci/run) run.
#   formatting and lints, unit and property tests, the CRD drift check, and the
#   integration tests against the local factory (a real control plane).
#
#   hack/test.sh [ARGS...]     ARGS go to `cargo test`, e.g. --test pools
#
# The suite runs on a factory of its own, never on the demo's or one you started:
# state in AIFACTORY_STATE (default ~/.cache/aifactory/test-factory), ports shifted
# by AIFACTORY_PORT_OFFSET (default 50; the demo's factory uses 0). Both are
# exported, so the hack scripts, the operator, cargo test and the tests' own calls
# to hack/*.sh all use that factory. It is started clean (a factory a crashed run
# left there is stopped and its data wiped first), the operator is started on it,
# and both are stopped at the end. Then the demo runs on it too, unless
# AIFACTORY_SKIP_DEMO=1. Builds what is missing (cached).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n== %s [%s]\n' "$*" "$(date +%H:%M:%S)"; }

export AIFACTORY_STATE=${AIFACTORY_STATE:-$HOME/.cache/aifactory/test-factory}
export AIFACTORY_PORT_OFFSET=${AIFACTORY_PORT_OFFSET:-50}
# shellcheck source-path=SCRIPTDIR source=factory-lib.sh
source hack/factory-lib.sh
export KUBECONFIG=$ADMIN_KUBECONFIG

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
command -v go >/dev/null || { echo "go not found: Go >= 1.26 builds the local factory's binaries" >&2; exit 1; }
# lua5.1 runs the Argo CD health checks (Argo CD's gopher-lua speaks Lua 5.1).
for tool in openssl curl lua5.1; do
  command -v "$tool" >/dev/null || { step "installing $tool"; apt-get update -qq && apt-get install -y -qq "$tool"; }
done

# One run at a time per state dir: a second one would wipe the first's factory.
# The lock is held only while the owner file is checked and written, so nothing
# this script starts (factory, operator, tests) inherits it.
owner=$STATE/test-suite.pid
mkdir -p "$STATE"
(
  flock 9
  other=$(cat "$owner" 2>/dev/null || true)
  if [[ $other =~ ^[0-9]+$ ]] && [ "$other" != $$ ] && grep -qs 'test\.sh' "/proc/$other/cmdline"; then
    echo "hack/test.sh (pid $other) already runs on the factory in $STATE; to run a second suite beside it," \
      "give it another AIFACTORY_STATE and AIFACTORY_PORT_OFFSET" >&2
    exit 1
  fi
  echo $$ >"$owner"
) 9>"$STATE/test-suite.lock"

# The marker says the factory running in the state dir was started by this
# script (it goes when the run stops it; a crashed run leaves it). A factory
# running there without it is someone's own, say the demo's when AIFACTORY_STATE
# points there: refused, never wiped.
marker=$STATE/test-suite
running_here=0
for c in "${COMPONENTS[@]}"; do if alive "$c"; then running_here=1; fi; done
if [ "$running_here" = 1 ] && [ ! -f "$marker" ]; then
  rm -f "$owner"
  echo "a factory hack/test.sh did not start runs in $STATE, and the suite runs on a factory of its own:" \
    "stop that one (AIFACTORY_STATE=$STATE hack/operator.sh stop; AIFACTORY_STATE=$STATE hack/factory-down.sh)" \
    "or give the suite another AIFACTORY_STATE and AIFACTORY_PORT_OFFSET" >&2
  exit 1
fi

stop() {
  step "stopping the operator and the test factory ($STATE)"
  hack/operator.sh stop || true
  hack/factory-down.sh >/dev/null 2>&1 || true
  rm -f "$marker" "$owner"
}
trap stop EXIT
# So that Ctrl-C or a TERM still stops the factory (the EXIT trap runs on exit).
trap 'exit 130' INT
trap 'exit 143' TERM

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "local factory binaries (cached after the first build)"
hack/build-tools.sh >/dev/null

# Clean every time: a factory left by a crashed run holds its tests' (and its
# demo's) nodes, pools and jobs, which the tests would see. A start costs seconds.
if [ "$running_here" = 1 ] || [ -f "$STATE/operator.pid" ]; then
  step "stopping the test factory a previous run left in $STATE"
  hack/operator.sh stop
  hack/factory-down.sh >/dev/null
fi
step "starting the test factory (state $STATE, port offset $PORT_OFFSET, API server $APISERVER_URL)"
echo "started by hack/test.sh: it stops and wipes the factory here at every run" >"$marker"
hack/factory-up.sh >/dev/null

step "installing the CRDs and starting the operator"
"$BIN_DIR/kubectl" apply --server-side -f crds/ >/dev/null
"$BIN_DIR/kubectl" wait --for condition=Established -f crds/ --timeout=60s >/dev/null
hack/operator.sh start

step "cargo test --workspace (unit, property, drift and integration tests)"
cargo test --workspace --no-fail-fast "$@"

# The README's first command, on this suite's factory: it exits non-zero when its
# story (a preemption and the requeued job running again) does not happen.
if [ "${AIFACTORY_SKIP_DEMO:-0}" != 1 ]; then
  step "the demo (make demo) on the test factory"
  hack/demo.sh
fi
