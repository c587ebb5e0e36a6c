//! The run loop: one `select!` over the connection's cancellation, the on-publish hook's
//! verdicts, a congested subscriber's drain, the socket's reads, the session's outbox and one
//! timer (keep alive or the credential's expiry); reading and decoding packets, dispatching
//! each to its stage, and flushing the writes once per wake-up.

use std::sync::Arc;

use bytes::BytesMut;
use starling_codec::{Packet, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::info;

use super::close::{Close, Outcome};
use super::publish::{next_ack, next_verdict};
use super::{Connection, Due, WRITE_HIGH_WATER};
use crate::config::Limits;
use crate::metrics::CodeLabels;
use crate::session::{Kick, Session};
use crate::transport::AsyncIo;

/// The smallest read: what an idle connection's read buffer holds while it waits.
pub(super) const READ_MIN: usize = 256;
/// The largest read. Reads that fill their room double the next one's, up to this; small
/// reads halve it again (see `next_read_size`).
const READ_MAX: usize = 8 * 1024;

impl<IO: AsyncIo> Connection<IO> {
    pub(super) async fn run(&mut self) -> Close {
        loop {
            // Retained messages owed to new subscriptions go in as the outbox has room.
            let retained_due = !self.state.retained.is_empty() && self.pump_retained();
            if self.more_queued {
                self.pump_outbox();
            }
            if !self.wbuf.is_empty() {
                if let Err(close) = self.flush().await {
                    return close;
                }
            }
            if retained_due {
                // The read stopped at its budget: other tasks run before it goes on.
                tokio::task::yield_now().await;
            }
            let ready_to_send = (self.more_queued && !self.window_full) || retained_due;
            let pressure = self.pressure.clone();
            let hook_full = self.hook_full();
            let hook_busy = self.hook.as_ref().is_some_and(|h| !h.verdicts.is_empty());
            let acks_full = self.acks_full();
            let acks_busy = self.durable_acks.as_ref().is_some_and(|a| !a.is_empty());
            // Back-pressure from the durable store: its writer is behind.
            let storage = self
                .auth
                .tenant
                .durable()
                .filter(|d| d.storage().is_congested())
                .map(|d| d.storage().clone());
            // Back-pressure from the way to the other replicas: its queue is nearly full.
            let link = self.link_paused || self.link_congested();
            let reading =
                pressure.is_none() && !hook_full && !acks_full && storage.is_none() && !link;
            let room = if reading { self.prepare_read() } else { 0 };
            let due = self.set_timer(reading);
            let needs_room = (storage.is_some() || link).then_some(&self.auth.tenant);
            tokio::select! {
                biased;
                // A child of the broker's shutdown token: cancelled by either.
                _ = self.cancel.cancelled() => return self.closed_by_broker(false),
                done = next_verdict(&mut self.hook), if hook_busy => {
                    if let Some(done) = done {
                        self.on_verdict(done);
                    }
                    if hook_full {
                        // The client's packets waited in the socket, not the client.
                        self.last_read = Instant::now();
                    }
                    // Packets already read may have waited for room.
                    if !self.rbuf.is_empty() && !self.hook_full() && !self.acks_full() {
                        if let Err(close) = self.process_input() {
                            return close;
                        }
                    }
                }
                done = next_ack(&mut self.durable_acks), if acks_busy => {
                    if let Some(done) = done {
                        self.on_committed(done);
                        // Those done by now go out with it, in one write: with a cluster each
                        // JetStream confirmation comes on its own, from its own task, so the
                        // tasks ready to confirm more run once (a yield) before the write.
                        let mut yielded = false;
                        loop {
                            while let Some(Some(done)) = futures_util::FutureExt::now_or_never(
                                next_ack(&mut self.durable_acks),
                            ) {
                                self.on_committed(done);
                            }
                            let waiting =
                                self.durable_acks.as_ref().is_some_and(|a| !a.is_empty());
                            if yielded || !waiting {
                                break;
                            }
                            tokio::task::yield_now().await;
                            yielded = true;
                        }
                    }
                    if acks_full {
                        // The client's packets waited in the socket, not the client.
                        self.last_read = Instant::now();
                    }
                    // Packets already read may have waited for room.
                    if !self.rbuf.is_empty() && !self.acks_full() && !self.hook_full() {
                        if let Err(close) = self.process_input() {
                            return close;
                        }
                    }
                }
                _ = async {
                    if let Some(tenant) = needs_room {
                        // Boxed: the wait is rare, and the connection future stays small.
                        Box::pin(wait_for_room(storage.as_ref(), link.then_some(tenant))).await;
                    }
                }, if needs_room.is_some() => {
                    self.link_paused = false;
                    // The client's packets waited in the socket, not the client.
                    self.last_read = Instant::now();
                    // Packets already read may have waited for room.
                    if !self.rbuf.is_empty() && !self.acks_full() && !self.hook_full() {
                        if let Err(close) = self.process_input() {
                            return close;
                        }
                    }
                }
                _ = wait_for_drain(&pressure), if pressure.is_some() => {
                    self.pressure = None;
                    // The client's packets waited in the socket, not the client.
                    self.last_read = Instant::now();
                }
                r = self.io.read_buf(&mut self.rbuf), if reading => match r {
                    Ok(0) => return Close::lost("connection closed by the client"),
                    Ok(n) => {
                        self.ctx.metrics.bytes_in.inc_by(n as u64);
                        self.size_next_read(n, room);
                        if let Err(close) = self.process_input() {
                            return close;
                        }
                        if std::mem::take(&mut self.fed_filling_outbox) {
                            // An outbox this read fed is half full: the tasks draining it run
                            // before the next read, so publishers do not outrun the deliveries
                            // to their subscribers.
                            tokio::task::yield_now().await;
                        }
                    }
                    Err(_) => return Close::lost("read error"),
                },
                _ = std::future::ready(()), if ready_to_send => {}
                _ = self.session.notified(), if !ready_to_send => { self.more_queued = true; }
                _ = self.timer.as_mut(), if due.is_some() => match due {
                    Some(Due::Credential) => {
                        // The token expired: 0xA0, its will is discarded and its session ends.
                        self.ctx.metrics.auth_failures.get_or_create(&CodeLabels { reason: "expired_while_connected" }).inc();
                        return Close::new(ReasonCode::MAXIMUM_CONNECT_TIME, true, Outcome::CredentialEnded, "credential expired");
                    }
                    _ => {
                        // [MQTT-3.1.2-22] nothing within one and a half keep-alive periods.
                        return Close::new(ReasonCode::KEEP_ALIVE_TIMEOUT, true, Outcome::WithWill, "keep alive timeout");
                    }
                },
            }
        }
    }

    /// Whether the queue to the other replicas is nearly full.
    fn link_congested(&self) -> bool {
        self.auth
            .tenant
            .cluster_link()
            .is_some_and(|l| l.is_congested())
    }

    /// Makes room for the next read and returns it.
    fn prepare_read(&mut self) -> usize {
        prepare_read(&mut self.rbuf, self.read_size)
    }

    /// Adapts the next read's size to this one: `n` bytes came into `room`.
    fn size_next_read(&mut self, n: usize, room: usize) {
        self.read_size = next_read_size(self.read_size, n, room);
    }

    /// Sets the timer to the next deadline and says which one it is; keep-alive only counts
    /// while the connection reads from its client.
    fn set_timer(&mut self, reading: bool) -> Option<Due> {
        let keep_alive = (reading && !self.negotiated.keep_alive.is_zero()).then(|| {
            (
                self.last_read + self.negotiated.keep_alive.mul_f32(1.5),
                Due::KeepAlive,
            )
        });
        let credential = self.credential_deadline.map(|at| (at, Due::Credential));
        let (at, due) = match (keep_alive, credential) {
            (Some(k), Some(c)) => {
                if c.0 <= k.0 {
                    c
                } else {
                    k
                }
            }
            (k, c) => k.or(c)?,
        };
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
        Some(due)
    }

    async fn flush(&mut self) -> Result<(), Close> {
        let n = self.wbuf.len();
        let write = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        };
        let result = tokio::select! {
            r = write => r,
            // A child of the broker's shutdown token: cancelled by either.
            _ = self.cancel.cancelled() => return Err(self.closed_by_broker(true)),
        };
        match result {
            Ok(()) => {
                self.ctx.metrics.bytes_out.inc_by(n as u64);
                self.wbuf.clear();
                Ok(())
            }
            Err(_) => Err(Close::lost("write error")),
        }
    }

    fn process_input(&mut self) -> Result<(), Close> {
        loop {
            if self.hook_full() || self.acks_full() {
                // Back-pressure from the on-publish hook or the store: decode more once a
                // verdict or a commit is in.
                return Ok(());
            }
            if self.link_congested() {
                // Back-pressure from the way to the other replicas: decode more once it has
                // room.
                self.link_paused = true;
                return Ok(());
            }
            let packet = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                // Counted in `starling_protocol_errors_total` once, by `finish`.
                Err(e) => return Err(Close::from_decode(&e)),
            };
            self.last_read = Instant::now();
            self.handle(packet)?;
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                // Let the loop flush before reading further: the client's reads pace our writes.
                return Ok(());
            }
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        if matches!(
            packet,
            Packet::Publish(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_)
        ) && !self.rate.allow(Instant::now())
        {
            return Err(Close::protocol(
                ReasonCode::MESSAGE_RATE_TOO_HIGH,
                "more PUBLISH, SUBSCRIBE and UNSUBSCRIBE packets per second than allowed",
            ));
        }
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                self.on_ack(a.packet_id, a.reason, false);
                Ok(())
            }
            Packet::PubRec(r) => {
                self.on_pubrec(r);
                Ok(())
            }
            Packet::PubRel(r) => {
                self.on_pubrel(r);
                Ok(())
            }
            Packet::PubComp(c) => {
                self.on_ack(c.packet_id, c.reason, true);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            Packet::Auth(a) => self.on_auth(a),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol error.
            Packet::Connect(_) => Err(Close::protocol(ReasonCode::PROTOCOL_ERROR, "MQTT-3.1.0-2")),
            // Server-to-client packets are refused by the decoder; this is a backstop.
            _ => Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "server packet from a client",
            )),
        }
    }
}

