//! Signing keys: the keys with their state, rotations. The published key set
//! (`GET .../publickeys`) is [`crate::jwk::Jwks`].

use serde::{Deserialize, Serialize};

/// The outcome of a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// The key that now signs.
    pub current_kid: String,
    /// The key published ahead of the next rotation.
    pub next_kid: String,
    /// The key that stopped signing and keeps verifying until `retireAt`.
    pub retiring_kid: Option<String>,
    /// The key that now signs the on-publish hook's requests (`X-Signature-Key-Id`); the one
    /// before stays in `/publickeys` until `retireAt`.
    pub hook_kid: String,
    /// Unix seconds when the retiring key leaves `/publickeys` and the brokers.
    pub retire_at: i64,
    /// `retireAt` as RFC 3339.
    pub retire_at_rfc3339: String,
    /// What this means for existing tokens.
    pub message: String,
}

/// A signing key's public part with where it is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    /// RFC 7638 thumbprint (the `kid` of tokens it signs).
    pub kid: String,
    /// `next` (published ahead of the next rotation), `current` (signs new tokens) or
    /// `retiring` (verifies until `retireAt`, then leaves).
    #[cfg_attr(feature = "utoipa", schema(pattern = "^(next|current|retiring)$"))]
    pub status: String,
    /// The public key, base64url.
    pub x: String,
    /// RFC 3339 with microseconds.
    pub created_on: String,
    /// Unix seconds when a retiring key leaves; `null` for the others.
    pub retire_at: Option<i64>,
}

/// A broker's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct KeyList {
    /// Next, current and retiring keys still verifying, oldest first.
    pub keys: Vec<KeyView>,
}
