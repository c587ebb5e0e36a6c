//! MQTT topics and filters as NATS subjects.
//!
//! Layout: `starling.<tenant>.msg.<level>.<level>…` for ordinary topics and
//! `starling.<tenant>.sys.<level>…` for topics whose first level starts with `$`, so the
//! wildcard filters `#` and `+/…` (which never match `$` topics [MQTT-4.7.2-1]) map onto
//! subjects under `msg` only. A QoS 1 or 2 message goes under `dmsg` / `dsys` instead
//! ([`durable_topic_to_subject`]): the tenant's JetStream stream captures those two classes,
//! so QoS 0 traffic never loads JetStream. Each MQTT level (and the tenant) is one NATS token:
//!
//! - bytes `!`..`~` other than `.`, `*`, `>` and the escape `~` stand for themselves;
//! - every other byte of the level's UTF-8 (those four, space and other whitespace, control
//!   characters, anything outside ASCII) is written `~XX` (two upper-case hex digits);
//! - an empty level, which NATS does not allow as a token, is the token `~` alone.
//!
//! The mapping is exact and reversible: [`subject_to_topic`] gives back the tenant and topic.
//! A filter's `+` is `*`; a trailing `#` is `>`, and because `a/#` also matches `a`
//! [MQTT-4.7.1-2], [`filter_to_subjects`] gives two subjects for it (`….a` and `….a.>`).

use smallvec::SmallVec;

/// The first token of every subject the broker uses.
pub const ROOT: &str = "starling";
/// The escape character of levels.
pub const ESCAPE: u8 = b'~';

const MSG: &str = "msg";
const SYS: &str = "sys";
const DURABLE_MSG: &str = "dmsg";
const DURABLE_SYS: &str = "dsys";
const BATCH: &str = "batch";

fn is_plain(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && !matches!(b, b'.' | b'*' | b'>' | ESCAPE)
}

/// A reversible byte-wise escaping of names into tokens: a byte `plain` accepts stands for
/// itself, every other byte is `escape` and two upper-case hex digits, and the empty name is
/// `escape` alone. Each name has exactly one spelling.
pub(crate) struct Escaping {
    pub(crate) escape: u8,
    pub(crate) plain: fn(u8) -> bool,
}

