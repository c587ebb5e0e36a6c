//! Persistent sessions of a broker with replicas (`[cluster]`), kept in JetStream so that a
//! client resumes its session on any replica.
//!
//! What a session is (its expiry, its subscriptions with their options and identifiers, a will
//! waiting for its delay, the credential it was let in with) is one record in the tenant's
//! sessions stream ([`bucket_name`]), a stream used as a key-value store (what a NATS KV bucket
//! is, built on the plain stream API that every JetStream server takes): the record of a client
//! id is the last message on `starling-sessions.<tenant>.<hex of the client id>`
//! ([`session_subject`]; one kept per subject), written in the order the session changes by one
//! task per tenant, removed by purging its subject. A replica that accepts a connection resuming a
//! session it does not hold reads the record ([`ClusterSessions::load`]) and carries on from
//! it; the replica that held it lets it go when it hears of the new connection (the takeover
//! announcement), without ending it ([`crate::session::lifecycle::SessionEnd::HandedOver`]).
//!
//! The QoS 1/2 messages of a persistent session do not come through the routing between
//! replicas: each of its (non-shared) subscriptions has durable JetStream consumers on the
//! tenant's stream ([`consumer_name`], one per subject of the filter), which the replica
//! holding the session reads ([`feed`]) into the session's outbox. A message is acknowledged
//! to JetStream ([`StreamAck`]) once the client has it (PUBACK, PUBREC, or sent at QoS 0), and
//! given back (NAK) when the session lets go of it otherwise (a full outbox, a hand-over), so
//! a session that moves, or whose replica dies, gets from its consumers every message it had
//! not acknowledged (after [`ACK_WAIT`] when its replica died). Routing skips QoS 1/2 messages
//! for these sessions ([`crate::tenant::Tenant`]), so none arrives twice by the two ways.
//!
//! The record also names the replica incarnation holding the session and, while a connection
//! serves it, the connection's will: when that replica dies ([`super::liveness`]), one survivor
//! takes the record ([`ClusterSessions::sweep`]), publishes the will after its delay unless the
//! client came back first, and ends the session at its expiry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use starling_codec::QoS;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::link::{Link, stream_name};
use super::subject::{filter_to_subjects, to_durable};
use crate::message::{Delivery, Message};
use crate::session::{Inflight, Session, SessionStore, SubscriptionRecord};
use crate::storage::record;
use crate::tenant::Tenant;

/// How long JetStream waits for the acknowledgement of a message a session holds before it
/// gives it to another reader; the replica holding it extends that every [`PROGRESS_EVERY`]
/// while it lives, so this is how long a session waits for what a dead replica held.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// A message given back is offered again after this long.
const NAK_DELAY: Duration = Duration::from_secs(1);
/// Changes of sessions waiting to be written, at most.
const JOBS: usize = 65_536;
/// How long a resuming connection waits for the session store to answer.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The stream of `tenant`'s persistent sessions: `<its message stream>_SESSIONS`.
pub fn bucket_name(tenant: &str) -> String {
    format!("{}_SESSIONS", stream_name(tenant))
}

/// The first token of the subjects of session records (outside `starling.`, so no replica's
/// subscription to a tenant's messages sees them).
pub const SESSIONS_ROOT: &str = "starling-sessions";

/// The subject of `client_id`'s record in `tenant`: the hex of the client id under the
/// tenant's token.
pub fn session_subject(tenant: &str, client_id: &str) -> String {
    let mut s = String::from(SESSIONS_ROOT);
    s.push('.');
    super::subject::push_token(&mut s, tenant);
    s.push('.');
    s.push_str(&hex::encode(client_id.as_bytes()));
    s
}

/// The client id of the record on `subject` ([`session_subject`]).
fn client_id_of(subject: &str) -> Option<Arc<str>> {
    let hexed = subject.rsplit('.').next()?;
    let bytes = hex::decode(hexed).ok()?;
    String::from_utf8(bytes).ok().map(Arc::from)
}

/// The durable consumer of `client_id`'s subscription to `filter`, for the filter's `index`th
/// subject: `s` and 40 hex digits of a SHA-256 of the three (a consumer name may not hold
/// `.`, `*`, `>` or whitespace, and has a bounded length).
pub fn consumer_name(client_id: &str, filter: &str, index: usize) -> String {
    let mut h = Sha256::new();
    h.update(client_id.as_bytes());
    h.update([0]);
    h.update(filter.as_bytes());
    h.update([0]);
    h.update(index.to_be_bytes());
    let digest = h.finalize();
    format!("s{}", hex::encode(&digest[..20]))
}

// === impl StreamAck ===

/// Which messages of one consumer the replica holds (pulled, not yet acknowledged or given
/// back), by stream sequence: their acknowledgement deadline is extended while they are.
type Held = Arc<Mutex<HashMap<u64, Weak<AckInner>>>>;

/// The acknowledgement of a message a session read from its consumer: [`StreamAck::ack`]
/// once the session is done with it; dropped without that, the message is given back (NAK)
/// for JetStream to offer again.
#[derive(Clone)]
pub struct StreamAck(Arc<AckInner>);

struct AckInner {
    client: Client,
    reply: Subject,
    seq: u64,
    done: AtomicBool,
    held: Weak<Mutex<HashMap<u64, Weak<AckInner>>>>,
}

impl fmt::Debug for StreamAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamAck({})", self.0.seq)
    }
}

impl StreamAck {
    /// The client has the message (or it is dropped for good): JetStream forgets it for this
    /// session. Once; later calls do nothing.
    pub fn ack(&self) {
        self.0.finish(Bytes::from_static(b"+ACK"));
    }

    /// The message's sequence number in the tenant's stream.
    pub fn seq(&self) -> u64 {
        self.0.seq
    }

    /// [`StreamAck::ack`], waiting for JetStream to confirm it took the acknowledgement: from
    /// then on the consumer never offers the message again.
    async fn ack_confirmed(&self) -> bool {
        let inner = &self.0;
        if inner.done.swap(true, Ordering::AcqRel) {
            return true;
        }
        if let Some(held) = inner.held.upgrade() {
            held.lock().remove(&inner.seq);
        }
        let request = inner
            .client
            .request(inner.reply.clone(), Bytes::from_static(b"+ACK"));
        matches!(tokio::time::timeout(LOAD_TIMEOUT, request).await, Ok(Ok(_)))
    }
}

