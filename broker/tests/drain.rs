//! `/drain` on the broker's HTTP listener, the graceful shutdown a Kubernetes preStop hook starts
//! (the broker's image has no shell for a `sleep`): run against the broker binary, with an
//! independent MQTT 5 client (rumqttc) and the raw client that reads every property. Clients get
//! DISCONNECT 0x8B with the configured Server Reference, the caller gets its answer once the
//! broker has drained, nothing is accepted after, and the SIGTERM that follows ends the process
//! at once and cleanly.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::Duration;

use common::http_get;
use process::BrokerProcess;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as RumqttcPacket};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use starling_codec::{Packet, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REFERENCE: &str = "mqtts://mqtt.example.com:8883";

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(Duration::from_secs(60), $body)
            .await
            .expect("test timed out")
    };
}

/// One HTTP/1.1 request with `method` and an empty body: `(status, body)`.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_owned())
}

#[tokio::test]
async fn drain_disconnects_mqtt_5_clients_with_0x8b_and_the_server_reference_then_answers() {
    timed!(async {
        let mut b = BrokerProcess::start(&format!(
            "[shutdown]\ndrain_timeout_secs = 5\nserver_reference = \"{REFERENCE}\"\n"
        ));
        let mut o = MqttOptions::new("rumqttc-v5", b.mqtt.ip().to_string(), b.mqtt.port());
        o.set_keep_alive(Duration::from_secs(30));
        let (_client, mut events) = AsyncClient::new(o, 16);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(RumqttcPacket::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("rumqttc could not connect: {e}"),
            }
        }
        let mut raw = b.client("raw-v5").await;
        assert_eq!(http_get(b.http, "/readyz").await.0, 200);

        let drain = tokio::spawn(http(b.http, "POST", "/drain"));

        let err = loop {
            match events.poll().await {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                err,
                ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code: DisconnectReasonCode::ServerShuttingDown,
                    ..
                })
            ),
            "rumqttc saw {err:?}"
        );
        match raw.recv_opt().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, ReasonCode::SERVER_SHUTTING_DOWN);
                assert_eq!(
                    d.properties.server_reference.as_ref().map(|s| s.as_str()),
                    Some(REFERENCE)
                );
            }
            other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
        }

        let (status, body) = drain.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "drained\n"));
        // Drained: not ready, alive, no MQTT listener; asking again answers at once (GET is
        // what the kubelet's preStop hook sends).
        assert_eq!(http_get(b.http, "/readyz").await.0, 503);
        assert_eq!(http_get(b.http, "/healthz").await.0, 200);
        assert!(TcpStream::connect(b.mqtt).await.is_err(), "MQTT refused");
        assert_eq!(
            http_get(b.http, "/drain").await,
            (200, "drained\n".to_owned())
        );
        // The SIGTERM after the hook finds nothing left to do.
        let status = b.terminate(Duration::from_secs(5));
        assert!(status.success(), "{status:?}");
    })
}

#[tokio::test]
async fn without_a_server_reference_the_disconnect_carries_none() {
    timed!(async {
        let mut b = BrokerProcess::start("[shutdown]\ndrain_timeout_secs = 5\n");
        let mut raw = b.client("raw-v5").await;
        let drain = tokio::spawn(http(b.http, "GET", "/drain"));
        match raw.recv_opt().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, ReasonCode::SERVER_SHUTTING_DOWN);
                assert_eq!(d.properties.server_reference, None);
            }
            other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
        }
        assert_eq!(drain.await.unwrap(), (200, "drained\n".to_owned()));
        assert!(b.terminate(Duration::from_secs(5)).success());
    })
}

/// `starling-broker drain` (the operator's preStop hook, run inside the pod) drains the broker
/// on its host over loopback, prints its answer and exits 0 once drained; against an address
/// where no broker listens it fails, saying so.
#[tokio::test]
async fn the_drain_command_drains_the_broker_on_its_host() {
    timed!(async {
        let mut b = BrokerProcess::start("[shutdown]\ndrain_timeout_secs = 5\n");
        let mut raw = b.client("raw-v5").await;
        let http = b.http.to_string();
        let command = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_starling-broker"))
                .args(["drain", "--http", &http, "--timeout-secs", "30"])
                .output()
                .expect("the binary runs")
        });
        match raw.recv_opt().await {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SERVER_SHUTTING_DOWN),
            other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
        }
        let out = command.await.unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "drained\n");
        assert_eq!(http_get(b.http, "/readyz").await.0, 503);
        assert!(b.terminate(Duration::from_secs(5)).success());

        let nobody = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_starling-broker"))
                .args(["drain", "--http", &nobody])
                .output()
                .expect("the binary runs")
        })
        .await
        .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("cannot reach the broker's HTTP listener"),
            "{out:?}"
        );
    })
}
