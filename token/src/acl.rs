//! Topic ACLs: `"#"` (everything) or `{"pub":[filters],"sub":[filters]}`.
//!
//! Publishing is allowed when the topic matches one of the `pub` filters. Subscribing is allowed
//! when the requested filter is *covered* by one of the `sub` filters: every topic the requested
//! filter can match must be matched by the allowed one. A filter wider than the ACL is refused,
//! never silently narrowed. `$share/{group}/{filter}` is checked against `{filter}`.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use starling_codec::topic::{self, TopicError};

/// Which topics a token may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicAcl {
    /// `"#"`: every topic, both ways (Cloudflare's only form).
    All,
    /// `{"pub":[...],"sub":[...]}`: MQTT topic filters per direction (Starling's extension).
    Lists {
        /// Filters the client may publish to (serde `pub`).
        publish: Vec<String>,
        /// Filters the client may subscribe within (serde `sub`).
        subscribe: Vec<String>,
    },
}

impl TopicAcl {
    /// Whether a PUBLISH to `topic` is allowed. Invalid topic names (wildcards, empty) never are.
    pub fn may_publish(&self, topic: &str) -> bool {
        if validate_topic(topic).is_err() {
            return false;
        }
        match self {
            TopicAcl::All => true,
            TopicAcl::Lists { publish, .. } => {
                publish.iter().any(|f| topic_matches_filter(topic, f))
            }
        }
    }

    /// Whether a message on `topic` may be delivered: one of the `sub` filters matches it. A
    /// session keeps only what its current token may read (messages queued under an earlier,
    /// wider token are dropped).
    pub fn may_read(&self, topic: &str) -> bool {
        match self {
            TopicAcl::All => true,
            TopicAcl::Lists { subscribe, .. } => subscribe
                .iter()
                .any(|allowed| topic_matches_filter(topic, allowed)),
        }
    }

    /// Whether a SUBSCRIBE to `filter` is allowed: the filter must be covered by one allowed
    /// filter. `$share/{group}/{f}` is checked against `f`. Invalid filters never are.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let Some(filter) = strip_share(filter) else {
            return false;
        };
        if validate_filter(filter).is_err() {
            return false;
        }
        match self {
            TopicAcl::All => true,
            TopicAcl::Lists { subscribe, .. } => subscribe
                .iter()
                .any(|allowed| filter_covers(allowed, filter)),
        }
    }
}

/// `$share/{group}/{filter}` → `Some(filter)` (`None` when `filter` is itself shared); a
/// plain filter → itself; a malformed shared subscription → `None` ([`topic::subscription`]:
/// the filter checked is the one routed).
fn strip_share(filter: &str) -> Option<&str> {
    topic::subscription(filter).ok().map(|(_, f)| f)
}

/// Checks an MQTT topic name: non-empty, no wildcards, no NUL, at most 65,535 bytes.
pub fn validate_topic(topic: &str) -> Result<(), &'static str> {
    topic::validate_topic_name(topic).map_err(|e| match e {
        TopicError::Empty => "topic is empty",
        TopicError::TooLong => "topic longer than 65535 bytes",
        TopicError::NullCharacter => "topic contains NUL",
        _ => "topic contains a wildcard",
    })
}

/// Checks an MQTT topic filter as written: non-empty, `#` alone in the last level, `+` alone
/// in its level.
pub fn validate_filter(filter: &str) -> Result<(), &'static str> {
    topic::validate_filter_levels(filter).map_err(|e| match e {
        TopicError::Empty => "filter is empty",
        TopicError::TooLong => "filter longer than 65535 bytes",
        TopicError::NullCharacter => "filter contains NUL",
        TopicError::MultiLevelWildcard => "`#` must be alone in the last level",
        _ => "`+` must be alone in its level",
    })
}

/// Whether `topic` matches `filter` under MQTT rules (the filter is assumed valid and taken as
/// written).
pub fn topic_matches_filter(topic: &str, filter: &str) -> bool {
    topic::matches_levels(filter, topic)
}

/// Whether every topic matched by `filter` is also matched by `allowed` ([`topic::covers`]).
pub fn filter_covers(allowed: &str, filter: &str) -> bool {
    topic::covers(allowed, filter)
}

/// Whether some topic is matched by both filters ([`topic::overlap`]).
pub fn filters_overlap(a: &str, b: &str) -> bool {
    topic::overlap(a, b)
}

