//! Starting and stopping the service: the [`Component`]s it can run and which of them run, the
//! database (with start-up retries and the migration check), the proxy's TLS identity, the
//! metrics endpoint, the sources watcher, and the signal-driven shutdown.
//!
//! It does not parse command lines ([`crate::cli`] does, and calls [`run`]) and it knows
//! nothing of the operator commands ([`crate::manage`] reuses [`open_database`] and
//! [`proxy_identity`] from here).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::db::{Backend, Db, DbError, DbUrl, PoolOptions};
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyHandle, ProxyTls};
use crate::shutdown::{self, Shutdown};
use crate::tlsutil;

/// A component of the service.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// The HTTP API.
    Api,
    /// The SPICE proxy.
    Proxy,
    /// The Nova notification consumer.
    Notifications,
}

/// Why the service could not start. Each variant keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The database could not be opened or is unusable.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The schema is older than this release.
    #[error("{0}: run `kerbside-manage db sync` first")]
    SchemaOutOfDate(#[source] DbError),
    /// The proxy's TLS identity.
    #[error(transparent)]
    Tls(#[from] tlsutil::TlsError),
    /// The CA file given to clients cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The metrics registry.
    #[error("cannot create metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The proxy.
    #[error(transparent)]
    Proxy(#[from] proxy::StartError),
    /// The API.
    #[error(transparent)]
    Api(#[from] crate::api::StartError),
    /// The notification consumer.
    #[error(transparent)]
    Notifications(#[from] crate::notifications::NotifyError),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// The proxy's TLS identity as clients see it.
#[derive(Clone, Debug)]
pub struct ProxyIdentity {
    /// Certificate chain and key.
    pub tls: ProxyTls,
    /// CA PEM given to clients in .vv files.
    pub ca_pem: Option<String>,
    /// Subject clients verify.
    pub host_subject: Option<String>,
}

/// The configured certificate, or TLS material generated once under
/// `$state_path/tls` for single-node and demo deployments.
///
/// # Errors
/// [`ServiceError`] naming the unusable file.
pub fn proxy_identity(config: &Config) -> Result<ProxyIdentity, ServiceError> {
    let p = &config.proxy;
    let (tls, ca_file) = match (&p.cert_file, &p.key_file) {
        (Some(cert_file), Some(key_file)) => (
            ProxyTls {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            },
            p.ca_file.clone(),
        ),
        _ => {
            let dir = config.default.state_path.join("tls");
            let mut hosts = vec![
                config.public_host(),
                config.node_name(),
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ];
            hosts.dedup();
            let generated = tlsutil::ensure_self_signed(&dir, &hosts, &config.public_host())?;
            (
                ProxyTls {
                    cert_file: generated.cert_file,
                    key_file: generated.key_file,
                },
                Some(generated.ca_file),
            )
        }
    };
    let ca_pem = ca_file
        .map(|path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| ServiceError::ReadCa { path, source })
        })
        .transpose()?;
    let host_subject = match &p.host_subject {
        Some(subject) => Some(subject.clone()),
        None => {
            let certs = tlsutil::load_certs(&tls.cert_file)?;
            let first = certs.first().ok_or_else(|| {
                tlsutil::TlsError::NoCertificate(tls.cert_file.display().to_string())
            })?;
            Some(tlsutil::format_host_subject(&tlsutil::cert_subject(first)?))
        }
    };
    Ok(ProxyIdentity {
        tls,
        ca_pem,
        host_subject,
    })
}

/// Makes an existing state directory private (it holds the SQLite database and TLS keys):
/// tightened to 0700 (logged) when others may read it. A missing one is left to whoever
/// needs it first (the SQLite file, the generated TLS material), which creates it 0700.
/// A directory kerbside may not change (not its owner) is reported, not fatal.
pub fn secure_state_dir(dir: &std::path::Path) {
    if dir.is_dir()
        && let Err(e) = crate::db::tighten_mode(dir, 0o700)
    {
        tracing::warn!(error = %e, "the state directory may be readable by other users");
    }
}

/// Opens the database, retrying while it is unreachable (it may start after kerbside). An
/// embedded SQLite database is created and migrated; a shared database must already be at the
/// current schema (`kerbside-manage db sync`).
///
/// # Errors
/// [`ServiceError`] naming the cause.
pub async fn open_database(config: &Config, migrate_sqlite: bool) -> Result<Db, ServiceError> {
    let url = DbUrl::parse(config.database.connection.expose()).map_err(DbError::from)?;
    secure_state_dir(&config.default.state_path);
    if let DbUrl::Sqlite { path } = &url {
        crate::db::secure_sqlite_file(path)?;
    }
    let opts = PoolOptions {
        max_size: config.database.max_pool_size,
        connect_timeout: Duration::from_secs(config.database.pool_timeout),
    };
    let mut attempt = 0;
    let db = loop {
        match Db::connect(&url, &opts) {
            Ok(db) => break db,
            Err(e) if e.is_transient() && attempt < config.database.max_retries => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "database unavailable, retrying");
                tokio::time::sleep(Duration::from_secs(config.database.retry_interval)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if db.backend() == Backend::Sqlite && migrate_sqlite {
        let applied = db.ensure_schema().await?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "migrated the embedded SQLite database");
        }
    } else {
        db.check_current().await.map_err(|e| match e {
            DbError::PendingMigrations { .. } => ServiceError::SchemaOutOfDate(e),
            other => ServiceError::Database(other),
        })?;
    }
    Ok(db)
}

/// What a running service exposes (tests use the addresses).
pub struct Running {
    /// The proxy, if it runs here.
    pub proxy: Option<ProxyHandle>,
    /// The metrics endpoint's addresses.
    pub metrics_addrs: Vec<std::net::SocketAddr>,
    /// The API's addresses (empty when the API does not run here).
    pub api_addrs: Vec<std::net::SocketAddr>,
    /// The shutdown handle.
    pub shutdown: Shutdown,
    /// The database.
    pub db: Db,
    /// Every metric of this process (tests read them).
    pub metrics: Arc<Metrics>,
    api_server: Option<actix_web::dev::ServerHandle>,
}

/// The components to run: those asked for, else every configured one.
pub fn components(config: &Config, asked: &[Component]) -> Vec<Component> {
    if !asked.is_empty() {
        let mut v = asked.to_vec();
        v.sort();
        v.dedup();
        return v;
    }
    // The API is configured once it can authenticate requests (or is told not to).
    let mut v = Vec::new();
    if config.api.auth_strategy == crate::config::AuthStrategy::NoAuth
        || config.keystone_authtoken.auth_url.is_some()
    {
        v.push(Component::Api);
    }
    v.push(Component::Proxy);
    if config.notification_transport_url().is_some() {
        v.push(Component::Notifications);
    }
    v
}

/// Starts the components on a fresh shutdown handle.
///
/// # Errors
/// [`ServiceError`] naming what could not start.
pub async fn start(config: Arc<Config>, components: &[Component]) -> Result<Running, ServiceError> {
    let shutdown = Shutdown::new();
    let db = open_database(&config, true).await?;
    let metrics = Metrics::new()?;
    if let Some(path) = &config.console.sources_file {
        crate::sources::spawn_watcher(
            db.clone(),
            path.clone(),
            Duration::from_secs(config.console.sources_refresh_interval),
            &shutdown,
        )
        .await;
    }
    let mut proxy = None;
    let mut api = None;
    for component in components {
        match component {
            Component::Proxy => {
                let identity = proxy_identity(&config)?;
                proxy = Some(
                    proxy::start(
                        config.clone(),
                        db.clone(),
                        metrics.clone(),
                        shutdown.clone(),
                        &identity.tls,
                    )
                    .await?,
                );
            }
            // Started after the loop: it needs the proxy's bound ports.
            Component::Api => {}
            Component::Notifications => {
                let started = crate::notifications::start(
                    config.clone(),
                    db.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )
                .await;
                if let Err(e) = started {
                    // Stop what already started (the proxy) before reporting.
                    shutdown.stop_now().await;
                    return Err(e.into());
                }
            }
        }
    }
    if components.contains(&Component::Api) {
        let started = start_api(&config, &db, &metrics, proxy.as_ref(), &shutdown);
        match started {
            Ok(started) => api = Some(started),
            Err(e) => {
                shutdown.stop_now().await;
                return Err(e);
            }
        }
    }
    let metrics_addrs = if config.metrics.enabled {
        let addr = std::net::SocketAddr::new(config.metrics.bind_host, config.metrics.bind_port);
        let (server, addrs) = crate::metrics::serve(metrics.clone(), addr)
            .map_err(|source| ServiceError::MetricsListen { addr, source })?;
        let handle = server.handle();
        // Metrics answer through a drain (operators watch it) and stop with everything else.
        shutdown.servers().spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the metrics server failed");
            }
        });
        let stop = shutdown.stop_token().clone();
        let stopper = handle.clone();
        shutdown.servers().spawn(async move {
            stop.cancelled().await;
            stopper.stop(true).await;
        });
        addrs
    } else {
        Vec::new()
    };
    shutdown.set_running();
    let (api_server, api_addrs) = match api {
        Some((handle, addrs)) => (Some(handle), addrs),
        None => (None, Vec::new()),
    };
    Ok(Running {
        proxy,
        metrics_addrs,
        api_addrs,
        api_server,
        shutdown,
        db,
        metrics,
    })
}

