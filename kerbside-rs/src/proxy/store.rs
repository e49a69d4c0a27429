//! Every database operation of the proxy.
//!
//! Keeping them here keeps the link path's database work visible (and countable: one round
//! trip to authorize, one to start a session, one per channel) and the rest of the proxy free
//! of Diesel.
//!
//! Two kinds of work, two policies:
//! - The link path (authorize, start a session or channel) reads and writes synchronously but
//!   waits at most `link_checkout` for a connection, so a database outage refuses the client
//!   with a server error (reason `database`) before its handshake deadline.
//! - Records of what already happened (channel and session ends, the termination requests they
//!   handle, audit events) go through a bounded, ordered write-behind queue (`WriteBehind`):
//!   one background writer writes them in batches with the time they happened and, while the
//!   database is down, keeps them and retries with capped backoff. A node that stops before
//!   the database comes back loses what is queued; its restart ends its open sessions
//!   ([`Store::end_orphaned_sessions`]).
//!
//! A third, periodic task ([`write_session_counters`]) writes the byte counts of live sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::Connection as _;
use prometheus::{IntCounter, IntGauge};

use super::end::EndReason;
use super::error::{DenyReason, ProxyError};
use super::registry::LocalSession;
pub use super::target::ConsoleTarget;
use crate::db::models::{
    self, AuditKind, ConsoleId, ConsoleTokenId, NewAuditEvent, NewChannel, NewSession, SessionId,
    TokenBinding,
};
use crate::db::{Db, DbConnection, DbError};
use crate::metrics::DbWriteMetrics;
use crate::shutdown::Shutdown;
use crate::spice::ChannelType;

/// The proxy's view of the database.
#[derive(Clone)]
pub struct Store {
    /// The pool.
    db: Db,
    /// This node's name.
    node: Arc<str>,
    /// Longest wait for a connection on the link path.
    link_checkout: Duration,
    /// Records waiting to be written.
    writes: Arc<WriteBehind>,
}

/// How a [`Store`] behaves; from `[database]` and `[proxy]`.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Longest wait for a connection on the link path: `[database] pool_timeout`, and at
    /// most half of `[proxy] handshake_timeout`.
    pub link_checkout: Duration,
    /// Most records the write-behind queue holds (`[database] write_queue_size`).
    pub queue_size: usize,
}

impl StoreOptions {
    /// The options a configuration asks for.
    #[must_use]
    pub fn from_config(config: &crate::config::Config) -> Self {
        let pool = Duration::from_secs(config.database.pool_timeout.max(1));
        let handshake = Duration::from_secs(config.proxy.handshake_timeout.max(1));
        StoreOptions {
            link_checkout: pool.min(handshake / 2),
            queue_size: usize::try_from(config.database.write_queue_size)
                .unwrap_or(10_000)
                .max(1),
        }
    }
}

/// A record of something that already happened, waiting to be written.
#[derive(Clone, Debug)]
enum Record {
    /// A channel linked (its row id chosen beforehand by `models::new_channel_id`).
    ChannelStarted {
        /// Channel row.
        row: models::ChannelId,
        /// The row.
        new: NewChannel,
        /// When.
        at: NaiveDateTime,
    },
    /// A channel ended.
    ChannelEnded {
        /// Channel row.
        row: models::ChannelId,
        /// Bytes relayed to the client.
        to_client: u64,
        /// Bytes relayed to the hypervisor.
        to_server: u64,
        /// When.
        at: NaiveDateTime,
    },
    /// A session ended (and the termination request that ended it, if any, is handled).
    SessionEnded {
        /// Session.
        id: SessionId,
        /// Why, unless a termination request says otherwise.
        reason: String,
        /// Bytes relayed to the client.
        to_client: u64,
        /// Bytes relayed to the hypervisor.
        to_server: u64,
        /// When.
        at: NaiveDateTime,
    },
    /// An audit event.
    Audit(NewAuditEvent, NaiveDateTime),
}

