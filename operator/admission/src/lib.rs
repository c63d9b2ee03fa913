//! The admission engine (placeholder docs, see below).
#![deny(missing_docs)]

mod decision;
mod engine;
mod model;
mod placement;
mod queue;
mod quota;

pub use decision::{
    Admission, Decision, Decisions, Eviction, Outcome, PendingReason, PoolUsage, PreemptionReason,
    Reservation,
};
pub use engine::admit;
pub use model::{Factory, GpuPool, Node, Policy, QueuedJob, Quota, RunningJob, Tenant};
