//! The limits table: every limit of the broker, listed once with its type, its value in each
//! profile, its bounds, its documentation and who may set it.
//!
//! Three forms come from the table:
//! - [`Limits`]: the effective values a broker enforces;
//! - [`LimitsConfig`]: the broker's `[limits]` (and a listener's), snake_case keys, a profile
//!   plus explicit values that override it ([`LimitsConfig::overlay`], [`LimitsConfig::resolve`]);
//! - [`LimitsSpec`]: a broker's limits as the api stores them, the state feed carries them and a
//!   `Broker` resource sets them (`spec.limits`), camelCase keys (snake_case accepted too).
//!
//! A tenant's [`LimitsSpec`] can only tighten what the broker's operator configured: for every
//! limit a tenant may set ([`SetBy::Tenant`]) the broker applies the stricter of its own value and
//! the tenant's, and says so when it clamps ([`Limits::tightened`]). The limits checked before a
//! client's credential is read (connect timeout, user name and password lengths), and those that
//! hold other tenants' publishers (the slow-consumer grace, the keep-alive floor), are
//! [`SetBy::Operator`]: only the broker's configuration sets them.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A named set of limit defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Generous limits for a self-hosted broker.
    #[default]
    Default,
    /// Cloudflare Pub/Sub's published limits.
    Cloudflare,
}

impl Profile {
    /// The spelling in configuration files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Cloudflare => "cloudflare",
        }
    }
}

/// Who may set a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetBy {
    /// The broker's configuration, and a tenant (through the api or a `Broker` resource) within
    /// it: the stricter value applies.
    Tenant,
    /// Only the broker's configuration; a tenant's value is refused by the api and ignored by
    /// the broker.
    Operator,
}

/// How a tenant's value combines with the broker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// The lower value is the stricter.
    Lower,
    /// The lower value is the stricter, and 0 means no limit at all.
    LowerNonZero,
    /// Only the broker's configuration sets it.
    Operator,
}

/// One row of the table, for documentation and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitInfo {
    /// The key in the broker's `[limits]` table.
    pub name: &'static str,
    /// The key in JSON (the api, the state feed, a `Broker`'s `spec.limits`).
    pub json_name: &'static str,
    /// Who may set it.
    pub set_by: SetBy,
    /// What it bounds.
    pub doc: &'static str,
}

/// A value a limit can hold.
trait LimitValue: Copy + PartialOrd + fmt::Display {
    const ZERO: Self;
    #[cfg(feature = "utoipa")]
    const INTEGER: bool;
    #[cfg(feature = "utoipa")]
    fn number(self) -> utoipa::Number;
}

macro_rules! limit_value {
    ($($t:ty => $zero:expr, $integer:expr;)*) => {$(
        impl LimitValue for $t {
            const ZERO: Self = $zero;
            #[cfg(feature = "utoipa")]
            const INTEGER: bool = $integer;
            #[cfg(feature = "utoipa")]
            fn number(self) -> utoipa::Number {
                self.into()
            }
        }
    )*};
}

limit_value! {
    u16 => 0, true;
    u32 => 0, true;
    u64 => 0, true;
    usize => 0, true;
    f64 => 0.0, false;
}

/// The stricter of the broker's value `own` and a tenant's `asked` under `rule`.
fn tighten<T: LimitValue>(rule: Rule, own: T, asked: T) -> T {
    let lower = if asked < own { asked } else { own };
    match rule {
        Rule::Lower => lower,
        Rule::LowerNonZero if own == T::ZERO => asked,
        Rule::LowerNonZero if asked == T::ZERO => own,
        Rule::LowerNonZero => lower,
        Rule::Operator => own,
    }
}

/// `value` if it is within `min..=max`, else the problem in words.
fn out_of_range<T: LimitValue>(key: &str, value: T, min: T, max: T) -> Option<String> {
    // `contains` is false for NaN too.
    (!(min..=max).contains(&value)).then(|| format!("{key} {value} is outside {min}..={max}"))
}

