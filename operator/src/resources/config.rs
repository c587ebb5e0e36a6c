//! The broker's configuration file, `broker.toml`, in a ConfigMap: `[limits]` from the Broker's
//! spec, `[hook]` from the operator's own settings ([`BrokerHook`]).

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use super::{names, owned_meta};
use starling_types::{LimitsConfig, LimitsSpec};

use crate::crd::Broker;

/// The key of `broker.toml` in the ConfigMap (and its file name in the pod).
pub const CONFIG_KEY: &str = "broker.toml";

#[derive(Serialize)]
struct BrokerToml<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<LimitsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hook: Option<HookToml<'a>>,
    shutdown: ShutdownToml,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<super::cluster::ClusterToml>,
}

/// How long a broker pod's connections get to drain after DISCONNECT 0x8B
/// (`shutdown.drain_timeout_secs`); the pod's grace period covers it and the preStop hook's
/// answer ([`super::deployment`]).
pub(crate) const DRAIN_TIMEOUT_SECS: u64 = 15;

/// `[shutdown]`: the drain deadline, and with several replicas the Server Reference MQTT 5
/// clients get with DISCONNECT 0x8B: the Broker's own client address, which the Service then
/// sends to a replica still serving (the draining one is no longer ready).
#[derive(Serialize)]
struct ShutdownToml {
    drain_timeout_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_reference: Option<String>,
}

impl ShutdownToml {
    fn for_broker(b: &Broker) -> Self {
        let e = b.endpoints();
        ShutdownToml {
            drain_timeout_secs: DRAIN_TIMEOUT_SECS,
            server_reference: (b.spec.replicas > 1)
                .then(|| e.mqtts.or_else(|| e.wss.into_iter().next()))
                .flatten(),
        }
    }
}

/// Which hook URLs every broker may call, beyond the broker's default of `https` on public
/// addresses only. Set by whoever installs the operator (its flags, the chart's
/// `operator.brokerHook`), never by a Broker: a tenant must not be able to point its own hook
/// into the cluster's network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerHook {
    /// `hook.allow_http`: allow `http://` hook URLs.
    pub allow_http: bool,
    /// `hook.allow_private_addresses`: allow hooks on loopback, private and other non-public
    /// addresses.
    pub allow_private_addresses: bool,
    /// `hook.allowed_hosts`: hosts exempt from both rules (e.g. `moderation.default.svc`); each
    /// checked by [`allowed_host`].
    pub allowed_hosts: Vec<String>,
    /// `hook.timeout_ms`: how long one hook request may take; the broker's default when `None`.
    pub timeout_ms: Option<u64>,
}

/// A value of [`BrokerHook::allowed_hosts`] that no hook URL's host could ever equal.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHost {
    /// The value is empty.
    #[error("an allowed hook host is empty")]
    Empty,
    /// The value has a scheme, port, path, wildcard or other character a host cannot have.
    #[error(
        "{0:?} is not an allowed hook host: give a DNS name or an IP address, without scheme, port or path"
    )]
    NotAHost(String),
}

/// Checks one allowed hook host and returns it as the broker compares it: a DNS name (letters,
/// digits and hyphens in dot-separated labels; case does not matter), an IPv4 address, or an
/// IPv6 address with or without brackets (rendered without, as the broker strips them from the
/// URL's host).
pub fn allowed_host(value: &str) -> Result<String, InvalidHost> {
    let v = value.trim();
    if v.is_empty() {
        return Err(InvalidHost::Empty);
    }
    let bare = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(v);
    if bare.parse::<Ipv6Addr>().is_ok() {
        return Ok(bare.to_owned());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if v.len() <= 253 && v.split('.').all(label_ok) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(InvalidHost::NotAHost(v.to_owned()))
    }
}

/// `[hook]` with the broker's snake_case keys; only what differs from the broker's defaults.
#[derive(Serialize)]
struct HookToml<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "is_false")]
    allow_http: bool,
    #[serde(skip_serializing_if = "is_false")]
    allow_private_addresses: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    allowed_hosts: &'a [String],
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl<'a> HookToml<'a> {
    /// `None` when every setting is the broker's default, so no `[hook]` table is written.
    fn from_settings(h: &'a BrokerHook) -> Option<Self> {
        (*h != BrokerHook::default()).then_some(Self {
            timeout_ms: h.timeout_ms,
            allow_http: h.allow_http,
            allow_private_addresses: h.allow_private_addresses,
            allowed_hosts: &h.allowed_hosts,
        })
    }
}

/// The spec's limits for the api (camelCase keys), without the operator-only ones, which only
/// the broker's configuration file carries; `None` when the spec sets none of the others.
pub fn tenant_limits(b: &Broker) -> Option<LimitsSpec> {
    let tenant = b.spec.limits.as_ref()?.tenant_part();
    (!tenant.is_empty()).then_some(tenant)
}

