//! Pure Tenant logic: the objects each tenant namespace must hold, and the
//! cluster-wide RBAC that lets the tenant's people read their own Tenant.
use aifactory_api::{GpuPool, Subject, SubjectKind, TENANT_LABEL, Tenant};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;

/// Role and binding names inside a tenant namespace.
pub const OWNER_ROLE: &str = "aifactory-tenant-owner";
/// Role and binding of members.
pub const MEMBER_ROLE: &str = "aifactory-tenant-member";
/// Name of the ResourceQuota, LimitRange and NetworkPolicy the operator manages.
pub const GUARD: &str = "aifactory-tenant";
/// ServiceAccount training jobs run as.
pub const JOB_SERVICE_ACCOUNT: &str = "aifactory-jobs";

/// Everything one tenant namespace holds.
#[derive(Debug, Clone)]
pub struct NamespaceChildren {
    /// The namespace itself: tenant label, Pod Security `restricted`.
    pub namespace: Namespace,
    /// GPU, storage and object-count ceilings (defence in depth under admission).
    pub quota: ResourceQuota,
    /// Default container requests.
    pub limits: LimitRange,
    /// Rights of owners and members.
    pub roles: Vec<Role>,
    /// Who gets them (the member binding is absent when there are no members).
    pub bindings: Vec<RoleBinding>,
    /// Only the tenant's own namespaces may reach its pods.
    pub network_policy: NetworkPolicy,
    /// Identity of the tenant's jobs.
    pub service_account: ServiceAccount,
}

fn labels(tenant: &str) -> BTreeMap<String, String> {
    [
        (TENANT_LABEL.to_string(), tenant.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "aifactory".to_string(),
        ),
    ]
    .into()
}

fn subjects(subjects: &[Subject]) -> Vec<serde_json::Value> {
    subjects
        .iter()
        .map(|s| match s.kind {
            SubjectKind::ServiceAccount => {
                json!({"kind": "ServiceAccount", "name": s.name, "namespace": s.namespace})
            }
            kind => json!({"kind": format!("{kind:?}"), "name": s.name, "apiGroup": "rbac.authorization.k8s.io"}),
        })
        .collect()
}

const RW: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const RO: [&str; 3] = ["get", "list", "watch"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Rights of a member: run work and manage its data, read what runs.
fn member_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["aifactory.dev"],
            &["trainingjobs", "datasets", "workspaces"],
            &RW,
        ),
        rule(
            &["aifactory.dev"],
            &[
                "trainingjobs/status",
                "datasets/status",
                "workspaces/status",
            ],
            &RO,
        ),
        rule(
            &[""],
            &["secrets", "configmaps", "persistentvolumeclaims"],
            &RW,
        ),
        // Pods may be created (debug pods, notebooks); Pod Security `restricted`
        // decides what they may do.
        rule(
            &[""],
            &["pods"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(
            &[""],
            &[
                "pods/log",
                "services",
                "endpoints",
                "events",
                "resourcequotas",
                "limitranges",
            ],
            &RO,
        ),
        rule(&["batch"], &["jobs"], &RO),
        // Interactive sessions run as StatefulSets; members reach theirs with
        // `kubectl port-forward`.
        rule(&["apps"], &["statefulsets"], &RO),
        rule(&[""], &["pods/portforward"], &["create"]),
        rule(&["events.k8s.io"], &["events"], &RO),
    ]
}

/// Rights of an owner: a member's, plus reading the namespace's guard rails.
fn owner_rules() -> Vec<PolicyRule> {
    let mut rules = member_rules();
    rules.push(rule(
        &["rbac.authorization.k8s.io"],
        &["roles", "rolebindings"],
        &RO,
    ));
    rules.push(rule(&["networking.k8s.io"], &["networkpolicies"], &RO));
    rules
}

/// GPU ceilings per resource name: the guarantee plus what may be borrowed; an
/// unlimited borrower is capped by the pool's capacity.
pub fn gpu_ceilings(tenant: &Tenant, pools: &[std::sync::Arc<GpuPool>]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for q in &tenant.spec.quota {
        let pool = pools.iter().find(|p| p.name_any() == q.pool);
        let resource = pool
            .map(|p| p.spec.gpu.resource_name.clone())
            .unwrap_or_else(|| "nvidia.com/gpu".into());
        let capacity = pool
            .and_then(|p| p.status.as_ref())
            .map(|s| s.gpus.capacity)
            .unwrap_or(0);
        let borrow = q.borrowing_limit.map(i64::from).unwrap_or(capacity);
        let ceiling = (i64::from(q.gpus) + borrow).min(capacity.max(i64::from(q.gpus)));
        *out.entry(resource).or_insert(0) += ceiling.max(i64::from(q.gpus));
    }
    out
}

