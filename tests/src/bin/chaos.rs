//! `make chaos`: the chaos run at scale against the local factory (see
//! `aifactory_tests::chaos`), its table written to `--out` (bench/chaos.md).
//!
//!   chaos [--short] [--nodes N] [--jobs N] [--tenants N] [--window S]
//!         [--job-seconds A-B] [--kill-after A-B] [--kills N] [--chaos-window S]
//!         [--freezes N] [--freeze-for S] [--apiserver-restarts N] [--etcd-restarts N]
//!         [--etcd-down S] [--delete-share F] [--seed N] [--operator PATH]
//!         [--max-failover S] [--drain-timeout S] [--restart-in-place] [--tag NAME]
//!         [--out FILE]
//!
//! Defaults: 200 nodes, 1,000 jobs over 20 min, kills until the 20 min of chaos are
//! over, one freeze, one restart each of kube-apiserver and etcd, the release
//! operator; `--short` starts from the test suite's run instead. A killed replica
//! comes back a second later under a new identity (a new pod); with
//! `--restart-in-place` under the same one (its container restarted in its pod).
//! Exits 1 when an invariant broke.
use aifactory_tests::chaos::{Config, run};
use anyhow::{Context, bail};
use std::time::Duration;

fn pair(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s.split_once('-').context("expected A-B")?;
    let (a, b) = (a.parse()?, b.parse()?);
    anyhow::ensure!(a <= b, "{a} > {b}");
    Ok((a, b))
}

fn secs(s: &str) -> anyhow::Result<Duration> {
    Ok(Duration::from_secs_f64(s.parse()?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = if args.iter().any(|a| a == "--short") {
        Config::short()
    } else {
        Config::full()
    };
    let mut out = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--short" {
            continue;
        }
        if flag == "--restart-in-place" {
            cfg.restart_in_place = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("see the head of tests/src/bin/chaos.rs");
            return Ok(());
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let v = value.as_str();
        match flag.as_str() {
            "--nodes" => cfg.nodes = v.parse()?,
            "--jobs" => cfg.jobs = v.parse()?,
            "--tenants" => cfg.tenants = v.parse()?,
            "--window" => cfg.window = secs(v)?,
            "--job-seconds" => cfg.job_seconds = pair(v)?,
            "--kill-after" => cfg.kill_after = pair(v)?,
            "--kills" => cfg.kills = Some(v.parse()?),
            "--chaos-window" => cfg.chaos_window = secs(v)?,
            "--freezes" => cfg.freezes = v.parse()?,
            "--freeze-for" => cfg.freeze_for = secs(v)?,
            "--apiserver-restarts" => cfg.apiserver_restarts = v.parse()?,
            "--etcd-restarts" => cfg.etcd_restarts = v.parse()?,
            "--etcd-down" => cfg.etcd_down = secs(v)?,
            "--delete-share" => cfg.delete_share = v.parse()?,
            "--seed" => cfg.seed = v.parse()?,
            "--operator" => cfg.operator = v.into(),
            "--max-failover" => cfg.max_failover = secs(v)?,
            "--drain-timeout" => cfg.drain_timeout = secs(v)?,
            "--tag" => cfg.tag = v.into(),
            "--out" => out = Some(std::path::PathBuf::from(v)),
            other => bail!("unknown option {other}"),
        }
    }
    println!("chaos: {cfg:?}");
    let report = run(&cfg).await?;
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let text = format!(
        "# Chaos at scale\n\n`make chaos` (`tests/src/bin/chaos.rs`), {} at commit {commit}: {}.\n\n{}",
        report.started_at.strftime("%Y-%m-%d %H:%M UTC"),
        if report.passed() {
            "every invariant held"
        } else {
            "INVARIANTS BROKEN"
        },
        report.table()
    );
    println!("{text}");
    if let Some(path) = out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, &text)?;
        println!("written to {}", path.display());
    }
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
