//! Access rules for listeners without authentication (`--auth none`): allow and deny rules for
//! publishing and subscribing by topic filter, like Mosquitto's `acl_file`, so a development or
//! internal broker can refuse topics.
//!
//! ```toml
//! [[auth.rules]]
//! permission = "allow"
//! action = "all"          # publish, subscribe or all
//! topic = "#"
//!
//! [[auth.rules]]
//! permission = "deny"
//! action = "publish"
//! topic = "config/#"
//! ```
//!
//! How they decide, as Mosquitto does with an `acl_file`:
//! - no rules: everything is allowed;
//! - a deny rule that matches refuses, whatever its place in the list and whatever allows it;
//! - otherwise an allow rule that matches allows;
//! - otherwise the action is refused (what the rules do not grant is denied, so a list of deny
//!   rules alone needs `allow all #` to let the rest through).
//!
//! A PUBLISH matches a rule when its topic matches the rule's filter (and, as in MQTT matching,
//! a filter starting with a wildcard does not match topics starting with `$` [MQTT-4.7.2-1]:
//! `$SYS/#` needs a rule of its own). A SUBSCRIBE filter is
//! allowed only when an allow rule covers all of it (every topic it can match), and refused when
//! it could match a topic a deny rule names: `#` is refused when `config/#` is denied. (Mosquitto
//! instead lets the wide subscription in and filters each message on delivery.) A shared
//! subscription `$share/{group}/{filter}` is checked as `{filter}`.
//!
//! A refused PUBLISH gets PUBACK or PUBREC 0x87 in 5.0 and is dropped; a refused SUBSCRIBE gets
//! SUBACK 0x87 in 5.0, 0x80 in 3.1.1.

use serde::{Deserialize, Serialize};
use starling_token::{filter_covers, filters_overlap, topic_matches_filter};

use super::Permissions;

/// Whether a rule allows or denies.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// The action is allowed (unless a deny rule matches).
    Allow,
    /// The action is refused.
    Deny,
}

/// What a rule governs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// PUBLISH (and the will, which is published for the client).
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Both.
    All,
}

impl Action {
    fn publish(self) -> bool {
        matches!(self, Action::Publish | Action::All)
    }

    fn subscribe(self) -> bool {
        matches!(self, Action::Subscribe | Action::All)
    }
}

/// One access rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// `allow` or `deny`.
    pub permission: Permission,
    /// `publish`, `subscribe` or `all`.
    pub action: Action,
    /// An MQTT topic filter (wildcards allowed).
    pub topic: String,
}

impl AccessRule {
    /// A rule.
    pub fn new(permission: Permission, action: Action, topic: impl Into<String>) -> Self {
        AccessRule {
            permission,
            action,
            topic: topic.into(),
        }
    }
}

/// Problems of a list of rules, for configuration validation.
pub fn problems(rules: &[AccessRule]) -> Vec<String> {
    rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            starling_token::validate_filter(&r.topic)
                .err()
                .map(|e| format!("rules[{i}].topic `{}`: {e}", r.topic))
        })
        .collect()
}

/// A list of access rules as [`Permissions`].
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    rules: Vec<AccessRule>,
}

impl AccessRules {
    /// The rules, in the order given (the order does not change a decision).
    pub fn new(rules: Vec<AccessRule>) -> Self {
        AccessRules { rules }
    }

    /// Whether a rule with `permission`, for `action`, has a filter for which `matches` holds.
    fn any(
        &self,
        permission: Permission,
        action: fn(Action) -> bool,
        matches: impl Fn(&str) -> bool,
    ) -> bool {
        self.rules
            .iter()
            .any(|r| r.permission == permission && action(r.action) && matches(&r.topic))
    }
}

impl Permissions for AccessRules {
    fn may_publish(&self, topic: &str) -> bool {
        let matches = |filter: &str| topic_matches_filter(topic, filter);
        self.rules.is_empty()
            || (!self.any(Permission::Deny, Action::publish, matches)
                && self.any(Permission::Allow, Action::publish, matches))
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        self.rules.is_empty()
            || (!self.any(Permission::Deny, Action::subscribe, |denied| {
                filters_overlap(filter, denied)
            }) && self.any(Permission::Allow, Action::subscribe, |allowed| {
                filter_covers(allowed, filter)
            }))
    }

