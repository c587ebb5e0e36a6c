//! How the broker ends a connection: what is pending is written, the write side is closed, and
//! what the client still sends is read and discarded for a short linger before the socket is
//! dropped.
//!
//! Closing a socket while the peer's bytes are still unread makes the kernel answer with a reset,
//! and a reset destroys what the broker wrote last (a DISCONNECT with its reason, a refusing
//! CONNACK) before the client reads it: the client sees a broken pipe instead. So [`close`]
//! half-closes first (a FIN; on TLS a `close_notify` before it; on WebSockets the close frame,
//! and the FIN once the client's close frame is in, RFC 6455 section 7.1.1) and reads until the
//! client closes its side too.
//!
//! The linger is bounded per connection, by time (`limits.close_linger_ms`, 2 s by default) and
//! by [`LINGER_MAX_BYTES`], and in total: at most `limits.max_lingering` sockets linger at once
//! (counted in `starling_lingering_sockets`); a socket beyond that is closed at once, and counted
//! in `starling_linger_skipped_total`. The caller runs it last, after the session is released
//! and the will decided, so it delays nothing but the socket's own end; the broker's shutdown
//! waits for lingering sockets only within its drain deadline.

use std::time::Duration;

use bytes::BytesMut;
use starling_codec::ReasonCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::transport::AsyncIo;

/// Bound on writing what is pending and on sending the close (FIN, `close_notify`, close frame)
/// when a connection does not linger.
pub const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes read and discarded from one closing connection; a client that sends more is cut
/// off (with a reset).
pub const LINGER_MAX_BYTES: usize = 1024 * 1024;

/// Why a connection ends, as the transport says it: a WebSocket's close code (RFC 6455 section
/// 7.4.1). TCP and TLS have no such field and close the same way whatever the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ending {
    /// 1000: the client or the broker ended the connection in the ordinary course.
    #[default]
    Normal,
    /// 1001: the broker is shutting down.
    GoingAway,
    /// 1002: the client broke the protocol (a malformed packet, a protocol error).
    ProtocolError,
    /// 1008: the client is refused or was removed by a policy (authentication, authorization,
    /// quotas, rates).
    PolicyViolation,
    /// 1009: a packet larger than the broker accepts.
    TooLarge,
}

impl Ending {
    /// The ending that goes with an MQTT reason code the broker closes with (a DISCONNECT's or a
    /// refusing CONNACK's).
    pub fn for_reason(reason: ReasonCode) -> Ending {
        match reason.0 {
            0x00..=0x7F => Ending::Normal,
            // Server shutting down.
            0x8B => Ending::GoingAway,
            // Session taken over: another connection of the same client, not an error.
            0x8E => Ending::Normal,
            // Packet too large.
            0x95 => Ending::TooLarge,
            // Client identifier not valid, bad user name or password, not authorized, banned,
            // bad authentication method, message rate too high, quota exceeded, administrative
            // action, connection rate exceeded, maximum connect time.
            0x85 | 0x86 | 0x87 | 0x8A | 0x8C | 0x96 | 0x97 | 0x98 | 0x9F | 0xA0 => {
                Ending::PolicyViolation
            }
            _ => Ending::ProtocolError,
        }
    }

    /// The WebSocket close code.
    pub fn close_code(self) -> u16 {
        match self {
            Ending::Normal => 1000,
            Ending::GoingAway => 1001,
            Ending::ProtocolError => 1002,
            Ending::PolicyViolation => 1008,
            Ending::TooLarge => 1009,
        }
    }
}

/// How long a closing connection lingers, and how many may linger at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// Longest time a closing connection is read after its write side closed; zero closes at
    /// once.
    pub duration: Duration,
    /// Most sockets lingering at once, across every listener.
    pub max_sockets: usize,
}

/// Ends a connection: writes `pending` (within [`CLOSE_WRITE_TIMEOUT`]; its buffer is given back
/// before the linger), says how it ends ([`AsyncIo::set_ending`]), closes the write side and
/// lingers as the module documentation says, then drops the socket. Never fails: a peer that is
/// gone only ends it sooner.
pub async fn close<IO: AsyncIo>(
    mut io: IO,
    pending: BytesMut,
    ending: Ending,
    linger: Linger,
    metrics: &Metrics,
) {
    if !pending.is_empty() {
        let written = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            io.write_all(&pending).await?;
            io.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                metrics.bytes_out.inc_by(pending.len() as u64);
            }
            // The client does not read or is gone: nothing it could still read.
            _ => return,
        }
    }
    drop(pending);
    io.set_ending(ending);
    let Some(_slot) = LingerSlot::take(metrics, linger) else {
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, io.shutdown()).await;
        return;
    };
    let deadline = Instant::now() + linger.duration;
    let _ = tokio::time::timeout_at(deadline, async {
        if io.shutdown().await.is_err() {
            return;
        }
        if drain(&mut io, metrics).await {
            // The client closed its side (on WebSockets: its close frame is in): close ours.
            let _ = io.shutdown().await;
        }
    })
    .await;
}

/// Reads and discards until the peer closes (true), or fails or sends more than
/// [`LINGER_MAX_BYTES`] (false).
async fn drain<IO: AsyncIo>(io: &mut IO, metrics: &Metrics) -> bool {
    let mut sink = [0u8; 1024];
    let mut discarded = 0usize;
    while discarded <= LINGER_MAX_BYTES {
        match io.read(&mut sink).await {
            Ok(0) => return true,
            Ok(n) => {
                discarded += n;
                metrics.bytes_in.inc_by(n as u64);
            }
            Err(_) => return false,
        }
    }
    false
}

