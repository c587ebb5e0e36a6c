//! MQTT over WebSockets (RFC 6455, MQTT 5.0 section 6): the server's opening handshake and
//! [`WsStream`], which turns binary messages back into the byte stream MQTT is framed on.
//!
//! The handshake is read here, not by tungstenite, so every refusal is a proper HTTP answer and
//! every limit is ours: the request head is read into one buffer bounded by
//! [`WsConfig::max_header_bytes`] and [`WsConfig::max_headers`] (431 beyond), any request path is
//! accepted, the `mqtt` subprotocol is selected (or `mqttv3.1`), a request without a subprotocol
//! is accepted unless [`WsConfig::require_subprotocol`], and one that offers only other
//! subprotocols gets 400 (Chromium aborts a connection whose offered subprotocol the server did
//! not select, so selecting nothing would fail later and less clearly). The caller bounds the
//! whole handshake with a timeout.
//!
//! After the handshake, tungstenite frames the connection. [`WsStream`] reads binary messages as
//! one byte stream: an MQTT packet may span frames and a frame may carry several packets
//! [MQTT-6.0.0-2] [MQTT-6.0.0-3]. A text frame closes the connection with 1003
//! [MQTT-6.0.0-1]; a frame or message above the limits with 1009; a protocol violation with 1002.
//! Pings are answered by tungstenite. Writes are gathered and each flush sends them as one binary
//! message.
//!
//! The end follows RFC 6455 section 7.1: `shutdown` sends the close frame with the code
//! [`WsStream::set_ending`] chose (1000 by default), reads go on until the client's close frame
//! (and return end of stream then), and only a `shutdown` after that closes the TCP connection,
//! the server first. [`super::close::close`] does exactly that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsProtoError, Message};

use super::Ending;

/// The subprotocols we speak, in order of preference.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Limits and options of a WebSocket listener.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Refuse (400) a handshake that offers no subprotocol. Off by default, for curl and old
    /// clients.
    pub require_subprotocol: bool,
    /// Largest request head (request line and headers) in bytes; beyond it the answer is 431.
    pub max_header_bytes: usize,
    /// Most header lines in the request head; beyond it the answer is 431.
    pub max_headers: usize,
    /// Largest frame payload accepted; a larger frame closes the connection with 1009.
    pub max_frame_size: usize,
    /// Largest message (all frames of one message) accepted; beyond it: close 1009.
    pub max_message_size: usize,
    /// Bytes written are sent as one binary message per flush, or earlier once this many are
    /// gathered.
    pub max_write_message: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            require_subprotocol: false,
            max_header_bytes: 8 * 1024,
            max_headers: 64,
            max_frame_size: 1024 * 1024,
            max_message_size: 1024 * 1024,
            max_write_message: 64 * 1024,
        }
    }
}

impl WsConfig {
    fn tungstenite(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            // The read buffer grows as needed; start small, idle connections are the common case.
            .read_buffer_size(4 * 1024)
            .write_buffer_size(16 * 1024)
            // One outgoing message plus the frames tungstenite queues itself (pong, close).
            .max_write_buffer_size(16 * 1024 + self.max_write_message.max(1) * 2 + 1024)
            .max_frame_size(Some(self.max_frame_size))
            .max_message_size(Some(self.max_message_size))
    }
}

/// Why a WebSocket opening handshake was refused. Each refusal that can still be answered gets
/// an HTTP response first.
#[derive(Debug, thiserror::Error)]
pub enum WsHandshakeError {
    /// The socket failed or closed during the handshake.
    #[error("socket error during the websocket handshake: {0}")]
    Io(#[from] io::Error),
    /// The peer closed before sending a complete request head.
    #[error("connection closed during the websocket handshake")]
    Closed,
    /// The request head exceeds the size or header-count limit (431).
    #[error("request head larger than the limit")]
    HeaderTooLarge,
    /// Not parseable as HTTP/1.1 (400).
    #[error("malformed http request: {0}")]
    Malformed(&'static str),
    /// Not a WebSocket upgrade: no `Upgrade: websocket` or `Connection: upgrade` (400).
    #[error("not a websocket upgrade request")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` other than 13 (426).
    #[error("unsupported websocket version")]
    Version,
    /// Subprotocols offered, none of them MQTT; or none offered when one is required (400).
    #[error("no acceptable websocket subprotocol (offered: {offered:?})")]
    Subprotocol {
        /// What the client offered, truncated.
        offered: String,
    },
}

impl WsHandshakeError {
    /// A short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            WsHandshakeError::Io(_) => "ws_io",
            WsHandshakeError::Closed => "ws_closed",
            WsHandshakeError::HeaderTooLarge => "ws_header_too_large",
            WsHandshakeError::Malformed(_) => "ws_malformed",
            WsHandshakeError::NotUpgrade => "ws_not_upgrade",
            WsHandshakeError::Version => "ws_version",
            WsHandshakeError::Subprotocol { .. } => "ws_subprotocol",
        }
    }
}

