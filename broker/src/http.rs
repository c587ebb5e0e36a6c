//! The HTTP listener: `/healthz` (the process runs), `/readyz` (listeners bound and not
//! draining) and `/metrics` (Prometheus text format), served by [`serve`] (the `starling-http`
//! crate's bounded HTTP/1.1 server, which the api's two listeners run on too).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
pub use starling_http::{HttpLimits, serve};

use crate::metrics::Metrics;

/// What `/readyz` answers: ready once every listener is bound and every managed tenant has had
/// its state once (from the control plane or the data directory), not ready while draining or
/// while a replica (`[cluster]`) has lost its NATS connection.
#[derive(Debug, Default)]
pub struct Readiness {
    listening: AtomicBool,
    draining: AtomicBool,
    awaiting_state: AtomicUsize,
    cluster: std::sync::OnceLock<Arc<crate::cluster::link::Link>>,
}

impl Readiness {
    /// Whether the broker should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.awaiting_state.load(Ordering::Acquire) == 0
            && self.cluster.get().is_none_or(|l| l.is_connected())
    }

    /// Ready only while `link` is connected to NATS.
    pub fn follow_cluster(&self, link: Arc<crate::cluster::link::Link>) {
        let _ = self.cluster.set(link);
    }

    /// Every listener is bound.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// Shutdown began.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `n` more tenants must get their state before the broker is ready.
    pub fn await_state(&self, n: usize) {
        self.awaiting_state.fetch_add(n, Ordering::AcqRel);
    }

    /// One awaited tenant got its state (call once per tenant).
    pub fn state_arrived(&self) {
        let _ = self
            .awaiting_state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// What the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Readiness.
    pub ready: Arc<Readiness>,
    /// The metrics to expose.
    pub metrics: Arc<Metrics>,
}

/// The HTTP routes.
pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