/// One of the `max_sockets` places for a lingering socket, given back on drop.
struct LingerSlot<'a> {
    metrics: &'a Metrics,
}

impl<'a> LingerSlot<'a> {
    fn take(metrics: &'a Metrics, linger: Linger) -> Option<Self> {
        if linger.duration.is_zero() {
            return None;
        }
        let max = i64::try_from(linger.max_sockets).unwrap_or(i64::MAX);
        // The gauge is the count: an atomic increment that returns the count before it.
        if metrics.lingering.inc() >= max {
            metrics.lingering.dec();
            metrics.linger_skipped.inc();
            return None;
        }
        Some(LingerSlot { metrics })
    }
}

impl Drop for LingerSlot<'_> {
    fn drop(&mut self) {
        self.metrics.lingering.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_map_to_websocket_close_codes() {
        let code = |r: u8| Ending::for_reason(ReasonCode(r)).close_code();
        assert_eq!(code(0x00), 1000, "normal disconnection");
        assert_eq!(code(0x04), 1000, "disconnect with will");
        assert_eq!(code(0x8E), 1000, "session taken over");
        assert_eq!(code(0x8B), 1001, "server shutting down");
        assert_eq!(code(0x81), 1002, "malformed packet");
        assert_eq!(code(0x82), 1002, "protocol error");
        assert_eq!(code(0x84), 1002, "unsupported protocol version");
        assert_eq!(code(0x93), 1002, "receive maximum exceeded");
        assert_eq!(code(0x94), 1002, "topic alias invalid");
        assert_eq!(code(0x87), 1008, "not authorized");
        assert_eq!(code(0x8C), 1008, "bad authentication method");
        assert_eq!(code(0x96), 1008, "message rate too high");
        assert_eq!(code(0x97), 1008, "quota exceeded");
        assert_eq!(code(0xA0), 1008, "maximum connect time");
        assert_eq!(code(0x95), 1009, "packet too large");
    }

    /// A client that never closes holds its socket for the linger and no longer (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_held_for_the_linger_only() {
        let metrics = Metrics::new();
        let (server, mut client) = tokio::io::duplex(64);
        let linger = Linger {
            duration: Duration::from_secs(2),
            max_sockets: 10,
        };
        let started = Instant::now();
        close(
            server,
            BytesMut::from(&b"bye"[..]),
            Ending::Normal,
            linger,
            &metrics,
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(metrics.lingering.get(), 0, "the slot is given back");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
    }

    /// The write side closes before the linger: the client reads everything and its end of
    /// stream, then closes, and the linger ends with it.
    #[tokio::test(start_paused = true)]
    async fn the_linger_ends_when_the_client_closes() {
        let metrics = Metrics::new();
        let (server, mut client) = tokio::io::duplex(64);
        let linger = Linger {
            duration: Duration::from_secs(2),
            max_sockets: 10,
        };
        let started = Instant::now();
        let peer = async move {
            // Keeps writing after the broker has closed; the broker reads it.
            client.write_all(&[0xC0, 0x00].repeat(100)).await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
            drop(client);
        };
        tokio::join!(
            close(
                server,
                BytesMut::from(&b"bye"[..]),
                Ending::Normal,
                linger,
                &metrics
            ),
            peer
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(metrics.bytes_in.get(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_cap_a_socket_closes_at_once() {
        let metrics = Metrics::new();
        let linger = Linger {
            duration: Duration::from_secs(2),
            max_sockets: 1,
        };
        // One socket lingers: its client never closes.
        let (first, _first_client) = tokio::io::duplex(64);
        let first_close = close(
            first,
            BytesMut::from(&b""[..]),
            Ending::Normal,
            linger,
            &metrics,
        );
        let second_close = async {
            // Once the first has its place, the second finds none.
            while metrics.lingering.get() == 0 {
                tokio::task::yield_now().await;
            }
            let (second, mut second_client) = tokio::io::duplex(64);
            let started = Instant::now();
            close(
                second,
                BytesMut::from(&b"bye"[..]),
                Ending::Normal,
                linger,
                &metrics,
            )
            .await;
            assert_eq!(
                started.elapsed(),
                Duration::ZERO,
                "no linger beyond the cap"
            );
            let mut got = Vec::new();
            second_client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye", "what was pending is still written");
        };
        tokio::join!(first_close, second_close);
        assert_eq!(metrics.linger_skipped.get(), 1);
        assert_eq!(metrics.lingering.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_too_much_is_cut_off() {
        let metrics = Metrics::new();
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let linger = Linger {
            duration: Duration::from_secs(3600),
            max_sockets: 10,
        };
        let flood = tokio::spawn(async move {
            let chunk = [0u8; 16 * 1024];
            while client.write_all(&chunk).await.is_ok() {}
        });
        close(
            server,
            BytesMut::from(&b""[..]),
            Ending::Normal,
            linger,
            &metrics,
        )
        .await;
        assert!(metrics.bytes_in.get() as usize > LINGER_MAX_BYTES);
        assert!((metrics.bytes_in.get() as usize) < LINGER_MAX_BYTES + 64 * 1024);
        flood.await.unwrap();
    }
}
