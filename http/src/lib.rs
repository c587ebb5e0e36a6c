//! The bounded HTTP/1.1 server that the broker's `/healthz`, `/readyz` and `/metrics` listener
//! and the api's public and internal listeners run on.
//!
//! [`serve`] bounds what a client can hold: a request's headers must arrive within
//! `header_read_timeout` of the connection opening or of the previous response (a client that
//! sends half a request, or nothing, is cut off then), a request's body must have arrived within
//! `body_read_timeout` of its headers (a client that trickles a body byte by byte gets an error
//! from the handler reading it, and the connection closes), and at most `max_connections` are
//! open at once (further ones wait in the listen backlog until one closes).

#[cfg(feature = "testing")]
pub mod testing;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
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
    /// Seconds a request's body has to arrive, from the end of its headers; a handler reading it
    /// later gets an error (the api answers 400) and the connection closes.
    pub body_read_timeout_secs: u64,
    /// Connections open at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl HttpLimits {
    /// The defaults: 10 s for the headers, 30 s for a body, at most `max_connections`
    /// connections.
    pub const fn with_max_connections(max_connections: usize) -> Self {
        HttpLimits {
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_connections,
        }
    }

    /// Every problem with the values, each prefixed with `key`.
    pub fn problems(&self, key: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            problems.push(format!("{key}.header_read_timeout_secs must be 1..=300"));
        }
        if !(1..=3600).contains(&self.body_read_timeout_secs) {
            problems.push(format!("{key}.body_read_timeout_secs must be 1..=3600"));
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
    let body_timeout = Duration::from_secs(limits.body_read_timeout_secs);
    let app = app.layer(axum::middleware::map_request(move |req: Request| {
        std::future::ready(with_body_deadline(req, body_timeout))
    }));
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
        // The peer's address, for handlers that take `ConnectInfo<SocketAddr>`.
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(remote))),
        );
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

/// Gives `req`'s body, if it has one, until `timeout` from now to arrive.
fn with_body_deadline(req: Request, timeout: Duration) -> Request {
    if http_body::Body::is_end_stream(req.body()) {
        return req;
    }
    req.map(|inner| {
        Body::new(Deadline {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        })
    })
}

/// A request body that fails once its deadline passes before its end.
struct Deadline {
    inner: Body,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

/// The error a [`Deadline`] body ends with.
#[derive(Debug)]
struct BodyTimedOut(Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s of its headers",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
