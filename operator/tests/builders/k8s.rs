//! Kubernetes' own validation of the objects the builders make, written out small.
//! Each rule cites where the API server enforces it, in k8s.io/kubernetes v1.34.4
//! (what the local factory runs; `hack/k8s/go.mod`) and k8s.io/apimachinery
//! v0.34.4. Where a rule changed between 1.30 (the chart's oldest supported
//! version) and 1.34, the stricter one is checked.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, LimitRange, Namespace, Node, PersistentVolume, PersistentVolumeClaim,
    PodSpec, PodTemplateSpec, ResourceQuota, Service, ServiceAccount, Taint, Volume,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::sync::LazyLock;

/// What is wrong with an object, each as `path: message`.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<String>);

impl Errors {
    fn add(&mut self, path: impl Display, msgs: Vec<String>) {
        for m in msgs {
            self.0.push(format!("{path}: {m}"));
        }
    }

    fn fail(&mut self, path: impl Display, msg: impl Display) {
        self.0.push(format!("{path}: {msg}"));
    }

    fn check(&mut self, ok: bool, path: impl Display, msg: impl Display) {
        if !ok {
            self.fail(path, msg);
        }
    }
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid regex")
}

// --- apimachinery/pkg/util/validation/validation.go -------------------------------

static DNS1123_LABEL: LazyLock<Regex> = LazyLock::new(|| re("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"));
static DNS1123_SUBDOMAIN: LazyLock<Regex> =
    LazyLock::new(|| re(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"));
static DNS1035_LABEL: LazyLock<Regex> = LazyLock::new(|| re("^[a-z]([-a-z0-9]*[a-z0-9])?$"));
static QUALIFIED_NAME: LazyLock<Regex> =
    LazyLock::new(|| re("^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"));
static LABEL_VALUE: LazyLock<Regex> =
    LazyLock::new(|| re("^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"));
static ENV_VAR_NAME: LazyLock<Regex> = LazyLock::new(|| re("^[-._a-zA-Z][-._a-zA-Z0-9]*$"));
static CONFIG_MAP_KEY: LazyLock<Regex> = LazyLock::new(|| re("^[-._a-zA-Z0-9]+$"));
/// `resource.ParseQuantity`'s grammar (apimachinery/pkg/api/resource/quantity.go).
static QUANTITY: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")
});

/// `IsDNS1123Label`: at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns1123_label(v: &str) -> Vec<String> {
    let mut e = vec![];
    if v.len() > 63 {
        e.push(format!("{v:?} is longer than 63 (DNS-1123 label)"));
    }
    if !DNS1123_LABEL.is_match(v) {
        e.push(format!("{v:?} is not a DNS-1123 label"));
    }
    e
}

/// `IsDNS1123Subdomain`: at most 253, dot-separated DNS-1123 labels.
pub fn dns1123_subdomain(v: &str) -> Vec<String> {
    let mut e = vec![];
    if v.len() > 253 {
        e.push(format!("{v:?} is longer than 253 (DNS-1123 subdomain)"));
    }
    if !DNS1123_SUBDOMAIN.is_match(v) {
        e.push(format!("{v:?} is not a DNS-1123 subdomain"));
    }
    e
}

/// `IsDNS1035Label`: a DNS-1123 label starting with a letter.
pub fn dns1035_label(v: &str) -> Vec<String> {
    let mut e = vec![];
    if v.len() > 63 {
        e.push(format!("{v:?} is longer than 63 (DNS-1035 label)"));
    }
    if !DNS1035_LABEL.is_match(v) {
        e.push(format!("{v:?} is not a DNS-1035 label"));
    }
    e
}

/// `IsQualifiedName`: `[prefix/]name`, prefix a DNS-1123 subdomain, name at most 63
/// of `[-A-Za-z0-9_.]`, alphanumeric at both ends. Label keys, annotation keys
/// (lowercased), taint keys, resource names.
pub fn qualified_name(v: &str) -> Vec<String> {
    let mut e = vec![];
    let parts: Vec<&str> = v.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                e.push(format!("{v:?}: empty prefix"));
            } else {
                e.extend(dns1123_subdomain(prefix));
            }
            *name
        }
        _ => return vec![format!("{v:?} is not a qualified name (more than one '/')")],
    };
    if name.len() > 63 {
        e.push(format!("{v:?}: name part longer than 63"));
    }
    if !QUALIFIED_NAME.is_match(name) {
        e.push(format!("{v:?}: name part is not a qualified name"));
    }
    e
}

/// `IsValidLabelValue`: empty, or at most 63 of `[-A-Za-z0-9_.]`, alphanumeric at
/// both ends.
pub fn label_value(v: &str) -> Vec<String> {
    let mut e = vec![];
    if v.len() > 63 {
        e.push(format!("label value {v:?} is longer than 63"));
    }
    if !LABEL_VALUE.is_match(v) {
        e.push(format!("{v:?} is not a valid label value"));
    }
    e
}

/// `hasChDirPrefix`: not `.`, `..` or starting with `..`.
fn chdir_prefix(v: &str) -> Vec<String> {
    if v == "." || v.starts_with("..") {
        vec![format!("{v:?} may not be '.' or start with '..'")]
    } else {
        vec![]
    }
}

/// `IsEnvVarName` (the rule up to 1.33; 1.34's relaxed one accepts a superset):
/// `[-._a-zA-Z][-._a-zA-Z0-9]*`, not `.` nor starting with `..`.
pub fn env_var_name(v: &str) -> Vec<String> {
    let mut e = chdir_prefix(v);
    if !ENV_VAR_NAME.is_match(v) {
        e.push(format!("{v:?} is not a valid environment variable name"));
    }
    e
}

