//! The Workspace controller on the local factory: home and scratch claims bound,
//! datasets checked like a job's, interactive sessions admitted against the
//! tenant's quota by the admission pass and stopped at maxLifetime.
mod data_common;

use aifactory_api::{Tenant, Workspace, WorkspacePhase};
use aifactory_tests::*;
use data_common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

async fn create_workspace(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<()> {
    let ws: Workspace = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))?;
    Api::<Workspace>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &ws)
        .await?;
    Ok(())
}

async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: WorkspacePhase,
) -> anyhow::Result<Workspace> {
    let api = Api::<Workspace>::namespaced(client.clone(), ns);
    wait_for(&format!("workspace {ns}/{name} {phase:?}"), WAIT, || {
        let api = api.clone();
        async move {
            let w = api.get(name).await?;
            Ok((w.status.as_ref().and_then(|s| s.phase) == Some(phase)).then_some(w))
        }
    })
    .await
}

#[tokio::test]
async fn a_workspace_gets_its_home_and_scratch_claims_bound() -> anyhow::Result<()> {
    let client = setup().await?;
    let acme = tenant(&client, "ws-acme", json!({})).await?;
    create_workspace(
        &client,
        &acme.name,
        "alice",
        json!({"storage": {"home": "2Gi", "scratch": "8Gi"}}),
    )
    .await?;
    let ws = wait_phase(&client, &acme.name, "alice", WorkspacePhase::Ready).await?;
    let status = ws.status.unwrap();
    assert_eq!(
        status.volumes,
        ["workspace-alice-home", "workspace-alice-scratch"]
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "VolumesBound")
    );
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &acme.name);
    for (claim, size) in [
        ("workspace-alice-home", "2Gi"),
        ("workspace-alice-scratch", "8Gi"),
    ] {
        assert!(
            claim_bound(&client, &acme.name, claim).await?,
            "{claim} bound"
        );
        let c = claims.get(claim).await?;
        assert_eq!(
            c.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
            size
        );
    }

    // Scratch no longer wanted: its claim goes, home stays.
    Api::<Workspace>::namespaced(client.clone(), &acme.name)
        .patch(
            "alice",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"storage": {"scratch": null}}})),
        )
        .await?;
    wait_for("scratch claim deleted", WAIT, || {
        let claims = claims.clone();
        async move {
            Ok(claims
                .get_opt("workspace-alice-scratch")
                .await?
                .is_none_or(|c| c.metadata.deletion_timestamp.is_some())
                .then_some(()))
        }
    })
    .await?;
    assert!(claim_bound(&client, &acme.name, "workspace-alice-home").await?);
    Ok(())
}

#[tokio::test]
async fn a_workspace_mounts_its_own_ready_dataset_and_its_session_waits_for_admission()
-> anyhow::Result<()> {
    let client = setup().await?;
    let acme = tenant(&client, "ws-session", json!({})).await?;
    create_dataset(
        &client,
        &acme.name,
        "robot-demos",
        json!({}),
        json!({"size": "1Gi", "accessModes": ["ReadOnlyMany"]}),
    )
    .await?;
    create_workspace(
        &client,
        &acme.name,
        "bob",
        json!({"storage": {"home": "1Gi"},
               "datasets": [{"name": "robot-demos"}],
               "interactive": {"image": "jupyter/pytorch-notebook:2026.10", "pool": "no-such-pool", "gpus": 1}}),
    )
    .await?;
    // The session names a pool that does not exist: it waits, saying so.
    let api = Api::<Workspace>::namespaced(client.clone(), &acme.name);
    let ws = wait_for("bob's session waiting on its pool", WAIT, || {
        let api = api.clone();
        async move {
            let w = api.get("bob").await?;
            Ok(w.status
                .as_ref()
                .is_some_and(|s| {
                    s.phase == Some(WorkspacePhase::Queued)
                        && s.pending_reason.as_deref() == Some("unknown pool no-such-pool")
                })
                .then_some(w))
        }
    })
    .await?;
    let status = ws.status.unwrap();
    assert_eq!(status.volumes, ["workspace-bob-home"]);
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "volumes bound and the dataset mountable"
    );

    // A dataset that does not exist is named as such.
    create_workspace(
        &client,
        &acme.name,
        "carol",
        json!({"storage": {"home": "1Gi"}, "datasets": [{"name": "no-such-data"}]}),
    )
    .await?;
    let ws = wait_phase(&client, &acme.name, "carol", WorkspacePhase::Failed).await?;
    let ready = ws
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "DatasetNotFound");
    Ok(())
}

