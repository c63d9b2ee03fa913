//! A small factory simulator for property tests, with its own model of the factory
//! (written independently of the engine) that replays every decision and checks it.
//!
//! One simulated pass: running jobs that reached their end finish, new jobs arrive,
//! the engine decides, the decisions are replayed one by one against the model —
//! checking the invariants before and after each — and applied: admitted jobs run
//! for their duration, evicted ones go back to the queue.

#![allow(dead_code)] // each test binary uses a part

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use aifactory_admission::{
    Decisions, Engine, Factory, GpuPool, Node, Outcome, Policy, PreemptionReason, QueuedJob, Quota,
    RunningJob, Tenant, admit,
};
use proptest::prelude::*;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($arg)+));
        }
    };
}

// ---------------------------------------------------------------- generators

/// A node as generated: GPUs, unmanaged GPUs, schedulable.
pub type NodeGen = (u32, u32, bool);

/// A pool as generated.
#[derive(Debug, Clone)]
pub struct PoolGen {
    /// Blocks of racks of nodes.
    pub blocks: Vec<Vec<Vec<NodeGen>>>,
    pub watts: u32,
    /// Cap as a percentage of the pool's full draw.
    pub cap_percent: Option<u32>,
    pub region: usize,
}

/// A generated quota: guaranteed, borrowing limit, lending limit.
pub type QuotaGen = (u32, Option<u32>, Option<u32>);

/// A tenant as generated.
#[derive(Debug, Clone)]
pub struct TenantGen {
    pub weight: u32,
    /// Per pool: guaranteed, borrowing limit, lending limit.
    pub quotas: Vec<Option<QuotaGen>>,
    pub residency: Option<usize>,
    pub budget: Option<u32>,
    pub usage: u32,
    pub low_priorities_only: bool,
}

/// A job as generated.
#[derive(Debug, Clone)]
pub struct JobGen {
    pub arrives: u64,
    pub tenant: usize,
    pub pool: usize,
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub priority: i32,
    pub pack: Option<&'static str>,
    pub duration: u64,
    pub estimate: Option<u32>,
}

pub const REGIONS: [&str; 2] = ["eu-west", "us-east"];

pub fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        prop_oneof![3 => Just(8u32), 1 => Just(4u32)],
        prop_oneof![5 => Just(0u32), 1 => 1u32..=2],
        prop::bool::weighted(0.9),
    )
}

pub fn pool_gen() -> impl Strategy<Value = PoolGen> {
    (
        prop::collection::vec(
            prop::collection::vec(prop::collection::vec(node_gen(), 1..=3), 1..=2),
            1..=2,
        ),
        prop_oneof![Just(700u32), Just(500u32)],
        prop_oneof![2 => Just(None), 1 => (40u32..=100).prop_map(Some)],
        0..REGIONS.len(),
    )
        .prop_map(|(blocks, watts, cap_percent, region)| PoolGen {
            blocks,
            watts,
            cap_percent,
            region,
        })
}

pub fn tenant_gen(pools: usize) -> impl Strategy<Value = TenantGen> {
    let quota = prop_oneof![
        1 => Just(None),
        4 => (
            0u32..=24,
            prop_oneof![Just(None), (0u32..=16).prop_map(Some)],
            prop_oneof![Just(None), (0u32..=16).prop_map(Some)],
        )
            .prop_map(Some),
    ];
    (
        1u32..=3,
        prop::collection::vec(quota, pools),
        prop_oneof![3 => Just(None), 1 => (0..REGIONS.len()).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => (0u32..=200).prop_map(Some)],
        0u32..=100,
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(weight, quotas, residency, budget, usage, low_priorities_only)| TenantGen {
                weight,
                quotas,
                residency,
                budget,
                usage,
                low_priorities_only,
            },
        )
}

