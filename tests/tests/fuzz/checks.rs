//! What a fuzz run checks on what the API shows, as pure functions of one snapshot:
//! every object runs or says why not (check 2), and no GPU is held by an object
//! that cannot run (check 3).
use super::world::Kind;
use aifactory_api::{
    CONDITION_READY, Dataset, DatasetPhase, GpuPool, TENANT_LABEL, Tenant, TrainingJob,
    TrainingJobPhase, Workspace, WorkspacePhase,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};

/// Label on a TrainingJob's pods: the job's name.
pub const TRAININGJOB_LABEL: &str = "aifactory.dev/trainingjob";
/// Labels on a session's pods: the workspace's name, and that it is a session.
pub const WORKSPACE_LABEL: &str = "aifactory.dev/workspace";
pub const SESSION_LABEL: &str = "aifactory.dev/session";
/// The operator's start timeout (operator/src/controllers/trainingjob/build.rs,
/// `START_TIMEOUT`): an admitted run not running this long after admission gives
/// its GPUs back.
pub const START_TIMEOUT_SECONDS: i64 = 120;

/// What the API shows at one moment (each kind from one list call).
#[derive(Default)]
pub struct Snapshot {
    pub at: i64,
    pub pools: Vec<GpuPool>,
    pub tenants: Vec<Tenant>,
    pub datasets: Vec<Dataset>,
    pub workspaces: Vec<Workspace>,
    pub jobs: Vec<TrainingJob>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub priority_classes: Vec<PriorityClass>,
}

/// `namespace/name`, or the name of a cluster-scoped object.
pub fn id<K: ResourceExt>(o: &K) -> String {
    match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    }
}

fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// A condition that says why the object does not run: False (or Failed True),
/// with a reason and a message.
fn says_why(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| {
        (c.status == "False" || (c.type_ == "Failed" && c.status == "True"))
            && !c.reason.is_empty()
            && !c.message.is_empty()
    })
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn false_reason(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .filter(|c| c.status == "False" || (c.type_ == "Failed" && c.status == "True"))
        .map(|c| format!("{}={}", c.type_, c.reason))
        .collect::<Vec<_>>()
        .join(",")
}

/// The state of one object, for the figures: e.g. `Queued (Admitted=PoolNotFound)`.
/// With the problem (check 2) if it neither runs nor says why.
pub struct State {
    pub kind: Kind,
    pub id: String,
    pub state: String,
    pub problem: Option<String>,
    /// What the object says about itself: its pending reason, else the message of
    /// its first False condition.
    pub why: String,
}

fn why(pending: Option<&String>, conditions: &[Condition]) -> String {
    pending
        .filter(|p| !p.is_empty())
        .cloned()
        .or_else(|| {
            conditions
                .iter()
                .find(|c| c.status == "False" || (c.type_ == "Failed" && c.status == "True"))
                .map(|c| c.message.clone())
        })
        .unwrap_or_default()
}

fn generation_problem(generation: Option<i64>, observed: Option<i64>) -> Option<String> {
    match observed {
        None => Some("status has no observedGeneration".into()),
        Some(o) if Some(o) != generation => Some(format!(
            "status observed generation {o}, the spec is generation {}",
            generation.unwrap_or(0)
        )),
        Some(_) => None,
    }
}

