//! One client connection: CONNECT, then one `select!` loop over cancellation, reads, the
//! session's outbox and the keep-alive deadline.
//!
//! The task owns the socket, the read and write buffers, the per-connection protocol state
//! (topic aliases both ways, keep-alive, the client's limits) and, for its whole life, the
//! session's [`SessionState`] guard. Writes are batched into one buffer and flushed once per
//! wake-up.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use bytes::BytesMut;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use parking_lot::Mutex;
use smallvec::SmallVec;
use starling_codec::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder,
    Direction, Disconnect, DisconnectProperties, MqttString, Packet, ProtocolVersion, PubAck,
    PubComp, PubRec, PubRel, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, UnsubAck, Unsubscribe, topic,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::{Authenticated, Authenticator, ConnectInfo, Credential, Permissions};
use crate::config::{Limits, ListenerKind};
use crate::hook::Verdict;
use crate::message::{Delivery, Message};
use crate::metrics::{CodeLabels, DropReason, Metrics, QosLabels};
use crate::retained::RetainedCursor;
use crate::router::{Routed, SubscribeError};
use crate::session::{
    Inflight, Kick, Offered, PendingRetained, PendingWill, Session, SessionState,
    SubscriptionRecord,
};
use crate::tenant::{RetainedFull, Tenant, split_shared};
use crate::transport::close::{Ending, Linger};
use crate::transport::{self, AsyncIo};

/// Flush the write buffer once it holds this much, even in the middle of a wake-up.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Room for CONNECT in a new connection's read buffer (a larger CONNECT gets what it needs).
const CONNECT_READ: usize = 512;
/// The smallest read: what an idle connection's read buffer holds while it waits.
const READ_MIN: usize = 256;
/// The largest read. Reads that fill their room double the next one's, up to this; small
/// reads halve it again (see `next_read_size`).
const READ_MAX: usize = 8 * 1024;
/// Deliveries taken from the outbox at once (into a batch on the stack).
const TAKE_BATCH: usize = 256;
/// How often a takeover repeats its request while the old connection is still closing.
const TAKEOVER_RETRY: Duration = Duration::from_millis(100);
/// Retained messages read from the store at once for one subscription (they wait in the
/// session's state until the outbox has room).
const RETAINED_BATCH: usize = 64;
/// Retained topics looked at per wake-up, over every subscription owed retained messages:
/// a wildcard filter over a large store is read in slices, with other tasks running between.
const RETAINED_BUDGET: usize = 1024;

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
    /// The listener's kind, for logs.
    pub listener: ListenerKind,
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy)]
struct Close {
    /// The reason code sent in DISCONNECT (v5) and logged.
    reason: ReasonCode,
    /// Send a DISCONNECT packet (v5 only).
    send: bool,
    /// What it means for the will and the session.
    outcome: Outcome,
    /// What happened, for the log line.
    what: &'static str,
}

/// What the end of a connection means for its will and its session. Every way a connection
/// ends maps to one of these, and the will follows from it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A normal DISCONNECT (any reason but 0x04) [MQTT-3.1.2-10], or a re-authentication the
    /// broker refused: the will is discarded, the session stays for its expiry.
    WithoutWill,
    /// Anything that is no fault of the credential: the network, a protocol error, keep alive,
    /// a takeover, a slow consumer, shutdown, DISCONNECT 0x04. The will is published
    /// [MQTT-3.1.2-8] (after its delay), the session stays for its expiry.
    WithWill,
    /// The credential no longer holds: it expired, was revoked, its signing key left the key
    /// set, its tenant was removed. The will is discarded, the session ends with the
    /// connection, and the messages it waits on the on-publish hook for are dropped.
    CredentialEnded,
}

impl Close {
    fn protocol(reason: ReasonCode, what: &'static str) -> Self {
        Close {
            reason,
            send: true,
            outcome: Outcome::WithWill,
            what,
        }
    }

    fn from_decode(e: &DecodeError) -> Self {
        Close::protocol(e.reason_code(), e.rule())
    }

    /// How the socket ends (a WebSocket's close code): by the reason of a close the broker
    /// decided; normally when the client ended it.
    fn ending(&self) -> Ending {
        if self.reason == ReasonCode::SERVER_SHUTTING_DOWN {
            Ending::GoingAway
        } else if self.send {
            Ending::for_reason(self.reason)
        } else {
            Ending::Normal
        }
    }
}

/// Serves one connection until it ends. Never panics on client input.
///
/// The task of an idle connection is mostly this future, so it stays small: the handshake
/// (CONNECT with its timeout, authentication, a session takeover, a refusal's CONNACK) and the
/// closing writes run in futures of their own on the heap, which exist only while they run.
/// The socket's close and linger ([`transport::close`]) come last, once the session is released
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

/// Reads and answers CONNECT; the connection, ready to run, when it was accepted.
async fn handshake<IO>(
    mut io: IO,
    remote: SocketAddr,
    ctx: ConnectionContext,
) -> Option<Connection<IO>>
where
    IO: AsyncIo,
{
    // Room for a typical CONNECT; the decoder reserves more for a larger one.
    let mut rbuf = BytesMut::with_capacity(CONNECT_READ);
    let mut decoder = Decoder::new(Direction::ToServer, ctx.limits.max_packet_size);
    let read = tokio::select! {
        r = tokio::time::timeout(ctx.limits.connect_timeout(), read_connect(&mut io, &mut decoder, &mut rbuf, &ctx.metrics)) => r,
        _ = ctx.shutdown.cancelled() => return None,
    };
    let connect = match read {
        Ok(Ok(c)) => c,
        Ok(Err(ReadConnectError::Io)) => return None,
        Ok(Err(ReadConnectError::Decode(e, level))) => {
            ctx.metrics
                .connects_refused
                .get_or_create(&CodeLabels {
                    reason: "malformed_connect",
                })
                .inc();
            debug!(%remote, reason = e.reason_code().0, rule = e.rule(), "invalid CONNECT");
            let reason = e.reason_code();
            let connack = refusal_connack_version(level, reason).map(|version| {
                encode_connack(version, reason, ConnAckProperties::default(), u32::MAX)
            });
            Box::pin(close_refused(io, connack.unwrap_or_default(), reason, &ctx)).await;
            return None;
        }
        Err(_elapsed) => {
            ctx.metrics
                .connects_refused
                .get_or_create(&CodeLabels {
                    reason: "connect_timeout",
                })
                .inc();
            debug!(%remote, "no CONNECT within the connect timeout");
            Box::pin(close_refused(
                io,
                BytesMut::new(),
                ReasonCode::PROTOCOL_ERROR,
                &ctx,
            ))
            .await;
            return None;
        }
    };
    let version = connect.protocol;
    let started = match accept_connect(remote, &ctx, &connect).await {
        Ok(s) => s,
        Err(refusal) => {
            ctx.metrics
                .connects_refused
                .get_or_create(&CodeLabels { reason: refusal.1 })
                .inc();
            info!(
                client_id = connect.client_id.as_str(),
                %remote,
                listener = ctx.listener.as_str(),
                protocol = ?version,
                reason = format_args!("0x{:02X}", refusal.0.0),
                why = refusal.1,
                "connect refused"
            );
            let mut props = ConnAckProperties::default();
            if connect.properties.request_problem_information != Some(0) {
                props.reason_string = Some(MqttString::from(refusal.1));
            }
            // Without the reason string when it would not fit the client's limit [MQTT-3.2.2-19].
            let max = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
            let connack = encode_connack(version, refusal.0, props, max);
            drop(connect);
            Box::pin(close_refused(io, connack, refusal.0, &ctx)).await;
            return None;
        }
    };
    // The CONNECT is done with: its buffer goes back with it unless more bytes came behind it.
    drop(connect);
    if rbuf.is_empty() {
        rbuf = BytesMut::new();
    }
    let mut ctx = ctx;
    ctx.limits = started.limits;
    decoder.set_max_packet_size(ctx.limits.max_packet_size);
    let ctx_limits = ctx.limits.clone();
    let mut conn = Connection {
        io,
        remote,
        rbuf,
        read_size: READ_MIN,
        // Grows on demand and keeps its size while the connection is busy.
        wbuf: BytesMut::new(),
        decoder,
        version,
        ctx,
        auth: started.auth,
        session: started.session,
        state: started.state,
        generation: started.generation,
        cancel: started.cancel,
        kick_reason: started.kick_reason,
        keep_alive: started.keep_alive,
        last_read: Instant::now(),
        client_receive_max: started.client_receive_max,
        client_max_packet: started.client_max_packet,
        client_topic_alias_max: started.client_topic_alias_max,
        problem_info: started.problem_info,
        inbound_aliases: HashMap::new(),
        outbound_aliases: HashMap::new(),
        will: started.will,
        will_delay: started.will_delay,
        connect_expiry_was_zero: started.connect_expiry_was_zero,
        auth_method: started.auth_method,
        credential_deadline: None,
        rate: RateLimiter::new(&ctx_limits),
        scratch: Vec::new(),
        more_queued: true,
        fed_filling_outbox: false,
        pressure: None,
        hook: None,
        timer: Box::pin(tokio::time::sleep_until(Instant::now())),
    };
    conn.credential_deadline = credential_deadline(&conn.auth);
    conn.wbuf.extend_from_slice(&started.connack);
    conn.resend_inflight();
    Some(conn)
}

