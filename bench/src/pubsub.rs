//! fanin, fanout and latency: message flows from publishers to subscribers.
//!
//! 1. Every subscriber connects (clean start; with `--persistent` a session kept for an hour,
//!    clean start 0) and subscribes; the publishers connect. Nothing is
//!    published before every SUBACK is in.
//! 2. The publishers publish for `--duration` seconds (latency: plus `--warmup`), as fast as the
//!    socket takes them in batches of 256 (`--rate 0`), or paced by a 1 ms tick that sends what
//!    is due. A QoS 1 publisher keeps at most `--inflight` PUBLISHes unacknowledged (the broker's
//!    Receive Maximum may lower it: `qos1_window`). The payload starts with the publisher's
//!    number, the sequence number and the send time (ns since the run began).
//! 3. Drain: until everything expected has arrived, 1 s passes without a delivery, or 10 s.
//!    Subscribers acknowledge QoS 1 deliveries, one write per read.
//!
//! Publisher and subscriber share this process's monotonic clock, so latency needs no clock sync.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::args::Args;
use crate::client::{self, Client, Window, error};
use crate::probe::Probe;
use crate::wire;

/// The Session Expiry Interval of `--persistent` subscribers' sessions.
pub(crate) const SESSION_EXPIRY_SECS: u32 = 3600;

/// What the subscribers have received so far, read by the drain and the steady-rate sampler.
#[derive(Default)]
struct Received {
    count: AtomicU64,
    /// ns since the run began, of the latest delivery.
    last_ns: AtomicU64,
}

/// The shape of one message-flow run.
pub(crate) struct Flow {
    pub(crate) subscribers: usize,
    pub(crate) filter: String,
    /// One publisher per topic.
    pub(crate) topics: Vec<String>,
    /// Messages per second over all publishers; 0 for as fast as possible.
    pub(crate) rate: u64,
    /// Collect latency samples (after the warm-up).
    pub(crate) latency: bool,
}

