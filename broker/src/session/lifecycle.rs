//! A session's lifecycle apart from any one connection: a takeover, what a permission change
//! leaves of it, going offline (its will, now or after the will delay, and its expiry timer),
//! and its end (subscriptions removed, a pending will published, unacknowledged shared
//! messages handed to another member of their group).

use std::sync::Arc;
use std::time::Duration;

use starling_codec::{MqttString, QoS};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Inflight, Kick, PendingWill, Session, SessionState, SubscriptionRecord};
use crate::auth::{Credential, Permissions};
use crate::hook::Verdict;
use crate::message::Message;
use crate::metrics::DropReason;
use crate::tenant::{Tenant, split_shared};

/// How often a takeover repeats its request while the old connection is still closing.
const TAKEOVER_RETRY: Duration = Duration::from_millis(100);

/// Waits for the connection serving `session` to close, asking it again and again.
pub(crate) async fn take_over(session: &Arc<Session>) -> OwnedMutexGuard<SessionState> {
    loop {
        session.kick(Kick::TakenOver);
        tokio::select! {
            guard = session.state.clone().lock_owned() => return guard,
            _ = tokio::time::sleep(TAKEOVER_RETRY) => {}
        }
    }
}

/// Makes what a session carries fit `permissions`, before anything more is sent: the
/// subscriptions it no longer allows are removed (with the retained messages they were still
/// owed), and queued and in-flight messages on topics it may not read are dropped and counted
/// (`not_readable`). For a resumption with another credential, and for re-authentication.
pub(crate) fn recheck_session(
    tenant: &Tenant,
    session: &Session,
    state: &mut SessionState,
    permissions: &dyn Permissions,
) {
    let forbidden: Vec<MqttString> = state
        .subscriptions()
        .keys()
        .filter(|full| !permissions.may_subscribe(split_shared(full.as_str()).1))
        .cloned()
        .collect();
    for full in forbidden {
        tenant.unsubscribe(session.id, full.as_str());
        // The retained messages it was still owed go with it.
        state.unsubscribe(full.as_str());
    }
    let mut dropped = session.retain_outbox(|d| permissions.may_read(d.message.topic.as_str()));
    let unreadable: Vec<u16> = state
        .inflight()
        .iter()
        .filter_map(|(id, entry)| match entry {
            Inflight::Published(d) if !permissions.may_read(d.message.topic.as_str()) => Some(id),
            _ => None,
        })
        .collect();
    for id in unreadable {
        state.complete(id);
        dropped += 1;
    }
    tenant
        .metrics
        .count_drops(DropReason::not_readable, dropped);
}

/// Ends `session` because the credential it was let in with no longer holds (`kick` says
/// why): the connection serving it, if any, is closed with the kick's reason and ends the
/// session as it goes; an offline session ends now, or as soon as whoever holds its state
/// lets go. `still` asks whether the session's credential still is one that ended, then: a
/// resumption with a fresh token may have come first. The will, delayed or not, is discarded.
pub(crate) fn end_for_credential(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    kick: Kick,
    still: impl Fn(&Credential) -> bool + Send + 'static,
) {
    if session.kick(kick) {
        return;
    }
    let tasks = tenant.tasks.clone();
    let end = {
        let tenant = tenant.clone();
        let session = session.clone();
        move |state: OwnedMutexGuard<SessionState>| {
            if state.is_ended()
                || session.is_connected()
                || !session.credential().is_some_and(|c| still(&c))
            {
                return;
            }
            info!(client_id = %session.client_id, why = kick.describe(), "session ended");
            end_session(&tenant, &session, state, SessionEnd::Credential);
        }
    };
    match session.state.clone().try_lock_owned() {
        Ok(state) => end(state),
        Err(_) => {
            // A connection is closing or being let in, or a timer runs.
            let state = session.state.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(_) => {
                    tasks.spawn(async move {
                        let state = state.lock_owned().await;
                        end(state);
                    });
                }
                Err(_) => warn!(client_id = %session.client_id, "no runtime to end a session"),
            }
        }
    }
}

