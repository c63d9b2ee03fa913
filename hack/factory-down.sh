#!/usr/bin/env bash
# Stops the local factory started by hack/factory-up.sh (by its pid files: TERM,
# then KILL after a grace period) and removes the cluster's data (etcd data dir,
# audit log), so the next start is a clean cluster. Keeps certificates, user
# kubeconfigs, binaries and the components' logs. Succeeds when nothing runs.
#
#   hack/factory-down.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=factory-lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/factory-lib.sh"

grace=${AIFACTORY_STOP_GRACE:-5}

# stop NAME...: TERM to all of them at once, wait up to $grace s, then KILL. Only
# a pid whose process runs the component's binary is signalled (alive() checks),
# never a pid reused by something else.
stop() {
  local name pid pids=() i
  for name in "$@"; do
    if alive "$name"; then
      pid=$(cat "$(pid_file "$name")")
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$(pid_file "$name")"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for ((i = 0; i < grace * 10; i++)); do
    running "${pids[@]}" || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || continue
    log "pid $pid still running after ${grace}s: KILL"
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do running "${pids[@]}" || return 0; sleep 0.1; done
}
running() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

# The apiserver's clients first, then the apiserver, etcd last: each stops cleanly
# while what it talks to is still there.
stop kwok kube-scheduler kube-controller-manager
stop kube-apiserver
stop etcd

if [ -d "$STATE" ]; then
  rm -rf "$STATE/etcd" "$STATE/run"
  rm -f "$STATE"/audit*.log
fi
log "factory stopped (certs and logs kept in $STATE)"
