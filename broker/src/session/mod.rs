//! Sessions: what the broker keeps for a client id between and during its connections.
//!
//! Ownership:
//! - [`Session::push`] is called by publishers' connection tasks (and will timers). It appends to
//!   the bounded outbox under a short `parking_lot` lock and wakes the session's connection.
//! - [`SessionState`] (subscriptions, in-flight messages, QoS 2 receipts) sits behind a tokio
//!   mutex. The connection task serving the session holds the guard for its whole life, so a
//!   second connection with the same client id (takeover) kicks the first and then simply waits
//!   for the guard; expiry and will timers take the same guard.

mod inflight;
pub mod lifecycle;
mod store;

pub use inflight::{Inflight, InflightWindow};
pub use store::{MemoryStore, SessionStore, TenantSessionStore};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use smallvec::SmallVec;
use starling_codec::{MqttString, QoS, ReasonCode, SubscriptionOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Credential;
use crate::message::{Delivery, Message};
use crate::metrics::{DropReason, Metrics};
use crate::retained::RetainedCursor;

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
    /// The sequence number of the next delivery written to the store.
    next_stored: u64,
}

/// Why the broker closes the connection serving a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another connection took the session over (0x8E).
    TakenOver,
    /// Its outbox stayed congested past the grace (0x97).
    SlowConsumer,
    /// Its token was revoked (0x87).
    Revoked,
    /// The key that signed its token left the tenant's key set (0x87).
    KeyRetired,
    /// Its tenant was removed (0x87).
    TenantRemoved,
}

impl Kick {
    /// The DISCONNECT reason code.
    pub fn reason(self) -> ReasonCode {
        match self {
            Kick::TakenOver => ReasonCode::SESSION_TAKEN_OVER,
            Kick::SlowConsumer => ReasonCode::QUOTA_EXCEEDED,
            Kick::Revoked | Kick::KeyRetired | Kick::TenantRemoved => ReasonCode::NOT_AUTHORIZED,
        }
    }

    /// Whether the credential the session was let in with no longer holds. Then the session
    /// ends with the connection, and its will (delayed or not) and the messages it still
    /// waits on the on-publish hook for are discarded.
    pub fn ends_credential(self) -> bool {
        matches!(self, Kick::Revoked | Kick::KeyRetired | Kick::TenantRemoved)
    }

    /// For the log line and the reason string.
    pub fn describe(self) -> &'static str {
        match self {
            Kick::TakenOver => "session taken over",
            Kick::SlowConsumer => "slow consumer",
            Kick::Revoked => "token revoked",
            Kick::KeyRetired => "the token's signing key was retired",
            Kick::TenantRemoved => "tenant removed",
        }
    }
}

/// What the in-flight window has room for: QoS 1/2 deliveries by count (the client's Receive
/// Maximum and `limits.max_inflight`) and by weight (`limits.max_queued_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// Deliveries.
    pub messages: usize,
    /// Their weight ([`Delivery::weight`]).
    pub bytes: usize,
    /// Nothing is in flight: one delivery goes whatever its weight, so that one heavier than
    /// the bound (queued before the bound was lowered) cannot stop the session.
    pub idle: bool,
}

impl Room {
    /// Whether a delivery of `weight` fits; if so, the room left after it.
    pub fn take(&mut self, weight: usize) -> bool {
        if self.messages == 0 || (weight > self.bytes && !self.idle) {
            return false;
        }
        self.messages -= 1;
        self.bytes = self.bytes.saturating_sub(weight);
        self.idle = false;
        true
    }
}

