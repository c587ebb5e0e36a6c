//! Namespaces.

use serde::{Deserialize, Serialize};

/// A namespace as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct NamespaceView {
    /// 32 lowercase hex characters.
    pub id: String,
    /// RFC 1035 label, globally unique (case-insensitive).
    pub name: String,
    /// Free text.
    pub description: String,
    /// RFC 3339 with microseconds.
    pub created_on: String,
    /// RFC 3339 with microseconds.
    pub modified_on: String,
}

/// The body of a namespace creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct NamespaceCreate {
    /// RFC 1035 label (1–63 letters, digits or `-`), globally unique.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 63,
            pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
        )
    )]
    pub name: String,
    /// Free text, at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            max_length = 1024,
            pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$"
        )
    )]
    pub description: Option<String>,
}

/// A page of namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NamespaceList {
    /// The namespaces, by name.
    pub items: Vec<NamespaceView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
