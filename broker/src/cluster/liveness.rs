//! Which replicas are alive: each one says so on NATS, and the others take the sessions of
//! one that goes silent.
//!
//! A replica process is one incarnation, [`Liveness::me`]: its replica id and a random number
//! drawn at start (`<replica id>:<16 hex digits>`), so a replica restarted under the same id (a
//! StatefulSet's pod) is a new incarnation and the sessions the old one held are known to be
//! orphaned. Every third of `cluster.replica_timeout_secs` it publishes its incarnation on
//! `starling.<tenant>.alive` of each of its tenants (core NATS, under the prefix the tenant's
//! NATS permissions allow), from start until the end of its graceful shutdown (the connections'
//! last changes written), when it says it leaves (header `Starling-Leaving`). Every replica
//! hears them through its subscription to each tenant's messages.
//!
//! An incarnation not heard for `replica_timeout_secs` is dead, and so is one that left, or one
//! named in a session record and never heard while this replica has been connected to NATS for
//! the timeout. Nothing is judged while this replica is itself cut off from NATS, nor until it
//! has been connected for the timeout after starting or reconnecting: a replica that could not
//! hear the others takes none of them for dead. Each death, and the first moment after start
//! when the others are known, makes this replica read every session record of its tenants
//! ([`super::sessions::ClusterSessions::sweep`]) and take those of dead incarnations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::link::Link;
use crate::storage::record::unix_ms_now;

/// The header of the last heartbeat of a replica that stops gracefully.
pub const LEAVING: &str = "Starling-Leaving";
/// The header of a heartbeat saying when it was sent (Unix ms, the sender's clock).
pub const SENT_AT: &str = "Starling-Sent-At";

/// What is known of an incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Heard within the timeout (or this replica itself).
    Alive,
    /// Not known yet: this replica is not connected to NATS, or has not been for the timeout.
    Unknown,
    /// Dead: last heard at this Unix ms (the moment it is taken to have died).
    Dead(u64),
}

#[derive(Debug)]
struct Heard {
    at: Instant,
    /// When its last heartbeat was sent (Unix ms, its clock; when it was received if unsaid).
    wall_ms: u64,
    left: bool,
    /// Its death was reported once by [`Liveness::tick`].
    reported: bool,
}

#[derive(Debug)]
struct Inner {
    heard: HashMap<Arc<str>, Heard>,
    /// Connected to NATS since then; `None` while not connected.
    since: Option<Instant>,
    /// Whether the sweep after the last (re)connection has been asked for.
    swept: bool,
}

/// The liveness of the replicas as this one sees it (see the module documentation).
#[derive(Debug)]
pub struct Liveness {
    me: Arc<str>,
    timeout: Duration,
    inner: Mutex<Inner>,
}

impl Liveness {
    /// The liveness seen by a new incarnation of `replica`, which takes others for dead after
    /// `timeout`.
    pub fn new(replica: &str, timeout: Duration) -> Self {
        Self {
            me: format!("{replica}:{:016x}", rand::random::<u64>()).into(),
            timeout,
            inner: Mutex::new(Inner {
                heard: HashMap::new(),
                since: None,
                swept: false,
            }),
        }
    }

    /// This incarnation: the replica id and a random number drawn at start.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// How long an incarnation may go unheard.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often this replica says it is alive: a third of the timeout.
    pub fn period(&self) -> Duration {
        (self.timeout / 3).max(Duration::from_millis(100))
    }

    /// A heartbeat from another replica ([`heartbeat_subject`]).
    pub fn heard_message(&self, m: &async_nats::Message) {
        let left = m.headers.as_ref().is_some_and(|h| h.get(LEAVING).is_some());
        let sent = m
            .headers
            .as_ref()
            .and_then(|h| h.get(SENT_AT))
            .and_then(|v| v.as_str().parse().ok());
        if let Ok(holder) = std::str::from_utf8(&m.payload) {
            self.heard(holder, left, sent);
        }
    }

