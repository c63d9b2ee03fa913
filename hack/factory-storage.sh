#!/usr/bin/env bash
# Storage of the local factory. There is no volume provisioner here (kwok runs no
# containers, nothing is ever mounted), so, as on a bare-metal cluster with a static
# NFS export, a pool of PersistentVolumes waits to be claimed:
#   - StorageClass factory-nfs (no provisioner, Immediate binding), the default class;
#   - 48 NFS PersistentVolumes of that class, 10Gi to 4Ti, in region eu-west
#     (label topology.kubernetes.io/region), access modes RWO, ROX and RWX, reclaim
#     policy Retain. The kube-controller-manager binds claims to them as it would
#     to real volumes. The NFS server name is never resolved.
# A PV whose claim was deleted stays Released (Retain) and would never bind again;
# each run puts the Released volumes of the pool back to Available (their claimRef
# is cleared), so tests that come and go never run the pool dry.
# Idempotent; called by factory-up.sh. Run it again any time to recycle.
#
#   hack/factory-storage.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=factory-lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/factory-lib.sh"

KUBECTL=$(kubectl_bin)
[ -s "$ADMIN_KUBECONFIG" ] || die "no factory kubeconfig at $ADMIN_KUBECONFIG: run hack/factory-up.sh"
kc() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

class=factory-nfs
pool_label=aifactory.dev/factory-storage
# count x size: small volumes for tests and homes, a few large ones for examples/.
sizes=(20x10Gi 8x50Gi 8x200Gi 4x1Ti 4x2Ti 4x4Ti)

manifest=$(mktemp "${TMPDIR:-/tmp}/factory-storage.XXXX")
trap 'rm -f "$manifest"' EXIT
cat >"$manifest" <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $class
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
EOF
i=0
for entry in "${sizes[@]}"; do
  count=${entry%%x*} size=${entry#*x}
  for ((n = 0; n < count; n++)); do
    name=$(printf '%s-%03d' "$class" "$i")
    cat >>"$manifest" <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name
  labels:
    $pool_label: $class
    topology.kubernetes.io/region: eu-west
spec:
  storageClassName: $class
  capacity:
    storage: $size
  accessModes: [ReadWriteOnce, ReadOnlyMany, ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  nfs:
    server: nfs.factory.invalid
    path: /exports/$name
EOF
    i=$((i + 1))
  done
done
kc apply --server-side --force-conflicts --field-manager=aifactory-factory -f "$manifest" >/dev/null

released=$(kc get pv -l "$pool_label=$class" \
  -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}')
for pv in $released; do
  # Another run recycling at the same time may have been first: not an error.
  kc patch pv "$pv" --type json -p '[{"op": "remove", "path": "/spec/claimRef"}]' >/dev/null 2>&1 || true
done
available=$(kc get pv -l "$pool_label=$class" --no-headers | awk '$5 == "Available"' | wc -l)
log "storage class $class (default) with $i volumes; $(echo "$released" | grep -c . || true) recycled, $available available"
