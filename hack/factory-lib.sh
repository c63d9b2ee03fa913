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