/// Starts the API. `.vv` files carry the proxy's public ports: a proxy configured with port 0
/// (tests, demos) on this node lends the ports it really bound.
fn start_api(
    config: &Arc<Config>,
    db: &Db,
    metrics: &Arc<Metrics>,
    proxy: Option<&ProxyHandle>,
    shutdown: &Shutdown,
) -> Result<(actix_web::dev::ServerHandle, Vec<std::net::SocketAddr>), ServiceError> {
    let identity = proxy_identity(config)?;
    let mut effective = (**config).clone();
    if let Some(proxy) = proxy {
        let p = &mut effective.proxy;
        if p.public_tls_port.is_none() && p.tls_port == 0 {
            p.public_tls_port = proxy.tls_addrs.first().map(|a| a.port());
        }
        if p.public_insecure_port.is_none() && p.insecure_port == 0 {
            p.public_insecure_port = proxy.insecure_addrs.first().map(|a| a.port());
        }
    }
    let state = crate::api::ApiState::new(
        Arc::new(effective),
        db.clone(),
        metrics.clone(),
        identity.ca_pem,
        identity.host_subject,
    )?;
    Ok(crate::api::start(state, shutdown)?)
}

impl Running {
    /// Fast stop: everything closes now.
    pub async fn stop_now(&self) {
        if let Some(server) = &self.api_server {
            server.stop(false).await;
        }
        // The metrics endpoint stops on the stop token, and stop_now waits for it.
        self.shutdown.stop_now().await;
    }

