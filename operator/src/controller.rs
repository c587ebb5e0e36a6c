//! The `Broker` controller.
//!
//! Each reconcile runs inside the finalizer: `Apply` makes the world match the spec, `Cleanup`
//! deregisters the broker from the api before Kubernetes lets the `Broker` go.
//!
//! Apply, in order (the order the mock API server tests pin down):
//! 1. TLS: read the external Secret (`tls.secretName`), or keep the operator-issued CA and renew
//!    the leaf inside its renewal window;
//! 2. the credential Secret, then the api: read the broker, create it when the api has none and
//!    this `Broker` never registered, otherwise PATCH the fields the spec owns;
//! 3. with a credential in hand: ConfigMap, Service and Deployment by server-side apply (the
//!    pod template carries the checksum of ConfigMap and credential);
//! 4. status by server-side apply, and a Kubernetes Event for anything that went wrong.
//!
//! A failure of the api (unreachable, or the broker deleted there) leaves the running pods
//! alone, marks the `Broker` `Degraded` and requeues with exponential backoff.
//!
//! Before all of that, the tenancy check (`crate::tenancy`): a `Broker` naming a pub/sub
//! namespace its Kubernetes namespace may not use only gets a `Degraded` status
//! (`NamespaceNotAllowed`) and a Warning event; nothing is created, claimed or deleted in the api.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        finalizer::{Event as FinalizerEvent, finalizer},
        watcher,
    },
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api::{BrokerPatch, ControlPlane, CreateBroker, CreateOutcome, ManagedBy, OnPublishUrl},
    certs,
    crd::{Broker, BrokerStatus, Condition, FINALIZER, Phase, TlsStatus},
    error::{Error, Result},
    metrics::Metrics,
    resources::{
        self, Credentials, Settings, ca_from_secret, config_checksum, desired_ca_secret,
        desired_config_map, desired_credentials_secret, desired_deployment, desired_service,
        desired_tls_secret, leaf_from_secret, names,
    },
};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "starling-operator";

/// How often a healthy `Broker` is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);
/// First and longest retry delay after a failure.
const BACKOFF_MIN: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The Starling api.
    pub control_plane: Arc<dyn ControlPlane>,
    /// Operator-wide settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events (and deduplicates repeats into series).
    pub recorder: Recorder,
    /// Consecutive failures per `namespace/name`, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for the controller.
    pub fn new(
        client: Client,
        control_plane: Arc<dyn ControlPlane>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            control_plane,
            settings,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn key(b: &Broker) -> String {
        format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any())
    }

    /// The delay before retrying `b` after its `n`-th consecutive failure: 5 s doubling to 5 min.
    fn next_backoff(&self, b: &Broker) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(Self::key(b)).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    fn reset_backoff(&self, b: &Broker) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&Self::key(b));
    }

    async fn event(&self, b: &Broker, type_: EventType, reason: &str, note: String) {
        let ev = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &b.object_ref(&())).await {
            warn!(broker = %Self::key(b), error = %e, "publishing an event failed");
        }
    }
}

/// Retry delay after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
    BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
}

