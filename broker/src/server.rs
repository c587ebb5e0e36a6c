//! Starting and stopping the broker: binds every listener, runs one accept loop per listener,
//! the HTTP listener, and the graceful shutdown.
//!
//! Shutdown order: readiness goes false, accept loops stop, every connection gets DISCONNECT
//! 0x8B (with `shutdown.server_reference` as its Server Reference for MQTT 5 clients), then
//! connections get `shutdown.drain_timeout_secs` to finish before they are dropped, and the
//! store writes what is pending. The same [`Drain`] runs on SIGTERM and on `/drain` of the HTTP
//! listener (a Kubernetes preStop hook, as the broker's image has no shell); the HTTP listener
//! keeps answering until the process ends, so a drain's caller gets its answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tasks::Tasks;
use tracing::{info, warn};

use crate::auth::directory::Directory;
use crate::auth::token::TokenAuth;
use crate::auth::{Authenticator, NoAuth, files};
use crate::config::{AuthMode, Config, ListenerConfig, ListenerKind};
use crate::connection::{self, ConnectionContext, ListenerInfo};
use crate::control;
use crate::error::{Error, Result};
use crate::http::{self, HttpState, Readiness};
use crate::metrics::{ListenerReasonLabels, Metrics};
use crate::tenant::Tenant;
use crate::transport::config::TlsListeners;
use crate::transport::{self, TransportConfig};

/// A started broker.
#[derive(Debug)]
pub struct RunningBroker {
    /// Bound MQTT listeners, in configuration order.
    pub listeners: Vec<(ListenerKind, SocketAddr)>,
    /// The bound HTTP listener.
    pub http: SocketAddr,
    /// The tenant of `--auth none` listeners.
    pub default_tenant: Arc<Tenant>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The tenants of token-authenticating listeners.
    pub directory: Arc<Directory>,
    ready: Arc<Readiness>,
    drain: Arc<Drain>,
    http_stop: CancellationToken,
    tracker: TaskTracker,
    plain_ctx: ConnectionContext,
    /// The TLS listeners' certificates; keeps their directory watches running.
    pub tls: TlsListeners,
    /// The durable store, with a data directory.
    pub storage: Option<crate::storage::Storage>,
}

/// Binds every listener and starts serving. Returns once the broker is ready.
pub async fn start(config: Config) -> Result<RunningBroker> {
    start_with_faults(config, None).await
}

