//! The Tenant controller on the local factory: every child exists with the right
//! content, spec changes propagate, deletion honours deletionPolicy, and tenants
//! are isolated from each other — proven by acting as their users.
use aifactory_api::{TENANT_LABEL, Tenant};
use aifactory_tests::*;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Pod, ResourceQuota, Secret, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

async fn create_tenant(client: &Client, name: &str, spec: Value) -> anyhow::Result<Cleanup> {
    let t: Tenant = serde_json::from_value(
        json!({"apiVersion": "aifactory.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec}),
    )?;
    Api::<Tenant>::all(client.clone())
        .create(&PostParams::default(), &t)
        .await?;
    Ok(Cleanup::one("tenant", name))
}

async fn wait_ready(client: &Client, name: &str, namespaces: &[&str]) -> anyhow::Result<Tenant> {
    let api = Api::<Tenant>::all(client.clone());
    wait_for(
        &format!("tenant {name} Ready with {namespaces:?}"),
        WAIT,
        || {
            let api = api.clone();
            async move {
                let t = api.get(name).await?;
                let ok = t.status.as_ref().is_some_and(|s| {
                    s.observed_generation == t.metadata.generation
                        && s.namespaces == namespaces
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                });
                Ok(ok.then_some(t))
            }
        },
    )
    .await
}

async fn eventually<F, Fut>(what: &str, check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<()>>>,
{
    wait_for(what, WAIT, check).await
}

#[tokio::test]
async fn a_tenant_gets_its_namespaces_with_quota_rbac_isolation_and_changes_propagate()
-> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let name = unique_name("acme");
    let (ns1, ns2) = (format!("{name}-train"), format!("{name}-data"));
    let _t = create_tenant(
        &client,
        &name,
        json!({
            "owners": [{"kind": "User", "name": format!("{name}-alice")}],
            "members": [{"kind": "Group", "name": format!("{name}:ml")}],
            "namespaces": [ns1, ns2],
            "quota": [{"pool": "no-such-pool", "gpus": 16, "borrowingLimit": 8}],
            "storage": {"maxRequest": "10Ti"}
        }),
    )
    .await?;
    wait_ready(&client, &name, &[&ns1, &ns2]).await?;

    for ns in [&ns1, &ns2] {
        let namespace = Api::<Namespace>::all(client.clone()).get(ns).await?;
        let labels = namespace.labels();
        assert_eq!(labels.get(TENANT_LABEL), Some(&name));
        for mode in ["enforce", "warn", "audit"] {
            assert_eq!(
                labels
                    .get(&format!("pod-security.kubernetes.io/{mode}"))
                    .map(String::as_str),
                Some("restricted")
            );
        }
        let quota = Api::<ResourceQuota>::namespaced(client.clone(), ns)
            .get("aifactory-tenant")
            .await?;
        let hard = quota.spec.unwrap().hard.unwrap();
        assert_eq!(hard["requests.nvidia.com/gpu"].0, "16");
        assert_eq!(hard["requests.storage"].0, "10Ti");
        Api::<LimitRange>::namespaced(client.clone(), ns)
            .get("aifactory-tenant")
            .await?;
        let np = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
            .get("aifactory-tenant")
            .await?;
        let from = &np.spec.unwrap().ingress.unwrap()[0].from.clone().unwrap()[0];
        assert_eq!(
            from.namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[TENANT_LABEL],
            name
        );
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .get("aifactory-jobs")
            .await?;
        Api::<Role>::namespaced(client.clone(), ns)
            .get("aifactory-tenant-owner")
            .await?;
        let members = Api::<RoleBinding>::namespaced(client.clone(), ns)
            .get("aifactory-tenant-member")
            .await?;
        assert_eq!(members.subjects.unwrap()[0].name, format!("{name}:ml"));
    }
    let crb = Api::<ClusterRoleBinding>::all(client.clone())
        .get(&format!("aifactory:tenant:{name}"))
        .await?;
    assert_eq!(crb.subjects.unwrap().len(), 2);

    // Quota raised, member removed, a namespace dropped and another added.
    let ns3 = format!("{name}-eval");
    let patch = json!({"spec": {"quota": [{"pool": "no-such-pool", "gpus": 32, "borrowingLimit": 8}], "members": null, "namespaces": [ns1, ns3]}});
    Api::<Tenant>::all(client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_ready(&client, &name, &[&ns1, &ns3]).await?;
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), &ns1);
    eventually("the quota to be raised", || {
        let quotas = quotas.clone();
        async move {
            Ok((quotas
                .get("aifactory-tenant")
                .await?
                .spec
                .unwrap()
                .hard
                .unwrap()["requests.nvidia.com/gpu"]
                .0
                == "32")
                .then_some(()))
        }
    })
    .await?;
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), &ns1);
    assert!(
        bindings.get_opt("aifactory-tenant-member").await?.is_none(),
        "the member binding should be gone"
    );
    Api::<Role>::namespaced(client.clone(), &ns3)
        .get("aifactory-tenant-owner")
        .await?;
    let namespaces = Api::<Namespace>::all(client.clone());
    let dropped = ns2.clone();
    eventually("the dropped namespace to be deleted", || {
        let namespaces = namespaces.clone();
        let dropped = dropped.clone();
        async move {
            Ok(namespaces
                .get_opt(&dropped)
                .await?
                .is_none_or(|n| n.metadata.deletion_timestamp.is_some())
                .then_some(()))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_tenant_deletes_its_namespaces_unless_it_retains_them() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let (gone, kept) = (unique_name("gone"), unique_name("kept"));
    let _g1 = create_tenant(
        &client,
        &gone,
        json!({"owners": [{"kind": "User", "name": "x"}]}),
    )
    .await?;
    let _g2 = create_tenant(
        &client,
        &kept,
        json!({"owners": [{"kind": "User", "name": "y"}], "deletionPolicy": "Retain"}),
    )
    .await?;
    wait_ready(&client, &gone, &[&gone]).await?;
    wait_ready(&client, &kept, &[&kept]).await?;
    let tenants = Api::<Tenant>::all(client.clone());
    tenants.delete(&gone, &DeleteParams::default()).await?;
    tenants.delete(&kept, &DeleteParams::default()).await?;
    for t in [&gone, &kept] {
        let tenants = tenants.clone();
        eventually(
            &format!("tenant {t} to be gone (no stranded finalizer)"),
            || {
                let tenants = tenants.clone();
                let t = t.clone();
                async move { Ok(tenants.get_opt(&t).await?.is_none().then_some(())) }
            },
        )
        .await?;
    }
    let namespaces = Api::<Namespace>::all(client.clone());
    let g = gone.clone();
    eventually("the Delete tenant's namespace to go", || {
        let namespaces = namespaces.clone();
        let g = g.clone();
        async move {
            Ok(namespaces
                .get_opt(&g)
                .await?
                .is_none_or(|n| n.metadata.deletion_timestamp.is_some())
                .then_some(()))
        }
    })
    .await?;
    let retained = namespaces.get(&kept).await?;
    assert!(
        retained.metadata.deletion_timestamp.is_none(),
        "Retain must keep the namespace"
    );
    assert!(
        !retained.labels().contains_key(TENANT_LABEL),
        "a retained namespace is released"
    );
    let _cleanup = Cleanup::one("namespace", kept.clone());
    Ok(())
}

#[tokio::test]
async fn a_namespace_that_is_not_the_tenants_is_refused_not_adopted() -> anyhow::Result<()> {
    let client = admin().await?;
    install_crds(&client).await?;
    require_operator(&client).await?;
    let existing = TestNamespace::new(&client, "taken").await?;
    let name = unique_name("grabby");
    let _t = create_tenant(
        &client,
        &name,
        json!({"owners": [{"kind": "User", "name": "z"}], "namespaces": [existing.name]}),
    )
    .await?;
    let api = Api::<Tenant>::all(client.clone());
    let t = wait_for("the tenant to report the conflict", WAIT, || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let t = api.get(&name).await?;
            Ok(t.status
                .as_ref()
                .is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Ready" && c.status == "False" && c.reason == "NamespaceConflict"
                    })
                })
                .then_some(t))
        }
    })
    .await?;
    assert!(t.status.unwrap().namespaces.is_empty());
    let ns = Api::<Namespace>::all(client.clone())
        .get(&existing.name)
        .await?;
    assert!(
        !ns.labels().contains_key(TENANT_LABEL),
        "the namespace was adopted"
    );
    Ok(())
}