#[derive(Debug)]
enum ReadConnectError {
    Io,
    /// The CONNECT is invalid; the protocol level byte, when it arrived.
    Decode(DecodeError, Option<u8>),
}

async fn read_connect<IO: AsyncRead + Unpin>(
    io: &mut IO,
    decoder: &mut Decoder,
    rbuf: &mut BytesMut,
    metrics: &Metrics,
) -> Result<Box<Connect>, ReadConnectError> {
    loop {
        let level = peek_protocol_level(rbuf);
        match decoder.decode(rbuf) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            // The decoder accepts nothing but CONNECT first [MQTT-3.1.0-1]; this is a backstop.
            Ok(Some(_)) => return Err(ReadConnectError::Io),
            Ok(None) => {}
            Err(e) => return Err(ReadConnectError::Decode(e, level)),
        }
        rbuf.reserve(CONNECT_READ);
        match io.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(ReadConnectError::Io),
            Ok(n) => {
                metrics.bytes_in.inc_by(n as u64);
            }
        }
    }
}

/// The protocol level byte of a CONNECT at the start of `buf`, when enough of it arrived.
fn peek_protocol_level(buf: &[u8]) -> Option<u8> {
    let mut i = 1;
    // Skip the remaining length (1 to 4 bytes).
    while *buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    i += 1;
    let name_len = usize::from(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
    buf.get(i + 2 + name_len).copied()
}

/// The form of the CONNACK refusing an invalid CONNECT whose protocol level byte is `level`, or
/// none when the connection just closes.
fn refusal_connack_version(level: Option<u8>, reason: ReasonCode) -> Option<ProtocolVersion> {
    match level {
        // [MQTT-3.1.2-2] an unsupported protocol version gets 0x84 and the connection closes,
        // in the form the client reads: the 5.0 CONNACK for level 5 and later, the 3.1.1 one
        // (return code 0x01, unacceptable protocol level) for earlier and unknown levels. The
        // high bit (Mosquitto's bridge flag) is not part of the level.
        Some(l) if reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION && l & 0x7F >= 5 => {
            Some(ProtocolVersion::V5)
        }
        _ if reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => Some(ProtocolVersion::V3_1_1),
        Some(5) => Some(ProtocolVersion::V5),
        // 3.1.1 has return codes only for some refusals ([MQTT-3.1.3-8] identifier rejected),
        // otherwise the connection just closes.
        Some(4) if matches!(reason.0, 0x85..=0x87) => Some(ProtocolVersion::V3_1_1),
        Some(3) if matches!(reason.0, 0x85..=0x87) => Some(ProtocolVersion::V3_1),
        _ => None,
    }
}

/// A refusing CONNACK, encoded within the client's Maximum Packet Size `max`.
fn encode_connack(
    version: ProtocolVersion,
    reason: ReasonCode,
    properties: ConnAckProperties,
    max: u32,
) -> BytesMut {
    let mut buf = BytesMut::new();
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties,
    });
    if let Err(e) = packet.encode_within(version, max, &mut buf) {
        debug!(error = %e, "refusing CONNACK not sent");
    }
    buf
}

/// Ends a connection refused before it was accepted: `pending` (its CONNACK, if any) is written
/// and the socket closed with a linger ([`transport::close`]).
async fn close_refused<IO: AsyncIo>(
    io: IO,
    pending: BytesMut,
    reason: ReasonCode,
    ctx: &ConnectionContext,
) {
    let ending = Ending::for_reason(reason);
    transport::close::close(io, pending, ending, linger(&ctx.limits), &ctx.metrics).await;
}

/// The linger of a closing connection of a listener with `limits`.
fn linger(limits: &Limits) -> Linger {
    Linger {
        duration: limits.close_linger(),
        max_sockets: limits.max_lingering,
    }
}

/// A CONNECT that was accepted: the session is attached and the CONNACK is encoded.
struct Started {
    /// The connection's limits: its listener's, tightened by its tenant's.
    limits: Arc<Limits>,
    auth: Authenticated,
    session: Arc<Session>,
    state: OwnedMutexGuard<SessionState>,
    generation: u64,
    cancel: CancellationToken,
    kick_reason: Arc<Mutex<Kick>>,
    keep_alive: Duration,
    client_receive_max: u16,
    client_max_packet: u32,
    client_topic_alias_max: u16,
    problem_info: bool,
    will: Option<Arc<Message>>,
    will_delay: u32,
    connect_expiry_was_zero: bool,
    auth_method: Option<MqttString>,
    connack: BytesMut,
}