/// What the handshake learned, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsHandshake {
    /// The request target, e.g. `/mqtt` (truncated to 256 bytes).
    pub path: String,
    /// The subprotocol selected, if any.
    pub subprotocol: Option<&'static str>,
}

/// A parsed upgrade request, or the reason to refuse it.
struct Upgrade {
    key: String,
    path: String,
    subprotocol: Option<&'static str>,
}

fn header_tokens<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn check_request(
    req: &httparse::Request<'_, '_>,
    cfg: &WsConfig,
) -> Result<Upgrade, WsHandshakeError> {
    // RFC 6455 section 4.2.1: a GET over HTTP/1.1 or higher.
    if req.method != Some("GET") {
        return Err(WsHandshakeError::Malformed("method is not GET"));
    }
    if req.version != Some(1) {
        return Err(WsHandshakeError::Malformed("http version is not 1.1"));
    }
    let headers = &*req.headers;
    if !header_tokens(headers, "upgrade").any(|t| t.eq_ignore_ascii_case("websocket"))
        || !header_tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(WsHandshakeError::NotUpgrade);
    }
    if header_tokens(headers, "sec-websocket-version").next() != Some("13") {
        return Err(WsHandshakeError::Version);
    }
    let key = header_tokens(headers, "sec-websocket-key")
        .next()
        .filter(|k| k.len() == 24)
        .ok_or(WsHandshakeError::Malformed(
            "missing or malformed Sec-WebSocket-Key",
        ))?
        .to_owned();
    let offered: Vec<&str> = header_tokens(headers, "sec-websocket-protocol").collect();
    let subprotocol = SUBPROTOCOLS
        .iter()
        .copied()
        .find(|ours| offered.iter().any(|o| o.eq_ignore_ascii_case(ours)));
    if subprotocol.is_none() && (!offered.is_empty() || cfg.require_subprotocol) {
        return Err(WsHandshakeError::Subprotocol {
            offered: truncate(&offered.join(","), 64),
        });
    }
    Ok(Upgrade {
        key,
        path: truncate(req.path.unwrap_or("/"), 256),
        subprotocol,
    })
}

fn refusal(err: &WsHandshakeError) -> Option<String> {
    let (status, extra, body) = match err {
        WsHandshakeError::Io(_) | WsHandshakeError::Closed => return None,
        WsHandshakeError::HeaderTooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "request header too large",
        ),
        WsHandshakeError::Malformed(why) => ("400 Bad Request", "", *why),
        WsHandshakeError::NotUpgrade => (
            "400 Bad Request",
            "",
            "this endpoint speaks MQTT over WebSocket only",
        ),
        WsHandshakeError::Version => (
            "426 Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
            "unsupported websocket version",
        ),
        WsHandshakeError::Subprotocol { .. } => {
            ("400 Bad Request", "", "websocket subprotocol must be mqtt")
        }
    };
    Some(format!(
        "HTTP/1.1 {status}\r\n{extra}Connection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    ))
}

/// Runs the server side of the opening handshake on `stream`; `already_read` holds bytes of the
/// request that were read before (the byte a wss listener peeked at). Refusals get their HTTP
/// response before the error is returned. The caller bounds the time this takes.
pub async fn accept<S>(
    mut stream: S,
    already_read: Bytes,
    cfg: &WsConfig,
) -> Result<(WsStream<S>, WsHandshake), WsHandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024.min(cfg.max_header_bytes).max(already_read.len()));
    buf.extend_from_slice(&already_read);
    let parsed = loop {
        let mut headers = vec![httparse::EMPTY_HEADER; cfg.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        let outcome = match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => Some(check_request(&req, cfg).map(|u| (u, len))),
            Ok(httparse::Status::Partial) if buf.len() >= cfg.max_header_bytes => {
                Some(Err(WsHandshakeError::HeaderTooLarge))
            }
            Ok(httparse::Status::Partial) => None,
            Err(httparse::Error::TooManyHeaders) => Some(Err(WsHandshakeError::HeaderTooLarge)),
            Err(_) => Some(Err(WsHandshakeError::Malformed("not an http request"))),
        };
        match outcome {
            Some(Ok((upgrade, len))) if len <= cfg.max_header_bytes => break (upgrade, len),
            Some(Ok(_)) => {
                return Err(refuse(&mut stream, WsHandshakeError::HeaderTooLarge).await);
            }
            Some(Err(e)) => return Err(refuse(&mut stream, e).await),
            None => {}
        }
        let room = cfg.max_header_bytes - buf.len();
        buf.reserve(room.min(4096));
        let mut limited = (&mut stream).take(room as u64);
        if limited.read_buf(&mut buf).await? == 0 {
            return Err(WsHandshakeError::Closed);
        }
    };
    let (upgrade, head_len) = parsed;
    let mut response = String::with_capacity(192);
    response.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    response.push_str(&derive_accept_key(upgrade.key.as_bytes()));
    response.push_str("\r\n");
    if let Some(p) = upgrade.subprotocol {
        // RFC 6455 section 4.2.2: the selected subprotocol, one of those offered.
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(p);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    // Frames the client sent right behind its request head.
    let rest = buf.split_off(head_len).to_vec();
    let ws =
        WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(cfg.tungstenite()))
            .await;
    Ok((
        WsStream::from_websocket(ws, cfg.max_write_message),
        WsHandshake {
            path: upgrade.path,
            subprotocol: upgrade.subprotocol,
        },
    ))
}

