//! The independent checker: it shares no code with the operator. It follows Nodes,
//! Pods, Jobs, TrainingJobs and the leader Lease through the API with its own
//! client (watches, so every state the API server went through is seen in order;
//! a relist after a lost watch is applied at once, as one state) and checks, at
//! every state and on a 1 s sample:
//! - GPUs per node ≤ the node's allocatable, counted from the TrainingJobs that
//!   hold GPUs (phase Admitted or Running, `status.placement.nodes`) and from the
//!   pods bound to the node (`spec.nodeName`, requests of the GPU resource, not
//!   Succeeded or Failed);
//! - GPUs per tenant ≤ guarantee + borrowing limit, from the same two sources
//!   (pods being deleted not counted: their GPUs are on their way back);
//! - no job run twice: never two live pods of one TrainingJob with the same
//!   completion index, nor more live pods than its `spec.nodes`, nor a new
//!   `admittedAt` while it held GPUs all along;
//! - no job lost: a TrainingJob disappears only when the runner deleted it.
//!
//! TrainingJobs are read as plain JSON (the documented fields), not through the
//! operator's types.
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// `namespace/name` of a TrainingJob.
pub type Key = String;

pub const GPU: &str = "nvidia.com/gpu";

/// The documented TrainingJob resource.
pub fn trainingjobs() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("aifactory.dev", "v1alpha1", "TrainingJob"),
        "trainingjobs",
    )
}

/// The documented Tenant resource.
pub fn tenants() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("aifactory.dev", "v1alpha1", "Tenant"),
        "tenants",
    )
}

/// What the checker reads of a TrainingJob.
#[derive(Clone, Debug, Default)]
pub struct TjView {
    pub uid: String,
    pub resource_version: String,
    pub phase: String,
    pub admitted_at: Option<String>,
    pub restarts: i64,
    pub placement: Vec<String>,
    pub nodes: i64,
    pub gpus_per_node: i64,
    pub gpu_hours: f64,
    /// `status.periodUsage`: (period, GPU-hours).
    pub period_usage: Option<(String, f64)>,
    pub deleting: Option<jiff::Timestamp>,
    pub finalizers: Vec<String>,
}

impl TjView {
    pub fn from_json(o: &Value) -> Self {
        let s = &o["status"];
        let text = |v: &Value| v.as_str().map(str::to_string);
        Self {
            uid: text(&o["metadata"]["uid"]).unwrap_or_default(),
            resource_version: text(&o["metadata"]["resourceVersion"]).unwrap_or_default(),
            phase: text(&s["phase"]).unwrap_or_default(),
            admitted_at: text(&s["admittedAt"]),
            restarts: s["restarts"].as_i64().unwrap_or_default(),
            placement: s["placement"]["nodes"]
                .as_array()
                .map(|a| a.iter().filter_map(text).collect())
                .unwrap_or_default(),
            nodes: o["spec"]["nodes"].as_i64().unwrap_or_default(),
            gpus_per_node: o["spec"]["gpusPerNode"].as_i64().unwrap_or_default(),
            gpu_hours: s["gpuHours"].as_f64().unwrap_or_default(),
            period_usage: text(&s["periodUsage"]["period"])
                .map(|p| (p, s["periodUsage"]["gpuHours"].as_f64().unwrap_or_default())),
            deleting: text(&o["metadata"]["deletionTimestamp"]).and_then(|t| t.parse().ok()),
            finalizers: o["metadata"]["finalizers"]
                .as_array()
                .map(|a| a.iter().filter_map(text).collect())
                .unwrap_or_default(),
        }
    }

    /// One line of a job's history.
    pub fn describe(&self) -> String {
        format!(
            "{} admittedAt={} nodes={:?} restarts={} rv={}{}",
            if self.phase.is_empty() {
                "-"
            } else {
                &self.phase
            },
            self.admitted_at.as_deref().unwrap_or("-"),
            self.placement,
            self.restarts,
            self.resource_version,
            if self.deleting.is_some() {
                " deleting"
            } else {
                ""
            }
        )
    }

    /// Holds GPUs, as admission counts them: admitted or running, on a placement.
    pub fn holding(&self) -> bool {
        matches!(self.phase.as_str(), "Admitted" | "Running") && !self.placement.is_empty()
    }
}

