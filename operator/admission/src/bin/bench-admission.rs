//! How fast is one admission pass on a factory of production size?
//!
//! Builds a synthetic factory — 1,000 nodes × 8 GPUs in 4 pools, 100 tenants,
//! 10,000 queued jobs of mixed sizes — runs a first pass on the empty factory, then
//! steady-state passes where a tenth of the running jobs finish and new jobs keep
//! the queue at 10,000, and prints a markdown table (also written to `--out FILE`).
//!
//! `cargo run --release -p aifactory-admission --bin bench-admission -- [--out FILE]
//! [--passes N] [--seed N]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use aifactory_admission::{
    Factory, GpuPool, Node, Outcome, Policy, QueuedJob, Quota, RunningJob, Tenant, admit,
};

/// Counts heap bytes in use and their peak, so a pass's memory can be told apart
/// from the factory it reads.
struct CountingAlloc;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters
// are updated on the side.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let now = IN_USE.fetch_add(new_size - layout.size(), Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Relaxed);
            } else {
                IN_USE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const POOLS: usize = 4;
const NODES_PER_POOL: usize = 250;
const GPUS_PER_NODE: u32 = 8;
const RACK: usize = 10;
const BLOCK: usize = 50;
const TENANTS: usize = 100;
const QUEUED: usize = 10_000;

fn factory(rng: &mut Rng) -> Factory {
    let regions = ["eu-west", "eu-west", "eu-central", "us-east"];
    let models = ["H100-80GB", "H100-80GB", "H200-141GB", "A100-80GB"];
    let mut factory = Factory {
        policy: Policy {
            starving_after: 1800,
            ..Policy::default()
        },
        ..Factory::default()
    };
    for p in 0..POOLS {
        let name = format!("pool{p}");
        let mut pool = GpuPool::new(&name, models[p]).region(regions[p]);
        pool.topology_levels = vec!["block".into(), "rack".into()];
        for i in 0..NODES_PER_POOL {
            let mut node = Node::new(format!("{name}-n{i:04}"), GPUS_PER_NODE)
                .domain("block", format!("b{}", i / BLOCK))
                .domain("rack", format!("r{}", i / RACK));
            node.schedulable = !rng.chance(1);
            pool = pool.node(node);
        }
        // Two pools run under a power cap of 85 % of their full draw.
        let full_kw = (NODES_PER_POOL as u32 * GPUS_PER_NODE) as f64 * 0.7;
        pool = pool.power(700.0, (p % 2 == 0).then_some(full_kw * 0.85));
        factory.pools.push(pool);
    }
    for t in 0..TENANTS {
        let mut tenant = Tenant::new(format!("tenant{t:03}"))
            .weight(1.0 + rng.below(4) as f64)
            .usage(rng.below(5_000) as f64);
        for p in 0..POOLS {
            // Guarantees add up to about 80 % of each pool.
            let mut quota = Quota::new(format!("pool{p}"), rng.below(33) as u32);
            if rng.chance(30) {
                quota.borrowing_limit = Some(rng.below(64) as u32);
            }
            if rng.chance(30) {
                quota.lending_limit = Some(rng.below(16) as u32);
            }
            tenant = tenant.quota(quota);
        }
        if rng.chance(10) {
            tenant = tenant.residency(&["eu-west", "eu-central"]);
        }
        if rng.chance(5) {
            tenant = tenant.budget_left(0.0);
        } else if rng.chance(20) {
            tenant = tenant.budget_left(rng.below(100_000) as f64);
        }
        factory.tenants.push(tenant);
    }
    factory
}

fn job(rng: &mut Rng, seq: u64, now: u64) -> QueuedJob {
    let tenant = rng.below(TENANTS as u64);
    let pool = rng.below(POOLS as u64);
    let (nodes, gpus, pack) = match rng.below(100) {
        0..20 => (1, 1, None),
        20..35 => (1, 2, None),
        35..50 => (1, 4, None),
        50..70 => (1, 8, None),
        70..82 => (2, 8, None),
        82..92 => (4, 8, rng.chance(50).then_some("rack")),
        92..97 => (8, 8, rng.chance(50).then_some("rack")),
        _ => (16, 8, Some("block")),
    };
    let priority = match rng.below(100) {
        0..70 => 0,
        70..95 => 10,
        _ => 100,
    };
    let mut job = QueuedJob::new(
        format!("tenant{tenant:03}/job{seq}"),
        format!("tenant{tenant:03}"),
        format!("pool{pool}"),
    )
    .nodes(nodes)
    .gpus_per_node(gpus)
    .priority(priority)
    .created(seq)
    .queued_since(now.saturating_sub(rng.below(3_600)));
    job.pack = pack.map(str::to_owned);
    if rng.chance(30) {
        job.estimated_gpu_hours = Some((u64::from(nodes * gpus) * (1 + rng.below(48))) as f64);
    }
    job
}

#[derive(Default)]
struct PassStats {
    time: Duration,
    admitted: usize,
    evicted: usize,
    reserved: usize,
    heap_peak: usize,
}

/// Run one pass and apply its decisions the way the controller would.
fn pass(
    factory: &mut Factory,
    admitted_seq: &mut u64,
    created: &mut HashMap<String, u64>,
) -> PassStats {
    let baseline = IN_USE.load(Relaxed);
    PEAK.store(baseline, Relaxed);
    let started = Instant::now();
    let decisions = admit(factory);
    let time = started.elapsed();
    let heap_peak = PEAK.load(Relaxed) - baseline;

    let mut stats = PassStats {
        time,
        heap_peak,
        reserved: decisions
            .pools
            .iter()
            .filter(|p| p.reservation.is_some())
            .count(),
        ..PassStats::default()
    };
    let mut started_ids = HashSet::new();
    let mut evicted_ids = HashSet::new();
    for d in &decisions.decisions {
        let (admission, evict) = match &d.outcome {
            Outcome::Admit(a) => (a, &[][..]),
            Outcome::PreemptToAdmit { evict, admission } => (admission, evict.as_slice()),
            Outcome::Queued { .. } => continue,
        };
        stats.admitted += 1;
        stats.evicted += evict.len();
        evicted_ids.extend(evict.iter().map(|e| e.job.clone()));
        started_ids.insert(d.job.clone());
        let queued = factory
            .queued
            .iter()
            .find(|q| q.id == d.job)
            .expect("decided jobs were queued");
        *admitted_seq += 1;
        created.insert(queued.id.clone(), queued.created);
        factory.running.push(RunningJob {
            id: queued.id.clone(),
            tenant: queued.tenant.clone(),
            pool: queued.pool.clone(),
            gpus_per_node: queued.gpus_per_node,
            placement: admission.placement.clone(),
            priority: queued.priority,
            admitted_at: *admitted_seq,
        });
    }
    factory.queued.retain(|q| !started_ids.contains(&q.id));
    // Evicted jobs go back to the queue, as old as they were.
    let now = factory.now;
    let mut back = Vec::new();
    factory.running.retain(|r| {
        if evicted_ids.contains(&r.id) {
            back.push(
                QueuedJob::new(&r.id, &r.tenant, &r.pool)
                    .nodes(r.placement.len() as u32)
                    .gpus_per_node(r.gpus_per_node)
                    .priority(r.priority)
                    .created(created[&r.id])
                    .queued_since(now),
            );
            false
        } else {
            true
        }
    });
    factory.queued.extend(back);
    stats
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{model}, {cpus} CPUs (nproc)")
}

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "n/a".to_owned())
}

