//! `starling-dev` in-process on free loopback ports: what it prints for Cloudflare's CLI, and
//! the broker `endpoint` its API shows, which an MQTT client reaches over TLS trusting only the
//! CA `dev` printed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;
use starling_dev::{DevOptions, start};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

async fn get(app: &axum::Router, uri: &str, token: &str) -> Value {
    let req = Request::get(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert!(resp.status().is_success(), "{uri}: {}", resp.status());
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

fn trusting(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn the_printed_environment_and_the_broker_endpoint_work_as_shown() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let local = "127.0.0.1:0".parse().unwrap();
        let options = DevOptions {
            data_dir: dir.path().join("data"),
            api: local,
            internal: local,
            mqtt: local,
            ws: local,
            mqtts: local,
            wss: local,
            broker_http: local,
        };
        let shutdown = CancellationToken::new();
        let dev = start(options, shutdown.clone()).await.unwrap();
        let info = dev.info.clone();
        let app = starling_api::app(dev.state.clone());

        // The account id it prints is the admin token's account, and the block for
        // Cloudflare's CLI names this api.
        let account = get(&app, "/v1/account", &info.admin_token).await;
        assert_eq!(account["id"], info.account_id.as_str());
        let banner = starling_dev::banner(&info);
        for line in [
            format!("  account        {}", info.account_id),
            format!(
                "  export CLOUDFLARE_API_BASE_URL={}/client/v4",
                info.api_url
            ),
            format!("  export CLOUDFLARE_API_TOKEN={}", info.admin_token),
            format!("  export CLOUDFLARE_ACCOUNT_ID={}", info.account_id),
        ] {
            assert!(banner.lines().any(|l| l == line), "{line:?} in\n{banner}");
        }

        // Every broker's endpoint is the one mqtts listener, by a name the dev CA covers.
        let broker = get(
            &app,
            &format!(
                "/client/v4/accounts/{}/pubsub/namespaces/demo/brokers/demo",
                info.account_id
            ),
            &info.admin_token,
        )
        .await;
        let endpoint = broker["result"]["endpoint"].as_str().unwrap().to_string();
        assert_eq!(
            endpoint,
            format!("mqtts://localhost:{}", info.options.mqtts.port())
        );
        let (host, port) = endpoint
            .strip_prefix("mqtts://")
            .and_then(|a| a.rsplit_once(':'))
            .unwrap();

        // An MQTT 5 client at that address, trusting only the printed CA, with the printed
        // client token: connects, subscribes and gets its own message back.
        let mut o = MqttOptions::new("demo-client", host, port.parse().unwrap());
        o.set_credentials("demo", info.client_token.clone());
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(trusting(&info.ca_path)),
        ));
        let (client, mut events) = AsyncClient::new(o, 10);
        let mut subscribed = false;
        loop {
            match events.poll().await.expect("the connection holds") {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    assert_eq!(
                        ack.code,
                        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
                    );
                    client.subscribe("demo/#", QoS::AtLeastOnce).await.unwrap();
                }
                Event::Incoming(Packet::SubAck(_)) if !subscribed => {
                    subscribed = true;
                    client
                        .publish("demo/hello", QoS::AtLeastOnce, false, "over the endpoint")
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(p)) => {
                    assert_eq!(
                        (&p.topic[..], &p.payload[..]),
                        (&b"demo/hello"[..], &b"over the endpoint"[..])
                    );
                    break;
                }
                _ => {}
            }
        }
        dev.shutdown(shutdown).await;
    })
    .await
    .expect("timed out");
}
