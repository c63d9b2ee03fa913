//! Pure TrainingJob logic for one job: the headless Service and Indexed Job of an
//! admitted run, the next status from what the run's Job reports, GPU-hour
//! accounting and deadlines. No client, no clock: the time is passed in.
use crate::conditions::condition;
use crate::controllers::pods;
use crate::controllers::usage::{self, round};
use aifactory_api::{
    CONDITION_READY, GpuPool, PeriodUsage, Placement, RESERVED_ENV, TrainingJob, TrainingJobPhase,
    TrainingJobSpec, TrainingJobStatus,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::time::Duration;

/// Label on every child of a TrainingJob (Job, Service, pods): the job's name.
pub const TRAININGJOB_LABEL: &str = "aifactory.dev/trainingjob";
/// Label on a Job: which run of the TrainingJob it is (`status.restarts` when it
/// was created), so a Job of an earlier run is never mistaken for the current one.
pub const RUN_LABEL: &str = "aifactory.dev/run";
/// Annotations with this prefix are copied onto the pods (the local factory's kwok
/// reads `simulate-duration` and `simulate-failure` from them).
pub const SIMULATE_PREFIX: &str = "aifactory.dev/simulate-";
/// Port of the rendezvous on rank 0 (`torchrun --master-port`).
pub const MASTER_PORT: i32 = 29500;
/// Pod annotation the Job controller sets to the completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// ServiceAccount the pods run as (created by the Tenant controller).
pub const JOB_SERVICE_ACCOUNT: &str = crate::controllers::tenant::build::JOB_SERVICE_ACCOUNT;
/// While a run goes on, its GPU-hours are brought up to date this often.
pub const ACCOUNTING_INTERVAL: Duration = Duration::from_secs(60);

/// An admitted run whose pods are not all running this long after admission gives
/// its GPUs back and queues again: work that cannot start (a claim that does not
/// exist, a child the API refuses, a node gone) must not hold GPUs forever.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Admissions that did not start before the job fails (reason `StartFailed`).
pub const MAX_START_FAILURES: i32 = 3;

/// Condition: the job holds (True) or waits for (False) its GPUs.
pub const CONDITION_ADMITTED: &str = "Admitted";
/// Condition: the job failed (reason `DeadlineExceeded`, `RunFailed`, `PoolNotFound`).
pub const CONDITION_FAILED: &str = "Failed";

/// The current time at the API's precision (seconds), so a status computed twice
/// in the same second is equal and a time read back equals the time written.
pub fn now() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// A Go-style duration (`90m`, `1h30m`, `10s`), as the CRD validates it.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0.0_f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

fn meta(tj: &TrainingJob, labels: Value) -> Value {
    json!({
        "name": tj.name_any(),
        "namespace": tj.namespace(),
        "labels": labels,
        "ownerReferences": [tj.controller_owner_ref(&()).expect("a TrainingJob from the API has a uid")],
    })
}

/// The headless Service that gives every pod a DNS name (`<job>-<index>.<job>`),
/// so rank 0 is reachable as `MASTER_ADDR` before the pods are ready.
pub fn service(tj: &TrainingJob) -> Service {
    let name = tj.name_any();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(tj, json!({TRAININGJOB_LABEL: name})),
        "spec": {
            "clusterIP": "None",
            "selector": {"job-name": name},
            "publishNotReadyAddresses": true,
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        }
    }))
    .expect("a valid Service")
}

/// The Indexed Job of run `run` on `placement`: one pod per node, pinned to exactly
/// those nodes, each holding `gpusPerNode` GPUs. `suspend` is true when it is
/// created and false once released (the mechanism Kueue uses to admit a Job).
pub fn job(
    tj: &TrainingJob,
    pool: &GpuPool,
    placement: &Placement,
    run: i32,
    suspend: bool,
) -> Job {
    let name = tj.name_any();
    let spec = &tj.spec;
    let pool_name = pool.name_any();
    let gpu = &pool.spec.gpu.resource_name;
    let mut env: Vec<Value> = spec
        .env
        .iter()
        .filter(|e| !RESERVED_ENV.contains(&e.name.as_str()))
        .map(|e| serde_json::to_value(e).expect("EnvVar serializes"))
        .collect();
    env.extend([
        json!({"name": "MASTER_ADDR", "value": format!("{name}-0.{name}")}),
        json!({"name": "MASTER_PORT", "value": MASTER_PORT.to_string()}),
        json!({"name": "WORLD_SIZE", "value": spec.nodes.to_string()}),
        json!({"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.annotations['{COMPLETION_INDEX}']")}}}),
        json!({"name": "NPROC_PER_NODE", "value": spec.gpus_per_node.to_string()}),
    ]);
    let mut volumes = vec![];
    let mut mounts = vec![];
    for (i, dataset) in spec.datasets.iter().enumerate() {
        let volume = format!("dataset-{i}");
        // Own datasets by their name, shared ones by the read-only claim the
        // Dataset controller made in this namespace.
        let claim = dataset.claim_name(&tj.namespace().unwrap_or_default());
        volumes.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}));
        mounts.push(json!({"name": volume, "mountPath": dataset.path(), "readOnly": true}));
    }
    if let Some(checkpoint) = &spec.checkpoint {
        volumes.push(json!({"name": "checkpoint", "persistentVolumeClaim": {"claimName": checkpoint.claim_name}}));
        mounts.push(json!({"name": "checkpoint", "mountPath": checkpoint.mount_path}));
        env.push(json!({"name": "CHECKPOINT_DIR", "value": checkpoint.mount_path}));
    }
    let gpus = spec.gpus_per_node.to_string();
    let mut requests = serde_json::Map::new();
    requests.insert(gpu.clone(), json!(gpus));
    if let Some(resources) = &spec.resources {
        if let Some(cpu) = &resources.cpu {
            requests.insert("cpu".into(), json!(cpu));
        }
        if let Some(memory) = &resources.memory {
            requests.insert("memory".into(), json!(memory));
        }
    }
    let mut container = json!({
        "name": "trainer",
        "image": spec.image,
        "env": env,
        "resources": {"requests": requests, "limits": {gpu.as_str(): gpus}},
        "volumeMounts": mounts,
        // Tenant namespaces enforce Pod Security `restricted`.
        "securityContext": pods::restricted_container(),
    });
    if !spec.command.is_empty() {
        container["command"] = json!(spec.command);
    }
    if !spec.args.is_empty() {
        container["args"] = json!(spec.args);
    }
    let annotations: serde_json::Map<String, Value> = tj
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with(SIMULATE_PREFIX))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "subdomain": name,
        "serviceAccountName": JOB_SERVICE_ACCOUNT,
        "securityContext": pods::restricted_pod(),
        "containers": [container],
        "volumes": volumes,
    });
    let pinned = pods::pinned(&pool_name, &placement.nodes);
    pod_spec
        .as_object_mut()
        .expect("a JSON object")
        .extend(pinned);
    // One pod per node: the gang spreads over the placement.
    pod_spec["affinity"]["podAntiAffinity"] = json!({"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {TRAININGJOB_LABEL: name}}, "topologyKey": "kubernetes.io/hostname"}
    ]});
    if let Some(priority) = &spec.priority {
        pod_spec["priorityClassName"] = json!(priority);
    }
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": meta(tj, json!({TRAININGJOB_LABEL: name, RUN_LABEL: run.to_string()})),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.nodes,
            "parallelism": spec.nodes,
            // A failed pod fails the run; restarts are the TrainingJob's (maxRestarts).
            "backoffLimit": 0,
            "suspend": suspend,
            "template": {
                "metadata": {"labels": {TRAININGJOB_LABEL: name}, "annotations": annotations},
                "spec": pod_spec,
            },
        }
    }))
    .expect("a valid Job")
}

