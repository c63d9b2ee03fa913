//! `kubectl factory queue`: the training jobs not running yet, per pool in the order
//! admission will consider them, with how long each has waited and why.
use crate::format;
use crate::table::Table;
use aifactory_api::{Tenant, TrainingJob, TrainingJobPhase};
use jiff::Timestamp;
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

/// The jobs of `scope`, and a note when the scope had to be narrowed.
pub async fn fetch(
    client: &Client,
    scope: Scope,
) -> anyhow::Result<(Vec<TrainingJob>, Option<String>)> {
    match scope {
        Scope::Namespace(ns) => Ok((list(client, Some(&ns)).await?, None)),
        Scope::Tenant(name) => {
            let namespaces = tenant_namespaces(client, &name).await?;
            let mut jobs = vec![];
            for ns in &namespaces {
                jobs.extend(list(client, Some(ns)).await?);
            }
            Ok((jobs, None))
        }
        Scope::All => match list(client, None).await {
            Ok(jobs) => Ok((jobs, None)),
            // A tenant's member may list jobs only in the tenant's namespaces.
            Err(kube::Error::Api(e)) if e.code == 403 => {
                let ns = client.default_namespace().to_string();
                let jobs = list(client, Some(&ns)).await?;
                Ok((
                    jobs,
                    Some(format!(
                        "not allowed to list training jobs in all namespaces: showing namespace {ns} (use -n or --tenant)"
                    )),
                ))
            }
            Err(e) => Err(e.into()),
        },
    }
}

async fn list(client: &Client, ns: Option<&str>) -> Result<Vec<TrainingJob>, kube::Error> {
    let api: Api<TrainingJob> = match ns {
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

/// The queue as a table, or `None` when no job waits.
pub fn render(jobs: &[TrainingJob], now: Timestamp) -> Option<String> {
    let mut waiting: Vec<&TrainingJob> = jobs.iter().filter(|tj| waiting(tj)).collect();
    if waiting.is_empty() {
        return None;
    }
    // Per pool: admitted jobs are ahead of the queue, then queue positions, then
    // jobs the operator has not placed yet, oldest first.
    let rank = |tj: &TrainingJob| {
        let s = tj.status.clone().unwrap_or_default();
        let place = match (s.phase, s.queue_position) {
            (Some(TrainingJobPhase::Admitted), _) => (0, 0),
            (_, Some(p)) => (1, p),
            _ => (2, 0),
        };
        (
            tj.spec.pool.clone(),
            place,
            waiting_since(tj),
            tj.name_any(),
        )
    };
    waiting.sort_by_key(|tj| rank(tj));
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
    for tj in waiting {
        let s = tj.status.clone().unwrap_or_default();
        let phase = s.phase.map_or("New".to_string(), |p| format!("{p:?}"));
        let reason = match (s.phase, s.pending_reason) {
            (_, Some(reason)) => reason,
            (Some(TrainingJobPhase::Admitted), None) => {
                "admitted: GPUs reserved, pods starting".into()
            }
            (None, None) => "not yet seen by the operator".into(),
            _ => String::new(),
        };
        table.row(vec![
            tj.spec.pool.clone(),
            s.queue_position.map_or("-".into(), |p| p.to_string()),
            tj.namespace().unwrap_or_default(),
            tj.name_any(),
            phase,
            format::gang(tj.spec.nodes, tj.spec.gpus_per_node),
            waiting_since(tj).map_or("-".into(), |t| {
                format::duration(now.as_second() - t.as_second())
            }),
            reason,
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
        let out = render(&jobs, now).unwrap();
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
                &[job("a", "b", "p", 1, 1).phase(TrainingJobPhase::Running)],
                now
            ),
            None
        );
    }
}