/// What the checker reads of a pod.
#[derive(Clone, Debug)]
struct PodView {
    namespace: String,
    node: String,
    gpus: i64,
    /// Not Succeeded or Failed: its containers may run.
    live: bool,
    deleting: bool,
    owner_job: Option<String>,
    index: Option<String>,
    /// GPU-seconds of a finished pod: its GPUs × (containers' finish − start).
    gpu_seconds: Option<f64>,
}

impl PodView {
    fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        let mut gpus = 0;
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            let res = c.resources.as_ref();
            let q = res
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(GPU))
                .or_else(|| res.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(GPU)));
            gpus += q.and_then(|q| q.0.parse::<i64>().ok()).unwrap_or(0);
        }
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let gpu_seconds = terminal.then(|| {
            let mut secs: f64 = 0.0;
            for cs in status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
            {
                if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref())
                    && let (Some(a), Some(b)) = (&t.started_at, &t.finished_at)
                {
                    secs = secs.max(b.0.duration_since(a.0).as_secs_f64().max(0.0));
                }
            }
            secs * gpus as f64
        });
        Self {
            namespace: pod.namespace().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            gpus,
            live: !terminal,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            owner_job: pod
                .owner_references()
                .iter()
                .find(|o| o.kind == "Job")
                .map(|o| o.uid.clone()),
            index: pod
                .annotations()
                .get("batch.kubernetes.io/job-completion-index")
                .cloned(),
            gpu_seconds,
        }
    }
}

/// One look at the leader Lease.
#[derive(Clone, Debug)]
pub struct LeaseSeen {
    pub at: jiff::Timestamp,
    pub holder: String,
}

/// What the runner knows of each job it submitted.
#[derive(Clone, Debug, Default)]
pub struct Track {
    pub submitted: Option<jiff::Timestamp>,
    pub tenant: String,
    pub nodes: i64,
    pub gpus_per_node: i64,
    pub seconds: u64,
    pub delete_early: bool,
    pub admissions: BTreeSet<String>,
    pub preemptions: u32,
    pub first_held: Option<jiff::Timestamp>,
    pub succeeded: Option<jiff::Timestamp>,
    pub failed: bool,
    pub last_phase: String,
    pub delete_requested: Option<jiff::Timestamp>,
    pub gone: Option<jiff::Timestamp>,
    /// GPU-hours read from the job (`status.periodUsage`, `status.gpuHours`) right
    /// before the runner deleted it.
    pub recorded: Option<(f64, f64)>,
    /// GPU-seconds of its pods' run times.
    pub pod_gpu_seconds: f64,
    /// Every state seen, with when (the last 60).
    pub history: Vec<String>,
}

/// Broken invariants, by kind, each noted once.
#[derive(Clone, Debug, Default)]
pub struct Violations {
    pub over_node_jobs: Vec<String>,
    pub over_node_pods: Vec<String>,
    pub over_tenant_jobs: Vec<String>,
    pub over_tenant_pods: Vec<String>,
    pub pods_off_pool: Vec<String>,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub deposed_writes: Vec<String>,
    pub stranded: Vec<String>,
    pub other: Vec<String>,
}

fn note(list: &mut Vec<String>, v: String) {
    if list.len() < 200 && !list.contains(&v) {
        list.push(v);
    }
}

impl Violations {
    pub fn total(&self) -> usize {
        self.over_node_jobs.len()
            + self.over_node_pods.len()
            + self.over_tenant_jobs.len()
            + self.over_tenant_pods.len()
            + self.pods_off_pool.len()
            + self.lost.len()
            + self.duplicated.len()
            + self.deposed_writes.len()
            + self.stranded.len()
            + self.other.len()
    }

    pub fn all(&self) -> Vec<String> {
        let mut out = vec![];
        for (kind, list) in [
            ("over-admission (node, jobs)", &self.over_node_jobs),
            ("over-admission (node, pods)", &self.over_node_pods),
            ("over-admission (tenant, jobs)", &self.over_tenant_jobs),
            ("over-admission (tenant, pods)", &self.over_tenant_pods),
            ("pod outside its pool", &self.pods_off_pool),
            ("lost job", &self.lost),
            ("duplicated job", &self.duplicated),
            ("write of a deposed leader", &self.deposed_writes),
            ("stranded finalizer", &self.stranded),
            ("other", &self.other),
        ] {
            out.extend(list.iter().map(|v| format!("{kind}: {v}")));
        }
        out
    }
}

