//! Tenant: one customer of the factory (a startup, a hospital, a research group).
use crate::common::{Conditions, Subject};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label put on every namespace (and child) a tenant owns.
pub const TENANT_LABEL: &str = "aifactory.dev/tenant";

/// A customer of the factory: who they are, where they may work, how many GPUs
/// they are guaranteed and may borrow, and where their data may go.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "aifactory.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tn",
    category = "aifactory",
    status = "TenantStatus",
    doc = "A customer of the AI factory: its people, namespaces, GPU quota per pool, budget and data residency.",
    validation = crate::rules::name_label("Tenant", "its default namespace and label values"),
    validation = crate::rules::default_namespace_not_a_system_one(),
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName",
        priority = 1
    ),
    printcolumn(
        name = "Namespaces",
        type_ = "string",
        json_path = ".status.namespaces"
    ),
    printcolumn(
        name = "GPUs In Use",
        type_ = "integer",
        json_path = ".status.gpusInUse"
    ),
    printcolumn(name = "GPU-Hours", type_ = "number", json_path = ".status.gpuHours"),
    printcolumn(
        name = "Budget Left",
        type_ = "number",
        json_path = ".status.budgetRemainingGpuHours"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name, e.g. `Acme Robotics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,

    /// People who manage the tenant's work: workspaces, datasets, jobs, secrets,
    /// and who may read the Tenant itself.
    #[schemars(length(min = 1, max = 64))]
    pub owners: Vec<Subject>,

    /// People who use the tenant's namespaces: the same rights as owners on work
    /// objects, without RBAC or quota rights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub members: Vec<Subject>,

    /// Namespaces the tenant gets; default: one named after the tenant. A namespace
    /// that already belongs to another tenant is refused, not adopted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("each namespace must be a lowercase DNS label of at most 63 characters"))]
    #[x_kube(validation = crate::rules::no_system_namespaces("namespaces"))]
    pub namespaces: Vec<String>,

    /// GPUs per pool: guaranteed, and how much may be borrowed and lent. A pool
    /// that is not listed may not be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["pool".into()]))]
    #[x_kube(validation = Rule::new("self.all(q, self.exists_one(r, r.pool == q.pool))").message("each pool may appear only once in quota"))]
    pub quota: Vec<PoolQuota>,

    /// Share of idle capacity relative to other tenants: fair share orders queued
    /// jobs by usage ÷ weight.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: i32,

    /// PriorityClasses the tenant's jobs may use (empty: only the default priority).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub priority_classes: Vec<String>,

    /// GPU-hour budget; when exhausted new jobs stay queued (running jobs go on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,

    /// Where the tenant's jobs and data may be: pools and storage outside these
    /// regions are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residency: Option<Residency>,

    /// Storage limits of the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<TenantStorage>,

    /// What happens to the namespaces when the Tenant is deleted: `Delete` (default)
    /// removes them with everything inside, `Retain` keeps them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_weight() -> i32 {
    1
}

/// GPUs of one pool for one tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.lendingLimit) || self.lendingLimit <= self.gpus").message("lendingLimit cannot exceed the guaranteed gpus"))]
pub struct PoolQuota {
    /// Name of the GpuPool.
    #[schemars(length(min = 1, max = 63))]
    pub pool: String,
    /// GPUs guaranteed to the tenant in this pool.
    #[schemars(range(min = 0, max = 1000000))]
    pub gpus: i32,
    /// Most GPUs beyond the guarantee the tenant may borrow from others' idle
    /// guarantees (unset: no limit; 0: never borrows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub borrowing_limit: Option<i32>,
    /// Most of its idle guarantee others may borrow (unset: all of it). Lent GPUs
    /// are reclaimed by preempting the borrowers when the tenant needs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub lending_limit: Option<i32>,
}

/// A GPU-hour budget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// GPU-hours the tenant may use per calendar month (UTC).
    #[schemars(range(min = 0.0, max = 100000000.0))]
    pub gpu_hours_per_month: f64,
}

/// Data residency of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Residency {
    /// Regions (GpuPool `location.region`) the tenant's jobs and data may use.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[x_kube(validation = Rule::new("self.all(r, r.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("each region must be a lowercase DNS label such as eu-west"))]
    pub regions: Vec<String>,
}

impl Residency {
    /// Whether data or work may be in `region`.
    pub fn allows(&self, region: &str) -> bool {
        self.regions.iter().any(|r| r == region)
    }
}

/// Storage limits of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStorage {
    /// Total storage all the tenant's claims may request, per namespace.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::rules::quantity("storage.maxRequest", "10Ti"))]
    #[x_kube(validation = crate::rules::non_negative_quantity("storage.maxRequest"))]
    pub max_request: String,
    /// StorageClasses the tenant may use (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub classes: Vec<String>,
}

/// What deleting a Tenant does to its namespaces.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the namespaces and everything in them.
    #[default]
    Delete,
    /// Keep the namespaces (and their contents); only the tenant's RBAC goes.
    Retain,
}

/// Observed state of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Namespaces the tenant owns now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// GPUs held by the tenant's running work, over all pools.
    #[serde(default)]
    pub gpus_in_use: i64,
    /// GPU-hours used in the current period, over all pools.
    #[serde(default)]
    pub gpu_hours: f64,
    /// Energy used in the current period, kWh.
    #[serde(default, rename = "energyKWh")]
    pub energy_kwh: f64,
    /// The accounting period, `YYYY-MM` (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// GPU-hours left in the budget this period (unset: no budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_remaining_gpu_hours: Option<f64>,
    /// Usage per pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<PoolUsage>,
    /// GPU-hours and energy of this period's work that no longer exists (deleted
    /// training jobs, ended sessions): part of the usage, so deleting a job does
    /// not give its hours back to the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<UsageLedger>,
    /// `Ready`, `BudgetExhausted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}

