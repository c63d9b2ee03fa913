//! The admission pass: one task (not one per object) that, when anything admission
//! depends on changes (and every few seconds for time-based rules), snapshots the
//! caches into a factory, asks the engine what may start, and applies its
//! decisions in order: admit, preempt then admit, or write why a job waits. It
//! also keeps each tenant's usage in the Tenant's status, under its own field
//! manager.
use super::snapshot::{
    self, Caches as Views, admitted_status, job_id, preempted_status, queued_status,
    tenant_usage_status,
};
use super::{build, delete_job, write_job_status};
use crate::context::Context;
use crate::controllers::workspace::session;
use crate::controllers::write_status_of;
use crate::error::{Error, Result};
use crate::metrics::{PoolLabels, TenantPoolLabels};
use aifactory_admission::{Admission, Eviction, Outcome, admit};
use aifactory_api::{GpuPool, Tenant, TrainingJob, Workspace};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const CONTROLLER: &str = "admission";
/// Field manager of a Tenant's usage fields: the Tenant controller owns the rest.
pub const USAGE_MANAGER: &str = "aifactory-usage";
/// A burst of changes (a job admitted, its pods created) makes one pass.
const DEBOUNCE: Duration = Duration::from_secs(1);
/// Passes happen at least this often: starving jobs and budgets change with time.
const TICK: Duration = Duration::from_secs(10);
/// Longest a pass waits for the cache to show the previous pass's writes.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The caches a pass reads.
pub struct Caches {
    /// Every TrainingJob (the TrainingJob controller's cache).
    pub jobs: Store<TrainingJob>,
    /// Every GpuPool.
    pub pools: Store<GpuPool>,
    /// Every Tenant.
    pub tenants: Store<Tenant>,
    /// Nodes labelled as pool members.
    pub nodes: Store<Node>,
    /// Pods bound to a node and not finished.
    pub pods: Store<Pod>,
    /// Every PriorityClass.
    pub priority_classes: Store<PriorityClass>,
    /// Every Dataset (a job waits for the datasets it mounts).
    pub datasets: Store<aifactory_api::Dataset>,
    /// Every Workspace (their interactive sessions are admitted here too).
    pub workspaces: Store<Workspace>,
}

/// A status the last pass wrote, with the resourceVersion it replaced.
enum Written {
    Job(ObjectRef<TrainingJob>, Option<String>),
    Session(ObjectRef<Workspace>, Option<String>),
}

/// What the engine decides about: a training job or a workspace's session.
#[derive(Clone, Copy)]
enum Work<'a> {
    Job(&'a TrainingJob),
    Session(&'a Workspace),
}

impl Work<'_> {
    fn written(&self) -> Written {
        match self {
            Work::Job(tj) => Written::Job(ObjectRef::from_obj(*tj), tj.resource_version()),
            Work::Session(ws) => Written::Session(ObjectRef::from_obj(*ws), ws.resource_version()),
        }
    }

    fn id(&self) -> String {
        match self {
            Work::Job(tj) => job_id(tj),
            Work::Session(ws) => session::session_id(ws),
        }
    }

    /// Since when it waits (for the time-to-admission histogram).
    fn waiting_since(&self) -> Option<Time> {
        match self {
            Work::Job(tj) => tj
                .status
                .as_ref()
                .and_then(|s| s.queued_at.clone())
                .or_else(|| tj.metadata.creation_timestamp.clone()),
            Work::Session(ws) => session::queued_since(ws).cloned(),
        }
    }

    /// The pool it asks for.
    fn pool(&self) -> String {
        match self {
            Work::Job(tj) => tj.spec.pool.clone(),
            Work::Session(ws) => ws
                .spec
                .interactive
                .as_ref()
                .map(|i| i.pool.clone())
                .unwrap_or_default(),
        }
    }
}

/// Runs admission passes until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    caches: Caches,
    changed: Arc<Notify>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // A pass on a half-filled cache would admit onto GPUs that are taken.
    let ready = async {
        let _ = tokio::join!(
            caches.jobs.wait_until_ready(),
            caches.pools.wait_until_ready(),
            caches.tenants.wait_until_ready(),
            caches.nodes.wait_until_ready(),
            caches.pods.wait_until_ready(),
            caches.priority_classes.wait_until_ready(),
            caches.datasets.wait_until_ready(),
            caches.workspaces.wait_until_ready(),
        );
    };
    tokio::select! {
        _ = ready => {}
        _ = &mut shutdown => return,
    }
    tracing::info!("admission caches ready");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = vec![];
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = changed.notified() => {}
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(DEBOUNCE) => {}
        }
        catch_up(&caches, &written).await;
        let _timer = ctx.metrics.reconcile(CONTROLLER);
        // A bug one object triggers must not end admission for the factory:
        // the pass is counted as failed and tried again at the next wake.
        written = match std::panic::AssertUnwindSafe(pass(&ctx, &caches))
            .catch_unwind()
            .await
        {
            Ok(written) => written,
            Err(panic) => {
                let message = crate::context::panic_message(&panic);
                tracing::error!(%message, "the admission pass panicked");
                ctx.metrics.error(CONTROLLER, "panic".into());
                vec![]
            }
        };
    }
}

