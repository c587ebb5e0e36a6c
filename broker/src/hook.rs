//! The on-publish hook: every PUBLISH of a tenant that has one goes to the user's webhook before
//! any subscriber sees it, and the webhook's answer decides what is delivered.
//!
//! The path of a message: the connection calls [`Hook::check`] and keeps the returned future in
//! a FIFO ([`futures_util::stream::FuturesOrdered`]), so verdicts are applied, and PUBACKs
//! sent, in the order the client published. The future waits for room in the tenant's bounded
//! queue, then for its verdict. One dispatcher task per tenant takes a request permit (at most
//! `max_requests_in_flight`), then everything queued up to the batch bounds, and sends it as
//! one signed `POST`; whatever arrives while requests are in flight goes in the next batch, and
//! nothing waits for a batch to fill. The answer is matched by `mid`.
//!
//! Back-pressure: a connection stops reading from its client while it has
//! `max_pending_per_connection` verdicts (or `max_pending_bytes_per_connection` bytes of
//! messages, by their weight) outstanding, and the queue is bounded, so a hook slower
//! than the publishers slows the publishers down (TCP, then Receive Maximum) instead of
//! growing memory.
//!
//! Requests carry `X-Signature-Ed25519` (standard base64 of the Ed25519 signature over the
//! timestamp string followed by the raw body), `X-Signature-Timestamp` (unix seconds) and
//! `X-Signature-Key-Id`, as Cloudflare Pub/Sub did. Only `https` URLs and public addresses are
//! used unless the settings allow more; host names are checked as they resolve, and redirects
//! are not followed. Logs never carry payloads or the URL (it may hold a secret).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use starling_codec::{MqttString, ReasonCode};
use starling_token::SigningKey;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::message::Message;
use crate::metrics::{CodeLabels, DropReason, Metrics};

/// Where a tenant's messages go for approval, and the key that signs the requests.
#[derive(Clone)]
pub struct HookTarget {
    /// The webhook URL (`on_publish.url`).
    pub url: String,
    /// The tenant's current signing key. Without one no request can be signed, and every
    /// message is dropped (never delivered unchecked).
    pub key: Option<Arc<SigningKey>>,
    /// The `broker` field of every message: the broker's hostname
    /// (`<broker>.<namespace>.<domain>`, as in Cloudflare's examples).
    pub broker: String,
}

impl HookTarget {
    /// The signing key's id, if any.
    pub fn kid(&self) -> Option<&str> {
        self.key.as_deref().map(SigningKey::kid)
    }
}

impl PartialEq for HookTarget {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.broker == other.broker && self.kid() == other.kid()
    }
}

impl fmt::Debug for HookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookTarget")
            .field("url", &self.url)
            .field("kid", &self.kid())
            .field("broker", &self.broker)
            .finish()
    }
}

/// Process-wide settings of the hook client (`[hook]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HookSettings {
    /// How long one request may take, body included, before its batch is dropped (ms).
    pub timeout_ms: u64,
    /// At most this many messages per request.
    pub max_batch_messages: usize,
    /// At most this many bytes of messages per request, by their weight (topic, payload and
    /// every property); a single larger message goes alone.
    pub max_batch_bytes: usize,
    /// Requests in flight at once, per tenant.
    pub max_requests_in_flight: usize,
    /// Messages waiting for a request, per tenant; publishers wait when it is full.
    pub queue_capacity: usize,
    /// Messages of one connection awaiting the verdict; reading from that client pauses at this.
    pub max_pending_per_connection: usize,
    /// Bytes of those messages, by their weight (topic, payload, every property and their
    /// bookkeeping); reading pauses at this too.
    pub max_pending_bytes_per_connection: usize,
    /// A response body larger than this drops the batch.
    pub max_response_bytes: usize,
    /// Allow `http://` URLs (otherwise only `https://`).
    pub allow_http: bool,
    /// Allow hosts that resolve to loopback, private, link-local or other non-public addresses.
    pub allow_private_addresses: bool,
    /// Hosts exempt from both rules above, e.g. a cluster-internal `http://moderation.default.svc`.
    pub allowed_hosts: Vec<String>,
    /// The hook of the `--auth none` tenant, for a broker without a control plane. Managed
    /// tenants get theirs from the control plane.
    pub url: Option<String>,
    /// The private JWK (Ed25519, with `d`) that signs the requests to `url`.
    pub key_file: Option<PathBuf>,
}

