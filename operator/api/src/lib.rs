//! The `aifactory.dev/v1alpha1` API: the five custom resources a platform team and its
//! tenants write, as Rust types from which the CRDs in `crds/` are generated.
//!
//! This crate owns only types, schema validation (OpenAPI + CEL rules the API server
//! enforces) and small pure helpers on them. It does no I/O: the operator, the
//! simulator and the tests all depend on it.
#![deny(missing_docs)]
// kube's printcolumn(name = .., type_ = ..) repeats key = value pairs, which this lint
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod dataset;
pub mod gpupool;
pub mod rules;
pub mod tenant;
pub mod trainingjob;
pub mod workspace;

pub use common::*;
pub use dataset::*;
pub use gpupool::*;
pub use tenant::*;
pub use trainingjob::*;
pub use workspace::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every aifactory kind.
pub const GROUP: &str = "aifactory.dev";
/// The API version this crate describes.
pub const VERSION: &str = "v1alpha1";

/// Every CRD of the API, each with the file name `crdgen` writes it to.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("gpupool.yaml", GpuPool::crd()),
        ("tenant.yaml", Tenant::crd()),
        ("dataset.yaml", Dataset::crd()),
        ("workspace.yaml", Workspace::crd()),
        ("trainingjob.yaml", TrainingJob::crd()),
    ]
}
