//! The NATS connections of one replica: every message published here is sent to the other
//! replicas, and every message they publish is routed to this replica's subscribers.
//!
//! A QoS 0 message travels in a frame with the others of its tenant the send task has at hand
//! ([`super::frame`]), on the tenant's batch subject ([`super::subject::batch_subject`]). A QoS
//! 1 or 2 message travels alone as the MQTT 5.0 PUBLISH packet that carries it (topic, QoS,
//! RETAIN, properties, payload; the Message Expiry Interval is the time it has left), on the
//! durable subject of its tenant and topic ([`super::subject`]), with two headers: the replica
//! that sent it (`Starling-Origin`) and the publisher's client id (`Starling-Publisher`,
//! escaped as a subject token, for No Local).
//!
//! Two connections: the one everything is sent on does not echo (the server never sends a
//! replica's own messages back to it); the shared groups' queue subscriptions are on a second
//! one, which does, because NATS may give a queue group's message to this replica's member.
//!
//! Two connections: the one everything is sent on does not echo (the server never sends a
//! replica's own messages back to it); the shared groups' queue subscriptions are on a second
//! one, which does, because NATS may give a queue group's message to this replica's member.
//!
//! Order: one bounded queue and one task send this replica's messages in the order they were
//! published, over one connection (a frame is sent before any message that follows it in the
//! queue); NATS keeps that order to each subscriber, and each tenant reads its messages from
//! one subscription in that order, so messages of one publisher to one topic arrive in order
//! on every replica. The task takes the queue in batches.
//!
//! Back-pressure: once the queue is three quarters full ([`Link::is_congested`]) the replica's
//! connections stop reading from their clients until it has drained to half ([`Link::room`]),
//! as they do while the durable store's writer is behind, so publishers are slowed to what the
//! way to NATS takes. Were it full all the same (what connections had read already), a QoS 1
//! or 2 publication is refused (0x80, [`crate::tenant::Tenant::cluster_failure`]) and a QoS 0
//! message reaches this replica's subscribers only (counted in `starling_cluster_errors` and
//! logged).
//!
//! Durability: a QoS 1 or 2 message goes to its durable subject
//! ([`super::subject::durable_topic_to_subject`]), which the tenant's JetStream stream
//! ([`stream_name`]) captures, as a JetStream publish: [`Link::publish`] hands back a receiver
//! that says when JetStream confirmed (PubAck) that the stream, with its replicas, holds it,
//! and the publisher's PUBACK / PUBREC waits for that. The other replicas' subscriptions see the
//! message as before (a JetStream publish is an ordinary NATS message too).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::{Client, ConnectOptions, HeaderMap};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use starling_codec::{Packet, ProtocolVersion, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ClusterConfig;
use super::subject::{
    batch_subject, decode_token, durable_subjects, durable_topic_to_subject, filter_to_subjects,
    push_token, queue_group, subject_to_topic, tenant_prefix, to_durable,
};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::storage::Failure;
use crate::tenant::Tenant;

/// The header naming the replica that sent a message.
pub const ORIGIN: &str = "Starling-Origin";
/// The header carrying the publisher's client id.
pub const PUBLISHER: &str = "Starling-Publisher";
/// The header of a connection announcement: when the connection was accepted (Unix ms).
pub const CONNECTED_AT: &str = "Starling-Connected-At";
/// Messages waiting to be sent to NATS, at most.
pub const SEND_QUEUE: usize = 65_536;
/// How long a QoS 1 or 2 publication waits for JetStream's confirmation before it is refused.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// JetStream publications awaiting their confirmation, at most; the send task waits for room.
const MAX_ACKS_PENDING: usize = 8_192;

/// Says whether JetStream stored a QoS 1 or 2 message.
pub type Replicated = oneshot::Receiver<Result<(), Failure>>;

/// What the send task sends.
#[derive(Debug)]
enum Outgoing {
    /// A QoS 0 message of the tenant whose batch subject this is: one entry of the next frame
    /// sent there ([`super::frame`]).
    Batched(async_nats::Subject, Arc<Message>),
    /// A message sent alone (subject, headers, body): a QoS 1 or 2 one with where to say
    /// whether JetStream stored it, or a connection announcement.
    Alone(
        String,
        HeaderMap,
        Bytes,
        Option<oneshot::Sender<Result<(), Failure>>>,
    ),
}

/// Free places in the queue to NATS below which the replica's connections stop reading from
/// their clients (a quarter of [`SEND_QUEUE`]): publishers are slowed down to what the way to
/// NATS takes instead of having their QoS 0 messages dropped or QoS 1/2 ones refused.
const CONGESTED_BELOW: usize = SEND_QUEUE / 4;
/// Messages queued at or below which the connections waiting for room read again.
const ROOM_AT: usize = SEND_QUEUE / 2;
/// Messages the send task takes from the queue at once.
const SEND_BATCH: usize = 256;
/// The size past which a frame of QoS 0 messages is sent and the next one started (a message
/// larger than this goes alone in its frame; NATS's default limit is 1 MiB).
const MAX_FRAME: usize = 64 * 1024;
/// How often the round trip to NATS is measured and JetStream's availability checked.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// One replica's link to the others.
#[derive(Debug)]
pub struct Link {
    /// The connection messages are sent and received on (no echo).
    client: Client,
    /// The connection of the shared groups' queue subscriptions (with echo).
    groups: Client,
    js: jetstream::Context,
    replica: Arc<str>,
    send: mpsc::Sender<Outgoing>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    queue_full_logged: AtomicU64,
    /// The stream settings of `[cluster]`.
    config: ClusterConfig,
    /// Tenants whose stream is set up: their QoS 1/2 publications are refused until then.
    streams: parking_lot::Mutex<HashSet<Arc<str>>>,
    /// Tenants joined to the cluster whose stream is not set up: the replica is not ready.
    unready: AtomicU64,
    /// The tenants' persistent sessions, flushed at shutdown.
    sessions: parking_lot::Mutex<Vec<std::sync::Weak<super::sessions::ClusterSessions>>>,
    /// Bumped on each (re)connection to NATS and when JetStream says a stream is missing: the
    /// tenants' streams are set up again.
    connected: tokio::sync::watch::Receiver<u64>,
    /// Whether JetStream answered the last request for retained messages or the last check.
    jetstream_ok: AtomicBool,
    /// Tenants whose retained-message bucket has not been read once yet.
    loading: AtomicUsize,
    /// Wakes the connections waiting for room in the queue ([`Link::room`]).
    drained: Arc<tokio::sync::Notify>,
    /// Whether a connection waits for room.
    waiting: Arc<AtomicBool>,
    /// Which replicas are alive ([`super::liveness`]).
    liveness: Arc<super::liveness::Liveness>,
    /// Cancelled at the end of a graceful shutdown: the heartbeats stop.
    leaving: CancellationToken,
}

