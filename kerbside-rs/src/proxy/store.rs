//! Every database operation of the proxy, each in one blocking round trip.
//!
//! Keeping them here keeps the link path's database work visible (and countable: one round
//! trip to authorize, one to start a session, one per channel) and the rest of the proxy free
//! of Diesel.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::NaiveDateTime;

use super::error::{DenyReason, ProxyError};
use super::registry::LocalSession;
use crate::db::models::{
    self, ConsoleId, ConsoleTokenId, NewAuditEvent, NewChannel, NewSession, SessionId, TokenBinding,
};
use crate::db::{Db, DbError};
use crate::shutdown::Shutdown;
use crate::spice::ChannelType;

/// The proxy's view of the database.
#[derive(Clone)]
pub struct Store {
    db: Db,
    node: Arc<str>,
    audit: Arc<Mutex<AuditQueue>>,
}

/// Audit events waiting to be written. One writer task at a time drains the queue, so events
/// raised while it writes go into the next transaction: one database round trip per batch
/// instead of three per event.
#[derive(Default)]
struct AuditQueue {
    events: Vec<(NewAuditEvent, NaiveDateTime)>,
    writing: bool,
}

/// Most events written in one transaction.
const AUDIT_BATCH: usize = 256;

/// Where a console is and how to authenticate to it.
#[derive(Clone)]
pub struct ConsoleTarget {
    /// Console row id.
    pub console_id: i64,
    /// Instance uuid.
    pub uuid: String,
    /// Address to connect to.
    pub host: String,
    /// Plain port.
    pub plain_port: Option<u16>,
    /// TLS port.
    pub tls_port: Option<u16>,
    /// The hypervisor ticket (empty when none).
    pub ticket: Vec<u8>,
    /// Expected certificate subject.
    pub host_subject: Option<String>,
    /// CA of the console's source, PEM.
    pub ca_pem: Option<String>,
    /// Marked stale by a notification.
    pub stale: bool,
}

impl std::fmt::Debug for ConsoleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleTarget")
            .field("uuid", &self.uuid)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A token that may open its console.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// Token row id.
    pub token_id: i64,
    /// The client address the token is bound to, if a session already bound it.
    pub bound_address: Option<String>,
    /// Its console.
    pub console: ConsoleTarget,
}

/// A created session.
#[derive(Debug)]
pub struct SessionRow {
    /// Session id.
    pub id: String,
    /// The connection id clients get in MAIN_INIT.
    pub proxy_connection_id: u32,
}

/// A live session found by connection id.
#[derive(Debug)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// Console row id.
    pub console_id: i64,
    /// Token row id.
    pub token_id: Option<i64>,
    /// Hypervisor session id, once known.
    pub upstream_session_id: Option<u32>,
}

/// A termination request.
#[derive(Debug)]
pub struct Termination {
    /// Request id.
    pub id: i64,
    /// Session to end.
    pub session_id: String,
    /// Why.
    pub reason: String,
}

/// An audit event to record in the background.
#[derive(Debug)]
pub struct AuditEvent {
    /// Console row.
    pub console_id: Option<i64>,
    /// Session.
    pub session_id: Option<String>,
    /// Channel row.
    pub channel_id: Option<i64>,
    /// Kind, e.g. `session.created`.
    pub event_type: &'static str,
    /// Description (never a secret).
    pub message: String,
}

impl AuditEvent {
    /// An event about a session.
    pub fn session(
        session: &LocalSession,
        console_id: i64,
        event_type: &'static str,
        message: String,
    ) -> Self {
        AuditEvent {
            console_id: Some(console_id),
            session_id: Some(session.id.clone()),
            channel_id: None,
            event_type,
            message,
        }
    }
}

fn db_error(e: DbError) -> ProxyError {
    ProxyError::Database(e.to_string())
}