/// `IsConfigMapKey`: at most 253 of `[-._a-zA-Z0-9]`, not `.` nor `..*`.
pub fn config_map_key(v: &str) -> Vec<String> {
    let mut e = chdir_prefix(v);
    if v.len() > 253 {
        e.push(format!("key {v:?} is longer than 253"));
    }
    if !CONFIG_MAP_KEY.is_match(v) {
        e.push(format!("{v:?} is not a valid ConfigMap/Secret key"));
    }
    e
}

/// `IsValidPortName` (IANA_SVC_NAME): at most 15 of `[-a-z0-9]`, at least one
/// letter, no `--`, no `-` at either end.
pub fn port_name(v: &str) -> Vec<String> {
    let mut e = vec![];
    if v.len() > 15 {
        e.push(format!("port name {v:?} is longer than 15"));
    }
    if v.is_empty()
        || !v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        e.push(format!("port name {v:?} may hold only a-z, 0-9 and '-'"));
    }
    if !v.bytes().any(|b| b.is_ascii_lowercase()) {
        e.push(format!("port name {v:?} needs a letter"));
    }
    if v.contains("--") || v.starts_with('-') || v.ends_with('-') {
        e.push(format!("port name {v:?}: no '--', no '-' at either end"));
    }
    e
}

/// `IsValidPortNum`: 1..=65535.
pub fn port_num(p: i32) -> Vec<String> {
    if (1..=65535).contains(&p) {
        vec![]
    } else {
        vec![format!("port {p} is not in 1..65535")]
    }
}

/// `path.IsValidPathSegmentName` (RBAC object names): not `.`/`..`, no `/` or `%`.
pub fn path_segment_name(v: &str) -> Vec<String> {
    if v == "." || v == ".." || v.contains('/') || v.contains('%') {
        vec![format!("{v:?} is not a valid path segment name")]
    } else {
        vec![]
    }
}

// --- quantities --------------------------------------------------------------------

/// The value of a quantity (`resource.ParseQuantity`), as f64: precise enough to
/// compare the quantities the builders write.
pub fn quantity(q: &str) -> Option<f64> {
    if !QUANTITY.is_match(q) {
        return None;
    }
    let (number, factor) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ]
    .iter()
    .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
    .unwrap_or((q, 1.0));
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn valid_quantity(e: &mut Errors, path: impl Display, q: &str) -> Option<f64> {
    let v = quantity(q);
    e.check(v.is_some(), &path, format!("{q:?} is not a quantity"));
    v
}

// --- object metadata: apimachinery/pkg/api/validation/objectmeta.go ----------------

/// The rule an object's name must follow, per kind.
#[derive(Clone, Copy, Debug)]
pub enum NameRule {
    /// `NameIsDNSSubdomain`: PVCs, PVs, Jobs, ServiceAccounts, ResourceQuotas, ...
    Subdomain,
    /// `NameIsDNSLabel`: Namespaces (`ValidateNamespaceName`), StatefulSets
    /// (apps/validation `ValidateStatefulSetName`).
    Label,
    /// `NameIsDNS1035Label`: Services (`ValidateServiceName`).
    Dns1035,
    /// `ValidateRBACName`: Roles, bindings, ClusterRoles.
    PathSegment,
}

/// `ValidateLabels`: keys qualified names, values label values.
pub fn labels(e: &mut Errors, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        e.add(format!("{path}[{k}]"), qualified_name(k));
        e.add(format!("{path}[{k}]"), label_value(v));
    }
}

/// `ValidateAnnotations`: keys qualified names once lowercased; at most 256 KiB.
pub fn annotations(e: &mut Errors, path: &str, annotations: &BTreeMap<String, String>) {
    let mut size = 0;
    for (k, v) in annotations {
        e.add(format!("{path}[{k}]"), qualified_name(&k.to_lowercase()));
        size += k.len() + v.len();
    }
    e.check(size <= 256 * 1024, path, "annotations exceed 256 KiB");
}

/// `ValidateObjectMeta`: name by `rule`, namespace a DNS label when namespaced
/// (none otherwise), labels, annotations, owner references (`ValidateOwnerReferences`:
/// apiVersion, kind, name, uid set; at most one controller).
pub fn meta(e: &mut Errors, path: &str, m: &ObjectMeta, rule: NameRule, namespaced: bool) {
    match m.name.as_deref() {
        None | Some("") => e.fail(format!("{path}.name"), "required"),
        Some(name) => e.add(
            format!("{path}.name"),
            match rule {
                NameRule::Subdomain => dns1123_subdomain(name),
                NameRule::Label => dns1123_label(name),
                NameRule::Dns1035 => dns1035_label(name),
                NameRule::PathSegment => path_segment_name(name),
            },
        ),
    }
    match (namespaced, m.namespace.as_deref()) {
        (true, Some(ns)) => e.add(format!("{path}.namespace"), dns1123_label(ns)),
        (true, None) => e.fail(format!("{path}.namespace"), "required"),
        (false, Some(ns)) if !ns.is_empty() => e.fail(
            format!("{path}.namespace"),
            "not allowed on a cluster object",
        ),
        _ => {}
    }
    labels(
        e,
        &format!("{path}.labels"),
        m.labels.as_ref().unwrap_or(&BTreeMap::new()),
    );
    annotations(
        e,
        &format!("{path}.annotations"),
        m.annotations.as_ref().unwrap_or(&BTreeMap::new()),
    );
    let refs = m.owner_references.as_deref().unwrap_or_default();
    for (i, r) in refs.iter().enumerate() {
        let p = format!("{path}.ownerReferences[{i}]");
        let version = r.api_version.rsplit('/').next().unwrap_or_default();
        e.check(!version.is_empty(), &p, "apiVersion without version");
        e.check(!r.kind.is_empty(), &p, "kind empty");
        e.check(!r.name.is_empty(), &p, "name empty");
        e.check(!r.uid.is_empty(), &p, "uid empty");
    }
    e.check(
        refs.iter().filter(|r| r.controller == Some(true)).count() <= 1,
        format!("{path}.ownerReferences"),
        "more than one controller",
    );
}

