//! The world a fuzz run sends to the API server, drawn from one seed: the runner's
//! own nodes, storage and namespaces, then pools, tenants, datasets, workspaces and
//! training jobs made by the builders' strategies (`aifactory-strategies`), wired to
//! one another often enough to run (pools over the runner's nodes, tenants with
//! quota on them, work in tenant namespaces naming real pools and datasets) and
//! often enough not to (unknown pools, missing datasets, namespaces of no tenant or
//! none at all, another tenant's namespace).
//!
//! Everything here is pure: the same seed and size give the same objects.
use aifactory_api::{
    Dataset, DatasetMount, DeletionPolicy, GpuPool, PoolQuota, Residency, Tenant, TenantStorage,
    Topology, TrainingJob, Workspace,
};
use aifactory_strategies as strategies;
use aifactory_tests::TEST_GROUP;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Label on every object the run makes, with the run's group as value.
pub const FUZZ_LABEL: &str = "aifactory.dev/fuzz";
/// Node label splitting the runner's nodes into three slices, one per main pool.
pub const SLICE_LABEL: &str = "fuzz.aifactory.dev/slice";
/// Regions of the runner's pools and of the tenants' residency.
pub const REGIONS: [&str; 3] = ["eu-west", "eu-north", "us-east"];
/// GPUs of each of the runner's nodes.
pub const NODE_GPUS: i64 = 8;

/// The five kinds, in creation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    GpuPool,
    Tenant,
    Dataset,
    Workspace,
    TrainingJob,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::GpuPool,
        Kind::Tenant,
        Kind::Dataset,
        Kind::Workspace,
        Kind::TrainingJob,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::GpuPool => "GpuPool",
            Kind::Tenant => "Tenant",
            Kind::Dataset => "Dataset",
            Kind::Workspace => "Workspace",
            Kind::TrainingJob => "TrainingJob",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::GpuPool | Kind::Tenant)
    }
}

/// One object to create.
#[derive(Clone, Debug)]
pub struct Planned {
    pub kind: Kind,
    pub name: String,
    pub namespace: Option<String>,
    /// The object as it is sent (apiVersion, kind, metadata, spec).
    pub object: Value,
}

/// A node of the runner's own.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Everything a run makes, in the order it makes it.
#[derive(Debug)]
pub struct World {
    /// Label value on every object of the run, and the runner's node group.
    pub group: String,
    pub nodes: Vec<PlannedNode>,
    /// Namespaces of no tenant.
    pub plain_namespaces: Vec<String>,
    /// The runner's StorageClass and its static volumes: (name, size, region).
    pub storage_class: String,
    pub volumes: Vec<(String, String, String)>,
    /// A PriorityClass some tenants allow and some jobs name.
    pub priority_class: String,
    /// Pools then tenants, in creation order (the first pools are the oldest: they
    /// keep their nodes when a later pool selects them too).
    pub cluster: Vec<Planned>,
    /// Datasets, workspaces and training jobs, shuffled together.
    pub namespaced: Vec<Planned>,
}

impl World {
    pub fn all(&self) -> impl Iterator<Item = &Planned> {
        self.cluster.iter().chain(&self.namespaced)
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.all().filter(|p| p.kind == kind).count()
    }
}

/// How many of each kind `n` objects are: a factory's shape (a few pools, more
/// tenants, many datasets and workspaces, most of all jobs), at least one each.
pub fn split(n: usize) -> BTreeMap<Kind, usize> {
    let pools = (n * 4 / 100).max(1);
    let tenants = (n * 8 / 100).max(1);
    let datasets = (n * 18 / 100).max(1);
    let workspaces = (n * 25 / 100).max(1);
    let jobs = n
        .saturating_sub(pools + tenants + datasets + workspaces)
        .max(1);
    [
        (Kind::GpuPool, pools),
        (Kind::Tenant, tenants),
        (Kind::Dataset, datasets),
        (Kind::Workspace, workspaces),
        (Kind::TrainingJob, jobs),
    ]
    .into()
}

/// Draws from strategies with one seeded runner.
struct Dice(TestRunner);

