//! Killing the operator mid-reconcile and starting it again reaches the same end
//! state, with nothing duplicated: every write is an idempotent apply of a desired
//! state, never "create if I think it is missing". A test binary of its own, since
//! it restarts the operator every other test uses.
use aifactory_api::{
    GpuPool, POOL_LABEL, POOL_TAINT, TENANT_LABEL, Tenant, TrainingJob, TrainingJobPhase,
};
use aifactory_tests::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{LimitRange, Node, Pod, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// SIGKILLs the operator the pid file names and waits until it is gone.
fn kill_operator() -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(state_dir().join("operator.pid"))?
        .trim()
        .to_string();
    Command::new("kill").args(["-KILL", &pid]).status()?;
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting to be reaped: either way it no longer acts.
        if stat.is_empty()
            || stat
                .split(") ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with('Z'))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("operator {pid} survived SIGKILL")
}

async fn count<K>(client: &Client, ns: &str, selector: &str) -> anyhow::Result<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .len())
}

#[tokio::test]
async fn an_operator_killed_mid_reconcile_and_restarted_converges_without_duplicates()
-> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let group = unique_name("restart");
    let nodes = FakeNodes::create(&client, &group, 2, "H100-80GB", 8).await?;
    let pool = format!("{group}-pool");
    let tenant = unique_name("phoenix");
    let namespaces: Vec<String> = (0..3).map(|i| format!("{tenant}-{i}")).collect();
    let _cleanup = Cleanup(vec![("gpupool", pool.clone()), ("tenant", tenant.clone())]);
    let gp: GpuPool = serde_json::from_value(
        json!({"apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": pool},
        "spec": {"nodeSelector": {"matchLabels": {TEST_GROUP: group}}, "gpu": {"model": "H100-80GB", "perNode": 8, "powerWatts": 700},
                 "dedicated": true, "location": {"region": "eu-west"}}}),
    )?;
    let t: Tenant = serde_json::from_value(
        json!({"apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"owners": [{"kind": "User", "name": "o"}], "members": [{"kind": "Group", "name": "m"}],
                 "namespaces": namespaces, "quota": [{"pool": pool, "gpus": 16}]}}),
    )?;

    // Everything arrives at once and the operator dies in the middle of it.
    Api::<GpuPool>::all(client.clone())
        .create(&PostParams::default(), &gp)
        .await?;
    Api::<Tenant>::all(client.clone())
        .create(&PostParams::default(), &t)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_operator()?;
    // While it is down, a job is submitted into the first namespace once it exists.
    let jobs = Api::<TrainingJob>::namespaced(client.clone(), &namespaces[0]);
    let ns_api = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let first_ns_exists = ns_api.get_opt(&namespaces[0]).await?.is_some();
    operator_sh("start")?;
    if !first_ns_exists {
        wait_for("the first namespace", WAIT, || async {
            Ok(ns_api.get_opt(&namespaces[0]).await?.map(|_| ()))
        })
        .await?;
    }
    let tj: TrainingJob = serde_json::from_value(
        json!({"apiVersion": "aifactory.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "run"}, "spec": {"pool": pool, "nodes": 2, "gpusPerNode": 8, "image": "train:1"}}),
    )?;
    jobs.create(&PostParams::default(), &tj).await?;
    wait_for("the job to run", WAIT, || async {
        Ok(jobs
            .get("run")
            .await?
            .status
            .and_then(|s| s.phase)
            .filter(|p| *p == TrainingJobPhase::Running)
            .map(|_| ()))
    })
    .await?;
    // Kill it again while the job runs, and start it once more.
    kill_operator()?;
    operator_sh("start")?;

    let tenants = Api::<Tenant>::all(client.clone());
    wait_for(
        "the tenant Ready with its three namespaces",
        WAIT,
        || async {
            let t = tenants.get(&tenant).await?;
            Ok(t.status
                .filter(|s| {
                    s.namespaces == namespaces
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
                .map(|_| ()))
        },
    )
    .await?;
    // Let the restarted operator go over everything once more.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let selector = format!("{TENANT_LABEL}={tenant}");
    for ns in &namespaces {
        assert_eq!(
            count::<ResourceQuota>(&client, ns, &selector).await?,
            1,
            "{ns} quotas"
        );
        assert_eq!(
            count::<LimitRange>(&client, ns, &selector).await?,
            1,
            "{ns} limit ranges"
        );
        assert_eq!(
            count::<NetworkPolicy>(&client, ns, &selector).await?,
            1,
            "{ns} network policies"
        );
        assert_eq!(
            count::<Role>(&client, ns, &selector).await?,
            2,
            "{ns} roles"
        );
        assert_eq!(
            count::<RoleBinding>(&client, ns, &selector).await?,
            2,
            "{ns} role bindings"
        );
    }
    let crbs = Api::<ClusterRoleBinding>::all(client.clone())
        .list(&ListParams::default().labels(&selector))
        .await?;
    assert_eq!(crbs.items.len(), 1, "cluster role bindings");
    for name in &nodes.names {
        let node = Api::<Node>::all(client.clone()).get(name).await?;
        assert_eq!(node.labels().get(POOL_LABEL), Some(&pool), "{name}");
        let ours = node
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .iter()
            .filter(|t| t.key == POOL_TAINT)
            .count();
        assert_eq!(ours, 1, "{name} carries the pool taint exactly once");
    }
    let batch = Api::<Job>::namespaced(client.clone(), &namespaces[0])
        .list(&ListParams::default())
        .await?;
    assert_eq!(
        batch.items.len(),
        1,
        "one Job for the training job: {:?}",
        batch.items.iter().map(|j| j.name_any()).collect::<Vec<_>>()
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &namespaces[0])
        .list(&ListParams::default())
        .await?;
    let live = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    assert_eq!(live, 2, "one pod per node of the gang");
    let status = jobs.get("run").await?.status.unwrap();
    assert_eq!(status.phase, Some(TrainingJobPhase::Running));
    assert_eq!(
        status.restarts, 0,
        "a restart of the operator is not a restart of the run"
    );

    // The running job is deleted while the operator is down: the restarted
    // operator settles its hours in the ledger once its caches are filled (a
    // tenant not in a cold cache yet is not a tenant gone).
    kill_operator()?;
    jobs.delete("run", &Default::default()).await?;
    operator_sh("start")?;
    wait_for("the deleted job gone", WAIT, || async {
        Ok(jobs.get_opt("run").await?.is_none().then_some(()))
    })
    .await?;
    let ledger = tenants
        .get(&tenant)
        .await?
        .status
        .and_then(|s| s.ledger)
        .expect("the deleted job's hours in the ledger");
    assert_eq!(ledger.usage.len(), 1, "{ledger:?}");
    assert!(
        ledger.usage[0].gpu_hours > 0.0 && ledger.usage[0].gpu_hours >= status.gpu_hours,
        "{ledger:?} vs the job's {} when last accounted",
        status.gpu_hours
    );
    assert_eq!(ledger.settled.len(), 1, "settled once: {ledger:?}");
    Ok(())
}
