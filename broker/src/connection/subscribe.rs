//! SUBSCRIBE and UNSUBSCRIBE: filters checked against the limits and the credential, the
//! router and the session's subscriptions updated, and the retained messages owed to new
//! subscriptions read from the store in slices as the outbox has room.

use std::collections::HashMap;

use starling_codec::{
    AckProperties, Packet, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe, topic,
};
use tokio::time::Instant;

use super::close::Close;
use super::{Connection, topic_within_limits};
use crate::message::Delivery;
use crate::retained::RetainedCursor;
use crate::router::SubscribeError;
use crate::session::{Offered, PendingRetained, SubscriptionRecord};
use crate::transport::AsyncIo;

/// Retained messages read from the store at once for one subscription (they wait in the
/// session's state until the outbox has room).
const RETAINED_BATCH: usize = 64;
/// Retained topics looked at per wake-up, over every subscription owed retained messages:
/// a wildcard filter over a large store is read in slices, with other tasks running between.
const RETAINED_BUDGET: usize = 1024;

impl<IO: AsyncIo> Connection<IO> {
    pub(super) fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let tenant = self.auth.tenant.clone();
        let limits = self.ctx.limits.clone();
        let sub_id = s.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(s.subscriptions.len());
        // Subscriptions owed retained messages, one per distinct filter: identical filters in
        // one SUBSCRIBE are one subscription, replaced in turn [MQTT-3.8.4-3], and get the
        // retained messages once, with the options of the last. Different filters that overlap
        // each get theirs [MQTT-3.8.4-5].
        let mut owed: Vec<(&str, QoS)> = Vec::new();
        let mut owed_at: HashMap<&str, usize> = HashMap::new();
        for sub in &s.subscriptions {
            let full = sub.filter.as_str();
            let (group, filter) = match topic::subscription(full) {
                Ok(target) => target,
                // A shared subscription inside a shared one; the decoder checked the rest.
                Err(_) => {
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if group.is_some() && sub.options.no_local {
                // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
                return Err(Close::protocol(ReasonCode::PROTOCOL_ERROR, "MQTT-3.8.3-4"));
            }
            if !topic_within_limits(filter, &limits) {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            // The filter that is routed, and nothing else.
            if !self.auth.permissions.may_subscribe(filter) {
                reasons.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            let exists = self.state.subscriptions().contains_key(full);
            if !exists && self.state.subscriptions().len() >= limits.max_subscriptions_per_client {
                reasons.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            match tenant.router.subscribe(
                &self.session,
                filter,
                group,
                sub.options,
                sub_id,
                limits.max_subscribers_per_topic,
            ) {
                Ok(existed) => {
                    if !existed {
                        self.ctx.metrics.subscriptions.inc();
                        if let Some(group) = group {
                            tenant.shared_subscribed(group, filter);
                        }
                    }
                    self.state.subscribe(
                        full,
                        SubscriptionRecord {
                            options: sub.options,
                            id: sub_id,
                        },
                    );
                    // [MQTT-3.3.1-9..11] retained messages per Retain Handling; none for shared
                    // subscriptions (section 3.3.1.3: they go to a new non-shared subscription).
                    let send_retained = group.is_none()
                        && match sub.options.retain_handling {
                            RetainHandling::SendAtSubscribe => true,
                            RetainHandling::SendAtSubscribeIfNew => !existed,
                            RetainHandling::DoNotSend => false,
                        };
                    if let Some(&i) = owed_at.get(full) {
                        // The last identical filter's options stand.
                        owed[i].1 = sub.options.qos;
                    } else if send_retained {
                        owed_at.insert(full, owed.len());
                        owed.push((filter, sub.options.qos));
                    }
                    reasons.push(granted(sub.options.qos));
                }
                Err(SubscribeError::TooManySubscribers) => reasons.push(ReasonCode::QUOTA_EXCEEDED),
            }
        }
        let reasons = reasons
            .into_iter()
            .map(|r| {
                if self.negotiated.version == ProtocolVersion::V5 || r.0 < 0x80 {
                    r
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                }
            })
            .collect();
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: AckProperties::default(),
        }));
        if owed.is_empty() {
            return Ok(());
        }
        // A subscription still owed retained messages from an earlier SUBSCRIBE starts over
        // [MQTT-3.8.4-4]: one reading per subscription at most.
        let retained = &mut self.state.retained;
        let waiting: HashMap<&str, usize> = retained
            .iter()
            .enumerate()
            .map(|(i, p)| (p.cursor.filter(), i))
            .collect();
        let places: Vec<Option<usize>> = owed
            .iter()
            .map(|(filter, _)| waiting.get(filter).copied())
            .collect();
        drop(waiting);
        for ((filter, qos), place) in owed.into_iter().zip(places) {
            let pending = PendingRetained {
                cursor: RetainedCursor::new(filter),
                qos,
                id: sub_id,
                ready: Default::default(),
            };
            match place {
                Some(i) => retained[i] = pending,
                None => retained.push_back(pending),
            }
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let tenant = self.auth.tenant.clone();
        let reasons = u
            .filters
            .iter()
            .map(|full| {
                let removed = tenant.unsubscribe(self.session.id, full.as_str());
                // [MQTT-3.10.4-2] no new messages for a subscription that is gone, retained
                // ones included.
                let had = self.state.unsubscribe(full.as_str());
                if had || removed {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: AckProperties::default(),
        }));
    }

    /// Queues retained messages owed to subscriptions while the outbox has room for them,
    /// reading the store in slices (at most [`RETAINED_BUDGET`] topics per call). Returns
    /// whether it stopped at its budget with room left, so the caller yields and calls again;
    /// otherwise it waits for the outbox to drain, or nothing is owed any more.
    pub(super) fn pump_retained(&mut self) -> bool {
        let now = Instant::now();
        let tenant = self.auth.tenant.clone();
        let metrics = self.ctx.metrics.clone();
        let mut looked = 0;
        let mut read = Vec::new();
        while let Some(front) = self.state.retained.front_mut() {
            while let Some(message) = front.ready.pop_front() {
                let delivery = Delivery {
                    qos: message.qos.min(front.qos),
                    // [MQTT-3.3.1-8] retained messages sent on subscribe carry RETAIN 1.
                    retain: true,
                    subscription_ids: front.id.into_iter().collect(),
                    shared: None,
                    stored: 0,
                    message,
                };
                match self.session.offer(delivery, &metrics) {
                    Offered::Queued => self.more_queued = true,
                    Offered::Dropped => {}
                    Offered::Later(delivery) => {
                        front.ready.push_front(delivery.message);
                        return false;
                    }
                }
            }
            if front.cursor.is_done() {
                self.state.retained.pop_front();
                continue;
            }
            if looked >= RETAINED_BUDGET {
                return true;
            }
            if !self.session.has_room_for_offers() {
                return false;
            }
            looked += tenant.retained.read(
                &mut front.cursor,
                now,
                RETAINED_BATCH,
                RETAINED_BUDGET - looked,
                &mut read,
            );
            front.ready.extend(read.drain(..));
        }
        false
    }
}

fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
        QoS::AtLeastOnce => ReasonCode::GRANTED_QOS_1,
        QoS::ExactlyOnce => ReasonCode::GRANTED_QOS_2,
    }
}
