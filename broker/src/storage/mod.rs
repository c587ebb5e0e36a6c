//! The durable store (`--data-dir DIR`): retained messages and persistent sessions of every
//! tenant in one database, `DIR/store/state.redb`, read back at start before the broker
//! reports ready.
//!
//! ```text
//!  connection / timer ──(under the session's lock, never blocks)──► Storage::push(ops)
//!                                                                    │ pending ops, waiters
//!  PUBACK/PUBREC ◄── waiter (oneshot) ◄── writer thread: one transaction + fsync per batch
//! ```
//! One writer thread owns the engine. With `sync`, it takes everything that is pending, commits
//! it in one transaction (which redb makes durable before it returns), then completes every
//! waiter that was registered with those changes: group commit, so a thousand publishers cost
//! one fsync per round, not a thousand. With `interval` it commits every `interval_ms` and
//! nobody waits. A commit that fails (disk full, I/O error) marks the store failing: waiters get
//! the failure, new durable work is refused (see [`Failure`]) and the writer retries the same
//! changes until they succeed, then the store is healthy again.
//!
//! Pending changes are bounded by [`MAX_PENDING_BYTES`]: above it [`Storage::is_congested`]
//! is true and publishers wait on [`Storage::room`] before they read more from their clients.

pub mod engine;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use starling_codec::ReasonCode;
use tokio::sync::{Notify, oneshot};
use tracing::{info, warn};

use crate::config::{StorageConfig, SyncPolicy};
use crate::message::{Delivery, Message};
use crate::session::{Inflight, SessionStore, SubscriptionRecord};
pub use engine::{Engine, EngineError, Faults, Op};
use record::Key;

/// Pending changes above this many bytes make publishers wait.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Why the store cannot take durable work now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The disk is full: 0x97 (quota exceeded).
    DiskFull,
    /// Another write error: 0x80 (unspecified error).
    Io,
    /// JetStream did not confirm it stored the message on the broker's replicas (no quorum,
    /// NATS unreachable, no answer in time): 0x80.
    NotReplicated,
    /// The tenant's JetStream stream is not set up (yet): 0x80.
    NoStream,
    /// JetStream has no room for the message: 0x97.
    ReplicasFull,
    /// The replicas' JetStream (`[cluster]`) did not store a retained message: 0x80.
    RetainedNotStored,
}

impl Failure {
    /// The reason code of a PUBACK, PUBREC or CONNACK that refuses durable work.
    pub fn reason(self) -> ReasonCode {
        match self {
            Failure::DiskFull | Failure::ReplicasFull => ReasonCode::QUOTA_EXCEEDED,
            Failure::Io
            | Failure::NotReplicated
            | Failure::NoStream
            | Failure::RetainedNotStored => ReasonCode::UNSPECIFIED_ERROR,
        }
    }

    /// For the reason string.
    pub fn describe(self) -> &'static str {
        match self {
            Failure::DiskFull => "the broker's storage is full",
            Failure::Io => "the broker's storage cannot be written",
            Failure::NotReplicated => {
                "JetStream did not confirm storing the message on the broker's replicas"
            }
            Failure::NoStream => "the tenant's JetStream stream is not ready",
            Failure::ReplicasFull => "JetStream has no room for the message",
            Failure::RetainedNotStored => {
                "the retained message was not stored: the replicas' JetStream is unavailable"
            }
        }
    }
}

/// A store that does not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory cannot be made.
    #[error("cannot create the storage directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process (a second broker on the same data directory) has the database open.
    #[error(
        "the store {file} is in use by another process (another broker on the same --data-dir?)"
    )]
    InUse {
        /// The database file.
        file: PathBuf,
    },
    /// The database does not open or does not read back.
    #[error(
        "the store {file} cannot be read ({reason}); start with --storage-repair to move it aside and start with what can be kept"
    )]
    Corrupt {
        /// The database file.
        file: PathBuf,
        /// What the engine said.
        reason: String,
    },
}

/// Waiters for the next commit.
type Waiter = oneshot::Sender<Result<(), Failure>>;

#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    waiters: Vec<Waiter>,
    bytes: usize,
    closing: bool,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    policy: SyncPolicy,
    interval: Duration,
    /// 0: healthy; 1: disk full; 2: I/O error.
    failure: AtomicU8,
    pending_bytes: AtomicUsize,
    room: Notify,
    restored: Mutex<HashMap<String, RestoredTenant>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    file: PathBuf,
}

/// The store of a broker with a data directory. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("file", &self.inner.file)
            .field("policy", &self.inner.policy)
            .finish()
    }
}

