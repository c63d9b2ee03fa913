//! Judging a run from what the checker saw and the audit log, and the table.
use super::audit::Write;
use super::checker::{LeaseSeen, Track, Violations};
use super::replicas::{Exit, Replicas};
use super::{Chaos, ChaosEvent, Config, LEASE, LEASE_NAME, LEASE_NS};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What followed one chaos event.
#[derive(Clone, Debug)]
pub struct Failover {
    pub kind: Chaos,
    pub at: jiff::Timestamp,
    pub target: Option<String>,
    /// Who led next (a kill or freeze: the successor).
    pub successor: Option<String>,
    /// The event → the successor's lease write (kills and freezes), s.
    pub failover: Option<f64>,
    /// The old leader's last renewal → the successor's lease write, s: never under
    /// the lease duration.
    pub since_renewal: Option<f64>,
    /// The successor's lease write → its first other write, s.
    pub first_write: Option<f64>,
    /// Restarts: the event → the first lease write / other write of any replica, s.
    pub lease_again: Option<f64>,
    pub writes_again: Option<f64>,
    /// Restarts: whether the leader before is the leader after.
    pub kept: Option<bool>,
    pub detail: String,
}

fn secs(a: jiff::Timestamp, b: jiff::Timestamp) -> f64 {
    b.duration_since(a).as_secs_f64()
}

fn holder_at(lease: &[LeaseSeen], t: jiff::Timestamp) -> Option<String> {
    lease
        .iter()
        .rev()
        .find(|l| l.at <= t)
        .map(|l| l.holder.clone())
        .filter(|h| !h.is_empty())
}

/// Times every failover and restart; notes a successor that led within the lease.
pub fn failovers(
    events: &[ChaosEvent],
    writes: &[Write],
    lease: &[LeaseSeen],
    replicas: &Replicas,
    violations: &mut Violations,
) -> Vec<Failover> {
    let is_lease = |w: &Write| w.is_lease(LEASE_NS, LEASE_NAME);
    let mut out = vec![];
    for e in events {
        let mut f = Failover {
            kind: e.kind,
            at: e.at,
            target: e.target.clone(),
            successor: None,
            failover: None,
            since_renewal: None,
            first_write: None,
            lease_again: None,
            writes_again: None,
            kept: None,
            detail: e.detail.clone(),
        };
        match (e.kind, &e.target) {
            (Chaos::Kill | Chaos::Freeze, Some(target)) => {
                let target_user = replicas.user_of(target).unwrap_or_default();
                // The first lease write after the event is the successor's: the
                // killed or frozen leader writes nothing more (a write in flight
                // lands within a fraction of a second), a standby writes the
                // lease only to take it.
                let after =
                    e.at.checked_add(jiff::SignedDuration::from_millis(200))
                        .unwrap_or(e.at);
                let acquired = writes
                    .iter()
                    .find(|w| is_lease(w) && w.code < 300 && w.received > after);
                let renewed = writes.iter().rfind(|w| {
                    is_lease(w) && w.code < 300 && w.user == target_user && w.received < e.at
                });
                if let Some(a) = acquired {
                    let successor = lease
                        .iter()
                        .find(|l| l.at >= a.received && !l.holder.is_empty())
                        .map(|l| l.holder.clone());
                    f.failover = Some(secs(e.at, a.received));
                    f.first_write = writes
                        .iter()
                        .find(|w| !is_lease(w) && w.user == a.user && w.received >= a.received)
                        .map(|w| secs(a.received, w.received));
                    if let Some(r) = renewed {
                        let since = secs(r.received, a.received);
                        f.since_renewal = Some(since);
                        // Another replica must wait the whole lease; the same
                        // identity (its process restarted in place) need not.
                        if since < LEASE.as_secs_f64() && successor.as_deref() != Some(target) {
                            violations.other.push(format!(
                                "{} took the lease {since:.1} s after {target}'s last renewal, within the {LEASE:?} lease",
                                successor.as_deref().unwrap_or_default()
                            ));
                        }
                    }
                    f.successor = successor;
                } else {
                    violations.other.push(format!(
                        "no successor's lease write found after the {:?} of {target} at {}",
                        e.kind, e.at
                    ));
                }
            }
            _ => {
                let before = holder_at(lease, e.at);
                let after = lease
                    .iter()
                    .find(|l| l.at > e.until && !l.holder.is_empty())
                    .map(|l| l.holder.clone());
                f.kept = Some(before.is_some() && before == after);
                f.successor = after;
                // Requests received in the first 0.2 s were on their way before the
                // kill; the restarted process takes seconds to serve.
                let after =
                    e.at.checked_add(jiff::SignedDuration::from_millis(200))
                        .unwrap_or(e.at);
                f.lease_again = writes
                    .iter()
                    .find(|w| is_lease(w) && w.code < 300 && w.received > after)
                    .map(|w| secs(e.at, w.received));
                f.writes_again = writes
                    .iter()
                    .find(|w| !is_lease(w) && w.received > after)
                    .map(|w| secs(e.at, w.received));
            }
        }
        out.push(f);
    }
    out
}

