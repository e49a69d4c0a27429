//! `audit_events`: the audit trail (who connected to what, from where, and how it ended).
//!
//! Events are append-only and keyed by an auto-increment id, so two events in the same
//! microsecond are both kept and the id gives a total order. The source, console, session
//! and channel references are plain ids without foreign keys: the trail outlives the rows
//! it names. Listing is keyset-paginated by id (`marker` = the last id seen), which stays
//! correct while new events arrive.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::ids::{AuditEventId, ChannelId, ConsoleId, SessionId, SourceId};
use super::page_size;
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::audit_events;

/// What an audit event records: one list for every writer (the API, the proxy, the
/// notification consumer and `kerbside-manage`). [`AuditKind::name`] is the stable string
/// stored in `audit_events.event_type`, filtered on and shown by the API; it never changes
/// for an existing kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// `token.created`: a console token was issued (API, Nova exchange, `kerbside-manage`).
    TokenCreated,
    /// `session.created`: a client's main channel was authorized.
    SessionCreated,
    /// `session.ended`: the session ended (the message says why and the bytes moved).
    SessionEnded,
    /// `session.termination_requested`: an operator asked for a session to end.
    SessionTerminationRequested,
    /// `channel.created`: a channel of a session was linked.
    ChannelCreated,
    /// `channel.ended`: a channel closed.
    ChannelEnded,
    /// `hypervisor.connected`: a channel reached the hypervisor.
    HypervisorConnected,
    /// `hypervisor.failed`: the hypervisor could not be reached or refused the link.
    HypervisorFailed,
    /// `firewall.verdicts`: a channel's SPICE firewall verdict counts (never contents).
    FirewallVerdicts,
    /// `nova.<event type>`: a Nova notification ended access to an instance's console.
    Nova(&'static str),
}

impl AuditKind {
    /// Every kind with a fixed name (the Nova kinds follow Nova's event types).
    pub const FIXED: [AuditKind; 9] = [
        AuditKind::TokenCreated,
        AuditKind::SessionCreated,
        AuditKind::SessionEnded,
        AuditKind::SessionTerminationRequested,
        AuditKind::ChannelCreated,
        AuditKind::ChannelEnded,
        AuditKind::HypervisorConnected,
        AuditKind::HypervisorFailed,
        AuditKind::FirewallVerdicts,
    ];

    /// The stored name, at most 64 characters (the column's width).
    #[must_use]
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        Cow::Borrowed(match self {
            AuditKind::TokenCreated => "token.created",
            AuditKind::SessionCreated => "session.created",
            AuditKind::SessionEnded => "session.ended",
            AuditKind::SessionTerminationRequested => "session.termination_requested",
            AuditKind::ChannelCreated => "channel.created",
            AuditKind::ChannelEnded => "channel.ended",
            AuditKind::HypervisorConnected => "hypervisor.connected",
            AuditKind::HypervisorFailed => "hypervisor.failed",
            AuditKind::FirewallVerdicts => "firewall.verdicts",
            AuditKind::Nova(event_type) => {
                let mut name = format!("nova.{event_type}");
                // Nova's longest event types are well under; never overflow the column.
                name.truncate(64);
                return Cow::Owned(name);
            }
        })
    }
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// An audit event row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = audit_events)]
#[diesel(check_for_backend(crate::db::conn::MultiBackend))]
pub struct AuditEvent {
    /// Surrogate key, increasing.
    pub id: AuditEventId,
    /// When it happened (UTC, microseconds).
    pub event_time: NaiveDateTime,
    /// The node that recorded it.
    pub node: String,
    /// The [`AuditKind`]'s name, e.g. `"session.created"` (kept as text: rows written by
    /// another release may name kinds this one does not know).
    pub event_type: String,
    /// The source involved, if any.
    pub source_id: Option<SourceId>,
    /// The console involved, if any.
    pub console_id: Option<ConsoleId>,
    /// The session involved, if any.
    pub session_id: Option<SessionId>,
    /// The channel row involved, if any.
    pub channel_id: Option<ChannelId>,
    /// Human-readable description. Never contains tokens or tickets.
    pub message: String,
}

/// A new audit event; input to [`record_event`] (which sets the time).
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = audit_events)]
pub struct NewAuditEvent {
    /// The node recording it.
    pub node: String,
    /// Short machine-readable kind.
    pub event_type: String,
    /// The source involved.
    pub source_id: Option<SourceId>,
    /// The console involved.
    pub console_id: Option<ConsoleId>,
    /// The session involved.
    pub session_id: Option<SessionId>,
    /// The channel row involved.
    pub channel_id: Option<ChannelId>,
    /// Human-readable description.
    pub message: String,
}

impl NewAuditEvent {
    /// An event with no references; add them with the builder methods.
    #[must_use]
    pub fn new(node: impl Into<String>, kind: AuditKind, message: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            event_type: kind.name().into_owned(),
            source_id: None,
            console_id: None,
            session_id: None,
            channel_id: None,
            message: message.into(),
        }
    }

    /// Reference a source.
    #[must_use]
    pub fn source(mut self, id: SourceId) -> Self {
        self.source_id = Some(id);
        self
    }

    /// Reference a console.
    #[must_use]
    pub fn console(mut self, id: ConsoleId) -> Self {
        self.console_id = Some(id);
        self
    }

    /// Reference a session.
    #[must_use]
    pub fn session(mut self, id: SessionId) -> Self {
        self.session_id = Some(id);
        self
    }

    /// Reference a channel row.
    #[must_use]
    pub fn channel(mut self, id: ChannelId) -> Self {
        self.channel_id = Some(id);
        self
    }
}

