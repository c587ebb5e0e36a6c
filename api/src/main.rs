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
    /// Run everything locally: the api on SQLite and an embedded broker, no configuration.
    Dev(DevArgs),
}

#[derive(clap::Args)]
struct DevArgs {
    /// Where the database, keys, the admin token and the dev CA live
    /// (default: $XDG_DATA_HOME/starling or ~/.local/share/starling).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// The REST API.
    #[arg(long, default_value = "127.0.0.1:8000")]
    api_addr: SocketAddr,
    /// The internal listener (brokers' state feed, metrics).
    #[arg(long, default_value = "127.0.0.1:8001")]
    internal_addr: SocketAddr,
    /// MQTT over TCP.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// MQTT over WebSockets.
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws: SocketAddr,
    /// MQTT over TLS.
    #[arg(long, default_value = "127.0.0.1:8883")]
    mqtts: SocketAddr,
    /// MQTT over secure WebSockets.
    #[arg(long, default_value = "127.0.0.1:8884")]
    wss: SocketAddr,
    /// The broker's /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    broker_http: SocketAddr,
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
            println!("{}", starling_api::routes::openapi::document());
            Ok(())
        }
        Command::Serve(args) => serve(args).await,
        Command::Dev(args) => dev(args).await,
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
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    starling_api::run(config, shutdown)
        .await
        .context("starling-api")?;
    Ok(())
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| starling_api::dev::default_data_dir(&env));
    let options = starling_api::dev::DevOptions {
        data_dir,
        api: args.api_addr,
        internal: args.internal_addr,
        mqtt: args.mqtt,
        ws: args.ws,
        mqtts: args.mqtts,
        wss: args.wss,
        broker_http: args.broker_http,
    };
    let shutdown = CancellationToken::new();
    let dev = match starling_api::dev::start(options, shutdown.clone()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("starling-api dev: {e}");
            std::process::exit(2);
        }
    };
    println!("{}", starling_api::dev::banner(&dev.info));
    wait_for_signal().await;
    eprintln!("shutting down");
    dev.shutdown(shutdown).await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