impl AckInner {
    fn finish(&self, body: Bytes) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(held) = self.held.upgrade() {
            held.lock().remove(&self.seq);
        }
        send(&self.client, &self.reply, body);
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Acquire) {
            let nak = format!("-NAK {{\"delay\": {}}}", NAK_DELAY.as_nanos());
            self.finish(Bytes::from(nak));
        }
    }
}

fn send(client: &Client, reply: &Subject, body: Bytes) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let (client, reply) = (client.clone(), reply.clone());
        rt.spawn(async move {
            let _ = client.publish(reply, body).await;
        });
    }
}

// === impl ClusterSessions ===

/// A session's record in the bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    expiry: u32,
    /// When it ends while offline (Unix ms); `None` while connected or without end.
    #[serde(default)]
    ends_at: Option<u64>,
    /// Subscriptions by filter as the client wrote it: the hex of their stored form.
    #[serde(default)]
    subs: BTreeMap<String, String>,
    /// A will waiting for its delay: the hex of its stored form (with when it is due).
    #[serde(default)]
    will: Option<String>,
    /// The credential the session was let in with: the hex of its stored form.
    #[serde(default)]
    credential: Option<String>,
    /// Packet ids of QoS 2 deliveries the client has received (PUBREC) and not completed,
    /// with the stream sequence of their message (0: not from a consumer): PUBREL is sent for
    /// them again wherever the session goes on, and their messages are not sent again.
    #[serde(default)]
    rel: BTreeMap<u16, u64>,
    /// Packet ids of QoS 2 PUBLISHes sent and not yet answered with PUBREC: where the session
    /// goes on, they are not used again (the client may hold a message under them, awaiting a
    /// PUBREL that no replica can send; the message comes again under another id).
    #[serde(default)]
    sent: std::collections::BTreeSet<u16>,
    /// How many times the session moved to another replica: each incarnation hands out the
    /// other half of the packet ids.
    #[serde(default)]
    epoch: u32,
    /// Packet ids of QoS 2 messages received from the client and not yet released (PUBREL):
    /// a resent PUBLISH under one of them is answered, not routed again, wherever the session
    /// goes on.
    #[serde(default)]
    receipts: std::collections::BTreeSet<u16>,
    /// The replica incarnation that holds the session, serving its connection or keeping it
    /// offline with its timers ([`super::liveness::Liveness::me`]); when it dies, another
    /// replica takes the session ([`ClusterSessions::sweep`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
    /// When the connection serving the session was accepted (Unix ms), while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connected_at: Option<u64>,
    /// The will of that connection (the hex of its stored form), published if its replica
    /// dies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    live_will: Option<String>,
    /// Its Will Delay Interval, seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    will_delay: u32,
    /// The will of a connection the session had on a replica that had not answered when the
    /// session moved here: published if that replica was dead by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    left: Option<LeftWill>,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The will of a connection a session had on a replica that may have died with it, kept until
/// it is known whether that replica was alive when the session moved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeftWill {
    /// The incarnation that served that connection.
    holder: String,
    /// The will: the hex of its stored form.
    will: String,
    /// When the session moved (Unix ms): the will is published if `holder` was last heard
    /// before.
    at: u64,
}

/// A session read back from the bucket.
#[derive(Debug)]
pub struct Loaded {
    /// Session Expiry Interval, seconds.
    pub expiry_secs: u32,
    /// Subscriptions by filter as the client wrote it.
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// A will waiting for its delay: when it is due (Unix ms), and the will.
    pub will: Option<(u64, Message)>,
    /// The credential it was let in with.
    pub credential: Option<crate::auth::Credential>,
    /// Packet ids of QoS 2 deliveries awaiting PUBCOMP (PUBREL sent).
    pub releases: Vec<u16>,
    /// The stream sequences of their messages.
    released_seqs: Vec<u64>,
    /// Packet ids not to use again (see [`Snapshot`]'s `sent`).
    pub reserved: Vec<u16>,
    /// The session's incarnation here: one more than where it was.
    pub epoch: u32,
    /// QoS 2 messages received from the client and not yet released.
    pub receipts: Vec<u16>,
    snapshot: Snapshot,
}

enum Job {
    Put(Arc<str>, Box<Snapshot>),
    /// The session ended (or is no longer kept): its consumers and record go.
    Remove(Arc<str>, Vec<String>),
    Subscribed(Arc<str>, String, SubscriptionRecord, SystemTime),
    Unsubscribed(Arc<str>, String),
    /// A session resumed here from its record: its consumers are read here.
    Resume(Arc<str>, Vec<(String, SubscriptionRecord)>),
    /// A Clean Start here for a session this replica did not hold: what is kept of it goes.
    Discard(Arc<str>),
    /// Done once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Acknowledged (and confirmed) once what was queued before is written; then the
    /// sender is told.
    Ack(
        StreamAck,
        tokio::sync::oneshot::Sender<Result<(), crate::storage::Failure>>,
    ),
}

/// The persistent sessions of one tenant in JetStream (see the module documentation).
pub struct ClusterSessions {
    link: Arc<Link>,
    tenant_name: Arc<str>,
    tenant: OnceLock<Weak<Tenant>>,
    /// What each session held here has written, to write whole records.
    mirror: Mutex<HashMap<Arc<str>, Snapshot>>,
    /// Sessions another replica took over: what they still change here is not written.
    handed: Mutex<HashSet<Arc<str>>>,
    /// The consumers read here: by consumer name, the session id and what stops the reading.
    feeders: Mutex<HashMap<String, (u64, CancellationToken)>>,
    /// The stream sequence of the message of a QoS 2 delivery whose PUBREC just came, until
    /// its PUBREL due is recorded.
    releasing: Mutex<HashMap<(Arc<str>, u16), u64>>,
    /// By client id, stream sequences of messages the client already has (their PUBREL was
    /// due where the session was before): skipped when their consumer offers them again.
    delivered: Mutex<HashMap<Arc<str>, HashSet<u64>>>,
    /// By client id, the stream sequence of the last record written here: removing the record
    /// removes only what is not newer (another replica may have written since).
    written_seq: Mutex<HashMap<Arc<str>, u64>>,
    jobs: mpsc::Sender<Job>,
    kv: watch::Receiver<Option<stream::Stream>>,
}

