//! Operator-issued certificates: one CA per `Broker` and a leaf for its host names, from rcgen
//! (ring). The CA lives long and stays put, so clients that pinned it keep trusting the broker;
//! the leaf is renewed `renewBeforeDays` before it expires, when its host names change, or when
//! the CA it was issued by is no longer the one in the CA Secret.

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use x509_parser::extensions::GeneralName;

/// How long an operator-issued CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;

/// Errors of issuing or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not generate a key or a certificate.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM certificate could not be read.
    #[error("reading a PEM certificate: {0}")]
    Parse(String),
    /// A time could not be represented.
    #[error("certificate validity out of range")]
    Time,
}

/// A CA certificate and its private key, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaMaterial {
    /// The CA certificate.
    pub cert_pem: String,
    /// The CA's private key (PKCS#8). Never logged.
    pub key_pem: String,
}

/// A serving certificate, its key, and the CA that issued it, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafMaterial {
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8). Never logged.
    pub key_pem: String,
    /// The issuing CA's certificate.
    pub ca_pem: String,
}

fn to_offset(t: Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|_| CertError::Time)
}

/// Issues a self-signed CA for the broker `name` (`namespace/name` in the subject).
pub fn issue_ca(subject: &str, now: Timestamp) -> Result<CaMaterial, CertError> {
    issue_named_ca(&format!("Starling broker CA {subject}"), now)
}

/// Issues a self-signed CA with the common name `common_name`.
pub fn issue_named_ca(common_name: &str, now: Timestamp) -> Result<CaMaterial, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Starling");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = to_offset(now - SignedDuration::from_hours(1))?;
    params.not_after = to_offset(now + SignedDuration::from_hours(24 * CA_VALIDITY_DAYS))?;
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a serving certificate for `hosts` (DNS names or IP addresses), signed by `ca`.
pub fn issue_leaf(
    ca: &CaMaterial,
    hosts: &[String],
    now: Timestamp,
    validity_days: i32,
) -> Result<LeafMaterial, CertError> {
    issue_leaf_for(
        ca,
        hosts,
        now,
        validity_days,
        &[ExtendedKeyUsagePurpose::ServerAuth],
    )
}

/// Issues a certificate for `hosts` signed by `ca`, for the extended key usages `usages` (a
/// server that also connects to its peers, as NATS routes do, needs client authentication too).
pub fn issue_leaf_for(
    ca: &CaMaterial,
    hosts: &[String],
    now: Timestamp,
    validity_days: i32,
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<LeafMaterial, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        hosts.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    params.not_before = to_offset(now - SignedDuration::from_hours(1))?;
    params.not_after = to_offset(now + SignedDuration::from_hours(24 * i64::from(validity_days)))?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(LeafMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca.cert_pem.clone(),
    })
}

/// What a PEM certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// End of validity.
    pub not_after: Timestamp,
    /// DNS and IP subject alternative names.
    pub names: Vec<String>,
}

/// Reads the first certificate of a PEM bundle.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, CertError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let not_after = Timestamp::from_second(cert.validity().not_after.timestamp())
        .map_err(|_| CertError::Time)?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => {
                        let a: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                        names.push(std::net::Ipv4Addr::from(a).to_string());
                    }
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(bytes);
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo { not_after, names })
}

/// Whether an operator-issued leaf must be issued again: it expires within `renew_before_days`,
/// it does not cover `hosts`, or it was not issued by the current CA.
pub fn leaf_needs_renewal(
    leaf: &LeafMaterial,
    ca: &CaMaterial,
    hosts: &[String],
    now: Timestamp,
    renew_before_days: i32,
) -> bool {
    if leaf.ca_pem != ca.cert_pem {
        return true;
    }
    let Ok(info) = inspect(&leaf.cert_pem) else {
        return true;
    };
    let renew_at = info.not_after - SignedDuration::from_hours(24 * i64::from(renew_before_days));
    if now >= renew_at {
        return true;
    }
    let mut want: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut have: Vec<&str> = info.names.iter().map(String::as_str).collect();
    want.sort_unstable();
    have.sort_unstable();
    want != have
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("valid")
    }

    fn hosts() -> Vec<String> {
        vec![
            "mqtt.example.com".to_owned(),
            "sensors.iot.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ]
    }

    #[test]
    fn an_issued_leaf_covers_its_hosts_until_its_validity_ends() {
        let ca = issue_ca("iot/sensors", now()).expect("ca");
        let leaf = issue_leaf(&ca, &hosts(), now(), 90).expect("leaf");
        let info = inspect(&leaf.cert_pem).expect("parses");
        assert_eq!(info.not_after, now() + SignedDuration::from_hours(24 * 90));
        assert_eq!(info.names, hosts());
        let ca_info = inspect(&ca.cert_pem).expect("ca parses");
        assert_eq!(
            ca_info.not_after,
            now() + SignedDuration::from_hours(24 * CA_VALIDITY_DAYS)
        );
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_leaf_verifies_against_its_ca_with_rustls() {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
        let ca = issue_ca("iot/sensors", now()).expect("ca");
        let leaf = issue_leaf(&ca, &hosts(), Timestamp::now(), 90).expect("leaf");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca der"))
            .expect("root added");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("verifier");
        let end = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("leaf der");
        let name = ServerName::try_from("mqtt.example.com").expect("name");
        verifier
            .verify_server_cert(&end, &[], &name, &[], UnixTime::now())
            .expect("leaf verifies");
        let other = ServerName::try_from("other.example.com").expect("name");
        assert!(
            verifier
                .verify_server_cert(&end, &[], &other, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn a_leaf_is_renewed_only_inside_the_renewal_window() {
        let ca = issue_ca("iot/sensors", now()).expect("ca");
        let leaf = issue_leaf(&ca, &hosts(), now(), 90).expect("leaf");
        assert!(!leaf_needs_renewal(&leaf, &ca, &hosts(), now(), 30));
        let day59 = now() + SignedDuration::from_hours(24 * 59);
        assert!(!leaf_needs_renewal(&leaf, &ca, &hosts(), day59, 30));
        let day60 = now() + SignedDuration::from_hours(24 * 60);
        assert!(leaf_needs_renewal(&leaf, &ca, &hosts(), day60, 30));
    }

    #[test]
    fn a_leaf_is_renewed_when_hosts_or_ca_change() {
        let ca = issue_ca("iot/sensors", now()).expect("ca");
        let leaf = issue_leaf(&ca, &hosts(), now(), 90).expect("leaf");
        let mut more = hosts();
        more.push("mqtt2.example.com".to_owned());
        assert!(leaf_needs_renewal(&leaf, &ca, &more, now(), 30));
        let other_ca = issue_ca("iot/sensors", now()).expect("ca");
        assert!(leaf_needs_renewal(&leaf, &other_ca, &hosts(), now(), 30));
    }

    #[test]
    fn garbage_is_a_parse_error_not_a_panic() {
        assert!(matches!(
            inspect("not a certificate"),
            Err(CertError::Parse(_))
        ));
    }
}
