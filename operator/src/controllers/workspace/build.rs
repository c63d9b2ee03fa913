//! Pure Workspace logic: its home and scratch claims, which datasets it may mount,
//! and its status. No client, no clock.
use crate::conditions::condition;
use aifactory_api::{
    CONDITION_READY, Dataset, DatasetRefusal, Workspace, WorkspacePhase, WorkspaceStatus,
    bounded_name, dataset_access,
};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use serde_json::json;

/// Label on a workspace's claims: the workspace's name (bounded to a label value).
pub const WORKSPACE_LABEL: &str = "aifactory.dev/workspace";

/// Name of the home claim.
pub fn home_claim_name(ws: &Workspace) -> String {
    bounded_name(&format!("workspace-{}-home", ws.name_any()), 253)
}

/// Name of the scratch claim.
pub fn scratch_claim_name(ws: &Workspace) -> String {
    bounded_name(&format!("workspace-{}-scratch", ws.name_any()), 253)
}

/// Whether `claim` belongs to `ws` (its controller is this very workspace).
pub fn owned_by(claim: &PersistentVolumeClaim, ws: &Workspace) -> bool {
    claim
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == ws.metadata.uid.as_ref())
}

fn claim(ws: &Workspace, name: String, size: &str) -> PersistentVolumeClaim {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    });
    if let Some(class) = &ws.spec.storage.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": ws.namespace(),
            "labels": {WORKSPACE_LABEL: bounded_name(&ws.name_any(), 63), "app.kubernetes.io/managed-by": "aifactory"},
            "ownerReferences": [ws.controller_owner_ref(&()).expect("a Workspace from the API has a uid")],
        },
        "spec": spec,
    }))
    .expect("a valid PersistentVolumeClaim")
}

/// The claims the workspace should have, each with its size: home, and scratch
/// when asked for.
pub fn claims(ws: &Workspace) -> Vec<(PersistentVolumeClaim, String)> {
    let storage = &ws.spec.storage;
    let mut out = vec![(
        claim(ws, home_claim_name(ws), &storage.home),
        storage.home.clone(),
    )];
    if let Some(scratch) = &storage.scratch {
        out.push((claim(ws, scratch_claim_name(ws), scratch), scratch.clone()));
    }
    out
}

/// The workspace's datasets it may not mount (yet), through the same rule as jobs.
pub fn dataset_refusals<'a>(
    ws: &Workspace,
    datasets: impl IntoIterator<Item = &'a Dataset> + Clone,
) -> Vec<DatasetRefusal> {
    let ns = ws.namespace().unwrap_or_default();
    ws.spec
        .datasets
        .iter()
        .filter_map(|m| dataset_access(m, &ns, datasets.clone()).err())
        .collect()
}

/// What a reconcile saw, from which the status follows.
#[derive(Debug)]
pub struct Observed {
    /// Why the claims could not be made: (reason, message).
    pub blocked: Option<(&'static str, String)>,
    /// The desired claims and whether each is bound.
    pub claims: Vec<(String, bool)>,
    /// Datasets it may not mount.
    pub refusals: Vec<DatasetRefusal>,
    /// A refused resize of a claim.
    pub resize_refused: Option<String>,
    /// The time of this reconcile.
    pub now: Time,
}

impl Observed {
    /// Nothing observed yet, at `now`.
    pub fn at(now: Time) -> Self {
        Self {
            blocked: None,
            claims: vec![],
            refusals: vec![],
            resize_refused: None,
            now,
        }
    }
}

/// The status of `ws`'s volumes and datasets from what the reconcile observed:
/// Failed, Pending or Ready (the session module adds the session's phase on top).
pub fn status(ws: &Workspace, o: &Observed) -> WorkspaceStatus {
    let previous = ws.status.clone().unwrap_or_default();
    let unbound: Vec<&str> = o
        .claims
        .iter()
        .filter(|(_, bound)| !bound)
        .map(|(n, _)| n.as_str())
        .collect();
    let refused = o.refusals.iter().find(|r| !r.is_transient());
    let refusal_message = || {
        o.refusals
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let (phase, ready, reason, message) = if let Some((reason, message)) = &o.blocked {
        (WorkspacePhase::Failed, false, *reason, message.clone())
    } else if let Some(r) = refused {
        (WorkspacePhase::Failed, false, r.reason(), refusal_message())
    } else if !unbound.is_empty() {
        (
            WorkspacePhase::Pending,
            false,
            "ClaimPending",
            format!("waiting for claims to be bound: {}", unbound.join(", ")),
        )
    } else if let Some(r) = o.refusals.first() {
        (
            WorkspacePhase::Pending,
            false,
            r.reason(),
            refusal_message(),
        )
    } else {
        let phase = WorkspacePhase::Ready;
        let names: Vec<&str> = o.claims.iter().map(|(n, _)| n.as_str()).collect();
        let mut message = format!("claims bound: {}", names.join(", "));
        if let Some(why) = &o.resize_refused {
            message = format!("{message}; {why}");
        }
        (phase, true, "VolumesBound", message)
    };
    WorkspaceStatus {
        observed_generation: ws.metadata.generation,
        phase: Some(phase),
        volumes: o.claims.iter().map(|(n, _)| n.clone()).collect(),
        conditions: vec![condition(
            &previous.conditions,
            CONDITION_READY,
            ready,
            reason,
            message,
            ws.metadata.generation,
            &o.now,
        )],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(spec: serde_json::Value) -> Workspace {
        serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": "alice", "namespace": "acme", "uid": "w1", "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    fn dataset(ns: &str, name: &str, consumers: serde_json::Value) -> Dataset {
        serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"size": "1Gi", "accessModes": ["ReadOnlyMany"]},
            "status": {"phase": "Ready", "consumers": consumers},
        }))
        .unwrap()
    }

