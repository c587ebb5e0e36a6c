//! The HTTP client against a real HTTP server on loopback that answers like the api's native
//! broker routes (an in-memory stand-in: these tests check the client's requests and its reading
//! of every answer, not the api).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use tokio::sync::Mutex;

use super::*;

#[derive(Default)]
struct Fake {
    brokers: HashMap<(String, String), serde_json::Value>,
    seen_managed_by: Vec<String>,
    seen_auth: Vec<String>,
}

type S = Arc<Mutex<Fake>>;

fn auth(h: &HeaderMap) -> String {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn create_ns(State(s): State<S>, h: HeaderMap) -> StatusCode {
    s.lock().await.seen_auth.push(auth(&h));
    StatusCode::CREATED
}

async fn create(
    State(s): State<S>,
    Path(ns): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> (StatusCode, Json<serde_json::Value>) {
    let mut f = s.lock().await;
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    if let Some(existing) = f.brokers.get(&(ns.clone(), name.clone())) {
        // The api answers a re-registration by the same managing resource with 200 and no secret.
        if existing["managedBy"] == body["managedBy"] {
            let mut b = existing.clone();
            b["secret"] = serde_json::Value::Null;
            return (StatusCode::OK, Json(b));
        }
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"title": "broker exists"})),
        );
    }
    let mut b = body.clone();
    b["id"] = serde_json::json!(format!("id-{name}"));
    f.brokers.insert((ns, name.clone()), b.clone());
    b["secret"] = serde_json::json!("one-time-secret");
    (StatusCode::CREATED, Json(b))
}

async fn one(
    State(s): State<S>,
    method: axum::http::Method,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    body: Option<Json<serde_json::Value>>,
) -> (StatusCode, Json<serde_json::Value>) {
    let mut f = s.lock().await;
    if let Some(m) = h.get(MANAGED_BY_HEADER).and_then(|v| v.to_str().ok()) {
        f.seen_managed_by.push(m.to_owned());
    }
    let key = (ns, name);
    let Some(b) = f.brokers.get(&key).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"title": "no such broker"})),
        );
    };
    match method.as_str() {
        "GET" => (StatusCode::OK, Json(b)),
        "PATCH" => {
            let mut b = b;
            if let Some(Json(p)) = body {
                for (k, v) in p.as_object().cloned().unwrap_or_default() {
                    b[k] = v;
                }
            }
            f.brokers.insert(key, b.clone());
            (StatusCode::OK, Json(b))
        }
        "DELETE" => {
            f.brokers.remove(&key);
            (StatusCode::NO_CONTENT, Json(serde_json::json!(null)))
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, Json(serde_json::json!({}))),
    }
}

async fn serve() -> (String, S) {
    let state: S = Arc::default();
    let app = Router::new()
        .route("/v1/namespaces", post(create_ns))
        .route("/v1/namespaces/{ns}/brokers", post(create))
        .route(
            "/v1/namespaces/{ns}/brokers/{name}",
            get(one).patch(one).delete(one),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), state)
}

fn managed() -> ManagedBy {
    ManagedBy {
        kind: "Broker".to_owned(),
        namespace: "iot".to_owned(),
        name: "sensors".to_owned(),
    }
}

#[tokio::test]
async fn register_read_patch_and_delete_a_broker_over_http() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let (base, state) = serve().await;
        let api = HttpControlPlane::new(&base, "admin-token".to_owned(), Duration::from_secs(2))
            .expect("client");
        api.ensure_namespace("iot").await.expect("namespace");
        assert_eq!(api.get_broker("iot", "sensors").await.expect("get"), None);
        let req = BrokerCreate {
            name: "sensors".to_owned(),
            expiration: Some(3600),
            limits: Some(
                serde_json::from_value(serde_json::json!({"maxConnections": 10})).expect("limits"),
            ),
            managed_by: Some(managed()),
            ..BrokerCreate::default()
        };
        let CreateOutcome::Created(created) = api.create_broker("iot", &req).await.expect("create")
        else {
            panic!("expected a new broker");
        };
        assert_eq!(created.id, "id-sensors");
        assert_eq!(created.secret.expose(), "one-time-secret");
        assert!(!format!("{created:?}").contains("one-time-secret"));
        assert_eq!(
            api.create_broker("iot", &req)
                .await
                .expect("re-registration"),
            CreateOutcome::AlreadyExists
        );
        let other = BrokerCreate {
            managed_by: Some(ManagedBy {
                name: "other".to_owned(),
                ..managed()
            }),
            ..req.clone()
        };
        assert_eq!(
            api.create_broker("iot", &other).await.expect("conflict"),
            CreateOutcome::AlreadyExists
        );
        let got = api
            .get_broker("iot", "sensors")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(got.id, "id-sensors");
        let patch = BrokerPatch {
            name: None,
            description: Some("d".to_owned()),
            expiration: Some(None),
            on_publish: Some(Some(OnPublish {
                url: Some("https://hook.example.com/x".to_owned()),
            })),
            limits: Some(None),
            endpoint: Some(Some("mqtts://mqtt.example.com:8883".to_owned())),
            ws_endpoint: None,
        };
        assert!(
            api.patch_broker("iot", "sensors", &patch, &managed())
                .await
                .expect("patch")
        );
        {
            let f = state.lock().await;
            let stored = &f.brokers[&("iot".to_owned(), "sensors".to_owned())];
            assert_eq!(stored["on_publish"]["url"], "https://hook.example.com/x");
            assert_eq!(stored["expiration"], serde_json::Value::Null);
            assert_eq!(stored["managedBy"]["kind"], "Broker");
            assert_eq!(stored["endpoint"], "mqtts://mqtt.example.com:8883");
            assert_eq!(
                stored["limits"],
                serde_json::Value::Null,
                "null clears the limits"
            );
            assert_eq!(f.seen_auth, ["Bearer admin-token"]);
        }
        assert!(
            api.delete_broker("iot", "sensors", &managed())
                .await
                .expect("delete")
        );
        assert!(
            !api.delete_broker("iot", "sensors", &managed())
                .await
                .expect("second delete")
        );
        assert!(
            !api.patch_broker("iot", "sensors", &patch, &managed())
                .await
                .expect("patch gone")
        );
        assert!(
            state
                .lock()
                .await
                .seen_managed_by
                .iter()
                .all(|m| m == "Broker/iot/sensors")
        );
    })
    .await
    .expect("within the timeout");
}

#[tokio::test]
async fn a_closed_port_is_unreachable_and_transient() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let api = HttpControlPlane::new(
            &format!("http://{addr}"),
            "t".to_owned(),
            Duration::from_secs(2),
        )
        .expect("client");
        let err = api
            .get_broker("iot", "sensors")
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, ApiError::Unreachable(_)), "{err:?}");
        assert!(err.is_transient());
    })
    .await
    .expect("within the timeout");
}

#[tokio::test]
async fn names_that_are_not_dns_labels_never_reach_a_url() {
    let api = HttpControlPlane::new("http://127.0.0.1:9", "t".to_owned(), Duration::from_secs(1))
        .expect("client");
    let err = api
        .get_broker("iot", "../admin")
        .await
        .expect_err("rejected");
    assert!(matches!(err, ApiError::Request(_)));
}
