//! Transports below MQTT: TLS (rustls, reloadable certificates), WebSockets and the dev CA.
//!
//! Every transport ends as one byte stream (`AsyncRead + AsyncWrite`) that the connection task
//! reads MQTT packets from; the session and routing code never knows which transport it is on.
//!
//! # Contract for the accept loop
//!
//! A listener of kind [`ListenerKind`] builds one [`TransportConfig`] at start and, for every
//! accepted socket, spawns a task that calls [`accept`]. `accept` does everything between the TCP
//! accept and the first MQTT byte:
//!
//! | listener | what `accept` does                                                          |
//! |----------|------------------------------------------------------------------------------|
//! | `mqtt`   | sets `TCP_NODELAY`                                                            |
//! | `mqtts`  | TLS handshake (ALPN `mqtt` or none)                                          |
//! | `ws`     | WebSocket opening handshake (subprotocol `mqtt`/`mqttv3.1`)                  |
//! | `wss`    | TLS handshake (ALPN `http/1.1`), then by the first byte: `G` → WebSocket, `0x10` (CONNECT) → raw MQTT |
//!
//! The whole of it runs under [`TransportConfig::handshake_timeout`] and within size limits, so
//! nothing a client sends before its first MQTT packet can hold the task or memory for long. It
//! must run in the connection's own task, never in the accept loop itself, so one slow
//! handshake never delays another. The result is an [`Accepted`] whose `io` is a boxed
//! [`AsyncIo`]: read MQTT bytes from it, write packets to it and call `flush` once per batch (on
//! WebSockets each flush sends one binary message), and end it with [`close::close`], which says
//! why it ends (on WebSockets the close code), closes the write side and lingers until the client
//! closes too. The MQTT CONNECT timeout starts after `accept` returns.
//!
//! A refusal is a [`TransportError`]: `accept` has already answered the client where the
//! protocol allows (a TLS alert, an HTTP 400/426/431) and logged it at debug; the caller counts it
//! by [`TransportError::metric_label`] and drops it. Nothing in an error is secret.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

pub use close::Ending;

pub mod close;
pub mod config;
pub mod dev_tls;
pub mod tls;
pub mod ws;

/// A transport's byte stream, as the connection task sees it.
pub trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Says why the connection ends, before `shutdown`: a WebSocket sends it as the close
    /// frame's code. TCP and TLS have no such field and ignore it.
    fn set_ending(&mut self, ending: Ending) {
        let _ = ending;
    }
}

impl AsyncIo for TcpStream {}

impl AsyncIo for tokio::io::DuplexStream {}

impl<S: AsyncIo> AsyncIo for tokio_rustls::server::TlsStream<S> {}

impl<S: AsyncIo> AsyncIo for tokio_rustls::client::TlsStream<S> {}

impl<S: AsyncIo> AsyncIo for Rewind<S> {
    fn set_ending(&mut self, ending: Ending) {
        self.inner.set_ending(ending);
    }
}

impl<S: AsyncIo> AsyncIo for ws::WsStream<S> {
    fn set_ending(&mut self, ending: Ending) {
        ws::WsStream::set_ending(self, ending);
    }
}

impl AsyncIo for Box<dyn AsyncIo> {
    fn set_ending(&mut self, ending: Ending) {
        (**self).set_ending(ending);
    }
}

pub use crate::config::ListenerKind;

impl ListenerKind {
    /// Whether the listener needs a certificate.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Mqtts | ListenerKind::Wss)
    }

    /// Whether the listener speaks WebSockets.
    pub fn is_ws(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a connection actually runs on (a wss listener also takes raw MQTT over TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS.
    Tls,
    /// WebSockets over TCP.
    Ws,
    /// WebSockets over TLS.
    Wss,
}

impl Transport {
    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// How a listener's connections are set up; built once per listener.
#[derive(Clone)]
pub struct TransportConfig {
    /// The TLS acceptor (mqtts and wss listeners); its ALPN protocols match the listener kind.
    pub tls: Option<TlsAcceptor>,
    /// WebSocket options and limits (ws and wss listeners).
    pub ws: ws::WsConfig,
    /// Bound on everything before the first MQTT byte: TLS handshake, first byte, HTTP upgrade.
    pub handshake_timeout: Duration,
    /// Whether a WebSocket listener also accepts raw MQTT (first byte 0x10 instead of `G`).
    pub accept_raw_mqtt: bool,
}

/// The default bound on a transport handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("tls", &self.tls.is_some())
            .field("ws", &self.ws)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("accept_raw_mqtt", &self.accept_raw_mqtt)
            .finish()
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            tls: None,
            ws: ws::WsConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            accept_raw_mqtt: true,
        }
    }
}

