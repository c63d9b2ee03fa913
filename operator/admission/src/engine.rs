//! One admission pass: the factory snapshot in, one decision per queued job out.
//!
//! For each job, in [queue](crate::queue) order:
//! 1. **Refuse** what cannot start whatever the others do: priority not allowed,
//!    residency, no quota, budget, a gang larger than the pool (or its best domain),
//!    a draw over the power cap or a demand over quota even in an empty pool.
//! 2. **Fit**: quota (guarantee, then borrowing), power cap, then a best-fit placement
//!    of the whole gang on schedulable nodes (inside one domain if packed). If all
//!    pass, admit: the GPUs are taken at once, so later jobs see them gone.
//! 3. **Preempt** if allowed: lower-priority jobs of the same tenant, and — when the
//!    job stays within its tenant's guarantee — jobs of tenants using more than their
//!    guarantee, lowest priority and youngest first. Victims are added one by one
//!    until the job fits; then each victim is dropped again if the job still fits
//!    without it. If it never fits, nothing is evicted.
//! 4. **Hold**: if the job is starving and its pool holds nothing yet, the pool holds
//!    what the job needs (see [`Reservation`](crate::Reservation)) for the rest of
//!    the pass, so smaller jobs may still backfill around it but not into it.
//! 5. Otherwise it stays queued with the reason of the first check that failed.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashSet;
use std::ops::Range;

use crate::decision::{
    Admission, Decision, Decisions, Eviction, Outcome, PendingReason, PoolUsage, PreemptionReason,
    Reservation,
};
use crate::fast_hash::FastMap;
use crate::model::{Factory, GpuPool, QueuedJob, RunningJob};
use crate::placement::{Fit, Miss, NodeBuffers, PoolLayout, PoolNodes};
use crate::queue::{Entry, Queue, Share};
use crate::quota::{PoolLedger, QuotaShortfall};

/// Decide, for every queued job of the factory, whether it starts now (and where,
/// and whom it evicts) or why it waits. Pure: the same factory gives the same
/// decisions.
pub fn admit(factory: &Factory) -> Decisions {
    let bases: Vec<PoolBase> = factory.pools.iter().map(PoolBase::borrowing).collect();
    Pass::new(factory, &factory.pools, &bases, Vec::new())
        .run()
        .0
}

/// An admission engine for many passes over the same pools, such as a simulation:
/// it keeps what only the pools determine (node layout, topology order, node
/// names) and the memory of its indexes from one pass to the next.
///
/// The engine owns the pools; the factories it is given carry everything else and
/// no pools of their own. [`Engine::admit`] then decides exactly as [`admit`] would
/// for the factory with the engine's pools.
#[derive(Debug)]
pub struct Engine {
    pools: Vec<GpuPool>,
    bases: Vec<PoolBase<'static>>,
    buffers: Vec<NodeBuffers>,
}

impl Engine {
    /// An engine for a factory made of these pools.
    pub fn new(pools: Vec<GpuPool>) -> Self {
        let bases = pools.iter().map(PoolBase::owning).collect();
        Self {
            pools,
            bases,
            buffers: Vec::new(),
        }
    }

    /// The pools.
    pub fn pools(&self) -> &[GpuPool] {
        &self.pools
    }

    /// Decide exactly as [`admit`] would for `factory` with the engine's pools.
    ///
    /// # Panics
    /// If `factory` has pools of its own: they would be ignored, so a caller that
    /// still fills them has a bug. (Comparing them with the engine's would cost about
    /// as much as building the indexes the engine keeps.)
    pub fn admit(&mut self, factory: &Factory) -> Decisions {
        assert!(
            factory.pools.is_empty(),
            "Engine::admit takes the pools from the engine, not the factory"
        );
        let buffers = std::mem::take(&mut self.buffers);
        let (decisions, buffers) = Pass::new(factory, &self.pools, &self.bases, buffers).run();
        self.buffers = buffers;
        decisions
    }
}

/// What a pass needs of a pool that only its spec determines.
#[derive(Debug)]
struct PoolBase<'s> {
    layout: PoolLayout,
    /// Node name → index; of nodes sharing a name, the last.
    node_ids: FastMap<Cow<'s, str>, u32>,
    /// GPUs held outside the factory, on all nodes.
    unmanaged: u64,
}

impl<'s> PoolBase<'s> {
    fn borrowing(spec: &'s GpuPool) -> Self {
        let mut node_ids = FastMap::default();
        node_ids.reserve(spec.nodes.len());
        for (i, n) in spec.nodes.iter().enumerate() {
            node_ids.insert(Cow::Borrowed(n.name.as_str()), i as u32);
        }
        Self {
            layout: PoolLayout::new(spec),
            node_ids,
            unmanaged: spec
                .nodes
                .iter()
                .map(|n| u64::from(n.unmanaged_gpus.min(n.gpus)))
                .sum(),
        }
    }
}

impl PoolBase<'static> {
    fn owning(spec: &GpuPool) -> Self {
        let base = PoolBase::borrowing(spec);
        PoolBase {
            layout: base.layout,
            node_ids: base
                .node_ids
                .into_iter()
                .map(|(name, i)| (Cow::Owned(name.into_owned()), i))
                .collect(),
            unmanaged: base.unmanaged,
        }
    }
}

/// A queued job that names a known tenant and pool and has a valid shape.
#[derive(Debug, Clone)]
struct Ask<'f> {
    job: &'f QueuedJob,
    pool: usize,
    tenant: usize,
    /// Index of the pack level in the pool's topology levels.
    level: Option<usize>,
    gpus: u64,
    starving: bool,
}

/// A running job, resolved against its pool.
#[derive(Debug)]
struct Running<'f> {
    job: &'f RunningJob,
    tenant: Option<usize>,
    /// Its known nodes: a range of [`Pass::running_nodes`].
    nodes: Range<usize>,
    gpus: u64,
    evicted: bool,
}

/// What the pool holds for its starving job.
#[derive(Debug)]
struct Hold<'f> {
    /// The job's index among the asks, and its id.
    job: usize,
    id: &'f str,
    tenant: usize,
    gpus: u64,
    nodes: Vec<u32>,
    /// Nodes and power held too, not only quota.
    physical: bool,
}

/// A preemption attempt that failed; a job asking for at least as much at no higher
/// priority fails too while the pool is unchanged.
#[derive(Debug)]
struct FailedPreemption {
    epoch: u64,
    tenant: usize,
    priority: i32,
    nodes: u32,
    gpus_per_node: u32,
    level: Option<usize>,
}

