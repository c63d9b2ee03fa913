//! The fence: the one place where the operator's writes are stopped once this
//! replica may no longer lead. Every controller and the admission pass write
//! through a client built by [`fenced_client`], which refuses each mutating request
//! unless the fence is open at the moment the request is handed to the connection
//! (retries included); the leader election ([`crate::leader`]) opens it and keeps
//! it open, on its own, unfenced client.
//!
//! Time is this process's monotonic clock (`CLOCK_MONOTONIC`), which runs on while
//! the process is paused (SIGSTOP, a stalled VM): a leader resumed after its
//! deadline finds the fence closed before any write it had queued goes out.
use http::Request;
use kube::client::{Body, ClientBuilder, retry::RetryPolicy};
use kube::{Client, Config};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::buffer::BufferLayer;
use tower::filter::FilterLayer;
use tower::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use tower::retry::RetryLayer;

/// Whether, and until when, this replica may write.
#[derive(Debug, Default)]
pub struct Fence {
    state: Mutex<State>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Not leading yet: nothing is written.
    #[default]
    Standby,
    /// Leading: writes may go out until then.
    Until(Instant),
    /// Led and stopped (deadline passed, lease lost or released): shut for good,
    /// since what this process knows predates whoever leads now.
    Shut,
}

/// The error a refused write fails with.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused to {method} {path}: this replica does not hold the leader lease (any more); only the leader writes"
)]
pub struct NotLeader {
    method: http::Method,
    path: String,
}

impl Fence {
    /// A closed fence, to be opened by the election.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value, valid even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A renewal (or acquisition) of the lease that was sent at `started` succeeded,
    /// seen at `now`: writes may go on until `started + renew_deadline`. A leader
    /// whose fence had lapsed before the renewal was sent stays shut: there was a
    /// gap in which another replica may have led.
    pub fn renewed(&self, started: Instant, renew_deadline: Duration, now: Instant) {
        let until = started + renew_deadline;
        let mut state = self.state();
        *state = match *state {
            State::Shut => State::Shut,
            State::Until(previous) if previous <= started || now >= until => State::Shut,
            State::Until(previous) => State::Until(previous.max(until)),
            // An acquisition that took longer than the deadline: the next attempt
            // (on a lease that is ours now) opens it.
            State::Standby if now >= until => State::Standby,
            State::Standby => State::Until(until),
        };
    }

    /// Until when writes may go out, at `now`; `None` when they may not. The first
    /// look past the deadline shuts the fence for good.
    pub fn open_until_at(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state();
        match *state {
            State::Until(until) if now < until => Some(until),
            State::Until(_) => {
                *state = State::Shut;
                None
            }
            State::Standby | State::Shut => None,
        }
    }

    /// [`Fence::open_until_at`] now.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until_at(Instant::now())
    }

    /// Stops every write from now on (leadership lost or given up).
    pub fn shut(&self) {
        *self.state() = State::Shut;
    }

    /// Lets `request` through if it only reads, or if this replica leads at `now`.
    pub fn check<B>(&self, request: Request<B>, now: Instant) -> Result<Request<B>, NotLeader> {
        // GET, HEAD, OPTIONS: reads (watches included) go on while standing by.
        if request.method().is_safe() || self.open_until_at(now).is_some() {
            return Ok(request);
        }
        Err(NotLeader {
            method: request.method().clone(),
            path: request.uri().path().to_string(),
        })
    }
}

/// How hard the operator may press the API server, which the whole factory shares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Requests per second, sustained.
    pub qps: u32,
    /// Requests that may go at once above that rate.
    pub burst: u32,
    /// Requests in flight at once (a watch counts until its response starts).
    pub in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            qps: 100,
            burst: 200,
            in_flight: 64,
        }
    }
}

impl Limits {
    /// The window of the rate limiter: `burst` requests per window is `qps` a second.
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst.max(1)) / f64::from(self.qps.max(1)))
    }
}

