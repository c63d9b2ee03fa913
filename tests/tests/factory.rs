//! The local factory is a real cluster: GPU nodes the real scheduler places gangs
//! on, a controller-manager that garbage-collects, and RBAC that refuses.
use aifactory_tests::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const GPU: &str = "nvidia.com/gpu";

/// An Indexed Job of `pods` pods, each asking `gpus` GPUs; kwok finishes each pod
/// `seconds` after it starts.
fn gpu_job(name: &str, pods: i32, gpus: i32, seconds: u32) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": pods,
            "parallelism": pods,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"aifactory.dev/simulate-duration": format!("{seconds}s")}},
                "spec": {
                    "restartPolicy": "Never",
                    // One pod per node, as a distributed training gang needs.
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"job-name": name}},
                        "topologyKey": "kubernetes.io/hostname"
                    }]}},
                    "containers": [{
                        "name": "train",
                        "image": "example.invalid/train:1",
                        "resources": {"limits": {GPU: gpus.to_string()}}
                    }]
                }
            }
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn simulated_gpu_nodes_are_ready_with_eight_gpus_and_topology_labels() -> anyhow::Result<()> {
    let client = admin().await?;
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default().labels("type=kwok"))
        .await?;
    assert!(
        nodes.items.len() >= expected_gpu_nodes(),
        "expected at least {} simulated GPU nodes, found {}",
        expected_gpu_nodes(),
        nodes.items.len()
    );
    for node in &nodes.items {
        let name = node.metadata.name.as_deref().unwrap();
        let status = node.status.as_ref().expect("node status");
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "{name} is not Ready");
        let gpus = status
            .allocatable
            .as_ref()
            .and_then(|a| a.get(GPU))
            .map(|q| q.0.as_str());
        if name.starts_with("gpu-node-") {
            assert_eq!(gpus, Some("8"), "{name} allocatable {GPU}");
        } else {
            assert!(gpus.is_some(), "{name} has no {GPU}");
        }
        let labels = node.metadata.labels.as_ref().unwrap();
        for key in [
            "topology.aifactory.dev/block",
            "topology.aifactory.dev/rack",
            "nvidia.com/gpu.product",
        ] {
            assert!(labels.contains_key(key), "{name} lacks label {key}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn scheduler_places_an_indexed_gpu_job_on_distinct_nodes_and_kwok_completes_it()
-> anyhow::Result<()> {
    let client = admin().await?;
    let ns = TestNamespace::new(&client, "gang").await?;
    let jobs = Api::<Job>::namespaced(client.clone(), &ns.name);
    jobs.create(&PostParams::default(), &gpu_job("gang", 4, 8, 3))
        .await?;

    wait_for("the job to complete", Duration::from_secs(90), || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get("gang").await?;
            Ok((job.status.and_then(|s| s.succeeded) == Some(4)).then_some(()))
        }
    })
    .await?;

    let pods = Api::<Pod>::namespaced(client, &ns.name)
        .list(&ListParams::default().labels("job-name=gang"))
        .await?;
    let nodes: BTreeSet<_> = pods
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(pods.items.len(), 4, "one pod per completion index");
    assert_eq!(nodes.len(), 4, "pods share nodes: {nodes:?}");
    assert!(
        nodes.iter().all(|n| n.starts_with("gpu-node-")),
        "{nodes:?}"
    );
    for pod in &pods.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        assert_eq!(phase, Some("Succeeded"), "{:?}", pod.metadata.name);
    }
    Ok(())
}

#[tokio::test]
async fn a_pod_asking_more_gpus_than_any_node_has_stays_pending() -> anyhow::Result<()> {
    let client = admin().await?;
    let ns = TestNamespace::new(&client, "toobig").await?;
    Api::<Job>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &gpu_job("toobig", 1, 9, 3))
        .await?;
    let pods = Api::<Pod>::namespaced(client, &ns.name);
    let message = wait_for(
        "the scheduler to refuse the pod",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("job-name=toobig"))
                    .await?;
                let refused = list.items.iter().find_map(|p| {
                    let status = p.status.as_ref()?;
                    let cond = status
                        .conditions
                        .iter()
                        .flatten()
                        .find(|c| c.type_ == "PodScheduled")?;
                    (cond.status == "False" && cond.reason.as_deref() == Some("Unschedulable"))
                        .then(|| {
                            (
                                status.phase.clone(),
                                cond.message.clone().unwrap_or_default(),
                            )
                        })
                });
                Ok(refused)
            }
        },
    )
    .await?;
    assert_eq!(message.0.as_deref(), Some("Pending"));
    assert!(
        message.1.contains("Insufficient nvidia.com/gpu"),
        "scheduler said: {}",
        message.1
    );
    Ok(())
}

#[tokio::test]
async fn controller_manager_garbage_collects_what_an_owner_owned() -> anyhow::Result<()> {
    let client = admin().await?;
    let ns = TestNamespace::new(&client, "gc").await?;
    let maps = Api::<ConfigMap>::namespaced(client, &ns.name);
    let owner = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}}))?,
        )
        .await?;
    let child: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "child", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.unwrap()
        }]}}),
    )?;
    maps.create(&PostParams::default(), &child).await?;

    maps.delete("owner", &DeleteParams::background()).await?;
    wait_for(
        "the child to be garbage-collected",
        Duration::from_secs(60),
        || {
            let maps = maps.clone();
            async move { Ok(maps.get_opt("child").await?.is_none().then_some(())) }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn rbac_refuses_a_user_without_rights() -> anyhow::Result<()> {
    let admin = admin().await?;
    let ns = TestNamespace::new(&admin, "rbac").await?;
    let nobody = user_with_certificate(&unique_name("nobody"), &["aifactory:test-users"]).await?;
    let err = Api::<Pod>::namespaced(nobody, &ns.name)
        .list(&ListParams::default())
        .await
        .expect_err("a user without any binding listed pods");
    assert_eq!(status_code(&err), Some(403), "{err}");
    // The same request as admin succeeds: the refusal is RBAC, not a broken client.
    Api::<Pod>::namespaced(admin, &ns.name)
        .list(&ListParams::default())
        .await?;
    Ok(())
}