struct PoolState<'f> {
    spec: &'f GpuPool,
    nodes: PoolNodes<'f>,
    ledger: PoolLedger,
    /// GPUs drawing power: unmanaged ones and those of admitted jobs, on all nodes.
    allocated: u64,
    unmanaged: u64,
    /// Power held for the starving job, in GPUs.
    held_power: u64,
    power_cap_gpus: Option<u64>,
    /// Running jobs, lowest priority and youngest first once
    /// [`Pass::sort_evict_order`] ran (sorted only if a job of the pool may preempt).
    evict_order: Vec<usize>,
    evict_order_sorted: bool,
    /// The pool's running jobs grouped by tenant: tenant t's are
    /// `by_tenant[by_tenant_start[t]..by_tenant_start[t + 1]]`.
    by_tenant: Vec<usize>,
    by_tenant_start: Vec<usize>,
    /// Per tenant: running jobs not evicted in this pass, and their GPUs.
    live_jobs: Vec<u32>,
    live_gpus: Vec<u64>,
    /// Bumped whenever GPUs change hands in the pool.
    epoch: u64,
    hold: Option<Hold<'f>>,
    failed_preemptions: Vec<FailedPreemption>,
}

impl PoolState<'_> {
    fn draw_kilowatts(&self, gpus: u64) -> f64 {
        gpus as f64 * self.spec.power_watts / 1000.0
    }
}

/// Why a job does not fit now.
#[derive(Debug, Clone, Copy)]
enum Block {
    Quota(QuotaShortfall),
    Power { would_use: u64 },
    Placement(Miss),
}

/// Why a job does not fit now, and whether its quota would allow it.
#[derive(Debug, Clone, Copy)]
struct Blocked {
    block: Block,
    quota_ok: bool,
}

/// A job that fits: where, and how much of it is borrowed.
#[derive(Debug)]
struct Plan {
    fit: Fit,
    borrowed: u64,
}

struct Pass<'f> {
    factory: &'f Factory,
    /// The factory's pools (the engine's, for [`Engine::admit`]).
    specs: &'f [GpuPool],
    pools: Vec<PoolState<'f>>,
    running: Vec<Running<'f>>,
    running_nodes: Vec<u32>,
    budget_left: Vec<Option<f64>>,
    pool_ids: FastMap<&'f str, usize>,
    tenant_ids: FastMap<&'f str, usize>,
}

impl<'f> Pass<'f> {
    fn new(
        factory: &'f Factory,
        specs: &'f [GpuPool],
        bases: &'f [PoolBase],
        buffers: Vec<NodeBuffers>,
    ) -> Self {
        let tenant_ids: FastMap<&str, usize> = factory
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let pool_ids: FastMap<&str, usize> = specs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();

        let mut buffers = buffers.into_iter();
        let mut pools: Vec<PoolState> = specs
            .iter()
            .zip(bases)
            .map(|(spec, base)| {
                let nodes = PoolNodes::reusing(&base.layout, buffers.next().unwrap_or_default());
                let mut ledger = PoolLedger::new(factory.tenants.len(), nodes.capacity_gpus());
                for (t, tenant) in factory.tenants.iter().enumerate() {
                    if let Some(q) = tenant.quotas.iter().rev().find(|q| q.pool == spec.name) {
                        ledger.set_quota(
                            t,
                            q.gpus.into(),
                            q.borrowing_limit.map(u64::from),
                            q.lending_limit.map(u64::from),
                        );
                    }
                }
                let unmanaged = base.unmanaged;
                let power_cap_gpus = match spec.power_cap_kilowatts {
                    Some(cap) if spec.power_watts > 0.0 => {
                        Some((cap.max(0.0) * 1000.0 / spec.power_watts + 1e-9).floor() as u64)
                    }
                    _ => None,
                };
                PoolState {
                    spec,
                    nodes,
                    ledger,
                    allocated: unmanaged,
                    unmanaged,
                    held_power: 0,
                    power_cap_gpus,
                    evict_order: Vec::new(),
                    evict_order_sorted: false,
                    by_tenant: Vec::new(),
                    by_tenant_start: Vec::new(),
                    live_jobs: vec![0; factory.tenants.len()],
                    live_gpus: vec![0; factory.tenants.len()],
                    epoch: 0,
                    hold: None,
                    failed_preemptions: Vec::new(),
                }
            })
            .collect();

        // Running jobs hold their GPUs; a job naming an unknown pool holds nothing we
        // can see, and an unknown node is skipped (its GPUs still count for quota
        // and power).
        let mut running = Vec::with_capacity(factory.running.len());
        let mut running_nodes = Vec::new();
        for job in &factory.running {
            let Some(&p) = pool_ids.get(job.pool.as_str()) else {
                continue;
            };
            let pool = &mut pools[p];
            let start = running_nodes.len();
            for name in &job.placement {
                if let Some(&node) = bases[p].node_ids.get(name.as_str()) {
                    pool.nodes.take(node, job.gpus_per_node);
                    running_nodes.push(node);
                }
            }
            let tenant = tenant_ids.get(job.tenant.as_str()).copied();
            let gpus = job.gpus();
            if let Some(t) = tenant {
                pool.ledger.take(t, gpus);
                pool.live_jobs[t] += 1;
                pool.live_gpus[t] += gpus;
            }
            pool.allocated += gpus;
            pool.evict_order.push(running.len());
            running.push(Running {
                job,
                tenant,
                nodes: start..running_nodes.len(),
                gpus,
                evicted: false,
            });
        }

        for pool in &mut pools {
            group_by_tenant(pool, &running, factory.tenants.len());
        }

        Self {
            factory,
            specs,
            pools,
            running,
            running_nodes,
            budget_left: factory
                .tenants
                .iter()
                .map(|t| t.budget_gpu_hours_left)
                .collect(),
            pool_ids,
            tenant_ids,
        }
    }

    /// Decide every queued job; give back the node indexes' memory.
    fn run(mut self) -> (Decisions, Vec<NodeBuffers>) {
        let factory = self.factory;
        let (asks, rejected) = self.asks();
        let entries = asks
            .iter()
            .enumerate()
            .map(|(i, a)| Entry {
                job: i,
                tenant: a.tenant,
                priority: a.job.priority,
                created: a.job.created,
                queued_since: a.job.queued_since,
                starving: a.starving,
                id: a.job.id.as_str(),
            })
            .collect();
        let shares = factory
            .tenants
            .iter()
            .map(|t| Share {
                used_gpu_hours: t.usage_gpu_hours,
                weight: if t.weight > 0.0 {
                    t.weight
                } else {
                    f64::MIN_POSITIVE
                },
            })
            .collect();
        let mut queue = Queue::new(entries, shares);
        let mut decisions = Vec::with_capacity(factory.queued.len());
        while let Some(entry) = queue.next() {
            let ask = &asks[entry.job];
            let outcome = self.consider(entry.job, ask);
            if outcome.admission().is_some() {
                queue.charge(
                    ask.tenant,
                    ask.gpus as f64 * factory.policy.pass_charge_hours,
                );
            }
            decisions.push(decision(ask.job, outcome));
        }
        for (job, reason) in rejected {
            decisions.push(decision(
                job,
                Outcome::Queued {
                    position: 0,
                    reason,
                },
            ));
        }

        // Positions: per pool (by name), in the order considered.
        let mut positions = vec![0u32; self.specs.len()];
        let mut other_positions: FastMap<&str, u32> = FastMap::default();
        for d in &mut decisions {
            if let Outcome::Queued { position, reason } = &mut d.outcome {
                let count = match self.pool_ids.get(d.pool.as_str()) {
                    Some(&p) => &mut positions[p],
                    None => other_positions.entry(d.pool.as_str()).or_default(),
                };
                *count += 1;
                *position = *count;
                reason.set_jobs_ahead(*count - 1);
            }
        }

        let pools = self.pools.iter().map(|p| self.usage(p)).collect();
        let buffers = self
            .pools
            .into_iter()
            .map(|p| p.nodes.into_buffers())
            .collect();
        (Decisions { decisions, pools }, buffers)
    }

