//! Property test of the pure builders (issue 13): for any spec the CRD schema
//! accepts, every child the controllers build from it passes Kubernetes' own
//! name, label and field rules, so nothing the API admits can fail at the child.
//!
//! `strategies` (the `aifactory-strategies` crate, shared with the fuzz run of
//! tests/tests/fuzz.rs) make objects the schema accepts (checked against
//! `crds/*.yaml` on every case), `k8s` holds the API server's rules written out
//! small. Cases per property: `PROPTEST_CASES` (default 512).
mod k8s;

use aifactory::controllers::dataset::build as dataset;
use aifactory::controllers::gpupool::build as gpupool;
use aifactory::controllers::pods;
use aifactory::controllers::tenant::build as tenant;
use aifactory::controllers::trainingjob::build as trainingjob;
use aifactory::controllers::workspace::{build as workspace, session};
use aifactory_api::{
    DatasetMount, GpuPool, POOL_LABEL, POOL_TAINT, Placement, TENANT_LABEL, Tenant, TrainingJob,
    shared_claim_name,
};
use aifactory_strategies::{self as strategies, schema};
use k8s::Errors;
use k8s_openapi::api::core::v1::{Node, PodSpec};
use kube::{Resource, ResourceExt};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512),
        // Counterexamples worth keeping become the example tests below.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The generated `object` is one the API server accepts (structural schema): a
/// failure here is a strategy out of bounds, not a builder bug.
fn in_schema<K: Resource<DynamicType = ()> + serde::Serialize>(
    object: &K,
) -> Result<(), TestCaseError> {
    let kind = K::kind(&());
    let errors = schema::violations(&kind, &serde_json::to_value(object).unwrap());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "the strategy made a {kind} the schema refuses:\n  {}",
            errors.join("\n  ")
        )))
    }
}

/// What `check` finds wrong, as a test failure.
fn valid(what: &str, check: impl FnOnce(&mut Errors)) -> Result<(), TestCaseError> {
    let mut e = Errors::default();
    check(&mut e);
    if e.0.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{what} Kubernetes refuses:\n  {}",
            e.0.join("\n  ")
        )))
    }
}

fn owner_of<K: Resource<DynamicType = ()>>(o: &K) -> (String, String, String) {
    let m = o.meta();
    (
        K::kind(&()).to_string(),
        m.name.clone().unwrap(),
        m.uid.clone().unwrap(),
    )
}

fn owned(
    e: &mut Errors,
    path: &str,
    child: &kube::core::ObjectMeta,
    owner: &(String, String, String),
) {
    k8s::owned_by(e, path, child, &owner.0, &owner.1, &owner.2);
}

