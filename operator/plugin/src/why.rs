//! `kubectl factory why <job>`: everything that explains where a training job is —
//! its phase in a sentence, its place in the queue and the reason it waits, its
//! admission and placement, the pool's free GPUs now, its conditions and the
//! recent Events about it.
use crate::format;
use crate::table::Table;
use aifactory_api::{GpuPool, TrainingJob, TrainingJobPhase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// What `why` shows, fetched.
pub struct Facts {
    pub job: TrainingJob,
    /// The job's pool, when the user may read it.
    pub pool: Option<GpuPool>,
    pub events: Vec<Event>,
}

/// Events shown, the most recent.
const EVENTS: usize = 10;

pub async fn fetch(client: &Client, ns: &str, name: &str) -> anyhow::Result<Facts> {
    let job = Api::<TrainingJob>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("trainingjob {name} not found in namespace {ns}"))?;
    // Tenants may not be allowed to read pools: the pool line is then left out.
    let pool = Api::<GpuPool>::all(client.clone())
        .get_opt(&job.spec.pool)
        .await
        .ok()
        .flatten();
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=TrainingJob,involvedObject.name={name}"
        )))
        .await?
        .items
        .into_iter()
        // An earlier job of the same name is not this one.
        .filter(|e| job.metadata.uid.is_none() || e.involved_object.uid == job.metadata.uid)
        .collect();
    Ok(Facts { job, pool, events })
}

/// When an Event last happened.
fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or(e.last_timestamp.as_ref().map(|t| t.0))
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn failed_message(tj: &TrainingJob) -> Option<String> {
    tj.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| format!("{}: {}", c.reason, c.message))
    })
}

/// The job's state in one sentence.
fn summary(tj: &TrainingJob, now: Timestamp) -> String {
    let s = tj.status.clone().unwrap_or_default();
    let at = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref()
            .map_or(String::new(), |t| format!(" {} ago", format::age(t, now)))
    };
    let reason = s
        .pending_reason
        .clone()
        .unwrap_or_else(|| "no reason given yet".into());
    match s.phase {
        None => "The operator has not picked this job up yet: is it running?".into(),
        Some(TrainingJobPhase::Queued) => match s.queue_position {
            Some(p) => format!(
                "It waits in the queue of pool {} at position {p}: {reason}.",
                tj.spec.pool
            ),
            None => format!("It waits in the queue of pool {}: {reason}.", tj.spec.pool),
        },
        Some(TrainingJobPhase::Admitted) => format!(
            "It was admitted{}: its GPUs are reserved and its pods are starting.",
            at(&s.admitted_at)
        ),
        Some(TrainingJobPhase::Running) => {
            format!("It is running: all its pods started{}.", at(&s.started_at))
        }
        Some(TrainingJobPhase::Succeeded) => format!("It succeeded{}.", at(&s.finished_at)),
        Some(TrainingJobPhase::Failed) => format!(
            "It failed{}: {}.",
            at(&s.finished_at),
            failed_message(tj)
                .or(s.pending_reason.clone())
                .unwrap_or_else(|| "see its conditions and events".into())
        ),
        Some(TrainingJobPhase::Suspended) => {
            "It is suspended (spec.suspend is true): set it to false to queue it again.".into()
        }
        Some(TrainingJobPhase::Preempted) => {
            format!("It was preempted and waits to run again: {reason}.")
        }
    }
}

