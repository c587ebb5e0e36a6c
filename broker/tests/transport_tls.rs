//! TLS listeners with real rustls clients on loopback: protocol versions, ALPN per listener kind,
//! client certificates, and the certificate reloaded when a Kubernetes Secret volume swaps its
//! `..data` symlink.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::transport::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use starling_broker::transport::{ListenerKind, Transport, TransportConfig, tls};

fn served_cert(
    stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn tls13_and_tls12_handshakes_carry_mqtt_bytes() {
    let pki = Pki::new();
    let cfg = TransportConfig::with_tls(ListenerKind::Mqtts, &pki.listener_config()).unwrap();
    let mut listener = TestListener::start(ListenerKind::Mqtts, cfg).await;

    const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    const TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    for (versions, expected) in [
        (TLS13_ONLY, rustls::ProtocolVersion::TLSv1_3),
        (TLS12_ONLY, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let opts = ClientOptions {
            versions,
            ..ClientOptions::trusting(&pki.files.ca_cert)
        };
        let mut stream = within(tls_connect(listener.addr, client_config(&opts)))
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        roundtrip(&mut stream, b"hello over tls").await;
        let (transport, info, ws) = listener.expect_accepted().await;
        assert_eq!(transport, Transport::Tls);
        assert!(ws.is_none());
        let info = info.unwrap();
        assert_eq!(info.version, Some(expected));
        assert_eq!(info.sni.as_deref(), Some("localhost"));
        assert_eq!(info.alpn, None, "a client offering no ALPN is accepted");
    }
}

#[tokio::test]
async fn mqtts_agrees_on_alpn_mqtt_and_refuses_other_alpn() {
    let pki = Pki::new();
    let cfg = TransportConfig::with_tls(ListenerKind::Mqtts, &pki.listener_config()).unwrap();
    let mut listener = TestListener::start(ListenerKind::Mqtts, cfg).await;

    let opts = ClientOptions {
        alpn: vec![b"mqtt"],
        ..ClientOptions::trusting(&pki.files.ca_cert)
    };
    let mut stream = within(tls_connect(listener.addr, client_config(&opts)))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"mqtt"[..]));
    roundtrip(&mut stream, b"alpn mqtt").await;
    let (_, info, _) = listener.expect_accepted().await;
    assert_eq!(info.unwrap().alpn.as_deref(), Some(&b"mqtt"[..]));

    let opts = ClientOptions {
        alpn: vec![b"h2", b"http/1.1"],
        ..ClientOptions::trusting(&pki.files.ca_cert)
    };
    let err = within(tls_connect(listener.addr, client_config(&opts)))
        .await
        .expect_err("a client offering only other protocols is refused");
    assert!(
        err.to_string().contains("NoApplicationProtocol"),
        "the client gets the no_application_protocol alert, got: {err}"
    );
    assert_eq!(listener.expect_refused().await, "tls_alpn");
}

#[tokio::test]
async fn wss_agrees_on_http11() {
    let pki = Pki::new();
    let cfg = TransportConfig::with_tls(ListenerKind::Wss, &pki.listener_config()).unwrap();
    let mut listener = TestListener::start(ListenerKind::Wss, cfg).await;

    let opts = ClientOptions {
        alpn: vec![b"h2", b"http/1.1"],
        ..ClientOptions::trusting(&pki.files.ca_cert)
    };
    let stream = within(tls_connect(listener.addr, client_config(&opts)))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut ws, response) = ws_connect(stream, "/mqtt", &["mqtt"]).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
    let (transport, info, _) = listener.expect_accepted().await;
    assert_eq!(transport, Transport::Wss);
    assert_eq!(info.unwrap().alpn.as_deref(), Some(&b"http/1.1"[..]));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn client_certificates_are_verified_against_the_client_ca() {
    let pki = Pki::new();
    let trusted = client_pki(pki.dir.path(), "trusted");
    let stranger = client_pki(pki.dir.path(), "stranger");
    let mut listener_cfg = pki.listener_config();
    listener_cfg.client_ca = Some(trusted.ca.clone());
    let cfg = TransportConfig::with_tls(ListenerKind::Mqtts, &listener_cfg).unwrap();
    let mut listener = TestListener::start(ListenerKind::Mqtts, cfg).await;

    // With a certificate from the client CA: accepted, and the certificate is reported.
    let opts = ClientOptions {
        client_cert: Some((&trusted.cert, &trusted.key)),
        ..ClientOptions::trusting(&pki.files.ca_cert)
    };
    let mut stream = within(tls_connect(listener.addr, client_config(&opts)))
        .await
        .unwrap();
    roundtrip(&mut stream, b"mutual").await;
    let (_, info, _) = listener.expect_accepted().await;
    let presented = CertificateDer::from_pem_file(&trusted.cert).unwrap();
    assert_eq!(info.unwrap().client_cert, Some(presented));

    // Without a certificate, and with one from another CA: refused. (In TLS 1.3 the client
    // learns of it on its first read, after its handshake finished.)
    for client_cert in [
        None,
        Some((stranger.cert.as_path(), stranger.key.as_path())),
    ] {
        let opts = ClientOptions {
            client_cert,
            ..ClientOptions::trusting(&pki.files.ca_cert)
        };
        if let Ok(mut stream) = within(tls_connect(listener.addr, client_config(&opts))).await {
            let mut byte = [0u8; 1];
            let read = within(tokio::io::AsyncReadExt::read(&mut stream, &mut byte)).await;
            assert!(
                !matches!(read, Ok(n) if n > 0),
                "no data on a refused connection"
            );
        }
        assert_eq!(listener.expect_refused().await, "tls_client_cert");
    }
}

