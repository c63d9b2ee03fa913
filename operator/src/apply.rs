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
/// added to `live` do not matter. Resource quantities (the values of `hard`,
/// `requests`, `limits` and the other maps of [`QUANTITY_MAPS`], and `sizeLimit`)
/// are compared as numbers: the server stores `2000` as `2k`.
pub fn contains(live: &Value, desired: &Value) -> bool {
    contains_at(live, desired, false)
}

/// Keys whose values are maps of resource name to quantity.
pub const QUANTITY_MAPS: [&str; 8] = [
    "hard",
    "requests",
    "limits",
    "default",
    "defaultRequest",
    "max",
    "min",
    "maxLimitRequestRatio",
];

fn contains_at(live: &Value, desired: &Value, quantity: bool) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => {
                if k == "sizeLimit" {
                    contains_at(lv, dv, true)
                } else if QUANTITY_MAPS.contains(&k.as_str()) {
                    match (lv, dv) {
                        (Value::Object(lm), Value::Object(dm)) => dm
                            .iter()
                            .all(|(r, q)| lm.get(r).is_some_and(|lq| contains_at(lq, q, true))),
                        _ => contains_at(lv, dv, false),
                    }
                } else {
                    contains_at(lv, dv, false)
                }
            }
            // An empty desired value equals an absent one (the server drops them).
            None => is_empty(dv),
        }),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains_at(lv, dv, false))
        }
        (Value::String(l), Value::String(d)) if quantity => crate::quantity::same(l, d),
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
    let live = api.get_opt(&desired.name_any()).await?;
    if let Some(live) = &live
        && contains(
            &serde_json::to_value(live)?,
            &serde_json::to_value(desired)?,
        )
    {
        return Ok(Applied::Unchanged);
    }
    force_apply(api, desired).await?;
    Ok(if live.is_some() {
        Applied::Updated
    } else {
        Applied::Created
    })
}

/// Server-side applies `desired` without reading the live object first: for a
/// write the caller knows is needed (creating what is not there, a change the
/// live object is known to lack).
pub async fn force_apply<K>(api: &Api<K>, desired: &K) -> Result<()>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    api.patch(
        &desired.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    Ok(())
}

/// [`apply`], reading the live object from `cache` (a watch cache of the kind)
/// instead of the API server. A GET is made only for an object the cache does
/// not hold (not created yet, or a cache that has not caught up with it).
pub async fn apply_cached<K>(
    api: &Api<K>,
    cache: &kube::runtime::reflector::Store<K>,
    desired: &K,
) -> Result<Applied>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = desired.name_any();
    let Some(live) = crate::cache::cached(cache, desired.meta().namespace.as_deref(), &name) else {
        return apply(api, desired).await;
    };
    if contains(
        &serde_json::to_value(live.as_ref())?,
        &serde_json::to_value(desired)?,
    ) {
        return Ok(Applied::Unchanged);
    }
    force_apply(api, desired).await?;
    Ok(Applied::Updated)
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
    fn quantities_match_in_the_servers_canonical_form_and_only_there() {
        let live = json!({"spec": {"hard": {"count/pods": "2k", "requests.nvidia.com/gpu": "4k"},
            "limits": [{"default": {"memory": "1Gi"}, "type": "Container"}]},
            "metadata": {"labels": {"size": "2k"}},
            "volume": {"emptyDir": {"sizeLimit": "1Gi"}}});
        assert!(contains(
            &live,
            &json!({"spec": {"hard": {"count/pods": "2000", "requests.nvidia.com/gpu": "4000"},
                "limits": [{"default": {"memory": "1024Mi"}, "type": "Container"}]},
                "volume": {"emptyDir": {"sizeLimit": "1024Mi"}}})
        ));
        assert!(!contains(
            &live,
            &json!({"spec": {"hard": {"count/pods": "3000"}}})
        ));
        assert!(!contains(
            &live,
            &json!({"spec": {"hard": {"count/secrets": "500"}}})
        ));
        // A label is text, even when it reads like a quantity.
        assert!(!contains(
            &live,
            &json!({"metadata": {"labels": {"size": "2000"}}})
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