pub fn job_gen(passes: u64) -> impl Strategy<Value = JobGen> {
    (
        0..passes,
        0usize..8,
        0usize..8,
        prop_oneof![3 => Just(1u32), 2 => Just(2u32), 1 => Just(3u32)],
        prop_oneof![Just(1u32), Just(2), Just(4), Just(8)],
        prop_oneof![3 => Just(0i32), 1 => Just(10), 1 => Just(100)],
        prop_oneof![3 => Just(None), 1 => Just(Some("rack")), 1 => Just(Some("block"))],
        1u64..=4,
        prop_oneof![3 => Just(None), 1 => (1u32..=60).prop_map(Some)],
    )
        .prop_map(
            |(arrives, tenant, pool, nodes, gpus_per_node, priority, pack, duration, estimate)| {
                JobGen {
                    arrives,
                    tenant,
                    pool,
                    nodes,
                    gpus_per_node,
                    priority,
                    pack,
                    duration,
                    estimate,
                }
            },
        )
}

/// A factory (pools and tenants) and a stream of jobs.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub pools: Vec<PoolGen>,
    pub tenants: Vec<TenantGen>,
    pub jobs: Vec<JobGen>,
    pub starving_after: u64,
}

pub fn scenario(passes: u64) -> impl Strategy<Value = Scenario> {
    prop::collection::vec(pool_gen(), 1..=2)
        .prop_flat_map(move |pools| {
            let n = pools.len();
            (
                Just(pools),
                prop::collection::vec(tenant_gen(n), 2..=4),
                prop::collection::vec(job_gen(passes), 0..=40),
                1u64..=4,
            )
        })
        .prop_map(|(pools, tenants, jobs, starving_after)| Scenario {
            pools,
            tenants,
            jobs,
            starving_after,
        })
}

// ---------------------------------------------------------------- the world

pub fn build_pool(index: usize, g: &PoolGen) -> GpuPool {
    let name = format!("p{index}");
    let mut pool = GpuPool::new(&name, "H100-80GB").region(REGIONS[g.region]);
    pool.topology_levels = vec!["block".into(), "rack".into()];
    let mut full = 0u32;
    for (b, racks) in g.blocks.iter().enumerate() {
        for (r, nodes) in racks.iter().enumerate() {
            for (i, &(gpus, unmanaged, schedulable)) in nodes.iter().enumerate() {
                let mut node = Node::new(format!("{name}-b{b}-r{r}-n{i}"), gpus)
                    .domain("block", format!("b{b}"))
                    .domain("rack", format!("b{b}r{r}"))
                    .unmanaged(unmanaged);
                node.schedulable = schedulable;
                full += gpus;
                pool = pool.node(node);
            }
        }
    }
    let cap = g
        .cap_percent
        .map(|p| f64::from(full * g.watts * p / 100 / 1000));
    pool.power(f64::from(g.watts), cap)
}

pub fn build_tenant(index: usize, g: &TenantGen, pools: &[GpuPool]) -> Tenant {
    let mut tenant = Tenant::new(format!("t{index}"))
        .weight(f64::from(g.weight))
        .usage(f64::from(g.usage));
    for (p, quota) in g.quotas.iter().enumerate() {
        if let Some((gpus, borrowing, lending)) = quota {
            tenant = tenant.quota(Quota {
                pool: pools[p].name.clone(),
                gpus: *gpus,
                borrowing_limit: *borrowing,
                lending_limit: *lending,
            });
        }
    }
    if let Some(r) = g.residency {
        tenant = tenant.residency(&[REGIONS[r]]);
    }
    tenant.budget_gpu_hours_left = g.budget.map(f64::from);
    if g.low_priorities_only {
        tenant = tenant.allowed_priorities(&[0, 10]);
    }
    tenant
}

// ---------------------------------------------------------------- the model

/// The test's own model of who holds what, to replay decisions against.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// (pool, node) → GPUs held by admitted jobs.
    node_used: HashMap<(String, String), u64>,
    /// (tenant, pool) → GPUs held by admitted jobs.
    usage: HashMap<(String, String), u64>,
    /// pool → GPUs drawing power (unmanaged + jobs).
    allocated: HashMap<String, u64>,
    pub running: BTreeMap<String, RunningJob>,
    /// pool → the reservation in force.
    hold: HashMap<String, HoldModel>,
}

#[derive(Debug, Clone)]
struct HoldModel {
    tenant: String,
    gpus: u64,
    nodes: HashSet<String>,
    physical: bool,
}