/// What [`Session::offer`] did with a delivery.
#[derive(Debug)]
pub enum Offered {
    /// Queued.
    Queued,
    /// No room now; offer it again once the outbox has drained.
    Later(Delivery),
    /// It can never fit the outbox: dropped and counted (`queue_full`).
    Dropped,
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
    /// Cancels the connection currently serving the session (takeover, revocation), saying
    /// why in the slot.
    kick: Mutex<Option<(CancellationToken, Arc<Mutex<Kick>>)>>,
    /// The credential of the last connection, for revocation and key retirement sweeps.
    credential: Mutex<Option<Credential>>,
    /// Cancelled when the session ends because its credential no longer holds: what it had
    /// started and not finished (a will waiting for the on-publish hook, the hook's verdicts
    /// on its messages) is dropped.
    credential_ended: CancellationToken,
    /// The state a connection owns while it serves the session.
    pub state: Arc<tokio::sync::Mutex<SessionState>>,
    /// Where its state is written through.
    store: Arc<dyn SessionStore>,
    /// Set while the session outlives its connection (expiry interval above 0): then its
    /// QoS 1/2 deliveries are written to the store.
    persistent: Arc<AtomicBool>,
}

/// A subscription as the session remembers it (for resumption and UNSUBSCRIBE).
#[derive(Debug, Clone)]
pub struct SubscriptionRecord {
    /// Options as granted.
    pub options: SubscriptionOptions,
    /// Subscription identifier, if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

/// A will waiting for its delay to pass.
#[derive(Debug)]
pub struct PendingWill {
    /// Cancelled when the will must not be published by its timer any more [MQTT-3.1.3-9].
    pub cancel: CancellationToken,
    /// The will, for publishing it early when the session ends first.
    pub message: Arc<crate::message::Message>,
    /// Set by whoever decides the will's fate first: its timer (which publishes it) or the
    /// session's state (resumed: discarded; ended: published now). The other does nothing, so
    /// a will is published once even when its timer fires while its session is ending.
    claimed: Arc<AtomicBool>,
}

impl PendingWill {
    /// `message`, waiting for its delay.
    pub fn new(message: Arc<crate::message::Message>) -> Self {
        PendingWill {
            cancel: CancellationToken::new(),
            message,
            claimed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Claims the will for its timer: true when neither the session's state nor an earlier
    /// claim took it first.
    pub fn claim(claimed: &AtomicBool) -> bool {
        !claimed.swap(true, Ordering::AcqRel)
    }

    /// The flag the timer claims through.
    pub fn claim_flag(&self) -> Arc<AtomicBool> {
        self.claimed.clone()
    }
}

/// Retained messages a subscription is owed, read from the store as the outbox has room.
#[derive(Debug)]
pub struct PendingRetained {
    /// Where the reading stands.
    pub cursor: RetainedCursor,
    /// The subscription's granted QoS.
    pub qos: QoS,
    /// The subscription's identifier.
    pub id: Option<u32>,
    /// Read from the store and not queued yet: at most one read's worth.
    pub ready: VecDeque<Arc<Message>>,
}

/// What a connection owns while serving the session (and timers while it has none). Every
/// change to what the session keeps across its connections goes through these methods, which
/// write it through to the tenant's [`SessionStore`].
#[derive(Debug)]
pub struct SessionState {
    client_id: Arc<str>,
    store: Arc<dyn SessionStore>,
    /// Shared with [`Session`]: whether changes are written to the store.
    persistent: Arc<AtomicBool>,
    /// Subscriptions by filter as the client wrote it (including `$share/g/`). The keys are
    /// copies: a slice would keep the whole SUBSCRIBE packet alive.
    subscriptions: HashMap<MqttString, SubscriptionRecord>,
    /// Subscriptions still owed retained messages, oldest first: where the reading of the
    /// retained store stands, which a new connection starts over.
    pub retained: VecDeque<PendingRetained>,
    /// Outgoing QoS 1/2 messages.
    inflight: InflightWindow,
    /// Packet ids of QoS 2 PUBLISHes received and not yet released by PUBREL.
    incoming_qos2: HashSet<u16>,
    /// Last packet id handed out.
    last_packet_id: u16,
    /// Packet ids never handed out: the client may hold a QoS 2 message under them that the
    /// session, moved from another replica, cannot release (`[cluster]`).
    reserved: HashSet<u16>,
    /// The packet ids handed out, first and last: all of them, or with a cluster one half,
    /// the other one on each replica the session moves to (see [`SessionState::use_half`]).
    packet_ids: (u16, u16),
    /// Session Expiry Interval in seconds (0: ends with the connection).
    expiry_interval: u32,
    /// A will whose delay is running.
    pending_will: Option<PendingWill>,
    /// Set when the session has ended; a connection that finds it set starts afresh.
    ended: bool,
}

impl SessionState {
    fn new(client_id: Arc<str>, store: Arc<dyn SessionStore>, persistent: Arc<AtomicBool>) -> Self {
        SessionState {
            client_id,
            store,
            persistent,
            subscriptions: HashMap::new(),
            retained: VecDeque::new(),
            inflight: InflightWindow::default(),
            incoming_qos2: HashSet::new(),
            last_packet_id: 0,
            reserved: HashSet::new(),
            packet_ids: (1, u16::MAX),
            expiry_interval: 0,
            pending_will: None,
            ended: false,
        }
    }

    /// Whether changes are written to the store: the session outlives its connection.
    fn keeps(&self) -> bool {
        self.expiry_interval > 0
    }

    /// The next free packet id, or `None` when all are in use.
    pub fn next_packet_id(&mut self) -> Option<u16> {
        let (lo, hi) = self.packet_ids;
        for _ in lo..=hi {
            self.last_packet_id = if self.last_packet_id < lo || self.last_packet_id >= hi {
                lo
            } else {
                self.last_packet_id + 1
            };
            if !self.inflight.contains(self.last_packet_id)
                && !self.reserved.contains(&self.last_packet_id)
            {
                return Some(self.last_packet_id);
            }
        }
        None
    }

    /// The outgoing QoS 1/2 messages in flight.
    pub fn inflight(&self) -> &InflightWindow {
        &self.inflight
    }

    /// Removes an in-flight entry.
    pub fn complete(&mut self, packet_id: u16) -> Option<Inflight> {
        let entry = self.inflight.complete(packet_id)?;
        if self.keeps() {
            self.store.completed(&self.client_id, packet_id);
        }
        Some(entry)
    }

    /// Records an in-flight entry: sent last, or in the place of the one it replaces.
    pub fn insert_inflight(&mut self, packet_id: u16, entry: Inflight) {
        self.inflight.insert(packet_id, entry);
        if self.keeps() {
            if let (Some(order), Some(entry)) = (
                self.inflight.order_of(packet_id),
                self.inflight.get(packet_id),
            ) {
                self.store
                    .in_flight(&self.client_id, packet_id, order, entry);
            }
        }
    }

    /// The delivery taken from the queue under `seq` (0: not stored) was dropped instead of
    /// sent (expired, not readable, too large): its stored copy goes.
    pub fn dropped_queued(&self, seq: u64) {
        if seq != 0 && self.keeps() {
            self.store.dequeued(&self.client_id, seq);
        }
    }

    /// Records an in-flight entry read back from the store, at its place in the send order.
    pub fn restore_inflight(&mut self, packet_id: u16, order: u64, entry: Inflight) {
        self.inflight.restore(packet_id, order, entry);
    }

    /// Hands out packet ids of one half only (`[cluster]`: `epoch` counts the replicas the
    /// session moved to): a replica that died may have sent QoS 2 PUBLISHes whose ids were not
    /// recorded yet, which the client may hold awaiting a PUBREL no one sends; the next replica
    /// uses the other half, so it never sends a new message under one of them.
    pub fn use_half(&mut self, epoch: u32) {
        self.packet_ids = if epoch % 2 == 0 {
            (1, 32_767)
        } else {
            (32_768, u16::MAX)
        };
    }

    /// Never hands out `packet_id` (see `reserved`).
    pub fn reserve_packet_id(&mut self, packet_id: u16) {
        self.reserved.insert(packet_id);
    }

    /// Records a QoS 2 receipt read back from the store.
    pub fn restore_receipt(&mut self, packet_id: u16) {
        self.incoming_qos2.insert(packet_id);
    }

    /// Records a subscription read back from the store (already written).
    pub fn restore_subscription(&mut self, filter: &str, record: SubscriptionRecord) {
        self.subscriptions
            .insert(MqttString::from(filter.to_string()), record);
    }

    /// Sets the expiry interval read back from the store (already written).
    pub fn restore_expiry_interval(&mut self, secs: u32) {
        self.expiry_interval = secs;
        self.persistent.store(secs > 0, Ordering::Relaxed);
    }

    /// Records the will read back from the store (already written) whose delay runs.
    pub fn restore_pending_will(&mut self, will: PendingWill) {
        self.pending_will = Some(will);
    }

    /// The session lost its connection and ends at `ends_at` (`None`: never) unless resumed.
    pub fn went_offline(&mut self, ends_at: Option<tokio::time::Instant>) {
        if self.keeps() {
            self.store
                .went_offline(&self.client_id, self.expiry_interval, ends_at);
        }
    }

    /// The durable store behind the session, if any, and whether the session writes to it.
    pub fn durable(&self) -> Option<&crate::storage::Storage> {
        if self.keeps() {
            self.store.durable()
        } else {
            None
        }
    }

    /// Empties the in-flight window, returning its messages in send order.
    pub fn take_inflight(&mut self) -> Vec<(u16, Inflight)> {
        let all = self.inflight.take_all();
        if self.keeps() {
            for (id, _) in &all {
                self.store.completed(&self.client_id, *id);
            }
        }
        all
    }

    /// Whether the QoS 2 message under `packet_id` was received and not yet released.
    pub fn owns_receipt(&self, packet_id: u16) -> bool {
        self.incoming_qos2.contains(&packet_id)
    }

    /// QoS 2 messages received and not yet released.
    pub fn receipts(&self) -> usize {
        self.incoming_qos2.len()
    }

    /// Owns the QoS 2 message under `packet_id` until its PUBREL.
    pub fn own_receipt(&mut self, packet_id: u16) {
        if self.incoming_qos2.insert(packet_id) && self.keeps() {
            self.store.received(&self.client_id, packet_id);
        }
    }

    /// Releases the QoS 2 message under `packet_id`; whether it was owned.
    pub fn release_receipt(&mut self, packet_id: u16) -> bool {
        let owned = self.incoming_qos2.remove(&packet_id);
        if owned && self.keeps() {
            self.store.released(&self.client_id, packet_id);
        }
        owned
    }

    /// The subscriptions, by filter as the client wrote it.
    pub fn subscriptions(&self) -> &HashMap<MqttString, SubscriptionRecord> {
        &self.subscriptions
    }

    /// Records a subscription to `filter` (as the client wrote it), or its new options.
    pub fn subscribe(&mut self, filter: &str, record: SubscriptionRecord) {
        if self.keeps() {
            self.store.subscribed(&self.client_id, filter, &record);
        }
        match self.subscriptions.get_mut(filter) {
            Some(r) => *r = record,
            // A copy: the packet's buffer may be large (user properties).
            None => {
                self.subscriptions
                    .insert(MqttString::from(filter.to_string()), record);
            }
        }
    }

    /// Forgets the subscription to `filter`; whether there was one. Retained messages it was
    /// still owed are not sent any more [MQTT-3.10.4-2].
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        if self.subscriptions.remove(filter).is_none() {
            return false;
        }
        if self.keeps() {
            self.store.unsubscribed(&self.client_id, filter);
        }
        let subscriptions = &self.subscriptions;
        self.retained
            .retain(|p| subscriptions.contains_key(p.cursor.filter()));
        true
    }

    /// The Session Expiry Interval in seconds.
    pub fn expiry_interval(&self) -> u32 {
        self.expiry_interval
    }

    /// Sets the Session Expiry Interval. Also called on every connection: the session is
    /// marked online in the store.
    pub fn set_expiry_interval(&mut self, secs: u32) {
        let was = self.expiry_interval;
        self.expiry_interval = secs;
        self.persistent.store(secs > 0, Ordering::Relaxed);
        if was != secs || secs > 0 {
            if was > 0 || secs > 0 {
                self.store.expiry_set(&self.client_id, secs);
            }
            if was == 0 && secs > 0 {
                // A session kept from now on: what it has so far is written too.
                for (filter, record) in &self.subscriptions {
                    self.store
                        .subscribed(&self.client_id, filter.as_str(), record);
                }
            }
        }
    }

    /// Records a will whose delay runs until `due`.
    pub fn set_pending_will(&mut self, will: PendingWill, due: tokio::time::Instant) {
        if self.keeps() {
            self.store
                .will_pending(&self.client_id, Some((&will.message, due)));
        }
        self.pending_will = Some(will);
    }

    /// Takes the will whose delay runs, if any: it is not the timer's to publish any more.
    /// `None` as well when its timer already published it.
    pub fn take_pending_will(&mut self) -> Option<PendingWill> {
        let will = self.pending_will.take()?;
        will.cancel.cancel();
        if self.keeps() {
            self.store.will_pending(&self.client_id, None);
        }
        PendingWill::claim(&will.claimed).then_some(will)
    }

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Marks the session ended; returns its subscriptions (to remove from the router).
    pub fn end(&mut self) -> HashMap<MqttString, SubscriptionRecord> {
        self.ended = true;
        self.retained.clear();
        if self.keeps() {
            self.store.ended(&self.client_id);
        }
        self.persistent.store(false, Ordering::Relaxed);
        std::mem::take(&mut self.subscriptions)
    }
}

impl Session {
    /// A new, empty session.
    pub fn new(
        client_id: Arc<str>,
        limits: OutboxLimits,
        store: Arc<dyn SessionStore>,
    ) -> Arc<Self> {
        let persistent = Arc::new(AtomicBool::new(false));
        let state = SessionState::new(client_id.clone(), store.clone(), persistent.clone());
        Arc::new(Session {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            client_id,
            limits,
            outbox: Mutex::new(Outbox {
                items: VecDeque::new(),
                bytes: 0,
                next_stored: 1,
            }),
            notify: Notify::new(),
            space: Notify::new(),
            awaited: AtomicBool::new(false),
            filling: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            kick: Mutex::new(None),
            credential: Mutex::new(None),
            credential_ended: CancellationToken::new(),
            state: Arc::new(tokio::sync::Mutex::new(state)),
            store,
            persistent,
        })
    }

