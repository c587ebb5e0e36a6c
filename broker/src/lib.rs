//! The Starling MQTT broker: listeners, sessions, routing, authentication and metrics.

pub mod transport;