    /// As a subscription to the topic itself would be: no subscribe rule denies it and one
    /// allows it (a session resumed through a listener with other rules keeps only this).
    fn may_read(&self, topic: &str) -> bool {
        let matches = |filter: &str| topic_matches_filter(topic, filter);
        self.rules.is_empty()
            || (!self.any(Permission::Deny, Action::subscribe, matches)
                && self.any(Permission::Allow, Action::subscribe, matches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Permission::*;

    fn rules(list: &[(Permission, Action, &str)]) -> AccessRules {
        AccessRules::new(
            list.iter()
                .map(|(p, a, t)| AccessRule::new(*p, *a, *t))
                .collect(),
        )
    }

    #[test]
    fn no_rules_allow_everything() {
        let r = rules(&[]);
        assert!(r.may_publish("a/b"));
        assert!(r.may_subscribe("#"));
    }

    #[test]
    fn a_topic_may_be_read_as_a_subscription_to_it_would_be_allowed() {
        let r = rules(&[(Allow, Subscribe, "#"), (Deny, Subscribe, "secret/#")]);
        assert!(r.may_read("public/a"));
        assert!(!r.may_read("secret/a"));
        assert!(
            !rules(&[(Allow, Publish, "#")]).may_read("a"),
            "publishing is not reading"
        );
        assert!(rules(&[]).may_read("anything"));
    }

    #[test]
    fn a_deny_wins_over_any_allow_whatever_the_order() {
        for r in [
            rules(&[(Allow, All, "#"), (Deny, Publish, "config/#")]),
            rules(&[(Deny, Publish, "config/#"), (Allow, All, "#")]),
        ] {
            assert!(!r.may_publish("config/x"));
            assert!(!r.may_publish("config"));
            assert!(r.may_publish("sensors/x"));
            assert!(r.may_subscribe("config/#"), "only publishing is denied");
        }
    }

    #[test]
    fn what_no_rule_allows_is_refused() {
        let r = rules(&[
            (Allow, Publish, "sensors/+/temp"),
            (Allow, Subscribe, "alerts/#"),
        ]);
        assert!(r.may_publish("sensors/k1/temp"));
        assert!(!r.may_publish("sensors/k1/humidity"));
        assert!(!r.may_publish("alerts/x"), "allowed for subscribe only");
        assert!(r.may_subscribe("alerts/fire"));
        assert!(!r.may_subscribe("sensors/k1/temp"));
        let only_denies = rules(&[(Deny, All, "secret/#")]);
        assert!(!only_denies.may_publish("public"));
    }

    #[test]
    fn a_subscription_needs_an_allow_that_covers_it_and_no_deny_it_could_reach() {
        let r = rules(&[(Allow, All, "#"), (Deny, Subscribe, "secret/#")]);
        assert!(r.may_subscribe("public/#"));
        assert!(!r.may_subscribe("secret/x"));
        assert!(!r.may_subscribe("#"), "could receive secret/x");
        assert!(!r.may_subscribe("+/x"), "could receive secret/x");
        assert!(
            !r.may_subscribe("$SYS/#"),
            "# does not grant $ topics [MQTT-4.7.2-1]: they need a rule of their own"
        );
        let with_sys = rules(&[(Allow, All, "#"), (Allow, Subscribe, "$SYS/#")]);
        assert!(with_sys.may_subscribe("$SYS/broker/load"));
        let narrow = rules(&[(Allow, Subscribe, "sensors/+/temp")]);
        assert!(narrow.may_subscribe("sensors/k1/temp"));
        assert!(!narrow.may_subscribe("sensors/#"), "wider than the allow");
    }

    #[test]
    fn invalid_rule_filters_are_reported() {
        let list = vec![
            AccessRule::new(Allow, All, "#"),
            AccessRule::new(Deny, Publish, "a/#/b"),
        ];
        let p = problems(&list);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("rules[1]"), "{p:?}");
    }
}
