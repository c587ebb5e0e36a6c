//! Key material: the key-encryption key that seals signing-key seeds at rest, broker secrets
//! and API tokens (random, shown once, stored as SHA-256), and per-broker key generation.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use starling_token::SigningKey;
use zeroize::Zeroizing;

use crate::store::{KeyRecord, KeyStatus};

/// What key handling can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key-encryption key is not 32 bytes of base64 or hex.
    #[error("the key-encryption key must be 32 bytes, base64 or hex encoded")]
    BadKek,
    /// A sealed seed did not open (wrong key-encryption key or tampered row).
    #[error("a sealed signing key did not open (wrong key-encryption key?)")]
    Unseal,
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// Key generation failed.
    #[error("signing key: {0}")]
    Token(#[from] starling_token::TokenError),
}

/// The key-encryption key: seals Ed25519 seeds with AES-256-GCM. The sealed form is
/// `v1.<base64url(nonce || ciphertext || tag)>`, bound to the broker id and kid as associated data.
pub struct Kek {
    key: LessSafeKey,
}

impl Kek {
    /// Parses a key given as 32 bytes in base64 (standard or url-safe) or 64 hex characters.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            hex::decode(text)
                .ok()
                .filter(|b| b.len() == 32)
                .or_else(|| {
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .ok()
                        .filter(|b| b.len() == 32)
                })
                .or_else(|| URL_SAFE_NO_PAD.decode(text).ok().filter(|b| b.len() == 32))
                .ok_or(KeyError::BadKek)?,
        );
        Self::from_bytes(&bytes)
    }

    /// The key from raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::BadKek)?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals a seed for storage.
    pub fn seal(&self, seed: &[u8; 32], broker_id: &str, kid: &str) -> Result<String, KeyError> {
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Random)?;
        let aad = format!("{broker_id}/{kid}");
        let mut buf = Zeroizing::new(seed.to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| KeyError::Unseal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("v1.{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens a sealed seed into a signing key.
    pub fn open(&self, sealed: &str, broker_id: &str, kid: &str) -> Result<SigningKey, KeyError> {
        let body = sealed.strip_prefix("v1.").ok_or(KeyError::Unseal)?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| KeyError::Unseal)?;
        if raw.len() < 12 {
            return Err(KeyError::Unseal);
        }
        let (nonce, ct) = raw.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Unseal)?;
        let aad = format!("{broker_id}/{kid}");
        let mut buf = Zeroizing::new(ct.to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Unseal)?;
        let seed: &[u8; 32] = (&*plain).try_into().map_err(|_| KeyError::Unseal)?;
        let key = SigningKey::from_seed(seed)?;
        if key.kid() != kid {
            return Err(KeyError::Unseal);
        }
        Ok(key)
    }
}

impl Kek {
    /// Opens the broker's current hook key, which signs the on-publish hook's requests (never a
    /// client token); `None` when the broker has none.
    pub fn open_hook_current(
        &self,
        broker_id: &str,
        hook_keys: &[KeyRecord],
    ) -> Result<Option<SigningKey>, KeyError> {
        hook_keys
            .iter()
            .find(|k| k.status == KeyStatus::Current)
            .map(|k| self.open(&k.sealed_seed, &hook_scope(broker_id), &k.kid))
            .transpose()
    }

