//! Watch caches that answer "is the live object already as desired?" without a
//! GET, and change streams that wake a controller only when something it acts on
//! changed. A ResourceQuota's status changes with every pod of its namespace; the
//! Tenant that owns it has nothing to do about that, so a status change is no
//! trigger.
use futures::{Stream, StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};

/// A fingerprint of what a controller sets on an object it owns: everything but
/// `status` and the metadata the server keeps (resourceVersion, managedFields,
/// timestamps, generation). Deletion, labels, annotations, owner references and
/// finalizers count.
pub fn desired_fields<K: Serialize>(obj: &K) -> u64 {
    let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "name"
                        | "namespace"
                        | "uid"
                        | "labels"
                        | "annotations"
                        | "ownerReferences"
                        | "finalizers"
                        | "deletionTimestamp"
                )
            });
        }
    }
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

/// A fingerprint of the whole object but its resourceVersion: any change counts,
/// status included.
pub fn any_change<K: Serialize>(obj: &K) -> u64 {
    let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(Value::Object(meta)) = value.get_mut("metadata") {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

/// A reflector of `api` (managed fields pruned), and a stream of the objects whose
/// `fingerprint` changed since they were last seen, and of those deleted. A watch
/// restart lists everything again; what did not change stays quiet.
pub fn watch_changes<K>(
    api: Api<K>,
    config: watcher::Config,
    fingerprint: fn(&K) -> u64,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watch_pruned(api, config, fingerprint, |_| {})
}

/// [`watch_changes`], with `prune` taking out of every object what nobody reads
/// from the cache (so it costs no memory).
pub fn watch_pruned<K>(
    api: Api<K>,
    config: watcher::Config,
    fingerprint: fn(&K) -> u64,
    prune: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
    let changes = reflector::reflector(
        writer,
        watcher(api, config).default_backoff().modify(move |o| {
            o.managed_fields_mut().clear();
            prune(o);
        }),
    )
    .map_ok(move |event| {
        let changed: Vec<K> = match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                let print = fingerprint(&o);
                if seen.insert(ObjectRef::from_obj(&o), print) == Some(print) {
                    vec![]
                } else {
                    vec![o]
                }
            }
            watcher::Event::Delete(o) => {
                seen.remove(&ObjectRef::from_obj(&o));
                vec![o]
            }
            watcher::Event::Init | watcher::Event::InitDone => vec![],
        };
        futures::stream::iter(changed.into_iter().map(Ok))
    })
    .try_flatten();
    (reader, changes.boxed())
}

/// The object named `name` (in `namespace`) as the cache holds it.
pub fn cached<K>(store: &Store<K>, namespace: Option<&str>, name: &str) -> Option<std::sync::Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let key = ObjectRef::new(name);
    store.get(&match namespace {
        Some(ns) => key.within(ns),
        None => key,
    })
}

/// The names of the cached objects carrying label `key=value`.
pub fn labelled<K>(store: &Store<K>, key: &str, value: &str) -> Vec<std::sync::Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .into_iter()
        .filter(|o| o.labels().get(key).map(String::as_str) == Some(value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceQuota;
    use serde_json::json;

    fn quota(v: Value) -> ResourceQuota {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_status_or_server_metadata_change_keeps_the_fingerprint_a_spec_change_does_not() {
        let base = json!({"metadata": {"name": "q", "namespace": "acme", "resourceVersion": "1",
            "labels": {"aifactory.dev/tenant": "acme"}}, "spec": {"hard": {"count/pods": "2k"}},
            "status": {"used": {"count/pods": "1"}}});
        let print = desired_fields(&quota(base.clone()));
        let mut status = base.clone();
        status["status"]["used"]["count/pods"] = json!("7");
        status["metadata"]["resourceVersion"] = json!("2");
        assert_eq!(desired_fields(&quota(status)), print);
        let mut spec = base.clone();
        spec["spec"]["hard"]["count/pods"] = json!("3k");
        assert_ne!(desired_fields(&quota(spec)), print);
        let mut label = base;
        label["metadata"]["labels"]["x"] = json!("y");
        assert_ne!(desired_fields(&quota(label)), print);
    }
}
