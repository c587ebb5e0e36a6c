//! Closing: how a connection ends ([`Close`]), the DISCONNECT that says why, the metrics and
//! the log line, and what the end means for the session and its will (handed to
//! [`crate::session::lifecycle`]). The socket's close and linger come last ([`Closing`]).

use std::sync::Arc;

use bytes::BytesMut;
use starling_codec::{
    DecodeError, Disconnect, DisconnectProperties, MqttString, Packet, ProtocolVersion, ReasonCode,
};
use tokio::time::Instant;
use tracing::info;

use super::publish::finish_hook_verdicts;
use super::{Connection, ConnectionContext};
use crate::config::Limits;
use crate::metrics::{CodeLabels, Metrics};
use crate::session::lifecycle::{self, SessionEnd};
use crate::transport::close::{Ending, Linger};
use crate::transport::{self, AsyncIo};

/// Why a connection ends: what the client is told, what is counted and logged, and what it
/// means for the will and the session. Every way out of a connection is one of these.
#[derive(Debug, Clone, Copy)]
pub(super) struct Close {
    /// The reason code sent in DISCONNECT (v5) and logged.
    pub(super) reason: ReasonCode,
    /// Send a DISCONNECT packet (v5 only, and only with an error reason).
    pub(super) disconnect: bool,
    /// What it means for the will and the session.
    pub(super) outcome: Outcome,
    /// The `reason` label of `starling_protocol_errors_total`, counted when the broker sends
    /// the DISCONNECT with an error reason (the rule's number where there is one).
    pub(super) label: &'static str,
    /// What happened, for the log line's `why`.
    pub(super) log: &'static str,
    /// The Reason String of the DISCONNECT, for a client that asked for problem information.
    pub(super) reason_string: &'static str,
}

/// What the end of a connection means for its will and its session. Every way a connection
/// ends maps to one of these, and the will follows from it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
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
    /// A close described by one text: the metric label, the log line and the reason string.
    pub(super) const fn new(
        reason: ReasonCode,
        disconnect: bool,
        outcome: Outcome,
        text: &'static str,
    ) -> Self {
        Close {
            reason,
            disconnect,
            outcome,
            label: text,
            log: text,
            reason_string: text,
        }
    }

    /// The client broke a rule (`rule`, its number where there is one): DISCONNECT with
    /// `reason`, and the will is published.
    pub(super) const fn protocol(reason: ReasonCode, rule: &'static str) -> Self {
        Close::new(reason, true, Outcome::WithWill, rule)
    }

    /// The connection is gone under the broker (the client closed it, a read or write
    /// failed): nothing more is sent, and the will is published.
    pub(super) const fn lost(what: &'static str) -> Self {
        Close::new(
            ReasonCode::UNSPECIFIED_ERROR,
            false,
            Outcome::WithWill,
            what,
        )
    }

    pub(super) fn from_decode(e: &DecodeError) -> Self {
        Close::protocol(e.reason_code(), e.rule())
    }

    /// How the socket ends (a WebSocket's close code): by the reason of a close the broker
    /// decided; normally when the client ended it.
    fn ending(&self) -> Ending {
        if self.reason == ReasonCode::SERVER_SHUTTING_DOWN {
            Ending::GoingAway
        } else if self.disconnect {
            Ending::for_reason(self.reason)
        } else {
            Ending::Normal
        }
    }
}

