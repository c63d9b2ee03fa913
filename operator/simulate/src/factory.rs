//! The factory file: the GpuPool and Tenant documents a platform team applies, plus
//! what only the simulator needs — how many nodes each pool has.
//!
//! A factory file is multi-document YAML. The simulator reads these kinds and
//! ignores every other one (Workspaces, Datasets, TrainingJobs…):
//!
//! - `aifactory.dev/v1alpha1` **GpuPool** and **Tenant**, exactly as applied to the
//!   cluster (the `aifactory-api` types read them).
//! - `scheduling.k8s.io/v1` **PriorityClass** (optional): names → values. When the
//!   file has any, priorities in the trace may be class names, and a tenant may use
//!   only the default priority and the classes in its `priorityClasses`, as the
//!   operator enforces. Without any, trace priorities are integers and every
//!   tenant may use every priority.
//! - `simulate.aifactory.dev/v1alpha1` **SimulatedNodes**: the nodes of a pool,
//!   which on a cluster are whatever nodes match its `nodeSelector`:
//!
//!   ```yaml
//!   apiVersion: simulate.aifactory.dev/v1alpha1
//!   kind: SimulatedNodes
//!   pool: h100-lux       # the GpuPool they belong to
//!   count: 16            # nodes
//!   gpusPerNode: 8       # optional: defaults to the pool's gpu.perNode
//!   racks: 4             # optional (default 1): nodes spread evenly over racks
//!   blocks: 2            # optional (default 1): racks spread evenly over blocks
//!   ```
//!
//!   Each node gets a label for every topology level of its pool: a level whose key
//!   ends in `rack` gets its rack, one ending in `block` its block. Several
//!   SimulatedNodes for one pool add up (e.g. two generations of nodes).
//! - `simulate.aifactory.dev/v1alpha1` **Include**: `files: [..]`, read as if they
//!   were part of this file, relative to it — so a factory file can reuse the
//!   platform team's own manifests instead of copying them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use aifactory_admission as adm;
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;

/// The factory the simulation runs: the engine's view plus what the report needs.
#[derive(Debug, Clone)]
pub struct SimFactory {
    /// Pools (with their nodes) and tenants (with no usage yet), as the engine reads
    /// them.
    pub factory: adm::Factory,
    /// Per tenant (same order as `factory.tenants`): GPU-hours per budget period.
    pub budgets: Vec<Option<f64>>,
    /// PriorityClass name → value; empty when the file defines none.
    pub priority_classes: BTreeMap<String, i32>,
    /// The priority of a job that names none (a `globalDefault` class, else 0).
    pub default_priority: i32,
}

/// The nodes of one pool, in the simulator-only `SimulatedNodes` document.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulatedNodes {
    /// `simulate.aifactory.dev/v1alpha1`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `SimulatedNodes`.
    pub kind: String,
    /// The GpuPool these nodes belong to.
    pub pool: String,
    /// How many nodes.
    pub count: u32,
    /// GPUs per node; defaults to the pool's `gpu.perNode`.
    #[serde(default)]
    pub gpus_per_node: Option<u32>,
    /// Racks the nodes are spread over (default 1).
    #[serde(default)]
    pub racks: Option<u32>,
    /// Blocks the racks are spread over (default 1).
    #[serde(default)]
    pub blocks: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Include {
    files: Vec<String>,
}

#[derive(Default)]
struct Docs {
    pools: Vec<aifactory_api::GpuPool>,
    tenants: Vec<aifactory_api::Tenant>,
    nodes: Vec<SimulatedNodes>,
    /// name → (value, globalDefault)
    priority_classes: BTreeMap<String, (i32, bool)>,
    ignored: BTreeMap<String, usize>,
}

/// Read factory files (each multi-document YAML; `Include` documents pull in more).
pub fn load(paths: &[PathBuf]) -> Result<SimFactory> {
    let mut docs = Docs::default();
    let mut seen = HashSet::new();
    for path in paths {
        read_file(path, &mut docs, &mut seen)?;
    }
    if !docs.ignored.is_empty() {
        let kinds: Vec<String> = docs
            .ignored
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        eprintln!(
            "simulate: ignoring documents the simulator does not model: {}",
            kinds.join(", ")
        );
    }
    build(docs)
}

/// Parse one factory file's text (no `Include` allowed): for tests and callers
/// that build factories in memory.
pub fn parse(text: &str) -> Result<SimFactory> {
    let mut docs = Docs::default();
    read_text(text, Path::new("."), &mut docs, &mut HashSet::new())?;
    build(docs)
}

fn read_file(path: &Path, docs: &mut Docs, seen: &mut HashSet<PathBuf>) -> Result<()> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("cannot read factory file {}", path.display()))?;
    if !seen.insert(canonical.clone()) {
        return Ok(()); // included twice: read once
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read factory file {}", path.display()))?;
    let dir = canonical.parent().unwrap_or(Path::new(".")).to_owned();
    read_text(&text, &dir, docs, seen).with_context(|| format!("in {}", path.display()))
}

