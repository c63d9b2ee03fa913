//! What a simulation found, the math behind it, and its two renderings: markdown
//! tables for people and JSON (camelCase) for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Everything the simulation measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// First submission, seconds.
    pub start_seconds: u64,
    /// Last completion (or the horizon), seconds.
    pub end_seconds: u64,
    /// `end − start`.
    pub makespan_seconds: u64,
    /// Job counts.
    pub jobs: Jobs,
    /// Per pool.
    pub pools: Vec<PoolReport>,
    /// Per tenant.
    pub tenants: Vec<TenantReport>,
    /// Jain's fairness index over weighted shares.
    pub fairness: Fairness,
    /// Evictions over the whole run.
    pub preemptions: u64,
    /// GPU-hours of runs cut short by preemption (they restart from scratch).
    pub lost_gpu_hours: f64,
    /// Energy of all allocated GPUs (at the pools' per-GPU watts).
    #[serde(rename = "energyKWh")]
    pub energy_kwh: f64,
    /// Invariants checked at every pass.
    pub checks: Checks,
    /// How fast the simulation ran.
    pub performance: Performance,
}

/// Job counts.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Jobs {
    /// Rows of the trace.
    pub submitted: u64,
    /// Jobs that ran to their end.
    pub completed: u64,
    /// Jobs still running at the end (only with a horizon).
    pub running_at_end: u64,
    /// Jobs still queued at the end, by their last pending reason.
    pub queued_at_end: BTreeMap<String, u64>,
    /// Jobs dropped because they can never start (unknown tenant or pool, no quota,
    /// residency, priority not allowed, too large…), by reason.
    pub refused: BTreeMap<String, u64>,
}

/// One pool over the run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolReport {
    /// The pool.
    pub pool: String,
    /// Nodes.
    pub nodes: u64,
    /// GPUs.
    pub gpus: u64,
    /// GPU-hours allocated to jobs (including runs later preempted).
    pub allocated_gpu_hours: f64,
    /// GPUs × makespan.
    pub capacity_gpu_hours: f64,
    /// allocated ÷ capacity, 0..1.
    pub utilisation: f64,
    /// Most GPUs allocated at once.
    pub peak_allocated_gpus: u64,
    /// Energy of the allocated GPU-hours.
    #[serde(rename = "energyKWh")]
    pub energy_kwh: f64,
    /// The pool's power cap, if any.
    pub power_cap_kilowatts: Option<f64>,
    /// Highest estimated draw (allocated GPUs × watts).
    pub peak_power_kilowatts: f64,
}

/// One tenant over the run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantReport {
    /// The tenant.
    pub tenant: String,
    /// Fair-share weight.
    pub weight: f64,
    /// Jobs in the trace.
    pub jobs_submitted: u64,
    /// Jobs that ran to their end.
    pub jobs_completed: u64,
    /// Jobs admitted at least once.
    pub jobs_started: u64,
    /// Wait from submission to first admission, median, seconds (`None`: none started).
    pub wait_p50_seconds: Option<u64>,
    /// 95th percentile of the wait, seconds.
    pub wait_p95_seconds: Option<u64>,
    /// Longest wait, seconds.
    pub wait_max_seconds: Option<u64>,
    /// GPU-hours used, including runs later preempted.
    pub gpu_hours: f64,
    /// GPU-hours lost to preemption.
    pub lost_gpu_hours: f64,
    /// Times its jobs were evicted.
    pub preemptions_suffered: u64,
    /// GPU-hours ÷ weight: what Jain's index compares.
    pub weighted_share: f64,
}

/// Fairness across tenants.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fairness {
    /// Jain's index, (Σx)² ÷ (n·Σx²), over x = GPU-hours ÷ weight of each tenant that
    /// submitted work: 1 = shares exactly proportional to weights, 1/n = one
    /// tenant got everything. `None` without any tenant with demand.
    pub jain_index: Option<f64>,
    /// n: tenants that submitted at least one job.
    pub tenants_with_demand: u64,
}

/// Invariants the simulator checks at every pass (it fails if any is broken).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checks {
    /// Admission passes run.
    pub passes: u64,
    /// Times a node would have held more GPUs than it has.
    pub capacity_violations: u64,
    /// Times a pool would have drawn more than its power cap.
    pub power_cap_violations: u64,
    /// Times a job was admitted that was not queued, or twice.
    pub double_admissions: u64,
}

