//! `web_sessions`: browsers signed in to the web console.
//!
//! The browser holds only a random cookie; a row is found by the cookie's sha-256
//! ([`crate::token::hash_token`]), so a database dump names no usable cookie. The user's
//! Keystone token is stored encrypted by the API with a key derived from the cookie (this
//! module stores the ciphertext as given and never sees the token). Rows are shared by every
//! API worker and node, and end when their Keystone token expires (`expires_at`), on sign-out,
//! or when Keystone refuses the token.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::ids::WebSessionId;
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::web_sessions;
use crate::token::is_token_hash;

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = web_sessions)]
#[diesel(check_for_backend(crate::db::conn::MultiBackend))]
pub struct WebSession {
    /// Surrogate key.
    pub id: WebSessionId,
    /// sha-256 of the session cookie, 64 lowercase hex digits.
    pub session_hash: String,
    /// Keystone user id (`noauth` for the local administrator).
    pub user_id: String,
    /// User name, for display and audit records.
    pub user_name: String,
    /// The project the token is scoped to.
    pub project_id: Option<String>,
    /// That project's name.
    pub project_name: Option<String>,
    /// Whether the token is scoped (an unscoped one only serves to pick a project).
    pub scoped: bool,
    /// The Keystone token, encrypted with a key derived from the cookie (`None` without
    /// Keystone).
    pub keystone_token: Option<String>,
    /// When the user signed in (UTC).
    pub created_at: NaiveDateTime,
    /// When the session ends: its Keystone token's expiry (UTC).
    pub expires_at: NaiveDateTime,
}

impl WebSession {
    /// Whether the session is still usable at `at`.
    #[must_use]
    pub fn is_valid_at(&self, at: NaiveDateTime) -> bool {
        self.expires_at > at
    }
}

/// A new signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = web_sessions)]
pub struct NewWebSession {
    /// sha-256 of the cookie.
    pub session_hash: String,
    /// Keystone user id.
    pub user_id: String,
    /// User name.
    pub user_name: String,
    /// Project id, once scoped.
    pub project_id: Option<String>,
    /// Project name.
    pub project_name: Option<String>,
    /// Whether the token is scoped.
    pub scoped: bool,
    /// The encrypted token.
    pub keystone_token: Option<String>,
    /// When it ends.
    pub expires_at: NaiveDateTime,
}

/// Stores a new web session.
///
/// # Errors
/// [`DbError::Invalid`] when `session_hash` is not a sha-256 digest (a cookie must never
/// reach the database); [`DbError::Conflict`] when the digest exists; query failures.
pub fn insert_web_session(conn: &mut DbConnection, new: &NewWebSession) -> DbResult<WebSession> {
    if !is_token_hash(&new.session_hash) {
        return Err(DbError::Invalid {
            what: "web session hash",
            reason: "must be the sha-256 of the cookie as 64 lowercase hex digits".to_owned(),
        });
    }
    match diesel::insert_into(web_sessions::table)
        .values((new, web_sessions::created_at.eq(now())))
        .execute(conn)
        .map_err(DbError::from)
    {
        Ok(_) => {}
        Err(e) if e.is_unique_violation() => {
            return Err(DbError::Conflict {
                what: "web session",
                id: new.user_name.clone(),
                reason: "a session with this hash exists".to_owned(),
            });
        }
        Err(e) => return Err(e),
    }
    let id = WebSessionId(conn.last_insert_id()?);
    web_sessions::table
        .find(id)
        .select(WebSession::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "web session",
            id: id.to_string(),
        })
}

/// The web session with cookie digest `session_hash`, expired or not. A malformed digest
/// matches nothing, without a query.
///
/// # Errors
/// Query failures.
pub fn find_web_session(
    conn: &mut DbConnection,
    session_hash: &str,
) -> DbResult<Option<WebSession>> {
    if !is_token_hash(session_hash) {
        return Ok(None);
    }
    Ok(web_sessions::table
        .filter(web_sessions::session_hash.eq(session_hash))
        .select(WebSession::as_select())
        .first(conn)
        .optional()?)
}

/// Ends the web session with cookie digest `session_hash`; whether there was one.
///
/// # Errors
/// Query failures.
pub fn delete_web_session(conn: &mut DbConnection, session_hash: &str) -> DbResult<bool> {
    if !is_token_hash(session_hash) {
        return Ok(false);
    }
    Ok(
        diesel::delete(web_sessions::table.filter(web_sessions::session_hash.eq(session_hash)))
            .execute(conn)?
            > 0,
    )
}

/// Removes the web sessions that ended before `before`; how many.
///
/// # Errors
/// Query failures.
pub fn delete_expired_web_sessions(
    conn: &mut DbConnection,
    before: NaiveDateTime,
) -> DbResult<usize> {
    Ok(
        diesel::delete(web_sessions::table.filter(web_sessions::expires_at.le(before)))
            .execute(conn)?,
    )
}

/// Moves a web session's expiry (tests make one expire; nothing else needs it).
///
/// # Errors
/// [`DbError::NotFound`] when there is no such session.
pub fn set_web_session_expiry(
    conn: &mut DbConnection,
    session_hash: &str,
    expires_at: NaiveDateTime,
) -> DbResult<()> {
    let n = diesel::update(web_sessions::table.filter(web_sessions::session_hash.eq(session_hash)))
        .set(web_sessions::expires_at.eq(expires_at))
        .execute(conn)?;
    if n == 0 {
        return Err(DbError::NotFound {
            what: "web session",
            id: "(by hash)".to_owned(),
        });
    }
    Ok(())
}

/// Every web session, newest first (for tests and operators' inspection).
///
/// # Errors
/// Query failures.
pub fn list_web_sessions(conn: &mut DbConnection) -> DbResult<Vec<WebSession>> {
    Ok(web_sessions::table
        .select(WebSession::as_select())
        .order(web_sessions::id.desc())
        .load(conn)?)
}