impl Dice {
    fn new(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
        Dice(TestRunner::new_with_rng(Config::default(), rng))
    }

    fn draw<S: Strategy>(&mut self, s: S) -> S::Value {
        s.new_tree(&mut self.0)
            .expect("a strategy that generates")
            .current()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.draw(0.0..1.0f64) < p
    }

    fn below(&mut self, n: usize) -> usize {
        if n <= 1 { 0 } else { self.draw(0..n) }
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }

    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

/// The object as sent: apiVersion and kind, metadata with only the name, the
/// namespace, the annotations the strategy drew and the run's label (no uid,
/// creation time or status: the API server sets those), the spec.
fn planned<K: serde::Serialize + kube::Resource<DynamicType = ()>>(
    kind: Kind,
    o: &K,
    group: &str,
) -> Planned {
    let full = serde_json::to_value(o).expect("serializable");
    let meta = o.meta();
    let name = meta.name.clone().expect("a name");
    let namespace = kind
        .namespaced()
        .then(|| meta.namespace.clone().expect("a namespace"));
    let object = json!({
        "apiVersion": "aifactory.dev/v1alpha1",
        "kind": kind.name(),
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {FUZZ_LABEL: group},
            "annotations": meta.annotations.clone().unwrap_or_default(),
        },
        "spec": full["spec"].clone(),
    });
    Planned {
        kind,
        name,
        namespace,
        object,
    }
}

