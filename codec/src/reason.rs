//! MQTT 5 reason codes, the packets each may appear in, and the mapping to 3.1.1 return codes.

use std::fmt;

/// An MQTT 5 reason code (section 2.4). 3.1.1 CONNACK return codes and SUBACK return codes are
/// decoded onto these (see [`ReasonCode::from_v3_connack`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReasonCode(pub u8);

macro_rules! reason_codes {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        impl ReasonCode {
            $(
                #[doc = $text]
                pub const $name: Self = Self($value);
            )*

            /// The name the specification gives the code, lowercase; `None` for unknown values.
            pub const fn name(self) -> Option<&'static str> {
                // The first name wins for shared values (0x00: success).
                $(
                    if self.0 == $value {
                        return Some($text);
                    }
                )*
                None
            }
        }
    };
}

reason_codes! {
    SUCCESS = 0x00, "success";
    NORMAL_DISCONNECTION = 0x00, "normal disconnection";
    GRANTED_QOS_0 = 0x00, "granted qos 0";
    GRANTED_QOS_1 = 0x01, "granted qos 1";
    GRANTED_QOS_2 = 0x02, "granted qos 2";
    DISCONNECT_WITH_WILL_MESSAGE = 0x04, "disconnect with will message";
    NO_MATCHING_SUBSCRIBERS = 0x10, "no matching subscribers";
    NO_SUBSCRIPTION_EXISTED = 0x11, "no subscription existed";
    CONTINUE_AUTHENTICATION = 0x18, "continue authentication";
    RE_AUTHENTICATE = 0x19, "re-authenticate";
    UNSPECIFIED_ERROR = 0x80, "unspecified error";
    MALFORMED_PACKET = 0x81, "malformed packet";
    PROTOCOL_ERROR = 0x82, "protocol error";
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83, "implementation specific error";
    UNSUPPORTED_PROTOCOL_VERSION = 0x84, "unsupported protocol version";
    CLIENT_IDENTIFIER_NOT_VALID = 0x85, "client identifier not valid";
    BAD_USER_NAME_OR_PASSWORD = 0x86, "bad user name or password";
    NOT_AUTHORIZED = 0x87, "not authorized";
    SERVER_UNAVAILABLE = 0x88, "server unavailable";
    SERVER_BUSY = 0x89, "server busy";
    BANNED = 0x8A, "banned";
    SERVER_SHUTTING_DOWN = 0x8B, "server shutting down";
    BAD_AUTHENTICATION_METHOD = 0x8C, "bad authentication method";
    KEEP_ALIVE_TIMEOUT = 0x8D, "keep alive timeout";
    SESSION_TAKEN_OVER = 0x8E, "session taken over";
    TOPIC_FILTER_INVALID = 0x8F, "topic filter invalid";
    TOPIC_NAME_INVALID = 0x90, "topic name invalid";
    PACKET_IDENTIFIER_IN_USE = 0x91, "packet identifier in use";
    PACKET_IDENTIFIER_NOT_FOUND = 0x92, "packet identifier not found";
    RECEIVE_MAXIMUM_EXCEEDED = 0x93, "receive maximum exceeded";
    TOPIC_ALIAS_INVALID = 0x94, "topic alias invalid";
    PACKET_TOO_LARGE = 0x95, "packet too large";
    MESSAGE_RATE_TOO_HIGH = 0x96, "message rate too high";
    QUOTA_EXCEEDED = 0x97, "quota exceeded";
    ADMINISTRATIVE_ACTION = 0x98, "administrative action";
    PAYLOAD_FORMAT_INVALID = 0x99, "payload format invalid";
    RETAIN_NOT_SUPPORTED = 0x9A, "retain not supported";
    QOS_NOT_SUPPORTED = 0x9B, "qos not supported";
    USE_ANOTHER_SERVER = 0x9C, "use another server";
    SERVER_MOVED = 0x9D, "server moved";
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E, "shared subscriptions not supported";
    CONNECTION_RATE_EXCEEDED = 0x9F, "connection rate exceeded";
    MAXIMUM_CONNECT_TIME = 0xA0, "maximum connect time";
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1, "subscription identifiers not supported";
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2, "wildcard subscriptions not supported";
}

/// Reason codes a CONNACK may carry (3.2.2.2).
pub(crate) const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// Reason codes a PUBACK or PUBREC may carry (3.4.2.1, 3.5.2.1).
pub(crate) const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// Reason codes a PUBREL or PUBCOMP may carry (3.6.2.1, 3.7.2.1).
pub(crate) const PUBREL_CODES: &[u8] = &[0x00, 0x92];
/// Reason codes a SUBACK may carry (3.9.3).
pub(crate) const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
/// Reason codes an UNSUBACK may carry (3.11.3).
pub(crate) const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// Reason codes a client's DISCONNECT may carry (3.14.2.1, "sent by" Client or both).
pub(crate) const DISCONNECT_CODES_FROM_CLIENT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
];
/// Reason codes a server's DISCONNECT may carry (3.14.2.1, "sent by" Server or both).
pub(crate) const DISCONNECT_CODES_FROM_SERVER: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96,
    0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// Reason codes a client's AUTH may carry (3.15.2.1): continue or re-authenticate.
pub(crate) const AUTH_CODES_FROM_CLIENT: &[u8] = &[0x18, 0x19];
/// Reason codes a server's AUTH may carry (3.15.2.1): success or continue.
pub(crate) const AUTH_CODES_FROM_SERVER: &[u8] = &[0x00, 0x18];

impl ReasonCode {
    /// True for 0x80 and above: the operation failed.
    pub const fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The 3.1.1 CONNACK return code (0..=5) closest to this reason code [MQTT-3.2.2-4]:
    ///
    /// | reason code | return code |
    /// |---|---|
    /// | 0x00 success | 0 accepted |
    /// | 0x84 unsupported protocol version | 1 unacceptable protocol version |
    /// | 0x85 client identifier not valid | 2 identifier rejected |
    /// | 0x86 bad user name or password, 0x8C bad authentication method | 4 bad user name or password |
    /// | 0x87 not authorized, 0x8A banned | 5 not authorized |
    /// | anything else (0x88 server unavailable, 0x89 busy, 0x9C, 0x9D, 0x9F, 0x80..0x83, ...) | 3 server unavailable |
    pub const fn to_v3_connack(self) -> u8 {
        match self.0 {
            0x00 => 0,
            0x84 => 1,
            0x85 => 2,
            0x86 | 0x8C => 4,
            0x87 | 0x8A => 5,
            _ => 3,
        }
    }

    /// The reason code a 3.1.1 CONNACK return code stands for; `None` for the reserved 6..=255.
    pub const fn from_v3_connack(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::SUCCESS),
            1 => Some(Self::UNSUPPORTED_PROTOCOL_VERSION),
            2 => Some(Self::CLIENT_IDENTIFIER_NOT_VALID),
            3 => Some(Self::SERVER_UNAVAILABLE),
            4 => Some(Self::BAD_USER_NAME_OR_PASSWORD),
            5 => Some(Self::NOT_AUTHORIZED),
            _ => None,
        }
    }

    /// The 3.1.1 SUBACK return code: granted QoS 0..=2, or 0x80 for every failure.
    pub const fn to_v3_suback(self) -> u8 {
        if self.0 <= 2 { self.0 } else { 0x80 }
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode(0x{:02X})", self.0)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "0x{:02X} {name}", self.0),
            None => write!(f, "0x{:02X}", self.0),
        }
    }
}

impl From<ReasonCode> for u8 {
    fn from(r: ReasonCode) -> u8 {
        r.0
    }
}