/// The JetStream stream of `tenant`'s QoS 1/2 messages: `STARLING_<tenant>` when the name is
/// only letters, digits and `-` and does not start with `X`, else `STARLING_X<hex of the name>`
/// (a stream name may not hold `.`, `*`, `>`, `/`, `\\` or whitespace). No name this gives
/// holds a `_` after the prefix, so the names other streams add a `_SUFFIX` to
/// ([`super::sessions::bucket_name`]) never equal another tenant's stream.
pub fn stream_name(tenant: &str) -> String {
    if !tenant.is_empty()
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tenant.starts_with('X')
    {
        return format!("STARLING_{tenant}");
    }
    let mut s = String::from("STARLING_X");
    for b in tenant.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Link {
    /// Connects to the NATS servers of `config` (retrying in the background until one answers)
    /// and starts the task that sends this replica's messages.
    pub async fn connect(
        config: &ClusterConfig,
        replica: String,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Link>> {
        let (connected_tx, connected) = tokio::sync::watch::channel(0u64);
        let connected_tx = Arc::new(connected_tx);
        // The connection everything is sent on: the server does not echo its messages back
        // (each replica has routed its own already), which halves what it reads from NATS.
        let client = connect_options(config, &replica, "", Some(connected_tx.clone()))
            .await?
            .no_echo()
            .connect(config.nats.as_slice())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to NATS: {e}"))?;
        // The connection of the shared groups' queue subscriptions: NATS gives a message to one
        // member of a queue group, which may be this replica, and a connection without echo
        // would never receive its own (the group would lose them).
        let groups = connect_options(config, &replica, " groups", None)
            .await?
            .connect(config.nats.as_slice())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to NATS: {e}"))?;
        info!(replica = %replica, servers = config.nats.len(), "cluster: joining replicas through NATS");
        let (send, mut queue) = mpsc::channel::<Outgoing>(SEND_QUEUE);
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .ack_timeout(ACK_TIMEOUT)
            .max_ack_inflight(MAX_ACKS_PENDING)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let (drained, waiting) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(AtomicBool::new(false)),
        );
        let link = Arc::new(Link {
            client: client.clone(),
            groups,
            js: js.clone(),
            replica: replica.as_str().into(),
            send,
            metrics: metrics.clone(),
            stop: stop.clone(),
            queue_full_logged: AtomicU64::new(0),
            config: config.clone(),
            streams: parking_lot::Mutex::new(HashSet::new()),
            unready: AtomicU64::new(0),
            sessions: parking_lot::Mutex::new(Vec::new()),
            connected,
            jetstream_ok: AtomicBool::new(true),
            loading: AtomicUsize::new(0),
            drained: drained.clone(),
            waiting: waiting.clone(),
            liveness: Arc::new(super::liveness::Liveness::new(
                &replica,
                Duration::from_secs(config.replica_timeout_secs),
            )),
            leaving: CancellationToken::new(),
        });
        // Heartbeats go on through a graceful shutdown's drain, until `Link::leave`.
        super::liveness::start(&link, link.leaving.clone());
        tokio::spawn(probe(Arc::downgrade(&link), stop.clone()));
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(SEND_BATCH);
            while queue.recv_many(&mut batch, SEND_BATCH).await > 0 {
                if waiting.load(Ordering::SeqCst) && queue.len() <= ROOM_AT {
                    waiting.store(false, Ordering::SeqCst);
                    drained.notify_waiters();
                }
                // Consecutive QoS 0 messages of one tenant go in one frame, sent before
                // anything else and at the end of what the queue held: nothing waits for a timer,
                // and the order of the queue is the order on the connection.
                let mut frame = Frame::default();
                for outgoing in batch.drain(..) {
                    let (subject, headers, body, stored) = match outgoing {
                        Outgoing::Batched(subject, message) => {
                            let full = frame.entries > 0
                                && frame.bytes.len() + message.weight() > MAX_FRAME;
                            if full || frame.subject.as_ref().is_some_and(|s| *s != subject) {
                                frame.send(&client, &metrics).await;
                            }
                            frame.push(subject, &message);
                            continue;
                        }
                        Outgoing::Alone(subject, headers, body, stored) => {
                            frame.send(&client, &metrics).await;
                            (subject, headers, body, stored)
                        }
                    };
                    let Some(stored) = stored else {
                        match client.publish_with_headers(subject, headers, body).await {
                            Ok(()) => {
                                metrics.cluster_sent.inc();
                            }
                            Err(e) => {
                                metrics.cluster_errors.inc();
                                warn!(error = %e, "cluster: a message was not sent to NATS");
                            }
                        }
                        continue;
                    };
                    // Sent in order here; the confirmation is awaited apart, so the next message
                    // need not wait for it.
                    match js.publish_with_headers(subject, headers, body).await {
                        Ok(ack) => {
                            metrics.cluster_sent.inc();
                            let metrics = metrics.clone();
                            let recheck = connected_tx.clone();
                            tokio::spawn(async move {
                                let result = ack.await.map(drop).map_err(|e| {
                                    metrics.cluster_errors.inc();
                                    publish_failure(&e)
                                });
                                if result == Err(Failure::NoStream) {
                                    recheck.send_modify(|n| *n += 1);
                                }
                                let _ = stored.send(result);
                            });
                        }
                        Err(e) => {
                            metrics.cluster_errors.inc();
                            warn!(error = %e, "cluster: a QoS 1/2 message was not sent to JetStream");
                            let _ = stored.send(Err(publish_failure(&e)));
                        }
                    }
                }
                frame.send(&client, &metrics).await;
            }
        });
        Ok(link)
    }

    /// The NATS connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `[cluster]`.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The NATS servers known: configured, or announced by the server, whichever are more.
    fn known_servers(&self) -> usize {
        self.client
            .server_info()
            .connect_urls
            .len()
            .max(self.config.nats.len())
    }

    /// The copies JetStream keeps of the tenants' streams and buckets.
    pub fn stream_replicas(&self) -> usize {
        self.config.resolve_stream_replicas(self.known_servers())
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether the connection to NATS is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && self.groups.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether every tenant's retained messages have been read from JetStream once, and its
    /// sessions stream set up.
    pub fn is_loaded(&self) -> bool {
        self.loading.load(Ordering::Acquire) == 0
    }

    pub(super) fn loading_started(&self) {
        self.loading.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn loading_done(&self) {
        let _ = self
            .loading
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// The JetStream context of the connection.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

    /// Whether JetStream is thought to be available: the connection is up and the last
    /// request that depended on JetStream was answered.
    pub fn jetstream_available(&self) -> bool {
        self.is_connected() && self.jetstream_ok.load(Ordering::Acquire)
    }

    pub(super) fn jetstream_succeeded(&self) {
        if !self.jetstream_ok.swap(true, Ordering::AcqRel) {
            info!(replica = %self.replica, "cluster: JetStream answers again");
        }
    }

    pub(super) fn jetstream_failed(&self) {
        if self.jetstream_ok.swap(false, Ordering::AcqRel) {
            warn!(
                replica = %self.replica,
                "cluster: JetStream does not answer; retained QoS 1 and 2 publications are refused until it does"
            );
        }
    }

    /// The copies of a retained-message bucket: `cluster.retained_replicas`, else the NATS
    /// servers known (configured, or announced by the server), at most 3.
    pub fn bucket_replicas(&self) -> usize {
        self.config.resolve_retained_replicas(self.known_servers())
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Cancelled when the broker stops.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Deletes the retained-message bucket `name` (its tenant was deleted), in the
    /// background; a bucket already gone is fine.
    pub fn delete_bucket(self: &Arc<Self>, name: String) {
        let link = self.clone();
        tokio::spawn(async move {
            match link.js.delete_key_value(&name).await {
                Ok(_) => {
                    info!(bucket = %name, "cluster: the deleted tenant's retained messages are deleted")
                }
                Err(e) => {
                    let gone = link.js.get_key_value(&name).await.is_err_and(|g| {
                        g.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket
                            && g.to_string().contains("not found")
                    });
                    if !gone {
                        link.metrics
                            .jetstream_failed(crate::metrics::JetStreamOp::delete_bucket);
                        warn!(bucket = %name, error = %e, "cluster: cannot delete a deleted tenant's retained messages");
                    }
                }
            }
        });
    }

    /// Whether the queue to NATS is nearly full: the replica's connections stop reading from
    /// their clients until [`Link::room`].
    pub fn is_congested(&self) -> bool {
        self.send.capacity() < CONGESTED_BELOW
    }

    /// Waits until the queue to NATS has drained to half (returns at once when it is not
    /// congested).
    pub async fn room(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if !self.is_congested() {
                return;
            }
            notified.await;
        }
    }

    /// Which replicas are alive.
    pub fn liveness(&self) -> &Arc<super::liveness::Liveness> {
        &self.liveness
    }

    /// The sessions of every tenant joined to the cluster.
    pub(super) fn all_sessions(&self) -> Vec<Arc<super::sessions::ClusterSessions>> {
        self.sessions
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    /// At the end of a graceful shutdown, once what the sessions changed is written: the
    /// heartbeats stop, and the last one says this replica leaves, so that the others take over
    /// what it held at once.
    pub async fn leave(&self) {
        self.leaving.cancel();
        super::liveness::leave(self).await;
    }

    /// Registers a tenant's persistent sessions, to flush at shutdown.
    pub(super) fn register_sessions(&self, s: std::sync::Weak<super::sessions::ClusterSessions>) {
        let mut all = self.sessions.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(s);
    }

    /// At shutdown, once the connections are closed: what the sessions changed last is
    /// written to JetStream, and what waits to be sent to NATS is sent.
    pub async fn flush(&self) {
        for s in self.all_sessions() {
            s.flush().await;
        }
        let _ = tokio::time::timeout(ACK_TIMEOUT, self.client.flush()).await;
    }

    /// Deletes the JetStream streams of the deleted tenant `tenant` (its QoS 1/2 messages,
    /// with its persistent sessions' consumers, and its sessions), in the background; streams
    /// already gone are fine.
    pub fn delete_streams(self: &Arc<Self>, tenant: &str) {
        let link = self.clone();
        let names = [stream_name(tenant), super::sessions::bucket_name(tenant)];
        tokio::spawn(async move {
            for name in names {
                if let Err(e) = link.js.delete_stream(&name).await {
                    if !e.to_string().contains("not found") {
                        link.metrics.cluster_errors.inc();
                        warn!(stream = %name, error = %e, "cluster: cannot delete a deleted tenant's stream");
                    }
                }
            }
        });
    }

    /// Whether the queue to NATS has no room left now (a QoS 1 or 2 publication is then
    /// refused rather than acknowledged and not sent on).
    pub fn is_backed_up(&self) -> bool {
        self.send.capacity() == 0
    }

    /// Whether the JetStream stream of `tenant` is set up (QoS 1/2 publications are refused
    /// until it is).
    pub fn stream_ready(&self, tenant: &str) -> bool {
        self.streams.lock().contains(tenant)
    }

    /// Whether every tenant joined to the cluster has its stream set up (the replica is not
    /// ready before).
    pub fn streams_ready(&self) -> bool {
        self.unready.load(Ordering::Acquire) == 0
    }

    /// Creates the JetStream stream of `tenant`, or brings its settings up to date: the
    /// durable subjects of the tenant, kept for `stream_max_age_secs` up to
    /// `stream_max_bytes` (the oldest go first), in `stream_replicas` copies.
    pub async fn ensure_stream(&self, tenant: &str) -> Result<(), String> {
        let replicas = self.stream_replicas();
        let config = stream::Config {
            name: stream_name(tenant),
            description: Some("Starling: the tenant's QoS 1 and 2 messages".into()),
            subjects: durable_subjects(tenant).to_vec(),
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(self.config.stream_max_age_secs),
            max_bytes: i64::try_from(self.config.stream_max_bytes).unwrap_or(i64::MAX),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..stream::Config::default()
        };
        self.js
            .create_or_update_stream(config)
            .await
            .map_err(|e| e.to_string())?;
        self.streams.lock().insert(tenant.into());
        Ok(())
    }

    /// Sends `message`, published on this replica in `tenant` (whose batch subject is `batch`,
    /// [`super::subject::batch_subject`]), to the other replicas. For a QoS 1 or 2 message, the
    /// receiver says when the tenant's stream holds it.
    pub fn publish(
        &self,
        tenant: &str,
        batch: &async_nats::Subject,
        message: &Arc<Message>,
    ) -> Option<Replicated> {
        if message.qos == QoS::AtMostOnce {
            self.enqueue(tenant, Outgoing::Batched(batch.clone(), message.clone()));
            return None;
        }
        let body = encode(message)?;
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, &*self.replica);
        if let Some(p) = &message.publisher {
            let mut token = String::new();
            push_token(&mut token, p);
            headers.insert(PUBLISHER, token.as_str());
        }
        let subject = durable_topic_to_subject(tenant, message.topic.as_str());
        let (tx, rx) = oneshot::channel();
        self.enqueue(tenant, Outgoing::Alone(subject, headers, body, Some(tx)));
        Some(rx)
    }

    /// Queues `outgoing`; when the queue is full, a QoS 1 or 2 message is refused and any
    /// message counted and logged.
    fn enqueue(&self, tenant: &str, outgoing: Outgoing) {
        if let Err(e) = self.send.try_send(outgoing) {
            if let mpsc::error::TrySendError::Full(Outgoing::Alone(.., Some(tx)))
            | mpsc::error::TrySendError::Closed(Outgoing::Alone(.., Some(tx))) = e
            {
                let _ = tx.send(Err(Failure::NotReplicated));
            }
            self.metrics.cluster_errors.inc();
            let n = self.queue_full_logged.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                warn!(
                    tenant,
                    refused = n + 1,
                    "cluster: the queue to NATS is full; a message reaches this replica's subscribers only"
                );
            }
        }
    }

    /// Tells the other replicas that `client_id` of `tenant` connected here at `at_ms` (Unix
    /// ms), on `starling.<tenant>.conn`: a replica serving an older connection with that client
    /// id closes it with 0x8E (session taken over).
    pub fn announce_connected(&self, tenant: &str, client_id: &str, at_ms: u64) {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, &*self.replica);
        headers.insert(CONNECTED_AT, at_ms.to_string().as_str());
        let subject = format!("{}.conn", tenant_prefix(tenant));
        let body = Bytes::copy_from_slice(client_id.as_bytes());
        if self
            .send
            .try_send(Outgoing::Alone(subject, headers, body, None))
            .is_err()
        {
            self.metrics.cluster_errors.inc();
            warn!(
                tenant,
                "cluster: the queue to NATS is full; a connection was not announced to the other replicas"
            );
        }
    }

    /// Makes this replica a member of the NATS queue group of `$share/{group}/{filter}` in
    /// `tenant`: each message on the filter's subjects, published on any replica, comes to one
    /// member of the queue group, which hands it to one of the group's members here. Until the
    /// returned token is cancelled (the last member here left) or the broker stops.
    pub fn join_group(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        group: &str,
        filter: &str,
    ) -> CancellationToken {
        let done = self.stop.child_token();
        let queue = queue_group(&tenant.name, group, filter);
        let (group, filter): (Arc<str>, Arc<str>) = (group.into(), filter.into());
        let subjects = filter_to_subjects(&tenant.name, &filter);
        let durable: Vec<String> = subjects.iter().map(|s| to_durable(s)).collect();
        // QoS 0 messages come in frames on the tenant's batch subject: each frame goes to one
        // member of the queue group, which takes the messages of it that match the filter.
        let batch = batch_subject(&tenant.name);
        for subject in subjects.into_iter().chain(durable).chain([batch.clone()]) {
            let link = self.clone();
            let weak = Arc::downgrade(tenant);
            let (done, queue, group, filter) =
                (done.clone(), queue.clone(), group.clone(), filter.clone());
            let name = tenant.name.clone();
            let framed = subject == batch;
            tokio::spawn(async move {
                let sub = match link.groups.queue_subscribe(subject, queue).await {
                    Ok(s) => s,
                    Err(e) => {
                        link.metrics.cluster_errors.inc();
                        warn!(tenant = %name, error = %e, "cluster: cannot join a shared group's queue group");
                        return;
                    }
                };
                let mut sub = match weak.upgrade() {
                    Some(tenant) => Received::start(&link, &tenant, sub, done),
                    None => return,
                };
                while let Some(msg) = sub.next().await {
                    let Some(tenant) = weak.upgrade() else { break };
                    if framed {
                        for_each_entry(
                            &link.metrics,
                            &name,
                            &msg.payload,
                            |e| starling_codec::topic::matches_levels(&filter, e.topic),
                            |message| {
                                tenant.deliver_to_group(Arc::new(message), &filter, &group);
                            },
                        );
                        // See `attach`: the members' connections write what a frame queued.
                        tokio::task::yield_now().await;
                        continue;
                    }
                    match decode(&msg, &name) {
                        Some(message) => {
                            tenant.deliver_to_group(Arc::new(message), &filter, &group);
                        }
                        None => {
                            link.metrics.cluster_errors.inc();
                        }
                    }
                }
            });
        }
        done
    }

    /// Subscribes to the messages the other replicas publish in `tenant` and routes them to its
    /// subscribers here, until the broker stops or the tenant is dropped.
    pub fn attach(self: &Arc<Self>, tenant: &Arc<Tenant>) {
        let link = self.clone();
        let weak = Arc::downgrade(tenant);
        let name = tenant.name.clone();
        let mut recheck = self.connected.clone();
        self.unready.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            // Counted in `unready` while its stream is not set up.
            let mut counted = true;
            // Set up now, and again after each reconnection (the servers may have lost it),
            // until the broker stops or the tenant is dropped.
            'tenant: while weak.strong_count() > 0 {
                recheck.borrow_and_update();
                let mut delay = Duration::from_millis(100);
                while weak.strong_count() > 0 {
                    match link.ensure_stream(&name).await {
                        Ok(()) => {
                            if std::mem::take(&mut counted) {
                                link.unready.fetch_sub(1, Ordering::AcqRel);
                            }
                            break;
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut counted, true) {
                                link.unready.fetch_add(1, Ordering::AcqRel);
                            }
                            link.streams.lock().remove(&*name);
                            link.metrics.cluster_errors.inc();
                            warn!(tenant = %name, error = %e, "cluster: cannot set up the tenant's JetStream stream; QoS 1 and 2 publications are refused until it is; retrying");
                            tokio::select! {
                                () = link.stop.cancelled() => break 'tenant,
                                () = tokio::time::sleep(delay) => {}
                            }
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                tokio::select! {
                    () = link.stop.cancelled() => break,
                    changed = recheck.changed() => if changed.is_err() { break },
                }
            }
            link.streams.lock().remove(&*name);
            if counted {
                link.unready.fetch_sub(1, Ordering::AcqRel);
            }
        });
        let link = self.clone();
        let weak = Arc::downgrade(tenant);
        let name = tenant.name.clone();
        tokio::spawn(async move {
            let subject = format!("{}.>", tenant_prefix(&name));
            let sub = loop {
                match link.client.subscribe(subject.clone()).await {
                    Ok(s) => break s,
                    Err(e) => {
                        warn!(tenant = %name, error = %e, "cluster: cannot subscribe; retrying");
                        tokio::select! {
                            () = link.stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            };
            let mut sub = match weak.upgrade() {
                Some(tenant) => Received::start(&link, &tenant, sub, link.stop.clone()),
                None => return,
            };
            let conn_subject = format!("{}.conn", tenant_prefix(&name));
            let alive_subject = super::liveness::heartbeat_subject(&name);
            let batch = batch_subject(&name);
            let mut scratch = Vec::new();
            loop {
                let Some(msg) = sub.next().await else { break };
                let Some(tenant) = weak.upgrade() else { break };
                if msg.subject.as_str() == batch {
                    for_each_entry(
                        &link.metrics,
                        &name,
                        &msg.payload,
                        |e| {
                            link.metrics.cluster_received.inc();
                            // Not decoded when nothing here wants it.
                            tenant.wants_from_replica(e.topic, e.retain)
                        },
                        |message| {
                            tenant.deliver_from_replica(Arc::new(message), &mut scratch);
                        },
                    );
                    // A frame queues up to 256 messages at once. Without this the task would go
                    // on with the frames NATS already handed over (up to tokio's budget of 128
                    // receptions, some 32,000 messages) before the connections it woke, which
                    // wait in this worker's slot no other worker takes from, write anything:
                    // past a session's queue bound the rest would be dropped though the
                    // subscriber keeps up (a quarter of a fan-in's messages arrived).
                    tokio::task::yield_now().await;
                    continue;
                }
                if msg.subject.as_str() == alive_subject {
                    link.liveness.heard_message(&msg);
                    continue;
                }
                let origin = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(ORIGIN))
                    .map(|v| v.as_str());
                if origin == Some(&*link.replica) {
                    continue;
                }
                if msg.subject.as_str() == conn_subject {
                    let at = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(CONNECTED_AT))
                        .and_then(|v| v.as_str().parse::<u64>().ok());
                    match (origin, at, std::str::from_utf8(&msg.payload)) {
                        (Some(origin), Some(at), Ok(client_id)) => {
                            tenant.connected_elsewhere(client_id, at, origin, &link.replica);
                        }
                        _ => {
                            link.metrics.cluster_errors.inc();
                            warn!(tenant = %name, "cluster: a malformed connection announcement was dropped");
                        }
                    }
                    continue;
                }
                // Not decoded when nothing here wants it (a malformed one is, to be counted).
                if let Ok((head, [])) = super::frame::split_publish(&msg.payload) {
                    if !tenant.wants_from_replica(head.topic, head.retain) {
                        link.metrics.cluster_received.inc();
                        continue;
                    }
                }
                match decode(&msg, &name) {
                    Some(message) => {
                        link.metrics.cluster_received.inc();
                        tenant.deliver_from_replica(Arc::new(message), &mut scratch);
                    }
                    None => {
                        link.metrics.cluster_errors.inc();
                        warn!(tenant = %name, subject = %msg.subject, "cluster: a malformed message from NATS was dropped");
                    }
                }
            }
        });
    }
}

