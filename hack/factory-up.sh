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
# start NAME ARGS...: runs $BIN_DIR/NAME in a session of its own (setsid), so it
# outlives this script and a kill of the caller's process group; the inner shell
# writes its own pid and then execs, so the pid file holds the component's pid.
start() {
  local name=$1 pidf logf; shift
  pidf=$(pid_file "$name"); logf=$(log_file "$name")
  if alive "$name"; then log "$name already running (pid $(cat "$pidf"))"; return; fi
  # Taken by another factory at the same offset, it would answer our health
  # checks (etcd) or fail with an unhelpful log (the others).
  local port
  for port in $(ports "$name"); do
    port_free "$port" || die "port $port ($name) is taken, by another factory with AIFACTORY_PORT_OFFSET=$PORT_OFFSET?" \
      "Give this one (state $STATE) another offset (0-99)"
  done
  [ -f "$logf" ] && mv -f "$logf" "$logf.prev"
  rm -f "$pidf"
  log "starting $name"
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  KWOK_WORKDIR=$STATE/kwok setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$BIN_DIR/$name" "$@" \
    </dev/null >"$logf" 2>&1 &
  local i
  for ((i = 0; i < 50; i++)); do [ -s "$pidf" ] && return; sleep 0.1; done
  die "$name did not start (no pid file)"
}

fail_component() {
  log "$1 $2; last 40 lines of $(log_file "$1"):"
  tail -n 40 "$(log_file "$1")" >&2 || true
  log "the rest is left running; stop it with hack/factory-down.sh"
  exit 1
}

wait_healthy() {
  local name=$1 t0=$SECONDS pid
  pid=$(cat "$(pid_file "$name")")
  while ! healthy "$name"; do
    # Gone, or a zombie: it exited. (alive() is not used here: right after the
    # start the pid may still be the wrapper shell, before its exec.)
    if ! kill -0 "$pid" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
      fail_component "$name" "exited"
    fi
    [ $((SECONDS - t0)) -ge "$timeout" ] && fail_component "$name" "not healthy after ${timeout}s"
    sleep 0.3
  done
  log "$name healthy ($((SECONDS - t0))s)"
}

start etcd \
  --name=factory --data-dir="$STATE/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="factory=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --quota-backend-bytes=8589934592 --log-level=warn
wait_healthy etcd

# --advertise-address is the default service 'kubernetes' endpoint; a loopback one
# is refused by endpoint validation, so that reconciler is off (nothing runs in a
# pod here to call the apiserver through the service).
# Admission plugins stay at the defaults (NamespaceLifecycle, LimitRanger,
# ServiceAccount, ResourceQuota, PodSecurity, ... all on).
# APF stays on, with the inflight limits (its total seats) raised for tests.
start kube-apiserver \
  --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --advertise-address=127.0.0.1 \
  --endpoint-reconciler-type=none \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --authorization-mode=Node,RBAC \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --api-audiences=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --allow-privileged=true \
  --max-requests-inflight=3000 --max-mutating-requests-inflight=1000 \
  --audit-policy-file="$STATE/run/audit-policy.yaml" --audit-log-path="$STATE/audit.log" \
  --audit-log-maxsize=100 --audit-log-maxbackup=2
wait_healthy kube-apiserver

# --node-monitor-grace-period: kwok renews node Leases every 180s/4 = 45 s (see
# below). 240 s: several missed renewals before a node turns NotReady, so 1,000
# nodes don't flap when the 2 cores are busy, and a restarted kwok (a new holder
# identity, which takes the Leases over only once they expire after 180 s, then
# retries every 45 s) is back before any node is marked NotReady.
start kube-controller-manager \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$STATE/run/kcm-certs" \
  --kubeconfig="$STATE/run/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$STATE/run/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$STATE/run/controller-manager.kubeconfig" \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --kube-api-qps=1000 --kube-api-burst=2000 \
  --node-monitor-grace-period=240s
wait_healthy kube-controller-manager

start kube-scheduler \
  --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$STATE/run/scheduler-certs" \
  --config="$STATE/run/scheduler.yaml" \
  --authentication-kubeconfig="$STATE/run/scheduler.kubeconfig" \
  --authorization-kubeconfig="$STATE/run/scheduler.kubeconfig"
wait_healthy kube-scheduler

# Lease duration 180 s: a renewal every 45 s per node, 22 writes/s for 1,000 nodes
# (kwokctl's 40 s would be 100/s on 2 cores). Log level WARN: at INFO kwok logs
# every lease renewal and pod patch (~30 MB/hour at 1,000 nodes);
# AIFACTORY_KWOK_LOG_LEVEL=INFO to see each stage it plays.
# A kwok that (re)starts under a new holder identity would only take over the node
# Leases left by a previous kwok once they expire (180 s), and meanwhile plays no
# stage on those nodes; dropping them (one deletecollection) lets it create fresh
# ones at once.
kwok_restarted=0
if ! alive kwok; then
  "$(kubectl_bin)" --kubeconfig "$ADMIN_KUBECONFIG" delete --raw \
    /apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases >/dev/null
  kwok_restarted=1
fi
start kwok \
  --kubeconfig="$STATE/run/kwok.kubeconfig" \
  --config="$STATE/run/kwok.yaml,$FACTORY_HACK/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds=180 \
  --cidr="$POD_CIDR" --node-ip=10.0.0.1 \
  --server-address="127.0.0.1:$KWOK_PORT" \
  --v="${AIFACTORY_KWOK_LOG_LEVEL:-WARN}"
wait_healthy kwok

# kwok v0.8.0 skips pods that already exist when it starts managing their node:
# it looks them up before its Lease cache has seen the Lease it just created,
# takes the node for someone else's and never looks again (new pods are fine).
# After a restart of kwok, wait for its Leases, then touch each pod that is not
# finished (an annotation) so kwok sees it again; any simulated duration starts over.
resync_pods_after_kwok_restart() {
  local kc=("$(kubectl_bin)" --kubeconfig "$ADMIN_KUBECONFIG") pods_sel nodes leases t0=$SECONDS
  pods_sel='spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed'
  [ -n "$("${kc[@]}" get pods -A --field-selector "$pods_sel" -o name | head -n 1)" ] || return 0
  nodes=$("${kc[@]}" get nodes -o json | jq '[.items[] | select(.metadata.annotations["kwok.x-k8s.io/node"] == "fake")] | length')
  while leases=$("${kc[@]}" get leases -n kube-node-lease -o name | wc -l) && [ "$leases" -lt "$nodes" ]; do
    [ $((SECONDS - t0)) -ge "$timeout" ] && fail_component kwok "holds only $leases of $nodes node Leases after ${timeout}s"
    sleep 1
  done
  sleep 2 # for kwok's Lease cache
  log "kwok restarted: resyncing the pods that were on its nodes"
  "${kc[@]}" annotate pods -A --field-selector "$pods_sel" --overwrite \
    "aifactory.dev/kwok-resync=$(date +%s)" >/dev/null
}
[ "$kwok_restarted" = 1 ] && resync_pods_after_kwok_restart
log "control plane up in $(since "$total_start")s"

"$FACTORY_HACK/factory-nodes.sh" --prefix gpu-node --count "$nodes" --gpus-per-node "$gpus" \
  --gpu-model "$model" --racks "$racks" --blocks "$blocks" --timeout "$timeout"
"$FACTORY_HACK/factory-storage.sh"

log "factory up in $(since "$total_start")s; state in $STATE"
print_kubeconfig