/// Reconciles one `Broker`.
pub async fn reconcile(b: Arc<Broker>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let start = Instant::now();
    let ns = b
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let brokers: Api<Broker> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&brokers, FINALIZER, b, |event| async {
        match event {
            FinalizerEvent::Apply(b) => apply(&b, &ctx).await,
            FinalizerEvent::Cleanup(b) => cleanup(&b, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    result
}

/// What to do after a failed reconcile: count it and retry with backoff.
pub fn error_policy(b: Arc<Broker>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_error(error.metric_label());
    let delay = ctx.next_backoff(&b);
    warn!(broker = %Context::key(&b), reason = error.metric_label(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

// === apply ===

/// What the TLS step found or did.
struct TlsOutcome {
    not_after: Timestamp,
    renewed: bool,
}

/// What the registration step found or did.
struct Registration {
    credentials: Credentials,
    created: bool,
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn ssa<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    Ok(api
        .patch(&name, &apply_params(), &Patch::Apply(obj))
        .await?)
}

fn renew_window(b: &Broker) -> SignedDuration {
    SignedDuration::from_hours(24 * i64::from(b.spec.tls.renew_before_days))
}

async fn ensure_tls(b: &Broker, secrets: &Api<Secret>) -> Result<TlsOutcome> {
    let now = Timestamp::now();
    if let Some(name) = &b.spec.tls.secret_name {
        let secret = secrets
            .get_opt(name)
            .await?
            .ok_or_else(|| Error::TlsSecret {
                name: name.clone(),
                reason: "not found".to_owned(),
            })?;
        let pem = secret
            .data
            .as_ref()
            .and_then(|d| d.get("tls.crt"))
            .and_then(|c| String::from_utf8(c.0.clone()).ok())
            .ok_or_else(|| Error::TlsSecret {
                name: name.clone(),
                reason: "has no tls.crt".to_owned(),
            })?;
        let info = certs::inspect(&pem).map_err(|e| Error::TlsSecret {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        return Ok(TlsOutcome {
            not_after: info.not_after,
            renewed: false,
        });
    }

    let ca = match secrets
        .get_opt(&names::ca(b))
        .await?
        .as_ref()
        .and_then(ca_from_secret)
    {
        Some(ca) => ca,
        None => {
            let subject = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
            let ca = certs::issue_ca(&subject, now)?;
            ssa(secrets, &desired_ca_secret(b, &ca)).await?;
            ca
        }
    };
    let hosts = resources::tls_hosts(b);
    let current = secrets
        .get_opt(&names::tls(b))
        .await?
        .as_ref()
        .and_then(leaf_from_secret);
    if let Some(leaf) = &current {
        if !certs::leaf_needs_renewal(leaf, &ca, &hosts, now, b.spec.tls.renew_before_days) {
            let info = certs::inspect(&leaf.cert_pem)?;
            return Ok(TlsOutcome {
                not_after: info.not_after,
                renewed: false,
            });
        }
    }
    let leaf = certs::issue_leaf(&ca, &hosts, now, b.spec.tls.validity_days)?;
    ssa(secrets, &desired_tls_secret(b, &leaf)).await?;
    let info = certs::inspect(&leaf.cert_pem)?;
    Ok(TlsOutcome {
        not_after: info.not_after,
        renewed: current.is_some(),
    })
}

fn managed_by(b: &Broker) -> ManagedBy {
    ManagedBy {
        kind: "Broker".to_owned(),
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
    }
}

fn owned_fields(b: &Broker) -> BrokerPatch {
    BrokerPatch {
        description: b.spec.description.clone(),
        expiration: b.spec.expiration,
        on_publish: OnPublishUrl {
            url: b.spec.on_publish.as_ref().map(|o| o.url.clone()),
        },
        limits: resources::limits_json(b),
    }
}

async fn register(
    b: &Broker,
    ctx: &Context,
    existing: Option<Credentials>,
) -> Result<Registration> {
    let api = &ctx.control_plane;
    let ns = b.pubsub_namespace();
    let name = b.name_any();
    let known_id = existing
        .as_ref()
        .map(|c| c.broker_id.clone())
        .or_else(|| b.status.as_ref().and_then(|s| s.broker_id.clone()));

    match api.get_broker(&ns, &name).await? {
        Some(found) => {
            let Some(credentials) = existing else {
                return Err(Error::CredentialsUnavailable(format!("{ns}/{name}")));
            };
            if found.id != credentials.broker_id {
                // Someone deleted and re-created it: it is not ours.
                return Err(Error::DeletedInApi(format!("{ns}/{name}")));
            }
            if !api
                .patch_broker(&ns, &name, &owned_fields(b), &managed_by(b))
                .await?
            {
                return Err(Error::DeletedInApi(format!("{ns}/{name}")));
            }
            Ok(Registration {
                credentials,
                created: false,
            })
        }
        None if known_id.is_some() => Err(Error::DeletedInApi(format!("{ns}/{name}"))),
        None => {
            api.ensure_namespace(&ns).await?;
            let fields = owned_fields(b);
            let req = CreateBroker {
                name: name.clone(),
                description: fields.description,
                expiration: fields.expiration,
                on_publish: fields
                    .on_publish
                    .url
                    .map(|url| OnPublishUrl { url: Some(url) }),
                limits: fields.limits,
                managed_by: managed_by(b),
            };
            match api.create_broker(&ns, &req).await? {
                CreateOutcome::Created(c) => Ok(Registration {
                    credentials: Credentials {
                        broker_id: c.id,
                        secret: c.secret,
                    },
                    created: true,
                }),
                CreateOutcome::AlreadyExists => {
                    Err(Error::CredentialsUnavailable(format!("{ns}/{name}")))
                }
            }
        }
    }
}

/// The tenancy check: `Err` when `b`'s Kubernetes namespace may not use its pub/sub namespace.
fn check_tenancy(b: &Broker, ctx: &Context) -> Result<()> {
    let k8s = b
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let pubsub = b.pubsub_namespace();
    if ctx.settings.tenancy.allows(&k8s, &pubsub) {
        return Ok(());
    }
    Err(Error::NamespaceNotAllowed {
        allowed: ctx.settings.tenancy.allowed_for(&k8s),
        k8s,
        pubsub,
    })
}

/// A `Broker` whose pub/sub namespace its Kubernetes namespace may not use: nothing happens in
/// the api or to its workload, it turns `Degraded` with a Warning event.
async fn refuse(b: &Broker, ctx: &Context, e: Error) -> Result<Action> {
    let ns = b
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let broker_id = b.status.as_ref().and_then(|s| s.broker_id.clone());
    let status = desired_status(b, 0, broker_id, None, Some(&e), Timestamp::now());
    let brokers: Api<Broker> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({ "apiVersion": "starling.dev/v1alpha1", "kind": "Broker", "status": status });
    brokers
        .patch_status(&b.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    ctx.event(b, EventType::Warning, e.metric_label(), e.to_string())
        .await;
    Err(e)
}

async fn apply(b: &Broker, ctx: &Context) -> Result<Action> {
    if let Err(e) = check_tenancy(b, ctx) {
        return refuse(b, ctx, e).await;
    }
    let ns = b
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let client = ctx.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    let tls = ensure_tls(b, &secrets).await;

    let existing = secrets
        .get_opt(&names::credentials(b))
        .await?
        .as_ref()
        .and_then(Credentials::from_secret);
    let registration = register(b, ctx, existing).await;

    let mut ready_replicas = 0;
    let mut broker_id = b.status.as_ref().and_then(|s| s.broker_id.clone());
    if let Ok(reg) = &registration {
        let credentials = desired_credentials_secret(b, &reg.credentials);
        if reg.created {
            // The api shows the secret once: keep it before anything else can fail.
            ssa(&secrets, &credentials).await?;
        }
        broker_id = Some(reg.credentials.broker_id.clone());
        let config = desired_config_map(b, &ctx.settings.broker_hook)?;
        let checksum = config_checksum(&config, &credentials);
        ssa(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &config).await?;
        ssa(
            &Api::<Service>::namespaced(client.clone(), &ns),
            &desired_service(b),
        )
        .await?;
        let deployment =
            desired_deployment(b, &ctx.settings, &reg.credentials.broker_id, &checksum);
        let applied = ssa(
            &Api::<Deployment>::namespaced(client.clone(), &ns),
            &deployment,
        )
        .await?;
        ready_replicas = applied.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    }

    let problem = match (&tls, &registration) {
        (Err(e), _) | (Ok(_), Err(e)) => Some(e),
        _ => None,
    };
    let tls_not_after = tls.as_ref().ok().map(|t| t.not_after);
    let status = desired_status(
        b,
        ready_replicas,
        broker_id,
        tls_not_after,
        problem,
        Timestamp::now(),
    );
    let brokers: Api<Broker> = Api::namespaced(client, &ns);
    let patch = serde_json::json!({ "apiVersion": "starling.dev/v1alpha1", "kind": "Broker", "status": status });
    brokers
        .patch_status(&b.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;

    if let Ok(reg) = &registration {
        if reg.created {
            let note = format!("registered with the api as {}", reg.credentials.broker_id);
            ctx.event(b, EventType::Normal, "Registered", note).await;
        }
    }
    if let Ok(t) = &tls {
        if t.renewed {
            ctx.event(
                b,
                EventType::Normal,
                "CertificateRenewed",
                format!("new certificate valid until {}", t.not_after),
            )
            .await;
        }
    }

    match (tls, registration) {
        (Err(e), _) | (Ok(_), Err(e)) => {
            ctx.event(b, EventType::Warning, e.metric_label(), e.to_string())
                .await;
            Err(e)
        }
        (Ok(t), Ok(_)) => {
            ctx.reset_backoff(b);
            // Come back in time to renew an operator-issued certificate.
            let until_renewal = (t.not_after - renew_window(b)).duration_since(Timestamp::now());
            let until_renewal = Duration::try_from(until_renewal).unwrap_or(Duration::ZERO);
            Ok(Action::requeue(RESYNC.min(until_renewal.max(BACKOFF_MIN))))
        }
    }
}

// === status ===

fn condition(
    old: Option<&BrokerStatus>,
    generation: Option<i64>,
    now: Timestamp,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last = old
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        last_transition_time: last.unwrap_or_else(|| now.to_string()),
        observed_generation: generation,
    }
}

/// The status the operator writes for `b`.
pub fn desired_status(
    b: &Broker,
    ready_replicas: i32,
    broker_id: Option<String>,
    tls_not_after: Option<Timestamp>,
    problem: Option<&Error>,
    now: Timestamp,
) -> BrokerStatus {
    let old = b.status.as_ref();
    let generation = b.metadata.generation;
    let want = b.spec.replicas;
    let rolled_out = ready_replicas >= want;
    let degraded = match problem {
        Some(e) => condition(
            old,
            generation,
            now,
            "Degraded",
            true,
            e.metric_label(),
            e.to_string(),
        ),
        None => condition(
            old,
            generation,
            now,
            "Degraded",
            false,
            "AsExpected",
            String::new(),
        ),
    };
    let progressing = if rolled_out {
        condition(
            old,
            generation,
            now,
            "Progressing",
            false,
            "RolledOut",
            format!("{ready_replicas}/{want} replicas ready"),
        )
    } else {
        condition(
            old,
            generation,
            now,
            "Progressing",
            true,
            "RollingOut",
            format!("{ready_replicas}/{want} replicas ready"),
        )
    };
    let is_ready = problem.is_none() && rolled_out && broker_id.is_some();
    let ready = if is_ready {
        condition(
            old,
            generation,
            now,
            "Ready",
            true,
            "BrokerReady",
            "the broker serves clients".to_owned(),
        )
    } else if let Some(e) = problem {
        condition(
            old,
            generation,
            now,
            "Ready",
            false,
            e.metric_label(),
            e.to_string(),
        )
    } else {
        condition(
            old,
            generation,
            now,
            "Ready",
            false,
            "RollingOut",
            format!("{ready_replicas}/{want} replicas ready"),
        )
    };
    let phase = if problem.is_some() {
        Phase::Degraded
    } else if is_ready {
        Phase::Ready
    } else {
        Phase::Pending
    };
    BrokerStatus {
        observed_generation: generation,
        conditions: vec![ready, progressing, degraded],
        phase: Some(phase),
        ready_replicas,
        broker_id,
        endpoints: Some(b.endpoints()),
        tls: Some(TlsStatus {
            secret_name: Some(names::tls(b)),
            not_after: tls_not_after.map(|t| t.to_string()),
        }),
    }
}

// === cleanup ===

async fn cleanup(b: &Broker, ctx: &Context) -> Result<Action> {
    if b.skip_deregister() {
        info!(broker = %Context::key(b), "deregistration skipped on request");
        ctx.event(
            b,
            EventType::Normal,
            "DeregistrationSkipped",
            "released without deregistering from the api".to_owned(),
        )
        .await;
        return Ok(Action::await_change());
    }
    if let Err(e) = check_tenancy(b, ctx) {
        // It never registered anything, and must not deregister another namespace's broker.
        info!(broker = %Context::key(b), error = %e, "released without touching the api");
        ctx.event(
            b,
            EventType::Normal,
            "DeregistrationSkipped",
            format!("released without deregistering: {e}"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let ns = b.pubsub_namespace();
    match ctx
        .control_plane
        .delete_broker(&ns, &b.name_any(), &managed_by(b))
        .await
    {
        Ok(existed) => {
            let note = if existed {
                "deregistered from the api"
            } else {
                "the api had already forgotten the broker"
            };
            ctx.event(b, EventType::Normal, "Deregistered", note.to_owned())
                .await;
            Ok(Action::await_change())
        }
        Err(e) => {
            let e = Error::Api(e);
            ctx.event(
                b,
                EventType::Warning,
                "DeregistrationFailed",
                format!(
                    "{e}; set the annotation starling.dev/skip-deregister=true to release it anyway"
                ),
            )
            .await;
            Err(e)
        }
    }
}

// === run ===

/// Checks that the API server serves every resource the operator uses.
pub async fn check_discovery(client: &Client) -> Result<()> {
    let needed = [
        ("starling.dev/v1alpha1", "brokers"),
        ("apps/v1", "deployments"),
        ("v1", "secrets"),
        ("v1", "services"),
        ("v1", "configmaps"),
        ("coordination.k8s.io/v1", "leases"),
        ("events.k8s.io/v1", "events"),
    ];
    for (group_version, plural) in needed {
        let list = if group_version == "v1" {
            client.list_core_api_resources("v1").await
        } else {
            client.list_api_group_resources(group_version).await
        };
        let served = list
            .map(|l| l.resources.iter().any(|r| r.name == plural))
            .unwrap_or(false);
        if !served {
            return Err(Error::MissingApi(format!("{plural}.{group_version}")));
        }
    }
    Ok(())
}

/// Runs the controller over `namespaces` (all namespaces when empty) until `shutdown`.
pub async fn run(ctx: Arc<Context>, namespaces: &[String], shutdown: CancellationToken) {
    let selector =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=starling-operator");
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let mut controllers = Vec::new();
    for scope in scopes {
        let (brokers, deployments) = match &scope {
            Some(ns) => (
                Api::<Broker>::namespaced(ctx.client.clone(), ns),
                Api::<Deployment>::namespaced(ctx.client.clone(), ns),
            ),
            None => (
                Api::<Broker>::all(ctx.client.clone()),
                Api::<Deployment>::all(ctx.client.clone()),
            ),
        };
        let token = shutdown.clone();
        let ctx = ctx.clone();
        let fut = Controller::new(brokers, watcher::Config::default())
            .owns(deployments, selector.clone())
            .graceful_shutdown_on(async move { token.cancelled().await })
            .run(reconcile, error_policy, ctx)
            .for_each(|res| async move {
                match res {
                    Ok((obj, _)) => tracing::debug!(broker = %obj.name, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
                }
            });
        controllers.push(fut);
    }
    futures::future::join_all(controllers).await;
}

#[cfg(test)]
mod tests;
