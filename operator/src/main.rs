//! `aifactory run`: the operator. Waits for its CRDs, serves /healthz, /readyz and
//! /metrics, takes the leader Lease, then runs every controller until SIGTERM.
use aifactory::context::Context;
use aifactory::controllers::{dataset, gpupool, pods, tenant, trainingjob, workspace};
use aifactory::fence::{Fence, Limits, fenced_client};
use aifactory::leader::{Election, Timing};
use aifactory::metrics::Metrics;
use aifactory::server::{self, Health};
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "aifactory",
    about = "The aifactory operator: a multi-tenant AI factory on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every controller (the operator).
    Run(RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "AIFACTORY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, default_value = "info", env = "AIFACTORY_LOG")]
    log_level: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080", env = "AIFACTORY_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// Objects each controller reconciles at once.
    #[arg(long, default_value_t = 4, env = "AIFACTORY_CONCURRENCY")]
    concurrency: u16,
    /// Namespace of the leader-election Lease.
    #[arg(long, default_value = "default", env = "AIFACTORY_LEASE_NAMESPACE")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        default_value = "aifactory-operator",
        env = "AIFACTORY_LEASE_NAME"
    )]
    lease_name: String,
    /// This replica's identity (defaults to the pod or host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Requests per second to the API server, sustained (the leader lease aside).
    #[arg(long, default_value_t = 100, env = "AIFACTORY_API_QPS")]
    api_qps: u32,
    /// Requests to the API server that may go at once above that rate.
    #[arg(long, default_value_t = 200, env = "AIFACTORY_API_BURST")]
    api_burst: u32,
    /// Requests to the API server in flight at once.
    #[arg(long, default_value_t = 64, env = "AIFACTORY_API_IN_FLIGHT")]
    api_in_flight: usize,
    /// How long to wait for the CRDs to be established.
    #[arg(long, default_value_t = 60)]
    crd_timeout_seconds: u64,
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: logs that go to files stay plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Waits until every aifactory CRD is Established, or fails naming the missing ones.
async fn wait_for_crds(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut missing = vec![];
        for (_, crd) in aifactory_api::crds() {
            let name = crd.name_any();
            let established = api
                .get_opt(&name)
                .await?
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if !established {
                missing.push(name);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "CRDs not installed or not established: {}. Install them with `kubectl apply --server-side -f crds/`",
                missing.join(", ")
            );
        }
        tracing::warn!(?missing, "waiting for CRDs to be established");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn terminate() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, &args.log_level);
    let config = kube::Config::infer()
        .await
        .context("connecting to the Kubernetes API")?;
    // The only client not fenced: the election's, which is how leadership is
    // gained and kept; besides the Lease it only reads (wait_for_crds).
    let client = Client::try_from(config.clone()).context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    tokio::spawn(server::serve(
        args.http_addr,
        metrics.clone(),
        health.clone(),
    ));
    wait_for_crds(&client, Duration::from_secs(args.crd_timeout_seconds)).await?;
    health.ready.store(true, Ordering::Relaxed);

    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "aifactory".into())
            + &format!("-{}", std::process::id())
    });
    let election = Election {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        timing: Timing::default(),
    };
    election.timing.validate().map_err(anyhow::Error::msg)?;
    let fence = Fence::new();
    // Every write of every controller and of the admission pass goes through this
    // client, so none goes out once the fence is shut.
    // Limited, so a burst of submissions cannot make the operator flood the API
    // server the whole factory shares; the election's client is not, so the
    // lease is never renewed late behind a queue of reconciles.
    let limits = Limits {
        qps: args.api_qps,
        burst: args.api_burst,
        in_flight: args.api_in_flight,
    };
    let writer =
        fenced_client(config, fence.clone(), limits).context("building the operator's client")?;
    // A standby waits here, writing nothing, until the leader goes.
    tokio::select! {
        _ = election.acquire(&client, &fence) => {},
        _ = terminate() => { tracing::info!("terminated while standing by"); return Ok(()); }
    }
    health.leader.store(true, Ordering::Relaxed);

    let ctx = Context::new(writer.clone(), metrics, identity);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // Tenants follow a pool's capacity and GPU resource, not its allocation: a
    // pool's status changes at every admission, its tenants have nothing to do.
    let (pool_reader, pool_stream) = aifactory::cache::watch_changes(
        Api::all(writer.clone()),
        watcher::Config::default(),
        tenant::pool_fingerprint,
    );
    let mut controllers = tokio::task::JoinSet::new();
    controllers.spawn(gpupool::run(
        writer.clone(),
        ctx.clone(),
        pods::reflect(writer.clone()),
        args.concurrency,
        stopped(),
    ));
    controllers.spawn(tenant::run(
        writer.clone(),
        ctx.clone(),
        (pool_reader, pool_stream),
        args.concurrency,
        stopped(),
    ));
    controllers.spawn(trainingjob::run(
        writer.clone(),
        ctx.clone(),
        args.concurrency,
        stopped(),
    ));
    controllers.spawn(dataset::run(
        writer.clone(),
        ctx.clone(),
        args.concurrency,
        stopped(),
    ));
    controllers.spawn(workspace::run(
        writer.clone(),
        ctx.clone(),
        args.concurrency,
        stopped(),
    ));
    tracing::info!("controllers running");

    let outcome = tokio::select! {
        _ = terminate() => { tracing::info!("SIGTERM: finishing reconciles in flight"); Ok(()) }
        lost = election.hold(&client, &fence) => Err(anyhow::anyhow!("{lost}; exiting, to start again as a standby")),
        _ = controllers.join_next() => Err(anyhow::anyhow!("a controller stopped unexpectedly")),
    };
    let _ = stop_tx.send(true);
    if fence.open_until().is_some() {
        // Still leading: keep the lease while reconciles in flight finish, so their
        // writes are the leader's.
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            while controllers.join_next().await.is_some() {}
        });
        tokio::select! {
            _ = drained => {},
            lost = election.hold(&client, &fence) => tracing::warn!("{lost} while finishing reconciles"),
        }
    }
    // Nothing may be written once the lease is free (a reconcile that did not
    // finish is cut off here).
    fence.shut();
    health.leader.store(false, Ordering::Relaxed);
    // Bounded: an unreachable API server must not hold the exit past the pod's
    // termination grace period (30 s, of which the drain takes up to 20 s).
    let _ = tokio::time::timeout(Duration::from_secs(5), election.release(&client)).await;
    outcome
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
    }
}
