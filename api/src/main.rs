//! `starling-api`: parse flags, load config, start tracing, run.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "starling-api", version, about = "Starling control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API (public listener) and the brokers' state feed (internal listener).
    Serve(ServeArgs),
    /// Print the OpenAPI document (as committed in api/openapi.json).
    Openapi,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<String>,
    /// `postgres://...` or `sqlite://path`.
    #[arg(long)]
    database_url: Option<String>,
    /// Public listener address.
    #[arg(long)]
    public_addr: Option<SocketAddr>,
    /// Internal listener address.
    #[arg(long)]
    internal_addr: Option<SocketAddr>,
    /// Domain of the brokers' endpoints.
    #[arg(long)]
    domain: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            // Written, not printed: a closed pipe (`| head`) is an error, not a panic.
            let doc = format!("{}\n", starling_api::routes::openapi::document());
            std::io::Write::write_all(&mut std::io::stdout().lock(), doc.as_bytes())
                .context("writing the document")
        }
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let text = match &args.config {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?)
        }
        None => None,
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut config = starling_api::config::Config::load(text.as_deref(), &env)?;
    if let Some(v) = args.database_url {
        config.database_url = v;
    }
    if let Some(v) = args.public_addr {
        config.public_addr = v;
    }
    if let Some(v) = args.internal_addr {
        config.internal_addr = v;
    }
    if let Some(v) = args.domain {
        config.domain = v;
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        starling_api::server::wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    starling_api::run(config, shutdown)
        .await
        .context("starling-api")?;
    Ok(())
}
