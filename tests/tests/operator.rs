//! The operator process itself: health, readiness and Prometheus metrics are
//! served, and a second replica stands by without writing while the first leads.
use aifactory_api::{GpuPool, Tenant};
use aifactory_tests::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "5", url])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

#[tokio::test]
async fn the_operator_serves_health_readiness_and_reconcile_metrics() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let base = aifactory_tests::operator_addr();
    assert_eq!(get(&format!("http://{base}/healthz"))?.0, 200);
    let (code, body) = get(&format!("http://{base}/readyz"))?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("leader: true"), "{body}");
    // A pool (of no nodes) and a tenant of this test's own, so the two controllers
    // have reconciled something even on a fresh factory where no other test ran.
    let pool = unique_name("metrics-pool");
    let tenant = unique_name("metrics");
    let _cleanup = Cleanup(vec![("gpupool", pool.clone()), ("tenant", tenant.clone())]);
    let gp: GpuPool = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": pool},
        "spec": {"nodeSelector": {"matchLabels": {TEST_GROUP: pool}},
                 "gpu": {"model": "H100-80GB", "perNode": 8, "powerWatts": 700},
                 "location": {"region": "eu-west"}}
    }))?;
    Api::<GpuPool>::all(client.clone())
        .create(&PostParams::default(), &gp)
        .await?;
    let tn: Tenant = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"owners": [{"kind": "User", "name": format!("{tenant}-owner")}]}
    }))?;
    Api::<Tenant>::all(client.clone())
        .create(&PostParams::default(), &tn)
        .await?;
    let series = [
        "aifactory_reconcile_total{controller=\"gpupool\"}",
        "aifactory_reconcile_total{controller=\"tenant\"}",
        "aifactory_reconcile_duration_seconds_bucket{",
    ];
    let metrics = format!("http://{base}/metrics");
    let metrics = metrics.as_str();
    let last = std::sync::Mutex::new(String::new());
    let last = &last;
    let found = wait_for(
        "the reconcile series in /metrics",
        Duration::from_secs(60),
        || async move {
            let (code, body) = get(metrics)?;
            let all = code == 200 && series.iter().all(|s| body.contains(s));
            *last.lock().unwrap() = body;
            Ok(all.then_some(()))
        },
    )
    .await;
    found.map_err(|e| anyhow::anyhow!("{e}; last /metrics:\n{}", last.lock().unwrap()))?;
    Ok(())
}

#[tokio::test]
async fn a_second_replica_stands_by_while_the_first_holds_the_lease() -> anyhow::Result<()> {
    let client = admin().await?;
    require_operator(&client).await?;
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let leader = leases
        .get("aifactory-operator")
        .await?
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let binary = repo_root().join("target/debug/aifactory");
    let kubeconfig = state_dir().join("users/aifactory-operator.kubeconfig");
    let log = std::fs::File::create(
        std::env::temp_dir().join(format!("standby-{}.log", std::process::id())),
    )?;
    let log_path = std::env::temp_dir().join(format!("standby-{}.log", std::process::id()));
    let standby_addr = free_local_addr()?;
    let ready_url = format!("http://{standby_addr}/readyz");
    let ready_url = ready_url.as_str();
    let mut standby = Command::new(&binary)
        .args([
            "run",
            "--http-addr",
            &standby_addr,
            "--identity",
            "standby-replica",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let result = async {
        wait_for(
            "the standby to be ready",
            Duration::from_secs(30),
            || async move { Ok((get(ready_url)?.0 == 200).then_some(())) },
        )
        .await?;
        wait_for(
            "the standby to say it stands by",
            Duration::from_secs(30),
            || {
                let log_path = log_path.clone();
                async move {
                    Ok(std::fs::read_to_string(&log_path)?
                        .contains("standing by")
                        .then_some(()))
                }
            },
        )
        .await?;
        // Five renewals (2 s apart) later the first replica still leads, and the
        // standby never started its controllers.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let holder = leases
            .get("aifactory-operator")
            .await?
            .spec
            .unwrap()
            .holder_identity
            .unwrap();
        assert_eq!(holder, leader);
        let log = std::fs::read_to_string(&log_path)?;
        assert!(
            !log.contains("controllers running"),
            "the standby ran controllers:\n{log}"
        );
        let (_, body) = get(ready_url)?;
        assert!(body.contains("leader: false"), "{body}");
        anyhow::Ok(())
    }
    .await;
    // SIGTERM: a standby exits cleanly.
    Command::new("kill")
        .args(["-TERM", &standby.id().to_string()])
        .status()?;
    let status = standby.wait()?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    std::fs::remove_file(&log_path).ok();
    result.map_err(|e| anyhow::anyhow!("{e}\nstandby log:\n{log}"))?;
    assert!(status.success(), "the standby exited with {status}");
    Ok(())
}