/// What a job being deleted at `now` has used this period, GPU-hours and kWh (its
/// current run counted up to `now`); `None` if nothing.
pub fn settlement(tj: &TrainingJob, watts: f64, now: &Time) -> Option<(f64, f64)> {
    let mut st = tj.status.clone()?;
    if matches!(
        st.phase,
        Some(TrainingJobPhase::Running | TrainingJobPhase::Admitted)
    ) {
        account(&mut st, &tj.spec, watts, now);
    }
    this_period_usage(&st, now.0).filter(|(h, e)| *h > 0.0 || *e > 0.0)
}

/// GPU-hours and kWh of the job in the period of `now`, if it was accounted in it.
pub fn this_period_usage(status: &TrainingJobStatus, now: jiff::Timestamp) -> Option<(f64, f64)> {
    let this = usage::period(now);
    match &status.period_usage {
        Some(u) => (u.period == this).then_some((u.gpu_hours, u.energy_kwh)),
        // Accounted before periodUsage existed: all of it, as it was counted then.
        None => status
            .accounted_until
            .as_ref()
            .filter(|t| usage::period(t.0) == this)
            .map(|_| (status.gpu_hours, status.energy_kwh)),
    }
}

/// Adds the GPU-hours and energy of the current run up to `until` and marks them
/// counted. Nothing is counted before the run started (all pods running).
pub fn account(status: &mut TrainingJobStatus, spec: &TrainingJobSpec, watts: f64, until: &Time) {
    let Some(started) = &status.started_at else {
        return;
    };
    let from = match &status.accounted_until {
        Some(counted) if counted.0 > started.0 => counted.0,
        _ => started.0,
    };
    let hours_since = |t: jiff::Timestamp| {
        spec.total_gpus() as f64 * (until.0.as_second() - t.as_second()).max(0) as f64 / 3600.0
    };
    let gpu_hours = hours_since(from);
    // This period's share: what was used since the later of `from` and the 1st.
    let in_period = hours_since(from.max(usage::period_start(until.0)));
    let (carried_hours, carried_kwh) = this_period_usage(status, until.0).unwrap_or((0.0, 0.0));
    status.gpu_hours = round(status.gpu_hours + gpu_hours);
    status.energy_kwh = round(status.energy_kwh + gpu_hours * watts / 1000.0);
    status.period_usage = Some(PeriodUsage {
        period: usage::period(until.0),
        gpu_hours: round(carried_hours + in_period),
        energy_kwh: round(carried_kwh + in_period * watts / 1000.0),
    });
    status.accounted_until = Some(until.clone());
}

/// When the current run must stop: `maxRuntime` after it started (or, before it
/// started, after it was admitted).
pub fn deadline(spec: &TrainingJobSpec, status: &TrainingJobStatus) -> Option<jiff::Timestamp> {
    let max = parse_duration(spec.max_runtime.as_deref()?)?;
    let from = status.started_at.as_ref().or(status.admitted_at.as_ref())?;
    from.0
        .checked_add(jiff::SignedDuration::try_from(max).ok()?)
        .ok()
}

/// Replaces (or adds) the condition of the same type.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

fn set(
    status: &mut TrainingJobStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let c = condition(
        &status.conditions,
        type_,
        value,
        reason,
        message,
        generation,
        now,
    );
    set_condition(&mut status.conditions, c);
}

/// The Failed condition (with the reason and message) and Ready false: a job that
/// ended badly.
fn set_failed(
    status: &mut TrainingJobStatus,
    reason: &str,
    message: &str,
    ready_message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    set(
        status,
        CONDITION_FAILED,
        true,
        reason,
        message,
        generation,
        now,
    );
    set(
        status,
        CONDITION_READY,
        false,
        reason,
        ready_message,
        generation,
        now,
    );
}

/// The state of the current run, as its Job reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Run {
    /// No Job: it is to be created.
    Missing,
    /// A Job of an earlier run (or of an earlier object of the same name): it goes
    /// first.
    Stale,
    /// The Job runs: `ready` pods are ready; `suspended` until released.
    Active { ready: i32, suspended: bool },
    /// The Job completed.
    Succeeded,
    /// The Job failed, with the Job controller's words.
    Failed { reason: String, message: String },
}

fn job_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// What the Job of run `run` of `tj` says.
pub fn run_state(tj: &TrainingJob, job: Option<&Job>, run: i32) -> Run {
    let Some(job) = job else { return Run::Missing };
    let ours = job
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == tj.metadata.uid.as_ref());
    if !ours || job.labels().get(RUN_LABEL) != Some(&run.to_string()) {
        return Run::Stale;
    }
    if job_condition(job, "Complete").is_some() {
        return Run::Succeeded;
    }
    if let Some(c) = job_condition(job, "Failed") {
        return Run::Failed {
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    Run::Active {
        ready: job.status.as_ref().and_then(|s| s.ready).unwrap_or(0),
        suspended: job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false),
    }
}

