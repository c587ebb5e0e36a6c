//! Accounts, API tokens and account discovery.

use serde::{Deserialize, Serialize};

use crate::Secret;

/// What an API token may do in its account. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read objects.
    Read,
    /// Create, change and delete namespaces and brokers; issue and revoke credentials.
    Write,
    /// Manage the account's API tokens.
    Admin,
}

impl Role {
    /// The role's name in the database and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// Parses a role's name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A role by its name (as the database holds it); the error names what it is not.
impl TryFrom<String> for Role {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Role::parse(&s).ok_or_else(|| format!("role {s:?}"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of an account creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct AccountCreate {
    /// A human name.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 200))]
    pub name: String,
}

/// A new account with its first admin token (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AccountCreated {
    /// Account id (32 lowercase hex characters).
    pub id: String,
    /// The name.
    pub name: String,
    /// The admin token's id.
    pub admin_token_id: String,
    /// The admin API token; shown only here.
    #[cfg_attr(feature = "utoipa", schema(value_type = String))]
    pub admin_token: Secret<String>,
}

/// The body of an API token creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct TokenCreate {
    /// A human name.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 200))]
    pub name: String,
    /// `read`, `write` or `admin`.
    pub role: Role,
}

/// An API token (never the token itself, except once in [`TokenCreated`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct TokenView {
    /// Token id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// RFC 3339.
    pub created_on: String,
}

/// A new API token (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// Token id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// The token; shown only here.
    #[cfg_attr(feature = "utoipa", schema(value_type = String))]
    pub token: Secret<String>,
}

/// A page of API tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TokenList {
    /// The tokens, by id (so by creation time).
    pub items: Vec<TokenView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One audit log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct AuditView {
    /// The API token id that made the change.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// RFC 3339 with microseconds.
    pub at: String,
}

/// The token making a request, as `GET /v1/account` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct CallerToken {
    /// Token id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The role: what the token may do in its account.
    pub role: Role,
    /// RFC 3339 with microseconds.
    pub created_on: String,
    /// The bootstrap token (set by the api's configuration), which may also create accounts.
    pub bootstrap: bool,
}

/// The account an API token acts for, with the token (`GET /v1/account`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct AccountView {
    /// Account id (32 lowercase hex characters): the `{account}` of the compatible routes, and
    /// `CLOUDFLARE_ACCOUNT_ID` for Cloudflare's CLI.
    pub id: String,
    /// The name.
    pub name: String,
    /// RFC 3339 with microseconds.
    pub created_on: String,
    /// The token that asked.
    pub token: CallerToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_stay_out_of_debug_and_travel_in_json() {
        let t = TokenCreated {
            id: "t1".into(),
            name: "ci".into(),
            role: Role::Write,
            token: Secret::new("sat_s3cr3t".into()),
        };
        let a = AccountCreated {
            id: "a1".into(),
            name: "acme".into(),
            admin_token_id: "t2".into(),
            admin_token: Secret::new("sat_adm1n".into()),
        };
        let shown = format!("{t:?} {a:?}");
        assert!(
            !shown.contains("sat_s3cr3t") && !shown.contains("sat_adm1n"),
            "{shown}"
        );
        assert!(shown.contains("ci") && shown.contains("acme"), "{shown}");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["token"], "sat_s3cr3t");
        assert_eq!(serde_json::to_value(&a).unwrap()["adminToken"], "sat_adm1n");
    }
}
