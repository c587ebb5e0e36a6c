//! Outbound delivery: deliveries taken from the session's outbox as the in-flight window
//! allows, each checked (expiry, the credential's read permission, the client's Maximum Packet
//! Size), given a packet id and a topic alias, encoded, and recorded in flight; on resumption,
//! what was in flight is sent again.

use smallvec::SmallVec;
use starling_codec::{
    AckProperties, MqttString, Packet, ProtocolVersion, PubRel, Publish, QoS, ReasonCode,
};
use tokio::time::Instant;

use super::{Connection, WRITE_HIGH_WATER};
use crate::message::Delivery;
use crate::metrics::{DropReason, QosLabels};
use crate::session::Inflight;
use crate::transport::AsyncIo;

/// Deliveries taken from the outbox at once (into a batch on the stack).
const TAKE_BATCH: usize = 256;

/// Whether a PUBLISH is a delivery's first or a redelivery of one still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The first: a QoS 1/2 delivery gets a new packet id and goes in flight.
    First,
    /// Sent again on resumption with DUP and the packet id it has in flight [MQTT-4.4.0-1];
    /// never with a topic alias (the client's alias map did not survive the connection).
    Redelivery { packet_id: u16 },
}

/// What a delivery's topic goes out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutboundAlias {
    /// The topic name, without an alias.
    None,
    /// An alias the client knows: an empty topic name and the alias.
    Known(u16),
    /// The topic name with a new alias, which the client learns from this PUBLISH.
    New(u16),
}

impl<IO: AsyncIo> Connection<IO> {
    /// Takes deliveries from the outbox while the in-flight window allows and the write buffer
    /// is below its high-water mark.
    pub(super) fn pump_outbox(&mut self) {
        // On the stack: an idle connection keeps no batch.
        let mut batch = SmallVec::<[Delivery; TAKE_BATCH]>::new();
        self.window_full = false;
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
                self.send_delivery(d, Attempt::First);
            }
            if !more {
                self.more_queued = false;
                break;
            }
            if taken == 0 {
                // The window is closed; acknowledgements will reopen it.
                self.more_queued = true;
                self.window_full = true;
                break;
            }
        }
    }

    /// Encodes one delivery, or drops and counts it.
    fn send_delivery(&mut self, d: Delivery, attempt: Attempt) {
        let queued = match attempt {
            Attempt::First => d.stored,
            Attempt::Redelivery { .. } => 0,
        };
        if !self.try_send_delivery(d, attempt) {
            self.state.dropped_queued(queued);
        }
    }

    /// [`Connection::send_delivery`]; false when the delivery was dropped.
    fn try_send_delivery(&mut self, d: Delivery, attempt: Attempt) -> bool {
        let now = Instant::now();
        let metrics = self.ctx.metrics.clone();
        if d.message.is_expired(now) {
            // [MQTT-3.3.2-5] an expired message is not delivered.
            metrics.count_drop(DropReason::expired);
            d.message.acknowledge_stream();
            return false;
        }
        if !self.auth.permissions.may_read(d.message.topic.as_str()) {
            // Queued under an earlier credential that allowed more: what was queued or in
            // flight then is dropped when the session resumes or re-authenticates, and this
            // catches what a publisher routed meanwhile.
            metrics.count_drop(DropReason::not_readable);
            d.message.acknowledge_stream();
            return false;
        }
        let packet_id = match (d.qos, attempt) {
            (QoS::AtMostOnce, _) => None,
            (_, Attempt::Redelivery { packet_id }) => Some(packet_id),
            (_, Attempt::First) => match self.state.next_packet_id() {
                Some(id) => Some(id),
                None => {
                    metrics.count_drop(DropReason::queue_full);
                    return false;
                }
            },
        };
        let mut properties = d.message.properties.clone();
        properties.message_expiry_interval = d.message.remaining_expiry(now);
        properties.subscription_identifiers = d.subscription_ids.to_vec();
        let alias = match attempt {
            Attempt::First => self.outbound_alias(d.message.topic.as_str()),
            Attempt::Redelivery { .. } => OutboundAlias::None,
        };
        let topic = match alias {
            OutboundAlias::Known(_) => MqttString::from(""),
            OutboundAlias::None | OutboundAlias::New(_) => d.message.topic.clone(),
        };
        if let OutboundAlias::Known(a) | OutboundAlias::New(a) = alias {
            properties.topic_alias = Some(a);
        }
        let packet = Packet::Publish(Publish {
            dup: matches!(attempt, Attempt::Redelivery { .. }),
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            properties,
            payload: d.message.payload.clone(),
        });
        // [MQTT-3.1.2-25] never more than the client's Maximum Packet Size: drop for this one.
        if packet.encoded_len(self.negotiated.version) > self.negotiated.max_packet as usize {
            metrics.count_drop(DropReason::packet_too_large);
            d.message.acknowledge_stream();
            return false;
        }
        if let OutboundAlias::New(a) = alias {
            self.outbound_aliases
                .insert(d.message.topic.as_str().into(), a);
        }
        self.send(&packet);
        metrics
            .messages_out
            .get_or_create(&QosLabels { qos: d.qos as u8 })
            .inc();
        match (packet_id, attempt) {
            (Some(id), Attempt::First) => self.state.insert_inflight(id, Inflight::Published(d)),
            // Sent at QoS 0: the client has it as far as it ever will.
            (None, _) => d.message.acknowledge_stream(),
            _ => {}
        }
        true
    }

    /// The alias `topic` goes out with: the one the client knows, a new one while the client's
    /// Topic Alias Maximum allows more, or none (3.1.1, or a client that takes no aliases).
    fn outbound_alias(&self, topic: &str) -> OutboundAlias {
        let max = self.negotiated.topic_alias_max;
        if self.negotiated.version != ProtocolVersion::V5 || max == 0 {
            return OutboundAlias::None;
        }
        if let Some(alias) = self.outbound_aliases.get(topic) {
            OutboundAlias::Known(*alias)
        } else if self.outbound_aliases.len() < usize::from(max) {
            OutboundAlias::New(self.outbound_aliases.len() as u16 + 1)
        } else {
            OutboundAlias::None
        }
    }

    /// On resumption, resends every unacknowledged PUBLISH with DUP and every PUBREL
    /// [MQTT-4.4.0-1].
    pub(super) fn resend_inflight(&mut self) {
        for id in self.state.inflight().ids_in_order() {
            match self.state.inflight().get(id).cloned() {
                Some(Inflight::Published(d)) => {
                    self.send_delivery(d, Attempt::Redelivery { packet_id: id });
                }
                Some(Inflight::Released) => self.send(&Packet::PubRel(PubRel {
                    packet_id: id,
                    reason: ReasonCode::SUCCESS,
                    properties: AckProperties::default(),
                })),
                None => {}
            }
        }
    }
}