/// The owner references the operator's convention asks for: exactly one, the
/// controller, naming `owner` (kind/name/uid).
pub fn owned_by(e: &mut Errors, path: &str, m: &ObjectMeta, kind: &str, name: &str, uid: &str) {
    let refs = m.owner_references.as_deref().unwrap_or_default();
    let ok = matches!(refs, [r] if r.kind == kind && r.name == name && r.uid == uid && r.controller == Some(true));
    e.check(
        ok,
        format!("{path}.ownerReferences"),
        format!("want one controller reference to {kind} {name}, have {refs:?}"),
    );
}

/// `ValidateLabelSelector`: matchLabels as labels; expressions with a qualified
/// key, a known operator, values (label values) exactly for In/NotIn.
pub fn label_selector(e: &mut Errors, path: &str, s: &LabelSelector) {
    labels(
        e,
        &format!("{path}.matchLabels"),
        s.match_labels.as_ref().unwrap_or(&BTreeMap::new()),
    );
    for (i, x) in s.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        e.add(&p, qualified_name(&x.key));
        let values = x.values.as_deref().unwrap_or_default();
        match x.operator.as_str() {
            "In" | "NotIn" => e.check(!values.is_empty(), &p, "In/NotIn need values"),
            "Exists" | "DoesNotExist" => e.check(values.is_empty(), &p, "no values allowed"),
            op => e.fail(&p, format!("unknown operator {op}")),
        }
        for v in values {
            e.add(&p, label_value(v));
        }
    }
}

/// Whether `selector` (matchLabels only, as the builders write) selects `labels`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// --- pods: pkg/apis/core/validation/validation.go -----------------------------------

/// `validateContainerResourceName`: a qualified name; without `/` a standard
/// container resource (cpu, memory, ephemeral-storage, hugepages-*); with `/` either
/// native (`kubernetes.io/`) or an extended resource name (`IsExtendedResourceName`:
/// not `requests.`-prefixed, and `requests.<name>` a qualified name: the quota key).
pub fn container_resource_name(name: &str) -> Vec<String> {
    let mut e = qualified_name(name);
    if !e.is_empty() {
        return e;
    }
    if !name.contains('/') {
        if !["cpu", "memory", "ephemeral-storage"].contains(&name)
            && !name.starts_with("hugepages-")
        {
            e.push(format!("{name:?} is not a standard container resource"));
        }
    } else if !is_native_resource(name) && !is_extended_resource(name) {
        e.push(format!(
            "{name:?} does not follow the extended resource name standard"
        ));
    }
    e
}

/// `helper.IsNativeResource`.
fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// `helper.IsExtendedResourceName`.
fn is_extended_resource(name: &str) -> bool {
    !is_native_resource(name)
        && !name.starts_with("requests.")
        && qualified_name(&format!("requests.{name}")).is_empty()
}

/// `validateResourceRequirements`: names valid; quantities non-negative (integers for
/// extended resources); a request at most its limit, and equal to it (with the
/// limit present) for resources that cannot be overcommitted (extended ones).
fn resources(e: &mut Errors, path: &str, c: &Container) {
    let r = c.resources.clone().unwrap_or_default();
    let limits = r.limits.unwrap_or_default();
    let requests = r.requests.unwrap_or_default();
    for (kind, map) in [("limits", &limits), ("requests", &requests)] {
        for (name, q) in map {
            let p = format!("{path}.resources.{kind}[{name}]");
            e.add(&p, container_resource_name(name));
            if let Some(v) = valid_quantity(e, &p, &q.0) {
                e.check(v >= 0.0, &p, format!("{} is negative", q.0));
                if is_extended_resource(name) {
                    e.check(v.fract() == 0.0, &p, format!("{} is not an integer", q.0));
                }
            }
        }
    }
    let overcommit = |n: &str| is_native_resource(n) && !n.starts_with("hugepages-");
    for (name, q) in &requests {
        let p = format!("{path}.resources.requests[{name}]");
        match limits.get(name) {
            Some(l) => {
                let (rq, lq) = (quantity(&q.0), quantity(&l.0));
                if !overcommit(name) {
                    e.check(rq == lq, &p, format!("must equal the limit {}", l.0));
                } else {
                    e.check(rq <= lq, &p, format!("must be at most the limit {}", l.0));
                }
            }
            None => e.check(
                overcommit(name),
                &p,
                "a limit is required (not overcommittable)",
            ),
        }
    }
}