    /// `holder` said it is alive at `sent` (Unix ms; `left`: it stops now).
    fn heard(&self, holder: &str, left: bool, sent: Option<u64>) {
        if holder == &*self.me {
            return;
        }
        let mut inner = self.inner.lock();
        let now = Instant::now();
        let wall_ms = sent.unwrap_or_else(unix_ms_now);
        match inner.heard.get_mut(holder) {
            Some(h) => {
                h.at = now;
                h.wall_ms = h.wall_ms.max(wall_ms);
                h.left |= left;
                if !left {
                    h.reported = false;
                }
            }
            None => {
                inner.heard.insert(
                    holder.into(),
                    Heard {
                        at: now,
                        wall_ms,
                        left,
                        reported: false,
                    },
                );
            }
        }
    }

    /// The connection to NATS is up (`true`, from now) or down.
    fn connected(&self, up: bool) {
        let mut inner = self.inner.lock();
        if up {
            if inner.since.is_none() {
                inner.since = Some(Instant::now());
                inner.swept = false;
            }
        } else {
            inner.since = None;
        }
    }

    /// What is known of `holder`.
    pub fn fate(&self, holder: &str) -> Fate {
        if holder == &*self.me {
            return Fate::Alive;
        }
        let inner = self.inner.lock();
        let now = Instant::now();
        if inner
            .since
            .is_none_or(|s| now.duration_since(s) < self.timeout)
        {
            return Fate::Unknown;
        }
        match inner.heard.get(holder) {
            Some(h) if h.left => Fate::Dead(h.wall_ms),
            Some(h) if now.duration_since(h.at) < self.timeout => Fate::Alive,
            Some(h) => Fate::Dead(h.wall_ms),
            // Never heard while this replica listened for the whole timeout.
            None => Fate::Dead(unix_ms_now().saturating_sub(millis(self.timeout))),
        }
    }

    /// Whether `holder` was alive at `at` (Unix ms, this replica's clock): `Some(true)` once a
    /// heartbeat it sent after it (by its clock) came, `Some(false)` if it is dead and was last heard before, `None`
    /// while that is not known yet.
    pub fn alive_after(&self, holder: &str, at: u64) -> Option<bool> {
        if holder == &*self.me {
            return Some(true);
        }
        let last = self.inner.lock().heard.get(holder).map(|h| h.wall_ms);
        if last.is_some_and(|sent| sent > at) {
            return Some(true);
        }
        match self.fate(holder) {
            // Never heard at all: dead before.
            Fate::Dead(_) => Some(last.is_some_and(|sent| sent > at)),
            Fate::Alive | Fate::Unknown => None,
        }
    }

    /// Whether a sweep is due: the first moment the others are known after a (re)connection, or
    /// an incarnation heard before has died since the last call. Forgets incarnations dead for
    /// long (an hour past the timeout).
    fn tick(&self) -> bool {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        let Some(since) = inner.since else {
            return false;
        };
        if now.duration_since(since) < self.timeout {
            return false;
        }
        let mut due = !std::mem::replace(&mut inner.swept, true);
        let timeout = self.timeout;
        inner.heard.retain(|holder, h| {
            let silent = now.duration_since(h.at);
            if (h.left || silent >= timeout) && !h.reported {
                h.reported = true;
                due = true;
                info!(replica = %holder, "cluster: a replica is gone; its sessions are taken over");
            }
            silent < timeout + Duration::from_secs(3600)
        });
        due
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The heartbeat subject of `tenant`'s replicas: `starling.<tenant>.alive` (under the tenant's
/// prefix, which its NATS permissions allow; the subscription to the tenant's messages hears it,
/// [`Liveness::heard_message`]).
pub fn heartbeat_subject(tenant: &str) -> String {
    format!("{}.alive", super::subject::tenant_prefix(tenant))
}

/// Says this replica is alive, on the heartbeat subject of each of its tenants, and sweeps the
/// sessions of the dead, until `done` (the end of a graceful shutdown, when it says it leaves,
/// [`leave`]) or the link is gone.
pub(super) fn start(link: &Arc<Link>, done: CancellationToken) {
    let weak: Weak<Link> = Arc::downgrade(link);
    let liveness = link.liveness().clone();
    let client = link.client().clone();
    let sweeping = Arc::new(AtomicBool::new(false));
    let again = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(liveness.period());
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = done.cancelled() => break,
                _ = beat.tick() => {}
            }
            let Some(link) = weak.upgrade() else { return };
            let up = link.is_connected();
            liveness.connected(up);
            if up {
                for sessions in link.all_sessions() {
                    let mut headers = HeaderMap::new();
                    headers.insert(SENT_AT, unix_ms_now().to_string().as_str());
                    let body = Bytes::copy_from_slice(liveness.me().as_bytes());
                    let subject = heartbeat_subject(sessions.tenant_name());
                    if let Err(e) = client.publish_with_headers(subject, headers, body).await {
                        warn!(error = %e, "cluster: a heartbeat was not sent");
                    }
                }
            }
            if liveness.tick() {
                sweep(&link, &sweeping, &again);
            }
        }
    });
}