/// The doc comment of a row as one line.
fn one_line(doc: &str) -> String {
    doc.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

macro_rules! rule {
    (lower) => {
        Rule::Lower
    };
    (lower_nonzero) => {
        Rule::LowerNonZero
    };
    (operator) => {
        Rule::Operator
    };
}

macro_rules! set_by {
    (operator) => {
        SetBy::Operator
    };
    ($other:ident) => {
        SetBy::Tenant
    };
}

macro_rules! limits_table {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident $json:tt: $ty:ty {
            default: $default:expr,
            cloudflare: $cloudflare:expr,
            range: $min:expr => $max:expr,
            rule: $rule:ident $(,)?
        }
    )+) => {
        /// Every limit: its keys, who sets it and what it bounds, in table order.
        pub const LIMITS: &[LimitInfo] = &[$(
            LimitInfo {
                name: stringify!($name),
                json_name: $json,
                set_by: set_by!($rule),
                doc: concat!($($doc, "\n"),+),
            },
        )+];

        /// The limits a broker enforces: a profile's values with the explicit ones applied.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct Limits {$(
            $(#[doc = $doc])+
            pub $name: $ty,
        )+}

        impl Limits {
            /// The values of a profile.
            pub fn profile(profile: Profile) -> Self {
                match profile {
                    Profile::Default => Limits { $($name: $default,)+ },
                    Profile::Cloudflare => Limits { $($name: $cloudflare,)+ },
                }
            }

            /// These limits tightened by a tenant's: for every limit a tenant may set (its own
            /// value, or its profile's), the stricter of the two; the others stay. Also returns a
            /// line for every value of the tenant's that did not apply as asked (clamped to the
            /// broker's, or operator-only).
            pub fn tightened(&self, spec: &LimitsSpec) -> (Limits, Vec<String>) {
                let base = spec.profile.map(Limits::profile);
                let mut out = self.clone();
                let mut notes = Vec::new();
                $(
                    let explicit = spec.$name;
                    if let Some(asked) = explicit.or(base.as_ref().map(|b| b.$name)) {
                        let rule = rule!($rule);
                        if rule == Rule::Operator {
                            if explicit.is_some() {
                                notes.push(format!(
                                    "{} is set by the broker's operator only; the tenant's {asked} is ignored",
                                    $json
                                ));
                            }
                        } else {
                            let applied = tighten(rule, self.$name, asked);
                            if applied != asked && explicit.is_some() {
                                notes.push(format!(
                                    "{} {asked} is above the broker's {applied}; {applied} applies",
                                    $json
                                ));
                            }
                            out.$name = applied;
                        }
                    }
                )+
                (out, notes)
            }
        }

        /// Limits as written in the broker's `[limits]` table (or a listener's): a profile plus
        /// explicit values that override it.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct LimitsConfig {
            /// The profile whose values apply where no explicit value is given (`default` when
            /// absent).
            #[serde(skip_serializing_if = "Option::is_none")]
            pub profile: Option<Profile>,
            $(
                $(#[doc = $doc])+
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )+
        }

        impl LimitsConfig {
            /// `self` with `over`'s profile (when it has one) and every value `over` sets.
            pub fn overlay(&self, over: &LimitsConfig) -> LimitsConfig {
                LimitsConfig {
                    profile: over.profile.or(self.profile),
                    $($name: over.$name.or(self.$name),)+
                }
            }

            /// Combines the profile with the explicit values.
            pub fn resolve(&self) -> Limits {
                let mut l = Limits::profile(self.profile.unwrap_or_default());
                $(if let Some(v) = self.$name { l.$name = v; })+
                l
            }

            /// Every explicit value outside its bounds, as `{prefix}{key} {value} is outside
            /// {min}..={max}`.
            pub fn problems(&self, prefix: &str) -> Vec<String> {
                let mut problems = Vec::new();
                $(
                    if let Some(v) = self.$name {
                        problems.extend(out_of_range(
                            &format!("{prefix}{}", stringify!($name)), v, $min, $max,
                        ));
                    }
                )+
                problems
            }
        }

        /// A broker's limits as the api stores them, the state feed carries them and a `Broker`
        /// resource sets them: a profile and explicit values, camelCase keys (the broker's
        /// snake_case keys are accepted too). The broker applies them to its tenant within its
        /// own configuration (see [`Limits::tightened`]).
        #[derive(Debug, Clone, Default, PartialEq, Serialize)]
        #[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
        pub struct LimitsSpec {
            /// The base set of limits; the values below override it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub profile: Option<Profile>,
            $(
                $(#[doc = $doc])+
                #[serde(rename = $json, default, skip_serializing_if = "Option::is_none")]
                #[cfg_attr(feature = "schemars", schemars(range(min = $min, max = $max)))]
                pub $name: Option<$ty>,
            )+
        }

        impl LimitsSpec {
            /// Whether no limit is set.
            pub fn is_empty(&self) -> bool {
                *self == LimitsSpec::default()
            }

            /// Every value outside its bounds, in words naming the JSON key.
            pub fn problems(&self) -> Vec<String> {
                let mut problems = Vec::new();
                $(
                    if let Some(v) = self.$name {
                        problems.extend(out_of_range($json, v, $min, $max));
                    }
                )+
                problems
            }

            /// The JSON keys of the limits set here that only the broker's operator may set.
            pub fn operator_only(&self) -> Vec<&'static str> {
                let mut keys = Vec::new();
                $(
                    if self.$name.is_some() && set_by!($rule) == SetBy::Operator {
                        keys.push($json);
                    }
                )+
                keys
            }

            /// These limits without the operator-only ones (what a tenant may ask for).
            pub fn tenant_part(&self) -> LimitsSpec {
                LimitsSpec {
                    profile: self.profile,
                    $($name: if set_by!($rule) == SetBy::Tenant { self.$name } else { None },)+
                }
            }

            /// The same limits as a broker `[limits]` table.
            pub fn to_config(&self) -> LimitsConfig {
                LimitsConfig {
                    profile: self.profile,
                    $($name: self.$name,)+
                }
            }

            /// Reads a stored value leniently: every key it knows, in either spelling, with a
            /// value of the right type; everything else is left out (the second value names it).
            pub fn lenient(value: &serde_json::Value) -> (LimitsSpec, Vec<String>) {
                let mut spec = LimitsSpec::default();
                let mut skipped = Vec::new();
                let Some(map) = value.as_object() else {
                    return (spec, vec!["limits are not a JSON object".to_owned()]);
                };
                for (key, v) in map {
                    let one = serde_json::Value::Object(
                        std::iter::once((key.clone(), v.clone())).collect(),
                    );
                    match serde_json::from_value::<LimitsSpec>(one) {
                        Ok(single) => spec = spec.with(&single),
                        Err(_) => skipped.push(key.clone()),
                    }
                }
                (spec, skipped)
            }

            /// `self` with every value `over` sets.
            fn with(&self, over: &LimitsSpec) -> LimitsSpec {
                LimitsSpec {
                    profile: over.profile.or(self.profile),
                    $($name: over.$name.or(self.$name),)+
                }
            }
        }

        impl<'de> Deserialize<'de> for LimitsSpec {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct SpecVisitor;
                impl<'de> Visitor<'de> for SpecVisitor {
                    type Value = LimitsSpec;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("an object of limits")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LimitsSpec, A::Error> {
                        let mut spec = LimitsSpec::default();
                        while let Some(key) = map.next_key::<String>()? {
                            match key.as_str() {
                                "profile" => {
                                    spec.profile = map.next_value().map_err(|e| {
                                        de::Error::custom(format_args!("limit `profile`: {e}"))
                                    })?;
                                }
                                $(k if k == $json || k == stringify!($name) => {
                                    spec.$name = map.next_value().map_err(|e| {
                                        de::Error::custom(format_args!("limit `{k}`: {e}"))
                                    })?;
                                })+
                                other => {
                                    return Err(de::Error::custom(format_args!(
                                        "unknown limit `{other}`; the limits are profile, {}",
                                        concat!($($json, ", "),+).trim_end_matches(", ")
                                    )));
                                }
                            }
                        }
                        Ok(spec)
                    }
                }
                d.deserialize_map(SpecVisitor)
            }
        }

        #[cfg(feature = "utoipa")]
        impl utoipa::PartialSchema for LimitsSpec {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
                fn number<T: LimitValue>(
                    object: ObjectBuilder, json: &str, doc: &str, set_by: SetBy, min: T, max: T,
                ) -> ObjectBuilder {
                    if set_by == SetBy::Operator {
                        return object;
                    }
                    let kind = if T::INTEGER { Type::Integer } else { Type::Number };
                    object.property(
                        json,
                        ObjectBuilder::new()
                            .schema_type(SchemaType::from_iter([kind, Type::Null]))
                            .description(Some(one_line(doc)))
                            .minimum(Some(min.number()))
                            .maximum(Some(max.number())),
                    )
                }
                let operator_only: Vec<&str> = LIMITS
                    .iter()
                    .filter(|l| l.set_by == SetBy::Operator)
                    .map(|l| l.json_name)
                    .collect();
                let object = ObjectBuilder::new()
                    .description(Some(format!(
                        "Broker limits: a profile and explicit values over it. The broker applies \
                         each at or below its own configured value: a higher value is clamped to \
                         the broker's (and the broker logs it). The broker's operator alone sets \
                         {} (in the broker's configuration); the api refuses them here.",
                        operator_only.join(", ")
                    )))
                    .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                    .property(
                        "profile",
                        ObjectBuilder::new()
                            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                            .enum_values(Some(["default", "cloudflare"]))
                            .description(Some("The base set of limits; the values set here override it.")),
                    )
                    ;
                $(
                    let object = number::<$ty>(
                        object, $json, concat!($($doc, "\n"),+), set_by!($rule), $min, $max,
                    );
                )+
                utoipa::openapi::RefOr::T(object.into())
            }
        }

        #[cfg(feature = "utoipa")]
        impl utoipa::ToSchema for LimitsSpec {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed("Limits")
            }
        }
    };
}

