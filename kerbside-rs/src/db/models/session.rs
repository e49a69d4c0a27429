//! `sessions`: one proxied SPICE session (a main channel and its secondary channels).
//!
//! A session is created by the proxy node that accepted its main channel and ended by that
//! node (or, for sessions a stopped node left open, by that node when it starts again:
//! [`end_sessions_on_node`]). Its `proxy_connection_id` is the connection id the proxy gave the client in
//! `MAIN_INIT`; secondary channels present it, so it must be unique among live sessions on
//! all nodes. The schema enforces that (a partial unique index on SQLite, a unique key on a
//! generated column on MySQL), [`allocate_connection_id`] picks a free one, and
//! [`create_session`] reports the rare collision between two nodes as a conflict to retry.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use rand::Rng;

use super::console::Console;
use super::counter;
use super::ids::{ConsoleId, ConsoleTokenId, SessionId};
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::{channels, consoles, sessions, sources};

/// How many random connection ids [`allocate_connection_id`] tries before giving up.
const CONNECTION_ID_ATTEMPTS: usize = 16;

/// A session row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = sessions)]
#[diesel(check_for_backend(crate::db::conn::MultiBackend))]
pub struct Session {
    /// Session id (UUID string).
    pub id: SessionId,
    /// The console it connects to.
    pub console_id: ConsoleId,
    /// The token that opened it (NULL once the token row was deleted).
    pub token_id: Option<ConsoleTokenId>,
    /// The client's address (`ip:port`).
    pub client_address: String,
    /// The proxy node that runs it.
    pub node: String,
    /// Connection id the proxy gave the client in `MAIN_INIT` (in `1..=u32::MAX`).
    pub proxy_connection_id: i64,
    /// Connection id the hypervisor gave the proxy, once linked upstream.
    pub upstream_session_id: Option<i64>,
    /// When it started (UTC).
    pub created_at: NaiveDateTime,
    /// When it ended; `None` while live.
    pub ended_at: Option<NaiveDateTime>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Bytes relayed to the client, all channels.
    pub bytes_to_client: i64,
    /// Bytes relayed to the hypervisor, all channels.
    pub bytes_to_server: i64,
    /// The SPICE firewall profile in force (`None` for sessions started before firewalling).
    pub firewall_profile: Option<String>,
    /// How the client reached the proxy: `tls` (a SPICE client) or `websocket` (a browser).
    pub transport: String,
}

impl Session {
    /// Whether the session has not ended.
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.ended_at.is_none()
    }
}

/// A new session; input to [`create_session`] (which sets `created_at`).
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = sessions)]
pub struct NewSession {
    /// Session id, usually [`SessionId::generate`].
    pub id: SessionId,
    /// The console it connects to.
    pub console_id: ConsoleId,
    /// The token that opened it.
    pub token_id: Option<ConsoleTokenId>,
    /// The client's address.
    pub client_address: String,
    /// This proxy node's name.
    pub node: String,
    /// Connection id for `MAIN_INIT`, from [`allocate_connection_id`].
    pub proxy_connection_id: i64,
    /// Upstream connection id, if already linked.
    pub upstream_session_id: Option<i64>,
    /// The SPICE firewall profile in force.
    pub firewall_profile: Option<String>,
    /// How the client reached the proxy: `tls` or `websocket`.
    pub transport: String,
}

/// Record a new live session.
///
/// # Errors
/// [`DbError::Conflict`] if the session id exists or a live session already uses
/// `proxy_connection_id` (allocate another and retry); [`DbError::Query`] otherwise (a
/// foreign-key violation if the console or token does not exist).
pub fn create_session(conn: &mut DbConnection, new: &NewSession) -> DbResult<Session> {
    let inserted = diesel::insert_into(sessions::table)
        .values((new, sessions::created_at.eq(now())))
        .execute(conn)
        .map_err(DbError::from);
    match inserted {
        Ok(_) => get_session(conn, &new.id),
        Err(e) if e.is_unique_violation() => Err(DbError::Conflict {
            what: "session",
            id: new.id.to_string(),
            reason: format!(
                "the session id or connection id {} is already in use by a live session",
                new.proxy_connection_id
            ),
        }),
        Err(e) => Err(e),
    }
}

