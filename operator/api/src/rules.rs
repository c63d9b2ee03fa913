//! CEL validation rules shared by several kinds, each with a message a tenant
//! understands. They run in the API server (`x-kubernetes-validations`).
use kube::core::{Message, Rule};

/// Go-style duration such as `90m`, `24h` or `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$";

/// The value must not change once the object exists.
pub fn immutable(field: &str) -> Rule {
    Rule::new("self == oldSelf").message(Message::Message(format!(
        "{field} cannot change after creation"
    )))
}

/// The string must be a Kubernetes quantity (e.g. `500Gi`).
pub fn quantity(field: &str, example: &str) -> Rule {
    Rule::new("isQuantity(self)").message(Message::Message(format!(
        "{field} must be a quantity such as {example}"
    )))
}

/// The string, when it is a quantity, must be above zero.
pub fn positive_quantity(field: &str) -> Rule {
    Rule::new("!isQuantity(self) || quantity(self).isGreaterThan(quantity('0'))").message(
        Message::Message(format!("{field} must be greater than zero")),
    )
}

/// The string must be a Go-style duration.
pub fn duration(field: &str) -> Rule {
    Rule::new(format!("self.matches('{DURATION_PATTERN}')")).message(Message::Message(format!(
        "{field} must be a duration such as 30m, 24h or 1h30m"
    )))
}

/// A container image as a pod takes it: no leading or trailing white space
/// (Kubernetes' `strings.TrimSpace`: ASCII \t to \r, NEL and the Unicode
/// separators).
pub fn container_image(field: &str) -> Rule {
    Rule::new(
        r"!self.matches('^[\\t-\\r\\x{85}\\p{Z}]') && !self.matches('[\\t-\\r\\x{85}\\p{Z}]$')",
    )
    .message(Message::Message(format!(
        "{field} may not begin or end with white space: a pod refuses such an image"
    )))
}

/// The string must be a DNS-1123 label (namespace, pool and tenant names).
pub fn dns_label(field: &str) -> Rule {
    Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message(Message::Message(format!(
        "{field} must be a lowercase DNS label: a-z, 0-9 and '-', starting and ending with a letter or digit"
    )))
}

/// A DNS-1035 label: what Service names must be (lowercase, starts with a letter).
const DNS_1035: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// A DNS-1123 label: what namespace names and label values of names must be.
const DNS_1123: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Root rule: the object's name, which the operator turns into `becomes`, is a
/// DNS-1035 label (starts with a letter) of at most `max` characters, so that
/// every child name is valid before anything is admitted.
pub fn name_starting_with_a_letter(kind: &str, max: usize, becomes: &str) -> Rule {
    Rule::new(format!(
        "self.metadata.name.size() <= {max} && self.metadata.name.matches('{DNS_1035}')"
    ))
    .message(Message::Message(format!(
        "a {kind} name becomes {becomes}: at most {max} characters of a-z, 0-9 and '-', \
         starting with a letter and ending with a letter or digit (no dots)"
    )))
}

/// Root rule: the object's name, which the operator turns into `becomes`, is a
/// DNS-1123 label of at most 63 characters.
pub fn name_label(kind: &str, becomes: &str) -> Rule {
    Rule::new(format!(
        "self.metadata.name.size() <= 63 && self.metadata.name.matches('{DNS_1123}')"
    ))
    .message(Message::Message(format!(
        "a {kind} name becomes {becomes}: at most 63 characters of a-z, 0-9 and '-', \
         starting and ending with a letter or digit (no dots)"
    )))
}

/// CEL: `expr` is none of the cluster's own namespaces, which a tenant may
/// never be given.
fn not_a_system_namespace(expr: &str) -> String {
    format!("({expr} != 'default' && !{expr}.startsWith('kube-') && {expr} != 'aifactory-system')")
}

const SYSTEM_NAMESPACES: &str = "may not be default, aifactory-system or a kube-* namespace: they belong to the cluster and the operator";

/// On a list of namespace names: none is the cluster's own.
pub fn no_system_namespaces(field: &str) -> Rule {
    Rule::new(format!("self.all(n, {})", not_a_system_namespace("n")))
        .message(Message::Message(format!("{field} {SYSTEM_NAMESPACES}")))
}

/// Root rule of a Tenant: without `spec.namespaces` its one namespace is named
/// after it, so its name is none of the cluster's own namespaces.
pub fn default_namespace_not_a_system_one() -> Rule {
    Rule::new(format!(
        "(has(self.spec.namespaces) && size(self.spec.namespaces) > 0) || {}",
        not_a_system_namespace("self.metadata.name")
    ))
    .message(Message::Message(format!(
        "a Tenant without spec.namespaces gets a namespace named after it, which {SYSTEM_NAMESPACES}"
    )))
}

