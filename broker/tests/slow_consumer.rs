//! The slow-consumer policy, measured on a real broker process: one subscriber connects,
//! subscribes and then never reads its socket while a publisher sends [`TOTAL_BYTES`] of QoS 0
//! payload to its topic, and two other subscribers read everything.
//!
//! The broker runs as its own process (the `starling-broker` binary of this package) so that
//! its peak resident memory (`VmHWM`) is its alone. What must hold:
//! - peak RSS minus the RSS after start stays within 64 MiB plus the queue bound of the
//!   configuration (every subscriber's `limits.max_queued_bytes`, plus one write buffer each);
//! - the slow subscriber's losses show in `starling_dropped_total{reason="queue_full"}`;
//! - the reading subscribers receive every message.
//!
//! The publisher keeps at most [`READER_WINDOW`] messages ahead of the slower reader, far
//! inside a reader's queue bound: a reader the machine's load slows down is then never a slow
//! consumer itself, while the subscriber that never reads falls behind by the whole stream.
//!
//! Plain threads and blocking sockets, each with a read and write timeout, keep the test
//! process light; the broker gets the cores.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Payload sent by the publisher in all.
const TOTAL_BYTES: usize = 1 << 30;
/// Payload of one message.
const PAYLOAD: usize = 64 * 1024;
/// `limits.max_queued_bytes` of the broker under test.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// Subscribers that read.
const READERS: usize = 2;
/// The broker's write buffer is flushed at 64 KiB; one message may go past that.
const WRITE_BUFFER: usize = 64 * 1024 + PAYLOAD + 1024;
/// Growth allowed beyond the queues.
const SLACK: usize = 64 * 1024 * 1024;
/// Bound of every socket operation.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages the publisher may be ahead of the slower reader (16 MiB, a quarter of a queue).
const READER_WINDOW: u64 = 256;

/// The broker process; killed when dropped.
struct Broker {
    child: Child,
    mqtt: SocketAddr,
    http: SocketAddr,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(dir: &std::path::Path) -> Broker {
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nformat = \"json\"\n[limits]\nmax_queued_bytes = {MAX_QUEUED_BYTES}\n\
             max_queued_messages = 100000\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling-broker"))
        .args(["--config", config.to_str().unwrap()])
        .args(["--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the broker binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Reads the JSON log for the bound addresses, then keeps draining it.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let f = &v["fields"];
            if let Some(a) = f["addr"].as_str() {
                let _ = tx.send(("mqtt", a.to_string()));
            }
            if let Some(a) = f["http_addr"].as_str() {
                let _ = tx.send(("http", a.to_string()));
            }
        }
    });
    let mut mqtt = None;
    let mut http = None;
    while mqtt.is_none() || http.is_none() {
        let (kind, addr) = rx
            .recv_timeout(IO_TIMEOUT)
            .expect("the broker logs its listening addresses");
        let addr: SocketAddr = addr.parse().unwrap();
        match kind {
            "mqtt" => mqtt = Some(addr),
            _ => http = Some(addr),
        }
    }
    Broker {
        child,
        mqtt: mqtt.unwrap(),
        http: http.unwrap(),
    }
}

