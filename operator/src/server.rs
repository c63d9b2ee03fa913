//! HTTP endpoints for the kubelet and Prometheus: `/healthz` (the process
//! serves), `/readyz` (CRDs are established and this replica leads or stands by
//! ready to), `/metrics`.
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness flags shared with the controllers.
#[derive(Default)]
pub struct Health {
    /// Set once the CRDs are established and the watches are started.
    pub ready: AtomicBool,
    /// Whether this replica holds the leader Lease.
    pub leader: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves the endpoints on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let leader = state.health.leader.load(Ordering::Relaxed);
    if state.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ready (leader: {leader})"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for CRDs or leadership".into(),
        )
    }
}

async fn metrics_text(
    State(state): State<AppState>,
) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