/// A map mirrored from a watch: relists are buffered and swapped in at once.
struct Mirror<V> {
    live: BTreeMap<String, V>,
    pending: Option<BTreeMap<String, V>>,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            pending: None,
        }
    }
}

/// Everything the checker knows; behind one lock.
#[derive(Default)]
pub struct State {
    /// Tenant namespace → most GPUs its tenant may hold.
    pub ceilings: BTreeMap<String, i64>,
    /// Node → allocatable GPUs (the pool's nodes).
    pub capacity: BTreeMap<String, i64>,
    tjs: Mirror<TjView>,
    pods: Mirror<PodView>,
    /// Job uid → TrainingJob key (through the Job's owner reference).
    jobs: Mirror<Key>,
    pub tracks: BTreeMap<Key, Track>,
    pub violations: Violations,
    pub lease: Vec<LeaseSeen>,
    pub relists: BTreeMap<&'static str, u32>,
    pub peak_gpus_jobs: i64,
    pub peak_gpus_pods: i64,
    /// Longest a TrainingJob the runner deleted waited for its finalizer (s).
    pub longest_deletion: f64,
    pub samples: u64,
    /// Pod uids whose run time is counted.
    counted_pods: BTreeSet<String>,
    /// For each broken invariant, when it was first seen and the histories of the
    /// jobs involved.
    pub evidence: Vec<String>,
}

impl State {
    pub fn tj(&self, key: &str) -> Option<&TjView> {
        self.tjs.live.get(key)
    }

    pub fn tj_views(&self) -> impl Iterator<Item = (&Key, &TjView)> {
        self.tjs.live.iter()
    }

    /// The holder of the lease as last seen, and since when it was seen holding;
    /// with `after`, since its first lease write seen after then (a replica
    /// restarted under the same identity holds the lease afresh, unseen by name).
    pub fn holder(&self, after: Option<jiff::Timestamp>) -> Option<(String, jiff::Timestamp)> {
        let last = self.lease.last()?;
        if last.holder.is_empty() {
            return None;
        }
        let since = match after {
            // Writes in flight at the event land within a fraction of a second.
            Some(t) => {
                let t = t.checked_add(jiff::SignedDuration::from_millis(200)).ok()?;
                self.lease
                    .iter()
                    .find(|l| l.at > t && l.holder == last.holder)?
                    .at
            }
            None => self
                .lease
                .iter()
                .rev()
                .take_while(|l| l.holder == last.holder)
                .last()
                .map_or(last.at, |l| l.at),
        };
        Some((last.holder.clone(), since))
    }

    fn on_tj(&mut self, key: Key, view: Option<TjView>) {
        let now = jiff::Timestamp::now();
        let previous = self.tjs.live.get(&key).cloned();
        let Some(track) = self.tracks.get_mut(&key) else {
            return;
        };
        let line = format!(
            "{} {}",
            now.strftime("%H:%M:%S%.3f"),
            view.as_ref().map_or("gone".to_string(), TjView::describe)
        );
        if track.history.len() >= 60 {
            track.history.remove(0);
        }
        track.history.push(line);
        match &view {
            None => {
                if track.delete_requested.is_some() {
                    track.gone.get_or_insert(now);
                } else {
                    note(
                        &mut self.violations.lost,
                        format!("{key} disappeared, never deleted by the runner"),
                    );
                }
            }
            Some(v) => {
                if let Some(at) = &v.admitted_at {
                    track.admissions.insert(at.clone());
                }
                if v.holding() {
                    track.first_held.get_or_insert(now);
                }
                if v.phase == "Preempted" && track.last_phase != "Preempted" {
                    track.preemptions += 1;
                }
                if v.phase == "Succeeded" {
                    track.succeeded.get_or_insert(now);
                }
                if v.phase == "Failed" {
                    track.failed = true;
                }
                track.last_phase = v.phase.clone();
                if let Some(p) = &previous
                    && p.holding()
                    && v.holding()
                    && p.admitted_at.is_some()
                    && p.admitted_at != v.admitted_at
                    && p.restarts == v.restarts
                {
                    let violation = format!(
                        "{key} admitted again ({:?} → {:?}) while it held GPUs",
                        p.admitted_at, v.admitted_at
                    );
                    note(&mut self.violations.duplicated, violation.clone());
                    let e = format!(
                        "{violation} (history of {key} above it: {:?})",
                        track.history
                    );
                    if self.evidence.len() < 20 {
                        self.evidence.push(e);
                    }
                }
            }
        }
        match view {
            Some(v) => self.tjs.live.insert(key, v),
            None => self.tjs.live.remove(&key),
        };
    }