/// `will` with its Message Expiry Interval counting from now: the interval is the will's
/// lifetime from its publication, not from the CONNECT that carried it (MQTT 5.0 3.1.3.2.4:
/// "the lifetime of the Will Message ... sent as the Publication Expiry Interval when the
/// Server publishes the Will Message").
fn expiring_from_now(will: Arc<Message>) -> Arc<Message> {
    let Some(secs) = will.properties.message_expiry_interval else {
        return will;
    };
    let mut m = Arc::unwrap_or_clone(will);
    m.expires_at = Some(Instant::now() + Duration::from_secs(u64::from(secs)));
    Arc::new(m)
}

/// Publishes the will of `session`; with an on-publish hook, once the hook lets it through
/// (unless the session's credential has ended meanwhile).
pub(crate) fn publish_will(tenant: &Arc<Tenant>, session: &Session, will: Arc<Message>) {
    let will = expiring_from_now(will);
    if let Some(hook) = tenant.hook() {
        let client_id = will.publisher.clone().unwrap_or_else(|| Arc::from(""));
        let verdict = hook.check(will, client_id, None);
        let tenant = tenant.clone();
        let ended = session.credential_ended().clone();
        tenant.clone().tasks.spawn(async move {
            let verdict = tokio::select! {
                biased;
                _ = ended.cancelled() => return,
                v = verdict => v,
            };
            if let Verdict::Deliver(will) = verdict {
                let _ = tenant.publish(will, &mut Vec::new());
            }
        });
        return;
    }
    let mut scratch = Vec::new();
    // A retained will the store refuses is counted and logged by the tenant.
    let _ = tenant.publish(will, &mut scratch);
}

/// Publishes the will of a connection lost with its replica (`[cluster]`), which another
/// replica took over: the session is not held here, so only the on-publish hook, if any, has a
/// say.
pub(crate) fn publish_lost_will(tenant: &Arc<Tenant>, will: Arc<Message>) {
    let will = expiring_from_now(will);
    if let Some(hook) = tenant.hook() {
        let client_id = will.publisher.clone().unwrap_or_else(|| Arc::from(""));
        let verdict = hook.check(will, client_id, None);
        let t = tenant.clone();
        tenant.tasks.spawn(async move {
            if let Verdict::Deliver(will) = verdict.await {
                let _ = t.publish(will, &mut Vec::new());
            }
        });
        return;
    }
    let _ = tenant.publish(will, &mut Vec::new());
}

/// Why a session ends, for what becomes of its pending will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// Its expiry, a Clean Start, or its connection without a session expiry: a will still
    /// waiting for its delay is published now [MQTT-3.1.2-8].
    Closed,
    /// Its credential no longer holds (expired, revoked, key retired, tenant removed): the
    /// will is discarded, and what the session started and did not finish is dropped.
    Credential,
    /// Another replica took it over (`[cluster]`): it goes on there, so it lets go of
    /// everything here without publishing its will or ending what JetStream keeps of it;
    /// the messages it held from its consumers are given back.
    HandedOver,
}

/// Ends a session: unregisters it, removes its subscriptions, publishes a pending will (unless
/// the credential ended) and hands unacknowledged shared QoS 1 messages to another member of
/// their group (what section 4.8.2 recommends; a QoS 2 one never goes to another member
/// [MQTT-4.8.2-5]).
pub(crate) fn end_session(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    mut state: OwnedMutexGuard<SessionState>,
    why: SessionEnd,
) {
    session.bump_generation();
    if why == SessionEnd::Credential {
        session.credential_ended().cancel();
    }
    tenant.remove_session(session);
    if let Some(cs) = tenant.cluster_sessions() {
        cs.stop_reading(session.id);
    }
    let pending_will = state.take_pending_will();
    let inflight = state.take_inflight();
    for full in state.end().keys() {
        tenant.unsubscribe(session.id, full.as_str());
    }
    if let Some(pending) = pending_will {
        // The session ends before the will delay: publish now [MQTT-3.1.2-8]. A Clean Start
        // that replaces the session also ends it.
        if why == SessionEnd::Closed {
            publish_will(tenant, session, pending.message);
        }
    }
    let mut left = session.drain_outbox();
    if why == SessionEnd::HandedOver {
        // Given back to their consumers (dropping them does), for the replica that goes on.
        return;
    }
    for (_, entry) in inflight {
        if let Inflight::Published(d) = entry {
            left.push(d);
        }
    }
    let mut dropped = 0u64;
    for d in left {
        // Unacknowledged QoS 1 of a shared subscription goes to another member; QoS 2 is never
        // sent to another member [MQTT-4.8.2-5].
        if let (Some(shared), QoS::AtLeastOnce) = (&d.shared, d.qos) {
            if let Some((s, nd)) =
                tenant
                    .router
                    .reroute_shared(&d.message, &shared.filter, &shared.group, session.id)
            {
                s.push(nd, &tenant.metrics);
                continue;
            }
        }
        dropped += 1;
    }
    tenant
        .metrics
        .count_drops(DropReason::session_ended, dropped);
}