/// Check 2 for every object of the snapshot.
pub fn states(s: &Snapshot) -> Vec<State> {
    let mut out = vec![];
    for p in &s.pools {
        let (state, problem) = match &p.status {
            None => ("no status".to_string(), Some("no status".to_string())),
            Some(st) => {
                let ready = condition(&st.conditions, CONDITION_READY);
                let gen_problem = generation_problem(p.metadata.generation, st.observed_generation);
                match ready {
                    Some(c) if c.status == "True" => ("Ready".into(), gen_problem),
                    _ => (
                        format!("NotReady ({})", false_reason(&st.conditions)),
                        gen_problem.or_else(|| {
                            (!says_why(&st.conditions)).then(|| {
                                "not Ready and no False condition with a reason and a message"
                                    .to_string()
                            })
                        }),
                    ),
                }
            }
        };
        let why = p
            .status
            .as_ref()
            .map(|st| why(None, &st.conditions))
            .unwrap_or_default();
        out.push(State {
            kind: Kind::GpuPool,
            id: id(p),
            state,
            problem,
            why,
        });
    }
    for t in &s.tenants {
        let (state, problem) = match &t.status {
            None => ("no status".to_string(), Some("no status".to_string())),
            Some(st) => {
                let gen_problem = generation_problem(t.metadata.generation, st.observed_generation);
                match condition(&st.conditions, CONDITION_READY) {
                    Some(c) if c.status == "True" => ("Ready".into(), gen_problem),
                    Some(c) if !c.reason.is_empty() && !c.message.is_empty() => {
                        (format!("NotReady ({})", c.reason), gen_problem)
                    }
                    _ => (
                        format!("NotReady ({})", false_reason(&st.conditions)),
                        gen_problem.or(Some(
                            "no Ready condition with a reason and a message".into(),
                        )),
                    ),
                }
            }
        };
        // A tenant's other condition (BudgetExhausted) is False when all is well.
        let why = t
            .status
            .as_ref()
            .and_then(|st| condition(&st.conditions, CONDITION_READY))
            .filter(|c| c.status == "False")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        out.push(State {
            kind: Kind::Tenant,
            id: id(t),
            state,
            problem,
            why,
        });
    }
    for ds in &s.datasets {
        let (state, problem) = match &ds.status {
            None => ("no status".to_string(), Some("no status".to_string())),
            Some(st) => {
                let gen_problem =
                    generation_problem(ds.metadata.generation, st.observed_generation);
                match st.phase {
                    Some(DatasetPhase::Ready) | Some(DatasetPhase::Importing) => {
                        (format!("{:?}", st.phase.unwrap()), gen_problem)
                    }
                    phase => (
                        format!("{} ({})", phase.map(|p| format!("{p:?}")).unwrap_or_default(), false_reason(&st.conditions)),
                        gen_problem.or_else(|| {
                            (!says_why(&st.conditions)).then(|| {
                                format!("phase {phase:?} and no False condition with a reason and a message")
                            })
                        }),
                    ),
                }
            }
        };
        let why = ds
            .status
            .as_ref()
            .map(|st| why(None, &st.conditions))
            .unwrap_or_default();
        out.push(State {
            kind: Kind::Dataset,
            id: id(ds),
            state,
            problem,
            why,
        });
    }
    for ws in &s.workspaces {
        let (state, problem) = match &ws.status {
            None => ("no status".to_string(), Some("no status".to_string())),
            Some(st) => {
                let gen_problem =
                    generation_problem(ws.metadata.generation, st.observed_generation);
                let runs = match st.phase {
                    Some(WorkspacePhase::Running) => true,
                    Some(WorkspacePhase::Ready) => ws.spec.interactive.is_none(),
                    _ => false,
                };
                if runs {
                    (format!("{:?}", st.phase.unwrap()), gen_problem)
                } else {
                    (
                        format!(
                            "{} ({})",
                            st.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
                            false_reason(&st.conditions)
                        ),
                        gen_problem.or_else(|| {
                            (!says_why(&st.conditions)).then(|| {
                                format!(
                                    "phase {:?} and no False condition with a reason and a message",
                                    st.phase
                                )
                            })
                        }),
                    )
                }
            }
        };
        let why = ws
            .status
            .as_ref()
            .map(|st| why(st.pending_reason.as_ref(), &st.conditions))
            .unwrap_or_default();
        out.push(State {
            kind: Kind::Workspace,
            id: id(ws),
            state,
            problem,
            why,
        });
    }
    for tj in &s.jobs {
        let (state, problem) = match &tj.status {
            None => ("no status".to_string(), Some("no status".to_string())),
            Some(st) => {
                let gen_problem =
                    generation_problem(tj.metadata.generation, st.observed_generation);
                match st.phase {
                    Some(p @ (TrainingJobPhase::Running | TrainingJobPhase::Succeeded | TrainingJobPhase::Admitted)) => {
                        (format!("{p:?}"), gen_problem)
                    }
                    Some(p @ (TrainingJobPhase::Queued | TrainingJobPhase::Preempted)) => {
                        let admitted = condition(&st.conditions, "Admitted");
                        let reason = admitted.map(|c| c.reason.clone()).unwrap_or_default();
                        let ok = st.pending_reason.as_deref().is_some_and(|r| !r.is_empty())
                            && admitted.is_some_and(|c| c.status == "False" && !c.reason.is_empty() && !c.message.is_empty());
                        (
                            format!("{p:?} ({reason})"),
                            gen_problem.or_else(|| {
                                (!ok).then(|| "queued without a pendingReason and an Admitted=False condition with a reason and a message".to_string())
                            }),
                        )
                    }
                    phase => (
                        format!("{} ({})", phase.map(|p| format!("{p:?}")).unwrap_or_default(), false_reason(&st.conditions)),
                        gen_problem.or_else(|| {
                            (!says_why(&st.conditions)).then(|| {
                                format!("phase {phase:?} and no False condition with a reason and a message")
                            })
                        }),
                    ),
                }
            }
        };
        let why = tj
            .status
            .as_ref()
            .map(|st| why(st.pending_reason.as_ref(), &st.conditions))
            .unwrap_or_default();
        out.push(State {
            kind: Kind::TrainingJob,
            id: id(tj),
            state,
            problem,
            why,
        });
    }
    out
}

