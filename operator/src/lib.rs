//! The aifactory operator: controllers that reconcile the `aifactory.dev` kinds into
//! cluster state, and the plumbing they share (leader election, metrics, events,
//! change-only apply).
pub mod apply;
pub mod cache;
pub mod conditions;
pub mod context;
pub mod controllers;
pub mod error;
pub mod fence;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod server;

/// Field manager of every write the operator makes (server-side apply).
pub const MANAGER: &str = "aifactory-operator";
