//! The API server enforces the aifactory API: CRDs install and are Established,
//! every example is accepted, bad input is refused with a message naming the field
//! and the reason, and `kubectl explain` teaches the fields.
use aifactory_api::{Dataset, GpuPool, Tenant, TrainingJob, Workspace};
use aifactory_tests::*;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use serde_json::{Value, json};

/// The API resource of a kind, by its `kind` field.
fn resource(kind: &str) -> ApiResource {
    match kind {
        "GpuPool" => ApiResource::erase::<GpuPool>(&()),
        "Tenant" => ApiResource::erase::<Tenant>(&()),
        "Dataset" => ApiResource::erase::<Dataset>(&()),
        "Workspace" => ApiResource::erase::<Workspace>(&()),
        "TrainingJob" => ApiResource::erase::<TrainingJob>(&()),
        // examples/ also holds the PriorityClasses tenants use.
        "PriorityClass" => {
            ApiResource::erase::<k8s_openapi::api::scheduling::v1::PriorityClass>(&())
        }
        other => panic!("not an aifactory kind: {other}"),
    }
}

fn api_for(client: &Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let ar = resource(kind);
    if matches!(kind, "GpuPool" | "Tenant" | "PriorityClass") {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), namespace, &ar)
    }
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

// Valid specs that the invalid cases start from.
fn pool() -> Value {
    json!({"nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "H100-80GB"}},
           "gpu": {"model": "H100-80GB", "perNode": 8, "powerWatts": 700},
           "location": {"region": "eu-west"}})
}
fn tenant() -> Value {
    json!({"owners": [{"kind": "User", "name": "alice"}],
           "quota": [{"pool": "h100", "gpus": 8}]})
}
fn dataset() -> Value {
    json!({"size": "100Gi"})
}
fn workspace() -> Value {
    json!({"storage": {"home": "10Gi"}})
}
fn job() -> Value {
    json!({"pool": "h100", "nodes": 2, "gpusPerNode": 8, "image": "train:1"})
}

/// Sets `path` (dot-separated) in a JSON value, `null` removes it.
fn with(mut v: Value, path: &str, value: Value) -> Value {
    let mut cur = &mut v;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        cur = cur
            .as_object_mut()
            .unwrap()
            .entry(p.to_string())
            .or_insert(json!({}));
    }
    let last = parts[parts.len() - 1];
    if value.is_null() {
        cur.as_object_mut().unwrap().remove(last);
    } else {
        cur[last] = value;
    }
    v
}

#[tokio::test]
async fn crds_install_and_are_established() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    // `kubectl get aifactory` lists every kind through the category.
    let resources = kubectl(&["api-resources", "--categories=aifactory", "-o", "name"])?;
    for plural in [
        "gpupools",
        "tenants",
        "datasets",
        "workspaces",
        "trainingjobs",
    ] {
        assert!(
            resources.contains(&format!("{plural}.aifactory.dev")),
            "{plural} missing in {resources}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_example_is_accepted_by_server_side_apply() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "examples").await?;
    let mut applied = 0;
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))?
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(path)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let mut obj: DynamicObject = serde_json::from_value(value)?;
            let kind = obj.types.as_ref().unwrap().kind.clone();
            let name = obj.metadata.name.clone().unwrap();
            // Namespaced examples are applied into this test's namespace: validation
            // does not depend on where they live, and nothing outside the test changes.
            obj.metadata.namespace = None;
            let api = api_for(&client, &kind, &ns.name);
            let params = PatchParams {
                dry_run: true,
                ..PatchParams::apply(TEST_MANAGER).force()
            };
            api.patch(&name, &params, &Patch::Apply(&obj))
                .await
                .map_err(|e| anyhow::anyhow!("{}: {kind}/{name} refused: {e}", path.display()))?;
            applied += 1;
        }
    }
    assert!(applied >= 10, "only {applied} objects in examples/");
    Ok(())
}

use serde::Deserialize;

