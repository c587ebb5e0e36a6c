//! The `broker.toml` the operator renders is read by the broker's own configuration loader, with
//! every limit the CRD can set, every hook rule the operator's settings can set and the listeners
//! the pod's flags add, so the two cannot drift apart silently.

use starling_broker::config::{Config, Overrides};
use starling_operator::{
    certs,
    crd::Broker,
    resources::{BrokerHook, render_config},
};

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

fn load(b: &Broker, hook: &BrokerHook, name: &str) -> Result<Config, String> {
    let text = render_config(b, hook).map_err(|e| e.to_string())?;
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
    let config = load(&b, &BrokerHook::default(), "limits")
        .unwrap_or_else(|e| panic!("the broker rejected the rendered config: {e}"));
    assert_eq!(config.limits.max_packet_size, Some(65536));
    assert_eq!(config.limits.max_connections, Some(5000));
    assert_eq!(config.limits.publish_burst, Some(20));
}

#[test]
fn the_broker_accepts_the_config_of_a_broker_without_limits() {
    let config = load(
        &broker(serde_json::json!({})),
        &BrokerHook::default(),
        "empty",
    )
    .unwrap_or_else(|e| panic!("the broker rejected the rendered config: {e}"));
    assert_eq!(
        config.hook,
        starling_broker::hook::HookSettings::default(),
        "without operator settings the broker keeps https-only, public-only"
    );
}

#[test]
fn the_broker_reads_every_hook_rule_the_operator_can_set() {
    let hook = BrokerHook {
        allow_http: true,
        allow_private_addresses: true,
        allowed_hosts: vec!["moderation.default.svc".to_owned(), "fd00::7".to_owned()],
        timeout_ms: Some(2500),
    };
    let b = broker(serde_json::json!({"limits": {"maxConnections": 5000}}));
    let config = load(&b, &hook, "hook")
        .unwrap_or_else(|e| panic!("the broker rejected the rendered config: {e}"));
    assert!(config.hook.allow_http);
    assert!(config.hook.allow_private_addresses);
    assert_eq!(
        config.hook.allowed_hosts,
        ["moderation.default.svc", "fd00::7"]
    );
    assert_eq!(config.hook.timeout_ms, 2500);
    assert_eq!(config.limits.max_connections, Some(5000));
    let defaults = starling_broker::hook::HookSettings::default();
    assert_eq!(
        config.hook.max_batch_messages, defaults.max_batch_messages,
        "what the operator does not set stays the broker's default"
    );
    assert_eq!(config.hook.url, None);
}

#[test]
fn the_broker_reads_a_single_hook_rule_and_keeps_its_defaults_for_the_rest() {
    let hook = BrokerHook {
        allowed_hosts: vec!["moderation.default.svc".to_owned()],
        ..BrokerHook::default()
    };
    let config = load(&broker(serde_json::json!({})), &hook, "one-rule")
        .unwrap_or_else(|e| panic!("the broker rejected the rendered config: {e}"));
    assert_eq!(
        config.hook,
        starling_broker::hook::HookSettings {
            allowed_hosts: vec!["moderation.default.svc".to_owned()],
            ..starling_broker::hook::HookSettings::default()
        }
    );
}

/// With NATS credentials from Secrets, the file names the mounted files and the pod's
/// environment carries the user and password (as the Deployment passes them from the Broker's
/// own Secret); the broker reads both, and its logged form has no password.
#[test]
fn the_broker_reads_the_nats_files_the_config_names_and_the_password_from_its_environment() {
    use k8s_openapi::{ByteString, api::core::v1::Secret};
    use starling_operator::resources::{NatsCredentials, render_config_with};
    let secret = |entries: &[(&str, &str)]| Secret {
        data: Some(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    };
    let creds = NatsCredentials::from_secrets(
        Some(&secret(&[
            ("user", "broker"),
            ("password", "pw-not-logged"),
        ])),
        Some(&secret(&[("ca.crt", "CA")])),
    )
    .expect("complete");
    let b = broker(serde_json::json!({"replicas": 3}));
    let text = render_config_with(&b, &BrokerHook::default(), Some(&creds)).expect("renders");
    assert!(!text.contains("pw-not-logged"), "{text}");
    let dir = std::env::temp_dir().join(format!("starling-operator-nats-{}", std::process::id()));
    let mut flags = pod_flags(&dir);
    flags.cluster_nats = vec!["nats://nats-0.nats.starling-system.svc:4222".to_owned()];
    let env = [
        (
            "STARLING_BROKER__CLUSTER__USER".to_owned(),
            "broker".to_owned(),
        ),
        (
            "STARLING_BROKER__CLUSTER__PASSWORD".to_owned(),
            "pw-not-logged".to_owned(),
        ),
    ];
    let config = Config::load(Some(&text), env, &flags);
    let _ = std::fs::remove_dir_all(&dir);
    let config = config.unwrap_or_else(|e| panic!("the broker rejected it: {e}"));
    assert_eq!(config.cluster.user.as_deref(), Some("broker"));
    assert_eq!(
        config.cluster.tls_ca.as_deref(),
        Some(std::path::Path::new("/etc/starling/nats/ca.crt"))
    );
    let logged = serde_json::to_string(&config).expect("serializes");
    assert!(!logged.contains("pw-not-logged"), "{logged}");
}

/// With the chart's NATS, the operator mints the broker's own NATS user: `broker.toml` names
/// its credentials file and the inbox prefix its permissions allow, and the broker reads both.
#[tokio::test]
async fn the_broker_reads_the_login_the_operator_minted_for_it() {
    use starling_broker::cluster::credentials::ServerKeys;
    use starling_operator::nats_auth::{AccountPublisher, NatsAuth};
    use starling_operator::resources::{NatsCredentials, render_config_with};
    struct Nowhere;
    #[async_trait::async_trait]
    impl AccountPublisher for Nowhere {
        async fn publish(&self, _: String) -> Result<(), String> {
            Ok(())
        }
    }
    let auth = NatsAuth::new(ServerKeys::generate(), std::sync::Arc::new(Nowhere));
    let login = auth.broker_login("brk_1", None).expect("minted");
    let creds = NatsCredentials::from_secrets(None, None)
        .expect("nothing shared")
        .with_login(&login);
    let b = broker(serde_json::json!({"replicas": 3}));
    let text = render_config_with(&b, &BrokerHook::default(), Some(&creds)).expect("renders");
    assert!(!text.contains("NKEY"), "{text}");
    let dir = std::env::temp_dir().join(format!("starling-operator-login-{}", std::process::id()));
    let mut flags = pod_flags(&dir);
    flags.cluster_nats = vec!["nats://starling-nats-0.starling-nats-headless:4222".to_owned()];
    let config = Config::load(Some(&text), Vec::<(String, String)>::new(), &flags);
    let _ = std::fs::remove_dir_all(&dir);
    let config = config.unwrap_or_else(|e| panic!("the broker rejected it: {e}"));
    assert_eq!(
        config.cluster.creds.as_deref(),
        Some(std::path::Path::new("/etc/starling/nats/nats.creds"))
    );
    assert_eq!(
        config.cluster.inbox_prefix.as_deref(),
        Some("_INBOX_starling.brk_1")
    );
}