/// The children of tenant namespace `ns`.
pub fn namespace_children(
    tenant: &Tenant,
    ns: &str,
    gpu_ceilings: &BTreeMap<String, i64>,
) -> NamespaceChildren {
    let name = tenant.name_any();
    let owner = tenant
        .controller_owner_ref(&())
        .expect("a Tenant from the API has a uid");
    let meta = |object_name: &str| json!({"name": object_name, "namespace": ns, "labels": labels(&name), "ownerReferences": [owner]});
    let mut ns_labels = labels(&name);
    for mode in ["enforce", "warn", "audit"] {
        ns_labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".into(),
        );
        ns_labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    let mut hard: BTreeMap<String, String> = gpu_ceilings
        .iter()
        .map(|(r, n)| (format!("requests.{r}"), n.to_string()))
        .collect();
    if let Some(storage) = &tenant.spec.storage {
        hard.insert("requests.storage".into(), storage.max_request.clone());
    }
    for (object, count) in [
        ("pods", 2000),
        ("services", 200),
        ("persistentvolumeclaims", 200),
        ("secrets", 500),
        ("configmaps", 500),
    ] {
        hard.insert(format!("count/{object}"), count.to_string());
    }
    let role = |role_name: &str, rules: Vec<PolicyRule>| -> Role {
        serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(role_name), "rules": rules})).unwrap()
    };
    let binding = |role_name: &str, who: &[Subject]| -> RoleBinding {
        serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(role_name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
            "subjects": subjects(who)
        }))
        .unwrap()
    };
    let mut bindings = vec![binding(OWNER_ROLE, &tenant.spec.owners)];
    if !tenant.spec.members.is_empty() {
        bindings.push(binding(MEMBER_ROLE, &tenant.spec.members));
    }
    NamespaceChildren {
        namespace: serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": ns_labels}})).unwrap(),
        quota: serde_json::from_value(json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta(GUARD), "spec": {"hard": hard}})).unwrap(),
        limits: serde_json::from_value(json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": meta(GUARD), "spec": {"limits": [
            {"type": "Container", "defaultRequest": {"cpu": "100m", "memory": "256Mi"}}
        ]}}))
        .unwrap(),
        roles: vec![role(OWNER_ROLE, owner_rules()), role(MEMBER_ROLE, member_rules())],
        bindings,
        network_policy: serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(GUARD),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {TENANT_LABEL: name}}}]}]}
        }))
        .unwrap(),
        service_account: serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(JOB_SERVICE_ACCOUNT), "automountServiceAccountToken": false
        }))
        .unwrap(),
    }
}

/// Name of the per-tenant ClusterRole and ClusterRoleBinding.
pub fn cluster_rbac_name(tenant: &str) -> String {
    format!("aifactory:tenant:{tenant}")
}

/// A ClusterRole allowing `get` on this Tenant only, bound to its owners and members.
pub fn cluster_rbac(tenant: &Tenant) -> (ClusterRole, ClusterRoleBinding) {
    let name = tenant.name_any();
    let rbac_name = cluster_rbac_name(&name);
    let owner = tenant
        .controller_owner_ref(&())
        .expect("a Tenant from the API has a uid");
    let meta = json!({"name": rbac_name, "labels": labels(&name), "ownerReferences": [owner]});
    let role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
        "rules": [{"apiGroups": ["aifactory.dev"], "resources": ["tenants"], "resourceNames": [name], "verbs": ["get"]}]
    }))
    .unwrap();
    let everyone: Vec<Subject> = tenant
        .spec
        .owners
        .iter()
        .chain(&tenant.spec.members)
        .cloned()
        .collect();
    let binding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": rbac_name},
        "subjects": subjects(&everyone)
    }))
    .unwrap();
    (role, binding)
}

