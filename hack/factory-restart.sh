#!/usr/bin/env bash
# Restarts one component of the running local factory, as a crash and a restart
# would: signals it (KILL by default: no graceful shutdown), waits until it is
# gone, optionally stays down a while, then starts it again with the very flags
# factory-up.sh uses (factory-lib.sh, launch) and waits until it is healthy. The
# rest of the factory is left running. Prints how long the component was down.
#
#   hack/factory-restart.sh COMPONENT [--signal KILL|TERM] [--down SECONDS] [--timeout SECONDS]
#   hack/factory-restart.sh kube-apiserver
#   hack/factory-restart.sh etcd --signal TERM --down 5
#
# COMPONENT: etcd, kube-apiserver, kube-controller-manager, kube-scheduler or kwok
# (a restarted kwok resyncs the pods of its nodes, whose simulated durations start
# over: see resync_pods_after_kwok_restart). A component that is not running is
# just started. (factory-up.sh starts missing components too, but also re-applies
# its node set and storage.)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=factory-lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/factory-lib.sh"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[ $# -ge 1 ] || usage 2
case $1 in -h|--help) usage ;; esac
component=$1; shift
signal=KILL
down=0
timeout=${AIFACTORY_TIMEOUT:-300}
while [ $# -gt 0 ]; do
  case $1 in
    --signal) signal=$2; shift 2 ;;
    --down) down=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
[[ " ${COMPONENTS[*]} " == *" $component "* ]] || die "unknown component '$component' (one of: ${COMPONENTS[*]})"
case $signal in KILL|TERM) ;; *) die "--signal must be KILL or TERM, not '$signal'" ;; esac
[[ $down =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--down must be a number of seconds"
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds"
[ -s "$ADMIN_KUBECONFIG" ] && [ -d "$STATE/run" ] || die "no factory in $STATE: start it with hack/factory-up.sh"

t0=$EPOCHREALTIME
if alive "$component"; then
  pid=$(cat "$(pid_file "$component")")
  log "stopping $component (pid $pid) with SIG$signal"
  kill "-$signal" "$pid"
  # Gone, or a zombie with no thread left (nobody may reap it). A zombie leader
  # alone is not enough: its other threads may still be exiting, holding the
  # process's listening sockets, and the new process could not bind its port.
  exited() {
    [ -d "/proc/$pid" ] || return 0
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] &&
      [ "$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" -le 1 ]
  }
  for ((i = 0; i < 300; i++)); do exited && break; sleep 0.1; done
  exited || die "$component (pid $pid) still runs 30 s after SIG$signal"
  rm -f "$(pid_file "$component")"
else
  log "$component is not running: starting it"
fi
[ "$down" = 0 ] || sleep "$down"
launch "$component"
wait_healthy "$component"
[ "$component" = kwok ] && [ "$KWOK_RESTARTED" = 1 ] && resync_pods_after_kwok_restart
log "$component restarted; down for $(since "$t0")s"
