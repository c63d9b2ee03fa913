//! TrainingJob: a distributed training run, admitted as a gang and run as an
//! Indexed Job on a pool's nodes.
use crate::common::{Conditions, DatasetMount};
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Environment variables aifactory sets in every pod of a run (`CHECKPOINT_DIR`
/// when there is a checkpoint volume); the API refuses them in `env`.
pub const RESERVED_ENV: [&str; 6] = [
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "NODE_RANK",
    "NPROC_PER_NODE",
    "CHECKPOINT_DIR",
];

/// A distributed training run: `nodes` pods of `gpusPerNode` GPUs each, started
/// together when the whole gang fits (quota, capacity, budget, residency, power).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "aifactory.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    plural = "trainingjobs",
    shortname = "tj",
    category = "aifactory",
    namespaced,
    status = "TrainingJobStatus",
    doc = "A distributed training run on a GPU pool, queued fairly and started as a whole gang.",
    validation = crate::rules::name_starting_with_a_letter(
        "TrainingJob",
        52,
        "its Service, its Job and its pods' host names (<name>-<rank>)"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".spec.nodes"),
    printcolumn(name = "GPUs/Node", type_ = "integer", json_path = ".spec.gpusPerNode"),
    printcolumn(name = "Queue", type_ = "integer", json_path = ".status.queuePosition"),
    printcolumn(
        name = "GPU-Hours",
        type_ = "number",
        json_path = ".status.gpuHours",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.pendingReason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::rules::datasets_not_at_the_checkpoint())]
pub struct TrainingJobSpec {
    /// GpuPool to run in; the tenant needs quota there.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = crate::rules::immutable("pool"))]
    pub pool: String,

    /// Nodes (pods) of the run; all start together or none does.
    #[schemars(range(min = 1, max = 1024))]
    #[x_kube(validation = crate::rules::immutable("nodes"))]
    pub nodes: i32,

    /// GPUs each pod gets (at most the pool's GPUs per node).
    #[schemars(range(min = 1, max = 64))]
    #[x_kube(validation = crate::rules::immutable("gpusPerNode"))]
    pub gpus_per_node: i32,

    /// Container image of the training code.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = crate::rules::immutable("image"))]
    #[x_kube(validation = crate::rules::container_image("image"))]
    pub image: String,

    /// Entrypoint (default: the image's). Typically `torchrun`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,

    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    pub args: Vec<String>,

    /// Extra environment of every pod. `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`,
    /// `NODE_RANK`, `NPROC_PER_NODE` and `CHECKPOINT_DIR` are set by aifactory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), transform = crate::rules::container_env)]
    #[x_kube(validation = crate::rules::env_not(&RESERVED_ENV))]
    pub env: Vec<EnvVar>,

    /// CPU and memory of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<NodeResources>,

    /// Datasets mounted read-only in every pod, each once and at a path of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = crate::rules::distinct_datasets())]
    #[x_kube(validation = crate::rules::distinct_mount_paths())]
    pub datasets: Vec<DatasetMount>,

    /// Volume for checkpoints, passed to the code as `CHECKPOINT_DIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,

    /// PriorityClass of the run; must be one the tenant allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::rules::DNS_SUBDOMAIN_PATTERN))]
    pub priority: Option<String>,

    /// Longest a run may take, e.g. `72h`; past it the run is stopped and the job
    /// fails with reason DeadlineExceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::rules::duration("maxRuntime"))]
    #[x_kube(validation = crate::rules::positive_duration("maxRuntime"))]
    pub max_runtime: Option<String>,

    /// How many times a failed run is started again before the job fails.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub max_restarts: i32,

    /// True stops the run (releasing its GPUs); false queues it again.
    #[serde(default)]
    pub suspend: bool,

    /// Placement of the pods inside the pool's topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<JobTopology>,
}

/// CPU and memory of each pod of a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    /// CPU per pod, e.g. `96`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::rules::quantity("resources.cpu", "96 or 500m"))]
    #[x_kube(validation = crate::rules::positive_quantity("resources.cpu"))]
    pub cpu: Option<String>,
    /// Memory per pod, e.g. `1Ti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::rules::quantity("resources.memory", "512Gi"))]
    #[x_kube(validation = crate::rules::positive_quantity("resources.memory"))]
    pub memory: Option<String>,
}

