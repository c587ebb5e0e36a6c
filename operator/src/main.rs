//! `starling-operator`: `crd` prints the CRD, `run` runs the controller.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use clap::{Parser, Subcommand, ValueEnum};
use kube::Api;
use prometheus_client::registry::Registry;
use starling_operator::{
    api::HttpControlPlane,
    controller::{self, Context},
    leader::{LeaseLock, Timing},
    metrics::Metrics,
    resources::{BrokerHook, ClusterSecrets, Settings, allowed_host},
    tenancy::Tenancy,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "starling-operator",
    version,
    about = "Kubernetes operator for Starling brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Broker CustomResourceDefinition as YAML.
    Crd {
        /// Leave out the CEL validation rules (for Kubernetes older than 1.25).
        #[arg(long)]
        without_cel: bool,
    },
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print, as YAML, the objects the operator would apply for the Broker in FILE (no Secrets),
    /// for review or offline validation.
    Render(RenderArgs),
}

#[derive(clap::Args)]
struct RenderArgs {
    /// A YAML file with one Broker.
    #[arg(long, value_name = "FILE")]
    broker: PathBuf,
    /// NATS servers the brokers join (as `run --broker-cluster-nats`).
    #[arg(long, value_delimiter = ',')]
    broker_cluster_nats: Vec<String>,
    /// Render each Broker's NetworkPolicy, with metrics open to this namespace.
    #[arg(long, value_name = "NAMESPACE")]
    monitoring_namespace: Option<String>,
    /// The api's internal URL given to brokers as --control-plane.
    #[arg(
        long,
        default_value = "http://starling-api-internal.starling-system.svc:8081"
    )]
    control_plane_url: String,
    /// Image of starling-broker for Brokers that name none.
    #[arg(long, default_value = concat!("ghcr.io/starling-mqtt/starling-broker:", env!("CARGO_PKG_VERSION")))]
    broker_image: String,
}

fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.broker)
        .with_context(|| format!("cannot read {}", args.broker.display()))?;
    let broker: starling_operator::crd::Broker = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a Broker", args.broker.display()))?;
    let settings = Settings {
        default_image: args.broker_image.clone(),
        control_plane_url: args.control_plane_url.clone(),
        broker_hook: BrokerHook::default(),
        tenancy: Tenancy::default(),
        network_policy: args.monitoring_namespace.clone(),
        cluster_nats: args.broker_cluster_nats.clone(),
        cluster_secrets: ClusterSecrets::default(),
        nats_auth: None,
    };
    let mut out = String::new();
    for object in starling_operator::render::render(&broker, &settings)? {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&object)?);
    }
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())
        .context("writing the objects")?;
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Base URL of the Starling api's admin routes (for example http://starling-api:8080).
    #[arg(long, env = "STARLING_OPERATOR_API_URL")]
    api_url: String,
    /// File holding the api's admin token (mounted from a Secret).
    #[arg(long, env = "STARLING_OPERATOR_API_TOKEN_FILE")]
    api_token_file: PathBuf,
    /// The api's internal URL given to brokers as --control-plane; the api URL when unset.
    #[arg(long, env = "STARLING_OPERATOR_CONTROL_PLANE_URL")]
    control_plane_url: Option<String>,
    /// Image of starling-broker for Brokers that name none.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_IMAGE", default_value = concat!("ghcr.io/starling-mqtt/starling-broker:", env!("CARGO_PKG_VERSION")))]
    broker_image: String,
    /// Let every broker's on-publish hook use http:// URLs (brokers allow only https:// by default).
    #[arg(long, env = "STARLING_OPERATOR_BROKER_HOOK_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    broker_hook_allow_http: bool,
    /// Let every broker's on-publish hook reach loopback, private and other non-public addresses.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_HOOK_ALLOW_PRIVATE_ADDRESSES", default_value_t = false, action = clap::ArgAction::Set)]
    broker_hook_allow_private_addresses: bool,
    /// Hook hosts exempt from both rules above, comma-separated DNS names or IP addresses
    /// (for example moderation.default.svc).
    #[arg(
        long,
        env = "STARLING_OPERATOR_BROKER_HOOK_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = ""
    )]
    broker_hook_allowed_hosts: Vec<String>,
    /// NATS servers every broker joins its replicas through (repeatable or comma-separated; each
    /// pod gets `--cluster-nats URL`). Without any, a Broker runs at most one replica.
    #[arg(
        long,
        env = "STARLING_OPERATOR_BROKER_CLUSTER_NATS",
        value_delimiter = ',',
        default_value = ""
    )]
    broker_cluster_nats: Vec<String>,
    /// A Secret in the operator's namespace (--lease-namespace) with the brokers' NATS
    /// credentials: `user` and `password`, or `token`, or `nats.creds`. Each Broker gets a copy
    /// its pods read (environment variables and a mounted file), never the ConfigMap.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_CLUSTER_SECRET")]
    broker_cluster_secret: Option<String>,
    /// A Secret in the operator's namespace with the NATS servers' CA (`ca.crt`) and, for a
    /// client certificate, `tls.crt` and `tls.key`; copied like --broker-cluster-secret.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_CLUSTER_TLS_SECRET")]
    broker_cluster_tls_secret: Option<String>,
    /// For the chart's NATS: a Secret in the operator's namespace with the NATS operator and
    /// system account keys (created once when missing, never changed). Each Broker then gets a
    /// NATS account and a user of its own, which may touch only its tenant, in place of
    /// --broker-cluster-secret. Needs --broker-cluster-nats-config.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_CLUSTER_NATS_KEYS")]
    broker_cluster_nats_keys: Option<String>,
    /// With --broker-cluster-nats-keys: the Secret in the operator's namespace the operator
    /// writes the NATS servers' auth configuration to (`auth.conf`, which they include).
    #[arg(long, env = "STARLING_OPERATOR_BROKER_CLUSTER_NATS_CONFIG")]
    broker_cluster_nats_config: Option<String>,
    /// For the chart's NATS: a Secret in the operator's namespace holding the NATS servers' CA
    /// (`ca.crt`, `ca.key`; created once when missing, never changed). With it the operator
    /// keeps the servers' certificate in --broker-cluster-nats-tls-server and the CA certificate
    /// alone in --broker-cluster-tls-secret, which every Broker's copy is made from.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_CLUSTER_NATS_TLS_CA")]
    broker_cluster_nats_tls_ca: Option<String>,
    /// With --broker-cluster-nats-tls-ca: the Secret the NATS servers mount (`tls.crt`,
    /// `tls.key`, `ca.crt`), issued for the hosts of --broker-cluster-nats and renewed before
    /// it expires.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_CLUSTER_NATS_TLS_SERVER")]
    broker_cluster_nats_tls_server: Option<String>,
    /// With --broker-cluster-nats-keys: the NATS URLs the operator publishes accounts through
    /// (repeatable or comma-separated); --broker-cluster-nats when unset.
    #[arg(
        long,
        env = "STARLING_OPERATOR_NATS_ACCOUNTS_URL",
        value_delimiter = ',',
        default_value = ""
    )]
    nats_accounts_url: Vec<String>,
    /// Timeout of one on-publish hook request of every broker, in milliseconds; the broker's
    /// default when unset.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_HOOK_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    broker_hook_timeout_ms: Option<u64>,
    /// Further pub/sub namespaces a Kubernetes namespace's Brokers may use, comma-separated
    /// KUBERNETES_NAMESPACE=PUBSUB_NAMESPACE entries (for example team-a=shared); without an
    /// entry a Broker may only use the pub/sub namespace named like its Kubernetes namespace.
    #[arg(
        long,
        env = "STARLING_OPERATOR_TENANCY_ALLOW",
        value_delimiter = ',',
        default_value = ""
    )]
    tenancy_allow: Vec<String>,
    /// Give each Broker's pods a NetworkPolicy: MQTT from anywhere, the metrics port only from
    /// --monitoring-namespace.
    #[arg(long, env = "STARLING_OPERATOR_BROKER_NETWORK_POLICIES", default_value_t = false, action = clap::ArgAction::Set)]
    broker_network_policies: bool,
    /// The namespace of Prometheus, which alone reaches the brokers' metrics port.
    #[arg(
        long,
        env = "STARLING_OPERATOR_MONITORING_NAMESPACE",
        default_value = "monitoring"
    )]
    monitoring_namespace: String,
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(
        long,
        env = "STARLING_OPERATOR_WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    watch_namespaces: Vec<String>,
    /// Elect a leader with a Lease, so several replicas can run.
    #[arg(long, env = "STARLING_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "starling-system")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "STARLING_OPERATOR_LEASE_NAME",
        default_value = "starling-operator"
    )]
    lease_name: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "STARLING_OPERATOR_HTTP", default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// Timeout of one call to the api, in seconds.
    #[arg(long, env = "STARLING_OPERATOR_API_TIMEOUT_SECS", default_value_t = 10)]
    api_timeout_secs: u64,
    /// Most reconciles running at once, per watched namespace (or in all, when it watches all);
    /// more Brokers wait in the queue.
    #[arg(long, env = "STARLING_OPERATOR_MAX_CONCURRENT_RECONCILES", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    max_concurrent_reconciles: u16,
    /// Secrets to create in the operator's namespace when missing, never changing one that
    /// exists: a JSON list of {"name": ..., "data": {KEY: TEMPLATE}, "labels": {...}}, where
    /// `{random}` in a template stands for one random value per Secret (set by the chart).
    #[arg(long, env = "STARLING_OPERATOR_GENERATE_SECRETS", default_value = "")]
    generate_secrets: String,
    /// How long to wait for the api token file to appear, in seconds.
    #[arg(
        long,
        env = "STARLING_OPERATOR_API_TOKEN_WAIT_SECS",
        default_value_t = 300
    )]
    api_token_wait_secs: u64,
    /// Log format.
    #[arg(
        long,
        env = "STARLING_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { without_cel } => {
            let yaml = if without_cel {
                starling_operator::crd::crd_yaml_without_cel()
            } else {
                starling_operator::crd::crd_yaml()
            }
            .context("rendering the CRD")?;
            // Written, not printed: a closed pipe (`| head`) is an error, not a panic.
            std::io::Write::write_all(&mut std::io::stdout().lock(), yaml.as_bytes())
                .context("writing the CRD")
        }
        Command::Render(args) => render(&args),
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(run(*args))
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    info!("shutting down");
    token.cancel();
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    ready: CancellationToken,
}