    /// Checks the GPU ceilings of nodes and tenants, from the jobs and from the pods.
    pub fn check_gpus(&mut self) {
        let mut node_jobs: BTreeMap<&str, (i64, Vec<&str>)> = BTreeMap::new();
        let mut tenant_jobs: BTreeMap<&str, i64> = BTreeMap::new();
        let mut total_jobs = 0;
        for (key, tj) in &self.tjs.live {
            if !tj.holding() {
                continue;
            }
            for n in &tj.placement {
                let e = node_jobs.entry(n.as_str()).or_default();
                e.0 += tj.gpus_per_node;
                e.1.push(key.as_str());
            }
            let ns = key.split('/').next().unwrap_or_default();
            let gpus = tj.placement.len() as i64 * tj.gpus_per_node;
            *tenant_jobs.entry(ns).or_default() += gpus;
            total_jobs += gpus;
        }
        let mut node_pods: BTreeMap<&str, i64> = BTreeMap::new();
        let mut tenant_pods: BTreeMap<&str, i64> = BTreeMap::new();
        let mut total_pods = 0;
        let mut off_pool = vec![];
        for (uid, p) in &self.pods.live {
            if !p.live || p.node.is_empty() || p.gpus == 0 {
                continue;
            }
            if !self.capacity.contains_key(&p.node) {
                off_pool.push(format!("pod {uid} in {} on node {}", p.namespace, p.node));
            }
            *node_pods.entry(p.node.as_str()).or_default() += p.gpus;
            total_pods += p.gpus;
            if !p.deleting {
                *tenant_pods.entry(p.namespace.as_str()).or_default() += p.gpus;
            }
        }
        let mut found = Violations::default();
        let mut involved: Vec<(String, Vec<String>)> = vec![];
        for (node, (gpus, jobs)) in &node_jobs {
            let cap = self.capacity.get(*node).copied().unwrap_or(0);
            if *gpus > cap {
                let v = format!("node {node} given {gpus} of {cap} GPUs by {jobs:?}");
                involved.push((v.clone(), jobs.iter().map(|j| j.to_string()).collect()));
                found.over_node_jobs.push(v);
            }
        }
        for (node, gpus) in &node_pods {
            let cap = self.capacity.get(*node).copied().unwrap_or(0);
            if *gpus > cap && self.capacity.contains_key(*node) {
                found.over_node_pods.push(format!(
                    "node {node} runs pods requesting {gpus} of {cap} GPUs"
                ));
            }
        }
        for (ns, gpus) in &tenant_jobs {
            let ceiling = self.ceilings.get(*ns).copied().unwrap_or(0);
            if *gpus > ceiling {
                let v = format!("tenant {ns} holds {gpus} GPUs, more than its {ceiling}");
                let jobs = self
                    .tjs
                    .live
                    .iter()
                    .filter(|(k, t)| t.holding() && k.starts_with(&format!("{ns}/")))
                    .map(|(k, _)| k.clone())
                    .collect();
                involved.push((v.clone(), jobs));
                found.over_tenant_jobs.push(v);
            }
        }
        for (ns, gpus) in &tenant_pods {
            let ceiling = self.ceilings.get(*ns).copied().unwrap_or(0);
            if *gpus > ceiling {
                found.over_tenant_pods.push(format!(
                    "tenant {ns} runs pods requesting {gpus} GPUs, more than its {ceiling}"
                ));
            }
        }
        for (v, jobs) in involved {
            let known = self.violations.over_node_jobs.contains(&v)
                || self.violations.over_tenant_jobs.contains(&v);
            if !known && self.evidence.len() < 20 {
                let e = self.evidence_of(&v, &jobs);
                self.evidence.push(e);
            }
        }
        self.peak_gpus_jobs = self.peak_gpus_jobs.max(total_jobs);
        self.peak_gpus_pods = self.peak_gpus_pods.max(total_pods);
        let v = &mut self.violations;
        for s in found.over_node_jobs {
            note(&mut v.over_node_jobs, s);
        }
        for s in found.over_node_pods {
            note(&mut v.over_node_pods, s);
        }
        for s in found.over_tenant_jobs {
            note(&mut v.over_tenant_jobs, s);
        }
        for s in found.over_tenant_pods {
            note(&mut v.over_tenant_pods, s);
        }
        for s in off_pool {
            note(&mut v.pods_off_pool, s);
        }
    }

