//! The Dataset controller on the local factory: a dataset is a bound claim, filled
//! by an import Job that only references its credentials; it is shared read-only
//! with the tenants its owner names, residency permitting, and with nobody else;
//! grants are withdrawn, and datasets deleted, only once no running pod uses them.
mod data_common;

use aifactory_api::{Dataset, DatasetPhase, GpuPool, Workspace};
use aifactory_tests::*;
use data_common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_dataset_becomes_a_bound_claim_named_after_it() -> anyhow::Result<()> {
    let client = setup().await?;
    let acme = tenant(&client, "ds-acme", json!({})).await?;
    create_dataset(
        &client,
        &acme.name,
        "robot-demos",
        json!({}),
        json!({"size": "5Gi", "accessModes": ["ReadWriteOnce"]}),
    )
    .await?;
    let ds = wait_ready(&client, &acme.name, "robot-demos").await?;
    let status = ds.status.unwrap();
    assert_eq!(status.claim_name.as_deref(), Some("robot-demos"));
    assert_eq!(status.region.as_deref(), Some("eu-west"));
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &acme.name)
        .get("robot-demos")
        .await?;
    let spec = claim.spec.unwrap();
    assert_eq!(spec.volume_name, status.volume_name);
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        "5Gi"
    );
    assert_eq!(claim.status.unwrap().phase.as_deref(), Some("Bound"));
    Ok(())
}

