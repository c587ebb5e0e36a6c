//! The broker in-process with every listener kind, and real clients on each transport: rumqttc
//! (3.1.1 and 5) over TLS, WebSockets and WebSockets over TLS, `mosquitto_sub --cafile` over TLS,
//! messages crossing transports, the certificate swapped under a live session, and refused
//! handshakes counted in `/metrics`.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::transport::{ClientOptions, Pki, client_config, tls_connect, within};
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use starling_broker::config::{Config, ListenerConfig, ListenerKind};
use starling_broker::{RunningBroker, start};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const KINDS: [ListenerKind; 4] = [
    ListenerKind::Mqtt,
    ListenerKind::Mqtts,
    ListenerKind::Ws,
    ListenerKind::Wss,
];

struct TlsBroker {
    broker: RunningBroker,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// A broker with one listener of every kind on loopback port 0 and a dev CA.
async fn broker_with_every_listener() -> TlsBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    for kind in KINDS {
        config
            .listeners
            .push(ListenerConfig::new(kind, "127.0.0.1:0".parse().unwrap()));
    }
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.tls.dev_tls = Some(dir.path().join("dev-tls"));
    let broker = start(config).await.expect("broker starts");
    let ca = broker.tls.dev().expect("dev tls in use").ca_cert.clone();
    TlsBroker {
        broker,
        ca,
        _dir: dir,
    }
}

fn rustls_client(ca: &Path) -> Arc<ClientConfig> {
    client_config(&ClientOptions::trusting(ca))
}