/// What a tenant had on disk at start.
#[derive(Debug, Default)]
pub struct RestoredTenant {
    /// Retained messages (their expiry still running).
    pub retained: Vec<Message>,
    /// Sessions by client id.
    pub sessions: BTreeMap<String, RestoredSession>,
}

/// A session read back.
#[derive(Debug, Default)]
pub struct RestoredSession {
    /// Its Session Expiry Interval.
    pub expiry_secs: u32,
    /// When it ends (Unix ms), counting the time the broker was down; `None`: never.
    pub ends_at: Option<u64>,
    /// Subscriptions by filter as the client wrote it.
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// Queued deliveries in queue order, with their sequence numbers.
    pub queue: Vec<(u64, Delivery)>,
    /// In-flight deliveries in send order, with their places in it.
    pub inflight: Vec<(u16, u64, Inflight)>,
    /// QoS 2 packet ids received and not released.
    pub receipts: Vec<u16>,
    /// A will waiting for its delay: when it is due (Unix ms) and the message.
    pub will: Option<(u64, Message)>,
    /// The credential it was last served with, for the revocation and key sweeps.
    pub credential: Option<crate::auth::Credential>,
    /// Set when the meta record was there (a session without one is left over and dropped).
    has_meta: bool,
}

impl Storage {
    /// Opens `DIR/store/state.redb` (creating it), reads every tenant's state back and starts
    /// the writer. A database that does not open, or a record that does not read back, is
    /// refused, unless `config.repair`: then the file is moved aside (`state.redb.broken-<unix
    /// seconds>`) and the store starts empty, or the records that do not read back are left
    /// out, and it is logged.
    pub fn open(
        data_dir: &Path,
        config: &StorageConfig,
        faults: Option<Faults>,
    ) -> Result<Storage, OpenError> {
        let dir = data_dir.join("store");
        std::fs::create_dir_all(&dir).map_err(|source| OpenError::Dir {
            dir: dir.clone(),
            source,
        })?;
        let file = dir.join(engine::FILE);
        let cache_bytes = usize::try_from(config.cache_mb << 20).unwrap_or(usize::MAX);
        let started = std::time::Instant::now();
        let (engine, records) = match engine::Redb::open(&file, cache_bytes) {
            Ok(x) => x,
            Err(e) if e.in_use => return Err(OpenError::InUse { file }),
            Err(e) if config.repair => {
                let aside = dir.join(format!(
                    "{}.broken-{}",
                    engine::FILE,
                    record::unix_ms_now() / 1000
                ));
                warn!(file = %file.display(), moved_to = %aside.display(), error = %e,
                    "the store does not open: moved aside, starting with an empty store (--storage-repair)");
                std::fs::rename(&file, &aside).map_err(|source| OpenError::Dir {
                    dir: dir.clone(),
                    source,
                })?;
                engine::Redb::open(&file, cache_bytes).map_err(|e| OpenError::Corrupt {
                    file: file.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) => {
                return Err(OpenError::Corrupt {
                    file,
                    reason: e.to_string(),
                });
            }
        };
        let (restored, bad, cleanup) = restore(&records);
        if bad > 0 {
            if !config.repair {
                return Err(OpenError::Corrupt {
                    file,
                    reason: format!("{bad} records do not read back"),
                });
            }
            warn!(file = %file.display(), records = bad,
                "records that do not read back were left out (--storage-repair)");
        }
        let tenants = restored.len();
        let sessions: usize = restored.values().map(|t| t.sessions.len()).sum();
        let retained: usize = restored.values().map(|t| t.retained.len()).sum();
        info!(file = %file.display(), tenants, sessions, retained, records = records.len(),
            ms = started.elapsed().as_millis() as u64, "store read back");
        let engine: Box<dyn Engine> = match faults {
            Some(faults) => Box::new(engine::Faulty {
                inner: engine,
                faults,
            }),
            None => Box::new(engine),
        };
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            policy: config.sync,
            interval: Duration::from_millis(config.interval_ms.max(1)),
            failure: AtomicU8::new(0),
            pending_bytes: AtomicUsize::new(0),
            room: Notify::new(),
            restored: Mutex::new(restored),
            writer: Mutex::new(None),
            file,
        });
        let storage = Storage { inner };
        // What expired or was left over while the broker was down goes.
        storage.push(cleanup);
        let writer = storage.inner.clone();
        let handle = std::thread::Builder::new()
            .name("starling-store".into())
            .spawn(move || write_loop(&writer, engine))
            .map_err(|source| OpenError::Dir { dir, source })?;
        *storage.inner.writer.lock() = Some(handle);
        Ok(storage)
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.inner.file
    }

