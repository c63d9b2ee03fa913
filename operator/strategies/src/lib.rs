//! Strategies for objects the CRD schema accepts: every length, range and pattern of
//! `crds/*.yaml` (checked on each generated object by `schema::violations`), and
//! every CEL rule, kept by construction. Where the schema bounds only a string's
//! length, any characters are generated; lengths often sit at their limits.
//!
//! Test-only (never a dependency of the operator itself): the builders' property
//! test (`operator/tests/builders`) runs these through the pure builders, the fuzz
//! run (`tests/tests/fuzz.rs`) sends them to a real API server and the operator.
pub mod schema;

use aifactory_api::*;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Node, PersistentVolume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;
use std::collections::BTreeMap;

/// A length in `min..=max`, often one of the two.
pub fn len(min: usize, max: usize) -> BoxedStrategy<usize> {
    prop_oneof![2 => Just(max), 1 => Just(min), 5 => min..=max].boxed()
}

const LABEL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789----";
const SUBDOMAIN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789---...";
const QNAME: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789--__..";

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// A DNS-1123 label of 1..=`max` (DNS-1035 when `letter_first`).
pub fn dns_label(max: usize, letter_first: bool) -> BoxedStrategy<String> {
    len(1, max)
        .prop_flat_map(|n| vec(select(LABEL), n))
        .prop_map(move |mut b| {
            if !alnum(b[0]) || (letter_first && !b[0].is_ascii_lowercase()) {
                b[0] = b'a' + b[0] % 26;
            }
            let last = b.len() - 1;
            if !alnum(b[last]) {
                b[last] = b'z';
            }
            String::from_utf8(b).unwrap()
        })
        .boxed()
}

/// A DNS-1123 subdomain of 1..=`max`.
pub fn subdomain(max: usize) -> BoxedStrategy<String> {
    len(1, max)
        .prop_flat_map(|n| vec(select(SUBDOMAIN), n))
        .prop_map(|mut b| {
            let n = b.len();
            for i in 0..n {
                if b[i] == b'.' {
                    if i == 0 || i == n - 1 {
                        b[i] = b'a';
                        continue;
                    }
                    if !alnum(b[i - 1]) {
                        b[i - 1] = b'b';
                    }
                    if !alnum(b[i + 1]) {
                        b[i + 1] = b'c';
                    }
                }
            }
            if !alnum(b[0]) {
                b[0] = b'd';
            }
            if !alnum(b[n - 1]) {
                b[n - 1] = b'e';
            }
            String::from_utf8(b).unwrap()
        })
        .boxed()
}

/// The name part of a qualified name (label key, resource name): 1..=`max` of
/// `[-A-Za-z0-9_.]`, alphanumeric at both ends.
pub fn qname(max: usize) -> BoxedStrategy<String> {
    len(1, max)
        .prop_flat_map(|n| vec(select(QNAME), n))
        .prop_map(|mut b| {
            let last = b.len() - 1;
            if !alnum(b[0]) {
                b[0] = b'Q';
            }
            if !alnum(b[last]) {
                b[last] = b'9';
            }
            String::from_utf8(b).unwrap()
        })
        .boxed()
}

/// A label or annotation key: `[prefix/]name`.
pub fn qualified_key() -> BoxedStrategy<String> {
    prop_oneof![
        qname(63),
        (subdomain(253), qname(63)).prop_map(|(p, n)| format!("{p}/{n}")),
        Just("aifactory.dev/simulate-duration".to_string()),
        Just("aifactory.dev/simulate-failure".to_string()),
        qname(40).prop_map(|n| format!("aifactory.dev/simulate-{n}")),
    ]
    .boxed()
}

/// A label value: empty, or a qualified name part.
pub fn label_value() -> BoxedStrategy<String> {
    prop_oneof![1 => Just(String::new()), 5 => qname(63)].boxed()
}

/// Characters the schema lets through where it bounds only the length.
const ANY: &[char] = &[
    'a', 'z', 'A', 'Z', '0', '9', '-', '_', '.', '/', ' ', ':', '=', '@', '%', '$', '(', ')', '\'',
    '"', '\\', '\t', '\n', 'é', '日', '☃', '[', ']', '*', '+', ',', ';', '#', '?', '!', '~',
];

