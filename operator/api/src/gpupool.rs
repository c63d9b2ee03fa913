//! GpuPool: a set of identical GPU nodes the platform team offers to tenants.
use crate::common::Conditions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label set on every member node: `aifactory.dev/pool=<pool name>`.
pub const POOL_LABEL: &str = "aifactory.dev/pool";
/// Taint key put on members of a dedicated pool (`<key>=<pool>:NoSchedule`).
pub const POOL_TAINT: &str = "aifactory.dev/pool";
/// GPU resource name when a pool does not say otherwise.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A pool of identical GPU nodes, selected by labels, offered to tenants.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "aifactory.dev",
    version = "v1alpha1",
    kind = "GpuPool",
    plural = "gpupools",
    shortname = "gp",
    category = "aifactory",
    status = "GpuPoolStatus",
    doc = "A pool of identical GPU nodes (same model, same site) that the platform team offers to tenants.",
    validation = crate::rules::name_label("GpuPool", "the aifactory.dev/pool label and taint value of its nodes"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.gpu.model"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.location.region"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes"),
    printcolumn(
        name = "GPUs",
        type_ = "integer",
        json_path = ".status.gpus.allocatable"
    ),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.gpus.free"),
    printcolumn(
        name = "Power kW",
        type_ = "number",
        json_path = ".status.powerKilowatts"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GpuPoolSpec {
    /// Selects the member nodes by their labels. A node selected by two pools is a
    /// conflict: the older pool keeps it and both report it.
    #[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)").message("nodeSelector must select something: an empty selector would take every node of the cluster"))]
    #[x_kube(validation = crate::rules::valid_selector("nodeSelector"))]
    pub node_selector: LabelSelector,

    /// The GPUs every member node has.
    pub gpu: GpuSpec,

    /// Topology of the pool, used to place a job's pods inside one domain
    /// (for example one rack) when the job asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,

    /// When true, members are tainted `aifactory.dev/pool=<name>:NoSchedule` so that
    /// only work admitted by aifactory lands on them.
    #[serde(default)]
    pub dedicated: bool,

    /// The most power (kilowatts) the pool's GPUs may draw at once; admission keeps
    /// the estimated draw (allocated GPUs × gpu.powerWatts) under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000000.0))]
    #[x_kube(validation = Rule::new("self > 0.0").message("powerCapKilowatts must be greater than zero"))]
    pub power_cap_kilowatts: Option<f64>,

    /// Where the hardware is, for data residency.
    pub location: Location,
}

/// The GPUs of a pool's nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// GPU model, for people and for placement, e.g. `H100-80GB`.
    #[schemars(length(min = 1, max = 63))]
    pub model: String,
    /// Extended resource name of the GPUs on the nodes.
    #[serde(default = "default_gpu_resource")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
        )
    )]
    #[x_kube(validation = Rule::new("!self.startsWith('requests.') && self.indexOf('/') <= 244").message("resourceName must be an extended resource name: not starting with requests., a domain of at most 244 characters (pods request it, and the tenants' ResourceQuotas limit requests.<resourceName>)"))]
    pub resource_name: String,
    /// GPUs per node.
    #[schemars(range(min = 1, max = 64))]
    pub per_node: i32,
    /// Power one GPU draws at load, in watts (energy accounting and power cap).
    #[schemars(range(min = 1, max = 5000))]
    pub power_watts: i32,
}

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_string()
}

/// Topology levels of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Node label keys naming topology domains, outermost first, e.g.
    /// `[topology.aifactory.dev/block, topology.aifactory.dev/rack]`. A job's
    /// `topology.pack` names a level by the last segment of its key (`rack`).
    #[schemars(length(min = 1, max = 4), inner(length(min = 1, max = 316)))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$'))").message("each topology level must be a node label key such as topology.aifactory.dev/rack"))]
    #[x_kube(validation = Rule::new("self.all(k, self.exists_one(o, o == k))").message("topology levels must be distinct"))]
    pub levels: Vec<String>,
}

/// Where a pool's hardware is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// Region (e.g. `eu-west`), matched against tenants' `residency.regions`.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = crate::rules::dns_label("region"))]
    pub region: String,
    /// Site or data centre within the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub site: Option<String>,
}

/// Observed state of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuPoolStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Member nodes.
    #[serde(default)]
    pub nodes: i32,
    /// Member nodes that are Ready and schedulable.
    #[serde(default)]
    pub ready_nodes: i32,
    /// GPU counts over the member nodes.
    #[serde(default)]
    pub gpus: GpuCounts,
    /// Estimated draw of the allocated GPUs, in kilowatts.
    #[serde(default)]
    pub power_kilowatts: f64,
    /// Nodes this pool selects that another pool also selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<NodeConflict>,
    /// `Ready`: the pool has members and no conflict it loses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}

/// GPU counts of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuCounts {
    /// GPUs the member nodes have.
    pub capacity: i64,
    /// GPUs the member nodes offer to pods (Ready, schedulable nodes).
    pub allocatable: i64,
    /// GPUs held by pods bound to member nodes.
    pub allocated: i64,
    /// Allocatable GPUs not held by any pod.
    pub free: i64,
}

/// A node two pools select.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeConflict {
    /// The node both pools select.
    pub node: String,
    /// The other pool.
    pub pool: String,
    /// Which of the two keeps the node (the older one).
    pub kept_by: String,
}
