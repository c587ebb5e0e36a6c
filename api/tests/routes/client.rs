//! The test client: an api over a fresh SQLite store, driven through its routers without a
//! socket (`oneshot`), with helpers for the objects most tests need.

pub(crate) use crate::common;
pub(crate) use std::collections::BTreeMap;
pub(crate) use std::time::Duration;

pub(crate) use axum::Router;
pub(crate) use axum::body::Body;
pub(crate) use axum::http::{Method, Request, StatusCode};
pub(crate) use serde_json::{Value, json};
pub(crate) use starling_api::config::Config;
pub(crate) use starling_api::state::AppState;
pub(crate) use starling_token::{Jwks, TokenError, Verifier};
pub(crate) use starling_types::rest::{BrokerCreated, TokenCreated};

pub(crate) use common::{BOOTSTRAP, Resp};

pub(crate) struct Api {
    pub(crate) app: Router,
    pub(crate) internal: Router,
    pub(crate) state: AppState,
    pub(crate) _guard: Box<dyn std::any::Any + Send>,
}

pub(crate) async fn api_with(config: Config) -> Api {
    let (state, guard) = common::app_state(config).await;
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
    common::oneshot(router, req).await
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
        r.expect::<TokenCreated>(StatusCode::CREATED)
            .token
            .into_inner()
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
        (r.body, secret.into_inner())
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