impl fmt::Debug for ClusterSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSessions")
            .field("tenant", &self.tenant_name)
            .finish_non_exhaustive()
    }
}

impl ClusterSessions {
    /// The sessions of `tenant`, written through `link`; the bucket is set up in the
    /// background (a resuming connection waits for it).
    pub fn start(link: &Arc<Link>, tenant: &Arc<Tenant>) -> Arc<ClusterSessions> {
        let (jobs, mut queue) = mpsc::channel(JOBS);
        let (kv_tx, kv) = watch::channel(None);
        let this = Arc::new(ClusterSessions {
            link: link.clone(),
            tenant_name: tenant.name.clone(),
            tenant: OnceLock::new(),
            mirror: Mutex::new(HashMap::new()),
            handed: Mutex::new(HashSet::new()),
            feeders: Mutex::new(HashMap::new()),
            releasing: Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
            written_seq: Mutex::new(HashMap::new()),
            jobs,
            kv,
        });
        let _ = this.tenant.set(Arc::downgrade(tenant));
        link.register_sessions(Arc::downgrade(&this));
        let me = Arc::downgrade(&this);
        let stop = link.stop_token().clone();
        // Not ready before the sessions stream is set up.
        link.loading_started();
        let loading = link.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            let store = loop {
                let Some(this) = me.upgrade() else {
                    loading.loading_done();
                    return;
                };
                match tokio::time::timeout(LOAD_TIMEOUT, this.ensure_bucket()).await {
                    Ok(Ok(store)) => break store,
                    Ok(Err(e)) => {
                        this.link.metrics().cluster_errors.inc();
                        warn!(tenant = %this.tenant_name, error = %e, "cluster: cannot set up the sessions stream; retrying");
                    }
                    Err(_) => {
                        this.link.metrics().cluster_errors.inc();
                        warn!(tenant = %this.tenant_name, "cluster: JetStream did not answer setting up the sessions stream; retrying");
                    }
                }
                drop(this);
                tokio::select! {
                    () = stop.cancelled() => {
                        loading.loading_done();
                        return;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            };
            loading.loading_done();
            let _ = kv_tx.send(Some(store.clone()));
            while let Some(job) = queue.recv().await {
                let Some(this) = me.upgrade() else { return };
                this.run(&store, job).await;
            }
        });
        this
    }

    async fn ensure_bucket(&self) -> Result<stream::Stream, String> {
        let js = self.link.jetstream();
        let mut all = session_subject(&self.tenant_name, "");
        all.push('*');
        let config = stream::Config {
            name: bucket_name(&self.tenant_name),
            description: Some("Starling: the tenant's persistent sessions".into()),
            subjects: vec![all],
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::New,
            max_bytes: i64::try_from(self.link.config().stream_max_bytes).unwrap_or(i64::MAX),
            storage: stream::StorageType::File,
            num_replicas: self.link.stream_replicas(),
            ..stream::Config::default()
        };
        js.create_or_update_stream(config)
            .await
            .map_err(|e| e.to_string())?;
        js.get_stream(bucket_name(&self.tenant_name))
            .await
            .map_err(|e| e.to_string())
    }

    fn queue(&self, job: Job) {
        if self.jobs.try_send(job).is_err() {
            self.link.metrics().cluster_errors.inc();
            warn!(tenant = %self.tenant_name, "cluster: the queue of session changes is full; a change was not kept in JetStream");
        }
    }

    fn is_handed(&self, client_id: &str) -> bool {
        self.handed.lock().contains(client_id)
    }

    /// Changes the mirrored record of `client_id` and queues it to be written.
    fn change(&self, client_id: &str, f: impl FnOnce(&mut Snapshot)) {
        if self.is_handed(client_id) {
            return;
        }
        let mut mirror = self.mirror.lock();
        let snap = mirror.entry(client_id.into()).or_default();
        f(snap);
        let snap = snap.clone();
        drop(mirror);
        self.queue(Job::Put(client_id.into(), Box::new(snap)));
    }

