//! The short chaos run (`aifactory_tests::chaos`, `make chaos` at scale): two
//! replicas on 20 nodes of their own run 60 jobs while the leader is SIGKILLed
//! twice and frozen past its lease once, and kube-apiserver is restarted; the
//! independent checker must find no over-admission, no job lost or run twice, no
//! write of a deposed leader, no finalizer left behind, a ledger equal to the jobs'
//! hours (± 1 %), and every failover within 25 s. A test binary of its own, since it
//! replaces the operator every other test uses (it runs again afterwards, started by
//! `hack/operator.sh`) and restarts the API server.
use aifactory_tests::chaos::{Config, run};
use aifactory_tests::repo_root;
use std::process::Command;

#[tokio::test]
async fn two_replicas_through_kills_a_freeze_and_an_apiserver_restart_keep_every_invariant()
-> anyhow::Result<()> {
    // The operator binary the replicas run, as hack/operator.sh builds it.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "aifactory", "--bin", "aifactory"])
        .current_dir(repo_root())
        .status()?;
    anyhow::ensure!(status.success(), "building the operator failed");
    let report = run(&Config::short()).await?;
    let table = report.table();
    println!("{table}");
    assert!(report.passed(), "invariants broken under chaos:\n{table}");
    Ok(())
}