/// What a replica takes off one NATS subscription of a tenant, queued for routing within a
/// bound in bytes (`[cluster] receive_queue_bytes`, shared by all the tenant's subscriptions,
/// [`Tenant::replica_backlog`]). A task reads the subscription as fast as NATS delivers, so
/// the NATS client's own queue (bounded in messages, not bytes) stays short and the server
/// never takes the replica for a slow consumer and cuts it off; it queues each message with a
/// copy of its payload, since the client's payloads are slices of its read buffer and would
/// keep that alive. While the replica falls behind by the bound, what arrives is dropped there,
/// counted in `starling_cluster_dropped_total` and logged (QoS 0 delivery allows it; persistent
/// sessions read their QoS 1/2 messages from JetStream, not from here).
pub(crate) struct Received {
    queue: mpsc::UnboundedReceiver<(async_nats::Message, usize)>,
    held: Arc<AtomicUsize>,
}

/// What a message from NATS weighs in a [`Received`] queue: its subject, reply, headers and
/// payload as they came, and what holding it costs besides.
fn received_weight(msg: &async_nats::Message) -> usize {
    msg.length + RECEIVED_OVERHEAD
}

/// The message's own struct, its header map's allocations and the queue's slot, roughly.
const RECEIVED_OVERHEAD: usize = 256;

