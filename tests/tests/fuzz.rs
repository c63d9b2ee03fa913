//! Fuzzing through the real API server (issue 13): random schema-valid objects of
//! all five kinds — the builders' property-test strategies, drawn from one printed
//! seed and wired to each other often enough to run and often enough not to — are
//! sent to the local factory's API server, the operator left to settle, and then:
//!
//! 1. the operator never panicked and never restarted (its log, its
//!    `reason="panic"` error count, its pid, the Lease's holder);
//! 2. every accepted object has a status of its latest generation and either runs
//!    (or is on its way) or carries a False condition with a reason and a message;
//! 3. no GPU is held by an object that cannot run: admitted work starts within the
//!    operator's start timeout or gives its GPUs back, sits on nodes that exist and
//!    are its pool's, within node capacity, tenant quota, pool power cap, residency
//!    and budget, mounting datasets that exist and are shared with it; no GPU pod
//!    runs for work that holds nothing (watched all along the run, a violation
//!    counting when two snapshots in a row show it);
//! 4. deleting everything leaves nothing stuck on a finalizer: the objects, the
//!    namespaces of tenants that delete theirs, the pools' node labels and taints
//!    all go (and the namespaces of `Retain` tenants stay).
//!
//! `AIFACTORY_FUZZ_OBJECTS` (default 300; `make fuzz` sends 10,000),
//! `AIFACTORY_FUZZ_SEED` (default 13; the same seed and size send the same objects),
//! `AIFACTORY_FUZZ_NODES` (the runner's own 8-GPU nodes, default 6),
//! `AIFACTORY_FUZZ_SETTLE` (seconds the operator gets to settle, default
//! 300 or 0.1 s per object if more), `AIFACTORY_FUZZ_KEEP` (set: stop after
//! settling and leave everything in place for inspection; the next run of the
//! seed removes it). API refusals are counted by reason, not
//! failures: the schema's and CEL's job.
#[path = "fuzz/checks.rs"]
mod checks;
#[path = "fuzz/run.rs"]
mod run;
#[path = "fuzz/world.rs"]
mod world;

use aifactory_api::{TENANT_LABEL, Tenant};
use aifactory_strategies::schema;
use aifactory_tests::{admin, install_crds, require_operator};
use checks::{START_TIMEOUT_SECONDS, Violation};
use kube::ResourceExt;
use run::Outcome;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use world::{Kind, Planned};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds past the start timeout an admitted run may still hold its GPUs: the
/// operator looks at it again within a pass or two, on a loaded machine.
const GRACE: i64 = 30;

