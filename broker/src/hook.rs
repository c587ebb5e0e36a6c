//! The on-publish hook: every PUBLISH of a tenant that has one goes to the user's webhook before
//! any subscriber sees it, and the webhook's answer decides what is delivered.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use starling_token::SigningKey;

/// Where a tenant's messages go for approval, and the key that signs the requests.
#[derive(Clone)]
pub struct HookTarget {
    /// The webhook URL (`on_publish.url`).
    pub url: String,
    /// The tenant's current signing key. Without one no request can be signed, and every
    /// message is dropped (never delivered unchecked).
    pub key: Option<Arc<SigningKey>>,
    /// The `broker` field of every message: the broker's name.
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
    /// How long one request may take, body included, before its batch is dropped.
    pub timeout_secs: u64,
    /// At most this many messages per request.
    pub max_batch_messages: usize,
    /// At most this many payload bytes per request (a single larger message goes alone).
    pub max_batch_bytes: usize,
    /// Requests in flight at once, per tenant.
    pub max_requests_in_flight: usize,
    /// Messages waiting for a request, per tenant; publishers wait when it is full.
    pub queue_capacity: usize,
    /// Messages of one connection awaiting the verdict; reading from that client pauses at this.
    pub max_pending_per_connection: usize,
    /// A response body larger than this drops the batch.
    pub max_response_bytes: usize,
    /// Allow `http://` URLs (otherwise only `https://`).
    pub allow_http: bool,
    /// Allow hosts that resolve to loopback, private, link-local or other non-public addresses.
    pub allow_private_addresses: bool,
    /// Hosts exempt from both rules above, e.g. a cluster-internal `http://moderation.default.svc`.
    pub allowed_hosts: Vec<String>,
}

impl Default for HookSettings {
    fn default() -> Self {
        HookSettings {
            timeout_secs: 10,
            max_batch_messages: 100,
            max_batch_bytes: 1024 * 1024,
            max_requests_in_flight: 4,
            queue_capacity: 1024,
            max_pending_per_connection: 64,
            max_response_bytes: 8 * 1024 * 1024,
            allow_http: false,
            allow_private_addresses: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl HookSettings {
    /// Settings for a hook on the same machine (`starling-api dev`): http and loopback allowed.
    pub fn local() -> Self {
        HookSettings {
            allow_http: true,
            allow_private_addresses: true,
            ..HookSettings::default()
        }
    }
}
