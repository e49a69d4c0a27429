//! The SPICE proxy: TLS, plain and WebSocket (browser) listeners, the per-connection link
//! stage, the firewalled relay, link-stage limits, ticket keys, live termination and the
//! session bookkeeping shared with other nodes through the database.
//!
//! This file owns the shared [`ProxyContext`], [`start`] (which builds it, ends what an earlier
//! run left open and starts the listeners and background loops) and the two small loops that
//! keep the limits and the firewall profiles current. The rest lives in its submodules, in the
//! order a connection meets them: `listener` (accept), `transport`/`tls` (bytes), `session`
//! (link stage), `keypool` (tickets), `store` (database), `hypervisor` and `upstream` (the
//! hypervisor leg), `relay`/`copy` (channels), `registry`/`bookkeeping`/`audit` (records) and
//! `termination` (ending sessions on request).
//!
//! It depends on `config`, `db` (through `store`), `spice` (pure protocol) and `metrics`; it
//! never imports the API or the notification consumer.

mod audit;
mod bookkeeping;
mod copy;
pub mod end;
pub mod error;
pub mod hypervisor;
pub mod keypool;
pub mod limits;
mod listener;
pub mod registry;
pub mod relay;
pub mod session;
pub mod store;
pub mod target;
mod termination;
pub mod tls;
pub mod transport;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::db::Db;
use crate::firewall::ProfileStore;
use crate::metrics::{Metrics, ProxyMetrics};
use crate::shutdown::Shutdown;
use crate::spice::firewall::{DEFAULT_PROFILE, MOST_RESTRICTIVE_PROFILE, Mode, Profile};
pub use error::StartError;
use hypervisor::HypervisorPolicy;
use registry::Registry;
use store::Store;

/// Everything a connection handler needs, shared by all connections of the process.
pub struct ProxyContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// This node's name.
    pub node: String,
    /// Database access for the proxy.
    pub store: Store,
    /// RSA ticket keys, reused within `[proxy] ticket_key_uses` and `ticket_key_lifetime`.
    pub keys: keypool::KeyPool,
    /// The client-facing TLS acceptor.
    pub tls: TlsAcceptor,
    /// Sessions with channels in this process.
    pub registry: Registry,
    /// `[proxy] max_sessions` slots, taken once a main channel is authorized.
    pub session_slots: Arc<Semaphore>,
    /// Handshake slots, failed-link buckets and the refusal log.
    pub limits: limits::Limits,
    /// Proxy metrics.
    pub metrics: Arc<Metrics>,
    /// Process shutdown.
    pub shutdown: Shutdown,
    /// How hypervisors are reached (`[proxy] hypervisor_tls` and its TLS configurations).
    pub hypervisors: HypervisorPolicy,
    /// Firewall profiles (`[firewall] profiles_file`), re-read when the file changes.
    profiles: std::sync::Mutex<ProfileStore>,
    /// Firewall mode (`[firewall] mode`).
    pub firewall_mode: Mode,
}

/// The addresses a started proxy listens on.
#[derive(Clone)]
pub struct ProxyHandle {
    /// TLS listener addresses.
    pub tls_addrs: Vec<SocketAddr>,
    /// Plain (NEED_SECURED) listener addresses.
    pub insecure_addrs: Vec<SocketAddr>,
    /// WebSocket listener addresses (`[html5]`; empty when browser consoles are off).
    pub websocket_addrs: Vec<SocketAddr>,
    /// The shared context (tests inspect the registry).
    pub context: Arc<ProxyContext>,
}

/// TLS material for the client-facing listener.
#[derive(Clone, Debug)]
pub struct ProxyTls {
    /// Certificate chain file.
    pub cert_file: std::path::PathBuf,
    /// Key file.
    pub key_file: std::path::PathBuf,
}

