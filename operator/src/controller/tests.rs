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
    brokers: HashMap<(String, String), (String, BrokerPatch, Option<ManagedBy>)>,
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
            .map(|(id, _, managed_by)| ApiBroker {
                id: id.clone(),
                name: name.to_owned(),
                managed_by: managed_by.clone(),
            }))
    }
    async fn create_broker(&self, ns: &str, req: &BrokerCreate) -> Result<CreateOutcome, ApiError> {
        self.check(format!(
            "create {ns}/{} managedBy={}",
            req.name,
            req.managed_by
                .as_ref()
                .map(ManagedBy::marker)
                .unwrap_or_default()
        ))?;
        let mut s = self.state();
        let key = (ns.to_owned(), req.name.clone());
        if s.brokers.contains_key(&key) {
            return Ok(CreateOutcome::AlreadyExists);
        }
        s.next_id += 1;
        let id = format!("brk_{}", s.next_id);
        let fields = BrokerPatch {
            name: None,
            description: req.description.clone(),
            expiration: Some(req.expiration),
            on_publish: Some(req.on_publish.clone()),
            limits: Some(req.limits.clone()),
            endpoint: Some(req.endpoint.clone()),
            ws_endpoint: Some(req.ws_endpoint.clone()),
        };
        s.brokers
            .insert(key, (id.clone(), fields, req.managed_by.clone()));
        Ok(CreateOutcome::Created(CreatedBroker {
            id,
            secret: format!("secret-{}", s.next_id).into(),
        }))
    }
    async fn patch_broker(
        &self,
        ns: &str,
        name: &str,
        patch: &BrokerPatch,
        m: &ManagedBy,
    ) -> Result<bool, ApiError> {
        self.check(format!("patch {ns}/{name} managedBy={}", m.marker()))?;
        let mut s = self.state();
        match s.brokers.get_mut(&(ns.to_owned(), name.to_owned())) {
            Some((_, fields, _)) => {
                *fields = patch.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }
    async fn rotate_secret(
        &self,
        ns: &str,
        name: &str,
        m: &ManagedBy,
    ) -> Result<Option<String>, ApiError> {
        self.check(format!("rotate {ns}/{name} managedBy={}", m.marker()))?;
        let mut s = self.state();
        s.next_id += 1;
        let secret = format!("rotated-{}", s.next_id);
        Ok(s.brokers
            .contains_key(&(ns.to_owned(), name.to_owned()))
            .then_some(secret))
    }
    async fn delete_broker(&self, ns: &str, name: &str, m: &ManagedBy) -> Result<bool, ApiError> {
        self.check(format!("delete {ns}/{name} managedBy={}", m.marker()))?;
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
    /// The Deployment controller has not caught up with a new spec yet.
    rollout_held: bool,
    /// Paths whose server-side apply the server rejects.
    failing: Vec<String>,
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
                    if s.failing.contains(&r.path) {
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422, "message": "admission webhook denied the request"}),
                        );
                    }
                    let mut obj = r.body.clone();
                    if r.path.contains("/deployments/") {
                        // Like the API server: the generation counts spec changes; the status
                        // is the Deployment controller's, caught up unless the test holds it.
                        let previous = s.objects.get(&r.path).cloned();
                        let generation = match &previous {
                            Some(p) if p["spec"] == obj["spec"] => {
                                p["metadata"]["generation"].as_i64().unwrap_or(1)
                            }
                            Some(p) => p["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
                            None => 1,
                        };
                        obj["metadata"]["generation"] = json!(generation);
                        obj["status"] = match (&previous, s.rollout_held) {
                            (Some(p), true) => p["status"].clone(),
                            _ => json!({
                                "observedGeneration": generation,
                                "replicas": s.ready_replicas,
                                "updatedReplicas": s.ready_replicas,
                                "readyReplicas": s.ready_replicas,
                            }),
                        };
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
            // What exposes the Service decides the endpoints the api is told.
            "GET /api/v1/namespaces/iot/services/sensors".to_owned(),
            "GET /apis/networking.k8s.io/v1/namespaces/iot/ingresses".to_owned(),
            "GET /apis/gateway.networking.k8s.io/v1/namespaces/iot/httproutes".to_owned(),
            "GET /apis/gateway.networking.k8s.io/v1alpha2/namespaces/iot/tlsroutes".to_owned(),
            format!("PATCH {S}/sensors-credentials"),
            "GET /api/v1/namespaces/iot/configmaps/sensors-config".to_owned(),
            "PATCH /api/v1/namespaces/iot/configmaps/sensors-config".to_owned(),
            "GET /api/v1/namespaces/iot/services/sensors".to_owned(),
            "PATCH /api/v1/namespaces/iot/services/sensors".to_owned(),
            "GET /apis/apps/v1/namespaces/iot/deployments/sensors".to_owned(),
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
    // A description removed from the spec is cleared in the api, not kept.
    let mut cleared = w.stored_broker();
    cleared.spec.description = None;
    w.reconcile(&cleared).await.expect("third");
    let stored = w.api.state().brokers[&("iot".to_owned(), "sensors".to_owned())]
        .1
        .clone();
    assert_eq!(stored.description.as_deref(), Some(""));
    let b = w.stored_broker();
    assert_eq!(b.status.as_ref().and_then(|s| s.phase), Some(Phase::Ready));
    assert_eq!(b.status.as_ref().map(|s| s.ready_replicas), Some(1));
    assert_eq!(condition_of(&b, "Ready").status, "True");
    assert_eq!(condition_of(&b, "Ready").reason, "BrokerReady");
}

#[tokio::test]
async fn the_api_is_told_the_endpoints_the_status_advertises_at_registration_and_after_a_change() {
    let w = World::new();
    w.reconcile(&finalized(json!({"hostname": "mqtt.example.com"})))
        .await
        .expect("first");
    let sent = |w: &World| {
        let fields = w.api.state().brokers[&("iot".to_owned(), "sensors".to_owned())]
            .1
            .clone();
        (fields.endpoint.flatten(), fields.ws_endpoint.flatten())
    };
    let status_endpoints = |w: &World| {
        let e = w
            .stored_broker()
            .status
            .and_then(|s| s.endpoints)
            .expect("status.endpoints");
        (e.mqtts, e.wss.into_iter().next())
    };
    assert_eq!(sent(&w), status_endpoints(&w), "at registration");
    assert_eq!(sent(&w).0.as_deref(), Some("mqtts://mqtt.example.com:8883"));

    let mut b = w.stored_broker();
    b.spec.hostname = Some("devices.example.org".to_owned());
    w.reconcile(&b).await.expect("changed");
    assert_eq!(sent(&w), status_endpoints(&w), "after the hostname changed");
    assert_eq!(
        sent(&w).0.as_deref(),
        Some("mqtts://devices.example.org:8883")
    );
    assert!(
        sent(&w)
            .1
            .is_some_and(|wss| wss.starts_with("wss://devices.example.org:")),
        "{:?}",
        sent(&w)
    );
}

#[tokio::test]
async fn a_load_balancer_that_never_gets_an_address_is_not_polled_forever() {
    let w = World::new();
    let spec = json!({"service": {"type": "LoadBalancer"}});
    w.reconcile(&finalized(spec)).await.expect("first");
    let mut svc = w
        .kube
        .get("/api/v1/namespaces/iot/services/sensors")
        .expect("service");
    svc["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    w.kube.put("/api/v1/namespaces/iot/services/sensors", svc);
    let action = w.reconcile(&w.stored_broker()).await.expect("second");
    assert_ne!(action, Action::requeue(EXPOSURE_PENDING));
    assert!(
        w.stored_broker()
            .status
            .and_then(|s| s.endpoints)
            .and_then(|e| e.note)
            .is_some_and(|n| n.contains("waiting")),
        "the status still says so"
    );
}

#[tokio::test]
async fn a_load_balancer_address_and_an_ingress_reach_the_status_and_the_api() {
    let w = World::new();
    let spec = json!({"service": {"type": "LoadBalancer"}});
    let action = w.reconcile(&finalized(spec)).await.expect("first");
    let endpoints = |w: &World| {
        w.stored_broker()
            .status
            .and_then(|s| s.endpoints)
            .expect("status.endpoints")
    };
    assert!(
        endpoints(&w).note.is_some_and(|n| n.contains("waiting")),
        "no address yet"
    );
    assert_eq!(
        action,
        Action::requeue(EXPOSURE_PENDING),
        "looks again soon while the address is pending"
    );

    let mut svc = w
        .kube
        .get("/api/v1/namespaces/iot/services/sensors")
        .expect("service");
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}});
    w.kube.put("/api/v1/namespaces/iot/services/sensors", svc);
    w.kube.put(
        "/apis/networking.k8s.io/v1/namespaces/iot/ingresses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressList", "metadata": {},
            "items": [{"metadata": {"name": "wss", "namespace": "iot"}, "spec": {
                "tls": [{"hosts": ["ws.example.com"]}],
                "rules": [{"host": "ws.example.com", "http": {"paths": [{"path": "/mqtt",
                    "pathType": "Exact", "backend": {"service": {"name": "sensors",
                    "port": {"name": "wss-443"}}}}]}}]}}]}),
    );
    w.reconcile(&w.stored_broker()).await.expect("second");
    let e = endpoints(&w);
    assert_eq!(e.mqtts.as_deref(), Some("mqtts://203.0.113.9:8883"));
    assert_eq!(e.wss, ["wss://ws.example.com:443/mqtt"]);
    let fields = w.api.state().brokers[&("iot".to_owned(), "sensors".to_owned())]
        .1
        .clone();
    assert_eq!(
        (fields.endpoint.flatten(), fields.ws_endpoint.flatten()),
        (e.mqtts.clone(), e.wss.first().cloned()),
        "the api shows the same"
    );
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
        in_api
            .limits
            .map(|l| serde_json::to_value(l).expect("serializes")),
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
    let none = Rollout {
        observed: true,
        ..Rollout::default()
    };
    let first = desired_status(&b, Some(&none), Some("id".to_owned()), None, None, t0);
    b.status = Some(first.clone());
    let t1 = t0 + SignedDuration::from_mins(5);
    let second = desired_status(&b, Some(&none), Some("id".to_owned()), None, None, t1);
    assert_eq!(
        second.conditions, first.conditions,
        "no change, no new transition time"
    );
    let one = Rollout {
        observed: true,
        updated: 1,
        ready: 1,
        total: 1,
    };
    let third = desired_status(&b, Some(&one), Some("id".to_owned()), None, None, t1);
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

