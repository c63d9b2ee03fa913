//! What one admission pass decides: for every queued job, admit (perhaps after
//! evicting others) or stay queued with a reason a tenant can read.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The result of one admission pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decisions {
    /// Exactly one decision per queued job, in the order the engine considered them.
    /// Admissions and evictions must be applied in this order to reproduce the state
    /// the engine reasoned about.
    pub decisions: Vec<Decision>,
    /// Every pool after the pass.
    pub pools: Vec<PoolUsage>,
}

/// The decision for one queued job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The queued job's id.
    pub job: String,
    /// Its tenant.
    pub tenant: String,
    /// Its pool.
    pub pool: String,
    /// What happens to it.
    pub outcome: Outcome,
}

/// What happens to a queued job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Outcome {
    /// It fits now: start it on this placement.
    Admit(Admission),
    /// It fits once these running jobs are evicted: evict them (they go back to the
    /// queue as `Preempted`) and start it on this placement. Its pods may wait in
    /// `Pending` until the victims' pods are gone; the engine already counts the
    /// victims' GPUs as free.
    PreemptToAdmit {
        /// The running jobs to evict.
        evict: Vec<Eviction>,
        /// Where the job starts.
        admission: Admission,
    },
    /// It stays queued.
    Queued {
        /// 1-based place among the jobs of the same pool still queued after this
        /// pass, in the order the engine considered them (priority, starving first,
        /// fair share, age).
        position: u32,
        /// Why it is not admitted.
        reason: PendingReason,
    },
}

/// Where an admitted job starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    /// One node per pod, distinct, in rank order (completion index 0 first);
    /// ranks follow the topology so neighbours in the ring share racks.
    pub placement: Vec<String>,
    /// The topology domain value all pods share, when the job asked to be packed.
    pub domain: Option<String>,
    /// How many of its GPUs lie beyond the tenant's guarantee (borrowed).
    pub borrowed_gpus: u32,
}

/// A running job evicted so that a queued job can start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Eviction {
    /// The evicted job's id.
    pub job: String,
    /// Its tenant.
    pub tenant: String,
    /// Why.
    pub reason: PreemptionReason,
}

/// Why a running job is evicted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum PreemptionReason {
    /// Another tenant reclaims GPUs guaranteed to it that this job borrowed.
    ReclaimGuarantee {
        /// The job that needs the GPUs.
        by_job: String,
        /// Its tenant.
        by_tenant: String,
        /// The pool.
        pool: String,
    },
    /// A job of the same tenant with a higher priority needs the GPUs.
    HigherPriority {
        /// The job that needs the GPUs.
        by_job: String,
        /// Its priority.
        by_priority: i32,
        /// The evicted job's priority.
        priority: i32,
    },
}

impl fmt::Display for PreemptionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReclaimGuarantee {
                by_job,
                by_tenant,
                pool,
            } => write!(
                f,
                "preempted: tenant {by_tenant} reclaims its guaranteed GPUs in pool {pool} \
                 (for job {by_job}); this job was using borrowed GPUs"
            ),
            Self::HigherPriority {
                by_job,
                by_priority,
                priority,
            } => write!(
                f,
                "preempted by job {by_job} of the same tenant with higher priority \
                 ({by_priority} > {priority})"
            ),
        }
    }
}

impl fmt::Display for Eviction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.job, self.reason)
    }
}

