//! The Starling control plane: REST API, stores, signing keys and the internal state feed.
//!
//! `app(state)` builds the public router and `internal_app(state)` the internal one; `run`
//! connects the store, applies migrations, ensures the bootstrap token, binds both listeners and
//! serves until the shutdown token is cancelled. See `ARCHITECTURE.md`.

pub mod config;
pub mod console;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod state;
pub mod stats;
pub mod store;

pub use routes::{app, internal_app};
pub use server::{Running, run, start};