    /// Whether a QoS 1/2 delivery pushed now would be written to the store.
    pub fn stores(&self, qos: QoS) -> bool {
        qos != QoS::AtMostOnce && self.persistent.load(Ordering::Relaxed)
    }

    /// Queues deliveries read back from the store, in their order, ignoring the bounds (they
    /// were within them when they were queued).
    pub fn restore_queue(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        let mut outbox = self.outbox.lock();
        for d in deliveries {
            outbox.next_stored = outbox.next_stored.max(d.stored.saturating_add(1));
            outbox.bytes += d.weight();
            outbox.items.push_back(d);
        }
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
    pub fn push(&self, mut delivery: Delivery, metrics: &Metrics) -> bool {
        if delivery.qos == QoS::AtMostOnce && !self.is_connected() {
            metrics.count_drop(DropReason::offline_qos0);
            return false;
        }
        let weight = delivery.weight();
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
            if self.stores(delivery.qos) {
                // Under the outbox's lock: the store sees the queue in its order.
                delivery.stored = outbox.next_stored;
                outbox.next_stored += 1;
                self.store.queued(&self.client_id, &delivery);
            } else {
                delivery.stored = 0;
            }
            outbox.items.push_back(delivery);
            if !self.is_drained(&outbox) && !self.filling.load(Ordering::Relaxed) {
                self.filling.store(true, Ordering::Relaxed);
            }
        }
        self.notify.notify_one();
        true
    }