    /// When `violation` was first seen, and the states the `jobs` went through.
    fn evidence_of(&self, violation: &str, jobs: &[String]) -> String {
        let mut out = format!(
            "{violation}, first seen at {}:",
            jiff::Timestamp::now().strftime("%H:%M:%S%.3f")
        );
        for j in jobs {
            out.push_str(&format!("\n  {j}:"));
            for h in self
                .tracks
                .get(j)
                .map(|t| t.history.as_slice())
                .unwrap_or_default()
            {
                out.push_str(&format!("\n    {h}"));
            }
        }
        out
    }

    /// Live pods per job and completion index: a job runs at most once.
    fn check_runs(&mut self) {
        let mut per_job: BTreeMap<&str, (i64, BTreeMap<&str, u32>)> = BTreeMap::new();
        for p in self.pods.live.values() {
            if !p.live || p.deleting {
                continue;
            }
            let Some(key) = p.owner_job.as_ref().and_then(|j| self.jobs.live.get(j)) else {
                continue;
            };
            let e = per_job.entry(key.as_str()).or_default();
            e.0 += 1;
            if let Some(i) = &p.index {
                *e.1.entry(i.as_str()).or_default() += 1;
            }
        }
        let mut found = vec![];
        for (key, (pods, indexes)) in per_job {
            let nodes = self.tjs.live.get(key).map_or(0, |t| t.nodes);
            if nodes > 0 && pods > nodes {
                found.push(format!("{key} has {pods} live pods for {nodes} nodes"));
            }
            for (i, n) in indexes {
                if n > 1 {
                    found.push(format!(
                        "{key} runs {n} pods of completion index {i} at once"
                    ));
                }
            }
        }
        for s in found {
            note(&mut self.violations.duplicated, s);
        }
    }

    /// The 1 s sample: everything, plus how long deletions wait.
    pub fn sample(&mut self) {
        self.samples += 1;
        self.check_gpus();
        self.check_runs();
        let now = jiff::Timestamp::now();
        let mut longest: f64 = 0.0;
        for tj in self.tjs.live.values() {
            if let Some(t) = tj.deleting {
                longest = longest.max(now.duration_since(t).as_secs_f64());
            }
        }
        for t in self.tracks.values() {
            if let (Some(a), Some(b)) = (t.delete_requested, t.gone) {
                longest = longest.max(b.duration_since(a).as_secs_f64());
            }
        }
        self.longest_deletion = self.longest_deletion.max(longest);
    }

    fn count_pod(&mut self, uid: &str, p: &PodView) {
        let Some(secs) = p.gpu_seconds else { return };
        if self.counted_pods.contains(uid) {
            return;
        }
        let Some(key) = p.owner_job.as_ref().and_then(|j| self.jobs.live.get(j)) else {
            return;
        };
        if let Some(t) = self.tracks.get_mut(key) {
            t.pod_gpu_seconds += secs;
            self.counted_pods.insert(uid.to_string());
        }
    }
}

pub type Shared = Arc<Mutex<State>>;

/// Half a second between attempts, however many fail: each kind has a watch of its
/// own, and the checker must be back as soon as the API server is.
struct QuickBackoff;