/// Which events [`list_events`] returns. The default matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events about this source.
    pub source_id: Option<SourceId>,
    /// Only events about this console.
    pub console_id: Option<ConsoleId>,
    /// Only events about this session.
    pub session_id: Option<SessionId>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events recorded by this node.
    pub node: Option<String>,
    /// Only events at or after this time.
    pub since: Option<NaiveDateTime>,
    /// Only events before this time.
    pub until: Option<NaiveDateTime>,
    /// Newest first (the marker then pages towards older events).
    pub newest_first: bool,
}

/// Append an event, timestamped now.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn record_event(conn: &mut DbConnection, event: &NewAuditEvent) -> DbResult<AuditEvent> {
    record_event_at(conn, event, now())
}

/// Append events, each with the time it happened, in one transaction and without reading
/// them back (the proxy's batched audit trail).
///
/// # Errors
/// [`DbError::Query`] on database failure; then none of them is recorded.
pub fn record_events_at(
    conn: &mut DbConnection,
    events: &[(NewAuditEvent, NaiveDateTime)],
) -> DbResult<()> {
    conn.transaction::<_, DbError, _>(|conn| {
        for (event, at) in events {
            append_event_at(conn, event, *at)?;
        }
        Ok(())
    })
}

/// Append one event with the time it happened, without reading it back.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn append_event_at(
    conn: &mut DbConnection,
    event: &NewAuditEvent,
    at: NaiveDateTime,
) -> DbResult<()> {
    diesel::insert_into(audit_events::table)
        .values((event, audit_events::event_time.eq(at)))
        .execute(conn)?;
    Ok(())
}

/// Append an event with an explicit time (for events observed earlier, and for tests).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn record_event_at(
    conn: &mut DbConnection,
    event: &NewAuditEvent,
    at: NaiveDateTime,
) -> DbResult<AuditEvent> {
    diesel::insert_into(audit_events::table)
        .values((event, audit_events::event_time.eq(at)))
        .execute(conn)?;
    let id = AuditEventId(conn.last_insert_id()?);
    audit_events::table
        .find(id)
        .select(AuditEvent::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "audit event",
            id: id.to_string(),
        })
}

/// Events about console `console_id`, oldest first, after id `marker` (exclusive), at most
/// `limit` (clamped to `1..=MAX_PAGE_SIZE`).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn list_events_for_console(
    conn: &mut DbConnection,
    console_id: ConsoleId,
    marker: Option<i64>,
    limit: i64,
) -> DbResult<Vec<AuditEvent>> {
    let filter = AuditFilter {
        console_id: Some(console_id),
        ..AuditFilter::default()
    };
    list_events(conn, &filter, marker, limit)
}

/// Events matching `filter`, ordered by id (oldest first unless `filter.newest_first`),
/// continuing after id `marker` (exclusive), at most `limit` (clamped to
/// `1..=MAX_PAGE_SIZE`).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn list_events(
    conn: &mut DbConnection,
    filter: &AuditFilter,
    marker: Option<i64>,
    limit: i64,
) -> DbResult<Vec<AuditEvent>> {
    let mut query = audit_events::table
        .select(AuditEvent::as_select())
        .into_boxed();
    if let Some(id) = filter.source_id {
        query = query.filter(audit_events::source_id.eq(id));
    }
    if let Some(id) = filter.console_id {
        query = query.filter(audit_events::console_id.eq(id));
    }
    if let Some(id) = &filter.session_id {
        query = query.filter(audit_events::session_id.eq(id.clone()));
    }
    if let Some(kind) = &filter.event_type {
        query = query.filter(audit_events::event_type.eq(kind.clone()));
    }
    if let Some(node) = &filter.node {
        query = query.filter(audit_events::node.eq(node.clone()));
    }
    if let Some(since) = filter.since {
        query = query.filter(audit_events::event_time.ge(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(audit_events::event_time.lt(until));
    }
    query = match (filter.newest_first, marker) {
        (false, Some(m)) => query.filter(audit_events::id.gt(m)),
        (true, Some(m)) => query.filter(audit_events::id.lt(m)),
        (_, None) => query,
    };
    query = if filter.newest_first {
        query.order(audit_events::id.desc())
    } else {
        query.order(audit_events::id.asc())
    };
    Ok(query.limit(page_size(limit)).load(conn)?)
}

/// Delete events recorded before `before` (retention). Returns how many.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn delete_events_before(conn: &mut DbConnection, before: NaiveDateTime) -> DbResult<usize> {
    Ok(
        diesel::delete(audit_events::table.filter(audit_events::event_time.lt(before)))
            .execute(conn)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_stable_distinct_names_that_fit_the_column() {
        let names: Vec<String> = AuditKind::FIXED
            .iter()
            .map(|k| k.name().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "token.created",
                "session.created",
                "session.ended",
                "session.termination_requested",
                "channel.created",
                "channel.ended",
                "hypervisor.connected",
                "hypervisor.failed",
                "firewall.verdicts",
            ]
        );
        assert_eq!(
            AuditKind::Nova("instance.delete.end").to_string(),
            "nova.instance.delete.end"
        );
        let long = AuditKind::Nova("instance.a_very_long_event_type_that_nova_does_not_have.end");
        assert_eq!(long.name().len(), 64);
    }
}
