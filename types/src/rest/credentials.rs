//! Issued credentials: the records of tokens issued (never the tokens). Issuing itself answers
//! a map of client id to token.

use serde::{Deserialize, Serialize};

/// A record of an issued token (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct IssuedView {
    /// The token's `jti` (what revocation names).
    pub jti: String,
    /// The client id (`sub`).
    pub client_id: String,
    /// The key that signed it.
    pub kid: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; `null` for a token without `exp`.
    pub expires_at: Option<i64>,
    /// The `jti` is revoked now.
    pub revoked: bool,
}

/// A page of issuance records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct IssuedList {
    /// Newest first.
    pub items: Vec<IssuedView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