/// The CEL path a `DatasetMount` `d` is mounted at (its default included).
const MOUNT_PATH: &str = "(has(d.mountPath) ? d.mountPath : '/data/' + d.name)";

/// On a list of `DatasetMount`: every dataset appears once.
pub fn distinct_datasets() -> Rule {
    Rule::new(
        "self.all(d, self.exists_one(o, o.name == d.name && \
         (has(o.__namespace__) ? o.__namespace__ : '') == (has(d.__namespace__) ? d.__namespace__ : '')))",
    )
    .message("each dataset may be listed only once in datasets")
}

/// On a list of `DatasetMount`: every dataset at a path of its own.
pub fn distinct_mount_paths() -> Rule {
    let other = MOUNT_PATH.replace("d.", "o.");
    Rule::new(format!("self.all(d, self.exists_one(o, {other} == {MOUNT_PATH}))")).message(
        "each dataset needs a mount path of its own (mountPath, default /data/<name>): two are mounted at the same path",
    )
}

/// On a list of `DatasetMount`: no dataset is mounted at one of `reserved`
/// (paths the operator mounts something else at).
pub fn datasets_not_at(reserved: &[&str], what: &str) -> Rule {
    let list = reserved
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    Rule::new(format!("self.all(d, !({MOUNT_PATH} in [{list}]))")).message(Message::Message(
        format!(
            "a dataset may not be mounted at {}: {what} is mounted there",
            reserved.join(" or ")
        ),
    ))
}

/// Struct rule of a TrainingJob spec: no dataset at the checkpoint's mountPath.
pub fn datasets_not_at_the_checkpoint() -> Rule {
    Rule::new(format!(
        "!has(self.checkpoint) || !has(self.datasets) || \
         self.datasets.all(d, {MOUNT_PATH} != self.checkpoint.mountPath)"
    ))
    .message("a dataset is mounted at the checkpoint's mountPath: give one of them another path")
}

/// On a list of `EnvVar`: none of `reserved`, which the operator sets.
pub fn env_not(reserved: &[&str]) -> Rule {
    let list = reserved
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    Rule::new(format!("self.all(e, !(e.name in [{list}]))")).message(Message::Message(format!(
        "env may not set {}: aifactory sets them for torchrun",
        reserved.join(", ")
    )))
}

/// The string, a Go-style duration, is longer than zero.
pub fn positive_duration(field: &str) -> Rule {
    Rule::new("!self.matches('^(0+([.]0+)?(ns|us|ms|s|m|h))+$')").message(Message::Message(
        format!("{field} must be longer than zero"),
    ))
}

/// On a LabelSelector: every expression has a known operator, with values for
/// In and NotIn and none for Exists and DoesNotExist.
pub fn valid_selector(field: &str) -> Rule {
    Rule::new(
        "!has(self.matchExpressions) || self.matchExpressions.all(e, \
         (e.operator in ['In', 'NotIn'] && has(e.values) && size(e.values) > 0) || \
         (e.operator in ['Exists', 'DoesNotExist'] && (!has(e.values) || size(e.values) == 0)))",
    )
    .message(Message::Message(format!(
        "{field}.matchExpressions: operator must be In or NotIn (with values) or Exists or DoesNotExist (without)"
    )))
}

/// An OpenAPI pattern: a DNS-1123 label (what names of namespaces and Datasets are).
pub const DNS_LABEL_PATTERN: &str = DNS_1123;

/// An OpenAPI pattern: a DNS-1123 subdomain, what the API server requires of the
/// objects a spec names (claims, Secrets, StorageClasses, PriorityClasses, service
/// accounts); at most 253 characters.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The string, when it is a quantity, is not negative (what a ResourceQuota's
/// limits must be).
pub fn non_negative_quantity(field: &str) -> Rule {
    Rule::new("!isQuantity(self) || !quantity(self).isLessThan(quantity('0'))")
        .message(Message::Message(format!("{field} may not be negative")))
}

/// On a list of access modes: ReadWriteOncePod is alone (a claim refuses it beside
/// another mode).
pub fn read_write_once_pod_alone() -> Rule {
    Rule::new("!self.exists(m, m == 'ReadWriteOncePod') || size(self) == 1")
        .message("ReadWriteOncePod may not be combined with other access modes")
}

/// On a `Subject`: a ServiceAccount's name is a valid service account name (a
/// DNS-1123 subdomain), or the RoleBindings naming it are refused.
pub fn service_account_subject() -> Rule {
    Rule::new(format!(
        "self.kind != 'ServiceAccount' || self.name.matches('{}')",
        DNS_SUBDOMAIN_PATTERN.replace('\\', "\\\\")
    ))
    .message("a ServiceAccount's name must be a lowercase DNS subdomain: a-z, 0-9, '-' and '.'")
}

