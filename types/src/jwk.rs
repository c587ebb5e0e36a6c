//! JSON Web Keys (RFC 7517) for Ed25519 (RFC 8037), public parts only: what `/publickeys` and
//! the state feed carry. Thumbprints, signing and verification are `starling-token`'s.

use serde::{Deserialize, Serialize};

/// One public Ed25519 JWK. There is deliberately no field for the private part `d`: a `d` in
/// input is ignored and can never be written back out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Jwk {
    /// Key type, `OKP` for Ed25519.
    pub kty: String,
    /// Curve, `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding (32 bytes).
    pub x: String,
    /// Key id: the RFC 7638 thumbprint.
    pub kid: String,
    /// Algorithm, `EdDSA`.
    #[serde(default = "default_alg")]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub alg: String,
    /// Public key use, `sig`.
    #[serde(rename = "use", default = "default_use")]
    #[cfg_attr(feature = "utoipa", schema(required = true))]
    pub use_: String,
}

fn default_alg() -> String {
    "EdDSA".into()
}

fn default_use() -> String {
    "sig".into()
}

/// A JWK set: one tenant's (one broker's) public keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Jwks {
    /// The keys: next, current and retiring ones.
    pub keys: Vec<Jwk>,
}
