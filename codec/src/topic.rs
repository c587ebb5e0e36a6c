//! Topic names and topic filters (section 4.7), shared subscriptions (section 4.8) and matching.
//! Used by the decoder and by the broker's router and access control.

/// Why a topic name or filter is not valid; `rule()` names the normative statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// At most 65,535 bytes [MQTT-4.7.3-3].
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// No U+0000 [MQTT-4.7.3-2].
    #[error("topic contains the null character")]
    NullCharacter,
    /// A topic name contains `+` or `#` [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard")]
    Wildcard,
    /// `#` is alone in the last level [MQTT-4.7.1-1].
    #[error("multi-level wildcard is not alone in the last level")]
    MultiLevelWildcard,
    /// `+` is alone in its level [MQTT-4.7.1-2].
    #[error("single-level wildcard is not alone in its level")]
    SingleLevelWildcard,
    /// The ShareName is at least one character [MQTT-4.8.2-1].
    #[error("shared subscription group name is empty")]
    ShareNameEmpty,
    /// The ShareName has no `+` or `#` [MQTT-4.8.2-2].
    #[error("shared subscription group name contains a wildcard")]
    ShareName,
    /// `$share/{ShareName}` is followed by `/` and a topic filter [MQTT-4.8.2-2].
    #[error("shared subscription has no topic filter")]
    ShareFilter,
    /// The filter of a shared subscription is itself a shared subscription
    /// (`$share/g/$share/h/x`). The specification does not forbid it; a server refuses it,
    /// because the filter routed (`$share/h/x`, a literal) would not be the one a reader of it
    /// takes it for (`x`).
    #[error("shared subscription inside a shared subscription")]
    NestedShare,
}

impl TopicError {
    /// The message, lowercase.
    pub const fn message(&self) -> &'static str {
        match self {
            Self::Empty => "topic is empty",
            Self::TooLong => "topic is longer than 65535 bytes",
            Self::NullCharacter => "topic contains the null character",
            Self::Wildcard => "topic name contains a wildcard",
            Self::MultiLevelWildcard => "multi-level wildcard is not alone in the last level",
            Self::SingleLevelWildcard => "single-level wildcard is not alone in its level",
            Self::ShareNameEmpty => "shared subscription group name is empty",
            Self::ShareName => "shared subscription group name contains a wildcard",
            Self::ShareFilter => "shared subscription has no topic filter",
            Self::NestedShare => "shared subscription inside a shared subscription",
        }
    }

    /// The id of the rule that was broken, as MQTT 5.0 numbers it (3.1.1 numbers the wildcard
    /// rules [MQTT-4.7.1-2] and [MQTT-4.7.1-3]).
    pub const fn rule(&self) -> &'static str {
        match self {
            Self::Empty => "MQTT-4.7.3-1",
            Self::TooLong => "MQTT-4.7.3-3",
            Self::NullCharacter => "MQTT-4.7.3-2",
            Self::Wildcard => "MQTT-3.3.2-2",
            Self::MultiLevelWildcard => "MQTT-4.7.1-1",
            Self::SingleLevelWildcard => "MQTT-4.7.1-2",
            Self::ShareNameEmpty => "MQTT-4.8.2-1",
            Self::ShareName => "MQTT-4.8.2-2",
            Self::ShareFilter => "MQTT-4.8.2-2",
            // Not a rule of the specification: section 4.8.2, and CONFORMANCE.md.
            Self::NestedShare => "4.8.2",
        }
    }
}

const SHARE_PREFIX: &str = "$share/";

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name (PUBLISH, will, response topic): not empty, no wildcards.
pub fn validate_topic_name(s: &str) -> Result<(), TopicError> {
    check_common(s)?;
    if s.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a topic filter (SUBSCRIBE, UNSUBSCRIBE): `#` alone in the last level, `+` alone in its
/// level, and for `$share/{group}/{filter}` a valid group and filter.
pub fn validate_topic_filter(s: &str) -> Result<(), TopicError> {
    check_common(s)?;
    let filter = match parse_shared(s)? {
        Some((_, filter)) => filter,
        None => s,
    };
    check_levels(filter)
}

/// Checks a topic filter as written, level by level, with no meaning given to `$share/`: not
/// empty, `#` alone in the last level, `+` alone in its level. For filters that are not
/// subscribed as such (access rules, token ACLs), where `$share/g/x` names the topics below it.
pub fn validate_filter_levels(s: &str) -> Result<(), TopicError> {
    check_common(s)?;
    check_levels(s)
}

fn check_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcard);
        }
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into the group and the filter; `Ok(None)` for a filter that
/// is not shared. The filter part is not validated here ([`validate_topic_filter`] does both).
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        // `$share/group` alone: the group may be fine, the filter is missing.
        if rest.is_empty() {
            return Err(TopicError::ShareNameEmpty);
        }
        if rest.contains(['+', '#']) {
            return Err(TopicError::ShareName);
        }
        return Err(TopicError::ShareFilter);
    };
    if group.is_empty() {
        return Err(TopicError::ShareNameEmpty);
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::ShareName);
    }
    if inner.is_empty() {
        return Err(TopicError::ShareFilter);
    }
    Ok(Some((group, inner)))
}

/// What a SUBSCRIBE or UNSUBSCRIBE filter names: the group of a shared subscription (`None`
/// for an ordinary one) and the filter that is routed, which is also the one access control
/// must check (`$share/{group}/` removed, nothing else). A shared subscription whose filter is
/// itself shared is refused ([`TopicError::NestedShare`]).
pub fn subscription(full: &str) -> Result<(Option<&str>, &str), TopicError> {
    match parse_shared(full)? {
        Some((_, filter)) if filter.starts_with(SHARE_PREFIX) => Err(TopicError::NestedShare),
        Some((group, filter)) => Ok((Some(group), filter)),
        None => Ok((None, full)),
    }
}