impl Default for HookSettings {
    fn default() -> Self {
        HookSettings {
            timeout_ms: 10_000,
            max_batch_messages: 100,
            max_batch_bytes: 1024 * 1024,
            max_requests_in_flight: 4,
            queue_capacity: 1024,
            max_pending_per_connection: 64,
            max_pending_bytes_per_connection: 1024 * 1024,
            max_response_bytes: 8 * 1024 * 1024,
            allow_http: false,
            allow_private_addresses: false,
            allowed_hosts: Vec::new(),
            url: None,
            key_file: None,
        }
    }
}

impl HookSettings {
    /// Settings for a hook on the same machine (`starling-dev`): http and loopback allowed.
    pub fn local() -> Self {
        HookSettings {
            allow_http: true,
            allow_private_addresses: true,
            ..HookSettings::default()
        }
    }
}

/// Reads a private Ed25519 JWK (`{"kty":"OKP","crv":"Ed25519","x":..,"d":..}`) from `path`.
/// Errors name the file, never its content.
pub fn load_key_file(path: &Path) -> Result<SigningKey, String> {
    #[derive(Deserialize)]
    struct PrivateJwk {
        d: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read hook.key_file {}: {e}", path.display()))?;
    let jwk: PrivateJwk = serde_json::from_str(&text).map_err(|_| {
        format!(
            "hook.key_file {} is not a JSON Web Key with a private part `d`",
            path.display()
        )
    })?;
    SigningKey::from_d(&jwk.d).map_err(|e| format!("hook.key_file {}: {e}", path.display()))
}

// === the engine ===

/// What the hook decided for one message.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Deliver this message (changed by the hook, or as published).
    Deliver(Arc<Message>),
    /// Do not deliver it.
    Drop(HookDrop),
}

/// Why the hook did not let a message through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookDrop {
    /// The hook left the message out of its answer (or answered with another `mid`).
    Rejected,
    /// The hook changed the message's topic.
    TopicChanged,
    /// The request failed: no answer in time, not 200, a malformed body, unreachable, refused by
    /// the address rules, or no key to sign with.
    Failed(HookFailure),
}

impl HookDrop {
    /// The reason code for the publisher's PUBACK or PUBREC: 0x87 when the hook said no, 0x80
    /// when it could not say anything.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            HookDrop::Rejected | HookDrop::TopicChanged => ReasonCode::NOT_AUTHORIZED,
            HookDrop::Failed(_) => ReasonCode::UNSPECIFIED_ERROR,
        }
    }

    /// The reason string for the publisher, when it asked for problem information.
    pub fn describe(self) -> &'static str {
        match self {
            HookDrop::Rejected => "the on-publish hook dropped the message",
            HookDrop::TopicChanged => "the on-publish hook changed the topic",
            HookDrop::Failed(_) => "the on-publish hook failed",
        }
    }
}

/// How a hook request failed; the `reason` label of `starling_hook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFailure {
    /// No complete answer within the timeout.
    Timeout,
    /// An HTTP status other than 200.
    Status,
    /// The body is not a JSON array of messages, or is too large.
    Malformed,
    /// The connection failed.
    Unreachable,
    /// The URL's scheme or address is not allowed.
    Refused,
    /// The tenant has no signing key.
    Unsigned,
    /// The hook was replaced or shut down with the message still waiting.
    Closed,
}

impl HookFailure {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            HookFailure::Timeout => "timeout",
            HookFailure::Status => "status",
            HookFailure::Malformed => "malformed",
            HookFailure::Unreachable => "unreachable",
            HookFailure::Refused => "refused",
            HookFailure::Unsigned => "unsigned",
            HookFailure::Closed => "closed",
        }
    }
}

/// One message waiting for its verdict.
struct Job {
    mid: u64,
    message: Arc<Message>,
    client_id: Arc<str>,
    jti: Option<Arc<str>>,
    received_at: u64,
    reply: oneshot::Sender<Verdict>,
}

impl Job {
    fn weight(&self) -> usize {
        self.message.weight()
    }
}

/// The hook of one tenant: a bounded queue and the task that turns it into requests.
pub struct Hook {
    target: HookTarget,
    settings: Arc<HookSettings>,
    tx: mpsc::Sender<Job>,
    next_mid: AtomicU64,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("target", &self.target)
            .finish()
    }
}