/// [`start`], with the durable store's writes failing while `faults` say so (for tests of
/// a full or failing disk).
pub async fn start_with_faults(
    config: Config,
    faults: Option<crate::storage::Faults>,
) -> Result<RunningBroker> {
    config.validate()?;
    // What the store kept is read back before anything listens, so the broker is ready only
    // once it is restored.
    let storage = match &config.data_dir {
        // Blocking, once, before anything else runs.
        Some(dir) => Some(crate::storage::Storage::open(dir, &config.storage, faults)?),
        None => None,
    };
    let limits = Arc::new(config.limits());
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Timers end when shutdown starts; the rest of the background work is waited for.
    let tasks = Tasks::new(tracker.clone(), stop.clone());
    let default_tenant = Tenant::with_storage(
        "default",
        (*limits).clone(),
        metrics.clone(),
        tasks.clone(),
        storage.as_ref(),
    );
    let ready = Arc::new(Readiness::default());
    let no_auth: Arc<dyn Authenticator> = Arc::new(NoAuth::with_rules(
        default_tenant.clone(),
        config.auth.rules.clone(),
    ));
    let directory = Arc::new(Directory::new(
        (*limits).clone(),
        config.hook.clone(),
        metrics.clone(),
        tasks,
        storage.clone(),
    ));
    if let (Some(url), Some(key_file)) = (&config.hook.url, &config.hook.key_file) {
        let key = crate::hook::load_key_file(key_file).map_err(crate::error::Error::HookKey)?;
        // The hook's key never verifies a client token, whatever key set names it.
        directory.reserve_hook_kid(key.kid());
        let target = crate::hook::HookTarget {
            url: url.clone(),
            key: Some(Arc::new(key)),
            broker: "default".into(),
        };
        default_tenant.set_hook(Some(crate::hook::Hook::start(
            "default",
            target,
            Arc::new(config.hook.clone()),
            metrics.clone(),
        )));
    }
    if config.cluster.enabled() {
        let replica = config
            .cluster
            .resolve_replica_id(std::env::var("HOSTNAME").ok().as_deref());
        let link = crate::cluster::link::Link::connect(
            &config.cluster,
            replica,
            metrics.clone(),
            stop.clone(),
        )
        .await
        .map_err(|e| crate::error::Error::Cluster(e.to_string()))?;
        // The default tenant has clients only on listeners without authentication: a broker
        // whose every listener takes tokens (a managed one) keeps it off NATS, where its NATS
        // user may touch only its own tenants.
        let default_has_clients = config
            .listeners
            .iter()
            .any(|l| l.auth.unwrap_or(config.auth.mode) == AuthMode::None);
        if default_has_clients {
            default_tenant.join_cluster(&link);
        }
        ready.follow_cluster(link.clone());
        directory.set_cluster(link);
    }
    let file_tenants = config.auth.file_tenants();
    files::load_all(&directory, &file_tenants)?;
    let token_auth: Arc<dyn Authenticator> = Arc::new(TokenAuth::new(
        directory.clone(),
        config.auth.clock_skew_secs,
        metrics.clone(),
    ));
    if !file_tenants.is_empty() {
        tokio::spawn(files::watch(directory.clone(), file_tenants, stop.clone()));
    }
    if !config.control_plane.is_empty() {
        ready.await_state(config.control_plane.len());
        let saved = match &config.data_dir {
            Some(dir) => {
                if let Err(e) = std::fs::create_dir_all(dir) {
                    warn!(dir = %dir.display(), error = %e, "cannot create the data directory");
                }
                control::load_saved(&directory, &config.control_plane, dir)
            }
            None => Vec::new(),
        };
        for tenant in &config.control_plane {
            let has_state = saved.contains(&tenant.broker_id);
            if has_state {
                ready.state_arrived();
            }
            tokio::spawn(control::follow(
                tenant.clone(),
                directory.clone(),
                ready.clone(),
                metrics.clone(),
                config.data_dir.clone(),
                has_state,
                stop.clone(),
            ));
        }
    }

    let mut tls = TlsListeners::new(&config.tls)?;
    let mut bound = Vec::new();
    let mut loops = Vec::new();
    for listener in &config.listeners {
        let mode = listener.auth.unwrap_or(config.auth.mode);
        let auth = match (mode, &listener.rules) {
            (AuthMode::None, None) => no_auth.clone(),
            (AuthMode::None, Some(rules)) => {
                Arc::new(NoAuth::with_rules(default_tenant.clone(), rules.clone()))
                    as Arc<dyn Authenticator>
            }
            (AuthMode::Token, _) => token_auth.clone(),
        };
        let transport = Arc::new(tls.transport_config(
            listener.kind,
            listener.tls.as_ref(),
            &listener.ws,
            listener.handshake_timeout_secs.map(Duration::from_secs),
        )?);
        let tcp = TcpListener::bind(listener.bind)
            .await
            .map_err(|source| Error::Bind {
                kind: listener.kind.as_str(),
                addr: listener.bind,
                source,
            })?;
        let addr = tcp.local_addr().map_err(|source| Error::Bind {
            kind: listener.kind.as_str(),
            addr: listener.bind,
            source,
        })?;
        bound.push((listener.kind, addr));
        let ctx = ConnectionContext {
            limits: match &listener.limits {
                Some(own) => Arc::new(config.limits.overlay(own).resolve()),
                None => limits.clone(),
            },
            metrics: metrics.clone(),
            auth,
            shutdown: stop.clone(),
            listener: Arc::new(ListenerInfo {
                kind: listener.kind,
                server_reference: config.shutdown.server_reference.clone(),
            }),
        };
        loops.push((tcp, listener.clone(), ctx, transport));
    }
    let http_listener = TcpListener::bind(config.http.bind)
        .await
        .map_err(|source| Error::Bind {
            kind: "http",
            addr: config.http.bind,
            source,
        })?;
    let http_addr = http_listener.local_addr().map_err(|source| Error::Bind {
        kind: "http",
        addr: config.http.bind,
        source,
    })?;

    for (tcp, listener, ctx, transport) in loops {
        let tracker2 = tracker.clone();
        let stop2 = stop.clone();
        tracker.spawn(accept_loop(tcp, listener, ctx, transport, stop2, tracker2));
    }
    let drain = Arc::new(Drain {
        ready: ready.clone(),
        stop: stop.clone(),
        tracker: tracker.clone(),
        deadline: Duration::from_secs(config.shutdown.drain_timeout_secs),
        storage: storage.clone(),
        started: AtomicBool::new(false),
        done: CancellationToken::new(),
    });
    let app = http::app(HttpState {
        ready: ready.clone(),
        metrics: metrics.clone(),
        drain: drain.clone(),
    });
    // Its own token: it answers (`/readyz` not ready, `/drain` its result) while connections drain.
    let http_stop = CancellationToken::new();
    tokio::spawn(http::serve(
        http_listener,
        app,
        config.http.limits(),
        http_stop.clone(),
    ));
    for (kind, addr) in &bound {
        info!(listener = kind.as_str(), %addr, "listening");
    }
    info!(%http_addr, "http listening (/healthz, /readyz, /metrics, /drain)");
    ready.set_listening();
    let plain_ctx = ConnectionContext {
        limits,
        metrics: metrics.clone(),
        auth: no_auth,
        shutdown: stop.clone(),
        listener: Arc::new(ListenerInfo {
            kind: ListenerKind::Mqtt,
            server_reference: config.shutdown.server_reference.clone(),
        }),
    };
    Ok(RunningBroker {
        listeners: bound,
        http: http_addr,
        default_tenant,
        metrics,
        directory,
        ready,
        drain,
        http_stop,
        tracker,
        plain_ctx,
        tls,
        storage,
    })
}