/// The world of `n` objects drawn from `seed`.
pub fn world(seed: u64, n: usize, node_count: usize) -> World {
    let mut d = Dice::new(seed);
    let group = format!("fuzz-{seed}");
    let counts = split(n);
    let slices = ["a", "b", "c"];
    let nodes: Vec<PlannedNode> = (0..node_count)
        .map(|i| {
            let name = format!("{group}-node-{i}");
            PlannedNode {
                labels: [
                    (TEST_GROUP, group.clone()),
                    (SLICE_LABEL, slices[i % 3].to_string()),
                    ("type", "kwok-fuzz".to_string()),
                    ("kubernetes.io/hostname", name.clone()),
                    ("nvidia.com/gpu.product", "H100-80GB".to_string()),
                    ("topology.aifactory.dev/block", format!("block-{}", i / 4)),
                    ("topology.aifactory.dev/rack", format!("rack-{}", i / 2)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                name,
            }
        })
        .collect();
    let plain_namespaces: Vec<String> = (0..2).map(|i| format!("{group}-plain-{i}")).collect();
    let storage_class = format!("{group}-nfs");
    let volumes = (0..48)
        .map(|i| {
            let size = ["10Gi", "10Gi", "50Gi", "200Gi"][i % 4].to_string();
            (format!("{group}-pv-{i}"), size, REGIONS[i % 2].to_string())
        })
        .collect();
    let priority_class = format!("{group}-high");

    // --- pools: the first three over one slice of the runner's nodes each (they
    // keep them), then some over nodes those already have (conflicts), the rest
    // selecting, besides the runner's group, labels no node has (empty pools).
    let mut pools: Vec<GpuPool> = vec![];
    let mut main_pools = vec![];
    let mut seen = BTreeSet::new();
    while pools.len() < counts[&Kind::GpuPool] {
        let mut p = d.draw(strategies::pool());
        if !seen.insert(p.name_any()) {
            continue;
        }
        let i = pools.len();
        let mut labels = BTreeMap::from([(TEST_GROUP.to_string(), group.clone())]);
        if i < 3 {
            labels.insert(SLICE_LABEL.into(), slices[i].into());
            p.spec.node_selector = LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            };
            p.spec.gpu.resource_name = "nvidia.com/gpu".into();
            p.spec.gpu.per_node = if d.chance(0.8) {
                8
            } else {
                p.spec.gpu.per_node
            };
            p.spec.location.region = REGIONS[i].into();
            if d.chance(0.5) {
                p.spec.topology = Some(Topology {
                    levels: vec![
                        "topology.aifactory.dev/block".into(),
                        "topology.aifactory.dev/rack".into(),
                    ],
                });
            }
            if d.chance(0.7) {
                p.spec.power_cap_kilowatts = None;
            }
            main_pools.push(p.name_any());
        } else if d.chance(0.35) {
            if d.chance(0.5) {
                labels.insert(SLICE_LABEL.into(), d.pick(&slices).into());
            }
            p.spec.node_selector = LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            };
            if d.chance(0.7) {
                p.spec.gpu.resource_name = "nvidia.com/gpu".into();
            }
            p.spec.location.region = d.pick(&REGIONS).into();
        } else {
            // The drawn selector, within the runner's nodes (so a run never takes
            // another test's nodes): labels no node has, or expressions that may
            // select them all (DoesNotExist, NotIn).
            p.spec
                .node_selector
                .match_labels
                .get_or_insert_with(Default::default)
                .extend(labels);
        }
        pools.push(p);
    }
    let pool_names: Vec<String> = pools.iter().map(|p| p.name_any()).collect();

    // --- tenants: quota on the main pools (small, so work fits), on other pools,
    // on pools that do not exist; some claim a namespace another tenant has, or one
    // of no tenant.
    let mut tenants: Vec<Tenant> = vec![];
    let mut tenant_namespaces: Vec<(String, String)> = vec![];
    while tenants.len() < counts[&Kind::Tenant] {
        let mut candidates = main_pools.clone();
        for _ in 0..2 {
            candidates.push(d.pick(&pool_names));
        }
        candidates.push(format!("no-pool-{}", d.below(1000)));
        let candidates: Vec<String> = candidates
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut t = d.draw(strategies::tenant(candidates));
        let sensible = d.chance(0.8);
        if !seen.insert(format!("tenant/{}", t.name_any()))
            || tenant_namespaces.iter().any(|(_, ns)| *ns == t.name_any())
        {
            continue;
        }
        if sensible {
            for pool in &main_pools {
                if !t.spec.quota.iter().any(|q| q.pool == *pool) && d.chance(0.8) {
                    t.spec.quota.push(PoolQuota {
                        pool: pool.clone(),
                        gpus: 0,
                        borrowing_limit: None,
                        lending_limit: None,
                    });
                }
            }
            for q in &mut t.spec.quota {
                let gpus = d.draw(0i32..=32);
                *q = PoolQuota {
                    pool: q.pool.clone(),
                    gpus,
                    borrowing_limit: if d.chance(0.4) {
                        None
                    } else {
                        Some(d.draw(0i32..=32))
                    },
                    lending_limit: if d.chance(0.6) {
                        None
                    } else {
                        Some(d.draw(0..=gpus))
                    },
                };
            }
            if t.spec.residency.is_some() {
                let regions: Vec<String> = REGIONS
                    .iter()
                    .filter(|_| d.chance(0.6))
                    .map(|r| r.to_string())
                    .collect();
                t.spec.residency = Some(Residency {
                    regions: if regions.is_empty() {
                        vec![d.pick(&REGIONS).into()]
                    } else {
                        regions
                    },
                });
            }
            if d.chance(0.5) {
                t.spec.budget = None;
            }
            // Storage the work can use: no limit, or a roomy one over the
            // factory's classes (drawn limits and classes mostly refuse all).
            let roll = d.draw(0.0..1.0f64);
            if roll < 0.5 {
                t.spec.storage = None;
            } else if roll < 0.75 {
                t.spec.storage = Some(TenantStorage {
                    max_request: "2Ti".into(),
                    classes: if d.chance(0.5) {
                        vec![]
                    } else {
                        vec![storage_class.clone(), "factory-nfs".into()]
                    },
                });
            }
        }
        let mut namespaces: BTreeSet<String> = t.spec.namespaces.iter().cloned().collect();
        if !tenant_namespaces.is_empty() && d.chance(0.1) {
            namespaces.insert(d.pick(&tenant_namespaces).1);
        }
        if d.chance(0.04) {
            namespaces.insert(d.pick(&plain_namespaces));
        }
        t.spec.namespaces = namespaces.into_iter().collect();
        if d.chance(0.3) && t.spec.priority_classes.len() < 16 {
            t.spec.priority_classes.push(priority_class.clone());
        }
        for ns in t.spec.namespaces_or_default(&t.name_any()) {
            tenant_namespaces.push((t.name_any(), ns));
        }
        tenants.push(t);
    }
    let tenant_names: Vec<String> = tenants.iter().map(|t| t.name_any()).collect();

    // Where namespaced work goes: mostly a tenant's namespace, some a namespace of
    // no tenant, a few one that does not exist (the API refuses them).
    let namespace = |d: &mut Dice| -> String {
        let roll = d.draw(0.0..1.0f64);
        if roll < 0.9 {
            d.pick(&tenant_namespaces).1
        } else if roll < 0.97 {
            d.pick(&plain_namespaces)
        } else {
            format!("{group}-missing-{}", d.below(5))
        }
    };
    // Which pool work names: a main pool, any pool, or the one drawn (none such).
    let pool_for = |d: &mut Dice, drawn: String| -> String {
        let roll = d.draw(0.0..1.0f64);
        if roll < 0.7 && !main_pools.is_empty() {
            d.pick(&main_pools)
        } else if roll < 0.85 {
            d.pick(&pool_names)
        } else {
            drawn
        }
    };

    // --- datasets
    let mut datasets: Vec<Dataset> = vec![];
    while datasets.len() < counts[&Kind::Dataset] {
        let ns = namespace(&mut d);
        let mut sharing: Vec<String> = (0..d.below(4)).map(|_| d.pick(&tenant_names)).collect();
        if d.chance(0.2) {
            sharing.push(format!("no-tenant-{}", d.below(100)));
        }
        let sharing: Vec<String> = sharing
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut ds = d.draw(strategies::dataset(ns.clone(), sharing));
        if !seen.insert(format!("dataset/{ns}/{}", ds.name_any())) {
            continue;
        }
        let roll = d.draw(0.0..1.0f64);
        if roll < 0.6 {
            ds.spec.storage_class_name = Some(storage_class.clone());
            ds.spec.size = d.pick(&["1Gi", "10Gi", "50Gi", "100Gi"]).into();
            if d.chance(0.5) {
                ds.spec.source = None;
            }
        } else if roll < 0.65 {
            ds.spec.storage_class_name = None;
            ds.spec.size = "1Gi".into();
        }
        simulate(&mut d, ds.annotations_mut(), &["5s", "20s", "60s"], 0.05);
        datasets.push(ds);
    }
    let dataset_refs: Vec<(String, String)> = datasets
        .iter()
        .map(|ds| (ds.namespace().unwrap(), ds.name_any()))
        .collect();
    // Datasets work mounts: none, its namespace's own, any (shared or not), or the
    // drawn ones (no such dataset).
    let mounts = |d: &mut Dice, ns: &str, drawn: Vec<DatasetMount>, reserved: &[String]| {
        let own: Vec<&(String, String)> = dataset_refs.iter().filter(|(n, _)| n == ns).collect();
        let roll = d.draw(0.0..1.0f64);
        let out = if roll < 0.65 || dataset_refs.is_empty() {
            vec![]
        } else if roll < 0.85 {
            (0..d.below(3))
                .filter(|_| !own.is_empty())
                .map(|_| DatasetMount {
                    name: d.pick(&own).1.clone(),
                    namespace: None,
                    mount_path: None,
                })
                .collect()
        } else if roll < 0.93 {
            (0..1 + d.below(2))
                .map(|_| {
                    let (dns, name) = d.pick(&dataset_refs);
                    DatasetMount {
                        name,
                        namespace: (dns != ns || d.chance(0.2)).then_some(dns),
                        mount_path: None,
                    }
                })
                .collect()
        } else {
            drawn
        };
        strategies::distinct_mounts(out, reserved)
    };

    // --- workspaces
    let mut workspaces: Vec<Workspace> = vec![];
    while workspaces.len() < counts[&Kind::Workspace] {
        let ns = namespace(&mut d);
        let mut ws = d.draw(strategies::workspace());
        ws.metadata.namespace = Some(ns.clone());
        if !seen.insert(format!("workspace/{ns}/{}", ws.name_any())) {
            continue;
        }
        if d.chance(0.6) {
            ws.spec.storage.storage_class_name = Some(storage_class.clone());
            ws.spec.storage.home = d.pick(&["1Gi", "5Gi", "10Gi"]).into();
            ws.spec.storage.scratch = d.chance(0.5).then(|| "10Gi".into());
        }
        let reserved = [
            "/workspace/home".to_string(),
            "/workspace/scratch".to_string(),
        ];
        let drawn = std::mem::take(&mut ws.spec.datasets);
        ws.spec.datasets = mounts(&mut d, &ns, drawn, &reserved);
        if let Some(i) = ws.spec.interactive.as_mut() {
            i.pool = pool_for(&mut d, i.pool.clone());
            if d.chance(0.7) {
                i.gpus = d.draw(1i32..=4);
            }
        }
        workspaces.push(ws);
    }

    // --- training jobs
    let mut jobs: Vec<TrainingJob> = vec![];
    while jobs.len() < counts[&Kind::TrainingJob] {
        let ns = namespace(&mut d);
        let mut tj = d.draw(strategies::trainingjob());
        tj.metadata.namespace = Some(ns.clone());
        if !seen.insert(format!("trainingjob/{ns}/{}", tj.name_any())) {
            continue;
        }
        let s = &mut tj.spec;
        s.pool = pool_for(&mut d, s.pool.clone());
        if d.chance(0.7) {
            s.nodes = d.draw(1i32..=3);
            s.gpus_per_node = d.pick(&[1, 2, 4, 8]);
            s.resources = None;
            s.max_restarts = d.draw(0i32..=2);
            if d.chance(0.6) {
                s.topology = None;
            }
        }
        if d.chance(0.75) {
            s.checkpoint = None;
        }
        let roll = d.draw(0.0..1.0f64);
        if roll < 0.85 {
            s.priority = None;
        } else if roll < 0.93 {
            s.priority = Some(priority_class.clone());
        }
        s.suspend = d.chance(0.05);
        if d.chance(0.5) {
            s.max_runtime = None;
        }
        let reserved: Vec<String> = s.checkpoint.iter().map(|c| c.mount_path.clone()).collect();
        let drawn = std::mem::take(&mut s.datasets);
        s.datasets = mounts(&mut d, &ns, drawn, &reserved);
        simulate(
            &mut d,
            tj.annotations_mut(),
            &["10s", "30s", "60s", "120s"],
            0.1,
        );
        jobs.push(tj);
    }

    let cluster = pools
        .iter()
        .map(|p| planned(Kind::GpuPool, p, &group))
        .chain(tenants.iter().map(|t| planned(Kind::Tenant, t, &group)))
        .collect();
    let mut namespaced: Vec<Planned> = datasets
        .iter()
        .map(|o| planned(Kind::Dataset, o, &group))
        .chain(
            workspaces
                .iter()
                .map(|o| planned(Kind::Workspace, o, &group)),
        )
        .chain(jobs.iter().map(|o| planned(Kind::TrainingJob, o, &group)))
        .collect();
    d.shuffle(&mut namespaced);
    World {
        group,
        nodes,
        plain_namespaces,
        storage_class,
        volumes,
        priority_class,
        cluster,
        namespaced,
    }
}

/// The local factory's kwok annotations: most pods finish after one of
/// `durations`, some fail, the rest run until deleted (the strategy's own
/// `simulate-*` annotations are kept when none is chosen).
fn simulate(
    d: &mut Dice,
    annotations: &mut BTreeMap<String, String>,
    durations: &[&str],
    fail: f64,
) {
    let roll = d.draw(0.0..1.0f64);
    if roll < 0.6 {
        annotations.insert(
            "aifactory.dev/simulate-duration".into(),
            d.pick(durations).into(),
        );
        annotations.remove("aifactory.dev/simulate-failure");
    } else if roll < 0.6 + fail {
        annotations.insert("aifactory.dev/simulate-failure".into(), "true".into());
    }
}

/// Whether a tenant keeps its namespaces when deleted.
pub fn retains(t: &Tenant) -> bool {
    t.spec.deletion_policy == DeletionPolicy::Retain
}
