//! Dataset controller: gives each Dataset its claim (named after it), fills it with
//! an import Job when it has a source, and, once the data is Ready, gives every
//! tenant it is shared with (residency permitting) a read-only volume and claim on
//! the same data in each of its namespaces. Withdrawn grants and, on deletion, the
//! dataset itself wait until no unfinished pod mounts the claim: a job never loses
//! its data mid-run. The grants live outside the Dataset's namespace (volumes are
//! cluster-scoped, claims in other namespaces), where owner references cannot
//! reach, so a finalizer removes them.
pub mod build;

use crate::apply::apply;
use crate::conditions::find;
use crate::context::{Context, now, on_error};
use crate::error::{Error, Result};
use aifactory_api::{CONDITION_READY, Dataset, DatasetConsumer, DatasetPhase, GpuPool, Tenant};
use build::{
    CONDITION_RESIZED, CONDITION_SHARED, DATASET_ANNOTATION, DATASET_LABEL, Observed, Refusal,
};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "dataset";
/// Removes the grants (read-only volumes and claims of other tenants) before the
/// Dataset goes, once no pod uses the data.
pub const FINALIZER: &str = "aifactory.dev/dataset-grants";
/// How often a dataset waiting for pods to let go of its claims looks again.
const IN_USE_RECHECK: Duration = Duration::from_secs(3);
/// Resync of a settled dataset (tenants and pools are watched; this is a backstop).
const RESYNC: Duration = Duration::from_secs(600);

struct DatasetCtx {
    ctx: Arc<Context>,
    tenants: Store<Tenant>,
    pools: Store<GpuPool>,
}

/// Unfinished pods of `ns` that mount `claim`.
pub async fn claim_users(client: &Client, ns: &str, claim: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let unfinished = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    Ok(build::pods_using(
        &pods.list(&unfinished).await?.items,
        claim,
    ))
}

