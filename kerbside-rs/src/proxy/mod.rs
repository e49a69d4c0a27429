//! The SPICE proxy: TLS and plain listeners, the per-connection link stage, the relay, live
//! termination and the session bookkeeping shared with other nodes through the database.
//!
//! It depends on `config`, `db` (through `store`), `spice` (pure protocol) and `metrics`; it
//! never imports the API or the notification consumer.

mod copy;
pub mod error;
pub mod keypool;
pub mod registry;
pub mod relay;
pub mod session;
pub mod store;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, HypervisorTls};
use crate::db::Db;
use crate::metrics::{Metrics, ProxyMetrics};
use crate::shutdown::Shutdown;
use crate::spice::{ChannelType, LinkError, SpiceError, encode_link_error, parse_link_message};
use error::{DenyReason, ProxyError};
use registry::{LocalSession, Registry};
use store::{Authorized, ConsoleTarget, Store};
use upstream::Target;

/// Everything a connection handler needs, shared by all connections of the process.
pub struct ProxyContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// This node's name.
    pub node: String,
    /// Database access for the proxy.
    pub store: Store,
    /// One-time RSA keys.
    pub keys: keypool::KeyPool,
    /// The client-facing TLS acceptor.
    pub tls: TlsAcceptor,
    /// Sessions with channels in this process.
    pub registry: Registry,
    /// `[proxy] max_sessions` slots.
    pub session_slots: Arc<Semaphore>,
    /// Proxy metrics.
    pub metrics: Arc<Metrics>,
    /// Process shutdown.
    pub shutdown: Shutdown,
    /// CA used for hypervisors whose source has none (`[proxy] hypervisor_ca_file`).
    default_hypervisor_ca: Option<Vec<CertificateDer<'static>>>,
    /// Hypervisor TLS configurations by (CA PEM, host subject), built once.
    client_configs: Mutex<HashMap<(String, String), Arc<ClientConfig>>>,
}

/// The addresses a started proxy listens on.
#[derive(Clone)]
pub struct ProxyHandle {
    /// TLS listener addresses.
    pub tls_addrs: Vec<SocketAddr>,
    /// Plain (NEED_SECURED) listener addresses.
    pub insecure_addrs: Vec<SocketAddr>,
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
/// A message naming what could not be set up (certificate, address, key pool).
pub async fn start(
    config: Arc<Config>,
    db: Db,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    tls: &ProxyTls,
) -> Result<ProxyHandle, String> {
    let server_config = tls::server_config(&tls.cert_file, &tls.key_file)?;
    let default_hypervisor_ca = match &config.proxy.hypervisor_ca_file {
        Some(path) => Some(crate::tlsutil::load_certs(path)?),
        None => None,
    };
    let pool_size = usize::try_from(config.proxy.key_pool_size).unwrap_or(32);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let keys = keypool::KeyPool::start(pool_size, threads)
        .map_err(|e| format!("cannot start RSA key threads: {e}"))?;
    let node = config.node_name();
    let ctx = Arc::new(ProxyContext {
        node: node.clone(),
        store: Store::new(db, node),
        keys,
        tls: TlsAcceptor::from(server_config),
        registry: Registry::default(),
        session_slots: Arc::new(Semaphore::new(
            usize::try_from(config.proxy.max_sessions).unwrap_or(1000),
        )),
        metrics,
        shutdown: shutdown.clone(),
        default_hypervisor_ca,
        client_configs: Mutex::new(HashMap::new()),
        config: config.clone(),
    });
    match ctx.store.end_orphaned_sessions().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            sessions = n,
            "ended sessions left open by an earlier run of this node"
        ),
        Err(e) => return Err(format!("cannot reach the database: {e}")),
    }
    let max_connections = usize::try_from(config.proxy.max_connections).unwrap_or(10_000);
    let mut handle = ProxyHandle {
        tls_addrs: Vec::new(),
        insecure_addrs: Vec::new(),
        context: ctx.clone(),
    };
    for host in &config.proxy.bind_host {
        for (port, secure) in [
            (config.proxy.tls_port, true),
            (config.proxy.insecure_port, false),
        ] {
            let addr = SocketAddr::new(*host, port);
            let listener = bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            if secure {
                handle.tls_addrs.push(local);
            } else {
                handle.insecure_addrs.push(local);
            }
            let slots = Arc::new(Semaphore::new(max_connections));
            shutdown
                .tracker()
                .spawn(accept_loop(ctx.clone(), listener, secure, slots));
            tracing::info!(address = %local, tls = secure, "SPICE listener ready");
        }
    }
    shutdown.tracker().spawn(termination_loop(ctx.clone()));
    Ok(handle)
}

