//! One client connection, one file per stage:
//!
//! - [`handshake`]: CONNECT to an admitted client: limits, authentication, the session taken
//!   over or started, the CONNACK, and what the two sides agreed ([`Negotiated`]).
//! - [`run`]: the `select!` loop over cancellation, reads, the session's outbox, the hook's
//!   verdicts and the timer; reading, decoding and dispatching packets, flushing writes.
//! - [`publish`]: inbound PUBLISH: topic resolution (aliases), authorization, the on-publish
//!   hook, and the decision that routes and acknowledges it.
//! - [`reauth`]: AUTH, re-authentication with a fresh credential.
//! - [`subscribe`]: SUBSCRIBE and UNSUBSCRIBE, and the retained messages owed to new
//!   subscriptions.
//! - [`acks`]: PUBACK, PUBREC, PUBREL, PUBCOMP from the client.
//! - [`deliver`]: outbound PUBLISH: the outbox, topic aliases, packet ids, redelivery.
//! - [`close`]: how a connection ends ([`close::Close`]), its DISCONNECT, and what becomes of
//!   the session and the will.
//!
//! The task owns the socket, the read and write buffers, the per-connection protocol state
//! (topic aliases both ways, keep-alive, the client's limits) and, for its whole life, the
//! session's [`SessionState`] guard. Writes are batched into one buffer and flushed once per
//! wake-up. What outlives a connection (session ends, wills, expiry) is in
//! [`crate::session::lifecycle`].

mod acks;
mod close;
mod deliver;
mod handshake;
pub(crate) mod publish;
mod reauth;
mod run;
mod subscribe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use starling_codec::{AckProperties, Decoder, MqttString, Packet, ProtocolVersion, ReasonCode};
use tokio::sync::OwnedMutexGuard;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::auth::{Authenticated, Authenticator};
use crate::config::{Limits, ListenerKind};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::Routed;
use crate::session::{Kick, Room, Session, SessionState};
use crate::tenant::Tenant;
use crate::transport::AsyncIo;

use self::handshake::handshake;
use self::publish::{DurableAcks, HookPending};
use self::run::RateLimiter;

/// Flush the write buffer once it holds this much, even in the middle of a wake-up.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// What every connection of a listener shares.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// Protocol limits.
    pub limits: Arc<Limits>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The authentication step of this listener.
    pub auth: Arc<dyn Authenticator>,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// The listener's kind and what its connections are told when the broker shuts down.
    pub listener: Arc<ListenerInfo>,
}

/// What a connection knows of its listener (one allocation per listener, keeping the
/// connection's future small).
#[derive(Debug)]
pub struct ListenerInfo {
    /// The listener's kind, for logs.
    pub kind: ListenerKind,
    /// The Server Reference of a shutdown's DISCONNECT 0x8B (`shutdown.server_reference`).
    pub server_reference: Option<String>,
}

/// Serves one connection until it ends. Never panics on client input.
///
/// The task of an idle connection is mostly this future, so it stays small: the handshake
/// (CONNECT with its timeout, authentication, a session takeover, a refusal's CONNACK) and the
/// closing writes run in futures of their own on the heap, which exist only while they run.
/// The socket's close and linger ([`crate::transport::close`]) come last, once the session is released
/// and the will decided, so they delay nothing else.
pub async fn serve<IO>(io: IO, remote: SocketAddr, ctx: ConnectionContext)
where
    IO: AsyncIo,
{
    let Some(mut conn) = Box::pin(handshake(io, remote, ctx)).await else {
        return;
    };
    let close = conn.run().await;
    let tenant = conn.tenant().clone();
    let closing = conn.finish(close);
    tenant.close_connection();
    Box::pin(closing.close()).await;
}

struct Connection<IO> {
    io: IO,
    remote: SocketAddr,
    /// Bytes read and not yet decoded. Sized by `read_size`, and given back when it is empty and
    /// larger than reads need: an idle connection holds `READ_MIN` bytes.
    rbuf: BytesMut,
    /// Room the next read gets (`READ_MIN..=READ_MAX`).
    read_size: usize,
    wbuf: BytesMut,
    decoder: Decoder,
    /// What the CONNECT and CONNACK agreed on.
    negotiated: Negotiated,
    ctx: ConnectionContext,
    auth: Authenticated,
    session: Arc<Session>,
    /// Held for the whole connection (see the module documentation of `session`).
    state: OwnedMutexGuard<SessionState>,
    generation: u64,
    /// Cancelled to close this connection (takeover, revocation); why is in `kick_reason`.
    cancel: CancellationToken,
    kick_reason: Arc<Mutex<Kick>>,
    last_read: Instant,
    inbound_aliases: HashMap<u16, MqttString>,
    /// Copies of the topics: a message's topic would keep the message alive with its alias.
    outbound_aliases: HashMap<Box<str>, u16>,
    /// The will, until the connection ends or a re-authentication no longer allows it.
    will: Option<Arc<Message>>,
    /// When the credential expires (its `exp` plus the clock skew).
    credential_deadline: Option<Instant>,
    rate: RateLimiter,
    scratch: Vec<Routed>,
    /// The outbox may hold deliveries this connection has not taken yet.
    more_queued: bool,
    /// The last take found the in-flight window without room for the outbox's front (by count
    /// or by weight): only an acknowledgement or a new delivery changes that.
    window_full: bool,
    /// A message this connection published went to an outbox that is half full or more: the
    /// task yields before its next read.
    fed_filling_outbox: bool,
    /// Decoding stopped with packets left in the read buffer because the queue to the other
    /// replicas was nearly full: they are decoded once it has room, before reading more.
    link_paused: bool,
    /// A subscriber's outbox this connection filled to three quarters with QoS 1/2 messages,
    /// and when its grace ends: reading from the client pauses until it drains.
    pressure: Option<(Arc<Session>, Instant)>,
    /// Messages awaiting the on-publish hook's verdict; allocated with the first one.
    hook: Option<Box<HookPending>>,
    /// Acknowledgements waiting for the durable store; allocated with the first one.
    durable_acks: Option<Box<DurableAcks>>,
    /// The next deadline: keep-alive or the credential's expiry, whichever comes first. One
    /// timer for the connection's life, moved rather than re-created on every wake-up.
    timer: Pin<Box<Sleep>>,
}