fn pod_labels(
    spec: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> BTreeMap<String, String> {
    spec.and_then(|t| t.metadata.as_ref()?.labels.clone())
        .unwrap_or_default()
}

/// The pod spec selects the pool's label and tolerates the pool's taint: what
/// `gpupool::build::node_patch` puts on member nodes.
fn pinned_to_pool(e: &mut Errors, path: &str, spec: &PodSpec, pool: &str) {
    let selector = spec.node_selector.clone().unwrap_or_default();
    e.0.extend(
        (selector.get(POOL_LABEL).map(String::as_str) != Some(pool))
            .then(|| format!("{path}: nodeSelector is not {POOL_LABEL}={pool}")),
    );
    let tolerated = spec.tolerations.iter().flatten().any(|t| {
        t.key.as_deref() == Some(POOL_TAINT)
            && t.value.as_deref() == Some(pool)
            && t.effect.as_deref() == Some("NoSchedule")
    });
    e.0.extend((!tolerated).then(|| format!("{path}: the pool's taint is not tolerated")));
}

/// A JSON merge patch (RFC 7386) applied to `target`.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Up to three pools, of distinct names.
fn pools() -> impl Strategy<Value = Vec<GpuPool>> {
    vec(strategies::pool(), 0..3).prop_map(|mut pools| {
        let mut seen = vec![];
        pools.retain(|p| {
            let fresh = !seen.contains(&p.name_any());
            seen.push(p.name_any());
            fresh
        });
        pools
    })
}

/// A pool, a training job and the nodes admission placed it on.
fn job_world() -> impl Strategy<Value = (GpuPool, TrainingJob, Vec<String>)> {
    (strategies::pool(), strategies::trainingjob()).prop_flat_map(|(pool, tj)| {
        let n = tj.spec.nodes as usize;
        (Just(pool), Just(tj), strategies::node_names(n))
    })
}

/// Pools, a dataset's owner tenant, other tenants it may be shared with, the
/// dataset in one of the owner's namespaces, and the volume bound to its claim.
fn dataset_world() -> impl Strategy<
    Value = (
        Vec<GpuPool>,
        Tenant,
        Vec<Tenant>,
        aifactory_api::Dataset,
        k8s_openapi::api::core::v1::PersistentVolume,
    ),
> {
    pools()
        .prop_flat_map(|pools| {
            let names: Vec<String> = pools.iter().map(|p| p.name_any()).collect();
            (
                Just(pools),
                strategies::tenant(names.clone()),
                vec(strategies::tenant(names), 0..3),
            )
        })
        .prop_flat_map(|(pools, owner, mut others)| {
            let mut seen = vec![owner.name_any()];
            others.retain(|t| {
                let fresh = !seen.contains(&t.name_any());
                seen.push(t.name_any());
                fresh
            });
            let namespaces = owner.status.clone().unwrap().namespaces;
            let names: Vec<String> = others
                .iter()
                .map(|t| t.name_any())
                .chain([owner.name_any()])
                .collect();
            (
                Just(pools),
                Just(owner),
                Just(others),
                proptest::sample::select(namespaces),
            )
                .prop_flat_map(move |(p, o, t, ns)| {
                    (
                        Just(p),
                        Just(o),
                        Just(t),
                        strategies::dataset(ns, names.clone()),
                    )
                })
        })
        .prop_flat_map(|(pools, owner, others, ds)| {
            let pv = strategies::bound_volume(&ds);
            (Just(pools), Just(owner), Just(others), Just(ds), pv)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_training_jobs_service_and_job_are_valid((pool, tj, nodes) in job_world(), run in 0i32..=100) {
        in_schema(&pool)?;
        in_schema(&tj)?;
        let owner = owner_of(&tj);
        let svc = trainingjob::service(&tj);
        valid("the Service", |e| {
            k8s::service(e, &svc);
            owned(e, "service.metadata", &svc.metadata, &owner);
        })?;
        let placement = Placement { nodes, domain: None };
        for suspend in [true, false] {
            let job = trainingjob::job(&tj, &pool, &placement, run, suspend);
            valid("the Job", |e| {
                k8s::job(e, &job, &tj.spec.env);
                owned(e, "job.metadata", &job.metadata, &owner);
                let spec = job.spec.as_ref().unwrap();
                let pod = spec.template.spec.as_ref().unwrap();
                // The Service selects the pods by the job-name label the Job
                // controller adds (the Job's name), and is their subdomain.
                let mut labels = pod_labels(Some(&spec.template));
                labels.insert("job-name".into(), job.name_any());
                let selector = svc.spec.as_ref().unwrap().selector.clone().unwrap_or_default();
                e.0.extend((!k8s::selects(&selector, &labels)).then(|| "the Service does not select the Job's pods".to_string()));
                e.0.extend((pod.subdomain.as_deref() != svc.metadata.name.as_deref()).then(|| "the pods' subdomain is not the Service".to_string()));
                pinned_to_pool(e, "job.spec.template.spec", pod, &pool.name_any());
                // The anti-affinity that spreads the gang selects its own pods.
                for t in pod.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref()).and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten() {
                    let s = t.label_selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap_or_default();
                    e.0.extend((!k8s::selects(&s, &labels)).then(|| "the anti-affinity does not select the gang".to_string()));
                }
            })?;
        }
    }

    #[test]
    fn a_workspaces_claims_and_session_are_valid(ws in strategies::workspace(), pool in strategies::pool(), node in strategies::subdomain(253)) {
        in_schema(&ws)?;
        let owner = owner_of(&ws);
        let claims = workspace::claims(&ws);
        let names: std::collections::BTreeSet<_> = claims.iter().map(|(c, _)| c.name_any()).collect();
        valid("a claim", |e| {
            for (c, size) in &claims {
                k8s::pvc(e, "claim", c);
                owned(e, "claim.metadata", &c.metadata, &owner);
                let want = c.spec.as_ref().and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").cloned());
                e.0.extend((want.map(|q| q.0) != Some(size.clone())).then(|| "the claim's size is not the one returned".to_string()));
            }
            e.0.extend((names.len() != claims.len()).then(|| "two claims share a name".to_string()));
        })?;
        if ws.spec.interactive.is_some() {
            let svc = session::service(&ws);
            let sts = session::statefulset(&ws, &pool, &node);
            valid("the session", |e| {
                k8s::service(e, &svc);
                owned(e, "service.metadata", &svc.metadata, &owner);
                k8s::statefulset(e, &sts);
                owned(e, "statefulset.metadata", &sts.metadata, &owner);
                let spec = sts.spec.as_ref().unwrap();
                let selector = svc.spec.as_ref().unwrap().selector.clone().unwrap_or_default();
                e.0.extend((!k8s::selects(&selector, &pod_labels(Some(&spec.template)))).then(|| "the Service does not select the session".to_string()));
                e.0.extend((spec.service_name.as_deref() != svc.metadata.name.as_deref()).then(|| "serviceName is not the Service".to_string()));
                e.0.extend((session::session_name(&ws) != sts.name_any()).then(|| "session_name is not the StatefulSet's".to_string()));
                let pod = spec.template.spec.as_ref().unwrap();
                pinned_to_pool(e, "statefulset.spec.template.spec", pod, &pool.name_any());
                // The session mounts the claims the workspace makes.
                for v in pod.volumes.iter().flatten().filter(|v| v.name == "home" || v.name == "scratch") {
                    let claim = &v.persistent_volume_claim.as_ref().unwrap().claim_name;
                    e.0.extend((!names.contains(claim)).then(|| format!("the session mounts {claim}, which the workspace does not make")));
                }
            })?;
        }
    }

    #[test]
    fn a_datasets_claim_import_and_grants_are_valid((pools, owner, others, ds, source) in dataset_world()) {
        in_schema(&ds)?;
        in_schema(&owner)?;
        for t in &others { in_schema(t)?; }
        for p in &pools { in_schema(p)?; }
        let me = owner_of(&ds);
        let ns = ds.namespace().unwrap();
        valid("a name the Dataset controller makes", |e| {
            e.0.extend(k8s::label_value(&dataset::label_value(&ds)).into_iter().map(|m| format!("label_value: {m}")));
            e.0.extend(k8s::dns1123_subdomain(&dataset::import_job_name(&ds)).into_iter().map(|m| format!("import_job_name: {m}")));
            e.0.extend(k8s::label_value(&dataset::import_job_name(&ds)).into_iter().map(|m| format!("import_job_name (job-name label): {m}")));
        })?;
        let claim = dataset::owner_claim(&ds);
        valid("the dataset's claim", |e| {
            k8s::pvc(e, "claim", &claim);
            owned(e, "claim.metadata", &claim.metadata, &me);
        })?;
        if let Some(job) = dataset::import_job(&ds) {
            valid("the import Job", |e| {
                k8s::job(e, &job, &[]);
                owned(e, "job.metadata", &job.metadata, &me);
                let claims: Vec<_> = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().volumes.iter().flatten().filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone())).collect();
                e.0.extend((claims != vec![claim.name_any()]).then(|| "the import does not fill the dataset's claim".to_string()));
            })?;
        }
        let pools: Vec<Arc<GpuPool>> = pools.into_iter().map(Arc::new).collect();
        let tenants: Vec<Arc<Tenant>> = others.iter().chain([&owner]).cloned().map(Arc::new).collect();
        let regions = dataset::data_regions(Some(&source), Some(&owner));
        let (granted, _) = dataset::grants(&ds, Some(&owner), &regions, &tenants, &pools);
        for consumer in &granted {
            valid("a grant", |e| {
                e.0.extend(k8s::dns1123_subdomain(&dataset::shared_volume_name(&ds, &consumer.namespace)).into_iter().map(|m| format!("shared_volume_name: {m}")));
                // A pod of the consumer mounting the dataset asks for the grant's claim.
                let mount = DatasetMount { name: ds.name_any(), namespace: Some(ns.clone()), mount_path: None };
                e.0.extend((mount.claim_name(&consumer.namespace) != consumer.claim_name || consumer.claim_name != shared_claim_name(&ns, &ds.name_any())).then(|| "a consumer's pods mount another claim than the grant's".to_string()));
            })?;
            let Ok(pv) = dataset::shared_volume(&ds, &source, consumer) else { continue };
            let shared = dataset::shared_claim(&ds, &pv, consumer);
            valid("a grant's volume and claim", |e| {
                k8s::pv(e, &pv);
                k8s::pvc(e, "shared claim", &shared);
                let s = shared.spec.as_ref().unwrap();
                let r = pv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
                e.0.extend((s.volume_name.as_deref() != pv.metadata.name.as_deref()).then(|| "the claim does not name its volume".to_string()));
                e.0.extend((r.name.as_deref() != shared.metadata.name.as_deref() || r.namespace.as_deref() != shared.metadata.namespace.as_deref()).then(|| "the volume is not bound to the claim".to_string()));
            })?;
        }
    }

    #[test]
    fn a_tenants_namespace_children_and_cluster_rbac_are_valid(
        (pools, t) in pools().prop_flat_map(|pools| {
            let names = pools.iter().map(|p| p.name_any()).collect();
            (Just(pools), strategies::tenant(names))
        })
    ) {
        in_schema(&t)?;
        let me = owner_of(&t);
        let pools: Vec<Arc<GpuPool>> = pools.into_iter().map(Arc::new).collect();
        let ceilings = tenant::gpu_ceilings(&t, &pools);
        for ns in t.spec.namespaces_or_default(&t.name_any()) {
            let c = tenant::namespace_children(&t, &ns, &ceilings);
            valid(&format!("a child in namespace {ns}"), |e| {
                k8s::namespace(e, &c.namespace);
                k8s::resource_quota(e, &c.quota);
                k8s::limit_range(e, &c.limits);
                for r in &c.roles { k8s::role(e, r); owned(e, "role.metadata", &r.metadata, &me); }
                for b in &c.bindings {
                    k8s::role_binding(e, b);
                    owned(e, "rolebinding.metadata", &b.metadata, &me);
                    e.0.extend((!c.roles.iter().any(|r| r.name_any() == b.role_ref.name)).then(|| format!("binding {} names no Role made", b.name_any())));
                }
                k8s::network_policy(e, &c.network_policy);
                k8s::service_account(e, &c.service_account);
                for m in [&c.quota.metadata, &c.limits.metadata, &c.network_policy.metadata, &c.service_account.metadata] {
                    owned(e, "metadata", m, &me);
                    e.0.extend((m.namespace.as_deref() != Some(ns.as_str())).then(|| format!("{:?} is not in {ns}", m.name)));
                }
                // Only the tenant's own namespaces reach its pods: the policy's
                // selector selects this namespace.
                let from = c.network_policy.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0].from.as_ref().unwrap()[0].namespace_selector.clone().unwrap();
                let ns_labels = c.namespace.metadata.labels.clone().unwrap_or_default();
                e.0.extend((!k8s::selects(&from.match_labels.unwrap_or_default(), &ns_labels)).then(|| "the NetworkPolicy does not admit the tenant's own namespace".to_string()));
                e.0.extend((ns_labels.get(TENANT_LABEL) != Some(&t.name_any())).then(|| "the namespace lacks the tenant label".to_string()));
                // The job ServiceAccount is the one pods run as.
                e.0.extend((c.service_account.name_any() != trainingjob::JOB_SERVICE_ACCOUNT).then(|| "the job ServiceAccount is not the pods'".to_string()));
            })?;
        }
        let (role, binding) = tenant::cluster_rbac(&t);
        valid("the cluster RBAC", |e| {
            k8s::cluster_role(e, &role);
            k8s::cluster_role_binding(e, &binding);
            owned(e, "clusterrole.metadata", &role.metadata, &me);
            owned(e, "clusterrolebinding.metadata", &binding.metadata, &me);
            e.0.extend((binding.role_ref.name != role.name_any()).then(|| "the binding names another ClusterRole".to_string()));
        })?;
    }

    #[test]
    fn a_pools_node_patch_leaves_a_valid_node_its_pods_land_on(
        (pool, node) in strategies::pool().prop_flat_map(|p| { let name = p.name_any(); (Just(p), strategies::node(name)) }),
        member in any::<bool>(),
        dedicated in any::<bool>(),
    ) {
        in_schema(&pool)?;
        let name = pool.name_any();
        valid("the node (as the cluster has it)", |e| k8s::node(e, &node))?;
        let mut patched = serde_json::to_value(&node).unwrap();
        if let Some(patch) = gpupool::node_patch(&node, &name, member, dedicated) {
            merge(&mut patched, &patch);
        }
        let patched: Node = serde_json::from_value(patched).unwrap();
        valid("the patched node", |e| {
            k8s::node(e, &patched);
            let labelled = patched.labels().get(POOL_LABEL) == Some(&name);
            let taints = patched.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            let tainted = taints.iter().any(|t| t.key == POOL_TAINT && t.value.as_deref() == Some(name.as_str()) && t.effect == "NoSchedule");
            e.0.extend((labelled != member).then(|| format!("labelled {labelled}, member {member}")));
            e.0.extend((tainted != (member && dedicated)).then(|| format!("tainted {tainted}, member {member}, dedicated {dedicated}")));
            if member {
                // A pod pinned to the pool lands on the node: it selects the
                // label and tolerates every NoSchedule taint of the pool's key.
                let pinned: PodSpec = serde_json::from_value(Value::Object(pods::pinned(&name, &[patched.name_any()]))).unwrap();
                pinned_to_pool(e, "pinned", &pinned, &name);
                for t in taints.iter().filter(|t| t.key == POOL_TAINT && t.effect == "NoSchedule") {
                    e.0.extend((t.value.as_deref() != Some(name.as_str())).then(|| format!("the member keeps taint {}={:?}, which its pods do not tolerate", t.key, t.value)));
                }
            }
        })?;
    }
}

