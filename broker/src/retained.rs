//! Retained messages of one tenant.
//!
//! A map ordered by topic name, bounded in messages and in bytes (the messages' weights). A
//! filter without wildcards is one lookup. A wildcard filter is read through a
//! [`RetainedCursor`]: each step holds the read lock for a bounded number of entries and
//! remembers the last topic it looked at, so the connection that subscribed streams the
//! matching messages into its outbox as the outbox has room, and nothing copies the store or
//! collects every match at once. Only the topics that share the filter's literal prefix
//! (`a/b` for `a/b/+/#`) are scanned.
//!
//! Keys are copies of the topics, so a key never keeps a message's buffer alive after the
//! message is replaced.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

use parking_lot::RwLock;
use starling_codec::topic;

use crate::message::Message;

/// What happened to the store on a retained PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    /// Stored (new or replacing).
    Stored,
    /// An empty payload removed the topic's message [MQTT-3.3.1-10].
    Cleared,
    /// The store has no room: `limits.max_retained_messages` or `max_retained_bytes` would be
    /// exceeded. The message is refused as a whole (neither retained nor delivered).
    Full,
}

#[derive(Debug, Default)]
struct Store {
    map: BTreeMap<Box<str>, Arc<Message>>,
    /// Sum of the weights of `map`'s messages.
    bytes: usize,
}

/// Retained messages by topic.
#[derive(Debug)]
pub struct Retained {
    store: RwLock<Store>,
    /// The tenant's bounds, which its limits may change ([`Retained::set_bounds`]); read under
    /// the store's write lock.
    max_messages: AtomicUsize,
    max_bytes: AtomicUsize,
}

/// A position in the retained messages matching one filter. See the module documentation.
#[derive(Debug, Clone)]
pub struct RetainedCursor {
    /// The filter (as routed: without `$share/{group}/`).
    filter: Box<str>,
    /// The last topic looked at; the next step starts after it.
    after: Option<Box<str>>,
    done: bool,
}

impl RetainedCursor {
    /// A cursor before the first retained message matching `filter`.
    pub fn new(filter: &str) -> Self {
        RetainedCursor {
            filter: filter.into(),
            after: None,
            done: false,
        }
    }

