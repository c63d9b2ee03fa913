//! The simulation: simulated time, discrete events, the real admission engine.
//!
//! Events are submissions and completions (and period boundaries, when budgets
//! reset). Passes run on a fixed tick — the first tick at or after the earliest
//! pending event, and only if something changed since the last pass (a job was
//! submitted, finished or evicted, or a budget period began): with nothing changed,
//! a pass could only repeat the last one's refusals. `--tick 0` runs a pass at the
//! exact time of every event instead.
//!
//! The pools with their nodes are handed once to an `admission::Engine`, which keeps
//! their layout between passes. At each pass the simulator hands it the rest of the
//! factory — every running job with its placement, every queued job, and each
//! tenant's GPU-hours so far this period (for fair share) and budget left — and
//! decides exactly as `admit` would on the whole factory; it then applies the
//! decisions in order, as the controller does: evicted jobs lose their run (they
//! restart from scratch, the GPU-hours are counted as lost) and go back to the
//! queue; admitted jobs start on their placement and finish `duration` later. After
//! every admission it checks that no node holds more GPUs than it has and no pool
//! draws more than its power cap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use aifactory_admission::{self as adm, Outcome, PendingReason};
use anyhow::Result;

use crate::factory::{SimFactory, level_short_name};
use crate::report::{self, Checks, Fairness, Jobs, Performance, PoolReport, Report, TenantReport};
use crate::trace::{Priority, Row};

/// How the simulation runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds between admission passes; 0 = a pass at every event's time.
    pub tick: u64,
    /// Seconds a job waits before it is *starving* (see the engine's `Policy`).
    pub starving_after: u64,
    /// GPU-hours charged per admitted GPU within one pass (the engine's `Policy`).
    pub pass_charge_hours: f64,
    /// Budget and fair-share period, seconds (usage and budgets reset at each
    /// boundary); `None` = one period for the whole run.
    pub period: Option<u64>,
    /// Stop at this time (seconds); running jobs count up to it.
    pub until: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tick: 60,
            starving_after: adm::Policy::default().starving_after,
            pass_charge_hours: adm::Policy::default().pass_charge_hours,
            period: Some(30 * 86_400),
            until: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotYetSubmitted,
    Queued,
    Running,
    Done,
    Refused,
}

#[derive(Debug)]
struct Job {
    submit: u64,
    duration: u64,
    tenant: u32,
    pool: u32,
    nodes: u32,
    gpus_per_node: u32,
    priority: i32,
    pack: Option<String>,
    state: State,
    first_admit: Option<u64>,
    start: u64,
    /// Bumped at every start, so a completion of an evicted run is ignored.
    run: u32,
    /// Index in the running list while running.
    slot: usize,
    /// Nodes (pool-local) while running.
    placed: Vec<u32>,
    preemptions: u32,
    /// Code of the last pending reason (or refusal).
    reason: &'static str,
    /// Set when refused before the simulation (unknown tenant or pool).
    early_refusal: bool,
}

impl Job {
    fn gpus(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }
}

#[derive(Debug, Default, Clone)]
struct TenantAcc {
    running_gpus: u64,
    /// GPU-seconds used this period (running jobs included up to the clock).
    period_gpu_seconds: u64,
    /// GPU-seconds over the run, counted when a run ends (or at the end).
    gpu_seconds: u64,
    lost_gpu_seconds: u64,
    preemptions: u64,
}

#[derive(Debug, Default, Clone)]
struct PoolAcc {
    allocated: u64,
    peak: u64,
    gpu_seconds: u64,
}

/// Reasons a queued job can never get past in this simulation (nothing in it
/// changes tenants, pools or the job's shape): the job is dropped.
fn is_permanent(reason: &PendingReason) -> bool {
    matches!(
        reason,
        PendingReason::UnknownTenant { .. }
            | PendingReason::UnknownPool { .. }
            | PendingReason::InvalidShape { .. }
            | PendingReason::Duplicate { .. }
            | PendingReason::UnknownTopologyLevel { .. }
            | PendingReason::PriorityNotAllowed { .. }
            | PendingReason::Residency { .. }
            | PendingReason::NoQuota { .. }
            | PendingReason::TooLarge { .. }
    )
}

