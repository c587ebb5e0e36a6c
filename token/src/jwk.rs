//! JSON Web Keys (RFC 7517) for Ed25519 (RFC 8037), public parts only.

use serde::{Deserialize, Serialize};

/// One public Ed25519 JWK. There is deliberately no field for the private part `d`: a `d` in
/// input is ignored and can never be written back out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub alg: String,
    /// Public key use, `sig`.
    #[serde(rename = "use", default = "default_use")]
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
pub struct Jwks {
    /// The keys: next, current and retiring ones.
    pub keys: Vec<Jwk>,
}

impl Jwk {
    /// The RFC 7638 thumbprint of an OKP key with public part `x` (base64url):
    /// base64url(SHA-256(`{"crv":"Ed25519","kty":"OKP","x":"<x>"}`)).
    pub fn thumbprint(x: &str) -> String {
        // RFC 7638 section 3.2: the required members in lexicographic order, no whitespace.
        // `x` is base64url, so it needs no JSON escaping.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        crate::b64::encode(digest.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_8037_appendix_a3() {
        assert_eq!(
            Jwk::thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn private_part_in_input_is_never_written_back() {
        let with_d = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","kid":"k"}"#;
        let jwk: Jwk = serde_json::from_str(with_d).unwrap();
        let out = serde_json::to_string(&jwk).unwrap();
        assert!(!out.contains("\"d\""), "{out}");
        assert!(!out.contains("nWGxne"), "{out}");
        assert_eq!(jwk.alg, "EdDSA");
        assert_eq!(jwk.use_, "sig");
        assert!(out.contains(r#""use":"sig""#));
    }
}
