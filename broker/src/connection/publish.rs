//! Inbound PUBLISH: the topic (a name or an alias) resolved, the QoS 2 receipts checked, the
//! message authorized against the topic limits and the credential's permissions, then the
//! decision: refused, held for the on-publish hook's verdict, or routed to the subscribers and
//! acknowledged.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use starling_codec::{
    AckProperties, MqttString, Packet, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode,
    topic,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::close::Close;
use super::{Connection, topic_within_limits, v5_or_success};
use crate::hook::{Hook, Verdict};
use crate::message::Message;
use crate::metrics::{DropReason, QosLabels};
use crate::session::Session;
use crate::storage::Failure;
use crate::tenant::{RetainedFull, Tenant};
use crate::transport::AsyncIo;

/// Acknowledgements waiting for the store before reading pauses, at least (otherwise our
/// Receive Maximum).
const MIN_ACKS_WAITING: usize = 64;

/// The verdict on one message, with what its acknowledgement needs.
pub(super) struct HookDone {
    verdict: Verdict,
    qos: QoS,
    packet_id: u16,
    /// What the message counted in [`HookPending::bytes`].
    weight: usize,
}

/// A connection's messages awaiting the on-publish hook, in the order they were published.
pub(super) struct HookPending {
    pub(super) verdicts: FuturesOrdered<Pin<Box<dyn Future<Output = HookDone> + Send>>>,
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

/// An acknowledgement waiting for the store's commit (or behind one that does: they go out
/// in the order of the PUBLISHes [MQTT-4.6.0-2]).
pub(super) struct AckDone {
    /// What goes out once the commit is done.
    kind: AckKind,
    qos: QoS,
    packet_id: u16,
    reason: ReasonCode,
    why: Option<&'static str>,
    /// What the commit said; `Ok` for an acknowledgement that waited only for its turn.
    committed: Result<(), Failure>,
}

/// What a packet waiting for the store's commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckKind {
    /// PUBACK or PUBREC of the client's PUBLISH.
    Publish,
    /// PUBREL of a QoS 2 delivery whose PUBREC is recorded.
    PubRel,
    /// PUBCOMP of a QoS 2 message of the client's that is released.
    PubComp,
}

/// Acknowledgements waiting for the store, in PUBLISH order; allocated with the first one.
pub(super) type DurableAcks = FuturesOrdered<Pin<Box<dyn Future<Output = AckDone> + Send>>>;

/// The next acknowledgement whose commit is done, or never when none waits.
pub(super) async fn next_ack(acks: &mut Option<Box<DurableAcks>>) -> Option<AckDone> {
    match acks {
        Some(a) if !a.is_empty() => a.next().await,
        _ => std::future::pending().await,
    }
}

/// The next verdict, or never when none is pending.
pub(super) async fn next_verdict(hook: &mut Option<Box<HookPending>>) -> Option<HookDone> {
    match hook {
        Some(h) if !h.verdicts.is_empty() => h.verdicts.next().await,
        _ => std::future::pending().await,
    }
}

