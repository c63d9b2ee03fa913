//! `kubectl factory queue`: the training jobs and interactive sessions not running
//! yet, per pool in the order admission will consider them, with how long each has
//! waited and why.
use crate::format;
use crate::table::Table;
use aifactory_api::{Tenant, TrainingJob, TrainingJobPhase, Workspace, WorkspacePhase};
use jiff::Timestamp;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// Which jobs to look at.
pub enum Scope {
    /// Every namespace the user may list.
    All,
    /// One namespace.
    Namespace(String),
    /// The namespaces of one tenant.
    Tenant(String),
}

/// What waits: training jobs and workspaces (for their sessions).
#[derive(Default)]
pub struct Queue {
    /// Training jobs in scope.
    pub jobs: Vec<TrainingJob>,
    /// Workspaces in scope.
    pub workspaces: Vec<Workspace>,
}

/// The jobs and workspaces of `scope`, and a note when the scope had to be narrowed.
pub async fn fetch(client: &Client, scope: Scope) -> anyhow::Result<(Queue, Option<String>)> {
    let both = |ns: Option<String>| async move {
        Ok::<_, kube::Error>(Queue {
            jobs: list(client, ns.as_deref()).await?,
            workspaces: list(client, ns.as_deref()).await?,
        })
    };
    match scope {
        Scope::Namespace(ns) => Ok((both(Some(ns)).await?, None)),
        Scope::Tenant(name) => {
            let mut queue = Queue::default();
            for ns in tenant_namespaces(client, &name).await? {
                let q = both(Some(ns)).await?;
                queue.jobs.extend(q.jobs);
                queue.workspaces.extend(q.workspaces);
            }
            Ok((queue, None))
        }
        Scope::All => match both(None).await {
            Ok(queue) => Ok((queue, None)),
            // A tenant's member may list jobs only in the tenant's namespaces.
            Err(kube::Error::Api(e)) if e.code == 403 => {
                let ns = client.default_namespace().to_string();
                let queue = both(Some(ns.clone())).await?;
                Ok((
                    queue,
                    Some(format!(
                        "not allowed to list training jobs in all namespaces: showing namespace {ns} (use -n or --tenant)"
                    )),
                ))
            }
            Err(e) => Err(e.into()),
        },
    }
}

async fn list<K>(client: &Client, ns: Option<&str>) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Ok(api.list(&ListParams::default()).await?.items)
}

/// The namespaces a tenant owns (as its status reports them, else as its spec asks).
pub async fn tenant_namespaces(client: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    let tenant = Api::<Tenant>::all(client.clone())
        .get_opt(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("tenant {name} not found"))?;
    Ok(match tenant.status.as_ref().map(|s| s.namespaces.clone()) {
        Some(ns) if !ns.is_empty() => ns,
        _ => tenant.spec.namespaces_or_default(name),
    })
}

/// Whether a job still waits to run: new, queued, preempted, or admitted with its
/// pods not all running yet.
fn waiting(tj: &TrainingJob) -> bool {
    matches!(
        tj.status.as_ref().and_then(|s| s.phase),
        None | Some(
            TrainingJobPhase::Queued | TrainingJobPhase::Preempted | TrainingJobPhase::Admitted
        )
    )
}

