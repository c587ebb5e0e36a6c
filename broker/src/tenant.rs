//! A tenant: one isolated broker in the API's sense, with its own topic space, retained
//! messages, sessions and limits. One process serves one or more.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use starling_codec::QoS;
use tracing::warn;

use crate::config::Limits;
use crate::hook::Hook;
use crate::message::Message;
use crate::metrics::{DropReason, Metrics};
use crate::retained::{RetainOutcome, Retained};
use crate::router::{Routed, Router};
use crate::session::{MemoryStore, OutboxLimits, Session, SessionStore, TenantSessionStore};
use crate::storage::{Storage, TenantStore};
use crate::tasks::Tasks;
use crate::tenant_limits::TenantLimits;

/// One tenant.
#[derive(Debug)]
pub struct Tenant {
    /// Name, for logs.
    pub name: Arc<str>,
    /// Subscriptions.
    pub router: Router,
    /// Retained messages.
    pub retained: Retained,
    /// Limits of this tenant: the broker's, tightened by the tenant's own.
    pub limits: TenantLimits,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Where its sessions' state is written through.
    store: Arc<TenantSessionStore>,
    /// With a cluster: its persistent sessions in JetStream.
    cluster_sessions: std::sync::OnceLock<Arc<crate::cluster::sessions::ClusterSessions>>,
    /// Itself, set when it joins a cluster.
    me: std::sync::OnceLock<std::sync::Weak<Tenant>>,
    /// Its part of the durable store, with a data directory.
    durable: Option<TenantStore>,
    /// The broker's background tasks: will delays, session expiry, the hook's verdicts.
    pub tasks: Tasks,
    /// Sessions by client id. Locked briefly to look up, insert or remove.
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// Connections open now.
    connections: AtomicUsize,
    /// The on-publish hook, when the tenant has one.
    hook: RwLock<Option<Arc<Hook>>>,
    /// Retained messages refused for want of room since the last log line about it, and when
    /// that line was written (ms since `started`): one line per [`FULL_LOG_INTERVAL`] at most.
    retained_refused: AtomicU64,
    retained_logged_at: AtomicU64,
    started: Instant,
    /// The other replicas of the broker (`[cluster]`).
    cluster: std::sync::OnceLock<Arc<crate::cluster::link::Link>>,
    /// With a cluster: the subject its QoS 0 messages travel on, in frames.
    batch_subject: std::sync::OnceLock<async_nats::Subject>,
    /// With a cluster: when each client id connected here last (Unix ms), to tell which of two
    /// connections with one client id on two replicas is the newer.
    connected_at: Mutex<HashMap<Arc<str>, u64>>,
    /// With a cluster: the shared groups with members here, by (group, filter), with their
    /// number of members and the token that ends their NATS queue subscription.
    shared_interest: Mutex<HashMap<SharedKey, (usize, tokio_util::sync::CancellationToken)>>,
    /// With a cluster: the JetStream bucket its retained messages are kept in.
    bucket: std::sync::OnceLock<crate::cluster::retained::Bucket>,
    /// With a cluster: the bytes of messages from NATS received for it and not yet routed
    /// (`[cluster] receive_queue_bytes`, [`crate::cluster::link::Received`]).
    pub(crate) replica_backlog: Arc<AtomicUsize>,
}

/// A shared subscription: (group, filter).
type SharedKey = (Box<str>, Box<str>);

/// A retained message the store has no room for: refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedFull;

