//! Errors of a reconcile, each with a short label for metrics.
use thiserror::Error;

/// What can go wrong while reconciling.
#[derive(Debug, Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing a finalizer failed.
    #[error("finalizer: {0}")]
    // Boxed: the finalizer error wraps this type itself.
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The object's spec cannot be acted on; reported as a condition, not retried fast.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A watch cache the reconcile reads is not filled yet (a restart, a broken
    /// watch): nothing is wrong with the object, so it is retried soon.
    #[error("cache of {0} not ready: {1}")]
    Cache(&'static str, String),
    /// The reconcile panicked (a bug): caught, so one object never takes the
    /// process and every other object's reconcile down.
    #[error("reconcile panicked: {0}")]
    Panic(String),
}

impl Error {
    /// The error a reconcile step failed with, out of the finalizer's wrapping
    /// (the apply or cleanup inside it), so that the policy and the metric see
    /// an invalid spec or a cache not ready as such.
    pub fn cause(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.cause(),
                _ => self,
            },
            _ => self,
        }
    }

    /// A short, bounded label for the `reason` of the error metric.
    pub fn metric_label(&self) -> String {
        match self.cause() {
            Error::Kube(kube::Error::Api(status)) => format!("api_{}", status.code),
            Error::Kube(_) => "kube".into(),
            Error::Finalizer(_) => "finalizer".into(),
            Error::Serialization(_) => "serialization".into(),
            Error::InvalidSpec(_) => "invalid_spec".into(),
            Error::Cache(..) => "cache_not_ready".into(),
            Error::Panic(_) => "panic".into(),
        }
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    #[test]
    fn an_error_inside_the_finalizer_is_seen_as_itself() {
        let wrapped = Error::Finalizer(Box::new(F::ApplyFailed(Error::Cache("pools", "x".into()))));
        assert_eq!(wrapped.metric_label(), "cache_not_ready");
        assert!(matches!(wrapped.cause(), Error::Cache("pools", _)));
        let cleanup = Error::Finalizer(Box::new(F::CleanupFailed(Error::InvalidSpec("y".into()))));
        assert_eq!(cleanup.metric_label(), "invalid_spec");
        let other = Error::Finalizer(Box::new(F::UnnamedObject));
        assert_eq!(other.metric_label(), "finalizer");
    }
}