/// An invalid manifest and what the refusal must say.
struct Invalid {
    kind: &'static str,
    spec: Value,
    /// Substrings of the API server's message: the field, and why.
    says: &'static [&'static str],
}

fn invalid_cases() -> Vec<Invalid> {
    let i = |kind, spec, says| Invalid { kind, spec, says };
    vec![
        // GpuPool
        i(
            "GpuPool",
            with(pool(), "gpu", Value::Null),
            &["spec.gpu", "Required value"],
        ),
        i(
            "GpuPool",
            with(pool(), "gpu.perNode", json!(0)),
            &["spec.gpu.perNode", "greater than or equal to 1"],
        ),
        i(
            "GpuPool",
            with(pool(), "gpu.perNode", json!(4096)),
            &["spec.gpu.perNode", "less than or equal to 64"],
        ),
        i(
            "GpuPool",
            with(pool(), "gpu.powerWatts", json!(-700)),
            &["spec.gpu.powerWatts", "greater than or equal to 1"],
        ),
        i(
            "GpuPool",
            with(pool(), "nodeSelector", json!({})),
            &["spec.nodeSelector", "must select something"],
        ),
        i(
            "GpuPool",
            with(pool(), "powerCapKilowatts", json!(0)),
            &["spec.powerCapKilowatts", "must be greater than zero"],
        ),
        i(
            "GpuPool",
            with(pool(), "topology", json!({"levels": ["rack level!"]})),
            &["spec.topology.levels", "node label key"],
        ),
        i(
            "GpuPool",
            with(pool(), "topology", json!({"levels": ["x/rack", "x/rack"]})),
            &["spec.topology.levels", "must be distinct"],
        ),
        i(
            "GpuPool",
            with(pool(), "location.region", json!("EU West")),
            &["spec.location.region", "lowercase DNS label"],
        ),
        i(
            "GpuPool",
            with(pool(), "gpu.resourceName", json!("gpu")),
            &["spec.gpu.resourceName", "should match"],
        ),
        // Tenant
        i(
            "Tenant",
            with(tenant(), "owners", json!([])),
            &["spec.owners", "at least 1 item"],
        ),
        i(
            "Tenant",
            with(
                tenant(),
                "owners",
                json!([{"kind": "ServiceAccount", "name": "ci"}]),
            ),
            &[
                "spec.owners[0]",
                "namespace is required for a ServiceAccount",
            ],
        ),
        i(
            "Tenant",
            with(
                tenant(),
                "owners",
                json!([{"kind": "User", "name": "bob", "namespace": "x"}]),
            ),
            &["spec.owners[0]", "not allowed for a User or Group"],
        ),
        i(
            "Tenant",
            with(tenant(), "owners", json!([{"kind": "Robot", "name": "r2"}])),
            &["spec.owners[0].kind", "Unsupported value"],
        ),
        i(
            "Tenant",
            with(
                tenant(),
                "quota",
                json!([{"pool": "h100", "gpus": 8}, {"pool": "h100", "gpus": 4}]),
            ),
            &["spec.quota", "each pool may appear only once in quota"],
        ),
        i(
            "Tenant",
            with(tenant(), "quota", json!([{"pool": "h100", "gpus": -8}])),
            &["spec.quota[0].gpus", "greater than or equal to 0"],
        ),
        i(
            "Tenant",
            with(
                tenant(),
                "quota",
                json!([{"pool": "h100", "gpus": 8, "borrowingLimit": -1}]),
            ),
            &["spec.quota[0].borrowingLimit", "greater than or equal to 0"],
        ),
        i(
            "Tenant",
            with(
                tenant(),
                "quota",
                json!([{"pool": "h100", "gpus": 8, "lendingLimit": -2}]),
            ),
            &["spec.quota[0].lendingLimit", "greater than or equal to 0"],
        ),
        i(
            "Tenant",
            with(
                tenant(),
                "quota",
                json!([{"pool": "h100", "gpus": 8, "lendingLimit": 9}]),
            ),
            &[
                "spec.quota[0]",
                "lendingLimit cannot exceed the guaranteed gpus",
            ],
        ),
        i(
            "Tenant",
            with(tenant(), "weight", json!(0)),
            &["spec.weight", "greater than or equal to 1"],
        ),
        i(
            "Tenant",
            with(tenant(), "deletionPolicy", json!("Keep")),
            &["spec.deletionPolicy", "Unsupported value", "Retain"],
        ),
        i(
            "Tenant",
            with(tenant(), "namespaces", json!(["Research_NS"])),
            &["spec.namespaces", "lowercase DNS label"],
        ),
        i(
            "Tenant",
            with(tenant(), "budget", json!({"gpuHoursPerMonth": -5})),
            &["spec.budget.gpuHoursPerMonth", "greater than or equal to 0"],
        ),
        i(
            "Tenant",
            with(tenant(), "storage", json!({"maxRequest": "lots"})),
            &["spec.storage.maxRequest", "must be a quantity such as 10Ti"],
        ),
        i(
            "Tenant",
            with(tenant(), "residency", json!({"regions": []})),
            &["spec.residency.regions", "at least 1 item"],
        ),
        // Dataset
        i(
            "Dataset",
            with(dataset(), "size", json!("big")),
            &["spec.size", "size must be a quantity such as 500Gi"],
        ),
        i(
            "Dataset",
            with(dataset(), "size", json!("0")),
            &["spec.size", "size must be greater than zero"],
        ),
        i(
            "Dataset",
            with(dataset(), "size", Value::Null),
            &["spec.size", "Required value"],
        ),
        i(
            "Dataset",
            with(dataset(), "source", json!({"url": "ftp://files.example/x"})),
            &[
                "spec.source.url",
                "must start with http://, https:// or s3://",
            ],
        ),
        i(
            "Dataset",
            with(dataset(), "accessModes", json!(["ReadWriteSometimes"])),
            &["spec.accessModes[0]", "Unsupported value"],
        ),
        i(
            "Dataset",
            with(dataset(), "sharing", json!({"tenants": ["beta"]})),
            &["spec", "needs accessModes ReadOnlyMany or ReadWriteMany"],
        ),
        // Workspace
        i(
            "Workspace",
            with(workspace(), "storage.home", Value::Null),
            &["spec.storage.home", "Required value"],
        ),
        i(
            "Workspace",
            with(
                workspace(),
                "interactive",
                json!({"image": "jupyter", "pool": "h100", "maxLifetime": "forever"}),
            ),
            &[
                "spec.interactive.maxLifetime",
                "must be a duration such as 30m",
            ],
        ),
        i(
            "Workspace",
            with(
                workspace(),
                "interactive",
                json!({"image": "jupyter", "pool": "h100", "gpus": 100}),
            ),
            &["spec.interactive.gpus", "less than or equal to 16"],
        ),
        i(
            "Workspace",
            with(
                workspace(),
                "interactive",
                json!({"image": "jupyter", "pool": "h100", "gpus": 0}),
            ),
            &["spec.interactive.gpus", "greater than or equal to 1"],
        ),
        i(
            "Workspace",
            with(workspace(), "storage.scratch", json!("-1Ti")),
            &["spec.storage.scratch", "greater than zero"],
        ),
        // TrainingJob
        i(
            "TrainingJob",
            with(job(), "nodes", json!(0)),
            &["spec.nodes", "greater than or equal to 1"],
        ),
        i(
            "TrainingJob",
            with(job(), "gpusPerNode", json!(-1)),
            &["spec.gpusPerNode", "greater than or equal to 1"],
        ),
        i(
            "TrainingJob",
            with(job(), "gpusPerNode", json!(512)),
            &["spec.gpusPerNode", "less than or equal to 64"],
        ),
        i(
            "TrainingJob",
            with(job(), "nodes", json!(100000)),
            &["spec.nodes", "less than or equal to 1024"],
        ),
        i(
            "TrainingJob",
            with(job(), "maxRuntime", json!("3 days")),
            &[
                "spec.maxRuntime",
                "must be a duration such as 30m, 24h or 1h30m",
            ],
        ),
        i(
            "TrainingJob",
            with(job(), "maxRestarts", json!(-1)),
            &["spec.maxRestarts", "greater than or equal to 0"],
        ),
        i(
            "TrainingJob",
            with(job(), "topology", json!({"pack": "row"})),
            &["spec.topology.pack", "Unsupported value", "rack"],
        ),
        i(
            "TrainingJob",
            with(job(), "image", Value::Null),
            &["spec.image", "Required value"],
        ),
        i(
            "TrainingJob",
            with(job(), "resources", json!({"memory": "lots"})),
            &["spec.resources.memory", "must be a quantity"],
        ),
        i(
            "TrainingJob",
            with(job(), "nodes", json!("four")),
            &["spec.nodes", "must be of type integer"],
        ),
        // Specs the API used to accept that could never run (issue 13).
        i(
            "TrainingJob",
            with(job(), "env", json!([{"name": "NODE_RANK", "value": "3"}])),
            &["spec.env", "may not set MASTER_ADDR", "aifactory sets them"],
        ),
        i(
            "TrainingJob",
            with(
                job(),
                "datasets",
                json!([{"name": "images"}, {"name": "images", "mountPath": "/other"}]),
            ),
            &["spec.datasets", "listed only once"],
        ),
        i(
            "TrainingJob",
            with(
                job(),
                "datasets",
                json!([{"name": "a", "mountPath": "/data"}, {"name": "b", "mountPath": "/data"}]),
            ),
            &["spec.datasets", "a mount path of its own"],
        ),
        i(
            "TrainingJob",
            with(
                with(
                    job(),
                    "checkpoint",
                    json!({"claimName": "scratch", "mountPath": "/data/images"}),
                ),
                "datasets",
                json!([{"name": "images"}]),
            ),
            &["spec", "checkpoint's mountPath"],
        ),
        i(
            "TrainingJob",
            with(job(), "maxRuntime", json!("0s")),
            &["spec.maxRuntime", "longer than zero"],
        ),
        i(
            "Workspace",
            with(
                workspace(),
                "datasets",
                json!([{"name": "images", "mountPath": "/workspace/home"}]),
            ),
            &["spec.datasets", "home or scratch volume"],
        ),
        i(
            "Workspace",
            with(
                workspace(),
                "interactive",
                json!({"image": "jupyter:1", "pool": "h100", "maxLifetime": "0m"}),
            ),
            &["spec.interactive.maxLifetime", "longer than zero"],
        ),
        i(
            "Tenant",
            with(tenant(), "namespaces", json!(["kube-system"])),
            &[
                "spec.namespaces",
                "may not be default, aifactory-system or a kube-*",
            ],
        ),
        i(
            "GpuPool",
            with(
                pool(),
                "nodeSelector",
                json!({"matchExpressions": [{"key": "gpu", "operator": "Equals", "values": ["h100"]}]}),
            ),
            &["spec.nodeSelector", "operator must be In or NotIn"],
        ),
        i(
            "GpuPool",
            with(
                pool(),
                "nodeSelector",
                json!({"matchExpressions": [{"key": "gpu", "operator": "In"}]}),
            ),
            &["spec.nodeSelector", "(with values)"],
        ),
        // Specs whose children Kubernetes would refuse, found by the builder
        // property test (operator/tests/builders).
        i(
            "TrainingJob",
            with(job(), "env", json!([{"name": "1ST", "value": "a"}])),
            &["spec.env[0].name", "should match"],
        ),
        i(
            "TrainingJob",
            with(job(), "env", json!([{"name": "", "value": "a"}])),
            &["spec.env[0].name", "at least 1 chars"],
        ),
        i(
            "TrainingJob",
            with(
                job(),
                "env",
                json!([{"name": "A", "value": "a", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
            ),
            &["spec.env[0]", "a value or a valueFrom, not both"],
        ),
        i(
            "TrainingJob",
            with(
                job(),
                "env",
                json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}, "secretKeyRef": {"name": "s", "key": "k"}}}]),
            ),
            &["spec.env[0].valueFrom", "at most 1"],
        ),
        i(
            "TrainingJob",
            with(
                job(),
                "env",
                json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "My_Secret", "key": "k"}}}]),
            ),
            &["spec.env[0].valueFrom.secretKeyRef.name", "should match"],
        ),
        i(
            "TrainingJob",
            with(
                job(),
                "env",
                json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers"}}}]),
            ),
            &["spec.env[0].valueFrom.fieldRef.fieldPath", "should match"],
        ),
        i(
            "TrainingJob",
            with(
                job(),
                "env",
                json!([{"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1Mi"}}}]),
            ),
            &[
                "spec.env[0].valueFrom.resourceFieldRef",
                "divisor must be 1m or 1 for cpu",
            ],
        ),
        i(
            "TrainingJob",
            with(
                job(),
                "env",
                json!([{"name": "A", "valueFrom": {"fileKeyRef": {"key": "k", "path": "p", "volumeName": "v"}}}]),
            ),
            &[
                "spec.env[0].valueFrom",
                "fileKeyRef needs the EnvFiles feature gate",
            ],
        ),
        i(
            "TrainingJob",
            with(job(), "priority", json!("High_Priority")),
            &["spec.priority", "should match"],
        ),
        i(
            "TrainingJob",
            with(job(), "checkpoint", json!({"claimName": "Scratch Claim"})),
            &["spec.checkpoint.claimName", "should match"],
        ),
        i(
            "TrainingJob",
            with(job(), "datasets", json!([{"name": "Images"}])),
            &["spec.datasets[0].name", "should match"],
        ),
        i(
            "Workspace",
            with(workspace(), "storage.storageClassName", json!("Fast SSD")),
            &["spec.storage.storageClassName", "should match"],
        ),
        i(
            "Dataset",
            with(dataset(), "storageClassName", json!("fast_ssd")),
            &["spec.storageClassName", "should match"],
        ),
        i(
            "Dataset",
            with(
                dataset(),
                "source",
                json!({"url": "s3://bucket/x", "secretName": "s3 creds"}),
            ),
            &["spec.source.secretName", "should match"],
        ),
        i(
            "Dataset",
            with(
                dataset(),
                "accessModes",
                json!(["ReadWriteOncePod", "ReadOnlyMany"]),
            ),
            &["spec.accessModes", "ReadWriteOncePod may not be combined"],
        ),
        i(
            "Tenant",
            with(
                tenant(),
                "owners",
                json!([{"kind": "ServiceAccount", "name": "CI_Bot", "namespace": "ci"}]),
            ),
            &[
                "spec.owners[0]",
                "a ServiceAccount's name must be a lowercase DNS subdomain",
            ],
        ),
        i(
            "Tenant",
            with(tenant(), "storage", json!({"maxRequest": "-1Ti"})),
            &["spec.storage.maxRequest", "may not be negative"],
        ),
        i(
            "GpuPool",
            with(pool(), "gpu.resourceName", json!("example..com/gpu")),
            &["spec.gpu.resourceName", "should match"],
        ),
        i(
            "GpuPool",
            with(
                pool(),
                "gpu.resourceName",
                json!(format!("example.com/{}", "g".repeat(64))),
            ),
            &["spec.gpu.resourceName", "should match"],
        ),
        i(
            "GpuPool",
            with(
                pool(),
                "gpu.resourceName",
                json!("requests.example.com/gpu"),
            ),
            &["spec.gpu.resourceName", "must be an extended resource name"],
        ),
        // Images a pod refuses (found by the fuzz run: a session that could
        // never start held its GPUs).
        i(
            "TrainingJob",
            with(job(), "image", json!(" train:1")),
            &["spec.image", "may not begin or end with white space"],
        ),
        i(
            "TrainingJob",
            with(job(), "image", json!("train:1\n")),
            &["spec.image", "may not begin or end with white space"],
        ),
        i(
            "Workspace",
            with(
                workspace(),
                "interactive",
                json!({"image": "jupyter:1\u{a0}", "pool": "h100"}),
            ),
            &[
                "spec.interactive.image",
                "may not begin or end with white space",
            ],
        ),
    ]
}

