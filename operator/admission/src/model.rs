//! The factory as one admission pass sees it: pools and their nodes, tenants with
//! quotas, usage and budgets, the jobs already running and the jobs waiting.
//!
//! Plain values only. The controller fills a [`Factory`] from its watch caches, the
//! simulator reads one from YAML, tests build one with the small builders below
//! (`QueuedJob::new("acme/llm", "acme", "h100").nodes(4).gpus_per_node(8)`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of the factory: everything one admission pass needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Factory {
    /// The GPU pools, each a set of identical nodes.
    pub pools: Vec<GpuPool>,
    /// The tenants: quotas, fair-share usage, budget, residency.
    pub tenants: Vec<Tenant>,
    /// Jobs admitted earlier that still hold their GPUs (admitted, running, or being
    /// evicted but not yet gone). Their GPUs are derived from their placement.
    pub running: Vec<RunningJob>,
    /// Jobs waiting for admission: every one gets exactly one decision.
    pub queued: Vec<QueuedJob>,
    /// The current tick, in the same unit as [`QueuedJob::queued_since`] and
    /// [`Policy::starving_after`] (the controller uses seconds, tests count passes).
    pub now: u64,
    /// Tunables of the pass.
    pub policy: Policy,
}

/// Tunables of an admission pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Policy {
    /// A job queued for at least this many ticks is *starving*: it goes ahead of fair
    /// share within its priority, and the first starving job of a pool that cannot
    /// start holds a reservation so later jobs cannot keep overtaking it.
    pub starving_after: u64,
    /// GPU-hours charged to a tenant's fair share for each GPU admitted in this pass,
    /// so one tenant with a low share cannot take the whole factory in one pass.
    pub pass_charge_hours: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            // 15 minutes when ticks are seconds.
            starving_after: 900,
            pass_charge_hours: 1.0,
        }
    }
}

/// A set of identical GPU nodes with one location, GPU model and power budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GpuPool {
    /// The pool's name, e.g. `h100`.
    pub name: String,
    /// Where the hardware is, for data residency, e.g. `eu-west`.
    pub region: String,
    /// The GPU model, e.g. `H100-80GB` (shown in pending reasons).
    pub gpu_model: String,
    /// Power draw of one GPU at load, in watts.
    pub power_watts: f64,
    /// If set, admission keeps the pool's estimated draw (allocated GPUs ×
    /// `power_watts`) at or under this many kilowatts.
    pub power_cap_kilowatts: Option<f64>,
    /// Topology level names, outermost first, e.g. `["block", "rack"]`; a node's
    /// [`Node::topology`] maps these names to its domain.
    pub topology_levels: Vec<String>,
    /// The member nodes.
    pub nodes: Vec<Node>,
}

/// One GPU node of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    /// The Kubernetes node name.
    pub name: String,
    /// Ready and schedulable (not cordoned). New work only lands on such nodes;
    /// jobs already placed on other nodes still count.
    pub schedulable: bool,
    /// Allocatable GPUs of the node.
    pub gpus: u32,
    /// GPUs held by pods this engine did not admit (system pods, work outside the
    /// factory). Do **not** count admitted jobs here: their GPUs come from
    /// [`RunningJob::placement`].
    pub unmanaged_gpus: u32,
    /// Topology level name → domain value, e.g. `rack → r12`.
    pub topology: BTreeMap<String, String>,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            name: String::new(),
            schedulable: true,
            gpus: 0,
            unmanaged_gpus: 0,
            topology: BTreeMap::new(),
        }
    }
}

/// One customer of the factory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tenant {
    /// The tenant's name.
    pub name: String,
    /// Fair-share weight, > 0: a tenant with weight 2 may use twice the GPU-hours of
    /// one with weight 1 before it falls behind it in the queue.
    pub weight: f64,
    /// Per-pool quotas. A tenant without a quota in a pool cannot use that pool.
    pub quotas: Vec<Quota>,
    /// GPU-hours used this period, for fair share.
    pub usage_gpu_hours: f64,
    /// GPU-hours left this month; `None` = no budget. Nothing starts once it is
    /// used up; a job with an estimate starts only if the estimate fits what is left
    /// (estimates of jobs admitted in the same pass count), one without starts while
    /// anything is left.
    pub budget_gpu_hours_left: Option<f64>,
    /// Regions the tenant's jobs may run in; empty = anywhere.
    pub residency_regions: Vec<String>,
    /// Priorities the tenant may use; `None` = any.
    pub allowed_priorities: Option<Vec<i32>>,
}

impl Default for Tenant {
    fn default() -> Self {
        Self {
            name: String::new(),
            weight: 1.0,
            quotas: Vec::new(),
            usage_gpu_hours: 0.0,
            budget_gpu_hours_left: None,
            residency_regions: Vec::new(),
            allowed_priorities: None,
        }
    }
}