fn main() {
    let mut out = None;
    let mut passes = 30usize;
    let mut seed = 0x5eed_u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next(),
            "--passes" => passes = args.next().and_then(|n| n.parse().ok()).unwrap_or(passes),
            "--seed" => seed = args.next().and_then(|n| n.parse().ok()).unwrap_or(seed),
            _ => {
                eprintln!("usage: bench-admission [--out FILE] [--passes N] [--seed N]");
                std::process::exit(2);
            }
        }
    }

    let mut rng = Rng(seed | 1);
    let mut factory = factory(&mut rng);
    factory.now = 10_000;
    let mut seq = 0u64;
    for _ in 0..QUEUED {
        seq += 1;
        let job = job(&mut rng, seq, factory.now);
        factory.queued.push(job);
    }
    let mut admitted_seq = 0u64;
    let mut created = HashMap::new();

    let first = pass(&mut factory, &mut admitted_seq, &mut created);
    let mut steady = Vec::with_capacity(passes);
    for _ in 0..passes {
        // A tenth of the running jobs finish; new jobs keep the queue full.
        factory.now += 60;
        factory.running.retain(|_| !rng.chance(10));
        while factory.queued.len() < QUEUED {
            seq += 1;
            let job = job(&mut rng, seq, factory.now);
            factory.queued.push(job);
        }
        steady.push(pass(&mut factory, &mut admitted_seq, &mut created));
    }

    let mut times: Vec<Duration> = steady.iter().map(|s| s.time).collect();
    times.sort();
    let median = percentile(&times, 0.5);
    let p90 = percentile(&times, 0.9);
    let mid = |f: fn(&PassStats) -> usize| {
        let mut v: Vec<usize> = steady.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let heap = steady.iter().map(|s| s.heap_peak).max().unwrap_or(0);
    let running_gpus: u64 = factory.running.iter().map(RunningJob::gpus).sum();

    let rows = [
        ("machine", machine()),
        (
            "factory",
            format!(
                "{POOLS} pools, {} nodes × {GPUS_PER_NODE} GPUs, {TENANTS} tenants, {QUEUED} queued jobs",
                POOLS * NODES_PER_POOL
            ),
        ),
        (
            "first pass (empty factory)",
            format!("{}, {} admitted", ms(first.time), first.admitted),
        ),
        (
            "steady passes",
            format!("{passes}, each after 10 % of running jobs finish and the queue is refilled"),
        ),
        ("pass time, median", ms(median)),
        ("pass time, p90", ms(p90)),
        (
            "decisions per second (median pass)",
            format!("{:.0}", QUEUED as f64 / median.as_secs_f64()),
        ),
        (
            "per pass (median): admitted / evicted / pools held",
            format!(
                "{} / {} / {}",
                mid(|s| s.admitted),
                mid(|s| s.evicted),
                mid(|s| s.reserved)
            ),
        ),
        (
            "GPUs in use after the last pass",
            format!(
                "{running_gpus} of {}",
                POOLS * NODES_PER_POOL * GPUS_PER_NODE as usize
            ),
        ),
        ("peak heap of one pass (above its input)", mib(heap)),
        ("peak resident memory of the process (VmHWM)", vm_hwm()),
    ];
    let mut table = String::from("| measure | value |\n| --- | --- |\n");
    for (k, v) in rows {
        table.push_str(&format!("| {k} | {v} |\n"));
    }
    print!("{table}");
    if let Some(path) = out
        && let Err(e) = std::fs::write(&path, &table)
    {
        eprintln!("cannot write {path}: {e}");
        std::process::exit(1);
    }
}
