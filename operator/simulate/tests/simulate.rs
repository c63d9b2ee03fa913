//! The simulator end to end: the `simulate` binary on the example factory and
//! trace, and fair-share scenarios through the library.

use std::path::PathBuf;
use std::process::Command;

use aifactory_simulate::trace::Row;
use aifactory_simulate::{Options, Report, factory, simulate};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run_example() -> Value {
    let dir = std::env::temp_dir().join(format!("simulate-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_simulate"))
        .arg("--factory")
        .arg(repo().join("examples/simulate/factory.yaml"))
        .arg("--trace")
        .arg(repo().join("examples/simulate/trace.csv"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "simulate failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("### Pools") && stdout.contains("### Tenants"),
        "{stdout}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    report
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn the_example_trace_runs_to_completion_within_every_invariant() {
    let r = run_example();
    let trace =
        aifactory_simulate::trace::load(&repo().join("examples/simulate/trace.csv")).unwrap();

    // Every job completes; none is refused or left behind.
    assert_eq!(r["jobs"]["submitted"], trace.len());
    assert_eq!(r["jobs"]["completed"], trace.len());
    assert_eq!(r["jobs"]["refused"], serde_json::json!({}));
    assert_eq!(r["jobs"]["queuedAtEnd"], serde_json::json!({}));

    // The simulator checked capacity and power at every admission.
    let checks = &r["checks"];
    assert!(checks["passes"].as_u64().unwrap() > 0);
    assert_eq!(checks["capacityViolations"], 0);
    assert_eq!(checks["powerCapViolations"], 0);
    assert_eq!(checks["doubleAdmissions"], 0);

    // No pool above capacity or its power cap at any time; utilisation in [0, 1].
    for pool in r["pools"].as_array().unwrap() {
        let peak = f(&pool["peakAllocatedGpus"]);
        assert!(peak <= f(&pool["gpus"]), "{pool}");
        if let Some(cap) = pool["powerCapKilowatts"].as_f64() {
            assert!(f(&pool["peakPowerKilowatts"]) <= cap, "{pool}");
        }
        let u = f(&pool["utilisation"]);
        assert!((0.0..=1.0).contains(&u), "{pool}");
    }

    // Waits are non-negative and ordered; every tenant started everything.
    for t in r["tenants"].as_array().unwrap() {
        let (p50, p95, max) = (
            f(&t["waitP50Seconds"]),
            f(&t["waitP95Seconds"]),
            f(&t["waitMaxSeconds"]),
        );
        assert!(0.0 <= p50 && p50 <= p95 && p95 <= max, "{t}");
        assert_eq!(t["jobsStarted"], t["jobsSubmitted"]);
    }

    // GPU-hours add up: the trace's work plus what preemption threw away.
    let work: f64 = trace
        .iter()
        .map(|row| f64::from(row.nodes * row.gpus_per_node) * row.duration / 3600.0)
        .sum();
    let allocated: f64 = r["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| f(&p["allocatedGpuHours"]))
        .sum();
    let lost = f(&r["lostGpuHours"]);
    assert!(
        (allocated - (work + lost)).abs() < 1e-6,
        "{allocated} vs {work} + {lost}"
    );

    // The story of the trace: guarantees and priorities preempt borrowers.
    assert!(r["preemptions"].as_u64().unwrap() > 0);
    assert!(lost > 0.0);

    let jain = f(&r["fairness"]["jainIndex"]);
    assert!(jain > 0.0 && jain <= 1.0, "{jain}");
    assert_eq!(r["fairness"]["tenantsWithDemand"], 3);
    assert!(f(&r["energyKWh"]) > 0.0);
    assert!(r["makespanSeconds"].as_u64().unwrap() >= 15_000);
}

/// One pool of 4 nodes × 8 GPUs that nobody is guaranteed; two tenants.
fn two_tenants(weight_a: u32, weight_b: u32) -> factory::SimFactory {
    let tenant = |name: &str, weight: u32| {
        format!(
            "---
apiVersion: aifactory.dev/v1alpha1
kind: Tenant
metadata: {{name: {name}}}
spec:
  owners: [{{kind: User, name: {name}}}]
  weight: {weight}
  quota: [{{pool: h100, gpus: 0}}]
"
        )
    };
    let text = format!(
        "apiVersion: aifactory.dev/v1alpha1
kind: GpuPool
metadata: {{name: h100}}
spec:
  nodeSelector: {{matchLabels: {{gpu: h100}}}}
  gpu: {{model: H100-80GB, perNode: 8, powerWatts: 700}}
  location: {{region: eu-west}}
---
apiVersion: simulate.aifactory.dev/v1alpha1
kind: SimulatedNodes
pool: h100
count: 4
{}{}",
        tenant("a", weight_a),
        tenant("b", weight_b)
    );
    factory::parse(&text).unwrap()
}

/// Both tenants submit far more one-node, one-hour jobs than the pool can run in
/// the horizon, all at once — `a`'s first, so first-come-first-served would give
/// `a` everything.
fn flood(jobs: u32) -> Vec<Row> {
    let row = |tenant: &str| Row {
        submit: 0.0,
        tenant: tenant.into(),
        pool: "h100".into(),
        nodes: 1,
        gpus_per_node: 8,
        duration: 3600.0,
        priority: None,
        pack: None,
    };
    (0..jobs)
        .map(|_| row("a"))
        .chain((0..jobs).map(|_| row("b")))
        .collect()
}

/// Ten hours of the flood, fair share alone ordering the queue.
///
/// Starvation protection is off: past `starving_after` every flooded job is
/// starving, and starving jobs go first in the order they queued — the flood
/// becomes first-come-first-served (with the default 900 s, `a` gets 304 of the
/// 320 GPU-hours). That is the engine's rule, reported, not the simulator's.
fn over_ten_hours(f: &factory::SimFactory) -> Report {
    simulate(
        f,
        &flood(100),
        Options {
            until: Some(10 * 3600),
            starving_after: u64::MAX,
            ..Options::default()
        },
    )
    .unwrap()
}

fn gpu_hours(r: &Report, tenant: &str) -> f64 {
    r.tenants
        .iter()
        .find(|t| t.tenant == tenant)
        .unwrap()
        .gpu_hours
}

#[test]
fn two_equal_tenants_flooding_one_pool_share_it_evenly() {
    let r = over_ten_hours(&two_tenants(1, 1));
    assert!(r.checks.ok());
    let (a, b) = (gpu_hours(&r, "a"), gpu_hours(&r, "b"));
    // 32 GPUs × 10 h, all of it used, split down the middle.
    assert!((a + b - 320.0).abs() < 1e-6, "{a} + {b}");
    assert!((a - b).abs() <= 8.0, "a {a}, b {b}");
    let jain = r.fairness.jain_index.unwrap();
    assert!(jain > 0.99, "{jain}");
    assert_eq!(r.pools[0].utilisation, 1.0);
    // Jobs past the horizon are reported, not lost.
    assert_eq!(
        r.jobs.completed + r.jobs.queued_at_end.values().sum::<u64>(),
        200
    );
}

#[test]
fn weights_split_the_pool_in_their_proportion_and_jain_counts_weighted_shares() {
    let r = over_ten_hours(&two_tenants(3, 1));
    let (a, b) = (gpu_hours(&r, "a"), gpu_hours(&r, "b"));
    assert!((a / b - 3.0).abs() < 0.35, "a {a}, b {b}");
    let jain = r.fairness.jain_index.unwrap();
    assert!(jain > 0.99, "{jain}");
}
