//! Pure Dataset logic: the claim holding the data, the import Job that fills it,
//! the residency rule deciding which grants stand, the read-only volume and claim
//! each grant puts in a consumer's namespace, and the status. No client, no clock.
//!
//! Residency rule of a grant (owner O shares with consumer C):
//! - the data's regions are the region label of the volume it is on
//!   (`topology.kubernetes.io/region`), else O's residency regions, else unknown;
//! - if C has residency regions, every data region must be one of them (C keeps
//!   its data where it said; unknown regions are refused);
//! - if O has residency regions, every pool C may run work in (pools of C's quota
//!   that exist, narrowed to C's own residency) must be located in one of them, so
//!   no job of C can carry O's data out of O's regions.
//!
//! Otherwise the grant stands. Grants take effect only once the data is Ready, so
//! the import Job (the only writer) never runs beside a reader of another tenant.
use crate::conditions::condition;
use aifactory_api::{
    AccessMode, CONDITION_READY, DataSource, Dataset, DatasetConsumer, DatasetPhase, DatasetStatus,
    GpuPool, Tenant, bounded_name, shared_claim_name,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Label on every object made for a dataset (its claims, read-only volumes, import
/// Job and pods): `<namespace>.<name>`, bounded to a valid label value.
pub const DATASET_LABEL: &str = "aifactory.dev/dataset";
/// Annotation naming the dataset exactly, `<namespace>/<name>`: maps a child back.
pub const DATASET_ANNOTATION: &str = "aifactory.dev/dataset";
/// Label on a grant's volume and claim: the consumer tenant.
pub const CONSUMER_LABEL: &str = "aifactory.dev/dataset-consumer";
/// Well-known label of a volume's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The Dataset's annotations with this prefix go onto the import pods (the local
/// factory's kwok reads `simulate-duration` and `simulate-failure`).
pub const SIMULATE_PREFIX: &str = "aifactory.dev/simulate-";
/// Condition: every grant of `spec.sharing` is in force.
pub const CONDITION_SHARED: &str = "Shared";
/// Condition: the claim grew to `spec.size` (present only after a refused resize).
pub const CONDITION_RESIZED: &str = "Resized";
/// Image of S3 imports (`aws s3 sync`).
pub const S3_IMAGE: &str = "amazon/aws-cli:2.27.50";
/// Image of HTTP(S) imports (`curl`).
pub const HTTP_IMAGE: &str = "curlimages/curl:8.14.1";
/// What a consumer's claim requests: the data is the owner's and counts against
/// the owner's storage quota, not against that of every tenant that reads it.
pub const SHARED_CLAIM_REQUEST: &str = "1Mi";
/// UID/GID of the import container: any non-root user (Pod Security `restricted`).
const IMPORT_UID: i64 = 65532;

/// `<namespace>/<name>` of a dataset.
pub fn dataset_id(ds: &Dataset) -> String {
    format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any())
}

/// Value of [`DATASET_LABEL`] for a dataset.
pub fn label_value(ds: &Dataset) -> String {
    bounded_name(
        &format!("{}.{}", ds.namespace().unwrap_or_default(), ds.name_any()),
        63,
    )
}

/// Name of the import Job (a Job name is also a label value: at most 63).
pub fn import_job_name(ds: &Dataset) -> String {
    bounded_name(&format!("{}-import", ds.name_any()), 63)
}

/// Name of the read-only volume of a grant to `consumer_namespace`.
pub fn shared_volume_name(ds: &Dataset, consumer_namespace: &str) -> String {
    bounded_name(
        &format!(
            "shared.{}.{}.{consumer_namespace}",
            ds.namespace().unwrap_or_default(),
            ds.name_any()
        ),
        253,
    )
}

/// Whether `obj` was made for `ds` (its annotation names it). Objects of the same
/// name made by someone else are never taken over.
pub fn made_for(obj: &impl ResourceExt, ds: &Dataset) -> bool {
    obj.annotations().get(DATASET_ANNOTATION) == Some(&dataset_id(ds))
}

/// The tenant owning namespace `ns`, if any.
pub fn owner_tenant<'a>(ns: &str, tenants: &'a [Arc<Tenant>]) -> Option<&'a Arc<Tenant>> {
    tenants.iter().find(|t| {
        t.status
            .as_ref()
            .is_some_and(|s| s.namespaces.iter().any(|n| n == ns))
    })
}

/// Why `owner` may not use storage class `class`, if it may not. A claim without a
/// class gets the cluster's default, which is the platform team's choice.
pub fn class_refusal(class: Option<&str>, owner: Option<&Tenant>) -> Option<String> {
    let class = class?;
    let allowed = &owner?.spec.storage.as_ref()?.classes;
    (!allowed.is_empty() && !allowed.iter().any(|c| c == class)).then(|| {
        format!(
            "storage class {class} is not allowed for tenant {} (allowed: {})",
            owner.map(|o| o.name_any()).unwrap_or_default(),
            allowed.join(", ")
        )
    })
}