/// A tenant's share of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Quota {
    /// The pool this quota is for.
    pub pool: String,
    /// Guaranteed GPUs: the tenant may always use this many, reclaiming them from
    /// borrowers by preemption if needed.
    pub gpus: u32,
    /// How many GPUs beyond the guarantee the tenant may borrow from idle guarantees
    /// of others and from GPUs guaranteed to no one; `None` = no limit.
    pub borrowing_limit: Option<u32>,
    /// How many of its idle guaranteed GPUs others may borrow; `None` = all.
    pub lending_limit: Option<u32>,
}

/// A job admitted in an earlier pass that still holds its GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunningJob {
    /// Unique job id (e.g. `namespace/name`).
    pub id: String,
    /// The owning tenant.
    pub tenant: String,
    /// The pool it runs in.
    pub pool: String,
    /// GPUs each pod holds.
    pub gpus_per_node: u32,
    /// One node name per pod, in rank order; the job holds `gpus_per_node` GPUs on
    /// each.
    pub placement: Vec<String>,
    /// Its priority (preemption evicts lower priorities first).
    pub priority: i32,
    /// When it was admitted, in any increasing unit (larger = younger; preemption
    /// evicts the youngest first).
    pub admitted_at: u64,
}

/// A job waiting for admission.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueuedJob {
    /// Unique job id (e.g. `namespace/name`).
    pub id: String,
    /// The owning tenant.
    pub tenant: String,
    /// The pool it asks for.
    pub pool: String,
    /// Number of nodes (pods); the gang is admitted whole or not at all.
    pub nodes: u32,
    /// GPUs per node (pod).
    pub gpus_per_node: u32,
    /// Priority: higher goes first.
    pub priority: i32,
    /// Creation sequence: lower = older; breaks ties after priority and fair share.
    pub created: u64,
    /// The tick the job (re-)entered the queue; see [`Factory::now`].
    pub queued_since: u64,
    /// If set, a topology level of the pool (e.g. `rack`): all pods must land in one
    /// domain of that level.
    pub pack: Option<String>,
    /// Estimated GPU-hours, checked against the tenant's budget if both are set.
    pub estimated_gpu_hours: Option<f64>,
}

impl QueuedJob {
    /// A one-node, one-GPU job of `tenant` for `pool`; refine with the setters.
    pub fn new(id: impl Into<String>, tenant: impl Into<String>, pool: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            tenant: tenant.into(),
            pool: pool.into(),
            nodes: 1,
            gpus_per_node: 1,
            ..Self::default()
        }
    }
    /// Number of nodes (pods).
    pub fn nodes(mut self, nodes: u32) -> Self {
        self.nodes = nodes;
        self
    }
    /// GPUs per node.
    pub fn gpus_per_node(mut self, gpus: u32) -> Self {
        self.gpus_per_node = gpus;
        self
    }
    /// Priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    /// Creation sequence (lower = older).
    pub fn created(mut self, created: u64) -> Self {
        self.created = created;
        self
    }
    /// The tick it entered the queue.
    pub fn queued_since(mut self, tick: u64) -> Self {
        self.queued_since = tick;
        self
    }
    /// Pack all pods into one domain of this topology level.
    pub fn pack(mut self, level: impl Into<String>) -> Self {
        self.pack = Some(level.into());
        self
    }
    /// Estimated GPU-hours.
    pub fn estimate(mut self, gpu_hours: f64) -> Self {
        self.estimated_gpu_hours = Some(gpu_hours);
        self
    }
    /// Total GPUs the gang asks for.
    pub fn gpus(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }
}

impl RunningJob {
    /// A job of `tenant` in `pool` holding `gpus_per_node` GPUs on each of `nodes`.
    pub fn new(
        id: impl Into<String>,
        tenant: impl Into<String>,
        pool: impl Into<String>,
        gpus_per_node: u32,
        nodes: &[&str],
    ) -> Self {
        Self {
            id: id.into(),
            tenant: tenant.into(),
            pool: pool.into(),
            gpus_per_node,
            placement: nodes.iter().map(|n| (*n).to_owned()).collect(),
            ..Self::default()
        }
    }
    /// Priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    /// Admission tick (larger = younger).
    pub fn admitted_at(mut self, tick: u64) -> Self {
        self.admitted_at = tick;
        self
    }
    /// Total GPUs the job holds.
    pub fn gpus(&self) -> u64 {
        self.placement.len() as u64 * u64::from(self.gpus_per_node)
    }
}

