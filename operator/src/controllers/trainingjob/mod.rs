//! TrainingJob controller. Two parts share the job's status:
//! - the admission pass ([`pass`]), one task for the whole factory, decides which
//!   queued job starts where, whom it preempts, and why the others wait;
//! - the per-job reconcile runs what was admitted: a headless Service and an
//!   Indexed Job pinned to the placement, then follows it through Running to
//!   Succeeded or Failed, restarting failed runs, enforcing maxRuntime, suspending
//!   and resuming, and counting GPU-hours and energy.
//!
//! Every status write carries the resourceVersion it was computed from, so the
//! two never overwrite each other's decisions: the loser of a race retries on the
//! fresh object.
pub mod build;
pub mod pass;
pub mod snapshot;

use crate::apply::{apply_cached, force_apply};
use crate::cache::cached;
use crate::context::{Context, on_error};
use crate::controllers::{pods, usage};
use crate::error::{Error, Result};
use aifactory_api::{GpuPool, POOL_LABEL, Tenant, TrainingJob, TrainingJobStatus};
use build::{JobAction, Observed, TRAININGJOB_LABEL};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const CONTROLLER: &str = "trainingjob";
/// Settles a deleted job's usage in its tenant's ledger before it goes.
pub const USAGE_FINALIZER: &str = "aifactory.dev/usage";

struct JobCtx {
    ctx: Arc<Context>,
    pools: Store<GpuPool>,
    /// The runs' Jobs (pod templates pruned) and Services.
    jobs: Store<Job>,
    services: Store<Service>,
    /// Pool members (the admission pass's node cache).
    nodes: Store<Node>,
    tenants: Store<Tenant>,
    /// Wakes the admission pass.
    changed: Arc<Notify>,
}

/// Writes `status` as the whole status of `tj`, unless it already is, on
/// condition that `tj` is still the latest version (409 Conflict otherwise).
/// Returns whether it wrote.
pub async fn write_job_status(
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
    status: &TrainingJobStatus,
) -> Result<bool> {
    crate::controllers::write_status_of(api, tj, tj.status.as_ref(), status).await
}

/// Deletes the run's Job and, in the background, its pods; gone already is fine.
pub async fn delete_job(jobs: &Api<Job>, name: &str) -> Result<()> {
    match jobs.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(job = %tj.name_any(), namespace = tj.namespace().unwrap_or_default()))]
