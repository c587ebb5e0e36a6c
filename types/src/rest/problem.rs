//! The error body of the native routes: RFC 9457 problem details with a stable numeric code.

use serde::{Deserialize, Serialize};

// Every member reads as its default when missing, so a client that reads this type (the
// `starling` command-line client) still reads a partial problem from another server; the api
// always writes every member.
/// RFC 9457 problem details, plus the stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type", default)]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub type_: String,
    /// A short summary of the problem type.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub title: String,
    /// The HTTP status.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub status: u16,
    /// What went wrong with this request.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub detail: String,
    /// Stable numeric code, the same for the same condition on both route sets: 10000
    /// authentication failed, 10001 invalid request, 10002 internal error, 10003 the token's role
    /// does not allow this, 10004 not found, 10005 name taken, 10006 conflicting state, 10007 a
    /// configured bound, 10008 not implemented, 10009 body too large, 10010 method not allowed,
    /// 10011 body not sent as JSON; under /client/v4 also 7000 (no such route) and 9109 (no user
    /// details behind an API token).
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub code: u32,
}