    /// Queues a delivery only while the outbox is below half its bounds (so that live messages
    /// keep room): for retained messages streamed on subscribe. Not counted as a drop when it
    /// has to wait.
    pub fn offer(&self, delivery: Delivery, metrics: &Metrics) -> Offered {
        let weight = delivery.weight();
        {
            let mut outbox = self.outbox.lock();
            if weight > self.limits.max_bytes {
                drop(outbox);
                metrics.count_drop(DropReason::queue_full);
                return Offered::Dropped;
            }
            if !self.is_drained(&outbox)
                || outbox.items.len() >= self.limits.max_messages
                || outbox.bytes + weight > self.limits.max_bytes
            {
                return Offered::Later(delivery);
            }
            outbox.bytes += weight;
            outbox.items.push_back(delivery);
            if !self.is_drained(&outbox) && !self.filling.load(Ordering::Relaxed) {
                self.filling.store(true, Ordering::Relaxed);
            }
        }
        self.notify.notify_one();
        Offered::Queued
    }

    /// Whether [`Session::offer`] would take a small delivery now.
    pub fn has_room_for_offers(&self) -> bool {
        let outbox = self.outbox.lock();
        self.is_drained(&outbox) && outbox.items.len() < self.limits.max_messages
    }

    /// Removes the queued deliveries `keep` refuses; returns how many.
    pub fn retain_outbox(&self, mut keep: impl FnMut(&Delivery) -> bool) -> u64 {
        let mut outbox = self.outbox.lock();
        let mut removed = 0;
        let mut bytes = outbox.bytes;
        outbox.items.retain(|d| {
            let k = keep(d);
            if !k {
                removed += 1;
                bytes = bytes.saturating_sub(d.weight());
                if d.stored != 0 {
                    self.store.dequeued(&self.client_id, d.stored);
                }
            }
            k
        });
        outbox.bytes = bytes;
        if self.filling.load(Ordering::Relaxed) && self.is_drained(&outbox) {
            self.filling.store(false, Ordering::Relaxed);
        }
        removed
    }