/// Grows a claim to `size` when the spec grew, unless the API refused it already
/// for this generation (a class without volume expansion): the refusal to report.
pub async fn grow_claim(
    api: &Api<PersistentVolumeClaim>,
    live: &PersistentVolumeClaim,
    desired: &PersistentVolumeClaim,
    size: &str,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    generation: Option<i64>,
) -> Result<Option<String>> {
    if !build::claim_must_grow(live, size) {
        return Ok(None);
    }
    if let Some(c) = find(previous, CONDITION_RESIZED)
        && c.status == "False"
        && c.observed_generation == generation
    {
        return Ok(Some(c.message.clone()));
    }
    // The whole claim, with its new size: an apply is this manager's full intent,
    // so a body of the size alone would drop the name, labels, owner and access
    // modes it applied before (the API server answers 400, or 422).
    match api
        .patch(
            &desired.name_any(),
            &PatchParams::apply(crate::MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 422) => Ok(Some(format!(
            "claim {} cannot grow to {size}: {}",
            desired.name_any(),
            s.message
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Whether `err` is the API refusing to create in a namespace being deleted: the
/// Dataset itself is about to go with it, so there is nothing to retry.
pub fn namespace_terminating(err: &Error) -> bool {
    matches!(err, Error::Kube(kube::Error::Api(s))
        if s.code == 403 && s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// The API's refusal of a child the spec asks for (a ResourceQuota it exceeds, a
/// LimitRange or admission policy it breaks), as the message to report in the
/// status: the spec cannot be provisioned as it stands, which the owner must be
/// told, not an error to retry fast with nothing said. A namespace being deleted
/// is not one (the object goes with it).
pub fn refusal(err: &Error) -> Option<String> {
    match err {
        Error::Kube(kube::Error::Api(s))
            if matches!(s.code, 403 | 422) && !namespace_terminating(err) =>
        {
            Some(s.message.clone())
        }
        _ => None,
    }
}

/// Whether a status blocked for `reason` is retried soon: a refusal may lift
/// without any change to the object (another claim frees the quota).
pub fn retry_soon(blocked: Option<&(&'static str, String)>) -> bool {
    blocked.is_some_and(|(reason, _)| *reason == "ClaimRefused" || *reason == "ImportRefused")
}

/// Sets or removes this controller's finalizer, on condition that the object did
/// not change meanwhile (its resourceVersion), so no other finalizer is lost.
async fn set_finalizer(api: &Api<Dataset>, ds: &Dataset, present: bool) -> Result<()> {
    let mut finalizers: Vec<String> = ds
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.into());
    }
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ds.resource_version()}});
    api.patch(
        &ds.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// The read-only claims made for `ds` in other namespaces, as `(namespace, claim,
/// volume)`: from the volumes (cluster-wide) and the claims that carry its label.
async fn grants_made(
    client: &Client,
    ds: &Dataset,
) -> Result<Vec<(String, String, Option<String>)>> {
    let selector =
        ListParams::default().labels(&format!("{DATASET_LABEL}={}", build::label_value(ds)));
    let ns = ds.namespace().unwrap_or_default();
    let mut made: Vec<(String, String, Option<String>)> = vec![];
    for pv in Api::<PersistentVolume>::all(client.clone())
        .list(&selector)
        .await?
    {
        if !build::made_for(&pv, ds) {
            continue;
        }
        let claim_ref = pv
            .spec
            .clone()
            .and_then(|s| s.claim_ref)
            .unwrap_or_default();
        made.push((
            claim_ref.namespace.unwrap_or_default(),
            claim_ref.name.unwrap_or_default(),
            Some(pv.name_any()),
        ));
    }
    for claim in Api::<PersistentVolumeClaim>::all(client.clone())
        .list_metadata(&selector)
        .await?
    {
        let claim_ns = claim.namespace().unwrap_or_default();
        if claim_ns == ns || !build::made_for(&claim, ds) {
            continue;
        }
        if !made
            .iter()
            .any(|(n, c, _)| *n == claim_ns && *c == claim.name_any())
        {
            made.push((claim_ns, claim.name_any(), None));
        }
    }
    Ok(made)
}

/// Removes a grant's claim and volume unless an unfinished pod still mounts the
/// claim; then returns who uses it.
async fn withdraw(
    client: &Client,
    ns: &str,
    claim: &str,
    volume: Option<&str>,
) -> Result<Vec<String>> {
    let users = claim_users(client, ns, claim).await?;
    if !users.is_empty() {
        return Ok(users);
    }
    let gone = |r: kube::Result<_>| match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::from(e)),
    };
    gone(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .delete(claim, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    if let Some(volume) = volume {
        gone(
            Api::<PersistentVolume>::all(client.clone())
                .delete(volume, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    }
    Ok(vec![])
}

#[tracing::instrument(skip_all, fields(dataset = %ds.name_any(), namespace = ds.namespace().unwrap_or_default()))]
async fn reconcile(ds: Arc<Dataset>, c: Arc<DatasetCtx>) -> Result<Action> {
    let ctx = &c.ctx;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = ds
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a Dataset without a namespace".into()))?;
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    // Residency is judged on complete caches, never on a tenant not seen yet.
    crate::context::cache_ready("tenants", &c.tenants).await?;
    crate::context::cache_ready("pools", &c.pools).await?;
    let has_finalizer = ds.finalizers().iter().any(|f| f == FINALIZER);
    if ds.metadata.deletion_timestamp.is_some() {
        return if has_finalizer {
            cleanup(&ds, &api, ctx).await
        } else {
            Ok(Action::await_change())
        };
    }
    if !has_finalizer {
        // The next reconcile (the finalizer's change) does the rest.
        set_finalizer(&api, &ds, true).await?;
        return Ok(Action::await_change());
    }
    match provision(&ds, &api, &c).await {
        Err(e) if namespace_terminating(&e) => Ok(Action::await_change()),
        outcome => outcome,
    }
}

async fn provision(ds: &Dataset, api: &Api<Dataset>, c: &DatasetCtx) -> Result<Action> {
    let ctx = &c.ctx;
    let client = &ctx.client;
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let previous = ds.status.clone().unwrap_or_default();
    let tenants = c.tenants.state();
    let pools = c.pools.state();
    let owner = build::owner_tenant(&ns, &tenants).cloned();
    let mut observed = Observed {
        owner: owner.as_deref(),
        ..Observed::at(now())
    };
    let mut requeue = RESYNC;

    // The claim holding the data.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let mut claim = claims.get_opt(&name).await?;
    observed.blocked =
        build::class_refusal(ds.spec.storage_class_name.as_deref(), owner.as_deref())
            .map(|m| ("StorageClassNotAllowed", m));
    if observed.blocked.is_none()
        && let Some(live) = &claim
        && !build::made_for(live, ds)
    {
        observed.blocked = Some((
            "ClaimConflict",
            format!("a claim named {name} already exists in {ns} and is not this dataset's"),
        ));
        claim = None;
    }
    // A claim that held the data and was deleted behind the dataset's back is not
    // silently replaced by an empty one.
    if observed.blocked.is_none()
        && claim.is_none()
        && let Some(volume) = &previous.volume_name
    {
        observed.blocked = Some((
            "ClaimLost",
            format!(
                "claim {name} on volume {volume} was deleted; delete and recreate the Dataset to provision it again"
            ),
        ));
    }
    if observed.blocked.is_none() {
        let desired = build::owner_claim(ds);
        match &claim {
            None => match apply(&claims, &desired).await {
                Ok(_) => claim = claims.get_opt(&name).await?,
                Err(e) => {
                    let why = refusal(&e).ok_or(e)?;
                    observed.blocked = Some((
                        "ClaimRefused",
                        format!("the API refused claim {name}: {why}"),
                    ));
                }
            },
            Some(live) => {
                observed.resize_refused = grow_claim(
                    &claims,
                    live,
                    &desired,
                    &ds.spec.size,
                    &previous.conditions,
                    ds.metadata.generation,
                )
                .await?;
            }
        }
    }
    let bound = claim
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .is_some_and(|s| s.phase.as_deref() == Some("Bound"));
    let volume = match claim
        .as_ref()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.volume_name.as_deref())
    {
        Some(v) if bound => {
            Api::<PersistentVolume>::all(client.clone())
                .get_opt(v)
                .await?
        }
        _ => None,
    };
    observed.claim = claim.as_ref();
    observed.volume = volume.as_ref();

    // The import, until it is recorded as done (its Job may be gone since).
    if observed.blocked.is_none()
        && bound
        && previous.imported_at.is_none()
        && let Some(desired) = build::import_job(ds)
    {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let job_name = desired.name_any();
        let mut job = jobs.get_opt(&job_name).await?;
        if job.as_ref().is_some_and(|j| !build::made_for(j, ds)) {
            observed.blocked = Some((
                "JobConflict",
                format!(
                    "a Job named {job_name} already exists in {ns} and is not this dataset's import"
                ),
            ));
        } else {
            let refused = match &job {
                Some(_) => None,
                None => apply(&jobs, &desired).await.err(),
            };
            if let Some(e) = refused {
                let why = refusal(&e).ok_or(e)?;
                observed.blocked = Some((
                    "ImportRefused",
                    format!("the API refused import job {job_name}: {why}"),
                ));
            } else if job.is_none() {
                let url = ds
                    .spec
                    .source
                    .as_ref()
                    .map(|s| s.url.as_str())
                    .unwrap_or_default();
                ctx.event(
                    ds,
                    false,
                    "ImportStarted",
                    format!("job {job_name} imports {url}"),
                )
                .await;
                job = jobs.get_opt(&job_name).await?;
            }
            observed.import = Some(build::import_state(job.as_ref()));
        }
    }

    // Grants, once the data is Ready; until then they stay as they are.
    let preview = build::status(ds, &observed);
    if preview.phase == Some(DatasetPhase::Ready) {
        let regions = build::data_regions(volume.as_ref(), owner.as_deref());
        let (wanted, refusals) = build::grants(ds, owner.as_deref(), &regions, &tenants, &pools);
        observed.refusals = refusals;
        if let Some(source) = &volume {
            for consumer in &wanted {
                match grant(ds, source, consumer, client).await? {
                    Ok(()) => observed.consumers.push(consumer.clone()),
                    Err(refusal) => observed.refusals.push(refusal),
                }
            }
        }
        let keep: BTreeSet<(String, String)> = wanted
            .iter()
            .map(|c| (c.namespace.clone(), c.claim_name.clone()))
            .collect();
        for (claim_ns, claim_name, pv) in grants_made(client, ds).await? {
            if keep.contains(&(claim_ns.clone(), claim_name.clone())) {
                continue;
            }
            let users = withdraw(client, &claim_ns, &claim_name, pv.as_deref()).await?;
            if users.is_empty() {
                ctx.event(
                    ds,
                    false,
                    "GrantRevoked",
                    format!("read-only claim {claim_ns}/{claim_name} removed"),
                )
                .await;
            } else {
                observed.revoking.push(format!(
                    "{claim_ns}/{claim_name} is used by {}",
                    users.join(", ")
                ));
                requeue = IN_USE_RECHECK;
            }
        }
    }

    let status = build::status(ds, &observed);
    announce(ds, &status, ctx).await;
    crate::controllers::write_status(api, &name, ds.status.as_ref(), &status, true).await?;
    Ok(match status.phase {
        _ if retry_soon(observed.blocked.as_ref()) => Action::requeue(Duration::from_secs(60)),
        Some(DatasetPhase::Ready | DatasetPhase::Failed) => Action::requeue(requeue),
        // Claim binding and the import Job are watched.
        _ => Action::requeue(Duration::from_secs(60)),
    })
}

/// Makes one grant's read-only volume and claim. The inner Err is a grant that
/// cannot stand (a name taken by someone else, a namespace refusing the claim).
async fn grant(
    ds: &Dataset,
    source: &PersistentVolume,
    consumer: &DatasetConsumer,
    client: &Client,
) -> Result<std::result::Result<(), Refusal>> {
    let refuse = |reason: &'static str, message: String| {
        Ok(Err(Refusal {
            tenant: consumer.tenant.clone(),
            reason,
            message,
        }))
    };
    let volume = match build::shared_volume(ds, source, consumer) {
        Ok(v) => v,
        Err(why) => return refuse("VolumeNotShareable", why),
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let live = pvs.get_opt(&volume.name_any()).await?;
    if live.as_ref().is_some_and(|v| !build::made_for(v, ds)) {
        return refuse(
            "ClaimConflict",
            format!(
                "a volume named {} exists and is not this dataset's",
                volume.name_any()
            ),
        );
    }
    // The consumer deleted its claim: the volume is Released and would never bind
    // the claim made again, unless it forgets the old one (the data is untouched).
    if live
        .and_then(|v| v.status)
        .is_some_and(|s| s.phase.as_deref() == Some("Released"))
    {
        pvs.patch(
            &volume.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"claimRef": {"uid": null, "resourceVersion": null}}})),
        )
        .await?;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &consumer.namespace);
    if claims
        .get_opt(&consumer.claim_name)
        .await?
        .is_some_and(|c| !build::made_for(&c, ds))
    {
        return refuse(
            "ClaimConflict",
            format!(
                "a claim named {} exists in {} and is not this dataset's",
                consumer.claim_name, consumer.namespace
            ),
        );
    }
    apply(&pvs, &volume).await?;
    match apply(&claims, &build::shared_claim(ds, &volume, consumer)).await {
        Ok(_) => Ok(Ok(())),
        // A namespace being deleted, or a quota that refuses one more claim.
        Err(Error::Kube(kube::Error::Api(s))) if matches!(s.code, 403 | 404 | 409) => refuse(
            "ClaimRefused",
            format!(
                "claim {} in {}: {}",
                consumer.claim_name, consumer.namespace, s.message
            ),
        ),
        Err(e) => Err(e),
    }
}

/// Events for what changed: a new phase, a grant refused, deletion held up.
async fn announce(ds: &Dataset, status: &aifactory_api::DatasetStatus, ctx: &Context) {
    let previous = ds.status.clone().unwrap_or_default();
    let changed = |type_: &str| {
        let new = find(&status.conditions, type_);
        let old = find(&previous.conditions, type_);
        match (new, old) {
            (Some(n), Some(o)) => (n.status != o.status || n.message != o.message).then_some(n),
            (Some(n), None) => Some(n),
            _ => None,
        }
    };
    if let Some(ready) = changed(CONDITION_READY)
        && (status.phase != previous.phase || ready.reason == "InUse")
    {
        let warning = ready.reason == "InUse" || status.phase == Some(DatasetPhase::Failed);
        ctx.event(ds, warning, &ready.reason, ready.message.clone())
            .await;
    }
    if let Some(shared) = changed(CONDITION_SHARED)
        && shared.reason != "WaitingForData"
    {
        ctx.event(
            ds,
            shared.status == "False",
            &shared.reason,
            shared.message.clone(),
        )
        .await;
    }
}

/// Deletion: stop the import, wait until no unfinished pod mounts the data (here
/// or in a consumer's namespace), remove the grants, then let the Dataset go (its
/// own claim and Job follow by owner reference).
async fn cleanup(ds: &Dataset, api: &Api<Dataset>, ctx: &Context) -> Result<Action> {
    let client = &ctx.client;
    let ns = ds.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job_name = build::import_job_name(ds);
    if let Some(job) = jobs.get_opt(&job_name).await?
        && build::made_for(&job, ds)
        && job.metadata.deletion_timestamp.is_none()
    {
        jobs.delete(&job_name, &DeleteParams::background()).await?;
    }
    let own_claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get_opt(&ds.name_any())
        .await?
        .filter(|c| build::made_for(c, ds));
    let mut users = match own_claim {
        Some(_) => claim_users(client, &ns, &ds.name_any()).await?,
        None => vec![],
    };
    let made = grants_made(client, ds).await?;
    for (claim_ns, claim, _) in &made {
        users.extend(claim_users(client, claim_ns, claim).await?);
    }
    if !users.is_empty() {
        let observed = Observed {
            in_use: users,
            ..Observed::at(now())
        };
        // Only the Ready condition speaks during deletion; the rest stays as it was.
        let mut status = ds.status.clone().unwrap_or_default();
        let waiting = build::status(ds, &observed);
        status.conditions.retain(|c| c.type_ != CONDITION_READY);
        status.conditions.extend(
            waiting
                .conditions
                .into_iter()
                .filter(|c| c.type_ == CONDITION_READY),
        );
        announce(ds, &status, ctx).await;
        crate::controllers::write_status(api, &ds.name_any(), ds.status.as_ref(), &status, true)
            .await?;
        return Ok(Action::requeue(IN_USE_RECHECK));
    }
    for (claim_ns, claim, volume) in &made {
        withdraw(client, claim_ns, claim, volume.as_deref()).await?;
    }
    set_finalizer(api, ds, false).await?;
    Ok(Action::await_change())
}

/// A reflector of `api` with managed fields pruned, and a stream of its changes.
fn reflect<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o| o.managed_fields_mut().clear()),
    )
    .touched_objects();
    (reader, stream)
}

