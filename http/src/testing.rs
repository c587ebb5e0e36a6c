//! Test support (feature `testing`, for the broker's and the api's tests): a minimal HTTP/1.1
//! client over a real TCP connection, so those tests do not each carry one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`http_get`] waits for a whole answer.
pub const WAIT: Duration = Duration::from_secs(10);

/// A minimal HTTP/1.1 GET on loopback (`Connection: close`): `(status, body)`. Panics when no
/// whole answer comes within [`WAIT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let status: u16 = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (status, body)
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("http answer in time")
}