type Refused = (ReasonCode, &'static str);

async fn accept_connect(
    remote: SocketAddr,
    ctx: &ConnectionContext,
    connect: &Connect,
) -> Result<Started, Refused> {
    let limits = &ctx.limits;
    let version = connect.protocol;
    // Lengths first, before any work on the credential.
    if connect.client_id.as_str().len() > limits.max_client_id_length {
        return Err((
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client_id_too_long",
        ));
    }
    if connect
        .username
        .as_ref()
        .is_some_and(|u| u.as_str().len() > limits.max_username_length)
        || connect
            .password
            .as_ref()
            .is_some_and(|p| p.len() > limits.max_password_length)
    {
        return Err((ReasonCode::BAD_USER_NAME_OR_PASSWORD, "credential_too_long"));
    }
    let auth = ctx
        .auth
        .authenticate(&ConnectInfo {
            connect,
            listener: ctx.listener,
            remote,
        })
        .map_err(|r| (r.reason, r.label))?;
    // From here on the tenant's limits apply: the listener's, tightened by the tenant's own.
    let limits = auth.tenant.limits.for_connection(&ctx.limits);
    if connect.client_id.as_str().len() > limits.max_client_id_length {
        return Err((
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client_id_too_long",
        ));
    }

    // Client identifier [MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.1.3-8].
    let mut assigned = None;
    let client_id: String = match (&auth.bound_client_id, connect.client_id.as_str()) {
        (Some(bound), "") => {
            assigned = Some(bound.clone());
            bound.clone()
        }
        (Some(bound), given) if bound != given => {
            return Err((
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "client_id_mismatch",
            ));
        }
        (_, "") => {
            if version != ProtocolVersion::V5 && !connect.clean_start {
                // [MQTT-3.1.3-8] a zero-length client id needs CleanSession=1 in 3.1.1.
                return Err((ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "empty_client_id"));
            }
            let id = generate_client_id();
            assigned = Some(id.clone());
            id
        }
        (_, given) => given.to_string(),
    };
    if let Some(will) = &connect.will {
        if topic::is_share_namespace(will.topic.as_str()) {
            return Err((ReasonCode::TOPIC_NAME_INVALID, "will_topic_invalid"));
        }
        if !auth.permissions.may_publish(will.topic.as_str()) {
            return Err((ReasonCode::NOT_AUTHORIZED, "will_not_authorized"));
        }
        if !topic_within_limits(will.topic.as_str(), &limits) {
            return Err((ReasonCode::TOPIC_NAME_INVALID, "will_topic_too_long"));
        }
    }
    let tenant = auth.tenant.clone();
    if !tenant.try_open_connection() {
        return Err((ReasonCode::QUOTA_EXCEEDED, "tenant_connection_limit"));
    }

    // Session Expiry Interval: 3.1.1 CleanSession=0 keeps the session without end.
    let asked_expiry = match version {
        ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        _ if connect.clean_start => 0,
        _ => u32::MAX,
    };
    let expiry = asked_expiry.min(limits.max_session_expiry_secs);

    // Take the session over, or start one.
    // A child of the broker's shutdown token, so the connection waits on one token for both.
    let cancel = ctx.shutdown.child_token();
    let kick_reason = Arc::new(Mutex::new(Kick::TakenOver));
    let (session, mut state, present) = loop {
        let (session, existed) = tenant.session_or_insert(&client_id);
        let state = if existed {
            acquire_taking_over(&session).await
        } else {
            session.state.clone().lock_owned().await
        };
        if state.ended {
            // The session ended while we waited; it is gone from the registry: start again.
            continue;
        }
        if connect.clean_start && existed {
            // [MQTT-3.1.2-4] Clean Start discards the existing session.
            end_session(&tenant, &session, state, SessionEnd::Closed);
            continue;
        }
        break (session, state, existed);
    };
    // [MQTT-3.1.3-9] a new connection before the will delay passed cancels the will.
    if let Some(pending) = state.pending_will.take() {
        pending.cancel.cancel();
    }
    if present {
        // Before anything is sent: the session keeps only what this credential allows.
        recheck_session(&tenant, &session, &mut state, &*auth.permissions);
    }
    state.expiry_interval = expiry;
    let generation = session.attach(cancel.clone(), kick_reason.clone());
    session.set_credential(auth.credential.clone());
    if !ctx.auth.holds(&auth) {
        // Revoked (or its key retired) since it was checked: the sweep that came with that
        // change may have missed this session, which was not attached yet. It ends now.
        session.kick(Kick::Revoked);
    }

    // Keep alive, with Server Keep Alive in v5 [MQTT-3.1.2-21].
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if version == ProtocolVersion::V5 {
        let min = limits.min_keep_alive_secs;
        let max = limits.max_keep_alive_secs;
        let mut ka = keep_alive;
        if min > 0 && ka < min && ka != 0 {
            ka = min;
        }
        if min > 0 && ka == 0 {
            ka = min.max(if max > 0 { max } else { min });
        }
        if max > 0 && (ka == 0 || ka > max) {
            ka = max;
        }
        if ka != keep_alive {
            server_keep_alive = Some(ka);
            keep_alive = ka;
        }
    }

    let will = connect.will.as_ref().map(|w| {
        let props = PublishProperties {
            payload_format_indicator: w.properties.payload_format_indicator,
            message_expiry_interval: w.properties.message_expiry_interval,
            response_topic: w.properties.response_topic.clone(),
            correlation_data: w.properties.correlation_data.clone(),
            user_properties: w.properties.user_properties.clone(),
            content_type: w.properties.content_type.clone(),
            ..PublishProperties::default()
        };
        // A copy: the CONNECT's buffer goes when the handshake is done.
        Arc::new(Message::new(
            w.topic.as_str(),
            &w.payload,
            w.qos,
            w.retain,
            &props,
            props
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
            Some(session.client_id.clone()),
        ))
    });
    let will_delay = connect
        .will
        .as_ref()
        .and_then(|w| w.properties.will_delay_interval)
        .unwrap_or(0);

    let mut props = ConnAckProperties::default();
    if version == ProtocolVersion::V5 {
        props.receive_maximum = Some(limits.receive_maximum);
        props.maximum_packet_size = Some(limits.max_packet_size);
        props.topic_alias_maximum = Some(limits.topic_alias_maximum);
        props.retain_available = None; // retained messages are available (the default)
        props.assigned_client_identifier = assigned.map(MqttString::from);
        props.server_keep_alive = server_keep_alive;
        if expiry != asked_expiry {
            props.session_expiry_interval = Some(expiry);
        }
        props.authentication_method = connect.properties.authentication_method.clone();
    }
    let mut connack = BytesMut::new();
    let packet = Packet::ConnAck(ConnAck {
        // [MQTT-3.2.2-2] session present only when a session is resumed.
        session_present: present && !connect.clean_start,
        reason: ReasonCode::SUCCESS,
        properties: props,
    });
    // Within the client's Maximum Packet Size [MQTT-3.1.2-24]; a CONNACK that cannot fit it is
    // not sent [MQTT-3.1.2-25].
    let max = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
    if let Err(e) = packet.encode_within(version, max, &mut connack) {
        debug!(error = %e, "CONNACK not sent");
    }

    ctx.metrics.connects.inc();
    ctx.metrics.connections.inc();
    info!(
        client_id = %session.client_id,
        %remote,
        listener = ctx.listener.as_str(),
        protocol = ?version,
        tenant = %tenant.name,
        session_present = present,
        keep_alive,
        "connected"
    );
    Ok(Started {
        limits,
        auth,
        session,
        state,
        generation,
        cancel,
        kick_reason,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        client_receive_max: connect.properties.receive_maximum.unwrap_or(u16::MAX),
        client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
        client_topic_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
        problem_info: connect.properties.request_problem_information != Some(0),
        will,
        will_delay,
        connect_expiry_was_zero: asked_expiry == 0,
        // A copy: a slice would keep the whole CONNECT buffer for the life of the connection.
        auth_method: connect
            .properties
            .authentication_method
            .as_ref()
            .map(|m| MqttString::from(m.as_str().to_string())),
        connack,
    })
}

/// Waits for the connection serving `session` to close, asking it again and again.
async fn acquire_taking_over(session: &Arc<Session>) -> OwnedMutexGuard<SessionState> {
    loop {
        session.kick(Kick::TakenOver);
        tokio::select! {
            guard = session.state.clone().lock_owned() => return guard,
            _ = tokio::time::sleep(TAKEOVER_RETRY) => {}
        }
    }
}

fn generate_client_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let n: u128 = rng.random();
    format!("starling-{n:032x}")
}

fn topic_within_limits(topic: &str, limits: &Limits) -> bool {
    topic.len() <= limits.max_topic_length && topic.split('/').count() <= limits.max_topic_depth
}

// === impl Connection ===

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
    version: ProtocolVersion,
    ctx: ConnectionContext,
    auth: Authenticated,
    session: Arc<Session>,
    /// Held for the whole connection (see the module documentation of `session`).
    state: OwnedMutexGuard<SessionState>,
    generation: u64,
    /// Cancelled to close this connection (takeover, revocation); why is in `kick_reason`.
    cancel: CancellationToken,
    kick_reason: Arc<Mutex<Kick>>,
    keep_alive: Duration,
    last_read: Instant,
    client_receive_max: u16,
    client_max_packet: u32,
    client_topic_alias_max: u16,
    /// Request Problem Information [MQTT-3.1.2-29].
    problem_info: bool,
    inbound_aliases: HashMap<u16, MqttString>,
    /// Copies of the topics: a message's topic would keep the message alive with its alias.
    outbound_aliases: HashMap<Box<str>, u16>,
    will: Option<Arc<Message>>,
    will_delay: u32,
    connect_expiry_was_zero: bool,
    /// The CONNECT's Authentication Method; AUTH is a protocol error without one.
    auth_method: Option<MqttString>,
    /// When the credential expires (its `exp` plus the clock skew).
    credential_deadline: Option<Instant>,
    rate: RateLimiter,
    scratch: Vec<Routed>,
    /// The outbox may hold deliveries this connection has not taken yet.
    more_queued: bool,
    /// A message this connection published went to an outbox that is half full or more: the
    /// task yields before its next read.
    fed_filling_outbox: bool,
    /// A subscriber's outbox this connection filled to three quarters with QoS 1/2 messages,
    /// and when its grace ends: reading from the client pauses until it drains.
    pressure: Option<(Arc<Session>, Instant)>,
    /// Messages awaiting the on-publish hook's verdict; allocated with the first one.
    hook: Option<Box<HookPending>>,
    /// The next deadline: keep-alive or the credential's expiry, whichever comes first. One
    /// timer for the connection's life, moved rather than re-created on every wake-up.
    timer: Pin<Box<Sleep>>,
}

/// What the connection's timer is set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// [MQTT-3.1.2-22] one and a half keep-alive periods without a packet.
    KeepAlive,
    /// The credential expires.
    Credential,
}

/// The verdict on one message, with what its acknowledgement needs.
struct HookDone {
    verdict: Verdict,
    qos: QoS,
    packet_id: u16,
    /// What the message counted in [`HookPending::bytes`].
    weight: usize,
}

/// A connection's messages awaiting the on-publish hook, in the order they were published.
struct HookPending {
    verdicts: FuturesOrdered<Pin<Box<dyn Future<Output = HookDone> + Send>>>,
    /// Packet ids of QoS 2 messages among them: a resent PUBLISH waits for the same verdict.
    qos2: HashSet<u16>,
    /// Reading from the client pauses while this many are pending.
    cap: usize,
    /// Their weight ([`Message::weight`]).
    bytes: usize,
    /// Reading from the client pauses while they weigh this much.
    max_bytes: usize,
}

impl HookPending {
    fn is_full(&self) -> bool {
        self.verdicts.len() >= self.cap || self.bytes >= self.max_bytes
    }
}

