//! Both api listeners (public REST, internal state feed and metrics) bound what a client can
//! hold: a client that sends half a request, or nothing, is cut off after
//! `header_read_timeout_secs`, a request body still arriving `body_read_timeout_secs` after its
//! headers is refused, and at most `public_max_connections` / `internal_max_connections`
//! connections are served at once. Real sockets against `server::start_with` on loopback.

mod common;

/// The raw-socket checks of the broker's tests, without the rest of its helpers (which start
/// brokers).
#[path = "../../broker/tests/common/slow_http.rs"]
#[allow(dead_code, unreachable_pub)]
mod slow_http;

use std::time::Duration;

use starling_api::config::{Config, Secret};
use starling_api::keys::Kek;
use starling_http::testing::http_get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The bootstrap token: a request that reads its body gets past authentication.
const BOOTSTRAP: &str = "sat_bootstrap-token-for-http-limits";

/// How long one step may wait (as in the broker's tests).
const WAIT: Duration = Duration::from_secs(10);

async fn start(
    max_connections: usize,
) -> (
    starling_api::server::Running,
    CancellationToken,
    Box<dyn std::any::Any + Send>,
) {
    let (store, guard) = common::sqlite().await;
    let config = Config {
        database_url: "sqlite::memory:".into(),
        kek: Some(Secret("ab".repeat(32))),
        public_addr: "127.0.0.1:0".parse().unwrap(),
        internal_addr: "127.0.0.1:0".parse().unwrap(),
        header_read_timeout_secs: 1,
        body_read_timeout_secs: 1,
        bootstrap_token: Some(Secret(BOOTSTRAP.into())),
        public_max_connections: max_connections,
        internal_max_connections: max_connections,
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    let running = starling_api::server::start_with(
        store,
        Kek::from_bytes(&[3u8; 32]).unwrap(),
        config,
        shutdown.clone(),
    )
    .await
    .expect("api starts");
    (running, shutdown, guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_half_a_request_is_cut_off_on_both_listeners() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (running, shutdown, _guard) = start(8).await;
        for addr in [running.public_addr, running.internal_addr] {
            slow_http::assert_half_requests_are_cut_off(addr, Duration::from_secs(1)).await;
            let (status, _) = http_get(addr, "/healthz").await;
            assert_eq!(status, 200, "a whole request is still served on {addr}");
        }
        shutdown.cancel();
        running.task.await.unwrap().unwrap();
    })
    .await
    .expect("timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_on_both_listeners() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (running, shutdown, _guard) = start(2).await;
        for (addr, path) in [
            (running.public_addr, "/healthz"),
            (running.internal_addr, "/metrics"),
        ] {
            let status = slow_http::assert_the_cap_holds_one_more_connection(
                addr,
                2,
                Duration::from_secs(1),
                path,
            )
            .await;
            assert_eq!(status, 200, "{addr}{path}");
        }
        shutdown.cancel();
        running.task.await.unwrap().unwrap();
    })
    .await
    .expect("timed out");
}

/// A client that sends a request's headers and then trickles its body (a byte per half second,
/// never finishing) is answered 400 naming the body's deadline and its connection closes, while
/// other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_past_its_deadline_is_refused_and_its_connection_closed() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (running, shutdown, _guard) = start(8).await;
        let mut s = TcpStream::connect(running.public_addr).await.unwrap();
        let head = format!(
            "POST /v1/namespaces HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {BOOTSTRAP}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (mut r, mut w) = s.into_split();
        // One byte every half second, never the whole body, until the api closes.
        let trickle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if w.write_all(b" ").await.is_err() {
                    break;
                }
            }
        });
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("answered and closed in time");
        trickle.abort();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(
            text.contains("did not arrive within 1 s"),
            "the answer names the deadline: {text}"
        );
        let (status, _) = http_get(running.public_addr, "/healthz").await;
        assert_eq!(status, 200, "other clients are served");
        shutdown.cancel();
        running.task.await.unwrap().unwrap();
    })
    .await
    .expect("timed out");
}

#[test]
fn http_limits_are_validated() {
    let config = Config {
        header_read_timeout_secs: 0,
        public_max_connections: 0,
        internal_max_connections: 0,
        ..Config::default()
    };
    let err = config.validate().unwrap_err().to_string();
    for key in [
        "public.header_read_timeout_secs",
        "public.max_connections",
        "internal.max_connections",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
}