/// A string of `min..=max` characters that the schema bounds only in length:
/// sometimes a DNS subdomain, sometimes anything.
pub fn free(min: usize, max: usize) -> BoxedStrategy<String> {
    let anything = len(min, max)
        .prop_flat_map(|n| vec(select(ANY), n))
        .prop_map(|c| c.into_iter().collect::<String>());
    if min <= 1 {
        prop_oneof![subdomain(max.min(253)), anything].boxed()
    } else {
        anything.boxed()
    }
}

/// A container image the schema accepts: 1..=512 characters, none of them white
/// space at either end.
pub fn image() -> BoxedStrategy<String> {
    free(1, 512)
        .prop_map(|s| s.trim().to_string())
        .prop_filter("not empty", |s| !s.is_empty())
        .boxed()
}

/// An absolute path (`^/`, at most 4096).
pub fn abs_path() -> BoxedStrategy<String> {
    prop_oneof![
        2 => select(vec!["/data", "/checkpoints", "/workspace/home", "/workspace/scratch", "/", "/data/a", "/data/a/"]).prop_map(String::from),
        3 => free(0, 60).prop_map(|s| format!("/{s}")),
        1 => free(0, 4095).prop_map(|s| format!("/{s}")),
    ]
    .boxed()
}

/// A quantity `isQuantity` accepts: above zero when `positive`, else not negative.
pub fn quantity(positive: bool) -> BoxedStrategy<String> {
    let number = prop_oneof![
        (1u32..100_000).prop_map(|n| n.to_string()),
        (0u32..1000, 1u32..1000).prop_map(|(a, b)| format!("{a}.{b}")),
        (1u32..1000).prop_map(|n| format!(".{n}")),
        (1u32..99).prop_map(|n| format!("+{n}")),
    ];
    let suffix = select(vec![
        "", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti", "Pi", "e3", "E2", "u",
    ]);
    let q = (number, suffix).prop_map(|(n, s)| format!("{n}{s}"));
    if positive {
        q.boxed()
    } else {
        prop_oneof![
            3 => q,
            1 => select(vec!["0", "0Gi", "0.0", "+0"]).prop_map(String::from),
        ]
        .boxed()
    }
}

/// A Go duration longer than zero.
pub fn duration() -> BoxedStrategy<String> {
    vec(
        (0u32..1000, select(vec!["ns", "us", "ms", "s", "m", "h"])),
        1..4,
    )
    .prop_map(|parts| {
        let mut s: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        if parts.iter().all(|(n, _)| *n == 0) {
            s.push_str("1h");
        }
        s
    })
    .boxed()
}

fn uid() -> BoxedStrategy<String> {
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}".boxed()
}

/// Metadata of an object from the API: name, namespace, uid, annotations.
fn meta(name: BoxedStrategy<String>, namespaced: bool) -> BoxedStrategy<ObjectMeta> {
    (
        name,
        dns_label(63, false),
        uid(),
        btree_map(qualified_key(), free(0, 100), 0..4),
    )
        .prop_map(move |(name, ns, uid, annotations)| ObjectMeta {
            name: Some(name),
            namespace: namespaced.then_some(ns),
            uid: Some(uid),
            annotations: Some(annotations),
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            )),
            ..Default::default()
        })
        .boxed()
}

// --- env -----------------------------------------------------------------------------

/// An environment variable name the schema accepts: `[-._a-zA-Z][-._a-zA-Z0-9]*`,
/// not `.` nor `..*`, none of the names aifactory sets.
pub fn env_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[A-Z_][A-Z0-9_]{0,30}",
        1 => "[-_a-zA-Z][-._a-zA-Z0-9]{0,40}",
        1 => "\\.[-_a-zA-Z0-9][-._a-zA-Z0-9]{0,10}",
    ]
    .prop_filter("reserved", |n| !RESERVED_ENV.contains(&n.as_str()))
    .boxed()
}

/// A ConfigMap or Secret key: `[-._a-zA-Z0-9]+` of at most 253, not `.` nor `..*`.
fn config_key() -> BoxedStrategy<String> {
    prop_oneof![
        "[-_a-zA-Z0-9][-._a-zA-Z0-9]{0,40}",
        "\\.[-_a-zA-Z0-9][-._a-zA-Z0-9]{0,10}",
        "[a-z]{253}",
    ]
    .boxed()
}