/// The simulator's state.
pub struct Simulation {
    opts: Options,
    /// Everything the engine sees but the pools, which the engine owns.
    factory: adm::Factory,
    /// Owns the pools and keeps what they determine from pass to pass.
    engine: adm::Engine,
    budgets: Vec<Option<f64>>,
    jobs: Vec<Job>,
    /// Parallel to `factory.running` / `factory.queued`: the job index.
    running_ids: Vec<usize>,
    queued_ids: Vec<usize>,
    node_ids: HashMap<String, (u32, u32)>,
    node_used: Vec<Vec<u32>>,
    tenants: Vec<TenantAcc>,
    pools: Vec<PoolAcc>,
    completions: BinaryHeap<Reverse<(u64, u32, u32)>>,
    clock: u64,
    next_submit: usize,
    admitted_seq: u64,
    checks: Checks,
    events: u64,
    peak_queue: u64,
    admit_time: f64,
    last_completion: u64,
    preemptions: u64,
    log: Option<Box<dyn std::io::Write>>,
}

/// Parse a trace priority against the factory's PriorityClasses.
fn priority(f: &SimFactory, p: &Option<Priority>, row: usize) -> Result<i32> {
    Ok(match p {
        None => f.default_priority,
        Some(Priority::Value(v)) => i32::try_from(*v)
            .map_err(|_| anyhow::anyhow!("row {row}: priority {v} is not a 32-bit integer"))?,
        Some(Priority::Class(name)) => *f.priority_classes.get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "row {row}: priority {name:?} is neither an integer nor a PriorityClass of the factory"
            )
        })?,
    })
}