/// Status of workspace `name` once `check` holds.
async fn wait_workspace(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&aifactory_api::WorkspaceStatus) -> bool,
) -> anyhow::Result<aifactory_api::WorkspaceStatus> {
    let api = Api::<Workspace>::namespaced(client.clone(), ns);
    wait_for(&format!("workspace {ns}/{name}: {what}"), WAIT, || {
        let api = api.clone();
        let check = &check;
        async move {
            let w = api.get(name).await?;
            Ok(w.status.filter(check))
        }
    })
    .await
}

#[tokio::test]
async fn a_session_is_admitted_against_the_quota_and_stopped_at_max_lifetime() -> anyhow::Result<()>
{
    let client = setup().await?;
    // Built before the clock of alice's session starts ticking.
    kubectl_factory_binary();
    // One 8-GPU node in a pool of its own; the tenant is guaranteed 4 GPUs and may
    // not borrow.
    let group = unique_name("ws-gpu");
    let nodes = FakeNodes::create(&client, &group, 1, "H100-80GB", 8).await?;
    let (pool, _pool) = dedicated_pool(&client, &group, 1).await?;
    let acme = tenant(
        &client,
        "ws-quota",
        json!({"quota": [{"pool": pool, "gpus": 4, "borrowingLimit": 0}]}),
    )
    .await?;
    let ns = acme.name.clone();
    let session = |gpus: i32, lifetime: &str| {
        json!({"storage": {"home": "1Gi"},
               "interactive": {"image": "jupyter/pytorch-notebook:2026.10", "pool": pool,
                               "gpus": gpus, "maxLifetime": lifetime, "port": 8888}})
    };

    // Alice's 4-GPU session fits the guarantee: admitted, pinned to the node,
    // reachable through its Service, counted in the tenant's usage.
    create_workspace(&client, &ns, "alice", session(4, "70s")).await?;
    let alice = wait_workspace(&client, &ns, "alice", "session running and ready", |s| {
        s.phase == Some(WorkspacePhase::Running)
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Session" && c.status == "True")
    })
    .await?;
    assert_eq!(alice.session_node.as_deref(), Some(nodes.names[0].as_str()));
    assert_eq!(
        alice.endpoint.as_deref(),
        Some(format!("alice-session.{ns}.svc:8888").as_str())
    );
    let sets = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let sts = sets.get("alice-session").await?;
    let template = sts.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        template.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()["nvidia.com/gpu"]
            .0,
        "4"
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod = pods.get("alice-session-0").await?;
    assert_eq!(
        pod.spec.unwrap().node_name.as_deref(),
        Some(nodes.names[0].as_str()),
        "the pod runs on the node admission chose"
    );
    let svc = Api::<Service>::namespaced(client.clone(), &ns)
        .get("alice-session")
        .await?;
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8888);
    let tenants = Api::<Tenant>::all(client.clone());
    wait_for("alice's GPUs in the tenant's usage", WAIT, || {
        let tenants = tenants.clone();
        let ns = ns.clone();
        async move {
            Ok(tenants
                .get(&ns)
                .await?
                .status
                .is_some_and(|s| s.gpus_in_use == 4)
                .then_some(()))
        }
    })
    .await?;

    // Bob's 2 GPUs would take the tenant past its quota while the node has room:
    // he waits, told why.
    create_workspace(&client, &ns, "bob", session(2, "1h")).await?;
    let bob = wait_workspace(&client, &ns, "bob", "queued on the quota", |s| {
        s.phase == Some(WorkspacePhase::Queued)
            && s.pending_reason
                .as_deref()
                .is_some_and(|r| r.contains("quota"))
    })
    .await?;
    assert_eq!(bob.session_node, None);
    assert!(
        sets.get_opt("bob-session").await?.is_none(),
        "a waiting session has no StatefulSet"
    );
    // `kubectl factory queue` shows the session in its pool's queue.
    let queue = kubectl_factory(&admin_kubeconfig(), &["queue", "-n", &ns])?;
    let row = queue
        .lines()
        .find(|l| l.contains("workspace/bob"))
        .unwrap_or_else(|| panic!("bob's session in the queue:\n{queue}"));
    assert!(row.starts_with(&format!("{pool}   1   {ns}")), "{row}");
    assert!(row.contains("2 (1x2)") && row.contains("quota"), "{row}");

    // At maxLifetime alice's session is stopped: Expired, its StatefulSet gone,
    // and her GPUs go to bob.
    let expired = wait_workspace(&client, &ns, "alice", "expired", |s| {
        s.phase == Some(WorkspacePhase::Expired)
    })
    .await?;
    assert_eq!((expired.session_node, expired.endpoint), (None, None));
    assert!(
        expired
            .pending_reason
            .is_some_and(|r| r.contains("maxLifetime of 70s")),
    );
    wait_gone(&sets, "alice-session", "alice's StatefulSet").await?;
    // Her 4 GPUs for the session's 70 s are settled in the tenant's ledger: the
    // session's hours count against the budget after it ends.
    let ledger = wait_for("alice's GPU-hours in the ledger", WAIT, || {
        let tenants = tenants.clone();
        let ns = ns.clone();
        async move { Ok(tenants.get(&ns).await?.status.and_then(|s| s.ledger)) }
    })
    .await?;
    assert_eq!(ledger.usage[0].pool, pool);
    // Counted to the second: 70 s and the moment it took to stop it.
    let hours = ledger.usage[0].gpu_hours;
    assert!(
        (4.0 * 70.0 / 3600.0..4.0 * 90.0 / 3600.0).contains(&hours),
        "4 GPUs × 70 to 90 s: {ledger:?}"
    );
    let bob = wait_workspace(&client, &ns, "bob", "admitted after alice", |s| {
        s.phase == Some(WorkspacePhase::Running)
    })
    .await?;
    assert_eq!(bob.session_node.as_deref(), Some(nodes.names[0].as_str()));
    let reasons: Vec<String> = events_on(&client, &ns, "Workspace", "alice")
        .await?
        .into_iter()
        .map(|(_, reason, _)| reason)
        .collect();
    for want in ["Admitted", "SessionExpired"] {
        assert!(reasons.iter().any(|r| r == want), "{want} in {reasons:?}");
    }
    // An expired session stays stopped: nothing runs for alice.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(sets.get_opt("alice-session").await?.is_none());

    // Bob asks for more GPUs than his tenant's quota: the admitted shape no longer
    // holds, so his session stops and queues again, told why.
    Api::<Workspace>::namespaced(client.clone(), &ns)
        .patch(
            "bob",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"interactive": {"gpus": 6}}})),
        )
        .await?;
    let bob = wait_workspace(&client, &ns, "bob", "requeued on the quota", |s| {
        s.phase == Some(WorkspacePhase::Queued)
            && s.pending_reason
                .as_deref()
                .is_some_and(|r| r.contains("quota"))
    })
    .await?;
    assert_eq!(bob.session_node, None);
    wait_gone(&sets, "bob-session", "bob's StatefulSet").await?;
    Ok(())
}
