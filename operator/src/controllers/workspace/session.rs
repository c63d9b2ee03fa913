//! Pure logic of a workspace's interactive session: a single-replica StatefulSet
//! and a Service, admitted by the same admission pass as training jobs (a one-pod
//! gang of `interactive.gpus` GPUs), holding its node's GPUs until it is stopped at
//! `maxLifetime`, preempted, or no longer asked for. No client, no clock.
//!
//! Who writes what: the admission pass admits (`sessionNode`, `sessionStartedAt`,
//! phase `Running`), keeps a waiting session's place and reason, and preempts; the
//! Workspace controller creates and removes the StatefulSet and Service, reports
//! readiness and the endpoint, and stops the session at `maxLifetime`. Both write
//! the status with the resourceVersion they read, so neither overwrites the other.
use super::build::{WORKSPACE_LABEL, home_claim_name, scratch_claim_name};
use crate::conditions::condition;
use crate::controllers::pods;
use crate::controllers::trainingjob::build::{JOB_SERVICE_ACCOUNT, parse_duration};
use aifactory_admission as admission;
use aifactory_api::{GpuPool, Workspace, WorkspacePhase, WorkspaceStatus, bounded_name};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

/// Condition on a Workspace: whether its interactive session runs and is ready.
pub const CONDITION_SESSION: &str = "Session";
/// Label on a session's pods (beside the workspace label), so admission can tell
/// them from other pods on the node.
pub const SESSION_LABEL: &str = "aifactory.dev/session";
/// Where home and scratch are mounted in the session.
pub const HOME_PATH: &str = "/workspace/home";
/// Where scratch is mounted in the session.
pub const SCRATCH_PATH: &str = "/workspace/scratch";
/// Pending reason of a session no pass has looked at yet.
pub const WAITING_FOR_PASS: &str = "waiting for the next admission pass";

/// Name of the session's StatefulSet and Service. A StatefulSet's name ends up in
/// a 63-character label with a hash suffix, hence 52.
pub fn session_name(ws: &Workspace) -> String {
    bounded_name(&format!("{}-session", ws.name_any()), 52)
}

/// The engine's id of a session: `namespace/workspace:name`. A TrainingJob's id is
/// `namespace/name` and names hold no `:`, so the two never collide.
pub fn session_id(ws: &Workspace) -> String {
    format!(
        "{}/workspace:{}",
        ws.namespace().unwrap_or_default(),
        ws.name_any()
    )
}

/// The labels of the session's pods.
fn pod_labels(ws: &Workspace) -> Value {
    json!({WORKSPACE_LABEL: bounded_name(&ws.name_any(), 63), SESSION_LABEL: "true"})
}

/// Whether the session holds GPUs: admission gave it a node and it was not
/// stopped (even if the spec no longer asks for it: until it is stopped).
pub fn holds_gpus(ws: &Workspace) -> bool {
    held(ws).is_some()
}

/// What the running session holds: (pool, GPUs, node), as admitted (the spec's
/// pool and GPUs for a status written before they were recorded).
pub fn held(ws: &Workspace) -> Option<(String, i32, String)> {
    let st = ws.status.as_ref()?;
    let node = st.session_node.clone()?;
    let interactive = ws.spec.interactive.as_ref();
    let pool = st
        .session_pool
        .clone()
        .or_else(|| interactive.map(|i| i.pool.clone()))?;
    let gpus = st.session_gpus.or_else(|| interactive.map(|i| i.gpus))?;
    Some((pool, gpus.max(0), node))
}

/// GPU-hours and kWh the running session has used in the accounting period of
/// `now`, to the second, with its pool; `None` when it holds nothing.
pub fn used(ws: &Workspace, watts: f64, now: jiff::Timestamp) -> Option<(String, f64, f64)> {
    let (pool, gpus, _) = held(ws)?;
    let started = ws.status.as_ref()?.session_started_at.as_ref()?.0;
    let from = started.max(crate::controllers::usage::period_start(now));
    let seconds = (now.as_second() - from.as_second()).max(0);
    let hours = crate::controllers::usage::round(f64::from(gpus) * seconds as f64 / 3600.0);
    Some((
        pool,
        hours,
        crate::controllers::usage::round(hours * watts / 1000.0),
    ))
}