#[tokio::test]
async fn an_import_references_its_secret_and_the_dataset_follows_the_job_to_ready()
-> anyhow::Result<()> {
    let client = setup().await?;
    let acme = tenant(&client, "ds-import", json!({})).await?;
    let secret_value = unique_name("never-shown-secret-value");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret_value},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &acme.name)
        .create(&PostParams::default(), &secret)
        .await?;
    create_dataset(
        &client,
        &acme.name,
        "demos",
        json!({"aifactory.dev/simulate-duration": "3s"}),
        json!({"size": "2Gi", "accessModes": ["ReadOnlyMany"],
               "source": {"url": "s3://acme-datasets/robot-demos/v3/", "endpoint": "https://s3.eu-west.example",
                          "secretName": "s3-creds"}}),
    )
    .await?;
    let importing = wait_dataset(&client, &acme.name, "demos", "Importing", |d| {
        phase(d) == Some(DatasetPhase::Importing)
    })
    .await?;
    let job = Api::<Job>::namespaced(client.clone(), &acme.name)
        .get("demos-import")
        .await?;
    let template = job.spec.clone().unwrap().template;
    assert_eq!(
        template.metadata.unwrap().annotations.unwrap()["aifactory.dev/simulate-duration"],
        "3s"
    );
    let pod = template.spec.unwrap();
    let container = &pod.containers[0];
    let env_from = container.env_from.clone().unwrap_or_default();
    assert_eq!(
        env_from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
        Some("s3-creds"),
        "credentials come from the Secret by reference"
    );
    assert_eq!(
        pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .map(|c| (c.claim_name.as_str(), c.read_only)),
        Some(("demos", None)),
        "the import writes the dataset's own claim"
    );
    for (what, text) in [
        ("the Job", serde_json::to_string(&job)?),
        ("the Dataset", serde_json::to_string(&importing)?),
    ] {
        assert!(
            !text.contains(&secret_value),
            "{what} must not hold the secret"
        );
    }
    let ready = wait_ready(&client, &acme.name, "demos").await?;
    assert_eq!(
        condition(&ready, "Ready").map(|c| c.1).as_deref(),
        Some("Imported")
    );
    assert!(ready.status.unwrap().imported_at.is_some());
    let events = events_on(&client, &acme.name, "Dataset", "demos").await?;
    assert!(
        events.iter().all(|e| !e.2.contains(&secret_value)),
        "events must not hold the secret"
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_import_fails_the_dataset_with_the_reason() -> anyhow::Result<()> {
    let client = setup().await?;
    let acme = tenant(&client, "ds-fail", json!({})).await?;
    create_dataset(
        &client,
        &acme.name,
        "benchmark",
        json!({"aifactory.dev/simulate-duration": "1s", "aifactory.dev/simulate-failure": "true"}),
        json!({"size": "1Gi", "source": {"url": "https://data.example/grasping.tar"}}),
    )
    .await?;
    // Two retries with the Job controller's backoff (10 s, 20 s) come first.
    let api = Api::<Dataset>::namespaced(client.clone(), &acme.name);
    let failed = wait_for("dataset benchmark Failed", Duration::from_secs(150), || {
        let api = api.clone();
        async move {
            let d = api.get("benchmark").await?;
            Ok((phase(&d) == Some(DatasetPhase::Failed)).then_some(d))
        }
    })
    .await?;
    let (status, reason, message) = condition(&failed, "Ready").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ImportFailed")
    );
    assert!(message.contains("BackoffLimitExceeded"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_grant_gives_a_read_only_claim_to_that_tenant_and_to_no_other() -> anyhow::Result<()> {
    let client = setup().await?;
    let hospital = tenant(
        &client,
        "ds-hospital",
        json!({"residency": {"regions": ["eu-west"]}}),
    )
    .await?;
    let uni = tenant(&client, "ds-uni", json!({})).await?;
    let startup = tenant(&client, "ds-startup", json!({})).await?;
    create_dataset(
        &client,
        &hospital.name,
        "scans",
        json!({}),
        json!({"size": "3Gi", "accessModes": ["ReadOnlyMany"], "sharing": {"tenants": [uni.name]}}),
    )
    .await?;
    let claim_name = format!("shared.{}.scans", hospital.name);
    let ds = wait_dataset(&client, &hospital.name, "scans", "shared with uni", |d| {
        d.status
            .as_ref()
            .is_some_and(|s| s.consumers.iter().any(|c| c.tenant == uni.name))
    })
    .await?;
    let status = ds.status.unwrap();
    let consumer = &status.consumers[0];
    assert_eq!(
        (consumer.namespace.as_str(), consumer.claim_name.as_str()),
        (uni.name.as_str(), claim_name.as_str())
    );

    // uni's claim: ReadOnlyMany, bound to a read-only volume on the same data.
    wait_for("uni's claim bound", WAIT, || {
        let client = client.clone();
        let (ns, claim) = (uni.name.clone(), claim_name.clone());
        async move { Ok(claim_bound(&client, &ns, &claim).await?.then_some(())) }
    })
    .await?;
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &uni.name)
        .get(&claim_name)
        .await?;
    let claim_spec = claim.spec.clone().unwrap();
    assert_eq!(claim_spec.access_modes.unwrap(), ["ReadOnlyMany"]);
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let shared_pv = pvs.get(claim_spec.volume_name.as_ref().unwrap()).await?;
    let owner_pv = pvs.get(status.volume_name.as_ref().unwrap()).await?;
    let shared_spec = shared_pv.spec.unwrap();
    assert_eq!(shared_spec.access_modes.unwrap(), ["ReadOnlyMany"]);
    let shared_nfs = shared_spec.nfs.unwrap();
    let owner_nfs = owner_pv.spec.unwrap().nfs.unwrap();
    assert_eq!(
        shared_nfs.read_only,
        Some(true),
        "the volume itself is read-only"
    );
    assert_eq!(
        (shared_nfs.server, shared_nfs.path),
        (owner_nfs.server, owner_nfs.path),
        "the same data, not a copy"
    );
    assert_eq!(
        shared_spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );

    // uni deleting its claim gets it back, bound to the same read-only volume.
    let as_uni = uni.as_owner().await?;
    let uni_claims = Api::<PersistentVolumeClaim>::namespaced(as_uni.clone(), &uni.name);
    let first_uid = claim.metadata.uid.clone();
    uni_claims
        .delete(&claim_name, &DeleteParams::default())
        .await?;
    wait_for("uni's claim back and bound", WAIT, || {
        let uni_claims = uni_claims.clone();
        let (claim_name, first_uid) = (claim_name.clone(), first_uid.clone());
        async move {
            let c = uni_claims.get_opt(&claim_name).await?;
            Ok(c.filter(|c| {
                c.metadata.uid != first_uid
                    && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            })
            .map(|_| ()))
        }
    })
    .await?;

    // A member of uni mounts it read-only in uni's namespace.
    Api::<Pod>::namespaced(as_uni.clone(), &uni.name)
        .create(&PostParams::default(), &reader_pod("reader", &claim_name))
        .await?;
    wait_running(&client, &uni.name, "reader").await?;

    // startup has no grant: it cannot mount the hospital's claim where it is...
    let as_startup = startup.as_owner().await?;
    let err = Api::<Pod>::namespaced(as_startup.clone(), &hospital.name)
        .create(&PostParams::default(), &reader_pod("thief", "scans"))
        .await
        .expect_err("another tenant's namespace is closed to startup");
    assert_eq!(status_code(&err), Some(403));
    // ...nor name the dataset in a workspace of its own.
    let ws: Workspace = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "peek", "namespace": startup.name},
        "spec": {"storage": {"home": "1Gi"}, "datasets": [{"name": "scans", "namespace": hospital.name}]},
    }))?;
    let workspaces = Api::<Workspace>::namespaced(as_startup, &startup.name);
    workspaces.create(&PostParams::default(), &ws).await?;
    let refused = wait_for("workspace peek refused", WAIT, || {
        let workspaces = workspaces.clone();
        async move {
            let w = workspaces.get("peek").await?;
            Ok(w.status
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                .filter(|c| c.reason == "DatasetNotGranted"))
        }
    })
    .await?;
    assert_eq!(refused.status, "False");
    assert!(
        refused.message.contains(&hospital.name),
        "{}",
        refused.message
    );
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &startup.name)
            .get_opt(&claim_name)
            .await?
            .is_none()
    );

    // Revoking uni's grant waits for uni's running pod, then removes its claim.
    let datasets = Api::<Dataset>::namespaced(client.clone(), &hospital.name);
    datasets
        .patch(
            "scans",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"sharing": {"tenants": []}}})),
        )
        .await?;
    let revoking = wait_dataset(&client, &hospital.name, "scans", "revoking", |d| {
        condition(d, "Shared").is_some_and(|c| c.2.contains("revoking once unused"))
    })
    .await?;
    assert!(
        revoking.status.unwrap().consumers.is_empty(),
        "no new mounts"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        claim_bound(&client, &uni.name, &claim_name).await?,
        "a running pod keeps its claim"
    );
    Api::<Pod>::namespaced(client.clone(), &uni.name)
        .delete("reader", &DeleteParams::default())
        .await?;
    let uni_claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &uni.name);
    wait_gone(&uni_claims, &claim_name, "uni's claim removed").await?;
    wait_gone(
        &pvs,
        &format!("shared.{}.scans.{}", hospital.name, uni.name),
        "uni's volume removed",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_grant_that_would_move_data_out_of_its_region_is_refused() -> anyhow::Result<()> {
    let client = setup().await?;
    let hospital = tenant(
        &client,
        "ds-eu-west",
        json!({"residency": {"regions": ["eu-west"]}}),
    )
    .await?;
    // Keeps its own data in eu-north only: the hospital's eu-west data is not for it.
    let nordic = tenant(
        &client,
        "ds-nordic",
        json!({"residency": {"regions": ["eu-north"]}}),
    )
    .await?;
    // May run jobs in an eu-north pool: they could carry the data out of eu-west.
    let pool_name = unique_name("ds-helsinki");
    let pool: GpuPool = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": pool_name},
        "spec": {"nodeSelector": {"matchLabels": {"aifactory.dev/no-such-node": pool_name}},
                 "gpu": {"model": "A100-40GB", "perNode": 8, "powerWatts": 400},
                 "location": {"region": "eu-north"}},
    }))?;
    let pools = Api::<GpuPool>::all(client.clone());
    pools.create(&PostParams::default(), &pool).await?;
    let _pool = Cleanup::one("gpupool", pool_name.clone());
    let roaming = tenant(
        &client,
        "ds-roaming",
        json!({"quota": [{"pool": pool_name, "gpus": 8}]}),
    )
    .await?;
    create_dataset(
        &client,
        &hospital.name,
        "scans",
        json!({}),
        json!({"size": "1Gi", "accessModes": ["ReadOnlyMany"],
               "sharing": {"tenants": [nordic.name, roaming.name]}}),
    )
    .await?;
    let ds = wait_dataset(&client, &hospital.name, "scans", "Shared False", |d| {
        condition(d, "Shared").is_some_and(|c| c.0 == "False" && c.1 == "ResidencyViolation")
    })
    .await?;
    let (_, _, message) = condition(&ds, "Shared").unwrap();
    assert!(
        message.contains(&nordic.name) && message.contains("eu-north"),
        "{message}"
    );
    assert!(message.contains(&pool_name), "{message}");
    assert!(ds.status.unwrap().consumers.is_empty());
    let events = wait_for("a ResidencyViolation warning", WAIT, || {
        let client = client.clone();
        let ns = hospital.name.clone();
        async move {
            let events = events_on(&client, &ns, "Dataset", "scans").await?;
            Ok(events
                .iter()
                .any(|e| e.0 == "Warning" && e.1 == "ResidencyViolation")
                .then_some(events))
        }
    })
    .await?;
    assert!(!events.is_empty());
    for consumer in [&nordic, &roaming] {
        let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &consumer.name)
            .list(&Default::default())
            .await?;
        assert!(
            claims.items.is_empty(),
            "no claim in {}'s namespace",
            consumer.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn deleting_a_dataset_waits_until_no_running_pod_uses_it() -> anyhow::Result<()> {
    let client = setup().await?;
    let lab = tenant(&client, "ds-lab", json!({})).await?;
    let partner = tenant(&client, "ds-partner", json!({})).await?;
    create_dataset(
        &client,
        &lab.name,
        "corpus",
        json!({}),
        json!({"size": "1Gi", "accessModes": ["ReadOnlyMany"], "sharing": {"tenants": [partner.name]}}),
    )
    .await?;
    let claim_name = format!("shared.{}.corpus", lab.name);
    wait_dataset(&client, &lab.name, "corpus", "shared", |d| {
        d.status.as_ref().is_some_and(|s| !s.consumers.is_empty())
    })
    .await?;
    wait_for("partner's claim bound", WAIT, || {
        let client = client.clone();
        let (ns, claim) = (partner.name.clone(), claim_name.clone());
        async move { Ok(claim_bound(&client, &ns, &claim).await?.then_some(())) }
    })
    .await?;
    let partner_pods = Api::<Pod>::namespaced(client.clone(), &partner.name);
    partner_pods
        .create(&PostParams::default(), &reader_pod("train-0", &claim_name))
        .await?;
    wait_running(&client, &partner.name, "train-0").await?;

    let datasets = Api::<Dataset>::namespaced(client.clone(), &lab.name);
    datasets.delete("corpus", &DeleteParams::default()).await?;
    let waiting = wait_dataset(&client, &lab.name, "corpus", "InUse", |d| {
        condition(d, "Ready").is_some_and(|c| c.1 == "InUse")
    })
    .await?;
    assert!(condition(&waiting, "Ready").unwrap().2.contains("train-0"));
    let events = events_on(&client, &lab.name, "Dataset", "corpus").await?;
    assert!(events.iter().any(|e| e.1 == "InUse"), "{events:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(datasets.get_opt("corpus").await?.is_some(), "still there");
    assert!(claim_bound(&client, &partner.name, &claim_name).await?);

    partner_pods
        .delete("train-0", &DeleteParams::default())
        .await?;
    wait_gone(&datasets, "corpus", "the dataset deleted").await?;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &partner.name);
    wait_gone(&claims, &claim_name, "partner's claim removed").await?;
    let own = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &lab.name);
    wait_gone(&own, "corpus", "the dataset's own claim removed").await?;
    Ok(())
}

