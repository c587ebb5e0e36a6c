//! Route tests: every endpoint of both route sets through `app(state).oneshot(..)` over a real
//! SQLite store (the store suite runs both backends; the Python tier runs these routes against
//! Postgres over real HTTP). One module per resource; the test client is in `client.rs`.

#[path = "../common/mod.rs"]
mod common;

#[macro_use]
mod client;

mod brokers;
mod compat;
mod credentials;
mod internal;
mod keys;
mod namespaces;
mod revocations;
mod service;
mod tokens;