/// `ValidateEnv` and `validateEnvVarValueFrom`: names valid; `valueFrom` exactly one
/// source and not beside a non-empty `value`; each source's own rules.
fn env(e: &mut Errors, path: &str, vars: &[EnvVar]) {
    for (i, v) in vars.iter().enumerate() {
        let p = format!("{path}.env[{i}]");
        if v.name.is_empty() {
            e.fail(&p, "name required");
        } else {
            e.add(&p, env_var_name(&v.name));
        }
        let Some(from) = &v.value_from else { continue };
        let mut sources = 0;
        if let Some(f) = &from.field_ref {
            sources += 1;
            // validateObjectFieldSelector with validEnvDownwardAPIFieldPathExpressions;
            // the apiVersion is defaulted to v1 and must be v1
            // (ConvertDownwardAPIFieldLabel).
            let version = f.api_version.as_deref().unwrap_or("v1");
            e.check(
                version == "v1",
                &p,
                format!("fieldRef apiVersion {version:?} is not v1"),
            );
            e.add(&p, env_field_path(&f.field_path));
        }
        if let Some(r) = &from.resource_field_ref {
            sources += 1;
            e.add(
                &p,
                env_resource_field(&r.resource, r.divisor.as_ref().map(|d| d.0.as_str())),
            );
        }
        if let Some(k) = &from.config_map_key_ref {
            sources += 1;
            e.add(
                format!("{p}.configMapKeyRef.name"),
                dns1123_subdomain(&k.name),
            );
            e.add(format!("{p}.configMapKeyRef.key"), config_map_key(&k.key));
        }
        if let Some(k) = &from.secret_key_ref {
            sources += 1;
            e.add(format!("{p}.secretKeyRef.name"), dns1123_subdomain(&k.name));
            e.add(format!("{p}.secretKeyRef.key"), config_map_key(&k.key));
        }
        if from.file_key_ref.is_some() {
            // EnvFiles is alpha (off) in 1.34: the field is dropped on create, which
            // leaves valueFrom without a source.
            e.fail(&p, "fileKeyRef needs the EnvFiles alpha feature gate");
        }
        e.check(sources > 0, &p, "valueFrom needs one source");
        e.check(sources <= 1, &p, "valueFrom may have only one source");
        e.check(
            v.value.as_deref().unwrap_or_default().is_empty(),
            &p,
            "valueFrom may not be set beside a non-empty value",
        );
    }
}

/// `validateObjectFieldSelector` for env: one of the downward API expressions, or a
/// `metadata.labels['<key>']` / `metadata.annotations['<key>']` subscript of a
/// qualified name (`ConvertDownwardAPIFieldLabel` also maps `spec.host`).
pub fn env_field_path(path: &str) -> Vec<String> {
    const EXPRESSIONS: [&str; 10] = [
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
        "spec.host",
    ];
    // fieldpath.SplitMaybeSubscriptedPath
    if let Some(s) = path.strip_suffix("']")
        && let Some((field, key)) = s.split_once("['")
        && !field.is_empty()
    {
        return match field {
            "metadata.labels" => qualified_name(key),
            "metadata.annotations" => qualified_name(&key.to_lowercase()),
            _ => vec![format!("{path:?}: {field} does not support a subscript")],
        };
    }
    if EXPRESSIONS.contains(&path) {
        vec![]
    } else {
        vec![format!("fieldPath {path:?} is not supported in env")]
    }
}

/// `validateContainerResourceFieldSelector` and `validateContainerResourceDivisor`.
pub fn env_resource_field(resource: &str, divisor: Option<&str>) -> Vec<String> {
    const EXPRESSIONS: [&str; 6] = [
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
    ];
    const BYTES: [&str; 13] = [
        "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
    ];
    let hugepages =
        resource.starts_with("requests.hugepages-") || resource.starts_with("limits.hugepages-");
    let mut e = vec![];
    if !EXPRESSIONS.contains(&resource) && !hugepages {
        e.push(format!(
            "resourceFieldRef.resource {resource:?} is not supported"
        ));
    }
    // The divisor is compared by its canonical form: "1" and "1m" for cpu.
    if let Some(d) = divisor.filter(|d| quantity(d) != Some(0.0)) {
        let allowed: &[&str] = if resource.ends_with(".cpu") {
            &["1m", "1"]
        } else {
            &BYTES
        };
        if !allowed.contains(&d) && (EXPRESSIONS.contains(&resource) || hugepages) {
            e.push(format!("divisor {d:?} is not supported for {resource}"));
        }
    }
    e
}

/// `validateVolumes`: names DNS-1123 labels, unique, one source each; a claim's
/// name set (`validatePersistentClaimVolumeSource`) and, since it names a
/// PersistentVolumeClaim (`ValidatePersistentVolumeName`), a DNS-1123 subdomain or
/// the claim can never exist.
fn volumes(e: &mut Errors, path: &str, vols: &[Volume]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, v) in vols.iter().enumerate() {
        let p = format!("{path}.volumes[{i}]");
        e.add(&p, dns1123_label(&v.name));
        e.check(
            names.insert(v.name.clone()),
            &p,
            format!("duplicate volume {}", v.name),
        );
        let sources = [
            v.persistent_volume_claim.is_some(),
            v.empty_dir.is_some(),
            v.secret.is_some(),
            v.config_map.is_some(),
            v.host_path.is_some(),
            v.projected.is_some(),
            v.csi.is_some(),
            v.nfs.is_some(),
        ];
        e.check(
            sources.iter().filter(|s| **s).count() == 1,
            &p,
            "exactly one volume source",
        );
        if let Some(c) = &v.persistent_volume_claim {
            e.check(!c.claim_name.is_empty(), &p, "claimName required");
            e.add(
                format!("{p}.claimName (names a claim)"),
                dns1123_subdomain(&c.claim_name),
            );
        }
    }
    names
}

