//! `session_terminations`: requests to end a live session, from any node to the node
//! that runs it.
//!
//! The API, `kerbside-manage` or the notification consumer (on any node) writes a request
//! ([`terminate_session`] also revokes the session's tokens; [`terminate_session_audited`]
//! also records the audit event, the one write of an operator's termination). Every proxy node that holds
//! live sessions reads [`pending_terminations`] every `[proxy] termination_poll_interval`
//! seconds (default 1) and ends the ones it holds, so the session closes within about one
//! interval wherever its channels run. The node that relays the session's main channel
//! records the end and marks the request handled ([`pending_termination_for_session`],
//! [`mark_termination_handled_at`]). Rows are deleted with their session (`ON DELETE
//! CASCADE`).
//!
//! This module stores and reads requests; it does not close connections (the proxy does).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::audit_event::{AuditKind, NewAuditEvent, record_event};
use super::ids::{SessionId, SessionTerminationId};
use super::session::get_session;
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::{session_terminations, sessions};

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

/// Ask the node running `session_id` to end it and revoke the session's tokens, in one
/// transaction: terminating ends console access, not just the connection. Returns the
/// request and how many tokens were revoked.
///
/// # Errors
/// As [`request_termination`]; nothing is written when it fails.
pub fn terminate_session(
    conn: &mut DbConnection,
    session_id: &SessionId,
    reason: &str,
    requested_by: &str,
) -> DbResult<(SessionTermination, usize)> {
    conn.transaction::<_, DbError, _>(|conn| {
        let request = request_termination(conn, session_id, reason, requested_by)?;
        let revoked = super::console_token::revoke_session_tokens(
            conn,
            session_id,
            &format!("session {session_id} terminated by {requested_by}"),
        )?;
        Ok((request, revoked))
    })
}

/// An operator's termination, in one transaction: [`terminate_session`] (the request and
/// the session's tokens revoked), then a `session.termination_requested` audit event
/// recorded by `node` naming who asked, why and how many tokens were revoked. The one path
/// of `POST /v1/sessions/{id}/terminate`, the web console's terminate button and
/// `kerbside-manage session terminate`. Returns the request and how many tokens were revoked.
///
/// # Errors
/// As [`request_termination`]; nothing is written when it fails.
pub fn terminate_session_audited(
    conn: &mut DbConnection,
    node: &str,
    session_id: &SessionId,
    reason: &str,
    requested_by: &str,
) -> DbResult<(SessionTermination, usize)> {
    conn.transaction::<_, DbError, _>(|conn| {
        let (request, revoked) = terminate_session(conn, session_id, reason, requested_by)?;
        let session = get_session(conn, session_id)?;
        let event = NewAuditEvent::new(
            node,
            AuditKind::SessionTerminationRequested,
            format!(
                "termination requested by {requested_by}: {reason}; {revoked} token(s) revoked"
            ),
        )
        .console(session.console_id)
        .session(session_id.clone());
        record_event(conn, &event)?;
        Ok((request, revoked))
    })
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
    mark_termination_handled_at(conn, id, node, now())
}

/// [`mark_termination_handled`] with the time it was handled (for writes delayed by an
/// outage).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn mark_termination_handled_at(
    conn: &mut DbConnection,
    id: SessionTerminationId,
    node: &str,
    at: NaiveDateTime,
) -> DbResult<bool> {
    let updated = diesel::update(
        session_terminations::table
            .filter(session_terminations::id.eq(id))
            .filter(session_terminations::handled_at.is_null()),
    )
    .set((
        session_terminations::handled_at.eq(at),
        session_terminations::handled_by.eq(node),
    ))
    .execute(conn)?;
    Ok(updated > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::{self, AuditFilter};
    use crate::db::{Db, DbUrl, PoolOptions};

    #[tokio::test]
    async fn an_audited_termination_writes_the_request_the_revocation_and_one_event() {
        let dir = tempfile::tempdir().unwrap();
        let url = DbUrl::parse(&format!(
            "sqlite:///{}",
            dir.path().join("k.sqlite").display()
        ))
        .unwrap();
        let db = Db::connect(&url, &PoolOptions::default()).unwrap();
        db.ensure_schema().await.unwrap();
        let conn = &mut db.get().unwrap();
        let source = models::upsert_source(conn, "lab", "static").unwrap().id;
        let (console, id) = models::fixtures::live_session(
            conn,
            source,
            "0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01",
            &"a".repeat(64),
        );

        let (request, revoked) =
            terminate_session_audited(conn, "node-a", &id, "maintenance", "api:admin").unwrap();
        assert_eq!(revoked, 1);
        assert_eq!(request.session_id, id);
        assert_eq!(request.reason, "maintenance");
        assert_eq!(request.requested_by, "api:admin");
        let filter = AuditFilter {
            session_id: Some(id.clone()),
            ..AuditFilter::default()
        };
        let events = models::list_events(conn, &filter, None, 10).unwrap();
        let [event] = events.as_slice() else {
            panic!("one event expected: {events:?}");
        };
        assert_eq!(event.event_type, "session.termination_requested");
        assert_eq!(event.node, "node-a");
        assert_eq!(event.console_id, Some(console.id));
        assert_eq!(
            event.message,
            "termination requested by api:admin: maintenance; 1 token(s) revoked"
        );

        // Asked again while the first request is pending: the session is still live, the
        // token already revoked.
        let (_, revoked) =
            terminate_session_audited(conn, "node-a", &id, "again", "kerbside-manage").unwrap();
        assert_eq!(revoked, 0);

        // An unknown session: nothing is written.
        let unknown = SessionId::generate();
        let err = terminate_session_audited(conn, "node-a", &unknown, "x", "y").unwrap_err();
        assert!(matches!(err, DbError::NotFound { .. }), "{err:?}");
        assert_eq!(
            models::list_events(conn, &filter, None, 10).unwrap().len(),
            2
        );
    }
}
