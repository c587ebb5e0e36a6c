//! `--dev-tls DIR`: a local CA and a server certificate for trying TLS and WSS on one machine.
//!
//! At start the broker makes, or reuses, four files in DIR: `ca.pem` (import it into a browser or
//! pass it to `mosquitto_sub --cafile`), `ca-key.pem`, `server.pem` and `server-key.pem` (keys
//! mode 0600). The server certificate names `localhost`, `127.0.0.1`, `::1` and any configured
//! names. Files already there are reused when the server certificate chains to `ca.pem`, is valid
//! for at least another day and names every wanted host; otherwise a new server certificate is
//! issued by the existing CA (so a browser that trusts it keeps trusting), and only when that CA
//! is unusable is a new CA made. Certificates are ECDSA P-256, made with rcgen.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

/// File name of the CA certificate.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA key.
pub const CA_KEY: &str = "ca-key.pem";
/// File name of the server certificate.
pub const SERVER_CERT: &str = "server.pem";
/// File name of the server key.
pub const SERVER_KEY: &str = "server-key.pem";

/// How long a new CA is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// How long a new server certificate is valid (below the 398 days browsers accept).
const SERVER_VALIDITY: time::Duration = time::Duration::days(397);
/// A server certificate expiring sooner than this is replaced.
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// What can go wrong making or reading the dev certificates.
#[derive(Debug, thiserror::Error)]
pub enum DevTlsError {
    /// A file or the directory could not be read or written.
    #[error("dev tls: {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// rcgen refused to make a certificate.
    #[error("dev tls: cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A configured name is neither a DNS name nor an IP address.
    #[error("dev tls: {0:?} is not a valid host name")]
    BadName(String),
    /// A freshly issued certificate did not verify (should not happen).
    #[error("dev tls: the new certificate does not verify: {0}")]
    Verify(String),
}

/// The files of a dev CA and its server certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTls {
    /// `DIR/ca.pem`.
    pub ca_cert: PathBuf,
    /// `DIR/server.pem`.
    pub cert: PathBuf,
    /// `DIR/server-key.pem`.
    pub key: PathBuf,
    /// What this start did: reused everything, issued a server certificate, or made a new CA.
    pub outcome: DevTlsOutcome,
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevTlsOutcome {
    /// The files were valid and are used as they are.
    Reused,
    /// A new server certificate from the existing CA.
    NewServerCert,
    /// A new CA and server certificate.
    NewCa,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DevTlsError + '_ {
    move |source| DevTlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The host names the server certificate must name: the defaults plus `extra`.
fn wanted_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for n in extra {
        let n = n.trim();
        if !n.is_empty() && !names.iter().any(|m| m.eq_ignore_ascii_case(n)) {
            names.push(n.to_owned());
        }
    }
    names
}

/// Makes or reuses the dev CA and server certificate in `dir` (created when missing).
pub fn ensure(dir: &Path, extra_names: &[String]) -> Result<DevTls, DevTlsError> {
    let names = wanted_names(extra_names);
    for n in &names {
        if ServerName::try_from(n.as_str()).is_err() {
            return Err(DevTlsError::BadName(n.clone()));
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let paths = DevTls {
        ca_cert: dir.join(CA_CERT),
        cert: dir.join(SERVER_CERT),
        key: dir.join(SERVER_KEY),
        outcome: DevTlsOutcome::Reused,
    };
    let ca_key_path = dir.join(CA_KEY);

    if server_cert_valid(&paths, &names) {
        return Ok(paths);
    }
    // Reuse the CA when its files are there and its key signs certificates that chain to it.
    let ca_key = fs::read_to_string(&ca_key_path)
        .ok()
        .and_then(|pem| KeyPair::from_pem(&pem).ok());
    if let Some(ca_key) = ca_key.filter(|_| paths.ca_cert.exists()) {
        issue_server_cert(&paths, &ca_key, &names)?;
        if server_cert_valid(&paths, &names) {
            return Ok(DevTls {
                outcome: DevTlsOutcome::NewServerCert,
                ..paths
            });
        }
    }
    let ca_key = KeyPair::generate()?;
    let ca = ca_params().self_signed(&ca_key)?;
    write_file(&paths.ca_cert, ca.pem().as_bytes(), false)?;
    write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), true)?;
    issue_server_cert(&paths, &ca_key, &names)?;
    if !server_cert_valid(&paths, &names) {
        return Err(DevTlsError::Verify(format!(
            "{} does not chain to {}",
            paths.cert.display(),
            paths.ca_cert.display()
        )));
    }
    Ok(DevTls {
        outcome: DevTlsOutcome::NewCa,
        ..paths
    })
}

