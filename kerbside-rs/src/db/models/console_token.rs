//! `console_tokens`: short-lived credentials that let one client open one console.
//!
//! Only the sha-256 hex digest of a token is stored (see [`crate::token`]); a database dump
//! therefore grants nothing. Lookup is by exact digest (binary collation on MySQL). A token
//! is valid until it expires or is revoked, and it is bound to the first session whose main
//! channel links with it: [`bind_token`] is a single conditional `UPDATE`, so of two
//! clients racing with the same token exactly one wins, on any number of proxy nodes.

use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;

use super::console::Console;
use super::ids::{ConsoleId, ConsoleTokenId, SessionId};
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::{console_tokens, consoles, sessions, sources};
pub use crate::token::{generate_token, hash_token, is_token_hash};

/// A token row. Holds the digest only, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = console_tokens)]
#[diesel(check_for_backend(crate::db::conn::MultiBackend))]
pub struct ConsoleToken {
    /// Surrogate key.
    pub id: ConsoleTokenId,
    /// sha-256 of the token, 64 lowercase hex digits.
    pub token_hash: String,
    /// The console this token opens.
    pub console_id: ConsoleId,
    /// The session it was bound to by its first main-channel link.
    pub session_id: Option<SessionId>,
    /// The client address that bound it.
    pub client_address: Option<String>,
    /// When it was issued (UTC).
    pub created_at: NaiveDateTime,
    /// When it stops being accepted (UTC).
    pub expires_at: NaiveDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<NaiveDateTime>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
}

impl ConsoleToken {
    /// Whether the token is accepted at `at` (not expired, not revoked).
    #[must_use]
    pub fn is_valid_at(&self, at: NaiveDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > at
    }
}

/// A new token row; normally built by [`insert_token`].
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = console_tokens)]
pub struct NewConsoleToken {
    /// sha-256 hex of the token.
    pub token_hash: String,
    /// The console it opens.
    pub console_id: ConsoleId,
    /// Issue time.
    pub created_at: NaiveDateTime,
    /// Expiry time.
    pub expires_at: NaiveDateTime,
}

/// Result of [`bind_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenBinding {
    /// This call bound the token to the given session.
    Bound,
    /// The token was already bound (possibly to this same session, by an earlier call).
    AlreadyBound {
        /// The session it is bound to.
        session_id: SessionId,
        /// The client address that bound it.
        client_address: Option<String>,
    },
    /// The token is unbound but expired or revoked, so it was not bound.
    NotValid,
}

/// Store a token digest for `console_id`, valid for `ttl` from now.
///
/// # Errors
/// [`DbError::Invalid`] if `token_hash` is not 64 lowercase hex digits (a plain token must
/// never reach the database) or `ttl` is absurd; [`DbError::Conflict`] if the digest exists;
/// [`DbError::Query`] otherwise (a foreign-key violation if the console does not exist).
pub fn insert_token(
    conn: &mut DbConnection,
    console_id: ConsoleId,
    token_hash: &str,
    ttl: Duration,
) -> DbResult<ConsoleToken> {
    if !is_token_hash(token_hash) {
        return Err(DbError::Invalid {
            what: "token hash",
            reason: "must be the sha-256 of the token as 64 lowercase hex digits".to_owned(),
        });
    }
    let ttl = TimeDelta::from_std(ttl).map_err(|_| DbError::Invalid {
        what: "token ttl",
        reason: "out of range".to_owned(),
    })?;
    let created_at = now();
    let expires_at = created_at
        .checked_add_signed(ttl)
        .ok_or_else(|| DbError::Invalid {
            what: "token ttl",
            reason: "out of range".to_owned(),
        })?;
    let new = NewConsoleToken {
        token_hash: token_hash.to_owned(),
        console_id,
        created_at,
        expires_at,
    };
    match diesel::insert_into(console_tokens::table)
        .values(&new)
        .execute(conn)
        .map_err(DbError::from)
    {
        Ok(_) => {}
        Err(e) if e.is_unique_violation() => {
            return Err(DbError::Conflict {
                what: "token",
                id: console_id.to_string(),
                reason: "a token with this hash exists".to_owned(),
            });
        }
        Err(e) => return Err(e),
    }
    let id = ConsoleTokenId(conn.last_insert_id()?);
    get_token(conn, id)
}

/// The token with surrogate key `id`, in any state.
///
/// # Errors
/// [`DbError::NotFound`] if there is none.
pub fn get_token(conn: &mut DbConnection, id: ConsoleTokenId) -> DbResult<ConsoleToken> {
    console_tokens::table
        .find(id)
        .select(ConsoleToken::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "token",
            id: id.to_string(),
        })
}

/// The token with digest `token_hash`, in any state (expired, revoked, bound).
///
/// Anything that is not a well-formed digest matches nothing, without a query: besides
/// saving a round trip, this keeps MySQL's PAD SPACE comparison (`'x' = 'x '`) out of play.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn find_token_by_hash(
    conn: &mut DbConnection,
    token_hash: &str,
) -> DbResult<Option<ConsoleToken>> {
    if !is_token_hash(token_hash) {
        return Ok(None);
    }
    Ok(console_tokens::table
        .filter(console_tokens::token_hash.eq(token_hash))
        .select(ConsoleToken::as_select())
        .first(conn)
        .optional()?)
}