impl Hook {
    /// Starts the hook of tenant `tenant` for `target` on the current runtime. The task ends
    /// when the returned hook and every pending verdict of it are dropped.
    pub fn start(
        tenant: &str,
        target: HookTarget,
        settings: Arc<HookSettings>,
        metrics: Arc<Metrics>,
    ) -> Arc<Hook> {
        let client = match http_client(&settings) {
            Ok(c) => Some(c),
            Err(e) => {
                // Messages are then dropped as `unreachable`, never delivered unchecked.
                warn!(tenant, error = %e, "cannot build the on-publish hook's HTTP client");
                None
            }
        };
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let hook = Arc::new(Hook {
            target: target.clone(),
            settings: settings.clone(),
            tx,
            next_mid: AtomicU64::new(0),
            metrics: metrics.clone(),
        });
        let dispatcher = Dispatcher {
            tenant: tenant.into(),
            target,
            settings,
            client,
            metrics,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(dispatcher.run(rx));
            }
            // Without a runtime the queue is closed at once: every message is dropped.
            Err(_) => warn!(tenant, "no runtime for the on-publish hook"),
        }
        hook
    }

    /// The target this hook sends to.
    pub fn target(&self) -> &HookTarget {
        &self.target
    }

    /// Messages of one connection that may await their verdict at once.
    pub fn max_pending_per_connection(&self) -> usize {
        self.settings.max_pending_per_connection.max(1)
    }

    /// Bytes of one connection's messages that may await their verdict at once (one message
    /// always may, whatever its size).
    pub fn max_pending_bytes_per_connection(&self) -> usize {
        self.settings.max_pending_bytes_per_connection.max(1)
    }

    /// Hands `message` to the hook. The future waits for room in the queue (that wait is what
    /// slows publishers down) and then for the verdict.
    pub fn check(
        &self,
        message: Arc<Message>,
        client_id: Arc<str>,
        jti: Option<Arc<str>>,
    ) -> impl Future<Output = Verdict> + Send + 'static {
        let tx = self.tx.clone();
        let metrics = self.metrics.clone();
        let mid = self.next_mid.fetch_add(1, Ordering::Relaxed);
        let received_at = unix_now();
        async move {
            let (reply, verdict) = oneshot::channel();
            let job = Job {
                mid,
                message,
                client_id,
                jti,
                received_at,
                reply,
            };
            if tx.send(job).await.is_err() {
                return Verdict::Drop(HookDrop::Failed(HookFailure::Closed));
            }
            metrics.hook_queue.inc();
            verdict
                .await
                .unwrap_or(Verdict::Drop(HookDrop::Failed(HookFailure::Closed)))
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type HookClient = Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

fn http_client(settings: &HookSettings) -> Result<HookClient, std::io::Error> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver {
        allow_private: settings.allow_private_addresses,
        allowed_hosts: settings.allowed_hosts.clone().into(),
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(settings.timeout_ms)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https))
}