/// At most one log line per tenant per this interval about refused retained messages.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Tenant {
    /// A new, empty tenant.
    pub fn new(name: &str, limits: Limits, metrics: Arc<Metrics>, tasks: Tasks) -> Arc<Self> {
        Self::with_storage(name, limits, metrics, tasks, None)
    }

    /// A new tenant whose retained messages and persistent sessions are kept in `storage`
    /// (when given), with what it had there restored.
    pub fn with_storage(
        name: &str,
        limits: Limits,
        metrics: Arc<Metrics>,
        tasks: Tasks,
        storage: Option<&Storage>,
    ) -> Arc<Self> {
        let durable = storage.map(|s| s.tenant(name));
        let local: Arc<dyn SessionStore> = match &durable {
            Some(d) => Arc::new(d.clone()),
            None => Arc::new(MemoryStore),
        };
        let store = Arc::new(TenantSessionStore::new(local));
        let tenant = Arc::new(Tenant {
            name: name.into(),
            router: Router::default(),
            retained: Retained::new(limits.max_retained_messages, limits.max_retained_bytes),
            limits: TenantLimits::new(limits),
            metrics,
            store,
            cluster_sessions: std::sync::OnceLock::new(),
            me: std::sync::OnceLock::new(),
            durable,
            tasks,
            sessions: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            hook: RwLock::new(None),
            retained_refused: AtomicU64::new(0),
            retained_logged_at: AtomicU64::new(0),
            started: Instant::now(),
            cluster: std::sync::OnceLock::new(),
            batch_subject: std::sync::OnceLock::new(),
            connected_at: Mutex::new(HashMap::new()),
            shared_interest: Mutex::new(HashMap::new()),
            bucket: std::sync::OnceLock::new(),
            replica_backlog: Arc::default(),
        });
        if let Some(restored) = storage.and_then(|s| s.take_restored(name)) {
            crate::session::lifecycle::restore_tenant(&tenant, restored);
        }
        tenant
    }

    /// Joins the tenant to the other replicas: its messages are sent to them and theirs routed
    /// here. Once; later calls do nothing.
    /// Its retained messages are then those of its JetStream bucket: what the local store
    /// read back is dropped, and the bucket is read in its place.
    pub fn join_cluster(self: &Arc<Self>, link: &Arc<crate::cluster::link::Link>) {
        if self.cluster.set(link.clone()).is_ok() {
            self.retained.clear();
            self.metrics.retained.set(0);
            let _ = self
                .bucket
                .set(crate::cluster::retained::Bucket::start(link, self));
            link.attach(self);
            let _ = self.me.set(Arc::downgrade(self));
            let sessions = crate::cluster::sessions::ClusterSessions::start(link, self);
            self.store.use_cluster(sessions.clone());
            let _ = self.cluster_sessions.set(sessions);
        }
    }

    /// The tenant was deleted: its JetStream bucket is no longer followed, and is deleted.
    pub fn delete_replicated(&self) {
        if let (Some(link), Some(bucket)) = (self.cluster.get(), self.bucket.get()) {
            bucket.stop();
            link.delete_bucket(bucket.name().to_owned());
        }
        if let Some(link) = self.cluster.get() {
            link.delete_streams(&self.name);
        }
    }

    /// Why a retained QoS 1 or 2 publication is refused now because JetStream cannot take it,
    /// if it is.
    pub fn retained_failure(&self) -> Option<&'static str> {
        self.bucket.get().and_then(|b| b.failure())
    }

    /// A retained message from the tenant's JetStream bucket.
    pub fn retained_from_replicas(&self, message: Arc<Message>) {
        match self.retained.set(&message) {
            RetainOutcome::Stored | RetainOutcome::Cleared => {}
            RetainOutcome::Full => self.refuse_retained(&message),
        }
        self.metrics.retained.set(self.retained.len() as i64);
    }

    /// A retained message deleted (or expired) in the tenant's JetStream bucket.
    pub fn retained_cleared_by_replicas(&self, topic: &str) {
        self.retained.remove(topic);
        self.metrics.retained.set(self.retained.len() as i64);
    }

    /// With a cluster: its persistent sessions in JetStream.
    pub fn cluster_sessions(&self) -> Option<&Arc<crate::cluster::sessions::ClusterSessions>> {
        self.cluster_sessions.get()
    }

    /// Whether `session` gets `message` from routing: with a cluster, a persistent session
    /// reads QoS 1/2 messages from its JetStream consumers instead (once, not twice).
    fn routed_to(&self, session: &Session, message: &Message) -> bool {
        self.cluster_sessions.get().is_none()
            || message.qos == QoS::AtMostOnce
            || !session.stores(QoS::AtLeastOnce)
    }

    /// The link to the other replicas, with a cluster.
    pub fn cluster_link(&self) -> Option<&Arc<crate::cluster::link::Link>> {
        self.cluster.get()
    }

    /// A session joined the shared group `group` on `filter` (it was not a member): with a
    /// cluster, the first member here makes this replica a member of the group's NATS queue
    /// group, so each message goes to one member across all replicas.
    pub fn shared_subscribed(self: &Arc<Self>, group: &str, filter: &str) {
        let Some(link) = self.cluster.get() else {
            return;
        };
        let mut interest = self.shared_interest.lock();
        let entry = interest
            .entry((group.into(), filter.into()))
            .or_insert_with(|| (0, link.join_group(self, group, filter)));
        entry.0 += 1;
    }

    fn shared_unsubscribed(&self, group: &str, filter: &str) {
        let mut interest = self.shared_interest.lock();
        let key: SharedKey = (group.into(), filter.into());
        if let Some(entry) = interest.get_mut(&key) {
            entry.0 -= 1;
            if entry.0 == 0 {
                entry.1.cancel();
                interest.remove(&key);
            }
        }
    }

    /// Delivers a message NATS gave this replica's queue subscription of a shared group to
    /// one of the group's members here.
    pub fn deliver_to_group(&self, message: Arc<Message>, filter: &str, group: &str) {
        if let Some((session, delivery)) = self.router.route_to_group(&message, filter, group) {
            session.push(delivery, &self.metrics);
        }
    }

    /// A connection with `client_id` was accepted here: the other replicas close theirs.
    pub fn connected_here(&self, client_id: &Arc<str>) {
        if let Some(link) = self.cluster.get() {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            self.connected_at.lock().insert(client_id.clone(), at);
            link.announce_connected(&self.name, client_id, at);
        }
    }

    /// Replica `origin` accepted a connection with `client_id` at `at` (Unix ms): the one
    /// here, if older, is closed with 0x8E (session taken over). Of two connections at the
    /// same millisecond, the one on the replica with the greater id stays.
    pub fn connected_elsewhere(&self, client_id: &str, at: u64, origin: &str, replica: &str) {
        {
            let mut connected = self.connected_at.lock();
            if let Some(&here) = connected.get(client_id) {
                if (here, replica) > (at, origin) {
                    return;
                }
            }
            connected.remove(client_id);
        }
        if let Some(session) = self.session(client_id) {
            session.kick(crate::session::Kick::TakenOver);
            if let Some(cs) = self.cluster_sessions() {
                // The session goes on there, from what JetStream keeps: let go of it here
                // without ending it once its connection (if any) has closed.
                cs.hand_over(client_id);
                if let Some(tenant) = self.me() {
                    let tasks = self.tasks.clone();
                    tasks.spawn(async move {
                        let state = session.state.clone().lock_owned().await;
                        if !state.is_ended() {
                            crate::session::lifecycle::end_session(
                                &tenant,
                                &session,
                                state,
                                crate::session::lifecycle::SessionEnd::HandedOver,
                            );
                        }
                    });
                }
            }
        }
    }

    /// This tenant, as the `Arc` the cluster's tasks hold.
    fn me(&self) -> Option<Arc<Tenant>> {
        self.cluster
            .get()
            .and(self.me.get())
            .and_then(std::sync::Weak::upgrade)
    }

    /// Why durable work is refused now because the other replicas cannot be reached (the NATS
    /// connection is down, or the queue to it is full), if it is.
    pub fn cluster_failure(&self) -> Option<&'static str> {
        let link = self.cluster.get()?;
        if !link.is_connected() {
            Some("the broker's replicas cannot be reached (NATS connection down)")
        } else if !link.stream_ready(&self.name) {
            Some(crate::storage::Failure::NoStream.describe())
        } else if link.is_backed_up() {
            Some("the way to the broker's other replicas is full; retry later")
        } else {
            None
        }
    }

    /// Whether a message published on another replica to `topic` (retained or not) has anything
    /// to do here: an ordinary subscription matches it, or it is retained and this replica
    /// keeps retained messages itself (without a JetStream bucket).
    pub fn wants_from_replica(&self, topic: &str, retain: bool) -> bool {
        (retain && self.bucket.get().is_none()) || self.router.has_ordinary(topic)
    }

    /// Routes a message published on another replica to this replica's ordinary subscribers
    /// and keeps it when retained; it is not sent on again.
    pub fn deliver_from_replica(&self, message: Arc<Message>, scratch: &mut Vec<Routed>) {
        // With a bucket, retained messages come from it, in its order.
        if message.retain && self.bucket.get().is_none() {
            match self.retained.set(&message) {
                RetainOutcome::Stored | RetainOutcome::Cleared => {
                    self.metrics.retained.set(self.retained.len() as i64);
                }
                RetainOutcome::Full => self.refuse_retained(&message),
            }
        }
        self.router.route_ordinary(&message, scratch);
        for (session, delivery) in scratch.drain(..) {
            if self.routed_to(&session, &message) {
                session.push(delivery, &self.metrics);
            }
        }
    }

    /// Its part of the durable store, if the broker has one.
    pub fn durable(&self) -> Option<&TenantStore> {
        self.durable.as_ref()
    }

    /// Why durable work is refused now (the store cannot be written), if it is.
    pub fn storage_failure(&self) -> Option<crate::storage::Failure> {
        self.durable.as_ref().and_then(|d| d.storage().failure())
    }

    /// Sets the tenant's own limits (see [`crate::tenant_limits`]) and the retained store's
    /// bounds with them. `None` when they did not change, else what did not apply as asked.
    pub fn apply_limits(&self, spec: &starling_types::LimitsSpec) -> Option<Vec<String>> {
        let notes = self.limits.set(spec)?;
        let l = self.limits.current();
        self.retained
            .set_bounds(l.max_retained_messages, l.max_retained_bytes);
        Some(notes)
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
    /// the message is retained. `scratch` is reused between calls. Returns the deliveries
    /// queued, or [`RetainedFull`] for a retained message the store has no room for, which is
    /// then neither retained nor delivered (counted as `retained_full` and logged).
    pub fn publish(
        &self,
        message: Arc<Message>,
        scratch: &mut Vec<Routed>,
    ) -> Result<usize, RetainedFull> {
        self.publish_noting_congestion(
            message, scratch, &mut None, &mut false, &mut false, &mut None,
        )
    }

    /// [`Tenant::publish`], and sets `congested` to a connected session whose outbox got a QoS 1
    /// or 2 delivery and is now three quarters full (see [`Session::is_congested`]), and
    /// `filling` when an outbox that got a delivery is half full or more
    /// ([`Session::is_filling`]), and `stored` when the message was written to the durable
    /// store (retained, or queued for a persistent session). With a cluster, `replicated`
    /// gets the receiver that says when JetStream holds the message: a QoS 1 or 2 message in
    /// the tenant's stream, a retained one in its bucket (both, for both).
    pub fn publish_noting_congestion(
        &self,
        message: Arc<Message>,
        scratch: &mut Vec<Routed>,
        congested: &mut Option<Arc<Session>>,
        filling: &mut bool,
        stored: &mut bool,
        replicated: &mut Option<crate::cluster::link::Replicated>,
    ) -> Result<usize, RetainedFull> {
        let mut retained_stored = None;
        if let (true, Some(bucket)) = (message.retain, self.bucket.get()) {
            let topic = message.topic.as_str();
            let previous = self.retained.get(topic);
            match self.retained.set(&message) {
                RetainOutcome::Stored => {
                    self.metrics.retained.set(self.retained.len() as i64);
                    let written = self.retained.get(topic);
                    retained_stored = Some(bucket.store(self, topic, written, previous));
                }
                RetainOutcome::Cleared => {
                    self.metrics.retained.set(self.retained.len() as i64);
                    retained_stored = Some(bucket.store(self, topic, None, previous));
                }
                RetainOutcome::Full => {
                    self.refuse_retained(&message);
                    return Err(RetainedFull);
                }
            }
        } else if message.retain {
            match self.retained.set(&message) {
                RetainOutcome::Stored => {
                    self.metrics.retained.set(self.retained.len() as i64);
                    if let Some(d) = &self.durable {
                        d.retained_set(&message);
                        *stored = true;
                    }
                }
                RetainOutcome::Cleared => {
                    self.metrics.retained.set(self.retained.len() as i64);
                    if let Some(d) = &self.durable {
                        d.retained_cleared(message.topic.as_str());
                        *stored = true;
                    }
                }
                RetainOutcome::Full => {
                    self.refuse_retained(&message);
                    return Err(RetainedFull);
                }
            }
        }
        match self.cluster.get() {
            Some(link) => {
                let batch = self
                    .batch_subject
                    .get_or_init(|| crate::cluster::subject::batch_subject(&self.name).into());
                *replicated = crate::connection::publish::both(
                    link.publish(&self.name, batch, &message),
                    retained_stored,
                );
                // Shared groups get it through NATS queue groups, on whichever replica.
                self.router.route_ordinary(&message, scratch);
            }
            None => self.router.route(&message, scratch),
        }
        let mut queued = 0;
        for (session, delivery) in scratch.drain(..) {
            if !self.routed_to(&session, &message) {
                continue;
            }
            let reliable = delivery.qos != QoS::AtMostOnce;
            let durable = session.stores(delivery.qos);
            if session.push(delivery, &self.metrics) {
                queued += 1;
                *stored |= durable;
            }
            *filling |= session.is_filling();
            if reliable && congested.is_none() && session.is_connected() && session.is_congested() {
                *congested = Some(session);
            }
        }
        Ok(queued)
    }

    /// Counts a retained message refused for want of room, and logs it (at most one line per
    /// [`FULL_LOG_INTERVAL`], with the number refused since the last one).
    fn refuse_retained(&self, message: &Message) {
        self.metrics.count_drop(DropReason::retained_full);
        let refused = self.retained_refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.retained_logged_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= FULL_LOG_INTERVAL.as_millis() as u64;
        if due
            && self
                .retained_logged_at
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.retained_refused.fetch_sub(refused, Ordering::Relaxed);
            warn!(
                tenant = %self.name,
                client_id = message.publisher.as_deref().unwrap_or(""),
                weight = message.weight(),
                retained = self.retained.len(),
                retained_bytes = self.retained.bytes(),
                max_retained_messages = self.limits.current().max_retained_messages,
                max_retained_bytes = self.limits.current().max_retained_bytes,
                refused,
                "retained message refused: the tenant's retained store is full"
            );
        }
    }

    /// Removes the subscription of session `session_id` to `full_filter` (as the client wrote
    /// it, `$share/{group}/` included) and counts it. Returns whether there was one.
    pub fn unsubscribe(&self, session_id: u64, full_filter: &str) -> bool {
        let (group, filter) = split_shared(full_filter);
        let removed = self.router.unsubscribe(session_id, filter, group);
        if removed {
            if let Some(group) = group {
                self.shared_unsubscribed(group, filter);
            }
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
        let limits = self.limits.current();
        let s = Session::new(
            client_id.into(),
            OutboxLimits {
                max_messages: limits.max_queued_messages,
                max_bytes: limits.max_queued_bytes,
            },
            self.store.clone() as Arc<dyn SessionStore>,
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
            self.connected_at.lock().remove(&session.client_id);
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
        let max = self.limits.current().max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a connection slot back.
    pub fn close_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `$share/{group}/{filter}` split into the group and the filter that is routed; other
/// filters unchanged. Filters are checked when subscribed; one that is not a valid
/// subscription is returned as it is (and matches no subscription).
pub fn split_shared(full: &str) -> (Option<&str>, &str) {
    starling_codec::topic::subscription(full).unwrap_or((None, full))
}
