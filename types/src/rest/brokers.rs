//! Brokers: their view, creation and change bodies, and the broker secret.

use serde::{Deserialize, Deserializer, Serialize};

use crate::{LimitsSpec, Secret};

/// The longest token lifetime accepted, in seconds (10 years); larger values are refused as
/// probably nanoseconds.
pub const MAX_EXPIRATION_SECS: i64 = 315_360_000;

/// The on-publish hook settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct OnPublish {
    /// The hook URL; `null` clears it.
    pub url: Option<String>,
}

/// The header the operator sends, with a [`ManagedBy::marker`], to change what its custom
/// resource owns.
pub const MANAGED_BY_HEADER: &str = "x-starling-managed-by";

/// The Kubernetes resource that manages a broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ManagedBy {
    /// Always `Broker`.
    #[cfg_attr(feature = "utoipa", schema(pattern = "^Broker$"))]
    pub kind: String,
    /// The Kubernetes namespace of the resource.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 63,
            pattern = "^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"
        )
    )]
    pub namespace: String,
    /// The resource's name.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 253,
            pattern = "^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"
        )
    )]
    pub name: String,
}

impl ManagedBy {
    /// `<kind>/<namespace>/<name>`: the value of the `X-Starling-Managed-By` header and how the
    /// api stores it.
    pub fn marker(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    /// Reads a [`ManagedBy::marker`].
    pub fn parse(marker: &str) -> Option<ManagedBy> {
        let mut it = marker.splitn(3, '/');
        Some(ManagedBy {
            kind: it.next()?.into(),
            namespace: it.next()?.into(),
            name: it.next()?.into(),
        })
    }
}

/// A broker as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BrokerView {
    /// 32 lowercase hex characters.
    pub id: String,
    /// RFC 1035 label, unique in its namespace.
    pub name: String,
    /// `TOKEN`.
    #[serde(rename = "authType")]
    pub auth_type: String,
    /// `TOKEN`: `authType` again, under the name Cloudflare's CLI and other clients written
    /// against the live service read.
    #[serde(rename = "auth_type")]
    pub auth_type_snake: String,
    /// Free text.
    pub description: String,
    /// RFC 3339 with microseconds.
    pub created_on: String,
    /// RFC 3339 with microseconds.
    pub modified_on: String,
    /// Token lifetime ceiling in seconds; `null` for none.
    pub expiration: Option<i64>,
    /// Where MQTT clients connect: for an operator-managed broker, what its Broker resource's
    /// `status.endpoints` says; else `mqtts://<broker>.<namespace>.<domain>:8883`, or the api's
    /// configured `endpoint` when one listener serves every broker (`starling-dev`).
    pub endpoint: String,
    /// Where browsers connect (MQTT over secure WebSockets): for an operator-managed broker, what
    /// its Broker resource's `status.endpoints` says; else `wss://<broker>.<namespace>.<domain>/mqtt`,
    /// or the api's configured `ws_endpoint` when one listener serves every broker.
    #[serde(rename = "wsEndpoint")]
    pub ws_endpoint: String,
    /// The on-publish hook; left out when there is none, as in Cloudflare's examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_publish: Option<OnPublish>,
    /// Broker limits; the broker applies each one within its own configured value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// The Kubernetes resource managing this broker, if any.
    #[serde(rename = "managedBy", default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<ManagedBy>,
}

/// A broker just created, with its secret (shown this once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BrokerCreated {
    /// The broker.
    #[serde(flatten)]
    pub broker: BrokerView,
    /// The broker secret for the internal state route; shown only here (`null` when an
    /// operator re-registers an existing broker: rotate the secret to get a new one).
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>))]
    pub secret: Option<Secret<String>>,
}

/// A new broker secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BrokerSecret {
    /// The secret; shown only here.
    #[cfg_attr(feature = "utoipa", schema(value_type = String))]
    pub secret: Secret<String>,
}

