//! Prometheus metrics of the operator: reconciles, their errors and durations, per
//! controller.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The kind the controller reconciles (`gpupool`, `tenant`, …).
    pub controller: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind the controller reconciles.
    pub controller: String,
    /// [`crate::error::Error::metric_label`].
    pub reason: String,
}

/// Labels of a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The GpuPool.
    pub pool: String,
}

/// Labels of a tenant's use of a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantPoolLabels {
    /// The Tenant.
    pub tenant: String,
    /// The GpuPool.
    pub pool: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What the factory does, per tenant and pool, for dashboards and alerts.
pub struct FactoryMetrics {
    /// Jobs admitted.
    pub admissions: Family<TenantPoolLabels, Counter>,
    /// Running jobs preempted (labelled with the victim's tenant).
    pub preemptions: Family<TenantPoolLabels, Counter>,
    /// Seconds from entering the queue to admission.
    pub admission_wait: Family<PoolLabels, Histogram>,
    /// Jobs waiting, after the last admission pass.
    pub queue_length: Family<PoolLabels, Gauge>,
    /// GPUs a tenant's running work holds.
    pub gpus_in_use: Family<TenantPoolLabels, Gauge>,
    /// GPUs guaranteed to a tenant.
    pub gpus_guaranteed: Family<TenantPoolLabels, Gauge>,
    /// GPU-hours used in the current accounting period (month, UTC).
    pub gpu_hours: Family<TenantPoolLabels, FloatGauge>,
    /// Energy used in the current accounting period, kWh.
    pub energy_kwh: Family<TenantPoolLabels, FloatGauge>,
}

/// The operator's metrics, registered once and shared by every controller.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    /// Admission and usage metrics.
    pub factory: FactoryMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aifactory");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "reconcile",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile took, by controller",
            duration.clone(),
        );
        let factory = FactoryMetrics {
            admissions: Family::default(),
            preemptions: Family::default(),
            // 1 s to about 9 h.
            admission_wait: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 16))
            }),
            queue_length: Family::default(),
            gpus_in_use: Family::default(),
            gpus_guaranteed: Family::default(),
            gpu_hours: Family::default(),
            energy_kwh: Family::default(),
        };
        registry.register(
            "admissions",
            "Training jobs admitted, by tenant and pool",
            factory.admissions.clone(),
        );
        registry.register(
            "preemptions",
            "Running jobs preempted, by the victim's tenant and pool",
            factory.preemptions.clone(),
        );
        registry.register(
            "admission_wait_seconds",
            "Time from entering the queue to admission, by pool",
            factory.admission_wait.clone(),
        );
        registry.register(
            "queue_length",
            "Training jobs waiting after the last admission pass, by pool",
            factory.queue_length.clone(),
        );
        registry.register(
            "tenant_gpus_in_use",
            "GPUs held by a tenant's running jobs",
            factory.gpus_in_use.clone(),
        );
        registry.register(
            "tenant_gpus_guaranteed",
            "GPUs guaranteed to a tenant by its quota",
            factory.gpus_guaranteed.clone(),
        );
        registry.register(
            "tenant_period_gpu_hours",
            "GPU-hours used this accounting period (month, UTC)",
            factory.gpu_hours.clone(),
        );
        registry.register(
            "tenant_period_energy_kwh",
            "Energy used this accounting period (month, UTC), kWh",
            factory.energy_kwh.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            factory,
        }
    }
}

impl Metrics {
    /// Counts a reconcile of `controller` and times it until the guard drops.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.duration.get_or_create(&labels).clone(),
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, controller: &str, reason: String) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                reason,
            })
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
