//! The Argo CD health checks of charts/aifactory/argocd/argocd-cm-health.yaml, run
//! by a real Lua 5.1 interpreter (Argo CD's gopher-lua speaks Lua 5.1) against
//! objects of every phase. The objects go through the Rust API types first, so a
//! renamed status field breaks these tests rather than the health in Argo CD.
//! Needs `lua5.1` (hack/test.sh installs it); no cluster.
use aifactory_api::{Dataset, GpuPool, Tenant, TrainingJob, Workspace};
use aifactory_tests::repo_root;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;

/// The Lua script Argo CD runs for `kind`.
fn script(kind: &str) -> String {
    let path = repo_root().join("charts/aifactory/argocd/argocd-cm-health.yaml");
    let cm: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cm["data"][format!("resource.customizations.health.aifactory.dev_{kind}")]
        .as_str()
        .unwrap_or_else(|| panic!("no health check for {kind} in {}", path.display()))
        .to_string()
}

/// A JSON value as a Lua table constructor (null becomes nil, as in Argo CD).
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs `kind`'s health check on each object; returns (status, message) per object.
fn health(kind: &str, objects: &[Value]) -> Vec<(String, String)> {
    let dir = std::env::temp_dir().join(format!("aifactory-argocd-{}-{kind}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("health.lua"), script(kind)).unwrap();
    // Argo CD sets the global `obj` and runs the script as a chunk returning hs.
    let harness = format!(
        "local check = assert(loadfile({script}))\nlocal objects = {{{objects}}}\n\
         for i = 1, {n} do\n  obj = objects[i]\n  local hs = check()\n\
         io.write(hs.status, \"\\t\", hs.message or \"\", \"\\n\")\nend\n",
        script = lua_string(&dir.join("health.lua").to_string_lossy()),
        objects = objects.iter().map(lua).collect::<Vec<_>>().join(",\n"),
        n = objects.len(),
    );
    std::fs::write(dir.join("harness.lua"), harness).unwrap();
    let out = Command::new("lua5.1")
        .arg(dir.join("harness.lua"))
        .output()
        .expect("lua5.1 is not installed: apt-get install lua5.1 (hack/test.sh does)");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "{kind} health check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<_> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (s, m) = l.split_once('\t').unwrap();
            (s.to_string(), m.to_string())
        })
        .collect();
    assert_eq!(results.len(), objects.len());
    results
}

/// `object` (spec and status as JSON) read into the API type `K` and written back,
/// as the API server would serve it.
fn typed<K: serde::de::DeserializeOwned + serde::Serialize>(object: Value) -> Value {
    let k: K = serde_json::from_value(object).expect("a valid object of the kind");
    serde_json::to_value(k).unwrap()
}

fn training_job(generation: i64, status: Value) -> Value {
    typed::<TrainingJob>(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "llama-70b", "namespace": "acme", "generation": generation},
        "spec": {"pool": "h100", "nodes": 2, "gpusPerNode": 8, "image": "train:1"},
        "status": status,
    }))
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1})
}

#[test]
fn training_job_health_follows_its_phase() {
    let cases = [
        (
            json!(null),
            "Progressing",
            "Waiting for the operator to queue the job",
        ),
        (
            json!({"observedGeneration": 1, "phase": "Queued", "queuePosition": 3,
                   "pendingReason": "waiting for 16 H100 GPUs; 8 free; 2 jobs ahead"}),
            "Progressing",
            "Queued, position 3: waiting for 16 H100 GPUs; 8 free; 2 jobs ahead",
        ),
        (
            json!({"observedGeneration": 1, "phase": "Admitted"}),
            "Progressing",
            "Admitted: GPUs reserved, pods starting",
        ),
        (
            json!({"observedGeneration": 1, "phase": "Running", "placement": {"nodes": ["n1", "n2"], "domain": "rack-1"}}),
            "Progressing",
            "Running on 2 nodes",
        ),
        (
            json!({"observedGeneration": 1, "phase": "Succeeded", "gpuHours": 32.0}),
            "Healthy",
            "Succeeded",
        ),
        (
            json!({"observedGeneration": 1, "phase": "Failed",
                   "conditions": [condition("Failed", "True", "DeadlineExceeded", "ran past maxRuntime 72h")]}),
            "Degraded",
            "ran past maxRuntime 72h",
        ),
        (
            json!({"observedGeneration": 1, "phase": "Failed"}),
            "Degraded",
            "Failed",
        ),
        (
            json!({"observedGeneration": 1, "phase": "Suspended"}),
            "Suspended",
            "Suspended: GPUs released; set spec.suspend to false to queue it again",
        ),
        (
            json!({"observedGeneration": 1, "phase": "Preempted", "pendingReason": "acme reclaims its guarantee"}),
            "Progressing",
            "Preempted and queued again: acme reclaims its guarantee",
        ),
    ];
    let objects: Vec<_> = cases
        .iter()
        .map(|(s, _, _)| training_job(1, s.clone()))
        .collect();
    let results = health("TrainingJob", &objects);
    for ((status, want, message), (got, got_message)) in cases.iter().zip(&results) {
        assert_eq!(
            (got.as_str(), got_message.as_str()),
            (*want, *message),
            "status {status}"
        );
    }
    // A finished status of an older spec says nothing about the current one.
    let stale = training_job(2, json!({"observedGeneration": 1, "phase": "Succeeded"}));
    assert_eq!(
        health("TrainingJob", &[stale]),
        [(
            "Progressing".to_string(),
            "Waiting for the operator to observe generation 2".to_string()
        )]
    );
}

