# Shared settings and helpers of the local factory scripts (factory-up.sh,
# factory-down.sh, factory-nodes.sh, factory-user.sh). Sourced, not run.
# shellcheck shell=bash
# The settings are used by the scripts that source this file.
# shellcheck disable=SC2034

FACTORY_HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.sh
source "$FACTORY_HACK/versions.sh"

STATE=${AIFACTORY_STATE:-$HOME/.cache/aifactory/factory}
PKI=$STATE/pki
ADMIN_KUBECONFIG=$STATE/admin.kubeconfig

# Loopback only, and none of the default ports (2379, 6443, 10257, 10259, 10247),
# so a factory can run beside any other cluster tooling on the same machine.
# AIFACTORY_PORT_OFFSET (default 0) shifts every port, so that two factories (say
# the demo's and the test suite's, each with its own AIFACTORY_STATE) run side by
# side. The operator's metrics port (hack/operator.sh, 18080) shifts with them.
PORT_OFFSET=${AIFACTORY_PORT_OFFSET:-0}
# Each component has a range of 100 ports of its own, hence offsets below 100.
[[ $PORT_OFFSET =~ ^[0-9]+$ ]] && [ "$PORT_OFFSET" -lt 100 ] ||
  { echo "AIFACTORY_PORT_OFFSET must be a number from 0 to 99, not '$PORT_OFFSET'" >&2; exit 2; }
ETCD_PORT=$((23790 + PORT_OFFSET))
ETCD_PEER_PORT=$((23900 + PORT_OFFSET))
APISERVER_PORT=$((16443 + PORT_OFFSET))
KCM_PORT=$((16600 + PORT_OFFSET))
SCHEDULER_PORT=$((16700 + PORT_OFFSET))
KWOK_PORT=$((16800 + PORT_OFFSET))
OPERATOR_ADDR=${AIFACTORY_OPERATOR_ADDR:-127.0.0.1:$((18080 + PORT_OFFSET))}
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT

SERVICE_CIDR=10.96.0.0/16
FIRST_SERVICE_IP=10.96.0.1
# Pod IPs handed out by kwok; outside the service range and the node IPs (10.0.0.0/16).
POD_CIDR=10.128.0.0/12

# Start order; factory-down stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# ports NAME: the ports the component listens on.
ports() {
  case $1 in
    etcd) echo "$ETCD_PORT $ETCD_PEER_PORT" ;;
    kube-apiserver) echo "$APISERVER_PORT" ;;
    kube-controller-manager) echo "$KCM_PORT" ;;
    kube-scheduler) echo "$SCHEDULER_PORT" ;;
    kwok) echo "$KWOK_PORT" ;;
  esac
}

# port_free PORT: nothing listens on 127.0.0.1:PORT (a connection is refused).
port_free() { ! (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

log() { printf '[factory %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# since T0: seconds elapsed since T0 (an $EPOCHREALTIME), one decimal.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

pid_file() { echo "$STATE/$1.pid"; }
log_file() { echo "$STATE/logs/$1.log"; }

# alive NAME: the pid file names a live process running the binary NAME (a pid
# reused by an unrelated process after a reboot does not count).
alive() {
  local f pid exe
  f=$(pid_file "$1")
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}
  [ "$(basename "$exe")" = "$1" ]
}

# healthy NAME: the component answers its health endpoint.
healthy() {
  local url curl_args=(-fsS --max-time 3 -o /dev/null)
  case $1 in
    etcd) url=http://127.0.0.1:$ETCD_PORT/health ;;
    kube-apiserver) url=$APISERVER_URL/readyz; curl_args+=(--cacert "$PKI/ca.crt") ;;
    # Their serving certs are self-signed in --cert-dir, hence -k; /healthz is
    # in their default --authorization-always-allow-paths.
    kube-controller-manager) url=https://127.0.0.1:$KCM_PORT/healthz; curl_args+=(-k) ;;
    kube-scheduler) url=https://127.0.0.1:$SCHEDULER_PORT/healthz; curl_args+=(-k) ;;
    kwok) url=http://127.0.0.1:$KWOK_PORT/healthz ;;
    *) return 1 ;;
  esac
  curl "${curl_args[@]}" "$url" 2>/dev/null
}