    /// Reads the record of `client_id`: `Ok(None)` when it has none (or it has ended), `Err`
    /// when the bucket cannot be read now.
    pub async fn load(&self, client_id: &str) -> Result<Option<Loaded>, String> {
        let mut kv = self.kv.clone();
        let store = tokio::time::timeout(LOAD_TIMEOUT, kv.wait_for(|s| s.is_some()))
            .await
            .map_err(|_| "the sessions bucket is not set up".to_owned())?
            .map_err(|e| e.to_string())?
            .clone()
            .ok_or_else(|| "the sessions bucket is not set up".to_owned())?;
        let subject = session_subject(&self.tenant_name, client_id);
        let got = tokio::time::timeout(
            LOAD_TIMEOUT,
            store.get_last_raw_message_by_subject(&subject),
        )
        .await
        .map_err(|_| "the sessions stream did not answer".to_owned())?;
        let value = match got {
            Ok(m) => m.payload,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            Err(e) => return Err(e.to_string()),
        };
        if value.is_empty() {
            return Ok(None);
        }
        let snapshot: Snapshot =
            serde_json::from_slice(&value).map_err(|e| format!("a bad session record: {e}"))?;
        if snapshot.expiry == 0 {
            // The record of a connection whose session is not kept (for its will): nothing to
            // resume.
            return Ok(None);
        }
        if snapshot
            .ends_at
            .is_some_and(|at| at <= record::unix_ms_now())
        {
            // Ended while offline. The replica that holds it ends it (its will included), or,
            // if it is dead, the one that took it over; a record no replica holds goes now.
            if snapshot.holder.is_none() {
                let filters = snapshot.subs.keys().cloned().collect();
                self.queue(Job::Remove(client_id.into(), filters));
            }
            return Ok(None);
        }
        let mut subscriptions = Vec::new();
        for (filter, hexed) in &snapshot.subs {
            let r = hex::decode(hexed)
                .ok()
                .and_then(|b| record::decode_subscription(&b).ok());
            match r {
                Some(r) => subscriptions.push((filter.clone(), r)),
                None => {
                    warn!(tenant = %self.tenant_name, "cluster: a bad subscription in a session record was left out")
                }
            }
        }
        let will = snapshot
            .will
            .as_ref()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| record::decode_will(&b).ok())
            .and_then(|(due, m)| m.map(|m| (due, m)));
        let credential = snapshot
            .credential
            .as_ref()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| record::decode_credential(&b).ok());
        Ok(Some(Loaded {
            expiry_secs: snapshot.expiry,
            subscriptions,
            will,
            credential,
            releases: snapshot.rel.keys().copied().collect(),
            released_seqs: snapshot.rel.values().copied().filter(|&s| s != 0).collect(),
            reserved: snapshot.sent.iter().copied().collect(),
            epoch: snapshot.epoch.wrapping_add(1),
            receipts: snapshot.receipts.iter().copied().collect(),
            snapshot,
        }))
    }

    /// A connection with `client_id` was accepted here: what its session changes is written
    /// again (after a hand-over to another replica and back).
    pub fn claim(&self, client_id: &str) {
        self.handed.lock().remove(client_id);
    }

    /// The session `loaded` was resumed here: its record is the base of what is written from
    /// now on, and its consumers are read here.
    pub fn adopt(self: &Arc<Self>, client_id: &str, loaded: &Loaded) {
        self.claim(client_id);
        if !loaded.released_seqs.is_empty() {
            self.delivered
                .lock()
                .entry(client_id.into())
                .or_default()
                .extend(loaded.released_seqs.iter().copied());
        }
        let mut snapshot = loaded.snapshot.clone();
        snapshot.epoch = loaded.epoch;
        // [MQTT-3.1.3-9] the connection cancels a will waiting for its delay.
        snapshot.will = None;
        snapshot.ends_at = None;
        // The connection it had elsewhere: its replica closes it and publishes its will, if
        // alive; if it died with it, the will of a connection closed without DISCONNECT is due
        // at once when it has no delay (or the session none) [MQTT-3.1.2-8], and is left here
        // until it is known whether that replica was alive now (`resolve_left`). A delayed
        // one is cancelled by this connection.
        let me = self.link.liveness().me().to_owned();
        let elsewhere = snapshot.holder.take().filter(|h| *h != me);
        let live_will = snapshot.live_will.take();
        let at_once = snapshot.expiry == 0 || snapshot.will_delay == 0;
        if let (Some(holder), Some(will), true, Some(_)) =
            (elsewhere, live_will, at_once, snapshot.connected_at)
        {
            snapshot.left = Some(LeftWill {
                holder,
                will,
                at: record::unix_ms_now(),
            });
        }
        let left = snapshot.left.is_some();
        snapshot.connected_at = None;
        snapshot.holder = Some(me);
        self.mirror
            .lock()
            .insert(client_id.into(), snapshot.clone());
        self.queue(Job::Put(client_id.into(), Box::new(snapshot)));
        self.queue(Job::Resume(client_id.into(), loaded.subscriptions.clone()));
        if left {
            let (me, client_id): (_, Arc<str>) = (self.clone(), client_id.into());
            tokio::spawn(async move { me.resolve_left(client_id).await });
        }
    }

    /// A session `client_id` held here is taken over by another replica: nothing it changes
    /// here any more is written, and its consumers are no longer read here.
    pub fn hand_over(&self, client_id: &str) {
        self.handed.lock().insert(client_id.into());
        self.mirror.lock().remove(client_id);
    }

    /// Says when every change queued so far is written (or could not be): a QoS 2 PUBREC
    /// or PUBCOMP waits for the record of the receipt it answers.
    pub fn written(&self) -> tokio::sync::oneshot::Receiver<Result<(), crate::storage::Failure>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.jobs.try_send(Job::Flush(done)).is_err() {
            let _ = tx.send(Err(crate::storage::Failure::NotReplicated));
            return rx;
        }
        tokio::spawn(async move {
            let _ = tx.send(
                wait.await
                    .map_err(|_| crate::storage::Failure::NotReplicated),
            );
        });
        rx
    }

    /// Waits (at most [`LOAD_TIMEOUT`]) until every change queued so far is written: at
    /// shutdown, so that what the sessions did last is what the next replica reads.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(LOAD_TIMEOUT, rx).await;
        }
    }

    /// The client sent PUBREC for the QoS 2 delivery `packet_id`, whose message is `ack`'s:
    /// the stream sequence goes with the record of its PUBREL due, which the in-flight entry
    /// becoming PUBREL writes (call this first), so wherever the session goes on the message
    /// is not sent again.
    pub fn releasing(&self, client_id: &str, packet_id: u16, ack: &StreamAck) {
        self.releasing
            .lock()
            .insert((client_id.into(), packet_id), ack.seq());
    }

    /// Acknowledges `ack` to JetStream once what is queued before it (the record of the PUBREL
    /// due) is written, and confirms it; the receiver says when: PUBREL waits for it, so once
    /// the client has released the message its consumer never offers it again.
    pub fn released_after_write(
        &self,
        ack: StreamAck,
    ) -> tokio::sync::oneshot::Receiver<Result<(), crate::storage::Failure>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(
            mpsc::error::TrySendError::Full(Job::Ack(a, tx))
            | mpsc::error::TrySendError::Closed(Job::Ack(a, tx)),
        ) = self.jobs.try_send(Job::Ack(ack, tx))
        {
            // No room to wait: acknowledged now.
            a.ack();
            let _ = tx.send(Ok(()));
        }
        rx
    }

    /// A Clean Start for `client_id` on a replica that did not hold its session: the session
    /// kept in JetStream, if any, ends (before what the new session writes: one queue).
    pub fn discard(&self, client_id: &str) {
        self.claim(client_id);
        self.queue(Job::Discard(client_id.into()));
    }

    /// The tenant's name.
    pub fn tenant_name(&self) -> &str {
        &self.tenant_name
    }

    /// A connection for `client_id` was accepted here (`persistent`: its session is kept), with
    /// `will` and its Will Delay Interval: the record says this replica serves it and carries the
    /// will, so that if this replica dies another one publishes the will and takes the session.
    /// A connection whose session is not kept has a record only for its will.
    pub fn connected(&self, client_id: &str, persistent: bool, will: Option<(&Message, u32)>) {
        if !persistent && will.is_none() {
            return;
        }
        let live = will.map(|(m, _)| hex::encode(record::encode_will(m, 0)));
        let delay = will.map_or(0, |(_, d)| d);
        let me = self.link.liveness().me().to_owned();
        let now = record::unix_ms_now();
        self.change(client_id, |s| {
            s.holder = Some(me);
            s.connected_at = Some(now);
            s.live_will = live;
            s.will_delay = delay;
            // [MQTT-3.1.3-9] the connection cancels a will waiting for its delay.
            s.will = None;
            s.ends_at = None;
        });
    }

    /// The connection serving `client_id` here ended (before what its end makes of the session
    /// and the will is written): the will is this replica's to publish, schedule or discard, no
    /// longer the record's. The record of a session that is not kept goes.
    pub fn disconnected(&self, client_id: &str) {
        if self.is_handed(client_id) {
            return;
        }
        let mut mirror = self.mirror.lock();
        let Some(snap) = mirror.get_mut(client_id) else {
            return;
        };
        if snap.expiry == 0 {
            let snap = mirror.remove(client_id).unwrap_or_default();
            drop(mirror);
            self.queue(Job::Remove(
                client_id.into(),
                snap.subs.into_keys().collect(),
            ));
            return;
        }
        snap.connected_at = None;
        snap.live_will = None;
        snap.will_delay = 0;
        let snap = snap.clone();
        drop(mirror);
        self.queue(Job::Put(client_id.into(), Box::new(snap)));
    }

    /// Decides the will a session that moved here left with a replica that had not answered
    /// ([`LeftWill`]), once that replica's fate is known: dead since before the move, the will is
    /// published here; alive then, that replica published it.
    async fn resolve_left(self: Arc<Self>, client_id: Arc<str>) {
        let liveness = self.link.liveness().clone();
        let stop = self.link.stop_token().clone();
        loop {
            let left = self
                .mirror
                .lock()
                .get(&client_id)
                .and_then(|s| s.left.clone());
            let Some(left) = left else { return };
            if let Some(alive) = liveness.alive_after(&left.holder, left.at) {
                if !alive {
                    self.publish_will_hex(&client_id, &left.will);
                }
                self.clear_left(&client_id, &left);
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(liveness.period()) => {}
            }
        }
    }

    fn clear_left(&self, client_id: &str, left: &LeftWill) {
        let has = self
            .mirror
            .lock()
            .get(client_id)
            .is_some_and(|s| s.left.as_ref() == Some(left));
        if has {
            self.change(client_id, |s| s.left = None);
        }
    }

    /// Publishes the will of `client_id` stored as `hexed`, unless it has expired.
    fn publish_will_hex(&self, client_id: &str, hexed: &str) {
        let will = hex::decode(hexed)
            .ok()
            .and_then(|b| record::decode_will(&b).ok())
            .and_then(|(_, m)| m);
        let Some(will) = will else { return };
        if let Some(tenant) = self.tenant.get().and_then(Weak::upgrade) {
            info!(tenant = %self.tenant_name, client_id, "will published (its connection was lost with its replica)");
            crate::session::lifecycle::publish_lost_will(&tenant, Arc::new(will));
        }
    }

    /// Reads every session record of the tenant and takes over those whose holder is dead
    /// ([`super::liveness`]): at start once the other replicas are known, and whenever one dies.
    pub async fn sweep(self: &Arc<Self>) {
        let store = self.kv.borrow().clone();
        let Some(store) = store else { return };
        let orphans = match tokio::time::timeout(4 * LOAD_TIMEOUT, self.orphans(&store)).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                self.link.metrics().cluster_errors.inc();
                warn!(tenant = %self.tenant_name, error = %e, "cluster: the session records could not be read for the replicas that died");
                return;
            }
            Err(_) => {
                self.link.metrics().cluster_errors.inc();
                warn!(tenant = %self.tenant_name, "cluster: reading the session records for the replicas that died took too long");
                return;
            }
        };
        for (client_id, seq, snapshot, died) in orphans {
            self.take(client_id, seq, snapshot, died).await;
        }
    }

    /// The records whose holder is dead: client id, stream sequence, record, and when the
    /// holder died (Unix ms).
    async fn orphans(
        &self,
        store: &stream::Stream,
    ) -> Result<Vec<(Arc<str>, u64, Snapshot, u64)>, String> {
        let liveness = self.link.liveness();
        let mut all = session_subject(&self.tenant_name, "");
        all.push('*');
        let consumer = store
            .create_consumer(consumer::pull::Config {
                filter_subject: all,
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                description: Some("Starling: the session records of replicas that died".into()),
                ..consumer::pull::Config::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let name = consumer.cached_info().name.clone();
        let mut left = consumer.cached_info().num_pending;
        let mut found = Vec::new();
        while left > 0 {
            let mut batch = consumer
                .fetch()
                .max_messages(256)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut got = 0;
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| e.to_string())?;
                got += 1;
                let Ok(info) = m.info() else { continue };
                let seq = info.stream_sequence;
                left = info.pending;
                if m.payload.is_empty() {
                    continue;
                }
                let Some(client_id) = client_id_of(m.subject.as_str()) else {
                    continue;
                };
                let Ok(snapshot) = serde_json::from_slice::<Snapshot>(&m.payload) else {
                    continue;
                };
                let died = match snapshot.holder.as_deref().map(|h| liveness.fate(h)) {
                    Some(super::liveness::Fate::Dead(at)) => at,
                    // Written before records named their holder: nobody holds it now.
                    None => record::unix_ms_now(),
                    Some(_) => continue,
                };
                found.push((client_id, seq, snapshot, died));
            }
            if got == 0 {
                break;
            }
        }
        let _ = store.delete_consumer(&name).await;
        Ok(found)
    }

    /// Takes over `client_id`'s record (last written at `seq`) from a holder that died at `died`
    /// (Unix ms): its connection, if it had one, was lost then, so its will is due after its
    /// delay (at once without a session expiry) and its session ends at its expiry from then
    /// [MQTT-3.1.2-8]; what is due now is done (the will published, the session ended), the rest
    /// at its time ([`ClusterSessions::recheck`]). The record is written first, on the condition
    /// that it is still the one read (`Nats-Expected-Last-Subject-Sequence`): of two replicas
    /// taking it at once, or of a replica and a client resuming the session, one wins, and only
    /// the winner publishes.
    fn take(
        self: &Arc<Self>,
        client_id: Arc<str>,
        seq: u64,
        mut snap: Snapshot,
        died: u64,
    ) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let now = record::unix_ms_now();
            let mut publish = Vec::new();
            if snap.connected_at.take().is_some() {
                if let Some(hexed) = snap.live_will.take() {
                    let delay = if snap.expiry == 0 {
                        0
                    } else {
                        snap.will_delay.min(snap.expiry)
                    };
                    let due = died.saturating_add(u64::from(delay) * 1000);
                    snap.will = hex::decode(&hexed)
                        .ok()
                        .and_then(|b| record::decode_will(&b).ok())
                        .and_then(|(_, m)| m)
                        .map(|m| hex::encode(record::encode_will(&m, due)));
                }
                snap.ends_at = match snap.expiry {
                    0 => Some(died),
                    u32::MAX => None,
                    e => Some(died.saturating_add(u64::from(e) * 1000)),
                };
            }
            snap.live_will = None;
            snap.will_delay = 0;
            // A will the session left with a replica that died before the session moved.
            if let Some(left) = snap.left.clone() {
                if let Some(alive) = self.link.liveness().alive_after(&left.holder, left.at) {
                    if !alive {
                        publish.push(left.will);
                    }
                    snap.left = None;
                }
            }
            let ends = snap.ends_at.is_some_and(|at| at <= now);
            let will_due = snap.will.as_ref().and_then(|h| {
                let (due, _) = hex::decode(h)
                    .ok()
                    .and_then(|b| record::decode_will(&b).ok())?;
                Some(due)
            });
            if let Some(due) = will_due {
                // Due, or the session ends first [MQTT-3.1.2-8].
                if ends || due <= now {
                    publish.extend(snap.will.take());
                }
            }
            snap.holder = Some(self.link.liveness().me().to_owned());
            let body = if ends {
                Bytes::new()
            } else {
                Bytes::from(serde_json::to_vec(&snap).unwrap_or_default())
            };
            let Some(written) = self.write_if(&client_id, seq, body).await else {
                return;
            };
            for will in &publish {
                self.publish_will_hex(&client_id, will);
            }
            if ends {
                // Its consumers go, and the record (what was written last by this replica).
                for filter in snap.subs.keys() {
                    self.drop_consumers(&client_id, filter).await;
                }
                let store = self.kv.borrow().clone();
                if let Some(store) = store {
                    let subject = session_subject(&self.tenant_name, &client_id);
                    let _ = store.purge().filter(subject).sequence(written + 1).await;
                }
                info!(tenant = %self.tenant_name, client_id = %client_id, "session ended (its replica died)");
                return;
            }
            let next = [
                snap.ends_at,
                will_due.filter(|_| snap.will.is_some()),
                snap.left
                    .as_ref()
                    .map(|_| now + super::liveness::millis(self.link.liveness().period())),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(at) = next {
                let me = self.clone();
                let stop = self.link.stop_token().clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep_until(record::unix_ms_to_instant(at)) => {
                            me.recheck(client_id, written).await;
                        }
                    }
                });
            }
        })
    }

    /// At the time of something due in a record this replica took over ([`Self::take`]): done if
    /// the record is still the one written then (nobody resumed the session since).
    async fn recheck(self: &Arc<Self>, client_id: Arc<str>, written: u64) {
        let store = self.kv.borrow().clone();
        let Some(store) = store else {
            return;
        };
        let subject = session_subject(&self.tenant_name, &client_id);
        let Ok(Ok(m)) = tokio::time::timeout(
            LOAD_TIMEOUT,
            store.get_last_raw_message_by_subject(&subject),
        )
        .await
        else {
            return;
        };
        if m.sequence != written || m.payload.is_empty() {
            return;
        }
        let Ok(snap) = serde_json::from_slice::<Snapshot>(&m.payload) else {
            return;
        };
        let now = record::unix_ms_now();
        self.take(client_id, written, snap, now).await;
    }

    /// Writes `body` as `client_id`'s record if its last one is still at `seq`: the sequence of
    /// what was written, or `None` when another write came first (or JetStream failed).
    async fn write_if(&self, client_id: &str, seq: u64, body: Bytes) -> Option<u64> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            seq.to_string().as_str(),
        );
        let subject = session_subject(&self.tenant_name, client_id);
        let written = match self
            .link
            .jetstream()
            .publish_with_headers(subject, headers, body)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match written {
            Ok(ack) => Some(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => None,
            Err(e) => {
                self.link.metrics().cluster_errors.inc();
                warn!(tenant = %self.tenant_name, error = %e, "cluster: a dead replica's session record was not taken over");
                None
            }
        }
    }

    async fn run(self: &Arc<Self>, store: &stream::Stream, job: Job) {
        match job {
            Job::Put(client_id, snap) => {
                let body = serde_json::to_vec(&snap).unwrap_or_default();
                let subject = session_subject(&self.tenant_name, &client_id);
                let written = match self.link.jetstream().publish(subject, body.into()).await {
                    Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Ok(seq) = written {
                    self.written_seq.lock().insert(client_id, seq);
                } else if let Err(e) = written {
                    self.link.metrics().cluster_errors.inc();
                    warn!(tenant = %self.tenant_name, error = %e, "cluster: a session record was not written");
                }
            }
            Job::Remove(client_id, filters) => {
                self.delivered.lock().remove(&client_id);
                for filter in filters {
                    self.drop_consumers(&client_id, &filter).await;
                }
                let subject = session_subject(&self.tenant_name, &client_id);
                // What this replica wrote last, and older: not a record another replica wrote
                // since.
                let last = self.written_seq.lock().remove(&client_id);
                let purge = match last {
                    Some(seq) => store.purge().filter(subject).sequence(seq + 1).await,
                    None => store.purge().filter(subject).await,
                };
                if let Err(e) = purge {
                    self.link.metrics().cluster_errors.inc();
                    warn!(tenant = %self.tenant_name, error = %e, "cluster: an ended session's record was not removed");
                }
            }
            Job::Subscribed(client_id, filter, record, start) => {
                self.read_consumers(&client_id, &filter, &record, start, true)
                    .await;
            }
            Job::Unsubscribed(client_id, filter) => {
                self.drop_consumers(&client_id, &filter).await;
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
            Job::Ack(ack, done) => {
                if !ack.ack_confirmed().await {
                    self.link.metrics().cluster_errors.inc();
                    warn!(tenant = %self.tenant_name, "cluster: JetStream did not confirm a session's acknowledgement");
                }
                let _ = done.send(Ok(()));
            }
            Job::Discard(client_id) => {
                if let Ok(Some(loaded)) = self.load(&client_id).await {
                    let filters = loaded.snapshot.subs.into_keys().collect();
                    Box::pin(self.run(store, Job::Remove(client_id, filters))).await;
                }
            }
            Job::Resume(client_id, subs) => {
                for (filter, record) in subs {
                    self.read_consumers(&client_id, &filter, &record, SystemTime::now(), false)
                        .await;
                }
            }
        }
    }

    /// Sets up the consumers of `client_id`'s subscription to `filter` (reading from `start`
    /// when new) and reads them into the session held here, if it is.
    async fn read_consumers(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        filter: &str,
        record: &SubscriptionRecord,
        start: SystemTime,
        restart: bool,
    ) {
        if filter.starts_with("$share/") {
            return;
        }
        let Some(tenant) = self.tenant.get().and_then(Weak::upgrade) else {
            return;
        };
        let js = self.link.jetstream();
        let stream = match js.get_stream(stream_name(&self.tenant_name)).await {
            Ok(s) => s,
            Err(e) => {
                self.link.metrics().cluster_errors.inc();
                warn!(tenant = %self.tenant_name, error = %e, "cluster: the tenant's stream cannot be read for a session");
                return;
            }
        };
        let max_ack_pending =
            i64::try_from(tenant.limits.current().max_queued_messages.max(1)).unwrap_or(i64::MAX);
        for (i, subject) in filter_to_subjects(&self.tenant_name, filter)
            .iter()
            .enumerate()
        {
            let name = consumer_name(client_id, filter, i);
            let config = consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some("Starling: a persistent session's subscription".into()),
                filter_subject: to_durable(subject),
                deliver_policy: consumer::DeliverPolicy::ByStartTime {
                    start_time: start.into(),
                },
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending,
                ..consumer::pull::Config::default()
            };
            let consumer = match stream
                .get_or_create_consumer::<consumer::pull::Config>(&name, config)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.link.metrics().cluster_errors.inc();
                    warn!(tenant = %self.tenant_name, error = %e, "cluster: a session's consumer was not set up");
                    continue;
                }
            };
            let Some(session) = tenant.session(client_id) else {
                continue;
            };
            let stop = {
                let mut feeders = self.feeders.lock();
                if let Some((id, token)) = feeders.get(&name) {
                    if *id == session.id && !token.is_cancelled() && !restart {
                        continue;
                    }
                    token.cancel();
                }
                let token = self.link.stop_token().child_token();
                feeders.insert(name.clone(), (session.id, token.clone()));
                token
            };
            tokio::spawn(feed(
                self.clone(),
                Arc::downgrade(&tenant),
                Arc::downgrade(&session),
                consumer,
                record.clone(),
                name,
                stop,
            ));
        }
    }

    async fn drop_consumers(&self, client_id: &str, filter: &str) {
        if filter.starts_with("$share/") {
            return;
        }
        let js = self.link.jetstream();
        let stream = stream_name(&self.tenant_name);
        for i in 0..filter_to_subjects(&self.tenant_name, filter).len() {
            let name = consumer_name(client_id, filter, i);
            if let Some((_, token)) = self.feeders.lock().remove(&name) {
                token.cancel();
            }
            if let Err(e) = js.delete_consumer_from_stream(&name, &stream).await {
                if !e.to_string().contains("not found") {
                    self.link.metrics().cluster_errors.inc();
                    warn!(tenant = %self.tenant_name, error = %e, "cluster: a session's consumer was not removed");
                }
            }
        }
    }

    /// Stops reading the consumers of the session `session_id` here (it ended here or was
    /// handed over).
    pub fn stop_reading(&self, session_id: u64) {
        self.feeders.lock().retain(|_, (id, token)| {
            if *id == session_id {
                token.cancel();
                false
            } else {
                true
            }
        });
    }
}