pub struct World<'a> {
    pub pools: &'a [GpuPool],
    pub tenants: &'a [Tenant],
}

impl World<'_> {
    pub fn pool(&self, name: &str) -> Option<&GpuPool> {
        self.pools.iter().find(|p| p.name == name)
    }
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }
    pub fn quota(&self, tenant: &str, pool: &str) -> Option<&Quota> {
        self.tenant(tenant)?
            .quotas
            .iter()
            .rev()
            .find(|q| q.pool == pool)
    }
    fn node<'p>(pool: &'p GpuPool, name: &str) -> Option<&'p Node> {
        pool.nodes.iter().find(|n| n.name == name)
    }
    fn capacity(node: &Node) -> u64 {
        u64::from(node.gpus.saturating_sub(node.unmanaged_gpus))
    }
    /// GPUs of the pool usable by admitted jobs (schedulable nodes).
    pub fn pool_capacity(pool: &GpuPool) -> u64 {
        pool.nodes
            .iter()
            .filter(|n| n.schedulable)
            .map(Self::capacity)
            .sum()
    }
    fn cap_gpus_ok(pool: &GpuPool, gpus: u64) -> bool {
        match pool.power_cap_kilowatts {
            None => true,
            Some(cap) => gpus as f64 * pool.power_watts <= cap * 1000.0 + 1e-6,
        }
    }

    /// Could the job start in the factory if nothing ran at all?
    pub fn fits_empty(&self, job: &QueuedJob) -> bool {
        let (Some(pool), Some(tenant)) = (self.pool(&job.pool), self.tenant(&job.tenant)) else {
            return false;
        };
        let Some(quota) = self.quota(&job.tenant, &job.pool) else {
            return false;
        };
        if !tenant.residency_regions.is_empty() && !tenant.residency_regions.contains(&pool.region)
        {
            return false;
        }
        if let Some(allowed) = &tenant.allowed_priorities
            && !allowed.contains(&job.priority)
        {
            return false;
        }
        let gpus = job.gpus();
        let unmanaged: u64 = pool
            .nodes
            .iter()
            .map(|n| u64::from(n.unmanaged_gpus.min(n.gpus)))
            .sum();
        if !Self::cap_gpus_ok(pool, unmanaged + gpus) {
            return false;
        }
        let guaranteed = u64::from(quota.gpus);
        if gpus > guaranteed {
            let sum_g: u64 = self
                .tenants
                .iter()
                .filter_map(|t| self.quota(&t.name, &pool.name))
                .map(|q| u64::from(q.gpus))
                .sum();
            let others_lend: u64 = self
                .tenants
                .iter()
                .filter(|t| t.name != job.tenant)
                .filter_map(|t| self.quota(&t.name, &pool.name))
                .map(|q| u64::from(q.lending_limit.unwrap_or(q.gpus).min(q.gpus)))
                .sum();
            let mut borrowable = Self::pool_capacity(pool).saturating_sub(sum_g) + others_lend;
            if let Some(limit) = quota.borrowing_limit {
                borrowable = borrowable.min(u64::from(limit));
            }
            if gpus > guaranteed + borrowable {
                return false;
            }
        }
        Model::default().nodes_fit(self, pool, job)
    }
}

impl Model {
    pub fn new(world: &World, running: &[RunningJob]) -> Self {
        let mut model = Model::default();
        for pool in world.pools {
            let unmanaged = pool
                .nodes
                .iter()
                .map(|n| u64::from(n.unmanaged_gpus.min(n.gpus)))
                .sum();
            model.allocated.insert(pool.name.clone(), unmanaged);
        }
        for job in running {
            model.start(job.clone());
        }
        model
    }

    fn start(&mut self, job: RunningJob) {
        for node in &job.placement {
            *self
                .node_used
                .entry((job.pool.clone(), node.clone()))
                .or_default() += u64::from(job.gpus_per_node);
        }
        *self
            .usage
            .entry((job.tenant.clone(), job.pool.clone()))
            .or_default() += job.gpus();
        *self.allocated.entry(job.pool.clone()).or_default() += job.gpus();
        self.running.insert(job.id.clone(), job);
    }

