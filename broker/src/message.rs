//! Application messages as they travel from a publisher to subscribers.
//!
//! A [`Message`] is built once per PUBLISH and shared (`Arc`) by every delivery, so fan-out
//! copies nothing. [`Message::new`] copies its topic, payload and properties out of the packet
//! into one allocation of their size: a message then keeps alive what it weighs, not the read
//! buffer it arrived in (which may hold other, larger packets).

use std::mem::size_of;
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;
use starling_codec::{MqttString, PublishProperties, QoS};

/// What an `Arc` and the allocator add to a message, and the header of its shared buffer.
const OVERHEAD: usize = 64;
/// A message whose topic, payload and properties fit in this many bytes keeps them in the
/// allocation that shares them (one allocation besides the message's own); a larger one has a
/// second allocation of its size. Most messages of devices fit.
const INLINE: usize = 128;

/// One application message. Built by [`Message::new`]; a changed topic, payload or properties
/// needs a new message (the weight is computed once).
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
    /// Bytes the message holds: see [`Message::weight`].
    weight: usize,
    /// For a message a persistent session read from its JetStream consumer (`[cluster]`):
    /// acknowledged once the client has it, given back if dropped before.
    pub stream_ack: Option<crate::cluster::sessions::StreamAck>,
}

impl Message {
    /// A message with copies of `topic`, `payload` and `properties` (without topic alias and
    /// subscription identifiers, which never travel on), all in one allocation.
    pub fn new(
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: &PublishProperties,
        expires_at: Option<Instant>,
        publisher: Option<Arc<str>>,
    ) -> Message {
        let p = properties;
        let len_of = |s: &Option<MqttString>| s.as_ref().map_or(0, |s| s.len());
        let size = topic.len()
            + payload.len()
            + len_of(&p.response_topic)
            + len_of(&p.content_type)
            + p.correlation_data.as_ref().map_or(0, |d| d.len())
            + p.user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let mut buf = SmallVec::<[u8; INLINE]>::with_capacity(size);
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(payload);
        for s in [&p.response_topic, &p.content_type].into_iter().flatten() {
            buf.extend_from_slice(s.as_bytes());
        }
        if let Some(d) = &p.correlation_data {
            buf.extend_from_slice(d);
        }
        for (k, v) in &p.user_properties {
            buf.extend_from_slice(k.as_bytes());
            buf.extend_from_slice(v.as_bytes());
        }
        // The same walk again, now slicing the copy (which slices share without allocating).
        let all = Bytes::from_owner(buf);
        let mut at = 0;
        let mut take = |n: usize| {
            let b = all.slice(at..at + n);
            at += n;
            b
        };
        let topic = text(take(topic.len()), topic);
        let payload = take(payload.len());
        let response_topic = p.response_topic.as_ref().map(|s| text(take(s.len()), s));
        let content_type = p.content_type.as_ref().map(|s| text(take(s.len()), s));
        let correlation_data = p.correlation_data.as_ref().map(|d| take(d.len()));
        let mut user_properties = Vec::with_capacity(p.user_properties.len());
        for (k, v) in &p.user_properties {
            let k = text(take(k.len()), k);
            let v = text(take(v.len()), v);
            user_properties.push((k, v));
        }
        let properties = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: None,
            response_topic,
            correlation_data,
            user_properties,
            subscription_identifiers: Vec::new(),
            content_type,
        };
        let weight = size
            + size_of::<Message>()
            + size_of::<SmallVec<[u8; INLINE]>>()
            + properties.user_properties.capacity() * size_of::<(MqttString, MqttString)>()
            + OVERHEAD;
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at,
            publisher,
            weight,
            stream_ack: None,
        }
    }

    /// The client has this message (or it is dropped for good): a persistent session's
    /// consumer (`[cluster]`) is told.
    pub fn acknowledge_stream(&self) {
        if let Some(a) = &self.stream_ack {
            a.ack();
        }
    }

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

    /// The bytes this message holds, which every bound that holds it counts (queues, the
    /// on-publish hook, the retained store): topic, payload and every property, their
    /// bookkeeping and the message itself.
    pub fn weight(&self) -> usize {
        self.weight
    }
}

/// `bytes`, a copy of the valid string `original`, as a string.
fn text(bytes: Bytes, original: &str) -> MqttString {
    // Cannot fail: the bytes are those of a valid string.
    MqttString::try_from(bytes).unwrap_or_else(|_| MqttString::from(original.to_string()))
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
    /// Its sequence number in the session's queue on disk; 0 when it is not stored (QoS 0, a
    /// session that ends with its connection, no data directory).
    pub stored: u64,
}

impl Delivery {
    /// The bytes a queue holding this delivery holds: its message (shared, but kept alive by
    /// the queue) and the delivery itself with its subscription identifiers.
    #[inline]
    pub fn weight(&self) -> usize {
        let ids = if self.subscription_ids.spilled() {
            self.subscription_ids.capacity() * size_of::<u32>()
        } else {
            0
        };
        self.message.weight() + size_of::<Delivery>() + ids
    }
}

/// A shared subscription (`$share/{group}/{filter}`) a delivery was routed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTarget {
    /// The group name.
    pub group: Arc<str>,
    /// The topic filter without the `$share/{group}/` prefix.
    pub filter: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heavy() -> PublishProperties {
        PublishProperties {
            response_topic: Some(MqttString::from("r".repeat(1000))),
            correlation_data: Some(Bytes::from(vec![1; 2000])),
            content_type: Some(MqttString::from("c".repeat(3000))),
            user_properties: (0..100)
                .map(|_| {
                    (
                        MqttString::from("k".repeat(10)),
                        MqttString::from("v".repeat(90)),
                    )
                })
                .collect(),
            topic_alias: Some(3),
            subscription_identifiers: vec![7],
            ..Default::default()
        }
    }

    #[test]
    fn a_message_weighs_its_topic_payload_and_every_property() {
        let light = Message::new(
            "t/x",
            b"p",
            QoS::AtMostOnce,
            false,
            &Default::default(),
            None,
            None,
        );
        let m = Message::new("t/x", b"p", QoS::AtMostOnce, false, &heavy(), None, None);
        // 1000 + 2000 + 3000 + 100 x 100 bytes of properties, and 100 pairs of bookkeeping.
        let properties = 16_000 + 100 * size_of::<(MqttString, MqttString)>();
        assert_eq!(m.weight() - light.weight(), properties);
        assert!(light.weight() >= size_of::<Message>() + 4);
    }

    #[test]
    fn a_message_is_a_copy_that_keeps_nothing_of_its_packet() {
        let packet = Bytes::from(vec![b'a'; 64 * 1024]);
        // Shared (as a decoded packet's buffer is), so that `is_unique` can tell.
        let _ = packet.slice(0..1);
        let topic = MqttString::try_from(packet.slice(0..3)).unwrap();
        let m = Message::new(
            &topic,
            &packet[3..10],
            QoS::AtLeastOnce,
            true,
            &heavy(),
            None,
            None,
        );
        drop(topic);
        // The packet's buffer is not shared with the message any more.
        assert!(packet.is_unique(), "the message keeps the packet alive");
        assert_eq!(m.topic.as_str(), "aaa");
        assert_eq!(&m.payload[..], b"aaaaaaa");
        assert_eq!(m.properties.topic_alias, None);
        assert!(m.properties.subscription_identifiers.is_empty());
        assert_eq!(m.properties.user_properties.len(), 100);
        assert_eq!(m.properties.content_type.as_ref().unwrap().len(), 3000);
    }
}