impl Iterator for QuickBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        Some(std::time::Duration::from_millis(500))
    }
}

impl kube::runtime::utils::Backoff for QuickBackoff {
    fn reset(&mut self) {}
}

/// Follows one kind; `apply` turns each event into state changes.
async fn follow<K, F>(api: Api<K>, config: watcher::Config, state: Shared, mut apply: F)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: FnMut(&mut State, watcher::Event<K>),
{
    use futures::StreamExt;
    let mut events = std::pin::pin!(watcher(api, config).backoff(QuickBackoff));
    while let Some(event) = events.next().await {
        match event {
            Ok(e) => apply(&mut state.lock().unwrap(), e),
            Err(e) => eprintln!("checker watch error (retrying): {e}"),
        }
    }
}

fn key_of<K: kube::Resource>(o: &K) -> Key {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Starts the checker's watches; they run until aborted.
pub fn watch(
    client: &Client,
    state: Shared,
    node_selector: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![];
    // TrainingJobs: every state, in order.
    tasks.push(tokio::spawn(follow(
        Api::<DynamicObject>::all_with(client.clone(), &trainingjobs()),
        watcher::Config::default(),
        state.clone(),
        |s, e| {
            let ours = |s: &State, o: &DynamicObject| {
                s.ceilings.contains_key(&o.namespace().unwrap_or_default())
            };
            let view =
                |o: &DynamicObject| TjView::from_json(&serde_json::to_value(o).unwrap_or_default());
            match e {
                watcher::Event::Apply(o) if ours(s, &o) => {
                    let (k, v) = (key_of(&o), view(&o));
                    // Only a change of what a job holds can break a GPU ceiling.
                    let relevant =
                        s.tjs.live.get(&k).is_none_or(|p| {
                            p.holding() != v.holding() || p.placement != v.placement
                        });
                    s.on_tj(k, Some(v));
                    if relevant {
                        s.check_gpus();
                    }
                }
                watcher::Event::Delete(o) if ours(s, &o) => {
                    s.on_tj(key_of(&o), None);
                    s.check_gpus();
                }
                watcher::Event::Init => s.tjs.pending = Some(BTreeMap::new()),
                watcher::Event::InitApply(o) if ours(s, &o) => {
                    let v = view(&o);
                    if let Some(p) = s.tjs.pending.as_mut() {
                        p.insert(key_of(&o), v);
                    }
                }
                watcher::Event::InitDone => {
                    *s.relists.entry("trainingjobs").or_default() += 1;
                    let fresh = s.tjs.pending.take().unwrap_or_default();
                    let gone: Vec<Key> = s
                        .tjs
                        .live
                        .keys()
                        .filter(|k| !fresh.contains_key(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        s.on_tj(k, None);
                    }
                    for (k, v) in fresh {
                        // A relist may skip states: no "admitted twice" check across it.
                        s.tjs.live.remove(&k);
                        s.on_tj(k, Some(v));
                    }
                    s.check_gpus();
                }
                _ => {}
            }
        },
    )));
    // Pods of the tenants' namespaces.
    tasks.push(tokio::spawn(follow(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        state.clone(),
        |s, e| {
            let ours =
                |s: &State, o: &Pod| s.ceilings.contains_key(&o.namespace().unwrap_or_default());
            match e {
                watcher::Event::Apply(o) if ours(s, &o) => {
                    let (uid, v) = (o.uid().unwrap_or_default(), PodView::of(&o));
                    s.count_pod(&uid, &v);
                    let relevant = s.pods.live.get(&uid).is_none_or(|p| {
                        (p.live, &p.node, p.deleting, p.gpus)
                            != (v.live, &v.node, v.deleting, v.gpus)
                    });
                    s.pods.live.insert(uid, v);
                    if relevant {
                        s.check_gpus();
                    }
                }
                watcher::Event::Delete(o) if ours(s, &o) => {
                    let (uid, v) = (o.uid().unwrap_or_default(), PodView::of(&o));
                    s.count_pod(&uid, &v);
                    s.pods.live.remove(&uid);
                    s.check_gpus();
                }
                watcher::Event::Init => s.pods.pending = Some(BTreeMap::new()),
                watcher::Event::InitApply(o) if ours(s, &o) => {
                    let (uid, v) = (o.uid().unwrap_or_default(), PodView::of(&o));
                    s.count_pod(&uid, &v);
                    if let Some(p) = s.pods.pending.as_mut() {
                        p.insert(uid, v);
                    }
                }
                watcher::Event::InitDone => {
                    *s.relists.entry("pods").or_default() += 1;
                    s.pods.live = s.pods.pending.take().unwrap_or_default();
                    s.check_gpus();
                }
                _ => {}
            }
        },
    )));
    // Jobs: which TrainingJob each belongs to (its owner reference).
    tasks.push(tokio::spawn(follow(
        Api::<PartialObjectMeta<Job>>::all(client.clone()),
        watcher::Config::default(),
        state.clone(),
        |s, e| {
            let owner = |s: &State, o: &PartialObjectMeta<Job>| {
                let ns = o.namespace().unwrap_or_default();
                if !s.ceilings.contains_key(&ns) {
                    return None;
                }
                o.owner_references()
                    .iter()
                    .find(|r| r.kind == "TrainingJob")
                    .map(|r| (o.uid().unwrap_or_default(), format!("{ns}/{}", r.name)))
            };
            match e {
                // Kept after a Job is deleted: its pods may outlive it.
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    if let Some((uid, key)) = owner(s, &o) {
                        s.jobs.live.insert(uid, key);
                    }
                }
                watcher::Event::InitDone => *s.relists.entry("jobs").or_default() += 1,
                _ => {}
            }
        },
    )));
    // The pool's nodes and their GPUs.
    tasks.push(tokio::spawn(follow(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().labels(node_selector),
        state.clone(),
        |s, e| {
            let gpus = |n: &Node| {
                n.status
                    .as_ref()
                    .and_then(|st| st.allocatable.as_ref())
                    .and_then(|a| a.get(GPU))
                    .and_then(|q| q.0.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            match e {
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                    s.capacity.insert(n.name_any(), gpus(&n));
                }
                watcher::Event::Delete(n) => {
                    s.capacity.remove(&n.name_any());
                }
                _ => {}
            }
        },
    )));
    // The leader Lease: who holds it, seen when.
    tasks.push(tokio::spawn(follow(
        Api::<Lease>::namespaced(client.clone(), "default"),
        watcher::Config::default().fields("metadata.name=aifactory-operator"),
        state.clone(),
        |s, e| {
            if let watcher::Event::Apply(l) | watcher::Event::InitApply(l) = e {
                let holder = l.spec.and_then(|sp| sp.holder_identity).unwrap_or_default();
                s.lease.push(LeaseSeen {
                    at: jiff::Timestamp::now(),
                    holder,
                });
            }
        },
    )));
    // The 1 s sample.
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            state.lock().unwrap().sample();
        }
    }));
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tj(phase: &str, admitted: &str, nodes: &[&str], gpus: i64) -> TjView {
        TjView::from_json(&json!({
            "metadata": {"uid": "u"},
            "spec": {"nodes": nodes.len(), "gpusPerNode": gpus},
            "status": {"phase": phase, "admittedAt": admitted, "placement": {"nodes": nodes}}
        }))
    }

    fn state(jobs: &[&str]) -> State {
        let mut s = State {
            ceilings: [("t".to_string(), 16)].into(),
            capacity: [("n1".to_string(), 8), ("n2".to_string(), 8)].into(),
            ..Default::default()
        };
        for j in jobs {
            s.tracks.insert(format!("t/{j}"), Track::default());
        }
        s
    }

    fn pod(job_uid: &str, index: &str, node: &str, gpus: i64, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "t", "uid": format!("{job_uid}-{index}-{phase}"),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": job_uid}],
                "annotations": {"batch.kubernetes.io/job-completion-index": index}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {GPU: gpus.to_string()}}}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn more_gpus_on_a_node_or_for_a_tenant_than_it_has_is_an_over_admission() {
        let mut s = state(&["a", "b", "c"]);
        s.on_tj("t/a".into(), Some(tj("Running", "1", &["n1"], 8)));
        s.on_tj("t/b".into(), Some(tj("Queued", "", &["n1"], 8)));
        s.check_gpus();
        assert_eq!(s.violations.total(), 0, "{:?}", s.violations);
        s.on_tj("t/b".into(), Some(tj("Admitted", "2", &["n1"], 8)));
        s.check_gpus();
        assert_eq!(s.violations.over_node_jobs.len(), 1, "{:?}", s.violations);
        assert!(s.violations.over_tenant_jobs.is_empty());
        s.on_tj("t/c".into(), Some(tj("Admitted", "3", &["n2"], 1)));
        s.check_gpus();
        assert_eq!(s.violations.over_tenant_jobs.len(), 1, "{:?}", s.violations);
    }

    #[test]
    fn pods_count_on_their_node_until_terminal_and_for_their_tenant_until_deleted() {
        let mut s = state(&[]);
        for (i, p) in [
            pod("j1", "0", "n1", 8, "Running"),
            pod("j2", "0", "n1", 8, "Succeeded"),
            pod("j3", "0", "n2", 4, "Running"),
        ]
        .iter()
        .enumerate()
        {
            s.pods.live.insert(i.to_string(), PodView::of(p));
        }
        s.check_gpus();
        assert_eq!(s.violations.total(), 0, "{:?}", s.violations);
        s.pods
            .live
            .insert("x".into(), PodView::of(&pod("j4", "0", "n1", 1, "Pending")));
        s.check_gpus();
        assert_eq!(s.violations.over_node_pods.len(), 1, "{:?}", s.violations);
        assert_eq!(s.violations.over_tenant_pods.len(), 0, "8 + 4 + 1 ≤ 16");
        s.pods
            .live
            .insert("y".into(), PodView::of(&pod("j5", "0", "n3", 4, "Running")));
        s.check_gpus();
        assert_eq!(s.violations.over_tenant_pods.len(), 1, "{:?}", s.violations);
        assert_eq!(s.violations.pods_off_pool.len(), 1, "n3 is no pool node");
    }

    #[test]
    fn a_second_admission_while_holding_or_two_pods_of_one_index_is_a_duplicate() {
        let mut s = state(&["a", "b"]);
        s.on_tj("t/a".into(), Some(tj("Running", "1", &["n1"], 1)));
        s.on_tj("t/a".into(), Some(tj("Preempted", "1", &[], 1)));
        s.on_tj("t/a".into(), Some(tj("Admitted", "2", &["n2"], 1)));
        assert!(s.violations.duplicated.is_empty(), "requeued in between");
        s.on_tj("t/b".into(), Some(tj("Running", "1", &["n1"], 1)));
        s.on_tj("t/b".into(), Some(tj("Admitted", "2", &["n2"], 1)));
        assert_eq!(s.violations.duplicated.len(), 1, "{:?}", s.violations);

        let mut s = state(&["a"]);
        s.on_tj("t/a".into(), Some(tj("Running", "1", &["n1"], 1)));
        s.jobs.live.insert("old".into(), "t/a".into());
        s.jobs.live.insert("new".into(), "t/a".into());
        s.pods.live.insert(
            "1".into(),
            PodView::of(&pod("old", "0", "n1", 1, "Running")),
        );
        s.check_runs();
        assert!(s.violations.duplicated.is_empty());
        s.pods.live.insert(
            "2".into(),
            PodView::of(&pod("new", "0", "n2", 1, "Pending")),
        );
        s.check_runs();
        assert_eq!(s.violations.duplicated.len(), 2, "{:?}", s.violations);
    }

    #[test]
    fn a_job_gone_that_the_runner_did_not_delete_is_lost() {
        let mut s = state(&["a", "b"]);
        s.on_tj("t/a".into(), Some(tj("Succeeded", "1", &["n1"], 1)));
        s.on_tj("t/b".into(), Some(tj("Succeeded", "1", &["n1"], 1)));
        s.tracks.get_mut("t/a").unwrap().delete_requested = Some(jiff::Timestamp::now());
        s.on_tj("t/a".into(), None);
        assert!(s.violations.lost.is_empty());
        assert!(s.tracks["t/a"].gone.is_some());
        s.on_tj("t/b".into(), None);
        assert_eq!(s.violations.lost.len(), 1, "{:?}", s.violations);
    }
}
