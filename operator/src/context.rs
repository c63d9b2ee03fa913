//! What every reconcile gets: the client, the event recorder, metrics, settings.
use crate::error::Error;
use crate::metrics::Metrics;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Shared state of the controllers.
pub struct Context {
    /// Client with the operator's identity.
    pub client: Client,
    /// Publishes Events on the objects the operator acts on.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// A context reporting Events as `aifactory-operator` from `instance`.
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: String) -> Arc<Self> {
        let reporter = Reporter {
            controller: crate::MANAGER.into(),
            instance: Some(instance),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
        })
    }

    /// Publishes an Event on `obj`. A failure to record is logged, never fatal:
    /// events inform, they do not decide.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(object = %obj.name_any(), %reason, error = %e, "recording an event failed");
        }
    }
}

/// The backoff of a controller's trigger streams (its own watch and those of its
/// children and related kinds, merged into one stream that kube sleeps on after
/// every error). kube's default, made for a single watch — 0.8 s doubling to 30 s,
/// plus up to as much again of jitter, and started over only after 120 s without
/// an error — compounds there: when the API server restarts, every watch of the
/// controller errs at once (connections reset, 403 until its RBAC caches are
/// filled, 429 until its watch caches are, 410 for the old resourceVersion), each
/// error adds a longer sleep, and while it sleeps no event of any watch is handled.
/// The chaos run (tests/src/chaos) saw a Tenant controller with ten watches deaf
/// for over three minutes after a 3 s restart. This one waits 0.25 s, doubling to
/// 2 s (ten errors in a row cost 16 s, not minutes; a watch that keeps failing is
/// retried every 2 s), and starts over at the first event that is not an error.
#[derive(Debug, Clone)]
pub struct TriggerBackoff {
    next: Duration,
}

impl TriggerBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(2);
}

impl Default for TriggerBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The current time as a Kubernetes timestamp.
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The error policy every controller shares: count the error, log it, retry with a
/// delay (the controller runtime adds backoff for repeated failures of one object).
/// An object the operator cannot act on (an invalid spec, a bug it triggered)
/// also gets a Warning Event saying why, for its owner to see in `kubectl
/// describe`; transient errors (API, cache) are only logged and counted.
pub fn on_error<K: Resource<DynamicType = ()>>(
    controller: &'static str,
    obj: &K,
    err: &Error,
    ctx: &Context,
) -> Action {
    ctx.metrics.error(controller, err.metric_label());
    tracing::warn!(controller, object = %obj.name_any(), error = %err, "reconcile failed");
    if matches!(err.cause(), Error::InvalidSpec(_) | Error::Panic(_)) {
        let event = Event {
            type_: EventType::Warning,
            reason: "ReconcileFailed".into(),
            note: Some(err.cause().to_string().chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let (recorder, reference) = (ctx.recorder.clone(), obj.object_ref(&()));
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "recording a failed reconcile failed");
            }
        });
    }
    match err.cause() {
        Error::InvalidSpec(_) => Action::requeue(Duration::from_secs(300)),
        // A cache fills within seconds of a (re)start.
        Error::Cache(..) => Action::requeue(Duration::from_secs(1)),
        // A bug: retried, but not so often that it floods the log.
        Error::Panic(_) => Action::requeue(Duration::from_secs(60)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Waits until the watch cache `store` (named `name`) is filled: an object not
/// seen yet in a cache still filling (a restart) is not an object gone.
pub async fn cache_ready<K>(
    name: &'static str,
    store: &kube::runtime::reflector::Store<K>,
) -> Result<(), Error>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .await
        .map_err(|e| Error::Cache(name, e.to_string()))
}

/// `reconcile` with its panics caught and returned as [`Error::Panic`] (logged
/// and counted by the error policy, retried a minute later): a bug that one
/// object triggers never unwinds through the controller, which would stop every
/// other object's reconcile and end the process.
pub fn unpanicked<K, C, F, Fut>(
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<C>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    F: Fn(Arc<K>, Arc<C>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    use futures::FutureExt;
    move |obj, ctx| {
        std::panic::AssertUnwindSafe(reconcile(obj, ctx))
            .catch_unwind()
            .map(|result| result.unwrap_or_else(|panic| Err(Error::Panic(panic_message(&panic)))))
            .boxed()
    }
}

/// The message a panic carried, if it was a string.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_reconcile_becomes_an_error_and_the_next_one_runs() {
        let mut reconcile = unpanicked(|n: Arc<i32>, _: Arc<()>| async move {
            if *n == 13 {
                panic!("object 13 is malformed");
            }
            Ok(Action::await_change())
        });
        let err = reconcile(Arc::new(13), Arc::new(())).await.unwrap_err();
        assert!(
            matches!(&err, Error::Panic(m) if m == "object 13 is malformed"),
            "{err}"
        );
        assert_eq!(err.metric_label(), "panic");
        assert!(reconcile(Arc::new(1), Arc::new(())).await.is_ok());
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::TriggerBackoff;
    use kube::runtime::utils::Backoff;
    use std::time::Duration;

    #[test]
    fn the_trigger_backoff_doubles_to_two_seconds_and_starts_over_after_an_event() {
        let mut b = TriggerBackoff::default();
        let waits: Vec<Duration> = b.by_ref().take(6).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 2000, 2000].map(Duration::from_millis)
        );
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }
}
