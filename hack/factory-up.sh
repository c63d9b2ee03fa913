#!/usr/bin/env bash
# Starts the local factory: a real Kubernetes control plane on this machine (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler) plus kwok, which plays
# kubelet for simulated GPU nodes. Builds the binaries first if they are missing
# (hack/build-tools.sh, cached). Idempotent: a healthy factory is left as it is.
#
#   hack/factory-up.sh [--nodes N] [--gpus-per-node G] [--gpu-model M]
#                      [--racks R] [--blocks B] [--timeout SECONDS]
#   eval "$(hack/factory-up.sh | tail -n 1)"     # sets KUBECONFIG
#
# Env fallbacks: AIFACTORY_NODES (16), AIFACTORY_GPUS_PER_NODE (8),
# AIFACTORY_GPU_MODEL (H100-80GB), AIFACTORY_RACKS (4), AIFACTORY_BLOCKS (2),
# AIFACTORY_TIMEOUT (300, per wait), AIFACTORY_STATE (~/.cache/aifactory/factory),
# AIFACTORY_PORT_OFFSET (0; 0-99, added to every port: API server 16443, etcd
# 23790/23900, controller-manager 16600, scheduler 16700, kwok 16800, operator
# 18080), AIFACTORY_KWOK_LOG_LEVEL (WARN; INFO logs every stage kwok plays).
# Two factories run side by side with a state dir and an offset each (hack/test.sh
# uses ~/.cache/aifactory/test-factory and 50); every hack script acts on the one
# these two variables name.
# Everything lives in the state dir: pki/, logs/, *.pid, etcd data, audit.log,
# admin.kubeconfig, users/, the operator's pid, lock and log. Stop with
# hack/factory-down.sh; more nodes of another model with hack/factory-nodes.sh; a
# tenant user's kubeconfig with hack/factory-user.sh.
# Storage: a default StorageClass and a pool of static NFS volumes
# (hack/factory-storage.sh, also run on an already healthy factory to recycle them).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=factory-lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/factory-lib.sh"

nodes=${AIFACTORY_NODES:-16}
gpus=${AIFACTORY_GPUS_PER_NODE:-8}
model=${AIFACTORY_GPU_MODEL:-H100-80GB}
racks=${AIFACTORY_RACKS:-4}
blocks=${AIFACTORY_BLOCKS:-2}
timeout=${AIFACTORY_TIMEOUT:-300}

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --gpus-per-node) gpus=$2; shift 2 ;;
    --gpu-model) model=$2; shift 2 ;;
    --racks) racks=$2; shift 2 ;;
    --blocks) blocks=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds"

print_kubeconfig() {
  echo "kubeconfig: $ADMIN_KUBECONFIG"
  echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
}

all_up=1
for c in "${COMPONENTS[@]}"; do
  if ! alive "$c" || ! healthy "$c"; then all_up=0; break; fi
done
if [ "$all_up" = 1 ] && [ -s "$ADMIN_KUBECONFIG" ]; then
  n=$("$(kubectl_bin)" --kubeconfig "$ADMIN_KUBECONFIG" get nodes -l type=kwok -o name | wc -l)
  log "factory already running and healthy ($n simulated nodes); state in $STATE"
  "$FACTORY_HACK/factory-storage.sh"
  print_kubeconfig
  exit 0
fi

total_start=$EPOCHREALTIME
if [ ! -x "$BIN_DIR/kwok" ] || [ ! -x "$BIN_DIR/kube-apiserver" ] || [ ! -x "$BIN_DIR/kube-controller-manager" ] ||
  [ ! -x "$BIN_DIR/kube-scheduler" ] || [ ! -x "$BIN_DIR/kubectl" ] || [ ! -x "$BIN_DIR/etcd" ]; then
  log "binaries missing in $BIN_DIR: building them (cold build: minutes)"
  BIN_DIR=$("$FACTORY_HACK/build-tools.sh" | tail -n 1)
fi

mkdir -p "$STATE/logs" "$STATE/run" "$STATE/kwok"

# --- certificates (kept across restarts) ------------------------------------------
ensure_ca
issue_cert "$PKI/apiserver" "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:$FIRST_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
issue_cert "$PKI/admin" "/CN=aifactory-admin/O=system:masters"
# The controller-manager and scheduler run as the identities their bootstrap RBAC
# roles are bound to, so RBAC and the audit log see them as in a real cluster.
issue_cert "$PKI/controller-manager" "/CN=system:kube-controller-manager"
issue_cert "$PKI/scheduler" "/CN=system:kube-scheduler"
# The aggregation layer's client (front proxy), signed by the same CA but only
# trusted under this name; without it every component logs a missing requestheader
# CA bundle, and aggregated APIs (metrics-server) could not be added later.
issue_cert "$PKI/front-proxy-client" "/CN=front-proxy-client"
# kwok patches any node and pod status, leases and events: cluster-admin.
issue_cert "$PKI/kwok" "/CN=kwok-controller/O=system:masters"
if [ ! -s "$PKI/sa.key" ] || [ ! -s "$PKI/sa.pub" ]; then
  (umask 077 && openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null)
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
write_kubeconfig "$ADMIN_KUBECONFIG" "$PKI/admin.crt" "$PKI/admin.key"
write_kubeconfig "$STATE/run/controller-manager.kubeconfig" "$PKI/controller-manager.crt" "$PKI/controller-manager.key"
write_kubeconfig "$STATE/run/scheduler.kubeconfig" "$PKI/scheduler.crt" "$PKI/scheduler.key"
write_kubeconfig "$STATE/run/kwok.kubeconfig" "$PKI/kwok.crt" "$PKI/kwok.key"

# --- component configs ---------------------------------------------------------------
# Audit: every request at Metadata (who, verb, resource, code), so tests can count
# an operator's writes by user. Skipped as noise: health probes and the node
# Lease renewals (1,000 nodes renew every 45 s).
cat >"$STATE/run/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*"]
- level: None
  namespaces: [kube-node-lease]
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Metadata
EOF

cat >"$STATE/run/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $STATE/run/scheduler.kubeconfig
  qps: 1000
  burst: 2000
leaderElection:
  leaderElect: false
EOF

# Parallelism of kwok's workers (defaults 4): more than the 2 cores here buys nothing.
cat >"$STATE/run/kwok.yaml" <<'EOF'
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  nodePlayStageParallelism: 8
  podPlayStageParallelism: 8
  nodeLeaseParallelism: 8
EOF

# --- start and wait ------------------------------------------------------------------
# In start order, each healthy before the next; the flags are in factory-lib.sh
# (launch), shared with hack/factory-restart.sh.
for c in "${COMPONENTS[@]}"; do
  launch "$c"
  wait_healthy "$c"
done
[ "$KWOK_RESTARTED" = 1 ] && resync_pods_after_kwok_restart
log "control plane up in $(since "$total_start")s"

"$FACTORY_HACK/factory-nodes.sh" --prefix gpu-node --count "$nodes" --gpus-per-node "$gpus" \
  --gpu-model "$model" --racks "$racks" --blocks "$blocks" --timeout "$timeout"
"$FACTORY_HACK/factory-storage.sh"

log "factory up in $(since "$total_start")s; state in $STATE"
print_kubeconfig
