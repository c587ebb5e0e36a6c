//! Reconcile tests against a mock Kubernetes API server.
//!
//! No API server runs inside a unit test, so these follow the controller-rs pattern: the
//! controller's `kube::Client` talks to a `tower_test::mock` service, and [`MockKube`] answers
//! each request like the API server would (GET from its store or 404, server-side apply stores
//! the body and echoes it, status patches merge into the Broker, JSON patches move finalizers)
//! while recording every request, so the tests assert the exact calls, their order and their
//! bodies. The Starling api is [`FakeControlPlane`], an in-memory implementation of the
//! [`ControlPlane`] trait (the HTTP client is tested against a real HTTP server in `api::tests`,
//! and the real api in the kube tier).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use kube::{Client, client::Body};
use serde_json::{Value, json};

use super::*;
use crate::{
    api::{ApiBroker, ApiError, CreatedBroker},
    resources::{
        CHECKSUM_ANNOTATION,
        fixtures::{broker, settings},
    },
};

// === the fake api ===

#[derive(Default)]
struct FakeState {
    brokers: HashMap<(String, String), (String, BrokerPatch)>,
    down: bool,
    calls: Vec<String>,
    next_id: u32,
}

#[derive(Default, Clone)]
struct FakeControlPlane(Arc<Mutex<FakeState>>);