/// A session whose connection ended without ending it (see `connection::close`): with no
/// expiry it ends now, its will published first; otherwise the will (if any) goes now or after
/// its delay [MQTT-3.1.2-8], and the session ends at its expiry or when its credential
/// (`credential_deadline`) expires, whichever is sooner: no session outlives its token.
pub(crate) fn go_offline(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    mut state: OwnedMutexGuard<SessionState>,
    will: Option<Arc<Message>>,
    will_delay: u32,
    credential_deadline: Option<Instant>,
) {
    let expiry = state.expiry_interval();
    if expiry == 0 {
        if let Some(w) = will {
            publish_will(tenant, session, w);
        }
        end_session(tenant, session, state, SessionEnd::Closed);
        return;
    }
    // The will waits for its delay, or for the end of the session if that comes first
    // [MQTT-3.1.2-8].
    if let Some(w) = will {
        let delay = will_delay.min(expiry);
        if delay == 0 {
            publish_will(tenant, session, w);
        } else {
            schedule_will(
                tenant,
                session,
                &mut state,
                w,
                Instant::now() + Duration::from_secs(u64::from(delay)),
                false,
            );
        }
    }
    // The session ends at its expiry, or when its credential expires if that is sooner.
    let expires =
        (expiry != u32::MAX).then(|| Instant::now() + Duration::from_secs(u64::from(expiry)));
    let end = match (expires, credential_deadline) {
        (Some(e), Some(c)) if c < e => Some((c, SessionEnd::Credential)),
        (Some(e), _) => Some((e, SessionEnd::Closed)),
        (None, Some(c)) => Some((c, SessionEnd::Credential)),
        (None, None) => None,
    };
    state.went_offline(end.map(|(at, _)| at));
    schedule_end(tenant, session, end);
}

/// Publishes `will` at `due` unless the session is resumed or ends first (the will is then
/// taken from its state); `restored` when it was read back from the store (already written).
pub(crate) fn schedule_will(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    state: &mut SessionState,
    will: Arc<Message>,
    due: Instant,
    restored: bool,
) {
    let pending = PendingWill::new(will.clone());
    let cancel = pending.cancel.clone();
    let claimed = pending.claim_flag();
    if restored {
        state.restore_pending_will(pending);
    } else {
        state.set_pending_will(pending, due);
    }
    let t = tenant.clone();
    let s = session.clone();
    tenant.tasks.spawn_timer(async move {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {
                if !PendingWill::claim(&claimed) {
                    // Resumed or ended in the meantime: that decided.
                    return;
                }
                publish_will(&t, &s, will);
                // Published: neither the session's end nor a restart publishes it again.
                // Whoever holds the state now takes the will itself (a connection resuming
                // the session, its end).
                if let Ok(mut state) = s.state.clone().try_lock_owned() {
                    if !cancel.is_cancelled() {
                        state.take_pending_will();
                    }
                }
            }
            _ = cancel.cancelled() => {}
        }
    });
}

/// Ends the offline `session` at `end` (when, and why), unless it is resumed first.
pub(crate) fn schedule_end(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    end: Option<(Instant, SessionEnd)>,
) {
    if let Some((at, why)) = end {
        let generation = session.generation();
        let t = tenant.clone();
        let s = session.clone();
        tenant.tasks.spawn_timer(async move {
            tokio::time::sleep_until(at).await;
            let state = s.state.clone().lock_owned().await;
            if s.generation() == generation && !s.is_connected() && !state.is_ended() {
                end_session(&t, &s, state, why);
            }
        });
    }
}

