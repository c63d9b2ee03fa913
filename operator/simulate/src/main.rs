//! `simulate`: replay a trace of jobs against a factory with the real admission
//! engine, or generate a synthetic factory and trace. See the crate docs.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use aifactory_simulate::{Options, Simulation, factory, generate, report, trace};

/// Much faster than glibc malloc for the engine's allocation pattern (see
/// Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

/// The AI factory's digital twin: replay a trace of jobs against GpuPool and
/// Tenant YAML with the operator's own admission engine, and report utilisation,
/// waits, fairness, preemptions and energy.
#[derive(Parser)]
#[command(name = "simulate", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic factory (YAML) and trace (CSV) of any size.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Factory file: GpuPool, Tenant, PriorityClass, SimulatedNodes and Include
    /// documents (repeat to read several files).
    #[arg(long = "factory", value_name = "FILE")]
    factory: Vec<PathBuf>,
    /// Trace: CSV with a header — submit, tenant, pool, nodes, gpusPerNode,
    /// duration, and optionally priority and pack — or a YAML list of such rows
    /// (.yaml/.yml).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Also write the report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Seconds between admission passes; 0 = a pass at the time of every event.
    #[arg(long, default_value_t = 60)]
    tick: u64,
    /// Seconds after which a waiting job is starving and holds its pool.
    #[arg(long, default_value_t = 900)]
    starving_after: u64,
    /// GPU-hours charged per GPU admitted within one pass, for fair share.
    #[arg(long, default_value_t = 1.0)]
    pass_charge_hours: f64,
    /// Budget and fair-share period in days (usage resets); 0 = never resets.
    #[arg(long, default_value_t = 30.0)]
    period_days: f64,
    /// Stop at this simulated time (seconds); running jobs count up to it.
    #[arg(long, value_name = "SECONDS")]
    until: Option<u64>,
    /// Write every event (submit, admit, waiting with its reason, preempted,
    /// complete, refused) as CSV: why a job waited, whom it evicted, where it ran.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Print nothing on stdout (with --json).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Jobs in the trace.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: u64,
    /// Nodes in the factory, over all pools.
    #[arg(long, default_value_t = 1_250)]
    nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// GPU pools.
    #[arg(long, default_value_t = 2)]
    pools: u32,
    /// Tenants.
    #[arg(long, default_value_t = 40)]
    tenants: u32,
    /// Offered load: GPU-hours asked ÷ GPU-hours available over the trace.
    #[arg(long, default_value_t = 0.9)]
    load: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the factory YAML.
    #[arg(long, value_name = "FILE")]
    factory_out: PathBuf,
    /// Where to write the trace CSV.
    #[arg(long, value_name = "FILE")]
    trace_out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Generate(args)) => generate(args),
        None => run(cli.run),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("simulate: {e:#}");
            std::process::exit(2);
        }
    }
}

fn generate(a: GenerateArgs) -> Result<bool> {
    if a.pools == 0 || a.tenants == 0 || a.nodes < a.pools || a.gpus_per_node == 0 {
        bail!("need at least one pool, one tenant, one node per pool and one GPU per node");
    }
    let spec = generate::Spec {
        jobs: a.jobs,
        nodes: a.nodes,
        gpus_per_node: a.gpus_per_node,
        pools: a.pools,
        tenants: a.tenants,
        load: a.load,
        seed: a.seed,
    };
    let create = |p: &PathBuf| {
        File::create(p)
            .map(|f| BufWriter::with_capacity(1 << 20, f))
            .with_context(|| format!("cannot write {}", p.display()))
    };
    let mut factory = create(&a.factory_out)?;
    let mut trace = create(&a.trace_out)?;
    generate::write(&spec, &mut factory, &mut trace)?;
    factory.flush()?;
    trace.flush()?;
    eprintln!(
        "simulate: wrote {} ({} nodes × {} GPUs) and {} ({} jobs)",
        a.factory_out.display(),
        a.nodes,
        a.gpus_per_node,
        a.trace_out.display(),
        a.jobs
    );
    Ok(true)
}

fn run(a: RunArgs) -> Result<bool> {
    if a.factory.is_empty() {
        bail!("--factory FILE is required (or use `simulate generate`)");
    }
    let Some(trace_path) = a.trace else {
        bail!("--trace FILE is required");
    };
    let loading = Instant::now();
    let factory = factory::load(&a.factory)?;
    let rows = trace::load(&trace_path)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let options = Options {
        tick: a.tick,
        starving_after: a.starving_after,
        pass_charge_hours: a.pass_charge_hours,
        period: (a.period_days > 0.0).then(|| (a.period_days * 86_400.0).round() as u64),
        until: a.until,
    };
    let mut sim = Simulation::new(&factory, &rows, options)?;
    if let Some(path) = &a.log {
        let file =
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        sim = sim.log_to(Box::new(BufWriter::with_capacity(1 << 20, file)))?;
    }
    let mut report = sim.run();
    report.performance.load_seconds = load_seconds;
    report.performance.peak_rss_kib = report::peak_rss_kib();
    if !a.quiet {
        print!("{}", report.markdown());
    }
    if let Some(path) = &a.json {
        let file =
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(file), &report)?;
    }
    if !report.checks.ok() {
        eprintln!("simulate: an invariant was broken: {:?}", report.checks);
        return Ok(false);
    }
    Ok(true)
}