// --- examples ------------------------------------------------------------------------
//
// Specs the API used to admit whose children Kubernetes refuses: each is built here
// past the schema to show the child the rule prevents, and the CRD is shown to
// refuse the spec (its structural schema here; its CEL rules by their text, which
// tests/tests/api.rs sends to a real API server along with these very specs).

const NS: &str = "acme";

/// An object of kind `K` as the API would hand it to a controller.
fn object<K: serde::de::DeserializeOwned + Resource<DynamicType = ()>>(
    name: &str,
    spec: Value,
) -> K {
    let namespaced = !matches!(&*K::kind(&()), "Tenant" | "GpuPool");
    serde_json::from_value(serde_json::json!({
        "apiVersion": "aifactory.dev/v1alpha1", "kind": K::kind(&()),
        "metadata": {"name": name, "namespace": namespaced.then_some(NS), "uid": "u-1"},
        "spec": spec,
    }))
    .unwrap()
}

fn h100() -> GpuPool {
    object(
        "h100",
        serde_json::json!({"nodeSelector": {"matchLabels": {"gpu": "h100"}}, "gpu": {"model": "H100", "perNode": 8, "powerWatts": 700}, "location": {"region": "eu-west"}}),
    )
}

fn job_spec(extra: Value) -> Value {
    let mut spec =
        serde_json::json!({"pool": "h100", "nodes": 4, "gpusPerNode": 8, "image": "train:1"});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

/// The Service and the Job of `tj` on four nodes: what Kubernetes refuses of them.
fn job_children(tj: &TrainingJob, pool: &GpuPool) -> Vec<String> {
    let nodes = (0..tj.spec.nodes).map(|i| format!("gpu-{i}")).collect();
    let mut e = Errors::default();
    k8s::service(&mut e, &trainingjob::service(tj));
    k8s::job(
        &mut e,
        &trainingjob::job(
            tj,
            pool,
            &Placement {
                nodes,
                domain: None,
            },
            0,
            false,
        ),
        &tj.spec.env,
    );
    e.0
}

/// The structural schema of `kind`'s CRD refuses `object`, at `field`.
fn schema_refuses<K: Resource<DynamicType = ()> + serde::Serialize>(object: &K, field: &str) {
    let errors = schema::violations(&K::kind(&()), &serde_json::to_value(object).unwrap());
    assert!(
        errors.iter().any(|e| e.starts_with(field)),
        "the {} CRD accepts {field}: {errors:?}",
        K::kind(&())
    );
}

/// `kind`'s CRD carries a CEL rule containing `text`.
fn has_rule(kind: &str, text: &str) {
    let rules = schema::rules(kind);
    assert!(
        rules.iter().any(|r| r.contains(text)),
        "no {kind} rule has {text:?}: {rules:#?}"
    );
}

fn refused(what: &str, errors: &[String], says: &str) {
    assert!(
        errors.iter().any(|e| e.contains(says)),
        "{what}: Kubernetes would accept it, or refuse it for another reason than {says:?}: {errors:#?}"
    );
}

#[test]
fn the_four_specs_of_issue_13_make_children_kubernetes_refuses_and_the_crd_refuses_them() {
    // The name rule: evaluated here from its own text (size and pattern).
    let rule = schema::rules("TrainingJob")
        .into_iter()
        .find(|r| r.starts_with("self.metadata.name.size() <= "))
        .unwrap();
    let max: usize = rule["self.metadata.name.size() <= ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let pattern = rule
        .split("matches('")
        .nth(1)
        .unwrap()
        .trim_end_matches("')");
    let name_ok = |n: &str| n.len() <= max && regex::Regex::new(pattern).unwrap().is_match(n);
    let pool = h100();

    let dotted: TrainingJob = object("my.job", job_spec(serde_json::json!({})));
    refused(
        "my.job",
        &job_children(&dotted, &pool),
        "is not a DNS-1035 label",
    );
    assert!(!name_ok("my.job"));

    let long = format!("j{}", "a".repeat(66));
    let long_job: TrainingJob = object(&long, job_spec(serde_json::json!({})));
    refused(
        "a 67-character name",
        &job_children(&long_job, &pool),
        "longer than 63",
    );
    assert!(!name_ok(&long));
    assert!(
        name_ok(&format!("j{}", "a".repeat(51))),
        "52 characters are accepted"
    );

    let at_checkpoint: TrainingJob = object(
        "ckpt",
        job_spec(serde_json::json!({
            "checkpoint": {"claimName": "scratch", "mountPath": "/data/images"},
            "datasets": [{"name": "images"}],
        })),
    );
    refused(
        "a dataset at the checkpoint's mountPath",
        &job_children(&at_checkpoint, &pool),
        "/data/images mounted twice",
    );
    has_rule(
        "TrainingJob",
        "self.datasets.all(d, (has(d.mountPath) ? d.mountPath : '/data/' + d.name) != self.checkpoint.mountPath)",
    );

    let twice: TrainingJob = object(
        "twice",
        job_spec(serde_json::json!({"datasets": [{"name": "images"}, {"name": "images"}]})),
    );
    refused(
        "a dataset listed twice",
        &job_children(&twice, &pool),
        "/data/images mounted twice",
    );
    has_rule(
        "TrainingJob",
        "self.all(d, self.exists_one(o, o.name == d.name",
    );
}

#[test]
fn env_names_and_sources_a_container_refuses_are_refused() {
    let pool = h100();
    for (env, field, says) in [
        (
            serde_json::json!([{"name": "1ST", "value": "a"}]),
            "spec.env[0].name",
            "not a valid environment variable name",
        ),
        (
            serde_json::json!([{"name": "", "value": "a"}]),
            "spec.env[0].name",
            "name required",
        ),
        (
            serde_json::json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}, "secretKeyRef": {"name": "s", "key": "k"}}}]),
            "spec.env[0].valueFrom",
            "only one source",
        ),
        (
            serde_json::json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "My_Secret", "key": "k"}}}]),
            "spec.env[0].valueFrom.secretKeyRef.name",
            "not a DNS-1123 subdomain",
        ),
        (
            serde_json::json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers"}}}]),
            "spec.env[0].valueFrom.fieldRef.fieldPath",
            "not supported in env",
        ),
    ] {
        let tj: TrainingJob = object("envs", job_spec(serde_json::json!({"env": env})));
        refused(&env.to_string(), &job_children(&tj, &pool), says);
        schema_refuses(&tj, field);
    }
    let both: TrainingJob = object(
        "envs",
        job_spec(
            serde_json::json!({"env": [{"name": "A", "value": "a", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}),
        ),
    );
    refused(
        "value beside valueFrom",
        &job_children(&both, &pool),
        "beside a non-empty value",
    );
    has_rule(
        "TrainingJob",
        "!has(self.valueFrom) || !has(self.value) || size(self.value) == 0",
    );
    let cpu: TrainingJob = object(
        "envs",
        job_spec(
            serde_json::json!({"env": [{"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1Mi"}}}]}),
        ),
    );
    refused(
        "a cpu divisor of 1Mi",
        &job_children(&cpu, &pool),
        "divisor \"1Mi\" is not supported",
    );
    has_rule(
        "TrainingJob",
        "string(self.divisor) in (self.resource.endsWith('.cpu') ? ['1m', '1']",
    );
}