/// rumqttc 3.1.1 options for `kind` against the broker.
fn v3_options(b: &TlsBroker, kind: ListenerKind, id: &str) -> rumqttc::MqttOptions {
    let port = b.broker.addr(kind).unwrap().port();
    let tls = || rumqttc::TlsConfiguration::Rustls(rustls_client(&b.ca));
    let (host, transport) = match kind {
        ListenerKind::Mqtt => ("127.0.0.1".to_owned(), rumqttc::Transport::Tcp),
        ListenerKind::Mqtts => (
            "localhost".to_owned(),
            rumqttc::Transport::tls_with_config(tls()),
        ),
        ListenerKind::Ws => (
            format!("ws://127.0.0.1:{port}/mqtt"),
            rumqttc::Transport::Ws,
        ),
        ListenerKind::Wss => (
            format!("wss://localhost:{port}/mqtt"),
            rumqttc::Transport::wss_with_config(tls()),
        ),
    };
    let mut o = rumqttc::MqttOptions::new(id, host, port);
    o.set_transport(transport);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

fn v5_options(b: &TlsBroker, kind: ListenerKind, id: &str) -> rumqttc::v5::MqttOptions {
    let port = b.broker.addr(kind).unwrap().port();
    let tls = || rumqttc::TlsConfiguration::Rustls(rustls_client(&b.ca));
    let (host, transport) = match kind {
        ListenerKind::Mqtt => ("127.0.0.1".to_owned(), rumqttc::Transport::Tcp),
        ListenerKind::Mqtts => (
            "localhost".to_owned(),
            rumqttc::Transport::tls_with_config(tls()),
        ),
        ListenerKind::Ws => (
            format!("ws://127.0.0.1:{port}/mqtt"),
            rumqttc::Transport::Ws,
        ),
        ListenerKind::Wss => (
            format!("wss://localhost:{port}/mqtt"),
            rumqttc::Transport::wss_with_config(tls()),
        ),
    };
    let mut o = rumqttc::v5::MqttOptions::new(id, host, port);
    o.set_transport(transport);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// What a rumqttc client's event loop saw.
#[derive(Debug)]
enum Seen {
    ConnAck,
    SubAck,
    Publish(String, Vec<u8>),
    Error(String),
}

struct V3 {
    client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for V3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl V3 {
    async fn connect(opts: rumqttc::MqttOptions) -> V3 {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let seen = match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => Seen::ConnAck,
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => Seen::SubAck,
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        Seen::Publish(p.topic.clone(), p.payload.to_vec())
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Seen::Error(e.to_string()));
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        let mut c = V3 {
            client,
            events,
            task,
        };
        c.expect(|s| matches!(s, Seen::ConnAck)).await;
        c
    }

    async fn expect(&mut self, want: impl Fn(&Seen) -> bool) -> Seen {
        loop {
            let seen = within(self.events.recv()).await.expect("event loop ended");
            if let Seen::Error(e) = &seen {
                panic!("client error: {e}");
            }
            if want(&seen) {
                return seen;
            }
        }
    }

    async fn subscribe(&mut self, topic: &str) {
        self.client
            .subscribe(topic, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        self.expect(|s| matches!(s, Seen::SubAck)).await;
    }

    async fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
    }

    async fn receive(&mut self, topic: &str) -> Vec<u8> {
        match self
            .expect(|s| matches!(s, Seen::Publish(t, _) if t == topic))
            .await
        {
            Seen::Publish(_, payload) => payload,
            other => unreachable!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn rumqttc_v311_on_every_transport_exchanges_messages_with_every_other() {
    let b = broker_with_every_listener().await;
    let mut subscribers = Vec::new();
    for kind in KINDS {
        let mut sub = V3::connect(v3_options(&b, kind, &format!("sub-{kind}"))).await;
        sub.subscribe("e2e/v3/#").await;
        subscribers.push((kind, sub));
    }
    for from in KINDS {
        let publisher = V3::connect(v3_options(&b, from, &format!("pub-{from}"))).await;
        let topic = format!("e2e/v3/from-{from}");
        publisher.publish(&topic, from.as_str().as_bytes()).await;
        for (to, sub) in &mut subscribers {
            let payload = sub.receive(&topic).await;
            assert_eq!(payload, from.as_str().as_bytes(), "{from} -> {to}");
        }
    }
}

#[tokio::test]
async fn rumqttc_v5_over_tls_and_wss() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event};

    let b = broker_with_every_listener().await;
    let (sub, mut sub_loop) = AsyncClient::new(v5_options(&b, ListenerKind::Wss, "v5-sub"), 64);
    let (publisher, mut pub_loop) =
        AsyncClient::new(v5_options(&b, ListenerKind::Mqtts, "v5-pub"), 64);
    sub.subscribe("e2e/v5", QoS::AtLeastOnce).await.unwrap();
    let pub_task = tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                return;
            }
        }
    });
    let mut published = false;
    let payload = within(async {
        loop {
            match sub_loop.poll().await.expect("wss v5 client") {
                Event::Incoming(Packet::SubAck(_)) if !published => {
                    published = true;
                    publisher
                        .publish("e2e/v5", QoS::AtLeastOnce, false, "over mqtts to wss")
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(p)) => return p.payload,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(&payload[..], b"over mqtts to wss");
    pub_task.abort();
}

#[tokio::test]
async fn mosquitto_sub_over_tls_receives_what_a_wss_client_publishes() {
    let b = broker_with_every_listener().await;
    let port = b.broker.addr(ListenerKind::Mqtts).unwrap().port();
    // Line-buffered so its debug line about the SUBACK arrives while it waits.
    let mut sub = tokio::process::Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-h", "localhost", "-p"])
        .arg(port.to_string())
        .arg("--cafile")
        .arg(&b.ca)
        .args([
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            "e2e/mosquitto",
            "-C",
            "1",
            "-W",
            "20",
            "-d",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients) runs");
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    within(async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("SUBACK") {
                return;
            }
        }
        panic!("mosquitto_sub ended before subscribing");
    })
    .await;
    let publisher = V3::connect(v3_options(&b, ListenerKind::Wss, "wss-pub")).await;
    publisher
        .publish("e2e/mosquitto", b"from a browser-like client")
        .await;
    let mut rest = Vec::new();
    while let Some(line) = within(lines.next_line()).await.unwrap() {
        rest.push(line);
    }
    let status = within(sub.wait()).await.unwrap();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l == "from a browser-like client"),
        "{rest:?}"
    );
}

