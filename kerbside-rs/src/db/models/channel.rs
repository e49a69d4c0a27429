//! `channels`: one SPICE channel connection (main, display, inputs, ...) within a session.
//!
//! A channel row is written when the proxy has linked a channel on both sides and ended
//! with its byte counts when either side closes. The proxy writes both through its
//! write-behind queue, so a row may reach the database later than it happened: it picks
//! the id itself ([`new_channel_id`]) and passes the original times
//! ([`create_channel_with_id_at`], [`end_channel_at`]). Channels belong to one session and
//! are deleted with it (`ON DELETE CASCADE`).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::counter;
use super::ids::{ChannelId, SessionId};
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::channels;

/// A channel row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = channels)]
#[diesel(check_for_backend(crate::db::conn::MultiBackend))]
pub struct Channel {
    /// Surrogate key.
    pub id: ChannelId,
    /// The session it belongs to.
    pub session_id: SessionId,
    /// The proxy node relaying it.
    pub node: String,
    /// SPICE channel type (1 main, 2 display, 3 inputs, ...).
    pub channel_type: i32,
    /// SPICE channel id (index among channels of the same type).
    pub channel_id: i32,
    /// The client's address for this connection.
    pub client_address: String,
    /// When it was linked (UTC).
    pub created_at: NaiveDateTime,
    /// When it closed; `None` while open.
    pub ended_at: Option<NaiveDateTime>,
    /// Bytes relayed to the client.
    pub bytes_to_client: i64,
    /// Bytes relayed to the hypervisor.
    pub bytes_to_server: i64,
}

/// A new channel; input to [`create_channel`] (which sets `created_at`).
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = channels)]
pub struct NewChannel {
    /// The session it belongs to.
    pub session_id: SessionId,
    /// This proxy node's name.
    pub node: String,
    /// SPICE channel type.
    pub channel_type: i32,
    /// SPICE channel id.
    pub channel_id: i32,
    /// The client's address.
    pub client_address: String,
}

/// A fresh channel id chosen by the caller, so that a channel's row can be written later
/// (through the proxy's write-behind queue) and still be known now: random in `1..2^53`, so
/// it stays exact in JSON numbers; a collision, about one in 2^53 per pair, fails the insert.
pub fn new_channel_id() -> ChannelId {
    use rand::Rng;
    ChannelId(rand::thread_rng().gen_range(1..(1_i64 << 53)))
}

/// Record a newly linked channel under the id `id` (see [`new_channel_id`]), linked at `at`.
///
/// # Errors
/// [`DbError::Query`] (a foreign-key violation if the session does not exist, a conflict if
/// the id is taken).
pub fn create_channel_with_id_at(
    conn: &mut DbConnection,
    id: ChannelId,
    new: &NewChannel,
    at: NaiveDateTime,
) -> DbResult<()> {
    diesel::insert_into(channels::table)
        .values((channels::id.eq(id), new, channels::created_at.eq(at)))
        .execute(conn)?;
    Ok(())
}

/// Record a newly linked channel.
///
/// # Errors
/// [`DbError::Query`] (a foreign-key violation if the session does not exist).
pub fn create_channel(conn: &mut DbConnection, new: &NewChannel) -> DbResult<Channel> {
    diesel::insert_into(channels::table)
        .values((new, channels::created_at.eq(now())))
        .execute(conn)?;
    let id = ChannelId(conn.last_insert_id()?);
    get_channel(conn, id)
}

/// The channel row `id`.
///
/// # Errors
/// [`DbError::NotFound`] if there is none.
pub fn get_channel(conn: &mut DbConnection, id: ChannelId) -> DbResult<Channel> {
    channels::table
        .find(id)
        .select(Channel::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "channel",
            id: id.to_string(),
        })
}

/// End channel `id` with its final byte counts. Returns `false` if it had already ended.
///
/// # Errors
/// [`DbError::NotFound`] if there is no such channel.
pub fn end_channel(
    conn: &mut DbConnection,
    id: ChannelId,
    bytes_to_client: u64,
    bytes_to_server: u64,
) -> DbResult<bool> {
    end_channel_at(conn, id, bytes_to_client, bytes_to_server, now())
}

/// [`end_channel`] with the time it ended, for ends observed earlier and written later.
///
/// # Errors
/// [`DbError::NotFound`] if there is no such channel.
pub fn end_channel_at(
    conn: &mut DbConnection,
    id: ChannelId,
    bytes_to_client: u64,
    bytes_to_server: u64,
    at: NaiveDateTime,
) -> DbResult<bool> {
    let updated = diesel::update(
        channels::table
            .filter(channels::id.eq(id))
            .filter(channels::ended_at.is_null()),
    )
    .set((
        channels::ended_at.eq(at),
        channels::bytes_to_client.eq(counter(bytes_to_client)),
        channels::bytes_to_server.eq(counter(bytes_to_server)),
    ))
    .execute(conn)?;
    if updated > 0 {
        return Ok(true);
    }
    get_channel(conn, id).map(|_| false)
}

/// The channels of session `session_id`, in the order they were linked.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn list_channels(conn: &mut DbConnection, session_id: &SessionId) -> DbResult<Vec<Channel>> {
    Ok(channels::table
        .filter(channels::session_id.eq(session_id))
        .select(Channel::as_select())
        .order(channels::id.asc())
        .load(conn)?)
}

/// The channels of every session in `session_ids`, by session then id (one query, for
/// listings).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn list_channels_of_sessions(
    conn: &mut DbConnection,
    session_ids: &[SessionId],
) -> DbResult<Vec<Channel>> {
    if session_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(channels::table
        .filter(channels::session_id.eq_any(session_ids))
        .select(Channel::as_select())
        .order((channels::session_id.asc(), channels::id.asc()))
        .load(conn)?)
}
