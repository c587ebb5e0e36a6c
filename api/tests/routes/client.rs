//! The test client: an api over a fresh SQLite store, driven through its routers without a
//! socket (`oneshot`), with helpers for the objects most tests need.

pub(crate) use crate::common;
pub(crate) use std::collections::BTreeMap;
pub(crate) use std::time::Duration;

pub(crate) use axum::Router;
pub(crate) use axum::body::Body;
pub(crate) use axum::http::{HeaderMap, Method, Request, StatusCode};
pub(crate) use http_body_util::BodyExt as _;
pub(crate) use serde_json::{Value, json};
pub(crate) use starling_api::config::{Config, Secret};
pub(crate) use starling_api::keys::Kek;
pub(crate) use starling_api::state::AppState;
pub(crate) use starling_token::{Jwks, TokenError, Verifier};
pub(crate) use starling_types::rest::{BrokerCreated, TokenCreated};
pub(crate) use tower::ServiceExt as _;

pub(crate) const BOOTSTRAP: &str = "sat_bootstrap-token-for-tests";

pub(crate) struct Api {
    pub(crate) app: Router,
    pub(crate) internal: Router,
    pub(crate) state: AppState,
    pub(crate) _guard: Box<dyn std::any::Any + Send>,
}

pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

pub(crate) async fn api_with(config: Config) -> Api {
    let (store, guard) = common::sqlite().await;
    let config = Config {
        bootstrap_token: Some(Secret(BOOTSTRAP.into())),
        domain: "example.test".into(),
        ..config
    };
    let state = AppState::new(store, Kek::from_bytes(&[3u8; 32]).unwrap(), config);
    starling_api::server::ensure_bootstrap(&*state.store, &state.config, state.clock.now_micros())
        .await
        .unwrap();
    Api {
        app: starling_api::app(state.clone()),
        internal: starling_api::internal_app(state.clone()),
        state,
        _guard: guard,
    }
}

pub(crate) async fn api() -> Api {
    api_with(Config::default()).await
}

pub(crate) async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Resp {
        status,
        headers,
        body,
    }
}

impl Api {
    pub(crate) async fn call(
        &self,
        method: Method,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> Resp {
        send(&self.app, method, uri, Some(token), body, &[]).await
    }

    /// `GET uri` with `token`.
    pub(crate) async fn get(&self, uri: &str, token: &str) -> Resp {
        self.call(Method::GET, uri, token, None).await
    }

    /// `POST uri` with `token` and a JSON body.
    pub(crate) async fn post(&self, uri: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, uri, token, Some(body)).await
    }

    /// A new API token with `role` (named after it), made with the bootstrap token.
    pub(crate) async fn token(&self, role: &str) -> String {
        let r = self
            .post("/v1/tokens", BOOTSTRAP, json!({"name": role, "role": role}))
            .await;
        r.expect::<TokenCreated>(StatusCode::CREATED).token
    }

    /// A namespace `home` with a broker `b1`; returns the broker secret.
    pub(crate) async fn broker(&self, body: Value) -> (Value, String) {
        let r = self
            .post("/v1/namespaces", BOOTSTRAP, json!({"name": "home"}))
            .await;
        assert!(
            matches!(r.status, StatusCode::CREATED | StatusCode::CONFLICT),
            "{:?}",
            r.body
        );
        let r = self
            .post("/v1/namespaces/home/brokers", BOOTSTRAP, body)
            .await;
        let created = r.expect::<BrokerCreated>(StatusCode::CREATED);
        let secret = created.secret.expect("a new broker's secret");
        (r.body, secret)
    }

    /// The published keys of `home/b1`.
    pub(crate) async fn verifier_jwks(&self) -> Jwks {
        self.get("/v1/namespaces/home/brokers/b1/publickeys", BOOTSTRAP)
            .await
            .expect(StatusCode::OK)
    }

    /// A verifier of `home/b1`'s tokens.
    pub(crate) async fn verifier(&self) -> Verifier {
        Verifier::new(&self.verifier_jwks().await).unwrap()
    }
}

impl Resp {
    /// The body as `T` once the status is `status`; a failure names both.
    pub(crate) fn expect<T: serde::de::DeserializeOwned>(&self, status: StatusCode) -> T {
        assert_eq!(self.status, status, "{:?}", self.body);
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("not the expected shape ({e}): {:?}", self.body))
    }
}

pub(crate) const C: &str = "/client/v4/accounts/00000000000000000000000000000001/pubsub";

/// One `#[tokio::test]` per listed function, each under a 60 s timeout.
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        mod run {
            $(
                #[tokio::test]
                async fn $name() {
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$name()).await.expect("timed out");
                }
            )*
        }
    };
}