/// The ledger key of the session's settlement: the workspace and when this
/// session started, so each session settles once.
pub fn settlement_key(ws: &Workspace) -> Option<String> {
    let started = ws.status.as_ref()?.session_started_at.as_ref()?;
    Some(format!(
        "{}/{}",
        ws.metadata.uid.as_deref().unwrap_or_default(),
        started.0.as_second()
    ))
}

/// Whether the session waits for admission: asked for, volumes ready (the
/// Workspace controller put it in `Queued`), not admitted, not being deleted.
pub fn waits(ws: &Workspace) -> bool {
    ws.spec.interactive.is_some()
        && ws.metadata.deletion_timestamp.is_none()
        && ws
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Some(WorkspacePhase::Queued) && s.session_node.is_none())
}

/// When the waiting session entered the queue: the last time its Session
/// condition turned False (queued, preempted, expired), else its creation.
pub fn queued_since(ws: &Workspace) -> Option<&Time> {
    ws.status
        .as_ref()
        .and_then(|s| crate::conditions::find(&s.conditions, CONDITION_SESSION))
        .filter(|c| c.status == "False")
        .map(|c| &c.last_transition_time)
        .or(ws.metadata.creation_timestamp.as_ref())
}

/// The session as the engine's one-pod gang, in the default priority.
pub fn queued_job(
    ws: &Workspace,
    tenant: String,
    created: u64,
    since: u64,
) -> admission::QueuedJob {
    let interactive = ws.spec.interactive.as_ref();
    admission::QueuedJob {
        id: session_id(ws),
        tenant,
        pool: interactive.map(|i| i.pool.clone()).unwrap_or_default(),
        nodes: 1,
        gpus_per_node: interactive.map(|i| i.gpus.max(0) as u32).unwrap_or(0),
        priority: 0,
        created,
        queued_since: since,
        pack: None,
        estimated_gpu_hours: None,
    }
}

/// When a session admitted at `started` must stop; `None` if the lifetime does
/// not parse (the CRD validates it, so only an old object could).
pub fn stops_at(ws: &Workspace, started: &Time) -> Option<jiff::Timestamp> {
    let lifetime = parse_duration(&ws.spec.interactive.as_ref()?.max_lifetime)?;
    started
        .0
        .checked_add(jiff::SignedDuration::try_from(lifetime).ok()?)
        .ok()
}

fn set_session(conditions: &mut Vec<Condition>, c: Condition) {
    conditions.retain(|x| x.type_ != CONDITION_SESSION);
    conditions.push(c);
}

fn session_condition(
    ws: &Workspace,
    st: &WorkspaceStatus,
    ready: bool,
    reason: &str,
    message: impl Into<String>,
    now: &Time,
) -> Condition {
    condition(
        &st.conditions,
        CONDITION_SESSION,
        ready,
        reason,
        message,
        ws.metadata.generation,
        now,
    )
}

/// The status of a session the engine admits on `node`.
pub fn admitted_status(
    ws: &Workspace,
    admission: &admission::Admission,
    now: &Time,
) -> WorkspaceStatus {
    let mut st = ws.status.clone().unwrap_or_default();
    let node = admission.placement.first().cloned().unwrap_or_default();
    st.phase = Some(WorkspacePhase::Running);
    st.session_node = Some(node.clone());
    st.session_pool = ws.spec.interactive.as_ref().map(|i| i.pool.clone());
    st.session_gpus = ws.spec.interactive.as_ref().map(|i| i.gpus);
    st.session_started_at = Some(now.clone());
    st.queue_position = None;
    st.pending_reason = None;
    let c = session_condition(
        ws,
        &st,
        false,
        "Starting",
        format!("admitted on {node}; starting"),
        now,
    );
    set_session(&mut st.conditions, c);
    st
}

