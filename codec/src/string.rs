//! [`MqttString`]: a UTF-8 Encoded String of MQTT backed by `Bytes`, and the strict UTF-8 rules.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

use crate::DecodeError;

/// A UTF-8 string backed by `Bytes`: cloning it is cheap, and a decoded string is a slice of the
/// packet it came from. Equality, ordering and hashing are those of `str`, so a
/// `HashMap<MqttString, _>` can be looked up with a `&str`.
///
/// Strings decoded from the wire are checked against [MQTT-1.5.4-1] (well-formed, no surrogates)
/// and [MQTT-1.5.4-2] (no U+0000); strings built from Rust strings are checked for U+0000 and
/// length when they are encoded.
#[derive(Clone, Default)]
pub struct MqttString(ByteString);

impl MqttString {
    /// An empty string.
    pub const fn new() -> Self {
        Self(ByteString::from_static(""))
    }

    /// A string from a static `str`, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(ByteString::from_static(s))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UTF-8 bytes, sharing the buffer.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the string has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks bytes against the MQTT rules for UTF-8 Encoded Strings and wraps them.
    pub(crate) fn from_wire(bytes: Bytes) -> Result<Self, DecodeError> {
        // [MQTT-1.5.4-2] the null character U+0000 is not allowed.
        if bytes.contains(&0) {
            return Err(DecodeError::malformed(
                "MQTT-1.5.4-2",
                "string contains the null character",
            ));
        }
        // [MQTT-1.5.4-1] well-formed UTF-8: Rust's decoder rejects overlong forms, code points
        // above U+10FFFF and the surrogates U+D800..U+DFFF.
        match ByteString::try_from(bytes) {
            Ok(s) => Ok(Self(s)),
            Err(_) => Err(DecodeError::malformed(
                "MQTT-1.5.4-1",
                "string is not well-formed utf-8",
            )),
        }
    }
}

/// A string could not become an [`MqttString`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidString {
    /// Not well-formed UTF-8 [MQTT-1.5.4-1].
    #[error("string is not well-formed utf-8")]
    Utf8,
    /// Contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains the null character")]
    NullCharacter,
    /// Longer than 65,535 bytes.
    #[error("string of {0} bytes exceeds 65535")]
    TooLong(usize),
}

impl TryFrom<Bytes> for MqttString {
    type Error = InvalidString;

    /// Applies every rule a decoded string passes: well-formed UTF-8, no U+0000, at most 65,535
    /// bytes.
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        if bytes.len() > usize::from(u16::MAX) {
            return Err(InvalidString::TooLong(bytes.len()));
        }
        if bytes.contains(&0) {
            return Err(InvalidString::NullCharacter);
        }
        ByteString::try_from(bytes)
            .map(Self)
            .map_err(|_| InvalidString::Utf8)
    }
}

impl From<&'static str> for MqttString {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

impl From<String> for MqttString {
    fn from(s: String) -> Self {
        Self(ByteString::from(s))
    }
}

impl From<&String> for MqttString {
    fn from(s: &String) -> Self {
        Self(ByteString::from(s.as_str()))
    }
}

impl From<MqttString> for String {
    fn from(s: MqttString) -> String {
        s.as_str().to_owned()
    }
}

impl Deref for MqttString {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MqttString {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for MqttString {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for MqttString {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MqttString {}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for MqttString {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MqttString {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for MqttString {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_string_with_null_is_malformed_per_1_5_4_2() {
        let e = MqttString::from_wire(Bytes::from_static(b"a\0b")).unwrap_err();
        assert_eq!(e.reason_code().0, 0x81);
        assert_eq!(e.rule(), "MQTT-1.5.4-2");
    }

    #[test]
    fn wire_string_with_encoded_surrogate_is_malformed_per_1_5_4_1() {
        // U+D800 encoded as if it were a scalar value.
        let e = MqttString::from_wire(Bytes::from_static(&[0xED, 0xA0, 0x80])).unwrap_err();
        assert_eq!(e.rule(), "MQTT-1.5.4-1");
        assert_eq!(e.reason_code().0, 0x81);
    }

    #[test]
    fn wire_string_with_overlong_encoding_is_malformed() {
        // '/' as an overlong two-byte sequence.
        let e = MqttString::from_wire(Bytes::from_static(&[0xC0, 0xAF])).unwrap_err();
        assert_eq!(e.rule(), "MQTT-1.5.4-1");
    }

    #[test]
    fn bom_is_kept_not_stripped_per_1_5_4_3() {
        let s = MqttString::from_wire(Bytes::from_static(&[0xEF, 0xBB, 0xBF, b'a'])).unwrap();
        assert_eq!(s.as_str(), "\u{FEFF}a");
    }

    #[test]
    fn try_from_bytes_rejects_what_the_wire_rejects() {
        assert_eq!(
            MqttString::try_from(Bytes::from_static(b"\0")),
            Err(InvalidString::NullCharacter)
        );
        assert_eq!(
            MqttString::try_from(Bytes::from_static(&[0xFF])),
            Err(InvalidString::Utf8)
        );
        assert_eq!(
            MqttString::try_from(Bytes::from(vec![b'a'; 65536])),
            Err(InvalidString::TooLong(65536))
        );
    }

    #[test]
    fn hashes_and_compares_like_str() {
        let mut m = std::collections::HashMap::new();
        m.insert(MqttString::from("a/b"), 1);
        assert_eq!(m.get("a/b"), Some(&1));
        let (a, b) = (MqttString::from("a"), MqttString::from(String::from("b")));
        assert!(a < b);
    }
}
