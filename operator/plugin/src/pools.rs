//! `kubectl factory pools`: each GPU pool's nodes, GPUs and power, from the
//! GpuPool status the operator keeps.
use crate::format;
use crate::table::Table;
use aifactory_api::GpuPool;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

pub async fn fetch(client: &Client) -> anyhow::Result<Vec<GpuPool>> {
    Ok(Api::<GpuPool>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

/// One row per pool; `None` when there is none.
pub fn render(pools: &[GpuPool]) -> Option<String> {
    if pools.is_empty() {
        return None;
    }
    let mut pools: Vec<&GpuPool> = pools.iter().collect();
    pools.sort_by_key(|p| p.name_any());
    let mut table = Table::new(&[
        "POOL",
        "MODEL",
        "REGION",
        "NODES",
        "GPUS",
        "ALLOCATED",
        "FREE",
        "POWER KW",
        "CAP KW",
        "STATUS",
    ]);
    for p in pools {
        let s = p.status.clone().unwrap_or_default();
        // Ready, or the reason it is not (NoNodes, NoReadyNodes, …).
        let state = s
            .conditions
            .iter()
            .find(|c| c.type_ == aifactory_api::CONDITION_READY)
            .map_or("Unknown".to_string(), |c| {
                if c.status == "True" {
                    "Ready".to_string()
                } else {
                    c.reason.clone()
                }
            });
        table.row(vec![
            p.name_any(),
            p.spec.gpu.model.clone(),
            p.spec.location.region.clone(),
            format!("{}/{}", s.ready_nodes, s.nodes),
            s.gpus.capacity.to_string(),
            s.gpus.allocated.to_string(),
            s.gpus.free.to_string(),
            format::decimal(s.power_kilowatts),
            p.spec
                .power_cap_kilowatts
                .map_or("-".into(), format::decimal),
            state,
        ]);
    }
    Some(table.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifactory_api::GpuPoolSpec;

    #[test]
    fn a_pool_shows_nodes_ready_of_total_gpus_and_power_against_its_cap() {
        let spec: GpuPoolSpec = serde_json::from_str(
            r#"{"nodeSelector": {"matchLabels": {"pool": "h100"}},
                "gpu": {"model": "H100-80GB", "perNode": 8, "powerWatts": 700},
                "powerCapKilowatts": 60, "location": {"region": "eu-west"}}"#,
        )
        .unwrap();
        let mut pool = GpuPool::new("h100", spec);
        pool.status = Some(
            serde_json::from_str(
                r#"{"nodes": 16, "readyNodes": 15, "powerKilowatts": 44.8,
                    "gpus": {"capacity": 128, "allocatable": 120, "allocated": 64, "free": 56},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "NodesReady", "message": "",
                                    "lastTransitionTime": "2025-01-07T10:00:00Z"}]}"#,
            )
            .unwrap(),
        );
        assert_eq!(
            render(&[pool]).unwrap(),
            "POOL   MODEL       REGION    NODES   GPUS   ALLOCATED   FREE   POWER KW   CAP KW   STATUS\n\
             h100   H100-80GB   eu-west   15/16   128    64          56     44.8       60.0     Ready\n"
        );
    }
}