impl Received {
    /// Starts reading `sub` for `tenant`, until `done`, the end of `sub` or the returned
    /// queue is dropped.
    fn start(
        link: &Arc<Link>,
        tenant: &Tenant,
        sub: async_nats::Subscriber,
        done: CancellationToken,
    ) -> Received {
        Self::reading(
            sub,
            tenant.replica_backlog.clone(),
            link.config.receive_queue_bytes,
            link.metrics.clone(),
            tenant.name.clone(),
            done,
        )
        .0
    }

    /// [`Received::start`] on any stream of messages, with the task that reads it.
    fn reading(
        mut sub: impl futures_util::Stream<Item = async_nats::Message> + Send + Unpin + 'static,
        held: Arc<AtomicUsize>,
        bound: usize,
        metrics: Arc<Metrics>,
        name: Arc<str>,
        done: CancellationToken,
    ) -> (Received, tokio::task::JoinHandle<()>) {
        let (tx, queue) = mpsc::unbounded_channel();
        let counter = held.clone();
        // Dropping the subscription unsubscribes.
        let reader = tokio::spawn(async move {
            let mut dropped = 0u64;
            loop {
                let msg = tokio::select! {
                    () = done.cancelled() => break,
                    () = tx.closed() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                let weight = received_weight(&msg);
                let waiting = counter.load(Ordering::Acquire);
                if waiting > 0 && waiting + weight > bound {
                    metrics.cluster_dropped.inc();
                    dropped += 1;
                    if dropped.is_power_of_two() {
                        warn!(
                            tenant = %name,
                            dropped,
                            bound,
                            "cluster: this replica has fallen behind the messages of the other replicas by cluster.receive_queue_bytes; what arrives is dropped until it catches up"
                        );
                    }
                    continue;
                }
                counter.fetch_add(weight, Ordering::AcqRel);
                let msg = async_nats::Message {
                    payload: Bytes::copy_from_slice(&msg.payload),
                    ..msg
                };
                if let Err(mpsc::error::SendError((_, weight))) = tx.send((msg, weight)) {
                    counter.fetch_sub(weight, Ordering::AcqRel);
                    break;
                }
            }
        });
        (Received { queue, held }, reader)
    }

    /// The next message, `None` once the subscription ended.
    async fn next(&mut self) -> Option<async_nats::Message> {
        let (msg, weight) = self.queue.recv().await?;
        self.held.fetch_sub(weight, Ordering::AcqRel);
        Some(msg)
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        // Nothing is queued after the close; what was is no longer held.
        self.queue.close();
        while let Ok((_, weight)) = self.queue.try_recv() {
            self.held.fetch_sub(weight, Ordering::AcqRel);
        }
    }
}

/// The frame of QoS 0 messages the send task is filling ([`super::frame`]).
#[derive(Debug, Default)]
struct Frame {
    subject: Option<async_nats::Subject>,
    bytes: BytesMut,
    entries: u64,
}

impl Frame {
    /// Adds `message` (of the tenant whose batch subject is `subject`, the frame's own if it
    /// has entries).
    fn push(&mut self, subject: async_nats::Subject, message: &Message) {
        if self.entries == 0 {
            self.bytes.clear();
            self.bytes.put_u8(super::frame::VERSION);
            self.subject = Some(subject);
        }
        // An expired message is left out.
        if super::frame::push_entry(&mut self.bytes, message) {
            self.entries += 1;
        }
    }

