//! Fenced leadership on the local factory: a second operator replica (its own
//! user, so the audit log tells the two apart) stands by; the leader is frozen
//! (SIGSTOP) in the middle of admitting work, for longer than the lease; the
//! standby takes over and admits; the old leader is resumed (SIGCONT). It must not
//! write again — it exits — and at no moment is a job admitted twice, a node given
//! more GPUs than it has, or a tenant more than its guarantee plus what it may
//! borrow. A test binary of its own, since it freezes the operator every other test
//! uses; it leaves one operator running, started by `hack/operator.sh`.
use aifactory_api::{TrainingJob, TrainingJobPhase};
use aifactory_tests::*;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);
/// The operator's lease duration (`operator/src/leader.rs`, `Timing::default`).
const LEASE_SECONDS: i64 = 13;
/// The leader stays frozen at least this long: more than the lease ([`LEASE_SECONDS`]).
const FROZEN_FOR: Duration = Duration::from_secs(25);
const LEADER_USER: &str = "aifactory-operator";
const STANDBY_USER: &str = "aifactory-operator-b";
const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];
const GPUS_PER_NODE: i64 = 8;

/// The operator `hack/operator.sh` started (the leader at the start).
fn leader_pid() -> anyhow::Result<u32> {
    Ok(std::fs::read_to_string(state_dir().join("operator.pid"))?
        .trim()
        .parse()?)
}

/// The state letter of process `pid` (R, S, T for stopped, Z), `None` once gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// A kubeconfig for the standby's own user, bound to the operator's ClusterRole.
async fn standby_kubeconfig(client: &Client) -> anyhow::Result<PathBuf> {
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": STANDBY_USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "aifactory-operator"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": STANDBY_USER}]
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            STANDBY_USER,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&crb),
        )
        .await?;
    user_kubeconfig(STANDBY_USER, &[])
}

/// The second replica, and putting things back however the test ends: the old
/// leader is never left frozen, the standby is stopped (SIGTERM: it releases the
/// lease), and one operator runs again, started by `hack/operator.sh`.
struct Replicas {
    leader: u32,
    standby: Option<Child>,
}

impl Replicas {
    fn stop_standby(&mut self) {
        let Some(mut child) = self.standby.take() else {
            return;
        };
        let _ = signal(child.id(), "TERM");
        for _ in 0..300 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if process_state(self.leader) == Some('T') {
            let _ = signal(self.leader, "CONT");
        }
        self.stop_standby();
        if let Err(e) = operator_sh("start") {
            eprintln!("could not start the operator again: {e}");
        }
    }
}

/// Where a job is seen to hold GPUs, as the admission engine counts it: admitted or
/// running, on a placement.
fn holding(tj: &TrainingJob) -> Option<&[String]> {
    let status = tj.status.as_ref()?;
    matches!(
        status.phase,
        Some(TrainingJobPhase::Admitted | TrainingJobPhase::Running)
    )
    .then_some(())?;
    let nodes = &status.placement.as_ref()?.nodes;
    (!nodes.is_empty()).then_some(nodes.as_slice())
}

/// Every state of the tenants' TrainingJobs the API server went through (one
/// ordered watch), checked as it comes: per node GPUs ≤ capacity, per tenant GPUs ≤
/// guarantee + borrowing limit, one admission per job.
#[derive(Default)]
struct Ledger {
    /// Tenant namespace → most GPUs it may hold.
    ceilings: HashMap<String, i64>,
    jobs: BTreeMap<(String, String), TrainingJob>,
    /// Distinct `admittedAt` seen per job: more than one is a second admission.
    admissions: BTreeMap<(String, String), BTreeSet<String>>,
    /// When (test clock) each job was first seen holding GPUs.
    first_held: BTreeMap<(String, String), Instant>,
    preempted: BTreeSet<(String, String)>,
    peak_per_node: BTreeMap<String, i64>,
    violations: Vec<String>,
    /// Freeze this pid as soon as one of these jobs is seen admitted.
    freeze: Option<(u32, BTreeSet<(String, String)>)>,
    /// When the leader was frozen (test clock, wall clock).
    frozen: Option<(Instant, jiff::Timestamp)>,
}