/// How long, and for how many bytes, a refused connection is read before it is closed.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    err: WsHandshakeError,
) -> WsHandshakeError {
    if let Some(response) = refusal(&err) {
        // Best effort: the peer may be gone already, and the error to report is the refusal.
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Read what the client still sends for a moment before closing: closing a socket with
        // unread input resets it, and the client would lose the answer.
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        let _ = tokio::time::timeout(LINGER, async {
            while drained < LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }
    err
}

// === impl WsStream ===

enum State {
    Open,
    /// A close frame must go out before the read error is returned.
    Failing {
        frame: Option<CloseFrame>,
        error: Option<io::Error>,
    },
    /// The close handshake is done or the peer is gone: reads give end of stream.
    Closed,
}

/// The close code for an ending.
fn close_code(ending: Ending) -> CloseCode {
    CloseCode::from(ending.close_code())
}

/// A WebSocket connection as a byte stream (`AsyncRead + AsyncWrite`).
///
/// Reads return the payload of binary messages in order, regardless of frame boundaries. Writes
/// are gathered; `flush` sends them as one binary message. `shutdown` sends the close frame
/// (1000 unless [`WsStream::set_ending`] said otherwise), and closes the TCP connection once the
/// client's close frame is in.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    read: Bytes,
    /// Bytes written since the last flush.
    write: BytesMut,
    max_write_message: usize,
    state: State,
    close_sent: bool,
    /// The client's close frame is in, or the connection is gone: the TCP connection may close.
    peer_closed: bool,
    /// The code of the close frame `shutdown` sends.
    ending: CloseCode,
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("buffered_read", &self.read.len())
            .field("buffered_write", &self.write.len())
            .finish_non_exhaustive()
    }
}