impl<IO: AsyncIo> Connection<IO> {
    pub(super) fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        self.ctx
            .metrics
            .messages_in
            .get_or_create(&QosLabels { qos: p.qos as u8 })
            .inc();
        let topic = self.resolve_topic(&p)?;
        let packet_id = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce && self.receipt_known(packet_id)? {
            return Ok(());
        }
        if let Some((reason, why)) = self.refusal(topic.as_str()) {
            self.ctx.metrics.count_drop(DropReason::not_authorized);
            self.acknowledge(p.qos, packet_id, reason, Some(why));
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
            self.await_verdict(&hook, message, p.qos, packet_id);
            return Ok(());
        }
        self.deliver(message, p.qos, packet_id);
        Ok(())
    }

    /// The PUBLISH's topic: its name, or the one its Topic Alias stands for [MQTT-3.3.2-7..12].
    fn resolve_topic(&mut self, p: &Publish) -> Result<MqttString, Close> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.as_str().is_empty() {
                return Err(Close::protocol(ReasonCode::PROTOCOL_ERROR, "MQTT-3.3.2-1"));
            }
            return Ok(p.topic.clone());
        };
        if alias == 0 || alias > self.ctx.limits.topic_alias_maximum {
            return Err(Close::protocol(
                ReasonCode::TOPIC_ALIAS_INVALID,
                "MQTT-3.3.2-9",
            ));
        }
        if p.topic.as_str().is_empty() {
            return match self.inbound_aliases.get(&alias) {
                Some(t) => Ok(t.clone()),
                None => Err(Close::protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    "unknown topic alias",
                )),
            };
        }
        // A copy: a slice would keep the read buffer it came in for as long as the alias lives.
        self.inbound_aliases
            .insert(alias, MqttString::from(p.topic.as_str().to_string()));
        Ok(p.topic.clone())
    }

    /// For a QoS 2 PUBLISH: whether its packet id is one the broker already owns (a resend,
    /// answered here), or an error when one more would exceed our Receive Maximum.
    fn receipt_known(&mut self, packet_id: u16) -> Result<bool, Close> {
        if self
            .hook
            .as_ref()
            .is_some_and(|h| h.qos2.contains(&packet_id))
        {
            // Resent while the hook decides: the verdict answers both [MQTT-4.3.3-10].
            return Ok(true);
        }
        if self.state.owns_receipt(packet_id) {
            // A resent QoS 2 PUBLISH we already own: acknowledge again, deliver once
            // [MQTT-4.3.3-10]; with a durable store, once the receipt's write is done.
            let commit = self.state.durable().and_then(|s| s.durable());
            self.acknowledge_after(
                QoS::ExactlyOnce,
                packet_id,
                ReasonCode::SUCCESS,
                None,
                commit,
            );
            return Ok(true);
        }
        let awaiting_hook = self.hook.as_ref().map_or(0, |h| h.qos2.len());
        if self.state.receipts() + awaiting_hook >= usize::from(self.ctx.limits.receive_maximum) {
            // [MQTT-3.3.4-9] more unacknowledged QoS 2 than our Receive Maximum.
            return Err(Close::protocol(
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                "MQTT-3.3.4-9",
            ));
        }
        Ok(false)
    }

    /// Why a message to `topic` is refused (the acknowledgement's reason code and reason
    /// string), or none when it may be published.
    fn refusal(&self, topic: &str) -> Option<(ReasonCode, &'static str)> {
        if !topic_within_limits(topic, &self.ctx.limits) {
            Some((
                ReasonCode::TOPIC_NAME_INVALID,
                "topic exceeds the length or depth limit",
            ))
        } else if topic::is_share_namespace(topic) {
            // No filter may be routed to these (a shared subscription cannot nest).
            Some((
                ReasonCode::TOPIC_NAME_INVALID,
                "topic names starting with $share/ are reserved for shared subscriptions",
            ))
        } else if !self.auth.permissions.may_publish(topic) {
            Some((
                ReasonCode::NOT_AUTHORIZED,
                "not authorized to publish to this topic",
            ))
        } else {
            None
        }
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) with `reason` (SUCCESS in 3.1.1, which has no refusal
    /// codes: there the exchange completes and the message is not delivered) and, for a
    /// refusal, `why` as the reason string. A QoS 2 message acknowledged with SUCCESS is owned
    /// until its PUBREL.
    fn acknowledge(
        &mut self,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
        why: Option<&'static str>,
    ) {
        self.acknowledge_after(qos, packet_id, reason, why, None);
    }

    /// [`Connection::acknowledge`] once `commit` is done (the store holds what the message
    /// changed), and after every acknowledgement already waiting.
    fn acknowledge_after(
        &mut self,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
        why: Option<&'static str>,
        commit: Option<oneshot::Receiver<Result<(), Failure>>>,
    ) {
        if qos == QoS::AtMostOnce {
            return;
        }
        if qos == QoS::ExactlyOnce && reason == ReasonCode::SUCCESS {
            // Owned now: a resend while the commit runs is recognised.
            self.state.own_receipt(packet_id);
        }
        self.after_commit(AckKind::Publish, qos, packet_id, reason, why, commit);
    }

    /// Sends the packet `kind` says once `commit` is done, and after every one already waiting.
    fn after_commit(
        &mut self,
        kind: AckKind,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
        why: Option<&'static str>,
        commit: Option<oneshot::Receiver<Result<(), Failure>>>,
    ) {
        let waiting = self.durable_acks.as_ref().is_some_and(|a| !a.is_empty());
        if commit.is_none() && !waiting {
            match kind {
                AckKind::Publish => self.send_ack(qos, packet_id, reason, why),
                _ => self.send_qos2(kind, packet_id, reason),
            }
            return;
        }
        let acks = self
            .durable_acks
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()));
        acks.push_back(Box::pin(async move {
            let committed = match commit {
                // A writer that is gone (shutdown) wrote nothing more.
                Some(rx) => rx.await.unwrap_or(Err(Failure::Io)),
                None => Ok(()),
            };
            AckDone {
                kind,
                qos,
                packet_id,
                reason,
                why,
                committed,
            }
        }));
    }

    /// With a cluster, for a QoS 2 message of a persistent session: when its record is written.
    pub(super) fn cluster_receipt_written(
        &self,
        qos: QoS,
    ) -> Option<oneshot::Receiver<Result<(), Failure>>> {
        if qos != QoS::ExactlyOnce || self.state.expiry_interval() == 0 {
            return None;
        }
        self.auth.tenant.cluster_sessions().map(|cs| cs.written())
    }

    /// Sends PUBREL for the QoS 2 delivery under `packet_id` once the store holds its PUBREC
    /// (`commit`): were PUBREL sent first and the broker stopped before the commit, the
    /// delivery would be read back as unanswered and sent again, and the client, which
    /// completed it, would take it as a new message. Without a durable store it goes at once.
    pub(super) fn release_after(
        &mut self,
        packet_id: u16,
        commit: Option<oneshot::Receiver<Result<(), Failure>>>,
    ) {
        self.after_commit(
            AckKind::PubRel,
            QoS::ExactlyOnce,
            packet_id,
            ReasonCode::SUCCESS,
            None,
            commit,
        );
    }

    /// Sends PUBCOMP (`reason`) for the client's QoS 2 message under `packet_id` once the store
    /// no longer holds its receipt (`commit`): were PUBCOMP sent first and the broker stopped
    /// before the commit, the receipt read back would take the client's next PUBLISH under the
    /// same id for a resend and drop it.
    pub(super) fn complete_after(
        &mut self,
        packet_id: u16,
        reason: ReasonCode,
        commit: Option<oneshot::Receiver<Result<(), Failure>>>,
    ) {
        self.after_commit(
            AckKind::PubComp,
            QoS::ExactlyOnce,
            packet_id,
            reason,
            None,
            commit,
        );
    }

    fn send_qos2(&mut self, kind: AckKind, packet_id: u16, reason: ReasonCode) {
        let reason = v5_or_success(self.negotiated.version, reason);
        let properties = AckProperties::default();
        match kind {
            AckKind::PubRel => self.send(&Packet::PubRel(PubRel {
                packet_id,
                reason,
                properties,
            })),
            AckKind::PubComp => self.send(&Packet::PubComp(PubComp {
                packet_id,
                reason,
                properties,
            })),
            AckKind::Publish => {}
        }
    }

    /// Whether reading from the client waits for acknowledgements that wait for the store.
    pub(super) fn acks_full(&self) -> bool {
        self.durable_acks.as_ref().is_some_and(|a| {
            a.len() >= usize::from(self.ctx.limits.receive_maximum).max(MIN_ACKS_WAITING)
        })
    }

    /// Sends an acknowledgement whose commit is done; a failed commit turns it into a
    /// refusal (0x97 disk full, 0x80 otherwise) and releases a QoS 2 message.
    pub(super) fn on_committed(&mut self, done: AckDone) {
        let AckDone {
            kind,
            qos,
            packet_id,
            mut reason,
            mut why,
            committed,
        } = done;
        if kind != AckKind::Publish {
            // A failed commit is counted by the store; the exchange goes on (the client holds
            // or has released the message either way).
            self.send_qos2(kind, packet_id, reason);
            return;
        }
        if let (Err(failure), ReasonCode::SUCCESS) = (committed, reason) {
            reason = failure.reason();
            why = Some(failure.describe());
            self.ctx.metrics.count_drop(DropReason::storage_failed);
            if qos == QoS::ExactlyOnce {
                self.state.release_receipt(packet_id);
            }
        }
        self.send_ack(qos, packet_id, reason, why);
    }

    fn send_ack(
        &mut self,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
        why: Option<&'static str>,
    ) {
        let reason = v5_or_success(self.negotiated.version, reason);
        let properties = why.map(|w| self.ack_props(w)).unwrap_or_default();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubAck {
                packet_id,
                reason,
                properties,
            })),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(PubRec {
                packet_id,
                reason,
                properties,
            })),
        }
    }

    /// Holds `message` for the on-publish hook's verdict ([`Connection::on_verdict`]).
    fn await_verdict(&mut self, hook: &Hook, message: Arc<Message>, qos: QoS, packet_id: u16) {
        let weight = message.weight();
        let verdict = hook.check(
            message,
            self.session.client_id.clone(),
            self.auth.credential.as_ref().map(|c| c.jti.clone()),
        );
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
    }

    /// Whether reading from the client waits for the on-publish hook.
    pub(super) fn hook_full(&self) -> bool {
        self.hook.as_ref().is_some_and(|h| h.is_full())
    }

    /// Applies the on-publish hook's verdict on one message: deliver and acknowledge it, or
    /// acknowledge it with 0x87 (the hook refused it) or 0x80 (the hook failed).
    pub(super) fn on_verdict(&mut self, done: HookDone) {
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
        match verdict {
            Verdict::Deliver(message) => self.deliver(message, qos, packet_id),
            // Counted and logged by the hook.
            Verdict::Drop(why) => {
                self.acknowledge(qos, packet_id, why.reason_code(), Some(why.describe()));
            }
        }
    }

    /// Routes an accepted message to its subscribers and acknowledges it to the publisher. A
    /// retained message the tenant's store has no room for is refused as a whole: 0x97 in
    /// PUBACK/PUBREC (v5; 3.1.1 has no refusal codes and gets a plain acknowledgement).
    fn deliver(&mut self, message: Arc<Message>, qos: QoS, packet_id: u16) {
        let tenant = self.auth.tenant.clone();
        if qos != QoS::AtMostOnce {
            if let Some(failure) = tenant.storage_failure() {
                // The store cannot be written: a promise about this message could not be kept.
                self.ctx.metrics.count_drop(DropReason::storage_failed);
                self.acknowledge(qos, packet_id, failure.reason(), Some(failure.describe()));
                return;
            }
            if let Some(why) = tenant.cluster_failure() {
                // It could reach this replica's subscribers only: refused, not half delivered.
                self.ctx.metrics.cluster_errors.inc();
                self.acknowledge(qos, packet_id, ReasonCode::UNSPECIFIED_ERROR, Some(why));
                return;
            }
            if let Some(why) = message.retain.then(|| tenant.retained_failure()).flatten() {
                // It could not be kept for the other replicas: refused before it is delivered.
                self.ctx.metrics.cluster_errors.inc();
                self.acknowledge(qos, packet_id, ReasonCode::UNSPECIFIED_ERROR, Some(why));
                return;
            }
        }
        let mut congested = None;
        let mut stored = false;
        let mut replicated = None;
        if qos == QoS::ExactlyOnce {
            // The receipt is written before what the message changes, so no commit holds the
            // routed message without it: after a crash, the publisher's resend (it had no
            // PUBREC) is recognised as known instead of routed a second time.
            self.state.own_receipt(packet_id);
        }
        let routed = tenant.publish_noting_congestion(
            message,
            &mut self.scratch,
            &mut congested,
            &mut self.fed_filling_outbox,
            &mut stored,
            &mut replicated,
        );
        if let Err(RetainedFull) = routed {
            if qos == QoS::ExactlyOnce {
                self.state.release_receipt(packet_id);
            }
            self.acknowledge(
                qos,
                packet_id,
                ReasonCode::QUOTA_EXCEEDED,
                Some("the tenant's retained messages are at their limit"),
            );
            return;
        }
        if let Some(slow) = congested {
            // Our own outbox drains only through our own reads: never wait on it.
            if slow.id != self.session.id && self.pressure.is_none() {
                self.pressure =
                    Some((slow, Instant::now() + self.ctx.limits.slow_consumer_grace()));
            }
        }
        // Acknowledged once the store holds what it changed: the message (retained, queued
        // for a persistent session) and, for QoS 2, its receipt in the publisher's session.
        let commit = if stored || (qos == QoS::ExactlyOnce && self.state.durable().is_some()) {
            tenant
                .durable()
                .map(|d| d.storage())
                .or(self.state.durable())
                .and_then(|s| s.durable())
        } else {
            None
        };
        // With a cluster, also once JetStream holds it on the broker's replicas (and, retained,
        // in the tenant's bucket).
        let commit = both(commit, replicated);
        // And, for QoS 2 in a persistent session of a cluster's, once the session's record
        // holds the receipt (a resend after the session moved is then recognised).
        let commit = both(commit, self.cluster_receipt_written(qos));
        self.acknowledge_after(qos, packet_id, ReasonCode::SUCCESS, None, commit);
        // Our own outbox may have got something (a subscription matching our own publish).
        self.more_queued = true;
    }
}