/// Why a job stays queued, in words a tenant understands (see `Display`).
/// [`PendingReason::code`] gives a stable CamelCase name for `status.pendingReason`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "code")]
#[allow(missing_docs)] // the fields are described by the variant and its Display
pub enum PendingReason {
    /// The job names a tenant that does not exist.
    UnknownTenant { tenant: String },
    /// The job names a pool that does not exist.
    UnknownPool { pool: String },
    /// The job asks for zero nodes or zero GPUs per node.
    InvalidShape { nodes: u32, gpus_per_node: u32 },
    /// A job with this id is already running, or queued twice.
    Duplicate { job: String },
    /// The pool has no such topology level to pack into.
    UnknownTopologyLevel {
        pool: String,
        level: String,
        levels: Vec<String>,
    },
    /// The tenant may not use this priority.
    PriorityNotAllowed {
        tenant: String,
        priority: i32,
        allowed: Vec<i32>,
    },
    /// The pool is outside the tenant's residency regions.
    Residency {
        tenant: String,
        pool: String,
        pool_region: String,
        allowed_regions: Vec<String>,
    },
    /// The tenant has no quota in the pool.
    NoQuota { tenant: String, pool: String },
    /// The tenant's budget is used up.
    BudgetExhausted { tenant: String, left_gpu_hours: f64 },
    /// The job's estimate exceeds what is left of the tenant's budget.
    OverBudget {
        tenant: String,
        needed_gpu_hours: f64,
        left_gpu_hours: f64,
    },
    /// The gang cannot fit the pool even when it is empty.
    TooLarge {
        pool: String,
        nodes: u32,
        gpus_per_node: u32,
        /// The pack level, if packed.
        level: Option<String>,
        /// Most schedulable nodes with that many GPUs (in one domain if packed).
        max_nodes: u32,
    },
    /// The tenant's quota (guarantee plus what it may borrow now) is too small.
    Quota {
        tenant: String,
        pool: String,
        would_use: u64,
        guaranteed: u64,
        borrowable: u64,
    },
    /// Admitting the job would push the pool's power draw over its cap.
    PowerCap {
        pool: String,
        would_draw_kilowatts: f64,
        cap_kilowatts: f64,
    },
    /// Not enough free GPUs (or not enough nodes with enough free GPUs).
    Capacity {
        pool: String,
        gpu_model: String,
        nodes: u32,
        gpus_per_node: u32,
        free_gpus: u64,
        /// Schedulable nodes with at least `gpus_per_node` free GPUs.
        fitting_nodes: u32,
        jobs_ahead: u32,
    },
    /// No domain of the pack level has enough nodes with enough free GPUs.
    Topology {
        pool: String,
        level: String,
        nodes: u32,
        gpus_per_node: u32,
        jobs_ahead: u32,
    },
    /// The job would fit, but the pool is held for a job that has waited longest.
    HeldForWaitingJob {
        pool: String,
        job: String,
        jobs_ahead: u32,
    },
}

impl PendingReason {
    /// A stable CamelCase name for the reason, e.g. `BudgetExhausted`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownTenant { .. } => "UnknownTenant",
            Self::UnknownPool { .. } => "UnknownPool",
            Self::InvalidShape { .. } => "InvalidShape",
            Self::Duplicate { .. } => "Duplicate",
            Self::UnknownTopologyLevel { .. } => "UnknownTopologyLevel",
            Self::PriorityNotAllowed { .. } => "PriorityNotAllowed",
            Self::Residency { .. } => "Residency",
            Self::NoQuota { .. } => "NoQuota",
            Self::BudgetExhausted { .. } => "BudgetExhausted",
            Self::OverBudget { .. } => "OverBudget",
            Self::TooLarge { .. } => "TooLarge",
            Self::Quota { .. } => "Quota",
            Self::PowerCap { .. } => "PowerCap",
            Self::Capacity { .. } => "Capacity",
            Self::Topology { .. } => "Topology",
            Self::HeldForWaitingJob { .. } => "HeldForWaitingJob",
        }
    }

    /// Whether the job waits for GPUs, power or quota to free up (rather than for a
    /// change of spec, tenant or budget).
    pub fn is_waiting_for_resources(&self) -> bool {
        matches!(
            self,
            Self::Quota { .. }
                | Self::PowerCap { .. }
                | Self::Capacity { .. }
                | Self::Topology { .. }
                | Self::HeldForWaitingJob { .. }
        )
    }

    pub(crate) fn set_jobs_ahead(&mut self, ahead: u32) {
        match self {
            Self::Capacity { jobs_ahead, .. }
            | Self::Topology { jobs_ahead, .. }
            | Self::HeldForWaitingJob { jobs_ahead, .. } => *jobs_ahead = ahead,
            _ => {}
        }
    }
}

fn ahead(n: u32) -> String {
    match n {
        0 => "next in line".to_owned(),
        1 => "1 job ahead".to_owned(),
        n => format!("{n} jobs ahead"),
    }
}

