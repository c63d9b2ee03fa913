//! The structural part of the generated CRDs (`crds/*.yaml`: types, required
//! fields, lengths, ranges, patterns, enums, list sets), checked on the objects the
//! strategies make: proof that they are objects the API server accepts, not only
//! ones the strategies believe it does. The CEL rules (`x-kubernetes-validations`)
//! are not evaluated here; the strategies keep to them by construction, and
//! tests/tests/api.rs runs them in a real API server.
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// The openAPIV3Schema of each kind, read once from `crds/`.
static SCHEMAS: LazyLock<HashMap<String, Value>> = LazyLock::new(|| {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).expect("crds/") {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let crd: Value = serde_yaml::from_str(&text).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        out.insert(kind, schema);
    }
    out
});

static PATTERNS: LazyLock<Mutex<HashMap<String, Regex>>> = LazyLock::new(Default::default);

fn matches(pattern: &str, s: &str) -> bool {
    let mut cache = PATTERNS.lock().unwrap();
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).expect("a CRD pattern"))
        .is_match(s)
}

/// The CEL rules of `kind`'s CRD, anywhere in its schema.
pub fn rules(kind: &str) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "x-kubernetes-validations" {
                        out.extend(
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|r| r["rule"].as_str().map(String::from)),
                        );
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(&SCHEMAS[kind], &mut out);
    out
}

/// Where `object` (of `kind`, as JSON) breaks the structural schema of its CRD's
/// `spec`, each as `path: message`.
pub fn violations(kind: &str, object: &Value) -> Vec<String> {
    let mut errs = vec![];
    let schema = &SCHEMAS[kind]["properties"]["spec"];
    walk(schema, &object["spec"], "spec", &mut errs);
    errs
}

fn walk(s: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let mut fail = |m: String| errs.push(format!("{path}: {m}"));
    if v.is_null() {
        if s["nullable"] != Value::Bool(true) {
            fail("null where the schema is not nullable".into());
        }
        return;
    }
    if s["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(v.is_i64() || v.is_string()) {
            fail(format!("{v} is neither an integer nor a string"));
        }
        return;
    }
    if let Some(values) = s["enum"].as_array()
        && !values.contains(v)
    {
        fail(format!("{v} is not one of {values:?}"));
    }
    match s["type"].as_str() {
        Some("object") => {
            let Some(m) = v.as_object() else {
                return fail(format!("{v} is not an object"));
            };
            for r in s["required"].as_array().into_iter().flatten() {
                if !m.contains_key(r.as_str().unwrap()) {
                    fail(format!("{r} is required"));
                }
            }
            if let Some(n) = s["maxProperties"].as_u64()
                && m.len() as u64 > n
            {
                fail(format!("more than {n} properties"));
            }
            if let Some(n) = s["minProperties"].as_u64()
                && (m.len() as u64) < n
            {
                fail(format!("fewer than {n} properties"));
            }
            for (k, child) in m {
                let p = format!("{path}.{k}");
                if let Some(cs) = s["properties"].get(k) {
                    walk(cs, child, &p, errs);
                } else if s["additionalProperties"].is_object() {
                    walk(&s["additionalProperties"], child, &p, errs);
                } else if s["x-kubernetes-preserve-unknown-fields"] != Value::Bool(true) {
                    errs.push(format!(
                        "{p}: unknown field (the API server would prune it)"
                    ));
                }
            }
        }
        Some("array") => {
            let Some(a) = v.as_array() else {
                return fail(format!("{v} is not an array"));
            };
            if let Some(n) = s["maxItems"].as_u64()
                && a.len() as u64 > n
            {
                fail(format!("{} items, at most {n}", a.len()));
            }
            if let Some(n) = s["minItems"].as_u64()
                && (a.len() as u64) < n
            {
                fail(format!("{} items, at least {n}", a.len()));
            }
            match s["x-kubernetes-list-type"].as_str() {
                Some("set") => {
                    for (i, x) in a.iter().enumerate() {
                        if a[..i].contains(x) {
                            fail(format!("{x} twice in a set"));
                        }
                    }
                }
                Some("map") => {
                    let keys: Vec<&str> = s["x-kubernetes-list-map-keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|k| k.as_str().unwrap())
                        .collect();
                    let key = |x: &Value| keys.iter().map(|k| x[k].clone()).collect::<Vec<_>>();
                    for (i, x) in a.iter().enumerate() {
                        if a[..i].iter().any(|y| key(y) == key(x)) {
                            fail(format!("map key {:?} twice", key(x)));
                        }
                    }
                }
                _ => {}
            }
            for (i, x) in a.iter().enumerate() {
                walk(&s["items"], x, &format!("{path}[{i}]"), errs);
            }
        }
        Some("string") => {
            let Some(text) = v.as_str() else {
                return fail(format!("{v} is not a string"));
            };
            // OpenAPI lengths count characters, not bytes.
            let len = text.chars().count() as u64;
            if let Some(n) = s["maxLength"].as_u64()
                && len > n
            {
                fail(format!("{len} characters, at most {n}"));
            }
            if let Some(n) = s["minLength"].as_u64()
                && len < n
            {
                fail(format!("{len} characters, at least {n}"));
            }
            if let Some(p) = s["pattern"].as_str()
                && !matches(p, text)
            {
                fail(format!("{text:?} does not match {p}"));
            }
        }
        Some("integer") | Some("number") => {
            let Some(n) = v.as_f64() else {
                return fail(format!("{v} is not a number"));
            };
            if s["type"] == "integer" && !(v.is_i64() || v.is_u64()) {
                fail(format!("{v} is not an integer"));
            }
            if let Some(m) = s["minimum"].as_f64()
                && n < m
            {
                fail(format!("{n} below {m}"));
            }
            if let Some(m) = s["maximum"].as_f64()
                && n > m
            {
                fail(format!("{n} above {m}"));
            }
        }
        Some("boolean") if !v.is_boolean() => fail(format!("{v} is not a boolean")),
        _ => {}
    }
}
