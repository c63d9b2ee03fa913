//! TrainingJobs on the local factory: gangs are admitted whole onto distinct pool
//! nodes and run to the end, bigger gangs wait their turn without starting in
//! part, lenders reclaim their GPUs from borrowers, failed runs restart, deadlines
//! stop runs, and suspended jobs give their GPUs back. Each test has its own
//! nodes, its own dedicated pool and its own tenants.
use aifactory_api::{GpuPool, Tenant, TrainingJob, TrainingJobPhase};
use aifactory_tests::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Service};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);
const JOB_LABEL: &str = "aifactory.dev/trainingjob";

/// A test's own piece of the factory: `nodes` 8-GPU H100 nodes in a dedicated pool.
struct Factory {
    client: Client,
    nodes: FakeNodes,
    pool: String,
    cleanup: Cleanup,
}

impl Factory {
    async fn new(prefix: &str, nodes: usize) -> anyhow::Result<Self> {
        let client = admin().await?;
        install_crds(&client).await?;
        require_operator(&client).await?;
        let group = unique_name(prefix);
        let fake = FakeNodes::create(&client, &group, nodes, "H100-80GB", 8).await?;
        let (pool, cleanup) = dedicated_pool(&client, &group, nodes).await?;
        Ok(Self {
            client,
            nodes: fake,
            pool,
            cleanup,
        })
    }

    /// A tenant with `quota` in this pool (gpus, borrowingLimit, lendingLimit),
    /// once Ready with its namespace (named after it) and its GPU quota in place.
    async fn tenant(&mut self, prefix: &str, quota: Value) -> anyhow::Result<String> {
        self.tenant_with(prefix, quota, json!({})).await
    }

    /// [`Factory::tenant`] with more of the Tenant's spec (budget, residency, …).
    async fn tenant_with(
        &mut self,
        prefix: &str,
        quota: Value,
        extra: Value,
    ) -> anyhow::Result<String> {
        let name = unique_name(prefix);
        let mut q = quota.clone();
        q["pool"] = json!(self.pool);
        let mut spec =
            json!({"owners": [{"kind": "User", "name": format!("{name}-owner")}], "quota": [q]});
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        let t: Tenant = serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": spec
        }))?;
        let tenants = Api::<Tenant>::all(self.client.clone());
        tenants.create(&PostParams::default(), &t).await?;
        self.cleanup.0.push(("tenant", name.clone()));
        let guaranteed = quota["gpus"].as_i64().unwrap_or(0);
        let ceiling = (guaranteed + quota["borrowingLimit"].as_i64().unwrap_or(1_000_000))
            .min((8 * self.nodes.names.len() as i64).max(guaranteed))
            .to_string();
        let quotas = Api::<ResourceQuota>::namespaced(self.client.clone(), &name);
        wait_for(
            &format!("tenant {name} Ready with a GPU quota of {ceiling}"),
            WAIT,
            || {
                let (tenants, quotas, name, ceiling) = (
                    tenants.clone(),
                    quotas.clone(),
                    name.clone(),
                    ceiling.clone(),
                );
                async move {
                    let t = tenants.get(&name).await?;
                    let ready = t.status.is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    });
                    let quota = quotas.get_opt("aifactory-tenant").await?.is_some_and(|q| {
                        q.spec
                            .and_then(|s| s.hard)
                            .is_some_and(|h| h["requests.nvidia.com/gpu"].0 == ceiling)
                    });
                    Ok((ready && quota).then_some(()))
                }
            },
        )
        .await?;
        Ok(name)
    }

    /// Submits a job of `nodes` × `gpus` in the tenant's namespace.
    async fn submit(
        &self,
        ns: &str,
        name: &str,
        nodes: i32,
        gpus: i32,
        spec: Value,
        annotations: Value,
    ) -> anyhow::Result<()> {
        let mut s = json!({"pool": self.pool, "nodes": nodes, "gpusPerNode": gpus,
                           "image": "registry.example/trainer:1", "command": ["torchrun"], "args": ["train.py"]});
        for (k, v) in spec.as_object().into_iter().flatten() {
            s[k] = v.clone();
        }
        let tj: TrainingJob = serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "annotations": annotations}, "spec": s
        }))?;
        Api::<TrainingJob>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &tj)
            .await?;
        Ok(())
    }

    /// Waits until the job satisfies `check`.
    async fn wait_job(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        check: impl Fn(&TrainingJob) -> bool,
    ) -> anyhow::Result<TrainingJob> {
        let api = Api::<TrainingJob>::namespaced(self.client.clone(), ns);
        wait_for(&format!("job {ns}/{name}: {what}"), WAIT, || {
            let api = api.clone();
            let check = &check;
            async move {
                let tj = api.get(name).await?;
                Ok(check(&tj).then_some(tj))
            }
        })
        .await
    }

    async fn wait_phase(
        &self,
        ns: &str,
        name: &str,
        want: TrainingJobPhase,
    ) -> anyhow::Result<TrainingJob> {
        self.wait_job(ns, name, &format!("phase {want:?}"), |tj| {
            phase(tj) == Some(want)
        })
        .await
    }

    async fn pods(&self, ns: &str, job: &str) -> anyhow::Result<Vec<Pod>> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels(&format!("{JOB_LABEL}={job}")))
            .await?
            .items)
    }

    async fn batch_job(&self, ns: &str, name: &str) -> anyhow::Result<Option<Job>> {
        Ok(Api::<Job>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await?)
    }

    async fn tenant_status(&self, name: &str) -> anyhow::Result<aifactory_api::TenantStatus> {
        Ok(Api::<Tenant>::all(self.client.clone())
            .get(name)
            .await?
            .status
            .unwrap_or_default())
    }

    /// Reasons of the Events on the job.
    async fn events(&self, ns: &str, job: &str) -> anyhow::Result<Vec<String>> {
        Ok(Api::<Event>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(job))
            .filter_map(|e| e.reason)
            .collect())
    }
}

