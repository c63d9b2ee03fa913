//! The Workspace controller on the local factory: home and scratch claims bound,
//! datasets checked like a job's, a session reported as waiting for admission.
mod data_common;

use aifactory_api::{Workspace, WorkspacePhase};
use aifactory_tests::*;
use data_common::*;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
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
               "interactive": {"image": "jupyter/pytorch-notebook:2026.10", "pool": "h100-lux", "gpus": 1}}),
    )
    .await?;
    let ws = wait_phase(&client, &acme.name, "bob", WorkspacePhase::Queued).await?;
    let status = ws.status.unwrap();
    assert_eq!(
        status.pending_reason.as_deref(),
        Some("interactive sessions are not yet admitted by this operator version")
    );
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
