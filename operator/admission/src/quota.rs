//! The quota ledger of one pool: who is guaranteed what, who uses what, and how much
//! may be borrowed right now.
//!
//! The rules, per pool:
//! - a tenant may always use its guaranteed GPUs (physical room permitting, which
//!   preemption of borrowers restores);
//! - beyond that it *borrows*, at most `borrowing_limit` GPUs (`None` = no limit);
//! - what all tenants borrow together must fit the *supply*: GPUs of the pool
//!   guaranteed to no one (capacity − Σ guarantees) plus, for each tenant, the idle
//!   part of its guarantee up to its `lending_limit` (`None` = all of it);
//! - a tenant lending its idle guarantee may take it back at any time: its own
//!   admissions within its guarantee are never refused by the supply check.
//!
//! All counts are kept incrementally so a check is O(1).

/// One tenant's line in a pool's ledger.
#[derive(Debug, Clone, Default)]
struct Line {
    /// Whether the tenant has a quota in the pool (a running job of a tenant without
    /// one still gets a line, with nothing guaranteed and nothing to borrow).
    explicit: bool,
    guaranteed: u64,
    borrowing_limit: Option<u64>,
    lending_limit: Option<u64>,
    /// GPUs held by running and admitted jobs.
    used: u64,
    /// GPUs held on paper for a starving job (see the engine's reservation).
    held: u64,
}

impl Line {
    fn usage(&self) -> u64 {
        self.used + self.held
    }
    fn borrowed(&self) -> u64 {
        self.usage().saturating_sub(self.guaranteed)
    }
    fn lend_cap(&self) -> u64 {
        self.lending_limit
            .map_or(self.guaranteed, |l| l.min(self.guaranteed))
    }
    fn lendable(&self) -> u64 {
        let idle = self.guaranteed.saturating_sub(self.usage());
        self.lending_limit.map_or(idle, |l| idle.min(l))
    }
}

/// Why a tenant may not take more GPUs in a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaShortfall {
    pub would_use: u64,
    pub guaranteed: u64,
    /// GPUs beyond the guarantee the tenant could hold right now.
    pub borrowable: u64,
    /// The tenant's own borrowing limit stops it (not only what others use).
    pub own_limit: bool,
}

/// The quota ledger of one pool.
#[derive(Debug, Clone)]
pub(crate) struct PoolLedger {
    lines: Vec<Line>,
    /// GPUs of the pool's schedulable nodes usable by admitted jobs.
    capacity: u64,
    /// Σ of guarantees.
    guaranteed: u64,
    /// Σ over tenants of the most each could ever lend: min(lending limit, guarantee).
    lend_caps: u64,
    /// Σ over tenants of GPUs used beyond their guarantee.
    borrowed: u64,
    /// Σ over tenants of idle guarantee they lend.
    lendable: u64,
}

impl PoolLedger {
    /// A ledger for `tenants` tenants of a pool with `capacity` GPUs; quotas are
    /// added with [`Self::set_quota`] before any usage.
    pub fn new(tenants: usize, capacity: u64) -> Self {
        Self {
            lines: vec![Line::default(); tenants],
            capacity,
            guaranteed: 0,
            lend_caps: 0,
            borrowed: 0,
            lendable: 0,
        }
    }

    /// GPUs of the pool guaranteed to no one: anyone with a quota may borrow them.
    fn unguaranteed(&self) -> u64 {
        self.capacity.saturating_sub(self.guaranteed)
    }

    /// Record a tenant's quota (before any usage is added).
    pub fn set_quota(
        &mut self,
        tenant: usize,
        guaranteed: u64,
        borrowing_limit: Option<u64>,
        lending_limit: Option<u64>,
    ) {
        let line = &mut self.lines[tenant];
        debug_assert!(line.usage() == 0, "quotas are set before usage");
        self.lendable -= line.lendable();
        self.guaranteed -= line.guaranteed;
        self.lend_caps -= line.lend_cap();
        *line = Line {
            explicit: true,
            guaranteed,
            borrowing_limit,
            lending_limit,
            used: 0,
            held: 0,
        };
        self.guaranteed += line.guaranteed;
        self.lend_caps += line.lend_cap();
        self.lendable += line.lendable();
    }

