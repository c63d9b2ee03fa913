//! One module per kind; inside, `build` is pure (spec + observed state in, desired
//! state out) and `mod.rs` fetches, applies and writes status.
pub mod dataset;
pub mod gpupool;
pub mod pending;
pub mod pods;
pub mod tenant;
pub mod trainingjob;
pub mod usage;
pub mod workspace;

use serde_json::Value;

/// Status writes go through server-side apply on the status subresource, and only
/// when the status differs from what the object already carries. With `whole`, the
/// status is entirely this controller's and must equal `status`; otherwise other
/// controllers own other fields and only the fields of `status` are compared.
pub async fn write_status<K>(
    api: &kube::Api<K>,
    name: &str,
    current: Option<&impl serde::Serialize>,
    status: &impl serde::Serialize,
    whole: bool,
) -> crate::error::Result<bool>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    write_status_as(crate::MANAGER, api, name, current, status, whole).await
}

/// [`write_status`] under another field manager, for status fields that a second
/// writer owns beside the object's controller (e.g. a Tenant's usage).
pub async fn write_status_as<K>(
    manager: &str,
    api: &kube::Api<K>,
    name: &str,
    current: Option<&impl serde::Serialize>,
    status: &impl serde::Serialize,
    whole: bool,
) -> crate::error::Result<bool>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let new = serde_json::to_value(status)?;
    if let Some(current) = current
        && (if whole {
            serde_json::to_value(current)? == new
        } else {
            status_holds(&serde_json::to_value(current)?, &new)
        })
    {
        return Ok(false);
    }
    let patch: Value = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(manager).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

/// Writes `status` as the whole status of `obj`, unless it already is, on
/// condition that `obj` is still the latest version (409 Conflict otherwise): for
/// a status two writers share (the admission pass and the object's controller),
/// so the loser of a race retries on the fresh object. Returns whether it wrote.
pub async fn write_status_of<K, S>(
    api: &kube::Api<K>,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> crate::error::Result<bool>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    apply_status_at_version(crate::MANAGER, api, obj, status).await?;
    Ok(true)
}

/// Applies `status` (the fields `manager` owns) to `obj`'s status on condition
/// that `obj` is still the latest version: a 409 Conflict otherwise, for the
/// caller to read again and retry.
pub async fn apply_status_at_version<K>(
    manager: &str,
    api: &kube::Api<K>,
    obj: &K,
    status: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": obj.meta().name, "resourceVersion": obj.meta().resource_version},
        "status": status,
    });
    api.patch_status(
        obj.meta().name.as_deref().unwrap_or_default(),
        &kube::api::PatchParams::apply(manager).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Whether the live status already says all `desired` says. Conditions are matched
/// by type (other controllers may own other conditions); every other field as in
/// [`crate::apply::contains`].
pub fn status_holds(live: &Value, desired: &Value) -> bool {
    let Some(desired) = desired.as_object() else {
        return live == desired;
    };
    desired.iter().all(|(key, want)| {
        let have = live.get(key).unwrap_or(&Value::Null);
        if key == "conditions" {
            let have = have.as_array().cloned().unwrap_or_default();
            want.as_array()
                .into_iter()
                .flatten()
                .all(|c| have.iter().any(|h| h["type"] == c["type"] && h == c))
        } else {
            crate::apply::contains(have, want)
        }
    })
}
