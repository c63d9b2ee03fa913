#!/usr/bin/env bash
# Builds (once) the local factory's binaries from the pinned Go modules under hack/:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok into
# $BIN_DIR, and helm (which tests the chart) into its own $HELM_BIN_DIR, so that a new
# helm never rebuilds the Kubernetes binaries. Each set lands in a versioned cache
# directory; a second run finds them and returns at once. Prints the bin directory
# ($BIN_DIR) on stdout's last line.
#
#   hack/build-tools.sh            build what is missing, print the bin dir
#   AIFACTORY_CACHE=/some/dir ...  cache elsewhere (default ~/.cache/aifactory)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"

log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { log "go is not installed: apt-get install golang-go or install Go >= 1.26"; exit 1; }

export CGO_ENABLED=0 GOFLAGS=-trimpath
mkdir -p "$BIN_DIR" "$HELM_BIN_DIR"

# go names a binary after its package path, skipping a major-version suffix (/v3).
built_name() { local b; b=$(basename "$1"); [[ $b =~ ^v[0-9]+$ ]] && b=$(basename "$(dirname "$1")"); echo "$b"; }
# ... so etcd's module-root main package would be called "server".
bin_name() { case $1 in go.etcd.io/etcd/server/v3) echo etcd ;; *) built_name "$1" ;; esac; }

# build_set NAME MODULE_DIR DEST LDFLAGS PACKAGES...: builds into a temp dir, then
# moves the binaries into DEST, so an interrupted build never leaves a half-written
# binary cached.
build_set() {
  local name=$1 dir=$2 dest=$3 ldflags=$4; shift 4
  local missing=()
  for pkg in "$@"; do [ -x "$dest/$(bin_name "$pkg")" ] || missing+=("$pkg"); done
  if [ ${#missing[@]} -eq 0 ]; then log "$name: cached in $dest"; return; fi
  local tmp; tmp=$(mktemp -d "$dest/.build.XXXX")
  log "$name: building ${missing[*]##*/} (cold build: minutes on 2 cores)"
  local start=$SECONDS
  # Progress: go build -v names each package as it compiles; print a count
  # every 100 packages so a long cold build visibly moves.
  (cd "$here/$dir" && go build -v -ldflags "$ldflags" -o "$tmp/" "${missing[@]}") 2>&1 |
    awk -v n="$name" '{c++; if (c % 100 == 0) { printf("[build-tools] %s: %d packages compiled\n", n, c) > "/dev/stderr"; fflush("/dev/stderr") } if ($0 ~ /\.go:[0-9]+:|^# /) print > "/dev/stderr"}'
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ] || [ -z "$(ls -A "$tmp")" ]; then rm -rf "$tmp"; log "$name: build FAILED"; exit 1; fi
  for pkg in "${missing[@]}"; do mv "$tmp/$(built_name "$pkg")" "$dest/$(bin_name "$pkg")"; done
  rm -rf "$tmp"
  log "$name: built in $((SECONDS - start))s"
}

k8s_ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=${K8S_VERSION%%.*}"
  k8s_ldflags+=" -X $p.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $p.gitTreeState=clean"
done

# helm's own Makefile stamps its version and the Kubernetes version its client-go
# speaks (lint and `helm template` default to it); the same here.
helm_ldflags() {
  local v; v=$(cd "$here/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)
  v=${v#v}
  local p=helm.sh/helm/v3
  echo "-s -w -X $p/internal/version.version=v$HELM_VERSION -X $p/internal/version.gitTreeState=clean" \
    "-X $p/pkg/lint/rules.k8sVersionMajor=$((${v%%.*} + 1)) -X $p/pkg/lint/rules.k8sVersionMinor=$(echo "$v" | cut -d. -f2)" \
    "-X $p/pkg/chartutil.k8sVersionMajor=$((${v%%.*} + 1)) -X $p/pkg/chartutil.k8sVersionMinor=$(echo "$v" | cut -d. -f2)"
}

build_set etcd etcd "$BIN_DIR" "-s -w" go.etcd.io/etcd/server/v3
build_set kwok kwok "$BIN_DIR" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
build_set kubernetes k8s "$BIN_DIR" "$k8s_ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
if [ -x "$HELM_BIN_DIR/helm" ]; then log "helm: cached in $HELM_BIN_DIR"
else build_set helm helm "$HELM_BIN_DIR" "$(helm_ldflags)" helm.sh/helm/v3/cmd/helm; fi
echo "$BIN_DIR"