fn phase(tj: &TrainingJob) -> Option<TrainingJobPhase> {
    tj.status.as_ref().and_then(|s| s.phase)
}

fn failed_reason(tj: &TrainingJob) -> Option<String> {
    tj.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| c.reason.clone())
    })
}

fn running_pods_on(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect()
}

#[tokio::test]
async fn a_four_node_gang_runs_on_four_distinct_nodes_to_success_and_is_accounted()
-> anyhow::Result<()> {
    let mut f = Factory::new("tj-gang", 5).await?;
    let acme = f.tenant("acme", json!({"gpus": 40})).await?;
    f.submit(
        &acme,
        "pretrain",
        4,
        8,
        json!({"env": [{"name": "EPOCHS", "value": "3"}]}),
        json!({"aifactory.dev/simulate-duration": "12s"}),
    )
    .await?;

    let admitted = f
        .wait_job(&acme, "pretrain", "admitted with a placement", |tj| {
            tj.status
                .as_ref()
                .is_some_and(|s| s.placement.is_some() && s.admitted_at.is_some())
        })
        .await?;
    let placement: BTreeSet<String> = admitted
        .status
        .unwrap()
        .placement
        .unwrap()
        .nodes
        .into_iter()
        .collect();
    assert_eq!(placement.len(), 4, "four distinct nodes: {placement:?}");
    assert!(placement.iter().all(|n| f.nodes.names.contains(n)));

    // The children: a headless Service and an Indexed Job, released.
    let services = Api::<Service>::namespaced(f.client.clone(), &acme);
    let svc = wait_for("the headless Service", WAIT, || async {
        Ok(services.get_opt("pretrain").await?)
    })
    .await?;
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let job = wait_for("the Job, released", WAIT, || async {
        Ok(f.batch_job(&acme, "pretrain")
            .await?
            .filter(|j| j.spec.as_ref().is_some_and(|s| s.suspend == Some(false))))
    })
    .await?;
    let spec = job.spec.unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(4), Some(4)));
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.suspend, Some(false));
    let env = spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("MASTER_ADDR").as_deref(), Some("pretrain-0.pretrain"));
    assert_eq!(value("WORLD_SIZE").as_deref(), Some("4"));
    assert_eq!(value("EPOCHS").as_deref(), Some("3"));

    let pods_on = wait_for("4 pods running on 4 distinct nodes", WAIT, || async {
        let on = running_pods_on(&f.pods(&acme, "pretrain").await?);
        Ok((on.len() == 4).then_some(on))
    })
    .await?;
    assert_eq!(
        pods_on, placement,
        "the pods run exactly where admission put them"
    );
    f.wait_phase(&acme, "pretrain", TrainingJobPhase::Running)
        .await?;
    let done = f
        .wait_phase(&acme, "pretrain", TrainingJobPhase::Succeeded)
        .await?;
    let status = done.status.unwrap();
    assert!(status.gpu_hours > 0.0, "{status:?}");
    assert!(status.energy_kwh > 0.0, "{status:?}");
    assert!(status.finished_at.is_some());

    let usage = wait_for("the tenant's GPU-hours", WAIT, || async {
        let s = f.tenant_status(&acme).await?;
        Ok((s.gpu_hours > 0.0 && s.gpus_in_use == 0).then_some(s))
    })
    .await?;
    assert_eq!(usage.usage[0].pool, f.pool);
    assert!(usage.period.is_some());
    let events = f.events(&acme, "pretrain").await?;
    for reason in ["Admitted", "Running", "Succeeded"] {
        assert!(
            events.iter().any(|e| e == reason),
            "no {reason} event: {events:?}"
        );
    }

    // The tenant cannot strip the usage finalizer to escape the ledger: the
    // chart's usage guard (a ValidatingAdmissionPolicy) refuses it.
    let owner = impersonate(&format!("{acme}-owner"), &["system:authenticated"]).await?;
    let err = Api::<TrainingJob>::namespaced(owner, &acme)
        .patch(
            "pretrain",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect_err("a tenant removing the usage finalizer");
    assert!(
        err.to_string()
            .contains("only the aifactory operator removes the aifactory.dev/usage finalizer"),
        "{err}"
    );

    // Deleting the finished job does not give its hours back to the budget: they
    // are settled in the tenant's ledger before the job goes.
    let jobs = Api::<TrainingJob>::namespaced(f.client.clone(), &acme);
    jobs.delete("pretrain", &Default::default()).await?;
    wait_for("pretrain deleted", WAIT, || async {
        Ok(jobs.get_opt("pretrain").await?.is_none().then_some(()))
    })
    .await?;
    let after = wait_for("the ledger holding pretrain's hours", WAIT, || async {
        let s = f.tenant_status(&acme).await?;
        Ok(s.ledger.is_some().then_some(s))
    })
    .await?;
    let ledger = after.ledger.clone().unwrap();
    assert_eq!(ledger.period, usage.period.clone().unwrap());
    assert_eq!(ledger.usage[0].pool, f.pool);
    assert!(
        (ledger.usage[0].gpu_hours - status.gpu_hours).abs() < 1e-6,
        "{ledger:?} vs the job's {}",
        status.gpu_hours
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = f.tenant_status(&acme).await?;
    assert!(
        (later.gpu_hours - usage.gpu_hours).abs() < 1e-6,
        "usage after the delete: {} GPU-hours, before: {}",
        later.gpu_hours,
        usage.gpu_hours
    );
    Ok(())
}

#[tokio::test]
async fn a_gang_larger_than_what_is_free_waits_whole_and_starts_when_gpus_free_up()
-> anyhow::Result<()> {
    let mut f = Factory::new("tj-queue", 2).await?;
    let acme = f.tenant("acme", json!({"gpus": 16})).await?;
    f.submit(
        &acme,
        "first",
        2,
        8,
        json!({}),
        json!({"aifactory.dev/simulate-duration": "20s"}),
    )
    .await?;
    f.wait_phase(&acme, "first", TrainingJobPhase::Running)
        .await?;
    f.submit(
        &acme,
        "second",
        2,
        8,
        json!({}),
        json!({"aifactory.dev/simulate-duration": "3s"}),
    )
    .await?;
    let queued = f
        .wait_job(&acme, "second", "queued with a reason", |tj| {
            tj.status.as_ref().is_some_and(|s| {
                s.phase == Some(TrainingJobPhase::Queued)
                    && s.queue_position == Some(1)
                    && s.pending_reason.is_some()
            })
        })
        .await?;
    let reason = queued.status.unwrap().pending_reason.unwrap();
    assert!(
        reason.starts_with("waiting for 16 H100-80GB GPUs"),
        "{reason}"
    );
    // Never started in part: no Job, no pod, as long as the first job runs.
    for _ in 0..8 {
        let first = Api::<TrainingJob>::namespaced(f.client.clone(), &acme)
            .get("first")
            .await?;
        if phase(&first) != Some(TrainingJobPhase::Running) {
            break;
        }
        assert!(
            f.batch_job(&acme, "second").await?.is_none(),
            "a Job for a queued gang"
        );
        assert!(
            f.pods(&acme, "second").await?.is_empty(),
            "pods of a queued gang"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    f.wait_phase(&acme, "first", TrainingJobPhase::Succeeded)
        .await?;
    let second = f
        .wait_phase(&acme, "second", TrainingJobPhase::Succeeded)
        .await?;
    let status = second.status.unwrap();
    assert_eq!(status.queue_position, None);
    assert_eq!(status.pending_reason, None);
    Ok(())
}

#[tokio::test]
async fn a_lender_reclaims_its_gpus_from_a_borrower_which_is_preempted_and_requeued()
-> anyhow::Result<()> {
    let mut f = Factory::new("tj-reclaim", 2).await?;
    let lender = f
        .tenant("lender", json!({"gpus": 16, "lendingLimit": 16}))
        .await?;
    let borrower = f
        .tenant("borrower", json!({"gpus": 0, "borrowingLimit": 16}))
        .await?;
    // The borrower takes the lender's idle GPUs with a run that would go on forever.
    f.submit(&borrower, "sweep", 2, 8, json!({}), json!({}))
        .await?;
    f.wait_phase(&borrower, "sweep", TrainingJobPhase::Running)
        .await?;
    wait_for("the borrower's 16 GPUs in use", WAIT, || async {
        Ok((f.tenant_status(&borrower).await?.gpus_in_use == 16).then_some(()))
    })
    .await?;

    f.submit(
        &lender,
        "finetune",
        2,
        8,
        json!({}),
        json!({"aifactory.dev/simulate-duration": "10s"}),
    )
    .await?;
    let evicted = f
        .wait_phase(&borrower, "sweep", TrainingJobPhase::Preempted)
        .await?;
    let why = evicted.status.unwrap().pending_reason.unwrap_or_default();
    assert!(why.contains(&format!("tenant {lender} reclaims")), "{why}");
    f.wait_phase(&lender, "finetune", TrainingJobPhase::Running)
        .await?;
    // Requeued once its pods are gone: it waits with a place in the queue.
    f.wait_job(&borrower, "sweep", "requeued", |tj| {
        tj.status.as_ref().is_some_and(|s| {
            s.phase == Some(TrainingJobPhase::Preempted) && s.queue_position == Some(1)
        })
    })
    .await?;
    assert!(
        f.events(&borrower, "sweep")
            .await?
            .iter()
            .any(|e| e == "Preempted")
    );
    // When the lender is done, the borrower runs again.
    f.wait_phase(&lender, "finetune", TrainingJobPhase::Succeeded)
        .await?;
    f.wait_phase(&borrower, "sweep", TrainingJobPhase::Running)
        .await?;

    // The operator's metrics tell the same story.
    let metrics = operator_metrics()?;
    let pool = &f.pool;
    for series in [
        format!("aifactory_admissions_total{{tenant=\"{lender}\",pool=\"{pool}\"}} 1"),
        format!("aifactory_admissions_total{{tenant=\"{borrower}\",pool=\"{pool}\"}} 2"),
        format!("aifactory_preemptions_total{{tenant=\"{borrower}\",pool=\"{pool}\"}} 1"),
        format!("aifactory_tenant_gpus_guaranteed{{tenant=\"{lender}\",pool=\"{pool}\"}} 16"),
        format!("aifactory_admission_wait_seconds_count{{pool=\"{pool}\"}} 3"),
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} not in /metrics"
        );
    }
    Ok(())
}

/// The running operator's Prometheus metrics.
fn operator_metrics() -> anyhow::Result<String> {
    let addr = aifactory_tests::operator_addr();
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "scraping the operator's metrics failed"
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn a_failing_run_is_restarted_up_to_max_restarts_then_the_job_fails() -> anyhow::Result<()> {
    let mut f = Factory::new("tj-restart", 1).await?;
    let acme = f.tenant("acme", json!({"gpus": 8})).await?;
    f.submit(
        &acme,
        "flaky",
        1,
        8,
        json!({"maxRestarts": 2}),
        json!({"aifactory.dev/simulate-failure": "true", "aifactory.dev/simulate-duration": "2s"}),
    )
    .await?;
    let failed = f
        .wait_phase(&acme, "flaky", TrainingJobPhase::Failed)
        .await?;
    assert_eq!(failed_reason(&failed).as_deref(), Some("RunFailed"));
    assert_eq!(failed.status.as_ref().unwrap().restarts, 2);
    let restarted = f
        .events(&acme, "flaky")
        .await?
        .into_iter()
        .filter(|e| e == "Restarted")
        .count();
    assert!(restarted >= 1, "no Restarted event");
    // Its GPUs are free again: the tenant holds none.
    wait_for("the tenant to hold no GPUs", WAIT, || async {
        Ok((f.tenant_status(&acme).await?.gpus_in_use == 0).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_run_past_max_runtime_is_stopped_and_fails_with_deadline_exceeded() -> anyhow::Result<()>
{
    let mut f = Factory::new("tj-deadline", 1).await?;
    let acme = f.tenant("acme", json!({"gpus": 8})).await?;
    // No simulate-duration: the pod would run forever.
    f.submit(
        &acme,
        "endless",
        1,
        8,
        json!({"maxRuntime": "10s"}),
        json!({}),
    )
    .await?;
    f.wait_phase(&acme, "endless", TrainingJobPhase::Running)
        .await?;
    let failed = f
        .wait_phase(&acme, "endless", TrainingJobPhase::Failed)
        .await?;
    assert_eq!(failed_reason(&failed).as_deref(), Some("DeadlineExceeded"));
    let status = failed.status.unwrap();
    let ran = status.finished_at.unwrap().0.as_second() - status.started_at.unwrap().0.as_second();
    assert!((10..30).contains(&ran), "stopped {ran} s after it started");
    assert!(status.gpu_hours > 0.0);
    wait_for("the Job to be deleted", WAIT, || async {
        Ok(f.batch_job(&acme, "endless").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn suspend_releases_the_gpus_and_resume_runs_the_job_again() -> anyhow::Result<()> {
    let mut f = Factory::new("tj-suspend", 1).await?;
    let acme = f.tenant("acme", json!({"gpus": 8})).await?;
    f.submit(&acme, "notebookish", 1, 8, json!({}), json!({}))
        .await?;
    f.wait_phase(&acme, "notebookish", TrainingJobPhase::Running)
        .await?;
    let api = Api::<TrainingJob>::namespaced(f.client.clone(), &acme);
    let suspend = |on: bool| json!({"spec": {"suspend": on}});
    api.patch(
        "notebookish",
        &PatchParams::default(),
        &Patch::Merge(&suspend(true)),
    )
    .await?;
    let suspended = f
        .wait_phase(&acme, "notebookish", TrainingJobPhase::Suspended)
        .await?;
    assert_eq!(suspended.status.unwrap().placement, None);
    wait_for("the Job and its pods to be gone", WAIT, || async {
        let gone = f.batch_job(&acme, "notebookish").await?.is_none()
            && running_pods_on(&f.pods(&acme, "notebookish").await?).is_empty();
        Ok(gone.then_some(()))
    })
    .await?;
    wait_for("the tenant to hold no GPUs", WAIT, || async {
        Ok((f.tenant_status(&acme).await?.gpus_in_use == 0).then_some(()))
    })
    .await?;

    api.patch(
        "notebookish",
        &PatchParams::default(),
        &Patch::Merge(&suspend(false)),
    )
    .await?;
    f.wait_phase(&acme, "notebookish", TrainingJobPhase::Running)
        .await?;
    assert!(f.batch_job(&acme, "notebookish").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn jobs_that_cannot_start_wait_with_a_reason_a_tenant_understands() -> anyhow::Result<()> {
    let mut f = Factory::new("tj-refused", 1).await?;
    // A tenant whose monthly budget is used up (here: a budget of zero).
    let broke = f
        .tenant_with(
            "broke",
            json!({"gpus": 8}),
            json!({"budget": {"gpuHoursPerMonth": 0.0}}),
        )
        .await?;
    f.submit(&broke, "over-budget", 1, 8, json!({}), json!({}))
        .await?;
    // A namespace that belongs to no tenant.
    let stray = TestNamespace::new(&f.client, "tj-stray").await?;
    f.submit(&stray.name, "orphan", 1, 8, json!({}), json!({}))
        .await?;
    // A pool that does not exist.
    let acme = f.tenant("acme", json!({"gpus": 8})).await?;
    f.submit(
        &acme,
        "nowhere",
        1,
        8,
        json!({"pool": "no-such-pool"}),
        json!({}),
    )
    .await?;

    for (ns, job, words) in [
        (broke.as_str(), "over-budget", "budget exhausted"),
        (stray.name.as_str(), "orphan", "belongs to no tenant"),
        (acme.as_str(), "nowhere", "unknown pool no-such-pool"),
    ] {
        f.wait_job(ns, job, &format!("queued: {words}"), |tj| {
            tj.status.as_ref().is_some_and(|s| {
                s.phase == Some(TrainingJobPhase::Queued)
                    && s.pending_reason
                        .as_deref()
                        .is_some_and(|r| r.contains(words))
            })
        })
        .await?;
        assert!(
            f.batch_job(ns, job).await?.is_none(),
            "{job} must not start"
        );
    }
    let status = wait_for("the tenant's budget to show exhausted", WAIT, || async {
        let s = f.tenant_status(&broke).await?;
        let exhausted = s
            .conditions
            .iter()
            .any(|c| c.type_ == "BudgetExhausted" && c.status == "True");
        Ok(exhausted.then_some(s))
    })
    .await?;
    assert_eq!(status.budget_remaining_gpu_hours, Some(0.0));
    Ok(())
}

#[tokio::test]
async fn the_power_cap_a_pool_outside_quota_and_residency_each_keep_a_job_queued_in_words()
-> anyhow::Result<()> {
    let mut f = Factory::new("tj-limits", 1).await?;
    // One node of 8 GPUs at 700 W would draw 5.6 kW; the site allows 5.
    Api::<GpuPool>::all(f.client.clone())
        .patch(
            &f.pool,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"powerCapKilowatts": 5.0}})),
        )
        .await?;
    let capped = f.tenant("capped", json!({"gpus": 8})).await?;
    // A tenant whose quota names only another pool.
    let elsewhere = unique_name("elsewhere");
    let t: Tenant = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": elsewhere},
        "spec": {"owners": [{"kind": "User", "name": "o"}], "quota": [{"pool": "some-other-pool", "gpus": 8}]}
    }))?;
    Api::<Tenant>::all(f.client.clone())
        .create(&PostParams::default(), &t)
        .await?;
    f.cleanup.0.push(("tenant", elsewhere.clone()));
    // A hospital whose data must stay in us-east; the pool is in eu-west.
    let clinic = f
        .tenant_with(
            "clinic",
            json!({"gpus": 8}),
            json!({"residency": {"regions": ["us-east"]}}),
        )
        .await?;
    wait_for("the other tenants' namespaces", WAIT, || async {
        Ok(
            Api::<k8s_openapi::api::core::v1::Namespace>::all(f.client.clone())
                .get_opt(&elsewhere)
                .await?
                .map(|_| ()),
        )
    })
    .await?;

    f.submit(&capped, "hot", 1, 8, json!({}), json!({})).await?;
    f.submit(&elsewhere, "lost", 1, 8, json!({}), json!({}))
        .await?;
    f.submit(&clinic, "abroad", 1, 8, json!({}), json!({}))
        .await?;
    let pool = f.pool.clone();
    for (ns, job, words) in [
        (
            capped.as_str(),
            "hot",
            format!("power cap: pool {pool} would draw 5.6 kW of 5 kW"),
        ),
        (
            elsewhere.as_str(),
            "lost",
            format!("has no quota in pool {pool}"),
        ),
        (clinic.as_str(), "abroad", "residency".to_string()),
    ] {
        f.wait_job(ns, job, &format!("queued: {words}"), |tj| {
            tj.status.as_ref().is_some_and(|s| {
                s.phase == Some(TrainingJobPhase::Queued)
                    && s.pending_reason
                        .as_deref()
                        .is_some_and(|r| r.contains(&words))
            })
        })
        .await?;
        assert!(
            f.batch_job(ns, job).await?.is_none(),
            "{job} must not start"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_admitted_job_whose_pods_cannot_start_gives_its_gpus_back_within_the_start_timeout()
-> anyhow::Result<()> {
    let mut f = Factory::new("tj-nostart", 1).await?;
    let acme = f.tenant("acme", json!({"gpus": 8})).await?;
    // Its checkpoint claim does not exist: admitted, but its pod can never be
    // scheduled. It must not hold the pool's only node for ever.
    f.submit(
        &acme,
        "stuck",
        1,
        8,
        json!({"checkpoint": {"claimName": "no-such-claim"}}),
        json!({}),
    )
    .await?;
    f.wait_phase(&acme, "stuck", TrainingJobPhase::Admitted)
        .await?;
    f.submit(
        &acme,
        "next",
        1,
        8,
        json!({}),
        json!({"aifactory.dev/simulate-duration": "600s"}),
    )
    .await?;
    // Within the start timeout (120 s) and a reconcile, the stuck job queues
    // again behind the job that can run, which gets the node.
    let api = Api::<TrainingJob>::namespaced(f.client.clone(), &acme);
    let next = wait_for(
        "the next job Running on the GPUs the stuck one gave back",
        Duration::from_secs(200),
        || {
            let api = api.clone();
            async move {
                let tj = api.get("next").await?;
                Ok((phase(&tj) == Some(TrainingJobPhase::Running)).then_some(tj))
            }
        },
    )
    .await;
    let next = match next {
        Ok(next) => next,
        Err(e) => anyhow::bail!(
            "{e}\nstuck: {:?}\nnext: {:?}",
            api.get("stuck").await?.status,
            api.get("next").await?.status
        ),
    };
    assert!(next.status.and_then(|s| s.placement).is_some());
    let stuck = api.get("stuck").await?;
    let st = stuck.status.clone().unwrap_or_default();
    assert_eq!(st.phase, Some(TrainingJobPhase::Queued), "{st:?}");
    assert_eq!(st.start_failures, 1);
    assert!(st.placement.is_none());
    // Admitted now says why it waits again (the pass's reason); Ready and the
    // Event say why it lost its GPUs.
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "StartTimedOut")
    );
    let notes: Vec<String> = Api::<Event>::namespaced(f.client.clone(), &acme)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("StartTimedOut"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("0 of its 1 pods were running 120s after admission")),
        "{notes:?}"
    );
    assert!(
        f.events(&acme, "stuck")
            .await?
            .contains(&"StartTimedOut".to_string()),
        "an Event tells the tenant"
    );
    Ok(())
}

#[tokio::test]
async fn a_settlement_retried_after_its_finalizer_removal_failed_is_counted_once()
-> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let mut f = Factory::new("tj-once", 1).await?;
    let acme = f.tenant("acme", json!({"gpus": 8})).await?;
    f.submit(
        &acme,
        "short",
        1,
        8,
        json!({}),
        json!({"aifactory.dev/simulate-duration": "6s"}),
    )
    .await?;
    let done = f
        .wait_phase(&acme, "short", TrainingJobPhase::Succeeded)
        .await?;
    let hours = done.status.unwrap().gpu_hours;
    assert!(hours > 0.0);

    // A policy that refuses everyone (the operator too) removing the usage
    // finalizer in this namespace: the settlement succeeds, the removal fails,
    // and the operator retries the whole cleanup again and again.
    let name = unique_name("deny-usage-finalizer");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": acme}},
                "resourceRules": [{"apiGroups": ["aifactory.dev"], "apiVersions": ["*"],
                                   "operations": ["UPDATE"], "resources": ["trainingjobs"]}]},
            "validations": [{"expression":
                "!has(oldObject.metadata.finalizers) || !('aifactory.dev/usage' in oldObject.metadata.finalizers) || (has(object.metadata.finalizers) && 'aifactory.dev/usage' in object.metadata.finalizers)",
                "message": "test: the usage finalizer stays"}]}
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]}
    }))?;
    let policies = Api::<ValidatingAdmissionPolicy>::all(f.client.clone());
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(f.client.clone());
    policies.create(&PostParams::default(), &policy).await?;
    f.cleanup
        .0
        .push(("validatingadmissionpolicy", name.clone()));
    bindings.create(&PostParams::default(), &binding).await?;
    f.cleanup
        .0
        .push(("validatingadmissionpolicybinding", name.clone()));
    let jobs = Api::<TrainingJob>::namespaced(f.client.clone(), &acme);
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for("the test policy in force", WAIT, || async {
        let refused = jobs
            .patch(
                "short",
                &dry,
                &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
            )
            .await
            .is_err();
        Ok(refused.then_some(()))
    })
    .await?;

    jobs.delete("short", &Default::default()).await?;
    let settled = wait_for("the ledger holding the job's hours", WAIT, || async {
        Ok(f.tenant_status(&acme).await?.ledger)
    })
    .await?;
    // Several cleanups retried (every 5 s) in the meantime…
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(
        jobs.get_opt("short").await?.is_some(),
        "the job waits on its finalizer"
    );
    let ledger = f.tenant_status(&acme).await?.ledger.unwrap();
    assert_eq!(ledger, settled, "retries added nothing");
    assert!(
        (ledger.usage[0].gpu_hours - hours).abs() < 1e-6,
        "{ledger:?} vs the job's {hours}"
    );
    assert_eq!(ledger.settled.len(), 1, "{ledger:?}");

    // …and once the removal goes through, the job goes, counted once.
    bindings.delete(&name, &Default::default()).await?;
    wait_for("the job gone", WAIT, || async {
        Ok(jobs.get_opt("short").await?.is_none().then_some(()))
    })
    .await?;
    let ledger = f.tenant_status(&acme).await?.ledger.unwrap();
    assert!(
        (ledger.usage[0].gpu_hours - hours).abs() < 1e-6,
        "{ledger:?} vs the job's {hours}"
    );
    Ok(())
}

