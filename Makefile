# aifactory: the two commands of the README, and the pieces they are made of.
.PHONY: demo test fuzz factory-up factory-down tools crds bench chaos image

## demo: build what is needed, start the local factory, install the CRDs, apply examples/, show the result
demo:
	hack/demo.sh

## test: the whole test suite (lints, unit, property, CRD drift, integration on the local factory)
test:
	hack/test.sh

## fuzz: 10,000 random objects of all five kinds through the local factory's API server,
## then the operator's invariants checked (hack/fuzz.sh --objects N --seed S; tests/tests/fuzz.rs)
fuzz:
	hack/fuzz.sh

## factory-up / factory-down: start or stop the local factory (16 simulated H100 nodes by default)
factory-up:
	hack/factory-up.sh

factory-down:
	hack/factory-down.sh

## tools: build the local factory's binaries from the pinned Go modules (cached)
tools:
	hack/build-tools.sh

## bench: benchmarks (release builds), tables written to bench/
bench:
	mkdir -p bench
	cargo run --release -q -p aifactory-admission --bin bench-admission -- --out bench/admission.md

## chaos: chaos at scale (2 replicas, 1,000 jobs on 200 nodes; leader kills, a freeze,
## kube-apiserver and etcd restarts) judged by an independent checker; table in bench/chaos.md
chaos:
	hack/chaos.sh $(CHAOS_ARGS)

## crds: regenerate crds/ and the chart's copy (charts/aifactory/crds/) from the Rust types
crds:
	cargo run --bin crdgen -- crds charts/aifactory/crds

## image: the operator image, built without Docker: target/image/aifactory-<version>.tar
image:
	hack/image.sh
