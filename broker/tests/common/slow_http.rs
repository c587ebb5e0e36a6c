//! Raw-socket checks of an HTTP listener's bounds: the header-read timeout (a client that sends
//! half a request, or nothing, is cut off) and the connection cap (one connection more than the
//! cap is served only once a slot frees).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// Reads until the server closes the connection; what it sent meanwhile (a 408, or nothing).
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept a connection with half a request for {WAIT:?}"),
        }
    }
}

/// A connection that has sent `bytes` of a request (maybe none) and waits.
pub async fn holding(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if !bytes.is_empty() {
        s.write_all(bytes).await.expect("write");
    }
    s
}

/// How long the server takes to close a connection that sent `bytes` and stopped.
pub async fn time_to_cut_off(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut s = holding(addr, bytes).await;
    let sent = until_closed(&mut s).await;
    assert!(
        sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"),
        "unexpected answer: {}",
        String::from_utf8_lossy(&sent)
    );
    started.elapsed()
}

/// Asserts that `addr` cuts off, within `timeout` plus a margin, a client that sent half a
/// request line and one that sent nothing, and not before about `timeout`.
pub async fn assert_half_requests_are_cut_off(addr: SocketAddr, timeout: Duration) {
    let margin = Duration::from_secs(3);
    for bytes in [&b"GET /metr"[..], b""] {
        let took = time_to_cut_off(addr, bytes).await;
        assert!(
            took >= timeout.mul_f64(0.9) && took < timeout + margin,
            "{:?} cut off after {took:?} (timeout {timeout:?})",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Asserts that with `cap` connections holding half a request, one more connection's complete
/// request for `path` is answered only once the header-read timeout (`timeout`) has cut those
/// off, so it waited for a free slot; returns the status it got.
pub async fn assert_the_cap_holds_one_more_connection(
    addr: SocketAddr,
    cap: usize,
    timeout: Duration,
    path: &str,
) -> u16 {
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(holding(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await);
    }
    let mut extra = TcpStream::connect(addr)
        .await
        .expect("the backlog takes it");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    extra.write_all(req.as_bytes()).await.expect("write");
    let answer = until_closed(&mut extra).await;
    let answered = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(
        answered >= timeout.mul_f64(0.9),
        "a connection over the cap of {cap} was answered after {answered:?}, before the held ones were cut off"
    );
    for mut s in held {
        // Each held connection was closed (a 408 at most), not answered.
        let sent = until_closed(&mut s).await;
        assert!(
            sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"),
            "a held connection got {}",
            String::from_utf8_lossy(&sent)
        );
    }
    status
}