#[tokio::test]
async fn a_job_whose_name_another_job_holds_says_why_in_an_event() -> anyhow::Result<()> {
    let mut f = Factory::new("tj-clash", 1).await?;
    let acme = f.tenant("clash", json!({"gpus": 8})).await?;
    // A batch Job of the same name that is not the operator's (an admin's, say).
    let foreign: Job = serde_json::from_value(json!({
        "metadata": {"name": "clash"},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "registry.example/tool:1"}]}}}
    }))?;
    Api::<Job>::namespaced(f.client.clone(), &acme)
        .create(&PostParams::default(), &foreign)
        .await?;
    f.submit(&acme, "clash", 1, 1, json!({}), json!({})).await?;
    let events = Api::<Event>::namespaced(f.client.clone(), &acme);
    let note = wait_for("a ReconcileFailed Event on the job", WAIT, || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("clash"))
            .find(|e| e.reason.as_deref() == Some("ReconcileFailed"))
            .and_then(|e| e.note))
    })
    .await?;
    assert!(
        note.contains("does not belong to this training job"),
        "{note}"
    );
    // The foreign Job is left as it was.
    let job = f.batch_job(&acme, "clash").await?;
    assert!(
        job.as_ref()
            .is_some_and(|j| !kube::ResourceExt::labels(j).contains_key(JOB_LABEL)),
        "{job:?}"
    );
    Ok(())
}