    /// Takes what tenant `name` had on disk (once; later calls get nothing).
    pub fn take_restored(&self, name: &str) -> Option<RestoredTenant> {
        self.inner.restored.lock().remove(name)
    }

    /// Queues changes for the writer. Never blocks beyond a short lock.
    pub fn push(&self, ops: impl IntoIterator<Item = Op>) {
        let mut pending = self.inner.pending.lock();
        let was_empty = pending.ops.is_empty();
        let mut added = 0;
        for op in ops {
            added += op.weight();
            pending.ops.push(op);
        }
        if added == 0 {
            return;
        }
        pending.bytes += added;
        self.inner
            .pending_bytes
            .store(pending.bytes, Ordering::Relaxed);
        drop(pending);
        if was_empty && self.inner.policy == SyncPolicy::Sync {
            self.inner.wake.notify_one();
        }
    }

    /// With `sync`: a receiver completed once everything queued so far is durable (or the
    /// commit failed). With `interval`: `None`, the changes are acknowledged at once.
    pub fn durable(&self) -> Option<oneshot::Receiver<Result<(), Failure>>> {
        if self.inner.policy != SyncPolicy::Sync {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let mut pending = self.inner.pending.lock();
        pending.waiters.push(tx);
        drop(pending);
        self.inner.wake.notify_one();
        Some(rx)
    }

    /// Why durable work is refused now, if it is.
    pub fn failure(&self) -> Option<Failure> {
        match self.inner.failure.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(Failure::DiskFull),
            _ => Some(Failure::Io),
        }
    }

    /// Whether pending changes are above [`MAX_PENDING_BYTES`].
    pub fn is_congested(&self) -> bool {
        self.inner.pending_bytes.load(Ordering::Relaxed) > MAX_PENDING_BYTES
    }

    /// Waits until pending changes are below [`MAX_PENDING_BYTES`].
    pub async fn room(&self) {
        loop {
            let notified = self.inner.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_congested() {
                return;
            }
            notified.await;
        }
    }

    /// Deletes everything of tenant `name` (the control plane deleted it).
    pub fn forget_tenant(&self, name: &str) {
        self.inner.restored.lock().remove(name);
        self.push([Op::DeletePrefix(record::tenant_prefix(name).into())]);
    }

    /// Writes what is pending, stops the writer and closes the database (graceful shutdown).
    pub async fn close(&self) {
        {
            let mut pending = self.inner.pending.lock();
            pending.closing = true;
        }
        self.inner.wake.notify_one();
        let handle = self.inner.writer.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            info!(file = %self.inner.file.display(), "store closed");
        }
    }

    /// The store of one tenant.
    pub fn tenant(&self, name: &str) -> TenantStore {
        TenantStore {
            storage: self.clone(),
            tenant: Arc::from(name),
        }
    }
}

/// How long the writer waits before it tries a failed commit again, at most.
const MAX_RETRY: Duration = Duration::from_secs(2);

