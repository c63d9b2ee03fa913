//! Harness for integration tests against the local factory: a real etcd,
//! kube-apiserver, controller-manager, scheduler and kwok started by
//! `hack/factory-up.sh` (or any cluster `KUBECONFIG` points at). Never a fake API
//! server.
//!
//! Each test takes its own namespaces (`TestNamespace`), removed when the guard
//! drops, even when the test panics.
pub mod chaos;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Field manager the tests write with.
pub const TEST_MANAGER: &str = "aifactory-tests";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The local factory's state directory (kubeconfigs, logs, audit log, the
/// operator's pid file), as the hack scripts use it: `AIFACTORY_STATE`, else the
/// default factory's. `hack/test.sh` sets it to the suite's own factory.
pub fn state_dir() -> PathBuf {
    std::env::var_os("AIFACTORY_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/aifactory/factory")
        })
}

/// Where the operator `hack/operator.sh` started serves /healthz and /metrics:
/// `AIFACTORY_OPERATOR_ADDR`, else port 18080 shifted by `AIFACTORY_PORT_OFFSET`
/// like the factory's own ports (hack/factory-lib.sh).
pub fn operator_addr() -> String {
    std::env::var("AIFACTORY_OPERATOR_ADDR").unwrap_or_else(|_| {
        let offset: u16 = std::env::var("AIFACTORY_PORT_OFFSET")
            .ok()
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        format!("127.0.0.1:{}", 18080 + offset)
    })
}

/// The kubeconfig the tests use: the admin one of the factory `AIFACTORY_STATE`
/// names (the cluster the hack scripts the tests call act on, whatever
/// `KUBECONFIG` says), else `KUBECONFIG`, else the default local factory's.
pub fn admin_kubeconfig() -> PathBuf {
    if std::env::var_os("AIFACTORY_STATE").is_some() {
        return state_dir().join("admin.kubeconfig");
    }
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir().join("admin.kubeconfig"))
}

/// A loopback address with a port nobody listens on now, for a process a test
/// starts (a fixed port would collide with another factory's operator).
pub fn free_local_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Number of simulated GPU nodes the factory was started with.
pub fn expected_gpu_nodes() -> usize {
    std::env::var("AIFACTORY_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16)
}

async fn client_from(path: &Path, impersonate: Option<(&str, &[&str])>) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| {
        format!(
            "reading {}: is the local factory running? Start it with `make factory-up`",
            path.display()
        )
    })?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    if let Some((user, groups)) = impersonate {
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    }
    Ok(Client::try_from(config)?)
}

/// A client with cluster-admin rights on the local factory.
pub async fn admin() -> Result<Client> {
    let client = client_from(&admin_kubeconfig(), None).await?;
    client.apiserver_version().await.context(
        "the local factory's API server does not answer: start it with `make factory-up`",
    )?;
    Ok(client)
}

/// A client acting as `user` in `groups`, through impersonation by the admin.
pub async fn impersonate(user: &str, groups: &[&str]) -> Result<Client> {
    client_from(&admin_kubeconfig(), Some((user, groups))).await
}

/// A kubeconfig for `user` in `groups` with its own client certificate, issued by
/// the factory's CA through `hack/factory-user.sh`.
pub fn user_kubeconfig(user: &str, groups: &[&str]) -> Result<PathBuf> {
    let out = Command::new(repo_root().join("hack/factory-user.sh"))
        .arg(user)
        .args(groups)
        .output()
        .context("running hack/factory-user.sh")?;
    if !out.status.success() {
        bail!(
            "factory-user.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(
        String::from_utf8(out.stdout)?
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    ))
}

/// A client authenticating as `user` with its own client certificate.
pub async fn user_with_certificate(user: &str, groups: &[&str]) -> Result<Client> {
    client_from(&user_kubeconfig(user, groups)?, None).await
}