/// `validateContainers`: names DNS-1123 labels and unique; an image; ports; env;
/// envFrom; mounts; resources. `user_env` is the part of the env the spec gave:
/// every other variable is the operator's, whose names must be distinct from each
/// other and from the spec's.
fn containers(
    e: &mut Errors,
    path: &str,
    cs: &[Container],
    vols: &BTreeSet<String>,
    user_env: &[EnvVar],
) {
    e.check(!cs.is_empty(), path, "no containers");
    let mut names = BTreeSet::new();
    for (i, c) in cs.iter().enumerate() {
        let p = format!("{path}.containers[{i}]");
        e.add(format!("{p}.name"), dns1123_label(&c.name));
        e.check(
            names.insert(&c.name),
            &p,
            format!("duplicate container {}", c.name),
        );
        e.check(
            c.image.as_deref().is_some_and(|i| !i.is_empty()),
            &p,
            "image required",
        );
        // validateContainerCommon: strings.TrimSpace (Unicode White_Space, as
        // Rust's trim).
        e.check(
            c.image.as_deref().is_none_or(|i| i.trim() == i),
            &p,
            "image must not have leading or trailing whitespace",
        );
        // validateContainerPorts
        let mut port_names = BTreeSet::new();
        for (j, port) in c.ports.iter().flatten().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if let Some(n) = port.name.as_deref().filter(|n| !n.is_empty()) {
                e.add(&pp, port_name(n));
                e.check(
                    port_names.insert(n),
                    &pp,
                    format!("duplicate port name {n}"),
                );
            }
            e.add(&pp, port_num(port.container_port));
        }
        let vars = c.env.as_deref().unwrap_or_default();
        env(e, &p, vars);
        let mut ours = BTreeSet::new();
        for v in vars.iter().filter(|v| !user_env.contains(v)) {
            e.check(
                ours.insert(&v.name),
                &p,
                format!("the operator sets {} twice", v.name),
            );
            e.check(
                !user_env.iter().any(|u| u.name == v.name),
                &p,
                format!(
                    "the operator sets {}, which the spec's env sets too",
                    v.name
                ),
            );
        }
        // ValidateEnvFrom
        for (j, from) in c.env_from.iter().flatten().enumerate() {
            let fp = format!("{p}.envFrom[{j}]");
            let n = from
                .config_map_ref
                .as_ref()
                .map(|r| &r.name)
                .into_iter()
                .chain(from.secret_ref.as_ref().map(|r| &r.name));
            let n: Vec<&String> = n.collect();
            e.check(n.len() == 1, &fp, "exactly one of configMapRef, secretRef");
            for name in n {
                // ValidateSecretName(name, prefix = true): a trailing '-' is allowed.
                let masked = name
                    .strip_suffix('-')
                    .map(|s| format!("{s}a"))
                    .unwrap_or(name.clone());
                e.add(&fp, dns1123_subdomain(&masked));
            }
        }
        // ValidateVolumeMounts: the volume exists; a path, unique in the container.
        // Absolute: the kubelet refuses relative paths (and the CRDs ask for ^/).
        let mut paths = BTreeSet::new();
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let mp = format!("{p}.volumeMounts[{j}]");
            e.check(vols.contains(&m.name), &mp, format!("no volume {}", m.name));
            e.check(
                m.mount_path.starts_with('/'),
                &mp,
                format!("{:?} is not absolute", m.mount_path),
            );
            e.check(
                paths.insert(&m.mount_path),
                &mp,
                format!("{} mounted twice", m.mount_path),
            );
        }
        resources(e, &p, c);
    }
}

/// `ValidatePodSpec` (the parts the builders set) and `ValidatePodTemplateSpec`.
pub fn pod_template(
    e: &mut Errors,
    path: &str,
    t: &PodTemplateSpec,
    restart: &[&str],
    user_env: &[EnvVar],
) {
    let m = t.metadata.clone().unwrap_or_default();
    labels(
        e,
        &format!("{path}.metadata.labels"),
        m.labels.as_ref().unwrap_or(&BTreeMap::new()),
    );
    annotations(
        e,
        &format!("{path}.metadata.annotations"),
        m.annotations.as_ref().unwrap_or(&BTreeMap::new()),
    );
    let Some(spec) = &t.spec else {
        return e.fail(path, "no pod spec");
    };
    pod_spec(e, &format!("{path}.spec"), spec, restart, user_env);
}

fn pod_spec(e: &mut Errors, path: &str, s: &PodSpec, restart: &[&str], user_env: &[EnvVar]) {
    let vols = volumes(e, path, s.volumes.as_deref().unwrap_or_default());
    containers(e, path, &s.containers, &vols, user_env);
    let policy = s.restart_policy.as_deref().unwrap_or("Always");
    e.check(
        restart.contains(&policy),
        format!("{path}.restartPolicy"),
        format!("{policy} not in {restart:?}"),
    );
    if let Some(sa) = s.service_account_name.as_deref().filter(|n| !n.is_empty()) {
        // ValidateServiceAccountName
        e.add(format!("{path}.serviceAccountName"), dns1123_subdomain(sa));
    }
    for (field, v) in [("subdomain", &s.subdomain), ("hostname", &s.hostname)] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            e.add(format!("{path}.{field}"), dns1123_label(v));
        }
    }
    if let Some(p) = s.priority_class_name.as_deref().filter(|p| !p.is_empty()) {
        // ValidatePriorityClassName = NameIsDNSSubdomain
        e.add(format!("{path}.priorityClassName"), dns1123_subdomain(p));
    }
    labels(
        e,
        &format!("{path}.nodeSelector"),
        s.node_selector.as_ref().unwrap_or(&BTreeMap::new()),
    );
    // ValidateTolerations
    for (i, t) in s.tolerations.iter().flatten().enumerate() {
        let p = format!("{path}.tolerations[{i}]");
        let key = t.key.as_deref().unwrap_or_default();
        let op = t.operator.as_deref().unwrap_or("Equal");
        if !key.is_empty() {
            e.add(&p, qualified_name(key));
        } else {
            e.check(op == "Exists", &p, "an empty key needs operator Exists");
        }
        match op {
            "Equal" => e.add(&p, label_value(t.value.as_deref().unwrap_or_default())),
            "Exists" => e.check(
                t.value.as_deref().unwrap_or_default().is_empty(),
                &p,
                "Exists takes no value",
            ),
            op => e.fail(&p, format!("unknown operator {op}")),
        }
        if let Some(effect) = t.effect.as_deref().filter(|x| !x.is_empty()) {
            e.check(
                ["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect),
                &p,
                format!("effect {effect}"),
            );
        }
    }
    let affinity = s.affinity.clone().unwrap_or_default();
    if let Some(node) = affinity
        .node_affinity
        .and_then(|a| a.required_during_scheduling_ignored_during_execution)
    {
        // ValidateNodeSelector: at least one term; ValidateNodeFieldSelectorRequirement.
        let p = format!("{path}.affinity.nodeAffinity");
        e.check(
            !node.node_selector_terms.is_empty(),
            &p,
            "no node selector term",
        );
        for (i, term) in node.node_selector_terms.iter().enumerate() {
            for (j, f) in term.match_fields.iter().flatten().enumerate() {
                let fp = format!("{p}.nodeSelectorTerms[{i}].matchFields[{j}]");
                e.check(
                    f.key == "metadata.name",
                    &fp,
                    format!("field {} is not selectable", f.key),
                );
                e.check(
                    ["In", "NotIn"].contains(&f.operator.as_str()),
                    &fp,
                    "operator In or NotIn",
                );
                let values = f.values.as_deref().unwrap_or_default();
                e.check(
                    values.len() == 1,
                    &fp,
                    "exactly one value for a node field selector",
                );
                for v in values {
                    // ValidateNodeName
                    e.add(&fp, dns1123_subdomain(v));
                }
            }
            for (j, x) in term.match_expressions.iter().flatten().enumerate() {
                let xp = format!("{p}.nodeSelectorTerms[{i}].matchExpressions[{j}]");
                e.add(&xp, qualified_name(&x.key));
            }
        }
    }
    if let Some(anti) = affinity.pod_anti_affinity {
        for (i, t) in anti
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .enumerate()
        {
            let p = format!("{path}.affinity.podAntiAffinity[{i}]");
            // validatePodAffinityTerm
            e.check(!t.topology_key.is_empty(), &p, "topologyKey required");
            e.add(&p, qualified_name(&t.topology_key));
            if let Some(s) = &t.label_selector {
                label_selector(e, &p, s);
            }
        }
    }
}