/// A container's environment variable name, as the API server checks it up to 1.33
/// (`[-._a-zA-Z][-._a-zA-Z0-9]*`, not `.` nor `..*`); 1.34 accepts more, the chart
/// supports 1.30.
const ENV_NAME_PATTERN: &str = r"^([-_a-zA-Z]|\.[-_a-zA-Z0-9])[-._a-zA-Z0-9]*$";
/// A ConfigMap or Secret key: `[-._a-zA-Z0-9]+`, not `.` nor `..*`.
const KEY_PATTERN: &str = r"^([-_a-zA-Z0-9]|\.[-_a-zA-Z0-9])[-._a-zA-Z0-9]*$";
/// What an environment variable's `fieldRef` may read: the downward API fields of
/// a pod's env, or one label or annotation by its (qualified) key.
const ENV_FIELD_PATH_PATTERN: &str = concat!(
    r"^(metadata\.(name|namespace|uid)|spec\.(nodeName|serviceAccountName|host)",
    r"|status\.(hostIPs?|podIPs?)",
    r"|metadata\.labels\['([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?",
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?'\]",
    r"|metadata\.annotations\['([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*/)?",
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?'\])$"
);
/// What an environment variable's `resourceFieldRef` may read.
const ENV_RESOURCE_PATTERN: &str =
    r"^(limits|requests)\.(cpu|memory|ephemeral-storage|hugepages-.+)$";

/// Schema transform of a list of `EnvVar` (k8s-openapi's schema, which carries
/// none of the rules the API server applies to a container's env): every entry the
/// CRD accepts is one a pod accepts. A name the API server takes; `valueFrom` with
/// exactly one source and not beside a `value`; the sources' names, keys, field
/// paths, resources and divisors as `ValidateEnv` wants them; no `fileKeyRef`
/// (the EnvFiles feature gate is alpha, off by default).
pub fn container_env(schema: &mut schemars::Schema) {
    let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) else {
        return;
    };
    items.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "!has(self.valueFrom) || !has(self.value) || size(self.value) == 0",
            "message": "an environment variable has a value or a valueFrom, not both",
        }]),
    );
    let Some(props) = items.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let string =
        |pattern: &str, max: u64| serde_json::json!({"pattern": pattern, "maxLength": max});
    let set = |v: &mut serde_json::Value, path: &[&str], extra: serde_json::Value| {
        let mut at = v;
        for p in path {
            at = &mut at[*p];
        }
        if let (Some(at), Some(extra)) = (at.as_object_mut(), extra.as_object()) {
            at.extend(extra.clone());
        }
    };
    if let Some(name) = props.get_mut("name") {
        set(
            name,
            &[],
            serde_json::json!({
                "description": "Name of the environment variable: letters, digits, '_', '-' and '.', not starting with a digit.",
                "pattern": ENV_NAME_PATTERN,
                "minLength": 1,
            }),
        );
    }
    let Some(from) = props.get_mut("valueFrom") else {
        return;
    };
    set(
        from,
        &[],
        serde_json::json!({
            "minProperties": 1,
            "maxProperties": 1,
            "x-kubernetes-validations": [{
                "rule": "!has(self.fileKeyRef)",
                "message": "fileKeyRef needs the EnvFiles feature gate, off by default: use secretKeyRef or configMapKeyRef",
            }],
        }),
    );
    for source in ["configMapKeyRef", "secretKeyRef"] {
        set(
            from,
            &["properties", source, "properties", "name"],
            string(DNS_SUBDOMAIN_PATTERN, 253),
        );
        set(
            from,
            &["properties", source, "properties", "key"],
            string(KEY_PATTERN, 253),
        );
    }
    set(
        from,
        &["properties", "fieldRef", "properties", "apiVersion"],
        serde_json::json!({"enum": ["v1"]}),
    );
    set(
        from,
        &["properties", "fieldRef", "properties", "fieldPath"],
        string(ENV_FIELD_PATH_PATTERN, 274),
    );
    set(
        from,
        &["properties", "resourceFieldRef", "properties", "resource"],
        string(ENV_RESOURCE_PATTERN, 253),
    );
    // Bounds the divisor rule's cost (a divisor is at most 3 characters).
    set(
        from,
        &["properties", "resourceFieldRef", "properties", "divisor"],
        serde_json::json!({"maxLength": 16}),
    );
    set(
        from,
        &["properties", "resourceFieldRef"],
        serde_json::json!({"x-kubernetes-validations": [{
            "rule": "!has(self.divisor) || string(self.divisor) in (self.resource.endsWith('.cpu') ? ['1m', '1'] : \
                     ['1', '1k', '1M', '1G', '1T', '1P', '1E', '1Ki', '1Mi', '1Gi', '1Ti', '1Pi', '1Ei'])",
            "message": "divisor must be 1m or 1 for cpu, and one of 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei otherwise",
        }]}),
    );
}