impl FakeControlPlane {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().expect("fake api lock")
    }
    fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }
    fn check(&self, call: String) -> Result<(), ApiError> {
        let mut s = self.state();
        s.calls.push(call);
        if s.down {
            Err(ApiError::Unreachable("connection refused".to_owned()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ControlPlane for FakeControlPlane {
    async fn ensure_namespace(&self, ns: &str) -> Result<(), ApiError> {
        self.check(format!("ensure_namespace {ns}"))
    }
    async fn get_broker(&self, ns: &str, name: &str) -> Result<Option<ApiBroker>, ApiError> {
        self.check(format!("get {ns}/{name}"))?;
        let s = self.state();
        Ok(s.brokers
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|(id, _)| ApiBroker {
                id: id.clone(),
                name: name.to_owned(),
            }))
    }
    async fn create_broker(&self, ns: &str, req: &CreateBroker) -> Result<CreateOutcome, ApiError> {
        self.check(format!(
            "create {ns}/{} managedBy={}",
            req.name,
            req.managed_by.header_value()
        ))?;
        let mut s = self.state();
        let key = (ns.to_owned(), req.name.clone());
        if s.brokers.contains_key(&key) {
            return Ok(CreateOutcome::AlreadyExists);
        }
        s.next_id += 1;
        let id = format!("brk_{}", s.next_id);
        let fields = BrokerPatch {
            description: req.description.clone(),
            expiration: req.expiration,
            on_publish: req.on_publish.clone().unwrap_or(OnPublishUrl { url: None }),
            limits: req.limits.clone(),
        };
        s.brokers.insert(key, (id.clone(), fields));
        Ok(CreateOutcome::Created(CreatedBroker {
            id,
            secret: format!("secret-{}", s.next_id),
        }))
    }
    async fn patch_broker(
        &self,
        ns: &str,
        name: &str,
        patch: &BrokerPatch,
        m: &ManagedBy,
    ) -> Result<bool, ApiError> {
        self.check(format!("patch {ns}/{name} managedBy={}", m.header_value()))?;
        let mut s = self.state();
        match s.brokers.get_mut(&(ns.to_owned(), name.to_owned())) {
            Some((_, fields)) => {
                *fields = patch.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }
    async fn delete_broker(&self, ns: &str, name: &str, m: &ManagedBy) -> Result<bool, ApiError> {
        self.check(format!("delete {ns}/{name} managedBy={}", m.header_value()))?;
        Ok(self
            .state()
            .brokers
            .remove(&(ns.to_owned(), name.to_owned()))
            .is_some())
    }
}

// === the mock Kubernetes API server ===

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl Recorded {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
struct KubeState {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    ready_replicas: i64,
}

#[derive(Clone, Default)]
struct MockKube(Arc<Mutex<KubeState>>);

const BROKER_PATH: &str = "/apis/starling.dev/v1alpha1/namespaces/iot/brokers/sensors";

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

impl MockKube {
    fn state(&self) -> std::sync::MutexGuard<'_, KubeState> {
        self.0.lock().expect("mock lock")
    }

    fn put(&self, path: &str, obj: Value) {
        self.state().objects.insert(path.to_owned(), obj);
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.state().objects.get(path).cloned()
    }

    fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state().requests)
    }

    fn answer(&self, r: &Recorded) -> (StatusCode, Value) {
        let mut s = self.state();
        match r.method.as_str() {
            "GET" => s
                .objects
                .get(&r.path)
                .cloned()
                .map_or_else(not_found, |o| (StatusCode::OK, o)),
            "POST" => (StatusCode::CREATED, r.body.clone()),
            "PATCH" if r.content_type.starts_with("application/apply-patch") => {
                if let Some(parent) = r.path.strip_suffix("/status") {
                    let Some(mut obj) = s.objects.get(parent).cloned() else {
                        return not_found();
                    };
                    obj["status"] = r.body["status"].clone();
                    s.objects.insert(parent.to_owned(), obj.clone());
                    (StatusCode::OK, obj)
                } else {
                    let mut obj = r.body.clone();
                    if r.path.contains("/deployments/") {
                        obj["status"] = json!({"readyReplicas": s.ready_replicas});
                    }
                    s.objects.insert(r.path.clone(), obj.clone());
                    (StatusCode::OK, obj)
                }
            }
            "PATCH" if r.content_type.starts_with("application/json-patch") => {
                let Some(mut obj) = s.objects.get(&r.path).cloned() else {
                    return not_found();
                };
                for op in r.body.as_array().cloned().unwrap_or_default() {
                    let path = op["path"].as_str().unwrap_or_default();
                    match (op["op"].as_str().unwrap_or_default(), path) {
                        ("add", "/metadata/finalizers") => {
                            obj["metadata"]["finalizers"] = op["value"].clone()
                        }
                        ("add", "/metadata/finalizers/-") => {
                            if let Some(f) = obj["metadata"]["finalizers"].as_array_mut() {
                                f.push(op["value"].clone());
                            }
                        }
                        ("remove", p) if p.starts_with("/metadata/finalizers/") => {
                            let i: usize = p
                                .rsplit('/')
                                .next()
                                .and_then(|i| i.parse().ok())
                                .unwrap_or(0);
                            if let Some(f) = obj["metadata"]["finalizers"].as_array_mut() {
                                f.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
                s.objects.insert(r.path.clone(), obj.clone());
                (StatusCode::OK, obj)
            }
            _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
        }
    }

    /// A client whose requests this mock answers, and the task serving them.
    fn client(&self) -> (Client, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        let task = tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (status, answer) = me.answer(&recorded);
                me.state().requests.push(recorded);
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                    .expect("response");
                send.send_response(resp);
            }
        });
        (Client::new(service, "default"), task)
    }
}

// === fixtures ===

struct World {
    kube: MockKube,
    api: FakeControlPlane,
    ctx: Arc<Context>,
    _server: tokio::task::JoinHandle<()>,
}

impl World {
    fn new() -> Self {
        Self::with_settings(settings())
    }

    fn with_settings(settings: resources::Settings) -> Self {
        let kube = MockKube::default();
        let api = FakeControlPlane::default();
        let (client, server) = kube.client();
        let ctx = Arc::new(Context::new(
            client,
            Arc::new(api.clone()),
            settings,
            Arc::default(),
        ));
        Self {
            kube,
            api,
            ctx,
            _server: server,
        }
    }

    /// Stores `b` as the API server's copy and reconciles it, under a timeout.
    async fn reconcile(&self, b: &Broker) -> Result<Action> {
        self.kube
            .put(BROKER_PATH, serde_json::to_value(b).expect("broker json"));
        tokio::time::timeout(
            Duration::from_secs(20),
            reconcile(Arc::new(b.clone()), self.ctx.clone()),
        )
        .await
        .expect("reconcile finishes in time")
    }

    /// The API server's current copy of the Broker.
    fn stored_broker(&self) -> Broker {
        serde_json::from_value(self.kube.get(BROKER_PATH).expect("stored")).expect("a Broker")
    }
}

/// A Broker that already carries the finalizer (so reconcile goes straight to Apply).
fn finalized(spec: Value) -> Broker {
    let mut b = broker(spec);
    b.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    b
}

fn lines(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter().map(Recorded::line).collect()
}

fn find<'a>(reqs: &'a [Recorded], line: &str) -> &'a Recorded {
    reqs.iter()
        .find(|r| r.line() == line)
        .unwrap_or_else(|| panic!("no request {line} in {:#?}", lines(reqs)))
}

fn checksum_of(reqs: &[Recorded]) -> String {
    find(
        reqs,
        "PATCH /apis/apps/v1/namespaces/iot/deployments/sensors",
    )
    .body["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        .as_str()
        .expect("checksum annotation")
        .to_owned()
}

fn condition_of(b: &Broker, type_: &str) -> Condition {
    b.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned())
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

const S: &str = "/api/v1/namespaces/iot/secrets";

// === tests ===

#[tokio::test]
async fn a_new_broker_first_gets_the_finalizer() {
    let w = World::new();
    let action = w.reconcile(&broker(json!({}))).await.expect("reconciles");
    assert_eq!(action, Action::await_change());
    let reqs = w.kube.take_requests();
    assert_eq!(lines(&reqs), [format!("PATCH {BROKER_PATH}")]);
    assert!(reqs[0].content_type.starts_with("application/json-patch"));
    assert_eq!(
        w.stored_broker().metadata.finalizers,
        Some(vec![FINALIZER.to_owned()])
    );
    assert!(
        w.api.calls().is_empty(),
        "nothing is registered before the finalizer is in place"
    );
}

#[tokio::test]
async fn create_registers_issues_tls_and_applies_every_object_with_owner_and_manager() {
    let w = World::new();
    w.reconcile(&finalized(
        json!({"hostname": "mqtt.example.com", "expiration": 3600}),
    ))
    .await
    .expect("reconciles");
    let reqs = w.kube.take_requests();
    assert_eq!(
        lines(&reqs),
        [
            format!("GET {S}/sensors-ca"),
            format!("PATCH {S}/sensors-ca"),
            format!("GET {S}/sensors-tls"),
            format!("PATCH {S}/sensors-tls"),
            format!("GET {S}/sensors-credentials"),
            format!("PATCH {S}/sensors-credentials"),
            "PATCH /api/v1/namespaces/iot/configmaps/sensors-config".to_owned(),
            "PATCH /api/v1/namespaces/iot/services/sensors".to_owned(),
            "PATCH /apis/apps/v1/namespaces/iot/deployments/sensors".to_owned(),
            format!("PATCH {BROKER_PATH}/status"),
            "POST /apis/events.k8s.io/v1/namespaces/iot/events".to_owned(),
        ]
    );
    for r in reqs.iter().filter(|r| r.method == "PATCH") {
        assert!(
            r.content_type.starts_with("application/apply-patch"),
            "{} is server-side apply",
            r.line()
        );
        assert!(
            r.query.contains("fieldManager=starling-operator") && r.query.contains("force=true"),
            "{}",
            r.query
        );
        if !r.path.ends_with("/status") {
            let owner = &r.body["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "Broker", "{}", r.line());
            assert_eq!(owner["name"], "sensors");
            assert_eq!(owner["controller"], true);
        }
    }
    assert_eq!(
        w.api.calls(),
        [
            "get iot/sensors",
            "ensure_namespace iot",
            "create iot/sensors managedBy=Broker/iot/sensors"
        ]
    );
    let creds = &find(&reqs, &format!("PATCH {S}/sensors-credentials")).body["data"];
    assert!(creds["broker-secret"].is_string() && creds["broker-id"].is_string());

    let status = w.stored_broker().status.expect("status");
    assert_eq!(status.broker_id.as_deref(), Some("brk_1"));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.phase,
        Some(Phase::Pending),
        "no replica is ready yet"
    );
    assert_eq!(
        status.endpoints.and_then(|e| e.mqtts).as_deref(),
        Some("mqtts://mqtt.example.com:8883")
    );
    assert!(status.tls.and_then(|t| t.not_after).is_some());
    let b = w.stored_broker();
    assert_eq!(condition_of(&b, "Progressing").reason, "RollingOut");
    assert_eq!(condition_of(&b, "Degraded").status, "False");
    let event = find(&reqs, "POST /apis/events.k8s.io/v1/namespaces/iot/events");
    assert_eq!(event.body["reason"], "Registered");
}

#[tokio::test]
async fn a_ready_deployment_makes_the_broker_ready_and_updates_patch_the_api() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    w.kube.take_requests();
    w.kube.state().ready_replicas = 1;
    let mut b = w.stored_broker();
    b.spec.description = Some("sensors of hall 3".to_owned());
    w.reconcile(&b).await.expect("second");
    let reqs = w.kube.take_requests();
    assert!(
        !lines(&reqs)
            .iter()
            .any(|l| l.starts_with("PATCH") && l.contains("secrets")),
        "{:#?}",
        lines(&reqs)
    );
    assert_eq!(
        w.api.calls()[3..],
        [
            "get iot/sensors",
            "patch iot/sensors managedBy=Broker/iot/sensors"
        ]
    );
    let stored = w.api.state().brokers[&("iot".to_owned(), "sensors".to_owned())]
        .1
        .clone();
    assert_eq!(stored.description.as_deref(), Some("sensors of hall 3"));
    let b = w.stored_broker();
    assert_eq!(b.status.as_ref().and_then(|s| s.phase), Some(Phase::Ready));
    assert_eq!(b.status.as_ref().map(|s| s.ready_replicas), Some(1));
    assert_eq!(condition_of(&b, "Ready").status, "True");
    assert_eq!(condition_of(&b, "Ready").reason, "BrokerReady");
}

#[tokio::test]
async fn a_config_change_rolls_the_pods_and_an_unchanged_spec_does_not() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    let first = checksum_of(&w.kube.take_requests());
    let b = w.stored_broker();
    w.reconcile(&b).await.expect("again");
    assert_eq!(
        checksum_of(&w.kube.take_requests()),
        first,
        "nothing changed, nothing rolls"
    );
    let mut b = w.stored_broker();
    b.spec.limits = Some(serde_json::from_value(json!({"maxConnections": 100})).expect("limits"));
    w.reconcile(&b).await.expect("changed");
    let reqs = w.kube.take_requests();
    assert_ne!(checksum_of(&reqs), first, "a limits change rolls the pods");
    let in_api = w.api.state().brokers[&("iot".to_owned(), "sensors".to_owned())]
        .1
        .clone();
    assert_eq!(
        in_api.limits,
        Some(json!({"maxConnections": 100})),
        "the api gets the limits too"
    );
    let cm = &find(
        &reqs,
        "PATCH /api/v1/namespaces/iot/configmaps/sensors-config",
    )
    .body;
    assert!(
        cm["data"]["broker.toml"]
            .as_str()
            .expect("toml")
            .contains("max_connections = 100")
    );
}

#[tokio::test]
async fn the_operators_hook_rules_reach_every_brokers_config_and_roll_its_pods() {
    let plain = World::new();
    plain
        .reconcile(&finalized(json!({})))
        .await
        .expect("reconcile");
    let plain_reqs = plain.kube.take_requests();
    let plain_toml = find(
        &plain_reqs,
        "PATCH /api/v1/namespaces/iot/configmaps/sensors-config",
    )
    .body["data"]["broker.toml"]
        .as_str()
        .expect("toml")
        .to_owned();
    assert!(!plain_toml.contains("[hook]"), "{plain_toml}");

    let w = World::with_settings(resources::Settings {
        broker_hook: resources::BrokerHook {
            allowed_hosts: vec!["moderation.default.svc".to_owned()],
            ..resources::BrokerHook::default()
        },
        ..settings()
    });
    w.reconcile(&finalized(json!({}))).await.expect("reconcile");
    let reqs = w.kube.take_requests();
    let text = find(
        &reqs,
        "PATCH /api/v1/namespaces/iot/configmaps/sensors-config",
    )
    .body["data"]["broker.toml"]
        .as_str()
        .expect("toml")
        .to_owned();
    let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
    assert_eq!(
        parsed["hook"]["allowed_hosts"].as_array().map(Vec::len),
        Some(1),
        "{text}"
    );
    assert_ne!(
        checksum_of(&reqs),
        checksum_of(&plain_reqs),
        "the pods roll onto the new rules"
    );
}

#[tokio::test]
async fn a_certificate_in_its_renewal_window_is_renewed_without_rolling_the_pods() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    let first = w.kube.take_requests();
    let before = checksum_of(&first);
    // Replace the leaf with one issued 70 days ago by the same CA: 20 days left, inside the
    // default 30-day renewal window.
    let ca_secret: Secret =
        serde_json::from_value(w.kube.get(&format!("{S}/sensors-ca")).expect("ca"))
            .expect("secret");
    let ca = ca_from_secret(&ca_secret).expect("ca material");
    let b = w.stored_broker();
    let old = certs::issue_leaf(
        &ca,
        &resources::tls_hosts(&b),
        Timestamp::now() - SignedDuration::from_hours(24 * 70),
        90,
    )
    .expect("old leaf");
    w.kube.put(
        &format!("{S}/sensors-tls"),
        serde_json::to_value(desired_tls_secret(&b, &old)).expect("json"),
    );

    w.reconcile(&b).await.expect("renewal");
    let reqs = w.kube.take_requests();
    assert!(
        lines(&reqs).contains(&format!("PATCH {S}/sensors-tls")),
        "the leaf is re-issued"
    );
    assert!(
        !lines(&reqs).contains(&format!("PATCH {S}/sensors-ca")),
        "the CA stays"
    );
    assert_eq!(
        checksum_of(&reqs),
        before,
        "certificates reload in place: no roll"
    );
    let new_leaf = leaf_from_secret(
        &serde_json::from_value(w.kube.get(&format!("{S}/sensors-tls")).expect("tls"))
            .expect("secret"),
    )
    .expect("leaf");
    let not_after = certs::inspect(&new_leaf.cert_pem)
        .expect("parses")
        .not_after;
    assert!(not_after > Timestamp::now() + SignedDuration::from_hours(24 * 89));
    let status = w.stored_broker().status.expect("status");
    assert_eq!(
        status.tls.and_then(|t| t.not_after),
        Some(not_after.to_string())
    );
    let event = reqs.iter().find(|r| r.method == "POST").expect("an event");
    assert_eq!(event.body["reason"], "CertificateRenewed");
}