    /// The filter it reads.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Whether every matching message has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// The levels of `filter` before its first wildcard, as a prefix every matching topic starts
/// with (`a/b` for `a/b/+/c`; empty for `#` and `+/x`).
fn literal_prefix(filter: &str) -> &str {
    match filter.find(['+', '#']) {
        // `a/b/#` also matches `a/b` [MQTT-4.7.1-2]: the prefix stops before the separator.
        Some(at) => filter[..at].strip_suffix('/').unwrap_or(&filter[..at]),
        None => filter,
    }
}

impl Retained {
    /// An empty store holding at most `max_messages` messages weighing at most `max_bytes`.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Retained {
            store: RwLock::new(Store::default()),
            max_messages: AtomicUsize::new(max_messages),
            max_bytes: AtomicUsize::new(max_bytes),
        }
    }

    /// New bounds (the tenant's limits changed). Messages already held stay; a new or larger
    /// one is refused while the store is over a bound.
    pub fn set_bounds(&self, max_messages: usize, max_bytes: usize) {
        self.max_messages.store(max_messages, Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Stores, replaces [MQTT-3.3.1-5] or clears [MQTT-3.3.1-6] the retained message of the
    /// message's topic. A replacement that is not larger than the message it replaces, and a
    /// clearing, are always allowed.
    pub fn set(&self, message: &Arc<Message>) -> RetainOutcome {
        let mut store = self.store.write();
        let topic = message.topic.as_str();
        if message.payload.is_empty() {
            if let Some(old) = store.map.remove(topic) {
                store.bytes = store.bytes.saturating_sub(old.weight());
            }
            return RetainOutcome::Cleared;
        }
        let old = store.map.get(topic).map(|m| m.weight());
        let bytes = store.bytes - old.unwrap_or(0) + message.weight();
        let grows = old.is_none_or(|w| message.weight() > w);
        let (max_messages, max_bytes) = (
            self.max_messages.load(Ordering::Relaxed),
            self.max_bytes.load(Ordering::Relaxed),
        );
        if grows && ((old.is_none() && store.map.len() >= max_messages) || bytes > max_bytes) {
            return RetainOutcome::Full;
        }
        let mut stored = Message::clone(message);
        stored.retain = true;
        let stored = Arc::new(stored);
        match store.map.get_mut(topic) {
            Some(slot) => *slot = stored,
            // A copy of the topic: the key outlives the message it was first stored with.
            None => {
                store.map.insert(topic.into(), stored);
            }
        }
        store.bytes = bytes;
        RetainOutcome::Stored
    }

    /// Appends to `out` the next retained messages matching the cursor's filter, at most
    /// `max` of them, looking at no more than `budget` topics under the read lock, and moves
    /// the cursor past them. Expired messages are skipped and removed. Returns how many topics
    /// were looked at.
    pub fn read(
        &self,
        cursor: &mut RetainedCursor,
        now: Instant,
        max: usize,
        budget: usize,
        out: &mut Vec<Arc<Message>>,
    ) -> usize {
        if cursor.done {
            return 0;
        }
        let filter = &*cursor.filter;
        if !filter.contains(['+', '#']) {
            // One topic: one lookup.
            if let Some(m) = self.store.read().map.get(filter) {
                if !m.is_expired(now) {
                    out.push(m.clone());
                }
            }
            cursor.done = true;
            return 1;
        }
        let prefix = literal_prefix(filter);
        let mut expired = Vec::new();
        let mut looked = 0;
        let had = out.len();
        {
            let store = self.store.read();
            let start = match &cursor.after {
                Some(after) => Bound::Excluded(&**after),
                None => Bound::Included(prefix),
            };
            let mut last = None;
            let mut finished = true;
            for (topic, m) in store.map.range::<str, _>((start, Bound::Unbounded)) {
                if !topic.starts_with(prefix) {
                    break;
                }
                if looked == budget || out.len() - had == max {
                    finished = false;
                    break;
                }
                looked += 1;
                last = Some(topic);
                if topic::matches(filter, topic) {
                    if m.is_expired(now) {
                        expired.push(topic.clone());
                    } else {
                        out.push(m.clone());
                    }
                }
            }
            if finished {
                cursor.done = true;
            } else if let Some(last) = last {
                cursor.after = Some(last.clone());
            }
        }
        if !expired.is_empty() {
            let mut store = self.store.write();
            for topic in expired {
                if store.map.get(&topic).is_some_and(|m| m.is_expired(now)) {
                    if let Some(old) = store.map.remove(&topic) {
                        store.bytes = store.bytes.saturating_sub(old.weight());
                    }
                }
            }
        }
        looked
    }

    /// The retained message of `topic`, expired or not.
    pub fn get(&self, topic: &str) -> Option<Arc<Message>> {
        self.store.read().map.get(topic).cloned()
    }

    /// Removes every retained message.
    pub fn clear(&self) {
        let mut store = self.store.write();
        store.map.clear();
        store.bytes = 0;
    }

    /// Removes the retained message of `topic`, if any.
    pub fn remove(&self, topic: &str) {
        let mut store = self.store.write();
        if let Some(old) = store.map.remove(topic) {
            store.bytes = store.bytes.saturating_sub(old.weight());
        }
    }

    /// Puts `previous` back as the retained message of `topic` (none: the topic has none) if
    /// the topic still holds `written` (none: still has none), which replaced it: a change
    /// that could not be kept is undone, unless a later one replaced it meanwhile. `previous`
    /// was held before, so the bounds do not refuse it.
    pub fn restore(&self, topic: &str, written: Option<&Message>, previous: Option<Arc<Message>>) {
        let mut store = self.store.write();
        let same = |m: &Message| {
            written.is_some_and(|w| {
                w.payload.as_ptr() == m.payload.as_ptr() && w.payload.len() == m.payload.len()
            })
        };
        let current = store.map.get(topic);
        let still = match current {
            Some(m) => same(m),
            None => written.is_none(),
        };
        if !still {
            return;
        }
        if let Some(old) = store.map.remove(topic) {
            store.bytes = store.bytes.saturating_sub(old.weight());
        }
        if let Some(p) = previous {
            store.bytes += p.weight();
            store.map.insert(topic.into(), p);
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.store.read().map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sum of the retained messages' weights.
    pub fn bytes(&self) -> usize {
        self.store.read().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_codec::QoS;

    fn message(topic: &str, payload: &[u8]) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            payload,
            QoS::AtMostOnce,
            true,
            &Default::default(),
            None,
            None,
        ))
    }

    fn read_all(r: &Retained, filter: &str, max: usize, budget: usize) -> (Vec<String>, usize) {
        let mut cursor = RetainedCursor::new(filter);
        let mut out = Vec::new();
        let mut steps = 0;
        while !cursor.is_done() {
            let before = out.len();
            r.read(&mut cursor, Instant::now(), max, budget, &mut out);
            assert!(out.len() - before <= max);
            steps += 1;
        }
        (
            out.iter().map(|m| m.topic.as_str().to_string()).collect(),
            steps,
        )
    }

    #[test]
    fn a_cursor_reads_every_match_once_in_bounded_steps() {
        let r = Retained::new(usize::MAX, usize::MAX);
        for t in ["a", "a/b", "a/b/c", "a/c", "ab", "b/a", "$SYS/x", "a/b/d"] {
            r.set(&message(t, b"x"));
        }
        let (got, _) = read_all(&r, "a/#", 100, 100);
        assert_eq!(got, ["a", "a/b", "a/b/c", "a/b/d", "a/c"]);
        let (got, steps) = read_all(&r, "#", 1, 100);
        assert_eq!(got.len(), 7, "{got:?}: not $SYS [MQTT-4.7.2-1]");
        assert!(steps >= 7);
        let (got, _) = read_all(&r, "+/b/+", 100, 1);
        assert_eq!(got, ["a/b/c", "a/b/d"]);
        let (got, steps) = read_all(&r, "a/b", 100, 100);
        assert_eq!((got, steps), (vec!["a/b".to_string()], 1));
    }

    #[test]
    fn the_literal_prefix_stops_before_the_first_wildcard() {
        assert_eq!(literal_prefix("a/b/+/c"), "a/b");
        assert_eq!(literal_prefix("a/b/#"), "a/b");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("+/x"), "");
        assert_eq!(literal_prefix("a/b"), "a/b");
    }

    #[test]
    fn the_store_is_bounded_in_messages_and_bytes() {
        let one = message("t/1", &[0; 10_000]).weight();
        let r = Retained::new(3, 2 * one + one / 2);
        assert_eq!(r.set(&message("t/1", &[0; 10_000])), RetainOutcome::Stored);
        assert_eq!(r.set(&message("t/2", &[0; 10_000])), RetainOutcome::Stored);
        assert_eq!(r.set(&message("t/3", &[0; 10_000])), RetainOutcome::Full);
        // Replacing with a message of the same size, or a smaller one, is always allowed.
        assert_eq!(r.set(&message("t/2", &[1; 10_000])), RetainOutcome::Stored);
        assert_eq!(r.set(&message("t/2", &[1; 10])), RetainOutcome::Stored);
        assert_eq!(r.set(&message("t/3", &[0; 10])), RetainOutcome::Stored);
        assert_eq!(
            r.set(&message("t/4", b"x")),
            RetainOutcome::Full,
            "3 messages"
        );
        assert_eq!(r.set(&message("t/3", b"")), RetainOutcome::Cleared);
        assert_eq!(r.len(), 2);
        assert_eq!(r.bytes(), one + message("t/2", &[1; 10]).weight());
    }

    #[test]
    fn a_change_is_undone_only_while_it_is_the_latest() {
        let r = Retained::new(usize::MAX, usize::MAX);
        let old = message("t", b"old");
        r.set(&old);
        let previous = r.get("t");
        let new = message("t", b"new");
        r.set(&new);
        r.restore("t", Some(&new), previous.clone());
        assert_eq!(&r.get("t").unwrap().payload[..], b"old");
        // A later value stays.
        r.set(&new);
        let later = message("t", b"later");
        r.set(&later);
        r.restore("t", Some(&new), previous.clone());
        assert_eq!(&r.get("t").unwrap().payload[..], b"later");
        // A clearing is undone while the topic is still empty.
        r.set(&message("t", b""));
        r.restore("t", None, previous);
        assert_eq!(&r.get("t").unwrap().payload[..], b"old");
        assert_eq!(r.bytes(), old.weight());
    }
}