/// The session `id`.
///
/// # Errors
/// [`DbError::NotFound`] if there is none.
pub fn get_session(conn: &mut DbConnection, id: &SessionId) -> DbResult<Session> {
    sessions::table
        .find(id)
        .select(Session::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "session",
            id: id.to_string(),
        })
}

/// Sessions, newest first; only live ones when `active_only`.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn list_sessions(conn: &mut DbConnection, active_only: bool) -> DbResult<Vec<Session>> {
    let mut query = sessions::table
        .select(Session::as_select())
        .order((sessions::created_at.desc(), sessions::id.asc()))
        .into_boxed();
    if active_only {
        query = query.filter(sessions::ended_at.is_null());
    }
    Ok(query.load(conn)?)
}

/// A session with the identity of its console, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionListing {
    /// The session.
    pub session: Session,
    /// Its console's instance UUID (`None` if the console row is gone).
    pub console_uuid: Option<String>,
    /// Its console's name.
    pub console_name: Option<String>,
}

/// Sessions with their consoles' UUIDs and names, newest first; only live ones when
/// `active_only`.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn list_session_listings(
    conn: &mut DbConnection,
    active_only: bool,
) -> DbResult<Vec<SessionListing>> {
    let mut query = sessions::table
        .left_join(consoles::table)
        .select((
            Session::as_select(),
            consoles::uuid.nullable(),
            consoles::name.nullable(),
        ))
        .order((sessions::created_at.desc(), sessions::id.asc()))
        .into_boxed();
    if active_only {
        query = query.filter(sessions::ended_at.is_null());
    }
    let rows: Vec<(Session, Option<String>, Option<String>)> = query.load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(session, console_uuid, console_name)| SessionListing {
            session,
            console_uuid,
            console_name,
        })
        .collect())
}

/// Session `id` with its console's UUID and name.
///
/// # Errors
/// [`DbError::NotFound`] if there is no such session.
pub fn get_session_listing(conn: &mut DbConnection, id: &SessionId) -> DbResult<SessionListing> {
    let session = get_session(conn, id)?;
    let console: Option<(String, String)> = consoles::table
        .find(session.console_id)
        .select((consoles::uuid, consoles::name))
        .first(conn)
        .optional()?;
    let (console_uuid, console_name) = console.unzip();
    Ok(SessionListing {
        session,
        console_uuid,
        console_name,
    })
}

/// End session `id` with final byte counts. Returns `false` if it had already ended
/// (the first end wins and its counts are kept).
///
/// # Errors
/// [`DbError::NotFound`] if there is no such session.
pub fn end_session(
    conn: &mut DbConnection,
    id: &SessionId,
    reason: &str,
    bytes_to_client: u64,
    bytes_to_server: u64,
) -> DbResult<bool> {
    end_session_at(conn, id, reason, bytes_to_client, bytes_to_server, now())
}

/// [`end_session`] with the time it ended, for ends observed earlier and written later (the
/// proxy's write-behind queue keeps the original time through a database outage).
///
/// # Errors
/// [`DbError::NotFound`] if there is no such session.
pub fn end_session_at(
    conn: &mut DbConnection,
    id: &SessionId,
    reason: &str,
    bytes_to_client: u64,
    bytes_to_server: u64,
    at: NaiveDateTime,
) -> DbResult<bool> {
    let updated = diesel::update(
        sessions::table
            .filter(sessions::id.eq(id))
            .filter(sessions::ended_at.is_null()),
    )
    .set((
        sessions::ended_at.eq(at),
        sessions::end_reason.eq(reason),
        sessions::bytes_to_client.eq(counter(bytes_to_client)),
        sessions::bytes_to_server.eq(counter(bytes_to_server)),
    ))
    .execute(conn)?;
    if updated > 0 {
        return Ok(true);
    }
    get_session(conn, id).map(|_| false)
}

/// Update the running byte counts of many live sessions in one transaction (the proxy's
/// periodic live view: one round trip per interval for all sessions of a node). Ended
/// sessions keep their final counts.
///
/// # Errors
/// [`DbError::Query`] on database failure; then none of them is updated.
pub fn update_sessions_counters(
    conn: &mut DbConnection,
    counts: &[(SessionId, u64, u64)],
) -> DbResult<()> {
    conn.transaction::<_, DbError, _>(|conn| {
        for (id, bytes_to_client, bytes_to_server) in counts {
            diesel::update(
                sessions::table
                    .filter(sessions::id.eq(id))
                    .filter(sessions::ended_at.is_null()),
            )
            .set((
                sessions::bytes_to_client.eq(counter(*bytes_to_client)),
                sessions::bytes_to_server.eq(counter(*bytes_to_server)),
            ))
            .execute(conn)?;
        }
        Ok(())
    })
}

