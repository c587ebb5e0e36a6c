//! The authentication step of CONNECT (and of AUTH re-authentication), behind a trait so the
//! connection code does not know where credentials come from.
//!
//! - [`NoAuth`]: `--auth none`, one tenant, everything allowed unless access [`rules`] say
//!   otherwise.
//! - [`token::TokenAuth`]: Starling tokens (Ed25519 JWTs); the token's `kid` picks the tenant in a
//!   [`directory::Directory`] that files ([`files`]) or the control plane keep up to date.

use std::net::SocketAddr;
use std::sync::Arc;

pub mod directory;
pub mod files;
pub mod rules;
pub mod token;

use starling_codec::{Connect, ReasonCode};

use crate::config::ListenerKind;
use crate::tenant::Tenant;

/// What a CONNECT is checked with.
#[derive(Debug)]
pub struct ConnectInfo<'a> {
    /// The CONNECT packet.
    pub connect: &'a Connect,
    /// The listener it arrived on.
    pub listener: ListenerKind,
    /// The peer.
    pub remote: SocketAddr,
}

/// What a client may do.
pub trait Permissions: Send + Sync + std::fmt::Debug {
    /// Whether the client may publish to `topic`.
    fn may_publish(&self, topic: &str) -> bool;
    /// Whether the client may subscribe to `filter`: the filter that is routed, without any
    /// `$share/group/` prefix.
    fn may_subscribe(&self, filter: &str) -> bool;
    /// Whether a message on `topic` may be delivered to the client. A session delivers only
    /// what its current credential may read: what was queued under an earlier, wider one is
    /// dropped.
    fn may_read(&self, topic: &str) -> bool;
}

/// Everything allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Permissions for AllowAll {
    fn may_publish(&self, _topic: &str) -> bool {
        true
    }
    fn may_subscribe(&self, _filter: &str) -> bool {
        true
    }
    fn may_read(&self, _topic: &str) -> bool {
        true
    }
}

/// A client let in.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The tenant the client belongs to.
    pub tenant: Arc<Tenant>,
    /// The client id its credential is bound to, if any: an empty CONNECT client id is assigned
    /// this one, another one is refused with 0x85.
    pub bound_client_id: Option<String>,
    /// What it may do.
    pub permissions: Arc<dyn Permissions>,
    /// The token it was let in with, if any.
    pub credential: Option<Credential>,
}

/// What the broker remembers of a connection's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The token id, for revocation.
    pub jti: Arc<str>,
    /// The id of the key that signed it: when the key leaves the tenant's key set, the
    /// sessions it let in end.
    pub kid: Arc<str>,
    /// The client id the token is bound to.
    pub sub: String,
    /// When the connection must end, unix seconds (the token's `exp` plus the clock skew).
    pub ends_at: Option<i64>,
}

/// A refused CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connect refused: {label}")]
pub struct Refusal {
    /// The CONNACK reason code (MQTT 5 numbering; mapped for 3.1.1).
    pub reason: ReasonCode,
    /// A metric label, e.g. `bad_signature`.
    pub label: &'static str,
}

impl Refusal {
    /// A refusal with a reason code and a metric label.
    pub const fn new(reason: ReasonCode, label: &'static str) -> Self {
        Refusal { reason, label }
    }
}

/// The authentication step.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Checks a CONNECT. Must not block: it runs on the connection's task.
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<Authenticated, Refusal>;

    /// Checks an AUTH re-authentication (reason 0x19) of a connection let in as `current`
    /// with Authentication Method `method` and Authentication Data `data`.
    fn reauthenticate(
        &self,
        current: &Authenticated,
        method: &str,
        data: &[u8],
    ) -> Result<Authenticated, Refusal> {
        let _ = (current, method, data);
        Err(Refusal::new(
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "reauthentication_unsupported",
        ))
    }

    /// Whether the credential `auth` was let in with still holds (not revoked, its key still
    /// in the key set, its tenant still served). Checked once more after a connection has
    /// attached to its session, so a revocation applied meanwhile is not missed.
    fn holds(&self, auth: &Authenticated) -> bool {
        let _ = auth;
        true
    }
}

/// `--auth none`: everyone into one tenant, with what the listener's access rules allow.
#[derive(Debug, Clone)]
pub struct NoAuth {
    tenant: Arc<Tenant>,
    permissions: Arc<dyn Permissions>,
}

impl NoAuth {
    /// Lets everyone into `tenant`, everything allowed.
    pub fn new(tenant: Arc<Tenant>) -> Self {
        NoAuth {
            tenant,
            permissions: Arc::new(AllowAll),
        }
    }

    /// Lets everyone into `tenant`, with what `rules` allow (everything when there are none).
    pub fn with_rules(tenant: Arc<Tenant>, rules: Vec<rules::AccessRule>) -> Self {
        if rules.is_empty() {
            return NoAuth::new(tenant);
        }
        NoAuth {
            tenant,
            permissions: Arc::new(rules::AccessRules::new(rules)),
        }
    }
}

impl Authenticator for NoAuth {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<Authenticated, Refusal> {
        if info.connect.properties.authentication_method.is_some() {
            // [MQTT-4.12.0-1] no extended authentication here: a method the server does not
            // support gets 0x8C and the connection closes.
            return Err(Refusal::new(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "bad_authentication_method",
            ));
        }
        Ok(Authenticated {
            tenant: self.tenant.clone(),
            bound_client_id: None,
            permissions: self.permissions.clone(),
            credential: None,
        })
    }
}