/// A page of brokers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BrokerList {
    /// The brokers, by name.
    pub items: Vec<BrokerView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The body of a broker creation. Accepts `authType` and `auth_type`; both may be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BrokerCreate {
    /// RFC 1035 label, unique in the namespace.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 63,
            pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
        )
    )]
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            max_length = 1024,
            pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$"
        )
    )]
    pub description: Option<String>,
    /// `TOKEN` (the default).
    #[serde(rename = "authType", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(pattern = "^TOKEN$"))]
    pub auth_type: Option<String>,
    /// `TOKEN` (the form some clients sent).
    #[serde(rename = "auth_type", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(pattern = "^TOKEN$"))]
    pub auth_type_snake: Option<String>,
    /// Token lifetime ceiling in seconds; `-1` or `null` for none.
    #[serde(
        default,
        deserialize_with = "whole_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(minimum = -1, maximum = 315360000))]
    pub expiration: Option<i64>,
    /// The on-publish hook: every message goes to `url` first; `null` or an empty URL for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_publish: Option<OnPublish>,
    /// Broker limits; the broker applies each one within its own configured value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Set by the operator for brokers it manages.
    #[serde(rename = "managedBy", default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<ManagedBy>,
    /// Only with `managedBy`: where MQTT clients connect (`mqtts://` or `mqtt://`), as the Broker
    /// resource's `status.endpoints` says; the api then advertises exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(max_length = 512))]
    pub endpoint: Option<String>,
    /// Only with `managedBy`: where browsers connect (`wss://` or `ws://`), as the Broker
    /// resource's `status.endpoints` says; the api then advertises exactly this.
    #[serde(
        rename = "wsEndpoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(max_length = 512))]
    pub ws_endpoint: Option<String>,
}

/// The body of a broker change: absent fields stay, `null` clears.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BrokerPatch {
    /// Brokers cannot be renamed: a name other than the broker's own is refused (400); its own
    /// name is accepted and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            max_length = 1024,
            pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$"
        )
    )]
    pub description: Option<String>,
    /// Token lifetime ceiling in seconds; `-1` or `null` for none.
    #[serde(
        default,
        deserialize_with = "whole_seconds_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "utoipa",
        schema(value_type = Option<i64>, minimum = -1, maximum = 315360000)
    )]
    pub expiration: Option<Option<i64>>,
    /// The on-publish hook; `{"url": null}` or `null` clears it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<OnPublish>))]
    pub on_publish: Option<Option<OnPublish>>,
    /// Broker limits, replacing the ones set before; `null` clears them.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<LimitsSpec>))]
    pub limits: Option<Option<LimitsSpec>>,
    /// Only from the managing resource (the `x-starling-managed-by` header): where MQTT clients
    /// connect, as its `status.endpoints` says; `null` goes back to the derived endpoint.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>, max_length = 512))]
    pub endpoint: Option<Option<String>>,
    /// Only from the managing resource: where browsers connect (wss), as its `status.endpoints`
    /// says; `null` goes back to the derived endpoint.
    #[serde(
        rename = "wsEndpoint",
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>, max_length = 512))]
    pub ws_endpoint: Option<Option<String>>,
}

fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A whole number of seconds, or `null`. JSON has one number type and JSON Schema's `integer`
/// is any number without a fraction, so `3600.0` is read as `3600`; a fraction, or a value
/// beyond the 64-bit range, is refused.
fn whole_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // i64::MAX as f64 rounds up to 2^63, so the upper bound is exclusive.
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            Ok(Some(f as i64))
        }
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number of seconds, got {n}"
        ))),
    }
}

/// [`whole_seconds`] for a change body, where `null` (clear) differs from absent (keep).
fn whole_seconds_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    whole_seconds(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_tells_absent_from_null_both_ways() {
        let p: BrokerPatch =
            serde_json::from_str(r#"{"expiration":null,"on_publish":{"url":"https://h"}}"#)
                .expect("parses");
        assert_eq!(p.expiration, Some(None));
        assert_eq!(p.limits, None);
        let back = serde_json::to_value(&p).expect("serializes");
        assert_eq!(
            back,
            serde_json::json!({"expiration": null, "on_publish": {"url": "https://h"}})
        );
    }

    #[test]
    fn expiration_takes_whole_numbers_only() {
        let b: BrokerCreate =
            serde_json::from_str(r#"{"name":"b","expiration":3600.0}"#).expect("parses");
        assert_eq!(b.expiration, Some(3600));
        assert!(serde_json::from_str::<BrokerCreate>(r#"{"name":"b","expiration":1.5}"#).is_err());
    }

    #[test]
    fn managed_by_marker_round_trips() {
        let m = ManagedBy {
            kind: "Broker".into(),
            namespace: "ns".into(),
            name: "b".into(),
        };
        assert_eq!(ManagedBy::parse(&m.marker()), Some(m));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = BrokerSecret {
            secret: Secret::new("sbs_secret".into()),
        };
        assert!(!format!("{s:?}").contains("sbs_secret"));
    }
}