/// Whether a topic name lies in the namespace of shared subscriptions (`$share/...`). Servers
/// should keep clients from exchanging messages on `$` topics (section 4.7.2); a PUBLISH or a
/// will to one of these is refused, so that no filter can be routed to them.
pub fn is_share_namespace(topic: &str) -> bool {
    topic.starts_with(SHARE_PREFIX)
}

/// True when `topic` matches `filter`. A shared filter matches as its inner filter. Topics that
/// start with `$` are not matched by a filter starting with a wildcard [MQTT-4.7.2-1].
/// Neither argument is validated: call this with a valid filter and topic name.
pub fn matches(filter: &str, topic: &str) -> bool {
    let filter = match parse_shared(filter) {
        Ok(Some((_, inner))) => inner,
        _ => filter,
    };
    matches_levels(filter, topic)
}

/// True when `topic` matches `filter` as written, with no meaning given to `$share/` (see
/// [`validate_filter_levels`]). Topics that start with `$` are not matched by a filter
/// starting with a wildcard [MQTT-4.7.2-1].
pub fn matches_levels(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
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

/// Whether every topic matched by `filter` is also matched by `allowed`, both taken as
/// written (see [`validate_filter_levels`]; `filter` is assumed valid, `allowed` is checked,
/// and an invalid one covers nothing). An access rule or token ACL that allows `allowed`
/// allows a subscription to `filter` only when this holds: a wider filter is refused, never
/// silently narrowed.
pub fn covers(allowed: &str, filter: &str) -> bool {
    if validate_filter_levels(allowed).is_err() {
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

/// Whether some topic is matched by both filters, taken as written (both assumed valid): a
/// subscription to one could receive a message published to a topic the other names.
pub fn overlap(a: &str, b: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_level_wildcard_must_be_last_and_alone_per_4_7_1_1() {
        for ok in ["#", "a/#", "a/b/#", "+/#", "/#"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/a", "a/b#", "##"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MultiLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn single_level_wildcard_must_fill_its_level_per_4_7_1_2() {
        for ok in ["+", "+/+", "a/+/b", "/+", "+/"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a+", "a/b+/c", "++", "+a"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::SingleLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_topics_are_rejected_per_4_7_3_1() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn topic_with_null_is_rejected_per_4_7_3_2() {
        assert_eq!(validate_topic_name("a\0"), Err(TopicError::NullCharacter));
        assert_eq!(validate_topic_filter("a\0"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn topic_longer_than_65535_bytes_is_rejected_per_4_7_3_3() {
        let long = "a".repeat(65_536);
        assert_eq!(validate_topic_name(&long), Err(TopicError::TooLong));
    }

    #[test]
    fn topic_name_with_wildcards_is_rejected_per_3_3_2_2() {
        for bad in ["a/+", "#", "a/#", "sport+"] {
            assert_eq!(validate_topic_name(bad), Err(TopicError::Wildcard), "{bad}");
        }
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x"), Ok(()));
    }

    #[test]
    fn shared_subscription_syntax_per_4_8_2_1_and_4_8_2_2() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$share/g/a/b"), Ok(Some(("g", "a/b"))));
        assert_eq!(parse_shared("$share/g/#"), Ok(Some(("g", "#"))));
        assert_eq!(parse_shared("$share//a"), Err(TopicError::ShareNameEmpty));
        assert_eq!(parse_shared("$share/"), Err(TopicError::ShareNameEmpty));
        assert_eq!(parse_shared("$share/g+/a"), Err(TopicError::ShareName));
        assert_eq!(parse_shared("$share/g#/a"), Err(TopicError::ShareName));
        assert_eq!(parse_shared("$share/g"), Err(TopicError::ShareFilter));
        assert_eq!(parse_shared("$share/g/"), Err(TopicError::ShareFilter));
        assert_eq!(
            validate_topic_filter("$share/g/a/#/b"),
            Err(TopicError::MultiLevelWildcard)
        );
        assert_eq!(validate_topic_filter("$share/g/+/x"), Ok(()));
    }

    #[test]
    fn a_shared_subscription_inside_a_shared_subscription_is_refused() {
        assert_eq!(subscription("a/b"), Ok((None, "a/b")));
        assert_eq!(subscription("$share/g/a/#"), Ok((Some("g"), "a/#")));
        assert_eq!(
            subscription("$share/g/$share/h/x"),
            Err(TopicError::NestedShare)
        );
        assert_eq!(
            subscription("$share/g/$share/"),
            Err(TopicError::NestedShare)
        );
        // `$share` alone is an ordinary level, not a shared subscription.
        assert_eq!(subscription("$share/g/$share"), Ok((Some("g"), "$share")));
        assert_eq!(subscription("$share/g"), Err(TopicError::ShareFilter));
        // Still valid syntax: a SUBACK refuses it, the decoder does not.
        assert_eq!(validate_topic_filter("$share/g/$share/h/x"), Ok(()));
    }

    #[test]
    fn topics_in_the_share_namespace_are_recognised() {
        assert!(is_share_namespace("$share/g/x"));
        assert!(is_share_namespace("$share/"));
        assert!(!is_share_namespace("$share"));
        assert!(!is_share_namespace("$shared/x"));
        assert!(!is_share_namespace("a/$share/x"));
    }

    #[test]
    fn wildcards_match_as_in_section_4_7() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "a/b/c", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("$share/g/a/+", "a/b", true),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards_per_4_7_2_1() {
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/uptime", "$SYS/uptime"));
        assert!(matches("$SYS/#", "$SYS/uptime"));
        assert!(matches("$SYS/+", "$SYS/uptime"));
    }
}
