//! Leader election with a `coordination.k8s.io/v1` Lease, so several operator replicas can run
//! and exactly one reconciles.
//!
//! The timings follow client-go's leader election: the holder renews every `retry` period and
//! gives leadership up when it has not renewed within the `renew deadline`, which is shorter than
//! the `lease duration`, so it stops reconciling before anyone else may start. Another replica
//! takes the Lease over only once it has seen the same record (the `resourceVersion`) unchanged
//! for a whole lease duration on its own monotonic clock: no replica compares its wall clock with
//! a `renewTime` another node wrote, so clock skew between nodes cannot cause two leaders. Every
//! write carries the Lease's `resourceVersion`, so two replicas racing for it cannot both win
//! (the loser gets 409), and every call to the API server is bounded by the retry period.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api,
    api::{PatchParams, PostParams},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a Lease lasts, how soon its holder must have renewed it, and how often it tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `leaseDurationSeconds`: how long others wait after the last change they saw.
    pub lease_duration: Duration,
    /// The holder stops leading when it has not renewed for this long (less than the lease).
    pub renew_deadline: Duration,
    /// How often the holder renews and a candidate retries; also the timeout of one call.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The record a candidate last saw and when, on its own monotonic clock.
#[derive(Clone, Debug)]
struct Observed {
    version: String,
    at: Instant,
}

/// One replica's handle on the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observed: Arc<Mutex<Option<Observed>>>,
}

/// Why a call about the Lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server answered with an error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The API server did not answer within the retry period.
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    /// A lock on Lease `name` (in `api`'s namespace) for the replica `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: Arc::new(Mutex::new(None)),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Notes the record `version` seen at `at`; answers how long it has been unchanged.
    fn unchanged_for(&self, version: &str, at: Instant) -> Duration {
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match observed.as_ref() {
            Some(o) if o.version == version => at.saturating_duration_since(o.at),
            _ => {
                *observed = Some(Observed {
                    version: version.to_owned(),
                    at,
                });
                Duration::ZERO
            }
        }
    }

    /// Takes or renews the Lease. `Ok(true)` while this replica holds it. `at` is the local
    /// monotonic time, the only clock that decides whether another holder's Lease has expired.
    pub async fn try_acquire_or_renew(&self, at: Instant) -> Result<bool, LeaseError> {
        let limit = self.timing.retry_period;
        tokio::time::timeout(limit, self.acquire_or_renew(at))
            .await
            .map_err(|_| LeaseError::Timeout(limit))?
    }

    async fn acquire_or_renew(&self, at: Instant) -> Result<bool, LeaseError> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let expired = self.unchanged_for(&version, at) >= held_for.max(self.timing.lease_duration);
        if !(mine || free || expired) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if mine {
            self.spec(now, spec.acquire_time.map_or(now, |t| t.0), transitions)
        } else {
            self.spec(now, now, transitions.saturating_add(1))
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up (on shutdown), so another replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let limit = self.timing.retry_period;
        tokio::time::timeout(limit, async {
            let patch = serde_json::json!({"spec": {"holderIdentity": null, "renewTime": null}});
            let lease = self.api.get_opt(&self.name).await?;
            if lease
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .as_deref()
                == Some(self.identity.as_str())
            {
                self.api
                    .patch(
                        &self.name,
                        &PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await?;
            }
            Ok(())
        })
        .await
        .map_err(|_| LeaseError::Timeout(limit))?
    }

    /// Waits until this replica leads (or `shutdown`), then keeps renewing in the background.
    /// The returned token is cancelled when leadership is lost (another holder, or no renewal
    /// within the renew deadline) or on `shutdown`.
    pub async fn lead(&self, shutdown: &CancellationToken) -> Option<CancellationToken> {
        let retry = self.timing.retry_period;
        let mut told = false;
        loop {
            match self.try_acquire_or_renew(Instant::now()).await {
                Ok(true) => break,
                Ok(false) if !told => {
                    info!(identity = %self.identity, lease = %self.name, "another replica leads; standing by");
                    told = true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(retry) => {}
            }
        }
        info!(identity = %self.identity, lease = %self.name, "leading");
        let lost = shutdown.child_token();
        let me = self.clone();
        let token = lost.clone();
        tokio::spawn(async move {
            let mut last_renewal = Instant::now();
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(retry) => {}
                }
                match me.try_acquire_or_renew(Instant::now()).await {
                    Ok(true) => last_renewal = Instant::now(),
                    Ok(false) => {
                        warn!("another replica took the lease");
                        token.cancel();
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "renewing the lease failed");
                        if last_renewal.elapsed() >= me.timing.renew_deadline {
                            warn!("no renewal within the renew deadline; giving leadership up");
                            token.cancel();
                            break;
                        }
                    }
                }
            }
        });
        Some(lost)
    }
}

#[cfg(test)]
mod tests {
    //! Against the mock API server of the controller tests' kind: a store of one Lease that
    //! checks `resourceVersion` on replace like the API server does.
    use std::sync::{Arc, Mutex};

    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt as _;
    use kube::{Client, client::Body};
    use serde_json::{Value, json};

    use super::*;