/// The status of a session that keeps waiting: its place and why.
pub fn queued_status(
    ws: &Workspace,
    position: Option<u32>,
    reason: &str,
    code: &str,
    now: &Time,
) -> WorkspaceStatus {
    let mut st = ws.status.clone().unwrap_or_default();
    st.queue_position = position.map(|p| p.min(i32::MAX as u32) as i32);
    st.pending_reason = Some(reason.to_string());
    let c = session_condition(ws, &st, false, code, reason, now);
    set_session(&mut st.conditions, c);
    st
}

/// The status of a running session evicted for another: stopped, back in the queue.
pub fn preempted_status(ws: &Workspace, reason: &str, now: &Time) -> WorkspaceStatus {
    let mut st = ws.status.clone().unwrap_or_default();
    st.phase = Some(WorkspacePhase::Queued);
    st.session_node = None;
    st.session_pool = None;
    st.session_gpus = None;
    st.session_started_at = None;
    st.endpoint = None;
    st.queue_position = None;
    st.pending_reason = Some(reason.to_string());
    let c = session_condition(ws, &st, false, "Preempted", reason, now);
    set_session(&mut st.conditions, c);
    st
}

/// What the Workspace controller does about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No session asked for, and none runs.
    None,
    /// Waiting for admission (or for the volumes): no StatefulSet.
    Wait,
    /// Admitted on `node`: the StatefulSet and Service exist.
    Run {
        /// The node admission chose.
        node: String,
    },
    /// Running past `maxLifetime`: stop it now.
    Expire,
    /// Stopped at `maxLifetime` for this generation of the spec: stays stopped.
    Expired,
    /// Running but no longer allowed (the session was dropped from the spec, or the
    /// workspace failed): stop it, saying why.
    Stop(String),
}

/// The session's plan, given whether the rest of the workspace is usable (`Some`
/// failure message when it failed).
pub fn plan(ws: &Workspace, failed: Option<&str>, now: jiff::Timestamp) -> Plan {
    let st = ws.status.clone().unwrap_or_default();
    if ws.spec.interactive.is_none() {
        return match st.session_node {
            Some(_) => Plan::Stop("the workspace no longer asks for a session".into()),
            None => Plan::None,
        };
    }
    if let Some(node) = &st.session_node {
        if let Some(why) = failed {
            return Plan::Stop(format!("the workspace failed: {why}"));
        }
        if let Some(why) = reshaped(ws) {
            return Plan::Stop(why);
        }
        // The pass sets both together and the CRD validates the lifetime, so an
        // end that cannot be computed only comes from a hand-edited status.
        let end = st.session_started_at.as_ref().and_then(|s| stops_at(ws, s));
        return match end {
            Some(end) if end <= now => Plan::Expire,
            _ => Plan::Run { node: node.clone() },
        };
    }
    let expired_now = crate::conditions::find(&st.conditions, CONDITION_SESSION)
        .is_some_and(|c| c.reason == "Expired" && c.observed_generation == ws.metadata.generation);
    if expired_now {
        Plan::Expired
    } else {
        Plan::Wait
    }
}

