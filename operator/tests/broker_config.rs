//! The `broker.toml` the operator renders is read by the broker's own configuration loader, with
//! every limit the CRD can set and the listeners the pod's flags add, so the two cannot drift
//! apart silently.

use starling_broker::config::{Config, Overrides};
use starling_operator::{certs, crd::Broker, resources::render_config};

fn broker(spec: serde_json::Value) -> Broker {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "starling.dev/v1alpha1",
        "kind": "Broker",
        "metadata": {"name": "sensors", "namespace": "iot"},
        "spec": spec,
    }))
    .expect("a valid Broker")
}

/// The listeners and TLS files of the broker container (`--mqtts`, `--wss`, `--tls-cert`,
/// `--tls-key`, `--http`), with a real operator-issued certificate in a scratch directory.
fn pod_flags(dir: &std::path::Path) -> Overrides {
    std::fs::create_dir_all(dir).expect("scratch dir");
    let now = jiff::Timestamp::now();
    let ca = certs::issue_ca("iot/sensors", now).expect("ca");
    let leaf = certs::issue_leaf(&ca, &["sensors.iot.svc".to_owned()], now, 90).expect("leaf");
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).expect("cert");
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).expect("key");
    Overrides {
        mqtts: vec!["127.0.0.1:0".parse().expect("addr")],
        wss: vec!["127.0.0.1:0".parse().expect("addr")],
        http: Some("127.0.0.1:0".parse().expect("addr")),
        tls_cert: Some(dir.join("tls.crt")),
        tls_key: Some(dir.join("tls.key")),
        ..Overrides::default()
    }
}

fn load(b: &Broker, name: &str) -> Result<Config, String> {
    let text = render_config(b).map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("starling-operator-{name}-{}", std::process::id()));
    let result = Config::load(
        Some(&text),
        Vec::<(String, String)>::new(),
        &pod_flags(&dir),
    );
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| e.to_string())
}

#[test]
fn the_broker_accepts_every_limit_the_crd_can_set() {
    let b = broker(serde_json::json!({"limits": {
        "profile": "cloudflare",
        "maxPacketSize": 65536,
        "maxPublishRate": 10,
        "publishBurst": 20,
        "connectTimeoutSecs": 10,
        "minKeepAliveSecs": 5,
        "maxSessionExpirySecs": 604800,
        "maxTopicLength": 1024,
        "maxTopicDepth": 8,
        "maxClientIdLength": 128,
        "maxSubscribersPerTopic": 1000,
        "maxConnections": 5000
    }}));
    let config = load(&b, "limits")
        .unwrap_or_else(|e| panic!("the broker rejected the rendered config: {e}"));
    assert_eq!(config.limits.max_packet_size, Some(65536));
    assert_eq!(config.limits.max_connections, Some(5000));
    assert_eq!(config.limits.publish_burst, Some(20));
}

#[test]
fn the_broker_accepts_the_config_of_a_broker_without_limits() {
    load(&broker(serde_json::json!({})), "empty")
        .unwrap_or_else(|e| panic!("the broker rejected the rendered config: {e}"));
}