impl Escaping {
    /// Appends `name` as a token.
    pub(crate) fn push(&self, out: &mut String, name: &str) {
        if name.is_empty() {
            out.push(self.escape as char);
            return;
        }
        for &b in name.as_bytes() {
            if (self.plain)(b) {
                out.push(b as char);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push(self.escape as char);
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
    }

    /// Reads one token back into the name it stands for; `None` when it is not one that
    /// [`Escaping::push`] writes.
    pub(crate) fn decode(&self, token: &str) -> Option<String> {
        let bytes = token.as_bytes();
        if bytes == [self.escape] {
            return Some(String::new());
        }
        if bytes.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == self.escape {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = hex_value(hex[0])?;
                let lo = hex_value(hex[1])?;
                let v = (hi << 4) | lo;
                // Only bytes that must be escaped are: one spelling per name.
                if (self.plain)(v) {
                    return None;
                }
                out.push(v);
                i += 3;
            } else if (self.plain)(b) {
                out.push(b);
                i += 1;
            } else {
                return None;
            }
        }
        String::from_utf8(out).ok()
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The escaping of levels and tenant names in subjects.
const LEVELS: Escaping = Escaping {
    escape: ESCAPE,
    plain: is_plain,
};

/// Appends one level (or tenant name) as a NATS token.
pub fn push_token(out: &mut String, level: &str) {
    LEVELS.push(out, level);
}

/// Reads one token back into the level it stands for; `None` when it is not one that
/// [`push_token`] writes.
pub fn decode_token(token: &str) -> Option<String> {
    LEVELS.decode(token)
}

/// `starling.<tenant>`: every subject of one tenant is under it.
pub fn tenant_prefix(tenant: &str) -> String {
    let mut s = String::with_capacity(ROOT.len() + tenant.len() + 1);
    s.push_str(ROOT);
    s.push('.');
    push_token(&mut s, tenant);
    s
}

fn class(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        SYS
    } else {
        MSG
    }
}

/// The subject a QoS 0 message published to `topic` (a valid MQTT topic name) in `tenant`
/// goes to.
pub fn topic_to_subject(tenant: &str, topic: &str) -> String {
    subject_of(tenant, topic, false)
}

/// The subject a QoS 1 or 2 message published to `topic` in `tenant` goes to: the one of
/// [`topic_to_subject`] with the class `dmsg` / `dsys`, which the tenant's stream captures.
pub fn durable_topic_to_subject(tenant: &str, topic: &str) -> String {
    subject_of(tenant, topic, true)
}

/// The subject the QoS 0 messages of `tenant` travel on, packed in frames
/// ([`super::frame`]): `starling.<tenant>.batch`.
pub fn batch_subject(tenant: &str) -> String {
    format!("{}.{BATCH}", tenant_prefix(tenant))
}

/// The subjects the JetStream stream of `tenant` captures: every QoS 1 and 2 message.
pub fn durable_subjects(tenant: &str) -> [String; 2] {
    let prefix = tenant_prefix(tenant);
    [
        format!("{prefix}.{DURABLE_MSG}.>"),
        format!("{prefix}.{DURABLE_SYS}.>"),
    ]
}

/// The subject of `subject` (made by [`topic_to_subject`] or [`filter_to_subjects`]) in the
/// durable class: the same levels, where QoS 1 and 2 messages go.
pub fn to_durable(subject: &str) -> String {
    let mut tokens = subject.splitn(4, '.');
    let (root, tenant, class, rest) = (
        tokens.next().unwrap_or(""),
        tokens.next().unwrap_or(""),
        tokens.next().unwrap_or(""),
        tokens.next(),
    );
    let class = if class == SYS {
        DURABLE_SYS
    } else {
        DURABLE_MSG
    };
    match rest {
        Some(rest) => format!("{root}.{tenant}.{class}.{rest}"),
        None => format!("{root}.{tenant}.{class}"),
    }
}

fn subject_of(tenant: &str, topic: &str, durable: bool) -> String {
    let mut s = tenant_prefix(tenant);
    let first = topic.split('/').next().unwrap_or("");
    s.push('.');
    s.push_str(match (class(first), durable) {
        (c, false) => c,
        (SYS, true) => DURABLE_SYS,
        (_, true) => DURABLE_MSG,
    });
    for level in topic.split('/') {
        s.push('.');
        push_token(&mut s, level);
    }
    s
}

/// The tenant and topic of a subject made by [`topic_to_subject`]; `None` for any other.
pub fn subject_to_topic(subject: &str) -> Option<(String, String)> {
    let mut tokens = subject.split('.');
    if tokens.next()? != ROOT {
        return None;
    }
    let tenant = decode_token(tokens.next()?)?;
    let class_token = match tokens.next()? {
        MSG | DURABLE_MSG => MSG,
        SYS | DURABLE_SYS => SYS,
        _ => return None,
    };
    let mut topic = String::new();
    let mut levels = 0usize;
    for (i, token) in tokens.enumerate() {
        levels += 1;
        if i > 0 {
            topic.push('/');
        }
        let level = decode_token(token)?;
        if i == 0 && class(&level) != class_token {
            return None;
        }
        topic.push_str(&level);
    }
    // A topic has at least one level.
    (levels > 0).then_some((tenant, topic))
}

/// The subjects whose messages a subscription to `filter` (a valid MQTT topic filter, without
/// `$share/…`) in `tenant` needs: one, or two for a filter ending in `/#`.
pub fn filter_to_subjects(tenant: &str, filter: &str) -> SmallVec<[String; 2]> {
    let mut s = tenant_prefix(tenant);
    let first = filter.split('/').next().unwrap_or("");
    s.push('.');
    // A filter that starts with a wildcard never matches `$` topics; a literal first level
    // picks its own class.
    s.push_str(if first == "+" || first == "#" {
        MSG
    } else {
        class(first)
    });
    let mut out = SmallVec::new();
    for level in filter.split('/') {
        match level {
            "#" => {
                // `a/#` matches `a` too [MQTT-4.7.1-2]; `#` alone has no parent level.
                if filter != "#" {
                    out.push(s.clone());
                }
                s.push_str(".>");
                out.push(s);
                return out;
            }
            "+" => s.push_str(".*"),
            _ => {
                s.push('.');
                push_token(&mut s, level);
            }
        }
    }
    out.push(s);
    out
}

/// The NATS queue group of the shared subscription `$share/{group}/{filter}` of `tenant`: one
/// member of it, on any replica, receives each message.
pub fn queue_group(tenant: &str, group: &str, filter: &str) -> String {
    let mut s = String::new();
    push_token(&mut s, tenant);
    s.push('.');
    push_token(&mut s, group);
    for level in filter.split('/') {
        s.push('.');
        push_token(&mut s, level);
    }
    s
}

/// Whether a NATS subscription subject (with `*` and `>`) matches a published subject (the
/// rules of the NATS server: `*` one token, `>` one or more at the end).
pub fn nats_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_nats_token(t: &str) -> bool {
        !t.is_empty() && t.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'.')
    }