fn access_mode(m: AccessMode) -> &'static str {
    match m {
        AccessMode::ReadWriteOnce => "ReadWriteOnce",
        AccessMode::ReadOnlyMany => "ReadOnlyMany",
        AccessMode::ReadWriteMany => "ReadWriteMany",
        AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
    }
}

/// Access modes of the dataset's claim: the spec's, plus ReadWriteOnce when an
/// import must write a volume otherwise only readable.
pub fn claim_access_modes(ds: &Dataset) -> Vec<&'static str> {
    let mut modes: Vec<&str> = ds
        .spec
        .access_modes
        .iter()
        .map(|m| access_mode(*m))
        .collect();
    if ds.spec.source.is_some() && modes.iter().all(|m| *m == "ReadOnlyMany") {
        modes.push("ReadWriteOnce");
    }
    modes
}

fn labels(ds: &Dataset) -> Value {
    json!({DATASET_LABEL: label_value(ds), "app.kubernetes.io/managed-by": "aifactory"})
}

fn owned_meta(ds: &Dataset, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": ds.namespace(),
        "labels": labels(ds),
        "annotations": {DATASET_ANNOTATION: dataset_id(ds)},
        "ownerReferences": [ds.controller_owner_ref(&()).expect("a Dataset from the API has a uid")],
    })
}

/// The claim holding the data: named after the Dataset, owned by it.
pub fn owner_claim(ds: &Dataset) -> PersistentVolumeClaim {
    let mut spec = json!({
        "accessModes": claim_access_modes(ds),
        "resources": {"requests": {"storage": ds.spec.size}},
    });
    if let Some(class) = &ds.spec.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": owned_meta(ds, &ds.name_any()),
        "spec": spec,
    }))
    .expect("a valid PersistentVolumeClaim")
}

/// File name an HTTP import writes: the URL's last path segment, made safe.
fn http_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let last = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let safe: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    // The host alone (`https://host`) or dots only is no file name.
    if safe.trim_matches('.').is_empty() || path.matches('/').count() < 3 {
        "data".into()
    } else {
        safe
    }
}

/// The container of an import: the command, and the credentials by reference to
/// the Secret (never their values).
fn import_container(source: &DataSource) -> Value {
    let (image, command, env, env_from) = if source.url.starts_with("s3://") {
        let mut command = vec![
            "aws".to_string(),
            "s3".into(),
            "sync".into(),
            source.url.clone(),
            "/data".into(),
            "--no-progress".into(),
        ];
        if let Some(endpoint) = &source.endpoint {
            command.extend(["--endpoint-url".into(), endpoint.clone()]);
        }
        // The Secret's keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) become
        // the container's environment.
        let env_from = source
            .secret_name
            .iter()
            .map(|s| json!({"secretRef": {"name": s}}))
            .collect::<Vec<_>>();
        (
            S3_IMAGE,
            command,
            vec![json!({"name": "HOME", "value": "/tmp"})],
            env_from,
        )
    } else {
        let mut command = vec![
            "curl".to_string(),
            "--fail".into(),
            "--silent".into(),
            "--show-error".into(),
            "--location".into(),
            "--retry".into(),
            "3".into(),
            "--output".into(),
            format!("/data/{}", http_file_name(&source.url)),
        ];
        let mut env = vec![json!({"name": "HOME", "value": "/tmp"})];
        if let Some(secret) = &source.secret_name {
            // Kubernetes expands $(TOKEN) when it starts the container: the Job
            // spec holds only the reference.
            env.push(json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}));
            command.extend(["--header".into(), "Authorization: Bearer $(TOKEN)".into()]);
        }
        command.push(source.url.clone());
        (HTTP_IMAGE, command, env, vec![])
    };
    json!({
        "name": "import",
        "image": image,
        "command": command,
        "env": env,
        "envFrom": env_from,
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
        },
    })
}

/// The Job that fills the dataset's claim from `spec.source`, mounting it
/// read-write; it complies with Pod Security `restricted`. None without a source.
pub fn import_job(ds: &Dataset) -> Option<Job> {
    let source = ds.spec.source.as_ref()?;
    let simulate: BTreeMap<&String, &String> = ds
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with(SIMULATE_PREFIX))
        .collect();
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": owned_meta(ds, &import_job_name(ds)),
        "spec": {
            // A failed download is retried twice, then the dataset is Failed.
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": labels(ds), "annotations": simulate},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": IMPORT_UID,
                        "runAsGroup": IMPORT_UID,
                        "fsGroup": IMPORT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [import_container(source)],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": ds.name_any()}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    });
    Some(serde_json::from_value(job).expect("a valid Job"))
}