#[test]
fn names_of_the_objects_a_spec_refers_to_are_names_kubernetes_accepts() {
    let pool = h100();
    // A PriorityClass name the pod refuses.
    let tj: TrainingJob = object(
        "prio",
        job_spec(serde_json::json!({"priority": "High_Priority"})),
    );
    refused("priority", &job_children(&tj, &pool), "priorityClassName");
    schema_refuses(&tj, "spec.priority");
    // Claims that can never exist, under these names.
    let tj: TrainingJob = object(
        "claims",
        job_spec(
            serde_json::json!({"checkpoint": {"claimName": "Scratch Claim"}, "datasets": [{"name": "Images"}]}),
        ),
    );
    refused(
        "claim names",
        &job_children(&tj, &pool),
        "claimName (names a claim)",
    );
    schema_refuses(&tj, "spec.checkpoint.claimName");
    schema_refuses(&tj, "spec.datasets[0].name");
    // StorageClass names a claim refuses.
    let ws: aifactory_api::Workspace = object(
        "alice",
        serde_json::json!({"storage": {"home": "1Gi", "storageClassName": "Fast SSD"}}),
    );
    let mut e = Errors::default();
    for (c, _) in workspace::claims(&ws) {
        k8s::pvc(&mut e, "claim", &c);
    }
    refused("a workspace's storage class", &e.0, "storageClassName");
    schema_refuses(&ws, "spec.storage.storageClassName");
    let ds: aifactory_api::Dataset = object(
        "images",
        serde_json::json!({"size": "1Gi", "storageClassName": "fast_ssd", "source": {"url": "s3://b/x", "secretName": "s3 creds"}}),
    );
    let mut e = Errors::default();
    k8s::pvc(&mut e, "claim", &dataset::owner_claim(&ds));
    refused("a dataset's storage class", &e.0, "storageClassName");
    schema_refuses(&ds, "spec.storageClassName");
    // A Secret name the import Job's envFrom refuses.
    let mut e = Errors::default();
    k8s::job(&mut e, &dataset::import_job(&ds).unwrap(), &[]);
    refused("a source's secretName", &e.0, "envFrom");
    schema_refuses(&ds, "spec.source.secretName");
    // A ServiceAccount name the RoleBinding refuses.
    let t: Tenant = object(
        "acme",
        serde_json::json!({"owners": [{"kind": "ServiceAccount", "name": "CI_Bot", "namespace": "ci"}]}),
    );
    let mut e = Errors::default();
    for b in tenant::namespace_children(&t, NS, &BTreeMap::new()).bindings {
        k8s::role_binding(&mut e, &b);
    }
    refused("a ServiceAccount subject", &e.0, "subjects[0].name");
    has_rule(
        "Tenant",
        "self.kind != 'ServiceAccount' || self.name.matches(",
    );
}