impl<IO: AsyncIo> Connection<IO> {
    /// How the connection ends when its token is cancelled: the broker shuts down (the token's
    /// parent), or a takeover, a slow-consumer verdict or the end of its credential kicked it
    /// (why is in `kick_reason`). The same whether or not the broker was writing to the client
    /// then; only the DISCONNECT packet is left out mid-write.
    pub(super) fn closed_by_broker(&self, writing: bool) -> Close {
        let kick = *self.kick_reason.lock();
        if self.ctx.shutdown.is_cancelled() && !kick.ends_credential() {
            return Close::new(
                ReasonCode::SERVER_SHUTTING_DOWN,
                !writing,
                Outcome::WithWill,
                "server shutting down",
            );
        }
        let outcome = if kick.ends_credential() {
            Outcome::CredentialEnded
        } else {
            Outcome::WithWill
        };
        Close::new(kick.reason(), !writing, outcome, kick.describe())
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

    pub(super) fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.negotiated.expiry_was_zero && expiry != 0 {
                // [MQTT-3.14.2-2] cannot set a session expiry on DISCONNECT after 0 in CONNECT.
                return Close::protocol(ReasonCode::PROTOCOL_ERROR, "MQTT-3.14.2-2");
            }
            self.state
                .set_expiry_interval(expiry.min(self.ctx.limits.max_session_expiry_secs));
        }
        // [MQTT-3.1.2-10] a normal DISCONNECT deletes the will; 0x04 publishes it.
        let outcome = if d.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
            Outcome::WithWill
        } else {
            Outcome::WithoutWill
        };
        Close::new(d.reason, false, outcome, "disconnected by the client")
    }

    /// Ends the connection: DISCONNECT if due, will, session expiry or end. The socket is
    /// closed after, by what this returns, so its linger delays none of it.
    pub(super) fn finish(mut self, close: Close) -> Closing<IO> {
        if close.disconnect
            && self.negotiated.version == ProtocolVersion::V5
            && close.reason.0 >= 0x80
        {
            let mut properties = DisconnectProperties::default();
            if self.negotiated.problem_info {
                properties.reason_string = Some(MqttString::from(close.reason_string));
            }
            // Where to reconnect when the broker goes away, if it is known and fits the
            // client's Maximum Packet Size with room for the rest.
            if close.reason == ReasonCode::SERVER_SHUTTING_DOWN {
                if let Some(reference) = &self.ctx.listener.server_reference {
                    if reference.len().saturating_add(64) <= self.negotiated.max_packet as usize {
                        properties.server_reference = Some(MqttString::from(reference.clone()));
                    }
                }
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
        if close.reason.0 >= 0x80
            && close.reason != ReasonCode::SESSION_TAKEN_OVER
            && close.disconnect
        {
            self.ctx
                .metrics
                .protocol_errors
                .get_or_create(&CodeLabels {
                    reason: close.label,
                })
                .inc();
        }
        info!(
            client_id = %self.session.client_id,
            remote = %self.remote,
            listener = self.ctx.listener.kind.as_str(),
            protocol = ?self.negotiated.version,
            reason = format_args!("0x{:02X}", close.reason.0),
            why = close.log,
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
        if let Some(cs) = tenant.cluster_sessions() {
            // The will is this replica's to decide now, not the record's.
            cs.disconnected(&session.client_id);
        }
        // After the detach no kick can come any more: one that ended the credential while the
        // connection was closing for another reason counts too.
        let outcome = self.outcome(outcome);
        let verdicts = self.hook.take();
        if outcome == Outcome::CredentialEnded {
            // The verdicts go with `verdicts`, the will with the connection.
            drop(verdicts);
            lifecycle::end_session(&tenant, &session, self.state, SessionEnd::Credential);
            return Closing::new(self.io, pending, ending, &self.ctx);
        }
        if let Some(verdicts) = verdicts {
            finish_hook_verdicts(&tenant, &session, *verdicts);
        }
        let will = match outcome {
            Outcome::WithWill => self.will.take(),
            Outcome::WithoutWill | Outcome::CredentialEnded => None,
        };
        lifecycle::go_offline(
            &tenant,
            &session,
            self.state,
            will,
            self.negotiated.will_delay,
            self.credential_deadline,
        );
        Closing::new(self.io, pending, ending, &self.ctx)
    }
}

/// The last step of a connection: what is still to be written, and how the socket ends.
pub(super) struct Closing<IO> {
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
    pub(super) async fn close(self) {
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

/// The linger of a closing connection of a listener with `limits`.
pub(super) fn linger(limits: &Limits) -> Linger {
    Linger {
        duration: limits.close_linger(),
        max_sockets: limits.max_lingering,
    }
}