/// Turns the queue into batched, signed requests, at most `max_requests_in_flight` at once.
struct Dispatcher {
    tenant: Arc<str>,
    target: HookTarget,
    settings: Arc<HookSettings>,
    client: Option<HookClient>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.max_requests_in_flight.max(1)));
        let max_messages = this.settings.max_batch_messages.max(1);
        let mut carry: Option<Job> = None;
        loop {
            // A permit first: what arrives while every request is in flight waits in the queue
            // and goes out together in the next request.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut bytes = first.weight();
            let mut batch = vec![first];
            while batch.len() < max_messages {
                let Ok(job) = rx.try_recv() else { break };
                if bytes + job.weight() > this.settings.max_batch_bytes {
                    carry = Some(job);
                    break;
                }
                bytes += job.weight();
                batch.push(job);
            }
            this.metrics.hook_queue.dec_by(batch.len() as i64);
            let this = this.clone();
            tokio::spawn(async move {
                this.send(batch).await;
                drop(permit);
            });
        }
    }

    async fn send(&self, batch: Vec<Job>) {
        let started = std::time::Instant::now();
        let outcome = self.request(&batch).await;
        self.metrics
            .hook_latency
            .observe(started.elapsed().as_secs_f64());
        let label = match &outcome {
            Ok(_) => "ok",
            Err(f) => f.label(),
        };
        self.metrics
            .hook_requests
            .get_or_create(&CodeLabels { reason: label })
            .inc();
        match outcome {
            Ok(replies) => self.apply(batch, replies),
            Err(failure) => {
                warn!(
                    tenant = &*self.tenant,
                    messages = batch.len(),
                    reason = failure.label(),
                    "on-publish hook failed; the batch is dropped"
                );
                self.metrics
                    .count_drops(DropReason::hook_failed, batch.len() as u64);
                for job in batch {
                    let _ = job.reply.send(Verdict::Drop(HookDrop::Failed(failure)));
                }
            }
        }
    }

    /// Sends one batch; the parsed answer, or why there is none.
    async fn request(&self, batch: &[Job]) -> Result<Vec<Reply>, HookFailure> {
        let Some(key) = self.target.key.as_deref() else {
            return Err(HookFailure::Unsigned);
        };
        let uri: http::Uri = self.target.url.parse().map_err(|_| HookFailure::Refused)?;
        check_uri(&uri, &self.settings)?;
        let body = encode_batch(&self.target.broker, batch);
        let timestamp = unix_now().to_string();
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(&body);
        let signature = STANDARD.encode(key.sign_bytes(&signed));
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("starling-broker/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-Signature-Ed25519", signature)
            .header("X-Signature-Timestamp", timestamp)
            .header("X-Signature-Key-Id", key.kid())
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| HookFailure::Refused)?;
        let client = self.client.as_ref().ok_or(HookFailure::Unreachable)?;
        let exchange = async {
            let response = client.request(request).await.map_err(|e| {
                if refused_by_resolver(&e) {
                    HookFailure::Refused
                } else {
                    debug!(tenant = &*self.tenant, error = %e, "on-publish hook unreachable");
                    HookFailure::Unreachable
                }
            })?;
            // Redirects are not followed: a 3xx is just not 200.
            if response.status() != http::StatusCode::OK {
                return Err(HookFailure::Status);
            }
            let body = Limited::new(response.into_body(), self.settings.max_response_bytes)
                .collect()
                .await
                .map_err(|_| HookFailure::Malformed)?
                .to_bytes();
            serde_json::from_slice::<Vec<Reply>>(&body).map_err(|_| HookFailure::Malformed)
        };
        tokio::time::timeout(Duration::from_millis(self.settings.timeout_ms), exchange)
            .await
            .unwrap_or(Err(HookFailure::Timeout))
    }

    /// Matches the answer to the batch by `mid` and hands out the verdicts.
    fn apply(&self, batch: Vec<Job>, replies: Vec<Reply>) {
        let mut by_mid: HashMap<u64, Reply> = HashMap::with_capacity(replies.len());
        for reply in replies {
            by_mid.entry(reply.mid).or_insert(reply);
        }
        let (mut rejected, mut changed, mut malformed) = (0u64, 0u64, 0u64);
        for job in batch {
            let verdict = match by_mid.remove(&job.mid) {
                None => {
                    rejected += 1;
                    Verdict::Drop(HookDrop::Rejected)
                }
                Some(reply) => match reply.into_message(&job.message) {
                    Ok(message) => Verdict::Deliver(message),
                    Err(ReplyError::TopicChanged) => {
                        changed += 1;
                        Verdict::Drop(HookDrop::TopicChanged)
                    }
                    Err(ReplyError::Invalid) => {
                        malformed += 1;
                        Verdict::Drop(HookDrop::Failed(HookFailure::Malformed))
                    }
                },
            };
            let _ = job.reply.send(verdict);
        }
        self.metrics
            .count_drops(DropReason::hook_rejected, rejected);
        self.metrics
            .count_drops(DropReason::hook_topic_changed, changed);
        self.metrics.count_drops(DropReason::hook_failed, malformed);
        if rejected + changed + malformed > 0 {
            info!(
                tenant = &*self.tenant,
                rejected,
                topic_changed = changed,
                invalid = malformed,
                "on-publish hook dropped messages"
            );
        }
    }
}

