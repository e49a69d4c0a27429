//! `session_terminations`: requests to end a live session, from any node to the node
//! that runs it.
//!
//! The API (on any node) writes a request; the proxy node that owns the session polls
//! [`pending_terminations_for_node`] (sub-second), closes the session and marks the
//! request handled. Rows are deleted with their session.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::id_newtype;
use super::session::{SessionId, get_session};
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::{session_terminations, sessions};

id_newtype!(
    /// Surrogate key of a [`SessionTermination`].
    SessionTerminationId
);

/// A termination request row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = session_terminations)]
#[diesel(check_for_backend(crate::db::conn::MultiBackend))]
pub struct SessionTermination {
    /// Surrogate key.
    pub id: SessionTerminationId,
    /// The session to end.
    pub session_id: SessionId,
    /// When it was requested (UTC).
    pub requested_at: NaiveDateTime,
    /// Why (shown in the audit trail and the session's end reason).
    pub reason: String,
    /// Who asked (user or service name).
    pub requested_by: String,
    /// When the owning node acted on it.
    pub handled_at: Option<NaiveDateTime>,
    /// Which node acted on it.
    pub handled_by: Option<String>,
}

/// A new termination request; normally built by [`request_termination`].
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = session_terminations)]
pub struct NewSessionTermination {
    /// The session to end.
    pub session_id: SessionId,
    /// Request time.
    pub requested_at: NaiveDateTime,
    /// Why.
    pub reason: String,
    /// Who asked.
    pub requested_by: String,
}

/// Ask the node running `session_id` to end it.
///
/// # Errors
/// [`DbError::NotFound`] if the session does not exist; [`DbError::Conflict`] if it has
/// already ended.
pub fn request_termination(
    conn: &mut DbConnection,
    session_id: &SessionId,
    reason: &str,
    requested_by: &str,
) -> DbResult<SessionTermination> {
    let session = get_session(conn, session_id)?;
    if !session.is_live() {
        return Err(DbError::Conflict {
            what: "session",
            id: session_id.to_string(),
            reason: "the session has already ended".to_owned(),
        });
    }
    let new = NewSessionTermination {
        session_id: session_id.clone(),
        requested_at: now(),
        reason: reason.to_owned(),
        requested_by: requested_by.to_owned(),
    };
    diesel::insert_into(session_terminations::table)
        .values(&new)
        .execute(conn)?;
    let id = SessionTerminationId(conn.last_insert_id()?);
    session_terminations::table
        .find(id)
        .select(SessionTermination::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "session termination",
            id: id.to_string(),
        })
}

/// Unhandled requests for live sessions run by `node`, oldest first.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn pending_terminations_for_node(
    conn: &mut DbConnection,
    node: &str,
) -> DbResult<Vec<SessionTermination>> {
    Ok(session_terminations::table
        .inner_join(sessions::table)
        .filter(sessions::node.eq(node))
        .filter(sessions::ended_at.is_null())
        .filter(session_terminations::handled_at.is_null())
        .select(SessionTermination::as_select())
        .order(session_terminations::id.asc())
        .load(conn)?)
}

/// The oldest unhandled termination request of one session, if any.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn pending_termination_for_session(
    conn: &mut DbConnection,
    session_id: &SessionId,
) -> DbResult<Option<SessionTermination>> {
    Ok(session_terminations::table
        .filter(session_terminations::session_id.eq(session_id))
        .filter(session_terminations::handled_at.is_null())
        .select(SessionTermination::as_select())
        .order(session_terminations::id.asc())
        .first(conn)
        .optional()?)
}

/// Every unhandled termination request of a live session, on any node: a node holding only
/// some channels of a session (its main channel is elsewhere) must close them too.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn pending_terminations(conn: &mut DbConnection) -> DbResult<Vec<SessionTermination>> {
    Ok(session_terminations::table
        .inner_join(sessions::table)
        .filter(sessions::ended_at.is_null())
        .filter(session_terminations::handled_at.is_null())
        .select(SessionTermination::as_select())
        .order(session_terminations::id.asc())
        .load(conn)?)
}

/// Mark request `id` handled by `node`. Returns `false` if it was already handled.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn mark_termination_handled(
    conn: &mut DbConnection,
    id: SessionTerminationId,
    node: &str,
) -> DbResult<bool> {
    let updated = diesel::update(
        session_terminations::table
            .filter(session_terminations::id.eq(id))
            .filter(session_terminations::handled_at.is_null()),
    )
    .set((
        session_terminations::handled_at.eq(now()),
        session_terminations::handled_by.eq(node),
    ))
    .execute(conn)?;
    Ok(updated > 0)
}
