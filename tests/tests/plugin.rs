//! `kubectl factory` (operator/plugin) against the local factory: a test's own pool,
//! a tenant whose quota is full with one running job and two more waiting, and
//! what each command prints about them. The statuses are the real operator's.
use aifactory_api::{GpuPool, Tenant, TrainingJob, TrainingJobPhase};
use aifactory_tests::*;
use anyhow::Result;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// Runs `kubectl-factory args` with the admin kubeconfig; stdout, or fails with stderr.
fn factory(args: &[&str]) -> Result<String> {
    kubectl_factory(&admin_kubeconfig(), args)
}

async fn submit(client: &Client, ns: &str, name: &str, pool: &str, gpus: i32) -> Result<()> {
    let tj: TrainingJob = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"pool": pool, "nodes": 1, "gpusPerNode": gpus, "image": "registry.example/trainer:1"}
    }))?;
    Api::<TrainingJob>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &tj)
        .await?;
    Ok(())
}

async fn wait_job(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&TrainingJob) -> bool,
) -> Result<TrainingJob> {
    let api = Api::<TrainingJob>::namespaced(client.clone(), ns);
    let waited = wait_for(&format!("job {ns}/{name}: {what}"), WAIT, || {
        let api = api.clone();
        let check = &check;
        async move {
            let tj = api.get(name).await?;
            Ok(check(&tj).then_some(tj))
        }
    })
    .await;
    match waited {
        Ok(tj) => Ok(tj),
        Err(e) => {
            let status = api.get(name).await.ok().and_then(|tj| tj.status);
            Err(e.context(format!("last status: {status:?}")))
        }
    }
}

fn queued_at(tj: &TrainingJob, position: i32) -> bool {
    tj.status.as_ref().is_some_and(|s| {
        s.phase == Some(TrainingJobPhase::Queued)
            && s.queue_position == Some(position)
            && s.pending_reason.is_some()
    })
}

/// The line of `out` whose first column is `first`, split into its columns
/// (columns are three or more spaces apart; cells may hold single spaces).
fn row(out: &str, first: &str) -> Vec<String> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no line for {first} in:\n{out}"))
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// The rows of `queue` output without the WAITING column, which may tick a second
/// between two calls.
fn queue_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| {
            let mut cells = row(l, l.split_whitespace().next().unwrap_or_default());
            cells.remove(6);
            cells
        })
        .collect()
}