fn close_frame(code: CloseCode, reason: &'static str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

fn into_io(e: WsProtoError) -> io::Error {
    match e {
        WsProtoError::Io(e) => e,
        WsProtoError::ConnectionClosed | WsProtoError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps an established WebSocket (server or client role) as a byte stream; writes are sent
    /// as one binary message per flush, or earlier when `max_write_message` bytes are gathered.
    pub fn from_websocket(inner: WebSocketStream<S>, max_write_message: usize) -> Self {
        WsStream {
            inner,
            read: Bytes::new(),
            write: BytesMut::new(),
            max_write_message: max_write_message.max(1),
            state: State::Open,
            close_sent: false,
            peer_closed: false,
            ending: CloseCode::Normal,
        }
    }

    /// The close code `shutdown` sends; no effect once a close frame went out.
    pub fn set_ending(&mut self, ending: Ending) {
        self.ending = close_code(ending);
    }

    /// The transport below the WebSocket framing.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    fn fail(&mut self, code: CloseCode, reason: &'static str, error: io::Error) {
        self.state = State::Failing {
            frame: close_frame(code, reason),
            error: Some(error),
        };
    }

    /// Sends the gathered bytes as one binary message and flushes.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write.is_empty() {
            ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(into_io)?;
            let payload = self.write.split().freeze();
            Pin::new(&mut self.inner)
                .start_send(Message::Binary(payload))
                .map_err(into_io)?;
        }
        Pin::new(&mut self.inner).poll_flush(cx).map_err(into_io)
    }

    /// Queues a close frame (once) and flushes it.
    fn poll_send_close(
        &mut self,
        cx: &mut Context<'_>,
        frame: Option<CloseFrame>,
    ) -> Poll<io::Result<()>> {
        if !self.close_sent {
            ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(into_io)?;
            Pin::new(&mut self.inner)
                .start_send(Message::Close(frame))
                .map_err(into_io)?;
            self.close_sent = true;
        }
        Pin::new(&mut self.inner).poll_flush(cx).map_err(into_io)
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.read.is_empty() {
                let n = this.read.len().min(buf.remaining());
                buf.put_slice(&this.read[..n]);
                this.read.advance(n);
                if this.read.is_empty() {
                    // Release the message's buffer: an idle connection should hold none.
                    this.read = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            match &mut this.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Failing { frame, .. } => {
                    let frame = frame.clone();
                    // Best effort: the close frame may not get out when the peer is gone.
                    if ready!(this.poll_send_close(cx, frame)).is_err() {
                        this.peer_closed = true;
                    }
                    // Reads go on until the client's close frame (the linger reads them).
                    let err = match std::mem::replace(&mut this.state, State::Open) {
                        State::Failing { error: Some(e), .. } => e,
                        _ => io::Error::new(io::ErrorKind::InvalidData, "websocket failed"),
                    };
                    return Poll::Ready(Err(err));
                }
                State::Open => {}
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(payload))) => this.read = payload,
                // [MQTT-6.0.0-1] MQTT control packets are sent in binary data frames; a text
                // frame closes the connection.
                Some(Ok(Message::Text(_))) => this.fail(
                    CloseCode::Unsupported,
                    "binary frames only",
                    io::Error::new(io::ErrorKind::InvalidData, "websocket text frame"),
                ),
                // tungstenite queued the reply (unless the close was ours); the next poll flushes
                // it and ends the stream.
                Some(Ok(Message::Close(_))) => {
                    this.close_sent = true;
                    this.peer_closed = true;
                }
                // Pongs are queued by tungstenite and flushed on the next read or write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsProtoError::Capacity(e))) => this.fail(
                    CloseCode::Size,
                    "message too big",
                    io::Error::new(io::ErrorKind::InvalidData, e),
                ),
                Some(Err(WsProtoError::Protocol(e))) => this.fail(
                    CloseCode::Protocol,
                    "protocol error",
                    io::Error::new(io::ErrorKind::InvalidData, e),
                ),
                Some(Err(WsProtoError::Utf8(_))) => this.fail(
                    CloseCode::Invalid,
                    "invalid utf-8",
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "invalid utf-8 in a websocket frame",
                    ),
                ),
                Some(Err(e)) => {
                    this.state = State::Closed;
                    this.peer_closed = true;
                    return Poll::Ready(Err(into_io(e)));
                }
                None => {
                    this.state = State::Closed;
                    this.peer_closed = true;
                }
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.close_sent || !matches!(this.state, State::Open) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "websocket closed",
            )));
        }
        if this.write.len() >= this.max_write_message {
            ready!(this.poll_send_buffered(cx))?;
        }
        let n = data.len().min(this.max_write_message - this.write.len());
        this.write.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.close_sent || !matches!(this.state, State::Open) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "websocket closed",
            )));
        }
        if this.write.len() >= this.max_write_message {
            ready!(this.poll_send_buffered(cx))?;
        }
        let mut total = 0;
        for b in bufs {
            let room = this.max_write_message - this.write.len();
            if room == 0 {
                break;
            }
            let n = b.len().min(room);
            this.write.extend_from_slice(&b[..n]);
            total += n;
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send_buffered(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent && matches!(this.state, State::Open) {
            ready!(this.poll_send_buffered(cx))?;
            // RFC 6455 section 7.4.1: 1000 normal, 1001 going away, 1002 protocol error, 1008
            // policy violation, 1009 too big.
            ready!(this.poll_send_close(cx, close_frame(this.ending, "")))?;
        } else {
            // Already closing: finish flushing what is queued; the peer may be gone.
            let _ = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        }
        if !this.peer_closed {
            // RFC 6455 section 7.1.1: the server closes the TCP connection after the close
            // handshake; reads return end of stream once the client's close frame is in.
            return Poll::Ready(Ok(()));
        }
        Pin::new(this.inner.get_mut()).poll_shutdown(cx)
    }
}