fn ready_of(s: &BrokerStatus) -> (String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    (c.status.clone(), c.reason.clone())
}

fn progressing_of(s: &BrokerStatus) -> String {
    s.conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("Progressing")
        .status
        .clone()
}

#[test]
fn ready_waits_for_every_replica_of_the_current_template() {
    let b = broker(json!({}));
    let now = Timestamp::from_second(1_800_000_000).expect("now");
    let id = || Some("id".to_owned());
    let status = |r: Rollout| desired_status(&b, Some(&r), id(), None, None, now);
    let done = Rollout {
        observed: true,
        updated: 1,
        ready: 1,
        total: 1,
    };
    assert_eq!(
        ready_of(&status(done)),
        ("True".into(), "BrokerReady".into())
    );
    assert_eq!(progressing_of(&status(done)), "False");
    for (r, what) in [
        (
            Rollout {
                observed: false,
                ..done
            },
            "the Deployment controller has not seen the new spec",
        ),
        (
            Rollout { updated: 0, ..done },
            "the ready pod runs the old template",
        ),
        (Rollout { ready: 0, ..done }, "the new pod is not ready"),
        (Rollout { total: 2, ..done }, "an old pod is still there"),
    ] {
        let s = status(r);
        assert_eq!(
            ready_of(&s),
            ("False".into(), "RollingOut".into()),
            "{what}"
        );
        assert_eq!(progressing_of(&s), "True", "{what}");
        assert_eq!(s.phase, Some(Phase::Pending), "{what}");
    }
    let none = desired_status(&b, None, id(), None, None, now);
    assert_eq!(ready_of(&none).0, "False", "no Deployment applied");
}

