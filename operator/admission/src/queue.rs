//! The order in which one pass considers the queued jobs.
//!
//! Highest priority first. Within a priority, *starving* jobs (queued for at least
//! [`Policy::starving_after`](crate::Policy::starving_after) ticks) come first,
//! longest-waiting first; then the others by fair share: the tenant with the lowest
//! (GPU-hours used + GPUs admitted in this pass × charge) ÷ weight goes next, with its
//! oldest job. Because the share is recomputed after every admission, a tenant with a
//! low share gets one job in, then competes again, instead of taking everything.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::ops::Range;

/// A queued job as the queue sees it.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    /// Caller's handle, returned by [`Queue::next`].
    pub job: usize,
    pub tenant: usize,
    pub priority: i32,
    pub created: u64,
    pub queued_since: u64,
    pub starving: bool,
    pub id: &'a str,
}

/// A tenant's share of the factory, as fair share sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Share {
    pub used_gpu_hours: f64,
    pub weight: f64,
}

#[derive(Debug, Clone)]
struct Run {
    tenant: usize,
    jobs: Range<usize>,
}

#[derive(Debug, Clone)]
struct Level {
    starving: Range<usize>,
    runs: Vec<Run>,
}

/// Heap key: lowest share, then oldest head job, then lowest tenant index.
#[derive(Debug, Clone, Copy)]
struct Key {
    share: f64,
    head_created: u64,
    run: usize,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.share
            .total_cmp(&other.share)
            .then(self.head_created.cmp(&other.head_created))
            .then(self.run.cmp(&other.run))
    }
}

/// The jobs of one pass in the order they are considered.
pub(crate) struct Queue<'a> {
    entries: Vec<Entry<'a>>,
    levels: Vec<Level>,
    level: usize,
    next_starving: usize,
    /// Next job of each run of the current level.
    run_next: Vec<usize>,
    heap: BinaryHeap<Reverse<Key>>,
    heap_filled: bool,
    /// The run whose job was handed out last; it re-enters the heap with the share
    /// it has after the caller charged (or not) the tenant.
    handed_out: Option<usize>,
    shares: Vec<Share>,
    charged: Vec<f64>,
}