    #[test]
    fn examples() {
        assert_eq!(topic_to_subject("t1", "a/b"), "starling.t1.msg.a.b");
        assert_eq!(
            topic_to_subject("acme.eu", "a.b/*/>/~/x y"),
            "starling.acme~2Eeu.msg.a~2Eb.~2A.~3E.~7E.x~20y"
        );
        assert_eq!(topic_to_subject("t", "/"), "starling.t.msg.~.~");
        assert_eq!(topic_to_subject("t", "$SYS/x"), "starling.t.sys.$SYS.x");
        assert_eq!(topic_to_subject("t", "é"), "starling.t.msg.~C3~A9");
        assert_eq!(
            filter_to_subjects("t", "#").as_slice(),
            ["starling.t.msg.>"]
        );
        assert_eq!(
            filter_to_subjects("t", "a/+/#").as_slice(),
            ["starling.t.msg.a.*", "starling.t.msg.a.*.>"]
        );
        assert_eq!(
            filter_to_subjects("t", "$SYS/#").as_slice(),
            ["starling.t.sys.$SYS", "starling.t.sys.$SYS.>"]
        );
        assert_eq!(queue_group("t", "g", "a/+"), "t.g.a.+");
        assert_eq!(durable_topic_to_subject("t", "a/b"), "starling.t.dmsg.a.b");
        assert_eq!(
            durable_topic_to_subject("t", "$SYS/x"),
            "starling.t.dsys.$SYS.x"
        );
        assert_eq!(to_durable("starling.t.msg.a.*.>"), "starling.t.dmsg.a.*.>");
        assert_eq!(to_durable("starling.t.sys.$SYS"), "starling.t.dsys.$SYS");
        assert_eq!(
            durable_subjects("t"),
            ["starling.t.dmsg.>", "starling.t.dsys.>"]
        );
    }

    #[test]
    fn foreign_or_malformed_subjects_are_not_topics() {
        for s in [
            "other.t.msg.a",
            "starling.t.other.a",
            "starling.t.msg",
            "starling.t.msg.a~2",
            "starling.t.msg.~41",
            "starling.t.msg.~zz",
            "starling.t.msg.$a",
            "starling.t.sys.a",
            "starling.t.dsys.a",
            "starling.t.dmsg.$a",
            "starling.t.msg.~FF",
            "starling.t.msg.a.*",
        ] {
            assert_eq!(subject_to_topic(s), None, "{s}");
        }
    }

    /// Any valid topic: no `+`, `#` or U+0000, at least one character.
    fn topic() -> impl Strategy<Value = String> {
        "[^+#\u{0}]{1,40}"
    }

    /// Topics and filters over a small alphabet of levels, so that matches are frequent; the
    /// levels include every character the mapping escapes.
    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "", "a", "b", "$a", "$", "a.b", "*", ">", "~", "~41", " ", "é", "a b", ".",
        ])
        .prop_map(str::to_owned)
    }

    fn small_topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn small_filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 0..5),
            any::<bool>(),
        )
            .prop_filter_map("a filter has a level", |(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            })
    }

    proptest! {
        #[test]
        fn every_topic_round_trips(tenant in "[^\u{0}]{0,12}", topic in topic()) {
            let subject = topic_to_subject(&tenant, &topic);
            prop_assert!(subject.split('.').all(is_nats_token), "{}", subject);
            prop_assert_eq!(subject_to_topic(&subject), Some((tenant.clone(), topic.clone())));
            let durable = durable_topic_to_subject(&tenant, &topic);
            prop_assert_eq!(&durable, &to_durable(&subject));
            prop_assert!(durable_subjects(&tenant).iter().any(|p| nats_matches(p, &durable)));
            prop_assert!(!durable_subjects(&tenant).iter().any(|p| nats_matches(p, &subject)));
            prop_assert_eq!(subject_to_topic(&durable), Some((tenant, topic)));
        }

        #[test]
        fn nats_matches_exactly_when_mqtt_does(filter in small_filter(), topic in small_topic()) {
            let subject = topic_to_subject("t", &topic);
            let subjects = filter_to_subjects("t", &filter);
            let nats = subjects.iter().any(|p| nats_matches(p, &subject));
            prop_assert_eq!(nats, starling_codec::topic::matches_levels(&filter, &topic), "{:?} {}", subjects, subject);
            let durable = durable_topic_to_subject("t", &topic);
            prop_assert_eq!(nats, subjects.iter().any(|p| nats_matches(&to_durable(p), &durable)));
            // A message matches at most one of a filter's subjects: never delivered twice.
            prop_assert!(subjects.iter().filter(|p| nats_matches(p, &subject)).count() <= 1);
        }

        #[test]
        fn tenants_never_see_each_other(a in "[^\u{0}]{0,6}", b in "[^\u{0}]{0,6}", filter in small_filter(), topic in small_topic()) {
            prop_assume!(a != b);
            let subject = topic_to_subject(&a, &topic);
            prop_assert!(!filter_to_subjects(&b, &filter).iter().any(|p| nats_matches(p, &subject)));
        }
    }
}