/// Makes room in `rbuf` for a read of about `read_size` bytes and returns the room. At a packet
/// boundary, a buffer with more room than that is given back first: a `BytesMut` keeps its
/// capacity, and a buffer grown from it inherits that capacity as its minimum.
fn prepare_read(rbuf: &mut BytesMut, read_size: usize) -> usize {
    if rbuf.is_empty() && rbuf.capacity() > 2 * read_size {
        *rbuf = BytesMut::new();
    }
    if rbuf.capacity() - rbuf.len() < read_size / 2 {
        rbuf.reserve(read_size);
    }
    rbuf.capacity() - rbuf.len()
}

/// The size of the read after one of `n` bytes into `room` with `read_size`: double after a read
/// that filled its room (more may be waiting in the socket), half after a small one.
fn next_read_size(read_size: usize, n: usize, room: usize) -> usize {
    if n >= room {
        (read_size * 2).min(READ_MAX)
    } else if n < read_size / 4 {
        (read_size / 2).max(READ_MIN)
    } else {
        read_size
    }
}

/// PUBLISH, SUBSCRIBE and UNSUBSCRIBE packets per second, with a burst (a token bucket).
#[derive(Debug)]
pub(super) struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub(super) fn new(limits: &Limits) -> Self {
        let burst = f64::from(limits.publish_burst)
            .max(limits.max_publish_rate)
            .max(1.0);
        RateLimiter {
            rate: limits.max_publish_rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Waits until the congested outbox drains; at the end of the grace, disconnects its session's
/// connection as a slow consumer (0x97) and stops waiting.
/// Until the durable store's writer and the queue to the other replicas (of `tenant`) have
/// room, each that is given.
async fn wait_for_room(
    storage: Option<&crate::storage::Storage>,
    tenant: Option<&Arc<crate::tenant::Tenant>>,
) {
    if let Some(s) = storage {
        s.room().await;
    }
    if let Some(l) = tenant.and_then(|t| t.cluster_link()) {
        l.room().await;
    }
}

async fn wait_for_drain(pressure: &Option<(Arc<Session>, Instant)>) {
    let Some((session, deadline)) = pressure else {
        return std::future::pending().await;
    };
    // Boxed: this wait is rare, and its timer would make every connection's task larger.
    if Box::pin(tokio::time::timeout_at(*deadline, session.drained()))
        .await
        .is_err()
    {
        info!(client_id = %session.client_id, "slow consumer: outbox full for too long");
        session.kick(Kick::SlowConsumer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_that_fill_their_room_double_the_next_up_to_the_maximum() {
        assert_eq!(next_read_size(READ_MIN, READ_MIN, READ_MIN), 2 * READ_MIN);
        assert_eq!(next_read_size(READ_MAX, READ_MAX, READ_MAX), READ_MAX);
        let mut size = READ_MIN;
        for _ in 0..20 {
            size = next_read_size(size, size, size);
        }
        assert_eq!(size, READ_MAX);
    }

    #[test]
    fn small_reads_halve_the_next_down_to_the_minimum() {
        assert_eq!(next_read_size(READ_MAX, 2, READ_MAX), READ_MAX / 2);
        assert_eq!(next_read_size(READ_MIN, 2, READ_MIN), READ_MIN);
        // A read that used a fair part of its room keeps the size.
        assert_eq!(next_read_size(4096, 2048, 4096), 4096);
    }

    #[test]
    fn an_emptied_large_read_buffer_is_given_back() {
        let mut rbuf = BytesMut::new();
        assert!(prepare_read(&mut rbuf, READ_MAX) >= READ_MAX);
        rbuf.extend_from_slice(&[0u8; 1000]);
        let frame = rbuf.split_to(1000);
        drop(frame);
        // Busy at READ_MIN now: the large buffer goes, and the next read gets a small one.
        let room = prepare_read(&mut rbuf, READ_MIN);
        assert!((READ_MIN / 2..=2 * READ_MIN).contains(&room), "room {room}");
        assert!(rbuf.capacity() <= 2 * READ_MIN, "{}", rbuf.capacity());
    }

    #[test]
    fn a_read_buffer_holding_part_of_a_packet_is_kept() {
        let mut rbuf = BytesMut::new();
        prepare_read(&mut rbuf, READ_MAX);
        rbuf.extend_from_slice(b"\x30\x0a partial");
        prepare_read(&mut rbuf, READ_MIN);
        assert_eq!(&rbuf[..], b"\x30\x0a partial");
    }
}
