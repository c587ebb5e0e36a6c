//! The broker's HTTP listener (`/healthz`, `/readyz`, `/metrics`) bounds what a client can hold:
//! a client that sends half a request, or nothing, is cut off after `http.header_read_timeout_secs`,
//! and at most `http.max_connections` connections are served at once.

mod common;

use std::time::Duration;

use common::slow_http;
use common::{TestBroker, WAIT};

async fn broker(timeout_secs: u64, max_connections: usize) -> TestBroker {
    TestBroker::with(|c| {
        c.http.header_read_timeout_secs = timeout_secs;
        c.http.max_connections = max_connections;
    })
    .await
}

#[tokio::test]
async fn a_client_that_sends_half_a_request_is_cut_off_after_the_header_timeout() {
    tokio::time::timeout(WAIT * 3, async {
        let b = broker(1, 8).await;
        slow_http::assert_half_requests_are_cut_off(b.broker.http, Duration::from_secs(1)).await;
        let (status, _) = common::http_get(b.broker.http, "/healthz").await;
        assert_eq!(status, 200, "a whole request is still served");
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_a_slot_frees() {
    tokio::time::timeout(WAIT * 3, async {
        let b = broker(1, 2).await;
        let status = slow_http::assert_the_cap_holds_one_more_connection(
            b.broker.http,
            2,
            Duration::from_secs(1),
            "/metrics",
        )
        .await;
        assert_eq!(status, 200);
    })
    .await
    .expect("timed out");
}

#[test]
fn http_limits_are_validated() {
    let err = starling_broker::config::Config::load(
        Some("[http]\nheader_read_timeout_secs = 0\nmax_connections = 0\n"),
        [],
        &starling_broker::config::Overrides {
            mqtt: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("http.header_read_timeout_secs"), "{err}");
    assert!(err.contains("http.max_connections"), "{err}");
}