/// The next verdict, or never when none is pending.
async fn next_verdict(hook: &mut Option<Box<HookPending>>) -> Option<HookDone> {
    match hook {
        Some(h) if !h.verdicts.is_empty() => h.verdicts.next().await,
        _ => std::future::pending().await,
    }
}

impl<IO: AsyncIo> Connection<IO> {
    fn tenant(&self) -> &Arc<Tenant> {
        &self.auth.tenant
    }

    fn window(&self) -> usize {
        let max = usize::from(self.client_receive_max.min(self.ctx.limits.max_inflight));
        max.saturating_sub(self.state.inflight.len())
    }

    async fn run(&mut self) -> Close {
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
            let ready_to_send = (self.more_queued && self.window() > 0) || retained_due;
            let pressure = self.pressure.clone();
            let hook_full = self.hook_full();
            let hook_busy = self.hook.as_ref().is_some_and(|h| !h.verdicts.is_empty());
            let reading = pressure.is_none() && !hook_full;
            let room = if reading { self.prepare_read() } else { 0 };
            let due = self.set_timer(reading);
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
                    if !self.rbuf.is_empty() && !self.hook_full() {
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
                    Ok(0) => return Close { reason: ReasonCode::UNSPECIFIED_ERROR, send: false, outcome: Outcome::WithWill, what: "connection closed by the client" },
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
                    Err(_) => return Close { reason: ReasonCode::UNSPECIFIED_ERROR, send: false, outcome: Outcome::WithWill, what: "read error" },
                },
                _ = std::future::ready(()), if ready_to_send => {}
                _ = self.session.notified(), if !ready_to_send => { self.more_queued = true; }
                _ = self.timer.as_mut(), if due.is_some() => match due {
                    Some(Due::Credential) => {
                        // The token expired: 0xA0, its will is discarded and its session ends.
                        self.ctx.metrics.auth_failures.get_or_create(&CodeLabels { reason: "expired_while_connected" }).inc();
                        return Close { reason: ReasonCode::MAXIMUM_CONNECT_TIME, send: true, outcome: Outcome::CredentialEnded, what: "credential expired" };
                    }
                    _ => {
                        // [MQTT-3.1.2-22] nothing within one and a half keep-alive periods.
                        return Close { reason: ReasonCode::KEEP_ALIVE_TIMEOUT, send: true, outcome: Outcome::WithWill, what: "keep alive timeout" };
                    }
                },
            }
        }
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
        let keep_alive = (reading && !self.keep_alive.is_zero()).then(|| {
            (
                self.last_read + self.keep_alive.mul_f32(1.5),
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

    /// How the connection ends when its token is cancelled: the broker shuts down (the token's
    /// parent), or a takeover, a slow-consumer verdict or the end of its credential kicked it
    /// (why is in `kick_reason`). The same whether or not the broker was writing to the client
    /// then; only the DISCONNECT packet is left out mid-write.
    fn closed_by_broker(&self, writing: bool) -> Close {
        let kick = *self.kick_reason.lock();
        if self.ctx.shutdown.is_cancelled() && !kick.ends_credential() {
            return Close {
                reason: ReasonCode::SERVER_SHUTTING_DOWN,
                send: !writing,
                outcome: Outcome::WithWill,
                what: "server shutting down",
            };
        }
        Close {
            reason: kick.reason(),
            send: !writing,
            outcome: if kick.ends_credential() {
                Outcome::CredentialEnded
            } else {
                Outcome::WithWill
            },
            what: kick.describe(),
        }
    }

    /// What the end of the connection means, decided once the session is detached from it:
    /// a kick that ended the credential while the connection was closing for another reason,
    /// and a credential that expired meanwhile, count too.
    fn outcome(&self, outcome: Outcome) -> Outcome {
        let kicked = self.cancel.is_cancelled() && self.kick_reason.lock().ends_credential();
        let expired = self
            .credential_deadline
            .is_some_and(|at| at <= Instant::now());
        if kicked || expired {
            Outcome::CredentialEnded
        } else {
            outcome
        }
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
            Err(_) => Err(Close {
                reason: ReasonCode::UNSPECIFIED_ERROR,
                send: false,
                outcome: Outcome::WithWill,
                what: "write error",
            }),
        }
    }

    fn process_input(&mut self) -> Result<(), Close> {
        loop {
            if self.hook_full() {
                // Back-pressure from the on-publish hook: decode more once a verdict is in.
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

    fn send(&mut self, packet: &Packet) {
        // Within the client's Maximum Packet Size: the codec leaves out the Reason String and
        // User Properties of a packet that would exceed it [MQTT-3.1.2-24], and a packet too
        // large even then is skipped [MQTT-3.1.2-25]. Other failures are for values the codec
        // cannot represent, which the broker never builds; such a packet is skipped rather than
        // crashing the connection.
        if let Err(e) = packet.encode_within(self.version, self.client_max_packet, &mut self.wbuf) {
            debug!(error = %e, "packet not sent");
        }
    }

    fn ack_props(&self, reason: &'static str) -> AckProperties {
        let mut p = AckProperties::default();
        if self.problem_info && self.version == ProtocolVersion::V5 {
            p.reason_string = Some(MqttString::from(reason));
        }
        p
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        let metrics = self.ctx.metrics.clone();
        metrics
            .messages_in
            .get_or_create(&QosLabels { qos: p.qos as u8 })
            .inc();
        // Topic aliases [MQTT-3.3.2-7..12].
        let topic = match p.properties.topic_alias {
            Some(alias) => {
                if alias == 0 || alias > self.ctx.limits.topic_alias_maximum {
                    return Err(Close::protocol(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        "MQTT-3.3.2-9",
                    ));
                }
                if p.topic.as_str().is_empty() {
                    match self.inbound_aliases.get(&alias) {
                        Some(t) => t.clone(),
                        None => {
                            return Err(Close::protocol(
                                ReasonCode::PROTOCOL_ERROR,
                                "unknown topic alias",
                            ));
                        }
                    }
                } else {
                    // A copy: a slice would keep the read buffer it came in for as long as the
                    // alias lives.
                    self.inbound_aliases
                        .insert(alias, MqttString::from(p.topic.as_str().to_string()));
                    p.topic.clone()
                }
            }
            None if p.topic.as_str().is_empty() => {
                return Err(Close::protocol(ReasonCode::PROTOCOL_ERROR, "MQTT-3.3.2-1"));
            }
            None => p.topic.clone(),
        };
        let packet_id = p.packet_id.unwrap_or(0);
        let awaiting_hook = self.hook.as_ref().map_or(0, |h| h.qos2.len());
        if p.qos == QoS::ExactlyOnce
            && self
                .hook
                .as_ref()
                .is_some_and(|h| h.qos2.contains(&packet_id))
        {
            // Resent while the hook decides: the verdict answers both [MQTT-4.3.3-10].
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce && self.state.incoming_qos2.contains(&packet_id) {
            // A resent QoS 2 PUBLISH we already own: acknowledge again, deliver once [MQTT-4.3.3-10].
            self.send(&Packet::PubRec(PubRec {
                packet_id,
                reason: ReasonCode::SUCCESS,
                properties: AckProperties::default(),
            }));
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce
            && self.state.incoming_qos2.len() + awaiting_hook
                >= usize::from(self.ctx.limits.receive_maximum)
        {
            // [MQTT-3.3.4-9] more unacknowledged QoS 2 than our Receive Maximum.
            return Err(Close::protocol(
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                "MQTT-3.3.4-9",
            ));
        }
        let refusal = if !topic_within_limits(topic.as_str(), &self.ctx.limits) {
            Some((
                ReasonCode::TOPIC_NAME_INVALID,
                "topic exceeds the length or depth limit",
            ))
        } else if topic::is_share_namespace(topic.as_str()) {
            // No filter may be routed to these (a shared subscription cannot nest).
            Some((
                ReasonCode::TOPIC_NAME_INVALID,
                "topic names starting with $share/ are reserved for shared subscriptions",
            ))
        } else if !self.auth.permissions.may_publish(topic.as_str()) {
            Some((
                ReasonCode::NOT_AUTHORIZED,
                "not authorized to publish to this topic",
            ))
        } else {
            None
        };
        if let Some((reason, why)) = refusal {
            metrics.count_drop(DropReason::not_authorized);
            let properties = self.ack_props(why);
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(&Packet::PubAck(PubAck {
                    packet_id,
                    reason: v5_or_success(self.version, reason),
                    properties,
                })),
                QoS::ExactlyOnce => self.send(&Packet::PubRec(PubRec {
                    packet_id,
                    reason: v5_or_success(self.version, reason),
                    properties,
                })),
            }
            return Ok(());
        }
        // Copied out of the read buffer once, here; every delivery shares the copy.
        let message = Arc::new(Message::new(
            topic.as_str(),
            &p.payload,
            p.qos,
            p.retain,
            &p.properties,
            p.properties
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
            Some(self.session.client_id.clone()),
        ));
        if let Some(hook) = self.auth.tenant.hook() {
            // Nothing is delivered, retained or acknowledged before the hook's verdict.
            let weight = message.weight();
            let verdict = hook.check(
                message,
                self.session.client_id.clone(),
                self.auth.credential.as_ref().map(|c| c.jti.clone()),
            );
            let qos = p.qos;
            let pending = self.hook.get_or_insert_with(|| {
                Box::new(HookPending {
                    verdicts: FuturesOrdered::new(),
                    qos2: HashSet::new(),
                    cap: 1,
                    bytes: 0,
                    max_bytes: 1,
                })
            });
            pending.cap = hook.max_pending_per_connection();
            pending.max_bytes = hook.max_pending_bytes_per_connection();
            pending.bytes += weight;
            if qos == QoS::ExactlyOnce {
                pending.qos2.insert(packet_id);
            }
            pending.verdicts.push_back(Box::pin(async move {
                HookDone {
                    verdict: verdict.await,
                    qos,
                    packet_id,
                    weight,
                }
            }));
            return Ok(());
        }
        self.deliver(message, p.qos, packet_id);
        Ok(())
    }

    /// Whether reading from the client waits for the on-publish hook.
    fn hook_full(&self) -> bool {
        self.hook.as_ref().is_some_and(|h| h.is_full())
    }

    /// Applies the on-publish hook's verdict on one message: deliver and acknowledge it, or
    /// acknowledge it with 0x87 (the hook refused it) or 0x80 (the hook failed).
    fn on_verdict(&mut self, done: HookDone) {
        let HookDone {
            verdict,
            qos,
            packet_id,
            weight,
        } = done;
        if let Some(h) = self.hook.as_mut() {
            h.bytes = h.bytes.saturating_sub(weight);
            if qos == QoS::ExactlyOnce {
                h.qos2.remove(&packet_id);
            }
        }
        let why = match verdict {
            Verdict::Deliver(message) => {
                self.deliver(message, qos, packet_id);
                return;
            }
            Verdict::Drop(why) => why,
        };
        // Counted and logged by the hook.
        let reason = v5_or_success(self.version, why.reason_code());
        let properties = self.ack_props(why.describe());
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubAck {
                packet_id,
                reason,
                properties,
            })),
            QoS::ExactlyOnce => {
                // 3.1.1 cannot refuse: the exchange completes, and the message is not delivered.
                if reason == ReasonCode::SUCCESS {
                    self.state.incoming_qos2.insert(packet_id);
                }
                self.send(&Packet::PubRec(PubRec {
                    packet_id,
                    reason,
                    properties,
                }));
            }
        }
    }

    /// Routes an accepted message to its subscribers and acknowledges it to the publisher. A
    /// retained message the tenant's store has no room for is refused as a whole: 0x97 in
    /// PUBACK/PUBREC (v5; 3.1.1 has no refusal codes and gets a plain acknowledgement).
    fn deliver(&mut self, message: Arc<Message>, qos: QoS, packet_id: u16) {
        let tenant = self.auth.tenant.clone();
        let mut congested = None;
        let reason = match tenant.publish_noting_congestion(
            message,
            &mut self.scratch,
            &mut congested,
            &mut self.fed_filling_outbox,
        ) {
            Ok(_) => ReasonCode::SUCCESS,
            Err(RetainedFull) => ReasonCode::QUOTA_EXCEEDED,
        };
        if reason != ReasonCode::SUCCESS {
            let reason = v5_or_success(self.version, reason);
            let properties = self.ack_props("the tenant's retained messages are at their limit");
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(&Packet::PubAck(PubAck {
                    packet_id,
                    reason,
                    properties,
                })),
                QoS::ExactlyOnce => {
                    // 3.1.1 cannot refuse: the exchange completes, and nothing is delivered.
                    if reason == ReasonCode::SUCCESS {
                        self.state.incoming_qos2.insert(packet_id);
                    }
                    self.send(&Packet::PubRec(PubRec {
                        packet_id,
                        reason,
                        properties,
                    }));
                }
            }
            return;
        }
        if let Some(slow) = congested {
            // Our own outbox drains only through our own reads: never wait on it.
            if slow.id != self.session.id && self.pressure.is_none() {
                self.pressure =
                    Some((slow, Instant::now() + self.ctx.limits.slow_consumer_grace()));
            }
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubAck {
                packet_id,
                reason: ReasonCode::SUCCESS,
                properties: AckProperties::default(),
            })),
            QoS::ExactlyOnce => {
                self.state.incoming_qos2.insert(packet_id);
                self.send(&Packet::PubRec(PubRec {
                    packet_id,
                    reason: ReasonCode::SUCCESS,
                    properties: AckProperties::default(),
                }));
            }
        }
        // Our own outbox may have got something (a subscription matching our own publish).
        self.more_queued = true;
    }

    /// AUTH re-authentication with a fresh token [MQTT-4.12.1].
    fn on_auth(&mut self, a: Auth) -> Result<(), Close> {
        let Some(method) = self.auth_method.clone() else {
            // [MQTT-4.12.0-?] AUTH on a connection whose CONNECT had no Authentication Method.
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method in CONNECT",
            ));
        };
        if a.properties.authentication_method.as_ref() != Some(&method) {
            // [MQTT-4.12.1-1] the method must be the one of CONNECT; breaking that is a protocol
            // error (0x8C, bad authentication method, is not a DISCONNECT reason code, Table 3-10).
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "authentication method differs from CONNECT's",
            ));
        }
        if a.reason != ReasonCode::RE_AUTHENTICATE {
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH from a client must be a re-authentication (0x19)",
            ));
        }
        let data = a.properties.authentication_data.clone().unwrap_or_default();
        let next = match self
            .ctx
            .auth
            .reauthenticate(&self.auth, method.as_str(), &data)
        {
            Ok(next) => next,
            Err(r) => {
                // DISCONNECT has neither 0x86 nor 0x8C: a refused credential is "not authorized".
                return Err(Close {
                    reason: ReasonCode::NOT_AUTHORIZED,
                    send: true,
                    outcome: Outcome::WithoutWill,
                    what: r.label,
                });
            }
        };
        self.auth = next;
        self.session.set_credential(self.auth.credential.clone());
        self.credential_deadline = credential_deadline(&self.auth);
        // The session keeps only what the new token allows, its will included.
        let tenant = self.auth.tenant.clone();
        recheck_session(
            &tenant,
            &self.session,
            &mut self.state,
            &*self.auth.permissions,
        );
        if self
            .will
            .as_ref()
            .is_some_and(|w| !self.auth.permissions.may_publish(w.topic.as_str()))
        {
            info!(
                client_id = %self.session.client_id,
                "will discarded: the new token may not publish to its topic"
            );
            self.will = None;
        }
        self.send(&Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: AuthProperties {
                authentication_method: Some(method),
                ..Default::default()
            },
        }));
        Ok(())
    }

    fn on_pubrel(&mut self, r: PubRel) {
        let reason = if self.state.incoming_qos2.remove(&r.packet_id) {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(&Packet::PubComp(PubComp {
            packet_id: r.packet_id,
            reason: v5_or_success(self.version, reason),
            properties: AckProperties::default(),
        }));
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) from the client.
    fn on_ack(&mut self, packet_id: u16, _reason: ReasonCode, comp: bool) {
        let matches = match self.state.inflight.get(&packet_id) {
            Some(Inflight::Published(d)) => !comp && d.qos == QoS::AtLeastOnce,
            Some(Inflight::Released) => comp,
            None => false,
        };
        if matches {
            // A PUBACK >= 0x80 on a shared subscription discards the message [MQTT-4.8.2-6].
            self.state.complete(packet_id);
            self.more_queued = true;
        }
    }

    fn on_pubrec(&mut self, r: PubRec) {
        let ok = matches!(self.state.inflight.get(&r.packet_id), Some(Inflight::Published(d)) if d.qos == QoS::ExactlyOnce);
        if !ok {
            // [MQTT-4.3.3-?] PUBREL for an unknown id answers PUBCOMP 0x92; a stray PUBREC is
            // answered with PUBREL 0x92 so the client can free the id.
            if self.version == ProtocolVersion::V5 {
                self.send(&Packet::PubRel(PubRel {
                    packet_id: r.packet_id,
                    reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    properties: AckProperties::default(),
                }));
            }
            return;
        }
        if r.reason.0 >= 0x80 {
            // [MQTT-4.3.3-?] an error PUBREC ends the exchange; [MQTT-4.8.2-6] for shared ones.
            self.ctx.metrics.count_drop(DropReason::rejected_by_client);
            self.state.complete(r.packet_id);
            self.more_queued = true;
            return;
        }
        self.state.insert_inflight(r.packet_id, Inflight::Released);
        self.send(&Packet::PubRel(PubRel {
            packet_id: r.packet_id,
            reason: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }));
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let tenant = self.auth.tenant.clone();
        let limits = self.ctx.limits.clone();
        let sub_id = s.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(s.subscriptions.len());
        // Subscriptions owed retained messages, one per distinct filter: identical filters in
        // one SUBSCRIBE are one subscription, replaced in turn [MQTT-3.8.4-3], and get the
        // retained messages once, with the options of the last. Different filters that overlap
        // each get theirs [MQTT-3.8.4-5].
        let mut owed: Vec<(&str, QoS)> = Vec::new();
        let mut owed_at: HashMap<&str, usize> = HashMap::new();
        for sub in &s.subscriptions {
            let full = sub.filter.as_str();
            let (group, filter) = match topic::subscription(full) {
                Ok(target) => target,
                // A shared subscription inside a shared one; the decoder checked the rest.
                Err(_) => {
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if group.is_some() && sub.options.no_local {
                // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
                return Err(Close::protocol(ReasonCode::PROTOCOL_ERROR, "MQTT-3.8.3-4"));
            }
            if !topic_within_limits(filter, &limits) {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            // The filter that is routed, and nothing else.
            if !self.auth.permissions.may_subscribe(filter) {
                reasons.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            let exists = self.state.subscriptions.contains_key(full);
            if !exists && self.state.subscriptions.len() >= limits.max_subscriptions_per_client {
                reasons.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            match tenant.router.subscribe(
                &self.session,
                filter,
                group,
                sub.options,
                sub_id,
                limits.max_subscribers_per_topic,
            ) {
                Ok(existed) => {
                    if !existed {
                        self.ctx.metrics.subscriptions.inc();
                    }
                    let record = SubscriptionRecord {
                        options: sub.options,
                        id: sub_id,
                    };
                    match self.state.subscriptions.get_mut(full) {
                        Some(r) => *r = record,
                        // A copy: the packet's buffer may be large (user properties).
                        None => {
                            self.state
                                .subscriptions
                                .insert(MqttString::from(full.to_string()), record);
                        }
                    }
                    // [MQTT-3.3.1-9..11] retained messages per Retain Handling; none for shared
                    // subscriptions [MQTT-3.8.4-?].
                    let send_retained = group.is_none()
                        && match sub.options.retain_handling {
                            RetainHandling::SendAtSubscribe => true,
                            RetainHandling::SendAtSubscribeIfNew => !existed,
                            RetainHandling::DoNotSend => false,
                        };
                    if let Some(&i) = owed_at.get(full) {
                        // The last identical filter's options stand.
                        owed[i].1 = sub.options.qos;
                    } else if send_retained {
                        owed_at.insert(full, owed.len());
                        owed.push((filter, sub.options.qos));
                    }
                    reasons.push(granted(sub.options.qos));
                }
                Err(SubscribeError::TooManySubscribers) => reasons.push(ReasonCode::QUOTA_EXCEEDED),
            }
        }
        let reasons = reasons
            .into_iter()
            .map(|r| {
                if self.version == ProtocolVersion::V5 || r.0 < 0x80 {
                    r
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                }
            })
            .collect();
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: AckProperties::default(),
        }));
        if owed.is_empty() {
            return Ok(());
        }
        // A subscription still owed retained messages from an earlier SUBSCRIBE starts over
        // [MQTT-3.8.4-4]: one reading per subscription at most.
        let retained = &mut self.state.retained;
        let waiting: HashMap<&str, usize> = retained
            .iter()
            .enumerate()
            .map(|(i, p)| (p.cursor.filter(), i))
            .collect();
        let places: Vec<Option<usize>> = owed
            .iter()
            .map(|(filter, _)| waiting.get(filter).copied())
            .collect();
        drop(waiting);
        for ((filter, qos), place) in owed.into_iter().zip(places) {
            let pending = PendingRetained {
                cursor: RetainedCursor::new(filter),
                qos,
                id: sub_id,
                ready: Default::default(),
            };
            match place {
                Some(i) => retained[i] = pending,
                None => retained.push_back(pending),
            }
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let tenant = self.auth.tenant.clone();
        let reasons = u
            .filters
            .iter()
            .map(|full| {
                let removed = tenant.unsubscribe(self.session.id, full.as_str());
                let had = self.state.subscriptions.remove(full.as_str()).is_some();
                if had || removed {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        if !self.state.retained.is_empty() {
            // [MQTT-3.10.4-2] no new messages for a subscription that is gone, retained ones
            // included.
            let state = &mut *self.state;
            let subscriptions = &state.subscriptions;
            state
                .retained
                .retain(|p| subscriptions.contains_key(p.cursor.filter()));
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: AckProperties::default(),
        }));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.connect_expiry_was_zero && expiry != 0 {
                // [MQTT-3.14.2-2] cannot set a session expiry on DISCONNECT after 0 in CONNECT.
                return Close::protocol(ReasonCode::PROTOCOL_ERROR, "MQTT-3.14.2-2");
            }
            self.state.expiry_interval = expiry.min(self.ctx.limits.max_session_expiry_secs);
        }
        Close {
            reason: d.reason,
            send: false,
            // [MQTT-3.1.2-10] a normal DISCONNECT deletes the will; 0x04 publishes it.
            outcome: if d.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
                Outcome::WithWill
            } else {
                Outcome::WithoutWill
            },
            what: "disconnected by the client",
        }
    }

    /// Takes deliveries from the outbox while the in-flight window allows and the write buffer
    /// is below its high-water mark.
    fn pump_outbox(&mut self) {
        // On the stack: an idle connection keeps no batch.
        let mut batch = SmallVec::<[Delivery; TAKE_BATCH]>::new();
        loop {
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                self.more_queued = true;
                break;
            }
            batch.clear();
            let window = self.window();
            let more = self.session.take(&mut batch, window);
            let taken = batch.len();
            for d in batch.drain(..) {
                self.send_delivery(d, false, None);
            }
            if !more {
                self.more_queued = false;
                break;
            }
            if taken == 0 {
                // The window is closed; acknowledgements will reopen it.
                self.more_queued = true;
                break;
            }
        }
    }

    /// Queues retained messages owed to subscriptions while the outbox has room for them,
    /// reading the store in slices (at most [`RETAINED_BUDGET`] topics per call). Returns
    /// whether it stopped at its budget with room left, so the caller yields and calls again;
    /// otherwise it waits for the outbox to drain, or nothing is owed any more.
    fn pump_retained(&mut self) -> bool {
        let now = Instant::now();
        let tenant = self.auth.tenant.clone();
        let metrics = self.ctx.metrics.clone();
        let mut looked = 0;
        let mut read = Vec::new();
        while let Some(front) = self.state.retained.front_mut() {
            while let Some(message) = front.ready.pop_front() {
                let delivery = Delivery {
                    qos: message.qos.min(front.qos),
                    // [MQTT-3.3.1-8] retained messages sent on subscribe carry RETAIN 1.
                    retain: true,
                    subscription_ids: front.id.into_iter().collect(),
                    shared: None,
                    message,
                };
                match self.session.offer(delivery, &metrics) {
                    Offered::Queued => self.more_queued = true,
                    Offered::Dropped => {}
                    Offered::Later(delivery) => {
                        front.ready.push_front(delivery.message);
                        return false;
                    }
                }
            }
            if front.cursor.is_done() {
                self.state.retained.pop_front();
                continue;
            }
            if looked >= RETAINED_BUDGET {
                return true;
            }
            if !self.session.has_room_for_offers() {
                return false;
            }
            looked += tenant.retained.read(
                &mut front.cursor,
                now,
                RETAINED_BATCH,
                RETAINED_BUDGET - looked,
                &mut read,
            );
            front.ready.extend(read.drain(..));
        }
        false
    }

    /// Encodes one delivery. `resend` carries the packet id of a redelivery (DUP).
    fn send_delivery(&mut self, d: Delivery, dup: bool, resend: Option<u16>) {
        let now = Instant::now();
        let metrics = self.ctx.metrics.clone();
        if d.message.is_expired(now) {
            // [MQTT-3.3.2-5] an expired message is not delivered.
            metrics.count_drop(DropReason::expired);
            return;
        }
        if !self.auth.permissions.may_read(d.message.topic.as_str()) {
            // Queued under an earlier credential that allowed more: what was queued or in
            // flight then is dropped when the session resumes or re-authenticates, and this
            // catches what a publisher routed meanwhile.
            metrics.count_drop(DropReason::not_readable);
            return;
        }
        let packet_id = match (d.qos, resend) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(id)) => Some(id),
            (_, None) => match self.state.next_packet_id() {
                Some(id) => Some(id),
                None => {
                    metrics.count_drop(DropReason::queue_full);
                    return;
                }
            },
        };
        let mut properties = d.message.properties.clone();
        properties.message_expiry_interval = d.message.remaining_expiry(now);
        properties.subscription_identifiers = d.subscription_ids.to_vec();
        let mut topic = d.message.topic.clone();
        let mut new_alias = None;
        if self.version == ProtocolVersion::V5 && self.client_topic_alias_max > 0 && !dup {
            if let Some(alias) = self.outbound_aliases.get(topic.as_str()) {
                properties.topic_alias = Some(*alias);
                topic = MqttString::from("");
            } else if self.outbound_aliases.len() < usize::from(self.client_topic_alias_max) {
                let alias = self.outbound_aliases.len() as u16 + 1;
                properties.topic_alias = Some(alias);
                new_alias = Some(alias);
            }
        }
        let packet = Packet::Publish(Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            properties,
            payload: d.message.payload.clone(),
        });
        // [MQTT-3.1.2-25] never more than the client's Maximum Packet Size: drop for this one.
        if packet.encoded_len(self.version) > self.client_max_packet as usize {
            metrics.count_drop(DropReason::packet_too_large);
            return;
        }
        if let Some(alias) = new_alias {
            self.outbound_aliases
                .insert(d.message.topic.as_str().into(), alias);
        }
        self.send(&packet);
        metrics
            .messages_out
            .get_or_create(&QosLabels { qos: d.qos as u8 })
            .inc();
        if let Some(id) = packet_id {
            if resend.is_none() {
                self.state.insert_inflight(id, Inflight::Published(d));
            }
        }
    }

    /// On resumption, resends every unacknowledged PUBLISH with DUP and every PUBREL
    /// [MQTT-4.4.0-1].
    fn resend_inflight(&mut self) {
        let order: Vec<u16> = self.state.inflight_order.iter().copied().collect();
        for id in order {
            match self.state.inflight.get(&id).cloned() {
                Some(Inflight::Published(d)) => self.send_delivery(d, true, Some(id)),
                Some(Inflight::Released) => self.send(&Packet::PubRel(PubRel {
                    packet_id: id,
                    reason: ReasonCode::SUCCESS,
                    properties: AckProperties::default(),
                })),
                None => {}
            }
        }
    }

    /// Ends the connection: DISCONNECT if due, will, session expiry or end. The socket is
    /// closed after, by what this returns, so its linger delays none of it.
    fn finish(mut self, close: Close) -> Closing<IO> {
        if close.send && self.version == ProtocolVersion::V5 && close.reason.0 >= 0x80 {
            let mut properties = DisconnectProperties::default();
            if self.problem_info {
                properties.reason_string = Some(MqttString::from(close.what));
            }
            // [MQTT-3.14.2-3] the reason string goes only when it fits the client's limit.
            self.send(&Packet::Disconnect(Disconnect {
                reason: close.reason,
                properties,
            }));
        }
        // Written by `Closing::close`, with the socket's close.
        let pending = std::mem::take(&mut self.wbuf);
        let ending = close.ending();
        self.ctx.metrics.connections.dec();
        if close.reason.0 >= 0x80 && close.reason != ReasonCode::SESSION_TAKEN_OVER && close.send {
            self.ctx
                .metrics
                .protocol_errors
                .get_or_create(&CodeLabels { reason: close.what })
                .inc();
        }
        info!(
            client_id = %self.session.client_id,
            remote = %self.remote,
            listener = self.ctx.listener.as_str(),
            protocol = ?self.version,
            reason = format_args!("0x{:02X}", close.reason.0),
            why = close.what,
            "disconnected"
        );
        self.leave_session(close.outcome, pending, ending)
    }

    /// What becomes of the session and the will when the connection has ended: the session
    /// stays for its expiry (bounded by the credential's: no session outlives its token), the
    /// will goes now, after its delay or never, and messages waiting for the on-publish hook
    /// are delivered on their verdicts. A session whose credential no longer holds ends here,
    /// and with it all of that.
    /// The socket is closed after, by what this returns ([`Closing`]).
    fn leave_session(mut self, outcome: Outcome, pending: BytesMut, ending: Ending) -> Closing<IO> {
        let tenant = self.tenant().clone();
        let session = self.session.clone();
        session.detach(self.generation);
        // After the detach no kick can come any more: one that ended the credential while the
        // connection was closing for another reason counts too.
        let outcome = self.outcome(outcome);
        let verdicts = self.hook.take();
        if outcome == Outcome::CredentialEnded {
            // The verdicts go with `verdicts`, the will with the connection.
            drop(verdicts);
            end_session(&tenant, &session, self.state, SessionEnd::Credential);
            return Closing::new(self.io, pending, ending, &self.ctx);
        }
        if let Some(verdicts) = verdicts {
            finish_hook_verdicts(&tenant, &session, *verdicts);
        }
        let will = match outcome {
            Outcome::WithWill => self.will.take(),
            Outcome::WithoutWill | Outcome::CredentialEnded => None,
        };
        let expiry = self.state.expiry_interval;
        if expiry == 0 {
            if let Some(w) = will {
                publish_will(&tenant, &session, w);
            }
            end_session(&tenant, &session, self.state, SessionEnd::Closed);
            return Closing::new(self.io, pending, ending, &self.ctx);
        }
        // The will waits for its delay, or for the end of the session if that comes first
        // [MQTT-3.1.2-8].
        if let Some(w) = will {
            let delay = self.will_delay.min(expiry);
            if delay == 0 {
                publish_will(&tenant, &session, w);
            } else {
                let cancel = CancellationToken::new();
                self.state.pending_will = Some(PendingWill {
                    cancel: cancel.clone(),
                    message: w.clone(),
                });
                let t = tenant.clone();
                let s = session.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => publish_will(&t, &s, w),
                        _ = cancel.cancelled() => {}
                    }
                });
            }
        }
        // The session ends at its expiry, or when its credential expires if that is sooner.
        let expires =
            (expiry != u32::MAX).then(|| Instant::now() + Duration::from_secs(u64::from(expiry)));
        let end = match (expires, self.credential_deadline) {
            (Some(e), Some(c)) if c < e => Some((c, SessionEnd::Credential)),
            (Some(e), _) => Some((e, SessionEnd::Closed)),
            (None, Some(c)) => Some((c, SessionEnd::Credential)),
            (None, None) => None,
        };
        if let Some((at, why)) = end {
            let generation = session.generation();
            let t = tenant.clone();
            let s = session.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let state = s.state.clone().lock_owned().await;
                if s.generation() == generation && !s.is_connected() && !state.ended {
                    end_session(&t, &s, state, why);
                }
            });
        }
        drop(self.state);
        Closing::new(self.io, pending, ending, &self.ctx)
    }
}

