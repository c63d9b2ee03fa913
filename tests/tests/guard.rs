//! The queue guard (the chart's ValidatingAdmissionPolicies, installed by
//! hack/operator.sh): nothing gets around admission. A tenant's owner, acting as
//! herself, tries every way past the queue onto a dedicated pool's GPUs — a bare
//! GPU pod, a pod tolerating the pool's taint (with the key, or with none), one
//! naming its node, one at a high priority — and each is refused with a message
//! that says to submit a TrainingJob or a Workspace. Even a cluster admin cannot
//! put GPU workloads there by hand. The operator's own Jobs still run.
use aifactory_api::{POOL_LABEL, POOL_TAINT, Tenant, TrainingJob, TrainingJobPhase};
use aifactory_tests::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// A pod spec Pod Security `restricted` accepts, so that only the guard refuses.
fn restricted_pod(extra: Value, resources: Value) -> Value {
    let mut spec = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "train:1", "resources": resources,
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    spec
}

fn pod(name: &str, spec: Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": spec}),
    )?)
}

/// The create was refused by the queue guard (403, naming the way out).
fn refused_by_guard<T: std::fmt::Debug>(result: kube::Result<T>, what: &str) -> String {
    let err = match result {
        Ok(created) => panic!("{what} was admitted past the queue: {created:?}"),
        Err(e) => e,
    };
    assert_eq!(status_code(&err), Some(403), "{what}: {err}");
    let message = err.to_string();
    assert!(
        message.contains("queue-guard") && message.contains("submit a TrainingJob"),
        "{what}: refused, but not by the queue guard with its advice: {message}"
    );
    message
}

async fn tenant(client: &Client, name: &str, pool: &str) -> anyhow::Result<()> {
    let t: Tenant = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"owners": [{"kind": "User", "name": format!("{name}-owner")}],
                 "quota": [{"pool": pool, "gpus": 16}], "priorityClasses": ["guard-high"]}
    }))?;
    Api::<Tenant>::all(client.clone())
        .create(&PostParams::default(), &t)
        .await?;
    // Ready is written once every child is in place, the owner's RoleBinding
    // included (the quota alone comes first).
    tenant_ready(client, name, WAIT).await?;
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), name);
    let quota = quotas.get("aifactory-tenant").await?;
    anyhow::ensure!(
        quota
            .spec
            .and_then(|s| s.hard)
            .is_some_and(|h| h.contains_key("requests.nvidia.com/gpu")),
        "tenant {name} Ready without a GPU quota"
    );
    Ok(())
}

