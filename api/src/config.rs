//! Typed configuration: defaults → TOML file → `STARLING_API__KEY` environment → flags.
//!
//! The loader takes its inputs as values (file text, an environment map), so tests never touch
//! the process environment. Secrets (the key-encryption key, the bootstrap token) may be given
//! inline or as `*_file` paths; they are redacted in `Debug`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// Secrets are `[redacted]` in `Debug` and `Display`.
pub use starling_types::Secret;

/// The api's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `postgres://...` or `sqlite://path`.
    pub database_url: String,
    /// Maximum database connections (Postgres).
    pub max_connections: u32,
    /// The public listener (REST, `/openapi.json`, `/healthz`, `/readyz`).
    pub public_addr: SocketAddr,
    /// The internal listener (`/internal/v1/...`, `/metrics`); never exposed by an Ingress.
    pub internal_addr: SocketAddr,
    /// Brokers' endpoints are `mqtts://<broker>.<namespace>.<domain>:8883`, and the on-publish
    /// hook's `broker` field is `<broker>.<namespace>.<domain>`.
    pub domain: String,
    /// When set, every broker's `endpoint` is this URL: one listener serves every broker and the
    /// token's key picks the broker (as `starling-dev` runs).
    pub endpoint: Option<String>,
    /// When set, every broker's `wsEndpoint` (where browsers connect over secure WebSockets) is
    /// this URL; otherwise `wss://<broker>.<namespace>.<domain>/mqtt`. The console's
    /// Content-Security-Policy allows connections to its origin (otherwise to `wss://*.<domain>`).
    pub ws_endpoint: Option<String>,
    /// Serve the web console at `/console/`.
    pub console: bool,
    /// Set by `starling-dev` only (never read from a file): its plain `ws://` listener, which
    /// the console offers beside wss and its Content-Security-Policy allows.
    #[serde(skip)]
    pub dev_plain_ws: Option<String>,
    /// Key-encryption key: 32 bytes, base64 or hex.
    pub kek: Option<Secret<String>>,
    /// A file holding the key-encryption key.
    pub kek_file: Option<String>,
    /// The bootstrap admin API token.
    pub bootstrap_token: Option<Secret<String>>,
    /// A file holding the bootstrap admin API token.
    pub bootstrap_token_file: Option<String>,
    /// The account the bootstrap token belongs to (32 lowercase hex characters).
    pub bootstrap_account: String,
    /// Live revocations allowed per broker. A revocation lives until its token's `exp` plus
    /// 300 s, or, for a token without `exp`, until the key that signed it is retired.
    pub max_revocations: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest page of a list (and the default).
    pub max_page_size: u32,
    /// Longest long-poll wait of the internal state route, in seconds.
    pub max_wait_secs: u64,
    /// How often expired revocations and retired keys are collected, in seconds.
    pub janitor_interval_secs: u64,
    /// The shortest time a retiring key keeps verifying after a rotation, in seconds.
    pub min_retire_secs: i64,
    /// Seconds a client of either listener has to send a request's headers, from the
    /// connection's start or the previous response; then the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a request's body has to arrive after its headers, on either listener; a body
    /// still arriving then is refused (400) and the connection closed.
    pub body_read_timeout_secs: u64,
    /// Connections open at once on the public listener; further ones wait in the backlog.
    pub public_max_connections: usize,
    /// Connections open at once on the internal listener (each broker pod holds one long-poll
    /// per broker it serves); further ones wait in the backlog.
    pub internal_max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            max_connections: 20,
            public_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            internal_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            domain: "starling.localhost".into(),
            endpoint: None,
            ws_endpoint: None,
            console: true,
            dev_plain_ws: None,
            kek: None,
            kek_file: None,
            bootstrap_token: None,
            bootstrap_token_file: None,
            bootstrap_account: "00000000000000000000000000000001".into(),
            max_revocations: 10_000,
            max_body_bytes: 64 * 1024,
            max_page_size: 100,
            max_wait_secs: 60,
            janitor_interval_secs: 5,
            min_retire_secs: 86_400,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            public_max_connections: 1024,
            internal_max_connections: 4096,
        }
    }
}

impl Config {
    /// What the public listener lets its clients hold.
    pub fn public_http_limits(&self) -> starling_http::HttpLimits {
        starling_http::HttpLimits {
            header_read_timeout_secs: self.header_read_timeout_secs,
            body_read_timeout_secs: self.body_read_timeout_secs,
            max_connections: self.public_max_connections,
        }
    }