    /// Puts deliveries back at the front of the outbox (messages that were in flight on a
    /// connection that ended), ignoring the bounds: they were accounted for before.
    pub fn requeue_front(&self, deliveries: impl DoubleEndedIterator<Item = Delivery>) {
        let mut outbox = self.outbox.lock();
        for d in deliveries.rev() {
            outbox.bytes += d.weight();
            outbox.items.push_front(d);
        }
    }

    /// Takes deliveries from the front of the outbox into `out` until it is full (its inline
    /// capacity of `N`), QoS 0 ones and the QoS 1/2 ones `room` has room for. Returns whether
    /// more remain.
    pub fn take<const N: usize>(&self, out: &mut SmallVec<[Delivery; N]>, mut room: Room) -> bool {
        let mut outbox = self.outbox.lock();
        while out.len() < N {
            let Some(front) = outbox.items.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && !room.take(front.weight()) {
                break;
            }
            let Some(d) = outbox.items.pop_front() else {
                break;
            };
            outbox.bytes = outbox.bytes.saturating_sub(d.weight());
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

    /// Marks the session served by a connection that `cancel` stops (saying why in `slot`);
    /// returns the generation.
    pub fn attach(&self, cancel: CancellationToken, slot: Arc<Mutex<Kick>>) -> u64 {
        *self.kick.lock() = Some((cancel, slot));
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

    /// Records the credential of the connection serving the session.
    pub fn set_credential(&self, credential: Option<Credential>) {
        if let Some(c) = &credential {
            if self.persistent.load(Ordering::Relaxed) {
                self.store.credential_set(&self.client_id, c);
            }
        }
        *self.credential.lock() = credential;
    }

    /// Puts back the credential read from the store with the session (already written).
    pub fn restore_credential(&self, credential: Option<Credential>) {
        *self.credential.lock() = credential;
    }

    /// The credential of the connection serving (or that last served) the session.
    pub fn credential(&self) -> Option<Credential> {
        self.credential.lock().clone()
    }

    /// Cancelled when the session ends because its credential no longer holds.
    pub fn credential_ended(&self) -> &CancellationToken {
        &self.credential_ended
    }

    /// Asks the connection serving the session, if any, to close for `kick`. Returns whether
    /// one was serving it. A kick that ends the credential wins over one that does not.
    pub fn kick(&self, kick: Kick) -> bool {
        match self.kick.lock().as_ref() {
            Some((cancel, slot)) => {
                let mut why = slot.lock();
                if !why.ends_credential() || !cancel.is_cancelled() {
                    *why = kick;
                }
                cancel.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> Delivery {
        Delivery {
            message: Arc::new(Message::new(
                "t",
                b"x",
                QoS::AtMostOnce,
                false,
                &Default::default(),
                None,
                None,
            )),
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: Default::default(),
            shared: None,
            stored: 0,
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
            Arc::new(MemoryStore),
        );
        session.attach(
            CancellationToken::new(),
            Arc::new(Mutex::new(Kick::TakenOver)),
        );
        for _ in 0..4 {
            assert!(session.push(delivery(), &metrics));
        }
        assert!(!session.is_filling(), "4 of 8 is not above half");
        assert!(session.push(delivery(), &metrics));
        assert!(session.is_filling(), "5 of 8 is");
        let mut out = SmallVec::<[Delivery; 1]>::new();
        let closed = Room {
            messages: 0,
            bytes: 0,
            idle: false,
        };
        assert!(session.take(&mut out, closed));
        assert!(!session.is_filling(), "back to 4 of 8");
    }

    /// A store that writes down what it is told, in order.
    #[derive(Debug, Default)]
    struct Journal(Mutex<Vec<String>>);

    impl SessionStore for Journal {
        fn subscribed(&self, c: &str, f: &str, r: &SubscriptionRecord) {
            self.0.lock().push(format!("{c} sub {f} {:?}", r.id));
        }
        fn unsubscribed(&self, c: &str, f: &str) {
            self.0.lock().push(format!("{c} unsub {f}"));
        }
        fn queued(&self, c: &str, d: &Delivery) {
            self.0.lock().push(format!("{c} queued {}", d.stored));
        }
        fn dequeued(&self, c: &str, seq: u64) {
            self.0.lock().push(format!("{c} dequeued {seq}"));
        }
        fn went_offline(&self, c: &str, secs: u32, _: Option<tokio::time::Instant>) {
            self.0.lock().push(format!("{c} offline {secs}"));
        }
        fn in_flight(&self, c: &str, id: u16, _: u64, e: &Inflight) {
            let what = match e {
                Inflight::Published(_) => "published",
                Inflight::Released => "released",
            };
            self.0.lock().push(format!("{c} inflight {id} {what}"));
        }
        fn completed(&self, c: &str, id: u16) {
            self.0.lock().push(format!("{c} completed {id}"));
        }
        fn received(&self, c: &str, id: u16) {
            self.0.lock().push(format!("{c} received {id}"));
        }
        fn released(&self, c: &str, id: u16) {
            self.0.lock().push(format!("{c} released {id}"));
        }
        fn expiry_set(&self, c: &str, secs: u32) {
            self.0.lock().push(format!("{c} expiry {secs}"));
        }
        fn will_pending(&self, c: &str, will: Option<(&Message, tokio::time::Instant)>) {
            let topic = will.map(|(w, _)| w.topic.as_str().to_string());
            self.0.lock().push(format!("{c} will {topic:?}"));
        }
        fn ended(&self, c: &str) {
            self.0.lock().push(format!("{c} ended"));
        }
    }

    /// A will's timer that fires while its session is ending publishes it, and the ending
    /// session then finds nothing to publish: once, whichever comes first.
    #[test]
    fn a_delayed_will_is_claimed_once_by_its_timer_or_its_session() {
        let mut state = SessionState::new(
            Arc::from("c"),
            Arc::new(MemoryStore),
            Arc::new(AtomicBool::new(false)),
        );
        let fired = PendingWill::new(delivery().message);
        assert!(
            PendingWill::claim(&fired.claim_flag()),
            "the timer claims it"
        );
        state.set_pending_will(fired, tokio::time::Instant::now());
        assert!(state.take_pending_will().is_none(), "published once");
    }

    #[test]
    fn packet_ids_come_from_one_half_skipping_reserved_ones_and_wrap_within_it() {
        let mut state = SessionState::new(
            Arc::from("c"),
            Arc::new(MemoryStore),
            Arc::new(AtomicBool::new(false)),
        );
        assert_eq!(state.next_packet_id(), Some(1), "all ids without a cluster");
        state.use_half(1);
        state.reserve_packet_id(32_769);
        assert_eq!(state.next_packet_id(), Some(32_768));
        assert_eq!(
            state.next_packet_id(),
            Some(32_770),
            "a reserved id is skipped"
        );
        state.last_packet_id = u16::MAX;
        assert_eq!(
            state.next_packet_id(),
            Some(32_768),
            "wraps within its half"
        );
        state.use_half(2);
        assert_eq!(state.next_packet_id(), Some(1));
        state.last_packet_id = 32_767;
        assert_eq!(state.next_packet_id(), Some(1), "never the other half");
    }

    #[test]
    fn every_change_to_a_session_is_written_through_its_store_in_order() {
        let journal = Arc::new(Journal::default());
        let mut state = SessionState::new(
            Arc::from("c"),
            journal.clone(),
            Arc::new(AtomicBool::new(false)),
        );
        state.set_expiry_interval(60);
        let record = SubscriptionRecord {
            options: SubscriptionOptions::default(),
            id: Some(7),
        };
        state.subscribe("a/+", record.clone());
        assert!(!state.unsubscribe("b"), "no such subscription");
        assert!(state.unsubscribe("a/+"));
        state.subscribe("x", record);
        state.set_expiry_interval(60);
        state.set_expiry_interval(60);
        let id = state.next_packet_id().expect("a free packet id");
        state.insert_inflight(id, Inflight::Published(delivery()));
        state.insert_inflight(id, Inflight::Released);
        assert!(state.complete(id).is_some());
        assert!(state.complete(id).is_none(), "completed once");
        state.own_receipt(9);
        assert!(state.owns_receipt(9));
        assert!(state.release_receipt(9));
        assert!(!state.release_receipt(9));
        state.set_pending_will(
            PendingWill::new(delivery().message),
            tokio::time::Instant::now(),
        );
        let will = state.take_pending_will().expect("the will");
        assert!(will.cancel.is_cancelled(), "its timer is told");
        assert!(
            !PendingWill::claim(&will.claim_flag()),
            "its timer finds it taken"
        );
        state.insert_inflight(2, Inflight::Released);
        let left = state.take_inflight();
        assert_eq!(left.len(), 1);
        let subscriptions = state.end();
        assert!(subscriptions.contains_key("x"));
        assert!(state.is_ended());
        assert_eq!(
            *journal.0.lock(),
            [
                "c expiry 60",
                "c sub a/+ Some(7)",
                "c unsub a/+",
                "c sub x Some(7)",
                "c expiry 60",
                "c expiry 60",
                "c inflight 1 published",
                "c inflight 1 released",
                "c completed 1",
                "c received 9",
                "c released 9",
                "c will Some(\"t\")",
                "c will None",
                "c inflight 2 released",
                "c completed 2",
                "c ended",
            ]
        );
    }
}