/// When a finished Job's run ended (its completion, or when it was marked
/// failed), at the latest `now`: a reconcile that comes late counts no extra time.
fn run_end(job: Option<&Job>, now: &Time) -> Time {
    let end = job.and_then(|j| {
        let status = j.status.as_ref()?;
        status.completion_time.clone().or_else(|| {
            status
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Failed" && c.status == "True")?
                .last_transition_time
                .clone()
        })
    });
    match end {
        Some(end) if end.0 < now.0 => end,
        _ => now.clone(),
    }
}

/// Whether a Job still holds (or may start) pods.
pub fn finished(job: &Job) -> bool {
    job_condition(job, "Complete").is_some() || job_condition(job, "Failed").is_some()
}

/// What to do with the run's Job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobAction {
    /// Nothing.
    Keep,
    /// Create it suspended, then release it: (suspended, released).
    Create(Box<(Job, Job)>),
    /// Release the suspended Job.
    Release(Box<Job>),
    /// Delete it (its pods go with it).
    Delete,
}

/// An Event to publish on the TrainingJob once its status is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason, e.g. `Restarted`.
    pub reason: &'static str,
    /// What happened, in words.
    pub message: String,
}

/// What the reconcile of one TrainingJob does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to write (nothing is written if it equals the current one).
    pub status: TrainingJobStatus,
    /// The run's Job.
    pub job: JobAction,
    /// Whether the headless Service should exist (it is kept once created).
    pub service: bool,
    /// Events to publish.
    pub events: Vec<Note>,
    /// When to look again even if nothing changes (deadline, accounting).
    pub requeue: Option<Duration>,
}

/// What the reconcile observes besides the TrainingJob.
pub struct Observed<'a> {
    /// The Job named after the TrainingJob, if any.
    pub job: Option<&'a Job>,
    /// The job's pool, if it exists.
    pub pool: Option<&'a GpuPool>,
    /// Nodes of the job's placement that are gone, not Ready, or out of the pool:
    /// a run on them cannot start, and a restart must be placed again.
    pub lost_nodes: Vec<String>,
    /// The time of the reconcile.
    pub now: Time,
}

/// Ends the current run: its GPUs are counted and released.
fn end_run(status: &mut TrainingJobStatus, spec: &TrainingJobSpec, watts: f64, now: &Time) {
    account(status, spec, watts, now);
    status.placement = None;
    status.admitted_at = None;
    status.started_at = None;
}

/// When an admitted run that has not started gives its GPUs back.
fn start_deadline(status: &TrainingJobStatus) -> Option<jiff::Timestamp> {
    let admitted = status.admitted_at.as_ref()?;
    admitted
        .0
        .checked_add(jiff::SignedDuration::try_from(START_TIMEOUT).ok()?)
        .ok()
}

/// Why an admitted run that has not started yet cannot start, if it cannot: a
/// node of its placement is lost, or its pods are not all running
/// [`START_TIMEOUT`] after admission (a child the API refused, a claim that does
/// not exist, pods the scheduler cannot place).
fn start_failure(
    previous: &TrainingJobStatus,
    state: &Run,
    spec: &TrainingJobSpec,
    obs: &Observed,
) -> Option<String> {
    if previous.phase != Some(TrainingJobPhase::Admitted) || previous.started_at.is_some() {
        return None;
    }
    let ready = match state {
        // Finished before it was seen running: it did start.
        Run::Succeeded | Run::Failed { .. } => return None,
        Run::Active { ready, .. } if *ready >= spec.nodes => return None,
        Run::Active { ready, .. } => *ready,
        Run::Missing | Run::Stale => 0,
    };
    if !obs.lost_nodes.is_empty() {
        return Some(format!(
            "node(s) {} of its placement are gone or not Ready",
            obs.lost_nodes.join(", ")
        ));
    }
    let timeout = start_deadline(previous)?;
    (obs.now.0 >= timeout).then(|| {
        format!(
            "{ready} of its {} pods were running {}s after admission",
            spec.nodes,
            START_TIMEOUT.as_secs()
        )
    })
}

/// Puts the current run back in the queue: in its place (`queuedAt`) when it lost
/// its nodes through no fault of its own, at the back (`now`) when it had its
/// chance to start and did not, so it cannot hold the head of the queue.
fn requeue_run(status: &mut TrainingJobStatus, back_of_the_queue: Option<&Time>) {
    if let Some(now) = back_of_the_queue {
        status.queued_at = Some(now.clone());
    }
    status.phase = Some(TrainingJobPhase::Queued);
    status.placement = None;
    status.admitted_at = None;
    status.started_at = None;
    status.queue_position = None;
    status.pending_reason = None;
}