/// A `fieldRef.fieldPath` the schema accepts.
fn field_path() -> BoxedStrategy<String> {
    prop_oneof![
        select(vec![
            "metadata.name",
            "metadata.namespace",
            "metadata.uid",
            "spec.nodeName",
            "spec.host",
            "spec.serviceAccountName",
            "status.hostIP",
            "status.hostIPs",
            "status.podIP",
            "status.podIPs",
        ])
        .prop_map(String::from),
        (subdomain(253), qname(63)).prop_map(|(p, n)| format!("metadata.labels['{p}/{n}']")),
        qname(63).prop_map(|n| format!("metadata.labels['{n}']")),
        (subdomain(248), qname(63))
            .prop_map(|(p, n)| format!("metadata.annotations['{}/{n}']", p.to_uppercase())),
    ]
    .prop_filter("at most 274", |p| p.len() <= 274)
    .boxed()
}

/// A `resourceFieldRef` the schema accepts: a resource and its divisor.
fn resource_field() -> BoxedStrategy<serde_json::Value> {
    let resource = prop_oneof![
        select(vec![
            "limits.cpu",
            "requests.cpu",
            "limits.memory",
            "requests.memory",
            "limits.ephemeral-storage",
            "requests.ephemeral-storage",
        ])
        .prop_map(String::from),
        (select(vec!["limits", "requests"]), "[0-9]{1,3}(Mi|Gi)")
            .prop_map(|(k, s)| format!("{k}.hugepages-{s}")),
    ];
    resource
        .prop_flat_map(|r| {
            let divisors = if r.ends_with(".cpu") {
                vec!["1m", "1"]
            } else {
                vec![
                    "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi",
                    "1Ei",
                ]
            };
            (Just(r), proptest::option::of(select(divisors)))
        })
        .prop_map(|(r, d)| json!({"resource": r, "divisor": d}))
        .boxed()
}

/// A `valueFrom` the schema accepts: exactly one source.
fn value_from() -> BoxedStrategy<EnvVarSource> {
    prop_oneof![
        (subdomain(253), config_key())
            .prop_map(|(name, key)| json!({"configMapKeyRef": {"name": name, "key": key}})),
        (subdomain(253), config_key(), proptest::option::of(any::<bool>())).prop_map(
            |(name, key, optional)| json!({"secretKeyRef": {"name": name, "key": key, "optional": optional}})
        ),
        (proptest::option::of(Just("v1")), field_path())
            .prop_map(|(v, p)| json!({"fieldRef": {"apiVersion": v, "fieldPath": p}})),
        resource_field().prop_map(|r| json!({"resourceFieldRef": r})),
    ]
    .prop_map(|v| serde_json::from_value(v).unwrap())
    .boxed()
}

/// An `env` entry the schema accepts: a value, or a valueFrom (beside an empty
/// value at most).
pub fn env_var() -> BoxedStrategy<EnvVar> {
    (
        env_name(),
        prop_oneof![
            free(0, 60).prop_map(|v| (Some(v), None)),
            (proptest::option::of(Just(String::new())), value_from())
                .prop_map(|(v, f)| (v, Some(f))),
        ],
    )
        .prop_map(|(name, (value, value_from))| EnvVar {
            name,
            value,
            value_from,
        })
        .boxed()
}

// --- datasets mounted ---------------------------------------------------------------

/// A dataset mount the schema accepts (before the list rules).
pub fn dataset_mount() -> BoxedStrategy<DatasetMount> {
    (
        dns_label(63, false),
        proptest::option::of(dns_label(63, false)),
        proptest::option::of(abs_path()),
    )
        .prop_map(|(name, namespace, mount_path)| DatasetMount {
            name,
            namespace,
            mount_path,
        })
        .boxed()
}

/// The mounts that keep the list rules: each dataset once, each at a path of its
/// own, none at one of `reserved`.
pub fn distinct_mounts(mounts: Vec<DatasetMount>, reserved: &[String]) -> Vec<DatasetMount> {
    let mut out: Vec<DatasetMount> = vec![];
    for m in mounts {
        let same = out.iter().any(|o| {
            (o.name == m.name
                && o.namespace.clone().unwrap_or_default()
                    == m.namespace.clone().unwrap_or_default())
                || o.path() == m.path()
        });
        if !same && !reserved.contains(&m.path()) {
            out.push(m);
        }
    }
    out
}

