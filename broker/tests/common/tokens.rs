//! Token helpers for tests: per-tenant key files and tokens signed by our signer or, as an
//! independent implementation, by Python's `cryptography`.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use starling_token::{Claims, Jwks, SigningKey, TopicAcl};

/// One tenant's key and files.
pub struct TenantKeys {
    pub name: String,
    pub key: SigningKey,
    pub jwks_path: PathBuf,
    pub revocations_path: PathBuf,
}

impl TenantKeys {
    pub fn new(dir: &std::path::Path, name: &str) -> TenantKeys {
        let key = SigningKey::generate().unwrap();
        let jwks = Jwks {
            keys: vec![key.public_jwk()],
        };
        let jwks_path = dir.join(format!("{name}-jwks.json"));
        std::fs::write(&jwks_path, serde_json::to_vec(&jwks).unwrap()).unwrap();
        let revocations_path = dir.join(format!("{name}-revoked.txt"));
        std::fs::write(&revocations_path, "").unwrap();
        TenantKeys {
            name: name.to_string(),
            key,
            jwks_path,
            revocations_path,
        }
    }

    pub fn files(&self) -> starling_broker::config::TenantFiles {
        starling_broker::config::TenantFiles {
            name: self.name.clone(),
            jwks: self.jwks_path.clone(),
            revocations: Some(self.revocations_path.clone()),
        }
    }

    pub fn claims(&self, sub: &str, jti: &str, acl: TopicAcl, exp: Option<i64>) -> Claims {
        Claims {
            sub: sub.to_string(),
            jti: jti.to_string(),
            iat: now(),
            exp,
            nbf: None,
            topic_acl: acl,
        }
    }

    /// A token signed by our signer.
    pub fn token(&self, sub: &str, jti: &str, acl: TopicAcl, exp: Option<i64>) -> String {
        self.key.sign_claims(&self.claims(sub, jti, acl, exp))
    }

    /// A token with this header and claims, signed by Python's `cryptography`.
    pub fn python_token(&self, header: &str, claims: &str) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/sign_token.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(hex(self.key.seed()))
            .arg(header)
            .arg(claims)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "python signer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn header(&self) -> String {
        format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, self.key.kid())
    }

    pub fn revoke(&self, jtis: &[&str]) {
        let tmp = self.revocations_path.with_extension("tmp");
        std::fs::write(&tmp, jtis.join("\n")).unwrap();
        std::fs::rename(&tmp, &self.revocations_path).unwrap();
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CONNECT (v5, clean start) carrying `token` as its password.
pub fn with_password(id: &str, token: &str) -> starling_codec::Connect {
    starling_codec::Connect {
        username: Some("anything".into()),
        password: Some(bytes::Bytes::from(token.to_string())),
        ..super::connect_v5(id)
    }
}

/// A topic ACL with these `pub` and `sub` filters.
pub fn acl(publish: &[&str], subscribe: &[&str]) -> TopicAcl {
    TopicAcl::Lists {
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
    }
}
