//! Pure GpuPool logic: which nodes a pool keeps, what must change on each node,
//! and the pool's status. No client, no clock (the time is passed in).
use crate::conditions::condition;
use crate::controllers::pods::gpus_of;
use aifactory_api::{
    CONDITION_READY, GpuCounts, GpuPool, GpuPoolStatus, NodeConflict, POOL_LABEL, POOL_TAINT,
};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Condition type set while a node is selected by this pool and another one.
pub const CONDITION_CONFLICT: &str = "NodeConflict";

/// Whether `pool`'s nodeSelector selects `node`.
pub fn selects(pool: &GpuPool, node: &Node) -> bool {
    match Selector::try_from(pool.spec.node_selector.clone()) {
        // An empty selector is refused by the schema; never treat it as "all".
        Ok(sel) if !sel.selects_all() => {
            sel.matches(node.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
        }
        _ => false,
    }
}

/// Older pools win conflicts; the name breaks ties so the order is total.
fn seniority(pool: &GpuPool) -> (Option<jiff::Timestamp>, String) {
    (pool.creation_timestamp().map(|t| t.0), pool.name_any())
}

/// The nodes a pool keeps, and the conflicts it takes part in.
#[derive(Debug, Default, PartialEq)]
pub struct Membership {
    /// Nodes the pool selects and keeps.
    pub members: Vec<String>,
    /// Nodes also selected by another pool, with who keeps them.
    pub conflicts: Vec<NodeConflict>,
}

/// Which of `nodes` `pool` keeps, given every pool (deleted pools do not compete).
pub fn membership(pool: &GpuPool, pools: &[Arc<GpuPool>], nodes: &[Arc<Node>]) -> Membership {
    let me = pool.name_any();
    let rivals: Vec<_> = pools
        .iter()
        .filter(|p| p.name_any() != me && p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut out = Membership::default();
    for node in nodes.iter().filter(|n| selects(pool, n)) {
        let node_name = node.name_any();
        let mut keeper = pool;
        for rival in rivals.iter().filter(|r| selects(r, node)) {
            if seniority(rival) < seniority(keeper) {
                keeper = rival;
            }
        }
        for rival in rivals.iter().filter(|r| selects(r, node)) {
            let kept_by = if seniority(rival) < seniority(pool) {
                rival.name_any()
            } else {
                keeper.name_any()
            };
            out.conflicts.push(NodeConflict {
                node: node_name.clone(),
                pool: rival.name_any(),
                kept_by,
            });
        }
        if keeper.name_any() == me {
            out.members.push(node_name);
        }
    }
    out.members.sort();
    out.conflicts
        .sort_by(|a, b| (&a.node, &a.pool).cmp(&(&b.node, &b.pool)));
    out
}

fn pool_taint(pool: &str) -> Taint {
    Taint {
        key: POOL_TAINT.into(),
        value: Some(pool.into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }
}

/// The merge patch that makes `node` carry (or not) the pool's label and taint, or
/// `None` when it already does. A member's taints of the pool key are the
/// operator's: it keeps the pool's own (when dedicated) and drops any other, such
/// as another pool's left behind, which the pool's pods would not tolerate and
/// which, beside the pool's own `NoSchedule` one, the API refuses (taints are
/// unique by key and effect). A node that is not a member loses only the pool's
/// taint. The patch carries the node's resourceVersion so a concurrent change of
/// the taints fails instead of being overwritten (taints are an atomic list).
pub fn node_patch(node: &Node, pool: &str, member: bool, dedicated: bool) -> Option<Value> {
    let labelled = node.labels().get(POOL_LABEL).map(String::as_str) == Some(pool);
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ours = |t: &Taint| {
        t.key == POOL_TAINT && t.value.as_deref() == Some(pool) && t.effect == "NoSchedule"
    };
    let want_taint = member && dedicated;
    let mut new: Vec<Taint> = taints
        .iter()
        .filter(|t| {
            if member {
                t.key != POOL_TAINT || (want_taint && ours(t))
            } else {
                !ours(t)
            }
        })
        .cloned()
        .collect();
    if want_taint && !new.iter().any(ours) {
        new.push(pool_taint(pool));
    }
    let mut patch = json!({"metadata": {"resourceVersion": node.resource_version()}});
    let mut changed = false;
    if member && !labelled {
        patch["metadata"]["labels"] = json!({POOL_LABEL: pool});
        changed = true;
    } else if !member && labelled {
        patch["metadata"]["labels"] = json!({POOL_LABEL: null});
        changed = true;
    }
    if new != taints {
        patch["spec"] = json!({"taints": new});
        changed = true;
    }
    changed.then_some(patch)
}

/// Ready and schedulable: the node can take new work.
pub fn node_ready(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    ready && !cordoned
}

fn gpus_in(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    res: &str,
) -> i64 {
    map.and_then(|m| m.get(res))
        .and_then(|q| q.0.parse().ok())
        .unwrap_or(0)
}

/// The pool's status from its members and the running pods bound to them.
pub fn status(
    pool: &GpuPool,
    membership: &Membership,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    now: &Time,
) -> GpuPoolStatus {
    let res = &pool.spec.gpu.resource_name;
    let members: Vec<&Arc<Node>> = nodes
        .iter()
        .filter(|n| membership.members.contains(&n.name_any()))
        .collect();
    let ready: Vec<&&Arc<Node>> = members.iter().filter(|n| node_ready(n)).collect();
    let capacity = members
        .iter()
        .map(|n| gpus_in(n.status.as_ref().and_then(|s| s.capacity.as_ref()), res))
        .sum();
    let allocatable: i64 = ready
        .iter()
        .map(|n| gpus_in(n.status.as_ref().and_then(|s| s.allocatable.as_ref()), res))
        .sum();
    let on_member = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| membership.members.contains(n))
    };
    let on_ready = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| ready.iter().any(|r| &r.name_any() == n))
    };
    let allocated: i64 = pods
        .iter()
        .filter(|p| on_member(p))
        .map(|p| gpus_of(p, res))
        .sum();
    let allocated_on_ready: i64 = pods
        .iter()
        .filter(|p| on_ready(p))
        .map(|p| gpus_of(p, res))
        .sum();
    let previous = pool
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = pool.metadata.generation;
    let (ready_ok, reason, message) = if members.is_empty() {
        (
            false,
            "NoNodes",
            "no node matches the nodeSelector".to_string(),
        )
    } else if ready.is_empty() {
        (
            false,
            "NoReadyNodes",
            format!("none of {} nodes is Ready and schedulable", members.len()),
        )
    } else {
        (
            true,
            "NodesReady",
            format!("{} of {} nodes Ready", ready.len(), members.len()),
        )
    };
    let mut conditions = vec![condition(
        previous,
        CONDITION_READY,
        ready_ok,
        reason,
        message,
        generation,
        now,
    )];
    if !membership.conflicts.is_empty() {
        let names: Vec<String> = membership
            .conflicts
            .iter()
            .map(|c| format!("{} (also in {}, kept by {})", c.node, c.pool, c.kept_by))
            .collect();
        conditions.push(condition(
            previous,
            CONDITION_CONFLICT,
            true,
            "NodeSelectedByTwoPools",
            format!("nodes selected by another pool too: {}", names.join(", ")),
            generation,
            now,
        ));
    }
    GpuPoolStatus {
        observed_generation: generation,
        nodes: members.len() as i32,
        ready_nodes: ready.len() as i32,
        gpus: GpuCounts {
            capacity,
            allocatable,
            allocated,
            free: (allocatable - allocated_on_ready).max(0),
        },
        // Watts to kilowatts, kept to whole watts so the status does not flutter.
        power_kilowatts: (allocated as f64 * f64::from(pool.spec.gpu.power_watts)).round() / 1000.0,
        conflicts: membership.conflicts.clone(),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifactory_api::{GpuPoolSpec, GpuSpec, Location};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn pool(name: &str, model: &str, created: i64, dedicated: bool) -> Arc<GpuPool> {
        let mut p = GpuPool::new(
            name,
            GpuPoolSpec {
                node_selector: LabelSelector {
                    match_labels: Some(
                        [("nvidia.com/gpu.product".to_string(), model.to_string())].into(),
                    ),
                    ..Default::default()
                },
                gpu: GpuSpec {
                    model: model.into(),
                    resource_name: "nvidia.com/gpu".into(),
                    per_node: 8,
                    power_watts: 700,
                },
                topology: None,
                dedicated,
                power_cap_kilowatts: None,
                location: Location {
                    region: "eu-west".into(),
                    site: None,
                },
            },
        );
        p.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        Arc::new(p)
    }

    fn node(name: &str, model: &str, ready: bool) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "resourceVersion": "7", "labels": {"nvidia.com/gpu.product": model}},
                "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"},
                           "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap(),
        )
    }

    fn pod(node: &str, gpus: i64) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "spec": {"nodeName": node, "containers": [
                {"name": "c", "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn an_h100_pool_keeps_the_h100_nodes_and_leaves_the_others() {
        let h100 = pool("h100", "H100", 1, true);
        let nodes = vec![
            node("a", "H100", true),
            node("b", "A100", true),
            node("c", "H100", true),
        ];
        let m = membership(&h100, std::slice::from_ref(&h100), &nodes);
        assert_eq!(m.members, vec!["a", "c"]);
        assert!(m.conflicts.is_empty());
    }

    #[test]
    fn a_node_two_pools_select_stays_with_the_older_pool_and_both_report_it() {
        let old = pool("old", "H100", 1, false);
        let young = pool("young", "H100", 2, false);
        let pools = vec![old.clone(), young.clone()];
        let nodes = vec![node("a", "H100", true)];
        let mo = membership(&old, &pools, &nodes);
        let my = membership(&young, &pools, &nodes);
        assert_eq!(mo.members, vec!["a"]);
        assert!(my.members.is_empty());
        assert_eq!(
            mo.conflicts,
            vec![NodeConflict {
                node: "a".into(),
                pool: "young".into(),
                kept_by: "old".into()
            }]
        );
        assert_eq!(
            my.conflicts,
            vec![NodeConflict {
                node: "a".into(),
                pool: "old".into(),
                kept_by: "old".into()
            }]
        );
    }

    #[test]
    fn joining_a_dedicated_pool_labels_and_taints_and_leaving_undoes_both() {
        let n = node("a", "H100", true);
        let join = node_patch(&n, "h100", true, true).expect("a change");
        assert_eq!(join["metadata"]["labels"][POOL_LABEL], "h100");
        assert_eq!(join["spec"]["taints"][0]["key"], POOL_TAINT);
        assert_eq!(join["metadata"]["resourceVersion"], "7");
        let mut joined: Node = (*n).clone();
        joined
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(POOL_LABEL.into(), "h100".into());
        joined.spec = Some(serde_json::from_value(json!({"taints": [
            {"key": "other", "effect": "NoExecute"}, {"key": POOL_TAINT, "value": "h100", "effect": "NoSchedule"}]})).unwrap());
        assert_eq!(
            node_patch(&joined, "h100", true, true),
            None,
            "nothing to do twice"
        );
        let leave = node_patch(&joined, "h100", false, true).unwrap();
        assert_eq!(leave["metadata"]["labels"][POOL_LABEL], Value::Null);
        assert_eq!(
            leave["spec"]["taints"],
            json!([{"key": "other", "effect": "NoExecute"}]),
            "other taints stay"
        );
    }

    #[test]
    fn a_member_drops_the_taints_of_the_pool_key_its_pods_do_not_tolerate() {
        // Another pool's taint left behind (that pool gone before it could remove
        // it): beside the pool's own, the API refuses the node (taints unique by
        // key and effect); without it, the pool's pods would not tolerate the node.
        let mut n: Node = (*node("a", "H100", true)).clone();
        n.spec = Some(
            serde_json::from_value(json!({"taints": [
            {"key": POOL_TAINT, "value": "a100", "effect": "NoSchedule"},
            {"key": POOL_TAINT, "value": "h100", "effect": "NoExecute"},
            {"key": "other", "effect": "NoSchedule"}]}))
            .unwrap(),
        );
        let join = node_patch(&n, "h100", true, true).unwrap();
        assert_eq!(
            join["spec"]["taints"],
            json!([{"key": "other", "effect": "NoSchedule"},
                   {"key": POOL_TAINT, "value": "h100", "effect": "NoSchedule"}])
        );
        let shared = node_patch(&n, "h100", true, false).unwrap();
        assert_eq!(
            shared["spec"]["taints"],
            json!([{"key": "other", "effect": "NoSchedule"}])
        );
        // Not a member: the other pools' taints are theirs to remove.
        assert_eq!(node_patch(&n, "h100", false, true), None);
    }

    #[test]
    fn status_counts_gpus_held_by_running_pods_on_ready_members() {
        let h100 = pool("h100", "H100", 1, false);
        let nodes = vec![
            node("a", "H100", true),
            node("b", "H100", false),
            node("x", "A100", true),
        ];
        let m = membership(&h100, std::slice::from_ref(&h100), &nodes);
        let pods = vec![pod("a", 8), pod("b", 4), pod("x", 8)];
        let now = Time(jiff::Timestamp::from_second(100).unwrap());
        let s = status(&h100, &m, &nodes, &pods, &now);
        assert_eq!((s.nodes, s.ready_nodes), (2, 1));
        assert_eq!(
            s.gpus,
            GpuCounts {
                capacity: 16,
                allocatable: 8,
                allocated: 12,
                free: 0
            }
        );
        assert!(
            (s.power_kilowatts - 8.4).abs() < 1e-9,
            "{}",
            s.power_kilowatts
        );
        assert!(crate::conditions::is_true(&s.conditions, CONDITION_READY));
    }
}