/// Binds a listening socket; IPv6 sockets are IPv6-only so `0.0.0.0` and `::` can be listed
/// together.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    ctx: Arc<ProxyContext>,
    listener: TcpListener,
    secure: bool,
    slots: Arc<Semaphore>,
) {
    let label = if secure { "tls" } else { "insecure" };
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.token().cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                // Usually out of file descriptors: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client.addr = %peer, "connection limit reached: closing");
            continue;
        };
        ctx.metrics
            .proxy
            .connections
            .with_label_values(&[label])
            .inc();
        let ctx2 = ctx.clone();
        ctx.shutdown.tracker().spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            if secure {
                session::serve_tls(ctx2, tcp, peer).await;
            } else {
                serve_insecure(&ctx2, tcp, peer).await;
            }
        });
    }
}

/// The plain listener: reads a link message and answers NEED_SECURED (or the error the
/// message deserves), so clients retry on the TLS port. No session ever runs in clear text.
async fn serve_insecure(ctx: &ProxyContext, mut tcp: TcpStream, peer: SocketAddr) {
    let timeout = Duration::from_secs(ctx.config.proxy.handshake_timeout);
    let read = tokio::time::timeout(timeout, async {
        let mut buf = Vec::with_capacity(64);
        loop {
            match parse_link_message(&buf) {
                Ok(_) => return Ok::<_, std::io::Error>(LinkError::NeedSecured),
                Err(SpiceError::Incomplete { needed }) => {
                    let start = buf.len();
                    buf.resize(start + needed, 0);
                    tcp.read_exact(buf.get_mut(start..).unwrap_or_default())
                        .await?;
                }
                Err(e) => return Ok(e.link_error()),
            }
        }
    })
    .await;
    let code = match read {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            tracing::debug!(client.addr = %peer, error = %e, "plain connection closed during link");
            return;
        }
        Err(_) => {
            ctx.metrics.proxy.link_failed("handshake_timeout");
            tracing::debug!(client.addr = %peer, "plain connection timed out");
            return;
        }
    };
    if code != LinkError::NeedSecured {
        ctx.metrics.proxy.link_failed("client_protocol");
    }
    let _ = tcp.write_all(&encode_link_error(code)).await;
    let _ = tcp.shutdown().await;
}

