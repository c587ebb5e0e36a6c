//! Starling's data formats between processes, serde only (no I/O, no runtime).
//!
//! [`limits`] is the one table of the broker's limits. From it come the broker's configuration
//! types ([`LimitsConfig`] in `[limits]`, the effective [`Limits`]), what the api validates and
//! stores and the state feed carries ([`LimitsSpec`], also a `Broker`'s `spec.limits`), and the
//! rule that a tenant may tighten a limit but never raise it above the broker's
//! ([`Limits::tightened`]). A new limit is one more row of that table.
//!
//! Features: `schemars` (a `JsonSchema` for the operator's CRD), `utoipa` (a `ToSchema` for the
//! api's OpenAPI document).

pub mod feed;
pub mod jwk;
pub mod limits;
pub mod rest;
pub mod secret;

pub use limits::{LIMITS, LimitInfo, Limits, LimitsConfig, LimitsSpec, Profile, SetBy};
pub use secret::Secret;
