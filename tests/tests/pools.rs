//! The GpuPool controller on the local factory: members are labelled (and tainted
//! when dedicated), nodes that leave are cleaned, conflicts go to the older pool,
//! and the status counts the GPUs running pods hold.
use aifactory_api::{GpuPool, POOL_LABEL, POOL_TAINT};
use aifactory_tests::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn pool(name: &str, group: &str, model: &str, dedicated: bool) -> GpuPool {
    serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": name},
        "spec": {"nodeSelector": {"matchLabels": {TEST_GROUP: group, "nvidia.com/gpu.product": model}},
                 "gpu": {"model": model, "perNode": 8, "powerWatts": 700},
                 "dedicated": dedicated, "location": {"region": "eu-west"}}
    }))
    .unwrap()
}

async fn create_pool(client: &Client, p: &GpuPool) -> anyhow::Result<Cleanup> {
    Api::<GpuPool>::all(client.clone())
        .create(&PostParams::default(), p)
        .await?;
    Ok(Cleanup::one("gpupool", p.name_any()))
}

fn pool_of(node: &Node) -> Option<String> {
    node.labels().get(POOL_LABEL).cloned()
}

fn tainted_by(node: &Node, pool: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter().any(|t| {
                t.key == POOL_TAINT && t.value.as_deref() == Some(pool) && t.effect == "NoSchedule"
            })
        })
}

/// Waits until the group's nodes carry exactly `want` (node → pool label, tainted).
async fn wait_nodes(
    client: &Client,
    group: &str,
    want: &[(&str, Option<&str>, bool)],
) -> anyhow::Result<()> {
    let api = Api::<Node>::all(client.clone());
    wait_for(&format!("nodes of {group} to be {want:?}"), WAIT, || {
        let api = api.clone();
        async move {
            let nodes = api
                .list(&ListParams::default().labels(&format!("{TEST_GROUP}={group}")))
                .await?;
            let ok = want.iter().all(|(name, pool, taint)| {
                nodes
                    .items
                    .iter()
                    .find(|n| n.name_any() == *name)
                    .is_some_and(|n| {
                        pool_of(n).as_deref() == *pool
                            && pool.is_none_or(|p| tainted_by(n, p) == *taint)
                            && (pool.is_some()
                                || !n
                                    .spec
                                    .as_ref()
                                    .and_then(|s| s.taints.as_ref())
                                    .is_some_and(|ts| ts.iter().any(|t| t.key == POOL_TAINT)))
                    })
            });
            Ok(ok.then_some(()))
        }
    })
    .await
}

async fn wait_status(
    client: &Client,
    name: &str,
    what: &str,
    check: impl Fn(&GpuPool) -> bool,
) -> anyhow::Result<GpuPool> {
    let api = Api::<GpuPool>::all(client.clone());
    wait_for(&format!("pool {name}: {what}"), WAIT, || {
        let api = api.clone();
        let check = &check;
        async move {
            let p = api.get(name).await?;
            Ok(check(&p).then_some(p))
        }
    })
    .await
}