fn gpus(n: u64) -> &'static str {
    if n == 1 { "GPU" } else { "GPUs" }
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownTenant { tenant } => write!(f, "unknown tenant {tenant}"),
            Self::UnknownPool { pool } => write!(f, "unknown pool {pool}"),
            Self::InvalidShape {
                nodes,
                gpus_per_node,
            } => write!(
                f,
                "invalid shape: a job needs at least 1 node and 1 GPU per node \
                 (asked for {nodes} × {gpus_per_node})"
            ),
            Self::Duplicate { job } => write!(
                f,
                "duplicate: job {job} is queued twice, or still holds GPUs as a running job"
            ),
            Self::UnknownTopologyLevel {
                pool,
                level,
                levels,
            } => write!(
                f,
                "topology: pool {pool} has no level {level} to pack into (levels: {})",
                if levels.is_empty() {
                    "none".to_owned()
                } else {
                    levels.join(", ")
                }
            ),
            Self::PriorityNotAllowed {
                tenant,
                priority,
                allowed,
            } => write!(
                f,
                "priority {priority} is not allowed for tenant {tenant} (allowed: {})",
                allowed
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Residency {
                tenant,
                pool,
                pool_region,
                allowed_regions,
            } => write!(
                f,
                "residency: pool {pool} is in {pool_region}, tenant {tenant} allows {}",
                allowed_regions.join(", ")
            ),
            Self::NoQuota { tenant, pool } => {
                write!(f, "quota: tenant {tenant} has no quota in pool {pool}")
            }
            Self::BudgetExhausted { left_gpu_hours, .. } => write!(
                f,
                "budget exhausted: {left_gpu_hours:.1} GPU-hours left this month"
            ),
            Self::OverBudget {
                tenant,
                needed_gpu_hours,
                left_gpu_hours,
            } => write!(
                f,
                "budget: job needs an estimated {needed_gpu_hours:.1} GPU-hours; \
                 tenant {tenant} has {left_gpu_hours:.1} left this month"
            ),
            Self::TooLarge {
                pool,
                nodes,
                gpus_per_node,
                level,
                max_nodes,
            } => match level {
                None => write!(
                    f,
                    "too large: job needs {nodes} nodes with {gpus_per_node} GPUs; \
                     pool {pool} has {max_nodes} such schedulable nodes"
                ),
                Some(level) => write!(
                    f,
                    "too large: job needs {nodes} nodes with {gpus_per_node} GPUs in one \
                     {level}; the largest {level} in pool {pool} has {max_nodes}"
                ),
            },
            Self::Quota {
                tenant,
                pool,
                would_use,
                guaranteed,
                borrowable,
            } => write!(
                f,
                "quota: tenant {tenant} would use {would_use} of {guaranteed} guaranteed \
                 + {borrowable} borrowable GPUs in pool {pool}"
            ),
            Self::PowerCap {
                pool,
                would_draw_kilowatts,
                cap_kilowatts,
            } => write!(
                f,
                "power cap: pool {pool} would draw {would_draw_kilowatts:.1} kW of \
                 {cap_kilowatts} kW"
            ),
            Self::Capacity {
                pool,
                gpu_model,
                nodes,
                gpus_per_node,
                free_gpus,
                fitting_nodes,
                jobs_ahead,
            } => {
                let needed = u64::from(*nodes) * u64::from(*gpus_per_node);
                if *free_gpus < needed {
                    write!(
                        f,
                        "waiting for {needed} {gpu_model} {} in pool {pool}; {free_gpus} free; {}",
                        gpus(needed),
                        ahead(*jobs_ahead)
                    )
                } else if *nodes == 1 {
                    write!(
                        f,
                        "waiting for a node with {needed} free {gpu_model} {} in pool {pool}; \
                         {free_gpus} free, but spread over several nodes; {}",
                        gpus(needed),
                        ahead(*jobs_ahead)
                    )
                } else {
                    write!(
                        f,
                        "waiting for {nodes} nodes with {gpus_per_node} free {gpu_model} \
                         {} in pool {pool}; {free_gpus} free, but only {fitting_nodes} \
                         such {}; {}",
                        gpus(u64::from(*gpus_per_node)),
                        if *fitting_nodes == 1 { "node" } else { "nodes" },
                        ahead(*jobs_ahead)
                    )
                }
            }
            Self::Topology {
                pool,
                level,
                nodes,
                gpus_per_node,
                jobs_ahead,
            } => write!(
                f,
                "no topology domain ({level}) in pool {pool} has {nodes} nodes with \
                 {gpus_per_node} free {}; {}",
                gpus(u64::from(*gpus_per_node)),
                ahead(*jobs_ahead)
            ),
            Self::HeldForWaitingJob {
                pool,
                job,
                jobs_ahead,
            } => write!(
                f,
                "pool {pool} is held for job {job}, which has waited longest; {}",
                ahead(*jobs_ahead)
            ),
        }
    }
}

