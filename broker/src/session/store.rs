//! Where a session's state is written as it changes: the seam for durable sessions.
//!
//! [`super::SessionState`] is the authoritative copy while the process runs, and every change
//! to what a session must keep across a restart goes through it to a [`SessionStore`]: its
//! subscriptions, its in-flight deliveries, the QoS 2 messages it received and not yet
//! released, its expiry interval, a will waiting for its delay, and its end. Today's store is
//! [`MemoryStore`]: sessions live as long as the process, so it has nothing to add. A durable
//! store writes these changes down and reloads them at start.

use std::fmt::Debug;

use super::{Inflight, SubscriptionRecord};
use crate::message::Message;

/// Receives every change to a session's durable state, in the order the session makes them.
/// Called with the session's state lock held, so it must not block; a store that writes to
/// disk or over the network queues the change and writes it in the background.
pub trait SessionStore: Send + Sync + Debug {
    /// The session subscribed to `filter` (as the client wrote it), or replaced its options.
    fn subscribed(&self, client_id: &str, filter: &str, record: &SubscriptionRecord);
    /// The session no longer subscribes to `filter`.
    fn unsubscribed(&self, client_id: &str, filter: &str);
    /// A QoS 1/2 delivery went in flight under `packet_id`, or moved on (PUBREL sent).
    fn in_flight(&self, client_id: &str, packet_id: u16, entry: &Inflight);
    /// The in-flight delivery under `packet_id` was completed or dropped.
    fn completed(&self, client_id: &str, packet_id: u16);
    /// A QoS 2 message from the client under `packet_id` is owned until its PUBREL.
    fn received(&self, client_id: &str, packet_id: u16);
    /// The QoS 2 message under `packet_id` was released.
    fn released(&self, client_id: &str, packet_id: u16);
    /// The session's expiry interval is now `secs` (`u32::MAX`: never).
    fn expiry_set(&self, client_id: &str, secs: u32);
    /// A will waits for its delay (`Some`), or no longer does (`None`).
    fn will_pending(&self, client_id: &str, will: Option<&Message>);
    /// The session ended: everything kept for it goes.
    fn ended(&self, client_id: &str);
}

/// The store of a broker whose sessions last as long as the process: the session's state in
/// memory is all there is, so nothing more is written.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryStore;

impl SessionStore for MemoryStore {
    fn subscribed(&self, _: &str, _: &str, _: &SubscriptionRecord) {}
    fn unsubscribed(&self, _: &str, _: &str) {}
    fn in_flight(&self, _: &str, _: u16, _: &Inflight) {}
    fn completed(&self, _: &str, _: u16) {}
    fn received(&self, _: &str, _: u16) {}
    fn released(&self, _: &str, _: u16) {}
    fn expiry_set(&self, _: &str, _: u32) {}
    fn will_pending(&self, _: &str, _: Option<&Message>) {}
    fn ended(&self, _: &str) {}
}
