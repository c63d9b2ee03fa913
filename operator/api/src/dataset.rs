//! Dataset: data a tenant owns, on a volume, optionally imported and shared read-only.
use crate::common::{Conditions, DatasetMount, bounded_name};
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
    validation = crate::rules::name_label("Dataset", "its volume claim, its import Job and label values"),
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
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::rules::DNS_SUBDOMAIN_PATTERN))]
    #[x_kube(validation = crate::rules::immutable("storageClassName"))]
    pub storage_class_name: Option<String>,

    /// How the volume may be mounted.
    #[serde(default = "default_access_modes")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[x_kube(validation = crate::rules::read_write_once_pod_alone())]
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
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::rules::DNS_SUBDOMAIN_PATTERN))]
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
    /// Region of the data, for residency: the volume's
    /// `topology.kubernetes.io/region` label, else the owner tenant's residency
    /// region when it has exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
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

/// Name of the read-only claim a grant puts in a consumer's namespace:
/// `shared.<owner namespace>.<dataset>` (bounded to a valid object name).
pub fn shared_claim_name(owner_namespace: &str, dataset: &str) -> String {
    bounded_name(&format!("shared.{owner_namespace}.{dataset}"), 253)
}

/// Why an object in some namespace may not mount a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetRefusal {
    /// No such Dataset.
    NotFound {
        /// `<namespace>/<name>` of the missing Dataset.
        dataset: String,
    },
    /// The Dataset belongs to another namespace that has not shared it with this one.
    NotGranted {
        /// `<namespace>/<name>` of the Dataset.
        dataset: String,
        /// The namespace that asked.
        namespace: String,
    },
    /// The Dataset exists (and may be mounted) but cannot be yet, or no longer:
    /// provisioning, importing, failed, or being deleted.
    NotReady {
        /// `<namespace>/<name>` of the Dataset.
        dataset: String,
        /// What it is doing instead.
        state: String,
    },
}

impl DatasetRefusal {
    /// Condition reason: `DatasetNotFound`, `DatasetNotGranted` or `DatasetNotReady`.
    pub fn reason(&self) -> &'static str {
        match self {
            DatasetRefusal::NotFound { .. } => "DatasetNotFound",
            DatasetRefusal::NotGranted { .. } => "DatasetNotGranted",
            DatasetRefusal::NotReady { .. } => "DatasetNotReady",
        }
    }

    /// Whether waiting can cure it (a dataset still importing), unlike a mount
    /// that names data the tenant may not use.
    pub fn is_transient(&self) -> bool {
        matches!(self, DatasetRefusal::NotReady { .. })
    }
}

impl std::fmt::Display for DatasetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatasetRefusal::NotFound { dataset } => write!(f, "dataset {dataset} does not exist"),
            DatasetRefusal::NotGranted { dataset, namespace } => write!(
                f,
                "dataset {dataset} is not shared with namespace {namespace}: its owner must list your tenant in spec.sharing.tenants, within residency rules"
            ),
            DatasetRefusal::NotReady { dataset, state } => {
                write!(f, "dataset {dataset} cannot be mounted yet: {state}")
            }
        }
    }
}

