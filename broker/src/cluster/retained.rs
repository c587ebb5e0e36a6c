//! Retained messages of a broker's replicas, kept in JetStream key-value buckets.
//!
//! Layout: one bucket per tenant, `starling-retained-<tenant>` ([`bucket_name`]), so limits,
//! replication and deletion apply to one tenant's messages and nothing else; one key per
//! topic ([`topic_to_key`]); history 1 (only the latest value of a topic is kept).
//!
//! - A key is the topic's levels joined by `.`; each level keeps `A-Z a-z 0-9 -` and writes
//!   every other byte of its UTF-8 as `_XX` (two upper-case hex digits), and an empty level is
//!   `_` alone. KV keys allow only `-/_=.A-Za-z0-9` and no empty token, so this is exact and
//!   reversible for every legal topic ([`key_to_topic`]); `$SYS/x` is `_24SYS.x`.
//! - A value is the message as the durable store keeps it ([`crate::storage::record`]): its
//!   PUBLISH packet behind the absolute time (Unix ms) its expiry ends. NATS 2.9 has no
//!   per-key TTL: an expired value is ignored when read and purged (by whichever replica sees
//!   its time come first; a purge names the revision it removes, so it never removes a newer
//!   value).
//! - An empty retained payload is a delete marker.
//!
//! Writes: a retained PUBLISH sets this replica's in-memory store at once (so the index
//! SUBSCRIBE reads answers at once here) and queues a put (or delete) for the tenant's writer
//! task, which sends them in publication order over the replica's one NATS connection and
//! waits for JetStream's acknowledgements concurrently. A QoS 1 or 2 publication is
//! acknowledged only after the put succeeded; when it fails the publisher gets 0x80 and this
//! replica's in-memory store goes back to what it held. The queue is bounded in entries and
//! bytes; while it is full, or while JetStream is known to be unavailable, a retained QoS 1 or
//! 2 publication is refused with 0x80 before anything is delivered.
//!
//! Reads: every replica watches each of its tenants' buckets and keeps its in-memory store in
//! step (its own writes included, in revision order, so replicas that wrote one topic at the
//! same time agree on the last value). The whole bucket is read before the replica reports
//! ready, so a replica that starts later serves every retained message.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv::{Operation, Store};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::link::Link;
use super::subject::Escaping;
use crate::message::Message;
use crate::metrics::JetStreamOp;
use crate::storage::Failure;
use crate::storage::record;
use crate::tenant::Tenant;

/// The first part of every bucket name.
pub const BUCKET_PREFIX: &str = "starling-retained-";
/// Writes waiting for the writer task of one tenant, at most.
pub const MAX_QUEUED: usize = 4096;
/// The weight of writes waiting for the writer task of one tenant, at most.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Writes sent and awaiting JetStream's acknowledgement, at most, per tenant.
const MAX_IN_FLIGHT: usize = 256;
/// Between two attempts to open a bucket or watch it again: the first, then twice as long each
/// time up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The escaping of tenant names and topic levels in bucket names and keys: letters, digits and
/// `-` stand for themselves, every other byte is `_XX`, an empty one is `_`.
const NAMES: Escaping = Escaping {
    escape: b'_',
    plain: is_name_plain,
};

fn is_name_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// The bucket of `tenant`'s retained messages.
pub fn bucket_name(tenant: &str) -> String {
    let mut s = String::from(BUCKET_PREFIX);
    NAMES.push(&mut s, tenant);
    s
}

/// The key of `topic` (a valid topic name) in a bucket.
pub fn topic_to_key(topic: &str) -> String {
    let mut key = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            key.push('.');
        }
        NAMES.push(&mut key, level);
    }
    key
}

/// The topic a key stands for; `None` when it is not one [`topic_to_key`] writes.
pub fn key_to_topic(key: &str) -> Option<String> {
    let levels: Option<Vec<String>> = key.split('.').map(|t| NAMES.decode(t)).collect();
    Some(levels?.join("/"))
}

/// A write for the writer task.
enum Op {
    Put(Bytes),
    Delete,
    /// An expired value, if `revision` is still the key's latest.
    Purge(u64),
}

