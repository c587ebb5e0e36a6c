//! The Starling api as the operator sees it: a small trait over the native broker routes, and its
//! HTTP implementation.
//!
//! Registration is idempotent: the controller reads first, creates only when the api has no such
//! broker, and treats `409 Conflict` on create as "it exists". Changes to and deletion of a
//! managed broker carry `X-Starling-Managed-By: Broker/<namespace>/<name>`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::{Deserialize, Serialize};
use starling_types::Secret;
use starling_types::rest::Problem;

pub use starling_types::rest::MANAGED_BY_HEADER;

/// Errors of calls to the api.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The api could not be reached (connection refused, timeout, TLS failure).
    #[error("the api is unreachable: {0}")]
    Unreachable(String),
    /// The api answered with an unexpected status. `detail` is the problem's title, never a body
    /// that could carry a secret.
    #[error("the api answered {status}: {detail}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The problem title, if the api sent one.
        detail: String,
    },
    /// The api's answer could not be read.
    #[error("the api's answer could not be read: {0}")]
    Decode(String),
    /// The request could not be built (a bad base URL).
    #[error("invalid api request: {0}")]
    Request(String),
}

impl ApiError {
    /// Whether the error means "try again later" rather than "this request is wrong".
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Decode(_) | Self::Request(_) => false,
        }
    }
}

pub use starling_types::rest::{BrokerCreate, BrokerPatch, ManagedBy, NamespaceCreate, OnPublish};

/// A broker as the api returns it (fields the operator reads).
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiBroker {
    /// The api's id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The Kubernetes object that manages it; none for a broker made through the API.
    #[serde(default, rename = "managedBy")]
    pub managed_by: Option<ManagedBy>,
}

/// The answer to a create: the broker and its one-time secret.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
pub struct CreatedBroker {
    /// The api's id.
    pub id: String,
    /// The per-broker secret, shown once. Never logged.
    pub secret: Secret<String>,
}

/// What the operator reads of a create answer (a `BrokerCreated`): `secret` is `null` when the
/// operator re-registers a broker it already manages (200 instead of 201).
#[derive(Deserialize)]
struct CreateAnswer {
    id: String,
    #[serde(default)]
    secret: Option<String>,
}

/// The outcome of a create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Created; the secret is in hand.
    Created(CreatedBroker),
    /// The api already has a broker of that name.
    AlreadyExists,
}

/// The broker routes the operator uses.
#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// Creates the pub/sub namespace; an existing one is fine.
    async fn ensure_namespace(&self, ns: &str) -> Result<(), ApiError>;
    /// Reads a broker; `None` when the api has none of that name.
    async fn get_broker(&self, ns: &str, name: &str) -> Result<Option<ApiBroker>, ApiError>;
    /// Creates a broker.
    async fn create_broker(&self, ns: &str, req: &BrokerCreate) -> Result<CreateOutcome, ApiError>;
    /// Writes the fields the `Broker` owns. `Ok(false)` when the broker is gone.
    async fn patch_broker(
        &self,
        ns: &str,
        name: &str,
        patch: &BrokerPatch,
        managed_by: &ManagedBy,
    ) -> Result<bool, ApiError>;
    /// Deletes a broker. `Ok(false)` when it was already gone.
    async fn delete_broker(
        &self,
        ns: &str,
        name: &str,
        managed_by: &ManagedBy,
    ) -> Result<bool, ApiError>;
    /// Replaces the broker secret and returns the new one (shown once). `Ok(None)` when the
    /// broker is gone.
    async fn rotate_secret(
        &self,
        ns: &str,
        name: &str,
        managed_by: &ManagedBy,
    ) -> Result<Option<String>, ApiError>;
}

// === impl HttpControlPlane ===

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The api over HTTP(S), authenticated with the admin token.
pub struct HttpControlPlane {
    base: String,
    token: Secret<String>,
    timeout: Duration,
    client: HttpsClient,
}

impl std::fmt::Debug for HttpControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpControlPlane")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish()
    }
}

impl HttpControlPlane {
    /// A client of the api at `base` (for example `http://starling-api:8080`).
    pub fn new(base: &str, token: String, timeout: Duration) -> Result<Self, ApiError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| ApiError::Request(format!("loading trust roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.into(),
            timeout,
            client,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        managed_by: Option<&ManagedBy>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose()),
            )
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(m) = managed_by {
            req = req.header(MANAGED_BY_HEADER, m.marker());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ApiError::Request(e.to_string()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ApiError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ApiError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ApiError>((status, body))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ApiError::Unreachable(format!("no answer within {:?}", self.timeout)))?
    }