impl Ledger {
    fn apply(&mut self, tj: TrainingJob) {
        let ns = tj.namespace().unwrap_or_default();
        if !self.ceilings.contains_key(&ns) {
            return;
        }
        let key = (ns, tj.name_any());
        if let Some(at) = tj.status.as_ref().and_then(|s| s.admitted_at.as_ref()) {
            self.admissions
                .entry(key.clone())
                .or_default()
                .insert(at.0.to_string());
        }
        if tj.status.as_ref().and_then(|s| s.phase) == Some(TrainingJobPhase::Preempted) {
            self.preempted.insert(key.clone());
        }
        if holding(&tj).is_some() {
            self.first_held
                .entry(key.clone())
                .or_insert_with(Instant::now);
            // Right here, not from a poll: the pass that wrote this admission is
            // still applying its other decisions.
            if self
                .freeze
                .as_ref()
                .is_some_and(|(_, jobs)| jobs.contains(&key))
                && let Some((pid, _)) = self.freeze.take()
            {
                match signal(pid, "STOP") {
                    Ok(()) => self.frozen = Some((Instant::now(), jiff::Timestamp::now())),
                    Err(e) => self.flag(format!("could not freeze the leader: {e}")),
                }
            }
        }
        self.jobs.insert(key, tj);
        self.check();
    }

    /// Notes a broken invariant once, however many states show it.
    fn flag(&mut self, violation: String) {
        if !self.violations.contains(&violation) {
            self.violations.push(violation);
        }
    }

    fn check(&mut self) {
        let mut per_node: BTreeMap<String, (i64, Vec<String>)> = BTreeMap::new();
        let mut per_tenant: BTreeMap<String, i64> = BTreeMap::new();
        for ((ns, name), tj) in &self.jobs {
            let Some(nodes) = holding(tj) else { continue };
            for node in nodes {
                let held = per_node.entry(node.clone()).or_default();
                held.0 += tj.spec.gpus_per_node as i64;
                held.1.push(format!("{ns}/{name}"));
            }
            *per_tenant.entry(ns.clone()).or_default() +=
                nodes.len() as i64 * tj.spec.gpus_per_node as i64;
        }
        for (node, (gpus, jobs)) in per_node {
            let peak = self.peak_per_node.entry(node.clone()).or_default();
            *peak = (*peak).max(gpus);
            if gpus > GPUS_PER_NODE {
                self.flag(format!(
                    "node {node} given {gpus} GPUs of {GPUS_PER_NODE}, by {jobs:?}"
                ));
            }
        }
        for (ns, gpus) in per_tenant {
            let ceiling = self.ceilings[&ns];
            if gpus > ceiling {
                self.flag(format!(
                    "tenant {ns} holds {gpus} GPUs, more than its {ceiling}"
                ));
            }
        }
        let twice: Vec<String> = self
            .admissions
            .iter()
            .filter(|(_, times)| times.len() > 1)
            .map(|((ns, name), times)| {
                format!("{ns}/{name} admitted {} times: {times:?}", times.len())
            })
            .collect();
        for v in twice {
            self.flag(v);
        }
    }

    fn phases(&self) -> BTreeMap<String, usize> {
        let mut phases = BTreeMap::new();
        for tj in self.jobs.values() {
            let phase = tj
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "New".into());
            *phases.entry(phase).or_default() += 1;
        }
        phases
    }
}

/// One request the API server's audit log recorded.
struct Audited {
    user: String,
    verb: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
    code: i64,
    received: jiff::Timestamp,
}

/// Every request in the audit log and its rotated files, oldest first.
fn audit_log() -> anyhow::Result<Vec<Audited>> {
    let mut requests = vec![];
    for entry in std::fs::read_dir(state_dir())? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !(name.starts_with("audit") && name.ends_with(".log")) {
            continue;
        }
        for line in std::io::BufReader::new(std::fs::File::open(&path)?).lines() {
            let Ok(event) = serde_json::from_str::<Value>(&line?) else {
                continue;
            };
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let Ok(received) = text(&event["requestReceivedTimestamp"]).parse() else {
                continue;
            };
            requests.push(Audited {
                user: text(&event["user"]["username"]),
                verb: text(&event["verb"]),
                resource: text(&event["objectRef"]["resource"]),
                subresource: text(&event["objectRef"]["subresource"]),
                namespace: text(&event["objectRef"]["namespace"]),
                name: text(&event["objectRef"]["name"]),
                code: event["responseStatus"]["code"].as_i64().unwrap_or_default(),
                received,
            });
        }
    }
    requests.sort_by_key(|r| r.received);
    Ok(requests)
}