#[test]
fn zero_replicas_is_not_ready() {
    let b = broker(json!({"replicas": 0}));
    let now = Timestamp::from_second(1_800_000_000).expect("now");
    let scaled_down = Rollout {
        observed: true,
        ..Rollout::default()
    };
    let s = desired_status(&b, Some(&scaled_down), Some("id".into()), None, None, now);
    assert_eq!(ready_of(&s), ("False".into(), "ScaledToZero".into()));
    assert_eq!(progressing_of(&s), "False", "scaling to zero is done");
    assert_ne!(s.phase, Some(Phase::Ready));
}

#[test]
fn a_rollout_reads_the_deployment_status() {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "sensors", "generation": 3},
        "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1}
    }))
    .expect("deployment");
    assert_eq!(
        Rollout::of(&d),
        Rollout {
            observed: false,
            updated: 1,
            ready: 1,
            total: 2
        }
    );
}

#[test]
fn resync_is_jittered_by_up_to_a_tenth() {
    let d = Duration::from_secs(300);
    let all: Vec<Duration> = (0..50).map(|_| jittered(d)).collect();
    assert!(all.iter().all(|j| *j >= d && *j < d + d / 10), "{all:?}");
    assert!(
        all.iter().any(|j| *j != all[0]),
        "not all the same: {all:?}"
    );
}

