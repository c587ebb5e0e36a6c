//! The API over HTTP: native routes, problem+json errors.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use starling_types::rest::Problem;

/// What can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The API answered with an error.
    #[error("{detail} (HTTP {status}, code {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's stable code; 0 when the answer had none.
        code: u32,
        /// The API's message.
        detail: String,
    },
    /// The API could not be reached or its answer could not be read.
    #[error("{0}")]
    Network(String),
}

/// A client of one API with one token.
pub(crate) struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// A path segment, percent-encoded.
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub(crate) fn new(base: &str, token: String, timeout: Duration) -> Result<Self, CallError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("starling-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CallError::Network(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json")
    }

    async fn send(&self, req: RequestBuilder) -> Result<(StatusCode, Vec<u8>), CallError> {
        let resp = req.send().await.map_err(|e| {
            CallError::Network(format!(
                "cannot reach the API at {}: {}",
                self.base,
                chain(&e)
            ))
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            CallError::Network(format!("the API's answer broke off: {}", chain(&e)))
        })?;
        if status.is_success() {
            return Ok((status, body.to_vec()));
        }
        match serde_json::from_slice::<Problem>(&body) {
            Ok(p) => Err(CallError::Api {
                status: status.as_u16(),
                code: p.code,
                detail: if p.detail.is_empty() {
                    p.title
                } else {
                    p.detail
                },
            }),
            Err(_) => Err(CallError::Api {
                status: status.as_u16(),
                code: 0,
                detail: format!(
                    "the server at {} answered {status} without a problem document (is it the Starling API?)",
                    self.base
                ),
            }),
        }
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, CallError> {
        serde_json::from_slice(body).map_err(|e| {
            CallError::Network(format!(
                "the answer of {} is not what this client reads: {e}",
                self.base
            ))
        })
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, CallError> {
        let (_, body) = self
            .send(self.request(Method::GET, path).query(query))
            .await?;
        self.decode(&body)
    }

    pub(crate) async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let (_, body) = self.send(self.request(method, path).json(body)).await?;
        self.decode(&body)
    }

    pub(crate) async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let (_, body) = self.send(self.request(Method::POST, path)).await?;
        self.decode(&body)
    }

    /// A request whose answer carries nothing to read (204, or a body that is not needed).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(), CallError> {
        self.send(self.request(method, path).query(query)).await?;
        Ok(())
    }
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