/// Why `ns` cannot be the tenant's: it exists and is not this tenant's.
pub fn namespace_refusal(tenant: &str, existing: Option<&Namespace>) -> Option<String> {
    let ns = existing?;
    match ns.labels().get(TENANT_LABEL) {
        Some(owner) if owner == tenant => None,
        Some(owner) => Some(format!(
            "namespace {} belongs to tenant {owner}",
            ns.name_any()
        )),
        None => Some(format!(
            "namespace {} already exists and is not managed by aifactory; it is not adopted",
            ns.name_any()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> Tenant {
        let mut t = Tenant::new(
            "acme",
            serde_json::from_value(json!({
                "owners": [{"kind": "User", "name": "alice"}],
                "members": [{"kind": "Group", "name": "acme:ml"}, {"kind": "ServiceAccount", "name": "ci", "namespace": "acme"}],
                "quota": [{"pool": "h100", "gpus": 16, "borrowingLimit": 8}],
                "storage": {"maxRequest": "10Ti"}
            }))
            .unwrap(),
        );
        t.metadata.uid = Some("uid-1".into());
        t
    }

    #[test]
    fn a_tenant_namespace_is_restricted_labelled_and_guarded() {
        let t = acme();
        let c = namespace_children(&t, "acme", &gpu_ceilings(&t, &[]));
        let labels = c.namespace.labels();
        assert_eq!(labels[TENANT_LABEL], "acme");
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        let hard = c.quota.spec.unwrap().hard.unwrap();
        assert_eq!(
            hard["requests.nvidia.com/gpu"].0, "16",
            "unknown pool: the guarantee alone"
        );
        assert_eq!(hard["requests.storage"].0, "10Ti");
        assert_eq!(c.bindings.len(), 2);
        assert_eq!(
            c.bindings[1].subjects.as_ref().unwrap()[1]
                .namespace
                .as_deref(),
            Some("acme")
        );
        let np = serde_json::to_value(&c.network_policy).unwrap();
        assert_eq!(
            np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"][TENANT_LABEL],
            "acme"
        );
        assert_eq!(c.quota.metadata.owner_references.unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn owners_read_rbac_and_members_do_not_and_nobody_writes_quota() {
        let writes = |rules: &[PolicyRule], resource: &str| {
            rules.iter().any(|r| {
                r.resources.as_ref().unwrap().iter().any(|x| x == resource)
                    && r.verbs
                        .iter()
                        .any(|v| ["create", "update", "patch", "delete"].contains(&v.as_str()))
            })
        };
        for resource in [
            "resourcequotas",
            "limitranges",
            "networkpolicies",
            "rolebindings",
            "roles",
        ] {
            assert!(
                !writes(&owner_rules(), resource),
                "owners may write {resource}"
            );
        }
        let reads = |rules: &[PolicyRule], res: &str| {
            rules
                .iter()
                .any(|r| r.resources.as_ref().unwrap().iter().any(|x| x == res))
        };
        assert!(reads(&owner_rules(), "rolebindings"));
        assert!(!reads(&member_rules(), "rolebindings"));
        assert!(writes(&member_rules(), "trainingjobs"));
    }

    #[test]
    fn without_members_there_is_no_member_binding() {
        let mut t = acme();
        t.spec.members.clear();
        assert_eq!(
            namespace_children(&t, "acme", &BTreeMap::new())
                .bindings
                .len(),
            1
        );
    }

    #[test]
    fn the_cluster_role_reads_this_tenant_only() {
        let (role, binding) = cluster_rbac(&acme());
        let rule = &role.rules.unwrap()[0];
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&["acme".to_string()][..])
        );
        assert_eq!(rule.verbs, vec!["get"]);
        assert_eq!(binding.subjects.unwrap().len(), 3);
    }

    #[test]
    fn a_namespace_of_another_tenant_or_of_nobody_is_refused() {
        let ns = |labels: serde_json::Value| -> Namespace {
            serde_json::from_value(json!({"metadata": {"name": "shared", "labels": labels}}))
                .unwrap()
        };
        assert_eq!(namespace_refusal("acme", None), None);
        assert_eq!(
            namespace_refusal("acme", Some(&ns(json!({TENANT_LABEL: "acme"})))),
            None
        );
        assert!(
            namespace_refusal("acme", Some(&ns(json!({TENANT_LABEL: "beta"}))))
                .unwrap()
                .contains("belongs to tenant beta")
        );
        assert!(
            namespace_refusal("acme", Some(&ns(json!({}))))
                .unwrap()
                .contains("not adopted")
        );
    }

    #[test]
    fn gpu_ceiling_is_guarantee_plus_borrowing_capped_by_the_pool() {
        let t = acme();
        let mut pool: GpuPool = serde_json::from_value(json!({"metadata": {"name": "h100"}, "spec": {
            "nodeSelector": {"matchLabels": {"a": "b"}}, "gpu": {"model": "H100", "perNode": 8, "powerWatts": 700},
            "location": {"region": "eu-west"}}})).unwrap();
        pool.status = Some(aifactory_api::GpuPoolStatus {
            gpus: aifactory_api::GpuCounts {
                capacity: 128,
                ..Default::default()
            },
            ..Default::default()
        });
        assert_eq!(
            gpu_ceilings(&t, &[std::sync::Arc::new(pool)])["nvidia.com/gpu"],
            24
        );
    }
}
