//! Pure admission plumbing: the factory as the admission engine sees it, built from
//! the watch caches; the statuses its decisions give a job; and each tenant's
//! usage this period. No client, no clock: the time is passed in.
use super::build::{TRAININGJOB_LABEL, account, set_condition};
use crate::conditions::condition;
use crate::controllers::gpupool::build::node_ready;
use crate::controllers::pods::gpus_of;
use crate::controllers::workspace::build::WORKSPACE_LABEL;
use crate::controllers::workspace::session::{self, SESSION_LABEL};
use aifactory_admission as admission;
use aifactory_api::{
    GpuPool, POOL_LABEL, Placement, PoolUsage, Tenant, TrainingJob, TrainingJobPhase,
    TrainingJobStatus, Workspace, bounded_name,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Condition on a Tenant: its GPU-hour budget for the month is used up.
pub const CONDITION_BUDGET_EXHAUSTED: &str = "BudgetExhausted";

/// What the caches hold, as one pass reads them.
pub struct Caches<'a> {
    /// Every TrainingJob.
    pub jobs: &'a [Arc<TrainingJob>],
    /// Every GpuPool.
    pub pools: &'a [Arc<GpuPool>],
    /// Every Tenant.
    pub tenants: &'a [Arc<Tenant>],
    /// Nodes labelled as members of a pool.
    pub nodes: &'a [Arc<Node>],
    /// Pods bound to a node and not finished.
    pub pods: &'a [Arc<Pod>],
    /// Every PriorityClass.
    pub priority_classes: &'a [Arc<PriorityClass>],
    /// Every Dataset.
    pub datasets: &'a [Arc<aifactory_api::Dataset>],
    /// Every Workspace (interactive sessions are one-pod gangs).
    pub workspaces: &'a [Arc<Workspace>],
}

/// One admission pass's view of the factory.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// What the engine decides on.
    pub factory: admission::Factory,
    /// Waiting jobs the engine is not asked about, with why they cannot start.
    pub refused: Vec<(String, String)>,
    /// Each tenant's usage this period (every tenant, even idle ones).
    pub usage: BTreeMap<String, Vec<PoolUsage>>,
}

/// The engine's id of a job: `namespace/name`.
pub fn job_id(tj: &TrainingJob) -> String {
    format!("{}/{}", tj.namespace().unwrap_or_default(), tj.name_any())
}

pub use crate::controllers::usage::period;
use crate::controllers::usage::round;

/// The tenant owning `namespace` (the namespaces its status lists).
pub fn tenant_of<'a>(tenants: &'a [Arc<Tenant>], namespace: &str) -> Option<&'a Arc<Tenant>> {
    tenants.iter().find(|t| {
        t.status
            .as_ref()
            .is_some_and(|s| s.namespaces.iter().any(|n| n == namespace))
    })
}

/// Whether the job holds GPUs: admitted or running, on a placement.
pub fn holds_gpus(tj: &TrainingJob) -> bool {
    tj.status.as_ref().is_some_and(|s| {
        matches!(
            s.phase,
            Some(TrainingJobPhase::Admitted | TrainingJobPhase::Running)
        ) && s.placement.as_ref().is_some_and(|p| !p.nodes.is_empty())
    })
}

/// Whether the job waits for admission: new, queued or preempted, not suspended,
/// not being deleted.
pub fn waits(tj: &TrainingJob) -> bool {
    !tj.spec.suspend
        && tj.metadata.deletion_timestamp.is_none()
        && matches!(
            tj.status.as_ref().and_then(|s| s.phase),
            None | Some(TrainingJobPhase::Queued | TrainingJobPhase::Preempted)
        )
}

fn seconds(t: Option<&Time>) -> u64 {
    t.map(|t| t.0.as_second().max(0) as u64).unwrap_or(0)
}

/// The node's GPUs of `resource` the kubelet offers.
fn allocatable(node: &Node, resource: &str) -> u32 {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(resource))
        .and_then(|q| q.0.parse::<u32>().ok())
        .unwrap_or(0)
}

