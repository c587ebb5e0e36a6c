//! The Starling operator: the `Broker` custom resource and its controller.
//!
//! `crd` defines the resource, `resources` turns a `Broker` into the Kubernetes objects that
//! run it, `certs` issues and renews operator-managed certificates, `api` talks to the Starling
//! control plane and `controller` reconciles.

pub mod certs;
pub mod crd;
pub mod resources;
