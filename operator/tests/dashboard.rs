//! The Grafana dashboard the chart ships (charts/aifactory/dashboards/aifactory.json)
//! queries only series the operator exports: a renamed metric breaks this test,
//! not a panel nobody looks at until an incident.
use aifactory::metrics::Metrics;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Every PromQL expression of the dashboard's panels and variables.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(fields) => {
            for (k, v) in fields {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(e)) => out.push(e.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// Names of the form `aifactory_…` in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = vec![];
    let mut rest = expr;
    while let Some(at) = rest.find("aifactory_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_dashboard_queries_only_metrics_the_operator_exports() {
    let metrics = Metrics::default();
    // Families show their series only once a label set exists.
    drop(metrics.reconcile("gpupool"));
    metrics.error("gpupool", "api_409".into());
    let f = &metrics.factory;
    let tp = aifactory::metrics::TenantPoolLabels {
        tenant: "acme".into(),
        pool: "h100".into(),
    };
    let p = aifactory::metrics::PoolLabels {
        pool: "h100".into(),
    };
    f.admissions.get_or_create(&tp).inc();
    f.preemptions.get_or_create(&tp).inc();
    f.admission_wait.get_or_create(&p).observe(1.0);
    f.queue_length.get_or_create(&p).set(1);
    f.gpus_in_use.get_or_create(&tp).set(1);
    f.gpus_guaranteed.get_or_create(&tp).set(1);
    f.gpu_hours.get_or_create(&tp).set(1.0);
    f.energy_kwh.get_or_create(&tp).set(1.0);
    let exported: BTreeSet<String> = metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();

    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/aifactory/dashboards/aifactory.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = vec![];
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has its panels: {exprs:?}");
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "{} queries {unknown:?}, which the operator does not export (it exports {exported:?})",
        path.display()
    );
    // And every family the operator exports has a panel.
    for family in [
        "aifactory_reconcile_total",
        "aifactory_reconcile_errors_total",
        "aifactory_reconcile_duration_seconds_bucket",
    ] {
        assert!(queried.contains(family), "no panel shows {family}");
    }
}
