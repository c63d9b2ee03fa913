//! GpuPool controller: labels (and, for dedicated pools, taints) member nodes,
//! takes the label and taint away from nodes that leave, resolves nodes selected by
//! two pools in favour of the older one, and reports capacity, allocation and power.
pub mod build;

use crate::context::{Context, now, on_error};
use crate::error::{Error, Result};
use aifactory_api::{GpuPool, POOL_LABEL};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "gpupool";
/// Removes the pool's label and taint from its nodes before the pool goes.
pub const FINALIZER: &str = "aifactory.dev/node-labels";

/// What the GpuPool reconcile reads besides the pool.
pub struct PoolCaches {
    /// All GpuPools.
    pub pools: Store<GpuPool>,
    /// All nodes.
    pub nodes: Store<Node>,
    /// Running pods bound to nodes.
    pub pods: Store<Pod>,
}

#[tracing::instrument(skip_all, fields(pool = %pool.name_any()))]
async fn reconcile(pool: Arc<GpuPool>, ctx: Arc<(Arc<Context>, PoolCaches)>) -> Result<Action> {
    let (ctx, caches) = (&ctx.0, &ctx.1);
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let api: Api<GpuPool> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            Finalizer::Apply(pool) => apply(pool, ctx, caches).await,
            Finalizer::Cleanup(pool) => cleanup(pool, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(pool: Arc<GpuPool>, ctx: &Context, caches: &PoolCaches) -> Result<Action> {
    let name = pool.name_any();
    let nodes = caches.nodes.state();
    let membership = build::membership(&pool, &caches.pools.state(), &nodes);
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    for node in &nodes {
        let member = membership.members.contains(&node.name_any());
        if set_membership(&node_api, node, &name, member, pool.spec.dedicated).await? {
            let (reason, verb) = if member {
                ("NodeJoined", "joined")
            } else {
                ("NodeLeft", "left")
            };
            ctx.event(
                pool.as_ref(),
                false,
                reason,
                format!("node {} {verb} the pool", node.name_any()),
            )
            .await;
        }
    }
    let previous = pool.status.clone().unwrap_or_default();
    let status = build::status(&pool, &membership, &nodes, &caches.pods.state(), &now());
    for conflict in status
        .conflicts
        .iter()
        .filter(|c| !previous.conflicts.contains(c))
    {
        ctx.event(
            pool.as_ref(),
            true,
            "NodeConflict",
            format!(
                "node {} is selected by pools {} and {}; {} keeps it",
                conflict.node, name, conflict.pool, conflict.kept_by
            ),
        )
        .await;
    }
    let was_ready =
        crate::conditions::is_true(&previous.conditions, aifactory_api::CONDITION_READY);
    let is_ready = crate::conditions::is_true(&status.conditions, aifactory_api::CONDITION_READY);
    if was_ready != is_ready {
        let c =
            crate::conditions::find(&status.conditions, aifactory_api::CONDITION_READY).unwrap();
        ctx.event(pool.as_ref(), !is_ready, &c.reason, c.message.clone())
            .await;
    }
    crate::controllers::write_status(
        &Api::<GpuPool>::all(ctx.client.clone()),
        &name,
        pool.status.as_ref(),
        &status,
        true,
    )
    .await?;
    Ok(Action::await_change())
}

/// Makes `node` carry (or not) the pool's label and taint; `true` when it changed.
async fn set_membership(
    api: &Api<Node>,
    node: &Node,
    pool: &str,
    member: bool,
    dedicated: bool,
) -> Result<bool> {
    let Some(patch) = build::node_patch(node, pool, member, dedicated) else {
        return Ok(false);
    };
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(true)
}

/// The pool is going: every node it labelled loses the label and the taint.
async fn cleanup(pool: Arc<GpuPool>, ctx: &Context) -> Result<Action> {
    let name = pool.name_any();
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    let labelled = node_api
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={name}")))
        .await?;
    for node in &labelled.items {
        set_membership(&node_api, node, &name, false, true).await?;
    }
    ctx.event(
        pool.as_ref(),
        false,
        "PoolDeleted",
        format!("released {} nodes", labelled.items.len()),
    )
    .await;
    Ok(Action::await_change())
}

/// Runs the GpuPool controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    pods: (
        Store<Pod>,
        impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
    ),
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (node_reader, node_writer) = reflector::store();
    let nodes = reflector::reflector(
        node_writer,
        watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().page_size(500),
        )
        .default_backoff()
        .modify(|n| n.managed_fields_mut().clear()),
    )
    .touched_objects();
    let controller = Controller::new(
        Api::<GpuPool>::all(client.clone()),
        watcher::Config::default(),
    )
    .trigger_backoff(crate::context::TriggerBackoff::default())
    .with_config(
        Config::default()
            .concurrency(concurrency)
            .debounce(Duration::from_millis(500)),
    );
    let pools = controller.store();
    let all_pools = {
        let pools = pools.clone();
        move || {
            pools
                .state()
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    // A node or pod change may concern any pool (a relabelled node can move between
    // pools); pools are few, so every pool looks again.
    let on_node = all_pools.clone();
    let on_pod = all_pools;
    let caches = PoolCaches {
        pools,
        nodes: node_reader,
        pods: pods.0,
    };
    controller
        .watches_stream(nodes, move |_node: Node| on_node())
        .watches_stream(pods.1, move |_pod: Pod| on_pod())
        .graceful_shutdown_on(shutdown)
        .run(
            crate::context::unpanicked(reconcile),
            error_policy_for,
            Arc::new((ctx, caches)),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy_for(
    pool: Arc<GpuPool>,
    err: &Error,
    ctx: Arc<(Arc<Context>, PoolCaches)>,
) -> Action {
    on_error(CONTROLLER, pool.as_ref(), err, &ctx.0)
}