    /// What the internal listener lets its clients hold.
    pub fn internal_http_limits(&self) -> starling_http::HttpLimits {
        starling_http::HttpLimits {
            header_read_timeout_secs: self.header_read_timeout_secs,
            body_read_timeout_secs: self.body_read_timeout_secs,
            max_connections: self.internal_max_connections,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML does not parse or has unknown fields.
    #[error("config: {0}")]
    Parse(String),
    /// Values are invalid; every problem is listed.
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Builds the configuration from an optional TOML text and the environment (only variables
    /// named `STARLING_API__<FIELD>` are read; numbers are parsed as numbers).
    pub fn load(
        toml_text: Option<&str>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = match toml_text {
            Some(t) => toml::from_str(t).map_err(|e| ConfigError::Parse(e.to_string()))?,
            None => toml::Table::new(),
        };
        for (k, v) in env {
            let Some(field) = k.strip_prefix("STARLING_API__") else {
                continue;
            };
            let value = match (v.parse::<i64>(), v.as_str()) {
                (Ok(n), _) => toml::Value::Integer(n),
                (_, "true") => toml::Value::Boolean(true),
                (_, "false") => toml::Value::Boolean(false),
                _ => toml::Value::String(v.clone()),
            };
            table.insert(field.to_ascii_lowercase(), value);
        }
        // Strings that happen to look like numbers (a hex key of digits) stay strings.
        for field in [
            "kek",
            "bootstrap_token",
            "bootstrap_account",
            "database_url",
            "domain",
            "endpoint",
            "ws_endpoint",
        ] {
            if let Some(toml::Value::Integer(n)) = table.get(field) {
                let s = n.to_string();
                table.insert(field.into(), toml::Value::String(s));
            }
        }
        Config::deserialize(table).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Every problem with the values, at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.database_url.is_empty() {
            problems.push("database_url is required (postgres://... or sqlite://...)".to_string());
        } else if !["postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|p| self.database_url.starts_with(p))
        {
            problems
                .push("database_url must start with postgres://, postgresql:// or sqlite:".into());
        }
        if self.kek.is_some() && self.kek_file.is_some() {
            problems.push("give kek or kek_file, not both".into());
        }
        if self.kek.is_none() && self.kek_file.is_none() {
            problems.push(
                "a key-encryption key is required (kek, kek_file, STARLING_API__KEK or STARLING_API__KEK_FILE)"
                    .into(),
            );
        }
        if self.bootstrap_token.is_some() && self.bootstrap_token_file.is_some() {
            problems.push("give bootstrap_token or bootstrap_token_file, not both".into());
        }
        if self.bootstrap_account.len() != 32
            || !self
                .bootstrap_account
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            problems.push("bootstrap_account must be 32 lowercase hex characters".into());
        }
        if self.public_addr == self.internal_addr && self.public_addr.port() != 0 {
            problems.push("public_addr and internal_addr must differ".into());
        }
        if self.max_connections == 0 {
            problems.push("max_connections must be at least 1".into());
        }
        if self.max_revocations == 0 {
            problems.push("max_revocations must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            problems.push("max_body_bytes must be at least 1024".into());
        }
        if !(1..=1000).contains(&self.max_page_size) {
            problems.push("max_page_size must be 1..=1000".into());
        }
        if !(1..=600).contains(&self.max_wait_secs) {
            problems.push("max_wait_secs must be 1..=600".into());
        }
        if self.janitor_interval_secs == 0 {
            problems.push("janitor_interval_secs must be at least 1".into());
        }
        if self.min_retire_secs < 0 {
            problems.push("min_retire_secs must not be negative".into());
        }
        problems.extend(self.public_http_limits().problems("public"));
        problems.extend(self.internal_http_limits().problems("internal"));
        if self.domain.is_empty() {
            problems.push("domain must not be empty".into());
        }
        if let Some(e) = &self.endpoint {
            if !e.contains("://") || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push("endpoint must be a URL such as mqtts://localhost:8883".into());
            }
        }
        if let Some(e) = &self.ws_endpoint {
            if crate::console::origin(e).is_none_or(|o| !o.starts_with("ws")) {
                problems.push(
                    "ws_endpoint must be a ws:// or wss:// URL such as wss://localhost:8884/mqtt"
                        .into(),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_file_and_defaults() {
        let env = BTreeMap::from([
            ("STARLING_API__MAX_REVOCATIONS".to_string(), "5".to_string()),
            ("STARLING_API__KEK".to_string(), "1234".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ]);
        let c = Config::load(
            Some("database_url = \"sqlite::memory:\"\nmax_revocations = 7\n"),
            &env,
        )
        .unwrap();
        assert_eq!(c.max_revocations, 5);
        assert_eq!(c.kek, Some(Secret("1234".into())));
        assert_eq!(c.database_url, "sqlite::memory:");
        assert!(!format!("{c:?}").contains("1234"), "secrets are redacted");
    }

    #[test]
    fn the_console_can_be_switched_off_and_ws_endpoint_must_be_a_websocket_url() {
        let env = BTreeMap::from([("STARLING_API__CONSOLE".to_string(), "false".to_string())]);
        assert!(!Config::load(None, &env).unwrap().console);
        assert!(Config::default().console);
        for (url, ok) in [
            ("wss://mqtt.example.com/mqtt", true),
            ("ws://127.0.0.1:8080/mqtt", true),
            ("mqtts://localhost:8883", false),
            ("wss://", false),
        ] {
            let c = Config {
                ws_endpoint: Some(url.into()),
                ..Config::default()
            };
            let Err(ConfigError::Invalid(problems)) = c.validate() else {
                panic!("a default config lacks a database");
            };
            assert_eq!(
                !problems.iter().any(|p| p.contains("ws_endpoint")),
                ok,
                "{url}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Config::load(Some("databse_url = \"x\""), &BTreeMap::new()).is_err());
    }

    #[test]
    fn validate_reports_every_problem_and_requires_a_kek() {
        let c = Config {
            max_page_size: 0,
            ..Config::default()
        };
        let Err(ConfigError::Invalid(problems)) = c.validate() else {
            panic!("expected problems");
        };
        assert!(problems.iter().any(|p| p.contains("database_url")));
        assert!(problems.iter().any(|p| p.contains("key-encryption key")));
        assert!(problems.iter().any(|p| p.contains("max_page_size")));
    }
}