/// Where an import stands, as its Job reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Import {
    /// No Job (yet).
    NotStarted,
    /// The Job runs (or waits for its pod).
    Running,
    /// The Job completed, at that time if it says.
    Succeeded(Option<Time>),
    /// The Job failed, for that reason.
    Failed(String),
}

/// The state of an import from its Job.
pub fn import_state(job: Option<&Job>) -> Import {
    let Some(job) = job else {
        return Import::NotStarted;
    };
    let status = job.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let holds = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if holds("Complete").is_some() {
        Import::Succeeded(status.completion_time)
    } else if let Some(c) = holds("Failed") {
        Import::Failed(format!(
            "{}: {}",
            c.reason.clone().unwrap_or_else(|| "Failed".into()),
            c.message.clone().unwrap_or_default()
        ))
    } else {
        Import::Running
    }
}

/// The regions the data is in: the volume's region label, else the owner's
/// residency regions; empty when unknown.
pub fn data_regions(volume: Option<&PersistentVolume>, owner: Option<&Tenant>) -> Vec<String> {
    if let Some(region) = volume.and_then(|v| v.labels().get(REGION_LABEL)) {
        return vec![region.clone()];
    }
    owner
        .and_then(|o| o.spec.residency.as_ref())
        .map(|r| r.regions.clone())
        .unwrap_or_default()
}

/// A grant that does not stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The consumer tenant.
    pub tenant: String,
    /// Condition reason: `ResidencyViolation`, `TenantNotFound`, `ClaimConflict`, ...
    pub reason: &'static str,
    /// Why, in words.
    pub message: String,
}

/// Why `owner` may not grant `consumer` read-only use of data in `regions` (the
/// rule in the module docs), or None if it may.
pub fn grant_refusal(
    owner: Option<&Tenant>,
    regions: &[String],
    consumer: &Tenant,
    pools: &[Arc<GpuPool>],
) -> Option<String> {
    let name = consumer.name_any();
    let consumer_residency = consumer.spec.residency.as_ref();
    if let Some(residency) = consumer_residency {
        let outside: Vec<&String> = regions.iter().filter(|r| !residency.allows(r)).collect();
        if regions.is_empty() || !outside.is_empty() {
            return Some(format!(
                "tenant {name} keeps its data in [{}], and this dataset is in {}",
                residency.regions.join(", "),
                if regions.is_empty() {
                    "an unknown region".to_string()
                } else {
                    regions.join(", ")
                }
            ));
        }
    }
    let owner = owner?;
    let owner_residency = owner.spec.residency.as_ref()?;
    for quota in &consumer.spec.quota {
        let Some(pool) = pools.iter().find(|p| p.name_any() == quota.pool) else {
            continue;
        };
        let region = &pool.spec.location.region;
        if consumer_residency.is_some_and(|r| !r.allows(region)) {
            continue;
        }
        if !owner_residency.allows(region) {
            return Some(format!(
                "tenant {name} may run jobs in pool {} in region {region}, outside the residency of tenant {} [{}]",
                quota.pool,
                owner.name_any(),
                owner_residency.regions.join(", ")
            ));
        }
    }
    None
}

/// The grants of `ds` that stand, one per namespace of each consumer, and the
/// refused ones. A tenant never needs a grant to its own dataset.
pub fn grants(
    ds: &Dataset,
    owner: Option<&Tenant>,
    regions: &[String],
    tenants: &[Arc<Tenant>],
    pools: &[Arc<GpuPool>],
) -> (Vec<DatasetConsumer>, Vec<Refusal>) {
    let ns = ds.namespace().unwrap_or_default();
    let owner_name = owner.map(|o| o.name_any());
    let mut granted = vec![];
    let mut refused = vec![];
    let mut names: Vec<&String> = ds
        .spec
        .sharing
        .iter()
        .flat_map(|s| s.tenants.iter())
        .collect();
    names.dedup();
    for name in names {
        if owner_name.as_ref() == Some(name) {
            continue;
        }
        let Some(consumer) = tenants.iter().find(|t| &t.name_any() == name) else {
            refused.push(Refusal {
                tenant: name.clone(),
                reason: "TenantNotFound",
                message: format!("tenant {name} does not exist"),
            });
            continue;
        };
        if let Some(message) = grant_refusal(owner, regions, consumer, pools) {
            refused.push(Refusal {
                tenant: name.clone(),
                reason: "ResidencyViolation",
                message,
            });
            continue;
        }
        let namespaces = consumer
            .status
            .as_ref()
            .map(|s| s.namespaces.clone())
            .unwrap_or_default();
        for consumer_ns in namespaces.into_iter().filter(|n| *n != ns) {
            granted.push(DatasetConsumer {
                tenant: name.clone(),
                namespace: consumer_ns,
                claim_name: shared_claim_name(&ns, &ds.name_any()),
            });
        }
    }
    (granted, refused)
}

