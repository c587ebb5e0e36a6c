//! A tenant: one isolated broker in the API's sense, with its own topic space, retained
//! messages, sessions and limits. One process serves one or more.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use starling_codec::QoS;

use crate::config::Limits;
use crate::hook::Hook;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::retained::{RetainOutcome, Retained};
use crate::router::{Routed, Router};
use crate::session::{OutboxLimits, Session};

/// One tenant.
#[derive(Debug)]
pub struct Tenant {
    /// Name, for logs.
    pub name: Arc<str>,
    /// Subscriptions.
    pub router: Router,
    /// Retained messages.
    pub retained: Retained,
    /// Limits of this tenant.
    pub limits: Limits,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Sessions by client id. Locked briefly to look up, insert or remove.
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// Connections open now.
    connections: AtomicUsize,
    /// The on-publish hook, when the tenant has one.
    hook: RwLock<Option<Arc<Hook>>>,
}

impl Tenant {
    /// A new, empty tenant.
    pub fn new(name: &str, limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Tenant {
            name: name.into(),
            router: Router::default(),
            retained: Retained::new(limits.max_retained_messages),
            limits,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            hook: RwLock::new(None),
        })
    }

    /// The on-publish hook every PUBLISH goes through, if any.
    pub fn hook(&self) -> Option<Arc<Hook>> {
        self.hook.read().clone()
    }

    /// Installs or removes the on-publish hook. Messages already handed to the old hook get
    /// their verdicts from it.
    pub fn set_hook(&self, hook: Option<Arc<Hook>>) {
        *self.hook.write() = hook;
    }

    /// Delivers `message` to every matching subscription and updates the retained store when
    /// the message is retained. `scratch` is reused between calls. Returns the deliveries queued.
    pub fn publish(&self, message: Arc<Message>, scratch: &mut Vec<Routed>) -> usize {
        self.publish_noting_congestion(message, scratch, &mut None, &mut false)
    }

    /// [`Tenant::publish`], and sets `congested` to a connected session whose outbox got a QoS 1
    /// or 2 delivery and is now three quarters full (see [`Session::is_congested`]), and
    /// `filling` when an outbox that got a delivery is half full or more
    /// ([`Session::is_filling`]).
    pub fn publish_noting_congestion(
        &self,
        message: Arc<Message>,
        scratch: &mut Vec<Routed>,
        congested: &mut Option<Arc<Session>>,
        filling: &mut bool,
    ) -> usize {
        if message.retain {
            match self.retained.set(&message) {
                RetainOutcome::Stored | RetainOutcome::Cleared => {
                    self.metrics.retained.set(self.retained.len() as i64);
                }
                RetainOutcome::Full => {}
            }
        }
        self.router.route(&message, scratch);
        let mut queued = 0;
        for (session, delivery) in scratch.drain(..) {
            let reliable = delivery.qos != QoS::AtMostOnce;
            if session.push(delivery, &self.metrics) {
                queued += 1;
            }
            *filling |= session.is_filling();
            if reliable && congested.is_none() && session.is_connected() && session.is_congested() {
                *congested = Some(session);
            }
        }
        queued
    }

    /// Removes the subscription of session `session_id` to `full_filter` (as the client wrote
    /// it, `$share/{group}/` included) and counts it. Returns whether there was one.
    pub fn unsubscribe(&self, session_id: u64, full_filter: &str) -> bool {
        let (group, filter) = split_shared(full_filter);
        let removed = self.router.unsubscribe(session_id, filter, group);
        if removed {
            self.metrics.subscriptions.dec();
        }
        removed
    }

    /// The session of a client id.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// The existing session of `client_id`, or a new one registered now.
    pub fn session_or_insert(&self, client_id: &str) -> (Arc<Session>, bool) {
        let mut sessions = self.sessions.lock();
        if let Some(s) = sessions.get(client_id) {
            return (s.clone(), true);
        }
        let s = Session::new(
            client_id.into(),
            OutboxLimits {
                max_messages: self.limits.max_queued_messages,
                max_bytes: self.limits.max_queued_bytes,
            },
        );
        sessions.insert(s.client_id.clone(), s.clone());
        self.metrics.sessions.inc();
        (s, false)
    }

    /// Removes `session` from the registry if it is still the one registered for its client id.
    pub fn remove_session(&self, session: &Session) -> bool {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| s.id == session.id)
        {
            sessions.remove(&session.client_id);
            self.metrics.sessions.dec();
            true
        } else {
            false
        }
    }

    /// Every session, for shutdown and revocation sweeps.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().cloned().collect()
    }

    /// Takes a connection slot; false when the tenant is at its limit.
    pub fn try_open_connection(&self) -> bool {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.max_connections).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a connection slot back.
    pub fn close_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `$share/{group}/{filter}` split into the group and the filter; other filters unchanged.
pub fn split_shared(full: &str) -> (Option<&str>, &str) {
    match starling_codec::topic::parse_shared(full) {
        Ok(Some((g, f))) => (Some(g), f),
        _ => (None, full),
    }
}