/// The last step of a connection: what is still to be written, and how the socket ends.
struct Closing<IO> {
    io: IO,
    pending: BytesMut,
    ending: Ending,
    linger: Linger,
    metrics: Arc<Metrics>,
}

impl<IO: AsyncIo> Closing<IO> {
    fn new(io: IO, pending: BytesMut, ending: Ending, ctx: &ConnectionContext) -> Self {
        Closing {
            io,
            pending,
            ending,
            linger: linger(&ctx.limits),
            metrics: ctx.metrics.clone(),
        }
    }

    /// Writes what is pending, closes the write side and lingers ([`transport::close`]).
    async fn close(self) {
        transport::close::close(
            self.io,
            self.pending,
            self.ending,
            self.linger,
            &self.metrics,
        )
        .await;
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

/// When a connection's credential stops being valid.
fn credential_deadline(auth: &Authenticated) -> Option<Instant> {
    let ends_at = auth.credential.as_ref()?.ends_at?;
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(ends_at).unwrap_or(0));
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}

/// PUBLISH, SUBSCRIBE and UNSUBSCRIBE packets per second, with a burst (a token bucket).
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(limits: &Limits) -> Self {
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

fn v5_or_success(version: ProtocolVersion, reason: ReasonCode) -> ReasonCode {
    if version == ProtocolVersion::V5 {
        reason
    } else {
        ReasonCode::SUCCESS
    }
}

fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
        QoS::AtLeastOnce => ReasonCode::GRANTED_QOS_1,
        QoS::ExactlyOnce => ReasonCode::GRANTED_QOS_2,
    }
}