/// The last segment of a topology label key names its level (`…/rack` → `rack`).
fn level_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Each tenant's usage this period, per pool: GPUs its running jobs and sessions
/// hold, and the GPU-hours and energy of its jobs last counted this period.
pub fn usage(
    jobs: &[Arc<TrainingJob>],
    workspaces: &[Arc<Workspace>],
    tenants: &[Arc<Tenant>],
    pools: &[Arc<GpuPool>],
    now: jiff::Timestamp,
) -> BTreeMap<String, Vec<PoolUsage>> {
    let this_period = period(now);
    let mut out: BTreeMap<String, BTreeMap<String, PoolUsage>> = tenants
        .iter()
        .map(|t| (t.name_any(), BTreeMap::new()))
        .collect();
    let mut sorted: Vec<&Arc<TrainingJob>> = jobs.iter().collect();
    sorted.sort_by_key(|j| job_id(j));
    for tj in sorted {
        let Some(tenant) = tenant_of(tenants, &tj.namespace().unwrap_or_default()) else {
            continue;
        };
        let Some(status) = &tj.status else { continue };
        let counted_now = super::build::this_period_usage(status, now);
        let holds = holds_gpus(tj);
        if !holds && counted_now.is_none() {
            continue;
        }
        let pools = out.entry(tenant.name_any()).or_default();
        let entry = pools
            .entry(tj.spec.pool.clone())
            .or_insert_with(|| PoolUsage {
                pool: tj.spec.pool.clone(),
                ..Default::default()
            });
        if holds {
            entry.gpus_in_use += tj.spec.total_gpus();
        }
        if let Some((hours, kwh)) = counted_now {
            entry.gpu_hours += hours;
            entry.energy_kwh += kwh;
        }
    }
    // Work that no longer exists but was used this period.
    for tenant in tenants {
        let Some(ledger) = tenant.status.as_ref().and_then(|s| s.ledger.as_ref()) else {
            continue;
        };
        if ledger.period != this_period {
            continue;
        }
        let pools = out.entry(tenant.name_any()).or_default();
        for settled in &ledger.usage {
            let entry = pools
                .entry(settled.pool.clone())
                .or_insert_with(|| PoolUsage {
                    pool: settled.pool.clone(),
                    ..Default::default()
                });
            entry.gpu_hours += settled.gpu_hours;
            entry.energy_kwh += settled.energy_kwh;
        }
    }
    for ws in workspaces {
        let Some((pool, gpus, _)) = session::held(ws) else {
            continue;
        };
        let Some(tenant) = tenant_of(tenants, &ws.namespace().unwrap_or_default()) else {
            continue;
        };
        let watts = pools
            .iter()
            .find(|p| p.name_any() == pool)
            .map_or(0.0, |p| f64::from(p.spec.gpu.power_watts));
        let entry = out
            .entry(tenant.name_any())
            .or_default()
            .entry(pool.clone())
            .or_insert_with(|| PoolUsage {
                pool: pool.clone(),
                ..Default::default()
            });
        entry.gpus_in_use += i64::from(gpus);
        // Live usage moves once a minute (not every pass); settlement counts
        // to the second.
        let minute = jiff::Timestamp::from_second(now.as_second() - now.as_second().rem_euclid(60))
            .unwrap_or(now);
        if let Some((_, hours, kwh)) = session::used(ws, watts, minute) {
            entry.gpu_hours += hours;
            entry.energy_kwh += kwh;
        }
    }
    out.into_iter()
        .map(|(tenant, pools)| {
            let pools = pools
                .into_values()
                .map(|mut u| {
                    u.gpu_hours = round(u.gpu_hours);
                    u.energy_kwh = round(u.energy_kwh);
                    u
                })
                .collect();
            (tenant, pools)
        })
        .collect()
}

fn total_hours(usage: &[PoolUsage]) -> f64 {
    round(usage.iter().map(|u| u.gpu_hours).sum())
}