    /// Whether the tenant has a quota in this pool.
    pub fn has_quota(&self, tenant: usize) -> bool {
        self.lines[tenant].explicit
    }

    /// The tenant's guarantee.
    pub fn guaranteed(&self, tenant: usize) -> u64 {
        self.lines[tenant].guaranteed
    }

    /// GPUs held by the tenant's running and admitted jobs.
    pub fn used(&self, tenant: usize) -> u64 {
        self.lines[tenant].used
    }

    /// What counts against the tenant's quota: its jobs plus what is held for it.
    pub fn usage(&self, tenant: usize) -> u64 {
        self.lines[tenant].usage()
    }

    /// Whether the tenant's *jobs* (not reservations) use more than its guarantee:
    /// only then may another tenant reclaim GPUs from it.
    pub fn is_borrowing(&self, tenant: usize) -> bool {
        self.lines[tenant].used > self.lines[tenant].guaranteed
    }

    /// Whether any tenant's jobs use more than their guarantee.
    pub fn anyone_borrowing(&self) -> bool {
        self.lines.iter().any(|l| l.used > l.guaranteed)
    }

    fn update(&mut self, tenant: usize, change: impl FnOnce(&mut Line)) {
        let line = &mut self.lines[tenant];
        self.borrowed -= line.borrowed();
        self.lendable -= line.lendable();
        change(line);
        self.borrowed += line.borrowed();
        self.lendable += line.lendable();
    }

    /// The tenant's jobs take `gpus` more.
    pub fn take(&mut self, tenant: usize, gpus: u64) {
        self.update(tenant, |l| l.used += gpus);
    }

    /// The tenant's jobs give back `gpus`.
    pub fn give_back(&mut self, tenant: usize, gpus: u64) {
        self.update(tenant, |l| l.used = l.used.saturating_sub(gpus));
    }

    /// Hold `gpus` for the tenant on paper (a starving job's reservation).
    pub fn hold(&mut self, tenant: usize, gpus: u64) {
        self.update(tenant, |l| l.held += gpus);
    }

    /// Release a hold.
    pub fn release(&mut self, tenant: usize, gpus: u64) {
        self.update(tenant, |l| l.held = l.held.saturating_sub(gpus));
    }

    /// May the tenant take `gpus` more? On success, how many of them are borrowed.
    pub fn check(&self, tenant: usize, gpus: u64) -> Result<u64, QuotaShortfall> {
        let line = &self.lines[tenant];
        let usage = line.usage();
        let would_use = usage + gpus;
        if would_use <= line.guaranteed {
            return Ok(0);
        }
        // What the tenant could hold beyond its guarantee right now: the supply
        // without its own (vanishing) lending, less what others already borrow.
        let supply = self.unguaranteed() + self.lendable - line.lendable();
        let others_borrow = self.borrowed - line.borrowed();
        let mut borrowable = supply.saturating_sub(others_borrow);
        let own_limit = line
            .borrowing_limit
            .is_some_and(|limit| would_use > line.guaranteed + limit);
        if let Some(limit) = line.borrowing_limit {
            borrowable = borrowable.min(limit);
        }
        if would_use > line.guaranteed + borrowable {
            return Err(QuotaShortfall {
                would_use,
                guaranteed: line.guaranteed,
                borrowable,
                own_limit,
            });
        }
        Ok(would_use - line.guaranteed.max(usage))
    }