impl Node {
    /// A schedulable node with `gpus` GPUs and no topology labels.
    pub fn new(name: impl Into<String>, gpus: u32) -> Self {
        Self {
            name: name.into(),
            gpus,
            ..Self::default()
        }
    }
    /// Label the node with its domain at a topology level.
    pub fn domain(mut self, level: impl Into<String>, value: impl Into<String>) -> Self {
        self.topology.insert(level.into(), value.into());
        self
    }
    /// Mark the node not ready or cordoned.
    pub fn unschedulable(mut self) -> Self {
        self.schedulable = false;
        self
    }
    /// GPUs held by pods outside the factory.
    pub fn unmanaged(mut self, gpus: u32) -> Self {
        self.unmanaged_gpus = gpus;
        self
    }
}

impl GpuPool {
    /// An empty pool of `gpu_model` GPUs (700 W each, no cap, region `eu-west`).
    pub fn new(name: impl Into<String>, gpu_model: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            region: "eu-west".to_owned(),
            gpu_model: gpu_model.into(),
            power_watts: 700.0,
            ..Self::default()
        }
    }
    /// Region of the pool.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }
    /// Per-GPU draw and optional cap of the pool.
    pub fn power(mut self, watts_per_gpu: f64, cap_kilowatts: Option<f64>) -> Self {
        self.power_watts = watts_per_gpu;
        self.power_cap_kilowatts = cap_kilowatts;
        self
    }
    /// Add one node.
    pub fn node(mut self, node: Node) -> Self {
        self.nodes.push(node);
        self
    }
    /// Add `racks` racks of `per_rack` nodes with `gpus` GPUs each, named
    /// `<pool>-r<rack>-n<i>`, labelled `rack=r<rack>` and `block=b<rack / 4>`, and set
    /// the topology levels to `["block", "rack"]`.
    pub fn racks(mut self, racks: u32, per_rack: u32, gpus: u32) -> Self {
        self.topology_levels = vec!["block".to_owned(), "rack".to_owned()];
        for rack in 0..racks {
            for i in 0..per_rack {
                let node = Node::new(format!("{}-r{rack}-n{i}", self.name), gpus)
                    .domain("block", format!("b{}", rack / 4))
                    .domain("rack", format!("r{rack}"));
                self.nodes.push(node);
            }
        }
        self
    }
}

impl Tenant {
    /// A tenant of weight 1 with no quota, budget or residency limit.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
    /// Fair-share weight.
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }
    /// Add a quota.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }
    /// GPU-hours used this period.
    pub fn usage(mut self, gpu_hours: f64) -> Self {
        self.usage_gpu_hours = gpu_hours;
        self
    }
    /// GPU-hours left this month.
    pub fn budget_left(mut self, gpu_hours: f64) -> Self {
        self.budget_gpu_hours_left = Some(gpu_hours);
        self
    }
    /// Regions the tenant's work may run in.
    pub fn residency(mut self, regions: &[&str]) -> Self {
        self.residency_regions = regions.iter().map(|r| (*r).to_owned()).collect();
        self
    }
    /// Priorities the tenant may use.
    pub fn allowed_priorities(mut self, priorities: &[i32]) -> Self {
        self.allowed_priorities = Some(priorities.to_vec());
        self
    }
}

impl Quota {
    /// `gpus` guaranteed in `pool`, unlimited borrowing, lends all of its idle guarantee.
    pub fn new(pool: impl Into<String>, gpus: u32) -> Self {
        Self {
            pool: pool.into(),
            gpus,
            borrowing_limit: None,
            lending_limit: None,
        }
    }
    /// Borrow at most this many GPUs beyond the guarantee.
    pub fn borrowing_limit(mut self, gpus: u32) -> Self {
        self.borrowing_limit = Some(gpus);
        self
    }
    /// Lend at most this many idle guaranteed GPUs.
    pub fn lending_limit(mut self, gpus: u32) -> Self {
        self.lending_limit = Some(gpus);
        self
    }
}

impl Factory {
    /// An empty factory at tick 0 with the default policy.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add a pool.
    pub fn pool(mut self, pool: GpuPool) -> Self {
        self.pools.push(pool);
        self
    }
    /// Add a tenant.
    pub fn tenant(mut self, tenant: Tenant) -> Self {
        self.tenants.push(tenant);
        self
    }
    /// Add a running job.
    pub fn run(mut self, job: RunningJob) -> Self {
        self.running.push(job);
        self
    }
    /// Queue a job.
    pub fn submit(mut self, job: QueuedJob) -> Self {
        self.queued.push(job);
        self
    }
    /// Set the current tick.
    pub fn at(mut self, now: u64) -> Self {
        self.now = now;
        self
    }
    /// Jobs queued for this many ticks are starving.
    pub fn starving_after(mut self, ticks: u64) -> Self {
        self.policy.starving_after = ticks;
        self
    }
}
