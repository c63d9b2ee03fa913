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