# write_kubeconfig FILE CERT KEY: a self-contained kubeconfig (certs embedded) for
# the factory's apiserver.
write_kubeconfig() {
  local file=$1 cert=$2 key=$3 tmp
  tmp=$(mktemp "$file.XXXX")
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: aifactory
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: user
  user:
    client-certificate-data: $(base64 -w0 <"$cert")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: aifactory
  context:
    cluster: aifactory
    user: user
current-context: aifactory
EOF
  chmod 600 "$tmp"
  mv "$tmp" "$file"
}

# issue_cert PREFIX SUBJECT [SAN]: a key and a certificate signed by the factory CA,
# at PREFIX.key and PREFIX.crt; kept if both exist already (FORCE=1 reissues).
issue_cert() {
  local out=$1 subj=$2 san=${3:-} ext
  if [ "${FORCE:-0}" != 1 ] && [ -s "$out.crt" ] && [ -s "$out.key" ]; then return 0; fi
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  # Random serials, not a CA serial file, so parallel callers (tests issuing
  # users at once) cannot race; temp names carry the pid for the same reason.
  (umask 077 && openssl genrsa -out "$out.key.$$" 2048 2>/dev/null)
  openssl req -new -key "$out.key.$$" -subj "$subj" -out "$out.csr.$$" 2>/dev/null
  openssl x509 -req -in "$out.csr.$$" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 -extfile "$ext" -out "$out.crt.$$" 2>/dev/null
  rm -f "$ext" "$out.csr.$$"
  mv "$out.key.$$" "$out.key"
  mv "$out.crt.$$" "$out.crt"
}

# ensure_ca: the factory CA; everything else is signed by it.
ensure_ca() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  [ -s "$PKI/ca.crt" ] && [ -s "$PKI/ca.key" ] && return 0
  # A new CA invalidates every certificate signed by the old one.
  find "$PKI" -type f ! -name 'sa.*' -delete
  find "$STATE/users" -maxdepth 1 -name '*.kubeconfig' -delete 2>/dev/null || true
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  chmod 600 "$PKI/ca.key"
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=aifactory-local-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
}

# kubectl_bin: kubectl from the factory's bin dir (the pinned version).
kubectl_bin() { echo "$BIN_DIR/kubectl"; }

# --- starting components (factory-up.sh, factory-restart.sh) ----------------------
# The flags of every component live here, in launch(), so a component restarted
# on its own (hack/factory-restart.sh) runs exactly as factory-up.sh started it.