/// `VmRSS` or `VmHWM` of a process, in bytes.
fn proc_status_kb(pid: u32, field: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    starling_codec::remaining_length::put(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn mqtt_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An MQTT 3.1.1 connection with clean session and no keep alive; CONNACK checked.
fn connect(addr: SocketAddr, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut body = Vec::new();
    mqtt_string(&mut body, "MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    mqtt_string(&mut body, id);
    s.write_all(&packet(0x10, &body)).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK accepted");
    s
}

fn subscribe(s: &mut TcpStream, filter: &str, qos: u8) {
    let mut body = vec![0, 1];
    mqtt_string(&mut body, filter);
    body.push(qos);
    s.write_all(&packet(0x82, &body)).unwrap();
    let mut ack = [0u8; 5];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x90, 3, 0, 1, qos], "SUBACK granted");
}

fn publish_frame(topic: &str, qos: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&[0, 1]);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// What one reading subscriber saw.
#[derive(Debug)]
struct Received {
    data: u64,
    end_marker: bool,
}

/// Reads PUBLISH packets until the end marker (a QoS 1 message) or a read timeout, counting
/// them in `progress` and waking `publisher` as it goes.
fn read_all(mut s: TcpStream, progress: &AtomicU64, publisher: &std::thread::Thread) -> Received {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0usize;
    let mut got = Received {
        data: 0,
        end_marker: false,
    };
    loop {
        // Parse every complete packet in the buffer.
        let mut at = 0;
        loop {
            let avail = &buf[at..have];
            let Some(total) = starling_codec::remaining_length::packet_len(avail) else {
                break;
            };
            match avail[0] >> 4 {
                3 if (avail[0] >> 1) & 3 == 1 => {
                    got.end_marker = true;
                    return got;
                }
                3 => got.data += 1,
                _ => {}
            }
            at += total;
        }
        progress.store(got.data, Ordering::Release);
        publisher.unpark();
        buf.copy_within(at..have, 0);
        have -= at;
        match s.read(&mut buf[have..]) {
            Ok(0) => return got,
            Ok(n) => have += n,
            Err(_) => return got,
        }
    }
}

fn scrape(http: SocketAddr) -> String {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[test]
fn a_subscriber_that_never_reads_costs_bounded_memory_and_loses_only_its_own_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let pid = broker.child.id();
    let baseline = proc_status_kb(pid, "VmRSS:");

    // The subscriber that never reads: connected and subscribed, then left alone.
    let mut stalled = connect(broker.mqtt, "stalled");
    subscribe(&mut stalled, "slow/topic", 1);
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for i in 0..READERS {
        let mut s = connect(broker.mqtt, &format!("reader-{i}"));
        subscribe(&mut s, "slow/topic", 1);
        let read = Arc::new(AtomicU64::new(0));
        progress.push(read.clone());
        let publisher = std::thread::current();
        readers.push(std::thread::spawn(move || read_all(s, &read, &publisher)));
    }
    let slowest_reader = || {
        progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    };

    let messages = TOTAL_BYTES / PAYLOAD;
    let frame = publish_frame("slow/topic", 0, &vec![0x5au8; PAYLOAD]);
    let mut publisher = connect(broker.mqtt, "publisher");
    let started = Instant::now();
    for sent in 0..messages as u64 {
        // Waits (woken by the readers) while the slower reader is a window behind.
        let mut last_move = Instant::now();
        let mut last_seen = slowest_reader();
        while sent >= last_seen + READER_WINDOW {
            std::thread::park_timeout(Duration::from_millis(100));
            let now_seen = slowest_reader();
            if now_seen != last_seen {
                (last_seen, last_move) = (now_seen, Instant::now());
            }
            assert!(
                last_move.elapsed() < IO_TIMEOUT,
                "the readers stopped at {last_seen} of {sent} messages"
            );
        }
        publisher.write_all(&frame).unwrap();
    }
    // A QoS 1 end marker; its PUBACK means the broker has routed everything before it.
    publisher
        .write_all(&publish_frame("slow/topic", 1, b"end"))
        .unwrap();
    let mut ack = [0u8; 4];
    publisher.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x40, 2, 0, 1], "PUBACK of the end marker");
    let published_in = started.elapsed();
    let received: Vec<Received> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let delivered_in = started.elapsed();

    let peak = proc_status_kb(pid, "VmHWM:");
    let metrics = scrape(broker.http);
    let queue_full = metric(&metrics, "starling_dropped_total{reason=\"queue_full\"}");
    let sessions = READERS + 1;
    let bound = SLACK + sessions * (MAX_QUEUED_BYTES + WRITE_BUFFER);
    eprintln!(
        "{} MiB published in {published_in:?}, delivered in {delivered_in:?}; \
         RSS baseline {} KiB, peak {} KiB, growth {} KiB (bound {} KiB); \
         queue_full drops {queue_full}; received {:?} of {messages}",
        TOTAL_BYTES >> 20,
        baseline / 1024,
        peak / 1024,
        peak.saturating_sub(baseline) / 1024,
        bound / 1024,
        received
    );
    drop(stalled);

    assert!(
        peak.saturating_sub(baseline) <= bound,
        "peak RSS grew by {} KiB, above the bound of {} KiB",
        peak.saturating_sub(baseline) / 1024,
        bound / 1024
    );
    assert!(
        queue_full > 0.0,
        "the stalled subscriber's drops are counted"
    );
    for (i, r) in received.iter().enumerate() {
        assert!(
            r.data == messages as u64 && r.end_marker,
            "reader {i} got {} of {messages} messages (end marker: {})",
            r.data,
            r.end_marker
        );
    }
}
