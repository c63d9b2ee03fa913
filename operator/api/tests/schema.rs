//! The generated CRDs teach and protect: every field is described, conditions merge
//! by type, immutable fields carry a transition rule. No cluster needed.
use aifactory_api::crds;
use serde_json::Value;

/// Walks `schema`, calling `f(path, property_schema)` for every property.
fn walk(path: &str, schema: &Value, f: &mut dyn FnMut(&str, &Value)) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let p = format!("{path}.{name}");
            f(&p, prop);
            walk(&p, prop, f);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(&format!("{path}[]"), items, f);
    }
}

fn root_schema(crd: &impl serde::Serialize) -> Value {
    let v = serde_json::to_value(crd).unwrap();
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn every_spec_and_status_field_has_a_description() {
    for (file, crd) in crds() {
        let schema = root_schema(&crd);
        let mut missing = vec![];
        for top in ["spec", "status"] {
            walk(top, &schema["properties"][top], &mut |path, prop| {
                // Fields of embedded Kubernetes types (EnvVar, LabelSelector,
                // Condition) come described by k8s-openapi.
                let described = prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.is_empty());
                if !described {
                    missing.push(path.to_string());
                }
            });
        }
        assert!(
            missing.is_empty(),
            "{file}: fields without description: {missing:?}"
        );
    }
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    for (file, crd) in crds() {
        let conditions = &root_schema(&crd)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{file}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{file}"
        );
    }
}

#[test]
fn training_job_shape_cannot_change_after_creation() {
    let crd = crds()
        .into_iter()
        .find(|(f, _)| *f == "trainingjob.yaml")
        .unwrap()
        .1;
    let spec = &root_schema(&crd)["properties"]["spec"]["properties"];
    for field in ["pool", "nodes", "gpusPerNode", "image"] {
        let rules = spec[field]["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("{field} has no rules"));
        assert!(
            rules.iter().any(|r| r["rule"] == "self == oldSelf"),
            "{field} is not immutable: {rules:?}"
        );
    }
}

#[test]
fn every_kind_has_short_name_category_and_status_subresource() {
    let expected = [
        ("gp", "GpuPool"),
        ("tn", "Tenant"),
        ("ds", "Dataset"),
        ("ws", "Workspace"),
        ("tj", "TrainingJob"),
    ];
    for (short, kind) in expected {
        let crd = crds()
            .into_iter()
            .map(|(_, c)| c)
            .find(|c| c.spec.names.kind == kind)
            .unwrap();
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec![short.to_string()]),
            "{kind}"
        );
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["aifactory".to_string()]),
            "{kind}"
        );
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind}"
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 4),
            "{kind}"
        );
    }
}