/// A pool after the pass, for `GpuPool` status and the simulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    /// The pool.
    pub pool: String,
    /// GPUs of schedulable nodes, less unmanaged ones.
    pub capacity_gpus: u64,
    /// GPUs held by running and admitted jobs and by unmanaged pods, on all nodes.
    pub allocated_gpus: u64,
    /// Free GPUs on schedulable nodes (including reserved ones).
    pub free_gpus: u64,
    /// Estimated draw: allocated GPUs × per-GPU watts.
    pub power_kilowatts: f64,
    /// The pool's power cap, if any.
    pub power_cap_kilowatts: Option<f64>,
    /// The reservation held for a starving job, if any.
    pub reservation: Option<Reservation>,
}

/// Resources set aside in a pool for a starving job that could not start: jobs
/// considered after it in the pass could not use them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// The starving job.
    pub job: String,
    /// Nodes no later job could use. Empty when the job waits only for quota: then
    /// only its quota is held (its GPUs count as the tenant's usage for later jobs),
    /// otherwise its quota, its power draw and these nodes are.
    pub nodes: Vec<String>,
    /// GPUs the job needs.
    pub gpus: u64,
}

impl Decisions {
    /// The decision for a job, if it was queued.
    pub fn get(&self, job: &str) -> Option<&Decision> {
        self.decisions.iter().find(|d| d.job == job)
    }

    /// Decisions that start a job, in order.
    pub fn admitted(&self) -> impl Iterator<Item = (&Decision, &Admission)> {
        self.decisions.iter().filter_map(|d| match &d.outcome {
            Outcome::Admit(a) | Outcome::PreemptToAdmit { admission: a, .. } => Some((d, a)),
            Outcome::Queued { .. } => None,
        })
    }

    /// All evictions of the pass, in order.
    pub fn evictions(&self) -> impl Iterator<Item = &Eviction> {
        self.decisions.iter().flat_map(|d| match &d.outcome {
            Outcome::PreemptToAdmit { evict, .. } => evict.as_slice(),
            _ => &[],
        })
    }

    /// The usage of a pool after the pass.
    pub fn pool(&self, pool: &str) -> Option<&PoolUsage> {
        self.pools.iter().find(|p| p.pool == pool)
    }
}

impl Outcome {
    /// The admission, if the job starts.
    pub fn admission(&self) -> Option<&Admission> {
        match self {
            Self::Admit(a) | Self::PreemptToAdmit { admission: a, .. } => Some(a),
            Self::Queued { .. } => None,
        }
    }

    /// The pending reason, if the job stays queued.
    pub fn pending_reason(&self) -> Option<&PendingReason> {
        match self {
            Self::Queued { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(nodes: u32, gpus_per_node: u32, free_gpus: u64, fitting_nodes: u32) -> String {
        PendingReason::Capacity {
            pool: "h100".into(),
            gpu_model: "H100-80GB".into(),
            nodes,
            gpus_per_node,
            free_gpus,
            fitting_nodes,
            jobs_ahead: 2,
        }
        .to_string()
    }

    #[test]
    fn a_tenant_reads_how_many_gpus_it_waits_for_and_how_many_are_free() {
        assert_eq!(
            capacity(2, 8, 8, 1),
            "waiting for 16 H100-80GB GPUs in pool h100; 8 free; 2 jobs ahead"
        );
    }

    #[test]
    fn free_gpus_scattered_over_nodes_are_explained() {
        assert_eq!(
            capacity(1, 8, 12, 0),
            "waiting for a node with 8 free H100-80GB GPUs in pool h100; 12 free, but \
             spread over several nodes; 2 jobs ahead"
        );
        assert_eq!(
            capacity(2, 8, 20, 1),
            "waiting for 2 nodes with 8 free H100-80GB GPUs in pool h100; 20 free, but only \
             1 such node; 2 jobs ahead"
        );
    }

    #[test]
    fn codes_are_stable_names_for_status() {
        let reason = PendingReason::BudgetExhausted {
            tenant: "acme".into(),
            left_gpu_hours: 0.0,
        };
        assert_eq!(reason.code(), "BudgetExhausted");
        assert!(!reason.is_waiting_for_resources());
        assert_eq!(
            reason.to_string(),
            "budget exhausted: 0.0 GPU-hours left this month"
        );
    }
}