/// The session part of the status, on top of what the volumes gave (`base`):
/// phase, node, endpoint, reason and the Session condition.
pub fn status(
    ws: &Workspace,
    plan: &Plan,
    base: WorkspaceStatus,
    ready: bool,
    now: &Time,
) -> WorkspaceStatus {
    let previous = ws.status.clone().unwrap_or_default();
    let mut st = base;
    let volumes_ready = st.phase == Some(WorkspacePhase::Ready);
    let lifetime = ws
        .spec
        .interactive
        .as_ref()
        .map(|i| i.max_lifetime.clone())
        .unwrap_or_default();
    let c = match plan {
        Plan::None => None,
        Plan::Run { node } => {
            st.phase = Some(WorkspacePhase::Running);
            st.session_node = Some(node.clone());
            st.session_pool = previous.session_pool.clone();
            st.session_gpus = previous.session_gpus;
            st.session_started_at = previous.session_started_at.clone();
            st.endpoint = Some(endpoint(ws));
            let stops = previous
                .session_started_at
                .as_ref()
                .and_then(|s| stops_at(ws, s))
                .map(|t| format!("; stops at {t} (maxLifetime {lifetime})"))
                .unwrap_or_default();
            Some(if ready {
                session_condition(
                    ws,
                    &previous,
                    true,
                    "Running",
                    format!("running on {node}, reachable at {}{stops}", endpoint(ws)),
                    now,
                )
            } else {
                session_condition(
                    ws,
                    &previous,
                    false,
                    "Starting",
                    format!("admitted on {node}; starting{stops}"),
                    now,
                )
            })
        }
        Plan::Expire | Plan::Expired => {
            st.phase = Some(WorkspacePhase::Expired);
            let message = format!(
                "the session reached its maxLifetime of {lifetime} and was stopped; edit the workspace (e.g. a longer maxLifetime) to start a new one"
            );
            st.pending_reason = Some(message.clone());
            let mut c = session_condition(ws, &previous, false, "Expired", message, now);
            // An expiry stays with the generation it happened in.
            if *plan == Plan::Expired
                && let Some(old) = crate::conditions::find(&previous.conditions, CONDITION_SESSION)
            {
                c = old.clone();
            }
            Some(c)
        }
        Plan::Stop(why) => Some(session_condition(ws, &previous, false, "Stopped", why, now)),
        Plan::Wait if volumes_ready => {
            st.phase = Some(WorkspacePhase::Queued);
            st.queue_position = previous.queue_position;
            let kept =
                crate::conditions::find(&previous.conditions, CONDITION_SESSION).filter(|c| {
                    c.status == "False" && !matches!(c.reason.as_str(), "Expired" | "Stopped")
                });
            let reason = previous
                .pending_reason
                .clone()
                .filter(|_| kept.is_some())
                .unwrap_or_else(|| WAITING_FOR_PASS.to_string());
            st.pending_reason = Some(reason.clone());
            Some(match kept {
                Some(c) => c.clone(),
                None => session_condition(ws, &previous, false, "Queued", reason, now),
            })
        }
        Plan::Wait => Some(session_condition(
            ws,
            &previous,
            false,
            "VolumesNotReady",
            "the session waits until the workspace's volumes and datasets are ready",
            now,
        )),
    };
    if let Some(c) = c {
        set_session(&mut st.conditions, c);
    }
    st
}

/// Why the running session no longer matches what was admitted, if it does not:
/// the spec's pool or GPU count changed since admission (an image or port change
/// is rolled out in place; a new shape must queue again).
pub fn reshaped(ws: &Workspace) -> Option<String> {
    let interactive = ws.spec.interactive.as_ref()?;
    let (pool, gpus, _) = held(ws)?;
    (pool != interactive.pool || gpus != interactive.gpus).then(|| {
        format!(
            "the session was admitted for {gpus} GPUs in pool {pool} and now asks for {} in pool {}: it queues again",
            interactive.gpus, interactive.pool
        )
    })
}

/// Where the session is reached: `<service>.<namespace>.svc:<port>`.
pub fn endpoint(ws: &Workspace) -> String {
    format!(
        "{}.{}.svc:{}",
        session_name(ws),
        ws.namespace().unwrap_or_default(),
        ws.spec.interactive.as_ref().map(|i| i.port).unwrap_or(0)
    )
}

fn meta(ws: &Workspace) -> Value {
    json!({
        "name": session_name(ws),
        "namespace": ws.namespace(),
        "labels": pod_labels(ws),
        "ownerReferences": [ws.controller_owner_ref(&()).expect("a Workspace from the API has a uid")],
    })
}

/// The Service in front of the session.
pub fn service(ws: &Workspace) -> Service {
    let port = ws.spec.interactive.as_ref().map(|i| i.port).unwrap_or(0);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(ws),
        "spec": {
            "selector": pod_labels(ws),
            "ports": [{"name": "session", "port": port, "targetPort": port}],
        }
    }))
    .expect("a valid Service")
}