// === rollout, failures, ownership ===

#[tokio::test]
async fn a_spec_change_drops_ready_until_the_pods_are_updated() {
    let w = World::new();
    w.kube.state().ready_replicas = 1;
    w.reconcile(&finalized(json!({}))).await.expect("first");
    assert_eq!(condition_of(&w.stored_broker(), "Ready").status, "True");
    w.kube.state().rollout_held = true;
    let mut b = w.stored_broker();
    b.spec.limits = Some(serde_json::from_value(json!({"maxConnections": 100})).expect("limits"));
    b.metadata.generation = Some(2);
    w.reconcile(&b).await.expect("changed");
    let b = w.stored_broker();
    let ready = condition_of(&b, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RollingOut")
    );
    assert_eq!(condition_of(&b, "Progressing").status, "True");
    assert_eq!(
        b.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Pending)
    );
    w.kube.state().rollout_held = false;
    w.reconcile(&b).await.expect("rolled out");
    let b = w.stored_broker();
    assert_eq!(condition_of(&b, "Ready").status, "True");
    assert_eq!(condition_of(&b, "Progressing").reason, "RolledOut");
}

#[tokio::test]
async fn a_failed_apply_is_degraded_with_the_reason_and_an_event() {
    let w = World::new();
    w.kube
        .state()
        .failing
        .push("/api/v1/namespaces/iot/configmaps/sensors-config".to_owned());
    let err = w
        .reconcile(&finalized(json!({})))
        .await
        .expect_err("the ConfigMap is refused");
    assert_eq!(err.metric_label(), "ApplyFailed");
    let b = w.stored_broker();
    let degraded = condition_of(&b, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ApplyFailed")
    );
    assert!(
        degraded.message.contains("ConfigMap sensors-config")
            && degraded.message.contains("admission webhook denied"),
        "{}",
        degraded.message
    );
    assert_eq!(
        b.status.as_ref().and_then(|s| s.broker_id.as_deref()),
        Some("brk_1"),
        "the registration is kept"
    );
    let reqs = w.kube.take_requests();
    assert!(
        !lines(&reqs).iter().any(|l| l.contains("deployments")),
        "nothing after the failed step"
    );
    let event = reqs
        .iter()
        .find(|r| r.method == "POST" && r.body["type"] == "Warning")
        .expect("a Warning event");
    assert_eq!(event.body["reason"], "ApplyFailed");
}