#[tokio::test]
async fn an_unreachable_api_degrades_the_broker_emits_an_event_and_backs_off() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    w.kube.take_requests();
    w.api.state().down = true;
    let b = w.stored_broker();
    let err = w.reconcile(&b).await.expect_err("the api is down");
    assert_eq!(err.metric_label(), "ApiUnreachable");
    let reqs = w.kube.take_requests();
    assert!(
        !lines(&reqs).iter().any(|l| l.contains("deployments")),
        "running pods are left alone"
    );
    let b = w.stored_broker();
    assert_eq!(
        b.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Degraded)
    );
    assert_eq!(
        b.status
            .as_ref()
            .and_then(|s| s.broker_id.clone())
            .as_deref(),
        Some("brk_1"),
        "the id is kept"
    );
    let degraded = condition_of(&b, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ApiUnreachable")
    );
    assert!(degraded.message.contains("unreachable"));
    let event = reqs.iter().find(|r| r.method == "POST").expect("an event");
    assert_eq!(
        (event.body["type"].as_str(), event.body["reason"].as_str()),
        (Some("Warning"), Some("ApiUnreachable"))
    );

    let b = Arc::new(b);
    assert_eq!(
        error_policy(b.clone(), &err, w.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(b.clone(), &err, w.ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(
        error_policy(b, &err, w.ctx.clone()),
        Action::requeue(Duration::from_secs(20))
    );
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    w.ctx.metrics.register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("starling_operator_reconcile_errors_total{reason=\"ApiUnreachable\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn a_broker_deleted_in_the_api_is_degraded_and_not_recreated() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    w.kube.take_requests();
    w.api.state().brokers.clear();
    let b = w.stored_broker();
    let err = w.reconcile(&b).await.expect_err("gone in the api");
    assert_eq!(err.metric_label(), "DeletedInApi");
    assert!(
        !w.api
            .calls()
            .iter()
            .skip(3)
            .any(|c| c.starts_with("create")),
        "{:?}",
        w.api.calls()
    );
    let b = w.stored_broker();
    assert_eq!(condition_of(&b, "Degraded").reason, "DeletedInApi");
    assert_eq!(condition_of(&b, "Ready").status, "False");
    let reqs = w.kube.take_requests();
    let event = reqs.iter().find(|r| r.method == "POST").expect("an event");
    assert_eq!(event.body["reason"], "DeletedInApi");
}

#[tokio::test]
async fn deletion_deregisters_then_releases_the_finalizer() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    w.kube.take_requests();
    let mut b = w.stored_broker();
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    w.reconcile(&b).await.expect("cleanup");
    assert_eq!(
        w.api.calls().last().map(String::as_str),
        Some("delete iot/sensors managedBy=Broker/iot/sensors")
    );
    assert!(w.api.state().brokers.is_empty());
    let reqs = w.kube.take_requests();
    assert_eq!(
        lines(&reqs),
        [
            "POST /apis/events.k8s.io/v1/namespaces/iot/events".to_owned(),
            format!("PATCH {BROKER_PATH}")
        ]
    );
    assert_eq!(reqs[0].body["reason"], "Deregistered");
    assert!(reqs[1].content_type.starts_with("application/json-patch"));
    assert_eq!(w.stored_broker().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn deletion_keeps_the_finalizer_while_the_api_is_down() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    w.kube.take_requests();
    w.api.state().down = true;
    let mut b = w.stored_broker();
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    let err = w.reconcile(&b).await.expect_err("cannot deregister");
    assert_eq!(err.metric_label(), "ApiUnreachable");
    let reqs = w.kube.take_requests();
    assert!(
        reqs.iter().all(|r| r.method != "PATCH"),
        "the finalizer stays: {:#?}",
        lines(&reqs)
    );
    assert_eq!(reqs[0].body["reason"], "DeregistrationFailed");
}

#[tokio::test]
async fn the_skip_annotation_releases_without_deregistering() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    w.kube.take_requests();
    w.api.state().down = true;
    let mut b = w.stored_broker();
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    b.metadata.annotations = Some(BTreeMap::from([(
        crate::crd::SKIP_DEREGISTER_ANNOTATION.to_owned(),
        "true".to_owned(),
    )]));
    let calls_before = w.api.calls().len();
    w.reconcile(&b).await.expect("released");
    assert_eq!(w.api.calls().len(), calls_before, "the api is not called");
    let reqs = w.kube.take_requests();
    assert_eq!(reqs[0].body["reason"], "DeregistrationSkipped");
    assert_eq!(w.stored_broker().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn a_missing_external_tls_secret_degrades_but_still_deploys() {
    let w = World::new();
    let err = w
        .reconcile(&finalized(
            json!({"tls": {"secretName": "mqtt-example-com"}}),
        ))
        .await
        .expect_err("no secret");
    assert_eq!(err.metric_label(), "TlsSecretInvalid");
    let reqs = w.kube.take_requests();
    assert_eq!(lines(&reqs)[0], format!("GET {S}/mqtt-example-com"));
    assert!(
        !lines(&reqs).iter().any(|l| l.contains("sensors-ca")),
        "no operator-issued CA"
    );
    assert!(lines(&reqs).iter().any(|l| l.contains("deployments")));
    assert_eq!(
        condition_of(&w.stored_broker(), "Degraded").reason,
        "TlsSecretInvalid"
    );
}

#[test]
fn backoff_doubles_from_five_seconds_to_five_minutes() {
    let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(backoff(u32::MAX).as_secs(), 300);
}

#[test]
fn condition_times_survive_while_the_status_holds() {
    let mut b = broker(json!({}));
    let t0 = Timestamp::from_second(1_800_000_000).expect("t0");
    let first = desired_status(&b, 0, Some("id".to_owned()), None, None, t0);
    b.status = Some(first.clone());
    let t1 = t0 + SignedDuration::from_mins(5);
    let second = desired_status(&b, 0, Some("id".to_owned()), None, None, t1);
    assert_eq!(
        second.conditions, first.conditions,
        "no change, no new transition time"
    );
    let third = desired_status(&b, 1, Some("id".to_owned()), None, None, t1);
    let ready = third
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("ready");
    assert_eq!(
        (ready.status.as_str(), ready.last_transition_time.clone()),
        ("True", t1.to_string())
    );
}

#[tokio::test]
async fn a_pubsub_namespace_outside_the_tenancy_is_refused_without_touching_the_api() {
    let w = World::new();
    let err = w
        .reconcile(&finalized(json!({"namespace": "factory"})))
        .await
        .expect_err("refused");
    assert_eq!(err.metric_label(), "NamespaceNotAllowed");
    assert!(w.api.calls().is_empty(), "{:?}", w.api.calls());
    let reqs = w.kube.take_requests();
    assert_eq!(
        lines(&reqs),
        [
            format!("PATCH {BROKER_PATH}/status"),
            "POST /apis/events.k8s.io/v1/namespaces/iot/events".to_owned(),
        ],
        "no Secret, ConfigMap, Service or Deployment"
    );
    let event = find(&reqs, "POST /apis/events.k8s.io/v1/namespaces/iot/events");
    assert_eq!(event.body["reason"], "NamespaceNotAllowed");
    assert_eq!(event.body["type"], "Warning");
    let b = w.stored_broker();
    let degraded = condition_of(&b, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "NamespaceNotAllowed")
    );
    assert!(
        degraded.message.contains("factory") && degraded.message.contains("allowed: iot"),
        "{}",
        degraded.message
    );
    assert_eq!(b.status.and_then(|s| s.phase), Some(Phase::Degraded));

    // Deleting it releases the finalizer without deregistering anything.
    let mut b = w.stored_broker();
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    w.reconcile(&b).await.expect("released");
    assert!(w.api.calls().is_empty(), "{:?}", w.api.calls());
}

#[tokio::test]
async fn the_allow_list_lets_a_kubernetes_namespace_use_another_pubsub_namespace() {
    let w = World::with_settings(resources::Settings {
        tenancy: crate::tenancy::Tenancy::parse(&["iot=factory"]).expect("valid"),
        ..settings()
    });
    w.reconcile(&finalized(json!({"namespace": "factory"})))
        .await
        .expect("allowed");
    assert_eq!(
        w.api.calls(),
        [
            "get factory/sensors",
            "ensure_namespace factory",
            "create factory/sensors managedBy=Broker/iot/sensors"
        ]
    );
}