#[tokio::test]
async fn random_objects_of_all_five_kinds_run_or_say_why_and_hold_no_gpu_they_cannot_use()
-> anyhow::Result<()> {
    let objects: usize = env("AIFACTORY_FUZZ_OBJECTS", 300);
    let seed: u64 = env("AIFACTORY_FUZZ_SEED", 13);
    let node_count: usize = env("AIFACTORY_FUZZ_NODES", 6);
    let settle = Duration::from_secs(env("AIFACTORY_FUZZ_SETTLE", (objects as u64 / 10).max(300)));
    println!(
        "fuzz: seed {seed}, {objects} objects, {node_count} nodes (reproduce: AIFACTORY_FUZZ_SEED={seed} AIFACTORY_FUZZ_OBJECTS={objects})"
    );
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;

    let started = Instant::now();
    let w = world::world(seed, objects, node_count);
    let generated: BTreeMap<Kind, usize> = Kind::ALL.iter().map(|k| (*k, w.count(*k))).collect();
    println!("fuzz: generated {generated:?} in {:.1?}", started.elapsed());
    // The strategies' objects, rewired, are still ones the schema accepts (CEL is
    // the API server's to check).
    let out_of_schema: Vec<String> = w
        .all()
        .flat_map(|p| {
            schema::violations(p.kind.name(), &p.object)
                .into_iter()
                .map(move |e| format!("{} {}: {e}", p.kind.name(), p.name))
        })
        .collect();
    anyhow::ensure!(
        out_of_schema.is_empty(),
        "the generator made objects the schema refuses (a runner bug):\n  {}",
        out_of_schema.join("\n  ")
    );

    // An earlier run of this seed that did not finish (or was kept): its leftovers
    // go first.
    if !run::leftovers(&client, &w.group).await?.is_empty()
        || !run::wait_unprovisioned(&client, &w, Duration::ZERO)
            .await?
            .is_empty()
    {
        println!("fuzz: removing what an earlier run of seed {seed} left");
        let old = run::snapshot(&client, &w.group).await?;
        let mut stale: Vec<Planned> = vec![];
        for o in &old.jobs {
            stale.push(stale_ref(Kind::TrainingJob, o));
        }
        for o in &old.workspaces {
            stale.push(stale_ref(Kind::Workspace, o));
        }
        for o in &old.datasets {
            stale.push(stale_ref(Kind::Dataset, o));
        }
        for o in &old.tenants {
            stale.push(stale_ref(Kind::Tenant, o));
        }
        for o in &old.pools {
            stale.push(stale_ref(Kind::GpuPool, o));
        }
        let namespaces: Vec<String> = old
            .tenants
            .iter()
            .flat_map(|t| owned_namespaces(&old, t))
            .collect();
        run::delete_all(&client, &stale).await;
        let left = wait_until_gone(&client, &w.group, Duration::from_secs(300), None).await?;
        anyhow::ensure!(
            left.is_empty(),
            "an earlier run's objects do not go: {left:?}"
        );
        run::unprovision(&client, &w, &namespaces).await;
        let left = run::wait_unprovisioned(&client, &w, Duration::from_secs(300)).await?;
        anyhow::ensure!(
            left.is_empty(),
            "an earlier run's nodes, storage or namespaces do not go: {left:?}"
        );
    }
    let mark = run::operator_mark(&client).await?;
    run::provision(&client, &w).await?;

    // Pools one at a time, the three main ones a second before the rest (the older
    // pool keeps a node two select); tenants; their namespaces; then the work.
    let mut outcome = Outcome::default();
    let t_create = Instant::now();
    let pools: Vec<Planned> = w
        .cluster
        .iter()
        .filter(|p| p.kind == Kind::GpuPool)
        .cloned()
        .collect();
    let tenants: Vec<Planned> = w
        .cluster
        .iter()
        .filter(|p| p.kind == Kind::Tenant)
        .cloned()
        .collect();
    let main = pools.len().min(3);
    for p in &pools[..main] {
        run::create(&client, std::slice::from_ref(p), &mut outcome).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    run::create(&client, &pools[main..], &mut outcome).await;
    run::create(&client, &tenants, &mut outcome).await;
    let accepted_tenants = outcome
        .accepted
        .get(&Kind::Tenant)
        .cloned()
        .unwrap_or_default();
    let (found, wanted) = run::wait_for_namespaces(
        &client,
        &accepted_tenants,
        Duration::from_secs(120 + objects as u64 / 20),
    )
    .await;
    println!(
        "fuzz: {found} of {wanted} tenant namespaces exist after {:.0?}",
        t_create.elapsed()
    );
    run::create(&client, &w.namespaced, &mut outcome).await;
    let creation = t_create.elapsed();
    println!(
        "fuzz: created in {creation:.0?}: {}",
        summary(&generated, &outcome)
    );

    // Settle, watching check 3 all along.
    let t_settle = Instant::now();
    let interval = Duration::from_secs(if objects > 1000 { 15 } else { 5 });
    let min_window = Duration::from_secs((START_TIMEOUT_SECONDS + GRACE + 15) as u64);
    let mut previous: BTreeMap<String, Violation> = BTreeMap::new();
    let mut confirmed: BTreeMap<String, (Violation, u64)> = BTreeMap::new();
    let mut admitted_seen = std::collections::BTreeSet::new();
    let mut ran_seen = std::collections::BTreeSet::new();
    let mut peak_gpus = 0;
    let mut last_print = Instant::now();
    let mut polls = 0;
    let last = loop {
        tokio::time::sleep(interval).await;
        let snap = match run::snapshot(&client, &w.group).await {
            Ok(s) => s,
            Err(e) => {
                println!("fuzz: snapshot failed ({e}); again");
                continue;
            }
        };
        polls += 1;
        let now: BTreeMap<String, Violation> = checks::violations(&snap, GRACE)
            .into_iter()
            .map(|v| (v.key.clone(), v))
            .collect();
        for (k, v) in &now {
            if previous.contains_key(k) {
                confirmed
                    .entry(k.clone())
                    .or_insert((v.clone(), t_settle.elapsed().as_secs()));
            }
        }
        previous = now;
        let held = checks::holdings(&snap);
        peak_gpus = peak_gpus.max(held.iter().map(|h| h.gpus()).sum::<i64>());
        for h in &held {
            admitted_seen.insert((h.kind, h.id.clone(), h.since));
        }
        for tj in &snap.jobs {
            if let Some(st) = &tj.status
                && matches!(
                    st.phase,
                    Some(
                        aifactory_api::TrainingJobPhase::Running
                            | aifactory_api::TrainingJobPhase::Succeeded
                    )
                )
            {
                ran_seen.insert(checks::id(tj));
            }
        }
        let states = checks::states(&snap);
        let unsettled = states.iter().filter(|s| s.problem.is_some()).count();
        let elapsed = t_settle.elapsed();
        if last_print.elapsed() >= Duration::from_secs(30) {
            println!(
                "fuzz: +{:.0?}: {unsettled} of {} objects not settled, {} holding {} GPUs, {} violations",
                elapsed,
                states.len(),
                held.len(),
                held.iter().map(|h| h.gpus()).sum::<i64>(),
                confirmed.len()
            );
            last_print = Instant::now();
        }
        if (unsettled == 0 && elapsed >= min_window) || elapsed >= settle {
            break snap;
        }
        if run::operator_gone(&mark) {
            println!("fuzz: the operator is gone: settling stops here");
            break snap;
        }
    };
    let settle_time = t_settle.elapsed();
    let states = checks::states(&last);
    let mut problems2: Vec<String> = states
        .iter()
        .filter_map(|s| {
            Some(format!(
                "{} {}: {} [{}]",
                s.kind.name(),
                s.id,
                s.problem.clone()?,
                s.state
            ))
        })
        .collect();
    for kind in Kind::ALL {
        let seen = states.iter().filter(|s| s.kind == kind).count();
        if seen != outcome.accepted(kind) {
            problems2.push(format!(
                "{} {}s accepted, {seen} found at the end",
                outcome.accepted(kind),
                kind.name()
            ));
        }
    }
    // Per kind and state: how many, and what they say, in shape (names and
    // figures left out) with one example each.
    type Whys = BTreeMap<String, (usize, String)>;
    let mut by_state: BTreeMap<(Kind, String), (usize, Whys)> = BTreeMap::new();
    for s in &states {
        let e = by_state.entry((s.kind, s.state.clone())).or_default();
        e.0 += 1;
        if !s.why.is_empty() {
            let w = e.1.entry(shape(&s.why)).or_insert((0, s.why.clone()));
            w.0 += 1;
        }
    }

    if std::env::var_os("AIFACTORY_FUZZ_KEEP").is_some() {
        println!(
            "fuzz: AIFACTORY_FUZZ_KEEP: everything left for inspection (label {}={}); states:",
            world::FUZZ_LABEL,
            w.group
        );
        for s in &states {
            println!(
                "  {} {} {} | {}",
                s.kind.name(),
                s.id,
                s.state,
                truncate(&s.why, 200)
            );
        }
        return Ok(());
    }
    // Check 4: delete everything, in a random order.
    let retained: Vec<String> = last
        .tenants
        .iter()
        .filter(|t| world::retains(t))
        .flat_map(|t| owned_namespaces(&last, t))
        .collect();
    let deleted_with_tenants: Vec<String> = last
        .tenants
        .iter()
        .filter(|t| !world::retains(t))
        .flat_map(|t| owned_namespaces(&last, t))
        .collect();
    let mut order: Vec<Planned> = outcome.accepted.values().flatten().cloned().collect();
    order.sort_by_key(|p| {
        fxhash(&format!(
            "{seed}{}{:?}{}",
            p.kind.name(),
            p.namespace,
            p.name
        ))
    });
    let t_delete = Instant::now();
    let failed_deletes = run::delete_all(&client, &order).await;
    // Namespaces go one at a time per controller-manager worker: about 0.1 s per
    // object on this machine's 2 cores.
    let delete_timeout = Duration::from_secs(300 + objects as u64 / 10);
    let mut problems4 = wait_until_gone(&client, &w.group, delete_timeout, Some(&mark)).await?;
    let deadline = t_delete + delete_timeout;
    loop {
        let left = run::namespaces_left(&client, &deleted_with_tenants).await?;
        if left.is_empty() || Instant::now() >= deadline || run::operator_gone(&mark) {
            problems4.extend(left.into_iter().map(|n| {
                format!("Namespace {n}: its tenant (deletionPolicy Delete) is gone, it is not")
            }));
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let retained_left = run::namespaces_left(&client, &retained).await?;
    if retained_left.len() != retained.len() {
        problems4.push(format!(
            "{} of the {} namespaces of Retain tenants are gone",
            retained.len() - retained_left.len(),
            retained.len()
        ));
    }
    if failed_deletes > 0 {
        problems4.push(format!("{failed_deletes} deletes failed"));
    }
    let deletion = t_delete.elapsed();

    // Check 1, last: the operator went through all of it.
    let problems1 = run::operator_problems(&client, &mark).await;
    run::unprovision(&client, &w, &retained).await;

    // The figures.
    println!("\n==== fuzz report: seed {seed}, {objects} objects ====");
    println!(
        "time: generate+provision {:.0?}, create {creation:.0?}, settle {settle_time:.0?} ({polls} snapshots), delete {deletion:.0?}, total {:.0?}",
        t_create.duration_since(started),
        started.elapsed()
    );
    println!(
        "{:<12} {:>9} {:>9} {:>8}",
        "kind", "generated", "accepted", "refused"
    );
    for kind in Kind::ALL {
        println!(
            "{:<12} {:>9} {:>9} {:>8}",
            kind.name(),
            generated[&kind],
            outcome.accepted(kind),
            outcome.refused(kind)
        );
    }
    println!("refusals by reason:");
    for ((kind, reason), (n, examples)) in &outcome.refused {
        println!("  {n:>6}  {} {reason}", kind.name());
        for e in examples {
            println!("            e.g. {}", truncate(e, 300));
        }
    }
    for e in &outcome.errors {
        println!("  not sent: {e}");
    }
    println!("states at the end of settling:");
    for ((kind, state), (n, whys)) in &by_state {
        println!("  {n:>6}  {} {state}", kind.name());
        let mut whys: Vec<_> = whys.iter().collect();
        whys.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
        for (shape, (n, example)) in whys.iter().take(6) {
            println!("          {n:>5} {}", truncate(shape, 160));
            println!("                e.g. {}", truncate(example, 200));
        }
    }
    println!(
        "admissions seen: {} (jobs and sessions), training jobs seen running or succeeded: {}, peak GPUs held: {peak_gpus}",
        admitted_seen.len(),
        ran_seen.len()
    );
    let report = |title: &str, problems: &[String]| {
        println!(
            "check {title}: {}",
            if problems.is_empty() {
                "ok".to_string()
            } else {
                format!("{} problems", problems.len())
            }
        );
        for p in problems.iter().take(25) {
            println!("  - {}", truncate(p, 600));
        }
    };
    report(
        "1 (the operator never panicked, never restarted)",
        &problems1,
    );
    report("2 (every object runs or says why)", &problems2);
    let problems3: Vec<String> = confirmed
        .values()
        .map(|(v, at)| format!("+{at}s: {}", v.message))
        .collect();
    report("3 (no GPU held by what cannot run)", &problems3);
    report("4 (deleting leaves nothing stuck)", &problems4);
    let total = problems1.len() + problems2.len() + problems3.len() + problems4.len();
    anyhow::ensure!(
        total == 0,
        "the fuzz run (seed {seed}, {objects} objects) found {total} problems: see the report above; reproduce with AIFACTORY_FUZZ_SEED={seed} AIFACTORY_FUZZ_OBJECTS={objects}"
    );
    Ok(())
}

/// A fuzz object found in the cluster, as something to delete.
fn stale_ref<K: ResourceExt>(kind: Kind, o: &K) -> Planned {
    Planned {
        kind,
        name: o.name_any(),
        namespace: o.namespace(),
        object: serde_json::Value::Null,
    }
}

/// The namespaces `t` owns (labelled with its name).
fn owned_namespaces(s: &checks::Snapshot, t: &Tenant) -> Vec<String> {
    s.namespaces
        .iter()
        .filter(|n| n.labels().get(TENANT_LABEL) == Some(&t.name_any()))
        .map(|n| n.name_any())
        .collect()
}

/// Waits until none of the run's objects is left (nor a pool label or taint on its
/// nodes), up to `timeout` or until the operator of `mark` is gone; what is left
/// then.
async fn wait_until_gone(
    client: &kube::Client,
    group: &str,
    timeout: Duration,
    mark: Option<&run::OperatorMark>,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = run::leftovers(client, group).await?;
        if left.is_empty() || Instant::now() >= deadline || mark.is_some_and(run::operator_gone) {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn summary(generated: &BTreeMap<Kind, usize>, o: &Outcome) -> String {
    Kind::ALL
        .iter()
        .map(|k| format!("{} {}/{} accepted", k.name(), o.accepted(*k), generated[k]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// At most `n` characters of `s`, control characters escaped (the strategies put
/// tabs and newlines in free text, which names and reasons repeat).
fn truncate(s: &str, n: usize) -> String {
    let clean: String = s
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if clean.chars().count() <= n {
        clean
    } else {
        clean.chars().take(n).collect::<String>() + "…"
    }
}

/// The shape of a reason: its words, with names and figures (anything but a
/// short plain word) as `_`.
fn shape(why: &str) -> String {
    let mut out: Vec<&str> = vec![];
    for word in why.split_whitespace() {
        let plain = word.len() <= 16
            && word
                .chars()
                .all(|c| c.is_ascii_alphabetic() || ",.:;()'".contains(c));
        let w = if plain { word } else { "_" };
        if !(w == "_" && out.last() == Some(&"_")) {
            out.push(w);
        }
    }
    out.join(" ")
}

/// A stable hash (FNV-1a), for a seeded order.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
