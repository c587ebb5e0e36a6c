//! The `Broker` controller.
//!
//! Each reconcile runs inside the finalizer: `Apply` makes the world match the spec, `Cleanup`
//! deregisters the broker from the api before Kubernetes lets the `Broker` go.
//!
//! Apply, in order (the order the mock API server tests pin down):
//! 1. TLS: read the external Secret (`tls.secretName`), or keep the operator-issued CA and renew
//!    the leaf inside its renewal window;
//! 2. the credential Secret; what exposes the Service (the Service, Ingresses, Gateway API
//!    routes: `crate::exposure`), which decides the endpoints; then the api: read the broker,
//!    create it when the api has none and this `Broker` never registered, otherwise PATCH the
//!    fields the spec owns and the endpoints;
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
    core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service},
    networking::v1::{Ingress, NetworkPolicy},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
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
    api::{BrokerCreate, BrokerPatch, ControlPlane, CreateOutcome, ManagedBy, OnPublish},
    certs,
    crd::{Broker, BrokerStatus, Condition, Endpoints, FINALIZER, Phase, TlsStatus},
    error::{Error, Result},
    exposure,
    metrics::Metrics,
    resources::{
        self, Credentials, Settings, ca_from_secret, config_checksum, desired_ca_secret,
        desired_config_map, desired_credentials_secret, desired_deployment, desired_network_policy,
        desired_service, desired_tls_secret, leaf_from_secret, names,
    },
    resources::{certificate_resource, desired_certificate, desired_pdb, desired_pvc},
};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "starling-operator";

/// How often a healthy `Broker` is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a `Broker` whose Service waits for its address is looked at again...
const EXPOSURE_PENDING: Duration = Duration::from_secs(10);
/// ...while the Service is younger than this; then at the usual resync.
const EXPOSURE_PENDING_WINDOW: SignedDuration = SignedDuration::from_mins(10);
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
            note: Some(event_note(note)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &b.object_ref(&())).await {
            warn!(broker = %Self::key(b), error = %e, "publishing an event failed");
        }
    }
}

/// The longest note an Event takes (`events.k8s.io/v1` refuses a longer one, and the event
/// would be lost).
pub const EVENT_NOTE_MAX: usize = 1024;

/// `note`, cut to [`EVENT_NOTE_MAX`] bytes on a character boundary, ending in `...` when cut.
pub fn event_note(mut note: String) -> String {
    if note.len() > EVENT_NOTE_MAX {
        let mut end = EVENT_NOTE_MAX - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
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
    /// Registered just now: the secret is new.
    created: bool,
    /// The credential Secret was lost and the secret rotated: the secret is new.
    rotated: bool,
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Whether `obj` carries the controller owner reference to `b`.
fn owned_by<K: Resource>(obj: &K, b: &Broker) -> bool {
    let Some(uid) = b.meta().uid.as_deref() else {
        return false;
    };
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

fn describe<K: Resource<DynamicType = ()>>(name: &str) -> String {
    format!("{} {name}", K::kind(&()))
}

/// Fails with [`Error::NotOwned`] when `existing` is there and is not `b`'s.
fn check_owned<K: Resource<DynamicType = ()>>(existing: Option<&K>, b: &Broker) -> Result<()> {
    match existing {
        Some(obj) if !owned_by(obj, b) => Err(Error::NotOwned {
            what: describe::<K>(&obj.name_any()),
        }),
        _ => Ok(()),
    }
}

/// Server-side apply of an object `b` owns. An object of that name that `b` does not own (a
/// cert-manager Secret, a user's Service) is never taken over: that is [`Error::NotOwned`].
/// A failure of the apply itself is [`Error::Apply`], naming the object.
async fn ssa<K>(api: &Api<K>, obj: &K, b: &Broker) -> Result<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let existing = api.get_opt(&name).await.map_err(|source| Error::Apply {
        what: describe::<K>(&name),
        source,
    })?;
    check_owned(existing.as_ref(), b)?;
    ssa_checked(api, obj).await
}

/// [`ssa`] of an object whose current copy the caller has just read and passed to
/// [`check_owned`].
async fn ssa_checked<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    api.patch(&name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            what: describe::<K>(&name),
            source,
        })
}

fn renew_window(b: &Broker) -> SignedDuration {
    SignedDuration::from_hours(24 * i64::from(b.spec.tls.renew_before_days))
}

