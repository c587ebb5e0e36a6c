//! Topic ACLs: `"#"` (everything) or `{"pub":[filters],"sub":[filters]}`.
//!
//! Publishing is allowed when the topic matches one of the `pub` filters. Subscribing is allowed
//! when the requested filter is *covered* by one of the `sub` filters: every topic the requested
//! filter can match must be matched by the allowed one. A filter wider than the ACL is refused,
//! never silently narrowed. `$share/{group}/{filter}` is checked against `{filter}`.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// `$share/{group}/{filter}` → `Some(filter)` (`None` when `filter` is itself shared); a plain filter → itself; a malformed shared
/// subscription → `None`.
fn strip_share(filter: &str) -> Option<&str> {
    match filter.strip_prefix("$share/") {
        None => Some(filter),
        Some(rest) => {
            // [MQTT-4.8.2-1] the ShareName is at least one character, with no `/`, `+` or `#`,
            // followed by `/` and a topic filter.
            let (group, inner) = rest.split_once('/')?;
            if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
                return None;
            }
            // A shared subscription inside a shared one is refused: the filter routed would be
            // the literal `$share/...`, not the one this check would see.
            if inner.starts_with("$share/") {
                return None;
            }
            Some(inner)
        }
    }
}

/// Checks an MQTT topic name: non-empty, no wildcards, no NUL, at most 65,535 bytes.
pub fn validate_topic(topic: &str) -> Result<(), &'static str> {
    // [MQTT-4.7.3-1] at least one character; [MQTT-4.7.3-2] no NUL; [MQTT-3.3.2-2] no wildcards.
    if topic.is_empty() {
        return Err("topic is empty");
    }
    if topic.len() > 65_535 {
        return Err("topic longer than 65535 bytes");
    }
    if topic.contains('\0') {
        return Err("topic contains NUL");
    }
    if topic.contains(['+', '#']) {
        return Err("topic contains a wildcard");
    }
    Ok(())
}

/// Checks an MQTT topic filter: non-empty, `#` alone in the last level, `+` alone in its level.
pub fn validate_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("filter is empty");
    }
    if filter.len() > 65_535 {
        return Err("filter longer than 65535 bytes");
    }
    if filter.contains('\0') {
        return Err("filter contains NUL");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        // [MQTT-4.7.1-1] `#` occupies a whole level and is the last character.
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("`#` must be alone in the last level");
        }
        // [MQTT-4.7.1-2] `+` occupies a whole level.
        if level.contains('+') && level != "+" {
            return Err("`+` must be alone in its level");
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter` under MQTT rules (the filter is assumed valid).
pub fn topic_matches_filter(topic: &str, filter: &str) -> bool {
    // [MQTT-4.7.2-1] wildcards at the first level do not match topics starting with `$`.
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by `filter` is also matched by `allowed` (both assumed valid;
/// `allowed` is checked, and an invalid one covers nothing).
pub fn filter_covers(allowed: &str, filter: &str) -> bool {
    if validate_filter(allowed).is_err() {
        return false;
    }
    // [MQTT-4.7.2-1] a first-level wildcard never matches `$` topics, so it cannot cover a filter
    // that names one.
    if filter.starts_with('$') && allowed.starts_with(['+', '#']) {
        return false;
    }
    let mut a = allowed.split('/');
    let mut f = filter.split('/');
    loop {
        match (a.next(), f.next()) {
            // `x/#` matches `x` and everything below it.
            (Some("#"), _) => return true,
            (None, None) => return true,
            // The requested filter is longer, or shorter than the allowed one (and the allowed
            // one does not continue with `#`, handled above).
            (None, Some(_)) | (Some(_), None) => return false,
            // Only `#` covers `#`.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(_), Some("+")) => return false,
            (Some(al), Some(fl)) if al == fl => {}
            _ => return false,
        }
    }
}

/// Whether some topic is matched by both filters (both assumed valid): a subscription to one
/// could receive a message published to a topic the other names.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    // [MQTT-4.7.2-1] a first-level wildcard never matches a `$` topic.
    let dollar_against_wildcard =
        |x: &str, y: &str| x.starts_with('$') && y.starts_with(['+', '#']);
    if dollar_against_wildcard(a, b) || dollar_against_wildcard(b, a) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            // `x/#` matches `x` and everything below it.
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            _ => return false,
        }
    }
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