/// A client like `Client::try_from(config)` whose writes pass `fence`, rate- and
/// concurrency-limited by `limits`. kube's own retries (429, 503, 504, after a
/// backoff) are moved above the fence, so each attempt is checked when it is
/// sent, not when it was first made; the limiters are above the fence too, so a
/// write that waited for its turn is checked after the wait.
pub fn fenced_client(
    mut config: Config,
    fence: Arc<Fence>,
    limits: Limits,
) -> kube::Result<Client> {
    let retry = std::mem::replace(&mut config.default_retry, false);
    let fenced = ClientBuilder::try_from(config)?
        .with_layer(&FilterLayer::new(move |request: Request<Body>| {
            fence.check(request, Instant::now())
        }))
        .with_layer(&ConcurrencyLimitLayer::new(limits.in_flight.max(1)))
        .with_layer(&RateLimitLayer::new(
            u64::from(limits.burst.max(1)),
            limits.window(),
        ))
        // The retry layer needs a service it can clone, the rate limiter one that
        // is driven to readiness before each call; the buffer is both.
        .with_layer(&BufferLayer::new(1024));
    Ok(if retry {
        fenced
            .with_layer(&RetryLayer::new(RetryPolicy::server_retry()))
            .build()
    } else {
        fenced.build()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/apis/aifactory.dev/v1alpha1/namespaces/acme/trainingjobs/llm/status")
            .body(())
            .unwrap()
    }

    const WRITES: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

    #[test]
    fn the_default_limits_allow_a_burst_of_200_and_100_a_second() {
        let l = Limits::default();
        assert_eq!((l.qps, l.burst), (100, 200));
        assert_eq!(l.window(), Duration::from_secs(2));
    }
    const DEADLINE: Duration = Duration::from_secs(10);

    #[test]
    fn a_standby_reads_and_writes_nothing() {
        let fence = Fence::default();
        let now = Instant::now();
        assert!(fence.check(request("GET"), now).is_ok());
        for method in WRITES {
            let refused = fence.check(request(method), now).unwrap_err();
            assert!(
                refused
                    .to_string()
                    .contains(&format!("refused to {method} /apis"))
            );
        }
    }

    #[test]
    fn a_leader_writes_until_the_renew_deadline_counted_from_before_the_request() {
        let fence = Fence::default();
        let sent = Instant::now();
        // The acquisition took 3 s to answer: 7 s of writing are left, not 10.
        fence.renewed(sent, DEADLINE, sent + Duration::from_secs(3));
        for method in WRITES {
            assert!(
                fence
                    .check(request(method), sent + Duration::from_secs(9))
                    .is_ok()
            );
        }
        assert!(fence.check(request("PATCH"), sent + DEADLINE).is_err());
        assert!(fence.check(request("GET"), sent + DEADLINE).is_ok());
    }

    #[test]
    fn renewals_in_time_keep_the_fence_open() {
        let fence = Fence::default();
        let t0 = Instant::now();
        fence.renewed(t0, DEADLINE, t0);
        for i in 1..=10 {
            let sent = t0 + Duration::from_secs(2 * i);
            fence.renewed(sent, DEADLINE, sent + Duration::from_millis(20));
        }
        assert_eq!(
            fence.open_until_at(t0 + Duration::from_secs(29)),
            Some(t0 + Duration::from_secs(30))
        );
    }

    #[test]
    fn a_leader_paused_past_its_deadline_never_writes_again() {
        // Renewed at 0 s, frozen (SIGSTOP) for 25 s: the monotonic clock ran on.
        let fence = Fence::default();
        let t0 = Instant::now();
        fence.renewed(t0, DEADLINE, t0);
        let resumed = t0 + Duration::from_secs(25);
        assert!(fence.check(request("PUT"), resumed).is_err());
        // Even winning the lease back (no standby took it) does not reopen it.
        fence.renewed(resumed, DEADLINE, resumed + Duration::from_millis(5));
        assert!(
            fence
                .check(request("PUT"), resumed + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn a_renewal_sent_before_a_pause_and_answered_after_it_does_not_count() {
        // The renewal went out at 8 s, the process froze until 30 s, then the
        // answer (success: no standby) was read.
        let fence = Fence::default();
        let t0 = Instant::now();
        fence.renewed(t0, DEADLINE, t0);
        let sent = t0 + Duration::from_secs(8);
        fence.renewed(sent, DEADLINE, t0 + Duration::from_secs(30));
        assert_eq!(fence.open_until_at(t0 + Duration::from_secs(30)), None);
    }

    #[test]
    fn a_gap_between_renewals_shuts_the_fence_even_if_not_yet_looked_at() {
        let fence = Fence::default();
        let t0 = Instant::now();
        fence.renewed(t0, DEADLINE, t0);
        // Nothing checked the fence between 10 s and 12 s; the renewal sent at 12 s
        // must not bridge the gap.
        let sent = t0 + Duration::from_secs(12);
        fence.renewed(sent, DEADLINE, sent);
        assert_eq!(fence.open_until_at(sent + Duration::from_secs(1)), None);
    }

    #[test]
    fn shut_is_for_good() {
        let fence = Fence::default();
        let t0 = Instant::now();
        fence.renewed(t0, DEADLINE, t0);
        fence.shut();
        assert!(fence.check(request("POST"), t0).is_err());
        fence.renewed(
            t0 + Duration::from_secs(1),
            DEADLINE,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(fence.open_until_at(t0 + Duration::from_secs(2)), None);
    }
}