/// Since when a job waits: when it (re-)entered the queue, else its creation.
fn waiting_since(tj: &TrainingJob) -> Option<Timestamp> {
    tj.status
        .as_ref()
        .and_then(|s| s.queued_at.as_ref())
        .or(tj.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// One line of the queue.
struct Row {
    pool: String,
    /// Admitted first, then queue positions, then what the operator has not placed.
    place: (u8, i32),
    since: Option<Timestamp>,
    namespace: String,
    name: String,
    phase: String,
    gpus: String,
    reason: String,
}

fn job_row(tj: &TrainingJob) -> Option<Row> {
    if !waiting(tj) {
        return None;
    }
    let s = tj.status.clone().unwrap_or_default();
    let reason = match (s.phase, s.pending_reason) {
        (_, Some(reason)) => reason,
        (Some(TrainingJobPhase::Admitted), None) => "admitted: GPUs reserved, pods starting".into(),
        (None, None) => "not yet seen by the operator".into(),
        _ => String::new(),
    };
    Some(Row {
        pool: tj.spec.pool.clone(),
        place: match (s.phase, s.queue_position) {
            (Some(TrainingJobPhase::Admitted), _) => (0, 0),
            (_, Some(p)) => (1, p),
            _ => (2, 0),
        },
        since: waiting_since(tj),
        namespace: tj.namespace().unwrap_or_default(),
        name: tj.name_any(),
        phase: s.phase.map_or("New".to_string(), |p| format!("{p:?}")),
        gpus: format::gang(tj.spec.nodes, tj.spec.gpus_per_node),
        reason,
    })
}

/// A workspace's session waiting for admission, as `workspace/<name>`.
fn session_row(ws: &Workspace) -> Option<Row> {
    let interactive = ws.spec.interactive.as_ref()?;
    let s = ws.status.clone().unwrap_or_default();
    if s.phase != Some(WorkspacePhase::Queued) {
        return None;
    }
    let since = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Session" && c.status == "False")
        .map(|c| c.last_transition_time.0)
        .or(ws.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Some(Row {
        pool: interactive.pool.clone(),
        place: s.queue_position.map_or((2, 0), |p| (1, p)),
        since,
        namespace: ws.namespace().unwrap_or_default(),
        name: format!("workspace/{}", ws.name_any()),
        phase: "Queued".into(),
        gpus: format::gang(1, interactive.gpus),
        reason: s.pending_reason.unwrap_or_default(),
    })
}

/// The queue as a table, or `None` when nothing waits.
pub fn render(queue: &Queue, now: Timestamp) -> Option<String> {
    let mut rows: Vec<Row> = queue
        .jobs
        .iter()
        .filter_map(job_row)
        .chain(queue.workspaces.iter().filter_map(session_row))
        .collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_by(|a, b| {
        (&a.pool, a.place, a.since, &a.name).cmp(&(&b.pool, b.place, b.since, &b.name))
    });
    let mut table = Table::new(&[
        "POOL",
        "#",
        "NAMESPACE",
        "NAME",
        "PHASE",
        "GPUS",
        "WAITING",
        "REASON",
    ]);
    for r in rows {
        table.row(vec![
            r.pool,
            if r.place.0 == 1 {
                r.place.1.to_string()
            } else {
                "-".into()
            },
            r.namespace,
            r.name,
            r.phase,
            r.gpus,
            r.since.map_or("-".into(), |t| {
                format::duration(now.as_second() - t.as_second())
            }),
            r.reason,
        ]);
    }
    Some(table.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{JobFixture, job};

    #[test]
    fn jobs_wait_per_pool_in_queue_order_and_running_ones_are_left_out() {
        let now: Timestamp = "2025-01-07T12:00:00Z".parse().unwrap();
        let jobs = vec![
            job("acme", "third", "h100", 2, 8).queued(
                3,
                "waiting for 16 H100 GPUs; 8 free; 2 jobs ahead",
                "2025-01-07T11:00:00Z",
            ),
            job("acme", "running", "h100", 1, 8).phase(TrainingJobPhase::Running),
            job("beta", "first", "h100", 1, 8).queued(
                1,
                "waiting for 8 H100 GPUs; 0 free",
                "2025-01-07T11:58:00Z",
            ),
            job("beta", "done", "h100", 1, 8).phase(TrainingJobPhase::Succeeded),
            job("acme", "starting", "h100", 4, 8).phase(TrainingJobPhase::Admitted),
            job("acme", "small", "a100", 1, 1).queued(
                1,
                "budget exhausted",
                "2025-01-05T09:00:00Z",
            ),
            job("beta", "fresh", "h100", 1, 4).created("2025-01-07T11:59:30Z"),
        ];
        let out = render(
            &Queue {
                jobs,
                workspaces: vec![],
            },
            now,
        )
        .unwrap();
        let names: Vec<&str> = out
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(3).unwrap())
            .collect();
        assert_eq!(names, ["small", "starting", "first", "third", "fresh"]);
        let third = out.lines().find(|l| l.contains("third")).unwrap();
        assert!(third.starts_with("h100   3   acme"), "{third}");
        assert!(third.contains("16 (2x8)   60m"), "{third}");
        assert!(
            third.ends_with("waiting for 16 H100 GPUs; 8 free; 2 jobs ahead"),
            "{third}"
        );
        assert!(
            out.lines()
                .find(|l| l.contains("small"))
                .unwrap()
                .contains("2d3h")
        );
        let fresh = out.lines().find(|l| l.contains("fresh")).unwrap();
        assert!(
            fresh.contains("New") && fresh.ends_with("not yet seen by the operator"),
            "{fresh}"
        );
        assert!(!out.contains("running") && !out.contains("done"));
    }

    #[test]
    fn an_empty_queue_renders_nothing() {
        let now = Timestamp::now();
        assert_eq!(
            render(
                &Queue {
                    jobs: vec![job("a", "b", "p", 1, 1).phase(TrainingJobPhase::Running)],
                    workspaces: vec![],
                },
                now
            ),
            None
        );
    }

    #[test]
    fn a_waiting_session_takes_its_place_in_its_pools_queue() {
        let now: Timestamp = "2025-01-07T12:00:00Z".parse().unwrap();
        let session = |name: &str, status: serde_json::Value| -> Workspace {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "aifactory.dev/v1alpha1", "kind": "Workspace",
                "metadata": {"name": name, "namespace": "acme", "creationTimestamp": "2025-01-07T11:50:00Z"},
                "spec": {"storage": {"home": "1Gi"},
                         "interactive": {"image": "jupyter", "pool": "h100", "gpus": 2}},
                "status": status,
            }))
            .unwrap()
        };
        let queue = Queue {
            jobs: vec![job("acme", "big", "h100", 2, 8).queued(
                1,
                "waiting for 16 H100 GPUs; 8 free",
                "2025-01-07T11:00:00Z",
            )],
            workspaces: vec![
                session(
                    "alice",
                    serde_json::json!({"phase": "Queued", "queuePosition": 2,
                        "pendingReason": "quota: tenant acme would use 34 of 32 GPUs"}),
                ),
                session("bob", serde_json::json!({"phase": "Running"})),
            ],
        };
        let out = render(&queue, now).unwrap();
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains("big"), "{out}");
        let alice = lines[1];
        assert!(alice.starts_with("h100   2   acme"), "{alice}");
        assert!(
            alice.contains("workspace/alice") && alice.contains("2 (1x2)"),
            "{alice}"
        );
        assert!(
            alice.contains("10m") && alice.ends_with("would use 34 of 32 GPUs"),
            "{alice}"
        );
    }
}