// --- kinds ---------------------------------------------------------------------------

/// `ValidateService` (the parts the builders set): a DNS-1035 name; ports each valid,
/// named (IANA_SVC_NAME, unique) when more than one, a valid targetPort; the selector
/// valid labels.
pub fn service(e: &mut Errors, s: &Service) {
    meta(e, "service.metadata", &s.metadata, NameRule::Dns1035, true);
    let spec = s.spec.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("service.spec.ports[{i}]");
        match p.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => {
                e.add(&pp, port_name(n));
                e.check(names.insert(n.to_string()), &pp, "duplicate port name");
            }
            None => e.check(
                ports.len() == 1,
                &pp,
                "a name is required with several ports",
            ),
        }
        e.add(&pp, port_num(p.port));
        match &p.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => {
                e.add(&pp, port_num(*t))
            }
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(t)) => {
                e.add(&pp, port_name(t))
            }
            None => {}
        }
    }
    labels(
        e,
        "service.spec.selector",
        spec.selector.as_ref().unwrap_or(&BTreeMap::new()),
    );
}

/// `ValidateJob`: a DNS-1123 subdomain name of at most 63 (the Job controller puts
/// it in the pods' `job-name` and `batch.kubernetes.io/job-name` labels); an Indexed
/// Job's largest pod hostname `<name>-<completions - 1>` a DNS-1123 label; at most
/// 100000 parallel pods; restartPolicy Never or OnFailure.
pub fn job(e: &mut Errors, j: &Job, user_env: &[EnvVar]) {
    meta(e, "job.metadata", &j.metadata, NameRule::Subdomain, true);
    let name = j.metadata.name.clone().unwrap_or_default();
    e.add("job.metadata.name (label job-name)", label_value(&name));
    let Some(spec) = &j.spec else {
        return e.fail("job", "no spec");
    };
    if spec.completion_mode.as_deref() == Some("Indexed") {
        let completions = spec.completions.unwrap_or(0);
        e.check(
            completions > 0,
            "job.spec.completions",
            "required for Indexed",
        );
        e.add(
            "job (largest pod hostname)",
            dns1123_label(&format!("{name}-{}", completions - 1)),
        );
        e.check(
            spec.parallelism.unwrap_or(1) <= 100_000,
            "job.spec.parallelism",
            "above 100000",
        );
    }
    e.check(
        spec.backoff_limit.unwrap_or(6) >= 0,
        "job.spec.backoffLimit",
        "negative",
    );
    e.check(
        spec.selector.is_none() && spec.manual_selector != Some(true),
        "job.spec.selector",
        "generated by the API server",
    );
    pod_template(
        e,
        "job.spec.template",
        &spec.template,
        &["Never", "OnFailure"],
        user_env,
    );
}

/// `ValidateStatefulSet`: a DNS-1123 label name; the pod `<name>-0` a DNS-1123 label
/// (its hostname) and `<name>-<10-char hash>` a label value (the
/// controller-revision-hash label); serviceName a DNS-1123 label; the selector valid,
/// not empty, selecting the template; restartPolicy Always.
pub fn statefulset(e: &mut Errors, s: &StatefulSet) {
    meta(
        e,
        "statefulset.metadata",
        &s.metadata,
        NameRule::Label,
        true,
    );
    let name = s.metadata.name.clone().unwrap_or_default();
    e.add(
        "statefulset (pod hostname)",
        dns1123_label(&format!("{name}-0")),
    );
    e.add(
        "statefulset (controller-revision-hash)",
        label_value(&format!("{name}-{}", "7".repeat(10))),
    );
    let Some(spec) = &s.spec else {
        return e.fail("statefulset", "no spec");
    };
    if let Some(svc) = spec.service_name.as_deref().filter(|s| !s.is_empty()) {
        e.add("statefulset.spec.serviceName", dns1123_label(svc));
    }
    e.check(
        spec.replicas.unwrap_or(1) >= 0,
        "statefulset.spec.replicas",
        "negative",
    );
    label_selector(e, "statefulset.spec.selector", &spec.selector);
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    e.check(
        selects(
            spec.selector
                .match_labels
                .as_ref()
                .unwrap_or(&BTreeMap::new()),
            &template_labels,
        ),
        "statefulset.spec.selector",
        "does not select the template's labels",
    );
    pod_template(
        e,
        "statefulset.spec.template",
        &spec.template,
        &["Always"],
        &[],
    );
}

