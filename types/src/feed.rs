//! The state feed between the api (`GET /internal/v1/brokers/{id}/state`) and a broker in
//! managed mode: the api writes a [`FeedState`], the broker reads one.
//!
//! The broker reads leniently, so that it keeps working against an older or newer api: every
//! field but `version` and `jwks` may be missing, unknown fields are skipped, and `limits` stays
//! JSON until the broker picks out the limits it knows. Every poll reports the broker process's
//! counters ([`StatsReport`]) in the [`STATS_HEADER`] request header, which the api keeps for
//! its health view.

use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::jwk::Jwks;

/// The state document of one broker (`StateView` in the api's internal OpenAPI document).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = StateView))]
#[serde(rename_all = "camelCase")]
pub struct FeedState {
    /// Increases with every change.
    pub version: u64,
    /// Which broker this is; its hostname is the `broker` field of every hook message.
    #[serde(default)]
    pub broker: Option<FeedBroker>,
    /// Next, current and retiring public keys of client tokens (never a hook key).
    pub jwks: Jwks,
    /// Live revocations.
    #[serde(default)]
    pub revocations: Vec<FeedRevocation>,
    /// The broker's limits as set through the api (a [`crate::LimitsSpec`]); the broker applies
    /// each one within its own configured value. Kept as JSON here so that a limit a broker does
    /// not know yet never makes it refuse a state, with its keys and revocations.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<crate::LimitsSpec>))]
    pub limits: Option<serde_json::Value>,
    /// The on-publish hook, when the broker has one.
    #[serde(default)]
    pub on_publish: Option<FeedHook>,
    /// The private part of the broker's current hook key, which signs the on-publish hook's
    /// requests (its `kid` is in `/publickeys`, never in `jwks`: brokers refuse it for client
    /// tokens); present only while the broker has `onPublish`, `null` otherwise. A `signingKey`
    /// of an older api is not read.
    #[serde(default)]
    pub hook_key: Option<FeedSigningKey>,
}

/// The broker a state belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = BrokerRef))]
pub struct FeedBroker {
    /// Broker id.
    #[serde(default)]
    pub id: Option<String>,
    /// Broker name.
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace name.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `<broker>.<namespace>.<domain>`: the `broker` field of the on-publish hook's messages.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// The on-publish hook in the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = HookRef))]
pub struct FeedHook {
    /// The webhook URL; `null` or empty means none.
    #[serde(default)]
    pub url: Option<String>,
}

/// A private Ed25519 signing key in the state (the JWK members that matter). `Debug` never
/// shows the private part.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = PrivateKey))]
pub struct FeedSigningKey {
    /// The key id (RFC 7638 thumbprint), as in `jwks` and `/publickeys`.
    pub kid: String,
    /// The 32-byte Ed25519 seed, base64url without padding (the JWK `d` member).
    #[cfg_attr(feature = "utoipa", schema(value_type = String))]
    pub d: Secret<String>,
}

/// A revoked token id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = Revocation))]
#[serde(rename_all = "camelCase")]
pub struct FeedRevocation {
    /// The revoked token id.
    pub jti: String,
    /// Unix seconds when the token expires anyway; `null` for a token without `exp`, or a `jti`
    /// the api did not issue.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// The key that signed the token, when the api issued it; `null` otherwise.
    #[serde(default)]
    pub kid: Option<String>,
}

/// The request header of a state-feed poll that carries the broker's [`StatsReport`].
pub const STATS_HEADER: &str = "x-starling-broker-stats";

/// The longest [`STATS_HEADER`] value read.
const MAX_STATS_LEN: usize = 256;

/// A small summary of a broker process's counters, sent with every state-feed poll:
/// `instance=<id>; connections=N; messages_in=N; messages_out=N; dropped=N`. Counts only (never
/// a topic, a client id or a secret); the counters are the process's since it started (a process
/// serving several tenants reports the same figures for each).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsReport {
    /// Which process reports (random per process and tenant; 1 to 64 of `[A-Za-z0-9_-]`).
    pub instance: String,
    /// Connections open now.
    pub connections: u64,
    /// PUBLISH packets received since start.
    pub messages_in: u64,
    /// PUBLISH packets sent since start.
    pub messages_out: u64,
    /// Messages dropped since start, for any reason.
    pub dropped: u64,
}

impl StatsReport {
    /// The header value.
    pub fn to_header(&self) -> String {
        format!(
            "instance={}; connections={}; messages_in={}; messages_out={}; dropped={}",
            self.instance, self.connections, self.messages_in, self.messages_out, self.dropped
        )
    }

    /// Reads a header value; `None` when it is longer than 256 bytes, has no valid `instance`,
    /// or a known key with a value that is not a count. Unknown keys are skipped, so a newer
    /// broker can add figures.
    pub fn parse(text: &str) -> Option<StatsReport> {
        if text.len() > MAX_STATS_LEN {
            return None;
        }
        let mut report = StatsReport::default();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=')?;
            let count = || value.trim().parse::<u64>().ok();
            match key.trim() {
                "instance" => report.instance = value.trim().to_string(),
                "connections" => report.connections = count()?,
                "messages_in" => report.messages_in = count()?,
                "messages_out" => report.messages_out = count()?,
                "dropped" => report.dropped = count()?,
                _ => {}
            }
        }
        let id_ok = (1..=64).contains(&report.instance.len())
            && report
                .instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        id_ok.then_some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_an_older_api_reads_and_the_seed_stays_out_of_debug() {
        let s: FeedState = serde_json::from_value(serde_json::json!({
            "version": 3,
            "jwks": {"keys": []},
            "hookKey": {"kid": "k1", "d": "c2VlZC1zZWNyZXQ"},
            "somethingNewer": true,
        }))
        .unwrap();
        assert_eq!(s.version, 3);
        assert!(s.broker.is_none() && s.revocations.is_empty() && s.limits.is_none());
        let key = s.hook_key.as_ref().unwrap();
        assert_eq!(key.d.expose(), "c2VlZC1zZWNyZXQ");
        assert!(!format!("{s:?}").contains("c2VlZC1zZWNyZXQ"));
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["hookKey"]["d"], "c2VlZC1zZWNyZXQ");
    }

    #[test]
    fn stats_reports_read_back_and_bad_ones_are_refused() {
        let r = StatsReport {
            instance: "0123abcd".into(),
            connections: 3,
            messages_in: 10,
            messages_out: 20,
            dropped: 1,
        };
        assert_eq!(StatsReport::parse(&r.to_header()), Some(r.clone()));
        assert_eq!(
            StatsReport::parse(&format!("{}; newer=7", r.to_header())),
            Some(r),
            "unknown keys are skipped"
        );
        for bad in [
            "connections=3",
            "instance=; connections=3",
            "instance=a b; connections=3",
            "instance=p; connections=-1",
            "instance=p; dropped=x",
            "instance=p; novalue",
            &format!("instance=p; x={}", "1".repeat(300)),
        ] {
            assert_eq!(StatsReport::parse(bad), None, "{bad}");
        }
    }
}
