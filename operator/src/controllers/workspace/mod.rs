//! Workspace controller: home and scratch claims (owned by the workspace, so they
//! go with it), the datasets it names checked with the same rule as jobs (its own,
//! or granted to its namespace), its interactive session (admitted by the
//! TrainingJob admission pass, run here as a StatefulSet and Service, stopped at
//! maxLifetime: see [`session`]), and its status.
pub mod build;
pub mod session;

use crate::apply::apply;
use crate::context::{Context, now, on_error};
use crate::controllers::dataset::{
    build::class_refusal, build::owner_tenant, grow_claim, namespace_terminating, refusal,
    retry_soon,
};
use crate::error::{Error, Result};
use aifactory_api::{CONDITION_READY, Dataset, GpuPool, Tenant, Workspace, WorkspacePhase};
use build::Observed;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use kube::api::{Api, DeleteParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "workspace";
/// Settles a running session's usage in its tenant's ledger before the
/// workspace goes.
pub const USAGE_FINALIZER: &str = "aifactory.dev/usage";

struct WorkspaceCtx {
    ctx: Arc<Context>,
    datasets: Store<Dataset>,
    tenants: Store<Tenant>,
}

#[tracing::instrument(skip_all, fields(workspace = %ws.name_any(), namespace = ws.namespace().unwrap_or_default()))]
async fn reconcile(ws: Arc<Workspace>, c: Arc<WorkspaceCtx>) -> Result<Action> {
    let ns = ws.namespace().unwrap_or_default();
    let api: Api<Workspace> = Api::namespaced(c.ctx.client.clone(), &ns);
    let outcome = finalizer(&api, USAGE_FINALIZER, ws, |event| async {
        match event {
            Finalizer::Apply(ws) => provision(&ws, &c).await,
            // A workspace deleted with its session running: the session's hours
            // go to the ledger (the StatefulSet goes with the workspace).
            Finalizer::Cleanup(ws) => {
                settle_session(&c.ctx, &ws, &c.tenants).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await;
    match outcome {
        Ok(action) => Ok(action),
        // The workspace is about to go with its namespace: nothing to retry.
        Err(kube::runtime::finalizer::Error::ApplyFailed(e)) if namespace_terminating(&e) => {
            Ok(Action::await_change())
        }
        Err(e) => Err(Error::Finalizer(Box::new(e))),
    }
}

/// Adds what the session has used this period to its tenant's ledger, if it
/// holds GPUs (called once its stop is recorded, or as its workspace goes).
pub async fn settle_session(ctx: &Context, ws: &Workspace, tenants: &Store<Tenant>) -> Result<()> {
    let Some((pool, _, _)) = session::held(ws) else {
        return Ok(());
    };
    let watts = Api::<GpuPool>::all(ctx.client.clone())
        .get_opt(&pool)
        .await?
        .map_or(0.0, |p| f64::from(p.spec.gpu.power_watts));
    let now = jiff::Timestamp::now();
    let (Some((pool, hours, kwh)), Some(key)) =
        (session::used(ws, watts, now), session::settlement_key(ws))
    else {
        return Ok(());
    };
    // A tenant missing from a cache still filling (a restart) is not a tenant
    // gone: settling nothing would lose the hours.
    crate::context::cache_ready("tenants", tenants).await?;
    let tenants = tenants.state();
    let Some(tenant) = crate::controllers::trainingjob::snapshot::tenant_of(
        &tenants,
        &ws.namespace().unwrap_or_default(),
    ) else {
        return Ok(());
    };
    crate::controllers::usage::settle(
        &ctx.client,
        &tenant.name_any(),
        &pool,
        (hours, kwh),
        now,
        &key,
    )
    .await
}

async fn provision(ws: &Workspace, c: &WorkspaceCtx) -> Result<Action> {
    let ctx = &c.ctx;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = ws
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a Workspace without a namespace".into()))?;
    if ws.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    crate::context::cache_ready("datasets", &c.datasets).await?;
    crate::context::cache_ready("tenants", &c.tenants).await?;
    let previous = ws.status.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let tenants = c.tenants.state();
    let owner = owner_tenant(&ns, &tenants);
    let mut observed = Observed {
        blocked: class_refusal(
            ws.spec.storage.storage_class_name.as_deref(),
            owner.map(|o| o.as_ref()),
        )
        .map(|m| ("StorageClassNotAllowed", m)),
        ..Observed::at(now())
    };
    let desired = build::claims(ws);
    if observed.blocked.is_none() {
        for (claim, size) in &desired {
            let claim_name = claim.name_any();
            let live = claims.get_opt(&claim_name).await?;
            match &live {
                Some(l) if !build::owned_by(l, ws) => {
                    observed.blocked = Some((
                        "ClaimConflict",
                        format!(
                            "a claim named {claim_name} already exists in {ns} and is not this workspace's"
                        ),
                    ));
                    break;
                }
                None => {
                    if let Err(e) = apply(&claims, claim).await {
                        let why = refusal(&e).ok_or(e)?;
                        observed.blocked = Some((
                            "ClaimRefused",
                            format!("the API refused claim {claim_name}: {why}"),
                        ));
                        break;
                    }
                }
                Some(l) => {
                    if let Some(why) = grow_claim(
                        &claims,
                        l,
                        claim,
                        size,
                        &previous.conditions,
                        ws.metadata.generation,
                    )
                    .await?
                    {
                        observed.resize_refused = Some(why);
                    }
                }
            }
            let bound = claims
                .get_opt(&claim_name)
                .await?
                .and_then(|c| c.status)
                .is_some_and(|s| s.phase.as_deref() == Some("Bound"));
            observed.claims.push((claim_name, bound));
        }
    }
    // Scratch dropped from the spec: its claim goes (only ever our own).
    let scratch = build::scratch_claim_name(ws);
    if ws.spec.storage.scratch.is_none()
        && let Some(live) = claims.get_opt(&scratch).await?
        && build::owned_by(&live, ws)
        && live.metadata.deletion_timestamp.is_none()
    {
        claims.delete(&scratch, &DeleteParams::default()).await?;
        ctx.event(
            ws,
            false,
            "ScratchRemoved",
            format!("claim {scratch} deleted: the workspace no longer asks for scratch"),
        )
        .await;
    }
    let datasets = c.datasets.state();
    observed.refusals = build::dataset_refusals(ws, datasets.iter().map(|d| d.as_ref()));

    let base = build::status(ws, &observed);
    let failed = (base.phase == Some(WorkspacePhase::Failed))
        .then(|| crate::conditions::find(&base.conditions, CONDITION_READY))
        .flatten()
        .map(|c| c.message.clone());
    let now_ts = jiff::Timestamp::now();
    let mut plan = session::plan(ws, failed.as_deref(), now_ts);
    let mut pool = None;
    if let (session::Plan::Run { .. }, Some(interactive)) = (&plan, &ws.spec.interactive) {
        pool = Api::<GpuPool>::all(ctx.client.clone())
            .get_opt(&interactive.pool)
            .await?;
        if pool.is_none() {
            plan = session::Plan::Stop(format!("pool {} no longer exists", interactive.pool));
        }
    }
    let ready = run_session(ctx, ws, &ns, &plan, pool.as_ref()).await?;
    let status = session::status(ws, &plan, base, ready, &observed.now);

    let ready = crate::conditions::find(&status.conditions, CONDITION_READY);
    let was = crate::conditions::find(&previous.conditions, CONDITION_READY);
    if let Some(r) = ready
        && was.is_none_or(|w| w.reason != r.reason || w.message != r.message)
        && status.phase == Some(WorkspacePhase::Failed)
    {
        ctx.event(ws, true, &r.reason, r.message.clone()).await;
    }
    if let Some(r) = ready
        && r.status == "True"
        && was.is_none_or(|w| w.status != "True")
    {
        ctx.event(ws, false, &r.reason, r.message.clone()).await;
    }
    let session = crate::conditions::find(&status.conditions, session::CONDITION_SESSION);
    let session_was = crate::conditions::find(&previous.conditions, session::CONDITION_SESSION);
    if let Some(c) = session
        && matches!(c.reason.as_str(), "Running" | "Expired" | "Stopped")
        && session_was.is_none_or(|w| w.reason != c.reason)
    {
        let reason = match c.reason.as_str() {
            "Running" => "SessionRunning",
            "Expired" => "SessionExpired",
            _ => "SessionStopped",
        };
        ctx.event(ws, false, reason, c.message.clone()).await;
    }
    let wrote = crate::controllers::write_status_of(
        &Api::<Workspace>::namespaced(ctx.client.clone(), &ns),
        ws,
        ws.status.as_ref(),
        &status,
    )
    .await?;
    // The stop is recorded: what the session used goes to the ledger (after the
    // write, so a conflicting write that is retried does not count it twice).
    if wrote && matches!(plan, session::Plan::Expire | session::Plan::Stop(_)) {
        settle_session(ctx, ws, &c.tenants).await?;
    }
    let backstop = match status.phase {
        // A refused claim may be accepted once another frees the quota.
        _ if retry_soon(observed.blocked.as_ref()) => Duration::from_secs(60),
        // Claim binding is watched; a minute is a backstop.
        Some(WorkspacePhase::Pending) => Duration::from_secs(60),
        _ => Duration::from_secs(600),
    };
    // A running session is looked at again when it must stop.
    let stop = status
        .session_started_at
        .as_ref()
        .filter(|_| matches!(plan, session::Plan::Run { .. }))
        .and_then(|s| session::stops_at(ws, s))
        .map(|end| {
            end.duration_since(now_ts)
                .as_secs_f64()
                .clamp(0.0, backstop.as_secs_f64())
        })
        .map(|secs| Duration::from_secs_f64(secs) + Duration::from_millis(500));
    Ok(Action::requeue(stop.unwrap_or(backstop).min(backstop)))
}

/// Makes the session's StatefulSet and Service what `plan` says: present and
/// pinned while it runs (on `pool`, which the caller found), gone otherwise.
/// Returns whether its pod is ready.
async fn run_session(
    ctx: &Context,
    ws: &Workspace,
    ns: &str,
    plan: &session::Plan,
    pool: Option<&GpuPool>,
) -> Result<bool> {
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let name = session::session_name(ws);
    if let (session::Plan::Run { node }, Some(pool)) = (plan, pool) {
        apply(&services, &session::service(ws)).await?;
        apply(&sets, &session::statefulset(ws, pool, node)).await?;
        let ready = sets
            .get_opt(&name)
            .await?
            .and_then(|s| s.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        return Ok(ready >= 1);
    }
    delete_owned(&sets, &name, ws).await?;
    delete_owned(&services, &name, ws).await?;
    Ok(false)
}

/// Deletes `name` if it is `ws`'s own and not already going; gone is fine.
async fn delete_owned<K>(api: &Api<K>, name: &str, ws: &Workspace) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(live) = api.get_metadata_opt(name).await? else {
        return Ok(());
    };
    let ours = live
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == ws.metadata.uid.as_ref());
    if !ours || live.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Runs the Workspace controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (dataset_reader, dataset_writer) = reflector::store();
    let dataset_changes = reflector::reflector(
        dataset_writer,
        watcher(
            Api::<Dataset>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|d| d.managed_fields_mut().clear()),
    )
    .touched_objects();
    let (tenant_reader, tenant_writer) = reflector::store();
    let tenant_changes = reflector::reflector(
        tenant_writer,
        watcher(
            Api::<Tenant>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|t| t.managed_fields_mut().clear()),
    )
    .touched_objects();
    let controller = Controller::new(
        Api::<Workspace>::all(client.clone()),
        watcher::Config::default(),
    )
    .trigger_backoff(crate::context::TriggerBackoff::default())
    .with_config(
        Config::default()
            .concurrency(concurrency)
            .debounce(Duration::from_millis(200)),
    );
    let workspaces = controller.store();
    let in_namespaces = workspaces.clone();
    controller
        .owns_stream(
            watcher(
                Api::<PartialObjectMeta<PersistentVolumeClaim>>::all(client.clone()),
                watcher::Config::default().labels(build::WORKSPACE_LABEL),
            )
            .default_backoff()
            .touched_objects(),
        )
        // The session's StatefulSet (its readiness) and Service.
        .owns_stream(
            watcher(
                Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()),
                watcher::Config::default().labels(session::SESSION_LABEL),
            )
            .default_backoff()
            .touched_objects(),
        )
        .owns_stream(
            watcher(
                Api::<PartialObjectMeta<Service>>::all(client.clone()),
                watcher::Config::default().labels(session::SESSION_LABEL),
            )
            .default_backoff()
            .touched_objects(),
        )
        // A dataset becoming Ready, shared or unshared changes what may be mounted.
        .watches_stream(dataset_changes, move |ds: Dataset| {
            let (ds_ns, ds_name) = (ds.namespace().unwrap_or_default(), ds.name_any());
            workspaces
                .state()
                .iter()
                .filter(|w| {
                    let ns = w.namespace().unwrap_or_default();
                    w.spec
                        .datasets
                        .iter()
                        .any(|m| m.name == ds_name && m.dataset_namespace(&ns) == ds_ns)
                })
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        })
        // A tenant's allowed storage classes apply to its workspaces.
        .watches_stream(tenant_changes, move |tenant: Tenant| {
            let namespaces = tenant.status.map(|s| s.namespaces).unwrap_or_default();
            in_namespaces
                .state()
                .iter()
                .filter(|w| namespaces.contains(&w.namespace().unwrap_or_default()))
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            crate::context::unpanicked(reconcile),
            |ws: Arc<Workspace>, err: &Error, c: Arc<WorkspaceCtx>| {
                on_error(CONTROLLER, ws.as_ref(), err, &c.ctx)
            },
            Arc::new(WorkspaceCtx {
                ctx,
                datasets: dataset_reader,
                tenants: tenant_reader,
            }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}
