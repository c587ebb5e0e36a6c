//! Token verification against one tenant's JWKS.

use std::collections::HashMap;

use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Deserialize;

use crate::{Claims, Jwk, Jwks, TokenError, TopicAcl, b64};

/// The longest token accepted, in bytes (the MQTT password limit of Cloudflare's profile).
pub const MAX_TOKEN_LEN: usize = 4096;

/// The largest clock skew a broker may allow on `exp` and `nbf`, in seconds. A broker accepts a
/// token until `exp` plus its own skew (at most this), so the control plane keeps a revocation
/// until `exp` plus this: no broker can accept a revoked token again.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Verifies tokens against one tenant's public keys (next, current and retiring).
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: HashMap<String, UnparsedPublicKey<[u8; 32]>>,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

/// The claims as they arrive, so a missing one is reported by name.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<serde_json::Value>,
    jti: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    #[serde(rename = "topicAcl")]
    topic_acl: Option<serde_json::Value>,
}

impl Verifier {
    /// A verifier for the Ed25519 keys of `jwks`. Keys of other types or algorithms are ignored
    /// (they can never verify a Starling token); a malformed Ed25519 key is an error.
    pub fn new(jwks: &Jwks) -> Result<Self, TokenError> {
        let mut keys = HashMap::with_capacity(jwks.keys.len());
        for jwk in &jwks.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" || jwk.alg != "EdDSA" {
                continue;
            }
            if jwk.use_ != "sig" {
                continue;
            }
            let x = b64::decode(&jwk.x).ok_or(TokenError::InvalidKey("x is not base64url"))?;
            let x: [u8; 32] = x
                .try_into()
                .map_err(|_| TokenError::InvalidKey("x is not 32 bytes"))?;
            if jwk.kid.is_empty() {
                return Err(TokenError::InvalidKey("empty kid"));
            }
            keys.insert(jwk.kid.clone(), UnparsedPublicKey::new(&ED25519, x));
        }
        Ok(Self { keys })
    }

    /// A verifier for a single key (convenient for tests and single-key tenants).
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, TokenError> {
        Self::new(&Jwks {
            keys: vec![jwk.clone()],
        })
    }

    /// Whether this verifier holds a key with this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// How many keys this verifier holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether this verifier holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `token` at time `now_unix` (seconds), allowing `skew_secs` of clock skew on
    /// `exp` and `nbf`, and returns its claims.
    ///
    /// Refused: over-long tokens, anything but three base64url parts, any `alg` but `EdDSA`
    /// (including `none` and HMAC tokens keyed with the public key), an unknown `kid`, a bad
    /// signature, a missing `sub`, `jti`, `iat` or `topicAcl`, an `exp` in the past and an `nbf`
    /// in the future. A token without `exp` is valid.
    pub fn verify(&self, token: &str, now_unix: i64, skew_secs: u64) -> Result<Claims, TokenError> {
        let (header, kid) = parse_header(token)?;
        // The algorithm is fixed by the key type; the header may only confirm it (RFC 8725 2.1).
        if header.alg.as_deref() != Some("EdDSA") {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let key = self.keys.get(&kid).ok_or(TokenError::UnknownKeyId)?;
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let signature = b64::decode(signature).ok_or(TokenError::Malformed)?;
        if signature.len() != 64 {
            return Err(TokenError::BadSignature);
        }
        key.verify(signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;

        let payload = signing_input
            .split_once('.')
            .map(|(_, p)| p)
            .ok_or(TokenError::Malformed)?;
        let payload = b64::decode(payload).ok_or(TokenError::Malformed)?;
        let raw: RawClaims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let claims = Claims {
            sub: string_claim(raw.sub, "sub")?,
            jti: string_claim(raw.jti, "jti")?,
            iat: int_claim(raw.iat, "iat")?.ok_or(TokenError::MissingClaim("iat"))?,
            exp: int_claim(raw.exp, "exp")?,
            nbf: int_claim(raw.nbf, "nbf")?,
            topic_acl: match raw.topic_acl {
                None | Some(serde_json::Value::Null) => {
                    return Err(TokenError::MissingClaim("topicAcl"));
                }
                Some(v) => {
                    TopicAcl::deserialize(v).map_err(|_| TokenError::InvalidClaim("topicAcl"))?
                }
            },
        };
        let skew = i64::try_from(skew_secs).unwrap_or(i64::MAX);
        if let Some(exp) = claims.exp {
            // RFC 7519 4.1.4: not accepted on or after `exp`.
            if now_unix >= exp.saturating_add(skew) {
                return Err(TokenError::Expired);
            }
        }
        if let Some(nbf) = claims.nbf {
            // RFC 7519 4.1.5: not accepted before `nbf`.
            if now_unix.saturating_add(skew) < nbf {
                return Err(TokenError::NotYetValid);
            }
        }
        Ok(claims)
    }

    /// Verifies a raw Ed25519 signature made by the key `kid` (webhook signatures).
    pub fn verify_bytes(
        &self,
        kid: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKeyId)?;
        key.verify(message, signature)
            .map_err(|_| TokenError::BadSignature)
    }
}

/// The `kid` of a token's header, without verifying anything, so that a broker serving several
/// tenants can pick the tenant's key set first.
pub fn peek_kid(token: &str) -> Result<String, TokenError> {
    parse_header(token).map(|(_, kid)| kid)
}

fn parse_header(token: &str) -> Result<(Header, String), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = b64::decode(header).ok_or(TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
    let kid = header.kid.clone().ok_or(TokenError::MissingKeyId)?;
    Ok((header, kid))
}

fn string_claim(v: Option<serde_json::Value>, name: &'static str) -> Result<String, TokenError> {
    match v {
        None | Some(serde_json::Value::Null) => Err(TokenError::MissingClaim(name)),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
        Some(serde_json::Value::String(_)) => Err(TokenError::MissingClaim(name)),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

fn int_claim(v: Option<serde_json::Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            // RFC 7519 NumericDate may carry a fraction; whole seconds are what we compare.
            None => n
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                .map(|f| Some(f.floor() as i64))
                .ok_or(TokenError::InvalidClaim(name)),
        },
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}
