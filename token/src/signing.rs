//! Ed25519 signing keys (via `ring`): token signing and webhook signatures.

use std::fmt;

use ring::rand::SecureRandom as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

use crate::{Claims, Jwk, TokenError, b64};

/// An Ed25519 signing key. The 32-byte seed is what gets encrypted and stored at rest; it is
/// zeroized when the key is dropped (the expanded key inside `ring` is not under our control).
pub struct SigningKey {
    seed: Zeroizing<[u8; 32]>,
    pair: Ed25519KeyPair,
    x: String,
    kid: String,
}

impl SigningKey {
    /// A fresh key from the system's secure random source.
    pub fn generate() -> Result<Self, TokenError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        ring::rand::SystemRandom::new()
            .fill(seed.as_mut())
            .map_err(|_| TokenError::KeyGeneration)?;
        Self::from_seed(&seed)
    }

    /// The key for a 32-byte seed (RFC 8032's private key).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, TokenError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| TokenError::InvalidKey("seed rejected"))?;
        let x = b64::encode(pair.public_key().as_ref());
        let kid = crate::thumbprint(&x);
        Ok(Self {
            seed: Zeroizing::new(*seed),
            pair,
            x,
            kid,
        })
    }

    /// The key for a JWK's private part `d`: the 32-byte seed in base64url (RFC 8037 section 2).
    pub fn from_d(d: &str) -> Result<Self, TokenError> {
        let raw = Zeroizing::new(
            b64::decode(d.trim_end_matches('='))
                .ok_or(TokenError::InvalidKey("`d` is not base64url"))?,
        );
        let seed: &[u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| TokenError::InvalidKey("`d` is not a 32-byte Ed25519 seed"))?;
        Self::from_seed(seed)
    }

    /// The seed, to be encrypted before it is stored. Never log or return it.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte public key.
    pub fn public_key_bytes(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public JWK (never the private part).
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: self.x.clone(),
            kid: self.kid.clone(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }

    /// Signs the claims into a compact JWT with header exactly `{"alg":"EdDSA","kid":"<kid>"}`.
    pub fn sign_claims(&self, claims: &Claims) -> String {
        // The kid is base64url, so it needs no JSON escaping.
        let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, self.kid);
        let payload = claims.to_json().to_string();
        let mut token = String::with_capacity(256);
        token.push_str(&b64::encode(header.as_bytes()));
        token.push('.');
        token.push_str(&b64::encode(payload.as_bytes()));
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64::encode(signature.as_ref()));
        token
    }

    /// A raw Ed25519 signature over `message` (webhook requests sign `timestamp + body`).
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC8037_SEED: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";

    #[test]
    fn a_jwk_private_part_gives_the_key_of_its_seed() {
        let key = SigningKey::from_d(RFC8037_SEED).unwrap();
        assert_eq!(
            key.public_jwk().x,
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(b64::encode(key.seed()), RFC8037_SEED);
        for bad in ["***", "AAEC", ""] {
            assert!(
                matches!(SigningKey::from_d(bad), Err(TokenError::InvalidKey(_))),
                "{bad}"
            );
        }
    }

    fn rfc_key() -> SigningKey {
        let seed: [u8; 32] = b64::decode(RFC8037_SEED).unwrap().try_into().unwrap();
        SigningKey::from_seed(&seed).unwrap()
    }

    #[test]
    fn key_from_rfc_8037_seed_has_the_rfc_public_key_and_thumbprint() {
        let key = rfc_key();
        let jwk = key.public_jwk();
        assert_eq!(jwk.x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(jwk.kid, key.kid());
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("OKP", "Ed25519"));
    }

    #[test]
    fn sign_bytes_matches_rfc_8037_appendix_a4() {
        // RFC 8037 A.4: the JWS signing input `eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc`.
        let key = rfc_key();
        let sig = key.sign_bytes(b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc");
        assert_eq!(
            b64::encode(&sig),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn header_is_exactly_alg_and_kid() {
        let key = rfc_key();
        let token = key.sign_claims(&Claims {
            sub: "c".into(),
            jti: "j".into(),
            iat: 1,
            exp: None,
            nbf: None,
            topic_acl: crate::TopicAcl::All,
        });
        let header = token.split('.').next().unwrap();
        assert_eq!(
            String::from_utf8(b64::decode(header).unwrap()).unwrap(),
            r#"{"alg":"EdDSA","kid":"kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"}"#
        );
        let payload =
            String::from_utf8(b64::decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"iat": 1, "jti": "j", "sub": "c", "topicAcl": "#"})
        );
    }

    #[test]
    fn generated_keys_differ_and_debug_hides_the_seed() {
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        assert_ne!(a.kid(), b.kid());
        let dbg = format!("{a:?}");
        assert!(!dbg.contains(&b64::encode(a.seed())));
    }
}
