//! Revocations.

use serde::{Deserialize, Serialize};

/// A live revocation. It is kept until the token's `exp` plus 300 s or, for a token without
/// `exp` (or a `jti` the api did not issue), until the key that signed it leaves the broker's
/// key set (a rotation, then its `retire_at`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// The revoked token id.
    pub jti: String,
    /// Unix seconds when the token expires; the revocation is kept 300 s longer (the largest
    /// clock skew a broker accepts). `null` for a token without `exp`, or a `jti` this api did
    /// not issue: then it is kept until the key that signed the token is retired.
    pub expires_at: Option<i64>,
    /// The key that signed the token, when this api issued it; `null` otherwise.
    #[serde(default)]
    pub kid: Option<String>,
}
