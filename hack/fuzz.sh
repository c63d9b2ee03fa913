#!/usr/bin/env bash
# The fuzz run (issue 13): random schema-valid objects of all five kinds, drawn
# from one seed, through the local factory's real API server; then the operator
# must not have panicked or restarted, every object must run or say why not, no
# GPU may be held by what cannot run, and deleting everything must leave nothing
# stuck (tests/tests/fuzz.rs, whose 300-object run is part of `make test`).
#
#   hack/fuzz.sh [--objects N] [--seed S]     # make fuzz: 10,000 objects, seed 13
#
# Env: AIFACTORY_FUZZ_OBJECTS, AIFACTORY_FUZZ_SEED, AIFACTORY_FUZZ_NODES,
# AIFACTORY_FUZZ_SETTLE, AIFACTORY_FUZZ_KEEP (see tests/tests/fuzz.rs), and the
# factory's own (AIFACTORY_STATE, AIFACTORY_PORT_OFFSET). Starts the local factory
# and the operator if they are not running, and stops what it started. The
# 10,000-object run takes about an hour on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

export AIFACTORY_FUZZ_OBJECTS=${AIFACTORY_FUZZ_OBJECTS:-10000}
while [ $# -gt 0 ]; do
  case $1 in
    --objects) export AIFACTORY_FUZZ_OBJECTS=$2; shift 2 ;;
    --seed) export AIFACTORY_FUZZ_SEED=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s [%s]\n' "$*" "$(date +%H:%M:%S)"; }
state=${AIFACTORY_STATE:-$HOME/.cache/aifactory/factory}
export KUBECONFIG=$state/admin.kubeconfig

started=0
if bash -c 'source hack/factory-lib.sh && alive kube-apiserver && healthy kube-apiserver' 2>/dev/null; then
  step "local factory already running: using it"
else
  step "starting the local factory"
  hack/factory-up.sh >/dev/null
  started=1
fi
source hack/versions.sh
operator_started=0
stop() {
  if [ "$operator_started" = 1 ]; then step "stopping the operator"; hack/operator.sh stop || true; fi
  if [ "$started" = 1 ]; then step "stopping the local factory"; hack/factory-down.sh >/dev/null 2>&1 || true; fi
}
trap stop EXIT

step "installing the CRDs"
"$BIN_DIR/kubectl" apply --server-side --force-conflicts -f crds/ >/dev/null
"$BIN_DIR/kubectl" wait --for condition=Established -f crds/ --timeout=60s >/dev/null
if [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
  echo "operator already running: using it"
else
  step "starting the operator"
  hack/operator.sh start
  operator_started=1
fi
step "fuzz: $AIFACTORY_FUZZ_OBJECTS objects, seed ${AIFACTORY_FUZZ_SEED:-13}"
RUST_BACKTRACE=0 cargo test -q -p aifactory-tests --test fuzz -- --nocapture
