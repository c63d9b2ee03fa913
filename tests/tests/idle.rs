//! An idle operator writes nothing: with 3 tenants and 2 pools reconciled, the API
//! server's audit log shows no write request from the operator's user for 60 s
//! (its leader Lease renewals aside, which are how two replicas stay safe).
//! A test binary of its own, so no other test's objects move during the window.
use aifactory_api::{GpuPool, Tenant};
use aifactory_tests::*;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use std::io::{BufRead, Seek, SeekFrom};
use std::time::Duration;

const OPERATOR_USER: &str = "aifactory-operator";
const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// The operator's write requests in the audit log after byte `offset`.
fn operator_writes(offset: u64) -> anyhow::Result<Vec<String>> {
    let mut file = std::fs::File::open(state_dir().join("audit.log"))?;
    file.seek(SeekFrom::Start(offset))?;
    let mut writes = vec![];
    for line in std::io::BufReader::new(file).lines() {
        let Ok(event) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        let verb = event["verb"].as_str().unwrap_or_default();
        let resource = event["objectRef"]["resource"].as_str().unwrap_or_default();
        if event["user"]["username"] == OPERATOR_USER
            && WRITES.contains(&verb)
            && resource != "leases"
        {
            writes.push(format!(
                "{verb} {resource}/{}",
                event["objectRef"]["name"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(writes)
}

#[tokio::test]
async fn an_idle_operator_writes_nothing_for_a_minute() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let group = unique_name("idle");
    let _h100 = FakeNodes::create(&client, &group, 2, "H100-80GB", 8).await?;
    let _a100 = FakeNodes::create(&client, &format!("{group}-a"), 2, "A100-40GB", 8).await?;
    let mut cleanup = Cleanup(vec![]);
    let pools = Api::<GpuPool>::all(client.clone());
    for (model, g) in [
        ("H100-80GB", group.clone()),
        ("A100-40GB", format!("{group}-a")),
    ] {
        let name = unique_name("idle-pool");
        let pool: GpuPool = serde_json::from_value(
            json!({"apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {TEST_GROUP: g}}, "gpu": {"model": model, "perNode": 8, "powerWatts": 500},
                     "dedicated": true, "location": {"region": "eu-west"}}}),
        )?;
        pools.create(&PostParams::default(), &pool).await?;
        cleanup.0.push(("gpupool", name));
    }
    let tenants = Api::<Tenant>::all(client.clone());
    for i in 0..3 {
        let name = unique_name(&format!("idle-tenant{i}"));
        let tenant: Tenant = serde_json::from_value(
            json!({"apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"owners": [{"kind": "User", "name": format!("{name}-owner")}], "members": [{"kind": "Group", "name": "g"}],
                     "quota": [{"pool": cleanup.0[0].1, "gpus": 8}]}}),
        )?;
        tenants.create(&PostParams::default(), &tenant).await?;
        cleanup.0.push(("tenant", name));
    }
    let ours: Vec<String> = cleanup.0.iter().map(|(_, n)| n.clone()).collect();
    wait_for(
        "the pools and tenants to be reconciled, and nothing else being deleted",
        Duration::from_secs(300),
        || {
            let (pools, tenants, ours, client) =
                (pools.clone(), tenants.clone(), ours.clone(), client.clone());
            async move {
                let p = pools.list(&ListParams::default()).await?;
                let t = tenants.list(&ListParams::default()).await?;
                let reconciled = p
                    .items
                    .iter()
                    .filter(|x| ours.contains(&x.name_any()))
                    .all(|x| x.status.as_ref().is_some_and(|s| s.nodes == 2))
                    && t.items
                        .iter()
                        .filter(|x| ours.contains(&x.name_any()))
                        .all(|x| {
                            x.status.as_ref().is_some_and(|s| {
                                s.conditions
                                    .iter()
                                    .any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                        });
                // Objects of earlier test binaries still being deleted would make
                // the operator act (and write) during the window.
                let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                    .list(&ListParams::default())
                    .await?;
                let settling = p
                    .items
                    .iter()
                    .any(|x| x.metadata.deletion_timestamp.is_some())
                    || t.items
                        .iter()
                        .any(|x| x.metadata.deletion_timestamp.is_some())
                    || namespaces
                        .items
                        .iter()
                        .any(|x| x.metadata.deletion_timestamp.is_some());
                Ok((reconciled && !settling).then_some(()))
            }
        },
    )
    .await?;
    // Let debounced reconciles of the last changes finish before the window opens.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let start = std::fs::metadata(state_dir().join("audit.log"))?.len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let writes = operator_writes(start)?;
    assert!(
        writes.is_empty(),
        "an idle operator wrote {} times in 60 s: {:?}",
        writes.len(),
        &writes[..writes.len().min(20)]
    );

    // The audit log does see the operator: its lease renewals are there.
    let mut file = std::fs::File::open(state_dir().join("audit.log"))?;
    file.seek(SeekFrom::Start(start))?;
    let renewals = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains(OPERATOR_USER) && l.contains("\"leases\""))
        .count();
    assert!(
        renewals > 0,
        "no request of {OPERATOR_USER} in the audit log at all: is the audit log read right?"
    );
    Ok(())
}