/// The scheme and, for an address literal, the address must be allowed; host names are checked
/// when they resolve ([`GuardedResolver`]), so a name cannot change between check and use.
fn check_uri(uri: &http::Uri, settings: &HookSettings) -> Result<(), HookFailure> {
    let host = uri.host().ok_or(HookFailure::Refused)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let exempt = settings
        .allowed_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(bare));
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if settings.allow_http || exempt => {}
        _ => return Err(HookFailure::Refused),
    }
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if !(settings.allow_private_addresses || exempt || is_public(ip)) {
            return Err(HookFailure::Refused);
        }
    }
    Ok(())
}

fn refused_by_resolver(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::PermissionDenied {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (CGNAT), unique-local, multicast, documentation, benchmarking or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)
                || (first == 0x0064 && v6.segments()[1] == 0xff9b))
        }
    }
}

/// Resolves host names and keeps only the addresses the settings allow; when none is left the
/// request fails with `PermissionDenied` (counted as `refused`).
#[derive(Clone)]
struct GuardedResolver {
    allow_private: bool,
    allowed_hosts: Arc<[String]>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_string();
        let exempt = self.allow_private
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&host));
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| exempt || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the hook's host has no allowed address",
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

// === the wire format ===

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Outgoing<'a> {
    mid: u64,
    broker: &'a str,
    topic: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
    received_at: u64,
    content_type: Option<&'a str>,
    payload_format_indicator: u8,
    payload: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_encoding: Option<&'static str>,
    user_properties: Vec<UserProperty>,
    qos: u8,
    retain: bool,
}

#[derive(Serialize, Deserialize)]
struct UserProperty {
    key: String,
    value: String,
}

fn encode_batch(broker: &str, batch: &[Job]) -> Vec<u8> {
    let messages: Vec<Outgoing<'_>> = batch
        .iter()
        .map(|job| {
            let m = &*job.message;
            let text = m
                .properties
                .payload_format_indicator
                .filter(|&i| i == 1)
                .and_then(|_| std::str::from_utf8(&m.payload).ok());
            let (payload, payload_encoding) = match text {
                Some(t) => (Cow::Borrowed(t), None),
                None => (Cow::Owned(STANDARD.encode(&m.payload)), Some("base64")),
            };
            Outgoing {
                mid: job.mid,
                broker,
                topic: m.topic.as_str(),
                client_id: &job.client_id,
                jti: job.jti.as_deref(),
                received_at: job.received_at,
                content_type: m.properties.content_type.as_ref().map(MqttString::as_str),
                payload_format_indicator: m.properties.payload_format_indicator.unwrap_or(0),
                payload,
                payload_encoding,
                user_properties: m
                    .properties
                    .user_properties
                    .iter()
                    .map(|(k, v)| UserProperty {
                        key: k.as_str().to_string(),
                        value: v.as_str().to_string(),
                    })
                    .collect(),
                qos: m.qos as u8,
                retain: m.retain,
            }
        })
        .collect();
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&messages).unwrap_or_default()
}

/// One message of the hook's answer. Fields left out keep the published value.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    mid: u64,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default, deserialize_with = "present")]
    content_type: Option<Option<String>>,
    #[serde(default)]
    payload_format_indicator: Option<u8>,
    #[serde(default)]
    user_properties: Option<Vec<UserProperty>>,
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

enum ReplyError {
    TopicChanged,
    Invalid,
}

/// A string the codec can carry: at most 65,535 bytes, no U+0000 [MQTT-1.5.4-2].
fn mqtt_string(s: String) -> Result<MqttString, ReplyError> {
    if s.len() > usize::from(u16::MAX) || s.contains('\0') {
        return Err(ReplyError::Invalid);
    }
    Ok(MqttString::from(s))
}

