#!/usr/bin/env bash
# Adds a set of simulated GPU nodes to the running local factory (kwok drives them)
# and waits until all of them are Ready. Idempotent: re-running with the same
# prefix and count changes nothing. Nodes carry no taints.
#
#   hack/factory-nodes.sh --count 16                         gpu-node-000..015, H100-80GB x 8
#   hack/factory-nodes.sh --prefix a100-node --count 4 --gpu-model A100-40GB --first-rack 4 --first-block 2
#   hack/factory-nodes.sh --prefix a100-node --delete        removes that set
#
# Options (env fallback): --prefix (AIFACTORY_NODE_PREFIX, gpu-node),
# --count (AIFACTORY_NODES, 16), --gpus-per-node (AIFACTORY_GPUS_PER_NODE, 8),
# --gpu-model (AIFACTORY_GPU_MODEL, H100-80GB), --racks (AIFACTORY_RACKS, 4),
# --blocks (AIFACTORY_BLOCKS, 2), --first-rack N / --first-block N (0: numbering
# of this set's rack-N / block-N labels, so a second set can sit in racks of its
# own), --timeout seconds (AIFACTORY_TIMEOUT, 300), --no-wait, --delete.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=factory-lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/factory-lib.sh"

prefix=${AIFACTORY_NODE_PREFIX:-gpu-node}
count=${AIFACTORY_NODES:-16}
gpus=${AIFACTORY_GPUS_PER_NODE:-8}
model=${AIFACTORY_GPU_MODEL:-H100-80GB}
racks=${AIFACTORY_RACKS:-4}
blocks=${AIFACTORY_BLOCKS:-2}
first_rack=0
first_block=0
timeout=${AIFACTORY_TIMEOUT:-300}
wait_ready=1
delete=0

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --gpus-per-node) gpus=$2; shift 2 ;;
    --gpu-model) model=$2; shift 2 ;;
    --racks) racks=$2; shift 2 ;;
    --blocks) blocks=$2; shift 2 ;;
    --first-rack) first_rack=$2; shift 2 ;;
    --first-block) first_block=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --no-wait) wait_ready=0; shift ;;
    --delete) delete=1; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done

for v in count gpus racks blocks first_rack first_block timeout; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v//_/-} must be a whole number, not '${!v}'"
done
if [ "$racks" -lt 1 ] || [ "$blocks" -lt 1 ]; then die "--racks and --blocks must be at least 1"; fi
[ "$blocks" -le "$racks" ] || die "--blocks ($blocks) cannot exceed --racks ($racks): racks are spread within blocks"
[[ $prefix =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "--prefix '$prefix' is not a valid DNS label"
[[ $model =~ ^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$ ]] || die "--gpu-model '$model' is not a valid label value"

KUBECTL=$(kubectl_bin)
[ -x "$KUBECTL" ] || die "kubectl not found in $BIN_DIR: run hack/build-tools.sh"
[ -s "$ADMIN_KUBECONFIG" ] || die "no factory kubeconfig at $ADMIN_KUBECONFIG: run hack/factory-up.sh"
kc() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
set_selector="aifactory.dev/node-set=$prefix"

if [ "$delete" = 1 ]; then
  kc delete nodes -l "$set_selector" --wait=false >&2
  exit 0
fi

# Node IPs (annotation aifactory.dev/node-ip, read by our kwok node stage) are
# numbered after the nodes of other sets, so sets added later do not collide.
offset=$(kc get nodes -l "type=kwok,aifactory.dev/node-set!=$prefix" -o name | wc -l)
width=${#count}; [ "$width" -lt 3 ] && width=3

# One manifest per parallel kubectl (see below), nodes dealt round-robin.
jobs=$(((count + 99) / 100)); [ "$jobs" -gt 4 ] && jobs=4; [ "$jobs" -lt 1 ] && jobs=1
tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/factory-nodes.XXXX")
trap 'rm -rf "$tmpdir"' EXIT
for ((i = 0; i < count; i++)); do
  name=$(printf '%s-%0*d' "$prefix" "$width" "$i")
  # Nodes fill racks in order (contiguous names share a rack), racks fill blocks.
  rack=$((i * racks / count))
  block=$((rack * blocks / racks))
  ipn=$((offset + i + 1))
  cat >>"$tmpdir/nodes-$((i % jobs)).yaml" <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    aifactory.dev/node-ip: 10.0.$((ipn / 256)).$((ipn % 256))
  labels:
    type: kwok
    aifactory.dev/node-set: $prefix
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: $model
    nvidia.com/gpu.count: "$gpus"
    topology.aifactory.dev/block: block-$((first_block + block))
    topology.aifactory.dev/rack: rack-$((first_rack + rack))
status:
  capacity: &res
    cpu: "128"
    memory: 2Ti
    pods: "110"
    ephemeral-storage: 30Ti
    nvidia.com/gpu: "$gpus"
  allocatable: *res
EOF
done

start=$EPOCHREALTIME
log "applying $count nodes $prefix-* ($model x $gpus, $racks racks in $blocks blocks)"
# Server-side apply: one request per node (client-side apply needs a GET first),
# and a re-run is a no-op. kubectl sends them one at a time, so for many nodes a
# few kubectl run side by side.
pids=()
for f in "$tmpdir"/nodes-*.yaml; do
  [ -e "$f" ] || continue
  kc apply --server-side --force-conflicts --field-manager=aifactory-factory -f "$f" >/dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "kubectl apply of the nodes failed"; done
log "applied in $(since "$start")s"
[ "$wait_ready" = 1 ] || exit 0

# Ready means: Ready=True and no node.kubernetes.io/* taint left (the apiserver
# adds not-ready at creation; the node lifecycle controller removes it).
ready_count() {
  kc get nodes -l "$set_selector" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{.spec.taints[*].key}{"\n"}{end}' |
    awk '$1 == "True" && $0 !~ /node\.kubernetes\.io\// {n++} END {print n + 0}'
}
deadline=$((SECONDS + timeout))
last_report=$SECONDS
while :; do
  ready=$(ready_count)
  [ "$ready" -ge "$count" ] && break
  if [ $SECONDS -ge $deadline ]; then
    log "only $ready of $count nodes $prefix-* Ready after ${timeout}s; kwok log tail:"
    tail -n 40 "$(log_file kwok)" >&2 || true
    exit 1
  fi
  if [ $((SECONDS - last_report)) -ge 10 ]; then log "$ready of $count nodes Ready"; last_report=$SECONDS; fi
  sleep 0.5
done
log "all $count nodes $prefix-* Ready; node bring-up took $(since "$start")s"