impl TransportConfig {
    /// A plaintext listener (mqtt, ws) with default limits.
    pub fn plain() -> Self {
        TransportConfig::default()
    }

    /// A TLS listener of `kind` (ALPN protocols chosen by kind unless `tls.alpn` says otherwise).
    pub fn with_tls(
        kind: ListenerKind,
        tls: &tls::TlsListenerConfig,
    ) -> Result<Self, tls::TlsError> {
        Ok(TransportConfig {
            tls: Some(TlsAcceptor::from(tls::server_config(kind, tls)?)),
            ..TransportConfig::default()
        })
    }
}

/// What TLS negotiated, for logs and authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: Option<rustls::ProtocolVersion>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The verified client certificate (mTLS), if one was presented.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// A connection ready for MQTT.
pub struct Accepted {
    /// The byte stream MQTT packets are read from and written to.
    pub io: Box<dyn AsyncIo>,
    /// The client's address.
    pub remote: SocketAddr,
    /// The listener it came in on.
    pub listener: ListenerKind,
    /// What it runs on.
    pub transport: Transport,
    /// TLS details, on TLS transports.
    pub tls: Option<TlsInfo>,
    /// WebSocket details, on WebSocket transports.
    pub ws: Option<ws::WsHandshake>,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("remote", &self.remote)
            .field("listener", &self.listener)
            .field("transport", &self.transport)
            .field("tls", &self.tls)
            .field("ws", &self.ws)
            .finish_non_exhaustive()
    }
}

/// Why a connection was refused before MQTT began.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[source] io::Error),
    /// The TLS handshake failed (garbage, plain HTTP, no common protocol version or ALPN, a
    /// missing or untrusted client certificate).
    #[error("tls handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The WebSocket opening handshake was refused.
    #[error(transparent)]
    WebSocket(#[from] ws::WsHandshakeError),
    /// The handshake did not finish in time.
    #[error("handshake not finished within {0:?}")]
    Timeout(Duration),
    /// On a WebSocket listener, the first byte was neither `G` nor an MQTT CONNECT.
    #[error("unknown protocol (first byte 0x{0:02x})")]
    UnknownProtocol(u8),
    /// The client closed before sending anything after the TLS handshake.
    #[error("connection closed before the first byte")]
    ClosedEarly,
    /// A TLS listener was started without a TLS configuration.
    #[error("listener {0} has no tls configuration")]
    TlsNotConfigured(ListenerKind),
}

impl TransportError {
    /// A short stable label for metrics, e.g. `handshake_errors{reason="tls_alpn"}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TransportError::Io(_) => "io",
            TransportError::Tls(e) => match e
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
            {
                Some(rustls::Error::NoApplicationProtocol) => "tls_alpn",
                Some(
                    rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_),
                ) => "tls_client_cert",
                Some(
                    rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. },
                ) => "tls_invalid_message",
                Some(rustls::Error::PeerIncompatible(_)) => "tls_incompatible",
                _ => "tls_handshake",
            },
            TransportError::WebSocket(e) => e.metric_label(),
            TransportError::Timeout(_) => "handshake_timeout",
            TransportError::UnknownProtocol(_) => "unknown_protocol",
            TransportError::ClosedEarly => "closed_early",
            TransportError::TlsNotConfigured(_) => "tls_not_configured",
        }
    }
}

/// Sets up an accepted TCP connection of a `kind` listener: `TCP_NODELAY`, then the TLS and
/// WebSocket handshakes the kind needs, all within `cfg.handshake_timeout`.
pub async fn accept(
    tcp: TcpStream,
    kind: ListenerKind,
    cfg: &TransportConfig,
) -> Result<Accepted, TransportError> {
    let remote = tcp.peer_addr().map_err(TransportError::Io)?;
    // MQTT packets are small and latency matters: no Nagle delay.
    tcp.set_nodelay(true).map_err(TransportError::Io)?;
    accept_io(tcp, remote, kind, cfg).await
}