/// The certificate in a `kubernetes.io/tls` Secret someone else keeps (`tls.secretName`, or
/// cert-manager's for `tls.issuerRef`).
async fn external_tls(secrets: &Api<Secret>, name: &str) -> Result<TlsOutcome> {
    {
        let secret = secrets
            .get_opt(name)
            .await?
            .ok_or_else(|| Error::TlsSecret {
                name: name.to_owned(),
                reason: "not found".to_owned(),
            })?;
        let pem = secret
            .data
            .as_ref()
            .and_then(|d| d.get("tls.crt"))
            .and_then(|c| String::from_utf8(c.0.clone()).ok())
            .ok_or_else(|| Error::TlsSecret {
                name: name.to_owned(),
                reason: "has no tls.crt".to_owned(),
            })?;
        let info = certs::inspect(&pem).map_err(|e| Error::TlsSecret {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(TlsOutcome {
            not_after: info.not_after,
            renewed: false,
        })
    }
}

/// `tls.issuerRef`: applies the cert-manager Certificate, then reads the Secret cert-manager
/// writes. Until it has issued one, that is a `TlsSecretInvalid` problem saying so.
async fn ensure_cert_manager(
    b: &Broker,
    client: &Client,
    secrets: &Api<Secret>,
    issuer: &crate::crd::IssuerRef,
) -> Result<TlsOutcome> {
    let ns = b
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let resource = certificate_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let name = b.name_any();
    let existing = api.get_opt(&name).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => Error::TlsSecret {
            name: names::tls(b),
            reason: "cert-manager's Certificate resource (certificates.cert-manager.io/v1) is not installed".to_owned(),
        },
        other => Error::Kube(other),
    })?;
    if existing.as_ref().is_some_and(|c| !owned_by(c, b)) {
        return Err(Error::NotOwned {
            what: format!("Certificate {name}"),
        });
    }
    api.patch(
        &name,
        &apply_params(),
        &Patch::Apply(&desired_certificate(b, issuer)),
    )
    .await
    .map_err(|source| Error::Apply {
        what: format!("Certificate {name}"),
        source,
    })?;
    match secrets.get_opt(&names::tls(b)).await? {
        Some(_) => external_tls(secrets, &names::tls(b)).await,
        None => Err(Error::TlsSecret {
            name: names::tls(b),
            reason: format!("not issued yet: waiting for cert-manager (Certificate {name})"),
        }),
    }
}

async fn ensure_tls(b: &Broker, secrets: &Api<Secret>) -> Result<TlsOutcome> {
    let now = Timestamp::now();
    if let Some(name) = &b.spec.tls.secret_name {
        return external_tls(secrets, name).await;
    }

    let ca_secret = secrets.get_opt(&names::ca(b)).await?;
    check_owned(ca_secret.as_ref(), b)?;
    let ca = match ca_secret.as_ref().and_then(ca_from_secret) {
        Some(ca) => ca,
        None => {
            let subject = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
            let ca = certs::issue_ca(&subject, now)?;
            ssa_checked(secrets, &desired_ca_secret(b, &ca)).await?;
            ca
        }
    };
    let hosts = resources::tls_hosts(b);
    let tls_secret = secrets.get_opt(&names::tls(b)).await?;
    check_owned(tls_secret.as_ref(), b)?;
    let current = tls_secret.as_ref().and_then(leaf_from_secret);
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
    ssa_checked(secrets, &desired_tls_secret(b, &leaf)).await?;
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

fn owned_fields(b: &Broker, endpoints: &Endpoints) -> BrokerPatch {
    let (endpoint, ws_endpoint) = advertised(endpoints);
    BrokerPatch {
        name: None,
        // The api keeps a description the patch leaves out: one removed from the spec is sent
        // empty, which clears it.
        description: Some(b.spec.description.clone().unwrap_or_default()),
        expiration: Some(b.spec.expiration),
        on_publish: Some(Some(OnPublish {
            url: b.spec.on_publish.as_ref().map(|o| o.url.clone()),
        })),
        limits: Some(resources::tenant_limits(b)),
        endpoint: Some(endpoint),
        ws_endpoint: Some(ws_endpoint),
    }
}

/// The endpoints `status.endpoints` shows (its mqtts URL, its first wss URL), sent to the api
/// with every registration and change so that the api shows clients the same ones; `None` where
/// the listener is off, and the api derives its own.
fn advertised(e: &Endpoints) -> (Option<String>, Option<String>) {
    (e.mqtts.clone(), e.wss.first().cloned())
}

/// What exposes `b`'s Service: the Service itself (its node ports, its load balancer), the
/// namespace's Ingresses and Gateway API routes, and the Gateways those name. What cannot be
/// read (not served: no Gateway API installed; not allowed: an operator upgraded before its
/// chart) counts as absent.
async fn seen_exposure(b: &Broker, client: &Client, ns: &str) -> exposure::Seen {
    use kube::api::{ApiResource, GroupVersionKind, ListParams};
    fn absent<T>(what: &str, r: std::result::Result<T, kube::Error>) -> Option<T> {
        r.map_err(|e| tracing::debug!(what, error = %e, "not read for the endpoints"))
            .ok()
    }
    let service = absent(
        "service",
        Api::<Service>::namespaced(client.clone(), ns)
            .get_opt(&names::workload(b))
            .await,
    )
    .flatten();
    let ingresses = absent(
        "ingresses",
        Api::<Ingress>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await,
    )
    .map(|l| l.items)
    .unwrap_or_default();
    let mut routes = Vec::new();
    for (version, kind) in [("v1", "HTTPRoute"), ("v1alpha2", "TLSRoute")] {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", version, kind);
        let api =
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk));
        if let Some(list) = absent(kind, api.list(&ListParams::default()).await) {
            for item in list.items {
                let mut v = serde_json::to_value(&item).unwrap_or_default();
                v["kind"] = serde_json::Value::String(kind.to_owned());
                routes.push(v);
            }
        }
    }
    let mut gateways = Vec::new();
    let gateway = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
    ));
    let mut wanted: Vec<(String, String)> = routes
        .iter()
        .flat_map(exposure::parent_refs)
        .map(|(ns, name, _, _)| (ns, name))
        .collect();
    wanted.sort();
    wanted.dedup();
    for (gw_ns, name) in wanted.into_iter().take(8) {
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &gw_ns, &gateway);
        if let Some(Some(g)) = absent("gateway", api.get_opt(&name).await) {
            gateways.push(serde_json::to_value(&g).unwrap_or_default());
        }
    }
    exposure::Seen {
        service,
        ingresses,
        routes,
        gateways,
    }
}