async fn reconcile(tj: Arc<TrainingJob>, c: Arc<JobCtx>) -> Result<Action> {
    let ctx = &c.ctx;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    // Whatever changed about a job may change what admission decides.
    c.changed.notify_one();
    let ns = tj
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a TrainingJob without a namespace".into()))?;
    let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, USAGE_FINALIZER, tj, |event| async {
        match event {
            Finalizer::Apply(tj) => run_job(&tj, &api, &c).await,
            Finalizer::Cleanup(tj) => settle(&tj, &c).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// A deleted job's GPU-hours and energy this period go to its tenant's ledger
/// before it goes, so deleting a job does not give its hours back to the budget.
async fn settle(tj: &TrainingJob, c: &JobCtx) -> Result<Action> {
    // After a restart the caches fill first: a tenant not seen yet is not a
    // tenant gone, and a pool not seen yet is not a pool without power figures.
    crate::context::cache_ready("pools", &c.pools).await?;
    crate::context::cache_ready("tenants", &c.tenants).await?;
    let pool = c.pools.get(&ObjectRef::new(&tj.spec.pool));
    let watts = pool.map_or(0.0, |p| f64::from(p.spec.gpu.power_watts));
    let now = build::now();
    if let Some((hours, kwh)) = build::settlement(tj, watts, &now)
        && let Some(tenant) =
            snapshot::tenant_of(&c.tenants.state(), &tj.namespace().unwrap_or_default())
    {
        // Keyed by the job's uid: a retry after the finalizer removal failed
        // finds it settled and adds nothing.
        usage::settle(
            &c.ctx.client,
            &tenant.name_any(),
            &tj.spec.pool,
            (hours, kwh),
            now.0,
            tj.metadata.uid.as_deref().unwrap_or_default(),
        )
        .await?;
    }
    Ok(Action::await_change())
}

/// Runs what admission decided for the job.
async fn run_job(tj: &TrainingJob, api: &Api<TrainingJob>, c: &JobCtx) -> Result<Action> {
    let ctx = &c.ctx;
    let ns = tj.namespace().unwrap_or_default();
    let name = tj.name_any();
    if tj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // The cache holds the runs' Jobs only (labelled): a Job of the same name that
    // is not ours is found when creating the run's (see `create_job`).
    let job = cached(&c.jobs, Some(&ns), &name);
    // A pool missing from a cache still filling is not a missing pool.
    crate::context::cache_ready("pools", &c.pools).await?;
    let pool = c.pools.get(&ObjectRef::new(&tj.spec.pool));
    // A node missing from a cache still filling is not a lost node.
    crate::context::cache_ready("nodes", &c.nodes).await?;
    crate::context::cache_ready("jobs", &c.jobs).await?;
    crate::context::cache_ready("services", &c.services).await?;
    let lost_nodes = tj
        .status
        .as_ref()
        .and_then(|s| s.placement.as_ref())
        .map(|p| {
            p.nodes
                .iter()
                .filter(|n| !node_usable(c.nodes.get(&ObjectRef::new(n)).as_deref(), &tj.spec.pool))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let plan = build::plan(
        tj,
        &Observed {
            job: job.as_deref(),
            pool: pool.as_deref(),
            lost_nodes,
            now: build::now(),
        },
    );
    // The decision is recorded before it is acted on: a failed write changes
    // nothing, and a failed action is retried from the recorded state. The write
    // is conditional on the version the plan was made from, so a plan made from a
    // cache that has not caught up yet is refused (409) and made again.
    let wrote = match write_job_status(api, tj, &plan.status).await {
        Ok(wrote) => wrote,
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => {
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        Err(e) => return Err(e),
    };
    // Starting a run on a decision the cache may not show the latest of (a
    // preempted job must not get its Job back): unless the write above just
    // proved the version fresh, ask the API server.
    if !wrote
        && matches!(plan.job, JobAction::Create(_) | JobAction::Release(_))
        && api
            .get_opt(&name)
            .await?
            .is_none_or(|fresh| fresh.metadata.resource_version != tj.metadata.resource_version)
    {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    for note in &plan.events {
        ctx.event(tj, note.warning, note.reason, note.message.clone())
            .await;
    }
    if plan.service {
        apply_cached(
            &Api::<Service>::namespaced(ctx.client.clone(), &ns),
            &c.services,
            &build::service(tj),
        )
        .await?;
    }
    match plan.job {
        JobAction::Keep => {}
        JobAction::Create(pair) => {
            let (suspended, released) = *pair;
            // Created suspended, then released: the admission handshake Kueue uses,
            // so admission could be handed to Kueue later. Neither needs a read:
            // the plan says the Job is not there, then that it is ours.
            create_job(&jobs, &suspended, tj).await?;
            force_apply(&jobs, &released).await?;
        }
        JobAction::Release(released) => {
            force_apply(&jobs, &released).await?;
        }
        JobAction::Delete => delete_job(&jobs, &name).await?,
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Creates the run's Job, never over one that is not the job's: a create, not an
/// apply, so a Job of the same name (an admin's, another tool's) is refused by
/// the API server (409) rather than taken over. One that is the job's own is
/// what a cache not caught up yet did not show.
async fn create_job(jobs: &Api<Job>, job: &Job, tj: &TrainingJob) -> Result<()> {
    let params = PostParams {
        field_manager: Some(crate::MANAGER.into()),
        ..Default::default()
    };
    match jobs.create(&params, job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let name = job.name_any();
            let ours = jobs.get_opt(&name).await?.is_some_and(|live| {
                live.labels().contains_key(TRAININGJOB_LABEL)
                    && live
                        .owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == tj.metadata.uid.as_ref())
            });
            if ours {
                Ok(())
            } else {
                Err(Error::InvalidSpec(format!(
                    "a Job named {name} exists in {} and does not belong to this training job",
                    tj.namespace().unwrap_or_default()
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// What the controller reads of a run's Job: its identity, `suspend` and status.
/// The pod template (most of the object) is written, never read back.
fn prune_job(job: &mut Job) {
    job.annotations_mut().clear();
    if let Some(spec) = job.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// Whether a run can use `node`: it exists, is still in `pool`, Ready and not
/// cordoned (pinned pods would never be scheduled there).
fn node_usable(node: Option<&Node>, pool: &str) -> bool {
    node.is_some_and(|n| {
        n.labels().get(POOL_LABEL).map(String::as_str) == Some(pool)
            && crate::controllers::gpupool::build::node_ready(n)
    })
}

/// A reflector of `api` with managed fields pruned, and a stream that yields
/// whenever it changes.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, futures::stream::BoxStream<'static, ()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let changes = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .modify(|o| o.managed_fields_mut().clear()),
    )
    .touched_objects()
    .map(|_| ())
    .boxed();
    (reader, changes)
}

/// Runs the TrainingJob controller and the admission pass until `shutdown`.
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let changed = Arc::new(Notify::new());
    let (pools, pool_changes) = reflect(
        Api::<GpuPool>::all(client.clone()),
        watcher::Config::default(),
    );
    let (tenants, tenant_changes) = reflect(
        Api::<Tenant>::all(client.clone()),
        watcher::Config::default(),
    );
    let (classes, class_changes) = reflect(
        Api::<PriorityClass>::all(client.clone()),
        watcher::Config::default(),
    );
    // A job waits until every dataset it mounts is its tenant's (own or granted) and Ready.
    let (datasets, dataset_changes) = reflect(
        Api::<aifactory_api::Dataset>::all(client.clone()),
        watcher::Config::default(),
    );
    // Only pool members matter to admission; their image lists do not.
    let (node_reader, node_writer) = reflector::store();
    let node_changes = reflector::reflector(
        node_writer,
        watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().labels(POOL_LABEL).page_size(500),
        )
        .default_backoff()
        .modify(|n| {
            n.managed_fields_mut().clear();
            n.annotations_mut().clear();
            if let Some(s) = n.status.as_mut() {
                s.images = None;
            }
        }),
    )
    .touched_objects()
    .map(|_| ())
    .boxed();
    // Interactive sessions are admitted by the same pass.
    let (workspaces, workspace_changes) = reflect(
        Api::<aifactory_api::Workspace>::all(client.clone()),
        watcher::Config::default(),
    );
    let (pods, pod_changes) = pods::reflect(client.clone());
    let pod_changes = pod_changes.map(|_| ()).boxed();
    let wake = {
        let changed = changed.clone();
        futures::stream::select_all([
            pool_changes,
            tenant_changes,
            class_changes,
            dataset_changes,
            workspace_changes,
            node_changes,
            pod_changes,
        ])
        .for_each(move |_| {
            changed.notify_one();
            futures::future::ready(())
        })
    };

    let owned = || watcher::Config::default().labels(TRAININGJOB_LABEL);
    let (jobs, job_changes) = crate::cache::watch_pruned(
        Api::<Job>::all(client.clone()),
        owned(),
        crate::cache::any_change,
        prune_job,
    );
    let (services, service_changes) = crate::cache::watch_changes(
        Api::<Service>::all(client.clone()),
        owned(),
        crate::cache::desired_fields,
    );
    let controller = Controller::new(
        Api::<TrainingJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_stream(job_changes)
    .owns_stream(service_changes)
    .trigger_backoff(crate::context::TriggerBackoff::default())
    .with_config(
        Config::default()
            .concurrency(concurrency)
            .debounce(Duration::from_millis(300)),
    );
    let caches = pass::Caches {
        jobs: controller.store(),
        pools: pools.clone(),
        tenants: tenants.clone(),
        nodes: node_reader.clone(),
        pods,
        priority_classes: classes,
        datasets,
        workspaces,
    };
    let tenant_store = tenants;
    let admission = pass::run(ctx.clone(), caches, changed.clone(), shutdown.clone());
    let reconciler = controller
        .graceful_shutdown_on(shutdown)
        .run(
            crate::context::unpanicked(reconcile),
            |tj: Arc<TrainingJob>, err: &Error, c: Arc<JobCtx>| {
                on_error(CONTROLLER, tj.as_ref(), err, &c.ctx)
            },
            Arc::new(JobCtx {
                ctx,
                pools,
                jobs,
                services,
                nodes: node_reader,
                tenants: tenant_store,
                changed,
            }),
        )
        .for_each(|_| futures::future::ready(()));
    tokio::select! {
        _ = async { tokio::join!(reconciler, admission) } => {}
        _ = wake => {}
    }
}