/// Volume sources whose PersistentVolume form has a `readOnly` switch.
const READ_ONLY_SOURCES: [&str; 17] = [
    "nfs",
    "csi",
    "cephfs",
    "rbd",
    "iscsi",
    "fc",
    "glusterfs",
    "azureFile",
    "azureDisk",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "cinder",
    "flexVolume",
    "portworxVolume",
    "quobyte",
    "scaleIO",
    "storageos",
];

/// A grant's volume: the dataset's volume source made read-only, ReadOnlyMany,
/// pre-bound to the consumer's claim, Retain (deleting it never touches the data).
/// Err when the source cannot be made read-only (hostPath, local).
pub fn shared_volume(
    ds: &Dataset,
    source: &PersistentVolume,
    consumer: &DatasetConsumer,
) -> Result<PersistentVolume, String> {
    let mut spec = serde_json::to_value(source.spec.clone().unwrap_or_default())
        .expect("a PersistentVolumeSpec serializes");
    let fields = spec.as_object_mut().expect("a spec is an object");
    for key in [
        "claimRef",
        "accessModes",
        "persistentVolumeReclaimPolicy",
        "volumeAttributesClassName",
    ] {
        fields.remove(key);
    }
    let Some(kind) = READ_ONLY_SOURCES.iter().find(|k| fields.contains_key(**k)) else {
        return Err(format!(
            "volume {} cannot be mounted read-only by another tenant (its source has no readOnly switch)",
            source.name_any()
        ));
    };
    fields[*kind]["readOnly"] = json!(true);
    fields.insert("accessModes".into(), json!(["ReadOnlyMany"]));
    fields.insert("persistentVolumeReclaimPolicy".into(), json!("Retain"));
    fields.insert(
        "claimRef".into(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "namespace": consumer.namespace, "name": consumer.claim_name}),
    );
    let mut labels = labels(ds);
    labels[CONSUMER_LABEL] = json!(consumer.tenant);
    if let Some(region) = source.labels().get(REGION_LABEL) {
        labels[REGION_LABEL] = json!(region);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": shared_volume_name(ds, &consumer.namespace),
            "labels": labels,
            "annotations": {DATASET_ANNOTATION: dataset_id(ds)},
        },
        "spec": spec,
    }))
    .map_err(|e| format!("volume {}: {e}", source.name_any()))
}

/// A grant's claim in the consumer's namespace, bound to `volume`.
pub fn shared_claim(
    ds: &Dataset,
    volume: &PersistentVolume,
    consumer: &DatasetConsumer,
) -> PersistentVolumeClaim {
    let spec = volume.spec.clone().unwrap_or_default();
    let mut labels = labels(ds);
    labels[CONSUMER_LABEL] = json!(consumer.tenant);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": consumer.claim_name,
            "namespace": consumer.namespace,
            "labels": labels,
            "annotations": {DATASET_ANNOTATION: dataset_id(ds)},
        },
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "volumeName": volume.name_any(),
            // Explicit, also when empty: the default class must not be filled in,
            // or the claim would not match its volume.
            "storageClassName": spec.storage_class_name.unwrap_or_default(),
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "resources": {"requests": {"storage": SHARED_CLAIM_REQUEST}},
        },
    }))
    .expect("a valid PersistentVolumeClaim")
}

/// Pods among `pods` that are not finished and mount `claim`: `<namespace>/<name>`.
pub fn pods_using(pods: &[Pod], claim: &str) -> Vec<String> {
    pods.iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter(|p| {
            p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                })
        })
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect()
}

/// What a reconcile saw and did, from which the status follows.
#[derive(Debug)]
pub struct Observed<'a> {
    /// Why nothing could be provisioned: (reason, message).
    pub blocked: Option<(&'static str, String)>,
    /// The dataset's claim.
    pub claim: Option<&'a PersistentVolumeClaim>,
    /// The volume bound to it.
    pub volume: Option<&'a PersistentVolume>,
    /// The import's state.
    pub import: Option<Import>,
    /// The owner tenant.
    pub owner: Option<&'a Tenant>,
    /// Grants in force (volume and claim made).
    pub consumers: Vec<DatasetConsumer>,
    /// Grants refused.
    pub refusals: Vec<Refusal>,
    /// Grants withdrawn whose claim is still in use: why each waits.
    pub revoking: Vec<String>,
    /// While the Dataset is being deleted: the pods it waits for.
    pub in_use: Vec<String>,
    /// A refused resize of the claim, with the API's answer.
    pub resize_refused: Option<String>,
    /// The time of this reconcile.
    pub now: Time,
}