    /// Opens the broker's current signing key (the one that signs new tokens); `None` when the
    /// broker has none.
    pub fn open_current(
        &self,
        broker_id: &str,
        keys: &[KeyRecord],
    ) -> Result<Option<SigningKey>, KeyError> {
        keys.iter()
            .find(|k| k.status == KeyStatus::Current)
            .map(|k| self.open(&k.sealed_seed, broker_id, &k.kid))
            .transpose()
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// A new signing key for `broker_id`, sealed, as a store record.
pub fn new_key_record(
    kek: &Kek,
    broker_id: &str,
    status: KeyStatus,
    now_micros: i64,
) -> Result<KeyRecord, KeyError> {
    let key = SigningKey::generate()?;
    let sealed = kek.seal(key.seed(), broker_id, key.kid())?;
    Ok(KeyRecord {
        id: ulid::Ulid::new().to_string(),
        broker_id: broker_id.to_string(),
        kid: key.kid().to_string(),
        x: key.public_jwk().x,
        sealed_seed: sealed,
        status,
        created_at: now_micros,
        retire_at: None,
    })
}

/// What a hook key's sealed seed is bound to instead of the broker id, so that it never opens
/// as one of the broker's token keys (and the other way round).
fn hook_scope(broker_id: &str) -> String {
    format!("{broker_id}/hook")
}

/// A new current hook key for `broker_id`, sealed, as a store record: an Ed25519 key of its own
/// that signs the broker's on-publish hook requests and never a client token.
pub fn new_hook_key_record(
    kek: &Kek,
    broker_id: &str,
    now_micros: i64,
) -> Result<KeyRecord, KeyError> {
    let key = SigningKey::generate()?;
    let sealed = kek.seal(key.seed(), &hook_scope(broker_id), key.kid())?;
    Ok(KeyRecord {
        id: ulid::Ulid::new().to_string(),
        broker_id: broker_id.to_string(),
        kid: key.kid().to_string(),
        x: key.public_jwk().x,
        sealed_seed: sealed,
        status: KeyStatus::Current,
        created_at: now_micros,
        retire_at: None,
    })
}

/// A random secret with a recognisable prefix (`sbs_` broker secrets, `sat_` API tokens).
pub fn new_secret(prefix: &str) -> Result<String, KeyError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| KeyError::Random)?;
    Ok(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ))
}

/// The stored form of a secret: hex SHA-256. Secrets are 256 random bits, so a fast hash is
/// enough (there is nothing to brute-force).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// Constant-time comparison of two secret hashes.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// 32 lowercase hex characters of randomness (object ids, like Cloudflare's).
pub fn new_id() -> Result<String, KeyError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Random)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::parse(&hex::encode([7u8; 32])).unwrap()
    }

    #[test]
    fn sealed_seed_opens_to_the_same_key_and_hides_the_seed() {
        let k = SigningKey::generate().unwrap();
        let sealed = kek().seal(k.seed(), "b1", k.kid()).unwrap();
        assert!(!sealed.contains(&URL_SAFE_NO_PAD.encode(k.seed())));
        assert!(!sealed.contains(&hex::encode(k.seed())));
        let opened = kek().open(&sealed, "b1", k.kid()).unwrap();
        assert_eq!(opened.kid(), k.kid());
    }

    #[test]
    fn sealed_seed_does_not_open_for_another_broker_or_key() {
        let k = SigningKey::generate().unwrap();
        let sealed = kek().seal(k.seed(), "b1", k.kid()).unwrap();
        assert!(kek().open(&sealed, "b2", k.kid()).is_err());
        let other = Kek::parse(&hex::encode([8u8; 32])).unwrap();
        assert!(other.open(&sealed, "b1", k.kid()).is_err());
    }

    #[test]
    fn a_sealed_hook_key_never_opens_as_a_token_key() {
        let record = new_hook_key_record(&kek(), "b1", 1).unwrap();
        assert!(
            kek()
                .open_hook_current("b1", std::slice::from_ref(&record))
                .unwrap()
                .is_some()
        );
        assert!(kek().open(&record.sealed_seed, "b1", &record.kid).is_err());
        assert!(kek().open_current("b1", &[record]).is_err());
    }

    #[test]
    fn kek_accepts_hex_and_base64_and_refuses_short_keys() {
        assert!(Kek::parse(&hex::encode([1u8; 32])).is_ok());
        assert!(Kek::parse(&base64::engine::general_purpose::STANDARD.encode([1u8; 32])).is_ok());
        assert!(Kek::parse("short").is_err());
        assert!(Kek::parse(&hex::encode([1u8; 16])).is_err());
    }
}