/// Whether an object in `mounting_namespace` may mount `mount`, given the Datasets
/// of the cluster (at least those of the namespace it names); the claim to mount
/// if so. Own datasets must be Ready; another namespace's only once its owner's
/// grant is in force (listed in the Dataset's `status.consumers` for this
/// namespace, which the Dataset controller writes after creating the read-only
/// claim). A Dataset being deleted accepts no new mounts.
pub fn dataset_access<'a>(
    mount: &DatasetMount,
    mounting_namespace: &str,
    datasets: impl IntoIterator<Item = &'a Dataset>,
) -> Result<String, DatasetRefusal> {
    let ns = mount.dataset_namespace(mounting_namespace);
    let id = format!("{ns}/{}", mount.name);
    let dataset = datasets
        .into_iter()
        .find(|d| {
            d.metadata.name.as_deref() == Some(mount.name.as_str())
                && d.metadata.namespace.as_deref() == Some(ns)
        })
        .ok_or_else(|| DatasetRefusal::NotFound {
            dataset: id.clone(),
        })?;
    let status = dataset.status.clone().unwrap_or_default();
    let own = ns == mounting_namespace;
    let consumer = status
        .consumers
        .iter()
        .find(|c| c.namespace == mounting_namespace);
    if !own && consumer.is_none() {
        return Err(DatasetRefusal::NotGranted {
            dataset: id,
            namespace: mounting_namespace.to_string(),
        });
    }
    if dataset.metadata.deletion_timestamp.is_some() {
        return Err(DatasetRefusal::NotReady {
            dataset: id,
            state: "it is being deleted".into(),
        });
    }
    let phase = status.phase.unwrap_or_default();
    if phase != DatasetPhase::Ready {
        return Err(DatasetRefusal::NotReady {
            dataset: id,
            state: format!("it is {phase:?}"),
        });
    }
    Ok(match consumer {
        Some(c) if !own => c.claim_name.clone(),
        _ => mount.claim_name(mounting_namespace),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dataset(ns: &str, name: &str, phase: &str, consumers: serde_json::Value) -> Dataset {
        serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"size": "1Gi", "accessModes": ["ReadOnlyMany"]},
            "status": {"phase": phase, "consumers": consumers}
        }))
        .unwrap()
    }

    fn mount(name: &str, ns: Option<&str>) -> DatasetMount {
        DatasetMount {
            name: name.into(),
            namespace: ns.map(Into::into),
            mount_path: None,
        }
    }

    #[test]
    fn a_tenant_mounts_its_own_dataset_by_the_datasets_name() {
        let images = dataset("hospital", "scans", "Ready", json!([]));
        assert_eq!(mount("scans", None).claim_name("hospital"), "scans");
        assert_eq!(
            mount("scans", Some("hospital")).claim_name("hospital"),
            "scans"
        );
        assert_eq!(
            dataset_access(&mount("scans", None), "hospital", [&images]),
            Ok("scans".to_string())
        );
    }

    #[test]
    fn a_granted_tenant_mounts_the_shared_claim_and_others_are_refused() {
        let scans = dataset(
            "hospital",
            "scans",
            "Ready",
            json!([{"tenant": "uni", "namespace": "uni", "claimName": "shared.hospital.scans"}]),
        );
        let m = mount("scans", Some("hospital"));
        assert_eq!(m.claim_name("uni"), "shared.hospital.scans");
        assert_eq!(
            dataset_access(&m, "uni", [&scans]),
            Ok("shared.hospital.scans".into())
        );
        let refused = dataset_access(&m, "startup", [&scans]).unwrap_err();
        assert_eq!(refused.reason(), "DatasetNotGranted");
        assert!(!refused.is_transient());
        assert!(refused.to_string().contains("hospital/scans"));
    }

    #[test]
    fn a_missing_importing_or_deleted_dataset_is_refused_with_its_reason() {
        let importing = dataset("acme", "demos", "Importing", json!([]));
        assert_eq!(
            dataset_access(&mount("nope", None), "acme", [&importing])
                .unwrap_err()
                .reason(),
            "DatasetNotFound"
        );
        let err = dataset_access(&mount("demos", None), "acme", [&importing]).unwrap_err();
        assert_eq!(err.reason(), "DatasetNotReady");
        assert!(err.is_transient());
        let mut deleted = dataset("acme", "demos", "Ready", json!([]));
        deleted.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert_eq!(
            dataset_access(&mount("demos", None), "acme", [&deleted])
                .unwrap_err()
                .reason(),
            "DatasetNotReady"
        );
    }

    #[test]
    fn long_names_are_bounded_stably_and_stay_distinct() {
        let long = "d".repeat(300);
        let a = shared_claim_name("ns", &long);
        assert_eq!(a.len(), 253);
        assert_eq!(a, shared_claim_name("ns", &long));
        assert_ne!(a, shared_claim_name("ns2", &long));
        assert_eq!(shared_claim_name("ns", "x"), "shared.ns.x");
    }
}