/// The pub/sub namespace `b`'s broker lives in: the one recorded at registration, which
/// `spec.namespace` cannot move (the CRD's CEL rule says so where the API server runs CEL; this
/// check holds where it does not).
fn registered_namespace(b: &Broker) -> Result<String> {
    let wanted = b.pubsub_namespace();
    match b.status.as_ref().and_then(|s| s.api_namespace.clone()) {
        Some(registered) if registered != wanted => {
            Err(Error::NamespaceChanged { registered, wanted })
        }
        _ => Ok(wanted),
    }
}

async fn register(
    b: &Broker,
    ctx: &Context,
    existing: Option<Credentials>,
    endpoints: &Endpoints,
) -> Result<Registration> {
    let api = &ctx.control_plane;
    let ns = registered_namespace(b)?;
    let name = b.name_any();
    let status_id = b.status.as_ref().and_then(|s| s.broker_id.clone());
    let known_id = existing
        .as_ref()
        .map(|c| c.broker_id.clone())
        .or_else(|| status_id.clone());

    match api.get_broker(&ns, &name).await? {
        Some(found) => {
            if found.managed_by.as_ref() != Some(&managed_by(b))
                || known_id.as_ref().is_some_and(|id| *id != found.id)
            {
                // Made through the API, by another Broker, or deleted and re-created: not ours.
                return Err(match known_id {
                    Some(_) => Error::DeletedInApi(format!("{ns}/{name}")),
                    None => Error::NotManaged(format!("{ns}/{name}")),
                });
            }
            if !api
                .patch_broker(&ns, &name, &owned_fields(b, endpoints), &managed_by(b))
                .await?
            {
                return Err(Error::DeletedInApi(format!("{ns}/{name}")));
            }
            match existing {
                Some(credentials) => Ok(Registration {
                    credentials,
                    created: false,
                    rotated: false,
                }),
                // The credential Secret was lost or deleted: the api shows a secret only once,
                // so get a new one by rotating it, and store it before anything else can fail.
                None => match api.rotate_secret(&ns, &name, &managed_by(b)).await? {
                    Some(secret) => Ok(Registration {
                        credentials: Credentials {
                            broker_id: found.id,
                            secret: secret.into(),
                        },
                        created: false,
                        rotated: true,
                    }),
                    None => Err(Error::DeletedInApi(format!("{ns}/{name}"))),
                },
            }
        }
        None if known_id.is_some() => Err(Error::DeletedInApi(format!("{ns}/{name}"))),
        None => {
            api.ensure_namespace(&ns).await?;
            let (endpoint, ws_endpoint) = advertised(endpoints);
            let req = BrokerCreate {
                name: name.clone(),
                description: b.spec.description.clone(),
                expiration: b.spec.expiration,
                on_publish: b.spec.on_publish.as_ref().map(|o| OnPublish {
                    url: Some(o.url.clone()),
                }),
                limits: resources::tenant_limits(b),
                managed_by: Some(managed_by(b)),
                endpoint,
                ws_endpoint,
                ..BrokerCreate::default()
            };
            match api.create_broker(&ns, &req).await? {
                CreateOutcome::Created(c) => Ok(Registration {
                    credentials: Credentials {
                        broker_id: c.id,
                        secret: c.secret,
                    },
                    created: true,
                    rotated: false,
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
    let status = desired_status(b, None, broker_id, None, Some(&e), Timestamp::now());
    ctx.metrics.set_broker_ready(&ns, &b.name_any(), false);
    let brokers: Api<Broker> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({ "apiVersion": "starling.dev/v1alpha1", "kind": "Broker", "status": status });
    brokers
        .patch_status(&b.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    ctx.event(b, EventType::Warning, e.metric_label(), e.to_string())
        .await;
    Err(e)
}

/// Writes `status` by server-side apply. A CRD older than `status.apiNamespace` (the operator
/// is upgraded a moment before the chart's CRD) refuses the field: the rest is written without
/// it, and it is recorded once the CRD has it.
async fn write_status(brokers: &Api<Broker>, b: &Broker, mut status: BrokerStatus) -> Result<()> {
    let body = |s: &BrokerStatus| serde_json::json!({ "apiVersion": "starling.dev/v1alpha1", "kind": "Broker", "status": s });
    let name = b.name_any();
    // An operator newer than the installed CRD (the chart not yet upgraded) leaves out the status
    // fields the CRD does not declare yet, one refusal at a time, instead of writing no status;
    // each retry drops a field or gives up, so this ends.
    loop {
        match brokers
            .patch_status(&name, &apply_params(), &Patch::Apply(&body(&status)))
            .await
        {
            Err(kube::Error::Api(e)) if e.message.contains("not declared in schema") => {
                let before = status.clone();
                if e.message.contains("apiNamespace") {
                    status.api_namespace = None;
                }
                if e.message.contains(".status.selector") || e.message.contains(".status.replicas")
                {
                    status.selector = None;
                    status.replicas = None;
                }
                if status == before {
                    return Err(kube::Error::Api(e).into());
                }
                warn!(broker = %Context::key(b), error = %e.message, "the Broker CRD lacks a status field: apply the chart's CRD");
            }
            other => return other.map(drop).map_err(Error::from),
        }
    }
}

/// What applying the workload left: the Deployment's rollout, and whether a PodDisruptionBudget
/// was wanted but the API server does not serve `policy/v1`.
struct Workload {
    rollout: Rollout,
    budget_unavailable: bool,
}

/// ConfigMap, Service, the data claim and Deployment, in that order.
async fn apply_workload(b: &Broker, ctx: &Context, reg: &Registration) -> Result<Workload> {
    resources::check_replicas(b, &ctx.settings)?;
    let ns = b
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let client = ctx.client.clone();
    let credentials = desired_credentials_secret(b, &reg.credentials);
    let nats = nats_credentials(ctx, b, &ns, &reg.credentials.broker_id).await?;
    let config = desired_config_map(b, &ctx.settings.broker_hook, nats.as_ref())?;
    let mut checksum = config_checksum(&config, &credentials);
    if let Some(n) = &nats {
        // A rotated NATS credential rolls the pods, as the broker reads it at start.
        let parts: Vec<(String, &[u8])> =
            std::iter::once(("config".to_owned(), checksum.as_bytes()))
                .chain(n.checksum_parts())
                .collect();
        checksum = resources::checksum(parts.iter().map(|(k, v)| (k.as_str(), *v)));
        ssa(
            &Api::<Secret>::namespaced(client.clone(), &ns),
            &resources::desired_nats_secret(b, n),
            b,
        )
        .await?;
    }
    ssa(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        &config,
        b,
    )
    .await?;
    ssa(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &desired_service(b),
        b,
    )
    .await?;
    if let Some(monitoring) = &ctx.settings.network_policy {
        apply_network_policy(b, ctx, &ns, monitoring).await?;
    }
    let budget_unavailable = !apply_disruption_budget(b, ctx, &ns).await?;
    if let Some(pvc) = desired_pvc(b) {
        ssa(
            &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns),
            &pvc,
            b,
        )
        .await?;
    }
    let mut deployment =
        desired_deployment(b, &ctx.settings, &reg.credentials.broker_id, &checksum);
    resources::apply_pod_options(&mut deployment, b).map_err(Error::PodOptions)?;
    if let Some(n) = &nats {
        resources::apply_nats_credentials(&mut deployment, b, n);
    }
    let applied = ssa(&Api::<Deployment>::namespaced(client, &ns), &deployment, b).await?;
    Ok(Workload {
        rollout: Rollout::of(&applied),
        budget_unavailable,
    })
}

/// The brokers' NATS credentials and TLS files, read from the Secrets the operator's settings
/// name in its own namespace; `None` when they name none. A missing or malformed Secret is an
/// error naming the Secret and the keys, never a value. On the chart's NATS (`nats_auth`), the
/// broker's account (tenant `broker_id`) is published to NATS and its own user goes in place of
/// a shared credential: the one already in `<name>-nats` while it fits, else a new one.
async fn nats_credentials(
    ctx: &Context,
    b: &Broker,
    ns: &str,
    broker_id: &str,
) -> Result<Option<resources::NatsCredentials>> {
    let names = &ctx.settings.cluster_secrets;
    let auth = ctx.settings.nats_auth.as_ref();
    if (!names.any() && auth.is_none()) || ctx.settings.cluster_nats.is_empty() {
        return Ok(None);
    }
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &names.namespace);
    let mut read = Vec::new();
    let shared = if auth.is_some() { &None } else { &names.auth };
    for name in [shared, &names.tls] {
        match name {
            Some(n) => match api.get_opt(n).await? {
                Some(s) => read.push(Some(s)),
                None => {
                    return Err(Error::NatsCredentials(format!(
                        "the Secret {}/{n} does not exist (yet)",
                        names.namespace
                    )));
                }
            },
            None => read.push(None),
        }
    }
    let credentials = resources::NatsCredentials::from_secrets(read[0].as_ref(), read[1].as_ref())
        .map_err(Error::NatsCredentials)?;
    let Some(auth) = auth else {
        return Ok(Some(credentials));
    };
    let published = auth.publish_account(broker_id).await;
    let existing = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&resources::names::nats(b))
        .await?
        .and_then(|s| s.data?.remove(resources::CREDS_KEY))
        .and_then(|v| String::from_utf8(v.0).ok());
    let login = auth
        .broker_login(broker_id, existing.as_deref())
        .map_err(|e| Error::NatsCredentials(e.to_string()))?;
    match published {
        Ok(()) => {}
        // Published before (its user is the one minted then): NATS being away does not hold
        // back the rest of the reconcile; the next one publishes it again.
        Err(e) if existing.as_deref() == Some(login.creds.as_str()) => warn!(
            broker = %Context::key(b),
            error = %e,
            "the broker's NATS account was not published again; its pods keep their NATS user"
        ),
        Err(e) => {
            return Err(Error::NatsCredentials(format!(
                "the broker's NATS account was not published: {e}"
            )));
        }
    }
    Ok(Some(credentials.with_login(&login)))
}

/// Applies `b`'s PodDisruptionBudget when it runs more than one replica and the API server
/// serves `policy/v1` (1.21 and later); on an older server there is none, a Normal event says
/// so and this returns false (the status then carries `DisruptionBudget` false).
async fn apply_disruption_budget(b: &Broker, ctx: &Context, ns: &str) -> Result<bool> {
    let Some(pdb) = desired_pdb(b) else {
        return Ok(true);
    };
    let served = ctx
        .client
        .list_api_group_resources("policy/v1")
        .await
        .map(|l| l.resources.iter().any(|r| r.name == "poddisruptionbudgets"))
        .unwrap_or(false);
    if !served {
        ctx.event(
            b,
            EventType::Normal,
            "DisruptionBudgetUnavailable",
            "the API server does not serve policy/v1 PodDisruptionBudgets: none is made".to_owned(),
        )
        .await;
        return Ok(false);
    }
    ssa(
        &Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), ns),
        &pdb,
        b,
    )
    .await?;
    Ok(true)
}

/// Applies `b`'s NetworkPolicy. Refused for lack of RBAC (an operator upgraded before its chart),
/// it is a Warning event and the Broker keeps serving; the next reconcile tries again.
async fn apply_network_policy(b: &Broker, ctx: &Context, ns: &str, monitoring: &str) -> Result<()> {
    let api = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), ns);
    match ssa(&api, &desired_network_policy(b, monitoring), b).await {
        Err(Error::Apply {
            source: kube::Error::Api(e),
            ..
        }) if e.code == 403 => {
            warn!(broker = %Context::key(b), error = %e.message, "no permission to apply the NetworkPolicy");
            ctx.event(
                b,
                EventType::Warning,
                "NetworkPolicyForbidden",
                format!(
                    "the operator may not apply NetworkPolicies here (upgrade the chart): {}",
                    e.message
                ),
            )
            .await;
            Ok(())
        }
        other => other.map(|_| ()),
    }
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

    let tls = match &b.spec.tls.issuer_ref {
        Some(issuer) => ensure_cert_manager(b, &client, &secrets, issuer).await,
        None => ensure_tls(b, &secrets).await,
    };

    let credentials_secret = secrets.get_opt(&names::credentials(b)).await?;
    let seen = seen_exposure(b, &client, &ns).await;
    let exposure = exposure::observe(b, &seen);
    // Look again soon for an address still to come, but only while the Service is new: a cluster
    // with no load-balancer controller would otherwise be asked every few seconds forever.
    let poll_exposure = exposure.pending
        && seen
            .service
            .as_ref()
            .and_then(|s| s.metadata.creation_timestamp.as_ref())
            .is_none_or(|t| Timestamp::now().duration_since(t.0) < EXPOSURE_PENDING_WINDOW);
    let registration = match check_owned(credentials_secret.as_ref(), b) {
        Ok(()) => {
            let existing = credentials_secret
                .as_ref()
                .and_then(Credentials::from_secret);
            register(b, ctx, existing, &exposure.endpoints).await
        }
        Err(e) => Err(e),
    };

    let mut rollout = None;
    let mut budget_unavailable = false;
    let mut broker_id = b.status.as_ref().and_then(|s| s.broker_id.clone());
    let mut api_namespace = b.status.as_ref().and_then(|s| s.api_namespace.clone());
    let mut workload = Ok(());
    if let Ok(reg) = &registration {
        if reg.created || reg.rotated {
            // The api shows the secret once: keep it before anything else can fail.
            ssa_checked(&secrets, &desired_credentials_secret(b, &reg.credentials)).await?;
        }
        broker_id = Some(reg.credentials.broker_id.clone());
        api_namespace = Some(b.pubsub_namespace());
        match apply_workload(b, ctx, reg).await {
            Ok(w) => {
                rollout = Some(w.rollout);
                budget_unavailable = w.budget_unavailable;
            }
            Err(e) => workload = Err(e),
        }
    }

    let problem = match (&tls, &registration, &workload) {
        (Err(e), _, _) | (Ok(_), Err(e), _) | (Ok(_), Ok(_), Err(e)) => Some(e),
        _ => None,
    };
    let tls_not_after = tls.as_ref().ok().map(|t| t.not_after);
    let mut status = desired_status(
        b,
        rollout.as_ref(),
        broker_id,
        tls_not_after,
        problem,
        Timestamp::now(),
    );
    ctx.metrics
        .set_broker_ready(&ns, &b.name_any(), status.phase == Some(Phase::Ready));
    if let Some(t) = tls_not_after {
        ctx.metrics
            .set_certificate_not_after(&ns, &b.name_any(), t.as_second());
    }
    status.api_namespace = api_namespace;
    status.endpoints = Some(exposure.endpoints.clone());
    if budget_unavailable {
        status.conditions.push(condition(
            b.status.as_ref(),
            b.metadata.generation,
            Timestamp::now(),
            "DisruptionBudget",
            false,
            "PolicyV1Unavailable",
            "the API server does not serve policy/v1 PodDisruptionBudgets: none protects these \
             pods from voluntary disruptions"
                .to_owned(),
        ));
    }
    write_status(&Api::namespaced(client, &ns), b, status).await?;

    if let Ok(reg) = &registration {
        if reg.created {
            let note = format!("registered with the api as {}", reg.credentials.broker_id);
            ctx.event(b, EventType::Normal, "Registered", note).await;
        }
        if reg.rotated {
            let note = format!(
                "the credential Secret {} was missing: rotated the broker secret through the api",
                names::credentials(b)
            );
            ctx.event(b, EventType::Normal, "CredentialsRecovered", note)
                .await;
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

    match (tls, registration, workload) {
        (Err(e), _, _) | (Ok(_), Err(e), _) | (Ok(_), Ok(_), Err(e)) => {
            ctx.event(b, EventType::Warning, e.metric_label(), e.to_string())
                .await;
            Err(e)
        }
        (Ok(t), Ok(_), Ok(())) => {
            ctx.reset_backoff(b);
            // Come back in time to renew an operator-issued certificate.
            let until_renewal = (t.not_after - renew_window(b)).duration_since(Timestamp::now());
            let until_renewal = Duration::try_from(until_renewal).unwrap_or(Duration::ZERO);
            // A load balancer's address or node ports still to come: look again soon.
            let resync = if poll_exposure {
                EXPOSURE_PENDING
            } else {
                jittered(RESYNC)
            };
            Ok(Action::requeue(resync.min(until_renewal.max(BACKOFF_MIN))))
        }
    }
}

/// `d` plus up to a tenth more, so that Brokers created together do not resync together.
pub fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let tenth = d.as_millis() / 10;
    let extra = u128::from(h.finish()) % tenth.max(1);
    d + Duration::from_millis(u64::try_from(extra).unwrap_or(0))
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

/// Where the Deployment's rollout stands, from its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rollout {
    /// The Deployment controller has seen the current spec (`observedGeneration`).
    pub observed: bool,
    /// Pods of the current template (`updatedReplicas`).
    pub updated: i32,
    /// Pods that pass their readiness probe (`readyReplicas`).
    pub ready: i32,
    /// All pods, old template included (`replicas`).
    pub total: i32,
}