/// The session's single-replica StatefulSet, pinned to `node` of `pool`: home and
/// scratch mounted read-write, datasets read-only, `interactive.gpus` GPUs.
pub fn statefulset(ws: &Workspace, pool: &GpuPool, node: &str) -> StatefulSet {
    let ns = ws.namespace().unwrap_or_default();
    let interactive = ws
        .spec
        .interactive
        .as_ref()
        .expect("a session is planned only when asked for");
    let gpu = &pool.spec.gpu.resource_name;
    let mut volumes =
        vec![json!({"name": "home", "persistentVolumeClaim": {"claimName": home_claim_name(ws)}})];
    let mut mounts = vec![json!({"name": "home", "mountPath": HOME_PATH})];
    if ws.spec.storage.scratch.is_some() {
        volumes.push(json!({"name": "scratch", "persistentVolumeClaim": {"claimName": scratch_claim_name(ws)}}));
        mounts.push(json!({"name": "scratch", "mountPath": SCRATCH_PATH}));
    }
    for (i, dataset) in ws.spec.datasets.iter().enumerate() {
        let volume = format!("dataset-{i}");
        volumes.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": dataset.claim_name(&ns), "readOnly": true}}));
        mounts.push(json!({"name": volume, "mountPath": dataset.path(), "readOnly": true}));
    }
    let gpus = interactive.gpus.to_string();
    let resources = json!({"requests": {gpu.as_str(): gpus}, "limits": {gpu.as_str(): gpus}});
    let mut pod_spec = json!({
        "serviceAccountName": JOB_SERVICE_ACCOUNT,
        "securityContext": pods::restricted_pod(),
        "containers": [{
            "name": "session",
            "image": interactive.image,
            "ports": [{"name": "session", "containerPort": interactive.port}],
            "env": [
                {"name": "HOME", "value": HOME_PATH},
                {"name": "WORKSPACE", "value": ws.name_any()},
            ],
            "resources": resources,
            "volumeMounts": mounts,
            "securityContext": pods::restricted_container(),
        }],
        "volumes": volumes,
    });
    pod_spec
        .as_object_mut()
        .expect("a JSON object")
        .extend(pods::pinned(&pool.name_any(), &[node.to_string()]));
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": meta(ws),
        "spec": {
            "replicas": 1,
            "serviceName": session_name(ws),
            "selector": {"matchLabels": pod_labels(ws)},
            "template": {"metadata": {"labels": pod_labels(ws)}, "spec": pod_spec},
        }
    }))
    .expect("a valid StatefulSet")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(interactive: Value, status: Value) -> Workspace {
        serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": "alice", "namespace": "acme", "uid": "w1", "generation": 3,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"storage": {"home": "1Gi", "scratch": "10Gi"},
                     "datasets": [{"name": "scans", "namespace": "hospital"}],
                     "interactive": interactive},
            "status": status,
        }))
        .unwrap()
    }

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn pool() -> GpuPool {
        serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": "h100"},
            "spec": {"nodeSelector": {}, "gpu": {"model": "H100", "perNode": 8, "powerWatts": 700},
                     "location": {"region": "eu-west"}}
        }))
        .unwrap()
    }

    const SESSION: &str =
        r#"{"image": "jupyter:1", "pool": "h100", "gpus": 2, "maxLifetime": "2h", "port": 8888}"#;

    fn session() -> Value {
        serde_json::from_str(SESSION).unwrap()
    }

    #[test]
    fn a_session_is_a_one_pod_gang_of_its_gpus_with_an_id_no_job_can_have() {
        let ws = workspace(session(), json!({"phase": "Queued"}));
        assert!(waits(&ws));
        assert!(!holds_gpus(&ws));
        let q = queued_job(&ws, "acme".into(), 10, 20);
        assert_eq!(q.id, "acme/workspace:alice");
        assert_eq!((q.nodes, q.gpus_per_node, q.pool.as_str()), (1, 2, "h100"));
        // Not yet queued by the Workspace controller (volumes pending): not asked.
        assert!(!waits(&workspace(session(), json!({"phase": "Pending"}))));
    }

    #[test]
    fn admission_gives_the_node_and_the_start_and_the_session_runs_until_max_lifetime() {
        let queued = workspace(
            session(),
            json!({"phase": "Queued", "pendingReason": "x", "queuePosition": 2}),
        );
        let admission = admission::Admission {
            placement: vec!["gpu-7".into()],
            domain: None,
            borrowed_gpus: 0,
        };
        let st = admitted_status(&queued, &admission, &at("2026-01-01T10:00:00Z"));
        assert_eq!(st.session_node.as_deref(), Some("gpu-7"));
        assert_eq!((&st.pending_reason, st.queue_position), (&None, None));
        let running = workspace(session(), serde_json::to_value(&st).unwrap());
        assert!(holds_gpus(&running) && !waits(&running));
        let before = "2026-01-01T11:59:59Z".parse().unwrap();
        assert_eq!(
            plan(&running, None, before),
            Plan::Run {
                node: "gpu-7".into()
            }
        );
        assert_eq!(
            plan(&running, None, "2026-01-01T12:00:00Z".parse().unwrap()),
            Plan::Expire
        );
        // A workspace that failed stops its session.
        assert!(matches!(
            plan(&running, Some("no grant"), before),
            Plan::Stop(_)
        ));
    }

    #[test]
    fn an_expired_session_stays_stopped_until_the_spec_changes() {
        let running = workspace(
            session(),
            json!({"phase": "Running", "sessionNode": "gpu-7", "sessionStartedAt": "2026-01-01T10:00:00Z"}),
        );
        let now = at("2026-01-01T13:00:00Z");
        let base = WorkspaceStatus {
            phase: Some(WorkspacePhase::Ready),
            ..Default::default()
        };
        let st = status(&running, &Plan::Expire, base.clone(), false, &now);
        assert_eq!(st.phase, Some(WorkspacePhase::Expired));
        assert_eq!(
            (st.session_node.as_ref(), st.endpoint.as_ref()),
            (None, None)
        );
        assert!(
            st.pending_reason
                .as_deref()
                .unwrap()
                .contains("maxLifetime of 2h")
        );
        let expired = workspace(session(), serde_json::to_value(&st).unwrap());
        assert_eq!(plan(&expired, None, now.0), Plan::Expired);
        assert!(!waits(&expired));
        // A new generation (the user edited the workspace) queues a new session.
        let mut edited = expired.clone();
        edited.metadata.generation = Some(4);
        assert_eq!(plan(&edited, None, now.0), Plan::Wait);
        let st = status(&edited, &Plan::Wait, base, false, &now);
        assert_eq!(st.phase, Some(WorkspacePhase::Queued));
        assert_eq!(st.pending_reason.as_deref(), Some(WAITING_FOR_PASS));
    }

    #[test]
    fn a_waiting_session_keeps_the_reason_and_place_the_pass_wrote() {
        let ws = workspace(session(), json!({"phase": "Queued"}));
        let now = at("2026-01-01T10:00:00Z");
        let st = queued_status(&ws, Some(3), "waiting for 2 GPUs; 0 free", "NoRoom", &now);
        let written = workspace(session(), serde_json::to_value(&st).unwrap());
        let base = WorkspaceStatus {
            phase: Some(WorkspacePhase::Ready),
            ..Default::default()
        };
        let again = status(&written, &Plan::Wait, base, false, &now);
        assert_eq!(again.queue_position, Some(3));
        assert_eq!(
            again.pending_reason.as_deref(),
            Some("waiting for 2 GPUs; 0 free")
        );
        let c = crate::conditions::find(&again.conditions, CONDITION_SESSION).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NoRoom"));
    }

    #[test]
    fn a_new_pool_or_gpu_count_requeues_a_running_session_but_a_new_image_does_not() {
        let ws = workspace(
            session(),
            json!({"phase": "Running", "sessionNode": "gpu-7", "sessionPool": "h100", "sessionGpus": 2,
                   "sessionStartedAt": "2026-01-01T10:00:00Z"}),
        );
        let now = "2026-01-01T10:30:00Z".parse().unwrap();
        assert_eq!(
            plan(&ws, None, now),
            Plan::Run {
                node: "gpu-7".into()
            }
        );
        let mut image = ws.clone();
        image.spec.interactive.as_mut().unwrap().image = "jupyter:2".into();
        assert_eq!(reshaped(&image), None);
        let mut bigger = ws.clone();
        bigger.spec.interactive.as_mut().unwrap().gpus = 4;
        let Plan::Stop(why) = plan(&bigger, None, now) else {
            panic!("a new GPU count stops the session");
        };
        assert!(
            why.contains("admitted for 2 GPUs in pool h100 and now asks for 4"),
            "{why}"
        );
        // Until it is stopped, it holds what it was admitted with.
        assert_eq!(held(&bigger), Some(("h100".into(), 2, "gpu-7".into())));
    }

    #[test]
    fn a_session_uses_its_gpus_by_the_second_from_the_start_of_the_period() {
        let ws = workspace(
            session(),
            json!({"sessionNode": "gpu-7", "sessionPool": "h100", "sessionGpus": 2,
                   "sessionStartedAt": "2026-01-31T23:00:00Z"}),
        );
        let (pool, hours, kwh) = used(&ws, 700.0, "2026-01-31T23:30:59Z".parse().unwrap()).unwrap();
        assert_eq!(
            (pool.as_str(), hours),
            ("h100", 1.032778),
            "2 GPUs for 30 min 59 s"
        );
        assert!((kwh - 0.722945).abs() < 1e-9, "{kwh}");
        // A new month counts from its first second.
        let (_, hours, _) = used(&ws, 700.0, "2026-02-01T00:15:00Z".parse().unwrap()).unwrap();
        assert_eq!(hours, 0.5);
        assert_eq!(
            used(
                &workspace(session(), json!({})),
                700.0,
                jiff::Timestamp::UNIX_EPOCH
            ),
            None
        );
    }

    #[test]
    fn dropping_the_session_from_the_spec_stops_a_running_one() {
        let mut ws = workspace(
            session(),
            json!({"phase": "Running", "sessionNode": "gpu-7", "sessionStartedAt": "2026-01-01T10:00:00Z"}),
        );
        ws.spec.interactive = None;
        assert!(matches!(
            plan(&ws, None, jiff::Timestamp::UNIX_EPOCH),
            Plan::Stop(_)
        ));
        assert!(!holds_gpus(&ws), "nothing counted once the spec drops it");
    }

    #[test]
    fn the_statefulset_is_pinned_restricted_and_mounts_home_scratch_and_datasets_read_only() {
        let ws = workspace(session(), json!({}));
        let sts = serde_json::to_value(statefulset(&ws, &pool(), "gpu-7")).unwrap();
        assert_eq!(sts["metadata"]["name"], "alice-session");
        assert_eq!(sts["spec"]["replicas"], 1);
        let pod = &sts["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "2");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0]["values"],
            json!(["gpu-7"])
        );
        assert_eq!(pod["tolerations"][0]["value"], "h100");
        let claims: Vec<&Value> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| &v["persistentVolumeClaim"])
            .collect();
        assert_eq!(claims[0]["claimName"], "workspace-alice-home");
        assert_eq!(claims[1]["claimName"], "workspace-alice-scratch");
        assert_eq!(claims[2]["claimName"], "shared.hospital.scans");
        assert_eq!(claims[2]["readOnly"], true);
        assert_eq!(c["volumeMounts"][2]["readOnly"], true);
        assert_eq!(
            sts["spec"]["selector"]["matchLabels"],
            sts["spec"]["template"]["metadata"]["labels"]
        );
        let svc = serde_json::to_value(service(&ws)).unwrap();
        assert_eq!(svc["spec"]["ports"][0]["port"], 8888);
        assert_eq!(endpoint(&ws), "alice-session.acme.svc:8888");
    }
}
