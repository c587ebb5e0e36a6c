//! The handshake: CONNECT, read under its timeout, to an admitted client (limits,
//! authentication, the session taken over or started, the will, keep alive) and its CONNACK;
//! or to a refusal's CONNACK and the socket's close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use starling_codec::{
    ConnAck, ConnAckProperties, Connect, DecodeError, Decoder, Direction, MqttString, Packet,
    ProtocolVersion, PublishProperties, ReasonCode, topic,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::close::linger;
use super::run::RateLimiter;
use super::{Connection, ConnectionContext, Negotiated, topic_within_limits};
use crate::auth::{Authenticated, ConnectInfo};
use crate::config::Limits;
use crate::message::Message;
use crate::metrics::{CodeLabels, Metrics};
use crate::session::lifecycle::{self, SessionEnd};
use crate::session::{Kick, Session, SessionState};
use crate::transport::close::Ending;
use crate::transport::{self, AsyncIo};

/// Room for CONNECT in a new connection's read buffer (a larger CONNECT gets what it needs).
const CONNECT_READ: usize = 512;

/// Reads and answers CONNECT; the connection, ready to run, when it was accepted.
pub(super) async fn handshake<IO>(
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
    let admitted = match accept_connect(remote, &ctx, &connect).await {
        Ok(s) => s,
        Err(refusal) => {
            ctx.metrics
                .connects_refused
                .get_or_create(&CodeLabels { reason: refusal.1 })
                .inc();
            info!(
                client_id = connect.client_id.as_str(),
                %remote,
                listener = ctx.listener.kind.as_str(),
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
    ctx.limits = admitted.limits;
    decoder.set_max_packet_size(ctx.limits.max_packet_size);
    let ctx_limits = ctx.limits.clone();
    let mut conn = Connection {
        io,
        remote,
        rbuf,
        read_size: super::run::READ_MIN,
        // Grows on demand and keeps its size while the connection is busy.
        wbuf: BytesMut::new(),
        decoder,
        negotiated: admitted.negotiated,
        ctx,
        auth: admitted.auth,
        session: admitted.session,
        state: admitted.state,
        generation: admitted.generation,
        cancel: admitted.cancel,
        kick_reason: admitted.kick_reason,
        last_read: Instant::now(),
        inbound_aliases: HashMap::new(),
        outbound_aliases: HashMap::new(),
        will: admitted.will,
        credential_deadline: None,
        rate: RateLimiter::new(&ctx_limits),
        scratch: Vec::new(),
        more_queued: true,
        window_full: false,
        fed_filling_outbox: false,
        link_paused: false,
        pressure: None,
        hook: None,
        durable_acks: None,
        timer: Box::pin(tokio::time::sleep_until(Instant::now())),
    };
    conn.credential_deadline = credential_deadline(&conn.auth);
    conn.wbuf.extend_from_slice(&admitted.connack);
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

/// A CONNECT that was accepted: the session is attached and the CONNACK is encoded.
struct Admitted {
    /// The connection's limits: its listener's, tightened by its tenant's.
    limits: Arc<Limits>,
    auth: Authenticated,
    session: Arc<Session>,
    state: OwnedMutexGuard<SessionState>,
    generation: u64,
    cancel: CancellationToken,
    kick_reason: Arc<Mutex<Kick>>,
    negotiated: Negotiated,
    will: Option<Arc<Message>>,
    connack: BytesMut,
}

/// Why a CONNECT is refused: the CONNACK's reason code, and the label of
/// `starling_connects_refused_total` (also the CONNACK's reason string and the log's `why`).
type Refused = (ReasonCode, &'static str);

async fn accept_connect(
    remote: SocketAddr,
    ctx: &ConnectionContext,
    connect: &Connect,
) -> Result<Admitted, Refused> {
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
            listener: ctx.listener.kind,
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
    let persistent = match version {
        ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0) > 0,
        _ => !connect.clean_start,
    } && limits.max_session_expiry_secs > 0;
    if persistent && tenant.session(&client_id).is_none() {
        if let Some(failure) = tenant.storage_failure() {
            // A new session the store could not keep: refused rather than kept in memory only.
            return Err((failure.reason(), "storage_failed"));
        }
    }
    // With a cluster, a session this replica does not hold may be kept in JetStream: resumed
    // from there, or (Clean Start) ended there [MQTT-3.1.2-4].
    let mut loaded = None;
    if let Some(cs) = tenant.cluster_sessions() {
        cs.claim(&client_id);
        if tenant.session(&client_id).is_none() {
            if connect.clean_start {
                cs.discard(&client_id);
            } else {
                match cs.load(&client_id).await {
                    Ok(l) => loaded = l,
                    Err(e) => {
                        warn!(tenant = %tenant.name, error = %e, "cluster: a session kept in JetStream cannot be read; the connection is refused");
                        return Err((ReasonCode::UNSPECIFIED_ERROR, "session_store_unavailable"));
                    }
                }
            }
        }
    }
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
    // No session outlives its credential (`session::lifecycle::go_offline` ends it then), and
    // the CONNACK says so when that is sooner than the client asked: the seconds the
    // credential has left, rounded up.
    let granted_expiry = expiry.min(credential_secs_left(&auth));

    // Take the session over, or start one.
    // A child of the broker's shutdown token, so the connection waits on one token for both.
    let cancel = ctx.shutdown.child_token();
    let kick_reason = Arc::new(Mutex::new(Kick::TakenOver));
    let (session, mut state, present) = loop {
        let (session, existed) = tenant.session_or_insert(&client_id);
        let mut state = if existed {
            lifecycle::take_over(&session).await
        } else {
            session.state.clone().lock_owned().await
        };
        if !existed && !state.is_ended() {
            if let Some(l) = loaded.take() {
                // Held by another replica, or by one that is gone: it goes on here.
                lifecycle::resume_from_cluster(&tenant, &session, &mut state, &l);
                break (session, state, true);
            }
        }
        if state.is_ended() {
            // The session ended while we waited; it is gone from the registry: start again.
            continue;
        }
        if connect.clean_start && existed {
            // [MQTT-3.1.2-4] Clean Start discards the existing session.
            lifecycle::end_session(&tenant, &session, state, SessionEnd::Closed);
            continue;
        }
        if !existed && tenant.cluster_sessions().is_some() {
            // A new session of a cluster's: the first half of the packet ids (see `use_half`).
            state.use_half(0);
        }
        break (session, state, existed);
    };
    // [MQTT-3.1.3-9] a new connection before the will delay passed cancels the will.
    state.take_pending_will();
    if present {
        // Before anything is sent: the session keeps only what this credential allows.
        lifecycle::recheck_session(&tenant, &session, &mut state, &*auth.permissions);
    }
    state.set_expiry_interval(expiry);
    let generation = session.attach(cancel.clone(), kick_reason.clone());
    // Other replicas close their connection with this client id (0x8E).
    tenant.connected_here(&session.client_id);
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
    if let Some(cs) = tenant.cluster_sessions() {
        // The record says this replica serves the connection, with its will: if this replica
        // dies, another one publishes the will and takes the session.
        cs.connected(
            &session.client_id,
            expiry > 0,
            will.as_deref().map(|w| (w, will_delay)),
        );
    }

    let mut props = ConnAckProperties::default();
    if version == ProtocolVersion::V5 {
        props.receive_maximum = Some(limits.receive_maximum);
        props.maximum_packet_size = Some(limits.max_packet_size);
        props.topic_alias_maximum = Some(limits.topic_alias_maximum);
        props.retain_available = None; // retained messages are available (the default)
        props.assigned_client_identifier = assigned.map(MqttString::from);
        props.server_keep_alive = server_keep_alive;
        if granted_expiry != asked_expiry {
            props.session_expiry_interval = Some(granted_expiry);
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
        listener = ctx.listener.kind.as_str(),
        protocol = ?version,
        tenant = %tenant.name,
        session_present = present,
        keep_alive,
        "connected"
    );
    let negotiated = Negotiated {
        version,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        receive_max: connect.properties.receive_maximum.unwrap_or(u16::MAX),
        max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
        topic_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
        problem_info: connect.properties.request_problem_information != Some(0),
        will_delay,
        expiry_was_zero: asked_expiry == 0,
        // A copy: a slice would keep the whole CONNECT buffer for the life of the connection.
        auth_method: connect
            .properties
            .authentication_method
            .as_ref()
            .map(|m| MqttString::from(m.as_str().to_string())),
    };
    Ok(Admitted {
        limits,
        auth,
        session,
        state,
        generation,
        cancel,
        kick_reason,
        negotiated,
        will,
        connack,
    })
}

fn generate_client_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let n: u128 = rng.random();
    format!("starling-{n:032x}")
}

/// The whole seconds a credential has left (rounded up; at least 1 while it holds), or
/// `u32::MAX` for one without an end.
fn credential_secs_left(auth: &Authenticated) -> u32 {
    let Some(ends_at) = auth.credential.as_ref().and_then(|c| c.ends_at) else {
        return u32::MAX;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    u32::try_from(ends_at.saturating_sub(now).max(1)).unwrap_or(u32::MAX)
}

/// When a connection's credential stops being valid.
pub(super) fn credential_deadline(auth: &Authenticated) -> Option<Instant> {
    let ends_at = auth.credential.as_ref()?.ends_at?;
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(ends_at).unwrap_or(0));
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}
