//! Secrets the operator writes: the broker's control-plane credential, the operator-issued CA,
//! and the operator-issued TLS leaf (`kubernetes.io/tls`).

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};

use super::{names, owned_meta};
use crate::{
    certs::{CaMaterial, LeafMaterial},
    crd::Broker,
};

/// Key of the broker id in the credential Secret.
pub const BROKER_ID_KEY: &str = "broker-id";
/// Key of the broker's secret in the credential Secret (mounted as `--broker-secret-file`).
pub const BROKER_SECRET_KEY: &str = "broker-secret";
/// Key of the CA certificate (in the CA Secret and in the TLS Secret).
pub const CA_CERT_KEY: &str = "ca.crt";
/// Key of the CA's private key in the CA Secret.
pub const CA_KEY_KEY: &str = "ca.key";

/// The broker's identity in the api and the one-time secret it authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The broker id the api assigned.
    pub broker_id: String,
    /// The per-broker secret for the api's internal route. Never logged.
    pub secret: starling_types::Secret<String>,
}

impl Credentials {
    /// Reads credentials back from the credential Secret, if it holds both keys.
    pub fn from_secret(s: &Secret) -> Option<Self> {
        let data = s.data.as_ref()?;
        let id = String::from_utf8(data.get(BROKER_ID_KEY)?.0.clone()).ok()?;
        let secret = String::from_utf8(data.get(BROKER_SECRET_KEY)?.0.clone()).ok()?;
        (!id.is_empty() && !secret.is_empty()).then_some(Self {
            broker_id: id,
            secret: secret.into(),
        })
    }
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The Secret with the broker's control-plane credential.
pub fn desired_credentials_secret(b: &Broker, c: &Credentials) -> Secret {
    Secret {
        metadata: owned_meta(b, names::credentials(b)),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (BROKER_ID_KEY.to_owned(), bytes(&c.broker_id)),
            (BROKER_SECRET_KEY.to_owned(), bytes(c.secret.expose())),
        ])),
        ..Secret::default()
    }
}

/// The Secret with the operator-issued CA (certificate and key).
pub fn desired_ca_secret(b: &Broker, ca: &CaMaterial) -> Secret {
    Secret {
        metadata: owned_meta(b, names::ca(b)),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (CA_CERT_KEY.to_owned(), bytes(&ca.cert_pem)),
            (CA_KEY_KEY.to_owned(), bytes(&ca.key_pem)),
        ])),
        ..Secret::default()
    }
}

/// The operator-issued `kubernetes.io/tls` Secret the pods mount.
pub fn desired_tls_secret(b: &Broker, leaf: &LeafMaterial) -> Secret {
    Secret {
        metadata: owned_meta(b, names::tls(b)),
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), bytes(&leaf.cert_pem)),
            ("tls.key".to_owned(), bytes(&leaf.key_pem)),
            (CA_CERT_KEY.to_owned(), bytes(&leaf.ca_pem)),
        ])),
        ..Secret::default()
    }
}

/// Reads the CA back from its Secret.
pub fn ca_from_secret(s: &Secret) -> Option<CaMaterial> {
    let data = s.data.as_ref()?;
    Some(CaMaterial {
        cert_pem: String::from_utf8(data.get(CA_CERT_KEY)?.0.clone()).ok()?,
        key_pem: String::from_utf8(data.get(CA_KEY_KEY)?.0.clone()).ok()?,
    })
}

/// Reads an operator-issued leaf back from the TLS Secret.
pub fn leaf_from_secret(s: &Secret) -> Option<LeafMaterial> {
    let data = s.data.as_ref()?;
    Some(LeafMaterial {
        cert_pem: String::from_utf8(data.get("tls.crt")?.0.clone()).ok()?,
        key_pem: String::from_utf8(data.get("tls.key")?.0.clone()).ok()?,
        ca_pem: String::from_utf8(data.get(CA_CERT_KEY)?.0.clone()).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::broker;

    fn creds() -> Credentials {
        Credentials {
            broker_id: "brk_123".to_owned(),
            secret: "s3cr3t-value".to_owned().into(),
        }
    }

    #[test]
    fn the_credential_secret_round_trips_and_debug_redacts_the_secret() {
        let b = broker(serde_json::json!({}));
        let s = desired_credentials_secret(&b, &creds());
        assert_eq!(s.metadata.name.as_deref(), Some("sensors-credentials"));
        assert_eq!(Credentials::from_secret(&s), Some(creds()));
        let shown = format!("{:?}", creds());
        assert!(
            shown.contains("brk_123") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[test]
    fn a_credential_secret_missing_a_key_reads_as_none() {
        let b = broker(serde_json::json!({}));
        let mut s = desired_credentials_secret(&b, &creds());
        s.data.as_mut().expect("data").remove(BROKER_SECRET_KEY);
        assert_eq!(Credentials::from_secret(&s), None);
    }

    #[test]
    fn tls_and_ca_secrets_carry_the_issued_material() {
        let b = broker(serde_json::json!({}));
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("time");
        let ca = crate::certs::issue_ca("iot/sensors", now).expect("ca");
        let leaf =
            crate::certs::issue_leaf(&ca, &["sensors.iot.svc".to_owned()], now, 90).expect("leaf");
        let tls = desired_tls_secret(&b, &leaf);
        assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(tls.metadata.name.as_deref(), Some("sensors-tls"));
        assert_eq!(leaf_from_secret(&tls), Some(leaf));
        let ca_secret = desired_ca_secret(&b, &ca);
        assert_eq!(ca_secret.metadata.name.as_deref(), Some("sensors-ca"));
        assert_eq!(ca_from_secret(&ca_secret), Some(ca));
    }

    #[test]
    fn an_external_tls_secret_name_is_used_as_is() {
        let b = broker(serde_json::json!({"tls": {"secretName": "mqtt-example-com"}}));
        assert_eq!(names::tls(&b), "mqtt-example-com");
    }
}
