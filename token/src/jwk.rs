//! JSON Web Keys (RFC 7517) for Ed25519 (RFC 8037), public parts only. The types are
//! `starling-types`' (they travel between processes); their thumbprint is here.

pub use starling_types::jwk::{Jwk, Jwks};

/// The RFC 7638 thumbprint of an OKP key with public part `x` (base64url):
/// base64url(SHA-256(`{"crv":"Ed25519","kty":"OKP","x":"<x>"}`)).
pub fn thumbprint(x: &str) -> String {
    // RFC 7638 section 3.2: the required members in lexicographic order, no whitespace.
    // `x` is base64url, so it needs no JSON escaping.
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    crate::b64::encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_8037_appendix_a3() {
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
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