/// A tenant's use of one pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    /// Name of the GpuPool.
    pub pool: String,
    /// GPUs held now.
    pub gpus_in_use: i64,
    /// GPU-hours this period.
    pub gpu_hours: f64,
    /// Energy this period, kWh.
    #[serde(rename = "energyKWh")]
    pub energy_kwh: f64,
}

/// Usage settled for good in one accounting period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageLedger {
    /// The accounting period, `YYYY-MM` (UTC); a ledger of an earlier period counts
    /// for nothing.
    pub period: String,
    /// Settled GPU-hours and energy per pool (`gpusInUse` unused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<PoolUsage>,
    /// Keys of the latest settlements (an object's uid, a session's start), so a
    /// settlement retried after a failure is not added twice; the oldest are
    /// dropped beyond [`UsageLedger::KEYS_KEPT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settled: Vec<String>,
}

impl UsageLedger {
    /// Settlement keys remembered: a retry comes seconds to minutes after the
    /// settlement it repeats, long before this many others of the same tenant.
    pub const KEYS_KEPT: usize = 512;

    /// This ledger with `gpu_hours` and `energy_kwh` of `pool` added in `period`
    /// under `key` (a ledger of another period starts again from zero); `None`
    /// when `key` is settled already.
    pub fn add(
        ledger: Option<&UsageLedger>,
        period: &str,
        pool: &str,
        (gpu_hours, energy_kwh): (f64, f64),
        key: &str,
    ) -> Option<UsageLedger> {
        let mut out = ledger
            .filter(|l| l.period == period)
            .cloned()
            .unwrap_or_else(|| UsageLedger {
                period: period.to_string(),
                ..Default::default()
            });
        if out.settled.iter().any(|k| k == key) {
            return None;
        }
        match out.usage.iter_mut().find(|u| u.pool == pool) {
            Some(u) => {
                u.gpu_hours += gpu_hours;
                u.energy_kwh += energy_kwh;
            }
            None => out.usage.push(PoolUsage {
                pool: pool.to_string(),
                gpus_in_use: 0,
                gpu_hours,
                energy_kwh,
            }),
        }
        out.settled.push(key.to_string());
        let excess = out.settled.len().saturating_sub(Self::KEYS_KEPT);
        out.settled.drain(..excess);
        Some(out)
    }
}

impl TenantSpec {
    /// The namespaces the tenant should own (`spec.namespaces`, or one named after it).
    pub fn namespaces_or_default(&self, tenant: &str) -> Vec<String> {
        if self.namespaces.is_empty() {
            vec![tenant.to_string()]
        } else {
            self.namespaces.clone()
        }
    }

    /// The quota entry for `pool`, if the tenant may use it.
    pub fn quota_for(&self, pool: &str) -> Option<&PoolQuota> {
        self.quota.iter().find(|q| q.pool == pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_adds_per_pool_and_starts_again_each_period() {
        let l = UsageLedger::add(None, "2026-11", "h100", (2.0, 1.4), "a").unwrap();
        let l = UsageLedger::add(Some(&l), "2026-11", "h100", (1.0, 0.7), "b").unwrap();
        let l = UsageLedger::add(Some(&l), "2026-11", "a100", (0.5, 0.2), "c").unwrap();
        assert_eq!(l.usage.len(), 2);
        assert_eq!(
            (l.usage[0].gpu_hours, l.usage[0].energy_kwh),
            (3.0, 1.4 + 0.7)
        );
        let next = UsageLedger::add(Some(&l), "2026-12", "h100", (1.0, 0.7), "d").unwrap();
        assert_eq!(next.period, "2026-12");
        assert_eq!(next.usage.len(), 1);
        assert_eq!(next.usage[0].gpu_hours, 1.0);
        assert_eq!(next.settled, vec!["d"]);
    }

    #[test]
    fn a_settlement_retried_under_its_key_adds_nothing_and_old_keys_are_dropped() {
        let l = UsageLedger::add(None, "2026-11", "h100", (2.0, 1.4), "uid-1").unwrap();
        assert_eq!(
            UsageLedger::add(Some(&l), "2026-11", "h100", (2.0, 1.4), "uid-1"),
            None,
            "settled once"
        );
        let mut l = l;
        for i in 0..UsageLedger::KEYS_KEPT {
            l = UsageLedger::add(Some(&l), "2026-11", "h100", (1.0, 0.0), &format!("k{i}"))
                .unwrap();
        }
        assert_eq!(l.settled.len(), UsageLedger::KEYS_KEPT);
        assert!(
            !l.settled.contains(&"uid-1".to_string()),
            "the oldest key went"
        );
        assert_eq!(
            l.settled.last().unwrap(),
            &format!("k{}", UsageLedger::KEYS_KEPT - 1)
        );
        assert_eq!(l.usage[0].gpu_hours, 2.0 + UsageLedger::KEYS_KEPT as f64);
    }
}
