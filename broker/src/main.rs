//! `starling-broker`: parse flags, load the configuration, start tracing and run the broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use starling_broker::config::{AuthMode, Config, LogFormat, Overrides};
use tokio_util::sync::CancellationToken;

/// The Starling MQTT broker.
#[derive(Debug, Parser)]
#[command(name = "starling-broker", version, about)]
struct Flags {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A plaintext MQTT listener (repeatable), e.g. 127.0.0.1:1883.
    #[arg(long, value_name = "ADDR")]
    mqtt: Vec<SocketAddr>,
    /// How clients authenticate: none (one tenant, everything allowed) or token.
    #[arg(long, value_enum)]
    auth: Option<AuthArg>,
    /// The HTTP listener for /healthz, /readyz and /metrics (default 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthArg {
    None,
    Token,
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let file = match &flags.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let overrides = Overrides {
        mqtt: flags.mqtt.clone(),
        auth: flags.auth.map(|a| match a {
            AuthArg::None => AuthMode::None,
            AuthArg::Token => AuthMode::Token,
        }),
        http: flags.http,
    };
    let config = Config::load(file.as_deref(), std::env::vars(), &overrides)?;
    init_tracing(config.log.format);
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        starling_broker::run(config, shutdown).await
    })?;
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