    fn unexpected(status: StatusCode, body: &[u8]) -> ApiError {
        let detail = serde_json::from_slice::<Problem>(body)
            .map(|p| p.title)
            .unwrap_or_default();
        ApiError::Status {
            status: status.as_u16(),
            detail,
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::Request(e.to_string()))
}

fn segment(s: &str) -> Result<&str, ApiError> {
    // Names are DNS labels (the CRD enforces it); anything else must not reach a URL path.
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(s)
    } else {
        Err(ApiError::Request(format!("{s:?} is not a valid name")))
    }
}

#[async_trait]
impl ControlPlane for HttpControlPlane {
    async fn ensure_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let body = encode(&NamespaceCreate {
            name: segment(ns)?.to_owned(),
            description: None,
        })?;
        let (status, body) = self
            .call(Method::POST, "/v1/namespaces", Some(body), None)
            .await?;
        match status {
            s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
            s => Err(Self::unexpected(s, &body)),
        }
    }

    async fn get_broker(&self, ns: &str, name: &str) -> Result<Option<ApiBroker>, ApiError> {
        let path = format!("/v1/namespaces/{}/brokers/{}", segment(ns)?, segment(name)?);
        let (status, body) = self.call(Method::GET, &path, None, None).await?;
        match status {
            StatusCode::OK => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| ApiError::Decode(e.to_string())),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(Self::unexpected(s, &body)),
        }
    }

    async fn create_broker(&self, ns: &str, req: &BrokerCreate) -> Result<CreateOutcome, ApiError> {
        let path = format!("/v1/namespaces/{}/brokers", segment(ns)?);
        let (status, body) = self
            .call(Method::POST, &path, Some(encode(req)?), None)
            .await?;
        match status {
            s if s.is_success() => {
                let answer: CreateAnswer =
                    serde_json::from_slice(&body).map_err(|e| ApiError::Decode(e.to_string()))?;
                Ok(match answer.secret {
                    Some(secret) => CreateOutcome::Created(CreatedBroker {
                        id: answer.id,
                        secret: secret.into(),
                    }),
                    None => CreateOutcome::AlreadyExists,
                })
            }
            StatusCode::CONFLICT => Ok(CreateOutcome::AlreadyExists),
            s => Err(Self::unexpected(s, &body)),
        }
    }

    async fn patch_broker(
        &self,
        ns: &str,
        name: &str,
        patch: &BrokerPatch,
        managed_by: &ManagedBy,
    ) -> Result<bool, ApiError> {
        let path = format!("/v1/namespaces/{}/brokers/{}", segment(ns)?, segment(name)?);
        let (status, body) = self
            .call(Method::PATCH, &path, Some(encode(patch)?), Some(managed_by))
            .await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(Self::unexpected(s, &body)),
        }
    }

    async fn delete_broker(
        &self,
        ns: &str,
        name: &str,
        managed_by: &ManagedBy,
    ) -> Result<bool, ApiError> {
        let path = format!("/v1/namespaces/{}/brokers/{}", segment(ns)?, segment(name)?);
        let (status, body) = self
            .call(Method::DELETE, &path, None, Some(managed_by))
            .await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(Self::unexpected(s, &body)),
        }
    }

    async fn rotate_secret(
        &self,
        ns: &str,
        name: &str,
        managed_by: &ManagedBy,
    ) -> Result<Option<String>, ApiError> {
        #[derive(Deserialize)]
        struct Rotated {
            secret: String,
        }
        let path = format!(
            "/v1/namespaces/{}/brokers/{}/secret/rotate",
            segment(ns)?,
            segment(name)?
        );
        let (status, body) = self
            .call(Method::POST, &path, None, Some(managed_by))
            .await?;
        match status {
            s if s.is_success() => serde_json::from_slice::<Rotated>(&body)
                .map(|r| Some(r.secret))
                .map_err(|e| ApiError::Decode(e.to_string())),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(Self::unexpected(s, &body)),
        }
    }
}

#[cfg(test)]
mod tests;