/// Carries on here the session `loaded` from JetStream (`[cluster]`): its expiry and its
/// subscriptions, in the router; its consumers are read here from now on.
pub(crate) fn resume_from_cluster(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    state: &mut SessionState,
    loaded: &crate::cluster::sessions::Loaded,
) {
    state.restore_expiry_interval(loaded.expiry_secs);
    for (full, record) in &loaded.subscriptions {
        if route_restored(tenant, session, full, record) {
            state.restore_subscription(full, record.clone());
        } else {
            warn!(tenant = %tenant.name, client_id = %session.client_id, filter = %full,
                "a subscription kept in JetStream was not restored");
        }
    }
    // QoS 2 deliveries the client had received there: PUBREL goes again from here.
    for (order, id) in loaded.releases.iter().enumerate() {
        state.restore_inflight(*id, order as u64, Inflight::Released);
    }
    // QoS 2 PUBLISHes sent there and not answered: their ids are not used again here, nor
    // any of the half of the ids it used.
    for id in &loaded.reserved {
        state.reserve_packet_id(*id);
    }
    state.use_half(loaded.epoch);
    // QoS 2 messages it received there and had not released: a resend is answered, once.
    for id in &loaded.receipts {
        state.restore_receipt(*id);
    }
    if let Some(cs) = tenant.cluster_sessions() {
        cs.adopt(&session.client_id, loaded);
    }
}

/// Puts a restored subscription of `session` to `full` (a shared one's `$share/<group>/` included)
/// back in the router, counted like a new one if the router did not hold it yet. Returns false if
/// the router refused it.
fn route_restored(
    tenant: &Arc<Tenant>,
    session: &Arc<Session>,
    full: &str,
    record: &SubscriptionRecord,
) -> bool {
    let (group, filter) = split_shared(full);
    let Ok(existed) = tenant.router.subscribe(
        session,
        filter,
        group,
        record.options,
        record.id,
        usize::MAX,
    ) else {
        return false;
    };
    if !existed {
        tenant.metrics.subscriptions.inc();
        if let Some(group) = group {
            tenant.shared_subscribed(group, filter);
        }
    }
    true
}

/// Puts back what `tenant` had in the durable store at start: its retained messages (their
/// expiry still running), and its sessions offline, with their subscriptions in the router,
/// their queues, in-flight messages, QoS 2 receipts, delayed wills and expiry timers, as if
/// their connections had just ended (the time the broker was down counts).
pub(crate) fn restore_tenant(tenant: &Arc<Tenant>, restored: crate::storage::RestoredTenant) {
    use crate::storage::record::unix_ms_to_instant;
    let mut refused = 0usize;
    for m in restored.retained {
        if tenant.retained.set(&Arc::new(m)) == crate::retained::RetainOutcome::Full {
            refused += 1;
        }
    }
    if refused > 0 {
        warn!(tenant = %tenant.name, refused,
            "retained messages read back from the store are over the tenant's limits and were left out");
    }
    tenant.metrics.retained.set(tenant.retained.len() as i64);
    let sessions = restored.sessions.len();
    for (client_id, rs) in restored.sessions {
        let (session, _) = tenant.session_or_insert(&client_id);
        let Ok(mut state) = session.state.clone().try_lock_owned() else {
            continue;
        };
        state.restore_expiry_interval(rs.expiry_secs);
        // Revocations, key retirements and the tenant's removal reach it as before the restart.
        session.restore_credential(rs.credential);
        for (full, record) in rs.subscriptions {
            if route_restored(tenant, &session, &full, &record) {
                state.restore_subscription(&full, record);
            } else {
                warn!(tenant = %tenant.name, client_id, filter = %full,
                    "a stored subscription was not restored");
            }
        }
        for (id, order, entry) in rs.inflight {
            state.restore_inflight(id, order, entry);
        }
        for id in rs.receipts {
            state.restore_receipt(id);
        }
        session.restore_queue(rs.queue.into_iter().map(|(_, d)| d));
        if let Some((due, will)) = rs.will {
            schedule_will(
                tenant,
                &session,
                &mut state,
                Arc::new(will),
                unix_ms_to_instant(due),
                true,
            );
        }
        drop(state);
        let end = rs
            .ends_at
            .map(|ms| (unix_ms_to_instant(ms), SessionEnd::Closed));
        schedule_end(tenant, &session, end);
    }
    if sessions > 0 || !tenant.retained.is_empty() {
        info!(tenant = %tenant.name, sessions, retained = tenant.retained.len(), "restored from the store");
    }
}
