#!/usr/bin/env bash
# Starts or stops the operator against the local factory, as its own user
# (aifactory-operator, client certificate from the factory's CA) so that the API
# server's audit log tells its requests apart.
#
#   hack/operator.sh start     build (cargo), start in the background, wait until it leads
#   hack/operator.sh stop      SIGTERM, then wait for it to exit
#   hack/operator.sh guards USER...   RBAC and the chart's guards for these operator users
# Log: $AIFACTORY_STATE/logs/operator.log; metrics on 127.0.0.1:18080/metrics (the
# port shifts by AIFACTORY_PORT_OFFSET, like the factory's; AIFACTORY_OPERATOR_ADDR sets it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=factory-lib.sh
source "$root/hack/factory-lib.sh"
# The factory's state dir (AIFACTORY_STATE): pid, lock and log beside its own.
state=$STATE
pidf=$state/operator.pid
log=$state/logs/operator.log
addr=$OPERATOR_ADDR

# live: the pid file names a process that has not exited (a killed operator may
# linger a moment as a zombie: that is not running).
live() {
  [ -f "$pidf" ] || return 1
  local pid stat
  pid=$(cat "$pidf")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [[ $stat != Z* ]]
}
# running: live, and the operator's binary, not a program that reuses the pid of
# a stale pid file (a crashed run, a reboot): stop must never signal that.
running() {
  live || return 1
  local exe
  exe=$(readlink "/proc/$(cat "$pidf")/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}
  [ "$(basename "$exe")" = aifactory ]
}

# Several test runs may start or stop the operator at once: one at a time, so two
# starts never leave an operator the pid file does not know.
mkdir -p "$state"
exec 9>"$state/operator.lock"
flock 9

# guards USER...: the chart's ClusterRole bound to each USER, and the chart's usage
# and queue guards with these users as the operator's (they may remove the usage
# finalizer, which tenants may not, and write GPU workloads in tenant namespaces,
# which nobody else may): as a cluster with the chart installed runs. Several
# users when several replicas run under users of their own (tests/src/chaos.rs).
guards() {
  source "$root/hack/versions.sh"
  kubectl() { KUBECONFIG=$ADMIN_KUBECONFIG "$BIN_DIR/kubectl" "$@"; }
  # The operator runs with exactly the chart's ClusterRole: a right it lacks fails.
  kubectl apply --server-side -f "$root/charts/aifactory/templates/clusterrole.yaml" >/dev/null
  local user users
  for user in "$@"; do
    kubectl create clusterrolebinding "$user" --clusterrole aifactory-operator --user "$user" \
      --dry-run=client -o yaml | kubectl apply --server-side -f - >/dev/null
  done
  users=$(IFS=,; echo "$*")
  if [ -x "$HELM_BIN_DIR/helm" ]; then
    "$HELM_BIN_DIR/helm" template aifactory "$root/charts/aifactory" --namespace default \
      --show-only templates/usage-guard.yaml --show-only templates/queue-guard.yaml \
      --set "usageGuard.operatorUsers={$users}" --set "queueGuard.operatorUsers={$users}" \
      | kubectl apply --server-side -f - >/dev/null
  else
    echo "helm not built ($HELM_BIN_DIR): the usage and queue guards are not installed" >&2
  fi
}

case ${1:-} in
  start)
    if running; then echo "operator already running (pid $(cat "$pidf"))" >&2; exit 0; fi
    [ -s "$ADMIN_KUBECONFIG" ] || die "no factory kubeconfig at $ADMIN_KUBECONFIG: run hack/factory-up.sh"
    port_free "${addr##*:}" || die "port ${addr##*:} ($addr) is taken: another factory's operator" \
      "(same AIFACTORY_PORT_OFFSET, $PORT_OFFSET)? Choose another offset, or AIFACTORY_OPERATOR_ADDR"
    (cd "$root" && cargo build -q -p aifactory --bin aifactory)
    # This operator's user, and the user a second replica runs as (the leader
    # test starts one as aifactory-operator-b, bound to the same role).
    guards aifactory-operator aifactory-operator-b
    kubeconfig=$("$root/hack/factory-user.sh" aifactory-operator | tail -n 1)
    mkdir -p "$state/logs"
    # 9>&-: the operator must not inherit (and so hold forever) the lock.
    KUBECONFIG=$kubeconfig nohup "$root/target/debug/aifactory" run --http-addr "$addr" \
      --lease-namespace default --identity "operator-$$" >"$log" 2>&1 9>&- &
    echo $! >"$pidf"
    for _ in $(seq 1 120); do
      if grep -q "controllers running" "$log"; then echo "operator running (pid $(cat "$pidf")), log $log" >&2; exit 0; fi
      # live, not running: right after the start the pid may not have exec'd yet.
      live || { echo "operator exited:" >&2; tail -n 30 "$log" >&2; exit 1; }
      sleep 0.5
    done
    echo "operator did not become leader within 60s:" >&2; tail -n 30 "$log" >&2; exit 1
    ;;
  stop)
    if running; then
      kill -TERM "$(cat "$pidf")"
      for _ in $(seq 1 60); do running || break; sleep 0.5; done
      running && kill -KILL "$(cat "$pidf")"
    fi
    rm -f "$pidf"
    ;;
  guards)
    shift
    [ $# -ge 1 ] || { echo "usage: $0 guards USER..." >&2; exit 2; }
    guards "$@"
    ;;
  *) echo "usage: $0 start|stop|guards USER..." >&2; exit 2 ;;
esac