impl<'a> Queue<'a> {
    /// Order `entries` of tenants whose shares are `shares` (indexed by tenant).
    pub fn new(mut entries: Vec<Entry<'a>>, shares: Vec<Share>) -> Self {
        entries.sort_unstable_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(b.starving.cmp(&a.starving))
                .then_with(|| {
                    if a.starving {
                        (a.queued_since, a.created, a.id).cmp(&(b.queued_since, b.created, b.id))
                    } else {
                        (a.tenant, a.created, a.id).cmp(&(b.tenant, b.created, b.id))
                    }
                })
        });
        let mut levels = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let priority = entries[i].priority;
            let start = i;
            while i < entries.len() && entries[i].priority == priority && entries[i].starving {
                i += 1;
            }
            let starving = start..i;
            let mut runs = Vec::new();
            while i < entries.len() && entries[i].priority == priority {
                let tenant = entries[i].tenant;
                let run_start = i;
                while i < entries.len()
                    && entries[i].priority == priority
                    && entries[i].tenant == tenant
                {
                    i += 1;
                }
                runs.push(Run {
                    tenant,
                    jobs: run_start..i,
                });
            }
            levels.push(Level { starving, runs });
        }
        let charged = vec![0.0; shares.len()];
        let next_starving = levels.first().map_or(0, |l: &Level| l.starving.start);
        Self {
            entries,
            levels,
            level: 0,
            next_starving,
            run_next: Vec::new(),
            heap: BinaryHeap::new(),
            heap_filled: false,
            handed_out: None,
            shares,
            charged,
        }
    }

    /// Charge a tenant's fair share for GPUs admitted in this pass.
    pub fn charge(&mut self, tenant: usize, gpu_hours: f64) {
        self.charged[tenant] += gpu_hours;
    }

    fn key(&self, run: usize) -> Key {
        let level = &self.levels[self.level];
        let tenant = level.runs[run].tenant;
        let share = self.shares[tenant];
        Key {
            share: (share.used_gpu_hours + self.charged[tenant]) / share.weight,
            head_created: self.entries[self.run_next[run]].created,
            run,
        }
    }

    /// The next job to consider, or `None` when all were handed out.
    pub fn next(&mut self) -> Option<&Entry<'a>> {
        loop {
            let level = self.levels.get(self.level)?;
            if let Some(run) = self.handed_out.take()
                && self.run_next[run] < level.runs[run].jobs.end
            {
                let key = self.key(run);
                self.heap.push(Reverse(key));
            }
            let level = &self.levels[self.level];
            if self.next_starving < level.starving.end {
                self.next_starving += 1;
                return Some(&self.entries[self.next_starving - 1]);
            }
            if !self.heap_filled {
                self.run_next = level.runs.iter().map(|r| r.jobs.start).collect();
                for run in 0..self.run_next.len() {
                    let key = self.key(run);
                    self.heap.push(Reverse(key));
                }
                self.heap_filled = true;
            }
            if let Some(Reverse(key)) = self.heap.pop() {
                let job = self.run_next[key.run];
                self.run_next[key.run] += 1;
                self.handed_out = Some(key.run);
                return Some(&self.entries[job]);
            }
            self.level += 1;
            self.heap_filled = false;
            if let Some(level) = self.levels.get(self.level) {
                self.next_starving = level.starving.start;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: usize = 0;
    const BETA: usize = 1;

    fn job(id: &'static str, tenant: usize, priority: i32, created: u64) -> Entry<'static> {
        Entry {
            job: created as usize,
            tenant,
            priority,
            created,
            queued_since: created,
            starving: false,
            id,
        }
    }

    fn order(entries: Vec<Entry<'static>>, shares: [f64; 2], charge: f64) -> Vec<&'static str> {
        let shares = shares
            .iter()
            .map(|&used| Share {
                used_gpu_hours: used,
                weight: 1.0,
            })
            .collect();
        let mut queue = Queue::new(entries, shares);
        let mut out = Vec::new();
        while let Some(e) = queue.next() {
            let (id, tenant) = (e.id, e.tenant);
            out.push(id);
            queue.charge(tenant, charge);
        }
        out
    }

    #[test]
    fn higher_priority_goes_first_whatever_the_share() {
        let got = order(
            vec![job("acme/a", ACME, 0, 1), job("beta/urgent", BETA, 100, 2)],
            [0.0, 1000.0],
            0.0,
        );
        assert_eq!(got, ["beta/urgent", "acme/a"]);
    }

    #[test]
    fn the_tenant_with_the_lower_share_goes_first_then_they_alternate() {
        // acme used 10 GPU-hours, beta 12; every admission charges 8.
        let got = order(
            vec![
                job("acme/1", ACME, 0, 1),
                job("acme/2", ACME, 0, 2),
                job("acme/3", ACME, 0, 3),
                job("beta/1", BETA, 0, 4),
                job("beta/2", BETA, 0, 5),
            ],
            [10.0, 12.0],
            8.0,
        );
        assert_eq!(got, ["acme/1", "beta/1", "acme/2", "beta/2", "acme/3"]);
    }

    #[test]
    fn a_heavier_tenant_gets_more_before_falling_behind() {
        let shares = vec![
            Share {
                used_gpu_hours: 0.0,
                weight: 3.0,
            },
            Share {
                used_gpu_hours: 0.0,
                weight: 1.0,
            },
        ];
        let entries = (0..4)
            .map(|i| job("acme", ACME, 0, i))
            .chain((10..12).map(|i| job("beta", BETA, 0, i)))
            .collect();
        let mut queue = Queue::new(entries, shares);
        let mut got = Vec::new();
        while let Some(e) = queue.next() {
            let (id, tenant) = (e.id, e.tenant);
            got.push(id);
            queue.charge(tenant, 1.0);
        }
        // acme's share grows by 1/3 per admission, beta's by 1.
        assert_eq!(got, ["acme", "beta", "acme", "acme", "acme", "beta"]);
    }

    #[test]
    fn starving_jobs_go_ahead_of_fair_share_longest_waiting_first() {
        let mut old = job("beta/old", BETA, 0, 7);
        old.starving = true;
        old.queued_since = 3;
        let mut older = job("beta/older", BETA, 0, 9);
        older.starving = true;
        older.queued_since = 1;
        let got = order(
            vec![job("acme/new", ACME, 0, 1), old, older],
            [0.0, 500.0],
            0.0,
        );
        assert_eq!(got, ["beta/older", "beta/old", "acme/new"]);
    }

    #[test]
    fn equal_shares_fall_back_to_age() {
        let got = order(
            vec![job("beta/1", BETA, 0, 1), job("acme/1", ACME, 0, 2)],
            [5.0, 5.0],
            0.0,
        );
        assert_eq!(got, ["beta/1", "acme/1"]);
    }
}