#[tokio::test]
async fn a_dedicated_pool_labels_and_taints_its_nodes_follows_them_and_releases_them()
-> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let group = unique_name("pool-life");
    let mut nodes = FakeNodes::create(&client, &group, 3, "H100-80GB", 8).await?;
    nodes
        .add(&client, &format!("{group}-a100"), "A100-40GB", 8)
        .await?;
    let name = unique_name("h100");
    let _guard = create_pool(&client, &pool(&name, &group, "H100-80GB", true)).await?;
    let (n0, n1, n2, other) = (
        format!("{group}-0"),
        format!("{group}-1"),
        format!("{group}-2"),
        format!("{group}-a100"),
    );

    wait_nodes(
        &client,
        &group,
        &[
            (&n0, Some(&name), true),
            (&n1, Some(&name), true),
            (&n2, Some(&name), true),
            (&other, None, false),
        ],
    )
    .await?;
    let p = wait_status(&client, &name, "3 ready nodes, 24 GPUs", |p| {
        p.status.as_ref().is_some_and(|s| {
            s.nodes == 3 && s.ready_nodes == 3 && s.gpus.capacity == 24 && s.gpus.free == 24
        })
    })
    .await?;
    assert!(
        p.finalizers()
            .iter()
            .any(|f| f == "aifactory.dev/node-labels")
    );

    // A node relabelled out of the selector leaves the pool: label and taint go.
    let node_api = Api::<Node>::all(client.clone());
    node_api
        .patch(
            &n2,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"nvidia.com/gpu.product": "L40S"}}})),
        )
        .await?;
    wait_nodes(
        &client,
        &group,
        &[(&n2, None, false), (&n0, Some(&name), true)],
    )
    .await?;
    // A new matching node joins.
    nodes
        .add(&client, &format!("{group}-3"), "H100-80GB", 8)
        .await?;
    let n3 = format!("{group}-3");
    wait_nodes(&client, &group, &[(&n3, Some(&name), true)]).await?;
    // A cordoned node stays a member but is no longer ready for work.
    node_api
        .patch(
            &n0,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    wait_status(&client, &name, "3 nodes, 2 ready", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.nodes == 3 && s.ready_nodes == 2 && s.gpus.allocatable == 16)
    })
    .await?;

    // Deleting the pool releases every node and the finalizer lets it go.
    Api::<GpuPool>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await?;
    wait_nodes(
        &client,
        &group,
        &[(&n0, None, false), (&n1, None, false), (&n3, None, false)],
    )
    .await?;
    let pools = Api::<GpuPool>::all(client.clone());
    wait_for("the pool to be gone", WAIT, || {
        let pools = pools.clone();
        let name = name.clone();
        async move { Ok(pools.get_opt(&name).await?.is_none().then_some(())) }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_node_selected_by_two_pools_stays_with_the_older_and_both_report_the_conflict()
-> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let group = unique_name("pool-conflict");
    let _nodes = FakeNodes::create(&client, &group, 2, "H100-80GB", 8).await?;
    let old = unique_name("old");
    let _g1 = create_pool(&client, &pool(&old, &group, "H100-80GB", false)).await?;
    wait_status(&client, &old, "2 nodes", |p| {
        p.status.as_ref().is_some_and(|s| s.nodes == 2)
    })
    .await?;
    // Creation timestamps have one-second resolution: make the second pool younger.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let young = unique_name("young");
    let _g2 = create_pool(&client, &pool(&young, &group, "H100-80GB", false)).await?;

    let conflicted = |p: &GpuPool| {
        p.status.as_ref().is_some_and(|s| {
            s.conflicts.len() == 2
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "NodeConflict" && c.status == "True")
        })
    };
    let o = wait_status(&client, &old, "conflict reported", conflicted).await?;
    let y = wait_status(&client, &young, "conflict reported, no nodes", |p| {
        conflicted(p) && p.status.as_ref().unwrap().nodes == 0
    })
    .await?;
    assert_eq!(
        o.status.as_ref().unwrap().nodes,
        2,
        "the older pool keeps both nodes"
    );
    assert!(y.status.unwrap().conflicts.iter().all(|c| c.kept_by == old));
    wait_nodes(
        &client,
        &group,
        &[
            (&format!("{group}-0"), Some(&old), false),
            (&format!("{group}-1"), Some(&old), false),
        ],
    )
    .await?;
    // Events of cluster-scoped objects land in "default".
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "default");
    wait_for("a NodeConflict event on the younger pool", WAIT, || {
        let events = events.clone();
        let young = young.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("NodeConflict")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some(young.as_str())
                })
                .then_some(()))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn pool_status_counts_the_gpus_that_running_pods_hold_and_their_power() -> anyhow::Result<()>
{
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let group = unique_name("pool-usage");
    let _nodes = FakeNodes::create(&client, &group, 2, "H100-80GB", 8).await?;
    let name = unique_name("usage");
    let _guard = create_pool(&client, &pool(&name, &group, "H100-80GB", true)).await?;
    wait_status(&client, &name, "16 free GPUs", |p| {
        p.status.as_ref().is_some_and(|s| s.gpus.free == 16)
    })
    .await?;

    let ns = TestNamespace::new(&client, "pool-usage").await?;
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "trainer"}, "spec": {
        "nodeSelector": {POOL_LABEL: name},
        "tolerations": [{"key": POOL_TAINT, "operator": "Equal", "value": name, "effect": "NoSchedule"}],
        "containers": [{"name": "train", "image": "train:1", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}))?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await?;
    let p = wait_status(&client, &name, "8 allocated", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.gpus.allocated == 8 && s.gpus.free == 8)
    })
    .await?;
    assert!(
        (p.status.unwrap().power_kilowatts - 5.6).abs() < 1e-9,
        "8 GPUs x 700 W = 5.6 kW"
    );

    pods.delete("trainer", &DeleteParams::default()).await?;
    wait_status(&client, &name, "GPUs released", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.gpus.allocated == 0 && s.gpus.free == 16)
    })
    .await?;
    Ok(())
}
