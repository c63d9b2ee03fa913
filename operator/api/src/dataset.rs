//! Dataset: data a tenant owns, on a volume, optionally imported and shared read-only.
use crate::common::Conditions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tenant's data on a volume of its own; optionally filled from a URL and shared
/// read-only with named tenants.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "aifactory.dev",
    version = "v1alpha1",
    kind = "Dataset",
    plural = "datasets",
    shortname = "ds",
    category = "aifactory",
    namespaced,
    status = "DatasetStatus",
    doc = "Data a tenant owns: a volume of the requested size, optionally imported from a URL and shared read-only with other tenants.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Size", type_ = "string", json_path = ".spec.size"),
    printcolumn(name = "Class", type_ = "string", json_path = ".spec.storageClassName"),
    printcolumn(
        name = "Shared With",
        type_ = "string",
        json_path = ".spec.sharing.tenants"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.sharing) || size(self.sharing.tenants) == 0 || self.accessModes.exists(m, m == 'ReadOnlyMany' || m == 'ReadWriteMany')").message("a dataset shared with other tenants needs accessModes ReadOnlyMany or ReadWriteMany"))]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Size of the volume, e.g. `500Gi`. It may grow, never shrink.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::rules::quantity("size", "500Gi"))]
    #[x_kube(validation = crate::rules::positive_quantity("size"))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("size can grow but never shrink"))]
    pub size: String,

    /// StorageClass of the volume (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = crate::rules::immutable("storageClassName"))]
    pub storage_class_name: Option<String>,

    /// How the volume may be mounted.
    #[serde(default = "default_access_modes")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub access_modes: Vec<AccessMode>,

    /// Where to import the data from when the dataset is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataSource>,

    /// Tenants allowed to mount the dataset read-only in their own namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<Sharing>,
}

fn default_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteOnce]
}

/// Volume access modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    /// Read-write by one node.
    ReadWriteOnce,
    /// Read-only by many nodes.
    ReadOnlyMany,
    /// Read-write by many nodes.
    ReadWriteMany,
    /// Read-write by one pod.
    ReadWriteOncePod,
}

/// Where a dataset's data comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    /// `https://…`, `http://…` or `s3://bucket/prefix` (S3-compatible).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(https?|s3)://[^/ ]+')").message("url must start with http://, https:// or s3:// followed by a host or bucket"))]
    #[x_kube(validation = crate::rules::immutable("source.url"))]
    pub url: String,
    /// Name of a Secret in the dataset's namespace with the credentials
    /// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, or `token` for HTTP).
    /// It is referenced by the import job, never copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// S3 endpoint for S3-compatible stores other than AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: Option<String>,
}

/// Read-only grants of a dataset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sharing {
    /// Tenants that may mount the dataset read-only. A grant that would move the
    /// data outside the owner's residency regions is refused.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub tenants: Vec<String>,
}

/// Lifecycle phase of a dataset.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DatasetPhase {
    /// The volume is being provisioned.
    #[default]
    Pending,
    /// The import job is filling the volume.
    Importing,
    /// The data can be mounted.
    Ready,
    /// Provisioning or import failed; see the Ready condition.
    Failed,
}

/// Observed state of a dataset.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Importing, Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DatasetPhase>,
    /// The claim holding the data, in the dataset's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// The PersistentVolume bound to the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// When the import finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_at: Option<Time>,
    /// Tenants that mount the dataset read-only, with their claims.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<DatasetConsumer>,
    /// `Ready`, `Shared`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}

/// A tenant granted read-only use of a dataset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetConsumer {
    /// The consumer tenant.
    pub tenant: String,
    /// The consumer's namespace holding the read-only claim.
    pub namespace: String,
    /// The read-only claim.
    pub claim_name: String,
}