#[tokio::test]
async fn an_object_the_operator_did_not_create_is_never_taken_over() {
    for (path, what) in [
        ("/api/v1/namespaces/iot/services/sensors", "Service sensors"),
        (&format!("{S}/sensors-tls") as &str, "Secret sensors-tls"),
    ] {
        let w = World::new();
        // A user's Service, or cert-manager's Secret, of the name the operator would use.
        w.kube.put(
            path,
            json!({"metadata": {"name": path.rsplit('/').next(), "namespace": "iot",
                "labels": {"app": "mine"}}, "spec": {"ports": [{"port": 80}]}}),
        );
        let before = w.kube.get(path);
        let err = w
            .reconcile(&finalized(json!({})))
            .await
            .expect_err("a conflict");
        assert_eq!(err.metric_label(), "OwnershipConflict", "{what}");
        let reqs = w.kube.take_requests();
        assert!(
            !reqs.iter().any(|r| r.method == "PATCH" && r.path == path),
            "{what} is not applied to"
        );
        assert_eq!(w.kube.get(path), before, "{what} is untouched");
        let degraded = condition_of(&w.stored_broker(), "Degraded");
        assert_eq!(degraded.reason, "OwnershipConflict");
        assert!(degraded.message.contains(what), "{}", degraded.message);
        assert!(
            reqs.iter()
                .any(|r| r.method == "POST" && r.body["reason"] == "OwnershipConflict")
        );
    }
}

#[tokio::test]
async fn a_lost_credential_secret_is_recovered_by_rotating_the_broker_secret() {
    let w = World::new();
    w.reconcile(&finalized(json!({}))).await.expect("first");
    let first = checksum_of(&w.kube.take_requests());
    w.kube
        .state()
        .objects
        .remove(&format!("{S}/sensors-credentials"));
    let b = w.stored_broker();
    w.reconcile(&b).await.expect("recovered");
    assert!(
        w.api
            .calls()
            .contains(&"rotate iot/sensors managedBy=Broker/iot/sensors".to_owned()),
        "{:?}",
        w.api.calls()
    );
    let reqs = w.kube.take_requests();
    let creds = &find(&reqs, &format!("PATCH {S}/sensors-credentials")).body["data"];
    assert_eq!(
        creds["broker-secret"],
        json!(k8s_openapi::ByteString(b"rotated-2".to_vec())),
        "the new secret is stored"
    );
    assert_ne!(checksum_of(&reqs), first, "the pods roll to the new secret");
    assert!(
        reqs.iter()
            .any(|r| r.method == "POST" && r.body["reason"] == "CredentialsRecovered")
    );
    assert_eq!(condition_of(&w.stored_broker(), "Degraded").status, "False");
}