/// Runs `hack/operator.sh <action>` (`start`, `stop`) for the suite's operator.
pub fn operator_sh(action: &str) -> Result<()> {
    let out = Command::new(repo_root().join("hack/operator.sh"))
        .arg(action)
        .output()?;
    if !out.status.success() {
        bail!(
            "operator.sh {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The cached directory of the local factory's binaries (kubectl among them).
pub fn bin_dir() -> Result<PathBuf> {
    let out = Command::new("bash")
        .arg("-c")
        .arg("source hack/versions.sh && echo $BIN_DIR")
        .current_dir(repo_root())
        .output()?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The `kubectl-factory` plugin binary, built once per test binary with cargo (as
/// `cargo install` would).
pub fn kubectl_factory_binary() -> &'static PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "kubectl-factory",
                "--bin",
                "kubectl-factory",
            ])
            .current_dir(repo_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building kubectl-factory failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        target.join("debug/kubectl-factory")
    })
}

/// Runs `kubectl-factory args` with `kubeconfig`: its stdout, or an error with its
/// stderr. The output is printed too: what a user would have seen, shown when a
/// test fails.
pub fn kubectl_factory(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(kubectl_factory_binary())
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .context("running kubectl-factory")?;
    if !out.status.success() {
        bail!(
            "kubectl factory {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    println!("$ kubectl factory {}\n{stdout}", args.join(" "));
    Ok(stdout)
}

/// Runs the factory's kubectl with the admin kubeconfig; returns stdout or fails
/// with stderr.
pub fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new(bin_dir()?.join("kubectl"))
        .env("KUBECONFIG", admin_kubeconfig())
        .args(args)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process: `<prefix>-<pid>-<n>`, a valid DNS label.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A namespace owned by one test; deleted (without waiting) when dropped.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
}

impl TestNamespace {
    /// Creates a fresh namespace named after `prefix`.
    pub async fn new(client: &Client, prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("aifactory.dev/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { name })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await: kubectl deletes without waiting, so a panicking test
        // still leaves nothing behind.
        let _ = kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout`
/// with `what` and the last observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until Tenant `name` is Ready (every child of its namespaces in place,
/// its owners' RoleBindings included).
pub async fn tenant_ready(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let tenants = Api::<aifactory_api::Tenant>::all(client.clone());
    wait_for(&format!("tenant {name} Ready"), timeout, || async {
        let t = tenants.get(name).await?;
        Ok(t.status
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .then_some(()))
    })
    .await
}

/// Installs the CRDs from `crds/` with server-side apply and waits until every one
/// is Established. Idempotent: tests call it first.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let mut names = vec![];
    for entry in std::fs::read_dir(repo_root().join("crds"))? {
        let path = entry?.path();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let name = crd.metadata.name.clone().context("CRD without name")?;
        api.patch(
            &name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {}", path.display()))?;
        names.push(name);
    }
    for name in names {
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// The HTTP status code of a kube API error, if it is one.
pub fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Fails with a clear message unless an aifactory operator holds its leader Lease
/// (started by `make test`, or by hand with `hack/operator.sh start`).
pub async fn require_operator(client: &Client) -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let lease = Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("aifactory-operator")
        .await?;
    let fresh = lease.and_then(|l| l.spec).is_some_and(|s| {
        s.holder_identity.is_some_and(|h| !h.is_empty())
            && s.renew_time
                .is_some_and(|t| t.0.as_second() + 30 > jiff::Timestamp::now().as_second())
    });
    if !fresh {
        bail!(
            "no aifactory operator is running against the local factory: start it with `hack/operator.sh start`"
        );
    }
    Ok(())
}

/// Simulated GPU nodes owned by one test, so tests that move nodes between pools
/// never touch each other's: each carries `aifactory.dev/test-group=<group>`.
/// Deleted when dropped.
pub struct FakeNodes {
    /// The value of the `aifactory.dev/test-group` label.
    pub group: String,
    /// Names of the nodes.
    pub names: Vec<String>,
}

/// Label key grouping a test's nodes.
pub const TEST_GROUP: &str = "aifactory.dev/test-group";

impl FakeNodes {
    /// `count` Ready kwok nodes of `gpus` GPUs of `model` (label
    /// `nvidia.com/gpu.product`), in the test group `group`.
    pub async fn create(
        client: &Client,
        group: &str,
        count: usize,
        model: &str,
        gpus: u32,
    ) -> Result<Self> {
        let mut nodes = Self {
            group: group.to_string(),
            names: vec![],
        };
        for i in 0..count {
            nodes
                .add(client, &format!("{group}-{i}"), model, gpus)
                .await?;
        }
        Ok(nodes)
    }

    /// Adds one node named `name`; waits until kwok has made it Ready.
    pub async fn add(&mut self, client: &Client, name: &str, model: &str, gpus: u32) -> Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {TEST_GROUP: self.group, "type": "kwok-test", "kubernetes.io/hostname": name,
                           "nvidia.com/gpu.product": model,
                           "topology.aifactory.dev/block": "block-t", "topology.aifactory.dev/rack": "rack-t"}},
            "status": {"capacity": {"cpu": "64", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": gpus.to_string()},
                       "allocatable": {"cpu": "64", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": gpus.to_string()}}
        }))?;
        let api = Api::<Node>::all(client.clone());
        api.create(&PostParams::default(), &node).await?;
        self.names.push(name.to_string());
        wait_for(
            &format!("node {name} Ready"),
            Duration::from_secs(60),
            || {
                let api = api.clone();
                async move {
                    let n = api.get(name).await?;
                    Ok(n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                        .then_some(()))
                }
            },
        )
        .await
    }
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "nodes",
            "-l",
            &format!("{TEST_GROUP}={}", self.group),
            "--wait=false",
        ]);
    }
}

/// Objects a test created, deleted (without waiting) when the test ends, newest
/// first, even when it panics: `(kind, name)` as kubectl names them.
pub struct Cleanup(pub Vec<(&'static str, String)>);

impl Cleanup {
    /// A guard for one object.
    pub fn one(kind: &'static str, name: impl Into<String>) -> Self {
        Self(vec![(kind, name.into())])
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (kind, name) in self.0.iter().rev() {
            let _ = kubectl(&["delete", kind, name, "--wait=false", "--ignore-not-found"]);
        }
    }
}

/// A dedicated GpuPool `<group>-pool` of 8-GPU H100s (700 W, eu-west) over the
/// test's nodes of `group`, once it reports all `nodes` of them Ready with their
/// GPUs; the guard deletes it.
pub async fn dedicated_pool(
    client: &Client,
    group: &str,
    nodes: usize,
) -> Result<(String, Cleanup)> {
    use aifactory_api::GpuPool;
    let pool = format!("{group}-pool");
    let gp: GpuPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": pool},
        "spec": {"nodeSelector": {"matchLabels": {TEST_GROUP: group}},
                 "gpu": {"model": "H100-80GB", "perNode": 8, "powerWatts": 700},
                 "dedicated": true, "location": {"region": "eu-west"}}
    }))?;
    let pools = Api::<GpuPool>::all(client.clone());
    pools.create(&PostParams::default(), &gp).await?;
    let cleanup = Cleanup::one("gpupool", pool.clone());
    let want = 8 * nodes as i64;
    wait_for(
        &format!("pool {pool} with {want} GPUs"),
        Duration::from_secs(90),
        || {
            let pools = pools.clone();
            let pool = pool.clone();
            async move {
                let p = pools.get(&pool).await?;
                Ok(p.status
                    .is_some_and(|s| s.gpus.allocatable == want && s.ready_nodes == nodes as i32)
                    .then_some(()))
            }
        },
    )
    .await?;
    Ok((pool, cleanup))
}
