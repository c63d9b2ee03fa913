//! Workspace: a tenant member's self-service place to work.
use crate::common::{Conditions, DatasetMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A place to work: home and scratch volumes, datasets mounted read-only, and an
/// optional interactive session (notebook or SSH) with GPUs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "aifactory.dev",
    version = "v1alpha1",
    kind = "Workspace",
    plural = "workspaces",
    shortname = "ws",
    category = "aifactory",
    namespaced,
    status = "WorkspaceStatus",
    doc = "A tenant member's place to work: home and scratch volumes, read-only datasets, and an optional interactive GPU session.",
    validation = crate::rules::name_starting_with_a_letter(
        "Workspace",
        63,
        "its session's StatefulSet and Service (<name>-session) and label values"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Home", type_ = "string", json_path = ".spec.storage.home"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".spec.interactive.gpus"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// Volumes of the workspace.
    pub storage: WorkspaceStorage,
    /// Datasets mounted read-only (your own, or ones shared with your tenant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = crate::rules::distinct_datasets())]
    #[x_kube(validation = crate::rules::distinct_mount_paths())]
    #[x_kube(validation = crate::rules::datasets_not_at(&["/workspace/home", "/workspace/scratch"], "the workspace's home or scratch volume"))]
    pub datasets: Vec<DatasetMount>,
    /// An interactive session; it waits for admission like a training job and
    /// counts against the tenant's quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Interactive>,
}

/// Volumes of a workspace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStorage {
    /// Size of the home volume (kept for the workspace's life), e.g. `50Gi`.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::rules::quantity("storage.home", "50Gi"))]
    #[x_kube(validation = crate::rules::positive_quantity("storage.home"))]
    pub home: String,
    /// Size of the scratch volume (optional), e.g. `1Ti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::rules::quantity("storage.scratch", "1Ti"))]
    #[x_kube(validation = crate::rules::positive_quantity("storage.scratch"))]
    pub scratch: Option<String>,
    /// StorageClass of both volumes (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::rules::DNS_SUBDOMAIN_PATTERN))]
    #[x_kube(validation = crate::rules::immutable("storage.storageClassName"))]
    pub storage_class_name: Option<String>,
}

/// An interactive session of a workspace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interactive {
    /// Container image of the session, e.g. a Jupyter image.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = crate::rules::container_image("interactive.image"))]
    pub image: String,
    /// GpuPool the session runs in.
    #[schemars(length(min = 1, max = 63))]
    pub pool: String,
    /// GPUs of the session, on one node of the pool (at least 1: a session is
    /// admitted like a one-pod training job and counts against the quota).
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 1, max = 16))]
    pub gpus: i32,
    /// How long the session may live once started, e.g. `8h`.
    #[serde(default = "default_max_lifetime")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::rules::duration("interactive.maxLifetime"))]
    #[x_kube(validation = crate::rules::positive_duration("interactive.maxLifetime"))]
    pub max_lifetime: String,
    /// Port the session serves (e.g. 8888 for Jupyter).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_max_lifetime() -> String {
    "8h".to_string()
}

fn default_gpus() -> i32 {
    1
}

fn default_port() -> i32 {
    8888
}

/// Lifecycle phase of a workspace.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WorkspacePhase {
    /// Volumes are being provisioned.
    #[default]
    Pending,
    /// Volumes are ready; no session asked for or the session ended.
    Ready,
    /// The session waits for admission.
    Queued,
    /// The session runs.
    Running,
    /// The session reached maxLifetime and was stopped; edit the workspace (e.g. a
    /// longer maxLifetime) to queue a new one.
    Expired,
    /// Something is wrong; see the Ready condition.
    Failed,
}

/// Observed state of a workspace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Ready, Queued, Running, Expired or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkspacePhase>,
    /// Claims of the workspace (home, scratch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Where the interactive session is reached (`<service>.<namespace>.svc:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When the session was admitted; it is stopped `maxLifetime` later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_started_at: Option<Time>,
    /// The node admission gave the session (its GPUs are held there while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_node: Option<String>,
    /// The pool the running session was admitted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_pool: Option<String>,
    /// The GPUs the running session was admitted with (and holds until it stops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_gpus: Option<i32>,
    /// Place of the waiting session in its pool's queue (1 = next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// Why the session is not running (yet, or any more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// `Ready` (volumes and datasets) and `Session` (the interactive session).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}
