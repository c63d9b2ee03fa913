//! `kubectl factory usage`: per tenant and pool, the GPUs guaranteed and in use,
//! GPU-hours and energy this period, and what is left of the budget — all from the
//! Tenant's status, which the operator keeps.
use crate::format;
use crate::table::Table;
use aifactory_api::Tenant;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// One tenant, or every tenant the user may list.
pub async fn fetch(client: &Client, tenant: Option<&str>) -> anyhow::Result<Vec<Tenant>> {
    let api = Api::<Tenant>::all(client.clone());
    match tenant {
        Some(name) => {
            Ok(vec![api.get_opt(name).await?.ok_or_else(|| {
                anyhow::anyhow!("tenant {name} not found")
            })?])
        }
        None => match api.list(&ListParams::default()).await {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(e)) if e.code == 403 => anyhow::bail!(
                "not allowed to list tenants: name yours with --tenant (owners may read their own Tenant)"
            ),
            Err(e) => Err(e.into()),
        },
    }
}

/// One row per tenant and pool, then the tenant's total with its budget.
pub fn render(tenants: &[Tenant]) -> String {
    let mut table = Table::new(&[
        "TENANT",
        "POOL",
        "GUARANTEED",
        "IN USE",
        "GPU-HOURS",
        "KWH",
        "BUDGET LEFT",
    ]);
    let mut tenants: Vec<&Tenant> = tenants.iter().collect();
    tenants.sort_by_key(|t| t.name_any());
    for t in tenants {
        let name = t.name_any();
        let status = t.status.clone().unwrap_or_default();
        // Pools with a quota, in the spec's order, then any pool used without one.
        let mut pools: Vec<String> = t.spec.quota.iter().map(|q| q.pool.clone()).collect();
        for u in &status.usage {
            if !pools.contains(&u.pool) {
                pools.push(u.pool.clone());
            }
        }
        for pool in &pools {
            let usage = status.usage.iter().find(|u| &u.pool == pool);
            table.row(vec![
                name.clone(),
                pool.clone(),
                t.spec
                    .quota_for(pool)
                    .map_or("-".into(), |q| q.gpus.to_string()),
                usage.map_or(0, |u| u.gpus_in_use).to_string(),
                format::decimal(usage.map_or(0.0, |u| u.gpu_hours)),
                format::decimal(usage.map_or(0.0, |u| u.energy_kwh)),
                String::new(),
            ]);
        }
        let budget = match (&t.spec.budget, status.budget_remaining_gpu_hours) {
            (None, _) => "no budget".to_string(),
            (Some(b), Some(left)) => format!(
                "{} of {} GPU-hours",
                format::decimal(left),
                format::decimal(b.gpu_hours_per_month)
            ),
            (Some(b), None) => format!("? of {} GPU-hours", format::decimal(b.gpu_hours_per_month)),
        };
        let period = status.period.map_or(String::new(), |p| format!(" ({p})"));
        table.row(vec![
            name,
            format!("total{period}"),
            t.spec
                .quota
                .iter()
                .map(|q| i64::from(q.gpus))
                .sum::<i64>()
                .to_string(),
            status.gpus_in_use.to_string(),
            format::decimal(status.gpu_hours),
            format::decimal(status.energy_kwh),
            budget,
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifactory_api::TenantSpec;

    fn tenant(name: &str, spec: &str, status: &str) -> Tenant {
        let spec: TenantSpec = serde_json::from_str(spec).unwrap();
        let mut t = Tenant::new(name, spec);
        t.status = Some(serde_json::from_str(status).unwrap());
        t
    }

    #[test]
    fn each_pool_of_a_tenant_then_its_total_and_budget() {
        let acme = tenant(
            "acme",
            r#"{"owners": [{"kind": "User", "name": "alice"}],
                "quota": [{"pool": "h100", "gpus": 16}, {"pool": "a100", "gpus": 8}],
                "budget": {"gpuHoursPerMonth": 500}}"#,
            r#"{"gpusInUse": 24, "gpuHours": 380.25, "energyKWh": 266.2, "period": "2025-01",
                "budgetRemainingGpuHours": 119.75,
                "usage": [{"pool": "h100", "gpusInUse": 16, "gpuHours": 300.0, "energyKWh": 210.0},
                          {"pool": "l40s", "gpusInUse": 8, "gpuHours": 80.25, "energyKWh": 56.2}]}"#,
        );
        let beta = tenant(
            "beta",
            r#"{"owners": [{"kind": "User", "name": "bob"}]}"#,
            "{}",
        );
        assert_eq!(
            render(&[beta, acme]),
            "TENANT   POOL              GUARANTEED   IN USE   GPU-HOURS   KWH     BUDGET LEFT\n\
             acme     h100              16           16       300.0       210.0\n\
             acme     a100              8            0        0.0         0.0\n\
             acme     l40s              -            8        80.2        56.2\n\
             acme     total (2025-01)   24           24       380.2       266.2   119.8 of 500.0 GPU-hours\n\
             beta     total             0            0        0.0         0.0     no budget\n"
        );
    }
}
