//! The Starling MQTT broker: listeners, sessions, routing, authentication and metrics.
//!
//! [`start`] binds the configured listeners and returns a [`RunningBroker`]; [`run`] serves until
//! a cancellation token fires and then shuts down gracefully. `ARCHITECTURE.md` beside this
//! crate narrates the tasks, the channels and who owns what.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod control;
pub mod error;
pub mod hook;
pub mod http;
pub mod message;
pub mod metrics;
pub mod retained;
pub mod router;
pub mod server;
pub mod session;
pub mod storage;
pub mod tasks;
pub mod tenant;
pub mod tenant_limits;
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
pub use server::{RunningBroker, run, start};
