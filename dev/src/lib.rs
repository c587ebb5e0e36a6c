//! `starling-dev`: the whole product on one machine, with no Postgres and no configuration.
//!
//! It keeps a SQLite database, the key-encryption key, the admin API token (mode 0600) and the
//! dev CA (`ca.pem`) in a data directory. It starts an embedded broker that serves every broker in
//! the database from one set of listeners (the token's `kid` picks the tenant), then the API,
//! whose brokers all show that one listener as their `endpoint` (`mqtts://localhost:<port>`,
//! which the dev certificate names); on first start it creates a namespace `demo` with a broker
//! `demo` through the API's own handlers. The embedded broker follows the store's change feed
//! in-process, so a revocation, a key rotation or a deletion made through the API reaches
//! connected clients at once. A broker's `on_publish.url` reaches it the same way, with the
//! broker's current hook key and its hostname `<broker>.<namespace>.localhost` as the hook's
//! `broker` field; the embedded broker allows http and loopback hook URLs, so a hook on the same
//! machine works. The banner prints the console's URL, the account id and the environment for
//! Cloudflare's CLI; the console's health charts show the embedded broker's counters, sampled
//! every 2 s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use http_body_util::BodyExt;
use starling_broker::auth::directory::{Directory, TenantState};
use starling_broker::config::{AuthMode, Config as BrokerConfig, ListenerConfig, ListenerKind};
use starling_broker::hook::{HookSettings, HookTarget};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use starling_api::config::{Config, Secret};
use starling_api::keys::{Kek, new_secret};
use starling_api::state::AppState;

/// Everything `dev` can be told; every default is a loopback address.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where the database, keys and the dev CA live.
    pub data_dir: PathBuf,
    /// The REST API.
    pub api: SocketAddr,
    /// The internal listener (state feed, metrics).
    pub internal: SocketAddr,
    /// MQTT over TCP.
    pub mqtt: SocketAddr,
    /// MQTT over WebSockets.
    pub ws: SocketAddr,
    /// MQTT over TLS.
    pub mqtts: SocketAddr,
    /// MQTT over secure WebSockets.
    pub wss: SocketAddr,
    /// The broker's `/healthz`, `/readyz` and `/metrics`.
    pub broker_http: SocketAddr,
}

impl DevOptions {
    /// The defaults, with the data directory given.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        DevOptions {
            data_dir,
            api: local(8000),
            internal: local(8001),
            mqtt: local(1883),
            ws: local(8080),
            mqtts: local(8883),
            wss: local(8884),
            broker_http: local(9090),
        }
    }
}

/// The default data directory: `$XDG_DATA_HOME/starling`, else `~/.local/share/starling`.
pub fn default_data_dir(env: &std::collections::BTreeMap<String, String>) -> PathBuf {
    match (env.get("XDG_DATA_HOME"), env.get("HOME")) {
        (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("starling"),
        (_, Some(h)) => PathBuf::from(h).join(".local/share/starling"),
        _ => PathBuf::from(".starling"),
    }
}

/// Why `dev` could not start. Each is one line that names what to change.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A port is taken or not bindable.
    #[error("cannot listen on {addr} ({flag}): {reason}; choose another with {flag} ADDR")]
    Port {
        /// The flag that sets it.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The data directory or a file in it.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What a started `dev` prints and tests use.
#[derive(Debug, Clone)]
pub struct DevInfo {
    /// The REST API's base URL.
    pub api_url: String,
    /// The admin API token.
    pub admin_token: String,
    /// The account the admin token acts for (`CLOUDFLARE_ACCOUNT_ID` for Cloudflare's CLI).
    pub account_id: String,
    /// A client token for broker `demo`, client id `demo-client`, topic ACL `#`.
    pub client_token: String,
    /// The dev CA.
    pub ca_path: PathBuf,
    /// The bound addresses.
    pub options: DevOptions,
}

/// A running `dev`.
pub struct Dev {
    /// What was printed.
    pub info: DevInfo,
    /// The api's shared state.
    pub state: AppState,
    /// The embedded broker.
    pub broker: starling_broker::RunningBroker,
    api_task: tokio::task::JoinHandle<Result<(), starling_api::server::ServerError>>,
}

impl Dev {
    /// Stops the broker (DISCONNECT 0x8B) and the api.
    pub async fn shutdown(self, shutdown: CancellationToken) {
        self.broker.shutdown().await;
        shutdown.cancel();
        let _ = self.api_task.await;
    }
}

fn secret_file(
    path: &Path,
    make: impl FnOnce() -> Result<String, DevError>,
) -> Result<String, DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(text.trim().to_string());
    }
    let value = make()?;
    let err = |e: std::io::Error| DevError::DataDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)?;
    f.write_all(b"\n").map_err(err)?;
    Ok(value)
}