/// Waits until the congested outbox drains; at the end of the grace, disconnects its session's
/// connection as a slow consumer (0x97) and stops waiting.
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

/// Makes what a session carries fit `permissions`, before anything more is sent: the
/// subscriptions it no longer allows are removed (with the retained messages they were still
/// owed), and queued and in-flight messages on topics it may not read are dropped and counted
/// (`not_readable`). For a resumption with another credential, and for re-authentication.
fn recheck_session(
    tenant: &Tenant,
    session: &Session,
    state: &mut SessionState,
    permissions: &dyn Permissions,
) {
    let forbidden: Vec<MqttString> = state
        .subscriptions
        .keys()
        .filter(|full| !permissions.may_subscribe(split_shared(full.as_str()).1))
        .cloned()
        .collect();
    for full in forbidden {
        tenant.unsubscribe(session.id, full.as_str());
        state.subscriptions.remove(&full);
    }
    let subscriptions = &state.subscriptions;
    state
        .retained
        .retain(|p| subscriptions.contains_key(p.cursor.filter()));
    let mut dropped = session.retain_outbox(|d| permissions.may_read(d.message.topic.as_str()));
    let unreadable: Vec<u16> = state
        .inflight
        .iter()
        .filter_map(|(id, entry)| match entry {
            Inflight::Published(d) if !permissions.may_read(d.message.topic.as_str()) => Some(*id),
            _ => None,
        })
        .collect();
    for id in unreadable {
        state.complete(id);
        dropped += 1;
    }
    tenant
        .metrics
        .count_drops(DropReason::not_readable, dropped);
}

