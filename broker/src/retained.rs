//! Retained messages of one tenant.
//!
//! A map from topic name to the last retained message; a filter without wildcards is a single
//! lookup, a wildcard filter scans the map (subscribes are rare next to publishes).

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use parking_lot::RwLock;
use starling_codec::{MqttString, topic};

use crate::message::Message;

/// What happened to the store on a retained PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    /// Stored (new or replacing).
    Stored,
    /// An empty payload removed the topic's message [MQTT-3.3.1-10].
    Cleared,
    /// The store is full; the message was delivered but not retained.
    Full,
}

/// Retained messages by topic.
#[derive(Debug)]
pub struct Retained {
    map: RwLock<HashMap<MqttString, Arc<Message>>>,
    max: usize,
}

impl Retained {
    /// An empty store holding at most `max` messages.
    pub fn new(max: usize) -> Self {
        Retained {
            map: RwLock::new(HashMap::new()),
            max,
        }
    }

    /// Stores, replaces [MQTT-3.3.1-5] or clears [MQTT-3.3.1-6] the retained message of the
    /// message's topic.
    pub fn set(&self, message: &Arc<Message>) -> RetainOutcome {
        let mut map = self.map.write();
        if message.payload.is_empty() {
            map.remove(&message.topic);
            return RetainOutcome::Cleared;
        }
        if map.len() >= self.max && !map.contains_key(&message.topic) {
            return RetainOutcome::Full;
        }
        let mut stored = Message::clone(message);
        stored.retain = true;
        map.insert(message.topic.clone(), Arc::new(stored));
        RetainOutcome::Stored
    }

    /// The retained messages matching `filter`, skipping (and removing) expired ones.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let mut expired = false;
        let out: Vec<Arc<Message>> = {
            let map = self.map.read();
            if !filter.contains(['+', '#']) {
                map.get(filter).into_iter().cloned().collect::<Vec<_>>()
            } else {
                map.values()
                    .filter(|m| topic::matches(filter, m.topic.as_str()))
                    .cloned()
                    .collect::<Vec<_>>()
            }
        }
        .into_iter()
        .filter(|m| {
            let e = m.is_expired(now);
            expired |= e;
            !e
        })
        .collect();
        if expired {
            self.map.write().retain(|_, m| !m.is_expired(now));
        }
        out
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
