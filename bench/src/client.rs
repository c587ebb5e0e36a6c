//! One MQTT connection of the generator: a TCP stream split into a packet reader and a writer;
//! many of them opened at once under `--connect-concurrency` ([`gated`]); and a QoS 1
//! publisher's window of unacknowledged PUBLISHes ([`Window`]).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::args::Args;
use crate::wire::{self, PacketReader};

/// How long a connection's handshake (TCP, CONNECT, CONNACK) or a SUBSCRIBE may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Keep-alive the generator announces: long enough that no run needs a PINGREQ.
const KEEP_ALIVE_SECS: u16 = 300;

pub(crate) struct Client {
    pub(crate) reader: PacketReader,
    pub(crate) writer: OwnedWriteHalf,
    /// The broker's Receive Maximum (65535 when it sent none).
    pub(crate) receive_maximum: u16,
    /// The CONNACK's session present flag.
    pub(crate) session_present: bool,
}

pub(crate) fn error(message: impl Into<String>) -> io::Error {
    io::Error::other(message.into())
}

/// Connects and waits for a successful CONNACK, within [`HANDSHAKE_TIMEOUT`]. `read_buffer` is
/// the reader's starting size: small for idle connections, large for subscribers.
pub(crate) async fn connect(
    args: &Args,
    client_id: &str,
    read_buffer: usize,
) -> io::Result<Client> {
    connect_session(args, client_id, read_buffer, None).await
}

/// [`connect`], with a persistent session when `keep_session` holds its expiry (seconds).
pub(crate) async fn connect_session(
    args: &Args,
    client_id: &str,
    read_buffer: usize,
    keep_session: Option<u32>,
) -> io::Result<Client> {
    let handshake = async {
        let stream = TcpStream::connect((args.host.as_str(), args.port)).await?;
        stream.set_nodelay(true)?;
        let (rd, mut writer) = stream.into_split();
        writer
            .write_all(&wire::connect_session(
                args.v5(),
                client_id,
                KEEP_ALIVE_SECS,
                keep_session,
            ))
            .await?;
        let mut reader = PacketReader::new(rd, read_buffer);
        let (first, body) = reader.next().await?;
        if first >> 4 != wire::CONNACK {
            return Err(error(format!(
                "{client_id}: expected CONNACK, got packet type {}",
                first >> 4
            )));
        }
        let session_present = wire::session_present(body);
        let receive_maximum = wire::parse_connack(args.v5(), body).map_err(|code| {
            error(format!(
                "{client_id}: connection refused with reason {code:#04x}"
            ))
        })?;
        Ok(Client {
            reader,
            writer,
            receive_maximum: receive_maximum.unwrap_or(u16::MAX),
            session_present,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            error(format!(
                "{client_id}: no CONNACK within {HANDSHAKE_TIMEOUT:?}"
            ))
        })?
}

/// Subscribes to `filter` at the run's QoS and waits for a granting SUBACK.
pub(crate) async fn subscribe(args: &Args, client: &mut Client, filter: &str) -> io::Result<()> {
    let exchange = async {
        client
            .writer
            .write_all(&wire::subscribe(args.v5(), 1, filter, args.qos))
            .await?;
        loop {
            let (first, body) = client.reader.next().await?;
            if first >> 4 != wire::SUBACK {
                continue;
            }
            return match body.last() {
                Some(&code) if code < 0x80 => Ok(()),
                code => Err(error(format!(
                    "subscribing to {filter} was refused (SUBACK {code:?})"
                ))),
            };
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            error(format!(
                "no SUBACK for {filter} within {HANDSHAKE_TIMEOUT:?}"
            ))
        })?
}

/// What [`gated`] gathered: the results that succeeded (in the order they completed), how many
/// failed, and the first failure.
pub(crate) struct Gathered<T> {
    pub(crate) ok: Vec<T>,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
}

/// Runs `make(n)` for each `n` in `0..count`, at most `--connect-concurrency` at once (each
/// waits for its turn before it starts), and gathers the results.
pub(crate) async fn gated<T, F, Fut>(args: &Args, count: u32, make: F) -> Gathered<T>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let gate = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let mut running = JoinSet::new();
    for n in 0..count {
        let (gate, work) = (gate.clone(), make(n));
        running.spawn(async move {
            let _permit = gate
                .acquire_owned()
                .await
                .map_err(|e| error(e.to_string()))?;
            work.await
        });
    }
    let mut gathered = Gathered {
        ok: Vec::with_capacity(count as usize),
        failed: 0,
        first_error: None,
    };
    while let Some(joined) = running.join_next().await {
        match joined.map_err(|e| error(e.to_string())).and_then(|r| r) {
            Ok(t) => gathered.ok.push(t),
            Err(e) => {
                gathered.failed += 1;
                gathered.first_error.get_or_insert(e.to_string());
            }
        }
    }
    gathered
}

/// A QoS 1 publisher's window: at most [`Window::size`] PUBLISHes unacknowledged (`--inflight`,
/// lowered to the broker's Receive Maximum). A task reads the connection: each PUBACK frees a
/// slot and counts as acknowledged or, with a reason code of 0x80 or more (5.0), as refused.
pub(crate) struct Window {
    pub(crate) size: u16,
    slots: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
    reading: JoinHandle<()>,
}

impl Window {
    /// Starts reading `reader`; acknowledgements are counted in `acked`.
    pub(crate) fn start(
        args: &Args,
        mut reader: PacketReader,
        receive_maximum: u16,
        acked: Arc<AtomicU64>,
    ) -> Window {
        let size = args.inflight.min(receive_maximum).max(1);
        let slots = Arc::new(Semaphore::new(usize::from(size)));
        let refused = Arc::new(AtomicU64::new(0));
        let reading = {
            let (slots, acked, refused) = (slots.clone(), acked.clone(), refused.clone());
            tokio::spawn(async move {
                while let Ok((first, body)) = reader.next().await {
                    if first >> 4 == wire::PUBACK {
                        if body.get(2).is_some_and(|&code| code >= 0x80) {
                            refused.fetch_add(1, Relaxed);
                        } else {
                            acked.fetch_add(1, Relaxed);
                        }
                        slots.add_permits(1);
                    }
                }
            })
        };
        Window {
            size,
            slots,
            refused,
            reading,
        }
    }

    /// Takes a slot for one more PUBLISH: at once, or, when the window is full, after writing
    /// out `batch` (what the broker has to answer first) and waiting until `until` at most.
    /// `false` when the time ran out.
    pub(crate) async fn take(
        &self,
        writer: &mut OwnedWriteHalf,
        batch: &mut Vec<u8>,
        until: Instant,
    ) -> io::Result<bool> {
        if let Ok(slot) = self.slots.try_acquire() {
            slot.forget();
            return Ok(true);
        }
        if !batch.is_empty() {
            writer.write_all(batch).await?;
            batch.clear();
        }
        match tokio::time::timeout_at(until.into(), self.slots.acquire()).await {
            Ok(Ok(slot)) => {
                slot.forget();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Waits until every PUBLISH is answered, or until `until`.
    pub(crate) async fn drain(&self, until: Instant) {
        let all = u32::from(self.size);
        let _ = tokio::time::timeout_at(until.into(), self.slots.acquire_many(all)).await;
    }

    /// Ends the connection (DISCONNECT) and the reading; how many PUBLISHes were refused.
    pub(crate) async fn close(self, mut writer: OwnedWriteHalf) -> u64 {
        let _ = writer.write_all(&wire::DISCONNECT).await;
        let _ = writer.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.reading).await;
        self.refused.load(Relaxed)
    }
}