#[tokio::test]
async fn an_api_broker_this_broker_did_not_register_is_neither_adopted_nor_deleted() {
    let w = World::new();
    // Made through the API, with no managing resource.
    w.api.state().brokers.insert(
        ("iot".to_owned(), "sensors".to_owned()),
        ("brk_api".to_owned(), BrokerPatch::default(), None),
    );
    let err = w
        .reconcile(&finalized(json!({})))
        .await
        .expect_err("not ours");
    assert_eq!(err.metric_label(), "NotManaged");
    assert!(
        !w.api
            .calls()
            .iter()
            .any(|c| c.starts_with("rotate") || c.starts_with("patch"))
    );
    let mut b = w.stored_broker();
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    w.kube.take_requests();
    w.reconcile(&b).await.expect("released");
    assert!(
        !w.api.calls().iter().any(|c| c.starts_with("delete")),
        "{:?}",
        w.api.calls()
    );
    assert!(
        w.api
            .state()
            .brokers
            .contains_key(&("iot".to_owned(), "sensors".to_owned()))
    );
    let reqs = w.kube.take_requests();
    assert_eq!(reqs[0].body["reason"], "NotDeregistered");
    assert_eq!(w.stored_broker().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn setting_changing_or_removing_spec_namespace_is_refused_by_the_operator() {
    for (first, then) in [
        (json!({}), json!({"namespace": "acme"})),
        (json!({"namespace": "acme"}), json!({"namespace": "other"})),
        (json!({"namespace": "acme"}), json!({})),
    ] {
        // The tenancy lets iot use acme and other: only the immutability stands in the way.
        let w = World::with_settings(resources::Settings {
            tenancy: crate::tenancy::Tenancy::parse(&["iot=acme", "iot=other"]).expect("valid"),
            ..settings()
        });
        w.reconcile(&finalized(first.clone())).await.expect("first");
        let registered = w.stored_broker();
        let mut b = registered.clone();
        b.spec = serde_json::from_value(then.clone()).expect("spec");
        w.api.state().calls.clear();
        let err = w.reconcile(&b).await.expect_err("immutable");
        assert_eq!(
            err.metric_label(),
            "NamespaceImmutable",
            "{first} -> {then}"
        );
        assert!(
            w.api.calls().is_empty(),
            "no api call for another namespace: {:?}",
            w.api.calls()
        );
        let b = w.stored_broker();
        assert_eq!(condition_of(&b, "Degraded").reason, "NamespaceImmutable");
        assert_eq!(
            b.status.as_ref().and_then(|s| s.api_namespace.clone()),
            registered
                .status
                .as_ref()
                .and_then(|s| s.api_namespace.clone()),
            "the registration's namespace is kept"
        );
        // Deletion still deregisters where it was registered.
        let mut b = b;
        b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::now(),
        ));
        w.reconcile(&b).await.expect("cleanup");
        let ns = first["namespace"].as_str().unwrap_or("iot");
        assert_eq!(
            w.api.calls().last().cloned(),
            Some(format!("delete {ns}/sensors managedBy=Broker/iot/sensors"))
        );
    }
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

#[tokio::test]
async fn with_network_policies_each_broker_gets_one_owned_by_it() {
    let w = World::with_settings(resources::Settings {
        network_policy: Some("monitoring".to_owned()),
        ..settings()
    });
    w.reconcile(&finalized(json!({})))
        .await
        .expect("reconciles");
    let reqs = w.kube.take_requests();
    let p = find(
        &reqs,
        "PATCH /apis/networking.k8s.io/v1/namespaces/iot/networkpolicies/sensors",
    );
    assert!(p.content_type.starts_with("application/apply-patch"));
    assert_eq!(p.body["metadata"]["ownerReferences"][0]["name"], "sensors");
    assert_eq!(
        p.body["spec"]["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let w = World::new();
    w.reconcile(&finalized(json!({})))
        .await
        .expect("reconciles");
    assert!(
        !lines(&w.kube.take_requests())
            .iter()
            .any(|l| l.contains("networkpolicies")),
        "none without the setting"
    );
}

#[test]
fn a_certificate_within_seven_days_of_expiry_sets_certificate_expiring() {
    let b = broker(json!({}));
    let now = Timestamp::now();
    let cert = |days: i64| {
        let s = desired_status(
            &b,
            None,
            None,
            Some(now + SignedDuration::from_hours(24 * days)),
            None,
            now,
        );
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "CertificateExpiring")
            .expect("the condition")
    };
    let c = cert(30);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Valid"));
    let c = cert(6);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "ExpiresSoon")
    );
    assert!(c.message.contains("expires at"), "{}", c.message);
    let c = cert(-1);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Expired"));
    let none = desired_status(&b, None, None, None, None, now);
    assert!(
        !none
            .conditions
            .iter()
            .any(|c| c.type_ == "CertificateExpiring"),
        "no certificate known, no condition"
    );
}

