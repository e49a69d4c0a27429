//! Starting and stopping the service: the database (with start-up retries and the migration
//! check), the proxy's TLS identity, the components chosen on the command line, the metrics
//! endpoint, the sources watcher, and the signal-driven shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Component;
use crate::config::Config;
use crate::db::{Backend, Db, DbError, DbUrl, PoolOptions};
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyHandle, ProxyTls};
use crate::shutdown::{self, Shutdown};
use crate::tlsutil;

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
/// A message naming the unusable file.
pub fn proxy_identity(config: &Config) -> Result<ProxyIdentity, String> {
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
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .transpose()?;
    let host_subject = match &p.host_subject {
        Some(subject) => Some(subject.clone()),
        None => {
            let certs = tlsutil::load_certs(&tls.cert_file)?;
            let first = certs
                .first()
                .ok_or_else(|| format!("no certificate in {}", tls.cert_file.display()))?;
            Some(tlsutil::format_host_subject(&tlsutil::cert_subject(first)?))
        }
    };
    Ok(ProxyIdentity {
        tls,
        ca_pem,
        host_subject,
    })
}

/// Opens the database, retrying while it is unreachable (it may start after kerbside). An
/// embedded SQLite database is created and migrated; a shared database must already be at the
/// current schema (`kerbside-manage db sync`).
///
/// # Errors
/// A one-line message naming the cause.
pub async fn open_database(config: &Config, migrate_sqlite: bool) -> Result<Db, String> {
    let url = DbUrl::parse(config.database.connection.expose()).map_err(|e| e.to_string())?;
    if let DbUrl::Sqlite { path } = &url
        && let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
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
            Err(e) => return Err(e.to_string()),
        }
    };
    if db.backend() == Backend::Sqlite && migrate_sqlite {
        let applied = db.ensure_schema().await.map_err(|e| e.to_string())?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "migrated the embedded SQLite database");
        }
    } else {
        db.check_current().await.map_err(|e| match e {
            DbError::PendingMigrations { .. } => {
                format!("{e}: run `kerbside-manage db sync` first")
            }
            other => other.to_string(),
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
    metrics_server: Option<actix_web::dev::ServerHandle>,
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
/// A message naming what could not start.
pub async fn start(config: Arc<Config>, components: &[Component]) -> Result<Running, String> {
    let shutdown = Shutdown::new();
    let db = open_database(&config, true).await?;
    let metrics = Metrics::new().map_err(|e| format!("cannot create metrics: {e}"))?;
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
                    return Err(e.to_string());
                }
            }
        }
    }
    if components.contains(&Component::Api) {
        let started = start_api(&config, &db, proxy.as_ref(), &shutdown);
        match started {
            Ok(started) => api = Some(started),
            Err(e) => {
                shutdown.stop_now().await;
                return Err(e);
            }
        }
    }
    let (metrics_server, metrics_addrs) = if config.metrics.enabled {
        let addr = std::net::SocketAddr::new(config.metrics.bind_host, config.metrics.bind_port);
        let (server, addrs) = crate::metrics::serve(metrics.clone(), addr)
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        let handle = server.handle();
        tokio::spawn(server);
        (Some(handle), addrs)
    } else {
        (None, Vec::new())
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
        metrics_server,
    })
}

/// Starts the API. `.vv` files carry the proxy's public ports: a proxy configured with port 0
/// (tests, demos) on this node lends the ports it really bound.
fn start_api(
    config: &Arc<Config>,
    db: &Db,
    proxy: Option<&ProxyHandle>,
    shutdown: &Shutdown,
) -> Result<(actix_web::dev::ServerHandle, Vec<std::net::SocketAddr>), String> {
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
        identity.ca_pem,
        identity.host_subject,
    )?;
    crate::api::start(state, shutdown)
}

impl Running {
    /// Graceful stop: drain for up to `grace`, then close everything.
    pub async fn stop(&self, grace: Duration) {
        if let Some(server) = &self.api_server {
            server.stop(true).await;
        }
        self.shutdown.drain(grace).await;
        if let Some(server) = &self.metrics_server {
            server.stop(true).await;
        }
    }
}

/// Runs until SIGTERM/SIGINT: the first signal drains (bounded by `[proxy] shutdown_timeout`),
/// a second one stops at once.
///
/// # Errors
/// Start-up failures.
pub async fn run(config: Arc<Config>, asked: &[Component]) -> Result<(), String> {
    let components = components(&config, asked);
    let running = start(config.clone(), &components).await?;
    tracing::info!(components = ?components, node = %config.node_name(), "kerbside running");
    let signal = shutdown::wait_for_signal()
        .await
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
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
