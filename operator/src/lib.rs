//! The Starling operator: the `Broker` custom resource and its controller.
//!
//! `crd` defines the resource, `resources` turns a `Broker` into the Kubernetes objects that
//! run it, `certs` issues and renews operator-managed certificates, `api` talks to the Starling
//! control plane, `tenancy` says which pub/sub namespaces a Kubernetes namespace may use,
//! `exposure` what clients connect to, `nats_auth` the brokers' NATS accounts and users on the
//! chart's NATS, and `controller` reconciles.

pub mod api;
pub mod certs;
pub mod controller;
pub mod crd;
pub mod error;
pub mod exposure;
pub mod generated;
pub mod leader;
pub mod metrics;
pub mod nats_auth;
pub mod nats_tls;
pub mod render;
pub mod resources;
pub mod tenancy;

pub use error::{Error, Result};
