//! Chaos at scale: two operator replicas run a stream of TrainingJobs on a pool of
//! the local factory while the leader is SIGKILLed again and again (10–30 s after
//! each takeover), frozen once past its lease, and kube-apiserver and etcd are
//! restarted mid-run; finished jobs are deleted as they go so the usage ledger is
//! exercised. An independent checker ([`checker`]) follows the API all along;
//! afterwards everything is deleted and the run is judged: no over-admission, no
//! job lost or run twice, no write of a deposed leader, no finalizer left behind,
//! the ledger equal to the hours of the deleted jobs (± 1 %), and each failover
//! timed. `tests/src/bin/chaos.rs` (`make chaos`) runs it at scale and writes
//! `bench/chaos.md`; `tests/tests/chaos.rs` runs a short one in the test suite.
pub mod audit;
pub mod checker;
pub mod replicas;
pub mod report;

use crate::{install_crds, repo_root, state_dir};
use anyhow::{Context as _, bail};
use checker::{Shared, State, Track};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The users the two replicas run as (each bound to the chart's ClusterRole and
/// allowed by its usage and queue guards).
pub const USERS: [&str; 2] = ["aifactory-operator", "aifactory-operator-b"];
/// How long a finalizer may keep a deleted object.
pub const STRANDED_AFTER: Duration = Duration::from_secs(60);
/// The operator's lease duration (`Timing::default` in operator/src/leader.rs): no
/// successor may lead sooner after the last renewal.
pub const LEASE: Duration = Duration::from_secs(13);
const LEASE_NS: &str = "default";
const LEASE_NAME: &str = "aifactory-operator";

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Prefix of every name the run creates (nodes, pool, tenants).
    pub tag: String,
    pub nodes: usize,
    pub gpus_per_node: i64,
    pub jobs: usize,
    pub tenants: usize,
    /// Jobs are submitted evenly over this window.
    pub window: Duration,
    /// Each job's pods run this long (seconds, uniform).
    pub job_seconds: (u64, u64),
    /// A leader is killed this long after it took the lease (seconds, uniform).
    pub kill_after: (u64, u64),
    /// Kills in all (`None`: until the chaos window is over).
    pub kills: Option<usize>,
    /// Chaos lasts at least this long (when `kills` is `None`).
    pub chaos_window: Duration,
    pub freezes: usize,
    pub freeze_for: Duration,
    pub apiserver_restarts: usize,
    pub etcd_restarts: usize,
    /// etcd stays down this long before it is started again.
    pub etcd_down: Duration,
    /// Share of jobs deleted as soon as they succeed (the rest at the end).
    pub delete_share: f64,
    pub seed: u64,
    pub operator: PathBuf,
    /// Longest failover accepted (kill or freeze → the successor's lease write).
    pub max_failover: Duration,
    /// How long finishing the jobs may take after the submissions.
    pub drain_timeout: Duration,
    /// A killed replica comes back under the same identity, as a container that
    /// kubelet restarts in its pod keeps its pod name (the chart's identity); by
    /// default under a new one, as a new pod would.
    pub restart_in_place: bool,
}

impl Config {
    /// The test suite's run: a few minutes.
    pub fn short() -> Self {
        Self {
            tag: format!("chaos-{}", std::process::id()),
            nodes: 20,
            gpus_per_node: 8,
            jobs: 60,
            tenants: 4,
            window: Duration::from_secs(90),
            job_seconds: (15, 45),
            kill_after: (10, 15),
            kills: Some(2),
            chaos_window: Duration::ZERO,
            freezes: 1,
            freeze_for: Duration::from_secs(20),
            apiserver_restarts: 1,
            etcd_restarts: 0,
            etcd_down: Duration::from_secs(5),
            delete_share: 0.5,
            seed: 1,
            operator: repo_root().join("target/debug/aifactory"),
            // The goal is 15 s (lease 13 s + a 2 s retry); the suite's run has a
            // debug build on a loaded machine, so some margin.
            max_failover: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(300),
            restart_in_place: false,
        }
    }

