//! Prometheus metrics of the api, served on the internal listener at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The labels of a request. Every value comes from a fixed set, never from the request itself:
/// a client choosing label values could grow `/metrics` without bound.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The method, or `OTHER` for any method the api does not route ([`method_label`]).
    pub method: &'static str,
    /// The status the api answered with.
    pub status: u16,
}

/// The label of a request's method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// See [`method_label`].
    pub method: &'static str,
}

/// The label of an HTTP method: the standard methods by name, every other one `OTHER`.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The api's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by method.
    pub latency: Family<MethodLabels, Histogram>,
    /// Tokens issued.
    pub tokens_issued: Counter,
    /// Long-polls waiting now.
    pub long_polls: Gauge,
}

impl Metrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let tokens_issued = Counter::default();
        let long_polls = Gauge::default();
        registry.register(
            "starling_api_requests",
            "HTTP requests by method and status",
            requests.clone(),
        );
        registry.register(
            "starling_api_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "starling_api_tokens_issued",
            "Client tokens issued",
            tokens_issued.clone(),
        );
        registry.register(
            "starling_api_long_polls",
            "Internal state long-polls waiting",
            long_polls.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            tokens_issued,
            long_polls,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