impl Record {
    /// Writes the record on `conn`.
    fn write(&self, conn: &mut DbConnection, node: &str) -> Result<(), DbError> {
        match self {
            Record::ChannelStarted { row, new, at } => {
                models::create_channel_with_id_at(conn, *row, new, *at)
            }
            Record::ChannelEnded {
                row,
                to_client,
                to_server,
                at,
            } => models::end_channel_at(conn, *row, *to_client, *to_server, *at).map(drop),
            Record::SessionEnded {
                id,
                reason,
                to_client,
                to_server,
                at,
            } => {
                // A pending termination request wins over the reason seen here: when another
                // node closes its channels first, the hypervisor drops the whole client, and
                // the operator's reason is still the true one.
                let reason = match models::pending_termination_for_session(conn, id)? {
                    Some(request) => {
                        models::mark_termination_handled_at(conn, request.id, node, *at)?;
                        EndReason::Terminated(request.reason).to_string()
                    }
                    None => reason.clone(),
                };
                models::end_session_at(conn, id, &reason, *to_client, *to_server, *at).map(drop)
            }
            Record::Audit(event, at) => models::append_event_at(conn, event, *at),
        }
    }
}

/// The bounded, ordered write-behind queue and its writer's state.
///
/// One writer task at a time drains it (started on demand, on the shutdown tracker), so
/// records raised while it writes go into the next transaction: one round trip per batch.
struct WriteBehind {
    /// Queued records, oldest first, and whether a writer runs.
    state: Mutex<Pending>,
    /// Most records held (queued plus in flight).
    capacity: usize,
    /// Queue length gauge and dropped counter.
    queue_length: IntGauge,
    /// Records dropped.
    dropped: IntCounter,
    /// The process's shutdown: the writer runs on its tracker and gives up on its stop token.
    shutdown: Shutdown,
}

/// The queue proper.
#[derive(Default)]
struct Pending {
    /// Records not yet taken by the writer, oldest first.
    records: VecDeque<Record>,
    /// Records the writer is writing now (they return to the front if the write fails).
    in_flight: usize,
    /// Whether a writer task runs.
    writing: bool,
    /// Whether a full queue was reported since the last successful write.
    overflow_reported: bool,
}

/// Most records written in one transaction.
const WRITE_BATCH: usize = 256;

/// First and longest pause between write attempts while the database is unavailable.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// A token that may open its console.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// Token row id.
    pub token_id: ConsoleTokenId,
    /// The client address the token is bound to, if a session already bound it.
    pub bound_address: Option<String>,
    /// Its console.
    pub console: ConsoleTarget,
}

/// A created session.
#[derive(Debug)]
pub struct SessionRow {
    /// Session id.
    pub id: SessionId,
    /// The connection id clients get in MAIN_INIT.
    pub proxy_connection_id: u32,
}

/// A live session found by connection id.
#[derive(Debug)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// Console row id.
    pub console_id: ConsoleId,
    /// Token row id.
    pub token_id: Option<ConsoleTokenId>,
    /// Hypervisor session id, once known.
    pub upstream_session_id: Option<u32>,
    /// The firewall profile recorded when the session started (none for sessions from
    /// before the firewall).
    pub firewall_profile: Option<String>,
    /// Where its console is.
    pub target: ConsoleTarget,
}

/// A termination request.
#[derive(Debug)]
pub struct Termination {
    /// Request id.
    pub id: models::SessionTerminationId,
    /// Session to end.
    pub session_id: SessionId,
    /// Why.
    pub reason: String,
}

/// An audit event to record in the background.
#[derive(Debug)]
pub struct AuditEvent {
    /// Console row.
    pub console_id: Option<ConsoleId>,
    /// Session.
    pub session_id: Option<SessionId>,
    /// Channel row.
    pub channel_id: Option<models::ChannelId>,
    /// What it records.
    pub event_type: AuditKind,
    /// Description (never a secret).
    pub message: String,
}