    /// Sends what the frame holds, if anything, and empties it.
    async fn send(&mut self, client: &Client, metrics: &Metrics) {
        let entries = std::mem::take(&mut self.entries);
        let Some(subject) = self.subject.take() else {
            return;
        };
        if entries == 0 {
            return;
        }
        let body = self.bytes.split().freeze();
        match client.publish(subject, body).await {
            Ok(()) => {
                metrics.cluster_sent.inc_by(entries);
            }
            Err(e) => {
                metrics.cluster_errors.inc_by(entries);
                warn!(error = %e, messages = entries, "cluster: messages were not sent to NATS");
            }
        }
    }
}

/// The options of a connection of replica `replica` to the NATS servers of `config`, named
/// `starling-broker <replica><suffix>`: its credentials and TLS, retrying forever. `connected`,
/// when given, is bumped on each (re)connection (the tenants' streams are then checked again).
async fn connect_options(
    config: &ClusterConfig,
    replica: &str,
    suffix: &str,
    connected: Option<Arc<tokio::sync::watch::Sender<u64>>>,
) -> anyhow::Result<ConnectOptions> {
    let events_replica: Arc<str> = format!("{replica}{suffix}").into();
    let mut options = ConnectOptions::new()
        .name(format!("starling-broker {replica}{suffix}"))
        .event_callback(move |event| {
            let replica = events_replica.clone();
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        // The streams are checked again: the servers may have lost them.
                        if let Some(connected) = connected {
                            connected.send_modify(|n| *n += 1);
                        }
                        info!(%replica, "cluster: connected to NATS");
                    }
                    async_nats::Event::Disconnected => warn!(
                        %replica,
                        "cluster: NATS connection lost; QoS 1 and 2 publications are refused and /readyz fails until it returns"
                    ),
                    other => warn!(%replica, event = %other, "cluster: NATS"),
                }
            }
        })
        .retry_on_initial_connect()
        .max_reconnects(None);
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read cluster.creds {}: {e}", creds.display()))?;
    }
    if let Some(prefix) = &config.inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.nats.iter().any(|u| u.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Hands each message of `frame` (from the tenant `tenant`'s batch subject) whose entry `wanted`
/// accepts to `deliver`, in order; a malformed frame is counted and logged, and what follows
/// the malformed entry is lost with it.
fn for_each_entry(
    metrics: &Metrics,
    tenant: &str,
    frame: &[u8],
    mut wanted: impl FnMut(&super::frame::Entry<'_>) -> bool,
    mut deliver: impl FnMut(Message),
) {
    let result = super::frame::entries(frame).and_then(|entries| {
        for entry in entries {
            let entry = entry?;
            if wanted(&entry) {
                deliver(entry.message()?);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        metrics.cluster_errors.inc();
        warn!(tenant, error = %e, "cluster: a malformed frame of messages from NATS was dropped");
    }
}

/// What a failed JetStream publication means for the publisher.
fn publish_failure(e: &jetstream::context::PublishError) -> Failure {
    match e.kind() {
        PublishErrorKind::StreamNotFound => Failure::NoStream,
        PublishErrorKind::Other => {
            let code = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|e| e.error_code());
            match code {
                Some(
                    jetstream::ErrorCode::INSUFFICIENT_RESOURCES
                    | jetstream::ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
                ) => Failure::ReplicasFull,
                _ => Failure::NotReplicated,
            }
        }
        _ => Failure::NotReplicated,
    }
}

/// Measures the round trip to NATS (a message from the replica's connection, which the server
/// does not echo, to an inbox of its shared groups' connection) and checks that JetStream
/// answers, every [`PROBE_EVERY`], until the broker stops.
async fn probe(link: std::sync::Weak<Link>, stop: CancellationToken) {
    let mut echo: Option<(async_nats::Subject, async_nats::Subscriber)> = None;
    loop {
        if echo.is_none() {
            // Subscribed a round before it is used: by then the servers know of it.
            let Some(link) = link.upgrade() else { return };
            let inbox = link.groups.new_inbox();
            if let Ok(sub) = link.groups.subscribe(inbox.clone()).await {
                echo = Some((inbox.into(), sub));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
        let Some(link) = link.upgrade() else { return };
        if !link.is_connected() {
            continue;
        }
        if let Some((inbox, sub)) = echo.as_mut() {
            let started = tokio::time::Instant::now();
            let sent = link
                .client
                .publish(inbox.clone(), Bytes::new())
                .await
                .is_ok()
                && link.client.flush().await.is_ok();
            let back = sent
                && matches!(
                    tokio::time::timeout(PROBE_EVERY, sub.next()).await,
                    Ok(Some(_))
                );
            if back {
                link.metrics
                    .cluster_nats_rtt
                    .set(started.elapsed().as_secs_f64());
            } else {
                // Not answered in time (a late answer would be read as the next one's).
                echo = None;
            }
        }
        // The account's JetStream information: answered by JetStream, or an error saying why not.
        let answer = tokio::time::timeout(
            ACK_TIMEOUT,
            link.client.request("$JS.API.INFO", Bytes::new()),
        )
        .await;
        let answer = match answer {
            Ok(Ok(m)) => match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                Ok(v) if v.get("error").is_none() => Ok(()),
                Ok(v) => Err(v["error"].to_string()),
                Err(e) => Err(e.to_string()),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        };
        match answer {
            Ok(()) => link.jetstream_succeeded(),
            Err(e) => {
                link.metrics
                    .jetstream_failed(crate::metrics::JetStreamOp::account);
                if link.jetstream_ok.load(Ordering::Acquire) {
                    warn!(error = %e, "cluster: JetStream does not answer");
                }
                link.jetstream_failed();
            }
        }
    }
}

/// The PUBLISH packet that carries `message`; `None` when it has expired.
fn encode(message: &Message) -> Option<Bytes> {
    let packet = Packet::Publish(super::frame::carried(message, message.qos)?);
    let mut out = BytesMut::with_capacity(packet.encoded_len(ProtocolVersion::V5));
    packet.encode(ProtocolVersion::V5, &mut out).ok()?;
    Some(out.freeze())
}

/// The message carried by `msg`, checked against its subject (which must be of `tenant`).
pub(crate) fn decode(msg: &async_nats::Message, tenant: &str) -> Option<Message> {
    let (t, topic) = subject_to_topic(msg.subject.as_str())?;
    if t != tenant {
        return None;
    }
    let publisher = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(PUBLISHER))
        .and_then(|v| decode_token(v.as_str()))
        .map(Arc::<str>::from);
    super::frame::uncarried(&msg.payload, &topic, publisher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> async_nats::Message {
        let payload = Bytes::from(vec![b'x'; 1000]);
        let subject = async_nats::Subject::from(format!("starling.t.batch.{n}"));
        async_nats::Message {
            length: subject.len() + payload.len(),
            subject,
            reply: None,
            payload,
            headers: None,
            status: None,
            description: None,
        }
    }

    proptest::proptest! {
        /// Stream names are valid, one per tenant, and no tenant's stream is another tenant's
        /// sessions stream (`a_SESSIONS` once was `a`'s).
        #[test]
        fn every_tenant_has_its_own_streams(a in "\\PC{1,20}", b in "[a-zA-Z0-9_-]{0,12}") {
            let b = format!("{a}{b}");
            for name in [stream_name(&a), crate::cluster::sessions::bucket_name(&a)] {
                proptest::prop_assert!(name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            }
            if a != b {
                let of_a = [stream_name(&a), crate::cluster::sessions::bucket_name(&a)];
                for name in [stream_name(&b), crate::cluster::sessions::bucket_name(&b)] {
                    proptest::prop_assert!(!of_a.contains(&name), "{a:?} and {b:?} share {name}");
                }
            }
        }
    }

    #[test]
    fn a_tenant_named_like_another_tenants_sessions_stream_gets_its_own_stream() {
        assert_eq!(stream_name("a"), "STARLING_a");
        assert_eq!(
            crate::cluster::sessions::bucket_name("a"),
            "STARLING_a_SESSIONS"
        );
        assert_ne!(stream_name("a_SESSIONS"), "STARLING_a_SESSIONS");
        assert_eq!(stream_name("a_SESSIONS"), "STARLING_X615f53455353494f4e53");
    }

    /// A replica that does not route what it receives holds the tenant's bound and drops the
    /// rest, counted; once it routes them it holds nothing, and what it got is the first
    /// messages, in order.
    #[tokio::test]
    async fn what_a_replica_has_not_routed_stays_within_its_bound_in_bytes() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let weight = received_weight(&message(10));
            let held = Arc::new(AtomicUsize::new(0));
            let metrics = Arc::new(Metrics::default());
            let (mut received, reader) = Received::reading(
                futures_util::stream::iter((10..110).map(message)),
                held.clone(),
                10 * weight,
                metrics.clone(),
                "t".into(),
                CancellationToken::new(),
            );
            reader.await.expect("the reader ends with its stream");
            assert_eq!(held.load(Ordering::Acquire), 10 * weight);
            assert_eq!(metrics.cluster_dropped.get(), 90);
            for n in 10..20 {
                let m = received.next().await.expect("a queued message");
                assert_eq!(m.subject.as_str(), format!("starling.t.batch.{n}"));
                assert_eq!(m.payload.len(), 1000);
            }
            assert!(received.next().await.is_none());
            assert_eq!(held.load(Ordering::Acquire), 0);
        })
        .await
        .expect("within 10 s");
    }

    /// Room made by routing is taken again; a message larger than the bound is taken when
    /// nothing waits; dropping the queue gives back what it held.
    #[tokio::test]
    async fn room_comes_back_as_the_replica_routes_and_when_the_queue_goes() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let weight = received_weight(&message(10));
            let held = Arc::new(AtomicUsize::new(0));
            let metrics = Arc::new(Metrics::default());
            let (tx, rx) = mpsc::unbounded_channel();
            let (mut received, _reader) = Received::reading(
                tokio_stream_from(rx),
                held.clone(),
                2 * weight,
                metrics.clone(),
                "t".into(),
                CancellationToken::new(),
            );
            // Waits, without a timer, until the reader has taken `queued` and dropped `dropped`.
            let settle = |queued: usize, dropped: u64| {
                let (held, metrics) = (held.clone(), metrics.clone());
                async move {
                    while held.load(Ordering::Acquire) != queued * weight
                        || metrics.cluster_dropped.get() != dropped
                    {
                        tokio::task::yield_now().await;
                    }
                }
            };
            for n in 10..13 {
                tx.send(message(n)).unwrap();
            }
            settle(2, 1).await;
            assert_eq!(
                received.next().await.unwrap().subject.as_str(),
                "starling.t.batch.10"
            );
            tx.send(message(13)).unwrap();
            settle(2, 1).await;
            assert_eq!(
                received.next().await.unwrap().subject.as_str(),
                "starling.t.batch.11"
            );
            assert_eq!(
                received.next().await.unwrap().subject.as_str(),
                "starling.t.batch.13"
            );
            assert_eq!(held.load(Ordering::Acquire), 0);

            let mut big = message(14);
            big.payload = Bytes::from(vec![b'y'; 10 * weight]);
            big.length = big.subject.len() + big.payload.len();
            let big_weight = received_weight(&big);
            tx.send(big).unwrap();
            tx.send(message(15)).unwrap();
            while metrics.cluster_dropped.get() != 2 {
                tokio::task::yield_now().await;
            }
            assert_eq!(held.load(Ordering::Acquire), big_weight);
            drop(received);
            assert_eq!(held.load(Ordering::Acquire), 0);
        })
        .await
        .expect("within 10 s");
    }

    fn tokio_stream_from(
        mut rx: mpsc::UnboundedReceiver<async_nats::Message>,
    ) -> impl futures_util::Stream<Item = async_nats::Message> + Send + Unpin + 'static {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