    /// `make chaos`: at scale.
    pub fn full() -> Self {
        Self {
            tag: "chaos".into(),
            nodes: 200,
            jobs: 1000,
            tenants: 8,
            window: Duration::from_secs(1200),
            job_seconds: (60, 240),
            kill_after: (10, 30),
            kills: None,
            chaos_window: Duration::from_secs(1200),
            freezes: 1,
            apiserver_restarts: 1,
            etcd_restarts: 1,
            operator: repo_root().join("target/release/aifactory"),
            max_failover: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(1200),
            ..Self::short()
        }
    }

    fn pool(&self) -> String {
        format!("{}-pool", self.tag)
    }

    fn node_prefix(&self) -> String {
        format!("{}-node", self.tag)
    }

    fn tenant(&self, i: usize) -> String {
        format!("{}-t{i}", self.tag)
    }

    /// Each tenant's guarantee: an equal share of the pool, in whole nodes' worth.
    fn guarantee(&self) -> i64 {
        let total = self.nodes as i64 * self.gpus_per_node;
        (total / self.tenants as i64 / self.gpus_per_node).max(1) * self.gpus_per_node
    }
}

/// A small deterministic generator (SplitMix64): the same seed, the same run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// One thing done to the factory.
#[derive(Clone, Debug)]
pub struct ChaosEvent {
    pub kind: Chaos,
    pub at: jiff::Timestamp,
    pub until: jiff::Timestamp,
    /// The leader it hit (kills and freezes).
    pub target: Option<String>,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chaos {
    Kill,
    Freeze,
    ApiServer,
    Etcd,
}

/// A planned job.
struct Planned {
    key: String,
    at: Duration,
    body: Value,
}

fn plan_jobs(cfg: &Config, rng: &mut Rng) -> (Vec<Planned>, BTreeMap<String, Track>) {
    let ceiling = 2 * cfg.guarantee();
    let mut planned = vec![];
    let mut tracks = BTreeMap::new();
    for i in 0..cfg.jobs {
        let tenant = cfg.tenant(i % cfg.tenants);
        let max_nodes = (cfg.nodes / 4).max(1) as i64;
        let mut nodes = rng.pick(&[1i64, 1, 1, 2, 2, 4, 8]).min(max_nodes);
        let gpus = rng.pick(&[1i64, 2, 4, 8]).min(cfg.gpus_per_node);
        while nodes > 1 && nodes * gpus > ceiling {
            nodes /= 2;
        }
        let seconds = rng.range(cfg.job_seconds);
        let name = format!("job-{i:04}");
        let key = format!("{tenant}/{name}");
        let at = cfg.window.mul_f64(i as f64 / cfg.jobs as f64);
        let body = json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": tenant,
                         "annotations": {"aifactory.dev/simulate-duration": format!("{seconds}s")}},
            "spec": {"pool": cfg.pool(), "nodes": nodes, "gpusPerNode": gpus,
                     "image": "registry.example/trainer:1", "command": ["torchrun"], "args": ["train.py"]}
        });
        tracks.insert(
            key.clone(),
            Track {
                tenant,
                nodes,
                gpus_per_node: gpus,
                seconds,
                delete_early: rng.unit() < cfg.delete_share,
                ..Default::default()
            },
        );
        planned.push(Planned { key, at, body });
    }
    (planned, tracks)
}

