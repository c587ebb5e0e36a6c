//! The bodies of the api's native REST routes (`/v1/...`): what the api serves and reads, what
//! the operator sends, what the `starling` command-line client sends and reads. Serde only; with
//! the `utoipa` feature each also has a `ToSchema` for the api's OpenAPI document.
//!
//! Pages (`*List`) carry `nextCursor`: pass it as `cursor` for the next page; `null` on the last.

mod accounts;
mod brokers;
mod credentials;
mod keys;
mod namespaces;
mod problem;
mod revocations;

pub use accounts::{
    AccountCreate, AccountCreated, AccountView, AuditView, CallerToken, Role, TokenCreate,
    TokenCreated, TokenList, TokenView,
};
pub use brokers::{
    BrokerCreate, BrokerCreated, BrokerList, BrokerPatch, BrokerSecret, BrokerView,
    MANAGED_BY_HEADER, MAX_EXPIRATION_SECS, ManagedBy, OnPublish,
};
pub use credentials::{IssuedList, IssuedView};
pub use keys::{KeyList, KeyView, Rotation};
pub use namespaces::{NamespaceCreate, NamespaceList, NamespaceView};
pub use problem::Problem;
pub use revocations::Revocation;