/// [`accept`] over any byte stream (tests run it over `tokio::io::duplex`).
pub async fn accept_io<S: AsyncIo>(
    stream: S,
    remote: SocketAddr,
    kind: ListenerKind,
    cfg: &TransportConfig,
) -> Result<Accepted, TransportError> {
    let result =
        match tokio::time::timeout(cfg.handshake_timeout, handshake(stream, remote, kind, cfg))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(cfg.handshake_timeout)),
        };
    if let Err(e) = &result {
        tracing::debug!(
            %remote,
            listener = kind.as_str(),
            reason = e.metric_label(),
            error = %e,
            "transport handshake refused"
        );
    }
    result
}

async fn handshake<S: AsyncIo>(
    stream: S,
    remote: SocketAddr,
    kind: ListenerKind,
    cfg: &TransportConfig,
) -> Result<Accepted, TransportError> {
    let accepted = |io: Box<dyn AsyncIo>, transport, tls, ws| Accepted {
        io,
        remote,
        listener: kind,
        transport,
        tls,
        ws,
    };
    match kind {
        ListenerKind::Mqtt => Ok(accepted(Box::new(stream), Transport::Tcp, None, None)),
        ListenerKind::Ws => {
            let (io, first) = sniff(stream, cfg).await?;
            match first {
                Sniffed::Mqtt => Ok(accepted(Box::new(io), Transport::Tcp, None, None)),
                Sniffed::Http => {
                    let (inner, prefix) = io.into_parts();
                    let (ws, info) = ws::accept(inner, prefix, &cfg.ws).await?;
                    Ok(accepted(Box::new(ws), Transport::Ws, None, Some(info)))
                }
            }
        }
        ListenerKind::Mqtts | ListenerKind::Wss => {
            let acceptor = cfg
                .tls
                .as_ref()
                .ok_or(TransportError::TlsNotConfigured(kind))?;
            let tls = acceptor.accept(stream).await.map_err(TransportError::Tls)?;
            let info = tls_info(tls.get_ref().1);
            if kind == ListenerKind::Mqtts {
                return Ok(accepted(Box::new(tls), Transport::Tls, Some(info), None));
            }
            let (io, first) = sniff(tls, cfg).await?;
            match first {
                Sniffed::Mqtt => Ok(accepted(Box::new(io), Transport::Tls, Some(info), None)),
                Sniffed::Http => {
                    let (inner, prefix) = io.into_parts();
                    let (ws, ws_info) = ws::accept(inner, prefix, &cfg.ws).await?;
                    Ok(accepted(
                        Box::new(ws),
                        Transport::Wss,
                        Some(info),
                        Some(ws_info),
                    ))
                }
            }
        }
    }
}

fn tls_info(conn: &rustls::ServerConnection) -> TlsInfo {
    TlsInfo {
        version: conn.protocol_version(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        sni: conn.server_name().map(str::to_owned),
        client_cert: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned()),
    }
}

enum Sniffed {
    Http,
    Mqtt,
}

/// Reads the first bytes of a WebSocket listener's connection: a letter starts an HTTP request
/// (`G` of the upgrade's GET), 0x10
/// an MQTT CONNECT [MQTT-3.1.0-1]. The bytes read are given back through [`Rewind`].
async fn sniff<S: AsyncIo>(
    mut stream: S,
    cfg: &TransportConfig,
) -> Result<(Rewind<S>, Sniffed), TransportError> {
    let mut first = BytesMut::with_capacity(1024.min(cfg.ws.max_header_bytes.max(1)));
    let n = stream
        .read_buf(&mut first)
        .await
        .map_err(TransportError::Io)?;
    if n == 0 {
        return Err(TransportError::ClosedEarly);
    }
    let kind = match first[0] {
        // `G` of GET; other methods get their HTTP refusal from the upgrade code.
        b'A'..=b'Z' => Sniffed::Http,
        0x10 if cfg.accept_raw_mqtt => Sniffed::Mqtt,
        other => return Err(TransportError::UnknownProtocol(other)),
    };
    Ok((Rewind::new(first.freeze(), stream), kind))
}

// === impl Rewind ===

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `prefix` is returned by reads before anything of `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    /// The stream and the bytes of the prefix not read yet.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.prefix)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Release the buffer the prefix was read into.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Loads the certificate files of TLS listeners and starts watching them; shared by every TLS
/// listener that names the same files.
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    poll: Duration,
) -> Result<(Arc<tls::CertResolver>, tls::CertWatcher), tls::TlsError> {
    let resolver = tls::CertResolver::load(cert, key)?;
    let watcher = resolver.watch(poll);
    Ok((resolver, watcher))
}