pub fn render(facts: &Facts, now: Timestamp) -> String {
    let tj = &facts.job;
    let s = tj.status.clone().unwrap_or_default();
    let mut out = format!(
        "TrainingJob {}/{}\n{}\n\n",
        tj.namespace().unwrap_or_default(),
        tj.name_any(),
        summary(tj, now)
    );
    let mut fields: Vec<(&str, String)> = vec![
        (
            "Phase",
            s.phase.map_or("(none yet)".into(), |p| format!("{p:?}")),
        ),
        (
            "Pool",
            format!(
                "{}, {} GPUs",
                tj.spec.pool,
                format::gang(tj.spec.nodes, tj.spec.gpus_per_node)
            ),
        ),
    ];
    if let Some(p) = s.queue_position {
        fields.push(("Queue position", format!("{p} in pool {}", tj.spec.pool)));
    }
    if let Some(r) = &s.pending_reason {
        fields.push(("Pending reason", r.clone()));
    }
    let queued = matches!(
        s.phase,
        None | Some(TrainingJobPhase::Queued | TrainingJobPhase::Preempted)
    );
    if queued
        && let Some(t) = s
            .queued_at
            .as_ref()
            .or(tj.metadata.creation_timestamp.as_ref())
    {
        fields.push((
            "Waiting",
            format!(
                "{} (since {})",
                format::age(t, now),
                t.0.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
        ));
    }
    if let Some(pool) = &facts.pool {
        let ps = pool.status.clone().unwrap_or_default();
        fields.push((
            "Pool now",
            format!(
                "{} of {} GPUs free, {}/{} nodes ready, {} kW{}",
                ps.gpus.free,
                ps.gpus.allocatable,
                ps.ready_nodes,
                ps.nodes,
                format::decimal(ps.power_kilowatts),
                pool.spec
                    .power_cap_kilowatts
                    .map_or(String::new(), |c| format!(
                        " of a {} kW cap",
                        format::decimal(c)
                    ))
            ),
        ));
    }
    for (label, t) in [
        ("Admitted", &s.admitted_at),
        ("Started", &s.started_at),
        ("Finished", &s.finished_at),
    ] {
        if let Some(t) = t {
            fields.push((label, format::when(t, now)));
        }
    }
    if let Some(p) = &s.placement {
        let domain = p
            .domain
            .as_ref()
            .map_or(String::new(), |d| format!(" in {d}"));
        fields.push(("Placement", format!("{}{domain}", p.nodes.join(", "))));
    }
    fields.push((
        "Restarts",
        format!("{} of {}", s.restarts, tj.spec.max_restarts),
    ));
    fields.push((
        "Used",
        format!(
            "{} GPU-hours, {} kWh",
            format::decimal(s.gpu_hours),
            format::decimal(s.energy_kwh)
        ),
    ));
    // One width for every job, so that outputs line up when compared.
    for (label, value) in fields {
        out.push_str(&format!("{:16}{value}\n", format!("{label}:")));
    }

    out.push_str("\nConditions:\n");
    if s.conditions.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut t = Table::new(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]);
        for c in &s.conditions {
            t.row(vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                format::age(&c.last_transition_time, now),
                c.message.clone(),
            ]);
        }
        out.push_str(&indent(&t.render()));
    }

    out.push_str("\nEvents:\n");
    let mut events: Vec<&Event> = facts.events.iter().collect();
    events.sort_by_key(|e| last_seen(e));
    let recent = &events[events.len().saturating_sub(EVENTS)..];
    if recent.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut t = Table::new(&["AGE", "TYPE", "REASON", "FROM", "MESSAGE"]);
        for e in recent {
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1);
            let age = last_seen(e).map_or("-".into(), |t| {
                format::duration(now.as_second() - t.as_second())
            });
            t.row(vec![
                if count > 1 {
                    format!("{age} (x{count})")
                } else {
                    age
                },
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.reporting_component
                    .clone()
                    .filter(|c| !c.is_empty())
                    .or(e.source.as_ref().and_then(|s| s.component.clone()))
                    .unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&indent(&t.render()));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{JobFixture, job, time};

    #[test]
    fn a_queued_job_says_where_it_stands_and_why() {
        let now: Timestamp = "2025-01-07T12:00:00Z".parse().unwrap();
        let mut tj = job("acme", "llama", "h100", 2, 8).queued(
            3,
            "waiting for 16 H100 GPUs; 8 free; 2 jobs ahead",
            "2025-01-07T11:48:00Z",
        );
        tj.metadata.uid = Some("u1".into());
        let event = Event {
            involved_object: k8s_openapi::api::core::v1::ObjectReference {
                uid: Some("u1".into()),
                ..Default::default()
            },
            type_: Some("Normal".into()),
            reason: Some("Queued".into()),
            message: Some("queued in pool h100".into()),
            reporting_component: Some("aifactory".into()),
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                time("2025-01-07T11:48:00Z").0,
            )),
            ..Default::default()
        };
        let out = render(
            &Facts {
                job: tj,
                pool: None,
                events: vec![event],
            },
            now,
        );
        assert!(
            out.starts_with(
                "TrainingJob acme/llama\nIt waits in the queue of pool h100 at position 3: \
             waiting for 16 H100 GPUs; 8 free; 2 jobs ahead.\n"
            ),
            "{out}"
        );
        assert!(out.contains("Queue position: 3 in pool h100\n"), "{out}");
        assert!(
            out.contains("Waiting:        12m (since 2025-01-07T11:48:00Z)\n"),
            "{out}"
        );
        assert!(
            out.contains("Pool:           h100, 16 (2x8) GPUs\n"),
            "{out}"
        );
        assert!(out.contains("Conditions:\n  <none>\n"), "{out}");
        assert!(
            out.contains("  12m   Normal   Queued   aifactory   queued in pool h100\n"),
            "{out}"
        );
    }

    #[test]
    fn a_failed_job_gives_the_reason_of_its_failed_condition() {
        let now: Timestamp = "2025-01-07T12:00:00Z".parse().unwrap();
        let mut tj = job("acme", "llama", "h100", 1, 8).phase(TrainingJobPhase::Failed);
        let s = tj.status.as_mut().unwrap();
        s.finished_at = Some(time("2025-01-07T11:00:00Z"));
        s.conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: "DeadlineExceeded".into(),
            message: "ran longer than maxRuntime 1h".into(),
            last_transition_time: time("2025-01-07T11:00:00Z"),
            observed_generation: Some(1),
        }];
        let out = render(
            &Facts {
                job: tj,
                pool: None,
                events: vec![],
            },
            now,
        );
        assert!(
            out.contains("It failed 60m ago: DeadlineExceeded: ran longer than maxRuntime 1h.\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "  Failed   True     DeadlineExceeded   60m   ran longer than maxRuntime 1h\n"
            ),
            "{out}"
        );
        assert!(out.contains("Events:\n  <none>\n"), "{out}");
    }
}