    /// Evict a running job; an error if it is not running (released twice).
    fn stop(&mut self, id: &str) -> Result<RunningJob, String> {
        let job = self
            .running
            .remove(id)
            .ok_or_else(|| format!("job {id} evicted but not running"))?;
        for node in &job.placement {
            let used = self
                .node_used
                .get_mut(&(job.pool.clone(), node.clone()))
                .expect("a running job's node is used");
            *used -= u64::from(job.gpus_per_node);
        }
        *self
            .usage
            .get_mut(&(job.tenant.clone(), job.pool.clone()))
            .expect("a running job's tenant uses the pool") -= job.gpus();
        *self.allocated.get_mut(&job.pool).expect("known pool") -= job.gpus();
        Ok(job)
    }

    fn used(&self, tenant: &str, pool: &str) -> u64 {
        self.usage
            .get(&(tenant.to_owned(), pool.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn held(&self, tenant: &str, pool: &str) -> u64 {
        match self.hold.get(pool) {
            Some(h) if h.tenant == tenant => h.gpus,
            _ => 0,
        }
    }

    fn free(&self, pool: &GpuPool, node: &Node) -> u64 {
        World::capacity(node).saturating_sub(
            self.node_used
                .get(&(pool.name.clone(), node.name.clone()))
                .copied()
                .unwrap_or(0),
        )
    }

    /// The quota rules, from scratch: may `tenant` take `add` more GPUs in `pool`?
    fn quota_ok(&self, world: &World, tenant: &str, pool: &GpuPool, add: u64) -> bool {
        let Some(quota) = world.quota(tenant, &pool.name) else {
            return false;
        };
        let usage_of = |t: &str| {
            self.used(t, &pool.name) + self.held(t, &pool.name) + if t == tenant { add } else { 0 }
        };
        let guaranteed = u64::from(quota.gpus);
        let usage = usage_of(tenant);
        if usage <= guaranteed {
            return true;
        }
        if let Some(limit) = quota.borrowing_limit
            && usage - guaranteed > u64::from(limit)
        {
            return false;
        }
        let mut borrowed = 0;
        let mut lendable = 0;
        let mut sum_g = 0;
        for t in world.tenants {
            let q = world.quota(&t.name, &pool.name);
            let g = q.map_or(0, |q| u64::from(q.gpus));
            sum_g += g;
            let u = usage_of(&t.name);
            borrowed += u.saturating_sub(g);
            let idle = g.saturating_sub(u);
            lendable += q
                .and_then(|q| q.lending_limit)
                .map_or(idle, |l| idle.min(u64::from(l)));
        }
        let supply = World::pool_capacity(pool).saturating_sub(sum_g) + lendable;
        borrowed <= supply
    }

    fn power_ok(&self, pool: &GpuPool, add: u64) -> bool {
        let held = match self.hold.get(&pool.name) {
            Some(h) if h.physical => h.gpus,
            _ => 0,
        };
        World::cap_gpus_ok(pool, self.allocated[&pool.name] + held + add)
    }

    fn usable<'p>(&'p self, pool: &'p GpuPool, gpus: u64) -> impl Iterator<Item = &'p Node> {
        let held = self.hold.get(&pool.name);
        pool.nodes.iter().filter(move |n| {
            n.schedulable
                && !held.is_some_and(|h| h.nodes.contains(&n.name))
                && self.free(pool, n) >= gpus
        })
    }

    fn nodes_fit(&self, _world: &World, pool: &GpuPool, job: &QueuedJob) -> bool {
        let gpus = u64::from(job.gpus_per_node);
        match &job.pack {
            None => self.usable(pool, gpus).count() >= job.nodes as usize,
            Some(level) => {
                let mut per_domain: HashMap<&str, usize> = HashMap::new();
                for node in self.usable(pool, gpus) {
                    if let Some(d) = node.topology.get(level) {
                        *per_domain.entry(d.as_str()).or_default() += 1;
                    }
                }
                per_domain.values().any(|&c| c >= job.nodes as usize)
            }
        }
    }

    /// Does the job fit now, by the test's own reading of the rules?
    pub fn fits(&self, world: &World, job: &QueuedJob) -> bool {
        let Some(pool) = world.pool(&job.pool) else {
            return false;
        };
        self.quota_ok(world, &job.tenant, pool, job.gpus())
            && self.power_ok(pool, job.gpus())
            && self.nodes_fit(world, pool, job)
    }

    /// Are these evictions, in order, allowed for `job`?
    fn victims_allowed(&self, world: &World, job: &QueuedJob, victims: &[String]) -> bool {
        let mut model = self.clone();
        let mut reclaims = false;
        for v in victims {
            let Some(run) = model.running.get(v).cloned() else {
                return false;
            };
            if run.pool != job.pool {
                return false;
            }
            if run.tenant == job.tenant {
                if run.priority >= job.priority {
                    return false;
                }
            } else {
                reclaims = true;
                let g = world
                    .quota(&run.tenant, &run.pool)
                    .map_or(0, |q| u64::from(q.gpus));
                if model.used(&run.tenant, &run.pool) <= g {
                    return false;
                }
            }
            model.stop(v).expect("checked running");
        }
        if reclaims {
            let g = world
                .quota(&job.tenant, &job.pool)
                .map_or(0, |q| u64::from(q.gpus));
            let usage = model.used(&job.tenant, &job.pool) + model.held(&job.tenant, &job.pool);
            if usage + job.gpus() > g {
                return false;
            }
        }
        true
    }

    fn fits_after(&self, world: &World, job: &QueuedJob, victims: &[String]) -> bool {
        let mut model = self.clone();
        for v in victims {
            if model.stop(v).is_err() {
                return false;
            }
        }
        model.fits(world, job)
    }

    /// Physical invariants of the model: every node within its capacity, the power
    /// draw within the cap wherever this pass admitted something.
    fn check_physical(&self, world: &World, admitted_in: &HashSet<String>) -> Result<(), String> {
        for pool in world.pools {
            for node in &pool.nodes {
                let used = self
                    .node_used
                    .get(&(pool.name.clone(), node.name.clone()))
                    .copied()
                    .unwrap_or(0);
                ensure!(
                    used <= World::capacity(node),
                    "node {} holds {used} GPUs of {}",
                    node.name,
                    World::capacity(node)
                );
            }
            if admitted_in.contains(&pool.name) {
                ensure!(
                    World::cap_gpus_ok(pool, self.allocated[&pool.name]),
                    "pool {} draws {} GPUs over its cap {:?} kW",
                    pool.name,
                    self.allocated[&pool.name],
                    pool.power_cap_kilowatts
                );
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- replay

/// What a pass did, for the simulation to apply.
#[derive(Debug, Default)]
pub struct Applied {
    pub admitted: Vec<(QueuedJob, RunningJob)>,
    pub evicted: Vec<RunningJob>,
}

/// Replay the decisions of one pass against the test's model, checking each.
pub fn replay(factory: &Factory, decisions: &Decisions) -> Result<Applied, String> {
    let world = World {
        pools: &factory.pools,
        tenants: &factory.tenants,
    };
    let mut model = Model::new(&world, &factory.running);

    // Exactly one decision per queued job.
    let queued: BTreeMap<&str, &QueuedJob> =
        factory.queued.iter().map(|q| (q.id.as_str(), q)).collect();
    ensure!(
        decisions.decisions.len() == factory.queued.len(),
        "{} decisions for {} queued jobs",
        decisions.decisions.len(),
        factory.queued.len()
    );
    let decided: BTreeSet<&str> = decisions.decisions.iter().map(|d| d.job.as_str()).collect();
    ensure!(
        decided.len() == decisions.decisions.len() && decided == queued.keys().copied().collect(),
        "decisions and queued jobs differ"
    );

    let reservations: HashMap<&str, (&str, &aifactory_admission::Reservation)> = decisions
        .pools
        .iter()
        .filter_map(|p| {
            p.reservation
                .as_ref()
                .map(|r| (r.job.as_str(), (p.pool.as_str(), r)))
        })
        .collect();

    let mut budget: HashMap<&str, Option<f64>> = factory
        .tenants
        .iter()
        .map(|t| (t.name.as_str(), t.budget_gpu_hours_left))
        .collect();
    let mut applied = Applied::default();
    let mut admitted_in: HashSet<String> = HashSet::new();
    let mut positions: HashMap<&str, u32> = HashMap::new();

    for d in &decisions.decisions {
        let job = queued[d.job.as_str()];
        ensure!(
            d.tenant == job.tenant && d.pool == job.pool,
            "decision for {} names the wrong tenant or pool",
            job.id
        );
        let (admission, victims) = match &d.outcome {
            Outcome::Queued { position, reason } => {
                let count = positions.entry(d.pool.as_str()).or_default();
                *count += 1;
                ensure!(
                    *position == *count,
                    "{} has position {position}, expected {count}",
                    job.id
                );
                if reason.is_waiting_for_resources() {
                    ensure!(
                        !model.fits(&world, job),
                        "{} stays queued ({reason}) but fits",
                        job.id
                    );
                }
                if let Some((pool, r)) = reservations.get(job.id.as_str()) {
                    ensure!(*pool == job.pool, "reservation in the wrong pool");
                    ensure!(
                        reason.is_waiting_for_resources(),
                        "reservation for {} which waits for {reason}",
                        job.id
                    );
                    ensure!(r.gpus == job.gpus(), "reservation of the wrong size");
                    model.hold.insert(
                        job.pool.clone(),
                        HoldModel {
                            tenant: job.tenant.clone(),
                            gpus: job.gpus(),
                            nodes: r.nodes.iter().cloned().collect(),
                            physical: !r.nodes.is_empty(),
                        },
                    );
                }
                continue;
            }
            Outcome::Admit(a) => (a, Vec::new()),
            Outcome::PreemptToAdmit { evict, admission } => (admission, evict.clone()),
        };
        let pool = world.pool(&job.pool).ok_or("admitted to an unknown pool")?;
        let tenant = world
            .tenant(&job.tenant)
            .ok_or("admitted for an unknown tenant")?;

        // Evictions: allowed, needed, minimal, and each released exactly once.
        if !victims.is_empty() {
            let ids: Vec<String> = victims.iter().map(|e| e.job.clone()).collect();
            ensure!(
                !model.fits(&world, job),
                "{} evicts {ids:?} but fit without",
                job.id
            );
            ensure!(
                model.victims_allowed(&world, job, &ids),
                "{} may not evict {ids:?}",
                job.id
            );
            for (i, e) in victims.iter().enumerate() {
                let run = model
                    .running
                    .get(&e.job)
                    .ok_or(format!("{} evicts {} which is not running", job.id, e.job))?;
                let own = run.tenant == job.tenant;
                ensure!(
                    own == matches!(e.reason, PreemptionReason::HigherPriority { .. }),
                    "eviction of {} has the wrong reason",
                    e.job
                );
                let mut fewer = ids.clone();
                fewer.remove(i);
                ensure!(
                    !(model.victims_allowed(&world, job, &fewer)
                        && model.fits_after(&world, job, &fewer)),
                    "{} evicts {} needlessly",
                    job.id,
                    e.job
                );
            }
            for e in &victims {
                applied.evicted.push(model.stop(&e.job)?);
            }
        }

        // The admission itself.
        ensure!(
            model.fits(&world, job),
            "{} admitted but does not fit",
            job.id
        );
        ensure!(
            !model.running.contains_key(&job.id),
            "{} admitted twice",
            job.id
        );
        ensure!(
            admission.placement.len() == job.nodes as usize,
            "{} placed on {} nodes, asked {}",
            job.id,
            admission.placement.len(),
            job.nodes
        );
        let distinct: HashSet<&String> = admission.placement.iter().collect();
        ensure!(
            distinct.len() == admission.placement.len(),
            "{} placed twice on a node",
            job.id
        );
        let held = model.hold.get(&job.pool).map(|h| h.nodes.clone());
        for name in &admission.placement {
            let node = World::node(pool, name).ok_or(format!("{name} is not in {}", pool.name))?;
            ensure!(
                node.schedulable,
                "{} placed on unschedulable {name}",
                job.id
            );
            ensure!(
                !held.as_ref().is_some_and(|h| h.contains(name)),
                "{} placed on reserved {name}",
                job.id
            );
        }
        if let Some(level) = &job.pack {
            let domains: HashSet<Option<&String>> = admission
                .placement
                .iter()
                .map(|n| World::node(pool, n).and_then(|n| n.topology.get(level)))
                .collect();
            ensure!(
                domains.len() == 1 && admission.domain.as_ref() == *domains.iter().next().unwrap(),
                "{} not packed in one {level}: {domains:?} / {:?}",
                job.id,
                admission.domain
            );
        }
        if !tenant.residency_regions.is_empty() {
            ensure!(
                tenant.residency_regions.contains(&pool.region),
                "{} runs outside its residency",
                job.id
            );
        }
        if let Some(allowed) = &tenant.allowed_priorities {
            ensure!(
                allowed.contains(&job.priority),
                "{} priority not allowed",
                job.id
            );
        }
        if let Some(Some(left)) = budget.get_mut(job.tenant.as_str()) {
            ensure!(*left > 0.0, "{} admitted with no budget left", job.id);
            if let Some(e) = job.estimated_gpu_hours {
                ensure!(e <= *left, "{} admitted over budget", job.id);
                *left -= e;
            }
        }
        let quota = world
            .quota(&job.tenant, &job.pool)
            .ok_or("admitted without quota")?;
        let g = u64::from(quota.gpus);
        let before = model.used(&job.tenant, &job.pool) + model.held(&job.tenant, &job.pool);
        let expected_borrow = (before + job.gpus()).saturating_sub(g) - before.saturating_sub(g);
        ensure!(
            u64::from(admission.borrowed_gpus) == expected_borrow,
            "{} borrows {} GPUs, expected {expected_borrow}",
            job.id,
            admission.borrowed_gpus
        );

        let run = RunningJob {
            id: job.id.clone(),
            tenant: job.tenant.clone(),
            pool: job.pool.clone(),
            gpus_per_node: job.gpus_per_node,
            placement: admission.placement.clone(),
            priority: job.priority,
            admitted_at: 0,
        };
        model.start(run.clone());
        admitted_in.insert(job.pool.clone());
        if let Some(limit) = quota.borrowing_limit {
            let used = model.used(&job.tenant, &job.pool);
            ensure!(
                used <= g + u64::from(limit),
                "tenant {} uses {used} GPUs in {}, limit {g} + {limit}",
                job.tenant,
                job.pool
            );
        }
        model.check_physical(&world, &admitted_in)?;
        applied.admitted.push((job.clone(), run));
    }

    // The engine's own view of the pools agrees with the replay: every GPU was
    // taken and released exactly once.
    for usage in &decisions.pools {
        let pool = world.pool(&usage.pool).ok_or("usage of an unknown pool")?;
        ensure!(
            usage.allocated_gpus == model.allocated[&pool.name],
            "pool {} allocated {} by the engine, {} by replay",
            pool.name,
            usage.allocated_gpus,
            model.allocated[&pool.name]
        );
        let free: u64 = pool
            .nodes
            .iter()
            .filter(|n| n.schedulable)
            .map(|n| model.free(pool, n))
            .sum();
        ensure!(
            usage.free_gpus == free,
            "pool {} free {} by the engine, {free} by replay",
            pool.name,
            usage.free_gpus
        );
    }
    Ok(applied)
}

// ---------------------------------------------------------------- simulation

/// A running job with its end.
#[derive(Debug, Clone)]
struct Active {
    job: RunningJob,
    queued: QueuedJob,
    ends: u64,
    duration: u64,
}

/// A queued job with its run time.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub job: QueuedJob,
    pub duration: u64,
}

/// A factory that runs passes.
pub struct Simulation {
    pub pools: Vec<GpuPool>,
    pub tenants: Vec<Tenant>,
    pub policy: Policy,
    pub now: u64,
    active: Vec<Active>,
    pub waiting: Vec<Waiting>,
    /// Job id → first pass it was admitted.
    pub first_admitted: HashMap<String, u64>,
    next_admitted: u64,
    /// Decides every pass again, keeping its indexes from pass to pass: it must
    /// agree with `admit` on every one.
    engine: Engine,
}

impl Simulation {
    pub fn new(pools: Vec<GpuPool>, tenants: Vec<Tenant>, starving_after: u64) -> Self {
        Self {
            engine: Engine::new(pools.clone()),
            pools,
            tenants,
            policy: Policy {
                starving_after,
                ..Policy::default()
            },
            now: 0,
            active: Vec::new(),
            waiting: Vec::new(),
            first_admitted: HashMap::new(),
            next_admitted: 0,
        }
    }

    pub fn submit(&mut self, job: QueuedJob, duration: u64) {
        self.waiting.push(Waiting { job, duration });
    }

    pub fn world(&self) -> World<'_> {
        World {
            pools: &self.pools,
            tenants: &self.tenants,
        }
    }

    /// One pass at `self.now`, then time moves on by one tick.
    pub fn pass(&mut self) -> Result<Decisions, String> {
        // Jobs that ran their time finish; running ones use GPU-hours.
        let now = self.now;
        self.active.retain(|a| a.ends > now);
        let factory = Factory {
            pools: self.pools.clone(),
            tenants: self.tenants.clone(),
            running: self.active.iter().map(|a| a.job.clone()).collect(),
            queued: self.waiting.iter().map(|w| w.job.clone()).collect(),
            now,
            policy: self.policy.clone(),
        };
        let decisions = admit(&factory);
        let without_pools = Factory {
            pools: Vec::new(),
            ..factory.clone()
        };
        let from_engine = self.engine.admit(&without_pools);
        if from_engine != decisions {
            return Err(format!(
                "Engine::admit and admit disagree at pass {now}:\n{from_engine:#?}\nvs\n{decisions:#?}"
            ));
        }
        let applied = replay(&factory, &decisions)?;

        let durations: HashMap<String, u64> = self
            .waiting
            .iter()
            .map(|w| (w.job.id.clone(), w.duration))
            .collect();
        let admitted: HashSet<&str> = applied
            .admitted
            .iter()
            .map(|(q, _)| q.id.as_str())
            .collect();
        self.waiting
            .retain(|w| !admitted.contains(w.job.id.as_str()));
        for (queued, mut run) in applied.admitted {
            self.next_admitted += 1;
            run.admitted_at = self.next_admitted;
            self.first_admitted.entry(queued.id.clone()).or_insert(now);
            let duration = durations[&queued.id];
            self.active.push(Active {
                job: run,
                queued,
                ends: now + duration,
                duration,
            });
        }
        for evicted in applied.evicted {
            let pos = self
                .active
                .iter()
                .position(|a| a.job.id == evicted.id)
                .expect("evicted jobs were active");
            let active = self.active.remove(pos);
            // Back in the queue with its creation kept, waiting anew.
            self.waiting.push(Waiting {
                job: QueuedJob {
                    queued_since: now,
                    ..active.queued
                },
                duration: active.duration,
            });
        }
        // Usage and budgets move with the GPUs held during this tick.
        for active in &self.active {
            if let Some(t) = self
                .tenants
                .iter_mut()
                .find(|t| t.name == active.job.tenant)
            {
                let hours = active.job.gpus() as f64;
                t.usage_gpu_hours += hours;
                if let Some(b) = &mut t.budget_gpu_hours_left {
                    *b -= hours;
                }
            }
        }
        self.now += 1;
        Ok(decisions)
    }
}

/// Queued job of a generated stream.
pub fn queued_job(index: usize, g: &JobGen, pools: &[GpuPool], tenants: &[Tenant]) -> QueuedJob {
    let tenant = &tenants[g.tenant % tenants.len()];
    let pool = &pools[g.pool % pools.len()];
    QueuedJob {
        id: format!("{}/j{index}", tenant.name),
        tenant: tenant.name.clone(),
        pool: pool.name.clone(),
        nodes: g.nodes,
        gpus_per_node: g.gpus_per_node,
        priority: g.priority,
        created: index as u64,
        queued_since: g.arrives,
        pack: g.pack.map(str::to_owned),
        estimated_gpu_hours: g.estimate.map(f64::from),
    }
}