impl Audited {
    fn is_write(&self) -> bool {
        WRITES.contains(&self.verb.as_str())
    }

    fn describe(&self) -> String {
        format!(
            "{} {} {}{} {}/{} → {} at {}",
            self.user,
            self.verb,
            self.resource,
            if self.subresource.is_empty() {
                String::new()
            } else {
                format!("/{}", self.subresource)
            },
            self.namespace,
            self.name,
            self.code,
            self.received
        )
    }
}

/// A tenant of the test's pool, Ready with its GPU ResourceQuota in place.
async fn tenant(client: &Client, prefix: &str, pool: &str, quota: Value) -> anyhow::Result<String> {
    let name = unique_name(prefix);
    let mut q = quota.clone();
    q["pool"] = json!(pool);
    let tenant: aifactory_api::Tenant = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"owners": [{"kind": "User", "name": format!("{name}-owner")}], "quota": [q]}
    }))?;
    Api::<aifactory_api::Tenant>::all(client.clone())
        .create(&PostParams::default(), &tenant)
        .await?;
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), &name);
    wait_for(&format!("tenant {name} and its quota"), WAIT, || async {
        Ok(quotas.get_opt("aifactory-tenant").await?.map(|_| ()))
    })
    .await?;
    Ok(name)
}

async fn submit(
    client: &Client,
    ns: &str,
    name: &str,
    pool: &str,
    (nodes, gpus): (i32, i32),
    runs_for: &str,
) -> anyhow::Result<()> {
    let tj: TrainingJob = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "annotations": {"aifactory.dev/simulate-duration": runs_for}},
        "spec": {"pool": pool, "nodes": nodes, "gpusPerNode": gpus,
                 "image": "registry.example/trainer:1", "command": ["torchrun"], "args": ["train.py"]}
    }))?;
    Api::<TrainingJob>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &tj)
        .await?;
    Ok(())
}

