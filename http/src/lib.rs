//! The bounded HTTP/1.1 server that the broker's `/healthz`, `/readyz` and `/metrics` listener
//! and the api's public and internal listeners run on.
//!
//! [`serve`] bounds what a client can hold: a request's headers must arrive within
//! `header_read_timeout` of the connection opening or of the previous response (a client that
//! sends half a request, or nothing, is cut off then), and at most `max_connections` are open at
//! once (further ones wait in the listen backlog until one closes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// What one HTTP listener lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Seconds a client has to send a request's headers, from the connection's start or the end
    /// of the previous response; then the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Connections open at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl HttpLimits {
    /// The defaults: 10 s for the headers, at most `max_connections` connections.
    pub const fn with_max_connections(max_connections: usize) -> Self {
        HttpLimits {
            header_read_timeout_secs: 10,
            max_connections,
        }
    }

    /// Every problem with the values, each prefixed with `key`.
    pub fn problems(&self, key: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            problems.push(format!("{key}.header_read_timeout_secs must be 1..=300"));
        }
        if self.max_connections == 0 {
            problems.push(format!("{key}.max_connections must be at least 1"));
        }
        problems
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::with_max_connections(256)
    }
}

/// Serves `app` over HTTP/1.1 on `listener` within `limits` until `shutdown`, then lets the
/// connections finish their requests and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let header_timeout = Duration::from_secs(limits.header_read_timeout_secs);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        let (stream, remote): (_, SocketAddr) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "http accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%remote, error = %e, "http connection ended");
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}