/// Where checkpoints go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// PersistentVolumeClaim in the job's namespace (e.g. a workspace's scratch).
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::rules::DNS_SUBDOMAIN_PATTERN))]
    pub claim_name: String,
    /// Where it is mounted (default `/checkpoints`).
    #[serde(default = "default_checkpoint_path")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    pub mount_path: String,
}

fn default_checkpoint_path() -> String {
    "/checkpoints".to_string()
}

/// Topology placement of a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTopology {
    /// Keep all pods inside one domain of this level of the pool's topology.
    #[serde(default)]
    #[x_kube(validation = crate::rules::immutable("topology.pack"))]
    pub pack: TopologyPack,
}

/// Topology levels a job can be packed into.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TopologyPack {
    /// Anywhere in the pool.
    #[default]
    None,
    /// Inside one rack.
    Rack,
    /// Inside one block (a group of racks).
    Block,
}

impl TopologyPack {
    /// The last segment of the pool topology label key this level matches.
    pub fn level(self) -> Option<&'static str> {
        match self {
            TopologyPack::None => None,
            TopologyPack::Rack => Some("rack"),
            TopologyPack::Block => Some("block"),
        }
    }
}

/// Lifecycle phase of a training job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TrainingJobPhase {
    /// Waiting for admission; see queuePosition and pendingReason.
    #[default]
    Queued,
    /// Admitted: GPUs are reserved and pods are being created.
    Admitted,
    /// Pods run.
    Running,
    /// The run finished successfully.
    Succeeded,
    /// The run failed past maxRestarts, exceeded maxRuntime, or was refused.
    Failed,
    /// Stopped by `suspend: true`; queued again when resumed.
    Suspended,
    /// Evicted to give GPUs back to their guaranteed owner or to higher priority
    /// work; queued again.
    Preempted,
}

/// Observed state of a training job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Queued, Admitted, Running, Succeeded, Failed, Suspended or Preempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TrainingJobPhase>,
    /// Place in the pool's queue (1 = next), while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// Why the job is not running yet, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// When the GPUs were reserved for the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<Time>,
    /// When all pods of the current run were running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the job succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// When the job (re-)entered the queue: created, resumed, or preempted. The
    /// longest-waiting jobs go first once they starve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Time>,
    /// GPU-hours and energy of the current run are counted up to this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounted_until: Option<Time>,
    /// Runs started again after a failure.
    #[serde(default)]
    pub restarts: i32,
    /// Admissions in a row whose pods did not all start in time (the GPUs were
    /// given back and the job queued again, behind the jobs already waiting); the
    /// job fails with reason `StartFailed` at 3.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_failures: i32,
    /// Nodes and topology domain of the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// GPU-hours used by all runs of the job.
    #[serde(default)]
    pub gpu_hours: f64,
    /// GPU-hours and energy of the accounting period of `accountedUntil` (a run
    /// across the 1st counts in each month only the hours used in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_usage: Option<PeriodUsage>,
    /// Energy used by all runs of the job, kWh.
    #[serde(default, rename = "energyKWh")]
    pub energy_kwh: f64,
    /// `Admitted`, `Ready`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}

/// Usage of a job in one accounting period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodUsage {
    /// The accounting period, `YYYY-MM` (UTC).
    pub period: String,
    /// GPU-hours used in it.
    pub gpu_hours: f64,
    /// Energy used in it, kWh.
    #[serde(rename = "energyKWh")]
    pub energy_kwh: f64,
}

/// Where a run's pods are.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Node of each pod, by node rank.
    pub nodes: Vec<String>,
    /// Topology domain the pods were packed into, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl TrainingJobSpec {
    /// GPUs the whole gang holds.
    pub fn total_gpus(&self) -> i64 {
        i64::from(self.nodes) * i64::from(self.gpus_per_node)
    }
}