impl Observed<'_> {
    /// Nothing observed yet, at `now`.
    pub fn at(now: Time) -> Self {
        Self {
            blocked: None,
            claim: None,
            volume: None,
            import: None,
            owner: None,
            consumers: vec![],
            refusals: vec![],
            revoking: vec![],
            in_use: vec![],
            resize_refused: None,
            now,
        }
    }
}

fn claim_phase(claim: Option<&PersistentVolumeClaim>) -> Option<&str> {
    claim?.status.as_ref()?.phase.as_deref()
}

/// Phase and the Ready condition's (status, reason, message), before deletion.
fn readiness(ds: &Dataset, o: &Observed) -> (DatasetPhase, bool, &'static str, String) {
    let previous = ds.status.clone().unwrap_or_default();
    let name = ds.name_any();
    if let Some((reason, message)) = &o.blocked {
        return (DatasetPhase::Failed, false, reason, message.clone());
    }
    match claim_phase(o.claim) {
        Some("Bound") => {}
        Some("Lost") => {
            return (
                DatasetPhase::Failed,
                false,
                "ClaimLost",
                format!("claim {name} lost its volume"),
            );
        }
        phase => {
            return (
                DatasetPhase::Pending,
                false,
                "ClaimPending",
                format!(
                    "waiting for claim {name} to be bound to a volume ({})",
                    phase.unwrap_or("not created yet")
                ),
            );
        }
    }
    let volume = o.volume.map(|v| v.name_any()).unwrap_or_default();
    if let (Some(owner), Some(region)) =
        (o.owner, o.volume.and_then(|v| v.labels().get(REGION_LABEL)))
        && let Some(residency) = &owner.spec.residency
        && !residency.allows(region)
    {
        return (
            DatasetPhase::Failed,
            false,
            "ResidencyViolation",
            format!(
                "volume {volume} is in region {region}, outside the residency of tenant {} [{}]",
                owner.name_any(),
                residency.regions.join(", ")
            ),
        );
    }
    if ds.spec.source.is_some() && previous.imported_at.is_none() {
        let job = import_job_name(ds);
        match o.import.clone().unwrap_or(Import::NotStarted) {
            Import::NotStarted | Import::Running => {
                return (
                    DatasetPhase::Importing,
                    false,
                    "Importing",
                    format!("import job {job} is filling volume {volume}"),
                );
            }
            Import::Failed(why) => {
                return (
                    DatasetPhase::Failed,
                    false,
                    "ImportFailed",
                    format!("import job {job} failed ({why}); delete the Job to try again"),
                );
            }
            Import::Succeeded(_) => {}
        }
    }
    (
        DatasetPhase::Ready,
        true,
        if ds.spec.source.is_some() {
            "Imported"
        } else {
            "Bound"
        },
        format!("claim {name} is bound to volume {volume}"),
    )
}

/// The status of `ds` from what the reconcile observed.
pub fn status(ds: &Dataset, o: &Observed) -> DatasetStatus {
    let previous = ds.status.clone().unwrap_or_default();
    let generation = ds.metadata.generation;
    let (phase, mut ready, mut reason, mut message) = readiness(ds, o);
    if !o.in_use.is_empty() {
        (ready, reason) = (false, "InUse");
        message = format!(
            "deletion waits until no pod uses the data: {}",
            o.in_use.join(", ")
        );
    }
    let mut conditions: Vec<Condition> = vec![condition(
        &previous.conditions,
        CONDITION_READY,
        ready,
        reason,
        message,
        generation,
        &o.now,
    )];
    let sharing = ds
        .spec
        .sharing
        .as_ref()
        .is_some_and(|s| !s.tenants.is_empty());
    if sharing || !o.revoking.is_empty() || !o.consumers.is_empty() {
        let granted: Vec<String> = o
            .consumers
            .iter()
            .map(|c| format!("{} ({}/{})", c.tenant, c.namespace, c.claim_name))
            .collect();
        let (ok, reason, mut message) = if phase != DatasetPhase::Ready && o.consumers.is_empty() {
            (
                false,
                "WaitingForData",
                "grants take effect once the dataset is Ready".to_string(),
            )
        } else if let Some(first) = o.refusals.first() {
            let refused: Vec<&str> = o.refusals.iter().map(|r| r.message.as_str()).collect();
            (
                false,
                first.reason,
                format!("refused: {}", refused.join("; ")),
            )
        } else if granted.is_empty() {
            (true, "NotShared", "shared with no tenant".to_string())
        } else {
            (
                true,
                "Granted",
                format!("read-only for {}", granted.join(", ")),
            )
        };
        if !o.revoking.is_empty() {
            message = format!("{message}; revoking once unused: {}", o.revoking.join("; "));
        }
        conditions.push(condition(
            &previous.conditions,
            CONDITION_SHARED,
            ok,
            reason,
            message,
            generation,
            &o.now,
        ));
    }
    if let Some(why) = &o.resize_refused {
        conditions.push(condition(
            &previous.conditions,
            CONDITION_RESIZED,
            false,
            "ResizeRefused",
            why.clone(),
            generation,
            &o.now,
        ));
    }
    let imported_at = previous.imported_at.clone().or_else(|| match &o.import {
        Some(Import::Succeeded(at)) => Some(at.clone().unwrap_or_else(|| o.now.clone())),
        _ => None,
    });
    let claim = o.claim;
    DatasetStatus {
        observed_generation: generation,
        phase: Some(phase),
        claim_name: claim.map(|c| c.name_any()),
        volume_name: claim
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.volume_name.clone())
            .filter(|_| claim_phase(claim) == Some("Bound")),
        region: match data_regions(o.volume, o.owner).as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        },
        imported_at,
        consumers: if phase == DatasetPhase::Ready {
            o.consumers.clone()
        } else {
            previous.consumers
        },
        conditions,
    }
}