/// The dataset a child names in its annotation.
fn dataset_of<K: Resource>(child: &PartialObjectMeta<K>) -> Option<ObjectRef<Dataset>> {
    let (ns, name) = child
        .annotations()
        .get(DATASET_ANNOTATION)?
        .split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

/// Runs the Dataset controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (tenants, tenant_changes) = reflect(Api::<Tenant>::all(client.clone()));
    let (pools, pool_changes) = reflect(Api::<GpuPool>::all(client.clone()));
    let labelled = watcher::Config::default().labels(DATASET_LABEL);
    let controller = Controller::new(
        Api::<Dataset>::all(client.clone()),
        watcher::Config::default(),
    )
    .trigger_backoff(crate::context::TriggerBackoff::default())
    .with_config(
        Config::default()
            .concurrency(concurrency)
            .debounce(Duration::from_millis(200)),
    );
    let datasets = controller.store();
    let shared = datasets.clone();
    controller
        .owns_stream(
            watcher(
                Api::<PartialObjectMeta<Job>>::all(client.clone()),
                labelled.clone(),
            )
            .default_backoff()
            .touched_objects(),
        )
        // Claims here and in consumers' namespaces, and the grants' volumes.
        .watches_stream(
            watcher(
                Api::<PartialObjectMeta<PersistentVolumeClaim>>::all(client.clone()),
                labelled.clone(),
            )
            .default_backoff()
            .touched_objects(),
            |claim| dataset_of(&claim),
        )
        .watches_stream(
            watcher(
                Api::<PartialObjectMeta<PersistentVolume>>::all(client.clone()),
                labelled,
            )
            .default_backoff()
            .touched_objects(),
            |volume| dataset_of(&volume),
        )
        // A tenant's namespaces, residency or quota decide its grants and its own
        // datasets' residency.
        .watches_stream(tenant_changes, move |tenant: Tenant| {
            let name = tenant.name_any();
            let namespaces = tenant.status.map(|s| s.namespaces).unwrap_or_default();
            datasets
                .state()
                .iter()
                .filter(|d| {
                    namespaces.contains(&d.namespace().unwrap_or_default())
                        || d.spec.sharing.iter().any(|s| s.tenants.contains(&name))
                })
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        // A pool's region decides who may read shared data.
        .watches_stream(pool_changes, move |_: GpuPool| {
            shared
                .state()
                .iter()
                .filter(|d| {
                    d.spec
                        .sharing
                        .as_ref()
                        .is_some_and(|s| !s.tenants.is_empty())
                })
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            crate::context::unpanicked(reconcile),
            |ds: Arc<Dataset>, err: &Error, c: Arc<DatasetCtx>| {
                on_error(CONTROLLER, ds.as_ref(), err, &c.ctx)
            },
            Arc::new(DatasetCtx {
                ctx,
                tenants,
                pools,
            }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}
