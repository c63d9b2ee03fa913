#!/usr/bin/env bash
# make chaos: chaos at scale against the local factory (tests/src/chaos): two
# operator replicas (release build) run 1,000 training jobs on 200 nodes of their
# own while the leader is SIGKILLed 10-30 s after every takeover, frozen past its
# lease once, and kube-apiserver and etcd are restarted mid-run; an independent
# checker judges the run. The table goes to bench/chaos.md.
#
#   hack/chaos.sh [options of tests/src/bin/chaos.rs, e.g. --jobs 200 --nodes 50]
#   make chaos CHAOS_ARGS="--short"
#
# Uses the factory of AIFACTORY_STATE if it runs (its operator, if any, is stopped
# for the run and started again after); otherwise starts one (no default nodes)
# and stops it at the end. About 35 minutes on 2 CPUs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "== building the operator and the chaos runner (release)" >&2
cargo build --release -q -p aifactory --bin aifactory -p aifactory-tests --bin chaos

started=0
if bash -c 'source hack/factory-lib.sh && alive kube-apiserver && healthy kube-apiserver' 2>/dev/null; then
  echo "== using the running factory (${AIFACTORY_STATE:-$HOME/.cache/aifactory/factory})" >&2
else
  echo "== starting a factory" >&2
  hack/factory-up.sh --nodes 0 >/dev/null
  started=1
fi
stop() { if [ "$started" = 1 ]; then hack/factory-down.sh >/dev/null 2>&1 || true; fi; }
trap stop EXIT
export KUBECONFIG=${AIFACTORY_STATE:-$HOME/.cache/aifactory/factory}/admin.kubeconfig
target/release/chaos --operator "$root/target/release/aifactory" --out bench/chaos.md "$@"
