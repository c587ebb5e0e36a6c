//! `starling-broker`: parse flags, load the configuration, start tracing and run the broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use starling_broker::config::{AuthMode, Config, LogFormat, Overrides, SyncPolicy};
use tokio_util::sync::CancellationToken;

/// The Starling MQTT broker.
#[derive(Debug, Parser)]
#[command(name = "starling-broker", version, about)]
#[command(args_conflicts_with_subcommands = true)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// An MQTT over TLS listener (repeatable), e.g. 0.0.0.0:8883.
    #[arg(long, value_name = "ADDR")]
    mqtts: Vec<SocketAddr>,
    /// An MQTT over WebSocket listener (repeatable), e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    ws: Vec<SocketAddr>,
    /// An MQTT over secure WebSocket listener (repeatable), e.g. 0.0.0.0:8884; it also takes raw
    /// MQTT over TLS.
    #[arg(long, value_name = "ADDR")]
    wss: Vec<SocketAddr>,
    /// PEM certificate chain of the TLS listeners (reloaded when it changes).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listeners.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM bundle of CAs whose client certificates TLS listeners require (mTLS).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Make (or reuse) a local CA and server certificate in DIR for the TLS listeners; clients
    /// trust DIR/ca.pem.
    #[arg(long, value_name = "DIR")]
    dev_tls: Option<PathBuf>,
    /// Managed mode: the api's internal URL (repeatable; one per --broker-id).
    #[arg(long, value_name = "URL")]
    control_plane: Vec<String>,
    /// Managed mode: the broker id in the api (repeatable).
    #[arg(long, value_name = "ID")]
    broker_id: Vec<String>,
    /// Managed mode: a file holding the broker secret (repeatable).
    #[arg(long, value_name = "FILE")]
    broker_secret_file: Vec<PathBuf>,
    /// Where state is kept: retained messages and persistent sessions (DIR/store/), and the
    /// managed state, so a restart (or one during a control-plane outage) loses nothing.
    /// Without it nothing is written to disk.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When a stored write is durable: sync (fsync before the acknowledgement, the default) or
    /// interval (fsync every --storage-interval-ms; a crash can lose the last interval).
    #[arg(long, value_enum, value_name = "POLICY")]
    storage_sync: Option<SyncArg>,
    /// Milliseconds between commits with --storage-sync interval (default 100).
    #[arg(long, value_name = "N")]
    storage_interval_ms: Option<u64>,
    /// A store that does not open is moved aside and the broker starts with what could be
    /// kept, instead of refusing to start.
    #[arg(long)]
    storage_repair: bool,
    /// MiB of the store's pages kept in memory (default 32).
    #[arg(long, value_name = "N")]
    storage_cache_mb: Option<u64>,
    /// A NATS server of the cluster this replica joins (repeatable), e.g. nats://127.0.0.1:4222;
    /// adds to `[cluster] nats`.
    #[arg(long, value_name = "URL")]
    cluster_nats: Vec<String>,
    /// Copies JetStream keeps of each tenant's stream of QoS 1/2 messages (1 to 5; default the
    /// NATS servers known, at most 3); `[cluster] stream_replicas`.
    #[arg(long, value_name = "N")]
    cluster_stream_replicas: Option<usize>,
    /// How long each tenant's stream keeps a QoS 1/2 message, in seconds (default 86400);
    /// `[cluster] stream_max_age_secs`.
    #[arg(long = "cluster-stream-max-age", value_name = "SECS")]
    cluster_stream_max_age_secs: Option<u64>,
    /// The most each tenant's stream holds, in bytes (default 1 GiB); `[cluster] stream_max_bytes`.
    #[arg(long, value_name = "BYTES")]
    cluster_stream_max_bytes: Option<u64>,
    /// How long a replica may go unheard on NATS before the others take it for dead and take
    /// over its clients' sessions and wills, in seconds (default 5); `[cluster]
    /// replica_timeout_secs`.
    #[arg(long = "cluster-replica-timeout", value_name = "SECS")]
    cluster_replica_timeout_secs: Option<u64>,
    /// Public keys of the tenant `default` (JWKS, OKP/Ed25519 keys with kid), reloaded on change.
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// Revoked token ids (jti) of the tenant `default`, one per line, reloaded on change.
    #[arg(long, value_name = "FILE")]
    revocations: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SyncArg {
    Sync,
    Interval,
}

/// What else the binary does besides running the broker.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Drains the broker running on this host (its `/drain`, which answers only over loopback)
    /// and waits until it has: the Kubernetes preStop hook. Exits 0 once drained.
    Drain {
        /// The broker's HTTP listener, reached over loopback.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        http: SocketAddr,
        /// Gives up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout_secs: u64,
    },
}

/// Asks the broker at `http` to drain and waits for its answer (at most `timeout`).
fn drain(http: SocketAddr, timeout: std::time::Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&http, std::time::Duration::from_secs(5))
        .with_context(|| format!("cannot reach the broker's HTTP listener at {http}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /drain HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .with_context(|| format!("no answer from {http} within {timeout:?}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.get(9..12).unwrap_or_default();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    anyhow::ensure!(status == "200", "{http} answered {status}: {body}");
    println!("{body}");
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthArg {
    None,
    Token,
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    if let Some(Command::Drain { http, timeout_secs }) = flags.command {
        return drain(http, std::time::Duration::from_secs(timeout_secs));
    }
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
        mqtts: flags.mqtts.clone(),
        ws: flags.ws.clone(),
        wss: flags.wss.clone(),
        tls_cert: flags.tls_cert.clone(),
        tls_key: flags.tls_key.clone(),
        tls_client_ca: flags.tls_client_ca.clone(),
        dev_tls: flags.dev_tls.clone(),
        control_plane: flags.control_plane.clone(),
        broker_id: flags.broker_id.clone(),
        broker_secret_file: flags.broker_secret_file.clone(),
        data_dir: flags.data_dir.clone(),
        jwks: flags.jwks.clone(),
        revocations: flags.revocations.clone(),
        storage_sync: flags.storage_sync.map(|s| match s {
            SyncArg::Sync => SyncPolicy::Sync,
            SyncArg::Interval => SyncPolicy::Interval,
        }),
        storage_interval_ms: flags.storage_interval_ms,
        storage_repair: flags.storage_repair,
        storage_cache_mb: flags.storage_cache_mb,
        cluster_nats: flags.cluster_nats.clone(),
        cluster_stream_replicas: flags.cluster_stream_replicas,
        cluster_stream_max_age_secs: flags.cluster_stream_max_age_secs,
        cluster_stream_max_bytes: flags.cluster_stream_max_bytes,
        cluster_replica_timeout_secs: flags.cluster_replica_timeout_secs,
    };
    let config = Config::load(file.as_deref(), std::env::vars(), &overrides)?;
    init_tracing(config.log.format);
    // One process-wide crypto provider, ring (the TLS code names it explicitly as well).
    let _ = rustls::crypto::ring::default_provider().install_default();
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