/// Lays out `dir` as the kubelet does for a Secret volume and swaps `..data` atomically.
fn secret_volume_version(dir: &Path, stamp: &str, cert: &Path, key: &Path) {
    let version = dir.join(stamp);
    fs::create_dir(&version).unwrap();
    fs::copy(cert, version.join("tls.crt")).unwrap();
    fs::copy(key, version.join("tls.key")).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(stamp, &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("tls.crt").exists() {
        symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    }
}

#[tokio::test]
async fn a_swapped_certificate_reaches_new_clients_while_a_tls_session_keeps_publishing() {
    let (old, new) = (Pki::new(), Pki::new());
    let volume = tempfile::tempdir().unwrap();
    secret_volume_version(volume.path(), "..v1", &old.files.cert, &old.files.key);
    let mut config = Config::default();
    config.listeners.push(ListenerConfig::new(
        ListenerKind::Mqtt,
        "127.0.0.1:0".parse().unwrap(),
    ));
    config.listeners.push(ListenerConfig::new(
        ListenerKind::Mqtts,
        "127.0.0.1:0".parse().unwrap(),
    ));
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.tls.cert = Some(volume.path().join("tls.crt"));
    config.tls.key = Some(volume.path().join("tls.key"));
    let broker = start(config).await.unwrap();
    let mqtts = broker.addr(ListenerKind::Mqtts).unwrap();
    let both_cas = || {
        client_config(&ClientOptions {
            cas: vec![&old.files.ca_cert, &new.files.ca_cert],
            ..ClientOptions::trusting(&old.files.ca_cert)
        })
    };

    // A subscriber on TCP; a publisher on TLS with the old certificate.
    let mut o = rumqttc::MqttOptions::new(
        "watcher",
        "127.0.0.1",
        broker.addr(ListenerKind::Mqtt).unwrap().port(),
    );
    o.set_keep_alive(Duration::from_secs(30));
    let mut watcher = V3::connect(o).await;
    watcher.subscribe("reload/#").await;
    let mut o = rumqttc::MqttOptions::new("device", "localhost", mqtts.port());
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(both_cas()),
    ));
    o.set_keep_alive(Duration::from_secs(30));
    let device = V3::connect(o).await;
    device.publish("reload/before", b"1").await;
    assert_eq!(watcher.receive("reload/before").await, b"1");
    let first = within(tls_connect(mqtts, both_cas())).await.unwrap();
    let served = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    };
    assert_eq!(
        served(&first),
        CertificateDer::from_pem_file(&old.files.cert).unwrap()
    );

    let mut generation = broker.tls.resolvers().next().unwrap().generation();
    secret_volume_version(volume.path(), "..v2", &new.files.cert, &new.files.key);
    within(generation.wait_for(|g| *g >= 1)).await.unwrap();

    let second = within(tls_connect(mqtts, both_cas())).await.unwrap();
    assert_eq!(
        served(&second),
        CertificateDer::from_pem_file(&new.files.cert).unwrap()
    );
    let serial = |der: &CertificateDer<'_>| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.raw_serial().to_vec()
    };
    let new_file = CertificateDer::from_pem_file(&new.files.cert).unwrap();
    assert_eq!(serial(&served(&second)), serial(&new_file));
    assert_ne!(
        serial(&served(&second)),
        serial(&served(&first)),
        "a new serial after the swap"
    );
    device.publish("reload/after", b"2").await;
    assert_eq!(
        watcher.receive("reload/after").await,
        b"2",
        "the old session keeps publishing"
    );
}

#[tokio::test]
async fn refused_handshakes_are_counted_by_listener_and_reason() {
    let b = broker_with_every_listener().await;
    // TLS garbage on mqtts; a request without Upgrade on ws.
    let mut garbage = TcpStream::connect(b.broker.addr(ListenerKind::Mqtts).unwrap())
        .await
        .unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = within(garbage.read_to_end(&mut Vec::new())).await;
    let mut plain = TcpStream::connect(b.broker.addr(ListenerKind::Ws).unwrap())
        .await
        .unwrap();
    plain
        .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within(plain.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let expected = [
        r#"starling_handshake_failures_total{listener="mqtts",reason="tls_invalid_message"} 1"#,
        r#"starling_handshake_failures_total{listener="ws",reason="ws_not_upgrade"} 1"#,
    ];
    // The counter is bumped right after the connection closes: wait for it.
    let body = within(async {
        loop {
            let body = metrics(b.broker.http).await;
            if expected.iter().all(|e| body.contains(e)) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        body.matches("starling_handshake_failures_total{").count(),
        2,
        "{body}"
    );
}

async fn metrics(http: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