impl SessionStore for ClusterSessions {
    fn subscribed(&self, client_id: &str, filter: &str, r: &SubscriptionRecord) {
        if self.is_handed(client_id) {
            return;
        }
        let hexed = hex::encode(record::encode_subscription(r));
        self.change(client_id, |s| {
            s.subs.insert(filter.to_owned(), hexed);
        });
        self.queue(Job::Subscribed(
            client_id.into(),
            filter.to_owned(),
            r.clone(),
            SystemTime::now(),
        ));
    }

    fn unsubscribed(&self, client_id: &str, filter: &str) {
        if self.is_handed(client_id) {
            return;
        }
        self.change(client_id, |s| {
            s.subs.remove(filter);
        });
        self.queue(Job::Unsubscribed(client_id.into(), filter.to_owned()));
    }

    fn queued(&self, _: &str, _: &Delivery) {}
    fn dequeued(&self, _: &str, _: u64) {}
    fn in_flight(&self, client_id: &str, packet_id: u16, _: u64, entry: &Inflight) {
        if let Inflight::Published(d) = entry {
            if d.qos == QoS::ExactlyOnce {
                self.change(client_id, |s| {
                    s.sent.insert(packet_id);
                });
            }
            return;
        }
        if matches!(entry, Inflight::Released) {
            let seq = self
                .releasing
                .lock()
                .remove(&(Arc::from(client_id), packet_id))
                .unwrap_or(0);
            self.change(client_id, |s| {
                s.sent.remove(&packet_id);
                s.rel.insert(packet_id, seq);
            });
        }
    }