    /// Resolve queued jobs; the malformed ones are refused at once.
    #[allow(clippy::type_complexity)]
    fn asks(&self) -> (Vec<Ask<'f>>, Vec<(&'f QueuedJob, PendingReason)>) {
        let factory = self.factory;
        let mut seen: HashSet<&str> = factory.running.iter().map(|r| r.id.as_str()).collect();
        let mut asks = Vec::with_capacity(factory.queued.len());
        let mut rejected = Vec::new();
        for job in &factory.queued {
            let refuse = |reason| (job, reason);
            if !seen.insert(job.id.as_str()) {
                rejected.push(refuse(PendingReason::Duplicate {
                    job: job.id.clone(),
                }));
                continue;
            }
            let Some(&tenant) = self.tenant_ids.get(job.tenant.as_str()) else {
                rejected.push(refuse(PendingReason::UnknownTenant {
                    tenant: job.tenant.clone(),
                }));
                continue;
            };
            let Some(&pool) = self.pool_ids.get(job.pool.as_str()) else {
                rejected.push(refuse(PendingReason::UnknownPool {
                    pool: job.pool.clone(),
                }));
                continue;
            };
            if job.nodes == 0 || job.gpus_per_node == 0 {
                rejected.push(refuse(PendingReason::InvalidShape {
                    nodes: job.nodes,
                    gpus_per_node: job.gpus_per_node,
                }));
                continue;
            }
            let levels = &self.specs[pool].topology_levels;
            let level = match &job.pack {
                None => None,
                Some(level) => match levels.iter().position(|l| l == level) {
                    Some(l) => Some(l),
                    None => {
                        rejected.push(refuse(PendingReason::UnknownTopologyLevel {
                            pool: job.pool.clone(),
                            level: level.clone(),
                            levels: levels.clone(),
                        }));
                        continue;
                    }
                },
            };
            asks.push(Ask {
                job,
                pool,
                tenant,
                level,
                gpus: job.gpus(),
                starving: factory.now.saturating_sub(job.queued_since)
                    >= factory.policy.starving_after,
            });
        }
        (asks, rejected)
    }

    fn consider(&mut self, index: usize, a: &Ask<'f>) -> Outcome {
        let queued = |reason| Outcome::Queued {
            position: 0,
            reason,
        };
        if let Some(reason) = self.refusal(a) {
            return queued(reason);
        }
        let blocked = match self.fit(a) {
            Ok(plan) => {
                let admission = self.commit(a, plan);
                return Outcome::Admit(admission);
            }
            Err(blocked) => blocked,
        };
        if let Some(evict) = self.preempt(a) {
            let plan = self
                .fit(a)
                .expect("preemption leaves the job fitting: checked before committing");
            let admission = self.commit(a, plan);
            return Outcome::PreemptToAdmit { evict, admission };
        }
        match self.pools[a.pool].hold.as_ref().map(|h| (h.job, h.id)) {
            None if a.starving => self.hold(index, a, blocked),
            Some((held, id)) if held != index && self.fits_without_hold(a) => {
                return queued(PendingReason::HeldForWaitingJob {
                    pool: a.job.pool.clone(),
                    job: id.to_owned(),
                    jobs_ahead: 0,
                });
            }
            _ => {}
        }
        queued(self.reason(a, blocked.block))
    }

    /// Why the job cannot start whatever the others do, if so.
    fn refusal(&self, a: &Ask) -> Option<PendingReason> {
        let job = a.job;
        let tenant = &self.factory.tenants[a.tenant];
        let pool = &self.pools[a.pool];
        if let Some(allowed) = &tenant.allowed_priorities
            && !allowed.contains(&job.priority)
        {
            return Some(PendingReason::PriorityNotAllowed {
                tenant: tenant.name.clone(),
                priority: job.priority,
                allowed: allowed.clone(),
            });
        }
        if !tenant.residency_regions.is_empty()
            && !tenant.residency_regions.contains(&pool.spec.region)
        {
            return Some(PendingReason::Residency {
                tenant: tenant.name.clone(),
                pool: pool.spec.name.clone(),
                pool_region: pool.spec.region.clone(),
                allowed_regions: tenant.residency_regions.clone(),
            });
        }
        if !pool.ledger.has_quota(a.tenant) {
            return Some(PendingReason::NoQuota {
                tenant: tenant.name.clone(),
                pool: pool.spec.name.clone(),
            });
        }
        if let Some(left) = self.budget_left[a.tenant] {
            if left <= 0.0 {
                return Some(PendingReason::BudgetExhausted {
                    tenant: tenant.name.clone(),
                    left_gpu_hours: left.max(0.0),
                });
            }
            if let Some(needed) = job.estimated_gpu_hours
                && needed > left
            {
                return Some(PendingReason::OverBudget {
                    tenant: tenant.name.clone(),
                    needed_gpu_hours: needed,
                    left_gpu_hours: left,
                });
            }
        }
        let max_nodes = pool.nodes.max_nodes(job.gpus_per_node, a.level);
        if max_nodes < job.nodes {
            return Some(PendingReason::TooLarge {
                pool: pool.spec.name.clone(),
                nodes: job.nodes,
                gpus_per_node: job.gpus_per_node,
                level: job.pack.clone(),
                max_nodes,
            });
        }
        if let Some(cap) = pool.power_cap_gpus
            && pool.unmanaged + a.gpus > cap
        {
            return Some(self.reason(
                a,
                Block::Power {
                    would_use: pool.unmanaged + a.gpus,
                },
            ));
        }
        if let Err(shortfall) = pool.ledger.could_ever_fit(a.tenant, a.gpus) {
            return Some(self.reason(a, Block::Quota(shortfall)));
        }
        None
    }

    /// Does the job fit now: quota, power, placement? When several fail, the
    /// reason told is the tenant's own borrowing limit, else the lack of GPUs, else
    /// power, else what others borrow — the most useful to read first.
    fn fit(&self, a: &Ask) -> Result<Plan, Blocked> {
        let pool = &self.pools[a.pool];
        let quota = pool.ledger.check(a.tenant, a.gpus);
        let quota_ok = quota.is_ok();
        let blocked = |block| Blocked { block, quota_ok };
        if let Err(shortfall) = quota
            && shortfall.own_limit
        {
            return Err(blocked(Block::Quota(shortfall)));
        }
        let fit = pool
            .nodes
            .find(a.job.nodes, a.job.gpus_per_node, a.level)
            .map_err(|miss| blocked(Block::Placement(miss)))?;
        if let Some(cap) = pool.power_cap_gpus {
            let would_use = pool.allocated + pool.held_power + a.gpus;
            if would_use > cap {
                return Err(blocked(Block::Power { would_use }));
            }
        }
        let borrowed = quota.map_err(|shortfall| blocked(Block::Quota(shortfall)))?;
        Ok(Plan { fit, borrowed })
    }

    /// Admit: the job takes its GPUs now.
    fn commit(&mut self, a: &Ask, plan: Plan) -> Admission {
        let pool = &mut self.pools[a.pool];
        for &node in &plan.fit.nodes {
            pool.nodes.take(node, a.job.gpus_per_node);
        }
        pool.ledger.take(a.tenant, a.gpus);
        pool.allocated += a.gpus;
        pool.epoch += 1;
        if let (Some(left), Some(spent)) =
            (&mut self.budget_left[a.tenant], a.job.estimated_gpu_hours)
        {
            *left -= spent;
        }
        Admission {
            placement: plan
                .fit
                .nodes
                .iter()
                .map(|&n| pool.spec.nodes[n as usize].name.clone())
                .collect(),
            domain: plan
                .fit
                .domain
                .zip(a.level)
                .map(|(d, l)| pool.nodes.domain_name(l, d).to_owned()),
            borrowed_gpus: u32::try_from(plan.borrowed).unwrap_or(u32::MAX),
        }
    }

    fn evict(&mut self, pool: usize, r: usize) {
        let job = &self.running[r];
        let pool = &mut self.pools[pool];
        for &node in &self.running_nodes[job.nodes.clone()] {
            pool.nodes.give_back(node, job.job.gpus_per_node);
        }
        if let Some(t) = job.tenant {
            pool.ledger.give_back(t, job.gpus);
        }
        pool.allocated -= job.gpus;
    }

    fn unevict(&mut self, pool: usize, r: usize) {
        let job = &self.running[r];
        let pool = &mut self.pools[pool];
        for &node in &self.running_nodes[job.nodes.clone()] {
            pool.nodes.take(node, job.job.gpus_per_node);
        }
        if let Some(t) = job.tenant {
            pool.ledger.take(t, job.gpus);
        }
        pool.allocated += job.gpus;
    }

    /// May the job reclaim GPUs of borrowers: does it stay within its guarantee?
    fn within_guarantee(&self, a: &Ask) -> bool {
        let ledger = &self.pools[a.pool].ledger;
        ledger.usage(a.tenant) + a.gpus <= ledger.guaranteed(a.tenant)
    }

    /// Are these victims, evicted in this order, all fair game: the same tenant's
    /// lower-priority jobs, or jobs of tenants above their guarantee at the moment of
    /// eviction while the job stays within its own? Evaluated with the victims
    /// evicted.
    fn victims_valid(&self, a: &Ask, victims: &[usize]) -> bool {
        let ledger = &self.pools[a.pool].ledger;
        let mut reclaims = false;
        for (k, &v) in victims.iter().enumerate() {
            let Some(t) = self.running[v].tenant else {
                return false;
            };
            if t == a.tenant {
                continue;
            }
            reclaims = true;
            // t's usage just before this eviction.
            let later: u64 = victims[k..]
                .iter()
                .filter(|&&w| self.running[w].tenant == Some(t))
                .map(|&w| self.running[w].gpus)
                .sum();
            if ledger.used(t) + later <= ledger.guaranteed(t) {
                return false;
            }
        }
        !reclaims || self.within_guarantee(a)
    }

    /// Evict the fewest running jobs (in eviction order) that let the job fit, if
    /// any set does; the evictions are committed.
    fn preempt(&mut self, a: &Ask) -> Option<Vec<Eviction>> {
        let p = a.pool;
        let job = a.job;
        let pool = &self.pools[p];
        if pool.failed_preemptions.iter().any(|f| {
            f.epoch == pool.epoch
                && f.tenant == a.tenant
                && f.priority >= job.priority
                && f.nodes <= job.nodes
                && f.gpus_per_node <= job.gpus_per_node
                && f.level == a.level
        }) {
            return None;
        }
        if !self.any_candidate_reaches(a) {
            self.remember_failure(a);
            return None;
        }
        if !pool.evict_order_sorted {
            self.sort_evict_order(p);
        }
        // Victims in eviction order: the tenant's own lower-priority jobs, and, while
        // the job stays within its guarantee, jobs of tenants borrowing right now.
        // Only evictions happen in this loop, so a tenant borrowing now was
        // borrowing when the loop began: no need to list the candidates first.
        let mut victims = Vec::new();
        let mut fits = false;
        for k in 0..self.pools[p].evict_order.len() {
            let r = self.pools[p].evict_order[k];
            let run = &self.running[r];
            let candidate = !run.evicted
                && match run.tenant {
                    Some(t) if t == a.tenant => run.job.priority < job.priority,
                    Some(t) => self.within_guarantee(a) && self.pools[p].ledger.is_borrowing(t),
                    None => false,
                };
            if !candidate {
                continue;
            }
            self.evict(p, r);
            victims.push(r);
            if self.fit(a).is_ok() {
                fits = true;
                break;
            }
        }
        if !fits {
            for &r in victims.iter().rev() {
                self.unevict(p, r);
            }
            self.remember_failure(a);
            return None;
        }
        // Drop every victim the job does not need, last added first.
        for i in (0..victims.len()).rev() {
            let r = victims.remove(i);
            self.unevict(p, r);
            if self.victims_valid(a, &victims) && self.fit(a).is_ok() {
                continue;
            }
            self.evict(p, r);
            victims.insert(i, r);
        }

        self.pools[p].epoch += 1;
        let evictions = victims
            .iter()
            .map(|&r| {
                self.running[r].evicted = true;
                let run = &self.running[r];
                if let Some(t) = run.tenant {
                    let pool = &mut self.pools[p];
                    pool.live_jobs[t] -= 1;
                    pool.live_gpus[t] -= run.gpus;
                }
                let reason = if run.tenant == Some(a.tenant) {
                    PreemptionReason::HigherPriority {
                        by_job: job.id.clone(),
                        by_priority: job.priority,
                        priority: run.job.priority,
                    }
                } else {
                    PreemptionReason::ReclaimGuarantee {
                        by_job: job.id.clone(),
                        by_tenant: job.tenant.clone(),
                        pool: job.pool.clone(),
                    }
                };
                Eviction {
                    job: run.job.id.clone(),
                    tenant: run.job.tenant.clone(),
                    reason,
                }
            })
            .collect();
        Some(evictions)
    }

    /// The test `preempt` starts with — is there any candidate victim, and could
    /// evicting all of them free enough GPUs? — from per-tenant sums instead of a
    /// walk over every running job of the pool.
    fn any_candidate_reaches(&self, a: &Ask) -> bool {
        let pool = &self.pools[a.pool];
        let (mut jobs, mut gpus) = (0u64, 0u64);
        let own =
            &pool.by_tenant[pool.by_tenant_start[a.tenant]..pool.by_tenant_start[a.tenant + 1]];
        for &r in own {
            let run = &self.running[r];
            if !run.evicted && run.job.priority < a.job.priority {
                jobs += 1;
                gpus += run.gpus;
            }
        }
        if pool.ledger.anyone_borrowing() {
            for t in (0..pool.live_jobs.len()).filter(|&t| t != a.tenant) {
                if pool.ledger.is_borrowing(t) {
                    jobs += u64::from(pool.live_jobs[t]);
                    gpus += pool.live_gpus[t];
                }
            }
        }
        jobs > 0 && pool.nodes.free_gpus() + gpus >= a.gpus
    }

    /// Order the pool's running jobs for eviction: lowest priority, then youngest,
    /// then the greatest id. Sorting on numbers first and comparing ids only on
    /// ties gives the same order as sorting on the whole key, for less.
    fn sort_evict_order(&mut self, p: usize) {
        let running = &self.running;
        let pool = &mut self.pools[p];
        let mut keyed: Vec<(i32, Reverse<u64>, usize)> = pool
            .evict_order
            .iter()
            .map(|&r| {
                (
                    running[r].job.priority,
                    Reverse(running[r].job.admitted_at),
                    r,
                )
            })
            .collect();
        keyed.sort_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| Reverse(&running[a.2].job.id).cmp(&Reverse(&running[b.2].job.id)))
        });
        pool.evict_order.clear();
        pool.evict_order
            .extend(keyed.into_iter().map(|(_, _, r)| r));
        pool.evict_order_sorted = true;
    }

    fn remember_failure(&mut self, a: &Ask) {
        let pool = &mut self.pools[a.pool];
        let epoch = pool.epoch;
        pool.failed_preemptions.retain(|f| f.epoch == epoch);
        pool.failed_preemptions.push(FailedPreemption {
            epoch,
            tenant: a.tenant,
            priority: a.job.priority,
            nodes: a.job.nodes,
            gpus_per_node: a.job.gpus_per_node,
            level: a.level,
        });
    }

    /// The pool holds what the starving job needs for the rest of the pass.
    fn hold(&mut self, index: usize, a: &Ask<'f>, blocked: Blocked) {
        let pool = &mut self.pools[a.pool];
        // Nodes and power are held only for a job its quota lets start: one waiting
        // for quota may wait on lenders for long, and idle held nodes with it.
        let physical = blocked.quota_ok;
        let nodes = if physical {
            pool.nodes
                .reservation(a.job.nodes, a.job.gpus_per_node, a.level)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        for &node in &nodes {
            pool.nodes.exclude(node);
        }
        pool.ledger.hold(a.tenant, a.gpus);
        if physical {
            pool.held_power += a.gpus;
        }
        pool.hold = Some(Hold {
            job: index,
            id: a.job.id.as_str(),
            tenant: a.tenant,
            gpus: a.gpus,
            nodes,
            physical,
        });
    }

    fn set_hold(&mut self, pool: usize, on: bool) {
        let pool = &mut self.pools[pool];
        let Some(hold) = &pool.hold else { return };
        for &node in &hold.nodes {
            if on {
                pool.nodes.exclude(node);
            } else {
                pool.nodes.include(node);
            }
        }
        let power = if hold.physical { hold.gpus } else { 0 };
        if on {
            pool.ledger.hold(hold.tenant, hold.gpus);
            pool.held_power += power;
        } else {
            pool.ledger.release(hold.tenant, hold.gpus);
            pool.held_power -= power;
        }
    }

    /// Would the job fit if its pool held nothing?
    fn fits_without_hold(&mut self, a: &Ask) -> bool {
        self.set_hold(a.pool, false);
        let fits = self.fit(a).is_ok();
        self.set_hold(a.pool, true);
        fits
    }

    fn reason(&self, a: &Ask, block: Block) -> PendingReason {
        let pool = &self.pools[a.pool];
        let job = a.job;
        match block {
            Block::Quota(s) => PendingReason::Quota {
                tenant: job.tenant.clone(),
                pool: job.pool.clone(),
                would_use: s.would_use,
                guaranteed: s.guaranteed,
                borrowable: s.borrowable,
            },
            Block::Power { would_use } => PendingReason::PowerCap {
                pool: job.pool.clone(),
                would_draw_kilowatts: pool.draw_kilowatts(would_use),
                cap_kilowatts: pool.spec.power_cap_kilowatts.unwrap_or_default(),
            },
            Block::Placement(Miss::Capacity {
                free_gpus,
                fitting_nodes,
            }) => PendingReason::Capacity {
                pool: job.pool.clone(),
                gpu_model: pool.spec.gpu_model.clone(),
                nodes: job.nodes,
                gpus_per_node: job.gpus_per_node,
                free_gpus,
                fitting_nodes,
                jobs_ahead: 0,
            },
            Block::Placement(Miss::Topology) => PendingReason::Topology {
                pool: job.pool.clone(),
                level: job.pack.clone().unwrap_or_default(),
                nodes: job.nodes,
                gpus_per_node: job.gpus_per_node,
                jobs_ahead: 0,
            },
        }
    }

    fn usage(&self, pool: &PoolState) -> PoolUsage {
        PoolUsage {
            pool: pool.spec.name.clone(),
            capacity_gpus: pool.nodes.capacity_gpus(),
            allocated_gpus: pool.allocated,
            free_gpus: pool.nodes.free_gpus_schedulable(),
            power_kilowatts: pool.draw_kilowatts(pool.allocated),
            power_cap_kilowatts: pool.spec.power_cap_kilowatts,
            reservation: pool.hold.as_ref().map(|h| Reservation {
                job: h.id.to_owned(),
                nodes: h
                    .nodes
                    .iter()
                    .map(|&n| pool.spec.nodes[n as usize].name.clone())
                    .collect(),
                gpus: h.gpus,
            }),
        }
    }
}