/// Binds the listeners and starts serving on the shutdown's task tracker.
///
/// # Errors
/// [`StartError`] naming what could not be set up (certificate, address, key pool).
pub async fn start(
    config: Arc<Config>,
    db: Db,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    tls: &ProxyTls,
) -> Result<ProxyHandle, StartError> {
    let server_config = tls::server_config(&tls.cert_file, &tls.key_file)?;
    let hypervisors = HypervisorPolicy::from_config(&config)?;
    let pool_size = usize::try_from(config.proxy.key_pool_size).unwrap_or(32);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let policy = keypool::KeyPolicy {
        uses: config.proxy.ticket_key_uses,
        lifetime: Duration::from_secs(config.proxy.ticket_key_lifetime),
    };
    let keys =
        keypool::KeyPool::start(pool_size, threads, policy).map_err(StartError::KeyThreads)?;
    let profiles = ProfileStore::open(&config.firewall)?;
    let node = config.node_name();
    let ctx = Arc::new(ProxyContext {
        node: node.clone(),
        store: Store::new(
            db,
            node,
            &store::StoreOptions::from_config(&config),
            &metrics.db_writes,
            shutdown.clone(),
        ),
        keys,
        tls: TlsAcceptor::from(server_config),
        registry: Registry::default(),
        session_slots: Arc::new(Semaphore::new(
            usize::try_from(config.proxy.max_sessions).unwrap_or(1000),
        )),
        limits: limits::Limits::new(limits::Settings::from(&config.proxy)),
        metrics,
        shutdown: shutdown.clone(),
        hypervisors,
        profiles: std::sync::Mutex::new(profiles),
        firewall_mode: crate::firewall::mode(&config.firewall),
        config: config.clone(),
    });
    match ctx.store.end_orphaned_sessions().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            sessions = n,
            "ended sessions left open by an earlier run of this node"
        ),
        Err(e) => return Err(StartError::Database(e)),
    }
    let mut handle = ProxyHandle {
        tls_addrs: Vec::new(),
        insecure_addrs: Vec::new(),
        websocket_addrs: Vec::new(),
        context: ctx.clone(),
    };
    listener::start_listeners(&ctx, &mut handle)?;
    shutdown
        .tracker()
        .spawn(termination::termination_loop(ctx.clone()));
    shutdown.tracker().spawn(limits_loop(ctx.clone()));
    shutdown.tracker().spawn(profiles_loop(ctx.clone()));
    shutdown
        .tracker()
        .spawn(store::write_session_counters(ctx.clone()));
    Ok(handle)
}

/// Writes the refusal log's summaries and sweeps the failed-link buckets, every second.
async fn limits_loop(ctx: Arc<ProxyContext>) {
    loop {
        tokio::select! {
            () = ctx.shutdown.token().cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        ctx.limits.maintain();
    }
}

/// Re-reads the firewall profiles file when it changes, every few seconds. A broken file is
/// reported once and the previous profiles stay in force.
async fn profiles_loop(ctx: Arc<ProxyContext>) {
    loop {
        tokio::select! {
            () = ctx.shutdown.token().cancelled() => return,
            () = tokio::time::sleep(PROFILES_POLL) => {}
        }
        let result = match ctx.profiles.lock() {
            Ok(mut store) => store.reload_if_changed(),
            Err(_) => return,
        };
        match result {
            Ok(true) => tracing::info!("firewall profiles reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "firewall profiles file is invalid: keeping the previous profiles")
            }
        }
    }
}

/// How often the firewall profiles file is checked for changes.
const PROFILES_POLL: Duration = Duration::from_secs(5);

impl ProxyContext {
    /// The firewall profile named `requested` by a console, or recorded on a session (see
    /// [`ProfileSet::resolve`](crate::firewall::ProfileSet::resolve)): its name as recorded, and
    /// the profile. An unknown name fails closed to `most-restrictive` and is logged.
    pub fn firewall_profile(&self, requested: Option<&str>) -> (String, Arc<Profile>) {
        let set = match self.profiles.lock() {
            Ok(store) => store.current(),
            Err(_) => Arc::new(crate::firewall::ProfileSet::builtin()),
        };
        let resolved = set.resolve(requested);
        match resolved.unknown {
            Some(name) => {
                tracing::warn!(profile = %name, "unknown firewall profile: using most-restrictive");
                (MOST_RESTRICTIVE_PROFILE.to_owned(), resolved.profile)
            }
            None => (
                requested.unwrap_or(DEFAULT_PROFILE).to_owned(),
                resolved.profile,
            ),
        }
    }

    /// The metrics of the proxy.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics.proxy
    }
}