/// Ends sessions whose termination was requested (by `kerbside-manage session terminate`, the
/// API or a Nova notification) through the database, so any node holding channels of the
/// session closes them within one poll interval.
async fn termination_loop(ctx: Arc<ProxyContext>) {
    let interval = Duration::from_secs(ctx.config.proxy.termination_poll_interval.max(1));
    let mut failing = false;
    loop {
        tokio::select! {
            () = ctx.shutdown.token().cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if ctx.registry.is_empty() {
            continue;
        }
        match ctx.store.pending_terminations().await {
            Ok(requests) => {
                if failing {
                    tracing::info!("termination checks work again");
                    failing = false;
                }
                for request in requests {
                    let Some(session) = ctx.registry.get(&request.session_id) else {
                        continue;
                    };
                    tracing::info!(session.id = %session.id, reason = %request.reason, "terminating session");
                    ctx.metrics.proxy.terminations.inc();
                    // The node relaying the main channel records the end and marks the request
                    // handled (see `Store::end_session`), whichever side closed first.
                    session.end(&format!("terminated: {}", request.reason));
                }
                // Channels whose main channel lives on another node end with their session,
                // whatever ended it there.
                let remote = ctx.registry.remote();
                if !remote.is_empty() {
                    let ids = remote.iter().map(|s| s.id.clone()).collect();
                    match ctx.store.ended_sessions(ids).await {
                        Ok(ended) => {
                            for (id, reason) in ended {
                                if let Some(session) = ctx.registry.get(&id) {
                                    session.end(&reason);
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot check for ended sessions"),
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot check for termination requests");
                    failing = true;
                }
            }
        }
    }
}

impl ProxyContext {
    /// The metrics of the proxy.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics.proxy
    }

    /// How to reach a console's hypervisor under `[proxy] hypervisor_tls`.
    ///
    /// # Errors
    /// When the policy and the console's ports, CA or host subject do not allow a connection.
    pub fn target(&self, console: &ConsoleTarget) -> Result<Target, ProxyError> {
        let unusable = |reason: &str| ProxyError::ConsoleUnusable {
            console: console.uuid.clone(),
            reason: reason.to_owned(),
        };
        let policy = self.config.proxy.hypervisor_tls;
        let ca_pem = console.ca_pem.clone();
        let have_ca = ca_pem.is_some() || self.default_hypervisor_ca.is_some();
        let tls = match (policy, console.tls_port) {
            (HypervisorTls::Never, _) => None,
            (_, Some(port)) if have_ca => Some((
                port,
                self.client_config(ca_pem.as_deref(), console.host_subject.as_deref())?,
            )),
            (HypervisorTls::Require, Some(_)) => {
                return Err(unusable(
                    "TLS is required but no CA is configured for its hypervisor",
                ));
            }
            (HypervisorTls::Require, None) => {
                return Err(unusable("TLS is required but the console has no TLS port"));
            }
            (HypervisorTls::Auto, _) => None,
        };
        let plain_port = if policy == HypervisorTls::Require {
            None
        } else {
            console.plain_port
        };
        if tls.is_none() && plain_port.is_none() {
            return Err(unusable(
                "no usable port: it has only a TLS port and no CA is configured for its hypervisor",
            ));
        }
        Ok(Target {
            host: console.host.clone(),
            plain_port,
            tls,
            ticket: console.ticket.clone(),
            timeout: Duration::from_secs(self.config.proxy.connect_timeout),
        })
    }

    fn client_config(
        &self,
        ca_pem: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Arc<ClientConfig>, ProxyError> {
        let key = (
            ca_pem.unwrap_or_default().to_owned(),
            subject.unwrap_or_default().to_owned(),
        );
        if let Some(config) = self
            .client_configs
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(config);
        }
        let internal =
            |e: String| ProxyError::Internal(format!("hypervisor TLS configuration: {e}"));
        let ca = match ca_pem {
            Some(pem) => crate::tlsutil::parse_certs(pem).map_err(internal)?,
            None => self.default_hypervisor_ca.clone().unwrap_or_default(),
        };
        let subject = subject
            .map(crate::tlsutil::parse_host_subject)
            .transpose()
            .map_err(internal)?;
        let config = tls::hypervisor_client_config(&ca, subject).map_err(internal)?;
        if let Ok(mut map) = self.client_configs.lock() {
            map.insert(key, config.clone());
        }
        Ok(config)
    }

    /// Records a new session for an authorized main channel and registers it here.
    ///
    /// # Errors
    /// Database failures, or a token bound to another client in the meantime.
    pub async fn start_session(
        &self,
        authorized: &Authorized,
        client_ip: &str,
        slot: OwnedSemaphorePermit,
    ) -> Result<Arc<LocalSession>, ProxyError> {
        let row = self.store.start_session(authorized, client_ip).await?;
        self.metrics.proxy.auth_ok();
        self.metrics.proxy.sessions_active.inc();
        let session = self.registry.insert(LocalSession::new(
            row.id,
            authorized.console.console_id,
            Some(authorized.token_id),
            row.proxy_connection_id,
            None,
            Some(slot),
            self.shutdown.stop_token().child_token(),
        ));
        self.store.audit(
            &self.shutdown,
            store::AuditEvent::session(
                &session,
                authorized.console.console_id,
                "session.created",
                format!("session created for client {client_ip}"),
            ),
        );
        Ok(session)
    }

    /// The session a non-main channel's connection id names, from this process or the database.
    ///
    /// # Errors
    /// `Denied(UnknownSession)` when no live session has that id.
    pub async fn find_session(&self, connection_id: u32) -> Result<Arc<LocalSession>, ProxyError> {
        if let Some(session) = self.registry.by_connection_id(connection_id) {
            return Ok(session);
        }
        let info = self
            .store
            .find_live_session(connection_id)
            .await?
            .ok_or(ProxyError::Denied(DenyReason::UnknownSession))?;
        Ok(self.registry.insert(LocalSession::new(
            info.id,
            info.console_id,
            info.token_id,
            connection_id,
            info.upstream_session_id,
            None,
            self.shutdown.stop_token().child_token(),
        )))
    }

    /// Records a channel row.
    ///
    /// # Errors
    /// Database failures.
    pub async fn start_channel(
        &self,
        session: &LocalSession,
        channel: ChannelType,
        channel_id: u8,
        client_ip: &str,
    ) -> Result<i64, ProxyError> {
        let id = self
            .store
            .start_channel(&session.id, channel, channel_id, client_ip)
            .await?;
        self.store.audit(
            &self.shutdown,
            store::AuditEvent::session(
                session,
                session.console_id,
                "channel.created",
                format!("{} channel {channel_id} linked", channel.name()),
            ),
        );
        Ok(id)
    }

    /// Stores the hypervisor's session id before the client learns the proxy's.
    ///
    /// # Errors
    /// Database failures: the channel then ends, since other channels could not be routed.
    pub async fn record_upstream_session(
        &self,
        session: &LocalSession,
        upstream_id: u32,
    ) -> Result<(), ProxyError> {
        session.set_upstream_session_id(upstream_id);
        self.store
            .set_upstream_session(&session.id, upstream_id)
            .await
    }

    /// Records a channel's end.
    pub async fn end_channel(
        &self,
        session: &LocalSession,
        channel_row: i64,
        to_client: u64,
        to_server: u64,
    ) {
        if let Err(e) = self
            .store
            .end_channel(channel_row, to_client, to_server)
            .await
        {
            tracing::warn!(error = %e, "cannot record the end of a channel");
        }
        if session.channel_ended() == 0 && !session.holds_main {
            self.registry.remove(&session.id);
        }
    }

    /// Records a session's end (its main channel ended here).
    pub async fn end_session(&self, session: &LocalSession, reason: &str) {
        let (to_client, to_server) = session.totals();
        self.metrics.proxy.sessions_active.dec();
        self.registry.remove(&session.id);
        if let Err(e) = self
            .store
            .end_session(&session.id, reason, to_client, to_server)
            .await
        {
            tracing::warn!(error = %e, "cannot record the end of a session");
        }
        self.store.audit(&self.shutdown, store::AuditEvent::session(session, session.console_id, "session.ended", format!("session ended: {reason}; {to_client} bytes to client, {to_server} bytes to hypervisor")));
        tracing::info!(
            bytes_to_client = to_client,
            bytes_to_server = to_server,
            reason,
            "session ended"
        );
    }

    /// Audits a channel's authenticated hypervisor connection.
    pub fn audit_hypervisor_connected(
        &self,
        session: &LocalSession,
        channel: ChannelType,
        addr: &str,
    ) {
        self.store.audit(
            &self.shutdown,
            store::AuditEvent::session(
                session,
                session.console_id,
                "hypervisor.connected",
                format!("{} channel connected to hypervisor {addr}", channel.name()),
            ),
        );
    }

    /// Audits a failed hypervisor connection.
    pub fn audit_hypervisor_failure(
        &self,
        console: &ConsoleTarget,
        session: Option<&str>,
        error: &ProxyError,
    ) {
        self.store.audit(
            &self.shutdown,
            store::AuditEvent {
                console_id: Some(console.console_id),
                session_id: session.map(str::to_owned),
                channel_id: None,
                event_type: "hypervisor.failed",
                message: error.to_string(),
            },
        );
    }
}