impl Op {
    fn metric(&self) -> JetStreamOp {
        match self {
            Op::Put(_) => JetStreamOp::put,
            Op::Delete => JetStreamOp::delete,
            Op::Purge(_) => JetStreamOp::purge,
        }
    }
}

/// What this replica's in-memory store held and holds for a topic whose write is queued, to
/// go back when the write fails.
struct Undo {
    topic: String,
    written: Option<Arc<Message>>,
    previous: Option<Arc<Message>>,
}

struct Job {
    key: String,
    op: Op,
    weight: usize,
    undo: Option<Undo>,
    done: Option<oneshot::Sender<Result<(), Failure>>>,
}

/// One tenant's bucket, as this replica writes and follows it.
#[derive(Debug)]
pub struct Bucket {
    name: String,
    jobs: mpsc::Sender<Job>,
    queued_bytes: Arc<AtomicUsize>,
    link: Arc<Link>,
    /// Ends the tasks of the bucket (the tenant was dropped or deleted).
    stop: CancellationToken,
}

impl Drop for Bucket {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Bucket {
    /// Starts writing `tenant`'s retained messages to its bucket and following the bucket:
    /// the replica is not ready until the bucket has been read once.
    pub fn start(link: &Arc<Link>, tenant: &Arc<Tenant>) -> Bucket {
        let name = bucket_name(&tenant.name);
        let (jobs, queue) = mpsc::channel(MAX_QUEUED);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let stop = link.stop_token().child_token();
        link.loading_started();
        tokio::spawn(write(
            link.clone(),
            Arc::downgrade(tenant),
            name.clone(),
            queue,
            queued_bytes.clone(),
            stop.clone(),
        ));
        tokio::spawn(follow(
            link.clone(),
            Arc::downgrade(tenant),
            name.clone(),
            jobs.clone(),
            stop.clone(),
        ));
        Bucket {
            name,
            jobs,
            queued_bytes,
            link: link.clone(),
            stop,
        }
    }

    /// Stops following and writing the bucket.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why a retained QoS 1 or 2 publication would be refused now, if it would.
    pub fn failure(&self) -> Option<&'static str> {
        if !self.link.jetstream_available() {
            Some("retained messages cannot be stored now: the replicas' JetStream is unavailable")
        } else if self.jobs.capacity() == 0
            || self.queued_bytes.load(Ordering::Relaxed) >= MAX_QUEUED_BYTES
        {
            Some(
                "retained messages cannot be stored now: the way to JetStream is full; retry later",
            )
        } else {
            None
        }
    }

    /// Queues the write of `written` (`None`: the topic's retained message was cleared) for
    /// `topic`, which replaced `previous` in this replica's store. The receiver says when
    /// JetStream holds it; on a failure this replica's store has gone back to `previous`.
    pub fn store(
        &self,
        tenant: &Tenant,
        topic: &str,
        written: Option<Arc<Message>>,
        previous: Option<Arc<Message>>,
    ) -> oneshot::Receiver<Result<(), Failure>> {
        let (tx, rx) = oneshot::channel();
        let op = match &written {
            Some(m) => Op::Put(Bytes::from(record::encode_retained(m))),
            None => Op::Delete,
        };
        let weight = match &op {
            Op::Put(b) => b.len(),
            _ => 0,
        } + topic.len();
        let job = Job {
            key: topic_to_key(topic),
            op,
            weight,
            undo: Some(Undo {
                topic: topic.to_owned(),
                written,
                previous,
            }),
            done: Some(tx),
        };
        if self.queued_bytes.load(Ordering::Relaxed) + weight > MAX_QUEUED_BYTES
            && self.queued_bytes.load(Ordering::Relaxed) > 0
        {
            fail(tenant, &self.link, job, "the queue to JetStream is full");
            return rx;
        }
        self.queued_bytes.fetch_add(weight, Ordering::Relaxed);
        if let Err(e) = self.jobs.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            self.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
            fail(tenant, &self.link, job, "the queue to JetStream is full");
        }
        rx
    }
}

