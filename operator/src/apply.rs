//! Writes that happen only when they change something. An idle operator must write
//! nothing, so every apply first compares the desired object with the live one.
use crate::MANAGER;
use crate::error::Result;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Debug;

/// Whether `live` already holds everything `desired` says: every field of
/// `desired` is present in `live` with the same value (objects recursively, lists
/// element by element and of equal length). Fields the server or other managers
/// added to `live` do not matter.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => {
            d.iter().all(|(k, dv)| match l.get(k) {
                Some(lv) => contains(lv, dv),
                // An empty desired value equals an absent one (the server drops them).
                None => is_empty(dv),
            })
        }
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        // A field the server dropped because it was empty.
        (Value::Null, d) if is_empty(d) => true,
        _ => live == desired,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Outcome of [`apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The live object already matched; nothing was written.
    Unchanged,
    /// The object did not exist and was created.
    Created,
    /// The object existed and was changed.
    Updated,
}

/// Server-side applies `desired` (with the operator's field manager, forcing
/// ownership of the fields it sets) unless the live object already matches.
pub async fn apply<K>(api: &Api<K>, desired: &K) -> Result<Applied>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = desired.name_any();
    let live = api.get_opt(&name).await?;
    let want = serde_json::to_value(desired)?;
    if let Some(live) = &live
        && contains(&serde_json::to_value(live)?, &want)
    {
        return Ok(Applied::Unchanged);
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    Ok(if live.is_some() {
        Applied::Updated
    } else {
        Applied::Created
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_live_object_with_server_defaults_still_matches() {
        let live = json!({"metadata": {"name": "q", "uid": "1", "labels": {"a": "1", "b": "2"}},
                          "spec": {"hard": {"requests.nvidia.com/gpu": "8"}}});
        let desired = json!({"metadata": {"name": "q", "labels": {"a": "1"}}, "spec": {"hard": {"requests.nvidia.com/gpu": "8"}}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_value_or_a_list_of_another_length_does_not_match() {
        let live = json!({"spec": {"hard": {"gpu": "8"}, "subjects": [{"name": "alice"}, {"name": "bob"}]}});
        assert!(!contains(&live, &json!({"spec": {"hard": {"gpu": "16"}}})));
        assert!(!contains(
            &live,
            &json!({"spec": {"subjects": [{"name": "alice"}]}})
        ));
        assert!(contains(
            &live,
            &json!({"spec": {"subjects": [{"name": "alice"}, {"name": "bob"}]}})
        ));
    }

    #[test]
    fn an_empty_desired_field_matches_an_absent_or_null_one() {
        assert!(contains(&Value::Null, &json!([])));
        assert!(!contains(&Value::Null, &json!(["x"])));
        assert!(contains(
            &json!({"spec": {}}),
            &json!({"spec": {"members": []}})
        ));
        assert!(!contains(
            &json!({"spec": {}}),
            &json!({"spec": {"members": ["x"]}})
        ));
    }
}