    fn completed(&self, client_id: &str, packet_id: u16) {
        let kept = self
            .mirror
            .lock()
            .get(client_id)
            .is_some_and(|s| s.rel.contains_key(&packet_id) || s.sent.contains(&packet_id));
        if kept {
            self.change(client_id, |s| {
                s.rel.remove(&packet_id);
                s.sent.remove(&packet_id);
            });
        }
    }
    fn received(&self, client_id: &str, packet_id: u16) {
        self.change(client_id, |s| {
            s.receipts.insert(packet_id);
        });
    }

    fn released(&self, client_id: &str, packet_id: u16) {
        self.change(client_id, |s| {
            s.receipts.remove(&packet_id);
        });
    }

    fn expiry_set(&self, client_id: &str, secs: u32) {
        if secs == 0 {
            if self.is_handed(client_id) {
                return;
            }
            if let Some(snap) = self.mirror.lock().remove(client_id) {
                let filters = snap.subs.into_keys().collect();
                self.queue(Job::Remove(client_id.into(), filters));
            }
            return;
        }
        self.change(client_id, |s| {
            s.expiry = secs;
            s.ends_at = None;
        });
    }

    fn went_offline(&self, client_id: &str, secs: u32, ends_at: Option<tokio::time::Instant>) {
        self.change(client_id, |s| {
            s.expiry = secs;
            s.ends_at = ends_at.map(record::instant_to_unix_ms);
        });
    }