// === impl Serialize / Deserialize ===

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListsRepr {
    #[serde(rename = "pub", default)]
    publish: Vec<String>,
    #[serde(rename = "sub", default)]
    subscribe: Vec<String>,
}

impl Serialize for TopicAcl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TopicAcl::All => serializer.serialize_str("#"),
            TopicAcl::Lists { publish, subscribe } => ListsRepr {
                publish: publish.clone(),
                subscribe: subscribe.clone(),
            }
            .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for TopicAcl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AclVisitor;
        impl<'de> Visitor<'de> for AclVisitor {
            type Value = TopicAcl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r##""#" or {"pub":[filters],"sub":[filters]}"##)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TopicAcl, E> {
                if v == "#" {
                    Ok(TopicAcl::All)
                } else {
                    Err(E::custom(
                        r##"topicAcl string must be "#"; use {"pub":[...],"sub":[...]} for filters"##,
                    ))
                }
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<TopicAcl, M::Error> {
                let repr = ListsRepr::deserialize(de::value::MapAccessDeserializer::new(map))?;
                for filter in repr.publish.iter().chain(repr.subscribe.iter()) {
                    validate_filter(filter).map_err(|why| {
                        de::Error::custom(format_args!("invalid topic filter in topicAcl: {why}"))
                    })?;
                }
                Ok(TopicAcl::Lists {
                    publish: repr.publish,
                    subscribe: repr.subscribe,
                })
            }
        }
        deserializer.deserialize_any(AclVisitor)
    }
}