#[test]
fn values_a_child_refuses_are_refused() {
    // ReadWriteOncePod beside another access mode.
    let ds: aifactory_api::Dataset = object(
        "images",
        serde_json::json!({"size": "1Gi", "accessModes": ["ReadWriteOncePod", "ReadOnlyMany"]}),
    );
    let mut e = Errors::default();
    k8s::pvc(&mut e, "claim", &dataset::owner_claim(&ds));
    refused(
        "ReadWriteOncePod and ReadOnlyMany",
        &e.0,
        "ReadWriteOncePod may not be combined",
    );
    has_rule(
        "Dataset",
        "!self.exists(m, m == 'ReadWriteOncePod') || size(self) == 1",
    );
    // A negative storage limit in the tenant's ResourceQuota.
    let t: Tenant = object(
        "acme",
        serde_json::json!({"owners": [{"kind": "User", "name": "alice"}], "storage": {"maxRequest": "-1Ti"}}),
    );
    let mut e = Errors::default();
    k8s::resource_quota(
        &mut e,
        &tenant::namespace_children(&t, NS, &BTreeMap::new()).quota,
    );
    refused("a negative maxRequest", &e.0, "is negative");
    has_rule(
        "Tenant",
        "!isQuantity(self) || !quantity(self).isLessThan(quantity('0'))",
    );
    // GPU resource names that are no extended resource name: in the pods'
    // requests, and as requests.<name> in the tenants' ResourceQuotas.
    for (resource, structural) in [
        (format!("example.com/{}", "g".repeat(64)), true),
        ("requests.example.com/gpu".to_string(), false),
        (format!("{}/gpu", "a".repeat(245)), false),
    ] {
        let mut pool = h100();
        pool.spec.gpu.resource_name = resource.clone();
        let tj: TrainingJob = object("train", job_spec(serde_json::json!({})));
        refused(&resource, &job_children(&tj, &pool), "resources");
        let t: Tenant = object(
            "acme",
            serde_json::json!({"owners": [{"kind": "User", "name": "alice"}], "quota": [{"pool": "h100", "gpus": 8}]}),
        );
        let ceilings = tenant::gpu_ceilings(&t, &[Arc::new(pool.clone())]);
        let mut e = Errors::default();
        k8s::resource_quota(&mut e, &tenant::namespace_children(&t, NS, &ceilings).quota);
        if structural {
            refused(&resource, &e.0, "quota.spec.hard");
            schema_refuses(&pool, "spec.gpu.resourceName");
        } else {
            has_rule(
                "GpuPool",
                "!self.startsWith('requests.') && self.indexOf('/') <= 244",
            );
        }
    }
    // An image with white space at an end (found by the fuzz run): the Job's and
    // the session's pods are refused, so the run or session never starts.
    for image in [" train:1", "train:1\n", "train:1\u{a0}"] {
        let tj: TrainingJob = object("train", job_spec(serde_json::json!({"image": image})));
        refused(
            image,
            &job_children(&tj, &h100()),
            "leading or trailing whitespace",
        );
        let ws: aifactory_api::Workspace = object(
            "alice",
            serde_json::json!({"storage": {"home": "1Gi"}, "interactive": {"image": image, "pool": "h100"}}),
        );
        let mut e = Errors::default();
        k8s::statefulset(&mut e, &session::statefulset(&ws, &h100(), "gpu-0"));
        refused(image, &e.0, "leading or trailing whitespace");
    }
    let rule =
        r"!self.matches('^[\\t-\\r\\x{85}\\p{Z}]') && !self.matches('[\\t-\\r\\x{85}\\p{Z}]$')";
    has_rule("TrainingJob", rule);
    has_rule("Workspace", rule);
}