/// Runs the broker until `shutdown` is cancelled, then shuts down gracefully. A drain asked
/// for on `/drain` runs the same shutdown earlier; the process then stays up, serving only
/// HTTP (not ready), until `shutdown` is cancelled (the SIGTERM that follows a preStop hook).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let broker = start(config).await?;
    shutdown.cancelled().await;
    broker.shutdown().await;
    Ok(())
}

/// The graceful shutdown, run once whoever asks first (SIGTERM or `/drain`); every asker waits
/// for the same end.
#[derive(Debug)]
pub struct Drain {
    ready: Arc<Readiness>,
    stop: CancellationToken,
    tracker: TaskTracker,
    deadline: Duration,
    storage: Option<crate::storage::Storage>,
    started: AtomicBool,
    done: CancellationToken,
}

impl Drain {
    /// Starts the shutdown unless it has started already; it runs on to its end even if no one
    /// waits for it.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.run().await;
            me.done.cancel();
        });
    }

    /// Waits until the shutdown has ended: connections closed (or the deadline passed) and the
    /// store written.
    pub async fn finished(&self) {
        self.done.cancelled().await;
    }

    /// How long connections get once DISCONNECT 0x8B went out.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A shutdown of nothing (no connections, no store), for the HTTP handlers' tests.
    #[cfg(test)]
    pub(crate) fn for_tests(ready: Arc<Readiness>) -> Arc<Drain> {
        Arc::new(Drain {
            ready,
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            deadline: Duration::from_secs(1),
            storage: None,
            started: AtomicBool::new(false),
            done: CancellationToken::new(),
        })
    }

    /// Whether the shutdown has started.
    #[cfg(test)]
    pub(crate) fn has_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Not ready, stop accepting, DISCONNECT 0x8B, drain within the deadline, close the store.
    async fn run(&self) {
        self.ready.set_draining();
        info!("shutting down");
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.deadline, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                deadline_secs = self.deadline.as_secs(),
                "connections still open after the drain deadline"
            );
        }
        if let Some(storage) = &self.storage {
            // What the connections wrote as they closed goes to disk before the process ends.
            storage.close().await;
        }
        if let Some(link) = self.ready.cluster() {
            // And to JetStream, with a cluster: the sessions' last changes and acknowledgements.
            link.flush().await;
            // Then the other replicas take over what is left of them (offline sessions and
            // their delayed wills).
            link.leave().await;
        }
        info!("drained");
    }
}

impl RunningBroker {
    /// The address of the first listener of `kind`.
    pub fn addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
    }

    /// Whether `/readyz` answers ready.
    pub fn is_ready(&self) -> bool {
        self.ready.is_ready()
    }

    /// Serves one connection over an in-memory duplex pipe (plain MQTT, `--auth none`), for tests
    /// whose clock is paused: the paused clock jumps while the runtime waits on real sockets.
    pub fn connect_duplex(&self, buffer: usize) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(buffer);
        let ctx = self.plain_ctx.clone();
        let remote = SocketAddr::from(([127, 0, 0, 1], 0));
        self.tracker
            .spawn(async move { connection::serve(server, remote, ctx).await });
        client
    }

    /// Graceful shutdown ([`Drain`], or waits for the one `/drain` started), then the HTTP
    /// listener stops.
    pub async fn shutdown(self) {
        self.drain.start();
        self.drain.finished().await;
        self.http_stop.cancel();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    listener: ListenerConfig,
    ctx: ConnectionContext,
    transport: Arc<TransportConfig>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(listener.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let accepted = tokio::select! {
            r = tcp.accept() => r,
            _ = stop.cancelled() => return,
        };
        let (stream, remote): (TcpStream, SocketAddr) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(listener = listener.kind.as_str(), error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        ctx.metrics.sockets_accepted.inc();
        let ctx = ctx.clone();
        if listener.kind == ListenerKind::Mqtt {
            tracker.spawn(async move {
                connection::serve(stream, remote, ctx).await;
                drop(permit);
            });
            continue;
        }
        // TLS and WebSocket handshakes run in the connection's task, bounded by the listener's
        // handshake timeout, so a slow one never holds up the accept loop.
        let transport = transport.clone();
        let kind = listener.kind;
        tracker.spawn(async move {
            let accepted = tokio::select! {
                r = transport::accept(stream, kind, &transport) => r,
                _ = ctx.shutdown.cancelled() => return,
            };
            match accepted {
                Ok(accepted) => connection::serve(accepted.io, remote, ctx).await,
                Err(e) => {
                    ctx.metrics
                        .handshake_failures
                        .get_or_create(&ListenerReasonLabels {
                            listener: kind.as_str(),
                            reason: e.metric_label(),
                        })
                        .inc();
                }
            }
            drop(permit);
        });
    }
}
