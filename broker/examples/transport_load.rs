//! A bounded load generator that measures broker throughput per transport in one run: plain TCP,
//! TLS, WebSockets and WebSockets over TLS, against listeners of a running broker.
//!
//! For each transport given, one subscriber and one publisher connect over that transport (MQTT
//! 3.1.1, clean session); the publisher sends `--messages` QoS 0 PUBLISHes of `--payload` bytes,
//! never more than `--window` ahead of what the subscriber has received (so no queue overflows and
//! nothing is dropped), writing in batches with one flush per batch. The time from the first
//! PUBLISH to the last delivery gives messages and payload megabytes per second.
//!
//! With `--idle N --broker-pid PID` it instead opens N idle MQTT connections per transport and
//! reports the broker's resident memory per connection (VmRSS from /proc before and after; run
//! it against a fresh broker per transport, freed memory is reused).
//!
//! ```sh
//! cargo run --release -p starling-broker --example transport_load -- \
//!     --mqtt 127.0.0.1:1883 --mqtts 127.0.0.1:8883 --ws 127.0.0.1:8080 --wss 127.0.0.1:8884 \
//!     --ca dev-tls/ca.pem --messages 200000 --payload 64
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use starling_broker::transport::{AsyncIo, tls, ws::WsStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

struct Args {
    targets: Vec<(Kind, SocketAddr)>,
    ca: Option<PathBuf>,
    messages: u64,
    payload: usize,
    window: u64,
    batch: usize,
    deadline: Duration,
    idle: usize,
    broker_pid: Option<u32>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        targets: Vec::new(),
        ca: None,
        messages: 200_000,
        payload: 64,
        window: 2_000,
        batch: 64,
        deadline: Duration::from_secs(120),
        idle: 0,
        broker_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mqtt" => args.targets.push((Kind::Mqtt, value()?.parse()?)),
            "--mqtts" => args.targets.push((Kind::Mqtts, value()?.parse()?)),
            "--ws" => args.targets.push((Kind::Ws, value()?.parse()?)),
            "--wss" => args.targets.push((Kind::Wss, value()?.parse()?)),
            "--ca" => args.ca = Some(value()?.into()),
            "--messages" => args.messages = value()?.parse()?,
            "--payload" => args.payload = value()?.parse()?,
            "--window" => args.window = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--deadline-secs" => args.deadline = Duration::from_secs(value()?.parse()?),
            "--idle" => args.idle = value()?.parse::<usize>()?.min(50_000),
            "--broker-pid" => args.broker_pid = Some(value()?.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if args.targets.is_empty() {
        bail!("give at least one of --mqtt/--mqtts/--ws/--wss ADDR");
    }
    args.messages = args.messages.min(10_000_000);
    args.payload = args.payload.min(1 << 20);
    Ok(args)
}

async fn connect(
    kind: Kind,
    addr: SocketAddr,
    ca: Option<&PathBuf>,
) -> anyhow::Result<Box<dyn AsyncIo>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = |alpn: &[u8]| -> anyhow::Result<tokio_rustls::TlsConnector> {
        let ca = ca.context("--ca is needed for TLS")?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
    };
    let request = || -> anyhow::Result<_> {
        let mut r = "ws://localhost/mqtt".into_client_request()?;
        r.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        Ok(r)
    };
    let name = ServerName::try_from("localhost")?;
    Ok(match kind {
        Kind::Mqtt => Box::new(tcp),
        Kind::Mqtts => Box::new(tls(b"mqtt")?.connect(name, tcp).await?),
        Kind::Ws => {
            let (ws, _) = tokio_tungstenite::client_async(request()?, tcp).await?;
            Box::new(WsStream::from_websocket(ws, 64 * 1024))
        }
        Kind::Wss => {
            let stream = tls(b"http/1.1")?.connect(name, tcp).await?;
            let (ws, _) = tokio_tungstenite::client_async(request()?, stream).await?;
            Box::new(WsStream::from_websocket(ws, 64 * 1024))
        }
    })
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut out = vec![0x10];
    starling_codec::remaining_length::put(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn subscribe_packet(topic: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x01];
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.push(0x00);
    let mut out = vec![0x82];
    starling_codec::remaining_length::put(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x30];
    starling_codec::remaining_length::put(&mut out, 2 + topic.len() + payload.len());
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits complete packets off `buf`, calling `f` with each packet's first byte.
fn packets(buf: &mut BytesMut, mut f: impl FnMut(u8)) {
    while let Some(len) = starling_codec::remaining_length::packet_len(buf) {
        f(buf[0]);
        buf.advance(len);
    }
}

async fn expect_packet(
    io: &mut Box<dyn AsyncIo>,
    buf: &mut BytesMut,
    kind: u8,
) -> anyhow::Result<()> {
    loop {
        let mut seen = false;
        packets(buf, |first| seen |= first >> 4 == kind);
        if seen {
            return Ok(());
        }
        if io.read_buf(buf).await? == 0 {
            bail!("connection closed while waiting for packet type {kind}");
        }
    }
}

async fn run_one(kind: Kind, addr: SocketAddr, args: &Args) -> anyhow::Result<(u64, Duration)> {
    let topic = format!("load/{kind:?}");
    let mut sub = connect(kind, addr, args.ca.as_ref()).await?;
    let mut sbuf = BytesMut::with_capacity(64 * 1024);
    sub.write_all(&connect_packet(&format!("load-sub-{kind:?}")))
        .await?;
    sub.flush().await?;
    expect_packet(&mut sub, &mut sbuf, 2).await?;
    sub.write_all(&subscribe_packet(&topic)).await?;
    sub.flush().await?;
    expect_packet(&mut sub, &mut sbuf, 9).await?;

    let mut publisher = connect(kind, addr, args.ca.as_ref()).await?;
    let mut pbuf = BytesMut::new();
    publisher
        .write_all(&connect_packet(&format!("load-pub-{kind:?}")))
        .await?;
    publisher.flush().await?;
    expect_packet(&mut publisher, &mut pbuf, 2).await?;

    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let total = args.messages;
    let reader = {
        let received = Arc::clone(&received);
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let mut count = 0u64;
            while count < total {
                match sub.read_buf(&mut sbuf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                packets(&mut sbuf, |first| {
                    if first >> 4 == 3 {
                        count += 1;
                    }
                });
                if sbuf.capacity() - sbuf.len() < 16 * 1024 {
                    sbuf.reserve(64 * 1024);
                }
                received.store(count, Ordering::Release);
                progress.notify_one();
            }
            count
        })
    };

    let packet = publish_packet(&topic, &vec![0x5a; args.payload]);
    let mut batch = Vec::with_capacity(packet.len() * args.batch);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        while sent - received.load(Ordering::Acquire) >= args.window {
            tokio::time::timeout(Duration::from_secs(10), progress.notified())
                .await
                .context("no delivery for 10 s")?;
        }
        batch.clear();
        let n = (args.batch as u64).min(total - sent).min(args.window);
        for _ in 0..n {
            batch.extend_from_slice(&packet);
        }
        publisher.write_all(&batch).await?;
        publisher.flush().await?;
        sent += n;
    }
    let delivered = tokio::time::timeout(args.deadline, reader)
        .await
        .context("deadline passed before every message arrived")??;
    Ok((delivered, started.elapsed()))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

async fn idle_memory(args: &Args) -> anyhow::Result<()> {
    let pid = args.broker_pid.context("--idle needs --broker-pid")?;
    println!("transport  connections  rss_before_KiB  rss_after_KiB  bytes_per_connection");
    for (kind, addr) in &args.targets {
        let before = rss_kib(pid)?;
        let mut open = Vec::with_capacity(args.idle);
        for i in 0..args.idle {
            let mut io = connect(*kind, *addr, args.ca.as_ref()).await?;
            io.write_all(&connect_packet(&format!("idle-{kind:?}-{i}")))
                .await?;
            io.flush().await?;
            let mut buf = BytesMut::new();
            tokio::time::timeout(Duration::from_secs(10), expect_packet(&mut io, &mut buf, 2))
                .await
                .context("no CONNACK")??;
            open.push(io);
        }
        let after = rss_kib(pid)?;
        println!(
            "{:<9}  {:>11}  {:>14}  {:>13}  {:>20}",
            format!("{kind:?}").to_lowercase(),
            args.idle,
            before,
            after,
            (after.saturating_sub(before) * 1024) / args.idle.max(1) as u64
        );
        drop(open);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.idle > 0 {
        return idle_memory(&args).await;
    }
    println!("transport  messages  payload_B  seconds  msg_per_s  payload_MB_per_s");
    for (kind, addr) in args.targets.clone() {
        let (delivered, elapsed) = tokio::time::timeout(args.deadline, run_one(kind, addr, &args))
            .await
            .context("deadline passed")??;
        let secs = elapsed.as_secs_f64();
        println!(
            "{:<9}  {:>8}  {:>9}  {:>7.3}  {:>9.0}  {:>16.1}",
            format!("{kind:?}").to_lowercase(),
            delivered,
            args.payload,
            secs,
            delivered as f64 / secs,
            (delivered as f64 * args.payload as f64) / secs / 1e6
        );
    }
    Ok(())
}