fn port(value: Option<i32>) -> Option<u16> {
    value
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

fn target(console: models::Console, ca_pem: Option<String>) -> ConsoleTarget {
    use secrecy::ExposeSecret;
    ConsoleTarget {
        console_id: console.id.0,
        uuid: console.uuid,
        host: console.hypervisor_ip,
        plain_port: port(console.insecure_port),
        tls_port: port(console.secure_port),
        ticket: console
            .ticket
            .map(|t| t.expose_secret().as_bytes().to_vec())
            .unwrap_or_default(),
        host_subject: console.host_subject,
        ca_pem,
        stale: console.stale,
    }
}

impl Store {
    /// A store for this node.
    pub fn new(db: Db, node: String) -> Self {
        Store {
            db,
            node: node.into(),
            audit: Arc::default(),
        }
    }

    /// Looks a token up by its hash and, when it is valid, loads its console.
    ///
    /// # Errors
    /// Database failures; an invalid token is `Ok(Err(reason))`.
    pub async fn authorize(
        &self,
        token: &str,
    ) -> Result<Result<Authorized, DenyReason>, ProxyError> {
        let hash = crate::token::hash_token(token);
        self.db
            .run(move |conn| {
                let Some(row) = models::find_token_by_hash(conn, &hash)? else {
                    return Ok(Err(DenyReason::UnknownToken));
                };
                if row.revoked_at.is_some() {
                    return Ok(Err(DenyReason::RevokedToken));
                }
                if !row.is_valid_at(crate::db::now()) {
                    return Ok(Err(DenyReason::ExpiredToken));
                }
                let console = models::get_console(conn, row.console_id)?;
                let source = models::get_source(conn, console.source_id)?;
                Ok(Ok(Authorized {
                    token_id: row.id.0,
                    bound_address: row.client_address,
                    console: target(console, source.ca_cert),
                }))
            })
            .await
            .map_err(db_error)
    }

    /// A console's current target (non-main channels re-read it: the console may have moved).
    ///
    /// # Errors
    /// Database failures.
    pub async fn console_target(&self, console_id: i64) -> Result<ConsoleTarget, ProxyError> {
        self.db
            .run(move |conn| {
                let console = models::get_console(conn, ConsoleId(console_id))?;
                let source = models::get_source(conn, console.source_id)?;
                Ok(target(console, source.ca_cert))
            })
            .await
            .map_err(db_error)
    }

    /// Creates a session with a fresh connection id and binds the token to it.
    ///
    /// # Errors
    /// `Denied(BoundElsewhere)` when another client bound the token first (the session is
    /// then ended again), `Denied(ExpiredToken)` when it expired meanwhile, database failures.
    pub async fn start_session(
        &self,
        authorized: &Authorized,
        client_ip: &str,
    ) -> Result<SessionRow, ProxyError> {
        let node = self.node.to_string();
        let console_id = authorized.console.console_id;
        let token_id = authorized.token_id;
        let client_ip = client_ip.to_owned();
        self.db
            .run(move |conn| {
                let mut attempts = 0;
                let session = loop {
                    let new = NewSession {
                        id: SessionId::generate(),
                        console_id: ConsoleId(console_id),
                        token_id: Some(ConsoleTokenId(token_id)),
                        client_address: client_ip.clone(),
                        node: node.clone(),
                        proxy_connection_id: models::allocate_connection_id(conn)?,
                        upstream_session_id: None,
                    };
                    match models::create_session(conn, &new) {
                        Ok(session) => break session,
                        // Another node took the same connection id: draw again.
                        Err(DbError::Conflict { .. }) if attempts < 3 => attempts += 1,
                        Err(e) => return Err(e),
                    }
                };
                let denied = match models::bind_token(
                    conn,
                    ConsoleTokenId(token_id),
                    &session.id,
                    &client_ip,
                )? {
                    TokenBinding::Bound => None,
                    TokenBinding::AlreadyBound { client_address, .. } => {
                        if client_address.as_deref() == Some(client_ip.as_str()) {
                            None
                        } else {
                            Some(DenyReason::BoundElsewhere)
                        }
                    }
                    TokenBinding::NotValid => Some(DenyReason::ExpiredToken),
                };
                if let Some(reason) = denied {
                    models::end_session(conn, &session.id, &format!("denied: {reason}"), 0, 0)?;
                    return Ok(Err(reason));
                }
                let id = u32::try_from(session.proxy_connection_id).unwrap_or_default();
                Ok(Ok(SessionRow {
                    id: session.id.0,
                    proxy_connection_id: id,
                }))
            })
            .await
            .map_err(db_error)?
            .map_err(ProxyError::Denied)
    }

    /// The live session whose clients were given `connection_id`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn find_live_session(
        &self,
        connection_id: u32,
    ) -> Result<Option<SessionInfo>, ProxyError> {
        self.db
            .run(move |conn| {
                Ok(
                    models::find_live_session_by_connection_id(conn, i64::from(connection_id))?
                        .map(|s| SessionInfo {
                            id: s.id.0,
                            console_id: s.console_id.0,
                            token_id: s.token_id.map(|t| t.0),
                            upstream_session_id: s
                                .upstream_session_id
                                .and_then(|u| u32::try_from(u).ok()),
                        }),
                )
            })
            .await
            .map_err(db_error)
    }

    /// Records the hypervisor's session id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_upstream_session(
        &self,
        session_id: &str,
        upstream_id: u32,
    ) -> Result<(), ProxyError> {
        let id = SessionId(session_id.to_owned());
        self.db
            .run(move |conn| models::set_upstream_session_id(conn, &id, i64::from(upstream_id)))
            .await
            .map_err(db_error)
    }

    /// Records a channel; returns its row id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn start_channel(
        &self,
        session_id: &str,
        channel: ChannelType,
        channel_id: u8,
        client_ip: &str,
    ) -> Result<i64, ProxyError> {
        let new = NewChannel {
            session_id: SessionId(session_id.to_owned()),
            node: self.node.to_string(),
            channel_type: i32::from(channel.as_u8()),
            channel_id: i32::from(channel_id),
            client_address: client_ip.to_owned(),
        };
        self.db
            .run(move |conn| models::create_channel(conn, &new).map(|c| c.id.0))
            .await
            .map_err(db_error)
    }

    /// Records a channel's end.
    ///
    /// # Errors
    /// Database failures.
    pub async fn end_channel(
        &self,
        channel_row: i64,
        to_client: u64,
        to_server: u64,
    ) -> Result<(), ProxyError> {
        self.db
            .run(move |conn| {
                models::end_channel(conn, models::ChannelId(channel_row), to_client, to_server)
                    .map(|_| ())
            })
            .await
            .map_err(db_error)
    }

    /// Records a session's end. A pending termination request wins over the reason seen here:
    /// when another node closes its channels first, the hypervisor drops the whole client, and
    /// the operator's reason is still the true one. The request is then marked handled.
    ///
    /// # Errors
    /// Database failures.
    pub async fn end_session(
        &self,
        session_id: &str,
        reason: &str,
        to_client: u64,
        to_server: u64,
    ) -> Result<(), ProxyError> {
        let id = SessionId(session_id.to_owned());
        let reason = reason.to_owned();
        let node = self.node.to_string();
        self.db
            .run(move |conn| {
                let reason = match models::pending_termination_for_session(conn, &id)? {
                    Some(request) => {
                        models::mark_termination_handled(conn, request.id, &node)?;
                        format!("terminated: {}", request.reason)
                    }
                    None => reason,
                };
                models::end_session(conn, &id, &reason, to_client, to_server).map(|_| ())
            })
            .await
            .map_err(db_error)
    }

    /// Ends sessions this node left open when it last stopped without closing them.
    ///
    /// # Errors
    /// Database failures.
    pub async fn end_orphaned_sessions(&self) -> Result<usize, ProxyError> {
        let node = self.node.to_string();
        self.db
            .run(move |conn| models::end_sessions_on_node(conn, &node, "proxy restarted"))
            .await
            .map_err(db_error)
    }

    /// Unhandled termination requests of live sessions on any node.
    ///
    /// # Errors
    /// Database failures.
    pub async fn pending_terminations(&self) -> Result<Vec<Termination>, ProxyError> {
        self.db
            .run(|conn| {
                Ok(models::pending_terminations(conn)?
                    .into_iter()
                    .map(|t| Termination {
                        id: t.id.0,
                        session_id: t.session_id.0,
                        reason: t.reason,
                    })
                    .collect())
            })
            .await
            .map_err(db_error)
    }

    /// Which of these sessions have ended, with their end reasons.
    ///
    /// # Errors
    /// Database failures.
    pub async fn ended_sessions(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<(String, String)>, ProxyError> {
        self.db
            .run(move |conn| {
                let mut ended = Vec::new();
                for id in ids {
                    let session = models::get_session(conn, &SessionId(id))?;
                    if !session.is_live() {
                        let reason = session
                            .end_reason
                            .unwrap_or_else(|| "session ended".to_owned());
                        ended.push((session.id.0, reason));
                    }
                }
                Ok(ended)
            })
            .await
            .map_err(db_error)
    }

    /// Records an audit event without making the caller wait; a failure is logged.
    ///
    /// Events are queued with the time they happened and written in batches by one background
    /// task (tracked by `shutdown`, so a clean stop writes what is queued).
    pub fn audit(&self, shutdown: &Shutdown, event: AuditEvent) {
        let mut new = NewAuditEvent::new(self.node.to_string(), event.event_type, event.message);
        new.console_id = event.console_id.map(ConsoleId);
        new.session_id = event.session_id.map(SessionId);
        new.channel_id = event.channel_id.map(models::ChannelId);
        let start_writer = {
            let mut queue = self.audit.lock().unwrap_or_else(PoisonError::into_inner);
            queue.events.push((new, crate::db::now()));
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            let db = self.db.clone();
            let queue = self.audit.clone();
            shutdown.tracker().spawn(write_audit_events(db, queue));
        }
    }
}

/// Writes queued audit events until the queue is empty.
async fn write_audit_events(db: Db, queue: Arc<Mutex<AuditQueue>>) {
    loop {
        let batch: Vec<_> = {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.events.is_empty() {
                queue.writing = false;
                return;
            }
            let take = queue.events.len().min(AUDIT_BATCH);
            queue.events.drain(..take).collect()
        };
        let count = batch.len();
        if let Err(e) = db
            .run(move |conn| models::record_events_at(conn, &batch))
            .await
        {
            tracing::warn!(error = %e, events = count, "cannot record audit events");
        }
    }
}