/// What a CONNECT and its CONNACK agreed on for the life of the connection: the client's limits
/// and choices, after the broker's adjustments. Read by every stage; changed by none.
#[derive(Debug, Clone)]
struct Negotiated {
    /// The protocol version of the CONNECT.
    version: ProtocolVersion,
    /// Keep alive as granted (the Server Keep Alive when the broker changed it).
    keep_alive: Duration,
    /// The client's Receive Maximum: its in-flight QoS 1/2 messages from us.
    receive_max: u16,
    /// The client's Maximum Packet Size.
    max_packet: u32,
    /// The client's Topic Alias Maximum: aliases we may set on our PUBLISHes.
    topic_alias_max: u16,
    /// Request Problem Information [MQTT-3.1.2-29]: reason strings and user properties.
    problem_info: bool,
    /// The will's delay in seconds.
    will_delay: u32,
    /// The CONNECT asked for a session expiry of 0: DISCONNECT may not raise it [MQTT-3.14.2-2].
    expiry_was_zero: bool,
    /// The CONNECT's Authentication Method; AUTH is a protocol error without one.
    auth_method: Option<MqttString>,
}

/// What the connection's timer is set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// [MQTT-3.1.2-22] one and a half keep-alive periods without a packet.
    KeepAlive,
    /// The credential expires.
    Credential,
}

impl<IO: AsyncIo> Connection<IO> {
    fn tenant(&self) -> &Arc<Tenant> {
        &self.auth.tenant
    }

    /// What the in-flight window has room for: the client's Receive Maximum and
    /// `limits.max_inflight` bound the count, `limits.max_queued_bytes` the weight.
    fn window(&self) -> Room {
        let max = usize::from(
            self.negotiated
                .receive_max
                .min(self.ctx.limits.max_inflight),
        );
        let inflight = self.state.inflight();
        Room {
            messages: max.saturating_sub(inflight.len()),
            bytes: self
                .ctx
                .limits
                .max_queued_bytes
                .saturating_sub(inflight.bytes()),
            idle: inflight.is_empty(),
        }
    }

    fn send(&mut self, packet: &Packet) {
        // Within the client's Maximum Packet Size: the codec leaves out the Reason String and
        // User Properties of a packet that would exceed it [MQTT-3.1.2-24], and a packet too
        // large even then is skipped [MQTT-3.1.2-25]. Other failures are for values the codec
        // cannot represent, which the broker never builds; such a packet is skipped rather than
        // crashing the connection.
        if let Err(e) = packet.encode_within(
            self.negotiated.version,
            self.negotiated.max_packet,
            &mut self.wbuf,
        ) {
            debug!(error = %e, "packet not sent");
        }
    }

    fn ack_props(&self, reason: &'static str) -> AckProperties {
        let mut p = AckProperties::default();
        if self.negotiated.problem_info && self.negotiated.version == ProtocolVersion::V5 {
            p.reason_string = Some(MqttString::from(reason));
        }
        p
    }
}

fn v5_or_success(version: ProtocolVersion, reason: ReasonCode) -> ReasonCode {
    if version == ProtocolVersion::V5 {
        reason
    } else {
        ReasonCode::SUCCESS
    }
}

fn topic_within_limits(topic: &str, limits: &Limits) -> bool {
    topic.len() <= limits.max_topic_length && topic.split('/').count() <= limits.max_topic_depth
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task of every connection holds this future for the connection's life; the handshake
    /// and the closing writes are boxed so they do not add to it. The bound is in a debug
    /// build (release builds lay the future out smaller).
    #[test]
    fn the_connection_future_stays_small() {
        let limits = Arc::new(Limits::default());
        let metrics = Arc::new(Metrics::new());
        let tenant = Tenant::new(
            "t",
            (*limits).clone(),
            metrics.clone(),
            crate::tasks::Tasks::default(),
        );
        let ctx = ConnectionContext {
            limits,
            metrics,
            auth: Arc::new(crate::auth::NoAuth::new(tenant)),
            shutdown: CancellationToken::new(),
            listener: Arc::new(ListenerInfo {
                kind: ListenerKind::Mqtt,
                server_reference: None,
            }),
        };
        let (io, _client) = tokio::io::duplex(64);
        let remote = SocketAddr::from(([127, 0, 0, 1], 0));
        let future = serve(io, remote, ctx);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1280, "the connection future is {size} bytes");
    }
}