/// Renders `broker.toml` for `b`, with the operator's hook rules `hook`.
pub fn render_config(b: &Broker, hook: &BrokerHook) -> Result<String, toml::ser::Error> {
    render_config_with(b, hook, None)
}

/// [`render_config`], with the paths of the NATS files `nats` names (`[cluster]`).
pub fn render_config_with(
    b: &Broker,
    hook: &BrokerHook,
    nats: Option<&super::NatsCredentials>,
) -> Result<String, toml::ser::Error> {
    let doc = BrokerToml {
        limits: b.spec.limits.as_ref().map(LimitsSpec::to_config),
        hook: HookToml::from_settings(hook),
        shutdown: ShutdownToml::for_broker(b),
        cluster: nats.and_then(super::cluster::ClusterToml::for_credentials),
    };
    let body = toml::to_string(&doc)?;
    Ok(format!(
        "# Rendered by starling-operator from Broker {}; edits are overwritten.\n{body}",
        b.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// The ConfigMap holding `broker.toml` (with the paths of the NATS files `nats` names).
pub fn desired_config_map(
    b: &Broker,
    hook: &BrokerHook,
    nats: Option<&super::NatsCredentials>,
) -> Result<ConfigMap, toml::ser::Error> {
    Ok(ConfigMap {
        metadata: owned_meta(b, names::config(b)),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            render_config_with(b, hook, nats)?,
        )])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::broker;

    #[test]
    fn limits_are_rendered_under_the_limits_table_with_snake_case_keys() {
        let b = broker(serde_json::json!({"limits": {
            "profile": "cloudflare", "maxPacketSize": 65536, "maxPublishRate": 10,
            "publishBurst": 20, "maxConnections": 1000
        }}));
        let cm = desired_config_map(&b, &BrokerHook::default(), None).expect("renders");
        let text = &cm.data.expect("data")[CONFIG_KEY];
        let parsed: toml::Value = toml::from_str(text).expect("valid TOML");
        let limits = parsed["limits"].as_table().expect("[limits]");
        assert_eq!(limits["profile"].as_str(), Some("cloudflare"));
        assert_eq!(limits["max_packet_size"].as_integer(), Some(65536));
        assert_eq!(limits["max_publish_rate"].as_float(), Some(10.0));
        assert_eq!(limits["publish_burst"].as_integer(), Some(20));
        assert_eq!(limits["max_connections"].as_integer(), Some(1000));
        assert_eq!(
            limits.len(),
            5,
            "unset limits are left to the broker's defaults"
        );
        assert_eq!(cm.metadata.name.as_deref(), Some("sensors-config"));
    }

    #[test]
    fn limits_for_the_api_leave_out_the_operator_only_ones() {
        let b = broker(serde_json::json!({"limits": {
            "profile": "cloudflare", "maxConnections": 10, "connectTimeoutSecs": 5
        }}));
        assert_eq!(
            tenant_limits(&b).map(|l| serde_json::to_value(l).expect("serializes")),
            Some(serde_json::json!({"profile": "cloudflare", "maxConnections": 10}))
        );
        let text = render_config(&b, &BrokerHook::default()).expect("renders");
        assert!(
            text.contains("connect_timeout_secs = 5"),
            "the file has them: {text}"
        );
        assert_eq!(tenant_limits(&broker(serde_json::json!({}))), None);
        let operator_only = broker(serde_json::json!({"limits": {"connectTimeoutSecs": 5}}));
        assert_eq!(tenant_limits(&operator_only), None);
    }

    #[test]
    fn no_limits_render_only_the_drain_deadline() {
        let b = broker(serde_json::json!({}));
        let text = render_config(&b, &BrokerHook::default()).expect("renders");
        let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            parsed,
            toml::from_str::<toml::Table>("[shutdown]\ndrain_timeout_secs = 15\n").unwrap()
        );
    }

    #[test]
    fn several_replicas_send_clients_back_to_the_brokers_address_when_one_drains() {
        let b = broker(serde_json::json!({"replicas": 3, "hostname": "mqtt.example.com"}));
        let text = render_config(&b, &BrokerHook::default()).expect("renders");
        let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            parsed["shutdown"]["server_reference"].as_str(),
            Some("mqtts://mqtt.example.com:8883")
        );
        let wss_only = broker(
            serde_json::json!({"replicas": 2, "hostname": "mqtt.example.com",
            "listeners": {"mqtts": {"enabled": false}}}),
        );
        let text = render_config(&wss_only, &BrokerHook::default()).expect("renders");
        assert!(
            text.contains("server_reference = \"wss://mqtt.example.com:443/mqtt\""),
            "{text}"
        );
    }

    #[test]
    fn default_hook_settings_render_no_hook_table() {
        let b = broker(serde_json::json!({"limits": {"maxConnections": 10}}));
        assert_eq!(
            render_config(&b, &BrokerHook::default()).expect("renders"),
            "# Rendered by starling-operator from Broker sensors; edits are overwritten.\n\
             [limits]\nmax_connections = 10\n\n[shutdown]\ndrain_timeout_secs = 15\n"
        );
        let empty =
            render_config(&broker(serde_json::json!({})), &BrokerHook::default()).expect("renders");
        assert!(!empty.contains("[hook]"), "{empty}");
    }

    #[test]
    fn hook_rules_are_rendered_under_the_hook_table_with_the_brokers_keys() {
        let hook = BrokerHook {
            allow_http: true,
            allow_private_addresses: true,
            allowed_hosts: vec!["moderation.default.svc".to_owned(), "10.0.0.7".to_owned()],
            timeout_ms: Some(2500),
        };
        let b = broker(serde_json::json!({"limits": {"maxConnections": 10}}));
        let text = render_config(&b, &hook).expect("renders");
        let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
        let table = parsed["hook"].as_table().expect("[hook]");
        assert_eq!(table["allow_http"].as_bool(), Some(true));
        assert_eq!(table["allow_private_addresses"].as_bool(), Some(true));
        assert_eq!(table["timeout_ms"].as_integer(), Some(2500));
        let hosts: Vec<&str> = table["allowed_hosts"]
            .as_array()
            .expect("an array")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(hosts, ["moderation.default.svc", "10.0.0.7"]);
        assert_eq!(table.len(), 4);
        assert_eq!(
            parsed["limits"]["max_connections"].as_integer(),
            Some(10),
            "the Broker's limits are still there"
        );
    }

    #[test]
    fn only_the_hook_rules_that_are_set_are_rendered() {
        let hook = BrokerHook {
            allowed_hosts: vec!["moderation.default.svc".to_owned()],
            ..BrokerHook::default()
        };
        let text = render_config(&broker(serde_json::json!({})), &hook).expect("renders");
        let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
        let table = parsed["hook"].as_table().expect("[hook]");
        assert_eq!(
            table.keys().map(String::as_str).collect::<Vec<_>>(),
            ["allowed_hosts"],
            "https-only, public-only and the timeout stay the broker's defaults"
        );
        let hook = BrokerHook {
            timeout_ms: Some(1),
            ..BrokerHook::default()
        };
        let text = render_config(&broker(serde_json::json!({})), &hook).expect("renders");
        let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            parsed["hook"]
                .as_table()
                .expect("[hook]")
                .keys()
                .collect::<Vec<_>>(),
            ["timeout_ms"]
        );
    }

    #[test]
    fn the_hook_rules_change_the_config_map_and_so_roll_the_pods() {
        let b = broker(serde_json::json!({}));
        let before = desired_config_map(&b, &BrokerHook::default(), None).expect("renders");
        let after = desired_config_map(
            &b,
            &BrokerHook {
                allow_http: true,
                ..BrokerHook::default()
            },
            None,
        )
        .expect("renders");
        assert_ne!(before.data, after.data);
    }

    #[test]
    fn allowed_hosts_are_dns_names_or_ip_addresses() {
        assert_eq!(
            allowed_host("moderation.default.svc").as_deref(),
            Ok("moderation.default.svc")
        );
        assert_eq!(
            allowed_host(" Hooks.Example.COM ").as_deref(),
            Ok("hooks.example.com")
        );
        assert_eq!(allowed_host("moderation").as_deref(), Ok("moderation"));
        assert_eq!(allowed_host("10.0.0.7").as_deref(), Ok("10.0.0.7"));
        assert_eq!(allowed_host("fd00::7").as_deref(), Ok("fd00::7"));
        assert_eq!(allowed_host("[fd00::7]").as_deref(), Ok("fd00::7"));
    }

    #[test]
    fn allowed_hosts_with_a_scheme_port_path_or_wildcard_are_rejected() {
        assert_eq!(allowed_host(""), Err(InvalidHost::Empty));
        assert_eq!(allowed_host("   "), Err(InvalidHost::Empty));
        for bad in [
            "http://moderation.default.svc",
            "moderation.default.svc:8080",
            "moderation.default.svc/hook",
            "*.default.svc",
            "moderation..svc",
            "moderation.default.svc.",
            "-moderation.svc",
            "moderation_1.svc",
            "[fd00::7",
        ] {
            let e = allowed_host(bad).expect_err(bad);
            assert_eq!(e, InvalidHost::NotAHost(bad.to_owned()));
            assert!(
                e.to_string().contains("without scheme, port or path"),
                "{e}"
            );
        }
        let long = format!("{}.svc", "a".repeat(64));
        assert!(allowed_host(&long).is_err(), "a label longer than 63");
    }
}
