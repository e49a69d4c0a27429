//! `sources`: where consoles come from (a static `sources.yaml` entry, or Nova).
//!
//! A source is identified by its configured name. Loading the configuration upserts each
//! source; a failure to read one is recorded on its row (`errored`, `error_message`) so the
//! API can show it. Deleting a source deletes its consoles (and, through them, their tokens
//! and sessions); the audit trail keeps the history.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::UPSERT_ATTEMPTS;
use super::ids::SourceId;
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::sources;

/// A console source.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = sources)]
#[diesel(check_for_backend(crate::db::conn::MultiBackend))]
pub struct Source {
    /// Surrogate key.
    pub id: SourceId,
    /// Configured name, unique (exact, case-sensitive match).
    pub name: String,
    /// Kind of source, e.g. `"static"` or `"nova"`.
    pub source_type: String,
    /// Whether the last attempt to read this source failed.
    pub errored: bool,
    /// Why it failed, when `errored`.
    pub error_message: Option<String>,
    /// PEM CA certificate(s) used to verify this source's hypervisors' TLS, if any.
    pub ca_cert: Option<String>,
    /// When the source was first recorded (UTC).
    pub created_at: NaiveDateTime,
    /// When it last changed (UTC).
    pub updated_at: NaiveDateTime,
}

/// A new source row.
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = sources)]
pub struct NewSource {
    /// Configured name.
    pub name: String,
    /// Kind of source.
    pub source_type: String,
    /// CA certificate(s) for hypervisor TLS.
    pub ca_cert: Option<String>,
}

/// Insert `name` or update its type; returns the row.
///
/// Clears nothing else: an error recorded with [`set_source_error`] stays until cleared.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn upsert_source(conn: &mut DbConnection, name: &str, source_type: &str) -> DbResult<Source> {
    for _ in 0..UPSERT_ATTEMPTS {
        let at = now();
        let updated = diesel::update(sources::table.filter(sources::name.eq(name)))
            .set((
                sources::source_type.eq(source_type),
                sources::updated_at.eq(at),
            ))
            .execute(conn)?;
        if updated > 0 {
            return get_source_by_name(conn, name);
        }
        let new = NewSource {
            name: name.to_owned(),
            source_type: source_type.to_owned(),
            ca_cert: None,
        };
        match insert_source_row(conn, &new, at) {
            Ok(()) => return get_source_by_name(conn, name),
            // Someone else inserted it between our UPDATE and INSERT: update theirs.
            Err(e) if e.is_unique_violation() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DbError::Conflict {
        what: "source",
        id: name.to_owned(),
        reason: "concurrent writers kept changing it".to_owned(),
    })
}

fn insert_source_row(conn: &mut DbConnection, new: &NewSource, at: NaiveDateTime) -> DbResult<()> {
    diesel::insert_into(sources::table)
        .values((
            new,
            sources::errored.eq(false),
            sources::created_at.eq(at),
            sources::updated_at.eq(at),
        ))
        .execute(conn)?;
    Ok(())
}

/// Record (`Some(message)`) or clear (`None`) a failure to read source `name`.
///
/// # Errors
/// [`DbError::NotFound`] if there is no such source.
pub fn set_source_error(conn: &mut DbConnection, name: &str, error: Option<&str>) -> DbResult<()> {
    let updated = diesel::update(sources::table.filter(sources::name.eq(name)))
        .set((
            sources::errored.eq(error.is_some()),
            sources::error_message.eq(error),
            sources::updated_at.eq(now()),
        ))
        .execute(conn)?;
    not_found_if_zero(updated, name)
}

/// Set or clear the CA certificate(s) used for this source's hypervisors.
///
/// # Errors
/// [`DbError::NotFound`] if there is no such source.
pub fn set_source_ca_cert(
    conn: &mut DbConnection,
    name: &str,
    ca_cert: Option<&str>,
) -> DbResult<()> {
    let updated = diesel::update(sources::table.filter(sources::name.eq(name)))
        .set((sources::ca_cert.eq(ca_cert), sources::updated_at.eq(now())))
        .execute(conn)?;
    not_found_if_zero(updated, name)
}

/// All sources, ordered by name.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn list_sources(conn: &mut DbConnection) -> DbResult<Vec<Source>> {
    Ok(sources::table
        .order(sources::name.asc())
        .select(Source::as_select())
        .load(conn)?)
}

/// The source called `name` (exact match).
///
/// # Errors
/// [`DbError::NotFound`] if there is none.
pub fn get_source_by_name(conn: &mut DbConnection, name: &str) -> DbResult<Source> {
    find_source_by_name(conn, name)?.ok_or_else(|| DbError::NotFound {
        what: "source",
        id: name.to_owned(),
    })
}

/// The source called `name`, if any.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn find_source_by_name(conn: &mut DbConnection, name: &str) -> DbResult<Option<Source>> {
    Ok(sources::table
        .filter(sources::name.eq(name))
        .select(Source::as_select())
        .first(conn)
        .optional()?)
}

/// The source with surrogate key `id`.
///
/// # Errors
/// [`DbError::NotFound`] if there is none.
pub fn get_source(conn: &mut DbConnection, id: SourceId) -> DbResult<Source> {
    sources::table
        .find(id)
        .select(Source::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "source",
            id: id.to_string(),
        })
}

/// Delete source `name` with its consoles, their tokens, sessions and channels.
/// Returns whether it existed.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn delete_source(conn: &mut DbConnection, name: &str) -> DbResult<bool> {
    let deleted = diesel::delete(sources::table.filter(sources::name.eq(name))).execute(conn)?;
    Ok(deleted > 0)
}

fn not_found_if_zero(updated: usize, name: &str) -> DbResult<()> {
    if updated == 0 {
        Err(DbError::NotFound {
            what: "source",
            id: name.to_owned(),
        })
    } else {
        Ok(())
    }
}