const MIB: usize = 1024 * 1024;
const TIB: usize = 1 << 40;

limits_table! {
    /// Largest packet a client may send, advertised as Maximum Packet Size in CONNACK (bytes).
    max_packet_size "maxPacketSize": u32 {
        default: 1024 * 1024, cloudflare: 64 * 1024, range: 64 => 268_435_455, rule: lower,
    }
    /// Seconds a new connection has to send CONNECT (before its tenant is known).
    connect_timeout_secs "connectTimeoutSecs": u64 {
        default: 10, cloudflare: 10, range: 1 => 300, rule: operator,
    }
    /// Keep-alive below this is raised through Server Keep Alive (MQTT 5; 0 = no minimum).
    min_keep_alive_secs "minKeepAliveSecs": u16 {
        default: 0, cloudflare: 10, range: 0 => 65_535, rule: operator,
    }
    /// Keep-alive above this (or 0, meaning none) is lowered through Server Keep Alive (MQTT 5;
    /// 0 = no maximum).
    max_keep_alive_secs "maxKeepAliveSecs": u16 {
        default: 0, cloudflare: 0, range: 0 => 65_535, rule: lower_nonzero,
    }
    /// Session expiry above this is clamped and returned in CONNACK (seconds).
    max_session_expiry_secs "maxSessionExpirySecs": u32 {
        default: u32::MAX, cloudflare: 7 * 24 * 3600, range: 0 => u32::MAX, rule: lower,
    }
    /// Longest topic name or filter (bytes).
    max_topic_length "maxTopicLength": usize {
        default: 65_535, cloudflare: 65_535, range: 1 => 65_535, rule: lower,
    }
    /// Most levels in a topic name or filter.
    max_topic_depth "maxTopicDepth": usize {
        default: 128, cloudflare: 8, range: 1 => 1024, rule: lower,
    }
    /// Longest client id (bytes; CONNACK 0x85 beyond).
    max_client_id_length "maxClientIdLength": usize {
        default: 256, cloudflare: 64, range: 1 => 65_535, rule: lower,
    }
    /// Longest user name (bytes; CONNACK 0x86 beyond), checked before the credential is read.
    max_username_length "maxUsernameLength": usize {
        default: 65_535, cloudflare: 32, range: 0 => 65_535, rule: operator,
    }
    /// Longest password (bytes; CONNACK 0x86 beyond), checked before the credential is read. A
    /// token travels as the password: keep it at 4096 or more.
    max_password_length "maxPasswordLength": usize {
        default: 65_535, cloudflare: 4096, range: 0 => 65_535, rule: operator,
    }
    /// The broker's Receive Maximum: unacknowledged QoS 2 PUBLISHes a client may have towards it.
    receive_maximum "receiveMaximum": u16 {
        default: 1024, cloudflare: 64, range: 1 => 65_535, rule: lower,
    }
    /// Topic aliases a client may use towards the broker (0 disables inbound aliases).
    topic_alias_maximum "topicAliasMaximum": u16 {
        default: 64, cloudflare: 32, range: 0 => 65_535, rule: lower,
    }
    /// Unacknowledged QoS 1 and 2 deliveries towards a client (also bounded by its Receive
    /// Maximum).
    max_inflight "maxInflight": u16 {
        default: 1024, cloudflare: 64, range: 1 => 65_535, rule: lower,
    }
    /// Messages queued for one session beyond its in-flight window.
    max_queued_messages "maxQueuedMessages": usize {
        default: 10_000, cloudflare: 1000, range: 1 => 10_000_000, rule: lower,
    }
    /// Bytes queued for one session beyond its in-flight window; the in-flight window's
    /// deliveries are bounded by the same figure again.
    max_queued_bytes "maxQueuedBytes": usize {
        default: 64 * MIB, cloudflare: 16 * MIB, range: 1 => TIB, rule: lower,
    }
    /// Subscriptions one session may hold.
    max_subscriptions_per_client "maxSubscriptionsPerClient": usize {
        default: 10_000, cloudflare: 100, range: 1 => 10_000_000, rule: lower,
    }
    /// Subscribers one topic filter may have.
    max_subscribers_per_topic "maxSubscribersPerTopic": usize {
        default: 100_000, cloudflare: 1000, range: 1 => 10_000_000, rule: lower,
    }
    /// Connections a tenant may have open at once.
    max_connections "maxConnections": usize {
        default: 1_000_000, cloudflare: 100_000, range: 1 => 10_000_000, rule: lower,
    }
    /// Retained messages a tenant may hold.
    max_retained_messages "maxRetainedMessages": usize {
        default: 1_000_000, cloudflare: 100_000, range: 0 => 100_000_000, rule: lower,
    }
    /// Bytes of retained messages a tenant may hold (their weights, as for `max_queued_bytes`). A
    /// retained message that does not fit is refused as a whole: PUBACK/PUBREC 0x97.
    max_retained_bytes "maxRetainedBytes": usize {
        default: 1024 * MIB, cloudflare: 100 * MIB, range: 0 => TIB, rule: lower,
    }
    /// PUBLISH, SUBSCRIBE and UNSUBSCRIBE packets per second per client (0 = unlimited).
    max_publish_rate "maxPublishRate": f64 {
        default: 0.0, cloudflare: 10.0, range: 0.0 => 1_000_000.0, rule: lower_nonzero,
    }
    /// Packets a client may send in a burst above the rate (0 = as many as the rate).
    publish_burst "publishBurst": u32 {
        default: 0, cloudflare: 10, range: 0 => 1_000_000, rule: lower_nonzero,
    }
    /// How long a QoS 1 or 2 publisher waits for a congested subscriber's outbox to drain before
    /// that subscriber is disconnected (0x97) as a slow consumer (milliseconds).
    slow_consumer_grace_ms "slowConsumerGraceMs": u64 {
        default: 5000, cloudflare: 5000, range: 1 => 3_600_000, rule: operator,
    }
    /// How long a connection the broker closed keeps reading what its client still sends, so the
    /// client reads the last packets before the socket goes (milliseconds; 0 = close at once).
    close_linger_ms "closeLingerMs": u64 {
        default: 2000, cloudflare: 2000, range: 0 => 3_600_000, rule: operator,
    }
    /// Most closed connections lingering at once, across every listener; beyond it a socket
    /// closes at once.
    max_lingering "maxLingering": usize {
        default: 10_000, cloudflare: 10_000, range: 0 => 10_000_000, rule: operator,
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::profile(Profile::Default)
    }
}

impl Limits {
    /// [`Limits::connect_timeout_secs`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// [`Limits::slow_consumer_grace_ms`] as a duration.
    pub fn slow_consumer_grace(&self) -> Duration {
        Duration::from_millis(self.slow_consumer_grace_ms)
    }

    /// [`Limits::close_linger_ms`] as a duration.
    pub fn close_linger(&self) -> Duration {
        Duration::from_millis(self.close_linger_ms)
    }
}

impl LimitInfo {
    /// The documentation as one line.
    pub fn description(&self) -> String {
        one_line(self.doc)
    }
}

#[cfg(test)]
mod tests;