/// Ready-condition kinds: (status, expected health) for Ready True, False, missing,
/// and a status of an older generation.
fn ready_cases() -> Vec<(Value, &'static str)> {
    vec![
        (
            json!({"observedGeneration": 1, "conditions": [condition("Ready", "True", "NodesReady", "4 of 4 nodes Ready")]}),
            "Healthy",
        ),
        (
            json!({"observedGeneration": 1, "conditions": [condition("Ready", "False", "NoNodes", "no node matches the nodeSelector")]}),
            "Degraded",
        ),
        (json!({"observedGeneration": 1}), "Progressing"),
        (
            json!({"observedGeneration": 0, "conditions": [condition("Ready", "True", "NodesReady", "4 of 4 nodes Ready")]}),
            "Progressing",
        ),
        (json!(null), "Progressing"),
    ]
}

fn check_ready_kind(kind: &str, object: impl Fn(Value) -> Value) {
    let cases = ready_cases();
    let objects: Vec<_> = cases.iter().map(|(s, _)| object(s.clone())).collect();
    let results = health(kind, &objects);
    for ((status, want), (got, _)) in cases.iter().zip(&results) {
        assert_eq!(got, want, "{kind} with status {status}");
    }
    assert_eq!(results[0].1, "4 of 4 nodes Ready");
    assert_eq!(results[1].1, "NoNodes: no node matches the nodeSelector");
}

fn gpu_pool(status: Value) -> Value {
    typed::<GpuPool>(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool",
        "metadata": {"name": "h100", "generation": 1},
        "spec": {"nodeSelector": {"matchLabels": {"pool": "h100"}},
                 "gpu": {"model": "H100-80GB", "perNode": 8, "powerWatts": 700},
                 "location": {"region": "eu-west"}},
        "status": status,
    }))
}

fn tenant(status: Value) -> Value {
    typed::<Tenant>(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "acme", "generation": 1},
        "spec": {"owners": [{"kind": "User", "name": "alice"}]},
        "status": status,
    }))
}

fn workspace(status: Value) -> Value {
    typed::<Workspace>(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "alice", "namespace": "acme", "generation": 1},
        "spec": {"storage": {"home": "50Gi"}},
        "status": status,
    }))
}

#[test]
fn gpu_pool_health_is_its_ready_condition() {
    check_ready_kind("GpuPool", gpu_pool);
}

#[test]
fn tenant_health_is_its_ready_condition_and_names_an_exhausted_budget() {
    check_ready_kind("Tenant", tenant);
    let exhausted = tenant(json!({"observedGeneration": 1, "conditions": [
        condition("Ready", "True", "Reconciled", "1 namespace"),
        condition("BudgetExhausted", "True", "BudgetExhausted", "500 of 500 GPU-hours used in 2025-01"),
    ]}));
    assert_eq!(
        health("Tenant", &[exhausted]),
        [(
            "Healthy".to_string(),
            "Budget exhausted: 500 of 500 GPU-hours used in 2025-01".to_string()
        )]
    );
}

