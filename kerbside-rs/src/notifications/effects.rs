//! Carrying out a [`Plan`] in the database, as one transaction.
//!
//! Sessions end through the same path as the API and `kerbside-manage session terminate`: a
//! `session_terminations` row that the proxy on every node polls for (`[proxy]
//! termination_poll_interval`), so channels close wherever they run. Every step is
//! idempotent, so a notification delivered twice (after a lost acknowledgement) changes
//! nothing more the second time, apart from a second audit row.
//!
//! It does not choose the plan (the handlers do) and does not settle the delivery (the
//! consumer acknowledges only after [`apply`] committed).

use diesel::Connection;

use super::handlers::{InstanceEvent, Plan};
use crate::db::models::{self, AuditKind, NewAuditEvent};
use crate::db::{DbConnection, DbError, DbResult};

/// Who the termination requests name as their requester.
pub const REQUESTED_BY: &str = "nova-notification";

/// What applying a plan changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Consoles of the instance known to kerbside (each marked stale and audited).
    pub consoles: usize,
    /// Live sessions asked to end.
    pub sessions_terminated: usize,
    /// Tokens revoked.
    pub tokens_revoked: usize,
}

/// Applies `plan` on `conn` in one transaction, recorded as done by `node`.
///
/// # Errors
/// The database's error; nothing is changed then.
pub fn apply(conn: &mut DbConnection, plan: &Plan, node: &str) -> DbResult<Outcome> {
    match plan {
        Plan::EndInstanceAccess(event) => {
            conn.transaction(|conn| end_instance_access(conn, event, node))
        }
    }
}

/// Ends access to the instance of `event`: asks every live session of its consoles to end,
/// revokes its tokens, marks its consoles stale (the next use asks Nova again) and writes
/// one audit event per console. An instance without consoles in kerbside changes nothing.
fn end_instance_access(
    conn: &mut DbConnection,
    event: &InstanceEvent,
    node: &str,
) -> DbResult<Outcome> {
    let uuid = event.instance_uuid.as_str();
    let consoles = models::consoles_for_instance(conn, uuid)?;
    if consoles.is_empty() {
        // Not an instance kerbside has seen: nothing to end, nothing to audit (most Nova
        // events are about instances nobody opened a console to).
        return Ok(Outcome::default());
    }
    let reason = format!("nova {}", event.event_type);
    let mut outcome = Outcome {
        consoles: consoles.len(),
        ..Outcome::default()
    };
    for session in models::sessions_for_instance(conn, uuid, true)? {
        match models::request_termination(conn, &session.id, &reason, REQUESTED_BY) {
            Ok(_) => outcome.sessions_terminated += 1,
            // It ended in the meantime: nothing to do.
            Err(DbError::Conflict { .. } | DbError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    outcome.tokens_revoked = models::revoke_tokens_for_instance(conn, uuid, &reason)?;
    models::mark_instance_stale(conn, uuid)?;
    let source = event
        .publisher_id
        .as_deref()
        .map(|p| format!(" from {p}"))
        .unwrap_or_default();
    let host = event
        .host
        .as_deref()
        .map(|h| format!(" (host {h})"))
        .unwrap_or_default();
    let message = format!(
        "Nova {}{source}: {}{host}; {} live session(s) terminated, {} token(s) revoked, console marked stale",
        event.event_type, event.what, outcome.sessions_terminated, outcome.tokens_revoked
    );
    for console in &consoles {
        let audit = NewAuditEvent::new(node, AuditKind::Nova(event.event_type), message.clone())
            .source(console.source_id)
            .console(console.id);
        models::record_event(conn, &audit)?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::db::models::SessionId;
    use crate::db::{Db, DbUrl, PoolOptions};

    const DELETED: &str = "0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01";
    const OTHER: &str = "9a3c1f52-1111-4c3e-9a8e-2b7d5c1f9e02";

    async fn db(dir: &std::path::Path) -> Db {
        let url = DbUrl::parse(&format!("sqlite:///{}", dir.join("k.sqlite").display())).unwrap();
        let db = Db::connect(&url, &PoolOptions::default()).unwrap();
        db.ensure_schema().await.unwrap();
        db
    }

    fn event(uuid: &str) -> Plan {
        Plan::EndInstanceAccess(InstanceEvent {
            event_type: "instance.delete.end",
            what: "the instance was deleted",
            instance_uuid: uuid.to_owned(),
            host: Some("compute1".to_owned()),
            publisher_id: Some("nova-compute:compute1".to_owned()),
        })
    }

    /// A console with a live session and two tokens.
    fn seed(
        conn: &mut DbConnection,
        source: crate::db::models::SourceId,
        uuid: &str,
        hash_byte: char,
    ) -> SessionId {
        let hash = |n: char| {
            std::iter::repeat_n(n, 63)
                .chain(std::iter::once(hash_byte))
                .collect::<String>()
        };
        let (console, id) = models::fixtures::live_session(conn, source, uuid, &hash('a'));
        models::insert_token(conn, console.id, &hash('b'), Duration::from_secs(600)).unwrap();
        id
    }

    #[tokio::test]
    async fn only_the_named_instance_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path()).await;
        let mut conn = db.get().unwrap();
        let source = models::upsert_source(&mut conn, "lab", "static")
            .unwrap()
            .id;
        let gone = seed(&mut conn, source, DELETED, '1');
        let kept = seed(&mut conn, source, OTHER, '2');

        let outcome = apply(&mut conn, &event(DELETED), "node-a").unwrap();
        assert_eq!(
            outcome,
            Outcome {
                consoles: 1,
                sessions_terminated: 1,
                tokens_revoked: 2
            }
        );
        let pending = models::pending_terminations(&mut conn).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.first().unwrap().session_id, gone);
        assert_eq!(pending.first().unwrap().requested_by, REQUESTED_BY);
        assert!(
            models::consoles_for_instance(&mut conn, DELETED)
                .unwrap()
                .iter()
                .all(|c| c.stale)
        );
        assert!(
            models::consoles_for_instance(&mut conn, OTHER)
                .unwrap()
                .iter()
                .all(|c| !c.stale)
        );
        assert!(models::get_session(&mut conn, &kept).unwrap().is_live());
        let audit = models::list_events(
            &mut conn,
            &models::AuditFilter {
                event_type: Some("nova.instance.delete.end".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .unwrap();
        assert_eq!(audit.len(), 1);
        assert!(
            audit
                .first()
                .unwrap()
                .message
                .contains("instance.delete.end"),
            "{audit:?}"
        );

        // Delivered again (a lost ack): nothing more to revoke or terminate.
        let again = apply(&mut conn, &event(DELETED), "node-a").unwrap();
        assert_eq!((again.tokens_revoked, again.consoles), (0, 1));
        // An instance kerbside never saw: no change, no audit row.
        assert_eq!(
            apply(
                &mut conn,
                &event("11111111-2222-3333-4444-555555555555"),
                "node-a"
            )
            .unwrap(),
            Outcome::default()
        );
    }
}