/// Ends `session` because the credential it was let in with no longer holds (`kick` says
/// why): the connection serving it, if any, is closed with the kick's reason and ends the
/// session as it goes; an offline session ends now, or as soon as whoever holds its state
/// lets go. `still` asks whether the session's credential still is one that ended, then: a
/// resumption with a fresh token may have come first. The will, delayed or not, is discarded.
pub(crate) fn end_for_credential(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    kick: Kick,
    still: impl Fn(&Credential) -> bool + Send + 'static,
) {
    if session.kick(kick) {
        return;
    }
    let end = {
        let tenant = tenant.clone();
        let session = session.clone();
        move |state: OwnedMutexGuard<SessionState>| {
            if state.ended
                || session.is_connected()
                || !session.credential().is_some_and(|c| still(&c))
            {
                return;
            }
            info!(client_id = %session.client_id, why = kick.describe(), "session ended");
            end_session(&tenant, &session, state, SessionEnd::Credential);
        }
    };
    match session.state.clone().try_lock_owned() {
        Ok(state) => end(state),
        Err(_) => {
            // A connection is closing or being let in, or a timer runs.
            let state = session.state.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let state = state.lock_owned().await;
                        end(state);
                    });
                }
                Err(_) => warn!(client_id = %session.client_id, "no runtime to end a session"),
            }
        }
    }
}