#[test]
fn workspace_health_is_its_ready_condition_and_a_queued_session_progresses() {
    check_ready_kind("Workspace", workspace);
    let queued = workspace(json!({"observedGeneration": 1, "phase": "Queued",
        "pendingReason": "waiting for 1 H100 GPU; 0 free",
        "conditions": [condition("Ready", "False", "SessionQueued", "queued")]}));
    let failed = workspace(json!({"observedGeneration": 1, "phase": "Failed",
        "conditions": [condition("Ready", "False", "ClaimFailed", "storage class gold does not exist")]}));
    assert_eq!(
        health("Workspace", &[queued, failed]),
        [
            (
                "Progressing".to_string(),
                "waiting for 1 H100 GPU; 0 free".to_string()
            ),
            (
                "Degraded".to_string(),
                "ClaimFailed: storage class gold does not exist".to_string()
            )
        ]
    );
    let ready = condition("Ready", "True", "VolumesBound", "claims bound");
    let session = |phase: &str, extra: Value, session: Value| {
        let mut status = json!({"observedGeneration": 1, "phase": phase,
            "conditions": [ready.clone(), session]});
        for (k, v) in extra.as_object().unwrap() {
            status[k] = v.clone();
        }
        workspace(status)
    };
    let waiting = session(
        "Queued",
        json!({"pendingReason": "quota: tenant acme would use 34 of 32 GPUs"}),
        condition("Session", "False", "Quota", "quota"),
    );
    let starting = session(
        "Running",
        json!({"sessionNode": "gpu-7"}),
        condition(
            "Session",
            "False",
            "Starting",
            "admitted on gpu-7; starting",
        ),
    );
    let running = session(
        "Running",
        json!({"sessionNode": "gpu-7"}),
        condition("Session", "True", "Running", "running on gpu-7"),
    );
    let expired = session(
        "Expired",
        json!({"pendingReason": "the session reached its maxLifetime of 8h"}),
        condition("Session", "False", "Expired", "expired"),
    );
    let statuses: Vec<String> = health("Workspace", &[waiting, starting, running, expired])
        .into_iter()
        .map(|(status, message)| format!("{status}: {message}"))
        .collect();
    assert_eq!(
        statuses,
        [
            "Progressing: quota: tenant acme would use 34 of 32 GPUs",
            "Progressing: admitted on gpu-7; starting",
            "Healthy: running on gpu-7",
            "Suspended: the session reached its maxLifetime of 8h",
        ]
    );
}

#[test]
fn dataset_health_follows_its_import() {
    let dataset = |status: Value| {
        typed::<Dataset>(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "scans", "namespace": "clinic", "generation": 1},
            "spec": {"size": "500Gi"},
            "status": status,
        }))
    };
    let cases: BTreeMap<&str, (Value, &str, &str)> = [
        ("no status", (json!(null), "Progressing", "Waiting for the operator to observe the current spec")),
        ("pending", (json!({"observedGeneration": 1, "phase": "Pending"}), "Progressing", "Provisioning the volume")),
        (
            "importing",
            (
                json!({"observedGeneration": 1, "phase": "Importing",
                       "conditions": [condition("Ready", "False", "Importing", "import job running")]}),
                "Progressing",
                "Importing: import job running",
            ),
        ),
        (
            "ready",
            (
                json!({"observedGeneration": 1, "phase": "Ready",
                       "conditions": [condition("Ready", "True", "Imported", "500Gi bound")]}),
                "Healthy",
                "Ready: 500Gi bound",
            ),
        ),
        (
            "failed",
            (
                json!({"observedGeneration": 1, "phase": "Failed",
                       "conditions": [condition("Ready", "False", "ImportFailed", "403 from the bucket")]}),
                "Degraded",
                "Failed: 403 from the bucket",
            ),
        ),
        (
            "stale",
            (
                json!({"observedGeneration": 0, "phase": "Ready",
                       "conditions": [condition("Ready", "True", "Imported", "500Gi bound")]}),
                "Progressing",
                "Waiting for the operator to observe the current spec",
            ),
        ),
    ]
    .into();
    let objects: Vec<_> = cases.values().map(|(s, _, _)| dataset(s.clone())).collect();
    let results = health("Dataset", &objects);
    for ((case, (_, want, message)), (got, got_message)) in cases.iter().zip(&results) {
        assert_eq!(
            (got.as_str(), got_message.as_str()),
            (*want, *message),
            "{case}"
        );
    }
}