async fn lease_holder(client: &Client) -> anyhow::Result<Option<String>> {
    Ok(Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("aifactory-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn a_leader_frozen_past_its_lease_never_writes_beside_its_successor() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;

    // A pool of 3 × 8 H100s. acme and beta are guaranteed 8 each and may borrow 8
    // more; they lend nothing, and only `idle` (which submits nothing) lends its 8:
    // nobody reclaims a guarantee, so no job is ever preempted and every job is
    // admitted exactly once.
    let group = unique_name("leader");
    let _nodes = FakeNodes::create(&client, &group, 3, "H100-80GB", 8).await?;
    let (pool, _pool_cleanup) = dedicated_pool(&client, &group, 3).await?;
    let acme = tenant(
        &client,
        "acme",
        &pool,
        json!({"gpus": 8, "borrowingLimit": 8, "lendingLimit": 0}),
    )
    .await?;
    let beta = tenant(
        &client,
        "beta",
        &pool,
        json!({"gpus": 8, "borrowingLimit": 8, "lendingLimit": 0}),
    )
    .await?;
    let idle = tenant(
        &client,
        "idle",
        &pool,
        json!({"gpus": 8, "lendingLimit": 8}),
    )
    .await?;
    let _tenants = Cleanup(vec![
        ("tenant", acme.clone()),
        ("tenant", beta.clone()),
        ("tenant", idle.clone()),
        ("clusterrolebinding", STANDBY_USER.to_string()),
    ]);

    // Every state the jobs go through, checked as it is seen.
    let ledger = Arc::new(Mutex::new(Ledger {
        ceilings: [(acme.clone(), 16), (beta.clone(), 16), (idle.clone(), 8)].into(),
        ..Default::default()
    }));
    let watch = {
        let (ledger, api) = (ledger.clone(), Api::<TrainingJob>::all(client.clone()));
        tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(tj) | watcher::Event::InitApply(tj)) = event {
                    ledger.lock().unwrap().apply(tj);
                }
            }
        })
    };

    // The standby: the same binary hack/operator.sh runs, as its own user.
    let kubeconfig = standby_kubeconfig(&client).await?;
    let standby_identity = format!("leader-test-standby-{}", std::process::id());
    let standby_log = state_dir().join("logs/operator-standby.log");
    let mut replicas = Replicas {
        leader: leader_pid()?,
        standby: None,
    };
    let leader_identity = lease_holder(&client).await?.unwrap_or_default();
    replicas.standby = Some(
        Command::new(repo_root().join("target/debug/aifactory"))
            .args([
                "run",
                "--http-addr",
                "127.0.0.1:0",
                "--lease-namespace",
                "default",
            ])
            .args(["--identity", &standby_identity])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("POD_NAME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&standby_log)?)
            .spawn()?,
    );
    let standby_started = wait_for("the second replica to stand by", WAIT, || async {
        let log = std::fs::read_to_string(&standby_log)?;
        Ok((log.contains("standing by") || log.contains("became leader")).then_some(log))
    })
    .await?;
    assert!(
        !standby_started.contains("became leader"),
        "the second replica took the lease from a live leader:\n{standby_started}"
    );

    // A long job keeps a node busy; it ends while the leader is frozen, so the
    // standby has GPUs to hand out as soon as it leads.
    submit(&client, &acme, "long", &pool, (1, 8), "15s").await?;
    wait_for("the long job to run", WAIT, || async {
        let l = ledger.lock().unwrap();
        Ok((l.phases().get("Running") == Some(&1)).then_some(()))
    })
    .await?;
    // A burst of 10 jobs for the 16 free GPUs: one pass admits some and queues the
    // others. Armed before the burst goes in, the watch freezes the leader (SIGSTOP)
    // the moment that pass is seen admitting one: its other decisions are in flight.
    let second: BTreeSet<(String, String)> = (0..6)
        .map(|i| (acme.clone(), format!("second-{i}")))
        .chain((0..4).map(|i| (beta.clone(), format!("second-{i}"))))
        .collect();
    ledger.lock().unwrap().freeze = Some((replicas.leader, second));
    for i in 0..6 {
        submit(&client, &acme, &format!("second-{i}"), &pool, (1, 4), "10s").await?;
    }
    for i in 0..4 {
        submit(&client, &beta, &format!("second-{i}"), &pool, (2, 4), "10s").await?;
    }

    let (stopped, stopped_at) =
        wait_for("the leader frozen as it admits the burst", WAIT, || async {
            Ok(ledger.lock().unwrap().frozen)
        })
        .await?;
    {
        let l = ledger.lock().unwrap();
        println!(
            "froze the leader {} (pid {}) with {} jobs admitted; phases {:?}",
            leader_identity,
            replicas.leader,
            l.first_held.len(),
            l.phases()
        );
    }

    wait_for("the standby to take the lease", WAIT, || async {
        Ok(
            (lease_holder(&client).await?.as_deref() == Some(standby_identity.as_str()))
                .then_some(()),
        )
    })
    .await?;
    let took_over = Instant::now();
    println!(
        "the standby leads {:.1?} after the freeze",
        took_over - stopped
    );
    // The frozen leader's admissions were all in before it froze; any job first
    // seen holding GPUs after the takeover was admitted by the standby.
    wait_for("the standby to admit a job", WAIT, || async {
        let l = ledger.lock().unwrap();
        Ok(l.first_held
            .iter()
            .find(|(_, at)| **at > took_over)
            .map(|(k, at)| (k.clone(), at.duration_since(stopped))))
    })
    .await
    .map(|(job, after)| {
        println!(
            "the standby admitted {}/{} {after:.1?} after the freeze",
            job.0, job.1
        )
    })?;
    if let Some(rest) = FROZEN_FOR.checked_sub(stopped.elapsed()) {
        tokio::time::sleep(rest).await;
    }

    // Resume the old leader: it finds its fence shut, writes nothing and exits.
    let resumed_at = jiff::Timestamp::now();
    signal(replicas.leader, "CONT")?;
    let resumed = Instant::now();
    println!("resumed the old leader after {:.1?}", stopped.elapsed());
    wait_for(
        "the resumed leader to exit",
        Duration::from_secs(30),
        || async { Ok(matches!(process_state(replicas.leader), None | Some('Z')).then_some(())) },
    )
    .await?;
    println!(
        "the old leader exited {:.1?} after it resumed",
        resumed.elapsed()
    );
    let leader_log = std::fs::read_to_string(state_dir().join("logs/operator.log"))?;
    assert!(
        leader_log.contains("not renewed within the renew deadline")
            || leader_log.contains("another replica took"),
        "the old leader's log does not say why it stopped:\n{}",
        leader_log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Kept: hack/operator.sh starts the next operator over this log.
    std::fs::write(state_dir().join("logs/operator-frozen.log"), &leader_log)?;
    let refused: Vec<&str> = leader_log
        .lines()
        .filter(|l| l.contains("does not hold the leader lease"))
        .collect();
    println!(
        "the old leader's fence refused {} writes after it resumed:\n{}",
        refused.len(),
        refused.join("\n")
    );

    // The standby, now the leader, runs every job to the end.
    let jobs_done = wait_for(
        "every job to succeed under the new leader",
        Duration::from_secs(240),
        || async {
            let l = ledger.lock().unwrap();
            Ok((l.phases().get("Succeeded") == Some(&11)).then(|| l.phases()))
        },
    )
    .await;
    watch.abort();
    let ledger = ledger.lock().unwrap();
    assert!(
        ledger.violations.is_empty(),
        "invariants broken: {:#?}",
        ledger.violations
    );
    assert!(
        ledger.preempted.is_empty(),
        "the setup preempts (it should not): {:?}",
        ledger.preempted
    );
    println!("most GPUs held per node: {:?}", ledger.peak_per_node);
    jobs_done?;

    // The audit log: the old leader's last write came before the standby's takeover,
    // nothing after it resumed, and each job's Job was created once.
    let audit = audit_log()?;
    let takeover = audit
        .iter()
        .find(|r| {
            r.user == STANDBY_USER
                && r.resource == "leases"
                && r.is_write()
                && r.code < 300
                && r.received >= stopped_at
        })
        .map(|r| r.received)
        .ok_or_else(|| anyhow::anyhow!("no lease write of {STANDBY_USER} in the audit log"))?;
    let last_write = audit
        .iter()
        .rfind(|r| r.user == LEADER_USER && r.is_write() && r.received < takeover);
    // The standby waited the whole lease after the leader's last renewal reached the
    // API server, however the freeze fell between renewals.
    let renewed = audit
        .iter()
        .rfind(|r| {
            r.user == LEADER_USER
                && r.resource == "leases"
                && r.is_write()
                && r.code < 300
                && r.received < takeover
        })
        .map(|r| r.received)
        .ok_or_else(|| anyhow::anyhow!("no lease renewal of {LEADER_USER} in the audit log"))?;
    let waited = takeover.duration_since(renewed);
    println!(
        "the standby took the lease {:.1} s after the leader's last renewal",
        waited.as_secs_f64()
    );
    assert!(
        waited >= jiff::SignedDuration::from_secs(LEASE_SECONDS),
        "the standby took the lease {waited:?} after the leader last renewed it: within the lease duration"
    );
    if let Some(last) = last_write {
        println!(
            "the old leader's last write: {}; the standby took the lease {:.1} s later",
            last.describe(),
            takeover.duration_since(last.received).as_secs_f64()
        );
    }
    let late: Vec<String> = audit
        .iter()
        .filter(|r| r.user == LEADER_USER && r.is_write())
        .filter(|r| r.received >= takeover || r.received >= resumed_at)
        .map(|r| r.describe())
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote after the standby took over: {late:#?}"
    );
    // The operator creates by server-side apply: a PATCH answered 201 Created.
    let mut created: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in &audit {
        if r.resource == "jobs"
            && r.subresource.is_empty()
            && (r.verb == "create" || r.verb == "patch")
            && r.code == 201
        {
            *created.entry((&r.namespace, &r.name)).or_default() += 1;
        }
    }
    for (ns, name) in ledger.jobs.keys() {
        let n = created
            .get(&(ns.as_str(), name.as_str()))
            .copied()
            .unwrap_or(0);
        assert_eq!(n, 1, "Jobs created for {ns}/{name}");
    }
    Ok(())
}