impl Rollout {
    /// The rollout of `d`, as the API server returned it.
    pub fn of(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let observed = match (d.metadata.generation, status.observed_generation) {
            (Some(generation), Some(seen)) => seen >= generation,
            (None, _) => true,
            (Some(_), None) => false,
        };
        Self {
            observed,
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            total: status.replicas.unwrap_or(0),
        }
    }

    /// Every wanted pod runs the current template and is ready, and no old pod is left.
    fn done(&self, want: i32) -> bool {
        self.observed && self.updated >= want && self.ready >= want && self.total <= want
    }
}

/// How close to its notAfter a serving certificate turns `CertificateExpiring` true.
pub const CERTIFICATE_EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(24 * 7);

/// `conditions` plus `CertificateExpiring` when the serving certificate's notAfter is known:
/// true within [`CERTIFICATE_EXPIRY_WARNING`] of it (reason `ExpiresSoon`, or `Expired`), else
/// false (`Valid`). An operator-issued certificate is renewed before that (`tls.renewBeforeDays`,
/// 30 by default); one from `tls.secretName` is renewed by whoever owns that Secret.
fn with_certificate_condition(
    mut conditions: Vec<Condition>,
    old: Option<&BrokerStatus>,
    generation: Option<i64>,
    now: Timestamp,
    not_after: Option<Timestamp>,
) -> Vec<Condition> {
    let Some(not_after) = not_after else {
        return conditions;
    };
    let left = not_after.duration_since(now);
    let (status, reason, message) = if left <= SignedDuration::ZERO {
        (
            true,
            "Expired",
            format!("the certificate expired at {not_after}"),
        )
    } else if left < CERTIFICATE_EXPIRY_WARNING {
        (
            true,
            "ExpiresSoon",
            format!("the certificate expires at {not_after}"),
        )
    } else {
        (
            false,
            "Valid",
            format!("the certificate is valid until {not_after}"),
        )
    };
    conditions.push(condition(
        old,
        generation,
        now,
        "CertificateExpiring",
        status,
        reason,
        message,
    ));
    conditions
}

