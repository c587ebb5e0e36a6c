//! Where a session's state is written as it changes: the seam for durable sessions.
//!
//! [`super::SessionState`] is the authoritative copy while the process runs, and every change
//! to what a session must keep across a restart goes through it to a [`SessionStore`]: its
//! subscriptions, its queued and in-flight deliveries, the QoS 2 messages it received and not
//! yet released, its expiry interval, a will waiting for its delay, and its end. Only sessions
//! with an expiry interval above 0 are written, and only their QoS 1/2 deliveries. Without a
//! data directory the store is [`MemoryStore`]: sessions live as long as the process, so it
//! has nothing to add. With one it is [`crate::storage::TenantStore`], which writes these
//! changes down; they are read back at start.

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use super::{Inflight, SubscriptionRecord};
use crate::message::{Delivery, Message};
use crate::storage::Storage;

/// Receives every change to a session's durable state, in the order the session makes them.
/// Called with the session's state lock held, so it must not block; a store that writes to
/// disk or over the network queues the change and writes it in the background.
pub trait SessionStore: Send + Sync + Debug {
    /// The session subscribed to `filter` (as the client wrote it), or replaced its options.
    fn subscribed(&self, client_id: &str, filter: &str, record: &SubscriptionRecord);
    /// The session no longer subscribes to `filter`.
    fn unsubscribed(&self, client_id: &str, filter: &str);
    /// A QoS 1/2 delivery was queued under its sequence number (`delivery.stored`).
    fn queued(&self, client_id: &str, delivery: &Delivery);
    /// The queued delivery `seq` left the queue without going in flight (dropped).
    fn dequeued(&self, client_id: &str, seq: u64);
    /// A QoS 1/2 delivery went in flight under `packet_id` (out of the queue, if it was
    /// queued, in the same write), or moved on (PUBREL sent); `order` is its place in the send
    /// order.
    fn in_flight(&self, client_id: &str, packet_id: u16, order: u64, entry: &Inflight);
    /// The in-flight delivery under `packet_id` was completed or dropped.
    fn completed(&self, client_id: &str, packet_id: u16);
    /// A QoS 2 message from the client under `packet_id` is owned until its PUBREL.
    fn received(&self, client_id: &str, packet_id: u16);
    /// The QoS 2 message under `packet_id` was released.
    fn released(&self, client_id: &str, packet_id: u16);
    /// The session's expiry interval is now `secs` (`u32::MAX`: never).
    fn expiry_set(&self, client_id: &str, secs: u32);
    /// The session lost its connection; it ends at `ends_at` (`None`: never) unless resumed.
    fn went_offline(&self, client_id: &str, secs: u32, ends_at: Option<Instant>);
    /// A will waits for its delay until `due` (`Some`), or no longer does (`None`).
    fn will_pending(&self, client_id: &str, will: Option<(&Message, Instant)>);
    /// The session ended: everything kept for it goes.
    fn ended(&self, client_id: &str);
    /// The credential of the connection serving the session is now `credential`: kept with a
    /// persistent session so that, read back after a restart, the session still ends when that
    /// credential is revoked, its key retired or its time up. Stores that keep nothing across
    /// a restart have nothing to do.
    fn credential_set(&self, _client_id: &str, _credential: &crate::auth::Credential) {}
    /// The durable store behind, whose commits acknowledgements wait for; `None` in memory.
    fn durable(&self) -> Option<&Storage> {
        None
    }
}

/// The store of a broker whose sessions last as long as the process: the session's state in
/// memory is all there is, so nothing more is written.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryStore;

impl SessionStore for MemoryStore {
    fn subscribed(&self, _: &str, _: &str, _: &SubscriptionRecord) {}
    fn unsubscribed(&self, _: &str, _: &str) {}
    fn queued(&self, _: &str, _: &Delivery) {}
    fn dequeued(&self, _: &str, _: u64) {}
    fn in_flight(&self, _: &str, _: u16, _: u64, _: &Inflight) {}
    fn completed(&self, _: &str, _: u16) {}
    fn received(&self, _: &str, _: u16) {}
    fn released(&self, _: &str, _: u16) {}
    fn expiry_set(&self, _: &str, _: u32) {}
    fn went_offline(&self, _: &str, _: u32, _: Option<Instant>) {}
    fn will_pending(&self, _: &str, _: Option<(&Message, Instant)>) {}
    fn ended(&self, _: &str) {}
}

/// A tenant's store: the local one ([`MemoryStore`] or the data directory's), until the tenant
/// joins a cluster; then the cluster's, which keeps persistent sessions in JetStream. The
/// acknowledgements that wait for a commit wait for the local store's, if any.
#[derive(Debug)]
pub struct TenantSessionStore {
    local: Arc<dyn SessionStore>,
    cluster: OnceLock<Arc<dyn SessionStore>>,
}

impl TenantSessionStore {
    /// Writes to `local` until [`TenantSessionStore::use_cluster`].
    pub fn new(local: Arc<dyn SessionStore>) -> Self {
        Self {
            local,
            cluster: OnceLock::new(),
        }
    }

    /// From now on, sessions are written to `cluster`. Once.
    pub fn use_cluster(&self, cluster: Arc<dyn SessionStore>) {
        let _ = self.cluster.set(cluster);
    }

    fn pick(&self) -> &dyn SessionStore {
        match self.cluster.get() {
            Some(c) => &**c,
            None => &*self.local,
        }
    }
}

impl SessionStore for TenantSessionStore {
    fn subscribed(&self, c: &str, f: &str, r: &SubscriptionRecord) {
        self.pick().subscribed(c, f, r);
    }
    fn unsubscribed(&self, c: &str, f: &str) {
        self.pick().unsubscribed(c, f);
    }
    fn queued(&self, c: &str, d: &Delivery) {
        self.pick().queued(c, d);
    }
    fn dequeued(&self, c: &str, seq: u64) {
        self.pick().dequeued(c, seq);
    }
    fn in_flight(&self, c: &str, id: u16, order: u64, e: &Inflight) {
        self.pick().in_flight(c, id, order, e);
    }
    fn completed(&self, c: &str, id: u16) {
        self.pick().completed(c, id);
    }
    fn received(&self, c: &str, id: u16) {
        self.pick().received(c, id);
    }
    fn released(&self, c: &str, id: u16) {
        self.pick().released(c, id);
    }
    fn expiry_set(&self, c: &str, secs: u32) {
        self.pick().expiry_set(c, secs);
    }
    fn went_offline(&self, c: &str, secs: u32, ends_at: Option<Instant>) {
        self.pick().went_offline(c, secs, ends_at);
    }
    fn will_pending(&self, c: &str, will: Option<(&Message, Instant)>) {
        self.pick().will_pending(c, will);
    }
    fn ended(&self, c: &str) {
        self.pick().ended(c);
    }
    fn credential_set(&self, c: &str, credential: &crate::auth::Credential) {
        self.pick().credential_set(c, credential);
    }
    fn durable(&self) -> Option<&Storage> {
        self.local.durable()
    }
}