#[tokio::test]
async fn a_tenant_cannot_get_pool_gpus_or_nodes_around_the_queue() -> anyhow::Result<()> {
    let admin = admin().await?;
    install_crds(&admin).await?;
    require_operator(&admin).await?;
    let group = unique_name("guard");
    let _nodes = FakeNodes::create(&admin, &group, 2, "H100-80GB", 8).await?;
    let (pool, mut cleanup) = dedicated_pool(&admin, &group, 2).await?;
    let class = "guard-high";
    let pc: PriorityClass = serde_json::from_value(json!({
        "metadata": {"name": class}, "value": 100000, "preemptionPolicy": "PreemptLowerPriority"
    }))?;
    match Api::<PriorityClass>::all(admin.clone())
        .create(&PostParams::default(), &pc)
        .await
    {
        Err(e) if status_code(&e) != Some(409) => return Err(e.into()),
        _ => {}
    }
    cleanup.0.insert(0, ("priorityclass", class.to_string()));
    let name = unique_name("guard-t");
    tenant(&admin, &name, &pool).await?;
    cleanup.0.push(("tenant", name.clone()));
    let owner = format!("{name}-owner");

    let gpu = json!({"limits": {"nvidia.com/gpu": "8"}});
    let toleration =
        json!({"key": POOL_TAINT, "operator": "Equal", "value": pool, "effect": "NoSchedule"});
    let on_pool = json!({POOL_LABEL: pool});
    let attacks = [
        (
            "a bare pod requesting 8 GPUs on the pool",
            restricted_pod(
                json!({"nodeSelector": on_pool, "tolerations": [toleration]}),
                gpu.clone(),
            ),
            "nvidia.com/gpu",
        ),
        (
            "a bare pod requesting GPUs with no pool named",
            restricted_pod(
                json!({}),
                json!({"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}),
            ),
            "nvidia.com/gpu",
        ),
        (
            "a CPU pod tolerating the pool's taint",
            restricted_pod(
                json!({"nodeSelector": on_pool, "tolerations": [toleration]}),
                json!({}),
            ),
            "aifactory.dev/pool taint",
        ),
        (
            "a CPU pod tolerating every taint (no key, Exists)",
            restricted_pod(json!({"tolerations": [{"operator": "Exists"}]}), json!({})),
            "aifactory.dev/pool taint",
        ),
        (
            "a CPU pod naming a pool node",
            restricted_pod(json!({"nodeName": format!("{group}-0")}), json!({})),
            "name their node",
        ),
        (
            "a CPU pod at a high priority (scheduler preemption)",
            restricted_pod(json!({"priorityClassName": class}), json!({})),
            "priority 100000",
        ),
    ];
    let as_owner = impersonate(&owner, &[]).await?;
    let pods = Api::<Pod>::namespaced(as_owner.clone(), &name);
    let pp = PostParams::default();
    for (i, (what, spec, says)) in attacks.iter().enumerate() {
        let message = refused_by_guard(
            pods.create(&pp, &pod(&format!("attack-{i}"), spec.clone())?)
                .await,
            what,
        );
        assert!(message.contains(says), "{what}: {message}");
    }
    // The same with a client certificate, not impersonation.
    let with_cert = user_with_certificate(&owner, &[]).await?;
    refused_by_guard(
        Api::<Pod>::namespaced(with_cert, &name)
            .create(&pp, &pod("attack-cert", attacks[0].1.clone())?)
            .await,
        "a GPU pod from a certificate user",
    );
    // The refusals are the guard's, not a refusal of every pod: a plain pod runs.
    pods.create(
        &pp,
        &pod(
            "notebook",
            restricted_pod(json!({}), json!({"requests": {"cpu": "1"}})),
        )?,
    )
    .await?;

    // Workloads with such templates: refused for anyone but the operator, a
    // cluster admin included (tenants have no rights on Deployments or CronJobs).
    let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": attacks[0].1});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "gpu-deployment"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}
    }))?;
    refused_by_guard(
        Api::<Deployment>::namespaced(admin.clone(), &name)
            .create(&pp, &deployment)
            .await,
        "a GPU Deployment by a cluster admin",
    );
    let cron: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "gpu-cron"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
            "spec": restricted_pod(json!({"restartPolicy": "Never", "tolerations": [{"operator": "Exists"}]}), json!({}))}}}}
    }))?;
    refused_by_guard(
        Api::<CronJob>::namespaced(admin.clone(), &name)
            .create(&pp, &cron)
            .await,
        "a CronJob tolerating every taint",
    );

    // The queue's own way in still works: the owner's TrainingJob runs on the pool.
    let tj: TrainingJob = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "queued", "annotations": {"aifactory.dev/simulate-duration": "600s"}},
        "spec": {"pool": pool, "nodes": 2, "gpusPerNode": 8, "image": "train:1", "priority": class}
    }))?;
    let jobs = Api::<TrainingJob>::namespaced(as_owner.clone(), &name);
    jobs.create(&pp, &tj).await?;
    let running = wait_for("the TrainingJob Running past the guard", WAIT, || {
        let jobs = jobs.clone();
        async move {
            let tj = jobs.get("queued").await?;
            Ok(
                (tj.status.as_ref().and_then(|s| s.phase) == Some(TrainingJobPhase::Running))
                    .then_some(tj),
            )
        }
    })
    .await?;
    let placed = running.status.and_then(|s| s.placement).unwrap_or_default();
    assert_eq!(placed.nodes.len(), 2, "{placed:?}");
    let mine = Api::<Pod>::namespaced(admin.clone(), &name)
        .list(&kube::api::ListParams::default().labels("aifactory.dev/trainingjob=queued"))
        .await?;
    assert_eq!(mine.items.len(), 2, "the operator's pods were created");
    assert!(
        mine.items
            .iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.priority) == Some(100000)),
        "{:?}",
        mine.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    jobs.delete("queued", &Default::default()).await?;
    Ok(())
}
