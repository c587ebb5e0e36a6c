//! Application messages as they travel from a publisher to subscribers.
//!
//! A [`Message`] is built once per PUBLISH and shared (`Arc`) by every delivery; payload and
//! topic are `Bytes` slices of the publisher's read buffer, so fan-out copies nothing.

use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;
use starling_codec::{MqttString, PublishProperties, QoS};

/// One application message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name (never an alias).
    pub topic: MqttString,
    /// Payload.
    pub payload: Bytes,
    /// QoS the publisher sent it with.
    pub qos: QoS,
    /// The RETAIN flag the publisher set.
    pub retain: bool,
    /// Properties passed through to subscribers (topic alias and subscription identifiers removed).
    pub properties: PublishProperties,
    /// When the Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for No Local; `None` for messages the broker publishes itself.
    pub publisher: Option<Arc<str>>,
}

impl Message {
    /// Seconds left before expiry, rounded up; `None` without expiry, `Some(0)` when expired.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            if left.is_zero() {
                0
            } else {
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                u32::try_from(secs).unwrap_or(u32::MAX)
            }
        })
    }

    /// Whether the message has expired.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Bytes this message accounts for in a queue.
    pub fn weight(&self) -> usize {
        self.payload.len() + self.topic.as_str().len() + 64
    }
}

/// Subscription identifiers carried by one delivery; most have none or one.
pub type SubscriptionIds = SmallVec<[u32; 2]>;

/// A message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS of this delivery: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// The RETAIN flag to send.
    pub retain: bool,
    /// Identifiers of every matching subscription that has one.
    pub subscription_ids: SubscriptionIds,
    /// The shared subscription this delivery was chosen for, if any.
    pub shared: Option<SharedTarget>,
}

/// A shared subscription (`$share/{group}/{filter}`) a delivery was routed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTarget {
    /// The group name.
    pub group: Arc<str>,
    /// The topic filter without the `$share/{group}/` prefix.
    pub filter: Arc<str>,
}
