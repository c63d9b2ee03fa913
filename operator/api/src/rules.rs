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