    fn serve(store: Arc<Mutex<Option<Value>>>) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().clone();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut s = store.lock().expect("lock");
                let (status, answer) = match (method.as_str(), s.clone()) {
                    ("GET", Some(l)) => (StatusCode::OK, l),
                    ("GET", None) => (
                        StatusCode::NOT_FOUND,
                        json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
                    ),
                    ("POST", None) | ("PUT", Some(_)) => {
                        let mut l: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let current = s.as_ref().map(|c| c["metadata"]["resourceVersion"].clone());
                        if let Some(rv) =
                            current.filter(|rv| *rv != l["metadata"]["resourceVersion"])
                        {
                            drop(rv);
                            (
                                StatusCode::CONFLICT,
                                json!({"kind": "Status", "code": 409, "reason": "Conflict"}),
                            )
                        } else {
                            let next = s
                                .as_ref()
                                .and_then(|c| {
                                    c["metadata"]["resourceVersion"]
                                        .as_str()?
                                        .parse::<u64>()
                                        .ok()
                                })
                                .unwrap_or(0)
                                + 1;
                            l["metadata"]["resourceVersion"] = json!(next.to_string());
                            *s = Some(l.clone());
                            (StatusCode::OK, l)
                        }
                    }
                    ("POST", Some(_)) => (
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "code": 409, "reason": "AlreadyExists"}),
                    ),
                    _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
                };
                drop(s);
                let resp = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                    .expect("response");
                send.send_response(resp);
            }
        });
        Client::new(service, "starling-system")
    }

    fn lock(client: &Client, who: &str) -> LeaseLock {
        LeaseLock::new(
            Api::namespaced(client.clone(), "starling-system"),
            "starling-operator",
            who,
            Timing::default(),
        )
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_holder_gives_up_before_anyone_may_take_over() {
        let t = Timing::default();
        assert!(t.renew_deadline < t.lease_duration, "{t:?}");
        assert!(t.retry_period < t.renew_deadline, "{t:?}");
    }

    #[tokio::test]
    async fn one_replica_leads_until_its_lease_expires() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let store = Arc::new(Mutex::new(None));
            let client = serve(store.clone());
            let (a, b) = (lock(&client, "a"), lock(&client, "b"));
            let t0 = Instant::now();
            assert!(
                a.try_acquire_or_renew(t0).await.expect("a"),
                "the first replica takes a free lease"
            );
            assert!(
                !b.try_acquire_or_renew(t0 + secs(5)).await.expect("b"),
                "held and fresh"
            );
            assert!(
                a.try_acquire_or_renew(t0 + secs(10))
                    .await
                    .expect("a renews")
            );
            assert!(
                !b.try_acquire_or_renew(t0 + secs(20)).await.expect("b"),
                "b saw the renewal at 20 s"
            );
            assert!(
                !b.try_acquire_or_renew(t0 + secs(34)).await.expect("b"),
                "unchanged for 14 s only"
            );
            assert!(
                b.try_acquire_or_renew(t0 + secs(36)).await.expect("b"),
                "unchanged for a whole lease duration on b's clock"
            );
            let lease = store.lock().expect("lock").clone().expect("lease");
            assert_eq!(lease["spec"]["holderIdentity"], "b");
            assert_eq!(lease["spec"]["leaseTransitions"], 1);
            assert!(
                !a.try_acquire_or_renew(t0 + secs(37)).await.expect("a"),
                "a lost it"
            );
        })
        .await
        .expect("within the timeout");
    }

    /// The holder's node clock is a day behind: its `renewTime` looks long expired to anyone
    /// comparing wall clocks. The candidate still waits a whole lease duration of no change.
    #[tokio::test]
    async fn a_skewed_renew_time_does_not_hand_the_lease_over() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let store = Arc::new(Mutex::new(None));
            let client = serve(store.clone());
            let (a, b) = (lock(&client, "a"), lock(&client, "b"));
            let t0 = Instant::now();
            assert!(a.try_acquire_or_renew(t0).await.expect("a"));
            let skewed = |store: &Arc<Mutex<Option<Value>>>| {
                let mut s = store.lock().expect("lock");
                let lease = s.as_mut().expect("lease");
                lease["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
            };
            skewed(&store);
            assert!(
                !b.try_acquire_or_renew(t0 + secs(1)).await.expect("b"),
                "a renewTime in the past says nothing about expiry"
            );
            assert!(
                !b.try_acquire_or_renew(t0 + secs(15)).await.expect("b"),
                "still within a lease duration of b's first look"
            );
            assert!(
                a.try_acquire_or_renew(t0 + secs(15))
                    .await
                    .expect("a renews")
            );
            skewed(&store);
            assert!(
                !b.try_acquire_or_renew(t0 + secs(29)).await.expect("b"),
                "the renewal restarted b's wait"
            );
            assert_eq!(
                store.lock().expect("lock").as_ref().expect("lease")["spec"]["holderIdentity"],
                "a"
            );
        })
        .await
        .expect("within the timeout");
    }

    /// An API server that never answers: every call gives up after the retry period, so a hung
    /// connection cannot keep a holder believing it still leads.
    #[tokio::test(start_paused = true)]
    async fn a_call_that_hangs_times_out() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "starling-system");
        let a = lock(&client, "a");
        let err = a
            .try_acquire_or_renew(Instant::now())
            .await
            .expect_err("no answer");
        assert!(
            matches!(err, LeaseError::Timeout(d) if d == Timing::default().retry_period),
            "{err:?}"
        );
        drop(handle);
    }
}