impl Checks {
    /// No invariant was broken.
    pub fn ok(&self) -> bool {
        self.capacity_violations == 0
            && self.power_cap_violations == 0
            && self.double_admissions == 0
    }
}

/// How fast the simulation ran.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Performance {
    /// Wall time of the simulation loop (not reading the files), seconds.
    pub wall_seconds: f64,
    /// Of which inside the admission engine.
    pub admit_seconds: f64,
    /// Seconds reading the factory and the trace.
    pub load_seconds: f64,
    /// Submissions + completions + evictions.
    pub events: u64,
    /// events ÷ wall time.
    pub events_per_second: f64,
    /// Jobs in the trace ÷ wall time.
    pub jobs_per_second: f64,
    /// Most queued jobs one pass saw.
    pub peak_queue: u64,
    /// Peak resident memory of the process (VmHWM), KiB.
    pub peak_rss_kib: Option<u64>,
    /// CPU model and count.
    pub machine: String,
    /// Whether this was an optimised build.
    pub release_build: bool,
}

/// Jain's fairness index of `xs`: (Σx)² ÷ (n·Σx²), in [1/n, 1]. All zeros count as
/// perfectly even (1); an empty slice has no index.
pub fn jain(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return Some(1.0);
    }
    Some(sum * sum / (xs.len() as f64 * squares))
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p`
/// percent of the values at or below it. `None` for no values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Allocated GPU-seconds ÷ (GPUs × makespan), 0 when there is no capacity or time.
pub fn utilisation(allocated_gpu_seconds: f64, gpus: u64, makespan_seconds: u64) -> f64 {
    let capacity = gpus as f64 * makespan_seconds as f64;
    if capacity > 0.0 {
        allocated_gpu_seconds / capacity
    } else {
        0.0
    }
}

/// A duration for people: `45 s`, `12.5 min`, `3.2 h`, `4.1 d`.
pub fn human_seconds(s: u64) -> String {
    let f = s as f64;
    if s < 120 {
        format!("{s} s")
    } else if s < 2 * 3600 {
        format!("{:.1} min", f / 60.0)
    } else if s < 2 * 86_400 {
        format!("{:.1} h", f / 3600.0)
    } else {
        format!("{:.1} d", f / 86_400.0)
    }
}

fn opt_seconds(s: Option<u64>) -> String {
    s.map_or_else(|| "–".to_owned(), human_seconds)
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        // Thousands separated by thin spaces are hard to type; keep commas.
        let whole = x.round() as u64;
        let digits = whole.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{x:.1}")
    }
}

impl Report {
    /// The report as markdown tables.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## Simulation report\n");
        let _ = writeln!(s, "| measure | value |\n| --- | --- |");
        let _ = writeln!(
            s,
            "| makespan | {} ({} s → {} s) |",
            human_seconds(self.makespan_seconds),
            self.start_seconds,
            self.end_seconds
        );
        let j = &self.jobs;
        let _ = writeln!(
            s,
            "| jobs | {} submitted, {} completed, {} running at end, {} queued at end, {} refused |",
            j.submitted,
            j.completed,
            j.running_at_end,
            j.queued_at_end.values().sum::<u64>(),
            j.refused.values().sum::<u64>()
        );
        for (what, map) in [("queued at end", &j.queued_at_end), ("refused", &j.refused)] {
            if !map.is_empty() {
                let list: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(s, "| {what}, by reason | {} |", list.join(", "));
            }
        }
        let _ = writeln!(
            s,
            "| fairness (Jain's index over GPU-hours ÷ weight, {} tenants with demand) | {} |",
            self.fairness.tenants_with_demand,
            self.fairness
                .jain_index
                .map_or_else(|| "–".to_owned(), |j| format!("{j:.3}"))
        );
        let _ = writeln!(
            s,
            "| preemptions | {} ({} GPU-hours lost) |",
            self.preemptions,
            num(self.lost_gpu_hours)
        );
        let _ = writeln!(s, "| energy | {} kWh |", num(self.energy_kwh));
        let c = &self.checks;
        let _ = writeln!(
            s,
            "| invariants ({} passes) | {} |",
            c.passes,
            if c.ok() {
                "held: no node over capacity, no pool over its power cap, no job admitted twice"
                    .to_owned()
            } else {
                format!(
                    "BROKEN: {} capacity, {} power cap, {} double admissions",
                    c.capacity_violations, c.power_cap_violations, c.double_admissions
                )
            }
        );

        let _ = writeln!(s, "\n### Pools\n");
        let _ = writeln!(
            s,
            "| pool | nodes | GPUs | allocated GPU-h | utilisation | peak GPUs | peak kW (cap) | energy kWh |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for p in &self.pools {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} % | {} | {:.1} ({}) | {} |",
                p.pool,
                p.nodes,
                p.gpus,
                num(p.allocated_gpu_hours),
                p.utilisation * 100.0,
                p.peak_allocated_gpus,
                p.peak_power_kilowatts,
                p.power_cap_kilowatts
                    .map_or_else(|| "none".to_owned(), |c| format!("{c}")),
                num(p.energy_kwh)
            );
        }

        let _ = writeln!(s, "\n### Tenants\n");
        let _ = writeln!(
            s,
            "| tenant | weight | jobs | completed | wait p50 | wait p95 | wait max | GPU-h | GPU-h ÷ weight | preempted | GPU-h lost |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for t in &self.tenants {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                t.tenant,
                t.weight,
                t.jobs_submitted,
                t.jobs_completed,
                opt_seconds(t.wait_p50_seconds),
                opt_seconds(t.wait_p95_seconds),
                opt_seconds(t.wait_max_seconds),
                num(t.gpu_hours),
                num(t.weighted_share),
                t.preemptions_suffered,
                num(t.lost_gpu_hours)
            );
        }

        let p = &self.performance;
        let _ = writeln!(s, "\n### Simulation\n");
        let _ = writeln!(s, "| measure | value |\n| --- | --- |");
        let _ = writeln!(
            s,
            "| wall time | {:.2} s ({:.2} s in admission passes; {:.2} s reading input) |",
            p.wall_seconds, p.admit_seconds, p.load_seconds
        );
        let _ = writeln!(
            s,
            "| events (submissions, completions, evictions) | {} ({} / s) |",
            p.events,
            num(p.events_per_second)
        );
        let _ = writeln!(s, "| jobs per second | {} |", num(p.jobs_per_second));
        let _ = writeln!(s, "| longest queue one pass saw | {} |", p.peak_queue);
        let _ = writeln!(
            s,
            "| peak RSS (VmHWM) | {} |",
            p.peak_rss_kib.map_or_else(
                || "n/a".to_owned(),
                |k| format!("{:.1} MiB", k as f64 / 1024.0)
            )
        );
        let _ = writeln!(
            s,
            "| machine | {}{} |",
            p.machine,
            if p.release_build {
                ""
            } else {
                " (debug build: timings are not representative)"
            }
        );
        s
    }
}

/// Peak resident memory of this process, KiB (Linux `VmHWM`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// CPU model and count, e.g. `AMD EPYC, 2 CPUs (nproc)`.
pub fn machine() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_for_equal_shares_and_one_over_n_for_a_monopoly() {
        assert_eq!(jain(&[5.0, 5.0, 5.0, 5.0]), Some(1.0));
        assert_eq!(jain(&[8.0, 0.0, 0.0, 0.0]), Some(0.25));
        assert_eq!(jain(&[]), None);
        assert_eq!(jain(&[0.0, 0.0]), Some(1.0));
        // (1+2+3)² / (3 · (1+4+9)) = 36 / 42.
        let j = jain(&[1.0, 2.0, 3.0]).unwrap();
        assert!((j - 36.0 / 42.0).abs() < 1e-12, "{j}");
        // Scale-free.
        assert_eq!(jain(&[1.0, 2.0, 3.0]), jain(&[10.0, 20.0, 30.0]));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 95.0), Some(95));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 95.0), Some(7));
        // Four values: p50 is the 2nd, p95 the 4th.
        assert_eq!(percentile(&[1, 2, 3, 40], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 40], 95.0), Some(40));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn utilisation_is_allocated_over_capacity_in_time() {
        // 16 GPUs for 1 h on a 64-GPU pool over 2 h: 16/128.
        assert_eq!(utilisation(16.0 * 3600.0, 64, 7200), 0.125);
        assert_eq!(utilisation(100.0, 0, 7200), 0.0);
        assert_eq!(utilisation(100.0, 8, 0), 0.0);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_seconds(45), "45 s");
        assert_eq!(human_seconds(750), "12.5 min");
        assert_eq!(human_seconds(3 * 3600), "3.0 h");
        assert_eq!(human_seconds(5 * 86_400), "5.0 d");
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(12.34), "12.3");
    }
}