#[tokio::test]
async fn several_replicas_get_a_budget_where_policy_v1_is_served_and_an_event_where_not() {
    let w = World::with_settings(resources::Settings {
        cluster_nats: vec!["nats://nats.starling-system.svc:4222".to_owned()],
        ..settings()
    });
    let mut b = finalized(json!({}));
    b.spec.replicas = 2;
    w.reconcile(&b).await.expect("reconciles");
    let budget = condition_of(&w.stored_broker(), "DisruptionBudget");
    assert_eq!(
        (budget.status.as_str(), budget.reason.as_str()),
        ("False", "PolicyV1Unavailable")
    );
    let reqs = w.kube.take_requests();
    assert!(
        !lines(&reqs)
            .iter()
            .any(|l| l.contains("poddisruptionbudgets")),
        "{:#?}",
        lines(&reqs)
    );
    let note = reqs
        .iter()
        .find(|r| r.body["reason"] == "DisruptionBudgetUnavailable")
        .unwrap_or_else(|| panic!("no event in {:#?}", lines(&reqs)));
    assert_eq!(note.body["type"], "Normal");

    w.kube.put(
        "/apis/policy/v1",
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "policy/v1", "resources": [
            {"name": "poddisruptionbudgets", "singularName": "poddisruptionbudget", "namespaced": true,
             "kind": "PodDisruptionBudget", "verbs": ["create", "get", "patch"]}]}),
    );
    let b = {
        let mut s = w.stored_broker();
        s.spec.replicas = 2;
        s
    };
    w.reconcile(&b).await.expect("reconciles");
    let reqs = w.kube.take_requests();
    let pdb = find(
        &reqs,
        "PATCH /apis/policy/v1/namespaces/iot/poddisruptionbudgets/sensors",
    );
    assert_eq!(pdb.body["spec"]["maxUnavailable"], 1);
    let dep = find(
        &reqs,
        "PATCH /apis/apps/v1/namespaces/iot/deployments/sensors",
    );
    assert_eq!(
        dep.body["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
}

#[tokio::test]
async fn nats_credentials_reach_each_brokers_pods_through_its_own_secret_never_the_config() {
    let w = World::with_settings(resources::Settings {
        cluster_nats: vec!["nats://nats.starling-system.svc:4222".to_owned()],
        cluster_secrets: resources::ClusterSecrets {
            namespace: "starling-system".to_owned(),
            auth: Some("starling-nats-auth".to_owned()),
            tls: None,
        },
        nats_auth: None,
        ..settings()
    });
    let mut b = finalized(json!({}));
    b.spec.replicas = 3;
    // The Secret is not there yet: Degraded, saying which Secret, and nothing rolled out.
    w.reconcile(&b).await.expect_err("no Secret yet");
    let degraded = condition_of(&w.stored_broker(), "Degraded");
    assert_eq!(degraded.reason, "NatsCredentials");
    assert!(
        degraded
            .message
            .contains("starling-system/starling-nats-auth"),
        "{}",
        degraded.message
    );
    w.kube.take_requests();

    w.kube.put(
        "/api/v1/namespaces/starling-system/secrets/starling-nats-auth",
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "starling-nats-auth", "namespace": "starling-system"},
            "data": {"token": "czNjcjN0LXRva2Vu"}}),
    );
    let mut b = w.stored_broker();
    b.spec.replicas = 3;
    w.reconcile(&b).await.expect("reconciles");
    let reqs = w.kube.take_requests();
    let copy = find(&reqs, &format!("PATCH {S}/sensors-nats"));
    assert_eq!(copy.body["data"]["token"], "czNjcjN0LXRva2Vu");
    assert_eq!(
        copy.body["metadata"]["ownerReferences"][0]["kind"],
        "Broker"
    );
    let config = find(
        &reqs,
        "PATCH /api/v1/namespaces/iot/configmaps/sensors-config",
    );
    let dep = find(
        &reqs,
        "PATCH /apis/apps/v1/namespaces/iot/deployments/sensors",
    );
    for r in [config, dep] {
        let text = r.body.to_string();
        assert!(
            !text.contains("s3cr3t-token") && !text.contains("czNjcjN0LXRva2Vu"),
            "{text}"
        );
    }
    let env = &dep.body["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "STARLING_BROKER__CLUSTER__TOKEN"
                && e["valueFrom"]["secretKeyRef"]["name"] == "sensors-nats"),
        "{env}"
    );
    assert_eq!(dep.body["spec"]["replicas"], 3);
    let status = w.stored_broker().status.unwrap();
    assert!(!serde_json::to_string(&status).unwrap().contains("s3cr3t"));
}