fn bind_error(flag: &'static str, addr: SocketAddr, reason: impl ToString) -> DevError {
    DevError::Port {
        flag,
        addr,
        reason: reason.to_string(),
    }
}

/// Starts everything; returns once the api and the broker serve.
pub async fn start(options: DevOptions, shutdown: CancellationToken) -> Result<Dev, DevError> {
    let dir = options.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| DevError::DataDir {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The directory holds the admin token and the keys: owner only.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    let kek_text = secret_file(&dir.join("kek"), || {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| DevError::Other("no system randomness".into()))?;
        Ok(hex::encode(bytes))
    })?;
    let admin_token = secret_file(&dir.join("admin-token"), || {
        new_secret("stl_admin_").map_err(|e| DevError::Other(e.to_string()))
    })?;
    let kek = Kek::parse(&kek_text).map_err(|e| DevError::DataDir {
        path: dir.join("kek"),
        reason: e.to_string(),
    })?;

    // The embedded broker first: every broker's `endpoint` names its one mqtts listener.
    let broker = start_broker(&options, &dir)
        .await
        .inspect_err(|_| shutdown.cancel())?;
    let listeners = BrokerListeners {
        mqtts_port: broker
            .addr(ListenerKind::Mqtts)
            .map_or(options.mqtts.port(), |a| a.port()),
        wss_port: broker
            .addr(ListenerKind::Wss)
            .map_or(options.wss.port(), |a| a.port()),
        ws: broker.addr(ListenerKind::Ws).unwrap_or(options.ws),
    };
    let api = start_api(
        &options,
        &dir,
        kek,
        &kek_text,
        &admin_token,
        &listeners,
        &shutdown,
    )
    .await;
    let (running, client_token) = match api {
        Ok(started) => started,
        Err(e) => {
            broker.shutdown().await;
            shutdown.cancel();
            return Err(e);
        }
    };
    let state = running.state.clone();

    // Port 0 picks a free port: report what was bound.
    let mut options = options;
    options.api = running.public_addr;
    options.internal = running.internal_addr;
    for (kind, slot) in [
        (ListenerKind::Mqtt, &mut options.mqtt),
        (ListenerKind::Ws, &mut options.ws),
        (ListenerKind::Mqtts, &mut options.mqtts),
        (ListenerKind::Wss, &mut options.wss),
    ] {
        if let Some(addr) = broker.addr(kind) {
            *slot = addr;
        }
    }
    options.broker_http = broker.http;
    sync_all(&state, &broker.directory).await;
    tokio::spawn(follow_changes(
        state.clone(),
        broker.directory.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(sample_stats(
        state.clone(),
        broker.metrics.clone(),
        shutdown.clone(),
    ));

    Ok(Dev {
        info: DevInfo {
            api_url: format!("http://{}", running.public_addr),
            admin_token,
            account_id: state.config.bootstrap_account.clone(),
            client_token,
            ca_path: dir.join("ca.pem"),
            options,
        },
        state,
        broker,
        api_task: running.task,
    })
}

/// The embedded broker: every broker in the database on one set of listeners, TLS from the dev
/// CA in `dir`.
async fn start_broker(
    options: &DevOptions,
    dir: &Path,
) -> Result<starling_broker::RunningBroker, DevError> {
    let mut bc = BrokerConfig::default();
    bc.auth.mode = AuthMode::Token;
    bc.embedded_tenants = true;
    bc.http.bind = options.broker_http;
    bc.tls.dev_tls = Some(dir.to_path_buf());
    // Retained messages and persistent sessions survive a restart of `starling-api dev`.
    bc.data_dir = Some(dir.to_path_buf());
    // A hook on the same laptop: http and loopback addresses allowed.
    bc.hook = HookSettings::local();
    for (kind, addr) in [
        (ListenerKind::Mqtt, options.mqtt),
        (ListenerKind::Ws, options.ws),
        (ListenerKind::Mqtts, options.mqtts),
        (ListenerKind::Wss, options.wss),
    ] {
        bc.listeners.push(ListenerConfig::new(kind, addr));
    }
    match starling_broker::start(bc).await {
        Ok(b) => Ok(b),
        Err(starling_broker::Error::Bind { kind, addr, source }) => {
            let flag = match kind {
                "mqtt" => "--mqtt",
                "ws" => "--ws",
                "mqtts" => "--mqtts",
                "wss" => "--wss",
                _ => "--broker-http",
            };
            Err(bind_error(flag, addr, source))
        }
        Err(e) => Err(DevError::Other(format!("broker: {e}"))),
    }
}

/// Where the embedded broker listens, as the api shows it.
struct BrokerListeners {
    mqtts_port: u16,
    wss_port: u16,
    ws: SocketAddr,
}

/// The api on SQLite, with brokers' endpoints at the embedded broker's mqtts port; on the first
/// start it makes namespace `demo` with broker `demo`. Returns the api and a client token for
/// `demo-client`.
async fn start_api(
    options: &DevOptions,
    dir: &Path,
    kek: Kek,
    kek_text: &str,
    admin_token: &str,
    listeners: &BrokerListeners,
    shutdown: &CancellationToken,
) -> Result<(starling_api::server::Running, String), DevError> {
    let config = Config {
        database_url: format!("sqlite://{}", dir.join("starling.db").display()),
        public_addr: options.api,
        internal_addr: options.internal,
        domain: "localhost".into(),
        // One listener serves every broker, and the dev certificate names localhost.
        endpoint: Some(format!("mqtts://localhost:{}", listeners.mqtts_port)),
        ws_endpoint: Some(format!("wss://localhost:{}/mqtt", listeners.wss_port)),
        dev_plain_ws: Some(format!("ws://{}/mqtt", listeners.ws)),
        bootstrap_token: Some(Secret(admin_token.to_string())),
        kek: Some(Secret(kek_text.to_string())),
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| DevError::Other(e.to_string()))?;
    let store = starling_api::store::connect(&config.database_url, config.max_connections)
        .await
        .map_err(|e| DevError::Other(format!("database: {e}")))?;
    let running = match starling_api::server::start_with(store, kek, config, shutdown.clone()).await
    {
        Ok(r) => r,
        Err(starling_api::server::ServerError::Listen { addr, source }) => {
            let flag = if addr == options.internal {
                "--internal-addr"
            } else {
                "--api-addr"
            };
            return Err(bind_error(flag, addr, source));
        }
        Err(e) => return Err(DevError::Other(e.to_string())),
    };

    // The first start makes a namespace and a broker to connect to.
    let app = starling_api::routes::app(running.state.clone());
    let call = |method: &'static str, uri: String, body: Option<serde_json::Value>| {
        let app = app.clone();
        let token = admin_token.to_string();
        async move {
            let mut req = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"));
            let body = match body {
                Some(v) => {
                    req = req.header("content-type", "application/json");
                    Body::from(v.to_string())
                }
                None => Body::empty(),
            };
            let req = req.body(body).map_err(|e| DevError::Other(e.to_string()))?;
            let resp = app
                .oneshot(req)
                .await
                .map_err(|e| DevError::Other(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| DevError::Other(e.to_string()))?
                .to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            Ok::<_, DevError>((status, value))
        }
    };
    let (status, _) = call("GET", "/v1/namespaces/demo".into(), None).await?;
    if status == 404 {
        let (s, v) = call(
            "POST",
            "/v1/namespaces".into(),
            Some(serde_json::json!({"name": "demo"})),
        )
        .await?;
        if s >= 300 {
            return Err(DevError::Other(format!("creating namespace demo: {s} {v}")));
        }
    }
    let (status, _) = call("GET", "/v1/namespaces/demo/brokers/demo".into(), None).await?;
    if status == 404 {
        let (s, v) = call(
            "POST",
            "/v1/namespaces/demo/brokers".into(),
            Some(serde_json::json!({"name": "demo", "authType": "TOKEN"})),
        )
        .await?;
        if s >= 300 {
            return Err(DevError::Other(format!("creating broker demo: {s} {v}")));
        }
    }
    let (s, creds) = call(
        "GET",
        "/v1/namespaces/demo/brokers/demo/credentials?number=1&type=TOKEN&topicAcl=%23&clientid=demo-client".into(),
        None,
    )
    .await?;
    let client_token = creds
        .get("demo-client")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| DevError::Other(format!("issuing a client token: {s} {creds}")))?;
    Ok((running, client_token))
}

/// Applies the state of one broker to the embedded broker's directory.
async fn sync_one(state: &AppState, directory: &Directory, id: &str) {
    let now = state.clock.now_secs();
    match state.store.broker_state(id, now).await {
        Ok(Some(s)) => {
            let hook = hook_target(state, &s);
            let tenant = TenantState {
                jwks: starling_api::routes::keys::live(&s.keys, now),
                revoked: s.revocations.into_iter().map(|r| r.jti).collect(),
                hook,
                limits: starling_api::routes::brokers::stored_limits(s.broker.limits.as_deref())
                    .unwrap_or_default(),
            };
            if let Err(e) = directory.apply(id, &tenant) {
                tracing::warn!(broker_id = id, error = %e, "broker state not applied");
            }
        }
        Ok(None) => {
            directory.remove(id);
        }
        Err(e) => tracing::warn!(broker_id = id, error = %e, "reading broker state failed"),
    }
}

/// The on-publish hook of a broker, signed with its current hook key (opened in-process). A key
/// that does not open leaves the target without one, and the broker then drops the tenant's
/// messages rather than deliver them unchecked.
fn hook_target(state: &AppState, s: &starling_api::store::BrokerState) -> Option<HookTarget> {
    let url = s.broker.on_publish_url.clone()?;
    let key = match state.kek.open_hook_current(&s.broker.id, &s.hook_keys) {
        Ok(Some(key)) => Some(Arc::new(key)),
        Ok(None) => {
            tracing::warn!(
                broker_id = s.broker.id.as_str(),
                "the broker has a hook but no current hook key"
            );
            None
        }
        Err(e) => {
            tracing::warn!(broker_id = s.broker.id.as_str(), error = %e, "the hook key did not open");
            None
        }
    };
    Some(HookTarget {
        url,
        key,
        broker: starling_api::routes::brokers::hostname(
            &s.broker.name,
            &s.broker.namespace_name,
            &state.config.domain,
        ),
    })
}

/// Every broker of every namespace of the dev account, plus the tenants already known.
async fn sync_all(state: &AppState, directory: &Directory) {
    let mut ids: Vec<String> = directory.names();
    let account = state.config.bootstrap_account.clone();
    let mut after: Option<String> = None;
    loop {
        let Ok(page) = state
            .store
            .list_namespaces(&account, after.as_deref(), 100)
            .await
        else {
            break;
        };
        for ns in &page.items {
            let mut b_after: Option<String> = None;
            loop {
                let Ok(bp) = state
                    .store
                    .list_brokers(&ns.id, b_after.as_deref(), 100)
                    .await
                else {
                    break;
                };
                ids.extend(bp.items.iter().map(|b| b.id.clone()));
                match bp.next_after {
                    Some(n) => b_after = Some(n),
                    None => break,
                }
            }
        }
        match page.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    ids.sort();
    ids.dedup();
    for id in ids {
        sync_one(state, directory, &id).await;
    }
}

/// Applies every change announced on the store's feed.
async fn follow_changes(state: AppState, directory: Arc<Directory>, shutdown: CancellationToken) {
    let mut feed = state.store.changes();
    // Retired keys leave without an announcement: look again now and then.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => sync_all(&state, &directory).await,
            change = feed.recv() => match change {
                Ok(id) if &*id == "*" => sync_all(&state, &directory).await,
                Ok(id) => sync_one(&state, &directory, &id).await,
                Err(RecvError::Lagged(_)) => sync_all(&state, &directory).await,
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Samples the embedded broker's counters for the console's health charts, for every broker at
/// once (see [`starling_api::stats::EMBEDDED`]).
async fn sample_stats(
    state: AppState,
    metrics: Arc<starling_broker::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(starling_api::stats::DEV_SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sample =
            starling_api::stats::Sample::new(state.clock.now_micros() / 1000, &metrics.summary());
        state
            .stats
            .record(starling_api::stats::EMBEDDED, "embedded", sample);
    }
}

/// The text `dev` prints: where everything is and what to paste.
pub fn banner(info: &DevInfo) -> String {
    let o = &info.options;
    let ca = info.ca_path.display();
    format!(
        r##"Starling is running (data in {data}).

  Console        {api}/console/   (sign in with the admin token)
  API            {api}   (OpenAPI: {api}/openapi.json)
  admin token    {admin}
  account        {account}
  client token   {client}
                 (client id demo-client, broker demo in namespace demo, topicAcl "#")
  CA             {ca}
  MQTT           mqtt://{mqtt}   mqtts://localhost:{mqtts_port}
  WebSockets     ws://{ws}/mqtt   wss://localhost:{wss_port}/mqtt

The command-line client (cargo install --path cli, or cargo run -p starling-cli --):
  starling login --url {api} --token {admin}

Subscribe with mosquitto (in another terminal):
  mosquitto_sub -h localhost -p {mqtts_port} --cafile {ca} -V 5 -i demo-client -u demo -P '{client}' -t 'demo/#' -v

Publish with a second token:
  TOKEN=$(curl -s -H 'Authorization: Bearer {admin}' '{api}/v1/namespaces/demo/brokers/demo/credentials?number=1&type=TOKEN&topicAcl=%23&clientid=demo-pub' | sed 's/.*"demo-pub":"\([^"]*\)".*/\1/')
  mosquitto_pub -h localhost -p {mqtts_port} --cafile {ca} -V 5 -i demo-pub -u demo -P "$TOKEN" -t demo/hello -m 'hello from mosquitto'

MQTT.js (Node or a browser):
  const client = mqtt.connect('wss://localhost:{wss_port}/mqtt', {{
    protocolVersion: 5, clientId: 'demo-client', username: 'demo', password: '{client}',
  }}); // Node: add ca: fs.readFileSync('{ca}')

Cloudflare's CLI (wrangler 3.x: `wrangler pubsub ...`), with this environment:
  export CLOUDFLARE_API_BASE_URL={api}/client/v4
  export CLOUDFLARE_API_TOKEN={admin}
  export CLOUDFLARE_ACCOUNT_ID={account}

More tokens:
  curl -H 'Authorization: Bearer {admin}' '{api}/v1/namespaces/demo/brokers/demo/credentials?number=1&type=TOKEN&topicAcl=%23'
"##,
        data = o.data_dir.display(),
        api = info.api_url,
        admin = info.admin_token,
        account = info.account_id,
        client = info.client_token,
        mqtt = o.mqtt,
        ws = o.ws,
        mqtts_port = o.mqtts.port(),
        wss_port = o.wss.port(),
    )
}