impl TopicAcl {
    /// The ACL as a JSON value (infallible, used when signing).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            TopicAcl::All => serde_json::Value::String("#".into()),
            TopicAcl::Lists { publish, subscribe } => serde_json::json!({
                "pub": publish,
                "sub": subscribe,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lists(publish: &[&str], subscribe: &[&str]) -> TopicAcl {
        TopicAcl::Lists {
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn all_allows_any_valid_topic_and_filter() {
        assert!(TopicAcl::All.may_publish("a/b"));
        assert!(TopicAcl::All.may_subscribe("#"));
        assert!(TopicAcl::All.may_subscribe("$share/g/#"));
        assert!(!TopicAcl::All.may_publish("a/+"));
        assert!(!TopicAcl::All.may_subscribe("a/#/b"));
    }

    #[test]
    fn reading_needs_a_sub_filter_that_matches_the_topic() {
        let acl = lists(&["secret/#"], &["public/#", "sensors/+/temp"]);
        assert!(acl.may_read("public/a/b"));
        assert!(acl.may_read("sensors/k1/temp"));
        assert!(!acl.may_read("secret/a"), "publishing is not reading");
        assert!(!acl.may_read("sensors/k1/humidity"));
        assert!(TopicAcl::All.may_read("anything/at/all"));
    }

    #[test]
    fn a_shared_subscription_inside_a_shared_one_is_refused() {
        assert!(!TopicAcl::All.may_subscribe("$share/g/$share/h/x"));
        assert!(!lists(&[], &["x", "#"]).may_subscribe("$share/g/$share/h/x"));
        assert!(lists(&[], &["x"]).may_subscribe("$share/g/x"));
    }

    #[test]
    fn publish_needs_a_matching_pub_filter() {
        let acl = lists(&["sensors/+/temp", "alerts/#"], &[]);
        assert!(acl.may_publish("sensors/k1/temp"));
        assert!(acl.may_publish("alerts"));
        assert!(acl.may_publish("alerts/fire/floor2"));
        assert!(!acl.may_publish("sensors/k1/humidity"));
        assert!(!acl.may_publish("sensors/k1"));
        assert!(!acl.may_publish("other"));
    }

    #[test]
    fn subscribe_filter_wider_than_acl_is_refused() {
        let acl = lists(&[], &["sensors/+/temp", "alerts/#"]);
        assert!(acl.may_subscribe("sensors/k1/temp"));
        assert!(acl.may_subscribe("sensors/+/temp"));
        assert!(acl.may_subscribe("alerts/#"));
        assert!(acl.may_subscribe("alerts/+/x"));
        assert!(acl.may_subscribe("alerts"));
        assert!(!acl.may_subscribe("sensors/#"), "wider than sensors/+/temp");
        assert!(
            !acl.may_subscribe("sensors/+/+"),
            "wider than sensors/+/temp"
        );
        assert!(!acl.may_subscribe("#"));
        assert!(!acl.may_subscribe("+/k1/temp"));
    }

    #[test]
    fn shared_subscription_is_checked_against_its_filter() {
        let acl = lists(&[], &["jobs/#"]);
        assert!(acl.may_subscribe("$share/workers/jobs/#"));
        assert!(acl.may_subscribe("$share/workers/jobs/a"));
        assert!(!acl.may_subscribe("$share/workers/#"));
        assert!(!acl.may_subscribe("$share//jobs/a"), "empty share name");
        assert!(!acl.may_subscribe("$share/workers"), "no filter");
        assert!(
            !acl.may_subscribe("$share/w+/jobs/a"),
            "wildcard in share name"
        );
    }

    #[test]
    fn first_level_wildcards_do_not_cover_dollar_topics() {
        let acl = lists(&["#"], &["#", "+/x"]);
        assert!(!acl.may_publish("$SYS/x"));
        assert!(!acl.may_subscribe("$SYS/#"));
        assert!(!acl.may_subscribe("$SYS/x"));
        assert!(acl.may_subscribe("a/x"));
    }

    #[test]
    fn filters_overlap_when_some_topic_matches_both() {
        for (a, b) in [
            ("#", "a/b"),
            ("a/#", "a"),
            ("a/+", "a/b"),
            ("+/b", "a/+"),
            ("a/+/c", "a/b/#"),
            ("$SYS/#", "$SYS/x"),
            ("a/b", "a/b"),
        ] {
            assert!(filters_overlap(a, b), "{a} and {b}");
            assert!(filters_overlap(b, a), "{b} and {a}");
        }
        for (a, b) in [
            ("a/b", "a/c"),
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/b/c", "a/b"),
        ] {
            assert!(!filters_overlap(a, b), "{a} and {b}");
            assert!(!filters_overlap(b, a), "{b} and {a}");
        }
    }

    #[test]
    fn acl_json_forms_round_trip() {
        let all: TopicAcl = serde_json::from_str(r##""#""##).unwrap();
        assert_eq!(all, TopicAcl::All);
        assert_eq!(serde_json::to_string(&all).unwrap(), r##""#""##);
        let l: TopicAcl = serde_json::from_str(r#"{"pub":["a/b"],"sub":["a/#"]}"#).unwrap();
        assert_eq!(l, lists(&["a/b"], &["a/#"]));
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r##"{"pub":["a/b"],"sub":["a/#"]}"##
        );
        let only_sub: TopicAcl = serde_json::from_str(r#"{"sub":["x"]}"#).unwrap();
        assert_eq!(only_sub, lists(&[], &["x"]));
    }

    #[test]
    fn acl_json_with_bad_filters_or_fields_is_refused() {
        assert!(serde_json::from_str::<TopicAcl>(r#""a/b""#).is_err());
        assert!(serde_json::from_str::<TopicAcl>(r#"{"pub":["a/#/b"]}"#).is_err());
        assert!(serde_json::from_str::<TopicAcl>(r#"{"publish":["a"]}"#).is_err());
        assert!(serde_json::from_str::<TopicAcl>(r#"{"sub":[""]}"#).is_err());
        assert!(serde_json::from_str::<TopicAcl>("42").is_err());
    }

    #[test]
    fn filter_validation_follows_the_spec() {
        for ok in ["#", "+", "a/+/b", "a/#", "/", "a//b", "+/+/#"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "##"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("$s".to_string()),
            Just("".to_string()),
        ]
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![level(), Just("+".to_string())]
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(filter_level(), 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut l, hash)| {
                if hash {
                    l.push("#".into());
                }
                l.join("/")
            })
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..6).prop_map(|l| l.join("/"))
    }

    proptest! {
        /// Coverage is sound: whatever the requested filter matches, the allowed one matches too.
        #[test]
        fn covered_filters_match_only_allowed_topics(allowed in filter(), requested in filter(), topics in proptest::collection::vec(topic(), 1..30)) {
            prop_assume!(validate_filter(&requested).is_ok());
            if filter_covers(&allowed, &requested) {
                for t in &topics {
                    if topic_matches_filter(t, &requested) {
                        prop_assert!(topic_matches_filter(t, &allowed), "{requested} covered by {allowed} but {t} escapes");
                    }
                }
            }
        }

        /// A filter always covers itself.
        #[test]
        fn every_filter_covers_itself(f in filter()) {
            prop_assume!(validate_filter(&f).is_ok());
            prop_assert!(filter_covers(&f, &f));
        }
    }
}