    fn will_pending(&self, client_id: &str, will: Option<(&Message, tokio::time::Instant)>) {
        let hexed = will
            .map(|(m, due)| hex::encode(record::encode_will(m, record::instant_to_unix_ms(due))));
        self.change(client_id, |s| s.will = hexed);
    }

    fn ended(&self, client_id: &str) {
        if self.is_handed(client_id) {
            return;
        }
        let filters = self
            .mirror
            .lock()
            .remove(client_id)
            .map(|s| s.subs.into_keys().collect())
            .unwrap_or_default();
        self.queue(Job::Remove(client_id.into(), filters));
    }

    fn credential_set(&self, client_id: &str, credential: &crate::auth::Credential) {
        let hexed = hex::encode(record::encode_credential(credential));
        self.change(client_id, |s| s.credential = Some(hexed));
    }
}

/// Reads one consumer of a session into its outbox until `stop` (the subscription or the
/// session ended, or went to another replica), the session is gone, or the broker stops.
async fn feed(
    sessions: Arc<ClusterSessions>,
    tenant: Weak<Tenant>,
    session: Weak<Session>,
    consumer: consumer::Consumer<consumer::pull::Config>,
    record: SubscriptionRecord,
    name: String,
    stop: CancellationToken,
) {
    let held: Held = Arc::default();
    let batch = usize::try_from(consumer.cached_info().config.max_ack_pending)
        .unwrap_or(64)
        .clamp(1, 64);
    let mut messages = match consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
    {
        Ok(m) => m,
        Err(e) => {
            sessions.link.metrics().cluster_errors.inc();
            warn!(tenant = %sessions.tenant_name, error = %e, "cluster: a session's consumer cannot be read");
            stop.cancel();
            return;
        }
    };
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            _ = progress.tick() => {
                if session.upgrade().is_none_or(|s| !s.stores(QoS::AtLeastOnce)) {
                    break;
                }
                let live: Vec<Arc<AckInner>> =
                    held.lock().values().filter_map(Weak::upgrade).collect();
                for a in live {
                    if !a.done.load(Ordering::Acquire) {
                        send(&a.client, &a.reply, Bytes::from_static(b"+WPI"));
                    }
                }
                continue;
            }
            m = messages.next() => m,
        };
        let msg = match msg {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Missed heartbeats and the like: the stream goes on; a deleted consumer
                // ends it.
                warn!(tenant = %sessions.tenant_name, error = %e, "cluster: reading a session's consumer");
                continue;
            }
        };
        let (Some(session), Some(tenant)) = (session.upgrade(), tenant.upgrade()) else {
            break;
        };
        let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
            continue;
        };
        let Some(reply) = msg.message.reply.clone() else {
            continue;
        };
        if held.lock().contains_key(&seq) {
            // Offered again while this replica holds it: the held copy answers for it.
            continue;
        }
        let already = sessions
            .delivered
            .lock()
            .get(&session.client_id)
            .is_some_and(|d| d.contains(&seq));
        if already {
            // The client has it (its PUBREL was due where the session was): not again.
            send(sessions.link.client(), &reply, Bytes::from_static(b"+ACK"));
            continue;
        }
        let inner = Arc::new(AckInner {
            client: sessions.link.client().clone(),
            reply,
            seq,
            done: AtomicBool::new(false),
            held: Arc::downgrade(&held),
        });
        held.lock().insert(seq, Arc::downgrade(&inner));
        let ack = StreamAck(inner);
        let Some(mut message) = super::link::decode(&msg.message, &tenant.name) else {
            tenant.metrics.cluster_errors.inc();
            ack.ack();
            continue;
        };
        if record.options.no_local && message.publisher.as_deref() == Some(&*session.client_id) {
            // [MQTT-3.8.3-3] not back to its publisher.
            ack.ack();
            continue;
        }
        message.stream_ack = Some(ack);
        let retain = record.options.retain_as_published && message.retain;
        let qos = message.qos.min(record.options.qos);
        let delivery = Delivery {
            message: Arc::new(message),
            qos,
            retain,
            subscription_ids: record.id.into_iter().collect(),
            shared: None,
            stored: 0,
        };
        // Refused (a full outbox): dropped, so given back and offered again later.
        session.push(delivery, &tenant.metrics);
    }
    stop.cancel();
    let mut feeders = sessions.feeders.lock();
    if feeders.get(&name).is_some_and(|(_, t)| t.is_cancelled()) {
        feeders.remove(&name);
    }
}