/// The status the operator writes for `b`. `rollout` is `None` when no Deployment was applied.
/// Ready needs the rollout done (the Deployment controller has seen the current spec, and every
/// wanted pod is updated and ready), at least one replica, the api's id and no problem.
pub fn desired_status(
    b: &Broker,
    rollout: Option<&Rollout>,
    broker_id: Option<String>,
    tls_not_after: Option<Timestamp>,
    problem: Option<&Error>,
    now: Timestamp,
) -> BrokerStatus {
    let old = b.status.as_ref();
    let generation = b.metadata.generation;
    let want = b.spec.replicas;
    let r = rollout.copied().unwrap_or_default();
    let rolled_out = rollout.is_some() && r.done(want);
    let progress = format!(
        "{}/{want} replicas updated, {}/{want} ready",
        r.updated, r.ready
    );
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        condition(old, generation, now, type_, status, reason, message)
    };
    let degraded = match problem {
        Some(e) => cond("Degraded", true, e.metric_label(), e.to_string()),
        None => cond("Degraded", false, "AsExpected", String::new()),
    };
    let progressing = if rolled_out {
        cond("Progressing", false, "RolledOut", progress.clone())
    } else {
        cond("Progressing", true, "RollingOut", progress.clone())
    };
    let is_ready = problem.is_none() && rolled_out && want > 0 && broker_id.is_some();
    let ready = if is_ready {
        cond(
            "Ready",
            true,
            "BrokerReady",
            "the broker serves clients".to_owned(),
        )
    } else if let Some(e) = problem {
        cond("Ready", false, e.metric_label(), e.to_string())
    } else if want == 0 {
        cond(
            "Ready",
            false,
            "ScaledToZero",
            "spec.replicas is 0: no pod serves clients".to_owned(),
        )
    } else {
        cond("Ready", false, "RollingOut", progress)
    };
    let phase = if problem.is_some() {
        Phase::Degraded
    } else if is_ready {
        Phase::Ready
    } else {
        Phase::Pending
    };
    let durable = match &b.spec.storage {
        Some(_) => cond(
            "Durable",
            true,
            "PersistentVolumeClaim",
            format!(
                "state is kept on the PersistentVolumeClaim {}",
                names::data(b)
            ),
        ),
        None => cond(
            "Durable",
            false,
            "EphemeralStorage",
            "spec.storage is unset: retained messages, sessions and managed state live in an \
             emptyDir, which survives container restarts but is lost when the pod is rescheduled"
                .to_owned(),
        ),
    };
    BrokerStatus {
        observed_generation: generation,
        conditions: with_certificate_condition(
            vec![ready, progressing, degraded, durable],
            old,
            generation,
            now,
            tls_not_after,
        ),
        phase: Some(phase),
        ready_replicas: r.ready,
        replicas: Some(r.total),
        selector: Some(resources::selector_string(b)),
        broker_id,
        api_namespace: old.and_then(|s| s.api_namespace.clone()),
        endpoints: Some(b.endpoints()),
        tls: Some(TlsStatus {
            secret_name: Some(names::tls(b)),
            not_after: tls_not_after.map(|t| t.to_string()),
        }),
    }
}