/// Bytes of a Kubernetes quantity (`500Gi`, `2Ti`, `1.5G`, `100`), for comparing
/// sizes written differently; None if it is not one.
pub fn quantity_bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "m" => 1e-3,
        _ => return None,
    };
    Some(number * factor)
}

/// Whether the live claim requests less than `size` (the spec grew). The API
/// server stores a claim's request in an int64 of bytes, clamping anything
/// larger (`36654Pi` reads back as 9223372036854775807): a size beyond that is
/// what the claim has already, not a growth to ask for again at every reconcile.
pub fn claim_must_grow(live: &PersistentVolumeClaim, size: &str) -> bool {
    let requested = live
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity_bytes(&q.0));
    matches!((requested, quantity_bytes(size)), (Some(have), Some(want)) if want.min(i64::MAX as f64) > have)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(spec: Value) -> Dataset {
        serde_json::from_value(json!({
            "apiVersion": "aifactory.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "scans", "namespace": "hospital", "uid": "u1", "generation": 1,
                         "annotations": {"aifactory.dev/simulate-duration": "2s", "note": "x"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn tenant(name: &str, spec: Value) -> Arc<Tenant> {
        let mut spec = spec;
        spec["owners"] = json!([{"kind": "User", "name": "someone"}]);
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": name}, "spec": spec,
                "status": {"namespaces": [name]},
            }))
            .unwrap(),
        )
    }

    fn pool(name: &str, region: &str) -> Arc<GpuPool> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "aifactory.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": name},
                "spec": {"nodeSelector": {"matchLabels": {"a": "b"}},
                         "gpu": {"model": "H100", "perNode": 8, "powerWatts": 700},
                         "location": {"region": region}},
            }))
            .unwrap(),
        )
    }

    fn nfs_volume(region: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "factory-nfs-007", "labels": {REGION_LABEL: region}},
            "spec": {"storageClassName": "factory-nfs", "capacity": {"storage": "10Gi"},
                     "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "persistentVolumeReclaimPolicy": "Retain",
                     "nfs": {"server": "nfs.example", "path": "/exports/7"},
                     "claimRef": {"namespace": "hospital", "name": "scans", "uid": "c1"}},
        }))
        .unwrap()
    }

    #[test]
    fn an_s3_import_references_the_secret_and_passes_pod_security_restricted() {
        let ds = dataset(json!({"size": "2Ti", "accessModes": ["ReadOnlyMany"],
            "source": {"url": "s3://bucket/scans/", "endpoint": "https://s3.eu-west.example", "secretName": "s3-creds"}}));
        let job = serde_json::to_value(import_job(&ds).unwrap()).unwrap();
        let template = &job["spec"]["template"];
        assert_eq!(
            template["metadata"]["annotations"],
            json!({"aifactory.dev/simulate-duration": "2s"})
        );
        let pod = &template["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["envFrom"], json!([{"secretRef": {"name": "s3-creds"}}]));
        assert_eq!(c["image"], S3_IMAGE);
        assert!(
            c["command"]
                .to_string()
                .contains("https://s3.eu-west.example")
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"],
            json!({"claimName": "scans"})
        );
        // A read-only dataset's claim is still writable once, by its import.
        assert_eq!(claim_access_modes(&ds), ["ReadOnlyMany", "ReadWriteOnce"]);
    }

    #[test]
    fn an_http_import_takes_its_token_from_the_secret_at_run_time() {
        let ds = dataset(json!({"size": "1Gi",
            "source": {"url": "https://data.example/bench/grasping.tar?sig=1", "secretName": "web"}}));
        let job = serde_json::to_value(import_job(&ds).unwrap()).unwrap();
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["env"][1],
            json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "web", "key": "token"}}})
        );
        let command: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
        assert!(command.contains(&"/data/grasping.tar".to_string()));
        assert!(command.contains(&"Authorization: Bearer $(TOKEN)".to_string()));
        assert_eq!(http_file_name("https://host"), "data");
        assert_eq!(http_file_name("https://host/a/../"), "data");
    }

    #[test]
    fn a_job_in_progress_completed_or_failed_gives_the_import_state() {
        let job = |conditions: Value| -> Job {
            serde_json::from_value(json!({"status": {"conditions": conditions}})).unwrap()
        };
        assert_eq!(import_state(None), Import::NotStarted);
        assert_eq!(import_state(Some(&job(json!([])))), Import::Running);
        assert_eq!(
            import_state(Some(&job(json!([{"type": "Complete", "status": "True"}])))),
            Import::Succeeded(None)
        );
        assert_eq!(
            import_state(Some(&job(json!([{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}])))),
            Import::Failed(
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            )
        );
    }

    #[test]
    fn a_consumer_whose_residency_excludes_the_datas_region_is_refused() {
        let hospital = tenant("hospital", json!({"residency": {"regions": ["eu-west"]}}));
        let nordic = tenant("nordic", json!({"residency": {"regions": ["eu-north"]}}));
        let regions = data_regions(Some(&nfs_volume("eu-west")), Some(&hospital));
        assert_eq!(regions, ["eu-west"]);
        let why = grant_refusal(Some(&hospital), &regions, &nordic, &[]).unwrap();
        assert!(why.contains("eu-north") && why.contains("eu-west"), "{why}");
        // Data of unknown region cannot be proven to stay in the consumer's.
        assert!(grant_refusal(None, &[], &nordic, &[]).is_some());
    }

    #[test]
    fn a_consumer_with_a_pool_outside_the_owners_residency_is_refused() {
        let hospital = tenant("hospital", json!({"residency": {"regions": ["eu-west"]}}));
        let pools = [
            pool("h100-lux", "eu-west"),
            pool("a100-helsinki", "eu-north"),
        ];
        let uni = tenant(
            "uni",
            json!({"quota": [{"pool": "h100-lux", "gpus": 0}, {"pool": "a100-helsinki", "gpus": 8}]}),
        );
        let regions = ["eu-west".to_string()];
        let why = grant_refusal(Some(&hospital), &regions, &uni, &pools).unwrap();
        assert!(why.contains("a100-helsinki"), "{why}");
        // Pinned to eu-west by its own residency, uni can never carry the data north.
        let pinned = tenant(
            "uni",
            json!({"quota": [{"pool": "h100-lux", "gpus": 0}, {"pool": "a100-helsinki", "gpus": 8}],
                   "residency": {"regions": ["eu-west"]}}),
        );
        assert_eq!(
            grant_refusal(Some(&hospital), &regions, &pinned, &pools),
            None
        );
        // An owner without residency lets anyone with a compatible residency read.
        assert_eq!(grant_refusal(None, &regions, &uni, &pools), None);
    }

    #[test]
    fn grants_give_each_namespace_of_a_consumer_a_claim_and_skip_the_owner() {
        let ds = dataset(json!({"size": "1Gi", "accessModes": ["ReadOnlyMany"],
            "sharing": {"tenants": ["hospital", "uni", "ghost"]}}));
        let hospital = tenant("hospital", json!({}));
        let uni = tenant("uni", json!({}));
        let (granted, refused) = grants(
            &ds,
            Some(&hospital),
            &["eu-west".into()],
            &[hospital.clone(), uni],
            &[],
        );
        assert_eq!(
            granted,
            [DatasetConsumer {
                tenant: "uni".into(),
                namespace: "uni".into(),
                claim_name: "shared.hospital.scans".into()
            }]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].reason, "TenantNotFound");
    }

    #[test]
    fn a_shared_volume_is_the_same_data_read_only_and_pre_bound_to_the_consumer() {
        let ds = dataset(json!({"size": "1Gi", "accessModes": ["ReadOnlyMany"]}));
        let consumer = DatasetConsumer {
            tenant: "uni".into(),
            namespace: "uni".into(),
            claim_name: "shared.hospital.scans".into(),
        };
        let pv = shared_volume(&ds, &nfs_volume("eu-west"), &consumer).unwrap();
        let v = serde_json::to_value(&pv).unwrap();
        assert_eq!(v["metadata"]["name"], "shared.hospital.scans.uni");
        assert_eq!(v["metadata"]["labels"][DATASET_LABEL], "hospital.scans");
        assert_eq!(
            v["spec"]["nfs"],
            json!({"server": "nfs.example", "path": "/exports/7", "readOnly": true})
        );
        assert_eq!(v["spec"]["accessModes"], json!(["ReadOnlyMany"]));
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(
            v["spec"]["claimRef"],
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "uni", "name": "shared.hospital.scans"})
        );
        let claim = serde_json::to_value(shared_claim(&ds, &pv, &consumer)).unwrap();
        assert_eq!(claim["metadata"]["namespace"], "uni");
        assert_eq!(claim["spec"]["volumeName"], "shared.hospital.scans.uni");
        assert_eq!(claim["spec"]["storageClassName"], "factory-nfs");
        assert_eq!(claim["spec"]["accessModes"], json!(["ReadOnlyMany"]));

        let mut local = nfs_volume("eu-west");
        let spec = local.spec.as_mut().unwrap();
        spec.nfs = None;
        spec.host_path = Some(serde_json::from_value(json!({"path": "/srv"})).unwrap());
        assert!(shared_volume(&ds, &local, &consumer).is_err());
    }

    #[test]
    fn only_unfinished_pods_mounting_the_claim_keep_it_in_use() {
        let pod = |name: &str, phase: &str, claim: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "uni"},
                "spec": {"containers": [], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]},
                "status": {"phase": phase}}))
            .unwrap()
        };
        let pods = [
            pod("train-0", "Running", "shared.hospital.scans"),
            pod("done-0", "Succeeded", "shared.hospital.scans"),
            pod("other-0", "Running", "home"),
        ];
        assert_eq!(pods_using(&pods, "shared.hospital.scans"), ["uni/train-0"]);
    }

    #[test]
    fn the_status_follows_the_claim_then_the_import() {
        let ds = dataset(json!({"size": "1Gi", "source": {"url": "https://x.example/a.tar"}}));
        let now = Time(jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let mut claim = owner_claim(&ds);
        let pending = status(
            &ds,
            &Observed {
                claim: Some(&claim),
                ..Observed::at(now.clone())
            },
        );
        assert_eq!(pending.phase, Some(DatasetPhase::Pending));
        claim.spec.as_mut().unwrap().volume_name = Some("factory-nfs-007".into());
        claim.status = Some(serde_json::from_value(json!({"phase": "Bound"})).unwrap());
        let volume = nfs_volume("eu-west");
        let observed = |import| Observed {
            claim: Some(&claim),
            volume: Some(&volume),
            import: Some(import),
            ..Observed::at(now.clone())
        };
        let importing = status(&ds, &observed(Import::Running));
        assert_eq!(importing.phase, Some(DatasetPhase::Importing));
        assert_eq!(importing.volume_name.as_deref(), Some("factory-nfs-007"));
        assert_eq!(importing.region.as_deref(), Some("eu-west"));
        let failed = status(
            &ds,
            &observed(Import::Failed("BackoffLimitExceeded: x".into())),
        );
        assert_eq!(failed.phase, Some(DatasetPhase::Failed));
        assert_eq!(failed.conditions[0].reason, "ImportFailed");
        let ready = status(&ds, &observed(Import::Succeeded(None)));
        assert_eq!(ready.phase, Some(DatasetPhase::Ready));
        assert_eq!(ready.imported_at, Some(now));
    }

    #[test]
    fn sizes_compare_by_value_not_by_spelling() {
        assert_eq!(quantity_bytes("1Gi"), quantity_bytes("1024Mi"));
        assert!(quantity_bytes("2Ti") > quantity_bytes("2T"));
        let claim: PersistentVolumeClaim = serde_json::from_value(
            json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .unwrap();
        assert!(!claim_must_grow(&claim, "1024Mi"));
        assert!(claim_must_grow(&claim, "2Gi"));
        // What the API server made of a size past int64 bytes (found by the fuzz
        // run: the claim was "grown" again at every reconcile).
        let clamped: PersistentVolumeClaim = serde_json::from_value(
            json!({"spec": {"resources": {"requests": {"storage": "9223372036854775807"}}}}),
        )
        .unwrap();
        assert!(!claim_must_grow(&clamped, "36654Pi"));
        assert!(!claim_must_grow(&clamped, "8Ei"));
        // A fractional byte count, as the API server writes it back (milli-bytes).
        let fractional: PersistentVolumeClaim = serde_json::from_value(
            json!({"spec": {"resources": {"requests": {"storage": "202937204736m"}}}}),
        )
        .unwrap();
        assert!(!claim_must_grow(&fractional, ".189Gi"));
    }
}