/// Every write of a replica's user while the other user held the lease (by the
/// audit log's own order: the lease changes hands at a successful lease write).
pub fn deposed_writes(writes: &[Write], ns: &str, name: &str, violations: &mut Violations) {
    let mut leader: Option<&str> = None;
    for w in writes {
        if w.is_lease(ns, name) {
            if w.code < 300 {
                leader = Some(w.user.as_str());
            }
            continue;
        }
        if let Some(l) = leader
            && l != w.user
            && violations.deposed_writes.len() < 200
        {
            violations
                .deposed_writes
                .push(format!("{} (the lease was {l}'s)", w.describe()));
        }
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {n} CPUs (nproc)")
}

/// Everything a run measured.
pub struct Report {
    pub cfg: Config,
    pub started_at: jiff::Timestamp,
    pub run_started_at: jiff::Timestamp,
    pub wall: Duration,
    pub run_time: Duration,
    pub submitted_in: Duration,
    pub nodes_up: Duration,
    pub setup: Duration,
    pub events: Vec<ChaosEvent>,
    pub exits: Vec<Exit>,
    pub failovers: Vec<Failover>,
    pub starts: BTreeMap<char, u32>,
    pub violations: Violations,
    /// The histories of the jobs behind each broken invariant.
    pub evidence: Vec<String>,
    pub tracks: BTreeMap<String, Track>,
    pub ledger: f64,
    pub recorded: f64,
    pub live_usage: f64,
    pub ledger_error: f64,
    pub pod_hours: f64,
    pub peak_gpus_jobs: i64,
    pub peak_gpus_pods: i64,
    pub longest_deletion: f64,
    pub samples: u64,
    pub relists: BTreeMap<&'static str, u32>,
    pub cleanup_times: BTreeMap<String, Duration>,
    pub lease_writes: usize,
    pub operator_writes: usize,
    pub load_before: String,
    pub load_after: String,
}

fn spread(mut xs: Vec<f64>) -> String {
    if xs.is_empty() {
        return "–".into();
    }
    xs.sort_by(f64::total_cmp);
    let median = if xs.len() % 2 == 1 {
        xs[xs.len() / 2]
    } else {
        (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
    };
    format!(
        "{:.1} / {:.1} / {:.1} s (n = {})",
        xs[0],
        median,
        xs[xs.len() - 1],
        xs.len()
    )
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.1} s"))
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.total() == 0
    }

    fn count(&self, kind: Chaos) -> usize {
        self.events.iter().filter(|e| e.kind == kind).count()
    }

    /// The figures, as markdown.
    pub fn table(&self) -> String {
        let c = &self.cfg;
        let v = &self.violations;
        let g = c.guarantee();
        let mut t = String::new();
        let leader_events: Vec<&Failover> = self
            .failovers
            .iter()
            .filter(|f| f.kind == Chaos::Kill)
            .collect();
        let pick = |fs: &[&Failover], get: fn(&Failover) -> Option<f64>| {
            spread(fs.iter().filter_map(|f| get(f)).collect())
        };
        let freezes: Vec<&Failover> = self
            .failovers
            .iter()
            .filter(|f| f.kind == Chaos::Freeze)
            .collect();
        let deleted_early = self
            .tracks
            .values()
            .filter(|t| t.delete_early && t.recorded.is_some())
            .count();
        let succeeded = self
            .tracks
            .values()
            .filter(|t| t.succeeded.is_some())
            .count();
        let preempted: u32 = self.tracks.values().map(|t| t.preemptions).sum();
        let readmitted = self
            .tracks
            .values()
            .filter(|t| t.admissions.len() > 1)
            .count();
        let own_exits = self.exits.iter().filter(|e| !e.killed).count();
        let _ = writeln!(t, "| measure | value |\n| --- | --- |");
        let mut row = |k: &str, val: String| {
            let _ = writeln!(t, "| {k} | {val} |");
        };
        row(
            "nodes / GPUs",
            format!(
                "{} / {} ({} tenants, each guaranteed {g} GPUs, borrowing up to {g} more, lending all)",
                c.nodes,
                c.nodes as i64 * c.gpus_per_node,
                c.tenants
            ),
        );
        row(
            "jobs",
            format!(
                "{} submitted over {:.0?} ({}–{} s of 1–8 nodes × 1–8 GPUs each); {succeeded} succeeded; {deleted_early} deleted as they finished, the rest at the end",
                c.jobs, self.submitted_in, c.job_seconds.0, c.job_seconds.1
            ),
        );
        row(
            "leader kills (SIGKILL)",
            format!(
                "{}, each {}–{} s after the leader took over (the killed replica back a second later under {})",
                self.count(Chaos::Kill),
                c.kill_after.0,
                c.kill_after.1,
                if c.restart_in_place {
                    "the same identity, as a container restarted in its pod"
                } else {
                    "a new identity, as a new pod"
                }
            ),
        );
        row(
            "leader freezes (SIGSTOP past the lease, then SIGCONT)",
            format!(
                "{} × {:?}; {}",
                self.count(Chaos::Freeze),
                c.freeze_for,
                freezes
                    .iter()
                    .map(|f| f.detail.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
        let restarts = |kind: Chaos| {
            self.failovers
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| {
                    format!(
                        "{}; leader {}; from the kill: lease written again after {}, other writes after {}",
                        f.detail,
                        if f.kept == Some(true) {
                            "kept its lease"
                        } else {
                            "changed"
                        },
                        opt(f.lease_again),
                        opt(f.writes_again)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        row(
            "kube-apiserver restarts (SIGKILL, started again)",
            format!(
                "{} ({})",
                self.count(Chaos::ApiServer),
                restarts(Chaos::ApiServer)
            ),
        );
        row(
            "etcd restarts (SIGKILL, started again)",
            format!("{} ({})", self.count(Chaos::Etcd), restarts(Chaos::Etcd)),
        );
        row(
            "failover after a kill: kill → successor's lease write (min / median / max)",
            pick(&leader_events, |f| f.failover),
        );
        row(
            "… the killed leader's last renewal → successor's lease write",
            pick(&leader_events, |f| f.since_renewal),
        );
        row(
            "… lease expiry (last renewal + the lease) → successor's lease write",
            spread(
                leader_events
                    .iter()
                    .filter_map(|f| f.since_renewal.map(|s| s - LEASE.as_secs_f64()))
                    .collect(),
            ),
        );
        row(
            "… successor's lease write → its first other write",
            pick(&leader_events, |f| f.first_write),
        );
        row(
            "failover after the freeze: SIGSTOP → successor's lease write",
            pick(&freezes, |f| f.failover),
        );
        row(
            "over-admissions: per node (jobs' placements / pods) · per tenant (jobs / pods)",
            format!(
                "{} / {} · {} / {}",
                v.over_node_jobs.len(),
                v.over_node_pods.len(),
                v.over_tenant_jobs.len(),
                v.over_tenant_pods.len()
            ),
        );
        row(
            "lost jobs / duplicated jobs",
            format!("{} / {}", v.lost.len(), v.duplicated.len()),
        );
        row(
            "writes of a deposed leader (audit log)",
            v.deposed_writes.len().to_string(),
        );
        row(
            "stranded finalizers (> 60 s after deletion)",
            format!(
                "{} (longest wait of a deleted job: {:.1} s; tenants, namespaces, pool gone after {})",
                v.stranded.len(),
                self.longest_deletion,
                self.cleanup_times
                    .iter()
                    .map(|(k, d)| format!("{k}s {d:.0?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        row(
            "ledger + live jobs' usage vs the jobs' hours read before deletion",
            format!(
                "{:.4} + {:.4} vs {:.4} + {:.4} GPU-h: {:+.3} %",
                self.ledger,
                self.live_usage,
                self.recorded,
                self.live_usage,
                self.ledger_error * 100.0
            ),
        );
        row(
            "the jobs' hours vs their pods' run times (information)",
            format!(
                "{:.3} vs {:.3} GPU-h ({:+.1} %: hours count from when the operator sees every pod running)",
                self.recorded,
                self.pod_hours,
                if self.pod_hours > 0.0 {
                    (self.recorded / self.pod_hours - 1.0) * 100.0
                } else {
                    0.0
                }
            ),
        );
        row("other violations", v.other.len().to_string());
        row(
            "preemptions / jobs admitted more than once",
            format!("{preempted} / {readmitted}"),
        );
        row(
            "peak GPUs held (jobs' placements / pods)",
            format!("{} / {}", self.peak_gpus_jobs, self.peak_gpus_pods),
        );
        row(
            "replica processes started / exits on their own (fence shut)",
            format!(
                "{} / {own_exits}",
                self.starts
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        row(
            "operator writes seen in the audit log (lease / other)",
            format!("{} / {}", self.lease_writes, self.operator_writes),
        );
        row(
            "checker",
            format!(
                "{} samples; watch lists (the first, then one per lost watch): {}",
                self.samples,
                self.relists
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        row(
            "wall time",
            format!(
                "{:.1} min in all: {:.0?} nodes, {:.0?} pool and tenants, {:.1} min of jobs and chaos until the last job ended, then deletions",
                self.wall.as_secs_f64() / 60.0,
                self.nodes_up,
                self.setup,
                self.run_time.as_secs_f64() / 60.0
            ),
        );
        row(
            "machine",
            format!(
                "{}; load {} before, {} after; operator {}",
                cpu(),
                self.load_before,
                self.load_after,
                c.operator.display()
            ),
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| # | at (s) | event | leader hit | successor | event → successor's lease write | last renewal → it | → first other write | note |\n| ---: | ---: | --- | --- | --- | ---: | ---: | ---: | --- |"
        );
        for (i, f) in self.failovers.iter().enumerate() {
            let _ = writeln!(
                t,
                "| {} | {:.0} | {:?} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                secs(self.run_started_at, f.at),
                f.kind,
                f.target.as_deref().unwrap_or("–"),
                f.successor.as_deref().unwrap_or("–"),
                opt(f.failover.or(f.lease_again)),
                opt(f.since_renewal),
                opt(f.first_write.or(f.writes_again)),
                f.detail
            );
        }
        let all = self.violations.all();
        if !all.is_empty() {
            let _ = writeln!(t, "\nViolations ({}):\n", all.len());
            for v in all {
                let _ = writeln!(t, "- {v}");
            }
        }
        if !self.evidence.is_empty() {
            let _ = writeln!(
                t,
                "\nWhat the checker saw (each job's states, as the API served them):\n\n```"
            );
            for e in &self.evidence {
                let _ = writeln!(t, "{e}");
            }
            let _ = writeln!(t, "```");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(user: &str, resource: &str, name: &str, code: i64, at: i64) -> Write {
        Write {
            user: user.into(),
            verb: "update".into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: "default".into(),
            name: name.into(),
            code,
            received: jiff::Timestamp::from_second(at).unwrap(),
        }
    }

    #[test]
    fn a_write_after_the_other_replica_took_the_lease_is_a_deposed_leaders() {
        let writes = [
            write("a", "leases", LEASE_NAME, 200, 1),
            write("a", "trainingjobs", "x", 200, 2),
            // b tries before the lease is free: refused, a still leads.
            write("b", "leases", LEASE_NAME, 409, 3),
            write("a", "trainingjobs", "x", 200, 4),
            write("b", "leases", LEASE_NAME, 200, 20),
            write("b", "trainingjobs", "x", 200, 21),
            write("a", "trainingjobs", "x", 409, 22),
        ];
        let mut v = Violations::default();
        deposed_writes(&writes, LEASE_NS, LEASE_NAME, &mut v);
        assert_eq!(v.deposed_writes.len(), 1, "{v:?}");
        assert!(v.deposed_writes[0].starts_with("a update trainingjobs"));
    }
}
