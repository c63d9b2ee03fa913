//! Types shared by several kinds: conditions, subjects, references.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type every kind carries: the object is reconciled and usable.
pub const CONDITION_READY: &str = "Ready";

/// Conditions of an object's status: a list-map keyed by `type`.
pub type Conditions = Vec<Condition>;

/// A user, group or service account that RBAC bindings name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.kind == 'ServiceAccount' ? has(self.__namespace__) : !has(self.__namespace__)").message("namespace is required for a ServiceAccount and not allowed for a User or Group"))]
#[x_kube(validation = crate::rules::service_account_subject())]
pub struct Subject {
    /// Kind of subject: `User`, `Group` or `ServiceAccount`.
    pub kind: SubjectKind,
    /// Name of the user, group or service account.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of a ServiceAccount subject; not set for users and groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// The kinds of RBAC subject a tenant can name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SubjectKind {
    /// A user, as authenticated by the cluster (certificate CN, OIDC claim, …).
    User,
    /// A group of users.
    Group,
    /// A Kubernetes service account (needs `namespace`).
    ServiceAccount,
}

/// A dataset mounted read-only by a job or workspace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetMount {
    /// Name of the Dataset.
    #[schemars(length(min = 1, max = 63), regex(pattern = crate::rules::DNS_LABEL_PATTERN))]
    pub name: String,
    /// Namespace of the Dataset when another tenant shared it with you; defaults to
    /// the namespace of the object that mounts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = crate::rules::DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
    /// Where the dataset appears inside the container (default `/data/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    pub mount_path: Option<String>,
}

impl DatasetMount {
    /// The path the dataset is mounted at.
    pub fn path(&self) -> String {
        self.mount_path
            .clone()
            .unwrap_or_else(|| format!("/data/{}", self.name))
    }

    /// The namespace of the Dataset, for an object in `mounting_namespace`.
    pub fn dataset_namespace<'a>(&'a self, mounting_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(mounting_namespace)
    }

    /// The claim a pod in `mounting_namespace` mounts: the dataset's own claim (named
    /// after the Dataset) when the Dataset lives there; otherwise the read-only
    /// claim its owner's grant put there, `shared.<owner namespace>.<dataset>`.
    /// Whether the mount is allowed at all is [`crate::dataset_access`]'s answer.
    pub fn claim_name(&self, mounting_namespace: &str) -> String {
        match self.namespace.as_deref() {
            Some(ns) if ns != mounting_namespace => crate::shared_claim_name(ns, &self.name),
            _ => self.name.clone(),
        }
    }
}

/// `name` if it has at most `max` characters; otherwise a prefix of it and a hash
/// of the whole, so that long names stay distinct, stable and valid (they end in
/// a hex digit).
pub fn bounded_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    // FNV-1a: stable across Rust releases, unlike std's DefaultHasher.
    let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let suffix = format!("-{:012x}", hash & 0xffff_ffff_ffff);
    let mut prefix: String = name.chars().take(max - suffix.len()).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    prefix + &suffix
}
