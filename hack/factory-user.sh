#!/usr/bin/env bash
# Issues a client certificate for a user of the local factory, signed by its CA
# (CN=NAME, one O= per GROUP), and writes a self-contained kubeconfig for it at
# $AIFACTORY_STATE/users/NAME.kubeconfig, whose path it prints. The user has no
# rights until RBAC grants some (to NAME or to one of its groups). Re-running
# reissues the certificate, so a changed group list takes effect.
#
#   hack/factory-user.sh alice tenant-a-users
#   KUBECONFIG=$(hack/factory-user.sh alice) kubectl get pods   # -> 403 Forbidden
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=factory-lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/factory-lib.sh"

[ $# -ge 1 ] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
name=$1; shift
# The name becomes a file name and a certificate subject field.
[[ $name =~ ^[A-Za-z0-9]([-A-Za-z0-9_.@]*[A-Za-z0-9])?$ ]] || die "user name '$name' must be letters, digits, - _ . @"
subj="/CN=$name"
for g in "$@"; do
  [[ $g =~ ^[^/=,+]+$ ]] || die "group '$g' may not contain / = , +"
  subj+="/O=$g"
done
[ -s "$PKI/ca.key" ] || die "no factory CA in $PKI: run hack/factory-up.sh first"

mkdir -p "$STATE/users"
chmod 700 "$STATE/users"
FORCE=1 issue_cert "$STATE/users/$name" "$subj"
write_kubeconfig "$STATE/users/$name.kubeconfig" "$STATE/users/$name.crt" "$STATE/users/$name.key"
echo "$STATE/users/$name.kubeconfig"