const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// `ValidatePersistentVolumeClaim`: a DNS-1123 subdomain name; access modes known,
/// at least one, ReadWriteOncePod alone; a storage request above zero; a
/// storageClassName, when not empty, a DNS-1123 subdomain (`ValidateClassName`);
/// volumeName a PV name.
pub fn pvc(e: &mut Errors, path: &str, c: &PersistentVolumeClaim) {
    meta(
        e,
        &format!("{path}.metadata"),
        &c.metadata,
        NameRule::Subdomain,
        true,
    );
    let spec = c.spec.clone().unwrap_or_default();
    access_modes(
        e,
        &format!("{path}.spec.accessModes"),
        spec.access_modes.as_deref().unwrap_or_default(),
    );
    let storage = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned());
    match storage {
        Some(q) => {
            let v = valid_quantity(e, format!("{path}.spec.resources"), &q.0);
            e.check(
                v.is_none_or(|v| v > 0.0),
                format!("{path}.spec.resources"),
                format!("storage {} must be above zero", q.0),
            );
        }
        None => e.fail(format!("{path}.spec.resources"), "storage request required"),
    }
    if let Some(class) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
        e.add(
            format!("{path}.spec.storageClassName"),
            dns1123_subdomain(class),
        );
    }
    if let Some(v) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        e.add(format!("{path}.spec.volumeName"), dns1123_subdomain(v));
    }
}

fn access_modes(e: &mut Errors, path: &str, modes: &[String]) {
    e.check(!modes.is_empty(), path, "at least one access mode");
    for m in modes {
        e.check(
            ACCESS_MODES.contains(&m.as_str()),
            path,
            format!("unknown access mode {m}"),
        );
    }
    e.check(
        !modes.iter().any(|m| m == "ReadWriteOncePod") || modes.len() == 1,
        path,
        "ReadWriteOncePod may not be combined with other access modes",
    );
}

/// `ValidatePersistentVolume` (the parts a grant writes): a DNS-1123 subdomain name;
/// access modes; a capacity; exactly one source; a claimRef with a name and namespace.
pub fn pv(e: &mut Errors, v: &PersistentVolume) {
    meta(e, "pv.metadata", &v.metadata, NameRule::Subdomain, false);
    let spec = v.spec.clone().unwrap_or_default();
    access_modes(
        e,
        "pv.spec.accessModes",
        spec.access_modes.as_deref().unwrap_or_default(),
    );
    e.check(
        spec.capacity
            .as_ref()
            .is_some_and(|c| c.contains_key("storage")),
        "pv.spec.capacity",
        "storage required",
    );
    let sources = [
        spec.csi.is_some(),
        spec.nfs.is_some(),
        spec.host_path.is_some(),
        spec.local.is_some(),
    ];
    e.check(
        sources.iter().filter(|s| **s).count() == 1,
        "pv.spec",
        "exactly one volume source",
    );
    if let Some(r) = &spec.claim_ref {
        e.add(
            "pv.spec.claimRef.name",
            dns1123_subdomain(r.name.as_deref().unwrap_or_default()),
        );
        e.add(
            "pv.spec.claimRef.namespace",
            dns1123_label(r.namespace.as_deref().unwrap_or_default()),
        );
    }
}

/// `ValidateNamespace`: a DNS-1123 label name, no namespace, valid labels.
pub fn namespace(e: &mut Errors, n: &Namespace) {
    meta(e, "namespace.metadata", &n.metadata, NameRule::Label, false);
}

/// `ValidateResourceQuota`: keys valid quota resource names
/// (`ValidateResourceQuotaResourceName`: qualified names; without `/` a standard
/// quota resource), values non-negative quantities.
pub fn resource_quota(e: &mut Errors, q: &ResourceQuota) {
    meta(e, "quota.metadata", &q.metadata, NameRule::Subdomain, true);
    const STANDARD: [&str; 12] = [
        "cpu",
        "memory",
        "ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.storage",
        "requests.ephemeral-storage",
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "pods",
        "persistentvolumeclaims",
    ];
    for (k, v) in q.spec.clone().unwrap_or_default().hard.unwrap_or_default() {
        let p = format!("quota.spec.hard[{k}]");
        e.add(&p, qualified_name(&k));
        e.check(
            k.contains('/') || STANDARD.contains(&k.as_str()),
            &p,
            "not a standard quota resource",
        );
        if let Some(n) = valid_quantity(e, &p, &v.0) {
            e.check(n >= 0.0, &p, format!("{} is negative", v.0));
        }
    }
}

/// `ValidateLimitRange` (the parts written): known types, valid resource names and
/// quantities.
pub fn limit_range(e: &mut Errors, l: &LimitRange) {
    meta(e, "limits.metadata", &l.metadata, NameRule::Subdomain, true);
    for item in l.spec.clone().unwrap_or_default().limits {
        e.check(
            ["Pod", "Container", "PersistentVolumeClaim"].contains(&item.type_.as_str()),
            "limits",
            "type",
        );
        for (k, v) in item.default_request.unwrap_or_default() {
            e.add("limits.defaultRequest", container_resource_name(&k));
            valid_quantity(e, "limits.defaultRequest", &v.0);
        }
    }
}