async fn render_metrics(State(s): State<HttpState>) -> (StatusCode, String) {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (StatusCode::OK, text),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
    }
}

async fn readyz(State(s): State<HttpState>) -> StatusCode {
    if s.ready.is_cancelled() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Reads the api token file, waiting up to `wait` while it is missing or empty: a Secret the
/// operator has just generated reaches its own optional volume only at the kubelet's next sync.
async fn wait_for_token(path: &std::path::Path, wait: Duration) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut told = false;
    loop {
        let token = std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        if !token.is_empty() {
            return Ok(token);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the api token file {} is missing or empty after {wait:?}",
            path.display()
        );
        if !told {
            info!(file = %path.display(), "waiting for the api token file");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;

    let mut settings = Settings {
        default_image: args.broker_image.clone(),
        control_plane_url: args
            .control_plane_url
            .clone()
            .unwrap_or_else(|| args.api_url.clone()),
        broker_hook: BrokerHook {
            allow_http: args.broker_hook_allow_http,
            allow_private_addresses: args.broker_hook_allow_private_addresses,
            allowed_hosts: args
                .broker_hook_allowed_hosts
                .iter()
                .filter(|h| !h.trim().is_empty())
                .map(|h| allowed_host(h))
                .collect::<Result<_, _>>()
                .context("--broker-hook-allowed-hosts")?,
            timeout_ms: args.broker_hook_timeout_ms,
        },
        tenancy: Tenancy::parse(&args.tenancy_allow).context("--tenancy-allow")?,
        network_policy: args
            .broker_network_policies
            .then(|| args.monitoring_namespace.clone()),
        cluster_nats: args
            .broker_cluster_nats
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect(),
        cluster_secrets: ClusterSecrets {
            namespace: args.lease_namespace.clone(),
            auth: args
                .broker_cluster_secret
                .clone()
                .filter(|s| !s.trim().is_empty()),
            tls: args
                .broker_cluster_tls_secret
                .clone()
                .filter(|s| !s.trim().is_empty()),
        },
        nats_auth: None,
    };
    info!(broker_hook = ?settings.broker_hook, "hook address rules for every broker");
    info!(tenancy_allow = ?settings.tenancy, "pub/sub namespaces beyond each Kubernetes namespace's own");
    let namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API server")?;

    // Secrets the chart leaves to the operator (admin token, KEK, database password): created
    // once, never changed, so that no render of the chart regenerates them.
    let generate = starling_operator::generated::parse(&args.generate_secrets)
        .context("--generate-secrets")?;
    if !generate.is_empty() {
        let created = starling_operator::generated::ensure(
            &Api::namespaced(client.clone(), &args.lease_namespace),
            &generate,
        )
        .await
        .context("generating the chart's Secrets")?;
        for s in &created {
            info!(secret = %s.metadata.name.as_deref().unwrap_or_default(), namespace = %args.lease_namespace, "generated");
        }
    }
    // The chart's NATS: its certificates, its auth configuration, and the connection accounts
    // are published on.
    let named = |s: &Option<String>| {
        s.as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
    };
    let nats_ca = match (
        named(&args.broker_cluster_nats_tls_ca),
        named(&args.broker_cluster_nats_tls_server),
    ) {
        (None, None) => None,
        (Some(ca), Some(server)) => {
            let for_brokers = settings
                .cluster_secrets
                .tls
                .clone()
                .context("--broker-cluster-nats-tls-ca needs --broker-cluster-tls-secret")?;
            anyhow::ensure!(
                !settings.cluster_nats.is_empty(),
                "--broker-cluster-nats-tls-ca needs --broker-cluster-nats"
            );
            let secrets = starling_operator::nats_tls::NatsTlsSecrets {
                ca,
                server,
                client: for_brokers,
            };
            let api = Api::namespaced(client.clone(), &args.lease_namespace);
            let ca_pem = starling_operator::nats_tls::ensure(
                &api,
                &args.lease_namespace,
                &secrets,
                &settings.cluster_nats,
            )
            .await
            .context("setting up the NATS servers' certificates")?;
            // Checked again twice a day, so the servers' certificate is renewed in its window
            // however long the operator runs.
            let (namespace, urls) = (args.lease_namespace.clone(), settings.cluster_nats.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(12 * 3600));
                every.tick().await;
                loop {
                    every.tick().await;
                    if let Err(e) =
                        starling_operator::nats_tls::ensure(&api, &namespace, &secrets, &urls).await
                    {
                        tracing::warn!(error = %e, "the NATS servers' certificates were not checked");
                    }
                }
            });
            Some(ca_pem)
        }
        _ => anyhow::bail!(
            "--broker-cluster-nats-tls-ca and --broker-cluster-nats-tls-server go together"
        ),
    };
    let nats_keys = args
        .broker_cluster_nats_keys
        .as_deref()
        .filter(|s| !s.trim().is_empty());
    if let Some(keys_name) = nats_keys {
        let config_name = args
            .broker_cluster_nats_config
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .context("--broker-cluster-nats-keys needs --broker-cluster-nats-config")?;
        anyhow::ensure!(
            !settings.cluster_nats.is_empty(),
            "--broker-cluster-nats-keys needs --broker-cluster-nats"
        );
        let keys = starling_operator::nats_auth::ensure(
            &Api::namespaced(client.clone(), &args.lease_namespace),
            &args.lease_namespace,
            keys_name,
            config_name,
        )
        .await
        .context("setting up the NATS auth")?;
        let urls: Vec<String> = args
            .nats_accounts_url
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let urls = if urls.is_empty() {
            settings.cluster_nats.clone()
        } else {
            urls
        };
        let publisher =
            starling_operator::nats_auth::NatsPublisher::connect(&keys, &urls, nats_ca.as_deref())
                .await
                .context("connecting to NATS")?;
        info!(
            servers = urls.len(),
            "each Broker gets a NATS account and user of its own"
        );
        settings.nats_auth = Some(std::sync::Arc::new(
            starling_operator::nats_auth::NatsAuth::new(keys, std::sync::Arc::new(publisher)),
        ));
    }
    let token = wait_for_token(
        &args.api_token_file,
        Duration::from_secs(args.api_token_wait_secs),
    )
    .await?;
    let control_plane = HttpControlPlane::new(
        &args.api_url,
        token,
        Duration::from_secs(args.api_timeout_secs),
    )
    .context("building the api client")?;

    let version = client
        .apiserver_version()
        .await
        .context("reading the API server's version")?;
    info!(version = %version.git_version, "connected to the API server");
    controller::check_discovery(&client)
        .await
        .context("checking the API server's resources")?;

    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));

    let ready = CancellationToken::new();
    let state = HttpState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding {}", args.http))?;
    let http_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });

    let lock = args.leader_election.then(|| {
        let identity = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("starling-operator-{}", std::process::id()));
        LeaseLock::new(
            Api::namespaced(client.clone(), &args.lease_namespace),
            &args.lease_name,
            &identity,
            Timing::default(),
        )
    });
    // Ready means "up and connected", never "leading": a standby replica must count as ready, or
    // a rolling upgrade waits forever for a new pod that cannot lead until the old one is gone.
    ready.cancel();
    let scope = match &lock {
        Some(lock) => match lock.lead(&shutdown).await {
            Some(lost) => lost,
            None => return Ok(()),
        },
        None => shutdown.child_token(),
    };
    metrics.leader.set(1);

    info!(namespaces = ?namespaces, "starting the controller");
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(control_plane),
        settings,
        metrics.clone(),
    ));
    controller::run(
        ctx,
        &namespaces,
        args.max_concurrent_reconciles,
        scope.clone(),
    )
    .await;
    metrics.leader.set(0);

    if let Some(lock) = &lock {
        if let Err(e) = lock.release().await {
            error!(error = %e, "releasing the lease");
        }
    }
    let lost = !shutdown.is_cancelled();
    shutdown.cancel();
    let _ = server.await;
    anyhow::ensure!(
        !lost,
        "lost the leader lease; exiting so a restart rejoins the election"
    );
    Ok(())
}