// --- GpuPool ---------------------------------------------------------------------------

/// An extended resource name the schema accepts: a DNS subdomain of at most 244
/// (not `requests.`-prefixed), `/`, a qualified name part.
pub fn resource_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just("nvidia.com/gpu".to_string()),
        1 => Just("amd.com/gpu".to_string()),
        1 => Just("kubernetes.io/gpu".to_string()),
        4 => (subdomain(244), qname(63))
            .prop_map(|(p, n)| format!("{p}/{n}"))
            .prop_filter("at most 253, not requests.", |s| s.len() <= 253 && !s.starts_with("requests.")),
    ]
    .boxed()
}

/// A node selector the schema accepts: match labels, match expressions (each
/// operator with values only where it takes them), or both; never empty.
pub fn node_selector() -> BoxedStrategy<LabelSelector> {
    let expression = (
        qualified_key(),
        prop_oneof![
            (select(vec!["In", "NotIn"]), vec(label_value(), 1..4)),
            select(vec!["Exists", "DoesNotExist"]).prop_map(|op| (op, vec![])),
        ],
    )
        .prop_map(|(key, (operator, values))| {
            serde_json::from_value(
                json!({"key": key, "operator": operator, "values": (!values.is_empty()).then_some(values)}),
            )
            .unwrap()
        });
    let labels = btree_map(qname(63), label_value(), 1..3);
    prop_oneof![
        3 => labels.clone().prop_map(|l| LabelSelector { match_labels: Some(l), match_expressions: None }),
        1 => vec(expression.clone(), 1..3).prop_map(|e| LabelSelector { match_labels: None, match_expressions: Some(e) }),
        1 => (labels, vec(expression, 1..3)).prop_map(|(l, e)| LabelSelector { match_labels: Some(l), match_expressions: Some(e) }),
    ]
    .boxed()
}

/// Topology levels the schema accepts: 1..=4 distinct node label keys of at most
/// 316 characters, often the local factory's own.
pub fn topology() -> BoxedStrategy<Topology> {
    let level = prop_oneof![
        2 => select(vec!["topology.aifactory.dev/block", "topology.aifactory.dev/rack", "kubernetes.io/hostname"]).prop_map(String::from),
        1 => qualified_key().prop_filter("at most 316", |k| k.len() <= 316),
    ];
    vec(level, 1..=4)
        .prop_map(|levels| {
            let mut seen = std::collections::BTreeSet::new();
            Topology {
                levels: levels
                    .into_iter()
                    .filter(|l| seen.insert(l.clone()))
                    .collect(),
            }
        })
        .boxed()
}

/// A GpuPool the schema accepts, with a status (its capacity).
pub fn pool() -> BoxedStrategy<GpuPool> {
    (
        meta(dns_label(63, false), false),
        node_selector(),
        free(1, 63),
        resource_name(),
        1i32..=64,
        1i32..=5000,
        any::<bool>(),
        (dns_label(63, false), proptest::option::of(free(1, 63))),
        0i64..100_000,
        proptest::option::of(topology()),
        proptest::option::of(prop_oneof![
            Just(1_000_000.0),
            Just(0.001),
            0.001f64..1_000_000.0
        ]),
    )
        .prop_map(
            |(
                metadata,
                node_selector,
                model,
                resource_name,
                per_node,
                power_watts,
                dedicated,
                (region, site),
                capacity,
                topology,
                power_cap_kilowatts,
            )| {
                let mut p = GpuPool::new(
                    metadata.name.as_deref().unwrap(),
                    GpuPoolSpec {
                        node_selector,
                        gpu: GpuSpec {
                            model,
                            resource_name,
                            per_node,
                            power_watts,
                        },
                        topology,
                        dedicated,
                        power_cap_kilowatts,
                        location: Location { region, site },
                    },
                );
                p.metadata = metadata;
                p.status = Some(GpuPoolStatus {
                    gpus: GpuCounts {
                        capacity,
                        ..Default::default()
                    },
                    ..Default::default()
                });
                p
            },
        )
        .boxed()
}