fn aifactory_api(client: &Client, ar: ApiResource, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn dynamic(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "aifactory.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})).unwrap()
}

fn refused(result: Result<impl std::fmt::Debug, kube::Error>, what: &str) -> kube::Error {
    match result {
        Ok(v) => panic!("{what} was allowed: {v:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn tenant_users_act_in_their_own_namespaces_and_are_refused_everywhere_else()
-> anyhow::Result<()> {
    let admin = admin().await?;
    install_crds(&admin).await?;
    require_operator(&admin).await?;
    let (a, b) = (unique_name("tenant-a"), unique_name("tenant-b"));
    let (alice, bob) = (format!("{a}-alice"), format!("{b}-bob"));
    let _ga = create_tenant(
        &admin,
        &a,
        json!({"owners": [{"kind": "User", "name": alice}]}),
    )
    .await?;
    let _gb = create_tenant(
        &admin,
        &b,
        json!({"owners": [{"kind": "User", "name": bob}]}),
    )
    .await?;
    wait_ready(&admin, &a, &[&a]).await?;
    wait_ready(&admin, &b, &[&b]).await?;
    Api::<Secret>::namespaced(admin.clone(), &b)
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "b-secret"}, "stringData": {"k": "v"}}),
            )?,
        )
        .await?;

    let as_alice = impersonate(&alice, &["system:authenticated"]).await?;
    let tj = ApiResource::erase::<aifactory_api::TrainingJob>(&());
    let ds = ApiResource::erase::<aifactory_api::Dataset>(&());
    let ws = ApiResource::erase::<aifactory_api::Workspace>(&());
    let job = || {
        dynamic(
            "TrainingJob",
            "run",
            json!({"pool": "h100", "nodes": 1, "gpusPerNode": 8, "image": "train:1"}),
        )
    };
    let data = || dynamic("Dataset", "scans", json!({"size": "10Gi"}));
    let space = || dynamic("Workspace", "alice", json!({"storage": {"home": "10Gi"}}));
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"token": "t"}}),
    )?;

    // In her own namespace: allowed.
    let pp = PostParams::default();
    aifactory_api(&as_alice, tj.clone(), &a)
        .create(&pp, &job())
        .await?;
    aifactory_api(&as_alice, ds.clone(), &a)
        .create(&pp, &data())
        .await?;
    aifactory_api(&as_alice, ws.clone(), &a)
        .create(&pp, &space())
        .await?;
    Api::<Secret>::namespaced(as_alice.clone(), &a)
        .create(&pp, &secret)
        .await?;

    // In B's namespace: refused, writing or reading.
    let mut errors = vec![
        refused(
            aifactory_api(&as_alice, tj.clone(), &b)
                .create(&pp, &job())
                .await,
            "a TrainingJob in B",
        ),
        refused(
            aifactory_api(&as_alice, ds, &b).create(&pp, &data()).await,
            "a Dataset in B",
        ),
        refused(
            aifactory_api(&as_alice, ws, &b).create(&pp, &space()).await,
            "a Workspace in B",
        ),
        refused(
            Api::<Secret>::namespaced(as_alice.clone(), &b)
                .create(&pp, &secret)
                .await,
            "a Secret in B",
        ),
        refused(
            Api::<Secret>::namespaced(as_alice.clone(), &b)
                .get("b-secret")
                .await,
            "reading B's secret",
        ),
        refused(
            aifactory_api(&as_alice, tj, &b)
                .list(&Default::default())
                .await,
            "listing B's jobs",
        ),
    ];
    // Her own namespace's guard rails: refused.
    let pp_merge = PatchParams::default();
    let raise = Patch::Merge(json!({"spec": {"hard": {"requests.nvidia.com/gpu": "1000"}}}));
    errors.push(refused(
        Api::<ResourceQuota>::namespaced(as_alice.clone(), &a)
            .patch("aifactory-tenant", &pp_merge, &raise)
            .await,
        "raising her quota",
    ));
    errors.push(refused(
        Api::<LimitRange>::namespaced(as_alice.clone(), &a)
            .delete("aifactory-tenant", &Default::default())
            .await,
        "deleting her LimitRange",
    ));
    errors.push(refused(
        Api::<NetworkPolicy>::namespaced(as_alice.clone(), &a)
            .delete("aifactory-tenant", &Default::default())
            .await,
        "deleting her NetworkPolicy",
    ));
    let more = Patch::Merge(
        json!({"subjects": [{"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}]}),
    );
    errors.push(refused(
        Api::<RoleBinding>::namespaced(as_alice.clone(), &a)
            .patch("aifactory-tenant-owner", &pp_merge, &more)
            .await,
        "editing her RoleBinding",
    ));
    // Her own Tenant: readable; B's: refused.
    Api::<Tenant>::all(as_alice.clone()).get(&a).await?;
    errors.push(refused(
        Api::<Tenant>::all(as_alice.clone()).get(&b).await,
        "reading Tenant B",
    ));
    for e in &errors {
        assert_eq!(status_code(e), Some(403), "{e}");
    }

    // Pod Security `restricted`: privileged, hostPath and hostNetwork pods are refused.
    let pods = Api::<Pod>::namespaced(as_alice.clone(), &a);
    let bad_pods = [
        (
            "privileged",
            json!({"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]}),
        ),
        (
            "hostpath",
            json!({"containers": [{"name": "c", "image": "x"}], "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
        ),
        (
            "hostnetwork",
            json!({"hostNetwork": true, "containers": [{"name": "c", "image": "x"}]}),
        ),
    ];
    for (name, spec) in bad_pods {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
        let err = refused(pods.create(&pp, &pod).await, &format!("a {name} pod"));
        assert_eq!(status_code(&err), Some(403), "{err}");
        assert!(
            err.to_string()
                .contains("violates PodSecurity \"restricted"),
            "{name}: {err}"
        );
    }
    // …while a restricted-compliant pod is allowed: the refusals were Pod Security, not RBAC.
    let good: Pod = serde_json::from_value(json!({"metadata": {"name": "good"}, "spec": {
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "x", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}))?;
    pods.create(&pp, &good).await?;
    Ok(())
}
