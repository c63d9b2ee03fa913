//! The operator process itself: health, readiness and Prometheus metrics are
//! served, and a second replica stands by without writing while the first leads.
use aifactory_tests::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
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
    require_operator(&client).await?;
    let base = aifactory_tests::operator_addr();
    assert_eq!(get(&format!("http://{base}/healthz"))?.0, 200);
    let (code, body) = get(&format!("http://{base}/readyz"))?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("leader: true"), "{body}");
    let (code, metrics) = get(&format!("http://{base}/metrics"))?;
    assert_eq!(code, 200);
    for series in [
        "aifactory_reconcile_total{controller=\"gpupool\"}",
        "aifactory_reconcile_total{controller=\"tenant\"}",
        "aifactory_reconcile_duration_seconds_bucket{",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from /metrics:\n{metrics}"
        );
    }
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
        // Two renewal periods later the first replica still leads, and the standby
        // never started its controllers.
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