/// `ValidateRoleBindingSubject`: a name; a ServiceAccount's a valid service account
/// name (DNS-1123 subdomain), no apiGroup, a namespace in a cluster binding; a User
/// or Group the rbac apiGroup; no other kind.
pub fn subject(e: &mut Errors, path: &str, s: &Subject, namespaced: bool) {
    e.check(!s.name.is_empty(), path, "name required");
    let group = s.api_group.as_deref().unwrap_or_default();
    match s.kind.as_str() {
        "ServiceAccount" => {
            e.add(format!("{path}.name"), dns1123_subdomain(&s.name));
            e.check(
                group.is_empty(),
                path,
                "apiGroup must be empty for a ServiceAccount",
            );
            e.check(
                namespaced || s.namespace.as_deref().is_some_and(|n| !n.is_empty()),
                path,
                "namespace required in a cluster binding",
            );
        }
        "User" | "Group" => e.check(
            group == "rbac.authorization.k8s.io",
            path,
            format!("apiGroup {group:?}"),
        ),
        kind => e.fail(path, format!("unknown subject kind {kind}")),
    }
}

/// `ValidateRole`: an RBAC name; every rule with verbs and resources.
pub fn role(e: &mut Errors, r: &Role) {
    meta(e, "role.metadata", &r.metadata, NameRule::PathSegment, true);
    for (i, rule) in r.rules.iter().flatten().enumerate() {
        e.check(
            !rule.verbs.is_empty(),
            format!("role.rules[{i}]"),
            "verbs required",
        );
        e.check(
            rule.resources.as_ref().is_some_and(|r| !r.is_empty()),
            format!("role.rules[{i}]"),
            "resources required",
        );
    }
}

/// `ValidateRoleBinding`: an RBAC name; a roleRef to a Role or ClusterRole of the
/// rbac group with a valid name; valid subjects.
pub fn role_binding(e: &mut Errors, b: &RoleBinding) {
    meta(
        e,
        "rolebinding.metadata",
        &b.metadata,
        NameRule::PathSegment,
        true,
    );
    e.check(
        b.role_ref.api_group == "rbac.authorization.k8s.io",
        "rolebinding.roleRef",
        "apiGroup",
    );
    e.check(
        ["Role", "ClusterRole"].contains(&b.role_ref.kind.as_str()),
        "rolebinding.roleRef",
        "kind",
    );
    e.add(
        "rolebinding.roleRef.name",
        path_segment_name(&b.role_ref.name),
    );
    for (i, s) in b.subjects.iter().flatten().enumerate() {
        subject(e, &format!("rolebinding.subjects[{i}]"), s, true);
    }
}

/// `ValidateClusterRole`.
pub fn cluster_role(e: &mut Errors, r: &ClusterRole) {
    meta(
        e,
        "clusterrole.metadata",
        &r.metadata,
        NameRule::PathSegment,
        false,
    );
    for (i, rule) in r.rules.iter().flatten().enumerate() {
        e.check(
            !rule.verbs.is_empty(),
            format!("clusterrole.rules[{i}]"),
            "verbs required",
        );
    }
}

/// `ValidateClusterRoleBinding`: roleRef to a ClusterRole; subjects (a
/// ServiceAccount with its namespace).
pub fn cluster_role_binding(e: &mut Errors, b: &ClusterRoleBinding) {
    meta(
        e,
        "clusterrolebinding.metadata",
        &b.metadata,
        NameRule::PathSegment,
        false,
    );
    e.check(
        b.role_ref.kind == "ClusterRole",
        "clusterrolebinding.roleRef",
        "kind must be ClusterRole",
    );
    e.add(
        "clusterrolebinding.roleRef.name",
        path_segment_name(&b.role_ref.name),
    );
    for (i, s) in b.subjects.iter().flatten().enumerate() {
        subject(e, &format!("clusterrolebinding.subjects[{i}]"), s, false);
    }
}

/// `ValidateNetworkPolicy` (the parts written): valid selectors, known policy types.
pub fn network_policy(e: &mut Errors, n: &NetworkPolicy) {
    meta(
        e,
        "networkpolicy.metadata",
        &n.metadata,
        NameRule::Subdomain,
        true,
    );
    let spec = n.spec.clone().unwrap_or_default();
    if let Some(s) = &spec.pod_selector {
        label_selector(e, "networkpolicy.spec.podSelector", s);
    }
    for t in spec.policy_types.iter().flatten() {
        e.check(
            ["Ingress", "Egress"].contains(&t.as_str()),
            "networkpolicy.spec.policyTypes",
            t,
        );
    }
    for rule in spec.ingress.iter().flatten() {
        for peer in rule.from.iter().flatten() {
            if let Some(s) = &peer.namespace_selector {
                label_selector(e, "networkpolicy.spec.ingress.from.namespaceSelector", s);
            }
        }
    }
}

/// `ValidateServiceAccount`: a DNS-1123 subdomain name.
pub fn service_account(e: &mut Errors, s: &ServiceAccount) {
    meta(
        e,
        "serviceaccount.metadata",
        &s.metadata,
        NameRule::Subdomain,
        true,
    );
}

/// `ValidateNode` (labels) and `validateNodeTaints`: keys qualified names, values
/// label values, known effects, unique by key and effect.
pub fn node(e: &mut Errors, n: &Node) {
    labels(
        e,
        "node.metadata.labels",
        n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
    );
    let taints: &[Taint] = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for (i, t) in taints.iter().enumerate() {
        let p = format!("node.spec.taints[{i}]");
        e.add(&p, qualified_name(&t.key));
        e.add(&p, label_value(t.value.as_deref().unwrap_or_default()));
        e.check(
            ["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()),
            &p,
            "effect",
        );
        e.check(
            seen.insert((t.key.clone(), t.effect.clone())),
            &p,
            format!(
                "taints must be unique by key and effect: {}:{} twice",
                t.key, t.effect
            ),
        );
    }
}