    #[test]
    fn a_workspace_asks_for_home_and_scratch_claims_it_owns() {
        let ws = workspace(
            json!({"storage": {"home": "50Gi", "scratch": "2Ti", "storageClassName": "fast"}}),
        );
        let claims = claims(&ws);
        let names: Vec<String> = claims.iter().map(|(c, _)| c.name_any()).collect();
        assert_eq!(names, ["workspace-alice-home", "workspace-alice-scratch"]);
        let home = serde_json::to_value(&claims[0].0).unwrap();
        assert_eq!(home["spec"]["resources"]["requests"]["storage"], "50Gi");
        assert_eq!(home["spec"]["storageClassName"], "fast");
        assert!(owned_by(&claims[1].0, &ws));
        let no_scratch = workspace(json!({"storage": {"home": "50Gi"}}));
        assert_eq!(super::claims(&no_scratch).len(), 1);
    }

    #[test]
    fn a_dataset_of_another_tenant_without_a_grant_fails_the_workspace() {
        let ws = workspace(json!({"storage": {"home": "1Gi"},
            "datasets": [{"name": "scans", "namespace": "hospital"}, {"name": "demos"}]}));
        let scans = dataset("hospital", "scans", json!([]));
        let demos = dataset("acme", "demos", json!([]));
        let refusals = dataset_refusals(&ws, [&scans, &demos]);
        assert_eq!(refusals.len(), 1);
        let s = status(
            &ws,
            &Observed {
                claims: vec![("workspace-alice-home".into(), true)],
                refusals,
                ..Observed::at(Time(jiff::Timestamp::UNIX_EPOCH))
            },
        );
        assert_eq!(s.phase, Some(WorkspacePhase::Failed));
        assert_eq!(s.conditions[0].reason, "DatasetNotGranted");
        assert!(s.conditions[0].message.contains("hospital/scans"));

        let granted = dataset(
            "hospital",
            "scans",
            json!([{"tenant": "acme", "namespace": "acme", "claimName": "shared.hospital.scans"}]),
        );
        assert!(dataset_refusals(&ws, [&granted, &demos]).is_empty());
    }

    #[test]
    fn bound_claims_make_a_workspace_ready() {
        let bound = Observed {
            claims: vec![("workspace-alice-home".into(), true)],
            ..Observed::at(Time(jiff::Timestamp::UNIX_EPOCH))
        };
        let plain = workspace(json!({"storage": {"home": "1Gi"}}));
        let s = status(&plain, &bound);
        assert_eq!(s.phase, Some(WorkspacePhase::Ready));
        assert_eq!(s.volumes, ["workspace-alice-home"]);
        assert_eq!(s.pending_reason, None);
        let pending = status(
            &plain,
            &Observed {
                claims: vec![("workspace-alice-home".into(), false)],
                ..Observed::at(Time(jiff::Timestamp::UNIX_EPOCH))
            },
        );
        assert_eq!(pending.phase, Some(WorkspacePhase::Pending));
    }
}