/// The factory as the engine sees it, and the jobs it is not asked about.
pub fn snapshot(caches: &Caches, now: jiff::Timestamp) -> Snapshot {
    let usage = usage(
        caches.jobs,
        caches.workspaces,
        caches.tenants,
        caches.pools,
        now,
    );
    let priorities: HashMap<String, i32> = caches
        .priority_classes
        .iter()
        .map(|p| (p.name_any(), p.value))
        .collect();
    let priority_of = |tj: &TrainingJob| {
        tj.spec
            .priority
            .as_ref()
            .and_then(|p| priorities.get(p).copied())
            .unwrap_or(0)
    };

    let mut running = vec![];
    let mut running_ids = HashSet::new();
    for tj in caches.jobs.iter().filter(|j| holds_gpus(j)) {
        let status = tj.status.as_ref().expect("holds_gpus checked it");
        let tenant = tenant_of(caches.tenants, &tj.namespace().unwrap_or_default())
            .map(|t| t.name_any())
            .unwrap_or_default();
        running_ids.insert((tj.namespace().unwrap_or_default(), tj.name_any()));
        running.push(admission::RunningJob {
            id: job_id(tj),
            tenant,
            pool: tj.spec.pool.clone(),
            gpus_per_node: tj.spec.gpus_per_node.max(0) as u32,
            placement: status
                .placement
                .as_ref()
                .map(|p| p.nodes.clone())
                .unwrap_or_default(),
            priority: priority_of(tj),
            admitted_at: seconds(status.admitted_at.as_ref()),
        });
    }

    let mut running_sessions = HashSet::new();
    for ws in caches.workspaces.iter() {
        let Some((pool, gpus, node)) = session::held(ws) else {
            continue;
        };
        let ns = ws.namespace().unwrap_or_default();
        running_sessions.insert((ns.clone(), bounded_name(&ws.name_any(), 63)));
        running.push(admission::RunningJob {
            id: session::session_id(ws),
            tenant: tenant_of(caches.tenants, &ns)
                .map(|t| t.name_any())
                .unwrap_or_default(),
            pool,
            gpus_per_node: gpus as u32,
            placement: vec![node],
            priority: 0,
            admitted_at: seconds(
                ws.status
                    .as_ref()
                    .and_then(|s| s.session_started_at.as_ref()),
            ),
        });
    }

    // Pods of a job or session the engine counts from its placement are not
    // counted again; every other running pod holds GPUs the engine did not hand out.
    let session_of = |pod: &Pod| {
        pod.labels()
            .get(SESSION_LABEL)
            .and_then(|_| pod.labels().get(WORKSPACE_LABEL))
            .map(|ws| (pod.namespace().unwrap_or_default(), ws.clone()))
    };
    let ours = |pod: &Pod| {
        pod.labels().get(TRAININGJOB_LABEL).is_some_and(|job| {
            running_ids.contains(&(pod.namespace().unwrap_or_default(), job.clone()))
        }) || session_of(pod).is_some_and(|s| running_sessions.contains(&s))
    };
    let mut pods_on: HashMap<&str, Vec<&Pod>> = HashMap::new();
    let mut lingering: HashSet<(String, String)> = HashSet::new();
    let mut lingering_sessions: HashSet<(String, String)> = HashSet::new();
    for pod in caches.pods {
        if let Some(job) = pod.labels().get(TRAININGJOB_LABEL) {
            lingering.insert((pod.namespace().unwrap_or_default(), job.clone()));
        }
        if let Some(s) = session_of(pod) {
            lingering_sessions.insert(s);
        }
        if ours(pod) {
            continue;
        }
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            pods_on.entry(node).or_default().push(pod);
        }
    }

    let mut pools = vec![];
    for pool in caches.pools {
        let name = pool.name_any();
        let resource = &pool.spec.gpu.resource_name;
        let levels: Vec<String> = pool
            .spec
            .topology
            .as_ref()
            .map(|t| t.levels.clone())
            .unwrap_or_default();
        let mut members: Vec<&Arc<Node>> = caches
            .nodes
            .iter()
            .filter(|n| n.labels().get(POOL_LABEL) == Some(&name))
            .collect();
        members.sort_by_key(|n| n.name_any());
        let nodes = members
            .iter()
            .map(|n| admission::Node {
                name: n.name_any(),
                schedulable: node_ready(n),
                gpus: allocatable(n, resource),
                unmanaged_gpus: pods_on
                    .get(n.name_any().as_str())
                    .map(|pods| pods.iter().map(|p| gpus_of(p, resource)).sum::<i64>())
                    .unwrap_or(0)
                    .clamp(0, i64::from(u32::MAX)) as u32,
                topology: levels
                    .iter()
                    .filter_map(|key| {
                        n.labels()
                            .get(key)
                            .map(|v| (level_name(key).to_string(), v.clone()))
                    })
                    .collect(),
            })
            .collect();
        pools.push(admission::GpuPool {
            name,
            region: pool.spec.location.region.clone(),
            gpu_model: pool.spec.gpu.model.clone(),
            power_watts: f64::from(pool.spec.gpu.power_watts),
            power_cap_kilowatts: pool.spec.power_cap_kilowatts,
            topology_levels: levels.iter().map(|k| level_name(k).to_string()).collect(),
            nodes,
        });
    }

    let tenants = caches
        .tenants
        .iter()
        .map(|t| {
            let name = t.name_any();
            let used = usage.get(&name).map(|u| total_hours(u)).unwrap_or(0.0);
            admission::Tenant {
                name: name.clone(),
                weight: f64::from(t.spec.weight.max(1)),
                quotas: t
                    .spec
                    .quota
                    .iter()
                    .map(|q| admission::Quota {
                        pool: q.pool.clone(),
                        gpus: q.gpus.max(0) as u32,
                        borrowing_limit: q.borrowing_limit.map(|b| b.max(0) as u32),
                        lending_limit: q.lending_limit.map(|l| l.max(0) as u32),
                    })
                    .collect(),
                usage_gpu_hours: used,
                budget_gpu_hours_left: t
                    .spec
                    .budget
                    .as_ref()
                    .map(|b| round(b.gpu_hours_per_month - used)),
                residency_regions: t
                    .spec
                    .residency
                    .as_ref()
                    .map(|r| r.regions.clone())
                    .unwrap_or_default(),
                // Priority classes are checked by name below, with a clearer message.
                allowed_priorities: None,
            }
        })
        .collect();

    let mut queued = vec![];
    let mut refused = vec![];
    let mut waiting: Vec<&Arc<TrainingJob>> = caches.jobs.iter().filter(|j| waits(j)).collect();
    waiting.sort_by_key(|j| job_id(j));
    for tj in waiting {
        let ns = tj.namespace().unwrap_or_default();
        let status = tj.status.clone().unwrap_or_default();
        // A preempted job waits until the pods of its last run are gone: until then
        // the GPUs are still held, and the job that preempted it counts them.
        if status.phase == Some(TrainingJobPhase::Preempted)
            && lingering.contains(&(ns.clone(), tj.name_any()))
        {
            continue;
        }
        let Some(tenant) = tenant_of(caches.tenants, &ns) else {
            refused.push((
                job_id(tj),
                format!(
                    "namespace {ns} belongs to no tenant: a training job runs only in a tenant's namespace"
                ),
            ));
            continue;
        };
        // Every dataset the job mounts must be the tenant's own or granted to it,
        // and Ready: never start a gang whose pods would wait on a missing claim.
        if let Some(refusal) = tj.spec.datasets.iter().find_map(|mount| {
            aifactory_api::dataset_access(mount, &ns, caches.datasets.iter().map(|d| d.as_ref()))
                .err()
        }) {
            refused.push((job_id(tj), refusal.to_string()));
            continue;
        }
        if let Some(class) = &tj.spec.priority {
            if !priorities.contains_key(class) {
                refused.push((job_id(tj), format!("priority class {class} does not exist")));
                continue;
            }
            if !tenant.spec.priority_classes.contains(class) {
                refused.push((
                    job_id(tj),
                    format!(
                        "priority class {class} is not allowed for tenant {} (allowed: {})",
                        tenant.name_any(),
                        if tenant.spec.priority_classes.is_empty() {
                            "only the default".to_string()
                        } else {
                            tenant.spec.priority_classes.join(", ")
                        }
                    ),
                ));
                continue;
            }
        }
        queued.push(admission::QueuedJob {
            id: job_id(tj),
            tenant: tenant.name_any(),
            pool: tj.spec.pool.clone(),
            nodes: tj.spec.nodes.max(0) as u32,
            gpus_per_node: tj.spec.gpus_per_node.max(0) as u32,
            priority: priority_of(tj),
            // A job that failed to start goes behind those already waiting:
            // its place counts from when it queued again, not from its creation.
            created: seconds(if status.start_failures > 0 {
                status
                    .queued_at
                    .as_ref()
                    .or(tj.metadata.creation_timestamp.as_ref())
            } else {
                tj.metadata.creation_timestamp.as_ref()
            }),
            queued_since: seconds(
                status
                    .queued_at
                    .as_ref()
                    .or(tj.metadata.creation_timestamp.as_ref()),
            ),
            pack: tj
                .spec
                .topology
                .as_ref()
                .and_then(|t| t.pack.level())
                .map(str::to_string),
            estimated_gpu_hours: None,
        });
    }

    let mut sessions: Vec<&Arc<Workspace>> = caches
        .workspaces
        .iter()
        .filter(|w| session::waits(w))
        .collect();
    sessions.sort_by_key(|w| session::session_id(w));
    for ws in sessions {
        let ns = ws.namespace().unwrap_or_default();
        // A stopped session's pod still holds its GPUs until it is gone.
        if lingering_sessions.contains(&(ns.clone(), bounded_name(&ws.name_any(), 63))) {
            continue;
        }
        let Some(tenant) = tenant_of(caches.tenants, &ns) else {
            refused.push((
                session::session_id(ws),
                format!(
                    "namespace {ns} belongs to no tenant: a session runs only in a tenant's namespace"
                ),
            ));
            continue;
        };
        queued.push(session::queued_job(
            ws,
            tenant.name_any(),
            seconds(ws.metadata.creation_timestamp.as_ref()),
            seconds(session::queued_since(ws)),
        ));
    }

    Snapshot {
        factory: admission::Factory {
            pools,
            tenants,
            running,
            queued,
            now: now.as_second().max(0) as u64,
            policy: admission::Policy::default(),
        },
        refused,
        usage,
    }
}

