//! Tenant controller: gives each tenant its namespaces (Pod Security `restricted`,
//! quota, limits, RBAC for owners and members, a network policy that keeps other
//! tenants out, a ServiceAccount for jobs) and the right to read its own Tenant.
pub mod build;

use crate::apply::{Applied, apply_cached};
use crate::cache::{cached, desired_fields, labelled, watch_changes};
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
    live: Live,
}

/// Watch caches of everything the controller writes: what is already as desired
/// is read here, not from the API server.
struct Live {
    /// Every namespace (a namespace of the same name that is not the tenant's is
    /// a conflict to report).
    namespaces: Store<Namespace>,
    quotas: Store<ResourceQuota>,
    limits: Store<LimitRange>,
    network_policies: Store<NetworkPolicy>,
    service_accounts: Store<ServiceAccount>,
    roles: Store<Role>,
    bindings: Store<RoleBinding>,
    cluster_roles: Store<ClusterRole>,
    cluster_bindings: Store<ClusterRoleBinding>,
}

#[tracing::instrument(skip_all, fields(tenant = %tenant.name_any()))]
async fn reconcile(tenant: Arc<Tenant>, tc: Arc<TenantCtx>) -> Result<Action> {
    let _timer = tc.ctx.metrics.reconcile(CONTROLLER);
    let api: Api<Tenant> = Api::all(tc.ctx.client.clone());
    finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(tenant) => apply_tenant(tenant, &tc).await,
            Finalizer::Cleanup(tenant) => cleanup(tenant, &tc).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply_tenant(tenant: Arc<Tenant>, tc: &TenantCtx) -> Result<Action> {
    let ctx = &tc.ctx;
    let live = &tc.live;
    let client = &ctx.client;
    let name = tenant.name_any();
    // Conflicts and dropped namespaces are judged from the caches, and what they
    // do not hold is applied without a read: an object not listed yet is not an
    // object that does not exist, so nothing is done before they are filled.
    live.ready().await?;
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let ceilings = build::gpu_ceilings(&tenant, &tc.pools.state());
    let mut owned = vec![];
    let mut refusals = vec![];
    for ns in tenant.spec.namespaces_or_default(&name) {
        let existing = cached(&live.namespaces, None, &ns);
        if let Some(why) = build::namespace_refusal(&name, existing.as_deref()) {
            refusals.push(why);
            continue;
        }
        let build::NamespaceChildren {
            namespace,
            quota,
            limits,
            roles,
            bindings,
            network_policy,
            service_account,
        } = build::namespace_children(&tenant, &ns, &ceilings);
        if apply_cached(&ns_api, &live.namespaces, &namespace).await? == Applied::Created {
            ctx.event(
                tenant.as_ref(),
                false,
                "NamespaceCreated",
                format!("namespace {ns} created"),
            )
            .await;
        }

        apply_cached(&Api::namespaced(client.clone(), &ns), &live.quotas, &quota).await?;
        apply_cached(&Api::namespaced(client.clone(), &ns), &live.limits, &limits).await?;
        apply_cached(
            &Api::namespaced(client.clone(), &ns),
            &live.network_policies,
            &network_policy,
        )
        .await?;
        apply_cached(
            &Api::namespaced(client.clone(), &ns),
            &live.service_accounts,
            &service_account,
        )
        .await?;
        let role_api: Api<Role> = Api::namespaced(client.clone(), &ns);
        for role in &roles {
            apply_cached(&role_api, &live.roles, role).await?;
        }
        let binding_api: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        for binding in &bindings {
            apply_cached(&binding_api, &live.bindings, binding).await?;
        }
        // A binding that dropped out of the desired state (no members any more) goes.
        if !bindings.iter().any(|b| b.name_any() == build::MEMBER_ROLE)
            && cached(&live.bindings, Some(&ns), build::MEMBER_ROLE).is_some()
        {
            gone(
                binding_api
                    .delete(build::MEMBER_ROLE, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )?;
        }
        owned.push(ns);
    }
    release_dropped_namespaces(&tenant, &owned, tc).await?;
    let (role, binding) = build::cluster_rbac(&tenant);
    apply_cached(&Api::all(client.clone()), &live.cluster_roles, &role).await?;
    apply_cached(&Api::all(client.clone()), &live.cluster_bindings, &binding).await?;

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
async fn release_dropped_namespaces(
    tenant: &Tenant,
    keep: &[String],
    tc: &TenantCtx,
) -> Result<()> {
    let name = tenant.name_any();
    for ns in labelled(&tc.live.namespaces, TENANT_LABEL, &name) {
        let ns_name = ns.name_any();
        if keep.contains(&ns_name) || ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        release_namespace(&ns_name, tenant.spec.deletion_policy, tc).await?;
        tc.ctx
            .event(
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

/// Gone already (the garbage collector, a retried cleanup): what was wanted.
fn gone(r: kube::Result<()>) -> kube::Result<()> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        r => r,
    }
}

async fn release_namespace(ns: &str, policy: DeletionPolicy, tc: &TenantCtx) -> Result<()> {
    let ns_api: Api<Namespace> = Api::all(tc.ctx.client.clone());
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
            let roles: Api<RoleBinding> = Api::namespaced(tc.ctx.client.clone(), ns);
            // Rare, and access is at stake: deleted without asking a cache.
            for b in [build::OWNER_ROLE, build::MEMBER_ROLE] {
                gone(roles.delete(b, &DeleteParams::default()).await.map(|_| ()))?;
            }
            let patch = json!({"metadata": {"labels": {TENANT_LABEL: null}}});
            gone(
                ns_api
                    .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )?;
        }
    }
    Ok(())
}

async fn cleanup(tenant: Arc<Tenant>, tc: &TenantCtx) -> Result<Action> {
    let ctx = &tc.ctx;
    let name = tenant.name_any();
    // Rare and final: listed from the API server, not a cache that may lag.
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    let owned = ListParams::default().labels(&format!("{TENANT_LABEL}={name}"));
    let namespaces = ns_api.list_metadata(&owned).await?;
    for ns in &namespaces.items {
        release_namespace(&ns.name_any(), tenant.spec.deletion_policy, tc).await?;
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

/// What of a pool its tenants' namespaces follow: the GPU resource name and the
/// capacity (the ceiling of an unlimited borrower), not the allocation.
pub fn pool_fingerprint(pool: &GpuPool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        pool.metadata.uid.as_deref(),
        &pool.spec.gpu.resource_name,
        pool.status.as_ref().map(|s| s.gpus.capacity),
    )
        .hash(&mut hasher);
    hasher.finish()
}

impl Live {
    async fn ready(&self) -> Result<()> {
        use crate::context::cache_ready;
        cache_ready("namespaces", &self.namespaces).await?;
        cache_ready("resourcequotas", &self.quotas).await?;
        cache_ready("limitranges", &self.limits).await?;
        cache_ready("networkpolicies", &self.network_policies).await?;
        cache_ready("serviceaccounts", &self.service_accounts).await?;
        cache_ready("roles", &self.roles).await?;
        cache_ready("rolebindings", &self.bindings).await?;
        cache_ready("clusterroles", &self.cluster_roles).await?;
        cache_ready("clusterrolebindings", &self.cluster_bindings).await
    }
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
    let owned = || watcher::Config::default().labels(TENANT_LABEL);
    // Children wake their tenant only when what the tenant set on them changed
    // (or they went): a quota's usage moving with every pod is no reason.
    let (namespaces, namespace_changes) = watch_changes::<Namespace>(
        Api::all(client.clone()),
        watcher::Config::default(),
        desired_fields,
    );
    let (quotas, quota_changes) =
        watch_changes::<ResourceQuota>(Api::all(client.clone()), owned(), desired_fields);
    let (limits, limit_changes) =
        watch_changes::<LimitRange>(Api::all(client.clone()), owned(), desired_fields);
    let (network_policies, policy_changes) =
        watch_changes::<NetworkPolicy>(Api::all(client.clone()), owned(), desired_fields);
    let (service_accounts, account_changes) =
        watch_changes::<ServiceAccount>(Api::all(client.clone()), owned(), desired_fields);
    let (roles, role_changes) =
        watch_changes::<Role>(Api::all(client.clone()), owned(), desired_fields);
    let (bindings, binding_changes) =
        watch_changes::<RoleBinding>(Api::all(client.clone()), owned(), desired_fields);
    let (cluster_roles, cluster_role_changes) =
        watch_changes::<ClusterRole>(Api::all(client.clone()), owned(), desired_fields);
    let (cluster_bindings, cluster_binding_changes) =
        watch_changes::<ClusterRoleBinding>(Api::all(client.clone()), owned(), desired_fields);
    // A Tenant's status is written by the job accounting at every settlement; its
    // namespaces follow its spec, so only a change of spec or metadata wakes it.
    let (tenants, tenant_changes) = watch_changes::<Tenant>(
        Api::all(client.clone()),
        watcher::Config::default(),
        desired_fields,
    );
    let controller = Controller::for_stream(tenant_changes, tenants)
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
        .owns_stream(quota_changes)
        .owns_stream(limit_changes)
        .owns_stream(policy_changes)
        .owns_stream(account_changes)
        .owns_stream(role_changes)
        .owns_stream(binding_changes)
        .owns_stream(cluster_role_changes)
        .owns_stream(cluster_binding_changes)
        .watches_stream(namespace_changes, by_label)
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
                live: Live {
                    namespaces,
                    quotas,
                    limits,
                    network_policies,
                    service_accounts,
                    roles,
                    bindings,
                    cluster_roles,
                    cluster_bindings,
                },
            }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}
