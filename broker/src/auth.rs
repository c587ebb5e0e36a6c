//! The authentication step of CONNECT, behind a trait so token authentication (and later the
//! control plane) plug in without touching the connection code.

use std::net::SocketAddr;
use std::sync::Arc;

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
    /// Whether the client may subscribe to `filter` (without any `$share/group/` prefix).
    fn may_subscribe(&self, filter: &str) -> bool;
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

/// The authentication step.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Checks a CONNECT. Must not block: it runs on the connection's task.
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<Authenticated, Refusal>;
}

/// `--auth none`: everyone into one tenant, everything allowed.
#[derive(Debug, Clone)]
pub struct NoAuth {
    tenant: Arc<Tenant>,
}

impl NoAuth {
    /// Lets everyone into `tenant`.
    pub fn new(tenant: Arc<Tenant>) -> Self {
        NoAuth { tenant }
    }
}

impl Authenticator for NoAuth {
    fn authenticate(&self, _info: &ConnectInfo<'_>) -> Result<Authenticated, Refusal> {
        Ok(Authenticated {
            tenant: self.tenant.clone(),
            bound_client_id: None,
            permissions: Arc::new(AllowAll),
        })
    }
}
