//! The fuzz run's dealings with the API server: the runner's own nodes, storage and
//! namespaces; creating the world's objects and counting what the API refuses;
//! snapshots; deleting everything and finding what is stuck; the operator process.
use super::checks::Snapshot;
use super::world::{FUZZ_LABEL, Kind, NODE_GPUS, Planned, World};
use aifactory_api::{Dataset, GpuPool, POOL_LABEL, POOL_TAINT, Tenant, TrainingJob, Workspace};
use aifactory_tests::{TEST_GROUP, kubectl, operator_addr, state_dir};
use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Requests in flight at once while creating and deleting.
const IN_FLIGHT: usize = 8;

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::GpuPool => ApiResource::erase::<GpuPool>(&()),
        Kind::Tenant => ApiResource::erase::<Tenant>(&()),
        Kind::Dataset => ApiResource::erase::<Dataset>(&()),
        Kind::Workspace => ApiResource::erase::<Workspace>(&()),
        Kind::TrainingJob => ApiResource::erase::<TrainingJob>(&()),
    }
}

fn dynamic(client: &Client, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = resource(kind);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// The runner's nodes (8 GPUs each), StorageClass and volumes, PriorityClass and
/// namespaces of no tenant.
pub async fn provision(client: &Client, w: &World) -> Result<()> {
    let nodes = Api::<Node>::all(client.clone());
    for n in &w.nodes {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": n.name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": n.labels},
            "status": {"capacity": {"cpu": "64", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": NODE_GPUS.to_string()},
                       "allocatable": {"cpu": "64", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": NODE_GPUS.to_string()}}
        }))?;
        nodes
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {}", n.name))?;
    }
    let label = json!({FUZZ_LABEL: w.group});
    let sc: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": w.storage_class, "labels": label},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Retain",
    }))?;
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await?;
    let pvs = Api::<PersistentVolume>::all(client.clone());
    for (name, size, region) in &w.volumes {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {FUZZ_LABEL: w.group, "topology.kubernetes.io/region": region}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": w.storage_class,
                     "nfs": {"server": "nfs.fuzz.invalid", "path": format!("/exports/{name}")}}
        }))?;
        pvs.create(&PostParams::default(), &pv).await?;
    }
    let pc: PriorityClass = serde_json::from_value(json!({
        "metadata": {"name": w.priority_class, "labels": label}, "value": 1000,
    }))?;
    Api::<PriorityClass>::all(client.clone())
        .create(&PostParams::default(), &pc)
        .await?;
    for ns in &w.plain_namespaces {
        let n: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": label}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await?;
    }
    // Ready nodes, or pools would start without members.
    aifactory_tests::wait_for("the runner's nodes Ready", Duration::from_secs(120), || {
        let nodes = nodes.clone();
        let group = w.group.clone();
        let want = w.nodes.len();
        async move {
            let list = nodes
                .list(&ListParams::default().labels(&format!("{TEST_GROUP}={group}")))
                .await?;
            let ready = list
                .items
                .iter()
                .filter(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            Ok((ready == want).then_some(()))
        }
    })
    .await
}

/// What became of the objects sent: accepted (with their uid), or refused by
/// reason.
#[derive(Default)]
pub struct Outcome {
    pub accepted: BTreeMap<Kind, Vec<Planned>>,
    /// (kind, reason) → count, and a few of the messages.
    pub refused: BTreeMap<(Kind, String), (usize, Vec<String>)>,
    /// Objects the runner could not send at all (transport errors).
    pub errors: Vec<String>,
}

impl Outcome {
    pub fn accepted(&self, kind: Kind) -> usize {
        self.accepted.get(&kind).map_or(0, Vec::len)
    }
    pub fn refused(&self, kind: Kind) -> usize {
        self.refused
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, (n, _))| n)
            .sum()
    }
}

/// A refusal's reason, in a form that counts: the Status reason and, for an
/// invalid object, the fields refused; else the message without its names.
fn reason(status: &kube::core::Status) -> String {
    let causes: Vec<String> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.field.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !causes.is_empty() {
        return format!("{} {} ({})", status.code, status.reason, causes.join(", "));
    }
    // `namespaces "x" not found`, `... is being terminated`: the kind of thing,
    // not its name.
    let words: Vec<&str> = status.message.split('"').step_by(2).collect();
    format!(
        "{} {}: {}",
        status.code,
        status.reason,
        words.join("…").trim()
    )
}