#[test]
fn the_validators_refuse_what_kubernetes_refuses() {
    // Examples from apimachinery's validation_test.go, so the rules above are not
    // vacuous.
    assert!(
        k8s::dns1123_label("a-1").is_empty()
            && !k8s::dns1123_label("a.b").is_empty()
            && !k8s::dns1123_label(&"a".repeat(64)).is_empty()
    );
    assert!(
        k8s::dns1123_subdomain("a.b-c.d").is_empty()
            && !k8s::dns1123_subdomain("a..b").is_empty()
            && !k8s::dns1123_subdomain("-a").is_empty()
    );
    assert!(k8s::dns1035_label("a1").is_empty() && !k8s::dns1035_label("1a").is_empty());
    assert!(
        k8s::qualified_name("example.com/My_Name.1").is_empty()
            && !k8s::qualified_name("a/b/c").is_empty()
            && !k8s::qualified_name(&format!("x/{}", "a".repeat(64))).is_empty()
    );
    assert!(
        k8s::label_value("").is_empty()
            && k8s::label_value("A_b.c").is_empty()
            && !k8s::label_value("-a").is_empty()
    );
    assert!(
        k8s::env_var_name("my.env-name").is_empty()
            && !k8s::env_var_name("1a").is_empty()
            && !k8s::env_var_name("..a").is_empty()
            && !k8s::env_var_name("a=b").is_empty()
    );
    assert!(
        k8s::port_name("rendezvous").is_empty()
            && !k8s::port_name("a--b").is_empty()
            && !k8s::port_name("1234").is_empty()
            && !k8s::port_name("sixteen-chars-ab").is_empty()
    );
    assert!(
        k8s::container_resource_name("nvidia.com/gpu").is_empty()
            && !k8s::container_resource_name("gpu").is_empty()
            && !k8s::container_resource_name("requests.a.com/gpu").is_empty()
    );
    assert_eq!(k8s::quantity("1Gi"), Some(1024f64.powi(3)));
    assert_eq!(k8s::quantity("500m"), Some(0.5));
    assert_eq!(k8s::quantity("lots"), None);
    assert!(
        k8s::env_field_path("metadata.labels['app']").is_empty()
            && !k8s::env_field_path("metadata.name['x']").is_empty()
    );
}