// === cleanup ===

async fn cleanup(b: &Broker, ctx: &Context) -> Result<Action> {
    ctx.metrics
        .forget_broker(&b.namespace().unwrap_or_default(), &b.name_any());
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
    // The namespace it was registered in, whatever the spec says now.
    let ns = b
        .status
        .as_ref()
        .and_then(|s| s.api_namespace.clone())
        .unwrap_or_else(|| b.pubsub_namespace());
    let name = b.name_any();
    // Only a broker this Broker registered is deleted: one made through the API, by another
    // Broker, or re-created under the same name is left alone (the api refuses the DELETE too).
    let found = ctx
        .control_plane
        .get_broker(&ns, &name)
        .await
        .map_err(Error::Api);
    let status_id = b.status.as_ref().and_then(|s| s.broker_id.as_deref());
    if let Ok(Some(found)) = &found {
        if found.managed_by.as_ref() != Some(&managed_by(b))
            || status_id.is_some_and(|id| id != found.id)
        {
            ctx.event(
                b,
                EventType::Warning,
                "NotDeregistered",
                format!("the api's broker {ns}/{name} is not the one this Broker registered; left in place"),
            )
            .await;
            return Ok(Action::await_change());
        }
    }
    let deleted = match found {
        Ok(None) => Ok(false),
        Ok(Some(_)) => {
            ctx.control_plane
                .delete_broker(&ns, &name, &managed_by(b))
                .await
        }
        Err(Error::Api(e)) => Err(e),
        Err(_) => Ok(false),
    };
    match deleted {
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

/// The Services an Ingress sends to (by default backend or rule), each once.
fn ingress_services(ing: &Ingress) -> Vec<String> {
    let Some(spec) = &ing.spec else {
        return Vec::new();
    };
    let mut out: Vec<String> = spec
        .default_backend
        .iter()
        .chain(
            spec.rules
                .iter()
                .flatten()
                .filter_map(|r| r.http.as_ref())
                .flat_map(|h| h.paths.iter().map(|p| &p.backend)),
        )
        .filter_map(|b| b.service.as_ref().map(|s| s.name.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

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

/// Runs the controller over `namespaces` (all namespaces when empty) until `shutdown`, with at
/// most `concurrency` reconciles at once in each (0 means 1).
pub async fn run(
    ctx: Arc<Context>,
    namespaces: &[String],
    concurrency: u16,
    shutdown: CancellationToken,
) {
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
        let ingresses = match &scope {
            Some(ns) => Api::<Ingress>::namespaced(ctx.client.clone(), ns),
            None => Api::<Ingress>::all(ctx.client.clone()),
        };
        // An Ingress to a Broker's Service changes its endpoints (`crate::exposure`): the Broker
        // named like the Service looks again. Only where the operator may list Ingresses (an
        // operator upgraded before its chart may not): a failing watch would hold back every
        // reconcile. Without the watch they are seen at resync.
        let watch_ingresses = ingresses
            .list(&kube::api::ListParams::default().limit(1))
            .await
            .map_err(
                |e| warn!(error = %e, "not watching Ingresses: endpoints follow them at resync"),
            )
            .is_ok();
        let token = shutdown.clone();
        let ctx = ctx.clone();
        let mut controller = Controller::new(brokers, watcher::Config::default())
            .owns(deployments, selector.clone());
        if watch_ingresses {
            controller =
                controller.watches(ingresses, watcher::Config::default(), |ing: Ingress| {
                    let ns = ing.namespace();
                    ingress_services(&ing).into_iter().map(move |svc| {
                        let r = kube::runtime::reflector::ObjectRef::<Broker>::new(&svc);
                        match &ns {
                            Some(ns) => r.within(ns),
                            None => r,
                        }
                    })
                });
        }
        // Gateway API routes likewise, where they are served and may be listed (their CRDs
        // installed before the operator started).
        for (version, kind) in [("v1", "HTTPRoute"), ("v1alpha2", "TLSRoute")] {
            use kube::api::{ApiResource, GroupVersionKind};
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
                "gateway.networking.k8s.io",
                version,
                kind,
            ));
            let routes = match &scope {
                Some(ns) => Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &ar),
                None => Api::<DynamicObject>::all_with(ctx.client.clone(), &ar),
            };
            if routes
                .list(&kube::api::ListParams::default().limit(1))
                .await
                .is_err()
            {
                continue;
            }
            info!(kind, "watching Gateway API routes for the endpoints");
            controller = controller.watches_with(
                routes,
                ar,
                watcher::Config::default(),
                |route: DynamicObject| {
                    let ns = route.namespace();
                    let value = serde_json::to_value(&route).unwrap_or_default();
                    exposure::route_services(&value)
                        .into_iter()
                        .map(move |svc| {
                            let r = kube::runtime::reflector::ObjectRef::<Broker>::new(&svc);
                            match &ns {
                                Some(ns) => r.within(ns),
                                None => r,
                            }
                        })
                },
            );
        }
        let fut = controller
            .with_config(
                kube::runtime::controller::Config::default().concurrency(concurrency.max(1)),
            )
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
