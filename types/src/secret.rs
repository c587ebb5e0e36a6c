//! [`Secret`]: a value that never shows in logs, errors or `Debug` output.

use serde::{Deserialize, Serialize};

/// A secret value: serialized as itself (it is meant to travel, e.g. in the state feed), but
/// `Debug` and `Display` print `[redacted]`, so a struct holding one can derive `Debug` and be
/// logged whole. Read it with [`Secret::expose`] where it is used.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(pub T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub const fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> std::fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(feature = "utoipa")]
impl<T: utoipa::PartialSchema> utoipa::PartialSchema for Secret<T> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        T::schema()
    }
}

#[cfg(feature = "utoipa")]
impl<T: utoipa::ToSchema> utoipa::ToSchema for Secret<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value_and_serde_keeps_it() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Holder {
            name: String,
            key: Secret<String>,
        }
        let h = Holder {
            name: "k1".into(),
            key: Secret::new("s3cr3t-seed".into()),
        };
        let shown = format!("{h:?} {} {:?}", h.key, h.key);
        assert!(!shown.contains("s3cr3t-seed"), "{shown}");
        assert!(
            shown.contains("[redacted]") && shown.contains("k1"),
            "{shown}"
        );
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"name":"k1","key":"s3cr3t-seed"}"#);
        let back: Holder = serde_json::from_str(&json).unwrap();
        assert_eq!(back.key.expose(), "s3cr3t-seed");
    }
}