/// Names of `n` distinct nodes (DNS-1123 subdomains, as Node names are).
pub fn node_names(n: usize) -> BoxedStrategy<Vec<String>> {
    subdomain(247)
        .prop_map(move |prefix| (0..n).map(|i| format!("{prefix}-{i}")).collect())
        .boxed()
}

/// A Node as a cluster has it: valid labels, taints unique by key and effect, some
/// of them aifactory's (of this pool or another).
pub fn node(pool: String) -> BoxedStrategy<Node> {
    let key = prop_oneof![
        Just(POOL_TAINT.to_string()),
        Just("nvidia.com/gpu".to_string()),
        qname(63),
    ];
    let value = prop_oneof![Just(pool.clone()), dns_label(63, false), label_value()];
    let effect = select(vec!["NoSchedule", "PreferNoSchedule", "NoExecute"]);
    (
        subdomain(253),
        btree_map(
            prop_oneof![Just(POOL_LABEL.to_string()), qualified_key()],
            prop_oneof![Just(pool), label_value()],
            0..4,
        ),
        vec((key, value, effect), 0..5),
        "[0-9]{1,6}",
    )
        .prop_map(|(name, labels, taints, version)| {
            let mut seen = std::collections::BTreeSet::new();
            let taints: Vec<_> = taints
                .into_iter()
                .filter(|(k, _, e)| seen.insert((k.clone(), *e)))
                .map(|(k, v, e)| json!({"key": k, "value": v, "effect": e}))
                .collect();
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels, "resourceVersion": version},
                "spec": {"taints": taints},
            }))
            .unwrap()
        })
        .boxed()
}

// --- TrainingJob -----------------------------------------------------------------------

/// A TrainingJob the schema accepts.
pub fn trainingjob() -> BoxedStrategy<TrainingJob> {
    let shape = (
        free(1, 63),
        prop_oneof![Just(1i32), Just(1024), 1i32..=1024],
        1i32..=64,
        image(),
        vec(free(0, 100), 0..4),
        vec(free(0, 100), 0..4),
        vec(env_var(), 0..8),
    );
    let resources = proptest::option::of(
        (
            proptest::option::of(quantity(true)),
            proptest::option::of(quantity(true)),
        )
            .prop_map(|(cpu, memory)| NodeResources { cpu, memory }),
    );
    let checkpoint = proptest::option::of((subdomain(253), abs_path()).prop_map(
        |(claim_name, mount_path)| Checkpoint {
            claim_name,
            mount_path,
        },
    ));
    let rest = (
        resources,
        vec(dataset_mount(), 0..6),
        checkpoint,
        proptest::option::of(subdomain(253)),
        proptest::option::of(duration()),
        0i32..=100,
        any::<bool>(),
        proptest::option::of(select(vec![
            TopologyPack::None,
            TopologyPack::Rack,
            TopologyPack::Block,
        ])),
    );
    (meta(dns_label(52, true), true), shape, rest)
        .prop_map(|(metadata, shape, rest)| {
            let (pool, nodes, gpus_per_node, image, command, args, env) = shape;
            let (
                resources,
                datasets,
                checkpoint,
                priority,
                max_runtime,
                max_restarts,
                suspend,
                pack,
            ) = rest;
            let reserved: Vec<String> = checkpoint.iter().map(|c| c.mount_path.clone()).collect();
            let mut tj = TrainingJob::new(
                metadata.name.as_deref().unwrap(),
                TrainingJobSpec {
                    pool,
                    nodes,
                    gpus_per_node,
                    image,
                    command,
                    args,
                    env,
                    resources,
                    datasets: distinct_mounts(datasets, &reserved),
                    checkpoint,
                    priority,
                    max_runtime,
                    max_restarts,
                    suspend,
                    topology: pack.map(|pack| JobTopology { pack }),
                },
            );
            tj.metadata = metadata;
            tj
        })
        .boxed()
}

// --- Workspace -------------------------------------------------------------------------