    /// Graceful stop: drain for up to `grace`, then close everything.
    pub async fn stop(&self, grace: Duration) {
        if let Some(server) = &self.api_server {
            server.stop(true).await;
        }
        // Metrics keep answering through the drain and stop with everything else.
        self.shutdown.drain(grace).await;
    }
}

/// Runs until SIGTERM/SIGINT. SIGTERM drains (bounded by `[proxy] shutdown_timeout`) and a
/// second signal then stops at once; SIGINT (Ctrl-C) stops at once: sessions are closed
/// with "proxy shutting down" and the process exits.
///
/// # Errors
/// Start-up failures.
pub async fn run(config: Arc<Config>, asked: &[Component]) -> Result<(), ServiceError> {
    let components = components(&config, asked);
    if components.contains(&Component::Proxy) {
        raise_open_file_limit(config.proxy.max_sessions);
    }
    let running = start(config.clone(), &components).await?;
    tracing::info!(components = ?components, node = %config.node_name(), "kerbside running");
    let signal = shutdown::wait_for_signal()
        .await
        .map_err(ServiceError::Signals)?;
    if signal == "SIGINT" {
        tracing::info!(signal, "stopping now: sessions are closed");
        running.stop_now().await;
        tracing::info!("kerbside stopped");
        return Ok(());
    }
    tracing::info!(
        signal,
        "draining: no new connections, sessions close within the grace period"
    );
    let grace = Duration::from_secs(config.proxy.shutdown_timeout);
    tokio::select! {
        () = running.stop(grace) => {}
        second = shutdown::wait_for_signal() => {
            tracing::warn!(signal = second.unwrap_or("signal"), "second signal: stopping now");
            running.shutdown.stop_now().await;
        }
    }
    tracing::info!("kerbside stopped");
    Ok(())
}

/// SPICE channels one session may open (main, display, inputs, cursor, playback, record,
/// and a couple of USB redirections or a webdav channel).
const CHANNELS_PER_SESSION: u64 = 8;

/// Descriptors beyond the sessions' sockets: listeners, database and broker connections,
/// the metrics and API servers, log files.
const SPARE_FILES: u64 = 256;

/// Open files the proxy needs for `max_sessions` sessions: two sockets (client and
/// hypervisor) per channel, plus a few hundred for listeners, database connections and logs.
#[must_use]
pub fn files_needed(max_sessions: u32) -> u64 {
    u64::from(max_sessions) * CHANNELS_PER_SESSION * 2 + SPARE_FILES
}

/// What [`raise_open_file_limit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit and logs the result;
/// warns when it cannot hold `max_sessions` sessions (see [`files_needed`]). Each idle client
/// socket holds a descriptor, and under the usual soft limit of 1024 a few hundred of them
/// make `accept` fail for everyone.
///
/// Returns the limits (the soft one unchanged when it could not be raised, logged).
pub fn raise_open_file_limit(max_sessions: u32) -> FileLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` means unlimited.
    let before = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let now = if before < hard {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(
                    soft = before,
                    hard,
                    error = %e,
                    "cannot raise the open-file limit"
                );
                before
            }
        }
    } else {
        before
    };
    let needed = files_needed(max_sessions);
    tracing::info!(before, soft = now, hard, "open-file limit");
    if now < needed {
        tracing::warn!(
            limit = now,
            needed,
            max_sessions,
            "the open-file limit cannot hold [proxy] max_sessions sessions: raise LimitNOFILE \
             (systemd) or the container's nofile ulimit"
        );
    }
    FileLimit { before, now, hard }
}
