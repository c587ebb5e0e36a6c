//! The in-flight window: outgoing QoS 1/2 messages the client has not completed, by packet id,
//! in the order they were sent. Lookup, insertion and completion are O(1) (amortized): the send
//! order is a queue of slots, a completed message leaves a hole that is skipped, and the queue
//! is compacted once holes outnumber the messages.

use std::collections::{HashMap, VecDeque};

use crate::message::Delivery;

/// An outgoing QoS 1 or 2 message not yet completed by the client.
#[derive(Debug, Clone)]
pub enum Inflight {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// Outgoing QoS 1/2 messages by packet id, in send order (see the module documentation).
#[derive(Debug, Default)]
pub struct InflightWindow {
    /// Each message with its slot in `order` (an absolute sequence number, renumbered when the
    /// order is compacted), its place in the send order as the store keeps it (never
    /// renumbered), and the message.
    entries: HashMap<u16, (u64, u64, Inflight)>,
    /// Packet ids by send order, from sequence number `base`; `None` where one was completed.
    order: VecDeque<Option<u16>>,
    /// The sequence number of `order[0]`.
    base: u64,
    /// The place in the send order of the next message.
    next_order: u64,
    /// The weight of the deliveries published and not yet acknowledged ([`Delivery::weight`]).
    bytes: usize,
}

/// What an entry weighs in the window: a PUBLISH its delivery's weight, a PUBREL nothing (the
/// client has the message).
fn weight(entry: &Inflight) -> usize {
    match entry {
        Inflight::Published(d) => d.weight(),
        Inflight::Released => 0,
    }
}

impl InflightWindow {
    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The weight of the deliveries published and not yet acknowledged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `packet_id` is in use.
    pub fn contains(&self, packet_id: u16) -> bool {
        self.entries.contains_key(&packet_id)
    }

    /// The message in flight under `packet_id`.
    pub fn get(&self, packet_id: u16) -> Option<&Inflight> {
        self.entries.get(&packet_id).map(|(_, _, e)| e)
    }

    /// The place in the send order of the message under `packet_id`, for the store: it
    /// only grows, a replacement keeps it.
    pub fn order_of(&self, packet_id: u16) -> Option<u64> {
        self.entries.get(&packet_id).map(|(_, o, _)| *o)
    }

    /// Records a message read back from the store at its place in the send order; messages
    /// are restored in that order.
    pub fn restore(&mut self, packet_id: u16, order: u64, entry: Inflight) {
        self.next_order = self.next_order.max(order.saturating_add(1));
        self.bytes += weight(&entry);
        if let Some((_, o, e)) = self.entries.get_mut(&packet_id) {
            self.bytes -= weight(e);
            *o = order;
            *e = entry;
            return;
        }
        let seq = self.base + self.order.len() as u64;
        self.order.push_back(Some(packet_id));
        self.entries.insert(packet_id, (seq, order, entry));
    }

    /// Records `entry` under `packet_id`: last in the send order when the id is new; in its
    /// place when it replaces the entry of the id (PUBREC turning a PUBLISH into a PUBREL).
    pub fn insert(&mut self, packet_id: u16, entry: Inflight) {
        self.bytes += weight(&entry);
        if let Some((_, _, e)) = self.entries.get_mut(&packet_id) {
            self.bytes -= weight(e);
            *e = entry;
            return;
        }
        let seq = self.base + self.order.len() as u64;
        self.order.push_back(Some(packet_id));
        let order = self.next_order;
        self.next_order += 1;
        self.entries.insert(packet_id, (seq, order, entry));
    }

    /// Removes the message under `packet_id`.
    pub fn complete(&mut self, packet_id: u16) -> Option<Inflight> {
        let (seq, _, entry) = self.entries.remove(&packet_id)?;
        self.bytes -= weight(&entry);
        if let Some(slot) = usize::try_from(seq - self.base)
            .ok()
            .and_then(|i| self.order.get_mut(i))
        {
            *slot = None;
        }
        while let Some(None) = self.order.front() {
            self.order.pop_front();
            self.base += 1;
        }
        if self.order.len() > 2 * self.entries.len() + 32 {
            self.compact();
        }
        Some(entry)
    }

    /// Drops the holes of completed messages from the send order.
    fn compact(&mut self) {
        let ids: Vec<u16> = self.order.drain(..).flatten().collect();
        for (i, id) in ids.iter().enumerate() {
            if let Some((seq, _, _)) = self.entries.get_mut(id) {
                *seq = self.base + i as u64;
            }
        }
        self.order.extend(ids.into_iter().map(Some));
    }

    /// Packet ids in send order.
    pub fn ids_in_order(&self) -> Vec<u16> {
        self.order.iter().flatten().copied().collect()
    }

    /// Every message with its packet id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Inflight)> {
        self.entries.iter().map(|(id, (_, _, e))| (*id, e))
    }

    /// Empties the window, returning its messages in send order.
    pub fn take_all(&mut self) -> Vec<(u16, Inflight)> {
        let ids = self.ids_in_order();
        let mut entries = std::mem::take(&mut self.entries);
        self.order.clear();
        self.base = 0;
        self.bytes = 0;
        ids.into_iter()
            .filter_map(|id| entries.remove(&id).map(|(_, _, e)| (id, e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_order_survives_completions_and_replacements() {
        let mut w = InflightWindow::default();
        for id in [5, 1, 9, 3] {
            w.insert(id, Inflight::Released);
        }
        assert!(w.complete(1).is_some());
        assert!(w.complete(1).is_none());
        // A replacement keeps its place.
        w.insert(5, Inflight::Released);
        w.insert(2, Inflight::Released);
        assert_eq!(w.ids_in_order(), vec![5, 9, 3, 2]);
        assert_eq!(w.len(), 4);
        assert!(w.complete(5).is_some());
        assert_eq!(w.ids_in_order(), vec![9, 3, 2]);
        let all: Vec<u16> = w.take_all().into_iter().map(|(id, _)| id).collect();
        assert_eq!(all, vec![9, 3, 2]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_message_stuck_at_the_front_does_not_let_the_order_grow_without_bound() {
        let mut w = InflightWindow::default();
        w.insert(1, Inflight::Released);
        for i in 0..100_000u32 {
            let id = (i % 60_000) as u16 + 2;
            w.insert(id, Inflight::Released);
            assert!(w.complete(id).is_some());
        }
        assert!(w.order.len() <= 2 * w.len() + 33, "{}", w.order.len());
        assert_eq!(w.ids_in_order(), vec![1]);
        w.insert(7, Inflight::Released);
        assert!(w.complete(1).is_some());
        assert_eq!(w.ids_in_order(), vec![7]);
    }
}
