//! TLS for the NATS the chart installs: a CA of its own, one certificate the servers present to
//! clients and to each other (routes), and the CA alone for the brokers.
//!
//! Three Secrets in the operator's namespace, named by its flags:
//! - the CA (`ca.crt`, `ca.key`): created once, never changed, read by the operator only;
//! - the servers' certificate (`tls.crt`, `tls.key`, `ca.crt`), which the NATS pods mount:
//!   issued by that CA for the host names of the NATS URLs and `*.` their parent domain (so a
//!   larger StatefulSet is still covered), for server and client authentication (routes verify
//!   each other), valid [`SERVER_VALIDITY_DAYS`]; issued again when it is missing, does not
//!   cover those names, was issued by another CA, or expires within [`RENEW_BEFORE_DAYS`];
//! - `ca.crt` alone, the Secret every Broker's copy is made from (`--broker-cluster-tls-secret`),
//!   so no broker pod ever holds the servers' key.
//!
//! A NATS server reads its certificate when it starts: after a renewal the NATS pods serve the
//! new one once restarted (`kubectl rollout restart statefulset <release>-nats`), and the old one
//! stays valid for the [`RENEW_BEFORE_DAYS`] until then. Keys never reach a log, an error or an
//! event.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rcgen::ExtendedKeyUsagePurpose;

use crate::certs::{self, CaMaterial, LeafMaterial};
use crate::nats_auth::{get_or_create, opaque_secret, secret_error, value};

/// The CA certificate, in every Secret of this module.
pub const CA_CERT_KEY: &str = "ca.crt";
/// The CA's private key, in the CA Secret only.
pub const CA_KEY_KEY: &str = "ca.key";
/// The servers' certificate.
pub const CERT_KEY: &str = "tls.crt";
/// The servers' private key.
pub const KEY_KEY: &str = "tls.key";
/// How long the servers' certificate is valid.
pub const SERVER_VALIDITY_DAYS: i32 = 1825;
/// The servers' certificate is issued again this long before it expires.
pub const RENEW_BEFORE_DAYS: i32 = 90;

/// The three Secrets, by name, in the operator's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsTlsSecrets {
    /// The CA, with its key.
    pub ca: String,
    /// The servers' certificate and key.
    pub server: String,
    /// The CA certificate alone, for the brokers.
    pub client: String,
}

/// Why the NATS TLS material could not be set up. Names Secrets and keys, never values.
#[derive(Debug, thiserror::Error)]
pub enum NatsTlsError {
    /// Reading or writing a Secret failed.
    #[error(transparent)]
    Kube(#[from] crate::nats_auth::SecretError),
    /// The CA Secret lacks a key or holds something unusable.
    #[error("the Secret {name}: {reason}")]
    BadCa {
        /// The Secret.
        name: String,
        /// What is wrong (keys, never values).
        reason: String,
    },
    /// Issuing a certificate failed.
    #[error("{0}")]
    Cert(#[from] certs::CertError),
    /// No NATS URL names a host.
    #[error("no NATS URL names a host to issue the servers' certificate for")]
    NoHosts,
}

/// The names the servers' certificate covers for the NATS `urls`: each host, and for a DNS
/// name of three labels or more `*.` its parent domain; sorted, without repeats.
pub fn server_names(urls: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for url in urls {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        };
        let host = host.trim().to_ascii_lowercase();
        if host.is_empty() {
            continue;
        }
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        if !is_ip
            && let Some((_, parent)) = host.split_once('.')
            && parent.contains('.')
        {
            names.push(format!("*.{parent}"));
        }
        names.push(host);
    }
    names.sort();
    names.dedup();
    names
}

/// The CA held by `s`.
pub fn ca_of(s: &Secret, name: &str) -> Result<CaMaterial, NatsTlsError> {
    let bad = |reason: String| NatsTlsError::BadCa {
        name: name.to_owned(),
        reason,
    };
    let cert_pem = value(s, CA_CERT_KEY).ok_or_else(|| bad(format!("no {CA_CERT_KEY:?}")))?;
    let key_pem = value(s, CA_KEY_KEY).ok_or_else(|| bad(format!("no {CA_KEY_KEY:?}")))?;
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|_| bad(format!("{CA_KEY_KEY:?} is not a PEM private key")))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|_| bad(format!("{CA_CERT_KEY:?} is not a PEM certificate")))?;
    let cert = pem
        .parse_x509()
        .map_err(|_| bad(format!("{CA_CERT_KEY:?} is not a certificate")))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(format!(
            "{CA_CERT_KEY:?} and {CA_KEY_KEY:?} are not one key pair"
        )));
    }
    Ok(CaMaterial { cert_pem, key_pem })
}