impl Simulation {
    /// Set up the factory and the jobs of the trace (sorted by submission time).
    pub fn new(f: &SimFactory, rows: &[Row], opts: Options) -> Result<Self> {
        let mut factory = f.factory.clone();
        factory.policy = adm::Policy {
            starving_after: opts.starving_after,
            pass_charge_hours: opts.pass_charge_hours,
        };
        let tenant_ids: HashMap<&str, u32> = factory
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i as u32))
            .collect();
        let pool_ids: HashMap<&str, u32> = factory
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i as u32))
            .collect();

        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by(|&a, &b| rows[a].submit.total_cmp(&rows[b].submit).then(a.cmp(&b)));
        let mut jobs = Vec::with_capacity(rows.len());
        for &i in &order {
            let row = &rows[i];
            let tenant = tenant_ids.get(row.tenant.as_str()).copied();
            let pool = pool_ids.get(row.pool.as_str()).copied();
            let pack = row.pack.as_ref().filter(|p| !p.is_empty()).map(|p| {
                pool.and_then(|pool| {
                    factory.pools[pool as usize]
                        .topology_levels
                        .iter()
                        .find(|l| level_short_name(l) == p.as_str() || l.as_str() == p)
                        .cloned()
                })
                .unwrap_or_else(|| p.clone())
            });
            let early = match (tenant, pool) {
                (None, _) => Some("UnknownTenant"),
                (_, None) => Some("UnknownPool"),
                _ => None,
            };
            jobs.push(Job {
                submit: row.submit.floor() as u64,
                duration: (row.duration.ceil() as u64).max(1),
                tenant: tenant.unwrap_or(u32::MAX),
                pool: pool.unwrap_or(u32::MAX),
                nodes: row.nodes,
                gpus_per_node: row.gpus_per_node,
                priority: priority(f, &row.priority, i + 1)?,
                pack,
                state: State::NotYetSubmitted,
                first_admit: None,
                start: 0,
                run: 0,
                slot: 0,
                placed: Vec::new(),
                preemptions: 0,
                reason: early.unwrap_or(""),
                early_refusal: early.is_some(),
            });
        }

        let mut node_ids = HashMap::new();
        let mut node_used = Vec::new();
        for (p, pool) in factory.pools.iter().enumerate() {
            for (n, node) in pool.nodes.iter().enumerate() {
                node_ids.insert(node.name.clone(), (p as u32, n as u32));
            }
            node_used.push(vec![0; pool.nodes.len()]);
        }
        let tenants = vec![TenantAcc::default(); factory.tenants.len()];
        let pools = vec![PoolAcc::default(); factory.pools.len()];
        let clock = jobs.first().map_or(0, |j| j.submit);
        let engine = adm::Engine::new(std::mem::take(&mut factory.pools));
        Ok(Self {
            opts,
            factory,
            engine,
            budgets: f.budgets.clone(),
            jobs,
            running_ids: Vec::new(),
            queued_ids: Vec::new(),
            node_ids,
            node_used,
            tenants,
            pools,
            completions: BinaryHeap::new(),
            clock,
            next_submit: 0,
            admitted_seq: 0,
            checks: Checks::default(),
            events: 0,
            peak_queue: 0,
            admit_time: 0.0,
            last_completion: clock,
            preemptions: 0,
            log: None,
        })
    }

    /// Write every event as a CSV line (time, event, job, tenant, pool, gpus,
    /// detail) — why a job waited, whom it evicted, where it ran.
    pub fn log_to(mut self, mut out: Box<dyn std::io::Write>) -> Result<Self> {
        writeln!(out, "time,event,job,tenant,pool,gpus,detail")?;
        self.log = Some(out);
        Ok(self)
    }

    fn log(&mut self, event: &str, j: usize, detail: impl FnOnce() -> String) {
        if self.log.is_none() {
            return;
        }
        let job = &self.jobs[j];
        let tenant = self
            .factory
            .tenants
            .get(job.tenant as usize)
            .map_or("?", |t| t.name.as_str());
        let pool = self
            .engine
            .pools()
            .get(job.pool as usize)
            .map_or("?", |p| p.name.as_str());
        let line = format!(
            "{},{event},{tenant}/{j},{tenant},{pool},{},\"{}\"\n",
            self.clock,
            job.gpus(),
            detail().replace('"', "'")
        );
        if let Some(out) = &mut self.log
            && out.write_all(line.as_bytes()).is_err()
        {
            self.log = None;
        }
    }

    fn job_id(&self, j: usize) -> String {
        format!(
            "{}/{j}",
            self.factory.tenants[self.jobs[j].tenant as usize].name
        )
    }

    fn job_index(id: &str) -> usize {
        id.rsplit_once('/')
            .and_then(|(_, n)| n.parse().ok())
            .expect("the simulator names jobs <tenant>/<index>")
    }

    /// Move the clock to `t`, charging running GPUs to their tenants' period usage
    /// and resetting usage at period boundaries.
    fn advance_to(&mut self, t: u64) -> bool {
        let mut reset = false;
        while self.clock < t {
            let step_end = match self.opts.period {
                Some(p) if p > 0 => t.min((self.clock / p + 1) * p),
                _ => t,
            };
            let dt = step_end - self.clock;
            for acc in &mut self.tenants {
                acc.period_gpu_seconds += acc.running_gpus * dt;
            }
            self.clock = step_end;
            if let Some(p) = self.opts.period
                && p > 0
                && self.clock.is_multiple_of(p)
            {
                for acc in &mut self.tenants {
                    acc.period_gpu_seconds = 0;
                }
                reset = true;
            }
        }
        reset
    }

    fn enqueue(&mut self, j: usize, since: u64) {
        let job = &self.jobs[j];
        let mut q = adm::QueuedJob::new(
            self.job_id(j),
            self.factory.tenants[job.tenant as usize].name.clone(),
            self.engine.pools()[job.pool as usize].name.clone(),
        )
        .nodes(job.nodes)
        .gpus_per_node(job.gpus_per_node)
        .priority(job.priority)
        .created(j as u64)
        .queued_since(since);
        q.pack = job.pack.clone();
        self.factory.queued.push(q);
        self.queued_ids.push(j);
        self.jobs[j].state = State::Queued;
    }

    /// Take a job off the running list, giving back its GPUs; returns GPU-seconds used.
    fn stop(&mut self, j: usize) -> u64 {
        let slot = self.jobs[j].slot;
        self.factory.running.swap_remove(slot);
        self.running_ids.swap_remove(slot);
        if let Some(&moved) = self.running_ids.get(slot) {
            self.jobs[moved].slot = slot;
        }
        let job = &mut self.jobs[j];
        let (p, gpn, gpus) = (job.pool as usize, job.gpus_per_node, job.gpus());
        for &n in &job.placed {
            self.node_used[p][n as usize] -= gpn;
        }
        job.placed.clear();
        let used = gpus * (self.clock - job.start);
        self.pools[p].allocated -= gpus;
        self.pools[p].gpu_seconds += used;
        let acc = &mut self.tenants[job.tenant as usize];
        acc.running_gpus -= gpus;
        acc.gpu_seconds += used;
        used
    }

    fn complete(&mut self, j: usize) {
        self.stop(j);
        self.log("complete", j, String::new);
        self.jobs[j].state = State::Done;
        self.last_completion = self.clock;
        self.events += 1;
    }

    fn evict(&mut self, j: usize) {
        if self.jobs[j].state != State::Running {
            self.checks.double_admissions += 1;
            return;
        }
        let lost = self.stop(j);
        self.log("preempted", j, || {
            format!("{} GPU-hours lost", lost as f64 / 3600.0)
        });
        let job = &mut self.jobs[j];
        job.preemptions += 1;
        let acc = &mut self.tenants[job.tenant as usize];
        acc.lost_gpu_seconds += lost;
        acc.preemptions += 1;
        self.preemptions += 1;
        self.events += 1;
        // Back to the queue, waiting from now (its pods are gone at once here).
        self.enqueue(j, self.clock);
    }

    fn start(&mut self, j: usize, placement: &[String]) {
        if self.jobs[j].state != State::Queued {
            self.checks.double_admissions += 1;
            return;
        }
        let now = self.clock;
        let pool = self.jobs[j].pool as usize;
        let gpn = self.jobs[j].gpus_per_node;
        let mut placed = Vec::with_capacity(placement.len());
        for name in placement {
            let &(p, n) = self
                .node_ids
                .get(name)
                .expect("the engine places pods on the pool's nodes");
            debug_assert_eq!(p as usize, pool);
            let used = &mut self.node_used[p as usize][n as usize];
            *used += gpn;
            if *used > self.engine.pools()[pool].nodes[n as usize].gpus {
                self.checks.capacity_violations += 1;
            }
            placed.push(n);
        }
        if placed.len() != self.jobs[j].nodes as usize {
            self.checks.capacity_violations += 1;
        }
        let gpus = self.jobs[j].gpus();
        let acc = &mut self.pools[pool];
        acc.allocated += gpus;
        acc.peak = acc.peak.max(acc.allocated);
        let spec = &self.engine.pools()[pool];
        if let Some(cap) = spec.power_cap_kilowatts
            && acc.allocated as f64 * spec.power_watts > cap * 1000.0 + 1e-6
        {
            self.checks.power_cap_violations += 1;
        }
        self.tenants[self.jobs[j].tenant as usize].running_gpus += gpus;

        self.admitted_seq += 1;
        let job = &mut self.jobs[j];
        job.state = State::Running;
        job.first_admit.get_or_insert(now);
        job.start = now;
        job.run += 1;
        job.slot = self.factory.running.len();
        job.placed = placed;
        self.completions
            .push(Reverse((now + job.duration, j as u32, job.run)));
        self.factory.running.push(adm::RunningJob {
            id: format!("{}/{j}", self.factory.tenants[job.tenant as usize].name),
            tenant: self.factory.tenants[job.tenant as usize].name.clone(),
            pool: spec.name.clone(),
            gpus_per_node: gpn,
            placement: placement.to_vec(),
            priority: job.priority,
            admitted_at: self.admitted_seq,
        });
        self.running_ids.push(j);
        self.log("admit", j, || placement.join(" "));
    }

    /// One admission pass at the clock; returns (admitted, evicted).
    fn pass(&mut self) -> (u64, u64) {
        self.factory.now = self.clock;
        for (i, t) in self.factory.tenants.iter_mut().enumerate() {
            let used = self.tenants[i].period_gpu_seconds as f64 / 3600.0;
            t.usage_gpu_hours = used;
            t.budget_gpu_hours_left = self.budgets[i].map(|b| b - used);
        }
        self.peak_queue = self.peak_queue.max(self.factory.queued.len() as u64);
        let started = Instant::now();
        let decisions = self.engine.admit(&self.factory);
        self.admit_time += started.elapsed().as_secs_f64();
        self.checks.passes += 1;

        let (mut admitted, mut evicted) = (0, 0);
        let mut dropped = false;
        for d in &decisions.decisions {
            let j = Self::job_index(&d.job);
            match &d.outcome {
                Outcome::Admit(a) => {
                    self.start(j, &a.placement);
                    admitted += 1;
                }
                Outcome::PreemptToAdmit { evict, admission } => {
                    for e in evict {
                        self.evict(Self::job_index(&e.job));
                        evicted += 1;
                    }
                    self.start(j, &admission.placement);
                    admitted += 1;
                }
                Outcome::Queued { reason, .. } => {
                    let job = &mut self.jobs[j];
                    let changed = job.reason != reason.code();
                    job.reason = reason.code();
                    if is_permanent(reason) && job.state == State::Queued {
                        job.state = State::Refused;
                        dropped = true;
                        self.log("refused", j, || reason.to_string());
                    } else if changed {
                        self.log("waiting", j, || reason.to_string());
                    }
                }
            }
        }
        // Keep only what still waits: started and refused jobs leave the queue
        // (jobs evicted in this pass were appended and are queued).
        if admitted > 0 || dropped {
            let jobs = &self.jobs;
            let mut keep = self
                .queued_ids
                .iter()
                .map(|&j| jobs[j].state == State::Queued);
            self.factory.queued.retain(|_| keep.next().unwrap_or(true));
            self.queued_ids.retain(|&j| jobs[j].state == State::Queued);
        }
        (admitted, evicted)
    }

    /// Run to the end of the trace (or the horizon) and report.
    pub fn run(mut self) -> Report {
        let wall = Instant::now();
        let tick = self.opts.tick;
        let until = self.opts.until.unwrap_or(u64::MAX);
        let mut dirty = false;
        let mut forced: Option<u64> = None;
        let mut idle_jump_pending = false;
        loop {
            let next_submit = self.jobs.get(self.next_submit).map(|j| j.submit);
            let next_done = self.completions.peek().map(|Reverse((t, _, _))| *t);
            let mut next = [next_submit, next_done, forced].into_iter().flatten().min();
            if next.is_none() && !self.factory.queued.is_empty() && !idle_jump_pending {
                // Nothing runs and nothing comes: only a new budget period can
                // change anything, and only for jobs waiting on their budget.
                let waits_for_budget = self
                    .queued_ids
                    .iter()
                    .any(|&j| matches!(self.jobs[j].reason, "BudgetExhausted" | "OverBudget"));
                if let (Some(p), true) = (self.opts.period, waits_for_budget)
                    && p > 0
                {
                    next = Some((self.clock / p + 1) * p);
                    idle_jump_pending = true;
                }
            }
            let Some(next) = next else { break };
            let mut at = if tick == 0 {
                next
            } else {
                next.div_ceil(tick) * tick
            }
            .max(self.clock);
            let last = at >= until;
            if last {
                // Count what ends by the horizon; nothing starts at it.
                at = until.max(self.clock);
            }
            forced = None;
            // Completions, in time order, up to the pass.
            while let Some(&Reverse((t, j, run))) = self.completions.peek() {
                if t > at {
                    break;
                }
                self.completions.pop();
                let j = j as usize;
                if self.jobs[j].state == State::Running && self.jobs[j].run == run {
                    self.advance_to(t);
                    self.complete(j);
                    dirty = true;
                }
            }
            dirty |= self.advance_to(at);
            while self.next_submit < self.jobs.len() && self.jobs[self.next_submit].submit <= at {
                let j = self.next_submit;
                self.next_submit += 1;
                self.events += 1;
                if self.jobs[j].early_refusal {
                    self.jobs[j].state = State::Refused;
                    let reason = self.jobs[j].reason;
                    self.log("refused", j, || reason.to_owned());
                    continue;
                }
                let since = self.jobs[j].submit;
                self.enqueue(j, since);
                self.log("submit", j, String::new);
                dirty = true;
            }
            if last {
                break;
            }
            if dirty && !self.factory.queued.is_empty() {
                let (admitted, evicted) = self.pass();
                if admitted > 0 {
                    idle_jump_pending = false;
                }
                dirty = evicted > 0;
                if evicted > 0 {
                    // The evicted jobs are back in the queue: look again next tick.
                    forced = Some(at + tick.max(1));
                }
            } else {
                dirty = false;
            }
        }
        self.finish(wall)
    }

    fn finish(mut self, wall: Instant) -> Report {
        if let Some(out) = &mut self.log {
            let _ = out.flush();
        }
        let ended_by_horizon = self.opts.until.is_some()
            && (!self.running_ids.is_empty() || self.next_submit < self.jobs.len());
        let end = match self.opts.until {
            Some(u) if ended_by_horizon => {
                self.advance_to(u);
                u
            }
            _ => self.last_completion,
        };
        // Running jobs (only with a horizon) count up to the end.
        let mut running_at_end = 0;
        for &j in &self.running_ids {
            let job = &self.jobs[j];
            let used = job.gpus() * end.saturating_sub(job.start);
            self.pools[job.pool as usize].gpu_seconds += used;
            self.tenants[job.tenant as usize].gpu_seconds += used;
            running_at_end += 1;
        }
        let wall_seconds = wall.elapsed().as_secs_f64();
        let start = self.jobs.first().map_or(0, |j| j.submit);
        let makespan = end.saturating_sub(start);

        let mut jobs = Jobs {
            submitted: self.jobs.len() as u64,
            running_at_end,
            ..Jobs::default()
        };
        let mut waits: Vec<Vec<u64>> = vec![Vec::new(); self.factory.tenants.len()];
        let mut submitted = vec![0u64; self.factory.tenants.len()];
        let mut completed = vec![0u64; self.factory.tenants.len()];
        for job in &self.jobs {
            match job.state {
                State::Done => jobs.completed += 1,
                State::Refused => *jobs.refused.entry(job.reason.to_owned()).or_default() += 1,
                State::Queued => {
                    let reason = if job.reason.is_empty() {
                        "NotConsidered"
                    } else {
                        job.reason
                    };
                    *jobs.queued_at_end.entry(reason.to_owned()).or_default() += 1;
                }
                State::NotYetSubmitted => {
                    *jobs
                        .queued_at_end
                        .entry("AfterHorizon".to_owned())
                        .or_default() += 1;
                }
                State::Running => {}
            }
            if job.state == State::Refused || job.tenant == u32::MAX {
                continue;
            }
            let t = job.tenant as usize;
            submitted[t] += 1;
            if job.state == State::Done {
                completed[t] += 1;
            }
            if let Some(a) = job.first_admit {
                waits[t].push(a - job.submit);
            }
        }

        let mut shares = Vec::new();
        let tenants: Vec<TenantReport> = self
            .factory
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let w = &mut waits[i];
                w.sort_unstable();
                let acc = &self.tenants[i];
                let gpu_hours = acc.gpu_seconds as f64 / 3600.0;
                let weighted_share = gpu_hours / t.weight;
                if submitted[i] > 0 {
                    shares.push(weighted_share);
                }
                TenantReport {
                    tenant: t.name.clone(),
                    weight: t.weight,
                    jobs_submitted: submitted[i],
                    jobs_completed: completed[i],
                    jobs_started: w.len() as u64,
                    wait_p50_seconds: report::percentile(w, 50.0),
                    wait_p95_seconds: report::percentile(w, 95.0),
                    wait_max_seconds: w.last().copied(),
                    gpu_hours,
                    lost_gpu_hours: acc.lost_gpu_seconds as f64 / 3600.0,
                    preemptions_suffered: acc.preemptions,
                    weighted_share,
                }
            })
            .collect();

        let pools: Vec<PoolReport> = self
            .engine
            .pools()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let gpus: u64 = p.nodes.iter().map(|n| u64::from(n.gpus)).sum();
                let acc = &self.pools[i];
                let hours = acc.gpu_seconds as f64 / 3600.0;
                PoolReport {
                    pool: p.name.clone(),
                    nodes: p.nodes.len() as u64,
                    gpus,
                    allocated_gpu_hours: hours,
                    capacity_gpu_hours: gpus as f64 * makespan as f64 / 3600.0,
                    utilisation: report::utilisation(acc.gpu_seconds as f64, gpus, makespan),
                    peak_allocated_gpus: acc.peak,
                    energy_kwh: hours * p.power_watts / 1000.0,
                    power_cap_kilowatts: p.power_cap_kilowatts,
                    peak_power_kilowatts: acc.peak as f64 * p.power_watts / 1000.0,
                }
            })
            .collect();

        let events = self.events;
        let n_jobs = self.jobs.len() as f64;
        Report {
            start_seconds: start,
            end_seconds: end,
            makespan_seconds: makespan,
            jobs,
            energy_kwh: pools.iter().map(|p| p.energy_kwh).sum(),
            pools,
            fairness: Fairness {
                jain_index: report::jain(&shares),
                tenants_with_demand: shares.len() as u64,
            },
            lost_gpu_hours: tenants.iter().map(|t| t.lost_gpu_hours).sum(),
            tenants,
            preemptions: self.preemptions,
            checks: self.checks,
            performance: Performance {
                wall_seconds,
                admit_seconds: self.admit_time,
                load_seconds: 0.0,
                events,
                events_per_second: events as f64 / wall_seconds.max(1e-9),
                jobs_per_second: n_jobs / wall_seconds.max(1e-9),
                peak_queue: self.peak_queue,
                peak_rss_kib: None,
                machine: report::machine(),
                release_build: !cfg!(debug_assertions),
            },
        }
    }
}