/// Delivers what the on-publish hook lets through of the messages a closed connection left
/// waiting: what a client sent before it went is not lost for want of a PUBACK. QoS 2 messages
/// are left to the client's resend (it never got PUBREC), so they are delivered exactly once.
/// The task ends with the last verdict (at most the hook's timeout), or when the session ends
/// because its credential no longer holds: then the rest is dropped.
fn finish_hook_verdicts(tenant: &Arc<Tenant>, session: &Session, pending: HookPending) {
    if pending.verdicts.is_empty() {
        return;
    }
    let tenant = tenant.clone();
    let ended = session.credential_ended().clone();
    let mut verdicts = pending.verdicts;
    tokio::spawn(async move {
        let mut scratch = Vec::new();
        loop {
            let done = tokio::select! {
                biased;
                _ = ended.cancelled() => return,
                done = verdicts.next() => done,
            };
            let Some(done) = done else { return };
            if let (Verdict::Deliver(message), QoS::AtMostOnce | QoS::AtLeastOnce) =
                (done.verdict, done.qos)
            {
                // A retained message the store refuses is counted and logged by the tenant.
                let _ = tenant.publish(message, &mut scratch);
            }
        }
    });
}

/// Publishes the will of `session`; with an on-publish hook, once the hook lets it through
/// (unless the session's credential has ended meanwhile).
fn publish_will(tenant: &Arc<Tenant>, session: &Session, will: Arc<Message>) {
    if let Some(hook) = tenant.hook() {
        let client_id = will.publisher.clone().unwrap_or_else(|| Arc::from(""));
        let verdict = hook.check(will, client_id, None);
        let tenant = tenant.clone();
        let ended = session.credential_ended().clone();
        tokio::spawn(async move {
            let verdict = tokio::select! {
                biased;
                _ = ended.cancelled() => return,
                v = verdict => v,
            };
            if let Verdict::Deliver(will) = verdict {
                let _ = tenant.publish(will, &mut Vec::new());
            }
        });
        return;
    }
    let mut scratch = Vec::new();
    // A retained will the store refuses is counted and logged by the tenant.
    let _ = tenant.publish(will, &mut scratch);
}

/// Why a session ends, for what becomes of its pending will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// Its expiry, a Clean Start, or its connection without a session expiry: a will still
    /// waiting for its delay is published now [MQTT-3.1.2-8].
    Closed,
    /// Its credential no longer holds (expired, revoked, key retired, tenant removed): the
    /// will is discarded, and what the session started and did not finish is dropped.
    Credential,
}

/// Ends a session: unregisters it, removes its subscriptions, publishes a pending will (unless
/// the credential ended) and hands unacknowledged shared QoS 1 messages to another member of
/// their group [MQTT-4.8.2-?].
pub(crate) fn end_session(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    mut state: OwnedMutexGuard<SessionState>,
    why: SessionEnd,
) {
    state.ended = true;
    session.bump_generation();
    if why == SessionEnd::Credential {
        session.credential_ended().cancel();
    }
    tenant.remove_session(session);
    for (full, _) in state.subscriptions.drain() {
        tenant.unsubscribe(session.id, full.as_str());
    }
    state.retained.clear();
    if let Some(pending) = state.pending_will.take() {
        pending.cancel.cancel();
        // The session ends before the will delay: publish now [MQTT-3.1.2-8]. A Clean Start
        // that replaces the session also ends it.
        if why == SessionEnd::Closed {
            publish_will(tenant, session, pending.message);
        }
    }
    let mut left = session.drain_outbox();
    for (_, entry) in std::mem::take(&mut state.inflight) {
        if let Inflight::Published(d) = entry {
            left.push(d);
        }
    }
    let mut dropped = 0u64;
    for d in left {
        // Unacknowledged QoS 1 of a shared subscription goes to another member; QoS 2 is never
        // sent to another member [MQTT-4.8.2-5].
        if let (Some(shared), QoS::AtLeastOnce) = (&d.shared, d.qos) {
            if let Some((s, nd)) =
                tenant
                    .router
                    .reroute_shared(&d.message, &shared.filter, &shared.group, session.id)
            {
                s.push(nd, &tenant.metrics);
                continue;
            }
        }
        dropped += 1;
    }
    tenant
        .metrics
        .count_drops(DropReason::session_ended, dropped);
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

    /// The task of every connection holds this future for the connection's life; the handshake
    /// and the closing writes are boxed so they do not add to it. The bound is in a debug
    /// build (release builds lay the future out smaller).
    #[test]
    fn the_connection_future_stays_small() {
        let limits = Arc::new(Limits::default());
        let metrics = Arc::new(Metrics::new());
        let tenant = Tenant::new("t", (*limits).clone(), metrics.clone());
        let ctx = ConnectionContext {
            limits,
            metrics,
            auth: Arc::new(crate::auth::NoAuth::new(tenant)),
            shutdown: CancellationToken::new(),
            listener: ListenerKind::Mqtt,
        };
        let (io, _client) = tokio::io::duplex(64);
        let remote = SocketAddr::from(([127, 0, 0, 1], 0));
        let future = serve(io, remote, ctx);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1280, "the connection future is {size} bytes");
    }
}