impl AuditEvent {
    /// An event about a session.
    pub fn session(
        session: &LocalSession,
        console_id: ConsoleId,
        event_type: AuditKind,
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

    /// An event about one channel (its row) of a session.
    pub fn channel(
        session: &LocalSession,
        channel_row: models::ChannelId,
        event_type: AuditKind,
        message: String,
    ) -> Self {
        AuditEvent {
            channel_id: Some(channel_row),
            ..AuditEvent::session(session, session.console_id, event_type, message)
        }
    }
}

fn db_error(e: DbError) -> ProxyError {
    ProxyError::Database(e)
}

fn port(value: Option<i32>) -> Option<u16> {
    value
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

fn target(console: models::Console, ca_pem: Option<String>) -> ConsoleTarget {
    use secrecy::ExposeSecret;
    ConsoleTarget {
        console_id: console.id,
        uuid: console.uuid,
        host: console.hypervisor_ip,
        name: console.hypervisor,
        plain_port: port(console.insecure_port),
        tls_port: port(console.secure_port),
        ticket: console
            .ticket
            .map(|t| t.expose_secret().as_bytes().to_vec())
            .unwrap_or_default(),
        host_subject: console.host_subject,
        ca_pem,
        stale: console.stale,
        firewall_profile: console.firewall_profile,
    }
}

impl Store {
    /// A store for this node. Its write-behind writer runs on `shutdown`'s tracker.
    pub fn new(
        db: Db,
        node: String,
        options: &StoreOptions,
        metrics: &DbWriteMetrics,
        shutdown: Shutdown,
    ) -> Self {
        Store {
            db,
            node: node.into(),
            link_checkout: options.link_checkout,
            writes: Arc::new(WriteBehind {
                state: Mutex::default(),
                capacity: options.queue_size.max(1),
                queue_length: metrics.queue_length.clone(),
                dropped: metrics.dropped.clone(),
                shutdown,
            }),
        }
    }

    /// Runs `f` for the link path: waits at most `link_checkout` for a connection.
    async fn link<F, T>(&self, f: F) -> Result<T, ProxyError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.db
            .run_within(self.link_checkout, f)
            .await
            .map_err(db_error)
    }

    /// Records waiting in the write-behind queue (queued and in flight).
    #[must_use]
    pub fn pending_writes(&self) -> usize {
        let state = self.writes.lock();
        state.records.len() + state.in_flight
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
        self.link(move |conn| {
            // One query for the token, its console and the source's CA.
            let Some((row, console, ca_cert)) = models::find_token_with_console(conn, &hash)?
            else {
                return Ok(Err(DenyReason::UnknownToken));
            };
            if row.revoked_at.is_some() {
                return Ok(Err(DenyReason::RevokedToken));
            }
            if !row.is_valid_at(crate::db::now()) {
                return Ok(Err(DenyReason::ExpiredToken));
            }
            Ok(Ok(Authorized {
                token_id: row.id,
                bound_address: row.client_address,
                console: target(console, ca_cert),
            }))
        })
        .await
    }

    /// A console's current target (non-main channels re-read it: the console may have moved).
    ///
    /// # Errors
    /// Database failures.
    pub async fn console_target(&self, console_id: ConsoleId) -> Result<ConsoleTarget, ProxyError> {
        self.link(move |conn| {
            let console = models::get_console(conn, console_id)?;
            let source = models::get_source(conn, console.source_id)?;
            Ok(target(console, source.ca_cert))
        })
        .await
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
        firewall_profile: &str,
        transport: &str,
    ) -> Result<SessionRow, ProxyError> {
        let node = self.node.to_string();
        let firewall_profile = firewall_profile.to_owned();
        let transport = transport.to_owned();
        let console_id = authorized.console.console_id;
        let token_id = authorized.token_id;
        let client_ip = client_ip.to_owned();
        self.link(move |conn| {
            let mut attempts = 0;
            let session = loop {
                let new = NewSession {
                    id: SessionId::generate(),
                    console_id,
                    token_id: Some(token_id),
                    client_address: client_ip.clone(),
                    node: node.clone(),
                    proxy_connection_id: models::allocate_connection_id(conn)?,
                    upstream_session_id: None,
                    firewall_profile: Some(firewall_profile.clone()),
                    transport: transport.clone(),
                };
                match models::create_session(conn, &new) {
                    Ok(session) => break session,
                    // Another node took the same connection id: draw again.
                    Err(DbError::Conflict { .. }) if attempts < 3 => attempts += 1,
                    Err(e) => return Err(e),
                }
            };
            let denied = match models::bind_token(conn, token_id, &session.id, &client_ip)? {
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
                let words = EndReason::Denied(reason).to_string();
                models::end_session(conn, &session.id, &words, 0, 0)?;
                return Ok(Err(reason));
            }
            let id = u32::try_from(session.proxy_connection_id).unwrap_or_default();
            Ok(Ok(SessionRow {
                id: session.id,
                proxy_connection_id: id,
            }))
        })
        .await?
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
        self.link(move |conn| {
            Ok(
                models::find_live_session_with_console(conn, i64::from(connection_id))?.map(
                    |(s, console, ca_cert)| SessionInfo {
                        id: s.id,
                        console_id: s.console_id,
                        token_id: s.token_id,
                        upstream_session_id: s
                            .upstream_session_id
                            .and_then(|u| u32::try_from(u).ok()),
                        firewall_profile: s.firewall_profile,
                        target: target(console, ca_cert),
                    },
                ),
            )
        })
        .await
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
        self.link(move |conn| models::set_upstream_session_id(conn, &id, i64::from(upstream_id)))
            .await
    }

    /// Records a linked channel through the write-behind queue (the caller never waits for
    /// the database, and an outage does not end a channel the client was told is linked);
    /// returns the row id chosen for it.
    pub fn start_channel(
        &self,
        session_id: &str,
        channel: ChannelType,
        channel_id: u8,
        client_ip: &str,
    ) -> models::ChannelId {
        let row = models::new_channel_id();
        let new = NewChannel {
            session_id: SessionId(session_id.to_owned()),
            node: self.node.to_string(),
            channel_type: i32::from(channel.as_u8()),
            channel_id: i32::from(channel_id),
            client_address: client_ip.to_owned(),
        };
        self.writes.push(
            Record::ChannelStarted {
                row,
                new,
                at: crate::db::now(),
            },
            &self.db,
            &self.node,
        );
        row
    }

    /// Records a channel's end, now, through the write-behind queue (the caller never waits
    /// for the database).
    pub fn end_channel(&self, channel_row: models::ChannelId, to_client: u64, to_server: u64) {
        self.writes.push(
            Record::ChannelEnded {
                row: channel_row,
                to_client,
                to_server,
                at: crate::db::now(),
            },
            &self.db,
            &self.node,
        );
    }

    /// Records a session's end, now, through the write-behind queue. When the record is
    /// written, a pending termination request of the session wins over `reason` (see
    /// `Record::SessionEnded`) and is marked handled.
    pub fn end_session(
        &self,
        session_id: &SessionId,
        reason: &EndReason,
        to_client: u64,
        to_server: u64,
    ) {
        self.writes.push(
            Record::SessionEnded {
                id: session_id.clone(),
                reason: reason.to_string(),
                to_client,
                to_server,
                at: crate::db::now(),
            },
            &self.db,
            &self.node,
        );
    }

    /// Ends sessions this node left open when it last stopped without closing them.
    ///
    /// # Errors
    /// Database failures.
    pub async fn end_orphaned_sessions(&self) -> Result<usize, ProxyError> {
        let node = self.node.to_string();
        self.db
            .run(move |conn| {
                models::end_sessions_on_node(conn, &node, &EndReason::NodeRestarted.to_string())
            })
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
                        id: t.id,
                        session_id: t.session_id,
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

    /// Records an audit event, with the time it happened, through the write-behind queue.
    ///
    /// `_shutdown` is unused: the queue's writer runs on the shutdown given to [`Store::new`].
    pub fn audit(&self, _shutdown: &Shutdown, event: AuditEvent) {
        let mut new = NewAuditEvent::new(self.node.to_string(), event.event_type, event.message);
        new.console_id = event.console_id;
        new.session_id = event.session_id;
        new.channel_id = event.channel_id;
        self.writes
            .push(Record::Audit(new, crate::db::now()), &self.db, &self.node);
    }
}

impl WriteBehind {
    /// The queue, even if a thread panicked holding it (the data stays consistent: every
    /// change is a single push or drain).
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a record and starts the writer if none runs. When the queue is full, the oldest
    /// queued audit event makes room; with none, the new record is dropped. Either way the
    /// drop is counted and reported once per outage.
    fn push(self: &Arc<Self>, record: Record, db: &Db, node: &Arc<str>) {
        let start_writer = {
            let mut state = self.lock();
            let mut dropped = None;
            if state.records.len() + state.in_flight >= self.capacity {
                let oldest_audit = state
                    .records
                    .iter()
                    .position(|r| matches!(r, Record::Audit(..)));
                match oldest_audit {
                    Some(i) => {
                        dropped = state.records.remove(i);
                        state.records.push_back(record);
                    }
                    None => dropped = Some(record),
                }
            } else {
                state.records.push_back(record);
            }
            if let Some(dropped) = dropped {
                self.dropped.inc();
                if !std::mem::replace(&mut state.overflow_reported, true) {
                    tracing::error!(
                        capacity = self.capacity,
                        dropped = ?dropped,
                        "the database write queue is full: dropping records until the database is back"
                    );
                }
            }
            self.queue_length
                .set(i64::try_from(state.records.len() + state.in_flight).unwrap_or(i64::MAX));
            !std::mem::replace(&mut state.writing, true)
        };
        if start_writer {
            let writes = self.clone();
            let db = db.clone();
            let node = node.to_string();
            self.shutdown
                .tracker()
                .spawn(async move { writes.run(db, node).await });
        }
    }

    /// Takes the next batch, or marks the writer stopped when there is none.
    fn take_batch(&self) -> Option<Vec<Record>> {
        let mut state = self.lock();
        if state.records.is_empty() {
            state.writing = false;
            return None;
        }
        let take = state.records.len().min(WRITE_BATCH);
        let batch: Vec<Record> = state.records.drain(..take).collect();
        state.in_flight = batch.len();
        Some(batch)
    }

    /// Settles a batch: what was written leaves, what was not returns to the front, in order.
    fn settle(&self, unwritten: Vec<Record>, written: bool) {
        let mut state = self.lock();
        state.in_flight = 0;
        for record in unwritten.into_iter().rev() {
            state.records.push_front(record);
        }
        if written {
            state.overflow_reported = false;
        }
        self.queue_length
            .set(i64::try_from(state.records.len()).unwrap_or(i64::MAX));
    }

    /// The writer: writes batches until the queue is empty. While the database is unavailable
    /// it keeps the records and retries with capped backoff; once the process must stop now
    /// (the stop token) it gives up on what is left and says so.
    ///
    /// # Cancel safety
    /// Not meant to be cancelled; it ends on its own when the queue is empty or on the stop
    /// token.
    async fn run(self: Arc<Self>, db: Db, node: String) {
        let mut backoff = RETRY_BACKOFF.0;
        let mut outage: Option<std::time::Instant> = None;
        while let Some(batch) = self.take_batch() {
            let count = batch.len();
            let failure = match write_batch(&db, &node, batch.clone()).await {
                Ok(()) => None,
                // One bad record (its session was deleted meanwhile...) must not hold back the
                // others: write them one by one and drop only what the database refuses.
                Err(e) if !e.is_transient() => {
                    tracing::debug!(error = %e, "batch refused: writing its records one by one");
                    self.write_each(&db, &node, batch).await
                }
                Err(e) => Some((e, batch)),
            };
            match failure {
                None => {
                    self.settle(Vec::new(), true);
                    if let Some(since) = outage.take() {
                        tracing::warn!(
                            outage_ms =
                                u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                            "the database is back: writing the queued records"
                        );
                    }
                    backoff = RETRY_BACKOFF.0;
                    tracing::trace!(records = count, "records written");
                }
                Some((error, unwritten)) => {
                    self.settle(unwritten, false);
                    if outage.is_none() {
                        outage = Some(std::time::Instant::now());
                        tracing::warn!(
                            error = %error,
                            queued = self.lock().records.len(),
                            "the database is unavailable: keeping records until it is back"
                        );
                    }
                    let stop = self.shutdown.stop_token();
                    tokio::select! {
                        () = stop.cancelled() => {
                            self.give_up();
                            return;
                        }
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_BACKOFF.1);
                }
            }
        }
    }

    /// Writes records one by one, dropping those the database refuses. Returns the first
    /// transient failure with the records not yet written.
    async fn write_each(
        &self,
        db: &Db,
        node: &str,
        batch: Vec<Record>,
    ) -> Option<(DbError, Vec<Record>)> {
        let mut records = VecDeque::from(batch);
        while let Some(record) = records.pop_front() {
            match write_batch(db, node, vec![record.clone()]).await {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    records.push_front(record);
                    return Some((e, records.into()));
                }
                Err(e) => {
                    self.dropped.inc();
                    tracing::warn!(error = %e, record = ?record, "cannot write a record: dropped");
                }
            }
        }
        None
    }

    /// Drops everything queued (the process stops while the database is unavailable).
    fn give_up(&self) {
        let mut state = self.lock();
        let lost = state.records.len() + state.in_flight;
        state.records.clear();
        state.in_flight = 0;
        state.writing = false;
        self.queue_length.set(0);
        self.dropped.inc_by(u64::try_from(lost).unwrap_or(u64::MAX));
        tracing::error!(
            records = lost,
            "stopping while the database is unavailable: queued records are lost; \
             the next start of this node ends its open sessions"
        );
    }
}

/// Writes records in one transaction.
async fn write_batch(db: &Db, node: &str, batch: Vec<Record>) -> Result<(), DbError> {
    let node = node.to_owned();
    db.run(move |conn| {
        conn.transaction::<_, DbError, _>(|conn| {
            for record in &batch {
                record.write(conn, &node)?;
            }
            Ok(())
        })
    })
    .await
}

/// Writes the byte counts of this node's live sessions every `[database]
/// session_counters_interval` seconds (one transaction for all sessions whose counts changed),
/// until the process drains. A failure is reported once and retried at the next interval.
///
/// # Cancel safety
/// Runs until the shutdown token; not meant to be cancelled otherwise.
pub async fn write_session_counters(ctx: Arc<super::ProxyContext>) {
    let seconds = ctx.config.database.session_counters_interval;
    if seconds == 0 {
        return;
    }
    let interval = Duration::from_secs(seconds);
    let mut written: HashMap<SessionId, (u64, u64)> = HashMap::new();
    let mut failing = false;
    loop {
        tokio::select! {
            () = ctx.shutdown.token().cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let live: Vec<(SessionId, (u64, u64))> = ctx
            .registry
            .all()
            .into_iter()
            .filter(|s| s.holds_main)
            .map(|s| (s.id.clone(), s.totals()))
            .collect();
        written.retain(|id, _| live.iter().any(|(live_id, _)| live_id == id));
        let changed: Vec<(SessionId, u64, u64)> = live
            .iter()
            .filter(|(id, totals)| written.get(id) != Some(totals))
            .map(|(id, (to_client, to_server))| (id.clone(), *to_client, *to_server))
            .collect();
        if changed.is_empty() {
            continue;
        }
        let result = ctx
            .store
            .db
            .run(move |conn| models::update_sessions_counters(conn, &changed))
            .await;
        match result {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("live byte counts are written again");
                }
                written = live.into_iter().collect();
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "cannot write live byte counts");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{DbUrl, PoolOptions};
    use crate::metrics::Metrics;

    /// A store whose database can never be reached (its directory does not exist).
    fn unreachable_store(queue_size: usize) -> (Store, Arc<Metrics>, Shutdown) {
        let url = DbUrl::Sqlite {
            path: "/nonexistent-kerbside-test/dir/kerbside.sqlite".into(),
        };
        let db = Db::connect_lazy(
            &url,
            &PoolOptions {
                max_size: 1,
                connect_timeout: Duration::from_millis(100),
            },
        );
        let metrics = Metrics::new().unwrap();
        let shutdown = Shutdown::new();
        let options = StoreOptions {
            link_checkout: Duration::from_millis(100),
            queue_size,
        };
        let store = Store::new(
            db,
            "n".into(),
            &options,
            &metrics.db_writes,
            shutdown.clone(),
        );
        (store, metrics, shutdown)
    }

    fn event(kind: AuditKind) -> AuditEvent {
        AuditEvent {
            console_id: None,
            session_id: None,
            channel_id: None,
            event_type: kind,
            message: String::new(),
        }
    }

    fn queued(store: &Store) -> Vec<String> {
        store
            .writes
            .lock()
            .records
            .iter()
            .map(|r| match r {
                Record::ChannelStarted { row, .. } => format!("channel {} start", row.0),
                Record::ChannelEnded { row, .. } => format!("channel {}", row.0),
                Record::SessionEnded { id, .. } => format!("session {id}"),
                Record::Audit(e, _) => e.event_type.clone(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_audit_events_first_and_keeps_the_order() {
        let (store, metrics, shutdown) = unreachable_store(3);
        // The writer task has not run yet (current-thread runtime): everything stays queued.
        store.audit(&shutdown, event(AuditKind::SessionCreated));
        store.audit(&shutdown, event(AuditKind::ChannelCreated));
        store.end_channel(models::ChannelId(1), 10, 20);
        assert_eq!(store.pending_writes(), 3);
        store.end_session(&SessionId("s1".into()), &EndReason::ShuttingDown, 10, 20);
        store.end_channel(models::ChannelId(2), 0, 0);
        assert_eq!(queued(&store), ["channel 1", "session s1", "channel 2"]);
        assert_eq!(metrics.db_writes.dropped.get(), 2);
        // No audit event left to make room: the new record is the one dropped.
        store.audit(&shutdown, event(AuditKind::ChannelEnded));
        store.end_channel(models::ChannelId(3), 0, 0);
        assert_eq!(queued(&store), ["channel 1", "session s1", "channel 2"]);
        assert_eq!(metrics.db_writes.dropped.get(), 4);
        assert_eq!(metrics.db_writes.queue_length.get(), 3);
    }

    #[tokio::test]
    async fn the_writer_keeps_records_while_the_database_is_down_and_gives_up_on_stop() {
        let (store, metrics, shutdown) = unreachable_store(100);
        store.end_channel(models::ChannelId(1), 10, 20);
        store.end_session(&SessionId("s1".into()), &EndReason::ShuttingDown, 10, 20);
        // Failed attempts later, nothing is lost (queued, or in flight for the next attempt).
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(store.pending_writes(), 2);
        assert_eq!(metrics.db_writes.dropped.get(), 0);
        // Stopping now: the writer gives up, counts what it drops, and the tracker empties.
        shutdown.stop_now().await;
        assert_eq!(store.pending_writes(), 0);
        assert_eq!(metrics.db_writes.dropped.get(), 2);
        assert_eq!(metrics.db_writes.queue_length.get(), 0);
        assert!(shutdown.tracker().is_empty());
    }
}