fn write_loop(inner: &Inner, mut engine: Box<dyn Engine>) {
    let mut retry = Duration::from_millis(50);
    let mut failed_ops: Vec<Op> = Vec::new();
    loop {
        let (mut ops, waiters, closing) = {
            let mut pending = inner.pending.lock();
            if failed_ops.is_empty() {
                match inner.policy {
                    SyncPolicy::Sync => {
                        while pending.ops.is_empty()
                            && pending.waiters.is_empty()
                            && !pending.closing
                        {
                            inner.wake.wait(&mut pending);
                        }
                    }
                    SyncPolicy::Interval => {
                        if !pending.closing {
                            let _ = inner.wake.wait_for(&mut pending, inner.interval);
                        }
                    }
                }
            } else if !pending.closing {
                let _ = inner.wake.wait_for(&mut pending, retry);
            }
            let ops = std::mem::take(&mut pending.ops);
            let waiters = std::mem::take(&mut pending.waiters);
            pending.bytes = 0;
            (ops, waiters, pending.closing)
        };
        if !failed_ops.is_empty() {
            // The changes that failed go first, in their order.
            failed_ops.append(&mut ops);
            ops = std::mem::take(&mut failed_ops);
        }
        if ops.is_empty() {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
            if closing {
                return;
            }
            continue;
        }
        let mut batch = coalesce(ops);
        batch.push(Op::Put(
            record::LAST_COMMIT_KEY.into(),
            record::unix_ms_now().to_be_bytes().into(),
        ));
        match engine.commit(&batch) {
            Ok(()) => {
                batch.pop();
                if inner.failure.swap(0, Ordering::Relaxed) != 0 {
                    info!(file = %inner.file.display(), "the store is written again");
                }
                retry = Duration::from_millis(50);
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
            }
            Err(e) => {
                batch.pop();
                let failure = if e.disk_full {
                    Failure::DiskFull
                } else {
                    Failure::Io
                };
                let code = if e.disk_full { 1 } else { 2 };
                if inner.failure.swap(code, Ordering::Relaxed) != code {
                    warn!(file = %inner.file.display(), error = %e,
                        "the store cannot be written: durable work is refused until it can");
                }
                for w in waiters {
                    let _ = w.send(Err(failure));
                }
                if closing {
                    warn!(file = %inner.file.display(), changes = batch.len(),
                        "shutting down with changes the store could not write");
                    return;
                }
                failed_ops = batch;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
        let held: usize = failed_ops.iter().map(Op::weight).sum();
        let now = {
            let pending = inner.pending.lock();
            pending.bytes + held
        };
        inner.pending_bytes.store(now, Ordering::Relaxed);
        if now <= MAX_PENDING_BYTES {
            inner.room.notify_waiters();
        }
        if closing && failed_ops.is_empty() && inner.pending.lock().ops.is_empty() {
            return;
        }
    }
}

/// Leaves out every change to a key that a later change to the same key in the batch
/// replaces, and a key created ([`Op::PutNew`]) and deleted within the batch altogether (a
/// delivery queued, sent and acknowledged within one round costs one deletion instead of four
/// writes). A deletion by prefix is a barrier: nothing moves across it.
fn coalesce(ops: Vec<Op>) -> Vec<Op> {
    use std::collections::hash_map::Entry;
    // Per segment (between prefix deletions) and key: whether its first change creates it.
    let mut created: HashMap<(usize, &[u8]), bool> = HashMap::with_capacity(ops.len());
    let mut segment = 0;
    for op in &ops {
        match op {
            Op::Put(k, _) | Op::Delete(k) => {
                created.entry((segment, &**k)).or_insert(false);
            }
            Op::PutNew(k, _) => {
                created.entry((segment, &**k)).or_insert(true);
            }
            Op::DeletePrefix(_) => segment += 1,
        }
    }
    let mut seen: HashMap<(usize, &[u8]), ()> = HashMap::with_capacity(ops.len());
    let mut keep = vec![true; ops.len()];
    for (i, op) in ops.iter().enumerate().rev() {
        let (k, deletes) = match op {
            Op::Put(k, _) | Op::PutNew(k, _) => (k, false),
            Op::Delete(k) => (k, true),
            Op::DeletePrefix(_) => {
                segment -= 1;
                continue;
            }
        };
        match seen.entry((segment, &**k)) {
            Entry::Occupied(_) => keep[i] = false,
            Entry::Vacant(v) => {
                v.insert(());
                // The last change deletes a key this batch created: nothing to write.
                if deletes && created.get(&(segment, &**k)) == Some(&true) {
                    keep[i] = false;
                }
            }
        }
    }
    let mut keep = keep.into_iter();
    let mut out = ops;
    out.retain(|_| keep.next().unwrap_or(true));
    out
}

/// In-flight entries of one session read back: place in the send order, packet id, entry.
type InflightList = Vec<(u64, u16, Inflight)>;

/// Reads the records back by tenant. Returns the tenants, the number of records that do not
/// read back, and the deletions of what expired or was left over.
fn restore(records: &[(Vec<u8>, Vec<u8>)]) -> (HashMap<String, RestoredTenant>, usize, Vec<Op>) {
    let now = record::unix_ms_now();
    let mut last_commit = now;
    if let Some((_, v)) = records
        .iter()
        .find(|(k, _)| k.as_slice() == record::LAST_COMMIT_KEY)
    {
        if let Some(b) = v.first_chunk::<8>() {
            last_commit = u64::from_be_bytes(*b).min(now);
        }
    }
    let mut tenants: HashMap<String, RestoredTenant> = HashMap::new();
    let mut bad = 0;
    let mut cleanup = Vec::new();
    let mut inflight: HashMap<(String, String), InflightList> = HashMap::new();
    for (k, v) in records {
        let key = match record::parse_key(k) {
            Ok(key) => key,
            Err(_) => {
                bad += 1;
                cleanup.push(Op::Delete(k.clone().into()));
                continue;
            }
        };
        let ok = match key {
            Key::LastCommit => true,
            Key::Retained { tenant, .. } => match record::decode_retained(v) {
                Ok(Some(m)) => {
                    tenants.entry(tenant.into()).or_default().retained.push(m);
                    true
                }
                Ok(None) => {
                    cleanup.push(Op::Delete(k.clone().into()));
                    true
                }
                Err(_) => false,
            },
            Key::Session {
                tenant,
                client_id,
                kind,
                rest,
            } => {
                let s = tenants
                    .entry(tenant.into())
                    .or_default()
                    .sessions
                    .entry(client_id.into())
                    .or_default();
                match kind {
                    b'm' => match record::decode_meta(v) {
                        Ok((expiry, offline_ends)) => {
                            s.has_meta = true;
                            s.expiry_secs = expiry;
                            s.ends_at = match offline_ends {
                                Some(u64::MAX) => None,
                                Some(at) => Some(at),
                                // Connected when the broker stopped: offline since its last
                                // commit.
                                None if expiry == u32::MAX => None,
                                None => Some(last_commit + u64::from(expiry) * 1000),
                            };
                            true
                        }
                        Err(_) => false,
                    },
                    b'f' => match (std::str::from_utf8(rest), record::decode_subscription(v)) {
                        (Ok(filter), Ok(r)) => {
                            s.subscriptions.push((filter.into(), r));
                            true
                        }
                        _ => false,
                    },
                    b'q' => match (rest.first_chunk::<8>(), record::decode_delivery(v)) {
                        (Some(seq), Ok(Some((mut d, _)))) => {
                            let seq = u64::from_be_bytes(*seq);
                            d.stored = seq;
                            s.queue.push((seq, d));
                            true
                        }
                        (Some(_), Ok(None)) => {
                            cleanup.push(Op::Delete(k.clone().into()));
                            true
                        }
                        _ => false,
                    },
                    b'i' => {
                        let Some(id) = rest.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
                        else {
                            bad += 1;
                            continue;
                        };
                        let list = inflight
                            .entry((tenant.into(), client_id.into()))
                            .or_default();
                        if let Some(order) = record::decode_released(v) {
                            list.push((order, id, Inflight::Released));
                            true
                        } else {
                            match record::decode_delivery(v) {
                                Ok(Some((d, order))) => {
                                    list.push((order, id, Inflight::Published(d)));
                                    true
                                }
                                Ok(None) => {
                                    cleanup.push(Op::Delete(k.clone().into()));
                                    true
                                }
                                Err(_) => false,
                            }
                        }
                    }
                    b'r' => match rest.first_chunk::<2>() {
                        Some(id) => {
                            s.receipts.push(u16::from_be_bytes(*id));
                            true
                        }
                        None => false,
                    },
                    b'a' => match record::decode_credential(v) {
                        Ok(c) => {
                            s.credential = Some(c);
                            true
                        }
                        Err(_) => false,
                    },
                    b'w' => match record::decode_will(v) {
                        Ok((due, Some(m))) => {
                            s.will = Some((due, m));
                            true
                        }
                        Ok((_, None)) => true,
                        Err(_) => false,
                    },
                    _ => false,
                }
            }
        };
        if !ok {
            bad += 1;
            cleanup.push(Op::Delete(k.clone().into()));
        }
    }
    for ((tenant, client_id), mut list) in inflight {
        list.sort_by_key(|(order, _, _)| *order);
        if let Some(s) = tenants
            .get_mut(&tenant)
            .and_then(|t| t.sessions.get_mut(&client_id))
        {
            s.inflight = list
                .into_iter()
                .map(|(order, id, e)| (id, order, e))
                .collect();
        }
    }
    for (name, t) in &mut tenants {
        t.sessions.retain(|client_id, s| {
            let keep = s.has_meta && s.ends_at.is_none_or(|at| at > now);
            if !keep {
                // Ended while the broker was down, or left over: its records go.
                cleanup.push(Op::DeletePrefix(
                    record::session_prefix(name, client_id).into(),
                ));
            }
            keep
        });
        for s in t.sessions.values_mut() {
            s.queue.sort_by_key(|(seq, _)| *seq);
        }
    }
    (tenants, bad, cleanup)
}

/// The store of one tenant: its retained messages, and its sessions through
/// [`SessionStore`]. Every method queues changes and returns.
#[derive(Debug, Clone)]
pub struct TenantStore {
    storage: Storage,
    tenant: Arc<str>,
}

impl TenantStore {
    /// The broker's store.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// A retained message was stored or replaced.
    pub fn retained_set(&self, message: &Message) {
        self.storage.push([Op::Put(
            record::retained_key(&self.tenant, message.topic.as_str()).into(),
            record::encode_retained(message).into(),
        )]);
    }

    /// The retained message of `topic` was cleared.
    pub fn retained_cleared(&self, topic: &str) {
        self.storage
            .push([Op::Delete(record::retained_key(&self.tenant, topic).into())]);
    }

    fn key(&self, client_id: &str, kind: u8, rest: &[u8]) -> Box<[u8]> {
        record::session_key(&self.tenant, client_id, kind, rest).into()
    }
}

impl SessionStore for TenantStore {
    fn subscribed(&self, client_id: &str, filter: &str, record: &SubscriptionRecord) {
        self.storage.push([Op::Put(
            self.key(client_id, b'f', filter.as_bytes()),
            record::encode_subscription(record).into(),
        )]);
    }

    fn unsubscribed(&self, client_id: &str, filter: &str) {
        self.storage
            .push([Op::Delete(self.key(client_id, b'f', filter.as_bytes()))]);
    }

    fn queued(&self, client_id: &str, delivery: &Delivery) {
        self.storage.push([Op::PutNew(
            self.key(client_id, b'q', &delivery.stored.to_be_bytes()),
            record::encode_delivery(delivery, 0).into(),
        )]);
    }

    fn dequeued(&self, client_id: &str, seq: u64) {
        self.storage
            .push([Op::Delete(self.key(client_id, b'q', &seq.to_be_bytes()))]);
    }

    fn in_flight(&self, client_id: &str, packet_id: u16, order: u64, entry: &Inflight) {
        let key = self.key(client_id, b'i', &packet_id.to_be_bytes());
        match entry {
            Inflight::Published(d) => {
                let put = Op::Put(key, record::encode_delivery(d, order).into());
                if d.stored != 0 {
                    // Out of the queue and in flight in one commit.
                    let from = Op::Delete(self.key(client_id, b'q', &d.stored.to_be_bytes()));
                    self.storage.push([put, from]);
                } else {
                    self.storage.push([put]);
                }
            }
            Inflight::Released => {
                self.storage
                    .push([Op::Put(key, record::encode_released(order).into())]);
            }
        }
    }

    fn completed(&self, client_id: &str, packet_id: u16) {
        self.storage.push([Op::Delete(self.key(
            client_id,
            b'i',
            &packet_id.to_be_bytes(),
        ))]);
    }

    fn received(&self, client_id: &str, packet_id: u16) {
        self.storage.push([Op::Put(
            self.key(client_id, b'r', &packet_id.to_be_bytes()),
            [record::FORMAT].into(),
        )]);
    }

    fn released(&self, client_id: &str, packet_id: u16) {
        self.storage.push([Op::Delete(self.key(
            client_id,
            b'r',
            &packet_id.to_be_bytes(),
        ))]);
    }

    fn expiry_set(&self, client_id: &str, secs: u32) {
        if secs == 0 {
            // Ends with its connection: nothing of it is kept.
            self.ended(client_id);
            return;
        }
        self.storage.push([Op::Put(
            self.key(client_id, b'm', &[]),
            record::encode_meta(secs, None).into(),
        )]);
    }

    fn went_offline(&self, client_id: &str, secs: u32, ends_at: Option<tokio::time::Instant>) {
        let ends = ends_at.map_or(u64::MAX, record::instant_to_unix_ms);
        self.storage.push([Op::Put(
            self.key(client_id, b'm', &[]),
            record::encode_meta(secs, Some(ends)).into(),
        )]);
    }

    fn credential_set(&self, client_id: &str, credential: &crate::auth::Credential) {
        self.storage.push([Op::Put(
            self.key(client_id, b'a', &[]),
            record::encode_credential(credential).into(),
        )]);
    }

    fn will_pending(&self, client_id: &str, will: Option<(&Message, tokio::time::Instant)>) {
        let key = self.key(client_id, b'w', &[]);
        match will {
            Some((m, due)) => self.storage.push([Op::Put(
                key,
                record::encode_will(m, record::instant_to_unix_ms(due)).into(),
            )]),
            None => self.storage.push([Op::Delete(key)]),
        }
    }

    fn ended(&self, client_id: &str) {
        self.storage.push([Op::DeletePrefix(
            record::session_prefix(&self.tenant, client_id).into(),
        )]);
    }

    fn durable(&self) -> Option<&Storage> {
        Some(&self.storage)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use starling_codec::QoS;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::auth::directory::{Directory, TenantState};
    use crate::metrics::Metrics;
    use crate::tasks::Tasks;

    fn config(sync: SyncPolicy) -> StorageConfig {
        StorageConfig {
            sync,
            interval_ms: 20,
            repair: false,
            cache_mb: 4,
        }
    }

    fn retained(topic: &str) -> Message {
        Message::new(
            topic,
            b"v",
            QoS::AtLeastOnce,
            true,
            &Default::default(),
            None,
            None,
        )
    }

    #[tokio::test]
    async fn waiters_complete_after_the_commit_that_holds_their_changes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &config(SyncPolicy::Sync), None).unwrap();
        let t = storage.tenant("t");
        let mut waits = Vec::new();
        for i in 0..200 {
            t.retained_set(&retained(&format!("a/{i}")));
            waits.push(storage.durable().expect("sync waits"));
        }
        for w in waits {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        storage.close().await;
        let again = Storage::open(dir.path(), &config(SyncPolicy::Sync), None).unwrap();
        assert_eq!(again.take_restored("t").unwrap().retained.len(), 200);
        again.close().await;
    }

    #[tokio::test]
    async fn with_interval_nothing_waits_and_close_writes_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &config(SyncPolicy::Interval), None).unwrap();
        assert!(storage.durable().is_none());
        storage.tenant("t").retained_set(&retained("x"));
        storage.close().await;
        let again = Storage::open(dir.path(), &config(SyncPolicy::Interval), None).unwrap();
        assert_eq!(again.take_restored("t").unwrap().retained.len(), 1);
        again.close().await;
    }

    #[tokio::test]
    async fn tenants_are_apart_on_disk_and_a_deleted_tenant_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &config(SyncPolicy::Sync), None).unwrap();
        let tracker = TaskTracker::new();
        let directory = Directory::new(
            crate::config::Limits::default(),
            crate::hook::HookSettings::default(),
            Arc::new(Metrics::new()),
            Tasks::new(tracker.clone(), CancellationToken::new()),
            Some(storage.clone()),
        );
        for name in ["t1", "t10"] {
            directory.apply(name, &TenantState::default()).unwrap();
            let tenant = directory.tenant(name).unwrap().tenant.clone();
            tenant
                .publish(Arc::new(retained(&format!("{name}/r"))), &mut Vec::new())
                .unwrap();
        }
        // The same topic in two tenants is two records.
        for name in ["t1", "t10"] {
            let tenant = directory.tenant(name).unwrap().tenant.clone();
            tenant
                .publish(Arc::new(retained("same")), &mut Vec::new())
                .unwrap();
        }
        assert!(directory.remove("t1"));
        storage.durable().unwrap().await.unwrap().unwrap();
        storage.close().await;
        let again = Storage::open(dir.path(), &config(SyncPolicy::Sync), None).unwrap();
        assert!(again.take_restored("t1").is_none(), "t1's state is deleted");
        let mut kept: Vec<String> = again
            .take_restored("t10")
            .unwrap()
            .retained
            .iter()
            .map(|m| m.topic.as_str().to_string())
            .collect();
        kept.sort();
        assert_eq!(kept, ["same", "t10/r"]);
        again.close().await;
    }

    /// The writes fail through [`Faults`] (a full disk cannot be had on demand here).
    #[tokio::test]
    async fn a_failed_commit_is_retried_until_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let storage =
            Storage::open(dir.path(), &config(SyncPolicy::Sync), Some(faults.clone())).unwrap();
        faults.disk_full();
        storage.tenant("t").retained_set(&retained("kept"));
        assert_eq!(
            storage.durable().unwrap().await.unwrap(),
            Err(Failure::DiskFull)
        );
        assert_eq!(storage.failure(), Some(Failure::DiskFull));
        assert_eq!(Failure::DiskFull.reason(), ReasonCode::QUOTA_EXCEEDED);
        assert_eq!(Failure::Io.reason(), ReasonCode::UNSPECIFIED_ERROR);
        faults.clear();
        // The writer retries on its own; a waiter registered now completes with that commit.
        let mut ok = storage.durable().unwrap().await.unwrap();
        for _ in 0..100 {
            if ok.is_ok() {
                break;
            }
            ok = storage.durable().unwrap().await.unwrap();
        }
        assert_eq!(ok, Ok(()));
        assert_eq!(storage.failure(), None);
        storage.close().await;
        let again = Storage::open(dir.path(), &config(SyncPolicy::Sync), None).unwrap();
        assert_eq!(again.take_restored("t").unwrap().retained.len(), 1);
        again.close().await;
    }

    #[test]
    fn the_time_the_broker_was_down_counts_against_session_expiry() {
        let now = record::unix_ms_now();
        let meta = |secs, ends| record::encode_meta(secs, ends);
        let key = |c: &str| record::session_key("t", c, b'm', &[]);
        let records = vec![
            // Went offline; ends in an hour.
            (key("later"), meta(7200, Some(now + 3_600_000))),
            // Went offline; its end passed while the broker was down.
            (key("gone"), meta(60, Some(now - 1))),
            (
                record::session_key("t", "gone", b'f', b"a/#"),
                record::encode_subscription(&SubscriptionRecord {
                    options: Default::default(),
                    id: None,
                }),
            ),
            // Never ends.
            (key("forever"), meta(u32::MAX, Some(u64::MAX))),
            // Connected when the broker stopped, 10 minutes ago: offline since then.
            (key("was-on"), meta(60, None)),
            (
                record::LAST_COMMIT_KEY.to_vec(),
                (now - 600_000).to_be_bytes().to_vec(),
            ),
            // A subscription without its session's meta record: left over.
            (
                record::session_key("t", "orphan", b'f', b"x"),
                record::encode_subscription(&SubscriptionRecord {
                    options: Default::default(),
                    id: Some(1),
                }),
            ),
        ];
        let mut records = records;
        records.sort();
        let (tenants, bad, cleanup) = restore(&records);
        assert_eq!(bad, 0);
        let t = &tenants["t"];
        let kept: Vec<&str> = t.sessions.keys().map(String::as_str).collect();
        assert_eq!(kept, ["forever", "later"]);
        assert_eq!(t.sessions["forever"].ends_at, None);
        assert_eq!(t.sessions["later"].ends_at, Some(now + 3_600_000));
        let deleted: Vec<Vec<u8>> = cleanup
            .iter()
            .filter_map(|op| match op {
                Op::DeletePrefix(p) => Some(p.to_vec()),
                _ => None,
            })
            .collect();
        for gone in ["gone", "was-on", "orphan"] {
            assert!(
                deleted.contains(&record::session_prefix("t", gone)),
                "{gone} is deleted"
            );
        }
        // A record that does not read back is counted (the start refuses it without repair).
        let (_, bad, _) = restore(&[(record::retained_key("t", "x"), vec![1, 2])]);
        assert_eq!(bad, 1);
    }

    #[tokio::test]
    async fn a_store_in_use_is_refused_and_never_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let first = Storage::open(dir.path(), &config(SyncPolicy::Sync), None).unwrap();
        let repair = StorageConfig {
            repair: true,
            ..config(SyncPolicy::Sync)
        };
        let err = Storage::open(dir.path(), &repair, None).unwrap_err();
        assert!(matches!(err, OpenError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("state.redb"), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("store"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [engine::FILE], "nothing moved aside");
        first.close().await;
    }

    #[test]
    fn a_batch_keeps_only_the_last_change_of_each_key_between_prefix_deletions() {
        let put = |k: &str, v: &str| Op::Put(k.as_bytes().into(), v.as_bytes().into());
        let del = |k: &str| Op::Delete(k.as_bytes().into());
        let new = |k: &str| Op::PutNew(k.as_bytes().into(), b"q".as_slice().into());
        let ops = vec![
            put("a", "1"),
            put("b", "1"),
            del("a"),
            put("a", "2"),
            new("q1"),
            new("q2"),
            Op::DeletePrefix(b"b".as_slice().into()),
            put("b", "2"),
            del("c"),
            put("b", "3"),
            del("q1"),
            new("q3"),
            del("q3"),
        ];
        let out: Vec<String> = coalesce(ops)
            .iter()
            .map(|op| match op {
                Op::Put(k, v) | Op::PutNew(k, v) => format!(
                    "put {} {}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                ),
                Op::Delete(k) => format!("del {}", String::from_utf8_lossy(k)),
                Op::DeletePrefix(k) => format!("prefix {}", String::from_utf8_lossy(k)),
            })
            .collect();
        // q1 was created before the prefix deletion: its deletion stays; q3 never existed.
        assert_eq!(
            out,
            [
                "put b 1", "put a 2", "put q1 q", "put q2 q", "prefix b", "del c", "put b 3",
                "del q1"
            ]
        );
    }
}