impl Reply {
    fn into_message(self, original: &Arc<Message>) -> Result<Arc<Message>, ReplyError> {
        if self
            .topic
            .as_deref()
            .is_some_and(|t| t != original.topic.as_str())
        {
            return Err(ReplyError::TopicChanged);
        }
        let unchanged = self.payload.is_none()
            && self.content_type.is_none()
            && self.payload_format_indicator.is_none()
            && self.user_properties.is_none();
        if unchanged {
            return Ok(original.clone());
        }
        let mut payload = original.payload.clone();
        let mut properties = original.properties.clone();
        if let Some(text) = self.payload {
            payload = match self.payload_encoding.as_deref() {
                Some("base64") => Bytes::from(
                    STANDARD
                        .decode(text.as_bytes())
                        .map_err(|_| ReplyError::Invalid)?,
                ),
                None | Some("utf8") | Some("utf-8") => Bytes::from(text),
                Some(_) => return Err(ReplyError::Invalid),
            };
        }
        if let Some(content_type) = self.content_type {
            properties.content_type = content_type.map(mqtt_string).transpose()?;
        }
        if let Some(indicator) = self.payload_format_indicator {
            if indicator > 1 {
                return Err(ReplyError::Invalid);
            }
            properties.payload_format_indicator = Some(indicator);
        }
        // [MQTT-3.3.2-4] a payload announced as UTF-8 must be UTF-8.
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err()
        {
            return Err(ReplyError::Invalid);
        }
        if let Some(props) = self.user_properties {
            properties.user_properties = props
                .into_iter()
                .map(|p| Ok((mqtt_string(p.key)?, mqtt_string(p.value)?)))
                .collect::<Result<_, ReplyError>>()?;
        }
        // A new message, weighed and in one allocation like every other.
        Ok(Arc::new(Message::new(
            original.topic.as_str(),
            &payload,
            original.qos,
            original.retain,
            &properties,
            original.expires_at,
            original.publisher.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HookSettings {
        HookSettings::default()
    }

    #[test]
    fn only_public_addresses_count_as_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_scheme_and_address_literal_are_checked_before_sending() {
        let ok = |u: &str, s: &HookSettings| check_uri(&u.parse().unwrap(), s).is_ok();
        assert!(ok("https://hooks.example.com/x", &settings()));
        assert!(!ok("http://hooks.example.com/x", &settings()));
        assert!(!ok("https://127.0.0.1/x", &settings()));
        assert!(!ok("https://[::1]:8443/x", &settings()));
        assert!(!ok("https://169.254.169.254/latest", &settings()));
        assert!(!ok("ftp://hooks.example.com/x", &settings()));
        let local = HookSettings::local();
        assert!(ok("http://127.0.0.1:9000/x", &local));
        let exempt = HookSettings {
            allowed_hosts: vec!["moderation.default.svc".into(), "10.0.0.7".into()],
            ..settings()
        };
        assert!(ok("http://moderation.default.svc/x", &exempt));
        assert!(ok("http://10.0.0.7/x", &exempt));
        assert!(!ok("http://10.0.0.8/x", &exempt));
    }

    fn original() -> Arc<Message> {
        Arc::new(Message::new(
            "t/a",
            b"hi",
            starling_codec::QoS::AtLeastOnce,
            false,
            &Default::default(),
            None,
            None,
        ))
    }

    fn reply(json: &str) -> Reply {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_answer_left_unchanged_delivers_the_original() {
        let m = original();
        let out = reply(r#"{"mid":1,"topic":"t/a","payload":"hi"}"#)
            .into_message(&m)
            .ok()
            .unwrap();
        assert_eq!(&out.payload[..], b"hi");
        let same = reply(r#"{"mid":1}"#).into_message(&m).ok().unwrap();
        assert!(Arc::ptr_eq(&same, &m));
    }

    #[test]
    fn an_answer_may_change_payload_content_type_and_properties_but_not_the_topic() {
        let m = original();
        let out = reply(
            r#"{"mid":1,"payload":"AAE=","payloadEncoding":"base64","contentType":null,
                "userProperties":[{"key":"a","value":"b"}]}"#,
        )
        .into_message(&m)
        .ok()
        .unwrap();
        assert_eq!(&out.payload[..], &[0, 1]);
        assert_eq!(out.properties.user_properties.len(), 1);
        assert!(matches!(
            reply(r#"{"mid":1,"topic":"t/b"}"#).into_message(&m),
            Err(ReplyError::TopicChanged)
        ));
        for bad in [
            r#"{"mid":1,"payload":"***","payloadEncoding":"base64"}"#,
            r#"{"mid":1,"payload":"x","payloadEncoding":"rot13"}"#,
            r#"{"mid":1,"payloadFormatIndicator":2}"#,
            r#"{"mid":1,"payload":"/w==","payloadEncoding":"base64","payloadFormatIndicator":1}"#,
            r#"{"mid":1,"contentType":"a\u0000b"}"#,
        ] {
            assert!(
                matches!(reply(bad).into_message(&m), Err(ReplyError::Invalid)),
                "{bad}"
            );
        }
    }
}