/// Group the pool's running jobs by tenant, keeping their order within a tenant.
fn group_by_tenant(pool: &mut PoolState, running: &[Running], tenants: usize) {
    let mut start = vec![0usize; tenants + 1];
    for &r in &pool.evict_order {
        if let Some(t) = running[r].tenant {
            start[t + 1] += 1;
        }
    }
    for t in 0..tenants {
        start[t + 1] += start[t];
    }
    let mut next = start.clone();
    let mut grouped = vec![0usize; start[tenants]];
    for &r in &pool.evict_order {
        if let Some(t) = running[r].tenant {
            grouped[next[t]] = r;
            next[t] += 1;
        }
    }
    pool.by_tenant = grouped;
    pool.by_tenant_start = start;
}

fn decision(job: &QueuedJob, outcome: Outcome) -> Decision {
    Decision {
        job: job.id.clone(),
        tenant: job.tenant.clone(),
        pool: job.pool.clone(),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Node, Quota, Tenant};

    /// Two racks of four 8-GPU H100 nodes: 64 GPUs, `h100-r<rack>-n<i>`.
    fn h100() -> GpuPool {
        GpuPool::new("h100", "H100-80GB").racks(2, 4, 8)
    }

    fn run(id: &str, tenant: &str, gpus_per_node: u32, nodes: &[&str]) -> RunningJob {
        RunningJob::new(id, tenant, "h100", gpus_per_node, nodes)
    }

    fn job(id: &str, tenant: &str) -> QueuedJob {
        QueuedJob::new(id, tenant, "h100")
    }

    fn outcome<'d>(decisions: &'d Decisions, job: &str) -> &'d Outcome {
        &decisions
            .get(job)
            .expect("every queued job is decided")
            .outcome
    }

    fn placement(decisions: &Decisions, job: &str) -> Vec<String> {
        outcome(decisions, job)
            .admission()
            .unwrap_or_else(|| panic!("{job} should start: {:?}", outcome(decisions, job)))
            .placement
            .clone()
    }

    fn why(decisions: &Decisions, job: &str) -> String {
        outcome(decisions, job)
            .pending_reason()
            .unwrap_or_else(|| panic!("{job} should wait: {:?}", outcome(decisions, job)))
            .to_string()
    }

    fn evicted(decisions: &Decisions, job: &str) -> Vec<String> {
        match outcome(decisions, job) {
            Outcome::PreemptToAdmit { evict, .. } => evict.iter().map(|e| e.job.clone()).collect(),
            other => panic!("{job} should preempt: {other:?}"),
        }
    }

    #[test]
    fn acme_with_16_guaranteed_gpus_starts_a_2_node_job_while_beta_borrows_8() {
        let factory = Factory::new()
            .pool(h100())
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 16)))
            .tenant(Tenant::new("beta").quota(Quota::new("h100", 8)))
            .run(run("beta/sweep", "beta", 8, &["h100-r0-n0", "h100-r0-n1"]))
            .submit(job("acme/llm", "acme").nodes(2).gpus_per_node(8));
        let decisions = admit(&factory);
        let nodes = placement(&decisions, "acme/llm");
        assert_eq!(nodes.len(), 2);
        assert_ne!(nodes[0], nodes[1]);
        assert!(!nodes.iter().any(|n| n == "h100-r0-n0" || n == "h100-r0-n1"));
        let admission = outcome(&decisions, "acme/llm").admission().unwrap();
        assert_eq!(admission.borrowed_gpus, 0);
        let pool = decisions.pool("h100").unwrap();
        assert_eq!((pool.allocated_gpus, pool.free_gpus), (32, 32));
    }

    /// One rack of four 8-GPU nodes; acme is guaranteed 16, beta 8, 8 are nobody's.
    /// beta fills the rack with four one-node jobs, borrowing 24.
    fn beta_fills_the_rack() -> Factory {
        let racks = |n: &str| format!("h100-r0-n{n}");
        let on = |i: &str| racks(i);
        Factory::new()
            .pool(GpuPool::new("h100", "H100-80GB").racks(1, 4, 8))
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 16)))
            .tenant(Tenant::new("beta").quota(Quota::new("h100", 8)))
            .run(run("beta/a", "beta", 8, &[&on("0")]).admitted_at(1))
            .run(run("beta/b", "beta", 8, &[&on("1")]).admitted_at(2))
            .run(
                run("beta/c", "beta", 8, &[&on("2")])
                    .admitted_at(3)
                    .priority(10),
            )
            .run(run("beta/d", "beta", 8, &[&on("3")]).admitted_at(4))
    }

    #[test]
    fn acme_reclaims_its_guarantee_from_beta_youngest_lowest_priority_first() {
        let factory =
            beta_fills_the_rack().submit(job("acme/llm", "acme").nodes(2).gpus_per_node(8));
        let decisions = admit(&factory);
        assert_eq!(evicted(&decisions, "acme/llm"), ["beta/d", "beta/b"]);
        let eviction = decisions.evictions().next().unwrap();
        assert_eq!(
            eviction.reason.to_string(),
            "preempted: tenant acme reclaims its guaranteed GPUs in pool h100 (for job \
             acme/llm); this job was using borrowed GPUs"
        );
        let mut nodes = placement(&decisions, "acme/llm");
        nodes.sort();
        assert_eq!(nodes, ["h100-r0-n1", "h100-r0-n3"]);
    }

    #[test]
    fn a_job_beyond_its_guarantee_does_not_reclaim() {
        let factory =
            beta_fills_the_rack().submit(job("acme/big", "acme").nodes(3).gpus_per_node(8));
        let decisions = admit(&factory);
        assert_eq!(decisions.evictions().count(), 0);
        assert!(why(&decisions, "acme/big").starts_with("waiting for 24 H100-80GB GPUs"));
    }

    #[test]
    fn nothing_is_evicted_when_the_evictions_would_not_make_the_job_fit() {
        // beta borrows one node in each rack; gamma uses its guarantee on the others.
        let factory = Factory::new()
            .pool(GpuPool::new("h100", "H100-80GB").racks(2, 2, 8))
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 16)))
            .tenant(Tenant::new("beta").quota(Quota::new("h100", 0)))
            .tenant(Tenant::new("gamma").quota(Quota::new("h100", 16)))
            .run(run("beta/1", "beta", 8, &["h100-r0-n0"]))
            .run(run("beta/2", "beta", 8, &["h100-r1-n0"]))
            .run(run("gamma/1", "gamma", 8, &["h100-r0-n1", "h100-r1-n1"]))
            .submit(
                job("acme/rack", "acme")
                    .nodes(2)
                    .gpus_per_node(8)
                    .pack("rack"),
            );
        let decisions = admit(&factory);
        assert_eq!(decisions.evictions().count(), 0);
        assert_eq!(
            why(&decisions, "acme/rack"),
            "waiting for 16 H100-80GB GPUs in pool h100; 0 free; next in line"
        );
    }

    #[test]
    fn an_urgent_job_preempts_its_own_tenants_lower_priority_work_only() {
        let factory = Factory::new()
            .pool(GpuPool::new("h100", "H100-80GB").racks(1, 2, 8))
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 8)))
            .tenant(Tenant::new("beta").quota(Quota::new("h100", 8)))
            .run(run("acme/low", "acme", 8, &["h100-r0-n0"]))
            .run(run("beta/low", "beta", 8, &["h100-r0-n1"]))
            .submit(job("acme/urgent", "acme").gpus_per_node(8).priority(100))
            .submit(
                job("beta/urgent", "beta")
                    .gpus_per_node(8)
                    .priority(100)
                    .nodes(2),
            );
        let decisions = admit(&factory);
        assert_eq!(evicted(&decisions, "acme/urgent"), ["acme/low"]);
        assert!(matches!(
            decisions.evictions().next().unwrap().reason,
            PreemptionReason::HigherPriority {
                by_priority: 100,
                priority: 0,
                ..
            }
        ));
        // beta's 2-node job would need acme's node: acme is within its guarantee.
        assert!(
            outcome(&decisions, "beta/urgent")
                .pending_reason()
                .is_some()
        );
        assert_eq!(decisions.evictions().count(), 1);
    }

    #[test]
    fn a_tenant_without_budget_waits_and_its_running_jobs_keep_going() {
        let factory = Factory::new()
            .pool(h100())
            .tenant(
                Tenant::new("acme")
                    .quota(Quota::new("h100", 16))
                    .budget_left(0.0),
            )
            .tenant(
                Tenant::new("beta")
                    .quota(Quota::new("h100", 16))
                    .budget_left(40.0),
            )
            .run(run("acme/old", "acme", 8, &["h100-r0-n0"]))
            .submit(job("acme/new", "acme"))
            .submit(job("beta/long", "beta").estimate(120.0).created(1))
            .submit(job("beta/short", "beta").estimate(30.0).created(2))
            .submit(job("beta/another", "beta").estimate(30.0).created(3));
        let decisions = admit(&factory);
        assert_eq!(
            why(&decisions, "acme/new"),
            "budget exhausted: 0.0 GPU-hours left this month"
        );
        assert_eq!(decisions.evictions().count(), 0);
        assert_eq!(
            why(&decisions, "beta/long"),
            "budget: job needs an estimated 120.0 GPU-hours; tenant beta has 40.0 left this month"
        );
        // The first 30 GPU-hour job spends the budget the second would need.
        assert_eq!(
            decisions
                .admitted()
                .map(|(d, _)| d.job.as_str())
                .collect::<Vec<_>>(),
            ["beta/short"]
        );
        assert_eq!(
            why(&decisions, "beta/another"),
            "budget: job needs an estimated 30.0 GPU-hours; tenant beta has 10.0 left this month"
        );
    }

    #[test]
    fn a_tenant_whose_data_must_stay_in_the_eu_cannot_use_a_us_pool() {
        let factory = Factory::new()
            .pool(
                GpuPool::new("a100-us", "A100-80GB")
                    .region("us-east")
                    .racks(1, 2, 8),
            )
            .tenant(
                Tenant::new("clinic")
                    .quota(Quota::new("a100-us", 16))
                    .residency(&["eu-west"]),
            )
            .submit(QueuedJob::new("clinic/seg", "clinic", "a100-us"));
        let decisions = admit(&factory);
        assert_eq!(
            why(&decisions, "clinic/seg"),
            "residency: pool a100-us is in us-east, tenant clinic allows eu-west"
        );
    }

    #[test]
    fn the_power_cap_keeps_the_pool_under_its_draw() {
        // 40 kW at 700 W per GPU: 57 GPUs may draw; 48 already do.
        let factory = Factory::new()
            .pool(h100().power(700.0, Some(40.0)))
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 64)))
            .run(run(
                "acme/a",
                "acme",
                8,
                &[
                    "h100-r0-n0",
                    "h100-r0-n1",
                    "h100-r0-n2",
                    "h100-r0-n3",
                    "h100-r1-n0",
                    "h100-r1-n1",
                ],
            ))
            .submit(job("acme/b", "acme").nodes(2).gpus_per_node(8).created(1))
            .submit(job("acme/c", "acme").nodes(1).gpus_per_node(8).created(2));
        let decisions = admit(&factory);
        assert_eq!(
            why(&decisions, "acme/b"),
            "power cap: pool h100 would draw 44.8 kW of 40 kW"
        );
        assert_eq!(placement(&decisions, "acme/c").len(), 1);
        let pool = decisions.pool("h100").unwrap();
        assert!(pool.power_kilowatts <= 40.0, "{}", pool.power_kilowatts);
    }

    #[test]
    fn a_packed_gang_needs_one_rack_with_enough_whole_nodes() {
        let factory = Factory::new()
            .pool(h100())
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 64)))
            .run(run("acme/a", "acme", 8, &["h100-r0-n0", "h100-r1-n0"]))
            .submit(
                job("acme/rack4", "acme")
                    .nodes(4)
                    .gpus_per_node(8)
                    .pack("rack")
                    .created(1),
            )
            .submit(
                job("acme/rack3", "acme")
                    .nodes(3)
                    .gpus_per_node(8)
                    .pack("rack")
                    .created(2),
            );
        let decisions = admit(&factory);
        assert_eq!(
            why(&decisions, "acme/rack4"),
            "no topology domain (rack) in pool h100 has 4 nodes with 8 free GPUs; next in line"
        );
        let admission = outcome(&decisions, "acme/rack3").admission().unwrap();
        let rack = admission.domain.clone().unwrap();
        assert!(
            admission
                .placement
                .iter()
                .all(|n| n.contains(&format!("-{rack}-")))
        );
    }

    #[test]
    fn a_small_job_lands_on_the_fullest_node_that_still_holds_it() {
        let factory = Factory::new()
            .pool(h100())
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 64)))
            .run(run("acme/six", "acme", 6, &["h100-r1-n2"]))
            .submit(job("acme/two", "acme").gpus_per_node(2));
        let decisions = admit(&factory);
        assert_eq!(placement(&decisions, "acme/two"), ["h100-r1-n2"]);
    }

    #[test]
    fn fair_share_alternates_so_no_tenant_takes_the_whole_pass() {
        // Room for four one-node jobs; acme used 12 GPU-hours, beta 10.
        let mut factory = Factory::new()
            .pool(GpuPool::new("h100", "H100-80GB").racks(1, 4, 8))
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 0)).usage(12.0))
            .tenant(Tenant::new("beta").quota(Quota::new("h100", 0)).usage(10.0));
        for i in 0..3 {
            factory = factory
                .submit(
                    job(&format!("acme/{i}"), "acme")
                        .gpus_per_node(8)
                        .created(i),
                )
                .submit(
                    job(&format!("beta/{i}"), "beta")
                        .gpus_per_node(8)
                        .created(10 + i),
                );
        }
        let decisions = admit(&factory);
        let started: Vec<&str> = decisions.admitted().map(|(d, _)| d.job.as_str()).collect();
        assert_eq!(started, ["beta/0", "acme/0", "beta/1", "acme/1"]);
        assert_eq!(
            why(&decisions, "beta/2"),
            "waiting for 8 H100-80GB GPUs in pool h100; 0 free; next in line"
        );
        assert_eq!(
            why(&decisions, "acme/2"),
            "waiting for 8 H100-80GB GPUs in pool h100; 0 free; 1 job ahead"
        );
    }

    /// Five 8-GPU nodes: two full, one with 4 free, one empty, one with 4 free in
    /// another rack; a 2-node job cannot start, a 1-node 4-GPU job can.
    fn crowded(starving_after: u64) -> Factory {
        Factory::new()
            .pool(
                GpuPool::new("h100", "H100-80GB")
                    .node(Node::new("n0", 8))
                    .node(Node::new("n1", 8))
                    .node(Node::new("n2", 8))
                    .node(Node::new("n3", 8))
                    .node(Node::new("n4", 8)),
            )
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 32)))
            .tenant(Tenant::new("beta").quota(Quota::new("h100", 8)))
            .run(RunningJob::new("acme/a", "acme", "h100", 8, &["n0", "n1"]))
            .run(RunningJob::new("acme/b", "acme", "h100", 4, &["n2"]))
            .run(RunningJob::new("acme/c", "acme", "h100", 4, &["n4"]))
            .submit(job("acme/big", "acme").nodes(2).gpus_per_node(8).created(1))
            .submit(
                job("beta/small", "beta")
                    .gpus_per_node(4)
                    .created(2)
                    .queued_since(500),
            )
            .submit(
                job("beta/small2", "beta")
                    .gpus_per_node(4)
                    .created(3)
                    .queued_since(500),
            )
            .at(1000)
            .starving_after(starving_after)
    }

    #[test]
    fn small_jobs_backfill_around_a_job_that_cannot_start() {
        let decisions = admit(&crowded(10_000));
        assert!(why(&decisions, "acme/big").starts_with("waiting for 2 nodes with 8 free"));
        assert_eq!(placement(&decisions, "beta/small").len(), 1);
        assert_eq!(placement(&decisions, "beta/small2").len(), 1);
        assert_eq!(decisions.pool("h100").unwrap().reservation, None);
    }

    #[test]
    fn a_starving_job_holds_the_nodes_closest_to_fitting_it() {
        // acme/big has waited 1000 ticks, the small ones 500: only big is starving.
        let decisions = admit(&crowded(800));
        assert!(outcome(&decisions, "acme/big").pending_reason().is_some());
        let reservation = decisions.pool("h100").unwrap().reservation.clone().unwrap();
        assert_eq!(reservation.job, "acme/big");
        assert_eq!(reservation.nodes, ["n2", "n3"]);
        // One small job still fits around the hold, on n4; the other would need n2.
        assert_eq!(placement(&decisions, "beta/small"), ["n4"]);
        assert_eq!(
            why(&decisions, "beta/small2"),
            "pool h100 is held for job acme/big, which has waited longest; 1 job ahead"
        );
    }

    #[test]
    fn a_tenant_at_its_borrowing_limit_reads_the_numbers() {
        let factory = Factory::new()
            .pool(h100())
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 32).borrowing_limit(0)))
            .run(run(
                "acme/a",
                "acme",
                8,
                &["h100-r0-n0", "h100-r0-n1", "h100-r0-n2", "h100-r0-n3"],
            ))
            .submit(job("acme/b", "acme").gpus_per_node(8));
        let decisions = admit(&factory);
        assert_eq!(
            why(&decisions, "acme/b"),
            "quota: tenant acme would use 40 of 32 guaranteed + 0 borrowable GPUs in pool h100"
        );
    }

    #[test]
    fn a_lender_keeps_what_its_lending_limit_does_not_give_away() {
        let factory = Factory::new()
            .pool(GpuPool::new("h100", "H100-80GB").racks(1, 4, 8))
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 32).lending_limit(8)))
            .tenant(Tenant::new("beta").quota(Quota::new("h100", 0)))
            .submit(job("beta/two", "beta").nodes(2).gpus_per_node(8).created(1))
            .submit(job("beta/one", "beta").gpus_per_node(8).created(2));
        let decisions = admit(&factory);
        assert_eq!(
            why(&decisions, "beta/two"),
            "quota: tenant beta would use 16 of 0 guaranteed + 8 borrowable GPUs in pool h100"
        );
        assert_eq!(
            outcome(&decisions, "beta/one")
                .admission()
                .unwrap()
                .borrowed_gpus,
            8
        );
    }

    #[test]
    fn positions_count_within_each_pool() {
        let factory = Factory::new()
            .pool(GpuPool::new("h100", "H100-80GB").racks(1, 1, 8))
            .pool(GpuPool::new("a100", "A100-40GB").racks(1, 1, 8))
            .tenant(
                Tenant::new("acme")
                    .quota(Quota::new("h100", 8))
                    .quota(Quota::new("a100", 8)),
            )
            .submit(job("acme/h1", "acme").gpus_per_node(8).created(1))
            .submit(job("acme/h2", "acme").gpus_per_node(8).created(2))
            .submit(job("acme/h3", "acme").gpus_per_node(8).created(3))
            .submit(
                QueuedJob::new("acme/a1", "acme", "a100")
                    .gpus_per_node(8)
                    .created(4),
            )
            .submit(
                QueuedJob::new("acme/a2", "acme", "a100")
                    .gpus_per_node(8)
                    .created(5),
            );
        let decisions = admit(&factory);
        let position = |job| match outcome(&decisions, job) {
            Outcome::Queued { position, .. } => *position,
            other => panic!("{other:?}"),
        };
        assert_eq!((position("acme/h2"), position("acme/h3")), (1, 2));
        assert_eq!(position("acme/a2"), 1);
    }

    #[test]
    fn a_job_id_is_decided_once_even_if_queued_twice_or_already_running() {
        let factory = Factory::new()
            .pool(h100())
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 64)))
            .run(run("acme/a", "acme", 8, &["h100-r0-n0"]))
            .submit(job("acme/a", "acme"))
            .submit(job("acme/b", "acme"))
            .submit(job("acme/b", "acme"));
        let decisions = admit(&factory);
        assert_eq!(decisions.decisions.len(), 3);
        assert_eq!(decisions.admitted().count(), 1);
        assert_eq!(
            decisions.decisions.iter().filter(|d| d.outcome.pending_reason().map(PendingReason::code) == Some("Duplicate")).count(),
            2
        );
    }

    #[test]
    fn a_gang_larger_than_the_pool_is_told_so_at_once() {
        let factory = Factory::new()
            .pool(
                GpuPool::new("h100", "H100-80GB")
                    .node(Node::new("n0", 8))
                    .node(Node::new("n1", 8).unschedulable())
                    .node(Node::new("n2", 8).unmanaged(2)),
            )
            .tenant(Tenant::new("acme").quota(Quota::new("h100", 24)))
            .submit(job("acme/big", "acme").nodes(2).gpus_per_node(8));
        let decisions = admit(&factory);
        assert_eq!(
            why(&decisions, "acme/big"),
            "too large: job needs 2 nodes with 8 GPUs; pool h100 has 1 such schedulable nodes"
        );
    }

    #[test]
    fn the_same_factory_gets_the_same_decisions() {
        let factory = crowded(800);
        assert_eq!(admit(&factory), admit(&factory));
    }
}