#[tokio::test]
async fn optional_client_auth_accepts_a_client_without_a_certificate() {
    let pki = Pki::new();
    let trusted = client_pki(pki.dir.path(), "trusted");
    let mut listener_cfg = pki.listener_config();
    listener_cfg.client_ca = Some(trusted.ca.clone());
    listener_cfg.client_auth = tls::ClientAuth::Optional;
    let cfg = TransportConfig::with_tls(ListenerKind::Mqtts, &listener_cfg).unwrap();
    let mut listener = TestListener::start(ListenerKind::Mqtts, cfg).await;

    let opts = ClientOptions::trusting(&pki.files.ca_cert);
    let mut stream = within(tls_connect(listener.addr, client_config(&opts)))
        .await
        .unwrap();
    roundtrip(&mut stream, b"anonymous").await;
    let (_, info, _) = listener.expect_accepted().await;
    assert_eq!(info.unwrap().client_cert, None);
}

/// Lays out `dir` as the kubelet does for a Secret volume: `..<stamp>/` holds the files,
/// `..data` links to it, and `tls.crt`/`tls.key` link through `..data`.
fn secret_volume_version(dir: &Path, stamp: &str, cert: &Path, key: &Path) {
    let version = dir.join(stamp);
    fs::create_dir(&version).unwrap();
    fs::copy(cert, version.join("tls.crt")).unwrap();
    fs::copy(key, version.join("tls.key")).unwrap();
    // The atomic swap: a new symlink under a temporary name renamed over `..data`.
    let tmp = dir.join("..data_tmp");
    symlink(stamp, &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("tls.crt").exists() {
        symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    }
}

#[tokio::test]
async fn a_data_symlink_swap_serves_the_new_certificate_and_keeps_existing_connections() {
    let old = Pki::new();
    let new = Pki::new();
    let volume = tempfile::tempdir().unwrap();
    secret_volume_version(
        volume.path(),
        "..2026_11_27_01_00_00.1",
        &old.files.cert,
        &old.files.key,
    );

    let resolver = tls::CertResolver::load(
        &volume.path().join("tls.crt"),
        &volume.path().join("tls.key"),
    )
    .unwrap();
    // A long poll interval: the change must be seen through the directory watch.
    let _watch = resolver.watch(Duration::from_secs(3600));
    let mut generation = resolver.generation();
    let mut failures = resolver.failures();
    let listener_cfg = tls::TlsListenerConfig {
        resolver: resolver.clone(),
        client_ca: None,
        client_auth: tls::ClientAuth::Required,
        alpn: None,
    };
    let cfg = TransportConfig::with_tls(ListenerKind::Mqtts, &listener_cfg).unwrap();
    let mut listener = TestListener::start(ListenerKind::Mqtts, cfg).await;
    let opts = ClientOptions {
        cas: vec![&old.files.ca_cert, &new.files.ca_cert],
        ..ClientOptions::trusting(&old.files.ca_cert)
    };
    // A fresh client configuration per connection: a resumed TLS session shows no certificate.
    let client = || client_config(&opts);

    let mut existing = within(tls_connect(listener.addr, client())).await.unwrap();
    assert_eq!(served_cert(&existing), old.server_cert_der());
    roundtrip(&mut existing, b"before the swap").await;
    listener.expect_accepted().await;

    secret_volume_version(
        volume.path(),
        "..2026_11_27_02_00_00.2",
        &new.files.cert,
        &new.files.key,
    );
    within(generation.wait_for(|g| *g >= 1)).await.unwrap();

    let mut fresh = within(tls_connect(listener.addr, client())).await.unwrap();
    assert_eq!(
        served_cert(&fresh),
        new.server_cert_der(),
        "a new handshake gets the new certificate"
    );
    assert_ne!(old.server_cert_der(), new.server_cert_der());
    roundtrip(&mut fresh, b"after the swap").await;
    roundtrip(&mut existing, b"the old connection still works").await;

    // A broken version is refused and the good certificate stays.
    let broken = tempfile::tempdir().unwrap();
    fs::write(
        broken.path().join("bad.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    secret_volume_version(
        volume.path(),
        "..2026_11_27_03_00_00.3",
        &broken.path().join("bad.crt"),
        &new.files.key,
    );
    within(failures.wait_for(|f| *f >= 1)).await.unwrap();
    let mut after_bad = within(tls_connect(listener.addr, client())).await.unwrap();
    assert_eq!(served_cert(&after_bad), new.server_cert_der());
    roundtrip(&mut after_bad, b"still the good certificate").await;
    roundtrip(&mut existing, b"and the first connection").await;
    assert_eq!(*generation.borrow(), 1);
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused_at_load() {
    let a = Pki::new();
    let b = Pki::new();
    let err = tls::CertResolver::load(&a.files.cert, &b.files.key).unwrap_err();
    assert_eq!(err.metric_label(), "key_mismatch", "{err}");
    let err = tls::CertResolver::load(&a.dir.path().join("missing.pem"), &a.files.key).unwrap_err();
    assert_eq!(err.metric_label(), "read", "{err}");
}