/// Record the connection id the hypervisor assigned, once the proxy linked upstream.
///
/// # Errors
/// [`DbError::NotFound`] if there is no such session.
pub fn set_upstream_session_id(
    conn: &mut DbConnection,
    id: &SessionId,
    upstream_session_id: i64,
) -> DbResult<()> {
    let updated = diesel::update(sessions::table.filter(sessions::id.eq(id)))
        .set(sessions::upstream_session_id.eq(Some(upstream_session_id)))
        .execute(conn)?;
    if updated == 0 {
        return Err(DbError::NotFound {
            what: "session",
            id: id.to_string(),
        });
    }
    Ok(())
}

/// The live session whose clients were given `proxy_connection_id`, if any.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn find_live_session_by_connection_id(
    conn: &mut DbConnection,
    proxy_connection_id: i64,
) -> DbResult<Option<Session>> {
    Ok(sessions::table
        .filter(sessions::proxy_connection_id.eq(proxy_connection_id))
        .filter(sessions::ended_at.is_null())
        .select(Session::as_select())
        .first(conn)
        .optional()?)
}

/// The live session whose clients were given `proxy_connection_id`, with its console and the
/// CA of the console's source, in one query (a channel linking on a node that does not hold
/// the session's main channel).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn find_live_session_with_console(
    conn: &mut DbConnection,
    proxy_connection_id: i64,
) -> DbResult<Option<(Session, Console, Option<String>)>> {
    Ok(sessions::table
        .inner_join(consoles::table.inner_join(sources::table))
        .filter(sessions::proxy_connection_id.eq(proxy_connection_id))
        .filter(sessions::ended_at.is_null())
        .select((Session::as_select(), Console::as_select(), sources::ca_cert))
        .first(conn)
        .optional()?)
}

/// A random connection id in `1..=u32::MAX` that no live session uses right now.
///
/// Another node may take the same id before this one creates its session; the unique
/// index then makes [`create_session`] fail with a conflict and the caller allocates again.
///
/// # Errors
/// [`DbError::Conflict`] if no free id was found in a few tries (it would take billions of
/// live sessions); [`DbError::Query`] on database failure.
pub fn allocate_connection_id(conn: &mut DbConnection) -> DbResult<i64> {
    for _ in 0..CONNECTION_ID_ATTEMPTS {
        let candidate = i64::from(rand::thread_rng().gen_range(1..=u32::MAX));
        if find_live_session_by_connection_id(conn, candidate)?.is_none() {
            return Ok(candidate);
        }
    }
    Err(DbError::Conflict {
        what: "connection id",
        id: "any".to_owned(),
        reason: "no free connection id found".to_owned(),
    })
}

/// Sessions on any console of instance `uuid`, newest first; only live ones if `live_only`.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn sessions_for_instance(
    conn: &mut DbConnection,
    uuid: &str,
    live_only: bool,
) -> DbResult<Vec<Session>> {
    let mut query = sessions::table
        .inner_join(consoles::table)
        .filter(consoles::uuid.eq(uuid))
        .select(Session::as_select())
        .order((sessions::created_at.desc(), sessions::id.asc()))
        .into_boxed();
    if live_only {
        query = query.filter(sessions::ended_at.is_null());
    }
    Ok(query.load(conn)?)
}

/// End every live session and channel recorded for `node` (a proxy starting up after a crash
/// owns none of them any more). Returns how many sessions were ended.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn end_sessions_on_node(conn: &mut DbConnection, node: &str, reason: &str) -> DbResult<usize> {
    let at = now();
    diesel::update(
        channels::table
            .filter(channels::node.eq(node))
            .filter(channels::ended_at.is_null()),
    )
    .set(channels::ended_at.eq(at))
    .execute(conn)?;
    Ok(diesel::update(
        sessions::table
            .filter(sessions::node.eq(node))
            .filter(sessions::ended_at.is_null()),
    )
    .set((sessions::ended_at.eq(at), sessions::end_reason.eq(reason)))
    .execute(conn)?)
}
