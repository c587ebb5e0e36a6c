//! The subscription tree of one tenant: topic filters to sessions, with `+`, `#` and shared
//! subscriptions.
//!
//! Concurrency: one `RwLock` per tenant. Publishers take the read lock for the time of one
//! match and push into the matched sessions' outboxes after releasing it; SUBSCRIBE and
//! UNSUBSCRIBE take the write lock. Shared groups pick their next member with an atomic counter,
//! so routing never needs the write lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use starling_codec::SubscriptionOptions;

use crate::message::{Delivery, Message, SharedTarget, SubscriptionIds};
use crate::session::Session;

/// One subscription of one session to one filter.
#[derive(Debug, Clone)]
struct Subscriber {
    session: Arc<Session>,
    options: SubscriptionOptions,
    id: Option<u32>,
}

/// The members of one `$share/{group}/{filter}` subscription.
#[derive(Debug)]
struct SharedGroup {
    target: SharedTarget,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subscribers: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

/// Why a subscription was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The filter already has the most subscribers allowed.
    #[error("the topic filter has too many subscribers")]
    TooManySubscribers,
}

/// The subscription tree of one tenant.
#[derive(Debug, Default)]
pub struct Router {
    root: RwLock<Node>,
}

/// A delivery chosen by routing, with the session it goes to.
pub type Routed = (Arc<Session>, Delivery);

impl Router {
    /// Adds or replaces the subscription of `session` to `filter` (in group `shared`, if any).
    /// Returns whether a subscription to the same filter existed already [MQTT-3.8.4-3].
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        shared: Option<&str>,
        options: SubscriptionOptions,
        id: Option<u32>,
        max_subscribers: usize,
    ) -> Result<bool, SubscribeError> {
        let mut root = self.root.write();
        let mut node = &mut *root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let sub = Subscriber {
            session: session.clone(),
            options,
            id,
        };
        let list = match shared {
            None => &mut node.subscribers,
            Some(group) => {
                let pos = node.shared.iter().position(|g| &*g.target.group == group);
                let pos = match pos {
                    Some(p) => p,
                    None => {
                        node.shared.push(SharedGroup {
                            target: SharedTarget {
                                group: group.into(),
                                filter: filter.into(),
                            },
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[pos].members
            }
        };
        if let Some(existing) = list.iter_mut().find(|s| s.session.id == session.id) {
            *existing = sub;
            return Ok(true);
        }
        if list.len() >= max_subscribers {
            return Err(SubscribeError::TooManySubscribers);
        }
        list.push(sub);
        Ok(false)
    }

    /// Removes the subscription of the session with `session_id` to `filter`. Returns whether
    /// there was one.
    pub fn unsubscribe(&self, session_id: u64, filter: &str, shared: Option<&str>) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut root = self.root.write();
        remove(&mut root, &levels, session_id, shared)
    }

    /// Replaces the contents of `out` with every session that must receive `message`: one delivery per session at the highest
    /// QoS of its matching subscriptions, carrying all their identifiers [MQTT-3.3.4-2]
    /// [MQTT-3.3.4-3], and one member per matching shared group [MQTT-4.8.2-2].
    pub fn route(&self, message: &Arc<Message>, out: &mut Vec<Routed>) {
        self.route_with(message, out, true);
    }

    /// [`Router::route`] to ordinary subscriptions only, for a message published on another
    /// replica (whose shared groups are served where it was published).
    pub fn route_ordinary(&self, message: &Arc<Message>, out: &mut Vec<Routed>) {
        self.route_with(message, out, false);
    }

    /// Whether an ordinary subscription (not a shared one) matches `topic`: a message
    /// published there on another replica need not even be decoded when none does.
    pub fn has_ordinary(&self, topic: &str) -> bool {
        let levels: smallvec::SmallVec<[&str; 8]> = topic.split('/').collect();
        let root = self.root.read();
        let mut hits: smallvec::SmallVec<[&Node; 8]> = smallvec::SmallVec::new();
        collect(&root, &levels, true, &mut hits);
        hits.iter().any(|n| !n.subscribers.is_empty())
    }

    fn route_with(&self, message: &Arc<Message>, out: &mut Vec<Routed>, shared: bool) {
        let topic = message.topic.as_str();
        let levels: smallvec::SmallVec<[&str; 8]> = topic.split('/').collect();
        let root = self.root.read();
        let mut hits: smallvec::SmallVec<[&Node; 8]> = smallvec::SmallVec::new();
        collect(&root, &levels, true, &mut hits);
        out.clear();
        for node in hits {
            for sub in &node.subscribers {
                // [MQTT-3.8.3-3] No Local: not to the connection that published it.
                if sub.options.no_local
                    && message
                        .publisher
                        .as_deref()
                        .is_some_and(|p| p == &*sub.session.client_id)
                {
                    continue;
                }
                out.push((sub.session.clone(), delivery(message, sub, None)));
            }
            for group in node.shared.iter().filter(|_| shared) {
                if let Some(sub) = pick_member(group) {
                    out.push((
                        sub.session.clone(),
                        delivery(message, sub, Some(group.target.clone())),
                    ));
                }
            }
        }
        merge_overlapping(out);
    }

    /// One member of the shared group `group` on `filter` for `message` (connected ones first),
    /// if the group has members here: for a message NATS gave this replica's queue
    /// subscription of the group.
    pub fn route_to_group(
        &self,
        message: &Arc<Message>,
        filter: &str,
        group: &str,
    ) -> Option<Routed> {
        let root = self.root.read();
        let g = shared_group(&root, filter, group)?;
        let sub = pick_member(g)?;
        Some((
            sub.session.clone(),
            delivery(message, sub, Some(g.target.clone())),
        ))
    }

    /// Picks another member of `group` on `filter` for a message whose member went away, other
    /// than the session with `exclude`.
    pub fn reroute_shared(
        &self,
        message: &Arc<Message>,
        filter: &str,
        group: &str,
        exclude: u64,
    ) -> Option<Routed> {
        let root = self.root.read();
        let g = shared_group(&root, filter, group)?;
        let n = g.members.len();
        let start = g.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &g.members[(start + i) % n])
            .find(|m| m.session.id != exclude && m.session.is_connected())
            .map(|sub| {
                (
                    sub.session.clone(),
                    delivery(message, sub, Some(g.target.clone())),
                )
            })
    }
}

/// The shared group `group` on `filter` (as written), if it has members here.
fn shared_group<'a>(root: &'a Node, filter: &str, group: &str) -> Option<&'a SharedGroup> {
    let mut node = root;
    for level in filter.split('/') {
        node = node.children.get(level)?;
    }
    node.shared.iter().find(|g| &*g.target.group == group)
}

