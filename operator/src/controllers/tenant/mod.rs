//! Tenant controller: gives each tenant its namespaces (Pod Security `restricted`,
//! quota, limits, RBAC for owners and members, a network policy that keeps other
//! tenants out, a ServiceAccount for jobs) and the right to read its own Tenant.
pub mod build;

use crate::apply::{Applied, apply};
use crate::conditions::condition;
use crate::context::{Context, now, on_error};
use crate::error::{Error, Result};
use aifactory_api::{CONDITION_READY, DeletionPolicy, GpuPool, TENANT_LABEL, Tenant, TenantStatus};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "tenant";
/// Deletes or releases the tenant's namespaces before the Tenant goes.
pub const FINALIZER: &str = "aifactory.dev/namespaces";

struct TenantCtx {
    ctx: Arc<Context>,
    pools: Store<GpuPool>,
}

#[tracing::instrument(skip_all, fields(tenant = %tenant.name_any()))]
async fn reconcile(tenant: Arc<Tenant>, tc: Arc<TenantCtx>) -> Result<Action> {
    let _timer = tc.ctx.metrics.reconcile(CONTROLLER);
    let api: Api<Tenant> = Api::all(tc.ctx.client.clone());
    finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(tenant) => apply_tenant(tenant, &tc).await,
            Finalizer::Cleanup(tenant) => cleanup(tenant, &tc.ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn owned_selector(tenant: &str) -> ListParams {
    ListParams::default().labels(&format!("{TENANT_LABEL}={tenant}"))
}

async fn apply_tenant(tenant: Arc<Tenant>, tc: &TenantCtx) -> Result<Action> {
    let ctx = &tc.ctx;
    let client = &ctx.client;
    let name = tenant.name_any();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let ceilings = build::gpu_ceilings(&tenant, &tc.pools.state());
    let mut owned = vec![];
    let mut refusals = vec![];
    for ns in tenant.spec.namespaces_or_default(&name) {
        if let Some(why) = build::namespace_refusal(&name, ns_api.get_opt(&ns).await?.as_ref()) {
            refusals.push(why);
            continue;
        }
        let children = build::namespace_children(&tenant, &ns, &ceilings);
        if apply(&ns_api, &children.namespace).await? == Applied::Created {
            ctx.event(
                tenant.as_ref(),
                false,
                "NamespaceCreated",
                format!("namespace {ns} created"),
            )
            .await;
        }
        apply(
            &Api::<ResourceQuota>::namespaced(client.clone(), &ns),
            &children.quota,
        )
        .await?;
        apply(
            &Api::<LimitRange>::namespaced(client.clone(), &ns),
            &children.limits,
        )
        .await?;
        apply(
            &Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
            &children.network_policy,
        )
        .await?;
        apply(
            &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
            &children.service_account,
        )
        .await?;
        let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
        for role in &children.roles {
            apply(&roles, role).await?;
        }
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        for binding in &children.bindings {
            apply(&bindings, binding).await?;
        }
        // A binding that dropped out of the desired state (no members any more) goes.
        if !children
            .bindings
            .iter()
            .any(|b| b.name_any() == build::MEMBER_ROLE)
            && bindings.get_opt(build::MEMBER_ROLE).await?.is_some()
        {
            bindings
                .delete(build::MEMBER_ROLE, &DeleteParams::default())
                .await?;
        }
        owned.push(ns);
    }
    release_dropped_namespaces(&tenant, &owned, ctx).await?;
    let (role, binding) = build::cluster_rbac(&tenant);
    apply(&Api::<ClusterRole>::all(client.clone()), &role).await?;
    apply(&Api::<ClusterRoleBinding>::all(client.clone()), &binding).await?;

    let previous = tenant.status.clone().unwrap_or_default();
    let ready = refusals.is_empty();
    let (reason, message) = if ready {
        ("Provisioned", format!("{} namespaces ready", owned.len()))
    } else {
        ("NamespaceConflict", refusals.join("; "))
    };
    if !ready
        && crate::conditions::find(&previous.conditions, CONDITION_READY)
            .is_none_or(|c| c.message != message)
    {
        ctx.event(tenant.as_ref(), true, reason, message.clone())
            .await;
    }
    let status = TenantStatus {
        observed_generation: tenant.metadata.generation,
        namespaces: owned,
        conditions: vec![condition(
            &previous.conditions,
            CONDITION_READY,
            ready,
            reason,
            message,
            tenant.metadata.generation,
            &now(),
        )],
        ..Default::default()
    };
    // Only this controller's fields: usage and budget belong to the job accounting.
    let ours = json!({"observedGeneration": status.observed_generation, "namespaces": status.namespaces, "conditions": status.conditions});
    crate::controllers::write_status(
        &Api::<Tenant>::all(client.clone()),
        &name,
        tenant.status.as_ref(),
        &ours,
        false,
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Namespaces labelled for the tenant that it no longer lists: deleted, or with
/// `Retain` released (label removed, the tenant's RBAC in them removed).
async fn release_dropped_namespaces(tenant: &Tenant, keep: &[String], ctx: &Context) -> Result<()> {
    let name = tenant.name_any();
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    for ns in ns_api.list_metadata(&owned_selector(&name)).await? {
        let ns_name = ns.name_any();
        if keep.contains(&ns_name) || ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        release_namespace(&ns_name, tenant.spec.deletion_policy, ctx).await?;
        ctx.event(
            tenant,
            false,
            "NamespaceReleased",
            format!(
                "namespace {ns_name} is no longer the tenant's ({:?})",
                tenant.spec.deletion_policy
            ),
        )
        .await;
    }
    Ok(())
}

async fn release_namespace(ns: &str, policy: DeletionPolicy, ctx: &Context) -> Result<()> {
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    // Gone already (the garbage collector, a retried cleanup): what was wanted.
    let gone = |r: kube::Result<_>| match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    };
    match policy {
        DeletionPolicy::Delete => {
            gone(
                ns_api
                    .delete(ns, &DeleteParams::background())
                    .await
                    .map(|_| ()),
            )?;
        }
        DeletionPolicy::Retain => {
            let roles: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), ns);
            for b in [build::OWNER_ROLE, build::MEMBER_ROLE] {
                if roles.get_opt(b).await?.is_some() {
                    gone(roles.delete(b, &DeleteParams::default()).await.map(|_| ()))?;
                }
            }
            let patch = json!({"metadata": {"labels": {TENANT_LABEL: null}}});
            ns_api
                .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(())
}

async fn cleanup(tenant: Arc<Tenant>, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    let namespaces = ns_api.list_metadata(&owned_selector(&name)).await?;
    for ns in &namespaces.items {
        release_namespace(&ns.name_any(), tenant.spec.deletion_policy, ctx).await?;
    }
    ctx.event(
        tenant.as_ref(),
        false,
        "TenantDeleted",
        format!(
            "{} namespaces {}",
            namespaces.items.len(),
            match tenant.spec.deletion_policy {
                DeletionPolicy::Delete => "deleted",
                DeletionPolicy::Retain => "retained",
            }
        ),
    )
    .await;
    // The cluster RBAC and namespaced children carry owner references: the
    // garbage collector removes them once the Tenant is gone.
    Ok(Action::await_change())
}

/// Runs the Tenant controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    pools: (
        Store<GpuPool>,
        impl futures::Stream<Item = Result<GpuPool, watcher::Error>> + Send + 'static,
    ),
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let owned = watcher::Config::default().labels(TENANT_LABEL);
    let controller = Controller::new(
        Api::<Tenant>::all(client.clone()),
        watcher::Config::default(),
    )
    .trigger_backoff(crate::context::TriggerBackoff::default())
    .with_config(
        Config::default()
            .concurrency(concurrency)
            .debounce(Duration::from_millis(200)),
    );
    let tenants = controller.store();
    let by_label = |ns: Namespace| {
        ns.labels()
            .get(TENANT_LABEL)
            .map(|t| ObjectRef::<Tenant>::new(t))
    };
    controller
        .owns(Api::<ResourceQuota>::all(client.clone()), owned.clone())
        .owns(Api::<LimitRange>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned.clone())
        .owns(Api::<Role>::all(client.clone()), owned.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), owned.clone())
        .owns(Api::<ClusterRole>::all(client.clone()), owned.clone())
        .owns(
            Api::<ClusterRoleBinding>::all(client.clone()),
            owned.clone(),
        )
        .watches(Api::<Namespace>::all(client.clone()), owned, by_label)
        // GPU ceilings follow pool capacity: a pool change revisits every tenant.
        .watches_stream(pools.1, move |_: GpuPool| {
            tenants
                .state()
                .iter()
                .map(|t| ObjectRef::from_obj(t.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            crate::context::unpanicked(reconcile),
            |t: Arc<Tenant>, err: &Error, tc: Arc<TenantCtx>| {
                on_error(CONTROLLER, t.as_ref(), err, &tc.ctx)
            },
            Arc::new(TenantCtx {
                ctx,
                pools: pools.0,
            }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}
