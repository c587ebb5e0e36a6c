//! The HTTP listener: `/healthz` (the process runs), `/readyz` (listeners bound and not
//! draining), `/metrics` (Prometheus text format) and `/drain` (the graceful shutdown, for a
//! Kubernetes preStop hook), served by [`serve`] (the `starling-http` crate's bounded HTTP/1.1
//! server, which the api's two listeners run on too).
//!
//! `/drain` answers `GET` as well as `POST`, and only to a peer on the broker's own host
//! (loopback; anyone else gets 403): it stops the broker, and the listener it shares with
//! `/metrics` is reached by whoever scrapes them. `starling-broker drain` (the operator's preStop
//! hook, run inside the pod) calls it over loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
pub use starling_http::{HttpLimits, serve};

use crate::metrics::Metrics;

/// What `/readyz` answers: ready once every listener is bound and every managed tenant has had
/// its state once (from the control plane or the data directory), not ready while draining or
/// while a replica (`[cluster]`) has lost its NATS connection, has a tenant whose JetStream
/// stream is not set up (its QoS 1/2 publications would be refused) or has not read its
/// tenants' retained messages from JetStream yet.
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
            && self
                .cluster
                .get()
                .is_none_or(|l| l.is_connected() && l.streams_ready() && l.is_loaded())
    }

    /// The link to the other replicas, with a cluster.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::link::Link>> {
        self.cluster.get()
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
    /// The graceful shutdown `/drain` starts.
    pub drain: Arc<crate::server::Drain>,
}

/// The HTTP routes.
pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/drain", get(drain).post(drain))
        .with_state(state)
}

/// Longer than a drain can take besides its deadline (the store's last write).
const DRAIN_ANSWER_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the graceful shutdown (or joins the one running) and answers once it has ended: 200
/// when drained, 503 when it still runs after its deadline and some slack (it carries on); 403
/// to a peer that is not on the broker's own host.
async fn drain(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
) -> impl IntoResponse {
    let peer = extensions.get::<ConnectInfo<SocketAddr>>();
    if !peer.is_some_and(|ConnectInfo(addr)| addr.ip().to_canonical().is_loopback()) {
        return (
            StatusCode::FORBIDDEN,
            "/drain is accepted only from the broker's own host (loopback): run `starling-broker drain` there\n",
        );
    }
    state.drain.start();
    let bound = state.drain.deadline() + DRAIN_ANSWER_SLACK;
    match tokio::time::timeout(bound, state.drain.finished()).await {
        Ok(()) => (StatusCode::OK, "drained\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "still draining\n"),
    }
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower_service::Service as _;

    use super::*;

    /// `/drain` stops the broker, so a peer that is not on its host (or one the server did not
    /// name) is refused with 403 and nothing starts; a loopback peer, IPv4-mapped included,
    /// drains it.
    #[tokio::test]
    async fn drain_answers_only_a_peer_on_the_brokers_own_host() {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let ready = Arc::new(Readiness::default());
            let drain = crate::server::Drain::for_tests(ready.clone());
            let mut app = app(HttpState {
                ready,
                metrics: Arc::new(Metrics::default()),
                drain: drain.clone(),
            });
            let call = |peer: Option<&str>| {
                let mut req = Request::get("/drain").body(Body::empty()).unwrap();
                if let Some(p) = peer {
                    req.extensions_mut()
                        .insert(ConnectInfo(p.parse::<SocketAddr>().unwrap()));
                }
                req
            };
            for peer in [Some("10.1.2.3:5555"), Some("[2001:db8::1]:5555"), None] {
                let answer = app.call(call(peer)).await.unwrap();
                assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{peer:?}");
                assert!(!drain.has_started(), "{peer:?} started the shutdown");
            }
            let answer = app
                .call(call(Some("[::ffff:127.0.0.1]:5555")))
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            assert!(drain.has_started());
        })
        .await
        .expect("within 10 s");
    }
}
