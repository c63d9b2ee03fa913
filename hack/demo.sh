#!/usr/bin/env bash
# The demo factory: builds what it needs, starts the local factory (16 H100 nodes
# and 4 A100 nodes, simulated by kwok), installs the CRDs, runs the operator,
# applies examples/ and tells the factory's story in three acts: pools and tenants
# provisioned and jobs admitted (after their datasets import) by fair share; a
# busy hour in which uni-lab and acme borrow idle GPUs up to the power cap; St
# Mary's reclaiming its guarantee, so one borrowed job is preempted, requeued and
# started again. Leaves the factory and the operator running; stop them with
# `hack/operator.sh stop && make factory-down`.
# The factory is the one AIFACTORY_STATE and AIFACTORY_PORT_OFFSET name (default:
# ~/.cache/aifactory/factory, offset 0), so the test suite runs the demo on its own.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=factory-lib.sh
source hack/factory-lib.sh
step() { printf '\n== %s\n' "$*"; }

step "starting the local factory (the first run builds Kubernetes from source: minutes)"
hack/factory-up.sh --nodes 16 >/dev/null
hack/factory-nodes.sh --prefix a100-node --count 4 --gpu-model A100-40GB --first-rack 4 --first-block 2 >/dev/null
export KUBECONFIG=$ADMIN_KUBECONFIG
kubectl() { "$BIN_DIR/kubectl" "$@"; }

step "installing the aifactory CRDs"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for condition=Established -f crds/ --timeout=60s >/dev/null

step "starting the operator (log: $STATE/logs/operator.log)"
hack/operator.sh start

step "the platform team applies the factory: GPU pools and tenants"
kubectl apply --server-side -f examples/00-gpu-pools.yaml -f examples/05-priority-classes.yaml -f examples/10-tenants.yaml
kubectl wait --for condition=Ready tenant --all --timeout=120s >/dev/null
kubectl wait --for condition=Ready gpupool --all --timeout=120s >/dev/null

step "tenants apply their work: acme a workspace, datasets and jobs; uni-lab a job on acme's shared data"
kubectl apply --server-side -f examples/20-acme-workspace.yaml -f examples/30-acme-datasets.yaml \
  -f examples/40-acme-training-jobs.yaml -f examples/50-uni-lab-training-job.yaml

step "GPU pools: members labelled (and tainted when dedicated), capacity and power"
kubectl get gpupools
step "tenants: namespaces provisioned with quota, RBAC, network isolation"
kubectl get tenants
kubectl get namespaces -l aifactory.dev/tenant -L aifactory.dev/tenant,pod-security.kubernetes.io/enforce
kubectl get resourcequota,networkpolicy,rolebinding -n acme

step "the simulated GPU nodes and the pool each belongs to"
kubectl get nodes -L nvidia.com/gpu.product,topology.aifactory.dev/block,topology.aifactory.dev/rack \
  -o custom-columns='NODE:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPUS:.status.allocatable.nvidia\.com/gpu,MODEL:.metadata.labels.nvidia\.com/gpu\.product,POOL:.metadata.labels.aifactory\.dev/pool,BLOCK:.metadata.labels.topology\.aifactory\.dev/block,RACK:.metadata.labels.topology\.aifactory\.dev/rack'

step "everything aifactory (kubectl get aifactory -A)"
kubectl get aifactory -A

step "the queue as a tenant sees it: jobs wait for their datasets' import, then for GPUs"
cargo build -q -p kubectl-factory
factory() { target/debug/kubectl-factory "$@"; }
factory queue || true
kubectl wait --for=jsonpath='{.status.phase}'=Running trainingjob/policy-pretrain -n acme --timeout=180s >/dev/null \
  || echo "(policy-pretrain not running yet; kubectl factory why policy-pretrain -n acme tells why)"
step "kubectl factory why policy-pretrain -n acme"
factory why policy-pretrain -n acme || true
step "kubectl factory pools"
factory pools || true

step "act 2, a busy hour: uni-lab borrows idle H100s for two sweeps, acme borrows 8 more"
kubectl apply --server-side -f examples/60-busy-hour.yaml
kubectl wait --for=jsonpath='{.status.phase}'=Running trainingjob/llm-sweep-a trainingjob/llm-sweep-b \
  -n uni-lab --timeout=120s >/dev/null
kubectl wait --for=jsonpath='{.status.phase}'=Running trainingjob/grasp-sim -n acme --timeout=120s >/dev/null
factory pools || true
step "kubectl factory usage (borrowed GPUs count against nobody's guarantee)"
factory usage --tenant uni-lab || true

step "act 3: St Mary's needs its 16 guaranteed GPUs, but h100-lux is near its power cap"
kubectl apply --server-side -f examples/70-st-marys-reclaims.yaml
victim=""
story=""
for _ in $(seq 1 60); do
  victim=$(kubectl get trainingjobs -A -o jsonpath='{range .items[?(@.status.phase=="Preempted")]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' | head -1)
  [ -n "$victim" ] && break
  sleep 1
done
kubectl wait --for=jsonpath='{.status.phase}'=Running trainingjob/ct-segmentation -n st-marys-imaging \
  --timeout=120s >/dev/null || echo "(ct-segmentation not running yet)"
kubectl get trainingjobs -A
if [ -n "$victim" ]; then
  set -- $victim
  step "the borrower reclaimed from, preempted and requeued: kubectl factory why $2 -n $1"
  factory why "$2" -n "$1" || true
  step "the queue: the preempted job waits for room, first in line"
  factory queue || true
  step "ct-segmentation ends after 60 s of (simulated) training; $2 starts again"
  kubectl wait --for=jsonpath='{.status.phase}'=Running "trainingjob/$2" -n "$1" --timeout=240s >/dev/null \
    && kubectl get trainingjob "$2" -n "$1" \
    || { echo "($2 not running again yet: kubectl factory why $2 -n $1)"; story="$2 was not admitted again"; }
else
  echo "(no job was preempted: kubectl factory why ct-segmentation -n st-marys-imaging)"
  story="no job was preempted for St Mary's"
fi

step "the interactive session of alice's workspace, admitted like a 1-GPU job"
kubectl get workspaces -n acme
step "kubectl factory usage"
factory usage || true

if [ -n "$story" ]; then
  echo "the demo's story did not happen: $story" >&2
  exit 1
fi
# The commands that stop it must name this factory when it is not the default one.
env=""
[ -n "${AIFACTORY_STATE:-}" ] && env+="AIFACTORY_STATE=$STATE "
[ "$PORT_OFFSET" != 0 ] && env+="AIFACTORY_PORT_OFFSET=$PORT_OFFSET "
printf '\nThe factory keeps running: export KUBECONFIG=%s\nStop it with: %shack/operator.sh stop && %smake factory-down\n' \
  "$KUBECONFIG" "$env" "$env"
