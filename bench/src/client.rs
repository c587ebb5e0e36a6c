//! One MQTT connection of the generator: a TCP stream split into a packet reader and a writer.

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

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
