//! Token authentication: a Starling token (an EdDSA JWT, byte-compatible with Cloudflare
//! Pub/Sub's) in the CONNECT password, or in Authentication Data with Authentication Method
//! `starling-jwt` for clients that re-authenticate with AUTH before their token expires.
//!
//! Refusals (CONNACK; 3.1.1 return codes in brackets):
//! - 0x86 [4] bad user name or password: no token, not UTF-8, too long, malformed, an algorithm
//!   other than EdDSA, unknown `kid`, a hook key's `kid`, bad signature, a missing or invalid
//!   claim;
//! - 0x87 [5] not authorized: expired, not yet valid (`nbf`), revoked;
//! - 0x8C [4] bad authentication method: a method other than `starling-jwt`.
//!
//! Each refusal is counted in `starling_auth_failures_total{reason}`; the token never appears in
//! a log line, an error or a metric.
//!
//! A fresh token by AUTH (or a resumed session with another token) replaces what the
//! connection may do, and the session keeps only what the new token allows: subscriptions it
//! forbids are removed, queued and in-flight messages it may not read are dropped, and a will
//! whose topic it may not publish to is discarded (the connection's close then publishes
//! nothing).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use starling_codec::ReasonCode;
use starling_token::{MAX_TOKEN_LEN, TokenError, TopicAcl, peek_kid};

use super::directory::Directory;
use super::{Authenticated, Authenticator, ConnectInfo, Credential, Permissions, Refusal};
use crate::metrics::{CodeLabels, Metrics};

/// The Authentication Method of Starling tokens.
pub const AUTH_METHOD: &str = "starling-jwt";

/// A token's `topicAcl` as [`Permissions`].
#[derive(Debug, Clone)]
pub struct AclPermissions(pub TopicAcl);

impl Permissions for AclPermissions {
    fn may_publish(&self, topic: &str) -> bool {
        self.0.may_publish(topic)
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        self.0.may_subscribe(filter)
    }
    fn may_read(&self, topic: &str) -> bool {
        self.0.may_read(topic)
    }
}

/// Verifies tokens against the tenants of a [`Directory`].
#[derive(Debug)]
pub struct TokenAuth {
    directory: Arc<Directory>,
    skew_secs: u64,
    metrics: Arc<Metrics>,
}

impl TokenAuth {
    /// Token authentication against `directory`, allowing `skew_secs` of clock skew on `exp`
    /// and `nbf`.
    pub fn new(directory: Arc<Directory>, skew_secs: u64, metrics: Arc<Metrics>) -> Self {
        TokenAuth {
            directory,
            skew_secs,
            metrics,
        }
    }

    fn refuse(&self, reason: ReasonCode, label: &'static str) -> Refusal {
        self.metrics
            .auth_failures
            .get_or_create(&CodeLabels { reason: label })
            .inc();
        Refusal::new(reason, label)
    }

    fn refuse_token(&self, e: &TokenError) -> Refusal {
        let reason = match e {
            TokenError::Expired | TokenError::NotYetValid => ReasonCode::NOT_AUTHORIZED,
            _ => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        };
        self.refuse(reason, e.metric_label())
    }

    /// Verifies `token` and builds what the connection is allowed.
    fn check(&self, token: &[u8]) -> Result<Authenticated, Refusal> {
        if token.is_empty() {
            return Err(self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, "missing_token"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, "too_long"));
        }
        let Ok(token) = std::str::from_utf8(token) else {
            return Err(self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, "malformed"));
        };
        let kid = peek_kid(token).map_err(|e| self.refuse_token(&e))?;
        if self.directory.is_hook_kid(&kid) {
            // A hook key signs hook requests only; whoever can read it (the broker secret's
            // holder) must not be able to mint client tokens with it.
            return Err(self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, "hook_key"));
        }
        let Some(entry) = self.directory.by_kid(&kid) else {
            return Err(self.refuse_token(&TokenError::UnknownKeyId));
        };
        let now = unix_now();
        let claims = entry
            .verifier()
            .verify(token, now, self.skew_secs)
            .map_err(|e| self.refuse_token(&e))?;
        if entry.is_revoked(&claims.jti) {
            return Err(self.refuse(ReasonCode::NOT_AUTHORIZED, "revoked"));
        }
        let skew = i64::try_from(self.skew_secs).unwrap_or(i64::MAX);
        Ok(Authenticated {
            tenant: entry.tenant.clone(),
            bound_client_id: Some(claims.sub.clone()),
            permissions: Arc::new(AclPermissions(claims.topic_acl)),
            credential: Some(Credential {
                jti: claims.jti.into(),
                kid: kid.into(),
                sub: claims.sub,
                ends_at: claims.exp.map(|e| e.saturating_add(skew)),
            }),
        })
    }
}

impl Authenticator for TokenAuth {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<Authenticated, Refusal> {
        let props = &info.connect.properties;
        // The user name is ignored (Cloudflare's clients sent anything there).
        let token: &[u8] = match &props.authentication_method {
            Some(method) if method.as_str() == AUTH_METHOD => {
                props.authentication_data.as_deref().unwrap_or(&[])
            }
            Some(_) => {
                return Err(self.refuse(
                    ReasonCode::BAD_AUTHENTICATION_METHOD,
                    "bad_authentication_method",
                ));
            }
            None => info.connect.password.as_deref().unwrap_or(&[]),
        };
        self.check(token)
    }

    fn reauthenticate(
        &self,
        current: &Authenticated,
        method: &str,
        data: &[u8],
    ) -> Result<Authenticated, Refusal> {
        if method != AUTH_METHOD {
            return Err(self.refuse(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "bad_authentication_method",
            ));
        }
        let next = self.check(data)?;
        // A fresh token must be for the same client, in the same tenant.
        let same_sub = match (&current.credential, &next.credential) {
            (Some(a), Some(b)) => a.sub == b.sub,
            _ => false,
        };
        if !same_sub || !Arc::ptr_eq(&current.tenant, &next.tenant) {
            return Err(self.refuse(ReasonCode::NOT_AUTHORIZED, "reauth_other_client"));
        }
        Ok(next)
    }

    fn holds(&self, auth: &Authenticated) -> bool {
        let Some(credential) = &auth.credential else {
            return true;
        };
        self.directory.by_kid(&credential.kid).is_some_and(|entry| {
            Arc::ptr_eq(&entry.tenant, &auth.tenant) && !entry.is_revoked(&credential.jti)
        })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