fn read_text(text: &str, dir: &Path, docs: &mut Docs, seen: &mut HashSet<PathBuf>) -> Result<()> {
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de)
            .with_context(|| format!("document {}: not YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| anyhow!("document {}: no kind", i + 1))?
            .to_owned();
        let api_version = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let what = || format!("document {} ({kind})", i + 1);
        match (api_version.split('/').next().unwrap_or(""), kind.as_str()) {
            ("aifactory.dev", "GpuPool") => {
                docs.pools
                    .push(serde_yaml::from_value(value).with_context(what)?);
            }
            ("aifactory.dev", "Tenant") => {
                docs.tenants
                    .push(serde_yaml::from_value(value).with_context(what)?);
            }
            ("scheduling.k8s.io", "PriorityClass") => {
                let name = value
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| anyhow!("{}: no metadata.name", what()))?;
                let v = value
                    .get("value")
                    .and_then(serde_yaml::Value::as_i64)
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or_else(|| anyhow!("{}: value must be a 32-bit integer", what()))?;
                let global = value
                    .get("globalDefault")
                    .and_then(serde_yaml::Value::as_bool)
                    .unwrap_or(false);
                docs.priority_classes.insert(name.to_owned(), (v, global));
            }
            (_, "SimulatedNodes") => {
                docs.nodes
                    .push(serde_yaml::from_value(value).with_context(what)?);
            }
            (_, "Include") => {
                let include: Include = serde_yaml::from_value(value).with_context(what)?;
                for file in include.files {
                    read_file(&dir.join(file), docs, seen)?;
                }
            }
            _ => *docs.ignored.entry(kind).or_default() += 1,
        }
    }
    Ok(())
}

