//! The admission engine of the AI factory: which queued training job may start now,
//! where, whom it evicts, and — for every job that waits — why, in words a tenant
//! understands.
//!
//! A pure library: no Kubernetes client, no clock, no I/O, no async. One call,
//! [`admit`], takes a [`Factory`] snapshot and returns [`Decisions`]; the same
//! snapshot always gives the same decisions. The controller feeds it from its watch
//! caches and applies the decisions; the simulator and the benchmark
//! (`src/bin/bench-admission.rs`) feed it synthetic factories. A caller that runs
//! many passes over the same pools (the simulator) may hold an [`Engine`] instead:
//! same decisions, without rebuilding the pools' node indexes every pass.
//!
//! # Feeding it
//! - **Pools** with every member node: allocatable GPUs, ready/schedulable, topology
//!   labels, and [`Node::unmanaged_gpus`] for GPUs held by pods the engine did not
//!   admit. GPUs of admitted jobs are *not* reported per node: they come from the
//!   running jobs' placements, so nothing is counted twice.
//! - **Running jobs**: every job admitted earlier that still holds GPUs — admitted,
//!   running, or evicted but whose pods are not gone yet — with its placement,
//!   priority and admission tick. A job is running or queued, never both: an
//!   evicted job moves back to the queue once its pods are gone (until then a
//!   queued copy would be refused as `Duplicate`).
//! - **Queued jobs**: every job waiting, with `created` (creation order) and
//!   `queued_since` (the tick it entered the queue, reset when it is requeued after
//!   preemption) in the unit of [`Factory::now`] — the controller uses seconds.
//! - **Tenants** with per-pool quotas, fair-share usage (GPU-hours this period),
//!   remaining budget and residency.
//!
//! # Applying the decisions
//! [`Decisions::decisions`] holds one [`Decision`] per queued job, in the order the
//! engine considered them; apply them in that order. [`Outcome::Admit`]: unsuspend
//! the job pinned to [`Admission::placement`] (pod *i* on node *i*).
//! [`Outcome::PreemptToAdmit`]: evict the listed jobs (phase `Preempted`, back to the
//! queue with `queued_since` = the tick they are requeued) and admit the job — its pods may sit in `Pending`
//! until the victims' pods are gone, which is fine since their nodes are pinned.
//! [`Outcome::Queued`]: write `queuePosition` and `pendingReason`
//! ([`PendingReason::code`] for the machine, `Display` for the tenant).
//!
//! # The rules
//! - **Order**: priority (higher first); within a priority, starving jobs first
//!   (longest waiting first), then fair share — the tenant with the lowest
//!   (GPU-hours used + GPUs admitted in this pass × [`Policy::pass_charge_hours`]) ÷
//!   weight goes next, with its oldest job — then age. Queue positions count per pool
//!   in that order.
//! - **Gang**: a job starts only when all its pods fit now, one pod per distinct
//!   schedulable node, inside one topology domain if packed, best-fit (the fullest
//!   nodes that still hold a pod, keeping whole nodes free for big gangs).
//! - **Quota** per pool: guaranteed GPUs always; beyond them a tenant borrows, up to
//!   its borrowing limit, from GPUs nobody is guaranteed and from others' idle
//!   guarantees up to their lending limits (see the `quota` module).
//! - **Power**: allocated GPUs × watts per GPU stays within the pool's cap.
//! - **Budget** and **residency** and **allowed priorities** refuse before anything
//!   else; running jobs are never touched for them.
//! - **Preemption**: a job may evict lower-priority jobs of its own tenant, and — if
//!   it stays within its tenant's guarantee — jobs of tenants above their own
//!   guarantee, lowest priority and youngest first; only the victims it needs (each
//!   one dropped again if the job fits without it), and none if it would not fit
//!   even then. Jobs admitted in the same pass are never victims.
//! - **Backfill without starvation**: a job that cannot start does not block smaller
//!   ones behind it. But once a job has waited [`Policy::starving_after`] ticks it is
//!   *starving*: it goes ahead of fair share within its priority, and the first
//!   starving job of a pool that cannot start makes the pool *hold* what it needs
//!   for the rest of the pass ([`Reservation`]): its GPUs count against its tenant's
//!   quota and, if only room stands in its way, against the power cap, and the nodes
//!   closest to holding it take no new work. Later jobs still backfill around the
//!   hold. Why it ends: nothing new of equal or lower priority lands on the held
//!   nodes, so as running jobs finish the held nodes only gain free GPUs; the held
//!   set is chosen deterministically (most of the gang's GPUs already free, ties to
//!   the lowest domain and node), so it changes only to a set at least as good, and
//!   a finite number of times at the same quality; so within a bounded number of
//!   job run times the job fits. Only an endless stream of *higher*-priority work,
//!   or lenders taking back their own guarantees, can delay it further — by design.
//!   The property test `tests/starvation.rs` checks the bound.
#![deny(missing_docs)]

mod decision;
mod engine;
mod fast_hash;
mod model;
mod placement;
mod queue;
mod quota;

pub use decision::{
    Admission, Decision, Decisions, Eviction, Outcome, PendingReason, PoolUsage, PreemptionReason,
    Reservation,
};
pub use engine::{Engine, admit};
pub use model::{Factory, GpuPool, Node, Policy, QueuedJob, Quota, RunningJob, Tenant};
