//! The Helm chart (charts/aifactory): it lints, renders the operator as asked
//! (two replicas, leader election, restricted security context, least-privilege
//! RBAC), and the API server of the local factory accepts every object it renders:
//! first a server-side dry run of all of it, then a real install into a fresh
//! namespace that enforces Pod Security `restricted`, then everything is deleted.
//! helm is built by hack/build-tools.sh into `$HELM_BIN_DIR` (hack/versions.sh).
use aifactory_tests::*;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn helm(args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg("source hack/versions.sh && echo $HELM_BIN_DIR")
        .current_dir(repo_root())
        .output()?;
    let helm = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("helm");
    if !helm.exists() {
        bail!(
            "{} is missing: build it with hack/build-tools.sh",
            helm.display()
        );
    }
    let out = Command::new(&helm)
        .args(args)
        .current_dir(repo_root())
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template` of the chart as release `release` in `namespace`, as objects.
fn render(release: &str, namespace: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec![
        "template",
        release,
        "charts/aifactory",
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    let yaml = helm(&args)?;
    let mut objects = vec![];
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "one {kind} expected, got {found:?}");
    found[0]
}

/// Writes objects as a multi-document YAML file for kubectl.
fn write_manifest(objects: &[&Value], name: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{name}-{}.yaml", std::process::id()));
    let docs: Vec<String> = objects
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(&path, docs.join("---\n"))?;
    Ok(path)
}

#[test]
fn the_chart_lints_with_default_and_optional_features() -> Result<()> {
    let out = helm(&["lint", "charts/aifactory", "--strict"])?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm(&[
        "lint",
        "charts/aifactory",
        "--strict",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "podDisruptionBudget.enabled=false",
    ])?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    Ok(())
}

#[test]
fn the_chart_renders_two_leader_elected_restricted_replicas() -> Result<()> {
    let objects = render("aifactory", "factory-system", &["--include-crds"])?;
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "run",
            "--log-format=json",
            "--log-level=info",
            "--concurrency=4",
            "--http-addr=0.0.0.0:8080",
            "--lease-namespace=factory-system",
            "--lease-name=aifactory-operator"
        ]
    );
    // The image hack/image.sh builds, tagged with the chart's appVersion (which
    // tests/tests/image.rs holds to the operator's version).
    let chart: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("charts/aifactory/Chart.yaml"),
    )?)?;
    assert_eq!(
        container["image"],
        format!(
            "ghcr.io/aifactory/aifactory:{}",
            chart["appVersion"].as_str().unwrap()
        )
    );
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        container["env"][0],
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["serviceAccountName"], "aifactory");

    // RBAC: the plain ClusterRole (the same file hack/operator.sh applies), bound
    // to the chart's ServiceAccount; the Lease through a Role in the namespace.
    let cluster_role = one(&objects, "ClusterRole");
    let file: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("charts/aifactory/templates/clusterrole.yaml"),
    )?)?;
    assert_eq!(*cluster_role, file, "clusterrole.yaml must render as it is");
    let binding = one(&objects, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "aifactory-operator");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "aifactory", "namespace": "factory-system"}])
    );
    let role = one(&objects, "Role");
    assert_eq!(role["metadata"]["namespace"], "factory-system");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["resources"], json!(["leases"]), "{rule}");
    }
    assert_eq!(
        one(&objects, "RoleBinding")["roleRef"]["name"],
        role["metadata"]["name"]
    );
    assert_eq!(
        one(&objects, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );
    assert_eq!(
        one(&objects, "Service")["spec"]["ports"][0]["name"],
        "http-metrics"
    );
    // The usage guard lets only the release's ServiceAccount (and cluster admins)
    // remove the usage finalizer.
    let policies = find(&objects, "ValidatingAdmissionPolicy");
    let named = |suffix: &str| {
        *policies
            .iter()
            .find(|p| p["metadata"]["name"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no ValidatingAdmissionPolicy *{suffix}"))
    };
    let guard = named("-usage-finalizer");
    let who = guard["spec"]["matchConditions"][1]["expression"]
        .as_str()
        .unwrap();
    assert!(
        who.contains(r#"["system:serviceaccount:factory-system:aifactory"]"#),
        "{who}"
    );
    // The queue guard: only the release's ServiceAccount writes GPU workloads in
    // tenant namespaces, and only the controller-manager's Job and StatefulSet
    // controllers make GPU pods there; each pool is the policies' parameter.
    let workloads = named("-queue-guard-workloads");
    let who = workloads["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        who.contains(r#"["system:serviceaccount:factory-system:aifactory"]"#),
        "{who}"
    );
    let pods = named("-queue-guard-pods");
    let who = pods["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        who.contains("system:serviceaccount:kube-system:job-controller")
            && !who.contains("aifactory\""),
        "{who}"
    );
    for policy in [workloads, pods] {
        assert_eq!(policy["spec"]["paramKind"]["kind"], "GpuPool");
        assert_eq!(
            policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"][0]["key"],
            "aifactory.dev/tenant"
        );
    }
    let bindings = find(&objects, "ValidatingAdmissionPolicyBinding");
    assert_eq!(bindings.len(), 3);
    for policy in &policies {
        assert!(
            bindings
                .iter()
                .any(|b| b["spec"]["policyName"] == policy["metadata"]["name"]),
            "{} has no binding",
            policy["metadata"]["name"]
        );
    }
    // Optional parts are off by default.
    assert!(find(&objects, "ServiceMonitor").is_empty());
    assert!(find(&objects, "ConfigMap").is_empty());

    // The CRDs Helm installs are the generated ones, byte for byte (the drift test
    // in operator/tests/crd_drift.rs holds the chart's copy to the Rust types).
    let crds = find(&objects, "CustomResourceDefinition");
    assert_eq!(crds.len(), 5);
    for entry in std::fs::read_dir(repo_root().join("crds"))? {
        let path = entry?.path();
        let chart_copy = repo_root()
            .join("charts/aifactory/crds")
            .join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read(&path)?,
            std::fs::read(&chart_copy)?,
            "{} differs from {}: run `make crds`",
            chart_copy.display(),
            path.display()
        );
    }
    Ok(())
}

#[test]
fn the_chart_renders_a_service_monitor_and_the_grafana_dashboard_when_asked() -> Result<()> {
    let objects = render(
        "factory",
        "monitoring-test",
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.labels.release=prometheus",
            "--set",
            "grafanaDashboard.enabled=true",
        ],
    )?;
    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        one(&objects, "Service")["spec"]["selector"]
    );
    let dashboard = one(&objects, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(dashboard["data"]["aifactory.json"].as_str().unwrap())?;
    let file: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("charts/aifactory/dashboards/aifactory.json"),
    )?)?;
    assert_eq!(shipped, file);
    Ok(())
}

#[tokio::test]
async fn the_api_server_accepts_every_object_the_chart_renders() -> Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart").await?;
    // The operator's pods must pass the strictest Pod Security level.
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns.name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})),
        )
        .await?;
    let objects = render(
        "aifactory",
        &ns.name,
        &["--include-crds", "--set", "grafanaDashboard.enabled=true"],
    )?;

    // 1. Everything, dry run: validated and admitted by the server, nothing stored.
    // The CRDs and the ClusterRole are the live ones the factory already runs on
    // (applied from the same files); forcing is safe in a dry run.
    let all: Vec<&Value> = objects.iter().collect();
    let manifest = write_manifest(&all, "chart-all")?;
    let out = kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
        "--field-manager",
        TEST_MANAGER,
        "-f",
        manifest.to_str().unwrap(),
    ])?;
    assert_eq!(
        out.lines().count(),
        objects.len(),
        "one line per object:\n{out}"
    );

    // 2. For real, all but the cluster-wide objects shared with the running
    // factory (the CRDs, the operator's ClusterRole, the usage guard, which
    // hack/operator.sh installs for the running operator): a test must not own them.
    let shared = [
        "CustomResourceDefinition",
        "ClusterRole",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    let ours: Vec<&Value> = objects
        .iter()
        .filter(|o| !shared.contains(&o["kind"].as_str().unwrap_or_default()))
        .collect();
    let manifest = write_manifest(&ours, "chart-release")?;
    let path = manifest.to_str().unwrap();
    let applied = kubectl(&[
        "apply",
        "--server-side",
        "--field-manager",
        TEST_MANAGER,
        "-f",
        path,
    ]);
    let result = async {
        let applied = applied?;
        for o in &ours {
            let kind = o["kind"].as_str().unwrap();
            let name = o["metadata"]["name"].as_str().unwrap();
            let mut args = vec!["get", kind, name, "-o", "name"];
            if let Some(namespace) = o["metadata"]["namespace"].as_str() {
                args.extend(["-n", namespace]);
            }
            kubectl(&args).with_context(|| format!("{kind} {name} after apply:\n{applied}"))?;
        }
        // Pod Security `restricted` admitted the operator's pods: the ReplicaSet
        // created both (kwok may even "run" them; the image never matters here).
        let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
        wait_for(
            "both operator pods created under Pod Security restricted",
            Duration::from_secs(60),
            || {
                let pods = pods.clone();
                async move {
                    let list = pods
                        .list(&ListParams::default().labels("app.kubernetes.io/name=aifactory"))
                        .await?;
                    Ok((list.items.len() == 2).then_some(()))
                }
            },
        )
        .await
    }
    .await;

    // 3. Delete it all (the namespace goes with the guard).
    kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f", path])?;
    std::fs::remove_file(&manifest).ok();
    result?;
    let binding = one(&objects, "ClusterRoleBinding")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(
        "the release's ClusterRoleBinding deleted",
        Duration::from_secs(30),
        || {
            let binding = binding.clone();
            async move {
                let out = kubectl(&[
                    "get",
                    "clusterrolebinding",
                    &binding,
                    "--ignore-not-found",
                    "-o",
                    "name",
                ])?;
                Ok(out.trim().is_empty().then_some(()))
            }
        },
    )
    .await
}