/// Sends `objects` (IN_FLIGHT at a time), counting what the API accepts and refuses.
pub async fn create(client: &Client, objects: &[Planned], out: &mut Outcome) {
    let results: Vec<(Planned, Result<(), kube::Error>)> =
        futures::stream::iter(objects.iter().cloned())
            .map(|p| {
                let client = client.clone();
                async move {
                    let api = dynamic(&client, p.kind, p.namespace.as_deref());
                    let obj: DynamicObject =
                        serde_json::from_value(p.object.clone()).expect("an object");
                    let mut tries = 0;
                    let r = loop {
                        match api.create(&PostParams::default(), &obj).await {
                            Ok(_) => break Ok(()),
                            Err(kube::Error::Api(s)) => break Err(kube::Error::Api(s)),
                            Err(e) if tries < 3 => {
                                tries += 1;
                                let _ = e;
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(e) => break Err(e),
                        }
                    };
                    (p, r)
                }
            })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
    for (p, r) in results {
        match r {
            Ok(()) => out.accepted.entry(p.kind).or_default().push(p),
            Err(kube::Error::Api(s)) => {
                let e = out.refused.entry((p.kind, reason(&s))).or_default();
                e.0 += 1;
                if e.1.len() < 2 {
                    e.1.push(format!(
                        "{}: {}",
                        p.namespace.clone().map(|n| n + "/").unwrap_or_default() + &p.name,
                        s.message
                    ));
                }
            }
            Err(e) => out
                .errors
                .push(format!("{} {}: {e}", p.kind.name(), p.name)),
        }
    }
}

/// Waits (up to `timeout`) until the namespaces of the accepted tenants exist:
/// work sent before would be refused for a reason that says nothing.
pub async fn wait_for_namespaces(
    client: &Client,
    tenants: &[Planned],
    timeout: Duration,
) -> (usize, usize) {
    let want: std::collections::BTreeSet<String> = tenants
        .iter()
        .flat_map(|p| {
            let t: Tenant = serde_json::from_value(p.object.clone()).expect("a tenant");
            t.spec.namespaces_or_default(&p.name)
        })
        .collect();
    let api = Api::<Namespace>::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let have: std::collections::BTreeSet<String> = api
            .list_metadata(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|n| n.name_any()).collect())
            .unwrap_or_default();
        let found = want.iter().filter(|n| have.contains(*n)).count();
        if found == want.len() || tokio::time::Instant::now() >= deadline {
            return (found, want.len());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn list<K>(client: &Client, selector: &str) -> Result<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api = Api::<K>::all(client.clone());
    let lp = if selector.is_empty() {
        ListParams::default()
    } else {
        ListParams::default().labels(selector)
    };
    Ok(api.list(&lp).await?.items)
}

/// Everything the checks look at, now.
pub async fn snapshot(client: &Client, group: &str) -> Result<Snapshot> {
    let mine = format!("{FUZZ_LABEL}={group}");
    Ok(Snapshot {
        at: jiff::Timestamp::now().as_second(),
        jobs: list(client, &mine).await?,
        workspaces: list(client, &mine).await?,
        pools: list(client, &mine).await?,
        tenants: list(client, &mine).await?,
        datasets: list(client, &mine).await?,
        nodes: list(client, "").await?,
        pods: list(client, "").await?,
        namespaces: list(client, "").await?,
        priority_classes: list(client, "").await?,
    })
}

/// Deletes every fuzz object (IN_FLIGHT at a time, in `order`).
pub async fn delete_all(client: &Client, order: &[Planned]) -> usize {
    let results: Vec<bool> = futures::stream::iter(order.iter().cloned())
        .map(|p| {
            let client = client.clone();
            async move {
                let api = dynamic(&client, p.kind, p.namespace.as_deref());
                match api.delete(&p.name, &DeleteParams::default()).await {
                    Ok(_) => true,
                    Err(kube::Error::Api(s)) if s.code == 404 => true,
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    results.iter().filter(|ok| !**ok).count()
}

/// What is left of the run's objects: `kind namespace/name (finalizers, deleting
/// since)` of each, and the nodes still carrying a pool's label or taint.
pub async fn leftovers(client: &Client, group: &str) -> Result<Vec<String>> {
    let s = snapshot(client, group).await?;
    let now = jiff::Timestamp::now().as_second();
    let mut out = vec![];
    fn describe<K: ResourceExt>(kind: &str, o: &K, now: i64, out: &mut Vec<String>) {
        let since = o
            .meta()
            .deletion_timestamp
            .as_ref()
            .map(|t| format!("deleting for {}s", now - t.0.as_second()))
            .unwrap_or_else(|| "not deleted".into());
        out.push(format!(
            "{kind} {} ({since}, finalizers {:?})",
            super::checks::id(o),
            o.finalizers()
        ));
    }
    s.pools
        .iter()
        .for_each(|o| describe("GpuPool", o, now, &mut out));
    s.tenants
        .iter()
        .for_each(|o| describe("Tenant", o, now, &mut out));
    s.datasets
        .iter()
        .for_each(|o| describe("Dataset", o, now, &mut out));
    s.workspaces
        .iter()
        .for_each(|o| describe("Workspace", o, now, &mut out));
    s.jobs
        .iter()
        .for_each(|o| describe("TrainingJob", o, now, &mut out));
    for n in s
        .nodes
        .iter()
        .filter(|n| n.labels().get(TEST_GROUP).map(String::as_str) == Some(group))
    {
        let taints: Vec<String> = n
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .filter(|t| t.key == POOL_TAINT)
            .map(|t| {
                format!(
                    "{}={}:{}",
                    t.key,
                    t.value.clone().unwrap_or_default(),
                    t.effect
                )
            })
            .collect();
        if n.labels().contains_key(POOL_LABEL) || !taints.is_empty() {
            out.push(format!(
                "Node {} (label {:?}, taints {taints:?})",
                n.name_any(),
                n.labels().get(POOL_LABEL)
            ));
        }
    }
    Ok(out)
}

/// Namespaces of `names` that still exist, with their phase and what they wait for.
pub async fn namespaces_left(client: &Client, names: &[String]) -> Result<Vec<String>> {
    let api = Api::<Namespace>::all(client.clone());
    let mut out = vec![];
    for n in names {
        if let Some(ns) = api.get_opt(n).await? {
            let st = ns.status.clone().unwrap_or_default();
            let waits: Vec<String> = st
                .conditions
                .iter()
                .flatten()
                .filter(|c| c.status == "True")
                .map(|c| format!("{}: {}", c.type_, c.message.clone().unwrap_or_default()))
                .collect();
            out.push(format!(
                "{n} ({}{})",
                st.phase.unwrap_or_default(),
                if waits.is_empty() {
                    String::new()
                } else {
                    format!("; {}", waits.join("; "))
                }
            ));
        }
    }
    Ok(out)
}

/// Removes what the runner made for itself (nodes, storage, priority class, the
/// namespaces of no tenant and those tenants retained), then recycles the factory's
/// volumes (what the run's claims of the default class released).
pub async fn unprovision(client: &Client, w: &World, namespaces: &[String]) {
    let label = format!("{FUZZ_LABEL}={}", w.group);
    let group = format!("{TEST_GROUP}={}", w.group);
    for args in [
        vec!["delete", "namespaces", "-l", &label, "--wait=false"],
        vec!["delete", "priorityclasses", "-l", &label, "--wait=false"],
        vec!["delete", "nodes", "-l", &group, "--wait=false"],
    ] {
        let _ = kubectl(&args);
    }
    for ns in namespaces {
        let _ = kubectl(&[
            "delete",
            "namespace",
            ns,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
    // Volumes go once their claims have.
    let _ = kubectl(&["delete", "persistentvolumes", "-l", &label, "--wait=false"]);
    let _ = kubectl(&["delete", "storageclass", "-l", &label, "--wait=false"]);
    let _ =
        std::process::Command::new(aifactory_tests::repo_root().join("hack/factory-storage.sh"))
            .output();
    let _ = client;
}

/// Waits (up to `timeout`) until what `unprovision` removes is gone: a run of the
/// same seed makes the same names again. What is still there then.
pub async fn wait_unprovisioned(
    client: &Client,
    w: &World,
    timeout: Duration,
) -> Result<Vec<String>> {
    let label = format!("{FUZZ_LABEL}={}", w.group);
    let group = format!("{TEST_GROUP}={}", w.group);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut left: Vec<String> = vec![];
        let lp = |s: &str| ListParams::default().labels(s);
        left.extend(
            Api::<Node>::all(client.clone())
                .list_metadata(&lp(&group))
                .await?
                .items
                .iter()
                .map(|o| format!("node {}", o.name_any())),
        );
        left.extend(
            Api::<Namespace>::all(client.clone())
                .list_metadata(&lp(&label))
                .await?
                .items
                .iter()
                .map(|o| format!("namespace {}", o.name_any())),
        );
        left.extend(
            Api::<PersistentVolume>::all(client.clone())
                .list_metadata(&lp(&label))
                .await?
                .items
                .iter()
                .map(|o| format!("volume {}", o.name_any())),
        );
        left.extend(
            Api::<StorageClass>::all(client.clone())
                .list_metadata(&lp(&label))
                .await?
                .items
                .iter()
                .map(|o| format!("storageclass {}", o.name_any())),
        );
        left.extend(
            Api::<PriorityClass>::all(client.clone())
                .list_metadata(&lp(&label))
                .await?
                .items
                .iter()
                .map(|o| format!("priorityclass {}", o.name_any())),
        );
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// The operator process as the run starts: its pid, where its log stands, its
/// panics counted so far, the Lease's holder.
#[derive(Debug, Clone)]
pub struct OperatorMark {
    pub pid: Option<String>,
    pub log_len: u64,
    pub panics: f64,
    pub holder: Option<String>,
}

/// Panics the operator counted: `aifactory_reconcile_errors_total{…reason="panic"}`.
pub fn panics(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("aifactory_reconcile_errors_total{") && l.contains("reason=\"panic\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics() -> Result<String> {
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "10",
            &format!("http://{}/metrics", operator_addr()),
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "scraping the operator's metrics at {} failed",
        operator_addr()
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn log_path() -> std::path::PathBuf {
    state_dir().join("logs/operator.log")
}

pub async fn operator_mark(client: &Client) -> Result<OperatorMark> {
    let pid = std::fs::read_to_string(state_dir().join("operator.pid"))
        .ok()
        .map(|p| p.trim().to_string());
    let log_len = std::fs::metadata(log_path()).map(|m| m.len()).unwrap_or(0);
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "default")
            .get_opt("aifactory-operator")
            .await?;
    Ok(OperatorMark {
        pid,
        log_len,
        panics: panics(&metrics()?),
        holder: lease.and_then(|l| l.spec?.holder_identity),
    })
}

/// Whether the operator the run started with is gone (its pid no longer runs):
/// then nothing more will settle, and waiting longer tells nothing.
pub fn operator_gone(start: &OperatorMark) -> bool {
    start
        .pid
        .as_ref()
        .is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
}

/// Check 1: the operator that was running at `start` still runs, still leads, and
/// neither panicked nor logged a panic since.
pub async fn operator_problems(client: &Client, start: &OperatorMark) -> Vec<String> {
    let mut out = vec![];
    let pid = std::fs::read_to_string(state_dir().join("operator.pid"))
        .ok()
        .map(|p| p.trim().to_string());
    match (&start.pid, &pid) {
        (Some(a), Some(b)) if a != b => out.push(format!(
            "the operator's pid changed from {a} to {b}: it restarted"
        )),
        (Some(a), _) if !std::path::Path::new(&format!("/proc/{a}")).exists() => {
            out.push(format!("the operator (pid {a}) is gone"))
        }
        _ => {}
    }
    if let Ok(log) = std::fs::read(log_path()) {
        let from = (start.log_len as usize).min(log.len());
        let text = String::from_utf8_lossy(&log[from..]);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("panicked"))
            .take(5)
            .collect();
        if !lines.is_empty() {
            out.push(format!(
                "the operator's log says it panicked:\n    {}",
                lines.join("\n    ")
            ));
        }
    }
    let now = match operator_mark(client).await {
        Ok(m) => m,
        Err(e) => {
            out.push(format!("the operator does not answer: {e}"));
            return out;
        }
    };
    if start.holder != now.holder {
        out.push(format!(
            "the leader changed from {:?} to {:?}",
            start.holder, now.holder
        ));
    }
    if now.panics > 0.0 {
        out.push(format!(
            "the operator counts {} panics (reason=\"panic\"), {} during the run",
            now.panics,
            now.panics - start.panics
        ));
    }
    out
}