/// The status of a job the engine admits: GPUs reserved on `placement`.
pub fn admitted_status(
    tj: &TrainingJob,
    admission: &admission::Admission,
    now: &Time,
) -> TrainingJobStatus {
    let mut st = tj.status.clone().unwrap_or_default();
    st.phase = Some(TrainingJobPhase::Admitted);
    st.placement = Some(Placement {
        nodes: admission.placement.clone(),
        domain: admission.domain.clone(),
    });
    st.admitted_at = Some(now.clone());
    st.started_at = None;
    st.finished_at = None;
    st.queue_position = None;
    st.pending_reason = None;
    st.observed_generation = tj.metadata.generation;
    let message = format!(
        "admitted on {} nodes{}",
        admission.placement.len(),
        if admission.borrowed_gpus > 0 {
            format!(", {} GPUs borrowed", admission.borrowed_gpus)
        } else {
            String::new()
        }
    );
    let c = condition(
        &st.conditions,
        super::build::CONDITION_ADMITTED,
        true,
        "Admitted",
        message,
        tj.metadata.generation,
        now,
    );
    set_condition(&mut st.conditions, c);
    st
}

/// The status of a running job evicted for another: its run ends (GPU-hours
/// counted), it goes back to the queue from now.
pub fn preempted_status(
    tj: &TrainingJob,
    reason: &str,
    watts: f64,
    now: &Time,
) -> TrainingJobStatus {
    let mut st = tj.status.clone().unwrap_or_default();
    account(&mut st, &tj.spec, watts, now);
    st.phase = Some(TrainingJobPhase::Preempted);
    st.placement = None;
    st.admitted_at = None;
    st.started_at = None;
    st.queued_at = Some(now.clone());
    st.queue_position = None;
    st.pending_reason = Some(reason.to_string());
    st.observed_generation = tj.metadata.generation;
    for (type_, why) in [
        (super::build::CONDITION_ADMITTED, "Preempted"),
        (aifactory_api::CONDITION_READY, "Preempted"),
    ] {
        let c = condition(
            &st.conditions,
            type_,
            false,
            why,
            reason,
            tj.metadata.generation,
            now,
        );
        set_condition(&mut st.conditions, c);
    }
    st
}

