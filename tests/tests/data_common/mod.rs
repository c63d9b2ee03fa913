//! What the dataset and workspace tests share: tenants made and removed per test,
//! the factory's volume pool, restricted pods that mount a claim.
#![allow(dead_code)]
use aifactory_api::{Dataset, DatasetPhase, Tenant};
use aifactory_tests::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

/// How long a test waits for the operator and the controller-manager.
pub const WAIT: Duration = Duration::from_secs(90);

/// A tenant of the test: its name is also its only namespace, its owner is the
/// user `<name>-owner`.
pub struct TestTenant {
    /// Name and namespace.
    pub name: String,
    _guard: Cleanup,
}

impl TestTenant {
    /// The owner's user name.
    pub fn owner(&self) -> String {
        format!("{}-owner", self.name)
    }

    /// A client acting as the tenant's owner.
    pub async fn as_owner(&self) -> anyhow::Result<Client> {
        impersonate(&self.owner(), &["system:authenticated"]).await
    }
}

/// Makes sure the factory's volume pool exists and its released volumes are free
/// again (`hack/factory-storage.sh`), once per test binary.
pub fn volumes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new(repo_root().join("hack/factory-storage.sh"))
            .output()
            .expect("running hack/factory-storage.sh");
        assert!(
            out.status.success(),
            "factory-storage.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Admin client, CRDs, operator and volumes: what every test needs first.
pub async fn setup() -> anyhow::Result<Client> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    volumes();
    Ok(client)
}

/// Creates tenant `<prefix>-<unique>` with `spec` (owners filled in) and waits
/// until the Tenant controller made its namespace.
pub async fn tenant(client: &Client, prefix: &str, spec: Value) -> anyhow::Result<TestTenant> {
    let name = unique_name(prefix);
    let mut spec = spec;
    spec["owners"] = json!([{"kind": "User", "name": format!("{name}-owner")}]);
    let t: Tenant = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name}, "spec": spec,
    }))?;
    let api = Api::<Tenant>::all(client.clone());
    api.create(&PostParams::default(), &t).await?;
    let guard = Cleanup::one("tenant", name.clone());
    wait_for(&format!("tenant {name} Ready"), WAIT, || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let t = api.get(&name).await?;
            Ok(t.status
                .is_some_and(|s| {
                    s.namespaces == [name.clone()]
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
                .then_some(()))
        }
    })
    .await?;
    Ok(TestTenant {
        name,
        _guard: guard,
    })
}

/// Creates a Dataset in `ns`.
pub async fn create_dataset(
    client: &Client,
    ns: &str,
    name: &str,
    annotations: Value,
    spec: Value,
) -> anyhow::Result<Dataset> {
    let ds: Dataset = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Dataset",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations}, "spec": spec,
    }))?;
    Ok(Api::<Dataset>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &ds)
        .await?)
}

/// Waits until the Dataset satisfies `check`; returns it.
pub async fn wait_dataset(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Dataset) -> bool,
) -> anyhow::Result<Dataset> {
    let api = Api::<Dataset>::namespaced(client.clone(), ns);
    let check = &check;
    wait_for(&format!("dataset {ns}/{name}: {what}"), WAIT, || {
        let api = api.clone();
        async move {
            let ds = api.get(name).await?;
            Ok(check(&ds).then_some(ds))
        }
    })
    .await
}

/// The phase of a dataset.
pub fn phase(ds: &Dataset) -> Option<DatasetPhase> {
    ds.status.as_ref().and_then(|s| s.phase)
}

/// The condition `type_` of a dataset, as (status, reason, message).
pub fn condition(ds: &Dataset, type_: &str) -> Option<(String, String, String)> {
    ds.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the dataset is Ready; returns it.
pub async fn wait_ready(client: &Client, ns: &str, name: &str) -> anyhow::Result<Dataset> {
    wait_dataset(client, ns, name, "Ready", |d| {
        phase(d) == Some(DatasetPhase::Ready)
    })
    .await
}

/// A pod that complies with Pod Security `restricted` and mounts `claim`
/// read-only at /data; it runs until deleted.
pub fn reader_pod(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "reader", "image": "busybox:1.37", "command": ["sleep", "infinity"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}],
        }
    }))
    .expect("a valid Pod")
}

/// Waits until pod `ns/name` runs.
pub async fn wait_running(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    wait_for(&format!("pod {ns}/{name} Running"), WAIT, || {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await?;
            Ok((p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
        }
    })
    .await
}

/// Waits until object `name` is gone from `api`.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(what, WAIT, || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
    })
    .await
}

/// Whether claim `ns/name` is bound.
pub async fn claim_bound(client: &Client, ns: &str, name: &str) -> anyhow::Result<bool> {
    Ok(Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .and_then(|c| c.status)
        .and_then(|s| s.phase)
        .as_deref()
        == Some("Bound"))
}

/// `(type, reason, note)` of the Events on object `name` of kind `kind` in `ns`.
pub async fn events_on(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}
