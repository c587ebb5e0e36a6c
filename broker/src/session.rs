//! Sessions: what the broker keeps for a client id between and during its connections.
//!
//! Ownership:
//! - [`Session::push`] is called by publishers' connection tasks (and will timers). It appends to
//!   the bounded outbox under a short `parking_lot` lock and wakes the session's connection.
//! - [`SessionState`] (subscriptions, in-flight messages, QoS 2 receipts) sits behind a tokio
//!   mutex. The connection task serving the session holds the guard for its whole life, so a
//!   second connection with the same client id (takeover) kicks the first and then simply waits
//!   for the guard; expiry and will timers take the same guard.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use smallvec::SmallVec;
use starling_codec::{MqttString, QoS, ReasonCode, SubscriptionOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::message::Delivery;
use crate::metrics::{DropReason, Metrics};

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Bounds of a session's outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Most messages waiting.
    pub max_messages: usize,
    /// Most payload bytes waiting (by [`crate::message::Message::weight`]).
    pub max_bytes: usize,
}

#[derive(Debug)]
struct Outbox {
    items: VecDeque<Delivery>,
    bytes: usize,
}

/// One session.
#[derive(Debug)]
pub struct Session {
    /// Unique for the life of the process; a new session for the same client id gets a new one.
    pub id: u64,
    /// The client id.
    pub client_id: Arc<str>,
    limits: OutboxLimits,
    outbox: Mutex<Outbox>,
    /// Woken when the outbox gets something.
    notify: Notify,
    /// Woken when the outbox has drained to half its bounds while a publisher waits for that
    /// (QoS 1/2 backpressure), and when the session loses its connection.
    space: Notify,
    /// Set while a publisher may be waiting on `space`.
    awaited: AtomicBool,
    /// Set while the outbox is half full or more (messages or bytes): publishers that feed it
    /// yield before they read more, so the connection draining it gets to run.
    filling: AtomicBool,
    /// Set while a connection serves the session.
    connected: AtomicBool,
    /// Bumped on every connection and on the end of the session; timers compare it.
    generation: AtomicU64,
    /// Cancels the connection currently serving the session (takeover, revocation).
    kick: Mutex<Option<(CancellationToken, Arc<Mutex<ReasonCode>>)>>,
    /// The token id of the serving connection's credential, for revocation sweeps.
    credential_jti: Mutex<Option<Arc<str>>>,
    /// The state a connection owns while it serves the session.
    pub state: Arc<tokio::sync::Mutex<SessionState>>,
}