# start NAME ARGS...: runs $BIN_DIR/NAME in a session of its own (setsid), so it
# outlives this script and a kill of the caller's process group; the inner shell
# writes its own pid and then execs, so the pid file holds the component's pid.
start() {
  local name=$1 pidf logf; shift
  pidf=$(pid_file "$name"); logf=$(log_file "$name")
  if alive "$name"; then log "$name already running (pid $(cat "$pidf"))"; return; fi
  # Taken by another factory at the same offset, it would answer our health
  # checks (etcd) or fail with an unhelpful log (the others). A component just
  # killed (hack/factory-restart.sh) may hold its port a moment longer: wait 5 s.
  local port i
  for port in $(ports "$name"); do
    for ((i = 0; i < 50; i++)); do port_free "$port" && break; sleep 0.1; done
    port_free "$port" || die "port $port ($name) is taken, by another factory with AIFACTORY_PORT_OFFSET=$PORT_OFFSET?" \
      "Give this one (state $STATE) another offset (0-99)"
  done
  mkdir -p "$STATE/logs"
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

# wait_healthy NAME: until it answers its health endpoint (fails after $timeout s,
# 300 unless the caller set it).
wait_healthy() {
  local name=$1 t0=$SECONDS pid limit=${timeout:-300}
  pid=$(cat "$(pid_file "$name")")
  while ! healthy "$name"; do
    # Gone, or a zombie: it exited. (alive() is not used here: right after the
    # start the pid may still be the wrapper shell, before its exec.)
    if ! kill -0 "$pid" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
      fail_component "$name" "exited"
    fi
    [ $((SECONDS - t0)) -ge "$limit" ] && fail_component "$name" "not healthy after ${limit}s"
    sleep 0.3
  done
  log "$name healthy ($((SECONDS - t0))s)"
}

# launch NAME: starts component NAME with its flags (nothing if it runs already).
# The certificates and $STATE/run/* configs are factory-up.sh's. A kwok started
# afresh sets KWOK_RESTARTED=1: its caller then runs resync_pods_after_kwok_restart
# once kwok is healthy.
launch() {
  case $1 in
    etcd)
      start etcd \
        --name=factory --data-dir="$STATE/etcd" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="factory=http://127.0.0.1:$ETCD_PEER_PORT" \
        --unsafe-no-fsync --quota-backend-bytes=8589934592 --log-level=warn
      ;;
    kube-apiserver)
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
      ;;
    kube-controller-manager)
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
      ;;
    kube-scheduler)
      start kube-scheduler \
        --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$STATE/run/scheduler-certs" \
        --config="$STATE/run/scheduler.yaml" \
        --authentication-kubeconfig="$STATE/run/scheduler.kubeconfig" \
        --authorization-kubeconfig="$STATE/run/scheduler.kubeconfig"
      ;;
    kwok)
      # Lease duration 180 s: a renewal every 45 s per node, 22 writes/s for 1,000 nodes
      # (kwokctl's 40 s would be 100/s on 2 cores). Log level WARN: at INFO kwok logs
      # every lease renewal and pod patch (~30 MB/hour at 1,000 nodes);
      # AIFACTORY_KWOK_LOG_LEVEL=INFO to see each stage it plays.
      # A kwok that (re)starts under a new holder identity would only take over the node
      # Leases left by a previous kwok once they expire (180 s), and meanwhile plays no
      # stage on those nodes; dropping them (one deletecollection) lets it create fresh
      # ones at once.
      KWOK_RESTARTED=0
      if ! alive kwok; then
        "$(kubectl_bin)" --kubeconfig "$ADMIN_KUBECONFIG" delete --raw \
          /apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases >/dev/null
        KWOK_RESTARTED=1
      fi
      start kwok \
        --kubeconfig="$STATE/run/kwok.kubeconfig" \
        --config="$STATE/run/kwok.yaml,$FACTORY_HACK/kwok-stages.yaml" \
        --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
        --node-lease-duration-seconds=180 \
        --cidr="$POD_CIDR" --node-ip=10.0.0.1 \
        --server-address="127.0.0.1:$KWOK_PORT" \
        --v="${AIFACTORY_KWOK_LOG_LEVEL:-WARN}"
      ;;
    *) die "unknown component '$1' (one of: ${COMPONENTS[*]})" ;;
  esac
}

# kwok v0.8.0 skips pods that already exist when it starts managing their node:
# it looks them up before its Lease cache has seen the Lease it just created,
# takes the node for someone else's and never looks again (new pods are fine).
# After a restart of kwok, wait for its Leases, then touch each pod that is not
# finished (an annotation) so kwok sees it again; any simulated duration starts over.
resync_pods_after_kwok_restart() {
  local kc=("$(kubectl_bin)" --kubeconfig "$ADMIN_KUBECONFIG") pods_sel nodes leases t0=$SECONDS limit=${timeout:-300}
  pods_sel='spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed'
  [ -n "$("${kc[@]}" get pods -A --field-selector "$pods_sel" -o name | head -n 1)" ] || return 0
  nodes=$("${kc[@]}" get nodes -o json | jq '[.items[] | select(.metadata.annotations["kwok.x-k8s.io/node"] == "fake")] | length')
  while leases=$("${kc[@]}" get leases -n kube-node-lease -o name | wc -l) && [ "$leases" -lt "$nodes" ]; do
    [ $((SECONDS - t0)) -ge "$limit" ] && fail_component kwok "holds only $leases of $nodes node Leases after ${limit}s"
    sleep 1
  done
  sleep 2 # for kwok's Lease cache
  log "kwok restarted: resyncing the pods that were on its nodes"
  "${kc[@]}" annotate pods -A --field-selector "$pods_sel" --overwrite \
    "aifactory.dev/kwok-resync=$(date +%s)" >/dev/null
}
