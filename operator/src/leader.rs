//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one writes. Written here rather than taken from a crate because
//! the election crates on crates.io pin older kube versions; the protocol is the
//! one client-go's `leaderelection` uses: optimistic-concurrency updates of one
//! Lease object, and time counted only on each replica's own monotonic clock.
//!
//! Why two replicas never both write, whatever their wall clocks say:
//! - a standby counts the lease's duration from when *it* last saw the record
//!   change (never from the holder's `renewTime`), so it takes over no sooner than
//!   `lease_duration` after the holder's last renewal reached the API server;
//! - the leader writes only through its [`Fence`], valid until `renew_deadline`
//!   after the *start* of its last successful renewal, and `renew_deadline` is well
//!   below `lease_duration`: it stops writing (and its in-flight writes land) before
//!   any standby may take over. Only the clocks' rates matter, not their offsets.
//! - once the fence has lapsed it never opens again: the process exits and starts
//!   over as a standby, since its caches and decisions predate a possible successor.
use crate::fence::Fence;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use std::time::Duration;
use tokio::time::Instant;

/// How long a lease lasts and how the leader keeps it (client-go's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a standby waits, after it last saw the Lease record change, before
    /// it takes the lease.
    pub lease_duration: Duration,
    /// How long after the start of its last successful renewal the leader may still
    /// write; below `lease_duration`, the difference being the margin for writes in
    /// flight.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby looks at the lease.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            // A standby takes over at most lease + retry = 15 s after the
            // leader's last renewal (the factory's failover goal). The renew
            // deadline stays client-go's 10 s: on a loaded 2-core machine an 8 s
            // one made leaders step down during the test suite.
            lease_duration: Duration::from_secs(13),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checks the ordering the safety argument rests on:
    /// retry period < renew deadline < lease duration.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("the retry period must be above zero".into());
        }
        if self.renew_deadline <= self.retry_period {
            return Err(format!(
                "the renew deadline ({:?}) must exceed the retry period ({:?}), or one failed renewal loses the lease",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the lease duration ({:?}) must exceed the renew deadline ({:?}), or a standby may take over while the leader still writes",
                self.lease_duration, self.renew_deadline
            ));
        }
        Ok(())
    }

    /// The longest one attempt to take or renew the lease may take: a request that
    /// hangs must not use up the whole renew deadline, so a retry on a fresh
    /// connection still fits.
    fn attempt_timeout(&self) -> Duration {
        self.retry_period * 2
    }
}

/// The Lease record as this replica last saw it change, on this replica's clock.
#[derive(Debug, Default)]
struct Observed {
    version: Option<String>,
    since: Option<Instant>,
}

impl Observed {
    /// Notes the record in `version` seen at `now`; returns since when it has been
    /// unchanged. The clock restarts whenever the record changed, and on the first
    /// look: a replica that just started waits a whole lease duration.
    fn see(&mut self, version: Option<&str>, now: Instant) -> Instant {
        match self.since {
            Some(since) if self.version.as_deref() == version => since,
            _ => {
                self.version = version.map(str::to_string);
                self.since = Some(now);
                now
            }
        }
    }
}

/// Whether `identity` may take (or renew) the lease in `spec`, whose record has
/// been unchanged since `unchanged_since`, at `now` — both on our own clock. The
/// holder's `renewTime` is not consulted: it is the holder's wall clock.
fn may_take(
    spec: Option<&LeaseSpec>,
    identity: &str,
    unchanged_since: Instant,
    now: Instant,
    timing: &Timing,
) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => {
            // The holder's own duration, when it declares a longer one than ours:
            // its fence is set by its settings, not ours.
            let declared = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or_default();
            now.saturating_duration_since(unchanged_since) >= declared.max(timing.lease_duration)
        }
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    /// Another replica holds the lease now.
    #[error("another replica took the leader lease")]
    TakenOver,
    /// No renewal succeeded within the renew deadline (API server unreachable, or
    /// this process was paused).
    #[error("the leader lease was not renewed within the renew deadline")]
    DeadlinePassed,
}

/// Settings of an election.
#[derive(Clone, Debug)]
pub struct Election {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Lease duration, renew deadline, retry period.
    pub timing: Timing,
}

