//! A shared cache of the pods that hold node resources: bound to a node and not
//! finished. GpuPool status counts their GPUs; admission reads them too. And the
//! pod shape every admitted workload shares: pinned to the nodes admission chose,
//! restricted security.
use aifactory_api::{POOL_LABEL, POOL_TAINT};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// The container security context Pod Security `restricted` demands of tenant pods.
pub fn restricted_container() -> Value {
    json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The pod security context Pod Security `restricted` demands of tenant pods.
pub fn restricted_pod() -> Value {
    json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
}

/// Pod spec fields that pin a pod to `nodes` of `pool`: the pool's label, its
/// taint tolerated, and a node affinity naming exactly the nodes admission chose
/// (the GPUs it counted are there). A node field selector takes one name and terms
/// are ORed, so one term per node.
pub fn pinned(pool: &str, nodes: &[String]) -> serde_json::Map<String, Value> {
    let terms: Vec<Value> = nodes
        .iter()
        .map(
            |n| json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]}),
        )
        .collect();
    let Value::Object(fields) = json!({
        "nodeSelector": {POOL_LABEL: pool},
        "tolerations": [{"key": POOL_TAINT, "operator": "Equal", "value": pool, "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}},
        },
    }) else {
        unreachable!("a JSON object literal")
    };
    fields
}

/// GPUs of `resource` a pod holds: the sum over its containers of the request (or
/// the limit, which is the request for extended resources).
pub fn gpus_of(pod: &Pod, resource: &str) -> i64 {
    let Some(spec) = &pod.spec else { return 0 };
    spec.containers
        .iter()
        .filter_map(|c| {
            let r = c.resources.as_ref()?;
            let q = r
                .requests
                .as_ref()
                .and_then(|m| m.get(resource))
                .or_else(|| r.limits.as_ref()?.get(resource))?;
            q.0.parse::<i64>().ok()
        })
        .sum()
}

/// Watcher config of running pods: bound, not Succeeded, not Failed. A pod that
/// finishes leaves the selection, which the watch reports as a deletion.
pub fn running_pods_config() -> watcher::Config {
    watcher::Config::default()
        .fields("spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed")
}

/// Starts a reflector of running pods; returns its store and a stream of touched
/// pods for controllers to map to the objects they affect.
pub fn reflect(
    client: Client,
) -> (
    Store<Pod>,
    impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Pod>::all(client), running_pods_config())
            .default_backoff()
            // Only what GPU accounting needs is kept: thousands of pods stay small.
            .modify(|pod| {
                pod.managed_fields_mut().clear();
                pod.annotations_mut().clear();
                if let Some(status) = pod.status.as_mut() {
                    status.conditions = None;
                    status.container_statuses = None;
                }
            }),
    )
    .touched_objects();
    (reader, stream)
}
