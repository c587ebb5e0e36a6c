//! `starling-dev`: the whole product on one machine (the api on SQLite and an embedded broker),
//! with no configuration. See the crate's documentation.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "starling-dev",
    version,
    about = "Run Starling locally: the api on SQLite and an embedded broker, no configuration"
)]
struct Cli {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    run(args).await
}

async fn run(args: Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| starling_dev::default_data_dir(&env));
    let options = starling_dev::DevOptions {
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
    let dev = match starling_dev::start(options, shutdown.clone()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("starling-dev: {e}");
            std::process::exit(2);
        }
    };
    println!("{}", starling_dev::banner(&dev.info));
    starling_api::server::wait_for_signal().await;
    eprintln!("shutting down");
    dev.shutdown(shutdown).await;
    Ok(())
}