#[test]
fn an_event_note_is_cut_to_what_the_api_server_takes_on_a_character_boundary() {
    assert_eq!(event_note("short".to_owned()), "short");
    let long = "é".repeat(800);
    let cut = event_note(long.clone());
    assert!(cut.len() <= EVENT_NOTE_MAX, "{}", cut.len());
    assert!(cut.ends_with("..."));
    assert!(long.starts_with(cut.trim_end_matches("...")));
    let exact = "a".repeat(EVENT_NOTE_MAX);
    assert_eq!(event_note(exact.clone()), exact);
}

#[test]
fn the_status_says_whether_the_state_is_durable() {
    let durable = |spec: Value| {
        let b = crate::resources::fixtures::broker(spec);
        let s = desired_status(&b, None, None, None, None, Timestamp::now());
        let c = s
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Durable")
            .expect("a Durable condition");
        (c.status, c.reason, c.message)
    };
    let (status, reason, message) = durable(json!({}));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "EphemeralStorage")
    );
    assert!(
        message.contains("lost when the pod is rescheduled"),
        "{message}"
    );
    let (status, reason, message) = durable(json!({"storage": {"size": "1Gi"}}));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "PersistentVolumeClaim")
    );
    assert!(message.contains("sensors-data"), "{message}");
}

#[tokio::test]
async fn more_than_one_replica_without_a_nats_cluster_is_degraded_and_nothing_is_scaled() {
    let w = World::new();
    let mut b = finalized(json!({}));
    b.spec.replicas = 3;
    assert!(w.reconcile(&b).await.is_err(), "refused");
    let stored = w.stored_broker();
    let degraded = condition_of(&stored, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ReplicasNeedCluster")
    );
    assert!(degraded.message.contains("NATS"), "{}", degraded.message);
    let reqs = w.kube.take_requests();
    assert!(
        !lines(&reqs).iter().any(|l| l.contains("/deployments/")),
        "{:#?}",
        lines(&reqs)
    );

    let w = World::with_settings(resources::Settings {
        cluster_nats: vec!["nats://nats:4222".to_owned()],
        ..settings()
    });
    let mut b = finalized(json!({"storage": {"size": "1Gi"}}));
    b.spec.replicas = 2;
    assert!(w.reconcile(&b).await.is_err(), "refused");
    assert_eq!(
        condition_of(&w.stored_broker(), "Degraded").reason,
        "StorageWithReplicas"
    );
}

#[test]
fn the_status_carries_the_replicas_and_selector_of_the_scale_subresource() {
    let b = crate::resources::fixtures::broker(json!({"replicas": 1}));
    let r = Rollout {
        observed: true,
        updated: 1,
        ready: 1,
        total: 2,
    };
    let s = desired_status(&b, Some(&r), None, None, None, Timestamp::now());
    assert_eq!(s.replicas, Some(2));
    assert_eq!(
        s.selector.as_deref(),
        Some("app.kubernetes.io/instance=sensors,starling.dev/broker=sensors")
    );
}