/// The last heartbeat of `link`'s replica, which stops gracefully: the others take it for dead
/// at once.
pub(super) async fn leave(link: &Link) {
    for sessions in link.all_sessions() {
        let mut headers = HeaderMap::new();
        headers.insert(LEAVING, "1");
        headers.insert(SENT_AT, unix_ms_now().to_string().as_str());
        let bye = Bytes::copy_from_slice(link.liveness().me().as_bytes());
        let subject = heartbeat_subject(sessions.tenant_name());
        let _ = link
            .client()
            .publish_with_headers(subject, headers, bye)
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), link.client().flush()).await;
}

/// Sweeps every tenant's sessions, in one task at a time: asked while one runs, it runs again
/// after.
fn sweep(link: &Arc<Link>, sweeping: &Arc<AtomicBool>, again: &Arc<AtomicBool>) {
    again.store(true, Ordering::SeqCst);
    if sweeping.swap(true, Ordering::SeqCst) {
        return;
    }
    let link = link.clone();
    let (sweeping, again) = (sweeping.clone(), again.clone());
    tokio::spawn(async move {
        loop {
            while again.swap(false, Ordering::SeqCst) {
                for sessions in link.all_sessions() {
                    sessions.sweep().await;
                }
            }
            sweeping.store(false, Ordering::SeqCst);
            // Asked between the last round and the reset: this task goes on, unless another
            // started.
            if !again.load(Ordering::SeqCst) || sweeping.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nothing_is_judged_before_the_timeout_and_the_silent_die() {
        let l = Liveness::new("a", Duration::from_secs(3));
        assert!(l.me().starts_with("a:"));
        assert_eq!(l.fate(l.me()), Fate::Alive);
        l.heard("b:1", false, None);
        assert_eq!(l.fate("b:1"), Fate::Unknown, "not connected");
        l.connected(true);
        assert_eq!(
            l.fate("c:1"),
            Fate::Unknown,
            "not connected for the timeout yet"
        );
        assert!(!l.tick());
        tokio::time::advance(Duration::from_secs(2)).await;
        l.heard("b:1", false, None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(l.tick(), "the first sweep once the others are known");
        assert!(!l.tick());
        assert_eq!(l.fate("b:1"), Fate::Alive);
        assert!(matches!(l.fate("c:1"), Fate::Dead(_)), "never heard");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(l.fate("b:1"), Fate::Dead(_)));
        assert!(l.tick(), "b's death");
        assert!(!l.tick(), "reported once");
        // Cut off from NATS: nothing is judged until connected for the timeout again.
        l.connected(false);
        assert_eq!(l.fate("b:1"), Fate::Unknown);
        l.connected(true);
        assert_eq!(l.fate("b:1"), Fate::Unknown);
        l.heard("d:1", false, None);
        l.heard("d:1", true, None);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(l.fate("d:1"), Fate::Dead(_)), "left");
        assert!(l.tick());
        // Alive after a moment: known once heard after it, or dead before it.
        let at = unix_ms_now();
        l.heard("e:1", false, None);
        assert_eq!(l.alive_after("e:1", at + 10_000), None);
        assert_eq!(l.alive_after("d:1", at + 10_000), Some(false));
        assert_eq!(l.alive_after(l.me(), at), Some(true));
        assert_eq!(l.alive_after("never:1", at), Some(false));
    }
}