fn delivery(message: &Arc<Message>, sub: &Subscriber, shared: Option<SharedTarget>) -> Delivery {
    let mut ids = SubscriptionIds::new();
    if let Some(id) = sub.id {
        ids.push(id);
    }
    Delivery {
        message: message.clone(),
        qos: message.qos.min(sub.options.qos),
        // [MQTT-3.3.1-12] / [MQTT-3.3.1-13] Retain As Published.
        retain: sub.options.retain_as_published && message.retain,
        subscription_ids: ids,
        shared,
        stored: 0,
    }
}

/// Round robin among connected members; when none is connected, among all of them, so the
/// message waits in a persistent session.
fn pick_member(group: &SharedGroup) -> Option<&Subscriber> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| &group.members[(start + i) % n])
        .find(|m| m.session.is_connected())
        .or_else(|| group.members.get(start % n))
}

/// Folds deliveries to the same session (from overlapping subscriptions) into one.
fn merge_overlapping(out: &mut Vec<Routed>) {
    if out.len() < 2 {
        return;
    }
    out.sort_unstable_by_key(|(s, d)| (s.id, d.shared.is_some()));
    // Shared subscriptions are delivered on their own; ordinary ones to one session are merged.
    out.dedup_by(|(cur_s, cur), (prev_s, prev)| {
        if cur_s.id != prev_s.id || cur.shared.is_some() || prev.shared.is_some() {
            return false;
        }
        prev.qos = prev.qos.max(cur.qos);
        prev.retain |= cur.retain;
        prev.subscription_ids
            .extend(cur.subscription_ids.iter().copied());
        true
    });
}

fn collect<'a>(
    node: &'a Node,
    levels: &[&str],
    first: bool,
    hits: &mut smallvec::SmallVec<[&'a Node; 8]>,
) {
    let Some((level, rest)) = levels.split_first() else {
        hits.push(node);
        // `a/#` matches `a` too [MQTT-4.7.1-2].
        if let Some(hash) = node.children.get("#") {
            hits.push(hash);
        }
        return;
    };
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, false, hits);
    }
    // [MQTT-4.7.2-1] wildcards at the first level do not match topics that start with `$`.
    if first && level.starts_with('$') {
        return;
    }
    if let Some(plus) = node.children.get("+") {
        collect(plus, rest, false, hits);
    }
    if let Some(hash) = node.children.get("#") {
        hits.push(hash);
    }
}

fn remove(node: &mut Node, levels: &[&str], session_id: u64, shared: Option<&str>) -> bool {
    match levels.split_first() {
        None => match shared {
            None => {
                let before = node.subscribers.len();
                node.subscribers.retain(|s| s.session.id != session_id);
                before != node.subscribers.len()
            }
            Some(group) => {
                let Some(pos) = node.shared.iter().position(|g| &*g.target.group == group) else {
                    return false;
                };
                let g = &mut node.shared[pos];
                let before = g.members.len();
                g.members.retain(|s| s.session.id != session_id);
                let removed = before != g.members.len();
                if g.members.is_empty() {
                    node.shared.swap_remove(pos);
                }
                removed
            }
        },
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove(child, rest, session_id, shared);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}