fn script(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(repo_root().join("hack").join(name))
        .args(args)
        .output()
        .with_context(|| format!("running hack/{name}"))?;
    if !out.status.success() {
        bail!(
            "hack/{name} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn script_async(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(repo_root().join("hack").join(name))
        .args(args)
        .output()
        .await
        .with_context(|| format!("running hack/{name}"))?;
    if !out.status.success() {
        bail!(
            "hack/{name} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether the operator `hack/operator.sh` started is running.
fn scripted_operator_running() -> bool {
    let Ok(pid) = std::fs::read_to_string(state_dir().join("operator.pid")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

fn dynamic(body: &Value) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(body.clone())?)
}

/// Retries `f` through API outages (a restart of kube-apiserver or etcd) for up to
/// two minutes.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                    eprintln!("{what}: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what.to_string())),
        }
    }
}

/// Puts the factory back however the run ends: replicas stopped, the run's objects
/// deleted (without waiting), the guards as `hack/operator.sh` installs them, its
/// operator running again if it ran before.
struct Restore {
    replicas: Option<Arc<replicas::Replicas>>,
    operator_was_running: bool,
    cfg: Config,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(r) = self.replicas.take() {
            r.stop();
        }
        let kubectl = |args: &[&str]| {
            let _ = crate::kubectl(args);
        };
        for i in 0..self.cfg.tenants {
            kubectl(&[
                "delete",
                "tenant",
                &self.cfg.tenant(i),
                "--wait=false",
                "--ignore-not-found",
            ]);
        }
        kubectl(&[
            "delete",
            "gpupool",
            &self.cfg.pool(),
            "--wait=false",
            "--ignore-not-found",
        ]);
        let _ = script(
            "factory-nodes.sh",
            &["--prefix", &self.cfg.node_prefix(), "--delete"],
        );
        kubectl(&[
            "delete",
            "clusterrolebinding",
            USERS[1],
            "--ignore-not-found",
        ]);
        if self.operator_was_running {
            if let Err(e) = script("operator.sh", &["start"]) {
                eprintln!("could not start the operator again: {e}");
            }
        } else if let Err(e) = script("operator.sh", &["guards", USERS[0]]) {
            eprintln!("could not put the guards back: {e}");
        }
    }
}

/// Runs the whole thing and judges it.
pub async fn run(cfg: &Config) -> anyhow::Result<report::Report> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    let load_before = report::loadavg();
    anyhow::ensure!(
        cfg.operator.exists(),
        "no operator binary at {} (cargo build -p aifactory --bin aifactory [--release])",
        cfg.operator.display()
    );
    let client = crate::admin().await?;
    install_crds(&client).await?;
    let mut rng = Rng::new(cfg.seed);
    let (planned, tracks) = plan_jobs(cfg, &mut rng);

    // The pool's nodes, as hack/factory-nodes.sh makes them.
    let nodes_up = Instant::now();
    let racks = (cfg.nodes / 10).max(1).to_string();
    let blocks = (cfg.nodes / 50).max(1).to_string();
    script(
        "factory-nodes.sh",
        &[
            "--prefix",
            &cfg.node_prefix(),
            "--count",
            &cfg.nodes.to_string(),
            "--gpus-per-node",
            &cfg.gpus_per_node.to_string(),
            "--racks",
            &racks,
            "--blocks",
            &blocks,
        ],
    )?;
    let nodes_up = nodes_up.elapsed();

    let mut restore = Restore {
        replicas: None,
        operator_was_running: scripted_operator_running(),
        cfg: cfg.clone(),
        tasks: vec![],
    };
    // The replicas replace the operator hack/operator.sh runs.
    script("operator.sh", &["stop"])?;
    script("operator.sh", &["guards", USERS[0], USERS[1]])?;
    let mut users = vec![];
    for u in USERS {
        let out = script("factory-user.sh", &[u])?;
        users.push((
            u.to_string(),
            PathBuf::from(out.lines().last().unwrap_or_default().trim()),
        ));
    }

    // The checker, before anything runs.
    let state: Shared = Arc::new(Mutex::new(State::default()));
    {
        let mut s = state.lock().unwrap();
        s.tracks = tracks;
        for i in 0..cfg.tenants {
            s.ceilings.insert(cfg.tenant(i), 2 * cfg.guarantee());
        }
    }
    let audit = audit::AuditTail::start(
        state_dir().join("audit.log"),
        USERS.iter().map(|u| u.to_string()).collect(),
    );
    restore.tasks.extend(checker::watch(
        &client,
        state.clone(),
        &format!("aifactory.dev/node-set={}", cfg.node_prefix()),
    ));

    let replicas = replicas::Replicas::start(
        cfg.operator.clone(),
        &cfg.tag,
        cfg.restart_in_place,
        &users,
        &state_dir().join("logs"),
    )?;
    restore.replicas = Some(replicas.clone());
    restore.tasks.push({
        let r = replicas.clone();
        tokio::spawn(async move {
            loop {
                r.supervise();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    wait_leader(&state, &replicas, Duration::from_secs(90), None).await?;

    // The pool and its tenants: each guaranteed an equal share, borrowing as much
    // again from idle guarantees, lending all of its own (reclaimed by preemption).
    let setup = Instant::now();
    let g = cfg.guarantee();
    let pools = Api::<DynamicObject>::all_with(client.clone(), &pool_resource());
    pools
        .create(
            &PostParams::default(),
            &dynamic(&json!({
                "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool",
                "metadata": {"name": cfg.pool()},
                "spec": {"nodeSelector": {"matchLabels": {"aifactory.dev/node-set": cfg.node_prefix()}},
                         "gpu": {"model": "H100-80GB", "perNode": cfg.gpus_per_node, "powerWatts": 700},
                         "dedicated": true, "location": {"region": "eu-west"}}
            }))?,
        )
        .await?;
    let want = cfg.nodes as i64 * cfg.gpus_per_node;
    crate::wait_for(
        &format!("pool {} with {want} GPUs", cfg.pool()),
        Duration::from_secs(180),
        || async {
            let p = pools.get(&cfg.pool()).await?;
            let v = serde_json::to_value(&p)?;
            Ok((v["status"]["gpus"]["allocatable"].as_i64() == Some(want)).then_some(()))
        },
    )
    .await?;
    let tenants = Api::<DynamicObject>::all_with(client.clone(), &checker::tenants());
    for i in 0..cfg.tenants {
        let name = cfg.tenant(i);
        tenants
            .create(
                &PostParams::default(),
                &dynamic(&json!({
                    "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant",
                    "metadata": {"name": name},
                    "spec": {"owners": [{"kind": "User", "name": format!("{name}-owner")}],
                             "quota": [{"pool": cfg.pool(), "gpus": g, "borrowingLimit": g, "lendingLimit": g}]}
                }))?,
            )
            .await?;
    }
    for i in 0..cfg.tenants {
        let name = cfg.tenant(i);
        crate::wait_for(
            &format!("tenant {name} Ready"),
            Duration::from_secs(180),
            || async {
                let v = serde_json::to_value(tenants.get(&name).await?)?;
                let ready = v["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                Ok(ready.then_some(()))
            },
        )
        .await?;
    }
    let setup = setup.elapsed();
    println!(
        "chaos: {} nodes up in {nodes_up:.0?}, pool and {} tenants in {setup:.0?}; submitting {} jobs over {:?}",
        cfg.nodes, cfg.tenants, cfg.jobs, cfg.window
    );

    // The run: submissions, deletions of finished jobs, chaos.
    let run_started = Instant::now();
    let run_started_at = jiff::Timestamp::now();
    let events: Arc<Mutex<Vec<ChaosEvent>>> = Arc::default();
    let submitter = tokio::spawn(submit(client.clone(), state.clone(), planned, run_started));
    let deleting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let deleter = tokio::spawn(delete_finished(
        client.clone(),
        state.clone(),
        deleting.clone(),
    ));
    let chaos = tokio::spawn(chaos(
        cfg.clone(),
        state.clone(),
        replicas.clone(),
        events.clone(),
        Rng::new(cfg.seed ^ 0xC4A05),
    ));
    submitter.await??;
    let submitted_in = run_started.elapsed();
    println!(
        "chaos: all {} jobs submitted in {submitted_in:.0?}",
        cfg.jobs
    );
    let chaos_result = chaos.await?;
    println!(
        "chaos: chaos over after {:.0?}: {} events",
        run_started.elapsed(),
        events.lock().unwrap().len()
    );
    // Every job to an end (nothing more is done to the factory).
    let drained = crate::wait_for("every job to finish", cfg.drain_timeout, || async {
        let s = state.lock().unwrap();
        let open: Vec<&String> = s
            .tracks
            .iter()
            .filter(|(_, t)| t.succeeded.is_none() && !t.failed && t.gone.is_none())
            .map(|(k, _)| k)
            .collect();
        Ok(open.is_empty().then_some(()))
    })
    .await;
    let run_time = run_started.elapsed();
    deleting.store(false, std::sync::atomic::Ordering::Relaxed);
    deleter.await??;
    println!("chaos: jobs done after {run_time:.0?}; deleting the rest");
    let unfinished: Vec<String> = {
        let s = state.lock().unwrap();
        s.tracks
            .iter()
            .filter(|(_, t)| t.succeeded.is_none() && !t.failed)
            .map(|(k, t)| format!("{k} never finished (last phase {:?})", t.last_phase))
            .collect()
    };
    if drained.is_err() {
        eprintln!("chaos: {} jobs never finished", unfinished.len());
    }

    // Everything deleted: the jobs first (their hours recorded), then the ledger is
    // read, then the tenants and the pool.
    let keys: Vec<String> = {
        let s = state.lock().unwrap();
        s.tracks
            .iter()
            .filter(|(_, t)| t.delete_requested.is_none())
            .map(|(k, _)| k.clone())
            .collect()
    };
    for key in keys {
        delete_job(&client, &state, &key).await?;
    }
    let gone = crate::wait_for("every deleted job gone", STRANDED_AFTER * 3, || async {
        let s = state.lock().unwrap();
        Ok(s.tracks.values().all(|t| t.gone.is_some()).then_some(()))
    })
    .await;
    if gone.is_err() {
        eprintln!("chaos: some deleted jobs are still there");
    }
    let period = jiff::Timestamp::now().strftime("%Y-%m").to_string();
    let mut ledger = 0.0;
    for i in 0..cfg.tenants {
        let name = cfg.tenant(i);
        let v = serde_json::to_value(retrying("reading a tenant", || tenants.get(&name)).await?)?;
        let l = &v["status"]["ledger"];
        if l["period"].as_str() == Some(period.as_str()) {
            for u in l["usage"].as_array().into_iter().flatten() {
                if u["pool"].as_str() == Some(cfg.pool().as_str()) {
                    ledger += u["gpuHours"].as_f64().unwrap_or_default();
                }
            }
        }
    }
    // Live jobs' usage this period (none once everything is deleted).
    let live_usage: f64 = {
        let s = state.lock().unwrap();
        s.tj_views()
            .filter_map(|(_, v)| v.period_usage.as_ref())
            .filter(|(p, _)| *p == period)
            .map(|(_, h)| h)
            .sum::<f64>()
            + 0.0
    };
    let mut stranded = vec![];
    let deletions = Instant::now();
    for i in 0..cfg.tenants {
        let name = cfg.tenant(i);
        retrying("deleting a tenant", || async {
            tenants
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ())
        })
        .await?;
    }
    retrying("deleting the pool", || async {
        pools
            .delete(&cfg.pool(), &DeleteParams::default())
            .await
            .map(|_| ())
    })
    .await?;
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let mut cleanup_times = BTreeMap::new();
    loop {
        let mut left = vec![];
        for i in 0..cfg.tenants {
            let name = cfg.tenant(i);
            if tenants.get_opt(&name).await?.is_some() {
                left.push(format!("tenant {name}"));
            }
            if namespaces.get_opt(&name).await?.is_some() {
                left.push(format!("namespace {name}"));
            }
        }
        if pools.get_opt(&cfg.pool()).await?.is_some() {
            left.push(format!("gpupool {}", cfg.pool()));
        }
        for what in ["tenant", "namespace", "gpupool"] {
            if !left.iter().any(|l| l.starts_with(what)) {
                cleanup_times
                    .entry(what)
                    .or_insert_with(|| deletions.elapsed());
            }
        }
        if left.is_empty() {
            break;
        }
        if deletions.elapsed() > STRANDED_AFTER * 3 {
            stranded.extend(left.into_iter().map(|l| {
                format!(
                    "{l} still there {:.0?} after its deletion",
                    deletions.elapsed()
                )
            }));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (what, t) in &cleanup_times {
        if *t > STRANDED_AFTER {
            stranded.push(format!("{what}s took {t:.0?} to go after their deletion"));
        }
    }

    // Judgement.
    for t in &restore.tasks {
        t.abort();
    }
    replicas.stop();
    let writes = audit.finish();
    let events = events.lock().unwrap().clone();
    let exits = replicas.exits();
    let mut s = state.lock().unwrap();
    for u in unfinished {
        checker_note(&mut s.violations.lost, u);
    }
    for (key, t) in &s.tracks.clone() {
        match (t.delete_requested, t.gone) {
            (Some(a), Some(b))
                if b.duration_since(a) > jiff::SignedDuration::try_from(STRANDED_AFTER)? =>
            {
                checker_note(
                    &mut s.violations.stranded,
                    format!(
                        "{key} kept its finalizer {:.0} s after its deletion",
                        b.duration_since(a).as_secs_f64()
                    ),
                );
            }
            (Some(_), None) => checker_note(
                &mut s.violations.stranded,
                format!("{key} never went after its deletion"),
            ),
            _ => {}
        }
        if t.failed {
            checker_note(&mut s.violations.other, format!("{key} failed"));
        }
    }
    for st in stranded {
        checker_note(&mut s.violations.stranded, st);
    }
    if let Err(e) = chaos_result {
        checker_note(&mut s.violations.other, format!("chaos: {e:#}"));
    }
    let st: &mut State = &mut s;
    let failovers = report::failovers(&events, &writes, &st.lease, &replicas, &mut st.violations);
    report::deposed_writes(&writes, LEASE_NS, LEASE_NAME, &mut s.violations);
    for f in &failovers {
        if let Some(d) = f.failover
            && d > cfg.max_failover.as_secs_f64()
        {
            checker_note(
                &mut s.violations.other,
                format!(
                    "failover after the {:?} at {} took {d:.1} s, over {:?}",
                    f.kind, f.at, cfg.max_failover
                ),
            );
        }
    }
    let recorded: f64 = s
        .tracks
        .values()
        .filter_map(|t| t.recorded.map(|(p, _)| p))
        .sum();
    let pod_hours: f64 = s.tracks.values().map(|t| t.pod_gpu_seconds).sum::<f64>() / 3600.0;
    let expected = recorded + live_usage;
    let got = ledger + live_usage;
    let ledger_error = if expected > 0.0 {
        (got - expected) / expected
    } else {
        0.0
    };
    if ledger_error.abs() > 0.01 || expected <= 0.0 {
        checker_note(
            &mut s.violations.other,
            format!(
                "ledger {ledger:.4} + live {live_usage:.4} GPU-hours vs the jobs' {recorded:.4} + {live_usage:.4}: {:+.2} %",
                ledger_error * 100.0
            ),
        );
    }
    let report = report::Report {
        cfg: cfg.clone(),
        started_at,
        run_started_at,
        wall: started.elapsed(),
        run_time,
        submitted_in,
        nodes_up,
        setup,
        events,
        exits,
        failovers,
        starts: replicas.starts(),
        violations: s.violations.clone(),
        evidence: s.evidence.clone(),
        tracks: s.tracks.clone(),
        ledger,
        recorded,
        live_usage,
        ledger_error,
        pod_hours,
        peak_gpus_jobs: s.peak_gpus_jobs,
        peak_gpus_pods: s.peak_gpus_pods,
        longest_deletion: s.longest_deletion,
        samples: s.samples,
        relists: s.relists.clone(),
        cleanup_times: cleanup_times
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        lease_writes: writes
            .iter()
            .filter(|w| w.is_lease(LEASE_NS, LEASE_NAME) && w.code < 300)
            .count(),
        operator_writes: writes
            .iter()
            .filter(|w| !w.is_lease(LEASE_NS, LEASE_NAME))
            .count(),
        load_before,
        load_after: report::loadavg(),
    };
    drop(s);
    drop(restore);
    Ok(report)
}

fn checker_note(list: &mut Vec<String>, v: String) {
    if list.len() < 200 && !list.contains(&v) {
        list.push(v);
    }
}

fn pool_resource() -> kube::core::ApiResource {
    kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("aifactory.dev", "v1alpha1", "GpuPool"),
        "gpupools",
    )
}

/// Waits until a live replica holds the lease (with `after`: has written it since
/// then); its identity and since when.
async fn wait_leader(
    state: &Shared,
    replicas: &replicas::Replicas,
    timeout: Duration,
    after: Option<jiff::Timestamp>,
) -> anyhow::Result<(String, jiff::Timestamp)> {
    crate::wait_for("a leader", timeout, || async {
        let holder = state.lock().unwrap().holder(after);
        Ok(holder.filter(|(h, _)| replicas.is_live(h)))
    })
    .await
}

async fn submit(
    client: Client,
    state: Shared,
    planned: Vec<Planned>,
    started: Instant,
) -> anyhow::Result<()> {
    let api = Api::<DynamicObject>::all_with(client.clone(), &checker::trainingjobs());
    for p in planned {
        if let Some(rest) = p.at.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        let (ns, name) = p.key.split_once('/').unwrap();
        let api = Api::<DynamicObject>::namespaced_with(
            api.clone().into_client(),
            ns,
            &checker::trainingjobs(),
        );
        let obj = dynamic(&p.body)?;
        let created = retrying(&format!("creating {}", p.key), || async {
            match api.create(&PostParams::default(), &obj).await {
                // An earlier attempt went through after all.
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await,
                other => other,
            }
        })
        .await?;
        let mut s = state.lock().unwrap();
        if let Some(t) = s.tracks.get_mut(&p.key) {
            t.submitted = Some(jiff::Timestamp::now());
        }
        drop(created);
    }
    Ok(())
}

/// Reads the job's hours, then deletes it.
async fn delete_job(client: &Client, state: &Shared, key: &str) -> anyhow::Result<()> {
    let (ns, name) = key.split_once('/').unwrap();
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &checker::trainingjobs());
    let Some(obj) = retrying(&format!("reading {key}"), || api.get_opt(name)).await? else {
        // Gone without being deleted: the checker saw it disappear.
        return Ok(());
    };
    let v = checker::TjView::from_json(&serde_json::to_value(&obj)?);
    {
        let mut s = state.lock().unwrap();
        if let Some(t) = s.tracks.get_mut(key) {
            let this_period = v.period_usage.as_ref().map_or(v.gpu_hours, |(_, h)| *h);
            t.recorded = Some((this_period, v.gpu_hours));
            t.delete_requested = Some(jiff::Timestamp::now());
        }
    }
    retrying(&format!("deleting {key}"), || async {
        match api.delete(name, &DeleteParams::default()).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    })
    .await
}

/// Deletes the jobs marked for it once they have succeeded (a few seconds after).
async fn delete_finished(
    client: Client,
    state: Shared,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    while running.load(std::sync::atomic::Ordering::Relaxed) {
        let now = jiff::Timestamp::now();
        let due: Vec<String> = {
            let s = state.lock().unwrap();
            s.tracks
                .iter()
                .filter(|(_, t)| {
                    t.delete_early
                        && t.delete_requested.is_none()
                        && t.succeeded
                            .is_some_and(|at| now.duration_since(at).as_secs_f64() > 3.0)
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in due {
            delete_job(&client, &state, &key).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// The chaos: kills of the leader, and once in a while a freeze or a restart of
/// kube-apiserver or etcd instead, each 10–30 s after the leader took over.
async fn chaos(
    cfg: Config,
    state: Shared,
    replicas: Arc<replicas::Replicas>,
    events: Arc<Mutex<Vec<ChaosEvent>>>,
    mut rng: Rng,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // The special events, in order, and when each is due (with no kill budget: spread
    // over the chaos window; with one: between the kills).
    let mut specials = vec![];
    for i in 0..cfg
        .freezes
        .max(cfg.apiserver_restarts)
        .max(cfg.etcd_restarts)
    {
        if i < cfg.freezes {
            specials.push(Chaos::Freeze);
        }
        if i < cfg.apiserver_restarts {
            specials.push(Chaos::ApiServer);
        }
        if i < cfg.etcd_restarts {
            specials.push(Chaos::Etcd);
        }
    }
    // With a kill budget: kills, each followed by its share of the specials.
    let mut plan: std::collections::VecDeque<Chaos> = match cfg.kills {
        Some(k) => {
            let per_gap = specials.len().div_ceil(k.max(1));
            let mut rest = specials.clone().into_iter();
            let mut p = vec![];
            for _ in 0..k {
                p.push(Chaos::Kill);
                p.extend(rest.by_ref().take(per_gap));
            }
            p.extend(rest);
            p.into()
        }
        None => Default::default(),
    };
    let due: Vec<Duration> = (1..=specials.len())
        .map(|i| {
            cfg.chaos_window
                .mul_f64(i as f64 / (specials.len() + 1) as f64)
        })
        .collect();
    let mut next_special = 0;
    let mut last_event = None;
    loop {
        let (leader, since) =
            wait_leader(&state, &replicas, Duration::from_secs(120), last_event).await?;
        let action = if cfg.kills.is_some() {
            match plan.pop_front() {
                Some(a) => a,
                None => return Ok(()),
            }
        } else if next_special < specials.len() && started.elapsed() >= due[next_special] {
            next_special += 1;
            specials[next_special - 1]
        } else if started.elapsed() >= cfg.chaos_window && next_special >= specials.len() {
            return Ok(());
        } else {
            Chaos::Kill
        };
        let delay = Duration::from_secs(rng.range(cfg.kill_after));
        let waited = jiff::Timestamp::now().duration_since(since);
        if let Some(rest) = delay.checked_sub(Duration::try_from(waited).unwrap_or_default()) {
            tokio::time::sleep(rest).await;
        }
        // Still the same leader? (It may have lost the lease on its own.)
        let now_leader = state.lock().unwrap().holder(last_event).map(|(h, _)| h);
        if now_leader.as_deref() != Some(leader.as_str()) || !replicas.is_live(&leader) {
            if cfg.kills.is_some() {
                plan.push_front(action);
            } else if action != Chaos::Kill {
                next_special -= 1;
            }
            continue;
        }
        let at = jiff::Timestamp::now();
        last_event = Some(at);
        let (target, detail) = match action {
            Chaos::Kill => {
                replicas.kill(&leader)?;
                (Some(leader.clone()), "SIGKILL".to_string())
            }
            Chaos::Freeze => {
                replicas.freeze(&leader, true)?;
                tokio::time::sleep(cfg.freeze_for).await;
                replicas.freeze(&leader, false)?;
                let resumed = Instant::now();
                // Its fence is shut: it must stop on its own.
                let exited = crate::wait_for(
                    "the resumed leader to exit",
                    Duration::from_secs(30),
                    || async { Ok((!replicas.is_live(&leader)).then_some(())) },
                )
                .await;
                let detail = match exited {
                    Ok(()) => format!(
                        "SIGSTOP for {:?}, SIGCONT; it exited {:.1?} after",
                        cfg.freeze_for,
                        resumed.elapsed()
                    ),
                    Err(_) => {
                        checker_note(
                            &mut state.lock().unwrap().violations.other,
                            format!(
                                "leader {leader} still ran 30 s after it was resumed from a freeze past its lease"
                            ),
                        );
                        let _ = replicas.kill(&leader);
                        "SIGSTOP, SIGCONT; it did not exit (killed)".to_string()
                    }
                };
                (Some(leader.clone()), detail)
            }
            Chaos::ApiServer => (None, restart(&state, &["kube-apiserver"]).await?),
            Chaos::Etcd => {
                let down = format!("{}", cfg.etcd_down.as_secs());
                (None, restart(&state, &["etcd", "--down", &down]).await?)
            }
        };
        println!(
            "chaos: {action:?} at +{:.0?} {} {detail}",
            started.elapsed(),
            target.as_deref().unwrap_or("")
        );
        events.lock().unwrap().push(ChaosEvent {
            kind: action,
            at,
            until: jiff::Timestamp::now(),
            target,
            detail,
        });
    }
}

/// Restarts a factory component; one that does not come back is started once
/// more (noted: the run cannot go on without it).
async fn restart(state: &Shared, args: &[&str]) -> anyhow::Result<String> {
    match script_async("factory-restart.sh", args).await {
        Ok(out) => Ok(last_line(&out)),
        Err(e) => {
            checker_note(
                &mut state.lock().unwrap().violations.other,
                format!("{} did not come back from its restart: {e:#}", args[0]),
            );
            let out = script_async("factory-restart.sh", &args[..1]).await?;
            Ok(format!("{} (started a second time)", last_line(&out)))
        }
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .last()
        .unwrap_or_default()
        .split("] ")
        .last()
        .unwrap_or_default()
        .to_string()
}