/// One receiver for two commits: done when both are, failed with the first failure.
pub(crate) fn both(
    a: Option<oneshot::Receiver<Result<(), Failure>>>,
    b: Option<oneshot::Receiver<Result<(), Failure>>>,
) -> Option<oneshot::Receiver<Result<(), Failure>>> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                let a = a.await.unwrap_or(Err(Failure::Io));
                let b = b.await.unwrap_or(Err(Failure::NotReplicated));
                let _ = tx.send(a.and(b));
            });
            Some(rx)
        }
        (a, None) => a,
        (None, b) => b,
    }
}

/// Delivers what the on-publish hook lets through of the messages a closed connection left
/// waiting: what a client sent before it went is not lost for want of a PUBACK. QoS 2 messages
/// are left to the client's resend (it never got PUBREC), so they are delivered exactly once.
/// The task ends with the last verdict (at most the hook's timeout), or when the session ends
/// because its credential no longer holds: then the rest is dropped.
pub(super) fn finish_hook_verdicts(tenant: &Arc<Tenant>, session: &Session, pending: HookPending) {
    if pending.verdicts.is_empty() {
        return;
    }
    let tenant = tenant.clone();
    let ended = session.credential_ended().clone();
    let mut verdicts = pending.verdicts;
    tenant.clone().tasks.spawn(async move {
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
