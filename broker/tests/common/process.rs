//! The broker as a process of its own (the `starling-broker` binary of this package), for
//! tests that measure its memory: its resident set is then its alone, not the test's.
//! Included by those tests with `#[path]` beside `mod common;` (the api's tests share
//! `common` and have no broker binary).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A broker process on loopback ports; killed when dropped.
pub struct BrokerProcess {
    child: Child,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BrokerProcess {
    /// Starts the broker with `--auth none`, one MQTT listener and `config` (TOML, e.g. a
    /// `[limits]` table) as its configuration file.
    pub fn start(config: &str) -> BrokerProcess {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, format!("[log]\nformat = \"json\"\n{config}")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_starling-broker"))
            .args(["--config", path.to_str().unwrap()])
            .args(["--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,starling_broker::server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the broker binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads the JSON log for the bound addresses, then keeps draining it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let f = &v["fields"];
                if let Some(a) = f["addr"].as_str() {
                    let _ = tx.send(("mqtt", a.to_string()));
                }
                if let Some(a) = f["http_addr"].as_str() {
                    let _ = tx.send(("http", a.to_string()));
                }
            }
        });
        let (mut mqtt, mut http) = (None, None);
        while mqtt.is_none() || http.is_none() {
            let (kind, addr) = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the broker logs its listening addresses");
            let addr: SocketAddr = addr.parse().unwrap();
            match kind {
                "mqtt" => mqtt = Some(addr),
                _ => http = Some(addr),
            }
        }
        BrokerProcess {
            child,
            mqtt: mqtt.unwrap(),
            http: http.unwrap(),
            _dir: dir,
        }
    }

    /// Sends SIGTERM and waits up to `within` for the process to end; its exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
        let until = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .expect("the process can be waited for")
            {
                return status;
            }
            assert!(
                std::time::Instant::now() < until,
                "the broker still runs {within:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its resident set now, in bytes.
    pub fn rss(&self) -> usize {
        self.status_bytes("VmRSS:")
    }

    /// Its peak resident set since start or the last [`BrokerProcess::reset_peak`], in bytes.
    pub fn peak(&self) -> usize {
        self.status_bytes("VmHWM:")
    }

    /// Starts a new peak from the resident set now (`/proc/PID/clear_refs`, value 5).
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("the peak resident set can be reset");
    }

    fn status_bytes(&self, field: &str) -> usize {
        let pid = self.child.id();
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
        let kb: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }

    /// A v5 client over TCP (not connected yet).
    pub async fn raw(&self) -> crate::common::RawClient<tokio::net::TcpStream> {
        let s = tokio::net::TcpStream::connect(self.mqtt).await.unwrap();
        s.set_nodelay(true).unwrap();
        crate::common::RawClient::new(s, starling_codec::ProtocolVersion::V5)
    }

    /// A v5 client connected with clean start as `id`.
    pub async fn client(&self, id: &str) -> crate::common::RawClient<tokio::net::TcpStream> {
        let mut c = self.raw().await;
        let ack = c.connect(crate::common::connect_v5(id)).await;
        assert_eq!(ack.reason, starling_codec::ReasonCode::SUCCESS, "{ack:?}");
        c
    }

    pub async fn metrics(&self) -> String {
        crate::common::http_get(self.http, "/metrics").await.1
    }
}
