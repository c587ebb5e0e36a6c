//! retained, sessions and resume: the state a broker keeps across restarts, and how fast it
//! writes and gets it back.
//!
//! * `retained`: `--publishers` publishers write `--count` retained QoS 1 messages (`--payload`
//!   bytes), each on a topic of its own (`starling-bench/retained/<n>`, the same names in every
//!   run, so a later run overwrites them), each keeping `--inflight` unacknowledged; ends when
//!   every message is acknowledged or after `--duration`. `acked_per_s` is the write rate.
//! * `sessions`: `--conns` persistent sessions (`starling-bench-session-<n>`, clean start 0, an
//!   expiry of one hour) each subscribe to a topic of their own at `--qos` and disconnect, at most
//!   `--connect-concurrency` at once.
//! * `resume`: `starling-bench-session-0` connects with clean start 0: `session_present` and the
//!   time from the TCP connect to the CONNACK.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::args::Args;
use crate::client::{self, Window, error};
use crate::probe::Probe;
use crate::pubsub::SESSION_EXPIRY_SECS;
use crate::wire;

/// The client id of session `n`.
fn session_id(n: u32) -> String {
    format!("starling-bench-session-{n}")
}

pub(crate) async fn retained(args: Arc<Args>) -> io::Result<Value> {
    let tag = std::process::id();
    let probe = Probe::start(args.broker_pid);
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(args.duration);
    let mut writing = JoinSet::new();
    for i in 0..args.publishers {
        let c = client::connect(&args, &format!("sb{tag}-r{i}"), 4096).await?;
        let (args, next, acked) = (args.clone(), next.clone(), acked.clone());
        writing.spawn(write_retained(args, c, next, acked, stop_at));
    }
    while let Some(joined) = writing.join_next().await {
        joined.map_err(|e| error(e.to_string()))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let acked = acked.load(Relaxed);
    let mut out = json!({
        "publishers": args.publishers,
        "count": args.count,
        "acked": acked,
        "write_secs": secs,
        "acked_per_s": acked as f64 / secs,
    });
    crate::merge(&mut out, probe.finish());
    Ok(out)
}

/// Takes message numbers from `next` until `--count`, publishes each retained at QoS 1 within a
/// window of `--inflight`, and counts the PUBACKs with success in `acked`.
async fn write_retained(
    args: Arc<Args>,
    c: client::Client,
    next: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    stop_at: Instant,
) -> io::Result<()> {
    let client::Client {
        reader,
        mut writer,
        receive_maximum,
        ..
    } = c;
    let window = Window::start(&args, reader, receive_maximum, acked);
    let mut payload = vec![b'r'; args.payload as usize];
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut packet_id = 0u16;
    loop {
        let n = next.fetch_add(1, Relaxed);
        if n >= u64::from(args.count) || Instant::now() >= stop_at {
            break;
        }
        if !window.take(&mut writer, &mut batch, stop_at).await? {
            break;
        }
        packet_id = packet_id % u16::MAX + 1;
        payload[..8].copy_from_slice(&n.to_le_bytes());
        let topic = format!("starling-bench/retained/{n}");
        wire::publish_with(
            &mut batch,
            args.v5(),
            topic.as_bytes(),
            1,
            true,
            packet_id,
            &payload,
        );
        if batch.len() >= 32 * 1024 {
            writer.write_all(&batch).await?;
            batch.clear();
        }
    }
    writer.write_all(&batch).await?;
    // Every PUBLISH answered, or the end of the run plus 5 s.
    window.drain(stop_at + Duration::from_secs(5)).await;
    match window.close(writer).await {
        0 => Ok(()),
        n => Err(error(format!("{n} retained messages refused"))),
    }
}

pub(crate) async fn sessions(args: Arc<Args>) -> io::Result<Value> {
    let probe = Probe::start(args.broker_pid);
    let start = Instant::now();
    let gathered = client::gated(&args, args.conns, |n| {
        let args = args.clone();
        async move {
            let mut c =
                client::connect_session(&args, &session_id(n), 256, Some(SESSION_EXPIRY_SECS))
                    .await?;
            client::subscribe(&args, &mut c, &format!("starling-bench/sessions/{n}")).await?;
            c.writer.write_all(&wire::DISCONNECT).await?;
            Ok(())
        }
    })
    .await;
    let created = gathered.ok.len() as u64;
    let secs = start.elapsed().as_secs_f64();
    let mut out = json!({
        "created": created,
        "failed": gathered.failed,
        "first_error": gathered.first_error,
        "sessions_per_s": created as f64 / secs,
    });
    crate::merge(&mut out, probe.finish());
    Ok(out)
}

pub(crate) async fn resume(args: Arc<Args>) -> io::Result<Value> {
    let start = Instant::now();
    let c = client::connect_session(&args, &session_id(0), 256, Some(SESSION_EXPIRY_SECS)).await?;
    let connack_ms = start.elapsed().as_secs_f64() * 1000.0;
    let client::Client {
        mut writer,
        session_present,
        ..
    } = c;
    let _ = writer.write_all(&wire::DISCONNECT).await;
    Ok(json!({ "session_present": session_present, "connack_ms": connack_ms }))
}
