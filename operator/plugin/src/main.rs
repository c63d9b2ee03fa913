//! `kubectl factory`: the AI factory seen from a terminal — the queue of training
//! jobs, usage against quota and budget, the GPU pools, and why a job is not
//! running. A kubectl plugin: installed on the PATH as `kubectl-factory`, it runs
//! as `kubectl factory <command>`, with the user's kubeconfig and rights.
mod format;
mod pools;
mod queue;
mod table;
#[cfg(test)]
mod testing;
mod usage;
mod why;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kubectl factory",
    bin_name = "kubectl factory",
    version,
    about = "The AI factory from your terminal: the queue, usage, pools, and why a training job waits"
)]
struct Cli {
    /// Path of the kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Training jobs and sessions not running yet, per pool in queue order: position, GPUs,
    /// time waited, and why each waits. Default: every namespace you may list.
    Queue {
        /// Only this namespace.
        #[arg(short, long, conflicts_with = "tenant")]
        namespace: Option<String>,
        /// Only this tenant's namespaces.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Per tenant and pool: GPUs guaranteed and in use, GPU-hours and kWh this
    /// period, budget left.
    Usage {
        /// Only this tenant (needed when you may not list every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Why a training job is where it is: phase, queue position, pending reason,
    /// admission and placement, conditions, recent events.
    Why {
        /// Name of the TrainingJob.
        job: String,
        /// Its namespace (default: the context's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Per GPU pool: model, region, nodes ready/total, GPUs capacity/allocated/free,
    /// power drawn and its cap.
    Pools,
}

async fn client(cli: &Cli) -> anyhow::Result<Client> {
    let config = if cli.kubeconfig.is_none() && cli.context.is_none() {
        Config::infer()
            .await
            .context("no kubeconfig found (set KUBECONFIG or --kubeconfig)")?
    } else {
        let options = KubeConfigOptions {
            context: cli.context.clone(),
            ..Default::default()
        };
        let kubeconfig = match &cli.kubeconfig {
            Some(path) => Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?,
            None => Kubeconfig::read().context("reading the kubeconfig")?,
        };
        Config::from_custom_kubeconfig(kubeconfig, &options).await?
    };
    Ok(Client::try_from(config)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = client(&cli).await?;
    let now = jiff::Timestamp::now();
    match cli.command {
        Command::Queue { namespace, tenant } => {
            let scope = match (namespace, tenant) {
                (Some(ns), _) => queue::Scope::Namespace(ns),
                (None, Some(t)) => queue::Scope::Tenant(t),
                (None, None) => queue::Scope::All,
            };
            let (waiting, note) = queue::fetch(&client, scope).await?;
            if let Some(note) = note {
                eprintln!("{note}");
            }
            match queue::render(&waiting, now) {
                Some(table) => print!("{table}"),
                None => eprintln!("No training job or session is waiting."),
            }
        }
        Command::Usage { tenant } => {
            let tenants = usage::fetch(&client, tenant.as_deref()).await?;
            if tenants.is_empty() {
                eprintln!("No tenants.");
            } else {
                print!("{}", usage::render(&tenants));
            }
        }
        Command::Why { job, namespace } => {
            let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            let facts = why::fetch(&client, &ns, &job).await?;
            print!("{}", why::render(&facts, now));
        }
        Command::Pools => match pools::render(&pools::fetch(&client).await?) {
            Some(table) => print!("{table}"),
            None => eprintln!("No GPU pools."),
        },
    }
    Ok(())
}