pub(crate) async fn run(args: Arc<Args>, flow: Flow) -> io::Result<Value> {
    let epoch = Instant::now();
    let tag = std::process::id();

    // Subscribers on other replicas of the same broker, in turn, with --subscriber-port.
    let sub_args: Vec<Arc<crate::args::Args>> = if args.subscriber_port.is_empty() {
        vec![args.clone()]
    } else {
        args.subscriber_port
            .iter()
            .map(|&port| {
                Arc::new(crate::args::Args {
                    port,
                    ..(*args).clone()
                })
            })
            .collect()
    };
    let joined = client::gated(&args, flow.subscribers as u32, |i| {
        let (args, filter) = (
            sub_args[i as usize % sub_args.len()].clone(),
            flow.filter.clone(),
        );
        async move {
            let keep = args.persistent.then_some(SESSION_EXPIRY_SECS);
            let mut c =
                client::connect_session(&args, &format!("sb{tag}-s{i}"), 64 * 1024, keep).await?;
            client::subscribe(&args, &mut c, &filter).await?;
            Ok(c)
        }
    })
    .await;
    if let Some(e) = joined.first_error {
        return Err(error(e));
    }
    let subscribers = joined.ok;
    let mut publishers = Vec::with_capacity(flow.topics.len());
    for i in 0..flow.topics.len() {
        publishers.push(client::connect(&args, &format!("sb{tag}-p{i}"), 4096).await?);
    }

    let (stop, stopped) = watch::channel(false);
    let received: Arc<Received> = Arc::default();
    let warmup_ns = if flow.latency {
        (args.warmup * 1e9) as u64
    } else {
        0
    };
    let samples_from_ns = epoch.elapsed().as_nanos() as u64 + warmup_ns;
    let mut receiving = Vec::with_capacity(subscribers.len());
    for c in subscribers {
        receiving.push(tokio::spawn(subscriber(
            args.v5(),
            c,
            received.clone(),
            epoch,
            flow.latency.then_some(samples_from_ns),
            stopped.clone(),
        )));
    }

    let probe = Probe::start(args.broker_pid);
    let start = Instant::now();
    let start_ns = epoch.elapsed().as_nanos() as u64;
    let publish_for = args.duration + if flow.latency { args.warmup } else { 0.0 };
    let stop_at = start + Duration::from_secs_f64(publish_for);
    let per_publisher = flow.rate as f64 / flow.topics.len() as f64;
    let mut publishing = Vec::with_capacity(publishers.len());
    for (i, (c, topic)) in publishers.into_iter().zip(&flow.topics).enumerate() {
        publishing.push(tokio::spawn(publisher(
            args.clone(),
            c,
            i as u32,
            topic.clone(),
            per_publisher,
            epoch,
            stop_at,
        )));
    }
    // The steady rate: deliveries between start + min(1 s, 20 % of the duration) and the end of
    // publishing, so neither the ramp-up nor the drain counts.
    let ramp = Duration::from_secs_f64((args.duration * 0.2).min(1.0));
    let steady = {
        let received = received.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((start + ramp).into()).await;
            let (from, count) = (Instant::now(), received.count.load(Relaxed));
            tokio::time::sleep_until(stop_at.into()).await;
            (received.count.load(Relaxed) - count) as f64 / from.elapsed().as_secs_f64()
        })
    };
    let (mut sent, mut window) = (0u64, 0u16);
    for p in publishing {
        let (n, w) = p.await.map_err(|e| error(e.to_string()))??;
        sent += n;
        window = w;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let steady = steady.await.unwrap_or(0.0);

    let expected = sent * flow.subscribers as u64;
    let drain_start = Instant::now();
    let (mut last, mut last_change) = (received.count.load(Relaxed), Instant::now());
    while last < expected
        && last_change.elapsed() < Duration::from_secs(1)
        && drain_start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = received.count.load(Relaxed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    let cost = probe.finish();
    let _ = stop.send(true);
    let mut samples = Vec::new();
    for r in receiving {
        if let Ok(Ok(Ok(mut s))) = tokio::time::timeout(Duration::from_secs(3), r).await {
            samples.append(&mut s);
        }
    }

    let received_total = received.count.load(Relaxed);
    let deliver_secs = received.last_ns.load(Relaxed).saturating_sub(start_ns) as f64 / 1e9;
    let lost = expected.saturating_sub(received_total);
    let mut out = json!({
        "publishers": flow.topics.len(),
        "subscribers": flow.subscribers,
        "rate_target": flow.rate,
        "qos1_window": (args.qos == 1).then_some(window),
        "sent": sent,
        "expected": expected,
        "received": received_total,
        "lost": lost,
        "extra": received_total.saturating_sub(expected),
        "loss_pct": if expected > 0 { 100.0 * lost as f64 / expected as f64 } else { 0.0 },
        "publish_secs": publish_secs,
        "deliver_secs": deliver_secs,
        "sent_per_s": sent as f64 / publish_secs,
        "delivered_per_s_steady": steady,
        "delivered_per_s": if deliver_secs > 0.0 { received_total as f64 / deliver_secs } else { 0.0 },
    });
    if flow.latency {
        out["latency_us"] = percentiles(samples);
    }
    crate::merge(&mut out, cost);
    Ok(out)
}

/// Latency percentiles in µs over samples in ns.
fn percentiles(mut samples: Vec<u64>) -> Value {
    samples.sort_unstable();
    let at = |p: f64| {
        let i = ((p / 100.0) * (samples.len().max(1) - 1) as f64).round() as usize;
        samples.get(i).map(|&ns| ns as f64 / 1000.0)
    };
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64 / 1000.0;
    json!({
        "samples": samples.len(),
        "mean": (!samples.is_empty()).then_some(mean),
        "p50": at(50.0),
        "p90": at(90.0),
        "p99": at(99.0),
        "p999": at(99.9),
        "max": samples.last().map(|&ns| ns as f64 / 1000.0),
    })
}

/// Receives until told to stop, acknowledging QoS 1 deliveries in one write per read. Returns
/// latency samples (ns) of messages sent from `samples_from_ns` on, when asked for them.
async fn subscriber(
    v5: bool,
    mut c: Client,
    received: Arc<Received>,
    epoch: Instant,
    samples_from_ns: Option<u64>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<Vec<u64>> {
    let mut samples = Vec::new();
    let mut acks = Vec::with_capacity(8192);
    loop {
        if !acks.is_empty() && !c.reader.has_packet() {
            c.writer.write_all(&acks).await?;
            acks.clear();
        }
        let (first, body) = tokio::select! {
            biased;
            packet = c.reader.next() => packet?,
            _ = stop.changed() => break,
        };
        if first >> 4 != wire::PUBLISH {
            continue;
        }
        let Some((packet_id, payload)) = wire::parse_publish(v5, first, body) else {
            return Err(error("a malformed PUBLISH"));
        };
        if (first >> 1) & 3 == 1 {
            wire::puback(&mut acks, packet_id);
        }
        let now = epoch.elapsed().as_nanos() as u64;
        received.count.fetch_add(1, Relaxed);
        received.last_ns.store(now, Relaxed);
        if let (Some(from), Some(sent)) = (samples_from_ns, payload.get(8..16)) {
            let sent = u64::from_le_bytes(sent.try_into().unwrap_or_default());
            if sent >= from {
                samples.push(now.saturating_sub(sent));
            }
        }
    }
    let _ = c.writer.write_all(&wire::DISCONNECT).await;
    Ok(samples)
}

/// Publishes to `topic` until `stop_at`, at `rate` messages/s (0: as fast as the broker takes
/// them). Returns the messages written and the QoS 1 window used.
async fn publisher(
    args: Arc<Args>,
    c: Client,
    number: u32,
    topic: String,
    rate: f64,
    epoch: Instant,
    stop_at: Instant,
) -> io::Result<(u64, u16)> {
    let (v5, qos) = (args.v5(), args.qos);
    let Client {
        reader,
        mut writer,
        receive_maximum,
        ..
    } = c;
    // Only QoS 1 gets answers: each PUBACK frees a slot of the window.
    let window = Window::start(&args, reader, receive_maximum, Arc::default());
    // A broker that stops acknowledging gets this long after the end before the publisher quits.
    let give_up_at = stop_at + Duration::from_secs(5);
    let mut payload = vec![0u8; args.payload as usize];
    payload[0..4].copy_from_slice(&number.to_le_bytes());
    let mut batch = Vec::with_capacity(64 * 1024);
    let (mut seq, mut packet_id) = (0u64, 0u16);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    'publishing: while Instant::now() < stop_at {
        let due = if rate > 0.0 {
            tick.tick().await;
            ((start.elapsed().as_secs_f64() * rate) as u64).saturating_sub(seq)
        } else {
            256
        };
        for _ in 0..due {
            if rate == 0.0 && Instant::now() >= stop_at {
                break;
            }
            if qos == 1 {
                if !window.take(&mut writer, &mut batch, give_up_at).await? {
                    break 'publishing;
                }
                packet_id = packet_id % u16::MAX + 1;
            }
            payload[4..8].copy_from_slice(&(seq as u32).to_le_bytes());
            payload[8..16].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
            wire::publish(&mut batch, v5, topic.as_bytes(), qos, packet_id, &payload);
            seq += 1;
            if batch.len() >= 32 * 1024 {
                writer.write_all(&batch).await?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            writer.write_all(&batch).await?;
            batch.clear();
        }
    }
    if qos == 1 {
        // Every PUBLISH acknowledged, or the give-up time.
        window.drain(give_up_at).await;
    }
    let size = window.size;
    window.close(writer).await;
    Ok((seq, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let p = percentiles((1..=1000).rev().map(|us| us * 1000).collect());
        assert_eq!(p["samples"], 1000);
        assert_eq!(p["p50"], 501.0);
        assert_eq!(p["p99"], 990.0);
        assert_eq!(p["max"], 1000.0);
        assert_eq!(p["mean"], 500.5);
        let none = percentiles(Vec::new());
        assert_eq!(
            (none["samples"].clone(), none["p50"].clone()),
            (json!(0), Value::Null)
        );
    }
}