/// Waits (a little) until the cache shows every status the last pass wrote, so a
/// job admitted a second ago is not seen as still queued and admitted twice.
async fn catch_up(caches: &Caches, written: &[Written]) {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let behind = written.iter().any(|w| match w {
            Written::Job(job, replaced) => caches
                .jobs
                .get(job)
                .is_some_and(|j| j.resource_version() == *replaced),
            Written::Session(ws, replaced) => caches
                .workspaces
                .get(ws)
                .is_some_and(|w| w.resource_version() == *replaced),
        });
        if !behind || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One pass: decide and apply. Failures of one job are logged and counted; the
/// next pass looks again.
async fn pass(ctx: &Context, caches: &Caches) -> Vec<Written> {
    let jobs = caches.jobs.state();
    let workspaces = caches.workspaces.state();
    let pools = caches.pools.state();
    let tenants = caches.tenants.state();
    let snap = snapshot::snapshot(
        &Views {
            jobs: &jobs,
            pools: &pools,
            tenants: &tenants,
            nodes: &caches.nodes.state(),
            pods: &caches.pods.state(),
            priority_classes: &caches.priority_classes.state(),
            datasets: &caches.datasets.state(),
            workspaces: &workspaces,
        },
        jiff::Timestamp::now(),
    );
    let decisions = admit(&snap.factory);
    let by_id: HashMap<String, Work> = jobs
        .iter()
        .map(|j| Work::Job(j))
        .chain(workspaces.iter().map(|w| Work::Session(w)))
        .map(|w| (w.id(), w))
        .collect();
    let watts = |work: &Work| {
        let pool = work.pool();
        pools
            .iter()
            .find(|p| p.name_any() == pool)
            .map(|p| f64::from(p.spec.gpu.power_watts))
            .unwrap_or(0.0)
    };
    let now = build::now();
    let mut written = vec![];
    let mut record = |work: Work, outcome: Result<Option<Written>>| match outcome {
        Ok(Some(w)) => written.push(w),
        Ok(None) => {}
        Err(e) => {
            ctx.metrics.error(CONTROLLER, e.metric_label());
            tracing::warn!(job = %work.id(), error = %e, "applying an admission decision failed");
        }
    };
    // A write over the version the pass read.
    let over_read = |work: Work, r: Result<bool>| r.map(|wrote| wrote.then(|| work.written()));
    // Pools where an eviction the engine decided did not happen. The engine's later
    // decisions there may hand out GPUs that eviction would have freed (the
    // victim's leftover nodes go to the next jobs of the pass), so none of them is
    // applied: the next pass decides again from what the API says. (Seen in the
    // chaos run: a victim's status write lost a race, 409, and a job admitted later
    // in the same pass was placed on the victim's nodes while it still ran there.)
    let mut unsettled: std::collections::HashSet<&str> = Default::default();
    for decision in &decisions.decisions {
        let Some(&work) = by_id.get(&decision.job) else {
            continue;
        };
        let admits = !matches!(decision.outcome, Outcome::Queued { .. });
        if admits && unsettled.contains(decision.pool.as_str()) {
            continue;
        }
        match &decision.outcome {
            Outcome::Admit(admission) => {
                let r = admit_work(ctx, work, admission, &decision.pool, &now).await;
                count_admission(ctx, work, &decision.tenant, &decision.pool, &r);
                record(work, r);
            }
            Outcome::PreemptToAdmit { evict, admission } => {
                let mut evicted_all = true;
                for eviction in evict {
                    let Some(&victim) = by_id.get(&eviction.job) else {
                        evicted_all = false;
                        continue;
                    };
                    let r =
                        preempt(ctx, victim, eviction, watts(&victim), &now, &caches.tenants).await;
                    if r.is_ok() {
                        let labels = TenantPoolLabels {
                            tenant: eviction.tenant.clone(),
                            pool: decision.pool.clone(),
                        };
                        ctx.metrics.factory.preemptions.get_or_create(&labels).inc();
                    }
                    evicted_all &= r.is_ok();
                    record(victim, over_read(victim, r));
                }
                // Admitting while a victim still holds its GPUs would give them twice.
                if evicted_all {
                    let r = admit_work(ctx, work, admission, &decision.pool, &now).await;
                    count_admission(ctx, work, &decision.tenant, &decision.pool, &r);
                    record(work, r);
                } else {
                    unsettled.insert(decision.pool.as_str());
                }
            }
            Outcome::Queued { position, reason } => {
                let r = queue(
                    ctx,
                    work,
                    Some(*position),
                    &reason.to_string(),
                    reason.code(),
                    &now,
                )
                .await;
                record(work, over_read(work, r));
            }
        }
    }
    for (id, reason) in &snap.refused {
        if let Some(&work) = by_id.get(id) {
            let r = queue(ctx, work, None, reason, "NotAdmissible", &now).await;
            record(work, over_read(work, r));
        }
    }
    publish_factory_metrics(ctx, &decisions.decisions, &tenants, &snap.usage);
    for tenant in tenants
        .iter()
        .filter(|t| t.metadata.deletion_timestamp.is_none())
    {
        let usage = snap
            .usage
            .get(&tenant.name_any())
            .cloned()
            .unwrap_or_default();
        let status = tenant_usage_status(tenant, &usage, jiff::Timestamp::now(), &now);
        let r = crate::controllers::write_status_as(
            USAGE_MANAGER,
            &Api::<Tenant>::all(ctx.client.clone()),
            &tenant.name_any(),
            tenant.status.as_ref(),
            &status,
            false,
        )
        .await;
        if let Err(e) = r {
            ctx.metrics.error(CONTROLLER, e.metric_label());
            tracing::warn!(tenant = %tenant.name_any(), error = %e, "writing tenant usage failed");
        }
    }
    written
}

/// Counts an admission and how long the job waited for it.
fn count_admission<T>(ctx: &Context, work: Work, tenant: &str, pool: &str, r: &Result<T>) {
    if r.is_err() {
        return;
    }
    let m = &ctx.metrics.factory;
    m.admissions
        .get_or_create(&TenantPoolLabels {
            tenant: tenant.into(),
            pool: pool.into(),
        })
        .inc();
    if let Some(since) = work.waiting_since() {
        let waited = jiff::Timestamp::now()
            .duration_since(since.0)
            .as_secs_f64()
            .max(0.0);
        m.admission_wait
            .get_or_create(&PoolLabels { pool: pool.into() })
            .observe(waited);
    }
}

/// Queue lengths (of the engine's queue; jobs refused before it are not counted),
/// GPUs in use and guaranteed, and this period's usage, as gauges.
fn publish_factory_metrics(
    ctx: &Context,
    decisions: &[aifactory_admission::Decision],
    tenants: &[Arc<Tenant>],
    usage: &std::collections::BTreeMap<String, Vec<aifactory_api::PoolUsage>>,
) {
    let m = &ctx.metrics.factory;
    m.queue_length.clear();
    for d in decisions
        .iter()
        .filter(|d| matches!(d.outcome, Outcome::Queued { .. }))
    {
        m.queue_length
            .get_or_create(&PoolLabels {
                pool: d.pool.clone(),
            })
            .inc();
    }
    m.gpus_guaranteed.clear();
    for t in tenants {
        for q in &t.spec.quota {
            let labels = TenantPoolLabels {
                tenant: t.name_any(),
                pool: q.pool.clone(),
            };
            m.gpus_guaranteed
                .get_or_create(&labels)
                .set(i64::from(q.gpus));
        }
    }
    m.gpus_in_use.clear();
    m.gpu_hours.clear();
    m.energy_kwh.clear();
    for (tenant, pools) in usage {
        for u in pools {
            let labels = TenantPoolLabels {
                tenant: tenant.clone(),
                pool: u.pool.clone(),
            };
            m.gpus_in_use.get_or_create(&labels).set(u.gpus_in_use);
            m.gpu_hours.get_or_create(&labels).set(u.gpu_hours);
            m.energy_kwh.get_or_create(&labels).set(u.energy_kwh);
        }
    }
}

fn api(ctx: &Context, tj: &TrainingJob) -> Api<TrainingJob> {
    Api::namespaced(ctx.client.clone(), &tj.namespace().unwrap_or_default())
}

fn ws_api(ctx: &Context, ws: &Workspace) -> Api<Workspace> {
    Api::namespaced(ctx.client.clone(), &ws.namespace().unwrap_or_default())
}

/// Applies an admission; what it wrote, with the version it wrote over (for the
/// next pass to wait until its cache shows the write).
async fn admit_work(
    ctx: &Context,
    work: Work<'_>,
    admission: &Admission,
    pool: &str,
    now: &Time,
) -> Result<Option<Written>> {
    let wrote = match write_admitted(ctx, work, admission, now).await {
        // The object changed since the cache showed it (its own reconcile wrote a
        // status): the decision still holds if it still waits, so it is applied
        // to the fresh object. Dropping it would leave victims evicted for
        // nothing, and the next pass could hand their GPUs back to them. The write
        // replaced the fresh version, not the cached one: recording the cached one
        // would let the next pass go on as soon as its cache shows the fresh
        // version, the job still waiting there, and admit onto its GPUs again.
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => match work {
            Work::Job(tj) => {
                let fresh = api(ctx, tj).get(&tj.name_any()).await?;
                if !snapshot::waits(&fresh) {
                    return Ok(None);
                }
                let fresh = Work::Job(&fresh);
                write_admitted(ctx, fresh, admission, now)
                    .await?
                    .then(|| fresh.written())
            }
            Work::Session(ws) => {
                let fresh = ws_api(ctx, ws).get(&ws.name_any()).await?;
                if !session::waits(&fresh) {
                    return Ok(None);
                }
                let fresh = Work::Session(&fresh);
                write_admitted(ctx, fresh, admission, now)
                    .await?
                    .then(|| fresh.written())
            }
        },
        other => other?.then(|| work.written()),
    };
    if wrote.is_some() {
        let message = format!(
            "admitted to pool {pool} on {}{}",
            admission.placement.join(", "),
            if admission.borrowed_gpus > 0 {
                format!(
                    " ({} GPUs borrowed from idle guarantees)",
                    admission.borrowed_gpus
                )
            } else {
                String::new()
            }
        );
        match work {
            Work::Job(tj) => ctx.event(tj, false, "Admitted", message).await,
            Work::Session(ws) => ctx.event(ws, false, "Admitted", message).await,
        }
    }
    Ok(wrote)
}

/// Writes the admitted status, on condition the object is as the pass read it.
async fn write_admitted(
    ctx: &Context,
    work: Work<'_>,
    admission: &Admission,
    now: &Time,
) -> Result<bool> {
    match work {
        Work::Job(tj) => {
            write_job_status(&api(ctx, tj), tj, &admitted_status(tj, admission, now)).await
        }
        Work::Session(ws) => {
            let status = session::admitted_status(ws, admission, now);
            write_status_of(&ws_api(ctx, ws), ws, ws.status.as_ref(), &status).await
        }
    }
}

async fn preempt(
    ctx: &Context,
    victim: Work<'_>,
    eviction: &Eviction,
    watts: f64,
    now: &Time,
    tenants: &Store<Tenant>,
) -> Result<bool> {
    let reason = eviction.reason.to_string();
    // The decision is recorded first: if deleting the Job (or StatefulSet) fails,
    // the victim's reconcile deletes it (a queued job or session keeps none).
    let wrote = match victim {
        Work::Job(tj) => {
            let status = preempted_status(tj, &reason, watts, now);
            let wrote = write_job_status(&api(ctx, tj), tj, &status).await?;
            let jobs: Api<Job> =
                Api::namespaced(ctx.client.clone(), &tj.namespace().unwrap_or_default());
            delete_job(&jobs, &tj.name_any()).await?;
            wrote
        }
        Work::Session(ws) => {
            let status = session::preempted_status(ws, &reason, now);
            let wrote = write_status_of(&ws_api(ctx, ws), ws, ws.status.as_ref(), &status).await?;
            if wrote {
                crate::controllers::workspace::settle_session(ctx, ws, tenants).await?;
            }
            let sets: Api<StatefulSet> =
                Api::namespaced(ctx.client.clone(), &ws.namespace().unwrap_or_default());
            match sets
                .delete(&session::session_name(ws), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            wrote
        }
    };
    if wrote {
        match victim {
            Work::Job(tj) => ctx.event(tj, true, "Preempted", reason).await,
            Work::Session(ws) => ctx.event(ws, true, "Preempted", reason).await,
        }
    }
    Ok(wrote)
}

/// Writes a waiting job's or session's place and reason; the first time, an Event.
async fn queue(
    ctx: &Context,
    work: Work<'_>,
    position: Option<u32>,
    reason: &str,
    code: &str,
    now: &Time,
) -> Result<bool> {
    match work {
        Work::Job(tj) => {
            let status = queued_status(tj, position, reason, code, now);
            if !crate::controllers::pending::worth_writing(tj.status.as_ref(), &status) {
                return Ok(false);
            }
            let first = tj.status.as_ref().and_then(|s| s.phase).is_none();
            let wrote = write_job_status(&api(ctx, tj), tj, &status).await?;
            if wrote && first {
                ctx.event(tj, false, "Queued", reason.to_string()).await;
            }
            Ok(wrote)
        }
        Work::Session(ws) => {
            let status = session::queued_status(ws, position, reason, code, now);
            let first = ws
                .status
                .as_ref()
                .is_none_or(|s| s.pending_reason.as_deref() == Some(session::WAITING_FOR_PASS));
            let wrote = write_status_of(&ws_api(ctx, ws), ws, ws.status.as_ref(), &status).await?;
            if wrote && first {
                ctx.event(ws, false, "Queued", reason.to_string()).await;
            }
            Ok(wrote)
        }
    }
}