/// A subscription as the session remembers it (for resumption and UNSUBSCRIBE).
#[derive(Debug, Clone)]
pub struct SubscriptionRecord {
    /// Options as granted.
    pub options: SubscriptionOptions,
    /// Subscription identifier, if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

/// An outgoing QoS 1 or 2 message not yet completed by the client.
#[derive(Debug, Clone)]
pub enum Inflight {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// A will waiting for its delay to pass.
#[derive(Debug)]
pub struct PendingWill {
    /// Cancelled when the will must not be published by its timer any more [MQTT-3.1.3-9].
    pub cancel: CancellationToken,
    /// The will, for publishing it early when the session ends first.
    pub message: Arc<crate::message::Message>,
}

/// What a connection owns while serving the session.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Subscriptions by filter as the client wrote it (including `$share/g/`).
    pub subscriptions: HashMap<MqttString, SubscriptionRecord>,
    /// Outgoing QoS 1/2 messages by packet id, in the order they were sent.
    pub inflight: BTreeMap<u16, Inflight>,
    /// Order of `inflight` by send time (packet ids wrap, so the map's order is not it).
    pub inflight_order: VecDeque<u16>,
    /// Packet ids of QoS 2 PUBLISHes received and not yet released by PUBREL.
    pub incoming_qos2: HashSet<u16>,
    /// Last packet id handed out.
    pub last_packet_id: u16,
    /// Session Expiry Interval in seconds (0: ends with the connection).
    pub expiry_interval: u32,
    /// A will whose delay is running.
    pub pending_will: Option<PendingWill>,
    /// Set when the session has ended; a connection that finds it set starts afresh.
    pub ended: bool,
}

impl SessionState {
    /// The next free packet id, or `None` when all 65535 are in use.
    pub fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.last_packet_id) {
                return Some(self.last_packet_id);
            }
        }
        None
    }

    /// Removes an in-flight entry.
    pub fn complete(&mut self, packet_id: u16) -> Option<Inflight> {
        let entry = self.inflight.remove(&packet_id)?;
        if let Some(pos) = self.inflight_order.iter().position(|p| *p == packet_id) {
            self.inflight_order.remove(pos);
        }
        Some(entry)
    }

    /// Records an in-flight entry sent last.
    pub fn insert_inflight(&mut self, packet_id: u16, entry: Inflight) {
        if self.inflight.insert(packet_id, entry).is_none() {
            self.inflight_order.push_back(packet_id);
        }
    }
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, limits: OutboxLimits) -> Arc<Self> {
        Arc::new(Session {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            client_id,
            limits,
            outbox: Mutex::new(Outbox {
                items: VecDeque::new(),
                bytes: 0,
            }),
            notify: Notify::new(),
            space: Notify::new(),
            awaited: AtomicBool::new(false),
            filling: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            kick: Mutex::new(None),
            credential_jti: Mutex::new(None),
            state: Arc::new(tokio::sync::Mutex::new(SessionState::default())),
        })
    }

    /// Whether a connection serves the session now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The current generation (see the field's documentation).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Queues a delivery. Returns false (and counts the drop) when it was not queued:
    /// QoS 0 for a session with no connection, or a full outbox. The policy is written down in
    /// `broker/ARCHITECTURE.md` (slow consumers).
    pub fn push(&self, delivery: Delivery, metrics: &Metrics) -> bool {
        if delivery.qos == QoS::AtMostOnce && !self.is_connected() {
            metrics.count_drop(DropReason::offline_qos0);
            return false;
        }
        let weight = delivery.message.weight();
        {
            let mut outbox = self.outbox.lock();
            if outbox.items.len() >= self.limits.max_messages
                || outbox.bytes + weight > self.limits.max_bytes
            {
                drop(outbox);
                metrics.count_drop(DropReason::queue_full);
                return false;
            }
            outbox.bytes += weight;
            outbox.items.push_back(delivery);
            if !self.is_drained(&outbox) && !self.filling.load(Ordering::Relaxed) {
                self.filling.store(true, Ordering::Relaxed);
            }
        }
        self.notify.notify_one();
        true
    }

    /// Puts deliveries back at the front of the outbox (messages that were in flight on a
    /// connection that ended), ignoring the bounds: they were accounted for before.
    pub fn requeue_front(&self, deliveries: impl DoubleEndedIterator<Item = Delivery>) {
        let mut outbox = self.outbox.lock();
        for d in deliveries.rev() {
            outbox.bytes += d.message.weight();
            outbox.items.push_front(d);
        }
    }

    /// Takes deliveries from the front of the outbox into `out` until it is full (its inline
    /// capacity of `N`), QoS 0 ones and up to `window` QoS 1/2 ones. Returns whether more
    /// remain.
    pub fn take<const N: usize>(
        &self,
        out: &mut SmallVec<[Delivery; N]>,
        mut window: usize,
    ) -> bool {
        let mut outbox = self.outbox.lock();
        while out.len() < N {
            let Some(front) = outbox.items.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce {
                if window == 0 {
                    break;
                }
                window -= 1;
            }
            let Some(d) = outbox.items.pop_front() else {
                break;
            };
            outbox.bytes = outbox.bytes.saturating_sub(d.message.weight());
            out.push(d);
        }
        if self.filling.load(Ordering::Relaxed) && self.is_drained(&outbox) {
            self.filling.store(false, Ordering::Relaxed);
        }
        if self.awaited.load(Ordering::Acquire) && self.is_drained(&outbox) {
            self.awaited.store(false, Ordering::Release);
            self.space.notify_waiters();
        }
        !outbox.items.is_empty()
    }

    /// Whether the outbox is more than half full, by messages or bytes (see the field `filling`).
    pub fn is_filling(&self) -> bool {
        self.filling.load(Ordering::Relaxed)
    }

    /// Whether the outbox is three quarters full, by messages or bytes. A connection that
    /// published a QoS 1 or 2 message into it waits for [`Session::drained`] before it reads
    /// more from its client: the slow-consumer policy in `broker/ARCHITECTURE.md`.
    pub fn is_congested(&self) -> bool {
        let outbox = self.outbox.lock();
        outbox.items.len().saturating_mul(4) >= self.limits.max_messages.saturating_mul(3)
            || outbox.bytes.saturating_mul(4) >= self.limits.max_bytes.saturating_mul(3)
    }

    fn is_drained(&self, outbox: &Outbox) -> bool {
        outbox.items.len().saturating_mul(2) <= self.limits.max_messages
            && outbox.bytes.saturating_mul(2) <= self.limits.max_bytes
    }

    /// Waits until the outbox has drained to half its bounds, or the session has no connection
    /// to drain it.
    pub async fn drained(&self) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.awaited.store(true, Ordering::Release);
            if !self.is_connected() || self.is_drained(&self.outbox.lock()) {
                return;
            }
            notified.await;
        }
    }

    /// Everything still queued, emptying the outbox.
    pub fn drain_outbox(&self) -> Vec<Delivery> {
        let mut outbox = self.outbox.lock();
        outbox.bytes = 0;
        outbox.items.drain(..).collect()
    }

    /// Number of queued deliveries.
    pub fn queued(&self) -> usize {
        self.outbox.lock().items.len()
    }

    /// Waits until something is pushed (or a permit is stored from an earlier push).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Marks the session served by a connection that `cancel` stops; returns the generation.
    pub fn attach(&self, cancel: CancellationToken, reason: Arc<Mutex<ReasonCode>>) -> u64 {
        *self.kick.lock() = Some((cancel, reason));
        self.connected.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Marks the session as not served any more (if `generation` still owns it).
    pub fn detach(&self, generation: u64) {
        if self.generation() == generation {
            self.connected.store(false, Ordering::Release);
            *self.kick.lock() = None;
            // Publishers waiting for this outbox to drain stop waiting.
            self.space.notify_waiters();
        }
    }

    /// Invalidates timers and marks the end of the session.
    pub fn bump_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Records the token id of the serving connection's credential.
    pub fn set_credential_jti(&self, jti: Option<Arc<str>>) {
        *self.credential_jti.lock() = jti;
    }

    /// The token id of the serving connection's credential.
    pub fn credential_jti(&self) -> Option<Arc<str>> {
        self.credential_jti.lock().clone()
    }

    /// Asks the connection serving the session (if any) to close with `reason`.
    pub fn kick(&self, reason: ReasonCode) {
        if let Some((cancel, slot)) = self.kick.lock().as_ref() {
            *slot.lock() = reason;
            cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;

    fn delivery() -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: MqttString::from("t"),
                payload: Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                expires_at: None,
                publisher: None,
            }),
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: Default::default(),
            shared: None,
        }
    }

    #[test]
    fn an_outbox_is_filling_above_half_its_bound_until_it_drains_to_half() {
        let metrics = Metrics::new();
        let session = Session::new(
            Arc::from("c"),
            OutboxLimits {
                max_messages: 8,
                max_bytes: 1 << 20,
            },
        );
        session.attach(
            CancellationToken::new(),
            Arc::new(Mutex::new(ReasonCode::SUCCESS)),
        );
        for _ in 0..4 {
            assert!(session.push(delivery(), &metrics));
        }
        assert!(!session.is_filling(), "4 of 8 is not above half");
        assert!(session.push(delivery(), &metrics));
        assert!(session.is_filling(), "5 of 8 is");
        let mut out = SmallVec::<[Delivery; 1]>::new();
        assert!(session.take(&mut out, 0));
        assert!(!session.is_filling(), "back to 4 of 8");
    }
}