/// The next step of a TrainingJob's life. Admission (Queued → Admitted, and
/// Preempted) is decided by the admission pass; everything after it is here.
pub fn plan(tj: &TrainingJob, obs: &Observed) -> Plan {
    let spec = &tj.spec;
    let previous = tj.status.clone().unwrap_or_default();
    let mut st = previous.clone();
    let now = &obs.now;
    let generation = tj.metadata.generation;
    let watts = obs
        .pool
        .map(|p| f64::from(p.spec.gpu.power_watts))
        .unwrap_or(0.0);
    let mut plan = Plan {
        status: previous.clone(),
        job: JobAction::Keep,
        service: false,
        events: vec![],
        requeue: None,
    };
    let mut note = |warning, reason, message: String| {
        plan.events.push(Note {
            warning,
            reason,
            message,
        })
    };
    let run = previous.restarts;
    let state = run_state(tj, obs.job, run);
    let delete_any = if obs.job.is_some() {
        JobAction::Delete
    } else {
        JobAction::Keep
    };
    let mut job_action = JobAction::Keep;
    let mut service = false;
    let mut requeue = None;
    match previous.phase {
        Some(TrainingJobPhase::Admitted | TrainingJobPhase::Running) => {
            let past_deadline = deadline(spec, &previous).filter(|d| now.0 >= *d);
            if spec.suspend {
                end_run(&mut st, spec, watts, now);
                st.phase = Some(TrainingJobPhase::Suspended);
                set(
                    &mut st,
                    CONDITION_ADMITTED,
                    false,
                    "Suspended",
                    "suspended: its GPUs are released",
                    generation,
                    now,
                );
                set(
                    &mut st,
                    CONDITION_READY,
                    false,
                    "Suspended",
                    "suspended",
                    generation,
                    now,
                );
                job_action = delete_any;
                note(
                    false,
                    "Suspended",
                    "suspended: the run is stopped and its GPUs released".into(),
                );
            } else if past_deadline.is_some() {
                let limit = spec.max_runtime.clone().unwrap_or_default();
                // Times and placement stay, as the record of the run.
                account(&mut st, spec, watts, now);
                st.phase = Some(TrainingJobPhase::Failed);
                st.finished_at = Some(now.clone());
                let message =
                    format!("the run took longer than maxRuntime ({limit}) and was stopped");
                set_failed(
                    &mut st,
                    "DeadlineExceeded",
                    &message,
                    "stopped",
                    generation,
                    now,
                );
                job_action = delete_any;
                note(true, "DeadlineExceeded", message);
            } else if let Some(why) = start_failure(&previous, &state, spec, obs) {
                // Never started: nothing to account; the GPUs go back at once.
                end_run(&mut st, spec, watts, now);
                // A lost node is not the job's fault; a timeout is a failed start.
                if obs.lost_nodes.is_empty() {
                    st.start_failures = previous.start_failures + 1;
                }
                job_action = delete_any;
                if st.start_failures >= MAX_START_FAILURES {
                    st.phase = Some(TrainingJobPhase::Failed);
                    st.finished_at = Some(now.clone());
                    let message = format!(
                        "{why}; it was admitted {} times without starting and is given up \
                         (kubectl describe pods -l {TRAININGJOB_LABEL}={} shows why pods wait)",
                        st.start_failures,
                        tj.name_any()
                    );
                    set(
                        &mut st,
                        CONDITION_ADMITTED,
                        false,
                        "StartFailed",
                        message.clone(),
                        generation,
                        now,
                    );
                    set_failed(&mut st, "StartFailed", &message, "failed", generation, now);
                    note(true, "StartFailed", message);
                } else {
                    requeue_run(&mut st, obs.lost_nodes.is_empty().then_some(now));
                    let message = format!("{why}: its GPUs are released and it is queued again");
                    set(
                        &mut st,
                        CONDITION_ADMITTED,
                        false,
                        "StartTimedOut",
                        message.clone(),
                        generation,
                        now,
                    );
                    set(
                        &mut st,
                        CONDITION_READY,
                        false,
                        "StartTimedOut",
                        "queued again",
                        generation,
                        now,
                    );
                    note(true, "StartTimedOut", message);
                }
            } else {
                match &state {
                    Run::Missing => match (obs.pool, &previous.placement) {
                        (Some(pool), Some(placement)) => {
                            service = true;
                            job_action = JobAction::Create(Box::new((
                                job(tj, pool, placement, run, true),
                                job(tj, pool, placement, run, false),
                            )));
                        }
                        (pool, _) => {
                            let message = if pool.is_none() {
                                format!("pool {} does not exist", spec.pool)
                            } else {
                                "admitted without a placement".to_string()
                            };
                            account(&mut st, spec, watts, now);
                            st.phase = Some(TrainingJobPhase::Failed);
                            st.finished_at = Some(now.clone());
                            set(
                                &mut st,
                                CONDITION_FAILED,
                                true,
                                "PoolNotFound",
                                message.clone(),
                                generation,
                                now,
                            );
                            note(true, "Failed", message);
                        }
                    },
                    Run::Stale => {
                        job_action = JobAction::Delete;
                        requeue = Some(Duration::from_secs(2));
                    }
                    Run::Active { ready, suspended } => {
                        service = true;
                        if *suspended
                            && let (Some(pool), Some(placement)) = (obs.pool, &previous.placement)
                        {
                            job_action =
                                JobAction::Release(Box::new(job(tj, pool, placement, run, false)));
                        }
                        if previous.phase == Some(TrainingJobPhase::Admitted)
                            && *ready >= spec.nodes
                        {
                            st.phase = Some(TrainingJobPhase::Running);
                            st.started_at = Some(now.clone());
                            // Counted in a row: a run that starts clears them.
                            st.start_failures = 0;
                            set(
                                &mut st,
                                CONDITION_READY,
                                true,
                                "Running",
                                format!("all {} pods run", spec.nodes),
                                generation,
                                now,
                            );
                            note(
                                false,
                                "Running",
                                format!("all {} pods of run {} are running", spec.nodes, run + 1),
                            );
                        } else if previous.phase == Some(TrainingJobPhase::Running) {
                            let since = previous
                                .accounted_until
                                .as_ref()
                                .or(previous.started_at.as_ref())
                                .map(|t| t.0.as_second())
                                .unwrap_or(now.0.as_second());
                            if now.0.as_second() - since >= ACCOUNTING_INTERVAL.as_secs() as i64 {
                                account(&mut st, spec, watts, now);
                            }
                        }
                    }
                    Run::Succeeded => {
                        if st.started_at.is_none() {
                            // The run finished before it was seen running.
                            st.started_at = obs
                                .job
                                .and_then(|j| j.status.as_ref()?.start_time.clone())
                                .or_else(|| previous.admitted_at.clone());
                        }
                        let end = run_end(obs.job, now);
                        account(&mut st, spec, watts, &end);
                        st.phase = Some(TrainingJobPhase::Succeeded);
                        st.finished_at = Some(end);
                        set(
                            &mut st,
                            CONDITION_READY,
                            false,
                            "Succeeded",
                            "the run succeeded",
                            generation,
                            now,
                        );
                        note(
                            false,
                            "Succeeded",
                            format!("the run succeeded after {} restarts", run),
                        );
                    }
                    Run::Failed { reason, message } => {
                        if st.started_at.is_none() {
                            st.started_at =
                                obs.job.and_then(|j| j.status.as_ref()?.start_time.clone());
                        }
                        let end = run_end(obs.job, now);
                        account(&mut st, spec, watts, &end);
                        let why = if message.is_empty() {
                            reason.clone()
                        } else {
                            format!("{reason}: {message}")
                        };
                        if run < spec.max_restarts {
                            st.restarts = run + 1;
                            st.started_at = None;
                            st.phase = Some(TrainingJobPhase::Admitted);
                            // Its nodes are kept, unless one was lost: then the
                            // restart goes back through admission to be placed again.
                            let elsewhere = if obs.lost_nodes.is_empty() {
                                st.admitted_at = Some(now.clone());
                                String::new()
                            } else {
                                requeue_run(&mut st, None);
                                set(
                                    &mut st,
                                    CONDITION_ADMITTED,
                                    false,
                                    "NodeLost",
                                    format!(
                                        "node(s) {} lost: queued to be placed again",
                                        obs.lost_nodes.join(", ")
                                    ),
                                    generation,
                                    now,
                                );
                                format!(
                                    ", queued to be placed again without lost node(s) {}",
                                    obs.lost_nodes.join(", ")
                                )
                            };
                            set(
                                &mut st,
                                CONDITION_READY,
                                false,
                                "Restarting",
                                format!(
                                    "run {} failed ({why}); starting it again{elsewhere}",
                                    run + 1
                                ),
                                generation,
                                now,
                            );
                            job_action = JobAction::Delete;
                            requeue = Some(Duration::from_secs(1));
                            note(
                                true,
                                "Restarted",
                                format!(
                                    "run {} failed ({why}); restart {} of {}{elsewhere}",
                                    run + 1,
                                    run + 1,
                                    spec.max_restarts
                                ),
                            );
                        } else {
                            st.phase = Some(TrainingJobPhase::Failed);
                            st.finished_at = Some(end);
                            let message = format!(
                                "run {} failed ({why}) and maxRestarts ({}) is reached",
                                run + 1,
                                spec.max_restarts
                            );
                            set_failed(&mut st, "RunFailed", &message, "failed", generation, now);
                            note(true, "Failed", message);
                        }
                    }
                }
            }
            if matches!(
                st.phase,
                Some(TrainingJobPhase::Admitted | TrainingJobPhase::Running)
            ) {
                let until = |d: jiff::Timestamp| {
                    Duration::from_secs((d.as_second() - now.0.as_second()).max(0) as u64 + 1)
                };
                let mut wake = deadline(spec, &st).map(until);
                if st.phase == Some(TrainingJobPhase::Admitted)
                    && let Some(timeout) = start_deadline(&st)
                {
                    let timeout = until(timeout);
                    wake = Some(wake.map_or(timeout, |w| w.min(timeout)));
                }
                if st.phase == Some(TrainingJobPhase::Running) {
                    wake = Some(wake.map_or(ACCOUNTING_INTERVAL, |w| w.min(ACCOUNTING_INTERVAL)));
                }
                requeue = match (requeue, wake) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Some(TrainingJobPhase::Suspended) => {
            if !spec.suspend {
                st.phase = Some(TrainingJobPhase::Queued);
                st.queued_at = Some(now.clone());
                st.queue_position = None;
                st.pending_reason = None;
                note(false, "Resumed", "resumed: queued again".into());
            }
            job_action = delete_any;
        }
        None | Some(TrainingJobPhase::Queued | TrainingJobPhase::Preempted) => {
            if spec.suspend {
                st.phase = Some(TrainingJobPhase::Suspended);
                st.queue_position = None;
                st.pending_reason = None;
                set(
                    &mut st,
                    CONDITION_ADMITTED,
                    false,
                    "Suspended",
                    "suspended: not queued",
                    generation,
                    now,
                );
                note(false, "Suspended", "suspended while queued".into());
            }
            // A queued job has no run: a Job left behind (preemption) goes.
            job_action = delete_any;
        }
        Some(TrainingJobPhase::Succeeded) => {}
        Some(TrainingJobPhase::Failed) => {
            if obs.job.is_some_and(|j| !finished(j)) {
                job_action = JobAction::Delete;
            }
        }
    }
    if st != previous {
        st.observed_generation = generation;
    }
    plan.status = st;
    plan.job = job_action;
    plan.service = service;
    plan.requeue = requeue;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobCondition;

    fn at(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(1_767_225_600 + second).unwrap())
    }

    fn tj(extra: Value) -> TrainingJob {
        let mut spec = json!({"pool": "h100", "nodes": 4, "gpusPerNode": 8, "image": "trainer:1",
                              "command": ["torchrun"], "env": [{"name": "EPOCHS", "value": "3"}, {"name": "WORLD_SIZE", "value": "99"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        let mut tj = TrainingJob::new("llm", serde_json::from_value(spec).unwrap());
        tj.metadata.namespace = Some("acme".into());
        tj.metadata.uid = Some("uid-1".into());
        tj.metadata.generation = Some(1);
        tj.metadata.annotations = Some(
            [
                (
                    "aifactory.dev/simulate-duration".to_string(),
                    "5s".to_string(),
                ),
                ("other".to_string(), "x".to_string()),
            ]
            .into(),
        );
        tj
    }

    fn pool() -> GpuPool {
        serde_json::from_value(json!({"metadata": {"name": "h100"}, "spec": {
            "nodeSelector": {"matchLabels": {"a": "b"}},
            "gpu": {"model": "H100-80GB", "perNode": 8, "powerWatts": 700},
            "location": {"region": "eu-west"}}}))
        .unwrap()
    }

    fn placement() -> Placement {
        Placement {
            nodes: vec!["n1".into(), "n2".into(), "n3".into(), "n4".into()],
            domain: None,
        }
    }

    fn admitted(mut tj: TrainingJob, phase: TrainingJobPhase) -> TrainingJob {
        tj.status = Some(TrainingJobStatus {
            phase: Some(phase),
            placement: Some(placement()),
            admitted_at: Some(at(0)),
            started_at: (phase == TrainingJobPhase::Running).then(|| at(10)),
            ..Default::default()
        });
        tj
    }

    fn live_job(tj: &TrainingJob, run: i32, status: Value) -> Job {
        let mut j = job(tj, &pool(), &placement(), run, false);
        j.status = Some(serde_json::from_value(status).unwrap());
        j
    }

    fn plan_at(tj: &TrainingJob, job: Option<&Job>, second: i64) -> Plan {
        let pool = pool();
        plan(
            tj,
            &Observed {
                job,
                pool: Some(&pool),
                lost_nodes: vec![],
                now: at(second),
            },
        )
    }

    #[test]
    fn the_job_is_an_indexed_gang_pinned_to_its_placement_with_the_torchrun_environment() {
        let tj = tj(json!({"resources": {"cpu": "96", "memory": "1Ti"},
                           "checkpoint": {"claimName": "scratch", "mountPath": "/ckpt"},
                           "datasets": [{"name": "images"}], "priority": "high"}));
        let j = serde_json::to_value(job(&tj, &pool(), &placement(), 2, true)).unwrap();
        let spec = &j["spec"];
        assert_eq!(spec["completionMode"], "Indexed");
        assert_eq!(
            (spec["completions"].as_i64(), spec["parallelism"].as_i64()),
            (Some(4), Some(4))
        );
        assert_eq!(spec["backoffLimit"], 0);
        assert_eq!(spec["suspend"], true);
        assert_eq!(j["metadata"]["labels"][RUN_LABEL], "2");
        assert_eq!(j["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["nodeSelector"][aifactory_api::POOL_LABEL], "h100");
        assert_eq!(pod["serviceAccountName"], "aifactory-jobs");
        assert_eq!(pod["subdomain"], "llm");
        assert_eq!(pod["priorityClassName"], "high");
        assert_eq!(pod["tolerations"][0]["value"], "h100");
        let terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"]
            .as_array()
            .unwrap();
        let pinned: Vec<&Value> = terms
            .iter()
            .map(|t| &t["matchFields"][0]["values"][0])
            .collect();
        assert_eq!(pinned, ["n1", "n2", "n3", "n4"], "exactly the placement");
        assert_eq!(
            pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
                ["topologyKey"],
            "kubernetes.io/hostname"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "8");
        assert_eq!(c["resources"]["requests"]["cpu"], "96");
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == name)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(env("MASTER_ADDR")[0]["value"], "llm-0.llm");
        assert_eq!(env("MASTER_PORT")[0]["value"], "29500");
        assert_eq!(
            env("WORLD_SIZE"),
            vec![json!({"name": "WORLD_SIZE", "value": "4"})],
            "the spec cannot override it"
        );
        assert_eq!(env("NPROC_PER_NODE")[0]["value"], "8");
        assert_eq!(env("CHECKPOINT_DIR")[0]["value"], "/ckpt");
        assert_eq!(env("EPOCHS")[0]["value"], "3");
        assert_eq!(
            env("NODE_RANK")[0]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "images"
        );
        let annotations = &spec["template"]["metadata"]["annotations"];
        assert_eq!(annotations["aifactory.dev/simulate-duration"], "5s");
        assert!(annotations.get("other").is_none());
    }

    #[test]
    fn the_service_is_headless_and_selects_the_jobs_pods() {
        let s = serde_json::to_value(service(&tj(json!({})))).unwrap();
        assert_eq!(s["spec"]["clusterIP"], "None");
        assert_eq!(s["spec"]["selector"]["job-name"], "llm");
    }

    #[test]
    fn an_admitted_job_without_a_job_creates_it_suspended_then_releases_it() {
        let tj = admitted(tj(json!({})), TrainingJobPhase::Admitted);
        let p = plan_at(&tj, None, 1);
        let JobAction::Create(pair) = &p.job else {
            panic!("{:?}", p.job)
        };
        assert_eq!(pair.0.spec.as_ref().unwrap().suspend, Some(true));
        assert_eq!(pair.1.spec.as_ref().unwrap().suspend, Some(false));
        assert!(p.service);
        assert_eq!(p.status, tj.status.clone().unwrap(), "nothing to write yet");
    }

    #[test]
    fn all_pods_ready_is_running_and_a_complete_job_succeeds_with_its_gpu_hours() {
        let tj0 = admitted(tj(json!({})), TrainingJobPhase::Admitted);
        let j = live_job(&tj0, 0, json!({"ready": 4, "active": 4}));
        let p = plan_at(&tj0, Some(&j), 10);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Running));
        assert_eq!(p.status.started_at, Some(at(10)));
        assert_eq!(p.events[0].reason, "Running");
        assert_eq!(p.requeue, Some(ACCOUNTING_INTERVAL));

        let mut tj1 = tj0.clone();
        tj1.status = Some(p.status);
        let done = live_job(
            &tj1,
            0,
            json!({"conditions": [{"type": "Complete", "status": "True"}],
                   "completionTime": "2026-01-01T00:30:10Z"}),
        );
        // Seen a minute late: the run is counted until the Job completed.
        let p = plan_at(&tj1, Some(&done), 10 + 1800 + 60);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Succeeded));
        assert_eq!(p.status.gpu_hours, 16.0, "32 GPUs for half an hour");
        assert_eq!(p.status.energy_kwh, 11.2, "at 700 W each");
        assert_eq!(p.status.finished_at, Some(at(1810)));
        assert_eq!(
            p.job,
            JobAction::Keep,
            "the finished Job stays for its logs"
        );
    }

    #[test]
    fn while_running_gpu_hours_are_counted_at_most_once_a_minute() {
        let tj = admitted(tj(json!({})), TrainingJobPhase::Running);
        let j = live_job(&tj, 0, json!({"ready": 4}));
        assert_eq!(
            plan_at(&tj, Some(&j), 40).status,
            tj.status.clone().unwrap()
        );
        let p = plan_at(&tj, Some(&j), 10 + 360);
        assert_eq!(p.status.gpu_hours, 3.2);
        assert_eq!(p.status.accounted_until, Some(at(370)));
        let mut again = tj.clone();
        again.status = Some(p.status.clone());
        let p2 = plan_at(&again, Some(&j), 370 + 360);
        assert_eq!(p2.status.gpu_hours, 6.4, "only the new six minutes count");
    }

    #[test]
    fn a_failed_run_restarts_until_max_restarts_then_fails() {
        let tj0 = admitted(tj(json!({"maxRestarts": 1})), TrainingJobPhase::Running);
        let failed = |t: &TrainingJob, run| {
            live_job(
                t,
                run,
                json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
            )
        };
        let p = plan_at(&tj0, Some(&failed(&tj0, 0)), 100);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Admitted));
        assert_eq!(p.status.restarts, 1);
        assert_eq!(
            p.status.placement,
            Some(placement()),
            "the GPUs stay reserved"
        );
        assert_eq!(p.status.started_at, None);
        assert!(p.status.gpu_hours > 0.0);
        assert_eq!(p.job, JobAction::Delete);
        assert_eq!(p.events[0].reason, "Restarted");

        let mut tj1 = tj0.clone();
        tj1.status = Some(p.status);
        // The old run's Job is not the new run's: it goes, nothing is counted.
        let p = plan_at(&tj1, Some(&failed(&tj0, 0)), 101);
        assert_eq!(p.job, JobAction::Delete);
        assert_eq!(p.status, tj1.status.clone().unwrap());
        let p = plan_at(&tj1, Some(&failed(&tj1, 1)), 150);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Failed));
        let c = crate::conditions::find(&p.status.conditions, CONDITION_FAILED).unwrap();
        assert_eq!(c.reason, "RunFailed");
        assert!(c.message.contains("BackoffLimitExceeded"), "{}", c.message);
    }

    #[test]
    fn past_max_runtime_the_run_is_stopped_with_deadline_exceeded() {
        let tj = admitted(
            tj(json!({"maxRuntime": "1m30s"})),
            TrainingJobPhase::Running,
        );
        let j = live_job(&tj, 0, json!({"ready": 4}));
        let before = plan_at(&tj, Some(&j), 50);
        assert_eq!(
            before.requeue,
            Some(Duration::from_secs(51)),
            "wake at the deadline"
        );
        let p = plan_at(&tj, Some(&j), 100);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Failed));
        assert_eq!(p.job, JobAction::Delete);
        assert_eq!(
            crate::conditions::find(&p.status.conditions, CONDITION_FAILED)
                .unwrap()
                .reason,
            "DeadlineExceeded"
        );
        assert_eq!(
            p.status.started_at,
            Some(at(10)),
            "the record of the run stays"
        );
        assert_eq!(p.requeue, None);
    }

    #[test]
    fn suspend_releases_the_gpus_and_resume_queues_again() {
        let mut tj = admitted(tj(json!({"suspend": true})), TrainingJobPhase::Running);
        let j = live_job(&tj, 0, json!({"ready": 4}));
        let p = plan_at(&tj, Some(&j), 20);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Suspended));
        assert_eq!(p.status.placement, None);
        assert_eq!(p.job, JobAction::Delete);
        tj.status = Some(p.status);
        tj.spec.suspend = false;
        let p = plan_at(&tj, None, 30);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Queued));
        assert_eq!(p.status.queued_at, Some(at(30)));
        assert_eq!(p.job, JobAction::Keep);
    }

    #[test]
    fn a_queued_job_never_keeps_a_job() {
        let mut tj = tj(json!({}));
        tj.status = Some(TrainingJobStatus {
            phase: Some(TrainingJobPhase::Preempted),
            ..Default::default()
        });
        let j = live_job(&tj, 0, json!({"ready": 4}));
        assert_eq!(plan_at(&tj, Some(&j), 1).job, JobAction::Delete);
        assert_eq!(plan_at(&tj, None, 1).status, tj.status.clone().unwrap());
    }

    #[test]
    fn a_finished_job_of_another_run_or_object_is_stale() {
        let tj = admitted(tj(json!({})), TrainingJobPhase::Admitted);
        let mut j = live_job(
            &tj,
            0,
            json!({"conditions": [JobCondition { type_: "Complete".into(), status: "True".into(), ..Default::default() }]}),
        );
        j.metadata.owner_references.as_mut().unwrap()[0].uid = "old".into();
        assert_eq!(run_state(&tj, Some(&j), 0), Run::Stale);
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3d"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn a_deleted_job_settles_this_months_hours_including_its_running_run() {
        let tj = |status: serde_json::Value| -> TrainingJob {
            serde_json::from_value(json!({
                "apiVersion": "aifactory.dev/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": "j", "namespace": "acme"},
                "spec": {"pool": "h100", "nodes": 2, "gpusPerNode": 8, "image": "x"},
                "status": status,
            }))
            .unwrap()
        };
        let now = Time("2026-11-20T12:00:00Z".parse().unwrap());
        let done = tj(
            json!({"phase": "Succeeded", "gpuHours": 16.0, "energyKWh": 11.2,
                             "accountedUntil": "2026-11-20T11:00:00Z"}),
        );
        assert_eq!(settlement(&done, 700.0, &now), Some((16.0, 11.2)));
        let last_month = tj(json!({"phase": "Succeeded", "gpuHours": 16.0,
                                   "accountedUntil": "2026-10-31T11:00:00Z"}));
        assert_eq!(settlement(&last_month, 700.0, &now), None);
        assert_eq!(
            settlement(&tj(json!({"phase": "Queued"})), 700.0, &now),
            None
        );
        // Running for an hour, counted up to 11:30: the last half hour is added.
        let running = tj(
            json!({"phase": "Running", "gpuHours": 8.0, "energyKWh": 5.6,
                                "startedAt": "2026-11-20T11:00:00Z",
                                "accountedUntil": "2026-11-20T11:30:00Z",
                                "placement": {"nodes": ["a", "b"]}}),
        );
        let (hours, _) = settlement(&running, 700.0, &now).unwrap();
        assert!((hours - 16.0).abs() < 1e-9, "{hours}");
    }

    fn plan_with_lost(tj: &TrainingJob, job: Option<&Job>, second: i64, lost: &[&str]) -> Plan {
        let pool = pool();
        plan(
            tj,
            &Observed {
                job,
                pool: Some(&pool),
                lost_nodes: lost.iter().map(|n| n.to_string()).collect(),
                now: at(second),
            },
        )
    }

    #[test]
    fn an_admitted_run_whose_pods_do_not_start_in_time_gives_its_gpus_back_and_queues_again() {
        let mut tj = admitted(tj(json!({})), TrainingJobPhase::Admitted);
        tj.status.as_mut().unwrap().queued_at = Some(at(-50));
        let waiting = live_job(&tj, 0, json!({"active": 4, "ready": 2}));
        let p = plan_at(&tj, Some(&waiting), 100);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Admitted));
        assert_eq!(
            p.requeue,
            Some(Duration::from_secs(21)),
            "it looks again when the start timeout ends"
        );

        let p = plan_at(&tj, Some(&waiting), 120);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Queued));
        assert_eq!(p.status.placement, None, "the GPUs are released");
        assert_eq!(p.status.admitted_at, None);
        assert_eq!(
            p.status.queued_at,
            Some(at(120)),
            "it had its chance: to the back of the queue"
        );
        assert_eq!(p.status.start_failures, 1);
        assert_eq!(
            p.status.gpu_hours, 0.0,
            "a run that never started costs nothing"
        );
        assert_eq!(p.job, JobAction::Delete);
        let c = crate::conditions::find(&p.status.conditions, CONDITION_ADMITTED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "StartTimedOut")
        );
        assert!(
            c.message
                .contains("2 of its 4 pods were running 120s after admission"),
            "{}",
            c.message
        );
        assert_eq!(p.events[0].reason, "StartTimedOut");
        assert!(p.events[0].warning);

        // A Job the API refused (never created) counts the same.
        let p = plan_at(&tj, None, 130);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Queued));
        assert!(matches!(p.job, JobAction::Keep), "no Job to delete");

        // The third time, the job fails instead of holding GPUs again and again.
        let mut third = tj.clone();
        third.status.as_mut().unwrap().start_failures = 2;
        let p = plan_at(&third, Some(&waiting), 121);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Failed));
        assert_eq!(p.status.placement, None);
        let c = crate::conditions::find(&p.status.conditions, CONDITION_FAILED).unwrap();
        assert_eq!(c.reason, "StartFailed");
        assert!(
            c.message.contains("admitted 3 times without starting"),
            "{}",
            c.message
        );

        // All pods running in time: it runs, whatever the clock says later.
        let ready = live_job(&tj, 0, json!({"active": 4, "ready": 4}));
        let p = plan_at(&tj, Some(&ready), 119);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Running));
        let mut running = tj.clone();
        running.status = Some(p.status);
        let p = plan_at(&running, Some(&waiting), 500);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Running));
    }

    #[test]
    fn a_lost_node_releases_an_admitted_run_at_once_and_a_restart_is_placed_again() {
        let tj0 = admitted(tj(json!({"maxRestarts": 2})), TrainingJobPhase::Admitted);
        let waiting = live_job(&tj0, 0, json!({"active": 4, "ready": 3}));
        let p = plan_with_lost(&tj0, Some(&waiting), 5, &["n3"]);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Queued));
        assert_eq!(p.status.placement, None);
        assert!(p.events[0].message.contains("n3"), "{:?}", p.events);
        assert_eq!(
            p.status.queued_at,
            tj0.status.as_ref().unwrap().queued_at,
            "a lost node is not the job's fault: it keeps its place"
        );
        assert_eq!(
            p.status.start_failures, 0,
            "nor does it count as a failed start"
        );

        // A run that failed with a node lost restarts through the queue, not on
        // the dead node.
        let running = admitted(tj(json!({"maxRestarts": 2})), TrainingJobPhase::Running);
        let failed = live_job(
            &running,
            0,
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "node gone"}]}),
        );
        let p = plan_with_lost(&running, Some(&failed), 100, &["n2"]);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Queued));
        assert_eq!(p.status.restarts, 1);
        assert_eq!(p.status.placement, None, "placed again by admission");
        assert!(
            p.status.gpu_hours > 0.0,
            "the run's hours up to the failure count"
        );
        assert_eq!(p.job, JobAction::Delete);
        let c = crate::conditions::find(&p.status.conditions, CONDITION_ADMITTED).unwrap();
        assert_eq!(c.reason, "NodeLost");
        // With every node alive, the restart keeps its nodes.
        let p = plan_with_lost(&running, Some(&failed), 100, &[]);
        assert_eq!(p.status.phase, Some(TrainingJobPhase::Admitted));
        assert_eq!(p.status.placement, Some(placement()));
        assert_eq!(
            p.status.admitted_at,
            Some(at(100)),
            "the new run's start timeout counts from now"
        );
    }

    #[test]
    fn a_run_across_the_first_of_the_month_charges_each_month_only_its_own_hours() {
        let t = |s: &str| Time(s.parse().unwrap());
        let spec = tj(json!({})).spec; // 4 × 8 = 32 GPUs
        let mut st = TrainingJobStatus {
            phase: Some(TrainingJobPhase::Running),
            started_at: Some(t("2026-11-30T22:00:00Z")),
            ..Default::default()
        };
        account(&mut st, &spec, 1000.0, &t("2026-11-30T23:00:00Z"));
        let nov = st.period_usage.clone().unwrap();
        assert_eq!((nov.period.as_str(), nov.gpu_hours), ("2026-11", 32.0));
        // Two hours later, one of them in December: December is charged one hour.
        account(&mut st, &spec, 1000.0, &t("2026-12-01T01:00:00Z"));
        let dec = st.period_usage.clone().unwrap();
        assert_eq!((dec.period.as_str(), dec.gpu_hours), ("2026-12", 32.0));
        assert!((dec.energy_kwh - 32.0).abs() < 1e-9);
        assert_eq!(
            st.gpu_hours, 96.0,
            "the job's lifetime hours keep everything"
        );
        assert_eq!(
            this_period_usage(&st, "2026-12-15T00:00:00Z".parse().unwrap()),
            Some((32.0, 32.0))
        );
        assert_eq!(
            this_period_usage(&st, "2027-01-01T00:00:00Z".parse().unwrap()),
            None,
            "nothing in January yet"
        );
        // Settled at deletion: December's hours only.
        let mut job = tj(json!({}));
        job.status = Some(TrainingJobStatus {
            phase: Some(TrainingJobPhase::Succeeded),
            ..st
        });
        assert_eq!(
            settlement(&job, 1000.0, &t("2026-12-02T00:00:00Z")),
            Some((32.0, 32.0))
        );
    }
}