/// A Workspace the schema accepts.
pub fn workspace() -> BoxedStrategy<Workspace> {
    let storage = (
        quantity(true),
        proptest::option::of(quantity(true)),
        proptest::option::of(subdomain(253)),
    )
        .prop_map(|(home, scratch, storage_class_name)| WorkspaceStorage {
            home,
            scratch,
            storage_class_name,
        });
    let interactive = proptest::option::of(
        (
            image(),
            free(1, 63),
            1i32..=16,
            duration(),
            prop_oneof![Just(1), Just(65535), 1i32..=65535],
        )
            .prop_map(|(image, pool, gpus, max_lifetime, port)| Interactive {
                image,
                pool,
                gpus,
                max_lifetime,
                port,
            }),
    );
    (
        meta(dns_label(63, true), true),
        storage,
        vec(dataset_mount(), 0..6),
        interactive,
    )
        .prop_map(|(metadata, storage, datasets, interactive)| {
            let reserved = [
                "/workspace/home".to_string(),
                "/workspace/scratch".to_string(),
            ];
            let mut ws = Workspace::new(
                metadata.name.as_deref().unwrap(),
                WorkspaceSpec {
                    storage,
                    datasets: distinct_mounts(datasets, &reserved),
                    interactive,
                },
            );
            ws.metadata = metadata;
            ws
        })
        .boxed()
}

// --- Tenant ----------------------------------------------------------------------------

fn subject() -> BoxedStrategy<Subject> {
    prop_oneof![
        (
            select(vec![SubjectKind::User, SubjectKind::Group]),
            free(1, 253)
        )
            .prop_map(|(kind, name)| Subject {
                kind,
                name,
                namespace: None
            }),
        (subdomain(253), free(1, 63)).prop_map(|(name, ns)| Subject {
            kind: SubjectKind::ServiceAccount,
            name,
            namespace: Some(ns)
        }),
    ]
    .boxed()
}

fn not_system(ns: &str) -> bool {
    ns != "default" && ns != "aifactory-system" && !ns.starts_with("kube-")
}

/// A Tenant the schema accepts, using some of `pools`, with the status its
/// controller writes (its namespaces).
pub fn tenant(pools: Vec<String>) -> BoxedStrategy<Tenant> {
    let quota =
        proptest::sample::subsequence(pools.clone(), 0..=pools.len()).prop_flat_map(|names| {
            let n = names.len();
            (
                Just(names),
                vec(
                    (0i32..=1_000_000, proptest::option::of(0i32..=1_000_000)).prop_flat_map(
                        |(gpus, borrowing)| {
                            (Just(gpus), Just(borrowing), proptest::option::of(0..=gpus))
                        },
                    ),
                    n,
                ),
            )
        });
    // Weight, budget (often none, sometimes exhausted from the start), residency,
    // deletion policy, display name.
    let terms = (
        prop_oneof![3 => Just(1i32), 1 => 1i32..=1000],
        proptest::option::of(prop_oneof![
            Just(0.0),
            Just(100_000_000.0),
            0.0f64..100_000_000.0
        ]),
        proptest::option::of(btree_set(dns_label(63, false), 1..=16)),
        prop_oneof![3 => Just(DeletionPolicy::Delete), 1 => Just(DeletionPolicy::Retain)],
        proptest::option::of(free(0, 128)),
    );
    (
        meta(dns_label(63, false), false),
        vec(subject(), 1..4),
        vec(subject(), 0..4),
        btree_set(
            dns_label(63, false).prop_filter("system", |n| not_system(n)),
            0..4,
        ),
        quota,
        vec(free(1, 253), 0..3),
        proptest::option::of((quantity(false), vec(free(1, 253), 0..3))),
        terms,
    )
        .prop_filter("default namespace", |(m, _, _, nss, ..)| {
            !nss.is_empty() || not_system(m.name.as_deref().unwrap())
        })
        .prop_map(
            |(
                metadata,
                owners,
                members,
                namespaces,
                (qpools, limits),
                priority_classes,
                storage,
                (weight, budget, regions, deletion_policy, display_name),
            )| {
                let quota = qpools
                    .into_iter()
                    .zip(limits)
                    .map(|(pool, (gpus, borrowing_limit, lending_limit))| PoolQuota {
                        pool,
                        gpus,
                        borrowing_limit,
                        lending_limit,
                    })
                    .collect();
                let spec = TenantSpec {
                    display_name,
                    owners,
                    members,
                    namespaces: namespaces.into_iter().collect(),
                    quota,
                    weight,
                    priority_classes,
                    budget: budget.map(|gpu_hours_per_month| Budget {
                        gpu_hours_per_month,
                    }),
                    residency: regions.map(|r| Residency {
                        regions: r.into_iter().collect(),
                    }),
                    storage: storage.map(|(max_request, classes)| TenantStorage {
                        max_request,
                        classes,
                    }),
                    deletion_policy,
                };
                let name = metadata.name.clone().unwrap();
                let mut t = Tenant::new(&name, spec);
                t.status = Some(TenantStatus {
                    namespaces: t.spec.namespaces_or_default(&name),
                    ..Default::default()
                });
                t.metadata = metadata;
                t
            },
        )
        .boxed()
}