#[tokio::test]
async fn names_that_would_make_invalid_children_are_refused_with_the_rule() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "names").await?;
    let long = |n: usize| "a".repeat(n);
    let refused = [
        (
            "TrainingJob",
            "my.job".to_string(),
            job(),
            "a TrainingJob name becomes its Service",
        ),
        ("TrainingJob", long(53), job(), "at most 52 characters"),
        (
            "TrainingJob",
            "1st-run".to_string(),
            job(),
            "starting with a letter",
        ),
        (
            "Workspace",
            "alice.ws".to_string(),
            workspace(),
            "a Workspace name becomes",
        ),
        (
            "Dataset",
            "images.v2".to_string(),
            dataset(),
            "a Dataset name becomes its volume claim",
        ),
        (
            "GpuPool",
            "h100.lux".to_string(),
            pool(),
            "a GpuPool name becomes the aifactory.dev/pool label",
        ),
        (
            "Tenant",
            long(64),
            tenant(),
            "a Tenant name becomes its default namespace",
        ),
        (
            "Tenant",
            "default".to_string(),
            tenant(),
            "gets a namespace named after it",
        ),
        (
            "Tenant",
            "kube-lab".to_string(),
            tenant(),
            "gets a namespace named after it",
        ),
    ];
    let mut failures = vec![];
    for (kind, name, spec, says) in &refused {
        match api_for(&client, kind, &ns.name)
            .create(&dry_run(), &object(kind, name, spec.clone()))
            .await
        {
            Ok(_) => failures.push(format!("{kind} {name} was accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(says) => {}
            Err(e) => failures.push(format!("{kind} {name}: {e}, not {says:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // At the limits, accepted: the rules refuse only what cannot run.
    for (kind, name, spec) in [
        ("TrainingJob", format!("j{}", long(51)), job()),
        ("Workspace", format!("w{}", long(62)), workspace()),
        ("Tenant", format!("t{}", long(62)), tenant()),
        (
            "Tenant",
            "default".to_string(),
            with(tenant(), "namespaces", json!(["lab-default"])),
        ),
        ("Dataset", "0-images".to_string(), dataset()),
    ] {
        api_for(&client, kind, &ns.name)
            .create(&dry_run(), &object(kind, &name, spec))
            .await
            .map_err(|e| anyhow::anyhow!("{kind} {name}: {e}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_the_field_and_the_reason() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "invalid").await?;
    let cases = invalid_cases();
    assert!(cases.len() >= 25);
    let mut failures = vec![];
    for (n, case) in cases.iter().enumerate() {
        let name = unique_name(&format!("invalid-{n}"));
        let api = api_for(&client, case.kind, &ns.name);
        match api
            .create(&dry_run(), &object(case.kind, &name, case.spec.clone()))
            .await
        {
            Ok(_) => failures.push(format!("#{n} {} {} was accepted", case.kind, case.spec)),
            Err(kube::Error::Api(status)) => {
                let missing: Vec<_> = case
                    .says
                    .iter()
                    .filter(|s| !status.message.contains(*s))
                    .collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "#{n} {}: {} — lacks {missing:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("#{n}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The base specs themselves are valid, so each refusal came from its change;
    // and so is every form of the fields the rules above narrow.
    let env = json!([
        {"name": "NCCL_DEBUG", "value": "INFO"},
        {"name": "my.env-name"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "ZONE", "value": "", "valueFrom": {"fieldRef": {"apiVersion": "v1",
            "fieldPath": "metadata.labels['topology.kubernetes.io/zone']"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": true}}},
        {"name": "CFG", "valueFrom": {"configMapKeyRef": {"name": "cfg.v1", "key": ".hidden"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": 1}}},
    ]);
    for (kind, spec) in [
        ("GpuPool", pool()),
        ("Tenant", tenant()),
        ("Dataset", dataset()),
        ("Workspace", workspace()),
        ("TrainingJob", job()),
        ("TrainingJob", with(job(), "env", env)),
        (
            "TrainingJob",
            with(
                with(job(), "priority", json!("high.priority")),
                "checkpoint",
                json!({"claimName": "workspace-alice-scratch"}),
            ),
        ),
        (
            "Dataset",
            with(
                with(dataset(), "accessModes", json!(["ReadWriteOncePod"])),
                "source",
                json!({"url": "s3://b/x", "secretName": "s3-creds"}),
            ),
        ),
        (
            "Tenant",
            with(
                with(
                    tenant(),
                    "owners",
                    json!([{"kind": "ServiceAccount", "name": "ci.bot", "namespace": "ci"}]),
                ),
                "storage",
                json!({"maxRequest": "0"}),
            ),
        ),
        (
            "GpuPool",
            with(
                pool(),
                "gpu.resourceName",
                json!(format!("{}/gpu", "a".repeat(244))),
            ),
        ),
    ] {
        api_for(&client, kind, &ns.name)
            .create(&dry_run(), &object(kind, &unique_name("valid"), spec))
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_training_jobs_shape_and_a_datasets_size_cannot_be_changed_the_wrong_way()
-> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "immutable").await?;
    let jobs = api_for(&client, "TrainingJob", &ns.name);
    jobs.create(&PostParams::default(), &object("TrainingJob", "run", job()))
        .await?;
    let changes = [
        (
            json!({"pool": "a100"}),
            "spec.pool",
            "pool cannot change after creation",
        ),
        (
            json!({"nodes": 4}),
            "spec.nodes",
            "nodes cannot change after creation",
        ),
        (
            json!({"gpusPerNode": 4}),
            "spec.gpusPerNode",
            "gpusPerNode cannot change after creation",
        ),
        (
            json!({"image": "train:2"}),
            "spec.image",
            "image cannot change after creation",
        ),
    ];
    for (change, field, why) in changes {
        let err = jobs
            .patch(
                "run",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": change})),
            )
            .await
            .expect_err("an immutable field changed");
        let msg = err.to_string();
        assert!(msg.contains(field) && msg.contains(why), "{msg}");
    }
    // What may change does: suspend and maxRestarts.
    jobs.patch(
        "run",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true, "maxRestarts": 2}})),
    )
    .await?;

    let datasets = api_for(&client, "Dataset", &ns.name);
    datasets
        .create(
            &PostParams::default(),
            &object("Dataset", "scans", json!({"size": "100Gi"})),
        )
        .await?;
    datasets
        .patch(
            "scans",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "200Gi"}})),
        )
        .await?;
    let err = datasets
        .patch(
            "scans",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "150Gi"}})),
        )
        .await
        .expect_err("a dataset shrank");
    assert!(
        err.to_string().contains("size can grow but never shrink"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_teaches_the_main_fields() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    let expectations = [
        ("trainingjobs.spec.gpusPerNode", "GPUs each pod gets"),
        ("trainingjobs.spec.maxRuntime", "DeadlineExceeded"),
        (
            "trainingjobs.status.pendingReason",
            "Why the job is not running yet",
        ),
        (
            "tenants.spec.quota.lendingLimit",
            "idle guarantee others may borrow",
        ),
        ("tenants.spec.residency.regions", "Regions"),
        ("gpupools.spec.powerCapKilowatts", "estimated draw"),
        ("datasets.spec.sharing.tenants", "read-only"),
        (
            "workspaces.spec.interactive.maxLifetime",
            "How long the session may live",
        ),
    ];
    for (field, text) in expectations {
        let out = kubectl(&["explain", field])?;
        assert!(
            out.contains(text),
            "kubectl explain {field} does not say {text:?}:\n{out}"
        );
    }
    // The root of each kind is documented too.
    assert!(kubectl(&["explain", "gpupools"])?.contains("identical GPU nodes"));
    let _ = TrainingJob::kind(&());
    Ok(())
}
