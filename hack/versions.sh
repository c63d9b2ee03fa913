# Pinned versions of the local factory's components. Changing one here changes the
# cache directory, so the next run rebuilds. Keep them in step with hack/*/go.mod.
K8S_VERSION=1.34.4
ETCD_VERSION=3.6.6
KWOK_VERSION=0.8.0
# helm tests the chart; it has a directory of its own so that bumping it rebuilds
# only helm, never the Kubernetes binaries.
HELM_VERSION=3.22.0
AIFACTORY_CACHE=${AIFACTORY_CACHE:-$HOME/.cache/aifactory}
BIN_DIR=$AIFACTORY_CACHE/bin-k8s$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION
HELM_BIN_DIR=$AIFACTORY_CACHE/bin-helm$HELM_VERSION