/// GPUs an object holds, as the operator recorded them: an admitted or running
/// job's placement, a session's node.
#[derive(Debug, Clone)]
pub struct Holding {
    pub kind: Kind,
    pub id: String,
    pub namespace: String,
    pub pool: String,
    /// (node, GPUs) per pod.
    pub nodes: Vec<(String, i64)>,
    /// When the GPUs were taken (admission), and whether what holds them runs.
    pub since: Option<i64>,
    pub running: bool,
    pub datasets: Vec<aifactory_api::DatasetMount>,
    pub priority: Option<String>,
}

impl Holding {
    pub fn gpus(&self) -> i64 {
        self.nodes.iter().map(|(_, g)| g).sum()
    }
}

pub fn holdings(s: &Snapshot) -> Vec<Holding> {
    let mut out = vec![];
    for tj in &s.jobs {
        let Some(st) = &tj.status else { continue };
        if !matches!(
            st.phase,
            Some(TrainingJobPhase::Admitted | TrainingJobPhase::Running)
        ) {
            continue;
        }
        let nodes = st
            .placement
            .iter()
            .flat_map(|p| p.nodes.iter())
            .map(|n| (n.clone(), i64::from(tj.spec.gpus_per_node)))
            .collect();
        out.push(Holding {
            kind: Kind::TrainingJob,
            id: id(tj),
            namespace: tj.namespace().unwrap_or_default(),
            pool: tj.spec.pool.clone(),
            nodes,
            since: st.admitted_at.as_ref().map(seconds),
            running: st.phase == Some(TrainingJobPhase::Running),
            datasets: tj.spec.datasets.clone(),
            priority: tj.spec.priority.clone(),
        });
    }
    for ws in &s.workspaces {
        let Some(st) = &ws.status else { continue };
        let Some(node) = &st.session_node else {
            continue;
        };
        let pool = st
            .session_pool
            .clone()
            .or_else(|| ws.spec.interactive.as_ref().map(|i| i.pool.clone()))
            .unwrap_or_default();
        let gpus = st
            .session_gpus
            .or_else(|| ws.spec.interactive.as_ref().map(|i| i.gpus))
            .unwrap_or(0);
        let running = condition(&st.conditions, "Session").is_some_and(|c| c.status == "True");
        out.push(Holding {
            kind: Kind::Workspace,
            id: id(ws),
            namespace: ws.namespace().unwrap_or_default(),
            pool,
            nodes: vec![(node.clone(), i64::from(gpus))],
            since: st.session_started_at.as_ref().map(seconds),
            running,
            datasets: ws.spec.datasets.clone(),
            priority: None,
        });
    }
    out
}