/// The last path segment of a label key: `topology.aifactory.dev/rack` → `rack`.
pub fn level_short_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn build(docs: Docs) -> Result<SimFactory> {
    let mut factory = adm::Factory::new();
    let mut names = HashSet::new();
    for pool in &docs.pools {
        let name = pool
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("a GpuPool has no metadata.name"))?;
        ensure!(
            names.insert(name.clone()),
            "GpuPool {name} is defined twice"
        );
        let spec = &pool.spec;
        let mut p = adm::GpuPool::new(&name, &spec.gpu.model)
            .region(&spec.location.region)
            .power(f64::from(spec.gpu.power_watts), spec.power_cap_kilowatts);
        p.topology_levels = spec
            .topology
            .as_ref()
            .map(|t| t.levels.clone())
            .unwrap_or_default();
        for level in &p.topology_levels {
            let short = level_short_name(level);
            ensure!(
                short.ends_with("rack") || short.ends_with("block"),
                "GpuPool {name}: SimulatedNodes can label racks and blocks, not topology level {level}"
            );
        }
        factory.pools.push(p);
    }

    let pool_ids: HashMap<String, usize> = factory
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect();
    let mut rack_base = vec![0u32; factory.pools.len()];
    let mut block_base = vec![0u32; factory.pools.len()];
    for n in &docs.nodes {
        if let Some(v) = &n.api_version {
            ensure!(
                v.starts_with("simulate.aifactory.dev/"),
                "SimulatedNodes for {}: apiVersion should be simulate.aifactory.dev/v1alpha1, not {v}",
                n.pool
            );
        }
        let &p = pool_ids.get(&n.pool).ok_or_else(|| {
            anyhow!(
                "SimulatedNodes for pool {}: no GpuPool of that name",
                n.pool
            )
        })?;
        let spec = &docs.pools[p].spec;
        let gpus = match n.gpus_per_node {
            Some(g) => g,
            None => u32::try_from(spec.gpu.per_node)
                .map_err(|_| anyhow!("GpuPool {}: gpu.perNode must be positive", n.pool))?,
        };
        let racks = n.racks.unwrap_or(1).max(1);
        let blocks = n.blocks.unwrap_or(1).max(1);
        ensure!(
            n.count > 0 && racks <= n.count && blocks <= racks,
            "SimulatedNodes for {}: need count ≥ racks ≥ blocks ≥ 1 (count {}, racks {racks}, blocks {blocks})",
            n.pool,
            n.count
        );
        let pool = &mut factory.pools[p];
        let levels = pool.topology_levels.clone();
        for i in 0..n.count {
            let rack = (u64::from(i) * u64::from(racks) / u64::from(n.count)) as u32;
            let block = (u64::from(rack) * u64::from(blocks) / u64::from(racks)) as u32;
            let index = pool.nodes.len();
            let mut node = adm::Node::new(format!("{}-n{index:05}", pool.name), gpus);
            for level in &levels {
                let short = level_short_name(level);
                let value = if short.ends_with("rack") {
                    format!("r{:04}", rack_base[p] + rack)
                } else {
                    format!("b{:03}", block_base[p] + block)
                };
                node.topology.insert(level.clone(), value);
            }
            pool.nodes.push(node);
        }
        rack_base[p] += racks;
        block_base[p] += blocks;
    }
    for pool in &factory.pools {
        ensure!(
            !pool.nodes.is_empty(),
            "GpuPool {} has no nodes: add a SimulatedNodes document for it",
            pool.name
        );
    }

    let priority_classes: BTreeMap<String, i32> = docs
        .priority_classes
        .iter()
        .map(|(k, (v, _))| (k.clone(), *v))
        .collect();
    let default_priority = docs
        .priority_classes
        .values()
        .find(|(_, global)| *global)
        .map_or(0, |(v, _)| *v);

    let mut budgets = Vec::new();
    let mut tenant_names = HashSet::new();
    for t in &docs.tenants {
        let name = t
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("a Tenant has no metadata.name"))?;
        ensure!(
            tenant_names.insert(name.clone()),
            "Tenant {name} is defined twice"
        );
        let spec = &t.spec;
        let mut tenant = adm::Tenant::new(&name).weight(f64::from(spec.weight.max(1)));
        for q in &spec.quota {
            let count = |v: i32, what: &str| {
                u32::try_from(v).map_err(|_| anyhow!("Tenant {name}: quota {what} is negative"))
            };
            tenant.quotas.push(adm::Quota {
                pool: q.pool.clone(),
                gpus: count(q.gpus, "gpus")?,
                borrowing_limit: q
                    .borrowing_limit
                    .map(|v| count(v, "borrowingLimit"))
                    .transpose()?,
                lending_limit: q
                    .lending_limit
                    .map(|v| count(v, "lendingLimit"))
                    .transpose()?,
            });
        }
        if let Some(r) = &spec.residency {
            tenant.residency_regions = r.regions.clone();
        }
        if !priority_classes.is_empty() {
            let mut allowed = vec![default_priority];
            for class in &spec.priority_classes {
                let v = priority_classes.get(class).ok_or_else(|| {
                    anyhow!("Tenant {name} allows PriorityClass {class}, which the factory file does not define")
                })?;
                allowed.push(*v);
            }
            allowed.sort_unstable();
            allowed.dedup();
            tenant.allowed_priorities = Some(allowed);
        }
        budgets.push(spec.budget.as_ref().map(|b| b.gpu_hours_per_month));
        factory.tenants.push(tenant);
    }
    if factory.pools.is_empty() {
        bail!("the factory has no GpuPool");
    }
    if factory.tenants.is_empty() {
        bail!("the factory has no Tenant");
    }
    Ok(SimFactory {
        factory,
        budgets,
        priority_classes,
        default_priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTORY: &str = r#"
apiVersion: aifactory.dev/v1alpha1
kind: GpuPool
metadata: {name: h100}
spec:
  nodeSelector: {matchLabels: {gpu: h100}}
  gpu: {model: H100-80GB, perNode: 8, powerWatts: 700}
  topology: {levels: [topology.aifactory.dev/block, topology.aifactory.dev/rack]}
  location: {region: eu-west}
---
apiVersion: aifactory.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  owners: [{kind: User, name: alice}]
  quota: [{pool: h100, gpus: 16, borrowingLimit: 8}]
  weight: 2
  priorityClasses: [high]
  budget: {gpuHoursPerMonth: 100}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
---
apiVersion: simulate.aifactory.dev/v1alpha1
kind: SimulatedNodes
pool: h100
count: 8
racks: 4
blocks: 2
---
apiVersion: aifactory.dev/v1alpha1
kind: TrainingJob
metadata: {name: ignored}
"#;

    #[test]
    fn reads_pools_tenants_nodes_and_priority_classes() {
        let f = parse(FACTORY).unwrap();
        let pool = &f.factory.pools[0];
        assert_eq!(pool.nodes.len(), 8);
        assert_eq!(pool.power_watts, 700.0);
        let rack = |i: usize| pool.nodes[i].topology["topology.aifactory.dev/rack"].clone();
        let block = |i: usize| pool.nodes[i].topology["topology.aifactory.dev/block"].clone();
        assert_eq!(
            (rack(0), rack(1), rack(2), rack(7)),
            (
                "r0000".into(),
                "r0000".into(),
                "r0001".into(),
                "r0003".into()
            )
        );
        assert_eq!((block(3), block(4)), ("b000".into(), "b001".into()));
        let tenant = &f.factory.tenants[0];
        assert_eq!(tenant.weight, 2.0);
        assert_eq!(tenant.quotas[0].borrowing_limit, Some(8));
        assert_eq!(tenant.allowed_priorities, Some(vec![0, 1000]));
        assert_eq!(f.budgets, [Some(100.0)]);
    }

    #[test]
    fn a_pool_without_nodes_is_an_error_that_says_what_to_add() {
        let text = FACTORY.replace(
            "kind: SimulatedNodes\npool: h100",
            "kind: SimulatedNodes\npool: nope",
        );
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("no GpuPool of that name"), "{err}");
    }
}