// --- Dataset ---------------------------------------------------------------------------

fn url() -> BoxedStrategy<String> {
    let host = vec(
        select(
            ANY.iter()
                .copied()
                .filter(|c| *c != '/' && *c != ' ')
                .collect::<Vec<_>>(),
        ),
        1..30,
    )
    .prop_map(|c| c.into_iter().collect::<String>());
    (select(vec!["https", "http", "s3"]), host, free(0, 100))
        .prop_map(|(scheme, host, rest)| format!("{scheme}://{host}{rest}"))
        .prop_filter("at most 2048", |u| u.chars().count() <= 2048)
        .boxed()
}

/// A Dataset of a tenant owning `namespace`, shared with some of `tenants`.
pub fn dataset(namespace: String, tenants: Vec<String>) -> BoxedStrategy<Dataset> {
    let source = proptest::option::of(
        (
            url(),
            proptest::option::of(subdomain(253)),
            proptest::option::of(free(1, 2048)),
        )
            .prop_map(|(url, secret_name, endpoint)| DataSource {
                url,
                secret_name,
                endpoint,
            }),
    );
    // CEL: ReadWriteOncePod alone.
    let modes = prop_oneof![
        3 => btree_set(select(vec!["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"]), 1..=3),
        1 => Just(["ReadWriteOncePod"].into()),
    ];
    (
        meta(dns_label(63, false), true),
        quantity(true),
        proptest::option::of(subdomain(253)),
        modes,
        source,
        proptest::sample::subsequence(tenants.clone(), 0..=tenants.len()),
    )
        .prop_map(
            move |(mut metadata, size, storage_class_name, modes, source, sharing)| {
                metadata.namespace = Some(namespace.clone());
                let mut modes: Vec<&str> = modes.into_iter().collect();
                // CEL: a shared dataset is ReadOnlyMany or ReadWriteMany.
                if !sharing.is_empty()
                    && !modes
                        .iter()
                        .any(|m| *m == "ReadOnlyMany" || *m == "ReadWriteMany")
                {
                    modes.retain(|m| *m != "ReadWriteOncePod");
                    modes.push("ReadOnlyMany");
                }
                let mut ds = Dataset::new(
                    metadata.name.as_deref().unwrap(),
                    serde_json::from_value(json!({
                        "size": size,
                        "storageClassName": storage_class_name,
                        "accessModes": modes,
                        "source": source,
                        "sharing": (!sharing.is_empty()).then(|| json!({"tenants": sharing})),
                    }))
                    .unwrap(),
                );
                ds.metadata = metadata;
                ds
            },
        )
        .boxed()
}

/// The PersistentVolume a provisioner bound to `ds`'s claim.
pub fn bound_volume(ds: &Dataset) -> BoxedStrategy<PersistentVolume> {
    let ds = ds.clone();
    (
        subdomain(253),
        any::<bool>(),
        proptest::option::of(dns_label(63, false)),
    )
        .prop_map(move |(name, csi, region)| {
            let source = if csi {
                json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}})
            } else {
                json!({"nfs": {"server": "nfs.example", "path": "/exports/a"}})
            };
            let mut spec = json!({
                "capacity": {"storage": ds.spec.size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": ds.metadata.namespace, "name": ds.metadata.name},
            });
            spec.as_object_mut()
                .unwrap()
                .extend(source.as_object().unwrap().clone());
            let labels: BTreeMap<&str, String> = region
                .into_iter()
                .map(|r| ("topology.kubernetes.io/region", r))
                .collect();
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": labels}, "spec": spec}),
            )
            .unwrap()
        })
        .boxed()
}