/// A write that did not reach JetStream: counted, logged, undone here, and answered.
fn fail(tenant: &Tenant, link: &Link, job: Job, why: &str) {
    link.metrics().jetstream_failed(job.op.metric());
    warn!(tenant = %tenant.name, key = %job.key, why, "cluster: a retained message was not written to JetStream");
    if let Some(undo) = job.undo {
        tenant
            .retained
            .restore(&undo.topic, undo.written.as_deref(), undo.previous);
        tenant.metrics.retained.set(tenant.retained.len() as i64);
    }
    if let Some(done) = job.done {
        let _ = done.send(Err(Failure::RetainedNotStored));
    }
}

/// Opens the bucket, creating it when it does not exist. (A replica that has not yet learnt
/// that the tenant was deleted may make it again; the last replica to learn it deletes it.)
///
/// The bucket's stream is made as the client library's `create_key_value` makes it, without
/// the account query that call starts with (NATS 2.9 answers it in a form the library does
/// not read).
async fn open(link: &Link, name: &str) -> Result<Store, String> {
    use async_nats::jetstream::stream;
    let js = link.jetstream();
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = stream::Config {
        name: format!("KV_{name}"),
        description: Some("Starling retained messages".to_owned()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_messages: -1,
        max_message_size: -1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: link.bucket_replicas(),
        discard: stream::DiscardPolicy::New,
        ..stream::Config::default()
    };
    match js.create_stream(config).await {
        Ok(_) => js.get_key_value(name).await.map_err(|e| e.to_string()),
        // Made by another replica meanwhile, or with other settings: use it as it is.
        Err(e) => js.get_key_value(name).await.map_err(|_| e.to_string()),
    }
}

/// The writer task of one tenant's bucket. Ends when the tenant is dropped.
async fn write(
    link: Arc<Link>,
    tenant: Weak<Tenant>,
    name: String,
    mut queue: mpsc::Receiver<Job>,
    queued_bytes: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut opened = false;
    let mut acks: FuturesUnordered<BoxFuture<'static, (Result<(), PublishError>, Job)>> =
        FuturesUnordered::new();
    let prefix = format!("$KV.{name}.");
    loop {
        tokio::select! {
            // Writes waiting are answered as failed (their senders are dropped).
            () = stop.cancelled() => return,
            Some((result, job)) = acks.next(), if !acks.is_empty() => {
                let Some(tenant) = tenant.upgrade() else { return };
                match result {
                    Ok(()) => {
                        link.jetstream_succeeded();
                        if let Some(done) = job.done {
                            let _ = done.send(Ok(()));
                        }
                    }
                    // Another replica purged it or wrote a newer value first.
                    Err(e) if matches!(job.op, Op::Purge(_))
                        && e.kind() == PublishErrorKind::WrongLastSequence => {}
                    Err(e) => {
                        if matches!(e.kind(), PublishErrorKind::TimedOut | PublishErrorKind::StreamNotFound) {
                            link.jetstream_failed();
                            opened = false;
                        }
                        let why = e.to_string();
                        fail(&tenant, &link, job, &why);
                    }
                }
            }
            job = queue.recv(), if acks.len() < MAX_IN_FLIGHT => {
                let Some(job) = job else { return };
                queued_bytes.fetch_sub(job.weight, Ordering::Relaxed);
                let Some(tenant_now) = tenant.upgrade() else { return };
                if !opened {
                    match open(&link, &name).await {
                        Ok(_) => opened = true,
                        Err(e) => {
                            link.metrics().jetstream_failed(JetStreamOp::bucket);
                            link.jetstream_failed();
                            fail(&tenant_now, &link, job, &e);
                            continue;
                        }
                    }
                }
                drop(tenant_now);
                let mut headers = HeaderMap::new();
                let payload = match &job.op {
                    Op::Put(b) => b.clone(),
                    Op::Delete => {
                        headers.insert("KV-Operation", "DEL");
                        Bytes::new()
                    }
                    Op::Purge(revision) => {
                        headers.insert("KV-Operation", "PURGE");
                        headers.insert("Nats-Rollup", "sub");
                        headers.insert(
                            "Nats-Expected-Last-Subject-Sequence",
                            revision.to_string().as_str(),
                        );
                        Bytes::new()
                    }
                };
                let subject = format!("{prefix}{}", job.key);
                match link.jetstream().publish_with_headers(subject, headers, payload).await {
                    Ok(ack) => acks.push(Box::pin(async move { (ack.await.map(|_| ()), job) })),
                    Err(e) => {
                        link.jetstream_failed();
                        let Some(tenant) = tenant.upgrade() else { return };
                        fail(&tenant, &link, job, &e.to_string());
                    }
                }
            }
        }
    }
}

/// When values with an expiry run out, to purge them.
#[derive(Default)]
struct Expiries {
    /// By key: the revision that expires and when.
    by_key: HashMap<String, (u64, Instant)>,
    /// The same, soonest first; entries no longer in `by_key` are skipped.
    due: BinaryHeap<Reverse<(Instant, u64, String)>>,
}

impl Expiries {
    fn set(&mut self, key: &str, revision: u64, at: Option<Instant>) {
        match at {
            Some(at) => {
                self.by_key.insert(key.to_owned(), (revision, at));
                self.due.push(Reverse((at, revision, key.to_owned())));
                if self.due.len() > 2 * self.by_key.len() + 64 {
                    self.due = self
                        .by_key
                        .iter()
                        .map(|(k, &(r, at))| Reverse((at, r, k.clone())))
                        .collect();
                }
            }
            None => {
                self.by_key.remove(key);
            }
        }
    }

    fn next(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The (key, revision) pairs due by `now`.
    fn take_due(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while let Some(Reverse((at, revision, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let (at, revision) = (*at, *revision);
            let Some(Reverse((_, _, key))) = self.due.pop() else {
                break;
            };
            if self.by_key.get(&key) == Some(&(revision, at)) {
                self.by_key.remove(&key);
                out.push((key, revision));
            }
        }
        out
    }
}

/// Follows one tenant's bucket into its in-memory store, until the tenant is dropped.
async fn follow(
    link: Arc<Link>,
    tenant: Weak<Tenant>,
    name: String,
    jobs: mpsc::Sender<Job>,
    stop: CancellationToken,
) {
    let mut loaded = false;
    let mut last = 0u64;
    let mut expiries = Expiries::default();
    let mut retry = RETRY;
    let done_loading = |loaded: &mut bool, tenant: &str| {
        if !*loaded {
            *loaded = true;
            link.loading_done();
            info!(tenant, "cluster: retained messages read from JetStream");
        }
    };
    'outer: while !stop.is_cancelled() {
        let Some(t) = tenant.upgrade() else { break };
        let tenant_name = t.name.clone();
        drop(t);
        let store = match open(&link, &name).await {
            Ok(s) => s,
            Err(e) => {
                link.metrics().jetstream_failed(JetStreamOp::bucket);
                link.jetstream_failed();
                warn!(tenant = %tenant_name, error = %e, "cluster: cannot open the retained-message bucket; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(retry) => {
                        retry = (retry * 2).min(RETRY_MAX);
                        continue;
                    }
                }
            }
        };
        link.jetstream_succeeded();
        if !loaded {
            match store.status().await {
                Ok(s) if s.values() == 0 => done_loading(&mut loaded, &tenant_name),
                Ok(_) => {}
                Err(e) => {
                    link.metrics().jetstream_failed(JetStreamOp::watch);
                    warn!(tenant = %tenant_name, error = %e, "cluster: cannot read the retained-message bucket; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(retry) => {
                        retry = (retry * 2).min(RETRY_MAX);
                        continue;
                    }
                    }
                }
            }
        }
        let watch = if last == 0 {
            // The latest value of every key, then every change.
            store.watch_with_history(">").await
        } else {
            store.watch_all_from_revision(last + 1).await
        };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                link.metrics().jetstream_failed(JetStreamOp::watch);
                warn!(tenant = %tenant_name, error = %e, "cluster: cannot follow the retained-message bucket; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(retry) => {
                        retry = (retry * 2).min(RETRY_MAX);
                        continue;
                    }
                }
            }
        };
        loop {
            let next_expiry = expiries.next();
            let entry = tokio::select! {
                () = stop.cancelled() => break 'outer,
                () = async {
                    match next_expiry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    for (key, revision) in expiries.take_due(Instant::now()) {
                        purge(&jobs, key, revision);
                    }
                    continue;
                }
                e = watch.next() => e,
            };
            let Some(tenant) = tenant.upgrade() else {
                break 'outer;
            };
            match entry {
                Some(Ok(entry)) => {
                    retry = RETRY;
                    last = entry.revision;
                    apply(
                        &tenant,
                        &link,
                        &jobs,
                        &mut expiries,
                        entry.operation,
                        &entry.key,
                        entry.revision,
                        &entry.value,
                    );
                    if entry.delta == 0 {
                        done_loading(&mut loaded, &tenant.name);
                    }
                }
                Some(Err(e)) => {
                    link.metrics().jetstream_failed(JetStreamOp::watch);
                    warn!(tenant = %tenant.name, error = %e, "cluster: following the retained-message bucket failed; following it again");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(retry) => retry = (retry * 2).min(RETRY_MAX),
        }
    }
    if !loaded {
        // A tenant dropped before its bucket was read holds nothing up.
        link.loading_done();
    }
}

