//! The Starling control plane: REST API, stores, signing keys and the internal state feed.

pub mod config;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod state;
pub mod store;
