#!/usr/bin/env bash
# Builds the operator image without a Docker daemon or a base image: a static
# aifactory binary (glibc static-pie; rustls, no OpenSSL; in-cluster it reaches the
# API server by KUBERNETES_SERVICE_HOST, an IP, so no DNS or NSS is needed), put
# into an image from scratch by hack/image (go-containerregistry), tagged
# <values.yaml image.repository>:<Chart appVersion>, which must be the operator's
# Cargo version.
#
#   hack/image.sh                   build, write target/image/aifactory-<version>.tar
#   hack/image.sh --binary FILE     use this static binary instead of building one
#   hack/image.sh --out DIR         write the tarball (and the builder) into DIR
#   hack/image.sh --oci-layout DIR  also write an OCI image layout there
#
# The same binary gives the same image, byte for byte: timestamps are
# SOURCE_DATE_EPOCH, by default the commit's time. AIFACTORY_IMAGE_REVISION overrides the revision label
# (default: the commit, with -dirty when the tree has changes), and
# AIFACTORY_IMAGE_SOURCE the source label.
#
# Load it: docker load -i FILE | kind load image-archive FILE |
#          ctr -n k8s.io images import FILE; push it: crane push FILE REF.
# The last two lines on stdout: `digest sha256:…` (the manifest, as a registry will
# show it after crane push) and `image-id sha256:…` (docker's IMAGE ID).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

binary="" out=$root/target/image oci_layout=""
while [ $# -gt 0 ]; do
  case $1 in
    # Paths as the caller meant them, before the cd into the repository.
    --binary) binary=$(realpath "$2"); shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    --oci-layout) oci_layout=$(realpath -m "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) log "unknown argument $1 (see --help)"; exit 2 ;;
  esac
done
cd "$root"
command -v go >/dev/null || { log "go is not installed: Go >= 1.26 builds the image builder"; exit 1; }

# One version everywhere: the crate, the chart's appVersion (the default tag), the tag.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' operator/Cargo.toml | head -1)
app_version=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/aifactory/Chart.yaml)
if [ "$version" != "$app_version" ]; then
  log "operator/Cargo.toml says $version but charts/aifactory/Chart.yaml appVersion says $app_version: make them agree"
  exit 1
fi
repository=$(awk '/^image:/ {i=1; next} /^[^ #]/ {i=0} i && $1 == "repository:" {print $2; exit}' charts/aifactory/values.yaml)
[ -n "$repository" ] || { log "no image.repository in charts/aifactory/values.yaml"; exit 1; }
ref=$repository:$version

revision=${AIFACTORY_IMAGE_REVISION:-}
if [ -z "$revision" ] && revision=$(git rev-parse HEAD 2>/dev/null); then
  git diff --quiet HEAD 2>/dev/null || revision+=-dirty
fi
# Not exported: cc's build scripts rerun when SOURCE_DATE_EPOCH changes, so a
# commit's time in cargo's environment would rebuild ring and what uses it (minutes).
created=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
source_url=${AIFACTORY_IMAGE_SOURCE:-https://github.com/aifactory/aifactory}

mkdir -p "$out"
start=$SECONDS
if [ -z "$binary" ]; then
  # A target directory of its own: the static flags would otherwise rebuild every
  # crate of target/ (and back) each time, and this build (run by the image test
  # inside `cargo test`) never waits for another build's lock.
  export CARGO_TARGET_DIR=$root/target/image/cargo
  unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
  # crt-static: no dynamic loader or libc in the image. Symbols stripped: 22 MB, not
  # 31 (panics still say where, only backtraces lose names). The remaps keep the build
  # machine's paths out of the binary (panic messages say /cargo/… and /src/…).
  export RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo --remap-path-prefix=$root=/src"
  log "cargo build --release (static; cold: ~10 min on 2 cores, then seconds) into $CARGO_TARGET_DIR"
  cargo build --release --locked --target x86_64-unknown-linux-gnu -p aifactory --bin aifactory
  binary=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/aifactory
  log "binary: $(du -h "$binary" | cut -f1) in $((SECONDS - start))s"
fi

# The builder is built every time: go's build cache makes that a second or two
# warm, and a binary cached by version would miss edits to hack/image/main.go.
log "building the image builder (hack/image, go-containerregistry $(sed -n 's/^require github.com\/google\/go-containerregistry //p' hack/image/go.mod))"
(cd hack/image && CGO_ENABLED=0 GOFLAGS=-trimpath go build -o "$out/image-builder" .)

tarball=$out/aifactory-$version.tar
log "assembling $ref (revision $revision, created $(date -u -d "@$created" +%FT%TZ))"
"$out/image-builder" -binary "$binary" -ref "$ref" -version "$version" -revision "$revision" \
  -source "$source_url" -created "$created" -tarball "$tarball" \
  ${oci_layout:+-oci-layout "$oci_layout"}
log "wrote $tarball ($(du -h "$tarball" | cut -f1)) in $((SECONDS - start))s"
