//! Why a token or key was refused.

/// Why a token (or a key) was refused. `Display` never includes the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or a part that is not the JSON it should be.
    #[error("malformed token")]
    Malformed,
    /// The token is longer than [`crate::MAX_TOKEN_LEN`].
    #[error("token too long")]
    TooLong,
    /// `alg` is anything but `EdDSA` (including `none` and the HMAC family).
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// The header carries no `kid`.
    #[error("token header has no key id")]
    MissingKeyId,
    /// No key of the tenant has this `kid`.
    #[error("unknown key id")]
    UnknownKeyId,
    /// The signature does not verify under the key named by `kid`.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is in the past (beyond the allowed clock skew).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the allowed clock skew).
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim is absent.
    #[error("missing claim `{0}`")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or an invalid value.
    #[error("invalid claim `{0}`")]
    InvalidClaim(&'static str),
    /// A JWK is not a usable Ed25519 public key.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// The system random source failed while generating a key.
    #[error("key generation failed")]
    KeyGeneration,
}

impl TokenError {
    /// A short, stable label for metrics (`auth_failures_total{reason="..."}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::TooLong => "too_long",
            TokenError::UnsupportedAlgorithm => "unsupported_algorithm",
            TokenError::MissingKeyId => "missing_kid",
            TokenError::UnknownKeyId => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim(_) => "invalid_claim",
            TokenError::InvalidKey(_) => "invalid_key",
            TokenError::KeyGeneration => "key_generation",
        }
    }
}
