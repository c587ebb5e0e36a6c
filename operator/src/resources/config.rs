//! The broker's configuration file, `broker.toml`, in a ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use super::{names, owned_meta};
use crate::crd::{Broker, Limits};

/// The key of `broker.toml` in the ConfigMap (and its file name in the pod).
pub const CONFIG_KEY: &str = "broker.toml";

#[derive(Serialize)]
struct BrokerToml<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<LimitsToml<'a>>,
}

/// `[limits]` with the broker's snake_case keys.
#[derive(Serialize)]
struct LimitsToml<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_packet_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_publish_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_timeout_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_keep_alive_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_session_expiry_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_topic_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_topic_depth: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_client_id_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_subscribers_per_topic: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u32>,
}

impl<'a> From<&'a Limits> for LimitsToml<'a> {
    fn from(l: &'a Limits) -> Self {
        Self {
            profile: l.profile.map(|p| p.as_str()),
            max_packet_size: l.max_packet_size,
            max_publish_rate: l.max_publish_rate,
            publish_burst: l.publish_burst,
            connect_timeout_secs: l.connect_timeout_secs,
            min_keep_alive_secs: l.min_keep_alive_secs,
            max_session_expiry_secs: l.max_session_expiry_secs,
            max_topic_length: l.max_topic_length,
            max_topic_depth: l.max_topic_depth,
            max_client_id_length: l.max_client_id_length,
            max_subscribers_per_topic: l.max_subscribers_per_topic,
            max_connections: l.max_connections,
        }
    }
}

/// The spec's limits as a JSON object with the broker's `[limits]` keys (for the api), or
/// `None` when the spec sets none.
pub fn limits_json(b: &Broker) -> Option<serde_json::Value> {
    b.spec
        .limits
        .as_ref()
        .and_then(|l| serde_json::to_value(LimitsToml::from(l)).ok())
}

/// Renders `broker.toml` for `b`.
pub fn render_config(b: &Broker) -> Result<String, toml::ser::Error> {
    let doc = BrokerToml {
        limits: b.spec.limits.as_ref().map(LimitsToml::from),
    };
    let body = toml::to_string(&doc)?;
    Ok(format!(
        "# Rendered by starling-operator from Broker {}; edits are overwritten.\n{body}",
        b.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// The ConfigMap holding `broker.toml`.
pub fn desired_config_map(b: &Broker) -> Result<ConfigMap, toml::ser::Error> {
    Ok(ConfigMap {
        metadata: owned_meta(b, names::config(b)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), render_config(b)?)])),
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
        let cm = desired_config_map(&b).expect("renders");
        let text = &cm.data.expect("data")[CONFIG_KEY];
        let parsed: toml::Value = toml::from_str(text).expect("valid TOML");
        let limits = parsed["limits"].as_table().expect("[limits]");
        assert_eq!(limits["profile"].as_str(), Some("cloudflare"));
        assert_eq!(limits["max_packet_size"].as_integer(), Some(65536));
        assert_eq!(limits["max_publish_rate"].as_integer(), Some(10));
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
    fn limits_for_the_api_use_the_same_keys_as_the_file() {
        let b =
            broker(serde_json::json!({"limits": {"profile": "cloudflare", "maxConnections": 10}}));
        assert_eq!(
            limits_json(&b),
            Some(serde_json::json!({"profile": "cloudflare", "max_connections": 10}))
        );
        assert_eq!(limits_json(&broker(serde_json::json!({}))), None);
    }

    #[test]
    fn no_limits_render_an_empty_but_valid_file() {
        let b = broker(serde_json::json!({}));
        let text = render_config(&b).expect("renders");
        let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert!(parsed.is_empty());
    }
}