    /// Could the tenant ever take `gpus` in this pool, if the pool were empty?
    pub fn could_ever_fit(&self, tenant: usize, gpus: u64) -> Result<(), QuotaShortfall> {
        let line = &self.lines[tenant];
        if gpus <= line.guaranteed {
            return Ok(());
        }
        let mut borrowable = self.unguaranteed() + self.lend_caps - line.lend_cap();
        if let Some(limit) = line.borrowing_limit {
            borrowable = borrowable.min(limit);
        }
        if gpus > line.guaranteed + borrowable {
            return Err(QuotaShortfall {
                would_use: gpus,
                guaranteed: line.guaranteed,
                borrowable,
                own_limit: true,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: usize = 0;
    const BETA: usize = 1;
    const GAMMA: usize = 2;

    /// A 64-GPU pool: acme is guaranteed 32, beta 16, 16 are guaranteed to no one.
    fn h100() -> PoolLedger {
        let mut ledger = PoolLedger::new(3, 64);
        ledger.set_quota(ACME, 32, None, None);
        ledger.set_quota(BETA, 16, None, None);
        ledger
    }

    #[test]
    fn a_tenant_may_always_use_its_guarantee() {
        let mut ledger = h100();
        ledger.take(BETA, 40); // beta borrows 24 (16 unguaranteed + 8 of acme's idle)
        assert_eq!(ledger.check(ACME, 32), Ok(0));
    }

    #[test]
    fn borrowing_draws_on_unguaranteed_gpus_and_idle_guarantees() {
        let mut ledger = h100();
        ledger.take(ACME, 8);
        // beta may borrow 16 unguaranteed + 24 of acme's idle guarantee.
        assert_eq!(ledger.check(BETA, 16 + 40), Ok(40));
        assert_eq!(
            ledger.check(BETA, 16 + 41),
            Err(QuotaShortfall {
                would_use: 57,
                guaranteed: 16,
                borrowable: 40,
                own_limit: false
            })
        );
    }

    #[test]
    fn borrowing_limit_caps_what_a_tenant_borrows() {
        let mut ledger = PoolLedger::new(2, 64);
        ledger.set_quota(ACME, 32, Some(0), None);
        assert_eq!(
            ledger.check(ACME, 40),
            Err(QuotaShortfall {
                would_use: 40,
                guaranteed: 32,
                borrowable: 0,
                own_limit: true
            })
        );
    }

    #[test]
    fn lending_limit_keeps_part_of_an_idle_guarantee_for_its_owner() {
        let mut ledger = PoolLedger::new(2, 48);
        ledger.set_quota(ACME, 32, None, Some(8));
        ledger.set_quota(BETA, 16, None, None);
        // Nothing is unguaranteed; acme lends at most 8 of its 32 idle GPUs.
        assert_eq!(ledger.check(BETA, 24), Ok(8));
        assert!(ledger.check(BETA, 25).is_err());
    }

    #[test]
    fn borrowers_share_one_supply() {
        let mut ledger = h100();
        ledger.set_quota(GAMMA, 0, None, None);
        ledger.take(ACME, 32);
        ledger.take(BETA, 16 + 10); // beta borrows 10 of the 16 unguaranteed
        assert_eq!(ledger.check(GAMMA, 6), Ok(6));
        assert!(ledger.check(GAMMA, 7).is_err());
    }

    #[test]
    fn a_hold_counts_like_usage_but_does_not_make_its_tenant_a_borrower() {
        let mut ledger = h100();
        ledger.hold(BETA, 40);
        assert!(!ledger.is_borrowing(BETA));
        assert_eq!(ledger.usage(BETA), 40);
        // acme still gets its whole guarantee, but nothing beyond: beta's hold
        // borrows the 16 unguaranteed GPUs and 8 of acme's own idle ones.
        assert_eq!(ledger.check(ACME, 32), Ok(0));
        assert_eq!(ledger.check(ACME, 33).map_err(|s| s.borrowable), Err(0));
        ledger.release(BETA, 40);
        assert_eq!(ledger.usage(BETA), 0);
    }

    #[test]
    fn a_job_larger_than_guarantee_and_every_lender_never_fits() {
        let mut ledger = PoolLedger::new(2, 32);
        ledger.set_quota(ACME, 8, None, None);
        ledger.set_quota(BETA, 24, None, Some(8));
        assert!(ledger.could_ever_fit(ACME, 16).is_ok());
        assert_eq!(
            ledger.could_ever_fit(ACME, 17),
            Err(QuotaShortfall {
                would_use: 17,
                guaranteed: 8,
                borrowable: 8,
                own_limit: true
            })
        );
    }
}