impl Election {
    fn api(&self, client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        // Wall-clock times, for people and tools reading the Lease; the election
        // itself never compares them with another clock.
        let now = jiff::Timestamp::now();
        let taking_over =
            previous.and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs() as i32),
            acquire_time: if taking_over {
                Some(MicroTime(now))
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if taking_over && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the lease. `Ok(true)`: we hold it.
    async fn try_acquire_or_renew(
        &self,
        client: &Client,
        observed: &mut Observed,
    ) -> kube::Result<bool> {
        let api = self.api(client);
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    observed.see(created.resource_version().as_deref(), Instant::now());
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        // Seen now, after the read returned: the later, the longer we wait.
        let now = Instant::now();
        let since = observed.see(lease.resource_version().as_deref(), now);
        if !may_take(
            lease.spec.as_ref(),
            &self.identity,
            since,
            now,
            &self.timing,
        ) {
            return Ok(false);
        }
        lease.spec = Some(self.spec(lease.spec.as_ref()));
        // replace carries the resourceVersion we read: a concurrent writer makes
        // this fail with 409 instead of both believing they lead.
        match api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(replaced) => {
                observed.see(replaced.resource_version().as_deref(), Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One bounded attempt; on success the fence opens (or stays open) until the
    /// renew deadline counted from `started`, taken before the request went out.
    async fn attempt(&self, client: &Client, fence: &Fence, observed: &mut Observed) -> Attempt {
        let started = Instant::now();
        let mut deadline = started + self.timing.attempt_timeout();
        if let Some(until) = fence.open_until() {
            deadline = deadline.min(until);
        }
        match tokio::time::timeout_at(deadline, self.try_acquire_or_renew(client, observed)).await {
            Ok(Ok(true)) => {
                fence.renewed(started, self.timing.renew_deadline, Instant::now());
                Attempt::Holding
            }
            Ok(Ok(false)) => Attempt::HeldByAnother,
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %e, "leader election request failed");
                Attempt::Failed
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, timeout = ?deadline - started, "leader election request timed out");
                Attempt::Failed
            }
        }
    }

    /// Waits until this replica leads; the fence is then open.
    pub async fn acquire(&self, client: &Client, fence: &Fence) {
        let mut observed = Observed::default();
        let mut logged = false;
        loop {
            match self.attempt(client, fence, &mut observed).await {
                Attempt::Holding if fence.open_until().is_some() => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Attempt::HeldByAnother if !logged => {
                    tracing::info!(lease = %self.name, "another replica leads; standing by");
                    logged = true;
                }
                _ => {}
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the lease every retry period while this replica leads; returns when
    /// it does not any more. The fence is closed by then (its deadline passed, or
    /// it is shut here when another replica took over).
    pub async fn hold(&self, client: &Client, fence: &Fence) -> Lost {
        let mut observed = Observed::default();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            // Checked before trying: a process resumed after a pause past its
            // deadline must not win the lease back with caches from before it.
            if fence.open_until().is_none() {
                fence.shut();
                tracing::error!(lease = %self.name, "could not renew the leader lease within the renew deadline; no more writes");
                return Lost::DeadlinePassed;
            }
            if let Attempt::HeldByAnother = self.attempt(client, fence, &mut observed).await {
                fence.shut();
                tracing::error!(lease = %self.name, "another replica took the leader lease; no more writes");
                return Lost::TakenOver;
            }
        }
    }

    /// Gives the lease up on shutdown so a standby takes over at once. The caller
    /// shuts the fence first: nothing may be written once the lease is free.
    pub async fn release(&self, client: &Client) {
        let api = self.api(client);
        if let Ok(Some(mut lease)) = api.get_opt(&self.name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
            }
            let _ = api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }
}

/// What one attempt found.
enum Attempt {
    Holding,
    HeldByAnother,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: jiff::Timestamp, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The timing the cases below are written for (client-go's defaults).
    fn timing_15() -> Timing {
        Timing {
            lease_duration: secs(15),
            renew_deadline: secs(10),
            retry_period: secs(2),
        }
    }

    #[test]
    fn the_default_timing_is_safe_and_fails_over_within_15_s() {
        let timing = Timing::default();
        assert_eq!(timing.validate(), Ok(()));
        assert!(timing.attempt_timeout() < timing.renew_deadline);
        assert!(timing.lease_duration + timing.retry_period <= secs(15));
    }

    #[test]
    fn client_go_defaults_keep_the_renew_deadline_below_the_lease_duration() {
        let timing = timing_15();
        assert_eq!(timing.validate(), Ok(()));
        assert!(timing.attempt_timeout() < timing.renew_deadline);
        let unsafe_timing = Timing {
            renew_deadline: secs(15),
            ..timing
        };
        assert!(unsafe_timing.validate().is_err());
        let brittle = Timing {
            retry_period: secs(10),
            ..timing
        };
        assert!(brittle.validate().is_err());
    }

    #[test]
    fn a_standby_waits_a_whole_lease_duration_from_its_first_look() {
        let t0 = Instant::now();
        let timing = timing_15();
        let spec = held_by("a", jiff::Timestamp::now(), 15);
        let mut seen = Observed::default();
        let since = seen.see(Some("7"), t0);
        assert!(!may_take(Some(&spec), "b", since, t0, &timing));
        assert!(!may_take(Some(&spec), "b", since, t0 + secs(14), &timing));
        assert!(may_take(Some(&spec), "b", since, t0 + secs(15), &timing));
    }

    #[test]
    fn a_renewal_restarts_the_standbys_count() {
        let t0 = Instant::now();
        let timing = timing_15();
        let spec = held_by("a", jiff::Timestamp::now(), 15);
        let mut seen = Observed::default();
        seen.see(Some("7"), t0);
        // Unchanged at 10 s; renewed (version 8) seen at 12 s; unchanged after.
        assert_eq!(seen.see(Some("7"), t0 + secs(10)), t0);
        let since = seen.see(Some("8"), t0 + secs(12));
        assert_eq!(since, t0 + secs(12));
        assert_eq!(seen.see(Some("8"), t0 + secs(20)), since);
        assert!(!may_take(Some(&spec), "b", since, t0 + secs(20), &timing));
        assert!(may_take(Some(&spec), "b", since, t0 + secs(27), &timing));
    }

    #[test]
    fn clock_skew_between_replicas_does_not_shorten_the_wait() {
        // The holder's clock is an hour behind (its renewTime looks long expired)
        // or an hour ahead: the standby waits the same 15 s of its own clock.
        let t0 = Instant::now();
        let timing = timing_15();
        let now = jiff::Timestamp::now();
        for skew in [-3600, 3600] {
            let renewed = now
                .checked_add(jiff::SignedDuration::from_secs(skew))
                .unwrap();
            let spec = held_by("a", renewed, 15);
            let mut seen = Observed::default();
            let since = seen.see(Some("7"), t0);
            assert!(
                !may_take(Some(&spec), "b", since, t0 + secs(1), &timing),
                "skew {skew}"
            );
            assert!(
                may_take(Some(&spec), "b", since, t0 + secs(15), &timing),
                "skew {skew}"
            );
        }
    }

    #[test]
    fn a_holder_declaring_a_longer_lease_is_given_it_and_a_shorter_one_is_not() {
        let t0 = Instant::now();
        let timing = timing_15();
        let long = held_by("a", jiff::Timestamp::now(), 60);
        assert!(!may_take(Some(&long), "b", t0, t0 + secs(30), &timing));
        assert!(may_take(Some(&long), "b", t0, t0 + secs(60), &timing));
        let short = held_by("a", jiff::Timestamp::now(), 1);
        assert!(!may_take(Some(&short), "b", t0, t0 + secs(5), &timing));
    }

    #[test]
    fn a_free_or_own_lease_is_taken_at_once() {
        let t0 = Instant::now();
        let timing = timing_15();
        assert!(may_take(None, "b", t0, t0, &timing));
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("", jiff::Timestamp::now(), 15)
        };
        assert!(may_take(Some(&released), "b", t0, t0, &timing));
        assert!(may_take(
            Some(&held_by("", jiff::Timestamp::now(), 15)),
            "b",
            t0,
            t0,
            &timing
        ));
        assert!(may_take(
            Some(&held_by("b", jiff::Timestamp::now(), 15)),
            "b",
            t0,
            t0,
            &timing
        ));
    }

    #[test]
    fn the_standby_takes_over_only_after_the_leaders_fence_closed() {
        // The leader starts a renewal at 0 s; the API server writes it at 0.3 s; the
        // standby sees it on its next look at 1.9 s. The leader then freezes.
        let t0 = Instant::now();
        let timing = timing_15();
        let fence = Fence::default();
        fence.renewed(t0, timing.renew_deadline, t0 + Duration::from_millis(300));
        let mut seen = Observed::default();
        let since = seen.see(Some("8"), t0 + Duration::from_millis(1900));
        let spec = held_by("a", jiff::Timestamp::now(), 15);
        let takeover = (0..40)
            .map(|tenth| since + Duration::from_millis(500 * tenth))
            .find(|&at| may_take(Some(&spec), "b", since, at, &timing))
            .unwrap();
        let closed = fence.open_until_at(t0).unwrap();
        assert!(
            closed + (timing.lease_duration - timing.renew_deadline) <= takeover,
            "the leader writes until {:?}, the standby leads from {:?}",
            closed - t0,
            takeover - t0
        );
    }
}