#[tokio::test]
async fn kubectl_factory_shows_pools_usage_queue_and_why_a_job_waits() -> Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    // Two 8-GPU L40S nodes in a dedicated pool with a 10 kW cap.
    let group = unique_name("plugin");
    let nodes = FakeNodes::create(&client, &group, 2, "L40S-48GB", 8).await?;
    let pool = format!("{group}-pool");
    let gp: GpuPool = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": pool},
        "spec": {"nodeSelector": {"matchLabels": {TEST_GROUP: group}},
                 "gpu": {"model": "L40S-48GB", "perNode": 8, "powerWatts": 350},
                 "dedicated": true, "powerCapKilowatts": 10, "location": {"region": "eu-north"}}
    }))?;
    let pools = Api::<GpuPool>::all(client.clone());
    pools.create(&PostParams::default(), &gp).await?;
    let mut cleanup = Cleanup(vec![("gpupool", pool.clone())]);
    // Tenant acme: 8 guaranteed GPUs, never borrows, 100 GPU-hours a month.
    let acme = unique_name("plugin-acme");
    let t: Tenant = serde_json::from_value(json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": acme},
        "spec": {"owners": [{"kind": "User", "name": format!("{acme}-owner")}],
                 "quota": [{"pool": pool, "gpus": 8, "borrowingLimit": 0}],
                 "budget": {"gpuHoursPerMonth": 100}}
    }))?;
    let tenants = Api::<Tenant>::all(client.clone());
    tenants.create(&PostParams::default(), &t).await?;
    cleanup.0.push(("tenant", acme.clone()));
    tenant_ready(&client, &acme, WAIT).await?;

    // One job fills the quota; two more wait behind it.
    submit(&client, &acme, "pretrain", &pool, 8).await?;
    let running = wait_job(&client, &acme, "pretrain", "Running", |tj| {
        tj.status.as_ref().and_then(|s| s.phase) == Some(TrainingJobPhase::Running)
    })
    .await?;
    submit(&client, &acme, "finetune", &pool, 8).await?;
    submit(&client, &acme, "sweep", &pool, 4).await?;
    // The operator's queue order (priority, fair share, age) is its business:
    // the plugin must show whatever positions it gave.
    let jobs = Api::<TrainingJob>::namespaced(client.clone(), &acme);
    let queue = wait_for("finetune and sweep queued at 1 and 2", WAIT, || {
        let jobs = jobs.clone();
        async move {
            let mut waiting = vec![jobs.get("finetune").await?, jobs.get("sweep").await?];
            waiting.sort_by_key(|tj| tj.status.as_ref().and_then(|s| s.queue_position));
            Ok((queued_at(&waiting[0], 1) && queued_at(&waiting[1], 2)).then_some(waiting))
        }
    })
    .await?;
    wait_for(
        "pool and tenant count the running job's 8 GPUs",
        WAIT,
        || {
            let (pools, tenants, pool, acme) =
                (pools.clone(), tenants.clone(), pool.clone(), acme.clone());
            async move {
                let p = pools.get(&pool).await?.status.unwrap_or_default();
                let t = tenants.get(&acme).await?.status.unwrap_or_default();
                Ok((p.gpus.allocated == 8 && t.gpus_in_use == 8).then_some(()))
            }
        },
    )
    .await?;

    // pools: nodes ready/total, GPUs capacity/allocated/free, 8 × 350 W of a 10 kW cap.
    let out = factory(&["pools"])?;
    assert!(out.starts_with("POOL "), "{out}");
    assert_eq!(
        row(&out, &pool),
        [
            &pool,
            "L40S-48GB",
            "eu-north",
            "2/2",
            "16",
            "8",
            "8",
            "2.8",
            "10.0",
            "Ready"
        ],
        "{out}"
    );

    // usage: the pool's guarantee and use, then the total with the budget.
    let out = factory(&["usage", "--tenant", &acme])?;
    let lines: Vec<Vec<String>> = out.lines().skip(1).map(|l| row(l, &acme)).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0][..4],
        [acme.as_str(), pool.as_str(), "8", "8"],
        "{out}"
    );
    assert!(lines[1][1].starts_with("total ("), "{out}");
    assert_eq!(lines[1][2..4], ["8", "8"], "{out}");
    assert!(lines[1][6].ends_with("of 100.0 GPU-hours"), "{out}");

    // queue: the two waiting jobs in order, with the operator's reasons; the
    // running one is not in the queue. Scoped by tenant and by namespace alike.
    let out = factory(&["queue", "--tenant", &acme])?;
    assert_eq!(
        queue_rows(&factory(&["queue", "-n", &acme])?),
        queue_rows(&out)
    );
    let waiting: Vec<Vec<String>> = out.lines().skip(1).map(|l| row(l, &pool)).collect();
    assert_eq!(waiting.len(), 2, "{out}");
    let reason = |tj: &TrainingJob| tj.status.clone().unwrap().pending_reason.unwrap();
    for (i, tj) in queue.iter().enumerate() {
        let position = (i + 1).to_string();
        let gpus = format!("{0} (1x{0})", tj.spec.gpus_per_node);
        let name = tj.metadata.name.clone().unwrap();
        let want = [
            position.as_str(),
            acme.as_str(),
            name.as_str(),
            "Queued",
            gpus.as_str(),
        ];
        assert_eq!(waiting[i][1..6], want, "{out}");
        assert_eq!(waiting[i].last().unwrap(), &reason(tj), "{out}");
    }
    // Without a scope: every namespace, so ours are there among others'.
    let all = factory(&["queue"])?;
    let ours: Vec<Vec<String>> = queue_rows(&all)
        .into_iter()
        .filter(|r| r[2] == acme)
        .collect();
    assert_eq!(ours, queue_rows(&out)[1..], "{all}");

    // why: the waiting job's place and reason, the pool's free GPUs, its events.
    let first = queue[0].metadata.name.clone().unwrap();
    let out = factory(&["why", &first, "-n", &acme])?;
    assert!(
        out.starts_with(&format!(
            "TrainingJob {acme}/{first}\nIt waits in the queue of pool {pool} at position 1: {}.\n",
            reason(&queue[0])
        )),
        "{out}"
    );
    assert!(out.contains("Phase:          Queued\n"), "{out}");
    assert!(
        out.contains(&format!("Queue position: 1 in pool {pool}\n")),
        "{out}"
    );
    assert!(
        out.contains(
            "Pool now:       8 of 16 GPUs free, 2/2 nodes ready, 2.8 kW of a 10.0 kW cap\n"
        ),
        "{out}"
    );
    assert!(out.contains("\nEvents:\n"), "{out}");
    // why on the running job: it runs, on one of the pool's nodes.
    let out = factory(&["why", "pretrain", "-n", &acme])?;
    assert!(out.contains("It is running: all its pods started"), "{out}");
    let node = &running.status.unwrap().placement.unwrap().nodes[0];
    assert!(nodes.names.contains(node));
    assert!(out.contains(&format!("Placement:      {node}")), "{out}");

    // The tenant's owner, with only the rights the operator gave them: their own
    // queue, usage and jobs; not the whole factory's.
    let owner = format!("{acme}-owner");
    let out = Command::new(repo_root().join("hack/factory-user.sh"))
        .arg(&owner)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kubeconfig = PathBuf::from(
        String::from_utf8(out.stdout)?
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    assert_eq!(
        queue_rows(&kubectl_factory(
            &kubeconfig,
            &["queue", "--tenant", &acme]
        )?),
        queue_rows(&factory(&["queue", "--tenant", &acme])?)
    );
    assert_eq!(
        kubectl_factory(&kubeconfig, &["usage", "--tenant", &acme])?,
        factory(&["usage", "--tenant", &acme])?
    );
    assert!(
        kubectl_factory(&kubeconfig, &["why", &first, "-n", &acme])?
            .contains("It waits in the queue")
    );
    let err = kubectl_factory(&kubeconfig, &["usage"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not allowed to list tenants: name yours with --tenant"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn why_names_a_job_that_does_not_exist() -> Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "plugin-why").await?;
    let err = factory(&["why", "no-such-job", "-n", &ns.name]).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "trainingjob no-such-job not found in namespace {}",
            ns.name
        )),
        "{err}"
    );
    Ok(())
}