/// The CA's parameters. They are the same at every start, so a server certificate issued with
/// the stored CA key chains to the stored CA certificate (same subject, same key identifier).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Starling");
    dn.push(DnType::CommonName, "Starling development CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    params
}

fn issue_server_cert(
    paths: &DevTls,
    ca_key: &KeyPair,
    names: &[String],
) -> Result<(), DevTlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Starling");
    dn.push(DnType::CommonName, "Starling development server");
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| DevTlsError::BadName(n.clone())),
        })
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + SERVER_VALIDITY;
    let key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), true)?;
    write_file(&paths.cert, cert.pem().as_bytes(), false)?;
    Ok(())
}

/// Whether `server.pem` chains to `ca.pem`, is valid a day from now, serves TLS, and names every
/// wanted host; and `server-key.pem` is its key.
fn server_cert_valid(paths: &DevTls, names: &[String]) -> bool {
    let load =
        |p: &Path| -> Option<CertificateDer<'static>> { CertificateDer::from_pem_file(p).ok() };
    let (Some(ca), Some(leaf)) = (load(&paths.ca_cert), load(&paths.cert)) else {
        return false;
    };
    let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca) else {
        return false;
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(&leaf) else {
        return false;
    };
    let at = SystemTime::now() + RENEW_BEFORE;
    let Ok(at) = at.duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    let anchors = [anchor];
    let chained = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            UnixTime::since_unix_epoch(at),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .is_ok();
    if !chained {
        return false;
    }
    let names_ok = names.iter().all(|n| {
        ServerName::try_from(n.as_str())
            .map(|sn| end_entity.verify_is_valid_for_subject_name(&sn).is_ok())
            .unwrap_or(false)
    });
    names_ok
        && super::tls::load_certified_key(&paths.cert, &paths.key, &super::tls::provider()).is_ok()
}

/// Writes a file through a temporary name and a rename, so a reader never sees half a file;
/// keys are created with mode 0600.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), DevTlsError> {
    let tmp = path.with_extension("pem.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_makes_a_ca_and_a_server_cert_then_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &["broker.test".to_owned()]).unwrap();
        assert_eq!(first.outcome, DevTlsOutcome::NewCa);
        let ca = fs::read(&first.ca_cert).unwrap();
        let cert = fs::read(&first.cert).unwrap();

        let second = ensure(dir.path(), &["broker.test".to_owned()]).unwrap();
        assert_eq!(second.outcome, DevTlsOutcome::Reused);
        assert_eq!(fs::read(&second.ca_cert).unwrap(), ca);
        assert_eq!(fs::read(&second.cert).unwrap(), cert);
    }

    #[test]
    fn a_new_name_gets_a_new_server_cert_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &[]).unwrap();
        let ca = fs::read(&first.ca_cert).unwrap();
        let cert = fs::read(&first.cert).unwrap();

        let second = ensure(dir.path(), &["mqtt.example.com".to_owned()]).unwrap();
        assert_eq!(second.outcome, DevTlsOutcome::NewServerCert);
        assert_eq!(fs::read(&second.ca_cert).unwrap(), ca, "the CA is kept");
        assert_ne!(fs::read(&second.cert).unwrap(), cert);
        assert!(server_cert_valid(
            &second,
            &wanted_names(&["mqtt.example.com".to_owned()])
        ));
    }

    #[test]
    fn a_damaged_ca_key_makes_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &[]).unwrap();
        let ca = fs::read(&first.ca_cert).unwrap();
        fs::write(dir.path().join(CA_KEY), "not a key").unwrap();
        fs::write(&first.cert, "not a cert").unwrap();

        let second = ensure(dir.path(), &[]).unwrap();
        assert_eq!(second.outcome, DevTlsOutcome::NewCa);
        assert_ne!(fs::read(&second.ca_cert).unwrap(), ca);
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = ensure(dir.path(), &[]).unwrap();
        for key in [files.key.clone(), dir.path().join(CA_KEY)] {
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }

    #[test]
    fn an_invalid_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure(dir.path(), &["not a host".to_owned()]).unwrap_err();
        assert!(matches!(err, DevTlsError::BadName(_)), "{err}");
    }
}