fn purge(jobs: &mpsc::Sender<Job>, key: String, revision: u64) {
    // When the queue is full the purge is left to another replica or to the next read.
    let _ = jobs.try_send(Job {
        key,
        op: Op::Purge(revision),
        weight: 0,
        undo: None,
        done: None,
    });
}

/// One value of the bucket, into this replica's store.
#[allow(clippy::too_many_arguments)]
fn apply(
    tenant: &Tenant,
    link: &Link,
    jobs: &mpsc::Sender<Job>,
    expiries: &mut Expiries,
    operation: Operation,
    key: &str,
    revision: u64,
    value: &[u8],
) {
    let Some(topic) = key_to_topic(key) else {
        link.metrics().cluster_errors.inc();
        warn!(tenant = %tenant.name, key, "cluster: a retained-message key that is not a topic was ignored");
        return;
    };
    expiries.set(key, revision, None);
    match operation {
        Operation::Put => match record::decode_retained(value) {
            Ok(Some(message)) if message.topic.as_str() == topic => {
                expiries.set(key, revision, message.expires_at);
                tenant.retained_from_replicas(Arc::new(message));
            }
            Ok(Some(_)) | Err(_) => {
                link.metrics().cluster_errors.inc();
                warn!(tenant = %tenant.name, key, "cluster: a retained message that does not decode was ignored");
            }
            Ok(None) => {
                // Expired: ignored, and purged.
                tenant.retained_cleared_by_replicas(&topic);
                purge(jobs, key.to_owned(), revision);
            }
        },
        Operation::Delete | Operation::Purge => tenant.retained_cleared_by_replicas(&topic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_of_topics() {
        assert_eq!(topic_to_key("a/b"), "a.b");
        assert_eq!(topic_to_key("$SYS/x"), "_24SYS.x");
        assert_eq!(topic_to_key("/"), "_._");
        assert_eq!(topic_to_key("a b/_/é/."), "a_20b._5F._C3_A9._2E");
        assert_eq!(bucket_name("default"), "starling-retained-default");
        assert_eq!(bucket_name("a.b_c"), "starling-retained-a_2Eb_5Fc");
        for bad in ["", "a..b", "_2e", "_41", "a_4", "a*b", "_C3"] {
            assert_eq!(key_to_topic(bad), None, "{bad}");
        }
    }

    fn valid_key(key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && !key.contains("..")
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
    }

    proptest! {
        #[test]
        fn every_topic_has_one_valid_key_that_reads_back(topic in "\\PC{1,40}") {
            prop_assume!(!topic.contains(['+', '#', '\0']));
            let key = topic_to_key(&topic);
            prop_assert!(valid_key(&key), "{key}");
            prop_assert_eq!(key_to_topic(&key), Some(topic));
        }

        #[test]
        fn bucket_names_are_valid(tenant in "\\PC{1,30}") {
            let name = bucket_name(&tenant);
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }
}
