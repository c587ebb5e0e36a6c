//! For the transport tests: certificates, a listener that runs `transport::accept` on real
//! sockets and echoes MQTT packets back, and TLS and WebSocket clients.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use starling_broker::transport::{
    self, ListenerKind, TlsInfo, Transport, TransportConfig, dev_tls, tls, ws,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Every test step is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// Runs `f` under [`STEP`], failing the test on timeout.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

/// What the listener reports for each connection.
#[derive(Debug)]
pub enum Outcome {
    Accepted {
        transport: Transport,
        tls: Option<TlsInfo>,
        ws: Option<ws::WsHandshake>,
    },
    Refused(&'static str),
}

/// A listener on 127.0.0.1:0 that runs `transport::accept` per connection, reports the outcome
/// and echoes complete MQTT packets: all packets completed by one read go back in one flush; a
/// DISCONNECT makes it shut the connection down.
pub struct TestListener {
    pub addr: SocketAddr,
    pub outcomes: mpsc::UnboundedReceiver<Outcome>,
    task: JoinHandle<()>,
}

impl Drop for TestListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestListener {
    pub async fn start(kind: ListenerKind, cfg: TransportConfig) -> TestListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, outcomes) = mpsc::unbounded_channel();
        let cfg = Arc::new(cfg);
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let cfg = Arc::clone(&cfg);
                let tx = tx.clone();
                tasks.spawn(async move {
                    match transport::accept(tcp, kind, &cfg).await {
                        Ok(acc) => {
                            let _ = tx.send(Outcome::Accepted {
                                transport: acc.transport,
                                tls: acc.tls.clone(),
                                ws: acc.ws.clone(),
                            });
                            echo_packets(acc.io).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Outcome::Refused(e.metric_label()));
                        }
                    }
                });
            }
        });
        TestListener {
            addr,
            outcomes,
            task,
        }
    }

    pub async fn next_outcome(&mut self) -> Outcome {
        within(self.outcomes.recv())
            .await
            .expect("listener stopped")
    }

    pub async fn expect_refused(&mut self) -> &'static str {
        match self.next_outcome().await {
            Outcome::Refused(label) => label,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    pub async fn expect_accepted(
        &mut self,
    ) -> (Transport, Option<TlsInfo>, Option<ws::WsHandshake>) {
        match self.next_outcome().await {
            Outcome::Accepted { transport, tls, ws } => (transport, tls, ws),
            other => panic!("expected an accepted connection, got {other:?}"),
        }
    }
}

/// Length of the first complete MQTT packet in `buf`, if there is one.
pub fn packet_len(buf: &[u8]) -> Option<usize> {
    starling_codec::remaining_length::packet_len(buf)
}

/// An MQTT PUBLISH (QoS 0) to `topic` with `payload`, encoded.
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let body_len = 2 + topic.len() + payload.len();
    let mut out = vec![0x30];
    starling_codec::remaining_length::put(&mut out, body_len);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
    out
}

async fn echo_packets(mut io: Box<dyn transport::AsyncIo>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = io.shutdown().await;
                return;
            }
            Ok(_) => {}
        }
        let mut complete = 0;
        let mut disconnect = false;
        while let Some(n) = packet_len(&buf[complete..]) {
            if buf[complete] == 0xE0 {
                // DISCONNECT: the server ends the connection, as a broker does.
                disconnect = true;
                break;
            }
            complete += n;
        }
        if disconnect {
            let out = buf.split_to(complete);
            let _ = io.write_all(&out).await;
            let _ = io.shutdown().await;
            return;
        }
        if complete > 0 {
            let out = buf.split_to(complete);
            if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
                return;
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
    }
}

// === certificates ===

/// A dev CA and a server certificate for localhost in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub files: dev_tls::DevTls,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let files = dev_tls::ensure(dir.path(), &[]).unwrap();
        Pki { dir, files }
    }

    pub fn resolver(&self) -> Arc<tls::CertResolver> {
        tls::CertResolver::load(&self.files.cert, &self.files.key).unwrap()
    }

    pub fn listener_config(&self) -> tls::TlsListenerConfig {
        tls::TlsListenerConfig {
            resolver: self.resolver(),
            client_ca: None,
            client_auth: tls::ClientAuth::Required,
            alpn: None,
        }
    }

    pub fn server_cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&self.files.cert).unwrap()
    }
}

/// A CA for client certificates and one client certificate it issued, as PEM files.
pub struct ClientPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn client_pki(dir: &Path, name: &str) -> ClientPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} client CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "device-1");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();

    let out = ClientPki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-client.pem")),
        key: dir.join(format!("{name}-client-key.pem")),
    };
    std::fs::write(&out.ca, ca.pem()).unwrap();
    std::fs::write(&out.cert, cert.pem()).unwrap();
    std::fs::write(&out.key, key.serialize_pem()).unwrap();
    out
}

// === clients ===

pub struct ClientOptions<'a> {
    pub cas: Vec<&'a Path>,
    pub alpn: Vec<&'a [u8]>,
    pub versions: &'static [&'static rustls::SupportedProtocolVersion],
    pub client_cert: Option<(&'a Path, &'a Path)>,
}

impl<'a> ClientOptions<'a> {
    pub fn trusting(ca: &'a Path) -> Self {
        ClientOptions {
            cas: vec![ca],
            alpn: Vec::new(),
            versions: rustls::ALL_VERSIONS,
            client_cert: None,
        }
    }
}

pub fn client_config(opts: &ClientOptions<'_>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in &opts.cas {
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(opts.versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match opts.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = opts.alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Sends a PUBLISH and reads it back through the echo listener.
pub async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    payload: &[u8],
) {
    let packet = publish("t/echo", payload);
    within(io.write_all(&packet)).await.unwrap();
    within(io.flush()).await.unwrap();
    let mut back = vec![0; packet.len()];
    within(io.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, packet);
}

/// A WebSocket client handshake on `stream`, offering `protocols`.
pub async fn ws_connect<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    path: &str,
    protocols: &[&str],
) -> Result<
    (
        WebSocketStream<S>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut request = format!("ws://localhost{path}")
        .into_client_request()
        .unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols.join(", ")).unwrap(),
        );
    }
    within(tokio_tungstenite::client_async(request, stream)).await
}

/// Writes a raw HTTP request and returns the status code of the answer.
pub async fn raw_http_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    within(tcp.write_all(request)).await.unwrap();
    let mut answer = Vec::new();
    within(tcp.read_to_end(&mut answer)).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    status.parse().unwrap()
}

/// Asserts the buffer holds the expected bytes after any prefix consumed.
pub fn drain(buf: &mut BytesMut, n: usize) -> Vec<u8> {
    let out = buf[..n].to_vec();
    buf.advance(n);
    out
}