/// A broken invariant: `key` names it across snapshots (a violation counts when two
/// snapshots in a row show it, so one list call racing a pass is not one).
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    pub message: String,
}

fn allocatable(node: &Node, resource: &str) -> i64 {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(resource))
        .and_then(|q| q.0.parse().ok())
        .unwrap_or(0)
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_gpus(pod: &Pod, resource: &str) -> i64 {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
        .filter_map(|q| q.0.parse::<i64>().ok())
        .sum()
}

/// Check 3 on one snapshot, `grace` seconds allowed past the start timeout.
pub fn violations(s: &Snapshot, grace: i64) -> Vec<Violation> {
    let mut out = vec![];
    let mut v = |key: String, message: String| out.push(Violation { key, message });
    let nodes: BTreeMap<String, &Node> = s.nodes.iter().map(|n| (n.name_any(), n)).collect();
    let pools: BTreeMap<String, &GpuPool> = s.pools.iter().map(|p| (p.name_any(), p)).collect();
    let tenants: BTreeMap<String, &Tenant> = s.tenants.iter().map(|t| (t.name_any(), t)).collect();
    let ns_tenant: BTreeMap<String, String> = s
        .namespaces
        .iter()
        .filter_map(|n| Some((n.name_any(), n.labels().get(TENANT_LABEL)?.clone())))
        .collect();
    let datasets: BTreeMap<String, &Dataset> = s.datasets.iter().map(|d| (id(d), d)).collect();
    let classes: BTreeSet<String> = s.priority_classes.iter().map(|p| p.name_any()).collect();
    let held = holdings(s);

    // Per node, per resource; per (tenant, pool); per pool.
    let mut per_node: BTreeMap<(String, String), (i64, Vec<String>)> = BTreeMap::new();
    let mut per_tenant: BTreeMap<(String, String), (i64, Vec<String>)> = BTreeMap::new();
    let mut per_pool: BTreeMap<String, i64> = BTreeMap::new();
    for h in &held {
        let what = format!("{} {}", h.kind.name(), h.id);
        let Some(pool) = pools.get(&h.pool) else {
            v(
                format!("nopool {what}"),
                format!(
                    "{what} holds {} GPUs of pool {}, which does not exist",
                    h.gpus(),
                    h.pool
                ),
            );
            continue;
        };
        let resource = pool.spec.gpu.resource_name.clone();
        for (node, gpus) in &h.nodes {
            match nodes.get(node) {
                None => v(
                    format!("nonode {what} {node}"),
                    format!("{what} holds {gpus} GPUs on node {node}, which does not exist"),
                ),
                Some(n) => {
                    if n.labels().get(aifactory_api::POOL_LABEL) != Some(&h.pool) {
                        v(
                            format!("outside {what} {node}"),
                            format!(
                                "{what} holds {gpus} GPUs on node {node}, which is not a member of pool {}",
                                h.pool
                            ),
                        );
                    }
                }
            }
            let e = per_node
                .entry((node.clone(), resource.clone()))
                .or_default();
            e.0 += gpus;
            e.1.push(what.clone());
        }
        *per_pool.entry(h.pool.clone()).or_default() += h.gpus();
        if h.kind == Kind::TrainingJob
            && !h.running
            && let Some(since) = h.since
        {
            let age = s.at - since;
            if age > START_TIMEOUT_SECONDS + grace {
                v(
                    format!("start {what} {since}"),
                    format!(
                        "{what} was admitted {age}s ago and does not run yet: it holds {} GPUs past the {START_TIMEOUT_SECONDS}s start timeout",
                        h.gpus()
                    ),
                );
            }
        }
        if h.kind == Kind::Workspace
            && !h.running
            && let Some(since) = h.since
        {
            let age = s.at - since;
            if age > START_TIMEOUT_SECONDS + grace {
                v(
                    format!("session {what} {since}"),
                    format!(
                        "{what}'s session was admitted {age}s ago and is not running: it holds {} GPUs",
                        h.gpus()
                    ),
                );
            }
        }
        let Some(tenant_name) = ns_tenant.get(&h.namespace) else {
            v(
                format!("notenant {what}"),
                format!(
                    "{what} holds {} GPUs in namespace {}, which belongs to no tenant",
                    h.gpus(),
                    h.namespace
                ),
            );
            continue;
        };
        let tenant = tenants.get(tenant_name);
        let e = per_tenant
            .entry((tenant_name.clone(), h.pool.clone()))
            .or_default();
        e.0 += h.gpus();
        e.1.push(what.clone());
        let Some(tenant) = tenant else {
            v(
                format!("gonetenant {what}"),
                format!(
                    "{what} holds {} GPUs for tenant {tenant_name}, which does not exist",
                    h.gpus()
                ),
            );
            continue;
        };
        if let Some(r) = &tenant.spec.residency
            && !r.allows(&pool.spec.location.region)
        {
            v(
                format!("residency {what}"),
                format!(
                    "{what} holds GPUs in pool {} (region {}) outside tenant {tenant_name}'s residency {:?}",
                    h.pool, pool.spec.location.region, r.regions
                ),
            );
        }
        if tenant
            .spec
            .budget
            .as_ref()
            .is_some_and(|b| b.gpu_hours_per_month <= 0.0)
        {
            v(
                format!("budget {what}"),
                format!("{what} holds GPUs although tenant {tenant_name}'s budget is 0 GPU-hours"),
            );
        }
        if let Some(p) = &h.priority {
            if !tenant.spec.priority_classes.contains(p) {
                v(
                    format!("priority {what}"),
                    format!(
                        "{what} holds GPUs at priority {p}, which tenant {tenant_name} does not allow"
                    ),
                );
            } else if !classes.contains(p) {
                v(
                    format!("noclass {what}"),
                    format!("{what} holds GPUs at priority {p}, which does not exist"),
                );
            }
        }
        for m in &h.datasets {
            let dns = m.namespace.clone().unwrap_or_else(|| h.namespace.clone());
            let key = format!("{dns}/{}", m.name);
            match datasets.get(&key) {
                None => v(
                    format!("nodataset {what} {key}"),
                    format!("{what} holds GPUs and mounts dataset {key}, which does not exist"),
                ),
                Some(ds) => {
                    let st = ds.status.clone().unwrap_or_default();
                    if dns != h.namespace
                        && !st.consumers.iter().any(|c| c.namespace == h.namespace)
                    {
                        v(
                            format!("notgranted {what} {key}"),
                            format!(
                                "{what} holds GPUs and mounts dataset {key}, not shared with namespace {}",
                                h.namespace
                            ),
                        );
                    }
                    if h.since.is_some_and(|t| s.at - t > 30)
                        && st.phase != Some(DatasetPhase::Ready)
                    {
                        v(
                            format!("notready {what} {key}"),
                            format!(
                                "{what} holds GPUs and mounts dataset {key}, which is {:?}",
                                st.phase
                            ),
                        );
                    }
                }
            }
        }
    }
    for ((node, resource), (gpus, who)) in &per_node {
        let Some(n) = nodes.get(node) else { continue };
        let cap = allocatable(n, resource);
        if *gpus > cap {
            v(
                format!("node {node} {resource}"),
                format!(
                    "node {node} has {cap} {resource}, admitted work holds {gpus}: {}",
                    who.join(", ")
                ),
            );
        }
    }
    for ((tenant, pool), (gpus, who)) in &per_tenant {
        let Some(t) = tenants.get(tenant) else {
            continue;
        };
        match t.spec.quota_for(pool) {
            None => v(
                format!("noquota {tenant} {pool}"),
                format!(
                    "tenant {tenant} has no quota in pool {pool} and holds {gpus} GPUs there: {}",
                    who.join(", ")
                ),
            ),
            Some(q) => {
                if let Some(limit) = q.borrowing_limit
                    && *gpus > i64::from(q.gpus) + i64::from(limit)
                {
                    v(
                        format!("quota {tenant} {pool}"),
                        format!(
                            "tenant {tenant} holds {gpus} GPUs in pool {pool}: more than its {} guaranteed + {limit} borrowable: {}",
                            q.gpus,
                            who.join(", ")
                        ),
                    );
                }
            }
        }
    }
    for (pool, gpus) in &per_pool {
        let Some(p) = pools.get(pool) else { continue };
        let resource = &p.spec.gpu.resource_name;
        let capacity: i64 = s
            .nodes
            .iter()
            .filter(|n| n.labels().get(aifactory_api::POOL_LABEL) == Some(pool))
            .map(|n| allocatable(n, resource))
            .sum();
        if *gpus > capacity {
            v(
                format!("pool {pool}"),
                format!(
                    "pool {pool} has {capacity} GPUs on its members, admitted work holds {gpus}"
                ),
            );
        }
        if let Some(cap) = p.spec.power_cap_kilowatts {
            let kw = *gpus as f64 * f64::from(p.spec.gpu.power_watts) / 1000.0;
            if kw > cap + 1e-6 {
                v(
                    format!("power {pool}"),
                    format!("pool {pool} draws an estimated {kw} kW under a cap of {cap} kW"),
                );
            }
        }
    }
    // The pods: the scheduler's view (GPUs requested per node), and GPU pods of
    // work that holds nothing.
    let holding: BTreeSet<(Kind, String)> = held.iter().map(|h| (h.kind, h.id.clone())).collect();
    let mut pod_sum: BTreeMap<String, i64> = BTreeMap::new();
    for pod in &s.pods {
        if terminal(pod) {
            continue;
        }
        let gpus = pod_gpus(pod, "nvidia.com/gpu");
        if gpus == 0 {
            continue;
        }
        // A pod not bound to a node holds no GPU yet.
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        *pod_sum.entry(node).or_default() += gpus;
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let owner = if let Some(tj) = pod.labels().get(TRAININGJOB_LABEL) {
            Some((Kind::TrainingJob, format!("{ns}/{tj}")))
        } else if pod.labels().contains_key(SESSION_LABEL) {
            pod.labels()
                .get(WORKSPACE_LABEL)
                .map(|w| (Kind::Workspace, format!("{ns}/{w}")))
        } else {
            None
        };
        match owner {
            Some(o) if holding.contains(&o) => {}
            Some((kind, oid)) => v(
                format!("pod {}", id(pod)),
                format!(
                    "pod {} holds {gpus} GPUs for {} {oid}, which holds none",
                    id(pod),
                    kind.name()
                ),
            ),
            None => v(
                format!("pod {}", id(pod)),
                format!(
                    "pod {} holds {gpus} GPUs and belongs to no job or session",
                    id(pod)
                ),
            ),
        }
    }
    for (node, gpus) in pod_sum {
        if let Some(n) = nodes.get(&node) {
            let cap = allocatable(n, "nvidia.com/gpu");
            if gpus > cap {
                v(
                    format!("pods {node}"),
                    format!("pods on node {node} request {gpus} GPUs, it has {cap}"),
                );
            }
        }
    }
    out
}