/// The status of a job that keeps waiting: its place and why. A preempted job
/// stays `Preempted` (requeued) until admitted again.
pub fn queued_status(
    tj: &TrainingJob,
    position: Option<u32>,
    reason: &str,
    code: &str,
    now: &Time,
) -> TrainingJobStatus {
    let mut st = tj.status.clone().unwrap_or_default();
    if st.phase != Some(TrainingJobPhase::Preempted) {
        st.phase = Some(TrainingJobPhase::Queued);
    }
    if st.queued_at.is_none() {
        st.queued_at = tj.metadata.creation_timestamp.clone();
    }
    st.queue_position = position.map(|p| p.min(i32::MAX as u32) as i32);
    st.pending_reason = Some(reason.to_string());
    st.observed_generation = tj.metadata.generation;
    let c = condition(
        &st.conditions,
        super::build::CONDITION_ADMITTED,
        false,
        code,
        reason,
        tj.metadata.generation,
        now,
    );
    set_condition(&mut st.conditions, c);
    st
}

/// The status fields of a Tenant the usage accounting owns (written with its own
/// field manager, beside the Tenant controller's).
pub fn tenant_usage_status(
    tenant: &Tenant,
    usage: &[PoolUsage],
    now: jiff::Timestamp,
    time: &Time,
) -> Value {
    let hours = total_hours(usage);
    let budget = tenant.spec.budget.as_ref().map(|b| b.gpu_hours_per_month);
    let remaining = budget.map(|b| round((b - hours).max(0.0)));
    let exhausted = budget.is_some_and(|b| hours >= b);
    let (reason, message) = match budget {
        None => ("NoBudget", "the tenant has no GPU-hour budget".to_string()),
        Some(b) if exhausted => (
            "BudgetExhausted",
            format!("{hours:.1} of {b} GPU-hours used this month: new jobs stay queued"),
        ),
        Some(b) => (
            "WithinBudget",
            format!("{hours:.1} of {b} GPU-hours used this month"),
        ),
    };
    let previous = tenant
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let c = condition(
        previous,
        CONDITION_BUDGET_EXHAUSTED,
        exhausted,
        reason,
        message,
        tenant.metadata.generation,
        time,
    );
    let mut status = json!({
        "gpusInUse": usage.iter().map(|u| u.gpus_in_use).sum::<i64>(),
        "gpuHours": hours,
        "energyKWh": round(usage.iter().map(|u| u.energy_kwh).sum()),
        "period": period(now),
        "conditions": [c],
    });
    // Empty or unset fields are left out (applying drops them), as the live
    // status leaves them out: the comparison before writing must match it.
    if !usage.is_empty() {
        status["usage"] = json!(usage);
    }
    if let Some(remaining) = remaining {
        status["budgetRemainingGpuHours"] = json!(remaining);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifactory_admission::{Outcome, admit};

    const NOW: i64 = 1_767_225_600 + 86_400 * 20; // 2026-01-21

    fn ts(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(second).unwrap())
    }

    fn pool(name: &str, nodes: usize) -> (Arc<GpuPool>, Vec<Arc<Node>>) {
        let p: GpuPool = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "nodeSelector": {"matchLabels": {"a": "b"}},
            "gpu": {"model": "H100-80GB", "perNode": 8, "powerWatts": 700},
            "topology": {"levels": ["topology.aifactory.dev/rack"]},
            "location": {"region": "eu-west"}}}))
        .unwrap();
        let nodes = (0..nodes)
            .map(|i| {
                Arc::new(serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-{i}"), "labels": {POOL_LABEL: name, "topology.aifactory.dev/rack": format!("r{}", i / 2)}},
                    "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]}
                })).unwrap())
            })
            .collect();
        (Arc::new(p), nodes)
    }

    fn tenant(name: &str, quota: Value, extra: Value) -> Arc<Tenant> {
        let mut spec = json!({"owners": [{"kind": "User", "name": "alice"}], "quota": quota});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut t = Tenant::new(name, serde_json::from_value(spec).unwrap());
        t.status = Some(aifactory_api::TenantStatus {
            namespaces: vec![name.to_string()],
            ..Default::default()
        });
        Arc::new(t)
    }

    fn job(ns: &str, name: &str, nodes: i32, status: Option<Value>) -> Arc<TrainingJob> {
        let mut tj = TrainingJob::new(
            name,
            serde_json::from_value(
                json!({"pool": "h100", "nodes": nodes, "gpusPerNode": 8, "image": "x"}),
            )
            .unwrap(),
        );
        tj.metadata.namespace = Some(ns.into());
        tj.metadata.creation_timestamp = Some(ts(NOW - 100));
        tj.status = status.map(|s| serde_json::from_value(s).unwrap());
        Arc::new(tj)
    }

    fn pod(ns: &str, node: &str, gpus: u32, job: Option<&str>) -> Arc<Pod> {
        let mut labels = json!({});
        if let Some(j) = job {
            labels[TRAININGJOB_LABEL] = json!(j);
        }
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": format!("p-{node}-{}", job.unwrap_or("x")), "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}
        })).unwrap())
    }

    fn snap(
        jobs: &[Arc<TrainingJob>],
        tenants: &[Arc<Tenant>],
        pods: &[Arc<Pod>],
        nodes: usize,
    ) -> Snapshot {
        let (p, n) = pool("h100", nodes);
        snapshot(
            &Caches {
                jobs,
                pools: &[p],
                tenants,
                nodes: &n,
                pods,
                priority_classes: &[],
                datasets: &[],
                workspaces: &[],
            },
            jiff::Timestamp::from_second(NOW).unwrap(),
        )
    }

    #[test]
    fn a_running_job_holds_its_placement_and_its_pods_are_not_counted_twice() {
        let acme = tenant("acme", json!([{"pool": "h100", "gpus": 32}]), json!({}));
        let running = job(
            "acme",
            "pretrain",
            2,
            Some(
                json!({"phase": "Running", "placement": {"nodes": ["h100-0", "h100-1"]}, "admittedAt": "2026-01-21T00:00:00Z"}),
            ),
        );
        let pods = [
            pod("acme", "h100-0", 8, Some("pretrain")),
            pod("acme", "h100-1", 8, Some("pretrain")),
            pod("kube-system", "h100-2", 2, None),
        ];
        let s = snap(&[running], &[acme], &pods, 4);
        assert_eq!(s.factory.running.len(), 1);
        assert_eq!(s.factory.running[0].placement, ["h100-0", "h100-1"]);
        let unmanaged: Vec<u32> = s.factory.pools[0]
            .nodes
            .iter()
            .map(|n| n.unmanaged_gpus)
            .collect();
        assert_eq!(unmanaged, [0, 0, 2, 0]);
        assert_eq!(s.factory.pools[0].topology_levels, ["rack"]);
        assert_eq!(s.factory.pools[0].nodes[3].topology["rack"], "r1");
    }

    fn workspace(name: &str, gpus: i32, status: Value) -> Arc<Workspace> {
        Arc::new(serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": name, "namespace": "acme", "creationTimestamp": "2026-01-20T23:59:00Z"},
            "spec": {"storage": {"home": "1Gi"},
                     "interactive": {"image": "jupyter", "pool": "h100", "gpus": gpus}},
            "status": status,
        })).unwrap())
    }

    #[test]
    fn sessions_count_against_the_quota_like_jobs_and_their_pods_are_not_counted_twice() {
        let acme = tenant(
            "acme",
            json!([{"pool": "h100", "gpus": 8, "borrowingLimit": 0}]),
            json!({}),
        );
        let running = workspace(
            "alice",
            6,
            json!({"phase": "Running", "sessionNode": "h100-1", "sessionStartedAt": "2026-01-21T00:00:00Z"}),
        );
        let waiting = workspace("bob", 4, json!({"phase": "Queued"}));
        let small = workspace("carol", 2, json!({"phase": "Queued"}));
        let (p, n) = pool("h100", 2);
        let mut session_pod = (*pod("acme", "h100-1", 6, None)).clone();
        session_pod.metadata.labels = Some(
            [
                (WORKSPACE_LABEL.to_string(), "alice".to_string()),
                (SESSION_LABEL.to_string(), "true".to_string()),
            ]
            .into(),
        );
        let s = snapshot(
            &Caches {
                jobs: &[],
                pools: &[p],
                tenants: std::slice::from_ref(&acme),
                nodes: &n,
                pods: &[Arc::new(session_pod)],
                priority_classes: &[],
                datasets: &[],
                workspaces: &[running, waiting, small],
            },
            jiff::Timestamp::from_second(NOW).unwrap(),
        );
        assert_eq!(s.factory.running[0].id, "acme/workspace:alice");
        assert_eq!(s.factory.running[0].placement, ["h100-1"]);
        assert_eq!(
            s.factory.pools[0].nodes[1].unmanaged_gpus, 0,
            "counted once"
        );
        assert_eq!(s.usage["acme"][0].gpus_in_use, 6);
        let decisions = admit(&s.factory);
        match &decisions.get("acme/workspace:bob").unwrap().outcome {
            Outcome::Queued { reason, .. } => {
                assert!(reason.to_string().contains("quota"), "{reason}")
            }
            other => panic!("6 + 4 GPUs exceed a quota of 8: {other:?}"),
        }
        let carol = &decisions.get("acme/workspace:carol").unwrap().outcome;
        assert!(matches!(carol, Outcome::Admit(_)), "{carol:?}");
    }

    #[test]
    fn a_gang_larger_than_what_is_free_waits_and_is_never_split() {
        let acme = tenant("acme", json!([{"pool": "h100", "gpus": 32}]), json!({}));
        let first = job(
            "acme",
            "first",
            2,
            Some(json!({"phase": "Running", "placement": {"nodes": ["h100-0", "h100-1"]}})),
        );
        let big = job("acme", "big", 2, None);
        let s = snap(&[first, big], &[acme], &[], 3);
        let decisions = admit(&s.factory);
        match &decisions.get("acme/big").unwrap().outcome {
            Outcome::Queued { position, reason } => {
                assert_eq!(*position, 1);
                assert!(reason.to_string().starts_with("waiting for 16"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jobs_outside_a_tenant_or_with_a_foreign_priority_are_refused_in_words() {
        let acme = tenant("acme", json!([{"pool": "h100", "gpus": 32}]), json!({}));
        let stray = job("default", "stray", 1, None);
        let mut urgent = (*job("acme", "urgent", 1, None)).clone();
        urgent.spec.priority = Some("urgent".into());
        let s = snap(&[stray, Arc::new(urgent)], &[acme], &[], 2);
        assert!(s.factory.queued.is_empty());
        assert!(
            s.refused[0]
                .1
                .contains("priority class urgent does not exist")
        );
        assert!(
            s.refused[1]
                .1
                .starts_with("namespace default belongs to no tenant")
        );
    }

    #[test]
    fn a_job_mounting_a_dataset_its_tenant_was_not_granted_is_refused_in_words() {
        let acme = tenant("acme", json!([{"pool": "h100", "gpus": 32}]), json!({}));
        let mut reader = (*job("acme", "reader", 1, None)).clone();
        reader.spec.datasets = vec![
            serde_json::from_value(json!({"name": "scans", "namespace": "hospital"})).unwrap(),
        ];
        let s = snap(&[Arc::new(reader)], &[acme], &[], 2);
        assert!(
            s.factory.queued.is_empty(),
            "a job without its data must not be admitted"
        );
        assert!(s.refused[0].1.contains("scans"), "{}", s.refused[0].1);
    }

    #[test]
    fn a_preempted_job_waits_for_its_pods_to_go_before_it_queues() {
        let beta = tenant("beta", json!([{"pool": "h100", "gpus": 0}]), json!({}));
        let evicted = job(
            "beta",
            "borrower",
            1,
            Some(json!({"phase": "Preempted", "queuedAt": "2026-01-21T00:00:00Z"})),
        );
        let pods = [pod("beta", "h100-0", 8, Some("borrower"))];
        let s = snap(
            std::slice::from_ref(&evicted),
            std::slice::from_ref(&beta),
            &pods,
            2,
        );
        assert!(s.factory.queued.is_empty());
        assert_eq!(
            s.factory.pools[0].nodes[0].unmanaged_gpus, 8,
            "its pods still hold GPUs"
        );
        let s = snap(&[evicted], &[beta], &[], 2);
        assert_eq!(
            s.factory.queued[0].queued_since, NOW as u64,
            "it queues from its preemption"
        );
    }

    #[test]
    fn usage_counts_this_months_gpu_hours_and_the_budget_left() {
        let acme = tenant(
            "acme",
            json!([{"pool": "h100", "gpus": 32}]),
            json!({"budget": {"gpuHoursPerMonth": 100.0}}),
        );
        let done = job(
            "acme",
            "done",
            1,
            Some(
                json!({"phase": "Succeeded", "gpuHours": 60.0, "energyKWh": 42.0, "accountedUntil": "2026-01-10T00:00:00Z"}),
            ),
        );
        let last_month = job(
            "acme",
            "old",
            1,
            Some(
                json!({"phase": "Succeeded", "gpuHours": 500.0, "accountedUntil": "2025-12-31T23:00:00Z"}),
            ),
        );
        let running = job(
            "acme",
            "now",
            2,
            Some(json!({"phase": "Running", "placement": {"nodes": ["h100-0", "h100-1"]}})),
        );
        let s = snap(
            &[done, last_month, running],
            std::slice::from_ref(&acme),
            &[],
            2,
        );
        let u = &s.usage["acme"];
        assert_eq!(
            (u[0].gpus_in_use, u[0].gpu_hours, u[0].energy_kwh),
            (16, 60.0, 42.0)
        );
        assert_eq!(s.factory.tenants[0].budget_gpu_hours_left, Some(40.0));

        // Deleted jobs' hours in this month's ledger count; last month's do not.
        let mut settled = (*acme).clone();
        settled.status.as_mut().unwrap().ledger = Some(aifactory_api::UsageLedger {
            period: "2026-01".into(),
            usage: vec![PoolUsage {
                pool: "h100".into(),
                gpus_in_use: 0,
                gpu_hours: 30.0,
                energy_kwh: 21.0,
            }],
            ..Default::default()
        });
        let with_ledger = usage(
            &[],
            &[],
            &[Arc::new(settled.clone())],
            &[],
            jiff::Timestamp::from_second(NOW).unwrap(),
        );
        assert_eq!(with_ledger["acme"][0].gpu_hours, 30.0);
        settled
            .status
            .as_mut()
            .unwrap()
            .ledger
            .as_mut()
            .unwrap()
            .period = "2025-12".into();
        let stale = usage(
            &[],
            &[],
            &[Arc::new(settled)],
            &[],
            jiff::Timestamp::from_second(NOW).unwrap(),
        );
        assert!(stale["acme"].is_empty());
        let status = tenant_usage_status(
            &acme,
            u,
            jiff::Timestamp::from_second(NOW).unwrap(),
            &ts(NOW),
        );
        assert_eq!(status["period"], "2026-01");
        assert_eq!(status["budgetRemainingGpuHours"], 40.0);
        assert_eq!(status["conditions"][0]["status"], "False");
    }

    #[test]
    fn a_written_usage_status_reads_back_as_unchanged() {
        let idle = tenant("idle", json!([{"pool": "h100", "gpus": 8}]), json!({}));
        let now = jiff::Timestamp::from_second(NOW).unwrap();
        let status = tenant_usage_status(&idle, &[], now, &ts(NOW));
        // What the API server returns after the write, as the typed status.
        let mut live = serde_json::to_value(idle.status.clone().unwrap()).unwrap();
        for (k, v) in status.as_object().unwrap() {
            live[k] = v.clone();
        }
        let back: aifactory_api::TenantStatus = serde_json::from_value(live).unwrap();
        assert!(crate::controllers::status_holds(
            &serde_json::to_value(&back).unwrap(),
            &status
        ));
    }

    #[test]
    fn statuses_of_decisions() {
        let tj = job("acme", "llm", 2, None);
        let now = ts(NOW);
        let q = queued_status(&tj, Some(3), "waiting for 16 GPUs", "Capacity", &now);
        assert_eq!(q.phase, Some(TrainingJobPhase::Queued));
        assert_eq!(q.queued_at, tj.metadata.creation_timestamp);
        assert_eq!(q.queue_position, Some(3));
        let mut queued = (*tj).clone();
        queued.status = Some(q);
        let a = admitted_status(
            &queued,
            &admission::Admission {
                placement: vec!["h100-1".into(), "h100-0".into()],
                domain: None,
                borrowed_gpus: 0,
            },
            &now,
        );
        assert_eq!(a.phase, Some(TrainingJobPhase::Admitted));
        assert_eq!((a.queue_position, a.pending_reason.as_ref()), (None, None));
        assert_eq!(a.placement.as_ref().unwrap().nodes, ["h100-1", "h100-0"]);
        let mut running = (*tj).clone();
        running.status = Some(TrainingJobStatus {
            started_at: Some(ts(NOW - 3600)),
            ..a
        });
        let p = preempted_status(&running, "preempted: tenant acme reclaims", 700.0, &now);
        assert_eq!(p.phase, Some(TrainingJobPhase::Preempted));
        assert_eq!(p.gpu_hours, 16.0);
        assert_eq!(p.placement, None);
        assert_eq!(p.queued_at, Some(now.clone()));
        let requeued = queued_status(
            &TrainingJob {
                status: Some(p),
                ..(*tj).clone()
            },
            Some(1),
            "waiting",
            "Capacity",
            &now,
        );
        assert_eq!(requeued.phase, Some(TrainingJobPhase::Preempted));
    }
}
