//! Leader election with a `coordination.k8s.io/v1` Lease, so several operator replicas can run
//! and exactly one reconciles.
//!
//! A replica holds the Lease while it renews it within `leaseDurationSeconds`; another replica
//! takes it over only once the holder's last renewal is older than that. Every write carries the
//! Lease's `resourceVersion`, so two replicas racing for it cannot both win (the loser gets 409).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api,
    api::{PatchParams, PostParams},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One replica's handle on the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    /// A lock on Lease `name` (in `api`'s namespace) for the replica `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the Lease. `Ok(true)` while this replica holds it.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
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
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held_for =
            SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| t.0 + held_for < now);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
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
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown), so another replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
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
    }

    /// Waits until this replica leads (or `shutdown`), then keeps renewing in the background.
    /// The returned token is cancelled when leadership is lost or on `shutdown`.
    pub async fn lead(&self, shutdown: &CancellationToken) -> Option<CancellationToken> {
        let retry = self.duration / 3;
        let mut told = false;
        loop {
            match self.try_acquire_or_renew(Timestamp::now()).await {
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
            let mut last_renewal = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(retry) => {}
                }
                match me.try_acquire_or_renew(Timestamp::now()).await {
                    Ok(true) => last_renewal = tokio::time::Instant::now(),
                    Ok(false) => {
                        warn!("another replica took the lease");
                        token.cancel();
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "renewing the lease failed");
                        if last_renewal.elapsed() >= me.duration {
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
            Duration::from_secs(15),
        )
    }

    #[tokio::test]
    async fn one_replica_leads_until_its_lease_expires() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let store = Arc::new(Mutex::new(None));
            let client = serve(store.clone());
            let (a, b) = (lock(&client, "a"), lock(&client, "b"));
            let t0 = Timestamp::from_second(1_800_000_000).expect("t0");
            assert!(
                a.try_acquire_or_renew(t0).await.expect("a"),
                "the first replica takes a free lease"
            );
            assert!(
                !b.try_acquire_or_renew(t0 + SignedDuration::from_secs(5))
                    .await
                    .expect("b"),
                "held and fresh"
            );
            assert!(
                a.try_acquire_or_renew(t0 + SignedDuration::from_secs(10))
                    .await
                    .expect("a renews")
            );
            assert!(
                !b.try_acquire_or_renew(t0 + SignedDuration::from_secs(20))
                    .await
                    .expect("b"),
                "renewed at 10 s"
            );
            assert!(
                b.try_acquire_or_renew(t0 + SignedDuration::from_secs(26))
                    .await
                    .expect("b"),
                "expired at 25 s"
            );
            let lease = store.lock().expect("lock").clone().expect("lease");
            assert_eq!(lease["spec"]["holderIdentity"], "b");
            assert_eq!(lease["spec"]["leaseTransitions"], 1);
            assert!(
                !a.try_acquire_or_renew(t0 + SignedDuration::from_secs(27))
                    .await
                    .expect("a"),
                "a lost it"
            );
        })
        .await
        .expect("within the timeout");
    }
}
