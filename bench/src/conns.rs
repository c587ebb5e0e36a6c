//! conns: `--conns` idle connections (CONNECT and CONNACK, nothing else), at most
//! `--connect-concurrency` handshakes at once, held for `--duration` seconds, then closed.
//!
//! With `--broker-pid`, the broker's resident memory is read before, 1 s after the last CONNACK,
//! after the hold and 1 s after closing; `rss_bytes_per_conn` = (open - before) / connected.
//! Keep-alive is 300 s, so no PINGREQ is needed while the connections are held.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::args::Args;
use crate::client;
use crate::probe::{Probe, rss_kb};
use crate::wire;

/// How long the broker gets to settle after the last connection opens or closes, before its
/// memory is read.
const SETTLE: Duration = Duration::from_secs(1);

pub(crate) async fn run(args: Arc<Args>) -> io::Result<Value> {
    let pid = args.broker_pid;
    let probe = Probe::start(pid);
    let rss_before = rss_kb(pid);
    let tag = std::process::id();
    let start = Instant::now();
    let gathered = client::gated(&args, args.conns, |i| {
        let args = args.clone();
        async move { client::connect(&args, &format!("sb{tag}-c{i}"), 64).await }
    })
    .await;
    let (mut open, failed, first_error) = (gathered.ok, gathered.failed, gathered.first_error);
    let connect_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss_open = rss_kb(pid);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let rss_held = rss_kb(pid);
    let connected = open.len();
    for c in &mut open {
        let _ = c.writer.write_all(&wire::DISCONNECT).await;
    }
    drop(open);
    tokio::time::sleep(SETTLE).await;
    let per_connection = rss_before
        .zip(rss_open)
        .filter(|_| connected > 0)
        .map(|(before, open)| (open as f64 - before as f64) * 1024.0 / connected as f64);
    let mut out = json!({
        "conns_target": args.conns,
        "connected": connected,
        "failed": failed,
        "first_error": first_error,
        "connect_secs": connect_secs,
        "connects_per_s": connected as f64 / connect_secs,
        "rss_kb_before": rss_before,
        "rss_kb_open": rss_open,
        "rss_kb_after_hold": rss_held,
        "rss_kb_after_close": rss_kb(pid),
        "rss_bytes_per_conn": per_connection,
    });
    crate::merge(&mut out, probe.finish());
    Ok(out)
}