/// The servers' certificate held by `s`, if whole.
pub fn leaf_of(s: &Secret) -> Option<LeafMaterial> {
    Some(LeafMaterial {
        cert_pem: value(s, CERT_KEY)?,
        key_pem: value(s, KEY_KEY)?,
        ca_pem: value(s, CA_CERT_KEY)?,
    })
}

/// The servers' Secret for `leaf`.
pub fn server_secret(name: &str, namespace: &str, leaf: &LeafMaterial) -> Secret {
    opaque_secret(
        name,
        namespace,
        &[
            (CERT_KEY, &leaf.cert_pem),
            (KEY_KEY, &leaf.key_pem),
            (CA_CERT_KEY, &leaf.ca_pem),
        ],
    )
}

/// The brokers' Secret for `ca`: its certificate, nothing else.
pub fn client_secret(name: &str, namespace: &str, ca: &CaMaterial) -> Secret {
    opaque_secret(name, namespace, &[(CA_CERT_KEY, &ca.cert_pem)])
}

/// Issues the servers' certificate for `urls` under `ca`.
pub fn issue_server(
    ca: &CaMaterial,
    urls: &[String],
    now: Timestamp,
) -> Result<LeafMaterial, NatsTlsError> {
    let names = server_names(urls);
    if names.is_empty() {
        return Err(NatsTlsError::NoHosts);
    }
    Ok(certs::issue_leaf_for(
        ca,
        &names,
        now,
        SERVER_VALIDITY_DAYS,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?)
}

/// Whether the servers' Secret `s` must be written again for `ca` and `urls`.
pub fn server_needs_issuing(
    s: Option<&Secret>,
    ca: &CaMaterial,
    urls: &[String],
    now: Timestamp,
) -> bool {
    match s.and_then(leaf_of) {
        Some(leaf) => {
            certs::leaf_needs_renewal(&leaf, ca, &server_names(urls), now, RENEW_BEFORE_DAYS)
        }
        None => true,
    }
}

/// Reads the CA Secret, creating it first when it does not exist (another operator replica
/// creating it meanwhile is fine); writes the servers' Secret when it must be issued again and
/// the brokers' Secret when it does not hold the CA alone. Returns the CA certificate (PEM).
pub async fn ensure(
    api: &Api<Secret>,
    namespace: &str,
    secrets: &NatsTlsSecrets,
    urls: &[String],
) -> Result<String, NatsTlsError> {
    let (ca_secret, created) = get_or_create(api, &secrets.ca, || {
        let ca = certs::issue_named_ca(
            &format!("Starling NATS CA {namespace}/{}", secrets.server),
            Timestamp::now(),
        )?;
        Ok::<_, NatsTlsError>(opaque_secret(
            &secrets.ca,
            namespace,
            &[(CA_CERT_KEY, &ca.cert_pem), (CA_KEY_KEY, &ca.key_pem)],
        ))
    })
    .await?;
    if created {
        tracing::info!(secret = %secrets.ca, %namespace, "generated the NATS servers' CA");
    }
    let ca = ca_of(&ca_secret, &secrets.ca)?;
    let apply = PatchParams::apply(crate::controller::MANAGER).force();
    let server = api
        .get_opt(&secrets.server)
        .await
        .map_err(secret_error(&secrets.server))?;
    if server_needs_issuing(server.as_ref(), &ca, urls, Timestamp::now()) {
        let leaf = issue_server(&ca, urls, Timestamp::now())?;
        api.patch(
            &secrets.server,
            &apply,
            &Patch::Apply(&server_secret(&secrets.server, namespace, &leaf)),
        )
        .await
        .map_err(secret_error(&secrets.server))?;
        tracing::info!(secret = %secrets.server, %namespace, names = ?server_names(urls), "issued the NATS servers' certificate (NATS pods started before serve the old one until restarted)");
    }
    let client = api
        .get_opt(&secrets.client)
        .await
        .map_err(secret_error(&secrets.client))?;
    let desired = client_secret(&secrets.client, namespace, &ca);
    if client.as_ref().and_then(|s| s.data.as_ref()) != desired.data.as_ref() {
        api.patch(&secrets.client, &apply, &Patch::Apply(&desired))
            .await
            .map_err(secret_error(&secrets.client))?;
        tracing::info!(secret = %secrets.client, %namespace, "wrote the NATS CA for the brokers");
    }
    Ok(ca.cert_pem)
}

/// A rustls client configuration trusting only `ca_pem` (ring).
pub fn client_config(ca_pem: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the NATS CA: {e}"))?;
        roots.add(cert).map_err(|e| format!("the NATS CA: {e}"))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn urls() -> Vec<String> {
        (0..3)
            .map(|i| {
                format!("tls://starling-nats-{i}.starling-nats-headless.starling-system.svc:4222")
            })
            .collect()
    }

    #[test]
    fn the_servers_names_are_their_hosts_and_their_domain() {
        assert_eq!(
            server_names(&urls()),
            [
                "*.starling-nats-headless.starling-system.svc",
                "starling-nats-0.starling-nats-headless.starling-system.svc",
                "starling-nats-1.starling-nats-headless.starling-system.svc",
                "starling-nats-2.starling-nats-headless.starling-system.svc",
            ]
        );
        assert_eq!(
            server_names(&[
                "nats://user:pw@nats.example.com:4222".to_owned(),
                "tls://10.0.0.7:4222".to_owned(),
                "tls://[::1]:4222".to_owned(),
                "nats://nats:4222".to_owned(),
                "nats://a.b:4222".to_owned(),
            ]),
            [
                "*.example.com",
                "10.0.0.7",
                "::1",
                "a.b",
                "nats",
                "nats.example.com"
            ]
        );
        assert!(server_names(&[]).is_empty());
    }

    #[test]
    fn the_servers_certificate_is_issued_once_and_again_only_when_it_must() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ca = certs::issue_named_ca("Starling NATS CA test", now).unwrap();
        let ca_secret = opaque_secret(
            "n-ca",
            "ns",
            &[(CA_CERT_KEY, &ca.cert_pem), (CA_KEY_KEY, &ca.key_pem)],
        );
        assert_eq!(ca_of(&ca_secret, "n-ca").unwrap(), ca);
        assert!(server_needs_issuing(None, &ca, &urls(), now));
        let leaf = issue_server(&ca, &urls(), now).unwrap();
        let s = server_secret("n-tls", "ns", &leaf);
        assert!(!server_needs_issuing(Some(&s), &ca, &urls(), now));
        // A fourth server: its host is named too (the wildcard serves it meanwhile).
        let mut more = urls();
        more.push("tls://starling-nats-3.starling-nats-headless.starling-system.svc:4222".into());
        assert!(server_needs_issuing(Some(&s), &ca, &more, now));
        // Near its end, or under another CA: issued again.
        let late =
            now + jiff::SignedDuration::from_hours(24 * i64::from(SERVER_VALIDITY_DAYS - 10));
        assert!(server_needs_issuing(Some(&s), &ca, &urls(), late));
        let other = certs::issue_named_ca("other", now).unwrap();
        assert!(server_needs_issuing(Some(&s), &other, &urls(), now));
        // The brokers' Secret holds the CA certificate and nothing else.
        let client = client_secret("n-client-tls", "ns", &ca);
        let data = client.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [CA_CERT_KEY]);
        assert_eq!(data[CA_CERT_KEY].0, ca.cert_pem.as_bytes());
        assert!(client_config(&ca.cert_pem).is_ok());
        // An unusable CA Secret is refused naming keys, never values.
        let mut broken = ca_secret.clone();
        broken.data.as_mut().unwrap().remove(CA_KEY_KEY);
        let e = ca_of(&broken, "n-ca").unwrap_err().to_string();
        assert!(e.contains("ca.key") && !e.contains("BEGIN"), "{e}");
        let mut mismatched = ca_secret;
        mismatched.data.as_mut().unwrap().insert(
            CA_KEY_KEY.to_owned(),
            ByteString(other.key_pem.clone().into_bytes()),
        );
        let e = ca_of(&mismatched, "n-ca").unwrap_err().to_string();
        assert!(
            e.contains("not one key pair") && !e.contains("BEGIN"),
            "{e}"
        );
    }
}
