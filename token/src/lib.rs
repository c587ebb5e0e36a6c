//! Starling tokens: claims, topic ACLs, JWK/JWKS, Ed25519 signing and verification.
//!
//! Shared by the broker (which verifies tokens on CONNECT and AUTH) and the control plane (which
//! holds the per-broker signing keys and issues tokens). The format stays byte-compatible with
//! Cloudflare Pub/Sub's: a JWT with header `{"alg":"EdDSA","kid":"<RFC 7638 thumbprint>"}` and
//! claims `sub`, `jti`, `iat`, optional `exp` and `nbf`, and `topicAcl`.
//!
//! Ed25519 comes from `ring`, the one crypto provider of the workspace.

mod acl;
mod claims;
mod error;
mod jwk;
mod signing;
mod verify;

pub use acl::{
    TopicAcl, filter_covers, filters_overlap, topic_matches_filter, validate_filter, validate_topic,
};
pub use claims::Claims;
pub use error::TokenError;
pub use jwk::{Jwk, Jwks, thumbprint};
pub use signing::SigningKey;
pub use verify::{MAX_CLOCK_SKEW_SECS, MAX_TOKEN_LEN, Verifier, peek_kid};

/// `pub type Result<T, E = TokenError>` for this crate.
pub type Result<T, E = TokenError> = std::result::Result<T, E>;

pub(crate) mod b64 {
    //! base64url without padding, the JOSE encoding (RFC 7515 section 2).
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    pub(crate) fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD.decode(text).ok()
    }
}