/// The token with digest `token_hash` and its console, if it is accepted at `at`
/// (not expired, not revoked). Binding is not checked: see [`bind_token`]. A malformed
/// digest matches nothing (see [`find_token_by_hash`]).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn find_valid_token(
    conn: &mut DbConnection,
    token_hash: &str,
    at: NaiveDateTime,
) -> DbResult<Option<(ConsoleToken, Console)>> {
    if !is_token_hash(token_hash) {
        return Ok(None);
    }
    Ok(console_tokens::table
        .inner_join(consoles::table)
        .filter(console_tokens::token_hash.eq(token_hash))
        .filter(console_tokens::expires_at.gt(at))
        .filter(console_tokens::revoked_at.is_null())
        .select((ConsoleToken::as_select(), Console::as_select()))
        .first(conn)
        .optional()?)
}

/// The token with digest `token_hash`, its console and the CA of the console's source, in
/// one query: everything the proxy needs to authorize a link. Validity is the caller's to
/// check, so it can tell an expired token from a revoked one. A malformed digest matches
/// nothing (see [`find_token_by_hash`]).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn find_token_with_console(
    conn: &mut DbConnection,
    token_hash: &str,
) -> DbResult<Option<(ConsoleToken, Console, Option<String>)>> {
    if !is_token_hash(token_hash) {
        return Ok(None);
    }
    Ok(console_tokens::table
        .inner_join(consoles::table.inner_join(sources::table))
        .filter(console_tokens::token_hash.eq(token_hash))
        .select((
            ConsoleToken::as_select(),
            Console::as_select(),
            sources::ca_cert,
        ))
        .first(conn)
        .optional()?)
}

/// Bind token `token_id` to `session_id` if nobody has bound it yet and it is still valid.
///
/// Atomic: one `UPDATE ... WHERE session_id IS NULL`, so concurrent callers (on any node)
/// see exactly one [`TokenBinding::Bound`].
///
/// # Errors
/// [`DbError::NotFound`] if the token does not exist; [`DbError::Query`] otherwise.
pub fn bind_token(
    conn: &mut DbConnection,
    token_id: ConsoleTokenId,
    session_id: &SessionId,
    client_address: &str,
) -> DbResult<TokenBinding> {
    let updated = diesel::update(
        console_tokens::table
            .filter(console_tokens::id.eq(token_id))
            .filter(console_tokens::session_id.is_null())
            .filter(console_tokens::revoked_at.is_null())
            .filter(console_tokens::expires_at.gt(now())),
    )
    .set((
        console_tokens::session_id.eq(session_id),
        console_tokens::client_address.eq(client_address),
    ))
    .execute(conn)?;
    if updated > 0 {
        return Ok(TokenBinding::Bound);
    }
    let token = get_token(conn, token_id)?;
    Ok(match token.session_id {
        Some(session_id) => TokenBinding::AlreadyBound {
            session_id,
            client_address: token.client_address,
        },
        None => TokenBinding::NotValid,
    })
}

/// Revoke one token; returns whether it was valid until now.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn revoke_token(conn: &mut DbConnection, id: ConsoleTokenId, reason: &str) -> DbResult<bool> {
    let updated = diesel::update(
        console_tokens::table
            .filter(console_tokens::id.eq(id))
            .filter(console_tokens::revoked_at.is_null()),
    )
    .set((
        console_tokens::revoked_at.eq(now()),
        console_tokens::revoke_reason.eq(reason),
    ))
    .execute(conn)?;
    Ok(updated > 0)
}

/// Revoke every unrevoked token of every console of instance `uuid`; returns how many.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn revoke_tokens_for_instance(
    conn: &mut DbConnection,
    uuid: &str,
    reason: &str,
) -> DbResult<usize> {
    let console_ids = consoles::table
        .filter(consoles::uuid.eq(uuid))
        .select(consoles::id);
    Ok(diesel::update(
        console_tokens::table
            .filter(console_tokens::console_id.eq_any(console_ids))
            .filter(console_tokens::revoked_at.is_null()),
    )
    .set((
        console_tokens::revoked_at.eq(now()),
        console_tokens::revoke_reason.eq(reason),
    ))
    .execute(conn)?)
}

/// Revoke the tokens of session `session_id`: the one that opened it and any bound to it.
/// Returns how many were still valid. Terminating a session calls this so that the same
/// `.vv` file cannot open a new session; the user needs a newly minted token.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn revoke_session_tokens(
    conn: &mut DbConnection,
    session_id: &SessionId,
    reason: &str,
) -> DbResult<usize> {
    let opener = sessions::table
        .filter(sessions::id.eq(session_id))
        .select(sessions::token_id)
        .first::<Option<ConsoleTokenId>>(conn)
        .optional()?
        .flatten();
    let mut ids: Vec<ConsoleTokenId> = console_tokens::table
        .filter(console_tokens::session_id.eq(session_id))
        .select(console_tokens::id)
        .load(conn)?;
    ids.extend(opener);
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(diesel::update(
        console_tokens::table
            .filter(console_tokens::id.eq_any(ids))
            .filter(console_tokens::revoked_at.is_null()),
    )
    .set((
        console_tokens::revoked_at.eq(now()),
        console_tokens::revoke_reason.eq(reason),
    ))
    .execute(conn)?)
}

/// Delete tokens that expired before `older_than`, except those bound to a session that is
/// still live (its secondary channels may still present the token). Returns how many.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn delete_expired_tokens(
    conn: &mut DbConnection,
    older_than: NaiveDateTime,
) -> DbResult<usize> {
    let live_sessions = sessions::table
        .filter(sessions::ended_at.is_null())
        .select(sessions::id.nullable());
    Ok(diesel::delete(
        console_tokens::table
            .filter(console_tokens::expires_at.lt(older_than))
            .filter(
                console_tokens::session_id
                    .is_null()
                    .or(console_tokens::session_id.ne_all(live_sessions)),
            ),
    )
    .execute(conn)?)
}