#[tokio::test]
async fn a_claim_the_tenants_storage_quota_refuses_fails_the_dataset_and_the_workspace_with_why()
-> anyhow::Result<()> {
    // Found by the fuzz run (tests/tests/fuzz.rs): a claim the namespace's
    // ResourceQuota refused left the Dataset and the Workspace with no status at
    // all, the refusal only in the operator's log.
    let client = setup().await?;
    let acme = tenant(
        &client,
        "ds-quota",
        json!({"storage": {"maxRequest": "1Gi"}}),
    )
    .await?;
    create_dataset(
        &client,
        &acme.name,
        "too-big",
        json!({}),
        json!({"size": "5Gi", "accessModes": ["ReadWriteOnce"]}),
    )
    .await?;
    let ds = wait_dataset(&client, &acme.name, "too-big", "Failed", |d| {
        phase(d) == Some(DatasetPhase::Failed)
    })
    .await?;
    let (status, reason, message) = condition(&ds, "Ready").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ClaimRefused")
    );
    assert!(message.contains("exceeded quota"), "{message}");
    assert_eq!(
        ds.status.unwrap().observed_generation,
        ds.metadata.generation
    );

    let ws: Workspace = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "alice", "namespace": acme.name},
        "spec": {"storage": {"home": "5Gi"}},
    }))?;
    let workspaces = Api::<Workspace>::namespaced(client.clone(), &acme.name);
    workspaces.create(&PostParams::default(), &ws).await?;
    let ws = wait_for("workspace alice Failed", WAIT, || {
        let workspaces = workspaces.clone();
        async move {
            let ws = workspaces.get("alice").await?;
            Ok(ws
                .status
                .as_ref()
                .is_some_and(|s| s.phase == Some(aifactory_api::WorkspacePhase::Failed))
                .then_some(ws))
        }
    })
    .await?;
    let ready = ws
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ClaimRefused")
    );
    assert!(
        ready.message.contains("exceeded quota"),
        "{}",
        ready.message
    );

    // The quota raised, the claim is made at the next retry (within a minute).
    Api::<aifactory_api::Tenant>::all(client.clone())
        .patch(
            &acme.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"storage": {"maxRequest": "20Gi"}}})),
        )
        .await?;
    wait_for("the dataset's claim made", Duration::from_secs(150), || {
        let client = client.clone();
        let ns = acme.name.clone();
        async move {
            Ok(Api::<PersistentVolumeClaim>::namespaced(client, &ns)
                .get_opt("too-big")
                .await?
                .map(|_| ()))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_dataset_grown_on_a_class_that_cannot_expand_says_the_resize_was_refused()
-> anyhow::Result<()> {
    // A resize is applied as the whole claim with its new size (the fuzz run
    // found the size alone applied under the operator's field manager, which
    // drops what it applied before: 400 or 422). This factory's static volumes
    // cannot expand, so the API refuses it: the dataset says so, stays Ready.
    let client = setup().await?;
    let acme = tenant(&client, "ds-grow", json!({})).await?;
    create_dataset(
        &client,
        &acme.name,
        "growing",
        json!({}),
        json!({"size": "2Gi", "accessModes": ["ReadWriteOnce"]}),
    )
    .await?;
    wait_ready(&client, &acme.name, "growing").await?;
    Api::<Dataset>::namespaced(client.clone(), &acme.name)
        .patch(
            "growing",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"size": "3Gi"}})),
        )
        .await?;
    let ds = wait_dataset(&client, &acme.name, "growing", "Resized=False", |d| {
        condition(d, "Resized").is_some_and(|(s, _, _)| s == "False")
    })
    .await?;
    let (_, reason, message) = condition(&ds, "Resized").unwrap();
    assert_eq!(reason, "ResizeRefused");
    assert!(message.contains("cannot grow to 3Gi"), "{message}");
    // The data stays usable at its old size.
    assert_eq!(phase(&ds), Some(DatasetPhase::Ready));
    Ok(())
}
