//! The error body of the native routes: RFC 9457 problem details with a stable numeric code.

use serde::{Deserialize, Serialize};

// Every member reads as its default when missing or null, so a client that reads this type (the
// `starling` command-line client) still reads a partial problem from another server; the api
// always writes every member.
/// RFC 9457 problem details, plus the stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub type_: String,
    /// A short summary of the problem type.
    #[serde(default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub title: String,
    /// The HTTP status.
    #[serde(default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub status: u16,
    /// What went wrong with this request.
    #[serde(default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub detail: String,
    /// Stable numeric code, the same for the same condition on both route sets: 10000
    /// authentication failed, 10001 invalid request, 10002 internal error, 10003 the token's role
    /// does not allow this, 10004 not found, 10005 name taken, 10006 conflicting state, 10007 a
    /// configured bound, 10008 not implemented, 10009 body too large, 10010 method not allowed,
    /// 10011 body not sent as JSON; under /client/v4 also 7000 (no such route) and 9109 (no user
    /// details behind an API token).
    #[serde(default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub code: u32,
}

/// Reads `null` as the type's default, as a missing member reads.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_problem_from_another_server_still_reads() {
        let p: Problem =
            serde_json::from_str(r#"{"title":"Bad","status":400,"detail":null,"type":null}"#)
                .unwrap();
        assert_eq!(p.title, "Bad");
        assert_eq!(p.status, 400);
        assert_eq!(p.detail, "");
        assert_eq!(p.code, 0);
        let p: Problem = serde_json::from_str(r#"{"detail":"no such broker"}"#).unwrap();
        assert_eq!(p.detail, "no such broker");
    }
}
